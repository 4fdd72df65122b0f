/* config.json of Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE and DeepSeek-V3, as transformers writes it.
 * A field that is absent takes the default of transformers' config class for
 * that architecture; a field that is present but wrong is an error naming
 * the file, the field and its value. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "json_show.h"
#include "epmoe/model.h"

static const struct {
    const char *cls, *shrt, *model_type;
} arch_names[EPM_MODEL_ARCH_COUNT] = {
    [EPM_MODEL_MIXTRAL] = {"MixtralForCausalLM", "mixtral", "mixtral"},
    [EPM_MODEL_QWEN2MOE] = {"Qwen2MoeForCausalLM", "qwen2moe", "qwen2_moe"},
    [EPM_MODEL_OLMOE] = {"OlmoeForCausalLM", "olmoe", "olmoe"},
    [EPM_MODEL_QWEN3MOE] = {"Qwen3MoeForCausalLM", "qwen3moe", "qwen3_moe"},
    [EPM_MODEL_DEEPSEEKV3] = {"DeepseekV3ForCausalLM", "deepseekv3", "deepseek_v3"},
    [EPM_MODEL_DEEPSEEKV2] = {"DeepseekV2ForCausalLM", "deepseekv2", "deepseek_v2"},
};

static int is_deepseek(epm_model_arch a) { return a == EPM_MODEL_DEEPSEEKV3 || a == EPM_MODEL_DEEPSEEKV2; }

#define ARCH_LIST                                                                                                  \
    "MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM, Qwen3MoeForCausalLM, DeepseekV3ForCausalLM, "      \
    "DeepseekV2ForCausalLM"

const char *epm_model_arch_class(epm_model_arch a)
{
    return (unsigned)a < EPM_MODEL_ARCH_COUNT ? arch_names[a].cls : "?";
}

const char *epm_model_arch_short(epm_model_arch a)
{
    return (unsigned)a < EPM_MODEL_ARCH_COUNT ? arch_names[a].shrt : "?";
}

epm_status epm_model_arch_parse(const char *s, epm_model_arch *out)
{
    for (int a = 0; s && a < EPM_MODEL_ARCH_COUNT; a++)
        if (!strcmp(s, arch_names[a].cls) || !strcmp(s, arch_names[a].shrt) || !strcmp(s, arch_names[a].model_type)) {
            *out = (epm_model_arch)a;
            return EPM_OK;
        }
    return epm_fail(EPM_ERR_UNSUPPORTED,
                    "architecture '%s' is not supported (" ARCH_LIST ")",
                    s ? s : "(null)");
}

typedef struct ctx {
    json_t *root;
    const char *label;
} ctx;

static epm_status bad(const ctx *c, const char *key, json_t *v, const char *why)
{
    char b[96];
    return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' = %s: %s", c->label, key, epm_json_show(v, b, sizeof b), why);
}

/* An integer field in [lo, hi]; absent or null keeps *out unless required. */
static epm_status get_int(const ctx *c, json_t *obj, const char *key, int required, long lo, long hi, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' is missing", c->label, key);
        return EPM_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char why[96];
        snprintf(why, sizeof why, "must be an integer in [%ld, %ld]", lo, hi);
        return bad(c, key, v, why);
    }
    *out = (int)json_integer_value(v);
    return EPM_OK;
}

/* As get_int, but where an explicit null means 0, "none" (DeepSeek's
 * q_lora_rank and n_shared_experts), while absence keeps *out. */
static epm_status get_int_or_none(const ctx *c, json_t *obj, const char *key, long lo, long hi, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (v && json_is_null(v)) {
        *out = 0;
        return EPM_OK;
    }
    return get_int(c, obj, key, 0, lo, hi, out);
}

/* A finite number in (lo, hi). */
static epm_status get_num(const ctx *c, json_t *obj, const char *key, double lo, double hi, double *out,
                          int *present)
{
    json_t *v = json_object_get(obj, key);
    if (present)
        *present = 0;
    if (!v || json_is_null(v))
        return EPM_OK;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x > lo && x < hi)) {
        char why[96];
        snprintf(why, sizeof why, "must be a number in (%g, %g)", lo, hi);
        return bad(c, key, v, why);
    }
    *out = x;
    if (present)
        *present = 1;
    return EPM_OK;
}

/* A number the runtime keeps as a float32: its float32 value in (lo, hi),
 * the value the runtime uses and a save writes back (1e-46 rounds to 0 and
 * 0.99999999 to 1; 1.00000001e-30 saves as 1e-30, whose float32 is above
 * 1e-30: found by fuzzing). */
static epm_status get_float(const ctx *c, json_t *obj, const char *key, double lo, double hi, float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return EPM_OK;
    const double x = json_is_number(v) ? json_number_value(v) : NAN;
    const double f = isfinite(x) ? (double)(float)x : NAN;
    if (!(f > lo && f < hi)) {
        char why[128];
        snprintf(why, sizeof why, "must be a number in (%g, %g) as a float32 (%g)", lo, hi, f);
        return bad(c, key, v, why);
    }
    *out = (float)x;
    return EPM_OK;
}

