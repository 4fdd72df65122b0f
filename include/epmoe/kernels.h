/* epmoe: the compute kernels of a MoE layer and the backends that run them.
 *
 * Two layers:
 *  - epm_ref_*: the C reference kernels (the oracle), float32 on host memory,
 *    plain loops with double accumulation. Every fast kernel is tested
 *    against them; the model's forward pass may call them directly.
 *  - epm_kernels: a backend ("ref", "cpu" = BLAS, "cuda") chosen at run time,
 *    a table of operations plus a context. Its operations take buffers the
 *    backend owns (alloc/upload/download; host memory for the CPU backends,
 *    device memory for CUDA), so the runtime never calls a backend directly
 *    and a test can call two backends with the same arguments.
 *
 * Layouts: row-major; weights in the Hugging Face layout [out][in]; a token's
 * query/key rows are [heads][head_dim]; K/V caches [positions][kv_heads][hd].
 * All functions validate shapes and pointers and return EPM_ERR_INVALID_ARG
 * with a detail naming the argument and value. */
#ifndef EPMOE_KERNELS_H
#define EPMOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"
#include "epmoe/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------
 * Element-wise and conversion
 * ------------------------------------------------------------------------- */

/* n elements from src_type to dst_type, each one of F32, BF16, F16 (bf16 and
 * f16 are uint16 bit patterns; float32 -> bf16/f16 rounds to nearest even,
 * NaN stays NaN, f16 overflow gives infinity). src == dst is allowed unless
 * the elements grow (F32 -> BF16 in place leaves the result in the first
 * half of the buffer). */
EPM_API epm_status epm_ref_convert(const void *src, epm_dtype src_type, int64_t n, epm_dtype dst_type, void *dst);

/* y = x * sigmoid(x) and y = 1 / (1 + exp(-x)), element-wise; y may be x. */
EPM_API epm_status epm_ref_silu(const float *x, int64_t n, float *y);
EPM_API epm_status epm_ref_sigmoid(const float *x, int64_t n, float *y);

/* Softmax of each of `rows` rows of width d (the max is subtracted first);
 * y may be x. */
EPM_API epm_status epm_ref_softmax(const float *x, int64_t rows, int d, float *y);

/* ---------------------------------------------------------------------------
 * Dense pieces of a transformer layer
 * ------------------------------------------------------------------------- */

/* out[i] = table[ids[i]] for n tokens; table [vocab][d]. An id outside
 * [0, vocab) is EPM_ERR_INVALID_ARG naming the token and id. */
EPM_API epm_status epm_ref_embed(const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                                 float *out);

/* y[n][out] = x[n][in] W^T (+ b when b != NULL); w [out][in]. y must not
 * overlap x. */
EPM_API epm_status epm_ref_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out,
                                  float *y);

/* Each of n rows of width d: y = w * x / sqrt(mean(x^2) + eps); y may be x.
 * Per-head q/k norm (Qwen3): n * heads rows of width head_dim. OLMoE's
 * q_norm/k_norm (Hugging Face OlmoeAttention) normalise the whole projection
 * output, so there n rows of width heads * head_dim with a weight of that
 * width. */
EPM_API epm_status epm_ref_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y);

/* Rotary embedding, Hugging Face "rotate_half" convention, in place on
 * x[n][heads][hd] for token positions pos[n]: element j < hd/2 pairs with
 * j + hd/2 and turns by pos * theta^(-2j/hd). hd must be even. */
EPM_API epm_status epm_ref_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta);

/* Causal grouped-query attention of n query rows of one sequence. Row i is at
 * position pos[i] (a prefill passes p, p+1, ..., a decode step one position)
 * and attends to cache rows 0..pos[i], which must already hold its own K/V.
 * q [n][heads][hd]; kc, vc [cache_len][kv_heads][hd]; heads % kv_heads == 0
 * (query head h reads kv head h / (heads / kv_heads)); scores scaled by
 * 1/sqrt(hd). out [n][heads][hd]. probs, when not NULL, receives the softmax
 * weights [heads][n][cache_len] (zero beyond pos[i]); Mixture-of-Depths'
 * attention-based routing reads them. pos[i] must be < cache_len. */
EPM_API epm_status epm_ref_attention(const float *q, int64_t n, const int32_t *pos, const float *kc,
                                     const float *vc, int64_t cache_len, int heads, int kv_heads, int hd,
                                     float *out, float *probs);
/* The same over a bf16 K/V cache (kc, vc: bf16 bit patterns, as a runtime
 * that keeps its cache at half of float32's memory holds them): the float32
 * reference's arithmetic on the exactly widened values. */
EPM_API epm_status epm_ref_attention_bf16(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                          const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd,
                                          float *out, float *probs);

