// Incremental decoding kernels (generate): cache set-up from a prefill, the per-step short conv, KV append,
// single-query attention over the cache, and token sampling on the GPU. A slot's row is active when its
// lengths entry is > 0; inactive rows are skipped (their GEMM rows are computed and ignored, which costs
// nothing at decode sizes: the weights are read once either way).
#include <cfloat>
#include <climits>

#include "common.cuh"
#include "cpu/ops.h"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

// ---- cache set-up -------------------------------------------------------------------------------------------
__global__ void kvCacheFromPrefillKernel(const bf16* __restrict__ k, int64_t kStride, const bf16* __restrict__ v,
                                         int64_t vStride, const int32_t* __restrict__ prefillRow,
                                         const int32_t* __restrict__ promptLen, int prefillSeqLen,
                                         bf16* __restrict__ kCache, bf16* __restrict__ vCache, int maxLen,
                                         int kvDim) {
  const int s = blockIdx.y, j = blockIdx.x;
  const int len = promptLen[s];
  if (j >= len) return;
  const int64_t src = int64_t(prefillRow[s]) * prefillSeqLen + (prefillSeqLen - len + j);
  const int64_t dst = (int64_t(s) * maxLen + j) * kvDim;
  for (int c = threadIdx.x; c < kvDim; c += blockDim.x) {
    kCache[dst + c] = k[src * kStride + c];
    vCache[dst + c] = v[src * vStride + c];
  }
}

__global__ void convStateFromPrefillKernel(const bf16* __restrict__ proj, const int32_t* __restrict__ prefillRow,
                                           const int32_t* __restrict__ promptLen, int prefillSeqLen, int hidden,
                                           float* __restrict__ convState) {
  const int s = blockIdx.y, j = blockIdx.x;  // j: 0 = older, 1 = newer of the two kept inputs
  const int len = promptLen[s];
  if (len <= 0) return;                      // the slot belongs to another prefill chunk
  const int back = 2 - j;                    // how many positions before the end
  const bool real = back <= len;
  const int64_t row = int64_t(prefillRow[s]) * prefillSeqLen + (prefillSeqLen - back);
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float bx = 0.f;
    if (real) bx = toFloat(proj[row * 3 * hidden + c]) * toFloat(proj[row * 3 * hidden + 2 * hidden + c]);
    convState[(int64_t(s) * 2 + j) * hidden + c] = bx;
  }
}

__global__ void markPromptTokensKernel(const int32_t* __restrict__ tokens, const int32_t* __restrict__ prefillRow,
                                       const int32_t* __restrict__ promptLen, int prefillSeqLen, int vocab,
                                       uint8_t* __restrict__ seen) {
  const int s = blockIdx.x, len = promptLen[s];
  const int64_t base = int64_t(prefillRow[s]) * prefillSeqLen + (prefillSeqLen - len);
  for (int j = threadIdx.x; j < len; j += blockDim.x) seen[int64_t(s) * vocab + tokens[base + j]] = 1;
}

__global__ void copyRowsKernel(const bf16* __restrict__ src, const int32_t* __restrict__ srcRows, bf16* __restrict__ dst,
                               const int32_t* __restrict__ dstRows, int dim) {
  const int64_t from = srcRows[blockIdx.x], to = dstRows[blockIdx.x];
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[to * dim + i] = src[from * dim + i];
}

