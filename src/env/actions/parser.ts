/**
 * Parser for BrowserGym-style action calls, e.g. `click('12')`, `fill("7", "hello")`,
 * `select_option('3', ['a', 'b'])`, `noop(wait_ms=500)`.
 *
 * A small hand-written tokenizer for the Python-literal subset BrowserGym's actions use (strings,
 * numbers, lists, True/False/None, keyword arguments): nothing is ever evaluated. Non-strict like
 * BrowserGym: text around the call is ignored; the first well-formed call wins.
 */

export class ActionParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ActionParseError';
  }
}

export type MouseButton = 'left' | 'middle' | 'right';
export type KeyModifier = 'Alt' | 'Control' | 'ControlOrMeta' | 'Meta' | 'Shift';

export type ParsedAction =
  | { name: 'click' | 'dblclick'; bid: string; button: MouseButton; modifiers: KeyModifier[] }
  | { name: 'fill'; bid: string; value: string }
  | { name: 'select_option'; bid: string; options: string[] }
  | { name: 'hover' | 'focus' | 'clear'; bid: string }
  | { name: 'press'; bid: string; key: string }
  | { name: 'scroll'; deltaX: number; deltaY: number }
  | { name: 'keyboard_type'; text: string }
  | { name: 'keyboard_press'; key: string }
  | { name: 'noop'; waitMs: number }
  | { name: 'send_msg_to_user'; text: string };

export type ActionName = ParsedAction['name'];

type Literal = string | number | boolean | null | Literal[];
interface CallArgs { positional: Literal[]; keyword: Map<string, Literal> }

/** Parameter names per action, in positional order; `required` is how many must be given. */
const SIGNATURES: Record<ActionName, { params: string[]; required: number }> = {
  click: { params: ['bid', 'button', 'modifiers'], required: 1 },
  dblclick: { params: ['bid', 'button', 'modifiers'], required: 1 },
  fill: { params: ['bid', 'value'], required: 2 },
  select_option: { params: ['bid', 'options'], required: 2 },
  hover: { params: ['bid'], required: 1 },
  focus: { params: ['bid'], required: 1 },
  clear: { params: ['bid'], required: 1 },
  press: { params: ['bid', 'key_comb'], required: 2 },
  scroll: { params: ['delta_x', 'delta_y'], required: 2 },
  keyboard_type: { params: ['text'], required: 1 },
  keyboard_press: { params: ['key'], required: 1 },
  noop: { params: ['wait_ms'], required: 0 },
  send_msg_to_user: { params: ['text'], required: 1 },
};

export const ACTION_NAMES = Object.keys(SIGNATURES) as ActionName[];

const BID_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;
const MAX_STRING = 10_000;
const MAX_WAIT_MS = 60_000;
const MODIFIERS: readonly KeyModifier[] = ['Alt', 'Control', 'ControlOrMeta', 'Meta', 'Shift'];
const CALL_START = new RegExp(`(?<![A-Za-z0-9_])(${ACTION_NAMES.join('|')})\\s*\\(`, 'g');

/** Parses the first well-formed action call found in `text`. Throws ActionParseError otherwise. */
export function parseAction(text: string): ParsedAction {
  if (typeof text !== 'string') throw new ActionParseError(`action must be a string, got ${typeof text}`);
  if (text.length > 100_000) throw new ActionParseError(`action text too long (${text.length} characters)`);
  let firstError: ActionParseError | null = null;
  CALL_START.lastIndex = 0;
  for (let match = CALL_START.exec(text); match !== null; match = CALL_START.exec(text)) {
    try {
      const cursor = new Cursor(text, match.index + match[0].length);
      const args = cursor.parseArguments();
      return buildAction(match[1] as ActionName, args);
    } catch (error) {
      if (!(error instanceof ActionParseError)) throw error;
      firstError ??= error;
    }
    CALL_START.lastIndex = match.index + 1;
  }
  if (firstError) throw firstError;
  const preview = text.trim().slice(0, 60);
  throw new ActionParseError(
    `no action found in ${JSON.stringify(preview)}; expected a call such as click('12') ` +
      `(actions: ${ACTION_NAMES.join(', ')})`,
  );
}

/** Canonical text of an action, the form `validActions` uses; parseAction(formatAction(a)) equals a. */
export function formatAction(action: ParsedAction): string {
  const q = pyQuote;
  switch (action.name) {
    case 'click':
    case 'dblclick': {
      const extra: string[] = [];
      if (action.button !== 'left') extra.push(`button=${q(action.button)}`);
      if (action.modifiers.length > 0) extra.push(`modifiers=[${action.modifiers.map(q).join(', ')}]`);
      return `${action.name}(${[q(action.bid), ...extra].join(', ')})`;
    }
    case 'fill':
      return `fill(${q(action.bid)}, ${q(action.value)})`;
    case 'select_option':
      return action.options.length === 1
        ? `select_option(${q(action.bid)}, ${q(action.options[0])})`
        : `select_option(${q(action.bid)}, [${action.options.map(q).join(', ')}])`;
    case 'hover':
    case 'focus':
    case 'clear':
      return `${action.name}(${q(action.bid)})`;
    case 'press':
      return `press(${q(action.bid)}, ${q(action.key)})`;
    case 'scroll':
      return `scroll(${action.deltaX}, ${action.deltaY})`;
    case 'keyboard_type':
      return `keyboard_type(${q(action.text)})`;
    case 'keyboard_press':
      return `keyboard_press(${q(action.key)})`;
    case 'noop':
      return action.waitMs === 1000 ? 'noop()' : `noop(${action.waitMs})`;
    case 'send_msg_to_user':
      return `send_msg_to_user(${q(action.text)})`;
  }
}