/* The same over an fp8 K/V cache (vLLM's and SGLang's fp8_e4m3 cache dtype,
 * a quarter of float32's memory): kc, vc [cache_len][kv_heads][hd] float8
 * e4m3fn codes and ks, vs [cache_len][kv_heads] a float32 scale per cached
 * head row, the value of element (t, kh, j) being e4m3(kc[(t * kv_heads +
 * kh) * hd + j]) x ks[t * kv_heads + kh] (a float32 product): the float32
 * reference's arithmetic on those values. */
EPM_API epm_status epm_ref_attention_fp8(const float *q, int64_t n, const int32_t *pos, const uint8_t *kc,
                                         const float *ks, const uint8_t *vc, const float *vs, int64_t cache_len,
                                         int heads, int kv_heads, int hd, float *out, float *probs);

/* ---------------------------------------------------------------------------
 * MoE routing
 * ------------------------------------------------------------------------- */

typedef enum epm_score_fn {
    EPM_SCORE_SOFTMAX = 0, /* Mixtral, Qwen2-MoE, OLMoE */
    EPM_SCORE_SIGMOID = 1  /* DeepSeek-V3 style: each logit's sigmoid */
} epm_score_fn;

typedef struct epm_router_opts {
    int k;              /* experts per token, 1 <= k <= experts */
    epm_score_fn score;
    int renorm;         /* != 0: the chosen weights are divided by their sum */
    /* 0 < top_p < 1: dynamic k ('Harder Tasks Need More Experts'): experts in
     * score order until their cumulative probability reaches top_p, at least
     * one, at most k; the other slots get id -1 and weight 0. Softmax only.
     * 0 (or >= 1) keeps k experts. */
    float top_p;
} epm_router_opts;

/* k = 2, softmax, no renormalisation, no top-p. */
EPM_API void epm_router_opts_init(epm_router_opts *o);

/* The k largest of scores[d] into ids/vals, in descending score; ties go to
 * the lower index. */
EPM_API epm_status epm_ref_topk(const float *scores, int d, int k, int32_t *ids, float *vals);

/* The router on logits [n][experts] (logits = x Wg^T come from
 * epm_ref_linear): ids and weights [n][k] by the options above. */
EPM_API epm_status epm_ref_router(const float *logits, int64_t n, int experts, const epm_router_opts *o,
                                  int32_t *ids, float *wts);

/* Groups the (token, slot) pairs of ids [n][k] by expert, tokens in order
 * within an expert (a stable counting sort; id -1 = no expert):
 * offsets [experts + 1] (expert e owns grouped rows offsets[e]..offsets[e+1]-1),
 * row_src [n * k] (the token of each grouped row; the first offsets[experts]
 * are written), row_of [n * k] (the grouped row of pair (t, j), or -1). */
EPM_API epm_status epm_ref_route(const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                                 int32_t *row_src, int32_t *row_of);

/* out[r] = x[row_src[r]] for r < rows (rows of width hidden). */
EPM_API epm_status epm_ref_permute(const float *x, int hidden, const int32_t *row_src, int64_t rows, float *out);

/* out[t] = sum over slots j with row_of[t][j] >= 0 of w[t][j] * y[row_of[t][j]]
 * (in slot order); out [n][hidden] is overwritten. */
EPM_API epm_status epm_ref_unpermute(const float *y, int hidden, const int32_t *row_of, const float *w, int64_t n,
                                     int k, float *out);

/* ---------------------------------------------------------------------------
 * Expert FFN (SwiGLU): y = down(silu(gate x) * up x)
 * Mixtral: w1 = gate, w3 = up, w2 = down. Qwen2-MoE / OLMoE: gate_proj,
 * up_proj, down_proj. gate, up [ffn][hidden]; down [hidden][ffn].
 * ------------------------------------------------------------------------- */

/* One expert over n rows x [n][hidden] -> y [n][hidden]. */
EPM_API epm_status epm_ref_expert_ffn(const float *x, int64_t n, int hidden, int ffn, const float *gate,
                                      const float *up, const float *down, float *y);

/* All local experts at once: rows offsets[e]..offsets[e+1]-1 of x belong to
 * expert e (offsets [experts + 1], offsets[0] = 0, non-decreasing, as from
 * epm_ref_route); gate/up/down are arrays of experts pointers (NULL allowed
 * for an expert with no rows). y [offsets[experts]][hidden], same row order. */
EPM_API epm_status epm_ref_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                       const float *const *gate, const float *const *up,
                                       const float *const *down, float *y);

/* ---------------------------------------------------------------------------
 * Backends
 * ------------------------------------------------------------------------- */

typedef struct epm_kernels epm_kernels; /* a backend instance: table + context */

