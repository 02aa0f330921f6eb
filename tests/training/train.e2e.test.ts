// A short end-to-end GRPO run on the CPU engine with real Chromium episodes, and resume equivalence.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lfm2Preset } from '../../src/model/config.js';
import { Lfm2Model } from '../../src/model/lfm2.js';
import { validateTrainConfig, type TrainConfig } from '../../src/training/config.js';
import { listCheckpoints } from '../../src/training/checkpoint.js';
import { readMetrics } from '../../src/training/metrics.js';
import { rolloutSettings, train } from '../../src/training/trainer.js';
import { loadPolicy } from '../../src/training/policy.js';
import { runRollouts } from '../../src/training/rollout.js';
import { EnvPool } from '../../src/env/index.js';

function tinyConfig(runDir: string, steps: number): TrainConfig {
  return validateTrainConfig({
    run_dir: runDir,
    seed: 4,
    model: { init: 'random', preset: 'tiny', backend: 'cpu' },
    env: { tasks: ['click-test', 'click-button'], max_steps: 2, concurrency: 8 },
    prompt: { axtree_max_chars: 400, history: 1 },
    sampling: { max_new_tokens: 12, constrained: true },
    grpo: { steps, tasks_per_step: 2, num_generations: 4, micro_batch_size: 8 },
    optim: { lr: 1e-3, warmup_steps: 1 },
    checkpoint: { every: 2, keep_last: 2 },
  });
}

function weightsOf(model: Lfm2Model): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const { name } of model.native.parameterInfo()) {
    const t = model.native.getParameter(name);
    out.set(name, t.toFloat32());
    t.dispose();
  }
  return out;
}

/** Trains `steps` steps (stopping after `stopAfter` and resuming, when given); returns the final weights. */
async function trainedWeights(runDir: string, steps: number, stopAfter?: number): Promise<Map<string, Float32Array>> {
  const cfg = tinyConfig(runDir, steps);
  let result = await train(cfg, { stopAfter });
  if (stopAfter !== undefined) {
    result.model.dispose();
    result = await train(cfg, { resume: true });
  }
  const weights = weightsOf(result.model);
  result.model.dispose();
  return weights;
}

describe('GRPO end to end (CPU engine, Chromium)', () => {
  it('trains, writes metrics, checkpoints and a report', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'webgrpo-e2e-'));
    const result = await train(tinyConfig(runDir, 2));
    result.model.dispose();
    const metrics = readMetrics(join(runDir, 'metrics.jsonl'));
    expect(metrics.map((m) => m.step)).toEqual([1, 2]);
    for (const key of ['step', 'reward_mean', 'reward_std', 'success_rate', 'loss', 'kl', 'entropy', 'grad_norm',
      'clip_fraction', 'tokens_per_s', 'env_steps_per_s', 'step_seconds'] as const) {
      for (const m of metrics) expect(Number.isFinite(m[key]), key).toBe(true);
    }
    expect(metrics[0].episodes).toBe(8);
    expect(metrics[0].entropy).toBeGreaterThan(0);
    // The trained policy is the sampling policy: the CPU scorer reproduces the sampler's log-probs.
    for (const m of metrics) expect(m.logprob_mismatch).toBeLessThan(1e-4);
    expect(listCheckpoints(runDir).length).toBe(1);
    expect(readFileSync(join(runDir, 'report.html'), 'utf8')).toContain('<svg');
  });

  it('a resumed run continues exactly as the uninterrupted one', async () => {
    const straight = await trainedWeights(mkdtempSync(join(tmpdir(), 'webgrpo-straight-')), 4);
    const resumedDir = mkdtempSync(join(tmpdir(), 'webgrpo-resumed-'));
    const resumed = await trainedWeights(resumedDir, 4, 2);
    expect(readMetrics(join(resumedDir, 'metrics.jsonl')).map((m) => m.step)).toEqual([1, 2, 3, 4]);
    for (const [name, w] of straight) expect(Array.from(resumed.get(name)!), name).toEqual(Array.from(w));
    // Training moved the weights, so the equality above is not trivially true.
    const initial = Lfm2Model.random(lfm2Preset('tiny'), { seed: 3, backend: 'cpu' });
    const start = weightsOf(initial);
    initial.dispose();
    const moved = [...straight].some(([name, w]) => w.some((x, i) => x !== start.get(name)![i]));
    expect(moved).toBe(true);
  });

  it('runs more episodes than the pool has environments, in waves with continuous batching, reproducibly', async () => {
    const cfg = tinyConfig(mkdtempSync(join(tmpdir(), 'webgrpo-waves-')), 1);
    const policy = await loadPolicy(cfg);
    const pool = await EnvPool.create({ size: 4 });
    try {
      const settings = { ...rolloutSettings(cfg), numGenerations: 5 };
      const instances = [{ task: 'click-test', seed: 1 }, { task: 'click-button', seed: 2 }];
      const run = () => runRollouts(pool, { model: policy.model.native, tokenizer: policy.tokenizer }, instances, settings, 9);
      const first = await run();
      expect(first.episodes.map((e) => e.group)).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
      expect(first.timings.envSteps).toBe(first.episodes.reduce((a, e) => a + e.steps, 0));
      for (const ep of first.episodes) {
        expect(ep.failure).toBeUndefined();
        expect(ep.steps).toBeGreaterThan(0);
      }
      const again = await run();
      expect(again.episodes.map((e) => e.samples.map((x) => x.action))).toEqual(first.episodes.map((e) => e.samples.map((x) => x.action)));
    } finally {
      await pool.close();
      policy.model.dispose();
    }
  });
});
