/* Fuzz target: model.safetensors.index.json. Every accepted entry names a
 * plain file inside the model folder. */
#include <stdint.h>
#include <string.h>

#include "model_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_model_index *ix;
    if (epm_model_index_parse((const char *)data, size, "fuzz.index.json", &ix) != EPM_OK)
        return 0;
    if (ix->count < 1 || ix->nfiles < 1 || ix->nfiles > ix->count)
        __builtin_trap();
    for (int i = 0; i < ix->count; i++)
        if (ix->file[i] < 0 || ix->file[i] >= ix->nfiles)
            __builtin_trap();
    for (int f = 0; f < ix->nfiles; f++)
        if (strchr(ix->files[f], '/') || !strcmp(ix->files[f], "..") || !ix->files[f][0])
            __builtin_trap();
    epm_model_index_destroy(ix);
    return 0;
}
