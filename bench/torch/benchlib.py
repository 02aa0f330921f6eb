"""Shared pieces of the PyTorch + transformers reference benchmarks (bench/torch/*.py): the LFM2-350M config
(random weights, built on the GPU), argument helpers, timing and JSON-line output. The JSON keys match what the
engine benchmarks (bench/*.ts) print, so bench/torch/compare.py can set both side by side.

Nothing here downloads anything: the config is written out below and the weights are transformers' random init.
"""
import gc
import inspect
import json
import sys
import time

import torch
import transformers
from transformers import Lfm2Config, Lfm2ForCausalLM

# LiquidAI's LFM2-350M config.json, reduced to the keys that matter (as src/model/config.ts HF_PRESETS has it):
# block_ff_dim 6656 with auto adjust gives the effective MLP width 4608; attention at layers 2 5 8 10 12 14.
LFM2_350M = {
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 1024,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "norm_eps": 1e-5,
    "conv_L_cache": 3,
    "conv_bias": False,
    "rope_theta": 1000000,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    "block_ff_dim": 6656,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "tie_embedding": True,
    "bos_token_id": 1,
    "eos_token_id": 7,
    "pad_token_id": 0,
    "initializer_range": 0.02,
}
EXPECTED_LAYER_TYPES = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                        "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                        "full_attention", "conv"]
EXPECTED_PARAMETERS = 354_483_968
EXPECTED_FF_WIDTH = 4608
# Token ids below this are special tokens; random prompts avoid them (as bench/common.ts does).
FIRST_ORDINARY_TOKEN = 16
# The H100 figures of REFERENCE.md §6 (measured on the GPU machine).
DEFAULT_PEAK_FLOPS = 800e12
DEFAULT_BANDWIDTH = 3.0e12
GIB = 1024 ** 3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]


def versions():
    """Library versions, and whether transformers' LFM2 uses the causal-conv1d CUDA kernels (fast path) or
    plain PyTorch ops for its short convolutions: it changes what the PyTorch numbers mean."""
    try:
        from transformers.models.lfm2 import modeling_lfm2

        fast_path = bool(getattr(modeling_lfm2, "is_fast_path_available", False))
    except ImportError:
        fast_path = None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "lfm2_conv_fast_path": fast_path}


def device_name():
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def require_cuda():
    if not torch.cuda.is_available():
        sys.exit("bench/torch: no CUDA device visible to PyTorch; these reference benchmarks need the GPU machine")


def parameter_count(model):
    """Each parameter once (the tied lm_head is the embedding), as bench/common.ts counts them."""
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_model(dtype, device="cuda"):
    """LFM2-350M with transformers' random init, SDPA attention, built directly on the device. Checks the shape
    of what transformers built against the known 350M numbers, so a config mistake cannot go unnoticed."""
    config = Lfm2Config.from_dict(dict(LFM2_350M))
    with torch.device(device):
        model = Lfm2ForCausalLM(config)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    else:
        model.config._attn_implementation = "sdpa"
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"attention implementation is {model.config._attn_implementation!r}, expected 'sdpa'")
    model.to(dtype)
    if list(config.layer_types) != EXPECTED_LAYER_TYPES:
        raise RuntimeError(f"layer_types {list(config.layer_types)} differ from LFM2-350M's {EXPECTED_LAYER_TYPES}")
    width = model.model.layers[0].feed_forward.w1.weight.shape[0]
    if width != EXPECTED_FF_WIDTH:
        raise RuntimeError(f"MLP width is {width}, expected {EXPECTED_FF_WIDTH}")
    count = parameter_count(model)
    if count != EXPECTED_PARAMETERS:
        raise RuntimeError(f"model has {count:,} parameters, expected {EXPECTED_PARAMETERS:,}")
    return model


def supports_logits_to_keep():
    return "logits_to_keep" in inspect.signature(Lfm2ForCausalLM.forward).parameters


def random_tokens(generator, shape, vocab_size=LFM2_350M["vocab_size"], device="cuda"):
    ids = torch.randint(FIRST_ORDINARY_TOKEN, vocab_size, shape, generator=generator, dtype=torch.long)
    return ids.to(device)


def sync():
    torch.cuda.synchronize()


def now_ms():
    return time.perf_counter() * 1000.0


def free_cuda():
    gc.collect()
    torch.cuda.empty_cache()


def peak_memory():
    """(max allocated GiB, max reserved GiB) since the last reset_peak_memory_stats."""
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB


PEAK_KIND_TORCH = "torch.cuda.max_memory_allocated (reserved in peak_reserved_gib; CUDA context not included)"


def emit(record):
    print(json.dumps(record), flush=True)


def positive_int_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of positive integers (got {text!r})")
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected a comma-separated list of positive integers (got {text!r})")
    return values


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits=0):
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"
