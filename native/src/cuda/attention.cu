// Causal grouped-query attention over left-padded sequences, forward and backward, flash-style: keys and values
// stream through shared memory in tiles with an online softmax, so no [T x T] score matrix is ever stored.
// Three versions: attentionForward/Backward run on the tensor cores, by default FlashAttention-2-style kernels
// (mma.sync m16n8k16 with scores and the online softmax in registers, bottom of this file); with
// WEBGRPO_CUDA_ATTENTION_TC=wmma they run the earlier WMMA kernels (score tiles in shared memory) instead. The *Simt
// twins (CUDA cores, one thread per query or key row) are the simple reference both were checked against.
// TODO(perf): wgmma (sm_90a) with TMA-fed tiles.
#include <mma.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>

#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

using namespace nvcuda;

namespace {

constexpr int kHeadDim = 64;
constexpr int kRowsPerBlock = 128;  // query rows (forward, dQ) or key rows (dK, dV) per block
constexpr int kTile = 64;           // streamed rows per shared-memory tile
constexpr int kChunk = 16;          // scores per online-softmax rescale
constexpr float kLog2e = 1.4426950408889634f;

struct AttnArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  int64_t qStride, kStride, vStride;
  const uint8_t* mask;
  int batch, seqLen, numHeads, numKvHeads;
  float scale;
};

__device__ __forceinline__ bool tokenValid(const AttnArgs& a, int b, int t) {
  return t < a.seqLen && (a.mask == nullptr || a.mask[static_cast<int64_t>(b) * a.seqLen + t] != 0);
}

__device__ __forceinline__ void loadRow(const bf16* src, float* dst) {
  // 8 x 16-byte loads of one 64-wide bf16 row.
#pragma unroll
  for (int i = 0; i < kHeadDim; i += 8) {
    uint4 raw = *reinterpret_cast<const uint4*>(src + i);
    const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[i + j] = toFloat(v[j]);
  }
}

// Cooperative tile load: rows [first, first+kTile) of a bf16 [rows, stride] tensor at column offset `col`, into
// float smem [kTile][kHeadDim]; rows past seqLen become zeros.
__device__ __forceinline__ void loadTile(float (*tile)[kHeadDim], const bf16* base, int64_t stride, int64_t rowBase,
                                         int first, int seqLen, int col) {
  for (int e = threadIdx.x; e < kTile * (kHeadDim / 8); e += blockDim.x) {
    const int r = e / (kHeadDim / 8), c8 = (e % (kHeadDim / 8)) * 8;
    const int t = first + r;
    if (t < seqLen) {
      uint4 raw = *reinterpret_cast<const uint4*>(base + (rowBase + t) * stride + col + c8);
      const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) tile[r][c8 + j] = toFloat(v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) tile[r][c8 + j] = 0.f;
    }
  }
}

__device__ __forceinline__ float dot64(const float* a, const float* b) {
  float s = 0.f;
#pragma unroll
  for (int d = 0; d < kHeadDim; d += 4) {
    const float4 bv = *reinterpret_cast<const float4*>(b + d);
    s += a[d] * bv.x + a[d + 1] * bv.y + a[d + 2] * bv.z + a[d + 3] * bv.w;
  }
  return s;
}

__global__ void __launch_bounds__(kRowsPerBlock) attentionForwardKernel(AttnArgs a, bf16* __restrict__ out,
                                                                        float* __restrict__ lse) {
  __shared__ __align__(16) float keys[kTile][kHeadDim];
  __shared__ __align__(16) float values[kTile][kHeadDim];
  __shared__ bool keyOk[kTile];
  const int b = blockIdx.z, h = blockIdx.y;
  const int g = h / (a.numHeads / a.numKvHeads);
  const int firstRow = blockIdx.x * kRowsPerBlock;
  const int i = firstRow + threadIdx.x;
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool rowValid = tokenValid(a, b, i);

  float q[kHeadDim], o[kHeadDim];
  if (rowValid) loadRow(a.q + (rowBase + i) * a.qStride + h * kHeadDim, q);
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) {
    q[d] = rowValid ? q[d] * a.scale * kLog2e : 0.f;  // scores in log2 units
    o[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int lastRow = min(a.seqLen - 1, firstRow + kRowsPerBlock - 1);
  for (int first = 0; first <= lastRow; first += kTile) {
    __syncthreads();
    loadTile(keys, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
    loadTile(values, a.v, a.vStride, rowBase, first, a.seqLen, g * kHeadDim);
    for (int r = threadIdx.x; r < kTile; r += blockDim.x) keyOk[r] = tokenValid(a, b, first + r);
    __syncthreads();
    if (!rowValid || first > i) continue;
    const int count = min(kTile, i - first + 1);  // causal: keys first .. i
    for (int c0 = 0; c0 < count; c0 += kChunk) {
      float s[kChunk];
      float chunkMax = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < kChunk; ++jj) {
        const int j = c0 + jj;
        s[jj] = (j < count && keyOk[j]) ? dot64(q, keys[j]) : -INFINITY;
        chunkMax = fmaxf(chunkMax, s[jj]);
      }
      const float mNew = fmaxf(m, chunkMax);
      if (mNew == -INFINITY) continue;
      const float correction = exp2f(m - mNew);
      l *= correction;
#pragma unroll
      for (int d = 0; d < kHeadDim; ++d) o[d] *= correction;
#pragma unroll
      for (int jj = 0; jj < kChunk; ++jj) {
        const float p = exp2f(s[jj] - mNew);  // 0 for masked keys
        if (p == 0.f) continue;
        l += p;
        const float* vr = values[c0 + jj];
#pragma unroll
        for (int d = 0; d < kHeadDim; ++d) o[d] += p * vr[d];
      }
      m = mNew;
    }
  }
  if (i >= a.seqLen) return;
  bf16* dst = out + (rowBase + i) * static_cast<int64_t>(a.numHeads) * kHeadDim + h * kHeadDim;
  const float inv = rowValid && l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) dst[d] = toBf16(o[d] * inv);
  lse[(static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i] = rowValid ? (m + log2f(l)) / kLog2e : 0.f;
}

// rowDot[b,h,i] = sum_d dout[i,d] * out[i,d]: the softmax-backward correction term. One warp per row.
__global__ void attentionRowDotKernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                      float* __restrict__ rowDot, int batch, int seqLen, int numHeads) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t total = static_cast<int64_t>(batch) * numHeads * seqLen;
  if (warp >= total) return;
  const int i = static_cast<int>(warp % seqLen);
  const int h = static_cast<int>((warp / seqLen) % numHeads);
  const int b = static_cast<int>(warp / (static_cast<int64_t>(seqLen) * numHeads));
  const int64_t offset = (static_cast<int64_t>(b) * seqLen + i) * numHeads * kHeadDim + h * kHeadDim;
  float s = 0.f;
  for (int d = lane; d < kHeadDim; d += 32) s += toFloat(out[offset + d]) * toFloat(dout[offset + d]);
  s = warpSum(s);
  if (lane == 0) rowDot[warp] = s;
}

// dQ: one thread per query row, streaming K and V tiles.
__global__ void __launch_bounds__(kRowsPerBlock) attentionBackwardQueryKernel(
    AttnArgs a, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ rowDot,
    bf16* __restrict__ dq, int64_t dqStride) {
  __shared__ __align__(16) float keys[kTile][kHeadDim];
  __shared__ __align__(16) float values[kTile][kHeadDim];
  __shared__ bool keyOk[kTile];
  const int b = blockIdx.z, h = blockIdx.y;
  const int g = h / (a.numHeads / a.numKvHeads);
  const int firstRow = blockIdx.x * kRowsPerBlock;
  const int i = firstRow + threadIdx.x;
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool rowValid = tokenValid(a, b, i);
  float q[kHeadDim], dO[kHeadDim], acc[kHeadDim];
  float rowLse = 0.f, rowD = 0.f;
  if (rowValid) {
    loadRow(a.q + (rowBase + i) * a.qStride + h * kHeadDim, q);
    loadRow(dout + (rowBase + i) * static_cast<int64_t>(a.numHeads) * kHeadDim + h * kHeadDim, dO);
    const int64_t stat = (static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i;
    rowLse = lse[stat] * kLog2e;
    rowD = rowDot[stat];
  }
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) {
    q[d] = rowValid ? q[d] * a.scale * kLog2e : 0.f;
    dO[d] = rowValid ? dO[d] : 0.f;
    acc[d] = 0.f;
  }
  const int lastRow = min(a.seqLen - 1, firstRow + kRowsPerBlock - 1);
  for (int first = 0; first <= lastRow; first += kTile) {
    __syncthreads();
    loadTile(keys, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
    loadTile(values, a.v, a.vStride, rowBase, first, a.seqLen, g * kHeadDim);
    for (int r = threadIdx.x; r < kTile; r += blockDim.x) keyOk[r] = tokenValid(a, b, first + r);
    __syncthreads();
    if (!rowValid || first > i) continue;
    const int count = min(kTile, i - first + 1);
    for (int j = 0; j < count; ++j) {
      if (!keyOk[j]) continue;
      const float p = exp2f(dot64(q, keys[j]) - rowLse);
      const float ds = p * (dot64(dO, values[j]) - rowD);
#pragma unroll
      for (int d = 0; d < kHeadDim; ++d) acc[d] += ds * keys[j][d];
    }
  }
  if (i >= a.seqLen) return;
  bf16* dst = dq + (rowBase + i) * dqStride + h * kHeadDim;
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) dst[d] = toBf16(acc[d] * a.scale);
}

