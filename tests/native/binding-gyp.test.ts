// binding.gyp is the second build of the addon (CPU backend, node-gyp): it must keep building a working addon.
// Built in a temporary copy, so the build of record in build/ is left alone.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');
// npm ships node-gyp; Node's headers come from the local install (Debian's nodejs puts them in /usr/include/node).
const nodeGyp = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodeDir = join(dirname(process.execPath), '..');
const missing = !existsSync(nodeGyp) ? `npm's node-gyp not found at ${nodeGyp}`
  : !existsSync(join(nodeDir, 'include', 'node', 'node_api.h')) ? `no Node headers under ${nodeDir}/include/node` : '';

describe(`binding.gyp${missing ? ` [SKIPPED: ${missing}]` : ''}`, () => {
  it.skipIf(!!missing)('builds a CPU-only addon with node-gyp that loads and runs a model', () => {
    const dir = mkdtempSync(join(tmpdir(), 'webgrpo-gyp-'));
    try {
      for (const f of ['binding.gyp', 'package.json', 'native']) cpSync(join(root, f), join(dir, f), { recursive: true });
      symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
      const r = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodeDir}`, '-j', '2'], { cwd: dir, encoding: 'utf8' });
      expect(r.status, r.stderr.slice(-2000)).toBe(0);
      const addon = createRequire(import.meta.url)(join(dir, 'build', 'Release', 'webgrpo.node'));
      expect(addon.backends()).toEqual(['cpu']);
      const t = addon.tensorFromFloat32(Float32Array.from([1, 2, 3, 4]), [2, 2], 'bf16', 'cpu');
      expect(Array.from(t.toFloat32())).toEqual([1, 2, 3, 4]);
      t.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
