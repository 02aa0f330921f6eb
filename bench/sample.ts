/**
 * Sampling throughput of the engine (issue 5): model.generate on a random LFM2, B distinct random prompts of
 * P tokens, N new tokens each (no stop tokens, plain sampling at temperature 1), for each batch size. The same
 * measurement as bench/torch/sample.py does with transformers' generate.
 *   node dist/bench/sample.js [--backend cuda|cpu] [--batches 1,8,64,256] [--prompt 512] [--new 64] [--reps 3]
 * new tokens/s = B·N / (wall time of the whole generate, prefill included). The decode step time is
 * (time for N new tokens − time for 1 new token) / (N − 1), i.e. without the prefill; the roofline is the time to
 * read the bf16 weights once (and, in the second figure, also the KV cache at the mean context) at --bandwidth.
 */
import type { GenerateRequest, NativeModel } from '../src/native/addon.js';
import { Rng } from '../src/training/rng.js';
import {
  benchProgram, createRandomModel, deviceDescription, emit, fmt, GpuMemoryMonitor, intList, markdownTable, median,
  nowMs, PEAK_KIND_NVIDIA_SMI, positiveInt, randomTokens, runMain, type CommonOptions,
} from './common.js';

interface SampleOptions extends CommonOptions {
  batches: number[];
  prompt: number;
  new: number;
  reps: number;
}

function request(prompts: Int32Array[], maxNewTokens: number, seed: number): GenerateRequest {
  return {
    prompts,
    sequencePrompt: Int32Array.from(prompts, (_, i) => i),
    maxNewTokens,
    stopTokens: new Int32Array(0),
    sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, greedy: false, seed },
  };
}

/** Median wall time of `reps` generate calls, and the new tokens the last one produced. */
async function timeGenerate(native: NativeModel, req: GenerateRequest, reps: number): Promise<{ ms: number; newTokens: number }> {
  const times: number[] = [];
  let newTokens = 0;
  for (let r = 0; r < reps; r++) {
    const t0 = nowMs();
    const results = await native.generate({ ...req, sampling: { ...req.sampling, seed: req.sampling.seed + r } });
    times.push(nowMs() - t0);
    newTokens = results.reduce((a, x) => a + x.tokens.length, 0);
    if (results.length !== req.sequencePrompt.length) {
      throw new Error(`generate returned ${results.length} results for ${req.sequencePrompt.length} sequences`);
    }
  }
  return { ms: median(times), newTokens };
}

function pct(value: number | null): string {
  return value === null ? 'n/a' : `${fmt(value, 1)}%`;
}

interface BatchContext {
  native: NativeModel;
  opts: SampleOptions;
  device: string;
  monitor: GpuMemoryMonitor | null;
  weightBytes: number;
  kvBytesPerToken: number;
}

/** Times one batch size: B·N new tokens, and B·1 for the prefill; throws when a sequence ends early. */
async function measureBatch(ctx: BatchContext, prompts: Int32Array[]) {
  const { native, opts } = ctx;
  const batch = prompts.length;
  await native.generate(request(prompts, 2, opts.seed)); // this batch size's own first call
  ctx.monitor?.resetPeak();
  const full = await timeGenerate(native, request(prompts, opts.new, opts.seed), opts.reps);
  const prefill = await timeGenerate(native, request(prompts, 1, opts.seed), opts.reps);
  const expected = batch * opts.new;
  if (full.newTokens !== expected) {
    throw new Error(`generate produced ${full.newTokens} new tokens, expected ${expected} (no stop tokens were given)`);
  }
  const decodeMsPerStep = (full.ms - prefill.ms) / (opts.new - 1);
  // The bandwidth is an H100 figure: a roofline percentage means nothing for the CPU backend.
  const onGpu = opts.backend === 'cuda';
  const rooflineMs = (ctx.weightBytes / opts.bandwidth) * 1000;
  const meanContext = opts.prompt + opts.new / 2;
  const rooflineKvMs = ((ctx.weightBytes + batch * meanContext * ctx.kvBytesPerToken) / opts.bandwidth) * 1000;
  const peakGiB = ctx.monitor ? await ctx.monitor.peakGiB() : null;
  return {
    bench: 'sample', impl: 'webgrpo', status: 'ok', backend: opts.backend, device: ctx.device, preset: opts.preset,
    batch, prompt_len: opts.prompt, new_tokens: opts.new, reps: opts.reps, total_ms: full.ms, prefill_ms: prefill.ms,
    new_tokens_per_s: full.newTokens / (full.ms / 1000), decode_ms_per_step: decodeMsPerStep,
    decode_tokens_per_s: batch / (decodeMsPerStep / 1000),
    roofline_ms_per_step: onGpu ? rooflineMs : null,
    roofline_pct: onGpu ? (rooflineMs / decodeMsPerStep) * 100 : null,
    roofline_kv_ms_per_step: onGpu ? rooflineKvMs : null,
    roofline_kv_pct: onGpu ? (rooflineKvMs / decodeMsPerStep) * 100 : null,
    peak_gib: peakGiB, peak_kind: peakGiB === null ? null : PEAK_KIND_NVIDIA_SMI,
  };
}

