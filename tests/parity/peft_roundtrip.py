"""Checks webgrpo's LoRA adapters against PEFT: the folder written by tests/parity/write-lora-roundtrip.ts must load
with PeftModel.from_pretrained over the base in transformers and give webgrpo's logits; PEFT's merge_and_unload
must equal webgrpo's merged export, which must load in transformers too.

Run on a machine with torch, transformers (Lfm2) and peft:  python3 tests/parity/peft_roundtrip.py DIR
Exits non-zero on any mismatch (relative error above 1e-4 in fp32).
"""
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(root: Path) -> int:
    expected = json.loads((root / "expected.json").read_text())
    ids = torch.tensor([expected["ids"]])
    ours = torch.tensor(expected["logits"], dtype=torch.float64).view(1, len(expected["ids"]), expected["vocab"])
    base = AutoModelForCausalLM.from_pretrained(str(root / "base"), torch_dtype=torch.float32,
                                                attn_implementation="eager").eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.double()
    peft = PeftModel.from_pretrained(base, str(root / "adapter")).eval()
    adapted = [n for n, _ in peft.named_parameters() if "lora_" in n]
    with torch.no_grad():
        peft_logits = peft(input_ids=ids).logits.double()
    merged_peft = peft.merge_and_unload()
    merged_ours = AutoModelForCausalLM.from_pretrained(str(root / "merged"), torch_dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    with torch.no_grad():
        merged_logits = merged_ours(input_ids=ids).logits.double()
    weight_err = max(rel(p.detach().double(), dict(merged_peft.named_parameters())[n].detach().double())
                     for n, p in merged_ours.named_parameters())
    checks = [
        ("PEFT adapter tensors loaded", len(adapted), None),
        ("adapters change the model (base vs ours)", rel(base_logits, ours), None),
        ("PEFT logits vs webgrpo logits", rel(peft_logits, ours), 1e-4),
        ("webgrpo merged export vs PEFT merge_and_unload (worst weight)", weight_err, 1e-5),
        ("webgrpo merged export logits vs webgrpo logits", rel(merged_logits, ours), 1e-4),
    ]
    failed = 0
    for name, value, tol in checks:
        verdict = "" if tol is None else ("ok" if value <= tol else "FAIL")
        failed += verdict == "FAIL"
        print(f"  {name:64s} {value:.3e} {'' if tol is None else f'(tol {tol:g})'} {verdict}")
    if rel(base_logits, ours) < 1e-3:
        print("  FAIL: the adapters do not change the logits, so the comparison proves nothing")
        failed += 1
    print(f"peft round trip: {'PASSED' if not failed else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