// dK (computeKeyGrad) or dV (!computeKeyGrad): one thread per key row of a kv head, streaming the query rows of
// every query head in its group (tiles of Q, dO, lse, rowDot). Split in two launches to keep registers in bounds.
template <bool computeKeyGrad>
__global__ void __launch_bounds__(kRowsPerBlock) attentionBackwardKeyKernel(
    AttnArgs a, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ rowDot,
    bf16* __restrict__ grad, int64_t gradStride) {
  __shared__ __align__(16) float queries[kTile][kHeadDim];
  __shared__ __align__(16) float douts[kTile][kHeadDim];
  __shared__ float tileLse[kTile], tileD[kTile];
  __shared__ bool queryOk[kTile];
  const int b = blockIdx.z, g = blockIdx.y;
  const int group = a.numHeads / a.numKvHeads;
  const int firstKey = blockIdx.x * kRowsPerBlock;
  const int j = firstKey + threadIdx.x;
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool keyValid = tokenValid(a, b, j);
  float kr[kHeadDim], vr[kHeadDim], acc[kHeadDim];
  if (keyValid) {
    loadRow(a.k + (rowBase + j) * a.kStride + g * kHeadDim, kr);
    if (computeKeyGrad) loadRow(a.v + (rowBase + j) * a.vStride + g * kHeadDim, vr);
  }
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) {
    kr[d] = keyValid ? kr[d] * a.scale * kLog2e : 0.f;
    vr[d] = (computeKeyGrad && keyValid) ? vr[d] : 0.f;
    acc[d] = 0.f;
  }
  const int64_t outStride = static_cast<int64_t>(a.numHeads) * kHeadDim;
  const int firstTile = (firstKey / kTile) * kTile;
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int first = firstTile; first < a.seqLen; first += kTile) {
      __syncthreads();
      loadTile(queries, a.q, a.qStride, rowBase, first, a.seqLen, h * kHeadDim);
      loadTile(douts, dout, outStride, rowBase, first, a.seqLen, h * kHeadDim);
      for (int r = threadIdx.x; r < kTile; r += blockDim.x) {
        const int i = first + r;
        queryOk[r] = tokenValid(a, b, i);
        const int64_t stat = (static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i;
        tileLse[r] = queryOk[r] ? lse[stat] * kLog2e : 0.f;
        tileD[r] = queryOk[r] ? rowDot[stat] : 0.f;
      }
      __syncthreads();
      if (!keyValid) continue;
      const int start = max(0, j - first);  // causal: queries i >= j
      for (int r = start; r < kTile; ++r) {
        if (!queryOk[r]) continue;
        const float p = exp2f(dot64(kr, queries[r]) - tileLse[r]);
        if (computeKeyGrad) {
          const float ds = p * (dot64(vr, douts[r]) - tileD[r]);
#pragma unroll
          for (int d = 0; d < kHeadDim; ++d) acc[d] += ds * queries[r][d];
        } else {
#pragma unroll
          for (int d = 0; d < kHeadDim; ++d) acc[d] += p * douts[r][d];
        }
      }
    }
  }
  if (j >= a.seqLen) return;
  bf16* dst = grad + (rowBase + j) * gradStride + g * kHeadDim;
  const float factor = computeKeyGrad ? a.scale : 1.f;
#pragma unroll
  for (int d = 0; d < kHeadDim; ++d) dst[d] = toBf16(acc[d] * factor);
}

AttnArgs makeArgs(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v, int64_t vStride,
                  const uint8_t* mask, const AttentionShape& s, const char* who) {
  require(s.headDim == kHeadDim, std::string(who) + ": head dim must be 64, got " + std::to_string(s.headDim));
  require(s.numKvHeads > 0 && s.numHeads % s.numKvHeads == 0,
          std::string(who) + ": numHeads must be a multiple of numKvHeads");
  require(qStride % 8 == 0 && kStride % 8 == 0 && vStride % 8 == 0,
          std::string(who) + ": row strides must be multiples of 8 elements (16-byte loads)");
  return AttnArgs{q, k, v, qStride, kStride, vStride, mask, s.batch, s.seqLen, s.numHeads, s.numKvHeads,
                  1.f / sqrtf(static_cast<float>(s.headDim))};
}

}  // namespace

void attentionForwardSimt(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                          int64_t vStride, const uint8_t* mask, bf16* out, float* lse, const AttentionShape& shape,
                          cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionForwardSimt");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  dim3 grid(ceilDiv(shape.seqLen, kRowsPerBlock), shape.numHeads, shape.batch);
  attentionForwardKernel<<<grid, kRowsPerBlock, 0, stream>>>(a, out, lse);
  WG_LAUNCH_CHECK(attentionForwardKernel);
}

void attentionBackwardSimt(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                           int64_t vStride, const uint8_t* mask, const bf16* out, const bf16* dout, const float* lse,
                           bf16* dq, int64_t dqStride, bf16* dk, int64_t dkStride, bf16* dv, int64_t dvStride,
                           float* rowDot, const AttentionShape& shape, cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionBackwardSimt");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  const int64_t rows = static_cast<int64_t>(shape.batch) * shape.numHeads * shape.seqLen;
  attentionRowDotKernel<<<ceilDiv(rows * 32, 256), 256, 0, stream>>>(out, dout, rowDot, shape.batch, shape.seqLen,
                                                                     shape.numHeads);
  WG_LAUNCH_CHECK(attentionRowDotKernel);
  dim3 queryGrid(ceilDiv(shape.seqLen, kRowsPerBlock), shape.numHeads, shape.batch);
  attentionBackwardQueryKernel<<<queryGrid, kRowsPerBlock, 0, stream>>>(a, dout, lse, rowDot, dq, dqStride);
  WG_LAUNCH_CHECK(attentionBackwardQueryKernel);
  dim3 keyGrid(ceilDiv(shape.seqLen, kRowsPerBlock), shape.numKvHeads, shape.batch);
  attentionBackwardKeyKernel<true><<<keyGrid, kRowsPerBlock, 0, stream>>>(a, dout, lse, rowDot, dk, dkStride);
  WG_LAUNCH_CHECK(attentionBackwardKeyKernel);
  attentionBackwardKeyKernel<false><<<keyGrid, kRowsPerBlock, 0, stream>>>(a, dout, lse, rowDot, dv, dvStride);
  WG_LAUNCH_CHECK(attentionBackwardKeyKernel);
}


// ---- tensor-core version (WMMA bf16 16x16x16, fp32 accumulation) ---------------------------------------------
// Each warp owns 16 rows (queries in forward / dQ, keys in dK/dV) and streams 64-row tiles of the other side
// through shared memory. Score tiles go through shared memory between the two products, where the lanes apply
// the causal/padding mask and the softmax arithmetic. The forward pass makes two sweeps (row statistics, then
// P.V with the final normalisation), so no accumulator ever needs rescaling. No [T x T] matrix is stored.
namespace {

constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // own rows per block
constexpr int kTcCols = 64;             // streamed rows per tile
constexpr int kLdTile = kHeadDim + 8;   // bf16 tile row (144 bytes: spreads banks, keeps 32-byte alignment)
constexpr int kLdScore = kTcCols + 4;   // fp32 score tile row
constexpr int kLdProb = kTcCols + 8;    // bf16 probability tile row
constexpr int kTileBytes = kTcCols * kLdTile * 2;
constexpr int kScoreBytes = 16 * kLdScore * 4;  // one warp's fp32 [16 x 64]
constexpr int kProbBytes = 16 * kLdProb * 2;    // one warp's bf16 [16 x 64]

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Rows [first, first+64) of a strided bf16 tensor (64 columns at `col`) into a [64][kLdTile] tile; rows at or past
// seqLen are zero.
__device__ __forceinline__ void loadTcTile(bf16* tile, const bf16* base, int64_t stride, int64_t rowBase, int first,
                                           int seqLen, int col) {
  for (int e = threadIdx.x; e < kTcCols * (kHeadDim / 8); e += blockDim.x) {
    const int r = e / (kHeadDim / 8), c8 = (e % (kHeadDim / 8)) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (first + r < seqLen) v = *reinterpret_cast<const uint4*>(base + (rowBase + first + r) * stride + col + c8);
    *reinterpret_cast<uint4*>(tile + r * kLdTile + c8) = v;
  }
}

// The warp's 16 own rows as four A fragments (k-steps over the head dimension).
__device__ __forceinline__ void loadOwnRows(FragA (&a)[4], const bf16* tile, int warp) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wmma::load_matrix_sync(a[kk], tile + warp * 16 * kLdTile + 16 * kk, kLdTile);
}

