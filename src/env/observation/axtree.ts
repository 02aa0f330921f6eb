/**
 * Accessibility tree text in BrowserGym's `flatten_axtree_to_str` format: depth-first, one line per
 * node, tab-indented, `[bid] role 'name' value='…', prop=value…`. Nameless nodes and attribute-less
 * `generic` nodes are skipped (their children move up a level); StaticText that repeats its parent's
 * name is dropped.
 */
import type { CDPSession } from 'playwright-core';

interface AXValue { type: string; value?: unknown }
interface AXProperty { name: string; value: AXValue }
export interface AXNode {
  nodeId: string;
  ignored?: boolean;
  role?: AXValue;
  name?: AXValue;
  value?: AXValue;
  properties?: AXProperty[];
  childIds?: string[];
  backendDOMNodeId?: number;
}
interface DOMNode { backendNodeId: number; nodeType: number; attributes?: string[]; children?: DOMNode[]; contentDocument?: DOMNode; shadowRoots?: DOMNode[] }

// InlineTextBox nodes only repeat their StaticText parent.
const IGNORED_ROLES = new Set(['LineBreak', 'InlineTextBox']);
const IGNORED_PROPERTIES = new Set(['editable', 'readonly', 'level', 'settable', 'multiline', 'invalid', 'focusable']);
const FLAG_PROPERTIES = new Set(['required', 'focused', 'atomic']);

/** Python repr() of a string/number/boolean, as BrowserGym prints properties. */
export function pyRepr(value: unknown): string {
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : String(value);
  if (value === null || value === undefined) return 'None';
  const s = String(value);
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = '';
  for (const ch of s) {
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch < ' ') out += '\\x' + ch.charCodeAt(0).toString(16).padStart(2, '0');
    else out += ch;
  }
  return quote + out + quote;
}

/** backendNodeId → bid for every element carrying a bid attribute. */
export async function fetchBidMap(cdp: CDPSession, bidAttribute: string): Promise<Map<number, string>> {
  const { root } = (await cdp.send('DOM.getDocument', { depth: -1, pierce: false })) as { root: DOMNode };
  const map = new Map<number, string>();
  const stack: DOMNode[] = [root];
  while (stack.length > 0) {
    const node = stack.pop()!;
    const attrs = node.attributes;
    if (attrs) {
      for (let i = 0; i + 1 < attrs.length; i += 2) {
        if (attrs[i] === bidAttribute) { map.set(node.backendNodeId, attrs[i + 1]); break; }
      }
    }
    if (node.children) stack.push(...node.children);
  }
  return map;
}

export async function fetchAXNodes(cdp: CDPSession): Promise<AXNode[]> {
  const { nodes } = (await cdp.send('Accessibility.getFullAXTree', {})) as { nodes: AXNode[] };
  return nodes;
}

/**
 * `origin` (the task server's, whose port changes from run to run) is cut from URL properties, so the same page
 * prints the same text in every run and the prompt does not carry a random port.
 */
export function flattenAXTree(nodes: AXNode[], bids: Map<number, string>, origin?: string): string {
  if (nodes.length === 0) return '';
  const byId = new Map<string, AXNode>();
  for (const node of nodes) byId.set(node.nodeId, node);
  const lines: string[] = [];
  const visited = new Set<string>();

  const visit = (node: AXNode, depth: number, parentName: string): void => {
    if (visited.has(node.nodeId)) return; // CDP trees are acyclic, but never loop on a bad one
    visited.add(node.nodeId);
    const role = String(node.role?.value ?? '');
    let skip = node.name === undefined || IGNORED_ROLES.has(role);
    const name = String(node.name?.value ?? '').trim();
    let printedName = parentName;
    if (!skip) {
      const attributes: string[] = [];
      for (const prop of node.properties ?? []) {
        if (IGNORED_PROPERTIES.has(prop.name) || prop.value?.value === undefined) continue;
        if (FLAG_PROPERTIES.has(prop.name)) { if (prop.value.value) attributes.push(prop.name); }
        else {
          let value = prop.value.value;
          if (origin && prop.name === 'url' && typeof value === 'string' && value.startsWith(origin))
            value = value.slice(origin.length) || '/';
          attributes.push(`${prop.name}=${pyRepr(value)}`);
        }
      }
      if (role === 'generic' && attributes.length === 0) skip = true;
      if (role === 'StaticText' && name.length > 0 && parentName.includes(name)) skip = true;
      if (!skip) {
        const bid = node.backendDOMNodeId !== undefined ? bids.get(node.backendDOMNodeId) : undefined;
        let line = `${role} ${pyRepr(name)}`;
        if (bid !== undefined) line = `[${bid}] ${line}`;
        if (node.value?.value !== undefined) line += ` value=${pyRepr(node.value.value)}`;
        if (attributes.length > 0) line += ', ' + attributes.join(', ');
        lines.push('\t'.repeat(depth) + line);
        printedName = name;
      }
    }
    for (const childId of node.childIds ?? []) {
      const child = byId.get(childId);
      if (child && childId !== node.nodeId) visit(child, skip ? depth : depth + 1, printedName);
    }
  };
  visit(nodes[0], 0, '');
  return lines.join('\n');
}