static epm_status get_bool(const ctx *c, const char *key, int *out, int *present)
{
    json_t *v = json_object_get(c->root, key);
    if (present)
        *present = 0;
    if (!v || json_is_null(v))
        return EPM_OK;
    if (!json_is_boolean(v))
        return bad(c, key, v, "must be true or false");
    *out = json_is_true(v);
    if (present)
        *present = 1;
    return EPM_OK;
}

static epm_status parse_arch(const ctx *c, epm_model_config *cfg)
{
    json_t *list = json_object_get(c->root, "architectures");
    json_t *v = NULL;
    const char *key = "architectures";
    if (list && !json_is_null(list)) {
        if (!json_is_array(list) || json_array_size(list) == 0 || !json_is_string(json_array_get(list, 0)))
            return bad(c, key, list, "must be a list naming the model class");
        v = json_array_get(list, 0);
    } else {
        key = "model_type";
        v = json_object_get(c->root, key);
        if (!json_is_string(v))
            return epm_fail(EPM_ERR_FORMAT, "%s: neither 'architectures' nor 'model_type' names the model",
                            c->label);
    }
    if (epm_model_arch_parse(json_string_value(v), &cfg->arch) != EPM_OK)
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: field '%s' = '%s': architecture not supported (" ARCH_LIST ")",
                        c->label, key, json_string_value(v));
    return EPM_OK;
}

/* A number of the rope dict `rp` (home.name in messages) in (lo, hi); absent
 * or null keeps *out. */
static epm_status rope_num(const ctx *c, json_t *rp, const char *home, const char *name, double lo, double hi,
                           double *out)
{
    json_t *v = json_object_get(rp, name);
    if (!v || json_is_null(v))
        return EPM_OK;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x > lo && x < hi)) {
        char key[96], why[96];
        snprintf(key, sizeof key, "%s.%s", home, name);
        snprintf(why, sizeof why, "must be a number in (%g, %g)", lo, hi);
        return bad(c, key, v, why);
    }
    *out = x;
    return EPM_OK;
}

/* YaRN's parameters, with the defaults of DeepSeek's code and transformers. */
static epm_status parse_yarn(const ctx *c, json_t *rp, const char *home, epm_model_config *cfg)
{
    char key[96];
    cfg->yarn_factor = -1;
    /* a factor below 1 would compress, not extend, the context: no model does */
    EPM_CHECK(rope_num(c, rp, home, "factor", 0.999999, 1e6, &cfg->yarn_factor));
    if (cfg->yarn_factor <= 0)
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s.factor' is missing (YaRN needs it)", c->label, home);
    cfg->yarn_beta_fast = 32;
    cfg->yarn_beta_slow = 1;
    cfg->yarn_attn_factor = -1;
    /* DeepSeek-V2's code (and vLLM's) take an absent mscale as 1, where
     * transformers' reading (V3, the others) leaves it unset */
    cfg->yarn_mscale = cfg->arch == EPM_MODEL_DEEPSEEKV2 ? 1 : 0;
    /* (rotations: below 1e-6 the correction range's log overflows and the frequencies come out NaN,
     * found by fuzzing; transformers' defaults are 32 and 1) */
    EPM_CHECK(rope_num(c, rp, home, "beta_fast", 1e-6, 1e6, &cfg->yarn_beta_fast));
    EPM_CHECK(rope_num(c, rp, home, "beta_slow", 1e-6, 1e6, &cfg->yarn_beta_slow));
    /* negative ones would drive get_mscale through zero: infinite scales */
    EPM_CHECK(rope_num(c, rp, home, "mscale", -1e-300, 1e6, &cfg->yarn_mscale));
    EPM_CHECK(rope_num(c, rp, home, "mscale_all_dim", -1e-300, 1e6, &cfg->yarn_mscale_all_dim));
    /* (a scale of cos and sin, applied in float32: one below 1e-30 is 0 there) */
    EPM_CHECK(rope_num(c, rp, home, "attention_factor", 1e-30, 1e6, &cfg->yarn_attn_factor));
    double om = cfg->max_position_embeddings;
    EPM_CHECK(rope_num(c, rp, home, "original_max_position_embeddings", 0.999999, 1073741824.5, &om));
    if (om < 1)
        return epm_fail(EPM_ERR_FORMAT, "%s: YaRN needs '%s.original_max_position_embeddings' or "
                        "'max_position_embeddings'", c->label, home);
    if (om != floor(om))
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s.original_max_position_embeddings' = %g: must be a whole "
                        "number of positions", c->label, home, om);
    cfg->yarn_original_max = (int)om;
    cfg->yarn_truncate = 1;
    json_t *t = json_object_get(rp, "truncate");
    if (t && !json_is_null(t)) {
        snprintf(key, sizeof key, "%s.truncate", home);
        if (!json_is_boolean(t))
            return bad(c, key, t, "must be true or false");
        cfg->yarn_truncate = json_is_true(t);
    }
    return EPM_OK;
}

/* Older Hub configs write rope_theta at the top level, newer ones inside
 * rope_parameters; rope_scaling is the older home of a non-default type. */
