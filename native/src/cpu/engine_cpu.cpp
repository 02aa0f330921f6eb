// The CPU engine: LFM2 forward/backward/AdamW/generate in fp32 built from the reference ops in ops.h.
// Parameters, gradients and AdamW moments each live in one arena, laid out by lfm2ParameterTable.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "cpu/ops.h"
#include "engine.h"

namespace webgrpo {
namespace {

using std::vector;

// A LoRA adapter of one base weight.
struct LoraSlot {
  int64_t a = -1, b = -1;  // offsets into the adapter arenas
  uint64_t index = 0;      // the adapter's number, for its dropout stream
};

// How a forward pass applies LoRA adapters: on or off, and with adapter dropout (a training pass) or without.
struct AdapterPass {
  bool on = true;
  bool dropout = false;
  uint64_t dropoutSeed = 0;  // with the adapter's index, seeds its mask, so backward regenerates the same one
};

// Everything the forward pass keeps for backward (and prefill reads its caches from).
struct LayerActivations {
  vector<float> xIn, rstdOp, normed;                                  // residual in, operator_norm output
  vector<float> bcx, bx, conv, y;                                     // short conv
  vector<float> qRaw, kRaw, rstdQ, rstdK, q, k, v, attn, lse;         // attention (q, k after norm + RoPE)
  vector<float> xMid, rstdFfn, ffnIn, gate, up, act;                  // feed forward
};

struct Activations {
  int64_t batch = 0, seqLen = 0;
  vector<int32_t> tokens;
  vector<uint8_t> mask;
  vector<int32_t> positions;
  vector<LayerActivations> layers;
  vector<float> xLast, rstdFinal, xFinal;
  // What the last score() scored, for backward.
  vector<int64_t> scoredRows;  // row (b*T + t-1) whose hidden state predicts each scored token
  vector<int32_t> targets;
  vector<int32_t> allowedOffsets, allowedTokens;
  bool hasAllowed = false;
  float temperature = 1.0f;
  AdapterPass adapters;  // how LoRA adapters applied in this forward
};

// Decoding state of one row of a generation session.
struct SequenceState {
  vector<vector<float>> convState;  // per layer: [(K-1), H] for conv layers, empty otherwise
  vector<vector<float>> kCache, vCache;  // per layer: [len, kvDim] for attention layers
  int64_t length = 0;                    // tokens in the caches
  vector<uint8_t> seen;                  // for the repetition penalty: prompt and generated tokens
  uint64_t rng = 0;
  int32_t lastToken = 0;                 // the input of the next decode step
  vector<float> logits;                  // next-token logits [V]
};

class CpuEngine final : public Engine {
 public:
  CpuEngine(const ModelConfig& config, int threads) : cfg_(config), threads_(threads) {
    cfg_.validate();
    table_ = lfm2ParameterTable(cfg_);
    int64_t offset = 0;
    for (size_t i = 0; i < table_.size(); i++) {
      index_[table_[i].name] = i;
      offsets_.push_back(offset);
      numels_.push_back(shapeNumel(table_[i].shape));
      offset += numels_.back();
    }
    params_.assign(offset, 0.0f);
    embedding_ = offsetOf("model.embed_tokens.weight");
    finalNorm_ = offsetOf("model.embedding_norm.weight");
    lmHead_ = cfg_.tieEmbeddings ? embedding_ : offsetOf("lm_head.weight");
    layers_ = lfm2LayerOffsets(cfg_, [this](const std::string& name) { return offsetOf(name); });
    // Norm weights start at 1 so a fresh model is usable before initRandom/setParameter.
    for (size_t i = 0; i < table_.size(); i++)
      if (isNormWeight(table_[i].name)) std::fill_n(params_.data() + offsets_[i], numels_[i], 1.0f);
  }

  Device device() const override { return Device::CPU; }
  const ModelConfig& config() const override { return cfg_; }
  std::vector<ParameterInfo> parameterInfo() const override { return table_; }

  std::vector<ParameterInfo> trainableInfo() const override { return loraEnabled_ ? loraTable_ : table_; }

  void setParameter(const std::string& name, const Tensor& value) override {
    Located t = locate("setParameter", name);
    checkParameterShape("setParameter", name, t.shape, value.shape());
    vector<float> data = value.toFloat32();
    std::memcpy(t.arenas.params->data() + t.offset, data.data(), data.size() * sizeof(float));
  }

  Tensor getParameter(const std::string& name) const override {
    Located t = locate("getParameter", name);
    return Tensor::fromFloat32(t.arenas.params->data() + t.offset, t.numel, t.shape, DType::F32, Device::CPU);
  }

  Tensor getGradient(const std::string& name) const override {
    return arenaTensor(locate("getGradient", name), *locate("getGradient", name).arenas.grads);
  }

