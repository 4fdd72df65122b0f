/* Causal grouped-query attention on the CPU, over a float32 or a bf16 K/V
 * cache (half the bytes to stream in decoding; widened as read, float32
 * arithmetic either way). Why not the
 * reference: it is the oracle, in double with two passes over the keys and
 * one thread, and decoding at long contexts spends its time here (2048
 * positions, 16 heads of 128: about 8M double multiply-adds per token and
 * layer). Here each query row's positions are cut into ranges of RANGE, the
 * (row, range) pieces split over OpenMP's threads (the cut and the merge
 * order do not depend on the thread count: the same bits on 1 thread or
 * 64, as the runtime's ranks need), and each piece walks its
 * positions in order, every head at each position: a cache row holds all KV
 * heads side by side, so the caches stream from memory once, in order (one
 * kv head at a time would stride 4 KB between positions, a page per row: a
 * third of the speed at 8192 positions). Under GQA each cached vector is
 * loaded (and, from a bf16 cache, widened) once for its group of query
 * heads, and the values' products go into each output vector four
 * positions at a time, where a head at a time made the group read the row
 * and store its output once per head and position (Mixtral's heads: 1.2-1.5x,
 * bench attention). Scores go block by block through
 * an online softmax (running max, sum and unnormalised output per head,
 * rescaled when the max grows); the pieces of a row are merged at the end,
 * as flash-decoding does. The sums are float32 in vectors of 8 (the
 * reference's double sums differ by float rounding: the tests' 1e-5). With
 * probs wanted (A-MoD's scores) a second pass writes them, over (row, kv
 * head) pieces that keep every score; the output is the first pass's either
 * way, so that MoD at capacity 1 is the same bits as no MoD. */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "cpu_omp.h"
#include "half.h"
#include "kcheck.h"
#include "cpu_vec.h" /* last: its settings hold for the rest of the file */


enum { PAR_MIN_WORK = 1 << 15 }; /* multiply-adds below which one thread does it all */

typedef epm_vf8 v8;

static inline __attribute__((always_inline)) v8 ld8(const float *p)
{
    v8 f;
    memcpy(&f, p, sizeof f);
    return f;
}

#define AI __attribute__((always_inline))

/* o[j] += w * v[j] (the merge of a row's pieces) */
static inline AI void axpy(float *o, float w, const float *v, int d)
{
    int j = 0;
    for (; j + 8 <= d; j += 8) {
        v8 x = ld8(o + j) + w * ld8(v + j);
        memcpy(o + j, &x, sizeof x);
    }
    for (; j < d; j++)
        o[j] += w * v[j];
}

/* 8 cached values from element i on: float32, or bf16 widened in registers
 * (w16, a constant wherever these are inlined: each kernel below comes in
 * two branch-free copies, one per cache dtype) */
static inline AI v8 kv8(const void *c, int64_t i, int w16)
{
    return w16 ? epm_bf16x8((const uint16_t *)c + i) : ld8((const float *)c + i);
}

static inline AI float kv1(const void *c, int64_t i, int w16)
{
    return w16 ? epm_bf16_to_f32(((const uint16_t *)c)[i]) : ((const float *)c)[i];
}

/* The scores of N query heads q [N][hd] (N a constant, 1..4) against the
 * cached row at element k0, times scale, into out[g * ostride]: each cached
 * vector is loaded (and widened) once for the N heads of a GQA group, and
 * each head adds in a plain dot product's order (two sums of alternate
 * vectors, then the tail), whatever N and the cache dtype. */
static inline AI void dots_n(const float *q, int N, int hd, const void *c, int64_t k0, int w16, float scale,
                             float *out, int64_t ostride)
{
    v8 s0[4], s1[4];
    _Pragma("GCC unroll 4") for (int g = 0; g < N; g++)
        s0[g] = s1[g] = (v8){0};
    int j = 0;
    for (; j + 16 <= hd; j += 16) {
        v8 a = kv8(c, k0 + j, w16), b = kv8(c, k0 + j + 8, w16);
        _Pragma("GCC unroll 4") for (int g = 0; g < N; g++) {
            s0[g] += ld8(q + g * hd + j) * a;
            s1[g] += ld8(q + g * hd + j + 8) * b;
        }
    }
    for (; j + 8 <= hd; j += 8) {
        v8 a = kv8(c, k0 + j, w16);
        _Pragma("GCC unroll 4") for (int g = 0; g < N; g++)
            s0[g] += ld8(q + g * hd + j) * a;
    }
    _Pragma("GCC unroll 4") for (int g = 0; g < N; g++) {
        v8 s = s0[g] + s1[g];
        float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
        for (int t = j; t < hd; t++) /* fmaf: GCC contracted these tails in one dtype's copy only */
            r = fmaf(q[g * hd + t], kv1(c, k0 + t, w16), r);
        out[g * ostride] = r * scale;
    }
}

