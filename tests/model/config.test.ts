import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  HF_PRESETS,
  PRESET_NAMES,
  configToHf,
  effectiveFfDim,
  lfm2Preset,
  parameterCount,
  parameterShapes,
  parseLfm2Config,
} from '../../src/model/config.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');
const readJson = (name: string) => JSON.parse(readFileSync(join(FIXTURES, name), 'utf8'));

const base350 = HF_PRESETS['LFM2-350M'];

describe('LFM2 presets', () => {
  it('LFM2-350M has 148 tensors and exactly 354,483,968 parameters', () => {
    const c = lfm2Preset('LFM2-350M');
    expect(parameterShapes(c)).toHaveLength(148);
    expect(parameterCount(c)).toBe(354_483_968);
    expect(c.intermediateSize).toBe(4608);
    expect(c.headDim).toBe(64);
    expect(c.layerTypes.map((t) => (t === 'conv' ? 'c' : 'A')).join('')).toBe('ccAccAccAcAcAcAc');
    expect([c.bosTokenId, c.eosTokenId, c.padTokenId, c.ropeTheta, c.tieEmbeddings]).toEqual([1, 7, 0, 1e6, true]);
  });

  it('LFM2-700M and LFM2-1.2B match the published parameter counts', () => {
    expect(parameterCount(lfm2Preset('LFM2-700M'))).toBe(742_489_344);
    const big = lfm2Preset('LFM2-1.2B');
    expect(big.intermediateSize).toBe(8192);
    expect(parameterCount(big)).toBe(1_170_340_608);
  });

  it('tiny has both layer kinds, GQA and the tiny tokenizer vocabulary', () => {
    const c = lfm2Preset('tiny');
    expect(c.layerTypes).toEqual(['conv', 'attention', 'conv', 'attention']);
    expect([c.hiddenSize, c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize]).toEqual([64, 4, 2, 16, 160]);
    const tok = JSON.parse(readFileSync(join(import.meta.dirname, '../../assets/tiny-tokenizer/tokenizer.json'), 'utf8'));
    expect(c.vocabSize).toBe(Object.keys(tok.model.vocab).length);
  });

  it('rejects an unknown preset by name', () => {
    expect(() => lfm2Preset('LFM2-9000B')).toThrow(/unknown LFM2 preset "LFM2-9000B".*LFM2-350M/);
  });

  it.each(PRESET_NAMES)('configToHf(%s) parses back to the same config', (name) => {
    const c = lfm2Preset(name);
    expect(parseLfm2Config(JSON.parse(JSON.stringify(configToHf(c))))).toEqual(c);
  });
});

describe('config.json quirks', () => {
  it('block_ff_dim overrides intermediate_size; the 2/3 rule rounds up to block_multiple_of', () => {
    expect(parseLfm2Config({ ...base350, intermediate_size: 1000 }).intermediateSize).toBe(4608);
    expect(effectiveFfDim(6656, true, 1.0, 256)).toBe(4608);
    expect(effectiveFfDim(232, true, 1.0, 32)).toBe(160);
    expect(effectiveFfDim(6656, true, 1.5, 256)).toBe(6656); // int(1.5*4437)=6655 -> 6656
    expect(effectiveFfDim(6656, false, 1.0, 256)).toBe(6656);
    // transformers applies the multiplier and the rounding only when a multiplier is set.
    expect(effectiveFfDim(6656, true, null, 256)).toBe(4437);
    const { block_ff_dim: _drop, ...noBlock } = base350;
    expect(parseLfm2Config({ ...noBlock, intermediate_size: 6912, block_auto_adjust_ff_dim: false }).intermediateSize).toBe(6912);
  });

  it('tie_embedding overrides tie_word_embeddings, and an untied model gets lm_head.weight', () => {
    const untied = parseLfm2Config({ ...base350, tie_word_embeddings: true, tie_embedding: false });
    expect(untied.tieEmbeddings).toBe(false);
    expect(parameterShapes(untied).at(-1)).toEqual({ name: 'lm_head.weight', shape: [65536, 1024] });
    const { tie_embedding: _t, ...rest } = base350;
    expect(parseLfm2Config({ ...rest, tie_word_embeddings: false }).tieEmbeddings).toBe(false);
    expect(parseLfm2Config(rest).tieEmbeddings).toBe(true);
  });

  it('reads theta, rope_theta or rope_parameters (flat or per layer type)', () => {
    const { rope_theta: _r, ...noRope } = base350;
    expect(parseLfm2Config(noRope).ropeTheta).toBe(1e6);
    expect(parseLfm2Config({ ...noRope, theta: 5e5, rope_theta: 7 }).ropeTheta).toBe(5e5);
    expect(parseLfm2Config({ ...noRope, rope_theta: 7 }).ropeTheta).toBe(7);
    expect(parseLfm2Config({ ...noRope, rope_parameters: { rope_theta: 9, rope_type: 'default' } }).ropeTheta).toBe(9);
    expect(
      parseLfm2Config({ ...noRope, rope_parameters: { full_attention: { rope_theta: 11, rope_type: 'default' }, conv: null } })
        .ropeTheta,
    ).toBe(11);
    expect(() => parseLfm2Config({ ...noRope, rope_parameters: { rope_theta: 9, rope_type: 'yarn' } })).toThrow(
      /rope_parameters.rope_type must be "default".*got "yarn"/,
    );
  });

  it('layer_types wins over full_attn_idxs; neither means all attention', () => {
    const { full_attn_idxs: _f, ...noIdx } = base350;
    const lt = Array.from({ length: 16 }, (_, i) => (i === 0 ? 'full_attention' : 'conv'));
    expect(parseLfm2Config({ ...base350, layer_types: lt }).layerTypes[0]).toBe('attention');
    expect(parseLfm2Config(noIdx).layerTypes.every((t) => t === 'attention')).toBe(true);
    expect(parseLfm2Config({ ...base350, conv_L_cache: 4 }).convKernel).toBe(4);
    expect(parseLfm2Config({ ...base350, norm_eps: 1e-6 }).normEps).toBe(1e-6);
  });

  it('reads the config.json transformers 5 writes (parity-tiny)', () => {
    const path = join(FIXTURES, 'parity-tiny', 'config.json');
    if (!existsSync(path)) return;
    expect(parseLfm2Config(JSON.parse(readFileSync(path, 'utf8')), path)).toEqual(lfm2Preset('tiny'));
  });
});

