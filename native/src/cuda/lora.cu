// LoRA dropout masks for the CUDA engine's adapters (the adapter products themselves are cuBLASLt GEMMs).
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

// Keep factor of element `index` of a pass: 0 with probability p, else 1/(1-p). splitmix64's finaliser of the
// seed and the index, so every element is independent and reproducible without state.
__device__ __forceinline__ float dropoutKeep(uint64_t seed, uint64_t index, float p) {
  uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const double u = double(z >> 11) * 0x1.0p-53;
  return u < p ? 0.f : 1.f / (1.f - p);
}

__global__ void loraDropoutKernel(const bf16* __restrict__ x, int64_t ldx, bf16* __restrict__ out, int64_t rows,
                                  int cols, float p, uint64_t seed) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  out[i] = toBf16(toFloat(x[r * ldx + c]) * dropoutKeep(seed, uint64_t(i), p));
}

__global__ void loraDropoutAddBackwardKernel(const bf16* __restrict__ t, bf16* __restrict__ dx, int64_t lddx,
                                             int64_t rows, int cols, float p, uint64_t seed) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  bf16& d = dx[r * lddx + c];
  d = toBf16(toFloat(d) + toFloat(t[i]) * dropoutKeep(seed, uint64_t(i), p));
}

}  // namespace

void loraDropout(const bf16* x, int64_t ldx, bf16* out, int64_t rows, int cols, float p, uint64_t seed,
                 cudaStream_t stream) {
  if (rows * cols == 0) return;
  loraDropoutKernel<<<ceilDiv(rows * cols, 256), 256, 0, stream>>>(x, ldx, out, rows, cols, p, seed);
  WG_LAUNCH_CHECK(loraDropoutKernel);
}

void loraDropoutAddBackward(const bf16* t, bf16* dx, int64_t lddx, int64_t rows, int cols, float p, uint64_t seed,
                            cudaStream_t stream) {
  if (rows * cols == 0) return;
  loraDropoutAddBackwardKernel<<<ceilDiv(rows * cols, 256), 256, 0, stream>>>(t, dx, lddx, rows, cols, p, seed);
  WG_LAUNCH_CHECK(loraDropoutAddBackwardKernel);
}

}  // namespace webgrpo::cuda
