/* The checkasm-style harness (dav1d's idea) over the public kernel table:
 * every operation of a backend is called beside the "ref" backend on the
 * same random and adversarial inputs, in the backend's own memory (upload,
 * op, download), and compared within a tolerance stated per op and dtype.
 * Included by tests/unit/test_kernels_cpu.c (backend "cpu") and
 * tests/gpu/test_kernels_cuda.c (backend "cuda"), so both run the same
 * shapes.
 *
 * Tolerances, max |fast - ref| <= tol * (max |ref| + 1) over an output:
 *  - float32, 1e-5. The reference sums in double; a BLAS or cuBLAS sums the
 *    float32 products in another order, blocked and with FMA, each rounding
 *    at most 2^-24 relative. With inputs in [-1, 1] and sums of up to ~1000
 *    terms the error seen is ~1e-6 of the largest output, while a real
 *    mistake (a dropped term, a wrong row, silu on the wrong operand, a
 *    missing bias) moves outputs by 1e-2 or more. The "+ 1" spares outputs
 *    near zero a relative accuracy they cannot have.
 *  - bfloat16 grouped FFN and unpermute, 1e-2: both sides start from the
 *    same bf16 inputs; the fast path may round silu(g) * u to bf16 before the
 *    down GEMM (2^-9 relative per element, about 0.2% of the output's scale
 *    after the sum) and rounds the output once (0.2%); 1e-2 leaves a 2-3x
 *    margin and a wrong expert or row still misses it by far.
 *  - router ids, routing maps and offsets, permute, embed, conversions:
 *    exact. Router weights: 1e-6 (float32 softmax vs the double reference).
 * Outputs are pre-filled with NaN (so an element never written fails) and
 * followed by a guard that must survive. */
#ifndef EPM_KERNELS_CHECK_H
#define EPM_KERNELS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "epmoe/kernels.h"
#include "half.h"

#define KC_F32_TOL 1e-5
#define KC_BF16_TOL 1e-2
#define KC_GUARD 64 /* bytes */

typedef struct kc_ctx {
    epm_kernels *fast, *ref;
    const epm_kernel_ops *F, *R;
    uint64_t seed;
} kc_ctx;

static float *kc_rnd(size_t n, uint64_t *s)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(2 * epm_rand_unit(s) - 1);
    return v;
}

/* host -> backend memory (with a guard after it), and back */
static void *kc_up(epm_kernels *kb, const void *h, size_t bytes)
{
    const epm_kernel_ops *o = epm_kernels_ops(kb);
    void *d = NULL;
    assert_int_equal(o->alloc(kb, bytes + KC_GUARD, &d), EPM_OK);
    unsigned char *tmp = malloc(bytes + KC_GUARD);
    assert_non_null(tmp);
    if (h)
        memcpy(tmp, h, bytes);
    else /* an output: NaN floats everywhere (0xff bytes), then the guard */
        memset(tmp, 0xff, bytes);
    memset(tmp + bytes, 0xa5, KC_GUARD);
    assert_int_equal(o->upload(kb, d, tmp, bytes + KC_GUARD), EPM_OK);
    free(tmp);
    return d;
}

static void *kc_down(epm_kernels *kb, const void *d, size_t bytes)
{
    unsigned char *h = malloc(bytes + KC_GUARD);
    assert_non_null(h);
    assert_int_equal(epm_kernels_ops(kb)->download(kb, h, d, bytes + KC_GUARD), EPM_OK);
    for (size_t i = 0; i < KC_GUARD; i++)
        if (h[bytes + i] != 0xa5) {
            print_error("%s: wrote past the end of its output (%zu bytes)\n", epm_kernels_name(kb), bytes);
            fail();
        }
    return h;
}

static void kc_free(epm_kernels *kb, void *d) { epm_kernels_ops(kb)->free(kb, d); }

static void kc_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double m = 0, e = 0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs(want[i]));
        double d = fabs((double)got[i] - want[i]);
        if (d != d || d > e) /* NaN: never written */
            e = d != d ? INFINITY : d, at = i;
    }
    if (e > tol * (m + 1)) {
        print_error("%s: max error %g at [%lld] (got %g, want %g), allowed %g\n", what, e, (long long)at,
                    at >= 0 ? (double)got[at] : 0.0, at >= 0 ? (double)want[at] : 0.0, tol * (m + 1));
        fail();
    }
}

static void kc_same(const char *what, const void *got, const void *want, size_t bytes)
{
    if (bytes && memcmp(got, want, bytes)) {
        print_error("%s: outputs differ (exact comparison)\n", what);
        fail();
    }
}

/* Runs one op on both backends: the op is called through `call` with a
 * backend and its device copies of the inputs. */
typedef struct kc_buf {
    const void *host;
    size_t bytes;
    void *ref_d, *fast_d;
} kc_buf;

