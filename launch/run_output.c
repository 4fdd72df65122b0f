/* --output: a line per request, so that a pipeline reads each request's
 * samples where vLLM's offline API and `vllm run-batch` would put them,
 * rather than zipping --json's per-sequence columns back together. */
#include <math.h>

#include "core.h"
#include "run_output.h"

void run_print_lp(FILE *f, float lp)
{
    if (lp > -INFINITY)
        fprintf(f, "%.9g", lp);
    else
        fprintf(f, "null");
}

void run_print_token_lp(FILE *f, int32_t token, float lp, const int32_t *top_ids, const float *top_lp, int top)
{
    fprintf(f, "{\"token\": %d, \"logprob\": ", (int)token);
    run_print_lp(f, lp);
    fprintf(f, ", \"top\": [");
    for (int q = 0; q < top; q++) {
        fprintf(f, "%s[%d, ", q ? ", " : "", (int)top_ids[q]);
        run_print_lp(f, top_lp[q]);
        fprintf(f, "]");
    }
    fprintf(f, "]}");
}

void run_print_gen_lp(FILE *f, const epm_run_result *res, int maxnew, int s, int shown)
{
    const int top = res->top_logprobs;
    fprintf(f, "[");
    for (int j = 0; j < res->gen_len[s]; j++) {
        const size_t at = (size_t)s * (size_t)maxnew + j;
        fprintf(f, "%s", j ? ", " : "");
        run_print_token_lp(f, res->generated[at], res->logprob[at], res->top_ids + at * top, res->top_lp + at * top,
                           shown);
    }
    fprintf(f, "]");
}

void run_print_prompt_lp(FILE *f, const epm_run_result *res, const int32_t *ids, int s, int64_t first, int shown)
{
    const int top = res->prompt_top;
    fprintf(f, "[null");
    for (int p = 1; p < res->lens[s]; p++) {
        const int64_t t = first + p;
        fprintf(f, ", ");
        run_print_token_lp(f, ids[p], res->prompt_lp[t], res->prompt_top_ids + t * top, res->prompt_top_lp + t * top,
                           shown);
    }
    fprintf(f, "]");
}

typedef struct out_ctx {
    const epm_run_result *res;
    const run_batch *rb;
    int maxnew;
} out_ctx;

/* sequence s's sample entry */
static void sample(FILE *f, const out_ctx *c, int s, int index)
{
    const epm_run_result *res = c->res;
    const int shown = c->rb->lp_top ? c->rb->lp_top[s] : res->top_logprobs;
    const size_t at0 = (size_t)s * (size_t)c->maxnew;
    fprintf(f, "{\"index\": %d, \"token_ids\": [", index);
    for (int j = 0; j < res->gen_len[s]; j++)
        fprintf(f, "%s%d", j ? ", " : "", (int)res->generated[at0 + j]);
    fprintf(f, "], \"finish_reason\": \"%s\", \"cumulative_logprob\": ", res->stopped[s] ? "stop" : "length");
    if (!res->logprob || shown < 0) {
        fprintf(f, "null, \"logprobs\": null}");
        return;
    }
    double sum = 0;
    for (int j = 0; j < res->gen_len[s]; j++)
        sum += res->logprob[at0 + j];
    run_print_lp(f, (float)sum);
    fprintf(f, ", \"logprobs\": ");
    run_print_gen_lp(f, res, c->maxnew, s, shown);
    fprintf(f, "}");
}

static epm_status produce(void *ctx, void *file)
{
    FILE *f = file;
    const out_ctx *c = ctx;
    const epm_run_result *res = c->res;
    const run_batch *rb = c->rb;
    int64_t first_row = 0; /* sequence s's prompt rows in res->prompt_lp */
    for (int s = 0; s < res->batch;) {
        const int r = rb->req_of ? rb->req_of[s] : s;
        int e = s + 1; /* the request's samples: s .. e - 1 */
        while (rb->req_of && e < res->batch && rb->req_of[e] == r)
            e++;
        fprintf(f, "{\"request_index\": %d, \"prompt_tokens\": %d, \"outputs\": [", r, res->lens[s]);
        for (int q = s; q < e; q++) {
            fprintf(f, "%s", q > s ? ", " : "");
            sample(f, c, q, q - s);
        }
        fprintf(f, "], \"prompt_logprobs\": ");
        const int shown = rb->plp_top ? rb->plp_top[s] : res->prompt_top;
        if (!res->prompt_lp || shown < 0)
            fprintf(f, "null");
        else
            run_print_prompt_lp(f, res, rb->ids[s], s, first_row, shown);
        fprintf(f, "}\n");
        for (int q = s; q < e; q++)
            first_row += res->lens[q];
        s = e;
    }
    return ferror(f) ? epm_fail(EPM_ERR_IO, "write failed") : EPM_OK;
}

epm_status run_output_write(const char *path, const epm_run_result *res, const run_batch *rb, int maxnew)
{
    out_ctx c = {res, rb, maxnew};
    return epm_write_atomic(path, produce, &c);
}
