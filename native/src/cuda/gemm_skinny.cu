// Skinny matrix product for the decode step: Y[M,N] = X[M,K] · W[N,K]^T with few rows M (gemm_skinny.h).
//
// Design. The product is a stream over W (M << the N x K weight), so everything serves reading W once at full
// bandwidth:
//  * W goes from global memory straight into registers: each thread issues 16-byte loads (8 consecutive k of
//    one W row; ld.global.nc.L1::no_allocate), two iterations ahead (register double buffer), no shared memory.
//  * X (the CTA's K slice of up to 64 rows) is staged once per CTA in shared memory with cp.async; W's first two
//    iterations are already in flight while it arrives.
//  * The math runs on the tensor cores: mma.sync.m16n8k16 bf16 -> fp32 with W as the A operand (16 W rows on the
//    16-wide side) and X^T as the B operand (8 X rows on the 8-wide side). M = 1..8 uses one 8-column tile
//    (wasted columns cost tensor-core time only, which is idle here anyway).
//  * Work split: a warp owns 32 W rows (two 16-row tiles) and a K range; a CTA has warpsN warps over N and
//    warpsK warps over K (summed through shared memory in fixed order); splits CTAs over K write fp32 partials
//    to the workspace, summed in fixed order by skinnySplitReduceKernel. No atomics: bit-identical reruns.
//  * A plan (warpsN, warpsK, splits) is picked per (M, N, K) by a small cost model (HBM, L2, per-SM and latency
//    terms); skinnyGemmPlan() reports it and SkinnyConfig forces one (bench/kernels/check_skinny --sweep).
//
// Fragment layout relied upon (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16; lane = 4*g + t,
// g = lane/4 in 0..7, t = lane%4 in 0..3; each .b32 register holds two bf16, the lower index in the low half):
//   A (16x16, row-major):  a[0] = A[g  ][2t..2t+1]   a[1] = A[g+8][2t..2t+1]
//                          a[2] = A[g  ][2t+8..2t+9] a[3] = A[g+8][2t+8..2t+9]
//   B (16x8, "col"):       b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   C/D (16x8, fp32):      c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
// K is a reduction index, so any permutation of it applied identically to A and B leaves the product unchanged.
// The permutation used: thread t's four logical k of an mma {2t, 2t+1, 2t+8, 2t+9} are the four consecutive
// physical k {c, c+1, c+2, c+3} where c = (start of this thread's 16-byte chunk) + 4h, h = 0/1 for the chunk's
// two halves. It depends on t and the logical k only, and A and B use it alike: so with a thread's 16-byte load
// w (row r, k = c0..c0+7) and x (X row m, the same k) as uint4s:
//   mma h=0: a = {w_r.x, w_{r+8}.x, w_r.y, w_{r+8}.y}, b = {x.x, x.y}
//   mma h=1: a = {w_r.z, w_{r+8}.z, w_r.w, w_{r+8}.w}, b = {x.z, x.w}
// with A row i = W row (tile base + i) and B column j = X row (chunk base + j); so C[i][j] = Y[m = base + j]
// [n = base + i]: c[0] -> (n = g, m = 2t), c[1] -> (g, 2t+1), c[2] -> (g+8, 2t), c[3] -> (g+8, 2t+1).
//
// X in shared memory: row r of the CTA's slice at r * xsStride elements, xsStride*2 bytes = 64 (mod 128), so the
// 16-byte fragment reads of a quarter warp (two rows g, four chunks t) hit eight distinct 16-byte bank groups.
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "gemm_skinny.h"

