/**
 * Where tasks come from. Built-in tasks (our own, tasks/miniwob/NAME.html) are named plainly,
 * e.g. `click-test`; tasks of the real MiniWoB++ suite are named like BrowserGym's ids,
 * `miniwob.NAME` (a `browsergym/` prefix is accepted too), and need --miniwob-dir or MINIWOB_URL.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PACKAGE_ROOT } from '../paths.js';
import { startStaticServer, type StaticServer } from './server.js';
import { UnknownTaskError } from './types.js';

/** The built-in task pages ship in the package's tasks/ folder (found from src/ and from dist/src/ alike). */
export const BUILTIN_TASKS_DIR = path.join(PACKAGE_ROOT, 'tasks') + path.sep;

const REAL_PREFIX = 'miniwob.';
const TASK_NAME = /^[a-z0-9][a-z0-9_-]*$/i;

function htmlTaskNames(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.html') && TASK_NAME.test(f.slice(0, -5)))
    .map((f) => f.slice(0, -5))
    .sort();
}

/**
 * The folder holding `miniwob/` (task pages) and `core/` for a user-given --miniwob-dir: accepts the
 * miniwob-plusplus `miniwob` package folder (with html/), its html/ folder, or html/miniwob itself.
 */
export function resolveMiniwobRoot(dir: string): string {
  const abs = path.resolve(dir);
  if (!existsSync(abs) || !statSync(abs).isDirectory()) {
    throw new Error(`--miniwob-dir ${dir}: not a folder`);
  }
  const candidates = [path.join(abs, 'html'), abs, path.dirname(abs)];
  for (const root of candidates) {
    if (existsSync(path.join(root, 'miniwob')) && existsSync(path.join(root, 'core', 'core.js')) && htmlTaskNames(path.join(root, 'miniwob')).length > 0) {
      return root;
    }
  }
  throw new Error(
    `--miniwob-dir ${dir}: no MiniWoB++ tasks found; expected html/miniwob/*.html and html/core/core.js ` +
      `below it (the miniwob-plusplus repository's miniwob/ folder)`,
  );
}

export function listTasks(opts: { miniwobDir?: string } = {}): string[] {
  const names = htmlTaskNames(path.join(BUILTIN_TASKS_DIR, 'miniwob'));
  if (opts.miniwobDir) {
    const root = resolveMiniwobRoot(opts.miniwobDir);
    names.push(...htmlTaskNames(path.join(root, 'miniwob')).map((n) => REAL_PREFIX + n));
  }
  return names;
}

export interface ResolvedTask {
  name: string;
  suite: 'builtin' | 'miniwob';
  url: string;
}

/** Resolves task names to URLs and owns the loopback server the pages come from. */
export class TaskCatalog {
  private constructor(
    private readonly server: StaticServer,
    private readonly builtin: Set<string>,
    private readonly real: Set<string> | null,
    private readonly realBase: string | null,
    /** Origins pages may load from; every other request is blocked. */
    readonly allowedOrigins: ReadonlySet<string>,
  ) {}

  static async open(opts: { miniwobDir?: string; miniwobUrl?: string } = {}): Promise<TaskCatalog> {
    const mounts: Record<string, string> = { '/builtin/': BUILTIN_TASKS_DIR };
    let realDir = opts.miniwobDir;
    let realBase: string | null = null;
    let externalOrigin: string | null = null;
    if (!realDir && opts.miniwobUrl) {
      let url: URL;
      try {
        url = new URL(opts.miniwobUrl);
      } catch {
        throw new Error(`MINIWOB_URL ${JSON.stringify(opts.miniwobUrl)} is not a URL`);
      }
      if (url.protocol === 'file:') realDir = fileURLToPath(url);
      else if (url.protocol === 'http:' || url.protocol === 'https:') {
        realBase = url.href.endsWith('/') ? url.href : url.href + '/';
        externalOrigin = url.origin;
      } else throw new Error(`MINIWOB_URL must be http(s):// or file://, got ${url.protocol}`);
    }
    let real: Set<string> | null = null;
    if (realDir) {
      const root = resolveMiniwobRoot(realDir);
      mounts['/miniwob-suite/'] = root;
      real = new Set(htmlTaskNames(path.join(root, 'miniwob')));
    }
    const server = await startStaticServer(mounts);
    if (realDir) realBase = `${server.origin}/miniwob-suite/miniwob/`;
    const origins = new Set([server.origin]);
    if (externalOrigin) origins.add(externalOrigin);
    return new TaskCatalog(server, new Set(htmlTaskNames(path.join(BUILTIN_TASKS_DIR, 'miniwob'))), real, realBase, origins);
  }

  get origin(): string {
    return this.server.origin;
  }

  list(): string[] {
    return [...[...this.builtin].sort(), ...[...(this.real ?? [])].sort().map((n) => REAL_PREFIX + n)];
  }

  resolve(task: string): ResolvedTask {
    if (typeof task !== 'string' || task.length === 0) throw new UnknownTaskError('task name must be a non-empty string');
    const name = task.startsWith('browsergym/') ? task.slice('browsergym/'.length) : task;
    if (name.startsWith(REAL_PREFIX)) {
      const sub = name.slice(REAL_PREFIX.length);
      if (!TASK_NAME.test(sub)) throw new UnknownTaskError(`bad task name ${JSON.stringify(task)}`);
      if (this.realBase === null) {
        throw new UnknownTaskError(`task ${task} is from the real MiniWoB++ suite: give --miniwob-dir DIR or set MINIWOB_URL`);
      }
      if (this.real !== null && !this.real.has(sub)) {
        throw new UnknownTaskError(`unknown MiniWoB++ task ${JSON.stringify(sub)} (the suite folder has ${this.real.size} tasks)`);
      }
      return { name, suite: 'miniwob', url: this.realBase + sub + '.html' };
    }
    if (!this.builtin.has(name)) {
      throw new UnknownTaskError(`unknown task ${JSON.stringify(task)}; built-in tasks: ${[...this.builtin].sort().join(', ')}` +
        (this.realBase ? '; real-suite tasks are named miniwob.NAME' : ''));
    }
    return { name, suite: 'builtin', url: `${this.server.origin}/builtin/miniwob/${name}.html` };
  }

  /** Host names of the allowed origins (for the browser's host-resolver rules). */
  get allowedHosts(): string[] {
    return [...this.allowedOrigins].map((o) => new URL(o).hostname);
  }

  isAllowedUrl(url: string): boolean {
    if (url.startsWith('data:') || url === 'about:blank') return true;
    try {
      return this.allowedOrigins.has(new URL(url).origin);
    } catch {
      return false;
    }
  }

  close(): Promise<void> {
    return this.server.close();
  }
}
