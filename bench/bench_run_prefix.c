/* `epmoe bench run --prefix-caching`: the batch without prefix caching (the
 * baseline), with it but without its in-batch wait (a sequence computes a
 * prefix still in flight too: prefix_defer < 0), and with it (epmoe run
 * --enable-prefix-caching), alternated --reps times, each kept at its
 * fastest: prompt tokens computed and copied, prefill seconds and
 * generated tokens/s over prefill + decoding, each over the baseline's,
 * TTFT p50, and token agreement with the baseline. Sequences share prefixes where the input's prompts do (or
 * --shared-prefix gives the random ones one); a sequence copies from one
 * its rank holds or has kept since it ended, so --max-num-seqs below the
 * batch is what lets later sequences find their prefix. With --turns, the
 * batch is conversations: each turn's prompt is the last turn's prompt and
 * its outputs, then new tokens (a chat's next message). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "../launch/cli.h"

typedef struct best {
    double prefill, tok_s, ttft;
    int64_t computed, copied;
} best;

int epm_bench_run_prefix(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                         const int32_t *const *prompts, int reps, int csv)
{
    const int me = epm_xcomm_rank(x), nnew = base->max_new_tokens;
    /* off; on without the in-batch wait (a sequence computes a prefix still in flight too); on */
    enum { KINDS = 3 };
    static const char *const kind[KINDS] = {"off", "no_wait", "on"};
    best b[KINDS] = {{1e30, 0, 1e30, 0, 0}, {1e30, 0, 1e30, 0, 0}, {1e30, 0, 1e30, 0, 0}};
    int32_t *tokens = malloc((size_t)KINDS * batch * nnew * sizeof *tokens);
    epm_status st = epm_xcomm_agree(x, tokens ? EPM_OK : EPM_ERR_NOMEM);
    for (int r = 0; r < reps && st == EPM_OK; r++) /* alternated: a slow spell falls on all alike */
        for (int k = 0; k < KINDS && st == EPM_OK; k++) {
            epm_run_opts o = *base;
            o.prefix_caching = k > 0;
            o.prefix_defer = k == 1 ? -1 : 0;
            epm_run_result *res = NULL;
            if ((st = epm_run(&o, batch, lens, prompts, &res)) != EPM_OK)
                break;
            const epm_run_report *p = &res->report;
            int64_t generated = 0;
            for (int s = 0; s < batch; s++)
                generated += res->gen_len[s];
            const double secs = p->t_prefill + p->t_decode, tok_s = secs > 0 ? (double)generated / secs : 0;
            b[k].prefill = p->t_prefill < b[k].prefill ? p->t_prefill : b[k].prefill;
            b[k].tok_s = tok_s > b[k].tok_s ? tok_s : b[k].tok_s;
            b[k].ttft = p->ttft.p50 < b[k].ttft ? p->ttft.p50 : b[k].ttft;
            b[k].computed = p->prefill_tokens;
            b[k].copied = p->cached_prompt_tokens;
            if (r == 0)
                memcpy(tokens + (size_t)k * batch * nnew, res->generated, (size_t)batch * nnew * sizeof *tokens);
            epm_run_result_destroy(res);
        }
    int rc = EPM_EXIT_OK;
    if (st != EPM_OK)
        rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
    if (rc == EPM_EXIT_OK && me == 0) {
        printf(csv ? "prefix_caching,prompt_tokens_computed,prompt_tokens_copied,prefill_s,prefill_vs_off,tok_s,"
                     "tok_s_vs_off,ttft_p50_ms,token_agreement\n"
                   : "%-14s %10s %10s %10s %9s %9s %9s %9s %9s\n",
               "prefix caching", "computed", "copied", "prefill s", "pf/off", "tok/s", "vs off", "TTFT p50", "token agr");
        for (int k = 0; k < KINDS; k++)
            printf(csv ? "%s,%lld,%lld,%.4f,%.3f,%.1f,%.3f,%.2f,%.4f\n"
                       : "%-14s %10lld %10lld %10.4f %9.3f %9.1f %9.3f %9.2f %9.4f\n",
                   kind[k], (long long)b[k].computed, (long long)b[k].copied, b[k].prefill,
                   b[0].prefill > 0 ? b[k].prefill / b[0].prefill : NAN, b[k].tok_s,
                   b[0].tok_s > 0 ? b[k].tok_s / b[0].tok_s : NAN, 1e3 * b[k].ttft,
                   epm_bench_token_agreement(tokens, tokens + (size_t)k * batch * nnew, batch * nnew));
        fflush(stdout);
    }
    free(tokens);
    return rc;
}

epm_status epm_bench_prefix_turns(epm_xcomm *x, const epm_run_opts *base, int convs, int seq, const int32_t *const *first,
                                  int turns, int more, int vocab, int **lens_out, int32_t ***prompts_out)
{
    const int B = convs * turns, nnew = base->max_new_tokens;
    int *lens = calloc((size_t)B, sizeof *lens);
    int32_t **prompts = calloc((size_t)B, sizeof *prompts);
    epm_status st = lens && prompts ? EPM_OK : EPM_ERR_NOMEM;
    for (int c = 0; c < convs && st == EPM_OK; c++) {
        lens[c] = seq;
        if (!(prompts[c] = malloc((size_t)seq * sizeof **prompts)))
            st = EPM_ERR_NOMEM;
        else
            memcpy(prompts[c], first[c], (size_t)seq * sizeof **prompts);
    }
    uint64_t rng = 31337; /* (the same on every rank) */
    for (int t = 1; t < turns && (st = epm_xcomm_agree(x, st)) == EPM_OK; t++) {
        /* turn t - 1 alone gives its outputs (greedy: the same in the measured batch) */
        epm_run_opts o = *base;
        o.max_new_per_seq = NULL;
        o.max_num_seqs = 0;
        epm_run_result *res = NULL;
        const int at = (t - 1) * convs;
        if ((st = epm_run(&o, convs, lens + at, (const int32_t *const *)prompts + at, &res)) != EPM_OK)
            break;
        for (int c = 0; c < convs && st == EPM_OK; c++) {
            const int n = lens[at + c], g = res->gen_len[c], s = at + convs + c;
            if ((int64_t)n + g + more > INT32_MAX / 2 || !(prompts[s] = malloc((size_t)(n + g + more) * sizeof **prompts))) {
                st = EPM_ERR_NOMEM;
                break;
            }
            memcpy(prompts[s], prompts[at + c], (size_t)n * sizeof **prompts);
            memcpy(prompts[s] + n, res->generated + (size_t)c * nnew, (size_t)g * sizeof **prompts);
            for (int k = 0; k < more; k++)
                prompts[s][n + g + k] = (int32_t)(epm_splitmix64(&rng) % (uint64_t)vocab);
            lens[s] = n + g + more;
        }
        epm_run_result_destroy(res);
    }
    st = epm_xcomm_agree(x, st); /* (the last turn's prompts: a rank short of memory stops every rank) */
    if (st != EPM_OK) {
        for (int s = 0; s < B && prompts; s++)
            free(prompts[s]);
        free(prompts);
        free(lens);
        return st;
    }
    *lens_out = lens;
    *prompts_out = prompts;
    return EPM_OK;
}
