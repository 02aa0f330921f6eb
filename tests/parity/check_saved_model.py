"""Checks that a folder written by webgrpo's Lfm2Model.save() loads in transformers: AutoConfig,
AutoModelForCausalLM (single-file or sharded safetensors, any of f32/bf16/f16) and, when present, AutoTokenizer;
every parameter must equal the stored tensor, lm_head must be tied as the config says, and a forward pass must be
finite.

Run from the repo root:  python3 tests/parity/check_saved_model.py DIR [DIR ...]
Needs: torch, transformers with Lfm2, safetensors.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def stored_tensors(folder: Path):
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(str(folder / f), framework="pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def check(folder: Path) -> None:
    config = AutoConfig.from_pretrained(str(folder))
    assert config.model_type == "lfm2", config.model_type
    model = AutoModelForCausalLM.from_pretrained(str(folder)).float().eval()
    stored = stored_tensors(folder)
    params = dict(model.named_parameters())
    assert set(params) == set(stored), f"names differ: {set(params) ^ set(stored)}"
    for name, p in params.items():
        assert torch.equal(p.detach(), stored[name].float()), f"{name} differs after loading"
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == bool(config.tie_word_embeddings), "lm_head tying does not follow the config"
    ids = torch.tensor([[1, 6, 20, 30, 40, 7]])
    if (folder / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(str(folder))
        text = tok.apply_chat_template([{"role": "user", "content": "click('12')"}], tokenize=False,
                                       add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all(), "non-finite logits"
    dtypes = sorted({str(t.dtype) for t in stored.values()})
    print(f"{folder}: OK ({len(stored)} tensors {dtypes}, tied={tied}, logits {tuple(logits.shape)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for d in sys.argv[1:]:
        check(Path(d))