describe('config.json errors name the field, the expectation and the value', () => {
  const cases: [string, unknown, RegExp][] = [
    ['not an object', [1, 2], /config.json: expected a JSON object \(got \[1,2\]\)/],
    ['wrong model_type', { ...base350, model_type: 'llama' }, /model_type must be "lfm2" \(got "llama"\)/],
    ['kv heads', { ...base350, num_key_value_heads: 5 }, /num_key_value_heads must divide num_attention_heads \(got 16 and 5\)/],
    ['hidden not divisible', { ...base350, num_attention_heads: 24, num_key_value_heads: 8 }, /num_attention_heads must divide hidden_size.*got 24 and 1024/],
    ['string field', { ...base350, hidden_size: '1024' }, /config.json: hidden_size: .*number.*\(got "1024"\)/],
    ['negative field', { ...base350, vocab_size: -3 }, /config.json: vocab_size: .*\(got -3\)/],
    ['fractional field', { ...base350, num_hidden_layers: 2.5 }, /num_hidden_layers: .*int.*\(got 2.5\)/],
    ['layer type', { ...base350, layer_types: ['conv', 'mamba'] }, /layer_types.1: .*\(got "mamba"\)/],
    ['layer_types length', { ...base350, layer_types: ['conv', 'full_attention'] }, /layer_types must have num_hidden_layers entries \(got 2 entries and num_hidden_layers 16\)/],
    ['attention index', { ...base350, full_attn_idxs: [2, 16] }, /full_attn_idxs must be layer indices below num_hidden_layers 16 \(got 16\)/],
    ['conv bias', { ...base350, conv_bias: true }, /conv_bias must be false/],
    ['eos out of vocab', { ...base350, eos_token_id: 70000 }, /eos_token_id must be below vocab_size 65536 \(got 70000\)/],
  ];
  it.each(cases)('%s', (_label, json, pattern) => {
    expect(() => parseLfm2Config(json)).toThrow(pattern);
  });

  it('uses the source name given', () => {
    expect(() => parseLfm2Config({ ...base350, num_key_value_heads: 3 }, '/m/config.json')).toThrow(/^\/m\/config.json: /);
  });
});

describe('parameter names and shapes agree with transformers', () => {
  const dumped = join(FIXTURES, 'lfm2_350m_params.json');
  const presetsDump = join(FIXTURES, 'lfm2_preset_params.json');

  it('the committed lfm2-hf-configs.json matches the current presets (rerun tests/parity/write-hf-configs.ts)', () => {
    const fixture = readJson('lfm2-hf-configs.json');
    for (const name of PRESET_NAMES) {
      const c = lfm2Preset(name);
      expect(fixture[name].original).toEqual(JSON.parse(JSON.stringify(HF_PRESETS[name])));
      expect(fixture[name].roundTrip).toEqual(JSON.parse(JSON.stringify(configToHf(c))));
      expect(fixture[name].parameters).toEqual(parameterShapes(c));
    }
  });

  it.skipIf(!existsSync(dumped))(
    `LFM2-350M: names, order and shapes equal transformers' named_parameters()${existsSync(dumped) ? '' : ' [SKIPPED: tests/fixtures/lfm2_350m_params.json absent; run tests/parity/dump_param_names.py]'}`,
    () => {
      const d = JSON.parse(readFileSync(dumped, 'utf8'));
      const c = parseLfm2Config(d.config);
      expect(parameterShapes(c)).toEqual(d.parameters);
      expect(parameterCount(c)).toBe(d.parameter_count);
      expect(d.parameter_count).toBe(354_483_968);
    },
  );

  it.skipIf(!existsSync(presetsDump))(
    `every preset, from the original config and from configToHf, equals transformers${existsSync(presetsDump) ? '' : ' [SKIPPED: tests/fixtures/lfm2_preset_params.json absent]'}`,
    () => {
      const d = JSON.parse(readFileSync(presetsDump, 'utf8')).presets;
      for (const name of PRESET_NAMES) {
        const c = lfm2Preset(name);
        for (const variant of ['original', 'roundTrip']) {
          expect(d[name][variant].parameters, `${name} ${variant}`).toEqual(parameterShapes(c));
          expect(d[name][variant].parameter_count).toBe(parameterCount(c));
          expect(d[name][variant].loaded_config.effective_intermediate_size).toBe(c.intermediateSize);
        }
      }
    },
  );
});
