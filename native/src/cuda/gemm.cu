// Matrix products: cuBLASLt loaded at run time (dlopen), so the addon builds where only nvcc and cudart are
// installed (CI, this project's developer machines) and uses the vendor library where it exists (GPU machines).
// The handful of cuBLASLt declarations below are the library's stable C ABI (enum values as documented by
// NVIDIA). A plain tiled kernel stands in when the library cannot be loaded.
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

// ---- minimal cuBLASLt ABI ------------------------------------------------------------------------------------
using LtStatus = int;  // cublasStatus_t, 0 = success
using LtHandle = void*;
using LtMatmulDesc = void*;
using LtLayout = void*;
using LtPreference = void*;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristicResult {
  LtAlgo algo;
  size_t workspaceSize;
  LtStatus state;
  float wavesCount;
  int reserved[4];
};
constexpr int kComputeF32 = 68;              // CUBLAS_COMPUTE_32F
constexpr int kDescTransA = 3;               // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;               // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kPrefMaxWorkspaceBytes = 1;    // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kPrefMinAlignmentA = 5;        // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES = 5..8
constexpr int kOpN = 0, kOpT = 1;            // CUBLAS_OP_N / CUBLAS_OP_T

struct LtApi {
  LtStatus (*create)(LtHandle*);
  LtStatus (*destroy)(LtHandle);
  LtStatus (*descCreate)(LtMatmulDesc*, int computeType, int scaleType);
  LtStatus (*descDestroy)(LtMatmulDesc);
  LtStatus (*descSetAttribute)(LtMatmulDesc, int attr, const void* buf, size_t size);
  LtStatus (*layoutCreate)(LtLayout*, int dataType, uint64_t rows, uint64_t cols, int64_t ld);
  LtStatus (*layoutDestroy)(LtLayout);
  LtStatus (*prefCreate)(LtPreference*);
  LtStatus (*prefDestroy)(LtPreference);
  LtStatus (*prefSetAttribute)(LtPreference, int attr, const void* buf, size_t size);
  LtStatus (*heuristic)(LtHandle, LtMatmulDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPreference, int requested,
                        LtHeuristicResult* results, int* returned);
  LtStatus (*matmul)(LtHandle, LtMatmulDesc, const void* alpha, const void* A, LtLayout, const void* B, LtLayout,
                     const void* beta, const void* C, LtLayout, void* D, LtLayout, const LtAlgo*, void* workspace,
                     size_t workspaceBytes, cudaStream_t stream);
};

