// The policy update: samples → left-padded micro-batches → native scoring → GRPO loss gradients (TypeScript)
// → native backward. The optimizer step itself is the trainer's.
import type { NativeModel, ScoreRequest } from '../native/addon.js';
import { packAllowed } from './constraint.js';
import { grpoLoss, type BatchSize, type LossSettings } from './grpo.js';
import type { StepSample } from './rollout.js';

/** A sample ready for training: the step's tokens and its advantage. */
export interface TrainSample {
  sample: StepSample;
  advantage: number;
  /** Log-probs before this batch's first update (num_iterations > 1), else filled from the current pass. */
  oldLogprobs?: Float32Array;
  refLogprobs?: Float32Array;
}

export interface MicroBatchStats {
  loss: number;
  klSum: number;
  clipped: number;
  entropySum: number;
  tokens: number;
  /** Tokens run through the model (prompt + completion, without padding). */
  processedTokens: number;
  /** Σ |trainer log-prob − sampler log-prob|: how far the trained policy is from the one that sampled. */
  mismatchSum: number;
}

/** Builds the left-padded score request for a micro-batch; completions are scored at their own positions. */
export function buildScoreRequest(samples: readonly StepSample[], temperature: number, keepActivations: boolean):
  ScoreRequest {
  const seqLen = Math.max(...samples.map((s) => s.promptTokens.length + s.completionTokens.length));
  const batchSize = samples.length;
  const tokens = new Int32Array(batchSize * seqLen);
  const attentionMask = new Uint8Array(batchSize * seqLen);
  const scoreMask = new Uint8Array(batchSize * seqLen);
  const constrained = samples.some((s) => s.allowed);
  if (constrained && !samples.every((s) => s.allowed))
    throw new Error('buildScoreRequest: a micro-batch mixes constrained and unconstrained samples');
  samples.forEach((s, b) => {
    const length = s.promptTokens.length + s.completionTokens.length;
    const start = b * seqLen + (seqLen - length);
    tokens.set(s.promptTokens, start);
    tokens.set(s.completionTokens, start + s.promptTokens.length);
    attentionMask.fill(1, start, start + length);
    scoreMask.fill(1, start + s.promptTokens.length, start + length);
  });
  return {
    tokens,
    attentionMask,
    scoreMask,
    batchSize,
    seqLen,
    temperature,
    allowed: constrained ? packAllowed(samples.flatMap((s) => s.allowed!)) : undefined,
    keepActivations,
  };
}

/** Splits a flat per-token array back into one array per sample. */
function split(values: Float32Array, samples: readonly StepSample[]): Float32Array[] {
  let offset = 0;
  return samples.map((s) => {
    const part = values.subarray(offset, offset + s.completionTokens.length);
    offset += s.completionTokens.length;
    return part;
  });
}

/**
 * Log-probs of every sample's completion under `model`, in micro-batches, without keeping activations; with
 * `adapters` false, under the base model alone (LoRA's frozen reference).
 */
export async function scoreSamples(model: NativeModel, samples: readonly StepSample[], temperature: number,
  microBatchSize: number, adapters = true): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let i = 0; i < samples.length; i += microBatchSize) {
    const micro = samples.slice(i, i + microBatchSize);
    const result = await model.score({ ...buildScoreRequest(micro, temperature, false), adapters });
    out.push(...split(result.logprobs, micro).map((a) => a.slice()));
  }
  return out;
}

/** Forward + loss + backward for one micro-batch; gradients accumulate in the model, scaled by `gradScale`. */
export async function trainMicroBatch(model: NativeModel, micro: readonly TrainSample[], loss: LossSettings,
  batch: BatchSize, temperature: number, gradScale: number, dropoutSeed = 0): Promise<MicroBatchStats> {
  const samples = micro.map((m) => m.sample);
  const result = await model.score({ ...buildScoreRequest(samples, temperature, true), dropoutSeed });
  const logprobs = split(result.logprobs, samples);
  const entropy = split(result.entropy, samples);
  const out = grpoLoss(
    micro.map((m, i) => ({
      advantage: m.advantage,
      logprobs: logprobs[i],
      // On-policy (num_iterations 1): the old policy is the current one, so the ratio is exactly 1.
      oldLogprobs: m.oldLogprobs ?? logprobs[i],
      refLogprobs: m.refLogprobs,
    })),
    loss,
    batch,
  );
  const dLogprobs = new Float32Array(result.logprobs.length);
  let offset = 0;
  for (const g of out.gradients) {
    for (let t = 0; t < g.length; t++) dLogprobs[offset + t] = g[t] * gradScale;
    offset += g.length;
  }
  await model.backward(dLogprobs);
  let mismatchSum = 0;
  let entropySum = 0;
  micro.forEach((m, i) => {
    for (let t = 0; t < logprobs[i].length; t++) {
      mismatchSum += Math.abs(logprobs[i][t] - m.sample.samplerLogprobs[t]);
      entropySum += entropy[i][t];
    }
  });
  return {
    loss: out.loss * gradScale,
    klSum: out.kl * out.tokens,
    clipped: out.clipFraction * out.tokens,
    entropySum,
    tokens: out.tokens,
    processedTokens: samples.reduce((a, s) => a + s.promptTokens.length + s.completionTokens.length, 0),
    mismatchSum,
  };
}

/** Orders samples by length so micro-batches waste little padding, then cuts them. */
export function microBatches<T extends { sample: StepSample }>(items: readonly T[], size: number): T[][] {
  const sorted = [...items].sort(
    (a, b) =>
      a.sample.promptTokens.length + a.sample.completionTokens.length -
      (b.sample.promptTokens.length + b.sample.completionTokens.length),
  );
  const out: T[][] = [];
  for (let i = 0; i < sorted.length; i += size) out.push(sorted.slice(i, i + size));
  return out;
}
