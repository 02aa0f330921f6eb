// Fused AdamW over a flat parameter arena (fp32 master weights, bf16 compute copies), the deterministic sum of
// squares for global gradient-norm clipping, and small fill/convert helpers.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

constexpr int kPartials = 1024;

// Decoupled weight decay as in torch.optim.AdamW: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
__global__ void adamwKernel(float* __restrict__ master, bf16* __restrict__ computeCopy, const float* __restrict__ grad,
                            float* __restrict__ m, float* __restrict__ v, int64_t n, AdamWHyper hp, float stepSize,
                            float invSqrtBc2) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grad[i] * hp.gradScale;
    const float mi = hp.beta1 * m[i] + (1.f - hp.beta1) * g;
    const float vi = hp.beta2 * v[i] + (1.f - hp.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = master[i] * (1.f - hp.lr * hp.weightDecay);
    p -= stepSize * mi / (sqrtf(vi) * invSqrtBc2 + hp.eps);
    master[i] = p;
    if (computeCopy) computeCopy[i] = toBf16(p);
  }
}

__global__ void sumSquaresPartialKernel(const float* __restrict__ x, int64_t n, float* __restrict__ partials) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    s += x[i] * x[i];
  s = blockSum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void sumPartialsKernel(const float* __restrict__ partials, int count, float* __restrict__ result) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
  s = blockSum(s, scratch);
  if (threadIdx.x == 0) *result = s;
}

__global__ void fillF32Kernel(float* x, int64_t n, float value) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = value;
}

__global__ void fillBf16Kernel(bf16* x, int64_t n, float value) {
  const bf16 v = toBf16(value);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = v;
}

__global__ void convertF32ToBf16Kernel(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = toBf16(src[i]);
}

__global__ void bf16ToF32Kernel(const bf16* src, float* dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = toFloat(src[i]);
}

unsigned elementwiseGrid(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace

void adamwStep(float* master, bf16* computeCopy, const float* grad, float* m, float* v, int64_t n,
               const AdamWHyper& hyper, cudaStream_t stream) {
  require(hyper.step >= 1, "adamwStep: step must be >= 1 (1-based), got " + std::to_string(hyper.step));
  require(hyper.beta1 >= 0.f && hyper.beta1 < 1.f && hyper.beta2 >= 0.f && hyper.beta2 < 1.f,
          "adamwStep: betas must be in [0, 1)");
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(static_cast<double>(hyper.beta1), hyper.step);
  const double bc2 = 1.0 - std::pow(static_cast<double>(hyper.beta2), hyper.step);
  adamwKernel<<<elementwiseGrid(n), 256, 0, stream>>>(master, computeCopy, grad, m, v, n, hyper,
                                                      static_cast<float>(hyper.lr / bc1),
                                                      static_cast<float>(1.0 / std::sqrt(bc2)));
  WG_LAUNCH_CHECK(adamwKernel);
}

int sumSquaresPartialCount() { return kPartials; }

void sumSquares(const float* x, int64_t n, float* partials, float* result, cudaStream_t stream) {
  sumSquaresPartialKernel<<<kPartials, 256, 0, stream>>>(x, n, partials);
  WG_LAUNCH_CHECK(sumSquaresPartialKernel);
  sumPartialsKernel<<<1, 1024, 0, stream>>>(partials, kPartials, result);
  WG_LAUNCH_CHECK(sumPartialsKernel);
}

void fillF32(float* x, int64_t n, float value, cudaStream_t stream) {
  if (n == 0) return;
  fillF32Kernel<<<elementwiseGrid(n), 256, 0, stream>>>(x, n, value);
  WG_LAUNCH_CHECK(fillF32Kernel);
}

void fillBf16(bf16* x, int64_t n, float value, cudaStream_t stream) {
  if (n == 0) return;
  fillBf16Kernel<<<elementwiseGrid(n), 256, 0, stream>>>(x, n, value);
  WG_LAUNCH_CHECK(fillBf16Kernel);
}

void convertF32ToBf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convertF32ToBf16Kernel<<<elementwiseGrid(n), 256, 0, stream>>>(src, dst, n);
  WG_LAUNCH_CHECK(convertF32ToBf16Kernel);
}

void bf16ToF32(const bf16* src, float* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  bf16ToF32Kernel<<<elementwiseGrid(n), 256, 0, stream>>>(src, dst, n);
  WG_LAUNCH_CHECK(bf16ToF32Kernel);
}

}  // namespace webgrpo::cuda
