// Rollouts: P task instances × G episodes. Episodes run in waves of at most the pool's size; in a wave every
// episode's first prompt is sampled in one batch (a group's G episodes share its prefill), and from then on each
// episode goes at its own pace: when its browser has acted, its next prompt joins the model's running decode batch
// (continuous batching) while other episodes are still decoding or acting. Each browser step's completion becomes
// one training sample with exactly the context it was generated in.
import type { Episode, EnvPool, Observation } from '../env/index.js';
import type { NativeModel, SamplingParams, TokenTrie } from '../native/addon.js';
import type { ChatTokenizer } from '../model/tokenizer.js';
import { allowedAlongPath, buildActionTrie } from './constraint.js';
import { buildMessages, type PromptSettings } from './prompt.js';
import { ContinuousSampler, type SampleRequest } from './sampler.js';

export interface StepSample {
  promptTokens: Int32Array;
  /** Sampled tokens, including the stop token when one ended the completion. */
  completionTokens: Int32Array;
  /** The sampler's log-probs of completionTokens. */
  samplerLogprobs: Float32Array;
  /** Per completion token, the tokens the constraint allowed (absent when unconstrained). */
  allowed?: Int32Array[];
  action: string;
}

export interface EpisodeRecord {
  task: string;
  seed: number;
  /** Index of the episode's group (task instance) within the rollout batch. */
  group: number;
  reward: number;
  success: boolean;
  steps: number;
  samples: StepSample[];
  /** An environment failure (crash, timeout) that ended the episode early. */
  failure?: string;
}

export interface RolloutSettings {
  numGenerations: number;
  maxSteps: number;
  maxNewTokens: number;
  constrained: boolean;
  sampling: SamplingParams;
  prompt: PromptSettings;
}

export interface RolloutTimings {
  /** Wall time the model spent sampling. */
  sampleSeconds: number;
  /** Wall time during which some browser was resetting or acting (it overlaps sampling). */
  envSeconds: number;
  envSteps: number;
  promptTokens: number;
  newTokens: number;
}

export interface RolloutResult {
  episodes: EpisodeRecord[];
  timings: RolloutTimings;
}

export interface Policy {
  model: NativeModel;
  tokenizer: ChatTokenizer;
}

interface LiveEpisode {
  record: EpisodeRecord;
  episode?: Episode;
  observation?: Observation;
  actions: string[];
  done: boolean;
}

function seconds(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e9;
}

/** Encodes a step's chat prompt exactly as the model sees it. */
export function encodePrompt(tokenizer: ChatTokenizer, obs: Observation, actions: readonly string[],
  settings: PromptSettings): Int32Array {
  const messages = buildMessages(
    { goal: obs.goal, axtree: obs.axtree, error: obs.error, step: obs.step, previousActions: actions },
    settings,
  );
  return Int32Array.from(tokenizer.encode(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true })));
}

/** The action text of a completion: its tokens without the stop token. */
export function completionAction(tokenizer: ChatTokenizer, tokens: Int32Array): string {
  const body = tokens.length && tokens[tokens.length - 1] === tokenizer.eosId ? tokens.subarray(0, -1) : tokens;
  return tokenizer.decode(Array.from(body)).trim();
}

/**
 * Runs G episodes for each (task, seed) instance. `seed` makes sampling reproducible: each episode's browser step
 * samples from a stream of its own (wave, episode, step), so what it samples does not depend on timing or on which
 * episodes decode beside it. Each episode holds an environment of the pool until the end of its wave, so episodes
 * run in waves of at most `pool.size`, in order.
 */
export async function runRollouts(pool: EnvPool, policy: Policy, instances: readonly { task: string; seed: number }[],
  s: RolloutSettings, seed: number): Promise<RolloutResult> {
  const timings: RolloutTimings = { sampleSeconds: 0, envSeconds: 0, envSteps: 0, promptTokens: 0, newTokens: 0 };
  const live: LiveEpisode[] = [];
  instances.forEach((inst, group) => {
    for (let g = 0; g < s.numGenerations; g++)
      live.push({
        record: { task: inst.task, seed: inst.seed, group, reward: 0, success: false, steps: 0, samples: [] },
        actions: [],
        done: false,
      });
  });
  const sampler = new ContinuousSampler(policy.model, s.constrained, {
    maxNewTokens: s.maxNewTokens,
    stopTokens: Int32Array.of(policy.tokenizer.eosId),
    sampling: s.sampling,
    capacity: Math.min(pool.size, live.length) || 1,
  });
  try {
    for (let first = 0, wave = 0; first < live.length; first += pool.size, wave++)
      await runWave(pool, policy, sampler, live.slice(first, first + pool.size), s, (seed + wave * 7_919) >>> 0, timings);
  } finally {
    sampler.close();
    timings.sampleSeconds = sampler.busySeconds;
  }
  for (const ep of live) ep.record.success = ep.record.reward > 0;
  return { episodes: live.map((ep) => ep.record), timings };
}

