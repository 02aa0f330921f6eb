// Per-head RMSNorm (q_layernorm / k_layernorm) followed by rotate-half RoPE, forward and backward.
// One warp per (row, head): lane l owns the rotation pairs (i, i + headDim/2) for i = l + 32j.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

constexpr int kMaxPairsPerLane = 4;  // headDim <= 256

__device__ __forceinline__ void ropeAngle(int position, int pairIndex, int headDim, float theta, float* c, float* s) {
  // Same fp32 recipe as transformers: inv_freq = 1 / theta^(2i/d), angle = position * inv_freq.
  const float invFreq = 1.f / powf(theta, static_cast<float>(2 * pairIndex) / static_cast<float>(headDim));
  sincosf(static_cast<float>(position) * invFreq, s, c);
}

template <int kPairs>
__global__ void headNormRopeForwardKernel(const bf16* __restrict__ in, int64_t inRowStride, bf16* __restrict__ out,
                                          int64_t outRowStride, const bf16* __restrict__ weight,
                                          const int32_t* __restrict__ positions, float* __restrict__ rstd,
                                          int64_t rows, int heads, float eps, float theta) {
  constexpr int headDim = kPairs * 64, half = kPairs * 32;
  const int lane = threadIdx.x & 31;
  const int64_t warpsTotal = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
       item < rows * heads; item += warpsTotal) {
    const int64_t row = item / heads;
    const int head = static_cast<int>(item % heads);
    const bf16* src = in + row * inRowStride + head * headDim;
    float lo[kPairs], hi[kPairs];
    float sumSq = 0.f;
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      lo[j] = toFloat(src[lane + 32 * j]);
      hi[j] = toFloat(src[lane + 32 * j + half]);
      sumSq += lo[j] * lo[j] + hi[j] * hi[j];
    }
    const float r = rsqrtf(warpSum(sumSq) / headDim + eps);
    if (lane == 0) rstd[item] = r;
    const int position = positions[row];
    bf16* dst = out + row * outRowStride + head * headDim;
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const int i = lane + 32 * j;
      const float a = lo[j] * r * toFloat(weight[i]);
      const float b = hi[j] * r * toFloat(weight[i + half]);
      float c, s;
      ropeAngle(position, i, headDim, theta, &c, &s);
      dst[i] = toBf16(a * c - b * s);
      dst[i + half] = toBf16(b * c + a * s);
    }
  }
}

template <int kPairs>
__global__ void headNormRopeBackwardKernel(const bf16* __restrict__ dout, int64_t doutRowStride,
                                           const bf16* __restrict__ in, int64_t inRowStride,
                                           const bf16* __restrict__ weight, const int32_t* __restrict__ positions,
                                           const float* __restrict__ rstd, bf16* __restrict__ din,
                                           int64_t dinRowStride, float* __restrict__ dweight, int64_t rows,
                                           int heads, float theta) {
  constexpr int headDim = kPairs * 64, half = kPairs * 32;
  __shared__ float dwShared[headDim];
  for (int i = threadIdx.x; i < headDim; i += blockDim.x) dwShared[i] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  float wLo[kPairs], wHi[kPairs], dwLo[kPairs], dwHi[kPairs];
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    wLo[j] = toFloat(weight[lane + 32 * j]);
    wHi[j] = toFloat(weight[lane + 32 * j + half]);
    dwLo[j] = dwHi[j] = 0.f;
  }
  const int64_t warpsTotal = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
       item < rows * heads; item += warpsTotal) {
    const int64_t row = item / heads;
    const int head = static_cast<int>(item % heads);
    const float r = rstd[item];
    const int position = positions[row];
    const bf16* x = in + row * inRowStride + head * headDim;
    const bf16* dy = dout + row * doutRowStride + head * headDim;
    float xhLo[kPairs], xhHi[kPairs], gLo[kPairs], gHi[kPairs];
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const int i = lane + 32 * j;
      float c, s;
      ropeAngle(position, i, headDim, theta, &c, &s);
      const float dyLo = toFloat(dy[i]), dyHi = toFloat(dy[i + half]);
      // Inverse rotation takes the gradient back to the normed-and-weighted values.
      const float dnLo = dyLo * c + dyHi * s;
      const float dnHi = -dyLo * s + dyHi * c;
      xhLo[j] = toFloat(x[i]) * r;
      xhHi[j] = toFloat(x[i + half]) * r;
      dwLo[j] += dnLo * xhLo[j];
      dwHi[j] += dnHi * xhHi[j];
      gLo[j] = dnLo * wLo[j];
      gHi[j] = dnHi * wHi[j];
      dot += gLo[j] * xhLo[j] + gHi[j] * xhHi[j];
    }
    const float meanDot = warpSum(dot) / headDim;
    bf16* dx = din + row * dinRowStride + head * headDim;
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const int i = lane + 32 * j;
      dx[i] = toBf16(r * (gLo[j] - xhLo[j] * meanDot));
      dx[i + half] = toBf16(r * (gHi[j] - xhHi[j] * meanDot));
    }
  }
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    atomicAdd(&dwShared[lane + 32 * j], dwLo[j]);
    atomicAdd(&dwShared[lane + 32 * j + half], dwHi[j]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < headDim; i += blockDim.x) atomicAdd(dweight + i, dwShared[i]);
}

