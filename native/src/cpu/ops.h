// CPU reference ops for LFM2, fp32. Every op is a plain function over raw row-major float buffers; these are
// THE reference the CUDA kernels are held to, so each one documents its exact math and buffer shapes.
//
// Conventions
// - "rows" is the flattened batch (B*T during training, number of active sequences during decoding).
// - Linear weights are [out, in] as in torch.nn.Linear; y = x · Wᵀ.
// - Backward functions ACCUMULATE (+=) into every gradient they write (dx, dweight), so callers zero once and
//   several consumers can add into one buffer. A null gradient pointer means "not needed".
// - Sums over long axes (norm statistics, softmax denominators) accumulate in double for parity with PyTorch.
// - Ops use OpenMP threads (the caller sets omp_set_num_threads); results do not depend on the thread count or on
//   which rows share a batch (fixed summation order, no FMA contraction), except sum_squares' reduction.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace webgrpo::cpu {

// ---- embedding ------------------------------------------------------------------------------------------------
// out[r, :] = table[tokens[r], :]. table [vocab, dim]. Tokens must be in range (callers validate).
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t rows, int64_t dim);
// dtable[tokens[r], :] += dout[r, :].
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t rows, int64_t dim);

// ---- RMSNorm (HF Lfm2RMSNorm: fp32 x * rsqrt(mean(x²) + eps), then times weight) ------------------------------
// out[r,i] = x[r,i] * rstd[r] * weight[i], rstd[r] = 1/sqrt(mean_i x[r,i]² + eps). rstd [rows] is saved for
// backward (may be null). Also used for q/k_layernorm with rows = tokens*heads, dim = head_dim. out may alias x.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t rows, int64_t dim,
                     float eps);
// dx[r,i] += rstd*(dout*w)[i] - x[r,i] * rstd³/dim * Σ_j (dout*w)[j]*x[r,j];  dweight[i] += Σ_r dout*x*rstd.
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t rows, int64_t dim);

// x[i] += delta[i] for i < n.
void residual_add(float* x, const float* delta, int64_t n);
// Zeroes the rows r whose mask[r] == 0 (HF zeroes padded positions before the short conv's in_proj).
void mask_rows(float* x, const uint8_t* mask, int64_t rows, int64_t dim);

// ---- linear ---------------------------------------------------------------------------------------------------
// out[r, o] = Σ_i x[r, i] * weight[o, i]. x [rows, in], weight [out, in], out [rows, out] (overwritten).
void matmul_forward(float* out, const float* x, const float* weight, int64_t rows, int64_t in, int64_t out_features);
// dx[r, i] += Σ_o dout[r, o] * weight[o, i];  dweight[o, i] += Σ_r dout[r, o] * x[r, i].
void matmul_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight, int64_t rows,
                     int64_t in, int64_t out_features);

// ---- LoRA adapter on a linear layer (PEFT's lora.Linear) ----------------------------------------------------------
// out[r, o] += scale * Σ_j u[r, j] * b[o, j] with u = xd · aᵀ, xd = x ⊙ dropout_mask (xd = x when the mask is
// null): x [rows, in], a [rank, in] (lora_A), b [out, rank] (lora_B), out [rows, out] (added to the base layer's
// output), dropout_mask [rows, in] of 0 or 1/(1-p). scale = alpha / rank (alpha / sqrt(rank) for rsLoRA).
void lora_forward(float* out, const float* x, const float* a, const float* b, int64_t rows, int64_t in,
                  int64_t out_features, int64_t rank, float scale, const float* dropout_mask);
// Gradients of the above with the same mask (u recomputed): g = scale * dout; du = g · b; db += gᵀ u;
// da += duᵀ xd; dx += (du · a) ⊙ dropout_mask. Only the adapter's and the input's gradients: the base weight stays
// frozen.
void lora_backward(float* dx, float* da, float* db, const float* dout, const float* x, const float* a, const float* b,
                   int64_t rows, int64_t in, int64_t out_features, int64_t rank, float scale,
                   const float* dropout_mask);