  Tensor getOptimizerState(const std::string& name, char which) const override {
    Located t = locate("getOptimizerState", name);
    return arenaTensor(t, which == 'm' ? *t.arenas.m : *t.arenas.v);
  }

  void setOptimizerState(const std::string& name, char which, const Tensor& value) override {
    Located t = locate("setOptimizerState", name);
    checkParameterShape("setOptimizerState", name, t.shape, value.shape());
    ensureOptimizerState();
    vector<float> data = value.toFloat32();
    vector<float>& arena = which == 'm' ? *t.arenas.m : *t.arenas.v;
    std::memcpy(arena.data() + t.offset, data.data(), data.size() * sizeof(float));
  }

  void enableLora(const LoraConfig& lc) override {
    if (loraEnabled_) throw std::runtime_error("enableLora: this model already has LoRA adapters");
    const LoraPlan plan = planLora(cfg_, lc, table_, [this](const std::string& name) { return offsetOf(name); });
    loraTable_ = plan.table;
    loraOffsets_ = plan.offsets;
    loraNumels_ = plan.numels;
    for (size_t i = 0; i < loraTable_.size(); i++) loraIndex_[loraTable_[i].name] = i;
    for (const LoraAdapter& ad : plan.adapters) loraOf_[ad.baseOffset] = LoraSlot{ad.a, ad.b, ad.index};
    lora_ = plan.initial(lc.seed);
    loraRank_ = lc.rank;
    loraDropout_ = lc.dropout;
    loraScale_ = plan.scale;
    loraEnabled_ = true;
    // The base is frozen: its gradients and moments are no longer needed.
    vector<float>().swap(grads_);
    vector<float>().swap(adamM_);
    vector<float>().swap(adamV_);
  }

  void initRandom(uint64_t seed, float initializerRange) override {
    if (!(initializerRange >= 0)) throw std::invalid_argument("initRandom: initializerRange must be >= 0");
    for (size_t i = 0; i < table_.size(); i++)
      initialParameterValues(cfg_, table_, i, seed, initializerRange, params_.data() + offsets_[i]);
  }

  std::vector<float> forwardLogits(const TokenBatchView& batch) override {
    setThreads();
    validateTokenBatch("forwardLogits", batch, cfg_.vocabSize);
    Activations acts;
    forward(batch, acts, false);
    const int64_t N = batch.batch * batch.seqLen;
    vector<float> logits(N * cfg_.vocabSize);
    cpu::matmul_forward(logits.data(), acts.xFinal.data(), P(lmHead_), N, cfg_.hiddenSize, cfg_.vocabSize);
    return logits;
  }

  ScoreOutput score(const ScoreArgs& args) override {
    setThreads();
    const TokenBatchView& batch = args.batch;
    validateTokenBatch("score", batch, cfg_.vocabSize);
    if (!(args.temperature > 0)) throw std::invalid_argument("score: temperature must be > 0");
    const int64_t H = cfg_.hiddenSize;
    auto acts = std::make_unique<Activations>();
    ScoredPositions scored = collectScoredPositions(args, cfg_.vocabSize);
    const int64_t S = int64_t(scored.rows.size());
    acts->scoredRows = std::move(scored.rows);
    acts->targets = std::move(scored.targets);
    acts->hasAllowed = scored.hasAllowed;
    acts->allowedOffsets = std::move(scored.allowedOffsets);
    acts->allowedTokens = std::move(scored.allowedTokens);
    acts->temperature = args.temperature;
    acts->adapters.on = args.adapters;
    acts->adapters.dropout = args.keepActivations && loraDropout_ > 0;
    acts->adapters.dropoutSeed = args.dropoutSeed;
    forward(batch, *acts, args.keepActivations);
    vector<float> hidden = gatherRows(acts->xFinal, acts->scoredRows, H);
    ScoreOutput out;
    out.logprobs.resize(S);
    out.entropy.resize(S);
    cpu::lm_head_logprobs_forward(out.logprobs.data(), out.entropy.data(), hidden.data(), P(lmHead_),
                                  acts->targets.data(), acts->hasAllowed ? acts->allowedOffsets.data() : nullptr,
                                  acts->hasAllowed ? acts->allowedTokens.data() : nullptr, S, H, cfg_.vocabSize,
                                  args.temperature);
    if (args.keepActivations) saved_ = std::move(acts);
    return out;
  }

