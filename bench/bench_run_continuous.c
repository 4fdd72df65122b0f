/* `epmoe bench run --continuous LIST`: for each N of LIST, the batch
 * decoded with at most N sequences at once, three ways, alternated --reps
 * times: in static batches of N, one after another, each decoding until its
 * longest sequence ends (the baseline: what a runtime without continuous
 * batching does under the same K/V memory); continuously (epmoe run
 * --max-num-seqs N: a sequence that ends makes room for the next) with
 * prefill passes of their own (--separate-prefill: decoding waits); and
 * continuously in mixed batches (the default: an admitted prompt's chunks
 * ride in the decoding passes). Passes, decoding passes, generated
 * tokens/s over all passes and over static's, the prefill's share of that
 * time, K/V caches of the fullest rank, token agreement with static, and
 * the latencies a serving benchmark reports: time to first token (every
 * sequence arriving at the start; a static batch waits for the ones before
 * it) and the gaps between a sequence's tokens, p50 and p99. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "../launch/cli.h"

typedef struct way {
    double pre, dec;   /* prefill and decoding seconds (slowest rank's) of the best repetition */
    int64_t steps;     /* passes with decode tokens */
    int64_t passes;    /* forward passes */
    int64_t generated; /* tokens */
    int64_t kv_peak;   /* K/V cache bytes of the fullest rank at its fullest */
    int32_t *tokens;   /* [batch][nnew] of the first repetition (-1 past a sequence's end) */
    double *ttft;      /* [batch] each sequence's time to first token, from the first batch's start */
    double *gaps;      /* [batch][nnew] the gaps between its consecutive tokens (NaN: none) */
    epm_latency lat[2];  /* TTFT and inter-token latency of the best repetition */
} way;

/* TTFT and the gaps between consecutive tokens of sequences [s0, s0 + b)
 * of a run that started off seconds after the first batch's */
static void take_times(const epm_run_result *res, int s0, int b, int nnew, double off, way *w)
{
    for (int s = 0; s < b; s++)
        w->ttft[s0 + s] = res->t_first[s] + off;
    epm_token_gaps(res->t_token, res->gen_len, b, nnew, w->gaps + (size_t)s0 * nnew);
}

/* The batch in static batches of n: each one epm_run of its sequences, all at once. */
static epm_status static_batches(const epm_run_opts *base, int batch, const int *lens, const int32_t *const *prompts,
                                 const int *max_new, int n, way *w, double *secs)
{
    const int nnew = base->max_new_tokens;
    secs[0] = secs[1] = 0;
    w->steps = w->passes = w->generated = 0;
    double off = 0; /* each batch starts when the one before it ends */
    for (int s0 = 0; s0 < batch; s0 += n) {
        const int b = batch - s0 < n ? batch - s0 : n;
        epm_run_opts o = *base;
        o.max_num_seqs = 0;
        o.max_total_tokens = 0; /* (a batch at once, as static batching holds it) */
        o.separate_prefill = 1; /* each batch prefilled, then decoded */
        o.max_new_per_seq = max_new + s0;
        epm_run_result *res = NULL;
        EPM_CHECK(epm_run(&o, b, lens + s0, prompts + s0, &res));
        secs[0] += res->report.t_prefill;
        secs[1] += res->report.t_decode;
        w->steps += res->report.decode_steps;
        w->passes += res->report.decode_steps + res->report.prefill_passes - res->report.mixed_passes;
        w->kv_peak = res->report.kv_cache_bytes_max > w->kv_peak ? res->report.kv_cache_bytes_max : w->kv_peak;
        take_times(res, s0, b, nnew, off, w);
        double end = 0;
        for (int s = 0; s < b; s++)
            end = res->t_done[s] > end ? res->t_done[s] : end;
        off += end;
        for (int s = 0; s < b; s++) {
            w->generated += res->gen_len[s];
            if (w->tokens)
                memcpy(w->tokens + (size_t)(s0 + s) * nnew, res->generated + (size_t)s * nnew,
                       (size_t)nnew * sizeof *w->tokens);
        }
        epm_run_result_destroy(res);
    }
    return EPM_OK;
}

