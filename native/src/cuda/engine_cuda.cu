// The CUDA engine: LFM2 forward (score, forwardLogits), backward and AdamW on one GPU, from the kernels in
// kernels.h. Parameters live in fp32 master arenas (same layout as the CPU engine: lfm2ParameterTable order)
// with a bf16 compute copy; gradients and AdamW moments are fp32 arenas of the same layout. Because the table
// puts w1,w3 and q,k,v next to each other, the fused [w1;w3] and [q;k;v] projections are plain views.
// Activations live in one device arena that is sized for the largest batch seen and only grows, so a training
// loop of fixed shapes allocates nothing after its first step. generate() decodes from KV and conv-state caches
// in their own arena (also grow-only), one CUDA graph per decode step.
// Environment switches: WEBGRPO_CUDA_RECOMPUTE=1 (keep only layer inputs, recompute in backward);
// WEBGRPO_CUDA_ATTENTION=simt (CUDA-core attention kernels instead of the tensor-core ones);
// WEBGRPO_CUDA_GRAPHS=0 (decode without CUDA graphs); WEBGRPO_CUDA_DECODE_PROFILE=1 (time the decode step's
// kernels, see DecodeProfiler).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "common.cuh"
#include "cpu/ops.h"
#include "cuda/engine_cuda.h"
#include "engine.h"
#include "gemm_skinny.h"
#include "kernels.h"

namespace webgrpo {
namespace {

using cuda::bf16;
using std::vector;

// ---- small helper kernels -----------------------------------------------------------------------------------
__global__ void gatherRowsKernel(const bf16* __restrict__ src, const int32_t* __restrict__ rows, bf16* __restrict__ dst,
                                 int dim) {
  const int64_t r = blockIdx.x;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[r * dim + i] = src[int64_t(rows[r]) * dim + i];
}

// dst[rows[r]] = src[r]; dst is zeroed by the caller. Scored rows are distinct, so no two blocks write one row.
__global__ void scatterRowsKernel(const bf16* __restrict__ src, const int32_t* __restrict__ rows, bf16* __restrict__ dst,
                                  int dim) {
  const int64_t r = blockIdx.x;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[int64_t(rows[r]) * dim + i] = src[r * dim + i];
}

// How a forward pass applies LoRA adapters: on or off, and with dropout (a training pass) or without.
struct AdapterPass {
  bool on = true;
  bool dropout = false;
  uint64_t dropoutSeed = 0;  // with the adapter's index, seeds its mask, so backward regenerates the same one
};

// ---- device memory ------------------------------------------------------------------------------------------
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void allocate(size_t bytes) {
    release();
    if (bytes) WG_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    bytes_ = bytes;
  }
  // Keeps the memory when it is already large enough.
  void ensure(size_t bytes) {
    if (bytes > bytes_) allocate(bytes);
  }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  char* data() const { return static_cast<char*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Hands out 256-byte aligned slices of an arena; first a dry run measures the size.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += size_t(count) * sizeof(T);
    return p;
  }
  size_t used() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// Pointers into the activation arena for one batch shape.
struct LayerActs {
  float* xIn = nullptr;   // residual stream entering the layer (fp32)
  float* xMid = nullptr;  // after the operator's residual add
  float *rstdOp = nullptr, *rstdFfn = nullptr;
  bf16 *normed = nullptr, *ffnIn = nullptr;
  bf16 *proj = nullptr, *y = nullptr;                                  // conv: [N,3H], [N,H]
  bf16 *qkv = nullptr, *qk = nullptr, *attn = nullptr;                 // attention: raw qkv, normed+roped q|k, out
  float *rstdQ = nullptr, *rstdK = nullptr, *lse = nullptr;
  bf16* gateUp = nullptr;  // [N, 2I]
};

struct Acts {
  int64_t batch = 0, seqLen = 0;
  vector<LayerActs> layers;
  float *xLast = nullptr, *rstdFinal = nullptr;
  bf16* xFinal = nullptr;
  int32_t *tokens = nullptr, *positions = nullptr;
  uint8_t* mask = nullptr;
  bf16* delta = nullptr;  // [N, H] branch output before its residual add
  // Backward scratch.
  float* dx = nullptr;                       // residual-stream gradient [N,H]
  bf16 *dxBf16 = nullptr, *dNormed = nullptr;  // [N,H]
  bf16 *dGateUp = nullptr, *dAct = nullptr, *actScratch = nullptr;
  bf16 *dProj = nullptr, *dY = nullptr;
  bf16 *dAttn = nullptr, *dQk = nullptr, *dQkv = nullptr;
  float* rowDot = nullptr;
  // LoRA: each adapter's A·x [N, rank] (kept for backward), its gradient, and dropout scratch [N, widest input].
  vector<bf16*> loraU;
  bf16 *loraDu = nullptr, *loraXd = nullptr, *loraT = nullptr;
};

// WEBGRPO_CUDA_DECODE_PROFILE=1: generate() runs its decode steps without graphs, each behind a GPU sleep (so
// the host has enqueued the whole step before it starts), with an event after every kernel group; at the end of
// generate() it prints each group's GPU time per step to stderr. Where the decode step's time goes.
class DecodeProfiler {
 public:
  ~DecodeProfiler() { dropEvents(); }
  void beginStep(cudaStream_t stream) {
    cuda::gpuSleep(20000, stream);
    mark("(start)", stream);
  }
  void mark(const char* label, cudaStream_t stream) {
    cudaEvent_t e = nullptr;
    WG_CUDA_CHECK(cudaEventCreate(&e));
    WG_CUDA_CHECK(cudaEventRecord(e, stream));
    marks_.push_back({label, e});
  }
  void endStep() {
    WG_CUDA_CHECK(cudaEventSynchronize(marks_.back().second));
    for (size_t i = 1; i < marks_.size(); i++) {
      float ms = 0;
      WG_CUDA_CHECK(cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second));
      auto it = std::find_if(totals_.begin(), totals_.end(), [&](const auto& t) { return t.first == marks_[i].first; });
      if (it == totals_.end()) totals_.push_back({marks_[i].first, double(ms)});
      else it->second += ms;
    }
    dropEvents();
    steps_++;
  }
  void report(int64_t slots) {
    if (steps_ == 0) return;
    double sum = 0;
    for (const auto& t : totals_) sum += t.second;
    std::fprintf(stderr, "decode profile: %lld slots, %lld steps, %.1f us of GPU time per step\n", (long long)slots,
                 (long long)steps_, 1e3 * sum / steps_);
    auto sorted = totals_;
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    for (const auto& t : sorted)
      std::fprintf(stderr, "  %-24s %9.1f us/step %5.1f%%\n", t.first.c_str(), 1e3 * t.second / steps_, 100 * t.second / sum);
    totals_.clear();
    steps_ = 0;
  }

 private:
  void dropEvents() {
    for (auto& m : marks_) cudaEventDestroy(m.second);
    marks_.clear();
  }
  std::vector<std::pair<std::string, cudaEvent_t>> marks_;
  std::vector<std::pair<std::string, double>> totals_;
  int64_t steps_ = 0;
};

class CudaEngine final : public Engine {
 public:
  CudaEngine(const ModelConfig& config, int threads) : cfg_(config), threads_(threads) {
    cfg_.validate();
    cuda::require(cfg_.headDim == 64, "cuda engine: head_dim must be 64 (the attention kernels' size), got " +
                                          std::to_string(cfg_.headDim));
    cuda::require(cfg_.convKernel == 3, "cuda engine: conv kernel width must be 3, got " +
                                            std::to_string(cfg_.convKernel));
    cuda::require(cfg_.hiddenSize % 8 == 0 && cfg_.intermediateSize % 8 == 0,
                  "cuda engine: hidden and intermediate sizes must be multiples of 8");
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      throw std::runtime_error("cuda engine: no CUDA device is visible");
    table_ = lfm2ParameterTable(cfg_);
    int64_t offset = 0;
    for (size_t i = 0; i < table_.size(); i++) {
      index_[table_[i].name] = i;
      // Each tensor starts on a 16-element boundary so that bf16 views are 32-byte aligned for the GEMMs.
      offset = (offset + 15) / 16 * 16;
      offsets_.push_back(offset);
      numels_.push_back(shapeNumel(table_[i].shape));
      offset += numels_.back();
    }
    total_ = offset;
    embedding_ = offsetOf("model.embed_tokens.weight");
    finalNorm_ = offsetOf("model.embedding_norm.weight");
    lmHead_ = cfg_.tieEmbeddings ? embedding_ : offsetOf("lm_head.weight");
    layers_ = lfm2LayerOffsets(cfg_, [this](const std::string& name) { return offsetOf(name); });
    // The fused GEMMs read w1|w3 and q|k|v as one matrix each.
    const int64_t qDim = cfg_.numHeads * cfg_.headDim, kvDim = cfg_.numKvHeads * cfg_.headDim;
    for (const LayerOffsets& lo : layers_) {
      cuda::require(lo.w3 == lo.w1 + cfg_.intermediateSize * cfg_.hiddenSize,
                    "cuda engine: w1 and w3 must be adjacent in the parameter table");
      if (lo.q >= 0)
        cuda::require(lo.k == lo.q + qDim * cfg_.hiddenSize && lo.v == lo.k + kvDim * cfg_.hiddenSize,
                      "cuda engine: q, k, v projections must be adjacent in the parameter table");
    }
    // WEBGRPO_CUDA_ATTENTION=simt selects the CUDA-core attention kernels (the checked reference) over the
    // tensor-core ones.
    if (const char* choice = std::getenv("WEBGRPO_CUDA_ATTENTION")) simtAttention_ = std::string(choice) == "simt";
    // WEBGRPO_CUDA_RECOMPUTE=1 keeps only each layer's input for backward and recomputes the rest layer by layer
    // (about one more forward pass of work for a fraction of the activation memory).
    if (const char* choice = std::getenv("WEBGRPO_CUDA_RECOMPUTE")) recompute_ = std::string(choice) == "1";
    // WEBGRPO_CUDA_GRAPHS=0 launches generate()'s decode kernels one by one instead of as one CUDA graph per step.
    if (const char* choice = std::getenv("WEBGRPO_CUDA_GRAPHS")) useGraphs_ = std::string(choice) != "0";
    // WEBGRPO_CUDA_SKINNY=0 sends the decode step's few-row products to cuBLASLt instead of the skinny kernel.
    if (const char* choice = std::getenv("WEBGRPO_CUDA_SKINNY")) useSkinny_ = std::string(choice) != "0";
    if (const char* choice = std::getenv("WEBGRPO_CUDA_DECODE_PROFILE"); choice && std::string(choice) == "1") {
      profiler_ = std::make_unique<DecodeProfiler>();
      useGraphs_ = false;
    }
    WG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_ = std::make_unique<cuda::Gemm>();
    master_.allocate(total_ * sizeof(float));
    compute_.allocate(total_ * sizeof(bf16));
    grads_.allocate(total_ * sizeof(float));
    adamM_.allocate(total_ * sizeof(float));
    adamV_.allocate(total_ * sizeof(float));
    partials_.allocate((cuda::sumSquaresPartialCount() + 1) * sizeof(float));
    cuda::fillF32(masterPtr(), total_, 0.f, stream_);
    cuda::fillF32(gradPtr(), total_, 0.f, stream_);
    cuda::fillF32(momentPtr('m'), total_, 0.f, stream_);
    cuda::fillF32(momentPtr('v'), total_, 0.f, stream_);
    // Norm weights start at 1 so a fresh model is usable before initRandom/setParameter (as on the CPU).
    for (size_t i = 0; i < table_.size(); i++)
      if (isNormWeight(table_[i].name)) cuda::fillF32(masterPtr() + offsets_[i], numels_[i], 1.f, stream_);
    refreshComputeCopy();
    sync();
  }

