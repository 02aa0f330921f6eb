import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrowserEnv } from '../../src/env/index.js';
import { startStaticServer } from '../../src/env/server.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fake-miniwob', import.meta.url));

function rawGet(origin: string, rawPath: string): Promise<number> {
  const url = new URL(origin);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path: rawPath, method: 'GET' }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('safety', () => {
  let dir: string;
  let sentinel: Server;
  let sentinelPort = 0;
  const sentinelHits: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'webgrpo-safety-'));
    sentinel = createServer((req, res) => {
      sentinelHits.push(req.url ?? '');
      res.end('leaked');
    });
    await new Promise<void>((r) => sentinel.listen(0, '127.0.0.1', () => r()));
    sentinelPort = (sentinel.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => sentinel.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('the static server stays inside its folder', async () => {
    const root = path.join(dir, 'root');
    cpSync(path.join(FIXTURE, 'html'), root, { recursive: true });
    writeFileSync(path.join(dir, 'secret.txt'), 'secret');
    symlinkSync(path.join(dir, 'secret.txt'), path.join(root, 'miniwob', 'link.txt'));
    const server = await startStaticServer({ '/s/': root });
    try {
      expect(server.origin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(await rawGet(server.origin, '/s/core/core.js')).toBe(200);
      expect(await rawGet(server.origin, '/s/../secret.txt')).toBe(404);
      expect(await rawGet(server.origin, '/s/%2e%2e/secret.txt')).toBe(404);
      expect(await rawGet(server.origin, '/s/miniwob/..%2f..%2fsecret.txt')).toBe(404);
      expect(await rawGet(server.origin, '/s/miniwob/link.txt')).toBe(404); // symlink out of the root
      expect(await rawGet(server.origin, '/s/miniwob/')).toBe(404); // no listings
      expect(await rawGet(server.origin, '/secret.txt')).toBe(404);
      expect(await rawGet(server.origin, '/s/core/core.js%00')).toBe(400);
    } finally {
      await server.close();
    }
  });

  it('pages cannot reach anything but the task server', async () => {
    const suite = path.join(dir, 'suite');
    cpSync(FIXTURE, suite, { recursive: true });
    const target = `http://127.0.0.1:${sentinelPort}`;
    writeFileSync(path.join(suite, 'html', 'miniwob', 'leak.html'), `<!DOCTYPE html>
<html><head><title>Leak</title><script src="../core/core.js"></script>
<script>
function genProblem() {
  document.getElementById('query').textContent = 'Try to leak.';
  var out = document.getElementById('area');
  function report(name, ok) { var d = document.createElement('div'); d.textContent = name + ':' + (ok ? 'reached' : 'blocked'); out.appendChild(d); }
  fetch('${target}/fetch').then(function () { report('fetch', true); }, function () { report('fetch', false); });
  fetch('http://example.com/').then(function () { report('external', true); }, function () { report('external', false); });
  fetch('file:///etc/hostname').then(function () { report('file', true); }, function () { report('file', false); });
  var img = new Image(); img.onload = function () { report('img', true); }; img.onerror = function () { report('img', false); }; img.src = '${target}/img';
  try { var ws = new WebSocket('ws://127.0.0.1:${sentinelPort}/ws'); ws.onopen = function () { report('ws', true); }; ws.onclose = function () { report('ws', false); }; } catch (e) { report('ws', false); }
  var frame = document.createElement('iframe'); frame.src = '${target}/frame'; out.appendChild(frame);
  navigator.sendBeacon('${target}/beacon', 'x');
  window.open('${target}/popup');
  var a = document.createElement('a'); a.href = '${target}/blank'; a.target = '_blank'; out.appendChild(a); a.click();
}
window.onload = function () { core.startEpisode(); };
</script></head><body><div id="wrap"><div id="query"></div><div id="area"></div></div></body></html>`);
    const env = await BrowserEnv.launch({ miniwobDir: suite });
    try {
      await env.reset('miniwob.leak', 1);
      let obs = await env.step('noop(wait_ms=300)');
      for (let i = 0; i < 10 && (obs.html.match(/:(reached|blocked)/g) ?? []).length < 5; i++) obs = await env.step('noop(wait_ms=200)');
      for (const name of ['fetch', 'external', 'file', 'img', 'ws']) expect(obs.html).toContain(`${name}:blocked`);
      expect(obs.html).not.toContain(':reached');
      expect(sentinelHits).toEqual([]);
    } finally {
      await env.close();
    }
  });
});
