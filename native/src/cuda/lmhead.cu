// Tied lm_head fused with the tempered log-softmax: per scored row, log p(target), entropy and logsumexp, and the
// backward pass into the final hidden states and the embedding table. Logits exist only chunkRows rows at a time.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

constexpr int kThreads = 512;

// Running softmax statistics over a set of tempered logits z: max m, s = sum e^(z-m), t = sum e^(z-m) z.
struct SoftmaxStats {
  float m, s, t;
};

__device__ __forceinline__ void addLogit(SoftmaxStats& a, float z) {
  if (z == -INFINITY) return;
  if (z > a.m) {
    const float scale = __expf(a.m - z);  // 0 when a.m = -inf
    a.s = a.s * scale + 1.f;
    a.t = a.t * scale + z;
    a.m = z;
  } else {
    const float e = __expf(z - a.m);
    a.s += e;
    a.t += e * z;
  }
}

__device__ __forceinline__ SoftmaxStats merge(SoftmaxStats a, SoftmaxStats b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return a;
  const float ea = __expf(a.m - m), eb = __expf(b.m - m);
  return {m, a.s * ea + b.s * eb, a.t * ea + b.t * eb};
}

__device__ SoftmaxStats blockMerge(SoftmaxStats v) {
  __shared__ SoftmaxStats scratch[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    SoftmaxStats other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset),
                       __shfl_xor_sync(0xffffffffu, v.t, offset)};
    v = merge(v, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  SoftmaxStats total{-INFINITY, 0.f, 0.f};
  for (int w = 0; w < (blockDim.x >> 5); ++w) total = merge(total, scratch[w]);
  return total;
}

// One block per row of the chunk.
__global__ void __launch_bounds__(kThreads) logprobRowsKernel(const float* __restrict__ logits,
                                                               const int32_t* __restrict__ targets,
                                                               float invTemperature, AllowedTokensDevice allowed,
                                                               int rowOffset, float* __restrict__ logprob,
                                                               float* __restrict__ entropy, float* __restrict__ lse,
                                                               int vocab) {
  const int local = blockIdx.x;
  const int row = rowOffset + local;
  const float* z = logits + static_cast<int64_t>(local) * vocab;
  SoftmaxStats stats{-INFINITY, 0.f, 0.f};
  if (allowed.offsets) {
    for (int e = allowed.offsets[row] + threadIdx.x; e < allowed.offsets[row + 1]; e += blockDim.x) {
      const int token = allowed.tokens[e];
      if (token >= 0 && token < vocab) addLogit(stats, z[token] * invTemperature);
    }
  } else {
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) addLogit(stats, z[v] * invTemperature);
  }
  stats = blockMerge(stats);
  if (threadIdx.x != 0) return;
  const float rowLse = stats.m + logf(stats.s);
  lse[row] = rowLse;
  entropy[row] = rowLse - stats.t / stats.s;
  const int target = targets[row];
  float lp = NAN;
  if (target >= 0 && target < vocab) {
    lp = z[target] * invTemperature - rowLse;
    if (allowed.offsets) {
      bool isAllowed = false;
      for (int e = allowed.offsets[row]; e < allowed.offsets[row + 1]; ++e) isAllowed |= allowed.tokens[e] == target;
      if (!isAllowed) lp = -INFINITY;
    }
  }
  logprob[row] = lp;
}

// dlogits[v] = dlogprob * (1[v = target] - p_v) / T over allowed tokens, 0 elsewhere; bf16 for the GEMMs.
__global__ void __launch_bounds__(kThreads) logprobRowsBackwardKernel(
    const float* __restrict__ logits, const int32_t* __restrict__ targets, float invTemperature,
    AllowedTokensDevice allowed, int rowOffset, const float* __restrict__ lse, const float* __restrict__ dlogprob,
    bf16* __restrict__ dlogits, int vocab) {
  const int local = blockIdx.x;
  const int row = rowOffset + local;
  const float* z = logits + static_cast<int64_t>(local) * vocab;
  bf16* dz = dlogits + static_cast<int64_t>(local) * vocab;
  const float rowLse = lse[row], g = dlogprob[row];
  const int target = targets[row];
  auto gradAt = [&](int v) {
    const float p = __expf(z[v] * invTemperature - rowLse);
    return toBf16(g * ((v == target ? 1.f : 0.f) - p) * invTemperature);
  };
  if (allowed.offsets) {
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) dz[v] = toBf16(0.f);
    __syncthreads();  // orders the zeroing before the scattered writes of other threads
    for (int e = allowed.offsets[row] + threadIdx.x; e < allowed.offsets[row + 1]; e += blockDim.x) {
      const int token = allowed.tokens[e];
      if (token >= 0 && token < vocab) dz[token] = gradAt(token);
    }
  } else {
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) dz[v] = gradAt(v);
  }
}

