// LoRA on the CPU engine (the reference for the CUDA adapters): PEFT's init and naming, adapter gradients against
// finite differences, a frozen base, adapters on/off scoring, decoding through the adapters, and input errors.
import { describe, expect, it } from 'vitest';
import type { LoraOptions, NativeModel } from '../../src/native/addon.js';
import { addon, gradientCheck, leftPad, rng, scoreRequest, setValues, tinyModel } from './helpers.js';

const ALL = ['q_proj', 'k_proj', 'v_proj', 'out_proj', 'in_proj', 'w1', 'w2', 'w3'];
const lora = (overrides: Partial<LoraOptions> = {}): LoraOptions =>
  ({ rank: 4, alpha: 8, dropout: 0, rslora: false, targets: ALL, seed: 5, ...overrides });

/** Gives every lora_B random values, so the adapters change the model (PEFT starts them at zero). */
function randomizeB(model: NativeModel, seed: number, range = 0.3) {
  const rand = rng(seed);
  for (const { name, shape } of model.trainableInfo()) {
    if (!name.includes('lora_B')) continue;
    const n = shape.reduce((a, b) => a * b, 1);
    setValues(model, name, Float32Array.from({ length: n }, () => (rand() * 2 - 1) * range), shape);
  }
}

/** W + s·B·A for every adapted weight, written into `target` (a model without adapters). */
function mergeInto(source: NativeModel, target: NativeModel, scale: number) {
  for (const { name, shape } of source.parameterInfo()) {
    const w = source.getParameter(name).toFloat32();
    const base = name.replace(/\.weight$/, '');
    const hasAdapter = source.trainableInfo().some((t) => t.name === `${base}.lora_A.weight`);
    if (hasAdapter) {
      const a = source.getParameter(`${base}.lora_A.weight`);
      const b = source.getParameter(`${base}.lora_B.weight`);
      const [rank, inF] = a.shape;
      const av = a.toFloat32();
      const bv = b.toFloat32();
      const outF = shape[0];
      for (let o = 0; o < outF; o++)
        for (let i = 0; i < inF; i++) {
          let sum = 0;
          for (let j = 0; j < rank; j++) sum += bv[o * rank + j] * av[j * inF + i];
          w[o * inF + i] += scale * sum;
        }
    }
    setValues(target, name, w, shape);
  }
}

