// The addon's typed surface: tensors and their lifetime, parameter access, init, and the errors bad input gets.
import { describe, expect, it } from 'vitest';
import { addon, leftPad, tinyConfig, tinyModel } from './helpers.js';

describe('native tensors', () => {
  it('round-trips f32, bf16 and f16 with conversion', () => {
    const values = Float32Array.from([0, 1, -2.5, 3.140625, 65504, 1e-6, -0.0001]);
    const f32 = addon().tensorFromFloat32(values, [7], 'f32', 'cpu');
    expect(f32.shape).toEqual([7]);
    expect(f32.dtype).toBe('f32');
    expect(f32.device).toBe('cpu');
    expect(Array.from(f32.toFloat32())).toEqual(Array.from(values));
    expect(f32.toBytes().length).toBe(28);

    const bf16 = addon().tensorFromFloat32(values, [7], 'bf16', 'cpu');
    expect(bf16.toBytes().length).toBe(14);
    const back = bf16.toFloat32();
    for (let i = 0; i < values.length; i++) expect(Math.abs(back[i] - values[i])).toBeLessThanOrEqual(Math.abs(values[i]) / 128);
    // 1.0 in bf16 is 0x3f80, little endian.
    expect(Array.from(bf16.toBytes().subarray(2, 4))).toEqual([0x80, 0x3f]);

    const f16 = addon().tensorFromFloat32(values, [7], 'f16', 'cpu');
    const h = f16.toFloat32();
    expect(h[4]).toBe(65504);
    expect(h[3]).toBe(3.140625);
    expect(Math.abs(h[5] - 1e-6)).toBeLessThan(6e-8); // subnormal in f16
    expect(Array.from(f16.toBytes().subarray(2, 4))).toEqual([0x00, 0x3c]);

    const fromBytes = addon().tensorFromBytes(bf16.toBytes(), [7, 1], 'bf16', 'cpu');
    expect(Array.from(fromBytes.toFloat32())).toEqual(Array.from(back));
    for (const t of [f32, bf16, f16, fromBytes]) t.dispose();
  });

  it('dispose twice is harmless, use after dispose is an error', () => {
    const t = addon().tensorFromFloat32(new Float32Array(4), [2, 2], 'f32', 'cpu');
    expect(t.disposed).toBe(false);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.toFloat32()).toThrow(/used after dispose/);
    const model = tinyModel();
    expect(() => model.setParameter('model.embedding_norm.weight', t)).toThrow(
      /setParameter\(model.embedding_norm.weight\).*used after dispose/,
    );
    model.dispose();
  });

  it('reports what each backend implements, so a run picks one that can do the whole job', () => {
    expect(addon().backendFeatures('cpu')).toEqual({ generate: true, lora: true });
    // The CUDA engine says honestly what it lacks (when this build has one and a GPU is present).
    if (addon().backends().includes('cuda')) expect(addon().backendFeatures('cuda')).toHaveProperty('generate');
    expect(() => addon().backendFeatures('tpu' as never)).toThrow(/tpu/);
  });

  it('rejects a byte count that does not match the shape, and unknown dtypes/devices', () => {
    expect(() => addon().tensorFromBytes(new Uint8Array(6), [2, 2], 'f16', 'cpu')).toThrow(/needs 8 bytes, got 6/);
    expect(() => addon().tensorFromFloat32(new Float32Array(3), [2, 2], 'f32', 'cpu')).toThrow(/needs 4 values, got 3/);
    expect(() => addon().tensorFromFloat32(new Float32Array(4), [4], 'f64' as never, 'cpu')).toThrow(/unknown dtype 'f64'/);
    if (!addon().backends().includes('cuda'))
      // Built without CUDA, or with CUDA but no usable device: either way an error that names cuda, never a
      // misleading "out of memory".
      expect(() => addon().tensorFromFloat32(new Float32Array(4), [4], 'f32', 'cuda')).toThrow(/^(?!.*out of GPU memory).*cuda/);
  });
});

