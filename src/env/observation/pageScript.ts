/**
 * Script installed in every task page before its own scripts run (context.addInitScript).
 * It defines `window.__webgrpo` with:
 *  - click-listener tracking (wraps EventTarget.prototype.addEventListener) so elements with their
 *    own click handlers count as clickable for the valid-action set;
 *  - bid assignment: every element in <body> gets a `bid` attribute. On a fresh episode bids are
 *    numbered in document order from 1, so the same DOM always gets the same bids; later steps keep
 *    existing bids and number new elements after the largest one (BrowserGym-like persistence);
 *  - observe(): the pruned HTML, the interactive elements and the WOB_* globals in one round trip.
 * Kept as plain JavaScript text so no transpiler touches code that runs inside the page.
 */
export const BID_ATTRIBUTE = 'bid';

export interface PageElementInfo {
  bid: string;
  /** click | text | select | checkbox | radio: what validActions offers for it */
  kind: 'click' | 'text' | 'select' | 'checkbox' | 'radio';
  options: string[];
}

export interface PageSnapshot {
  html: string;
  url: string;
  elements: PageElementInfo[];
  wob: { present: boolean; rawReward: number; reward: number; done: boolean; reason: string | null; episodeId: number; ready: boolean };
}

export const PAGE_SCRIPT = String.raw`
(() => {
  if (window.__webgrpo) return;
  const clickTargets = new WeakSet();
  const CLICK_EVENTS = new Set(['click', 'mousedown', 'mouseup', 'dblclick', 'pointerdown', 'pointerup']);
  const originalAdd = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (CLICK_EVENTS.has(type) && this instanceof Element) clickTargets.add(this);
    return originalAdd.call(this, type, listener, options);
  };

  // Tasks never need popups; a popup page would also escape the per-page request rules.
  window.open = function () { return null; };

  const BID = 'bid';
  let nextBid = 1;

  function allElements() {
    if (!document.body) return [];
    return [document.body, ...document.body.querySelectorAll('*')];
  }

  function assignBids(fresh) {
    const elements = allElements();
    const seen = new Set();
    if (fresh) {
      for (const el of document.querySelectorAll('[' + BID + ']')) el.removeAttribute(BID);
      nextBid = 1;
    } else {
      for (const el of elements) {
        const n = Number(el.getAttribute(BID));
        if (Number.isInteger(n) && n >= nextBid) nextBid = n + 1;
      }
    }
    for (const el of elements) {
      const bid = el.getAttribute(BID);
      if (bid !== null && !seen.has(bid)) { seen.add(bid); continue; }
      const fresh = String(nextBid++); // duplicates (cloned nodes) get a new bid too
      el.setAttribute(BID, fresh);
      seen.add(fresh);
    }
  }

  const TEXT_TYPES = new Set(['', 'text', 'password', 'email', 'search', 'tel', 'url', 'number']);
  const CLICK_INPUT_TYPES = new Set(['button', 'submit', 'reset', 'image', 'file', 'color', 'date', 'time', 'datetime-local', 'month', 'week', 'range']);
  const CLICK_ROLES = new Set(['button', 'link', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio', 'option', 'switch', 'treeitem', 'gridcell']);

  function isVisible(el) {
    if (!el.isConnected) return false;
    if (typeof el.checkVisibility === 'function' && !el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })) return false;
    const rect = el.getBoundingClientRect();
    return rect.width > 0 && rect.height > 0;
  }

  function isDisabled(el) {
    return el.disabled === true || el.getAttribute('aria-disabled') === 'true' || el.closest('fieldset[disabled]') !== null;
  }

  function kindOf(el) {
    const tag = el.tagName.toLowerCase();
    const role = (el.getAttribute('role') || '').toLowerCase();
    if (tag === 'input') {
      const type = (el.getAttribute('type') || '').toLowerCase();
      if (TEXT_TYPES.has(type)) return el.readOnly ? null : 'text';
      if (type === 'checkbox') return 'checkbox';
      if (type === 'radio') return 'radio';
      if (type === 'hidden') return null;
      if (CLICK_INPUT_TYPES.has(type)) return 'click';
      return 'click';
    }
    if (tag === 'textarea') return el.readOnly ? null : 'text';
    if (tag === 'select') return 'select';
    if (el.isContentEditable && (el.parentElement === null || !el.parentElement.isContentEditable)) return 'text';
    if (role === 'checkbox') return 'checkbox';
    if (role === 'radio') return 'radio';
    if (role === 'textbox' || role === 'searchbox') return 'text';
    if (tag === 'button' || tag === 'summary' || (tag === 'a' && el.hasAttribute('href'))) return 'click';
    if (CLICK_ROLES.has(role)) return 'click';
    if (tag === 'option' || tag === 'body' || tag === 'html') return null;
    if (clickTargets.has(el) || typeof el.onclick === 'function' || typeof el.onmousedown === 'function') return 'click';
    return null;
  }

  function interactiveElements() {
    const out = [];
    for (const el of allElements()) {
      const kind = kindOf(el);
      if (kind === null || isDisabled(el) || !isVisible(el)) continue;
      const options = kind === 'select'
        ? [...el.options].filter((o) => !o.disabled).map((o) => (o.label || o.textContent || '').trim()).filter((t) => t.length > 0)
        : [];
      out.push({ bid: el.getAttribute(BID), kind, options });
    }
    return out;
  }

  // Pruned HTML (BrowserGym prune_html spirit): no script/style/br/comments, no inline style or
  // event-handler attributes, current form values written as attributes, bid-only div/span/p unwrapped.
  const DROP_TAGS = new Set(['script', 'style', 'br', 'noscript', 'link', 'meta', 'template']);
  const UNWRAP_TAGS = new Set(['div', 'span', 'p']);
  const VOID_TAGS = new Set(['input', 'img', 'hr', 'area', 'col', 'embed', 'source', 'track', 'wbr']);
  function escapeText(s) { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  function escapeAttr(s) { return s.replace(/&/g, '&amp;').replace(/"/g, '&quot;'); }
  function serialize(node, out) {
    if (node.nodeType === Node.TEXT_NODE) {
      const text = node.textContent.replace(/\s+/g, ' ');
      if (text.trim().length > 0) out.push(escapeText(text));
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    const tag = node.tagName.toLowerCase();
    if (DROP_TAGS.has(tag)) return;
    const attrs = [];
    for (const attr of node.attributes) {
      const name = attr.name.toLowerCase();
      if (name === 'style' || name.startsWith('on')) continue;
      if (name === 'value' || name === 'checked' || name === 'selected') continue;
      attrs.push([name, attr.value]);
    }
    if (tag === 'input' || tag === 'textarea' || tag === 'select') {
      if (node.type !== 'password' && node.value !== '' && tag !== 'textarea') attrs.push(['value', node.value]);
      if (node.type === 'password' && node.value !== '') attrs.push(['value', '*'.repeat(node.value.length)]);
    }
    if ((node.type === 'checkbox' || node.type === 'radio') && node.checked) attrs.push(['checked', '']);
    if (tag === 'option' && node.selected) attrs.push(['selected', '']);
    const bidOnly = attrs.length === 1 && attrs[0][0] === BID;
    const children = () => { for (const child of node.childNodes) serialize(child, out); };
    if (UNWRAP_TAGS.has(tag) && bidOnly) { children(); return; }
    out.push('<' + tag + attrs.map(([k, v]) => (v === '' ? ' ' + k : ' ' + k + '="' + escapeAttr(v) + '"')).join('') + '>');
    if (VOID_TAGS.has(tag)) return;
    if (tag === 'textarea') out.push(escapeText(node.value));
    else children();
    out.push('</' + tag + '>');
  }

  function wobState() {
    const w = window;
    const present = typeof w.core === 'object' && w.core !== null && 'WOB_DONE_GLOBAL' in w;
    return {
      present,
      rawReward: Number(w.WOB_RAW_REWARD_GLOBAL) || 0,
      reward: Number(w.WOB_REWARD_GLOBAL) || 0,
      done: w.WOB_DONE_GLOBAL === true,
      reason: w.WOB_REWARD_REASON === undefined || w.WOB_REWARD_REASON === null ? null : String(w.WOB_REWARD_REASON),
      episodeId: Number(w.WOB_EPISODE_ID) || 0,
      ready: w.WOB_TASK_READY !== false,
    };
  }

  function byBid(bid) {
    return document.querySelector('[' + BID + '="' + CSS.escape(bid) + '"]');
  }

  // Where a click on the element would land, if that is already certain: visible, enabled, in the
  // viewport and not covered at its centre. Anything else takes Playwright's waiting click.
  function clickPoint(bid) {
    const el = byBid(bid);
    if (el === null) return { status: 'missing' };
    if (!isVisible(el) || isDisabled(el)) return { status: 'slow' };
    let r = el.getBoundingClientRect();
    if (r.top < 0 || r.left < 0 || r.bottom > window.innerHeight || r.right > window.innerWidth) {
      el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
      r = el.getBoundingClientRect();
    }
    const x = r.left + r.width / 2;
    const y = r.top + r.height / 2;
    const hit = document.elementFromPoint(x, y);
    if (hit === null || !(hit === el || el.contains(hit))) return { status: 'slow' };
    return { status: 'ok', x, y };
  }

  Object.defineProperty(window, '__webgrpo', {
    enumerable: false,
    value: Object.freeze({
      exists: (bid) => byBid(bid) !== null,
      clickPoint,
      assignBids,
      wobState,
      observe(freshBids) {
        assignBids(freshBids === true);
        const out = [];
        if (document.documentElement) serialize(document.documentElement, out);
        return { html: out.join(''), url: location.href, elements: interactiveElements(), wob: wobState() };
      },
    }),
  });
})();
`;
