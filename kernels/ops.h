/* The compute operations the runtime's layer loop needs, behind one table so
 * that the loop never calls a backend directly (STYLE.md: C reference first,
 * fast paths override). Row-major float32; weights in the Hugging Face layout
 * [out, in]. */
#ifndef EPM_OPS_H
#define EPM_OPS_H

#include <stdint.h>

#include "core.h"

typedef struct epm_ops {
    const char *name;
    /* y[n][out] = x[n][in] W^T (+ b when b != NULL) */
    void (*linear)(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y);
    /* per row of width d: x * w / sqrt(mean(x^2) + eps) */
    void (*rmsnorm)(const float *x, int64_t n, int d, const float *w, float eps, float *y);
    /* y[n][hidden] = down(silu(gate x) * up x) for one expert; scratch holds 2 * n * ffn floats */
    void (*swiglu)(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                   const float *down, float *scratch, float *y);
} epm_ops;

/* The C reference (the oracle). */
const epm_ops *epm_ops_ref(void);
/* CBLAS-backed linear and SwiGLU (the CPU fast path). */
const epm_ops *epm_ops_blas(void);

/* ---- pieces with one implementation ---- */

/* Rotary embedding in the Hugging Face rotate_half convention on x[n][heads][hd]
 * for token positions pos[n]. */
void epm_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta);

/* Causal grouped-query attention of n query rows of one sequence at positions
 * pos[i], against cached K/V rows 0..max(pos) of that sequence:
 * q [n][heads][hd], kc/vc [cache_len][kv_heads][hd], out [n][heads][hd].
 * probs, when not NULL, receives [heads][n][cache_len] softmax weights. */
void epm_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                   int kv_heads, int hd, float *out, float *probs, int64_t cache_len);

/* In-place softmax over d entries. */
void epm_softmax(float *x, int d);

/* Top-k of scores[d] (higher first, ties to the lower index) into ids/vals. */
void epm_topk(const float *scores, int d, int k, int32_t *ids, float *vals);

static inline float epm_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float epm_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }

#endif