// ---- short conv block (Lfm2ShortConv) -------------------------------------------------------------------------
// bcx [rows, 3H] is in_proj's output split in channel order B | C | x.
// bx[r, c] = B[r, c] * x[r, c].
void conv_gate_in_forward(float* bx, const float* bcx, int64_t rows, int64_t hidden);
// dB += dbx * x, dx += dbx * B (written into the B and x thirds of dbcx).
void conv_gate_in_backward(float* dbcx, const float* dbx, const float* bcx, int64_t rows, int64_t hidden);
// Depthwise causal conv over time within each sequence of `batch` sequences of `seq_len` rows each:
// out[b,t,c] = Σ_{k<K} weight[c,k] * in[b, t-(K-1)+k, c], terms with t-(K-1)+k < 0 are zero (= zero state;
// with left padding zeroed, a padded sequence equals the unpadded one). weight [H, K] (HF's [H,1,K]).
void causal_conv_forward(float* out, const float* in, const float* weight, int64_t batch, int64_t seq_len,
                         int64_t hidden, int64_t kernel);
void causal_conv_backward(float* din, float* dweight, const float* dout, const float* in, const float* weight,
                          int64_t batch, int64_t seq_len, int64_t hidden, int64_t kernel);
// One decoding step of the same conv. state [(K-1), H] holds the previous K-1 inputs, oldest first:
// out[c] = Σ_{k<K-1} weight[c,k]*state[k,c] + weight[c,K-1]*in[c]; then state shifts left and takes in.
void causal_conv_step(float* out, float* state, const float* in, const float* weight, int64_t hidden, int64_t kernel);
// y[r, c] = C[r, c] * conv[r, c].
void conv_gate_out_forward(float* y, const float* bcx, const float* conv, int64_t rows, int64_t hidden);
// dC += dy * conv (into the C third of dbcx), dconv += dy * C.
void conv_gate_out_backward(float* dbcx, float* dconv, const float* dy, const float* bcx, const float* conv,
                            int64_t rows, int64_t hidden);

// ---- attention ------------------------------------------------------------------------------------------------
// Positions of a left-padded batch: pos[b,t] = (number of real tokens in row b before t), i.e. cumsum(mask)-1;
// padded positions get 0.
void positions_from_mask(int32_t* positions, const uint8_t* mask, int64_t batch, int64_t seq_len);
// Rotate-half (NeoX) RoPE in place on x [rows, heads*head_dim]: for i < half = head_dim/2,
// inv_freq[i] = theta^(-2i/head_dim) (computed in fp32 as HF does), a = float(pos[r]) * inv_freq[i] (fp32),
// x'[i] = x[i] cos a - x[i+half] sin a, x'[i+half] = x[i+half] cos a + x[i] sin a.
void rope_forward(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim, float theta);
// The transpose (inverse rotation), in place on dx: dx[i] = dy[i] cos a + dy[i+half] sin a, ...
void rope_backward(float* dx, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim, float theta);
// Causal GQA attention over a left-padded batch. q [B*T, nh*hd], k/v [B*T, nkv*hd], out [B*T, nh*hd],
// lse [B, nh, T] (log-sum-exp of each query row's scaled scores, saved for backward; may be null).
// Query (b,t,h) attends to keys s <= t with mask[b,s] = 1 of kv head h / (nh/nkv), scale 1/sqrt(hd).
// Rows of padded queries (mask[b,t] = 0) output zeros.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const uint8_t* mask,
                       int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim);
// Gradients (accumulated) of the above given dout, the forward's out and lse.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* mask, int64_t batch,
                        int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim);
// One query token per head against a cache of `len` past keys/values (the new token's included):
// q [nh*hd], k_cache/v_cache [len, nkv*hd], out [nh*hd].
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t len,
                      int64_t heads, int64_t kv_heads, int64_t head_dim);

