import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lfm2Preset, parameterShapes, parseLfm2Config } from '../../src/model/config.js';
import { Lfm2Model } from '../../src/model/lfm2.js';
import { Checkpoint, bf16ToF32, f32ToBf16, toFloat32, writeCheckpoint, type TensorToWrite } from '../../src/model/safetensors.js';
import { HAVE_ADDON, NO_ADDON_REASON } from './addon-available.js';

const TINY_TOKENIZER = join(import.meta.dirname, '..', '..', 'assets', 'tiny-tokenizer');
const PARITY_DIR = join(import.meta.dirname, '..', 'fixtures', 'parity-tiny');
const tmp = mkdtempSync(join(tmpdir(), 'webgrpo-lfm2-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function param(model: Lfm2Model, name: string): Float32Array {
  const t = model.native.getParameter(name);
  try {
    return t.toFloat32();
  } finally {
    t.dispose();
  }
}

/** A copy of the parity folder's weights with one change, for the loader's error cases. */
async function variantOf(name: string, edit: (tensors: TensorToWrite[]) => TensorToWrite[]): Promise<string> {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(PARITY_DIR, 'config.json'), join(dir, 'config.json'));
  const ck = await Checkpoint.open(PARITY_DIR);
  const tensors: TensorToWrite[] = [];
  for (const [n, info] of ck.tensors) tensors.push({ name: n, dtype: info.dtype, shape: info.shape, data: await ck.read(n) });
  await ck.close();
  writeCheckpoint(dir, edit(tensors));
  return dir;
}

describe.skipIf(!HAVE_ADDON)(`Lfm2Model${NO_ADDON_REASON}`, () => {
  it('random() is reproducible from the seed and follows transformers init', () => {
    const config = lfm2Preset('tiny');
    const a = Lfm2Model.random(config, { seed: 7, backend: 'cpu' });
    const b = Lfm2Model.random(config, { seed: 7, backend: 'cpu' });
    try {
      expect(param(a, 'model.layers.0.conv.in_proj.weight')).toEqual(param(b, 'model.layers.0.conv.in_proj.weight'));
      expect(Array.from(param(a, 'model.layers.1.ffn_norm.weight')).every((x) => x === 1)).toBe(true);
      const w = param(a, 'model.layers.1.self_attn.q_proj.weight');
      const std = Math.sqrt(w.reduce((s, x) => s + x * x, 0) / w.length);
      expect(std).toBeGreaterThan(0.015);
      expect(std).toBeLessThan(0.025);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('save() writes a folder that fromPretrained() loads back bit-exactly (f32), with the tokenizer', async () => {
    const model = Lfm2Model.random(lfm2Preset('tiny'), { seed: 3, backend: 'cpu', initializerRange: 0.1 });
    const dir = join(tmp, 'saved');
    try {
      await model.save(dir, { dtype: 'f32', tokenizerDir: TINY_TOKENIZER });
      expect(parseLfm2Config(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')))).toEqual(model.config);
      expect(readFileSync(join(dir, 'tokenizer.json'))).toEqual(readFileSync(join(TINY_TOKENIZER, 'tokenizer.json')));
      const back = await Lfm2Model.fromPretrained(dir, { backend: 'cpu' });
      try {
        for (const p of parameterShapes(model.config)) expect(param(back, p.name), p.name).toEqual(param(model, p.name));
      } finally {
        back.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('saves bf16 (rounded) and sharded checkpoints that load back', async () => {
    const model = Lfm2Model.random(lfm2Preset('tiny'), { seed: 4, backend: 'cpu', initializerRange: 0.1 });
    const dir = join(tmp, 'bf16');
    try {
      await model.save(dir, { dtype: 'bf16', maxShardBytes: 100_000 });
      const ck = await Checkpoint.open(dir);
      const name = 'model.layers.2.feed_forward.w2.weight';
      expect(ck.tensors.get(name)?.dtype).toBe('BF16');
      expect(ck.tensors.get(name)?.file).toMatch(/model-0000\d-of-0000\d.safetensors$/);
      await ck.close();
      const back = await Lfm2Model.fromPretrained(dir, { backend: 'cpu' });
      try {
        expect(param(back, name)).toEqual(bf16ToF32(f32ToBf16(param(model, name))));
      } finally {
        back.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('loads the weights PyTorch saved for the parity fixture', async () => {
    const model = await Lfm2Model.fromPretrained(PARITY_DIR, { backend: 'cpu' });
    try {
      const ck = await Checkpoint.open(PARITY_DIR);
      const name = 'model.layers.0.conv.conv.weight';
      expect(param(model, name)).toEqual(toFloat32(await ck.read(name), 'F32'));
      await ck.close();
    } finally {
      model.dispose();
    }
  });

  it('refuses missing, extra, mis-shaped and mis-typed tensors, naming them', async () => {
    const missing = await variantOf('missing', (ts) => ts.filter((t) => t.name !== 'model.layers.3.ffn_norm.weight'));
    await expect(Lfm2Model.fromPretrained(missing, { backend: 'cpu' })).rejects.toThrow(
      /missing tensor "model.layers.3.ffn_norm.weight" \(expected shape \[64\]\)/,
    );
    const extra = await variantOf('extra', (ts) => [...ts, { name: 'model.layers.9.bogus', dtype: 'F32', shape: [1], data: new Uint8Array(4) }]);
    await expect(Lfm2Model.fromPretrained(extra, { backend: 'cpu' })).rejects.toThrow(/unexpected tensor "model.layers.9.bogus"/);
    const shaped = await variantOf('shaped', (ts) =>
      ts.map((t) => (t.name === 'model.embedding_norm.weight' ? { ...t, shape: [8, 8] } : t)),
    );
    await expect(Lfm2Model.fromPretrained(shaped, { backend: 'cpu' })).rejects.toThrow(
      /tensor "model.embedding_norm.weight" has shape \[8, 8\], expected \[64\]/,
    );
    const typed = await variantOf('typed', (ts) =>
      ts.map((t) => (t.name === 'model.embedding_norm.weight' ? { ...t, dtype: 'I32' } : t)),
    );
    await expect(Lfm2Model.fromPretrained(typed, { backend: 'cpu' })).rejects.toThrow(
      /tensor "model.embedding_norm.weight" has dtype I32, expected one of F32, BF16, F16/,
    );
    const tiedCopy = await variantOf('tied-copy', (ts) => [
      ...ts,
      { ...ts.find((t) => t.name === 'model.embed_tokens.weight')!, name: 'lm_head.weight' },
    ]);
    (await Lfm2Model.fromPretrained(tiedCopy, { backend: 'cpu' })).dispose();
    const badConfig = join(tmp, 'bad-config');
    mkdirSync(badConfig);
    writeFileSync(join(badConfig, 'config.json'), JSON.stringify({ model_type: 'lfm2', num_attention_heads: 6 }));
    await expect(Lfm2Model.fromPretrained(badConfig, { backend: 'cpu' })).rejects.toThrow(
      /bad-config\/config.json: num_key_value_heads must divide num_attention_heads \(got 6 and 8\)/,
    );
    await expect(Lfm2Model.fromPretrained(join(tmp, 'nothing'), { backend: 'cpu' })).rejects.toThrow(/not a model folder \(no config.json\)/);
  });

  it('refuses use after dispose', async () => {
    const model = Lfm2Model.random(lfm2Preset('tiny'), { seed: 1, backend: 'cpu' });
    model.dispose();
    await expect(model.save(join(tmp, 'x'), { dtype: 'f32' })).rejects.toThrow(/after dispose/);
  });
});
