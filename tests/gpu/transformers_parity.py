#!/usr/bin/env python3
"""Live checks against PyTorch + transformers on the GPU machine (issue 6). Not part of CI (needs torch + a GPU).

  transformers_parity.py compare DIR TAG   compares what `engine_parity --dump DIR` wrote for TAG (weights, batch,
                                           our CUDA and CPU engines' logits / log-probs / gradients) with
                                           transformers' Lfm2ForCausalLM on the same weights, in fp32 and in bf16
                                           autocast (the yardstick for what bf16 compute alone costs).
  transformers_parity.py bench             PyTorch + transformers train step (bf16 autocast, fp32 master weights,
                                           fused AdamW) on the LFM2-350M config with random weights, at the two
                                           shapes engine_parity times: tokens/s and peak memory.
Exit status 1 when the CUDA engine misses the issue's bf16 thresholds (logits / loss 1e-2, every gradient 2e-2)
or the CPU engine misses the fp32 one (1e-4) against transformers fp32.
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import Lfm2Config, Lfm2ForCausalLM


def rel(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def make_config(m, attn="eager"):
    cfg = Lfm2Config(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        block_auto_adjust_ff_dim=False, num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"],
        layer_types=m["layer_types"], norm_eps=m["norm_eps"], rope_theta=m["rope_theta"],
        tie_word_embeddings=True, max_position_embeddings=32768, use_cache=False, attn_implementation=attn)
    if getattr(cfg, "_attn_implementation", None) != attn:
        cfg._attn_implementation = attn
    return cfg


def split(flat, params):
    out, off = {}, 0
    for p in params:
        n = int(np.prod(p["shape"]))
        out[p["name"]] = flat[off:off + n].reshape(p["shape"])
        off += n
    assert off == flat.size, f"dump holds {flat.size} floats, the parameter table {off}"
    return out


def compare(directory, tag):
    # A true fp32 reference: no TF32 in matrix products or in cuDNN's (depthwise) convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    base = f"{directory}/{tag}"
    m = json.load(open(base + ".json"))
    B, T, V = m["batch"], m["seq_len"], m["vocab_size"]
    params = split(np.fromfile(base + ".params.f32", dtype=np.float32), m["parameters"])
    model = Lfm2ForCausalLM(make_config(m))
    w1 = model.model.layers[0].feed_forward.w1.weight
    assert tuple(w1.shape) == (m["intermediate_size"], m["hidden_size"]), f"w1 is {tuple(w1.shape)}"
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    model = model.cuda().float()
    dev = "cuda"
    tokens = np.asarray(m["tokens"]).reshape(B, T)
    mask = np.asarray(m["mask"], dtype=bool).reshape(B, T)
    score = np.asarray(m["score_mask"], dtype=bool).reshape(B, T)
    dlp = np.asarray(m["dlogprobs"], dtype=np.float32)
    temperature = m["temperature"]

    # Each sequence alone, unpadded (positions 0..len-1): what a left-padded row of ours must equal. This also
    # keeps transformers' own padding handling out of the comparison.
    def run(bf16):
        model.zero_grad(set_to_none=True)
        all_logits = np.zeros((B * T, V), dtype=np.float32)
        lps, ents, loss_total, k = [], [], 0.0, 0
        for b in range(B):
            start = T - int(mask[b].sum())
            assert mask[b, start:].all() and not mask[b, :start].any(), "expects left padding"
            ids = torch.tensor(tokens[b, start:], device=dev)[None]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=ids, use_cache=False).logits
            logits = logits.float()[0]
            all_logits[b * T + start:(b + 1) * T] = logits.detach().cpu().numpy()
            logp = torch.log_softmax(logits[:-1] / temperature, -1)  # position t-1 predicts token t
            sel = torch.tensor(score[b, start + 1:], device=dev)
            lp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[sel]
            ent = -(logp.exp() * logp).sum(-1)[sel]
            n = int(sel.sum())
            loss = (torch.tensor(dlp[k:k + n], device=dev) * lp).sum()
            k += n
            if n:
                loss.backward()
            lps.append(lp.detach().cpu().numpy())
            ents.append(ent.detach().cpu().numpy())
            loss_total += float(loss.detach())
        assert k == len(dlp), f"scored {k} positions, the dump has {len(dlp)}"
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().cpu().numpy()
                 for n, p in model.named_parameters()}
        return all_logits, np.concatenate(lps), np.concatenate(ents), loss_total, grads

    ref_logits, ref_lp, ref_ent, ref_loss, ref_grads = run(False)
    hf_logits, hf_lp, hf_ent, hf_loss, hf_grads = run(True)
    real = mask.reshape(-1)
    names = [p["name"] for p in m["parameters"]]
    rows = {}
    for who in ("gpu", "cpu"):
        logits = np.fromfile(f"{base}.{who}_logits.f32", dtype=np.float32).reshape(B * T, V)
        grads = split(np.fromfile(f"{base}.{who}_grads.f32", dtype=np.float32), m["parameters"])
        lp = np.asarray(m[f"{who}_logprobs"], dtype=np.float64)
        rows["ours CUDA (bf16)" if who == "gpu" else "ours CPU (fp32)"] = (
            logits, lp, np.asarray(m[f"{who}_entropy"]), float(np.dot(m["dlogprobs"], lp)), grads)
    rows["transformers bf16 autocast"] = (hf_logits, hf_lp, hf_ent, hf_loss, hf_grads)

    print(f"\n== {tag}: against transformers fp32 (eager attention, each sequence unpadded), B={B} T={T}, "
          f"{real.sum()} real tokens, "
          f"{len(ref_lp)} scored ==")
    print(f"{'':28s} {'logits':>9s} {'logprobs':>9s} {'entropy':>9s} {'loss':>9s} {'grad med':>9s} {'grad max':>9s}  worst")
    failed = []
    for label, (logits, lp, ent, loss, grads) in rows.items():
        errs = sorted(((rel(grads[n], ref_grads[n]), n) for n in names), reverse=True)
        med = errs[len(errs) // 2][0]
        e = dict(logits=rel(logits[real], ref_logits[real]), lp=rel(lp, ref_lp), ent=rel(ent, ref_ent),
                 loss=abs(loss - ref_loss) / max(abs(ref_loss), 1e-30), gmax=errs[0][0])
        print(f"{label:28s} {e['logits']:9.2e} {e['lp']:9.2e} {e['ent']:9.2e} {e['loss']:9.2e} {med:9.2e} "
              f"{e['gmax']:9.2e}  {errs[0][1]}")
        if label.startswith("ours CUDA"):
            if max(e["logits"], e["lp"], e["loss"]) > 1e-2 or e["gmax"] > 2e-2:
                failed.append(f"{tag}: CUDA engine vs transformers fp32 over the bf16 thresholds (1e-2 / 2e-2)")
        if label.startswith("ours CPU"):
            if max(e["logits"], e["lp"], e["loss"]) > 1e-4:
                failed.append(f"{tag}: CPU engine vs transformers fp32 over the fp32 threshold (1e-4)")
    for f in failed:
        print("FAILED:", f)
    return not failed


def bench():
    m = dict(vocab_size=65536, hidden_size=1024, intermediate_size=4608, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=8, norm_eps=1e-5, rope_theta=1e6,
             layer_types=["full_attention" if c == "A" else "conv" for c in "ccAccAccAcAcAcAc"])
    print("\n== PyTorch + transformers train step (bf16 autocast, fp32 master, fused AdamW, sdpa), LFM2-350M ==")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for batch, seq, scored in ((16, 1024, 1023), (64, 632, 32)):
        torch.manual_seed(0)
        model = Lfm2ForCausalLM(make_config(m, attn="sdpa")).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        ids = torch.randint(1, m["vocab_size"], (batch, seq), device="cuda")
        labels = ids.clone()
        labels[:, : seq - scored] = -100  # loss on the last `scored` tokens (all but the first at 16 x 1024)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        steps = 5
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  {batch} x {seq} ({scored} scored/seq)  {dt * 1e3:8.1f} ms/step  {batch * seq / dt:9.0f} tokens/s  "
              f"peak allocated {peak:.1f} GiB")
        del model, opt
        torch.cuda.empty_cache()
    return True


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        ok = compare(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == "bench":
        ok = bench()
    else:
        sys.exit(__doc__)
    sys.exit(0 if ok else 1)
