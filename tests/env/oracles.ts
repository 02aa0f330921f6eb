/**
 * Oracle solvers for the built-in tasks: each reads only the observation (goal + AXTree) and
 * returns the next action string, as an agent would.
 */
import type { Observation } from '../../src/env/index.js';

interface AXLine { bid: string; role: string; name: string; line: string }

export function axLines(obs: Observation): AXLine[] {
  const out: AXLine[] = [];
  for (const line of obs.axtree.split('\n')) {
    const m = line.match(/^\t*\[([^\]]+)\] (\S+) '((?:[^'\\]|\\.)*)'/) ?? line.match(/^\t*\[([^\]]+)\] (\S+) "((?:[^"\\]|\\.)*)"/);
    if (m) out.push({ bid: m[1], role: m[2], name: m[3], line });
  }
  return out;
}

function find(obs: Observation, role: string, name: string): AXLine {
  const hit = axLines(obs).find((l) => l.role === role && l.name === name);
  if (!hit) throw new Error(`oracle: no ${role} '${name}' in AXTree:\n${obs.axtree}`);
  return hit;
}

function valueOf(line: AXLine): string {
  return line.line.match(/ value='((?:[^'\\]|\\.)*)'/)?.[1] ?? '';
}

function quoted(goal: string): string[] {
  return [...goal.matchAll(/"([^"]*)"/g)].map((m) => m[1]);
}

/** The value of a field as the pruned HTML shows it (passwords are masked as '*' per character). */
function htmlValue(obs: Observation, bid: string): { value: string; password: boolean } {
  const tag = obs.html.match(new RegExp(`<input[^>]* bid="${bid}"[^>]*>`))?.[0] ?? '';
  return { value: tag.match(/ value="([^"]*)"/)?.[1] ?? '', password: tag.includes('type="password"') };
}

/** fill fields in order until each shows its value, then press the button. */
function fillThenClick(obs: Observation, fields: Array<[string, string]>, button: string): string {
  for (const [name, value] of fields) {
    const field = find(obs, 'textbox', name);
    const shown = htmlValue(obs, field.bid);
    if (shown.value !== (shown.password ? '*'.repeat(value.length) : value)) return `fill('${field.bid}', '${value}')`;
  }
  return `click('${find(obs, 'button', button).bid}')`;
}

export const ORACLES: Record<string, (obs: Observation) => string> = {
  'click-test': (obs) => `click('${find(obs, 'button', 'Click Me!').bid}')`,
  'click-test-2': (obs) => `click('${find(obs, 'button', obs.goal.match(/button (\w+)/)![1]).bid}')`,
  'click-button': (obs) => `click('${find(obs, 'button', quoted(obs.goal)[0]).bid}')`,
  'click-link': (obs) => `click('${find(obs, 'link', quoted(obs.goal)[0]).bid}')`,
  'click-dialog': (obs) => `click('${find(obs, 'button', 'x').bid}')`,
  'click-checkboxes': (obs) => {
    const wanted = obs.goal.startsWith('Select nothing') ? [] : obs.goal.replace(/^Select /, '').replace(/ and click Submit\.$/, '').split(', ');
    for (const box of axLines(obs).filter((l) => l.role === 'checkbox')) {
      const checked = box.line.includes("checked='true'");
      if (checked !== wanted.includes(box.name)) return `click('${box.bid}')`;
    }
    return `click('${find(obs, 'button', 'Submit').bid}')`;
  },
  'click-tab': (obs) => {
    const target = quoted(obs.goal)[0];
    const link = axLines(obs).find((l) => l.role === 'link' && l.name === target);
    if (link) return `click('${link.bid}')`;
    const tabs = axLines(obs).filter((l) => l.role === 'tab');
    const selected = tabs.findIndex((t) => t.line.includes('selected=True'));
    return `click('${tabs[(selected + 1) % tabs.length].bid}')`;
  },
  'focus-text': (obs) => `click('${axLines(obs).find((l) => l.role === 'textbox')!.bid}')`,
  'enter-text': (obs) => {
    const field = axLines(obs).find((l) => l.role === 'textbox')!;
    const word = quoted(obs.goal)[0];
    return valueOf(field) === word ? `click('${find(obs, 'button', 'Submit').bid}')` : `fill('${field.bid}', '${word}')`;
  },
  'enter-password': (obs) => {
    const password = quoted(obs.goal)[0];
    return fillThenClick(obs, [['Password', password], ['Verify password', password]], 'Submit');
  },
  'login-user': (obs) => {
    const [user, password] = quoted(obs.goal);
    return fillThenClick(obs, [['Username', user], ['Password', password]], 'Login');
  },
  'book-flight-lite': (obs) => {
    const [from, to] = quoted(obs.goal);
    const date = obs.goal.match(/ on (\w+ \d+)\.$/)![1];
    const cabin = obs.goal.match(/^Book a (\w+) flight/)![1];
    for (const [name, value] of [['From', from], ['To', to]] as const) {
      const field = find(obs, 'textbox', name);
      if (valueOf(field) !== value) return `fill('${field.bid}', '${value}')`;
    }
    const select = find(obs, 'combobox', 'Date');
    if (valueOf(select) !== date) return `select_option('${select.bid}', '${date}')`;
    const radio = find(obs, 'radio', cabin);
    if (!radio.line.includes("checked='true'")) return `click('${radio.bid}')`;
    return `click('${find(obs, 'button', 'Search').bid}')`;
  },
};
