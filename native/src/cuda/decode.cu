// Incremental decoding kernels (generate): cache set-up from a prefill, the per-step short conv, KV append,
// single-query attention over the cache, and token sampling on the GPU. A slot's row is active when its
// lengths entry is > 0; inactive rows are skipped (their GEMM rows are computed and ignored, which costs
// nothing at decode sizes: the weights are read once either way).
#include <cfloat>
#include <climits>

#include "common.cuh"
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
constexpr int kSampleThreads = 1024;

__device__ __forceinline__ uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

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

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ uint32_t orderedKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Candidates {
  const float* logits;
  const uint8_t* seen;
  const int32_t* ids;  // null: every token
  int count;
  float penalty, temperature;
  __device__ int id(int j) const { return ids ? ids[j] : j; }
  // The CPU's processing: repetition penalty on seen tokens, then division by the temperature.
  __device__ float z(int j) const {
    const int t = id(j);
    float x = logits[t];
    if (seen && penalty != 1.f && seen[t]) x = x > 0 ? x / penalty : x * penalty;
    return x / temperature;
  }
};

// Every candidate at or above `cut` (an orderedKey) with weight exp(z - maxZ) >= minWeight is kept.
__global__ void __launch_bounds__(kSampleThreads)
sampleTokensKernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ lengths,
                   const int32_t* __restrict__ allowedBegin, const int32_t* __restrict__ allowedCount,
                   const int32_t* __restrict__ allowedTokens, uint8_t* __restrict__ seen, uint64_t* __restrict__ rng,
                   SamplerParams params, int32_t* __restrict__ tokenOut, float* __restrict__ logprobOut,
                   int32_t* __restrict__ status) {
  __shared__ double scratchD[32];
  __shared__ float scratchF[32];
  __shared__ int scratchI[32];
  __shared__ double prefix[kSampleThreads / 32];
  __shared__ int chosenShared, lastShared;
  const int s = blockIdx.x, tid = threadIdx.x;
  if (lengths[s] <= 0) return;
  const float* row = logits + int64_t(s) * vocab;
  uint8_t* seenRow = seen ? seen + int64_t(s) * vocab : nullptr;
  Candidates c{row, seenRow, allowedCount[s] >= 0 ? allowedTokens + allowedBegin[s] : nullptr,
               allowedCount[s] >= 0 ? allowedCount[s] : vocab, params.repetitionPenalty,
               params.greedy ? 1.f : params.temperature};
  // Non-finite logits anywhere in the row fail the sequence, as on the CPU (checked in the max pass below when
  // every token is a candidate).
  int bad = 0;
  if (c.ids)
    for (int i = tid; i < vocab; i += blockDim.x) bad |= !isfinite(row[i]);
  // Contiguous chunks per thread, so that the draw below walks candidates in their order.
  const int chunk = (c.count + blockDim.x - 1) / blockDim.x;
  const int begin = min(c.count, tid * chunk), end = min(c.count, begin + chunk);
  float maxZ = -FLT_MAX;
  int best = -1;  // candidate index of the greedy choice (lowest id among the maxima)
  for (int j = begin; j < end; ++j) {
    const float z = c.z(j);
    if (!c.ids) bad |= !isfinite(row[j]);
    if (z > maxZ || (z == maxZ && best >= 0 && c.id(j) < c.id(best))) {
      maxZ = z;
      best = j;
    }
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) status[s] = 1;
    return;
  }
  const float blockMaxZ = blockMax(maxZ, scratchF);
  double sum = 0;
  for (int j = begin; j < end; ++j) sum += double(expf(c.z(j) - blockMaxZ));
  const double total = blockSumOf(sum, scratchD);
  const double lse = double(blockMaxZ) + log(total);

  if (tid == 0) {
    chosenShared = INT_MAX;
    lastShared = -1;
  }
  __syncthreads();
  if (params.greedy) {
    // Among threads holding the maximum, the lowest token id wins.
    if (best >= 0 && maxZ == blockMaxZ) atomicMin(&chosenShared, c.id(best));
    __syncthreads();
    if (tid == 0) {
      const int tok = chosenShared;  // its z is the maximum
      tokenOut[s] = tok;
      logprobOut[s] = float(double(blockMaxZ) - lse);
      status[s] = 0;
      if (seenRow) seenRow[tok] = 1;
    }
    return;
  }
  // Truncation cut: top-k, then top-p over the kept mass, then min-p, all as "keep z >= cut".
  uint32_t cut = 0;
  if (params.topK > 0 && params.topK < c.count) {
    uint64_t lo = 0, hi = 0xffffffffu;  // largest key with count(key >= it) >= topK (64-bit: hi - lo + 1 fits)
    while (lo < hi) {
      const uint32_t mid = uint32_t(lo + (hi - lo + 1) / 2);
      int n = 0;
      for (int j = begin; j < end; ++j) n += orderedKey(c.z(j)) >= mid;
      if (blockSumOf(n, scratchI) >= params.topK) lo = mid; else hi = mid - 1;
    }
    cut = uint32_t(lo);
  }
  if (params.topP < 1.f) {
    double kept = 0;
    for (int j = begin; j < end; ++j) {
      const float z = c.z(j);
      if (orderedKey(z) >= cut) kept += double(expf(z - blockMaxZ));
    }
    const double target = double(params.topP) * blockSumOf(kept, scratchD);
    uint64_t lo = cut, hi = 0xffffffffu;  // largest cut whose kept mass still reaches the target
    while (lo < hi) {
      const uint32_t mid = uint32_t(lo + (hi - lo + 1) / 2);
      double mass = 0;
      for (int j = begin; j < end; ++j) {
        const float z = c.z(j);
        if (orderedKey(z) >= mid) mass += double(expf(z - blockMaxZ));
      }
      if (blockSumOf(mass, scratchD) >= target) lo = mid; else hi = mid - 1;
    }
    cut = uint32_t(lo);
  }
  // min-p: p >= minP * pmax  <=>  exp(z - maxZ) >= minP.
  const double minWeight = params.minP;
  auto weight = [&](int j) -> double {
    const float z = c.z(j);
    if (orderedKey(z) < cut) return 0.0;
    const double w = double(expf(z - blockMaxZ));
    return w >= minWeight ? w : 0.0;
  };
  double mine = 0;
  for (int j = begin; j < end; ++j) mine += weight(j);
  // Exclusive prefix of the per-thread masses (warp scan, then across warps).
  const int lane = tid & 31, warp = tid >> 5;
  double incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  if (lane == 31) prefix[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    double w = lane < int(blockDim.x / 32) ? prefix[lane] : 0.0, wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double up = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += up;
    }
    if (lane < int(blockDim.x / 32)) prefix[lane] = wi - w;  // exclusive per warp
  }
  __syncthreads();
  const double excl = prefix[warp] + (incl - mine);
  const double keptTotal = blockSumOf(mine, scratchD);
  __shared__ double u;
  if (tid == 0) u = double(splitmix64(rng[s]) >> 11) * 0x1.0p-53 * keptTotal;
  __syncthreads();
  if (mine > 0 && u >= excl && u < excl + mine) {
    double acc = excl;
    int pick = -1;
    for (int j = begin; j < end; ++j) {
      const double w = weight(j);
      if (w <= 0) continue;
      pick = j;
      acc += w;
      if (u < acc) break;
    }
    atomicMin(&chosenShared, pick);
  }
  __syncthreads();
  if (chosenShared == INT_MAX) {  // u at the very top of the mass (rounding): the last kept candidate
    int last = -1;
    for (int j = begin; j < end; ++j)
      if (weight(j) > 0) last = j;
    if (last >= 0) atomicMax(&lastShared, last);
    __syncthreads();
    if (tid == 0) chosenShared = lastShared;
    __syncthreads();
  }
  if (tid == 0) {
    const int j = chosenShared;
    const int tok = c.id(j);
    tokenOut[s] = tok;
    logprobOut[s] = float(double(c.z(j)) - lse);
    status[s] = 0;
    if (seenRow) seenRow[tok] = 1;
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
  sampleTokensKernel<<<unsigned(slots), kSampleThreads, 0, stream>>>(logits, vocab, lengths, allowedBegin,
                                                                     allowedCount, allowedTokens, seen, rng, params,
                                                                     token, logprob, status);
  WG_LAUNCH_CHECK(sampleTokensKernel);
}

}  // namespace webgrpo::cuda