static void kc_upload_all(kc_ctx *c, kc_buf *b, int nb)
{
    for (int i = 0; i < nb; i++) {
        b[i].ref_d = kc_up(c->ref, b[i].host, b[i].bytes);
        b[i].fast_d = kc_up(c->fast, b[i].host, b[i].bytes);
    }
}

static void kc_release(kc_ctx *c, kc_buf *b, int nb)
{
    for (int i = 0; i < nb; i++) {
        kc_free(c->ref, b[i].ref_d);
        kc_free(c->fast, b[i].fast_d);
    }
}

/* ---- linear ---- */
static void kc_linear(kc_ctx *c)
{
    static const int cases[][4] = {/* n, in, out, bias */
                                   {0, 8, 8, 1},   {1, 1, 1, 1},   {1, 3, 5, 0},     {3, 67, 3, 1},
                                   {67, 3, 67, 0}, {7, 67, 1, 1},  {33, 64, 128, 1}, {256, 1024, 96, 1}};
    if (!c->F->linear)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], in = cases[i][1], out = cases[i][2];
        float *x = kc_rnd((size_t)n * in, &c->seed), *w = kc_rnd((size_t)out * in, &c->seed);
        float *b = kc_rnd((size_t)out, &c->seed);
        kc_buf bf[4] = {{x, (size_t)n * in * 4, 0, 0}, {w, (size_t)out * in * 4, 0, 0}, {b, (size_t)out * 4, 0, 0},
                        {NULL, (size_t)n * out * 4, 0, 0}};
        kc_upload_all(c, bf, 4);
        const float *rb = cases[i][3] ? bf[2].ref_d : NULL, *fb = cases[i][3] ? bf[2].fast_d : NULL;
        assert_int_equal(c->R->linear(c->ref, bf[0].ref_d, n, in, bf[1].ref_d, rb, out, bf[3].ref_d), EPM_OK);
        assert_int_equal(c->F->linear(c->fast, bf[0].fast_d, n, in, bf[1].fast_d, fb, out, bf[3].fast_d), EPM_OK);
        float *want = kc_down(c->ref, bf[3].ref_d, bf[3].bytes), *got = kc_down(c->fast, bf[3].fast_d, bf[3].bytes);
        char what[96];
        snprintf(what, sizeof what, "linear n %d in %d out %d bias %d", n, in, out, cases[i][3]);
        kc_close(what, got, want, (int64_t)n * out, KC_F32_TOL);
        kc_release(c, bf, 4);
        free(x), free(w), free(b), free(want), free(got);
    }
}

/* ---- rmsnorm ---- */
static void kc_rmsnorm(kc_ctx *c)
{
    static const int cases[][2] = {{0, 8}, {1, 1}, {1, 3}, {5, 67}, {3, 2048}, {64, 128}};
    if (!c->F->rmsnorm)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], d = cases[i][1];
        float *x = kc_rnd((size_t)n * d, &c->seed), *w = kc_rnd((size_t)d, &c->seed);
        kc_buf bf[3] = {{x, (size_t)n * d * 4, 0, 0}, {w, (size_t)d * 4, 0, 0}, {NULL, (size_t)n * d * 4, 0, 0}};
        kc_upload_all(c, bf, 3);
        assert_int_equal(c->R->rmsnorm(c->ref, bf[0].ref_d, n, d, bf[1].ref_d, 1e-6f, bf[2].ref_d), EPM_OK);
        assert_int_equal(c->F->rmsnorm(c->fast, bf[0].fast_d, n, d, bf[1].fast_d, 1e-6f, bf[2].fast_d), EPM_OK);
        float *want = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *got = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        char what[64];
        snprintf(what, sizeof what, "rmsnorm n %d d %d", n, d);
        kc_close(what, got, want, (int64_t)n * d, KC_F32_TOL);
        kc_release(c, bf, 3);
        free(x), free(w), free(want), free(got);
    }
}

/* ---- rope (in place) ---- */
static void kc_rope(kc_ctx *c)
{
    static const int cases[][3] = {{1, 1, 2}, {3, 4, 64}, {5, 2, 128}, {0, 2, 8}};
    if (!c->F->rope)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], heads = cases[i][1], hd = cases[i][2];
        float *x = kc_rnd((size_t)n * heads * hd, &c->seed);
        int32_t pos[8];
        for (int j = 0; j < n; j++)
            pos[j] = (int32_t)(epm_rand_unit(&c->seed) * 4096);
        kc_buf bf[2] = {{x, (size_t)n * heads * hd * 4, 0, 0}, {pos, (size_t)n * 4, 0, 0}};
        kc_upload_all(c, bf, 2);
        assert_int_equal(c->R->rope(c->ref, bf[0].ref_d, n, heads, hd, bf[1].ref_d, 10000.0), EPM_OK);
        assert_int_equal(c->F->rope(c->fast, bf[0].fast_d, n, heads, hd, bf[1].fast_d, 10000.0), EPM_OK);
        float *want = kc_down(c->ref, bf[0].ref_d, bf[0].bytes), *got = kc_down(c->fast, bf[0].fast_d, bf[0].bytes);
        char what[64];
        snprintf(what, sizeof what, "rope n %d heads %d hd %d", n, heads, hd);
        kc_close(what, got, want, (int64_t)n * heads * hd, KC_F32_TOL);
        kc_release(c, bf, 2);
        free(x), free(want), free(got);
    }
}

