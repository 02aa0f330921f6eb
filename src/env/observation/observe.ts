/** Builds an Observation from a page: pruned HTML and elements (page script), AXTree (CDP). */
import type { CDPSession, Page } from 'playwright-core';
import { formatAction } from '../actions/parser.js';
import { fetchAXNodes, fetchBidMap, flattenAXTree } from './axtree.js';
import { BID_ATTRIBUTE, type PageElementInfo, type PageSnapshot } from './pageScript.js';

/**
 * The valid-action set, in document order, then `noop()`:
 *  - buttons, links, tabs, checkboxes, radios, elements with their own click handler or a clickable
 *    ARIA role: `click('bid')`;
 *  - editable text fields: `click('bid')` and `fill('bid', 'v')` for every quoted value v in the goal
 *    (`Enter "apple" ...`), so a trie over these strings contains the answer; when the goal quotes
 *    nothing, the template `fill('bid', '')` stands in (its value is free text);
 *  - <select>: one `select_option('bid', 'label')` per enabled option.
 * Only visible (non-zero box, not display/visibility/opacity hidden), enabled elements count. Click
 * handlers delegated to an ancestor (jQuery `.on(sel, ...)`) are not detected.
 */
export function validActionsFor(elements: PageElementInfo[], goal = ''): string[] {
  const fillValues = quotedValues(goal);
  if (fillValues.length === 0) fillValues.push('');
  const actions: string[] = [];
  for (const el of elements) {
    switch (el.kind) {
      case 'click':
      case 'checkbox':
      case 'radio':
        actions.push(formatAction({ name: 'click', bid: el.bid, button: 'left', modifiers: [] }));
        break;
      case 'text':
        actions.push(formatAction({ name: 'click', bid: el.bid, button: 'left', modifiers: [] }));
        for (const value of fillValues) actions.push(formatAction({ name: 'fill', bid: el.bid, value }));
        break;
      case 'select':
        for (const option of el.options) actions.push(formatAction({ name: 'select_option', bid: el.bid, options: [option] }));
        break;
    }
  }
  actions.push('noop()');
  return [...new Set(actions)];
}

/** Distinct "double-quoted" (or 'single-quoted' after a space) substrings of the goal, in order. */
export function quotedValues(goal: string): string[] {
  const values: string[] = [];
  for (const match of goal.matchAll(/"([^"\n]{1,200})"|(?<![A-Za-z0-9])'([^'\n]{1,200})'(?![A-Za-z0-9])/g)) {
    const value = match[1] ?? match[2];
    if (value !== undefined && !values.includes(value)) values.push(value);
  }
  return values;
}

export interface PageObservation {
  snapshot: PageSnapshot;
  axtree: string;
}

export async function observePage(page: Page, cdp: CDPSession, freshBids: boolean): Promise<PageObservation> {
  const fromPage = (await page.evaluate((fresh) => {
    const api = (window as unknown as { __webgrpo?: { observe(f: boolean): unknown } }).__webgrpo;
    return api ? api.observe(fresh) : null;
  }, freshBids)) as PageSnapshot | null;
  // A page without our script (e.g. a browser error page) still yields an observation.
  const snapshot: PageSnapshot = fromPage ?? {
    html: '',
    url: page.url(),
    elements: [],
    wob: { present: false, rawReward: 0, reward: 0, done: false, reason: null, episodeId: 0, ready: true },
  };
  const [bids, nodes] = await Promise.all([fetchBidMap(cdp, BID_ATTRIBUTE), fetchAXNodes(cdp)]);
  const origin = /^https?:/.test(snapshot.url) ? new URL(snapshot.url).origin : undefined;
  return { snapshot, axtree: flattenAXTree(nodes, bids, origin) };
}
