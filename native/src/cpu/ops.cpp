#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace webgrpo::cpu {

namespace {

// 4-lane float vectors (SSE on x86-64-v2) through GCC/Clang vector extensions; loads are unaligned-safe.
typedef float v4f __attribute__((vector_size(16)));
inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// fp32 dot product with 8 independent partial sums: lane j sums the products at i = j mod 8, in order, and
// the lanes combine as ((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7)) + tail. dot4 sums in exactly this order.
inline float dot(const float* a, const float* b, int64_t n) {
  v4f lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    lo += load4(a + i) * load4(b + i);
    hi += load4(a + i + 4) * load4(b + i + 4);
  }
  float tail = 0;
  for (; i < n; i++) tail += a[i] * b[i];
  v4f s = lo + hi;
  return (s[0] + s[1]) + (s[2] + s[3]) + tail;
}

// Four dot products of consecutive rows x[r*stride..] (r < 4) with one w: each weight load feeds four rows.
inline void dot4(const float* x, int64_t stride, const float* w, int64_t n, float out[4]) {
  const float* rowPtr[4] = {x, x + stride, x + 2 * stride, x + 3 * stride};
  v4f lo[4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
  v4f hi[4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v4f wlo = load4(w + i), whi = load4(w + i + 4);
    for (int r = 0; r < 4; r++) {
      lo[r] += load4(rowPtr[r] + i) * wlo;
      hi[r] += load4(rowPtr[r] + i + 4) * whi;
    }
  }
  for (int r = 0; r < 4; r++) {
    float tail = 0;
    for (int64_t j = i; j < n; j++) tail += rowPtr[r][j] * w[j];
    v4f s = lo[r] + hi[r];
    out[r] = (s[0] + s[1]) + (s[2] + s[3]) + tail;
  }
}

inline void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

// ---- embedding ------------------------------------------------------------------------------------------------

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t rows, int64_t dim) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) std::memcpy(out + r * dim, table + int64_t(tokens[r]) * dim, dim * sizeof(float));
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t rows, int64_t dim) {
  // Serial over rows: repeated tokens would race, and this op is cheap next to the matmuls.
  for (int64_t r = 0; r < rows; r++) axpy(dtable + int64_t(tokens[r]) * dim, 1.0f, dout + r * dim, dim);
}

// ---- RMSNorm --------------------------------------------------------------------------------------------------

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t rows, int64_t dim,
                     float eps) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; i++) ss += double(xr[i]) * xr[i];
    float inv = 1.0f / std::sqrt(float(ss / double(dim)) + eps);
    if (rstd) rstd[r] = inv;
    float* yr = out + r * dim;
    for (int64_t i = 0; i < dim; i++) yr[i] = weight[i] * (xr[i] * inv);
  }
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t rows, int64_t dim) {
  if (dx) {
#pragma omp parallel for
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = x + r * dim;
      const float* dyr = dout + r * dim;
      float inv = rstd[r];
      double proj = 0;  // Σ (dy*w)·x
      for (int64_t i = 0; i < dim; i++) proj += double(dyr[i]) * weight[i] * xr[i];
      float coef = float(proj * double(inv) * double(inv) * double(inv) / double(dim));
      float* dxr = dx + r * dim;
      for (int64_t i = 0; i < dim; i++) dxr[i] += inv * dyr[i] * weight[i] - xr[i] * coef;
    }
  }
  if (dweight) {
    // Blocks of 16 columns (one cache line per row) instead of single strided columns.
    constexpr int64_t kCols = 16;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < dim; c0 += kCols) {
      const int64_t width = std::min(kCols, dim - c0);
      double acc[kCols] = {0};
      for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < width; j++) acc[j] += double(dout[r * dim + c0 + j]) * x[r * dim + c0 + j] * rstd[r];
      for (int64_t j = 0; j < width; j++) dweight[c0 + j] += float(acc[j]);
    }
  }
}

void residual_add(float* x, const float* delta, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) x[i] += delta[i];
}

void mask_rows(float* x, const uint8_t* mask, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; r++)
    if (!mask[r]) std::memset(x + r * dim, 0, dim * sizeof(float));
}

// ---- linear ---------------------------------------------------------------------------------------------------

