/* The "cpu" backend (BLAS) beside the C reference, op by op, on the shapes
 * and tolerances of kernels_check.h; and backend selection by name. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cpu_gemm_nt.h"
#include "epm_config.h"
#include "half.h"
#include "kernels_check.h"
#include "ops.h"
#include "ops_gpu.h"
#include "runtime_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int setup(void **state) { return kc_setup(state, "cpu"); }
static int teardown(void **state) { return kc_teardown(state); }

static void test_kernels_cpu_rmsnorm(void **state) { kc_rmsnorm(*state); }
static void test_kernels_cpu_rope(void **state) { kc_rope(*state); }
/* on 1, 2 and 3 threads; and the same bits whatever the thread count (the
 * runtime's ranks may each run a different number): a long row (several
 * position ranges, merged) and a few short ones */
static void test_kernels_cpu_attention(void **state)
{
#ifdef _OPENMP
    const int was = omp_get_max_threads();
    for (int t = 1; t <= 3; t++) {
        omp_set_num_threads(t);
        kc_attention(*state, 1);
    }
    kc_ctx *c = *state;
    enum { T = 1100, H = 8, KV = 2, D = 64, N = 3 };
    float *q = kc_rnd((size_t)N * H * D, &c->seed), *kc = kc_rnd((size_t)T * KV * D, &c->seed);
    float *vc = kc_rnd((size_t)T * KV * D, &c->seed), *o1 = malloc(sizeof(float) * N * H * D);
    float *ot = malloc(sizeof(float) * N * H * D);
    const int32_t pos[N] = {T - 1, 300, 2};
    omp_set_num_threads(1);
    assert_int_equal(epm_cpu_attention(q, N, pos, kc, vc, T, H, KV, D, o1, NULL), EPM_OK);
    for (int t = 2; t <= 5; t++) {
        omp_set_num_threads(t);
        assert_int_equal(epm_cpu_attention(q, N, pos, kc, vc, T, H, KV, D, ot, NULL), EPM_OK);
        assert_memory_equal(o1, ot, sizeof(float) * N * H * D);
        assert_int_equal(epm_cpu_attention(q, 1, pos, kc, vc, T, H, KV, D, ot, NULL), EPM_OK);
        assert_memory_equal(o1, ot, sizeof(float) * H * D);
    }
    omp_set_num_threads(was);
    free(q), free(kc), free(vc), free(o1), free(ot);
#else
    kc_attention(*state, 1);
#endif
}
/* The low-precision caches' shapes: T, heads, kv_heads, head_dim (no GQA
 * with a lone 8-wide step: 13, 24; groups of 3, 5 = 4 + 1, 6 = 4 + 2, 8 and
 * 16, positions not a multiple of 4) */
static const int att_shapes[][4] = {{1, 1, 1, 1},      {9, 3, 3, 5},     {40, 4, 2, 67},   {50, 3, 3, 13},
                                    {50, 2, 2, 24},    {300, 8, 2, 64},  {600, 4, 1, 576}, {1100, 2, 2, 128},
                                    {300, 6, 2, 13},   {263, 10, 2, 24}, {257, 12, 2, 1},  {131, 16, 2, 7},
                                    {67, 16, 1, 128}};

/* a head row of hd values as an fp8 cache holds it (runtime_kv.c's rule:
 * its largest magnitude over 448, 1 for an all-zero row), and x back as
 * the values it stands for */
static void kc_fp8_row(float *x, int hd, uint8_t *q, float *scale)
{
    *scale = epm_fp8_block_put(q, x, hd);
    for (int j = 0; j < hd; j++)
        x[j] = epm_f8e4m3_to_f32(q[j]) * *scale;
}

/* The fp8 K/V cache (run --kv-dtype fp8): the reference is its float32 self
 * on the values the codes and scales stand for, bit for bit; the CPU kernel,
 * which multiplies each head row's dot products and value sums by its scale
 * once, is within the float tolerance of it and gives the same bits on 1, 2
 * and 3 threads. The bf16 test's shapes, with rows spanning 2^-20 of their
 * largest values (subnormal codes), an all-zero row, and a V row holding
 * every code: at one position its output is each code's value exactly */
