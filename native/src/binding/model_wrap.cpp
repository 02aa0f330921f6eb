// NativeModel: a JS handle around an Engine. Math runs on an AsyncWorker (a libuv pool thread) and returns a
// Promise; while one runs the model refuses every other call, because the engine is not re-entrant.
#include <atomic>

#include "binding/binding.h"
#include "engine.h"

namespace webgrpo::binding {

namespace {

// Runs `work` off the JS thread and settles a Promise with `result(env)` (or a JS Error naming `where`).
class EngineWorker : public Napi::AsyncWorker {
 public:
  EngineWorker(Napi::Env env, std::string where, std::function<void()> work,
               std::function<Napi::Value(Napi::Env)> result, std::function<void()> done)
      : Napi::AsyncWorker(env, "webgrpo"),
        deferred_(Napi::Promise::Deferred::New(env)),
        where_(std::move(where)),
        work_(std::move(work)),
        result_(std::move(result)),
        done_(std::move(done)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      work_();
    } catch (...) {
      SetError(withContext(where_, describeException(std::current_exception())));
    }
  }

  void OnOK() override {
    done_();
    try {
      deferred_.Resolve(result_(Env()));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& error) override {
    done_();
    deferred_.Reject(error.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string where_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> result_;
  std::function<void()> done_;
};

// Like guard(), but errors become a rejected Promise: methods that return Promises never throw synchronously.
Napi::Value guardAsync(Napi::Env env, const std::string& where, const std::function<Napi::Value()>& fn) {
  try {
    return guard(env, where, fn);
  } catch (const Napi::Error& e) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(e.Value());
    return deferred.Promise();
  }
}

Device parseBackend(const std::string& name, const std::string& what) {
  try {
    return parseDevice(name);
  } catch (const std::exception&) {
    throw std::invalid_argument(what + " must be 'cpu' or 'cuda', got '" + name + "'");
  }
}

TokenBatchView readBatch(const Napi::Object& obj, std::vector<int32_t>& tokens, std::vector<uint8_t>& mask,
                         const std::string& where) {
  TokenBatchView view;
  view.batch = requireInteger(obj.Get("batchSize"), where + ": batchSize", 1, int64_t(1) << 31);
  view.seqLen = requireInteger(obj.Get("seqLen"), where + ": seqLen", 1, int64_t(1) << 31);
  tokens = requireInt32Array(obj.Get("tokens"), where + ": tokens");
  mask = requireUint8Array(obj.Get("attentionMask"), where + ": attentionMask");
  const size_t n = size_t(view.batch * view.seqLen);
  if (tokens.size() != n)
    throw std::invalid_argument(where + ": tokens has " + std::to_string(tokens.size()) + " entries, batchSize*seqLen is " +
                                std::to_string(n));
  if (mask.size() != n)
    throw std::invalid_argument(where + ": attentionMask has " + std::to_string(mask.size()) +
                                " entries, batchSize*seqLen is " + std::to_string(n));
  view.tokens = tokens.data();
  view.mask = mask.data();
  return view;
}

ModelConfig readConfig(Napi::Env env, const std::string& json) {
  Napi::Object JSON = env.Global().Get("JSON").As<Napi::Object>();
  Napi::Value parsed;
  try {
    parsed = JSON.Get("parse").As<Napi::Function>().Call(JSON, {Napi::String::New(env, json)});
  } catch (const Napi::Error& e) {
    throw std::invalid_argument(std::string("configJson is not valid JSON: ") + e.Message());
  }
  Napi::Object c = requireObject(parsed, "configJson");
  auto integer = [&](const char* key, int64_t min) {
    return requireInteger(c.Get(key), std::string("config.") + key, min, int64_t(1) << 40);
  };
  auto number = [&](const char* key) { return float(requireNumber(c.Get(key), std::string("config.") + key)); };
  ModelConfig cfg;
  cfg.vocabSize = integer("vocabSize", 1);
  cfg.hiddenSize = integer("hiddenSize", 1);
  cfg.numLayers = integer("numLayers", 1);
  cfg.numHeads = integer("numHeads", 1);
  cfg.numKvHeads = integer("numKvHeads", 1);
  cfg.headDim = integer("headDim", 1);
  cfg.intermediateSize = integer("intermediateSize", 1);
  cfg.convKernel = integer("convKernel", 1);
  cfg.normEps = number("normEps");
  cfg.ropeTheta = number("ropeTheta");
  cfg.tieEmbeddings = requireBoolean(c.Get("tieEmbeddings"), "config.tieEmbeddings");
  cfg.bosTokenId = integer("bosTokenId", -1);
  cfg.eosTokenId = integer("eosTokenId", -1);
  cfg.padTokenId = integer("padTokenId", -1);
  cfg.maxPositionEmbeddings = integer("maxPositionEmbeddings", 0);
  cfg.initializerRange = number("initializerRange");
  Napi::Value types = c.Get("layerTypes");
  if (!types.IsArray()) throw std::invalid_argument("config.layerTypes must be an array of 'conv' | 'attention'");
  auto array = types.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); i++) {
    std::string t = requireString(array.Get(i), "config.layerTypes[" + std::to_string(i) + "]");
    if (t == "conv") cfg.layerTypes.push_back(LayerKind::Conv);
    else if (t == "attention") cfg.layerTypes.push_back(LayerKind::Attention);
    else throw std::invalid_argument("config.layerTypes[" + std::to_string(i) + "] must be 'conv' or 'attention', got '" + t + "'");
  }
  cfg.validate();
  return cfg;
}

std::shared_ptr<const TokenTrieView> readTrie(Napi::Value value, const std::string& what) {
  Napi::Object obj = requireObject(value, what);
  auto trie = std::make_shared<TokenTrieView>();
  trie->childOffsets = requireInt32Array(obj.Get("childOffsets"), what + ".childOffsets");
  trie->childTokens = requireInt32Array(obj.Get("childTokens"), what + ".childTokens");
  trie->childNodes = requireInt32Array(obj.Get("childNodes"), what + ".childNodes");
  if (trie->childOffsets.size() < 2) throw std::invalid_argument(what + ".childOffsets needs at least 2 entries (one node)");
  return trie;
}

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {
                           InstanceAccessor<&ModelWrap::backend>("backend"),
                           InstanceMethod<&ModelWrap::parameterInfo>("parameterInfo"),
                           InstanceMethod<&ModelWrap::trainableInfo>("trainableInfo"),
                           InstanceMethod<&ModelWrap::enableLora>("enableLora"),
                           InstanceMethod<&ModelWrap::setParameter>("setParameter"),
                           InstanceMethod<&ModelWrap::getParameter>("getParameter"),
                           InstanceMethod<&ModelWrap::getGradient>("getGradient"),
                           InstanceMethod<&ModelWrap::getOptimizerState>("getOptimizerState"),
                           InstanceMethod<&ModelWrap::setOptimizerState>("setOptimizerState"),
                           InstanceMethod<&ModelWrap::initRandom>("initRandom"),
                           InstanceMethod<&ModelWrap::forwardLogits>("forwardLogits"),
                           InstanceMethod<&ModelWrap::score>("score"),
                           InstanceMethod<&ModelWrap::backward>("backward"),
                           InstanceMethod<&ModelWrap::zeroGrad>("zeroGrad"),
                           InstanceMethod<&ModelWrap::gradNorm>("gradNorm"),
                           InstanceMethod<&ModelWrap::adamwStep>("adamwStep"),
                           InstanceMethod<&ModelWrap::generate>("generate"),
                           InstanceMethod<&ModelWrap::startGeneration>("startGeneration"),
                           InstanceMethod<&ModelWrap::addSequences>("addSequences"),
                           InstanceMethod<&ModelWrap::stepGeneration>("stepGeneration"),
                           InstanceMethod<&ModelWrap::generationStatus>("generationStatus"),
                           InstanceMethod<&ModelWrap::endGeneration>("endGeneration"),
                           InstanceMethod<&ModelWrap::dispose>("dispose"),
                       });
  }

  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "NativeModel cannot be constructed directly; use createModel()");
    Engine* raw = info[0].As<Napi::External<Engine>>().Data();
    engine_ = std::shared_ptr<Engine>(raw);
  }

 private:
  // The engine for a call named `what`; throws if the model is disposed or busy.
  Engine& ready(const std::string& what) {
    if (!engine_) throw std::runtime_error(what + ": NativeModel used after dispose()");
    if (busy_)
      throw std::runtime_error("model is busy: " + busyWith_ + " is still running; await it before calling " + what);
    return *engine_;
  }

  // ready(), for calls that change weights: a generation session decodes with the weights it started with.
  Engine& writable(const std::string& what) {
    Engine& engine = ready(what);
    if (session_)
      throw std::runtime_error(what + ": a generation session is open (it decodes with the current weights); "
                               "call endGeneration() first");
    return engine;
  }

  GenerationSession& session(const std::string& what) {
    ready(what);
    if (!session_) throw std::runtime_error(what + ": no generation session is open; call startGeneration() first");
    return *session_;
  }

  // Starts an async call: marks the model busy until the worker settles.
  Napi::Value runAsync(Napi::Env env, const std::string& what, std::function<void()> work,
                       std::function<Napi::Value(Napi::Env)> result) {
    ready(what);
    busy_ = true;
    busyWith_ = what;
    Ref();  // keep this handle (and its engine) alive until the worker is done
    auto* worker = new EngineWorker(env, what, std::move(work), std::move(result), [this]() {
      busy_ = false;
      Unref();
    });
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  }

  Napi::Value backend(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), deviceName(device_));
  }

  static Napi::Array tableToJs(Napi::Env env, const std::vector<ParameterInfo>& table) {
      auto array = Napi::Array::New(env, table.size());
      for (size_t i = 0; i < table.size(); i++) {
        auto entry = Napi::Object::New(env);
        entry.Set("name", table[i].name);
        auto shape = Napi::Array::New(env, table[i].shape.size());
        for (size_t j = 0; j < table[i].shape.size(); j++) shape.Set(uint32_t(j), double(table[i].shape[j]));
        entry.Set("shape", shape);
        array.Set(uint32_t(i), entry);
      }
      return array;
  }

  Napi::Value parameterInfo(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "parameterInfo", [&]() -> Napi::Value {
      return tableToJs(info.Env(), ready("parameterInfo()").parameterInfo());
    });
  }

  Napi::Value trainableInfo(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "trainableInfo", [&]() -> Napi::Value {
      return tableToJs(info.Env(), ready("trainableInfo()").trainableInfo());
    });
  }

  Napi::Value enableLora(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "enableLora", [&]() -> Napi::Value {
      Napi::Object o = requireObject(info[0], "enableLora: options");
      LoraConfig lc;
      lc.rank = requireInteger(o.Get("rank"), "enableLora: rank", 1, 1 << 20);
      lc.alpha = float(requireNumber(o.Get("alpha"), "enableLora: alpha"));
      lc.rslora = requireBoolean(o.Get("rslora"), "enableLora: rslora");
      lc.dropout = float(requireNumber(o.Get("dropout"), "enableLora: dropout"));
      lc.seed = uint64_t(requireInteger(o.Get("seed"), "enableLora: seed", 0, int64_t(1) << 53));
      Napi::Value targets = o.Get("targets");
      if (!targets.IsArray()) throw std::invalid_argument("enableLora: targets must be an array of module names");
      auto array = targets.As<Napi::Array>();
      for (uint32_t i = 0; i < array.Length(); i++)
        lc.targets.push_back(requireString(array.Get(i), "enableLora: targets[" + std::to_string(i) + "]"));
      writable("enableLora()").enableLora(lc);
      return info.Env().Undefined();
    });
  }

  std::string nameArg(const Napi::CallbackInfo& info, const char* method) {
    return requireString(info[0], std::string(method) + ": name");
  }

  Napi::Value setParameter(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "setParameter", [&]() -> Napi::Value {
      std::string name = nameArg(info, "setParameter");
      std::string where = "setParameter(" + name + ")";
      Engine& engine = writable(where);
      engine.setParameter(name, unwrapTensor(info.Env(), info[1], where + ": value"));
      return info.Env().Undefined();
    });
  }

  Napi::Value getParameter(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "getParameter", [&]() -> Napi::Value {
      std::string name = nameArg(info, "getParameter");
      return wrapTensor(info.Env(), ready("getParameter(" + name + ")").getParameter(name));
    });
  }

  Napi::Value getGradient(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "getGradient", [&]() -> Napi::Value {
      std::string name = nameArg(info, "getGradient");
      return wrapTensor(info.Env(), ready("getGradient(" + name + ")").getGradient(name));
    });
  }

  static char whichArg(Napi::Value value, const std::string& where) {
    std::string which = requireString(value, where + ": which");
    if (which != "m" && which != "v") throw std::invalid_argument(where + ": which must be 'm' or 'v', got '" + which + "'");
    return which[0];
  }

  Napi::Value getOptimizerState(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "getOptimizerState", [&]() -> Napi::Value {
      std::string name = nameArg(info, "getOptimizerState");
      std::string where = "getOptimizerState(" + name + ")";
      char which = whichArg(info[1], where);
      return wrapTensor(info.Env(), ready(where).getOptimizerState(name, which));
    });
  }

  Napi::Value setOptimizerState(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "setOptimizerState", [&]() -> Napi::Value {
      std::string name = nameArg(info, "setOptimizerState");
      std::string where = "setOptimizerState(" + name + ")";
      char which = whichArg(info[1], where);
      Engine& engine = writable(where);
      engine.setOptimizerState(name, which, unwrapTensor(info.Env(), info[2], where + ": value"));
      return info.Env().Undefined();
    });
  }

  Napi::Value initRandom(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "initRandom", [&]() -> Napi::Value {
      int64_t seed = requireInteger(info[0], "initRandom: seed", 0, (int64_t(1) << 53));
      double range = requireNumber(info[1], "initRandom: initializerRange");
      writable("initRandom()").initRandom(uint64_t(seed), float(range));
      return info.Env().Undefined();
    });
  }

  Napi::Value forwardLogits(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "forwardLogits", [&]() -> Napi::Value {
      ready("forwardLogits()");
      auto tokens = std::make_shared<std::vector<int32_t>>();
      auto mask = std::make_shared<std::vector<uint8_t>>();
      TokenBatchView view = readBatch(requireObject(info[0], "forwardLogits: batch"), *tokens, *mask, "forwardLogits");
      auto logits = std::make_shared<std::vector<float>>();
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "forwardLogits()", [keep, view, tokens, mask, logits]() { *logits = keep->forwardLogits(view); },
          [logits](Napi::Env env) { return makeFloat32Array(env, *logits); });
    });
  }

  Napi::Value score(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "score", [&]() -> Napi::Value {
      ready("score()");
      Napi::Object req = requireObject(info[0], "score: request");
      struct Inputs {
        std::vector<int32_t> tokens, allowedOffsets, allowedTokens;
        std::vector<uint8_t> mask, scoreMask;
        ScoreArgs args;
        ScoreOutput out;
      };
      auto in = std::make_shared<Inputs>();
      in->args.batch = readBatch(req, in->tokens, in->mask, "score");
      in->scoreMask = requireUint8Array(req.Get("scoreMask"), "score: scoreMask");
      if (in->scoreMask.size() != in->tokens.size())
        throw std::invalid_argument("score: scoreMask has " + std::to_string(in->scoreMask.size()) +
                                    " entries, batchSize*seqLen is " + std::to_string(in->tokens.size()));
      in->args.scoreMask = in->scoreMask.data();
      in->args.temperature = float(requireNumber(req.Get("temperature"), "score: temperature"));
      in->args.keepActivations = requireBoolean(req.Get("keepActivations"), "score: keepActivations");
      Napi::Value adapters = req.Get("adapters");
      if (!adapters.IsUndefined()) in->args.adapters = requireBoolean(adapters, "score: adapters");
      Napi::Value dropoutSeed = req.Get("dropoutSeed");
      if (!dropoutSeed.IsUndefined())
        in->args.dropoutSeed = uint64_t(requireInteger(dropoutSeed, "score: dropoutSeed", 0, int64_t(1) << 53));
      Napi::Value allowed = req.Get("allowed");
      if (!allowed.IsUndefined() && !allowed.IsNull()) {
        Napi::Object a = requireObject(allowed, "score: allowed");
        in->allowedOffsets = requireInt32Array(a.Get("offsets"), "score: allowed.offsets");
        in->allowedTokens = requireInt32Array(a.Get("tokens"), "score: allowed.tokens");
        size_t scored = 0;
        for (uint8_t m : in->scoreMask) scored += m ? 1 : 0;
        if (in->allowedOffsets.size() != scored + 1)
          throw std::invalid_argument("score: allowed.offsets has " + std::to_string(in->allowedOffsets.size()) +
                                      " entries, expected (scored positions + 1) = " + std::to_string(scored + 1));
        if (in->allowedOffsets.back() != int32_t(in->allowedTokens.size()))
          throw std::invalid_argument("score: allowed.offsets ends at " + std::to_string(in->allowedOffsets.back()) +
                                      " but allowed.tokens has " + std::to_string(in->allowedTokens.size()) + " entries");
        for (int32_t o : in->allowedOffsets)
          if (o < 0 || o > int32_t(in->allowedTokens.size()))
            throw std::invalid_argument("score: allowed.offsets entry " + std::to_string(o) + " is out of range");
        in->args.allowedOffsets = in->allowedOffsets.data();
        in->args.allowedTokens = in->allowedTokens.data();
      }
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "score()", [keep, in]() { in->out = keep->score(in->args); },
          [in](Napi::Env env) -> Napi::Value {
            auto result = Napi::Object::New(env);
            result.Set("logprobs", makeFloat32Array(env, in->out.logprobs));
            result.Set("entropy", makeFloat32Array(env, in->out.entropy));
            return result;
          });
    });
  }

  Napi::Value backward(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "backward", [&]() -> Napi::Value {
      ready("backward()");
      auto d = std::make_shared<std::vector<float>>(requireFloat32Array(info[0], "backward: dLogprobs"));
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "backward()", [keep, d]() { keep->backward(d->data(), int64_t(d->size())); },
          [](Napi::Env env) { return env.Undefined(); });
    });
  }

  Napi::Value zeroGrad(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "zeroGrad", [&]() -> Napi::Value {
      ready("zeroGrad()").zeroGrad();
      return info.Env().Undefined();
    });
  }

  Napi::Value gradNorm(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "gradNorm", [&]() -> Napi::Value {
      ready("gradNorm()");
      auto norm = std::make_shared<double>(0.0);
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "gradNorm()", [keep, norm]() { *norm = keep->gradNorm(); },
          [norm](Napi::Env env) { return Napi::Number::New(env, *norm); });
    });
  }

  Napi::Value adamwStep(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "adamwStep", [&]() -> Napi::Value {
      writable("adamwStep()");
      Napi::Object p = requireObject(info[0], "adamwStep: params");
      AdamWArgs args;
      args.lr = float(requireNumber(p.Get("lr"), "adamwStep: lr"));
      args.beta1 = float(requireNumber(p.Get("beta1"), "adamwStep: beta1"));
      args.beta2 = float(requireNumber(p.Get("beta2"), "adamwStep: beta2"));
      args.eps = float(requireNumber(p.Get("eps"), "adamwStep: eps"));
      args.weightDecay = float(requireNumber(p.Get("weightDecay"), "adamwStep: weightDecay"));
      args.step = requireInteger(p.Get("step"), "adamwStep: step", 1, int64_t(1) << 40);
      args.gradScale = float(requireNumber(p.Get("gradScale"), "adamwStep: gradScale"));
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "adamwStep()", [keep, args]() { keep->adamwStep(args); },
          [](Napi::Env env) { return env.Undefined(); });
    });
  }

  // withSeed: generate() takes its seed here; a session's batches bring their own.
  static SamplingArgs readSampling(Napi::Value value, const std::string& where, bool withSeed) {
    Napi::Object s = requireObject(value, where);
    SamplingArgs args;
    args.temperature = float(requireNumber(s.Get("temperature"), where + ".temperature"));
    args.topK = int32_t(requireInteger(s.Get("topK"), where + ".topK", 0, int64_t(1) << 31));
    args.topP = float(requireNumber(s.Get("topP"), where + ".topP"));
    args.minP = float(requireNumber(s.Get("minP"), where + ".minP"));
    args.repetitionPenalty = float(requireNumber(s.Get("repetitionPenalty"), where + ".repetitionPenalty"));
    args.greedy = requireBoolean(s.Get("greedy"), where + ".greedy");
    if (withSeed) args.seed = uint64_t(requireInteger(s.Get("seed"), where + ".seed", 0, int64_t(1) << 53));
    return args;
  }

  // prompts, sequencePrompt and constraints of a request.
  static void readSequences(const Napi::Object& req, const std::string& where, std::vector<std::vector<int32_t>>& prompts,
                            std::vector<int32_t>& sequencePrompt,
                            std::vector<std::shared_ptr<const TokenTrieView>>& constraints) {
    Napi::Value p = req.Get("prompts");
    if (!p.IsArray()) throw std::invalid_argument(where + ": prompts must be an array of Int32Array");
    auto promptArray = p.As<Napi::Array>();
    for (uint32_t i = 0; i < promptArray.Length(); i++)
      prompts.push_back(requireInt32Array(promptArray.Get(i), where + ": prompts[" + std::to_string(i) + "]"));
    sequencePrompt = requireInt32Array(req.Get("sequencePrompt"), where + ": sequencePrompt");
    Napi::Value c = req.Get("constraints");
    if (c.IsUndefined() || c.IsNull()) return;
    if (!c.IsArray()) throw std::invalid_argument(where + ": constraints must be an array of TokenTrie | null");
    auto array = c.As<Napi::Array>();
    if (array.Length() != sequencePrompt.size())
      throw std::invalid_argument(where + ": constraints has " + std::to_string(array.Length()) + " entries for " +
                                  std::to_string(sequencePrompt.size()) + " sequences");
    for (uint32_t i = 0; i < array.Length(); i++) {
      Napi::Value t = array.Get(i);
      constraints.push_back(t.IsNull() || t.IsUndefined() ? nullptr
                                                          : readTrie(t, where + ": constraints[" + std::to_string(i) + "]"));
    }
  }

  static Napi::Object outputToJs(Napi::Env env, const GenerateOutput& r) {
    auto obj = Napi::Object::New(env);
    obj.Set("tokens", makeInt32Array(env, r.tokens));
    obj.Set("logprobs", makeFloat32Array(env, r.logprobs));
    const char* reason = r.finishReason == FinishReason::Stop     ? "stop"
                         : r.finishReason == FinishReason::Length ? "length"
                                                                  : "constraint";
    obj.Set("finishReason", reason);
    return obj;
  }

  Napi::Value generate(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "generate", [&]() -> Napi::Value {
      ready("generate()");
      Napi::Object req = requireObject(info[0], "generate: request");
      auto args = std::make_shared<GenerateArgs>();
      readSequences(req, "generate", args->prompts, args->sequencePrompt, args->constraints);
      args->maxNewTokens = requireInteger(req.Get("maxNewTokens"), "generate: maxNewTokens", 0, int64_t(1) << 31);
      args->stopTokens = requireInt32Array(req.Get("stopTokens"), "generate: stopTokens");
      args->sampling = readSampling(req.Get("sampling"), "generate: sampling", true);
      auto results = std::make_shared<std::vector<GenerateOutput>>();
      std::shared_ptr<Engine> keep = engine_;
      return runAsync(
          info.Env(), "generate()", [keep, args, results]() { *results = keep->generate(*args); },
          [results](Napi::Env env) -> Napi::Value {
            auto array = Napi::Array::New(env, results->size());
            for (size_t i = 0; i < results->size(); i++) array.Set(uint32_t(i), outputToJs(env, (*results)[i]));
            return array;
          });
    });
  }

  Napi::Value startGeneration(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "startGeneration", [&]() -> Napi::Value {
      Engine& engine = ready("startGeneration()");
      if (session_) throw std::runtime_error("startGeneration: a generation session is already open");
      Napi::Object o = requireObject(info[0], "startGeneration: settings");
      GenerationSettings settings;
      settings.maxNewTokens = requireInteger(o.Get("maxNewTokens"), "startGeneration: maxNewTokens", 0, int64_t(1) << 31);
      settings.stopTokens = requireInt32Array(o.Get("stopTokens"), "startGeneration: stopTokens");
      settings.sampling = readSampling(o.Get("sampling"), "startGeneration: sampling", false);
      settings.capacity = requireInteger(o.Get("capacity"), "startGeneration: capacity", 1, int64_t(1) << 20);
      session_ = engine.startGeneration(settings);
      return info.Env().Undefined();
    });
  }

  Napi::Value addSequences(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "addSequences", [&]() -> Napi::Value {
      GenerationSession& s = session("addSequences()");
      Napi::Object req = requireObject(info[0], "addSequences: batch");
      SequenceBatch batch;
      readSequences(req, "addSequences", batch.prompts, batch.sequencePrompt, batch.constraints);
      batch.seed = uint64_t(requireInteger(req.Get("seed"), "addSequences: seed", 0, int64_t(1) << 53));
      return Napi::Number::New(info.Env(), double(s.add(std::move(batch))));
    });
  }

  Napi::Value stepGeneration(const Napi::CallbackInfo& info) {
    return guardAsync(info.Env(), "stepGeneration", [&]() -> Napi::Value {
      session("stepGeneration()");
      std::shared_ptr<GenerationSession> keep = session_;
      auto finished = std::make_shared<std::vector<FinishedSequence>>();
      return runAsync(
          info.Env(), "stepGeneration()", [keep, finished]() { *finished = keep->step(); },
          [finished](Napi::Env env) -> Napi::Value {
            auto array = Napi::Array::New(env, finished->size());
            for (size_t i = 0; i < finished->size(); i++) {
              Napi::Object obj = outputToJs(env, (*finished)[i].output);
              obj.Set("id", double((*finished)[i].id));
              array.Set(uint32_t(i), obj);
            }
            return array;
          });
    });
  }

  Napi::Value generationStatus(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "generationStatus", [&]() -> Napi::Value {
      GenerationSession& s = session("generationStatus()");
      auto obj = Napi::Object::New(info.Env());
      obj.Set("queued", double(s.queued()));
      obj.Set("running", double(s.running()));
      return obj;
    });
  }

  Napi::Value endGeneration(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "endGeneration", [&]() -> Napi::Value {
      ready("endGeneration()");
      session_.reset();  // ending twice, or with no session, is harmless
      return info.Env().Undefined();
    });
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "dispose", [&]() -> Napi::Value {
      if (!engine_) return info.Env().Undefined();  // disposing twice is harmless
      if (busy_) throw std::runtime_error("model is busy: " + busyWith_ + " is still running; await it before calling dispose()");
      session_.reset();
      engine_.reset();
      return info.Env().Undefined();
    });
  }

 public:
  Device device_ = Device::CPU;

 private:
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<GenerationSession> session_;  // after engine_: destroyed first
  bool busy_ = false;
  std::string busyWith_;
};

}  // namespace

void initModelClass(Napi::Env env, AddonData& data) {
  data.modelConstructor = Napi::Persistent(ModelWrap::define(env));
}

Napi::Value createModel(const Napi::CallbackInfo& info) {
  return guard(info.Env(), "createModel", [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    ModelConfig cfg = readConfig(env, requireString(info[0], "createModel: configJson"));
    Napi::Object options = requireObject(info[1], "createModel: options");
    Device device = parseBackend(requireString(options.Get("backend"), "createModel: options.backend"),
                                 "createModel: options.backend");
    int threads = 0;
    Napi::Value t = options.Get("threads");
    if (!t.IsUndefined()) threads = int(requireInteger(t, "createModel: options.threads", 0, 4096));
    std::unique_ptr<Engine> engine = createEngine(device, cfg, threads);
    AddonData* data = env.GetInstanceData<AddonData>();
    Napi::Object model = data->modelConstructor.New({Napi::External<Engine>::New(env, engine.release())});
    ModelWrap::Unwrap(model)->device_ = device;
    return model;
  });
}

}  // namespace webgrpo::binding
