"""Side-by-side tables of the engine benchmarks (bench/*.ts, "impl": "webgrpo") and the PyTorch references
(bench/torch/*.py, "impl": "torch"), from the JSON lines they print.

    python3 bench/torch/compare.py OUT_DIR_OR_FILES...

Reads every line that is a JSON object with "bench" and "impl" keys (other lines, e.g. the scripts' own tables,
are skipped) and prints one markdown table per benchmark: train, lora, sample, grpo. Speedup = webgrpo's
throughput / PyTorch's (> 1: webgrpo is faster); memory ratio = webgrpo's peak / PyTorch's. Uses only the standard
library, so it runs anywhere.
"""
import json
import sys
from pathlib import Path

TORCH_TRAIN_MODES = ["fp32-master-bf16-autocast", "bf16"]


def load(paths):
    records = []
    for arg in paths:
        p = Path(arg)
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        for f in files:
            for line in f.read_text(errors="replace").splitlines():
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "bench" in rec and "impl" in rec:
                    records.append(rec)
    # A file given twice (or a directory and a file in it) must not count twice.
    unique, seen = [], set()
    for r in records:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def fmt(value, digits=0, suffix=""):
    if value is None or isinstance(value, str) or value != value:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def ok(r):
    return r is not None and r.get("status", "ok") == "ok"


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def status_text(r):
    if r is None:
        return "missing (see the step's .err log)"
    s = r.get("status", "ok")
    return s if s == "ok" else f"{s}: {r.get('error') or r.get('reason') or ''}".strip()


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def shape_key(r):
    return (r.get("batch"), r.get("seq"), r.get("scored_per_seq"))


def shape_text(key):
    b, t, s = key
    return f"{b}×{t} ({'all' if s == t - 1 else s} scored)" if None not in key else "?"


def preset_of(records):
    """The model config(s) the records ran on: a mix (e.g. a CPU smoke run beside the 350M) is shown as such."""
    presets = sorted({r["preset"] for r in records if r.get("preset")})
    return " / ".join(presets) or "model unknown"


def first(records, **match):
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def train_section(records):
    train = [r for r in records if r["bench"] == "train"]
    if not train:
        return "### Train step\n\n(no records)"
    shapes = []
    for r in train:
        if r.get("batch") is not None and shape_key(r) not in shapes:
            shapes.append(shape_key(r))
    rows = []
    for key in shapes:
        b, t, s = key
        ours = first(train, impl="webgrpo", batch=b, seq=t, scored_per_seq=s)
        entries = [("webgrpo", ours)] + [(f"PyTorch {m}", first(train, impl="torch", mode=m, batch=b, seq=t,
                                                                 scored_per_seq=s)) for m in TORCH_TRAIN_MODES]
        for name, r in entries:
            if not ok(r):
                rows.append([shape_text(key), name, status_text(r), "", "", "", "", ""])
                continue
            theirs = name != "webgrpo"
            speed = ratio(ours.get("tokens_per_s"), r.get("tokens_per_s")) if theirs and ok(ours) else None
            mem = ratio(ours.get("peak_gib"), r.get("peak_gib")) if theirs and ok(ours) else None
            rows.append([shape_text(key), name, fmt(r.get("ms_per_step"), 1), fmt(r.get("tokens_per_s")),
                         fmt(100 * r["mfu"] if r.get("mfu") is not None else None, 1, "%"), fmt(r.get("peak_gib"), 2),
                         fmt(speed, 2, "×") if theirs else "", fmt(mem, 2) if theirs else ""])
    return (f"### Train step: forward + backward + AdamW ({preset_of(train)}, random weights)\n\n" +
            table(["shape", "implementation", "ms/step", "tokens/s", "MFU", "peak GiB",
                   "webgrpo speedup", "webgrpo/PyTorch memory"], rows))


def lora_section(records):
    lora = [r for r in records if r["bench"] == "lora"]
    if not lora:
        return "### LoRA train step\n\n(no records)"
    rows = []
    modes = []
    for r in lora:
        if r.get("mode") and r["mode"] not in modes:
            modes.append(r["mode"])
    for mode in modes:
        ours_any = first(lora, impl="webgrpo", mode=mode)
        torch_rows = [r for r in lora if r["impl"] == "torch" and r.get("mode") == mode]
        shapes = [shape_key(r) for r in torch_rows if r.get("batch") is not None] or [(None, None, None)]
        for key in shapes:
            b, t, s = key
            ours = first(lora, impl="webgrpo", mode=mode, batch=b, seq=t, scored_per_seq=s) or ours_any
            theirs = first(lora, impl="torch", mode=mode, batch=b, seq=t, scored_per_seq=s) if b else \
                (torch_rows[0] if torch_rows else None)
            for name, r in (("webgrpo", ours), ("PyTorch + PEFT", theirs)):
                if not ok(r):
                    rows.append([mode, shape_text(key), name, status_text(r), "", "", ""])
                    continue
                other = name != "webgrpo"
                speed = ratio(ours.get("tokens_per_s"), r.get("tokens_per_s")) if other and ok(ours) else None
                rows.append([mode, shape_text(key), name, fmt(r.get("ms_per_step"), 1), fmt(r.get("tokens_per_s")),
                             fmt(r.get("peak_gib"), 2), fmt(speed, 2, "×") if other else ""])
    return (f"### LoRA train step on all linear layers ({preset_of(lora)})\n\n" +
            table(["mode", "shape", "implementation", "ms/step", "tokens/s", "peak GiB", "webgrpo speedup"], rows))


