"""Checks that assets/tiny-tokenizer loads in Python's `tokenizers` and transformers' AutoTokenizer and gives the
same ids and chat-template text as @huggingface/tokenizers + @huggingface/jinja in TypeScript
(tests/fixtures/tiny-tokenizer-ids.json, written by `npx vite-node scripts/make-tiny-tokenizer.ts`).

Run from the repo root:  python3 tests/parity/check_tokenizer.py   (exit status 0 = all match)
Needs: tokenizers, transformers (jinja2 for the chat template). No GPU needed.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "assets" / "tiny-tokenizer"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-tokenizer-ids.json"


def main() -> int:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    raw = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}:\n  python:     {got!r}\n  typescript: {want!r}")

    check("vocab size (tokenizers)", raw.get_vocab_size(with_added_tokens=True), fixture["vocabSize"])
    check("vocab size (AutoTokenizer)", len(auto), fixture["vocabSize"])
    check("bos/eos/pad ids", [auto.bos_token_id, auto.eos_token_id, auto.pad_token_id], [1, 7, 0])
    check("<|im_start|> id", auto.convert_tokens_to_ids("<|im_start|>"), 6)
    for s in fixture["strings"]:
        text = s["text"]
        check(f"tokenizers ids of {text!r}", raw.encode(text, add_special_tokens=False).ids, s["ids"])
        check(f"tokenizers ids+specials of {text!r}", raw.encode(text).ids, s["idsWithSpecialTokens"])
        check(f"AutoTokenizer ids of {text!r}", auto(text, add_special_tokens=False)["input_ids"], s["ids"])
        check(f"AutoTokenizer ids+specials of {text!r}", auto(text)["input_ids"], s["idsWithSpecialTokens"])
        check(f"decode of {text!r}", raw.decode(s["ids"], skip_special_tokens=False), text)
    for i, c in enumerate(fixture["chats"]):
        text = auto.apply_chat_template(
            c["messages"], tokenize=False, add_generation_prompt=c["addGenerationPrompt"]
        )
        check(f"chat {i} text", text, c["text"])
        check(f"chat {i} ids", auto(text, add_special_tokens=False)["input_ids"], c["ids"])

    if failures:
        print(f"check_tokenizer: {len(failures)} mismatches")
        print("\n".join(failures))
        return 1
    n = len(fixture["strings"]) + len(fixture["chats"])
    print(f"check_tokenizer: OK ({n} samples match; tokenizers + AutoTokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
