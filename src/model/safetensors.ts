// safetensors reading and writing in plain TypeScript (format: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}, then the raw data).
// Reads are lazy, one tensor at a time straight from the file, so a 700 MB checkpoint is never held twice.
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { DType } from '../native/addon.js';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range inside the data section (after the header). */
  begin: number;
  end: number;
  /** The file the tensor lives in. */
  file: string;
}

export interface TensorToWrite {
  name: string;
  /** safetensors' name ('F32') or the native addon's ('f32'). */
  dtype: SafetensorsDType | DType;
  shape: readonly number[];
  /** Raw little-endian bytes; a function is called only when the tensor is written, one at a time. */
  data: Uint8Array | (() => Uint8Array);
}

/** A floating tensor read whole into memory, with the native addon's dtype name (ready for tensorFromBytes). */
export interface LoadedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

const FROM_ADDON: Record<DType, SafetensorsDType> = { f32: 'F32', bf16: 'BF16', f16: 'F16' };
const TO_ADDON: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', BF16: 'bf16', F16: 'f16' };

export function toSafetensorsDType(dtype: SafetensorsDType | DType): SafetensorsDType {
  return (FROM_ADDON as Record<string, SafetensorsDType>)[dtype] ?? (dtype as SafetensorsDType);
}

/** The addon's name for a floating dtype, or undefined for dtypes the engine does not store (I32, F64, ...). */
export function toAddonDType(dtype: SafetensorsDType): DType | undefined {
  return TO_ADDON[dtype];
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isSafetensorsDType(x: unknown): x is SafetensorsDType {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, x);
}

/**
 * Validates a header against the data section size. Checks every entry's dtype, shape, offsets, that each byte
 * range has exactly the size shape and dtype call for, lies inside the data section, and overlaps no other.
 */
