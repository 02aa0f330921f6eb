"""PyTorch + transformers reference GRPO step (issue 8) at the shape of our GPU run, for bench/grpo.ts to be set
beside: P distinct random prompts × G completions (default 8 × 8 = 64 sequences), P-token prompts (default 600),
exactly N new tokens each (default 32; min_new_tokens = max_new_tokens), sampled at temperature 1 by a bf16 copy
of the policy (as TRL keeps a bf16 vLLM copy); random 0/1 rewards → group advantages (r − mean)/(std + 1e-4);
per-token log-probs of the completions from the fp32-master policy under bf16 autocast (logits for the completion
positions only, as TRL's logits_to_keep); old log-probs = the same values detached (one iteration, on-policy, so
the ratio is 1); the clipped surrogate with ε = 0.2 and dapo aggregation (sum over tokens / all tokens); backward;
grad-norm clipping at 1.0 and fused AdamW; then the new weights are copied into the bf16 sampling copy.

    python3 bench/torch/grpo_step.py [--prompts 8] [--group 8] [--prompt 600] [--new 32] [--warmup 1] [--iters 3]

Phases (each ends with a device synchronise): generate; update = forward + loss + backward; optimizer = clipping +
AdamW + zero_grad; sync = copying the weights into the sampling copy. One JSON line (means over the timed steps),
then a markdown table.
"""
import argparse
import copy
import sys

import torch

import benchlib as lib

STD_EPS = 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=600)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if min(args.prompts, args.group, args.prompt, args.new, args.iters) < 1 or args.warmup < 0:
        ap.error("--prompts, --group, --prompt, --new and --iters must be >= 1, --warmup >= 0")
    if args.group < 2:
        ap.error("--group must be >= 2: a group advantage needs at least two completions")
    lib.require_cuda()
    torch.manual_seed(args.seed)
    device = lib.device_name()
    sequences = args.prompts * args.group

    torch.cuda.reset_peak_memory_stats()
    policy = lib.build_model(torch.float32)
    policy.train()
    sampler = copy.deepcopy(policy).to(torch.bfloat16)
    sampler.eval()
    for p in sampler.parameters():
        p.requires_grad_(False)
    try:
        optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                      fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    keep = args.new + 1 if lib.supports_logits_to_keep() else 0
    generator = torch.Generator().manual_seed(args.seed + 3)
    policy_params = list(policy.parameters())
    sampler_params = list(sampler.parameters())
    if len(policy_params) != len(sampler_params):
        raise RuntimeError("the sampling copy's parameters do not line up with the policy's")

    def step():
        prompts = lib.random_tokens(generator, (args.prompts, args.prompt))
        ids = prompts.repeat_interleave(args.group, dim=0)
        lib.sync()
        t0 = lib.now_ms()
        with torch.no_grad():
            seqs = sampler.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                    min_new_tokens=args.new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                    pad_token_id=lib.LFM2_350M["pad_token_id"], use_cache=True)
        if seqs.shape != (sequences, args.prompt + args.new):
            raise RuntimeError(f"generate returned shape {tuple(seqs.shape)}")
        lib.sync()
        t1 = lib.now_ms()

        rewards = torch.randint(0, 2, (args.prompts, args.group), generator=generator).float().cuda()
        advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + STD_EPS)).reshape(-1, 1)
        completion = seqs[:, args.prompt:]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            kwargs = {"logits_to_keep": keep} if keep else {}
            logits = policy(input_ids=seqs, attention_mask=torch.ones_like(seqs), use_cache=False, **kwargs).logits
            # Position t predicts token t+1; temperature 1, so no division.
            logits = logits[:, -(args.new + 1):-1, :].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
            old_logp = logp.detach()
            ratio = torch.exp(logp - old_logp)
            clipped = torch.clamp(ratio, 1 - args.epsilon, 1 + args.epsilon)
            token_loss = -torch.min(ratio * advantages, clipped * advantages)
            loss = token_loss.sum() / token_loss.numel()  # dapo: over every completion token of the batch
        loss.backward()
        lib.sync()
        t2 = lib.now_ms()

        grad_norm = torch.nn.utils.clip_grad_norm_(policy_params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lib.sync()
        t3 = lib.now_ms()

        with torch.no_grad():
            for target, source in zip(sampler_params, policy_params):
                target.copy_(source)  # fp32 master -> bf16 sampling copy
        lib.sync()
        t4 = lib.now_ms()
        return {"generate_ms": t1 - t0, "update_ms": t2 - t1, "optimizer_ms": t3 - t2, "sync_ms": t4 - t3,
                "total_ms": t4 - t0, "loss": float(loss.item()), "grad_norm": float(grad_norm.item())}

    for _ in range(args.warmup):
        step()
    measured = [step() for _ in range(args.iters)]
    allocated, reserved = lib.peak_memory()

    def avg(key):
        return sum(m[key] for m in measured) / len(measured)

    total_ms = avg("total_ms")
    record = {"bench": "grpo", "impl": "torch", "status": "ok", "device": device, "preset": "LFM2-350M",
              "parameters": lib.parameter_count(policy), "prompts": args.prompts, "group": args.group,
              "sequences": sequences, "prompt_len": args.prompt, "new_tokens": args.new, "warmup": args.warmup,
              "steps": args.iters, "generate_ms": avg("generate_ms"), "update_ms": avg("update_ms"),
              "optimizer_ms": avg("optimizer_ms"), "sync_ms": avg("sync_ms"), "total_ms": total_ms,
              "tokens_per_s": sequences * (args.prompt + args.new) / (total_ms / 1000),
              "new_tokens_per_s": sequences * args.new / (avg("generate_ms") / 1000),
              "peak_gib": allocated, "peak_reserved_gib": reserved, "peak_kind": lib.PEAK_KIND_TORCH,
              "logits_to_keep": keep, "loss": measured[-1]["loss"], "grad_norm": measured[-1]["grad_norm"],
              **lib.versions()}
    lib.emit(record)
    print(f"\n### PyTorch + transformers GRPO step (LFM2-350M, {device}, {args.prompts}x{args.group} sequences, "
          f"prompt {args.prompt}, {args.new} new tokens, mean of {args.iters} steps)\n")
    print(lib.markdown_table(
        ["generate ms", "update ms", "optimizer ms", "sync ms", "total ms", "tokens/s", "peak GiB (alloc)"],
        [[lib.fmt(record["generate_ms"], 1), lib.fmt(record["update_ms"], 1), lib.fmt(record["optimizer_ms"], 1),
          lib.fmt(record["sync_ms"], 1), lib.fmt(total_ms, 1), lib.fmt(record["tokens_per_s"]),
          lib.fmt(allocated, 2)]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
