/**
 * Environment throughput: env steps/s and resets/s with 1, 4 and 16 concurrent environments.
 * Run: npx vite-node bench/env.ts [--seconds S] [--browsers B] [--sizes 1,4,16]
 * Each step is a real click plus a full observation (AXTree, pruned HTML, valid actions).
 */
import os from 'node:os';
import { EnvPool } from '../src/env/index.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const seconds = Number(arg('seconds', '5'));
const browsersArg = arg('browsers', 'auto');
const sizes = arg('sizes', '1,4,16').split(',').map(Number);
const RESET_TASKS = ['click-test', 'click-button', 'login-user', 'book-flight-lite'];

async function measure(size: number): Promise<{ size: number; browsers: number; resetsPerS: number; stepsPerS: number; stepMsP50: number }> {
  const browsers = browsersArg === 'auto' ? Math.max(1, Math.min(size, Math.round(size / 4))) : Math.min(size, Number(browsersArg));
  const pool = await EnvPool.create({ size, browsers, maxSteps: 1_000_000 });
  try {
    // warm-up
    await Promise.all(Array.from({ length: size }, async (_, w) => {
      const ep = await pool.reset('click-test', w);
      await ep.step('noop(0)');
      await ep.release();
    }));

    let resets = 0;
    let deadline = Date.now() + seconds * 1000;
    let t0 = Date.now();
    await Promise.all(Array.from({ length: size }, async (_, w) => {
      for (let i = 0; Date.now() < deadline; i++) {
        const ep = await pool.reset(RESET_TASKS[(w + i) % RESET_TASKS.length], w * 100_000 + i);
        await ep.release();
        resets++;
      }
    }));
    const resetsPerS = resets / ((Date.now() - t0) / 1000);

    let steps = 0;
    const stepTimes: number[] = [];
    const episodes = await Promise.all(Array.from({ length: size }, (_, w) => pool.reset('click-checkboxes', w)));
    deadline = Date.now() + seconds * 1000;
    t0 = Date.now();
    await Promise.all(episodes.map(async (ep) => {
      const action = ep.observation.validActions[0]; // a checkbox: toggling it never ends the episode
      while (Date.now() < deadline) {
        const s = performance.now();
        const obs = await ep.step(action);
        stepTimes.push(performance.now() - s);
        if (obs.error) throw new Error(`bench step failed: ${obs.error}`);
        steps++;
      }
    }));
    const stepsPerS = steps / ((Date.now() - t0) / 1000);
    await Promise.all(episodes.map((ep) => ep.release()));
    stepTimes.sort((a, b) => a - b);
    return { size, browsers, resetsPerS, stepsPerS, stepMsP50: stepTimes[Math.floor(stepTimes.length / 2)] };
  } finally {
    await pool.close();
  }
}

const rows = [];
for (const size of sizes) rows.push(await measure(size));
console.log(`env benchmark: ${os.cpus().length} CPU cores (${os.cpus()[0]?.model ?? 'unknown'}), ${seconds} s per measurement`);
console.log('| concurrent envs | browsers | resets/s | steps/s | step latency p50 (ms) |');
console.log('| ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(`| ${r.size} | ${r.browsers} | ${r.resetsPerS.toFixed(1)} | ${r.stepsPerS.toFixed(1)} | ${r.stepMsP50.toFixed(1)} |`);
}
