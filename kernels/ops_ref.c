/* The internal epm_ops table of the C reference and the unchecked helpers of
 * ops.h, both thin layers over the public epm_ref_* kernels (ref_dense.c,
 * ref_moe.c), so there is one reference implementation of each op. */
#include <math.h>
#include "epmoe/kernels.h"
#include "half.h"
#include "kcheck.h"
#include "ops.h"

static void ref_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    (void)epm_ref_linear(x, n, in, w, b, out, y);
}

static void ref_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    (void)epm_ref_rmsnorm(x, n, d, w, eps, y);
}

static void ref_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                       const float *down, float *scratch, float *y)
{
    (void)scratch;
    (void)epm_ref_expert_ffn(x, n, hidden, ffn, gate, up, down, y);
}

static void ref_grouped_swiglu(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y)
{
    (void)scratch;
    (void)epm_ref_grouped_ffn(x, offsets, experts, hidden, ffn, gate, up, down, y);
}

/* Each busy expert's weights widened (exactly) into float32 copies, then the
 * float32 reference on them: the oracle of the bf16-weight fast path. */
static epm_status ref_grouped_swiglu_w16(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                         const uint16_t *const *gate, const uint16_t *const *up,
                                         const uint16_t *const *down, float *scratch, float *y)
{
    (void)scratch;
    EPM_CHECK(epm_ref_check_offsets("ref grouped_ffn (bf16 weights)", offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "ref grouped_ffn (bf16 weights): hidden = %d, ffn = %d", hidden, ffn);
    int64_t n = (int64_t)hidden * ffn;
    float *w = epm_malloc(3 * (size_t)n * sizeof *w);
    if (!w)
        return epm_fail(EPM_ERR_NOMEM, "ref grouped_ffn (bf16 weights): %lld floats", (long long)(3 * n));
    epm_status st = EPM_OK;
    for (int e = 0; e < experts && st == EPM_OK; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m == 0)
            continue;
        if (!gate[e] || !up[e] || !down[e]) {
            st = epm_fail(EPM_ERR_INVALID_ARG, "ref grouped_ffn (bf16 weights): expert %d has %lld rows but no "
                          "weights", e, (long long)m);
            break;
        }
        st = epm_ref_convert(gate[e], EPM_DTYPE_BF16, n, EPM_DTYPE_F32, w);
        if (st == EPM_OK)
            st = epm_ref_convert(up[e], EPM_DTYPE_BF16, n, EPM_DTYPE_F32, w + n);
        if (st == EPM_OK)
            st = epm_ref_convert(down[e], EPM_DTYPE_BF16, n, EPM_DTYPE_F32, w + 2 * n);
        if (st == EPM_OK)
            st = epm_ref_expert_ffn(x + offsets[e] * hidden, m, hidden, ffn, w, w + n, w + 2 * n,
                                    y + offsets[e] * hidden);
    }
    epm_free(w);
    return st;
}

/* Row r of an FP8 weight of cols columns as the values it stands for, one
 * by one. */
static void ref_w8_row(const epm_w8 *w, int64_t r, int64_t cols, float *out)
{
    int64_t sc_cols = (cols + w->bc - 1) / w->bc;
    for (int64_t j = 0; j < cols; j++) {
        float v = epm_f8e4m3_to_f32(w->q[r * cols + j]) * w->scale[r / w->br * sc_cols + j / w->bc];
        out[j] = epm_bf16_to_f32(epm_f32_to_bf16(v));
    }
}

/* y[i][o] (ld ldy) = x[i] . w[o] (+ b[o]) for n rows of width in, in
 * double, each weight row dequantised once into row[in]: a dense FP8
 * matrix is never widened whole (DeepSeek-V3's o_proj would be 470 MB). */
static void ref_w8_rows(const float *x, int64_t n, int in, const epm_w8 *w, const float *b, int out, float *row,
                        float *y, int64_t ldy)
{
    for (int o = 0; o < out; o++) {
        ref_w8_row(w, o, in, row);
        for (int64_t i = 0; i < n; i++) {
            double sum = b ? b[o] : 0.0;
            for (int j = 0; j < in; j++)
                sum += (double)x[i * in + j] * row[j];
            y[i * ldy + o] = (float)sum;
        }
    }
}

static int w8_ok(const epm_w8 *w) { return w && w->q && w->scale && w->br >= 1 && w->bc >= 1; }

/* The FP8-weight FFN one weight row at a time, tokens in blocks of 32
 * (their gate and up outputs in g and u): the oracle of the FP8-weight fast
 * path. */