// ---- per-step kernels ---------------------------------------------------------------------------------------
__global__ void shortConvDecodeKernel(const bf16* __restrict__ proj, const bf16* __restrict__ convWeight,
                                      float* __restrict__ convState, const int32_t* __restrict__ lengths,
                                      bf16* __restrict__ y, int hidden) {
  const int s = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  if (lengths[s] <= 0) {
    y[int64_t(s) * hidden + c] = toBf16(0.f);
    return;
  }
  const bf16* row = proj + int64_t(s) * 3 * hidden;
  const float bx = toFloat(row[c]) * toFloat(row[2 * hidden + c]);
  float* state = convState + int64_t(s) * 2 * hidden;
  const float older = state[c], newer = state[hidden + c];
  // The same order of terms as the prefill kernel (oldest tap first).
  float conv = 0.f;
  conv += toFloat(convWeight[c * 3 + 0]) * older;
  conv += toFloat(convWeight[c * 3 + 1]) * newer;
  conv += toFloat(convWeight[c * 3 + 2]) * bx;
  y[int64_t(s) * hidden + c] = toBf16(toFloat(row[hidden + c]) * conv);
  state[c] = newer;
  state[hidden + c] = bx;
}

__global__ void kvCacheAppendKernel(const bf16* __restrict__ k, int64_t kStride, const bf16* __restrict__ v,
                                    int64_t vStride, const int32_t* __restrict__ lengths, bf16* __restrict__ kCache,
                                    bf16* __restrict__ vCache, int maxLen, int kvDim) {
  const int s = blockIdx.x, len = lengths[s];
  if (len <= 0) return;
  const int64_t dst = (int64_t(s) * maxLen + (len - 1)) * kvDim;
  for (int c = threadIdx.x; c < kvDim; c += blockDim.x) {
    kCache[dst + c] = k[int64_t(s) * kStride + c];
    vCache[dst + c] = v[int64_t(s) * vStride + c];
  }
}

constexpr int kHeadDim = 64;
constexpr int kDecodeThreads = 128;
constexpr int kKeysPerBlock = 64;            // flash-decoding split: each block scores this many cached keys
constexpr int kPartialStride = kHeadDim + 2;  // per (slot, head, split): 64 unnormalised outputs, max, sum


// Block per (kv head, slot, split of kKeysPerBlock keys): the `group` query heads that share the kv head read
// those keys and values once. A thread per key scores it, a warp per head takes the softmax over the split, a
// thread per (head, dim) sums the values (coalesced rows); the split's max, sum and unnormalised output go to
// `partial` for attentionDecodeCombineKernel.
__global__ void __launch_bounds__(kDecodeThreads)
attentionDecodePartialKernel(const bf16* __restrict__ q, int64_t qStride, const bf16* __restrict__ kCache,
                             const bf16* __restrict__ vCache, const int32_t* __restrict__ lengths,
                             float* __restrict__ partial, int maxSplits, int maxLen, int numHeads, int numKvHeads,
                             float scale) {
  extern __shared__ float smem[];
  const int kvh = blockIdx.x, s = blockIdx.y, split = blockIdx.z;
  const int len = lengths[s], begin = split * kKeysPerBlock;
  if (len <= 0 || begin >= len) return;
  const int n = min(kKeysPerBlock, len - begin);
  const int group = numHeads / numKvHeads, kvDim = numKvHeads * kHeadDim;
  float* qs = smem;                                   // [group][64]
  float* p = smem + group * kHeadDim;                 // [group][kKeysPerBlock]
  const bf16* qRow = q + int64_t(s) * qStride + int64_t(kvh) * group * kHeadDim;
  for (int i = threadIdx.x; i < group * kHeadDim; i += blockDim.x) qs[i] = toFloat(qRow[i]) * scale;
  __syncthreads();
  const bf16* kBase = kCache + (int64_t(s) * maxLen + begin) * kvDim + kvh * kHeadDim;
  const bf16* vBase = vCache + (int64_t(s) * maxLen + begin) * kvDim + kvh * kHeadDim;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    float key[kHeadDim];
    const uint4* src = reinterpret_cast<const uint4*>(kBase + int64_t(j) * kvDim);
#pragma unroll
    for (int w = 0; w < kHeadDim / 8; ++w) {
      const uint4 packed = src[w];
      const bf16* parts = reinterpret_cast<const bf16*>(&packed);
#pragma unroll
      for (int e = 0; e < 8; ++e) key[w * 8 + e] = toFloat(parts[e]);
    }
    for (int g = 0; g < group; ++g) {
      float dot = 0.f;
#pragma unroll
      for (int d = 0; d < kHeadDim; ++d) dot += qs[g * kHeadDim + d] * key[d];
      p[g * kKeysPerBlock + j] = dot;
    }
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float* out = partial + ((int64_t(s) * numHeads + int64_t(kvh) * group) * maxSplits + split) * kPartialStride;
  for (int g = warp; g < group; g += warps) {
    float m = -FLT_MAX;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, p[g * kKeysPerBlock + j]);
    m = warpMax(m);
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(p[g * kKeysPerBlock + j] - m);
      p[g * kKeysPerBlock + j] = e;
      l += e;
    }
    l = warpSum(l);
    if (lane == 0) {
      float* o = out + int64_t(g) * maxSplits * kPartialStride;
      o[kHeadDim] = m;
      o[kHeadDim + 1] = l;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * kHeadDim; i += blockDim.x) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    const float* w = p + g * kKeysPerBlock;
    float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      acc0 += w[j] * toFloat(vBase[int64_t(j) * kvDim + d]);
      acc1 += w[j + 1] * toFloat(vBase[int64_t(j + 1) * kvDim + d]);
      acc2 += w[j + 2] * toFloat(vBase[int64_t(j + 2) * kvDim + d]);
      acc3 += w[j + 3] * toFloat(vBase[int64_t(j + 3) * kvDim + d]);
    }
    for (; j < n; ++j) acc0 += w[j] * toFloat(vBase[int64_t(j) * kvDim + d]);
    out[int64_t(g) * maxSplits * kPartialStride + d] = (acc0 + acc1) + (acc2 + acc3);
  }
}

