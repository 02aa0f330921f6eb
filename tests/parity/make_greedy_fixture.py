#!/usr/bin/env python3
"""Writes tests/fixtures/parity-tiny/greedy.json: transformers' greedy `generate` (fp32, KV cache on, EOS off)
on the parity-tiny fixture model for a few prompts of different lengths, with each step's margin between the
top two logits. tests/model/parity.test.ts checks the engine's greedy decoding against it. Run on the GPU
machine (any machine with torch + transformers):  python3 tests/parity/make_greedy_fixture.py [OUT_DIR]
"""
import json
import os
import sys

import torch
from transformers import Lfm2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "parity-tiny")
NEW_TOKENS = 24


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else FIXTURE
    torch.manual_seed(0)
    model = Lfm2ForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(123)
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (23, 6, 1)]
    cases = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0,
                                 output_scores=True, return_dict_in_generate=True, use_cache=True)
        tokens = out.sequences[0, len(prompt):].tolist()
        margins = []
        for scores in out.scores:
            top2 = torch.topk(scores[0].float(), 2).values
            margins.append(float(top2[0] - top2[1]))
        cases.append({"prompt": prompt, "tokens": tokens, "top2_margin": margins})
    path = os.path.join(out_dir, "greedy.json")
    with open(path, "w") as f:
        json.dump({"source": "transformers Lfm2ForCausalLM.generate(do_sample=False), fp32", "cases": cases}, f)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} prompts x {NEW_TOKENS} tokens, smallest top-2 margin "
          f"{min(min(c['top2_margin']) for c in cases):.3g}")


if __name__ == "__main__":
    main()
