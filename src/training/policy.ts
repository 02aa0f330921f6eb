// Loads the policy a config asks for: model weights (seeded random init of a preset, a Hugging Face folder, or
// a checkpoint) on the chosen backend, and the tokenizer with its chat template.
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';
import { loadAddon, type Backend } from '../native/addon.js';
import { lfm2Preset } from '../model/config.js';
import { Lfm2Model } from '../model/lfm2.js';
import { ChatTokenizer } from '../model/tokenizer.js';
import type { TrainConfig } from './config.js';

/** The byte-level tokenizer that ships with webgrpo (for randomly initialised models). */
export const TINY_TOKENIZER_DIR = join(PACKAGE_ROOT, 'assets', 'tiny-tokenizer');

export function resolveBackend(requested: 'auto' | Backend): Backend {
  const available = loadAddon().backends();
  if (requested === 'auto') return available.includes('cuda') ? 'cuda' : 'cpu';
  if (!available.includes(requested))
    throw new Error(`backend '${requested}' is not available in this build (available: ${available.join(', ')})`);
  return requested;
}

export interface LoadedPolicy {
  model: Lfm2Model;
  tokenizer: ChatTokenizer;
  backend: Backend;
}

/** Builds the model a config describes (or loads `weightsDir`, e.g. a checkpoint's model folder). */
export async function loadPolicy(cfg: TrainConfig, weightsDir?: string): Promise<LoadedPolicy> {
  if (cfg.lora.enabled)
    throw new Error('lora.enabled: LoRA training is not implemented yet (the native LoRA kernels are issue 7); ' +
      'set lora.enabled: false for a full fine-tune');
  const backend = resolveBackend(cfg.model.backend);
  const tokenizerDir = cfg.model.tokenizer ?? (cfg.model.init === 'pretrained' ? cfg.model.path! : TINY_TOKENIZER_DIR);
  const tokenizer = await ChatTokenizer.load(tokenizerDir);
  const dir = weightsDir ?? (cfg.model.init === 'pretrained' ? cfg.model.path : undefined);
  const model = dir
    ? await Lfm2Model.fromPretrained(dir, { backend })
    : Lfm2Model.random(lfm2Preset(cfg.model.preset), {
      seed: cfg.seed,
      backend,
      initializerRange: cfg.model.initializer_range,
    });
  if (tokenizer.vocabSize > model.config.vocabSize) {
    model.dispose();
    throw new Error(`tokenizer ${tokenizerDir} has ${tokenizer.vocabSize} tokens but the model's vocabulary is ` +
      `${model.config.vocabSize}`);
  }
  return { model, tokenizer, backend };
}
