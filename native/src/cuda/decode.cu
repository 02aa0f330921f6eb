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


// ---- single-query attention over the cache (flash-decoding) ------------------------------------------------
// Block per (group of G query heads sharing a kv head, slot, split of the slot's keys), 4 warps. A 64-wide bf16
// key row is 128 B = 8 lanes x 16 B, so a warp load instruction covers 4 keys; each lane loads kAttnKeysPerLane
// K and V rows per step (16 consecutive keys per warp step, 64 per block step), with the next step's rows
// prefetched into registers while the current ones are scored. q lives in registers (pre-scaled by
// scale*log2(e), so scores are in the exp2 domain); a score is the 8-lane sum of 8-dim partial dots (3 xor
// shuffles); every 8-lane row group keeps its own online softmax (running max, sum, 8 unnormalised output dims
// per head), merged at the end across row groups (shuffles) and warps (shared memory) in a fixed order: the
// result does not depend on timing (no atomics). One split: the block writes the normalised bf16 output; more:
// it writes (64 unnormalised outputs, max, sum) to the workspace and attentionDecodeCombineKernel merges them.
// Splits come from lengths[s] at run time (graph replays with changing lengths): see planSplits.
constexpr int kHeadDim = 64;
constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnRowsPerLoad = 4;                                   // keys per warp load instruction
constexpr int kAttnKeysPerLane = 4;                                   // load instructions per lane per step
constexpr int kAttnWarpKeys = kAttnRowsPerLoad * kAttnKeysPerLane;    // 16 consecutive keys per warp step
constexpr int kAttnBlockKeys = kAttnWarpKeys * kAttnWarps;            // 64 keys per block step
constexpr int kAttnMinSplitKeys = 32;       // splits made to cover the SMs get at least this many keys
constexpr int kAttnMinMaxSplitKeys = 256;   // lower clamp of AttentionDecodeConfig::maxSplitKeys
constexpr int kAttnMaxTargetBlocks = 1024;  // upper clamp of AttentionDecodeConfig::targetBlocks
constexpr int kPartialStride = kHeadDim + 2;  // per (slot, head, split): 64 unnormalised outputs, max, sum
constexpr float kAttnInitMax = -1e30f;        // finite: exp2(kAttnInitMax - kAttnInitMax) = 1, never NaN

struct SplitPlan {
  int count, chunk;  // splits [0, count) hold keys [i*chunk, min(len, (i+1)*chunk))
};

__host__ __device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// Nominal split count for a slot of `len` keys: at most maxSplitKeys keys per split, and at least minSplits
// splits (chosen on the host so that slots x head blocks x minSplits covers the GPU) of at least
// kAttnMinSplitKeys keys. Non-decreasing in len, so the value at maxLen bounds the grid.
__host__ __device__ __forceinline__ int nominalSplits(int len, int minSplits, int maxSplitKeys) {
  const int byMax = (len + maxSplitKeys - 1) / maxSplitKeys;
  const int byMin = imin(minSplits, (len + kAttnMinSplitKeys - 1) / kAttnMinSplitKeys);
  return imax(1, imax(byMax, byMin));
}

// Chunks are whole warp steps (16 keys); rounding up may leave fewer splits than nominal (never more).
__host__ __device__ __forceinline__ SplitPlan planSplits(int len, int minSplits, int maxSplitKeys) {
  const int n = nominalSplits(len, minSplits, maxSplitKeys);
  int chunk = (len + n - 1) / n;
  chunk = (chunk + kAttnWarpKeys - 1) / kAttnWarpKeys * kAttnWarpKeys;
  return {(len + chunk - 1) / chunk, chunk};
}

