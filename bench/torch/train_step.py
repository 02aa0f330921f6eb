"""PyTorch + transformers (+ PEFT) reference train step on LFM2-350M with random weights, for issue 6 (full
fine-tune) and issue 7 (LoRA), at the shapes bench/train.ts runs the engine on.

    python3 bench/torch/train_step.py [--modes fp32-master-bf16-autocast,bf16,lora-r8,lora-r16]
                                      [--shapes 16x1024:all,64x632:32] [--warmup 3] [--iters 10]

Modes:
  fp32-master-bf16-autocast  fp32 weights, bf16 autocast, AdamW (fused when available)
  bf16                       bf16 weights and optimizer state, AdamW
  lora-rN                    PEFT LoRA rank N (alpha 2N, dropout 0) on every LFM2 linear layer
                             (q_proj k_proj v_proj out_proj in_proj w1 w2 w3), frozen bf16 base, bf16 autocast
Shapes BxT:S: B sequences of T random tokens; loss = mean cross-entropy over the last S tokens of each sequence
("all": every token after the first). With S < T-1 the logits are computed for the last S+1 positions only
(transformers' logits_to_keep, as TRL's GRPOTrainer does).
One JSON line per (mode, shape): ms/step, tokens/s (B·T per step), MFU (6·N·tokens/s / peak, dense modes),
peak memory (torch.cuda.max_memory_allocated, reset per shape), the loss. A mode that fails (e.g. out of memory)
prints a line with "status" and the error, and the others still run.
"""
import argparse
import re
import sys

import torch
import torch.nn.functional as F

import benchlib as lib


def parse_shapes(text):
    shapes = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)x(\d+)(?::(all|\d+))?", part.strip())
        if not m:
            raise argparse.ArgumentTypeError(f"shape must look like 16x1024:all or 64x632:32 (got {part!r})")
        batch, seq = int(m.group(1)), int(m.group(2))
        scored = seq - 1 if m.group(3) in (None, "all") else int(m.group(3))
        if batch < 1 or seq < 2 or not 1 <= scored <= seq - 1:
            raise argparse.ArgumentTypeError(f"shape needs batch >= 1, seq >= 2, 1 <= scored <= seq-1 (got {part!r})")
        shapes.append((batch, seq, scored))
    return shapes


def parse_modes(text):
    modes = [m.strip() for m in text.split(",")]
    for m in modes:
        if m not in ("fp32-master-bf16-autocast", "bf16") and not re.fullmatch(r"lora-r\d+", m):
            raise argparse.ArgumentTypeError(
                f"mode must be fp32-master-bf16-autocast, bf16 or lora-rN (got {m!r})")
    return modes


def make_adamw(params, lr):
    try:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True), True
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), False


def build(mode, lr):
    """(model, optimizer, autocast?, fused?, trainable parameter count)."""
    if mode == "fp32-master-bf16-autocast":
        model = lib.build_model(torch.float32)
        autocast = True
    elif mode == "bf16":
        model = lib.build_model(torch.bfloat16)
        autocast = False
    else:
        from peft import LoraConfig, get_peft_model

        rank = int(mode.split("-r")[1])
        base = lib.build_model(torch.bfloat16)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                            target_modules=list(lib.LORA_TARGETS), task_type="CAUSAL_LM")
        model = get_peft_model(base, config)
        # 10 conv layers × (in_proj, out_proj) + 6 attention layers × 4 + 16 MLPs × 3 = 92 adapted layers:
        # the check that every LFM2 linear layer got an adapter (the seed pipeline's q/k/v-only mistake).
        adapted = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
        if adapted != 92:
            raise RuntimeError(f"PEFT adapted {adapted} layers, expected all 92 linear layers of LFM2-350M")
        autocast = True
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, fused = make_adamw(trainable, lr)
    return model, optimizer, autocast, fused, sum(p.numel() for p in trainable)


