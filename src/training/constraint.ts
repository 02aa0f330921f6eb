// Constrained decoding: a token trie over the page's valid action strings. The sampler only follows the trie's
// edges, and the trainer rebuilds the same per-token masks to score the completion under the policy that
// actually sampled it.
import type { AllowedTokens, TokenTrie } from '../native/addon.js';

/** Builds a trie over each action's tokens followed by `endToken`; reaching a leaf ends the completion. */
export function buildActionTrie(actions: readonly string[], encode: (text: string) => number[], endToken: number):
  TokenTrie {
  if (actions.length === 0) throw new Error('buildActionTrie: no valid actions to constrain to');
  const children: Map<number, number>[] = [new Map()];
  for (const action of new Set(actions)) {
    let node = 0;
    for (const token of [...encode(action), endToken]) {
      let next = children[node].get(token);
      if (next === undefined) {
        next = children.length;
        children.push(new Map());
        children[node].set(token, next);
      }
      node = next;
    }
  }
  const childOffsets = new Int32Array(children.length + 1);
  const edges = children.reduce((n, c) => n + c.size, 0);
  const childTokens = new Int32Array(edges);
  const childNodes = new Int32Array(edges);
  let e = 0;
  children.forEach((map, node) => {
    childOffsets[node] = e;
    for (const [token, child] of [...map].sort((a, b) => a[0] - b[0])) {
      childTokens[e] = token;
      childNodes[e] = child;
      e++;
    }
  });
  childOffsets[children.length] = e;
  return { childOffsets, childTokens, childNodes };
}

/** The allowed-token set at each position of a completion sampled under `trie`, as rows for the scorer. */
export function allowedAlongPath(trie: TokenTrie, completion: ArrayLike<number>): Int32Array[] {
  const rows: Int32Array[] = [];
  let node = 0;
  for (let i = 0; i < completion.length; i++) {
    const start = trie.childOffsets[node];
    const end = trie.childOffsets[node + 1];
    const allowed = trie.childTokens.subarray(start, end);
    rows.push(allowed.slice());
    const k = allowed.indexOf(completion[i]);
    if (k < 0) throw new Error(`allowedAlongPath: token ${completion[i]} at position ${i} is not in the trie`);
    node = trie.childNodes[start + k];
  }
  return rows;
}

/** Packs rows of allowed tokens into the scorer's compressed form. */
export function packAllowed(rows: readonly Int32Array[]): AllowedTokens {
  const offsets = new Int32Array(rows.length + 1);
  rows.forEach((r, i) => (offsets[i + 1] = offsets[i] + r.length));
  const tokens = new Int32Array(offsets[rows.length]);
  rows.forEach((r, i) => tokens.set(r, offsets[i]));
  return { offsets, tokens };
}
