/* The C reference of the dense kernels: plain loops, dot products in double.
 * This is the oracle the BLAS and CUDA kernels are checked against, so it
 * favours being obviously right over being fast. */
#include <math.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "half.h"
#include "kcheck.h"

static int is_float_type(epm_dtype t) { return t == EPM_DTYPE_F32 || t == EPM_DTYPE_BF16 || t == EPM_DTYPE_F16; }

static float load_as_f32(const void *src, epm_dtype t, int64_t i)
{
    if (t == EPM_DTYPE_F32)
        return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return t == EPM_DTYPE_BF16 ? epm_bf16_to_f32(h) : epm_f16_to_f32(h);
}

epm_status epm_ref_convert(const void *src, epm_dtype src_type, int64_t n, epm_dtype dst_type, void *dst)
{
    KREQ(is_float_type(src_type), "convert: src_type %d is not F32, BF16 or F16", (int)src_type);
    KREQ(is_float_type(dst_type), "convert: dst_type %d is not F32, BF16 or F16", (int)dst_type);
    KREQ(n >= 0, "convert: n = %lld", (long long)n);
    KPTR("convert", src, n);
    KPTR("convert", dst, n);
    /* element i is read before it is written and never overwrites an
     * element still to be read, as long as elements do not grow */
    KREQ(src != dst || epm_dtype_size(dst_type) <= epm_dtype_size(src_type),
         "convert: in place from %s to the wider %s", epm_dtype_name(src_type), epm_dtype_name(dst_type));
    for (int64_t i = 0; i < n; i++) {
        float f = load_as_f32(src, src_type, i);
        if (dst_type == EPM_DTYPE_F32)
            ((float *)dst)[i] = f;
        else
            ((uint16_t *)dst)[i] = dst_type == EPM_DTYPE_BF16 ? epm_f32_to_bf16(f) : epm_f32_to_f16(f);
    }
    return EPM_OK;
}

epm_status epm_ref_silu(const float *x, int64_t n, float *y)
{
    KREQ(n >= 0, "silu: n = %lld", (long long)n);
    KPTR("silu", x, n);
    KPTR("silu", y, n);
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)((double)x[i] / (1.0 + exp(-(double)x[i])));
    return EPM_OK;
}

epm_status epm_ref_sigmoid(const float *x, int64_t n, float *y)
{
    KREQ(n >= 0, "sigmoid: n = %lld", (long long)n);
    KPTR("sigmoid", x, n);
    KPTR("sigmoid", y, n);
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(1.0 / (1.0 + exp(-(double)x[i])));
    return EPM_OK;
}

epm_status epm_ref_softmax(const float *x, int64_t rows, int d, float *y)
{
    KREQ(rows >= 0, "softmax: rows = %lld", (long long)rows);
    KREQ(d >= 1, "softmax: d = %d", d);
    KPTR("softmax", x, rows);
    KPTR("softmax", y, rows);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        double m = xr[0], s = 0;
        for (int j = 1; j < d; j++)
            m = xr[j] > m ? xr[j] : m;
        for (int j = 0; j < d; j++)
            s += exp((double)xr[j] - m);
        for (int j = 0; j < d; j++)
            yr[j] = (float)(exp((double)xr[j] - m) / s);
    }
    return EPM_OK;
}

epm_status epm_ref_embed(const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n, float *out)
{
    KREQ(vocab >= 1, "embed: vocab = %lld", (long long)vocab);
    KREQ(d >= 1, "embed: d = %d", d);
    KREQ(n >= 0, "embed: n = %lld", (long long)n);
    KPTR("embed", table, 1);
    KPTR("embed", ids, n);
    KPTR("embed", out, n);
    for (int64_t i = 0; i < n; i++) {
        KREQ(ids[i] >= 0 && ids[i] < vocab, "embed: ids[%lld] = %d is outside [0, %lld)", (long long)i, ids[i],
             (long long)vocab);
        memcpy(out + i * d, table + (int64_t)ids[i] * d, (size_t)d * sizeof *out);
    }
    return EPM_OK;
}