void matmul_forward(float* out, const float* x, const float* weight, int64_t rows, int64_t in, int64_t out_features) {
  // Tiles of 64 weight rows (stay in cache) x 4 input rows (one weight load feeds four dot products).
  // dot4 sums in exactly dot's order, so a row's result does not depend on which rows share its batch.
  constexpr int64_t kCols = 64, kRows = 4;
  const int64_t colBlocks = (out_features + kCols - 1) / kCols, rowBlocks = (rows + kRows - 1) / kRows;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t cb = 0; cb < colBlocks; cb++) {
    for (int64_t rb = 0; rb < rowBlocks; rb++) {
      const int64_t r0 = rb * kRows, nr = std::min(kRows, rows - r0);
      const int64_t oEnd = std::min(out_features, (cb + 1) * kCols);
      for (int64_t o = cb * kCols; o < oEnd; o++) {
        const float* w = weight + o * in;
        if (nr == kRows) {
          float result[4];
          dot4(x + r0 * in, in, w, in, result);
          for (int64_t i = 0; i < kRows; i++) out[(r0 + i) * out_features + o] = result[i];
        } else {
          for (int64_t i = 0; i < nr; i++) out[(r0 + i) * out_features + o] = dot(x + (r0 + i) * in, w, in);
        }
      }
    }
  }
}

namespace {

// dst [cols, rows] = srcᵀ for src [rows, cols], in 32x32 tiles.
void transpose(float* dst, const float* src, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r0 = 0; r0 < rows; r0 += kTile)
    for (int64_t c0 = 0; c0 < cols; c0 += kTile)
      for (int64_t r = r0; r < std::min(rows, r0 + kTile); r++)
        for (int64_t c = c0; c < std::min(cols, c0 + kTile); c++) dst[c * rows + r] = src[r * cols + c];
}

}  // namespace

void matmul_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight, int64_t rows,
                     int64_t in, int64_t out_features) {
  // Few rows (decode-sized batches, lm_head chunks): accumulate with axpy, streaming the weight once per row.
  // Many rows: transpose once and reuse matmul_forward's register-blocked dot products (about 3x faster), then
  // add. Either way each element sums in a fixed order for a given batch.
  constexpr int64_t kTransposeMinRows = 128;
  if (rows < kTransposeMinRows) {
    if (dx) {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; r++) {
        for (int64_t o = 0; o < out_features; o++) {
          const float g = dout[r * out_features + o];
          if (g != 0.0f) axpy(dx + r * in, g, weight + o * in, in);
        }
      }
    }
    if (dweight) {
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < out_features; o++) {
        for (int64_t r = 0; r < rows; r++) {
          const float g = dout[r * out_features + o];
          if (g != 0.0f) axpy(dweight + o * in, g, x + r * in, in);
        }
      }
    }
    return;
  }
  if (dx) {
    // dx[r, i] += Σ_o dout[r, o] · Wᵀ[i, o]
    std::vector<float> weightT(in * out_features), product(rows * in);
    transpose(weightT.data(), weight, out_features, in);
    matmul_forward(product.data(), dout, weightT.data(), rows, out_features, in);
    residual_add(dx, product.data(), rows * in);
  }
  if (dweight) {
    // dweight[o, i] += Σ_r doutᵀ[o, r] · xᵀ[i, r]
    std::vector<float> doutT(out_features * rows), xT(in * rows), product(out_features * in);
    transpose(doutT.data(), dout, rows, out_features);
    transpose(xT.data(), x, rows, in);
    matmul_forward(product.data(), doutT.data(), xT.data(), out_features, rows, in);
    residual_add(dweight, product.data(), out_features * in);
  }
}

// ---- LoRA -----------------------------------------------------------------------------------------------------

namespace {
// x ⊙ mask, or x itself (no copy) without a mask.
const float* masked(const float* x, const float* mask, int64_t n, std::vector<float>& storage) {
  if (!mask) return x;
  storage.resize(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) storage[i] = x[i] * mask[i];
  return storage.data();
}
}  // namespace

void lora_forward(float* out, const float* x, const float* a, const float* b, int64_t rows, int64_t in,
                  int64_t out_features, int64_t rank, float scale, const float* dropout_mask) {
  std::vector<float> u(rows * rank), delta(rows * out_features), xdStorage;
  const float* xd = masked(x, dropout_mask, rows * in, xdStorage);
  matmul_forward(u.data(), xd, a, rows, in, rank);
  matmul_forward(delta.data(), u.data(), b, rows, rank, out_features);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows * out_features; i++) out[i] += scale * delta[i];
}

