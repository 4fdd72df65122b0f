/* Fuzz target: the .npy path of the trace reader. Inputs without the magic
 * get it prepended, so that mutations are spent on the version, the header
 * length, the header dict and the data rather than on the first six bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    const uint8_t *in = data;
    uint8_t *copy = NULL;
    if (size < sizeof magic || memcmp(data, magic, sizeof magic) != 0) {
        copy = malloc(size + sizeof magic);
        if (!copy)
            return 0;
        memcpy(copy, magic, sizeof magic);
        if (size)
            memcpy(copy + sizeof magic, data, size);
        in = copy;
        size += sizeof magic;
    }
    epm_trace *t = NULL;
    if (epm_trace_parse(in, size, "fuzz.npy", 0, &t) == EPM_OK) {
        /* a trace accepted from .npy must survive the checks of the other paths */
        volatile int32_t sink = 0;
        for (int l = 0; l < epm_trace_layers(t); l++)
            if (epm_trace_tokens(t) > 0)
                sink ^= epm_trace_ids(t, l)[epm_trace_tokens(t) * epm_trace_k(t) - 1];
        (void)sink;
        epm_trace_stats *s = NULL; /* bounded as in fuzz_trace.c */
        if ((int64_t)epm_trace_layers(t) * epm_trace_experts(t) <= (1 << 16) &&
            epm_trace_stats_compute(t, 1, &s) == EPM_OK)
            epm_trace_stats_destroy(s);
        epm_trace_destroy(t);
    }
    free(copy);
    return 0;
}