static void test_kernels_cpu_attention_fp8(void **state)
{
    kc_ctx *c = *state;
    for (size_t k = 0; k < sizeof att_shapes / sizeof *att_shapes; k++) {
        const int T = att_shapes[k][0], H = att_shapes[k][1], KV = att_shapes[k][2], D = att_shapes[k][3];
        const size_t nkv = (size_t)T * KV * D, rows = (size_t)T * KV;
        const int32_t pos[3] = {T - 1, T / 3, 0};
        const int64_t N = T > 2 ? 3 : 1;
        float *q = kc_rnd((size_t)N * H * D, &c->seed), *kf = kc_rnd(nkv, &c->seed), *vf = kc_rnd(nkv, &c->seed);
        uint8_t *k8 = malloc(nkv), *v8 = malloc(nkv);
        float *ks = malloc(rows * sizeof *ks), *vs = malloc(rows * sizeof *vs);
        float *o[4], *p[4];
        for (int i = 0; i < 4; i++) {
            o[i] = malloc(sizeof(float) * (size_t)N * H * D);
            p[i] = malloc(sizeof(float) * (size_t)H * N * T);
        }
        for (size_t i = 0; i < nkv; i++) {
            kf[i] *= 3.0f;
            if (i % 7 == 3) /* far below the row's largest: subnormal codes (x / scale in [2^-9, 2^-6)), and zeros */
                kf[i] *= 1e-5f, vf[i] *= 1e-5f;
        }
        if (rows > 2)
            memset(vf + D, 0, (size_t)D * sizeof *vf), memset(kf + 2 * (size_t)D, 0, (size_t)D * sizeof *kf);
        for (size_t r = 0; r < rows; r++) {
            kc_fp8_row(kf + r * D, D, k8 + r * D, ks + r);
            kc_fp8_row(vf + r * D, D, v8 + r * D, vs + r);
        }
        assert_int_equal(epm_ref_attention(q, N, pos, kf, vf, T, H, KV, D, o[0], p[0]), EPM_OK);
        assert_int_equal(epm_ref_attention_fp8(q, N, pos, k8, ks, v8, vs, T, H, KV, D, o[1], p[1]), EPM_OK);
        assert_memory_equal(o[0], o[1], sizeof(float) * (size_t)N * H * D);
        assert_memory_equal(p[0], p[1], sizeof(float) * (size_t)H * N * T);
#ifdef _OPENMP
        const int was = omp_get_max_threads();
#endif
        for (int t = 1; t <= 3; t++) {
#ifdef _OPENMP
            omp_set_num_threads(t);
#endif
            assert_int_equal(epm_cpu_attention_fp8(q, N, pos, k8, ks, v8, vs, T, H, KV, D, o[t == 1 ? 2 : 3],
                                                   p[t == 1 ? 2 : 3]),
                             EPM_OK);
            if (t > 1) {
                assert_memory_equal(o[2], o[3], sizeof(float) * (size_t)N * H * D);
                assert_memory_equal(p[2], p[3], sizeof(float) * (size_t)H * N * T);
            }
        }
#ifdef _OPENMP
        omp_set_num_threads(was);
#endif
        /* the codes decoded by bit operations (EPM_CPU_ISA=off), not F16C's
         * conversion: the same bits */
        const epm_cpu_isa isa = epm_cpu_isa_active();
        epm_cpu_isa_force(EPM_CPU_ISA_OFF);
        assert_int_equal(epm_cpu_attention_fp8(q, N, pos, k8, ks, v8, vs, T, H, KV, D, o[3], p[3]), EPM_OK);
        epm_cpu_isa_force(isa);
        assert_memory_equal(o[2], o[3], sizeof(float) * (size_t)N * H * D);
        assert_memory_equal(p[2], p[3], sizeof(float) * (size_t)H * N * T);
        double m = 0, e = 0, pe = 0;
        for (size_t i = 0; i < (size_t)N * H * D; i++) {
            m = fmax(m, fabs(o[1][i]));
            e = fmax(e, fabs((double)o[2][i] - o[1][i]));
        }
        for (size_t i = 0; i < (size_t)H * N * T; i++)
            pe = fmax(pe, fabs((double)p[2][i] - p[1][i]));
        if (e > 1e-5 * m + 1e-6 || pe > 1e-5)
            fail_msg("T %d heads %d/%d hd %d: cpu fp8 attention %g off the reference (max %g), probs %g", T, H, KV,
                     D, e, m, pe);
        free(q), free(kf), free(vf), free(k8), free(v8), free(ks), free(vs);
        for (int i = 0; i < 4; i++)
            free(o[i]), free(p[i]);
    }
    /* the ops tables the runtime picks from carry these */
    assert_ptr_equal(epm_ops_ref()->attention_w8, epm_ref_attention_fp8);
    assert_ptr_equal(epm_ops_blas()->attention_w8, epm_cpu_attention_fp8);
    /* every code, NaN's included, decoded exactly: one position, one head,
     * a V row of all 256 codes at scale 1 (the output is that row, 0 + its
     * values) */
    {
        enum { D = 256 };
        uint8_t kq[D] = {0}, vq[D];
        float one = 1.0f, qv[D] = {0}, out[D];
        for (int j = 0; j < D; j++)
            vq[j] = (uint8_t)j;
        const int32_t p0 = 0;
        const epm_cpu_isa isa = epm_cpu_isa_active();
        for (int way = 0; way < 3; way++) { /* the reference, the CPU's two decodings */
            epm_cpu_isa_force(way == 2 ? EPM_CPU_ISA_OFF : isa);
            assert_int_equal((way ? epm_cpu_attention_fp8 : epm_ref_attention_fp8)(qv, 1, &p0, kq, &one, vq, &one, 1,
                                                                                    1, 1, D, out, NULL),
                             EPM_OK);
            for (int j = 0; j < D; j++) {
                float want = epm_f8e4m3_to_f32((uint8_t)j);
                if (isnan(want) ? !isnan(out[j]) : out[j] != want) /* == : the sum 0 + -0 is +0 */
                    fail_msg("%s fp8 attention: code 0x%02x read as %g, not %g",
                             way == 0 ? "ref" : way == 1 ? "cpu" : "cpu (EPM_CPU_ISA=off)", j, out[j], want);
            }
        }
        epm_cpu_isa_force(isa);
    }
    /* bad arguments are named as the fp8 cache's, its scales included */
    float x[4] = {0};
    uint8_t b[4] = {0};
    const int32_t bad = 4, zero = 0;
    assert_int_equal(epm_cpu_attention_fp8(x, 1, &bad, b, x, b, x, 4, 1, 1, 1, x, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "fp8 cache"));
    assert_int_equal(epm_cpu_attention_fp8(x, 1, &zero, b, NULL, b, x, 4, 1, 1, 1, x, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "ks is NULL"));
    assert_int_equal(epm_ref_attention_fp8(x, 1, &zero, b, x, b, NULL, 4, 1, 1, 1, x, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "vs is NULL"));
}

/* The runtime's fp8 cache (runtime_kv.c) as the kernels read it: rows put
 * whole, two KV heads of different magnitudes, come back from epm_kv_get
 * as each code times its head row's scale, over any range (one crossing
 * head rows too), within e4m3's rounding of what was put; its bytes are a
 * code per value and a scale per head row; and the CPU kernel on its codes
 * and scales is the reference on those values */
static void test_kernels_cpu_runtime_fp8_cache(void **state)
{
    kc_ctx *c = *state;
    const int shapes[][3] = {{37, 2, 16}, {20, 1, 40}}; /* T, kv heads, head_dim (one head: MLA's latent row) */
    for (int k = 0; k < 2; k++) {
        const int T = shapes[k][0], KV = shapes[k][1], D = shapes[k][2], W = KV * D, H = 2 * KV;
        rt r;
        memset(&r, 0, sizeof r);
        r.kvt = EPM_KV_FP8, r.max_len = T + 9, r.kv_w = W, r.kv_grp = D; /* (a cache of its own T rows) */
        const size_t n = (size_t)T * W, bytes = epm_kv_bytes(&r, (int64_t)n);
        assert_int_equal(bytes, n + (size_t)T * KV * sizeof(float));
        void *kc = calloc(bytes, 1), *vc = calloc(bytes, 1);
        float *kf = kc_rnd(n, &c->seed), *vf = kc_rnd(n, &c->seed), *kd = malloc(n * sizeof *kd);
        float *vd = malloc(n * sizeof *vd), *part = malloc(n * sizeof *part), *q = kc_rnd((size_t)H * D, &c->seed);
        float o[2][2 * 2 * 40];
        for (size_t i = 0; i < n; i++)
            if ((i / D) % 2) /* every other head row 1000 times larger */
                kf[i] *= 1000.0f, vf[i] *= 1000.0f;
        for (int t = 0; t < T; t++) {
            epm_kv_put(&r, kc, T, (int64_t)t * W, W, kf + (size_t)t * W);
            epm_kv_put(&r, vc, T, (int64_t)t * W, W, vf + (size_t)t * W);
        }
        assert_int_equal(epm_kv_cache_bytes(&r, T), bytes);
        epm_kv_get(&r, kc, T, 0, (int)n, kd);
        epm_kv_get(&r, vc, T, 0, (int)n, vd);
        const uint8_t *codes = epm_kv_codes(&r, T, kc);
        const float *sc = epm_kv_scales(&r, kc);
        for (size_t i = 0; i < n; i++) {
            assert_true(kd[i] == epm_f8e4m3_to_f32(codes[i]) * sc[i / D]);
            if (fabsf(kd[i] - kf[i]) > 0.0625f * fabsf(kf[i]) + sc[i / D] * 0x1p-10f)
                fail_msg("shape %d: element %zu put as %g, read as %g (scale %g)", k, i, kf[i], kd[i], sc[i / D]);
        }
        const int64_t off = D / 2 + 3, len = (int64_t)2 * D + 5 < (int64_t)n - off ? 2 * D + 5 : (int64_t)n - off;
        epm_kv_get(&r, kc, T, off, (int)len, part);
        assert_memory_equal(part, kd + off, (size_t)len * sizeof *part);
        const int32_t pos = T - 1;
        assert_int_equal(epm_cpu_attention_fp8(q, 1, &pos, codes, sc, epm_kv_codes(&r, T, vc), epm_kv_scales(&r, vc), T,
                                               H, KV, D, o[0], NULL),
                         EPM_OK);
        assert_int_equal(epm_ref_attention(q, 1, &pos, kd, vd, T, H, KV, D, o[1], NULL), EPM_OK);
        double m = 0, e = 0;
        for (int i = 0; i < H * D; i++)
            m = fmax(m, fabs(o[1][i])), e = fmax(e, fabs((double)o[0][i] - o[1][i]));
        if (e > 1e-5 * m + 1e-6)
            fail_msg("shape %d: the kernel on the runtime's cache is %g off the reference (max %g)", k, e, m);
        free(kc), free(vc), free(kf), free(vf), free(kd), free(vd), free(part), free(q);
    }
}

