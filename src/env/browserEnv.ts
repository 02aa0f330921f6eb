/**
 * One environment: a browser context + page on a (possibly shared) Chromium, driven with BrowserGym's
 * MiniWoB harness semantics. reset(task, seed) → Observation; step(action) → Observation.
 */
import type { Browser, BrowserContext, CDPSession, Page } from 'playwright-core';
import { executeAction } from './actions/executor.js';
import { ActionParseError, parseAction } from './actions/parser.js';
import { isFatalBrowserError, launchChromium } from './browser.js';
import { observePage, validActionsFor } from './observation/observe.js';
import { PAGE_SCRIPT } from './observation/pageScript.js';
import { TaskCatalog, type ResolvedTask } from './suites.js';
import {
  EnvCrashError,
  resolveEnvOptions,
  type EnvOptions,
  type ObserveOptions,
  type Observation,
  type ResolvedEnvOptions,
} from './types.js';

const VIEWPORT = { width: 500, height: 320 }; // BrowserGym's MiniWoB viewport
const NAVIGATION_TIMEOUT_MS = 15_000;
const READY_TIMEOUT_MS = 10_000;

interface EpisodeState {
  task: ResolvedTask;
  seed: number;
  goal: string;
  step: number;
  startedAt: number;
  finished: boolean;
  last: Observation | null;
}

export class BrowserEnv {
  private context: BrowserContext | null = null;
  private page: Page | null = null;
  private cdp: CDPSession | null = null;
  private episode: EpisodeState | null = null;
  private crashed = false;
  private episodesOnContext = 0;
  /** Messages the agent sent with send_msg_to_user in this episode. */
  readonly messages: string[] = [];

  private constructor(
    private readonly browser: Browser,
    private readonly catalog: TaskCatalog,
    readonly options: ResolvedEnvOptions,
    private readonly owned: boolean,
  ) {}

  /** A stand-alone environment with its own Chromium and task server. */
  static async launch(opts: EnvOptions = {}): Promise<BrowserEnv> {
    const options = resolveEnvOptions(opts);
    const catalog = await TaskCatalog.open({ miniwobDir: options.miniwobDir, miniwobUrl: options.miniwobUrl });
    let browser: Browser;
    try {
      browser = await launchChromium({ ...options, allowedHosts: catalog.allowedHosts });
    } catch (error) {
      await catalog.close();
      throw error;
    }
    const env = new BrowserEnv(browser, catalog, options, true);
    await env.openContext();
    return env;
  }

  /** An environment on a shared browser and catalog (the pool's building block). */
  static async attach(browser: Browser, catalog: TaskCatalog, options: ResolvedEnvOptions): Promise<BrowserEnv> {
    const env = new BrowserEnv(browser, catalog, options, false);
    await env.openContext();
    return env;
  }

  /** False once the page or browser died; such an environment must be replaced. */
  get healthy(): boolean {
    return !this.crashed && this.browser.isConnected() && this.page !== null && !this.page.isClosed();
  }

  get taskCatalog(): TaskCatalog {
    return this.catalog;
  }

  private async openContext(): Promise<void> {
    const context = await this.browser.newContext({ viewport: VIEWPORT, serviceWorkers: 'block', acceptDownloads: false });
    try {
      await context.addInitScript({ content: PAGE_SCRIPT });
      // Safety: only the task server (and data:/about:blank) is reachable.
      await context.route('**/*', (route) => {
        const allowed = this.catalog.isAllowedUrl(route.request().url());
        return (allowed ? route.continue() : route.abort('blockedbyclient')).catch(() => undefined);
      });
      await context.routeWebSocket(/.*/, (ws) => ws.close({ code: 1008, reason: 'blocked' }).catch(() => undefined));
      context.on('page', (p) => {
        // Popups are closed at once (our own page arrives here too, before this.page is set).
        if (this.page !== null && p !== this.page) void p.close().catch(() => undefined);
      });
      const page = await context.newPage();
      page.on('crash', () => { this.crashed = true; });
      page.on('dialog', (d) => void d.dismiss().catch(() => undefined));
      this.page = page;
      this.cdp = await context.newCDPSession(page);
      this.context = context;
      this.episodesOnContext = 0;
    } catch (error) {
      await context.close().catch(() => undefined);
      throw error;
    }
  }

  private requirePage(): { page: Page; cdp: CDPSession } {
    if (!this.healthy || this.page === null || this.cdp === null) {
      throw new EnvCrashError('the browser page is gone (browser crashed or was closed)');
    }
    return { page: this.page, cdp: this.cdp };
  }

