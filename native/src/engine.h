// Engine: the model-math interface that each backend implements (cpu/engine_cpu.cpp; a CUDA engine registers
// itself with registerEngineFactory). The binding validates JS inputs into these plain structs; engines may
// assume lengths are consistent but validate values (token ids, shapes of parameters) themselves.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensor.h"

namespace webgrpo {

enum class LayerKind { Conv, Attention };

struct ModelConfig {
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t numLayers = 0;
  int64_t numHeads = 0;
  int64_t numKvHeads = 0;
  int64_t headDim = 0;
  int64_t intermediateSize = 0;
  std::vector<LayerKind> layerTypes;
  int64_t convKernel = 3;
  float normEps = 1e-5f;
  float ropeTheta = 1e6f;
  bool tieEmbeddings = true;
  int64_t bosTokenId = 1;
  int64_t eosTokenId = 7;
  int64_t padTokenId = 0;
  int64_t maxPositionEmbeddings = 0;
  float initializerRange = 0.02f;

  // Throws std::invalid_argument naming the first inconsistent field.
  void validate() const;
};

struct ParameterInfo {
  std::string name;
  std::vector<int64_t> shape;
};

// A left-padded batch, row-major [batch, seqLen].
struct TokenBatchView {
  const int32_t* tokens = nullptr;
  const uint8_t* mask = nullptr;
  int64_t batch = 0;
  int64_t seqLen = 0;
};

struct ScoreArgs {
  TokenBatchView batch;
  const uint8_t* scoreMask = nullptr;       // [batch*seqLen]
  float temperature = 1.0f;
  const int32_t* allowedOffsets = nullptr;  // [scored+1] or null
  const int32_t* allowedTokens = nullptr;
  bool keepActivations = false;
  bool adapters = true;                     // false: the base model alone (LoRA's frozen reference policy)
  uint64_t dropoutSeed = 0;                 // seeds LoRA dropout masks of a training pass (keepActivations)
};

struct ScoreOutput {
  std::vector<float> logprobs;
  std::vector<float> entropy;
};

struct AdamWArgs {
  float lr = 0, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weightDecay = 0;
  int64_t step = 1;
  float gradScale = 1;
};

struct SamplingArgs {
  float temperature = 1.0f;
  int32_t topK = 0;
  float topP = 1.0f;
  float minP = 0.0f;
  float repetitionPenalty = 1.0f;
  bool greedy = false;
  uint64_t seed = 0;
};

struct TokenTrieView {
  std::vector<int32_t> childOffsets;  // [nodes+1]
  std::vector<int32_t> childTokens;
  std::vector<int32_t> childNodes;
  int64_t nodes() const { return int64_t(childOffsets.size()) - 1; }
};

struct GenerateArgs {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> sequencePrompt;
  int64_t maxNewTokens = 0;
  std::vector<int32_t> stopTokens;
  SamplingArgs sampling;
  // Per sequence; an empty optional (nullptr) means unconstrained. Empty vector = all unconstrained.
  std::vector<std::shared_ptr<const TokenTrieView>> constraints;
};

// LoRA as PEFT does it: lora_A [rank, in] (Kaiming-uniform), lora_B [out, rank] (zeros), y = W x + s·B(A x) with
// s = alpha/rank (alpha/sqrt(rank) for rsLoRA). targets are module names: q_proj k_proj v_proj out_proj (attention),
// in_proj out_proj (short conv), w1 w2 w3 (MLP); each must match some layer. dropout acts on the adapter's input in
// training passes (score with keepActivations) only, as PEFT's does in train mode.
struct LoraConfig {
  int64_t rank = 8;
  float alpha = 16;
  float dropout = 0;
  bool rslora = false;
  std::vector<std::string> targets;
  uint64_t seed = 0;
};

// Where a LoRA config puts its adapters over an LFM2 parameter table: one per targeted base weight [out, in], its
// lora_A [rank, in] and lora_B [out, rank] in an adapter arena (PEFT's tensor names, table order A, B, A, B...).
struct LoraAdapter {
  int64_t baseOffset = 0, in = 0, out = 0, a = 0, b = 0;  // a, b: offsets in the adapter arena
  uint64_t index = 0;                                      // the adapter's number (dropout streams)
};
struct LoraPlan {
  std::vector<ParameterInfo> table;
  std::vector<int64_t> offsets, numels;  // per table entry, in the adapter arena
  std::vector<LoraAdapter> adapters;
  int64_t total = 0;
  float scale = 0;                       // alpha / rank, or alpha / sqrt(rank) with rsLoRA
  // PEFT's initial values (A Kaiming-uniform from the seed, B zeros) for the whole arena.
  std::vector<float> initial(uint64_t seed) const;
};
// Validates a LoRA config (std::invalid_argument naming the bad field or target) and plans its adapters.
LoraPlan planLora(const ModelConfig& config, const LoraConfig& lora, const std::vector<ParameterInfo>& table,
                  const std::function<int64_t(const std::string&)>& offsetOf);

enum class FinishReason { Stop, Length, Constraint };

struct GenerateOutput {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finishReason = FinishReason::Length;
};

// ---- generation sessions (continuous batching) -----------------------------------------------------------------
// What every sequence of a session shares: limits, stop tokens and the sampler (sampling.seed is unused: each
// batch brings its own), and how many sequences decode together at most.
struct GenerationSettings {
  int64_t maxNewTokens = 0;
  std::vector<int32_t> stopTokens;
  SamplingArgs sampling;
  int64_t capacity = 0;
};

// Sequences that join a session together. Sequences that share a prompt index share its prefill. Sequence i of
// the batch samples from its own stream rng_seed_for(seed, i), so what it samples does not depend on which other
// sequences decode beside it.
struct SequenceBatch {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> sequencePrompt;
  std::vector<std::shared_ptr<const TokenTrieView>> constraints;  // per sequence (null: unconstrained) or empty
  uint64_t seed = 0;
};

struct FinishedSequence {
  int64_t id = 0;
  GenerateOutput output;
};

// A decoding batch that sequences join between steps and leave when they finish (EOS, stop, length, constraint),
// freeing their cache rows for the next ones. Multi-step browser episodes finish at different times; their next
// prompts join the running batch instead of waiting for a whole batch to finish.
class GenerationSession {
 public:
  virtual ~GenerationSession() = default;
  // Validates and queues a batch (std::invalid_argument names the problem; nothing is queued then). Its sequences
  // get consecutive ids from the returned one, in order, and join the decoding batch at a later step().
  virtual int64_t add(SequenceBatch batch) = 0;
  // Admits queued sequences into free rows (prefilling each distinct prompt of the admitted set once), then
  // decodes until at least one sequence has finished, and returns those that did. Empty when nothing is queued
  // or running.
  virtual std::vector<FinishedSequence> step() = 0;
  virtual int64_t queued() const = 0;
  virtual int64_t running() const = 0;
};

// A backend's side of a session: `slots` rows of decoding state (caches, sampler stream, penalty marks) and the
// math of one step. The shared scheduler (generation.cpp) owns the bookkeeping: which sequence holds which row,
// stop tokens, lengths, constraint tries.
struct SlotJoin {
  int32_t slot = 0;
  const std::vector<int32_t>* prompt = nullptr;  // joins with the same pointer share one prefill
  uint64_t rngSeed = 0;
};
// Per row: positions = tokens cached before this step's input; lengths = cached tokens once the step ran (> 0
// marks the rows that sample this step); allowedCount < 0: unconstrained, else allowedTokens[allowedBegin..].
struct StepPlan {
  std::vector<int32_t> positions, lengths, allowedBegin, allowedCount, allowedTokens;
};
struct StepOutput {
  std::vector<int32_t> tokens, status;  // status != 0: non-finite logits
  std::vector<float> logprobs;
};
class DecodeSlots {
 public:
  virtual ~DecodeSlots() = default;
  // Storage for `slots` rows of up to maxLen tokens and up to allowedCapacity allowed tokens per step. Called
  // only while no row is live; what rows held before is lost.
  virtual void reserve(int64_t slots, int64_t maxLen, int64_t allowedCapacity) = 0;
  // Prefills each joining row from its prompt: caches, the logits of its first token, its sampler stream.
  virtual void prefill(const std::vector<SlotJoin>& joins) = 0;
  // Samples one token for every row with plan.lengths > 0: from the prefill's logits (decode = false), or after
  // running the model on each such row's last sampled token (decode = true). Other rows are left as they are.
  virtual void sample(bool decode, const StepPlan& plan, StepOutput& out) = 0;
};

// Throws std::invalid_argument naming the first bad field.
void validateGenerationSettings(const GenerationSettings& settings);
void validateSequenceBatch(const SequenceBatch& batch, int64_t vocab);
// The shared scheduler over a backend's rows.

class Engine {
 public:
  virtual ~Engine() = default;
  virtual Device device() const = 0;
  virtual const ModelConfig& config() const = 0;