void lora_backward(float* dx, float* da, float* db, const float* dout, const float* x, const float* a, const float* b,
                   int64_t rows, int64_t in, int64_t out_features, int64_t rank, float scale,
                   const float* dropout_mask) {
  std::vector<float> u(rows * rank), g(rows * out_features), du(rows * rank, 0.0f), xdStorage;
  const float* xd = masked(x, dropout_mask, rows * in, xdStorage);
  matmul_forward(u.data(), xd, a, rows, in, rank);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows * out_features; i++) g[i] = scale * dout[i];
  matmul_backward(du.data(), db, g.data(), u.data(), b, rows, rank, out_features);
  if (!dropout_mask) {
    matmul_backward(dx, da, du.data(), xd, a, rows, in, rank);
    return;
  }
  std::vector<float> dxd(dx ? rows * in : 0, 0.0f);
  matmul_backward(dx ? dxd.data() : nullptr, da, du.data(), xd, a, rows, in, rank);
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows * in; i++) dx[i] += dxd[i] * dropout_mask[i];
  }
}

// ---- short conv -----------------------------------------------------------------------------------------------

void conv_gate_in_forward(float* bx, const float* bcx, int64_t rows, int64_t hidden) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float* B = bcx + r * 3 * hidden;
    const float* X = B + 2 * hidden;
    for (int64_t c = 0; c < hidden; c++) bx[r * hidden + c] = B[c] * X[c];
  }
}

void conv_gate_in_backward(float* dbcx, const float* dbx, const float* bcx, int64_t rows, int64_t hidden) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float* B = bcx + r * 3 * hidden;
    const float* X = B + 2 * hidden;
    float* dB = dbcx + r * 3 * hidden;
    float* dX = dB + 2 * hidden;
    const float* g = dbx + r * hidden;
    for (int64_t c = 0; c < hidden; c++) {
      dB[c] += g[c] * X[c];
      dX[c] += g[c] * B[c];
    }
  }
}

void causal_conv_forward(float* out, const float* in, const float* weight, int64_t batch, int64_t seq_len,
                         int64_t hidden, int64_t kernel) {
#pragma omp parallel for collapse(2)
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t t = 0; t < seq_len; t++) {
      float* o = out + (b * seq_len + t) * hidden;
      for (int64_t c = 0; c < hidden; c++) {
        float acc = 0;
        for (int64_t k = 0; k < kernel; k++) {
          int64_t s = t - (kernel - 1) + k;
          if (s >= 0) acc += weight[c * kernel + k] * in[(b * seq_len + s) * hidden + c];
        }
        o[c] = acc;
      }
    }
  }
}

void causal_conv_backward(float* din, float* dweight, const float* dout, const float* in, const float* weight,
                          int64_t batch, int64_t seq_len, int64_t hidden, int64_t kernel) {
  if (din) {
    // in[s] feeds out[t] for t = s + (K-1) - k.
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < batch; b++) {
      for (int64_t s = 0; s < seq_len; s++) {
        float* d = din + (b * seq_len + s) * hidden;
        for (int64_t c = 0; c < hidden; c++) {
          float acc = 0;
          for (int64_t k = 0; k < kernel; k++) {
            int64_t t = s + (kernel - 1) - k;
            if (t < seq_len) acc += weight[c * kernel + k] * dout[(b * seq_len + t) * hidden + c];
          }
          d[c] += acc;
        }
      }
    }
  }
  if (dweight) {
    // Blocks of 16 channels, so each time step reads whole cache lines.
    constexpr int64_t kCols = 16;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < hidden; c0 += kCols) {
      const int64_t width = std::min(kCols, hidden - c0);
      std::vector<double> acc(kCols * kernel, 0.0);
      for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < seq_len; t++)
          for (int64_t k = 0; k < kernel; k++) {
            const int64_t s = t - (kernel - 1) + k;
            if (s < 0) continue;
            const float* g = dout + (b * seq_len + t) * hidden + c0;
            const float* v = in + (b * seq_len + s) * hidden + c0;
            for (int64_t j = 0; j < width; j++) acc[j * kernel + k] += double(g[j]) * v[j];
          }
      for (int64_t j = 0; j < width; j++)
        for (int64_t k = 0; k < kernel; k++) dweight[(c0 + j) * kernel + k] += float(acc[j * kernel + k]);
    }
  }
}

