/* Allocation-failure sweep of a complete epm_run (dav1d's habit): for
 * n = 1, 2, 3, ... the n-th allocation of the run (model load, KV caches,
 * prefill, 2 decode steps, logits, trace, report) fails on one rank, until
 * a run never reaches the n-th allocation. Every failure must return an
 * error status (EPM_ERR_NOMEM, the detail naming the allocation) with no
 * result, and hold no memory afterwards: LeakSanitizer is off under mpirun
 * (see meson.build), so live heap bytes are compared before and after each
 * run, and where LeakSanitizer is built in it is also asked explicitly while
 * Open MPI is still loaded. A run that hit the failure and still succeeded
 * must have computed the same tokens and logits (a fallback), not garbage.
 * Both modes; the smallest fixture.
 *
 * Under -np 1 that is the whole test. With more ranks the failure is on the
 * last rank alone and every rank must return the same failure (the detail
 * naming the failing rank) and go on to the next run: a rank left inside a
 * collective hangs the test. Even rank counts run over two virtual nodes
 * with the hierarchical exchange on, whose hops have their own failure
 * points. At one rank, home mode again on a bf16 checkpoint (synthesised
 * here), whose weights stay bf16: the bf16 linear layers, shared expert and
 * dense MLP. At three, home mode rebalances online, copying experts between
 * ranks. */
#include "test_util.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/epmoe.h"
#include "epmoe/model.h"
#include "live_bytes.h"
#include "runtime.h"
#include "safetensors.h"
#include "xcomm.h"

static int R, me;

/* the same generated tokens, and logits within 1e-5 relative (where kept:
 * rows logit rows, every prompt position's or each sequence's last) */
static int same_result(const epm_run_result *a, const epm_run_result *b, int64_t rows)
{
    if (!b->generated)
        return !a->generated; /* not rank 0: results live there */
    if (memcmp(a->generated, b->generated, 2 * 2 * sizeof *a->generated))
        return 0;
    if (!b->logits)
        return !a->logits;
    double e = 0, m = 0;
    for (int64_t i = 0; i < rows * (int64_t)b->vocab; i++) {
        e = fmax(e, fabs((double)a->logits[i] - b->logits[i]));
        m = fmax(m, fabs((double)b->logits[i]));
    }
    return e <= 1e-5 * m;
}

/* model: a checkpoint folder, or NULL for the qwen2moe-tiny fixture; token
 * ids are the fixture's prompts modulo vocab */