/** Python-style single-quoted string literal. */
export function pyQuote(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t')}'`;
}

function buildAction(name: ActionName, args: CallArgs): ParsedAction {
  const signature = SIGNATURES[name];
  if (args.positional.length > signature.params.length) {
    throw new ActionParseError(
      `${name}() takes at most ${signature.params.length} argument(s) (${signature.params.join(', ')}), got ${args.positional.length}`,
    );
  }
  const values = new Map<string, Literal>();
  args.positional.forEach((value, i) => values.set(signature.params[i], value));
  for (const [key, value] of args.keyword) {
    if (!signature.params.includes(key)) {
      throw new ActionParseError(`${name}() got an unexpected keyword argument '${key}' (parameters: ${signature.params.join(', ') || 'none'})`);
    }
    if (values.has(key)) throw new ActionParseError(`${name}() got multiple values for argument '${key}'`);
    values.set(key, value);
  }
  for (const param of signature.params.slice(0, signature.required)) {
    if (!values.has(param)) throw new ActionParseError(`${name}() is missing the required argument '${param}'`);
  }
  const bid = (): string => asBid(name, values.get('bid'));
  const str = (param: string): string => asString(name, param, values.get(param));
  switch (name) {
    case 'click':
    case 'dblclick':
      return { name, bid: bid(), button: asButton(name, values.get('button')), modifiers: asModifiers(name, values.get('modifiers')) };
    case 'fill':
      return { name, bid: bid(), value: str('value') };
    case 'select_option':
      return { name, bid: bid(), options: asOptions(name, values.get('options')) };
    case 'hover':
    case 'focus':
    case 'clear':
      return { name, bid: bid() };
    case 'press':
      return { name, bid: bid(), key: asKey(name, str('key_comb')) };
    case 'scroll':
      return { name, deltaX: asNumber(name, 'delta_x', values.get('delta_x')), deltaY: asNumber(name, 'delta_y', values.get('delta_y')) };
    case 'keyboard_type':
      return { name, text: str('text') };
    case 'keyboard_press':
      return { name, key: asKey(name, str('key')) };
    case 'noop': {
      const wait = values.has('wait_ms') ? asNumber(name, 'wait_ms', values.get('wait_ms')) : 1000;
      if (wait < 0 || wait > MAX_WAIT_MS) throw new ActionParseError(`noop() wait_ms must be between 0 and ${MAX_WAIT_MS}, got ${wait}`);
      return { name, waitMs: wait };
    }
    case 'send_msg_to_user':
      return { name, text: str('text') };
  }
}

function describe(value: Literal | undefined): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'None';
  if (Array.isArray(value)) return 'a list';
  return `${typeof value} ${JSON.stringify(value).slice(0, 40)}`;
}

function asBid(action: string, value: Literal | undefined): string {
  let bid: string;
  if (typeof value === 'string') bid = value;
  else if (typeof value === 'number' && Number.isInteger(value) && value >= 0) bid = String(value);
  else throw new ActionParseError(`${action}() bid must be a string like '12', got ${describe(value)}`);
  if (!BID_PATTERN.test(bid)) {
    throw new ActionParseError(`${action}() bid ${JSON.stringify(bid.slice(0, 40))} is not a valid bid (letters, digits, '_' or '-', 1 to 32 characters)`);
  }
  return bid;
}

function asString(action: string, param: string, value: Literal | undefined): string {
  if (typeof value !== 'string') throw new ActionParseError(`${action}() argument '${param}' must be a string, got ${describe(value)}`);
  return value;
}

function asNumber(action: string, param: string, value: Literal | undefined): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ActionParseError(`${action}() argument '${param}' must be a number, got ${describe(value)}`);
  }
  if (Math.abs(value) > 1e6) throw new ActionParseError(`${action}() argument '${param}' is out of range: ${value}`);
  return value;
}

function asKey(action: string, key: string): string {
  if (key.length === 0 || key.length > 64) throw new ActionParseError(`${action}() key must be 1 to 64 characters, got ${key.length}`);
  return key;
}

function asButton(action: string, value: Literal | undefined): MouseButton {
  if (value === undefined) return 'left';
  if (value === 'left' || value === 'middle' || value === 'right') return value;
  throw new ActionParseError(`${action}() button must be 'left', 'middle' or 'right', got ${describe(value)}`);
}

function asModifiers(action: string, value: Literal | undefined): KeyModifier[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new ActionParseError(`${action}() modifiers must be a list, got ${describe(value)}`);
  return value.map((item) => {
    if (typeof item === 'string' && (MODIFIERS as readonly string[]).includes(item)) return item as KeyModifier;
    throw new ActionParseError(`${action}() modifier must be one of ${MODIFIERS.join(', ')}, got ${describe(item)}`);
  });
}

function asOptions(action: string, value: Literal | undefined): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string')) return value as string[];
  throw new ActionParseError(`${action}() options must be a string or a non-empty list of strings, got ${describe(value)}`);
}

/** Reads the argument list after `name(`, up to and including the closing `)`. */
class Cursor {
  constructor(private readonly text: string, private pos: number) {}

  parseArguments(): CallArgs {
    const args: CallArgs = { positional: [], keyword: new Map() };
    this.skipSpace();
    if (this.peek() === ')') { this.pos++; return args; }
    for (;;) {
      if (args.positional.length + args.keyword.size >= 8) throw this.error('too many arguments');
      this.skipSpace();
      const keyword = this.text.slice(this.pos).match(/^([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)/);
      if (keyword) {
        this.pos += keyword[0].length;
        const name = keyword[1];
        if (args.keyword.has(name)) throw this.error(`keyword argument '${name}' repeated`);
        args.keyword.set(name, this.parseValue(0));
      } else {
        if (args.keyword.size > 0) throw this.error('positional argument after keyword argument');
        args.positional.push(this.parseValue(0));
      }
      this.skipSpace();
      const c = this.peek();
      if (c === ',') {
        this.pos++;
        this.skipSpace();
        if (this.peek() === ')') { this.pos++; return args; }
        continue;
      }
      if (c === ')') { this.pos++; return args; }
      throw this.error(c === undefined ? "unclosed call: missing ')'" : `expected ',' or ')' but found ${JSON.stringify(c)}`);
    }
  }

  private parseValue(depth: number): Literal {
    if (depth > 4) throw this.error('lists nested too deeply');
    this.skipSpace();
    const c = this.peek();
    if (c === undefined) throw this.error("unclosed call: missing ')'");
    if (c === "'" || c === '"') return this.parseString(c);
    if (c === '[') return this.parseList(depth);
    const rest = this.text.slice(this.pos, this.pos + 64);
    const num = rest.match(/^[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)(?![A-Za-z_])/);
    if (num) { this.pos += num[0].length; return Number(num[0]); }
    const word = rest.match(/^[A-Za-z0-9_-]+/);
    if (word) {
      this.pos += word[0].length;
      if (word[0] === 'True') return true;
      if (word[0] === 'False') return false;
      if (word[0] === 'None') return null;
      return word[0]; // an unquoted bid such as a12
    }
    throw this.error(`unexpected ${JSON.stringify(c)}`);
  }

  private parseList(depth: number): Literal[] {
    this.pos++; // [
    const items: Literal[] = [];
    for (;;) {
      this.skipSpace();
      if (this.peek() === ']') { this.pos++; return items; }
      if (items.length >= 100) throw this.error('list too long');
      items.push(this.parseValue(depth + 1));
      this.skipSpace();
      const c = this.peek();
      if (c === ',') { this.pos++; continue; }
      if (c === ']') { this.pos++; return items; }
      throw this.error(c === undefined ? "unclosed list: missing ']'" : `expected ',' or ']' in list but found ${JSON.stringify(c)}`);
    }
  }

  private parseString(quote: string): string {
    const start = this.pos;
    this.pos++;
    let out = '';
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined) throw new ActionParseError(`unterminated string starting at character ${start}`);
      if (c === quote) { this.pos++; return out; }
      if (c === '\n') throw new ActionParseError(`line break inside the string starting at character ${start}`);
      if (c === '\\') {
        const e = this.text[this.pos + 1];
        this.pos += 2;
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case '\\': case "'": case '"': out += e; break;
          case 'x': case 'u': {
            const len = e === 'x' ? 2 : 4;
            const hex = this.text.slice(this.pos, this.pos + len);
            if (!new RegExp(`^[0-9a-fA-F]{${len}}$`).test(hex)) throw new ActionParseError(`bad \\${e} escape in string starting at character ${start}`);
            out += String.fromCharCode(parseInt(hex, 16));
            this.pos += len;
            break;
          }
          case undefined: throw new ActionParseError(`unterminated string starting at character ${start}`);
          default: out += '\\' + e; // Python keeps unknown escapes verbatim
        }
      } else {
        out += c;
        this.pos++;
      }
      if (out.length > MAX_STRING) throw new ActionParseError(`string longer than ${MAX_STRING} characters`);
    }
  }

  private skipSpace(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos])) this.pos++;
  }

  private peek(): string | undefined {
    return this.text[this.pos];
  }

  private error(message: string): ActionParseError {
    return new ActionParseError(`${message} at character ${this.pos}`);
  }
}