// score[16 x 64] = own[16 x 64] . tile^T (tile rows are the score columns).
__device__ __forceinline__ void scoreTile(const FragA (&a)[4], const bf16* tile, float* score) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    FragAcc c;
    wmma::fill_fragment(c, 0.f);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      FragBCol b;
      wmma::load_matrix_sync(b, tile + 16 * j * kLdTile + 16 * kk, kLdTile);
      wmma::mma_sync(c, a[kk], b, c);
    }
    wmma::store_matrix_sync(score + 16 * j, c, kLdScore, wmma::mem_row_major);
  }
}

// acc[16 x 64] += prob[16 x 64] . tile[64 x 64].
__device__ __forceinline__ void accumulateTile(FragAcc (&acc)[4], const bf16* prob, const bf16* tile) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    FragA a;
    wmma::load_matrix_sync(a, prob + 16 * kk, kLdProb);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      FragBRow b;
      wmma::load_matrix_sync(b, tile + 16 * kk * kLdTile + 16 * j, kLdTile);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }
}

// Writes the warp's accumulators (times `factor`) as bf16 rows (zeros for rows that are not `valid`), through the
// warp's fp32 score tile. Lane pairs share a row: lane&1 picks the column half.
__device__ __forceinline__ void storeRows(FragAcc (&acc)[4], float* score, float factor, bool rowInRange, bool valid,
                                         bf16* dst) {
#pragma unroll
  for (int j = 0; j < 4; ++j) wmma::store_matrix_sync(score + 16 * j, acc[j], kLdScore, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 32;
  if (rowInRange) {
#pragma unroll 8
    for (int c = 0; c < 32; ++c) dst[c0 + c] = toBf16(valid ? score[r * kLdScore + c0 + c] * factor : 0.f);
  }
}

__global__ void __launch_bounds__(kTcWarps * 32) attentionForwardTcKernel(AttnArgs a, bf16* __restrict__ out,
                                                                          float* __restrict__ lse) {
  extern __shared__ __align__(128) char smem[];
  bf16* ownTile = reinterpret_cast<bf16*>(smem);
  bf16* keys = reinterpret_cast<bf16*>(smem + kTileBytes);
  bf16* values = reinterpret_cast<bf16*>(smem + 2 * kTileBytes);
  float* scores = reinterpret_cast<float*>(smem + 3 * kTileBytes);
  bf16* probs = reinterpret_cast<bf16*>(smem + 3 * kTileBytes + kTcWarps * kScoreBytes);
  bool* keyOk = reinterpret_cast<bool*>(smem + 3 * kTileBytes + kTcWarps * (kScoreBytes + kProbBytes));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 32;
  const int b = blockIdx.z, h = blockIdx.y, g = h / (a.numHeads / a.numKvHeads);
  const int firstRow = blockIdx.x * kTcRows;
  const int i = firstRow + warp * 16 + r;  // this lane's query row
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool rowValid = tokenValid(a, b, i);
  float* myScore = scores + warp * (kScoreBytes / 4);
  bf16* myProb = probs + warp * (kProbBytes / 2);
  const float scaleLog2 = a.scale * kLog2e;

  loadTcTile(ownTile, a.q, a.qStride, rowBase, firstRow, a.seqLen, h * kHeadDim);
  __syncthreads();
  FragA q[4];
  loadOwnRows(q, ownTile, warp);
  const int lastKey = min(a.seqLen - 1, firstRow + kTcRows - 1);

  // Sweep 1: row max and sum of exponentials (log2 units).
  float m = -INFINITY, l = 0.f;
  for (int first = 0; first <= lastKey; first += kTcCols) {
    __syncthreads();
    loadTcTile(keys, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
    for (int c = threadIdx.x; c < kTcCols; c += blockDim.x) keyOk[c] = tokenValid(a, b, first + c);
    __syncthreads();
    scoreTile(q, keys, myScore);
    __syncwarp();
    float s[32], tileMax = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = first + c0 + c;
      s[c] = (rowValid && keyOk[c0 + c] && j <= i) ? myScore[r * kLdScore + c0 + c] * scaleLog2 : -INFINITY;
      tileMax = fmaxf(tileMax, s[c]);
    }
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
    const float mNew = fmaxf(m, tileMax);
    float sum = 0.f;
    if (mNew != -INFINITY) {
#pragma unroll
      for (int c = 0; c < 32; ++c) sum += exp2f(s[c] - mNew);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (mNew != -INFINITY) {
      l = l * exp2f(m - mNew) + sum;
      m = mNew;
    }
  }
  const float lse2 = rowValid ? m + log2f(l) : 0.f;

  // Sweep 2: O = sum_j exp2(s_j - lse2) v_j, already normalised.
  FragAcc o[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) wmma::fill_fragment(o[j], 0.f);
  for (int first = 0; first <= lastKey; first += kTcCols) {
    __syncthreads();
    loadTcTile(keys, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
    loadTcTile(values, a.v, a.vStride, rowBase, first, a.seqLen, g * kHeadDim);
    for (int c = threadIdx.x; c < kTcCols; c += blockDim.x) keyOk[c] = tokenValid(a, b, first + c);
    __syncthreads();
    scoreTile(q, keys, myScore);
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int j = first + c0 + c;
      const bool ok = rowValid && keyOk[c0 + c] && j <= i;
      myProb[r * kLdProb + c0 + c] = toBf16(ok ? exp2f(myScore[r * kLdScore + c0 + c] * scaleLog2 - lse2) : 0.f);
    }
    __syncwarp();
    accumulateTile(o, myProb, values);
  }
  __syncwarp();
  bf16* dst = out + (rowBase + i) * static_cast<int64_t>(a.numHeads) * kHeadDim + h * kHeadDim;
  storeRows(o, myScore, 1.f, i < a.seqLen, rowValid, dst);
  if ((lane & 1) == 0 && i < a.seqLen) lse[(static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i] = lse2 / kLog2e;
}

__global__ void __launch_bounds__(kTcWarps * 32) attentionBackwardQueryTcKernel(
    AttnArgs a, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ rowDot,
    bf16* __restrict__ dq, int64_t dqStride) {
  extern __shared__ __align__(128) char smem[];
  bf16* ownQ = reinterpret_cast<bf16*>(smem);
  bf16* ownDo = reinterpret_cast<bf16*>(smem + kTileBytes);
  bf16* keys = reinterpret_cast<bf16*>(smem + 2 * kTileBytes);
  bf16* values = reinterpret_cast<bf16*>(smem + 3 * kTileBytes);
  float* scores = reinterpret_cast<float*>(smem + 4 * kTileBytes);
  float* dps = reinterpret_cast<float*>(smem + 4 * kTileBytes + kTcWarps * kScoreBytes);
  bf16* dss = reinterpret_cast<bf16*>(smem + 4 * kTileBytes + 2 * kTcWarps * kScoreBytes);
  bool* keyOk = reinterpret_cast<bool*>(smem + 4 * kTileBytes + 2 * kTcWarps * kScoreBytes + kTcWarps * kProbBytes);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 32;
  const int b = blockIdx.z, h = blockIdx.y, g = h / (a.numHeads / a.numKvHeads);
  const int firstRow = blockIdx.x * kTcRows;
  const int i = firstRow + warp * 16 + r;
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool rowValid = tokenValid(a, b, i);
  float* myScore = scores + warp * (kScoreBytes / 4);
  float* myDp = dps + warp * (kScoreBytes / 4);
  bf16* myDs = dss + warp * (kProbBytes / 2);
  const float scaleLog2 = a.scale * kLog2e;
  const int64_t outStride = static_cast<int64_t>(a.numHeads) * kHeadDim;
  float rowLse2 = 0.f, rowD = 0.f;
  if (rowValid) {
    const int64_t stat = (static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i;
    rowLse2 = lse[stat] * kLog2e;
    rowD = rowDot[stat];
  }
  loadTcTile(ownQ, a.q, a.qStride, rowBase, firstRow, a.seqLen, h * kHeadDim);
  loadTcTile(ownDo, dout, outStride, rowBase, firstRow, a.seqLen, h * kHeadDim);
  __syncthreads();
  FragA q[4], dO[4];
  loadOwnRows(q, ownQ, warp);
  loadOwnRows(dO, ownDo, warp);
  FragAcc acc[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[j], 0.f);
  const int lastKey = min(a.seqLen - 1, firstRow + kTcRows - 1);
  for (int first = 0; first <= lastKey; first += kTcCols) {
    __syncthreads();
    loadTcTile(keys, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
    loadTcTile(values, a.v, a.vStride, rowBase, first, a.seqLen, g * kHeadDim);
    for (int c = threadIdx.x; c < kTcCols; c += blockDim.x) keyOk[c] = tokenValid(a, b, first + c);
    __syncthreads();
    scoreTile(q, keys, myScore);
    scoreTile(dO, values, myDp);
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int j = first + c0 + c;
      const bool ok = rowValid && keyOk[c0 + c] && j <= i;
      const int e = r * kLdScore + c0 + c;
      const float p = ok ? exp2f(myScore[e] * scaleLog2 - rowLse2) : 0.f;
      myDs[r * kLdProb + c0 + c] = toBf16(p * (myDp[e] - rowD));
    }
    __syncwarp();
    accumulateTile(acc, myDs, keys);
  }
  __syncwarp();
  storeRows(acc, myScore, a.scale, i < a.seqLen, rowValid, dq + (rowBase + i) * dqStride + h * kHeadDim);
}

__global__ void __launch_bounds__(kTcWarps * 32) attentionBackwardKeyTcKernel(
    AttnArgs a, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ rowDot,
    bf16* __restrict__ dk, int64_t dkStride, bf16* __restrict__ dv, int64_t dvStride) {
  extern __shared__ __align__(128) char smem[];
  bf16* ownK = reinterpret_cast<bf16*>(smem);
  bf16* ownV = reinterpret_cast<bf16*>(smem + kTileBytes);
  bf16* queries = reinterpret_cast<bf16*>(smem + 2 * kTileBytes);
  bf16* douts = reinterpret_cast<bf16*>(smem + 3 * kTileBytes);
  float* scores = reinterpret_cast<float*>(smem + 4 * kTileBytes);  // S^T
  float* dps = reinterpret_cast<float*>(smem + 4 * kTileBytes + kTcWarps * kScoreBytes);  // dP^T
  bf16* probs = reinterpret_cast<bf16*>(smem + 4 * kTileBytes + 2 * kTcWarps * kScoreBytes);  // P^T
  bf16* dss = reinterpret_cast<bf16*>(smem + 4 * kTileBytes + 2 * kTcWarps * kScoreBytes + kTcWarps * kProbBytes);
  float* tileLse2 = reinterpret_cast<float*>(smem + 4 * kTileBytes + 2 * kTcWarps * (kScoreBytes + kProbBytes));
  float* tileD = tileLse2 + kTcCols;
  bool* queryOk = reinterpret_cast<bool*>(tileD + kTcCols);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 32;
  const int b = blockIdx.z, g = blockIdx.y, group = a.numHeads / a.numKvHeads;
  const int firstKey = blockIdx.x * kTcRows;
  const int j = firstKey + warp * 16 + r;  // this lane's key row
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const bool keyValid = tokenValid(a, b, j);
  float* myS = scores + warp * (kScoreBytes / 4);
  float* myDp = dps + warp * (kScoreBytes / 4);
  bf16* myP = probs + warp * (kProbBytes / 2);
  bf16* myDs = dss + warp * (kProbBytes / 2);
  const float scaleLog2 = a.scale * kLog2e;
  const int64_t outStride = static_cast<int64_t>(a.numHeads) * kHeadDim;
  loadTcTile(ownK, a.k, a.kStride, rowBase, firstKey, a.seqLen, g * kHeadDim);
  loadTcTile(ownV, a.v, a.vStride, rowBase, firstKey, a.seqLen, g * kHeadDim);
  __syncthreads();
  FragA kf[4], vf[4];
  loadOwnRows(kf, ownK, warp);
  loadOwnRows(vf, ownV, warp);
  FragAcc dkAcc[4], dvAcc[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    wmma::fill_fragment(dkAcc[t], 0.f);
    wmma::fill_fragment(dvAcc[t], 0.f);
  }
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int first = firstKey; first < a.seqLen; first += kTcCols) {  // causal: queries i >= keys
      __syncthreads();
      loadTcTile(queries, a.q, a.qStride, rowBase, first, a.seqLen, h * kHeadDim);
      loadTcTile(douts, dout, outStride, rowBase, first, a.seqLen, h * kHeadDim);
      for (int c = threadIdx.x; c < kTcCols; c += blockDim.x) {
        const int i = first + c;
        queryOk[c] = tokenValid(a, b, i);
        const int64_t stat = (static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen + i;
        tileLse2[c] = queryOk[c] ? lse[stat] * kLog2e : 0.f;
        tileD[c] = queryOk[c] ? rowDot[stat] : 0.f;
      }
      __syncthreads();
      scoreTile(kf, queries, myS);  // S^T = K Q^T
      scoreTile(vf, douts, myDp);   // dP^T = V dO^T
      __syncwarp();
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const int i = first + c0 + c;
        const bool ok = keyValid && queryOk[c0 + c] && i >= j;
        const int e = r * kLdScore + c0 + c;
        const float p = ok ? exp2f(myS[e] * scaleLog2 - tileLse2[c0 + c]) : 0.f;
        myP[r * kLdProb + c0 + c] = toBf16(p);
        myDs[r * kLdProb + c0 + c] = toBf16(p * (myDp[e] - tileD[c0 + c]));
      }
      __syncwarp();
      accumulateTile(dvAcc, myP, douts);    // dV += P^T dO
      accumulateTile(dkAcc, myDs, queries);  // dK += dS^T Q
    }
  }
  __syncwarp();
  storeRows(dvAcc, myS, 1.f, j < a.seqLen, keyValid, dv + (rowBase + j) * dvStride + g * kHeadDim);
  __syncwarp();
  storeRows(dkAcc, myS, a.scale, j < a.seqLen, keyValid, dk + (rowBase + j) * dkStride + g * kHeadDim);
}

constexpr int kForwardTcSmem = 3 * kTileBytes + kTcWarps * (kScoreBytes + kProbBytes) + kTcCols;
constexpr int kQueryTcSmem = 4 * kTileBytes + kTcWarps * (2 * kScoreBytes + kProbBytes) + kTcCols;
constexpr int kKeyTcSmem = 4 * kTileBytes + 2 * kTcWarps * (kScoreBytes + kProbBytes) + 2 * kTcCols * 4 + kTcCols;

// Raises each kernel's dynamic shared-memory limit once per process (all three exceed the default 48 KB).
void enableTcSmem() {
  static std::once_flag once;
  std::call_once(once, [] {
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionForwardTcKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       kForwardTcSmem));
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionBackwardQueryTcKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       kQueryTcSmem));
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionBackwardKeyTcKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       kKeyTcSmem));
  });
}

}  // namespace

