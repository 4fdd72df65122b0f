/* The "cuda" backend beside the C reference, op by op, on the shapes and
 * tolerances of ../unit/kernels_check.h (the CPU test's), float32 and
 * bfloat16. Exits 77 (skip) when cudaGetDeviceCount fails or finds no
 * device. The attention-probabilities output is the one stated limit of the
 * CUDA backend (EPM_ERR_UNSUPPORTED, checked below). The grouped FFN has
 * several paths (cuBLAS grouped GEMM, per-expert GEMMs, padded batches by
 * pointer array or by stride; EPM_CUDA_GROUPED_GEMM picks one when the
 * backend is created): each is forced below, on the shared cases and on
 * many-expert ones (256 experts, top-8, empty experts, odd widths, one hot
 * expert), the padded ones also strictly (a call that falls back fails), and
 * many calls are queued without a sync between them (the pinned staging
 * ring, the growth of the device pointer buffer and of the padded areas). */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/kernels_check.h"
#include "backend.h"

static int setup(void **state) { return kc_setup(state, "cuda"); }
static int teardown(void **state) { return kc_teardown(state); }

static void test_kernels_cuda_linear(void **state) { kc_linear(*state); }
static void test_kernels_cuda_rmsnorm(void **state) { kc_rmsnorm(*state); }
static void test_kernels_cuda_rope(void **state) { kc_rope(*state); }
static void test_kernels_cuda_attention(void **state) { kc_attention(*state, 0); }
static void test_kernels_cuda_router(void **state) { kc_router(*state); }
static void test_kernels_cuda_route(void **state) { kc_route(*state); }
static void test_kernels_cuda_permute_f32(void **state) { kc_permute(*state, EPM_DTYPE_F32); }
static void test_kernels_cuda_permute_bf16(void **state) { kc_permute(*state, EPM_DTYPE_BF16); }
static void test_kernels_cuda_embed_convert(void **state) { kc_embed_convert(*state); }
static void test_kernels_cuda_grouped_ffn_f32(void **state) { assert_true(kc_grouped_ffn(*state, EPM_DTYPE_F32, 0)); }
static void test_kernels_cuda_grouped_ffn_bf16(void **state)
{
    assert_true(kc_grouped_ffn(*state, EPM_DTYPE_BF16, 0));
}

/* ---- the grouped FFN's two paths, many experts ---- */

enum { KC_SKEWED = 100 }; /* slot 0 -> expert 5 for every token, the rest spread, some dropped */

static const kc_ffn_case many_cases[] = {
    {100, 67, 45, 256, 8, KC_RANDOM},     /* 256 experts, odd widths, runs of empty experts */
    {300, 40, 24, 256, 8, KC_DROPS},      /* top-p: some slots empty */
    {64, 33, 20, 256, 8, KC_HALF_EMPTY},  /* every odd expert idle */
    {500, 67, 45, 256, 8, KC_SKEWED},     /* one expert with 500 rows beside experts with a few */
    {200, 256, 128, 64, 6, KC_RANDOM},    /* widths the tensor cores like */
    /* rows of 16-byte multiples: these take the batched path (the ones above fall back) */
    {300, 64, 32, 256, 8, KC_RANDOM},     /* DeepSeek-V3-like: ~9 rows an expert */
    {500, 64, 48, 256, 8, KC_SKEWED},     /* one 500-row expert (its own batch) beside small ones */
    {40, 32, 16, 8, 8, KC_RANDOM},        /* the last expert's padded rows run past x: a spare copy */
    /* ffn wider than hidden, as Mixtral's (every shape above has hidden > ffn) */
    {300, 32, 64, 256, 8, KC_RANDOM},     /* many small experts */
    {200, 48, 96, 8, 2, KC_RANDOM},       /* Mixtral-like: 8 experts, top-2, ~50 rows each */
    {64, 32, 64, 256, 8, KC_HALF_EMPTY},  /* every odd expert idle: runs broken at each */
};

static kc_routing skewed_routing(int64_t n, int E, int K)
{
    int32_t *ids = malloc((size_t)(n ? n : 1) * K * sizeof *ids);
    assert_non_null(ids);
    for (int64_t t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = j == 0 ? 5 : (int)((t * 13 + j * 37) % E);
            ids[t * K + j] = j > 0 && e == 5 ? -1 : e;
        }
    kc_routing r = {n, 0, E, K, ids, NULL, NULL, NULL};
    r.src = malloc((size_t)(n ? n : 1) * K * 4), r.row_of = malloc((size_t)(n ? n : 1) * K * 4);
    r.off = malloc((size_t)(E + 1) * 8);
    assert_true(r.src && r.row_of && r.off);
    assert_int_equal(epm_ref_route(r.ids, n, K, E, r.off, r.src, r.row_of), EPM_OK);
    r.rows = r.off[E];
    return r;
}