// Block per (head, slot), a thread per dim: merges the splits' partial softmaxes.
__global__ void attentionDecodeCombineKernel(const float* __restrict__ partial, const int32_t* __restrict__ lengths,
                                             bf16* __restrict__ out, int64_t outStride, int numHeads, int maxSplits) {
  const int h = blockIdx.x, s = blockIdx.y, d = threadIdx.x;
  const int len = lengths[s];
  bf16* dst = out + int64_t(s) * outStride + int64_t(h) * kHeadDim;
  if (len <= 0) {
    dst[d] = toBf16(0.f);
    return;
  }
  const int splits = (len + kKeysPerBlock - 1) / kKeysPerBlock;
  const float* base = partial + (int64_t(s) * numHeads + h) * maxSplits * kPartialStride;
  float m = -FLT_MAX;
  for (int i = 0; i < splits; ++i) m = fmaxf(m, base[i * kPartialStride + kHeadDim]);
  float l = 0.f, acc = 0.f;
  for (int i = 0; i < splits; ++i) {
    const float* part = base + i * kPartialStride;
    const float w = expf(part[kHeadDim] - m);
    l += w * part[kHeadDim + 1];
    acc += w * part[d];
  }
  dst[d] = toBf16(acc / l);
}

__global__ void gpuSleepKernel(int microseconds) {
  for (int i = 0; i < microseconds; ++i) __nanosleep(1000);
}

// ---- sampling -----------------------------------------------------------------------------------------------
// Gumbel-max, as cpu::sample_token (native/src/cpu/ops.h has the procedure and the shared noise): the token is
// argmax over kept candidates v of z[v] + g(key, v), with g a counter-based hash of the row's draw key and the
// token id, so candidates may be visited in any order and every pass reads the row strided and coalesced
// (float4, and uchar4 seen flags, when the whole vocabulary is the candidate set).
// - greedy: one pass (argmax z, online log-sum-exp);
// - no truncation (the GRPO case): one pass, the online log-sum-exp and the Gumbel argmax together;
// - top-k / top-p / min-p: one pass for max and log-sum-exp, binary searches over cpu::ordered_key for the cut
//   (a strided pass per step: 32 for top-k, 1 + up to 32 for top-p), then one Gumbel pass over the kept set.
// One block of 1024 threads per row: at 64 rows that is 64 SMs, where (by instruction count, not yet measured)
// the per-candidate work (hash, screen, online log-sum-exp) rather than the single read of the row bounds the
// plain pass; splitting rows over a cluster of blocks would be the next step.
// The fp64 noise is needed only for candidates that can still win: gumbel_may_reach screens the rest with two
// fp32 exps against the best score so far, which is seeded with the block maximum of one candidate per thread.
constexpr int kSampleThreads = 1024;

