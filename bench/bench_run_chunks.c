/* `epmoe bench run --prefill-chunks LIST`: the prompts prefilled in one pass
 * (the baseline) and in passes of each chunk size (epmoe run
 * --prefill-chunk), alternated --reps times: peak memory of the fullest
 * rank, best prefill tokens/s, each over one pass's, and the last logits
 * and generated tokens against one pass's. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "bench_run.h"
#include "../launch/cli.h"

/* The kernel keeps each process's peak resident set (VmHWM) and resets it
 * on "5" in clear_refs (Linux 4.0+): a run's own peak, in bytes; 0 where
 * the kernel does not say. The heap the previous run freed goes back to the
 * kernel first: epmoe keeps up to 1 GiB of it (launch/main.c), which would
 * count in the next run's peak. */
static void peak_reset(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static double peak_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

int epm_bench_run_chunks(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens, const int32_t *const *prompts,
                         const long *chunk, int nchunk, int reps, int csv)
{
    enum { MAXC = 9 };
    const int me = epm_xcomm_rank(x), configs = nchunk + 1;
    int rc = EPM_EXIT_OK;
    epm_run_result *first[MAXC] = {NULL};
    double pre[MAXC], peak[MAXC];
    for (int k = 0; k < configs; k++)
        pre[k] = 1e30, peak[k] = 0;
    for (int r = 0; r < reps && rc == EPM_EXIT_OK; r++)
        for (int k = 0; k < configs; k++) {
            epm_run_opts o = *base;
            o.prefill_chunk = k ? chunk[k - 1] : 0;
            epm_run_result *res = NULL;
            peak_reset();
            epm_status st = epm_run(&o, batch, lens, prompts, &res);
            double p = peak_bytes();
            if (st == EPM_OK)
                st = epm_xcomm_max_f64(x, &p, 1);
            if (st != EPM_OK) {
                rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
                epm_run_result_destroy(res);
                break;
            }
            pre[k] = fmin(pre[k], res->report.t_prefill);
            peak[k] = fmax(peak[k], p);
            if (!first[k])
                first[k] = res;
            else
                epm_run_result_destroy(res);
        }
    if (rc == EPM_EXIT_OK && me == 0) {
        const epm_run_result *a = first[0];
        const int nnew = base->max_new_tokens;
        printf(csv ? "prefill_chunk,passes,peak_bytes_rank,peak_vs_one_pass,prefill_tok_s,prefill_vs_one_pass,"
                     "logit_rel_err,token_agreement\n"
                   : "%-13s %7s %15s %9s %12s %9s %13s %9s\n",
               "prefill chunk", "passes", "peak bytes/rank", "peak/one", "prefill t/s", "pre/one", "logit rel err",
               "token agr");
        for (int k = 0; k < configs; k++) {
            const epm_run_result *b = first[k];
            char name[24];
            snprintf(name, sizeof name, k ? "%ld" : "one pass", k ? chunk[k - 1] : 0L);
            printf(csv ? "%s,%d,%.0f,%.4f,%.1f,%.3f,%.3g,%.4f\n" : "%-13s %7d %15.0f %9.4f %12.1f %9.3f %13.3g %9.4f\n",
                   k ? name : csv ? "0" : name, b->report.prefill_passes, peak[k], peak[0] > 0 ? peak[k] / peak[0] : 0,
                   (double)b->report.prefill_tokens / pre[k], pre[0] / pre[k],
                   epm_bench_logit_err(a->logits, b->logits, (int64_t)batch * a->vocab), /* each sequence's last */
                   epm_bench_token_agreement(a->generated, b->generated, batch * nnew));
        }
        fflush(stdout);
    }
    for (int k = 0; k < configs; k++)
        epm_run_result_destroy(first[k]);
    return rc;
}