/* One case of the grouped FFN on c->fast beside the reference (kc_grouped_ffn's body for one case). */
/* up_first: each expert's weights [up; gate; down] rather than [gate; up;
 * down], so that the strided path cannot fuse gate and up */
static void ffn_case(kc_ctx *c, epm_dtype dt, const kc_ffn_case *k, const char *path, int up_first)
{
    size_t es = epm_dtype_size(dt);
    int h = k->hidden, f = k->ffn, E = k->E;
    kc_routing r = k->mode == KC_SKEWED ? skewed_routing(k->n, E, k->k)
                                        : kc_make_routing(k->n, E, k->k, k->mode, &c->seed);
    float *xf = kc_rnd((size_t)r.rows * h, &c->seed), *wf = kc_rnd((size_t)E * 3 * f * h, &c->seed);
    for (size_t j = 0; j < (size_t)E * 3 * f * h; j++)
        wf[j] *= 2.0f / sqrtf((float)(h + f));
    void *x = kc_as(xf, r.rows * h, dt), *w = kc_as(wf, (int64_t)E * 3 * f * h, dt);
    kc_buf bf[3] = {{x, (size_t)r.rows * h * es, 0, 0}, {w, (size_t)E * 3 * f * h * es, 0, 0},
                    {NULL, (size_t)r.rows * h * es, 0, 0}};
    kc_upload_all(c, bf, 3);
    const void **g[2], **u[2], **d[2];
    void *scr[2];
    epm_kernels *kb[2] = {c->ref, c->fast};
    for (int s = 0; s < 2; s++) {
        g[s] = calloc((size_t)E, sizeof(void *)), u[s] = calloc((size_t)E, sizeof(void *));
        d[s] = calloc((size_t)E, sizeof(void *));
        assert_true(g[s] && u[s] && d[s]);
        char *base = s ? bf[1].fast_d : bf[1].ref_d;
        for (int e = 0; e < E; e++) {
            if (r.off[e + 1] == r.off[e])
                continue; /* an expert with no rows is not loaded: NULL weights */
            g[s][e] = base + ((size_t)e * 3 + (up_first ? 1 : 0)) * f * h * es;
            u[s][e] = base + ((size_t)e * 3 + (up_first ? 0 : 1)) * f * h * es;
            d[s][e] = base + ((size_t)e * 3 + 2) * f * h * es;
        }
        size_t sb = epm_kernels_ops(kb[s])->grouped_ffn_scratch(kb[s], dt, r.rows, h, f);
        assert_int_equal(epm_kernels_ops(kb[s])->alloc(kb[s], sb, &scr[s]), EPM_OK);
    }
    assert_int_equal(c->R->grouped_ffn(c->ref, dt, bf[0].ref_d, r.off, E, h, f, g[0], u[0], d[0], scr[0], bf[2].ref_d),
                     EPM_OK);
    assert_int_equal(
        c->F->grouped_ffn(c->fast, dt, bf[0].fast_d, r.off, E, h, f, g[1], u[1], d[1], scr[1], bf[2].fast_d), EPM_OK);
    int used = 0;
    for (int e = 0; e < E; e++)
        used += r.off[e + 1] > r.off[e];
    char what[160];
    snprintf(what, sizeof what, "grouped_ffn (%s%s) %s n %d hidden %d ffn %d E %d (%d used, %lld rows) k %d mode %d",
             path, up_first ? ", up first" : "", epm_dtype_name(dt), k->n, h, f, E, used, (long long)r.rows, k->k,
             k->mode);
    void *wy = kc_down(c->ref, bf[2].ref_d, bf[2].bytes), *gy = kc_down(c->fast, bf[2].fast_d, bf[2].bytes);
    float *wy32 = kc_to_f32(wy, r.rows * h, dt), *gy32 = kc_to_f32(gy, r.rows * h, dt);
    kc_close(what, gy32, wy32, r.rows * h, dt == EPM_DTYPE_F32 ? KC_F32_TOL : KC_BF16_TOL);
    free(wy), free(gy), free(wy32), free(gy32);
    for (int s = 0; s < 2; s++) {
        kc_free(kb[s], scr[s]);
        free(g[s]), free(u[s]), free(d[s]);
    }
    kc_release(c, bf, 3);
    free(xf), free(wf), free(x), free(w);
    kc_free_routing(&r);
}