static epm_status parse_rope(const ctx *c, epm_model_config *cfg)
{
    /* read only as YaRN's fallback for the original context: a value this
     * runtime cannot use (4096.0, 1e12) is not an error unless YaRN needs it */
    json_t *mp = json_object_get(c->root, "max_position_embeddings");
    double mpv = json_is_number(mp) ? json_number_value(mp) : 0;
    cfg->max_position_embeddings = mpv >= 1 && mpv <= (1 << 30) && mpv == floor(mpv) ? (int)mpv : 0;
    cfg->rope_theta = cfg->arch == EPM_MODEL_MIXTRAL ? 1e6 : 1e4;
    /* a base above 1: below it the frequencies pass 1 and YaRN's log(base) changes sign */
    EPM_CHECK(get_num(c, c->root, "rope_theta", 1, 1e12, &cfg->rope_theta, NULL));
    static const char *const homes[] = {"rope_parameters", "rope_scaling"};
    for (int i = 0; i < 2; i++) {
        json_t *rp = json_object_get(c->root, homes[i]);
        if (!rp || json_is_null(rp))
            continue;
        if (!json_is_object(rp))
            return bad(c, homes[i], rp, "must be an object");
        EPM_CHECK(rope_num(c, rp, homes[i], "rope_theta", 1, 1e12, &cfg->rope_theta));
        char key[64];
        const char *tk = "rope_type";
        json_t *ty = json_object_get(rp, tk);
        if (!ty) {
            tk = "type";
            ty = json_object_get(rp, tk);
        }
        snprintf(key, sizeof key, "%s.%s", homes[i], tk);
        if (ty && !json_is_null(ty)) {
            if (!json_is_string(ty))
                return bad(c, key, ty, "must be a string");
            if (!strcmp(json_string_value(ty), "yarn"))
                EPM_CHECK(parse_yarn(c, rp, homes[i], cfg));
            else if (strcmp(json_string_value(ty), "default"))
                return epm_fail(EPM_ERR_UNSUPPORTED,
                                "%s: field '%s' = '%s': this RoPE scaling is not supported (only 'default' and "
                                "'yarn')",
                                c->label, key, json_string_value(ty));
        }
    }
    return EPM_OK;
}

static epm_status parse_dtype(const ctx *c, epm_model_config *cfg)
{
    static const char *const keys[] = {"dtype", "torch_dtype"};
    cfg->dtype = EPM_DTYPE_F32;
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(c->root, keys[i]);
        if (!v || json_is_null(v))
            continue;
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        if (!strcmp(s, "float32"))
            cfg->dtype = EPM_DTYPE_F32;
        else if (!strcmp(s, "bfloat16"))
            cfg->dtype = EPM_DTYPE_BF16;
        else if (!strcmp(s, "float16"))
            cfg->dtype = EPM_DTYPE_F16;
        else
            return bad(c, keys[i], v, "must be \"float32\", \"bfloat16\" or \"float16\"");
        return EPM_OK; /* "dtype" (transformers 5) wins over the older "torch_dtype" */
    }
    return EPM_OK;
}

/* Which layers hold a sparse MoE block. Qwen2-MoE and Qwen3-MoE: layer l is
 * sparse when (l + 1) % decoder_sparse_step == 0 and l is not in
 * mlp_only_layers. */
static epm_status parse_layers(const ctx *c, epm_model_config *cfg)
{
    cfg->decoder_sparse_step = 1;
    cfg->moe_layer = epm_malloc((size_t)cfg->num_layers);
    if (!cfg->moe_layer)
        return EPM_ERR_NOMEM;
    memset(cfg->moe_layer, 1, (size_t)cfg->num_layers);
    if (is_deepseek(cfg->arch)) {
        for (int l = 0; l < cfg->first_k_dense; l++)
            cfg->moe_layer[l] = 0;
        return EPM_OK;
    }
    if (cfg->arch != EPM_MODEL_QWEN2MOE && cfg->arch != EPM_MODEL_QWEN3MOE)
        return EPM_OK;
    EPM_CHECK(get_int(c, c->root, "decoder_sparse_step", 0, 1, cfg->num_layers, &cfg->decoder_sparse_step));
    for (int l = 0; l < cfg->num_layers; l++)
        cfg->moe_layer[l] = (l + 1) % cfg->decoder_sparse_step == 0;
    json_t *only = json_object_get(c->root, "mlp_only_layers");
    if (!only || json_is_null(only))
        return EPM_OK;
    if (!json_is_array(only))
        return bad(c, "mlp_only_layers", only, "must be a list of layer indices");
    for (size_t i = 0; i < json_array_size(only); i++) {
        json_t *v = json_array_get(only, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= cfg->num_layers) {
            char key[64], why[96];
            snprintf(key, sizeof key, "mlp_only_layers[%zu]", i);
            snprintf(why, sizeof why, "must be a layer index in [0, %d)", cfg->num_layers);
            return bad(c, key, v, why);
        }
        cfg->moe_layer[json_integer_value(v)] = 0;
    }
    return EPM_OK;
}

/* A string field that, when present, must be `want` (a setting whose other
 * values would change the model's arithmetic). */
static epm_status want_string(const ctx *c, const char *key, const char *want)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), want)))
        return EPM_OK;
    char b[64];
    return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field '%s' = %s: only \"%s\" is supported", c->label, key,
                    epm_json_show(v, b, sizeof b), want);
}

