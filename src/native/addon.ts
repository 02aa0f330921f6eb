// Typed surface of the native addon (native/src/binding). This file is the contract between TypeScript and
// C++: TypeScript never sees pointers, only handles whose native memory is released by dispose() (a finalizer
// is the safety net). Every method that does real math returns a Promise and runs off the JS thread.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';

export type DType = 'f32' | 'bf16' | 'f16';
export type Backend = 'cpu' | 'cuda';

export interface NativeTensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Backend;
  readonly disposed: boolean;
  /** Host copy converted to fp32. */
  toFloat32(): Float32Array;
  /** Host copy of the raw storage in its own dtype (little endian), e.g. for safetensors. */
  toBytes(): Buffer;
  dispose(): void;
}

export interface ModelOptions {
  backend: Backend;
  /** Threads for the CPU backend (0 = all cores). */
  threads?: number;
}

/** A batch of left-padded sequences, row-major [batchSize, seqLen]. */
export interface TokenBatch {
  tokens: Int32Array;
  /** 1 for a real token, 0 for padding. Positions are counted over real tokens only. */
  attentionMask: Uint8Array;
  batchSize: number;
  seqLen: number;
}

/** Compressed rows of allowed token ids: row k allows tokens[offsets[k] .. offsets[k+1]). */
export interface AllowedTokens {
  offsets: Int32Array;
  tokens: Int32Array;
}

export interface ScoreRequest extends TokenBatch {
  /** scoreMask[b*T+t] = 1: score token (b,t) from the logits at (b,t-1). Never set for t = 0. */
  scoreMask: Uint8Array;
  /** Logits are divided by this before the softmax (the sampling temperature). */
  temperature: number;
  /** Per scored position, in row-major order: the constrained-decoding mask it was sampled under. */
  allowed?: AllowedTokens;
  /** Keep activations so that backward() can follow. */
  keepActivations: boolean;
  /** false: score with the base model alone, LoRA adapters off (the frozen reference). Default true. */
  adapters?: boolean;
  /** Seeds the LoRA dropout masks of a training pass (keepActivations); the same seed gives the same masks. */
  dropoutSeed?: number;
}

export interface ScoreResult {
  /** log p(token) for each scored position, row-major order. */
  logprobs: Float32Array;
  /** Entropy of the (masked, tempered) distribution at each scored position. */
  entropy: Float32Array;
}

/** Token trie for constrained decoding: node 0 is the root; reaching a node without children ends the sequence. */
export interface TokenTrie {
  childOffsets: Int32Array; // [nodes + 1]
  childTokens: Int32Array; // token id of each edge
  childNodes: Int32Array; // node reached by each edge
}

export interface SamplingParams {
  temperature: number;
  topK: number; // 0 = off
  topP: number; // 1 = off
  minP: number; // 0 = off
  repetitionPenalty: number; // 1 = off
  greedy: boolean;
  seed: number;
}

export interface GenerateRequest {
  /** Distinct prompts; sequences that share a prompt share its prefill. */
  prompts: Int32Array[];
  /** For each sequence to sample, the index of its prompt. */
  sequencePrompt: Int32Array;
  maxNewTokens: number;
  stopTokens: Int32Array;
  sampling: SamplingParams;
  /** Per sequence, or absent: unconstrained. */
  constraints?: (TokenTrie | null)[];
}

export interface GenerateResult {
  tokens: Int32Array;
  /** log-prob of each sampled token under the distribution it was sampled from. */
  logprobs: Float32Array;
  finishReason: 'stop' | 'length' | 'constraint';
}

/** What every sequence of a generation session shares (see NativeModel.startGeneration). */
export interface GenerationSettings {
  maxNewTokens: number;
  stopTokens: Int32Array;
  /** The sampler; each batch of sequences brings its own seed. */
  sampling: Omit<SamplingParams, 'seed'>;
  /** Sequences decoded together at most; the rest queue. */
  capacity: number;
}

/** Sequences that join a generation session together. */
export interface SequenceBatch {
  /** Distinct prompts; sequences that share a prompt share its prefill. */
  prompts: Int32Array[];
  /** For each sequence, the index of its prompt. */
  sequencePrompt: Int32Array;
  /** Per sequence, or absent: unconstrained. */
  constraints?: (TokenTrie | null)[];
  /** Sequence i samples from its own stream of this seed, whatever decodes beside it. */
  seed: number;
}

export interface FinishedSequence extends GenerateResult {
  /** The id addSequences() gave it. */
  id: number;
}