  ~CudaEngine() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::CUDA; }
  const ModelConfig& config() const override { return cfg_; }
  std::vector<ParameterInfo> parameterInfo() const override { return table_; }

  std::vector<ParameterInfo> trainableInfo() const override { return lora_ ? loraPlan_.table : table_; }

  void setParameter(const std::string& name, const Tensor& value) override {
    const Slice t = locate("setParameter", name);
    checkParameterShape("setParameter", name, t.shape, value.shape());
    const vector<float> host = value.toFloat32();
    if (t.adapter) {
      uploadSlice(loraPtr(loraMaster_) + t.offset, host);
      cuda::convertF32ToBf16(loraPtr(loraMaster_) + t.offset, loraComputePtr() + t.offset, t.numel, stream_);
      mergedStale_ = true;
    } else {
      writeBase(t.offset, host);
    }
    sync();
  }

  Tensor getParameter(const std::string& name) const override {
    const Slice t = locate("getParameter", name);
    if (t.adapter) return download(loraPtr(loraMaster_) + t.offset, t);
    if (master_.data()) return download(masterPtr() + t.offset, t);
    // LoRA froze the base in bf16 (no fp32 master): widen the compute copy.
    DeviceBuffer wide;
    wide.allocate(t.numel * sizeof(float));
    cuda::bf16ToF32(computePtr() + t.offset, reinterpret_cast<float*>(wide.data()), t.numel, stream_);
    return download(reinterpret_cast<float*>(wide.data()), t);
  }
  Tensor getGradient(const std::string& name) const override {
    const Slice t = locate("getGradient", name);
    return download(trainableSlice("getGradient", name, t, 'g'), t);
  }
  Tensor getOptimizerState(const std::string& name, char which) const override {
    const Slice t = locate("getOptimizerState", name);
    return download(trainableSlice("getOptimizerState", name, t, which), t);
  }
  void setOptimizerState(const std::string& name, char which, const Tensor& value) override {
    const Slice t = locate("setOptimizerState", name);
    checkParameterShape("setOptimizerState", name, t.shape, value.shape());
    uploadSlice(trainableSlice("setOptimizerState", name, t, which), value.toFloat32());
    sync();
  }

  // Adapters as the CPU engine makes them (planLora: same names, layout and initial values); the base is then
  // frozen in bf16: its fp32 master, gradients and AdamW moments are freed.
  void enableLora(const LoraConfig& lc) override {
    if (lora_) throw std::runtime_error("enableLora: this model already has LoRA adapters");
    loraPlan_ = planLora(cfg_, lc, table_, [this](const std::string& name) { return offsetOf(name); });
    for (size_t i = 0; i < loraPlan_.table.size(); i++) loraIndex_[loraPlan_.table[i].name] = i;
    for (size_t i = 0; i < loraPlan_.adapters.size(); i++) adapterOf_[loraPlan_.adapters[i].baseOffset] = i;
    loraRank_ = lc.rank;
    loraDropout_ = lc.dropout;
    const int64_t n = loraPlan_.total;
    for (DeviceBuffer* b : {&loraMaster_, &loraGrads_, &loraM_, &loraV_}) {
      b->allocate(n * sizeof(float));
      cuda::fillF32(reinterpret_cast<float*>(b->data()), n, 0.f, stream_);
    }
    loraCompute_.allocate(n * sizeof(bf16));
    uploadSlice(loraPtr(loraMaster_), loraPlan_.initial(lc.seed));
    cuda::convertF32ToBf16(loraPtr(loraMaster_), loraComputePtr(), n, stream_);
    // Scratch for the gradients of frozen norm and conv weights that the fused backward kernels still produce.
    frozenScratch_.allocate(std::max<int64_t>(3 * cfg_.hiddenSize, cfg_.headDim) * sizeof(float));
    sync();
    master_.release();
    grads_.release();
    adamM_.release();
    adamV_.release();
    lora_ = true;
    mergedStale_ = true;
  }

  // initialParameterValues, as on the CPU, so both backends start from identical weights.
  void initRandom(uint64_t seed, float initializerRange) override {
    if (!(initializerRange >= 0)) throw std::invalid_argument("initRandom: initializerRange must be >= 0");
    vector<float> host;
    for (size_t i = 0; i < table_.size(); i++) {
      host.resize(numels_[i]);
      initialParameterValues(cfg_, table_, i, seed, initializerRange, host.data());
      writeBase(offsets_[i], host);
    }
    sync();
  }

