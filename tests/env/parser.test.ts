import { describe, expect, it } from 'vitest';
import { ActionParseError, formatAction, parseAction, type ParsedAction } from '../../src/env/actions/parser.js';

describe('parseAction', () => {
  it('parses every BrowserGym action', () => {
    expect(parseAction("click('12')")).toEqual({ name: 'click', bid: '12', button: 'left', modifiers: [] });
    expect(parseAction('click("a12", button="right", modifiers=["Shift"])')).toEqual({ name: 'click', bid: 'a12', button: 'right', modifiers: ['Shift'] });
    expect(parseAction("dblclick('3')")).toMatchObject({ name: 'dblclick', bid: '3' });
    expect(parseAction("fill('7', 'hello world')")).toEqual({ name: 'fill', bid: '7', value: 'hello world' });
    expect(parseAction("select_option('4', ['a', 'b'])")).toEqual({ name: 'select_option', bid: '4', options: ['a', 'b'] });
    expect(parseAction("select_option('4', 'Oct 18')")).toEqual({ name: 'select_option', bid: '4', options: ['Oct 18'] });
    expect(parseAction("hover('1')")).toEqual({ name: 'hover', bid: '1' });
    expect(parseAction("focus('1')")).toEqual({ name: 'focus', bid: '1' });
    expect(parseAction("clear('1')")).toEqual({ name: 'clear', bid: '1' });
    expect(parseAction("press('5', 'Enter')")).toEqual({ name: 'press', bid: '5', key: 'Enter' });
    expect(parseAction('scroll(0, -200.5)')).toEqual({ name: 'scroll', deltaX: 0, deltaY: -200.5 });
    expect(parseAction("keyboard_type('abc')")).toEqual({ name: 'keyboard_type', text: 'abc' });
    expect(parseAction("keyboard_press('Control+a')")).toEqual({ name: 'keyboard_press', key: 'Control+a' });
    expect(parseAction('noop()')).toEqual({ name: 'noop', waitMs: 1000 });
    expect(parseAction('noop(wait_ms=250)')).toEqual({ name: 'noop', waitMs: 250 });
    expect(parseAction("send_msg_to_user('done')")).toEqual({ name: 'send_msg_to_user', text: 'done' });
  });

  it('accepts unquoted and numeric bids, escapes and surrounding text', () => {
    expect(parseAction('click(12)')).toMatchObject({ bid: '12' });
    expect(parseAction('click(a12)')).toMatchObject({ bid: 'a12' });
    expect(parseAction("I will press the button.\n```\nclick( '12' , )\n```\nthanks")).toMatchObject({ name: 'click', bid: '12' });
    expect(parseAction(String.raw`fill('3', 'it\'s "x"\n\u0041')`)).toMatchObject({ value: 'it\'s "x"\nA' });
    // the first well-formed call wins
    expect(parseAction("click(the button) then click('5')")).toMatchObject({ bid: '5' });
  });

  it('rejects malformed actions with clear messages', () => {
    const bad: Array<[string, RegExp]> = [
      ['', /no action found/],
      ['press the button', /no action found/],
      ["click('12'", /missing '\)'|unclosed/],
      ['click()', /missing the required argument 'bid'/],
      ["fill('1')", /missing the required argument 'value'/],
      ["click('1 2')", /not a valid bid/],
      ["click('12', wrong=1)", /unexpected keyword argument 'wrong'/],
      ["click('12', button='side')", /button must be/],
      ["fill('1', 5)", /must be a string/],
      ['noop(-5)', /wait_ms must be between/],
      ["click('12'))junk(", /.*/],
      ["fill('1', 'unterminated)", /unterminated string/],
      ['scroll(1, "a")', /must be a number/],
      ["select_option('1', [])", /non-empty list/],
      ["myclick('1')", /no action found/],
    ];
    for (const [text, message] of bad) {
      let thrown: unknown;
      try {
        parseAction(text);
      } catch (e) {
        thrown = e;
      }
      if (text === "click('12'))junk(") { expect(thrown).toBeUndefined(); continue; } // trailing text tolerated
      expect(thrown, text).toBeInstanceOf(ActionParseError);
      expect((thrown as Error).message, text).toMatch(message);
    }
  });

  it('round-trips through formatAction', () => {
    const actions: ParsedAction[] = [
      { name: 'click', bid: '12', button: 'left', modifiers: [] },
      { name: 'click', bid: '12', button: 'middle', modifiers: ['Alt', 'Shift'] },
      { name: 'fill', bid: '7', value: "O'Neil \\ \"q\"\n\t" },
      { name: 'select_option', bid: '4', options: ['a', "b'c"] },
      { name: 'press', bid: '5', key: 'Enter' },
      { name: 'scroll', deltaX: -3.5, deltaY: 100 },
      { name: 'keyboard_type', text: 'héllo ✓' },
      { name: 'noop', waitMs: 1000 },
      { name: 'noop', waitMs: 0 },
      { name: 'send_msg_to_user', text: 'bye' },
    ];
    for (const action of actions) expect(parseAction(formatAction(action))).toEqual(action);
  });

  it('survives fuzzing: only ActionParseError, never a crash', () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const alphabet = "clickfilnoprsetuvwxyz_()[]'\",=\\ \n\t0123456789-+.eE#{}<>;:`";
    const fragments = ['click(', 'fill(', 'select_option(', 'noop(', 'scroll(', "'", '"', '[', ']', ')', ',', '=', 'wait_ms', 'button', '\\', '\\x4', '\\u00', 'True', 'None', '1e999', '-', '12', 'a1'];
    let parsed = 0;
    for (let i = 0; i < 5000; i++) {
      let text = '';
      const len = rand(60);
      for (let j = 0; j < len; j++) {
        text += rand(3) === 0 ? fragments[rand(fragments.length)] : alphabet[rand(alphabet.length)];
      }
      if (rand(10) === 0) text += String.fromCharCode(rand(0xffff));
      try {
        const action = parseAction(text);
        parsed++;
        // whatever parses must format back into the same action
        expect(parseAction(formatAction(action))).toEqual(action);
      } catch (e) {
        if (!(e instanceof ActionParseError)) throw new Error(`non-ActionParseError for ${JSON.stringify(text)}: ${String(e)}`);
        expect(e.message.length).toBeGreaterThan(0);
      }
    }
    expect(parsed).toBeGreaterThan(0);
  });
});