export interface AdamWParams {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based optimizer step, for bias correction. */
  step: number;
  /** Multiplies every gradient first (gradient clipping, accumulation averaging). */
  gradScale: number;
}

export interface ParameterInfo {
  name: string;
  shape: number[];
}

/** LoRA as PEFT does it: see native/src/engine.h, LoraConfig. */
export interface LoraOptions {
  rank: number;
  alpha: number;
  /** Dropout on the adapter's input, in training passes (score with keepActivations) only. */
  dropout: number;
  /** Scale alpha/sqrt(rank) instead of alpha/rank. */
  rslora: boolean;
  /** Module names: q_proj k_proj v_proj out_proj in_proj w1 w2 w3; each must match some layer. */
  targets: string[];
  /** Seeds lora_A's Kaiming-uniform init (lora_B starts at zero). */
  seed: number;
}

export interface NativeModel {
  readonly backend: Backend;
  /** The Hugging Face tensor table (base weights). */
  parameterInfo(): ParameterInfo[];
  /** The tensors that gradients and AdamW cover: every parameter, or the adapters after enableLora(). */
  trainableInfo(): ParameterInfo[];
  /**
   * Adds adapters named `<module>.lora_A.weight` [rank, in] and `<module>.lora_B.weight` [out, rank] and freezes
   * the base. The parameter accessors take adapter names too.
   */
  enableLora(options: LoraOptions): void;
  /** Copies (and converts) the tensor into the named parameter. */
  setParameter(name: string, value: NativeTensor): void;
  getParameter(name: string): NativeTensor;
  getGradient(name: string): NativeTensor;
  getOptimizerState(name: string, which: 'm' | 'v'): NativeTensor;
  setOptimizerState(name: string, which: 'm' | 'v', value: NativeTensor): void;
  /** transformers' init: normal(0, initializerRange) for linear, conv and embedding weights, ones for norms. */
  initRandom(seed: number, initializerRange: number): void;
  /** Full logits [B, T, V] (tests and small models only). */
  forwardLogits(batch: TokenBatch): Promise<Float32Array>;
  score(request: ScoreRequest): Promise<ScoreResult>;
  /** Accumulates parameter gradients of sum_k dLogprobs[k] * logprobs[k] from the last score(keepActivations). */
  backward(dLogprobs: Float32Array): Promise<void>;
  zeroGrad(): void;
  gradNorm(): Promise<number>;
  adamwStep(params: AdamWParams): Promise<void>;
  generate(request: GenerateRequest): Promise<GenerateResult[]>;
  /**
   * Opens a continuous-batching session: sequences join between decode steps (addSequences) and leave when they
   * finish, freeing their rows. One session at a time; while it is open the weights cannot change.
   */
  startGeneration(settings: GenerationSettings): void;
  /** Queues sequences; returns the id of the first (the rest follow in order). */
  addSequences(batch: SequenceBatch): number;
  /** Admits queued sequences, decodes until at least one finishes, and returns those that did ([] when idle). */
  stepGeneration(): Promise<FinishedSequence[]>;
  generationStatus(): { queued: number; running: number };
  endGeneration(): void;
  dispose(): void;
}

/** What a backend's engine implements beyond forward, backward and AdamW. */
export interface BackendFeatures {
  generate: boolean;
  lora: boolean;
}

export interface NativeAddon {
  /** Which backends this build has: always 'cpu'; 'cuda' when compiled with CUDA and a GPU is present. */
  backends(): Backend[];
  /** Throws for a backend this build has no engine for. */
  backendFeatures(backend: Backend): BackendFeatures;
  tensorFromBytes(bytes: Uint8Array, shape: number[], dtype: DType, device: Backend): NativeTensor;
  tensorFromFloat32(data: Float32Array, shape: number[], dtype: DType, device: Backend): NativeTensor;
  /** configJson: the normalized LFM2 config (see src/model/config.ts, Lfm2Config). */
  createModel(configJson: string, options: ModelOptions): NativeModel;
}

function findAddon(): string {
  const root = PACKAGE_ROOT;
  const candidates = [
    process.env.WEBGRPO_ADDON,
    join(root, 'build', 'Release', 'webgrpo.node'),
    join(root, 'build', 'Debug', 'webgrpo.node'),
  ].filter((p): p is string => !!p);
  for (const p of candidates) if (existsSync(p)) return p;
  throw new Error(
    `webgrpo native addon not found (looked in ${candidates.join(', ')}). Build it with \`npm run build:native\`.`,
  );
}

let cached: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  if (!cached) cached = createRequire(import.meta.url)(findAddon()) as NativeAddon;
  return cached;
}