  void backward(const float* dLogprobs, int64_t count) override {
    setThreads();
    if (!saved_) throw std::runtime_error("backward: no activations kept; call score() with keepActivations: true first");
    Activations& a = *saved_;
    if (loraEnabled_ && !a.adapters.on)
      throw std::runtime_error("backward: the last score() ran with adapters: false; the adapters get no gradient from it");
    const int64_t S = int64_t(a.scoredRows.size());
    if (count != S)
      throw std::invalid_argument("backward: dLogprobs has " + std::to_string(count) + " values, the last score() scored " +
                                  std::to_string(S) + " positions");
    ensureGradients();
    const int64_t B = a.batch, T = a.seqLen, N = B * T, H = cfg_.hiddenSize, I = cfg_.intermediateSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim, qDim = nh * hd, kvDim = nkv * hd;
    const int64_t K = cfg_.convKernel;

    vector<float> dHidden(S * H, 0.0f);
    vector<float> hidden = gatherRows(a.xFinal, a.scoredRows, H);
    cpu::lm_head_logprobs_backward(dHidden.data(), G(lmHead_), dLogprobs, hidden.data(), P(lmHead_), a.targets.data(),
                                   a.hasAllowed ? a.allowedOffsets.data() : nullptr,
                                   a.hasAllowed ? a.allowedTokens.data() : nullptr, S, H, cfg_.vocabSize, a.temperature);
    vector<float> dFinal(N * H, 0.0f);
    for (int64_t r = 0; r < S; r++) cpu::residual_add(dFinal.data() + a.scoredRows[r] * H, dHidden.data() + r * H, H);
    vector<float> dx(N * H, 0.0f);  // gradient of the residual stream
    cpu::rmsnorm_backward(dx.data(), G(finalNorm_), dFinal.data(), a.xLast.data(), P(finalNorm_), a.rstdFinal.data(), N, H);

    for (int64_t l = cfg_.numLayers - 1; l >= 0; l--) {
      const LayerOffsets& lo = layers_[l];
      LayerActivations& la = a.layers[l];
      // Feed forward: x_out = x_mid + w2(silu(w1 f) * w3 f), f = ffn_norm(x_mid).
      vector<float> dAct(N * I, 0.0f), dGate(N * I, 0.0f), dUp(N * I, 0.0f), dFfnIn(N * H, 0.0f);
      linearBackward(dAct.data(), lo.w2, dx.data(), la.act.data(), N, I, H, a.adapters);
      cpu::swiglu_backward(dGate.data(), dUp.data(), dAct.data(), la.gate.data(), la.up.data(), N * I);
      linearBackward(dFfnIn.data(), lo.w1, dGate.data(), la.ffnIn.data(), N, H, I, a.adapters);
      linearBackward(dFfnIn.data(), lo.w3, dUp.data(), la.ffnIn.data(), N, H, I, a.adapters);
      cpu::rmsnorm_backward(dx.data(), G(lo.ffnNorm), dFfnIn.data(), la.xMid.data(), P(lo.ffnNorm), la.rstdFfn.data(), N, H);
      // Operator: x_mid = x_in + op(operator_norm(x_in)).
      vector<float> dNormed(N * H, 0.0f);
      if (cfg_.layerTypes[l] == LayerKind::Conv) {
        vector<float> dY(N * H, 0.0f), dBcx(N * 3 * H, 0.0f), dConv(N * H, 0.0f), dBx(N * H, 0.0f);
        linearBackward(dY.data(), lo.outProj, dx.data(), la.y.data(), N, H, H, a.adapters);
        cpu::conv_gate_out_backward(dBcx.data(), dConv.data(), dY.data(), la.bcx.data(), la.conv.data(), N, H);
        cpu::causal_conv_backward(dBx.data(), G(lo.convWeight), dConv.data(), la.bx.data(), P(lo.convWeight), B, T, H, K);
        cpu::conv_gate_in_backward(dBcx.data(), dBx.data(), la.bcx.data(), N, H);
        linearBackward(dNormed.data(), lo.inProj, dBcx.data(), la.normed.data(), N, H, 3 * H, a.adapters);
        cpu::mask_rows(dNormed.data(), a.mask.data(), N, H);
      } else {
        vector<float> dAttn(N * qDim, 0.0f), dq(N * qDim, 0.0f), dk(N * kvDim, 0.0f), dv(N * kvDim, 0.0f);
        vector<float> dqRaw(N * qDim, 0.0f), dkRaw(N * kvDim, 0.0f);
        linearBackward(dAttn.data(), lo.o, dx.data(), la.attn.data(), N, qDim, H, a.adapters);
        cpu::attention_backward(dq.data(), dk.data(), dv.data(), dAttn.data(), la.attn.data(), la.lse.data(), la.q.data(),
                                la.k.data(), la.v.data(), a.mask.data(), B, T, nh, nkv, hd);
        cpu::rope_backward(dq.data(), a.positions.data(), N, nh, hd, cfg_.ropeTheta);
        cpu::rope_backward(dk.data(), a.positions.data(), N, nkv, hd, cfg_.ropeTheta);
        cpu::rmsnorm_backward(dqRaw.data(), G(lo.qNorm), dq.data(), la.qRaw.data(), P(lo.qNorm), la.rstdQ.data(), N * nh, hd);
        cpu::rmsnorm_backward(dkRaw.data(), G(lo.kNorm), dk.data(), la.kRaw.data(), P(lo.kNorm), la.rstdK.data(), N * nkv, hd);
        linearBackward(dNormed.data(), lo.q, dqRaw.data(), la.normed.data(), N, H, qDim, a.adapters);
        linearBackward(dNormed.data(), lo.k, dkRaw.data(), la.normed.data(), N, H, kvDim, a.adapters);
        linearBackward(dNormed.data(), lo.v, dv.data(), la.normed.data(), N, H, kvDim, a.adapters);
      }
      cpu::rmsnorm_backward(dx.data(), G(lo.operatorNorm), dNormed.data(), la.xIn.data(), P(lo.operatorNorm),
                            la.rstdOp.data(), N, H);
    }
    if (float* dTable = G(embedding_)) cpu::embedding_backward(dTable, dx.data(), a.tokens.data(), N, H);
  }