enum SampleMode { kSampleGreedy = 0, kSamplePlain = 1, kSampleTruncated = 2 };

// Block-wide sum for the sampler's double masses and int counts (common.cuh's blockSum is for floats).
template <typename T>
__device__ __forceinline__ T blockSumOf(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < warps ? scratch[lane] : T(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

// (value, id) ordering of the draws: the larger value, then the lower id.
__device__ __forceinline__ bool beats(double v, int id, double bestV, int bestId) {
  return v > bestV || (v == bestV && id < bestId);
}
__device__ __forceinline__ void warpArgmax(double& v, int& id) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oid = __shfl_xor_sync(0xffffffffu, id, o);
    if (beats(ov, oid, v, id)) {
      v = ov;
      id = oid;
    }
  }
}
// Block-wide argmax of (value, id); every thread gets the winner (same scratch rules as blockSumOf).
__device__ __forceinline__ void blockArgmax(double& v, int& id, double* scratchV, int* scratchI) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  warpArgmax(v, id);
  __syncthreads();
  if (lane == 0) {
    scratchV[warp] = v;
    scratchI[warp] = id;
  }
  __syncthreads();
  v = lane < warps ? scratchV[lane] : -INFINITY;
  id = lane < warps ? scratchI[lane] : INT_MAX;
  warpArgmax(v, id);
}

struct Candidates {
  const float* logits;   // the row
  const uint8_t* seen;   // the row's seen flags; null when the repetition penalty is off
  const int32_t* ids;    // the allowed ids; null: every token of the row
  int count;
  float penalty, temperature;
  bool vec4;             // every token, 16-byte aligned row (and 4-byte aligned seen row): vector loads
  // The CPU's processing: repetition penalty on seen tokens, then division by the temperature (fp32).
  __device__ __forceinline__ float z(float x, bool seenFlag) const {
    if (seenFlag) x = x > 0 ? x / penalty : x * penalty;
    return temperature == 1.f ? x : x / temperature;
  }
  __device__ __forceinline__ float zOf(int t) const { return z(logits[t], seen && seen[t]); }
  __device__ __forceinline__ int idAt(int j) const { return ids ? ids[j] : j; }
};

// Calls f(id, z, x) for every candidate, strided over the block's threads (x: the raw logit).
template <typename F>
__device__ __forceinline__ void forEachCandidate(const Candidates& c, F&& f) {
  const int tid = threadIdx.x, nt = blockDim.x;
  if (c.ids) {
    for (int j = tid; j < c.count; j += nt) {
      const int t = c.ids[j];
      const float x = c.logits[t];
      f(t, c.z(x, c.seen && c.seen[t]), x);
    }
    return;
  }
  int done = 0;
  if (c.vec4) {
    const float4* row4 = reinterpret_cast<const float4*>(c.logits);
    const uchar4* seen4 = reinterpret_cast<const uchar4*>(c.seen);
    const int n4 = c.count >> 2;
#pragma unroll 2
    for (int q = tid; q < n4; q += nt) {
      const float4 v = __ldg(row4 + q);
      uchar4 sf = make_uchar4(0, 0, 0, 0);
      if (c.seen) sf = seen4[q];
      const int t = q << 2;
      f(t, c.z(v.x, sf.x), v.x);
      f(t + 1, c.z(v.y, sf.y), v.y);
      f(t + 2, c.z(v.z, sf.z), v.z);
      f(t + 3, c.z(v.w, sf.w), v.w);
    }
    done = n4 << 2;
  }
  for (int i = done + tid; i < c.count; i += nt) {
    const float x = c.logits[i];
    f(i, c.z(x, c.seen && c.seen[i]), x);
  }
}

