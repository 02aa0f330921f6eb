// The GRPO trainer: rollouts in real browsers, group-relative advantages, clipped updates, checkpoints and
// metrics, in one process.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { EnvPool } from '../env/index.js';
import type { NativeModel } from '../native/addon.js';
import type { Lfm2Model } from '../model/lfm2.js';
import type { ChatTokenizer } from '../model/tokenizer.js';
import { latestCheckpoint, loadOptimizerState, readTrainerState, saveCheckpoint } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import { groupAdvantages, type LossSettings } from './grpo.js';
import { MetricsLog, type StepMetrics } from './metrics.js';
import { loadPolicy } from './policy.js';
import { writeReport } from './report.js';
import { Rng } from './rng.js';
import { runRollouts, type EpisodeRecord, type RolloutSettings } from './rollout.js';
import { learningRate } from './schedule.js';
import { microBatches, scoreSamples, trainMicroBatch, type TrainSample } from './update.js';

export interface TrainOptions {
  /** Continue from the latest checkpoint in the run directory (or from this checkpoint folder). */
  resume?: boolean | string;
  /** Called after every step (progress display). */
  onStep?: (m: StepMetrics, cfg: TrainConfig) => void;
  /** Stop after this many GRPO steps in this process (tests of resume). */
  stopAfter?: number;
}

export interface TrainResult {
  runDir: string;
  steps: number;
  lastMetrics?: StepMetrics;
  model: Lfm2Model;
  tokenizer: ChatTokenizer;
}

export function rolloutSettings(cfg: TrainConfig, greedy = false): RolloutSettings {
  return {
    numGenerations: cfg.grpo.num_generations,
    maxSteps: cfg.env.max_steps,
    maxNewTokens: cfg.sampling.max_new_tokens,
    constrained: cfg.sampling.constrained,
    sampling: {
      temperature: cfg.sampling.temperature,
      topK: cfg.sampling.top_k,
      topP: cfg.sampling.top_p,
      minP: cfg.sampling.min_p,
      repetitionPenalty: cfg.sampling.repetition_penalty,
      greedy,
      seed: cfg.seed,
    },
    prompt: {
      axtreeMaxChars: cfg.prompt.axtree_max_chars,
      history: cfg.prompt.history,
      systemPrompt: cfg.prompt.system_prompt,
    },
  };
}

export function lossSettings(cfg: TrainConfig): LossSettings {
  return {
    lossType: cfg.grpo.loss_type,
    epsilonLow: cfg.grpo.epsilon_low,
    epsilonHigh: cfg.grpo.epsilon_high,
    beta: cfg.grpo.beta,
    maxCompletionLength: cfg.sampling.max_new_tokens,
  };
}

/** One training sample per browser step, with its share of the episode's advantage. */
export function assignAdvantages(episodes: readonly EpisodeRecord[], cfg: TrainConfig): TrainSample[] {
  const groups: EpisodeRecord[][] = [];
  for (const ep of episodes) (groups[ep.group] ??= []).push(ep);
  const advantages = groupAdvantages(groups.map((g) => g.map((ep) => ep.reward)), cfg.grpo.scale_rewards);
  const out: TrainSample[] = [];
  groups.forEach((group, gi) =>
    group.forEach((ep, i) => {
      const a = advantages[gi][i];
      const n = ep.samples.length;
      ep.samples.forEach((sample, t) => {
        const credit = cfg.grpo.credit === 'discounted' ? cfg.grpo.gamma ** (n - 1 - t) : 1;
        out.push({ sample, advantage: a * credit });
      });
    }),
  );
  return out;
}

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

function stdPop(xs: readonly number[]): number {
  const m = mean(xs);
  return Math.sqrt(mean(xs.map((x) => (x - m) ** 2)));
}

/** Draws this step's task instances; training seeds stay below the evaluation seeds. */
export function drawInstances(rng: Rng, cfg: TrainConfig): { task: string; seed: number }[] {
  return Array.from({ length: cfg.grpo.tasks_per_step }, () => ({
    task: cfg.env.tasks[rng.below(cfg.env.tasks.length)],
    seed: rng.below(cfg.eval.seed_offset),
  }));
}

interface UpdateStats {
  loss: number;
  kl: number;
  clipFraction: number;
  entropy: number;
  gradNorm: number;
  lr: number;
  processedTokens: number;
  logprobMismatch: number;
  trainedSamples: number;
}

