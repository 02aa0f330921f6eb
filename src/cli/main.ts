// webgrpo's command line.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { EnvPool } from '../env/index.js';
import { PACKAGE_ROOT } from '../paths.js';
import { latestCheckpoint } from '../training/checkpoint.js';
import { loadTrainConfig, type TrainConfig } from '../training/config.js';
import { evaluate, formatEvalTable, type EvalResult } from '../training/evaluate.js';
import { loadPolicy, type LoadedPolicy } from '../training/policy.js';
import { writeReport } from '../training/report.js';
import { train } from '../training/trainer.js';
import { registerEnvCommand } from './commands/env.js';
import { registerTasksCommand } from './commands/tasks.js';
import { createStepReporter } from './progress.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function runEvaluation(policy: LoadedPolicy, cfg: TrainConfig, opts: { tasks?: string[]; seeds?: number;
  sample?: boolean }): Promise<EvalResult> {
  const pool = await EnvPool.create({
    size: cfg.env.concurrency,
    browsers: cfg.env.browsers,
    miniwobDir: cfg.env.miniwob_dir,
    maxSteps: cfg.env.max_steps,
    actionTimeoutMs: cfg.env.action_timeout_ms,
    episodeMaxTimeMs: cfg.env.episode_max_time_ms,
  });
  try {
    return await evaluate(pool, { model: policy.model.native, tokenizer: policy.tokenizer }, cfg, {
      tasks: opts.tasks,
      seeds: opts.seeds,
      greedy: opts.sample ? false : undefined,
      // A terminal gets one line rewritten in place; a log gets one line per update.
      onProgress: (done, total) => process.stderr.write(process.stderr.isTTY ? `\reval ${done}/${total} episodes`
        : `eval ${done}/${total} episodes\n`),
    });
  } finally {
    if (process.stderr.isTTY) process.stderr.write('\n');
    await pool.close();
  }
}

function printEvaluation(result: EvalResult): void {
  process.stdout.write(`${formatEvalTable(result)}\n${JSON.stringify(result)}\n`);
}

const program = new Command()
  .name('webgrpo')
  .description('Train small language models to use a web browser with GRPO (LFM2, native CPU/CUDA engine, Chromium).')
  .showHelpAfterError();

program
  .command('train')
  .description('run GRPO as a config describes; writes metrics.jsonl, checkpoints and report.html to run_dir')
  .requiredOption('-c, --config <file>', 'YAML training config (see configs/)')
  .option('-s, --set <key=value>', 'override a config field, e.g. --set optim.lr=1e-4 (repeatable)', collect, [])
  .option('--resume [checkpoint]', 'continue from the latest checkpoint in run_dir, or from the one given')
  .option('--eval', 'evaluate the trained policy on held-out seeds at the end')
  .action(async (opts: { config: string; set: string[]; resume?: boolean | string; eval?: boolean }) => {
    const cfg = loadTrainConfig(opts.config, opts.set);
    process.stderr.write(`webgrpo train: ${opts.config} → ${cfg.run_dir}\n`);
    let reporter: ReturnType<typeof createStepReporter> | undefined;
    const result = await train(cfg, {
      resume: opts.resume,
      onStep: (m) => {
        reporter ??= createStepReporter(cfg.grpo.steps, m.step - 1);
        reporter.update(m);
      },
    });
    reporter?.stop();
    try {
      if (opts.eval) {
        const evalResult = await runEvaluation(
          { model: result.model, tokenizer: result.tokenizer, backend: result.model.native.backend }, cfg, {});
        writeFileSync(join(cfg.run_dir, 'eval.json'), `${JSON.stringify(evalResult, null, 2)}\n`);
        printEvaluation(evalResult);
      }
    } finally {
      result.model.dispose();
    }
    process.stderr.write(`report: ${writeReport(cfg.run_dir)}\n`);
  });