/* 1 when the file at a path containing name is mapped into this process */
static int mapped(const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, name) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* cuBLAS is not linked (its initialisers cost every process ~0.45 s) but
 * opened with the first GPU context: in a CUDA build it is absent until
 * then and loads without a GPU; elsewhere the call says the build has none */
static void test_kernels_cpu_cublas_on_demand(void **state)
{
    (void)state;
    assert_false(mapped("libcublas"));
#if EPM_HAVE_CUDA
    assert_int_equal(epm_gpu_cublas_open(), EPM_OK);
    assert_true(mapped("libcublas"));
    assert_int_equal(epm_gpu_cublas_open(), EPM_OK); /* once */
#else
    assert_int_equal(epm_gpu_cublas_open(), EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "without CUDA"));
#endif
}

/* The bf16 K/V cache (run --kv-dtype bf16): each kernel is its float32
 * self on the widened cache, bit for bit (the reference, and the CPU
 * kernel on 1-3 threads, outputs and A-MoD's probs), so the float32 tests
 * above cover its arithmetic; and the CPU kernel is within the float
 * tolerance of the reference. Shapes: odd head widths (vector tails), GQA,
 * one KV head as wide as MLA's latent row, rows past the kernel's 256-position
 * ranges, position 0. */
static void test_kernels_cpu_attention_bf16(void **state)
{
    kc_ctx *c = *state;
    for (size_t k = 0; k < sizeof att_shapes / sizeof *att_shapes; k++) {
        const int T = att_shapes[k][0], H = att_shapes[k][1], KV = att_shapes[k][2], D = att_shapes[k][3];
        const size_t nkv = (size_t)T * KV * D;
        const int32_t pos[3] = {T - 1, T / 3, 0};
        const int64_t N = T > 2 ? 3 : 1;
        float *q = kc_rnd((size_t)N * H * D, &c->seed), *kf = kc_rnd(nkv, &c->seed), *vf = kc_rnd(nkv, &c->seed);
        uint16_t *kh = malloc(nkv * sizeof *kh), *vh = malloc(nkv * sizeof *vh);
        float *o[4], *p[4];
        for (int i = 0; i < 4; i++) {
            o[i] = malloc(sizeof(float) * (size_t)N * H * D);
            p[i] = malloc(sizeof(float) * (size_t)H * N * T);
        }
        for (size_t i = 0; i < nkv; i++) {
            kh[i] = epm_f32_to_bf16(kf[i] * 3.0f), kf[i] = epm_bf16_to_f32(kh[i]);
            vh[i] = epm_f32_to_bf16(vf[i]), vf[i] = epm_bf16_to_f32(vh[i]);
        }
        assert_int_equal(epm_ref_attention(q, N, pos, kf, vf, T, H, KV, D, o[0], p[0]), EPM_OK);
        assert_int_equal(epm_ref_attention_bf16(q, N, pos, kh, vh, T, H, KV, D, o[1], p[1]), EPM_OK);
        assert_memory_equal(o[0], o[1], sizeof(float) * (size_t)N * H * D);
        assert_memory_equal(p[0], p[1], sizeof(float) * (size_t)H * N * T);
#ifdef _OPENMP
        const int was = omp_get_max_threads();
#endif
        for (int t = 1; t <= 3; t++) {
#ifdef _OPENMP
            omp_set_num_threads(t);
#endif
            assert_int_equal(epm_cpu_attention(q, N, pos, kf, vf, T, H, KV, D, o[2], p[2]), EPM_OK);
            assert_int_equal(epm_cpu_attention_bf16(q, N, pos, kh, vh, T, H, KV, D, o[3], p[3]), EPM_OK);
            assert_memory_equal(o[2], o[3], sizeof(float) * (size_t)N * H * D);
            assert_memory_equal(p[2], p[3], sizeof(float) * (size_t)H * N * T);
        }
#ifdef _OPENMP
        omp_set_num_threads(was);
#endif
        double m = 0, e = 0;
        for (size_t i = 0; i < (size_t)N * H * D; i++) {
            m = fmax(m, fabs(o[1][i]));
            e = fmax(e, fabs((double)o[3][i] - o[1][i]));
        }
        if (e > 1e-5 * m + 1e-6)
            fail_msg("T %d heads %d/%d hd %d: cpu bf16 attention %g off the reference (max %g)", T, H, KV, D, e, m);
        /* the ops tables the runtime picks from carry these */
        assert_ptr_equal(epm_ops_ref()->attention_w16, epm_ref_attention_bf16);
        assert_ptr_equal(epm_ops_blas()->attention_w16, epm_cpu_attention_bf16);
        free(q), free(kf), free(vf), free(kh), free(vh);
        for (int i = 0; i < 4; i++)
            free(o[i]), free(p[i]);
    }
    /* bad arguments are named as the bf16 cache's */
    float x[4] = {0};
    uint16_t h[4] = {0};
    const int32_t bad = 4;
    assert_int_equal(epm_cpu_attention_bf16(x, 1, &bad, h, h, 4, 1, 1, 1, x, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "bf16 cache"));
    assert_int_equal(epm_ref_attention_bf16(x, 1, &bad, NULL, h, 8, 1, 1, 1, x, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "kc is NULL"));
}
static void test_kernels_cpu_router(void **state) { kc_router(*state); }
static void test_kernels_cpu_route(void **state) { kc_route(*state); }
static void test_kernels_cpu_permute_f32(void **state) { kc_permute(*state, EPM_DTYPE_F32); }
static void test_kernels_cpu_permute_bf16(void **state) { kc_permute(*state, EPM_DTYPE_BF16); }
static void test_kernels_cpu_embed_convert(void **state) { kc_embed_convert(*state); }

/* Each instruction set the CPU GEMM can take here, then back to the one
 * the process started with: every way through the CPU FFN runs. */
#define FOR_EACH_ISA(isa)                                                                                          \
    for (int isa = EPM_CPU_ISA_OFF, was_ = (int)epm_cpu_isa_active(), best_ = (int)epm_cpu_isa_best();             \
         isa <= best_ ? (epm_cpu_isa_force((epm_cpu_isa)isa), 1) : (epm_cpu_isa_force((epm_cpu_isa)was_), 0); isa++)

