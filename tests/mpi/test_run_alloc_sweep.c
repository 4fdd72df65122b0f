/* Allocation-failure sweep of a complete epm_run (dav1d's habit), run under
 * mpirun -np 1: for n = 1, 2, 3, ... the n-th allocation of the run (model
 * load, KV caches, prefill, 2 decode steps, logits, trace, report) fails,
 * until a run never reaches the n-th allocation. Every failure must return
 * an error status (EPM_ERR_NOMEM, the detail naming the allocation) with no
 * result, and hold no memory afterwards: LeakSanitizer is off under mpirun
 * (see meson.build), so live heap bytes are compared before and after each
 * run, and where LeakSanitizer is built in it is also asked explicitly while
 * Open MPI is still loaded. A run that hit the failure and still succeeded
 * must have computed the same tokens and logits (a fallback), not garbage.
 * Both modes; the smallest fixture. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/epmoe.h"
#include "live_bytes.h"
#include "runtime.h"
#include "safetensors.h"
#include "xcomm.h"

static int R;

/* the same generated tokens, and logits within 1e-5 relative */
static int same_result(const epm_run_result *a, const epm_run_result *b)
{
    if (memcmp(a->generated, b->generated, 2 * 2 * sizeof *a->generated))
        return 0;
    double e = 0, m = 0;
    for (int64_t i = 0; i < (16 + 9) * (int64_t)b->vocab; i++) {
        e = fmax(e, fabs((double)a->logits[i] - b->logits[i]));
        m = fmax(m, fabs((double)b->logits[i]));
    }
    return e <= 1e-5 * m;
}

static void sweep(epm_mode mode, uint64_t *points)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/qwen2moe-tiny", tu_fixtures());
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    epm_safetensors *ref;
    assert_int_equal(epm_st_open(path, &ref), EPM_OK);
    const epm_st_tensor *t = epm_st_find(ref, "input_ids");
    assert_non_null(t);
    /* two sequences of different lengths */
    int lens[2] = {16, 9};
    const int32_t *prompts[2] = {(const int32_t *)t->data, (const int32_t *)t->data + 16};
    epm_run_opts o;
    memset(&o, 0, sizeof o);
    o.model_dir = dir;
    o.mode = mode;
    o.max_new_tokens = 2;
    o.ops = "blas";
    o.keep_logits = 1;
    epm_run_result *res = NULL, *good = NULL;
    /* warm: MPI, BLAS and the error buffer allocate once and keep it */
    assert_int_equal(epm_run(&o, 2, lens, prompts, &res), EPM_OK);
    epm_run_result_destroy(res);
    assert_int_equal(epm_run(&o, 2, lens, prompts, &good), EPM_OK);
    int absorbed = 0;
    uint64_t n = 1;
    for (;; n++) {
        size_t before = tu_live_bytes();
        res = (epm_run_result *)0x1; /* must come back NULL on failure */
        epm_fault_fail_nth_alloc(n);
        epm_status st = epm_run(&o, 2, lens, prompts, &res);
        uint64_t made = epm_fault_alloc_count();
        epm_fault_fail_nth_alloc(0);
        int same = 1;
        if (st == EPM_OK && made >= n) /* the failure was hit and the run still succeeded: */
            same = same_result(res, good);  /* only a fallback that computes the same is fine */
        if (st == EPM_OK)
            epm_run_result_destroy(res);
        size_t after = tu_live_bytes();
        if (after != before)
            fprintf(stderr, "mode %s: allocation %llu failed (%s): %lld bytes still held\n", epm_mode_name(mode),
                    (unsigned long long)n, st == EPM_OK ? "run succeeded" : epm_last_error(),
                    (long long)after - (long long)before);
        assert_int_equal(after, before);
        if (st == EPM_OK) {
            if (made < n)
                break; /* the n-th allocation never came: every point has been failed */
            absorbed++; /* an allocation with a fallback (the run did without it) */
            if (getenv("EPM_SWEEP_VERBOSE") || !same)
                fprintf(stderr, "mode %s: allocation %llu failed and the run succeeded%s\n", epm_mode_name(mode),
                        (unsigned long long)n, same ? " (same result)" : " with a DIFFERENT result");
            assert_true(same);
            continue;
        }
        if (st != EPM_ERR_NOMEM)
            fprintf(stderr, "mode %s: allocation %llu: %s: %s\n", epm_mode_name(mode), (unsigned long long)n,
                    epm_status_str(st), epm_last_error());
        assert_int_equal(st, EPM_ERR_NOMEM);
        if (!strstr(epm_last_error(), "allocation"))
            fprintf(stderr, "mode %s: allocation %llu: the message does not say so: %s\n", epm_mode_name(mode),
                    (unsigned long long)n, epm_last_error());
        assert_non_null(strstr(epm_last_error(), "allocation"));
        assert_null(res);
    }
    fprintf(stderr, "mode %s: %llu allocation points of a 1-rank run failed cleanly (%d of them absorbed)\n",
            epm_mode_name(mode), (unsigned long long)(n - 1), absorbed);
    assert_true(n - 1 > 50);
    *points += n - 1;
    epm_run_result_destroy(good);
    epm_st_close(ref);
}

static void test_run_alloc_sweep(void **state)
{
    (void)state;
    if (R != 1)
        return; /* one rank: the n-th allocation is the same one every time */
    uint64_t points = 0;
    sweep(EPM_MODE_HOME, &points);
    sweep(EPM_MODE_FOLLOW, &points);
    assert_int_equal(tu_leak_check(), 0);
    fprintf(stderr, "run: %llu allocation points in all\n", (unsigned long long)points);
}

int main(int argc, char **argv)
{
    (void)argc;
    tu_live_bytes_setup(argv);
    epm_xcomm *x;
    tu_leaks_ignore_begin(); /* MPI_Init */
    epm_status st = epm_xcomm_create(0, &x);
    tu_leaks_ignore_end();
    if (st != EPM_OK)
        return 1;
    R = epm_xcomm_size(x);
    epm_xcomm_destroy(x);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_alloc_sweep),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    epm_xcomm_finalize();
    return rc;
}
