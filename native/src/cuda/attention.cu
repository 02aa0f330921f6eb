// Causal grouped-query attention over left-padded sequences, forward and backward, flash-style: keys and values
// stream through shared memory in tiles with an online softmax, so no [T x T] score matrix is ever stored.
// Two versions: attentionForward/Backward run on the tensor cores (WMMA, bottom of this file); the *Simt twins
// (CUDA cores, one thread per query or key row) are the simple reference they were checked against.
// TODO(perf): wgmma (sm_90a) with TMA-fed tiles; the WMMA version keeps score tiles in shared memory.
#include <mma.h>

#include <mutex>

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

void attentionForward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                      int64_t vStride, const uint8_t* mask, bf16* out, float* lse, const AttentionShape& shape,
                      cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionForward");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  enableTcSmem();
  dim3 grid(ceilDiv(shape.seqLen, kTcRows), shape.numHeads, shape.batch);
  attentionForwardTcKernel<<<grid, kTcWarps * 32, kForwardTcSmem, stream>>>(a, out, lse);
  WG_LAUNCH_CHECK(attentionForwardTcKernel);
}

void attentionBackward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                       int64_t vStride, const uint8_t* mask, const bf16* out, const bf16* dout, const float* lse,
                       bf16* dq, int64_t dqStride, bf16* dk, int64_t dkStride, bf16* dv, int64_t dvStride,
                       float* rowDot, const AttentionShape& shape, cudaStream_t stream) {
  const AttnArgs a = makeArgs(q, qStride, k, kStride, v, vStride, mask, shape, "attentionBackward");
  if (shape.batch == 0 || shape.seqLen == 0) return;
  enableTcSmem();
  const int64_t rows = static_cast<int64_t>(shape.batch) * shape.numHeads * shape.seqLen;
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
}

}  // namespace webgrpo::cuda