void causal_conv_step(float* out, float* state, const float* in, const float* weight, int64_t hidden, int64_t kernel) {
  for (int64_t c = 0; c < hidden; c++) {
    float acc = 0;
    for (int64_t k = 0; k + 1 < kernel; k++) acc += weight[c * kernel + k] * state[k * hidden + c];
    acc += weight[c * kernel + kernel - 1] * in[c];
    out[c] = acc;
  }
  if (kernel > 1) {
    std::memmove(state, state + hidden, (kernel - 2) * hidden * sizeof(float));
    std::memcpy(state + (kernel - 2) * hidden, in, hidden * sizeof(float));
  }
}

void conv_gate_out_forward(float* y, const float* bcx, const float* conv, int64_t rows, int64_t hidden) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float* C = bcx + r * 3 * hidden + hidden;
    for (int64_t c = 0; c < hidden; c++) y[r * hidden + c] = C[c] * conv[r * hidden + c];
  }
}

void conv_gate_out_backward(float* dbcx, float* dconv, const float* dy, const float* bcx, const float* conv,
                            int64_t rows, int64_t hidden) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float* C = bcx + r * 3 * hidden + hidden;
    float* dC = dbcx + r * 3 * hidden + hidden;
    for (int64_t c = 0; c < hidden; c++) {
      float g = dy[r * hidden + c];
      dC[c] += g * conv[r * hidden + c];
      dconv[r * hidden + c] += g * C[c];
    }
  }
}

// ---- attention ------------------------------------------------------------------------------------------------

void positions_from_mask(int32_t* positions, const uint8_t* mask, int64_t batch, int64_t seq_len) {
  for (int64_t b = 0; b < batch; b++) {
    int32_t count = 0;
    for (int64_t t = 0; t < seq_len; t++) {
      bool real = mask[b * seq_len + t] != 0;
      positions[b * seq_len + t] = real ? count : 0;
      if (real) count++;
    }
  }
}

