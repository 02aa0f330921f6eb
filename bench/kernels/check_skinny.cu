// Harness of the skinny decode GEMM (native/src/cuda/gemm_skinny.cu): Y[M,N] = X[M,K] · W[N,K]^T at the LFM2-350M
// decode shapes, against a host fp32 reference, bit-identical reruns, eager vs graph replay, and timings against
// the same product through cuda::Gemm (cuBLASLt).
//   check_skinny [--quick] [--sweep] [--verbose] [--seed N] [--reps N]
//     --quick    correctness only (no timings)
//     --sweep    also time every (warpsN, warpsK, splits) plan per shape and M, and print the best ones
//     --verbose  print every passing check too (failures always print)
// Exits 1 when any check fails. Outputs are poisoned (all bits set: NaN) before every run, so an unwritten element
// fails; the padding of strided Y rows must stay poisoned (no stray writes). Inputs are bf16 values from a
// splitmix64 stream (never zeros). Timings: a CUDA graph of L launches (the engine replays decode steps as graphs),
// rotating among copies of W totalling > 150 MB so that W streams from HBM, not from the 50-60 MB L2; the median
// over replays of (replay time / L). X stays L2-resident, as in decoding (the previous kernel just wrote it).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "cuda/gemm_skinny.h"
#include "cuda/kernels.h"
#include "harness.h"

using namespace webgrpo;
using cuda::bf16;
using cuda::OutType;


namespace {

constexpr double kPeakBytesPerS = 4.8e12;  // H200 datasheet HBM bandwidth
constexpr double kTolBf16 = 1e-2, kTolF32 = 1e-3;


// bf16 values in [-scale, scale), stored both as bf16 (for the device) and as float (the same values).
void randomBf16(uint64_t seed, size_t n, float scale, std::vector<bf16>& raw, std::vector<float>& values) {
  raw.resize(n);
  values.resize(n);
  uint64_t state = seed;
  for (size_t i = 0; i < n; ++i) {
    const float u = float(cpu::rng_next(state) >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    raw[i] = __float2bfloat16_rn(scale * (2.f * u - 1.f));
    values[i] = __bfloat162float(raw[i]);
  }
}


struct Case {
  std::string name;
  int N, K;
  OutType out;
  std::vector<int> Ms;
  int64_t ldxExtra = 0, ldyExtra = 0;  // strided views: ldx = K + ldxExtra, ldy = N + ldyExtra
  int xOffset = 0;                      // X view starts this many elements into its buffer (a multiple of 8)
  bool timed = true;
};

struct Result {
  std::string name;
  int M;
  bool pass = true;
  double oursUs = NAN, cublasUs = NAN, bytes = 0;
  std::string plan;
};

int failures = 0;
bool verbose = false;

// Failures always print; passing checks with --verbose (each (shape, M) prints one line with its heuristic plan).
void report(bool ok, const std::string& what, bool always = false) {
  if (!ok) ++failures;
  if (!ok || verbose || always) std::printf("  %-72s %s\n", what.c_str(), ok ? "ok" : "FAIL");
}

std::string planString(const cuda::SkinnyPlanInfo& p) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "rows%d x%d wn%d wk%d S%d ctas%d smem%zuK", p.rowsPerChunk, p.mChunks, p.warpsN,
                p.warpsK, p.splits, p.ctas, p.smemBytes / 1024);
  return buf;
}

// Per-element error |y - ref| / (|ref| + rms(ref)) (max) and ||y - ref|| / ||ref||; non-finite fails.
struct ErrorStats {
  double maxElem = 0, relL2 = 0;
  size_t nonFinite = 0;
  long firstBadM = -1, firstBadN = -1;
};

