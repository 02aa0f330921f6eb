/**
 * Memory over many episodes: runs N episodes (reset + one solving click on click-test, cycling
 * tasks for resets) on a pool and prints Chromium's and Node's resident memory as it goes.
 * Run: npx vite-node bench/env-memory.ts [--episodes 10000] [--size 4] [--every 1000]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { EnvPool } from '../src/env/index.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

/** Resident memory (MiB) of the given processes and all their descendants, from /proc. */
function treeRssMiB(roots: number[]): { mib: number; processes: number } {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch { /* process ended */ }
  }
  let kib = 0;
  let processes = 0;
  const stack = [...roots];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    try {
      const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
      if (m) { kib += Number(m[1]); processes++; }
    } catch { /* gone */ }
    stack.push(...(children.get(pid) ?? []));
  }
  return { mib: kib / 1024, processes };
}

const total = Number(arg('episodes', '10000'));
const size = Number(arg('size', '4'));
const every = Number(arg('every', '1000'));
const pool = await EnvPool.create({ size, browsers: 1 });
const started = Date.now();
let finished = 0;
let solved = 0;
const report = (): void => {
  const chromium = treeRssMiB(pool.browserPids());
  const node = process.memoryUsage();
  console.log(`| ${finished} | ${((Date.now() - started) / 1000).toFixed(0)} | ${chromium.processes} | ${chromium.mib.toFixed(0)} | ${(node.rss / 2 ** 20).toFixed(0)} | ${(node.heapUsed / 2 ** 20).toFixed(0)} |`);
};
console.log(`| episodes | seconds | chromium processes | chromium RSS MiB | node RSS MiB | node heap MiB |`);
console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
report();
let next = 0;
await Promise.all(Array.from({ length: size }, async () => {
  while (next < total) {
    const seed = next++;
    const ep = await pool.reset('click-test', seed);
    const bid = ep.observation.validActions[0];
    const obs = await ep.step(bid);
    if (obs.reward === 1) solved++;
    await ep.release();
    finished++;
    if (finished % every === 0) report();
  }
}));
console.log(`solved ${solved}/${finished}; crashes ${pool.stats.crashes}; browser launches ${pool.stats.browserLaunches}`);
await pool.close();
