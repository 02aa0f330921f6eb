// Kernel harness (llm.c dev/cuda style): every CUDA kernel against its fp32 CPU twin (native/src/cpu/ops.cpp) on
// fresh random inputs, then timings at LFM2-350M training sizes against the measured ceilings of the GPU.
//   check_kernels [--no-timing] [--seed N]
// Exits 1 when any check fails. Inputs are rounded to bf16 first, so both sides see identical values; the error
// measured is ||gpu - cpu|| / ||cpu|| over each output (NaN anywhere fails: outputs are poisoned before each run).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "cuda/kernels.h"
#include "harness.h"

using namespace webgrpo;
using cuda::bf16;


// ---- random inputs --------------------------------------------------------------------------------------------
// The reference ops' splitmix64 stream.
struct Rng {
  uint64_t state;
  uint64_t next() { return cpu::rng_next(state); }
  double uniform() { return cpu::rng_uniform(state); }
  float normal() {
    const double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

float roundBf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

std::vector<float> randomValues(Rng& rng, size_t n, float scale, float offset = 0.f) {
  std::vector<float> v(n);
  for (auto& x : v) x = roundBf16(offset + scale * rng.normal());
  return v;
}

// ---- device buffers -------------------------------------------------------------------------------------------

void upload(DeviceArray<bf16>& d, const std::vector<float>& h) {
  std::vector<bf16> tmp(h.size());
  for (size_t i = 0; i < h.size(); ++i) tmp[i] = __float2bfloat16_rn(h[i]);
  CHECK_CUDA(cudaMemcpy(d.ptr, tmp.data(), tmp.size() * sizeof(bf16), cudaMemcpyHostToDevice));
}
template <typename T>
void upload(DeviceArray<T>& d, const std::vector<T>& h) {
  CHECK_CUDA(cudaMemcpy(d.ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
std::vector<float> download(const DeviceArray<bf16>& d) {
  std::vector<bf16> tmp(d.n);
  CHECK_CUDA(cudaMemcpy(tmp.data(), d.ptr, d.n * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out(d.n);
  for (size_t i = 0; i < d.n; ++i) out[i] = __bfloat162float(tmp[i]);
  return out;
}
std::vector<float> download(const DeviceArray<float>& d) {
  std::vector<float> out(d.n);
  CHECK_CUDA(cudaMemcpy(out.data(), d.ptr, d.n * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}
void poison(DeviceArray<bf16>& d) { cuda::fillBf16(d, d.n, NAN, nullptr); }
void poison(DeviceArray<float>& d) { cuda::fillF32(d, d.n, NAN, nullptr); }

// ---- comparison -----------------------------------------------------------------------------------------------
struct CheckRow {
  std::string name;
  double relError;
  double tolerance;
  bool pass;
};
std::vector<CheckRow> checks;

// Relative L2 error over positions where include[i] (all when empty). Any non-finite GPU value where the
// reference is finite counts as failure.
double relError(const std::vector<float>& gpu, const std::vector<float>& ref, const std::vector<uint8_t>& include = {}) {
  if (gpu.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (!include.empty() && !include[i]) continue;
    if (!std::isfinite(ref[i])) {
      if (gpu[i] != ref[i]) return INFINITY;
      continue;
    }
    if (!std::isfinite(gpu[i])) return NAN;
    const double d = double(gpu[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void record(const std::string& name, double err, double tolerance) {
  const bool pass = std::isfinite(err) && err <= tolerance;
  checks.push_back({name, err, tolerance, pass});
  std::printf("  %-44s rel.err %.3e  (tol %.0e)  %s\n", name.c_str(), err, tolerance, pass ? "ok" : "FAIL");
}

// bf16 outputs of fp32 math land near 2^-9 relative; fp32 outputs far below.
constexpr double kTolBf16 = 1e-2;
constexpr double kTolF32 = 1e-4;

// ---- problem shapes -------------------------------------------------------------------------------------------
struct Shape {
  int batch, seqLen, hidden, heads, kvHeads, headDim, inter, vocab;
  std::vector<int> lengths;  // real tokens per sequence (left padding before them)
  int rows() const { return batch * seqLen; }
};

std::vector<uint8_t> maskFor(const Shape& s) {
  std::vector<uint8_t> mask(size_t(s.rows()), 0);
  for (int b = 0; b < s.batch; ++b)
    for (int t = s.seqLen - s.lengths[b]; t < s.seqLen; ++t) mask[size_t(b) * s.seqLen + t] = 1;
  return mask;
}

std::vector<uint8_t> expandRows(const std::vector<uint8_t>& rowMask, size_t width) {
  std::vector<uint8_t> out(rowMask.size() * width);
  for (size_t r = 0; r < rowMask.size(); ++r) std::fill_n(out.begin() + r * width, width, rowMask[r]);
  return out;
}

// ---- checks ---------------------------------------------------------------------------------------------------
void checkEmbedding(Rng& rng, const Shape& s) {
  const int rows = s.rows();
  std::vector<int32_t> ids(rows);
  for (auto& id : ids) id = int32_t(rng.next() % s.vocab);
  ids[0] = ids[rows - 1];  // a repeated id exercises the scatter-add
  auto table = randomValues(rng, size_t(s.vocab) * s.hidden, 0.02f);
  auto dout = randomValues(rng, size_t(rows) * s.hidden, 1.f);
  auto dtable0 = randomValues(rng, size_t(s.vocab) * s.hidden, 0.1f);
  std::vector<float> refOut(size_t(rows) * s.hidden), refDtable = dtable0;
  cpu::embedding_forward(refOut.data(), ids.data(), table.data(), rows, s.hidden);
  cpu::embedding_backward(refDtable.data(), dout.data(), ids.data(), rows, s.hidden);

  DeviceArray<int32_t> dIds(rows);
  DeviceArray<bf16> dTable(table.size()), dOut(refOut.size()), dDout(dout.size());
  DeviceArray<float> dDtable(dtable0.size());
  upload(dIds, ids);
  upload(dTable, table);
  upload(dDout, dout);
  upload(dDtable, dtable0);
  poison(dOut);
  cuda::embeddingForward(dIds, dTable, dOut, rows, s.hidden, s.vocab, nullptr);
  cuda::embeddingBackward(dIds, dDout, nullptr, dDtable, rows, s.hidden, s.vocab, nullptr);
  record("embedding fwd", relError(download(dOut), refOut), 0);  // a copy: exact
  record("embedding bwd dtable (+=)", relError(download(dDtable), refDtable), kTolF32);
}

void checkRmsNorm(Rng& rng, const Shape& s) {
  const int rows = s.rows(), H = s.hidden;
  auto residual = randomValues(rng, size_t(rows) * H, 1.f);
  auto add = randomValues(rng, size_t(rows) * H, 0.5f);
  auto weight = randomValues(rng, H, 0.1f, 1.f);
  auto dnormed = randomValues(rng, size_t(rows) * H, 1.f);
  auto dres0 = randomValues(rng, size_t(rows) * H, 0.3f);
  auto dw0 = randomValues(rng, H, 0.1f);
  const float eps = 1e-5f;
  std::vector<float> refRes = residual, refNormed(refRes.size()), refRstd(rows), refDres = dres0, refDw = dw0;
  cpu::residual_add(refRes.data(), add.data(), int64_t(refRes.size()));
  cpu::rmsnorm_forward(refNormed.data(), refRstd.data(), refRes.data(), weight.data(), rows, H, eps);
  cpu::rmsnorm_backward(refDres.data(), refDw.data(), dnormed.data(), refRes.data(), weight.data(), refRstd.data(),
                        rows, H);

  DeviceArray<float> dRes(residual.size()), dRstd(rows), dDres(dres0.size()), dDw(H);
  DeviceArray<bf16> dAdd(add.size()), dW(H), dNormed(refNormed.size()), dDnormed(dnormed.size());
  upload(dRes, residual);
  upload(dAdd, add);
  upload(dW, weight);
  upload(dDnormed, dnormed);
  upload(dDres, dres0);
  upload(dDw, dw0);
  poison(dNormed);
  poison(dRstd);
  cuda::residualRmsNormForward(dRes, dAdd, dRes, dW, dNormed, dRstd, rows, H, eps, nullptr);
  cuda::rmsNormBackward(dDnormed, dRes, dW, dRstd, dDres, dDw, rows, H, nullptr);
  record("rmsnorm+residual fwd residual", relError(download(dRes), refRes), kTolF32);
  record("rmsnorm+residual fwd normed", relError(download(dNormed), refNormed), kTolBf16);
  record("rmsnorm+residual fwd rstd", relError(download(dRstd), refRstd), kTolF32);
  record("rmsnorm bwd dresidual (+=)", relError(download(dDres), refDres), kTolF32);
  record("rmsnorm bwd dweight (+=)", relError(download(dDw), refDw), kTolF32);
}

void checkShortConv(Rng& rng, const Shape& s) {
  const int rows = s.rows(), H = s.hidden;
  const auto mask = maskFor(s);
  auto proj = randomValues(rng, size_t(rows) * 3 * H, 1.f);
  auto w = randomValues(rng, size_t(H) * 3, 0.5f);
  auto dy = randomValues(rng, size_t(rows) * H, 1.f);
  auto dw0 = randomValues(rng, size_t(H) * 3, 0.1f);
  // Reference: HF zeroes padded positions before in_proj, so B, C and x are 0 there.
  std::vector<float> masked = proj;
  cpu::mask_rows(masked.data(), mask.data(), rows, 3 * H);
  std::vector<float> bx(size_t(rows) * H), conv(bx.size()), y(bx.size());
  cpu::conv_gate_in_forward(bx.data(), masked.data(), rows, H);
  cpu::causal_conv_forward(conv.data(), bx.data(), w.data(), s.batch, s.seqLen, H, 3);
  cpu::conv_gate_out_forward(y.data(), masked.data(), conv.data(), rows, H);
  std::vector<float> dproj(size_t(rows) * 3 * H, 0.f), dconv(bx.size(), 0.f), dbx(bx.size(), 0.f), dw = dw0;
  cpu::conv_gate_out_backward(dproj.data(), dconv.data(), dy.data(), masked.data(), conv.data(), rows, H);
  cpu::causal_conv_backward(dbx.data(), dw.data(), dconv.data(), bx.data(), w.data(), s.batch, s.seqLen, H, 3);
  cpu::conv_gate_in_backward(dproj.data(), dbx.data(), masked.data(), rows, H);
  // The gradient into a padded position's in_proj output must be 0 (its input was zeroed).
  cpu::mask_rows(dproj.data(), mask.data(), rows, 3 * H);

  DeviceArray<bf16> dProj(proj.size()), dW(w.size()), dY(y.size()), dDy(dy.size()), dDproj(dproj.size());
  DeviceArray<uint8_t> dMask(mask.size());
  DeviceArray<float> dDw(dw0.size());
  upload(dProj, proj);  // unmasked: the kernel applies the mask itself
  upload(dW, w);
  upload(dDy, dy);
  upload(dMask, mask);
  upload(dDw, dw0);
  poison(dY);
  poison(dDproj);
  cuda::shortConvForward(dProj, dW, dMask, dY, s.batch, s.seqLen, H, nullptr);
  cuda::shortConvBackward(dDy, dProj, dW, dMask, dDproj, dDw, s.batch, s.seqLen, H, nullptr);
  record("shortconv fwd", relError(download(dY), y), kTolBf16);
  record("shortconv bwd dproj", relError(download(dDproj), dproj), kTolBf16);
  record("shortconv bwd dweight (+=)", relError(download(dDw), dw), kTolF32 * 10);
}

void checkHeadNormRope(Rng& rng, const Shape& s) {
  const int rows = s.rows(), nh = s.heads, hd = s.headDim;
  const int width = nh * hd, stride = width + 2 * s.kvHeads * hd;  // q inside a fused qkv row
  const auto mask = maskFor(s);
  std::vector<int32_t> positions(rows);
  cpu::positions_from_mask(positions.data(), mask.data(), s.batch, s.seqLen);
  auto qkv = randomValues(rng, size_t(rows) * stride, 1.f);
  auto weight = randomValues(rng, hd, 0.1f, 1.f);
  auto dout = randomValues(rng, size_t(rows) * width, 1.f);
  auto dw0 = randomValues(rng, hd, 0.1f);
  const float eps = 1e-5f, theta = 1e6f;
  std::vector<float> q(size_t(rows) * width), out(q.size()), rstd(size_t(rows) * nh);
  for (int r = 0; r < rows; ++r) std::copy_n(qkv.begin() + size_t(r) * stride, width, q.begin() + size_t(r) * width);
  cpu::rmsnorm_forward(out.data(), rstd.data(), q.data(), weight.data(), int64_t(rows) * nh, hd, eps);
  cpu::rope_forward(out.data(), positions.data(), rows, nh, hd, theta);
  std::vector<float> dnorm = dout, dq(q.size(), 0.f), dw = dw0;
  cpu::rope_backward(dnorm.data(), positions.data(), rows, nh, hd, theta);
  cpu::rmsnorm_backward(dq.data(), dw.data(), dnorm.data(), q.data(), weight.data(), rstd.data(), int64_t(rows) * nh,
                        hd);

  DeviceArray<bf16> dQkv(qkv.size()), dW(hd), dOut(out.size()), dDout(dout.size()), dDq(dq.size());
  DeviceArray<int32_t> dPos(rows);
  DeviceArray<float> dRstd(rstd.size()), dDw(hd);
  upload(dQkv, qkv);
  upload(dW, weight);
  upload(dDout, dout);
  upload(dPos, positions);
  upload(dDw, dw0);
  poison(dOut);
  poison(dDq);
  cuda::headNormRopeForward(dQkv, stride, dOut, width, dW, dPos, dRstd, rows, nh, hd, eps, theta, nullptr);
  cuda::headNormRopeBackward(dDout, width, dQkv, stride, dW, dPos, dRstd, dDq, width, dDw, rows, nh, hd, theta,
                             nullptr);
  record("q/k norm+rope fwd", relError(download(dOut), out), kTolBf16);
  record("q/k norm+rope fwd rstd", relError(download(dRstd), rstd), kTolF32);
  record("q/k norm+rope bwd dx", relError(download(dDq), dq), kTolBf16);
  record("q/k norm+rope bwd dweight (+=)", relError(download(dDw), dw), kTolF32 * 10);
}

void checkSwiglu(Rng& rng, const Shape& s) {
  const int rows = s.rows(), I = s.inter;
  auto gateUp = randomValues(rng, size_t(rows) * 2 * I, 2.f);
  auto dout = randomValues(rng, size_t(rows) * I, 1.f);
  std::vector<float> gate(size_t(rows) * I), up(gate.size()), h(gate.size()), dgate(gate.size(), 0.f),
      dup(gate.size(), 0.f);
  for (int r = 0; r < rows; ++r) {
    std::copy_n(gateUp.begin() + size_t(r) * 2 * I, I, gate.begin() + size_t(r) * I);
    std::copy_n(gateUp.begin() + size_t(r) * 2 * I + I, I, up.begin() + size_t(r) * I);
  }
  cpu::swiglu_forward(h.data(), gate.data(), up.data(), int64_t(h.size()));
  cpu::swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), int64_t(h.size()));
  std::vector<float> dgateUp(gateUp.size());
  for (int r = 0; r < rows; ++r) {
    std::copy_n(dgate.begin() + size_t(r) * I, I, dgateUp.begin() + size_t(r) * 2 * I);
    std::copy_n(dup.begin() + size_t(r) * I, I, dgateUp.begin() + size_t(r) * 2 * I + I);
  }
  DeviceArray<bf16> dGateUp(gateUp.size()), dH(h.size()), dDout(dout.size()), dDgateUp(gateUp.size());
  upload(dGateUp, gateUp);
  upload(dDout, dout);
  poison(dH);
  poison(dDgateUp);
  cuda::swigluForward(dGateUp, dH, rows, I, nullptr);
  cuda::swigluBackward(dDout, dGateUp, dDgateUp, rows, I, nullptr);
  record("swiglu fwd", relError(download(dH), h), kTolBf16);
  record("swiglu bwd", relError(download(dDgateUp), dgateUp), kTolBf16);
}

using AttnForwardFn = decltype(&cuda::attentionForward);
using AttnBackwardFn = decltype(&cuda::attentionBackward);

void checkAttention(Rng& rng, const Shape& s, const char* label, bool tensorCores) {
  const AttnForwardFn attnForward = tensorCores ? cuda::attentionForward : cuda::attentionForwardSimt;
  const AttnBackwardFn attnBackward = tensorCores ? cuda::attentionBackward : cuda::attentionBackwardSimt;
  const int rows = s.rows(), hd = s.headDim;
  const int qW = s.heads * hd, kvW = s.kvHeads * hd, stride = qW + 2 * kvW;
  const auto mask = maskFor(s);
  auto qkv = randomValues(rng, size_t(rows) * stride, 1.f);
  auto dout = randomValues(rng, size_t(rows) * qW, 1.f);
  std::vector<float> q(size_t(rows) * qW), k(size_t(rows) * kvW), v(k.size());
  for (int r = 0; r < rows; ++r) {
    std::copy_n(qkv.begin() + size_t(r) * stride, qW, q.begin() + size_t(r) * qW);
    std::copy_n(qkv.begin() + size_t(r) * stride + qW, kvW, k.begin() + size_t(r) * kvW);
    std::copy_n(qkv.begin() + size_t(r) * stride + qW + kvW, kvW, v.begin() + size_t(r) * kvW);
  }
  std::vector<float> out(q.size()), lse(size_t(s.batch) * s.heads * s.seqLen);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), mask.data(), s.batch, s.seqLen,
                         s.heads, s.kvHeads, hd);
  // The backward reference consumes the GPU's bf16-rounded forward output, as the GPU backward does.
  DeviceArray<bf16> dQkv(qkv.size()), dOut(out.size()), dDout(dout.size()), dDqkv(qkv.size());
  DeviceArray<uint8_t> dMask(mask.size());
  DeviceArray<float> dLse(lse.size()), dRowDot(lse.size());
  upload(dQkv, qkv);
  upload(dDout, dout);
  upload(dMask, mask);
  poison(dOut);
  poison(dLse);
  poison(dDqkv);
  const cuda::AttentionShape shape{s.batch, s.seqLen, s.heads, s.kvHeads, hd};
  const bf16 *Q = dQkv.ptr, *K = dQkv.ptr + qW, *V = dQkv.ptr + qW + kvW;
  attnForward(Q, stride, K, stride, V, stride, dMask, dOut, dLse, shape, nullptr);
  attnBackward(Q, stride, K, stride, V, stride, dMask, dOut, dDout, dLse, dDqkv.ptr, stride, dDqkv.ptr + qW, stride,
               dDqkv.ptr + qW + kvW, stride, dRowDot, shape, nullptr);
  const auto gpuOut = download(dOut);
  const auto lseMask = [&] {
    std::vector<uint8_t> m(lse.size());
    for (int b = 0; b < s.batch; ++b)
      for (int h = 0; h < s.heads; ++h)
        for (int t = 0; t < s.seqLen; ++t) m[(size_t(b) * s.heads + h) * s.seqLen + t] = mask[size_t(b) * s.seqLen + t];
    return m;
  }();
  std::string p = std::string(tensorCores ? "attention tc " : "attention simt ") + label;
  record(p + " fwd out", relError(gpuOut, out), kTolBf16);
  record(p + " fwd lse", relError(download(dLse), lse, lseMask), kTolF32 * 10);
  std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), gpuOut.data(), lse.data(), q.data(), k.data(),
                          v.data(), mask.data(), s.batch, s.seqLen, s.heads, s.kvHeads, hd);
  const auto g = download(dDqkv);
  std::vector<float> gq(q.size()), gk(k.size()), gv(v.size());
  for (int r = 0; r < rows; ++r) {
    std::copy_n(g.begin() + size_t(r) * stride, qW, gq.begin() + size_t(r) * qW);
    std::copy_n(g.begin() + size_t(r) * stride + qW, kvW, gk.begin() + size_t(r) * kvW);
    std::copy_n(g.begin() + size_t(r) * stride + qW + kvW, kvW, gv.begin() + size_t(r) * kvW);
  }
  record(p + " bwd dq", relError(gq, dq), kTolBf16);
  record(p + " bwd dk", relError(gk, dk), kTolBf16);
  record(p + " bwd dv", relError(gv, dv), kTolBf16);
  // Same inputs again: the result must be bit-identical (no races, no atomics in attention).
  attnBackward(Q, stride, K, stride, V, stride, dMask, dOut, dDout, dLse, dDqkv.ptr, stride, dDqkv.ptr + qW, stride,
               dDqkv.ptr + qW + kvW, stride, dRowDot, shape, nullptr);
  const auto g2 = download(dDqkv);
  record(p + " bwd rerun identical", std::memcmp(g.data(), g2.data(), g.size() * sizeof(float)) == 0 ? 0.0 : 1.0, 0);
}

void checkGemm(Rng& rng, cuda::Gemm& gemm, const char* label) {
  const int rows = 133, in = 200, out = 72;  // odd sizes on purpose
  auto x = randomValues(rng, size_t(rows) * in, 1.f);
  auto w = randomValues(rng, size_t(out) * in, 0.1f);
  auto dy = randomValues(rng, size_t(rows) * out, 1.f);
  auto dw0 = randomValues(rng, size_t(out) * in, 0.1f);
  std::vector<float> y(size_t(rows) * out), dx(x.size(), 0.f), dw = dw0;
  cpu::matmul_forward(y.data(), x.data(), w.data(), rows, in, out);
  cpu::matmul_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rows, in, out);
  DeviceArray<bf16> dX(x.size()), dW(w.size()), dY(y.size()), dDy(dy.size()), dDx(dx.size());
  DeviceArray<float> dYf(y.size()), dDw(dw.size());
  upload(dX, x);
  upload(dW, w);
  upload(dDy, dy);
  upload(dDw, dw0);
  poison(dY);
  poison(dYf);
  poison(dDx);
  gemm.run(false, true, rows, out, in, 1.f, dX, in, dW, in, 0.f, dY, cuda::OutType::BF16, out, nullptr);
  gemm.run(false, true, rows, out, in, 1.f, dX, in, dW, in, 0.f, dYf, cuda::OutType::F32, out, nullptr);
  gemm.run(false, false, rows, in, out, 1.f, dDy, out, dW, in, 0.f, dDx, cuda::OutType::BF16, in, nullptr);
  gemm.run(true, false, out, in, rows, 1.f, dDy, out, dX, in, 1.f, dDw, cuda::OutType::F32, in, nullptr);
  std::string p = std::string("gemm ") + label;
  record(p + " x.W^T -> bf16", relError(download(dY), y), kTolBf16);
  record(p + " x.W^T -> f32", relError(download(dYf), y), kTolF32 * 10);
  record(p + " dy.W -> bf16", relError(download(dDx), dx), kTolBf16);
  record(p + " dW += dy^T.x (f32)", relError(download(dDw), dw), kTolF32 * 10);
}

void checkLmHead(Rng& rng, cuda::Gemm& gemm, int n, int H, int V, bool constrained, const char* label) {
  auto hidden = randomValues(rng, size_t(n) * H, 1.f);
  auto embed = randomValues(rng, size_t(V) * H, 0.05f);
  auto dlogprob = randomValues(rng, n, 1.f);
  auto dembed0 = randomValues(rng, size_t(V) * H, 0.01f);
  std::vector<int32_t> targets(n), offsets, tokens;
  for (auto& t : targets) t = int32_t(rng.next() % V);
  if (constrained) {
    offsets.push_back(0);
    for (int r = 0; r < n; ++r) {
      // Distinct tokens per row (the kernels' contract), the target among them at a random place.
      const int count = 1 + int(rng.next() % 40);
      std::vector<int32_t> row{targets[r]};
      while (int(row.size()) < count) {
        const int32_t t = int32_t(rng.next() % V);
        if (std::find(row.begin(), row.end(), t) == row.end()) row.push_back(t);
      }
      std::swap(row[0], row[rng.next() % row.size()]);
      tokens.insert(tokens.end(), row.begin(), row.end());
      offsets.push_back(int32_t(tokens.size()));
    }
  }
  const float temperature = 0.7f;
  std::vector<float> logprob(n), entropy(n), dhidden(hidden.size(), 0.f), dembed = dembed0;
  const int32_t* offs = constrained ? offsets.data() : nullptr;
  const int32_t* toks = constrained ? tokens.data() : nullptr;
  cpu::lm_head_logprobs_forward(logprob.data(), entropy.data(), hidden.data(), embed.data(), targets.data(), offs,
                                toks, n, H, V, temperature);
  cpu::lm_head_logprobs_backward(dhidden.data(), dembed.data(), dlogprob.data(), hidden.data(), embed.data(),
                                 targets.data(), offs, toks, n, H, V, temperature);
  const int chunk = 37;  // several chunks, the last one partial
  DeviceArray<bf16> dHidden(hidden.size()), dEmbed(embed.size()), dDhidden(hidden.size()), dDlogits(size_t(chunk) * V);
  DeviceArray<float> dLogits(size_t(chunk) * V), dLogprob(n), dEntropy(n), dLse(n), dDlogprob(n), dDembed(dembed.size());
  DeviceArray<int32_t> dTargets(n), dOffsets(offsets.size()), dTokens(tokens.size());
  upload(dHidden, hidden);
  upload(dEmbed, embed);
  upload(dDlogprob, dlogprob);
  upload(dDembed, dembed0);
  upload(dTargets, targets);
  cuda::AllowedTokensDevice allowed;
  if (constrained) {
    upload(dOffsets, offsets);
    upload(dTokens, tokens);
    allowed = {dOffsets.ptr, dTokens.ptr};
  }
  poison(dLogprob);
  poison(dEntropy);
  poison(dDhidden);
  cuda::lmHeadLogprobForward(gemm, dHidden, dEmbed, dTargets, 1.f / temperature, allowed, dLogits, chunk, dLogprob,
                             dEntropy, dLse, n, H, V, nullptr);
  cuda::lmHeadLogprobBackward(gemm, dHidden, dEmbed, dTargets, 1.f / temperature, allowed, dLse, dDlogprob, dLogits,
                              dDlogits, chunk, dDhidden, dDembed, n, H, V, nullptr);
  std::string p = std::string("lm_head logprob ") + label;
  record(p + " fwd logprob", relError(download(dLogprob), logprob), 1e-3);
  record(p + " fwd entropy", relError(download(dEntropy), entropy), 1e-3);
  record(p + " bwd dhidden", relError(download(dDhidden), dhidden), kTolBf16);
  record(p + " bwd dembed (+=)", relError(download(dDembed), dembed), kTolBf16);
}

void checkAdamW(Rng& rng) {
  const int64_t n = 1000003;
  auto p = randomValues(rng, n, 0.05f), g = randomValues(rng, n, 0.01f), m = randomValues(rng, n, 0.001f);
  std::vector<float> v(n);
  for (auto& x : v) x = std::fabs(rng.normal()) * 1e-4f;
  cuda::AdamWHyper hp{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 7, 0.5f};
  std::vector<float> rp = p, rm = m, rv = v;
  cpu::adamw_step(rp.data(), g.data(), rm.data(), rv.data(), n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weightDecay,
                  hp.step, hp.gradScale);
  const double refSumSq = cpu::sum_squares(g.data(), n);
  DeviceArray<float> dP(n), dG(n), dM(n), dV(n), dPartials(cuda::sumSquaresPartialCount()), dSum(1);
  DeviceArray<bf16> dCopy(n);
  upload(dP, p);
  upload(dG, g);
  upload(dM, m);
  upload(dV, v);
  poison(dCopy);
  cuda::adamwStep(dP, dCopy, dG, dM, dV, n, hp, nullptr);
  cuda::sumSquares(dG, n, dPartials, dSum, nullptr);
  const auto gp = download(dP);
  // Compare the update (p_new - p_old), not p itself, so the test is sensitive to the step's arithmetic.
  std::vector<float> du(n), ru(n);
  for (int64_t i = 0; i < n; ++i) {
    du[i] = gp[i] - p[i];
    ru[i] = rp[i] - p[i];
  }
  record("adamw update", relError(du, ru), 1e-4);
  record("adamw m", relError(download(dM), rm), 1e-6);
  record("adamw v", relError(download(dV), rv), 1e-6);
  record("adamw bf16 copy", relError(download(dCopy), rp), kTolBf16);
  record("sum of squares", std::fabs(download(dSum)[0] - refSumSq) / refSumSq, 1e-5);
}

// ---- timing ---------------------------------------------------------------------------------------------------
struct TimeRow {
  std::string name;
  double ms;
  double floorMs;  // bytes / bandwidth or flops / matrix rate, whichever is larger
  std::string bound;
};
std::vector<TimeRow> timings;

// ---- decoding (generate) -------------------------------------------------------------------------------------
// slots sequences with caches of up to maxLen tokens; the last slot is inactive (length 0).
void checkDecode(Rng& rng, int slots, int maxLen, int H, int nh, int nkv, int V, const char* label) {
  const int hd = 64, qDim = nh * hd, kvDim = nkv * hd;
  std::vector<int32_t> lengths(slots);
  for (int s = 0; s < slots; ++s) lengths[s] = s == slots - 1 ? 0 : 1 + int(rng.next() % maxLen);
  lengths[0] = maxLen;
  // Attention over the cache, against cpu::attention_decode per slot.
  {
    auto q = randomValues(rng, size_t(slots) * qDim, 1.f), k = randomValues(rng, size_t(slots) * maxLen * kvDim, 1.f),
         v = randomValues(rng, size_t(slots) * maxLen * kvDim, 1.f);
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x) e = roundBf16(e);
    std::vector<float> ref(size_t(slots) * qDim, 0.f);
    for (int s = 0; s < slots; ++s)
      if (lengths[s] > 0)
        cpu::attention_decode(ref.data() + size_t(s) * qDim, q.data() + size_t(s) * qDim, k.data() + size_t(s) * maxLen * kvDim,
                              v.data() + size_t(s) * maxLen * kvDim, lengths[s], nh, nkv, hd);
    DeviceArray<bf16> dQ(q.size()), dK(k.size()), dV(v.size()), dOut(ref.size());
    DeviceArray<int32_t> dLen(slots);
    DeviceArray<float> work(size_t(cuda::attentionDecodeWorkspace(slots, maxLen, nh)));
    upload(dQ, q);
    upload(dK, k);
    upload(dV, v);
    upload(dLen, lengths);
    poison(dOut);
    cuda::attentionDecode(dQ, qDim, dK, dV, dLen, dOut, qDim, work, slots, maxLen, nh, nkv, hd, nullptr);
    record(std::string("attention decode ") + label, relError(download(dOut), ref), kTolBf16);
  }
  // Short conv step (state update included), against cpu::causal_conv_step.
  {
    auto proj = randomValues(rng, size_t(slots) * 3 * H, 1.f), w = randomValues(rng, size_t(H) * 3, 0.5f),
         state = randomValues(rng, size_t(slots) * 2 * H, 1.f);
    for (auto& e : proj) e = roundBf16(e);
    for (auto& e : w) e = roundBf16(e);
    std::vector<float> y(size_t(slots) * H, 0.f), refState = state, bx(H), conv(H);
    for (int s = 0; s < slots; ++s) {
      if (lengths[s] <= 0) continue;
      const float* row = proj.data() + size_t(s) * 3 * H;
      for (int c = 0; c < H; ++c) bx[c] = row[c] * row[2 * H + c];
      // cpu::causal_conv_step's state is [(K-1), H]: the same layout as the kernel's [2, H] per slot.
      cpu::causal_conv_step(conv.data(), refState.data() + size_t(s) * 2 * H, bx.data(), w.data(), H, 3);
      for (int c = 0; c < H; ++c) y[size_t(s) * H + c] = row[H + c] * conv[c];
    }
    DeviceArray<bf16> dProj(proj.size()), dW(w.size()), dY(y.size());
    DeviceArray<float> dState(state.size());
    DeviceArray<int32_t> dLen(slots);
    upload(dProj, proj);
    upload(dW, w);
    upload(dState, state);
    upload(dLen, lengths);
    poison(dY);
    cuda::shortConvDecode(dProj, dW, dState, dLen, dY, slots, H, nullptr);
    record(std::string("short conv decode y ") + label, relError(download(dY), y), kTolBf16);
    record(std::string("short conv decode state ") + label, relError(download(dState), refState), kTolF32);
  }
  // q/k norm + RoPE + KV append of a decode step, against cpu::rmsnorm_forward + cpu::rope_forward per head:
  // q heads into qOut, k (normed, rotated) and v (as projected) into row lengths[s]-1 of the caches; inactive
  // slots and every other cache row untouched.
  {
    const int qkvDim = qDim + 2 * kvDim;
    auto qkv = randomValues(rng, size_t(slots) * qkvDim, 1.f), qw = randomValues(rng, hd, 0.1f, 1.f),
         kw = randomValues(rng, hd, 0.1f, 1.f);
    for (auto* x : {&qkv, &qw, &kw})
      for (auto& e : *x) e = roundBf16(e);
    std::vector<int32_t> positions(slots);
    for (int s = 0; s < slots; ++s) positions[s] = std::max(0, lengths[s] - 1);
    const float eps = 1e-5f, theta = 1e6f;
    std::vector<float> qRef(size_t(slots) * qDim, 0.f), kRef(size_t(slots) * maxLen * kvDim, 0.f), vRef = kRef;
    for (int s = 0; s < slots; ++s) {
      if (lengths[s] <= 0) continue;
      const float* row = qkv.data() + size_t(s) * qkvDim;
      std::vector<float> q(row, row + qDim), k(row + qDim, row + qDim + kvDim), rstd(nh);
      cpu::rmsnorm_forward(q.data(), rstd.data(), q.data(), qw.data(), nh, hd, eps);
      cpu::rope_forward(q.data(), positions.data() + s, 1, nh, hd, theta);
      cpu::rmsnorm_forward(k.data(), rstd.data(), k.data(), kw.data(), nkv, hd, eps);
      cpu::rope_forward(k.data(), positions.data() + s, 1, nkv, hd, theta);
      std::copy(q.begin(), q.end(), qRef.begin() + size_t(s) * qDim);
      const size_t at = (size_t(s) * maxLen + (lengths[s] - 1)) * kvDim;
      std::copy(k.begin(), k.end(), kRef.begin() + at);
      std::copy(row + qDim + kvDim, row + qkvDim, vRef.begin() + at);
    }
    DeviceArray<bf16> dQkv(qkv.size()), dQw(hd), dKw(hd), dQ(qRef.size()), dKc(kRef.size()), dVc(vRef.size());
    DeviceArray<int32_t> dPos(slots), dLen(slots);
    upload(dQkv, qkv);
    upload(dQw, qw);
    upload(dKw, kw);
    upload(dPos, positions);
    upload(dLen, lengths);
    cuda::fillBf16(dQ, dQ.n, 0.f, nullptr);
    cuda::fillBf16(dKc, dKc.n, 0.f, nullptr);
    cuda::fillBf16(dVc, dVc.n, 0.f, nullptr);
    cuda::headNormRopeDecode(dQkv, qkvDim, dQ, qDim, dQw, dKw, dPos, dLen, dKc, dVc, slots, maxLen, nh, nkv, hd, eps,
                             theta, nullptr);
    record(std::string("q/k norm+rope decode q ") + label, relError(download(dQ), qRef), kTolBf16);
    record(std::string("q/k norm+rope decode k cache ") + label, relError(download(dKc), kRef), kTolBf16);
    record(std::string("q/k norm+rope decode v cache ") + label, relError(download(dVc), vRef), 0);
  }
  // Sampling, against cpu::sample_token with the same logits, seen flags and RNG streams. Both sides run the
  // same Gumbel-max draw on the same fp32 values, so every token must agree (bf16-rounded logits make exact
  // ties common: greedy ties and truncation cuts are resolved identically, lowest id / all ties kept), and the
  // RNG states and seen flags must end equal. Inactive rows must be left untouched.
  struct SampleCase {
    const char* name;
    bool greedy;
    float temperature;
    int topK;
    float topP, minP, penalty;
    bool constrained;
  };
  const SampleCase cases[] = {
      {"greedy", true, 1.f, 0, 1.f, 0.f, 1.f, false},
      {"greedy penalty 1.3", true, 1.f, 0, 1.f, 0.f, 1.3f, false},
      {"T=1", false, 1.f, 0, 1.f, 0.f, 1.f, false},
      {"T=0.7", false, 0.7f, 0, 1.f, 0.f, 1.f, false},
      {"T=0.7 penalty 1.3", false, 0.7f, 0, 1.f, 0.f, 1.3f, false},
      {"top-k 40", false, 1.f, 40, 1.f, 0.f, 1.f, false},
      {"top-p 0.9", false, 1.f, 0, 0.9f, 0.f, 1.f, false},
      {"min-p 0.05 T=0.8", false, 0.8f, 0, 1.f, 0.05f, 1.f, false},
      {"top-k 50 top-p 0.8 min-p 0.02 pen 1.2", false, 1.f, 50, 0.8f, 0.02f, 1.2f, false},
      {"allowed subsets T=1", false, 1.f, 0, 1.f, 0.f, 1.f, true},
      {"allowed subsets top-k 3", false, 1.f, 3, 1.f, 0.f, 1.f, true},
      {"allowed subsets greedy", true, 1.f, 0, 1.f, 0.f, 1.f, true},
  };
  for (const SampleCase& sc : cases) {
    const std::string name = std::string("sample ") + sc.name + " " + label;
    auto logits = randomValues(rng, size_t(slots) * V, 3.f);
    std::vector<uint8_t> seen(size_t(slots) * V);
    for (auto& f : seen) f = rng.next() % 10 == 0;
    std::vector<uint64_t> states(slots);
    for (int s = 0; s < slots; ++s) states[s] = cpu::rng_seed_for(42 + rng.next() % 1000, s);
    // Allowed subsets: slot 0 unconstrained, the others distinct random ids (any order), 1 to ~V/3 of them.
    std::vector<int32_t> begin(slots, 0), count(slots, -1), allowed;
    if (sc.constrained) {
      std::vector<int32_t> perm(V);
      for (int v = 0; v < V; ++v) perm[v] = v;
      for (int s = 1; s < slots; ++s) {
        const int sizes[] = {1, 2, 7, 64, V / 3};
        const int n = std::min(V, sizes[s % 5]);
        for (int i = 0; i < n; ++i) std::swap(perm[i], perm[i + int(rng.next() % uint64_t(V - i))]);
        begin[s] = int32_t(allowed.size());
        count[s] = n;
        allowed.insert(allowed.end(), perm.begin(), perm.begin() + n);
      }
    }
    if (allowed.empty()) allowed.push_back(0);
    cpu::SamplingOptions o;
    o.greedy = sc.greedy;
    o.temperature = sc.temperature;
    o.top_k = sc.topK;
    o.top_p = sc.topP;
    o.min_p = sc.minP;
    o.repetition_penalty = sc.penalty;
    cuda::SamplerParams params;
    params.greedy = sc.greedy;
    params.temperature = sc.temperature;
    params.topK = sc.topK;
    params.topP = sc.topP;
    params.minP = sc.minP;
    params.repetitionPenalty = sc.penalty;
    std::vector<int32_t> refTok(slots, -7);
    std::vector<float> refLp(slots, -7.f);
    std::vector<uint64_t> refStates = states;
    std::vector<uint8_t> refSeen = seen;
    for (int s = 0; s < slots; ++s) {
      if (lengths[s] <= 0) continue;
      const int32_t* allow = count[s] >= 0 ? allowed.data() + begin[s] : nullptr;
      refTok[s] = cpu::sample_token(logits.data() + size_t(s) * V, V, allow, count[s] >= 0 ? count[s] : 0,
                                    refSeen.data() + size_t(s) * V, o, refStates[s], &refLp[s]);
      refSeen[size_t(s) * V + refTok[s]] = 1;
    }
    DeviceArray<float> dLogits(logits.size()), dLp(slots);
    DeviceArray<int32_t> dLen(slots), dBegin(slots), dCount(slots), dTok(slots), dStatus(slots),
        dAllowed(allowed.size());
    DeviceArray<uint64_t> dRng(slots);
    DeviceArray<uint8_t> dSeen(seen.size());
    upload(dLogits, logits);
    upload(dLen, lengths);
    upload(dBegin, begin);
    upload(dCount, count);
    upload(dAllowed, allowed);
    upload(dRng, states);
    upload(dSeen, seen);
    upload(dTok, std::vector<int32_t>(slots, -7));
    upload(dLp, std::vector<float>(slots, -7.f));
    upload(dStatus, std::vector<int32_t>(slots, -7));
    cuda::sampleTokens(dLogits, V, dLen, dBegin, dCount, dAllowed, dSeen, dRng, params, dTok, dLp, dStatus, slots,
                       nullptr);
    std::vector<int32_t> tok(slots), status(slots);
    std::vector<float> lp(slots);
    std::vector<uint64_t> gotStates(slots);
    std::vector<uint8_t> gotSeen(seen.size());
    CHECK_CUDA(cudaMemcpy(tok.data(), dTok.ptr, slots * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(status.data(), dStatus.ptr, slots * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(lp.data(), dLp.ptr, slots * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(gotStates.data(), dRng.ptr, slots * sizeof(uint64_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(gotSeen.data(), dSeen.ptr, seen.size(), cudaMemcpyDeviceToHost));
    int differ = 0, bookkeeping = 0;
    std::vector<float> gotLp, wantLp;
    for (int s = 0; s < slots; ++s) {
      if (lengths[s] <= 0) {  // untouched: no token, log-prob, status or RNG step
        bookkeeping += tok[s] != -7 || lp[s] != -7.f || status[s] != -7 || gotStates[s] != states[s];
        continue;
      }
      differ += tok[s] != refTok[s];
      if (tok[s] != refTok[s])
        std::printf("    slot %d: CUDA token %d, CPU token %d\n", s, tok[s], refTok[s]);
      bookkeeping += status[s] != 0 || gotStates[s] != refStates[s];
      if (tok[s] == refTok[s]) {
        gotLp.push_back(lp[s]);
        wantLp.push_back(refLp[s]);
      }
    }
    bookkeeping += gotSeen != refSeen;
    record(name + ": tokens != CPU's", double(differ), 0.0);
    record(name + ": rng/seen/status/inactive", double(bookkeeping), 0.0);
    record(name + ": logprob", relError(gotLp, wantLp), kTolF32);
  }
}

// ---- attention over the KV cache (decode), against cpu::attention_decode -------------------------------------
// Inputs: q with a per-slot scale (flat and peaked softmaxes), k, v ~ N(0, 1); for kv head 0 the keys at each
// slot's first and last position point along its first query head (score ~6 above the rest), so a lost or
// duplicated boundary key shows. q and out rows are strided (qStride, outStride > qDim) as in the engine.
struct DecodeAttnInputs {
  int slots, maxLen, nh, nkv, qStride, outStride;
  std::vector<float> q, k, v;
};

DecodeAttnInputs makeDecodeAttnInputs(Rng& rng, int slots, int maxLen, int nh, int nkv,
                                      const std::vector<int32_t>& spikeLengths) {
  const int hd = 64, qDim = nh * hd, kvDim = nkv * hd;
  DecodeAttnInputs in{slots, maxLen, nh, nkv, qDim + 32, qDim + 64, {}, {}, {}};
  in.q.assign(size_t(slots) * in.qStride, 0.f);
  for (int s = 0; s < slots; ++s) {
    const float scale = s % 3 == 0 ? 2.5f : (s % 3 == 1 ? 1.f : 0.5f);
    for (int i = 0; i < in.qStride; ++i) in.q[size_t(s) * in.qStride + i] = roundBf16(scale * rng.normal());
  }
  in.k = randomValues(rng, size_t(slots) * maxLen * kvDim, 1.f);
  in.v = randomValues(rng, size_t(slots) * maxLen * kvDim, 1.f);
  for (int s = 0; s < slots; ++s) {
    const int len = spikeLengths[s];
    if (len <= 0) continue;
    const float* q0 = in.q.data() + size_t(s) * in.qStride;  // query head 0 (kv head 0)
    double qq = 0;
    for (int d = 0; d < hd; ++d) qq += double(q0[d]) * q0[d];
    const float c = float(6.0 * std::sqrt(double(hd)) / std::max(qq, 1e-6));  // q0.k / sqrt(hd) = 6
    for (int pos : {0, len - 1})
      for (int d = 0; d < hd; ++d) in.k[(size_t(s) * maxLen + pos) * kvDim + d] = roundBf16(c * q0[d]);
  }
  return in;
}

// Dense [slots, qDim] reference (0 for inactive slots).
std::vector<float> decodeAttnReference(const DecodeAttnInputs& in, const std::vector<int32_t>& lengths) {
  const int hd = 64, qDim = in.nh * hd, kvDim = in.nkv * hd;
  std::vector<float> ref(size_t(in.slots) * qDim, 0.f);
  for (int s = 0; s < in.slots; ++s)
    if (lengths[s] > 0)
      cpu::attention_decode(ref.data() + size_t(s) * qDim, in.q.data() + size_t(s) * in.qStride,
                            in.k.data() + size_t(s) * in.maxLen * kvDim, in.v.data() + size_t(s) * in.maxLen * kvDim,
                            lengths[s], in.nh, in.nkv, hd);
  return ref;
}

// Worst |gpu - ref| / (|ref| + rms of ref's 64-dim head row), per element; inactive rows (all 0) must be
// exactly 0; NaN anywhere fails.
double worstElementError(const std::vector<float>& gpu, const std::vector<float>& ref) {
  if (gpu.size() != ref.size()) return INFINITY;
  double worst = 0;
  for (size_t r = 0; r < ref.size(); r += 64) {
    double ss = 0;
    for (size_t i = r; i < r + 64; ++i) ss += double(ref[i]) * ref[i];
    const double rms = std::sqrt(ss / 64);
    for (size_t i = r; i < r + 64; ++i) {
      if (!std::isfinite(gpu[i])) return NAN;
      const double d = std::fabs(double(gpu[i]) - ref[i]);
      if (d == 0) continue;
      const double bound = std::fabs(double(ref[i])) + rms;
      worst = std::max(worst, bound > 0 ? d / bound : INFINITY);
    }
  }
  return worst;
}

struct DecodeAttnDevice {
  DeviceArray<bf16> q, k, v, out;
  DeviceArray<int32_t> lengths;
  DeviceArray<float> work;
  DecodeAttnDevice(const DecodeAttnInputs& in)
      : q(in.q.size()), k(in.k.size()), v(in.v.size()), out(size_t(in.slots) * in.outStride), lengths(in.slots),
        work(size_t(std::max<int64_t>(1, cuda::attentionDecodeWorkspace(in.slots, in.maxLen, in.nh)))) {
    upload(q, in.q);
    upload(k, in.k);
    upload(v, in.v);
  }
  void run(const DecodeAttnInputs& in, const cuda::AttentionDecodeConfig& config, cudaStream_t stream) {
    cuda::attentionDecode(q, in.qStride, k, v, lengths, out, in.outStride, work, in.slots, in.maxLen, in.nh, in.nkv,
                          64, stream, config);
  }
  // Dense [slots, qDim] from the strided output; *padWritten counts pad elements that lost their NaN poison.
  std::vector<float> result(const DecodeAttnInputs& in, int* padWritten) const {
    const auto all = download(out);
    const int qDim = in.nh * 64;
    std::vector<float> dense(size_t(in.slots) * qDim);
    *padWritten = 0;
    for (int s = 0; s < in.slots; ++s)
      for (int i = 0; i < in.outStride; ++i) {
        const float x = all[size_t(s) * in.outStride + i];
        if (i < qDim) dense[size_t(s) * qDim + i] = x;
        else *padWritten += !std::isnan(x);
      }
    return dense;
  }
};

void recordDecodeAttn(const std::string& name, const std::vector<float>& got, const std::vector<float>& ref,
                      int padWritten) {
  record(name, relError(got, ref), kTolBf16);
  record(name + " (per element)", worstElementError(got, ref), 1e-2);
  record(name + " (row pads untouched)", double(padWritten), 0.0);
}

// One launch on fresh inputs (output and workspace poisoned), then the same again: must be bit-identical.
void checkDecodeAttentionCase(Rng& rng, const std::string& label, int nh, int nkv, int maxLen,
                              const std::vector<int32_t>& lengths, const cuda::AttentionDecodeConfig& config = {}) {
  const int slots = int(lengths.size());
  const DecodeAttnInputs in = makeDecodeAttnInputs(rng, slots, maxLen, nh, nkv, lengths);
  const auto ref = decodeAttnReference(in, lengths);
  DecodeAttnDevice dev(in);
  upload(dev.lengths, lengths);
  poison(dev.out);
  poison(dev.work);
  dev.run(in, config, nullptr);
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaGetLastError());
  int pad = 0;
  const auto got = dev.result(in, &pad);
  const std::string name = "attention decode " + label;
  recordDecodeAttn(name, got, ref, pad);
  poison(dev.out);
  poison(dev.work);
  dev.run(in, config, nullptr);
  CHECK_CUDA(cudaDeviceSynchronize());
  const auto again = dev.result(in, &pad);
  record(name + " (repeat bit-identical)",
         std::memcmp(got.data(), again.data(), got.size() * sizeof(float)) == 0 ? 0.0 : 1.0, 0.0);
}

// Captured once into a graph with one set of lengths, replayed after lengths[] changed on the device (slots
// growing past split boundaries, joining, leaving): the replay must follow the new lengths.
void checkDecodeAttentionGraph(Rng& rng, int nh, int nkv) {
  const int maxLen = 2100;
  const std::vector<int32_t> a = {1, 63, 64, 577, 0, 1024, 2049, 300};
  const std::vector<int32_t> b = {2, 64, 65, 1025, 129, 0, 2100, 33};
  std::vector<int32_t> spikes(a.size());
  for (size_t i = 0; i < a.size(); ++i) spikes[i] = std::max(a[i], b[i]);
  const DecodeAttnInputs in = makeDecodeAttnInputs(rng, int(a.size()), maxLen, nh, nkv, spikes);
  DecodeAttnDevice dev(in);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  upload(dev.lengths, a);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  dev.run(in, cuda::AttentionDecodeConfig{}, stream);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (const auto* lengths : {&a, &b, &a}) {
    upload(dev.lengths, *lengths);
    poison(dev.out);
    poison(dev.work);
    CHECK_CUDA(cudaDeviceSynchronize());  // the poison runs on the legacy stream, the graph on a non-blocking one
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaGetLastError());
    int pad = 0;
    const auto got = dev.result(in, &pad);
    recordDecodeAttn(std::string("attention decode graph replay, lengths ") + (lengths == &a ? "A" : "B"), got,
                     decodeAttnReference(in, *lengths), pad);
  }
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  CHECK_CUDA(cudaStreamDestroy(stream));
}

void checkDecodeAttention(Rng& rng) {
  // LFM2-350M heads (group 2). A few slots: several splits per slot (the SM-covering rule); one slot: many.
  const std::vector<int32_t> edge = {1, 63, 64, 65, 577, 2049, 0, 1000, 2056};
  checkDecodeAttentionCase(rng, "G2 lengths 1..2049 + inactive", 16, 8, 2056, edge);
  checkDecodeAttentionCase(rng, "G2 1 x 577", 16, 8, 577, {577});
  checkDecodeAttentionCase(rng, "G2 1 x 1 (maxLen 600)", 16, 8, 600, {1});
  // 64 slots: one split per slot up to maxSplitKeys, more beyond (2049 -> 3).
  std::vector<int32_t> many(64);
  for (int s = 0; s < 64; ++s) many[s] = s < int(edge.size()) ? edge[s] : 1 + int(rng.next() % 2049);
  many[63] = 0;
  checkDecodeAttentionCase(rng, "G2 64 slots up to 2049", 16, 8, 2056, many);
  // Other split rules (the workspace bound covers every accepted config).
  cuda::AttentionDecodeConfig small;
  small.maxSplitKeys = 1;      // clamped to 256
  small.targetBlocks = 4096;   // clamped to 1024
  checkDecodeAttentionCase(rng, "G2 lengths 1..2049, 256-key splits", 16, 8, 2056, edge, small);
  cuda::AttentionDecodeConfig big;
  big.maxSplitKeys = 4096;
  big.targetBlocks = 1;
  big.pdl = false;
  checkDecodeAttentionCase(rng, "G2 lengths 1..2049, one split, no PDL", 16, 8, 2056, edge, big);
  // Other group sizes: 1, 4, 16 (two blocks of 8 heads per kv head), 3 (LFM2-like odd configs).
  checkDecodeAttentionCase(rng, "G1 (8 heads, 8 kv)", 8, 8, 2049, {1, 65, 577, 0, 2049});
  checkDecodeAttentionCase(rng, "G4 (16 heads, 4 kv)", 16, 4, 2049, {64, 577, 2049, 0});
  checkDecodeAttentionCase(rng, "G16 (16 heads, 1 kv)", 16, 1, 700, {65, 577, 0, 700});
  checkDecodeAttentionCase(rng, "G3 (6 heads, 2 kv)", 6, 2, 1100, {1, 63, 1100});
  checkDecodeAttentionGraph(rng, 16, 8);
}

double medianMs(const std::function<void()>& fn, int reps = 20) {
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<float> times;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    fn();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    times.push_back(ms);
  }
  CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double gBandwidth = 3.0e12, gMatrixRate = 8.0e14;  // replaced by measured ceilings

void addTiming(const std::string& name, double ms, double bytes, double flops) {
  const double memMs = bytes / gBandwidth * 1e3, mathMs = flops / gMatrixRate * 1e3;
  const double floorMs = std::max(memMs, mathMs);
  timings.push_back({name, ms, floorMs, memMs >= mathMs ? "mem" : "math"});
  std::printf("  %-44s %9.3f ms  floor %8.3f ms (%s)  %5.1f%%\n", name.c_str(), ms, floorMs,
              memMs >= mathMs ? "mem" : "math", 100.0 * floorMs / ms);
  std::fflush(stdout);
}

template <typename T>
void fillRandom(DeviceArray<T>& d, Rng& rng, float scale) {
  std::vector<float> h(d.n);
  for (auto& x : h) x = scale * rng.normal();
  upload(d, h);
}

// Attention over the cache at LFM2-350M heads (16 q, 8 kv), every slot at `len` cached keys. K and V sets are
// rotated (at least ~256 MB in all, past the L2) so that each call reads from device memory. Timed twice: as
// plain launches (event-timed, launch latency included) and as replays of a graph of back-to-back calls, as the
// engine runs it (per-call time). The floor: K and V bytes once.
void fillRepeated(DeviceArray<bf16>& d, Rng& rng, float scale) {
  const size_t block = std::min<size_t>(d.n, size_t(1) << 22);
  std::vector<float> h(block);
  for (auto& x : h) x = scale * rng.normal();
  std::vector<bf16> tmp(block);
  for (size_t i = 0; i < block; ++i) tmp[i] = __float2bfloat16_rn(h[i]);
  CHECK_CUDA(cudaMemcpy(d.ptr, tmp.data(), block * sizeof(bf16), cudaMemcpyHostToDevice));
  for (size_t at = block; at < d.n; at += block)
    CHECK_CUDA(cudaMemcpy(d.ptr + at, d.ptr, std::min(block, d.n - at) * sizeof(bf16), cudaMemcpyDeviceToDevice));
}

void timeDecodeAttention(Rng& rng, int slots, int len, const std::vector<cuda::AttentionDecodeConfig>& configs,
                         const std::vector<std::string>& configNames) {
  const int nh = 16, nkv = 8, hd = 64, kvDim = nkv * hd;
  const size_t setElems = size_t(slots) * len * kvDim;
  const double setBytes = 2.0 * setElems * sizeof(bf16);
  const int sets = int(std::min(64.0, std::max(2.0, std::ceil(256e6 / setBytes))));
  DeviceArray<bf16> q(size_t(slots) * nh * hd), k(setElems * sets), v(setElems * sets), out(q.n);
  DeviceArray<int32_t> lengths(slots);
  DeviceArray<float> work(size_t(cuda::attentionDecodeWorkspace(slots, len, nh)));
  fillRandom(q, rng, 1.f);
  fillRepeated(k, rng, 1.f);
  fillRepeated(v, rng, 1.f);
  upload(lengths, std::vector<int32_t>(slots, len));
  CHECK_CUDA(cudaDeviceSynchronize());  // device-to-device copies return early; the graph runs on another stream
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  char shape[64];
  std::snprintf(shape, sizeof shape, "attn decode %d x %d", slots, len);
  for (size_t c = 0; c < configs.size(); ++c) {
    const auto& config = configs[c];
    int turn = 0;
    auto call = [&](cudaStream_t st) {
      const size_t at = size_t(turn++ % sets) * setElems;
      cuda::attentionDecode(q, nh * hd, k.ptr + at, v.ptr + at, lengths, out, nh * hd, work, slots, len, nh, nkv, hd,
                            st, config);
    };
    if (c == 0) {
      const double ms = medianMs([&] { call(nullptr); }, 50);
      addTiming(std::string(shape) + " " + configNames[c] + " stream", ms, setBytes, 0);
    }
    const int calls = std::max(sets, 16);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < calls; ++i) call(stream);
    CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
    CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    std::vector<float> times;
    for (int r = 0; r < 13; ++r) {
      CHECK_CUDA(cudaEventRecord(a, stream));
      CHECK_CUDA(cudaGraphLaunch(exec, stream));
      CHECK_CUDA(cudaEventRecord(b, stream));
      CHECK_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
      if (r >= 3) times.push_back(ms / calls);  // the first replays warm up
    }
    CHECK_CUDA(cudaGetLastError());
    std::sort(times.begin(), times.end());
    addTiming(std::string(shape) + " " + configNames[c] + " graph", times[times.size() / 2], setBytes, 0);
    CHECK_CUDA(cudaEventDestroy(a));
    CHECK_CUDA(cudaEventDestroy(b));
    CHECK_CUDA(cudaGraphExecDestroy(exec));
    CHECK_CUDA(cudaGraphDestroy(graph));
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
}

void timeDecodeAttention(Rng& rng) {
  auto withKeys = [](int keys) {
    cuda::AttentionDecodeConfig c;
    c.maxSplitKeys = keys;
    return c;
  };
  auto withTarget = [](int blocks) {
    cuda::AttentionDecodeConfig c;
    c.targetBlocks = blocks;
    return c;
  };
  cuda::AttentionDecodeConfig noPdl;
  noPdl.pdl = false;
  timeDecodeAttention(rng, 1, 576, {{}, withTarget(132), withTarget(64), noPdl},
                      {"default", "target 132", "target 64", "no PDL"});
  timeDecodeAttention(rng, 64, 576, {{}, withKeys(256), withKeys(512)}, {"default", "split 256", "split 512"});
  timeDecodeAttention(rng, 64, 2048, {{}, withKeys(512), withKeys(2048), noPdl},
                      {"default", "split 512", "split 2048", "no PDL"});
}

void runTimings(Rng& rng, cuda::Gemm& gemm) {
  std::printf("\n== ceilings ==\n");
  {
    const size_t bytes = size_t(2) << 30;
    DeviceArray<uint8_t> a(bytes), b(bytes);
    CHECK_CUDA(cudaMemset(a, 1, bytes));
    const double ms = medianMs([&] { CHECK_CUDA(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice)); }, 10);
    gBandwidth = 2.0 * bytes / (ms * 1e-3);
    std::printf("  device copy: %.2f TB/s (read + write)\n", gBandwidth / 1e12);
    const int n = 8192;
    DeviceArray<bf16> A(size_t(n) * n), B(size_t(n) * n), C(size_t(n) * n);
    fillRandom(A, rng, 1.f);
    fillRandom(B, rng, 1.f);
    const double gms = medianMs([&] {
      gemm.run(false, true, n, n, n, 1.f, A, n, B, n, 0.f, C, cuda::OutType::BF16, n, nullptr);
    }, 10);
    gMatrixRate = 2.0 * n * n * double(n) / (gms * 1e-3);
    std::printf("  bf16 gemm 8192^3 (%s): %.0f TFLOP/s\n", gemm.usesCublasLt() ? "cuBLASLt" : "fallback",
                gMatrixRate / 1e12);
  }
  // LFM2-350M training shapes: 16 x 1024 tokens.
  const int B = 16, T = 1024, rows = B * T, H = 1024, I = 4608, V = 65536, nh = 16, nkv = 8, hd = 64;
  std::printf("\n== kernels at 16x1024 tokens, LFM2-350M sizes ==\n");
  std::vector<uint8_t> mask(rows, 1);
  std::vector<int32_t> ids(rows), positions(rows);
  for (auto& id : ids) id = int32_t(rng.next() % V);
  for (int r = 0; r < rows; ++r) positions[r] = r % T;
  DeviceArray<uint8_t> dMask(rows);
  DeviceArray<int32_t> dIds(rows), dPos(rows);
  upload(dMask, mask);
  upload(dIds, ids);
  upload(dPos, positions);
  DeviceArray<bf16> embed(size_t(V) * H), act(size_t(rows) * 2 * I), act2(size_t(rows) * 2 * I), act3(size_t(rows) * I);
  DeviceArray<float> residual(size_t(rows) * H), dres(size_t(rows) * H), rstd(size_t(rows) * nh), dEmbed(size_t(V) * H),
      dwSmall(I);
  DeviceArray<bf16> wSmall(I);
  fillRandom(embed, rng, 0.02f);
  fillRandom(act, rng, 1.f);
  fillRandom(act2, rng, 1.f);
  fillRandom(residual, rng, 1.f);
  fillRandom(wSmall, rng, 1.f);
  cuda::fillF32(dres, dres.n, 0.f, nullptr);
  cuda::fillF32(dEmbed, dEmbed.n, 0.f, nullptr);
  cuda::fillF32(dwSmall, dwSmall.n, 0.f, nullptr);
  const double b2 = 2, f4 = 4;  // bytes per bf16 / fp32
  double ms;
  ms = medianMs([&] { cuda::embeddingForward(dIds, embed, act3, rows, H, V, nullptr); });
  addTiming("embedding fwd", ms, rows * H * b2 * 2, 0);
  ms = medianMs([&] { cuda::embeddingBackward(dIds, act, nullptr, dEmbed, rows, H, V, nullptr); });
  addTiming("embedding bwd (atomics)", ms, rows * H * (b2 + 2 * f4), 0);
  ms = medianMs([&] { cuda::residualRmsNormForward(residual, act, residual, wSmall, act3, rstd, rows, H, 1e-5f, nullptr); });
  addTiming("residual add + rmsnorm fwd", ms, rows * H * (2 * f4 + 2 * b2), 0);
  ms = medianMs([&] { cuda::rmsNormBackward(act, residual, wSmall, rstd, dres, dwSmall, rows, H, nullptr); });
  addTiming("rmsnorm bwd", ms, rows * H * (b2 + f4 + 2 * f4), 0);
  ms = medianMs([&] { cuda::shortConvForward(act, wSmall, dMask, act3, B, T, H, nullptr); });
  addTiming("shortconv fwd", ms, rows * H * (3 * b2 + b2), 0);
  ms = medianMs([&] { cuda::shortConvBackward(act3, act, wSmall, dMask, act2, dwSmall, B, T, H, nullptr); });
  addTiming("shortconv bwd", ms, rows * H * (b2 + 3 * b2 + 3 * b2), 0);
  const int qkvW = (nh + 2 * nkv) * hd;
  ms = medianMs([&] {
    cuda::headNormRopeForward(act, qkvW, act3, nh * hd, wSmall, dPos, rstd, rows, nh, hd, 1e-5f, 1e6f, nullptr);
  });
  addTiming("q norm+rope fwd (16 heads)", ms, rows * nh * hd * 2 * b2, 0);
  ms = medianMs([&] {
    cuda::headNormRopeBackward(act2, nh * hd, act, qkvW, wSmall, dPos, rstd, act3, nh * hd, dwSmall, rows, nh, hd,
                               1e6f, nullptr);
  });
  addTiming("q norm+rope bwd (16 heads)", ms, rows * nh * hd * 3 * b2, 0);
  ms = medianMs([&] { cuda::swigluForward(act, act3, rows, I, nullptr); });
  addTiming("swiglu fwd", ms, rows * I * 3 * b2, 0);
  ms = medianMs([&] { cuda::swigluBackward(act3, act, act2, rows, I, nullptr); });
  addTiming("swiglu bwd", ms, rows * I * 5 * b2, 0);

  // Attention: q, k, v inside one fused [rows, (16+8+8)*64] buffer.
  {
    const cuda::AttentionShape shape{B, T, nh, nkv, hd};
    const bf16 *Q = act.ptr, *K = act.ptr + nh * hd, *Vp = act.ptr + (nh + nkv) * hd;
    DeviceArray<bf16> out(size_t(rows) * nh * hd), dout(size_t(rows) * nh * hd), dqkv(size_t(rows) * qkvW);
    DeviceArray<float> lse(size_t(B) * nh * T), rowDot(size_t(B) * nh * T);
    fillRandom(dout, rng, 1.f);
    const double causalPairs = double(B) * nh * T * (T + 1) / 2.0;
    const double fwdFlops = 4.0 * causalPairs * hd, bwdFlops = 10.0 * causalPairs * hd;  // FA2 accounting
    for (bool tc : {false, true}) {
      const AttnForwardFn attnForward = tc ? cuda::attentionForward : cuda::attentionForwardSimt;
      const AttnBackwardFn attnBackward = tc ? cuda::attentionBackward : cuda::attentionBackwardSimt;
      ms = medianMs([&] { attnForward(Q, qkvW, K, qkvW, Vp, qkvW, dMask, out, lse, shape, nullptr); }, 5);
      addTiming(tc ? "attention fwd (tensor cores)" : "attention fwd (SIMT)", ms, 0, fwdFlops);
      ms = medianMs([&] {
        attnBackward(Q, qkvW, K, qkvW, Vp, qkvW, dMask, out, dout, lse, dqkv.ptr, qkvW, dqkv.ptr + nh * hd, qkvW,
                     dqkv.ptr + (nh + nkv) * hd, qkvW, rowDot, shape, nullptr);
      }, 5);
      addTiming(tc ? "attention bwd (tensor cores)" : "attention bwd (SIMT)", ms, 0, bwdFlops);
    }
  }

  // GEMMs of one LFM2 layer at these sizes (Linear y = x W^T and its two gradients).
  {
    DeviceArray<bf16> x(size_t(rows) * I), w(size_t(2 * I) * H), y(size_t(rows) * 2 * I);
    DeviceArray<float> dw(size_t(2 * I) * H);
    fillRandom(x, rng, 1.f);
    fillRandom(w, rng, 0.02f);
    cuda::fillF32(dw, dw.n, 0.f, nullptr);
    struct G {
      const char* name;
      int in, out;
    } shapes[] = {{"conv in_proj 1024->3072", H, 3 * H}, {"w1|w3 1024->9216", H, 2 * I}, {"w2 4608->1024", I, H},
                  {"out_proj 1024->1024", H, H}};
    for (const auto& g : shapes) {
      const double flops = 2.0 * rows * g.in * double(g.out);
      ms = medianMs([&] {
        gemm.run(false, true, rows, g.out, g.in, 1.f, x, g.in, w, g.in, 0.f, y, cuda::OutType::BF16, g.out, nullptr);
      });
      addTiming(std::string("gemm fwd ") + g.name, ms, 0, flops);
      ms = medianMs([&] {
        gemm.run(false, false, rows, g.in, g.out, 1.f, y, g.out, w, g.in, 0.f, x, cuda::OutType::BF16, g.in, nullptr);
      });
      addTiming(std::string("gemm dX ") + g.name, ms, 0, flops);
      ms = medianMs([&] {
        gemm.run(true, false, g.out, g.in, rows, 1.f, y, g.out, x, g.in, 1.f, dw, cuda::OutType::F32, g.in, nullptr);
      });
      addTiming(std::string("gemm dW+= ") + g.name, ms, 0, flops);
    }
  }

  // lm_head + logprob over all 16384 positions, chunks of 4096 rows.
  {
    const int chunk = 4096;
    DeviceArray<float> logits(size_t(chunk) * V), lp(rows), ent(rows), lse(rows), dlp(rows);
    DeviceArray<bf16> dlogits(size_t(chunk) * V), hidden(size_t(rows) * H), dhidden(size_t(rows) * H);
    fillRandom(hidden, rng, 1.f);
    fillRandom(dlp, rng, 1.f);
    const double flops = 2.0 * rows * double(H) * V;
    ms = medianMs([&] {
      cuda::lmHeadLogprobForward(gemm, hidden, embed, dIds, 1.f, {}, logits, chunk, lp, ent, lse, rows, H, V, nullptr);
    }, 5);
    addTiming("lm_head+logprob fwd (chunk 4096)", ms, rows * double(V) * f4 * 2, flops);
    ms = medianMs([&] {
      cuda::lmHeadLogprobBackward(gemm, hidden, embed, dIds, 1.f, {}, lse, dlp, logits, dlogits, chunk, dhidden,
                                  dEmbed, rows, H, V, nullptr);
    }, 5);
    addTiming("lm_head+logprob bwd (recompute)", ms, rows * double(V) * (f4 * 2 + b2 * 3), 4 * flops);
  }

  // AdamW over all 354,483,968 parameters.
  {
    const int64_t n = 354483968;
    DeviceArray<float> p(n), g(n), m(n), v(n), partials(cuda::sumSquaresPartialCount()), sum(1);
    DeviceArray<bf16> copy(n);
    cuda::fillF32(p, n, 0.01f, nullptr);
    cuda::fillF32(g, n, 0.001f, nullptr);
    cuda::fillF32(m, n, 0.f, nullptr);
    cuda::fillF32(v, n, 0.f, nullptr);
    cuda::AdamWHyper hp{1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, 1.f};
    ms = medianMs([&] { cuda::adamwStep(p, copy, g, m, v, n, hp, nullptr); }, 10);
    addTiming("adamw (354M params, fp32 master + bf16)", ms, n * (f4 * 7 + b2), 0);
    ms = medianMs([&] { cuda::sumSquares(g, n, partials, sum, nullptr); }, 10);
    addTiming("grad sum of squares (354M)", ms, n * f4, 0);
  }
  // Attention over the cache: batch 1 and 64 at 576 cached tokens (512-token prompts plus 64 new ones), 64 x 2048.
  timeDecodeAttention(rng);
  // Sampling at 64 sequences with 576 cached tokens.
  {
    const int slots = 64, len = 576, V = 65536;
    DeviceArray<int32_t> lengths(slots), begin(slots), count(slots), tok(slots), status(slots), allowed(1);
    DeviceArray<float> logits(size_t(slots) * V), lp(slots);
    DeviceArray<uint64_t> rngs(slots);
    fillRandom(logits, rng, 3.f);
    upload(lengths, std::vector<int32_t>(slots, len));
    upload(begin, std::vector<int32_t>(slots, 0));
    upload(count, std::vector<int32_t>(slots, -1));
    upload(rngs, std::vector<uint64_t>(slots, 7));
    cuda::SamplerParams params;
    double ms = medianMs([&] {
      cuda::sampleTokens(logits, V, lengths, begin, count, allowed, nullptr, rngs, params, tok, lp, status, slots,
                         nullptr);
    });
    addTiming("sample (64 rows x 65536, T=1)", ms, double(logits.n) * 4, 0);
    params.greedy = true;
    ms = medianMs([&] {
      cuda::sampleTokens(logits, V, lengths, begin, count, allowed, nullptr, rngs, params, tok, lp, status, slots,
                         nullptr);
    });
    addTiming("sample greedy (64 rows x 65536)", ms, double(logits.n) * 4, 0);
    params.greedy = false;
    params.topK = 50;
    params.topP = 0.9f;
    ms = medianMs([&] {
      cuda::sampleTokens(logits, V, lengths, begin, count, allowed, nullptr, rngs, params, tok, lp, status, slots,
                         nullptr);
    });
    addTiming("sample top-k 50, top-p 0.9 (64 x 65536)", ms, double(logits.n) * 4, 0);
  }
}

int main(int argc, char** argv) {
  bool timing = true;
  uint64_t seed = 1234;
  std::string only;  // --only attention: just that family's checks (e.g. under compute-sanitizer)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--no-timing")) timing = false;
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else {
      std::fprintf(stderr, "usage: check_kernels [--no-timing] [--seed N] [--only attention|attention-decode]\n");
      return 2;
    }
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / 1073741824.0);
  Rng rng{seed};
  cuda::Gemm gemm;
  cuda::Gemm fallback(0, true);
  std::printf("gemm backend: %s %s\n", gemm.usesCublasLt() ? "cuBLASLt" : "fallback kernel", gemm.fallbackReason());

  std::printf("\n== correctness vs the fp32 CPU ops (seed %llu) ==\n", (unsigned long long)seed);
  // Small model, odd sizes, left padding, a fully padded-to-one-token sequence.
  const Shape small{3, 77, 256, 4, 2, 64, 520, 1000, {77, 50, 1}};
  // LFM2-350M widths with a short sequence crossing the attention tiles (128 rows, 64 keys).
  const Shape wide{2, 200, 1024, 16, 8, 64, 4608, 65536, {200, 131}};
  const bool all = only.empty();
  if (all) {
    checkEmbedding(rng, small);
    checkRmsNorm(rng, small);
    checkRmsNorm(rng, wide);
    checkShortConv(rng, small);
    checkShortConv(rng, wide);
    checkHeadNormRope(rng, small);
    checkHeadNormRope(rng, wide);
    checkSwiglu(rng, small);
    checkSwiglu(rng, wide);
  }
  if (all || only == "attention") {
    for (bool tc : {false, true}) {
      checkAttention(rng, small, "small", tc);
      checkAttention(rng, wide, "350M-heads T=200", tc);
    }
  }
  if (all) {
    checkGemm(rng, gemm, gemm.usesCublasLt() ? "cublasLt" : "fallback");
    checkGemm(rng, fallback, "fallback");
    checkLmHead(rng, gemm, 100, 256, 1000, false, "small");
    checkLmHead(rng, gemm, 100, 256, 1000, true, "small constrained");
    checkLmHead(rng, gemm, 40, 1024, 65536, false, "350M vocab");
    checkAdamW(rng);
    checkDecode(rng, 5, 150, 256, 4, 2, 1000, "small");
    checkDecode(rng, 33, 600, 1024, 16, 8, 65536, "350M");
  }
  if (all || only == "attention-decode") checkDecodeAttention(rng);
  if (checks.empty()) {
    std::fprintf(stderr, "no checks match --only %s\n", only.c_str());
    return 2;
  }
  CHECK_CUDA(cudaDeviceSynchronize());

  if (timing) runTimings(rng, gemm);

  int failed = 0;
  for (const auto& c : checks) failed += !c.pass;
  std::printf("\n== summary ==\n");
  if (!timings.empty()) {
    std::printf("%-44s %10s %10s %6s\n", "kernel", "ms", "floor ms", "%floor");
    for (const auto& t : timings)
      std::printf("%-44s %10.3f %10.3f %5.1f%%\n", t.name.c_str(), t.ms, t.floorMs, 100.0 * t.floorMs / t.ms);
  }
  for (const auto& c : checks)
    if (!c.pass) std::printf("FAILED: %s (rel.err %.3e > %.0e)\n", c.name.c_str(), c.relError, c.tolerance);
  std::printf("%d passed, %d failed\n", int(checks.size()) - failed, failed);
  return failed ? 1 : 0;
}
