/**
 * Runs a parsed action on a Playwright page, BrowserGym style. Ordinary failures (no such bid,
 * element hidden or covered, timeout, unknown key) come back as an error message for the
 * observation; only a dead page/browser throws.
 */
import type { Page } from 'playwright-core';
import { isFatalBrowserError } from '../browser.js';
import { BID_ATTRIBUTE } from '../observation/pageScript.js';
import type { ParsedAction } from './parser.js';

export interface ExecuteOptions {
  timeoutMs: number;
  maxNoopWaitMs: number;
}

type ClickPoint = { status: 'missing' } | { status: 'slow' } | { status: 'ok'; x: number; y: number };

/** Calls a helper of the page script (see observation/pageScript.ts). */
async function pageCall<T>(page: Page, helper: 'clickPoint' | 'exists', bid: string): Promise<T> {
  const result = await page.evaluate(
    ([name, arg]) => {
      const api = (window as unknown as { __webgrpo?: Record<string, (a: string) => unknown> }).__webgrpo;
      return api ? api[name](arg) : null;
    },
    [helper, bid] as const,
  );
  if (result === null) throw new Error('the page has no webgrpo page script (not a task page?)');
  return result as T;
}

/** Returns '' on success or the error message the agent should see. */
export async function executeAction(page: Page, action: ParsedAction, opts: ExecuteOptions): Promise<string> {
  try {
    if ('bid' in action) {
      // bids are validated by the parser ([A-Za-z0-9_-]), so they are safe inside the selector.
      const locator = page.locator(`[${BID_ATTRIBUTE}="${action.bid}"]`).first();
      const missing = `ValueError: Could not find element with bid "${action.bid}"`;
      if (action.name === 'click' && action.modifiers.length === 0) {
        // Fast path: a plain click on a ready element is dispatched at once; Playwright's click
        // would first wait two animation frames for the element to be "stable" (~35 ms).
        const point = await pageCall<ClickPoint>(page, 'clickPoint', action.bid);
        if (point.status === 'missing') return missing;
        if (point.status === 'ok') {
          await page.mouse.click(point.x, point.y, { button: action.button });
          return '';
        }
      } else if (!(await pageCall<boolean>(page, 'exists', action.bid))) {
        return missing;
      }
      const timeout = opts.timeoutMs;
      switch (action.name) {
        case 'click':
          await locator.click({ button: action.button, modifiers: action.modifiers, timeout });
          break;
        case 'dblclick':
          await locator.dblclick({ button: action.button, modifiers: action.modifiers, timeout });
          break;
        case 'fill':
          await locator.fill(action.value, { timeout });
          break;
        case 'select_option':
          await locator.selectOption(action.options, { timeout });
          break;
        case 'hover':
          await locator.hover({ timeout });
          break;
        case 'focus':
          await locator.focus({ timeout });
          break;
        case 'clear':
          await locator.clear({ timeout });
          break;
        case 'press':
          await locator.press(action.key, { timeout });
          break;
      }
      return '';
    }
    switch (action.name) {
      case 'scroll':
        await page.mouse.wheel(action.deltaX, action.deltaY);
        break;
      case 'keyboard_type':
        await page.keyboard.type(action.text);
        break;
      case 'keyboard_press':
        await page.keyboard.press(action.key);
        break;
      case 'noop':
        await page.waitForTimeout(Math.min(action.waitMs, opts.maxNoopWaitMs));
        break;
      case 'send_msg_to_user':
        break; // recorded by the environment; nothing happens in the page
    }
    return '';
  } catch (error) {
    if (isFatalBrowserError(error)) throw error;
    return describePlaywrightError(error);
  }
}

/** First line of a Playwright error plus the most telling line of its call log. */
export function describePlaywrightError(error: unknown): string {
  // eslint-disable-next-line no-control-regex
  const message = (error instanceof Error ? error.message : String(error)).replace(/\u001b\[[0-9;]*m/g, '');
  const [head, ...rest] = message.split('\n');
  const hints = rest
    .map((l) => l.trim().replace(/^-\s*/, '').replace(/^\d+\s*×\s*/, ''))
    .filter((l) => l.length > 0 && !/^(Call log|=+|waiting for|retrying|locator resolved to|attempting|waiting \d+ms|scrolling into view|done scrolling|performing|navigations have finished|element is visible, enabled and stable)/i.test(l));
  const name = error instanceof Error && error.name && error.name !== 'Error' ? `${error.name}: ` : '';
  const hint = hints.length > 0 ? ` (${hints[hints.length - 1].slice(0, 200)})` : '';
  return `${name}${head.trim()}${hint}`;
}