// ---- tensor-core version 2 (FlashAttention-2 style: mma.sync m16n8k16 bf16, scores in registers) -------------
// The default behind attentionForward/Backward; WEBGRPO_CUDA_ATTENTION_TC=wmma selects the WMMA kernels above.
//
// Blocks of 8 warps own 128 rows (queries in forward and dQ, keys in dK/dV); each warp owns 16 of them and keeps
// their operand fragments, its accumulators and its scores in registers. The other side streams through shared
// memory in 64-row tiles, double-buffered with cp.async (tile t+1 loads while tile t is computed). Rows are
// padded to 72 bf16 (144 bytes) so that every ldmatrix phase (8 rows x 16 bytes) hits 32 distinct banks.
//
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, lane = 4 * gq + tq (gq = lane >> 2, tq = lane & 3):
//   A (16 x 16, row-major), 4 regs of bf16x2 (low half = lower column):
//     a[0] = A[gq][2tq, 2tq+1]   a[1] = A[gq+8][2tq, 2tq+1]   a[2] = A[gq][2tq+8, +9]   a[3] = A[gq+8][2tq+8, +9]
//   B (16 x 8, "col": element pairs run along k), 2 regs:
//     b[0] = B[2tq, 2tq+1][gq]   b[1] = B[2tq+8, 2tq+9][gq]
//   C/D (16 x 8, fp32), 4 regs:  c[0], c[1] = C[gq][2tq, 2tq+1]   c[2], c[3] = C[gq+8][2tq, 2tq+1]
// ldmatrix.x4: lanes 8m..8m+7 give the 8 row addresses (16 bytes each) of matrix m; register m of lane l receives
//   M_m[l/4][2(l%4), +1] (plain) or M_m[2(l%4), +1][l/4] (.trans: the pair runs down a column).
//   * A from a row-major [row][k] tile: matrix m = rows +8(m&1), k +8(m>>1)  -> regs a[0..3] in order.
//   * B of X.Y^T (B[k][n] = Y[n][k], Y row-major [n][k]): plain; matrix m = rows n..n+7, k + 8m -> {b0,b1} of
//     k-step 2p, then {b0,b1} of k-step 2p+1 (32 k-columns per x4).
//   * B of P.Y (B[k][n] = Y[k][n], Y row-major [k][n]): .trans; matrix m = rows k +8(m&1), columns n +8(m>>1)
//     -> {b0,b1} of n-tile 2p, then of n-tile 2p+1.
// C of a 16 x 16 score chunk (n-tiles 2c, 2c+1) becomes the A operand of the next product as is:
//   a[0] = pack(S[2c][0..1]), a[1] = pack(S[2c][2..3]), a[2] = pack(S[2c+1][0..1]), a[3] = pack(S[2c+1][2..3]).
//
// Masking follows the kernels above: a query row (b,i) sees keys j <= i with mask[b,j] = 1; rows past seqLen or
// with mask 0 are outputs of zeros (lse 0). A block first turns the mask of its sequence into a bit array in
// shared memory (bit t = token t valid, 0 past seqLen); tiles and 16-row chunks that are all invalid or all
// above the diagonal are skipped, and only chunks on the diagonal or holding invalid tokens are masked.
// Products of a row with masked-out columns are zeroed; rows that are masked out as a whole (invalid own rows)
// are computed like any other and replaced by zeros at the store: every product keeps rows independent.
namespace {

constexpr int kFaWarps = 8;
constexpr int kFaThreads = kFaWarps * 32;
constexpr int kFaRows = 16 * kFaWarps;  // own rows per block
constexpr int kFaCols = 64;             // streamed rows per tile
constexpr int kFaLd = kHeadDim + 8;     // smem row stride in bf16 (144 bytes)
constexpr int kFaOwnBytes = kFaRows * kFaLd * 2;
constexpr int kFaTileBytes = kFaCols * kFaLd * 2;
constexpr int kFaMaxSeqLen = 65536;  // bit array of the mask: seqLen / 8 bytes of shared memory
constexpr int kFaMaxBitsBytes = kFaMaxSeqLen / 8;
// Forward: own Q, 2 stages of (K, V), then the bit array.
constexpr int kFaFwdSmem = kFaOwnBytes + 4 * kFaTileBytes;
// Backward: own (K, V) or (Q, dO), 2 stages of (Q, dO) or (K, V), 2 stages of lse|rowDot (dK/dV only), bits.
constexpr int kFaBwdSmem = 2 * kFaOwnBytes + 4 * kFaTileBytes + 2 * 2 * kFaCols * 4;

__host__ __device__ constexpr int faBitWords(int seqLen) { return (seqLen + kFaRows - 1) / kFaRows * (kFaRows / 32); }

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; zero-filled (nothing read) when !pred.
__device__ __forceinline__ void cpAsync16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(dst)), "l"(src), "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cpAsync4(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smemAddr(dst)), "l"(src), "r"(pred ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}

