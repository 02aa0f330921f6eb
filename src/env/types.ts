/** Public types of the web environment. */

export interface Observation {
  goal: string;
  /** Accessibility tree text with bids, BrowserGym format. */
  axtree: string;
  /** Pruned HTML with bids. */
  html: string;
  url: string;
  /** The last action's error message, '' if none. */
  error: string;
  /** Browser steps taken in this episode (invalid actions count too, as in BrowserGym). */
  step: number;
  elapsedMs: number;
  /** BrowserGym semantics: 1 if the raw reward is > 0, else 0. */
  reward: number;
  rawReward: number;
  done: boolean;
  /** True when the step limit ended the episode before the task did. */
  truncated: boolean;
  /** Candidate action strings for the current page (see validActionsFor in observation/observe.ts). */
  validActions: string[];
  /** Present only when requested. PNG bytes. */
  screenshot?: Buffer;
}

export interface EnvOptions {
  /** Chromium binary; default env CHROMIUM_PATH or /usr/bin/chromium. */
  chromiumPath?: string;
  /** The MiniWoB++ suite: the miniwob-plusplus `miniwob` package folder (with html/miniwob) or html/. */
  miniwobDir?: string;
  /** Base URL of the real suite (BrowserGym's MINIWOB_URL); default env MINIWOB_URL. */
  miniwobUrl?: string;
  /** Browser steps per episode before truncation (BrowserGym MiniWoB default 10). */
  maxSteps?: number;
  /** Per-action Playwright timeout in ms (default 1000). */
  actionTimeoutMs?: number;
  /** core.EPISODE_MAX_TIME in ms (BrowserGym default 1,000,000: tasks effectively never time out). */
  episodeMaxTimeMs?: number;
  /** noop(wait_ms) waits at most this long (default 1000, BrowserGym's noop default). */
  maxNoopWaitMs?: number;
  headless?: boolean;
  /** Fresh browser context after this many episodes on one environment, to bound memory (default 100). */
  recycleAfterEpisodes?: number;
  /** A reset/step taking longer than this counts as a hung browser (default 4×action timeout + noop wait + 30 s). */
  hangTimeoutMs?: number;
}

export interface ResolvedEnvOptions {
  chromiumPath: string;
  miniwobDir?: string;
  miniwobUrl?: string;
  maxSteps: number;
  actionTimeoutMs: number;
  episodeMaxTimeMs: number;
  maxNoopWaitMs: number;
  headless: boolean;
  recycleAfterEpisodes: number;
  hangTimeoutMs: number;
}

export interface ObserveOptions {
  screenshot?: boolean;
}

export function resolveEnvOptions(opts: EnvOptions = {}): ResolvedEnvOptions {
  const positiveInt = (name: string, value: number | undefined, fallback: number): number => {
    const v = value ?? fallback;
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${name} must be a positive integer, got ${value}`);
    return v;
  };
  const maxNoopWaitMs = opts.maxNoopWaitMs ?? 1000;
  if (!Number.isFinite(maxNoopWaitMs) || maxNoopWaitMs < 0) throw new RangeError(`maxNoopWaitMs must be >= 0, got ${opts.maxNoopWaitMs}`);
  const actionTimeoutMs = positiveInt('actionTimeoutMs', opts.actionTimeoutMs, 1000);
  return {
    chromiumPath: opts.chromiumPath ?? process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    miniwobDir: opts.miniwobDir,
    miniwobUrl: opts.miniwobUrl ?? (opts.miniwobDir ? undefined : process.env.MINIWOB_URL || undefined),
    maxSteps: positiveInt('maxSteps', opts.maxSteps, 10),
    actionTimeoutMs,
    episodeMaxTimeMs: positiveInt('episodeMaxTimeMs', opts.episodeMaxTimeMs, 1_000_000),
    maxNoopWaitMs,
    headless: opts.headless ?? true,
    recycleAfterEpisodes: positiveInt('recycleAfterEpisodes', opts.recycleAfterEpisodes, 100),
    hangTimeoutMs: positiveInt('hangTimeoutMs', opts.hangTimeoutMs, 4 * actionTimeoutMs + Math.ceil(maxNoopWaitMs) + 30_000),
  };
}

/** The browser or page died or stopped answering: the episode cannot continue. */
export class EnvCrashError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EnvCrashError';
  }
}

export class UnknownTaskError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnknownTaskError';
  }
}
