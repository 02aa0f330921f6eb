// Evaluation: success rate per task over N held-out seeds, with a Wilson 95% confidence interval.
import type { EnvPool } from '../env/index.js';
import type { TrainConfig } from './config.js';
import { runRollouts, type Policy } from './rollout.js';
import { rolloutSettings } from './trainer.js';

export interface EvalRow {
  task: string;
  episodes: number;
  successes: number;
  success_rate: number;
  ci_low: number;
  ci_high: number;
  mean_steps: number;
}

export interface EvalResult {
  tasks: EvalRow[];
  greedy: boolean;
  seed_offset: number;
  seeds: number;
}

/** Wilson score interval for a binomial proportion (z = 1.96 → 95%). */
export function wilsonInterval(successes: number, n: number, z = 1.96): [number, number] {
  if (n === 0) return [0, 1];
  const p = successes / n;
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const center = (p + z2 / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  return [Math.max(0, center - half), Math.min(1, center + half)];
}

export async function evaluate(pool: EnvPool, policy: Policy, cfg: TrainConfig, opts: {
  tasks?: string[]; seeds?: number; greedy?: boolean; onProgress?: (done: number, total: number) => void;
} = {}): Promise<EvalResult> {
  const tasks = opts.tasks ?? cfg.eval.tasks ?? cfg.env.tasks;
  const seeds = opts.seeds ?? cfg.eval.seeds;
  const greedy = opts.greedy ?? cfg.eval.greedy;
  const settings = { ...rolloutSettings(cfg, greedy), numGenerations: 1 };
  const instances = tasks.flatMap((task) => Array.from({ length: seeds }, (_, i) => ({ task, seed: cfg.eval.seed_offset + i })));
  const rows = new Map(tasks.map((t) => [t, { successes: 0, episodes: 0, steps: 0 }]));
  const chunk = Math.max(1, cfg.env.concurrency);
  for (let i = 0; i < instances.length; i += chunk) {
    const part = instances.slice(i, i + chunk);
    const r = await runRollouts(pool, policy, part, settings, (cfg.seed * 31 + i) >>> 0);
    for (const ep of r.episodes) {
      const row = rows.get(ep.task)!;
      row.episodes++;
      row.steps += ep.steps;
      if (ep.success) row.successes++;
    }
    opts.onProgress?.(Math.min(i + chunk, instances.length), instances.length);
  }
  return {
    greedy,
    seed_offset: cfg.eval.seed_offset,
    seeds,
    tasks: tasks.map((task) => {
      const r = rows.get(task)!;
      const [lo, hi] = wilsonInterval(r.successes, r.episodes);
      return { task, episodes: r.episodes, successes: r.successes, success_rate: r.episodes ? r.successes / r.episodes : 0,
        ci_low: lo, ci_high: hi, mean_steps: r.episodes ? r.steps / r.episodes : 0 };
    }),
  };
}

export function formatEvalTable(result: EvalResult): string {
  const header = ['task', 'episodes', 'success', '95% CI', 'mean steps'];
  const rows = result.tasks.map((r) => [r.task, String(r.episodes), `${(r.success_rate * 100).toFixed(1)}%`,
    `${(r.ci_low * 100).toFixed(1)}–${(r.ci_high * 100).toFixed(1)}%`, r.mean_steps.toFixed(2)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ');
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
