// GRPO math on host arrays: group-relative advantages, the clipped surrogate with optional KL to a reference
// policy, and its gradient with respect to each token's log-prob (the native engine backpropagates that).
// Formulas follow TRL's GRPOTrainer (see REFERENCE.md §5).

export type ScaleRewards = 'group' | 'batch' | 'none';
export type LossType = 'grpo' | 'bnpo' | 'dr_grpo' | 'dapo';

const STD_EPS = 1e-4;

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

/** Sample standard deviation (unbiased, like torch.std), 0 for fewer than 2 values. */
export function std(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
}

/**
 * Advantages for rewards laid out as groups (rewards[g][i]: completion i of group g).
 * 'group': (r - mean_g) / (std_g + 1e-4); 'batch': (r - mean_g) / (std over all + 1e-4); 'none': r - mean_g.
 */
export function groupAdvantages(rewards: readonly (readonly number[])[], scale: ScaleRewards): number[][] {
  const batchStd = std(rewards.flat());
  return rewards.map((group) => {
    const m = mean(group);
    const denom = scale === 'group' ? std(group) + STD_EPS : scale === 'batch' ? batchStd + STD_EPS : 1;
    return group.map((r) => (r - m) / denom);
  });
}

/** One training sample (one browser step's completion) as the loss sees it. */
export interface LossSample {
  advantage: number;
  /** Per completion token. */
  logprobs: Float32Array;
  oldLogprobs: Float32Array;
  /** Reference-policy log-probs, needed when beta > 0. */
  refLogprobs?: Float32Array;
}

export interface LossSettings {
  lossType: LossType;
  epsilonLow: number;
  epsilonHigh: number;
  beta: number;
  /** dr_grpo's constant denominator: the configured max completion length. */
  maxCompletionLength: number;
}

/**
 * Per-token weights such that loss = Σ_samples Σ_tokens weight · ℓ_token, for one whole optimizer batch.
 * Weights are fixed before the forward passes so micro-batches can add their gradients independently.
 * `totalTokens` and `numSamples` describe the whole batch.
 */
export function tokenWeight(lossType: LossType, sampleTokens: number, numSamples: number, totalTokens: number,
  maxCompletionLength: number): number {
  switch (lossType) {
    case 'grpo':
      return 1 / (Math.max(sampleTokens, 1) * numSamples);
    case 'bnpo':
    case 'dapo':
      // Without data parallelism TRL's bnpo (per local batch) and dapo (per global batch) normalise alike.
      return 1 / Math.max(totalTokens, 1);
    case 'dr_grpo':
      return 1 / (numSamples * maxCompletionLength);
  }
}

export interface LossResult {
  loss: number;
  /** dLoss/dlogprob per token, one array per sample. */
  gradients: Float32Array[];
  /** Mean KL to the reference over tokens (0 when beta is 0 and no reference was given). */
  kl: number;
  /** Fraction of tokens whose ratio was clipped (TRL's low + high region). */
  clipFraction: number;
  tokens: number;
}

/** Size of the whole optimizer batch, when `samples` is only one micro-batch of it. */
export interface BatchSize {
  numSamples: number;
  totalTokens: number;
}

export function batchSizeOf(samples: readonly { logprobs: ArrayLike<number> }[]): BatchSize {
  return { numSamples: samples.length, totalTokens: samples.reduce((a, x) => a + x.logprobs.length, 0) };
}

/**
 * The clipped GRPO objective and its gradient with respect to every token log-prob. With micro-batches, pass
 * the whole batch's size so that the micro-batches' losses and gradients add up to the batch's.
 */
export function grpoLoss(samples: readonly LossSample[], s: LossSettings, batch: BatchSize = batchSizeOf(samples)):
  LossResult {
  const totalTokens = samples.reduce((a, x) => a + x.logprobs.length, 0);
  let loss = 0;
  let klSum = 0;
  let clipped = 0;
  const gradients = samples.map((sample) => {
    const n = sample.logprobs.length;
    const w = tokenWeight(s.lossType, n, batch.numSamples, batch.totalTokens, s.maxCompletionLength);
    const a = sample.advantage;
    const grad = new Float32Array(n);
    for (let t = 0; t < n; t++) {
      const logp = sample.logprobs[t];
      const ratio = Math.exp(logp - sample.oldLogprobs[t]);
      const clippedRatio = Math.min(Math.max(ratio, 1 - s.epsilonLow), 1 + s.epsilonHigh);
      const unclippedTerm = ratio * a;
      const clippedTerm = clippedRatio * a;
      // -min(ρA, clip(ρ)A): the gradient flows only through the unclipped branch when it is the minimum.
      const useUnclipped = unclippedTerm <= clippedTerm;
      let tokenLoss = -Math.min(unclippedTerm, clippedTerm);
      let dTokenLoss = useUnclipped ? -unclippedTerm : 0;
      if ((ratio < 1 - s.epsilonLow && a < 0) || (ratio > 1 + s.epsilonHigh && a > 0)) clipped++;
      if (sample.refLogprobs) {
        const delta = sample.refLogprobs[t] - logp;
        const kl = Math.exp(delta) - delta - 1;
        klSum += kl;
        if (s.beta !== 0) {
          tokenLoss += s.beta * kl;
          dTokenLoss += s.beta * (1 - Math.exp(delta));
        }
      }
      loss += w * tokenLoss;
      grad[t] = w * dTokenLoss;
    }
    return grad;
  });
  return {
    loss,
    gradients,
    kl: totalTokens ? klSum / totalTokens : 0,
    clipFraction: totalTokens ? clipped / totalTokens : 0,
    tokens: totalTokens,
  };
}