/* dots_n over a group of n heads, four at a time */
static inline AI void dots(const float *q, int n, int hd, const void *c, int64_t k0, int w16, float scale,
                           float *out, int64_t ostride)
{
    int g = 0;
    for (; g + 4 <= n; g += 4)
        dots_n(q + (int64_t)g * hd, 4, hd, c, k0, w16, scale, out + g * ostride, ostride);
    switch (n - g) {
    case 3: dots_n(q + (int64_t)g * hd, 3, hd, c, k0, w16, scale, out + g * ostride, ostride); break;
    case 2: dots_n(q + (int64_t)g * hd, 2, hd, c, k0, w16, scale, out + g * ostride, ostride); break;
    case 1: dots_n(q + (int64_t)g * hd, 1, hd, c, k0, w16, scale, out + g * ostride, ostride); break;
    default: break;
    }
}

/* o[g][hd] += sum over positions t < T (T a constant, 1 or 4) of
 * p[g * pstride + t] x the cached row at element v0 + t * ld, for the n
 * heads of a GQA group: each cached vector is loaded (and widened) once for
 * the group, each output vector loaded and stored once per T positions, and
 * the products added in position order (a per-position o += p v's bits). */
static inline AI void axpys(float *o, int n, int hd, const float *p, int64_t pstride, const void *c, int64_t v0,
                            int64_t ld, int T, int w16)
{
    int d = 0;
    for (; d + 8 <= hd; d += 8) {
        v8 v[4];
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)
            v[t] = kv8(c, v0 + t * ld + d, w16);
        for (int g = 0; g < n; g++) {
            const float *pg = p + g * pstride;
            v8 x = ld8(o + (int64_t)g * hd + d);
            _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)
                x += pg[t] * v[t];
            memcpy(o + (int64_t)g * hd + d, &x, sizeof x);
        }
    }
    for (; d < hd; d++)
        for (int g = 0; g < n; g++) {
            const float *pg = p + g * pstride;
            float x = o[(int64_t)g * hd + d];
            _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)
                x = fmaf(pg[t], kv1(c, v0 + t * ld + d, w16), x);
            o[(int64_t)g * hd + d] = x;
        }
}

/* o[d] += w x the cached row at element v0 (one head per cached row: w
 * stays in a register, where axpys would read it for every vector) */
static inline AI void axpy1(float *o, float w, const void *c, int64_t v0, int hd, int w16)
{
    int d = 0;
    for (; d + 8 <= hd; d += 8) {
        v8 x = ld8(o + d) + w * kv8(c, v0 + d, w16);
        memcpy(o + d, &x, sizeof x);
    }
    for (; d < hd; d++)
        o[d] = fmaf(w, kv1(c, v0 + d, w16), o[d]);
}

static inline AI void kv_head_probs(const float *q, int group, int hd, const void *kc, int w16, int kv_heads, int kh,
                                    int64_t len, float scale, float *sc, float *p0, int64_t pstride,
                                    int64_t cache_len)
{
    for (int64_t t = 0; t < len; t++)
        dots(q, group, hd, kc, (t * kv_heads + kh) * hd, w16, scale, sc + t, len);
    for (int g = 0; g < group; g++) {
        float *s = sc + g * len, *p = p0 + g * pstride, m = -INFINITY, z = 0;
        for (int64_t t = 0; t < len; t++)
            m = s[t] > m ? s[t] : m;
        for (int64_t t = 0; t < len; t++)
            z += s[t] = expf(s[t] - m);
        for (int64_t t = 0; t < len; t++)
            p[t] = s[t] / z;
        memset(p + len, 0, (size_t)(cache_len - len) * sizeof *p);
    }
}

enum {
    BLOCK = 128, /* positions per step of the online softmax */
    RANGE = 256  /* positions per piece: fixed, so that no result depends on the thread count */
};

/* Positions [t0, t1) of one query row q [heads][hd] for every head: the
 * running max m[h], sum z[h] and output o[h][hd] (scaled by exp(-m[h]));
 * sc holds heads x BLOCK floats. An empty range leaves m = -inf, z = 0. */
