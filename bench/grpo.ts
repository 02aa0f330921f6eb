/**
 * One GRPO step without a browser, at issue 8's shape: P distinct random prompts × G completions each, generated
 * by the engine (a group shares its prompt's prefill), random 0/1 rewards → group advantages → the trainer's own
 * update path (src/training/update.ts: score + clipped dapo loss + backward) → AdamW. bench/torch/grpo_step.py is
 * the same step in PyTorch + transformers.
 *   node dist/bench/grpo.js [--backend cuda|cpu] [--prompts 8] [--group 8] [--prompt 600] [--new 32] [--micro 64]
 *                           [--warmup 1] [--iters 3]
 * Phases: generate; update = score + loss + backward + gradient norm (the norm waits for the device, and is what
 * clipping needs); optimizer = AdamW + a device sync. Every completion is trained (the trainer skips zero-advantage
 * groups; here all P·G sequences go through the model so both sides do identical work).
 */
import type { GenerateRequest, GenerateResult } from '../src/native/addon.js';
import { groupAdvantages, type LossSettings } from '../src/training/grpo.js';
import { Rng } from '../src/training/rng.js';
import { microBatches, trainMicroBatch, type TrainSample } from '../src/training/update.js';
import {
  benchProgram, createRandomModel, deviceDescription, emit, fmt, GpuMemoryMonitor, markdownTable, mean, nonNegativeInt,
  nowMs, PEAK_KIND_NVIDIA_SMI, positiveInt, positiveNumber, randomTokens, runMain, syncDevice, type CommonOptions,
} from './common.js';

interface GrpoOptions extends CommonOptions {
  prompts: number;
  group: number;
  prompt: number;
  new: number;
  micro: number;
  warmup: number;
  iters: number;
  lr: number;
}

interface PhaseTimes {
  generateMs: number;
  updateMs: number;
  optimizerMs: number;
  totalMs: number;
  loss: number;
  gradNorm: number;
}

