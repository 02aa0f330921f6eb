#!/usr/bin/env bash
# Builds the kernel harnesses with nvcc directly (no cmake, no GPU needed):
#   bench/kernels/build.sh            -> bench/kernels/build/check_kernels and check_skinny (git-ignored; away
#   from the addon's build/ folder, which cmake-js may clean)
# The CUDA sources are native/src/cuda/*.cu (the addon's own), the reference is native/src/cpu/ops.cpp.
# cuBLASLt is opened at run time (dlopen); set WEBGRPO_CUBLASLT or LD_LIBRARY_PATH where it is not on the path.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/bench/kernels/build"
mkdir -p "$out/obj"
arch="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"
flags="-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -I$root/native/src"
pids=()
for src in "$root"/native/src/cuda/*.cu "$root"/bench/kernels/check_kernels.cu; do
  obj="$out/obj/$(basename "${src%.cu}").o"
  # Incremental: skip objects newer than their source and every native header.
  if [ -f "$obj" ] && [ -z "$(find "$src" "$root"/native/src \( -name '*.h' -o -name '*.cuh' -o -samefile "$src" \) -newer "$obj" | head -1)" ]; then continue; fi
  nvcc $arch $flags -c "$src" -o "$obj" &
  pids+=($!)
done
if [ ! -f "$out/obj/ops.o" ] || [ "$root/native/src/cpu/ops.cpp" -nt "$out/obj/ops.o" ] || [ "$root/native/src/cpu/ops.h" -nt "$out/obj/ops.o" ]; then
  g++ -std=c++17 -O3 -march=x86-64-v2 -fopenmp -I"$root/native/src" -c "$root/native/src/cpu/ops.cpp" -o "$out/obj/ops.o" &
  pids+=($!)
fi
# The skinny-GEMM harness's own object lives outside obj/ (whose *.o the check_kernels and engine_parity links take
# whole): it has a main() of its own.
mkdir -p "$out/obj_skinny"
skinny_src="$root/bench/kernels/check_skinny.cu" skinny_obj="$out/obj_skinny/check_skinny.o"
if [ ! -f "$skinny_obj" ] || [ -n "$(find "$skinny_src" "$root"/native/src \( -name '*.h' -o -name '*.cuh' -o -samefile "$skinny_src" \) -newer "$skinny_obj" | head -1)" ]; then
  nvcc $arch $flags -Xcompiler -fopenmp -c "$skinny_src" -o "$skinny_obj" &
  pids+=($!)
fi
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p"; done
# The harness needs the kernels only, not the engine (which needs the rest of the addon: tests/gpu/build.sh).
nvcc $arch -o "$out/check_kernels" $(ls "$out"/obj/*.o | grep -v '/engine_cuda.o$') -Xcompiler -fopenmp -lgomp -ldl
echo "built $out/check_kernels"
nvcc $arch -o "$out/check_skinny" "$skinny_obj" $(ls "$out"/obj/*.o | grep -v -e '/engine_cuda.o$' -e '/check_kernels.o$') \
  -Xcompiler -fopenmp -lgomp -ldl
echo "built $out/check_skinny"