/* Multi-head latent attention (DeepseekV3Config's defaults where silent). */
static epm_status parse_mla(const ctx *c, epm_model_config *cfg)
{
    json_t *r = c->root;
    cfg->mla = 1;
    cfg->q_lora_rank = 1536;
    cfg->kv_lora_rank = 512;
    cfg->qk_nope_dim = 128;
    cfg->qk_rope_dim = 64;
    cfg->v_head_dim = 128;
    cfg->rope_interleave = 1;
    /* null: a plain q_proj (DeepSeek-V2-Lite) */
    EPM_CHECK(get_int_or_none(c, r, "q_lora_rank", 1, 1L << 16, &cfg->q_lora_rank));
    EPM_CHECK(get_int(c, r, "kv_lora_rank", 0, 1, 1L << 16, &cfg->kv_lora_rank));
    EPM_CHECK(get_int(c, r, "qk_nope_head_dim", 0, 0, 1024, &cfg->qk_nope_dim));
    EPM_CHECK(get_int(c, r, "qk_rope_head_dim", 0, 2, 1024, &cfg->qk_rope_dim));
    EPM_CHECK(get_int(c, r, "v_head_dim", 0, 1, 1024, &cfg->v_head_dim));
    /* DeepSeek-V2 rotates consecutive pairs (complex numbers); V3 says */
    if (cfg->arch == EPM_MODEL_DEEPSEEKV3)
        EPM_CHECK(get_bool(c, "rope_interleave", &cfg->rope_interleave, NULL));
    if (cfg->qk_rope_dim % 2)
        return bad(c, "qk_rope_head_dim", json_object_get(r, "qk_rope_head_dim"), "must be even for RoPE");
    int qk = cfg->qk_nope_dim + cfg->qk_rope_dim;
    cfg->head_dim = qk > cfg->v_head_dim ? qk : cfg->v_head_dim;
    if (cfg->head_dim % 2)
        cfg->head_dim++; /* the cache's rows are even; the pad is zeros */
    if (cfg->head_dim > 1024)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: qk_nope_head_dim + qk_rope_head_dim = %d: at most 1024 supported",
                        c->label, qk);
    cfg->num_kv_heads = cfg->num_heads; /* expanded: a key and a value per head */
    return EPM_OK;
}

/* DeepSeek-V3's or V2's routed and shared experts and router (their
 * configuration classes' defaults where silent). */
static epm_status parse_deepseek_moe(const ctx *c, epm_model_config *cfg)
{
    json_t *r = c->root;
    int v3 = cfg->arch == EPM_MODEL_DEEPSEEKV3, shared = v3 ? 1 : 2;
    EPM_CHECK(get_int_or_none(c, r, "n_shared_experts", 0, 64, &shared));
    cfg->shared_ffn = shared * cfg->moe_ffn;
    /* V3's default of 3 on a smaller model: every layer dense (then refused
     * as having no MoE layer, by the runtime, not here) */
    cfg->first_k_dense = v3 ? (cfg->num_layers < 3 ? cfg->num_layers : 3) : 0;
    EPM_CHECK(get_int(c, r, "first_k_dense_replace", 0, 0, cfg->num_layers, &cfg->first_k_dense));
    cfg->router_sigmoid = v3;
    cfg->n_group = v3 ? 8 : 1;
    cfg->topk_group = v3 ? 4 : 1;
    int hi = cfg->num_experts < 1024 ? cfg->num_experts : 1024;
    if (v3) {
        EPM_CHECK(get_int(c, r, "n_group", 0, 1, hi, &cfg->n_group));
        EPM_CHECK(get_int(c, r, "topk_group", 0, 1, cfg->n_group, &cfg->topk_group));
        /* the remote-code configs name the rule transformers implements */
        EPM_CHECK(want_string(c, "scoring_func", "sigmoid"));
        EPM_CHECK(want_string(c, "topk_method", "noaux_tc"));
    } else {
        EPM_CHECK(want_string(c, "scoring_func", "softmax"));
        json_t *tm = json_object_get(r, "topk_method");
        const char *m = json_is_string(tm) ? json_string_value(tm) : "greedy";
        if (tm && !json_is_null(tm) && (!json_is_string(tm) || (strcmp(m, "greedy") && strcmp(m, "group_limited_greedy")))) {
            char b[64];
            return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'topk_method' = %s: DeepSeek-V2 routes by \"greedy\" or "
                            "\"group_limited_greedy\"", c->label, epm_json_show(tm, b, sizeof b));
        }
        if (!strcmp(m, "group_limited_greedy")) {
            EPM_CHECK(get_int(c, r, "n_group", 1, 1, hi, &cfg->n_group));
            EPM_CHECK(get_int(c, r, "topk_group", 1, 1, cfg->n_group, &cfg->topk_group));
            cfg->group_max = 1;
        }
    }
    int E = cfg->num_experts, G = cfg->n_group;
    /* V3's group score is the sum of its two best experts; the checks name
     * the value in force, which may be the default */
    if (E % G || (v3 && G > 1 && E / G < 2))
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'n_group' = %d (%s): must divide n_routed_experts = %d%s", c->label,
                        G, json_object_get(r, "n_group") ? "as given" : "the default", E,
                        v3 ? " into groups of 2 or more" : "");
    if (cfg->topk_group > G)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'topk_group' = %d (%s) exceeds n_group = %d", c->label,
                        cfg->topk_group, json_object_get(r, "topk_group") ? "as given" : "the default", G);
    if ((int64_t)cfg->topk_group * (E / G) < cfg->top_k)
        return bad(c, "topk_group", json_object_get(r, "topk_group"),
                   "leaves fewer experts to choose from than num_experts_per_tok");
    cfg->routed_scaling = v3 ? 2.5f : 1.0f;
    EPM_CHECK(get_float(c, r, "routed_scaling_factor", 0, 1e6, &cfg->routed_scaling));
    int freq = 1;
    EPM_CHECK(get_int(c, r, "moe_layer_freq", 0, 1, 1, &freq));
    return EPM_OK;
}

