// Generation sessions: the scheduler that both engines decode under. It keeps which sequence holds which row of
// the backend's DecodeSlots, queues sequences until a row is free, walks constraint tries, applies stop tokens and
// length limits, and asks the backend only for prefills and sampling steps.
#include <algorithm>
#include <deque>
#include <limits>
#include <stdexcept>
#include <string>

#include "cpu/ops.h"
#include "engine.h"

namespace webgrpo {

void validateGenerationSettings(const GenerationSettings& settings) {
  if (settings.maxNewTokens < 0) throw std::invalid_argument("generate: maxNewTokens must be >= 0");
  if (settings.capacity <= 0) throw std::invalid_argument("generate: capacity must be > 0");
  const SamplingArgs& s = settings.sampling;
  if (!s.greedy && !(s.temperature > 0)) throw std::invalid_argument("generate: sampling.temperature must be > 0");
  if (s.topK < 0) throw std::invalid_argument("generate: sampling.topK must be >= 0");
  if (!(s.topP > 0 && s.topP <= 1)) throw std::invalid_argument("generate: sampling.topP must be in (0, 1]");
  if (!(s.minP >= 0 && s.minP <= 1)) throw std::invalid_argument("generate: sampling.minP must be in [0, 1]");
  if (!(s.repetitionPenalty > 0)) throw std::invalid_argument("generate: sampling.repetitionPenalty must be > 0");
}

void validateSequenceBatch(const SequenceBatch& batch, int64_t V) {
  if (batch.prompts.empty()) throw std::invalid_argument("generate: prompts is empty");
  for (size_t p = 0; p < batch.prompts.size(); p++) {
    if (batch.prompts[p].empty()) throw std::invalid_argument("generate: prompt " + std::to_string(p) + " is empty");
    for (int32_t tok : batch.prompts[p])
      if (tok < 0 || tok >= V)
        throw std::invalid_argument("generate: prompt " + std::to_string(p) + " has token " + std::to_string(tok) +
                                    " outside the vocabulary (size " + std::to_string(V) + ")");
  }
  for (size_t s = 0; s < batch.sequencePrompt.size(); s++) {
    int32_t p = batch.sequencePrompt[s];
    if (p < 0 || size_t(p) >= batch.prompts.size())
      throw std::invalid_argument("generate: sequencePrompt[" + std::to_string(s) + "] = " + std::to_string(p) +
                                  " but there are " + std::to_string(batch.prompts.size()) + " prompts");
  }
  if (!batch.constraints.empty() && batch.constraints.size() != batch.sequencePrompt.size())
    throw std::invalid_argument("generate: constraints has " + std::to_string(batch.constraints.size()) +
                                " entries for " + std::to_string(batch.sequencePrompt.size()) + " sequences");
  for (size_t i = 0; i < batch.constraints.size(); i++) {
    const TokenTrieView* trie = batch.constraints[i].get();
    if (!trie) continue;
    const std::string where = "generate: constraints[" + std::to_string(i) + "]: ";
    if (trie->childOffsets.size() < 2 || trie->childOffsets[0] != 0)
      throw std::invalid_argument(where + "childOffsets must start with 0 and hold at least one node");
    const int64_t nodes = trie->nodes();
    for (int64_t n = 0; n < nodes; n++)
      if (trie->childOffsets[n + 1] < trie->childOffsets[n])
        throw std::invalid_argument(where + "childOffsets must be non-decreasing");
    if (int64_t(trie->childTokens.size()) != trie->childOffsets[nodes] || trie->childNodes.size() != trie->childTokens.size())
      throw std::invalid_argument(where + "childTokens and childNodes must have childOffsets[last] entries");
    for (size_t e = 0; e < trie->childTokens.size(); e++) {
      if (trie->childTokens[e] < 0 || trie->childTokens[e] >= V)
        throw std::invalid_argument(where + "edge token " + std::to_string(trie->childTokens[e]) + " is outside the vocabulary");
      if (trie->childNodes[e] < 0 || trie->childNodes[e] >= nodes)
        throw std::invalid_argument(where + "edge target node " + std::to_string(trie->childNodes[e]) + " does not exist");
    }
  }
}

namespace {

using std::vector;

// The widest fan-out of a trie: the most allowed tokens one of its steps can need.
int64_t widestNode(const TokenTrieView* trie) {
  int64_t widest = 0;
  if (trie)
    for (int64_t n = 0; n < trie->nodes(); n++)
      widest = std::max<int64_t>(widest, trie->childOffsets[n + 1] - trie->childOffsets[n]);
  return widest;
}

class SlotScheduler final : public GenerationSession {
 public:
  SlotScheduler(const GenerationSettings& settings, int64_t vocab, std::unique_ptr<DecodeSlots> slots,
                std::shared_ptr<bool> open)
      : settings_(settings), vocab_(vocab), slots_(std::move(slots)), open_(std::move(open)) {}
  ~SlotScheduler() override { *open_ = false; }

