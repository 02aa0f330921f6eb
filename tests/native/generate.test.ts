// The CPU twin of the sampling engine: cached decoding against full re-runs, prompt forking, constraints,
// seeding, and log-probs that score() reproduces.
import { describe, expect, it } from 'vitest';
import type { GenerateRequest, NativeModel, SamplingParams, TokenTrie } from '../../src/native/addon.js';
import { addon, argmax, tinyModel } from './helpers.js';

const V = 64;
const sampling = (overrides: Partial<SamplingParams> = {}): SamplingParams => ({
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  greedy: false,
  seed: 1,
  ...overrides,
});

/** A trie over token sequences; node 0 is the root. */
function buildTrie(paths: number[][]): TokenTrie {
  const children: Map<number, number>[] = [new Map()];
  for (const path of paths) {
    let node = 0;
    for (const tok of path) {
      let next = children[node].get(tok);
      if (next === undefined) {
        next = children.length;
        children.push(new Map());
        children[node].set(tok, next);
      }
      node = next;
    }
  }
  const childOffsets = [0];
  const childTokens: number[] = [];
  const childNodes: number[] = [];
  for (const edges of children) {
    for (const [tok, node] of edges) {
      childTokens.push(tok);
      childNodes.push(node);
    }
    childOffsets.push(childTokens.length);
  }
  return { childOffsets: Int32Array.from(childOffsets), childTokens: Int32Array.from(childTokens), childNodes: Int32Array.from(childNodes) };
}

function childrenOf(trie: TokenTrie, node: number): Map<number, number> {
  const out = new Map<number, number>();
  for (let e = trie.childOffsets[node]; e < trie.childOffsets[node + 1]; e++) out.set(trie.childTokens[e], trie.childNodes[e]);
  return out;
}

const ACTIONS = [
  [5, 6, 7],
  [5, 8, 9, 10],
  [5, 8, 11],
  [12, 13],
  [14, 15, 16, 17, 18],
];

/** Scores prompt+generated tokens with the same temperature and the allowed sets the trie gave at each step. */
async function rescore(model: NativeModel, prompt: number[], tokens: Int32Array, temperature: number, trie?: TokenTrie) {
  const seq = [...prompt, ...tokens];
  const scoreMask = new Uint8Array(seq.length);
  const offsets = [0];
  const allowed: number[] = [];
  let node = 0;
  for (let i = 0; i < tokens.length; i++) {
    scoreMask[prompt.length + i] = 1;
    if (trie) {
      const kids = childrenOf(trie, node);
      allowed.push(...kids.keys());
      offsets.push(allowed.length);
      node = kids.get(tokens[i])!;
    }
  }
  return model.score({
    tokens: Int32Array.from(seq),
    attentionMask: new Uint8Array(seq.length).fill(1),
    batchSize: 1,
    seqLen: seq.length,
    scoreMask,
    temperature,
    allowed: trie ? { offsets: Int32Array.from(offsets), tokens: Int32Array.from(allowed) } : undefined,
    keepActivations: false,
  });
}