namespace webgrpo::cuda {

namespace {

constexpr int kTilesPerWarp = 2;                 // 16-row mma tiles of W per warp
constexpr int kWarpRows = 16 * kTilesPerWarp;    // 32 W rows per warp
constexpr int kChunksPerIter = 2;                // 16-byte chunks per row per thread per iteration
constexpr int kIterK = 32 * kChunksPerIter;      // 64 k per iteration (a warp covers 32 k per chunk)
constexpr int kMaxWarps = 8;                     // warps per CTA
constexpr int kXsPad = 32;                       // elements of padding per X row in shared memory (64 bytes)

struct SkinnyParams {
  int M, N, K;
  const bf16* X;
  int64_t ldx;
  const bf16* W;
  int64_t ldw;
  void* Y;              // the output, or the split-K partials [splits][M][N] fp32
  int64_t ldy;
  int64_t splitStride;  // elements between partials of consecutive splits (M*N), 0 without split-K
  int yF32;
  int warpsN, warpsK;
  int iters;            // ceil(K / kIterK)
  int splits;
  int xsStride;         // elements per X row in shared memory
};

// 16 bytes of W, streamed: not kept in L1 (read once), 256-byte L2 prefetch (the warp reads the rest of the
// row next). Zero where !ok (rows past N, k past the CTA's range).
__device__ __forceinline__ uint4 loadStream16(const bf16* p, bool ok) {
  uint4 r = make_uint4(0u, 0u, 0u, 0u);
  if (ok)
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  return r;
}

// 16 bytes global -> shared, asynchronous; zero-filled where !ok (src-size 0 reads nothing).
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, bool ok) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int bytes = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
}

__device__ __forceinline__ void cpAsyncWaitAll() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// D = A(16x16 bf16) * B(16x8 bf16) + D, fp32 accumulators (layouts in the header comment).
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

using WBuffer = uint4[kTilesPerWarp][2][kChunksPerIter];  // [tile][row g / g+8][chunk]

// One iteration of this warp's W: rowPtr already points at (row, warp's first k + 8t); it = iteration index
// within the warp's range; kAbs = the absolute k of this thread's first chunk of iteration 0.
__device__ __forceinline__ void loadIteration(WBuffer& buf, const bf16* const (&rowPtr)[kTilesPerWarp][2],
                                              const bool (&rowOk)[kTilesPerWarp][2], int it, int kAbs, int kEnd) {
#pragma unroll
  for (int j = 0; j < kChunksPerIter; ++j) {
    const int offset = it * kIterK + 32 * j;
    const bool kOk = kAbs + offset < kEnd;
#pragma unroll
    for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) buf[nt][h][j] = loadStream16(rowPtr[nt][h] + offset, rowOk[nt][h] && kOk);
  }
}

// The mmas of one iteration: x points at this lane's X fragment (row g of the chunk, the iteration's first k
// + 8t) in shared memory.
template <int MT>
__device__ __forceinline__ void mmaIteration(float (&acc)[kTilesPerWarp][MT][4], const WBuffer& buf, const bf16* x,
                                             int xsStride) {
#pragma unroll
  for (int j = 0; j < kChunksPerIter; ++j)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const uint4 xf = *reinterpret_cast<const uint4*>(x + mt * 8 * xsStride + 32 * j);
#pragma unroll
      for (int nt = 0; nt < kTilesPerWarp; ++nt) {
        const uint4& w0 = buf[nt][0][j];  // row g of the tile
        const uint4& w1 = buf[nt][1][j];  // row g + 8
        mma16816(acc[nt][mt], w0.x, w1.x, w0.y, w1.y, xf.x, xf.y);
        mma16816(acc[nt][mt], w0.z, w1.z, w0.w, w1.w, xf.z, xf.w);
      }
    }
}

