/**
 * LoRA train-step throughput of the engine (issue 7), to set beside PEFT's in bench/torch/train_step.py
 * (modes lora-r8 / lora-r16). The addon contract (src/native/addon.ts) has no LoRA yet, so this benchmark checks
 * whether the built engine offers any LoRA method and, when it does not, says so and exits with status 2. It
 * never prints a number it did not measure.
 *   node dist/bench/lora.js [--backend cuda|cpu] [--ranks 8,16]
 */
import { loadAddon } from '../src/native/addon.js';
import { lfm2Preset } from '../src/model/config.js';
import { benchProgram, emit, intList, requireBackend, runMain, type CommonOptions } from './common.js';

interface LoraOptions extends CommonOptions {
  ranks: number[];
}

/** Method names on the addon and on a model handle that look like LoRA support. */
function loraMethods(backend: CommonOptions['backend']): string[] {
  const addon = loadAddon();
  const model = addon.createModel(JSON.stringify(lfm2Preset('tiny')), { backend });
  try {
    const names = new Set<string>(Object.keys(addon));
    for (let proto = Object.getPrototypeOf(model); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
      for (const n of Object.getOwnPropertyNames(proto)) names.add(n);
    }
    for (const n of Object.keys(model)) names.add(n);
    return [...names].filter((n) => /lora|adapter/i.test(n)).sort();
  } finally {
    model.dispose();
  }
}

async function main(): Promise<number> {
  const program = benchProgram('lora', 'engine LoRA train step (reports when the engine has no LoRA)')
    .option('--ranks <list>', 'LoRA ranks', intList('ranks'), [8, 16]);
  const opts = program.parse(process.argv).opts<LoraOptions>();
  requireBackend(opts.backend);
  const found = loraMethods(opts.backend);
  const reason = found.length === 0
    ? 'LoRA is not implemented in the engine: the native addon has no LoRA methods (issue 7)'
    : `the engine exposes LoRA methods (${found.join(', ')}) but src/native/addon.ts has no LoRA contract yet; ` +
      'bench/lora.ts must be written against it before it can measure anything';
  for (const rank of opts.ranks) {
    emit({ bench: 'lora', impl: 'webgrpo', backend: opts.backend, preset: opts.preset, mode: `lora-r${rank}`,
      status: 'not-implemented', reason });
  }
  process.stderr.write(`bench lora: ${reason}\n`);
  return 2;
}

runMain(main);
