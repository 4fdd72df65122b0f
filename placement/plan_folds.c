/* The folds of the planning tokens that the ILP's searches (ilp_search.c,
 * replica_search.c) sum their models of epm_eval's time over.
 *
 * epm_eval times a trace with pass_ids pass by pass: each phase ends with
 * its busiest rank among that pass's tokens, summed over passes. A search
 * that scores the busiest rank of arbitrary folds (token i in fold i mod F)
 * then plans for batches of another size than the ones the run will wait
 * on: at decode-sized passes the busiest rank of a pass is mostly noise, and
 * a placement tuned to 512-token folds leaves too little slack for it
 * (bench/README.md, "Passes as folds"). So a trace with passes is folded by
 * its passes, as run --trace-out recorded them. Where there are more passes
 * than max_folds (memory, and the searches' work per move, grow with the
 * folds), max_folds passes evenly spread are the folds and the others' tokens
 * are left out of the model (fold -1; they still count in the objective):
 * a sample of the passes, which forecast the held-out time better than
 * folds of several consecutive passes each (bench/README.md). Where there are
 * fewer passes than the folds asked (prefill-sized passes, or one), each
 * pass is split into as many folds as make up the count, its tokens dealt
 * in turn: each pass's busiest rank is then estimated from its parts, each
 * scaled to the whole pass, which keeps the slack that token folds keep
 * (ilp.c). */
#include "planner.h"
#include "trace_internal.h"

/* The index of v in the sorted, distinct ids[n]. */
static int64_t find(const int32_t *ids, int64_t n, int32_t v)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int epm_plan_folds_test_cap;

epm_status epm_plan_folds(const epm_trace *t, int folds, int max_folds, int32_t **fold_of, int *nfolds)
{
    if (epm_plan_folds_test_cap > 0 && max_folds > epm_plan_folds_test_cap)
        max_folds = epm_plan_folds_test_cap;
    *fold_of = NULL;
    *nfolds = 0;
    if (folds < 1 || max_folds < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan folds: folds = %d, max_folds = %d", folds, max_folds);
    const int64_t T = epm_trace_tokens(t);
    const int32_t *pass = epm_trace_pass_ids(t);
    int32_t *ids = NULL, *f = epm_malloc((size_t)(T ? T : 1) * sizeof *f);
    int64_t d = 0;
    epm_status st = f ? epm_trace_pass_list(t, &ids, &d) : EPM_ERR_NOMEM;
    if (st != EPM_OK) {
        epm_free(f);
        return st;
    }
    if (d == 0) { /* (no pass_ids, or none but -1) */
        for (int64_t i = 0; i < T; i++)
            f[i] = (int32_t)(i % folds);
        *fold_of = f;
        *nfolds = folds;
        return EPM_OK;
    }
    /* P passes are folds: all of them, or a sample; each split into m where there are fewer than
     * the folds asked */
    const int64_t P = d < max_folds ? d : max_folds;
    int64_t m = 1;
    if (d < folds) {
        m = (folds + d - 1) / d;
        if (m * d > max_folds)
            m = max_folds / d > 1 ? max_folds / d : 1;
    }
    int64_t *seen = epm_calloc((size_t)d, sizeof *seen);
    if (!seen) {
        epm_free(ids);
        epm_free(f);
        return EPM_ERR_NOMEM;
    }
    for (int64_t i = 0; i < T; i++) {
        /* a token of pass -1 (which run records for a token that chose no expert) is in no pass:
         * out of the model */
        const int64_t q = pass[i] < 0 ? -1 : find(ids, d, pass[i]);
        if (q < 0)
            f[i] = -1;
        else if (d <= P)
            f[i] = (int32_t)(q * m + seen[q]++ % m);
        else /* pass q is a fold where q * P / d steps: P passes, evenly spread */
            f[i] = (q + 1) * P / d > q * P / d ? (int32_t)(q * P / d) : -1;
    }
    epm_free(seen);
    epm_free(ids);
    *fold_of = f;
    *nfolds = (int)(P * m);
    return EPM_OK;
}