  int64_t add(SequenceBatch batch) override {
    checkUsable();
    validateSequenceBatch(batch, vocab_);
    auto shared = std::make_shared<const SequenceBatch>(std::move(batch));
    const int64_t first = nextId_;
    for (size_t i = 0; i < shared->sequencePrompt.size(); i++) {
      Waiting w;
      w.id = nextId_++;
      w.batch = shared;
      w.prompt = &shared->prompts[shared->sequencePrompt[i]];
      w.trie = shared->constraints.empty() ? nullptr : shared->constraints[i].get();
      w.rngSeed = cpu::rng_seed_for(shared->seed, uint64_t(i));
      w.maxLen = int64_t(w.prompt->size()) + settings_.maxNewTokens;
      if (w.maxLen > std::numeric_limits<int32_t>::max() / 2)
        throw std::invalid_argument("generate: sequence " + std::to_string(i) + " is too long");
      w.widest = widestNode(w.trie);
      waiting_.push_back(std::move(w));
    }
    return first;
  }

  std::vector<FinishedSequence> step() override {
    checkUsable();
    try {
      vector<FinishedSequence> finished;
      const vector<SlotJoin> joins = admit(finished);
      if (!joins.empty()) {
        slots_->prefill(joins);
        vector<int32_t> joined;
        for (const SlotJoin& j : joins) joined.push_back(j.slot);
        sampleRows(false, joined, finished);
      }
      while (finished.empty() && running() > 0) sampleRows(true, liveRows(), finished);
      return finished;
    } catch (...) {
      failed_ = true;  // the rows' state is unknown now
      throw;
    }
  }

  int64_t queued() const override { return int64_t(waiting_.size()); }
  int64_t running() const override {
    return std::count_if(rows_.begin(), rows_.end(), [](const Row& r) { return r.live; });
  }

 private:
  struct Waiting {
    int64_t id = 0;
    std::shared_ptr<const SequenceBatch> batch;  // keeps prompt and trie alive
    const vector<int32_t>* prompt = nullptr;
    const TokenTrieView* trie = nullptr;
    uint64_t rngSeed = 0;
    int64_t maxLen = 0, widest = 0;
  };
  struct Row {
    bool live = false;
    Waiting seq;
    int64_t length = 0;  // cached tokens
    int32_t node = 0;    // position in the trie
    GenerateOutput output;
  };

  void checkUsable() const {
    if (failed_) throw std::runtime_error("generate: this generation session failed earlier; start a new one");
  }

  vector<int32_t> liveRows() const {
    vector<int32_t> live;
    for (size_t r = 0; r < rows_.size(); r++)
      if (rows_[r].live) live.push_back(int32_t(r));
    return live;
  }

  // Moves queued sequences into free rows, in order; one that does not fit the current storage waits until every
  // row is free, when the storage grows to fit. Sequences that cannot produce a token finish at once.
  vector<SlotJoin> admit(vector<FinishedSequence>& finished) {
    vector<SlotJoin> joins;
    if (running() == 0 && !waiting_.empty()) {
      int64_t maxLen = maxLen_, allowed = 0;
      for (size_t i = 0; i < waiting_.size() && int64_t(i) < settings_.capacity; i++) {
        maxLen = std::max(maxLen, waiting_[i].maxLen);
        allowed += waiting_[i].widest;
      }
      allowed = std::max(allowed, allowedCapacity_);
      if (rows_.empty() || maxLen > maxLen_ || allowed > allowedCapacity_) {
        slots_->reserve(settings_.capacity, maxLen, allowed);
        rows_.assign(settings_.capacity, Row{});
        maxLen_ = maxLen;
        allowedCapacity_ = allowed;
      }
    }
    int64_t allowedInUse = 0;
    for (const Row& r : rows_)
      if (r.live) allowedInUse += r.seq.widest;
    size_t free = 0;
    while (!waiting_.empty()) {
      Waiting& w = waiting_.front();
      if (settings_.maxNewTokens == 0 || (w.trie && w.trie->childOffsets[1] == w.trie->childOffsets[0])) {
        // Nothing to sample: no budget, or a constraint that allows no token at all.
        FinishedSequence done;
        done.id = w.id;
        done.output.finishReason = settings_.maxNewTokens == 0 ? FinishReason::Length : FinishReason::Constraint;
        finished.push_back(std::move(done));
        waiting_.pop_front();
        continue;
      }
      while (free < rows_.size() && rows_[free].live) free++;
      if (free == rows_.size() || w.maxLen > maxLen_ || allowedInUse + w.widest > allowedCapacity_) break;
      Row& row = rows_[free];
      row = Row{};
      row.live = true;
      row.seq = std::move(w);
      row.length = int64_t(row.seq.prompt->size());
      allowedInUse += row.seq.widest;
      joins.push_back(SlotJoin{int32_t(free), row.seq.prompt, row.seq.rngSeed});
      waiting_.pop_front();
    }
    return joins;
  }

