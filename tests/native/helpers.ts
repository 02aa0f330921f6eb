// Shared fixtures for the native addon tests: a tiny LFM2 with both layer kinds and GQA.
import type { Lfm2Config } from '../../src/model/config.js';
import { loadAddon, type NativeAddon, type NativeModel, type ScoreRequest } from '../../src/native/addon.js';

export function tinyConfig(overrides: Partial<Lfm2Config> = {}): Lfm2Config {
  return {
    vocabSize: 64,
    hiddenSize: 32,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    intermediateSize: 48,
    layerTypes: ['conv', 'attention', 'conv', 'attention'],
    convKernel: 3,
    normEps: 1e-5,
    ropeTheta: 10000,
    tieEmbeddings: true,
    bosTokenId: 1,
    eosTokenId: 7,
    padTokenId: 0,
    maxPositionEmbeddings: 256,
    initializerRange: 0.02,
    ...overrides,
  };
}

export function addon(): NativeAddon {
  return loadAddon();
}

export function tinyModel(seed = 1, initRange = 0.2, overrides: Partial<Lfm2Config> = {}): NativeModel {
  const model = addon().createModel(JSON.stringify(tinyConfig(overrides)), { backend: 'cpu', threads: 2 });
  model.initRandom(seed, initRange);
  return model;
}

/** Deterministic pseudo-random numbers for test inputs (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Left-pads rows of tokens into a [B, T] batch. */
export function leftPad(rows: number[][], seqLen?: number, pad = 0) {
  const T = seqLen ?? Math.max(...rows.map((r) => r.length));
  const tokens = new Int32Array(rows.length * T).fill(pad);
  const attentionMask = new Uint8Array(rows.length * T);
  rows.forEach((row, b) => {
    const start = T - row.length;
    row.forEach((tok, i) => {
      tokens[b * T + start + i] = tok;
      attentionMask[b * T + start + i] = 1;
    });
  });
  return { tokens, attentionMask, batchSize: rows.length, seqLen: T };
}

export function argmax(values: ArrayLike<number>, start = 0, length = values.length - start): number {
  let best = 0;
  for (let i = 1; i < length; i++) if (values[start + i] > values[start + best]) best = i;
  return best;
}

/** A left-padded batch scored at every real position that has a real token before it, with a mix of
 * constrained (allowed-token) and unconstrained positions. */
export function scoreRequest(seed: number, vocab: number, temperature: number): ScoreRequest {
  const rand = rng(seed);
  const rows = [7, 4, 9].map((len) => Array.from({ length: len }, () => 1 + Math.floor(rand() * (vocab - 1))));
  const batch = leftPad(rows, 9);
  const scoreMask = new Uint8Array(batch.tokens.length);
  const offsets = [0];
  const allowedTokens: number[] = [];
  for (let i = 0; i < scoreMask.length; i++) {
    const t = i % batch.seqLen;
    if (t === 0 || !batch.attentionMask[i] || !batch.attentionMask[i - 1]) continue;
    scoreMask[i] = 1;
    if (rand() < 0.5) {
      // A constrained position: the target plus a few other tokens.
      const set = new Set([batch.tokens[i]]);
      while (set.size < 6) set.add(Math.floor(rand() * vocab));
      allowedTokens.push(...set);
    } else {
      for (let v = 0; v < vocab; v++) allowedTokens.push(v);
    }
    offsets.push(allowedTokens.length);
  }
  return {
    ...batch,
    scoreMask,
    temperature,
    allowed: { offsets: Int32Array.from(offsets), tokens: Int32Array.from(allowedTokens) },
    keepActivations: false,
  };
}

export async function weightedLoss(model: NativeModel, request: ScoreRequest, weights: Float32Array): Promise<number> {
  const { logprobs } = await model.score(request);
  let loss = 0;
  for (let k = 0; k < logprobs.length; k++) loss += weights[k] * logprobs[k];
  return loss;
}

export function setValues(model: NativeModel, name: string, values: Float32Array, shape: number[]) {
  const tensor = addon().tensorFromFloat32(values, shape, 'f32', 'cpu');
  model.setParameter(name, tensor);
  tensor.dispose();
}

/** Analytic gradients of every trainable tensor (two largest entries each) against central differences. */
export async function gradientCheck(model: NativeModel, vocab: number) {
  const request = scoreRequest(7, vocab, 0.7);
  const rand = rng(99);
  const scored = request.scoreMask.reduce((a, b) => a + b, 0);
  const weights = Float32Array.from({ length: scored }, () => rand() * 2 - 1);
  model.zeroGrad();
  await model.score({ ...request, keepActivations: true });
  await model.backward(weights);

  const eps = 3e-3;
  const failures: string[] = [];
  let checked = 0;
  for (const { name, shape } of model.trainableInfo()) {
    const grad = model.getGradient(name).toFloat32();
    const param = model.getParameter(name).toFloat32();
    // The two entries with the largest gradient: their finite difference rises well above fp32 noise.
    const order = Array.from(grad.keys()).sort((a, b) => Math.abs(grad[b]) - Math.abs(grad[a]));
    for (const i of order.slice(0, 2)) {
      const original = param[i];
      param[i] = original + eps;
      setValues(model, name, param, shape);
      const plus = await weightedLoss(model, request, weights);
      param[i] = original - eps;
      setValues(model, name, param, shape);
      const minus = await weightedLoss(model, request, weights);
      param[i] = original;
      setValues(model, name, param, shape);
      const numeric = (plus - minus) / (2 * eps);
      const analytic = grad[i];
      checked++;
      if (Math.abs(numeric - analytic) > 0.03 * Math.abs(analytic) + 2e-3)
        failures.push(`${name}[${i}]: analytic ${analytic}, numeric ${numeric}`);
    }
  }
  return { failures, checked };
}