async function main(): Promise<number> {
  const program = benchProgram('grpo', 'one GRPO step without a browser: generate + update + AdamW')
    .option('--prompts <n>', 'prompts (groups) per step', positiveInt('prompts'), 8)
    .option('--group <n>', 'completions per prompt (G)', positiveInt('group'), 8)
    .option('--prompt <n>', 'prompt tokens', positiveInt('prompt'), 600)
    .option('--new <n>', 'new tokens per completion', positiveInt('new'), 32)
    .option('--micro <n>', 'sequences per score/backward micro-batch', positiveInt('micro'), 64)
    .option('--warmup <n>', 'untimed steps first', nonNegativeInt('warmup'), 1)
    .option('--iters <n>', 'timed steps', positiveInt('iters'), 3)
    .option('--lr <lr>', 'AdamW learning rate', positiveNumber('lr'), 1e-6);
  const opts = program.parse(process.argv).opts<GrpoOptions>();
  const device = deviceDescription(opts.backend);
  const monitor = GpuMemoryMonitor.start(opts.backend);
  const { config, native, model, parameters } = createRandomModel(opts);
  const sequences = opts.prompts * opts.group;
  const loss: LossSettings = { lossType: 'dapo', epsilonLow: 0.2, epsilonHigh: 0.2, beta: 0, maxCompletionLength: opts.new };
  const rng = new Rng(opts.seed + 3);
  let optimizerStep = 0;

  const step = async (): Promise<PhaseTimes> => {
    const prompts = Array.from({ length: opts.prompts }, () => randomTokens(rng, opts.prompt, config.vocabSize));
    const request: GenerateRequest = {
      prompts,
      sequencePrompt: Int32Array.from({ length: sequences }, (_, i) => Math.floor(i / opts.group)),
      maxNewTokens: opts.new,
      // No stop tokens: every completion has exactly --new tokens, as in the PyTorch reference.
      stopTokens: new Int32Array(0),
      sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, greedy: false, seed: rng.nextUint32() },
    };
    const t0 = nowMs();
    const results: GenerateResult[] = await native.generate(request);
    const t1 = nowMs();
    if (results.length !== sequences) throw new Error(`generate returned ${results.length} results for ${sequences} sequences`);
    const rewards = Array.from({ length: opts.prompts }, () => Array.from({ length: opts.group }, () => rng.below(2)));
    const advantages = groupAdvantages(rewards, 'group');
    const samples: TrainSample[] = results.map((r, i) => ({
      sample: {
        promptTokens: prompts[Math.floor(i / opts.group)],
        completionTokens: r.tokens,
        samplerLogprobs: r.logprobs,
        action: '',
      },
      advantage: advantages[Math.floor(i / opts.group)][i % opts.group],
    }));
    const batch = { numSamples: samples.length, totalTokens: samples.reduce((a, s) => a + s.sample.completionTokens.length, 0) };
    native.zeroGrad();
    let lossSum = 0;
    for (const micro of microBatches(samples, opts.micro)) {
      const stats = await trainMicroBatch(native, micro, loss, batch, 1, 1);
      lossSum += stats.loss;
    }
    const gradNorm = await native.gradNorm();
    const t2 = nowMs();
    await native.adamwStep({
      lr: opts.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: ++optimizerStep,
      gradScale: gradNorm > 1 ? 1 / (gradNorm + 1e-6) : 1,
    });
    await syncDevice(native);
    const t3 = nowMs();
    return { generateMs: t1 - t0, updateMs: t2 - t1, optimizerMs: t3 - t2, totalMs: t3 - t0, loss: lossSum, gradNorm };
  };

  const measured: PhaseTimes[] = [];
  try {
    for (let i = 0; i < opts.warmup; i++) await step();
    monitor?.resetPeak();
    for (let i = 0; i < opts.iters; i++) measured.push(await step());
    const peakGiB = monitor ? await monitor.peakGiB() : null;
    const avg = (k: keyof PhaseTimes) => mean(measured.map((m) => m[k]));
    const totalMs = avg('totalMs');
    const processedTokens = sequences * (opts.prompt + opts.new);
    const record = {
      bench: 'grpo', impl: 'webgrpo', status: 'ok', backend: opts.backend, device, preset: opts.preset, parameters,
      prompts: opts.prompts, group: opts.group, sequences, prompt_len: opts.prompt, new_tokens: opts.new,
      micro_batch: opts.micro, warmup: opts.warmup, steps: opts.iters,
      generate_ms: avg('generateMs'), update_ms: avg('updateMs'), optimizer_ms: avg('optimizerMs'), sync_ms: 0,
      total_ms: totalMs, tokens_per_s: processedTokens / (totalMs / 1000),
      new_tokens_per_s: (sequences * opts.new) / (avg('generateMs') / 1000),
      peak_gib: peakGiB, peak_kind: peakGiB === null ? null : PEAK_KIND_NVIDIA_SMI,
      loss: measured[measured.length - 1].loss, grad_norm: measured[measured.length - 1].gradNorm,
    };
    if (!Number.isFinite(record.grad_norm)) throw new Error(`gradient norm is not finite (${record.grad_norm})`);
    emit(record);
    process.stdout.write(`\n### webgrpo GRPO step (${opts.preset}, ${device}, ${opts.prompts}×${opts.group} sequences, ` +
      `prompt ${opts.prompt}, ${opts.new} new tokens, mean of ${opts.iters} steps)\n\n`);
    process.stdout.write(`${markdownTable(['generate ms', 'update ms', 'optimizer ms', 'total ms', 'tokens/s',
      'peak GiB'], [[fmt(record.generate_ms, 1), fmt(record.update_ms, 1), fmt(record.optimizer_ms, 1), fmt(totalMs, 1),
      fmt(record.tokens_per_s), fmt(peakGiB, 2)]])}\n`);
  } finally {
    model.dispose();
    monitor?.stop();
  }
  return 0;
}

runMain(main);