  // One sampling step over `rows` (each live), then the bookkeeping of every token sampled.
  void sampleRows(bool decode, const vector<int32_t>& rows, vector<FinishedSequence>& finished) {
    const size_t n = rows_.size();
    plan_.positions.assign(n, 0);
    plan_.lengths.assign(n, 0);
    plan_.allowedBegin.assign(n, 0);
    plan_.allowedCount.assign(n, -1);
    plan_.allowedTokens.clear();
    for (int32_t r : rows) {
      const Row& row = rows_[r];
      if (const TokenTrieView* trie = row.seq.trie) {
        const int32_t from = trie->childOffsets[row.node], to = trie->childOffsets[row.node + 1];
        plan_.allowedBegin[r] = int32_t(plan_.allowedTokens.size());
        plan_.allowedCount[r] = to - from;
        plan_.allowedTokens.insert(plan_.allowedTokens.end(), trie->childTokens.begin() + from,
                                   trie->childTokens.begin() + to);
      }
      plan_.positions[r] = int32_t(row.length);
      plan_.lengths[r] = int32_t(decode ? row.length + 1 : row.length);
    }
    out_.tokens.assign(n, 0);
    out_.status.assign(n, 0);
    out_.logprobs.assign(n, 0.f);
    slots_->sample(decode, plan_, out_);
    for (int32_t r : rows) {
      Row& row = rows_[r];
      if (decode) row.length++;
      if (out_.status[r] != 0)
        throw std::runtime_error("generate: the model produced non-finite logits for sequence " +
                                 std::to_string(row.seq.id) + " after " + std::to_string(row.output.tokens.size()) +
                                 " tokens (diverged or unset weights?)");
      if (append(row, out_.tokens[r], out_.logprobs[r])) {
        finished.push_back(FinishedSequence{row.seq.id, std::move(row.output)});
        row = Row{};
      }
    }
  }

  // Appends a sampled token, then applies, in order, the stop tokens, the constraint trie (reaching a leaf ends
  // the sequence) and maxNewTokens. True when the sequence has finished, with its finishReason set.
  bool append(Row& row, int32_t token, float logprob) {
    GenerateOutput& output = row.output;
    output.tokens.push_back(token);
    output.logprobs.push_back(logprob);
    const vector<int32_t>& stops = settings_.stopTokens;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
      output.finishReason = FinishReason::Stop;
      return true;
    }
    if (const TokenTrieView* trie = row.seq.trie) {
      for (int32_t e = trie->childOffsets[row.node]; e < trie->childOffsets[row.node + 1]; e++)
        if (trie->childTokens[e] == token) {
          row.node = trie->childNodes[e];
          break;
        }
      if (trie->childOffsets[row.node + 1] == trie->childOffsets[row.node]) {
        output.finishReason = FinishReason::Constraint;
        return true;
      }
    }
    if (int64_t(output.tokens.size()) >= settings_.maxNewTokens) {
      output.finishReason = FinishReason::Length;
      return true;
    }
    return false;
  }

  const GenerationSettings settings_;
  const int64_t vocab_;
  std::unique_ptr<DecodeSlots> slots_;
  std::shared_ptr<bool> open_;
  std::deque<Waiting> waiting_;
  vector<Row> rows_;
  int64_t maxLen_ = 0, allowedCapacity_ = 0, nextId_ = 0;
  bool failed_ = false;
  StepPlan plan_;
  StepOutput out_;
};

}  // namespace

std::unique_ptr<GenerationSession> Engine::startGeneration(const GenerationSettings& settings) {
  validateGenerationSettings(settings);
  if (*generating_)
    throw std::runtime_error("generate: another generation session is open on this model; finish it first");
  auto session = std::make_unique<SlotScheduler>(settings, config().vocabSize, createDecodeSlots(settings), generating_);
  *generating_ = true;
  return session;
}

std::vector<GenerateOutput> Engine::generate(const GenerateArgs& args) {
  GenerationSettings settings;
  settings.maxNewTokens = args.maxNewTokens;
  settings.stopTokens = args.stopTokens;
  settings.sampling = args.sampling;
  settings.capacity = std::max<int64_t>(1, int64_t(args.sequencePrompt.size()));
  SequenceBatch batch;
  batch.prompts = args.prompts;
  batch.sequencePrompt = args.sequencePrompt;
  batch.constraints = args.constraints;
  batch.seed = args.sampling.seed;
  // A batch that add() refuses leaves nothing behind: the session closes as the exception leaves.
  std::unique_ptr<GenerationSession> session = startGeneration(settings);
  const int64_t first = session->add(std::move(batch));
  std::vector<GenerateOutput> outputs(args.sequencePrompt.size());
  while (session->queued() > 0 || session->running() > 0)
    for (FinishedSequence& f : session->step()) outputs[f.id - first] = std::move(f.output);
  return outputs;
}

}  // namespace webgrpo