namespace {

// inv_freq as HF computes it: 1 / theta ** (arange(0, d, 2).float() / d), all in fp32.
std::vector<float> ropeInvFreq(int64_t head_dim, float theta) {
  std::vector<float> inv(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; i++) {
    float exponent = float(2 * i) / float(head_dim);
    inv[i] = 1.0f / std::pow(theta, exponent);
  }
  return inv;
}

void ropeApply(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim, float theta,
               float direction) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv = ropeInvFreq(head_dim, theta);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    float pos = float(positions[r]);
    for (int64_t i = 0; i < half; i++) {
      float angle = pos * inv[i];
      float c = std::cos(angle), s = direction * std::sin(angle);
      for (int64_t h = 0; h < heads; h++) {
        float* v = x + (r * heads + h) * head_dim;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

}  // namespace

void rope_forward(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim, float theta) {
  ropeApply(x, positions, rows, heads, head_dim, theta, 1.0f);
}

void rope_backward(float* dx, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim, float theta) {
  ropeApply(dx, positions, rows, heads, head_dim, theta, -1.0f);
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const uint8_t* mask,
                       int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const int64_t qStride = heads * head_dim, kvStride = kv_heads * head_dim;
#pragma omp parallel
  {
    std::vector<float> scores(seq_len);
#pragma omp for collapse(2)
    for (int64_t b = 0; b < batch; b++) {
      for (int64_t h = 0; h < heads; h++) {
        const int64_t kvh = h / group;
        for (int64_t t = 0; t < seq_len; t++) {
          float* o = out + (b * seq_len + t) * qStride + h * head_dim;
          std::fill(o, o + head_dim, 0.0f);
          float* lseOut = lse ? lse + (b * heads + h) * seq_len + t : nullptr;
          if (!mask[b * seq_len + t]) {
            if (lseOut) *lseOut = 0;
            continue;
          }
          const float* qv = q + (b * seq_len + t) * qStride + h * head_dim;
          float maxScore = kNegInf;
          for (int64_t s = 0; s <= t; s++) {
            if (!mask[b * seq_len + s]) {
              scores[s] = kNegInf;
              continue;
            }
            scores[s] = dot(qv, k + (b * seq_len + s) * kvStride + kvh * head_dim, head_dim) * scale;
            maxScore = std::max(maxScore, scores[s]);
          }
          double sum = 0;
          for (int64_t s = 0; s <= t; s++) {
            float p = scores[s] == kNegInf ? 0.0f : std::exp(scores[s] - maxScore);
            scores[s] = p;
            sum += p;
          }
          float inv = float(1.0 / sum);
          for (int64_t s = 0; s <= t; s++)
            if (scores[s] != 0.0f) axpy(o, scores[s] * inv, v + (b * seq_len + s) * kvStride + kvh * head_dim, head_dim);
          if (lseOut) *lseOut = maxScore + float(std::log(sum));
        }
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* mask, int64_t batch,
                        int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const int64_t qStride = heads * head_dim, kvStride = kv_heads * head_dim;
  // One task per (batch row, kv head) owns that head's dk/dv, so no two threads write the same memory.
#pragma omp parallel for collapse(2)
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t kvh = 0; kvh < kv_heads; kvh++) {
      for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int64_t t = 0; t < seq_len; t++) {
          if (!mask[b * seq_len + t]) continue;
          const int64_t qOff = (b * seq_len + t) * qStride + h * head_dim;
          const float* qv = q + qOff;
          const float* dov = dout + qOff;
          const float rowLse = lse[(b * heads + h) * seq_len + t];
          const float D = dot(dov, out + qOff, head_dim);
          for (int64_t s = 0; s <= t; s++) {
            if (!mask[b * seq_len + s]) continue;
            const int64_t kOff = (b * seq_len + s) * kvStride + kvh * head_dim;
            float p = std::exp(dot(qv, k + kOff, head_dim) * scale - rowLse);
            float dp = dot(dov, v + kOff, head_dim);
            float ds = p * (dp - D) * scale;
            axpy(dq + qOff, ds, k + kOff, head_dim);
            axpy(dk + kOff, ds, qv, head_dim);
            axpy(dv + kOff, p, dov, head_dim);
          }
        }
      }
    }
  }
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t len,
                      int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const int64_t kvStride = kv_heads * head_dim;
  std::vector<float> scores(len);
  for (int64_t h = 0; h < heads; h++) {
    const int64_t kvh = h / group;
    const float* qv = q + h * head_dim;
    float maxScore = kNegInf;
    for (int64_t s = 0; s < len; s++) {
      scores[s] = dot(qv, k_cache + s * kvStride + kvh * head_dim, head_dim) * scale;
      maxScore = std::max(maxScore, scores[s]);
    }
    double sum = 0;
    for (int64_t s = 0; s < len; s++) {
      scores[s] = std::exp(scores[s] - maxScore);
      sum += scores[s];
    }
    float inv = float(1.0 / sum);
    float* o = out + h * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    for (int64_t s = 0; s < len; s++) axpy(o, scores[s] * inv, v_cache + s * kvStride + kvh * head_dim, head_dim);
  }
}

// ---- SwiGLU ---------------------------------------------------------------------------------------------------

void swiglu_forward(float* h, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) {
    float s = sigmoid(gate[i]);
    float silu = gate[i] * s;
    dgate[i] += dh[i] * up[i] * (s + gate[i] * s * (1.0f - s));
    dup[i] += dh[i] * silu;
  }
}

// ---- lm_head + log-softmax ------------------------------------------------------------------------------------

namespace {

// z [vocab] = tempered logits of the allowed tokens, -inf elsewhere; returns logsumexp over them (double).
double temperedLogits(float* z, const float* hiddenRow, const float* weight, const int32_t* allowed, int64_t nAllowed,
                      int64_t hidden_dim, int64_t vocab, float temperature) {
  float maxZ = kNegInf;
  if (allowed) {
    std::fill(z, z + vocab, kNegInf);
    for (int64_t j = 0; j < nAllowed; j++) {
      int32_t tok = allowed[j];
      z[tok] = dot(hiddenRow, weight + int64_t(tok) * hidden_dim, hidden_dim) / temperature;
      maxZ = std::max(maxZ, z[tok]);
    }
  } else {
    for (int64_t tok = 0; tok < vocab; tok++) {
      z[tok] = dot(hiddenRow, weight + tok * hidden_dim, hidden_dim) / temperature;
      maxZ = std::max(maxZ, z[tok]);
    }
  }
  if (maxZ == kNegInf) return kNegInf;
  double sum = 0;
  for (int64_t tok = 0; tok < vocab; tok++)
    if (z[tok] != kNegInf) sum += std::exp(double(z[tok]) - maxZ);
  return double(maxZ) + std::log(sum);
}

}  // namespace

