// Token embedding lookup and its gradient (scatter-add into the fp32 gradient of the table).
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

// One block per token; each thread copies 8 bf16 (16 bytes) at a time.
__global__ void embeddingForwardKernel(const int32_t* __restrict__ ids, const bf16* __restrict__ table,
                                       bf16* __restrict__ out, int hidden, int vocab) {
  const int64_t token = blockIdx.x;
  const int id = ids[token];
  uint4* dst = reinterpret_cast<uint4*>(out + token * hidden);
  const int vectors = hidden / 8;
  if (id < 0 || id >= vocab) {
    // Visible poison instead of an out-of-bounds read.
    const bf16 nan = __float2bfloat16(NAN);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[token * hidden + i] = nan;
    return;
  }
  const uint4* src = reinterpret_cast<const uint4*>(table + static_cast<int64_t>(id) * hidden);
  for (int i = threadIdx.x; i < vectors; i += blockDim.x) dst[i] = src[i];
}

// Same lookup into the fp32 residual stream.
__global__ void embeddingForwardF32Kernel(const int32_t* __restrict__ ids, const bf16* __restrict__ table,
                                          float* __restrict__ out, int hidden, int vocab) {
  const int64_t token = blockIdx.x;
  const int id = ids[token];
  const bool valid = id >= 0 && id < vocab;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    out[token * hidden + i] = valid ? toFloat(table[static_cast<int64_t>(id) * hidden + i]) : NAN;
}

template <typename GradT>
__global__ void embeddingBackwardKernel(const int32_t* __restrict__ ids, const GradT* __restrict__ dout,
                                        const uint8_t* __restrict__ rowMask, float* __restrict__ dtable, int hidden,
                                        int vocab) {
  const int64_t token = blockIdx.x;
  if (rowMask && !rowMask[token]) return;
  const int id = ids[token];
  if (id < 0 || id >= vocab) return;
  float* dst = dtable + static_cast<int64_t>(id) * hidden;
  const GradT* src = dout + token * hidden;
  // Atomics: the same id can occur in many rows. Float addition order varies, so the result can differ in the
  // last bits between runs (no other effect).
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) atomicAdd(dst + i, static_cast<float>(src[i]));
}

}  // namespace

void embeddingForward(const int32_t* ids, const bf16* table, bf16* out, int64_t tokens, int hidden, int vocab,
                      cudaStream_t stream) {
  require(hidden % 8 == 0, "embeddingForward: hidden size must be a multiple of 8, got " + std::to_string(hidden));
  if (tokens == 0) return;
  embeddingForwardKernel<<<static_cast<unsigned>(tokens), 128, 0, stream>>>(ids, table, out, hidden, vocab);
  WG_LAUNCH_CHECK(embeddingForwardKernel);
}

void embeddingForward(const int32_t* ids, const bf16* table, float* out, int64_t tokens, int hidden, int vocab,
                      cudaStream_t stream) {
  if (tokens == 0) return;
  embeddingForwardF32Kernel<<<static_cast<unsigned>(tokens), 256, 0, stream>>>(ids, table, out, hidden, vocab);
  WG_LAUNCH_CHECK(embeddingForwardF32Kernel);
}

void embeddingBackward(const int32_t* ids, const bf16* dout, const uint8_t* rowMask, float* dtable, int64_t tokens,
                       int hidden, int vocab, cudaStream_t stream) {
  if (tokens == 0) return;
  embeddingBackwardKernel<<<static_cast<unsigned>(tokens), 256, 0, stream>>>(ids, dout, rowMask, dtable, hidden,
                                                                             vocab);
  WG_LAUNCH_CHECK(embeddingBackwardKernel);
}

void embeddingBackward(const int32_t* ids, const float* dout, const uint8_t* rowMask, float* dtable, int64_t tokens,
                       int hidden, int vocab, cudaStream_t stream) {
  if (tokens == 0) return;
  embeddingBackwardKernel<<<static_cast<unsigned>(tokens), 256, 0, stream>>>(ids, dout, rowMask, dtable, hidden,
                                                                             vocab);
  WG_LAUNCH_CHECK(embeddingBackwardKernel);
}

}  // namespace webgrpo::cuda