// One thread's share of the Gumbel argmax. bound (a float pair) is what a candidate must reach to matter: the
// best score so far, or the block's seed maximum (a score of a kept candidate, so no winner is ever screened).
struct GumbelArgmax {
  uint64_t key;
  double score = -INFINITY;
  int id = INT_MAX;
  float boundHi = -INFINITY, boundLo = 0.f;
  __device__ __forceinline__ void raise(double b) {
    if (b > double(boundHi) + double(boundLo)) {
      boundHi = float(b);
      boundLo = float(b - double(boundHi));
    }
  }
  __device__ __forceinline__ void offer(int t, float z) {
    const uint64_t bits = cpu::gumbel_bits(key, t);
    if (!cpu::gumbel_may_reach(bits, z, boundHi, boundLo)) return;
    const double v = double(z) + cpu::gumbel_noise(bits);
    if (beats(v, t, score, id)) {
      score = v;
      id = t;
      raise(v);
    }
  }
};

// The block maximum of the scores of candidate j = threadIdx.x (when kept): the first bound of every thread.
template <typename Kept>
__device__ __forceinline__ double seedBound(const Candidates& c, uint64_t key, Kept&& kept, double* scratchV,
                                            int* scratchI) {
  double v = -INFINITY;
  int id = INT_MAX;
  if (int(threadIdx.x) < c.count) {
    const int t = c.idAt(threadIdx.x);
    const float z = c.zOf(t);
    if (isfinite(z) && kept(z)) {
      v = double(z) + cpu::gumbel_noise(cpu::gumbel_bits(key, t));
      id = t;
    }
  }
  blockArgmax(v, id, scratchV, scratchI);
  return v;
}

