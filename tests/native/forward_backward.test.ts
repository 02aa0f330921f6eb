// The CPU engine's score -> backward against finite differences, left-padding invariance, and AdamW by hand.
import { describe, expect, it } from 'vitest';
import type { NativeModel } from '../../src/native/addon.js';
import { addon, gradientCheck, leftPad, rng, scoreRequest, tinyModel } from './helpers.js';

describe('CPU engine score/backward', () => {
  it('matches finite differences for every parameter (tied embeddings, temperature, allowed masks, padding)', async () => {
    const model = tinyModel(3, 0.3);
    const { failures, checked } = await gradientCheck(model, 64);
    expect(checked).toBe(2 * model.parameterInfo().length);
    expect(failures).toEqual([]);
    model.dispose();
  });

  it('matches finite differences with an untied lm_head', async () => {
    const model = tinyModel(4, 0.3, { tieEmbeddings: false, layerTypes: ['attention', 'conv', 'attention', 'conv'] });
    expect(model.parameterInfo().map((p) => p.name)).toContain('lm_head.weight');
    const { failures } = await gradientCheck(model, 64);
    expect(failures).toEqual([]);
    model.dispose();
  });

  it('gives every parameter a gradient and accumulates across backward calls', async () => {
    const model = tinyModel(5, 0.3);
    const request = scoreRequest(11, 64, 1);
    const scored = request.scoreMask.reduce((a, b) => a + b, 0);
    model.zeroGrad();
    await model.score({ ...request, keepActivations: true });
    await model.backward(new Float32Array(scored).fill(1));
    const once = model.parameterInfo().map((p) => model.getGradient(p.name).toFloat32());
    for (const [k, p] of model.parameterInfo().entries())
      expect(once[k].some((g) => g !== 0), `${p.name} has no gradient`).toBe(true);
    const norm1 = await model.gradNorm();
    await model.backward(new Float32Array(scored).fill(1));
    const norm2 = await model.gradNorm();
    expect(norm2).toBeCloseTo(2 * norm1, 4);
    model.zeroGrad();
    expect(await model.gradNorm()).toBe(0);
    model.dispose();
  });

  it('gives the same gradients for a large batch as for its halves accumulated (both matmul backward paths)', async () => {
    const model = tinyModel(12, 0.3);
    const rand = rng(5);
    const rows = Array.from({ length: 8 }, () => Array.from({ length: 10 + Math.floor(rand() * 11) }, () => 1 + Math.floor(rand() * 63)));
    // Loss weight of each scored token depends only on (sequence, position), so the halves add up to the whole.
    const scoreAll = async (part: number[][], seqLen: number, firstRow: number) => {
      const batch = leftPad(part, seqLen);
      const scoreMask = new Uint8Array(batch.tokens.length);
      const weights: number[] = [];
      for (let i = 0; i < scoreMask.length; i++) {
        if (i % seqLen > 0 && batch.attentionMask[i] && batch.attentionMask[i - 1]) {
          scoreMask[i] = 1;
          weights.push(Math.cos(31 * (firstRow + Math.floor(i / seqLen)) + (i % seqLen)));
        }
      }
      await model.score({ ...batch, scoreMask, temperature: 1, keepActivations: true });
      await model.backward(Float32Array.from(weights));
    };
    const grads = () => model.parameterInfo().map((p) => model.getGradient(p.name).toFloat32());
    model.zeroGrad();
    await scoreAll(rows, 20, 0); // 160 rows: the transposed-GEMM backward
    const whole = grads();
    model.zeroGrad();
    await scoreAll(rows.slice(0, 4), 20, 0); // 80 rows each: the axpy backward
    await scoreAll(rows.slice(4), 20, 4);
    const halves = grads();
    for (const [k, p] of model.parameterInfo().entries()) {
      let diff = 0;
      let norm = 0;
      for (let i = 0; i < whole[k].length; i++) {
        diff += (whole[k][i] - halves[k][i]) ** 2;
        norm += halves[k][i] ** 2;
      }
      expect(Math.sqrt(diff / norm), p.name).toBeLessThan(1e-5);
    }
    model.dispose();
  });

  it('is invariant to left padding: a sequence alone equals the same sequence padded in a batch', async () => {
    const model = tinyModel(6, 0.3);
    const seq = [1, 12, 33, 4, 50, 6, 17];
    const other = [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11];
    const alone = leftPad([seq]);
    const batched = leftPad([other, seq], 11);
    const scoreAll = (b: ReturnType<typeof leftPad>) => {
      const scoreMask = new Uint8Array(b.tokens.length);
      for (let i = 0; i < scoreMask.length; i++)
        if (i % b.seqLen > 0 && b.attentionMask[i] && b.attentionMask[i - 1]) scoreMask[i] = 1;
      return model.score({ ...b, scoreMask, temperature: 1, keepActivations: false });
    };
    const a = await scoreAll(alone);
    const b = await scoreAll(batched);
    const otherScored = other.length - 1;
    expect(a.logprobs.length).toBe(seq.length - 1);
    for (let k = 0; k < a.logprobs.length; k++) {
      expect(Math.abs(b.logprobs[otherScored + k] - a.logprobs[k])).toBeLessThan(1e-5);
      expect(Math.abs(b.entropy[otherScored + k] - a.entropy[k])).toBeLessThan(1e-5);
    }
    const logitsAlone = await model.forwardLogits(alone);
    const logitsBatch = await model.forwardLogits(batched);
    const V = 64;
    const offset = (11 + (11 - seq.length)) * V; // row 1, first real position
    for (let i = 0; i < seq.length * V; i++) expect(Math.abs(logitsBatch[offset + i] - logitsAlone[i])).toBeLessThan(1e-5);
    model.dispose();
  });

  it('scores the same log-probs as a log-softmax of forwardLogits', async () => {
    const model = tinyModel(8, 0.3);
    const batch = leftPad([[1, 5, 9, 13, 17]]);
    const logits = await model.forwardLogits(batch);
    const scoreMask = Uint8Array.from([0, 1, 1, 1, 1]);
    const { logprobs, entropy } = await model.score({ ...batch, scoreMask, temperature: 2, keepActivations: false });
    for (let t = 1; t < 5; t++) {
      const row = Array.from(logits.subarray((t - 1) * 64, t * 64), (z) => z / 2);
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((s, z) => s + Math.exp(z - max), 0));
      expect(logprobs[t - 1]).toBeCloseTo(row[batch.tokens[t]] - lse, 5);
      const h = -row.reduce((s, z) => s + Math.exp(z - lse) * (z - lse), 0);
      expect(entropy[t - 1]).toBeCloseTo(h, 5);
    }
    model.dispose();
  });
});

