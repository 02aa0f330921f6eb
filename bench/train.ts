/**
 * Train-step throughput of the engine (issues 6 and 7): score (forward + token log-probs) + backward + AdamW on a
 * random LFM2 at fixed shapes, the same shapes bench/torch/train_step.py gives PyTorch + transformers (+ PEFT).
 *   node dist/bench/train.js [--backend cuda|cpu] [--preset LFM2-350M] [--shapes 16x1024:all,64x632:32]
 *                            [--warmup 3] [--iters 10] [--lora-ranks 8,16]
 * A shape BxT:S scores the last S tokens of each sequence ("all": every token after the first), loss = mean
 * cross-entropy over the scored tokens. --lora-ranks trains LoRA adapters (alpha = 2·rank) on every linear layer
 * instead of the whole model, once per rank (records with bench "lora", mode "lora-rN"). Prints one JSON line per
 * shape (and rank), then a markdown table.
 */
import { InvalidArgumentError } from 'commander';
import type { ScoreRequest } from '../src/native/addon.js';
import { Rng } from '../src/training/rng.js';
import {
  benchProgram, createRandomModel, deviceDescription, emit, fmt, GpuMemoryMonitor, intList, markdownTable, nonNegativeInt, nowMs,
  positiveNumber,
  PEAK_KIND_NVIDIA_SMI, positiveInt, randomTokens, runMain, syncDevice, type CommonOptions,
} from './common.js';

interface TrainShape {
  batch: number;
  seq: number;
  /** Scored tokens per sequence (the last ones); seq - 1 means every token after the first. */
  scored: number;
}

function parseShapes(value: string): TrainShape[] {
  return value.split(',').map((part) => {
    const m = /^(\d+)x(\d+)(?::(all|\d+))?$/.exec(part.trim());
    if (!m) throw new InvalidArgumentError(`shape must look like 16x1024:all or 64x632:32 (got "${part}")`);
    const batch = Number(m[1]);
    const seq = Number(m[2]);
    const scored = m[3] === undefined || m[3] === 'all' ? seq - 1 : Number(m[3]);
    if (batch < 1 || seq < 2) throw new InvalidArgumentError(`shape needs batch ≥ 1 and seq ≥ 2 (got "${part}")`);
    if (scored < 1 || scored > seq - 1) {
      throw new InvalidArgumentError(`scored tokens must be between 1 and seq-1 = ${seq - 1} (got "${part}")`);
    }
    return { batch, seq, scored };
  });
}

/** A full (unpadded) batch of random tokens that scores the last `scored` tokens of every row. */
function trainRequest(rng: Rng, shape: TrainShape, vocabSize: number): ScoreRequest {
  const { batch, seq, scored } = shape;
  const scoreMask = new Uint8Array(batch * seq);
  for (let b = 0; b < batch; b++) scoreMask.fill(1, b * seq + seq - scored, (b + 1) * seq);
  return {
    tokens: randomTokens(rng, batch * seq, vocabSize),
    attentionMask: new Uint8Array(batch * seq).fill(1),
    scoreMask,
    batchSize: batch,
    seqLen: seq,
    temperature: 1,
    keepActivations: true,
  };
}

interface TrainOptions extends CommonOptions {
  shapes: TrainShape[];
  warmup: number;
  iters: number;
  lr: number;
  loraRanks: number[];
}

const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'out_proj', 'in_proj', 'w1', 'w2', 'w3'];