  void zeroGrad() override {
    Arenas t = trainable();
    if (t.grads->empty()) t.grads->assign(t.params->size(), 0.0f);
    else std::fill(t.grads->begin(), t.grads->end(), 0.0f);
  }

  double gradNorm() override {
    setThreads();
    Arenas t = trainable();
    if (t.grads->empty()) return 0.0;
    return std::sqrt(cpu::sum_squares(t.grads->data(), int64_t(t.grads->size())));
  }

  void adamwStep(const AdamWArgs& args) override {
    setThreads();
    if (args.step < 1) throw std::invalid_argument("adamwStep: step must be >= 1 (it is 1-based), got " + std::to_string(args.step));
    if (!(args.beta1 >= 0 && args.beta1 < 1) || !(args.beta2 >= 0 && args.beta2 < 1))
      throw std::invalid_argument("adamwStep: beta1 and beta2 must be in [0, 1)");
    if (!(args.eps > 0)) throw std::invalid_argument("adamwStep: eps must be > 0");
    ensureGradients();
    ensureOptimizerState();
    Arenas t = trainable();
    cpu::adamw_step(t.params->data(), t.grads->data(), t.m->data(), t.v->data(), int64_t(t.params->size()), args.lr,
                    args.beta1, args.beta2, args.eps, args.weightDecay, args.step, args.gradScale);
  }

  std::unique_ptr<DecodeSlots> createDecodeSlots(const GenerationSettings& settings) override;

 private:
  // ---- parameter table --------------------------------------------------------------------------------------
  int64_t offsetOf(const std::string& name) const { return offsets_[index_.at(name)]; }

  size_t lookup(const char* method, const std::string& name) const { return lookupParameter(index_, table_, method, name); }

  // The four arenas of a set of tensors (the base's, or the adapters').
  struct Arenas {
    vector<float>* params;
    vector<float>* grads;
    vector<float>* m;
    vector<float>* v;
  };
  Arenas baseArenas() const {
    auto* self = const_cast<CpuEngine*>(this);
    return {&self->params_, &self->grads_, &self->adamM_, &self->adamV_};
  }
  Arenas loraArenas() const {
    auto* self = const_cast<CpuEngine*>(this);
    return {&self->lora_, &self->loraGrads_, &self->loraM_, &self->loraV_};
  }
  Arenas trainable() const { return loraEnabled_ ? loraArenas() : baseArenas(); }

  // A named tensor: a base parameter or an adapter.
  struct Located {
    Arenas arenas;
    int64_t offset, numel;
    vector<int64_t> shape;
  };
  Located locate(const char* method, const std::string& name) const {
    auto it = loraIndex_.find(name);
    if (it != loraIndex_.end())
      return {loraArenas(), loraOffsets_[it->second], loraNumels_[it->second], loraTable_[it->second].shape};
    size_t i = lookup(method, name);
    return {baseArenas(), offsets_[i], numels_[i], table_[i].shape};
  }

  static Tensor arenaTensor(const Located& t, const vector<float>& arena) {
    if (arena.empty()) {  // never written: zeros
      vector<float> zeros(t.numel, 0.0f);
      return Tensor::fromFloat32(zeros.data(), zeros.size(), t.shape, DType::F32, Device::CPU);
    }
    return Tensor::fromFloat32(arena.data() + t.offset, t.numel, t.shape, DType::F32, Device::CPU);
  }

  void ensureGradients() {
    Arenas t = trainable();
    if (t.grads->empty()) t.grads->assign(t.params->size(), 0.0f);
  }
  void ensureOptimizerState() {
    Arenas t = trainable();
    if (t.m->empty()) t.m->assign(t.params->size(), 0.0f);
    if (t.v->empty()) t.v->assign(t.params->size(), 0.0f);
  }

  float* P(int64_t offset) { return params_.data() + offset; }
  // A base parameter's gradient, or null when the base is frozen (LoRA): ops then skip that gradient.
  float* G(int64_t offset) { return loraEnabled_ ? nullptr : grads_.data() + offset; }