  /** Runs `fn`, turning dead-browser failures into EnvCrashError. */
  private async guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      if (error instanceof EnvCrashError) { this.crashed = true; throw error; }
      if (isFatalBrowserError(error) || !this.healthy) {
        this.crashed = true;
        const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
        throw new EnvCrashError(`browser crashed during ${what}: ${message}`, { cause: error });
      }
      throw error;
    }
  }

  async reset(task: string, seed: number, opts: ObserveOptions = {}): Promise<Observation> {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
    const resolved = this.catalog.resolve(task);
    if (this.context !== null && this.healthy && this.episodesOnContext >= this.options.recycleAfterEpisodes) {
      // A fresh context now and then keeps memory bounded over long runs.
      await this.closeContext().catch(() => undefined);
      await this.guard('reset', () => this.openContext());
    }
    return this.guard('reset', async () => {
      const { page } = this.requirePage();
      this.episode = null;
      this.messages.length = 0;
      this.episodesOnContext++;
      const response = await page.goto(resolved.url, { waitUntil: 'load', timeout: NAVIGATION_TIMEOUT_MS });
      if (response && !response.ok()) throw new Error(`task page ${resolved.url} answered HTTP ${response.status()}`);
      const started = await page.evaluate(
        ({ seed: s, maxTime }) => {
          const w = window as unknown as {
            core?: { EPISODE_MAX_TIME: number; startEpisodeReal(): void };
            WOB_TASK_READY?: boolean;
          };
          const seededMath = Math as Math & { seedrandom?: (seed: unknown) => unknown };
          if (!w.core || typeof w.core.startEpisodeReal !== 'function' || typeof seededMath.seedrandom !== 'function') {
            return { ok: false, ready: false };
          }
          // BrowserGym's harness: remove the human display, seed, set the time limit, start.
          for (const id of ['reward-display', 'click-canvas', 'sync-task-cover']) document.getElementById(id)?.remove();
          seededMath.seedrandom(s);
          w.core.EPISODE_MAX_TIME = maxTime;
          w.core.startEpisodeReal();
          return { ok: true, ready: w.WOB_TASK_READY !== false };
        },
        { seed, maxTime: this.options.episodeMaxTimeMs },
      );
      if (!started.ok) throw new Error(`${resolved.url} is not a MiniWoB task page (no core.startEpisodeReal or Math.seedrandom)`);
      if (!started.ready) {
        await page.waitForFunction(() => (window as unknown as { WOB_TASK_READY?: boolean }).WOB_TASK_READY !== false, null, {
          timeout: READY_TIMEOUT_MS,
          polling: 20,
        });
      }
      const goal = await page.evaluate(() => {
        const w = window as unknown as { core: { getUtterance(): string } };
        const utterance = String(w.core.getUtterance());
        const query = document.getElementById('query');
        if (query) query.textContent = ''; // the goal is given in the observation, not on the page
        return utterance;
      });
      this.episode = { task: resolved, seed, goal, step: 0, startedAt: Date.now(), finished: false, last: null };
      return this.observe(true, '', opts);
    });
  }

  async step(actionText: string, opts: ObserveOptions = {}): Promise<Observation> {
    const episode = this.episode;
    if (episode === null) throw new Error('step() before reset(): start an episode first');
    if (episode.finished && episode.last) {
      return { ...episode.last, error: 'the episode is over (done or truncated): call reset() for a new one' };
    }
    return this.guard('step', async () => {
      const { page } = this.requirePage();
      let error = '';
      try {
        const action = parseAction(actionText);
        if (action.name === 'send_msg_to_user') this.messages.push(action.text);
        error = await executeAction(page, action, { timeoutMs: this.options.actionTimeoutMs, maxNoopWaitMs: this.options.maxNoopWaitMs });
      } catch (e) {
        if (!(e instanceof ActionParseError)) throw e;
        error = `ActionParseError: ${e.message}`;
      }
      episode.step++;
      return this.observe(false, error, opts);
    });
  }

  /** The current observation without acting. */
  async peek(opts: ObserveOptions = {}): Promise<Observation> {
    if (this.episode === null) throw new Error('peek() before reset()');
    return this.guard('observe', () => this.observe(false, this.episode?.last?.error ?? '', opts));
  }

  private async observe(freshBids: boolean, error: string, opts: ObserveOptions): Promise<Observation> {
    const episode = this.episode!;
    const { page, cdp } = this.requirePage();
    const { snapshot, axtree } = await observePage(page, cdp, freshBids);
    const done = snapshot.wob.done;
    const truncated = !done && episode.step >= this.options.maxSteps;
    const observation: Observation = {
      goal: episode.goal,
      axtree,
      html: snapshot.html,
      url: snapshot.url,
      error,
      step: episode.step,
      elapsedMs: Date.now() - episode.startedAt,
      reward: snapshot.wob.rawReward > 0 ? 1 : 0,
      rawReward: snapshot.wob.rawReward,
      done,
      truncated,
      validActions: done ? [] : validActionsFor(snapshot.elements, episode.goal),
    };
    if (opts.screenshot) observation.screenshot = await page.screenshot({ type: 'png' });
    episode.finished = done || truncated;
    episode.last = observation;
    return observation;
  }

  /** Current task/seed, for reports. */
  get currentEpisode(): { task: string; seed: number; step: number } | null {
    return this.episode ? { task: this.episode.task.name, seed: this.episode.seed, step: this.episode.step } : null;
  }

  private async closeContext(): Promise<void> {
    const context = this.context;
    this.context = null;
    this.page = null;
    this.cdp = null;
    if (context) await withTimeout(context.close(), 5_000);
  }

  /** Rejects if the context did not close in time (a wedged browser); owned resources are freed anyway. */
  async close(): Promise<void> {
    let failure: unknown = null;
    await this.closeContext().catch((e: unknown) => { failure = e; });
    if (this.owned) {
      await withTimeout(this.browser.close(), 10_000).catch(() => undefined);
      await this.catalog.close();
    }
    if (failure !== null && this.browser.isConnected()) throw failure;
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number, message = `timed out after ${ms} ms`): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