// grid (mChunks, ceil(N / (32 warpsN)), splits), block 32 * warpsN * warpsK; MT = X rows per CTA / 8.
template <int MT>
__global__ void __launch_bounds__(32 * kMaxWarps, 1) skinnyGemmKernel(const SkinnyParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wn = warp % p.warpsN, wk = warp / p.warpsN;
  const int mBase = blockIdx.x * (8 * MT);
  const int nWarp = (blockIdx.y * p.warpsN + wn) * kWarpRows;
  const int split = blockIdx.z;
  // Balanced partitions: split s takes iterations [s*iters/splits, (s+1)*iters/splits) of the whole K, warp wk
  // the same share of its CTA's iterations.
  const int ctaItBeg = static_cast<int>(int64_t(split) * p.iters / p.splits);
  const int ctaItEnd = static_cast<int>(int64_t(split + 1) * p.iters / p.splits);
  const int ctaIters = ctaItEnd - ctaItBeg;
  const int kBeg = ctaItBeg * kIterK;
  const int kEnd = min(p.K, ctaItEnd * kIterK);
  const int warpItBeg = wk * ctaIters / p.warpsK;
  const int nIter = (wk + 1) * ctaIters / p.warpsK - warpItBeg;

  // This lane's W rows: tile nt, row g (h = 0) and g + 8 (h = 1); pointers at the warp's first k + 8t.
  const int kThread = kBeg + warpItBeg * kIterK + 8 * t;
  const bf16* rowPtr[kTilesPerWarp][2];
  bool rowOk[kTilesPerWarp][2];
#pragma unroll
  for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = nWarp + 16 * nt + 8 * h + g;
      rowOk[nt][h] = n < p.N;
      rowPtr[nt][h] = p.W + int64_t(rowOk[nt][h] ? n : 0) * p.ldw + kThread;
    }

  // The first two iterations of W go out before X is staged.
  WBuffer bufA, bufB;
  if (nIter > 0) loadIteration(bufA, rowPtr, rowOk, 0, kThread, kEnd);
  if (nIter > 1) loadIteration(bufB, rowPtr, rowOk, 1, kThread, kEnd);

  // X[mBase .. mBase + 8MT) x [kBeg, kBeg + ctaIters*kIterK) -> shared memory, zero outside [0,M) x [0,kEnd).
  {
    const int chunksPerRow = ctaIters * (kIterK / 8);
    const int total = 8 * MT * chunksPerRow;
    for (int c = threadIdx.x; c < total; c += blockDim.x) {
      const int r = c / chunksPerRow, col = (c - r * chunksPerRow) * 8;
      const int m = mBase + r, k = kBeg + col;
      const bool ok = m < p.M && k < kEnd;
      cpAsync16(xs + r * p.xsStride + col, ok ? p.X + int64_t(m) * p.ldx + k : p.X, ok);
    }
    cpAsyncWaitAll();
    __syncthreads();
  }

  float acc[kTilesPerWarp][MT][4];
#pragma unroll
  for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][mt][e] = 0.f;

  const bf16* xLane = xs + g * p.xsStride + warpItBeg * kIterK + 8 * t;
  for (int it = 0; it < nIter; it += 2) {
    mmaIteration<MT>(acc, bufA, xLane + it * kIterK, p.xsStride);
    if (it + 2 < nIter) loadIteration(bufA, rowPtr, rowOk, it + 2, kThread, kEnd);
    if (it + 1 < nIter) {
      mmaIteration<MT>(acc, bufB, xLane + (it + 1) * kIterK, p.xsStride);
      if (it + 3 < nIter) loadIteration(bufB, rowPtr, rowOk, it + 3, kThread, kEnd);
    }
  }
  // A dependent kernel launched with programmatic dependent launch (the split-K reduction) may start now; it
  // still waits for this grid's completion (griddepcontrol.wait) before reading.
  pdlLaunchDependents();

  // Warps splitting K within the CTA: warps wk > 0 hand their sums to warp wk = 0 of the same column, which adds
  // them in order wk = 1, 2, ... (fixed order: deterministic). The X buffer is reused.
  constexpr int kAcc = kTilesPerWarp * MT * 4;
  if (p.warpsK > 1) {
    __syncthreads();  // every warp is done with xs
    float* red = reinterpret_cast<float*>(smem);
    if (wk > 0) {
      float* dst = red + int64_t((wk - 1) * p.warpsN + wn) * kAcc * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) dst[((nt * MT + mt) * 4 + e) * 32] = acc[nt][mt][e];
    }
    __syncthreads();
    if (wk > 0) return;
    for (int w = 1; w < p.warpsK; ++w) {
      const float* src = red + int64_t((w - 1) * p.warpsN + wn) * kAcc * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][mt][e] += src[((nt * MT + mt) * 4 + e) * 32];
    }
  }

  // c[e] -> n = tile row g (+8 for e >= 2), m = chunk column 2t (+1 for odd e).
