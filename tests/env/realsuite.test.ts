import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrowserEnv, listTasks, resolveMiniwobRoot, UnknownTaskError } from '../../src/env/index.js';
import { startStaticServer } from '../../src/env/server.js';
import { axLines } from './oracles.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fake-miniwob', import.meta.url));

describe('real MiniWoB++ suite (fake fixture with the core.js protocol)', () => {
  let env: BrowserEnv;
  beforeAll(async () => {
    env = await BrowserEnv.launch({ miniwobDir: FIXTURE, maxSteps: 5, actionTimeoutMs: 500, episodeMaxTimeMs: 60_000 });
  });
  afterAll(async () => {
    await env?.close();
  });

  it('lists real tasks as miniwob.NAME next to the built-in ones, from any of the accepted folders', () => {
    for (const dir of [FIXTURE, path.join(FIXTURE, 'html'), path.join(FIXTURE, 'html', 'miniwob')]) {
      const tasks = listTasks({ miniwobDir: dir });
      expect(tasks).toContain('miniwob.fake-click');
      expect(tasks).toContain('miniwob.fake-async');
      expect(tasks).toContain('click-test');
    }
    expect(listTasks()).not.toContain('miniwob.fake-click');
    expect(() => resolveMiniwobRoot(path.join(FIXTURE, 'nope'))).toThrow(/not a folder/);
    expect(() => resolveMiniwobRoot(fileURLToPath(new URL('.', import.meta.url)))).toThrow(/no MiniWoB\+\+ tasks found.*html\/miniwob/);
  });

  it('runs a task with BrowserGym harness semantics', async () => {
    const obs = await env.reset('miniwob.fake-click', 5);
    expect(obs.goal).toMatch(/^Press the (red|green|blue|black|white) button\.$/);
    // human display removed, #query emptied
    expect(obs.html).not.toContain('REWARD DISPLAY');
    expect(obs.html).not.toContain('sync-task-cover');
    expect(obs.html).not.toContain('click-canvas');
    expect(obs.html).toMatch(/<div id="query" bid="\d+"><\/div>/);
    expect(obs.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/miniwob-suite\/miniwob\/fake-click\.html$/);
    // seeded through Math.seedrandom
    expect((await env.reset('miniwob.fake-click', 5)).goal).toBe(obs.goal);
    const goals = new Set<string>();
    for (let seed = 0; seed < 8; seed++) goals.add((await env.reset('miniwob.fake-click', seed)).goal);
    expect(goals.size).toBeGreaterThan(1);
    const fresh = await env.reset('miniwob.fake-click', 11);
    const color = fresh.goal.match(/the (\w+) button/)![1];
    const button = axLines(fresh).find((l) => l.role === 'button' && l.name === color)!;
    expect(fresh.validActions).toContain(`click('${button.bid}')`);
    const after = await env.step(`click('${button.bid}')`);
    expect(after).toMatchObject({ done: true, reward: 1, error: '' });
    expect(after.rawReward).toBe(1);
  });

  it('waits for WOB_TASK_READY on tasks that load asynchronously', async () => {
    const obs = await env.reset('miniwob.fake-async', 3);
    const n = obs.goal.match(/^Type (\d+) in the box/)?.[1];
    expect(n).toBeDefined();
    const box = axLines(obs).find((l) => l.role === 'textbox')!;
    let next = await env.step(`fill('${box.bid}', '${n}')`);
    expect(next.error).toBe('');
    const go = axLines(next).find((l) => l.role === 'button' && l.name === 'Go')!;
    next = await env.step(`click('${go.bid}')`);
    expect(next).toMatchObject({ done: true, reward: 1 });
  });

  it('reports the task timeout as done with reward 0 (raw -1)', async () => {
    const short = await BrowserEnv.launch({ miniwobDir: FIXTURE, episodeMaxTimeMs: 200 });
    try {
      await short.reset('miniwob.fake-timeout', 1);
      const obs = await short.step('noop(wait_ms=400)');
      expect(obs).toMatchObject({ done: true, reward: 0, rawReward: -1 });
    } finally {
      await short.close();
    }
  });

  it('accepts MINIWOB_URL as a file:// URL and rejects unknown or unavailable tasks clearly', async () => {
    const viaUrl = await BrowserEnv.launch({ miniwobUrl: pathToFileURL(path.join(FIXTURE, 'html', 'miniwob') + '/').href });
    try {
      const obs = await viaUrl.reset('browsergym/miniwob.fake-click', 2);
      expect(obs.goal).toMatch(/^Press the/);
      await expect(viaUrl.reset('miniwob.no-such-task', 1)).rejects.toThrow(/unknown MiniWoB\+\+ task "no-such-task"/);
    } finally {
      await viaUrl.close();
    }
    await expect(env.reset('no-such-task', 1)).rejects.toBeInstanceOf(UnknownTaskError);
    // MINIWOB_URL over http (BrowserGym's usual setup): that origin is allowed, by host name too
    const server = await startStaticServer({ '/suite/': path.join(FIXTURE, 'html') });
    const viaHttp = await BrowserEnv.launch({ miniwobUrl: server.origin.replace('127.0.0.1', 'localhost') + '/suite/miniwob/' });
    try {
      const obs = await viaHttp.reset('miniwob.fake-click', 2);
      expect(obs.goal).toMatch(/^Press the/);
      expect(obs.url).toMatch(/^http:\/\/localhost:\d+\/suite\/miniwob\/fake-click\.html$/);
    } finally {
      await viaHttp.close();
      await server.close();
    }
    const builtinOnly = await BrowserEnv.launch({});
    try {
      await expect(builtinOnly.reset('miniwob.fake-click', 1)).rejects.toThrow(/--miniwob-dir DIR or set MINIWOB_URL/);
    } finally {
      await builtinOnly.close();
    }
  });
});
