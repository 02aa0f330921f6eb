#!/usr/bin/env bash
# The GPU test script (issue 6): kernel checks against the CPU ops, CUDA engine parity against the CPU engine and
# train-step timings, optionally live parity against transformers and a PyTorch baseline. Needs an NVIDIA GPU
# (sm_90); exits non-zero on any failure, 0 when all pass, and 77 (skipped, said openly) when no GPU is visible.
#   tests/gpu/run.sh [--build] [--memcheck] [--transformers]
#     --build         rebuild first (binaries built on a machine without a GPU can be carried to one)
#     --memcheck      also run compute-sanitizer memcheck over the attention checks and the small engine parity,
#                     and racecheck over the attention checks
#     --transformers  also compare with transformers and time PyTorch (needs python3 with torch + transformers)
# Logs go to $OUT when it is set (the device machine), else tests/gpu/build/logs.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build=0 memcheck=0 transformers=0
for a in "$@"; do
  case "$a" in
    --build) build=1 ;;
    --memcheck) memcheck=1 ;;
    --transformers) transformers=1 ;;
    *) echo "usage: tests/gpu/run.sh [--build] [--memcheck] [--transformers]" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ] || [ ! -x "$root/tests/gpu/build/engine_parity" ] || [ ! -x "$root/bench/kernels/build/check_kernels" ]; then
  "$root/tests/gpu/build.sh" || { echo "GPU test build failed"; exit 1; }
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "SKIPPED: no NVIDIA GPU visible (the CUDA code was built; the GPU checks did not run)"
  exit 77
fi
logs="${OUT:-$root/tests/gpu/build/logs}"
mkdir -p "$logs"
# cuBLASLt is opened at run time: put the toolkit's copy on the library path.
if [ -z "${WEBGRPO_CUBLASLT:-}" ]; then
  lt=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.1[0-9]' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$root/bench/kernels/build/lib"
# GPU_TEST_BUDGET (seconds): the optional stages are skipped, each said so, when they would not fit.
budget="${GPU_TEST_BUDGET:-100000}"
fits() { [ $((SECONDS + $1)) -lt "$budget" ]; }
status=0
"$root/bench/kernels/build/check_kernels" >"$logs/check_kernels.log" 2>&1 || status=1
dump="${TMPDIR:-/tmp}/webgrpo_parity"
mkdir -p "$dump"
if ! "$root/tests/gpu/build/engine_parity" --dump "$dump" >"$logs/engine_parity.log" 2>&1; then
  status=1
  # Tell apart a tensor-core attention problem from the rest: the same parity with the CUDA-core kernels.
  fits 60 && WEBGRPO_CUDA_ATTENTION=simt "$root/tests/gpu/build/engine_parity" --skip-timing \
    >"$logs/engine_parity_simt.log" 2>&1
fi
incomplete=0
stage() {  # stage SECONDS LOG command...: run with a time limit if it fits the budget
  local need=$1 log=$2 rc
  shift 2
  if fits "$need"; then
    timeout "$need" "$@" >"$log" 2>&1
    rc=$?
    if [ $rc = 124 ]; then
      echo "TIMED OUT after ${need}s (incomplete, not failed): $*" | tee -a "$log"
      incomplete=1
    elif [ $rc != 0 ]; then
      status=1
    fi
  else
    echo "SKIPPED (time budget): $*" | tee "$log"
    incomplete=1
  fi
}
if [ "$transformers" = 1 ]; then
  stage 80 "$logs/pytorch_bench.log" python3 "$root/tests/gpu/transformers_parity.py" bench
  stage 80 "$logs/transformers_lfm2_350m.log" python3 "$root/tests/gpu/transformers_parity.py" compare "$dump" lfm2_350m
fi
if [ "$memcheck" = 1 ]; then
  stage 45 "$logs/memcheck_kernels.log" compute-sanitizer --error-exitcode 1 --tool memcheck --leak-check no \
    "$root/bench/kernels/build/check_kernels" --no-timing --only attention
  stage 45 "$logs/memcheck_engine.log" compute-sanitizer --error-exitcode 1 --tool memcheck --leak-check no \
    "$root/tests/gpu/build/engine_parity" --skip-350m --skip-timing
  stage 45 "$logs/racecheck_attention.log" compute-sanitizer --error-exitcode 1 --tool racecheck \
    "$root/bench/kernels/build/check_kernels" --no-timing --only attention
fi
if [ "$transformers" = 1 ]; then
  stage 40 "$logs/transformers_small.log" python3 "$root/tests/gpu/transformers_parity.py" compare "$dump" small
fi
# Short report: every failure, the timing tables, the closing counts.
echo "== failures =="
grep -h -E "FAIL|ERROR|Error|error:|hazard" "$logs"/*.log | grep -v -E "(ERROR|RACECHECK) SUMMARY: 0 " | head -40
echo "== kernel timings (16x1024 tokens, LFM2-350M) =="
sed -n '/== summary ==/,$p' "$logs/check_kernels.log" | grep -v -E "passed|FAILED"
echo "== engine =="
grep -h -E "gradient rel|train step|tokens/s|identical|chi-square|passed," "$logs"/engine_parity*.log
for f in "$logs"/transformers_*.log "$logs"/pytorch_bench.log; do [ -f "$f" ] && tail -n 8 "$f"; done
grep -H -E "ERROR SUMMARY|RACECHECK SUMMARY" "$logs"/memcheck_*.log "$logs"/racecheck_*.log 2>/dev/null
grep -h -E "^[0-9]+ passed, [0-9]+ failed" "$logs"/check_kernels.log "$logs"/engine_parity.log
echo "GPU tests: $([ $status = 0 ] && echo PASSED || echo FAILED)$([ $incomplete = 1 ] && echo ' (some optional stages skipped or timed out, see above)')"
exit $status
