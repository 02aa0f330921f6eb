// Shared fixtures for the native addon tests: a tiny LFM2 with both layer kinds and GQA.
import type { Lfm2Config } from '../../src/model/config.js';
import { loadAddon, type NativeAddon, type NativeModel } from '../../src/native/addon.js';

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