unsigned gridFor(int64_t items, int warpsPerBlock) {
  static int sms = [] {
    int device = 0, count = 0;
    WG_CUDA_CHECK(cudaGetDevice(&device));
    WG_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  }();
  const int64_t needed = (items + warpsPerBlock - 1) / warpsPerBlock;
  const int64_t cap = 8LL * sms;
  return static_cast<unsigned>(needed < cap ? needed : cap);
}

void checkHeadDim(int headDim, const char* who) {
  require(headDim % 64 == 0 && headDim >= 64 && headDim <= 64 * kMaxPairsPerLane,
          std::string(who) + ": head dim must be 64, 128, 192 or 256, got " + std::to_string(headDim));
}

}  // namespace

void headNormRopeForward(const bf16* in, int64_t inRowStride, bf16* out, int64_t outRowStride, const bf16* weight,
                         const int32_t* positions, float* rstd, int64_t rows, int heads, int headDim, float eps,
                         float theta, cudaStream_t stream) {
  checkHeadDim(headDim, "headNormRopeForward");
  if (rows * heads == 0) return;
  const unsigned grid = gridFor(rows * heads, 8);
#define WG_LAUNCH(P)                                                                                      \
  headNormRopeForwardKernel<P><<<grid, 256, 0, stream>>>(in, inRowStride, out, outRowStride, weight,     \
                                                         positions, rstd, rows, heads, eps, theta)
  switch (headDim / 64) {
    case 1: WG_LAUNCH(1); break;
    case 2: WG_LAUNCH(2); break;
    case 3: WG_LAUNCH(3); break;
    default: WG_LAUNCH(4); break;
  }
#undef WG_LAUNCH
  WG_LAUNCH_CHECK(headNormRopeForwardKernel);
}

void headNormRopeBackward(const bf16* dout, int64_t doutRowStride, const bf16* in, int64_t inRowStride,
                          const bf16* weight, const int32_t* positions, const float* rstd, bf16* din,
                          int64_t dinRowStride, float* dweight, int64_t rows, int heads, int headDim, float theta,
                          cudaStream_t stream) {
  checkHeadDim(headDim, "headNormRopeBackward");
  if (rows * heads == 0) return;
  const unsigned grid = gridFor(rows * heads, 8);
#define WG_LAUNCH(P)                                                                                    \
  headNormRopeBackwardKernel<P><<<grid, 256, 0, stream>>>(dout, doutRowStride, in, inRowStride, weight, \
                                                          positions, rstd, din, dinRowStride, dweight,  \
                                                          rows, heads, theta)
  switch (headDim / 64) {
    case 1: WG_LAUNCH(1); break;
    case 2: WG_LAUNCH(2); break;
    case 3: WG_LAUNCH(3); break;
    default: WG_LAUNCH(4); break;
  }
#undef WG_LAUNCH
  WG_LAUNCH_CHECK(headNormRopeBackwardKernel);
}

}  // namespace webgrpo::cuda
