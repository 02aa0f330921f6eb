#!/usr/bin/env bash
# Issue 8's recipe: GRPO with LFM2-350M (configs/gpu_350m_e2e.yaml: exact config, random weights, one browser
# step per episode, constrained decoding) on click-test and click-button, in full fine-tune and LoRA modes (LoRA:
# r 8 on all eight LFM2 linear-layer kinds, lora.enabled=true) on the CUDA engine, rewards from Chromium on the
# same machine; then the PyTorch + transformers reference GRPO step (bench/torch/grpo_step.py) at the batch shape
# our first run had, and the summary table (bench/e2e-summary.ts).
#
#   bash bench/e2e-gpu.sh [--steps N] [--tasks click-test,click-button] [--modes full,lora] [--set key=value ...]
#
# Needs node on PATH, CHROMIUM_PATH (../shared/device/README.md: the staged headless Chromium), the CUDA addon
# (build/Release/webgrpo.node), dist/ and python3 with torch + transformers. Output in $OUT (default
# ./e2e-out): per task a run folder (metrics.jsonl, eval.json, report.html, gpu-memory.txt), logs, summary.md.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
steps="" tasks="click-test,click-button" modes="full,lora" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="${2:?}"; shift 2 ;;
    --tasks) tasks="${2:?}"; shift 2 ;;
    --modes) modes="${2:?}"; shift 2 ;;
    --set) extra+=(--set "${2:?}"); shift 2 ;;
    *) echo "usage: bench/e2e-gpu.sh [--steps N] [--tasks a,b] [--modes full,lora] [--set key=value ...]" >&2; exit 2 ;;
  esac
done
out="${OUT:-$root/e2e-out}"
mkdir -p "$out"
[ -n "${CHROMIUM_PATH:-}" ] || { echo "e2e-gpu.sh: CHROMIUM_PATH is not set (stage a Chromium first)" >&2; exit 1; }
command -v nvidia-smi >/dev/null || { echo "e2e-gpu.sh: no nvidia-smi: this recipe needs the GPU machine" >&2; exit 1; }
if [ -z "${WEBGRPO_CUBLASLT:-}" ]; then
  lt=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.1[0-9]' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):${LD_LIBRARY_PATH:-}"
fi
[ -n "$steps" ] && extra+=(--set "grpo.steps=$steps")
target() { case "$1" in click-test) echo 0.95 ;; click-button) echo 0.8 ;; *) echo 0.8 ;; esac; }
runs=()
status=0
first=""
for mode in ${modes//,/ }; do
  case "$mode" in
    full) mode_set=() ;;
    lora) mode_set=(--set lora.enabled=true) ;;
    *) echo "e2e-gpu.sh: unknown mode \"$mode\" (full, lora)" >&2; exit 2 ;;
  esac
  for task in ${tasks//,/ }; do
    name="$mode-$task"
    dir="$out/runs/$name"
    [ -n "$first" ] || first="$dir"
    rm -rf "$dir" && mkdir -p "$dir"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$dir/gpu-memory.txt" &
    monitor=$!
    echo "== $name: node bin/webgrpo.js train --config configs/gpu_350m_e2e.yaml --set env.tasks=[$task] ${mode_set[*]} ${extra[*]} --eval"
    t0=$SECONDS
    node bin/webgrpo.js train --config configs/gpu_350m_e2e.yaml --set "env.tasks=[$task]" --set "run_dir=$dir" \
      "${mode_set[@]}" "${extra[@]}" --eval >"$out/$name.out" 2>"$out/$name.err" || { status=1; echo "   FAILED: $(tail -n 3 "$out/$name.err")"; }
    kill "$monitor" 2>/dev/null
    echo "   $((SECONDS - t0)) s"
    runs+=(--run "$name=$dir:$(target "$task")")
  done
done
# The reference step at our first run's shape: sequences per step, mean prompt and completion tokens.
shape=$(node -e '
  const fs = require("fs");
  const lines = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse).slice(1);
  const m = (f) => lines.reduce((a, x) => a + f(x), 0) / lines.length;
  const eps = lines[0].episodes;
  console.log(eps, Math.round(m((x) => x.prompt_tokens / x.episodes)), Math.max(1, Math.round(m((x) => x.new_tokens / x.episodes))));
' "$first/metrics.jsonl" 2>/dev/null)
if [ -n "$shape" ]; then
  read -r episodes prompt new <<<"$shape"
  group=$(node -e 'const y=require("yaml").parse(require("fs").readFileSync("configs/gpu_350m_e2e.yaml","utf8")); console.log(y.grpo.num_generations)')
  echo "== PyTorch reference step: $((episodes / group)) prompts x $group, prompt $prompt, $new new tokens"
  timeout 150 python3 bench/torch/grpo_step.py --prompts $((episodes / group)) --group "$group" --prompt "$prompt" \
    --new "$new" --warmup 1 --iters 3 >"$out/torch-grpo.out" 2>"$out/torch-grpo.err" || { status=1; echo "   FAILED: $(tail -n 3 "$out/torch-grpo.err")"; }
fi
node dist/bench/e2e-summary.js "${runs[@]}" --torch "$out/torch-grpo.out" | tee "$out/summary.md" || status=1
exit $status
