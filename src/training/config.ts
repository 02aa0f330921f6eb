// The training configuration: a YAML file validated by zod, plus `--set key=value` overrides.
// Errors name the field, what was expected and what was given.
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { PRESET_NAMES, type PresetName } from '../model/config.js';

const LoraTarget = z.enum(['q_proj', 'k_proj', 'v_proj', 'out_proj', 'in_proj', 'w1', 'w2', 'w3']);

export const TrainConfigSchema = z
  .object({
    run_dir: z.string().min(1).default('runs/default'),
    seed: z.number().int().nonnegative().default(0),
    model: z
      .object({
        /** 'random': a preset with seeded random weights; 'pretrained': a Hugging Face folder at `path`. */
        init: z.enum(['random', 'pretrained']).default('random'),
        preset: z.enum(PRESET_NAMES as [PresetName, ...PresetName[]]).default('tiny'),
        path: z.string().optional(),
        /** Folder with tokenizer.json + tokenizer_config.json; defaults to `path`. */
        tokenizer: z.string().optional(),
        backend: z.enum(['auto', 'cpu', 'cuda']).default('auto'),
        initializer_range: z.number().positive().optional(),
      })
      .strict()
      .prefault({}),
    lora: z
      .object({
        enabled: z.boolean().default(false),
        r: z.number().int().positive().default(8),
        alpha: z.number().positive().default(16),
        dropout: z.number().min(0).max(1).default(0),
        use_rslora: z.boolean().default(false),
        targets: z.array(LoraTarget).min(1).default(['q_proj', 'k_proj', 'v_proj', 'out_proj', 'in_proj', 'w1', 'w2', 'w3']),
      })
      .strict()
      .prefault({}),
    env: z
      .object({
        tasks: z.array(z.string().min(1)).min(1).default(['click-test']),
        miniwob_dir: z.string().optional(),
        max_steps: z.number().int().positive().default(10),
        concurrency: z.number().int().positive().default(16),
        browsers: z.number().int().positive().default(1),
        episode_max_time_ms: z.number().int().positive().default(10_000),
        action_timeout_ms: z.number().int().positive().default(500),
      })
      .strict()
      .prefault({}),
    prompt: z
      .object({
        axtree_max_chars: z.number().int().positive().default(2000),
        /** How many previous actions of the episode the prompt lists. */
        history: z.number().int().nonnegative().default(3),
        system_prompt: z.string().optional(),
      })
      .strict()
      .prefault({}),
    sampling: z
      .object({
        max_new_tokens: z.number().int().positive().default(32),
        temperature: z.number().positive().default(1),
        top_k: z.number().int().nonnegative().default(0),
        top_p: z.number().gt(0).max(1).default(1),
        min_p: z.number().min(0).lt(1).default(0),
        repetition_penalty: z.number().positive().default(1),
        /** Restrict each completion to one of the page's valid actions (a token trie), and train under that mask. */
        constrained: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    grpo: z
      .object({
        steps: z.number().int().positive().default(100),
        tasks_per_step: z.number().int().positive().default(4),
        num_generations: z.number().int().min(2).default(4),
        num_iterations: z.number().int().positive().default(1),
        epsilon_low: z.number().positive().default(0.2),
        epsilon_high: z.number().positive().default(0.2),
        beta: z.number().nonnegative().default(0),
        scale_rewards: z.enum(['group', 'batch', 'none']).default('group'),
        loss_type: z.enum(['grpo', 'bnpo', 'dr_grpo', 'dapo']).default('dapo'),
        /** 'episode': every step of an episode shares its advantage; 'discounted': step t gets γ^(T-1-t)·A. */
        credit: z.enum(['episode', 'discounted']).default('episode'),
        gamma: z.number().gt(0).max(1).default(0.9),
        micro_batch_size: z.number().int().positive().default(16),
        gradient_accumulation_steps: z.number().int().positive().default(1),
      })
      .strict()
      .prefault({}),
    optim: z
      .object({
        lr: z.number().positive().default(5e-6),
        warmup_steps: z.number().int().nonnegative().default(10),
        schedule: z.enum(['constant', 'cosine']).default('constant'),
        min_lr_ratio: z.number().min(0).max(1).default(0),
        beta1: z.number().min(0).lt(1).default(0.9),
        beta2: z.number().min(0).lt(1).default(0.999),
        eps: z.number().positive().default(1e-8),
        weight_decay: z.number().nonnegative().default(0),
        max_grad_norm: z.number().positive().default(1),
      })
      .strict()
      .prefault({}),
    checkpoint: z
      .object({
        every: z.number().int().nonnegative().default(50),
        keep_last: z.number().int().positive().default(3),
      })
      .strict()
      .prefault({}),
    eval: z
      .object({
        seeds: z.number().int().positive().default(50),
        /** First evaluation seed; training draws its seeds below it so evaluation uses unseen instances. */
        seed_offset: z.number().int().nonnegative().default(1_000_000),
        tasks: z.array(z.string().min(1)).optional(),
        greedy: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type TrainConfig = z.infer<typeof TrainConfigSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const key of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  return v;
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Validates a parsed config object; `source` names the file in errors. */
export function validateTrainConfig(input: unknown, source = 'config'): TrainConfig {
  const result = TrainConfigSchema.safeParse(input ?? {});
  if (result.success) {
    const cfg = result.data;
    if (cfg.model.init === 'pretrained' && !cfg.model.path)
      throw new ConfigError(`${source}: model.path is required when model.init is 'pretrained'`);
    return cfg;
  }
  const lines = result.error.issues.map((issue) => {
    const field = issue.path.length ? issue.path.join('.') : '(top level)';
    const got = issue.code === 'unrecognized_keys' ? '' : `; got ${describe(valueAt(input, issue.path))}`;
    return `  ${field}: ${issue.message}${got}`;
  });
  throw new ConfigError(`${source}: invalid configuration\n${lines.join('\n')}`);
}

/** Parses `a.b.c=value` (value as YAML, so numbers, booleans and lists work) into the config object. */
export function applyOverride(target: Record<string, unknown>, assignment: string): void {
  const eq = assignment.indexOf('=');
  if (eq <= 0) throw new ConfigError(`--set ${assignment}: expected key=value, e.g. --set optim.lr=1e-4`);
  const keys = assignment.slice(0, eq).trim().split('.');
  const value: unknown = parseYaml(assignment.slice(eq + 1));
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (next === undefined) node[key] = {};
    else if (next === null || typeof next !== 'object' || Array.isArray(next))
      throw new ConfigError(`--set ${assignment}: ${key} is not a section`);
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1]] = value;
}

export function loadTrainConfig(path: string, overrides: readonly string[] = []): TrainConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text) ?? {};
  } catch (e) {
    if (e instanceof YAMLParseError) throw new ConfigError(`${path}: YAML syntax error: ${e.message}`);
    throw e;
  }
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new ConfigError(`${path}: expected a YAML mapping at the top level; got ${describe(raw)}`);
  for (const o of overrides) applyOverride(raw as Record<string, unknown>, o);
  return validateTrainConfig(raw, path);
}
