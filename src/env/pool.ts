/**
 * EnvPool: N environments over one or a few Chromium processes. reset() hands out an Episode on a
 * free environment (waiting for one if all are busy); Episode.release() gives it back. A browser
 * that crashes or hangs is replaced transparently: the episodes it was running end with done=true
 * and an error naming the crash; later resets get a fresh browser.
 */
import type { Browser } from 'playwright-core';
import { BrowserEnv, withTimeout } from './browserEnv.js';
import { browserPid, launchChromium } from './browser.js';
import { TaskCatalog } from './suites.js';
import { EnvCrashError, resolveEnvOptions, type EnvOptions, type ObserveOptions, type Observation, type ResolvedEnvOptions } from './types.js';

export interface Episode {
  readonly observation: Observation;
  /** Never throws for bad actions: the error goes in observation.error. A crash ends the episode. */
  step(action: string, opts?: ObserveOptions): Promise<Observation>;
  /** Gives the environment back to the pool (idempotent). */
  release(): Promise<void>;
}

export interface PoolStats {
  episodes: number;
  crashes: number;
  browserLaunches: number;
}

/** One Chromium process shared by several environments; relaunched after a crash. */
class BrowserSlot {
  private browser: Browser | null = null;
  private launching: Promise<Browser> | null = null;
  pid: number | null = null;
  /** Bumped at every launch so environments know their browser was replaced. */
  generation = 0;

  constructor(
    private readonly options: ResolvedEnvOptions,
    private readonly stats: PoolStats,
    private readonly allowedHosts: string[],
  ) {}

  get(): Promise<Browser> {
    if (this.browser && this.browser.isConnected()) return Promise.resolve(this.browser);
    this.launching ??= (async () => {
      try {
        await this.kill();
        const browser = await launchChromium({ ...this.options, allowedHosts: this.allowedHosts });
        this.pid = await browserPid(browser).catch(() => null);
        this.browser = browser;
        this.generation++;
        this.stats.browserLaunches++;
        return browser;
      } finally {
        this.launching = null;
      }
    })();
    return this.launching;
  }

  /** Ends the browser process (used after a hang); the next get() launches a new one. */
  async kill(): Promise<void> {
    const browser = this.browser;
    this.browser = null;
    if (this.pid !== null) {
      try { process.kill(this.pid, 'SIGKILL'); } catch { /* already gone */ }
      this.pid = null;
    }
    if (browser) await withTimeout(browser.close(), 5_000).catch(() => undefined);
  }
}

interface Slot {
  env: BrowserEnv | null;
  browser: BrowserSlot;
  generation: number;
  busy: boolean;
}

export class EnvPool {
  private readonly waiters: Array<{ resolve: (slot: Slot) => void; reject: (error: Error) => void }> = [];
  private closed = false;

  private constructor(
    private readonly catalog: TaskCatalog,
    private readonly browsers: BrowserSlot[],
    private readonly slots: Slot[],
    readonly options: ResolvedEnvOptions,
    /** Episodes started, crashes seen, browsers launched. */
    readonly stats: PoolStats,
  ) {}