static void linear_loop(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * in;
        for (int o = 0; o < out; o++) {
            const float *wr = w + (int64_t)o * in;
            double s = b ? b[o] : 0.0;
            for (int j = 0; j < in; j++)
                s += (double)xr[j] * wr[j];
            y[i * out + o] = (float)s;
        }
    }
}

epm_status epm_ref_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    KREQ(n >= 0, "linear: n = %lld", (long long)n);
    KREQ(in >= 1, "linear: in = %d", in);
    KREQ(out >= 1, "linear: out = %d", out);
    KPTR("linear", x, n);
    KPTR("linear", w, 1);
    KPTR("linear", y, n);
    linear_loop(x, n, in, w, b, out, y);
    return EPM_OK;
}

epm_status epm_ref_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    KREQ(n >= 0, "rmsnorm: n = %lld", (long long)n);
    KREQ(d >= 1, "rmsnorm: d = %d", d);
    KREQ(eps >= 0 && isfinite(eps), "rmsnorm: eps = %g", (double)eps);
    KPTR("rmsnorm", x, n);
    KPTR("rmsnorm", w, 1);
    KPTR("rmsnorm", y, n);
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++)
            ss += (double)x[i * d + j] * x[i * d + j];
        /* Hugging Face rounds the inverse rms to float before the product */
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        for (int j = 0; j < d; j++)
            y[i * d + j] = w[j] * (x[i * d + j] * inv);
    }
    return EPM_OK;
}

epm_status epm_ref_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    KREQ(n >= 0, "rope: n = %lld", (long long)n);
    KREQ(heads >= 1, "rope: heads = %d", heads);
    KREQ(hd >= 2 && hd % 2 == 0, "rope: head_dim = %d (must be even)", hd);
    KREQ(theta > 1 && isfinite(theta), "rope: theta = %g", theta);
    KPTR("rope", x, n);
    KPTR("rope", pos, n);
    int half = hd / 2;
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < half; j++) {
            double a = (double)pos[i] * pow(theta, -2.0 * j / hd);
            float c = (float)cos(a), s = (float)sin(a);
            for (int h = 0; h < heads; h++) {
                float *v = x + (i * heads + h) * hd;
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * c - x2 * s;
                v[j + half] = x2 * c + x1 * s;
            }
        }
    }
    return EPM_OK;
}

epm_status epm_attention_check(const char *fn, const float *q, int64_t n, const int32_t *pos, const void *kc,
                               const void *vc, int64_t cache_len, int heads, int kv_heads, int hd,
                               const float *out)
{
    KREQ(n >= 0, "%s: n = %lld", fn, (long long)n);
    KREQ(cache_len >= 1, "%s: cache_len = %lld", fn, (long long)cache_len);
    KREQ(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0,
         "%s: heads = %d, kv_heads = %d (heads must be a multiple)", fn, heads, kv_heads);
    KREQ(hd >= 1, "%s: head_dim = %d", fn, hd);
    KPTR(fn, q, n);
    KPTR(fn, pos, n);
    KPTR(fn, kc, 1);
    KPTR(fn, vc, 1);
    KPTR(fn, out, n);
    for (int64_t i = 0; i < n; i++)
        KREQ(pos[i] >= 0 && pos[i] < cache_len, "%s: pos[%lld] = %d is outside [0, cache_len = %lld)", fn,
             (long long)i, pos[i], (long long)cache_len);
    return EPM_OK;
}

/* The cache's element types: float32, bf16 bit patterns, or e4m3 codes
 * times a float32 scale per cached head row. */
enum { KV_F32, KV_BF16, KV_FP8 };

/* Element i of a cache row array, exactly as it stands for: bf16 widened;
 * an e4m3 code times its head row's scale sc[i / hd] (the float32 product,
 * so that the oracle over that cache is the float32 one over those values). */
static inline double kv_at(const void *c, int64_t i, int kind, const float *sc, int hd)
{
    switch (kind) {
    case KV_BF16: return (double)epm_bf16_to_f32(((const uint16_t *)c)[i]);
    case KV_FP8: return (double)(epm_f8e4m3_to_f32(((const uint8_t *)c)[i]) * sc[i / hd]);
    default: return (double)((const float *)c)[i];
    }
}

