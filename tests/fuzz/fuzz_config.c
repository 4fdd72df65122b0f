/* Fuzz target: config.json of the three architectures. An accepted config
 * must be internally consistent, and must survive being written and read back. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "epmoe/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_model_config c;
    if (epm_model_config_parse((const char *)data, size, "fuzz.json", &c) != EPM_OK)
        return 0;
    if (c.top_k < 1 || c.top_k > c.num_experts || c.num_heads % c.num_kv_heads || c.head_dim % 2 ||
        epm_model_config_moe_layers(&c) > c.num_layers)
        __builtin_trap();
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_config.%ld.json", (long)getpid());
    epm_model_config d;
    if (epm_model_config_save(&c, path) != EPM_OK || epm_model_config_load(path, &d) != EPM_OK)
        __builtin_trap();
    if (d.arch != c.arch || d.hidden_size != c.hidden_size || d.num_experts != c.num_experts ||
        d.moe_ffn != c.moe_ffn || epm_model_config_moe_layers(&d) != epm_model_config_moe_layers(&c))
        __builtin_trap();
    unlink(path);
    epm_model_config_clear(&d);
    epm_model_config_clear(&c);
    return 0;
}