static epm_status ref_grouped_swiglu_w8(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                        const epm_w8 *gate, const epm_w8 *up, const epm_w8 *down, float *scratch,
                                        float *y)
{
    (void)scratch;
    enum { TB = 32 };
    static const char fn[] = "ref grouped_ffn (fp8 weights)";
    EPM_CHECK(epm_ref_check_offsets(fn, offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "%s: hidden = %d, ffn = %d", fn, hidden, ffn);
    KREQ(gate && up && down, "%s: a weight array is NULL", fn);
    for (int e = 0; e < experts; e++)
        KREQ(offsets[e + 1] == offsets[e] || (w8_ok(&gate[e]) && w8_ok(&up[e]) && w8_ok(&down[e])),
             "%s: expert %d has %lld rows but no weights or blocks", fn, e, (long long)(offsets[e + 1] - offsets[e]));
    size_t wide = (size_t)(hidden > ffn ? hidden : ffn), n = wide + 2 * (size_t)TB * (size_t)ffn;
    float *buf = epm_malloc(n * sizeof *buf);
    if (!buf)
        return epm_fail(EPM_ERR_NOMEM, "%s: allocation of %zu floats failed", fn, n);
    float *row = buf, *g = buf + wide, *u = g + (size_t)TB * ffn;
    for (int e = 0; e < experts; e++)
        for (int64_t t0 = offsets[e]; t0 < offsets[e + 1]; t0 += TB) {
            int64_t m = offsets[e + 1] - t0 < TB ? offsets[e + 1] - t0 : TB;
            ref_w8_rows(x + t0 * hidden, m, hidden, &gate[e], NULL, ffn, row, g, ffn);
            ref_w8_rows(x + t0 * hidden, m, hidden, &up[e], NULL, ffn, row, u, ffn);
            for (int64_t i = 0; i < m * ffn; i++)
                g[i] = epm_silu(g[i]) * u[i];
            ref_w8_rows(g, m, ffn, &down[e], NULL, hidden, row, y + t0 * hidden, hidden);
        }
    epm_free(buf);
    return EPM_OK;
}

/* epm_ref_linear's sums over the FP8 weight dequantised row by row. */
static epm_status ref_linear_w8(const float *x, int64_t n, int in, const epm_w8 *w, const float *b, int out,
                                float *y)
{
    static const char fn[] = "ref linear (fp8 weights)";
    KREQ(n >= 0 && in >= 1 && out >= 1, "%s: n = %lld, in = %d, out = %d", fn, (long long)n, in, out);
    KREQ(w8_ok(w), "%s: no weight or blocks", fn);
    KPTR(fn, x, n);
    KPTR(fn, y, n);
    float *row = epm_malloc((size_t)in * sizeof *row);
    if (!row)
        return epm_fail(EPM_ERR_NOMEM, "%s: allocation of %d floats failed", fn, in);
    ref_w8_rows(x, n, in, w, b, out, row, y, out);
    epm_free(row);
    return EPM_OK;
}

/* epm_ref_linear's sums over the weights widened (exactly) as they are read. */
static epm_status ref_linear_w16(const float *x, int64_t n, int in, const uint16_t *w, const float *b, int out,
                                 float *y)
{
    KREQ(n >= 0, "linear (bf16 weights): n = %lld", (long long)n);
    KREQ(in >= 1 && out >= 1, "linear (bf16 weights): in = %d, out = %d", in, out);
    KPTR("linear (bf16 weights)", x, n);
    KPTR("linear (bf16 weights)", w, 1);
    KPTR("linear (bf16 weights)", y, n);
    for (int64_t i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            const uint16_t *wr = w + (int64_t)o * in;
            double s = b ? b[o] : 0.0;
            for (int j = 0; j < in; j++)
                s += (double)x[i * in + j] * epm_bf16_to_f32(wr[j]);
            y[i * out + o] = (float)s;
        }
    return EPM_OK;
}

static const epm_ops ref_ops = {"ref", ref_linear, ref_rmsnorm, ref_swiglu, ref_grouped_swiglu,
                                ref_grouped_swiglu_w16, ref_linear_w16, epm_ref_attention,
                                ref_grouped_swiglu_w8, ref_linear_w8, epm_ref_attention_bf16,
                                epm_ref_attention_fp8};

const epm_ops *epm_ops_ref(void) { return &ref_ops; }

int64_t epm_busiest_rows(const int64_t *offsets, int experts)
{
    int64_t most = 0;
    for (int e = 0; e < experts; e++)
        most = offsets[e + 1] - offsets[e] > most ? offsets[e + 1] - offsets[e] : most;
    return most;
}

void epm_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    (void)epm_ref_rope(x, n, heads, hd, pos, theta);
}

void epm_rope_freqs(float *x, int64_t n, int heads, int hd, const int32_t *pos, const double *inv, double scale)
{
    int half = hd / 2;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            double a = (double)pos[i] * inv[j];
            float c = (float)(cos(a) * scale), s = (float)(sin(a) * scale);
            for (int h = 0; h < heads; h++) {
                float *v = x + (i * heads + h) * hd;
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * c - x2 * s;
                v[j + half] = x2 * c + x1 * s;
            }
        }
}

epm_status epm_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                         int kv_heads, int hd, float *out, float *probs, int64_t cache_len)
{
    return epm_ref_attention(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

void epm_softmax(float *x, int d) { (void)epm_ref_softmax(x, 1, d, x); }

epm_status epm_router(const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p, int renorm,
                      int32_t *ids, float *wts)
{
    epm_router_opts o = {.k = k, .score = sigmoid ? EPM_SCORE_SIGMOID : EPM_SCORE_SOFTMAX, .renorm = renorm,
                         .top_p = top_p};
    return epm_ref_router(logits, n, experts, &o, ids, wts);
}

epm_status epm_moe_route(const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets, int32_t *row_src,
                         int32_t *row_of)
{
    return epm_ref_route(ids, n, k, experts, offsets, row_src, row_of);
}

void epm_permute(const float *x, int hidden, const int32_t *row_src, int64_t rows, float *out)
{
    (void)epm_ref_permute(x, hidden, row_src, rows, out);
}

void epm_unpermute(const float *y, int hidden, const int32_t *row_of, const float *w, int64_t n, int k, float *out)
{
    (void)epm_ref_unpermute(y, hidden, row_of, w, n, k, out);
}
