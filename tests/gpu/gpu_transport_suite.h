/* The GPU transport suite, shared by test_transport_nccl.c and
 * test_transport_staged.c: each defines GT_TRANSPORT (epm_comm's) and GT_XA2A
 * (xcomm's) and includes this file. Every exchange must give the host MPI
 * path's bits. Exits 77 (skip) without a CUDA device. */
#ifndef GPU_TRANSPORT_SUITE_H
#define GPU_TRANSPORT_SUITE_H

#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "gpu_a2a.h"
#include "../mpi/xcomm_ref.h"

static int R;

static void test_f32(void **state)
{
    (void)state;
    gpu_compare(GT_TRANSPORT, (scen){.E = 8, .k = 2, .hidden = 64, .dt = EPM_DTYPE_F32, .seed = 31}, R);
}

static void test_bf16_follow(void **state)
{
    (void)state;
    gpu_compare(GT_TRANSPORT,
                (scen){.E = 8, .k = 3, .hidden = 40, .dt = EPM_DTYPE_BF16, .follow = 1, .replicas = 1, .seed = 32}, R);
}

/* the runtime's row exchange on this transport: the rows the seeded
 * reference says, in its order */
static void test_xcomm(void **state)
{
    (void)state;
    epm_xcomm_opts o;
    epm_xcomm_opts_init(&o);
    o.a2a = GT_XA2A;
    epm_xcomm *x;
    assert_int_equal(epm_xcomm_create_opts(&o, &x), EPM_OK);
    int n_ = epm_xcomm_size(x), me = epm_xcomm_rank(x);
    static const xscen sc[] = {{.seed = 41, .max_rows = 50}, {.seed = 42, .dest = XD_ONE, .max_rows = 20},
                               {.seed = 43, .dest = XD_EVEN, .max_rows = 9, .empty_every = 2}};
    for (size_t i = 0; i < sizeof sc / sizeof *sc; i++) {
        int64_t n, nr, counted[EPM_LINK_COUNT] = {0}, ecount[EPM_LINK_COUNT];
        int *dest, *src, *esrc;
        float *rows, *out, *erows;
        xs_make(&sc[i], n_, me, &n, &dest, &rows);
        assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, counted, &out, &src, &nr), EPM_OK);
        int64_t en = xs_expect(&sc[i], n_, 0, me, &erows, &esrc, ecount);
        assert_int_equal(nr, en);
        if (en) {
            assert_memory_equal(out, erows, (size_t)en * XW * sizeof *out);
            assert_memory_equal(src, esrc, (size_t)en * sizeof *src);
        }
        assert_memory_equal(counted, ecount, sizeof counted);
        epm_free(out);
        epm_free(src);
        epm_free(erows);
        epm_free(esrc);
        epm_free(dest);
        epm_free(rows);
    }
    epm_xcomm_destroy(x);
}

#ifdef GT_FAULT_TESTS
/* A step that never completes, as when a peer dies, made with the test hooks
 * of transport_nccl.c (one rank: NCCL takes no second rank on one GPU): the
 * stream is held 4 s; the wait must give up at the 1 s deadline, or at once
 * when the poll sees an asynchronous error, abort the communicator, say
 * so, and fail the next exchange at once instead of using it. */
static void fault_case(int async, epm_status want, const char *text)
{
    if (R != 1) {
        printf("fault hooks run at one rank only: skipped at %d\n", R);
        return;
    }
    assert_int_equal(setenv("EPM_TEST_NCCL_HOLD_SECONDS", "4", 1), 0);
    if (async)
        assert_int_equal(setenv("EPM_TEST_NCCL_ASYNC_ERROR", "1", 1), 0);
    epm_xcomm_opts o;
    epm_xcomm_opts_init(&o);
    o.a2a = GT_XA2A;
    epm_xcomm *x;
    epm_status st = epm_xcomm_create_opts(&o, &x);
    unsetenv("EPM_TEST_NCCL_HOLD_SECONDS");
    unsetenv("EPM_TEST_NCCL_ASYNC_ERROR");
    assert_int_equal(st, EPM_OK);
    epm_xcomm_set_timeout(1.0);
    int dest[2] = {0, 0};
    float rows[2 * XW] = {0}, *out = NULL;
    int *src = NULL;
    int64_t nr = 0;
    double t0 = epm_now();
    st = epm_xcomm_exchange(x, 2, dest, rows, XW, XP, NULL, &out, &src, &nr);
    double dt = epm_now() - t0;
    printf("%s: %s after %.2f s: %s\n", async ? "asynchronous error" : "deadline", epm_status_str(st), dt,
           epm_last_error());
    assert_int_equal(st, want);
    assert_true(dt < (async ? 0.9 : 2.5));
    assert_non_null(strstr(epm_last_error(), text));
    assert_non_null(strstr(epm_last_error(), "aborted"));
    epm_clear_error();
    t0 = epm_now();
    st = epm_xcomm_exchange(x, 2, dest, rows, XW, XP, NULL, &out, &src, &nr);
    assert_int_not_equal(st, EPM_OK);
    assert_true(epm_now() - t0 < 0.5);
    assert_non_null(strstr(epm_last_error(), "aborted"));
    epm_clear_error();
    epm_xcomm_set_timeout(0);
    epm_xcomm_destroy(x); /* waits out the held stream */
}

static void test_deadline_aborts(void **state)
{
    (void)state;
    fault_case(0, EPM_ERR_TIMEOUT, "did not complete within 1 s");
}

static void test_async_error_aborts(void **state)
{
    (void)state;
    fault_case(1, EPM_ERR_NCCL, "remote");
}
#endif

int main(void)
{
    if (!gpu_present()) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    epm_comm *c;
    if (epm_comm_create(NULL, &c) != EPM_OK)
        return 1;
    R = epm_comm_size(c);
    epm_comm_destroy(c);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32),
        cmocka_unit_test(test_bf16_follow),
        cmocka_unit_test(test_xcomm),
#ifdef GT_FAULT_TESTS
        cmocka_unit_test(test_deadline_aborts),
        cmocka_unit_test(test_async_error_aborts),
#endif
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    epm_comm_finalize();
    return rc;
}

#endif