export function parseHeader(
  headerBytes: Uint8Array,
  dataBytes: number,
  file: string,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw new SafetensorsError(`${file}: bad header JSON: ${(err as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new SafetensorsError(`${file}: bad header: expected a JSON object`);
  }
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        throw new SafetensorsError(`${file}: __metadata__ must be an object of strings`);
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new SafetensorsError(`${file}: __metadata__.${k} must be a string (got ${JSON.stringify(v)})`);
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    const where = `${file}: tensor "${name}"`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw new SafetensorsError(`${where}: header entry must be an object with dtype, shape, data_offsets`);
    }
    const { dtype, shape, data_offsets } = raw as Record<string, unknown>;
    if (!isSafetensorsDType(dtype)) {
      throw new SafetensorsError(`${where}: unknown dtype ${JSON.stringify(dtype)} (expected one of ${Object.keys(DTYPE_BYTES).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(`${where}: shape must be a list of non-negative integers (got ${JSON.stringify(shape)})`);
    }
    if (
      !Array.isArray(data_offsets) ||
      data_offsets.length !== 2 ||
      !data_offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      data_offsets[0] > data_offsets[1]
    ) {
      throw new SafetensorsError(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end (got ${JSON.stringify(data_offsets)})`);
    }
    const [begin, end] = data_offsets as [number, number];
    const expectedBytes = numel(shape) * DTYPE_BYTES[dtype];
    if (end - begin !== expectedBytes) {
      throw new SafetensorsError(
        `${where}: data_offsets span ${end - begin} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${expectedBytes}`,
      );
    }
    if (end > dataBytes) {
      throw new SafetensorsError(
        `${where}: data ends at byte ${end} but the data section has only ${dataBytes} bytes (file truncated or offsets out of range)`,
      );
    }
    tensors.set(name, { name, dtype, shape: shape as number[], begin, end, file });
  }
  const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      throw new SafetensorsError(
        `${file}: tensors "${sorted[i - 1].name}" [${sorted[i - 1].begin}, ${sorted[i - 1].end}) and "${sorted[i].name}" [${sorted[i].begin}, ${sorted[i].end}) overlap`,
      );
    }
  }
  return { tensors, metadata };
}

function readHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8) throw new SafetensorsError(`${file}: truncated file: ${fileSize} bytes, shorter than the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(`${file}: bad header: header length ${n} is implausibly large`);
  if (Number(n) > fileSize - 8) {
    throw new SafetensorsError(`${file}: truncated file: header says ${n} header bytes but only ${fileSize - 8} follow`);
  }
  return Number(n);
}

/** A safetensors file held in memory (tests, small files). Tensor data are views into the buffer. */
export function parseSafetensors(
  buffer: Uint8Array,
  file = '(buffer)',
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string>; data(name: string): Uint8Array } {
  const n = readHeaderLength(buffer.subarray(0, 8), buffer.byteLength, file);
  const dataStart = 8 + n;
  const { tensors, metadata } = parseHeader(buffer.subarray(8, dataStart), buffer.byteLength - dataStart, file);
  return {
    tensors,
    metadata,
    data(name: string) {
      const t = tensors.get(name);
      if (!t) throw new SafetensorsError(`${file}: no tensor "${name}"`);
      return buffer.subarray(dataStart + t.begin, dataStart + t.end);
    },
  };
}

/** One safetensors file opened for lazy, per-tensor reads. */
export class SafetensorsReader {
  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    private readonly dataStart: number,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  static async open(file: string): Promise<SafetensorsReader> {
    if (!existsSync(file)) throw new SafetensorsError(`${file}: file not found`);
    const handle = await open(file, 'r');
    try {
      const size = (await handle.stat()).size;
      const prefix = Buffer.alloc(8);
      await handle.read(prefix, 0, Math.min(8, size), 0);
      const n = readHeaderLength(prefix, size, file);
      const headerBytes = Buffer.alloc(n);
      await handle.read(headerBytes, 0, n, 8);
      const { tensors, metadata } = parseHeader(headerBytes, size - 8 - n, file);
      return new SafetensorsReader(file, handle, 8 + n, tensors, metadata);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** The tensor's raw bytes in a fresh buffer of its own (offset 0, so typed-array views are aligned). */
  async read(name: string): Promise<Uint8Array> {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.file}: no tensor "${name}"`);
    const out = Buffer.allocUnsafeSlow(t.end - t.begin);
    let done = 0;
    while (done < out.byteLength) {
      const { bytesRead } = await this.handle.read(out, done, out.byteLength - done, this.dataStart + t.begin + done);
      if (bytesRead === 0) throw new SafetensorsError(`${this.file}: tensor "${name}": file ended while reading (truncated)`);
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

/** A model folder's weights: model.safetensors, or shards listed in model.safetensors.index.json. */
export class Checkpoint {
  private constructor(
    readonly dir: string,
    private readonly readers: SafetensorsReader[],
    readonly tensors: Map<string, TensorInfo>,
  ) {}

  static async open(dir: string): Promise<Checkpoint> {
    const indexPath = join(dir, INDEX_FILE);
    const singlePath = join(dir, SINGLE_FILE);
    if (existsSync(indexPath)) return Checkpoint.openSharded(dir, indexPath);
    if (existsSync(singlePath)) {
      const reader = await SafetensorsReader.open(singlePath);
      return new Checkpoint(dir, [reader], reader.tensors);
    }
    throw new SafetensorsError(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} found`);
  }

  private static async openSharded(dir: string, indexPath: string): Promise<Checkpoint> {
    let index: unknown;
    try {
      index = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (err) {
      throw new SafetensorsError(`${indexPath}: bad JSON: ${(err as Error).message}`);
    }
    const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
    if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
      throw new SafetensorsError(`${indexPath}: weight_map must be an object {tensor name: shard file}`);
    }
    const byFile = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
      if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
        throw new SafetensorsError(`${indexPath}: weight_map["${name}"] must be a shard file name in the folder (got ${JSON.stringify(shard)})`);
      }
      byFile.set(shard, [...(byFile.get(shard) ?? []), name]);
    }
    const readers: SafetensorsReader[] = [];
    const tensors = new Map<string, TensorInfo>();
    try {
      for (const [shard, names] of byFile) {
        const reader = await SafetensorsReader.open(join(dir, shard));
        readers.push(reader);
        for (const name of names) {
          const info = reader.tensors.get(name);
          if (!info) throw new SafetensorsError(`${reader.file}: tensor "${name}" is listed in ${INDEX_FILE} but missing from the shard`);
          tensors.set(name, info);
        }
        for (const name of reader.tensors.keys()) {
          if ((weightMap as Record<string, string>)[name] !== shard) {
            throw new SafetensorsError(`${reader.file}: tensor "${name}" is in the shard but ${INDEX_FILE} maps it to ${JSON.stringify((weightMap as Record<string, string>)[name] ?? null)}`);
          }
        }
      }
    } catch (err) {
      await Promise.all(readers.map((r) => r.close()));
      throw err;
    }
    return new Checkpoint(dir, readers, tensors);
  }

  async read(name: string): Promise<Uint8Array> {
    const info = this.tensors.get(name);
    if (!info) throw new SafetensorsError(`${this.dir}: checkpoint has no tensor "${name}"`);
    const reader = this.readers.find((r) => r.file === info.file)!;
    return reader.read(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.close()));
  }
}

export interface ExpectedTensor {
  name: string;
  shape: readonly number[];
}

/**
 * Checks a checkpoint's tensors against the expected list: every expected tensor present with the same shape and
 * a floating dtype, none extra (except names `allowExtra` accepts). Reports every problem at once.
 */
export function checkTensors(
  tensors: Map<string, TensorInfo>,
  expected: readonly ExpectedTensor[],
  source: string,
  opts: { dtypes?: readonly SafetensorsDType[]; allowExtra?: (name: string) => boolean } = {},
): void {
  const dtypes = opts.dtypes ?? ['F32', 'BF16', 'F16'];
  const problems: string[] = [];
  const wanted = new Set(expected.map((e) => e.name));
  for (const e of expected) {
    const t = tensors.get(e.name);
    if (!t) {
      problems.push(`missing tensor "${e.name}" (expected shape [${e.shape.join(', ')}])`);
      continue;
    }
    if (t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
      problems.push(`tensor "${e.name}" has shape [${t.shape.join(', ')}], expected [${e.shape.join(', ')}] (in ${basename(t.file)})`);
    }
    if (!dtypes.includes(t.dtype)) {
      problems.push(`tensor "${e.name}" has dtype ${t.dtype}, expected one of ${dtypes.join(', ')} (in ${basename(t.file)})`);
    }
  }
  for (const name of tensors.keys()) {
    if (!wanted.has(name) && !opts.allowExtra?.(name)) problems.push(`unexpected tensor "${name}"`);
  }
  if (problems.length) {
    const shown = problems.slice(0, 20);
    if (problems.length > shown.length) shown.push(`... and ${problems.length - shown.length} more`);
    throw new SafetensorsError(`${source}: ${problems.length} tensor problem(s):\n  ${shown.join('\n  ')}`);
  }
}

function headerFor(tensors: readonly TensorToWrite[], metadata: Record<string, string>): { header: Buffer; dataBytes: number } {
  const json: Record<string, unknown> = {};
  if (Object.keys(metadata).length) json.__metadata__ = metadata;
  let offset = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new SafetensorsError(`cannot write tensor "${t.name}" twice`);
    seen.add(t.name);
    if (t.name === '__metadata__') throw new SafetensorsError('"__metadata__" is not a valid tensor name');
    const dtype = toSafetensorsDType(t.dtype);
    if (!isSafetensorsDType(dtype)) throw new SafetensorsError(`cannot write tensor "${t.name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    const bytes = numel(t.shape) * DTYPE_BYTES[dtype];
    json[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let text = JSON.stringify(json);
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text += ' '.repeat((8 - ((Buffer.byteLength(text) + 8) % 8)) % 8);
  const body = Buffer.from(text, 'utf8');
  const header = Buffer.alloc(8 + body.byteLength);
  header.writeBigUInt64LE(BigInt(body.byteLength), 0);
  body.copy(header, 8);
  return { header, dataBytes: offset };
}

/**
 * Writes one safetensors file, to a temporary name first so a crash never leaves a half-written file behind.
 * Synchronous: tensors are fetched (when given as functions) and written one at a time.
 */
export function writeSafetensors(
  file: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = { format: 'pt' },
): void {
  const { header } = headerFor(tensors, metadata);
  const tmp = `${file}.partial`;
  const fd = openSync(tmp, 'w');
  try {
    writeAll(fd, header);
    for (const t of tensors) {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      const want = numel(t.shape) * DTYPE_BYTES[toSafetensorsDType(t.dtype)];
      if (data.byteLength !== want) {
        throw new SafetensorsError(`${file}: tensor "${t.name}": got ${data.byteLength} bytes, shape [${t.shape.join(', ')}] of ${t.dtype} needs ${want}`);
      }
      writeAll(fd, data);
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.byteLength) done += writeSync(fd, data, done, data.byteLength - done);
}

/**
 * Writes model.safetensors, or, when the tensors exceed maxShardBytes, model-0000k-of-0000n.safetensors shards and
 * model.safetensors.index.json (the layout transformers' save_pretrained writes). Returns the file names.
 */
export function writeCheckpoint(
  dir: string,
  tensors: readonly TensorToWrite[],
  opts: { maxShardBytes?: number; metadata?: Record<string, string> } = {},
): string[] {
  const maxShardBytes = opts.maxShardBytes ?? 5 * 1024 ** 3;
  const metadata = opts.metadata ?? { format: 'pt' };
  mkdirSync(dir, { recursive: true });
  const shards: TensorToWrite[][] = [[]];
  let current = 0;
  let total = 0;
  for (const t of tensors) {
    const bytes = numel(t.shape) * DTYPE_BYTES[toSafetensorsDType(t.dtype)];
    if (current > 0 && current + bytes > maxShardBytes) {
      shards.push([]);
      current = 0;
    }
    shards[shards.length - 1].push(t);
    current += bytes;
    total += bytes;
  }
  if (shards.length === 1) {
    writeSafetensors(join(dir, SINGLE_FILE), tensors, metadata);
    return [SINGLE_FILE];
  }
  const pad = (k: number) => String(k).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  for (const [i, shard] of shards.entries()) {
    writeSafetensors(join(dir, names[i]), shard, metadata);
    for (const t of shard) weightMap[t.name] = names[i];
  }
  writeFileSync(join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
  return [...names, INDEX_FILE];
}

/**
 * Reads a whole (small) safetensors file of floating tensors, e.g. optimizer state. Each tensor's bytes are a
 * view into the one file buffer. Large model folders should use Checkpoint, which reads tensor by tensor.
 */
export function readSafetensors(file: string): Map<string, LoadedTensor> {
  if (!existsSync(file)) throw new SafetensorsError(`${file}: file not found`);
  const parsed = parseSafetensors(readFileSync(file), file);
  const out = new Map<string, LoadedTensor>();
  for (const t of parsed.tensors.values()) {
    const dtype = toAddonDType(t.dtype);
    if (!dtype) throw new SafetensorsError(`${file}: tensor "${t.name}" has dtype ${t.dtype}; readSafetensors reads F32, BF16 and F16 only`);
    out.set(t.name, { name: t.name, dtype, shape: t.shape, data: parsed.data(t.name) });
  }
  return out;
}

// ---- dtype conversions (for I/O; the native engine converts on upload too) ----

function aligned(bytes: Uint8Array, elementBytes: number): Uint8Array {
  return bytes.byteOffset % elementBytes === 0 ? bytes : new Uint8Array(bytes);
}

export function bf16ToF32(bytes: Uint8Array): Float32Array {
  const src = aligned(bytes, 2);
  const u16 = new Uint16Array(src.buffer, src.byteOffset, src.byteLength / 2);
  const out = new Uint32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = u16[i] << 16;
  return new Float32Array(out.buffer);
}

export function f16ToF32(bytes: Uint8Array): Float32Array {
  const src = aligned(bytes, 2);
  const u16 = new Uint16Array(src.buffer, src.byteOffset, src.byteLength / 2);
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) {
    const h = u16[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** Round to nearest even, as torch does; NaN stays NaN. */
export function f32ToBf16(values: Float32Array): Uint8Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u32.length; i++) {
    const x = u32[i];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(out.buffer);
}

export function f32ToF16(values: Float32Array): Uint8Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u32.length; i++) {
    const x = u32[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
    } else if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      const half = 1 << (shift - 1);
      let m = mant >>> shift;
      const rest = mant & ((1 << shift) - 1);
      if (rest > half || (rest === half && m & 1)) m++;
      out[i] = sign | m;
    } else {
      let h = sign | (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++;
      out[i] = h;
    }
  }
  return new Uint8Array(out.buffer);
}

/** Any floating tensor's bytes as fp32 (copies; F32 input is copied only when misaligned). */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType): Float32Array {
  switch (dtype) {
    case 'F32': {
      const src = aligned(bytes, 4);
      return new Float32Array(src.buffer, src.byteOffset, src.byteLength / 4);
    }
    case 'BF16':
      return bf16ToF32(bytes);
    case 'F16':
      return f16ToF32(bytes);
    case 'F64': {
      const src = aligned(bytes, 8);
      return Float32Array.from(new Float64Array(src.buffer, src.byteOffset, src.byteLength / 8));
    }
    default:
      throw new SafetensorsError(`cannot convert ${dtype} to float32`);
  }
}