/* The operations of a backend. Every buffer argument is memory of this
 * backend (from alloc, or a view into it) unless marked HOST. The contracts
 * are those of the epm_ref_* function of the same name. Operations are queued
 * in order on the backend's one stream; download and sync wait for them, so a
 * layer runs without host round trips. Optional operations are NULL where a
 * backend lacks them; callers check. dtype arguments take EPM_DTYPE_F32 or
 * EPM_DTYPE_BF16 (another is EPM_ERR_UNSUPPORTED). */
typedef struct epm_kernel_ops {
    epm_status (*alloc)(epm_kernels *kb, size_t bytes, void **out);
    void (*free)(epm_kernels *kb, void *p); /* accepts NULL */
    epm_status (*upload)(epm_kernels *kb, void *dst, const void *host_src, size_t bytes);
    epm_status (*download)(epm_kernels *kb, void *host_dst, const void *src, size_t bytes);
    epm_status (*sync)(epm_kernels *kb);

    /* in place only between equal widths on cuda (threads would race) */
    epm_status (*convert)(epm_kernels *kb, const void *src, epm_dtype src_type, int64_t n, epm_dtype dst_type,
                          void *dst);
    epm_status (*embed)(epm_kernels *kb, const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                        float *out);
    epm_status (*linear)(epm_kernels *kb, const float *x, int64_t n, int in, const float *w, const float *b,
                         int out, float *y);
    epm_status (*rmsnorm)(epm_kernels *kb, const float *x, int64_t n, int d, const float *w, float eps, float *y);
    epm_status (*rope)(epm_kernels *kb, float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta);
    /* probs may be NULL; a backend may refuse probs != NULL (EPM_ERR_UNSUPPORTED) */
    epm_status (*attention)(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const float *kc,
                            const float *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                            float *probs);
    epm_status (*router)(epm_kernels *kb, const float *logits, int64_t n, int experts, const epm_router_opts *o,
                         int32_t *ids, float *wts);
    /* offsets: backend memory, int64 [experts + 1] */
    epm_status (*route)(epm_kernels *kb, const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                        int32_t *row_src, int32_t *row_of);
    epm_status (*permute)(epm_kernels *kb, epm_dtype dt, const void *x, int hidden, const int32_t *row_src,
                          int64_t rows, void *out);
    /* w is float32 whatever dt is */
    epm_status (*unpermute)(epm_kernels *kb, epm_dtype dt, const void *y, int hidden, const int32_t *row_of,
                            const float *w, int64_t n, int k, void *out);
    /* Bytes of scratch grouped_ffn needs for `rows` grouped rows in total
     * (an upper bound for any split of them among experts). */
    size_t (*grouped_ffn_scratch)(epm_kernels *kb, epm_dtype dt, int64_t rows, int hidden, int ffn);
    /* The grouped expert FFN on x [offsets[experts]][hidden] of type dt with
     * weights of type dt. offsets is HOST memory (GEMM sizes are host
     * arguments on every backend); gate/up/down are HOST arrays of backend
     * pointers. */
    epm_status (*grouped_ffn)(epm_kernels *kb, epm_dtype dt, const void *x, const int64_t *offsets, int experts,
                              int hidden, int ffn, const void *const *gate, const void *const *up,
                              const void *const *down, void *scratch, void *y);
    /* attention over a bf16 K/V cache (epm_ref_attention_bf16's contract);
     * NULL where the backend has none (cuda) */
    epm_status (*attention_bf16)(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                 const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                 float *probs);
    /* attention over an fp8 K/V cache (epm_ref_attention_fp8's contract);
     * NULL where the backend has none (cuda) */
    epm_status (*attention_fp8)(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const uint8_t *kc,
                                const float *ks, const uint8_t *vc, const float *vs, int64_t cache_len, int heads,
                                int kv_heads, int hd, float *out, float *probs);
} epm_kernel_ops;

/* A backend by name: "ref" (the C reference), "cpu" (BLAS: OpenBLAS threads
 * the GEMMs), "cuda" (GPU 0), or "auto" (cuda when a GPU is visible, else
 * cpu). "cuda" in a build without CUDA, or with no visible GPU, is
 * EPM_ERR_UNSUPPORTED with a detail saying which. */
EPM_API epm_status epm_kernels_create(const char *name, epm_kernels **out);
EPM_API void epm_kernels_destroy(epm_kernels *kb); /* accepts NULL */

/* The backend's name ("ref", "cpu", "cuda") and its operations. */
EPM_API const char *epm_kernels_name(const epm_kernels *kb);
EPM_API const epm_kernel_ops *epm_kernels_ops(const epm_kernels *kb);
/* 1 when the backend's buffers are host memory (the host may read them). */
EPM_API int epm_kernels_host_memory(const epm_kernels *kb);

#ifdef __cplusplus
}
#endif
#endif
