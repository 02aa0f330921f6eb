// The LFM2 model the trainer uses: a normalized config plus the native engine's model, loaded from and saved to
// Hugging Face folders (config.json + safetensors) that transformers reads too.
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadAddon, type Backend, type DType, type NativeModel } from '../native/addon.js';
import { configToHf, parameterShapes, parseLfm2Config, type Lfm2Config, type ParameterShape } from './config.js';
import { loadPeftAdapter, loraScale, mergedWeight, readPeftConfig, savePeftAdapter, type LoraSettings } from './peft.js';
import { Checkpoint, checkTensors, f32ToBf16, f32ToF16, toAddonDType, writeCheckpoint } from './safetensors.js';

export interface ModelLoadOptions {
  backend: Backend;
  /** Threads for the CPU backend (0 = all cores). */
  threads?: number;
}

export interface RandomModelOptions extends ModelLoadOptions {
  seed: number;
  /** Std of the normal init of linear, conv and embedding weights; defaults to the config's initializerRange. */
  initializerRange?: number;
}

export interface SaveOptions {
  /** Storage dtype of the written weights. */
  dtype: DType;
  /** Copy tokenizer.json, tokenizer_config.json (and friends) from this folder, so the result is self-contained. */
  tokenizerDir?: string;
  /** Above this many bytes of weights, write shards plus model.safetensors.index.json (default 5 GiB). */
  maxShardBytes?: number;
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'];

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The native engine must hold exactly the tensors transformers has; a mismatch is a bug in the engine. */
function checkNativeParameters(native: NativeModel, expected: ParameterShape[]): void {
  const info = native.parameterInfo();
  const byName = new Map(info.map((p) => [p.name, p.shape]));
  const problems: string[] = [];
  for (const e of expected) {
    const shape = byName.get(e.name);
    if (!shape) problems.push(`missing "${e.name}"`);
    else if (!sameShape(shape, e.shape)) problems.push(`"${e.name}" is [${shape.join(', ')}], expected [${e.shape.join(', ')}]`);
  }
  const wanted = new Set(expected.map((e) => e.name));
  for (const p of info) if (!wanted.has(p.name)) problems.push(`unexpected "${p.name}"`);
  if (problems.length) {
    throw new Error(`native model's parameters disagree with the LFM2 definition: ${problems.slice(0, 10).join('; ')}`);
  }
}

export class Lfm2Model {
  private disposed = false;
  /** Set by enableLora(): the adapters' settings. */
  private loraSettings?: LoraSettings;

  private constructor(
    readonly config: Lfm2Config,
    readonly native: NativeModel,
  ) {}

  private static create(config: Lfm2Config, opts: ModelLoadOptions): Lfm2Model {
    const native = loadAddon().createModel(JSON.stringify(config), { backend: opts.backend, threads: opts.threads });
    try {
      checkNativeParameters(native, parameterShapes(config));
    } catch (err) {
      native.dispose();
      throw err;
    }
    return new Lfm2Model(config, native);
  }

  /** A model with transformers' init (normal weights, unit norms), reproducible from the seed. */
  static random(config: Lfm2Config, opts: RandomModelOptions): Lfm2Model {
    const model = Lfm2Model.create(config, opts);
    model.native.initRandom(opts.seed, opts.initializerRange ?? config.initializerRange);
    return model;
  }

  /**
   * Loads a Hugging Face LFM2 folder: config.json and model.safetensors (or sharded with an index). Every tensor
   * is checked against the definition first (missing, extra, mis-shaped, non-float: one error listing them all),
   * then uploaded one at a time in its stored dtype.
   */
  static async fromPretrained(dir: string, opts: ModelLoadOptions): Promise<Lfm2Model> {
    const configPath = join(dir, 'config.json');
    if (!existsSync(configPath)) throw new Error(`${dir}: not a model folder (no config.json)`);
    let json: unknown;
    try {
      json = JSON.parse(await readFile(configPath, 'utf8'));
    } catch (err) {
      throw new Error(`${configPath}: bad JSON: ${(err as Error).message}`);
    }
    const config = parseLfm2Config(json, configPath);
    const expected = parameterShapes(config);
    const checkpoint = await Checkpoint.open(dir);
    try {
      // A tied checkpoint may still carry a copy of lm_head.weight; transformers ignores it, and so do we.
      checkTensors(checkpoint.tensors, expected, dir, {
        allowExtra: (name) => config.tieEmbeddings && name === 'lm_head.weight',
      });
      const model = Lfm2Model.create(config, opts);
      try {
        const addon = loadAddon();
        for (const p of expected) {
          const info = checkpoint.tensors.get(p.name)!;
          const bytes = await checkpoint.read(p.name);
          const tensor = addon.tensorFromBytes(bytes, p.shape, toAddonDType(info.dtype)!, opts.backend);
          try {
            model.native.setParameter(p.name, tensor);
          } finally {
            tensor.dispose();
          }
        }
      } catch (err) {
        model.dispose();
        throw err;
      }
      return model;
    } finally {
      await checkpoint.close();
    }
  }

