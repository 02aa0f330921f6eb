// The native engine against PyTorch + transformers (tests/fixtures/parity-tiny, written by
// tests/parity/make_fixtures.py): logits, token log-probs and loss within 1e-5, every gradient within 1e-4,
// errors relative to the largest |value| of each expected tensor.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lfm2Model } from '../../src/model/lfm2.js';
import { parseSafetensors, toFloat32 } from '../../src/model/safetensors.js';
import { HAVE_ADDON, NO_ADDON_REASON } from './addon-available.js';

const DIR = join(import.meta.dirname, '..', 'fixtures', 'parity-tiny');
const EXPECTED = join(DIR, 'expected.safetensors');
const HAVE_FIXTURE = existsSync(EXPECTED);
const reason = NO_ADDON_REASON || (HAVE_FIXTURE ? '' : ` [SKIPPED: ${EXPECTED} absent; run tests/parity/make_fixtures.py]`);

function relErr(got: ArrayLike<number>, want: ArrayLike<number>, pick?: (i: number) => boolean): number {
  expect(got.length).toBe(want.length);
  let maxDiff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    if (pick && !pick(i)) continue;
    maxDiff = Math.max(maxDiff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  if (!Number.isFinite(maxDiff)) return Infinity;
  return scale === 0 ? maxDiff : maxDiff / scale;
}

describe.skipIf(!HAVE_ADDON || !HAVE_FIXTURE)(`CPU backend matches PyTorch on the tiny LFM2${reason}`, () => {
  let model: Lfm2Model;
  let fixture: ReturnType<typeof parseSafetensors>;
  const f32 = (name: string) => toFloat32(new Uint8Array(fixture.data(name)), fixture.tensors.get(name)!.dtype);
  let batch: { tokens: Int32Array; attentionMask: Uint8Array; batchSize: number; seqLen: number };
  let scoreMask: Uint8Array;

  beforeAll(async () => {
    model = await Lfm2Model.fromPretrained(DIR, { backend: 'cpu' });
    fixture = parseSafetensors(readFileSync(EXPECTED), EXPECTED);
    const [B, T] = fixture.tensors.get('input_ids')!.shape;
    batch = {
      tokens: new Int32Array(new Uint8Array(fixture.data('input_ids')).buffer),
      attentionMask: new Uint8Array(fixture.data('attention_mask')),
      batchSize: B,
      seqLen: T,
    };
    scoreMask = new Uint8Array(fixture.data('score_mask'));
  });
  afterAll(() => model?.dispose());

  it('logits at real positions (rel err <= 1e-5)', async () => {
    const logits = await model.native.forwardLogits(batch);
    const V = model.config.vocabSize;
    const err = relErr(logits, f32('logits'), (i) => batch.attentionMask[Math.floor(i / V)] === 1);
    expect(err).toBeLessThanOrEqual(1e-5);
  });

  it('token log-probs and loss (<= 1e-5), then every gradient (<= 1e-4)', async () => {
    const want = f32('token_logprobs');
    const scored = [...scoreMask.keys()].filter((i) => scoreMask[i] === 1);
    model.native.zeroGrad();
    const { logprobs } = await model.native.score({ ...batch, scoreMask, temperature: 1, keepActivations: true });
    expect(relErr(logprobs, scored.map((i) => want[i]))).toBeLessThanOrEqual(1e-5);
    const loss = -logprobs.reduce((s, x) => s + x, 0) / logprobs.length;
    expect(relErr([loss], f32('loss'))).toBeLessThanOrEqual(1e-5);

    await model.native.backward(new Float32Array(logprobs.length).fill(-1 / logprobs.length));
    const failures: string[] = [];
    for (const { name } of model.native.parameterInfo()) {
      const g = model.native.getGradient(name);
      try {
        const err = relErr(g.toFloat32(), f32(`grad.${name}`));
        if (!(err <= 1e-4)) failures.push(`${name}: rel err ${err.toExponential(2)}`);
      } finally {
        g.dispose();
      }
    }
    expect(failures).toEqual([]);
  });
});

const GREEDY = join(DIR, 'greedy.json');
const greedyReason = NO_ADDON_REASON || (existsSync(GREEDY) ? '' : ` [SKIPPED: ${GREEDY} absent; run tests/parity/make_greedy_fixture.py]`);

describe.skipIf(!HAVE_ADDON || !existsSync(GREEDY))(`greedy generate matches transformers' generate on the tiny LFM2${greedyReason}`, () => {
  it('the same tokens for every prompt (prefill, KV and conv caches, then decoding)', async () => {
    const fixture = JSON.parse(readFileSync(GREEDY, 'utf8')) as { cases: { prompt: number[]; tokens: number[]; top2_margin: number[] }[] };
    // A step whose top two logits are closer than fp32 noise could go either way; the fixture has none.
    for (const c of fixture.cases) expect(Math.min(...c.top2_margin)).toBeGreaterThan(1e-4);
    const model = await Lfm2Model.fromPretrained(DIR, { backend: 'cpu' });
    try {
      const results = await model.native.generate({
        prompts: fixture.cases.map((c) => Int32Array.from(c.prompt)),
        sequencePrompt: Int32Array.from(fixture.cases, (_, i) => i),
        maxNewTokens: fixture.cases[0].tokens.length,
        stopTokens: new Int32Array(0),
        sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, greedy: true, seed: 0 },
      });
      expect(results.map((r) => [...r.tokens])).toEqual(fixture.cases.map((c) => c.tokens));
    } finally {
      model.dispose();
    }
  });
});
