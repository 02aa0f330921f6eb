// Host entry points of the CUDA kernels: the GPU twins of the fp32 CPU ops. All tensors are device pointers,
// row-major; activations and weights are bf16, accumulators (gradients, optimizer state, residual stream,
// saved statistics) fp32. Functions that end in "Backward" ACCUMULATE into parameter gradients (+=) and
// OVERWRITE activation gradients unless their comment says otherwise. Every function enqueues on `stream`
// and returns at once; invalid shapes throw std::invalid_argument, CUDA failures std::runtime_error.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace webgrpo::cuda {

using bf16 = __nv_bfloat16;

// ---- embedding.cu -------------------------------------------------------------------------------------------
// out[t,:] = table[ids[t],:]. An id outside [0, vocab) yields a row of NaNs (the caller validates ids first).
void embeddingForward(const int32_t* ids, const bf16* table, bf16* out, int64_t tokens, int hidden, int vocab,
                      cudaStream_t stream);
// The same into an fp32 buffer (the residual stream).
void embeddingForward(const int32_t* ids, const bf16* table, float* out, int64_t tokens, int hidden, int vocab,
                      cudaStream_t stream);
// dtable[ids[t],:] += dout[t,:] for every t whose rowMask is 1 (rowMask may be null: all rows).
void embeddingBackward(const int32_t* ids, const bf16* dout, const uint8_t* rowMask, float* dtable, int64_t tokens,
                       int hidden, int vocab, cudaStream_t stream);
void embeddingBackward(const int32_t* ids, const float* dout, const uint8_t* rowMask, float* dtable, int64_t tokens,
                       int hidden, int vocab, cudaStream_t stream);

// ---- rmsnorm.cu ---------------------------------------------------------------------------------------------
// residualOut = residualIn + add (add may be null; residualOut may alias residualIn), then
// normed = residualOut * rsqrt(mean(residualOut^2) + eps) * weight. rstd[row] keeps the rsqrt for backward.
void residualRmsNormForward(const float* residualIn, const bf16* add, float* residualOut, const bf16* weight,
                            bf16* normed, float* rstd, int64_t rows, int hidden, float eps, cudaStream_t stream);
// From dnormed and the post-add residual: dresidual += d(residual) (the residual stream's gradient flows on),
// dweight += sum over rows.
void rmsNormBackward(const bf16* dnormed, const float* residual, const bf16* weight, const float* rstd,
                     float* dresidual, float* dweight, int64_t rows, int hidden, cudaStream_t stream);

// ---- shortconv.cu -------------------------------------------------------------------------------------------
// LFM2 short-conv core between in_proj and out_proj. proj [rows, 3H] holds B | C | x per row; rows = batch*seqLen.
// y[t,c] = C[t,c] * sum_k w[c,k] * Bx[t-2+k,c] with Bx = B*x, zero before the sequence start and at positions
// whose mask is 0 (mask may be null); y is 0 at masked positions. convWeight [H, 3].
void shortConvForward(const bf16* proj, const bf16* convWeight, const uint8_t* mask, bf16* y, int batch,
                      int seqLen, int hidden, cudaStream_t stream);
// dproj [rows, 3H] (overwritten), dconvWeight [H,3] += .
void shortConvBackward(const bf16* dy, const bf16* proj, const bf16* convWeight, const uint8_t* mask, bf16* dproj,
                       float* dconvWeight, int batch, int seqLen, int hidden, cudaStream_t stream);

// ---- rope.cu ------------------------------------------------------------------------------------------------
// Per (row, head): RMSNorm over headDim with one shared weight, then rotate-half RoPE at positions[row].
// in/out rows are strided (e.g. q or k inside a fused qkv buffer). rstd [rows, heads]. headDim % 64 == 0, <= 256.
void headNormRopeForward(const bf16* in, int64_t inRowStride, bf16* out, int64_t outRowStride, const bf16* weight,
                         const int32_t* positions, float* rstd, int64_t rows, int heads, int headDim, float eps,
                         float theta, cudaStream_t stream);
// The decode step's version for `slots` rows of a fused q|k|v buffer (row stride qkvStride): q heads normed and
// rotated into qOut; k heads normed and rotated, and v heads as they are, written at row lengths[s]-1 of each
// active slot's cache [slots, maxLen, numKvHeads*headDim]. headDim 64.
void headNormRopeDecode(const bf16* qkv, int64_t qkvStride, bf16* qOut, int64_t qOutStride, const bf16* qWeight,
                        const bf16* kWeight, const int32_t* positions, const int32_t* lengths, bf16* kCache,
                        bf16* vCache, int slots, int maxLen, int numHeads, int numKvHeads, int headDim, float eps,
                        float theta, cudaStream_t stream);