  virtual std::vector<ParameterInfo> parameterInfo() const = 0;
  virtual void setParameter(const std::string& name, const Tensor& value) = 0;
  virtual Tensor getParameter(const std::string& name) const = 0;
  virtual Tensor getGradient(const std::string& name) const = 0;
  // which: 'm' or 'v'
  virtual Tensor getOptimizerState(const std::string& name, char which) const = 0;
  virtual void setOptimizerState(const std::string& name, char which, const Tensor& value) = 0;
  virtual void initRandom(uint64_t seed, float initializerRange) = 0;

  // Full logits [batch, seqLen, vocab].
  virtual std::vector<float> forwardLogits(const TokenBatchView& batch) = 0;
  virtual ScoreOutput score(const ScoreArgs& args) = 0;
  // Accumulates gradients of Σ_k dLogprobs[k] * logprobs[k] of the last score(keepActivations=true).
  virtual void backward(const float* dLogprobs, int64_t count) = 0;
  virtual void zeroGrad() = 0;
  virtual double gradNorm() = 0;
  virtual void adamwStep(const AdamWArgs& args) = 0;
  // A session decodes with the weights as they are while it runs: no parameter changes until it is gone.
  // One session at a time per engine.
  std::unique_ptr<GenerationSession> startGeneration(const GenerationSettings& settings);
  // One batch in a session of its own, run to the end; outputs in sequence order.
  std::vector<GenerateOutput> generate(const GenerateArgs& args);

