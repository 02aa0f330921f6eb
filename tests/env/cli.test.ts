import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { registerEnvCommand, runEnvCommand } from '../../src/cli/commands/env.js';
import { registerTasksCommand, runTasksCommand } from '../../src/cli/commands/tasks.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fake-miniwob', import.meta.url));

function collect(stream: PassThrough): () => string {
  let text = '';
  stream.on('data', (chunk: Buffer) => { text += chunk.toString(); });
  return () => text;
}

describe('CLI commands', () => {
  it('webgrpo tasks lists built-in and real-suite tasks', () => {
    const out = new PassThrough();
    const text = collect(out);
    runTasksCommand({}, out);
    expect(text().split('\n')).toContain('click-test');
    const out2 = new PassThrough();
    const text2 = collect(out2);
    runTasksCommand({ miniwobDir: FIXTURE }, out2);
    expect(text2().split('\n')).toContain('miniwob.fake-click');
  });

  it('webgrpo env prints JSON observations and reads actions from stdin', async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const text = collect(output);
    const running = runEnvCommand({ task: 'click-test-2', seed: 4, maxSteps: 5 }, { input, output });
    // answer from the first observation, as a driving script would
    while (!text().includes('\n')) await new Promise((r) => setTimeout(r, 20));
    const first = JSON.parse(text().split('\n')[0]);
    for (const key of ['goal', 'axtree', 'html', 'url', 'reward', 'done', 'error', 'step', 'validActions']) expect(first).toHaveProperty(key);
    expect(first.step).toBe(0);
    const label = first.goal.match(/button (\w+)/)[1];
    const bid = first.axtree.match(new RegExp(`\\[(\\d+)\\] button '${label}'`))[1];
    input.write('not an action\n');
    input.write(`click('${bid}')\n`);
    input.end();
    await running;
    const lines = text().trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(3);
    expect(lines[1].error).toMatch(/ActionParseError/);
    expect(lines[2]).toMatchObject({ done: true, reward: 1, step: 2 });
  });

  it('stops at EOF and registers with commander', async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const text = collect(output);
    input.end();
    await runEnvCommand({ task: 'click-test', seed: 1 }, { input, output });
    expect(text().trim().split('\n')).toHaveLength(1);
    const program = new Command();
    registerEnvCommand(program);
    registerTasksCommand(program);
    expect(program.commands.map((c) => c.name())).toEqual(['env', 'tasks']);
    await expect(runEnvCommand({ task: 'no-such-task' }, { input: new PassThrough(), output: new PassThrough() })).rejects.toThrow(/unknown task/);
  });
});