#pragma unroll
  for (int nt = 0; nt < kTilesPerWarp; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = nWarp + 16 * nt + g + (e >= 2 ? 8 : 0);
        const int m = mBase + 8 * mt + 2 * t + (e & 1);
        if (n >= p.N || m >= p.M) continue;
        const int64_t at = int64_t(m) * p.ldy + n;
        if (p.yF32)
          static_cast<float*>(p.Y)[split * p.splitStride + at] = acc[nt][mt][e];
        else
          static_cast<bf16*>(p.Y)[at] = toBf16(acc[nt][mt][e]);
      }
}

// Y[m, n] = sum over s = 0, 1, ... of partials[s][m][n] (fixed order). One thread per 4 consecutive n of a row;
// vector loads where N % 4 == 0 (rows of the partials then stay 16-byte aligned).
__global__ void skinnySplitReduceKernel(const float* __restrict__ partials, int splits, int M, int N, void* Y,
                                        int yF32, int64_t ldy) {
  // Launched with programmatic dependent launch: wait until the product's grid has completed and its partials
  // are visible (a no-op when launched without it).
  pdlWait();
  const int groups = (N + 3) / 4;
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= int64_t(M) * groups) return;
  const int m = static_cast<int>(index / groups);
  const int n0 = static_cast<int>(index - int64_t(m) * groups) * 4;
  const int64_t stride = int64_t(M) * N;
  const float* src = partials + int64_t(m) * N + n0;
  float sum[4];
  if ((N & 3) == 0) {
    float4 v = *reinterpret_cast<const float4*>(src);
    for (int s = 1; s < splits; ++s) {
      const float4 u = *reinterpret_cast<const float4*>(src + s * stride);
      v.x += u.x;
      v.y += u.y;
      v.z += u.z;
      v.w += u.w;
    }
    sum[0] = v.x, sum[1] = v.y, sum[2] = v.z, sum[3] = v.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      sum[e] = 0.f;
      if (n0 + e >= N) continue;
      float v = src[e];
      for (int s = 1; s < splits; ++s) v += src[s * stride + e];
      sum[e] = v;
    }
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (n0 + e >= N) break;
    const int64_t at = int64_t(m) * ldy + n0 + e;
    if (yF32)
      static_cast<float*>(Y)[at] = sum[e];
    else
      static_cast<bf16*>(Y)[at] = toBf16(sum[e]);
  }
}

