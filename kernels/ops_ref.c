/* The C reference kernels: plain loops in double where it matters, the
 * oracle every fast path is checked against. */
#include <math.h>
#include <string.h>

#include "ops.h"

static void ref_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
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

static void ref_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++)
            ss += (double)x[i * d + j] * x[i * d + j];
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        for (int j = 0; j < d; j++)
            y[i * d + j] = w[j] * (x[i * d + j] * inv);
    }
}

static void ref_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                       const float *down, float *scratch, float *y)
{
    float *g = scratch, *u = scratch + n * ffn;
    ref_linear(x, n, hidden, gate, NULL, ffn, g);
    ref_linear(x, n, hidden, up, NULL, ffn, u);
    for (int64_t i = 0; i < n * ffn; i++)
        g[i] = epm_silu(g[i]) * u[i];
    ref_linear(g, n, ffn, down, NULL, hidden, y);
}

static const epm_ops ref_ops = {"ref", ref_linear, ref_rmsnorm, ref_swiglu};

const epm_ops *epm_ops_ref(void) { return &ref_ops; }

void epm_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    int half = hd / 2;
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < half; j++) {
            double freq = pow(theta, -2.0 * j / hd);
            double a = (double)pos[i] * freq;
            float c = (float)cos(a), s = (float)sin(a);
            for (int h = 0; h < heads; h++) {
                float *v = x + (i * heads + h) * hd;
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * c - x2 * s;
                v[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

void epm_softmax(float *x, int d)
{
    float m = x[0];
    for (int j = 1; j < d; j++)
        m = x[j] > m ? x[j] : m;
    double s = 0;
    for (int j = 0; j < d; j++) {
        x[j] = expf(x[j] - m);
        s += x[j];
    }
    for (int j = 0; j < d; j++)
        x[j] = (float)(x[j] / s);
}

void epm_topk(const float *scores, int d, int k, int32_t *ids, float *vals)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < d; e++) {
            int taken = 0;
            for (int q = 0; q < j; q++)
                taken |= ids[q] == e;
            if (!taken && (best < 0 || scores[e] > scores[best]))
                best = e;
        }
        ids[j] = best;
        vals[j] = best >= 0 ? scores[best] : 0.0f;
    }
}

void epm_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                   int kv_heads, int hd, float *out, float *probs, int64_t cache_len)
{
    int group = heads / kv_heads;
    double scale = 1.0 / sqrt((double)hd);
    for (int64_t i = 0; i < n; i++) {
        int64_t len = (int64_t)pos[i] + 1;
        for (int h = 0; h < heads; h++) {
            const float *qv = q + (i * heads + h) * hd;
            int kh = h / group;
            float *p = probs ? probs + ((int64_t)h * n + i) * cache_len : NULL;
            /* scores in a small stack buffer per chunk would complicate the
             * oracle; two passes over the cache keep it allocation-free */
            double m = -INFINITY;
            for (int64_t t = 0; t < len; t++) {
                const float *kv = kc + (t * kv_heads + kh) * hd;
                double s = 0;
                for (int j = 0; j < hd; j++)
                    s += (double)qv[j] * kv[j];
                s *= scale;
                m = s > m ? s : m;
            }
            double z = 0;
            float *o = out + (i * heads + h) * hd;
            double acc[512];
            int chunk = hd < 512 ? hd : 512;
            memset(acc, 0, sizeof acc);
            for (int64_t t = 0; t < len; t++) {
                const float *kv = kc + (t * kv_heads + kh) * hd;
                double s = 0;
                for (int j = 0; j < hd; j++)
                    s += (double)qv[j] * kv[j];
                double w = exp(s * scale - m);
                z += w;
                const float *vv = vc + (t * kv_heads + kh) * hd;
                for (int j = 0; j < chunk; j++)
                    acc[j] += w * vv[j];
                if (p)
                    p[t] = (float)w;
            }
            for (int j = 0; j < chunk; j++)
                o[j] = (float)(acc[j] / z);
            if (p) {
                for (int64_t t = 0; t < len; t++)
                    p[t] = (float)(p[t] / z);
                for (int64_t t = len; t < cache_len; t++)
                    p[t] = 0.0f;
            }
        }
    }
}