// c += A . B (m16n8k16, bf16 in, fp32 accumulate).
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float fastExp2(float x) {  // ex2.approx: -inf -> +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Rows [first, first + kRows) of a strided bf16 tensor (64 columns at `col`) into smem [kRows][kFaLd] by cp.async;
// rows at or past seqLen are zero-filled. Every thread of the block takes part; the caller commits the group.
template <int kRows>
__device__ __forceinline__ void faLoadRows(bf16* tile, const bf16* base, int64_t stride, int64_t rowBase, int first,
                                           int seqLen, int col) {
  static_assert((kRows * 8) % kFaThreads == 0, "whole 16-byte chunks per thread");
#pragma unroll
  for (int it = 0; it < kRows * 8 / kFaThreads; ++it) {
    const int e = threadIdx.x + it * kFaThreads;
    const int r = e >> 3, c8 = (e & 7) * 8;
    const bool ok = first + r < seqLen;
    const bf16* src = ok ? base + (rowBase + first + r) * stride + col + c8 : base;
    cpAsync16(tile + r * kFaLd + c8, src, ok);
  }
}

// bits[w] bit l = token 32w + l of sequence b is valid (mask != 0 and < seqLen), for faBitWords(seqLen) words.
// Returns the first valid token (INT_MAX when none). Contains barriers: every thread calls it.
__device__ __forceinline__ int faBuildBits(const AttnArgs& a, int b, uint32_t* bits, int* first) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, words = faBitWords(a.seqLen);
  if (threadIdx.x == 0) *first = INT_MAX;
  __syncthreads();
  const uint8_t* m = a.mask == nullptr ? nullptr : a.mask + static_cast<int64_t>(b) * a.seqLen;
  for (int w = warp; w < words; w += kFaWarps) {
    const int t = w * 32 + lane;
    const bool ok = t < a.seqLen && (m == nullptr || m[t] != 0);
    const uint32_t word = __ballot_sync(0xffffffffu, ok);
    if (lane == 0) {
      bits[w] = word;
      if (word != 0) atomicMin(first, w * 32 + __ffs(word) - 1);
    }
  }
  __syncthreads();
  return *first;
}

__device__ __forceinline__ bool faBit(const uint32_t* bits, int t) { return (bits[t >> 5] >> (t & 31)) & 1u; }

// Zeros rows [first, end) of 64 columns at `col` (a block whose own rows are all masked out).
__device__ __forceinline__ void faZeroRows(bf16* dst, int64_t stride, int64_t rowBase, int first, int end, int col) {
  for (int e = threadIdx.x; e < (end - first) * 8; e += kFaThreads)
    *reinterpret_cast<uint4*>(dst + (rowBase + first + (e >> 3)) * stride + col + (e & 7) * 8) = make_uint4(0, 0, 0, 0);
}

// The warp's 16 own rows (at smem `own`, row stride kFaLd) as A fragments over the 4 k-steps of the head dim.
__device__ __forceinline__ void faLoadOwn(uint32_t (&f)[4][4], const bf16* own, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) ldsm4(f[kk], own + row * kFaLd + kk * 16 + col);
}

// Writes the warp's 16 x 64 accumulators times `factor` (rows gq / gq+8 scaled by fA / fB, 0 for masked rows) as
// bf16 through the warp's own smem rows `stage` (no longer read), then as 16-byte row stores (rows < seqLen).
__device__ __forceinline__ void faStoreOwn(const float (&acc)[8][4], float fA, float fB, bf16* stage, bf16* dst,
                                           int64_t stride, int64_t rowBase, int r0, int seqLen, int col, int lane) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int nd = 0; nd < 8; ++nd) {
    *reinterpret_cast<uint32_t*>(stage + gq * kFaLd + nd * 8 + tq * 2) = packBf16(acc[nd][0] * fA, acc[nd][1] * fA);
    *reinterpret_cast<uint32_t*>(stage + (gq + 8) * kFaLd + nd * 8 + tq * 2) =
        packBf16(acc[nd][2] * fB, acc[nd][3] * fB);
  }
  __syncwarp();
#pragma unroll
  for (int it = 0; it < 4; ++it) {
    const int e = lane + 32 * it, r = e >> 3, c8 = (e & 7) * 8;
    if (r0 + r < seqLen)
      *reinterpret_cast<uint4*>(dst + (rowBase + r0 + r) * stride + col + c8) =
          *reinterpret_cast<const uint4*>(stage + r * kFaLd + c8);
  }
}

