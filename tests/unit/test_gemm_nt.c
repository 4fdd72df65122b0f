/* The CPU GEMM for few rows (cpu_gemm_nt.c), each instruction set this CPU
 * runs, float32 and bf16 weights, against a double-precision product: rows that are not a multiple of
 * the 4-row block, output features that are not a multiple of a tile (the
 * one-feature tail), k that is not a multiple of 16 (the masked weight load)
 * or crosses a k-block, rows that take several passes, 1 and 3 threads. Every weight matrix,
 * output and packing buffer is an allocation of exactly its size (the
 * sanitizer build sees a read or write past one), outputs start as NaN, and a
 * guard after y must survive. The float32 tolerance is kernels_check.h's. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "cpu_gemm_nt.h"
#include "epmoe/kernels.h"
#include "half.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define TOL 1e-5
enum { GUARD = 16 };


/* bf16: the weights rounded to bf16 (the kernel's input) and the reference on
 * them widened, which is exact: the kernel must be float32 math on those. */
static void check_one(epm_cpu_isa isa, int w16, int m, int k, int n, int threads, uint64_t *s)
{
    float *x = tu_rnd((size_t)m * k, s), *w = tu_rnd((size_t)n * k, s);
    uint16_t *wh = NULL;
    if (w16) {
        wh = malloc(((size_t)n * k) * sizeof *wh);
        assert_non_null(wh);
        for (size_t i = 0; i < (size_t)n * k; i++)
            wh[i] = epm_f32_to_bf16(w[i]), w[i] = epm_bf16_to_f32(wh[i]);
    }
    size_t np = epm_cpu_gemm_nt_pack_floats(m, k);
    float *pack = malloc(np * sizeof *pack), *y = malloc(((size_t)m * n + GUARD) * sizeof *y);
    assert_non_null(pack);
    assert_non_null(y);
    for (size_t i = 0; i < np; i++)
        pack[i] = NAN;
    for (size_t i = 0; i < (size_t)m * n; i++)
        y[i] = NAN;
    for (int i = 0; i < GUARD; i++)
        y[(size_t)m * n + i] = 1234.5f;
    if (w16)
        epm_cpu_gemm_nt_w16(isa, x, m, k, wh, n, y, pack);
    else
        epm_cpu_gemm_nt(isa, x, m, k, w, n, y, pack);
    double err = 0, big = 0;
    int64_t at = -1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double want = 0;
            for (int q = 0; q < k; q++)
                want += (double)x[(size_t)i * k + q] * w[(size_t)j * k + q];
            double got = y[(size_t)i * n + j], d = fabs(got - want);
            big = fmax(big, fabs(want));
            if (d != d || d > err)
                err = d != d ? INFINITY : d, at = (int64_t)i * n + j;
        }
    if (err > TOL * (big + 1)) {
        print_error("gemm_nt %s %s, m %d k %d n %d, %d threads: max error %g at [%lld], allowed %g\n",
                    epm_cpu_isa_name(isa), w16 ? "bf16" : "f32", m, k, n, threads, err, (long long)at,
                    TOL * (big + 1));
        fail();
    }
    for (int i = 0; i < GUARD; i++)
        if (y[(size_t)m * n + i] != 1234.5f) {
            print_error("gemm_nt %s, m %d k %d n %d: wrote past y\n", epm_cpu_isa_name(isa), m, k, n);
            fail();
        }
    free(x), free(w), free(wh), free(pack), free(y);
}

