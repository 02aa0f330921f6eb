// Bandwidth-bound "skinny" matrix product for the decode step (native/src/cuda/gemm_skinny.cu):
//   Y[M,N] = X[M,K] · W[N,K]^T   (X rows = sequences decoding, W = nn.Linear weight [out, in])
// bf16 X and W, fp32 accumulation on the tensor cores (mma.sync), Y bf16 or fp32. Meant for M <= kSkinnyMaxRows
// (1..64 above all), where the product is a stream over W: W is read once, with 16-byte loads straight into
// registers, X is staged in shared memory. Deterministic (no atomics; split-K partials are summed by a second
// kernel in a fixed order) and capturable in a CUDA graph (no allocation, no host sync, no memset).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace webgrpo::cuda {

constexpr int kSkinnyMaxRows = 256;

// Shapes the kernel handles: 1 <= M <= kSkinnyMaxRows, N >= 1, K >= 8 with K % 8 == 0.
bool skinnyGemmSupported(int M, int N, int K);
// Operand layouts it handles: X and W 16-byte aligned, ldx and ldw multiples of 8 elements (16-byte rows).
// Y needs only its natural alignment (any ldy >= N).
bool skinnyGemmOperandsSupported(const bf16* X, int64_t ldx, const bf16* W, int64_t ldw);
// Workspace (bytes, 16-byte aligned) for the split-K partials of skinnyGemm(M, N, K, ...); 0 when the chosen plan
// does not split K. The plan is a pure function of (M, N, K) and the device, so this matches the call.
size_t skinnyGemmWorkspaceBytes(int M, int N, int K);
// Y[M,N] = X[M,K] · W[N,K]^T (overwrite; no alpha/beta). Rows strided: X[m*ldx + k], W[n*ldw + k], Y[m*ldy + n].
// workspace: skinnyGemmWorkspaceBytes(M, N, K) bytes; null makes the call use a plan without split-K (slower for
// small N), which exists unless K is long for the rows (X's K slice must fit in shared memory: 64 rows x ~1800 k;
// then it throws). Throws std::invalid_argument for unsupported shapes/operands.
void skinnyGemm(int M, int N, int K, const bf16* X, int64_t ldx, const bf16* W, int64_t ldw, void* Y, OutType yType,
                int64_t ldy, float* workspace, cudaStream_t stream);

// ---- tuning and tests ---------------------------------------------------------------------------------------
// A forced plan (0 = the heuristic's choice for that field). Each CTA has warpsN x warpsK warps (<= 8): warpsN
// warps side by side over N (32 rows of W each), warpsK warps splitting the CTA's K range (reduced through shared
// memory). splits: CTAs along K (partials in the workspace, summed by a second kernel). pdl: launch that second
// kernel with programmatic dependent launch (it waits on the first with griddepcontrol.wait).
struct SkinnyConfig {
  int warpsN = 0;
  int warpsK = 0;
  int splits = 0;
  bool pdl = true;
};
struct SkinnyPlanInfo {
  int rowsPerChunk;  // rows of X per CTA (8, 16, 32 or 64); M > 64 runs ceil(M/64) chunks
  int mChunks;
  int warpsN, warpsK, splits;
  int ctas;
  size_t smemBytes;       // dynamic shared memory per CTA
  size_t workspaceBytes;  // split-K partials
  double estimatedUs;     // the heuristic's cost model (a guide, not a measurement)
};
// The plan skinnyGemm would run (config fields left 0 are chosen by the heuristic; values that cannot run are
// corrected: splits raised until X's slice fits in shared memory, warpsK lowered to the iterations available).
SkinnyPlanInfo skinnyGemmPlan(int M, int N, int K, const SkinnyConfig& config = SkinnyConfig{});
size_t skinnyGemmWorkspaceBytes(int M, int N, int K, const SkinnyConfig& config);
void skinnyGemm(int M, int N, int K, const bf16* X, int64_t ldx, const bf16* W, int64_t ldw, void* Y, OutType yType,
                int64_t ldy, float* workspace, cudaStream_t stream, const SkinnyConfig& config);

}  // namespace webgrpo::cuda
