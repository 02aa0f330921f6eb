import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { EnvPool } from '../../src/env/index.js';
import { ORACLES, axLines } from './oracles.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fake-miniwob', import.meta.url));

describe('EnvPool', () => {
  it('hands out environments, queues when all are busy, and validates its options', async () => {
    await expect(EnvPool.create({ size: 0 })).rejects.toThrow(/pool size must be a positive integer/);
    await expect(EnvPool.create({ size: 2, browsers: 3 })).rejects.toThrow(/browsers must be an integer from 1/);
    await expect(EnvPool.create({ size: 1, chromiumPath: '/nonexistent/chromium' })).rejects.toThrow(/CHROMIUM_PATH.*|apt-get install chromium/);
    const pool = await EnvPool.create({ size: 2, browsers: 2 });
    try {
      expect(pool.browserPids()).toHaveLength(2);
      await expect(pool.reset('nope', 1)).rejects.toThrow(/unknown task "nope"/);
      const a = await pool.reset('click-test', 1);
      const b = await pool.reset('click-test', 2);
      let thirdStarted = false;
      const third = pool.reset('click-test', 3).then((ep) => { thirdStarted = true; return ep; });
      await new Promise((r) => setTimeout(r, 100));
      expect(thirdStarted).toBe(false); // waits for a free environment
      await a.release();
      await a.release(); // idempotent
      const c = await third;
      expect(c.observation.goal).toBe('Click the button.');
      await Promise.all([b.release(), c.release()]);
      expect(pool.stats.episodes).toBe(3);
    } finally {
      await pool.close();
    }
  });

  it('recovers from a killed browser: affected episodes fail with an error naming the crash', async () => {
    const pool = await EnvPool.create({ size: 2, browsers: 1 });
    try {
      const [pid] = pool.browserPids();
      const a = await pool.reset('click-test', 1);
      const b = await pool.reset('click-button', 1);
      process.kill(pid, 'SIGKILL');
      const failedA = await a.step(ORACLES['click-test'](a.observation));
      expect(failedA.done).toBe(true);
      expect(failedA.reward).toBe(0);
      expect(failedA.error).toMatch(/browser crashed/);
      expect(failedA.validActions).toEqual([]);
      expect((await a.step('noop()')).error).toBe(failedA.error); // stays failed
      const failedB = await b.step('noop(0)');
      expect(failedB.done).toBe(true);
      expect(failedB.error).toMatch(/crash/);
      await a.release();
      await b.release();
      expect(pool.stats.crashes).toBeGreaterThanOrEqual(1);
      // the pool replaced the browser: new episodes work and solve
      const c = await pool.reset('click-test', 4);
      const done = await c.step(ORACLES['click-test'](c.observation));
      expect(done).toMatchObject({ done: true, reward: 1 });
      await c.release();
      expect(pool.browserPids()[0]).not.toBe(pid);
      expect(pool.stats.browserLaunches).toBe(2);
    } finally {
      await pool.close();
    }
  });

  it('recovers from a hung page: the episode fails, the pool keeps working', async () => {
    const pool = await EnvPool.create({ size: 1, miniwobDir: FIXTURE, actionTimeoutMs: 500, hangTimeoutMs: 3000 });
    try {
      const ep = await pool.reset('miniwob.fake-hang', 1);
      const hang = axLines(ep.observation).find((l) => l.name === 'hang')!;
      const first = await ep.step(`click('${hang.bid}')`); // the loop starts after the click returns
      // The page freezes on its next task, which may come after an observation or two on a busy machine.
      let obs = first;
      for (let i = 0; i < 5 && !obs.done; i++) obs = await ep.step('noop(200)');
      expect(obs.done).toBe(true);
      expect(obs.error).toMatch(/hung/);
      await ep.release();
      const next = await pool.reset('click-test', 1);
      expect((await next.step(ORACLES['click-test'](next.observation))).reward).toBe(1);
      await next.release();
    } finally {
      await pool.close();
    }
  });

  it('keeps a bounded number of contexts by recycling them', async () => {
    const pool = await EnvPool.create({ size: 1, recycleAfterEpisodes: 3 });
    try {
      for (let i = 0; i < 8; i++) {
        const ep = await pool.reset('click-test', i);
        expect((await ep.step(ORACLES['click-test'](ep.observation))).reward).toBe(1);
        await ep.release();
      }
      expect(pool.stats.episodes).toBe(8);
    } finally {
      await pool.close();
    }
  });
});