// din (strided, overwritten), dweight [headDim] += .
void headNormRopeBackward(const bf16* dout, int64_t doutRowStride, const bf16* in, int64_t inRowStride,
                          const bf16* weight, const int32_t* positions, const float* rstd, bf16* din,
                          int64_t dinRowStride, float* dweight, int64_t rows, int heads, int headDim, float theta,
                          cudaStream_t stream);

// ---- swiglu.cu ----------------------------------------------------------------------------------------------
// gateUp [rows, 2I] = gate (w1 x) | up (w3 x); out [rows, I] = silu(gate) * up.
void swigluForward(const bf16* gateUp, bf16* out, int64_t rows, int intermediate, cudaStream_t stream);
void swigluBackward(const bf16* dout, const bf16* gateUp, bf16* dgateUp, int64_t rows, int intermediate,
                    cudaStream_t stream);

// ---- attention.cu -------------------------------------------------------------------------------------------
struct AttentionShape {
  int batch, seqLen, numHeads, numKvHeads, headDim;
};
// Causal GQA attention over left-padded sequences: query (b,i) sees keys j <= i with mask[b,j] = 1 (mask may be
// null). q rows [batch*seqLen] of numHeads*headDim (row stride qStride), k/v of numKvHeads*headDim. out
// [rows, numHeads*headDim] (0 at masked query rows); lse [batch, numHeads, seqLen] (natural log) for backward.
// headDim must be 64; pointers 16-byte aligned. Tensor cores (WMMA bf16). No [T x T] matrix is stored.
void attentionForward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                      int64_t vStride, const uint8_t* mask, bf16* out, float* lse, const AttentionShape& shape,
                      cudaStream_t stream);
// dq/dk/dv overwritten (strided like q/k/v). rowDot: workspace of batch*numHeads*seqLen floats.
void attentionBackward(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                       int64_t vStride, const uint8_t* mask, const bf16* out, const bf16* dout, const float* lse,
                       bf16* dq, int64_t dqStride, bf16* dk, int64_t dkStride, bf16* dv, int64_t dvStride,
                       float* rowDot, const AttentionShape& shape, cudaStream_t stream);
// The same on CUDA cores (one thread per row): the simple reference the tensor-core kernels were checked against.
void attentionForwardSimt(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                          int64_t vStride, const uint8_t* mask, bf16* out, float* lse, const AttentionShape& shape,
                          cudaStream_t stream);
void attentionBackwardSimt(const bf16* q, int64_t qStride, const bf16* k, int64_t kStride, const bf16* v,
                           int64_t vStride, const uint8_t* mask, const bf16* out, const bf16* dout, const float* lse,
                           bf16* dq, int64_t dqStride, bf16* dk, int64_t dkStride, bf16* dv, int64_t dvStride,
                           float* rowDot, const AttentionShape& shape, cudaStream_t stream);

// ---- gemm.cu ------------------------------------------------------------------------------------------------
enum class OutType { BF16, F32 };
// Matrix products through cuBLASLt (loaded at run time with dlopen, so building needs no cuBLAS), with a plain
// tiled kernel as fallback where the library is missing. Row-major semantics:
//   C[M,N] = alpha * op(A) * op(B) + beta * C,  op(A) [M,K] (A stored [K,M] when transA), op(B) [K,N] (B
//   stored [N,K] when transB). A, B bf16; C bf16 or fp32; fp32 accumulation.
// A Linear layer y = x W^T is gemm(false, true, rows, out, in, x, W, y).
class Gemm {
 public:
  // workspaceBytes: cuBLASLt scratch, allocated once here. forceFallback: skip cuBLASLt (tests).
  explicit Gemm(size_t workspaceBytes = 32u << 20, bool forceFallback = false);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A, int64_t lda, const bf16* B,
           int64_t ldb, float beta, void* C, OutType cType, int64_t ldc, cudaStream_t stream);
  bool usesCublasLt() const;
  // Why cuBLASLt is not used (empty when it is).
  const char* fallbackReason() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- lmhead.cu ----------------------------------------------------------------------------------------------