// Forward. grid (numHeads, batch, query blocks), the longest query blocks first.
__global__ void __launch_bounds__(kFaThreads, 2) attentionForwardFaKernel(AttnArgs a, bf16* __restrict__ out,
                                                                       float* __restrict__ lse) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int firstValidSmem;
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sKV = reinterpret_cast<bf16*>(smem + kFaOwnBytes);  // stage s: K at s * 2 * 64 rows, V 64 rows later
  uint32_t* bits = reinterpret_cast<uint32_t*>(smem + kFaFwdSmem);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int h = blockIdx.x, b = blockIdx.y, g = h / (a.numHeads / a.numKvHeads);
  const int q0 = (gridDim.z - 1 - blockIdx.z) * kFaRows;
  const int rowEnd = min(a.seqLen, q0 + kFaRows);
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const int64_t outStride = static_cast<int64_t>(a.numHeads) * kHeadDim;
  float* lseRow = lse + (static_cast<int64_t>(b) * a.numHeads + h) * a.seqLen;

  faLoadRows<kFaRows>(sQ, a.q, a.qStride, rowBase, q0, a.seqLen, h * kHeadDim);
  cpAsyncCommit();
  const int firstValid = faBuildBits(a, b, bits, &firstValidSmem);
  if ((bits[q0 >> 5] | bits[(q0 >> 5) + 1] | bits[(q0 >> 5) + 2] | bits[(q0 >> 5) + 3]) == 0) {
    cpAsyncWait<0>();  // no valid query row in the block
    faZeroRows(out, outStride, rowBase, q0, rowEnd, h * kHeadDim);
    for (int i = q0 + threadIdx.x; i < rowEnd; i += kFaThreads) lseRow[i] = 0.f;
    return;
  }
  // Keys [firstValid, rowEnd) matter (a valid row of the block exists, so firstValid < rowEnd).
  const int tileBegin = firstValid / kFaCols, nTiles = (rowEnd - 1) / kFaCols + 1 - tileBegin;
  const auto loadStage = [&](int stage, int tile) {
    bf16* sK = sKV + stage * 2 * kFaCols * kFaLd;
    faLoadRows<kFaCols>(sK, a.k, a.kStride, rowBase, tile * kFaCols, a.seqLen, g * kHeadDim);
    faLoadRows<kFaCols>(sK + kFaCols * kFaLd, a.v, a.vStride, rowBase, tile * kFaCols, a.seqLen, g * kHeadDim);
    cpAsyncCommit();
  };
  loadStage(0, tileBegin);

  const int r0 = q0 + warp * 16, rowA = r0 + gq, rowB = rowA + 8;
  const bool warpLive = r0 < a.seqLen && r0 + 15 >= firstValid;
  const float scaleLog2 = a.scale * kLog2e;
  const int bRow = lane & 7, bCol = (lane >> 3) * 8;                              // plain B (x4 = 8 x 32)
  const int tRow = (lane & 7) + ((lane >> 3) & 1) * 8, tCol = (lane >> 4) * 8;  // .trans B (x4 = 16 x 16)
  uint32_t qf[4][4];
  float o[8][4];
#pragma unroll
  for (int nd = 0; nd < 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float mRow[2] = {-INFINITY, -INFINITY}, lRow[2] = {0.f, 0.f};  // running max (log2 units), partial sums

  for (int t = 0; t < nTiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < nTiles) {
      loadStage(stage ^ 1, tileBegin + t + 1);
      cpAsyncWait<1>();
    } else {
      cpAsyncWait<0>();
    }
    __syncthreads();
    if (t == 0) faLoadOwn(qf, sQ + warp * 16 * kFaLd, lane);
    const int k0 = (tileBegin + t) * kFaCols;
    if (warpLive && k0 <= r0) {  // else every key of the tile is after every row of the warp
      const bf16* sK = sKV + stage * 2 * kFaCols * kFaLd;
      const bf16* sV = sK + kFaCols * kFaLd;
      const uint32_t bitsLo = bits[k0 >> 5], bitsHi = bits[(k0 >> 5) + 1];
      const bool diag = k0 + kFaCols > r0;
      const bool needMask = diag || (bitsLo & bitsHi) != 0xffffffffu;
      bool chunkLive[4];
#pragma unroll
      for (int c = 0; c < 4; ++c)
        chunkLive[c] = k0 + 16 * c <= r0 && (((c < 2 ? bitsLo : bitsHi) >> ((c & 1) * 16)) & 0xffffu) != 0;
      // S = Q K^T (raw dot products).
      float s[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (!chunkLive[c]) continue;
#pragma unroll
        for (int n2 = 0; n2 < 2; ++n2) {
          const int nt = 2 * c + n2;
#pragma unroll
          for (int kp = 0; kp < 2; ++kp) {
            uint32_t r[4];
            ldsm4(r, sK + (nt * 8 + bRow) * kFaLd + kp * 32 + bCol);
            mma16816(s[nt], qf[2 * kp], r[0], r[1]);
            mma16816(s[nt], qf[2 * kp + 1], r[2], r[3]);
          }
        }
      }
      if (needMask) {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = nt * 8 + tq * 2 + (e & 1);
            const bool ok = k0 + c <= (e < 2 ? rowA : rowB) && (((nt < 4 ? bitsLo : bitsHi) >> (c & 31)) & 1u);
            if (!ok) s[nt][e] = -INFINITY;
          }
        }
      }
      // Online softmax: rows gq (regs 0,1) and gq + 8 (regs 2,3); a row spans the 4 lanes of a quad.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
      }
      float mUse[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mNew = fmaxf(mRow[r], mx[r] * scaleLog2);
        mUse[r] = mNew == -INFINITY ? 0.f : mNew;  // no visible key yet: keep exp2 arguments at -inf, not NaN
        const float corr = fastExp2(mRow[r] - mUse[r]);
        mRow[r] = mNew;
        lRow[r] *= corr;
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
          o[nd][2 * r] *= corr;
          o[nd][2 * r + 1] *= corr;
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = fastExp2(fmaf(s[nt][e], scaleLog2, -mUse[e >> 1]));
          lRow[e >> 1] += s[nt][e];
        }
      }
      // O += P V: the C fragments of S chunk c are the A fragment of P for keys 16c .. 16c + 15.
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (!chunkLive[c]) continue;
        const uint32_t pa[4] = {packBf16(s[2 * c][0], s[2 * c][1]), packBf16(s[2 * c][2], s[2 * c][3]),
                                packBf16(s[2 * c + 1][0], s[2 * c + 1][1]),
                                packBf16(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t r[4];
          ldsm4t(r, sV + (16 * c + tRow) * kFaLd + np * 16 + tCol);
          mma16816(o[2 * np], pa, r[0], r[1]);
          mma16816(o[2 * np + 1], pa, r[2], r[3]);
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 1);
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 2);
  }
  const bool validA = rowA < a.seqLen && faBit(bits, rowA), validB = rowB < a.seqLen && faBit(bits, rowB);
  const float invA = validA && lRow[0] > 0.f ? 1.f / lRow[0] : 0.f;
  const float invB = validB && lRow[1] > 0.f ? 1.f / lRow[1] : 0.f;
  faStoreOwn(o, invA, invB, sQ + warp * 16 * kFaLd, out, outStride, rowBase, r0, a.seqLen, h * kHeadDim, lane);
  if (tq == 0) {
    if (rowA < a.seqLen) lseRow[rowA] = validA ? (mRow[0] + log2f(lRow[0])) / kLog2e : 0.f;
    if (rowB < a.seqLen) lseRow[rowB] = validB ? (mRow[1] + log2f(lRow[1])) / kLog2e : 0.f;
  }
}

// rowDot[b,h,i] = sum_d dout[i,d] * out[i,d]: 8 lanes per (token, head) row, 16-byte loads, fixed reduction order.
__global__ void attentionRowDotFaKernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                        float* __restrict__ rowDot, int64_t total, int seqLen, int numHeads) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = idx >> 3;  // (token, head) in out's memory order
  const bool ok = row < total;
  float s = 0.f;
  if (ok) {
    const uint4 x = *reinterpret_cast<const uint4*>(out + idx * 8);
    const uint4 y = *reinterpret_cast<const uint4*>(dout + idx * 8);
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
    const __nv_bfloat162* yp = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 xf = __bfloat1622float2(xp[j]), yf = __bfloat1622float2(yp[j]);
      s = fmaf(xf.x, yf.x, s);
      s = fmaf(xf.y, yf.y, s);
    }
  }
  s += __shfl_xor_sync(0xffffffffu, s, 1);
  s += __shfl_xor_sync(0xffffffffu, s, 2);
  s += __shfl_xor_sync(0xffffffffu, s, 4);
  if (ok && (idx & 7) == 0) {
    const int64_t token = row / numHeads;
    const int h = static_cast<int>(row % numHeads);
    const int64_t b = token / seqLen, i = token % seqLen;
    rowDot[(b * numHeads + h) * seqLen + i] = s;
  }
}