/* FP8 block-quantised checkpoints (DeepSeek-V3/R1's release, Qwen3's
 * -FP8): e4m3 weight matrices with one scale (weight_scale_inv) per
 * weight_block_size block: routed experts held so where the kernels take
 * FP8, the rest dequantised to bf16 at load. Activations are not
 * quantised (the dynamic scheme quantises them per token group at run time:
 * a rounding the loader leaves out). Other methods are refused by name. */
static epm_status parse_quant(const ctx *c, epm_model_config *cfg)
{
    json_t *q = json_object_get(c->root, "quantization_config");
    if (!q || json_is_null(q))
        return EPM_OK;
    if (!json_is_object(q))
        return bad(c, "quantization_config", q, "must be an object");
    char b[64];
    json_t *m = json_object_get(q, "quant_method");
    if (!json_is_string(m) || strcmp(json_string_value(m), "fp8"))
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: field 'quantization_config.quant_method' = %s: only \"fp8\" (block-quantised e4m3, as "
                        "DeepSeek-V3 and Qwen3 publish) is supported; convert the weights to bfloat16 first",
                        c->label, m ? epm_json_show(m, b, sizeof b) : "(missing)");
    json_t *f = json_object_get(q, "fmt");
    if (f && !json_is_null(f) && !(json_is_string(f) && !strcmp(json_string_value(f), "e4m3")))
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'quantization_config.fmt' = %s: only \"e4m3\" is supported",
                        c->label, epm_json_show(f, b, sizeof b));
    json_t *as = json_object_get(q, "activation_scheme");
    if (as && !json_is_null(as) && !(json_is_string(as) && !strcmp(json_string_value(as), "dynamic")))
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: field 'quantization_config.activation_scheme' = %s: only \"dynamic\" is supported "
                        "(static activation scales are not read)",
                        c->label, epm_json_show(as, b, sizeof b));
    json_t *bs = json_object_get(q, "weight_block_size");
    if (!bs || json_is_null(bs))
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: field 'quantization_config.weight_block_size' is missing: per-tensor FP8 scales are not "
                        "supported, only block scales", c->label);
    for (int d = 0; d < 2; d++) {
        json_t *v = json_is_array(bs) && json_array_size(bs) == 2 ? json_array_get(bs, (size_t)d) : NULL;
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536)
            return bad(c, "quantization_config.weight_block_size", bs,
                       "must be [rows, columns], integers in [1, 65536]");
        cfg->fp8_block[d] = (int)json_integer_value(v);
    }
    return EPM_OK;
}