// Host reference: ref[m * cols.size() + c] = sum_k X[m,k] W[cols[c],k] in fp32 (8 partial sums).
std::vector<float> reference(const std::vector<float>& x, int64_t ldx, int xOffset, const std::vector<float>& w,
                             int K, int M, const std::vector<int>& cols) {
  std::vector<float> ref(size_t(M) * cols.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (long c = 0; c < long(cols.size()); ++c) {
    const float* wr = w.data() + size_t(cols[c]) * K;
    for (int m = 0; m < M; ++m) {
      const float* xr = x.data() + xOffset + size_t(m) * ldx;
      float s[8] = {};
      for (int k = 0; k < K; k += 8)
        for (int e = 0; e < 8; ++e) s[e] += xr[k + e] * wr[k + e];
      ref[size_t(m) * cols.size() + c] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
  }
  return ref;
}

// Downloads Y [M rows of ldy] as floats (bf16 or fp32) plus its raw bytes.
void downloadY(const void* dY, OutType type, int M, int64_t ldy, std::vector<float>& values,
               std::vector<unsigned char>& raw) {
  const size_t elemBytes = type == OutType::F32 ? 4 : 2;
  raw.resize(size_t(M) * ldy * elemBytes);
  CHECK_CUDA(cudaMemcpy(raw.data(), dY, raw.size(), cudaMemcpyDeviceToHost));
  values.resize(size_t(M) * ldy);
  for (size_t i = 0; i < values.size(); ++i) {
    if (type == OutType::F32) {
      std::memcpy(&values[i], raw.data() + 4 * i, 4);
    } else {
      bf16 b;
      std::memcpy(&b, raw.data() + 2 * i, 2);
      values[i] = __bfloat162float(b);
    }
  }
}

ErrorStats compare(const std::vector<float>& y, int64_t ldy, const std::vector<float>& ref, int M, int N,
                   const std::vector<int>& cols) {
  ErrorStats st;
  double rms = 0;
  for (float r : ref) rms += double(r) * r;
  rms = std::sqrt(rms / std::max<size_t>(1, ref.size()));
  double num = 0, den = 0;
  for (int m = 0; m < M; ++m) {
    // Every element must be finite (also those the reference does not cover).
    for (int n = 0; n < N; ++n)
      if (!std::isfinite(y[size_t(m) * ldy + n])) {
        if (st.nonFinite++ == 0) st.firstBadM = m, st.firstBadN = n;
      }
    for (size_t c = 0; c < cols.size(); ++c) {
      const double r = ref[size_t(m) * cols.size() + c], v = y[size_t(m) * ldy + cols[c]];
      if (!std::isfinite(v)) continue;
      const double e = std::fabs(v - r) / (std::fabs(r) + rms);
      if (e > st.maxElem) {
        st.maxElem = e;
        if (e > 1e-3) st.firstBadM = m, st.firstBadN = cols[c];
      }
      num += (v - r) * (v - r);
      den += r * r;
    }
  }
  st.relL2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return st;
}

// Padding of strided Y rows (columns N .. ldy-1) must still hold the poison bytes.
bool paddingUntouched(const std::vector<unsigned char>& raw, OutType type, int M, int N, int64_t ldy) {
  const size_t e = type == OutType::F32 ? 4 : 2;
  for (int m = 0; m < M; ++m)
    for (int64_t n = N; n < ldy; ++n)
      for (size_t b = 0; b < e; ++b)
        if (raw[(size_t(m) * ldy + n) * e + b] != 0xFF) return false;
  return true;
}

// Median per-launch time (us) of a graph of `perGraph` launches, replayed `reps` times.
double graphUs(cudaStream_t stream, const std::function<void(int)>& launch, int perGraph, int reps) {
  for (int i = 0; i < 3; ++i) launch(i);  // eager warm-up (plans, cuBLASLt's tuning) before capture
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < perGraph; ++i) launch(i);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<float> times;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    times.push_back(ms);
  }
  CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(times.begin(), times.end());
  return 1e3 * times[times.size() / 2] / perGraph;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, sweep = false;
  uint64_t seed = 20251;
  int reps = 30;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--sweep")) sweep = true;
    else if (!std::strcmp(argv[i], "--verbose")) verbose = true;
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(3, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: check_skinny [--quick] [--sweep] [--verbose] [--seed N] [--reps N]\n");
      return 2;
    }
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cuda::Gemm gemm;
  std::printf("cuda::Gemm backend: %s %s\n", gemm.usesCublasLt() ? "cuBLASLt" : "fallback kernel (NOT cuBLASLt)",
              gemm.fallbackReason());
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  const std::vector<int> decodeMs = {1, 2, 8, 16, 64, 128, 256};
  std::vector<Case> cases = {
      {"conv in_proj 3072x1024", 3072, 1024, OutType::BF16, decodeMs},
      {"out_proj/o_proj 1024x1024 (strided X, Y)", 1024, 1024, OutType::BF16, decodeMs, 1024, 64, 8},
      {"q|k|v 2048x1024", 2048, 1024, OutType::BF16, decodeMs},
      {"w1|w3 9216x1024", 9216, 1024, OutType::BF16, decodeMs},
      {"w2 1024x4608", 1024, 4608, OutType::BF16, decodeMs},
      {"lm_head 65536x1024 (fp32 out)", 65536, 1024, OutType::F32, decodeMs},
      // Odd sizes: N not a multiple of the 32-row warp tile, K not a multiple of the 64-wide iteration, strided.
      {"odd 1000x520 bf16 (strided)", 1000, 520, OutType::BF16, {1, 3, 9, 37, 100, 200}, 24, 5, 16, false},
      {"odd 1000x520 fp32 (strided)", 1000, 520, OutType::F32, {5, 64, 65}, 8, 3, 8, false},
      {"tiny 24x8", 24, 8, OutType::F32, {1, 7, 33}, 0, 0, 0, false},
  };
  // Forced plans besides the heuristic's: every code path (no split, split-K with uneven shares, warps splitting
  // K inside the CTA, one-warp CTAs, PDL off).
  std::vector<std::pair<std::string, cuda::SkinnyConfig>> forced = {
      {"wn1 wk1 S1", {1, 1, 1, true}},
      {"wn8 wk1 S1", {8, 1, 1, true}},
      {"wn2 wk4 S3", {2, 4, 3, true}},
      {"wn1 wk8 S5 pdl-off", {1, 8, 5, false}},
      {"wn4 wk2 S7", {4, 2, 7, true}},
  };

  DeviceArray<float> workspace(size_t(64) << 20);  // 256 MB of fp32 partials
  std::vector<Result> results;

  std::printf("\n== correctness (seed %llu) ==\n", (unsigned long long)seed);
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& cs = cases[ci];
    const int N = cs.N, K = cs.K;
    const int maxM = *std::max_element(cs.Ms.begin(), cs.Ms.end());
    const int64_t ldx = K + cs.ldxExtra, ldy = N + cs.ldyExtra, ldw = K;
    std::vector<bf16> wRaw, xRaw;
    std::vector<float> w, x;
    randomBf16(seed * 1000 + ci * 2, size_t(N) * K, 1.f / std::sqrt(float(K)), wRaw, w);
    randomBf16(seed * 1000 + ci * 2 + 1, size_t(cs.xOffset) + size_t(maxM) * ldx, 1.f, xRaw, x);
    DeviceArray<bf16> dW(wRaw.size()), dX(xRaw.size());
    CHECK_CUDA(cudaMemcpy(dW.ptr, wRaw.data(), wRaw.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dX.ptr, xRaw.data(), xRaw.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    const bf16* X = dX.ptr + cs.xOffset;
    const size_t outBytes = cs.out == OutType::F32 ? 4 : 2;
    DeviceArray<unsigned char> dY(size_t(maxM) * ldy * outBytes), dY2(size_t(maxM) * ldy * outBytes);
    // Columns the reference covers: all, or for the vocabulary-sized product the first and last 2048 and every
    // 17th (every tile position and both ends; all columns are still checked for being written and finite).
    std::vector<int> cols;
    for (int n = 0; n < N; ++n)
      if (N <= 16384 || n < 2048 || n >= N - 2048 || n % 17 == 0) cols.push_back(n);
    std::printf("%s\n", cs.name.c_str());
    for (int M : cs.Ms) {
      Result res{cs.name, M};
      if (!cuda::skinnyGemmSupported(M, N, K)) {
        report(false, "M=" + std::to_string(M) + ": skinnyGemmSupported says no");
        res.pass = false;
        results.push_back(res);
        continue;
      }
      const auto ref = reference(x, ldx, cs.xOffset, w, K, M, cols);
      const double tol = cs.out == OutType::F32 ? kTolF32 : kTolBf16;
      std::vector<float> y, y2;
      std::vector<unsigned char> raw, raw2;
      auto runOnce = [&](const cuda::SkinnyConfig* cfg, void* out) {
        CHECK_CUDA(cudaMemsetAsync(out, 0xFF, size_t(M) * ldy * outBytes, stream));
        if (cfg)
          cuda::skinnyGemm(M, N, K, X, ldx, dW.ptr, ldw, out, cs.out, ldy, workspace.ptr, stream, *cfg);
        else
          cuda::skinnyGemm(M, N, K, X, ldx, dW.ptr, ldw, out, cs.out, ldy, workspace.ptr, stream);
        CHECK_CUDA(cudaStreamSynchronize(stream));
        CHECK_CUDA(cudaGetLastError());
      };
      auto checkOne = [&](const std::string& label, const cuda::SkinnyConfig* cfg) {
        const auto plan = cuda::skinnyGemmPlan(M, N, K, cfg ? *cfg : cuda::SkinnyConfig{});
        if (plan.workspaceBytes > workspace.n * sizeof(float)) {
          if (verbose) std::printf("  M=%-3d %-20s skipped (workspace over this harness's 256 MB)\n", M, label.c_str());
          return;
        }
        runOnce(cfg, dY.ptr);
        downloadY(dY.ptr, cs.out, M, ldy, y, raw);
        const ErrorStats st = compare(y, ldy, ref, M, N, cols);
        const bool pad = paddingUntouched(raw, cs.out, M, N, ldy);
        const bool ok = st.nonFinite == 0 && st.maxElem <= tol && st.relL2 <= tol && pad;
        char line[256];
        std::snprintf(line, sizeof line, "M=%-3d %-20s max elem err %.2e  rel L2 %.2e%s%s [%s]", M, label.c_str(),
                      st.maxElem, st.relL2, st.nonFinite ? " NON-FINITE" : "", pad ? "" : " PADDING WRITTEN",
                      planString(plan).c_str());
        report(ok, line, cfg == nullptr);
        if (!ok && st.firstBadM >= 0) std::printf("    first bad element: m=%ld n=%ld\n", st.firstBadM, st.firstBadN);
        res.pass = res.pass && ok;
      };
      checkOne("heuristic", nullptr);
      // Rerun (fresh poison): bit-identical.
      runOnce(nullptr, dY2.ptr);
      downloadY(dY2.ptr, cs.out, M, ldy, y2, raw2);
      const bool same = raw == raw2;
      report(same, "M=" + std::to_string(M) + " heuristic rerun bit-identical");
      res.pass = res.pass && same;
      // The same call captured into a graph and replayed: identical to the eager run.
      {
        CHECK_CUDA(cudaMemsetAsync(dY2.ptr, 0xFF, size_t(M) * ldy * outBytes, stream));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        cuda::skinnyGemm(M, N, K, X, ldx, dW.ptr, ldw, dY2.ptr, cs.out, ldy, workspace.ptr, stream);
        CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
        CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        CHECK_CUDA(cudaGraphLaunch(exec, stream));
        CHECK_CUDA(cudaStreamSynchronize(stream));
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        downloadY(dY2.ptr, cs.out, M, ldy, y2, raw2);
        const bool g = raw == raw2;
        report(g, "M=" + std::to_string(M) + " graph replay identical to eager");
        res.pass = res.pass && g;
      }
      for (const auto& [label, cfg] : forced) checkOne(label, &cfg);
      // Without a workspace: a plan without split-K (or an std::invalid_argument where none exists).
      try {
        CHECK_CUDA(cudaMemsetAsync(dY2.ptr, 0xFF, size_t(M) * ldy * outBytes, stream));
        cuda::skinnyGemm(M, N, K, X, ldx, dW.ptr, ldw, dY2.ptr, cs.out, ldy, nullptr, stream);
        CHECK_CUDA(cudaStreamSynchronize(stream));
        CHECK_CUDA(cudaGetLastError());
        downloadY(dY2.ptr, cs.out, M, ldy, y2, raw2);
        const ErrorStats st = compare(y2, ldy, ref, M, N, cols);
        const bool ok = st.nonFinite == 0 && st.maxElem <= tol && st.relL2 <= tol;
        char line[160];
        std::snprintf(line, sizeof line, "M=%-3d %-20s max elem err %.2e  rel L2 %.2e", M, "no workspace",
                      st.maxElem, st.relL2);
        report(ok, line);
        res.pass = res.pass && ok;
      } catch (const std::invalid_argument& e) {
        if (verbose) std::printf("  M=%-3d no workspace: refused (%s)\n", M, e.what());
      }
      res.plan = planString(cuda::skinnyGemmPlan(M, N, K));
      res.bytes = 2.0 * N * K + 2.0 * M * K + double(M) * N * outBytes;
      results.push_back(res);
    }
  }

  if (!quick) {
    std::printf("\n== timings (graph of launches, median of %d replays; W rotated over > 150 MB) ==\n", reps);
    {
      const size_t bytes = size_t(1) << 30;
      DeviceArray<unsigned char> a(bytes), b(bytes);
      CHECK_CUDA(cudaMemset(a.ptr, 1, bytes));
      const double us = graphUs(
          stream, [&](int) { CHECK_CUDA(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice, stream)); },
          4, 5);
      std::printf("  device copy 1 GiB: %.2f TB/s (read + write)\n", 2.0 * bytes / (us * 1e-6) / 1e12);
    }
    size_t ri = 0;
    for (const Case& cs : cases) {
      if (!cs.timed) {
        while (ri < results.size() && results[ri].name == cs.name) ++ri;
        continue;
      }
      const int N = cs.N, K = cs.K;
      const int maxM = *std::max_element(cs.Ms.begin(), cs.Ms.end());
      const int64_t ldx = K + cs.ldxExtra, ldy = N + cs.ldyExtra, ldw = K;
      const size_t wElems = size_t(N) * K;
      const int copies = int(std::max<size_t>(1, (size_t(150) << 20) / (wElems * 2) + 1));
      DeviceArray<bf16> dW(wElems * copies), dX(size_t(cs.xOffset) + size_t(maxM) * ldx);
      {
        std::vector<bf16> raw;
        std::vector<float> vals;
        randomBf16(seed + 77, wElems, 1.f / std::sqrt(float(K)), raw, vals);
        for (int c = 0; c < copies; ++c)
          CHECK_CUDA(cudaMemcpy(dW.ptr + c * wElems, raw.data(), wElems * sizeof(bf16), cudaMemcpyHostToDevice));
        randomBf16(seed + 78, dX.n, 1.f, raw, vals);
        CHECK_CUDA(cudaMemcpy(dX.ptr, raw.data(), dX.n * sizeof(bf16), cudaMemcpyHostToDevice));
      }
      const bf16* X = dX.ptr + cs.xOffset;
      const size_t outBytes = cs.out == OutType::F32 ? 4 : 2;
      DeviceArray<unsigned char> dY(size_t(maxM) * ldy * outBytes);
      const int perGraph = std::max(20, copies);
      for (int M : cs.Ms) {
        Result& res = results[ri++];
        auto ours = [&](const cuda::SkinnyConfig& cfg) {
          return graphUs(
              stream,
              [&](int i) {
                cuda::skinnyGemm(M, N, K, X, ldx, dW.ptr + size_t(i % copies) * wElems, ldw, dY.ptr, cs.out, ldy,
                                 workspace.ptr, stream, cfg);
              },
              perGraph, reps);
        };
        res.oursUs = ours(cuda::SkinnyConfig{});
        res.cublasUs = graphUs(
            stream,
            [&](int i) {
              gemm.run(false, true, M, N, K, 1.f, X, ldx, dW.ptr + size_t(i % copies) * wElems, ldw, 0.f, dY.ptr,
                       cs.out, ldy, stream);
            },
            perGraph, reps);
        const double gbs = res.bytes / (res.oursUs * 1e-6) / 1e9;
        std::printf("  %-42s M=%-3d ours %8.2f us  cuBLASLt %8.2f us  %6.0f GB/s  %5.1f%%  x%.2f  %s  [%s]\n",
                    cs.name.c_str(), M, res.oursUs, res.cublasUs, gbs, 100.0 * gbs * 1e9 / kPeakBytesPerS,
                    res.cublasUs / res.oursUs, res.pass ? "PASS" : "FAIL", res.plan.c_str());
        std::fflush(stdout);
        if (sweep) {
          struct Entry {
            double us;
            std::string plan;
            cuda::SkinnyConfig cfg;
          };
          std::vector<Entry> entries;
          std::vector<std::string> seen;
          for (int wn : {1, 2, 4, 8})
            for (int wk : {1, 2, 4, 8})
              for (int s : {1, 2, 3, 4, 6, 8, 12, 16}) {
                if (wn * wk > 8) continue;
                const cuda::SkinnyConfig cfg{wn, wk, s, true};
                const auto plan = cuda::skinnyGemmPlan(M, N, K, cfg);
                if (plan.workspaceBytes > workspace.n * sizeof(float)) continue;
                const std::string ps = planString(plan);
                if (std::find(seen.begin(), seen.end(), ps) != seen.end()) continue;
                seen.push_back(ps);
                entries.push_back({ours(cfg), ps, cfg});
              }
          std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.us < b.us; });
          for (size_t e = 0; e < std::min<size_t>(3, entries.size()); ++e)
            std::printf("      sweep #%zu %8.2f us  %6.0f GB/s  [%s]  (est. %.2f us)\n", e + 1, entries[e].us,
                        res.bytes / (entries[e].us * 1e-6) / 1e9, entries[e].plan.c_str(),
                        cuda::skinnyGemmPlan(M, N, K, entries[e].cfg).estimatedUs);
          std::printf("      heuristic est. %.2f us; PDL off for the best: %.2f us\n",
                      cuda::skinnyGemmPlan(M, N, K).estimatedUs,
                      ours({entries[0].cfg.warpsN, entries[0].cfg.warpsK, entries[0].cfg.splits, false}));
          std::fflush(stdout);
        }
      }
    }
  }

  std::printf("\n== summary ==\n");
  std::printf("%-42s %4s %10s %10s %8s %6s %6s %s\n", "shape (N x K)", "M", "ours us", "cuBLASLt", "GB/s", "%4.8T",
              "speedup", "check");
  for (const auto& r : results) {
    if (std::isnan(r.oursUs)) {
      std::printf("%-42s %4d %10s %10s %8s %6s %6s %s\n", r.name.c_str(), r.M, "-", "-", "-", "-", "-",
                  r.pass ? "PASS" : "FAIL");
      continue;
    }
    const double gbs = r.bytes / (r.oursUs * 1e-6) / 1e9;
    std::printf("%-42s %4d %10.2f %10.2f %8.0f %5.1f%% %6.2f %s\n", r.name.c_str(), r.M, r.oursUs, r.cublasUs, gbs,
                100.0 * gbs * 1e9 / kPeakBytesPerS, r.cublasUs / r.oursUs, r.pass ? "PASS" : "FAIL");
  }
  int passed = 0, failedCases = 0;
  for (const auto& r : results) (r.pass ? passed : failedCases)++;
  std::printf("%d passed, %d failed\n", passed, failedCases);
  if (failures) std::printf("FAILED: %d check(s)\n", failures);
  CHECK_CUDA(cudaStreamDestroy(stream));
  return failures ? 1 : 0;
}
