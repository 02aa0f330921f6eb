// LFM2 configuration: the normalized form every part of webgrpo uses (and the JSON the native engine takes),
// parsed from a Hugging Face config.json with all of LFM2's quirks.
// CONTRACT: keep these field names; the native engine reads them.
import { z } from 'zod';

export type LayerType = 'conv' | 'attention';

export interface Lfm2Config {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Effective MLP width after block_auto_adjust_ff_dim / multiplier / multiple_of (4608 for 350M). */
  intermediateSize: number;
  layerTypes: LayerType[];
  /** Short-conv kernel width (L_cache), 3 for every released LFM2. */
  convKernel: number;
  normEps: number;
  ropeTheta: number;
  tieEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  maxPositionEmbeddings: number;
  initializerRange: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const positiveInt = z.number().int().positive();
const tokenId = z.number().int().nonnegative();
const ropeParams = z.object({ rope_theta: z.number().positive().optional(), rope_type: z.string().optional() }).loose();

// The keys transformers' Lfm2Config reads, with its defaults (configuration_lfm2.py), plus the original
// LiquidAI spellings it maps (block_ff_dim, tie_embedding, theta). Unknown keys are kept and ignored.
const hfLfm2Schema = z
  .object({
    model_type: z.literal('lfm2').optional(),
    vocab_size: positiveInt.default(65536),
    hidden_size: positiveInt.default(2560),
    intermediate_size: positiveInt.default(12288),
    block_ff_dim: positiveInt.optional(),
    num_hidden_layers: positiveInt.default(32),
    num_attention_heads: positiveInt.default(32),
    num_key_value_heads: positiveInt.default(8),
    head_dim: positiveInt.optional(),
    max_position_embeddings: positiveInt.default(128000),
    initializer_range: z.number().nonnegative().default(0.02),
    norm_eps: z.number().positive().default(1e-5),
    pad_token_id: tokenId.nullable().default(0),
    bos_token_id: tokenId.nullable().default(1),
    eos_token_id: z.union([tokenId, z.array(tokenId).min(1)]).nullable().default(2),
    tie_word_embeddings: z.boolean().default(true),
    tie_embedding: z.boolean().optional(),
    theta: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_parameters: z.union([ropeParams, z.record(z.string(), ropeParams.nullable())]).nullable().optional(),
    rope_scaling: z.unknown().optional(),
    conv_bias: z.boolean().default(false),
    conv_L_cache: z.number().int().min(1).default(3),
    block_multiple_of: positiveInt.default(256),
    block_ffn_dim_multiplier: z.number().positive().nullable().default(1.0),
    block_auto_adjust_ff_dim: z.boolean().default(true),
    full_attn_idxs: z.array(z.number().int().nonnegative()).nullable().optional(),
    layer_types: z.array(z.enum(['conv', 'full_attention'])).nullable().optional(),
  })
  .loose();

type HfLfm2 = z.infer<typeof hfLfm2Schema>;

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function formatIssues(source: string, error: z.ZodError): string {
  const lines = error.issues.map((issue) => {
    const field = issue.path.length ? issue.path.join('.') : '(top level)';
    const got = 'input' in issue ? describe(issue.input) : 'an invalid value';
    return `${source}: ${field}: ${issue.message} (got ${got})`;
  });
  return lines.join('\n');
}

/** transformers' Lfm2MLP width rule; note multiplier and multiple_of apply only when a multiplier is set. */
export function effectiveFfDim(
  ffDim: number,
  autoAdjust: boolean,
  multiplier: number | null,
  multipleOf: number,
): number {
  if (!autoAdjust) return ffDim;
  let width = Math.trunc((2 * ffDim) / 3);
  if (multiplier !== null) {
    width = Math.trunc(multiplier * width);
    width = multipleOf * Math.ceil(width / multipleOf);
  }
  return width;
}

function ropeThetaOf(hf: HfLfm2, source: string): number {
  if (hf.theta !== undefined) return hf.theta;
  if (hf.rope_theta !== undefined) return hf.rope_theta;
  const params = hf.rope_parameters;
  if (params) {
    // Either one set of rope parameters, or one per layer type (transformers 5 writes both forms).
    const perType = (params as Record<string, unknown>)['full_attention'];
    const chosen = (perType && typeof perType === 'object' ? perType : params) as z.infer<typeof ropeParams>;
    if (chosen.rope_type !== undefined && chosen.rope_type !== 'default') {
      throw new ConfigError(
        `${source}: rope_parameters.rope_type must be "default" (webgrpo implements plain RoPE only) (got ${describe(chosen.rope_type)})`,
      );
    }
    if (chosen.rope_theta !== undefined) return chosen.rope_theta;
  }
  return 1_000_000;
}

function layerTypesOf(hf: HfLfm2, source: string): LayerType[] {
  const n = hf.num_hidden_layers;
  if (hf.layer_types) {
    if (hf.layer_types.length !== n) {
      throw new ConfigError(
        `${source}: layer_types must have num_hidden_layers entries (got ${hf.layer_types.length} entries and num_hidden_layers ${n})`,
      );
    }
    return hf.layer_types.map((t) => (t === 'conv' ? 'conv' : 'attention'));
  }
  // transformers: without either key every layer is attention.
  const idxs = hf.full_attn_idxs ?? Array.from({ length: n }, (_, i) => i);
  for (const i of idxs) {
    if (i >= n) {
      throw new ConfigError(`${source}: full_attn_idxs must be layer indices below num_hidden_layers ${n} (got ${i})`);
    }
  }
  const set = new Set(idxs);
  return Array.from({ length: n }, (_, i) => (set.has(i) ? 'attention' : 'conv'));
}

/** Parses a Hugging Face LFM2 config.json (already JSON-decoded) into the normalized config. */
export function parseLfm2Config(json: unknown, source = 'config.json'): Lfm2Config {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError(`${source}: expected a JSON object (got ${describe(json)})`);
  }
  const modelType = (json as Record<string, unknown>).model_type;
  if (modelType !== undefined && modelType !== 'lfm2') {
    throw new ConfigError(`${source}: model_type must be "lfm2" (got ${describe(modelType)})`);
  }
  const parsed = hfLfm2Schema.safeParse(json, { reportInput: true });
  if (!parsed.success) throw new ConfigError(formatIssues(source, parsed.error));
  const hf = parsed.data;

