// Shared helpers for the CUDA kernels: error checking, bf16 conversion, warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace webgrpo::cuda {

using bf16 = __nv_bfloat16;

[[noreturn]] inline void throwCudaError(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error '") + cudaGetErrorString(err) + "' in " + what + " (" + file +
                           ":" + std::to_string(line) + ")");
}

#define WG_CUDA_CHECK(expr)                                                             \
  do {                                                                                  \
    cudaError_t wg_err_ = (expr);                                                       \
    if (wg_err_ != cudaSuccess) ::webgrpo::cuda::throwCudaError(wg_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every launch: catches bad launch configurations at once (asynchronous faults show at the next sync).
#define WG_LAUNCH_CHECK(kernelName) WG_CUDA_CHECK(cudaPeekAtLastError())

inline void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

inline unsigned ceilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// ---- programmatic dependent launch (PDL) ------------------------------------------------------------------------
// A primary kernel calls pdlLaunchDependents() once its blocks have started, so that the next kernel, launched by
// launchDependent(), gets its blocks resident early; that kernel calls pdlWait() before reading anything the
// primary wrote (it returns once the primary grid has completed and its writes are visible; a no-op without PDL).
__device__ __forceinline__ void pdlLaunchDependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdlWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// Launches kernel<<<grid, block, 0, stream>>>(args...), with programmatic stream serialisation when `pdl`.
template <typename... Params, typename... Args>
void launchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl, Args... args) {
  cudaLaunchConfig_t launch{};
  launch.gridDim = grid;
  launch.blockDim = block;
  launch.dynamicSmemBytes = 0;
  launch.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  launch.attrs = attribute;
  launch.numAttrs = pdl ? 1 : 0;
  WG_CUDA_CHECK(cudaLaunchKernelEx(&launch, kernel, args...));
}

__device__ __forceinline__ float toFloat(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 toBf16(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds at least 32 floats. Ends with a
// barrier-protected read, so back-to-back calls with the same scratch are safe.
__device__ __forceinline__ float blockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.f;
  return warpSum(total);
}

// Maximum over the whole block; every thread gets the result (same scratch rules as blockSum).
__device__ __forceinline__ float blockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warpMax(lane < warps ? scratch[lane] : -FLT_MAX);
}

}  // namespace webgrpo::cuda