// ---- SwiGLU MLP (w2(silu(w1 x) * w3 x)) -----------------------------------------------------------------------
// h[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
void swiglu_forward(float* h, const float* gate, const float* up, int64_t n);
// dgate += dh * up * silu'(gate), dup += dh * silu(gate); silu'(g) = s + g s (1 - s), s = sigmoid(g).
void swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up, int64_t n);

// ---- lm_head + log-softmax at chosen positions -----------------------------------------------------------------
// For each of `rows` scored positions: z[v] = (hidden[r] · weight[v]) / temperature for the allowed tokens v
// (allowed_tokens[allowed_offsets[r] .. allowed_offsets[r+1]) when allowed_offsets is non-null, else all V;
// the others are -inf). logprob[r] = z[target[r]] - logsumexp(z); entropy[r] = -Σ p log p over allowed tokens.
// hidden [rows, H], weight [V, H]. A target outside its allowed set gives -inf (callers validate first).
void lm_head_logprobs_forward(float* logprob, float* entropy, const float* hidden, const float* weight,
                              const int32_t* targets, const int32_t* allowed_offsets, const int32_t* allowed_tokens,
                              int64_t rows, int64_t hidden_dim, int64_t vocab, float temperature);
// Gradient of Σ_r dlogprob[r] * logprob[r]: dz[v] = dlogprob[r] * (1[v = target] - p[v]) / temperature for allowed
// v (0 elsewhere); dhidden[r] += Σ_v dz[v] weight[v]; dweight[v] += Σ_r dz[v] hidden[r]. Logits are recomputed
// in chunks of rows, so full [rows, V] logits never exist.
void lm_head_logprobs_backward(float* dhidden, float* dweight, const float* dlogprob, const float* hidden,
                               const float* weight, const int32_t* targets, const int32_t* allowed_offsets,
                               const int32_t* allowed_tokens, int64_t rows, int64_t hidden_dim, int64_t vocab,
                               float temperature);

// ---- sampling -------------------------------------------------------------------------------------------------
struct SamplingOptions {
  float temperature = 1.0f;
  int32_t top_k = 0;     // 0 = off
  float top_p = 1.0f;    // 1 = off
  float min_p = 0.0f;    // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off
  bool greedy = false;
};
// splitmix64: the per-sequence RNG (state advanced in place). Seeds: rng_seed_for(seed, sequence_index).
uint64_t rng_next(uint64_t& state);
double rng_uniform(uint64_t& state);  // [0, 1), 53 bits
uint64_t rng_seed_for(uint64_t seed, uint64_t sequence_index);
// Picks one token from logits [V] (not modified). Candidates: `allowed` (n_allowed >= 1 distinct ids, any order)
// or all V when null.
// 1. repetition penalty (HF): for tokens with seen[v] != 0, x = x > 0 ? x / penalty : x * penalty;
// 2. z = x / temperature in fp32 (temperature 1 when greedy); p = softmax of z over the candidates.
// 3. greedy: argmax z (lowest id on ties). Otherwise truncation, in transformers' order, as cuts on z (every
//    candidate at or above a cut is kept, so ties at a cut are all kept, as in HF's top-k warper):
//    top-k: z >= the k-th largest z; top-p: z >= the largest value c for which the kept candidates with z >= c
//    hold at least top_p of the top-k set's mass; min-p: exp(z - max z) >= min_p (p >= min_p * max p). The
//    masses are Σ exp(z - max z) with fp32 exp, summed in double.
// 4. Gumbel-max draw over the kept set: key = rng_next(rng_state) (one RNG step per call unless greedy); the
//    token is argmax over kept ids v of z[v] + gumbel_noise(gumbel_bits(key, v)) in double, lowest id on ties.
//    That is an exact draw from softmax(z) renormalised over the kept set, needs no ordering of the candidates,
//    and the CUDA sampler (cuda::sampleTokens) computes the same argmax with the same noise: both sides screen
//    with gumbel_may_reach, which only skips candidates that provably cannot win.
// *logprob = z[token] - logsumexp(z over all candidates), i.e. before truncation: what score() with the same
// temperature and mask recomputes.
int32_t sample_token(const float* logits, int64_t vocab, const int32_t* allowed, int64_t n_allowed,
                     const uint8_t* seen, const SamplingOptions& options, uint64_t& rng_state, float* logprob);