def sample_section(records):
    sample = [r for r in records if r["bench"] == "sample"]
    if not sample:
        return "### Sampling\n\n(no records)"
    batches = sorted({r["batch"] for r in sample if r.get("batch") is not None})
    rows = []
    for b in batches:
        ours = first(sample, impl="webgrpo", batch=b)
        theirs = first(sample, impl="torch", batch=b)
        speed = ratio(ours.get("new_tokens_per_s"), theirs.get("new_tokens_per_s")) if ok(ours) and ok(theirs) else None

        def cell(r, key, digits=0, suffix=""):
            return fmt(r.get(key), digits, suffix) if ok(r) else (r or {}).get("status", "missing")

        rows.append([b, cell(ours, "new_tokens_per_s"), cell(theirs, "new_tokens_per_s"), fmt(speed, 2, "×"),
                     cell(ours, "decode_ms_per_step", 3), cell(theirs, "decode_ms_per_step", 3),
                     cell(ours, "roofline_pct", 1, "%"), cell(theirs, "roofline_pct", 1, "%"),
                     cell(ours, "peak_gib", 2), cell(theirs, "peak_gib", 2)])
    r0 = next((r for r in sample if ok(r)), {})
    return (f"### Sampling: prompt {r0.get('prompt_len', '?')} tokens, {r0.get('new_tokens', '?')} new tokens, "
            f"temperature 1 ({preset_of(sample)})\n\n" +
            table(["batch", "webgrpo new tok/s", "PyTorch new tok/s", "webgrpo speedup", "webgrpo decode ms/step",
                   "PyTorch decode ms/step", "webgrpo % roofline", "PyTorch % roofline", "webgrpo peak GiB",
                   "PyTorch peak GiB"], rows))


def grpo_section(records):
    grpo = [r for r in records if r["bench"] == "grpo"]
    if not grpo:
        return "### GRPO step\n\n(no records)"
    # One row per webgrpo record (e.g. micro-batches 64 and 16), each with its ratio row against PyTorch.
    ours_all = sorted((r for r in grpo if r.get("impl") == "webgrpo"), key=lambda r: -(r.get("micro_batch") or 0))
    ours = ours_all[0] if ours_all else None
    theirs = first(grpo, impl="torch")
    keys = ["generate_ms", "update_ms", "optimizer_ms", "sync_ms", "total_ms"]
    rows = []
    named = [("webgrpo" if r.get("micro_batch") is None else f"webgrpo (micro-batch {r['micro_batch']})", r)
             for r in ours_all] or [("webgrpo", None)]
    for name, r in named + [("PyTorch + transformers", theirs)]:
        if not ok(r):
            rows.append([name, status_text(r)] + [""] * 6)
        else:
            rows.append([name] + [fmt(r.get(k), 1) for k in keys] + [fmt(r.get("tokens_per_s")), fmt(r.get("peak_gib"), 2)])
    for name, r in named:
        if ok(r) and ok(theirs):
            rows.append([f"PyTorch / {name} time"] + [fmt(ratio(theirs.get(k), r.get(k)), 2, "×") if r.get(k) else "n/a"
                                                  for k in keys] +
                        [fmt(ratio(r.get("tokens_per_s"), theirs.get("tokens_per_s")), 2, "×"),
                         fmt(ratio(r.get("peak_gib"), theirs.get("peak_gib")), 2)])
    r0 = ours if ok(ours) else theirs if ok(theirs) else {}
    title = (f"### GRPO step without a browser: {r0.get('prompts', '?')}×{r0.get('group', '?')} sequences, prompt "
             f"{r0.get('prompt_len', '?')}, {r0.get('new_tokens', '?')} new tokens ({preset_of(grpo)})")
    return title + "\n\n" + table(["implementation", "generate ms", "update ms", "optimizer ms", "weight sync ms",
                                   "total ms", "tokens/s", "peak GiB"], rows)


NOTES = """Notes: webgrpo's peak memory is nvidia-smi's device memory in use, sampled every 20 ms, minus the reading
taken just before the model was created (so it counts the engine's buffers, library workspaces and, when the addon
creates it then, the CUDA context; the addon has no memory query yet). PyTorch's is torch.cuda.max_memory_allocated
(no CUDA context, no caching-allocator slack; max_memory_reserved is in its JSON lines), so the memory ratio is
conservative for webgrpo. MFU = 6·N·tokens/s over 800 TFLOP/s; the roofline is the time to read the bf16 weights
once at 3.0 TB/s divided by the measured decode step."""


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    missing = [a for a in argv if not Path(a).exists()]
    if missing:
        print(f"compare.py: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    records = load(argv)
    if not records:
        print("compare.py: no benchmark records found (JSON lines with 'bench' and 'impl')", file=sys.stderr)
        return 1
    devices = sorted({r["device"] for r in records if r.get("device")})
    versions = sorted({f"torch {r['torch']}, transformers {r['transformers']}" for r in records if r.get("torch")})
    print(f"## webgrpo vs PyTorch: {', '.join(devices) or 'device unknown'}"
          + (f" ({'; '.join(versions)})" if versions else "") + "\n")
    for section in (train_section, lora_section, sample_section, grpo_section):
        print(section(records) + "\n")
    print(NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
