/**
 * Summarises bench/e2e-gpu.sh (issue 8): for each GRPO run directory (metrics.jsonl, eval.json, gpu-memory.txt
 * written by the recipe) the wall time per step split into sampling, environment and update, tokens/s, peak GPU
 * memory and the learning curve's milestones; then our step against the PyTorch reference step (its JSON line
 * from bench/torch/grpo_step.py at the same batch shape).
 *   node dist/bench/e2e-summary.js --run click-test=DIR:0.95 --run click-button=DIR:0.8 [--torch FILE.jsonl]
 * The first step is left out of the time means (it includes cuBLASLt planning and arena growth).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import type { EvalResult } from '../src/training/evaluate.js';
import { readMetrics, type StepMetrics } from '../src/training/metrics.js';
import { emit, fmt, markdownTable, mean, runMain } from './common.js';

interface RunSpec {
  task: string;
  dir: string;
  target: number;
}

function parseRun(value: string, previous: RunSpec[]): RunSpec[] {
  const m = /^([^=]+)=(.+):([0-9.]+)$/.exec(value);
  if (!m) throw new Error(`--run ${value}: expected TASK=DIR:TARGET, e.g. click-test=runs/ct:0.95`);
  return [...previous, { task: m[1], dir: m[2], target: Number(m[3]) }];
}

/** Peak of the nvidia-smi samples (MiB, one per line) minus the first one (taken before the run started). */
function peakGiB(path: string): number | null {
  if (!existsSync(path)) return null;
  const mib = readFileSync(path, 'utf8').split('\n').map((l) => Number.parseFloat(l)).filter(Number.isFinite);
  return mib.length < 2 ? null : (Math.max(...mib) - mib[0]) / 1024;
}

/** The first step from which the mean success of `window` consecutive steps reaches the target. */
function stepReaching(metrics: StepMetrics[], target: number, window: number): number | null {
  for (let i = 0; i + window <= metrics.length; i++)
    if (mean(metrics.slice(i, i + window).map((m) => m.success_rate)) >= target) return metrics[i].step;
  return null;
}

async function main(): Promise<number> {
  const opts = new Command('e2e-summary')
    .option('--run <task=dir:target>', 'a run directory and its success target (repeatable)', parseRun, [])
    .option('--torch <file>', 'JSON lines of bench/torch/grpo_step.py')
    .parse()
    .opts<{ run: RunSpec[]; torch?: string }>();
  if (opts.run.length === 0) throw new Error('give at least one --run TASK=DIR:TARGET');
  const torch = opts.torch && existsSync(opts.torch)
    ? readFileSync(opts.torch, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, number | string>)
      .find((r) => r.status === 'ok')
    : undefined;
  const rows: string[][] = [];
  const curves: string[] = [];
  let worstOk = true;
  for (const run of opts.run) {
    const metrics = readMetrics(join(run.dir, 'metrics.jsonl'));
    if (metrics.length === 0) {
      rows.push([run.task, 'no metrics (run failed: see its .err)', ...Array(11).fill('')]);
      worstOk = false;
      continue;
    }
    const timed = metrics.length > 1 ? metrics.slice(1) : metrics;
    const ms = (f: (m: StepMetrics) => number) => 1000 * mean(timed.map(f));
    const evalPath = join(run.dir, 'eval.json');
    const evaluation = existsSync(evalPath) ? (JSON.parse(readFileSync(evalPath, 'utf8')) as EvalResult).tasks[0] : undefined;
    const reached1 = metrics.find((m) => m.success_rate >= run.target)?.step ?? null;
    const reached5 = stepReaching(metrics, run.target, 5);
    const record = {
      bench: 'e2e', task: run.task, steps: metrics.length, target: run.target,
      step_ms: ms((m) => m.step_seconds), sample_ms: ms((m) => m.sample_seconds), env_ms: ms((m) => m.env_seconds),
      update_ms: ms((m) => m.update_seconds), tokens_per_s: mean(timed.map((m) => m.tokens_per_s)),
      prompt_tokens_per_episode: mean(timed.map((m) => (m.prompt_tokens ?? NaN) / m.episodes)),
      new_tokens_per_episode: mean(timed.map((m) => m.new_tokens / m.episodes)),
      episodes_per_step: metrics[0].episodes, peak_gib: peakGiB(join(run.dir, 'gpu-memory.txt')),
      first_success: metrics[0].success_rate, final5_success: mean(metrics.slice(-5).map((m) => m.success_rate)),
      step_reaching_target: reached1, step_reaching_target_5step_mean: reached5,
      eval_success: evaluation?.success_rate ?? null, eval_ci: evaluation ? [evaluation.ci_low, evaluation.ci_high] : null,
    };
    emit(record);
    if (!(evaluation && evaluation.success_rate >= run.target)) worstOk = false;
    rows.push([
      run.task, String(record.steps), fmt(record.step_ms), fmt(record.sample_ms), fmt(record.env_ms), fmt(record.update_ms),
      fmt(record.tokens_per_s), fmt(record.peak_gib, 1), `${fmt(100 * record.first_success)}% → ${fmt(100 * record.final5_success)}%`,
      reached1 === null ? 'never' : String(reached1), reached5 === null ? 'never' : String(reached5),
      evaluation ? `${fmt(100 * evaluation.success_rate)}% (${fmt(100 * evaluation.ci_low)}–${fmt(100 * evaluation.ci_high)}%)` : 'n/a',
      String(run.target),
    ]);
    curves.push(`${run.task}: ${metrics.map((m) => fmt(100 * m.success_rate)).join(' ')}`);
    if (torch) {
      const oursMs = record.sample_ms + record.update_ms;
      curves.push(`  vs PyTorch reference step (${torch.sequences} sequences, prompt ${torch.prompt_len}, ${torch.new_tokens} new): ` +
        `${fmt(Number(torch.total_ms))} ms, ${fmt(Number(torch.peak_gib), 1)} GiB → ours without the browser ${fmt(oursMs)} ms ` +
        `(${fmt(Number(torch.total_ms) / oursMs, 2)}×), with it ${fmt(record.step_ms)} ms (${fmt(Number(torch.total_ms) / record.step_ms, 2)}×); ` +
        `memory ${record.peak_gib === null ? 'n/a' : fmt(record.peak_gib / Number(torch.peak_gib), 2)} of PyTorch's`);
    }
  }
  process.stdout.write(`\n### GRPO end to end, LFM2-350M (random init), one browser step per episode\n\n${markdownTable(
    ['task', 'steps', 'step ms', 'sample ms', 'env ms', 'update ms', 'tokens/s', 'peak GiB', 'success first → last 5',
      'first step ≥ target', 'first 5-step mean ≥ target', 'greedy eval (95% CI)', 'target'], rows)}\n\n` +
    `success per step (%):\n${curves.join('\n')}\n`);
  return worstOk ? 0 : 1;
}

runMain(main);
