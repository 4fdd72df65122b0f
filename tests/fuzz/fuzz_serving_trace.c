/* Fuzz target: production serving traces as CSV (Azure's, BurstGPT's). */
#include <stdint.h>
#include <stdlib.h>

#include "serving_trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_serving_trace *t = NULL;
    if (epm_serving_trace_parse((const char *)data, size, "fuzz", &t) != EPM_OK) {
        if (t)
            abort();
        return 0;
    }
    /* what the runtime takes: requests in arrival order from 0, each with tokens in and out */
    if (t->n < 1 || t->rows != t->n + t->skipped || t->arrival[0] != 0 || !t->format)
        abort();
    for (int64_t i = 0; i < t->n; i++)
        if (t->prompt_len[i] < 1 || t->output_len[i] < 1 || !(t->arrival[i] >= (i ? t->arrival[i - 1] : 0)))
            abort();
    epm_serving_trace_destroy(t);
    return 0;
}
