/* Fuzz target: token-id input (JSON, .npy, safetensors by content). Every
 * accepted id lies inside the vocabulary given, and every per-sequence
 * max_new_tokens in [1, 2^20]. */
#include <stdint.h>

#include "epmoe/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int vocab = 1000;
    epm_tokens *t;
    if (epm_tokens_parse(data, size, "fuzz.tokens", vocab, &t) != EPM_OK)
        return 0;
    if (t->batch < 1)
        __builtin_trap();
    for (int s = 0; s < t->batch; s++) {
        if (t->lens[s] < 1)
            __builtin_trap();
        for (int i = 0; i < t->lens[s]; i++)
            if (t->ids[s][i] < 0 || t->ids[s][i] >= vocab)
                __builtin_trap();
        if (t->max_new && (t->max_new[s] < 1 || t->max_new[s] > (1 << 20)))
            __builtin_trap();
    }
    epm_tokens_destroy(t);
    return 0;
}