// Block per active row. Writes token, logprob, status (0, or 1: non-finite logits or no candidate), seen[token];
// advances rng[s] by one splitmix64 step unless greedy. Inactive rows are left untouched.
template <int kMode>
__global__ void __launch_bounds__(kSampleThreads)
sampleTokensKernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ lengths,
                   const int32_t* __restrict__ allowedBegin, const int32_t* __restrict__ allowedCount,
                   const int32_t* __restrict__ allowedTokens, uint8_t* __restrict__ seen, uint64_t* __restrict__ rng,
                   SamplerParams params, int32_t* __restrict__ tokenOut, float* __restrict__ logprobOut,
                   int32_t* __restrict__ status) {
  __shared__ double scratchD[32];
  __shared__ float scratchF[32];
  __shared__ int scratchI[32];
  const int s = blockIdx.x, tid = threadIdx.x;
  if (lengths[s] <= 0) return;
  const float* row = logits + int64_t(s) * vocab;
  uint8_t* seenRow = seen ? seen + int64_t(s) * vocab : nullptr;
  const bool constrained = allowedCount[s] >= 0;
  Candidates c;
  c.logits = row;
  c.seen = seenRow && params.repetitionPenalty != 1.f ? seenRow : nullptr;
  c.ids = constrained ? allowedTokens + allowedBegin[s] : nullptr;
  c.count = constrained ? allowedCount[s] : vocab;
  c.penalty = params.repetitionPenalty;
  c.temperature = kMode == kSampleGreedy ? 1.f : params.temperature;
  c.vec4 = !constrained && reinterpret_cast<uintptr_t>(row) % 16 == 0 &&
           (!c.seen || reinterpret_cast<uintptr_t>(c.seen) % 4 == 0);
  if (c.count <= 0) {
    if (tid == 0) status[s] = 1;
    return;
  }
  // The draw's key: every thread computes it; rng[s] is written back (by thread 0, after barriers) only once
  // the row is known to be finite, as the CPU engine draws nothing for a non-finite row.
  uint64_t nextState = 0, key = 0;
  if (kMode != kSampleGreedy) {
    nextState = rng[s] + cpu::kSplitmixGolden;
    key = cpu::splitmix64_mix(nextState);
    asm("" : "+l"(key));  // keeps the key in registers (NVVM would otherwise recompute part of it per candidate)
  }

  // Pass 1. Non-finite logits anywhere in the row fail the sequence, as on the CPU (checked while reading when
  // every token is a candidate).
  int bad = 0;
  if (constrained) {
    if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
      const float4* row4 = reinterpret_cast<const float4*>(row);
      for (int q = tid; q < (vocab >> 2); q += blockDim.x) {
        const float4 v = __ldg(row4 + q);
        bad |= !isfinite(v.x) | !isfinite(v.y) | !isfinite(v.z) | !isfinite(v.w);
      }
      for (int i = (vocab & ~3) + tid; i < vocab; i += blockDim.x) bad |= !isfinite(row[i]);
    } else {
      for (int i = tid; i < vocab; i += blockDim.x) bad |= !isfinite(row[i]);
    }
  }
  GumbelArgmax draw{key};
  if (kMode == kSamplePlain) draw.raise(seedBound(c, key, [](float) { return true; }, scratchD, scratchI));
  float m = -INFINITY, sum = 0.f;  // online log-sum-exp: sum of exp(z - m)
  float greedyZ = -INFINITY;
  int greedyId = INT_MAX;
  forEachCandidate(c, [&](int t, float z, float x) {
    if (!constrained) bad |= !isfinite(x);
    const float d = z - m, e = __expf(-fabsf(d));
    if (d > 0.f) {
      sum = sum * e + 1.f;
      m = z;
    } else {
      sum += e;
    }
    if (kMode == kSampleGreedy) {
      if (z > greedyZ || (z == greedyZ && t < greedyId)) {
        greedyZ = z;
        greedyId = t;
      }
    }
    if (kMode == kSamplePlain) draw.offer(t, z);
  });
  if (__syncthreads_or(bad)) {
    if (tid == 0) status[s] = 1;
    return;
  }
  const float maxZ = blockMax(m, scratchF);
  const double total = blockSumOf(double(sum) * double(expf(m - maxZ)), scratchD);
  const double lse = double(maxZ) + log(total);

  if (kMode == kSampleGreedy) {
    double v = greedyZ;
    int t = greedyId;
    blockArgmax(v, t, scratchD, scratchI);
    if (tid == 0) {
      tokenOut[s] = t;
      logprobOut[s] = float(v - lse);
      status[s] = 0;
      if (seenRow) seenRow[t] = 1;
    }
    return;
  }

  if (kMode == kSampleTruncated) {
    // Truncation cut: top-k, then top-p over the kept mass, then min-p, all as "keep ordered_key(z) >= cut" (and
    // exp(z - max) >= minP), exactly as the CPU's.
    uint32_t cut = 0;
    if (params.topK > 0 && params.topK < c.count) {
      uint64_t lo = 0, hi = 0xffffffffu;  // largest key with count(key >= it) >= topK (64-bit: hi - lo + 1 fits)
      while (lo < hi) {
        const uint32_t mid = uint32_t(lo + (hi - lo + 1) / 2);
        int n = 0;
        forEachCandidate(c, [&](int, float z, float) { n += cpu::ordered_key(z) >= mid; });
        if (blockSumOf(n, scratchI) >= params.topK) lo = mid; else hi = mid - 1;
      }
      cut = uint32_t(lo);
    }
    if (params.topP < 1.f) {
      double kept = 0;
      forEachCandidate(c, [&](int, float z, float) {
        if (cpu::ordered_key(z) >= cut) kept += double(expf(z - maxZ));
      });
      const double target = double(params.topP) * blockSumOf(kept, scratchD);
      uint64_t lo = cut, hi = 0xffffffffu;  // largest cut whose kept mass still reaches the target
      while (lo < hi) {
        const uint32_t mid = uint32_t(lo + (hi - lo + 1) / 2);
        double mass = 0;
        forEachCandidate(c, [&](int, float z, float) {
          if (cpu::ordered_key(z) >= mid) mass += double(expf(z - maxZ));
        });
        if (blockSumOf(mass, scratchD) >= target) lo = mid; else hi = mid - 1;
      }
      cut = uint32_t(lo);
    }
    // min-p: p >= minP * pmax  <=>  exp(z - maxZ) >= minP.
    const double minWeight = params.minP;
    auto isKept = [&](float z) {
      return cpu::ordered_key(z) >= cut && (minWeight <= 0 || double(expf(z - maxZ)) >= minWeight);
    };
    draw.raise(seedBound(c, key, isKept, scratchD, scratchI));
    forEachCandidate(c, [&](int t, float z, float) {
      if (isKept(z)) draw.offer(t, z);
    });
  }

  double v = draw.score;
  int t = draw.id;
  blockArgmax(v, t, scratchD, scratchI);
  if (tid == 0) {
    tokenOut[s] = t;
    logprobOut[s] = float(double(c.zOf(t)) - lse);
    status[s] = 0;
    rng[s] = nextState;
    if (seenRow) seenRow[t] = 1;
  }
}

}  // namespace