/** The frozen reference policy of the KL term: a second model, or (LoRA) the same model with its adapters off. */
interface Reference {
  model: NativeModel;
  adapters: boolean;
}

async function update(model: NativeModel, reference: Reference | undefined, samples: TrainSample[],
  cfg: TrainConfig, optimizerStep: number): Promise<UpdateStats & { optimizerSteps: number }> {
  const loss = lossSettings(cfg);
  const temperature = cfg.sampling.temperature;
  const micro = cfg.grpo.micro_batch_size;
  // The loss normalisers count every sample, but samples that cannot contribute a gradient (zero advantage
  // and no KL term) are not run through the model.
  const batch = { numSamples: samples.length, totalTokens: samples.reduce((a, s) => a + s.sample.completionTokens.length, 0) };
  const active = samples.filter((s) => s.advantage !== 0 || cfg.grpo.beta > 0);
  if (reference && cfg.grpo.beta > 0) {
    const ref = await scoreSamples(reference.model, active.map((s) => s.sample), temperature, micro,
      reference.adapters);
    active.forEach((s, i) => (s.refLogprobs = ref[i]));
  }
  if (cfg.grpo.num_iterations > 1) {
    const old = await scoreSamples(model, active.map((s) => s.sample), temperature, micro);
    active.forEach((s, i) => (s.oldLogprobs = old[i]));
  }
  const totals = { loss: 0, klSum: 0, clipped: 0, entropySum: 0, tokens: 0, processedTokens: 0, mismatchSum: 0 };
  let gradNorm = 0;
  let lr = 0;
  let steps = 0;
  for (let iteration = 0; iteration < cfg.grpo.num_iterations; iteration++) {
    model.zeroGrad();
    let microIndex = 0;
    for (const mb of microBatches(active, micro)) {
      // LoRA dropout masks: a function of (run seed, optimizer step, micro-batch), so a resumed run draws the same.
      const dropoutSeed = (cfg.seed * 2_654_435_761 + (optimizerStep + steps) * 40_503 + microIndex++) % 2 ** 53;
      const s = await trainMicroBatch(model, mb, loss, batch, temperature, 1, dropoutSeed);
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += s[k];
    }
    gradNorm = active.length ? await model.gradNorm() : 0;
    lr = learningRate(optimizerStep + steps, {
      lr: cfg.optim.lr,
      warmupSteps: cfg.optim.warmup_steps,
      totalSteps: cfg.grpo.steps * cfg.grpo.num_iterations,
      schedule: cfg.optim.schedule,
      minLrRatio: cfg.optim.min_lr_ratio,
    });
    if (active.length) {
      const clip = gradNorm > cfg.optim.max_grad_norm ? cfg.optim.max_grad_norm / (gradNorm + 1e-6) : 1;
      await model.adamwStep({
        lr,
        beta1: cfg.optim.beta1,
        beta2: cfg.optim.beta2,
        eps: cfg.optim.eps,
        weightDecay: cfg.optim.weight_decay,
        step: optimizerStep + steps + 1,
        gradScale: clip,
      });
    }
    steps++;
  }
  const n = Math.max(totals.tokens, 1);
  return {
    loss: totals.loss / cfg.grpo.num_iterations,
    kl: totals.klSum / n,
    clipFraction: totals.clipped / n,
    entropy: totals.entropySum / n,
    gradNorm,
    lr,
    processedTokens: totals.processedTokens,
    // Only the first iteration's log-probs come from the policy that sampled.
    logprobMismatch: totals.mismatchSum / n,
    trainedSamples: active.length,
    optimizerSteps: steps,
  };
}