static epm_status continuous(const epm_run_opts *base, int batch, const int *lens, const int32_t *const *prompts,
                             const int *max_new, int n, int separate, way *w, double *secs)
{
    epm_run_opts o = *base;
    o.max_num_seqs = n;
    o.max_new_per_seq = max_new;
    o.separate_prefill = separate;
    epm_run_result *res = NULL;
    EPM_CHECK(epm_run(&o, batch, lens, prompts, &res));
    secs[0] = res->report.t_prefill;
    secs[1] = res->report.t_decode;
    w->steps = res->report.decode_steps;
    w->passes = res->report.decode_steps + res->report.prefill_passes - res->report.mixed_passes;
    w->kv_peak = res->report.kv_cache_bytes_max;
    w->generated = 0;
    for (int s = 0; s < batch; s++)
        w->generated += res->gen_len[s];
    take_times(res, 0, batch, base->max_new_tokens, 0, w);
    if (w->tokens)
        memcpy(w->tokens, res->generated, (size_t)batch * base->max_new_tokens * sizeof *w->tokens);
    epm_run_result_destroy(res);
    return EPM_OK;
}

enum { WAYS = 3 };
static const char *const way_name[WAYS] = {"static", "separate", "mixed"};

int epm_bench_run_continuous(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                             const int32_t *const *prompts, const int *max_new, const long *seqs, int nseqs, int reps,
                             int csv)
{
    const int me = epm_xcomm_rank(x), nnew = base->max_new_tokens;
    int rc = EPM_EXIT_OK;
    if (me == 0)
        printf(csv ? "max_num_seqs,way,passes,decode_steps,generated,tok_s,vs_static,prefill_share,kv_bytes_rank,"
                     "token_agreement,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms\n"
                   : "%-9s %-9s %8s %8s %10s %10s %9s %9s %14s %9s %9s %9s %9s %9s\n",
               "max seqs", "way", "passes", "steps", "generated", "tok/s", "vs static", "prefill", "KV/rank",
               "token agr", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99");
    for (int k = 0; k < nseqs && rc == EPM_EXIT_OK; k++) {
        const int n = (int)seqs[k];
        way w[WAYS];
        memset(w, 0, sizeof w);
        double best[WAYS] = {1e30, 1e30, 1e30}; /* prefill + decoding */
        epm_status st = EPM_OK;
        for (int i = 0; i < WAYS; i++) {
            w[i].tokens = malloc((size_t)batch * nnew * sizeof *w[i].tokens);
            w[i].ttft = malloc((size_t)batch * sizeof *w[i].ttft);
            w[i].gaps = malloc((size_t)batch * nnew * sizeof *w[i].gaps);
            if (!w[i].tokens || !w[i].ttft || !w[i].gaps)
                st = EPM_ERR_NOMEM;
        }
        st = epm_xcomm_agree(x, st);
        for (int r = 0; r < reps && st == EPM_OK; r++)
            for (int i = 0; i < WAYS && st == EPM_OK; i++) {
                double secs[2] = {0, 0};
                int32_t *keep = w[i].tokens;
                if (r > 0)
                    w[i].tokens = NULL; /* the first repetition's tokens are the ones compared */
                st = i == 0 ? static_batches(base, batch, lens, prompts, max_new, n, &w[i], secs)
                            : continuous(base, batch, lens, prompts, max_new, n, i == 1, &w[i], secs);
                w[i].tokens = keep;
                if (st == EPM_OK)
                    st = epm_xcomm_max_f64(x, secs, 2);
                if (st == EPM_OK && secs[0] + secs[1] < best[i]) {
                    best[i] = secs[0] + secs[1], w[i].pre = secs[0], w[i].dec = secs[1];
                    st = epm_latency_of(w[i].ttft, batch, &w[i].lat[0]);
                    if (st == EPM_OK)
                        st = epm_latency_of(w[i].gaps, (int64_t)batch * nnew, &w[i].lat[1]);
                }
            }
        if (st != EPM_OK)
            rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
        for (int i = 0; i < WAYS && rc == EPM_EXIT_OK && me == 0; i++) {
            const double ts = (double)w[0].generated / best[0], t = (double)w[i].generated / best[i];
            printf(csv ? "%d,%s,%lld,%lld,%lld,%.1f,%.3f,%.3f,%lld,%.4f,%.2f,%.2f,%.2f,%.2f\n"
                       : "%-9d %-9s %8lld %8lld %10lld %10.1f %9.3f %9.3f %14lld %9.4f %9.2f %9.2f %9.2f %9.2f\n",
                   n, way_name[i], (long long)w[i].passes, (long long)w[i].steps, (long long)w[i].generated, t,
                   t / ts, w[i].pre / best[i], (long long)w[i].kv_peak,
                   epm_bench_token_agreement(w[0].tokens, w[i].tokens, batch * nnew), 1e3 * w[i].lat[0].p50,
                   1e3 * w[i].lat[0].p99, 1e3 * w[i].lat[1].p50, 1e3 * w[i].lat[1].p99);
            fflush(stdout);
        }
        for (int i = 0; i < WAYS; i++) {
            free(w[i].tokens);
            free(w[i].ttft);
            free(w[i].gaps);
        }
    }
    return rc;
}