  // The adapter's dropout mask for a pass: 0 with probability p, else 1/(1-p); empty without dropout.
  vector<float> dropoutMask(const LoraSlot& slot, const AdapterPass& pass, int64_t n) const {
    if (!pass.dropout) return {};
    vector<float> mask(n);
    uint64_t rng = cpu::rng_seed_for(pass.dropoutSeed, slot.index);
    const float keep = 1.0f / (1.0f - loraDropout_);
    for (int64_t i = 0; i < n; i++) mask[i] = cpu::rng_uniform(rng) < loraDropout_ ? 0.0f : keep;
    return mask;
  }

  // y = x·Wᵀ (+ the adapter's s·B(A x) when W has one and adapters are on). W is the base weight at wOffset.
  void linearForward(float* y, const float* x, int64_t wOffset, int64_t rows, int64_t in, int64_t out,
                     const AdapterPass& pass) {
    cpu::matmul_forward(y, x, P(wOffset), rows, in, out);
    if (!pass.on || !loraEnabled_) return;
    auto it = loraOf_.find(wOffset);
    if (it == loraOf_.end()) return;
    vector<float> mask = dropoutMask(it->second, pass, rows * in);
    cpu::lora_forward(y, x, lora_.data() + it->second.a, lora_.data() + it->second.b, rows, in, out, loraRank_, loraScale_,
                      mask.empty() ? nullptr : mask.data());
  }
  // Backward of linearForward with adapters on: dx always, W's gradient unless frozen, the adapter's if any.
  void linearBackward(float* dx, int64_t wOffset, const float* dy, const float* x, int64_t rows, int64_t in, int64_t out,
                      const AdapterPass& pass) {
    cpu::matmul_backward(dx, G(wOffset), dy, x, P(wOffset), rows, in, out);
    if (!loraEnabled_) return;
    auto it = loraOf_.find(wOffset);
    if (it == loraOf_.end()) return;
    const LoraSlot& slot = it->second;
    vector<float> mask = dropoutMask(slot, pass, rows * in);
    cpu::lora_backward(dx, loraGrads_.data() + slot.a, loraGrads_.data() + slot.b, dy, x, lora_.data() + slot.a,
                       lora_.data() + slot.b, rows, in, out, loraRank_, loraScale_, mask.empty() ? nullptr : mask.data());
  }

  void setThreads() { omp_set_num_threads(threads_ > 0 ? threads_ : omp_get_num_procs()); }

  static vector<float> gatherRows(const vector<float>& x, const vector<int64_t>& rows, int64_t dim) {
    vector<float> out(rows.size() * dim);
    for (size_t r = 0; r < rows.size(); r++) std::memcpy(out.data() + r * dim, x.data() + rows[r] * dim, dim * sizeof(float));
    return out;
  }