describe('CPU generate', () => {
  it('greedy decoding with caches equals argmax of forwardLogits re-run on the growing sequence', async () => {
    const model = tinyModel(21, 0.5);
    const prompts = [[1, 20, 31, 42, 53], [1, 9]];
    const [a, b] = await model.generate({
      prompts: prompts.map((p) => Int32Array.from(p)),
      sequencePrompt: Int32Array.from([0, 1]),
      maxNewTokens: 10,
      stopTokens: new Int32Array(0),
      sampling: sampling({ greedy: true, temperature: 0.3 }),
    });
    for (const [prompt, result] of [[prompts[0], a], [prompts[1], b]] as const) {
      expect(result.tokens.length).toBe(10);
      expect(result.finishReason).toBe('length');
      const seq = [...prompt];
      for (let i = 0; i < result.tokens.length; i++) {
        const logits = await model.forwardLogits({
          tokens: Int32Array.from(seq),
          attentionMask: new Uint8Array(seq.length).fill(1),
          batchSize: 1,
          seqLen: seq.length,
        });
        const last = (seq.length - 1) * V;
        const best = argmax(logits, last, V);
        expect(result.tokens[i]).toBe(best);
        // Greedy log-probs are under temperature 1.
        const row = Array.from(logits.subarray(last, last + V));
        const max = Math.max(...row);
        const lse = max + Math.log(row.reduce((s, z) => s + Math.exp(z - max), 0));
        expect(result.logprobs[i]).toBeCloseTo(row[best] - lse, 4);
        seq.push(best);
      }
    }
    model.dispose();
  });

  it('forking a shared prompt gives the same sequences as separate copies of the prompt', async () => {
    const model = tinyModel(22, 0.5);
    const p0 = Int32Array.from([1, 2, 3, 4]);
    const p1 = Int32Array.from([1, 40, 41]);
    const common = { maxNewTokens: 12, stopTokens: Int32Array.from([7]), sampling: sampling({ seed: 5, topK: 20, topP: 0.9, minP: 0.02, repetitionPenalty: 1.1 }) };
    const shared = await model.generate({ ...common, prompts: [p0, p1], sequencePrompt: Int32Array.from([0, 1, 0, 1]) });
    const separate = await model.generate({ ...common, prompts: [p0, p1, p0, p1], sequencePrompt: Int32Array.from([0, 1, 2, 3]) });
    expect(separate).toEqual(shared);
    // Results do not depend on batch composition: sequence 0 alone is sequence 0 of the batch.
    const alone = await model.generate({ ...common, prompts: [p0], sequencePrompt: Int32Array.from([0]) });
    expect(alone[0]).toEqual(shared[0]);
    // The two copies of each prompt sampled differently (per-sequence RNG streams).
    expect(Array.from(shared[0].tokens)).not.toEqual(Array.from(shared[2].tokens));
    model.dispose();
  });

  it('is reproducible from the seed and changes with it', async () => {
    const model = tinyModel(23, 0.3);
    const request = (seed: number): GenerateRequest => ({
      prompts: [Int32Array.from([1, 2, 3])],
      sequencePrompt: Int32Array.from([0, 0, 0]),
      maxNewTokens: 16,
      stopTokens: new Int32Array(0),
      sampling: sampling({ seed, temperature: 1.2 }),
    });
    const first = await model.generate(request(42));
    expect(await model.generate(request(42))).toEqual(first);
    const other = await model.generate(request(43));
    expect(other.map((r) => Array.from(r.tokens))).not.toEqual(first.map((r) => Array.from(r.tokens)));
    model.dispose();
  });

  it('always honours constraint tries and ends at a leaf', async () => {
    const model = tinyModel(24, 0.5);
    const trie = buildTrie(ACTIONS);
    const leaves = new Set(ACTIONS.map((a) => a.join(',')));
    const n = 24;
    const results = await model.generate({
      prompts: [Int32Array.from([1, 3, 5])],
      sequencePrompt: new Int32Array(n),
      maxNewTokens: 10,
      stopTokens: new Int32Array(0),
      sampling: sampling({ seed: 9, temperature: 2 }),
      constraints: Array.from({ length: n }, (_, i) => (i % 4 === 3 ? null : trie)),
    });
    const seen = new Set<string>();
    results.forEach((r, i) => {
      if (i % 4 === 3) {
        expect(r.finishReason).toBe('length');
        return;
      }
      expect(r.finishReason).toBe('constraint');
      expect(leaves.has(Array.from(r.tokens).join(','))).toBe(true);
      seen.add(Array.from(r.tokens).join(','));
    });
    expect(seen.size).toBeGreaterThan(1); // temperature 2 explores several branches
    model.dispose();
  });

  it('stops on a stop token and at maxNewTokens, keeping the stop token', async () => {
    const model = tinyModel(25, 0.5);
    const trie = buildTrie([[3, 7, 9, 9, 9]]);
    const [stopped, capped] = await model.generate({
      prompts: [Int32Array.from([1, 2])],
      sequencePrompt: Int32Array.from([0, 0]),
      maxNewTokens: 3,
      stopTokens: Int32Array.from([7]),
      sampling: sampling(),
      constraints: [trie, buildTrie([[4, 4, 4, 4, 4]])],
    });
    expect(Array.from(stopped.tokens)).toEqual([3, 7]);
    expect(stopped.finishReason).toBe('stop');
    expect(Array.from(capped.tokens)).toEqual([4, 4, 4]);
    expect(capped.finishReason).toBe('length');
    model.dispose();
  });

  it('returns log-probs that score() reproduces with the same temperature and masks', async () => {
    const model = tinyModel(26, 0.4);
    const trie = buildTrie(ACTIONS);
    const prompt = [1, 11, 22, 33];
    const temperature = 0.8;
    const results = await model.generate({
      prompts: [Int32Array.from(prompt)],
      sequencePrompt: new Int32Array(6),
      maxNewTokens: 8,
      stopTokens: new Int32Array(0),
      sampling: sampling({ seed: 3, temperature }),
      constraints: [trie, trie, trie, null, null, null],
    });
    for (const [i, r] of results.entries()) {
      const { logprobs } = await rescore(model, prompt, r.tokens, temperature, i < 3 ? trie : undefined);
      expect(logprobs.length).toBe(r.logprobs.length);
      for (let k = 0; k < logprobs.length; k++) expect(Math.abs(logprobs[k] - r.logprobs[k])).toBeLessThan(1e-4);
    }
    model.dispose();
  });

  it('samples from the tempered distribution and honours top-k, top-p and min-p', async () => {
    const model = tinyModel(28, 0.6);
    const prompt = Int32Array.from([1, 17, 33]);
    const logits = await model.forwardLogits({ tokens: prompt, attentionMask: new Uint8Array(3).fill(1), batchSize: 1, seqLen: 3 });
    const temperature = 0.7;
    const row = Array.from(logits.subarray(2 * V, 3 * V), (z) => z / temperature);
    const max = Math.max(...row);
    const weights = row.map((z) => Math.exp(z - max));
    const total = weights.reduce((a, b) => a + b, 0);
    const probs = weights.map((w) => w / total);
    const ranked = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
    const n = 4000;
    const draw = async (overrides: Partial<SamplingParams>) => {
      const results = await model.generate({
        prompts: [prompt],
        sequencePrompt: new Int32Array(n),
        maxNewTokens: 1,
        stopTokens: new Int32Array(0),
        sampling: sampling({ temperature, seed: 77, ...overrides }),
      });
      const counts = new Array(V).fill(0);
      for (const r of results) counts[r.tokens[0]]++;
      return counts;
    };
    // Plain sampling: empirical frequencies close to the softmax (total variation distance).
    const counts = await draw({});
    const tv = counts.reduce((acc, c, v) => acc + Math.abs(c / n - probs[v]), 0) / 2;
    expect(tv).toBeLessThan(0.05);
    // top-k: only the k most likely tokens.
    const topK = await draw({ topK: 3 });
    expect(counts.filter((c) => c > 0).length).toBeGreaterThan(3);
    topK.forEach((c, v) => c > 0 && expect(ranked.indexOf(v)).toBeLessThan(3));
    // top-p: only the smallest most-likely prefix holding 60% of the mass.
    let mass = 0;
    let prefix = 0;
    while (mass < 0.6) mass += probs[ranked[prefix++]];
    const topP = await draw({ topP: 0.6 });
    topP.forEach((c, v) => c > 0 && expect(ranked.indexOf(v)).toBeLessThan(prefix));
    // min-p: only tokens with p >= minP * max p.
    const minP = await draw({ minP: 0.3 });
    minP.forEach((c, v) => c > 0 && expect(probs[v]).toBeGreaterThanOrEqual(0.3 * probs[ranked[0]] - 1e-6));
    model.dispose();
  });

  it('rejects malformed requests with errors that name the field', async () => {
    const model = tinyModel(27, 0.1);
    const base: GenerateRequest = {
      prompts: [Int32Array.from([1, 2])],
      sequencePrompt: Int32Array.from([0]),
      maxNewTokens: 2,
      stopTokens: new Int32Array(0),
      sampling: sampling(),
    };
    await expect(model.generate({ ...base, sequencePrompt: Int32Array.from([1]) })).rejects.toThrow(/sequencePrompt\[0\] = 1/);
    await expect(model.generate({ ...base, prompts: [Int32Array.from([1, 999])] })).rejects.toThrow(/prompt 0 has token 999/);
    await expect(model.generate({ ...base, prompts: [new Int32Array(0)] })).rejects.toThrow(/prompt 0 is empty/);
    await expect(model.generate({ ...base, sampling: sampling({ topP: 0 }) })).rejects.toThrow(/topP/);
    await expect(model.generate({ ...base, constraints: [] })).rejects.toThrow(/constraints has 0 entries for 1 sequences/);
    const bad = buildTrie([[1, 2]]);
    bad.childNodes[0] = 77;
    await expect(model.generate({ ...base, constraints: [bad] })).rejects.toThrow(/constraints\[0\].*node 77/);
    model.setParameter('model.embedding_norm.weight', addon().tensorFromFloat32(new Float32Array(32).fill(NaN), [32], 'f32', 'cpu'));
    await expect(model.generate(base)).rejects.toThrow(/generate: the model produced non-finite logits for sequence 0/);
    model.dispose();
  });
});