/* A cuda backend created with EPM_CUDA_GROUPED_GEMM = mode, in a copy of the
 * fixture's context; mode "streams" is the per-expert path spread over 3 side
 * streams (EPM_CUDA_GROUPED_GEMM = off, EPM_CUDA_FFN_STREAMS = 3: an odd count,
 * fewer streams than experts in most cases, more in some), "batched-streams"
 * and "strided-streams" those paths' batches over 3 side streams. */
/* the modes of the padded paths, which may fall back and so have a strict form */
static int padded_mode(const char *mode) { return !strncmp(mode, "batched", 7) || !strncmp(mode, "strided", 7); }

static kc_ctx with_mode(const kc_ctx *c, const char *mode, int strict)
{
    kc_ctx m = *c;
    const char *dash = strchr(mode, '-'); /* "batched-streams", "strided-streams" */
    int streams = !strcmp(mode, "streams") || dash;
    char path[16] = "off";
    if (dash)
        snprintf(path, sizeof path, "%.*s", (int)(dash - mode), mode);
    else if (!streams)
        snprintf(path, sizeof path, "%s", mode);
    assert_int_equal(setenv("EPM_CUDA_GROUPED_GEMM", path, 1), 0);
    if (streams)
        assert_int_equal(setenv("EPM_CUDA_FFN_STREAMS", "3", 1), 0);
    if (strict) /* a call that cannot take the batched path fails instead of falling back */
        assert_int_equal(setenv("EPM_TEST_CUDA_BATCHED_STRICT", "1", 1), 0);
    epm_status st = epm_kernels_create("cuda", &m.fast);
    unsetenv("EPM_CUDA_GROUPED_GEMM");
    unsetenv("EPM_CUDA_FFN_STREAMS");
    unsetenv("EPM_TEST_CUDA_BATCHED_STRICT");
    assert_int_equal(st, EPM_OK);
    m.F = epm_kernels_ops(m.fast);
    return m;
}

static void many_experts(kc_ctx *c, epm_dtype dt)
{
    size_t ncase = sizeof many_cases / sizeof *many_cases, es = epm_dtype_size(dt);
    for (size_t i = 0; i < ncase; i++) /* the fixture's backend: auto */
        ffn_case(c, dt, &many_cases[i], "auto", 0);
    static const char *const modes[] = {"on", "off", "streams", "batched", "batched-streams", "strided",
                                        "strided-streams"};
    for (int mi = 0; mi < 7; mi++) {
        for (int strict = 0; strict <= padded_mode(modes[mi]); strict++) {
            kc_ctx m = with_mode(c, modes[mi], strict);
            if (!strict)
                assert_true(kc_grouped_ffn(&m, dt, 0)); /* the shared cases on this path (some fall back) */
            for (size_t i = 0; i < ncase; i++) {
                const kc_ffn_case *k = &many_cases[i];
                if (strict && ((k->hidden * es) % 16 || (k->ffn * es) % 16))
                    continue; /* rows that are not 16-byte multiples fall back: checked just above */
                ffn_case(&m, dt, k, modes[mi], 0);
                if (strict && !strncmp(modes[mi], "strided", 7))
                    ffn_case(&m, dt, k, modes[mi], 1); /* gate and up as two batches */
            }
            c->seed = m.seed;
            epm_kernels_destroy(m.fast);
        }
    }
}

static void test_kernels_cuda_grouped_ffn_many_experts_f32(void **state) { many_experts(*state, EPM_DTYPE_F32); }
static void test_kernels_cuda_grouped_ffn_many_experts_bf16(void **state) { many_experts(*state, EPM_DTYPE_BF16); }

/* Calls queued back to back with no sync between them, more than the pinned
 * staging ring has slots, with expert counts that grow the pointer buffers
 * while earlier calls still read them; every output checked afterwards. */
