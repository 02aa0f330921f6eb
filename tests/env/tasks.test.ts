import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvPool, listTasks, type Observation } from '../../src/env/index.js';
import { ORACLES, axLines } from './oracles.js';

const SEEDS = 20;
let pool: EnvPool;

beforeAll(async () => {
  pool = await EnvPool.create({ size: 4, browsers: 1, maxSteps: 10 });
});
afterAll(async () => {
  await pool?.close();
});

async function solve(task: string, seed: number): Promise<{ obs: Observation; actions: string[] }> {
  const episode = await pool.reset(task, seed);
  const actions: string[] = [];
  try {
    let obs = episode.observation;
    while (!obs.done && !obs.truncated) {
      const action = ORACLES[task](obs);
      // the oracle's action is always among the valid actions offered to the model
      expect(obs.validActions, `${task} seed ${seed}`).toContain(action);
      actions.push(action);
      obs = await episode.step(action);
      expect(obs.error, `${task} seed ${seed} after ${action}`).toBe('');
    }
    return { obs, actions };
  } finally {
    await episode.release();
  }
}

describe('built-in tasks', () => {
  it('lists at least the 12 required tasks, each with an oracle', () => {
    const tasks = listTasks();
    for (const name of ['click-test', 'click-test-2', 'click-button', 'click-link', 'click-dialog', 'click-checkboxes',
      'click-tab', 'focus-text', 'enter-text', 'enter-password', 'login-user', 'book-flight-lite']) {
      expect(tasks).toContain(name);
    }
    for (const task of tasks) expect(ORACLES[task], task).toBeTypeOf('function');
  });

  for (const task of Object.keys(ORACLES)) {
    it(`${task}: the oracle reaches reward 1 over ${SEEDS} seeds`, async () => {
      const results = await Promise.all(Array.from({ length: SEEDS }, (_, seed) => solve(task, seed)));
      for (const [seed, { obs, actions }] of results.entries()) {
        expect(obs.done, `${task} seed ${seed}: ${actions.join(' ')}`).toBe(true);
        expect(obs.reward, `${task} seed ${seed}: ${actions.join(' ')}`).toBe(1);
        expect(obs.rawReward).toBeGreaterThan(0);
        expect(obs.validActions).toEqual([]);
      }
      // seeds change the episode: not every goal is the same (click-test and focus-text have one goal)
      const goals = new Set(results.map((r) => r.obs.goal));
      if (!['click-test', 'focus-text', 'click-dialog'].includes(task)) expect(goals.size).toBeGreaterThan(1);
    });
  }

  it('is deterministic for a seed, with stable bids', async () => {
    const first = await pool.reset('click-button', 7);
    const a = first.observation;
    await first.release();
    const second = await pool.reset('click-button', 7);
    const b = second.observation;
    await second.release();
    expect(b.goal).toBe(a.goal);
    expect(b.axtree).toBe(a.axtree);
    expect(b.html).toBe(a.html);
    expect(b.validActions).toEqual(a.validActions);
    // same DOM shape under another seed → same bids
    const bids = async (seed: number): Promise<string[]> => {
      const ep = await pool.reset('click-test-2', seed);
      const out = axLines(ep.observation).map((l) => `${l.bid}:${l.role}`);
      await ep.release();
      return out;
    };
    expect(await bids(1)).toEqual(await bids(2));
  });

  it('wrong answers give reward 0 and bad actions give errors, not exceptions', async () => {
    const ep = await pool.reset('click-test-2', 3);
    let obs = ep.observation;
    expect(obs.goal).toMatch(/^Click button (ONE|TWO)\.$/);
    expect(obs.axtree).not.toContain(obs.goal); // the goal is not left on the page
    obs = await ep.step("click('9999')");
    expect(obs.error).toMatch(/Could not find element with bid "9999"/);
    expect(obs.step).toBe(1);
    obs = await ep.step('please click the thing');
    expect(obs.error).toMatch(/^ActionParseError: no action found/);
    obs = await ep.step("press('4', 'NoSuchKey')");
    expect(obs.error).toMatch(/Unknown key/);
    const wrong = obs.goal.endsWith('ONE.') ? 'TWO' : 'ONE';
    const bid = axLines(obs).find((l) => l.role === 'button' && l.name === wrong)!.bid;
    obs = await ep.step(`click('${bid}')`);
    expect(obs.done).toBe(true);
    expect(obs.reward).toBe(0);
    expect(obs.rawReward).toBe(-1);
    obs = await ep.step('noop()');
    expect(obs.error).toMatch(/episode is over/);
    await ep.release();
  });

  it('a click on a hidden element waits, then fails with Playwright\'s reason', async () => {
    const ep = await pool.reset('click-tab', 2);
    const hiddenPanel = ep.observation.html.match(/<div class="panel" role="tabpanel" id="tabs-2" bid="\d+"><a href="#" bid="(\d+)">/);
    expect(hiddenPanel).not.toBeNull();
    const obs = await ep.step(`click('${hiddenPanel![1]}')`);
    expect(obs.error).toMatch(/Timeout 1000ms exceeded.*not visible/);
    expect(obs.done).toBe(false);
    await ep.release();
  });

  it('runs every action kind through step()', async () => {
    const ep = await pool.reset('login-user', 5);
    const [user, password] = [...ep.observation.goal.matchAll(/"([^"]*)"/g)].map((m) => m[1]);
    const bid = (role: string, name: string): string => axLines(ep.observation).find((l) => l.role === role && l.name === name)!.bid;
    const u = bid('textbox', 'Username');
    const p = bid('textbox', 'Password');
    const login = bid('button', 'Login');
    const actions = [
      `focus('${u}')`, `keyboard_type('${user.slice(0, 2)}')`, `press('${u}', 'End')`, `keyboard_type('${user.slice(2)}')`,
      `fill('${p}', 'wrong')`, `clear('${p}')`, `click('${p}')`, `keyboard_press('Tab')`, `fill('${p}', '${password}')`,
      `hover('${login}')`, 'scroll(0, 20)', "send_msg_to_user('logging in')", 'noop(wait_ms=10)',
    ];
    const big = await EnvPool.create({ size: 1, maxSteps: 20 });
    try {
      const episode = await big.reset('login-user', 5);
      for (const action of actions) {
        const obs = await episode.step(action);
        expect(obs.error, action).toBe('');
        expect(obs.done, action).toBe(false);
      }
      const last = await episode.step(`dblclick('${login}')`);
      expect(last).toMatchObject({ done: true, reward: 1, error: '' });
      await episode.release();
    } finally {
      await big.close();
      await ep.release();
    }
  });

  it('truncates at maxSteps', async () => {
    const ep = await pool.reset('click-test', 1);
    let obs = ep.observation;
    for (let i = 0; i < 10; i++) obs = await ep.step('noop(wait_ms=0)');
    expect(obs.step).toBe(10);
    expect(obs.truncated).toBe(true);
    expect(obs.done).toBe(false);
    await ep.release();
  });

  it('takes a screenshot only on request', async () => {
    const ep = await pool.reset('click-test', 1, { screenshot: true });
    expect(ep.observation.screenshot?.subarray(1, 4).toString()).toBe('PNG');
    const obs = await ep.step('noop(0)');
    expect(obs.screenshot).toBeUndefined();
    await ep.release();
  });
});