__device__ __forceinline__ uint4 loadStreaming16(const bf16* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ float fastExp2(float x) {  // exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void unpackBf16x8(const uint4& v, float (&f)[8]) {
  f[0] = __uint_as_float(v.x << 16), f[1] = __uint_as_float(v.x & 0xffff0000u);
  f[2] = __uint_as_float(v.y << 16), f[3] = __uint_as_float(v.y & 0xffff0000u);
  f[4] = __uint_as_float(v.z << 16), f[5] = __uint_as_float(v.z & 0xffff0000u);
  f[6] = __uint_as_float(v.w << 16), f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// This lane's K and V rows of one warp step (keys first + u*4 + row); rows at or past `end` read as zeros.
__device__ __forceinline__ void loadAttnStep(const bf16* kp, const bf16* vp, int64_t kvDim, int first, int end,
                                             int row, uint4 (&kr)[kAttnKeysPerLane], uint4 (&vr)[kAttnKeysPerLane]) {
#pragma unroll
  for (int u = 0; u < kAttnKeysPerLane; ++u) {
    const int key = first + u * kAttnRowsPerLoad + row;
    if (key < end) {
      kr[u] = loadStreaming16(kp + int64_t(key) * kvDim);
      vr[u] = loadStreaming16(vp + int64_t(key) * kvDim);
    } else {
      kr[u] = make_uint4(0u, 0u, 0u, 0u);
      vr[u] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

template <int G>
__global__ void __launch_bounds__(kAttnThreads, G <= 2 ? 4 : (G <= 4 ? 2 : 1))
attentionDecodePartialKernel(const bf16* __restrict__ q, int64_t qStride, const bf16* __restrict__ kCache,
                             const bf16* __restrict__ vCache, const int32_t* __restrict__ lengths,
                             bf16* __restrict__ out, int64_t outStride, float* __restrict__ partial, int gridSplits,
                             int minSplits, int maxSplitKeys, int maxLen, int numHeads, int numKvHeads,
                             float scaleLog2) {
  __shared__ float sMax[kAttnWarps][G], sSum[kAttnWarps][G];
  __shared__ __align__(16) float sAcc[kAttnWarps][G][kHeadDim];
  // Lets the combine kernel (launched with programmatic stream serialisation) get its blocks resident once
  // every block of this grid has started; it still waits for this grid's completion before reading.
  pdlLaunchDependents();
  const int s = blockIdx.y, split = blockIdx.z, head0 = blockIdx.x * G;
  const int kvh = head0 / (numHeads / numKvHeads);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = lane >> 3, part = lane & 7;
  // q first (independent of the length, so its latency overlaps the lengths load).
  bf16 qRaw[G][8];
  {
    const bf16* qRow = q + int64_t(s) * qStride + int64_t(head0) * kHeadDim + part * 8;
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) qRaw[g][e] = qRow[g * kHeadDim + e];
  }
  const int len = imin(lengths[s], maxLen);
  bf16* dst = out + int64_t(s) * outStride + int64_t(head0) * kHeadDim;
  if (len <= 0) {
    if (split == 0)
      for (int i = threadIdx.x; i < G * kHeadDim; i += kAttnThreads) dst[i] = toBf16(0.f);
    return;
  }
  const SplitPlan plan = planSplits(len, minSplits, maxSplitKeys);
  if (split >= plan.count) return;
  const int begin = split * plan.chunk, end = imin(len, begin + plan.chunk);
  const int64_t kvDim = int64_t(numKvHeads) * kHeadDim;
  const int64_t base = int64_t(s) * maxLen * kvDim + int64_t(kvh) * kHeadDim + part * 8;
  const bf16* kp = kCache + base;
  const bf16* vp = vCache + base;

  int first = begin + warp * kAttnWarpKeys;
  uint4 kr[kAttnKeysPerLane], vr[kAttnKeysPerLane];
  loadAttnStep(kp, vp, kvDim, first, end, row, kr, vr);

  float qr[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) qr[g][e] = toFloat(qRaw[g][e]) * scaleLog2;
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kAttnInitMax;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  }

#pragma unroll 1
  for (; first < end; first += kAttnBlockKeys) {  // warp-uniform condition
    uint4 kn[kAttnKeysPerLane], vn[kAttnKeysPerLane];
    loadAttnStep(kp, vp, kvDim, first + kAttnBlockKeys, end, row, kn, vn);
    float score[kAttnKeysPerLane][G];
#pragma unroll
    for (int u = 0; u < kAttnKeysPerLane; ++u) {
      float kf[8];
      unpackBf16x8(kr[u], kf);
      const bool valid = first + u * kAttnRowsPerLoad + row < end;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(qr[g][e], kf[e], dot);
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        dot += __shfl_xor_sync(0xffffffffu, dot, 4);
        score[u][g] = valid ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kAttnKeysPerLane; ++u) mx = fmaxf(mx, score[u][g]);
      const float corr = fastExp2(m[g] - mx);
      m[g] = mx;
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= corr;
    }
#pragma unroll
    for (int u = 0; u < kAttnKeysPerLane; ++u) {
      float vf[8];
      unpackBf16x8(vr[u], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = fastExp2(score[u][g] - m[g]);
        l[g] += p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
      }
    }
#pragma unroll
    for (int u = 0; u < kAttnKeysPerLane; ++u) kr[u] = kn[u], vr[u] = vn[u];
  }

  // Merge the 4 row groups of the warp (lanes 8 apart), then the warps through shared memory.
#pragma unroll
  for (int offset = 8; offset <= 16; offset <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], offset);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], offset);
      const float mx = fmaxf(m[g], mo);
      const float a = fastExp2(m[g] - mx), b = fastExp2(mo - mx);
      m[g] = mx;
      l[g] = l[g] * a + lo * b;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
        acc[g][e] = acc[g][e] * a + ao * b;
      }
    }
  }
  if (row == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float4* a4 = reinterpret_cast<float4*>(&sAcc[warp][g][part * 8]);
      a4[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      a4[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
      if (part == 0) sMax[warp][g] = m[g], sSum[warp][g] = l[g];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * kHeadDim; i += kAttnThreads) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    float mx = sMax[0][g];
#pragma unroll
    for (int w = 1; w < kAttnWarps; ++w) mx = fmaxf(mx, sMax[w][g]);
    float sum = 0.f, a = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) {
      const float wt = fastExp2(sMax[w][g] - mx);  // 0 for a warp that saw no key of this split
      sum = fmaf(sSum[w][g], wt, sum);
      a = fmaf(sAcc[w][g][d], wt, a);
    }
    if (plan.count == 1) {
      dst[i] = toBf16(a / sum);
    } else {
      float* o = partial + ((int64_t(s) * numHeads + head0 + g) * gridSplits + split) * kPartialStride;
      o[d] = a;
      if (d == 0) o[kHeadDim] = mx, o[kHeadDim + 1] = sum;
    }
  }
}