void checkLmHeadShape(int n, int hiddenSize, int vocab, int chunkRows, const char* who) {
  require(n >= 0 && hiddenSize > 0 && vocab > 0 && chunkRows > 0,
          std::string(who) + ": bad shape (n=" + std::to_string(n) + ", hidden=" + std::to_string(hiddenSize) +
              ", vocab=" + std::to_string(vocab) + ", chunkRows=" + std::to_string(chunkRows) + ")");
}

}  // namespace

void logprobRows(const float* logits, const int32_t* targets, float invTemperature, AllowedTokensDevice allowed,
                 int rowOffset, float* logprob, float* entropy, float* lse, int rows, int vocab, cudaStream_t stream) {
  if (rows == 0) return;
  logprobRowsKernel<<<rows, kThreads, 0, stream>>>(logits, targets, invTemperature, allowed, rowOffset, logprob,
                                                   entropy, lse, vocab);
  WG_LAUNCH_CHECK(logprobRowsKernel);
}

void logprobRowsBackward(const float* logits, const int32_t* targets, float invTemperature,
                         AllowedTokensDevice allowed, int rowOffset, const float* lse, const float* dlogprob,
                         bf16* dlogits, int rows, int vocab, cudaStream_t stream) {
  if (rows == 0) return;
  logprobRowsBackwardKernel<<<rows, kThreads, 0, stream>>>(logits, targets, invTemperature, allowed, rowOffset, lse,
                                                           dlogprob, dlogits, vocab);
  WG_LAUNCH_CHECK(logprobRowsBackwardKernel);
}

void lmHeadLogprobForward(Gemm& gemm, const bf16* hidden, const bf16* embed, const int32_t* targets,
                          float invTemperature, AllowedTokensDevice allowed, float* logitsWorkspace, int chunkRows,
                          float* logprob, float* entropy, float* lse, int n, int hiddenSize, int vocab,
                          cudaStream_t stream) {
  checkLmHeadShape(n, hiddenSize, vocab, chunkRows, "lmHeadLogprobForward");
  for (int first = 0; first < n; first += chunkRows) {
    const int rows = n - first < chunkRows ? n - first : chunkRows;
    gemm.run(false, true, rows, vocab, hiddenSize, 1.f, hidden + static_cast<int64_t>(first) * hiddenSize, hiddenSize,
             embed, hiddenSize, 0.f, logitsWorkspace, OutType::F32, vocab, stream);
    logprobRows(logitsWorkspace, targets, invTemperature, allowed, first, logprob, entropy, lse, rows, vocab, stream);
  }
}

void lmHeadLogprobBackward(Gemm& gemm, const bf16* hidden, const bf16* embed, const int32_t* targets,
                           float invTemperature, AllowedTokensDevice allowed, const float* lse, const float* dlogprob,
                           float* logitsWorkspace, bf16* dlogitsWorkspace, int chunkRows, bf16* dhidden,
                           float* dembed, int n, int hiddenSize, int vocab, cudaStream_t stream) {
  checkLmHeadShape(n, hiddenSize, vocab, chunkRows, "lmHeadLogprobBackward");
  for (int first = 0; first < n; first += chunkRows) {
    const int rows = n - first < chunkRows ? n - first : chunkRows;
    const bf16* h = hidden + static_cast<int64_t>(first) * hiddenSize;
    // Recompute this chunk's logits rather than keep [n, vocab] alive between forward and backward.
    gemm.run(false, true, rows, vocab, hiddenSize, 1.f, h, hiddenSize, embed, hiddenSize, 0.f, logitsWorkspace,
             OutType::F32, vocab, stream);
    logprobRowsBackward(logitsWorkspace, targets, invTemperature, allowed, first, lse, dlogprob, dlogitsWorkspace,
                        rows, vocab, stream);
    gemm.run(false, false, rows, hiddenSize, vocab, 1.f, dlogitsWorkspace, vocab, embed, hiddenSize, 0.f,
             dhidden + static_cast<int64_t>(first) * hiddenSize, OutType::BF16, hiddenSize, stream);
    if (dembed)
      gemm.run(true, false, vocab, hiddenSize, rows, 1.f, dlogitsWorkspace, vocab, h, hiddenSize, 1.f, dembed,
               OutType::F32, hiddenSize, stream);
  }
}

}  // namespace webgrpo::cuda