static void queued(kc_ctx *c, epm_dtype dt, const char *mode)
{
    enum { CALLS = 20, H = 40, F = 24, EMAX = 600 };
    static const int ex[CALLS] = {8, 256, 16, 600, 3, 256, 64, 1, 600, 32, 8, 256, 16, 600, 3, 256, 64, 1, 600, 32};
    /* every call here fits the batched and strided paths (16-byte rows, stacked weights), but those
     * with one busy expert (ex 1), which take the plain GEMM chain as the padded paths do by design */
    kc_ctx m = with_mode(c, mode, padded_mode(mode));
    size_t es = epm_dtype_size(dt);
    float *wf = kc_rnd((size_t)EMAX * 3 * F * H, &m.seed);
    for (size_t j = 0; j < (size_t)EMAX * 3 * F * H; j++)
        wf[j] *= 2.0f / sqrtf((float)(H + F));
    void *w = kc_as(wf, (int64_t)EMAX * 3 * F * H, dt);
    void *wd = kc_up(m.fast, w, (size_t)EMAX * 3 * F * H * es);
    const void **g = calloc(EMAX, sizeof(void *)), **u = calloc(EMAX, sizeof(void *));
    const void **d = calloc(EMAX, sizeof(void *));
    assert_true(g && u && d);
    for (int e = 0; e < EMAX; e++) { /* every expert loaded: empty ones are skipped by the backend */
        g[e] = (char *)wd + (size_t)e * 3 * F * H * es;
        u[e] = (char *)wd + ((size_t)e * 3 + 1) * F * H * es;
        d[e] = (char *)wd + ((size_t)e * 3 + 2) * F * H * es;
    }
    kc_routing r[CALLS];
    float *xf[CALLS];
    void *x[CALLS], *xd[CALLS], *yd[CALLS], *sd[CALLS];
    for (int i = 0; i < CALLS; i++) {
        r[i] = kc_make_routing(7 + 13 * i, ex[i], ex[i] < 8 ? ex[i] : 8, i % 3 == 2 ? KC_DROPS : KC_RANDOM, &m.seed);
        xf[i] = kc_rnd((size_t)r[i].rows * H, &m.seed);
        x[i] = kc_as(xf[i], r[i].rows * H, dt);
        xd[i] = kc_up(m.fast, x[i], (size_t)r[i].rows * H * es);
        yd[i] = kc_up(m.fast, NULL, (size_t)r[i].rows * H * es);
        assert_int_equal(m.F->alloc(m.fast, m.F->grouped_ffn_scratch(m.fast, dt, r[i].rows, H, F), &sd[i]), EPM_OK);
    }
    for (int i = 0; i < CALLS; i++) /* no sync in between */
        assert_int_equal(m.F->grouped_ffn(m.fast, dt, xd[i], r[i].off, ex[i], H, F, g, u, d, sd[i], yd[i]), EPM_OK);
    for (int i = 0; i < CALLS; i++) {
        size_t ybytes = (size_t)r[i].rows * H * es;
        void *want = malloc(ybytes ? ybytes : 1);
        void *scr = malloc(m.R->grouped_ffn_scratch(m.ref, dt, r[i].rows, H, F) + 1);
        assert_true(want && scr);
        const void **gh = calloc((size_t)ex[i], sizeof(void *)), **uh = calloc((size_t)ex[i], sizeof(void *));
        const void **dh = calloc((size_t)ex[i], sizeof(void *));
        assert_true(gh && uh && dh);
        for (int e = 0; e < ex[i]; e++) {
            gh[e] = (char *)w + (size_t)e * 3 * F * H * es;
            uh[e] = (char *)w + ((size_t)e * 3 + 1) * F * H * es;
            dh[e] = (char *)w + ((size_t)e * 3 + 2) * F * H * es;
        }
        assert_int_equal(m.R->grouped_ffn(m.ref, dt, x[i], r[i].off, ex[i], H, F, gh, uh, dh, scr, want), EPM_OK);
        void *got = kc_down(m.fast, yd[i], ybytes);
        float *got32 = kc_to_f32(got, r[i].rows * H, dt), *want32 = kc_to_f32(want, r[i].rows * H, dt);
        char what[96];
        snprintf(what, sizeof what, "queued grouped_ffn %s %s call %d (E %d, %lld rows)", mode, epm_dtype_name(dt), i,
                 ex[i], (long long)r[i].rows);
        kc_close(what, got32, want32, r[i].rows * H, dt == EPM_DTYPE_F32 ? KC_F32_TOL : KC_BF16_TOL);
        free(want), free(scr), free(gh), free(uh), free(dh), free(got), free(got32), free(want32);
        kc_free(m.fast, xd[i]), kc_free(m.fast, yd[i]), kc_free(m.fast, sd[i]);
        free(xf[i]), free(x[i]);
        kc_free_routing(&r[i]);
    }
    kc_free(m.fast, wd);
    free(wf), free(w), free(g), free(u), free(d);
    c->seed = m.seed;
    epm_kernels_destroy(m.fast);
}

static void test_kernels_cuda_grouped_ffn_queued_f32(void **state) { queued(*state, EPM_DTYPE_F32, "on"); }
static void test_kernels_cuda_grouped_ffn_queued_bf16(void **state) { queued(*state, EPM_DTYPE_BF16, "on"); }
/* the side streams, forked and joined with events and never a host wait:
 * a call's down GEMMs must wait for its SiLU, which waits for all its gate and
 * up GEMMs, whichever side stream ran them */