// A thread per (slot, head, dim): merges the splits of slots that have more than one, in split order.
constexpr int kCombineThreads = 256;
__global__ void __launch_bounds__(kCombineThreads)
attentionDecodeCombineKernel(const float* __restrict__ partial, const int32_t* __restrict__ lengths,
                             bf16* __restrict__ out, int64_t outStride, int numHeads, int gridSplits, int minSplits,
                             int maxSplitKeys, int maxLen) {
  // Every block waits (before anything else): this grid's completion then implies the partial kernel's.
  pdlWait();
  const int s = blockIdx.y, i = blockIdx.x * kCombineThreads + threadIdx.x;
  if (i >= numHeads * kHeadDim) return;
  const int len = imin(lengths[s], maxLen);
  if (len <= 0) return;  // zeros written by the partial kernel
  const int count = planSplits(len, minSplits, maxSplitKeys).count;
  if (count <= 1) return;  // written by the partial kernel
  const int h = i / kHeadDim, d = i % kHeadDim;
  const float* base = partial + (int64_t(s) * numHeads + h) * gridSplits * kPartialStride;
  float mx = -FLT_MAX;
  for (int j = 0; j < count; ++j) mx = fmaxf(mx, base[j * kPartialStride + kHeadDim]);
  float sum = 0.f, a = 0.f;
  for (int j = 0; j < count; ++j) {
    const float* p = base + j * kPartialStride;
    const float wt = fastExp2(p[kHeadDim] - mx);
    sum = fmaf(p[kHeadDim + 1], wt, sum);
    a = fmaf(p[d], wt, a);
  }
  out[int64_t(s) * outStride + int64_t(h) * kHeadDim + d] = toBf16(a / sum);
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


void gpuSleep(int microseconds, cudaStream_t stream) {
  gpuSleepKernel<<<1, 1, 0, stream>>>(microseconds);
  WG_LAUNCH_CHECK(gpuSleepKernel);
}

namespace {

int multiprocessorCount() {
  static int cached[64] = {};  // per device; a racing first call computes the same value
  int device = 0;
  WG_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= 64) device = 0;
  if (cached[device] == 0) {
    int sms = 0;
    WG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cached[device] = sms > 0 ? sms : 1;
  }
  return cached[device];
}

// Query heads per block: the largest divisor of the group that is at most 8 (register-resident q and outputs).
int attentionHeadsPerBlock(int group) {
  for (int g = 8; g > 1; --g)
    if (group % g == 0) return g;
  return 1;
}

template <int G>
void launchAttentionPartial(dim3 grid, cudaStream_t stream, const bf16* q, int64_t qStride, const bf16* kCache,
                            const bf16* vCache, const int32_t* lengths, bf16* out, int64_t outStride, float* partial,
                            int gridSplits, int minSplits, int maxSplitKeys, int maxLen, int numHeads,
                            int numKvHeads, float scaleLog2) {
  attentionDecodePartialKernel<G><<<grid, kAttnThreads, 0, stream>>>(q, qStride, kCache, vCache, lengths, out,
                                                                      outStride, partial, gridSplits, minSplits,
                                                                      maxSplitKeys, maxLen, numHeads, numKvHeads,
                                                                      scaleLog2);
}

}  // namespace