program
  .command('eval')
  .description('success rate per task over held-out seeds, with a 95% confidence interval (table, then JSON)')
  .requiredOption('-c, --config <file>', 'YAML config (model, env and eval settings)')
  .option('-s, --set <key=value>', 'override a config field (repeatable)', collect, [])
  .option('--checkpoint <dir>', 'a checkpoint folder (default: the latest in run_dir, if any)')
  .option('--model <dir>', 'a Hugging Face model folder instead of a checkpoint')
  .option('--tasks <list>', 'comma-separated task names (default: eval.tasks or env.tasks)')
  .addOption(new Option('--seeds <n>', 'seeds per task').argParser((v) => Number.parseInt(v, 10)))
  .option('--sample', 'sample at the training temperature instead of greedy decoding')
  .action(async (opts: { config: string; set: string[]; checkpoint?: string; model?: string; tasks?: string;
    seeds?: number; sample?: boolean }) => {
    const cfg = loadTrainConfig(opts.config, opts.set);
    const checkpoint = opts.checkpoint ?? (opts.model ? undefined : latestCheckpoint(cfg.run_dir));
    const source = opts.model ? { modelDir: opts.model } : checkpoint ? { checkpoint } : undefined;
    process.stderr.write(`webgrpo eval: ${opts.model ?? checkpoint ?? `untrained ${cfg.model.preset} (seed ${cfg.seed})`}\n`);
    const policy = await loadPolicy(cfg, source);
    try {
      printEvaluation(await runEvaluation(policy, cfg, { tasks: opts.tasks?.split(','), seeds: opts.seeds,
        sample: opts.sample }));
    } finally {
      policy.model.dispose();
    }
  });

program
  .command('export')
  .description('write a checkpoint as a Hugging Face model folder (config.json, model.safetensors, tokenizer; ' +
    'LoRA adapters merged in), or with --peft a LoRA run\'s adapter as a PEFT folder')
  .requiredOption('-c, --config <file>', 'the run\'s YAML config')
  .option('-s, --set <key=value>', 'override a config field (repeatable)', collect, [])
  .option('--checkpoint <dir>', 'checkpoint folder (default: the latest in run_dir)')
  .requiredOption('-o, --out <dir>', 'output folder')
  .addOption(new Option('--dtype <dtype>', 'weight dtype').choices(['bf16', 'f32', 'f16']).default('bf16'))
  .option('--peft', 'write the LoRA adapter (adapter_config.json + adapter_model.safetensors) instead of merged weights')
  .action(async (opts: { config: string; set: string[]; checkpoint?: string; out: string; dtype: 'bf16' | 'f32' | 'f16';
    peft?: boolean }) => {
    const cfg = loadTrainConfig(opts.config, opts.set);
    const checkpoint = opts.checkpoint ?? latestCheckpoint(cfg.run_dir);
    if (!checkpoint) throw new Error(`no checkpoint given and none found in ${join(cfg.run_dir, 'checkpoints')}`);
    if (opts.peft && !cfg.lora.enabled) throw new Error('--peft: this run is a full fine-tune (lora.enabled is false)');
    const policy = await loadPolicy(cfg, { checkpoint });
    try {
      if (opts.peft) policy.model.saveAdapter(opts.out, cfg.model.path ?? null);
      else await policy.model.save(opts.out, { dtype: opts.dtype, tokenizerDir: policy.tokenizer.dir });
    } finally {
      policy.model.dispose();
    }
    process.stderr.write(`exported ${checkpoint} → ${opts.out} (${opts.peft ? 'PEFT adapter' : opts.dtype})\n`);
  });

program
  .command('report')
  .description('(re)write report.html for a run directory from its metrics.jsonl')
  .argument('<run_dir>')
  .action((runDir: string) => {
    process.stdout.write(`${writeReport(runDir)}\n`);
  });

program
  .command('bench')
  .description('run a benchmark from bench/ (no name: list them)')
  .argument('[name]')
  .argument('[args...]')
  .action((name: string | undefined, args: string[]) => {
    const dir = join(PACKAGE_ROOT, 'dist', 'bench');
    const available = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.js')).map((f) => f.slice(0, -3)) : [];
    if (!name || !available.includes(name)) {
      process.stdout.write(`benchmarks: ${available.join(', ') || '(none built: run npm run build)'}\n`);
      if (name) process.exitCode = 2;
      return;
    }
    const r = spawnSync(process.execPath, [join(dir, `${name}.js`), ...args], { stdio: 'inherit' });
    process.exitCode = r.status ?? 1;
  });

registerEnvCommand(program);
registerTasksCommand(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  const err = e as Error;
  process.stderr.write(`webgrpo: ${err.name && err.name !== 'Error' ? `${err.name}: ` : ''}${err.message}\n`);
  if (process.env.WEBGRPO_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