// Allowed-token rows (constrained decoding): row r allows tokens[offsets[r] .. offsets[r+1]), which must be
// distinct (a repeated id would count twice in the softmax). Null offsets: all tokens allowed.
struct AllowedTokensDevice {
  const int32_t* offsets = nullptr;
  const int32_t* tokens = nullptr;
};
// Tied lm_head + tempered log-softmax, chunked: logits for at most chunkRows rows exist at a time in
// logitsWorkspace [chunkRows, vocab] fp32. hidden [n, H] (final-normed states of the scored positions), embed
// [vocab, H]. Per row: logprob of targets[r], entropy, lse (of the tempered logits, for backward).
void lmHeadLogprobForward(Gemm& gemm, const bf16* hidden, const bf16* embed, const int32_t* targets,
                          float invTemperature, AllowedTokensDevice allowed, float* logitsWorkspace, int chunkRows,
                          float* logprob, float* entropy, float* lse, int n, int hiddenSize, int vocab,
                          cudaStream_t stream);
// dlogprob [n]: gradient of the loss wrt each logprob. dhidden [n,H] overwritten; dembed [vocab,H] += (skipped
// when null: a frozen embedding).
// dlogitsWorkspace [chunkRows, vocab] bf16 besides logitsWorkspace.
void lmHeadLogprobBackward(Gemm& gemm, const bf16* hidden, const bf16* embed, const int32_t* targets,
                           float invTemperature, AllowedTokensDevice allowed, const float* lse, const float* dlogprob,
                           float* logitsWorkspace, bf16* dlogitsWorkspace, int chunkRows, bf16* dhidden,
                           float* dembed, int n, int hiddenSize, int vocab, cudaStream_t stream);
// The row kernels alone, on logits already in memory (used by the chunked functions above and the tests).
void logprobRows(const float* logits, const int32_t* targets, float invTemperature, AllowedTokensDevice allowed,
                 int rowOffset, float* logprob, float* entropy, float* lse, int rows, int vocab, cudaStream_t stream);
void logprobRowsBackward(const float* logits, const int32_t* targets, float invTemperature,
                         AllowedTokensDevice allowed, int rowOffset, const float* lse, const float* dlogprob,
                         bf16* dlogits, int rows, int vocab, cudaStream_t stream);

// ---- adamw.cu -----------------------------------------------------------------------------------------------
struct AdamWHyper {
  float lr, beta1, beta2, eps, weightDecay;
  int step;         // 1-based, for bias correction
  float gradScale;  // multiplies every gradient first (clipping, accumulation averaging)
};
// One fused pass over n parameters: fp32 master (updated), bf16 compute copy (rewritten; may be null), m, v.
void adamwStep(float* master, bf16* computeCopy, const float* grad, float* m, float* v, int64_t n,
               const AdamWHyper& hyper, cudaStream_t stream);
// sum(x^2) over n floats into *result (device, one float; overwritten). partials: workspace of
// sumSquaresPartialCount() floats. Deterministic (fixed reduction order).
int sumSquaresPartialCount();
void sumSquares(const float* x, int64_t n, float* partials, float* result, cudaStream_t stream);
// Fills n elements with a value (fp32 or bf16) — zeroing gradients and poisoning outputs in tests.
void fillF32(float* x, int64_t n, float value, cudaStream_t stream);
void fillBf16(bf16* x, int64_t n, float value, cudaStream_t stream);
void convertF32ToBf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream);
void bf16ToF32(const bf16* src, float* dst, int64_t n, cudaStream_t stream);

// ---- decode.cu ----------------------------------------------------------------------------------------------
// Incremental decoding (generate): a fixed set of `slots` sequences, one row each. A slot is active in a step
// when lengths[slot] > 0: lengths counts the cached tokens including the one this step appends. Caches:
// k/v [slots, maxLen, kvDim] bf16 per attention layer, conv state [slots, 2, hidden] fp32 per conv layer (the
// last two B*x inputs, oldest first).
//
// From a left-padded prefill batch [rows, seqLen]: slot s copies row prefillRow[s], whose last promptLen[s]
// positions are real. k, v: that layer's post-norm+RoPE keys and its values (strided rows, as in the forward).
void kvCacheFromPrefill(const bf16* k, int64_t kStride, const bf16* v, int64_t vStride, const int32_t* prefillRow,
                        const int32_t* promptLen, int slots, int prefillSeqLen, bf16* kCache, bf16* vCache,
                        int maxLen, int kvDim, cudaStream_t stream);
// proj [rows*seqLen, 3H] of a conv layer in the prefill batch -> convState of each slot.
void convStateFromPrefill(const bf16* proj, const int32_t* prefillRow, const int32_t* promptLen, int slots,
                          int prefillSeqLen, int hidden, float* convState, cudaStream_t stream);
// seen[s, token] = 1 for each prompt token of slot s (repetition penalty); tokens [rows*seqLen] of the prefill.
void markPromptTokens(const int32_t* tokens, const int32_t* prefillRow, const int32_t* promptLen, int slots,
                      int prefillSeqLen, int vocab, uint8_t* seen, cudaStream_t stream);
