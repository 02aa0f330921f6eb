"""PyTorch + transformers reference for sampling (issue 5): `generate` on LFM2-350M with random bf16 weights,
B distinct random prompts of P tokens, exactly N new tokens each (min_new_tokens = max_new_tokens, so EOS cannot
end a sequence early), plain sampling at temperature 1 (top-k and top-p off) — what bench/sample.ts asks of the
engine.

    python3 bench/torch/sample.py [--batches 1,8,64,256] [--prompt 512] [--new 64] [--reps 3]
                                  [--max-seconds 60]

new tokens/s = B·N / wall time of the whole generate call (prefill included); the decode step time is
(time for N new tokens − time for 1 new token) / (N − 1). --max-seconds skips the remaining (larger) batches once
the script has run that long, and says so in a JSON line, so a time-capped run still ends cleanly.
One JSON line per batch size, then a markdown table.
"""
import argparse
import sys

import torch

import benchlib as lib


def generate(model, ids, new_tokens, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=lib.LFM2_350M["pad_token_id"],
            use_cache=True,
        )
    if out.shape != (ids.shape[0], ids.shape[1] + new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected "
                           f"{(ids.shape[0], ids.shape[1] + new_tokens)}")
    return out


def timed(model, ids, new_tokens, reps, seed):
    """Median wall time in ms of `reps` generate calls."""
    times = []
    for r in range(reps):
        lib.sync()
        t0 = lib.now_ms()
        generate(model, ids, new_tokens, seed + r)
        lib.sync()
        times.append(lib.now_ms() - t0)
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=lib.positive_int_list, default=[1, 8, 64, 256])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--bandwidth", type=float, default=lib.DEFAULT_BANDWIDTH)
    ap.add_argument("--max-seconds", type=float, default=0, help="skip remaining batches after this long (0: never)")
    args = ap.parse_args()
    if args.prompt < 1 or args.new < 2 or args.reps < 1:
        ap.error("--prompt must be >= 1, --new >= 2 (to separate decode from prefill), --reps >= 1")
    lib.require_cuda()
    started = lib.now_ms()
    device = lib.device_name()
    model = lib.build_model(torch.bfloat16)
    model.eval()
    parameters = lib.parameter_count(model)
    weight_bytes = parameters * 2
    config = lib.LFM2_350M
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    kv_bytes_per_token = len(config["full_attn_idxs"]) * 2 * config["num_key_value_heads"] * head_dim * 2
    generator = torch.Generator().manual_seed(args.seed + 2)
    # Warm-up: kernel loading and allocator growth are not part of any batch's time.
    generate(model, lib.random_tokens(generator, (1, args.prompt)), 2, args.seed)
    rows = []
    for batch in args.batches:
        elapsed_s = (lib.now_ms() - started) / 1000
        if args.max_seconds and elapsed_s > args.max_seconds:
            lib.emit({"bench": "sample", "impl": "torch", "batch": batch, "status": "skipped",
                      "error": f"time cap: {elapsed_s:.0f} s > --max-seconds {args.max_seconds:g}"})
            rows.append([batch, "skipped (time cap)", "", "", "", "", ""])
            continue
        record = {"bench": "sample", "impl": "torch", "device": device, "preset": "LFM2-350M", "batch": batch,
                  "prompt_len": args.prompt, "new_tokens": args.new, "reps": args.reps, **lib.versions()}
        try:
            ids = lib.random_tokens(generator, (batch, args.prompt))
            generate(model, ids, 2, args.seed)  # this batch size's own first call
            torch.cuda.reset_peak_memory_stats()
            full_ms = timed(model, ids, args.new, args.reps, args.seed)
            prefill_ms = timed(model, ids, 1, args.reps, args.seed)
            decode_ms = (full_ms - prefill_ms) / (args.new - 1)
            roofline_ms = weight_bytes / args.bandwidth * 1000
            roofline_kv_ms = (weight_bytes + batch * (args.prompt + args.new / 2) * kv_bytes_per_token) / args.bandwidth * 1000
            allocated, reserved = lib.peak_memory()
            record.update({
                "status": "ok", "total_ms": full_ms, "prefill_ms": prefill_ms,
                "new_tokens_per_s": batch * args.new / (full_ms / 1000), "decode_ms_per_step": decode_ms,
                "decode_tokens_per_s": batch / (decode_ms / 1000),
                "roofline_ms_per_step": roofline_ms, "roofline_pct": 100 * roofline_ms / decode_ms,
                "roofline_kv_ms_per_step": roofline_kv_ms, "roofline_kv_pct": 100 * roofline_kv_ms / decode_ms,
                "peak_gib": allocated, "peak_reserved_gib": reserved, "peak_kind": lib.PEAK_KIND_TORCH,
            })
            rows.append([batch, lib.fmt(full_ms, 1), lib.fmt(prefill_ms, 1), lib.fmt(decode_ms, 3),
                         lib.fmt(record["new_tokens_per_s"]), lib.fmt(record["decode_tokens_per_s"]),
                         lib.fmt(record["roofline_pct"], 1) + "%"])
        except torch.cuda.OutOfMemoryError as e:
            record.update({"status": "oom", "error": str(e).splitlines()[0]})
            rows.append([batch, "OOM", "", "", "", "", ""])
        lib.emit(record)
        lib.free_cuda()
    print(f"\n### PyTorch + transformers generate (LFM2-350M bf16, {device}, prompt {args.prompt}, "
          f"{args.new} new tokens)\n")
    print(lib.markdown_table(["batch", "total ms", "prefill+1 ms", "decode ms/step", "new tok/s", "decode tok/s",
                              "roofline (weights)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
