// metrics.jsonl: one JSON object per GRPO step, appended as the run goes; on resume, lines past the resumed
// step are dropped so the file reads as one uninterrupted run.
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';

export interface StepMetrics {
  step: number;
  reward_mean: number;
  reward_std: number;
  success_rate: number;
  loss: number;
  kl: number;
  entropy: number;
  grad_norm: number;
  clip_fraction: number;
  lr: number;
  /** All tokens through the model this step (prefill + sampled + trained) over the step's wall time. */
  tokens_per_s: number;
  env_steps_per_s: number;
  step_seconds: number;
  sample_seconds: number;
  env_seconds: number;
  update_seconds: number;
  episodes: number;
  episode_steps_mean: number;
  env_failures: number;
  /** Prompt tokens the sampler prefilled this step (summed over its generate calls). */
  prompt_tokens: number;
  new_tokens: number;
  trained_samples: number;
  /** Mean |trainer log-prob − sampler log-prob| per token: 0 means the trained policy is the sampling one. */
  logprob_mismatch: number;
}

export function readMetrics(path: string): StepMetrics[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l, i) => {
      try {
        return JSON.parse(l) as StepMetrics;
      } catch {
        throw new Error(`${path}: line ${i + 1} is not valid JSON`);
      }
    });
}

export class MetricsLog {
  constructor(readonly path: string, resumedStep: number) {
    const kept = readMetrics(path).filter((m) => m.step <= resumedStep);
    writeFileSync(path, kept.map((m) => `${JSON.stringify(m)}\n`).join(''));
  }

  append(m: StepMetrics): void {
    appendFileSync(this.path, `${JSON.stringify(m)}\n`);
  }
}
