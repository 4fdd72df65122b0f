/* The compute operations the runtime's layer loop needs, behind one table so
 * that the loop never calls a backend directly (STYLE.md: C reference first,
 * fast paths override). Row-major float32; weights in the Hugging Face layout
 * [out, in]. */
#ifndef EPM_OPS_H
#define EPM_OPS_H

#include <stdint.h>

#include "core.h"

/* An FP8 weight matrix [out][in] as DeepSeek-V3/R1's and Qwen3's FP8
 * checkpoints hold it: float8 e4m3 codes q and a float32 scale per block of
 * br x bc weights (scale [ceil(out / br)][ceil(in / bc)], row-major). Weight
 * (i, j) stands for bf16(e4m3(q[i][j]) x its block's scale): the product in
 * float32 rounded to bf16 (nearest even), the bf16 model DeepSeek's
 * fp8_cast_bf16.py writes and the loader gives when it dequantises
 * (epm_model_set_expert_dtype), so both holdings run the same model, as
 * SGLang's CPU kernels do (FP8 unpacked to bf16 with its scale). Codes
 * 0x7f and 0xff (NaN) and products beyond bf16 are not allowed (the loader
 * refuses them); an expert's gate and up share their block width. */
typedef struct epm_w8 {
    const uint8_t *q;
    const float *scale;
    int br, bc;
} epm_w8;

typedef struct epm_ops {
    const char *name;
    /* y[n][out] = x[n][in] W^T (+ b when b != NULL) */
    void (*linear)(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y);
    /* per row of width d: x * w / sqrt(mean(x^2) + eps) */
    void (*rmsnorm)(const float *x, int64_t n, int d, const float *w, float eps, float *y);
    /* y[n][hidden] = down(silu(gate x) * up x) for one expert; scratch holds
     * epm_swiglu_scratch(n, hidden, ffn) floats */
    void (*swiglu)(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                   const float *down, float *scratch, float *y);
    /* The grouped expert FFN: rows offsets[e]..offsets[e+1]-1 of x [offsets[E]][hidden]
     * belong to expert e, whose weights are gate[e], up[e] [ffn][hidden] and down[e]
     * [hidden][ffn] (NULL allowed for an expert with no rows). y gets the same row
     * order. scratch holds epm_grouped_scratch(offsets, E, hidden, ffn) floats. Added after
     * the first three so existing tables and callers stay valid. */
    void (*grouped_swiglu)(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                           const float *const *gate, const float *const *up, const float *const *down,
                           float *scratch, float *y);
    /* The same over bf16 weights (uint16_t bit patterns, as checkpoints hold
     * them: epm_model_set_expert_dtype); x, y and scratch float32, scratch of
     * epm_grouped_scratch_w16 floats. NULL where the table has none (the
     * runtime then holds its experts in float32). */
    epm_status (*grouped_swiglu_w16)(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                     const uint16_t *const *gate, const uint16_t *const *up,
                                     const uint16_t *const *down, float *scratch, float *y);
    /* linear over a bf16 weight (as the checkpoint holds it:
     * epm_model_set_dense_dtype); b float32. NULL where the table has none
     * (the runtime then holds its dense weights in float32). */
    epm_status (*linear_w16)(const float *x, int64_t n, int in, const uint16_t *w, const float *b, int out,
                             float *y);
    /* epm_ref_attention's contract (host memory); every table has one */
    epm_status (*attention)(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc,
                            int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs);
    /* grouped_swiglu over FP8 weights (epm_w8, one per expert; q NULL for
     * an expert with no rows), scratch of epm_grouped_scratch_w8 floats; it
     * may also allocate for the call (EPM_ERR_NOMEM, y partly written).
     * NULL where the table has none (the runtime then holds FP8 experts
     * dequantised to bf16 where the table has a bf16 FFN, else widened). */
    epm_status (*grouped_swiglu_w8)(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                    const epm_w8 *gate, const epm_w8 *up, const epm_w8 *down, float *scratch,
                                    float *y);
    /* linear over an FP8 weight; b float32. NULL where the table has none
     * (the runtime then holds FP8 dense matrices dequantised to bf16, or
     * widened where the table has no bf16 linear either). */
    epm_status (*linear_w8)(const float *x, int64_t n, int in, const epm_w8 *w, const float *b, int out, float *y);
    /* attention's contract over a bf16 K/V cache (bit patterns; the runtime's
     * --kv-dtype bf16, half of float32's memory): epm_ref_attention_bf16's.
     * NULL where the table has none (the runtime then refuses bf16). */
    epm_status (*attention_w16)(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                float *probs);
    /* the same over an fp8 K/V cache (--kv-dtype fp8: e4m3 codes and a
     * float32 scale per cached head row): epm_ref_attention_fp8's. NULL
     * where the table has none (the runtime then refuses fp8). */
    epm_status (*attention_w8)(const float *q, int64_t n, const int32_t *pos, const uint8_t *kc, const float *ks,
                               const uint8_t *vc, const float *vs, int64_t cache_len, int heads, int kv_heads, int hd,
                               float *out, float *probs);
} epm_ops;