async function main(): Promise<number> {
  const program = benchProgram('train', 'engine train step: score + backward + AdamW')
    .option('--shapes <list>', 'BxT:S shapes, S = scored tokens per sequence or "all"', parseShapes,
      parseShapes('16x1024:all,64x632:32'))
    .option('--warmup <n>', 'untimed steps first', nonNegativeInt('warmup'), 3)
    .option('--iters <n>', 'timed steps', positiveInt('iters'), 10)
    .option('--lr <lr>', 'AdamW learning rate', positiveNumber('lr'), 1e-5)
    .option('--lora-ranks <list>', 'train LoRA adapters of these ranks on every linear layer instead of the full model',
      intList('lora-ranks'), []);
  const opts = program.parse(process.argv).opts<TrainOptions>();
  const device = deviceDescription(opts.backend);
  const rows: string[][] = [];
  let failures = 0;
  const variants: (number | null)[] = opts.loraRanks.length ? opts.loraRanks : [null];
  for (const shape of opts.shapes) for (const rank of variants) {
    const bench = rank === null ? 'train' : 'lora';
    const mode = rank === null ? 'engine' : `lora-r${rank}`;
    // A fresh model per shape, so one shape's peak memory is not inflated by another's buffers.
    const monitor = GpuMemoryMonitor.start(opts.backend);
    const { config, native, model, parameters } = createRandomModel(opts);
    try {
      if (rank !== null)
        native.enableLora({ rank, alpha: 2 * rank, dropout: 0, rslora: false, targets: LORA_TARGETS, seed: opts.seed });
      const rng = new Rng(opts.seed + 1);
      const request = trainRequest(rng, shape, config.vocabSize);
      const scoredCount = shape.batch * shape.scored;
      // loss = mean over scored tokens of -log p, so d loss / d logprob = -1/N for each.
      const dLogprobs = new Float32Array(scoredCount).fill(-1 / scoredCount);
      let optimizerStep = 0;
      let lastLoss = NaN;
      const step = async () => {
        native.zeroGrad();
        const scoredResult = await native.score(request);
        if (scoredResult.logprobs.length !== scoredCount) {
          throw new Error(`score returned ${scoredResult.logprobs.length} log-probs for ${scoredCount} scored tokens`);
        }
        let sum = 0;
        for (const lp of scoredResult.logprobs) sum -= lp;
        lastLoss = sum / scoredCount;
        await native.backward(dLogprobs);
        await native.adamwStep({
          lr: opts.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: ++optimizerStep, gradScale: 1,
        });
      };
      for (let i = 0; i < opts.warmup; i++) await step();
      await syncDevice(native);
      monitor?.resetPeak();
      const t0 = nowMs();
      for (let i = 0; i < opts.iters; i++) await step();
      await syncDevice(native);
      const msPerStep = (nowMs() - t0) / opts.iters;
      const tokens = shape.batch * shape.seq;
      const tokensPerS = tokens / (msPerStep / 1000);
      // MFU is relative to an H100's matrix rate: meaningless for the CPU backend.
      const mfu = opts.backend === 'cuda' ? (6 * parameters * tokensPerS) / opts.peakFlops : null;
      const peakGiB = monitor ? await monitor.peakGiB() : null;
      if (!Number.isFinite(lastLoss)) throw new Error(`loss is not finite (${lastLoss}) at shape ${shape.batch}x${shape.seq}`);
      emit({
        bench, impl: 'webgrpo', status: 'ok', mode, backend: opts.backend, device, preset: opts.preset,
        parameters, batch: shape.batch, seq: shape.seq, scored_per_seq: shape.scored, tokens_per_step: tokens,
        warmup: opts.warmup, steps: opts.iters, ms_per_step: msPerStep, tokens_per_s: tokensPerS, mfu,
        peak_gib: peakGiB, peak_kind: peakGiB === null ? null : PEAK_KIND_NVIDIA_SMI, loss: lastLoss,
      });
      rows.push([mode, `${shape.batch}×${shape.seq}`, String(shape.scored), fmt(msPerStep, 1), fmt(tokensPerS),
        mfu === null ? 'n/a' : `${fmt(mfu * 100, 1)}%`, fmt(peakGiB, 2), fmt(lastLoss, 3)]);
    } catch (err) {
      // One failing shape (e.g. out of device memory) must not hide the others' numbers.
      failures++;
      const message = (err as Error).message;
      emit({ bench, impl: 'webgrpo', status: 'error', error: message, mode, backend: opts.backend, device,
        preset: opts.preset, batch: shape.batch, seq: shape.seq, scored_per_seq: shape.scored });
      process.stderr.write(`bench train: ${mode}, shape ${shape.batch}x${shape.seq}: ${message}\n`);
      rows.push([mode, `${shape.batch}×${shape.seq}`, String(shape.scored), 'error', '', '', '', '']);
    } finally {
      model.dispose();
      monitor?.stop();
    }
  }
  process.stdout.write(`\n### webgrpo train step (${opts.preset}, ${device}, ${opts.iters} timed steps)\n\n`);
  process.stdout.write(`${markdownTable(['mode', 'shape', 'scored/seq', 'ms/step', 'tokens/s', 'MFU', 'peak GiB', 'loss'], rows)}\n`);
  return failures ? 1 : 0;
}

runMain(main);
