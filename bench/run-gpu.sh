#!/usr/bin/env bash
# Side-by-side benchmarks on the GPU machine (issues 5, 6, 7, 8): the engine's bench drivers (dist/bench/*.js) and
# the PyTorch + transformers (+ PEFT) references (bench/torch/*.py), one after another on the same GPU, each capped
# with `timeout`, then one markdown table per benchmark (bench/torch/compare.py).
#
#   source .device/node/on-device.sh && bash bench/run-gpu.sh [--only train,sample,grpo,lora] [--smoke]
#
# Needs: node on PATH, build/Release/webgrpo.node built with CUDA, dist/ (npm run build:ts), python3 with torch,
# transformers and peft. Everything (stdout .out, stderr .err, JSON lines .jsonl, summary.md) goes to $OUT
# (default ./bench-out). Worst case (every step hitting its cap) is 465 s; normally much less.
# --smoke: the engine drivers on the CPU backend with the tiny preset and tiny shapes (checks the plumbing on a
# machine without a GPU; the PyTorch steps still run and fail fast there without CUDA).
# Exit status: 0 when every step succeeded, 1 otherwise (a failing step's reason is in the table).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
only="train,sample,grpo,lora"
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only="${2:?--only needs a list, e.g. train,sample}"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    *) echo "usage: bench/run-gpu.sh [--only train,sample,grpo,lora] [--smoke]" >&2; exit 2 ;;
  esac
done
for b in ${only//,/ }; do
  case "$b" in train|sample|grpo|lora) ;; *) echo "run-gpu.sh: unknown benchmark \"$b\" in --only (train, sample, grpo, lora)" >&2; exit 2 ;; esac
done
wants() { [[ ",$only," == *",$1,"* ]]; }

out="${OUT:-$root/bench-out}"
mkdir -p "$out"
dist="${BENCH_DIST:-$root/dist}"
python="${PYTHON:-python3}"

problems=()
command -v node >/dev/null 2>&1 || problems+=("node is not on PATH (source .device/node/on-device.sh first)")
[ -f "$dist/bench/train.js" ] || problems+=("$dist/bench/train.js is missing (npm run build:ts, and carry dist/)")
[ -n "${WEBGRPO_ADDON:-}" ] || [ -f "$root/build/Release/webgrpo.node" ] || \
  problems+=("build/Release/webgrpo.node is missing (npm run build:native, and carry build/Release)")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'run-gpu.sh: %s\n' "${problems[@]}" >&2
  exit 1
fi
# The drivers find the addon from their own location; pin it to this checkout's build whatever BENCH_DIST is.
export WEBGRPO_ADDON="${WEBGRPO_ADDON:-$root/build/Release/webgrpo.node}"
# cuBLASLt is opened at run time: put the toolkit's (or a Python wheel's) copy on the library path, as
# tests/gpu/run.sh does.
if [ -z "${WEBGRPO_CUBLASLT:-}" ]; then
  lt=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.1[0-9]' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):${LD_LIBRARY_PATH:-}"
fi

if [ "$smoke" = 1 ]; then
  ours=(--backend cpu --preset tiny)
  train_args=(--shapes 2x64:all,4x40:8 --warmup 1 --iters 2)
  lora_args=(--shapes 2x64:all --warmup 1 --iters 2)
  sample_args=(--batches 1,4 --prompt 32 --new 8 --reps 1)
  grpo_args=(--prompts 2 --group 3 --prompt 40 --new 6 --micro 4 --warmup 1 --iters 1)
else
  ours=(--backend cuda --preset LFM2-350M)
  train_args=(--shapes 16x1024:all,64x632:32 --warmup 3 --iters 10)
  lora_args=(--shapes 16x1024:all --warmup 3 --iters 10)
  sample_args=(--batches 1,8,64,256 --prompt 512 --new 64 --reps 2)
  grpo_args=(--prompts 8 --group 8 --prompt 600 --new 32 --micro 64 --warmup 1 --iters 3)
fi

summary=()
failed=0
# run_step NAME CAP_SECONDS OK_CODES COMMAND...: stdout → NAME.out (+ its JSON lines → NAME.jsonl), stderr → NAME.err
run_step() {
  local name="$1" cap="$2" ok_codes="$3"; shift 3
  echo "== $name (cap ${cap}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$cap" "$@" >"$out/$name.out" 2>"$out/$name.err"
  local rc=$?
  local took=$((SECONDS - t0))
  grep '^{' "$out/$name.out" >"$out/$name.jsonl" || true
  local verdict="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    verdict="TIMED OUT after ${cap}s (kept the $(wc -l <"$out/$name.jsonl") lines it had printed)"
  elif [[ " $ok_codes " != *" $rc "* ]]; then
    verdict="FAILED (exit $rc): $(tail -n 3 "$out/$name.err" | tr '\n' ' ')"
  fi
  [ "$verdict" = ok ] || failed=1
  grep -v '^{' "$out/$name.out" | sed '/^$/d' | sed 's/^/   /'
  echo "   -> $verdict in ${took}s"
  summary+=("| $name | $rc | ${took}s | $verdict |")
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"
  echo "node: $(node --version)"
  "$python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -n 1
  "$python" -c 'import peft; print("peft", peft.__version__)' 2>&1 | tail -n 1
} | tee "$out/environment.txt"

if wants train; then
  run_step ours-train 60 "0" node "$dist/bench/train.js" "${ours[@]}" "${train_args[@]}"
  run_step torch-train 110 "0" "$python" bench/torch/train_step.py --modes fp32-master-bf16-autocast,bf16 \
    --shapes 16x1024:all,64x632:32 --warmup 3 --iters 10
fi
if wants lora; then
  run_step ours-lora 40 "0" node "$dist/bench/train.js" "${ours[@]}" "${lora_args[@]}" --lora-ranks 8,16
  # Issue 7's shape: 16×1024 tokens.
  run_step torch-lora 60 "0" "$python" bench/torch/train_step.py --modes lora-r8,lora-r16 --shapes 16x1024:all \
    --warmup 3 --iters 10
fi
if wants sample; then
  run_step ours-sample 50 "0" node "$dist/bench/sample.js" "${ours[@]}" "${sample_args[@]}"
  run_step torch-sample 70 "0" "$python" bench/torch/sample.py --batches 1,8,64,256 --prompt 512 --new 64 --reps 2 \
    --max-seconds 45
fi
if wants grpo; then
  run_step ours-grpo 45 "0" node "$dist/bench/grpo.js" "${ours[@]}" "${grpo_args[@]}"
  # The same step in micro-batches of 16 sequences (the end-to-end runs' setting): less activation memory.
  run_step ours-grpo-micro16 45 "0" node "$dist/bench/grpo.js" "${ours[@]}" "${grpo_args[@]}" --micro 16
  run_step torch-grpo 55 "0" "$python" bench/torch/grpo_step.py --prompts 8 --group 8 --prompt 600 --new 32 \
    --warmup 1 --iters 3
fi

echo
{
  echo "| step | exit | time | result |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${summary[@]}"
  echo
  "$python" bench/torch/compare.py "$out" || echo "(compare.py failed: see above)"
} | tee "$out/summary.md"
echo
echo "logs and JSON lines: $out"
exit $failed
