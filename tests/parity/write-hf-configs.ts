// Writes tests/fixtures/lfm2-hf-configs.json: for each preset, the original-style config.json our presets are
// parsed from and the config.json configToHf writes back. dump_param_names.py builds transformers models from
// both (they must agree with each other and with parameterShapes). Run: npx vite-node tests/parity/write-hf-configs.ts
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HF_PRESETS, PRESET_NAMES, configToHf, lfm2Preset, parameterShapes } from '../../src/model/config.js';

function hfConfigsFixture(): Record<string, unknown> {
  return Object.fromEntries(
    PRESET_NAMES.map((name) => {
      const config = lfm2Preset(name);
      return [
        name,
        {
          original: HF_PRESETS[name],
          roundTrip: configToHf(config),
          parameters: parameterShapes(config),
        },
      ];
    }),
  );
}

const out = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'lfm2-hf-configs.json');
writeFileSync(out, JSON.stringify(hfConfigsFixture(), null, 1).replace(/\[\s+([\d,\s]+?)\s+\]/g, (_m, inner: string) => `[${inner.replace(/\s+/g, '')}]`) + '\n');
console.log(`wrote ${out}`);
