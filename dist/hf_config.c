/* config.json of Mixtral, Qwen2-MoE and OLMoE as the Hugging Face Hub writes it. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "hf_model.h"

static epm_status get_int(json_t *root, const char *label, const char *key, int required, int lo, int hi, int *out)
{
    json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) {
        if (required)
            return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' is missing", label, key);
        return EPM_OK;
    }
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi)
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' must be an integer in [%d, %d]", label, key, lo, hi);
    *out = (int)json_integer_value(j);
    return EPM_OK;
}

static epm_status get_num(json_t *root, const char *label, const char *key, double *out)
{
    json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j))
        return EPM_OK;
    if (!json_is_number(j) || !(json_number_value(j) > 0) || !isfinite(json_number_value(j)))
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' must be a positive number", label, key);
    *out = json_number_value(j);
    return EPM_OK;
}

static int get_bool(json_t *root, const char *key, int dflt)
{
    json_t *j = json_object_get(root, key);
    return json_is_boolean(j) ? json_is_true(j) : dflt;
}

static epm_status parse(json_t *root, const char *label, epm_hf_config *c)
{
    if (!json_is_object(root))
        return epm_fail(EPM_ERR_FORMAT, "%s: top level is not an object", label);
    json_t *arch = json_array_get(json_object_get(root, "architectures"), 0);
    const char *a = json_is_string(arch) ? json_string_value(arch) : NULL;
    if (!a)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'architectures' must be a list naming the model class", label);
    if (!strcmp(a, "MixtralForCausalLM"))
        c->arch = EPM_ARCH_MIXTRAL;
    else if (!strcmp(a, "Qwen2MoeForCausalLM"))
        c->arch = EPM_ARCH_QWEN2MOE;
    else if (!strcmp(a, "OlmoeForCausalLM"))
        c->arch = EPM_ARCH_OLMOE;
    else
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: field 'architectures' = '%s' is not supported (MixtralForCausalLM, Qwen2MoeForCausalLM, "
                        "OlmoeForCausalLM)", label, a);
    const int BIG = 1 << 24;
    EPM_CHECK(get_int(root, label, "vocab_size", 1, 1, BIG, &c->vocab));
    EPM_CHECK(get_int(root, label, "hidden_size", 1, 1, 1 << 16, &c->hidden));
    EPM_CHECK(get_int(root, label, "num_hidden_layers", 1, 1, 4096, &c->layers));
    EPM_CHECK(get_int(root, label, "num_attention_heads", 1, 1, 4096, &c->heads));
    c->kv_heads = c->heads;
    EPM_CHECK(get_int(root, label, "num_key_value_heads", 0, 1, 4096, &c->kv_heads));
    if (c->heads % c->kv_heads)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'num_key_value_heads' = %d does not divide num_attention_heads = %d",
                        label, c->kv_heads, c->heads);
    c->head_dim = c->hidden / c->heads;
    EPM_CHECK(get_int(root, label, "head_dim", 0, 2, 512, &c->head_dim));
    if (c->head_dim % 2 || c->head_dim > 512)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: head_dim = %d must be even and at most 512", label, c->head_dim);
    const char *ek = c->arch == EPM_ARCH_MIXTRAL ? "num_local_experts" : "num_experts";
    EPM_CHECK(get_int(root, label, ek, 1, 1, 1 << 16, &c->experts));
    EPM_CHECK(get_int(root, label, "num_experts_per_tok", 1, 1, c->experts, &c->k));
    EPM_CHECK(get_int(root, label, "intermediate_size", 1, 1, 1 << 20, &c->dense_ffn));
    c->moe_ffn = c->dense_ffn;
    if (c->arch == EPM_ARCH_QWEN2MOE) {
        EPM_CHECK(get_int(root, label, "moe_intermediate_size", 1, 1, 1 << 20, &c->moe_ffn));
        EPM_CHECK(get_int(root, label, "shared_expert_intermediate_size", 0, 0, 1 << 20, &c->shared_ffn));
    }
    c->norm_topk = c->arch == EPM_ARCH_MIXTRAL ? 1 : get_bool(root, "norm_topk_prob", 0);
    c->qkv_bias = c->arch == EPM_ARCH_QWEN2MOE ? get_bool(root, "qkv_bias", 1) : get_bool(root, "attention_bias", 0);
    c->qk_norm = c->arch == EPM_ARCH_OLMOE;
    c->tie_embeddings = get_bool(root, "tie_word_embeddings", 0);
    double eps = 1e-5, theta = 10000.0;
    EPM_CHECK(get_num(root, label, "rms_norm_eps", &eps));
    c->eps = (float)eps;
    /* Older Hub configs put rope_theta at the top level; newer ones inside rope_parameters. */
    EPM_CHECK(get_num(root, label, "rope_theta", &theta));
    json_t *rp = json_object_get(root, "rope_parameters");
    if (!rp)
        rp = json_object_get(root, "rope_scaling");
    if (json_is_object(rp)) {
        EPM_CHECK(get_num(rp, label, "rope_theta", &theta));
        json_t *ty = json_object_get(rp, "rope_type");
        if (!ty)
            ty = json_object_get(rp, "type");
        if (json_is_string(ty) && strcmp(json_string_value(ty), "default"))
            return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'rope_parameters.rope_type' = '%s' is not supported (default)",
                            label, json_string_value(ty));
    }
    c->rope_theta = theta;
    json_t *clip = json_object_get(root, "clip_qkv");
    if (clip && !json_is_null(clip))
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'clip_qkv' must be null", label);
    c->sparse = epm_malloc((size_t)c->layers);
    if (!c->sparse)
        return EPM_ERR_NOMEM;
    memset(c->sparse, 1, (size_t)c->layers);
    if (c->arch == EPM_ARCH_QWEN2MOE) {
        int step = 1;
        EPM_CHECK(get_int(root, label, "decoder_sparse_step", 0, 1, 4096, &step));
        json_t *only = json_object_get(root, "mlp_only_layers");
        if (only && !json_is_array(only))
            return epm_fail(EPM_ERR_FORMAT, "%s: field 'mlp_only_layers' must be a list", label);
        for (int l = 0; l < c->layers; l++)
            c->sparse[l] = (l + 1) % step == 0;
        for (size_t i = 0; only && i < json_array_size(only); i++) {
            json_t *v = json_array_get(only, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->layers)
                return epm_fail(EPM_ERR_FORMAT, "%s: field 'mlp_only_layers[%zu]' is not a layer index", label, i);
            c->sparse[json_integer_value(v)] = 0;
        }
    }
    return EPM_OK;
}

epm_status epm_hf_config_parse(const char *text, size_t len, const char *label, epm_hf_config *out)
{
    memset(out, 0, sizeof *out);
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    epm_status st = parse(root, label, out);
    json_decref(root);
    if (st != EPM_OK)
        epm_hf_config_free(out);
    return st;
}

void epm_hf_config_free(epm_hf_config *c)
{
    epm_free(c->sparse);
    c->sparse = NULL;
}
