#include "engine.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <stdexcept>

#include "cpu/ops.h"

namespace webgrpo {

void ModelConfig::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("invalid model config: " + what);
  };
  require(vocabSize > 0, "vocabSize must be > 0");
  require(hiddenSize > 0, "hiddenSize must be > 0");
  require(numLayers > 0, "numLayers must be > 0");
  require(int64_t(layerTypes.size()) == numLayers,
          "layerTypes has " + std::to_string(layerTypes.size()) + " entries, numLayers is " + std::to_string(numLayers));
  require(numHeads > 0 && numKvHeads > 0, "numHeads and numKvHeads must be > 0");
  require(numHeads % numKvHeads == 0, "numHeads (" + std::to_string(numHeads) + ") must be a multiple of numKvHeads (" +
                                          std::to_string(numKvHeads) + ")");
  require(headDim > 0 && headDim % 2 == 0, "headDim must be a positive even number");
  require(intermediateSize > 0, "intermediateSize must be > 0");
  require(convKernel >= 1, "convKernel must be >= 1");
  require(normEps > 0, "normEps must be > 0");
  require(ropeTheta > 0, "ropeTheta must be > 0");
}

std::vector<ParameterInfo> lfm2ParameterTable(const ModelConfig& c) {
  const int64_t H = c.hiddenSize, I = c.intermediateSize, qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
  std::vector<ParameterInfo> table;
  table.push_back({"model.embed_tokens.weight", {c.vocabSize, H}});
  for (int64_t i = 0; i < c.numLayers; i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    if (c.layerTypes[i] == LayerKind::Conv) {
      table.push_back({p + "conv.conv.weight", {H, 1, c.convKernel}});
      table.push_back({p + "conv.in_proj.weight", {3 * H, H}});
      table.push_back({p + "conv.out_proj.weight", {H, H}});
    } else {
      table.push_back({p + "self_attn.q_proj.weight", {qDim, H}});
      table.push_back({p + "self_attn.k_proj.weight", {kvDim, H}});
      table.push_back({p + "self_attn.v_proj.weight", {kvDim, H}});
      table.push_back({p + "self_attn.out_proj.weight", {H, qDim}});
      table.push_back({p + "self_attn.q_layernorm.weight", {c.headDim}});
      table.push_back({p + "self_attn.k_layernorm.weight", {c.headDim}});
    }
    table.push_back({p + "feed_forward.w1.weight", {I, H}});
    table.push_back({p + "feed_forward.w3.weight", {I, H}});
    table.push_back({p + "feed_forward.w2.weight", {H, I}});
    table.push_back({p + "operator_norm.weight", {H}});
    table.push_back({p + "ffn_norm.weight", {H}});
  }
  table.push_back({"model.embedding_norm.weight", {H}});
  if (!c.tieEmbeddings) table.push_back({"lm_head.weight", {c.vocabSize, H}});
  return table;
}

namespace {
std::mutex registryMutex;
struct Registered {
  EngineFactory factory;
  BackendFeatures features;
};
std::map<Device, Registered>& registry() {
  static std::map<Device, Registered> factories;
  return factories;
}
}  // namespace

void registerEngineFactory(Device device, EngineFactory factory, BackendFeatures features) {
  std::lock_guard<std::mutex> lock(registryMutex);
  registry()[device] = {std::move(factory), features};
}

BackendFeatures backendFeatures(Device device) {
  if (device == Device::CPU) return {};
  std::lock_guard<std::mutex> lock(registryMutex);
  auto it = registry().find(device);
  if (it == registry().end())
    throw std::runtime_error(std::string("backend '") + deviceName(device) + "' has no engine in this build");
  return it->second.features;
}

std::unique_ptr<Engine> createEngine(Device device, const ModelConfig& config, int threads) {
  config.validate();
  if (device == Device::CPU) return createCpuEngine(config, threads);
  EngineFactory factory;
  {
    std::lock_guard<std::mutex> lock(registryMutex);
    auto it = registry().find(device);
    if (it != registry().end()) factory = it->second.factory;
  }
  if (!factory)
    throw std::runtime_error(std::string("backend '") + deviceName(device) + "' has no engine in this build" +
                             (cudaAvailable() ? "" : " (no CUDA device or built without CUDA)"));
  return factory(config, threads);
}