/* 1 and 3 threads where OpenMP is on, then back to the count the process
 * started with; one thread without it */
#ifdef _OPENMP
#define FOR_THREADS(t)                                                                                         \
    for (int t = 1, was_t_ = omp_get_max_threads();                                                           \
         t <= 3 ? (omp_set_num_threads(t), 1) : (omp_set_num_threads(was_t_), 0); t += 2)
#else
#define FOR_THREADS(t) for (int t = 1; t <= 1; t++)
#endif

/* few rows go through the CPU GEMM, more through the BLAS */
static void test_kernels_cpu_linear(void **state)
{
    FOR_EACH_ISA(isa)
        kc_linear(*state);
}

static void test_kernels_cpu_grouped_ffn_f32(void **state)
{
    FOR_EACH_ISA(isa)
        assert_true(kc_grouped_ffn(*state, EPM_DTYPE_F32, 0));
}

/* bf16 rows and weights: the weights stay bf16 (cpu_ffn_bf16.c), beside the
 * reference's widened float32 at the bf16 tolerance. */
static void test_kernels_cpu_grouped_ffn_bf16(void **state)
{
    FOR_EACH_ISA(isa)
        assert_true(kc_grouped_ffn(*state, EPM_DTYPE_BF16, 0));
}

/* off[E + 1] of experts with rows[e] rows each; returns the total */
static int64_t offsets_of(const int64_t *rows, int E, int64_t *off)
{
    off[0] = 0;
    for (int e = 0; e < E; e++)
        off[e + 1] = off[e] + rows[e];
    return off[E];
}

/* The bf16-weight kernel with float32 rows is float32 math on the widened
 * weights: the reference on them, to float32 tolerance (only the order of
 * the additions differs). Rows per expert cross the direct kernel's limit
 * (EPM_CPU_FFN_W16_DIRECT_ROWS), the CPU GEMM's (EPM_GEMM_NT_MAX_ROWS) and
 * the chunk (1024, also for an expert after another); widths are odd, below
 * one paired block of 16 or exact blocks; panels are automatic, or a few
 * rows each so that several panels and a short last one run on small
 * weights. Each weight matrix is its own allocation (the sanitizer build sees
 * a read past one), and the cases run on 1 and 3 threads where OpenMP is on
 * (the direct kernel splits output features), with each instruction set the
 * CPU GEMM can take here and with it off (the panels then take every chunk
 * past the direct kernel's). */