static inline AI void piece(const float *q, int heads, int group, int hd, const void *kc, const void *vc, int w16,
                            int kv_heads, int64_t t0, int64_t t1, float scale, float *sc, float *m, float *z, float *o)
{
    const int64_t ld = (int64_t)kv_heads * hd;
    for (int h = 0; h < heads; h++)
        m[h] = -INFINITY, z[h] = 0;
    memset(o, 0, (size_t)heads * (size_t)hd * sizeof *o);
    for (int64_t b0 = t0; b0 < t1; b0 += BLOCK) {
        int nb = t1 - b0 < BLOCK ? (int)(t1 - b0) : BLOCK;
        for (int j = 0; j < nb; j++)
            for (int kh = 0; kh < kv_heads; kh++)
                dots(q + (int64_t)kh * group * hd, group, hd, kc, (b0 + j) * ld + (int64_t)kh * hd, w16, scale,
                     sc + kh * group * BLOCK + j, BLOCK);
        for (int h = 0; h < heads; h++) {
            float *s = sc + h * BLOCK, bm = m[h];
            for (int j = 0; j < nb; j++)
                bm = s[j] > bm ? s[j] : bm;
            if (bm > m[h] && m[h] > -INFINITY) { /* the max grew: what came before shrinks by its factor */
                float f = expf(m[h] - bm);
                z[h] *= f;
                for (int d = 0; d < hd; d++)
                    o[(int64_t)h * hd + d] *= f;
            }
            m[h] = bm;
            for (int j = 0; j < nb; j++)
                z[h] += s[j] = expf(s[j] - bm);
        }
        int j = 0;
        if (group == 1) { /* axpys' way costs OLMoE's heads 0.7-0.85x */
            for (; j < nb; j++)
                for (int h = 0; h < heads; h++)
                    axpy1(o + (int64_t)h * hd, sc[h * BLOCK + j], vc, (b0 + j) * ld + (int64_t)h * hd, hd, w16);
            continue;
        }
        for (; j + 4 <= nb; j += 4)
            for (int kh = 0; kh < kv_heads; kh++)
                axpys(o + (int64_t)kh * group * hd, group, hd, sc + kh * group * BLOCK + j, BLOCK, vc,
                      (b0 + j) * ld + (int64_t)kh * hd, ld, 4, w16);
        for (; j < nb; j++)
            for (int kh = 0; kh < kv_heads; kh++)
                axpys(o + (int64_t)kh * group * hd, group, hd, sc + kh * group * BLOCK + j, BLOCK, vc,
                      (b0 + j) * ld + (int64_t)kh * hd, ld, 1, w16);
    }
}

EPM_CLONES static void piece_f32(const float *q, int heads, int group, int hd, const void *kc, const void *vc,
                                 int kv_heads, int64_t t0, int64_t t1, float scale, float *sc, float *m, float *z,
                                 float *o)
{
    piece(q, heads, group, hd, kc, vc, 0, kv_heads, t0, t1, scale, sc, m, z, o);
}

EPM_CLONES static void piece_bf16(const float *q, int heads, int group, int hd, const void *kc, const void *vc,
                                  int kv_heads, int64_t t0, int64_t t1, float scale, float *sc, float *m, float *z,
                                  float *o)
{
    piece(q, heads, group, hd, kc, vc, 1, kv_heads, t0, t1, scale, sc, m, z, o);
}

EPM_CLONES static void kv_head_probs_f32(const float *q, int group, int hd, const void *kc, int kv_heads, int kh,
                                         int64_t len, float scale, float *sc, float *p0, int64_t pstride,
                                         int64_t cache_len)
{
    kv_head_probs(q, group, hd, kc, 0, kv_heads, kh, len, scale, sc, p0, pstride, cache_len);
}

EPM_CLONES static void kv_head_probs_bf16(const float *q, int group, int hd, const void *kc, int kv_heads, int kh,
                                          int64_t len, float scale, float *sc, float *p0, int64_t pstride,
                                          int64_t cache_len)
{
    kv_head_probs(q, group, hd, kc, 1, kv_heads, kh, len, scale, sc, p0, pstride, cache_len);
}

