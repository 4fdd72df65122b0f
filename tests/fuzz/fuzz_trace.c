/* Fuzz target: the trace reader (safetensors or .npy, chosen by content),
 * then the statistics over whatever it accepted. */
#include <stdint.h>

#include "epmoe/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* experts inferred, and a fixed count that some ids will exceed */
    static const int experts[2] = {0, 8};
    for (int i = 0; i < 2; i++) {
        epm_trace *t = NULL;
        if (epm_trace_parse(data, size, "fuzz", experts[i], &t) != EPM_OK)
            continue;
        /* A valid trace may still ask for layers x experts counters beyond
         * the fuzzer's memory limit; that is not a bug. */
        epm_trace_stats *s = NULL;
        if ((int64_t)epm_trace_layers(t) * epm_trace_experts(t) <= (1 << 16) &&
            epm_trace_stats_compute(t, 2, &s) == EPM_OK)
            epm_trace_stats_destroy(s);
        epm_trace_destroy(t);
    }
    return 0;
}
