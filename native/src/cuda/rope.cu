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

// One warp normalises and rotates one head: src -> dst (64*kPairs bf16 each); returns the head's rstd.
template <int kPairs>
__device__ __forceinline__ float normRopeHead(const bf16* __restrict__ src, bf16* __restrict__ dst,
                                              const bf16* __restrict__ weight, int position, float eps, float theta,
                                              int lane) {
  constexpr int headDim = kPairs * 64, half = kPairs * 32;
  float lo[kPairs], hi[kPairs];
  float sumSq = 0.f;
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    lo[j] = toFloat(src[lane + 32 * j]);
    hi[j] = toFloat(src[lane + 32 * j + half]);
    sumSq += lo[j] * lo[j] + hi[j] * hi[j];
  }
  const float r = rsqrtf(warpSum(sumSq) / headDim + eps);
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
  return r;
}

template <int kPairs>
__global__ void headNormRopeForwardKernel(const bf16* __restrict__ in, int64_t inRowStride, bf16* __restrict__ out,
                                          int64_t outRowStride, const bf16* __restrict__ weight,
                                          const int32_t* __restrict__ positions, float* __restrict__ rstd,
                                          int64_t rows, int heads, float eps, float theta) {
  constexpr int headDim = kPairs * 64;
  const int lane = threadIdx.x & 31;
  const int64_t warpsTotal = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
       item < rows * heads; item += warpsTotal) {
    const int64_t row = item / heads;
    const int head = static_cast<int>(item % heads);
    const float r = normRopeHead<kPairs>(in + row * inRowStride + head * headDim,
                                         out + row * outRowStride + head * headDim, weight, positions[row], eps,
                                         theta, lane);
    if (lane == 0) rstd[item] = r;
  }
}

// The decode step's q/k heads in one launch: a warp per (slot, head) of the numHeads q heads and numKvHeads k
// heads. q goes to qOut; k (normed, rotated) and v (as projected) go straight into the slot's cache row
// lengths[s]-1. Inactive slots (lengths <= 0) are skipped. The per-head math is the forward kernel's.
__global__ void headNormRopeDecodeKernel(const bf16* __restrict__ qkv, int64_t qkvStride, bf16* __restrict__ qOut,
                                         int64_t qOutStride, const bf16* __restrict__ qWeight,
                                         const bf16* __restrict__ kWeight, const int32_t* __restrict__ positions,
                                         const int32_t* __restrict__ lengths, bf16* __restrict__ kCache,
                                         bf16* __restrict__ vCache, int slots, int maxLen, int numHeads,
                                         int numKvHeads, float eps, float theta) {
  constexpr int headDim = 64;
  const int lane = threadIdx.x & 31, heads = numHeads + numKvHeads;
  const int item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (item >= slots * heads) return;
  const int s = item / heads, head = item % heads, len = lengths[s];
  if (len <= 0) return;
  const bf16* row = qkv + int64_t(s) * qkvStride;
  if (head < numHeads) {
    normRopeHead<1>(row + head * headDim, qOut + int64_t(s) * qOutStride + head * headDim, qWeight, positions[s], eps,
                    theta, lane);
    return;
  }
  const int kvh = head - numHeads, kvDim = numKvHeads * headDim;
  const int64_t at = (int64_t(s) * maxLen + (len - 1)) * kvDim + kvh * headDim;
  normRopeHead<1>(row + numHeads * headDim + kvh * headDim, kCache + at, kWeight, positions[s], eps, theta, lane);
  const bf16* v = row + numHeads * headDim + kvDim + kvh * headDim;
  vCache[at + lane] = v[lane];
  vCache[at + lane + 32] = v[lane + 32];
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

void headNormRopeDecode(const bf16* qkv, int64_t qkvStride, bf16* qOut, int64_t qOutStride, const bf16* qWeight,
                        const bf16* kWeight, const int32_t* positions, const int32_t* lengths, bf16* kCache,
                        bf16* vCache, int slots, int maxLen, int numHeads, int numKvHeads, int headDim, float eps,
                        float theta, cudaStream_t stream) {
  require(headDim == 64, "headNormRopeDecode: head dim must be 64, got " + std::to_string(headDim));
  const int items = slots * (numHeads + numKvHeads);
  if (items == 0) return;
  constexpr int kWarps = 8;
  headNormRopeDecodeKernel<<<unsigned((items + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(
      qkv, qkvStride, qOut, qOutStride, qWeight, kWeight, positions, lengths, kCache, vCache, slots, maxLen, numHeads,
      numKvHeads, eps, theta);
  WG_LAUNCH_CHECK(headNormRopeDecodeKernel);
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
