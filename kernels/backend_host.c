/* The two host-memory backends. "ref" puts the C reference behind the table;
 * "cpu" replaces the GEMM-shaped operations (linear, grouped FFN) with BLAS
 * and keeps the reference for the rest, which are memory-bound or small.
 * bfloat16 (permute, unpermute, and the reference's grouped FFN, the oracle
 * of the CUDA bf16 path) is computed in float32 and rounded once on output;
 * "cpu"'s bf16 grouped FFN keeps the weights bf16 (cpu_ffn_bf16.c). */
#include <string.h>

#include "backend.h"
#include "half.h"
#include "kcheck.h"

/* ---- memory: plain host allocations ---- */

static epm_status host_alloc(epm_kernels *kb, size_t bytes, void **out)
{
    (void)kb;
    KREQ(out != NULL, "kernels alloc: out is NULL");
    *out = epm_malloc(bytes ? bytes : 1);
    return *out ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "kernels alloc: %zu bytes", bytes);
}

static void host_free(epm_kernels *kb, void *p)
{
    (void)kb;
    epm_free(p);
}

static epm_status host_copy(epm_kernels *kb, void *dst, const void *src, size_t bytes)
{
    (void)kb;
    KPTR("kernels copy", dst, bytes);
    KPTR("kernels copy", src, bytes);
    if (bytes)
        memmove(dst, src, bytes);
    return EPM_OK;
}

static epm_status host_sync(epm_kernels *kb)
{
    (void)kb;
    return EPM_OK;
}

/* ---- the reference behind the table ---- */

static epm_status h_convert(epm_kernels *kb, const void *src, epm_dtype st, int64_t n, epm_dtype dt, void *dst)
{
    (void)kb;
    return epm_ref_convert(src, st, n, dt, dst);
}

static epm_status h_embed(epm_kernels *kb, const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                          float *out)
{
    (void)kb;
    return epm_ref_embed(table, vocab, d, ids, n, out);
}

static epm_status ref_linear(epm_kernels *kb, const float *x, int64_t n, int in, const float *w, const float *b,
                             int out, float *y)
{
    (void)kb;
    return epm_ref_linear(x, n, in, w, b, out, y);
}

static epm_status h_rmsnorm(epm_kernels *kb, const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    (void)kb;
    return epm_ref_rmsnorm(x, n, d, w, eps, y);
}

static epm_status h_rope(epm_kernels *kb, float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    (void)kb;
    return epm_ref_rope(x, n, heads, hd, pos, theta);
}