// ---- plans --------------------------------------------------------------------------------------------------
constexpr int kMtCount = 4;  // MT in {1, 2, 4, 8}
int mtIndex(int mt) { return mt == 1 ? 0 : mt == 2 ? 1 : mt == 4 ? 2 : 3; }
int mtFor(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

struct Limits {
  int sms = 132;
  int regsPerSm = 65536;
  int smemPerSm = 233472;      // usable shared memory per SM (bytes)
  int smemOptin = 232448;      // per CTA, after cudaFuncSetAttribute
  int reservedSmem = 1024;     // per CTA, kept by the runtime
  int maxThreadsPerSm = 2048;
  int regs[kMtCount] = {114, 126, 144, 194};  // registers per thread of each instantiation (read off the device)
};

template <int MT>
void readKernel(Limits& limits) {
  cudaFuncAttributes attributes{};
  WG_CUDA_CHECK(cudaFuncGetAttributes(&attributes, skinnyGemmKernel<MT>));
  limits.regs[mtIndex(MT)] = attributes.numRegs;
  WG_CUDA_CHECK(cudaFuncSetAttribute(skinnyGemmKernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     limits.smemOptin - static_cast<int>(attributes.sharedSizeBytes)));
}

// Per device, read once (also raises the kernels' dynamic shared-memory limit there).
const Limits& deviceLimits() {
  static std::mutex mutex;
  static std::map<int, Limits> byDevice;
  int device = 0;
  WG_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  auto found = byDevice.find(device);
  if (found != byDevice.end()) return found->second;
  Limits limits;
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.sms, cudaDevAttrMultiProcessorCount, device));
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.regsPerSm, cudaDevAttrMaxRegistersPerMultiprocessor, device));
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.smemPerSm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.smemOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.reservedSmem, cudaDevAttrReservedSharedMemoryPerBlock, device));
  WG_CUDA_CHECK(cudaDeviceGetAttribute(&limits.maxThreadsPerSm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  readKernel<1>(limits);
  readKernel<2>(limits);
  readKernel<4>(limits);
  readKernel<8>(limits);
  return byDevice.emplace(device, limits).first->second;
}

struct Plan {
  int mt = 1, mChunks = 1, warpsN = 1, warpsK = 1, splits = 1, iters = 1, xsStride = 0;
  int nTiles = 1;
  size_t smem = 0, workspace = 0;
  double us = 0;
  int ctas() const { return mChunks * nTiles * splits; }
};

// Cost model constants (leads to be checked against measurements: bench/kernels/check_skinny --sweep).
constexpr double kHbmBytesPerUs = 4.2e6;   // achievable HBM read bandwidth (H200: ~4.3 TB/s copy)
constexpr double kL2BytesPerUs = 9.0e6;    // L2 -> SM, whole chip
constexpr double kSmBytesPerUs = 1.2e5;    // L2 -> one SM (~64 B/clk)
constexpr double kLatencyUs = 1.0;         // a load's round trip under load (bytes in flight / latency)
constexpr double kFixedUs = 0.8;           // the kernel's fixed cost (launch, first round trip, X staging)
constexpr double kWaveUs = 0.3;            // each further wave of CTAs (its prologue is not hidden)
constexpr double kMmaPerUsPerSm = 550.0;   // mma.sync m16n8k16 per us per SM (~0.28 per clock)
constexpr double kReduceUs = 0.8;          // the split-K reduction kernel's own fixed cost

double estimateUs(const Limits& limits, const Plan& p, int M, int N, int K) {
  const int warps = p.warpsN * p.warpsK, threads = 32 * warps;
  const int regs = (limits.regs[mtIndex(p.mt)] + 7) / 8 * 8;
  const int warpRegs = (regs * 32 + 255) / 256 * 256;
  const int occupancy = std::min({limits.regsPerSm / warpRegs / warps, limits.maxThreadsPerSm / threads,
                                  static_cast<int>(limits.smemPerSm / (p.smem + limits.reservedSmem)), 32});
  if (occupancy < 1) return 1e30;
  const double ctas = p.ctas(), sms = limits.sms;
  const double w = 2.0 * N * K, x = 2.0 * M * K * p.nTiles, y = 2.0 * M * N;
  const double partials = p.splits > 1 ? 4.0 * p.splits * M * N : 0.0;
  const double hbm = (w + y) / kHbmBytesPerUs;
  const double l2 = (w + x + 2 * partials + y) / kL2BytesPerUs;
  const double busiestSm = std::ceil(ctas / sms) * (w + x + (p.splits > 1 ? partials : y)) / ctas / kSmBytesPerUs;
  const double warpIters = double(p.iters) / (p.splits * p.warpsK);
  const double inFlight = std::min(ctas, sms * occupancy) * warps * std::min(2.0, std::max(1.0, warpIters)) *
                          (kWarpRows * kIterK * 2.0);
  const double latency = w * kLatencyUs / inFlight;
  const double mmas = double(p.mChunks) * p.mt * std::ceil(N / 16.0) * std::ceil(K / 16.0);
  const double math = mmas / (std::min(ctas, sms) * kMmaPerUsPerSm);
  // The terms overlap, but not perfectly: the largest counts whole, the others a fifth (this also breaks ties
  // towards plans better on every count).
  const double terms[] = {hbm, l2, busiestSm, latency, math};
  double largest = 0, sum = 0;
  for (double term : terms) largest = std::max(largest, term), sum += term;
  const double waves = std::ceil(ctas / (sms * occupancy));
  double us = largest + 0.2 * (sum - largest) + kFixedUs + kWaveUs * (waves - 1);
  if (p.splits > 1) us += kReduceUs + partials / kL2BytesPerUs;
  return us;
}

size_t xsBytes(int mt, int iters, int splits, int* stride) {
  const int maxIters = (iters + splits - 1) / splits;
  const int s = maxIters * kIterK + kXsPad;
  if (stride) *stride = s;
  return size_t(8 * mt) * s * sizeof(bf16);
}

// A runnable plan from the requested fields (each >= 1), corrected where it could not run.
Plan resolve(const Limits& limits, int M, int N, int K, int warpsN, int warpsK, int splits) {
  Plan p;
  p.mt = mtFor(M);
  p.mChunks = (M + 8 * p.mt - 1) / (8 * p.mt);
  p.iters = (K + kIterK - 1) / kIterK;
  p.warpsN = std::clamp(warpsN, 1, std::min(kMaxWarps, (N + kWarpRows - 1) / kWarpRows));  // no idle warp columns
  p.splits = std::clamp(splits, 1, p.iters);
  while (p.splits < p.iters && xsBytes(p.mt, p.iters, p.splits, nullptr) + limits.reservedSmem >
                                    size_t(std::min(limits.smemOptin, limits.smemPerSm)))
    ++p.splits;
  const size_t xs = xsBytes(p.mt, p.iters, p.splits, &p.xsStride);
  const int shortestSplit = p.iters / p.splits;
  p.warpsK = std::clamp(warpsK, 1, std::max(1, std::min(kMaxWarps / p.warpsN, shortestSplit)));
  const size_t red = size_t(p.warpsK - 1) * p.warpsN * 32 * kTilesPerWarp * p.mt * 4 * sizeof(float);
  p.smem = std::max(xs, red);
  p.nTiles = (N + kWarpRows * p.warpsN - 1) / (kWarpRows * p.warpsN);
  p.workspace = p.splits > 1 ? size_t(p.splits) * M * N * sizeof(float) : 0;
  p.us = estimateUs(limits, p, M, N, K);
  return p;
}

// The heuristic: every (warpsN, warpsK, splits) through the cost model; the cheapest wins (ties: the first, i.e.
// fewer splits, fewer warps).
Plan choose(const Limits& limits, int M, int N, int K, const SkinnyConfig& config, bool allowSplits) {
  const int iters = (K + kIterK - 1) / kIterK;
  auto candidates = [](int forced, int maxValue) {
    std::vector<int> v;
    if (forced > 0) {
      v.push_back(forced);
      return v;
    }
    for (int i = 1; i <= maxValue; i *= 2) v.push_back(i);
    return v;
  };
  std::vector<int> splitList;
  if (!allowSplits) splitList.push_back(1);
  else if (config.splits > 0) splitList.push_back(config.splits);
  else
    for (int s = 1; s <= std::min(iters, 48); ++s) splitList.push_back(s);
  Plan best;
  bool have = false;
  for (int wn : candidates(config.warpsN, kMaxWarps))
    for (int wk : candidates(config.warpsK, kMaxWarps / std::min(wn, kMaxWarps)))
      for (int s : splitList) {
        if (wn * wk > kMaxWarps) continue;
        const Plan p = resolve(limits, M, N, K, wn, wk, s);
        if (!allowSplits && p.splits > 1) continue;
        if (!have || p.us < best.us) best = p, have = true;
      }
  // Without split-K, X's slice may not fit (very long K with 64 rows): take the corrected plan as is.
  if (!have) best = resolve(limits, M, N, K, std::max(1, config.warpsN), std::max(1, config.warpsK), 1);
  return best;
}

const Plan& cachedPlan(int M, int N, int K, const SkinnyConfig& config, bool allowSplits) {
  const Limits& limits = deviceLimits();
  using Key = std::tuple<const Limits*, int, int, int, int, int, int, bool>;
  static std::mutex mutex;
  static std::map<Key, Plan> plans;
  const Key key{&limits, M, N, K, config.warpsN, config.warpsK, config.splits, allowSplits};
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found != plans.end()) return found->second;
  return plans.emplace(key, choose(limits, M, N, K, config, allowSplits)).first->second;
}

}  // namespace

