/* The batched and strided expert FFN's layouts (kernels/ffn_bplan.h),
 * checked on the CPU: their invariants, and each whole path run as
 * ops_cuda.cu runs it, with the very pointer arrays, batches and copy tables
 * the device gets, each batch computing all of its padded rows. Buffers are
 * exact-size heap blocks and the padded areas start as NaN, so a read past
 * x (in CI's sanitizer build), a region shared by two experts, a wrong
 * stride, or a padded row reaching a real one fails here; the result must
 * equal the C reference's. What only the GPU can check (cuBLAS taking the
 * batches, the copy and SiLU kernels) is in tests/gpu/test_kernels_cuda.c. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "ffn_bplan.h"
#include "ops.h"

static void test_bucket_rows(void **state)
{
    (void)state;
    static const int64_t in[] = {1, 15, 16, 17, 100, 128, 129, 256, 257, 300, 4096, 4097, 100000};
    static const int64_t want[] = {16, 16, 16, 32, 112, 128, 144, 256, 288, 320, 4096, 4608, 106496};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        assert_int_equal(epm_ffn_bucket_rows(in[i]), want[i]);
    for (int64_t m = 1; m < 200000; m += 1 + m / 7) {
        int64_t b = epm_ffn_bucket_rows(m);
        assert_true(b >= m);
        assert_true(b - m < 16 || (b - m) * 8 <= m); /* at most 15 rows, or 1/8, of padding */
        assert_true(b % 16 == 0);
    }
}

static uint64_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void check_layout(const epm_ffn_bplan *pl, const int64_t *off, int E)
{
    int64_t rows = off[E], padded = 0, spare = 0;
    int ne = 0, ncopy = 0;
    char *seen = calloc((size_t)E, 1);
    assert_non_null(seen);
    for (int e = 0; e < E; e++)
        ne += off[e + 1] > off[e];
    assert_int_equal(pl->ne, ne);
    assert_int_equal(pl->rows, rows);
    assert_int_equal(pl->first[0], 0);
    assert_int_equal(pl->first[pl->nb], ne);
    for (int b = 0; b < pl->nb; b++) {
        assert_true(pl->first[b + 1] > pl->first[b]);
        if (b > 0)
            assert_true(pl->brows[b] < pl->brows[b - 1]); /* largest first, one bucket per size */
        for (int j = pl->first[b]; j < pl->first[b + 1]; j++) {
            int e = pl->expert[j];
            assert_true(e >= 0 && e < E && !seen[e]);
            seen[e] = 1;
            assert_int_equal(pl->o[j], off[e]);
            assert_int_equal(pl->m[j], off[e + 1] - off[e]);
            assert_int_equal(pl->brows[b], epm_ffn_bucket_rows(pl->m[j]));
            assert_int_equal(pl->p[j], padded); /* disjoint and in order: a bucket's rows are one block */
            padded += pl->brows[b];
            if (pl->s[j] < 0) {
                assert_true(pl->o[j] + pl->brows[b] <= rows);
            } else { /* copied only where reading in place would run past x */
                assert_true(pl->o[j] + pl->brows[b] > rows);
                assert_int_equal(pl->s[j], spare);
                spare += pl->brows[b];
                ncopy++;
            }
            if (j > pl->first[b])
                assert_true(pl->expert[j] > pl->expert[j - 1]);
        }
    }
    assert_int_equal(pl->padded_rows, padded);
    assert_int_equal(pl->spare_rows, spare);
    assert_int_equal(pl->ncopy, ncopy);
    free(seen);
}

/* y[r][c] = sum_k x[r][k] w[c][k], r < rows, c < out, y's rows ldy apart:
 * what one batch entry computes */
static void gemm(const float *x, int64_t rows, int in, const float *w, int out, float *y, int ldy)
{
    for (int64_t r = 0; r < rows; r++)
        for (int c = 0; c < out; c++) {
            double s = 0;
            for (int k = 0; k < in; k++)
                s += (double)x[r * in + k] * w[(int64_t)c * in + k];
            y[r * ldy + c] = (float)s;
        }
}

static void copy_rows(const float *src, float *dst, const int64_t *tab, int entries, int width)
{
    for (int t = 0; t < entries; t++)
        memcpy(dst + tab[3 * t + 1] * width, src + tab[3 * t] * width, (size_t)(tab[3 * t + 2] * width) * 4);
}