// Backward, one kernel shape for both halves (FA2 without atomics: every output row has one owner).
//   kKeys:  own rows = 128 keys of kv head blockIdx.x (X1 = K, X2 = V); streamed = 64-query tiles (Y1 = Q, Y2 = dO)
//           of every query head of the group in turn, with their lse and rowDot. Per 16-query chunk:
//           S^T = K Q^T, dP^T = V dO^T, P^T = exp(S^T - lse), dS^T = P^T (dP^T - rowDot);
//           dV += P^T dO, dK += dS^T Q (times scale at the end). grid (numKvHeads, batch, key blocks).
//   !kKeys: own rows = 128 queries of head blockIdx.x (X1 = Q, X2 = dO, lse and rowDot per row); streamed =
//           64-key tiles (Y1 = K, Y2 = V). Per 16-key chunk: S, dP, P, dS as above, dQ += dS K.
//           grid (numHeads, batch, query blocks), the longest first.
// kMinBlocks 2 caps registers at 128 (two blocks per SM); the dK/dV kernel then spills a few registers, 1 lets it
// use ~180 with one block per SM (WEBGRPO_CUDA_ATTENTION_TC=fa1).
template <bool kKeys, int kMinBlocks>
__global__ void __launch_bounds__(kFaThreads, kMinBlocks) attentionBackwardFaKernel(
    AttnArgs a, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ rowDot,
    bf16* __restrict__ grad1, int64_t grad1Stride, bf16* __restrict__ grad2, int64_t grad2Stride) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int firstValidSmem;
  bf16* sX1 = reinterpret_cast<bf16*>(smem);
  bf16* sX2 = reinterpret_cast<bf16*>(smem + kFaOwnBytes);
  bf16* sY = reinterpret_cast<bf16*>(smem + 2 * kFaOwnBytes);  // stage s: Y1 at s * 2 * 64 rows, Y2 64 rows later
  float* sStat = reinterpret_cast<float*>(smem + 2 * kFaOwnBytes + 4 * kFaTileBytes);  // stage s: lse[64], D[64]
  uint32_t* bits = reinterpret_cast<uint32_t*>(smem + kFaBwdSmem);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int group = a.numHeads / a.numKvHeads;
  const int hx = blockIdx.x, b = blockIdx.y;  // hx: kv head (kKeys) or query head
  const int g = kKeys ? hx : hx / group;
  const int blk0 = (kKeys ? blockIdx.z : gridDim.z - 1 - blockIdx.z) * kFaRows;
  const int rowEnd = min(a.seqLen, blk0 + kFaRows);
  const int64_t rowBase = static_cast<int64_t>(b) * a.seqLen;
  const int64_t outStride = static_cast<int64_t>(a.numHeads) * kHeadDim;
  const int ownCol = (kKeys ? g : hx) * kHeadDim;

  if (kKeys) {
    faLoadRows<kFaRows>(sX1, a.k, a.kStride, rowBase, blk0, a.seqLen, ownCol);
    faLoadRows<kFaRows>(sX2, a.v, a.vStride, rowBase, blk0, a.seqLen, ownCol);
  } else {
    faLoadRows<kFaRows>(sX1, a.q, a.qStride, rowBase, blk0, a.seqLen, ownCol);
    faLoadRows<kFaRows>(sX2, dout, outStride, rowBase, blk0, a.seqLen, ownCol);
  }
  cpAsyncCommit();
  const int firstValid = faBuildBits(a, b, bits, &firstValidSmem);
  if ((bits[blk0 >> 5] | bits[(blk0 >> 5) + 1] | bits[(blk0 >> 5) + 2] | bits[(blk0 >> 5) + 3]) == 0) {
    cpAsyncWait<0>();  // every own row is masked out
    faZeroRows(grad1, grad1Stride, rowBase, blk0, rowEnd, ownCol);
    if (kKeys) faZeroRows(grad2, grad2Stride, rowBase, blk0, rowEnd, ownCol);
    return;
  }
  // Streamed tiles: keys [firstValid, rowEnd) for dQ; queries [max(blk0, firstValid), seqLen) per head for dK/dV.
  const int tileBegin = (kKeys ? max(blk0, firstValid) : firstValid) / kFaCols;
  const int perHead = (kKeys ? a.seqLen - 1 : rowEnd - 1) / kFaCols + 1 - tileBegin;
  const int nTiles = kKeys ? group * perHead : perHead;
  const auto loadStage = [&](int stage, int t) {
    bf16* y1 = sY + stage * 2 * kFaCols * kFaLd;
    bf16* y2 = y1 + kFaCols * kFaLd;
    if (kKeys) {
      const int head = g * group + t / perHead, first = (tileBegin + t % perHead) * kFaCols;
      faLoadRows<kFaCols>(y1, a.q, a.qStride, rowBase, first, a.seqLen, head * kHeadDim);
      faLoadRows<kFaCols>(y2, dout, outStride, rowBase, first, a.seqLen, head * kHeadDim);
      if (threadIdx.x < 2 * kFaCols) {
        const int i = first + (threadIdx.x & (kFaCols - 1));
        const float* src = (threadIdx.x < kFaCols ? lse : rowDot) + (static_cast<int64_t>(b) * a.numHeads + head) * a.seqLen;
        cpAsync4(sStat + stage * 2 * kFaCols + threadIdx.x, i < a.seqLen ? src + i : src, i < a.seqLen);
      }
    } else {
      const int first = (tileBegin + t) * kFaCols;
      faLoadRows<kFaCols>(y1, a.k, a.kStride, rowBase, first, a.seqLen, g * kHeadDim);
      faLoadRows<kFaCols>(y2, a.v, a.vStride, rowBase, first, a.seqLen, g * kHeadDim);
    }
    cpAsyncCommit();
  };
  loadStage(0, 0);

  const int r0 = blk0 + warp * 16, rowA = r0 + gq, rowB = rowA + 8;
  const bool warpLive = r0 < a.seqLen && r0 + 15 >= firstValid;
  const float scaleLog2 = a.scale * kLog2e;
  const int bRow = lane & 7, bCol = (lane >> 3) * 8;
  const int tRow = (lane & 7) + ((lane >> 3) & 1) * 8, tCol = (lane >> 4) * 8;
  // dQ: this lane's two rows' lse (log2 units) and rowDot. Masked rows read lse 0 and are zeroed at the store.
  float rowLse[2] = {0.f, 0.f}, rowD[2] = {0.f, 0.f};
  if (!kKeys) {
    const int64_t stat = (static_cast<int64_t>(b) * a.numHeads + hx) * a.seqLen;
    if (rowA < a.seqLen) rowLse[0] = lse[stat + rowA] * kLog2e, rowD[0] = rowDot[stat + rowA];
    if (rowB < a.seqLen) rowLse[1] = lse[stat + rowB] * kLog2e, rowD[1] = rowDot[stat + rowB];
  }
  uint32_t x1f[4][4], x2f[4][4];
  float acc1[8][4], acc2[8][4];  // dK | dQ, dV (dK/dV only)
#pragma unroll
  for (int nd = 0; nd < 8; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc1[nd][e] = acc2[nd][e] = 0.f;
  }

  for (int t = 0; t < nTiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < nTiles) {
      loadStage(stage ^ 1, t + 1);
      cpAsyncWait<1>();
    } else {
      cpAsyncWait<0>();
    }
    __syncthreads();
    if (t == 0) {
      faLoadOwn(x1f, sX1 + warp * 16 * kFaLd, lane);
      faLoadOwn(x2f, sX2 + warp * 16 * kFaLd, lane);
    }
    const int first = (tileBegin + (kKeys ? t % perHead : t)) * kFaCols;
    // Causal, in 16-row units: keys see queries at or after them; queries see keys at or before them.
    const bool tileLive = kKeys ? first + kFaCols > r0 : first <= r0;
    if (warpLive && tileLive) {
      const bf16* y1 = sY + stage * 2 * kFaCols * kFaLd;
      const bf16* y2 = y1 + kFaCols * kFaLd;
      const float* stLse = sStat + stage * 2 * kFaCols;
      const float* stD = stLse + kFaCols;
      const uint32_t bitsLo = bits[first >> 5], bitsHi = bits[(first >> 5) + 1];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int y0 = first + 16 * c;
        const uint32_t cb = ((c < 2 ? bitsLo : bitsHi) >> ((c & 1) * 16)) & 0xffffu;  // chunk's valid rows
        if ((kKeys ? y0 < r0 : y0 > r0) || cb == 0) continue;
        const bool needMask = y0 == r0 || cb != 0xffffu;
        float s[2][4], dp[2][4];
#pragma unroll
        for (int n2 = 0; n2 < 2; ++n2) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[n2][e] = dp[n2][e] = 0.f;
#pragma unroll
          for (int kp = 0; kp < 2; ++kp) {
            uint32_t r[4];
            ldsm4(r, y1 + (16 * c + n2 * 8 + bRow) * kFaLd + kp * 32 + bCol);
            mma16816(s[n2], x1f[2 * kp], r[0], r[1]);
            mma16816(s[n2], x1f[2 * kp + 1], r[2], r[3]);
            ldsm4(r, y2 + (16 * c + n2 * 8 + bRow) * kFaLd + kp * 32 + bCol);
            mma16816(dp[n2], x2f[2 * kp], r[0], r[1]);
            mma16816(dp[n2], x2f[2 * kp + 1], r[2], r[3]);
          }
        }
        // P and dS in place of S and dP. Element e of n-tile n2: own row e < 2 ? rowA : rowB, streamed row
        // y0 + n2 * 8 + 2 tq + (e & 1).
