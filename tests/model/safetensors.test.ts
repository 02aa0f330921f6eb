import { mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lfm2Preset, parameterShapes } from '../../src/model/config.js';
import {
  Checkpoint,
  INDEX_FILE,
  SafetensorsReader,
  bf16ToF32,
  checkTensors,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  parseSafetensors,
  readSafetensors,
  toFloat32,
  writeCheckpoint,
  writeSafetensors,
  type TensorToWrite,
} from '../../src/model/safetensors.js';

const tmp = mkdtempSync(join(tmpdir(), 'webgrpo-st-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const f32 = (...xs: number[]) => new Uint8Array(Float32Array.from(xs).buffer);

function sampleTensors(): TensorToWrite[] {
  return [
    { name: 'a', dtype: 'F32', shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) },
    { name: 'b.weight', dtype: 'bf16', shape: [4], data: f32ToBf16(Float32Array.of(1.5, -2, 0.25, 1e10)) },
    { name: 'c', dtype: 'F16', shape: [1, 2], data: () => f32ToF16(Float32Array.of(0.5, -65504)) },
    { name: 'empty', dtype: 'F32', shape: [0, 3], data: new Uint8Array(0) },
  ];
}

/** A safetensors file with a hand-written header, for malformed cases. */
function rawFile(name: string, header: unknown, dataBytes: number, headerText?: string): string {
  const text = headerText ?? JSON.stringify(header);
  const body = Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(8 + body.length + dataBytes);
  buf.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(buf, 8);
  const path = join(tmp, name);
  writeFileSync(path, buf);
  return path;
}

describe('safetensors round trip', () => {
  it('writes a single file that reads back, lazily and whole, with metadata and 8-byte aligned data', async () => {
    const path = join(tmp, 'one.safetensors');
    writeSafetensors(path, sampleTensors(), { format: 'pt', note: 'x' });
    const bytes = readFileSync(path);
    expect((8 + Number(bytes.readBigUInt64LE(0))) % 8).toBe(0);
    const reader = await SafetensorsReader.open(path);
    try {
      expect(reader.metadata).toEqual({ format: 'pt', note: 'x' });
      expect([...reader.tensors.keys()]).toEqual(['a', 'b.weight', 'c', 'empty']);
      expect(reader.tensors.get('b.weight')).toMatchObject({ dtype: 'BF16', shape: [4] });
      expect(Array.from(toFloat32(await reader.read('a'), 'F32'))).toEqual([1, 2, 3, 4, 5, 6]);
      expect(Array.from(toFloat32(await reader.read('b.weight'), 'BF16'))).toEqual([1.5, -2, 0.25, 9999220736]);
      expect(Array.from(toFloat32(await reader.read('c'), 'F16'))).toEqual([0.5, -65504]);
      expect((await reader.read('empty')).byteLength).toBe(0);
      await expect(reader.read('nope')).rejects.toThrow(/one.safetensors: no tensor "nope"/);
    } finally {
      await reader.close();
    }
    const whole = readSafetensors(path);
    expect(whole.get('b.weight')).toMatchObject({ dtype: 'bf16', shape: [4] });
    expect(parseSafetensors(bytes).data('a').byteLength).toBe(24);
  });

  it('writes shards with an index above maxShardBytes, and Checkpoint reads both layouts', async () => {
    const sharded = join(tmp, 'sharded');
    const files = writeCheckpoint(sharded, sampleTensors(), { maxShardBytes: 20 });
    expect(files).toContain(INDEX_FILE);
    expect(readdirSync(sharded).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);
    const index = JSON.parse(readFileSync(join(sharded, INDEX_FILE), 'utf8'));
    expect(index.metadata.total_size).toBe(24 + 8 + 4);
    const ck = await Checkpoint.open(sharded);
    try {
      expect([...ck.tensors.keys()].sort()).toEqual(['a', 'b.weight', 'c', 'empty']);
      expect(Array.from(toFloat32(await ck.read('c'), 'F16'))).toEqual([0.5, -65504]);
    } finally {
      await ck.close();
    }
    const single = join(tmp, 'single');
    expect(writeCheckpoint(single, sampleTensors())).toEqual(['model.safetensors']);
    const ck2 = await Checkpoint.open(single);
    expect(Array.from(toFloat32(await ck2.read('a'), 'F32'))).toEqual([1, 2, 3, 4, 5, 6]);
    await ck2.close();
  });

  it('reads the fp32 weights PyTorch wrote for the parity fixture', async () => {
    const dir = join(import.meta.dirname, '..', 'fixtures', 'parity-tiny');
    const ck = await Checkpoint.open(dir);
    try {
      checkTensors(ck.tensors, parameterShapes(lfm2Preset('tiny')), dir);
      const norm = toFloat32(await ck.read('model.embedding_norm.weight'), 'F32');
      expect(norm.length).toBe(64);
      expect(Math.abs(norm[0] - 1)).toBeLessThan(1); // norms were drawn around 1
    } finally {
      await ck.close();
    }
  });
});

describe('dtype conversions', () => {
  it('bf16 rounds to nearest even and keeps NaN/Inf', () => {
    const x = Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -0, Infinity, NaN, 3.1415927);
    const back = bf16ToF32(f32ToBf16(x));
    expect(Array.from(back.subarray(0, 5))).toEqual([1, 1, 1 + 2 ** -6, -0, Infinity]);
    expect(Number.isNaN(back[5])).toBe(true);
    expect(back[6]).toBe(3.140625);
  });

  it('f16 covers normals, subnormals, overflow and rounding', () => {
    const x = Float32Array.of(1, -2.5, 2 ** -24, 2 ** -25 * 1.5, 65504, 70000, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 6.1e-5);
    const back = f16ToF32(f32ToF16(x));
    expect(Array.from(back.subarray(0, 8))).toEqual([1, -2.5, 2 ** -24, 2 ** -24, 65504, Infinity, 1, 1 + 2 ** -9]);
    expect(Math.abs(back[8] - 6.1e-5) / 6.1e-5).toBeLessThan(1e-3);
  });
});

