// Checkpoints: <run_dir>/checkpoints/step-NNNNNN/ holding model/ (a Hugging Face folder, fp32) or, for LoRA, adapter/
// (a PEFT adapter folder; the frozen base is the config's), optimizer.safetensors (AdamW m and v per trainable
// tensor) and state.json (step counters and the trainer's RNG). Written into a temporary folder and renamed into
// place, so a crash never leaves a half-written checkpoint under a real name.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadAddon } from '../native/addon.js';
import type { Lfm2Model } from '../model/lfm2.js';
import { readSafetensors, writeSafetensors } from '../model/safetensors.js';

export interface TrainerState {
  step: number;
  optimizerStep: number;
  rngState: number;
}

const PREFIX = 'step-';

function checkpointsDir(runDir: string): string {
  return join(runDir, 'checkpoints');
}

/** Complete checkpoints of a run, oldest first. */
export function listCheckpoints(runDir: string): string[] {
  const dir = checkpointsDir(runDir);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((d) => /^step-\d+$/.test(d) && existsSync(join(dir, d, 'state.json')))
    .sort()
    .map((d) => join(dir, d));
}

export function latestCheckpoint(runDir: string): string | undefined {
  return listCheckpoints(runDir).pop();
}

/** `baseModel`: what a LoRA adapter was trained on (adapter_config.json's base_model_name_or_path). */
export async function saveCheckpoint(runDir: string, model: Lfm2Model, state: TrainerState, keepLast: number,
  baseModel: string | null = null): Promise<string> {
  const dir = checkpointsDir(runDir);
  mkdirSync(dir, { recursive: true });
  const name = `${PREFIX}${String(state.step).padStart(6, '0')}`;
  const tmp = join(dir, `.${name}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  if (model.lora) model.saveAdapter(join(tmp, 'adapter'), baseModel);
  else await model.save(join(tmp, 'model'), { dtype: 'f32' });
  const tensors = model.native.trainableInfo().flatMap(({ name: p }) =>
    (['m', 'v'] as const).map((which) => {
      const t = model.native.getOptimizerState(p, which);
      try {
        return { name: `${which}.${p}`, dtype: 'f32' as const, shape: [...t.shape], data: t.toBytes() };
      } finally {
        t.dispose();
      }
    }),
  );
  writeSafetensors(join(tmp, 'optimizer.safetensors'), tensors);
  writeFileSync(join(tmp, 'state.json'), `${JSON.stringify(state, null, 2)}\n`);
  const final = join(dir, name);
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  for (const old of listCheckpoints(runDir).slice(0, -keepLast)) rmSync(old, { recursive: true, force: true });
  return final;
}

export function readTrainerState(checkpoint: string): TrainerState {
  const path = join(checkpoint, 'state.json');
  if (!existsSync(path)) throw new Error(`${checkpoint} is not a checkpoint (no state.json)`);
  const s = JSON.parse(readFileSync(path, 'utf8')) as Partial<TrainerState>;
  for (const k of ['step', 'optimizerStep', 'rngState'] as const)
    if (typeof s[k] !== 'number') throw new Error(`${path}: field ${k} is missing or not a number`);
  return s as TrainerState;
}

/** Restores the optimizer state into `model` (whose weights were loaded from the checkpoint's model/). */
export function loadOptimizerState(checkpoint: string, model: Lfm2Model): void {
  const addon = loadAddon();
  const file = readSafetensors(join(checkpoint, 'optimizer.safetensors'));
  for (const { name, shape } of model.native.trainableInfo()) {
    for (const which of ['m', 'v'] as const) {
      const entry = file.get(`${which}.${name}`);
      if (!entry) throw new Error(`${checkpoint}/optimizer.safetensors: missing tensor ${which}.${name}`);
      const t = addon.tensorFromBytes(entry.data, shape, entry.dtype, model.native.backend);
      try {
        model.native.setOptimizerState(name, which, t);
      } finally {
        t.dispose();
      }
    }
  }
}