int64_t attentionDecodeWorkspace(int slots, int maxLen, int numHeads) {
  if (slots <= 0 || maxLen <= 0 || numHeads <= 0) return 0;
  // The grid's split count for the smallest maxSplitKeys and the largest target the launcher accepts (any
  // group size: minSplits <= ceil(kAttnMaxTargetBlocks / slots)).
  const int minSplitsBound = (kAttnMaxTargetBlocks + slots - 1) / slots;
  const int64_t splits = nominalSplits(maxLen, minSplitsBound, kAttnMinMaxSplitKeys);
  return int64_t(slots) * numHeads * splits * kPartialStride;
}

void attentionDecode(const bf16* q, int64_t qStride, const bf16* kCache, const bf16* vCache, const int32_t* lengths,
                     bf16* out, int64_t outStride, float* workspace, int slots, int maxLen, int numHeads,
                     int numKvHeads, int headDim, cudaStream_t stream, const AttentionDecodeConfig& config) {
  require(headDim == kHeadDim, "attentionDecode: headDim must be 64");
  require(numKvHeads > 0 && numHeads % numKvHeads == 0, "attentionDecode: numHeads must be a multiple of numKvHeads");
  require(reinterpret_cast<uintptr_t>(kCache) % 16 == 0 && reinterpret_cast<uintptr_t>(vCache) % 16 == 0,
          "attentionDecode: the key and value caches must be 16-byte aligned");
  if (slots == 0 || maxLen == 0) return;
  const int group = numHeads / numKvHeads, G = attentionHeadsPerBlock(group), headBlocks = numHeads / G;
  const int target = imin(kAttnMaxTargetBlocks,
                          imax(1, config.targetBlocks > 0 ? config.targetBlocks : 2 * multiprocessorCount()));
  const int64_t pairs = int64_t(slots) * headBlocks;
  const int minSplits = int((target + pairs - 1) / pairs);
  const int maxSplitKeys = imax(kAttnMinMaxSplitKeys, config.maxSplitKeys);
  const int gridSplits = nominalSplits(maxLen, minSplits, maxSplitKeys);
  require(workspace != nullptr || gridSplits == 1, "attentionDecode: a workspace is needed");
  require(int64_t(slots) * numHeads * gridSplits * kPartialStride <= attentionDecodeWorkspace(slots, maxLen, numHeads),
          "attentionDecode: internal error (workspace bound)");
  const dim3 grid{unsigned(headBlocks), unsigned(slots), unsigned(gridSplits)};
  const float scaleLog2 = 1.4426950408889634f / sqrtf(float(headDim));
  switch (G) {
#define WG_ATTN_CASE(g)                                                                                        \
  case g:                                                                                                      \
    launchAttentionPartial<g>(grid, stream, q, qStride, kCache, vCache, lengths, out, outStride, workspace,    \
                              gridSplits, minSplits, maxSplitKeys, maxLen, numHeads, numKvHeads, scaleLog2); \
    break;
    WG_ATTN_CASE(1)
    WG_ATTN_CASE(2)
    WG_ATTN_CASE(3)
    WG_ATTN_CASE(4)
    WG_ATTN_CASE(5)
    WG_ATTN_CASE(6)
    WG_ATTN_CASE(7)
    WG_ATTN_CASE(8)
#undef WG_ATTN_CASE
  }
  WG_LAUNCH_CHECK(attentionDecodePartialKernel);
  if (gridSplits == 1) return;  // no slot can have more than one split: the partial kernel wrote everything
  const float* partial = workspace;
  launchDependent(attentionDecodeCombineKernel, dim3(ceilDiv(int64_t(numHeads) * kHeadDim, kCombineThreads), unsigned(slots)),
                  dim3(kCombineThreads), stream, config.pdl, partial, lengths, out, outStride, numHeads, gridSplits,
                  minSplits, maxSplitKeys, maxLen);
}

void attentionDecode(const bf16* q, int64_t qStride, const bf16* kCache, const bf16* vCache, const int32_t* lengths,
                     bf16* out, int64_t outStride, float* workspace, int slots, int maxLen, int numHeads,
                     int numKvHeads, int headDim, cudaStream_t stream) {
  attentionDecode(q, qStride, kCache, vCache, lengths, out, outStride, workspace, slots, maxLen, numHeads, numKvHeads,
                  headDim, stream, AttentionDecodeConfig{});
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
