import { describe, expect, it } from 'vitest';
import { groupAdvantages, grpoLoss, std, type LossSettings } from '../../src/training/grpo.js';
import { learningRate } from '../../src/training/schedule.js';
import { allowedAlongPath, buildActionTrie, packAllowed } from '../../src/training/constraint.js';

const base: LossSettings = { lossType: 'grpo', epsilonLow: 0.2, epsilonHigh: 0.2, beta: 0, maxCompletionLength: 4 };

describe('advantages', () => {
  it('normalises within each group with the unbiased std', () => {
    // group [1,0,0,1]: mean 0.5, std sqrt(1/3)
    const [[a, b]] = groupAdvantages([[1, 0, 0, 1]], 'group');
    expect(a).toBeCloseTo(0.5 / (Math.sqrt(1 / 3) + 1e-4), 10);
    expect(b).toBeCloseTo(-0.5 / (Math.sqrt(1 / 3) + 1e-4), 10);
  });
  it('a group with equal rewards has zero advantage', () => {
    expect(groupAdvantages([[1, 1, 1]], 'group')[0]).toEqual([0, 0, 0]);
  });
  it('batch scaling divides by the std over all rewards, none only centres', () => {
    const rewards = [[1, 0], [1, 1]];
    const s = std([1, 0, 1, 1]);
    expect(groupAdvantages(rewards, 'batch')[0][0]).toBeCloseTo(0.5 / (s + 1e-4), 10);
    expect(groupAdvantages(rewards, 'none')).toEqual([[0.5, -0.5], [0, 0]]);
  });
});

describe('clipped loss', () => {
  const f = (xs: number[]) => Float32Array.from(xs);
  it('on-policy (ratio 1): loss is -A per token, gradient -A times the token weight', () => {
    // grpo: mean over each sample's tokens, then over samples.
    const samples = [
      { advantage: 2, logprobs: f([-1, -2]), oldLogprobs: f([-1, -2]) },
      { advantage: -1, logprobs: f([-0.5]), oldLogprobs: f([-0.5]) },
    ];
    const r = grpoLoss(samples, base);
    expect(r.loss).toBeCloseTo((-2 + 1) / 2, 6);
    expect(Array.from(r.gradients[0])).toEqual([-2 / 4, -2 / 4].map(Math.fround));
    expect(r.gradients[1][0]).toBeCloseTo(1 / 2, 6);
    expect(r.clipFraction).toBe(0);
  });
  it('each loss type normalises as TRL does', () => {
    const samples = [
      { advantage: 1, logprobs: f([-1, -1, -1]), oldLogprobs: f([-1, -1, -1]) },
      { advantage: 1, logprobs: f([-1]), oldLogprobs: f([-1]) },
    ];
    // grpo: (mean(-1,-1,-1) + mean(-1)) / 2 = -1
    expect(grpoLoss(samples, base).loss).toBeCloseTo(-1, 6);
    // bnpo / dapo: sum / tokens = -4/4
    expect(grpoLoss(samples, { ...base, lossType: 'bnpo' }).loss).toBeCloseTo(-1, 6);
    expect(grpoLoss(samples, { ...base, lossType: 'dapo' }).gradients[1][0]).toBeCloseTo(-1 / 4, 6);
    // dr_grpo: sum / (B * max_completion_length) = -4 / (2*4)
    expect(grpoLoss(samples, { ...base, lossType: 'dr_grpo' }).loss).toBeCloseTo(-0.5, 6);
    // grpo's token weight differs by sample length: 1/(3*2) vs 1/(1*2)
    const g = grpoLoss(samples, base).gradients;
    expect(g[0][0]).toBeCloseTo(-1 / 6, 6);
    expect(g[1][0]).toBeCloseTo(-1 / 2, 6);
  });
  it('clips: positive advantage above 1+ε has no gradient, below it flows', () => {
    const hi = Math.log(1.5); // ratio 1.5 > 1.2
    const r = grpoLoss([{ advantage: 1, logprobs: f([hi]), oldLogprobs: f([0]) }], base);
    expect(r.loss).toBeCloseTo(-1.2, 5);
    expect(r.gradients[0][0]).toBe(0);
    expect(r.clipFraction).toBe(1);
    // negative advantage with ratio 1.5: min(-1.5, -1.2) = -1.5 is the unclipped branch → gradient -ρA = 1.5
    const n = grpoLoss([{ advantage: -1, logprobs: f([hi]), oldLogprobs: f([0]) }], base);
    expect(n.loss).toBeCloseTo(1.5, 5);
    expect(n.gradients[0][0]).toBeCloseTo(1.5, 5);
    expect(n.clipFraction).toBe(0);
    // negative advantage below 1-ε: clipped, no gradient
    const lo = grpoLoss([{ advantage: -1, logprobs: f([Math.log(0.5)]), oldLogprobs: f([0]) }], base);
    expect(lo.loss).toBeCloseTo(0.8, 5);
    expect(lo.gradients[0][0]).toBe(0);
  });
  it('asymmetric epsilons (DAPO clip-higher)', () => {
    const r = grpoLoss([{ advantage: 1, logprobs: f([Math.log(1.25)]), oldLogprobs: f([0]) }],
      { ...base, epsilonHigh: 0.28 });
    expect(r.loss).toBeCloseTo(-1.25, 5);
    expect(r.gradients[0][0]).toBeCloseTo(-1.25, 5);
  });
  it('KL term k3 = exp(ref-logp) - (ref-logp) - 1 and its gradient', () => {
    const logp = -1, ref = -1.5;
    const d = ref - logp;
    const r = grpoLoss([{ advantage: 0, logprobs: f([logp]), oldLogprobs: f([logp]), refLogprobs: f([ref]) }],
      { ...base, beta: 0.1 });
    expect(r.kl).toBeCloseTo(Math.exp(d) - d - 1, 6);
    expect(r.loss).toBeCloseTo(0.1 * (Math.exp(d) - d - 1), 6);
    expect(r.gradients[0][0]).toBeCloseTo(0.1 * (1 - Math.exp(d)), 6);
  });
  it('gradient matches a finite difference of the loss', () => {
    const settings = { ...base, lossType: 'dapo' as const, beta: 0.05 };
    const lp = [-0.7, -1.3, -0.2];
    const make = (x: number[]) => [{ advantage: 0.8, logprobs: f(x), oldLogprobs: f([-0.75, -1.2, -0.2]),
      refLogprobs: f([-0.9, -1.0, -0.4]) }];
    const g = grpoLoss(make(lp), settings).gradients[0];
    for (let i = 0; i < 3; i++) {
      const h = 1e-3;
      const up = lp.slice(); up[i] += h;
      const dn = lp.slice(); dn[i] -= h;
      const fd = (grpoLoss(make(up), settings).loss - grpoLoss(make(dn), settings).loss) / (2 * h);
      expect(g[i]).toBeCloseTo(fd, 3);
    }
  });
  it('micro-batches add up to the whole batch', () => {
    const samples = [
      { advantage: 1, logprobs: f([-1, -2]), oldLogprobs: f([-1.1, -2]) },
      { advantage: -1, logprobs: f([-0.5, -0.1, -3]), oldLogprobs: f([-0.5, -0.2, -3]) },
    ];
    for (const lossType of ['grpo', 'bnpo', 'dr_grpo', 'dapo'] as const) {
      const s = { ...base, lossType };
      const whole = grpoLoss(samples, s);
      const batch = { numSamples: 2, totalTokens: 5 };
      const parts = grpoLoss([samples[0]], s, batch).loss + grpoLoss([samples[1]], s, batch).loss;
      expect(parts).toBeCloseTo(whole.loss, 6);
    }
  });
});

