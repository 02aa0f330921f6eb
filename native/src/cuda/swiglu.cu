// SwiGLU: out = silu(gate) * up over the fused [gate | up] projection; forward and backward.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

// Each thread handles 8 consecutive columns of one row: 16-byte loads and stores.
constexpr int kVec = 8;

union Pack8 {
  uint4 raw;
  bf16 v[kVec];
};

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

__global__ void swigluForwardKernel(const bf16* __restrict__ gateUp, bf16* __restrict__ out, int64_t rows,
                                    int intermediate) {
  const int vectorsPerRow = intermediate / kVec;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * vectorsPerRow) return;
  const int64_t row = index / vectorsPerRow;
  const int col = static_cast<int>(index % vectorsPerRow) * kVec;
  const bf16* base = gateUp + row * 2 * intermediate;
  Pack8 gate, up, result;
  gate.raw = *reinterpret_cast<const uint4*>(base + col);
  up.raw = *reinterpret_cast<const uint4*>(base + intermediate + col);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const float g = toFloat(gate.v[i]);
    result.v[i] = toBf16(g * sigmoid(g) * toFloat(up.v[i]));
  }
  *reinterpret_cast<uint4*>(out + row * intermediate + col) = result.raw;
}

__global__ void swigluBackwardKernel(const bf16* __restrict__ dout, const bf16* __restrict__ gateUp,
                                     bf16* __restrict__ dgateUp, int64_t rows, int intermediate) {
  const int vectorsPerRow = intermediate / kVec;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * vectorsPerRow) return;
  const int64_t row = index / vectorsPerRow;
  const int col = static_cast<int>(index % vectorsPerRow) * kVec;
  const bf16* base = gateUp + row * 2 * intermediate;
  Pack8 gate, up, dy, dGate, dUp;
  gate.raw = *reinterpret_cast<const uint4*>(base + col);
  up.raw = *reinterpret_cast<const uint4*>(base + intermediate + col);
  dy.raw = *reinterpret_cast<const uint4*>(dout + row * intermediate + col);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const float g = toFloat(gate.v[i]), u = toFloat(up.v[i]), d = toFloat(dy.v[i]);
    const float s = sigmoid(g);
    const float silu = g * s;
    // d silu / dg = s * (1 + g * (1 - s))
    dGate.v[i] = toBf16(d * u * s * (1.f + g * (1.f - s)));
    dUp.v[i] = toBf16(d * silu);
  }
  bf16* dbase = dgateUp + row * 2 * intermediate;
  *reinterpret_cast<uint4*>(dbase + col) = dGate.raw;
  *reinterpret_cast<uint4*>(dbase + intermediate + col) = dUp.raw;
}

}  // namespace

void swigluForward(const bf16* gateUp, bf16* out, int64_t rows, int intermediate, cudaStream_t stream) {
  require(intermediate > 0 && intermediate % kVec == 0,
          "swigluForward: intermediate size must be a positive multiple of 8, got " + std::to_string(intermediate));
  if (rows == 0) return;
  const int64_t threads = rows * (intermediate / kVec);
  swigluForwardKernel<<<ceilDiv(threads, 256), 256, 0, stream>>>(gateUp, out, rows, intermediate);
  WG_LAUNCH_CHECK(swigluForwardKernel);
}

void swigluBackward(const bf16* dout, const bf16* gateUp, bf16* dgateUp, int64_t rows, int intermediate,
                    cudaStream_t stream) {
  require(intermediate > 0 && intermediate % kVec == 0,
          "swigluBackward: intermediate size must be a positive multiple of 8, got " + std::to_string(intermediate));
  if (rows == 0) return;
  const int64_t threads = rows * (intermediate / kVec);
  swigluBackwardKernel<<<ceilDiv(threads, 256), 256, 0, stream>>>(dout, gateUp, dgateUp, rows, intermediate);
  WG_LAUNCH_CHECK(swigluBackwardKernel);
}

}  // namespace webgrpo::cuda