bool isNormWeight(const std::string& name) {
  const std::string suffix = "norm.weight";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

size_t lookupParameter(const std::unordered_map<std::string, size_t>& index, const std::vector<ParameterInfo>& table,
                       const char* method, const std::string& name) {
  auto it = index.find(name);
  if (it == index.end())
    throw std::invalid_argument(std::string(method) + "(" + name + "): unknown parameter name (this model has " +
                                std::to_string(table.size()) + " parameters, e.g. " + table[0].name + ")");
  return it->second;
}

void checkParameterShape(const char* method, const std::string& name, const std::vector<int64_t>& expected,
                         const std::vector<int64_t>& got) {
  if (expected != got)
    throw std::invalid_argument(std::string(method) + "(" + name + "): expected shape " + shapeToString(expected) +
                                ", got " + shapeToString(got));
}

std::string formatPosition(int64_t b, int64_t t) {
  return "(row " + std::to_string(b) + ", position " + std::to_string(t) + ")";
}

std::vector<LayerOffsets> lfm2LayerOffsets(const ModelConfig& config,
                                           const std::function<int64_t(const std::string&)>& offsetOf) {
  std::vector<LayerOffsets> layers;
  for (int64_t l = 0; l < config.numLayers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets lo;
    lo.operatorNorm = offsetOf(p + "operator_norm.weight");
    lo.ffnNorm = offsetOf(p + "ffn_norm.weight");
    lo.w1 = offsetOf(p + "feed_forward.w1.weight");
    lo.w2 = offsetOf(p + "feed_forward.w2.weight");
    lo.w3 = offsetOf(p + "feed_forward.w3.weight");
    if (config.layerTypes[l] == LayerKind::Conv) {
      lo.convWeight = offsetOf(p + "conv.conv.weight");
      lo.inProj = offsetOf(p + "conv.in_proj.weight");
      lo.outProj = offsetOf(p + "conv.out_proj.weight");
    } else {
      lo.q = offsetOf(p + "self_attn.q_proj.weight");
      lo.k = offsetOf(p + "self_attn.k_proj.weight");
      lo.v = offsetOf(p + "self_attn.v_proj.weight");
      lo.o = offsetOf(p + "self_attn.out_proj.weight");
      lo.qNorm = offsetOf(p + "self_attn.q_layernorm.weight");
      lo.kNorm = offsetOf(p + "self_attn.k_layernorm.weight");
    }
    layers.push_back(lo);
  }
  return layers;
}

void initialParameterValues(const ModelConfig& config, const std::vector<ParameterInfo>& table, size_t index,
                            uint64_t seed, float range, float* out) {
  const ParameterInfo& info = table[index];
  const int64_t n = shapeNumel(info.shape);
  if (isNormWeight(info.name)) {
    std::fill_n(out, n, 1.0f);
    return;
  }
  // One stream per tensor, so a tensor's values do not depend on the others.
  uint64_t rng = cpu::rng_seed_for(seed, index);
  for (int64_t j = 0; j < n; j += 2) {  // Box-Muller, two normals per pair of uniforms
    const double u1 = 1.0 - cpu::rng_uniform(rng), u2 = cpu::rng_uniform(rng);
    const double radius = std::sqrt(-2.0 * std::log(u1)) * range;
    out[j] = float(radius * std::cos(2 * M_PI * u2));
    if (j + 1 < n) out[j + 1] = float(radius * std::sin(2 * M_PI * u2));
  }
  // transformers zeroes the padding_idx row of nn.Embedding.
  if (info.name == "model.embed_tokens.weight" && config.padTokenId >= 0 && config.padTokenId < config.vocabSize)
    std::fill_n(out + config.padTokenId * config.hiddenSize, config.hiddenSize, 0.0f);
}

void validateTokenBatch(const char* method, const TokenBatchView& batch, int64_t vocab) {
  if (batch.batch <= 0 || batch.seqLen <= 0)
    throw std::invalid_argument(std::string(method) + ": batchSize and seqLen must be > 0");
  for (int64_t i = 0; i < batch.batch * batch.seqLen; i++) {
    const int32_t tok = batch.tokens[i];
    if (tok < 0 || tok >= vocab)
      throw std::invalid_argument(std::string(method) + ": token " + std::to_string(tok) + " at " +
                                  formatPosition(i / batch.seqLen, i % batch.seqLen) + " is outside the vocabulary (size " +
                                  std::to_string(vocab) + ")");
  }
}

ScoredPositions collectScoredPositions(const ScoreArgs& args, int64_t vocab) {
  const TokenBatchView& batch = args.batch;
  const int64_t T = batch.seqLen;
  ScoredPositions s;
  for (int64_t b = 0; b < batch.batch; b++)
    for (int64_t t = 0; t < T; t++) {
      if (!args.scoreMask[b * T + t]) continue;
      if (t == 0) throw std::invalid_argument("score: scoreMask is set at " + formatPosition(b, t) + ", which has no token before it");
      if (!batch.mask[b * T + t]) throw std::invalid_argument("score: scoreMask is set at padded " + formatPosition(b, t));
      if (!batch.mask[b * T + t - 1])
        throw std::invalid_argument("score: scoreMask is set at " + formatPosition(b, t) + " but the token before it is padding");
      s.rows.push_back(b * T + t - 1);
      s.targets.push_back(batch.tokens[b * T + t]);
    }
  if (!args.allowedOffsets) return s;
  const int64_t S = int64_t(s.rows.size());
  s.hasAllowed = true;
  s.allowedOffsets.assign(args.allowedOffsets, args.allowedOffsets + S + 1);
  if (s.allowedOffsets[0] != 0) throw std::invalid_argument("score: allowed.offsets[0] must be 0");
  for (int64_t r = 0; r < S; r++)
    if (s.allowedOffsets[r + 1] < s.allowedOffsets[r])
      throw std::invalid_argument("score: allowed.offsets must be non-decreasing (at " + std::to_string(r + 1) + ")");
  s.allowedTokens.assign(args.allowedTokens, args.allowedTokens + s.allowedOffsets[S]);
  for (int32_t tok : s.allowedTokens)
    if (tok < 0 || tok >= vocab)
      throw std::invalid_argument("score: allowed token " + std::to_string(tok) + " is outside the vocabulary");
  for (int64_t r = 0; r < S; r++) {
    // A repeated id would count twice in the row's softmax.
    std::vector<int32_t> row(s.allowedTokens.begin() + s.allowedOffsets[r], s.allowedTokens.begin() + s.allowedOffsets[r + 1]);
    std::sort(row.begin(), row.end());
    if (std::adjacent_find(row.begin(), row.end()) != row.end())
      throw std::invalid_argument("score: the allowed tokens of scored position " + std::to_string(r) + " contain a repeated id");
    if (!std::binary_search(row.begin(), row.end(), s.targets[r])) {
      const int64_t pos = s.rows[r] + 1;
      throw std::invalid_argument("score: token " + std::to_string(s.targets[r]) + " at " + formatPosition(pos / T, pos % T) +
                                  " (scored position " + std::to_string(r) + ") is not among its allowed tokens");
    }
  }
  return s;
}


LoraPlan planLora(const ModelConfig& cfg, const LoraConfig& lc, const std::vector<ParameterInfo>& table,
                  const std::function<int64_t(const std::string&)>& offsetOf) {
  if (lc.rank < 1) throw std::invalid_argument("enableLora: rank must be >= 1, got " + std::to_string(lc.rank));
  if (!(lc.alpha > 0)) throw std::invalid_argument("enableLora: alpha must be > 0");
  if (!(lc.dropout >= 0 && lc.dropout < 1))
    throw std::invalid_argument("enableLora: dropout must be in [0, 1), got " + std::to_string(lc.dropout));
  if (lc.targets.empty()) throw std::invalid_argument("enableLora: targets is empty");
  static const char* kModules[] = {"q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"};
  for (const std::string& t : lc.targets)
    if (std::find(std::begin(kModules), std::end(kModules), t) == std::end(kModules))
      throw std::invalid_argument("enableLora: target '" + t + "' is not an LFM2 linear layer (q_proj, k_proj, v_proj, "
                                  "out_proj, in_proj, w1, w2, w3)");
  auto wanted = [&](const char* module) { return std::find(lc.targets.begin(), lc.targets.end(), module) != lc.targets.end(); };
  std::unordered_map<std::string, const ParameterInfo*> byName;
  for (const ParameterInfo& p : table) byName[p.name] = &p;
  std::unordered_map<std::string, bool> matched;
  std::vector<std::pair<int64_t, std::string>> chosen;  // (base offset, base name without ".weight")
  for (int64_t l = 0; l < cfg.numLayers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::pair<const char*, std::string>> modules = {
        {"w1", "feed_forward.w1"}, {"w2", "feed_forward.w2"}, {"w3", "feed_forward.w3"}};
    if (cfg.layerTypes[l] == LayerKind::Conv) {
      modules.insert(modules.begin(), {{"in_proj", "conv.in_proj"}, {"out_proj", "conv.out_proj"}});
    } else {
      modules.insert(modules.begin(), {{"q_proj", "self_attn.q_proj"}, {"k_proj", "self_attn.k_proj"},
                                       {"v_proj", "self_attn.v_proj"}, {"out_proj", "self_attn.out_proj"}});
    }
    for (auto& [module, path] : modules) {
      if (!wanted(module)) continue;
      matched[module] = true;
      chosen.push_back({offsetOf(p + path + ".weight"), p + path});
    }
  }
  for (const std::string& t : lc.targets)
    if (!matched.count(t)) throw std::invalid_argument("enableLora: target '" + t + "' matches no layer of this model");
  LoraPlan plan;
  for (auto& [offset, base] : chosen) {
    const std::vector<int64_t>& shape = byName.at(base + ".weight")->shape;  // [out, in]
    LoraAdapter ad;
    ad.baseOffset = offset;
    ad.out = shape[0];
    ad.in = shape[1];
    ad.index = plan.adapters.size();
    for (const char* which : {"lora_A", "lora_B"}) {
      ParameterInfo info{base + "." + which + ".weight",
                         which[5] == 'A' ? std::vector<int64_t>{lc.rank, shape[1]} : std::vector<int64_t>{shape[0], lc.rank}};
      // 16-element alignment keeps bf16 views of every tensor 32-byte aligned (GEMM operands).
      plan.total = (plan.total + 15) / 16 * 16;
      plan.offsets.push_back(plan.total);
      plan.numels.push_back(shapeNumel(info.shape));
      (which[5] == 'A' ? ad.a : ad.b) = plan.total;
      plan.total += plan.numels.back();
      plan.table.push_back(std::move(info));
    }
    plan.adapters.push_back(ad);
  }
  plan.scale = lc.rslora ? float(lc.alpha / std::sqrt(double(lc.rank))) : float(lc.alpha / double(lc.rank));
  return plan;
}

std::vector<float> LoraPlan::initial(uint64_t seed) const {
  std::vector<float> values(total, 0.0f);
  // PEFT's init: A ~ Kaiming-uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the model is unchanged.
  for (size_t i = 0; i < table.size(); i += 2) {
    const double bound = 1.0 / std::sqrt(double(table[i].shape[1]));
    uint64_t rng = cpu::rng_seed_for(seed, i / 2);
    float* a = values.data() + offsets[i];
    for (int64_t j = 0; j < numels[i]; j++) a[j] = float((2 * cpu::rng_uniform(rng) - 1) * bound);
  }
  return values;
}

}  // namespace webgrpo
