import { describe, expect, it } from 'vitest';
import { flattenAXTree, pyRepr, type AXNode } from '../../src/env/observation/axtree.js';
import { quotedValues, validActionsFor } from '../../src/env/observation/observe.js';

describe('AXTree text (BrowserGym format)', () => {
  it('prints Python reprs', () => {
    expect(pyRepr('abc')).toBe("'abc'");
    expect(pyRepr("it's")).toBe('"it\'s"');
    expect(pyRepr('both \' and "')).toBe("'both \\' and \"'");
    expect(pyRepr('a\nb')).toBe("'a\\nb'");
    expect(pyRepr(true)).toBe('True');
    expect(pyRepr(3)).toBe('3');
  });

  it('flattens depth-first, skipping nameless, generic and redundant nodes', () => {
    const str = (value: string) => ({ type: 'computedString', value });
    const nodes: AXNode[] = [
      { nodeId: '1', role: { type: 'role', value: 'RootWebArea' }, name: str('Task'), properties: [{ name: 'focused', value: { type: 'boolean', value: true } }], childIds: ['2'] },
      { nodeId: '2', role: { type: 'role', value: 'generic' }, name: str(''), childIds: ['3', '5', '6'], backendDOMNodeId: 20 },
      { nodeId: '3', role: { type: 'role', value: 'button' }, name: str('OK'), childIds: ['4'], backendDOMNodeId: 30 },
      { nodeId: '4', role: { type: 'role', value: 'StaticText' }, name: str('OK'), childIds: [] },
      { nodeId: '5', role: { type: 'role', value: 'textbox' }, name: str('Name'), value: { type: 'string', value: 'bob' },
        properties: [{ name: 'focusable', value: { type: 'boolean', value: true } }, { name: 'required', value: { type: 'boolean', value: true } }],
        childIds: [], backendDOMNodeId: 50 },
      { nodeId: '6', ignored: true, role: { type: 'role', value: 'none' }, childIds: ['7'] },
      { nodeId: '7', role: { type: 'role', value: 'checkbox' }, name: str('x'), properties: [{ name: 'checked', value: { type: 'tristate', value: 'true' } }], childIds: [], backendDOMNodeId: 70 },
    ];
    const bids = new Map([[20, '2'], [30, '3'], [50, '5'], [70, '7']]);
    expect(flattenAXTree(nodes, bids)).toBe([
      "RootWebArea 'Task', focused",
      "\t[3] button 'OK'",
      "\t[5] textbox 'Name' value='bob', required",
      "\t[7] checkbox 'x', checked='true'",
    ].join('\n'));
  });

  it('cuts the task server origin from URL properties, so the text does not depend on the port', () => {
    const str = (value: string) => ({ type: 'computedString', value });
    const url = (value: string) => ({ name: 'url', value: { type: 'string', value } });
    const nodes: AXNode[] = [
      { nodeId: '1', role: { type: 'role', value: 'RootWebArea' }, name: str('Task'), properties: [url('http://127.0.0.1:40123/miniwob/a.html')], childIds: ['2', '3'] },
      { nodeId: '2', role: { type: 'role', value: 'link' }, name: str('home'), properties: [url('http://127.0.0.1:40123/')], childIds: [], backendDOMNodeId: 20 },
      { nodeId: '3', role: { type: 'role', value: 'link' }, name: str('out'), properties: [url('https://example.com/x')], childIds: [], backendDOMNodeId: 30 },
    ];
    const bids = new Map([[20, '2'], [30, '3']]);
    expect(flattenAXTree(nodes, bids, 'http://127.0.0.1:40123')).toBe([
      "RootWebArea 'Task', url='/miniwob/a.html'",
      "\t[2] link 'home', url='/'",
      "\t[3] link 'out', url='https://example.com/x'",
    ].join('\n'));
  });

  it('builds the valid-action set from elements and the goal', () => {
    expect(quotedValues('Enter "apple" and "pear" then "apple"')).toEqual(['apple', 'pear']);
    expect(validActionsFor([
      { bid: '3', kind: 'click', options: [] },
      { bid: '4', kind: 'text', options: [] },
      { bid: '5', kind: 'select', options: ['a', "b'c"] },
    ], 'Type "hi"')).toEqual(["click('3')", "click('4')", "fill('4', 'hi')", "select_option('5', 'a')", "select_option('5', 'b\\'c')", 'noop()']);
    expect(validActionsFor([{ bid: '4', kind: 'text', options: [] }], 'no quotes')).toEqual(["click('4')", "fill('4', '')", 'noop()']);
  });
});