// Loads the library once per process. Returns null and sets `why` when it is not there.
const LtApi* loadCublasLt(std::string* why) {
  static std::once_flag once;
  static LtApi api;
  static bool ok = false;
  static std::string reason;
  std::call_once(once, [] {
    std::vector<std::string> names;
    if (const char* env = std::getenv("WEBGRPO_CUBLASLT")) names.emplace_back(env);
    names.insert(names.end(), {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
    void* lib = nullptr;
    for (const auto& name : names)
      if ((lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) {
      reason = "libcublasLt not found (tried WEBGRPO_CUBLASLT, libcublasLt.so.13/.12; set LD_LIBRARY_PATH)";
      return;
    }
    auto sym = [&](const char* name) -> void* {
      void* p = dlsym(lib, name);
      if (!p && reason.empty()) reason = std::string("libcublasLt lacks ") + name;
      return p;
    };
#define WG_SYM(field, name) api.field = reinterpret_cast<decltype(api.field)>(sym(name))
    WG_SYM(create, "cublasLtCreate");
    WG_SYM(destroy, "cublasLtDestroy");
    WG_SYM(descCreate, "cublasLtMatmulDescCreate");
    WG_SYM(descDestroy, "cublasLtMatmulDescDestroy");
    WG_SYM(descSetAttribute, "cublasLtMatmulDescSetAttribute");
    WG_SYM(layoutCreate, "cublasLtMatrixLayoutCreate");
    WG_SYM(layoutDestroy, "cublasLtMatrixLayoutDestroy");
    WG_SYM(prefCreate, "cublasLtMatmulPreferenceCreate");
    WG_SYM(prefDestroy, "cublasLtMatmulPreferenceDestroy");
    WG_SYM(prefSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
    WG_SYM(heuristic, "cublasLtMatmulAlgoGetHeuristic");
    WG_SYM(matmul, "cublasLtMatmul");
#undef WG_SYM
    ok = reason.empty();
  });
  if (!ok && why) *why = reason;
  return ok ? &api : nullptr;
}

void checkLt(LtStatus status, const char* what) {
  if (status != 0) throw std::runtime_error(std::string("cuBLASLt ") + what + " failed with status " +
                                            std::to_string(status));
}

// ---- fallback: 64x64 output tile per block, 4x4 per thread, fp32 accumulation -------------------------------
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;

__global__ void gemmFallbackKernel(bool transA, bool transB, int M, int N, int K, float alpha,
                                   const bf16* __restrict__ A, int64_t lda, const bf16* __restrict__ B, int64_t ldb,
                                   float beta, void* C, bool cIsF32, int64_t ldc) {
  __shared__ float as[kTileK][kTileM + 1];
  __shared__ float bs[kTileK][kTileN + 1];
  const int row0 = blockIdx.y * kTileM, col0 = blockIdx.x * kTileN;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileK * kTileM; e += blockDim.x) {
      const int kk = e / kTileM, mm = e % kTileM;
      const int m = row0 + mm, k = k0 + kk;
      as[kk][mm] = (m < M && k < K) ? toFloat(transA ? A[k * lda + m] : A[m * lda + k]) : 0.f;
    }
    for (int e = threadIdx.x; e < kTileK * kTileN; e += blockDim.x) {
      const int kk = e / kTileN, nn = e % kTileN;
      const int n = col0 + nn, k = k0 + kk;
      bs[kk][nn] = (n < N && k < K) ? toFloat(transB ? B[n * ldb + k] : B[k * ldb + n]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += as[kk][tr + 16 * i] * bs[kk][tc + 16 * j];
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = row0 + tr + 16 * i, n = col0 + tc + 16 * j;
      if (m >= M || n >= N) continue;
      if (cIsF32) {
        float* c = static_cast<float*>(C) + m * ldc + n;
        *c = alpha * acc[i][j] + (beta != 0.f ? beta * *c : 0.f);
      } else {
        bf16* c = static_cast<bf16*>(C) + m * ldc + n;
        *c = toBf16(alpha * acc[i][j] + (beta != 0.f ? beta * toFloat(*c) : 0.f));
      }
    }
}

// Alignment (bytes, power of two, at most 256) of a pointer: the heuristic must only pick kernels that can run on
// it (by default cuBLASLt assumes 256-byte aligned operands, and offsets into arenas and chunks can break that).
uint32_t alignmentOf(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && address % a != 0) a >>= 1;
  return a;
}

using PlanKey = std::tuple<bool, bool, int, int, int, int64_t, int64_t, int64_t, int, bool, uint32_t, uint32_t,
                           uint32_t>;

struct Plan {
  LtMatmulDesc desc = nullptr;
  LtLayout a = nullptr, b = nullptr, c = nullptr;
  LtAlgo algo{};
};

}  // namespace

struct Gemm::Impl {
  const LtApi* lt = nullptr;
  std::string fallbackReason;
  LtHandle handle = nullptr;
  void* workspace = nullptr;
  size_t workspaceBytes = 0;
  std::map<PlanKey, Plan> plans;
  std::mutex mutex;

  ~Impl() {
    if (lt) {
      for (auto& [key, plan] : plans) {
        lt->layoutDestroy(plan.a);
        lt->layoutDestroy(plan.b);
        lt->layoutDestroy(plan.c);
        lt->descDestroy(plan.desc);
      }
      if (handle) lt->destroy(handle);
    }
    if (workspace) cudaFree(workspace);
  }

  // cuBLAS is column-major: the row-major product C = op(A) op(B) is computed as the column-major
  // C^T = op(B)^T op(A)^T, i.e. with the operands swapped and the same transpose flags.
  // The operands of the call that creates a plan, for timing candidate algorithms on them.
  struct Operands {
    const void *A, *B;
    void* C;
    float alpha;
    cudaStream_t stream;
  };

  const Plan& plan(bool transA, bool transB, int M, int N, int K, int64_t lda, int64_t ldb, int64_t ldc,
                   OutType cType, bool accumulate, uint32_t alignA, uint32_t alignB, uint32_t alignC,
                   const Operands& ops) {
    const PlanKey key{transA, transB, M, N, K, lda, ldb, ldc, static_cast<int>(cType), accumulate, alignA, alignB,
                      alignC};
    auto found = plans.find(key);
    if (found != plans.end()) return found->second;
    Plan p;
    const int bf16Type = CUDA_R_16BF, f32Type = CUDA_R_32F;
    const int cTypeId = cType == OutType::F32 ? f32Type : bf16Type;
    checkLt(lt->descCreate(&p.desc, kComputeF32, f32Type), "MatmulDescCreate");
    const int opA = transB ? kOpT : kOpN, opB = transA ? kOpT : kOpN;
    checkLt(lt->descSetAttribute(p.desc, kDescTransA, &opA, sizeof(opA)), "set TRANSA");
    checkLt(lt->descSetAttribute(p.desc, kDescTransB, &opB, sizeof(opB)), "set TRANSB");
    // Layouts describe the stored (pre-transpose) column-major views.
    checkLt(lt->layoutCreate(&p.a, bf16Type, transB ? K : N, transB ? N : K, ldb), "layout of B");
    checkLt(lt->layoutCreate(&p.b, bf16Type, transA ? M : K, transA ? K : M, lda), "layout of A");
    checkLt(lt->layoutCreate(&p.c, cTypeId, N, M, ldc), "layout of C");
    LtPreference pref = nullptr;
    checkLt(lt->prefCreate(&pref), "PreferenceCreate");
    const uint64_t ws = workspaceBytes;
    checkLt(lt->prefSetAttribute(pref, kPrefMaxWorkspaceBytes, &ws, sizeof(ws)), "set workspace");
    // cuBLAS's A is our B and its B our A (see above); C and D are both our C.
    const uint32_t alignments[4] = {alignB, alignA, alignC, alignC};
    for (int i = 0; i < 4; ++i)
      checkLt(lt->prefSetAttribute(pref, kPrefMinAlignmentA + i, &alignments[i], sizeof(uint32_t)), "set alignment");
    // Products of a few rows (decode steps) are timed over the heuristic's first candidates, once: its first
    // pick is often a tile far too large for them (few CTAs for the whole weight read). Only where C is
    // overwritten (no accumulation to disturb) and the stream is not being captured into a graph.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    WG_CUDA_CHECK(cudaStreamIsCapturing(ops.stream, &capture));
    const bool tune = M <= kTuneMaxRows && !accumulate && capture == cudaStreamCaptureStatusNone;
    LtHeuristicResult results[kTuneCandidates]{};
    int returned = 0;
    const LtStatus status =
        lt->heuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, tune ? kTuneCandidates : 1, results, &returned);
    lt->prefDestroy(pref);
    if (status != 0 || returned == 0)
      throw std::runtime_error("cuBLASLt has no algorithm for gemm M=" + std::to_string(M) + " N=" +
                               std::to_string(N) + " K=" + std::to_string(K));
    p.algo = results[0].algo;
    if (tune && returned > 1) p.algo = fastest(p, results, returned, ops);
    return plans.emplace(key, p).first->second;
  }

  LtAlgo fastest(const Plan& p, const LtHeuristicResult* results, int count, const Operands& ops) {
    cudaEvent_t start = nullptr, stop = nullptr;
    WG_CUDA_CHECK(cudaEventCreate(&start));
    WG_CUDA_CHECK(cudaEventCreate(&stop));
    const float beta = 0.f;
    LtAlgo best = results[0].algo;
    float bestMs = 0;
    bool found = false;
    for (int i = 0; i < count; ++i) {
      auto launch = [&] {
        return lt->matmul(handle, p.desc, &ops.alpha, ops.B, p.a, ops.A, p.b, &beta, ops.C, p.c, ops.C, p.c,
                          &results[i].algo, workspace, workspaceBytes, ops.stream);
      };
      if (launch() != 0) continue;  // a candidate this configuration rejects
      WG_CUDA_CHECK(cudaEventRecord(start, ops.stream));
      for (int r = 0; r < kTuneRepeats; ++r) launch();
      WG_CUDA_CHECK(cudaEventRecord(stop, ops.stream));
      WG_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      WG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (!found || ms < bestMs) {
        best = results[i].algo;
        bestMs = ms;
        found = true;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return best;
  }

  static constexpr int kTuneMaxRows = 256;
  static constexpr int kTuneCandidates = 8;
  static constexpr int kTuneRepeats = 5;
};

Gemm::Gemm(size_t workspaceBytes, bool forceFallback) : impl_(std::make_unique<Impl>()) {
  if (forceFallback) {
    impl_->fallbackReason = "fallback forced";
    return;
  }
  impl_->lt = loadCublasLt(&impl_->fallbackReason);
  if (!impl_->lt) return;
  checkLt(impl_->lt->create(&impl_->handle), "Create");
  impl_->workspaceBytes = workspaceBytes;
  if (workspaceBytes) WG_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspaceBytes));
}

Gemm::~Gemm() = default;

bool Gemm::usesCublasLt() const { return impl_->lt != nullptr; }
const char* Gemm::fallbackReason() const { return impl_->fallbackReason.c_str(); }

void Gemm::run(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A, int64_t lda,
               const bf16* B, int64_t ldb, float beta, void* C, OutType cType, int64_t ldc, cudaStream_t stream) {
  require(M >= 0 && N >= 0 && K >= 0, "gemm: negative dimension");
  require(lda >= (transA ? M : K) && ldb >= (transB ? K : N) && ldc >= N,
          "gemm: leading dimension smaller than the row length (M=" + std::to_string(M) + " N=" + std::to_string(N) +
              " K=" + std::to_string(K) + ")");
  if (M == 0 || N == 0) return;
  if (impl_->lt) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    const Plan& p = impl_->plan(transA, transB, M, N, K, lda, ldb, ldc, cType, beta != 0.f, alignmentOf(A),
                                alignmentOf(B), alignmentOf(C), Impl::Operands{A, B, C, alpha, stream});
    checkLt(impl_->lt->matmul(impl_->handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                              impl_->workspace, impl_->workspaceBytes, stream),
            "Matmul");
    return;
  }
  dim3 grid(ceilDiv(N, kTileN), ceilDiv(M, kTileM));
  gemmFallbackKernel<<<grid, 256, 0, stream>>>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C,
                                               cType == OutType::F32, ldc);
  WG_LAUNCH_CHECK(gemmFallbackKernel);
}

}  // namespace webgrpo::cuda