/* ---- attention: a prefill from position p, and a decode step ---- */
static void kc_attention(kc_ctx *c, int probs_supported)
{
    static const int cases[][6] = {/* n, first pos, cache_len, heads, kv_heads, hd */
                                   {1, 0, 1, 1, 1, 1},   {5, 0, 5, 4, 2, 64},   {3, 9, 67, 8, 1, 128},
                                   {1, 66, 67, 4, 4, 3}, {16, 4, 20, 6, 3, 32}, {0, 0, 4, 2, 1, 8},
                                   /* long contexts (decode past a prompt), a group of 4, odd widths */
                                   {2, 1500, 1503, 8, 2, 128}, {3, 297, 300, 12, 3, 72}, {1, 40, 41, 5, 5, 13},
                                   /* GQA groups of 5 (4 + 1) with a scalar tail, and of 16 */
                                   {3, 297, 300, 10, 2, 7},    {2, 64, 67, 16, 1, 24}};
    if (!c->F->attention)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], p0 = cases[i][1], T = cases[i][2], H = cases[i][3], KV = cases[i][4], D = cases[i][5];
        float *q = kc_rnd((size_t)n * H * D, &c->seed), *kc = kc_rnd((size_t)T * KV * D, &c->seed);
        float *vc = kc_rnd((size_t)T * KV * D, &c->seed);
        int32_t pos[16];
        for (int j = 0; j < n; j++)
            pos[j] = p0 + j;
        kc_buf bf[6] = {{q, (size_t)n * H * D * 4, 0, 0},    {pos, (size_t)n * 4, 0, 0},
                        {kc, (size_t)T * KV * D * 4, 0, 0},  {vc, (size_t)T * KV * D * 4, 0, 0},
                        {NULL, (size_t)n * H * D * 4, 0, 0}, {NULL, (size_t)H * n * T * 4, 0, 0}};
        kc_upload_all(c, bf, 6);
        assert_int_equal(c->R->attention(c->ref, bf[0].ref_d, n, bf[1].ref_d, bf[2].ref_d, bf[3].ref_d, T, H, KV, D,
                                         bf[4].ref_d, bf[5].ref_d),
                         EPM_OK);
        assert_int_equal(c->F->attention(c->fast, bf[0].fast_d, n, bf[1].fast_d, bf[2].fast_d, bf[3].fast_d, T, H, KV,
                                         D, bf[4].fast_d, probs_supported ? bf[5].fast_d : NULL),
                         EPM_OK);
        char what[96];
        snprintf(what, sizeof what, "attention n %d pos %d.. cache %d heads %d/%d hd %d", n, p0, T, H, KV, D);
        float *want = kc_down(c->ref, bf[4].ref_d, bf[4].bytes), *got = kc_down(c->fast, bf[4].fast_d, bf[4].bytes);
        kc_close(what, got, want, (int64_t)n * H * D, KC_F32_TOL);
        free(want), free(got);
        if (probs_supported) {
            want = kc_down(c->ref, bf[5].ref_d, bf[5].bytes), got = kc_down(c->fast, bf[5].fast_d, bf[5].bytes);
            kc_close(what, got, want, (int64_t)H * n * T, KC_F32_TOL);
            free(want), free(got);
            /* and without them, into an output of NaN: a backend may take another way then */
            if (bf[4].bytes) {
                float *nan = malloc(bf[4].bytes);
                for (size_t j = 0; j < bf[4].bytes / sizeof *nan; j++)
                    nan[j] = NAN;
                assert_int_equal(c->F->upload(c->fast, bf[4].fast_d, nan, bf[4].bytes), EPM_OK);
                free(nan);
            }
            assert_int_equal(c->F->attention(c->fast, bf[0].fast_d, n, bf[1].fast_d, bf[2].fast_d, bf[3].fast_d, T, H,
                                             KV, D, bf[4].fast_d, NULL),
                             EPM_OK);
            want = kc_down(c->ref, bf[4].ref_d, bf[4].bytes), got = kc_down(c->fast, bf[4].fast_d, bf[4].bytes);
            snprintf(what, sizeof what, "attention n %d pos %d.. cache %d heads %d/%d hd %d, no probs", n, p0, T, H,
                     KV, D);
            kc_close(what, got, want, (int64_t)n * H * D, KC_F32_TOL);
            free(want), free(got);
        }
        kc_release(c, bf, 6);
        if (c->F->attention_bf16) { /* the same over a bf16 cache, against the reference's */
            size_t m = (size_t)T * KV * D;
            uint16_t *kh = malloc(2 * m * sizeof *kh);
            for (size_t j = 0; j < m; j++)
                kh[j] = epm_f32_to_bf16(kc[j]), kh[m + j] = epm_f32_to_bf16(vc[j]);
            kc_buf hb[6] = {{q, (size_t)n * H * D * 4, 0, 0},    {pos, (size_t)n * 4, 0, 0},
                            {kh, m * 2, 0, 0},                   {kh + m, m * 2, 0, 0},
                            {NULL, (size_t)n * H * D * 4, 0, 0}, {NULL, (size_t)H * n * T * 4, 0, 0}};
            kc_upload_all(c, hb, 6);
            assert_int_equal(c->R->attention_bf16(c->ref, hb[0].ref_d, n, hb[1].ref_d, hb[2].ref_d, hb[3].ref_d, T, H,
                                                  KV, D, hb[4].ref_d, hb[5].ref_d),
                             EPM_OK);
            assert_int_equal(c->F->attention_bf16(c->fast, hb[0].fast_d, n, hb[1].fast_d, hb[2].fast_d, hb[3].fast_d,
                                                  T, H, KV, D, hb[4].fast_d, probs_supported ? hb[5].fast_d : NULL),
                             EPM_OK);
            char what[96];
            snprintf(what, sizeof what, "bf16-cache attention n %d pos %d.. cache %d heads %d/%d hd %d", n, p0, T, H,
                     KV, D);
            for (int b = 4; b < (probs_supported ? 6 : 5); b++) {
                float *want = kc_down(c->ref, hb[b].ref_d, hb[b].bytes), *got = kc_down(c->fast, hb[b].fast_d, hb[b].bytes);
                kc_close(what, got, want, (int64_t)(hb[b].bytes / 4), KC_F32_TOL);
                free(want), free(got);
            }
            kc_release(c, hb, 6);
            free(kh);
        }
        if (c->F->attention_fp8) { /* and over an fp8 cache: codes, and a scale per head row */
            size_t m = (size_t)T * KV * D, rows = (size_t)T * KV;
            uint8_t *k8 = malloc(2 * m);
            float *sc = malloc(2 * rows * sizeof *sc);
            for (size_t r = 0; r < 2 * rows; r++) {
                const float *x = r < rows ? kc + r * D : vc + (r - rows) * D;
                sc[r] = epm_fp8_block_put(k8 + r * D, x, D);
            }
            kc_buf fb[8] = {{q, (size_t)n * H * D * 4, 0, 0},    {pos, (size_t)n * 4, 0, 0},
                            {k8, m, 0, 0},                       {sc, rows * 4, 0, 0},
                            {k8 + m, m, 0, 0},                   {sc + rows, rows * 4, 0, 0},
                            {NULL, (size_t)n * H * D * 4, 0, 0}, {NULL, (size_t)H * n * T * 4, 0, 0}};
            kc_upload_all(c, fb, 8);
            assert_int_equal(c->R->attention_fp8(c->ref, fb[0].ref_d, n, fb[1].ref_d, fb[2].ref_d, fb[3].ref_d,
                                                 fb[4].ref_d, fb[5].ref_d, T, H, KV, D, fb[6].ref_d, fb[7].ref_d),
                             EPM_OK);
            assert_int_equal(c->F->attention_fp8(c->fast, fb[0].fast_d, n, fb[1].fast_d, fb[2].fast_d, fb[3].fast_d,
                                                 fb[4].fast_d, fb[5].fast_d, T, H, KV, D, fb[6].fast_d,
                                                 probs_supported ? fb[7].fast_d : NULL),
                             EPM_OK);
            char what[96];
            snprintf(what, sizeof what, "fp8-cache attention n %d pos %d.. cache %d heads %d/%d hd %d", n, p0, T, H,
                     KV, D);
            for (int b = 6; b < (probs_supported ? 8 : 7); b++) {
                float *want = kc_down(c->ref, fb[b].ref_d, fb[b].bytes), *got = kc_down(c->fast, fb[b].fast_d, fb[b].bytes);
                kc_close(what, got, want, (int64_t)(fb[b].bytes / 4), KC_F32_TOL);
                free(want), free(got);
            }
            kc_release(c, fb, 8);
            free(k8), free(sc);
        }
        free(q), free(kc), free(vc);
    }
}