static void test_gemm_nt_every_isa(void **state)
{
    (void)state;
    static const int cases[][3] = {
        /* m, k, n */
        {1, 1, 1},      {1, 16, 4},     {3, 17, 5},    {4, 15, 9},    {5, 31, 2},    {2, 8, 3},
        {7, 1023, 6},   {8, 1024, 8},   {9, 1025, 7},  {13, 2100, 11}, {6, 3, 17},   {128, 300, 33},
        {127, 2049, 12}, {2, 4096, 130}, {64, 700, 66}, {4, 9, 1},
        /* past 128 rows: 512-wide k-blocks; past 256: several passes over the weight */
        {129, 600, 10}, {256, 1100, 5}, {257, 520, 6}, {300, 40, 9}, {600, 17, 3},
    };
    epm_cpu_isa best = epm_cpu_isa_best();
    if (best == EPM_CPU_ISA_OFF) {
        print_message("gemm_nt: this CPU runs neither AVX2 nor AVX-512 with FMA; the BLAS is used instead\n");
        skip();
    }
#ifdef _OPENMP
    const int threads[2] = {1, 3}, nthreads = 2, was = omp_get_max_threads();
#else
    const int threads[1] = {1}, nthreads = 1;
#endif
    uint64_t s = 11;
    int ran = 0;
    for (int isa = EPM_CPU_ISA_AVX2; isa <= (int)best; isa++)
        for (int ti = 0; ti < nthreads; ti++) {
#ifdef _OPENMP
            omp_set_num_threads(threads[ti]);
#endif
            for (int w16 = 0; w16 < 2; w16++)
                for (size_t i = 0; i < sizeof cases / sizeof *cases; i++, ran++)
                    check_one((epm_cpu_isa)isa, w16, cases[i][0], cases[i][1], cases[i][2], threads[ti], &s);
        }
#ifdef _OPENMP
    omp_set_num_threads(was);
#endif
    print_message("gemm_nt: %d cases up to %s\n", ran, epm_cpu_isa_name(best));
}

/* Nothing to do is done without touching anything. */
static void test_gemm_nt_empty(void **state)
{
    (void)state;
    float y = 7.0f;
    epm_cpu_gemm_nt(epm_cpu_isa_best(), NULL, 0, 4, NULL, 1, &y, NULL);
    epm_cpu_gemm_nt(epm_cpu_isa_best(), NULL, 3, 4, NULL, 0, &y, NULL);
    assert_true(y == 7.0f);
    assert_int_equal(epm_cpu_gemm_nt_pack_floats(0, 5), 0);
    assert_int_equal(epm_cpu_gemm_nt_pack_floats(5, 17), 8 * 32 + 15);
}

/* EPM_CPU_ISA: the known values, a bad one named, and the "cpu" backend
 * refusing to open on a bad one rather than running something else. */
static void test_gemm_nt_isa_from_env(void **state)
{
    (void)state;
    epm_cpu_isa isa, best = epm_cpu_isa_best();
    assert_int_equal(setenv("EPM_CPU_ISA", "auto", 1), 0);
    assert_int_equal(epm_cpu_isa_from_env(&isa), EPM_OK);
    assert_int_equal(isa, best);
    assert_int_equal(setenv("EPM_CPU_ISA", "off", 1), 0);
    assert_int_equal(epm_cpu_isa_from_env(&isa), EPM_OK);
    assert_int_equal(isa, EPM_CPU_ISA_OFF);
    if (best >= EPM_CPU_ISA_AVX2) {
        assert_int_equal(setenv("EPM_CPU_ISA", "avx2", 1), 0);
        assert_int_equal(epm_cpu_isa_from_env(&isa), EPM_OK);
        assert_int_equal(isa, EPM_CPU_ISA_AVX2);
    }
    if (best < EPM_CPU_ISA_AVX512) {
        assert_int_equal(setenv("EPM_CPU_ISA", "avx512", 1), 0);
        assert_int_equal(epm_cpu_isa_from_env(&isa), EPM_ERR_UNSUPPORTED);
        assert_non_null(strstr(epm_last_error(), "EPM_CPU_ISA = 'avx512'"));
        epm_clear_error();
    }
    assert_int_equal(setenv("EPM_CPU_ISA", "sse9", 1), 0);
    assert_int_equal(epm_cpu_isa_from_env(&isa), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "EPM_CPU_ISA = 'sse9'"));
    epm_clear_error();
    epm_kernels *kb = (epm_kernels *)1;
    assert_int_equal(epm_kernels_create("cpu", &kb), EPM_ERR_INVALID_ARG);
    assert_null(kb);
    assert_non_null(strstr(epm_last_error(), "sse9"));
    epm_clear_error();
    assert_int_equal(unsetenv("EPM_CPU_ISA"), 0);
    assert_int_equal(epm_kernels_create("cpu", &kb), EPM_OK);
    epm_kernels_destroy(kb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_nt_every_isa),
        cmocka_unit_test(test_gemm_nt_empty),
        cmocka_unit_test(test_gemm_nt_isa_from_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