  // ---- forward ----------------------------------------------------------------------------------------------
  // Runs the model over a left-padded batch. keepAll keeps every layer's activations for backward; otherwise
  // each layer's are freed once it is done, except what decoding caches need (conv inputs bx, attention k and v).
  void forward(const TokenBatchView& batch, Activations& a, bool keepAll) {
    const int64_t B = batch.batch, T = batch.seqLen, N = B * T, H = cfg_.hiddenSize, I = cfg_.intermediateSize;
    const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim, qDim = nh * hd, kvDim = nkv * hd;
    a.batch = B;
    a.seqLen = T;
    a.tokens.assign(batch.tokens, batch.tokens + N);
    a.mask.assign(batch.mask, batch.mask + N);
    a.positions.resize(N);
    cpu::positions_from_mask(a.positions.data(), a.mask.data(), B, T);
    a.layers.assign(cfg_.numLayers, LayerActivations());

    vector<float> x(N * H), delta(N * H);
    cpu::embedding_forward(x.data(), a.tokens.data(), P(embedding_), N, H);
    for (int64_t l = 0; l < cfg_.numLayers; l++) {
      const LayerOffsets& lo = layers_[l];
      LayerActivations& la = a.layers[l];
      la.xIn = x;
      la.rstdOp.resize(N);
      la.normed.resize(N * H);
      cpu::rmsnorm_forward(la.normed.data(), la.rstdOp.data(), x.data(), P(lo.operatorNorm), N, H, cfg_.normEps);
      if (cfg_.layerTypes[l] == LayerKind::Conv) {
        cpu::mask_rows(la.normed.data(), a.mask.data(), N, H);
        la.bcx.resize(N * 3 * H);
        la.bx.resize(N * H);
        la.conv.resize(N * H);
        la.y.resize(N * H);
        linearForward(la.bcx.data(), la.normed.data(), lo.inProj, N, H, 3 * H, a.adapters);
        cpu::conv_gate_in_forward(la.bx.data(), la.bcx.data(), N, H);
        cpu::causal_conv_forward(la.conv.data(), la.bx.data(), P(lo.convWeight), B, T, H, cfg_.convKernel);
        cpu::conv_gate_out_forward(la.y.data(), la.bcx.data(), la.conv.data(), N, H);
        linearForward(delta.data(), la.y.data(), lo.outProj, N, H, H, a.adapters);
      } else {
        la.qRaw.resize(N * qDim);
        la.kRaw.resize(N * kvDim);
        la.v.resize(N * kvDim);
        la.q.resize(N * qDim);
        la.k.resize(N * kvDim);
        la.rstdQ.resize(N * nh);
        la.rstdK.resize(N * nkv);
        la.attn.resize(N * qDim);
        la.lse.resize(B * nh * T);
        linearForward(la.qRaw.data(), la.normed.data(), lo.q, N, H, qDim, a.adapters);
        linearForward(la.kRaw.data(), la.normed.data(), lo.k, N, H, kvDim, a.adapters);
        linearForward(la.v.data(), la.normed.data(), lo.v, N, H, kvDim, a.adapters);
        cpu::rmsnorm_forward(la.q.data(), la.rstdQ.data(), la.qRaw.data(), P(lo.qNorm), N * nh, hd, cfg_.normEps);
        cpu::rmsnorm_forward(la.k.data(), la.rstdK.data(), la.kRaw.data(), P(lo.kNorm), N * nkv, hd, cfg_.normEps);
        cpu::rope_forward(la.q.data(), a.positions.data(), N, nh, hd, cfg_.ropeTheta);
        cpu::rope_forward(la.k.data(), a.positions.data(), N, nkv, hd, cfg_.ropeTheta);
        cpu::attention_forward(la.attn.data(), la.lse.data(), la.q.data(), la.k.data(), la.v.data(), a.mask.data(), B, T,
                               nh, nkv, hd);
        linearForward(delta.data(), la.attn.data(), lo.o, N, qDim, H, a.adapters);
      }
      cpu::residual_add(x.data(), delta.data(), N * H);
      la.xMid = x;
      la.rstdFfn.resize(N);
      la.ffnIn.resize(N * H);
      la.gate.resize(N * I);
      la.up.resize(N * I);
      la.act.resize(N * I);
      cpu::rmsnorm_forward(la.ffnIn.data(), la.rstdFfn.data(), x.data(), P(lo.ffnNorm), N, H, cfg_.normEps);
      linearForward(la.gate.data(), la.ffnIn.data(), lo.w1, N, H, I, a.adapters);
      linearForward(la.up.data(), la.ffnIn.data(), lo.w3, N, H, I, a.adapters);
      cpu::swiglu_forward(la.act.data(), la.gate.data(), la.up.data(), N * I);
      linearForward(delta.data(), la.act.data(), lo.w2, N, I, H, a.adapters);
      cpu::residual_add(x.data(), delta.data(), N * H);
      if (!keepAll) releaseForInference(la);
    }
    a.xLast = x;
    a.rstdFinal.resize(N);
    a.xFinal.resize(N * H);
    cpu::rmsnorm_forward(a.xFinal.data(), a.rstdFinal.data(), x.data(), P(finalNorm_), N, H, cfg_.normEps);
  }

  static void releaseForInference(LayerActivations& la) {
    for (vector<float>* buffer : {&la.xIn, &la.rstdOp, &la.normed, &la.bcx, &la.conv, &la.y, &la.qRaw, &la.kRaw,
                                  &la.rstdQ, &la.rstdK, &la.q, &la.attn, &la.lse, &la.xMid, &la.rstdFfn, &la.ffnIn,
                                  &la.gate, &la.up, &la.act})
      vector<float>().swap(*buffer);
  }

  friend class CpuDecodeSlots;
  // The caches and first logits of a sequence whose prompt is `prompt`.
  SequenceState prefillSequence(const vector<int32_t>& prompt);
  // One decoding step for the given sequences: feeds each its last token and leaves next-token logits.
  void decodeStep(vector<SequenceState*>& seqs);

  ModelConfig cfg_;
  int threads_;
  vector<ParameterInfo> table_;
  std::unordered_map<std::string, size_t> index_;
  vector<int64_t> offsets_, numels_;
  vector<float> params_, grads_, adamM_, adamV_;
  int64_t embedding_ = 0, finalNorm_ = 0, lmHead_ = 0;