/* ---- router: ids exact, weights 1e-6 ---- */
static void kc_router(kc_ctx *c)
{
    static const int cases[][6] = {/* n, experts, k, sigmoid, top_p x 100, renorm */
                                   {1, 8, 1, 0, 0, 0},   {33, 8, 2, 0, 0, 1},  {17, 64, 8, 0, 0, 1},
                                   {9, 256, 8, 1, 0, 1}, {25, 60, 4, 0, 50, 1}, {40, 16, 8, 0, 0, 0},
                                   {0, 8, 2, 0, 0, 0}};
    if (!c->F->router)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], E = cases[i][1];
        epm_router_opts o;
        epm_router_opts_init(&o);
        o.k = cases[i][2], o.score = cases[i][3] ? EPM_SCORE_SIGMOID : EPM_SCORE_SOFTMAX;
        o.top_p = (float)cases[i][4] / 100, o.renorm = cases[i][5];
        float *l = kc_rnd((size_t)n * E, &c->seed);
        /* adversarial: the last case's logits take four values only, so
         * most choices are ties that only the tie rule decides */
        if (i == 5)
            for (int j = 0; j < n * E; j++)
                l[j] = floorf(l[j] * 2);
        kc_buf bf[3] = {{l, (size_t)n * E * 4, 0, 0}, {NULL, (size_t)n * o.k * 4, 0, 0},
                        {NULL, (size_t)n * o.k * 4, 0, 0}};
        kc_upload_all(c, bf, 3);
        assert_int_equal(c->R->router(c->ref, bf[0].ref_d, n, E, &o, bf[1].ref_d, bf[2].ref_d), EPM_OK);
        assert_int_equal(c->F->router(c->fast, bf[0].fast_d, n, E, &o, bf[1].fast_d, bf[2].fast_d), EPM_OK);
        char what[96];
        snprintf(what, sizeof what, "router n %d E %d k %d sigmoid %d top_p %.2f", n, E, o.k, cases[i][3],
                 (double)o.top_p);
        void *wi = kc_down(c->ref, bf[1].ref_d, bf[1].bytes), *gi = kc_down(c->fast, bf[1].fast_d, bf[1].bytes);
        kc_same(what, gi, wi, bf[1].bytes);
        float *ww = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *gw = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        kc_close(what, gw, ww, (int64_t)n * o.k, 1e-6);
        kc_release(c, bf, 3);
        free(l), free(wi), free(gi), free(ww), free(gw);
    }
}