  static async create(opts: EnvOptions & { size: number; browsers?: number }): Promise<EnvPool> {
    const size = opts.size;
    const browserCount = opts.browsers ?? 1;
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`pool size must be a positive integer, got ${size}`);
    if (!Number.isInteger(browserCount) || browserCount < 1 || browserCount > size) {
      throw new RangeError(`browsers must be an integer from 1 to the pool size (${size}), got ${opts.browsers}`);
    }
    const options = resolveEnvOptions(opts);
    const catalog = await TaskCatalog.open({ miniwobDir: options.miniwobDir, miniwobUrl: options.miniwobUrl });
    const stats: PoolStats = { episodes: 0, crashes: 0, browserLaunches: 0 };
    const browsers = Array.from({ length: browserCount }, () => new BrowserSlot(options, stats, catalog.allowedHosts));
    const slots: Slot[] = Array.from({ length: size }, (_, i) => ({ env: null, browser: browsers[i % browserCount], generation: -1, busy: false }));
    const pool = new EnvPool(catalog, browsers, slots, options, stats);
    try {
      await Promise.all(slots.map((slot) => pool.ensureEnv(slot)));
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  get size(): number {
    return this.slots.length;
  }

  /** Task names available (built-in, plus miniwob.NAME for a real suite folder). */
  listTasks(): string[] {
    return this.catalog.list();
  }

  /** Process ids of the live browsers (diagnostics and crash tests). */
  browserPids(): number[] {
    return this.browsers.map((b) => b.pid).filter((p): p is number => p !== null);
  }

  private async ensureEnv(slot: Slot): Promise<BrowserEnv> {
    if (slot.env && slot.env.healthy && slot.generation === slot.browser.generation) return slot.env;
    const old = slot.env;
    slot.env = null;
    if (old) await old.close().catch(() => undefined);
    const browser = await slot.browser.get();
    slot.env = await BrowserEnv.attach(browser, this.catalog, this.options);
    slot.generation = slot.browser.generation;
    return slot.env;
  }

  private acquire(): Promise<Slot> {
    if (this.closed) return Promise.reject(new Error('the EnvPool is closed'));
    const free = this.slots.find((s) => !s.busy);
    if (free) {
      free.busy = true;
      return Promise.resolve(free);
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private releaseSlot(slot: Slot): void {
    const next = this.waiters.shift();
    if (next) next.resolve(slot); // stays busy, handed straight over
    else slot.busy = false;
  }

  /** Watchdog for one environment call: a browser that stops answering counts as crashed. */
  private callTimeoutMs(): number {
    return this.options.hangTimeoutMs;
  }

  private async recoverAfterCrash(slot: Slot, hung: boolean): Promise<void> {
    this.stats.crashes++;
    const old = slot.env;
    slot.env = null;
    if (!old) return;
    // A hung page usually dies with its context; if even that does not answer, the browser is
    // wedged and is killed (its other episodes then fail too and are replaced the same way).
    const closed = await withTimeout(old.close(), 8_000).then(() => true, () => false);
    if (hung && !closed) await slot.browser.kill();
  }

  /** Starts an episode on a free environment (waits for one). Throws for unknown tasks. */
  async reset(task: string, seed: number, opts: ObserveOptions = {}): Promise<Episode> {
    this.catalog.resolve(task); // unknown task: fail before taking an environment
    const slot = await this.acquire();
    const attempts = 3;
    for (let attempt = 1; ; attempt++) {
      try {
        const env = await this.ensureEnv(slot);
        const observation = await withTimeout(env.reset(task, seed, opts), this.callTimeoutMs(), 'environment reset hung');
        this.stats.episodes++;
        return new PooledEpisode(this, slot, env, observation);
      } catch (error) {
        const crashed = error instanceof EnvCrashError || (slot.env !== null && !slot.env.healthy);
        const hung = error instanceof Error && error.message === 'environment reset hung';
        if ((crashed || hung) && attempt < attempts && !this.closed) {
          await this.recoverAfterCrash(slot, hung);
          continue;
        }
        this.releaseSlot(slot);
        throw error;
      }
    }
  }

  /** @internal used by PooledEpisode */
  async runStep(slot: Slot, env: BrowserEnv, action: string, opts: ObserveOptions): Promise<Observation> {
    return withTimeout(env.step(action, opts), this.callTimeoutMs(), 'environment step hung');
  }

  /** @internal */
  async handleEpisodeCrash(slot: Slot, error: unknown): Promise<void> {
    const hung = error instanceof Error && error.message === 'environment step hung';
    await this.recoverAfterCrash(slot, hung);
  }

  /** @internal */
  giveBack(slot: Slot): void {
    this.releaseSlot(slot);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter.reject(new Error('the EnvPool was closed while waiting for an environment'));
    await Promise.all(this.slots.map(async (slot) => {
      const env = slot.env;
      slot.env = null;
      if (env) await env.close().catch(() => undefined);
    }));
    await Promise.all(this.browsers.map((b) => b.kill()));
    await this.catalog.close();
  }
}

class PooledEpisode implements Episode {
  private released = false;
  private failed: Observation | null = null;
  private current: Observation;

  constructor(private readonly pool: EnvPool, private readonly slot: Slot, private readonly env: BrowserEnv, first: Observation) {
    this.current = first;
  }

  get observation(): Observation {
    return this.current;
  }

  async step(action: string, opts: ObserveOptions = {}): Promise<Observation> {
    if (this.released) throw new Error('step() on a released episode');
    if (this.failed) return this.failed;
    try {
      this.current = await this.pool.runStep(this.slot, this.env, action, opts);
      return this.current;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const isCrash = error instanceof EnvCrashError || /hung/.test(message) || !this.env.healthy;
      if (!isCrash) throw error; // a bug, not the browser: let it surface
      await this.pool.handleEpisodeCrash(this.slot, error);
      this.failed = {
        ...this.current,
        error: `browser crashed or hung; the episode was ended and the environment replaced (${message})`,
        step: this.current.step + 1,
        reward: 0,
        rawReward: 0,
        done: true,
        truncated: false,
        validActions: [],
        screenshot: undefined,
      };
      this.current = this.failed;
      return this.failed;
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.pool.giveBack(this.slot);
  }
}