static float *nans(int64_t n)
{
    float *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    assert_non_null(p);
    for (int64_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* One bucket of the batched path: its pointer arrays (epm_ffn_bplan_ptrs),
 * gate and up, the SiLU, down */
static void bucket_batched(const epm_ffn_bplan *pl, int b, const float *x, const float *spare, float *gt, float *uo,
                           float *h, float *yp, int hidden, int ffn, const float *const *gate, const float *const *up,
                           const float *const *down)
{
    int n = pl->first[b + 1] - pl->first[b];
    int64_t B = pl->brows[b];
    void **ptr = malloc((size_t)9 * n * sizeof *ptr);
    assert_non_null(ptr);
    epm_ffn_bplan_ptrs(pl, b, (const void *const *)gate, (const void *const *)up, (const void *const *)down,
                       (const char *)x, (const char *)spare, (char *)gt, (char *)uo, (char *)h, (char *)yp, hidden,
                       ffn, sizeof(float), ptr);
    for (int i = 0; i < 2 * n; i++)
        gemm(ptr[2 * n + i], B, hidden, ptr[i], ffn, ptr[4 * n + i], ffn);
    int64_t at = pl->p[pl->first[b]] * ffn;
    for (int64_t i = 0; i < n * B * ffn; i++) {
        float v = gt[at + i];
        h[at + i] = v / (1.0f + expf(-v)) * uo[at + i];
    }
    for (int i = 0; i < n; i++)
        gemm(ptr[7 * n + i], B, ffn, ptr[6 * n + i], hidden, ptr[8 * n + i], hidden);
    free(ptr);
}

/* One run of the strided path: the batches epm_ffn_bplan_sgemms gives the
 * device, entry i at i strides from the first expert's weights (the run's
 * claim, which the reference checks), the SiLU before down */
static void run_strided(const epm_ffn_bplan *pl, int b, const float *spare, float *gu, float *h, float *yp, int hidden,
                        int ffn, const float *const *gate, const float *const *up, const float *const *down)
{
    int n = pl->first[b + 1] - pl->first[b];
    int64_t B = pl->brows[b];
    epm_ffn_sgemm q[3];
    int k = epm_ffn_bplan_sgemms(pl, b, (const void *const *)gate, (const void *const *)up, (const void *const *)down,
                                 (const char *)spare, (char *)gu, (char *)h, (char *)yp, hidden, ffn, sizeof(float),
                                 q);
    assert_int_equal(k, pl->fused[b] ? 2 : 3);
    for (int j = 0; j < k; j++) {
        if (j == k - 1) /* the SiLU: gate and up side by side in rows of 2 ffn */
            for (int64_t i = 0; i < n * B * ffn; i++) {
                const float *r = (const float *)q[0].y + i / ffn * 2 * ffn;
                float v = r[i % ffn];
                ((float *)q[j].x)[i] = v / (1.0f + expf(-v)) * r[ffn + i % ffn];
            }
        for (int i = 0; i < n; i++)
            gemm((const float *)q[j].x + i * q[j].x_stride, B, q[j].in, (const float *)q[j].w + i * q[j].w_stride,
                 q[j].out, (float *)q[j].y + i * q[j].y_stride, q[j].ldy);
    }
}

/* ops_cuda.cu's padded_swiglu on the host (float32): the inputs that cannot
 * be read in place gathered to the spare area, every bucket's batches, the
 * real rows scattered to y. Gate and up share one area, as on the device:
 * two of P rows of ffn (batched) or P rows of 2 ffn (strided). */
static void emulate(const epm_ffn_bplan *pl, int strided, const float *x, int hidden, int ffn,
                    const float *const *gate, const float *const *up, const float *const *down, float *y)
{
    int64_t P = pl->padded_rows;
    float *gu = nans(2 * P * ffn), *h = nans(P * ffn), *yp = nans(P * hidden), *spare = nans(pl->spare_rows * hidden);
    int64_t *tab = malloc((size_t)(3 * (pl->ne + pl->ncopy) + 1) * sizeof *tab);
    assert_non_null(tab);
    epm_ffn_bplan_tables(pl, tab, tab + 3 * pl->ncopy);
    copy_rows(x, spare, tab, pl->ncopy, hidden);
    for (int b = 0; b < pl->nb; b++) {
        if (strided)
            run_strided(pl, b, spare, gu, h, yp, hidden, ffn, gate, up, down);
        else
            bucket_batched(pl, b, x, spare, gu, gu + P * ffn, h, yp, hidden, ffn, gate, up, down);
    }
    copy_rows(yp, y, tab + 3 * pl->ncopy, pl->ne, hidden);
    free(gu), free(h), free(yp), free(spare), free(tab);
}

static void check_runs(const epm_ffn_bplan *pl, const int64_t *off, int E)
{
    int ne = 0;
    for (int e = 0; e < E; e++)
        ne += off[e + 1] > off[e];
    assert_int_equal(pl->ne, ne);
    assert_int_equal(pl->ncopy, ne);
    assert_int_equal(pl->first[pl->nb], ne);
    int64_t padded = 0;
    for (int b = 0; b < pl->nb; b++) {
        int64_t most = 0;
        for (int j = pl->first[b]; j < pl->first[b + 1]; j++) {
            if (j > pl->first[b])
                assert_int_equal(pl->expert[j], pl->expert[j - 1] + 1); /* consecutive experts */
            assert_int_equal(pl->m[j], off[pl->expert[j] + 1] - off[pl->expert[j]]);
            assert_true(pl->m[j] > 0);
            assert_int_equal(pl->p[j], padded);
            assert_int_equal(pl->s[j], pl->p[j]);
            padded += pl->brows[b];
            most = pl->m[j] > most ? pl->m[j] : most;
        }
        assert_int_equal(pl->brows[b], epm_ffn_bucket_rows(most));
        /* the buckets' bound: 1/8 of the run's rows and 16 rows an expert */
        int64_t n = pl->first[b + 1] - pl->first[b], sum = 0;
        for (int j = pl->first[b]; j < pl->first[b + 1]; j++)
            sum += pl->m[j];
        assert_true(8 * n * pl->brows[b] <= 9 * sum + 128 * n);
    }
    assert_int_equal(pl->padded_rows, padded);
    assert_int_equal(pl->spare_rows, padded);
}

/* One call: offsets from per-expert row counts, the layout checked, the
 * emulated path beside the reference. */
enum { LAYOUT_BUCKETS, LAYOUT_RUNS, LAYOUT_RUNS_SCATTERED }; /* scattered: each expert its own block */

static void one_case(epm_ffn_bplan *pl, const int64_t *counts, int E, int hidden, int ffn, int layout, uint64_t *seed)
{
    int64_t *off = malloc((size_t)(E + 1) * sizeof *off);
    assert_non_null(off);
    off[0] = 0;
    for (int e = 0; e < E; e++)
        off[e + 1] = off[e] + counts[e];
    int64_t rows = off[E];
    float *x = malloc((size_t)(rows ? rows : 1) * hidden * sizeof *x); /* exact: ASan sees a read past it */
    float *w = malloc((size_t)E * 3 * ffn * hidden * sizeof *w);
    float *want = malloc((size_t)(rows ? rows : 1) * hidden * sizeof *want);
    float *got = nans(rows * hidden);
    const float **g = calloc((size_t)E, sizeof *g), **u = calloc((size_t)E, sizeof *u);
    const float **d = calloc((size_t)E, sizeof *d);
    assert_true(x && w && want && g && u && d);
    for (int64_t i = 0; i < rows * hidden; i++)
        x[i] = (float)((int)(rnd(seed) % 2001) - 1000) / 1000.0f;
    for (int64_t i = 0; i < (int64_t)E * 3 * ffn * hidden; i++)
        w[i] = (float)((int)(rnd(seed) % 2001) - 1000) / (1000.0f * sqrtf((float)(hidden + ffn)));
    float **own = calloc((size_t)E, sizeof *own);
    assert_non_null(own);
    for (int e = 0; e < E; e++) {
        if (!counts[e])
            continue; /* an idle expert has no weights: the layout must not touch them */
        g[e] = w + (size_t)e * 3 * ffn * hidden;
        if (layout == LAYOUT_RUNS_SCATTERED) { /* a block of its own, up before gate: never fused */
            own[e] = malloc((size_t)3 * ffn * hidden * sizeof **own);
            assert_non_null(own[e]);
            memcpy(own[e] + (size_t)ffn * hidden, g[e], (size_t)ffn * hidden * sizeof **own);
            memcpy(own[e], g[e] + (size_t)ffn * hidden, (size_t)2 * ffn * hidden * sizeof **own);
            g[e] = own[e] + (size_t)ffn * hidden;
            u[e] = own[e];
            d[e] = own[e] + (size_t)2 * ffn * hidden;
            memcpy(own[e] + (size_t)2 * ffn * hidden, w + (size_t)e * 3 * ffn * hidden + (size_t)2 * ffn * hidden,
                   (size_t)ffn * hidden * sizeof **own);
            continue;
        }
        u[e] = g[e] + (size_t)ffn * hidden;
        d[e] = u[e] + (size_t)ffn * hidden;
    }
    assert_int_equal(epm_ref_grouped_ffn(x, off, E, hidden, ffn, g, u, d, want), EPM_OK);
    if (layout == LAYOUT_BUCKETS) {
        assert_int_equal(epm_ffn_bplan_make(pl, off, E), EPM_OK);
        check_layout(pl, off, E);
        emulate(pl, 0, x, hidden, ffn, g, u, d, got);
    } else {
        assert_int_equal(epm_ffn_bplan_make_runs(pl, off, E, (const void *const *)g, (const void *const *)u,
                                                 (const void *const *)d, (size_t)ffn * hidden * sizeof(float)),
                         EPM_OK);
        check_runs(pl, off, E);
        for (int b = 0; b < pl->nb; b++) /* stacked weights fuse gate and up; scattered ones never do */
            assert_int_equal(pl->fused[b], layout == LAYOUT_RUNS);
        emulate(pl, 1, x, hidden, ffn, g, u, d, got);
    }
    for (int64_t i = 0; i < rows * hidden; i++) {
        float tol = 1e-5f * (1.0f + fabsf(want[i]));
        if (!(fabsf(got[i] - want[i]) <= tol))
            fail_msg("row %lld col %lld: padded %g, reference %g (E %d, rows %lld, hidden %d, ffn %d, layout %d)",
                     (long long)(i / hidden), (long long)(i % hidden), got[i], want[i], E, (long long)rows, hidden,
                     ffn, layout);
    }
    for (int e = 0; e < E; e++)
        free(own[e]);
    free(own), free(off), free(x), free(w), free(want), free(got), free(g), free(u), free(d);
}

static void test_shapes(void **state)
{
    (void)state;
    uint64_t seed = 7;
    epm_ffn_bplan pl = {0}; /* reused across calls, as the GPU context does */
    enum { EMAX = 256 };
    int64_t c[EMAX];
    /* buckets; runs over stacked and scattered weights */
    for (int layout = LAYOUT_BUCKETS; layout <= LAYOUT_RUNS_SCATTERED; layout++) {
        /* fine-grained: 256 experts, ~10 rows each, some idle */
        for (int e = 0; e < 256; e++)
            c[e] = rnd(&seed) % 4 == 0 ? 0 : (int64_t)(rnd(&seed) % 20);
        one_case(&pl, c, 256, 8, 4, layout, &seed);
        /* one expert with every row, the rest idle: its batch reads past its own rows */
        memset(c, 0, sizeof c);
        c[5] = 600;
        one_case(&pl, c, 8, 5, 3, layout, &seed);
        /* the last expert busy: its padded rows would run past x */
        memset(c, 0, sizeof c);
        c[0] = 3, c[7] = 37;
        one_case(&pl, c, 8, 6, 4, layout, &seed);
        /* sizes across bucket steps (16-row steps, then wider past 256), one hot expert */
        static const int64_t steps[] = {1, 15, 16, 17, 31, 255, 256, 257, 300, 700};
        for (int e = 0; e < 10; e++)
            c[e] = steps[e];
        one_case(&pl, c, 10, 3, 2, layout, &seed);
        /* nothing at all, and a single expert */
        memset(c, 0, sizeof c);
        one_case(&pl, c, 4, 4, 4, layout, &seed);
        c[0] = 9;
        one_case(&pl, c, 1, 4, 4, layout, &seed);
    }
    epm_ffn_bplan_free(&pl);
}

/* Many random groupings, the layout's invariants only (no arithmetic). */
static void test_random_layouts(void **state)
{
    (void)state;
    uint64_t seed = 11;
    epm_ffn_bplan pl = {0};
    for (int it = 0; it < 300; it++) {
        int E = 1 + (int)(rnd(&seed) % 300);
        int64_t *off = malloc((size_t)(E + 1) * sizeof *off);
        assert_non_null(off);
        off[0] = 0;
        int64_t scale = (int64_t)1 << (rnd(&seed) % 12);
        for (int e = 0; e < E; e++)
            off[e + 1] = off[e] + (rnd(&seed) % 3 == 0 ? 0 : (int64_t)(rnd(&seed) % (uint64_t)scale));
        assert_int_equal(epm_ffn_bplan_make(&pl, off, E), EPM_OK);
        check_layout(&pl, off, E);
        free(off);
    }
    epm_ffn_bplan_free(&pl);
}

/* Runs over pointer arrays with random gaps (uniform, negative, zero, not a
 * multiple of 16), never dereferenced: the run invariants, and every run's
 * entries really at its strides. */
static void test_random_runs(void **state)
{
    (void)state;
    uint64_t seed = 13;
    epm_ffn_bplan pl = {0};
    static char arena[1 << 16]; /* addresses only */
    for (int it = 0; it < 300; it++) {
        int E = 1 + (int)(rnd(&seed) % 300);
        int64_t *off = malloc((size_t)(E + 1) * sizeof *off);
        const void **g = calloc((size_t)E, sizeof *g), **u = calloc((size_t)E, sizeof *u);
        const void **d = calloc((size_t)E, sizeof *d);
        assert_true(off && g && u && d);
        off[0] = 0;
        int64_t scale = (int64_t)1 << (rnd(&seed) % 10);
        size_t at = 0, step = 48;
        for (int e = 0; e < E; e++) {
            off[e + 1] = off[e] + (rnd(&seed) % 5 == 0 ? 0 : 1 + (int64_t)(rnd(&seed) % (uint64_t)scale));
            if (rnd(&seed) % 8 == 0) /* a new stride, sometimes one no batch can take */
                step = (size_t)(rnd(&seed) % 4 == 0 ? rnd(&seed) % 40 : 16 * (1 + rnd(&seed) % 6));
            at = rnd(&seed) % 16 == 0 ? rnd(&seed) % 4096 : at + step; /* now and then a jump, maybe backwards */
            g[e] = arena + at % 40000, u[e] = (const char *)g[e] + 16, d[e] = (const char *)g[e] + 32;
        }
        assert_int_equal(epm_ffn_bplan_make_runs(&pl, off, E, g, u, d, 16), EPM_OK);
        check_runs(&pl, off, E);
        for (int b = 0; b < pl.nb; b++) {
            assert_true(pl.fused[b]);
            int j0 = pl.first[b], e0 = pl.expert[j0];
            for (int j = j0; j < pl.first[b + 1]; j++) {
                int64_t i = j - j0;
                assert_ptr_equal(g[pl.expert[j]], (const char *)g[e0] + i * pl.stride[3 * b]);
                assert_ptr_equal(u[pl.expert[j]], (const char *)u[e0] + i * pl.stride[3 * b + 1]);
                assert_ptr_equal(d[pl.expert[j]], (const char *)d[e0] + i * pl.stride[3 * b + 2]);
                if (j > j0)
                    assert_true(pl.stride[3 * b] > 0 && pl.stride[3 * b] % 16 == 0);
            }
        }
        free(off), free(g), free(u), free(d);
    }
    epm_ffn_bplan_free(&pl);
}

/* A hot expert among stacked ones ends a run instead of padding its
 * neighbours to its rows. */
static void test_hot_expert_runs(void **state)
{
    (void)state;
    enum { E = 256 };
    int64_t off[E + 1];
    const void *g[E], *u[E], *d[E];
    static char arena[E * 48];
    off[0] = 0;
    for (int e = 0; e < E; e++) {
        off[e + 1] = off[e] + (e == 100 ? 2200 : 128);
        g[e] = arena + e * 48, u[e] = arena + e * 48 + 16, d[e] = arena + e * 48 + 32;
    }
    epm_ffn_bplan pl = {0};
    assert_int_equal(epm_ffn_bplan_make_runs(&pl, off, E, g, u, d, 16), EPM_OK);
    check_runs(&pl, off, E);
    assert_int_equal(pl.nb, 3); /* 0-99, 100 alone, 101-255 */
    assert_int_equal(pl.first[1], 100);
    assert_int_equal(pl.first[2], 101);
    assert_int_equal(pl.padded_rows, 255 * 128 + epm_ffn_bucket_rows(2200));
    epm_ffn_bplan_free(&pl);
}

static void test_refusals(void **state)
{
    (void)state;
    epm_ffn_bplan pl = {0};
    int64_t bad[] = {0, 4, 2, 6};
    assert_int_equal(epm_ffn_bplan_make(&pl, bad, 3), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "offsets[2]"));
    int64_t start[] = {1, 4};
    assert_int_equal(epm_ffn_bplan_make(&pl, start, 1), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_ffn_bplan_make(&pl, start, 0), EPM_ERR_INVALID_ARG);
    int64_t huge[] = {0, (int64_t)INT32_MAX + 1};
    assert_int_equal(epm_ffn_bplan_make(&pl, huge, 1), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 0"));
    epm_ffn_bplan_free(&pl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_rows),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_random_layouts),
        cmocka_unit_test(test_random_runs),
        cmocka_unit_test(test_hot_expert_runs),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
