// Shared helpers of the engine benchmarks (bench/train.ts, sample.ts, grpo.ts): option parsing, model
// setup, device synchronisation, GPU memory sampling, JSON-line records and markdown tables. Every record is one
// JSON line with snake_case keys that bench/torch/*.py write too, so bench/torch/compare.py can join both sides.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Command, InvalidArgumentError } from 'commander';
import { loadAddon, type Backend, type NativeModel } from '../src/native/addon.js';
import { lfm2Preset, parameterCount, PRESET_NAMES, type Lfm2Config } from '../src/model/config.js';
import { Lfm2Model } from '../src/model/lfm2.js';
import { Rng } from '../src/training/rng.js';

/** Dense bf16 matrix rate of one H100 as measured on the GPU machine (REFERENCE.md §6). */
export const DEFAULT_PEAK_FLOPS = 800e12;
/** Device memory copy bandwidth of one H100 as measured on the GPU machine (REFERENCE.md §6). */
export const DEFAULT_BANDWIDTH = 3.0e12;
/** Token ids below this are special tokens in LFM2's and the tiny tokenizer: random prompts avoid them. */
export const FIRST_ORDINARY_TOKEN = 16;

export interface CommonOptions {
  backend: Backend;
  preset: string;
  seed: number;
  threads: number;
  peakFlops: number;
  bandwidth: number;
}

export function positiveInt(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer (got "${value}")`);
    return n;
  };
}

export function nonNegativeInt(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer (got "${value}")`);
    return n;
  };
}