static void test_kernels_cpu_w16_is_f32_on_widened(void **state)
{
    kc_ctx *c = *state;
    enum { DIRECT = EPM_CPU_FFN_W16_DIRECT_ROWS, NT = EPM_GEMM_NT_MAX_ROWS };
    static const struct {
        int H, F;
        int64_t rows[6];
        int panel;
    } cases[] = {
        {1, 1, {0, 1, 0, 2, 0, 0}, 0},          {7, 9, {1, 2, 3, 4, 5, 6}, 0},
        {23, 17, {5, 0, DIRECT, 9, DIRECT + 1, 7}, 3}, {67, 45, {0, 0, 0, 0, 0, 80}, 7},
        {16, 33, {3, 1030, 0, 0, 0, 0}, 0},      {9, 16, {1030, 0, 0, 0, 0, 0}, 5},
        {33, 48, {2, 7, 0, 0, 1, 0}, 0},         {48, 15, {0, 3, 0, 0, 0, 6}, 0},
        {257, 300, {1, 2, 3, 4, 12, 0}, 0},      {257, 300, {0, 0, 4, 0, 0, 70}, 0},
        {257, 300, {0, 0, 0, 0, 0, 66}, 64},    {7, 9, {NT, NT + 1, 0, 3, 0, 0}, 0},
    };
    enum { E = 6 };
    FOR_EACH_ISA(isa)
    FOR_THREADS(nthr) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int H = cases[i].H, F = cases[i].F;
            int64_t off[E + 1], R = offsets_of(cases[i].rows, E, off), fh = (int64_t)F * H;
            float *x = kc_rnd((size_t)R * H + 1, &c->seed);
            uint16_t *w[3 * E];
            float *ww[3 * E];
            for (int j = 0; j < 3 * E; j++) {
                float *wf = kc_rnd((size_t)fh, &c->seed);
                for (int64_t q = 0; q < fh; q++)
                    wf[q] *= 2.0f / sqrtf((float)(H + F));
                w[j] = kc_as(wf, fh, EPM_DTYPE_BF16);
                ww[j] = kc_to_f32(w[j], fh, EPM_DTYPE_BF16);
                free(wf);
            }
            const uint16_t *g[E], *u[E], *d[E];
            const float *gf[E], *uf[E], *df[E];
            for (int e = 0; e < E; e++) {
                g[e] = w[3 * e], u[e] = w[3 * e + 1], d[e] = w[3 * e + 2];
                gf[e] = ww[3 * e], uf[e] = ww[3 * e + 1], df[e] = ww[3 * e + 2];
            }
            int64_t busiest = 0;
            for (int e = 0; e < E; e++)
                busiest = cases[i].rows[e] > busiest ? cases[i].rows[e] : busiest;
            size_t sn = epm_cpu_ffn_w16_scratch_floats(busiest, H, F, cases[i].panel);
            float *scr = malloc((sn + 1) * sizeof *scr), *y = malloc(((size_t)R * H + 1) * sizeof *y);
            float *want = malloc(((size_t)R * H + 1) * sizeof *want);
            for (size_t j = 0; j < sn; j++)
                scr[j] = NAN;
            for (int64_t j = 0; j < R * H; j++)
                y[j] = NAN; /* a row never written stays NaN and fails below */
            assert_int_equal(epm_cpu_grouped_ffn_w16_panels(x, off, E, H, F, g, u, d, scr, y, cases[i].panel),
                             EPM_OK);
            assert_int_equal(epm_ref_grouped_ffn(x, off, E, H, F, gf, uf, df, want), EPM_OK);
            char what[128];
            snprintf(what, sizeof what, "w16 case %zu (hidden %d, ffn %d, panel %d, %d threads, cpu gemm %s)", i, H,
                     F, cases[i].panel, nthr, epm_cpu_isa_name((epm_cpu_isa)isa));
            kc_close(what, y, want, R * H, KC_F32_TOL);
            free(x), free(scr), free(y), free(want);
            for (int j = 0; j < 3 * E; j++)
                free(w[j]), free(ww[j]);
        }
    }
    /* an expert with rows but no weights is refused by name */
    const int64_t off[3] = {0, 1, 3};
    uint16_t wz[4] = {0};
    const uint16_t *some[2] = {wz, NULL};
    float x[8] = {0}, y[8], scr[64];
    assert_int_equal(epm_cpu_grouped_ffn_w16(x, off, 2, 2, 1, some, some, some, scr, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1 has 2 rows but no weights"));
    epm_clear_error();
}

/* The FP8 decoding of the fast path gives, for every non-NaN code and
 * scales from 2^-140 (subnormal products) to 2^119, negative ones too, in
 * blocks of every width and with a partial last block, under each
 * instruction set, the bits of the scalar formula: bf16(e4m3(q) x scale). */
static void test_kernels_cpu_w8_decode(void **state)
{
    (void)state;
    enum { K = 254 + 7 };
    uint8_t q[2 * K];
    for (int i = 0, c = 0; i < 2 * K; i++, c++) {
        c = (c & 0x7f) == 0x7f ? c + 1 : c;
        q[i] = (uint8_t)c;
    }
    /* the AVX-512 table decoding's range, [2^-120, 2^119) in magnitude, on
     * both sides of each end */
    static const float scales[] = {1.0f,      3.7e-3f,    0x1p-140f,        1e30f,           0.333f,   -7.0f,
                                   0x1p-120f, -0x1p-120f, 0x1.8p-121f,      0x1.fffffep118f, 0x1p119f, -0x1.8p119f,
                                   0.0f,      -0x1.8p-60f};
    static const int bcs[] = {1, 5, 8, 16, 32, 128, 300};
    float out[2 * K];
    const size_t nscales = sizeof scales / sizeof *scales;
    FOR_EACH_ISA(isa)
    for (size_t b = 0; b < sizeof bcs / sizeof *bcs; b++)
    for (size_t first = 0; first < nscales; first++) { /* every scale in every block position */
        int bc = bcs[b], nsc = (K + bc - 1) / bc;
        float *sc = malloc(2 * (size_t)nsc * sizeof *sc);
        for (int j = 0; j < 2 * nsc; j++)
            sc[j] = scales[(first + (size_t)j) % nscales];
        const epm_w8 w = {q, sc, 1, bc};
        epm_cpu_w8_rows(&w, 0, 2, K, out);
        for (int r = 0; r < 2; r++)
            for (int j = 0; j < K; j++) {
                float want = epm_bf16_to_f32(epm_f32_to_bf16(epm_f8e4m3_to_f32(q[r * K + j]) * sc[r * nsc + j / bc]));
                if (memcmp(&want, &out[r * K + j], sizeof want) != 0)
                    fail_msg("%s: block width %d, row %d, column %d (code 0x%02x): %a, want %a",
                             epm_cpu_isa_name((epm_cpu_isa)isa), bc, r, j, q[r * K + j], (double)out[r * K + j],
                             (double)want);
            }
        /* column ranges starting and ending inside blocks (the CPU GEMM
         * decodes a k-block at a time), a row stride past the range: the
         * same bits, and nothing written outside the range */
        static const int ranges[][2] = {{5, 200}, {24, 48}, {0, K}, {K - 1, K}, {33, 34}, {100, 261}};
        for (size_t g = 0; g < sizeof ranges / sizeof *ranges; g++) {
            const int c0 = ranges[g][0], c1 = ranges[g][1], ld = c1 - c0 + 3;
            float blk[2 * (K + 3) + 8];
            for (size_t j = 0; j < sizeof blk / sizeof *blk; j++)
                blk[j] = -999.0f;
            epm_cpu_w8_block(&w, 0, 2, K, c0, c1, blk + 4, ld);
            for (int j = 0; j < (int)(sizeof blk / sizeof *blk); j++) {
                int r = (j - 4) / ld, col = (j - 4) % ld + c0;
                int inside = j >= 4 && r < 2 && col < c1;
                float want = inside ? out[r * K + col] : -999.0f;
                if (memcmp(&want, &blk[j], sizeof want) != 0)
                    fail_msg("%s: block width %d, columns [%d, %d), row stride %d: element %d is %a, want %a",
                             epm_cpu_isa_name((epm_cpu_isa)isa), bc, c0, c1, ld, j - 4, (double)blk[j],
                             (double)want);
            }
        }
        free(sc);
    }
}

/* A random FP8 matrix: codes below 2^3 in magnitude (no NaN) and scales
 * of 1/16 to 1/64 per block of br x bc. */
static epm_w8 w8_random(int rows, int cols, int br, int bc, uint64_t *seed)
{
    int64_t n = (int64_t)rows * cols, ns = (int64_t)((rows + br - 1) / br) * ((cols + bc - 1) / bc);
    uint8_t *q = malloc((size_t)n + 1);
    float *sc = malloc((size_t)ns * sizeof *sc);
    assert_true(q && sc);
    for (int64_t i = 0; i < n; i++) {
        uint32_t r = (uint32_t)(epm_rand_unit(seed) * 4294967296.0);
        q[i] = (uint8_t)((r & 0x80) | ((r >> 8) % 0x50));
    }
    for (int64_t i = 0; i < ns; i++)
        sc[i] = (float)(1.0 / 64 + epm_rand_unit(seed) * 3.0 / 64);
    return (epm_w8){q, sc, br, bc};
}

/* The FP8-weight FFN (DeepSeek-V3's experts held as stored) against the
 * reference table's, which dequantises one weight at a time and runs the
 * float32 reference: float32 tolerance. Rows per expert cross the direct
 * kernel's limit (4) and the chunk; widths are odd, shorter than a block or
 * several blocks with a partial last one; 1 and 3 threads. */
static void test_kernels_cpu_w8_is_ref(void **state)
{
    kc_ctx *c = *state;
    static const struct {
        int H, F, br, bc;
        int64_t rows[5];
    } cases[] = {
        {1, 1, 1, 1, {0, 1, 0, 2, 0}},        {37, 29, 16, 24, {1, 2, 3, 4, 5}},
        {64, 40, 128, 128, {0, 0, 7, 0, 1}}, {23, 9, 5, 3, {1030, 0, 0, 1, 0}},
        {136, 96, 16, 24, {0, 4, 66, 0, 3}}, {256, 128, 128, 128, {1, 2, 3, 4, 20}},
        {256, 384, 128, 128, {0, 9, 0, 0, 40}}, /* decoded on several threads */
        /* gate and up wider than the CPU GEMM's k-blocks (1024, and 512 past
         * 128 rows), blocks of 24 straddling them: decoded a k-block at a time */
        {1100, 40, 16, 24, {0, 6, 0, 0, 130}},
        /* panels of whole rows of 69 blocks: past the 64 tables kept per row block */
        {2200, 16, 8, 32, {0, 0, 200, 0, 3}},
    };
    enum { E = 5 };
    const epm_ops *ref = epm_ops_ref(), *blas = epm_ops_blas();
    assert_non_null(ref->grouped_swiglu_w8);
    assert_non_null(blas->grouped_swiglu_w8);
    FOR_EACH_ISA(isa)
    FOR_THREADS(nthr) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int H = cases[i].H, F = cases[i].F;
            int64_t off[E + 1], R = offsets_of(cases[i].rows, E, off);
            float *x = kc_rnd((size_t)R * H + 1, &c->seed);
            epm_w8 g[E], u[E], d[E];
            for (int e = 0; e < E; e++) {
                g[e] = w8_random(F, H, cases[i].br, cases[i].bc, &c->seed);
                u[e] = w8_random(F, H, cases[i].br, cases[i].bc, &c->seed);
                d[e] = w8_random(H, F, cases[i].br, cases[i].bc, &c->seed);
            }
            int64_t sn = epm_grouped_scratch_w8(off, E, H, F);
            float *scr = malloc((size_t)sn * sizeof *scr), *y = malloc(((size_t)R * H + 1) * sizeof *y);
            float *want = malloc(((size_t)R * H + 1) * sizeof *want);
            for (int64_t j = 0; j < sn; j++)
                scr[j] = NAN;
            for (int64_t j = 0; j < R * H; j++)
                y[j] = NAN; /* a row never written stays NaN and fails below */
            assert_int_equal(blas->grouped_swiglu_w8(x, off, E, H, F, g, u, d, scr, y), EPM_OK);
            assert_int_equal(ref->grouped_swiglu_w8(x, off, E, H, F, g, u, d, NULL, want), EPM_OK);
            char what[128];
            snprintf(what, sizeof what, "w8 case %zu (hidden %d, ffn %d, blocks %d x %d, %d threads, %s)", i, H, F,
                     cases[i].br, cases[i].bc, nthr, epm_cpu_isa_name((epm_cpu_isa)isa));
            kc_close(what, y, want, R * H, KC_F32_TOL);
            free(x), free(scr), free(y), free(want);
            for (int e = 0; e < E; e++) {
                const epm_w8 *ws[3] = {&g[e], &u[e], &d[e]};
                for (int k = 0; k < 3; k++)
                    free((void *)ws[k]->q), free((void *)ws[k]->scale);
            }
        }
    }
    /* an expert with rows but no weights, or no blocks, is refused by name */
    const int64_t off[3] = {0, 1, 3};
    uint8_t qz[4] = {0};
    float sz[2] = {1, 1};
    epm_w8 some[2] = {{qz, sz, 1, 2}, {NULL, NULL, 0, 0}};
    float x[8] = {0}, y[8], scr[64];
    assert_int_equal(blas->grouped_swiglu_w8(x, off, 2, 2, 1, some, some, some, scr, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1 has 2 rows but no gate weights"));
    assert_int_equal(ref->grouped_swiglu_w8(x, off, 2, 2, 1, some, some, some, scr, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1 has 2 rows but no weights"));
    some[1] = (epm_w8){qz, sz, 1, 0};
    assert_int_equal(blas->grouped_swiglu_w8(x, off, 2, 2, 1, some, some, some, scr, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1's gate blocks are 1 x 0"));
    epm_w8 wide[2] = {{qz, sz, 1, 2}, {qz, sz, 1, 1}}, valid[2] = {{qz, sz, 1, 2}, {qz, sz, 1, 2}};
    assert_int_equal(blas->grouped_swiglu_w8(x, off, 2, 2, 1, wide, valid, valid, scr, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1's gate and up blocks are 1 and 2 columns wide"));
    epm_clear_error();
}

/* The FP8-weight linear layer (DeepSeek-V3's attention projections held as
 * stored) against the reference table's: rows across the direct kernel's
 * limit, widths odd or several blocks with a partial last one, with and
 * without a bias, each instruction set, 1 and 3 threads; bad weights refused. */
static void test_kernels_cpu_linear_w8(void **state)
{
    kc_ctx *c = *state;
    static const int cases[][6] = {/* n, in, out, br, bc, bias */
                                   {0, 8, 4, 2, 2, 0},      {1, 37, 29, 16, 24, 1}, {3, 256, 300, 128, 128, 0},
                                   {4, 130, 70, 16, 24, 1}, {5, 37, 29, 5, 7, 0},   {40, 300, 257, 128, 128, 1},
                                   /* past the CPU GEMM's k-blocks, blocks straddling them, past 192 rows */
                                   {7, 1100, 50, 16, 24, 0}, {150, 1100, 101, 128, 128, 1}, {200, 130, 9, 8, 8, 0},
                                   /* the direct kernel past the 64 tables it keeps per row block of 4 */
                                   {2, 2200, 20, 4, 32, 1}};
    const epm_ops *ref = epm_ops_ref(), *blas = epm_ops_blas();
    assert_non_null(ref->linear_w8);
    assert_non_null(blas->linear_w8);
    FOR_EACH_ISA(isa)
    FOR_THREADS(nthr) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int n = cases[i][0], in = cases[i][1], out = cases[i][2];
            float *x = kc_rnd((size_t)n * in + 1, &c->seed), *b = kc_rnd((size_t)out, &c->seed);
            epm_w8 w = w8_random(out, in, cases[i][3], cases[i][4], &c->seed);
            float *y = malloc(((size_t)n * out + 1) * sizeof *y), *want = malloc(((size_t)n * out + 1) * sizeof *want);
            for (int64_t j = 0; j < (int64_t)n * out; j++)
                y[j] = NAN;
            const float *bias = cases[i][5] ? b : NULL;
            assert_int_equal(blas->linear_w8(x, n, in, &w, bias, out, y), EPM_OK);
            assert_int_equal(ref->linear_w8(x, n, in, &w, bias, out, want), EPM_OK);
            char what[128];
            snprintf(what, sizeof what, "linear w8 case %zu (n %d, in %d, out %d, %d threads, %s)", i, n, in, out,
                     nthr, epm_cpu_isa_name((epm_cpu_isa)isa));
            kc_close(what, y, want, (int64_t)n * out, KC_F32_TOL);
            free(x), free(b), free(y), free(want), free((void *)w.q), free((void *)w.scale);
        }
    }
    float x[4] = {0}, y[4];
    epm_w8 none = {NULL, NULL, 1, 1};
    assert_int_equal(blas->linear_w8(x, 1, 2, &none, NULL, 2, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "cpu linear (fp8 weights): no codes or scales"));
    assert_int_equal(ref->linear_w8(x, 1, 2, &none, NULL, 2, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "ref linear (fp8 weights): no weight or blocks"));
    epm_clear_error();
}

/* The bf16-weight linear layer (a checkpoint's dense matrices held bf16) is
 * float32 math on the widened weight: epm_ref_linear on it, to float32
 * tolerance. Rows cross the direct kernel's limit and the CPU GEMM's (the
 * panels past it, several and a short last one for the widest case), widths
 * are odd or whole paired blocks, with and without a bias; 1 and 3 threads,
 * each instruction set. The reference table's own bf16 linear is the same
 * sums in the same order: equal bit for bit. */
static void test_kernels_cpu_linear_w16(void **state)
{
    kc_ctx *c = *state;
    enum { DIRECT = EPM_CPU_FFN_W16_DIRECT_ROWS, NT = EPM_GEMM_NT_MAX_ROWS };
    static const struct {
        int64_t n;
        int in, out, bias, once;
    } cases[] = {
        {0, 5, 3, 1, 0},      {1, 7, 9, 1, 0},       {2, 16, 33, 0, 0},      {3, 33, 17, 1, 0},
        {DIRECT, 48, 15, 0, 0}, {DIRECT + 1, 23, 17, 1, 0}, {17, 257, 300, 0, 0}, {NT, 67, 45, 1, 0},
        {NT + 1, 67, 45, 0, 0}, {300, 129, 70, 1, 0},  {NT + 1, 4100, 600, 1, 1},
        {1, 257, 300, 1, 0},  {1, 64, 33, 0, 0},       {2, 257, 300, 0, 0}, /* whole 16-wide blocks, 1-2 rows */
    };
    const epm_ops *ref = epm_ops_ref(), *blas = epm_ops_blas();
    assert_non_null(ref->linear_w16);
    assert_non_null(blas->linear_w16);
    FOR_EACH_ISA(isa)
    FOR_THREADS(nthr) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            if (cases[i].once && (isa != EPM_CPU_ISA_OFF || nthr != 1))
                continue; /* the panels whatever the instruction set: once is enough */
            int64_t n = cases[i].n, wn = (int64_t)cases[i].in * cases[i].out;
            int in = cases[i].in, out = cases[i].out;
            float *x = kc_rnd((size_t)n * in + 1, &c->seed), *wf = kc_rnd((size_t)wn, &c->seed);
            float *b = cases[i].bias ? kc_rnd((size_t)out, &c->seed) : NULL;
            for (int64_t q = 0; q < wn; q++)
                wf[q] *= 1.0f / sqrtf((float)in);
            uint16_t *w = kc_as(wf, wn, EPM_DTYPE_BF16);
            float *ww = kc_to_f32(w, wn, EPM_DTYPE_BF16);
            float *y = malloc(((size_t)n * out + 1) * sizeof *y), *want = malloc(((size_t)n * out + 1) * sizeof *want);
            float *r16 = malloc(((size_t)n * out + 1) * sizeof *r16);
            for (int64_t j = 0; j < n * out; j++)
                y[j] = r16[j] = NAN;
            assert_int_equal(blas->linear_w16(x, n, in, w, b, out, y), EPM_OK);
            assert_int_equal(epm_ref_linear(x, n, in, ww, b, out, want), EPM_OK);
            char what[128];
            snprintf(what, sizeof what, "linear w16 case %zu (n %lld, in %d, out %d, %d threads, cpu gemm %s)", i,
                     (long long)n, in, out, nthr, epm_cpu_isa_name((epm_cpu_isa)isa));
            kc_close(what, y, want, n * out, KC_F32_TOL);
            if (n * wn < (1 << 22)) {
                assert_int_equal(ref->linear_w16(x, n, in, w, b, out, r16), EPM_OK);
                assert_memory_equal(r16, want, (size_t)n * out * sizeof *want);
            }
            free(x), free(wf), free(b), free(w), free(ww), free(y), free(want), free(r16);
        }
    }
    float x[4] = {0}, y[4];
    uint16_t w[4] = {0};
    assert_int_equal(blas->linear_w16(x, 1, 0, w, NULL, 2, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "linear (bf16 weights): in = 0"));
    assert_int_equal(ref->linear_w16(x, 1, 2, NULL, NULL, 2, y), EPM_ERR_INVALID_ARG);
    epm_clear_error();
}

/* A bad call through the table fails by name, as the reference does. */
static void test_kernels_cpu_grouped_ffn_bad_offsets(void **state)
{
    kc_ctx *c = *state;
    float x[4] = {0}, y[4], scr[64];
    const float *w[2] = {x, x};
    const int64_t back[3] = {0, 2, 1};
    assert_int_equal(c->F->grouped_ffn(c->fast, EPM_DTYPE_F32, x, back, 2, 2, 2, (const void *const *)w,
                                       (const void *const *)w, (const void *const *)w, scr, y),
                     EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "offsets[2] = 1"));
    const float *none[2] = {x, NULL};
    const int64_t two[3] = {0, 1, 2};
    assert_int_equal(c->F->grouped_ffn(c->fast, EPM_DTYPE_F32, x, two, 2, 2, 2, (const void *const *)none,
                                       (const void *const *)none, (const void *const *)none, scr, y),
                     EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1"));
    epm_clear_error();
}

/* The bf16 paths of the host backends (the oracle of the CUDA bf16 kernels)
 * are the float32 reference on the widened values, rounded once. */
static void test_kernels_cpu_ref_bf16_is_widened_f32(void **state)
{
    kc_ctx *c = *state;
    kc_routing r = kc_make_routing(12, 4, 2, KC_DROPS, &c->seed);
    enum { H = 5, F = 7, E = 4 };
    float *xf = kc_rnd((size_t)r.rows * H, &c->seed), *wf = kc_rnd(E * 3 * F * H, &c->seed);
    float *wts = kc_rnd((size_t)12 * 2, &c->seed);
    uint16_t *x = kc_as(xf, r.rows * H, EPM_DTYPE_BF16), *w = kc_as(wf, E * 3 * F * H, EPM_DTYPE_BF16);
    float *xw = kc_to_f32(x, r.rows * H, EPM_DTYPE_BF16), *ww = kc_to_f32(w, E * 3 * F * H, EPM_DTYPE_BF16);
    const void *g[E], *u[E], *d[E];
    const float *gf[E], *uf[E], *df[E];
    for (int e = 0; e < E; e++) {
        g[e] = w + e * 3 * F * H, u[e] = w + (e * 3 + 1) * F * H, d[e] = w + (e * 3 + 2) * F * H;
        gf[e] = ww + e * 3 * F * H, uf[e] = ww + (e * 3 + 1) * F * H, df[e] = ww + (e * 3 + 2) * F * H;
    }
    uint16_t *y = malloc((size_t)r.rows * H * 2 + 2);
    float *yf = malloc((size_t)r.rows * H * 4 + 4);
    uint16_t *yr = malloc((size_t)r.rows * H * 2 + 2);
    assert_int_equal(c->R->grouped_ffn(c->ref, EPM_DTYPE_BF16, x, r.off, E, H, F, g, u, d, NULL, y), EPM_OK);
    assert_int_equal(epm_ref_grouped_ffn(xw, r.off, E, H, F, gf, uf, df, yf), EPM_OK);
    assert_int_equal(epm_ref_convert(yf, EPM_DTYPE_F32, r.rows * H, EPM_DTYPE_BF16, yr), EPM_OK);
    assert_memory_equal(y, yr, (size_t)r.rows * H * 2);
    /* un-permute: float sums of the widened rows, rounded once */
    uint16_t *o = malloc(12 * H * 2);
    float *of = malloc(12 * H * 4), *o32 = malloc(12 * H * 4), *yw = kc_to_f32(y, r.rows * H, EPM_DTYPE_BF16);
    assert_int_equal(c->R->unpermute(c->ref, EPM_DTYPE_BF16, y, H, r.row_of, wts, 12, 2, o), EPM_OK);
    assert_int_equal(epm_ref_unpermute(yw, H, r.row_of, wts, 12, 2, of), EPM_OK);
    assert_int_equal(epm_ref_convert(o, EPM_DTYPE_BF16, 12 * H, EPM_DTYPE_F32, o32), EPM_OK);
    kc_close("bf16 unpermute vs f32", o32, of, 12 * H, 1.0 / 256);
    free(xf), free(wf), free(wts), free(x), free(w), free(xw), free(ww), free(y), free(yf), free(yr);
    free(o), free(of), free(o32), free(yw);
    kc_free_routing(&r);
}

static void test_kernels_cpu_backend_selection(void **state)
{
    (void)state;
    epm_kernels *kb = (epm_kernels *)&kb; /* must be reset to NULL on failure */
    assert_int_equal(epm_kernels_create("tpu", &kb), EPM_ERR_INVALID_ARG);
    assert_null(kb);
    assert_non_null(strstr(epm_last_error(), "'tpu'"));
    assert_int_equal(epm_kernels_create(NULL, &kb), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_kernels_create("cpu", NULL), EPM_ERR_INVALID_ARG);
    /* no GPU on this machine (or no CUDA in this build): a clean refusal */
    epm_status st = epm_kernels_create("cuda", &kb);
    if (st == EPM_OK) {
        printf("# a CUDA device is visible: 'cuda' was created\n");
        assert_string_equal(epm_kernels_name(kb), "cuda");
        assert_false(epm_kernels_host_memory(kb));
        epm_kernels_destroy(kb);
    } else {
        assert_int_equal(st, EPM_ERR_UNSUPPORTED);
        assert_null(kb);
        assert_non_null(strstr(epm_last_error(), EPM_HAVE_CUDA ? "no CUDA device" : "built without CUDA"));
        /* auto then falls back to the BLAS path */
        assert_int_equal(epm_kernels_create("auto", &kb), EPM_OK);
        assert_string_equal(epm_kernels_name(kb), "cpu");
        assert_true(epm_kernels_host_memory(kb));
        epm_kernels_destroy(kb);
    }
    assert_int_equal(epm_kernels_create("ref", &kb), EPM_OK);
    assert_string_equal(epm_kernels_name(kb), "ref");
    const epm_kernel_ops *o = epm_kernels_ops(kb);
    assert_non_null(o->grouped_ffn);
    assert_int_equal(o->permute(kb, EPM_DTYPE_F16, NULL, 4, NULL, 0, NULL), EPM_ERR_UNSUPPORTED);
    epm_kernels_destroy(kb);
    epm_kernels_destroy(NULL);
    epm_clear_error();
}

/* Allocation failures inside create are reported, never a crash. */
static void test_kernels_cpu_create_nomem(void **state)
{
    (void)state;
    epm_kernels *kb = NULL;
    epm_fault_fail_nth_alloc(1);
    assert_int_equal(epm_kernels_create("cpu", &kb), EPM_ERR_NOMEM);
    epm_fault_fail_nth_alloc(0);
    assert_null(kb);
    epm_clear_error();
}

/* The FP8 kernels' allocations for a call (decoding buffers, packed rows,
 * panels) fail by name, with nothing leaked (ASan), under each instruction
 * set: the decoding GEMM's (5-192 rows) or the panels' (off). */
static void test_kernels_cpu_w8_nomem(void **state)
{
    kc_ctx *c = *state;
    const epm_ops *blas = epm_ops_blas();
    enum { H = 40, F = 24, N = 7 };
    const int64_t off[2] = {0, N};
    epm_w8 g = w8_random(F, H, 16, 8, &c->seed), u = w8_random(F, H, 16, 8, &c->seed);
    epm_w8 d = w8_random(H, F, 16, 8, &c->seed);
    float *x = kc_rnd((size_t)N * H, &c->seed), y[N * H];
    int64_t sn = epm_grouped_scratch_w8(off, 1, H, F);
    float *scr = malloc((size_t)sn * sizeof *scr);
    FOR_EACH_ISA(isa)
    {
        for (int nth = 1; nth <= 2; nth++) {
            epm_fault_fail_nth_alloc(nth);
            epm_status st = blas->linear_w8(x, N, H, &g, NULL, F, y);
            epm_fault_fail_nth_alloc(0);
            if (isa == EPM_CPU_ISA_OFF && nth == 2) { /* the panel path allocates once */
                assert_int_equal(st, EPM_OK);
                continue;
            }
            if (st != EPM_ERR_NOMEM || !strstr(epm_last_error(), "allocation"))
                fail_msg("%s: linear_w8 with allocation %d failing: status %d, '%s'",
                         epm_cpu_isa_name((epm_cpu_isa)isa), nth, (int)st, epm_last_error());
        }
        epm_fault_fail_nth_alloc(1);
        epm_status st = blas->grouped_swiglu_w8(x, off, 1, H, F, &g, &u, &d, scr, y);
        epm_fault_fail_nth_alloc(0);
        if (isa != EPM_CPU_ISA_OFF && (st != EPM_ERR_NOMEM || !strstr(epm_last_error(), "allocation")))
            fail_msg("%s: grouped_swiglu_w8 with its allocation failing: status %d, '%s'",
                     epm_cpu_isa_name((epm_cpu_isa)isa), (int)st, epm_last_error());
        if (isa == EPM_CPU_ISA_OFF) /* panels from the scratch: nothing to allocate */
            assert_int_equal(st, EPM_OK);
        epm_clear_error();
    }
    const epm_w8 *ws[3] = {&g, &u, &d};
    for (int k = 0; k < 3; k++)
        free((void *)ws[k]->q), free((void *)ws[k]->scale);
    free(x), free(scr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_cpu_linear),
        cmocka_unit_test(test_kernels_cpu_rmsnorm),
        cmocka_unit_test(test_kernels_cpu_rope),
        cmocka_unit_test(test_kernels_cpu_attention),
        cmocka_unit_test(test_kernels_cpu_attention_bf16),
        cmocka_unit_test(test_kernels_cpu_attention_fp8),
        cmocka_unit_test(test_kernels_cpu_runtime_fp8_cache),
        cmocka_unit_test(test_kernels_cpu_cublas_on_demand),
        cmocka_unit_test(test_kernels_cpu_router),
        cmocka_unit_test(test_kernels_cpu_route),
        cmocka_unit_test(test_kernels_cpu_permute_f32),
        cmocka_unit_test(test_kernels_cpu_permute_bf16),
        cmocka_unit_test(test_kernels_cpu_embed_convert),
        cmocka_unit_test(test_kernels_cpu_grouped_ffn_f32),
        cmocka_unit_test(test_kernels_cpu_grouped_ffn_bf16),
        cmocka_unit_test(test_kernels_cpu_w16_is_f32_on_widened),
        cmocka_unit_test(test_kernels_cpu_linear_w16),
        cmocka_unit_test(test_kernels_cpu_w8_decode),
        cmocka_unit_test(test_kernels_cpu_w8_is_ref),
        cmocka_unit_test(test_kernels_cpu_linear_w8),
        cmocka_unit_test(test_kernels_cpu_grouped_ffn_bad_offsets),
        cmocka_unit_test(test_kernels_cpu_ref_bf16_is_widened_f32),
        cmocka_unit_test(test_kernels_cpu_backend_selection),
        cmocka_unit_test(test_kernels_cpu_create_nomem),
        cmocka_unit_test(test_kernels_cpu_w8_nomem),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