  if (hf.conv_bias) {
    throw new ConfigError(`${source}: conv_bias must be false (webgrpo's LFM2 has no conv biases) (got true)`);
  }
  if (hf.rope_scaling !== undefined && hf.rope_scaling !== null) {
    throw new ConfigError(`${source}: rope_scaling must be absent (webgrpo implements plain RoPE only) (got ${describe(hf.rope_scaling)})`);
  }
  const heads = hf.num_attention_heads;
  const kvHeads = hf.num_key_value_heads;
  if (heads % kvHeads !== 0) {
    throw new ConfigError(
      `${source}: num_key_value_heads must divide num_attention_heads (got ${heads} and ${kvHeads})`,
    );
  }
  if (hf.head_dim === undefined && hf.hidden_size % heads !== 0) {
    throw new ConfigError(
      `${source}: num_attention_heads must divide hidden_size when head_dim is absent (got ${heads} and ${hf.hidden_size})`,
    );
  }
  const headDim = hf.head_dim ?? hf.hidden_size / heads;
  if (headDim % 2 !== 0) throw new ConfigError(`${source}: head_dim must be even for RoPE (got ${headDim})`);

  const eos = Array.isArray(hf.eos_token_id) ? hf.eos_token_id[0] : hf.eos_token_id;
  const config: Lfm2Config = {
    vocabSize: hf.vocab_size,
    hiddenSize: hf.hidden_size,
    numLayers: hf.num_hidden_layers,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    intermediateSize: effectiveFfDim(
      hf.block_ff_dim ?? hf.intermediate_size,
      hf.block_auto_adjust_ff_dim,
      hf.block_ffn_dim_multiplier,
      hf.block_multiple_of,
    ),
    layerTypes: layerTypesOf(hf, source),
    convKernel: hf.conv_L_cache,
    normEps: hf.norm_eps,
    ropeTheta: ropeThetaOf(hf, source),
    tieEmbeddings: hf.tie_embedding ?? hf.tie_word_embeddings,
    bosTokenId: hf.bos_token_id ?? 1,
    eosTokenId: eos ?? 7,
    padTokenId: hf.pad_token_id ?? 0,
    maxPositionEmbeddings: hf.max_position_embeddings,
    initializerRange: hf.initializer_range,
  };
  for (const [name, id] of [
    ['bos_token_id', config.bosTokenId],
    ['eos_token_id', config.eosTokenId],
    ['pad_token_id', config.padTokenId],
  ] as const) {
    if (id >= config.vocabSize) {
      throw new ConfigError(`${source}: ${name} must be below vocab_size ${config.vocabSize} (got ${id})`);
    }
  }
  return config;
}

/**
 * A config.json that transformers' Lfm2Config loads back to the same model. The effective MLP width is written
 * as intermediate_size with block_auto_adjust_ff_dim off, so no rounding rule can change it on the way back.
 */
export function configToHf(c: Lfm2Config): Record<string, unknown> {
  return {
    architectures: ['Lfm2ForCausalLM'],
    model_type: 'lfm2',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    block_auto_adjust_ff_dim: false,
    block_ffn_dim_multiplier: 1.0,
    block_multiple_of: 256,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    ...(c.headDim * c.numHeads !== c.hiddenSize ? { head_dim: c.headDim } : {}),
    layer_types: c.layerTypes.map((t) => (t === 'conv' ? 'conv' : 'full_attention')),
    conv_L_cache: c.convKernel,
    conv_bias: false,
    norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieEmbeddings,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    pad_token_id: c.padTokenId,
    max_position_embeddings: c.maxPositionEmbeddings,
    initializer_range: c.initializerRange,
    use_cache: true,
  };
}