// ---- the Gumbel-max draw's shared pieces (host and device: native/src/cuda/decode.cu uses them too) ----------
#if defined(__CUDACC__)
#define WEBGRPO_HD __host__ __device__ __forceinline__
#else
#define WEBGRPO_HD inline
#endif

// splitmix64's output function (rng_next = splitmix64_mix(state += golden)).
WEBGRPO_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
constexpr uint64_t kSplitmixGolden = 0x9e3779b97f4a7c15ull;

// memcpy is the portable bit cast on both sides (nvcc turns it into a register move in device code).
WEBGRPO_HD float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
WEBGRPO_HD uint32_t bits_of_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
// Order-preserving map of a float to an unsigned key (larger float, larger key; -0 just below +0). The
// truncation cuts compare these keys.
WEBGRPO_HD uint32_t ordered_key(float f) {
  const uint32_t u = bits_of_float(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The 64 random bits of token `id` under a draw's key: a counter-based hash (splitmix64's mix of
// key ^ id * golden), so any thread can take any token in any order.
WEBGRPO_HD uint64_t gumbel_bits(uint64_t key, int32_t id) {
  return splitmix64_mix(key ^ (uint64_t(uint32_t(id)) * kSplitmixGolden));
}
// Standard Gumbel noise from those bits, in double: u = (bits' top 52 + 1/2) / 2^52 in [2^-53, 1 - 2^-53],
// g = -log(-log u), so g lies in [-3.61, 36.74].
WEBGRPO_HD double gumbel_noise(uint64_t bits) {
  const double u = (double(bits >> 12) + 0.5) * 0x1.0p-52;
  return -::log(-::log(u));
}
// Screen before gumbel_noise (two fp32 exps instead of two fp64 logs): false only when
// double(z) + gumbel_noise(bits) < bound for certain, where bound = bound_hi + bound_lo (a float pair holding a
// double score; bound_hi = -inf: no bound yet). g >= gap <=> u >= exp(-exp(-gap)); u is below the ceiling of its
// top 23 bits, and the 2^-10 relative margin on the threshold covers the fp32 rounding of gap and of the exps (the
// GPU's fast __expf: about 1e-4 relative at worst here), so a skipped candidate falls short of the bound by more
// than 1e-5, far beyond the double rounding of z + g for |z| < 2^24 (larger |z| or bound: not screened). Being
// exact in effect, the screen leaves the argmax, hence the token, the same whatever order candidates come in.
WEBGRPO_HD bool gumbel_may_reach(uint64_t bits, float z, float bound_hi, float bound_lo) {
  if (!(::fabsf(z) < 0x1.0p24f) || !(::fabsf(bound_hi) < 0x1.0p24f)) return true;
  const float gap = (bound_hi - z) + bound_lo;
  if (gap >= 36.75f) return false;  // beyond the largest noise
#if defined(__CUDA_ARCH__)
  const float threshold = __expf(-__expf(-gap));
#else
  const float threshold = ::expf(-::expf(-gap));
#endif
  // (top 23 bits + 1) / 2^23 > u, exactly: 1 + k 2^-23 minus (1 - 2^-23) is exact (Sterbenz).
  const float ceiling = float_from_bits(0x3f800000u | uint32_t(bits >> 41)) - (1.0f - 0x1.0p-23f);
  return ceiling >= threshold * (1.0f - 0x1.0p-10f);
}
#undef WEBGRPO_HD

// ---- optimizer ------------------------------------------------------------------------------------------------
// torch.optim.AdamW: g = grad * grad_scale; p -= lr*weight_decay*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
// p -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps). step is 1-based.
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step, float grad_scale);
// Σ x² in double.
double sum_squares(const float* x, int64_t n);

}  // namespace webgrpo::cpu