bool skinnyGemmSupported(int M, int N, int K) {
  return M >= 1 && M <= kSkinnyMaxRows && N >= 1 && K >= 8 && K % 8 == 0;
}

bool skinnyGemmOperandsSupported(const bf16* X, int64_t ldx, const bf16* W, int64_t ldw) {
  return reinterpret_cast<uintptr_t>(X) % 16 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 && ldx % 8 == 0 &&
         ldw % 8 == 0;
}

SkinnyPlanInfo skinnyGemmPlan(int M, int N, int K, const SkinnyConfig& config) {
  require(skinnyGemmSupported(M, N, K), "skinnyGemm: unsupported shape M=" + std::to_string(M) +
                                            " N=" + std::to_string(N) + " K=" + std::to_string(K));
  const Plan& p = cachedPlan(M, N, K, config, true);
  return SkinnyPlanInfo{8 * p.mt, p.mChunks, p.warpsN, p.warpsK, p.splits, p.ctas(), p.smem, p.workspace, p.us};
}

size_t skinnyGemmWorkspaceBytes(int M, int N, int K, const SkinnyConfig& config) {
  if (!skinnyGemmSupported(M, N, K)) return 0;
  return cachedPlan(M, N, K, config, true).workspace;
}

size_t skinnyGemmWorkspaceBytes(int M, int N, int K) { return skinnyGemmWorkspaceBytes(M, N, K, SkinnyConfig{}); }