describe('CPU engine AdamW', () => {
  it('matches a hand computation of torch.optim.AdamW over two steps', async () => {
    const model = tinyModel(9, 0.3);
    const request = scoreRequest(13, 64, 1);
    const scored = request.scoreMask.reduce((a, b) => a + b, 0);
    model.zeroGrad();
    await model.score({ ...request, keepActivations: true });
    await model.backward(new Float32Array(scored).fill(-1));
    const name = 'model.layers.1.self_attn.q_proj.weight';
    const grad = Array.from(model.getGradient(name).toFloat32(), Number);
    let param = Array.from(model.getParameter(name).toFloat32(), Number);
    const hp = { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5 };
    let m = grad.map(() => 0);
    let v = grad.map(() => 0);
    for (const step of [1, 2]) {
      await model.adamwStep({ ...hp, step });
      const g = grad.map((x) => x * hp.gradScale);
      m = m.map((mi, i) => hp.beta1 * mi + (1 - hp.beta1) * g[i]);
      v = v.map((vi, i) => hp.beta2 * vi + (1 - hp.beta2) * g[i] * g[i]);
      const c1 = 1 - hp.beta1 ** step;
      const c2 = 1 - hp.beta2 ** step;
      param = param.map((p, i) => p * (1 - hp.lr * hp.weightDecay) - (hp.lr * m[i]) / c1 / (Math.sqrt(v[i] / c2) + hp.eps));
      const got = model.getParameter(name).toFloat32();
      const gotM = model.getOptimizerState(name, 'm').toFloat32();
      const gotV = model.getOptimizerState(name, 'v').toFloat32();
      for (let i = 0; i < param.length; i++) {
        expect(Math.abs(got[i] - param[i])).toBeLessThan(1e-6 + 1e-5 * Math.abs(param[i]));
        expect(Math.abs(gotM[i] - m[i])).toBeLessThan(1e-7 + 1e-5 * Math.abs(m[i]));
        expect(Math.abs(gotV[i] - v[i])).toBeLessThan(1e-10 + 1e-5 * Math.abs(v[i]));
      }
    }
    // Optimizer state round-trips (checkpoint resume).
    const state = addon().tensorFromFloat32(Float32Array.from(m, (x) => 2 * x), [32, 32], 'f32', 'cpu');
    model.setOptimizerState(name, 'm', state);
    const back = model.getOptimizerState(name, 'm').toFloat32();
    expect(back[3]).toBeCloseTo(2 * m[3], 7);
    model.dispose();
  });
});