  get lora(): LoraSettings | undefined {
    return this.loraSettings;
  }

  /** Adds LoRA adapters (PEFT init, seeded) and freezes the base weights. */
  enableLora(settings: LoraSettings, seed: number): void {
    this.assertLive();
    this.native.enableLora({ rank: settings.r, alpha: settings.alpha, dropout: settings.dropout, rslora: settings.useRslora,
      targets: settings.targets, seed });
    this.loraSettings = { ...settings, targets: [...settings.targets] };
  }

  /** Writes the adapters as a PEFT folder (adapter_config.json + adapter_model.safetensors). */
  saveAdapter(dir: string, baseModel: string | null): void {
    this.assertLive();
    if (!this.loraSettings) throw new Error('saveAdapter: this model has no LoRA adapters');
    savePeftAdapter(dir, this.native, this.loraSettings, baseModel);
  }

  /** Loads a PEFT adapter folder whose settings match this model's adapters. */
  loadAdapter(dir: string): void {
    this.assertLive();
    const mine = this.loraSettings;
    if (!mine) throw new Error('loadAdapter: enable LoRA first (the adapter settings come from the config)');
    const theirs = readPeftConfig(dir);
    const sameTargets = [...theirs.targets].sort().join(',') === [...mine.targets].sort().join(',');
    if (theirs.r !== mine.r || theirs.alpha !== mine.alpha || theirs.useRslora !== mine.useRslora || !sameTargets)
      throw new Error(`${dir}: adapter (r ${theirs.r}, alpha ${theirs.alpha}, rslora ${theirs.useRslora}, targets ` +
        `${theirs.targets.join(' ')}) does not match the config's LoRA (r ${mine.r}, alpha ${mine.alpha}, rslora ` +
        `${mine.useRslora}, targets ${mine.targets.join(' ')})`);
    loadPeftAdapter(dir, this.native);
  }

  /**
   * Writes config.json + safetensors (+ tokenizer files) that transformers' from_pretrained loads. With LoRA
   * adapters, the weights written are the merged ones (W + s·B·A).
   */
  async save(dir: string, opts: SaveOptions): Promise<void> {
    this.assertLive();
    mkdirSync(dir, { recursive: true });
    const c = this.config;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(configToHf(c), null, 2) + '\n');
    writeFileSync(
      join(dir, 'generation_config.json'),
      JSON.stringify({ bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenId, pad_token_id: c.padTokenId }, null, 2) + '\n',
    );
    const tensors = parameterShapes(c).map((p) => ({
      name: p.name,
      dtype: opts.dtype,
      shape: p.shape,
      data: () => this.parameterBytes(p.name, opts.dtype),
    }));
    writeCheckpoint(dir, tensors, { maxShardBytes: opts.maxShardBytes });
    if (opts.tokenizerDir) {
      for (const f of TOKENIZER_FILES) {
        const src = join(opts.tokenizerDir, f);
        if (existsSync(src)) copyFileSync(src, join(dir, f));
      }
      if (!existsSync(join(dir, 'tokenizer.json'))) throw new Error(`${opts.tokenizerDir}: no tokenizer.json to copy`);
    }
  }

  /** One parameter's bytes in the requested storage dtype. */
  private parameterBytes(name: string, dtype: DType): Uint8Array {
    const t = this.native.getParameter(name);
    try {
      if (t.dtype === dtype && !this.loraSettings) return t.toBytes();
      const values = this.loraSettings
        ? mergedWeight(this.native, name, t.toFloat32(), loraScale(this.loraSettings))
        : t.toFloat32();
      if (dtype === 'f32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      return dtype === 'bf16' ? f32ToBf16(values) : f32ToF16(values);
    } finally {
      t.dispose();
    }
  }

  private assertLive(): void {
    if (this.disposed) throw new Error('Lfm2Model used after dispose()');
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.native.dispose();
  }
}
