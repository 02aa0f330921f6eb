// Loads the policy a config asks for: model weights (seeded random init of a preset, a Hugging Face folder, or
// a checkpoint) on the chosen backend, and the tokenizer with its chat template.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';
import { loadAddon, type Backend } from '../native/addon.js';
import { lfm2Preset } from '../model/config.js';
import { Lfm2Model } from '../model/lfm2.js';
import type { LoraSettings } from '../model/peft.js';
import { ChatTokenizer } from '../model/tokenizer.js';
import type { TrainConfig } from './config.js';

/** The byte-level tokenizer that ships with webgrpo (for randomly initialised models). */
export const TINY_TOKENIZER_DIR = join(PACKAGE_ROOT, 'assets', 'tiny-tokenizer');

/** What a backend lacks for a training run (empty when it can run it). */
function missingFeatures(backend: Backend, lora: boolean): string[] {
  const f = loadAddon().backendFeatures(backend);
  return [...(f.generate ? [] : ['generate() (sampling, issue 5)']), ...(lora && !f.lora ? ['LoRA (issue 7)'] : [])];
}

/**
 * The backend for a training or evaluation run: 'auto' takes CUDA when a GPU is present and its engine can run the
 * whole job, else the CPU (saying why on stderr); an explicit backend that cannot is an error naming what it lacks.
 */
export function resolveBackend(requested: 'auto' | Backend, needs: { lora: boolean } = { lora: false }): Backend {
  const available = loadAddon().backends();
  if (requested === 'auto') {
    if (!available.includes('cuda')) return 'cpu';
    const missing = missingFeatures('cuda', needs.lora);
    if (missing.length === 0) return 'cuda';
    process.stderr.write(`webgrpo: using the CPU backend: the CUDA engine has no ${missing.join(' and no ')} yet\n`);
    return 'cpu';
  }
  if (!available.includes(requested))
    throw new Error(`backend '${requested}' is not available in this build (available: ${available.join(', ')})`);
  const missing = missingFeatures(requested, needs.lora);
  if (missing.length)
    throw new Error(`backend '${requested}' cannot run training yet: its engine has no ${missing.join(' and no ')}`);
  return requested;
}

export interface LoadedPolicy {
  model: Lfm2Model;
  tokenizer: ChatTokenizer;
  backend: Backend;
}

/** Where the weights come from, when not from the config alone: a training checkpoint or a Hugging Face folder. */
export type PolicySource = { checkpoint: string } | { modelDir: string };

/** The LoRA settings of a config, or undefined for a full fine-tune. */
export function loraSettings(cfg: TrainConfig): LoraSettings | undefined {
  const l = cfg.lora;
  return l.enabled ? { r: l.r, alpha: l.alpha, dropout: l.dropout, useRslora: l.use_rslora, targets: l.targets } : undefined;
}

/**
 * Builds the model a config describes. A full fine-tune checkpoint holds the whole model (model/); a LoRA checkpoint
 * holds the adapter only (adapter/, PEFT format), over the base the config names.
 */
export async function loadPolicy(cfg: TrainConfig, source?: PolicySource): Promise<LoadedPolicy> {
  const lora = loraSettings(cfg);
  const backend = resolveBackend(cfg.model.backend, { lora: lora !== undefined });
  if (cfg.model.init === 'pretrained' && !existsSync(cfg.model.path!))
    throw new Error(`model.path: ${cfg.model.path} does not exist (expected a Hugging Face LFM2 folder: config.json, ` +
      'model.safetensors, tokenizer.json, tokenizer_config.json; or use model.init: random with a preset)');
  const tokenizerDir = cfg.model.tokenizer ?? (cfg.model.init === 'pretrained' ? cfg.model.path! : TINY_TOKENIZER_DIR);
  const tokenizer = await ChatTokenizer.load(tokenizerDir);
  const checkpoint = source && 'checkpoint' in source ? source.checkpoint : undefined;
  const dir = source && 'modelDir' in source ? source.modelDir
    : checkpoint && !lora ? join(checkpoint, 'model')
      : cfg.model.init === 'pretrained' ? cfg.model.path : undefined;
  const model = dir
    ? await Lfm2Model.fromPretrained(dir, { backend })
    : Lfm2Model.random(lfm2Preset(cfg.model.preset), {
      seed: cfg.seed,
      backend,
      initializerRange: cfg.model.initializer_range,
    });
  try {
    if (tokenizer.vocabSize > model.config.vocabSize)
      throw new Error(`tokenizer ${tokenizerDir} has ${tokenizer.vocabSize} tokens but the model's vocabulary is ` +
        `${model.config.vocabSize}`);
    if (lora) {
      model.enableLora(lora, cfg.seed);
      if (checkpoint) model.loadAdapter(join(checkpoint, 'adapter'));
    }
  } catch (err) {
    model.dispose();
    throw err;
  }
  return { model, tokenizer, backend };
}