  std::vector<float> forwardLogits(const TokenBatchView& batch) override {
    validateBatch("forwardLogits", batch);
    prepareBatch(batch, /*withBackward=*/false);
    pass_ = AdapterPass{};
    forward();
    const int64_t N = batch.batch * batch.seqLen, H = cfg_.hiddenSize, V = cfg_.vocabSize;
    DeviceBuffer logits;
    logits.allocate(size_t(N) * V * sizeof(float));  // tests and small models only, per the contract
    gemm_->run(false, true, int(N), int(V), int(H), 1.f, acts_.xFinal, H, computePtr() + lmHead_, H, 0.f,
               logits.data(), cuda::OutType::F32, V, stream_);
    vector<float> out(size_t(N) * V);
    WG_CUDA_CHECK(cudaMemcpyAsync(out.data(), logits.data(), out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    sync();
    return out;
  }

  ScoreOutput score(const ScoreArgs& args) override {
    const TokenBatchView& batch = args.batch;
    validateBatch("score", batch);
    if (!(args.temperature > 0)) throw std::invalid_argument("score: temperature must be > 0");
    const int64_t H = cfg_.hiddenSize, V = cfg_.vocabSize;
    const ScoredPositions scored = collectScoredPositions(args, V);
    const int64_t S = int64_t(scored.rows.size());
    const vector<int32_t> scoredRows(scored.rows.begin(), scored.rows.end());  // validateBatch bounds them to int32
    prepareBatch(batch, args.keepActivations);
    pass_ = AdapterPass{args.adapters, args.keepActivations && loraDropout_ > 0, args.dropoutSeed};
    forward();
    prepareScoring(scoredRows, scored.targets, scored.allowedOffsets, scored.allowedTokens);
    temperature_ = args.temperature;
    ScoreOutput out;
    out.logprobs.resize(S);
    out.entropy.resize(S);
    if (S > 0) {
      gatherRowsKernel<<<unsigned(S), 256, 0, stream_>>>(acts_.xFinal, score_.rows, score_.hidden, int(H));
      WG_LAUNCH_CHECK(gatherRowsKernel);
      cuda::lmHeadLogprobForward(*gemm_, score_.hidden, computePtr() + lmHead_, score_.targets, 1.f / temperature_,
                                 score_.allowed, score_.logits, score_.chunkRows, score_.logprob, score_.entropy,
                                 score_.lse, int(S), int(H), int(V), stream_);
      WG_CUDA_CHECK(cudaMemcpyAsync(out.logprobs.data(), score_.logprob, S * sizeof(float), cudaMemcpyDeviceToHost, stream_));
      WG_CUDA_CHECK(cudaMemcpyAsync(out.entropy.data(), score_.entropy, S * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    }
    sync();
    haveActivations_ = args.keepActivations;
    scoredCount_ = S;
    return out;
  }

  void backward(const float* dLogprobs, int64_t count) override {
    if (!haveActivations_)
      throw std::runtime_error("backward: no activations kept; call score() with keepActivations: true first");
    if (lora_ && !pass_.on)
      throw std::runtime_error("backward: the last score() ran with adapters: false; the adapters get no gradient from it");
    if (count != scoredCount_)
      throw std::invalid_argument("backward: dLogprobs has " + std::to_string(count) +
                                  " values, the last score() scored " + std::to_string(scoredCount_) + " positions");
    const int64_t B = acts_.batch, T = acts_.seqLen, N = B * T, H = cfg_.hiddenSize, I = cfg_.intermediateSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim;
    const int64_t qDim = nh * hd, kvDim = nkv * hd, qkvDim = qDim + 2 * kvDim, qkDim = qDim + kvDim;
    const int64_t S = scoredCount_, V = cfg_.vocabSize;
    Acts& a = acts_;
    using cuda::OutType;

    // lm_head + log-softmax, then into the final norm's output rows.
    cuda::fillBf16(a.dNormed, N * H, 0.f, stream_);
    if (S > 0) {
      WG_CUDA_CHECK(cudaMemcpyAsync(score_.dlogprob, dLogprobs, S * sizeof(float), cudaMemcpyHostToDevice, stream_));
      cuda::lmHeadLogprobBackward(*gemm_, score_.hidden, computePtr() + lmHead_, score_.targets, 1.f / temperature_,
                                  score_.allowed, score_.lse, score_.dlogprob, score_.logits, score_.dlogits,
                                  score_.chunkRows, score_.dhidden, baseGrad(lmHead_), int(S), int(H), int(V), stream_);
      scatterRowsKernel<<<unsigned(S), 256, 0, stream_>>>(score_.dhidden, score_.rows, a.dNormed, int(H));
      WG_LAUNCH_CHECK(scatterRowsKernel);
    }
    cuda::fillF32(a.dx, N * H, 0.f, stream_);
    cuda::rmsNormBackward(a.dNormed, a.xLast, computePtr() + finalNorm_, a.rstdFinal, a.dx, smallGrad(finalNorm_), N,
                          int(H), stream_);

    for (int64_t l = cfg_.numLayers - 1; l >= 0; l--) {
      const LayerOffsets& lo = layers_[l];
      const LayerActs& la = a.layers[l];
      if (recompute_) layerForward(l, la.xIn, nullptr, /*withFfnOutput=*/false);  // refill the shared buffers
      // Feed forward: x_out = x_mid + w2(silu(w1 f) * w3 f), f = ffn_norm(x_mid).
      cuda::convertF32ToBf16(a.dx, a.dxBf16, N * H, stream_);
      cuda::swigluForward(la.gateUp, a.actScratch, N, int(I), stream_);  // recomputed instead of kept
      if (!lora_)
        gemm_->run(true, false, int(H), int(I), int(N), 1.f, a.dxBf16, H, a.actScratch, I, 1.f, gradPtr() + lo.w2,
                   OutType::F32, I, stream_);
      gemm_->run(false, false, int(N), int(I), int(H), 1.f, a.dxBf16, H, computePtr() + lo.w2, I, 0.f, a.dAct,
                 OutType::BF16, I, stream_);
      adapterBackward(lo.w2, a.dxBf16, H, a.actScratch, I, a.dAct, I, N);
      cuda::swigluBackward(a.dAct, la.gateUp, a.dGateUp, N, int(I), stream_);
      if (!lora_)
        gemm_->run(true, false, int(2 * I), int(H), int(N), 1.f, a.dGateUp, 2 * I, la.ffnIn, H, 1.f,
                   gradPtr() + lo.w1, OutType::F32, H, stream_);
      gemm_->run(false, false, int(N), int(H), int(2 * I), 1.f, a.dGateUp, 2 * I, computePtr() + lo.w1, H, 0.f,
                 a.dNormed, OutType::BF16, H, stream_);
      adapterBackward(lo.w1, a.dGateUp, 2 * I, la.ffnIn, H, a.dNormed, H, N);
      adapterBackward(lo.w3, a.dGateUp + I, 2 * I, la.ffnIn, H, a.dNormed, H, N);
      cuda::rmsNormBackward(a.dNormed, la.xMid, computePtr() + lo.ffnNorm, la.rstdFfn, a.dx, smallGrad(lo.ffnNorm), N,
                            int(H), stream_);
      // Operator: x_mid = x_in + op(operator_norm(x_in)).
      cuda::convertF32ToBf16(a.dx, a.dxBf16, N * H, stream_);
      if (cfg_.layerTypes[l] == LayerKind::Conv) {
        if (!lora_)
          gemm_->run(true, false, int(H), int(H), int(N), 1.f, a.dxBf16, H, la.y, H, 1.f, gradPtr() + lo.outProj,
                     OutType::F32, H, stream_);
        gemm_->run(false, false, int(N), int(H), int(H), 1.f, a.dxBf16, H, computePtr() + lo.outProj, H, 0.f, a.dY,
                   OutType::BF16, H, stream_);
        adapterBackward(lo.outProj, a.dxBf16, H, la.y, H, a.dY, H, N);
        // dProj is 0 at padded rows, so in_proj's gradients see only real tokens (the CPU masks normed instead).
        cuda::shortConvBackward(a.dY, la.proj, computePtr() + lo.convWeight, a.mask, a.dProj,
                                smallGrad(lo.convWeight), int(B), int(T), int(H), stream_);
        if (!lora_)
          gemm_->run(true, false, int(3 * H), int(H), int(N), 1.f, a.dProj, 3 * H, la.normed, H, 1.f,
                     gradPtr() + lo.inProj, OutType::F32, H, stream_);
        gemm_->run(false, false, int(N), int(H), int(3 * H), 1.f, a.dProj, 3 * H, computePtr() + lo.inProj, H, 0.f,
                   a.dNormed, OutType::BF16, H, stream_);
        adapterBackward(lo.inProj, a.dProj, 3 * H, la.normed, H, a.dNormed, H, N);
      } else {
        if (!lora_)
          gemm_->run(true, false, int(H), int(qDim), int(N), 1.f, a.dxBf16, H, la.attn, qDim, 1.f, gradPtr() + lo.o,
                     OutType::F32, qDim, stream_);
        gemm_->run(false, false, int(N), int(qDim), int(H), 1.f, a.dxBf16, H, computePtr() + lo.o, qDim, 0.f, a.dAttn,
                   OutType::BF16, qDim, stream_);
        adapterBackward(lo.o, a.dxBf16, H, la.attn, qDim, a.dAttn, qDim, N);
        const cuda::AttentionShape shape{int(B), int(T), int(nh), int(nkv), int(hd)};
        // dq, dk (after norm + RoPE) into dQk; dv straight into the raw-projection gradient.
        (simtAttention_ ? cuda::attentionBackwardSimt : cuda::attentionBackward)(
            la.qk, qkDim, la.qk + qDim, qkDim, la.qkv + qkDim, qkvDim, a.mask, la.attn, a.dAttn, la.lse, a.dQk, qkDim,
            a.dQk + qDim, qkDim, a.dQkv + qkDim, qkvDim, a.rowDot, shape, stream_);
        cuda::headNormRopeBackward(a.dQk, qkDim, la.qkv, qkvDim, computePtr() + lo.qNorm, a.positions, la.rstdQ, a.dQkv,
                                   qkvDim, smallGrad(lo.qNorm), N, int(nh), int(hd), cfg_.ropeTheta, stream_);
        cuda::headNormRopeBackward(a.dQk + qDim, qkDim, la.qkv + qDim, qkvDim, computePtr() + lo.kNorm, a.positions,
                                   la.rstdK, a.dQkv + qDim, qkvDim, smallGrad(lo.kNorm), N, int(nkv), int(hd),
                                   cfg_.ropeTheta, stream_);
        if (!lora_)
          gemm_->run(true, false, int(qkvDim), int(H), int(N), 1.f, a.dQkv, qkvDim, la.normed, H, 1.f,
                     gradPtr() + lo.q, OutType::F32, H, stream_);
        gemm_->run(false, false, int(N), int(H), int(qkvDim), 1.f, a.dQkv, qkvDim, computePtr() + lo.q, H, 0.f,
                   a.dNormed, OutType::BF16, H, stream_);
        adapterBackward(lo.q, a.dQkv, qkvDim, la.normed, H, a.dNormed, H, N);
        adapterBackward(lo.k, a.dQkv + qDim, qkvDim, la.normed, H, a.dNormed, H, N);
        adapterBackward(lo.v, a.dQkv + qkDim, qkvDim, la.normed, H, a.dNormed, H, N);
      }
      cuda::rmsNormBackward(a.dNormed, la.xIn, computePtr() + lo.operatorNorm, la.rstdOp, a.dx,
                            smallGrad(lo.operatorNorm), N, int(H), stream_);
    }
    if (!lora_) cuda::embeddingBackward(a.tokens, a.dx, nullptr, gradPtr() + embedding_, N, int(H), int(V), stream_);
    sync();
  }

  void zeroGrad() override {
    cuda::fillF32(trainGradPtr(), trainableTotal(), 0.f, stream_);
    sync();
  }

  double gradNorm() override {
    float* partials = reinterpret_cast<float*>(partials_.data());
    float* result = partials + cuda::sumSquaresPartialCount();
    cuda::sumSquares(trainGradPtr(), trainableTotal(), partials, result, stream_);
    float sumSq = 0;
    WG_CUDA_CHECK(cudaMemcpyAsync(&sumSq, result, sizeof(float), cudaMemcpyDeviceToHost, stream_));
    sync();
    return std::sqrt(double(sumSq));
  }

  void adamwStep(const AdamWArgs& args) override {
    if (args.step < 1)
      throw std::invalid_argument("adamwStep: step must be >= 1 (it is 1-based), got " + std::to_string(args.step));
    if (!(args.beta1 >= 0 && args.beta1 < 1) || !(args.beta2 >= 0 && args.beta2 < 1))
      throw std::invalid_argument("adamwStep: beta1 and beta2 must be in [0, 1)");
    if (!(args.eps > 0)) throw std::invalid_argument("adamwStep: eps must be > 0");
    if (args.step > std::numeric_limits<int>::max()) throw std::invalid_argument("adamwStep: step is too large");
    const cuda::AdamWHyper hyper{args.lr, args.beta1, args.beta2, args.eps, args.weightDecay, int(args.step),
                                 args.gradScale};
    // The padding between tensors (alignment) is zero in every arena, so it stays zero.
    if (lora_) {
      cuda::adamwStep(loraPtr(loraMaster_), loraComputePtr(), loraPtr(loraGrads_), loraPtr(loraM_), loraPtr(loraV_),
                      loraPlan_.total, hyper, stream_);
      mergedStale_ = true;
    } else {
      cuda::adamwStep(masterPtr(), computePtr(), gradPtr(), momentPtr('m'), momentPtr('v'), total_, hyper, stream_);
    }
    sync();
  }

  std::unique_ptr<DecodeSlots> createDecodeSlots(const GenerationSettings& settings) override;

 private:
  // Device state for the scored positions of the last score().
  struct ScoreState {
    int32_t *rows = nullptr, *targets = nullptr;
    cuda::AllowedTokensDevice allowed;
    bf16 *hidden = nullptr, *dhidden = nullptr, *dlogits = nullptr;
    float *logits = nullptr, *logprob = nullptr, *entropy = nullptr, *lse = nullptr, *dlogprob = nullptr;
    int chunkRows = 0;
  };

  // Decoding buffers for `slots` sequences of up to maxLen cached tokens (generate()).
  struct DecodeState {
    int64_t slots = 0, maxLen = 0;
    float *x = nullptr, *rstd = nullptr, *logits = nullptr, *logprob = nullptr;
    float* attnWorkspace = nullptr;
    bf16 *normed = nullptr, *proj = nullptr, *y = nullptr, *qkv = nullptr, *q = nullptr, *attn = nullptr;
    bf16 *gateUp = nullptr, *act = nullptr, *delta = nullptr, *xFinal = nullptr;
    int32_t *tokens = nullptr, *status = nullptr, *stepInts = nullptr;
    int32_t *prefillRow = nullptr, *promptLen = nullptr, *srcRows = nullptr, *dstRows = nullptr;
    uint64_t* rng = nullptr;
    uint8_t* seen = nullptr;                 // [slots, vocab], only with a repetition penalty
    vector<bf16*> kCache, vCache;            // per layer, attention layers only
    vector<float*> convState;                // per layer, conv layers only
    // Pinned host mirrors of the per-step traffic.
    int32_t *hostStep = nullptr, *hostTokens = nullptr, *hostStatus = nullptr;
    float* hostLogprobs = nullptr;
    // stepInts = positions | lengths | allowedBegin | allowedCount | allowed tokens
    int32_t* positions() const { return stepInts; }
    int32_t* lengths() const { return stepInts + slots; }
    int32_t* allowedBegin() const { return stepInts + 2 * slots; }
    int32_t* allowedCount() const { return stepInts + 3 * slots; }
    int32_t* allowedTokens() const { return stepInts + 4 * slots; }
  };

  class PinnedBuffer {
   public:
    PinnedBuffer() = default;
    ~PinnedBuffer() {
      if (ptr_) cudaFreeHost(ptr_);
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    void ensure(size_t bytes) {
      if (bytes <= bytes_) return;
      if (ptr_) cudaFreeHost(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
      WG_CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
      bytes_ = bytes;
    }
    char* data() const { return static_cast<char*>(ptr_); }

   private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
  };

  struct GraphGuard {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    GraphGuard() = default;
    GraphGuard(const GraphGuard&) = delete;
    GraphGuard& operator=(const GraphGuard&) = delete;
    ~GraphGuard() {
      if (exec) cudaGraphExecDestroy(exec);
      if (graph) cudaGraphDestroy(graph);
    }
  };

  // Where the prefill forward copies each layer's cache to (see layerForward).
  struct PrefillTarget {
    int slots = 0, seqLen = 0;
  };

  void prepareDecode(int64_t S, int64_t maxLen, int64_t allowedCapacity, bool withSeen) {
    const int64_t H = cfg_.hiddenSize, I = cfg_.intermediateSize, V = cfg_.vocabSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim;
    const int64_t qDim = nh * hd, kvDim = nkv * hd, qkvDim = qDim + 2 * kvDim;
    auto layout = [&](char* base) {
      Carver c(base);
      DecodeState d;
      d.slots = S;
      d.maxLen = maxLen;
      d.x = c.take<float>(S * H);
      d.rstd = c.take<float>(S);
      d.logits = c.take<float>(S * V);
      d.logprob = c.take<float>(S);
      d.attnWorkspace = c.take<float>(cuda::attentionDecodeWorkspace(int(S), int(maxLen), int(nh)));
      d.normed = c.take<bf16>(S * H);
      d.proj = c.take<bf16>(S * 3 * H);
      d.y = c.take<bf16>(S * H);
      d.qkv = c.take<bf16>(S * qkvDim);
      d.q = c.take<bf16>(S * qDim);
      d.attn = c.take<bf16>(S * qDim);
      d.gateUp = c.take<bf16>(S * 2 * I);
      d.act = c.take<bf16>(S * I);
      d.delta = c.take<bf16>(S * H);
      d.xFinal = c.take<bf16>(S * H);
      d.tokens = c.take<int32_t>(S);
      d.status = c.take<int32_t>(S);
      d.stepInts = c.take<int32_t>(4 * S + allowedCapacity);
      d.prefillRow = c.take<int32_t>(S);
      d.promptLen = c.take<int32_t>(S);
      d.srcRows = c.take<int32_t>(S);
      d.dstRows = c.take<int32_t>(S);
      d.rng = c.take<uint64_t>(S);
      if (withSeen) d.seen = c.take<uint8_t>(S * V);
      d.kCache.assign(cfg_.numLayers, nullptr);
      d.vCache.assign(cfg_.numLayers, nullptr);
      d.convState.assign(cfg_.numLayers, nullptr);
      for (int64_t l = 0; l < cfg_.numLayers; l++) {
        if (cfg_.layerTypes[l] == LayerKind::Conv) {
          d.convState[l] = c.take<float>(S * 2 * H);
        } else {
          d.kCache[l] = c.take<bf16>(S * maxLen * kvDim);
          d.vCache[l] = c.take<bf16>(S * maxLen * kvDim);
        }
      }
      return std::make_pair(d, c.used());
    };
    decodeArena_.ensure(layout(nullptr).second);
    dec_ = layout(decodeArena_.data()).first;
    const size_t stepBytes = (4 * S + allowedCapacity) * sizeof(int32_t);
    const size_t hostBytes = stepBytes + S * (2 * sizeof(int32_t) + sizeof(float)) + 64;
    decodeHost_.ensure(hostBytes);
    dec_.hostStep = reinterpret_cast<int32_t*>(decodeHost_.data());
    dec_.hostTokens = reinterpret_cast<int32_t*>(decodeHost_.data() + stepBytes);
    dec_.hostStatus = dec_.hostTokens + S;
    dec_.hostLogprobs = reinterpret_cast<float*>(dec_.hostStatus + S);
  }

  friend class CudaDecodeSlots;

  // Prefills the joining rows: their distinct prompts go through the forward pass in left-padded chunks of at
  // most kPrefillTokens padded tokens, which fill each row's caches and final hidden state (rows that share a
  // prompt get copies); then their sampler streams and penalty marks are set and one lm_head GEMM gives every
  // row's first logits (the other rows' logits are overwritten; nothing reads them).
  void prefill(const vector<SlotJoin>& joins, bool penalty) {
    DecodeState& d = dec_;
    const int64_t S = d.slots, H = cfg_.hiddenSize, V = cfg_.vocabSize;
    vector<const vector<int32_t>*> distinct;
    for (const SlotJoin& j : joins)
      if (std::find(distinct.begin(), distinct.end(), j.prompt) == distinct.end()) distinct.push_back(j.prompt);
    for (const SlotJoin& j : joins) {
      WG_CUDA_CHECK(cudaMemcpyAsync(d.rng + j.slot, &j.rngSeed, sizeof(uint64_t), cudaMemcpyHostToDevice, stream_));
      if (penalty) WG_CUDA_CHECK(cudaMemsetAsync(d.seen + int64_t(j.slot) * V, 0, size_t(V), stream_));
    }
    size_t next = 0;
    while (next < distinct.size()) {
      // The chunk: as many prompts as fit the token budget (at least one).
      size_t end = next;
      int64_t T = 0;
      while (end < distinct.size()) {
        const int64_t len = int64_t(distinct[end]->size());
        if (end > next && int64_t(end - next + 1) * std::max(T, len) > kPrefillTokens) break;
        T = std::max(T, len);
        end++;
      }
      const int64_t rows = int64_t(end - next);
      vector<int32_t> tokens(rows * T, 0);
      vector<uint8_t> mask(rows * T, 0);
      for (int64_t r = 0; r < rows; r++) {
        const vector<int32_t>& prompt = *distinct[next + r];
        const int64_t pad = T - int64_t(prompt.size());
        std::copy(prompt.begin(), prompt.end(), tokens.begin() + r * T + pad);
        std::fill(mask.begin() + r * T + pad, mask.begin() + (r + 1) * T, uint8_t(1));
      }
      vector<int32_t> prefillRow(S, 0), promptLen(S, 0), srcRows, dstRows;
      for (const SlotJoin& j : joins) {
        const auto at = std::find(distinct.begin() + next, distinct.begin() + end, j.prompt);
        if (at == distinct.begin() + end) continue;
        const int32_t r = int32_t(at - (distinct.begin() + next));
        prefillRow[j.slot] = r;
        promptLen[j.slot] = int32_t(j.prompt->size());
        srcRows.push_back(int32_t(int64_t(r) * T + T - 1));
        dstRows.push_back(j.slot);
      }
      const TokenBatchView view{tokens.data(), mask.data(), rows, T};
      prepareBatch(view, /*withBackward=*/false);
      WG_CUDA_CHECK(cudaMemcpyAsync(d.prefillRow, prefillRow.data(), S * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      WG_CUDA_CHECK(cudaMemcpyAsync(d.promptLen, promptLen.data(), S * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      WG_CUDA_CHECK(cudaMemcpyAsync(d.srcRows, srcRows.data(), srcRows.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      WG_CUDA_CHECK(cudaMemcpyAsync(d.dstRows, dstRows.data(), dstRows.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      prefillTarget_ = PrefillTarget{int(S), int(T)};
      try {
        forward();
      } catch (...) {
        prefillTarget_ = PrefillTarget{};
        throw;
      }
      prefillTarget_ = PrefillTarget{};
      cuda::copyRows(acts_.xFinal, d.srcRows, d.xFinal, d.dstRows, int(srcRows.size()), int(H), stream_);
      if (penalty)
        cuda::markPromptTokens(acts_.tokens, d.prefillRow, d.promptLen, int(S), int(T), int(V), d.seen, stream_);
      sync();  // the host vectors above are locals
      next = end;
    }
    gemm_->run(false, true, int(S), int(V), int(H), 1.f, d.xFinal, H, computePtr() + lmHead_, H, 0.f, d.logits,
               cuda::OutType::F32, V, stream_);
  }

  // A decode-step product Y = X·Wᵀ over the slots' rows: the skinny kernel (W streamed once at few rows), or
  // cuBLASLt where it does not apply.
  void decodeGemm(int N, int K, const bf16* X, int64_t ldx, const bf16* W, void* Y, cuda::OutType type, int64_t ldy) {
    const int M = int(dec_.slots);
    if (useSkinny_ && M <= kSkinnyRows && N <= kSkinnyMaxOut && cuda::skinnyGemmSupported(M, N, K) && cuda::skinnyGemmOperandsSupported(X, ldx, W, K) &&
        cuda::skinnyGemmWorkspaceBytes(M, N, K) <= skinnyWorkspace_.bytes()) {
      cuda::skinnyGemm(M, N, K, X, ldx, W, K, Y, type, ldy, reinterpret_cast<float*>(skinnyWorkspace_.data()), stream_);
      return;
    }
    gemm_->run(false, true, M, N, K, 1.f, X, ldx, W, K, 0.f, Y, type, ldy, stream_);
  }

  // Split-K scratch for every product shape of a decode step at `slots` rows.
  void reserveSkinnyWorkspace(int64_t slots) {
    const int64_t H = cfg_.hiddenSize, I = cfg_.intermediateSize, V = cfg_.vocabSize;
    const int64_t qDim = cfg_.numHeads * cfg_.headDim, qkvDim = qDim + 2 * cfg_.numKvHeads * cfg_.headDim;
    const int64_t shapes[][2] = {{3 * H, H}, {H, H}, {qkvDim, H}, {H, qDim}, {2 * I, H}, {H, I}, {V, H}};
    size_t need = 0;
    const int M = int(slots);
    for (const auto& nk : shapes)
      if (cuda::skinnyGemmSupported(M, int(nk[0]), int(nk[1])))
        need = std::max(need, cuda::skinnyGemmWorkspaceBytes(M, int(nk[0]), int(nk[1])));
    skinnyWorkspace_.ensure(need);
  }

  void sampleStep(const cuda::SamplerParams& params) {
    DecodeState& d = dec_;
    cuda::sampleTokens(d.logits, int(cfg_.vocabSize), d.lengths(), d.allowedBegin(), d.allowedCount(),
                       d.allowedTokens(), d.seen, d.rng, params, d.tokens, d.logprob, d.status, int(d.slots), stream_);
  }

  // One token for every slot (inactive slots compute garbage rows that nothing reads), then sampling. Only
  // enqueues work on stream_, so it can be captured into a CUDA graph.
  void decodeStep(const cuda::SamplerParams& params) {
    DecodeState& d = dec_;
    const int64_t S = d.slots, H = cfg_.hiddenSize, I = cfg_.intermediateSize, V = cfg_.vocabSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim;
    const int64_t qDim = nh * hd, kvDim = nkv * hd, qkvDim = qDim + 2 * kvDim;
    const float eps = cfg_.normEps;
    using cuda::OutType;
    const bf16* W = decodeWeights_;  // the compute copy, or with LoRA the merged copy
    auto mark = [this](const char* label) {
      if (profiler_) profiler_->mark(label, stream_);
    };
    cuda::embeddingForward(d.tokens, W + embedding_, d.x, S, int(H), int(V), stream_);
    mark("embedding");
    for (int64_t l = 0; l < cfg_.numLayers; l++) {
      const LayerOffsets& lo = layers_[l];
      cuda::residualRmsNormForward(d.x, l == 0 ? nullptr : d.delta, d.x, W + lo.operatorNorm, d.normed,
                                   d.rstd, S, int(H), eps, stream_);
      mark("rmsnorm");
      if (cfg_.layerTypes[l] == LayerKind::Conv) {
        decodeGemm(int(3 * H), int(H), d.normed, H, W + lo.inProj, d.proj, OutType::BF16, 3 * H);
        mark("gemm in_proj");
        cuda::shortConvDecode(d.proj, W + lo.convWeight, d.convState[l], d.lengths(), d.y, int(S), int(H),
                              stream_);
        mark("short conv");
        decodeGemm(int(H), int(H), d.y, H, W + lo.outProj, d.delta, OutType::BF16, H);
        mark("gemm conv out_proj");
      } else {
        decodeGemm(int(qkvDim), int(H), d.normed, H, W + lo.q, d.qkv, OutType::BF16, qkvDim);
        mark("gemm qkv");
        cuda::headNormRopeDecode(d.qkv, qkvDim, d.q, qDim, W + lo.qNorm, W + lo.kNorm, d.positions(), d.lengths(),
                                 d.kCache[l], d.vCache[l], int(S), int(d.maxLen), int(nh), int(nkv), int(hd), eps,
                                 cfg_.ropeTheta, stream_);
        mark("q/k norm + rope + kv append");
        cuda::attentionDecode(d.q, qDim, d.kCache[l], d.vCache[l], d.lengths(), d.attn, qDim, d.attnWorkspace, int(S),
                              int(d.maxLen), int(nh), int(nkv), int(hd), stream_);
        mark("attention");
        decodeGemm(int(H), int(qDim), d.attn, qDim, W + lo.o, d.delta, OutType::BF16, H);
        mark("gemm o_proj");
      }
      cuda::residualRmsNormForward(d.x, d.delta, d.x, W + lo.ffnNorm, d.normed, d.rstd, S, int(H), eps,
                                   stream_);
      mark("rmsnorm");
      decodeGemm(int(2 * I), int(H), d.normed, H, W + lo.w1, d.gateUp, OutType::BF16, 2 * I);
      mark("gemm w1|w3");
      cuda::swigluForward(d.gateUp, d.act, S, int(I), stream_);
      mark("swiglu");
      decodeGemm(int(H), int(I), d.act, I, W + lo.w2, d.delta, OutType::BF16, H);
      mark("gemm w2");
    }
    cuda::residualRmsNormForward(d.x, d.delta, d.x, W + finalNorm_, d.xFinal, d.rstd, S, int(H), eps,
                                 stream_);
    mark("rmsnorm");
    decodeGemm(int(V), int(H), d.xFinal, H, W + lmHead_, d.logits, OutType::F32, V);
    mark("gemm lm_head");
    sampleStep(params);
    mark("sample");
  }

  // A named tensor: a base parameter or (with LoRA) an adapter.
  struct Slice {
    bool adapter = false;
    int64_t offset = 0, numel = 0;
    vector<int64_t> shape;
  };
  Slice locate(const char* method, const std::string& name) const {
    if (lora_) {
      auto it = loraIndex_.find(name);
      if (it != loraIndex_.end())
        return {true, loraPlan_.offsets[it->second], loraPlan_.numels[it->second], loraPlan_.table[it->second].shape};
    }
    const size_t i = lookup(method, name);
    return {false, offsets_[i], numels_[i], table_[i].shape};
  }
  // The gradient ('g') or AdamW moment ('m', 'v') of a trainable tensor.
  float* trainableSlice(const char* method, const std::string& name, const Slice& t, char which) const {
    if (which != 'g' && which != 'm' && which != 'v') throw std::invalid_argument("optimizer state must be 'm' or 'v'");
    if (t.adapter)
      return loraPtr(which == 'g' ? loraGrads_ : which == 'm' ? loraM_ : loraV_) + t.offset;
    if (lora_)
      throw std::invalid_argument(std::string(method) + ": " + name +
                                  " is a frozen base weight (LoRA is on): it has no gradient or optimizer state");
    return (which == 'g' ? gradPtr() : momentPtr(which)) + t.offset;
  }
  Tensor download(const float* src, const Slice& t) const {
    vector<float> host(t.numel);
    WG_CUDA_CHECK(cudaMemcpyAsync(host.data(), src, host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    WG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return Tensor::fromFloat32(host.data(), host.size(), t.shape, DType::F32, Device::CPU);
  }
  // Writes a base tensor: through the fp32 master, or straight into the bf16 copy once LoRA froze the base.
  void writeBase(int64_t offset, const vector<float>& host) {
    const int64_t n = int64_t(host.size());
    if (master_.data()) {
      uploadSlice(masterPtr() + offset, host);
      cuda::convertF32ToBf16(masterPtr() + offset, computePtr() + offset, n, stream_);
    } else {
      DeviceBuffer staging;
      staging.allocate(n * sizeof(float));
      uploadSlice(reinterpret_cast<float*>(staging.data()), host);
      cuda::convertF32ToBf16(reinterpret_cast<float*>(staging.data()), computePtr() + offset, n, stream_);
      sync();
    }
    mergedStale_ = true;
  }

  static float* loraPtr(const DeviceBuffer& b) { return reinterpret_cast<float*>(b.data()); }
  bf16* loraComputePtr() const { return reinterpret_cast<bf16*>(loraCompute_.data()); }
  float* trainGradPtr() const { return lora_ ? loraPtr(loraGrads_) : gradPtr(); }
  int64_t trainableTotal() const { return lora_ ? loraPlan_.total : total_; }
  // Where a base weight's gradient goes: nowhere (null) when LoRA froze it...
  float* baseGrad(int64_t offset) const { return lora_ ? nullptr : gradPtr() + offset; }
  // ...or, for the small norm and conv weights whose fused backward kernels always accumulate one, a scratch.
  float* smallGrad(int64_t offset) const { return lora_ ? loraPtr(frozenScratch_) : gradPtr() + offset; }

  const LoraAdapter* adapterAt(int64_t baseOffset, size_t* index) const {
    if (!lora_) return nullptr;
    auto it = adapterOf_.find(baseOffset);
    if (it == adapterOf_.end()) return nullptr;
    *index = it->second;
    return &loraPlan_.adapters[it->second];
  }
  uint64_t dropoutSeed(const LoraAdapter& ad) const { return cpu::rng_seed_for(pass_.dropoutSeed, ad.index); }

  // y (+)= s·B(A x) for the adapter of the base weight at baseOffset, if any and if adapters are on. x [N, in]
  // (row stride ldx) is the base layer's input, y [N, out] (row stride ldy) its output, already holding W x.
  void adapterForward(int64_t baseOffset, const bf16* x, int64_t ldx, bf16* y, int64_t ldy, int64_t N) {
    size_t i = 0;
    const LoraAdapter* ad = pass_.on ? adapterAt(baseOffset, &i) : nullptr;
    if (!ad) return;
    const int64_t r = loraRank_;
    const bf16* input = x;
    int64_t ldInput = ldx;
    if (pass_.dropout) {
      cuda::loraDropout(x, ldx, acts_.loraXd, N, int(ad->in), loraDropout_, dropoutSeed(*ad), stream_);
      input = acts_.loraXd;
      ldInput = ad->in;
    }
    using cuda::OutType;
    gemm_->run(false, true, int(N), int(r), int(ad->in), 1.f, input, ldInput, loraComputePtr() + ad->a, ad->in, 0.f,
               acts_.loraU[i], OutType::BF16, r, stream_);
    gemm_->run(false, true, int(N), int(ad->out), int(r), loraPlan_.scale, acts_.loraU[i], r, loraComputePtr() + ad->b,
               r, 1.f, y, OutType::BF16, ldy, stream_);
  }

  // Backward of adapterForward: dB += s·dyᵀ(A x), dA += (s·dy B)ᵀ x, dx += (s·dy B) A (through the dropout mask).
  // dy [N, out] (stride ldy), x the forward input, dx [N, in] (stride lddx) already holding the base's W^T dy.
  void adapterBackward(int64_t baseOffset, const bf16* dy, int64_t ldy, const bf16* x, int64_t ldx, bf16* dx,
                       int64_t lddx, int64_t N) {
    size_t i = 0;
    const LoraAdapter* ad = adapterAt(baseOffset, &i);
    if (!ad) return;
    const int64_t r = loraRank_, in = ad->in, out = ad->out;
    const float s = loraPlan_.scale;
    Acts& a = acts_;
    const bf16* input = x;
    int64_t ldInput = ldx;
    if (pass_.dropout) {
      cuda::loraDropout(x, ldx, a.loraXd, N, int(in), loraDropout_, dropoutSeed(*ad), stream_);
      input = a.loraXd;
      ldInput = in;
    }
    using cuda::OutType;
    float* grads = loraPtr(loraGrads_);
    gemm_->run(true, false, int(out), int(r), int(N), s, dy, ldy, a.loraU[i], r, 1.f, grads + ad->b, OutType::F32, r,
               stream_);
    gemm_->run(false, false, int(N), int(r), int(out), s, dy, ldy, loraComputePtr() + ad->b, r, 0.f, a.loraDu,
               OutType::BF16, r, stream_);
    gemm_->run(true, false, int(r), int(in), int(N), 1.f, a.loraDu, r, input, ldInput, 1.f, grads + ad->a, OutType::F32,
               in, stream_);
    if (!pass_.dropout) {
      gemm_->run(false, false, int(N), int(in), int(r), 1.f, a.loraDu, r, loraComputePtr() + ad->a, in, 1.f, dx,
                 OutType::BF16, lddx, stream_);
    } else {
      gemm_->run(false, false, int(N), int(in), int(r), 1.f, a.loraDu, r, loraComputePtr() + ad->a, in, 0.f, a.loraT,
                 OutType::BF16, in, stream_);
      cuda::loraDropoutAddBackward(a.loraT, dx, lddx, N, int(in), loraDropout_, dropoutSeed(*ad), stream_);
    }
  }

  // The weights generate() decodes with: the compute copy, or with LoRA a copy with the adapters merged in
  // (W + s·B A, refreshed after each optimizer step), so that decode steps cost no more than without adapters.
  // The prefill runs the unmerged adapters; the frozen compute copy stays the reference policy.
  const bf16* samplingWeights() {
    if (!lora_) return computePtr();
    if (mergedStale_) {
      merged_.ensure(total_ * sizeof(bf16));
      bf16* merged = reinterpret_cast<bf16*>(merged_.data());
      WG_CUDA_CHECK(cudaMemcpyAsync(merged, computePtr(), total_ * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
      for (const LoraAdapter& ad : loraPlan_.adapters)
        gemm_->run(false, false, int(ad.out), int(ad.in), int(loraRank_), loraPlan_.scale, loraComputePtr() + ad.b,
                   loraRank_, loraComputePtr() + ad.a, ad.in, 1.f, merged + ad.baseOffset, cuda::OutType::BF16, ad.in,
                   stream_);
      mergedStale_ = false;
    }
    return reinterpret_cast<bf16*>(merged_.data());
  }

  float* masterPtr() const { return reinterpret_cast<float*>(master_.data()); }
  bf16* computePtr() const { return reinterpret_cast<bf16*>(compute_.data()); }
  float* gradPtr() const { return reinterpret_cast<float*>(grads_.data()); }
  float* momentPtr(char which) const {
    if (which != 'm' && which != 'v') throw std::invalid_argument("optimizer state must be 'm' or 'v'");
    return reinterpret_cast<float*>((which == 'm' ? adamM_ : adamV_).data());
  }

  void sync() { WG_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  void refreshComputeCopy() { cuda::convertF32ToBf16(masterPtr(), computePtr(), total_, stream_); }

  void uploadSlice(float* dst, const vector<float>& host) {
    WG_CUDA_CHECK(cudaMemcpyAsync(dst, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
    sync();  // `host` may go out of scope after we return
  }



  int64_t offsetOf(const std::string& name) const { return offsets_[index_.at(name)]; }

  size_t lookup(const char* method, const std::string& name) const { return lookupParameter(index_, table_, method, name); }

  void validateBatch(const char* method, const TokenBatchView& batch) const {
    validateTokenBatch(method, batch, cfg_.vocabSize);
    // Rows and their device indices are int32 here.
    if (batch.batch * batch.seqLen > std::numeric_limits<int32_t>::max() / 4)
      throw std::invalid_argument(std::string(method) + ": batch too large");
  }

  // Lays out the activation arena for this batch shape (growing it if needed) and uploads tokens, mask, positions.
  void prepareBatch(const TokenBatchView& batch, bool withBackward) {
    const int64_t B = batch.batch, T = batch.seqLen, N = B * T, H = cfg_.hiddenSize, I = cfg_.intermediateSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim;
    const int64_t qDim = nh * hd, kvDim = nkv * hd, qkvDim = qDim + 2 * kvDim;
    auto layout = [&](char* base) {
      Carver c(base);
      Acts a;
      a.batch = B;
      a.seqLen = T;
      a.tokens = c.take<int32_t>(N);
      a.positions = c.take<int32_t>(N);
      a.mask = c.take<uint8_t>(N);
      a.delta = c.take<bf16>(N * H);
      a.layers.resize(cfg_.numLayers);
      // Each layer keeps all its activations for backward, unless there is no backward or activations are
      // recomputed: then the layers share one set of buffers (forward alternates between the shared xIn and
      // xMid) and, with recomputation, each layer keeps only its own xIn to restart from.
      const bool keepAll = withBackward && !recompute_;
      LayerActs shared;
      for (int64_t l = 0; l < cfg_.numLayers; l++) {
        LayerActs& la = a.layers[l];
        if (!keepAll && l > 0) {
          la = shared;
          if (withBackward) la.xIn = c.take<float>(N * H);
          continue;
        }
        la.xIn = c.take<float>(N * H);
        la.xMid = c.take<float>(N * H);
        la.rstdOp = c.take<float>(N);
        la.rstdFfn = c.take<float>(N);
        la.normed = c.take<bf16>(N * H);
        la.ffnIn = c.take<bf16>(N * H);
        la.gateUp = c.take<bf16>(N * 2 * I);
        const bool conv = cfg_.layerTypes[l] == LayerKind::Conv;
        if (conv || !keepAll) {
          la.proj = c.take<bf16>(N * 3 * H);
          la.y = c.take<bf16>(N * H);
        }
        if (!conv || !keepAll) {
          la.qkv = c.take<bf16>(N * qkvDim);
          la.qk = c.take<bf16>(N * (qDim + kvDim));
          la.attn = c.take<bf16>(N * qDim);
          la.rstdQ = c.take<float>(N * nh);
          la.rstdK = c.take<float>(N * nkv);
          la.lse = c.take<float>(B * nh * T);
        }
        if (!keepAll) {
          shared = la;
          if (withBackward) la.xIn = c.take<float>(N * H);  // layer 0's own restart point
        }
      }
      a.xLast = c.take<float>(N * H);
      a.rstdFinal = c.take<float>(N);
      a.xFinal = c.take<bf16>(N * H);
      a.actScratch = c.take<bf16>(N * I);  // SwiGLU output: used at once in forward, recomputed in backward
      if (lora_) {
        for (size_t i = 0; i < loraPlan_.adapters.size(); i++) a.loraU.push_back(c.take<bf16>(N * loraRank_));
        a.loraDu = c.take<bf16>(N * loraRank_);
        if (loraDropout_ > 0) {
          a.loraXd = c.take<bf16>(N * I);  // I is the widest adapter input (w2's)
          a.loraT = c.take<bf16>(N * I);
        }
      }
      if (withBackward) {
        a.dx = c.take<float>(N * H);
        a.dxBf16 = c.take<bf16>(N * H);
        a.dNormed = c.take<bf16>(N * H);
        a.dGateUp = c.take<bf16>(N * 2 * I);
        a.dAct = c.take<bf16>(N * I);
        a.dProj = c.take<bf16>(N * 3 * H);
        a.dY = c.take<bf16>(N * H);
        a.dAttn = c.take<bf16>(N * qDim);
        a.dQk = c.take<bf16>(N * (qDim + kvDim));
        a.dQkv = c.take<bf16>(N * qkvDim);
        a.rowDot = c.take<float>(B * nh * T);
      }
      return std::make_pair(a, c.used());
    };
    const size_t needed = layout(nullptr).second;
    activations_.ensure(needed);
    acts_ = layout(activations_.data()).first;
    haveActivations_ = false;
    vector<int32_t> positions(N);
    cpu::positions_from_mask(positions.data(), batch.mask, B, T);
    WG_CUDA_CHECK(cudaMemcpyAsync(acts_.tokens, batch.tokens, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    WG_CUDA_CHECK(cudaMemcpyAsync(acts_.mask, batch.mask, N * sizeof(uint8_t), cudaMemcpyHostToDevice, stream_));
    WG_CUDA_CHECK(cudaMemcpyAsync(acts_.positions, positions.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    sync();  // positions is a local
  }

  void prepareScoring(const vector<int32_t>& rows, const vector<int32_t>& targets, const vector<int32_t>& allowedOffsets,
                      const vector<int32_t>& allowedTokens) {
    const int64_t S = int64_t(rows.size()), H = cfg_.hiddenSize, V = cfg_.vocabSize;
    const int chunkRows = int(std::max<int64_t>(1, std::min<int64_t>(S, kLogitChunkRows)));
    auto layout = [&](char* base) {
      Carver c(base);
      ScoreState s;
      s.chunkRows = chunkRows;
      s.rows = c.take<int32_t>(S);
      s.targets = c.take<int32_t>(S);
      int32_t* offsets = c.take<int32_t>(int64_t(allowedOffsets.size()));
      int32_t* tokens = c.take<int32_t>(int64_t(allowedTokens.size()));
      if (!allowedOffsets.empty()) s.allowed = {offsets, tokens};
      s.hidden = c.take<bf16>(S * H);
      s.dhidden = c.take<bf16>(S * H);
      s.logits = c.take<float>(int64_t(chunkRows) * V);
      s.dlogits = c.take<bf16>(int64_t(chunkRows) * V);
      s.logprob = c.take<float>(S);
      s.entropy = c.take<float>(S);
      s.lse = c.take<float>(S);
      s.dlogprob = c.take<float>(S);
      return std::make_pair(s, c.used());
    };
    scoreArena_.ensure(layout(nullptr).second);
    score_ = layout(scoreArena_.data()).first;
    auto put = [&](const int32_t* dst, const vector<int32_t>& src) {
      if (!src.empty())
        WG_CUDA_CHECK(cudaMemcpyAsync(const_cast<int32_t*>(dst), src.data(), src.size() * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, stream_));
    };
    put(score_.rows, rows);
    put(score_.targets, targets);
    put(score_.allowed.offsets, allowedOffsets);
    put(score_.allowed.tokens, allowedTokens);
    sync();  // the vectors are the caller's locals
  }

  void forward() {
    Acts& a = acts_;
    const int64_t N = a.batch * a.seqLen, H = cfg_.hiddenSize;
    // Residual stream: x_in(0) = embedding; each layer reads the previous layer's xMid plus its FFN output.
    float* x = a.layers[0].xIn;
    cuda::embeddingForward(a.tokens, computePtr() + embedding_, x, N, int(H), int(cfg_.vocabSize), stream_);
    for (int64_t l = 0; l < cfg_.numLayers; l++) {
      layerForward(l, x, l == 0 ? nullptr : a.delta, /*withFfnOutput=*/true);
      x = a.layers[l].xMid;
    }
    cuda::residualRmsNormForward(x, a.delta, a.xLast, computePtr() + finalNorm_, a.xFinal, a.rstdFinal, N, int(H),
                                 cfg_.normEps, stream_);
  }

  // One layer from x (+ pendingAdd, the previous layer's FFN output, fused into the first norm): fills the layer's
  // activations up to gateUp; withFfnOutput also leaves the layer's FFN output in acts_.delta. Backward with
  // recomputation calls it again from the saved xIn (x == xIn, no add) to refill the shared buffers.
  void layerForward(int64_t l, const float* x, const bf16* pendingAdd, bool withFfnOutput) {
    Acts& a = acts_;
    const int64_t B = a.batch, T = a.seqLen, N = B * T, H = cfg_.hiddenSize, I = cfg_.intermediateSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim;
    const int64_t qDim = nh * hd, kvDim = nkv * hd, qkvDim = qDim + 2 * kvDim, qkDim = qDim + kvDim;
    const float eps = cfg_.normEps;
    using cuda::OutType;
    const LayerOffsets& lo = layers_[l];
    const LayerActs& la = a.layers[l];
    cuda::residualRmsNormForward(x, pendingAdd, la.xIn, computePtr() + lo.operatorNorm, la.normed, la.rstdOp, N,
                                 int(H), eps, stream_);
    if (cfg_.layerTypes[l] == LayerKind::Conv) {
      gemm_->run(false, true, int(N), int(3 * H), int(H), 1.f, la.normed, H, computePtr() + lo.inProj, H, 0.f, la.proj,
                 OutType::BF16, 3 * H, stream_);
      adapterForward(lo.inProj, la.normed, H, la.proj, 3 * H, N);
      cuda::shortConvForward(la.proj, computePtr() + lo.convWeight, a.mask, la.y, int(B), int(T), int(H), stream_);
      gemm_->run(false, true, int(N), int(H), int(H), 1.f, la.y, H, computePtr() + lo.outProj, H, 0.f, a.delta,
                 OutType::BF16, H, stream_);
      adapterForward(lo.outProj, la.y, H, a.delta, H, N);
    } else {
      gemm_->run(false, true, int(N), int(qkvDim), int(H), 1.f, la.normed, H, computePtr() + lo.q, H, 0.f, la.qkv,
                 OutType::BF16, qkvDim, stream_);
      adapterForward(lo.q, la.normed, H, la.qkv, qkvDim, N);
      adapterForward(lo.k, la.normed, H, la.qkv + qDim, qkvDim, N);
      adapterForward(lo.v, la.normed, H, la.qkv + qkDim, qkvDim, N);
      cuda::headNormRopeForward(la.qkv, qkvDim, la.qk, qkDim, computePtr() + lo.qNorm, a.positions, la.rstdQ, N,
                                int(nh), int(hd), eps, cfg_.ropeTheta, stream_);
      cuda::headNormRopeForward(la.qkv + qDim, qkvDim, la.qk + qDim, qkDim, computePtr() + lo.kNorm, a.positions,
                                la.rstdK, N, int(nkv), int(hd), eps, cfg_.ropeTheta, stream_);
      const cuda::AttentionShape shape{int(B), int(T), int(nh), int(nkv), int(hd)};
      (simtAttention_ ? cuda::attentionForwardSimt : cuda::attentionForward)(
          la.qk, qkDim, la.qk + qDim, qkDim, la.qkv + qkDim, qkvDim, a.mask, la.attn, la.lse, shape, stream_);
      gemm_->run(false, true, int(N), int(H), int(qDim), 1.f, la.attn, qDim, computePtr() + lo.o, qDim, 0.f, a.delta,
                 OutType::BF16, H, stream_);
      adapterForward(lo.o, la.attn, qDim, a.delta, H, N);
    }
    if (prefillTarget_.slots > 0) {  // generate()'s prefill: this layer's cache for every slot of the chunk
      const PrefillTarget& t = prefillTarget_;
      if (cfg_.layerTypes[l] == LayerKind::Conv)
        cuda::convStateFromPrefill(la.proj, dec_.prefillRow, dec_.promptLen, t.slots, t.seqLen, int(H),
                                   dec_.convState[l], stream_);
      else
        cuda::kvCacheFromPrefill(la.qk + qDim, qkDim, la.qkv + qkDim, qkvDim, dec_.prefillRow, dec_.promptLen, t.slots,
                                 t.seqLen, dec_.kCache[l], dec_.vCache[l], int(dec_.maxLen), int(kvDim), stream_);
    }
    cuda::residualRmsNormForward(la.xIn, a.delta, la.xMid, computePtr() + lo.ffnNorm, la.ffnIn, la.rstdFfn, N, int(H),
                                 eps, stream_);
    gemm_->run(false, true, int(N), int(2 * I), int(H), 1.f, la.ffnIn, H, computePtr() + lo.w1, H, 0.f, la.gateUp,
               OutType::BF16, 2 * I, stream_);
    adapterForward(lo.w1, la.ffnIn, H, la.gateUp, 2 * I, N);
    adapterForward(lo.w3, la.ffnIn, H, la.gateUp + I, 2 * I, N);
    if (!withFfnOutput) return;
    cuda::swigluForward(la.gateUp, a.actScratch, N, int(I), stream_);
    gemm_->run(false, true, int(N), int(H), int(I), 1.f, a.actScratch, I, computePtr() + lo.w2, I, 0.f, a.delta,
               OutType::BF16, H, stream_);
    adapterForward(lo.w2, a.actScratch, I, a.delta, H, N);
  }

  static constexpr int64_t kLogitChunkRows = 2048;  // [2048 x 65536] fp32 logits = 512 MiB at a time
  static constexpr int64_t kPrefillTokens = 16384;  // padded tokens per prefill forward
  // Where the skinny product beats cuBLASLt (bench/kernels/check_skinny, H200): up to 8 rows, on the narrower
  // weights (o/out_proj 1.1-1.2x, w2 1.1-1.3x, q|k|v 1.1x; equal on in_proj); from 16 rows, and on w1|w3 and
  // lm_head, cuBLASLt is as fast or faster.
  static constexpr int kSkinnyRows = 8;
  static constexpr int kSkinnyMaxOut = 4096;

  ModelConfig cfg_;
  int threads_;
  vector<ParameterInfo> table_;
  std::unordered_map<std::string, size_t> index_;
  vector<int64_t> offsets_, numels_;
  int64_t total_ = 0;
  int64_t embedding_ = 0, finalNorm_ = 0, lmHead_ = 0;
  vector<LayerOffsets> layers_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  DeviceBuffer master_, compute_, grads_, adamM_, adamV_, partials_;
  DeviceBuffer activations_, scoreArena_;
  Acts acts_;
  ScoreState score_;
  bool haveActivations_ = false;
  int64_t scoredCount_ = 0;
  float temperature_ = 1.f;
  bool simtAttention_ = false;
  bool recompute_ = false;
  bool useGraphs_ = true;
  DeviceBuffer decodeArena_;
  PinnedBuffer decodeHost_;
  DecodeState dec_;
  PrefillTarget prefillTarget_;
  std::unique_ptr<DecodeProfiler> profiler_;
  const bf16* decodeWeights_ = nullptr;
  bool useSkinny_ = true;
  DeviceBuffer skinnyWorkspace_;
  // LoRA (enableLora): the plan, adapter arenas (fp32 master + bf16 copy, gradients, moments), how the current
  // pass applies them, and the merged weights for sampling.
  bool lora_ = false;
  LoraPlan loraPlan_;
  std::unordered_map<std::string, size_t> loraIndex_;
  std::unordered_map<int64_t, size_t> adapterOf_;  // base weight offset -> adapter
  int64_t loraRank_ = 0;
  float loraDropout_ = 0;
  DeviceBuffer loraMaster_, loraCompute_, loraGrads_, loraM_, loraV_, frozenScratch_, merged_;
  bool mergedStale_ = true;
  AdapterPass pass_;
};

// The GPU rows of a generation session: the engine's decode arena, sized by reserve(), and the step's CUDA graph
// (captured on the second decode step after each reserve: the first one makes the GEMM plans of the decode
// shapes, which capture cannot do). Rows that do not sample in a step still run through the graph's GEMMs (the
// weights are read once either way) and keep their caches.
class CudaDecodeSlots final : public DecodeSlots {
 public:
  CudaDecodeSlots(CudaEngine& engine, const GenerationSettings& settings)
      : e_(engine),
        params_{settings.sampling.temperature, settings.sampling.topK,           settings.sampling.topP,
                settings.sampling.minP,        settings.sampling.repetitionPenalty, settings.sampling.greedy},
        penalty_(settings.sampling.repetitionPenalty != 1.0f) {
    e_.decodeWeights_ = e_.samplingWeights();
  }
  ~CudaDecodeSlots() override {
    try {
      if (e_.profiler_ && slots_ > 0) e_.profiler_->report(slots_);
    } catch (...) {  // a report is not worth a terminate()
    }
  }

  void reserve(int64_t slots, int64_t maxLen, int64_t allowedCapacity) override {
    graph_ = std::make_unique<CudaEngine::GraphGuard>();  // the old one points into the old arena
    graphReady_ = false;
    e_.prepareDecode(slots, maxLen, allowedCapacity, penalty_);
    e_.reserveSkinnyWorkspace(slots);
    WG_CUDA_CHECK(cudaMemsetAsync(e_.dec_.tokens, 0, slots * sizeof(int32_t), e_.stream_));
    slots_ = slots;
  }

  void prefill(const std::vector<SlotJoin>& joins) override {
    e_.pass_ = AdapterPass{};  // the prefill runs the unmerged adapters, no dropout
    e_.prefill(joins, penalty_);
  }

  void sample(bool decode, const StepPlan& plan, StepOutput& out) override {
    CudaEngine::DecodeState& d = e_.dec_;
    const int64_t S = d.slots, used = int64_t(plan.allowedTokens.size());
    // The step block: positions | lengths | allowedBegin | allowedCount | allowed tokens.
    int32_t* block = d.hostStep;
    std::copy(plan.positions.begin(), plan.positions.end(), block);
    std::copy(plan.lengths.begin(), plan.lengths.end(), block + S);
    std::copy(plan.allowedBegin.begin(), plan.allowedBegin.end(), block + 2 * S);
    std::copy(plan.allowedCount.begin(), plan.allowedCount.end(), block + 3 * S);
    std::copy(plan.allowedTokens.begin(), plan.allowedTokens.end(), block + 4 * S);
    cudaStream_t stream = e_.stream_;
    WG_CUDA_CHECK(cudaMemcpyAsync(d.stepInts, block, (4 * S + used) * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    if (!decode) {
      e_.sampleStep(params_);
    } else if (e_.profiler_) {
      e_.profiler_->beginStep(stream);
      e_.decodeStep(params_);
      e_.profiler_->endStep();
    } else if (!e_.useGraphs_ || !graphReady_) {
      e_.decodeStep(params_);
      graphReady_ = e_.useGraphs_;
    } else {
      if (!graph_->exec) {
        WG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
          e_.decodeStep(params_);
        } catch (...) {
          cudaGraph_t broken = nullptr;
          cudaStreamEndCapture(stream, &broken);
          if (broken) cudaGraphDestroy(broken);
          cudaGetLastError();
          throw;
        }
        WG_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_->graph));
        WG_CUDA_CHECK(cudaGraphInstantiate(&graph_->exec, graph_->graph, 0));
      }
      WG_CUDA_CHECK(cudaGraphLaunch(graph_->exec, stream));
    }
    WG_CUDA_CHECK(cudaMemcpyAsync(d.hostTokens, d.tokens, S * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    WG_CUDA_CHECK(cudaMemcpyAsync(d.hostLogprobs, d.logprob, S * sizeof(float), cudaMemcpyDeviceToHost, stream));
    WG_CUDA_CHECK(cudaMemcpyAsync(d.hostStatus, d.status, S * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    e_.sync();
    for (int64_t s = 0; s < S; s++) {
      if (plan.lengths[s] <= 0) continue;
      out.tokens[s] = d.hostTokens[s];
      out.logprobs[s] = d.hostLogprobs[s];
      out.status[s] = d.hostStatus[s];
    }
  }

 private:
  CudaEngine& e_;
  const cuda::SamplerParams params_;
  const bool penalty_;
  std::unique_ptr<CudaEngine::GraphGuard> graph_;
  bool graphReady_ = false;
  int64_t slots_ = 0;
};

std::unique_ptr<DecodeSlots> CudaEngine::createDecodeSlots(const GenerationSettings& settings) {
  return std::make_unique<CudaDecodeSlots>(*this, settings);
}

}  // namespace

// Registers the backend with the engine factory (engine.h) when the addon is loaded.
const bool cudaEngineRegistered = [] {
  registerEngineFactory(Device::CUDA, [](const ModelConfig& config, int threads) { return createCudaEngine(config, threads); },
                        BackendFeatures{/*generate=*/true, /*lora=*/true});
  return true;
}();

std::unique_ptr<Engine> createCudaEngine(const ModelConfig& config, int threads) {
  return std::make_unique<CudaEngine>(config, threads);
}

}  // namespace webgrpo
