/**
 * Loopback-only static file server for task pages: binds 127.0.0.1 on a random port, serves GET/HEAD
 * of files under its mounts only (no directory listings, no paths escaping a mount, symlinks included).
 */
import { createServer, type Server } from 'node:http';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
};

export interface StaticServer {
  /** e.g. http://127.0.0.1:41234 */
  readonly origin: string;
  close(): Promise<void>;
}

/** mounts: URL prefix (like "/builtin/") → folder. */
export async function startStaticServer(mounts: Record<string, string>): Promise<StaticServer> {
  const resolved: Array<{ prefix: string; root: string }> = [];
  for (const [prefix, dir] of Object.entries(mounts)) {
    if (!prefix.startsWith('/') || !prefix.endsWith('/')) throw new Error(`mount prefix must start and end with '/': ${prefix}`);
    resolved.push({ prefix, root: await fs.realpath(dir) });
  }

  const server: Server = createServer((req, res) => {
    const fail = (code: number, text: string): void => {
      res.writeHead(code, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(text);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, 'method not allowed');
    let pathname: string;
    try {
      pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://127.0.0.1').pathname);
    } catch {
      return fail(400, 'bad path');
    }
    if (pathname.includes('\0')) return fail(400, 'bad path');
    const mount = resolved.find((m) => pathname.startsWith(m.prefix));
    if (!mount) return fail(404, 'not found');
    const candidate = path.resolve(mount.root, '.' + path.posix.normalize('/' + pathname.slice(mount.prefix.length)));
    void serveFile(mount.root, candidate, req.method === 'HEAD').then(
      (file) => {
        if (!file) return fail(404, 'not found');
        res.writeHead(200, {
          'content-type': CONTENT_TYPES[path.extname(file.path).toLowerCase()] ?? 'application/octet-stream',
          'content-length': String(file.size),
          'cache-control': 'no-cache',
        });
        if (req.method === 'HEAD') return res.end();
        createReadStream(file.path).on('error', () => res.destroy()).pipe(res);
      },
      () => fail(500, 'read error'),
    );
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  server.unref(); // never keeps the process alive on its own
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('static server did not bind a TCP port');
  return {
    origin: `http://127.0.0.1:${address.port}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** The real path of `candidate` if it is a file inside `root` (after resolving symlinks), else null. */
async function serveFile(root: string, candidate: string, _head: boolean): Promise<{ path: string; size: number } | null> {
  if (!isInside(root, candidate)) return null;
  let real: string;
  try {
    real = await fs.realpath(candidate);
  } catch {
    return null;
  }
  if (!isInside(root, real)) return null;
  const stat = await fs.stat(real);
  return stat.isFile() ? { path: real, size: stat.size } : null;
}

function isInside(root: string, file: string): boolean {
  const rel = path.relative(root, file);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}