/* ---- routing ids: random, one expert for all, with -1 slots ---- */
enum kc_route_mode { KC_RANDOM, KC_ONE_EXPERT, KC_HALF_EMPTY, KC_DROPS };

static int32_t *kc_ids(int64_t n, int E, int K, int mode, uint64_t *s)
{
    int32_t *ids = malloc((size_t)(n ? n : 1) * K * sizeof *ids);
    assert_non_null(ids);
    for (int64_t t = 0; t < n; t++) {
        int first = mode == KC_ONE_EXPERT ? E - 1 : (int)(epm_rand_unit(s) * E);
        int step = mode == KC_HALF_EMPTY ? 2 : 1;
        if (mode == KC_HALF_EMPTY)
            first = (first / 2) * 2; /* odd experts never get a row */
        for (int j = 0; j < K; j++)
            ids[t * K + j] = (first + j * step) % E;
        if (mode == KC_DROPS) /* top-p: trailing slots empty */
            for (int j = 1 + (int)(epm_rand_unit(s) * K); j < K; j++)
                ids[t * K + j] = -1;
    }
    return ids;
}

static void kc_route(kc_ctx *c)
{
    static const int cases[][4] = {/* n, E, k, mode */
                                   {0, 4, 2, KC_RANDOM},   {1, 8, 1, KC_RANDOM},      {1, 8, 8, KC_RANDOM},
                                   {64, 8, 1, KC_ONE_EXPERT}, {30, 16, 8, KC_HALF_EMPTY}, {50, 6, 4, KC_DROPS},
                                   {300, 256, 8, KC_RANDOM}};
    if (!c->F->route)
        return;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], E = cases[i][1], K = cases[i][2];
        int32_t *ids = kc_ids(n, E, K, cases[i][3], &c->seed);
        size_t nk = (size_t)n * K * 4;
        kc_buf bf[4] = {{ids, nk, 0, 0}, {NULL, (size_t)(E + 1) * 8, 0, 0}, {NULL, nk, 0, 0}, {NULL, nk, 0, 0}};
        kc_upload_all(c, bf, 4);
        assert_int_equal(c->R->route(c->ref, bf[0].ref_d, n, K, E, bf[1].ref_d, bf[2].ref_d, bf[3].ref_d), EPM_OK);
        assert_int_equal(c->F->route(c->fast, bf[0].fast_d, n, K, E, bf[1].fast_d, bf[2].fast_d, bf[3].fast_d),
                         EPM_OK);
        char what[64];
        snprintf(what, sizeof what, "route n %d E %d k %d mode %d", n, E, K, cases[i][3]);
        int64_t *wo = kc_down(c->ref, bf[1].ref_d, bf[1].bytes), *go = kc_down(c->fast, bf[1].fast_d, bf[1].bytes);
        kc_same(what, go, wo, bf[1].bytes);
        size_t used = (size_t)wo[E] * 4; /* row_src beyond the routed rows is unspecified */
        void *ws = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *gs = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        kc_same(what, gs, ws, used);
        void *wr = kc_down(c->ref, bf[3].ref_d, bf[3].bytes), *gr = kc_down(c->fast, bf[3].fast_d, bf[3].bytes);
        kc_same(what, gr, wr, nk);
        kc_release(c, bf, 4);
        free(ids), free(wo), free(go), free(ws), free(gs), free(wr), free(gr);
    }
}

