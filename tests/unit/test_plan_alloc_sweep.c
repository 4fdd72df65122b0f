/* Allocation-failure sweep (alloc_sweep.h) of the planner and its
 * evaluator: epm_plan with every method in both modes, and epm_eval. Every
 * failure must also leave *out NULL; the ASan build runs LeakSanitizer over
 * this program too. GLPK allocates through its own allocator, so the sweep
 * covers everything around the MIP. */
#include "test_util.h"

#include <stdio.h>

#include "epmoe/epmoe.h"
#include "alloc_sweep.h"

typedef struct job {
    const char *what;
    const epm_trace *t;
    const epm_cluster *c;
    epm_plan_opts o;
    const epm_placement *eval_of; /* set: sweep epm_eval of this placement instead of planning */
    int eplb_interval;            /* and with online rebalancing over the trace's passes */
} job;

static epm_status run_job(const job *j)
{
    if (j->eval_of) {
        epm_eval_opts eo;
        epm_eval_opts_init(&eo);
        eo.mode = j->o.mode;
        eo.eplb_interval = j->eplb_interval;
        eo.eplb_slots = j->eplb_interval ? 3 : 0;
        eo.eplb_min_gain = j->eplb_interval && eo.mode == EPM_MODE_FOLLOW ? 0.05 : 0; /* (its estimate's scratch) */
        epm_eval_result *r = (epm_eval_result *)0x1; /* must come back NULL on failure */
        epm_status st = epm_eval(j->t, j->eval_of, &eo, &r);
        if (st == EPM_OK)
            epm_eval_result_destroy(r);
        else
            assert_null(r);
        return st;
    }
    epm_placement *p = (epm_placement *)0x1;
    epm_status st = epm_plan(j->t, j->c, &j->o, &p);
    if (st == EPM_OK)
        epm_placement_destroy(p);
    else
        assert_null(p);
    return st;
}

static epm_status run_job_cb(void *ctx) { return run_job(ctx); }

static uint64_t sweep(const job *j) { return tu_alloc_sweep(j->what, run_job_cb, (void *)j); }

/* Every method in both modes on 2 ranks in 2 nodes with spare slots (eplb's
 * and the ILP's replicas), then epm_eval of the ILP's placement, alone and
 * rebalanced every pass (of 4 tokens). Small, as each point reruns the whole
 * plan (the MIP included). */
static void test_plan_alloc_sweep_methods(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(2, 4, 2, 20, 21);
    int32_t pass[20];
    for (int i = 0; i < 20; i++)
        pass[i] = i / 4;
    assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
    epm_cluster c;
    epm_cluster_init(&c, 2, 1);
    uint64_t total = 0;
    for (int mode = 0; mode < 2; mode++)
        for (int m = 0; m < EPM_METHOD_COUNT; m++) {
            char what[64];
            snprintf(what, sizeof what, "plan %s %s", epm_method_name((epm_method)m), epm_mode_name((epm_mode)mode));
            job j = {.what = what, .t = t, .c = &c};
            tu_plan_opts(&j.o, m, mode, 3, 60, 1e-6); /* the limit is never reached: no clock-dependent path */
            double t0 = epm_now();
            uint64_t k = sweep(&j);
            fprintf(stderr, "%s: %llu allocation points failed cleanly (%.1f s)\n", what, (unsigned long long)k,
                    epm_now() - t0);
            assert_true(k >= 3);
            total += k;
        }
    for (int run = 0; run < 4; run++) {
        const int mode = run % 2;
        static const char *what[] = {"eval home", "eval follow", "eval home, rebalanced", "eval follow, rebalanced"};
        job j = {.what = what[run], .t = t, .c = &c, .eplb_interval = run / 2};
        tu_plan_opts(&j.o, EPM_METHOD_ILP, mode, 3, 60, 1e-6);
        epm_placement *p;
        assert_int_equal(epm_plan(t, &c, &j.o, &p), EPM_OK);
        j.eval_of = p;
        uint64_t k = sweep(&j);
        fprintf(stderr, "%s: %llu allocation points failed cleanly\n", j.what, (unsigned long long)k);
        assert_true(k >= 2);
        total += k;
        epm_placement_destroy(p);
    }
    epm_trace_destroy(t);
    assert_int_equal(tu_leak_check(), 0);
    fprintf(stderr, "planner and evaluator: %llu allocation points in all\n", (unsigned long long)total);
}

/* The follow-mode decomposition with one expert a rank (ilp_decompose.c and
 * its exact chain search, ilp_chain.c): few tokens (the chains that lose
 * nothing close the gap) and more (the search over chains that lose a
 * little). */
static void test_plan_alloc_sweep_decomposition(void **state)
{
    (void)state;
    static const int64_t tokens[] = {12, 200};
    epm_cluster c;
    epm_cluster_init(&c, 1, 4);
    for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++) {
        epm_trace *t = tu_synth_trace(3, 4, 2, tokens[i], 3 + i);
        char what[64];
        snprintf(what, sizeof what, "ilp follow E = R = 4, %lld tokens", (long long)tokens[i]);
        job j = {.what = what, .t = t, .c = &c};
        tu_plan_opts(&j.o, EPM_METHOD_ILP, EPM_MODE_FOLLOW, 1, 60, 1e-6);
        uint64_t k = sweep(&j);
        fprintf(stderr, "%s: %llu allocation points failed cleanly\n", what, (unsigned long long)k);
        assert_true(k >= 10);
        epm_trace_destroy(t);
    }
    assert_int_equal(tu_leak_check(), 0);
}

int main(int argc, char **argv)
{
    (void)argc;
    tu_live_bytes_setup(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_alloc_sweep_methods),
        cmocka_unit_test(test_plan_alloc_sweep_decomposition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