// dst[dstRows[r]] = src[srcRows[r]] for r < count (rows of `dim` bf16).
void copyRows(const bf16* src, const int32_t* srcRows, bf16* dst, const int32_t* dstRows, int count, int dim,
              cudaStream_t stream);
// One decode step of the short conv for every active slot: proj [slots, 3H] -> y [slots, H] (0 when inactive);
// the state shifts in this step's B*x.
void shortConvDecode(const bf16* proj, const bf16* convWeight, float* convState, const int32_t* lengths, bf16* y,
                     int slots, int hidden, cudaStream_t stream);
// Attention of one query row per slot over its lengths[s] cached keys (GQA; headDim 64): out [slots, qDim]
// (row stride outStride), 0 for inactive slots. Flash-decoding: each slot's keys are split over blocks, the
// split count taken from lengths[s] on the device (so a captured graph stays right as lengths change; the grid
// is sized for maxLen); slots with more than one split are merged by a second kernel (programmatic dependent
// launch) through the workspace, which holds attentionDecodeWorkspace() floats (an upper bound for every
// length <= maxLen and every config). Deterministic (fixed merge order, no atomics).
struct AttentionDecodeConfig {
  int maxSplitKeys = 1024;  // keys per split at most (clamped to >= 256)
  int targetBlocks = 0;     // short of this many blocks, slots get more splits (0: 2 x SMs; clamped to <= 1024)
  bool pdl = true;          // programmatic dependent launch of the combine kernel
};
int64_t attentionDecodeWorkspace(int slots, int maxLen, int numHeads);
void attentionDecode(const bf16* q, int64_t qStride, const bf16* kCache, const bf16* vCache, const int32_t* lengths,
                     bf16* out, int64_t outStride, float* workspace, int slots, int maxLen, int numHeads,
                     int numKvHeads, int headDim, cudaStream_t stream);
void attentionDecode(const bf16* q, int64_t qStride, const bf16* kCache, const bf16* vCache, const int32_t* lengths,
                     bf16* out, int64_t outStride, float* workspace, int slots, int maxLen, int numHeads,
                     int numKvHeads, int headDim, cudaStream_t stream, const AttentionDecodeConfig& config);
// Keeps the GPU busy for about `microseconds` (profiling: lets the host enqueue a whole step before it runs, so
// that events between kernels time the kernels and not the launch gaps).
void gpuSleep(int microseconds, cudaStream_t stream);

// Token sampling, the GPU twin of cpu::sample_token (same processing, same truncation cuts, the same Gumbel-max
// draw from the same splitmix64 streams, hence the same tokens from the same fp32 logits; same log-prob: under the
// tempered, masked distribution before top-k/top-p/min-p truncation). Per active slot (lengths[s] > 0; other
// slots are not touched): candidates are allowedTokens[allowedBegin[s] .. + allowedCount[s]) or the whole
// vocabulary when allowedCount[s] < 0. Truncation keeps every candidate at or above the cut value (ties at the
// cut are all kept, on both sides). Writes token[s], logprob[s], status[s] (0, or 1 = non-finite logits or no
// candidate) and seen[s, token] = 1; advances rng[s] by one splitmix64 step unless greedy.
struct SamplerParams {
  float temperature = 1.f;
  int topK = 0;
  float topP = 1.f;
  float minP = 0.f;
  float repetitionPenalty = 1.f;
  bool greedy = false;
};
void sampleTokens(const float* logits, int vocab, const int32_t* lengths, const int32_t* allowedBegin,
                  const int32_t* allowedCount, const int32_t* allowedTokens, uint8_t* seen, uint64_t* rng,
                  const SamplerParams& params, int32_t* token, float* logprob, int32_t* status, int slots,
                  cudaStream_t stream);

// ---- lora.cu ------------------------------------------------------------------------------------------------
// LoRA dropout on the adapter's input: out[r, c] = x[r, c] * mask, mask = 0 with probability p else 1/(1-p),
// drawn from a counter-based hash of (seed, r * cols + c) so that backward regenerates it. x rows strided (ldx);
// out [rows, cols] dense.
void loraDropout(const bf16* x, int64_t ldx, bf16* out, int64_t rows, int cols, float p, uint64_t seed,
                 cudaStream_t stream);
// dx[r, c] += t[r, c] * mask (the same mask): the input gradient through the dropped-out adapter path.
void loraDropoutAddBackward(const bf16* t, bf16* dx, int64_t lddx, int64_t rows, int cols, float p, uint64_t seed,
                            cudaStream_t stream);

}  // namespace webgrpo::cuda