void kvCacheFromPrefill(const bf16* k, int64_t kStride, const bf16* v, int64_t vStride, const int32_t* prefillRow,
                        const int32_t* promptLen, int slots, int prefillSeqLen, bf16* kCache, bf16* vCache,
                        int maxLen, int kvDim, cudaStream_t stream) {
  require(prefillSeqLen <= maxLen, "kvCacheFromPrefill: prefill longer than the cache");
  if (slots == 0) return;
  kvCacheFromPrefillKernel<<<dim3(unsigned(prefillSeqLen), unsigned(slots)), 128, 0, stream>>>(
      k, kStride, v, vStride, prefillRow, promptLen, prefillSeqLen, kCache, vCache, maxLen, kvDim);
  WG_LAUNCH_CHECK(kvCacheFromPrefillKernel);
}

void convStateFromPrefill(const bf16* proj, const int32_t* prefillRow, const int32_t* promptLen, int slots,
                          int prefillSeqLen, int hidden, float* convState, cudaStream_t stream) {
  if (slots == 0) return;
  convStateFromPrefillKernel<<<dim3(2, unsigned(slots)), 256, 0, stream>>>(proj, prefillRow, promptLen,
                                                                           prefillSeqLen, hidden, convState);
  WG_LAUNCH_CHECK(convStateFromPrefillKernel);
}

void markPromptTokens(const int32_t* tokens, const int32_t* prefillRow, const int32_t* promptLen, int slots,
                      int prefillSeqLen, int vocab, uint8_t* seen, cudaStream_t stream) {
  if (slots == 0) return;
  markPromptTokensKernel<<<unsigned(slots), 256, 0, stream>>>(tokens, prefillRow, promptLen, prefillSeqLen, vocab,
                                                              seen);
  WG_LAUNCH_CHECK(markPromptTokensKernel);
}

void copyRows(const bf16* src, const int32_t* srcRows, bf16* dst, const int32_t* dstRows, int count, int dim,
              cudaStream_t stream) {
  if (count == 0) return;
  copyRowsKernel<<<unsigned(count), 256, 0, stream>>>(src, srcRows, dst, dstRows, dim);
  WG_LAUNCH_CHECK(copyRowsKernel);
}

void shortConvDecode(const bf16* proj, const bf16* convWeight, float* convState, const int32_t* lengths, bf16* y,
                     int slots, int hidden, cudaStream_t stream) {
  if (slots == 0) return;
  shortConvDecodeKernel<<<dim3(ceilDiv(hidden, 256), unsigned(slots)), 256, 0, stream>>>(proj, convWeight, convState,
                                                                                          lengths, y, hidden);
  WG_LAUNCH_CHECK(shortConvDecodeKernel);
}