  // LoRA: adapters live in arenas of their own; loraOf_ maps a base weight's offset to its adapter.
  bool loraEnabled_ = false;
  int64_t loraRank_ = 0;
  float loraScale_ = 0;
  float loraDropout_ = 0;
  vector<ParameterInfo> loraTable_;
  std::unordered_map<std::string, size_t> loraIndex_;
  vector<int64_t> loraOffsets_, loraNumels_;
  std::unordered_map<int64_t, LoraSlot> loraOf_;
  vector<float> lora_, loraGrads_, loraM_, loraV_;
  vector<LayerOffsets> layers_;
  std::unique_ptr<Activations> saved_;
};

// ---- generation ---------------------------------------------------------------------------------------------

SequenceState CpuEngine::prefillSequence(const vector<int32_t>& prompt) {
  const int64_t H = cfg_.hiddenSize, V = cfg_.vocabSize, K = cfg_.convKernel, T = int64_t(prompt.size());
  vector<uint8_t> mask(T, 1);
  TokenBatchView view{prompt.data(), mask.data(), 1, T};
  Activations acts;
  forward(view, acts, false);
  SequenceState st;
  st.length = T;
  st.convState.resize(cfg_.numLayers);
  st.kCache.resize(cfg_.numLayers);
  st.vCache.resize(cfg_.numLayers);
  for (int64_t l = 0; l < cfg_.numLayers; l++) {
    LayerActivations& la = acts.layers[l];
    if (cfg_.layerTypes[l] == LayerKind::Conv) {
      // The last K-1 inputs of the conv (zeros before the prompt's start).
      vector<float>& state = st.convState[l];
      state.assign((K - 1) * H, 0.0f);
      for (int64_t j = 0; j < K - 1; j++) {
        int64_t t = T - (K - 1) + j;
        if (t >= 0) std::memcpy(state.data() + j * H, la.bx.data() + t * H, H * sizeof(float));
      }
    } else {
      st.kCache[l] = std::move(la.k);
      st.vCache[l] = std::move(la.v);
    }
  }
  st.logits.resize(V);
  cpu::matmul_forward(st.logits.data(), acts.xFinal.data() + (T - 1) * H, P(lmHead_), 1, H, V);
  st.seen.assign(V, 0);
  for (int32_t tok : prompt) st.seen[tok] = 1;
  return st;
}

// The CPU rows of a generation session: each row's state grows with its sequence, so reserve() only sizes the
// row table.
class CpuDecodeSlots final : public DecodeSlots {
 public:
  CpuDecodeSlots(CpuEngine& engine, const GenerationSettings& settings) : engine_(engine) {
    options_.temperature = settings.sampling.temperature;
    options_.top_k = settings.sampling.topK;
    options_.top_p = settings.sampling.topP;
    options_.min_p = settings.sampling.minP;
    options_.repetition_penalty = settings.sampling.repetitionPenalty;
    options_.greedy = settings.sampling.greedy;
  }

  void reserve(int64_t slots, int64_t, int64_t) override { rows_.assign(slots, SequenceState{}); }

  void prefill(const std::vector<SlotJoin>& joins) override {
    engine_.setThreads();
    // Each distinct prompt once, then forked to the rows that share it.
    std::unordered_map<const vector<int32_t>*, int32_t> firstRow;
    for (const SlotJoin& j : joins) {
      auto it = firstRow.find(j.prompt);
      if (it == firstRow.end()) {
        rows_[j.slot] = engine_.prefillSequence(*j.prompt);
        firstRow.emplace(j.prompt, j.slot);
      } else {
        rows_[j.slot] = rows_[it->second];
      }
      rows_[j.slot].rng = j.rngSeed;
    }
  }

  void sample(bool decode, const StepPlan& plan, StepOutput& out) override {
    engine_.setThreads();
    const int64_t V = engine_.cfg_.vocabSize, n = int64_t(rows_.size());
    vector<SequenceState*> active;
    vector<int64_t> index;
    for (int64_t r = 0; r < n; r++)
      if (plan.lengths[r] > 0) {
        active.push_back(&rows_[r]);
        index.push_back(r);
      }
    if (decode) engine_.decodeStep(active);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < int64_t(active.size()); i++) {
      SequenceState& st = *active[i];
      const int64_t r = index[i];
      if (!std::all_of(st.logits.begin(), st.logits.end(), [](float z) { return std::isfinite(z); })) {
        out.status[r] = 1;  // the scheduler reports it: exceptions must not leave an OpenMP region
        continue;
      }
      const int32_t* allowed = plan.allowedCount[r] >= 0 ? plan.allowedTokens.data() + plan.allowedBegin[r] : nullptr;
      const int64_t nAllowed = plan.allowedCount[r] >= 0 ? plan.allowedCount[r] : 0;
      float logprob = 0;
      const int32_t tok = cpu::sample_token(st.logits.data(), V, allowed, nAllowed, st.seen.data(), options_, st.rng,
                                            &logprob);
      st.seen[tok] = 1;
      st.lastToken = tok;
      out.tokens[r] = tok;
      out.logprobs[r] = logprob;
    }
  }

