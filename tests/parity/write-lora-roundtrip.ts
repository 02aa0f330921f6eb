// Writes what tests/parity/peft_roundtrip.py checks with PEFT + transformers (on the GPU machine, which has them):
//   OUT/base     the tiny LFM2 (random init) as a Hugging Face folder
//   OUT/adapter  LoRA adapters on every linear layer (lora_B randomised, so they matter) as a PEFT folder
//   OUT/merged   the merged export (W + s·B·A)
//   OUT/expected.json  token ids and webgrpo's CPU log-softmax over the vocabulary with the adapters on
// Run here: npx vite-node tests/parity/write-lora-roundtrip.ts -- OUT
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lfm2Preset } from '../../src/model/config.js';
import { Lfm2Model } from '../../src/model/lfm2.js';
import { loadAddon } from '../../src/native/addon.js';
import { TINY_TOKENIZER_DIR } from '../../src/training/policy.js';
import { Rng } from '../../src/training/rng.js';

const out = process.argv.filter((a) => a !== '--')[2];
if (!out) throw new Error('usage: vite-node tests/parity/write-lora-roundtrip.ts -- OUT_DIR');
mkdirSync(out, { recursive: true });
const settings = { r: 4, alpha: 8, dropout: 0, useRslora: false,
  targets: ['q_proj', 'k_proj', 'v_proj', 'out_proj', 'in_proj', 'w1', 'w2', 'w3'] };
const model = Lfm2Model.random(lfm2Preset('tiny'), { seed: 11, backend: 'cpu' });
await model.save(join(out, 'base'), { dtype: 'f32', tokenizerDir: TINY_TOKENIZER_DIR });
model.enableLora(settings, 3);
const rng = new Rng(5);
for (const { name, shape } of model.native.trainableInfo()) {
  if (!name.includes('lora_B')) continue;
  const values = Float32Array.from({ length: shape[0] * shape[1] }, () => (rng.nextUint32() / 2 ** 32 * 2 - 1) * 0.1);
  const t = loadAddon().tensorFromFloat32(values, shape, 'f32', 'cpu');
  model.native.setParameter(name, t);
  t.dispose();
}
model.saveAdapter(join(out, 'adapter'), null);
await model.save(join(out, 'merged'), { dtype: 'f32' });
const ids = [1, 6, 40, 41, 42, 43, 44, 45, 46, 47, 48, 7, 6, 50, 51];
const logits = await model.native.forwardLogits({ tokens: Int32Array.from(ids), attentionMask: new Uint8Array(ids.length).fill(1), batchSize: 1, seqLen: ids.length });
writeFileSync(join(out, 'expected.json'), JSON.stringify({ ids, vocab: model.config.vocabSize, logits: Array.from(logits) }));
model.dispose();
process.stdout.write(`wrote ${out}/{base,adapter,merged,expected.json}\n`);