static void test_kernels_cuda_ffn_streams_queued_f32(void **state) { queued(*state, EPM_DTYPE_F32, "streams"); }
static void test_kernels_cuda_ffn_streams_queued_bf16(void **state) { queued(*state, EPM_DTYPE_BF16, "streams"); }

/* the batched path: padded areas kept and grown in stream order while
 * earlier calls still use them, buckets (3 side streams in the second pair)
 * joined before the copy back to y */
static void test_kernels_cuda_ffn_batched_queued_f32(void **state) { queued(*state, EPM_DTYPE_F32, "batched"); }
static void test_kernels_cuda_ffn_batched_queued_bf16(void **state) { queued(*state, EPM_DTYPE_BF16, "batched"); }
static void test_kernels_cuda_ffn_batched_streams_queued_f32(void **state)
{
    queued(*state, EPM_DTYPE_F32, "batched-streams");
}
static void test_kernels_cuda_ffn_batched_streams_queued_bf16(void **state)
{
    queued(*state, EPM_DTYPE_BF16, "batched-streams");
}

/* the strided path: runs of stacked experts, gate and up fused */
static void test_kernels_cuda_ffn_strided_queued_f32(void **state) { queued(*state, EPM_DTYPE_F32, "strided"); }
static void test_kernels_cuda_ffn_strided_queued_bf16(void **state) { queued(*state, EPM_DTYPE_BF16, "strided"); }
static void test_kernels_cuda_ffn_strided_streams_queued_bf16(void **state)
{
    queued(*state, EPM_DTYPE_BF16, "strided-streams");
}

static void test_kernels_cuda_ffn_streams_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"0", "17", "4x", "-2", "many"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        epm_kernels *kb = NULL;
        assert_int_equal(setenv("EPM_CUDA_FFN_STREAMS", bad[i], 1), 0);
        epm_status st = epm_kernels_create("cuda", &kb);
        unsetenv("EPM_CUDA_FFN_STREAMS");
        assert_int_equal(st, EPM_ERR_INVALID_ARG);
        assert_null(kb);
        assert_non_null(strstr(epm_last_error(), "EPM_CUDA_FFN_STREAMS"));
        assert_non_null(strstr(epm_last_error(), bad[i]));
        epm_clear_error();
    }
}

static void test_kernels_cuda_grouped_mode_refused(void **state)
{
    (void)state;
    epm_kernels *kb = NULL;
    assert_int_equal(setenv("EPM_CUDA_GROUPED_GEMM", "sometimes", 1), 0);
    epm_status st = epm_kernels_create("cuda", &kb);
    unsetenv("EPM_CUDA_GROUPED_GEMM");
    assert_int_equal(st, EPM_ERR_INVALID_ARG);
    assert_null(kb);
    assert_non_null(strstr(epm_last_error(), "EPM_CUDA_GROUPED_GEMM"));
    epm_clear_error();
}

static void test_kernels_cuda_attention_probs_refused(void **state)
{
    kc_ctx *c = *state;
    float one = 1;
    assert_int_equal(c->F->attention(c->fast, &one, 1, NULL, &one, &one, 1, 1, 1, 1, &one, &one),
                     EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "probs"));
    epm_clear_error();
}

int main(void)
{
    if (epm_kernels_cuda_devices() <= 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_cuda_linear),
        cmocka_unit_test(test_kernels_cuda_rmsnorm),
        cmocka_unit_test(test_kernels_cuda_rope),
        cmocka_unit_test(test_kernels_cuda_attention),
        cmocka_unit_test(test_kernels_cuda_router),
        cmocka_unit_test(test_kernels_cuda_route),
        cmocka_unit_test(test_kernels_cuda_permute_f32),
        cmocka_unit_test(test_kernels_cuda_permute_bf16),
        cmocka_unit_test(test_kernels_cuda_embed_convert),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_f32),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_bf16),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_many_experts_f32),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_many_experts_bf16),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_queued_f32),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_ffn_streams_queued_f32),
        cmocka_unit_test(test_kernels_cuda_ffn_streams_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_ffn_batched_queued_f32),
        cmocka_unit_test(test_kernels_cuda_ffn_batched_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_ffn_batched_streams_queued_f32),
        cmocka_unit_test(test_kernels_cuda_ffn_batched_streams_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_ffn_strided_queued_f32),
        cmocka_unit_test(test_kernels_cuda_ffn_strided_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_ffn_strided_streams_queued_bf16),
        cmocka_unit_test(test_kernels_cuda_grouped_mode_refused),
        cmocka_unit_test(test_kernels_cuda_ffn_streams_refused),
        cmocka_unit_test(test_kernels_cuda_attention_probs_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