  // Adds LoRA adapters and freezes the base weights: from then on gradients, gradNorm and adamwStep cover the
  // adapters only, and the parameter accessors also take adapter names (trainableInfo() lists them).
  virtual void enableLora(const LoraConfig&) {
    throw std::runtime_error(std::string("enableLora: LoRA is not implemented on the ") + deviceName(device()) +
                             " backend yet");
  }
  // The tensors that train: the adapters in LoRA mode, else every parameter.
  virtual std::vector<ParameterInfo> trainableInfo() const { return parameterInfo(); }

 protected:
  // The backend's rows for a session with these (validated) settings.
  virtual std::unique_ptr<DecodeSlots> createDecodeSlots(const GenerationSettings& settings) = 0;

 private:
  std::shared_ptr<bool> generating_ = std::make_shared<bool>(false);  // a session is open (it resets this)
};

// The transformers tensor table of an LFM2 config, in checkpoint order (no lm_head.weight when tied).
std::vector<ParameterInfo> lfm2ParameterTable(const ModelConfig& config);

// Offsets of one layer's tensors in an arena laid out like lfm2ParameterTable; -1 where the layer kind has none.
struct LayerOffsets {
  int64_t operatorNorm = -1, ffnNorm = -1, w1 = -1, w2 = -1, w3 = -1;
  int64_t convWeight = -1, inProj = -1, outProj = -1;
  int64_t q = -1, k = -1, v = -1, o = -1, qNorm = -1, kNorm = -1;
};
// Every layer's offsets, from a lookup of a tensor's offset by its transformers name.
std::vector<LayerOffsets> lfm2LayerOffsets(const ModelConfig& config,
                                           const std::function<int64_t(const std::string&)>& offsetOf);

// ---- helpers the engines share -------------------------------------------------------------------------------
// Norm weights (operator_norm, ffn_norm, embedding_norm, q/k_layernorm) start at 1; every other tensor is random.
bool isNormWeight(const std::string& name);
// initRandom's values for tensor `index` of an LFM2 table, the same on every backend: norm weights 1, every
// other tensor N(0, range²) by Box-Muller from its own splitmix64 stream (rng_seed_for(seed, index)), and the
// embedding's padding row 0 as transformers leaves it. `out` holds the tensor's numel values.
void initialParameterValues(const ModelConfig& config, const std::vector<ParameterInfo>& table, size_t index,
                            uint64_t seed, float range, float* out);
// The index of `name` in `table`, or std::invalid_argument naming `method` and the parameter.
size_t lookupParameter(const std::unordered_map<std::string, size_t>& index, const std::vector<ParameterInfo>& table,
                       const char* method, const std::string& name);
void checkParameterShape(const char* method, const std::string& name, const std::vector<int64_t>& expected,
                         const std::vector<int64_t>& got);
// A batch's shape and token ids; std::invalid_argument names the method, the position and the id.
void validateTokenBatch(const char* method, const TokenBatchView& batch, int64_t vocab);
// What a score() call scores, validated: for each scored position its predicting row (b*T + t-1) and target, and
// the allowed-token rows when given (offsets from 0, non-decreasing; ids in the vocabulary, distinct within a
// row, the target among them). std::invalid_argument names the first problem.
struct ScoredPositions {
  std::vector<int64_t> rows;
  std::vector<int32_t> targets;
  bool hasAllowed = false;
  std::vector<int32_t> allowedOffsets, allowedTokens;
};
ScoredPositions collectScoredPositions(const ScoreArgs& args, int64_t vocab);
// "(row b, position t)" for messages about a batch entry.
std::string formatPosition(int64_t b, int64_t t);

using EngineFactory = std::function<std::unique_ptr<Engine>(const ModelConfig&, int threads)>;
// What a backend's engine implements beyond forward/backward/AdamW, so callers can choose a backend that can run
// their whole job (the trainer needs generate; LoRA runs need enableLora).
struct BackendFeatures {
  bool generate = true;
  bool lora = true;
};
// Backends register here (the CPU engine always; a CUDA engine from a static initializer in its .cu file).
void registerEngineFactory(Device device, EngineFactory factory, BackendFeatures features);
// Throws for a backend without an engine in this build.
BackendFeatures backendFeatures(Device device);
std::unique_ptr<Engine> createEngine(Device device, const ModelConfig& config, int threads);

std::unique_ptr<Engine> createCpuEngine(const ModelConfig& config, int threads);

}  // namespace webgrpo
