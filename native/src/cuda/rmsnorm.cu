// RMSNorm fused with the residual add (forward) and its backward pass. The residual stream is fp32.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

constexpr int kMaxPerThread = 8;  // hidden <= 8 * 1024

// One block per row; each thread keeps its (at most kMaxPerThread) elements in registers between the two passes.
// residualOut may alias residualIn (each thread reads its elements before writing them).
__global__ void residualRmsNormForwardKernel(const float* residualIn, const bf16* __restrict__ add, float* residualOut,
                                             const bf16* __restrict__ weight, bf16* __restrict__ normed,
                                             float* __restrict__ rstd, int hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* res = residualIn + row * hidden;
  float* resOut = residualOut + row * hidden;
  float values[kMaxPerThread];
  float sumSq = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    values[k] = 0.f;
    if (i < hidden) {
      float x = res[i];
      if (add) x += toFloat(add[row * hidden + i]);
      if (add || resOut != res) resOut[i] = x;
      values[k] = x;
      sumSq += x * x;
    }
  }
  const float total = blockSum(sumSq, scratch);
  const float r = rsqrtf(total / hidden + eps);
  if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < hidden) normed[row * hidden + i] = toBf16(values[k] * r * toFloat(weight[i]));
  }
}

// Blocks walk rows with a stride; each thread owns fixed columns, so the weight gradient is summed in registers
// and written with one atomic per column per block.
__global__ void rmsNormBackwardKernel(const bf16* __restrict__ dnormed, const float* __restrict__ residual,
                                      const bf16* __restrict__ weight, const float* __restrict__ rstd,
                                      float* __restrict__ dresidual, float* __restrict__ dweight, int64_t rows,
                                      int hidden) {
  __shared__ float scratch[32];
  float w[kMaxPerThread], dwAcc[kMaxPerThread];
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    w[k] = i < hidden ? toFloat(weight[i]) : 0.f;
    dwAcc[k] = 0.f;
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float r = rstd[row];
    float x[kMaxPerThread], g[kMaxPerThread];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxPerThread; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      x[k] = 0.f;
      g[k] = 0.f;
      if (i < hidden) {
        const float dy = toFloat(dnormed[row * hidden + i]);
        x[k] = residual[row * hidden + i];
        g[k] = dy * w[k];
        dwAcc[k] += dy * x[k] * r;
        dot += g[k] * x[k];
      }
    }
    const float meanDot = blockSum(dot, scratch) / hidden;
#pragma unroll
    for (int k = 0; k < kMaxPerThread; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < hidden) dresidual[row * hidden + i] += r * g[k] - x[k] * r * r * r * meanDot;
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < hidden) atomicAdd(dweight + i, dwAcc[k]);
  }
}

int threadsFor(int hidden) {
  int threads = (hidden + kMaxPerThread - 1) / kMaxPerThread;
  threads = ((threads + 31) / 32) * 32;
  return threads < 128 ? 128 : threads;
}

int multiprocessorCount() {
  static int count = [] {
    int device = 0, sms = 0;
    WG_CUDA_CHECK(cudaGetDevice(&device));
    WG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }();
  return count;
}

}  // namespace

void residualRmsNormForward(const float* residualIn, const bf16* add, float* residualOut, const bf16* weight,
                            bf16* normed, float* rstd, int64_t rows, int hidden, float eps, cudaStream_t stream) {
  require(hidden > 0 && hidden <= kMaxPerThread * 1024,
          "residualRmsNormForward: hidden size must be in [1, 8192], got " + std::to_string(hidden));
  if (rows == 0) return;
  residualRmsNormForwardKernel<<<static_cast<unsigned>(rows), threadsFor(hidden), 0, stream>>>(
      residualIn, add, residualOut, weight, normed, rstd, hidden, eps);
  WG_LAUNCH_CHECK(residualRmsNormForwardKernel);
}

void rmsNormBackward(const bf16* dnormed, const float* residual, const bf16* weight, const float* rstd,
                     float* dresidual, float* dweight, int64_t rows, int hidden, cudaStream_t stream) {
  require(hidden > 0 && hidden <= kMaxPerThread * 1024,
          "rmsNormBackward: hidden size must be in [1, 8192], got " + std::to_string(hidden));
  if (rows == 0) return;
  const int64_t maxBlocks = 4LL * multiprocessorCount();
  const unsigned blocks = static_cast<unsigned>(rows < maxBlocks ? rows : maxBlocks);
  rmsNormBackwardKernel<<<blocks, threadsFor(hidden), 0, stream>>>(dnormed, residual, weight, rstd, dresidual,
                                                                    dweight, rows, hidden);
  WG_LAUNCH_CHECK(rmsNormBackwardKernel);
}

}  // namespace webgrpo::cuda