#pragma unroll
        for (int n2 = 0; n2 < 2; ++n2) {
          const int cc = n2 * 8 + tq * 2;  // column within the chunk for e & 1 == 0
          float2 colLse = make_float2(0.f, 0.f), colD = make_float2(0.f, 0.f);
          if (kKeys) {
            colLse = *reinterpret_cast<const float2*>(stLse + 16 * c + cc);
            colD = *reinterpret_cast<const float2*>(stD + 16 * c + cc);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float l2 = kKeys ? ((e & 1) ? colLse.y : colLse.x) * kLog2e : rowLse[e >> 1];
            const float dd = kKeys ? ((e & 1) ? colD.y : colD.x) : rowD[e >> 1];
            float p = fastExp2(fmaf(s[n2][e], scaleLog2, -l2));
            float ds = p * (dp[n2][e] - dd);
            if (needMask) {
              const int col = cc + (e & 1), y = y0 + col, own = e < 2 ? rowA : rowB;
              const bool ok = ((cb >> col) & 1u) && (kKeys ? y >= own : y <= own);
              if (!ok) p = ds = 0.f;
            }
            s[n2][e] = p;
            dp[n2][e] = ds;
          }
        }
        const uint32_t pa[4] = {packBf16(s[0][0], s[0][1]), packBf16(s[0][2], s[0][3]), packBf16(s[1][0], s[1][1]),
                                packBf16(s[1][2], s[1][3])};
        const uint32_t da[4] = {packBf16(dp[0][0], dp[0][1]), packBf16(dp[0][2], dp[0][3]),
                                packBf16(dp[1][0], dp[1][1]), packBf16(dp[1][2], dp[1][3])};
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t r[4];
          ldsm4t(r, y1 + (16 * c + tRow) * kFaLd + np * 16 + tCol);
          mma16816(acc1[2 * np], da, r[0], r[1]);  // dK += dS^T Q  |  dQ += dS K
          mma16816(acc1[2 * np + 1], da, r[2], r[3]);
          if (kKeys) {
            ldsm4t(r, y2 + (16 * c + tRow) * kFaLd + np * 16 + tCol);
            mma16816(acc2[2 * np], pa, r[0], r[1]);  // dV += P^T dO
            mma16816(acc2[2 * np + 1], pa, r[2], r[3]);
          }
        }
      }
    }
    __syncthreads();
  }

  const bool validA = rowA < a.seqLen && faBit(bits, rowA), validB = rowB < a.seqLen && faBit(bits, rowB);
  const float fA = validA ? a.scale : 0.f, fB = validB ? a.scale : 0.f;
  faStoreOwn(acc1, fA, fB, sX1 + warp * 16 * kFaLd, grad1, grad1Stride, rowBase, r0, a.seqLen, ownCol, lane);
  if (kKeys)
    faStoreOwn(acc2, validA ? 1.f : 0.f, validB ? 1.f : 0.f, sX2 + warp * 16 * kFaLd, grad2, grad2Stride, rowBase,
               r0, a.seqLen, ownCol, lane);
}

// WEBGRPO_CUDA_ATTENTION_TC (read once per process): unset or "fa" = the kernels above; "fa1" = the same with the
// dK/dV kernel at one block per SM and no register cap; "wmma" = the WMMA kernels.
enum class TcChoice { Fa, Fa1, Wmma };
TcChoice tcChoice() {
  static const TcChoice choice = [] {
    const char* v = std::getenv("WEBGRPO_CUDA_ATTENTION_TC");
    const std::string s = v == nullptr ? "" : v;
    return s == "wmma" ? TcChoice::Wmma : s == "fa1" ? TcChoice::Fa1 : TcChoice::Fa;
  }();
  return choice;
}
bool useWmmaAttention() { return tcChoice() == TcChoice::Wmma; }

void enableFaSmem() {
  static std::once_flag once;
  std::call_once(once, [] {
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionForwardFaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       kFaFwdSmem + kFaMaxBitsBytes));
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionBackwardFaKernel<true, 2>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kFaBwdSmem + kFaMaxBitsBytes));
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionBackwardFaKernel<true, 1>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kFaBwdSmem + kFaMaxBitsBytes));
    WG_CUDA_CHECK(cudaFuncSetAttribute(attentionBackwardFaKernel<false, 2>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kFaBwdSmem + kFaMaxBitsBytes));
  });
}

}  // namespace

void attentionForward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                      int64_t vStride, const uint8_t* mask, bf16* out, float* lse, const AttentionShape& shape,
                      cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionForward");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  if (useWmmaAttention() || shape.seqLen > kFaMaxSeqLen) {
    enableTcSmem();
    dim3 grid(ceilDiv(shape.seqLen, kTcRows), shape.numHeads, shape.batch);
    attentionForwardTcKernel<<<grid, kTcWarps * 32, kForwardTcSmem, stream>>>(a, out, lse);
    WG_LAUNCH_CHECK(attentionForwardTcKernel);
    return;
  }
  enableFaSmem();
  const int smemBytes = kFaFwdSmem + faBitWords(shape.seqLen) * 4;
  dim3 grid(shape.numHeads, shape.batch, ceilDiv(shape.seqLen, kFaRows));
  attentionForwardFaKernel<<<grid, kFaThreads, smemBytes, stream>>>(a, out, lse);
  WG_LAUNCH_CHECK(attentionForwardFaKernel);
}

void attentionBackward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                       int64_t vStride, const uint8_t* mask, const bf16* out, const bf16* dout, const float* lse,
                       bf16* dq, int64_t dqStride, bf16* dk, int64_t dkStride, bf16* dv, int64_t dvStride,
                       float* rowDot, const AttentionShape& shape, cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionBackward");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  const int64_t rows = static_cast<int64_t>(shape.batch) * shape.numHeads * shape.seqLen;
  if (useWmmaAttention() || shape.seqLen > kFaMaxSeqLen) {
    enableTcSmem();
    attentionRowDotKernel<<<ceilDiv(rows * 32, 256), 256, 0, stream>>>(out, dout, rowDot, shape.batch, shape.seqLen,
                                                                       shape.numHeads);
    WG_LAUNCH_CHECK(attentionRowDotKernel);
    dim3 queryGrid(ceilDiv(shape.seqLen, kTcRows), shape.numHeads, shape.batch);
    attentionBackwardQueryTcKernel<<<queryGrid, kTcWarps * 32, kQueryTcSmem, stream>>>(a, dout, lse, rowDot, dq,
                                                                                       dqStride);
    WG_LAUNCH_CHECK(attentionBackwardQueryTcKernel);
    dim3 keyGrid(ceilDiv(shape.seqLen, kTcRows), shape.numKvHeads, shape.batch);
    attentionBackwardKeyTcKernel<<<keyGrid, kTcWarps * 32, kKeyTcSmem, stream>>>(a, dout, lse, rowDot, dk, dkStride,
                                                                                 dv, dvStride);
    WG_LAUNCH_CHECK(attentionBackwardKeyTcKernel);
    return;
  }
  enableFaSmem();
  attentionRowDotFaKernel<<<ceilDiv(rows * 8, 256), 256, 0, stream>>>(out, dout, rowDot, rows, shape.seqLen,
                                                                      shape.numHeads);
  WG_LAUNCH_CHECK(attentionRowDotFaKernel);
  const int smemBytes = kFaBwdSmem + faBitWords(shape.seqLen) * 4;
  const unsigned blocks = ceilDiv(shape.seqLen, kFaRows);
  const dim3 keyGrid(shape.numKvHeads, shape.batch, blocks), queryGrid(shape.numHeads, shape.batch, blocks);
  if (tcChoice() == TcChoice::Fa1)
    attentionBackwardFaKernel<true, 1><<<keyGrid, kFaThreads, smemBytes, stream>>>(a, dout, lse, rowDot, dk, dkStride,
                                                                                   dv, dvStride);
  else
    attentionBackwardFaKernel<true, 2><<<keyGrid, kFaThreads, smemBytes, stream>>>(a, dout, lse, rowDot, dk, dkStride,
                                                                                   dv, dvStride);
  WG_LAUNCH_CHECK(attentionBackwardFaKernel);
  attentionBackwardFaKernel<false, 2><<<queryGrid, kFaThreads, smemBytes, stream>>>(a, dout, lse, rowDot, dq, dqStride,
                                                                                    nullptr, 0);
  WG_LAUNCH_CHECK(attentionBackwardFaKernel);
}

}  // namespace webgrpo::cuda