describe('malformed safetensors files get errors naming the file and tensor', () => {
  const good = { t: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it('truncated: shorter than the length prefix, header cut, data cut', async () => {
    const tiny = join(tmp, 'tiny.safetensors');
    writeFileSync(tiny, Buffer.alloc(5));
    await expect(SafetensorsReader.open(tiny)).rejects.toThrow(/tiny.safetensors: truncated file: 5 bytes/);
    const cutHeader = rawFile('cut-header.safetensors', good, 8);
    truncateSync(cutHeader, 20);
    await expect(SafetensorsReader.open(cutHeader)).rejects.toThrow(/cut-header.safetensors: truncated file: header says \d+ header bytes/);
    const path = join(tmp, 'cut-data.safetensors');
    writeSafetensors(path, sampleTensors());
    truncateSync(path, readFileSync(path).length - 3);
    await expect(SafetensorsReader.open(path)).rejects.toThrow(/cut-data.safetensors: tensor "c": data ends at byte \d+ but the data section has only \d+ bytes/);
  });

  it('bad header JSON and bad entries', async () => {
    await expect(SafetensorsReader.open(rawFile('json.safetensors', null, 0, '{"t": {'))).rejects.toThrow(/json.safetensors: bad header JSON/);
    await expect(SafetensorsReader.open(rawFile('arr.safetensors', [1], 0))).rejects.toThrow(/bad header: expected a JSON object/);
    await expect(
      SafetensorsReader.open(rawFile('dtype.safetensors', { t: { dtype: 'F8', shape: [2], data_offsets: [0, 2] } }, 2)),
    ).rejects.toThrow(/dtype.safetensors: tensor "t": unknown dtype "F8"/);
    await expect(
      SafetensorsReader.open(rawFile('shape.safetensors', { t: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4)),
    ).rejects.toThrow(/tensor "t": shape must be a list of non-negative integers \(got \[-1\]\)/);
    await expect(
      SafetensorsReader.open(rawFile('offs.safetensors', { t: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, 8)),
    ).rejects.toThrow(/tensor "t": data_offsets must be \[begin, end\]/);
    await expect(
      SafetensorsReader.open(rawFile('meta.safetensors', { __metadata__: { a: 1 }, ...good }, 8)),
    ).rejects.toThrow(/__metadata__.a must be a string/);
    const huge = join(tmp, 'huge.safetensors');
    const buf = Buffer.alloc(16);
    buf.writeBigUInt64LE(2n ** 60n, 0);
    writeFileSync(huge, buf);
    await expect(SafetensorsReader.open(huge)).rejects.toThrow(/huge.safetensors: bad header: header length \d+ is implausibly large/);
  });

  it('mis-sized, out-of-range and overlapping offsets', async () => {
    await expect(
      SafetensorsReader.open(rawFile('size.safetensors', { t: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)),
    ).rejects.toThrow(/size.safetensors: tensor "t": data_offsets span 8 bytes but shape \[3\] of F32 needs 12/);
    await expect(
      SafetensorsReader.open(rawFile('range.safetensors', { t: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, 8)),
    ).rejects.toThrow(/range.safetensors: tensor "t": data ends at byte 16 but the data section has only 8 bytes/);
    const overlap = {
      x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      y: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    await expect(SafetensorsReader.open(rawFile('overlap.safetensors', overlap, 12))).rejects.toThrow(
      /overlap.safetensors: tensors "x" \[0, 8\) and "y" \[4, 12\) overlap/,
    );
  });

  it('sharded index problems', async () => {
    const dir = join(tmp, 'bad-index');
    writeCheckpoint(dir, sampleTensors(), { maxShardBytes: 20 });
    const index = JSON.parse(readFileSync(join(dir, INDEX_FILE), 'utf8'));
    index.weight_map.ghost = index.weight_map.a;
    writeFileSync(join(dir, INDEX_FILE), JSON.stringify(index));
    await expect(Checkpoint.open(dir)).rejects.toThrow(/tensor "ghost" is listed in model.safetensors.index.json but missing from the shard/);
    delete index.weight_map.ghost;
    delete index.weight_map.c;
    writeFileSync(join(dir, INDEX_FILE), JSON.stringify(index));
    await expect(Checkpoint.open(dir)).rejects.toThrow(/tensor "c" is in the shard but model.safetensors.index.json maps it to null/);
    writeFileSync(join(dir, INDEX_FILE), '{"weight_map": ');
    await expect(Checkpoint.open(dir)).rejects.toThrow(/model.safetensors.index.json: bad JSON/);
    await expect(Checkpoint.open(join(tmp, 'nowhere'))).rejects.toThrow(/no model.safetensors or model.safetensors.index.json found/);
  });

  it('missing, extra, mis-shaped and mis-typed tensors are all listed', () => {
    const path = join(tmp, 'check.safetensors');
    writeSafetensors(path, [
      { name: 'w', dtype: 'F32', shape: [2, 3], data: new Uint8Array(24) },
      { name: 'ids', dtype: 'I32', shape: [2], data: new Uint8Array(8) },
      { name: 'stray', dtype: 'F32', shape: [1], data: new Uint8Array(4) },
    ]);
    const { tensors } = parseSafetensors(readFileSync(path), path);
    const expected = [
      { name: 'w', shape: [3, 2] },
      { name: 'ids', shape: [2] },
      { name: 'gone', shape: [4] },
    ];
    let message = '';
    try {
      checkTensors(tensors, expected, 'model-dir');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^model-dir: 4 tensor problem\(s\)/);
    expect(message).toContain('tensor "w" has shape [2, 3], expected [3, 2] (in check.safetensors)');
    expect(message).toContain('tensor "ids" has dtype I32, expected one of F32, BF16, F16');
    expect(message).toContain('missing tensor "gone" (expected shape [4])');
    expect(message).toContain('unexpected tensor "stray"');
    expect(() => readSafetensors(path)).toThrow(/check.safetensors: tensor "ids" has dtype I32; readSafetensors reads F32, BF16 and F16 only/);
  });

  it('refuses to write data of the wrong size, leaving no file behind', () => {
    const path = join(tmp, 'wrong.safetensors');
    expect(() => writeSafetensors(path, [{ name: 'w', dtype: 'F32', shape: [3], data: new Uint8Array(8) }])).toThrow(
      /wrong.safetensors: tensor "w": got 8 bytes, shape \[3\] of F32 needs 12/,
    );
    expect(readdirSync(tmp)).not.toContain('wrong.safetensors');
  });
});