/* Host-side routing of a case: offsets, row_src, row_of from the reference. */
typedef struct kc_routing {
    int64_t n, rows;
    int E, K;
    int32_t *ids, *src, *row_of;
    int64_t *off;
} kc_routing;

static kc_routing kc_make_routing(int64_t n, int E, int K, int mode, uint64_t *s)
{
    kc_routing r = {n, 0, E, K, kc_ids(n, E, K, mode, s), NULL, NULL, NULL};
    r.src = malloc((size_t)(n ? n : 1) * K * 4), r.row_of = malloc((size_t)(n ? n : 1) * K * 4);
    r.off = malloc((size_t)(E + 1) * 8);
    assert_true(r.src && r.row_of && r.off);
    assert_int_equal(epm_ref_route(r.ids, n, K, E, r.off, r.src, r.row_of), EPM_OK);
    r.rows = r.off[E];
    return r;
}

static void kc_free_routing(kc_routing *r) { free(r->ids), free(r->src), free(r->row_of), free(r->off); }

/* float32 -> the element type, on the host */
static void *kc_as(const float *f, int64_t n, epm_dtype dt)
{
    void *v = malloc((size_t)(n ? n : 1) * epm_dtype_size(dt));
    assert_non_null(v);
    assert_int_equal(epm_ref_convert(f, EPM_DTYPE_F32, n, dt, v), EPM_OK);
    return v;
}

static float *kc_to_f32(const void *v, int64_t n, epm_dtype dt)
{
    float *f = malloc((size_t)(n ? n : 1) * 4);
    assert_non_null(f);
    assert_int_equal(epm_ref_convert(v, dt, n, EPM_DTYPE_F32, f), EPM_OK);
    return f;
}

/* ---- permute and weighted un-permute, f32 and bf16 ---- */
static void kc_permute(kc_ctx *c, epm_dtype dt)
{
    static const int cases[][5] = {/* n, E, k, hidden, mode */
                                   {0, 4, 2, 8, KC_RANDOM},     {1, 8, 8, 1, KC_RANDOM},   {7, 8, 1, 3, KC_RANDOM},
                                   {33, 8, 2, 67, KC_ONE_EXPERT}, {20, 6, 4, 16, KC_DROPS}, {64, 16, 8, 33, KC_HALF_EMPTY}};
    if (!c->F->permute || !c->F->unpermute)
        return;
    size_t es = epm_dtype_size(dt);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = cases[i][0], E = cases[i][1], K = cases[i][2], h = cases[i][3];
        kc_routing r = kc_make_routing(n, E, K, cases[i][4], &c->seed);
        float *xf = kc_rnd((size_t)n * h, &c->seed), *yf = kc_rnd((size_t)r.rows * h, &c->seed);
        float *w = kc_rnd((size_t)n * K, &c->seed);
        void *x = kc_as(xf, (int64_t)n * h, dt), *y = kc_as(yf, r.rows * h, dt);
        kc_buf bf[7] = {{x, (size_t)n * h * es, 0, 0},      {r.src, (size_t)r.rows * 4, 0, 0},
                        {NULL, (size_t)r.rows * h * es, 0, 0}, {y, (size_t)r.rows * h * es, 0, 0},
                        {r.row_of, (size_t)n * K * 4, 0, 0}, {w, (size_t)n * K * 4, 0, 0},
                        {NULL, (size_t)n * h * es, 0, 0}};
        kc_upload_all(c, bf, 7);
        assert_int_equal(c->R->permute(c->ref, dt, bf[0].ref_d, h, bf[1].ref_d, r.rows, bf[2].ref_d), EPM_OK);
        assert_int_equal(c->F->permute(c->fast, dt, bf[0].fast_d, h, bf[1].fast_d, r.rows, bf[2].fast_d), EPM_OK);
        assert_int_equal(c->R->unpermute(c->ref, dt, bf[3].ref_d, h, bf[4].ref_d, bf[5].ref_d, n, K, bf[6].ref_d),
                         EPM_OK);
        assert_int_equal(
            c->F->unpermute(c->fast, dt, bf[3].fast_d, h, bf[4].fast_d, bf[5].fast_d, n, K, bf[6].fast_d), EPM_OK);
        char what[96];
        snprintf(what, sizeof what, "permute/unpermute %s n %d E %d k %d hidden %d", epm_dtype_name(dt), n, E, K, h);
        void *wp = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *gp = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        kc_same(what, gp, wp, bf[2].bytes);
        void *wu = kc_down(c->ref, bf[6].ref_d, bf[6].bytes), *gu = kc_down(c->fast, bf[6].fast_d, bf[6].bytes);
        float *wf = kc_to_f32(wu, (int64_t)n * h, dt), *gf = kc_to_f32(gu, (int64_t)n * h, dt);
        kc_close(what, gf, wf, (int64_t)n * h, dt == EPM_DTYPE_F32 ? KC_F32_TOL : KC_BF16_TOL);
        kc_release(c, bf, 7);
        free(xf), free(yf), free(w), free(x), free(y), free(wp), free(gp), free(wu), free(gu), free(wf), free(gf);
        kc_free_routing(&r);
    }
}