async function main(): Promise<number> {
  const program = benchProgram('sample', 'engine sampling: prefill + decode throughput')
    .option('--batches <list>', 'batch sizes', intList('batches'), [1, 8, 64, 256])
    .option('--prompt <n>', 'prompt tokens per sequence', positiveInt('prompt'), 512)
    .option('--new <n>', 'new tokens per sequence', positiveInt('new'), 64)
    .option('--reps <n>', 'timed repetitions per batch (median is reported)', positiveInt('reps'), 3);
  const opts = program.parse(process.argv).opts<SampleOptions>();
  if (opts.new < 2) throw new Error(`--new must be at least 2 to separate decode from prefill (got ${opts.new})`);
  const device = deviceDescription(opts.backend);
  const monitor = GpuMemoryMonitor.start(opts.backend);
  const { config, native, model, parameters } = createRandomModel(opts);
  const rows: string[][] = [];
  let failures = 0;
  try {
    const attentionLayers = config.layerTypes.filter((t) => t === 'attention').length;
    const ctx: BatchContext = {
      native, opts, device, monitor,
      weightBytes: parameters * 2, // bf16 weights, each read once per decode step
      kvBytesPerToken: attentionLayers * 2 * config.numKvHeads * config.headDim * 2,
    };
    const rng = new Rng(opts.seed + 2);
    // Warm-up: first-call costs (allocations, graph capture, kernel loading) are not part of any batch's time.
    await native.generate(request([randomTokens(rng, opts.prompt, config.vocabSize)], 2, opts.seed));
    for (const batch of opts.batches) {
      const prompts = Array.from({ length: batch }, () => randomTokens(rng, opts.prompt, config.vocabSize));
      try {
        const record = await measureBatch(ctx, prompts);
        emit(record);
        rows.push([String(batch), fmt(record.total_ms, 1), fmt(record.prefill_ms, 1), fmt(record.decode_ms_per_step, 3),
          fmt(record.new_tokens_per_s), fmt(record.decode_tokens_per_s), pct(record.roofline_pct),
          pct(record.roofline_kv_pct)]);
      } catch (err) {
        // One failing batch size (e.g. out of cache memory) must not hide the others' numbers.
        failures++;
        const message = (err as Error).message;
        emit({ bench: 'sample', impl: 'webgrpo', status: 'error', error: message, backend: opts.backend, device,
          preset: opts.preset, batch, prompt_len: opts.prompt, new_tokens: opts.new });
        process.stderr.write(`bench sample: batch ${batch}: ${message}\n`);
        rows.push([String(batch), 'error', '', '', '', '', '', '']);
      }
    }
  } finally {
    model.dispose();
    monitor?.stop();
  }
  process.stdout.write(`\n### webgrpo sampling (${opts.preset}, ${device}, prompt ${opts.prompt}, ${opts.new} new tokens)\n\n`);
  process.stdout.write(`${markdownTable(['batch', 'total ms', 'prefill+1 ms', 'decode ms/step', 'new tok/s',
    'decode tok/s', 'roofline (weights)', 'roofline (weights+KV)'], rows)}\n`);
  return failures ? 1 : 0;
}

runMain(main);