/* The one body of every cache's reference: the bf16 and fp8 oracles are the
 * float32 one's arithmetic on the values they stand for, read where they
 * lie (no copy, so no allocation in the layer loop either way). */
static epm_status ref_attention(const char *fn, const float *q, int64_t n, const int32_t *pos, const void *kc,
                                const float *ks, const void *vc, const float *vs, int kind, int64_t cache_len,
                                int heads, int kv_heads, int hd, float *out, float *probs)
{
    EPM_CHECK(epm_attention_check(fn, q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out));
    if (kind == KV_FP8) {
        KPTR(fn, ks, 1);
        KPTR(fn, vs, 1);
    }
    double small[512]; /* every head_dim the runtime accepts: no allocation in the layer loop */
    double *acc = hd <= 512 ? small : epm_malloc((size_t)hd * sizeof *acc);
    if (!acc)
        return epm_fail(EPM_ERR_NOMEM, "attention: allocation of a %d-wide accumulator failed", hd);
    int group = heads / kv_heads;
    double scale = 1.0 / sqrt((double)hd);
    for (int64_t i = 0; i < n; i++) {
        int64_t len = (int64_t)pos[i] + 1;
        for (int h = 0; h < heads; h++) {
            const float *qv = q + (i * heads + h) * hd;
            int kh = h / group;
            float *p = probs ? probs + ((int64_t)h * n + i) * cache_len : NULL;
            /* two passes (max, then weights) so the oracle needs no score buffer */
            double m = -INFINITY;
            for (int64_t t = 0; t < len; t++) {
                int64_t kv = (t * kv_heads + kh) * hd;
                double s = 0;
                for (int j = 0; j < hd; j++)
                    s += (double)qv[j] * kv_at(kc, kv + j, kind, ks, hd);
                m = s * scale > m ? s * scale : m;
            }
            double z = 0;
            memset(acc, 0, (size_t)hd * sizeof *acc);
            for (int64_t t = 0; t < len; t++) {
                int64_t kv = (t * kv_heads + kh) * hd;
                double s = 0;
                for (int j = 0; j < hd; j++)
                    s += (double)qv[j] * kv_at(kc, kv + j, kind, ks, hd);
                double wt = exp(s * scale - m);
                z += wt;
                for (int j = 0; j < hd; j++)
                    acc[j] += wt * kv_at(vc, kv + j, kind, vs, hd);
                if (p)
                    p[t] = (float)wt;
            }
            float *o = out + (i * heads + h) * hd;
            for (int j = 0; j < hd; j++)
                o[j] = (float)(acc[j] / z);
            if (p) {
                for (int64_t t = 0; t < len; t++)
                    p[t] = (float)(p[t] / z);
                for (int64_t t = len; t < cache_len; t++)
                    p[t] = 0.0f;
            }
        }
    }
    if (acc != small)
        epm_free(acc);
    return EPM_OK;
}

epm_status epm_ref_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc,
                             int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs)
{
    return ref_attention("attention", q, n, pos, kc, NULL, vc, NULL, KV_F32, cache_len, heads, kv_heads, hd, out, probs);
}

epm_status epm_ref_attention_bf16(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                  const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                  float *probs)
{
    return ref_attention("attention (bf16 cache)", q, n, pos, kc, NULL, vc, NULL, KV_BF16, cache_len, heads,
                         kv_heads, hd, out, probs);
}

epm_status epm_ref_attention_fp8(const float *q, int64_t n, const int32_t *pos, const uint8_t *kc, const float *ks,
                                 const uint8_t *vc, const float *vs, int64_t cache_len, int heads, int kv_heads,
                                 int hd, float *out, float *probs)
{
    return ref_attention("attention (fp8 cache)", q, n, pos, kc, ks, vc, vs, KV_FP8, cache_len, heads, kv_heads, hd,
                         out, probs);
}