describe('native model', () => {
  it('lists backends and the transformers parameter table', () => {
    expect(addon().backends()).toContain('cpu');
    const model = tinyModel();
    const names = model.parameterInfo().map((p) => p.name);
    expect(names).toContain('model.embed_tokens.weight');
    expect(names).toContain('model.layers.0.conv.conv.weight');
    expect(names).toContain('model.layers.1.self_attn.q_layernorm.weight');
    expect(names).not.toContain('lm_head.weight');
    const info = Object.fromEntries(model.parameterInfo().map((p) => [p.name, p.shape]));
    expect(info['model.layers.0.conv.in_proj.weight']).toEqual([96, 32]);
    expect(info['model.layers.0.conv.conv.weight']).toEqual([32, 1, 3]);
    expect(info['model.layers.1.self_attn.k_proj.weight']).toEqual([16, 32]);
    expect(info['model.layers.1.self_attn.out_proj.weight']).toEqual([32, 32]);
    expect(info['model.layers.3.feed_forward.w2.weight']).toEqual([32, 48]);
    expect(names.length).toBe(1 + 2 * (3 + 5) + 2 * (6 + 5) + 1);
    model.dispose();
  });

  it('initRandom follows transformers: normal(0, std) weights, ones for norms, zero padding row; seeded', () => {
    const model = tinyModel(1, 0.5, { vocabSize: 512 });
    const emb = model.getParameter('model.embed_tokens.weight').toFloat32();
    expect(Array.from(emb.subarray(0, 32)).every((x) => x === 0)).toBe(true); // padTokenId 0
    const w = model.getParameter('model.layers.0.feed_forward.w1.weight').toFloat32();
    const all = Array.from(emb.subarray(32)).concat(Array.from(w));
    const mean = all.reduce((a, b) => a + b, 0) / all.length;
    const std = Math.sqrt(all.reduce((a, b) => a + (b - mean) ** 2, 0) / all.length);
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(Math.abs(std - 0.5)).toBeLessThan(0.02);
    for (const name of ['model.embedding_norm.weight', 'model.layers.1.self_attn.k_layernorm.weight', 'model.layers.2.ffn_norm.weight'])
      expect(Array.from(model.getParameter(name).toFloat32()).every((x) => x === 1)).toBe(true);
    const again = tinyModel(1, 0.5, { vocabSize: 512 });
    expect(again.getParameter('model.layers.0.feed_forward.w1.weight').toFloat32()).toEqual(w);
    const other = tinyModel(2, 0.5, { vocabSize: 512 });
    expect(other.getParameter('model.layers.0.feed_forward.w1.weight').toFloat32()).not.toEqual(w);
    for (const m of [model, again, other]) m.dispose();
  });

  it('setParameter/getParameter round-trip and convert bf16', () => {
    const model = tinyModel();
    const values = Float32Array.from({ length: 32 * 3 }, (_, i) => i / 8);
    model.setParameter('model.layers.2.conv.conv.weight', addon().tensorFromFloat32(values, [32, 1, 3], 'bf16', 'cpu'));
    expect(model.getParameter('model.layers.2.conv.conv.weight').toFloat32()).toEqual(values);
    model.dispose();
  });

  it('bad names and shapes are JS errors that name the parameter', () => {
    const model = tinyModel();
    const t = addon().tensorFromFloat32(new Float32Array(32 * 32), [32, 32], 'f32', 'cpu');
    expect(() => model.setParameter('model.layers.0.conv.in_proj.weight', t)).toThrow(
      'setParameter(model.layers.0.conv.in_proj.weight): expected shape [96,32], got [32,32]',
    );
    expect(() => model.setParameter('model.layers.9.conv.in_proj.weight', t)).toThrow(/model.layers.9.conv.in_proj.weight.*unknown parameter/);
    expect(() => model.getGradient('lm_head.weight')).toThrow(/getGradient\(lm_head.weight\): unknown parameter/);
    expect(() => model.getOptimizerState('model.embedding_norm.weight', 'x' as never)).toThrow(/which must be 'm' or 'v'/);
    expect(() => model.setParameter('model.embedding_norm.weight', {} as never)).toThrow(/must be a NativeTensor/);
    model.dispose();
  });

  it('validates batch inputs and config fields', async () => {
    const model = tinyModel();
    const batch = leftPad([[1, 2, 3]]);
    await expect(model.forwardLogits({ ...batch, seqLen: 4 })).rejects.toThrow(/tokens has 3 entries, batchSize\*seqLen is 4/);
    await expect(model.forwardLogits({ ...batch, attentionMask: new Uint8Array(2) })).rejects.toThrow(/attentionMask has 2 entries/);
    await expect(model.forwardLogits({ ...batch, tokens: Int32Array.from([1, 64, 3]) })).rejects.toThrow(
      /token 64 at \(row 0, position 1\) is outside the vocabulary/,
    );
    const scoreMask = Uint8Array.from([1, 0, 0]);
    await expect(model.score({ ...batch, scoreMask, temperature: 1, keepActivations: false })).rejects.toThrow(/no token before it/);
    await expect(
      model.score({ ...batch, scoreMask: Uint8Array.from([0, 1, 1]), temperature: 1, keepActivations: false, allowed: { offsets: Int32Array.from([0, 1]), tokens: Int32Array.from([2]) } }),
    ).rejects.toThrow(/allowed.offsets has 2 entries, expected \(scored positions \+ 1\) = 3/);
    await expect(
      model.score({ ...batch, scoreMask: Uint8Array.from([0, 1, 0]), temperature: 1, keepActivations: false, allowed: { offsets: Int32Array.from([0, 1]), tokens: Int32Array.from([5]) } }),
    ).rejects.toThrow(/token 2 at \(row 0, position 1\).*not among its allowed tokens/);
    await expect(
      model.score({ ...batch, scoreMask: Uint8Array.from([0, 1, 0]), temperature: 1, keepActivations: false, allowed: { offsets: Int32Array.from([0, 3]), tokens: Int32Array.from([2, 5, 2]) } }),
    ).rejects.toThrow(/allowed tokens of scored position 0 contain a repeated id/);
    await expect(model.backward(new Float32Array(2))).rejects.toThrow(/backward: no activations kept/);
    await model.score({ ...batch, scoreMask: Uint8Array.from([0, 1, 1]), temperature: 1, keepActivations: true });
    await expect(model.backward(new Float32Array(3))).rejects.toThrow(/dLogprobs has 3 values, the last score\(\) scored 2/);
    await expect(model.adamwStep({ lr: 1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 0, gradScale: 1 })).rejects.toThrow(/adamwStep: step must be in \[1,/);
    model.dispose();

    const bad = { ...tinyConfig(), numKvHeads: 3 };
    expect(() => addon().createModel(JSON.stringify(bad), { backend: 'cpu' })).toThrow(/numHeads \(4\) must be a multiple of numKvHeads \(3\)/);
    const missing: Record<string, unknown> = { ...tinyConfig() };
    delete missing.headDim;
    expect(() => addon().createModel(JSON.stringify(missing), { backend: 'cpu' })).toThrow(/config.headDim must be a number/);
    expect(() => addon().createModel('{nope', { backend: 'cpu' })).toThrow(/not valid JSON/);
    expect(() => addon().createModel(JSON.stringify({ ...tinyConfig(), layerTypes: ['conv', 'mamba', 'conv', 'conv'] }), { backend: 'cpu' })).toThrow(
      /layerTypes\[1\] must be 'conv' or 'attention', got 'mamba'/,
    );
    expect(() => addon().createModel(JSON.stringify(tinyConfig()), { backend: 'tpu' as never })).toThrow(/backend must be 'cpu' or 'cuda'/);
  });

  it('refuses a second call while busy; dispose twice is harmless; use after dispose is an error', async () => {
    const model = tinyModel();
    const batch = leftPad([[1, 2, 3, 4]]);
    const running = model.forwardLogits(batch);
    await expect(model.forwardLogits(batch)).rejects.toThrow(/model is busy: forwardLogits\(\) is still running/);
    expect(() => model.getParameter('model.embedding_norm.weight')).toThrow(/model is busy/);
    expect(() => model.dispose()).toThrow(/model is busy/);
    await running;
    await model.forwardLogits(batch); // free again after the promise settles
    model.dispose();
    model.dispose();
    expect(() => model.parameterInfo()).toThrow(/used after dispose/);
    await expect(model.forwardLogits(batch)).rejects.toThrow(/used after dispose/);
  });
});