export interface ParameterShape {
  name: string;
  shape: number[];
}

/** Every trainable tensor in transformers' Lfm2ForCausalLM.named_parameters() order (tied lm_head omitted). */
export function parameterShapes(c: Lfm2Config): ParameterShape[] {
  const H = c.hiddenSize;
  const F = c.intermediateSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const out: ParameterShape[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, H] }];
  c.layerTypes.forEach((type, i) => {
    const p = `model.layers.${i}`;
    if (type === 'attention') {
      out.push(
        { name: `${p}.self_attn.q_proj.weight`, shape: [qDim, H] },
        { name: `${p}.self_attn.k_proj.weight`, shape: [kvDim, H] },
        { name: `${p}.self_attn.v_proj.weight`, shape: [kvDim, H] },
        { name: `${p}.self_attn.out_proj.weight`, shape: [H, qDim] },
        { name: `${p}.self_attn.q_layernorm.weight`, shape: [c.headDim] },
        { name: `${p}.self_attn.k_layernorm.weight`, shape: [c.headDim] },
      );
    } else {
      out.push(
        { name: `${p}.conv.conv.weight`, shape: [H, 1, c.convKernel] },
        { name: `${p}.conv.in_proj.weight`, shape: [3 * H, H] },
        { name: `${p}.conv.out_proj.weight`, shape: [H, H] },
      );
    }
    out.push(
      { name: `${p}.feed_forward.w1.weight`, shape: [F, H] },
      { name: `${p}.feed_forward.w3.weight`, shape: [F, H] },
      { name: `${p}.feed_forward.w2.weight`, shape: [H, F] },
      { name: `${p}.operator_norm.weight`, shape: [H] },
      { name: `${p}.ffn_norm.weight`, shape: [H] },
    );
  });
  out.push({ name: 'model.embedding_norm.weight', shape: [H] });
  if (!c.tieEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, H] });
  return out;
}

export function parameterCount(c: Lfm2Config): number {
  return parameterShapes(c).reduce((sum, p) => sum + p.shape.reduce((a, b) => a * b, 1), 0);
}

// The released models' config.json, reduced to the keys that matter, in LiquidAI's original spelling so that
// the presets go through the same quirks a downloaded checkpoint does.
const RELEASED_LAYER_TYPES = [2, 5, 8, 10, 12, 14];
const releasedBase = {
  model_type: 'lfm2',
  vocab_size: 65536,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  max_position_embeddings: 128000,
  norm_eps: 1e-5,
  conv_L_cache: 3,
  conv_bias: false,
  rope_theta: 1_000_000,
  full_attn_idxs: RELEASED_LAYER_TYPES,
  block_multiple_of: 256,
  block_ffn_dim_multiplier: 1.0,
  block_auto_adjust_ff_dim: true,
  tie_embedding: true,
  bos_token_id: 1,
  eos_token_id: 7,
  pad_token_id: 0,
  initializer_range: 0.02,
};

/** Vocabulary size of assets/tiny-tokenizer (see scripts/make-tiny-tokenizer.ts). */
export const TINY_VOCAB_SIZE = 512;

export const HF_PRESETS = {
  'LFM2-350M': { ...releasedBase, hidden_size: 1024, num_attention_heads: 16, block_ff_dim: 6656 },
  'LFM2-700M': { ...releasedBase, hidden_size: 1536, num_attention_heads: 24, block_ff_dim: 10240 },
  'LFM2-1.2B': { ...releasedBase, hidden_size: 2048, num_attention_heads: 32, block_ff_dim: 12288 },
  // Both layer kinds, GQA (4 heads over 2 kv heads), an MLP width that exercises the 2/3 + round-up rule
  // (int(2*232/3) = 154 -> 160), sized for fast CPU tests.
  tiny: {
    ...releasedBase,
    vocab_size: TINY_VOCAB_SIZE,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    full_attn_idxs: [1, 3],
    block_ff_dim: 232,
    block_multiple_of: 32,
    max_position_embeddings: 4096,
  },
} as const;

export type PresetName = keyof typeof HF_PRESETS;
export const PRESET_NAMES = Object.keys(HF_PRESETS) as PresetName[];

export function lfm2Preset(name: string): Lfm2Config {
  if (!(name in HF_PRESETS)) {
    throw new ConfigError(`unknown LFM2 preset "${name}" (expected one of ${PRESET_NAMES.join(', ')})`);
  }
  return parseLfm2Config(HF_PRESETS[name as PresetName], `preset ${name}`);
}