void skinnyGemm(int M, int N, int K, const bf16* X, int64_t ldx, const bf16* W, int64_t ldw, void* Y, OutType yType,
                int64_t ldy, float* workspace, cudaStream_t stream, const SkinnyConfig& config) {
  require(skinnyGemmSupported(M, N, K), "skinnyGemm: unsupported shape M=" + std::to_string(M) +
                                            " N=" + std::to_string(N) + " K=" + std::to_string(K));
  require(skinnyGemmOperandsSupported(X, ldx, W, ldw),
          "skinnyGemm: X and W must be 16-byte aligned with row strides that are multiples of 8");
  require(ldx >= K && ldw >= K && ldy >= N, "skinnyGemm: leading dimension smaller than the row length");
  require(workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
          "skinnyGemm: workspace must be 16-byte aligned");
  const Plan& p = cachedPlan(M, N, K, config, workspace != nullptr);
  const bool split = p.splits > 1;
  require(!split || workspace != nullptr,
          "skinnyGemm: M=" + std::to_string(M) + " K=" + std::to_string(K) +
              " needs split-K (X's slice would not fit in shared memory): pass a workspace of " +
              std::to_string(skinnyGemmWorkspaceBytes(M, N, K, config)) + " bytes");
  SkinnyParams params;
  params.M = M, params.N = N, params.K = K;
  params.X = X, params.ldx = ldx, params.W = W, params.ldw = ldw;
  params.Y = split ? static_cast<void*>(workspace) : Y;
  params.ldy = split ? N : ldy;
  params.splitStride = split ? int64_t(M) * N : 0;
  params.yF32 = split || yType == OutType::F32;
  params.warpsN = p.warpsN, params.warpsK = p.warpsK;
  params.iters = p.iters, params.splits = p.splits, params.xsStride = p.xsStride;
  const dim3 grid(p.mChunks, p.nTiles, p.splits), block(32 * p.warpsN * p.warpsK);
  switch (p.mt) {
    case 1: skinnyGemmKernel<1><<<grid, block, p.smem, stream>>>(params); break;
    case 2: skinnyGemmKernel<2><<<grid, block, p.smem, stream>>>(params); break;
    case 4: skinnyGemmKernel<4><<<grid, block, p.smem, stream>>>(params); break;
    default: skinnyGemmKernel<8><<<grid, block, p.smem, stream>>>(params); break;
  }
  WG_LAUNCH_CHECK(skinnyGemmKernel);
  if (!split) return;
  const int64_t threads = int64_t(M) * ((N + 3) / 4);
  const float* partials = workspace;
  const int yF32 = yType == OutType::F32;
  launchDependent(skinnySplitReduceKernel, dim3(ceilDiv(threads, 256)), dim3(256), stream, config.pdl, partials,
                  p.splits, M, N, Y, yF32, ldy);
}

void skinnyGemm(int M, int N, int K, const bf16* X, int64_t ldx, const bf16* W, int64_t ldw, void* Y, OutType yType,
                int64_t ldy, float* workspace, cudaStream_t stream) {
  skinnyGemm(M, N, K, X, ldx, W, ldw, Y, yType, ldy, workspace, stream, SkinnyConfig{});
}

}  // namespace webgrpo::cuda
