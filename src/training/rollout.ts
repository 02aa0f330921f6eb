// Rollouts: P task instances × G episodes, advanced in lock-step over browser steps. At each browser step every
// live episode's prompt is built from its own observation, all of them are sampled in one batched native call
// (episodes of a group that share a prompt share its prefill), and the browsers then act concurrently.
// Each browser step's completion becomes one training sample with exactly the context it was generated in.
import type { Episode, EnvPool, Observation } from '../env/index.js';
import type { GenerateResult, NativeModel, SamplingParams, TokenTrie } from '../native/addon.js';
import type { ChatTokenizer } from '../model/tokenizer.js';
import { allowedAlongPath, buildActionTrie } from './constraint.js';
import { buildMessages, type PromptSettings } from './prompt.js';

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
  /** Partitions of a wave that take turns at the model (1: all episodes sample together, then all act). */
  pipeline: number;
}

export interface RolloutTimings {
  /** Wall time the model spent sampling. */
  sampleSeconds: number;
  /** Wall time during which some browser was resetting or acting (it overlaps sampling when pipelined). */
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

/** Samples one completion per request in a single batched call; identical prompts are prefilled once. */
export async function sampleBatch(policy: Policy, requests: { prompt: Int32Array; trie?: TokenTrie }[],
  s: RolloutSettings, seed: number): Promise<GenerateResult[]> {
  const promptIndex = new Map<string, number>();
  const prompts: Int32Array[] = [];
  const sequencePrompt = new Int32Array(requests.length);
  requests.forEach((r, i) => {
    const key = r.prompt.join(',');
    let k = promptIndex.get(key);
    if (k === undefined) {
      k = prompts.length;
      promptIndex.set(key, k);
      prompts.push(r.prompt);
    }
    sequencePrompt[i] = k;
  });
  return policy.model.generate({
    prompts,
    sequencePrompt,
    maxNewTokens: s.maxNewTokens,
    stopTokens: Int32Array.of(policy.tokenizer.eosId),
    sampling: { ...s.sampling, seed },
    constraints: s.constrained ? requests.map((r) => r.trie ?? null) : undefined,
  });
}

/** The action text of a completion: its tokens without the stop token. */
export function completionAction(tokenizer: ChatTokenizer, tokens: Int32Array): string {
  const body = tokens.length && tokens[tokens.length - 1] === tokenizer.eosId ? tokens.subarray(0, -1) : tokens;
  return tokenizer.decode(Array.from(body)).trim();
}

/**
 * Runs G episodes for each (task, seed) instance. `seed` makes sampling reproducible: the batch composition at
 * each browser step depends only on which episodes are still running, never on timing. Each episode holds an
 * environment of the pool until the end of its wave, so episodes run in waves of at most `pool.size`, in order.
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
  for (let first = 0, wave = 0; first < live.length; first += pool.size, wave++)
    await runWave(pool, policy, live.slice(first, first + pool.size), s, (seed + wave * 7_919) >>> 0, timings);
  for (const ep of live) ep.record.success = ep.record.reward > 0;
  return { episodes: live.map((ep) => ep.record), timings };
}

/**
 * Wall time during which at least one phase of a kind (model or browser work) was in flight: phases of different
 * partitions overlap, so summing them would overstate the time.
 */
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

/**
 * Runs `live` (at most pool.size episodes) over browser steps, adding to `timings`. The episodes are split by group
 * into `s.pipeline` partitions that take turns at the model: while one partition samples, the others' browsers act.
 * Each partition advances in lock-step, and which episodes share a sampling call depends only on which are still
 * running, never on timing.
 */
async function runWave(pool: EnvPool, policy: Policy, live: LiveEpisode[], s: RolloutSettings, seed: number,
  timings: RolloutTimings): Promise<void> {
  const env = new BusyClock();
  const model = new BusyClock();
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
  const count = Math.max(1, s.pipeline);
  const partitions = Array.from({ length: count }, (_, k) => live.filter((ep) => ep.record.group % count === k))
    .filter((part) => part.length > 0);
  // The native model runs one call at a time: partitions queue for it.
  let modelTurn: Promise<unknown> = Promise.resolve();
  const withModel = <T>(work: () => Promise<T>): Promise<T> => {
    const turn = modelTurn.then(() => model.time(work));
    modelTurn = turn.catch(() => undefined);
    return turn;
  };

  const runPartition = async (part: LiveEpisode[], k: number): Promise<void> => {
    for (let browserStep = 0; browserStep < s.maxSteps; browserStep++) {
      const active = part.filter((ep) => !ep.done);
      if (active.length === 0) break;
      const requests = active.map((ep) => {
        const obs = ep.observation!;
        const prompt = encodePrompt(policy.tokenizer, obs, ep.actions, s.prompt);
        const trie = s.constrained
          ? buildActionTrie(obs.validActions.length ? obs.validActions : ['noop()'],
            (t) => policy.tokenizer.encode(t), policy.tokenizer.eosId)
          : undefined;
        return { prompt, trie };
      });
      const stepSeed = ((seed * 1_000_003 + browserStep) ^ Math.imul(k, 0x9e3779b9)) >>> 0;
      const results = await withModel(() => sampleBatch(policy, requests, s, stepSeed));
      await Promise.all(
        active.map((ep, i) => env.time(async () => {
          const result = results[i];
          const action = completionAction(policy.tokenizer, result.tokens);
          const trie = requests[i].trie;
          ep.record.samples.push({
            promptTokens: requests[i].prompt,
            completionTokens: result.tokens,
            samplerLogprobs: result.logprobs,
            allowed: trie ? allowedAlongPath(trie, result.tokens) : undefined,
            action,
          });
          timings.promptTokens += requests[i].prompt.length;
          timings.newTokens += result.tokens.length;
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
        })),
      );
      timings.envSteps += active.length;
    }
  };

  try {
    // Every partition settles before the environments are released, also when one of them fails.
    const settled = await Promise.allSettled(partitions.map((part, k) => runPartition(part, k)));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  } finally {
    await Promise.all(live.map((ep) => ep.episode?.release().catch(() => undefined)));
    timings.envSeconds += env.seconds;
    timings.sampleSeconds += model.seconds;
  }
}
