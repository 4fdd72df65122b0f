/* Fuzz target: config.json of every architecture. An accepted config must be
 * internally consistent, and must survive being written and read back. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
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
    /* DeepSeek: groups that divide the experts and leave k to choose from,
     * an attention width that holds q/k and v, a finite YaRN */
    if (c.n_group > 0 && (c.num_experts % c.n_group || c.topk_group < 1 || c.topk_group > c.n_group ||
                          (int64_t)c.topk_group * (c.num_experts / c.n_group) < c.top_k))
        __builtin_trap();
    if (c.mla && (c.head_dim < c.qk_nope_dim + c.qk_rope_dim || c.head_dim < c.v_head_dim || c.qk_rope_dim % 2 ||
                  c.num_kv_heads != c.num_heads || c.first_k_dense > c.num_layers))
        __builtin_trap();
    /* FP8 blocks: both set (positive) or neither */
    if ((c.fp8_block[0] > 0) != (c.fp8_block[1] > 0) || c.fp8_block[0] < 0 || c.fp8_block[1] < 0)
        __builtin_trap();
    if (c.yarn_factor > 0) {
        double inv[512], cs, sm;
        int dim = c.mla ? c.qk_rope_dim : c.head_dim;
        if (dim / 2 > 512 || c.yarn_original_max < 1)
            __builtin_trap();
        epm_model_rope_freqs(&c, dim, inv, &cs, &sm);
        for (int j = 0; j < dim / 2; j++)
            if (!(inv[j] > 0 && inv[j] <= 1))
                __builtin_trap();
        if (!(cs > 0 && cs < 1e300 && sm > 0 && sm < 1e300))
            __builtin_trap();
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_config.%ld.json", (long)getpid());
    epm_model_config d;
    if (epm_model_config_save(&c, path) != EPM_OK || epm_model_config_load(path, &d) != EPM_OK)
        __builtin_trap();
    if (d.arch != c.arch || d.hidden_size != c.hidden_size || d.num_experts != c.num_experts ||
        d.moe_ffn != c.moe_ffn || epm_model_config_moe_layers(&d) != epm_model_config_moe_layers(&c) ||
        d.head_dim != c.head_dim || d.num_kv_heads != c.num_kv_heads || d.shared_ffn != c.shared_ffn ||
        d.qk_norm != c.qk_norm || d.mla != c.mla || d.q_lora_rank != c.q_lora_rank ||
        d.kv_lora_rank != c.kv_lora_rank || d.qk_nope_dim != c.qk_nope_dim || d.qk_rope_dim != c.qk_rope_dim ||
        d.v_head_dim != c.v_head_dim || d.rope_interleave != c.rope_interleave || d.first_k_dense != c.first_k_dense ||
        d.router_sigmoid != c.router_sigmoid || d.n_group != c.n_group || d.topk_group != c.topk_group ||
        d.group_max != c.group_max || d.norm_topk_prob != c.norm_topk_prob ||
        (d.yarn_factor > 0) != (c.yarn_factor > 0) || d.yarn_original_max != c.yarn_original_max ||
        d.yarn_truncate != c.yarn_truncate || memcmp(d.fp8_block, c.fp8_block, sizeof c.fp8_block) ||
        memcmp(d.moe_layer, c.moe_layer, (size_t)c.num_layers))
        __builtin_trap();
    unlink(path);
    epm_model_config_clear(&d);
    epm_model_config_clear(&c);
    return 0;
}