static epm_status parse(const ctx *c, epm_model_config *cfg)
{
    if (!json_is_object(c->root))
        return epm_fail(EPM_ERR_FORMAT, "%s: top level is not a JSON object", c->label);
    EPM_CHECK(parse_arch(c, cfg));
    epm_model_arch a = cfg->arch;
    json_t *r = c->root;
    const long BIG = 1L << 24;
    EPM_CHECK(get_int(c, r, "vocab_size", 1, 1, BIG, &cfg->vocab_size));
    EPM_CHECK(get_int(c, r, "hidden_size", 1, 1, 1L << 16, &cfg->hidden_size));
    EPM_CHECK(get_int(c, r, "num_hidden_layers", 1, 1, 4096, &cfg->num_layers));
    EPM_CHECK(get_int(c, r, "num_attention_heads", 1, 1, 4096, &cfg->num_heads));
    cfg->num_kv_heads = cfg->num_heads;
    EPM_CHECK(get_int(c, r, "num_key_value_heads", 0, 1, cfg->num_heads, &cfg->num_kv_heads));
    if (cfg->num_heads % cfg->num_kv_heads)
        return bad(c, "num_key_value_heads", json_object_get(r, "num_key_value_heads"),
                   "must divide num_attention_heads");
    cfg->head_dim = 0;
    /* DeepSeek-V3's saved head_dim is the rope width, not the attention's */
    if (!is_deepseek(a))
        EPM_CHECK(get_int(c, r, "head_dim", 0, 2, 1024, &cfg->head_dim));
    if (is_deepseek(a)) {
        EPM_CHECK(parse_mla(c, cfg));
    } else if (cfg->head_dim == 0) {
        if (cfg->hidden_size % cfg->num_heads)
            return bad(c, "num_attention_heads", json_object_get(r, "num_attention_heads"),
                       "must divide hidden_size when head_dim is not given");
        cfg->head_dim = cfg->hidden_size / cfg->num_heads;
        /* the range an explicit head_dim must be in: a saved config states it */
        if (cfg->head_dim < 2 || cfg->head_dim > 1024)
            return epm_fail(EPM_ERR_UNSUPPORTED, "%s: hidden_size / num_attention_heads = %d / %d = %d: head_dim "
                            "must be in [2, 1024]", c->label, cfg->hidden_size, cfg->num_heads, cfg->head_dim);
    }
    if (cfg->head_dim % 2)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'head_dim' = %d: must be even for RoPE", c->label,
                        cfg->head_dim);
    const char *ek = a == EPM_MODEL_MIXTRAL ? "num_local_experts" : is_deepseek(a) ? "n_routed_experts" : "num_experts";
    EPM_CHECK(get_int(c, r, ek, 1, 1, 1L << 16, &cfg->num_experts));
    EPM_CHECK(get_int(c, r, "num_experts_per_tok", 1, 1, cfg->num_experts, &cfg->top_k));
    EPM_CHECK(get_int(c, r, "intermediate_size", 1, 1, 1L << 20, &cfg->dense_ffn));
    cfg->moe_ffn = cfg->dense_ffn;
    int qwen = a == EPM_MODEL_QWEN2MOE || a == EPM_MODEL_QWEN3MOE;
    if (qwen || is_deepseek(a))
        EPM_CHECK(get_int(c, r, "moe_intermediate_size", 1, 1, 1L << 20, &cfg->moe_ffn));
    cfg->routed_scaling = 1.0f;
    if (is_deepseek(a))
        EPM_CHECK(parse_deepseek_moe(c, cfg));
    if (a == EPM_MODEL_QWEN2MOE)
        EPM_CHECK(get_int(c, r, "shared_expert_intermediate_size", 1, 0, 1L << 20, &cfg->shared_ffn));
    /* Mixtral renormalises the top-k weights unconditionally; the others follow
     * the flag, which DeepseekV3Config defaults to true. */
    cfg->norm_topk_prob = a == EPM_MODEL_MIXTRAL || a == EPM_MODEL_DEEPSEEKV3;
    if (a != EPM_MODEL_MIXTRAL)
        EPM_CHECK(get_bool(c, "norm_topk_prob", &cfg->norm_topk_prob, NULL));
    if (a == EPM_MODEL_DEEPSEEKV2 && cfg->top_k == 1)
        cfg->norm_topk_prob = 0; /* its code renormalises only k > 1 */
    if (a == EPM_MODEL_DEEPSEEKV2 && cfg->norm_topk_prob)
        cfg->routed_scaling = 1.0f; /* and scales only what it does not renormalise */
    if (a == EPM_MODEL_QWEN2MOE) {
        cfg->qkv_bias = 1; /* transformers 4 always had them; 5 writes qkv_bias */
        EPM_CHECK(get_bool(c, "qkv_bias", &cfg->qkv_bias, &cfg->qkv_bias_stated));
    } else if (is_deepseek(a)) {
        /* biases on q_a_proj, kv_a_proj_with_mqa and o_proj */
        EPM_CHECK(get_bool(c, "attention_bias", &cfg->qkv_bias, NULL));
        cfg->o_bias = cfg->qkv_bias;
        cfg->qkv_bias_stated = 1;
    } else if (a == EPM_MODEL_QWEN3MOE) {
        /* one flag for all four projections; q and k are normalised per head */
        EPM_CHECK(get_bool(c, "attention_bias", &cfg->qkv_bias, NULL));
        cfg->o_bias = cfg->qkv_bias;
        cfg->qkv_bias_stated = 1;
        cfg->qk_norm = EPM_QK_NORM_PER_HEAD;
    } else if (a == EPM_MODEL_OLMOE) {
        EPM_CHECK(get_bool(c, "attention_bias", &cfg->qkv_bias, NULL));
        cfg->o_bias = cfg->qkv_bias;
        cfg->qkv_bias_stated = 1;
        cfg->qk_norm = EPM_QK_NORM_WHOLE;
        json_t *clip = json_object_get(r, "clip_qkv");
        if (clip && !json_is_null(clip)) {
            char b[64];
            return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'clip_qkv' = %s: clipping q/k/v is not supported (null)",
                            c->label, epm_json_show(clip, b, sizeof b));
        }
    } else {
        cfg->qkv_bias_stated = 1;
    }
    EPM_CHECK(get_bool(c, "tie_word_embeddings", &cfg->tie_word_embeddings, NULL));
    /* above float32's underflow: the runtime keeps eps as a float, and 0 would divide by zero */
    cfg->rms_norm_eps = qwen || is_deepseek(a) ? 1e-6f : 1e-5f;
    EPM_CHECK(get_float(c, r, "rms_norm_eps", 1e-30, 1, &cfg->rms_norm_eps));
    json_t *act = json_object_get(r, "hidden_act");
    if (act && !json_is_null(act) && !(json_is_string(act) && !strcmp(json_string_value(act), "silu"))) {
        char b[64];
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'hidden_act' = %s: only \"silu\" is supported", c->label,
                        epm_json_show(act, b, sizeof b));
    }
    /* Mixtral's window applies whenever set; the Qwens' only with use_sliding_window. */
    int use_sw = a == EPM_MODEL_MIXTRAL;
    if (qwen)
        EPM_CHECK(get_bool(c, "use_sliding_window", &use_sw, NULL));
    if (use_sw && a != EPM_MODEL_OLMOE)
        EPM_CHECK(get_int(c, r, "sliding_window", 0, 0, 1L << 30, &cfg->sliding_window));
    EPM_CHECK(parse_rope(c, cfg));
    EPM_CHECK(parse_dtype(c, cfg));
    EPM_CHECK(parse_quant(c, cfg));
    return parse_layers(c, cfg);
}