void lm_head_logprobs_forward(float* logprob, float* entropy, const float* hidden, const float* weight,
                              const int32_t* targets, const int32_t* allowed_offsets, const int32_t* allowed_tokens,
                              int64_t rows, int64_t hidden_dim, int64_t vocab, float temperature) {
#pragma omp parallel
  {
    std::vector<float> z(vocab);
#pragma omp for schedule(dynamic)
    for (int64_t r = 0; r < rows; r++) {
      const int32_t* allowed = allowed_offsets ? allowed_tokens + allowed_offsets[r] : nullptr;
      int64_t nAllowed = allowed_offsets ? allowed_offsets[r + 1] - allowed_offsets[r] : vocab;
      double lse = temperedLogits(z.data(), hidden + r * hidden_dim, weight, allowed, nAllowed, hidden_dim, vocab,
                                  temperature);
      float zt = z[targets[r]];
      logprob[r] = zt == kNegInf ? kNegInf : float(double(zt) - lse);
      if (entropy) {
        double h = 0;
        for (int64_t tok = 0; tok < vocab; tok++) {
          if (z[tok] == kNegInf) continue;
          double lp = double(z[tok]) - lse;
          h -= std::exp(lp) * lp;
        }
        entropy[r] = float(h);
      }
    }
  }
}

void lm_head_logprobs_backward(float* dhidden, float* dweight, const float* dlogprob, const float* hidden,
                               const float* weight, const int32_t* targets, const int32_t* allowed_offsets,
                               const int32_t* allowed_tokens, int64_t rows, int64_t hidden_dim, int64_t vocab,
                               float temperature) {
  constexpr int64_t kChunk = 64;
  std::vector<float> dz(std::min(rows, kChunk) * vocab);
  for (int64_t start = 0; start < rows; start += kChunk) {
    const int64_t n = std::min(kChunk, rows - start);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; i++) {
      const int64_t r = start + i;
      float* z = dz.data() + i * vocab;
      const int32_t* allowed = allowed_offsets ? allowed_tokens + allowed_offsets[r] : nullptr;
      int64_t nAllowed = allowed_offsets ? allowed_offsets[r + 1] - allowed_offsets[r] : vocab;
      double lse = temperedLogits(z, hidden + r * hidden_dim, weight, allowed, nAllowed, hidden_dim, vocab, temperature);
      const float g = dlogprob[r] / temperature;
      for (int64_t tok = 0; tok < vocab; tok++)
        z[tok] = z[tok] == kNegInf ? 0.0f : -g * float(std::exp(double(z[tok]) - lse));
      z[targets[r]] += g;
    }
    matmul_backward(dhidden ? dhidden + start * hidden_dim : nullptr, dweight, dz.data(), hidden + start * hidden_dim,
                    weight, n, hidden_dim, vocab);
  }
}

// ---- sampling -------------------------------------------------------------------------------------------------

uint64_t rng_next(uint64_t& state) { return splitmix64_mix(state += kSplitmixGolden); }

double rng_uniform(uint64_t& state) { return double(rng_next(state) >> 11) * 0x1.0p-53; }

uint64_t rng_seed_for(uint64_t seed, uint64_t sequence_index) {
  uint64_t s = seed;
  uint64_t a = rng_next(s);
  uint64_t t = sequence_index ^ 0x5851f42d4c957f2dull;
  uint64_t b = rng_next(t);
  return a ^ (b * 0x2545f4914f6cdd1dull);
}