/* Without probs: (row, range) pieces, then each row's pieces merged. */
static epm_status by_ranges(const float *q, int64_t n, const int32_t *pos, const void *kc, const void *vc,
                            int w16, int heads, int kv_heads, int hd, float *out, int nt, float scale)
{
    const int group = heads / kv_heads;
    /* C ranges per row, for the longest row (a shorter one leaves some empty) */
    int64_t longest = 1;
    for (int64_t i = 0; i < n; i++)
        longest = (int64_t)pos[i] + 1 > longest ? (int64_t)pos[i] + 1 : longest;
    const int64_t C = (longest + RANGE - 1) / RANGE, pieces = n * C;
    const int64_t pw = (int64_t)heads * (hd + 2); /* one piece's m, z and o */
    float *buf = epm_malloc(((size_t)pieces * (size_t)pw + (size_t)nt * heads * BLOCK) * sizeof *buf);
    if (!buf)
        return epm_fail(EPM_ERR_NOMEM, "cpu attention: allocation of %lld pieces of %lld floats failed",
                        (long long)pieces, (long long)pw);
    float *part = buf, *scr = buf + pieces * pw;
EPM_OMP("omp parallel num_threads(nt)")
    {
        int me = epm_omp_me();
        int64_t c0, c1;
        epm_omp_share(pieces, 1, &c0, &c1);
        for (int64_t k = c0; k < c1; k++) {
            int64_t i = k / C, c = k % C, len = (int64_t)pos[i] + 1;
            int64_t t0 = c * RANGE < len ? c * RANGE : len, t1 = (c + 1) * RANGE < len ? (c + 1) * RANGE : len;
            float *pp = part + k * pw;
            (w16 ? piece_bf16 : piece_f32)(q + i * heads * hd, heads, group, hd, kc, vc, kv_heads, t0, t1, scale,
                                           scr + (int64_t)me * heads * BLOCK, pp, pp + heads, pp + 2 * heads);
        }
EPM_OMP("omp barrier")
        epm_omp_share(n * heads, 1, &c0, &c1);
        for (int64_t k = c0; k < c1; k++) {
            int64_t i = k / heads;
            int h = (int)(k % heads);
            float M = -INFINITY, Z = 0, *o = out + (i * heads + h) * hd;
            for (int64_t c = 0; c < C; c++)
                M = part[(i * C + c) * pw + h] > M ? part[(i * C + c) * pw + h] : M;
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int64_t c = 0; c < C; c++) {
                const float *pp = part + (i * C + c) * pw;
                if (pp[heads + h] == 0)
                    continue; /* an empty range */
                float f = expf(pp[h] - M);
                Z += f * pp[heads + h];
                axpy(o, f, pp + 2 * heads + (int64_t)h * hd, hd);
            }
            for (int d = 0; d < hd; d++)
                o[d] /= Z;
        }
    }
    epm_free(buf);
    return EPM_OK;
}

static epm_status cpu_attention(const char *fn, const float *q, int64_t n, const int32_t *pos, const void *kc,
                                const void *vc, int w16, int64_t cache_len, int heads, int kv_heads, int hd,
                                float *out, float *probs)
{
    EPM_CHECK(epm_attention_check(fn, q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out));
    int64_t work = 0;
    for (int64_t i = 0; i < n; i++)
        work += 2 * ((int64_t)pos[i] + 1) * heads * hd;
    if (n == 0)
        return EPM_OK;
    const int group = heads / kv_heads, nt = epm_omp_threads_for(work, PAR_MIN_WORK);
    const float scale = (float)(1.0 / sqrt((double)hd));
    /* the output always comes the one way, so that asking for probs changes no bit of it */
    EPM_CHECK(by_ranges(q, n, pos, kc, vc, w16, heads, kv_heads, hd, out, nt, scale));
    if (!probs)
        return EPM_OK;
    const int64_t per = (int64_t)group * cache_len; /* one thread's scores */
    float *sc = epm_malloc((size_t)nt * (size_t)per * sizeof *sc);
    if (!sc)
        return epm_fail(EPM_ERR_NOMEM, "cpu attention: allocation of %d x %lld floats of scores failed", nt,
                        (long long)per);
    const int64_t items = n * kv_heads;
EPM_OMP("omp parallel num_threads(nt)")
    {
        int me = epm_omp_me();
        int64_t c0, c1;
        epm_omp_share(items, 1, &c0, &c1);
        for (int64_t it = c0; it < c1; it++) {
            int64_t i = it / kv_heads;
            int kh = (int)(it % kv_heads), h0 = kh * group;
            (w16 ? kv_head_probs_bf16 : kv_head_probs_f32)(q + (i * heads + h0) * hd, group, hd, kc, kv_heads, kh,
                                                           (int64_t)pos[i] + 1, scale, sc + (int64_t)me * per,
                                                           probs + ((int64_t)h0 * n + i) * cache_len, n * cache_len,
                                                           cache_len);
        }
    }
    epm_free(sc);
    return EPM_OK;
}

epm_status epm_cpu_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc,
                             int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs)
{
    return cpu_attention("cpu attention", q, n, pos, kc, vc, 0, cache_len, heads, kv_heads, hd, out, probs);
}

epm_status epm_cpu_attention_bf16(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                  const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                  float *probs)
{
    return cpu_attention("cpu attention (bf16 cache)", q, n, pos, kc, vc, 1, cache_len, heads, kv_heads, hd, out,
                         probs);
}