epm_status epm_model_config_parse(const char *text, size_t len, const char *label, epm_model_config *cfg)
{
    if (!text || !cfg)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_config_parse: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    if (!label)
        label = "config.json";
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    ctx c = {root, label};
    epm_status st = parse(&c, cfg);
    json_decref(root);
    if (st != EPM_OK)
        epm_model_config_clear(cfg);
    return st;
}

epm_status epm_model_config_load(const char *path, epm_model_config *cfg)
{
    char *text;
    size_t n;
    if (!path || !cfg)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_config_load: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    EPM_CHECK(epm_read_file(path, (size_t)16 << 20, &text, &n));
    epm_status st = epm_model_config_parse(text, n, path, cfg);
    epm_free(text);
    return st;
}

void epm_model_config_clear(epm_model_config *cfg)
{
    if (!cfg)
        return;
    epm_free(cfg->moe_layer);
    memset(cfg, 0, sizeof *cfg);
}

int epm_model_config_moe_layers(const epm_model_config *cfg)
{
    int n = 0;
    for (int l = 0; cfg->moe_layer && l < cfg->num_layers; l++)
        n += cfg->moe_layer[l];
    return n;
}

int epm_model_kv_floats(const epm_model_config *c, int mla_expanded)
{
    if (c->mla && !mla_expanded)
        return c->kv_lora_rank + c->qk_rope_dim;
    return 2 * c->num_kv_heads * c->head_dim;
}

/* ---- writing ---- */

static const char *torch_dtype(epm_dtype t)
{
    return t == EPM_DTYPE_BF16 ? "bfloat16" : t == EPM_DTYPE_F16 ? "float16" : "float32";
}

/* A float field as the double of its shortest decimal (1e-06, not
 * 9.9999999747524271e-07), so that real_digits keeps it short. */