describe('schedule', () => {
  const s = { lr: 1, warmupSteps: 4, totalSteps: 14, schedule: 'cosine' as const, minLrRatio: 0.1 };
  it('warms up linearly from the first step, then decays by cosine', () => {
    expect(learningRate(0, s)).toBeCloseTo(0.25);
    expect(learningRate(3, s)).toBeCloseTo(1);
    expect(learningRate(9, s)).toBeCloseTo(0.1 + 0.9 * 0.5);
    expect(learningRate(14, s)).toBeCloseTo(0.1);
    expect(learningRate(9, { ...s, schedule: 'constant' })).toBe(1);
  });
});

describe('action trie', () => {
  const encode = (t: string) => Array.from(t, (c) => c.charCodeAt(0));
  it('allows exactly the valid continuations at each step and ends with the end token', () => {
    const trie = buildActionTrie(["click('1')", "click('12')", 'noop()'], encode, 0);
    const completion = [...encode("click('12')"), 0];
    const rows = allowedAlongPath(trie, completion);
    expect(Array.from(rows[0])).toEqual(['c', 'n'].map((c) => c.charCodeAt(0)));
    expect(Array.from(rows[8])).toEqual(['2', "'"].map((c) => c.charCodeAt(0)).sort((a, b) => a - b));
    expect(Array.from(rows[rows.length - 1])).toEqual([0]);
    const packed = packAllowed(rows);
    expect(packed.offsets.length).toBe(rows.length + 1);
    expect(() => allowedAlongPath(trie, encode('x'))).toThrow(/not in the trie/);
  });
});
