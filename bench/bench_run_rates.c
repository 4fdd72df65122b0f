/* `epmoe bench run --request-rates LIST`: online serving, as vLLM's
 * benchmark_serving sweeps --request-rate. First the offline batch (every
 * request at the start: the baseline), then for each rate of LIST the same
 * requests arriving as `epmoe run --request-rate` draws them (a gamma
 * process of shape --burstiness, seed 0), decoded continuously with at most
 * --max-num-seqs at once in mixed batches. After one unmeasured run, each
 * is run --reps times, alternated, and the repetition of median duration
 * is reported (the faster of the middle two at an even count): the
 * duration (the run's start to its last token), requests/s and generated
 * tokens/s over it and tokens/s over the offline batch's, seconds the ranks
 * waited for arrivals, TTFT p50/p99 and end to end p50/p99 from arrival,
 * TPOT p50, inter-token p99, and token agreement with the offline batch.
 * A serving trace's own arrival times add a row ("trace"), whose burstiness
 * column is its intervals' 1 / CV^2, the gamma shape of the same spread. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "../launch/cli.h"

typedef struct rep {
    double duration, wait;
    int64_t generated;
    epm_latency ttft, tpot, itl, e2e;
} rep;

static epm_status one_run(const epm_run_opts *base, int batch, const int *lens, const int32_t *const *prompts,
                          const double *arrival, int32_t *tokens, rep *out)
{
    epm_run_opts o = *base;
    o.arrival = arrival;
    epm_run_result *res = NULL;
    EPM_CHECK(epm_run(&o, batch, lens, prompts, &res));
    const epm_run_report *r = &res->report;
    *out = (rep){0, r->t_wait, 0, r->ttft, r->tpot, r->itl, r->e2e};
    for (int s = 0; s < batch; s++) {
        out->duration = res->t_done[s] > out->duration ? res->t_done[s] : out->duration;
        out->generated += res->gen_len[s];
    }
    if (tokens)
        memcpy(tokens, res->generated, (size_t)batch * base->max_new_tokens * sizeof *tokens);
    epm_run_result_destroy(res);
    return EPM_OK;
}

static int by_duration(const void *a, const void *b)
{
    const double x = ((const rep *)a)->duration, y = ((const rep *)b)->duration;
    return (x > y) - (x < y);
}

int epm_bench_run_rates(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                        const int32_t *const *prompts, const double *rates, int nrates, double burstiness,
                        const double *trace, int reps, int csv)
{
    const int me = epm_xcomm_rank(x), nnew = base->max_new_tokens, rows = nrates + 1 + !!trace;
    int rc = EPM_EXIT_OK;
    rep *all = calloc((size_t)rows * reps, sizeof *all);
    int32_t *tokens = malloc((size_t)rows * batch * nnew * sizeof *tokens);
    double *arrival = malloc((size_t)rows * batch * sizeof *arrival);
    epm_status st = all && tokens && arrival ? EPM_OK : EPM_ERR_NOMEM;
    for (int i = 0; i < nrates && st == EPM_OK; i++) /* the same requests at each rate, the same on every rank */
        st = epm_arrivals(batch, rates[i], burstiness, 0, arrival + (size_t)(i + 1) * batch);
    if (trace && st == EPM_OK)
        memcpy(arrival + (size_t)(nrates + 1) * batch, trace, (size_t)batch * sizeof *trace);
    /* the trace's own rate and gamma shape: requests over its span, and 1 / CV^2 of its intervals */
    double trace_rate = NAN, trace_shape = NAN; /* (one request: none) */
    if (trace && batch > 1) {
        const double mean = trace[batch - 1] / (batch - 1);
        double var = 0;
        for (int s = 1; s < batch; s++)
            var += (trace[s] - trace[s - 1] - mean) * (trace[s] - trace[s - 1] - mean) / (batch - 1);
        trace_rate = mean > 0 ? 1 / mean : INFINITY;
        trace_shape = var > 0 ? mean * mean / var : INFINITY;
    }
    st = epm_xcomm_agree(x, st);
    rep warm; /* a first run, unmeasured: pages, thread pools and caches warm for the baseline too */
    if (st == EPM_OK)
        st = one_run(base, batch, lens, prompts, NULL, NULL, &warm);
    /* alternated: a slow spell of the machine falls on every rate alike */
    for (int r = 0; r < reps && st == EPM_OK; r++)
        for (int i = 0; i < rows && st == EPM_OK; i++)
            st = one_run(base, batch, lens, prompts, i ? arrival + (size_t)i * batch : NULL,
                         r == 0 ? tokens + (size_t)i * batch * nnew : NULL, &all[(size_t)i * reps + r]);
    if (st != EPM_OK)
        rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
    if (rc == EPM_EXIT_OK && me == 0) {
        printf(csv ? "request_rate,burstiness,requests,duration_s,req_s,tok_s,vs_offline,wait_s,ttft_p50_ms,"
                     "ttft_p99_ms,tpot_p50_ms,itl_p99_ms,e2e_p50_s,e2e_p99_s,token_agreement\n"
                   : "%-8s %6s %8s %9s %8s %9s %10s %8s %9s %9s %9s %9s %8s %8s %9s\n",
               "rate/s", "burst", "requests", "duration", "req/s", "tok/s", "vs offline", "wait s", "TTFT p50",
               "TTFT p99", "TPOT p50", "ITL p99", "E2E p50", "E2E p99", "token agr");
        double offline = 0;
        for (int i = 0; i < rows; i++) {
            rep *v = all + (size_t)i * reps;
            qsort(v, (size_t)reps, sizeof *v, by_duration);
            const rep *m = &v[(reps - 1) / 2];
            const double tok_s = (double)m->generated / m->duration;
            offline = i == 0 ? tok_s : offline;
            char rate[32];
            const int is_trace = trace && i == rows - 1;
            snprintf(rate, sizeof rate, is_trace ? "trace" : i ? "%g" : "inf", i && !is_trace ? rates[i - 1] : 0.0);
            printf(csv ? "%s,%g,%d,%.4f,%.3f,%.1f,%.3f,%.4f,%.2f,%.2f,%.2f,%.2f,%.4f,%.4f,%.4f\n"
                       : "%-8s %6g %8d %9.3f %8.3f %9.1f %10.3f %8.3f %9.2f %9.2f %9.2f %9.2f %8.3f %8.3f %9.4f\n",
                   rate, is_trace ? trace_shape : i ? burstiness : 1.0, batch, m->duration, batch / m->duration, tok_s, tok_s / offline, m->wait,
                   1e3 * m->ttft.p50, 1e3 * m->ttft.p99, 1e3 * m->tpot.p50, 1e3 * m->itl.p99, m->e2e.p50, m->e2e.p99,
                   epm_bench_token_agreement(tokens, tokens + (size_t)i * batch * nnew, batch * nnew));
        }
        if (trace && !csv)
            printf("# trace: its requests at their recorded times, %.3g requests/s over its span, its intervals' "
                   "gamma shape (1 / CV^2) in the burst column\n", trace_rate);
        fflush(stdout);
    }
    free(all);
    free(tokens);
    free(arrival);
    return rc;
}