describe('CPU generation sessions (continuous batching)', () => {
  const settings = (capacity: number, overrides: Partial<SamplingParams> = {}) => {
    const { seed: _seed, ...s } = sampling({ topK: 30, repetitionPenalty: 1.1, ...overrides });
    return { maxNewTokens: 9, stopTokens: Int32Array.from([7]), sampling: s, capacity };
  };
  const prompts = [[1, 2, 3, 4], [1, 40, 41], [1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], [1, 33]].map((p) => Int32Array.from(p));

  /** What generate() gives each prompt alone: the reference for every schedule below. */
  async function alone(model: NativeModel, prompt: Int32Array, seed: number, overrides: Partial<SamplingParams> = {}, trie?: TokenTrie) {
    const s = settings(1, overrides);
    const [r] = await model.generate({ prompts: [prompt], sequencePrompt: Int32Array.of(0), maxNewTokens: s.maxNewTokens,
      stopTokens: s.stopTokens, sampling: { ...s.sampling, seed }, constraints: trie ? [trie] : undefined });
    return r;
  }

  it('sequences that join a running batch sample what they would sample alone', async () => {
    const model = tinyModel(31, 0.5);
    // The first sequence follows a trie whose paths end within 5 tokens, so it finishes (at a leaf) while the
    // second, unconstrained with 9 tokens to go, still decodes (unless it drew the stop token at that very step):
    // this does not hang on what the draws happen to be.
    const trie = buildTrie(ACTIONS);
    const want = [];
    for (const [i, p] of prompts.entries()) want.push(await alone(model, p, 100 + i, {}, i === 0 ? trie : undefined));
    model.startGeneration(settings(3));
    const got = new Map<number, unknown>();
    const ids: number[] = [];
    ids.push(model.addSequences({ prompts: [prompts[0]], sequencePrompt: Int32Array.of(0), constraints: [trie], seed: 100 }));
    ids.push(model.addSequences({ prompts: [prompts[1]], sequencePrompt: Int32Array.of(0), seed: 101 }));
    let steps = 0;
    let joinedWhileRunning = false;
    for (;;) {
      for (const f of await model.stepGeneration()) {
        const { id, ...result } = f;
        got.set(id, result);
      }
      steps++;
      // The next prompts join between steps, while earlier sequences are still decoding.
      if (steps === 1) {
        joinedWhileRunning = model.generationStatus().running > 0;
        ids.push(model.addSequences({ prompts: [prompts[2]], sequencePrompt: Int32Array.of(0), seed: 102 }));
      }
      if (steps === 2) ids.push(model.addSequences({ prompts: [prompts[3]], sequencePrompt: Int32Array.of(0), seed: 103 }));
      const st = model.generationStatus();
      if (steps > 2 && st.queued === 0 && st.running === 0) break;
    }
    expect(joinedWhileRunning).toBe(true);
    expect(ids).toEqual([0, 1, 2, 3]);
    expect(await model.stepGeneration()).toEqual([]);
    model.endGeneration();
    expect(ids.map((id) => got.get(id))).toEqual(want);
    model.dispose();
  });

  it('queues sequences beyond its capacity and runs them as rows free up', async () => {
    const model = tinyModel(32, 0.5);
    const trie = buildTrie(ACTIONS);
    const want = [];
    for (const [i, p] of prompts.entries()) want.push(await alone(model, p, i === 1 ? 7 : 0, {}, i % 2 ? undefined : trie));
    model.startGeneration(settings(2));
    const ids = prompts.map((p, i) => model.addSequences({ prompts: [p], sequencePrompt: Int32Array.of(0),
      constraints: [i % 2 ? null : trie], seed: i === 1 ? 7 : 0 }));
    expect(model.generationStatus()).toEqual({ queued: 4, running: 0 });
    const got = new Map<number, unknown>();
    let most = 0;
    while (got.size < prompts.length) {
      const finished = await model.stepGeneration();
      expect(finished.length).toBeGreaterThan(0);
      for (const { id, ...result } of finished) got.set(id, result);
      most = Math.max(most, model.generationStatus().running);
    }
    expect(most).toBeLessThanOrEqual(2);
    model.endGeneration();
    expect(ids.map((id) => got.get(id))).toEqual(want);
    model.dispose();
  });

  it('one batch in a session equals generate() on it, shared prompts included', async () => {
    const model = tinyModel(33, 0.5);
    const s = settings(8, { topP: 0.9 });
    const batch = { prompts: [prompts[0], prompts[1]], sequencePrompt: Int32Array.from([0, 1, 0, 1, 0]), seed: 44 };
    const want = await model.generate({ ...batch, maxNewTokens: s.maxNewTokens, stopTokens: s.stopTokens,
      sampling: { ...s.sampling, seed: 44 } });
    model.startGeneration(s);
    model.addSequences(batch);
    const got: unknown[] = [];
    // Count results: sequences finish in any order (a later id may finish first).
    let received = 0;
    while (received < 5) {
      for (const { id, ...r } of await model.stepGeneration()) {
        got[id] = r;
        received++;
      }
    }
    model.endGeneration();
    expect(got).toEqual(want);
    model.dispose();
  });

  it('refuses what a session cannot do, clearly, and loses nothing', async () => {
    const model = tinyModel(34, 0.5);
    expect(() => model.addSequences({ prompts: [prompts[0]], sequencePrompt: Int32Array.of(0), seed: 1 }))
      .toThrow(/no generation session is open/);
    expect(() => model.startGeneration({ ...settings(2), capacity: 0 })).toThrow(/capacity/);
    model.startGeneration(settings(2));
    expect(() => model.startGeneration(settings(2))).toThrow(/already open/);
    await expect(model.generate({ prompts: [prompts[0]], sequencePrompt: Int32Array.of(0), maxNewTokens: 2,
      stopTokens: new Int32Array(0), sampling: sampling() })).rejects.toThrow(/another generation session is open/);
    expect(() => model.initRandom(1, 0.1)).toThrow(/generation session is open/);
    model.addSequences({ prompts: [prompts[0]], sequencePrompt: Int32Array.of(0), seed: 1 });
    expect(() => model.addSequences({ prompts: [Int32Array.of(1, V)], sequencePrompt: Int32Array.of(0), seed: 1 }))
      .toThrow(/outside the vocabulary/);
    expect(() => model.addSequences({ prompts: [prompts[0]], sequencePrompt: Int32Array.of(1), seed: 1 }))
      .toThrow(/sequencePrompt\[0\] = 1/);
    expect(model.generationStatus()).toEqual({ queued: 1, running: 0 });
    const [f] = await model.stepGeneration();
    expect(f.id).toBe(0);
    model.endGeneration();
    model.endGeneration();
    model.initRandom(1, 0.1);  // weights can change again
    model.dispose();
  });
});