/* ---- the grouped expert FFN ---- */
typedef struct kc_ffn_case {
    int n, hidden, ffn, E, k, mode;
} kc_ffn_case;

static const kc_ffn_case kc_ffn_cases[] = {
    {0, 16, 8, 4, 2, KC_RANDOM},        /* no tokens at all */
    {1, 3, 5, 8, 1, KC_RANDOM},         /* one token, k = 1: seven experts with 0 rows */
    {1, 67, 3, 8, 8, KC_RANDOM},        /* one token, k = 8: one row per expert */
    {5, 1, 1, 3, 1, KC_RANDOM},         /* width 1 */
    {40, 67, 45, 6, 2, KC_RANDOM},      /* odd widths */
    {64, 32, 24, 8, 1, KC_ONE_EXPERT},  /* one expert gets every row */
    {30, 24, 16, 16, 8, KC_HALF_EMPTY}, /* k = 8, half the experts idle */
    {25, 40, 20, 6, 4, KC_DROPS},       /* top-p: some slots empty */
    {200, 128, 64, 4, 2, KC_RANDOM},    /* a bigger one */
    {1100, 16, 12, 4, 1, KC_ONE_EXPERT}, /* one expert past the CPU paths' chunk of 1024 rows */
};

/* Returns 0 when the fast backend refused the dtype with
 * EPM_ERR_UNSUPPORTED and allow_unsupported says that is its stated limit. */
static int kc_grouped_ffn(kc_ctx *c, epm_dtype dt, int allow_unsupported)
{
    if (!c->F->grouped_ffn)
        return 0;
    size_t es = epm_dtype_size(dt);
    for (size_t i = 0; i < sizeof kc_ffn_cases / sizeof *kc_ffn_cases; i++) {
        const kc_ffn_case *k = &kc_ffn_cases[i];
        int h = k->hidden, f = k->ffn, E = k->E;
        kc_routing r = kc_make_routing(k->n, E, k->k, k->mode, &c->seed);
        /* weights scaled so activations stay O(1) whatever the width */
        float *xf = kc_rnd((size_t)r.rows * h, &c->seed), *wf = kc_rnd((size_t)E * 3 * f * h, &c->seed);
        for (size_t j = 0; j < (size_t)E * 3 * f * h; j++)
            wf[j] *= 2.0f / sqrtf((float)(h + f));
        void *x = kc_as(xf, r.rows * h, dt), *w = kc_as(wf, (int64_t)E * 3 * f * h, dt);
        size_t wbytes = (size_t)E * 3 * f * h * es;
        kc_buf bf[3] = {{x, (size_t)r.rows * h * es, 0, 0}, {w, wbytes, 0, 0}, {NULL, (size_t)r.rows * h * es, 0, 0}};
        kc_upload_all(c, bf, 3);
        const void **g[2], **u[2], **d[2];
        void *scr[2];
        epm_kernels *kb[2] = {c->ref, c->fast};
        for (int s = 0; s < 2; s++) {
            g[s] = calloc((size_t)E, sizeof(void *)), u[s] = calloc((size_t)E, sizeof(void *));
            d[s] = calloc((size_t)E, sizeof(void *));
            char *base = s ? bf[1].fast_d : bf[1].ref_d;
            for (int e = 0; e < E; e++) {
                if (r.off[e + 1] == r.off[e])
                    continue; /* an expert with no rows is not loaded: NULL weights */
                g[s][e] = base + (size_t)e * 3 * f * h * es;
                u[s][e] = base + ((size_t)e * 3 + 1) * f * h * es;
                d[s][e] = base + ((size_t)e * 3 + 2) * f * h * es;
            }
            size_t sb = epm_kernels_ops(kb[s])->grouped_ffn_scratch(kb[s], dt, r.rows, h, f);
            assert_int_equal(epm_kernels_ops(kb[s])->alloc(kb[s], sb, &scr[s]), EPM_OK);
        }
        assert_int_equal(c->R->grouped_ffn(c->ref, dt, bf[0].ref_d, r.off, E, h, f, g[0], u[0], d[0], scr[0],
                                           bf[2].ref_d),
                         EPM_OK);
        epm_status st = c->F->grouped_ffn(c->fast, dt, bf[0].fast_d, r.off, E, h, f, g[1], u[1], d[1], scr[1],
                                          bf[2].fast_d);
        int ran = !(st == EPM_ERR_UNSUPPORTED && allow_unsupported);
        if (ran) {
            assert_int_equal(st, EPM_OK);
            char what[128];
            snprintf(what, sizeof what, "grouped_ffn %s n %d hidden %d ffn %d E %d k %d mode %d", epm_dtype_name(dt),
                     k->n, h, f, E, k->k, k->mode);
            void *wy = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *gy = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
            float *wy32 = kc_to_f32(wy, r.rows * h, dt), *gy32 = kc_to_f32(gy, r.rows * h, dt);
            kc_close(what, gy32, wy32, r.rows * h, dt == EPM_DTYPE_F32 ? KC_F32_TOL : KC_BF16_TOL);
            free(wy), free(gy), free(wy32), free(gy32);
        }
        for (int s = 0; s < 2; s++) {
            kc_free(kb[s], scr[s]);
            free(g[s]), free(u[s]), free(d[s]);
        }
        kc_release(c, bf, 3);
        free(xf), free(wf), free(x), free(w);
        kc_free_routing(&r);
        if (!ran) {
            epm_clear_error();
            return 0;
        }
    }
    return 1;
}

