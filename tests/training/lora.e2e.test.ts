// LoRA GRPO on the CPU engine with real Chromium episodes: adapter-only checkpoints in PEFT format, exact resume,
// the KL reference as the base with adapters off, and exports (merged weights, PEFT adapter) that load back.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lfm2Preset } from '../../src/model/config.js';
import { Lfm2Model } from '../../src/model/lfm2.js';
import { parseSafetensors } from '../../src/model/safetensors.js';
import { latestCheckpoint } from '../../src/training/checkpoint.js';
import { validateTrainConfig, type TrainConfig } from '../../src/training/config.js';
import { readMetrics } from '../../src/training/metrics.js';
import { loadPolicy } from '../../src/training/policy.js';
import { train } from '../../src/training/trainer.js';
import { buildScoreRequest } from '../../src/training/update.js';

function loraConfig(runDir: string, steps: number, beta = 0.05, dropout = 0): TrainConfig {
  return validateTrainConfig({
    run_dir: runDir,
    seed: 4,
    model: { init: 'random', preset: 'tiny', backend: 'cpu' },
    lora: { enabled: true, r: 4, alpha: 8, dropout, targets: ['q_proj', 'v_proj', 'in_proj', 'w1', 'w2'] },
    env: { tasks: ['click-test', 'click-button'], max_steps: 1, concurrency: 8 },
    prompt: { axtree_max_chars: 400, history: 0 },
    sampling: { max_new_tokens: 12, constrained: true },
    grpo: { steps, tasks_per_step: 2, num_generations: 4, micro_batch_size: 8, beta },
    optim: { lr: 1e-2, warmup_steps: 1 },
    checkpoint: { every: 1, keep_last: 3 },
  });
}

function adapterWeights(model: Lfm2Model): Map<string, number[]> {
  return new Map(model.native.trainableInfo().map(({ name }) => [name, Array.from(model.native.getParameter(name).toFloat32())]));
}

describe('LoRA GRPO end to end (CPU engine, Chromium)', () => {
  it('trains adapters only, checkpoints them as PEFT, resumes exactly, and exports merged weights', async () => {
    const straightDir = mkdtempSync(join(tmpdir(), 'webgrpo-lora-'));
    const straight = await train(loraConfig(straightDir, 2));
    const metrics = readMetrics(join(straightDir, 'metrics.jsonl'));
    expect(metrics.map((m) => m.step)).toEqual([1, 2]);
    for (const m of metrics) {
      expect(Number.isFinite(m.kl)).toBe(true);
      expect(m.logprob_mismatch).toBeLessThan(1e-4);
    }
    const checkpoint = latestCheckpoint(straightDir)!;
    expect(existsSync(join(checkpoint, 'model'))).toBe(false);
    const adapterConfig = JSON.parse(readFileSync(join(checkpoint, 'adapter', 'adapter_config.json'), 'utf8'));
    expect(adapterConfig).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, use_rslora: false,
      target_modules: ['in_proj', 'q_proj', 'v_proj', 'w1', 'w2'] });
    const file = parseSafetensors(readFileSync(join(checkpoint, 'adapter', 'adapter_model.safetensors')));
    expect([...file.tensors.keys()]).toContain('base_model.model.model.layers.0.conv.in_proj.lora_A.weight');
    expect([...file.tensors.keys()]).toContain('base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight');
    expect(file.tensors.size).toBe(straight.model.native.trainableInfo().length);

    // The base never moved: it equals a fresh random init of the same seed.
    const fresh = Lfm2Model.random(lfm2Preset('tiny'), { seed: 4, backend: 'cpu' });
    for (const { name } of fresh.native.parameterInfo())
      expect(Array.from(straight.model.native.getParameter(name).toFloat32()), name)
        .toEqual(Array.from(fresh.native.getParameter(name).toFloat32()));
    const trained = adapterWeights(straight.model);
    expect([...trained].some(([name, w]) => name.includes('lora_B') && w.some((x) => x !== 0))).toBe(true);

    // Stop after one step, resume: the same adapters as the uninterrupted run.
    const resumedDir = mkdtempSync(join(tmpdir(), 'webgrpo-lora-resumed-'));
    (await train(loraConfig(resumedDir, 2), { stopAfter: 1 })).model.dispose();
    const resumed = await train(loraConfig(resumedDir, 2), { resume: true });
    expect(adapterWeights(resumed.model)).toEqual(trained);
    resumed.model.dispose();

    // Merged export: a plain model folder whose scores equal the adapted model's.
    const out = mkdtempSync(join(tmpdir(), 'webgrpo-lora-merged-'));
    await straight.model.save(out, { dtype: 'f32' });
    const merged = await Lfm2Model.fromPretrained(out, { backend: 'cpu' });
    const reloaded = await loadPolicy(loraConfig(straightDir, 2), { checkpoint });
    const sample = { promptTokens: Int32Array.from([1, 6, 40, 41, 42, 43]), completionTokens: Int32Array.from([50, 51, 7]),
      samplerLogprobs: new Float32Array(3), action: '' };
    const request = buildScoreRequest([sample], 1, false);
    const a = (await merged.native.score(request)).logprobs;
    const b = (await reloaded.model.native.score(request)).logprobs;
    const base = (await reloaded.model.native.score({ ...request, adapters: false })).logprobs;
    a.forEach((x, i) => expect(x).toBeCloseTo(b[i], 4));
    expect(Array.from(base)).toEqual(Array.from((await fresh.native.score(request)).logprobs));
    for (const m of [merged, reloaded.model, straight.model, fresh]) m.dispose();
  });

  it('with adapter dropout, a resumed run still continues exactly (the masks follow the optimizer step)', async () => {
    const straight = await train(loraConfig(mkdtempSync(join(tmpdir(), 'webgrpo-lora-drop-')), 2, 0, 0.2));
    const dir = mkdtempSync(join(tmpdir(), 'webgrpo-lora-drop-resumed-'));
    (await train(loraConfig(dir, 2, 0, 0.2), { stopAfter: 1 })).model.dispose();
    const resumed = await train(loraConfig(dir, 2, 0, 0.2), { resume: true });
    expect(adapterWeights(resumed.model)).toEqual(adapterWeights(straight.model));
    expect(JSON.parse(readFileSync(join(latestCheckpoint(dir)!, 'adapter', 'adapter_config.json'), 'utf8')).lora_dropout).toBe(0.2);
    straight.model.dispose();
    resumed.model.dispose();
  });

  it('refuses an adapter whose settings differ from the config, naming both', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'webgrpo-lora-mismatch-'));
    (await train(loraConfig(dir, 1, 0))).model.dispose();
    const other = validateTrainConfig({ ...loraConfig(dir, 1, 0), lora: { enabled: true, r: 8, alpha: 8,
      targets: ['q_proj', 'v_proj', 'in_proj', 'w1', 'w2'] } });
    await expect(loadPolicy(other, { checkpoint: latestCheckpoint(dir)! })).rejects.toThrow(/r 4, .* does not match the config's LoRA \(r 8/);
  });
});