/** Runs GRPO as configured. The caller owns the returned model and tokenizer. */
export async function train(cfg: TrainConfig, options: TrainOptions = {}): Promise<TrainResult> {
  const runDir = cfg.run_dir;
  mkdirSync(runDir, { recursive: true });
  const resumeFrom = options.resume
    ? typeof options.resume === 'string' ? options.resume : latestCheckpoint(runDir)
    : undefined;
  if (options.resume && !resumeFrom) throw new Error(`--resume: no checkpoint found in ${join(runDir, 'checkpoints')}`);
  const state = resumeFrom ? readTrainerState(resumeFrom) : { step: 0, optimizerStep: 0, rngState: cfg.seed };
  const policy = await loadPolicy(cfg, resumeFrom ? { checkpoint: resumeFrom } : undefined);
  if (resumeFrom) loadOptimizerState(resumeFrom, policy.model);
  // The frozen reference for the KL term is the starting model, also after a resume: for LoRA the base itself.
  const referenceModel = cfg.grpo.beta > 0 && !policy.model.lora ? (await loadPolicy(cfg)).model : undefined;
  const reference: Reference | undefined = cfg.grpo.beta <= 0 ? undefined
    : referenceModel ? { model: referenceModel.native, adapters: true } : { model: policy.model.native, adapters: false };
  const startStep = state.step;
  let optimizerStep = state.optimizerStep;
  const metrics = new MetricsLog(join(runDir, 'metrics.jsonl'), startStep);
  const rng = new Rng(state.rngState);
  const pool = await EnvPool.create({
    size: cfg.env.concurrency,
    browsers: cfg.env.browsers,
    miniwobDir: cfg.env.miniwob_dir,
    maxSteps: cfg.env.max_steps,
    actionTimeoutMs: cfg.env.action_timeout_ms,
    episodeMaxTimeMs: cfg.env.episode_max_time_ms,
  });
  let last: StepMetrics | undefined;
  let step = startStep;
  try {
    const endStep = Math.min(cfg.grpo.steps, options.stopAfter !== undefined ? startStep + options.stopAfter : Infinity);
    for (; step < endStep; step++) {
      const t0 = process.hrtime.bigint();
      const episodes: EpisodeRecord[] = [];
      const samples: TrainSample[] = [];
      const rollout = { sampleSeconds: 0, envSeconds: 0, envSteps: 0, promptTokens: 0, newTokens: 0 };
      for (let acc = 0; acc < cfg.grpo.gradient_accumulation_steps; acc++) {
        const instances = drawInstances(rng, cfg);
        const r = await runRollouts(pool, { model: policy.model.native, tokenizer: policy.tokenizer }, instances,
          rolloutSettings(cfg), (cfg.seed * 7919 + step * 131 + acc) >>> 0);
        episodes.push(...r.episodes);
        samples.push(...assignAdvantages(r.episodes, cfg));
        for (const k of Object.keys(rollout) as (keyof typeof rollout)[]) rollout[k] += r.timings[k];
      }
      const u0 = process.hrtime.bigint();
      const u = await update(policy.model.native, reference, samples, cfg, optimizerStep);
      optimizerStep += u.optimizerSteps;
      const updateSeconds = Number(process.hrtime.bigint() - u0) / 1e9;
      const stepSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const rewards = episodes.map((e) => e.reward);
      last = {
        step: step + 1,
        reward_mean: mean(rewards),
        reward_std: stdPop(rewards),
        success_rate: mean(episodes.map((e) => (e.success ? 1 : 0))),
        loss: u.loss,
        kl: u.kl,
        entropy: u.entropy,
        grad_norm: u.gradNorm,
        clip_fraction: u.clipFraction,
        lr: u.lr,
        tokens_per_s: (rollout.promptTokens + rollout.newTokens + u.processedTokens) / stepSeconds,
        env_steps_per_s: rollout.envSeconds > 0 ? rollout.envSteps / rollout.envSeconds : 0,
        step_seconds: stepSeconds,
        sample_seconds: rollout.sampleSeconds,
        env_seconds: rollout.envSeconds,
        update_seconds: updateSeconds,
        episodes: episodes.length,
        episode_steps_mean: mean(episodes.map((e) => e.steps)),
        env_failures: episodes.filter((e) => e.failure).length,
        prompt_tokens: rollout.promptTokens,
        new_tokens: rollout.newTokens,
        trained_samples: u.trainedSamples,
        logprob_mismatch: u.logprobMismatch,
      };
      metrics.append(last);
      options.onStep?.(last, cfg);
      const done = step + 1;
      if (cfg.checkpoint.every > 0 && (done % cfg.checkpoint.every === 0 || done === cfg.grpo.steps))
        await saveCheckpoint(runDir, policy.model, { step: done, optimizerStep, rngState: rng.getState() },
          cfg.checkpoint.keep_last, cfg.model.path ?? null);
    }
  } finally {
    await pool.close();
    referenceModel?.dispose();
  }
  writeReport(runDir);
  return { runDir, steps: step, lastMetrics: last, model: policy.model, tokenizer: policy.tokenizer };
}