describe('LoRA (CPU engine)', () => {
  it('adds PEFT-named adapters with PEFT init on the chosen layers only, and leaves the model unchanged', async () => {
    const model = tinyModel(3, 0.3);
    const request = scoreRequest(2, 64, 1);
    const before = (await model.score(request)).logprobs;
    model.enableLora(lora({ targets: ['q_proj', 'in_proj', 'w2'] }));
    const names = model.trainableInfo().map((t) => t.name);
    // tiny layers: conv, attention, conv, attention
    expect(names).toEqual([
      'model.layers.0.conv.in_proj.lora_A.weight', 'model.layers.0.conv.in_proj.lora_B.weight',
      'model.layers.0.feed_forward.w2.lora_A.weight', 'model.layers.0.feed_forward.w2.lora_B.weight',
      'model.layers.1.self_attn.q_proj.lora_A.weight', 'model.layers.1.self_attn.q_proj.lora_B.weight',
      'model.layers.1.feed_forward.w2.lora_A.weight', 'model.layers.1.feed_forward.w2.lora_B.weight',
      'model.layers.2.conv.in_proj.lora_A.weight', 'model.layers.2.conv.in_proj.lora_B.weight',
      'model.layers.2.feed_forward.w2.lora_A.weight', 'model.layers.2.feed_forward.w2.lora_B.weight',
      'model.layers.3.self_attn.q_proj.lora_A.weight', 'model.layers.3.self_attn.q_proj.lora_B.weight',
      'model.layers.3.feed_forward.w2.lora_A.weight', 'model.layers.3.feed_forward.w2.lora_B.weight',
    ]);
    const shapes = Object.fromEntries(model.trainableInfo().map((t) => [t.name, t.shape]));
    expect(shapes['model.layers.0.conv.in_proj.lora_A.weight']).toEqual([4, 32]);
    expect(shapes['model.layers.0.conv.in_proj.lora_B.weight']).toEqual([96, 4]);
    expect(shapes['model.layers.0.feed_forward.w2.lora_A.weight']).toEqual([4, 48]);
    // A ~ U(-1/sqrt(in), 1/sqrt(in)), not all equal; B = 0.
    const a = model.getParameter('model.layers.0.feed_forward.w2.lora_A.weight').toFloat32();
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(48));
    expect(new Set(a).size).toBeGreaterThan(a.length / 2);
    expect(model.getParameter('model.layers.0.feed_forward.w2.lora_B.weight').toFloat32().every((x) => x === 0)).toBe(true);
    expect(Array.from((await model.score(request)).logprobs)).toEqual(Array.from(before));
    model.dispose();
  });

  it('matches finite differences for every adapter tensor; the base gets no gradient', async () => {
    const model = tinyModel(3, 0.3);
    model.enableLora(lora());
    randomizeB(model, 8);
    const { failures, checked } = await gradientCheck(model, 64);
    expect(checked).toBe(2 * model.trainableInfo().length);
    expect(failures).toEqual([]);
    for (const { name } of model.parameterInfo())
      expect(model.getGradient(name).toFloat32().every((g) => g === 0), name).toBe(true);
    model.dispose();
  });

  it('finite differences hold with rsLoRA scaling too, and the scale differs from alpha/r', async () => {
    const plain = tinyModel(6, 0.3);
    const rs = tinyModel(6, 0.3);
    plain.enableLora(lora({ rank: 4, alpha: 8 }));
    rs.enableLora(lora({ rank: 4, alpha: 8, rslora: true }));
    randomizeB(plain, 9);
    randomizeB(rs, 9);
    const request = scoreRequest(3, 64, 1);
    const a = (await plain.score(request)).logprobs;
    const b = (await rs.score(request)).logprobs;
    expect(Array.from(a)).not.toEqual(Array.from(b));
    expect((await gradientCheck(rs, 64)).failures).toEqual([]);
    plain.dispose();
    rs.dispose();
  });

  it('dropout acts in training passes only, is fixed by its seed, and its gradients match finite differences', async () => {
    const model = tinyModel(3, 0.3);
    model.enableLora(lora({ dropout: 0.3 }));
    randomizeB(model, 8);
    const plain = tinyModel(3, 0.3);
    plain.enableLora(lora());
    randomizeB(plain, 8);
    const request = scoreRequest(5, 64, 1);
    const noDropout = (await plain.score(request)).logprobs;
    // Scoring (sampling's log-probs, the KL reference) never drops.
    expect(Array.from((await model.score(request)).logprobs)).toEqual(Array.from(noDropout));
    const train = (seed: number) => model.score({ ...request, keepActivations: true, dropoutSeed: seed });
    const a = (await train(1)).logprobs;
    expect(Array.from((await train(1)).logprobs)).toEqual(Array.from(a));
    expect(Array.from((await train(2)).logprobs)).not.toEqual(Array.from(a));
    expect(Array.from(a)).not.toEqual(Array.from(noDropout));
    // Finite differences of a training pass with one fixed mask: backward regenerates exactly that mask.
    const rand = rng(41);
    const scored = request.scoreMask.reduce((x, y) => x + y, 0);
    const weights = Float32Array.from({ length: scored }, () => rand() * 2 - 1);
    const loss = async () => {
      const { logprobs } = await train(7);
      return logprobs.reduce((acc, lp, k) => acc + weights[k] * lp, 0);
    };
    model.zeroGrad();
    await train(7);
    await model.backward(weights);
    const failures: string[] = [];
    for (const { name, shape } of model.trainableInfo()) {
      const grad = model.getGradient(name).toFloat32();
      const param = model.getParameter(name).toFloat32();
      const i = Array.from(grad.keys()).sort((x, y) => Math.abs(grad[y]) - Math.abs(grad[x]))[0];
      const original = param[i];
      const at = async (v: number) => {
        param[i] = v;
        setValues(model, name, param, shape);
        return loss();
      };
      const numeric = ((await at(original + 3e-3)) - (await at(original - 3e-3))) / 6e-3;
      await at(original);
      if (Math.abs(numeric - grad[i]) > 0.03 * Math.abs(grad[i]) + 2e-3) failures.push(`${name}[${i}]: ${grad[i]} vs ${numeric}`);
    }
    expect(failures).toEqual([]);
    expect(() => tinyModel(1, 0.3).enableLora(lora({ dropout: 1 }))).toThrow(/dropout must be in \[0, 1\)/);
    model.dispose();
    plain.dispose();
  });

  it('AdamW moves the adapters only; adapters: false scores the frozen base', async () => {
    const base = tinyModel(3, 0.3);
    const model = tinyModel(3, 0.3);
    model.enableLora(lora());
    const request = scoreRequest(4, 64, 1);
    const baseScores = (await base.score(request)).logprobs;
    const frozen = model.parameterInfo().map((p) => model.getParameter(p.name).toFloat32());
    const scored = request.scoreMask.reduce((x, y) => x + y, 0);
    for (let step = 1; step <= 2; step++) {
      model.zeroGrad();
      await model.score({ ...request, keepActivations: true });
      await model.backward(new Float32Array(scored).fill(1));
      expect(await model.gradNorm()).toBeGreaterThan(0);
      await model.adamwStep({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step, gradScale: 1 });
    }
    model.parameterInfo().forEach((p, i) => expect(Array.from(model.getParameter(p.name).toFloat32()), p.name).toEqual(Array.from(frozen[i])));
    expect(model.getParameter('model.layers.0.feed_forward.w1.lora_B.weight').toFloat32().some((x) => x !== 0)).toBe(true);
    expect(model.getOptimizerState('model.layers.0.feed_forward.w1.lora_B.weight', 'v').toFloat32().some((x) => x !== 0)).toBe(true);
    const trained = (await model.score(request)).logprobs;
    const reference = (await model.score({ ...request, adapters: false })).logprobs;
    expect(Array.from(reference)).toEqual(Array.from(baseScores));
    expect(Array.from(trained)).not.toEqual(Array.from(baseScores));
    await model.score({ ...request, keepActivations: true, adapters: false });
    await expect(model.backward(new Float32Array(scored))).rejects.toThrow(/adapters: false/);
    base.dispose();
    model.dispose();
  });

  it('decodes through the adapters: greedy output equals that of the merged weights', async () => {
    const model = tinyModel(7, 0.3);
    model.enableLora(lora({ rank: 2, alpha: 6 }));
    randomizeB(model, 10, 0.5);
    const merged = tinyModel(1, 0.3);
    mergeInto(model, merged, 6 / 2);
    const batch = leftPad([[1, 9, 4, 22, 31], [1, 17, 3]]);
    const logitsA = await model.forwardLogits(batch);
    const logitsB = await merged.forwardLogits(batch);
    let worst = 0;
    for (let i = 0; i < logitsA.length; i++) worst = Math.max(worst, Math.abs(logitsA[i] - logitsB[i]));
    expect(worst).toBeLessThan(1e-4);
    const request = {
      prompts: [Int32Array.from([1, 9, 4, 22, 31]), Int32Array.from([1, 17, 3])],
      sequencePrompt: Int32Array.from([0, 1]),
      maxNewTokens: 8,
      stopTokens: Int32Array.from([]),
      sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, greedy: true, seed: 1 },
    };
    const a = await model.generate(request);
    const b = await merged.generate(request);
    expect(a.map((r) => Array.from(r.tokens))).toEqual(b.map((r) => Array.from(r.tokens)));
    model.dispose();
    merged.dispose();
  });

  it('rejects bad targets and options with errors that name them', () => {
    const model = tinyModel(3, 0.3);
    expect(() => model.enableLora(lora({ targets: ['q_proj', 'o_proj'] }))).toThrow(/'o_proj' is not an LFM2 linear layer/);
    expect(() => model.enableLora(lora({ rank: 0 }))).toThrow(/rank/);
    expect(() => model.enableLora(lora({ targets: [] }))).toThrow(/targets is empty/);
    const attentionOnly = tinyModel(3, 0.3, { layerTypes: ['attention', 'attention', 'attention', 'attention'] });
    expect(() => attentionOnly.enableLora(lora({ targets: ['in_proj'] }))).toThrow(/'in_proj' matches no layer/);
    model.enableLora(lora());
    expect(() => model.enableLora(lora())).toThrow(/already has LoRA adapters/);
    expect(() => model.getParameter('model.layers.0.conv.in_proj.lora_C.weight')).toThrow(/unknown parameter name/);
    model.dispose();
    attentionOnly.dispose();
    expect(addon().backends()).toContain('cpu');
  });
});