static epm_status h_attention(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const float *kc,
                              const float *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                              float *probs)
{
    (void)kb;
    return epm_ref_attention(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status cpu_attention(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const float *kc,
                                const float *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                float *probs)
{
    (void)kb;
    return epm_cpu_attention(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status h_attention_bf16(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos,
                                   const uint16_t *kc, const uint16_t *vc, int64_t cache_len, int heads, int kv_heads,
                                   int hd, float *out, float *probs)
{
    (void)kb;
    return epm_ref_attention_bf16(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status cpu_attention_bf16(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos,
                                     const uint16_t *kc, const uint16_t *vc, int64_t cache_len, int heads,
                                     int kv_heads, int hd, float *out, float *probs)
{
    (void)kb;
    return epm_cpu_attention_bf16(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status h_attention_fp8(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const uint8_t *kc,
                                  const float *ks, const uint8_t *vc, const float *vs, int64_t cache_len, int heads,
                                  int kv_heads, int hd, float *out, float *probs)
{
    (void)kb;
    return epm_ref_attention_fp8(q, n, pos, kc, ks, vc, vs, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status cpu_attention_fp8(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos,
                                    const uint8_t *kc, const float *ks, const uint8_t *vc, const float *vs,
                                    int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs)
{
    (void)kb;
    return epm_cpu_attention_fp8(q, n, pos, kc, ks, vc, vs, cache_len, heads, kv_heads, hd, out, probs);
}

static epm_status h_router(epm_kernels *kb, const float *logits, int64_t n, int experts, const epm_router_opts *o,
                           int32_t *ids, float *wts)
{
    (void)kb;
    return epm_ref_router(logits, n, experts, o, ids, wts);
}

static epm_status h_route(epm_kernels *kb, const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                          int32_t *row_src, int32_t *row_of)
{
    (void)kb;
    return epm_ref_route(ids, n, k, experts, offsets, row_src, row_of);
}

static epm_status check_dtype(const char *fn, epm_dtype dt)
{
    if (dt != EPM_DTYPE_F32 && dt != EPM_DTYPE_BF16)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: dtype %s (F32 or BF16 only)", fn, epm_dtype_name(dt));
    return EPM_OK;
}

static epm_status h_permute(epm_kernels *kb, epm_dtype dt, const void *x, int hidden, const int32_t *row_src,
                            int64_t rows, void *out)
{
    (void)kb;
    EPM_CHECK(check_dtype("permute", dt));
    if (dt == EPM_DTYPE_F32)
        return epm_ref_permute(x, hidden, row_src, rows, out);
    KREQ(hidden >= 1 && rows >= 0, "permute: hidden = %d, rows = %lld", hidden, (long long)rows);
    KPTR("permute", x, rows);
    KPTR("permute", row_src, rows);
    KPTR("permute", out, rows);
    for (int64_t r = 0; r < rows; r++) {
        KREQ(row_src[r] >= 0, "permute: row_src[%lld] = %d", (long long)r, row_src[r]);
        memcpy((uint16_t *)out + r * hidden, (const uint16_t *)x + (int64_t)row_src[r] * hidden,
               (size_t)hidden * 2);
    }
    return EPM_OK;
}

static epm_status h_unpermute(epm_kernels *kb, epm_dtype dt, const void *y, int hidden, const int32_t *row_of,
                              const float *w, int64_t n, int k, void *out)
{
    (void)kb;
    EPM_CHECK(check_dtype("unpermute", dt));
    if (dt == EPM_DTYPE_F32)
        return epm_ref_unpermute(y, hidden, row_of, w, n, k, out);
    KREQ(hidden >= 1 && n >= 0 && k >= 1, "unpermute: hidden = %d, n = %lld, k = %d", hidden, (long long)n, k);
    KPTR("unpermute", row_of, n);
    KPTR("unpermute", w, n);
    KPTR("unpermute", out, n);
    const uint16_t *yb = y;
    uint16_t *ob = out;
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < hidden; h++) {
            float acc = 0.0f; /* float, in slot order: the CUDA kernel's sum */
            for (int j = 0; j < k; j++) {
                int32_t r = row_of[t * k + j];
                if (r >= 0)
                    acc += w[t * k + j] * epm_bf16_to_f32(yb[(int64_t)r * hidden + h]);
            }
            ob[t * hidden + h] = epm_f32_to_bf16(acc);
        }
    return EPM_OK;
}

static size_t ref_ffn_scratch(epm_kernels *kb, epm_dtype dt, int64_t rows, int hidden, int ffn)
{
    (void)kb, (void)dt, (void)rows, (void)hidden, (void)ffn;
    return 0; /* the reference allocates what it needs */
}

static float *bf16_block(const void *src, int64_t n)
{
    float *f = epm_malloc((size_t)(n ? n : 1) * sizeof *f);
    if (f && epm_ref_convert(src, EPM_DTYPE_BF16, n, EPM_DTYPE_F32, f) != EPM_OK) {
        epm_free(f);
        return NULL;
    }
    return f;
}

/* bf16: every expert's weights and rows widened to float32, the float32
 * reference, the output rounded once to bf16. */
static epm_status ref_ffn_bf16(const void *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const void *const *gate, const void *const *up, const void *const *down, void *y)
{
    epm_status st = EPM_OK;
    for (int e = 0; e < experts && st == EPM_OK; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m == 0)
            continue;
        KREQ(gate[e] && up[e] && down[e], "grouped_ffn: expert %d has %lld rows but no weights", e, (long long)m);
        int64_t wn = (int64_t)ffn * hidden;
        float *xf = bf16_block((const uint16_t *)x + offsets[e] * hidden, m * hidden);
        float *g = bf16_block(gate[e], wn), *u = bf16_block(up[e], wn), *d = bf16_block(down[e], wn);
        float *yf = epm_malloc((size_t)(m * hidden) * sizeof *yf);
        if (!xf || !g || !u || !d || !yf)
            st = epm_fail(EPM_ERR_NOMEM, "grouped_ffn: bf16 expert %d", e);
        if (st == EPM_OK)
            st = epm_ref_expert_ffn(xf, m, hidden, ffn, g, u, d, yf);
        if (st == EPM_OK)
            st = epm_ref_convert(yf, EPM_DTYPE_F32, m * hidden, EPM_DTYPE_BF16, (uint16_t *)y + offsets[e] * hidden);
        epm_free(xf), epm_free(g), epm_free(u), epm_free(d), epm_free(yf);
    }
    return st;
}

static epm_status ref_grouped_ffn(epm_kernels *kb, epm_dtype dt, const void *x, const int64_t *offsets, int experts,
                                  int hidden, int ffn, const void *const *gate, const void *const *up,
                                  const void *const *down, void *scratch, void *y)
{
    (void)kb, (void)scratch;
    EPM_CHECK(check_dtype("grouped_ffn", dt));
    if (dt == EPM_DTYPE_F32)
        return epm_ref_grouped_ffn(x, offsets, experts, hidden, ffn, (const float *const *)gate,
                                   (const float *const *)up, (const float *const *)down, y);
    EPM_CHECK(epm_ref_check_offsets("grouped_ffn", offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "grouped_ffn: hidden = %d, ffn = %d", hidden, ffn);
    KREQ(gate && up && down, "grouped_ffn: a weight pointer array is NULL");
    KPTR("grouped_ffn", x, offsets[experts]);
    KPTR("grouped_ffn", y, offsets[experts]);
    return ref_ffn_bf16(x, offsets, experts, hidden, ffn, gate, up, down, y);
}

static const epm_kernel_ops ref_table = {
    .alloc = host_alloc, .free = host_free, .upload = host_copy, .download = host_copy, .sync = host_sync,
    .convert = h_convert, .embed = h_embed, .linear = ref_linear, .rmsnorm = h_rmsnorm, .rope = h_rope,
    .attention = h_attention, .router = h_router, .route = h_route, .permute = h_permute,
    .unpermute = h_unpermute, .grouped_ffn_scratch = ref_ffn_scratch, .grouped_ffn = ref_grouped_ffn,
    .attention_bf16 = h_attention_bf16, .attention_fp8 = h_attention_fp8,
};

const epm_kernel_ops *epm_kernels_ref_ops(void) { return &ref_table; }

/* ---- the BLAS operations of "cpu" ---- */

static epm_status cpu_linear(epm_kernels *kb, const float *x, int64_t n, int in, const float *w, const float *b,
                             int out, float *y)
{
    (void)kb;
    return epm_cpu_linear(x, n, in, w, b, out, y);
}

/* bf16 rows move through float32 copies of one chunk at a time, ahead of
 * the bf16-weight kernel's own scratch */
static int64_t bf16_chunk(int64_t rows) { return rows < EPM_CPU_FFN_CHUNK ? rows : EPM_CPU_FFN_CHUNK; }

static size_t cpu_ffn_scratch(epm_kernels *kb, epm_dtype dt, int64_t rows, int hidden, int ffn)
{
    (void)kb;
    if (dt != EPM_DTYPE_BF16)
        return epm_cpu_ffn_scratch_bytes(rows, hidden, ffn);
    size_t f = (size_t)(2 * bf16_chunk(rows) * hidden) + epm_cpu_ffn_w16_scratch_floats(rows, hidden, ffn, 0);
    return f * sizeof(float);
}

/* bf16 in, weights and out: the weights stay bf16 (cpu_ffn_bf16.c), each
 * chunk of an expert's rows is widened, run, and rounded once to bf16 (as
 * the reference rounds its float32 result). */
static epm_status cpu_ffn_bf16(const uint16_t *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const uint16_t *const *gate, const uint16_t *const *up, const uint16_t *const *down,
                               float *scratch, uint16_t *y)
{
    EPM_CHECK(epm_cpu_ffn_check("cpu grouped_ffn", x, offsets, experts, hidden, ffn, (const void *const *)gate,
                                (const void *const *)up, (const void *const *)down, scratch, y));
    int64_t rows = offsets[experts];
    float *xf = scratch, *yf = xf + bf16_chunk(rows) * hidden, *rest = yf + bf16_chunk(rows) * hidden;
    for (int e = 0; e < experts; e++) {
        for (int64_t r0 = offsets[e]; r0 < offsets[e + 1]; r0 += EPM_CPU_FFN_CHUNK) {
            int64_t m = bf16_chunk(offsets[e + 1] - r0);
            const int64_t off[2] = {0, m};
            EPM_CHECK(epm_ref_convert(x + r0 * hidden, EPM_DTYPE_BF16, m * hidden, EPM_DTYPE_F32, xf));
            EPM_CHECK(epm_cpu_grouped_ffn_w16(xf, off, 1, hidden, ffn, gate + e, up + e, down + e, rest, yf));
            EPM_CHECK(epm_ref_convert(yf, EPM_DTYPE_F32, m * hidden, EPM_DTYPE_BF16, y + r0 * hidden));
        }
    }
    return EPM_OK;
}

static epm_status cpu_grouped_ffn(epm_kernels *kb, epm_dtype dt, const void *x, const int64_t *offsets, int experts,
                                  int hidden, int ffn, const void *const *gate, const void *const *up,
                                  const void *const *down, void *scratch, void *y)
{
    (void)kb;
    EPM_CHECK(check_dtype("cpu grouped_ffn", dt));
    if (dt == EPM_DTYPE_BF16)
        return cpu_ffn_bf16(x, offsets, experts, hidden, ffn, (const uint16_t *const *)gate,
                            (const uint16_t *const *)up, (const uint16_t *const *)down, scratch, y);
    return epm_cpu_grouped_ffn(x, offsets, experts, hidden, ffn, (const float *const *)gate,
                               (const float *const *)up, (const float *const *)down, scratch, y);
}

static const epm_kernel_ops cpu_table = {
    .alloc = host_alloc, .free = host_free, .upload = host_copy, .download = host_copy, .sync = host_sync,
    .convert = h_convert, .embed = h_embed, .linear = cpu_linear, .rmsnorm = h_rmsnorm, .rope = h_rope,
    .attention = cpu_attention, .router = h_router, .route = h_route, .permute = h_permute,
    .unpermute = h_unpermute, .grouped_ffn_scratch = cpu_ffn_scratch, .grouped_ffn = cpu_grouped_ffn,
    .attention_bf16 = cpu_attention_bf16, .attention_fp8 = cpu_attention_fp8,
};

const epm_kernel_ops *epm_kernels_cpu_ops(void) { return &cpu_table; }
