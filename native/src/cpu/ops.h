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
#include <cstdint>

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
// Picks one token from logits [V] (not modified). Candidates: `allowed` (n_allowed ids) or all V when null.
// 1. repetition penalty (HF): for tokens with seen[v] != 0, z = z > 0 ? z / penalty : z * penalty;
// 2. z /= temperature (1 when greedy); 3. p = softmax over candidates (others -inf);
// 4. greedy: argmax (lowest id on ties); else, in transformers' order, keep the top_k most likely, then the
//    smallest most-likely prefix holding top_p of their (renormalized) mass, then those with p >= min_p * max p,
//    and draw from the kept mass with one rng_uniform (candidates sorted by p, ties by id). *logprob = log p[token] from step 3 (before min-p/top-k/top-p truncation), which is what
//    score() with the same temperature and mask recomputes. Uses one RNG draw per call unless greedy.
int32_t sample_token(const float* logits, int64_t vocab, const int32_t* allowed, int64_t n_allowed,
                     const uint8_t* seen, const SamplingOptions& options, uint64_t& rng_state, float* logprob);

// ---- optimizer ------------------------------------------------------------------------------------------------
// torch.optim.AdamW: g = grad * grad_scale; p -= lr*weight_decay*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
// p -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps). step is 1-based.
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step, float grad_scale);
// Σ x² in double.
double sum_squares(const float* x, int64_t n);

}  // namespace webgrpo::cpu