def run_shape(model, optimizer, autocast, shape, args, generator):
    batch, seq, scored = shape
    ids = lib.random_tokens(generator, (batch, seq))
    mask = torch.ones_like(ids)
    keep = 0 if scored == seq - 1 or not lib.supports_logits_to_keep() else scored + 1
    targets = ids[:, seq - scored:]
    state = {}

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            kwargs = {"logits_to_keep": keep} if keep else {}
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
            # Position t predicts token t+1: the last `scored` tokens come from the `scored` logits before them.
            logits = logits[:, -(scored + 1):-1, :].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = loss

    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    lib.sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.iters):
        step()
    end.record()
    lib.sync()
    ms = start.elapsed_time(end) / args.iters
    allocated, reserved = lib.peak_memory()
    return ms, allocated, reserved, float(state["loss"].item()), keep


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=parse_modes, default=parse_modes("fp32-master-bf16-autocast,bf16,lora-r8,lora-r16"))
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("16x1024:all,64x632:32"))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--peak-flops", type=float, default=lib.DEFAULT_PEAK_FLOPS)
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    lib.require_cuda()
    torch.manual_seed(args.seed)
    device = lib.device_name()
    rows = []
    failures = 0
    for mode in args.modes:
        lora = mode.startswith("lora-")
        model = optimizer = None
        try:
            model, optimizer, autocast, fused, trainable = build(mode, args.lr)
            # Base parameters only (adapters excluded), each once: the N of MFU, as bench/common.ts counts it.
            parameters = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
            for shape in args.shapes:
                batch, seq, scored = shape
                generator = torch.Generator().manual_seed(args.seed + 1)
                record = {"bench": "lora" if lora else "train", "impl": "torch", "mode": mode, "device": device,
                          "preset": "LFM2-350M", "parameters": parameters, "trainable_parameters": trainable,
                          "batch": batch, "seq": seq, "scored_per_seq": scored, "tokens_per_step": batch * seq,
                          "warmup": args.warmup, "steps": args.iters, "fused_adamw": fused, **lib.versions()}
                try:
                    ms, allocated, reserved, loss, keep = run_shape(model, optimizer, autocast, shape, args, generator)
                    tokens_per_s = batch * seq / (ms / 1000)
                    record.update({"status": "ok", "ms_per_step": ms, "tokens_per_s": tokens_per_s,
                                   "mfu": None if lora else 6 * parameters * tokens_per_s / args.peak_flops,
                                   "peak_gib": allocated, "peak_reserved_gib": reserved,
                                   "peak_kind": lib.PEAK_KIND_TORCH, "loss": loss, "logits_to_keep": keep})
                    rows.append([mode, f"{batch}x{seq}", scored, lib.fmt(ms, 1), lib.fmt(tokens_per_s),
                                 "n/a" if lora else lib.fmt(100 * record["mfu"], 1) + "%", lib.fmt(allocated, 2),
                                 lib.fmt(loss, 3)])
                except torch.cuda.OutOfMemoryError as e:
                    failures += 1
                    record.update({"status": "oom", "error": str(e).splitlines()[0]})
                    rows.append([mode, f"{batch}x{seq}", scored, "OOM", "", "", "", ""])
                optimizer.zero_grad(set_to_none=True)
                lib.free_cuda()
                lib.emit(record)
        except Exception as e:  # one broken mode must not hide the others' numbers
            failures += 1
            lib.emit({"bench": "lora" if lora else "train", "impl": "torch", "mode": mode, "status": "error",
                      "error": f"{type(e).__name__}: {e}"})
            print(f"bench/torch/train_step.py: mode {mode} failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            del model, optimizer
            lib.free_cuda()
    print(f"\n### PyTorch + transformers train step (LFM2-350M, {device}, {args.iters} timed steps)\n")
    print(lib.markdown_table(["mode", "shape", "scored/seq", "ms/step", "tokens/s", "MFU", "peak GiB (alloc)", "loss"],
                             rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
