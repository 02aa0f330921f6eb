import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyOverride, ConfigError, loadTrainConfig } from '../../src/training/config.js';
import { loadPolicy } from '../../src/training/policy.js';

const dir = mkdtempSync(join(tmpdir(), 'webgrpo-config-'));
function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('training config', () => {
  it('every shipped config validates', () => {
    for (const name of ['tiny_cpu_demo', 'lfm2_350m', 'lfm2_350m_lora']) {
      const cfg = loadTrainConfig(join('configs', `${name}.yaml`));
      expect(cfg.grpo.steps).toBeGreaterThan(0);
    }
    const ref = loadTrainConfig('configs/lfm2_350m.yaml');
    expect([ref.optim.lr, ref.optim.warmup_steps, ref.grpo.num_generations, ref.sampling.max_new_tokens,
      ref.env.max_steps]).toEqual([5e-6, 10, 4, 32, 10]);
    const lora = loadTrainConfig('configs/lfm2_350m_lora.yaml');
    expect([lora.optim.lr, lora.lora.r, lora.lora.alpha, lora.lora.targets.length]).toEqual([1e-4, 8, 16, 8]);
  });

  it('names the field, the expectation and the value given', () => {
    const p = write('bad.yaml', 'grpo:\n  num_generations: 1\n  loss_type: ppo\noptim:\n  lr: fast\n');
    let message = '';
    try {
      loadTrainConfig(p);
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      message = (e as Error).message;
    }
    expect(message).toContain(p);
    expect(message).toMatch(/grpo\.num_generations: .*>=2.*got 1/);
    expect(message).toMatch(/grpo\.loss_type: .*"dapo".*got "ppo"/);
    expect(message).toMatch(/optim\.lr: .*expected number.*got "fast"/);
  });

  it('rejects unknown keys, YAML syntax errors, missing files and a pretrained model without a path', () => {
    expect(() => loadTrainConfig(write('typo.yaml', 'optim:\n  learning_rate: 1\n'))).toThrow(/learning_rate/);
    expect(() => loadTrainConfig(write('syntax.yaml', 'grpo: [1, 2\n'))).toThrow(/YAML syntax error/);
    expect(() => loadTrainConfig(join(dir, 'absent.yaml'))).toThrow(/cannot read config/);
    expect(() => loadTrainConfig(write('pre.yaml', 'model:\n  init: pretrained\n'))).toThrow(/model\.path is required/);
  });

  it('--set overrides parse values as YAML and reject non-sections', () => {
    const p = write('ok.yaml', 'grpo:\n  steps: 3\n');
    const cfg = loadTrainConfig(p, ['grpo.steps=7', 'env.tasks=[click-test, click-button]', 'sampling.constrained=true']);
    expect(cfg.grpo.steps).toBe(7);
    expect(cfg.env.tasks).toEqual(['click-test', 'click-button']);
    expect(cfg.sampling.constrained).toBe(true);
    expect(() => applyOverride({ grpo: 3 }, 'grpo.steps=1')).toThrow(/grpo is not a section/);
    expect(() => applyOverride({}, 'novalue')).toThrow(/expected key=value/);
  });

  it('a pretrained model path that does not exist is an error naming the field and what belongs there', async () => {
    const cfg = loadTrainConfig(write('missing-model.yaml', `model:\n  init: pretrained\n  path: ${join(dir, 'no-such-model')}\n`));
    await expect(loadPolicy(cfg)).rejects.toThrow(/model\.path: .*no-such-model does not exist \(expected a Hugging Face LFM2 folder: config\.json/);
  });
});