static void sweep(const char *model, int vocab, epm_mode mode, uint64_t *points)
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
    int32_t ids[25];
    for (int i = 0; i < 25; i++)
        ids[i] = ((const int32_t *)t->data)[i] % vocab;
    const int32_t *prompts[2] = {ids, ids + 16};
    epm_run_opts o;
    memset(&o, 0, sizeof o);
    o.model_dir = model ? model : dir;
    o.mode = mode;
    o.max_new_tokens = 2;
    o.ops = "blas";
    o.keep_logits = 1;
    /* one rank: a K/V pool that admits one sequence at a time (18 + 11 > 20; more passes, so more points:
     * not at 2 ranks, whose sweep is the sanitizer pass's longest) */
    if (mode == EPM_MODE_FOLLOW && !model && R == 1)
        o.max_total_tokens = 20;
    /* and home mode, prefix caching one sequence at a time: the second (the first 16 tokens) takes over
     * the rows the first (9) kept, grown for it (all logits are not kept: its copied positions have none);
     * at 2 ranks follow mode, where both ranks hold both (one at a time: a pool of the second's 18
     * positions) and the last rank's growth fails alone */
    if (!model && ((mode == EPM_MODE_HOME && R == 1) || (mode == EPM_MODE_FOLLOW && R == 2))) {
        o.prefix_caching = 1;
        o.max_num_seqs = 1;
        o.max_total_tokens = R == 2 ? 18 : 0;
        o.keep_logits = 0;
        lens[0] = 9, lens[1] = 16;
        prompts[1] = ids;
    }
    /* the bf16 checkpoint (one rank) rebalanced online before its decode pass: the loads' sum, the plan,
     * the renaming, the experts' lists */
    if (model && mode == EPM_MODE_HOME)
        o.eplb_interval = 1;
    /* at 3 ranks, home mode rebalanced every pass with the gained experts copied between ranks: the
     * moves, the packing, each layer's exchange and the unpacking fail on the last rank alone, and
     * every rank must leave through the same agreements */
    if (!model && mode == EPM_MODE_HOME && R == 3) {
        o.eplb_interval = 1;
        o.eplb_from_peers = 1;
    }
    /* at 4 ranks (two nodes, the hierarchical path), follow mode rebalanced every 2 passes asynchronously:
     * the copies posted at a boundary stay in flight under the next pass, whose failures must cancel them
     * on every rank */
    if (!model && mode == EPM_MODE_FOLLOW && R == 4) {
        o.eplb_interval = 2;
        o.eplb_slots = 3; /* (a spare each: replicas to copy) */
        o.prefill_chunk = 4; /* (5 passes: one placement in service mid-run, the last at the end) */
        o.eplb_from_peers = 1;
        o.eplb_lag = 1;
    }
    if (R > 1 && R % 2 == 0) {
        o.virtual_nodes = 2;
        o.a2a_hier = "on";
    }
    epm_xcomm_set_timeout(30); /* a rank that cannot leave fails the test, later */
    int F = R - 1; /* the failing rank */
    epm_run_result *res = NULL, *good = NULL;
    /* warm: MPI, BLAS and the error buffer allocate once and keep it */
    assert_int_equal(epm_run(&o, 2, lens, prompts, &res), EPM_OK);
    epm_run_result_destroy(res);
    assert_int_equal(epm_run(&o, 2, lens, prompts, &good), EPM_OK);
    assert_int_equal(good->report.hierarchical, o.a2a_hier != NULL);
    if (o.eplb_from_peers) /* (the copies' paths are the ones swept) */
        assert_true(good->report.eplb_peer_bytes[EPM_LINK_INTRA] + good->report.eplb_peer_bytes[EPM_LINK_INTER] > 0);
    int absorbed = 0;
    /* EPM_SWEEP_FIRST=n starts there (to debug one point); EPM_SWEEP_STRIDE=s
     * fails every s-th point only (CI's 3 and 4 ranks: the full sweep is
     * recorded in tests/README.md) */
    uint64_t n = getenv("EPM_SWEEP_FIRST") ? strtoull(getenv("EPM_SWEEP_FIRST"), NULL, 10) : 1;
    uint64_t stride = getenv("EPM_SWEEP_STRIDE") ? strtoull(getenv("EPM_SWEEP_STRIDE"), NULL, 10) : 1;
    uint64_t tried = 0, total = 0;
    if (stride < 1)
        stride = 1;
    for (;; n += stride) {
        epm_status st;
        uint64_t made;
        int same = 1;
        long long held = 0, tries[6];
        int ntries = 0, clean = 0;
        /* With several ranks, Open MPI's own pools (ob1's fragment free lists,
         * its bucket allocator) grow to a new high-water mark when a failure
         * path the warm-up never took (a poisoned count exchange, an early
         * agreement) brings many unexpected messages at once, and never
         * shrink: the point is run again, up to five times, and a rank's bytes
         * are ours only if it held some after every try (a leak of ours holds
         * on each; a pool grows once, but the next try may grow another). */
        for (int rep = 0;; rep++) {
            if (getenv("EPM_SWEEP_TRACE") && me == F)
                fprintf(stderr, "mode %s: allocation %llu\n", epm_mode_name(mode), (unsigned long long)n);
            size_t before = tu_live_bytes();
            res = (epm_run_result *)0x1; /* must come back NULL on failure */
            if (me == F)
                epm_fault_fail_nth_alloc(n);
            st = epm_run(&o, 2, lens, prompts, &res);
            made = epm_fault_alloc_count();
            epm_fault_fail_nth_alloc(0);
            if (R > 1) {
                /* the failing rank's view decides for all: was the point reached? */
                unsigned long long mv = made;
                MPI_Bcast(&mv, 1, MPI_UNSIGNED_LONG_LONG, F, MPI_COMM_WORLD);
                made = mv;
            }
            if (st == EPM_OK && made >= n) /* the failure was hit and the run still succeeded: */
                same = same_result(res, good, o.keep_logits ? 16 + 9 : 2); /* only a fallback that computes the same is fine */
            if (st == EPM_OK)
                epm_run_result_destroy(res);
            held = (long long)tu_live_bytes() - (long long)before;
            tries[ntries++] = held;
            clean |= held == 0;
            int again = !clean && R > 1 && ntries < 6;
            if (R > 1)
                MPI_Allreduce(MPI_IN_PLACE, &again, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
            if (!again)
                break;
        }
        /* every check is made on every rank, then agreed, so that a failed
         * check fails the test on all ranks instead of leaving them waiting */
        const char *why = NULL;
        char fr[32];
        snprintf(fr, sizeof fr, "rank %d", F);
        if (!clean)
            why = "bytes still held after every try";
        else if (st == EPM_OK && made >= n && !same)
            why = "the run absorbed the failure with a DIFFERENT result";
        else if (st != EPM_OK && res)
            why = "a result came back with the failure";
        else if (st != EPM_OK && me == F && (st != EPM_ERR_NOMEM || !strstr(epm_last_error(), "allocation")))
            why = "the failing rank's status or message does not say out of memory";
        else if (st != EPM_OK && me != F && ((st != EPM_ERR_NOMEM && st != EPM_ERR_REMOTE) ||
                                              !strstr(epm_last_error(), fr)))
            why = "another rank's status or message does not name the failing rank";
        int flags[3] = {why != NULL, st == EPM_OK, -(st == EPM_OK)};
        if (R > 1)
            MPI_Allreduce(MPI_IN_PLACE, flags, 3, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (!why && flags[1] != -flags[2])
            why = "the ranks disagree: some succeeded, some failed";
        if (why) {
            char hs[160] = "";
            for (int i = 0; i < ntries; i++)
                snprintf(hs + strlen(hs), sizeof hs - strlen(hs), "%s%lld", i ? ", " : "", tries[i]);
            fprintf(stderr, "rank %d, mode %s: allocation %llu of rank %d: %s (%s: %s; bytes held after each try: %s)\n",
                    me, epm_mode_name(mode), (unsigned long long)n, F, why, epm_status_str(st),
                    st == EPM_OK ? "" : epm_last_error(), hs);
        }
        assert_false(flags[0] || flags[1] != -flags[2]);
        tried++;
        if (st == EPM_OK) {
            if (made < n) {
                tried--;
                total = made;
                break; /* the n-th allocation never came: every point has been failed */
            }
            absorbed++; /* an allocation with a fallback (the run did without it) */
            if (getenv("EPM_SWEEP_VERBOSE") && me == F)
                fprintf(stderr, "mode %s: allocation %llu failed and the run succeeded (same result)\n",
                        epm_mode_name(mode), (unsigned long long)n);
        }
    }
    if (me == F)
        fprintf(stderr, "mode %s: %llu allocation points of rank %d of %d failed cleanly (one in %llu of %llu; %d absorbed)\n",
                epm_mode_name(mode), (unsigned long long)tried, F, R, (unsigned long long)stride,
                (unsigned long long)total, absorbed);
    assert_true(tried * stride > 50 || getenv("EPM_SWEEP_FIRST"));
    *points += tried;
    epm_run_result_destroy(good);
    epm_st_close(ref);
}

static void test_run_alloc_sweep(void **state)
{
    (void)state;
    uint64_t points = 0;
    const char *only = getenv("EPM_SWEEP_MODE"); /* home|follow: one mode (to debug a point) */
    if (!only || !strcmp(only, "home"))
        sweep(NULL, 1 << 30, EPM_MODE_HOME, &points);
    if (!only || !strcmp(only, "follow"))
        sweep(NULL, 1 << 30, EPM_MODE_FOLLOW, &points);
    /* one rank: the kernels' failure points; the exchange's are swept above, and more
     * multi-rank sweeps would only add chances of Open MPI growing its free lists mid-sweep */
    if ((!only && R == 1) || (only && !strcmp(only, "bf16"))) {
        epm_model_synth_opts so;
        epm_model_synth_opts_init(&so);
        so.arch = EPM_MODEL_QWEN2MOE;
        so.hidden = 32;
        so.layers = 3;
        so.experts = 6;
        so.k = 2;
        so.ffn = 24;
        so.heads = 4;
        so.kv_heads = 2;
        so.vocab = 64;
        so.shared_ffn = 40;
        so.dense_ffn = 36;
        so.dtype = EPM_DTYPE_BF16;
        so.seed = 7;
        static const int only_mlp[1] = {1};
        so.mlp_only = only_mlp;
        so.n_mlp_only = 1;
        const char *bf16 = tu_path("bf16"); /* each rank its own copy, the same bytes */
        assert_int_equal(epm_model_synth(&so, bf16), EPM_OK);
        sweep(bf16, so.vocab, EPM_MODE_HOME, &points);
    }
    if ((!only && R == 1) || (only && !strcmp(only, "deepseek"))) {
        /* MLA's projections, the group-limited router, ungated shared experts */
        char ds[512];
        snprintf(ds, sizeof ds, "%s/deepseekv3-tiny", tu_fixtures());
        sweep(ds, 256, EPM_MODE_FOLLOW, &points);
    }
    assert_int_equal(tu_leak_check(), 0);
    if (me == R - 1)
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
    me = epm_xcomm_rank(x);
    epm_xcomm_destroy(x);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_alloc_sweep),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    epm_xcomm_finalize();
    return rc;
}