export function positiveNumber(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number (got "${value}")`);
    return n;
  };
}

/** A comma-separated list of positive integers, e.g. "1,8,64". */
export function intList(name: string): (value: string) => number[] {
  const one = positiveInt(name);
  return (value: string) => value.split(',').map((v) => one(v.trim()));
}

/** The options every engine benchmark takes. */
export function benchProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .option('--backend <backend>', 'engine backend: cuda or cpu', (v: string) => {
      if (v !== 'cuda' && v !== 'cpu') throw new InvalidArgumentError(`backend must be "cuda" or "cpu" (got "${v}")`);
      return v as Backend;
    }, 'cuda' as Backend)
    .option('--preset <name>', `model config (${PRESET_NAMES.join(', ')})`, (v: string) => {
      if (!(PRESET_NAMES as string[]).includes(v)) {
        throw new InvalidArgumentError(`preset must be one of ${PRESET_NAMES.join(', ')} (got "${v}")`);
      }
      return v;
    }, 'LFM2-350M')
    .option('--seed <n>', 'seed of the random weights and inputs', nonNegativeInt('seed'), 1234)
    .option('--threads <n>', 'CPU backend threads (0 = all cores)', nonNegativeInt('threads'), 0)
    .option('--peak-flops <flops>', 'matrix rate that MFU is relative to (FLOP/s)', positiveNumber('peak-flops'),
      DEFAULT_PEAK_FLOPS)
    .option('--bandwidth <bytes>', 'memory bandwidth of the decode roofline (B/s)', positiveNumber('bandwidth'),
      DEFAULT_BANDWIDTH);
}

/** Fails with a clear message when this build of the addon lacks the backend (e.g. cuda without a GPU). */
export function requireBackend(backend: Backend): void {
  const available = loadAddon().backends();
  if (!available.includes(backend)) {
    throw new Error(`backend "${backend}" is not available in this build of the native addon (it has: ` +
      `${available.join(', ')}); build with CUDA on a GPU machine or pass --backend cpu`);
  }
}

export interface BenchModel {
  config: Lfm2Config;
  model: Lfm2Model;
  native: NativeModel;
  /** Parameters counted once (tied lm_head not counted twice), as torch's sum(p.numel()). */
  parameters: number;
}

export function createRandomModel(opts: CommonOptions): BenchModel {
  requireBackend(opts.backend);
  const config = lfm2Preset(opts.preset);
  const model = Lfm2Model.random(config, { seed: opts.seed, backend: opts.backend, threads: opts.threads });
  return { config, model, native: model.native, parameters: parameterCount(config) };
}

/** Uniform random ordinary token ids. */
export function randomTokens(rng: Rng, count: number, vocabSize: number): Int32Array {
  if (vocabSize <= FIRST_ORDINARY_TOKEN) throw new Error(`vocabulary of ${vocabSize} tokens is too small for random prompts`);
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) out[i] = FIRST_ORDINARY_TOKEN + rng.below(vocabSize - FIRST_ORDINARY_TOKEN);
  return out;
}

/**
 * Waits until the engine has finished all queued device work. The addon has no explicit synchronise, so this
 * asks for the gradient norm: a small reduction whose host result needs every earlier kernel to have run.
 */
export async function syncDevice(model: NativeModel): Promise<void> {
  await model.gradNorm();
}

export function nowMs(): number {
  return performance.now();
}

export function median(xs: readonly number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/**
 * Peak GPU memory while a measurement runs, from `nvidia-smi` sampling the device's used memory every 20 ms,
 * minus the used memory before the model existed. The addon has no memory query yet, so this is the only honest
 * number available: it includes the CUDA context and any library workspaces (torch's max_memory_allocated does
 * not), and peaks shorter than the sampling period can be missed. Null when nvidia-smi is unavailable.
 */
export class GpuMemoryMonitor {
  private proc?: ChildProcess;
  private baselineMiB = 0;
  private maxMiB = 0;
  private lastMiB = 0;
  private buffered = '';
  readonly available: boolean;

  private constructor(private readonly device: string) {
    const first = GpuMemoryMonitor.query(device);
    this.available = first !== null;
    this.baselineMiB = first ?? 0;
    this.maxMiB = this.lastMiB = this.baselineMiB;
  }

  /** A monitor for the first visible GPU, started now; its baseline is the memory in use at this moment. */
  static start(backend: Backend): GpuMemoryMonitor | null {
    if (backend !== 'cuda') return null;
    const visible = (process.env.CUDA_VISIBLE_DEVICES ?? '').split(',')[0]?.trim();
    const monitor = new GpuMemoryMonitor(visible || '0');
    if (!monitor.available) {
      process.stderr.write('bench: nvidia-smi gave no memory reading; peak memory will be reported as n/a\n');
      return null;
    }
    monitor.spawnSampler();
    return monitor;
  }

  private static query(device: string): number | null {
    const r = spawnSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', device], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    if (r.status !== 0 || !r.stdout) return null;
    const v = Number(r.stdout.trim().split('\n')[0]);
    return Number.isFinite(v) ? v : null;
  }

  private spawnSampler(): void {
    const proc = spawn('nvidia-smi',
      ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', this.device, '-lms', '20'],
      { stdio: ['ignore', 'pipe', 'ignore'] });
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      this.buffered += chunk;
      const lines = this.buffered.split('\n');
      this.buffered = lines.pop() ?? '';
      for (const line of lines) {
        const v = Number(line.trim());
        if (!line.trim() || !Number.isFinite(v)) continue;
        this.lastMiB = v;
        if (v > this.maxMiB) this.maxMiB = v;
      }
    });
    proc.on('error', () => undefined);
    // The sampler must never keep the benchmark alive, nor outlive it (e.g. when `timeout` ends the benchmark).
    proc.unref();
    (proc.stdout as unknown as { unref?: () => void }).unref?.();
    this.proc = proc;
    liveSamplers.add(proc);
    proc.on('exit', () => liveSamplers.delete(proc));
    installSamplerCleanup();
  }

  /** Forget the peak so far (the next peak starts from the current reading). */
  resetPeak(): void {
    this.maxMiB = this.lastMiB;
  }

  /** Peak since start/resetPeak, above the baseline, in GiB; waits for one more sample first. */
  async peakGiB(): Promise<number> {
    await new Promise((r) => setTimeout(r, 60));
    const now = GpuMemoryMonitor.query(this.device);
    if (now !== null && now > this.maxMiB) this.maxMiB = now;
    return (this.maxMiB - this.baselineMiB) / 1024;
  }

  stop(): void {
    if (this.proc) {
      this.proc.kill();
      liveSamplers.delete(this.proc);
    }
    this.proc = undefined;
  }
}

const liveSamplers = new Set<ChildProcess>();
let cleanupInstalled = false;

function installSamplerCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  const killAll = () => {
    for (const p of liveSamplers) p.kill();
    liveSamplers.clear();
  };
  process.on('exit', killAll);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      killAll();
      process.exit(signal === 'SIGTERM' ? 143 : 130);
    });
  }
}

export const PEAK_KIND_NVIDIA_SMI = 'nvidia-smi device memory used minus the reading before the model was created';

/** One measurement: printed at once as a JSON line (so a time-capped run keeps what it measured). */
export function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

/** Formats a number for a table: fixed digits, thousands separators, "n/a" for null/NaN. */
export function fmt(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return 'n/a';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Describes where the numbers came from, printed once at the top of every benchmark's output. */
export function deviceDescription(backend: Backend): string {
  if (backend === 'cpu') return 'cpu';
  const r = spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 && r.stdout ? r.stdout.trim().split('\n')[0] : 'cuda (nvidia-smi unavailable)';
}

/** Runs the benchmark's main, mapping errors to a one-line message and exit status 1. */
export function runMain(main: () => Promise<number | void>): void {
  main().then(
    (code) => {
      process.exitCode = code ?? 0;
    },
    (err: unknown) => {
      const e = err as Error;
      process.stderr.write(`bench: ${e.message}\n`);
      if (process.env.WEBGRPO_DEBUG) process.stderr.write(`${e.stack}\n`);
      process.exitCode = 1;
    },
  );
}
