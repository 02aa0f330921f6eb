#!/usr/bin/env bash
# Where a decode step's time goes (issue 5): GPU time per kernel group of generate()'s decode step on LFM2-350M
# (random weights), 512-token prompts, 16 new tokens, for each batch size. The engine's own profile mode
# (WEBGRPO_CUDA_DECODE_PROFILE=1: no graphs, the host enqueues each step behind a GPU sleep, events between the
# kernel groups), so the times are kernel times without launch gaps; graphs remove most of those gaps in real runs.
#   bash bench/profile-decode.sh [BATCHES]   e.g. 1,64   (needs node, the CUDA addon, dist/)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
batches="${1:-1,64}"
if [ -z "${WEBGRPO_CUBLASLT:-}" ]; then
  lt=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.1[0-9]' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):${LD_LIBRARY_PATH:-}"
fi
for b in ${batches//,/ }; do
  log="$(mktemp)"
  WEBGRPO_CUDA_DECODE_PROFILE=1 node dist/bench/sample.js --backend cuda --preset LFM2-350M --batches "$b" \
    --prompt 512 --new 16 --reps 1 >/dev/null 2>"$log" || { tail -3 "$log"; exit 1; }
  # The report of the 16-token call (15 decode steps).
  awk '/^decode profile: .* 15 steps/ {show = 1; print; next} /^decode profile/ {show = 0} show' "$log"
  rm -f "$log"
done