int32_t sample_token(const float* logits, int64_t vocab, const int32_t* allowed, int64_t n_allowed,
                     const uint8_t* seen, const SamplingOptions& options, uint64_t& rng_state, float* logprob) {
  // Candidate ids and their processed logits (fp32, as the GPU computes them).
  const int64_t n = allowed ? n_allowed : vocab;
  auto idOf = [&](int64_t j) { return allowed ? allowed[j] : int32_t(j); };
  const float temperature = options.greedy ? 1.0f : options.temperature;
  const bool penalise = seen && options.repetition_penalty != 1.0f;
  std::vector<float> z(static_cast<size_t>(n));
  float maxZ = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; j++) {
    const int32_t id = idOf(j);
    float x = logits[id];
    if (penalise && seen[id]) x = x > 0 ? x / options.repetition_penalty : x * options.repetition_penalty;
    z[j] = x / temperature;
    maxZ = std::max(maxZ, z[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < n; j++) sum += std::exp(double(z[j]) - double(maxZ));
  const double lse = double(maxZ) + std::log(sum);

  int64_t chosen = 0;
  if (options.greedy) {
    for (int64_t j = 1; j < n; j++)
      if (z[j] > z[chosen] || (z[j] == z[chosen] && idOf(j) < idOf(chosen))) chosen = j;
  } else {
    // Truncation as cuts: keep ordered_key(z) >= cut and, with min-p, exp(z - max) >= min_p.
    uint32_t cut = 0;
    std::vector<double> w;  // exp(z - max z) in fp32, for top-p and min-p
    if (options.top_p < 1.0f || options.min_p > 0) {
      w.resize(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; j++) w[j] = double(std::exp(z[j] - maxZ));  // float exp, like the GPU's expf
    }
    if (options.top_k > 0 && options.top_k < n) {
      // The k-th largest key: every candidate at or above it is kept (ties at the cut included).
      std::vector<uint32_t> keys(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; j++) keys[j] = ordered_key(z[j]);
      std::nth_element(keys.begin(), keys.begin() + (options.top_k - 1), keys.end(), std::greater<uint32_t>());
      cut = keys[options.top_k - 1];
    }
    if (options.top_p < 1.0f) {
      // The largest cut whose kept mass still holds top_p of the mass kept so far.
      std::vector<std::pair<uint32_t, double>> kept;
      double keptMass = 0;
      for (int64_t j = 0; j < n; j++) {
        const uint32_t k = ordered_key(z[j]);
        if (k < cut) continue;
        kept.push_back({k, w[j]});
        keptMass += w[j];
      }
      std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      const double target = double(options.top_p) * keptMass;
      double mass = 0;
      for (size_t i = 0; i < kept.size();) {
        const uint32_t k = kept[i].first;
        for (; i < kept.size() && kept[i].first == k; i++) mass += kept[i].second;
        cut = k;
        if (mass >= target) break;
      }
    }
    const double minWeight = options.min_p;
    // Gumbel-max over the kept candidates (see ops.h): the same noise and screen as the CUDA sampler.
    const uint64_t key = rng_next(rng_state);
    double best = -std::numeric_limits<double>::infinity();
    int32_t bestId = std::numeric_limits<int32_t>::max();
    float boundHi = -std::numeric_limits<float>::infinity(), boundLo = 0.0f;
    chosen = -1;
    for (int64_t j = 0; j < n; j++) {
      if (ordered_key(z[j]) < cut || (minWeight > 0 && !(w[j] >= minWeight))) continue;
      const int32_t id = idOf(j);
      const uint64_t bits = gumbel_bits(key, id);
      if (!gumbel_may_reach(bits, z[j], boundHi, boundLo)) continue;
      const double score = double(z[j]) + gumbel_noise(bits);
      if (score > best || (score == best && id < bestId)) {
        best = score;
        bestId = id;
        chosen = j;
        boundHi = float(score);
        boundLo = float(score - double(boundHi));
      }
    }
    if (chosen < 0) chosen = 0;  // unreachable: the most likely candidate is always kept
  }
  if (logprob) *logprob = float(double(z[chosen]) - lse);
  return idOf(chosen);
}

// ---- optimizer ------------------------------------------------------------------------------------------------

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step, float grad_scale) {
  const double bias1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias2 = 1.0 - std::pow(double(beta2), double(step));
  const float stepSize = float(lr / bias1);
  const float bias2Sqrt = float(std::sqrt(bias2));
  const float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) {
    float g = grad[i] * grad_scale;
    param[i] *= decay;
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    param[i] -= stepSize * m[i] / (std::sqrt(v[i]) / bias2Sqrt + eps);
  }
}

double sum_squares(const float* x, int64_t n) {
  double total = 0;
#pragma omp parallel for reduction(+ : total)
  for (int64_t i = 0; i < n; i++) total += double(x[i]) * x[i];
  return total;
}

}  // namespace webgrpo::cpu