 private:
  CpuEngine& engine_;
  cpu::SamplingOptions options_;
  vector<SequenceState> rows_;
};

std::unique_ptr<DecodeSlots> CpuEngine::createDecodeSlots(const GenerationSettings& settings) {
  return std::make_unique<CpuDecodeSlots>(*this, settings);
}

void CpuEngine::decodeStep(vector<SequenceState*>& seqs) {
  const int64_t n = int64_t(seqs.size()), H = cfg_.hiddenSize, I = cfg_.intermediateSize, V = cfg_.vocabSize;
  const int64_t nh = cfg_.numHeads, nkv = cfg_.numKvHeads, hd = cfg_.headDim, qDim = nh * hd, kvDim = nkv * hd;
  const int64_t K = cfg_.convKernel;
  vector<int32_t> tokens(n), positions(n);
  for (int64_t i = 0; i < n; i++) {
    tokens[i] = seqs[i]->lastToken;
    positions[i] = int32_t(seqs[i]->length);  // every cached token is real, so this is its RoPE position
  }
  vector<float> x(n * H), normed(n * H), delta(n * H);
  cpu::embedding_forward(x.data(), tokens.data(), P(embedding_), n, H);
  for (int64_t l = 0; l < cfg_.numLayers; l++) {
    const LayerOffsets& lo = layers_[l];
    cpu::rmsnorm_forward(normed.data(), nullptr, x.data(), P(lo.operatorNorm), n, H, cfg_.normEps);
    if (cfg_.layerTypes[l] == LayerKind::Conv) {
      vector<float> bcx(n * 3 * H), bx(n * H), conv(n * H), y(n * H);
      linearForward(bcx.data(), normed.data(), lo.inProj, n, H, 3 * H, AdapterPass{});
      cpu::conv_gate_in_forward(bx.data(), bcx.data(), n, H);
#pragma omp parallel for
      for (int64_t i = 0; i < n; i++)
        cpu::causal_conv_step(conv.data() + i * H, seqs[i]->convState[l].data(), bx.data() + i * H, P(lo.convWeight), H, K);
      cpu::conv_gate_out_forward(y.data(), bcx.data(), conv.data(), n, H);
      linearForward(delta.data(), y.data(), lo.outProj, n, H, H, AdapterPass{});
    } else {
      vector<float> q(n * qDim), k(n * kvDim), v(n * kvDim), attn(n * qDim);
      linearForward(q.data(), normed.data(), lo.q, n, H, qDim, AdapterPass{});
      linearForward(k.data(), normed.data(), lo.k, n, H, kvDim, AdapterPass{});
      linearForward(v.data(), normed.data(), lo.v, n, H, kvDim, AdapterPass{});
      cpu::rmsnorm_forward(q.data(), nullptr, q.data(), P(lo.qNorm), n * nh, hd, cfg_.normEps);
      cpu::rmsnorm_forward(k.data(), nullptr, k.data(), P(lo.kNorm), n * nkv, hd, cfg_.normEps);
      cpu::rope_forward(q.data(), positions.data(), n, nh, hd, cfg_.ropeTheta);
      cpu::rope_forward(k.data(), positions.data(), n, nkv, hd, cfg_.ropeTheta);
#pragma omp parallel for schedule(dynamic)
      for (int64_t i = 0; i < n; i++) {
        SequenceState& st = *seqs[i];
        st.kCache[l].insert(st.kCache[l].end(), k.begin() + i * kvDim, k.begin() + (i + 1) * kvDim);
        st.vCache[l].insert(st.vCache[l].end(), v.begin() + i * kvDim, v.begin() + (i + 1) * kvDim);
        cpu::attention_decode(attn.data() + i * qDim, q.data() + i * qDim, st.kCache[l].data(), st.vCache[l].data(),
                              st.length + 1, nh, nkv, hd);
      }
      linearForward(delta.data(), attn.data(), lo.o, n, qDim, H, AdapterPass{});
    }
    cpu::residual_add(x.data(), delta.data(), n * H);
    vector<float> ffnIn(n * H), gate(n * I), up(n * I), act(n * I);
    cpu::rmsnorm_forward(ffnIn.data(), nullptr, x.data(), P(lo.ffnNorm), n, H, cfg_.normEps);
    linearForward(gate.data(), ffnIn.data(), lo.w1, n, H, I, AdapterPass{});
    linearForward(up.data(), ffnIn.data(), lo.w3, n, H, I, AdapterPass{});
    cpu::swiglu_forward(act.data(), gate.data(), up.data(), n * I);
    linearForward(delta.data(), act.data(), lo.w2, n, I, H, AdapterPass{});
    cpu::residual_add(x.data(), delta.data(), n * H);
  }
  cpu::rmsnorm_forward(normed.data(), nullptr, x.data(), P(finalNorm_), n, H, cfg_.normEps);
  vector<float> logits(n * V);
  cpu::matmul_forward(logits.data(), normed.data(), P(lmHead_), n, H, V);
  for (int64_t i = 0; i < n; i++) {
    std::memcpy(seqs[i]->logits.data(), logits.data() + i * V, V * sizeof(float));
    seqs[i]->length++;
  }
}

}  // namespace

std::unique_ptr<Engine> createCpuEngine(const ModelConfig& config, int threads) {
  return std::make_unique<CpuEngine>(config, threads);
}

}  // namespace webgrpo
