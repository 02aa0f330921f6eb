#!/usr/bin/env bash
# Builds the GPU test programs with nvcc + g++ directly (no GPU needed, no cuBLAS needed: it is opened at run
# time). Output: tests/gpu/build/engine_parity (git-ignored), plus bench/kernels/build/check_kernels.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
"$root/bench/kernels/build.sh"
out="$root/tests/gpu/build"
mkdir -p "$out/obj"
cuda_home="${CUDA_HOME:-}"
for c in "$cuda_home" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
  if [ -n "$c" ] && [ -f "$c/include/cuda_runtime.h" ]; then cuda_home="$c"; break; fi
done
arch="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"
cxxflags="-std=c++17 -O3 -march=x86-64-v2 -fopenmp -DWEBGRPO_WITH_CUDA -I$root/native/src -I$cuda_home/include"
pids=()
# The CUDA objects are the ones bench/kernels/build.sh just made (same sources, same flags).
for src in "$root/native/src/engine.cpp" "$root/native/src/generation.cpp" "$root/native/src/tensor.cpp" "$root/native/src/cpu/engine_cpu.cpp" \
           "$root/native/src/cpu/ops.cpp" "$root/tests/gpu/engine_parity.cpp"; do
  obj="$out/obj/$(basename "${src%.cpp}").o"
  # Incremental: skip objects newer than their source and every native header.
  if [ -f "$obj" ] && [ -z "$(find "$src" "$root"/native/src \( -name '*.h' -o -samefile "$src" \) -newer "$obj" | head -1)" ]; then continue; fi
  g++ $cxxflags -c "$src" -o "$obj" &
  pids+=($!)
done
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p"; done
cuda_objs=$(ls "$root"/bench/kernels/build/obj/*.o | grep -v -e '/check_kernels.o$' -e '/ops.o$')
nvcc $arch -o "$out/engine_parity" "$out"/obj/*.o $cuda_objs -Xcompiler -fopenmp -lgomp -ldl
echo "built $out/engine_parity"
