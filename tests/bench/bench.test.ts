// The benchmark drivers (bench/*.ts) on the CPU backend with the tiny model, run as the programs they are, and
// bench/torch/compare.py on records written here. The PyTorch scripts themselves need CUDA and run only on the
// GPU machine (bench/run-gpu.sh).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HAVE_ADDON, NO_ADDON_REASON } from '../model/addon-available.js';

const root = join(import.meta.dirname, '..', '..');
const viteNode = join(root, 'node_modules', '.bin', 'vite-node');

function runBench(name: string, args: string[]): { status: number | null; records: Record<string, unknown>[]; stdout: string; stderr: string } {
  const r = spawnSync(viteNode, [join(root, 'bench', `${name}.ts`), '--', '--backend', 'cpu', '--preset', 'tiny', '--threads', '1', ...args], {
    cwd: root,
    encoding: 'utf8',
    timeout: 90_000,
  });
  const records = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { status: r.status, records, stdout: r.stdout, stderr: r.stderr };
}

describe(`engine bench drivers on the CPU backend${NO_ADDON_REASON}`, () => {
  it.skipIf(!HAVE_ADDON)('train: one record per shape, loss of a random model near ln(vocab)', () => {
    const r = runBench('train', ['--shapes', '2x48:all,3x40:8', '--warmup', '1', '--iters', '2']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.records.map((x) => [x.batch, x.seq, x.scored_per_seq, x.tokens_per_step])).toEqual([[2, 48, 47, 96], [3, 40, 8, 120]]);
    for (const x of r.records) {
      expect(x).toMatchObject({ bench: 'train', impl: 'webgrpo', backend: 'cpu', mfu: null, peak_gib: null });
      expect(x.tokens_per_s as number).toBeGreaterThan(0);
      expect((x.tokens_per_step as number) / ((x.ms_per_step as number) / 1000)).toBeCloseTo(x.tokens_per_s as number, 3);
      // transformers' init gives near-uniform predictions: mean cross-entropy ≈ ln(512) = 6.24.
      expect(Math.abs((x.loss as number) - Math.log(512))).toBeLessThan(0.3);
    }
    expect(r.stdout).toContain('| 3×40 | 8 |');
  });

  it.skipIf(!HAVE_ADDON)('train: a bad shape is refused with a message that names it', () => {
    const r = runBench('train', ['--shapes', '2x64:64']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('2x64:64');
  });

  it.skipIf(!HAVE_ADDON)('sample: every batch generates exactly the asked new tokens, decode time separated', () => {
    const r = runBench('sample', ['--batches', '1,3', '--prompt', '24', '--new', '6', '--reps', '1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.records.map((x) => x.batch)).toEqual([1, 3]);
    for (const x of r.records) {
      expect(x).toMatchObject({ bench: 'sample', impl: 'webgrpo', prompt_len: 24, new_tokens: 6, roofline_pct: null });
      expect((x.batch as number) * 6 / ((x.total_ms as number) / 1000)).toBeCloseTo(x.new_tokens_per_s as number, 3);
      expect(Number.isFinite(x.decode_ms_per_step)).toBe(true);
    }
  });

  it.skipIf(!HAVE_ADDON)('grpo: one step through the trainer update path, phases add up to the total', () => {
    const r = runBench('grpo', ['--prompts', '2', '--group', '3', '--prompt', '30', '--new', '5', '--micro', '4', '--warmup', '0', '--iters', '1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.records).toHaveLength(1);
    const x = r.records[0];
    expect(x).toMatchObject({ bench: 'grpo', impl: 'webgrpo', sequences: 6, prompt_len: 30, new_tokens: 5 });
    const phases = (x.generate_ms as number) + (x.update_ms as number) + (x.optimizer_ms as number);
    expect(phases).toBeCloseTo(x.total_ms as number, 6);
    expect(x.grad_norm as number).toBeGreaterThan(0);
  });

  it.skipIf(!HAVE_ADDON)('train --lora-ranks: one LoRA record per rank, training adapters only', () => {
    const r = runBench('train', ['--shapes', '2x48:all', '--warmup', '1', '--iters', '2', '--lora-ranks', '4,8']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.records.map((x) => [x.bench, x.mode, x.batch, x.seq])).toEqual([['lora', 'lora-r4', 2, 48], ['lora', 'lora-r8', 2, 48]]);
    for (const x of r.records) {
      expect(x.tokens_per_s as number).toBeGreaterThan(0);
      expect(Math.abs((x.loss as number) - Math.log(512))).toBeLessThan(0.3);
    }
    expect(r.stdout).toContain('| lora-r8 | 2×48 |');
  });
});

const HAVE_PYTHON = spawnSync('python3', ['--version']).status === 0;

describe(`bench/torch/compare.py${HAVE_PYTHON ? '' : ' [SKIPPED: no python3]'}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'webgrpo-compare-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.skipIf(!HAVE_PYTHON)('joins both sides by shape and batch and computes speedups and memory ratios', () => {
    const lines = (records: object[]) => records.map((r) => JSON.stringify(r)).join('\n') + '\nnot json\n';
    const shape = { batch: 16, seq: 1024, scored_per_seq: 1023, preset: 'LFM2-350M' };
    writeFileSync(join(dir, 'ours.jsonl'), lines([
      { bench: 'train', impl: 'webgrpo', ...shape, ms_per_step: 50, tokens_per_s: 300000, mfu: 0.8, peak_gib: 10 },
      { bench: 'sample', impl: 'webgrpo', batch: 64, new_tokens_per_s: 100000, decode_ms_per_step: 0.5, roofline_pct: 47.2, peak_gib: 2 },
      { bench: 'grpo', impl: 'webgrpo', generate_ms: 100, update_ms: 200, optimizer_ms: 10, total_ms: 310, tokens_per_s: 130000, peak_gib: 8 },
      { bench: 'lora', impl: 'webgrpo', mode: 'lora-r8', status: 'not-implemented', reason: 'no LoRA' },
    ]));
    writeFileSync(join(dir, 'torch.jsonl'), lines([
      { bench: 'train', impl: 'torch', mode: 'fp32-master-bf16-autocast', ...shape, status: 'ok', ms_per_step: 200, tokens_per_s: 100000, mfu: 0.27, peak_gib: 40 },
      { bench: 'train', impl: 'torch', mode: 'bf16', ...shape, status: 'oom', error: 'CUDA out of memory' },
      { bench: 'sample', impl: 'torch', batch: 64, status: 'ok', new_tokens_per_s: 4000, decode_ms_per_step: 15, roofline_pct: 1.6, peak_gib: 3 },
      { bench: 'grpo', impl: 'torch', status: 'ok', generate_ms: 1000, update_ms: 400, optimizer_ms: 20, sync_ms: 5, total_ms: 1425, tokens_per_s: 28000, peak_gib: 40 },
      { bench: 'lora', impl: 'torch', mode: 'lora-r8', ...shape, status: 'ok', ms_per_step: 250, tokens_per_s: 64000, peak_gib: 20 },
    ]));
    const r = spawnSync('python3', [join(root, 'bench', 'torch', 'compare.py'), dir], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = r.stdout;
    expect(out).toMatch(/\| 16×1024 \(all scored\) \| PyTorch fp32-master-bf16-autocast \| 200\.0 \| 100,000 \| 27\.0% \| 40\.00 \| 3\.00× \| 0\.25 \|/);
    expect(out).toMatch(/PyTorch bf16 \| oom: CUDA out of memory/);
    expect(out).toMatch(/\| 64 \| 100,000 \| 4,000 \| 25\.00× \|/);
    expect(out).toMatch(/\| PyTorch \/ webgrpo time \| 10\.00× \| 2\.00× \| 2\.00× \| n\/a \| 4\.60× \|/);
    expect(out).toMatch(/lora-r8 \| 16×1024 \(all scored\) \| webgrpo \| not-implemented: no LoRA/);
  });

  it.skipIf(!HAVE_PYTHON)('fails with a clear message when there are no records', () => {
    const empty = mkdtempSync(join(dir, 'empty-'));
    const r = spawnSync('python3', [join(root, 'bench', 'torch', 'compare.py'), empty], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('no benchmark records found');
  });
});

describe('GpuMemoryMonitor (with a stand-in nvidia-smi)', () => {
  it('reports the sampled peak above the reading taken at start, and forgets it on resetPeak', async () => {
    const { GpuMemoryMonitor } = await import('../../bench/common.js');
    const bin = mkdtempSync(join(tmpdir(), 'webgrpo-fake-smi-'));
    // One reading of 1000 MiB; in loop mode (-lms) 1000, 3000, 2000, then quiet.
    writeFileSync(join(bin, 'nvidia-smi'), [
      '#!/bin/sh',
      'case "$*" in *-lms*) echo 1000; sleep 0.05; echo 3000; sleep 0.05; echo 2000; sleep 5 ;; *) echo 1000 ;; esac',
      '',
    ].join('\n'), { mode: 0o755 });
    const savedPath = process.env.PATH;
    process.env.PATH = `${bin}:${savedPath}`;
    try {
      expect(GpuMemoryMonitor.start('cpu')).toBeNull();
      const monitor = GpuMemoryMonitor.start('cuda');
      expect(monitor).not.toBeNull();
      await new Promise((r) => setTimeout(r, 400));
      expect(await monitor!.peakGiB()).toBeCloseTo(2000 / 1024, 6);
      monitor!.resetPeak();
      expect(await monitor!.peakGiB()).toBeCloseTo(1000 / 1024, 6);
      monitor!.stop();
    } finally {
      process.env.PATH = savedPath;
      rmSync(bin, { recursive: true, force: true });
    }
  });
});
