/** `webgrpo tasks`: lists the tasks available. */
import type { Writable } from 'node:stream';
import type { Command } from 'commander';
import { listTasks } from '../../env/index.js';

export function runTasksCommand(opts: { miniwobDir?: string }, output: Writable): void {
  for (const name of listTasks({ miniwobDir: opts.miniwobDir })) output.write(name + '\n');
}

export function registerTasksCommand(program: Command): void {
  program
    .command('tasks')
    .description('list the web tasks: built-in ones, and miniwob.NAME ones of a real MiniWoB++ folder')
    .option('--miniwob-dir <dir>', 'folder of the real MiniWoB++ suite')
    .action((o: { miniwobDir?: string }) => runTasksCommand(o, process.stdout));
}