/* Rows of the busiest expert: offsets[e + 1] - offsets[e] at its largest. */
int64_t epm_busiest_rows(const int64_t *offsets, int experts);
/* Floats of scratch swiglu needs for n rows (every table's). */
int64_t epm_swiglu_scratch(int64_t n, int hidden, int ffn);
/* Floats of scratch grouped_swiglu needs (every table's): swiglu's for the
 * busiest expert. */
int64_t epm_grouped_scratch(const int64_t *offsets, int experts, int hidden, int ffn);
/* Floats of scratch grouped_swiglu_w16 needs (every table's). */
int64_t epm_grouped_scratch_w16(const int64_t *offsets, int experts, int hidden, int ffn);

/* Floats of scratch grouped_swiglu_w8 needs (every table's). */
int64_t epm_grouped_scratch_w8(const int64_t *offsets, int experts, int hidden, int ffn);

/* The C reference (the oracle). */
const epm_ops *epm_ops_ref(void);
/* CBLAS-backed linear, SwiGLU and grouped SwiGLU (the CPU fast path). */
const epm_ops *epm_ops_blas(void);

/* ---- pieces with one implementation ---- */

/* Rotary embedding in the Hugging Face rotate_half convention on x[n][heads][hd]
 * for token positions pos[n]. */
void epm_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta);
/* The same with given inverse frequencies inv[hd / 2] (YaRN's) and cos and
 * sin multiplied by scale (its attention factor). */
void epm_rope_freqs(float *x, int64_t n, int heads, int hd, const int32_t *pos, const double *inv, double scale);

/* Causal grouped-query attention of n query rows of one sequence at positions
 * pos[i], against cached K/V rows 0..max(pos) of that sequence:
 * q [n][heads][hd], kc/vc [cache_len][kv_heads][hd], out [n][heads][hd].
 * probs, when not NULL, receives [heads][n][cache_len] softmax weights. */
epm_status epm_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                   int kv_heads, int hd, float *out, float *probs, int64_t cache_len);

/* In-place softmax over d entries. */
void epm_softmax(float *x, int d);

/* Top-k of scores[d] (higher first, ties to the lower index) into ids/vals. */
void epm_topk(const float *scores, int d, int k, int32_t *ids, float *vals);

/* DeepSeek's group limit on scores[d] in `groups` consecutive groups of
 * d / groups: all but the `keep` groups with the highest score (V3: the sum
 * of their two best; V2, by_max: their best; ties to the lower group) are
 * set to -inf, so no top-k picks them. gs: [groups] scratch. */
void epm_group_limit(float *scores, int d, int groups, int keep, int by_max, float *gs);

/* Top-p dynamic k ('Harder Tasks Need More Experts'): experts in score order
 * (ties to the lower index) until their cumulative probability reaches p, at
 * least one and at most k; the remaining slots get id -1 and value 0.
 * probs are softmax outputs; p >= 1 (or above the top-k mass) keeps k. */
void epm_topk_p(const float *probs, int d, int k, float p, int32_t *ids, float *vals);

/* The router on logits [n][E]: scores by softmax (sigmoid = 0) or by the
 * sigmoid of each logit (sigmoid = 1, DeepSeek-V3 style), top-k (ties to the
 * lower index), top-p dynamic k when 0 < top_p < 1 (softmax only), then, when
 * renorm != 0, the chosen weights divided by their sum. ids/wts [n][k]. */
epm_status epm_router(const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p, int renorm,
                      int32_t *ids, float *wts);

/* ---- permute / un-permute around the grouped FFN ---- */

/* Groups the (token, slot) pairs of ids [n][k] by expert, tokens in order
 * within an expert (a stable counting sort; ids of -1 are skipped):
 * offsets [E+1], row_src [n*k] (token of each grouped row; offsets[E] used),
 * row_of [n*k] (grouped row of pair (t, j), or -1). An id outside [-1, E)
 * is EPM_ERR_INVALID_ARG naming token and slot. */
epm_status epm_moe_route(const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets, int32_t *row_src,
                         int32_t *row_of);

/* out[r] = x[row_src[r]] for r < rows (rows of width hidden). */
void epm_permute(const float *x, int hidden, const int32_t *row_src, int64_t rows, float *out);

/* out[t] = sum over slots j of w[t][j] * y[row_of[t][j]] (slots with row -1
 * skipped, in slot order); out is overwritten. */
void epm_unpermute(const float *y, int hidden, const int32_t *row_of, const float *w, int64_t n, int k, float *out);

static inline float epm_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float epm_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }

#endif
