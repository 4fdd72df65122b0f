/* Fuzz target: the safetensors header and tensor table. */
#include <stdint.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_safetensors *st = NULL;
    if (epm_st_parse(data, size, "fuzz", &st) == EPM_OK) {
        /* touch every tensor's bytes: offsets must be inside the buffer */
        volatile uint8_t sink = 0;
        for (int i = 0; i < st->count; i++) {
            const uint8_t *p = st->tensors[i].data;
            size_t n = (size_t)(st->tensors[i].end - st->tensors[i].begin);
            if (n)
                sink ^= p[0] ^ p[n - 1];
        }
        (void)sink;
        epm_st_close(st);
    }
    return 0;
}
