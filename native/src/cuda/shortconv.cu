// LFM2 short convolution core: B*x gating, depthwise causal conv of width 3, C* gating; forward and backward.
#include "common.cuh"
#include "kernels.h"

namespace webgrpo::cuda {

namespace {

constexpr int kWidth = 3;

struct ConvView {
  const bf16* proj;  // [rows, 3H]: B | C | x
  const uint8_t* mask;
  int seqLen, hidden;

  __device__ bool valid(int64_t seqBase, int t) const {
    return t >= 0 && t < seqLen && (mask == nullptr || mask[seqBase + t] != 0);
  }
  __device__ float b(int64_t row, int c) const { return toFloat(proj[row * 3 * hidden + c]); }
  __device__ float cgate(int64_t row, int c) const { return toFloat(proj[row * 3 * hidden + hidden + c]); }
  __device__ float x(int64_t row, int c) const { return toFloat(proj[row * 3 * hidden + 2 * hidden + c]); }
  // B*x at time t of the sequence starting at row seqBase; zero outside the sequence or at padding.
  __device__ float bx(int64_t seqBase, int t, int c) const {
    return valid(seqBase, t) ? b(seqBase + t, c) * x(seqBase + t, c) : 0.f;
  }
};

// One thread per (row, channel); neighbouring threads take neighbouring channels (coalesced).
__global__ void shortConvForwardKernel(ConvView view, const bf16* __restrict__ convWeight, bf16* __restrict__ y,
                                       int64_t rows) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * view.hidden) return;
  const int c = static_cast<int>(index % view.hidden);
  const int64_t row = index / view.hidden;
  const int t = static_cast<int>(row % view.seqLen);
  const int64_t seqBase = row - t;
  float out = 0.f;
  if (view.valid(seqBase, t)) {
    float conv = 0.f;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) conv += toFloat(convWeight[c * kWidth + k]) * view.bx(seqBase, t - 2 + k, c);
    out = view.cgate(row, c) * conv;
  }
  y[index] = toBf16(out);
}

// Block = 32 channels x 8 row lanes over a chunk of rows; the conv-weight gradient is summed in registers, then
// across the 8 lanes in shared memory, then one atomic per (channel, tap) per block.
constexpr int kRowsPerBlock = 128;

__global__ void shortConvBackwardKernel(ConvView view, const bf16* __restrict__ dy,
                                        const bf16* __restrict__ convWeight, bf16* __restrict__ dproj,
                                        float* __restrict__ dconvWeight, int64_t rows) {
  __shared__ float partial[8][32][kWidth];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int H = view.hidden;
  float w[kWidth] = {0.f, 0.f, 0.f};
  float dw[kWidth] = {0.f, 0.f, 0.f};
  if (c < H) {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) w[k] = toFloat(convWeight[c * kWidth + k]);
  }
  const int64_t rowBegin = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  for (int64_t row = rowBegin + threadIdx.y; c < H && row < rows && row < rowBegin + kRowsPerBlock; row += 8) {
    const int t = static_cast<int>(row % view.seqLen);
    const int64_t seqBase = row - t;
    // dconv at s = C[s] * dy[s] (zero where the output is masked).
    auto dconv = [&](int s) -> float {
      return view.valid(seqBase, s) ? view.cgate(seqBase + s, c) * toFloat(dy[(seqBase + s) * H + c]) : 0.f;
    };
    float dB = 0.f, dC = 0.f, dX = 0.f;
    if (view.valid(seqBase, t)) {
      float conv = 0.f;
      float bxWindow[kWidth];
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        bxWindow[k] = view.bx(seqBase, t - 2 + k, c);
        conv += w[k] * bxWindow[k];
      }
      const float dyHere = toFloat(dy[row * H + c]);
      dC = dyHere * conv;
      const float dconvHere = view.cgate(row, c) * dyHere;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) dw[k] += dconvHere * bxWindow[k];
      // Bx[t] feeds conv[t + 2 - k] through tap k.
      float dBx = 0.f;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) dBx += w[k] * (k == 2 ? dconvHere : dconv(t + 2 - k));
      dB = dBx * view.x(row, c);
      dX = dBx * view.b(row, c);
    }
    dproj[row * 3 * H + c] = toBf16(dB);
    dproj[row * 3 * H + H + c] = toBf16(dC);
    dproj[row * 3 * H + 2 * H + c] = toBf16(dX);
  }
#pragma unroll
  for (int k = 0; k < kWidth; ++k) partial[threadIdx.y][threadIdx.x][k] = dw[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < H) {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      float sum = 0.f;
      for (int lane = 0; lane < 8; ++lane) sum += partial[lane][threadIdx.x][k];
      atomicAdd(dconvWeight + c * kWidth + k, sum);
    }
  }
}

}  // namespace

void shortConvForward(const bf16* proj, const bf16* convWeight, const uint8_t* mask, bf16* y, int batch,
                      int seqLen, int hidden, cudaStream_t stream) {
  require(batch >= 0 && seqLen > 0 && hidden > 0, "shortConvForward: bad shape");
  const int64_t rows = static_cast<int64_t>(batch) * seqLen;
  if (rows == 0) return;
  ConvView view{proj, mask, seqLen, hidden};
  shortConvForwardKernel<<<ceilDiv(rows * hidden, 256), 256, 0, stream>>>(view, convWeight, y, rows);
  WG_LAUNCH_CHECK(shortConvForwardKernel);
}

void shortConvBackward(const bf16* dy, const bf16* proj, const bf16* convWeight, const uint8_t* mask, bf16* dproj,
                       float* dconvWeight, int batch, int seqLen, int hidden, cudaStream_t stream) {
  require(batch >= 0 && seqLen > 0 && hidden > 0, "shortConvBackward: bad shape");
  const int64_t rows = static_cast<int64_t>(batch) * seqLen;
  if (rows == 0) return;
  ConvView view{proj, mask, seqLen, hidden};
  dim3 grid(ceilDiv(hidden, 32), ceilDiv(rows, kRowsPerBlock));
  shortConvBackwardKernel<<<grid, dim3(32, 8), 0, stream>>>(view, dy, convWeight, dproj, dconvWeight, rows);
  WG_LAUNCH_CHECK(shortConvBackwardKernel);
}

}  // namespace webgrpo::cuda