/** Wall time during which at least one browser was busy: episodes act concurrently, so summing would overstate it. */
class BusyClock {
  private inFlight = 0;
  private since = 0n;
  seconds = 0;

  async time<T>(work: () => Promise<T>): Promise<T> {
    if (this.inFlight++ === 0) this.since = process.hrtime.bigint();
    try {
      return await work();
    } finally {
      if (--this.inFlight === 0) this.seconds += seconds(this.since);
    }
  }
}

/** Runs `live` (at most pool.size episodes) over browser steps, adding to `timings`. */
async function runWave(pool: EnvPool, policy: Policy, sampler: ContinuousSampler, live: LiveEpisode[],
  s: RolloutSettings, seed: number, timings: RolloutTimings): Promise<void> {
  const env = new BusyClock();
  await Promise.all(
    live.map((ep) => env.time(async () => {
      try {
        ep.episode = await pool.reset(ep.record.task, ep.record.seed);
        ep.observation = ep.episode.observation;
      } catch (e) {
        ep.record.failure = `reset failed: ${(e as Error).message}`;
        ep.done = true;
      }
    })),
  );
  const requestOf = (ep: LiveEpisode): SampleRequest => {
    const obs = ep.observation!;
    const prompt = encodePrompt(policy.tokenizer, obs, ep.actions, s.prompt);
    const trie: TokenTrie | undefined = s.constrained
      ? buildActionTrie(obs.validActions.length ? obs.validActions : ['noop()'],
        (t) => policy.tokenizer.encode(t), policy.tokenizer.eosId)
      : undefined;
    return { prompt, trie };
  };
  // The episode's browser acts on its completion; true when the episode goes on.
  const act = (ep: LiveEpisode, request: SampleRequest, result: { tokens: Int32Array; logprobs: Float32Array }) =>
    env.time(async () => {
      const action = completionAction(policy.tokenizer, result.tokens);
      ep.record.samples.push({
        promptTokens: request.prompt,
        completionTokens: result.tokens,
        samplerLogprobs: result.logprobs,
        allowed: request.trie ? allowedAlongPath(request.trie, result.tokens) : undefined,
        action,
      });
      timings.promptTokens += request.prompt.length;
      timings.newTokens += result.tokens.length;
      timings.envSteps++;
      ep.actions.push(action);
      const obs = await ep.episode!.step(action);
      ep.observation = obs;
      ep.record.steps++;
      ep.record.reward = obs.reward;
      if (obs.done) {
        ep.done = true;
        // The pool reports a crashed or hung browser as a finished episode with an error.
        if (obs.reward <= 0 && /crash|browser|closed/i.test(obs.error)) ep.record.failure = obs.error;
      }
      return !ep.done && ep.record.steps < s.maxSteps;
    });
  const stepSeed = (episode: number, browserStep: number) =>
    ((seed * 1_000_003 + browserStep) ^ Math.imul(episode + 1, 0x9e3779b9)) >>> 0;

  try {
    const active = live.filter((ep) => !ep.done);
    if (s.maxSteps <= 0 || active.length === 0) return;
    // The first browser step of the wave in one batch, so that a group's episodes share their prompt's prefill.
    const firstRequests = active.map(requestOf);
    const firstResults = await sampler.sample(firstRequests, stepSeed(-1, 0));
    const settled = await Promise.allSettled(active.map(async (ep, i) => {
      const episode = live.indexOf(ep);
      let goOn = await act(ep, firstRequests[i], firstResults[i]);
      while (goOn) {
        const request = requestOf(ep);
        const [result] = await sampler.sample([request], stepSeed(episode, ep.record.steps));
        goOn = await act(ep, request, result);
      }
    }));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  } finally {
    // Every episode settles before the environments are released, also when one of them fails.
    await Promise.all(live.map((ep) => ep.episode?.release().catch(() => undefined)));
    timings.envSeconds += env.seconds;
  }
}