/* ---- embed and conversions: exact ---- */
static void kc_embed_convert(kc_ctx *c)
{
    if (c->F->embed) {
        enum { V = 50, D = 67, N = 9 };
        float *table = kc_rnd(V * D, &c->seed);
        int32_t ids[N] = {0, 49, 3, 3, 17, 0, 48, 1, 25};
        kc_buf bf[3] = {{table, V * D * 4, 0, 0}, {ids, N * 4, 0, 0}, {NULL, N * D * 4, 0, 0}};
        kc_upload_all(c, bf, 3);
        assert_int_equal(c->R->embed(c->ref, bf[0].ref_d, V, D, bf[1].ref_d, N, bf[2].ref_d), EPM_OK);
        assert_int_equal(c->F->embed(c->fast, bf[0].fast_d, V, D, bf[1].fast_d, N, bf[2].fast_d), EPM_OK);
        void *w = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *g = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        kc_same("embed", g, w, bf[2].bytes);
        kc_release(c, bf, 3);
        free(table), free(w), free(g);
    }
    if (c->F->convert) {
        enum { N = 1001 };
        float *f = kc_rnd(N, &c->seed);
        f[0] = 1.00390625f, f[1] = 1.01171875f, f[2] = -0.0f, f[3] = 3.0e38f; /* ties to even, signed zero, large */
        kc_buf bf[3] = {{f, N * 4, 0, 0}, {NULL, N * 2, 0, 0}, {NULL, N * 4, 0, 0}};
        kc_upload_all(c, bf, 3);
        assert_int_equal(c->R->convert(c->ref, bf[0].ref_d, EPM_DTYPE_F32, N, EPM_DTYPE_BF16, bf[1].ref_d), EPM_OK);
        assert_int_equal(c->F->convert(c->fast, bf[0].fast_d, EPM_DTYPE_F32, N, EPM_DTYPE_BF16, bf[1].fast_d),
                         EPM_OK);
        assert_int_equal(c->R->convert(c->ref, bf[1].ref_d, EPM_DTYPE_BF16, N, EPM_DTYPE_F32, bf[2].ref_d), EPM_OK);
        assert_int_equal(c->F->convert(c->fast, bf[1].fast_d, EPM_DTYPE_BF16, N, EPM_DTYPE_F32, bf[2].fast_d),
                         EPM_OK);
        void *w = kc_down(c->ref, bf[1].ref_d, bf[1].bytes), *g = kc_down(c->fast, bf[1].fast_d, bf[1].bytes);
        kc_same("convert f32 -> bf16", g, w, bf[1].bytes);
        free(w), free(g);
        w = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), g = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
        kc_same("convert bf16 -> f32", g, w, bf[2].bytes);
        kc_release(c, bf, 3);
        free(f), free(w), free(g);
    }
}

static int kc_setup(void **state, const char *backend)
{
    static kc_ctx c;
    memset(&c, 0, sizeof c);
    if (epm_kernels_create(backend, &c.fast) != EPM_OK || epm_kernels_create("ref", &c.ref) != EPM_OK) {
        fprintf(stderr, "backend '%s': %s\n", backend, epm_last_error());
        return -1;
    }
    c.F = epm_kernels_ops(c.fast), c.R = epm_kernels_ops(c.ref);
    c.seed = 0x5eed;
    *state = &c;
    return 0;
}

static int kc_teardown(void **state)
{
    kc_ctx *c = *state;
    epm_kernels_destroy(c->fast);
    epm_kernels_destroy(c->ref);
    return 0;
}

#endif
