/** `webgrpo env`: drive one environment by hand or from a script: JSON observations out, actions in. */
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import type { Command } from 'commander';
import { BrowserEnv } from '../../env/index.js';
import type { Observation } from '../../env/index.js';

export interface EnvCommandOptions {
  task: string;
  seed?: number;
  miniwobDir?: string;
  maxSteps?: number;
  screenshot?: boolean;
}

export interface CommandIO {
  input: Readable;
  output: Writable;
}

function toJsonLine(obs: Observation): string {
  const { screenshot, ...rest } = obs;
  const out: Record<string, unknown> = rest;
  if (screenshot) out.screenshot = screenshot.toString('base64');
  return JSON.stringify(out) + '\n';
}

function write(output: Writable, text: string): Promise<void> {
  return new Promise((resolve, reject) => output.write(text, (err) => (err ? reject(err) : resolve())));
}

/** Prints the reset observation, then one observation per action line, until done/truncated or EOF. */
export async function runEnvCommand(opts: EnvCommandOptions, io: CommandIO): Promise<void> {
  const env = await BrowserEnv.launch({ miniwobDir: opts.miniwobDir, maxSteps: opts.maxSteps });
  try {
    const observeOpts = { screenshot: opts.screenshot === true };
    let obs = await env.reset(opts.task, opts.seed ?? 0, observeOpts);
    await write(io.output, toJsonLine(obs));
    if (obs.done || obs.truncated) return;
    const lines = createInterface({ input: io.input, crlfDelay: Infinity });
    for await (const line of lines) {
      if (line.trim().length === 0) continue;
      obs = await env.step(line, observeOpts);
      await write(io.output, toJsonLine(obs));
      if (obs.done || obs.truncated) break;
    }
    lines.close();
  } finally {
    await env.close();
  }
}

function parseIntOption(name: string) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value.trim())) throw new Error(`${name} must be an integer, got ${JSON.stringify(value)}`);
    return Number(value);
  };
}

export function registerEnvCommand(program: Command): void {
  program
    .command('env')
    .description('run one web task: prints each observation as a JSON line, reads one action per line from stdin')
    .requiredOption('--task <name>', 'task name (built-in, or miniwob.NAME with --miniwob-dir)')
    .option('--seed <n>', 'episode seed', parseIntOption('--seed'), 0)
    .option('--miniwob-dir <dir>', 'folder of the real MiniWoB++ suite (miniwob-plusplus miniwob/ or its html/)')
    .option('--max-steps <k>', 'browser steps before truncation', parseIntOption('--max-steps'), 10)
    .option('--screenshot', 'include a base64 PNG screenshot in every observation')
    .action(async (o: EnvCommandOptions) => {
      await runEnvCommand(o, { input: process.stdin, output: process.stdout });
    });
}