void kvCacheAppend(const bf16* k, int64_t kStride, const bf16* v, int64_t vStride, const int32_t* lengths,
                   bf16* kCache, bf16* vCache, int slots, int maxLen, int kvDim, cudaStream_t stream) {
  if (slots == 0) return;
  kvCacheAppendKernel<<<unsigned(slots), 128, 0, stream>>>(k, kStride, v, vStride, lengths, kCache, vCache, maxLen,
                                                           kvDim);
  WG_LAUNCH_CHECK(kvCacheAppendKernel);
}

void gpuSleep(int microseconds, cudaStream_t stream) {
  gpuSleepKernel<<<1, 1, 0, stream>>>(microseconds);
  WG_LAUNCH_CHECK(gpuSleepKernel);
}

int64_t attentionDecodeWorkspace(int slots, int maxLen, int numHeads) {
  return int64_t(slots) * numHeads * ((maxLen + kKeysPerBlock - 1) / kKeysPerBlock) * kPartialStride;
}

void attentionDecode(const bf16* q, int64_t qStride, const bf16* kCache, const bf16* vCache, const int32_t* lengths,
                     bf16* out, int64_t outStride, float* workspace, int slots, int maxLen, int numHeads,
                     int numKvHeads, int headDim, cudaStream_t stream) {
  require(headDim == kHeadDim, "attentionDecode: headDim must be 64");
  require(numKvHeads > 0 && numHeads % numKvHeads == 0, "attentionDecode: numHeads must be a multiple of numKvHeads");
  require(reinterpret_cast<uintptr_t>(kCache) % 16 == 0 && (numKvHeads * kHeadDim) % 8 == 0,
          "attentionDecode: the key cache must be 16-byte aligned");
  if (slots == 0 || maxLen == 0) return;
  const int group = numHeads / numKvHeads, maxSplits = (maxLen + kKeysPerBlock - 1) / kKeysPerBlock;
  const size_t smem = size_t(group) * (kHeadDim + kKeysPerBlock) * sizeof(float);
  require(smem <= 48 * 1024, "attentionDecode: too many query heads per kv head (" + std::to_string(group) + ")");
  attentionDecodePartialKernel<<<dim3(unsigned(numKvHeads), unsigned(slots), unsigned(maxSplits)), kDecodeThreads,
                                 smem, stream>>>(q, qStride, kCache, vCache, lengths, workspace, maxSplits, maxLen,
                                                 numHeads, numKvHeads, 1.f / sqrtf(float(headDim)));
  WG_LAUNCH_CHECK(attentionDecodePartialKernel);
  attentionDecodeCombineKernel<<<dim3(unsigned(numHeads), unsigned(slots)), kHeadDim, 0, stream>>>(
      workspace, lengths, out, outStride, numHeads, maxSplits);
  WG_LAUNCH_CHECK(attentionDecodeCombineKernel);
}

void sampleTokens(const float* logits, int vocab, const int32_t* lengths, const int32_t* allowedBegin,
                  const int32_t* allowedCount, const int32_t* allowedTokens, uint8_t* seen, uint64_t* rng,
                  const SamplerParams& params, int32_t* token, float* logprob, int32_t* status, int slots,
                  cudaStream_t stream) {
  if (slots == 0) return;
  const bool truncate = params.topK > 0 || params.topP < 1.f || params.minP > 0.f;
  const auto kernel = params.greedy ? sampleTokensKernel<kSampleGreedy>
                      : truncate    ? sampleTokensKernel<kSampleTruncated>
                                    : sampleTokensKernel<kSamplePlain>;
  kernel<<<unsigned(slots), kSampleThreads, 0, stream>>>(logits, vocab, lengths, allowedBegin, allowedCount,
                                                         allowedTokens, seen, rng, params, token, logprob, status);
  WG_LAUNCH_CHECK(sampleTokensKernel);
}

}  // namespace webgrpo::cuda
