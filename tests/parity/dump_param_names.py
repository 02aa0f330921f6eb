"""Dumps the parameter names and shapes of transformers' Lfm2ForCausalLM for webgrpo's presets, so
tests/model/config.test.ts can hold src/model/config.ts (parameterShapes, configToHf) to transformers.

Input:  tests/fixtures/lfm2-hf-configs.json (written by `npx vite-node tests/parity/write-hf-configs.ts`):
        per preset the original-style config.json and configToHf's output.
Output: tests/fixtures/lfm2_350m_params.json   (LFM2-350M: names, shapes, parameter count, config as loaded)
        tests/fixtures/lfm2_preset_params.json (every preset, from both config.json variants)

Run from the repo root:  python3 tests/parity/dump_param_names.py
Needs: torch, transformers with Lfm2 (>= 4.54). Models are built on the meta device: no memory, no GPU needed.
Exit status 1 when transformers disagrees with webgrpo's parameterShapes (the files are written anyway).
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import Lfm2Config, Lfm2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def describe(config_dict):
    config = Lfm2Config.from_dict(dict(config_dict))
    with torch.device("meta"):
        model = Lfm2ForCausalLM(config)
    params = [{"name": n, "shape": list(p.shape)} for n, p in model.named_parameters()]
    count = sum(p.numel() for p in model.parameters())
    mlp = model.model.layers[0].feed_forward.w1.weight.shape[0]
    loaded = {
        "layer_types": list(config.layer_types),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "effective_intermediate_size": int(mlp),
        "rope": getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None),
        "norm_eps": config.norm_eps,
        "conv_L_cache": config.conv_L_cache,
    }
    return {"parameter_count": int(count), "parameters": params, "loaded_config": loaded}


def main() -> int:
    presets = json.loads((FIXTURES / "lfm2-hf-configs.json").read_text())
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    result = {}
    problems = []
    for name, entry in presets.items():
        original = describe(entry["original"])
        round_trip = describe(entry["roundTrip"])
        result[name] = {"original": original, "roundTrip": round_trip}
        ours = entry["parameters"]
        if original["parameters"] != ours:
            problems.append(f"{name}: transformers' parameters (from the original config) differ from parameterShapes")
        if round_trip["parameters"] != original["parameters"]:
            problems.append(f"{name}: configToHf's config.json builds a different model than the original config")
        print(f"{name}: {len(original['parameters'])} tensors, {original['parameter_count']:,} parameters")
    (FIXTURES / "lfm2_preset_params.json").write_text(json.dumps({"versions": versions, "presets": result}, indent=1) + "\n")
    m350 = result["LFM2-350M"]["original"]
    (FIXTURES / "lfm2_350m_params.json").write_text(
        json.dumps({"versions": versions, "config": presets["LFM2-350M"]["original"], **m350}, indent=1) + "\n"
    )
    print(f"wrote {FIXTURES / 'lfm2_350m_params.json'} and {FIXTURES / 'lfm2_preset_params.json'}")
    if problems:
        print("MISMATCH:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