static double float_decimal(float f)
{
    char buf[40];
    for (int d = 1; d < 9; d++) {
        snprintf(buf, sizeof buf, "%.*g", d, (double)f);
        if ((float)strtod(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    snprintf(buf, sizeof buf, "%.9g", (double)f);
    return strtod(buf, NULL);
}

/* The fewest significant digits (7 to 17) that print every real in v so
 * that it reads back as the same double: one precision serves the whole
 * dump (Jansson's is per dump), and values the config was read from, such as
 * 1e-6 and 10000.0, keep their short form (7 digits, as before, print a
 * rope_theta of 1000000 without an exponent) while 0.1 + 0.2 keeps all 17. */
static int real_digits(const json_t *v)
{
    int d = 7;
    if (json_is_real(v)) {
        double x = json_real_value(v);
        char buf[40];
        for (; d < 17; d++) {
            snprintf(buf, sizeof buf, "%.*g", d, x);
            if (strtod(buf, NULL) == x)
                break;
        }
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e) {
            int de = real_digits(e);
            d = de > d ? de : d;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            int de = real_digits(e);
            d = de > d ? de : d;
        }
    }
    return d;
}

static json_t *to_json(const epm_model_config *cfg)
{
    epm_model_arch a = cfg->arch;
    json_t *r = json_object();
    if (!r)
        return NULL;
    int ok = 1;
#define SET(k, v) ok &= json_object_set_new(r, (k), (v)) == 0
    SET("architectures", json_pack("[s]", epm_model_arch_class(a)));
    SET("model_type", json_string(arch_names[a].model_type));
    SET("vocab_size", json_integer(cfg->vocab_size));
    SET("hidden_size", json_integer(cfg->hidden_size));
    SET("intermediate_size", json_integer(cfg->dense_ffn));
    SET("num_hidden_layers", json_integer(cfg->num_layers));
    SET("num_attention_heads", json_integer(cfg->num_heads));
    SET("num_key_value_heads", json_integer(cfg->num_kv_heads));
    /* DeepseekV3Config's head_dim is the rope width (its rotary embedding reads it) */
    SET("head_dim", json_integer(cfg->mla ? cfg->qk_rope_dim : cfg->head_dim));
    SET(a == EPM_MODEL_MIXTRAL ? "num_local_experts" : is_deepseek(a) ? "n_routed_experts" : "num_experts",
        json_integer(cfg->num_experts));
    SET("num_experts_per_tok", json_integer(cfg->top_k));
    SET("hidden_act", json_string("silu"));
    SET("rms_norm_eps", json_real(float_decimal(cfg->rms_norm_eps)));
    SET("tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    SET("dtype", json_string(torch_dtype(cfg->dtype)));
    if (cfg->yarn_factor > 0) {
        json_t *rp = json_pack("{s:f, s:s, s:f, s:i, s:f, s:f, s:f, s:f, s:b}", "rope_theta", cfg->rope_theta,
                               "rope_type", "yarn", "factor", cfg->yarn_factor, "original_max_position_embeddings",
                               cfg->yarn_original_max, "beta_fast", cfg->yarn_beta_fast, "beta_slow",
                               cfg->yarn_beta_slow, "mscale", cfg->yarn_mscale, "mscale_all_dim",
                               cfg->yarn_mscale_all_dim, "truncate", cfg->yarn_truncate);
        if (rp && cfg->yarn_attn_factor >= 0)
            ok &= json_object_set_new(rp, "attention_factor", json_real(cfg->yarn_attn_factor)) == 0;
        SET("rope_parameters", rp);
    } else {
        SET("rope_parameters", json_pack("{s:f, s:s}", "rope_theta", cfg->rope_theta, "rope_type", "default"));
    }
    if (cfg->max_position_embeddings > 0)
        SET("max_position_embeddings", json_integer(cfg->max_position_embeddings));
    if (a != EPM_MODEL_MIXTRAL)
        SET("norm_topk_prob", json_boolean(cfg->norm_topk_prob));
    if (a == EPM_MODEL_QWEN2MOE) {
        SET("shared_expert_intermediate_size", json_integer(cfg->shared_ffn));
        SET("qkv_bias", json_boolean(cfg->qkv_bias));
    }
    if (a == EPM_MODEL_QWEN3MOE)
        SET("attention_bias", json_boolean(cfg->qkv_bias));
    if (a == EPM_MODEL_QWEN2MOE || a == EPM_MODEL_QWEN3MOE) {
        SET("moe_intermediate_size", json_integer(cfg->moe_ffn));
        SET("decoder_sparse_step", json_integer(cfg->decoder_sparse_step));
        json_t *only = json_array();
        for (int l = 0; only && l < cfg->num_layers; l++)
            if (!cfg->moe_layer[l] && (l + 1) % cfg->decoder_sparse_step == 0)
                ok &= json_array_append_new(only, json_integer(l)) == 0;
        SET("mlp_only_layers", only);
        SET("use_sliding_window", json_boolean(cfg->sliding_window > 0));
    }
    if (a == EPM_MODEL_OLMOE) {
        SET("attention_bias", json_boolean(cfg->qkv_bias));
        SET("clip_qkv", json_null());
    }
    if (is_deepseek(a)) {
        int v3 = a == EPM_MODEL_DEEPSEEKV3;
        SET("attention_bias", json_boolean(cfg->qkv_bias));
        SET("moe_intermediate_size", json_integer(cfg->moe_ffn));
        SET("n_shared_experts", json_integer(cfg->moe_ffn ? cfg->shared_ffn / cfg->moe_ffn : 0));
        SET("first_k_dense_replace", json_integer(cfg->first_k_dense));
        SET("n_group", json_integer(cfg->n_group));
        SET("topk_group", json_integer(cfg->topk_group));
        SET("routed_scaling_factor", json_real(float_decimal(cfg->routed_scaling)));
        SET("scoring_func", json_string(v3 ? "sigmoid" : "softmax"));
        SET("topk_method", json_string(v3 ? "noaux_tc" : cfg->group_max ? "group_limited_greedy" : "greedy"));
        SET("q_lora_rank", cfg->q_lora_rank ? json_integer(cfg->q_lora_rank) : json_null());
        SET("kv_lora_rank", json_integer(cfg->kv_lora_rank));
        SET("qk_nope_head_dim", json_integer(cfg->qk_nope_dim));
        SET("qk_rope_head_dim", json_integer(cfg->qk_rope_dim));
        SET("v_head_dim", json_integer(cfg->v_head_dim));
        if (v3)
            SET("rope_interleave", json_boolean(cfg->rope_interleave));
    }
    if (cfg->fp8_block[0] > 0)
        SET("quantization_config", json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt", "e4m3",
                                             "activation_scheme", "dynamic", "weight_block_size", cfg->fp8_block[0],
                                             cfg->fp8_block[1]));
    if (a != EPM_MODEL_OLMOE)
        SET("sliding_window", cfg->sliding_window > 0 ? json_integer(cfg->sliding_window) : json_null());
#undef SET
    if (!ok) {
        json_decref(r);
        return NULL;
    }
    return r;
}

typedef struct text_ctx {
    const char *text, *path;
} text_ctx;

static epm_status put_text(void *vc, void *f)
{
    const text_ctx *c = vc;
    EPM_CHECK(epm_file_write(f, c->path, c->text, strlen(c->text)));
    return epm_file_write(f, c->path, "\n", 1);
}

epm_status epm_model_config_save(const epm_model_config *cfg, const char *path)
{
    if (!cfg || !path || (unsigned)cfg->arch >= EPM_MODEL_ARCH_COUNT || !cfg->moe_layer)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_config_save: NULL or incomplete config");
    json_t *r = to_json(cfg);
    char *s = r ? json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(real_digits(r))) : NULL;
    json_decref(r);
    if (!s)
        return epm_fail(EPM_ERR_NOMEM, "%s: out of memory writing config.json", path);
    text_ctx c = {s, path};
    epm_status st = epm_write_atomic(path, put_text, &c);
    free(s);
    return st;
}
