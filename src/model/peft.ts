// PEFT's LoRA adapter format: adapter_config.json + adapter_model.safetensors, tensor names
// `base_model.model.<module>.lora_{A,B}.weight` (what PEFT's save_pretrained writes for a causal LM, and what
// PeftModel.from_pretrained loads), plus merging an adapter into its base weights for a full export.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadAddon, type NativeModel } from '../native/addon.js';
import { checkTensors, parseSafetensors, toAddonDType, writeSafetensors } from './safetensors.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
const PEFT_PREFIX = 'base_model.model.';

export interface LoraSettings {
  r: number;
  alpha: number;
  dropout: number;
  useRslora: boolean;
  /** Module names (q_proj k_proj v_proj out_proj in_proj w1 w2 w3). */
  targets: string[];
}

/** The factor PEFT puts in front of B·A. */
export function loraScale(s: LoraSettings): number {
  return s.useRslora ? s.alpha / Math.sqrt(s.r) : s.alpha / s.r;
}

/** Writes the model's adapters as a PEFT LoRA adapter folder. */
export function savePeftAdapter(dir: string, model: NativeModel, s: LoraSettings, baseModel: string | null): void {
  mkdirSync(dir, { recursive: true });
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseModel,
    r: s.r,
    lora_alpha: s.alpha,
    lora_dropout: s.dropout,
    use_rslora: s.useRslora,
    target_modules: [...s.targets].sort(),
    bias: 'none',
    fan_in_fan_out: false,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
  };
  writeFileSync(join(dir, ADAPTER_CONFIG), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(join(dir, ADAPTER_WEIGHTS), model.trainableInfo().map(({ name, shape }) => ({
    name: PEFT_PREFIX + name,
    dtype: 'f32' as const,
    shape,
    data: () => {
      const t = model.getParameter(name);
      try {
        return t.toBytes();
      } finally {
        t.dispose();
      }
    },
  })));
}

/** Reads adapter_config.json into settings, with errors that name the field. */
export function readPeftConfig(dir: string): LoraSettings {
  const path = join(dir, ADAPTER_CONFIG);
  if (!existsSync(path)) throw new Error(`${dir}: not a PEFT adapter folder (no ${ADAPTER_CONFIG})`);
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${path}: bad JSON: ${(err as Error).message}`);
  }
  const field = <T>(key: string, ok: (v: unknown) => boolean, what: string, fallback?: T): T => {
    const v = c[key] ?? fallback;
    if (!ok(v)) throw new Error(`${path}: field ${key} must be ${what}, got ${JSON.stringify(c[key])}`);
    return v as T;
  };
  if (c.peft_type !== 'LORA') throw new Error(`${path}: peft_type must be "LORA", got ${JSON.stringify(c.peft_type)}`);
  const targets = field<string[] | string>('target_modules', (v) => typeof v === 'string' ||
    (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string')), 'a non-empty list of module names');
  return {
    r: field('r', (v) => Number.isInteger(v) && (v as number) > 0, 'a positive integer'),
    alpha: field('lora_alpha', (v) => typeof v === 'number' && v > 0, 'a positive number'),
    dropout: field('lora_dropout', (v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)', 0),
    useRslora: field('use_rslora', (v) => typeof v === 'boolean', 'true or false', false),
    targets: typeof targets === 'string' ? [targets] : targets,
  };
}

/**
 * Loads adapter weights into a model whose adapters were enabled with the same settings. Every expected tensor must
 * be there with its shape; nothing else may be (one error lists every problem).
 */
export function loadPeftAdapter(dir: string, model: NativeModel): void {
  const file = join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(file)) throw new Error(`${dir}: no ${ADAPTER_WEIGHTS}`);
  const parsed = parseSafetensors(readFileSync(file), file);
  const expected = model.trainableInfo().map((t) => ({ name: PEFT_PREFIX + t.name, shape: t.shape }));
  checkTensors(parsed.tensors, expected, file);
  const addon = loadAddon();
  for (const { name, shape } of model.trainableInfo()) {
    const info = parsed.tensors.get(PEFT_PREFIX + name)!;
    const tensor = addon.tensorFromBytes(parsed.data(info.name), shape, toAddonDType(info.dtype)!, 'cpu');
    try {
      model.setParameter(name, tensor);
    } finally {
      tensor.dispose();
    }
  }
}

/** `weight` (the base [out, in], fp32) plus scale·B·A of its adapter, when `model` has one for it. */
export function mergedWeight(model: NativeModel, name: string, weight: Float32Array, scale: number): Float32Array {
  const base = name.replace(/\.weight$/, '');
  const adapters = new Set(model.trainableInfo().map((t) => t.name));
  if (!adapters.has(`${base}.lora_A.weight`)) return weight;
  const a = model.getParameter(`${base}.lora_A.weight`);
  const b = model.getParameter(`${base}.lora_B.weight`);
  try {
    const [rank, inF] = a.shape;
    const outF = b.shape[0];
    const av = a.toFloat32();
    const bv = b.toFloat32();
    const out = Float32Array.from(weight);
    const row = new Float64Array(inF);
    for (let o = 0; o < outF; o++) {
      row.fill(0);
      for (let j = 0; j < rank; j++) {
        const bj = bv[o * rank + j];
        if (bj === 0) continue;
        for (let i = 0; i < inF; i++) row[i] += bj * av[j * inF + i];
      }
      for (let i = 0; i < inF; i++) out[o * inF + i] += scale * row[i];
    }
    return out;
  } finally {
    a.dispose();
    b.dispose();
  }
}
