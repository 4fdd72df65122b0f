/* config.json: the bundled fixtures parse to the values transformers
 * wrote; both RoPE spellings; every bad field is refused with an error that
 * names the field and its value. */
#include "test_util.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/model.h"

static epm_status load_fixture(const char *name, epm_model_config *c)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/config.json", tu_fixtures(), name);
    return epm_model_config_load(path, c);
}

static epm_status parse_edited_q3(const char *key, const char *value_json, epm_model_config *c);
static epm_status parse_with(json_t *root, const char *key, const char *value_json, const char *label,
                             epm_model_config *c);

static void test_config_mixtral_fixture(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(load_fixture("mixtral-tiny", &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_MIXTRAL);
    assert_int_equal(c.vocab_size, 256);
    assert_int_equal(c.hidden_size, 64);
    assert_int_equal(c.num_layers, 4);
    assert_int_equal(c.num_heads, 4);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 16); /* "head_dim": null */
    assert_int_equal(c.num_experts, 8);
    assert_int_equal(c.top_k, 2);
    assert_int_equal(c.moe_ffn, 128);
    assert_int_equal(c.shared_ffn, 0);
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.sliding_window, 0);
    assert_float_equal(c.rms_norm_eps, 1e-5f, 1e-12);
    assert_float_equal(c.rope_theta, 10000.0, 0);
    assert_int_equal(c.dtype, EPM_DTYPE_F32);
    assert_int_equal(epm_model_config_moe_layers(&c), 4);
    epm_model_config_clear(&c);
}

static void test_config_qwen2moe_fixture(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(load_fixture("qwen2moe-tiny", &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_QWEN2MOE);
    assert_int_equal(c.moe_ffn, 48);
    assert_int_equal(c.dense_ffn, 128);
    assert_int_equal(c.shared_ffn, 96);
    assert_int_equal(c.num_experts, 8);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.qkv_bias_stated, 1);
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.decoder_sparse_step, 1);
    assert_int_equal(epm_model_config_moe_layers(&c), 4);
    epm_model_config_clear(&c);
}

static void test_config_olmoe_fixture(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(load_fixture("olmoe-tiny", &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_OLMOE);
    assert_int_equal(c.moe_ffn, 128);
    assert_int_equal(c.num_experts, 8);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.o_bias, 0);
    assert_float_equal(c.rope_theta, 10000.0, 0);
    epm_model_config_clear(&c);
}

static void test_config_qwen3moe_fixture(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(load_fixture("qwen3moe-tiny", &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_QWEN3MOE);
    assert_int_equal(c.head_dim, 32); /* stated, twice hidden / heads */
    assert_int_equal(c.moe_ffn, 48);
    assert_int_equal(c.dense_ffn, 96);
    assert_int_equal(c.shared_ffn, 0);
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(c.qk_norm, EPM_QK_NORM_PER_HEAD);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(epm_model_config_moe_layers(&c), 4);
    epm_model_config_clear(&c);
    /* Qwen3MoeConfig's defaults where the file is silent; attention_bias covers o too */
    assert_int_equal(parse_edited_q3("norm_topk_prob", NULL, &c), EPM_OK);
    assert_int_equal(c.norm_topk_prob, 0);
    epm_model_config_clear(&c);
    assert_int_equal(parse_edited_q3("rms_norm_eps", NULL, &c), EPM_OK);
    assert_float_equal(c.rms_norm_eps, 1e-6f, 0);
    epm_model_config_clear(&c);
    assert_int_equal(parse_edited_q3("attention_bias", "true", &c), EPM_OK);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.o_bias, 1);
    epm_model_config_clear(&c);
    assert_int_equal(parse_edited_q3("mlp_only_layers", "[0, 3]", &c), EPM_OK);
    assert_int_equal(epm_model_config_moe_layers(&c), 2);
    assert_int_equal(c.moe_layer[0], 0);
    epm_model_config_clear(&c);
    /* a window is used only when use_sliding_window says so */
    assert_int_equal(parse_edited_q3("sliding_window", "4096", &c), EPM_OK);
    assert_int_equal(c.sliding_window, 0);
    epm_model_config_clear(&c);
}

/* A DeepSeek-V3 config as the Hub's remote-code checkpoints write it (their
 * field names and values), shrunk, with one field replaced (key NULL: none;
 * value NULL: deleted). */
static epm_status parse_deepseek(const char *key, const char *value_json, epm_model_config *c)
{
    const char *text =
        "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 256, "
        "\"hidden_size\": 64, \"intermediate_size\": 96, \"moe_intermediate_size\": 32, \"num_hidden_layers\": 5, "
        "\"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"n_shared_experts\": 2, \"n_routed_experts\": 16, "
        "\"routed_scaling_factor\": 2.5, \"kv_lora_rank\": 32, \"q_lora_rank\": 24, \"qk_rope_head_dim\": 8, "
        "\"v_head_dim\": 16, \"qk_nope_head_dim\": 16, \"topk_method\": \"noaux_tc\", \"n_group\": 4, "
        "\"topk_group\": 2, \"num_experts_per_tok\": 4, \"moe_layer_freq\": 1, \"first_k_dense_replace\": 2, "
        "\"norm_topk_prob\": true, \"scoring_func\": \"sigmoid\", \"hidden_act\": \"silu\", \"rms_norm_eps\": 1e-06, "
        "\"rope_theta\": 10000, \"rope_scaling\": null, \"head_dim\": 8, \"num_nextn_predict_layers\": 1, "
        "\"torch_dtype\": \"bfloat16\"}";
    return parse_with(json_loads(text, 0, NULL), key, value_json, "ds.json", c);
}

static void test_config_deepseek(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(parse_deepseek(NULL, NULL, &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_DEEPSEEKV3);
    assert_int_equal(c.num_experts, 16);
    assert_int_equal(c.top_k, 4);
    assert_int_equal(c.moe_ffn, 32);
    assert_int_equal(c.shared_ffn, 64); /* two shared experts of the routed width */
    assert_int_equal(c.mla, 1);
    assert_int_equal(c.q_lora_rank, 24);
    assert_int_equal(c.kv_lora_rank, 32);
    assert_int_equal(c.head_dim, 24); /* nope + rope, not the saved head_dim (the rope width) */
    assert_int_equal(c.num_kv_heads, 4);
    assert_int_equal(c.rope_interleave, 1);
    assert_int_equal(c.router_sigmoid, 1);
    assert_int_equal(c.n_group, 4);
    assert_int_equal(c.topk_group, 2);
    assert_float_equal(c.routed_scaling, 2.5f, 0);
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(epm_model_config_moe_layers(&c), 3);
    assert_int_equal(c.moe_layer[1], 0);
    assert_int_equal(c.moe_layer[2], 1);
    assert_int_equal(c.dtype, EPM_DTYPE_BF16);
    epm_model_config_clear(&c);
    /* q_lora_rank null: a plain q_proj (DeepSeek-V2-Lite's shape) */
    assert_int_equal(parse_deepseek("q_lora_rank", "null", &c), EPM_OK);
    assert_int_equal(c.q_lora_rank, 0);
    epm_model_config_clear(&c);
    /* a value head wider than q/k sets the width attention runs at (even) */
    assert_int_equal(parse_deepseek("v_head_dim", "33", &c), EPM_OK);
    assert_int_equal(c.head_dim, 34);
    epm_model_config_clear(&c);
    /* DeepseekV3Config's defaults where the file is silent */
    assert_int_equal(parse_deepseek("routed_scaling_factor", NULL, &c), EPM_OK);
    assert_float_equal(c.routed_scaling, 2.5f, 0);
    epm_model_config_clear(&c);
    assert_int_equal(parse_deepseek("first_k_dense_replace", NULL, &c), EPM_OK);
    assert_int_equal(c.first_k_dense, 3);
    epm_model_config_clear(&c);
    /* V3's default of 3 dense layers on a 2-layer model: both dense (the
     * runtime then refuses it as having no MoE layer), not a write past the
     * table; and a default topk_group (4) above a stated n_group (2) is
     * named as the default */
    static const char two_layers[] =
        "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"vocab_size\": 256, \"hidden_size\": 64, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"n_routed_experts\": 8, \"num_experts_per_tok\": 2, "
        "\"intermediate_size\": 96, \"moe_intermediate_size\": 32, \"n_group\": 2}";
    assert_int_equal(parse_with(json_loads(two_layers, 0, NULL), "topk_group", "1", "two.json", &c), EPM_OK);
    assert_int_equal(c.first_k_dense, 2);
    assert_int_equal(epm_model_config_moe_layers(&c), 0);
    epm_model_config_clear(&c);
    assert_int_equal(parse_with(json_loads(two_layers, 0, NULL), NULL, NULL, "two.json", &c), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'topk_group' = 4 (the default) exceeds n_group = 2"));
    /* YaRN values that would give infinite or nonsense scales */
    static const char *const bad_yarn[] = {
        "{\"rope_type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 1e11}",
        "{\"rope_type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 4096.5}",
        "{\"rope_type\": \"yarn\", \"factor\": 0.5, \"original_max_position_embeddings\": 4096}",
        "{\"rope_type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 4096, \"mscale\": -7.2}",
    };
    for (size_t i = 0; i < sizeof bad_yarn / sizeof *bad_yarn; i++)
        if (parse_deepseek("rope_scaling", bad_yarn[i], &c) != EPM_ERR_FORMAT || !strstr(epm_last_error(), "rope_scaling."))
            fail_msg("bad YaRN %zu accepted or unnamed: %s", i, epm_last_error());
    /* DeepSeek-V3's FP8 release, as its config.json says it */
    assert_int_equal(parse_deepseek("quantization_config",
                                    "{\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", \"quant_method\": "
                                    "\"fp8\", \"weight_block_size\": [128, 64]}",
                                    &c),
                     EPM_OK);
    assert_int_equal(c.fp8_block[0], 128);
    assert_int_equal(c.fp8_block[1], 64);
    epm_model_config a = c, b;
    const char *saved = tu_path("fp8.json");
    assert_int_equal(epm_model_config_save(&a, saved), EPM_OK);
    assert_int_equal(epm_model_config_load(saved, &b), EPM_OK);
    assert_memory_equal(b.fp8_block, a.fp8_block, sizeof a.fp8_block);
    epm_model_config_clear(&b);
    epm_model_config_clear(&c);
    assert_int_equal(parse_deepseek("quantization_config", "null", &c), EPM_OK);
    assert_int_equal(c.fp8_block[0], 0);
    epm_model_config_clear(&c);
    /* max_position_embeddings is only YaRN's fallback: a float there is no error */
    assert_int_equal(parse_deepseek("max_position_embeddings", "4096.0", &c), EPM_OK);
    epm_model_config_clear(&c);
    /* one kept group of 4 leaves exactly top-4 to choose from; top-5 not */
    assert_int_equal(parse_deepseek("topk_group", "1", &c), EPM_OK);
    epm_model_config_clear(&c);
    assert_int_equal(parse_deepseek("num_experts_per_tok", "9", &c), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'topk_group'"));
    /* what this runtime cannot run, or a shape that cannot be, is refused by name */
    static const struct {
        const char *key, *value, *must_show;
        epm_status st;
    } bad[] = {
        {"quantization_config", "{\"quant_method\": \"awq\", \"bits\": 4}", "quantization_config.quant_method",
         EPM_ERR_UNSUPPORTED},
        {"quantization_config", "{\"quant_method\": \"fp8\"}", "quantization_config.weight_block_size",
         EPM_ERR_UNSUPPORTED},
        {"quantization_config", "{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\", \"weight_block_size\": [128, 128]}",
         "quantization_config.fmt", EPM_ERR_UNSUPPORTED},
        {"quantization_config",
         "{\"quant_method\": \"fp8\", \"activation_scheme\": \"static\", \"weight_block_size\": [128, 128]}",
         "quantization_config.activation_scheme", EPM_ERR_UNSUPPORTED},
        {"quantization_config", "{\"quant_method\": \"fp8\", \"weight_block_size\": [128]}",
         "quantization_config.weight_block_size", EPM_ERR_FORMAT},
        {"quantization_config", "{\"quant_method\": \"fp8\", \"weight_block_size\": [0, 128]}",
         "quantization_config.weight_block_size", EPM_ERR_FORMAT},
        {"quantization_config", "[\"fp8\"]", "quantization_config", EPM_ERR_FORMAT},
        {"rope_scaling", "{\"type\": \"dynamic\", \"factor\": 4}", "dynamic", EPM_ERR_UNSUPPORTED},
        {"rope_scaling", "{\"type\": \"yarn\", \"factor\": 40}", "original_max_position_embeddings", EPM_ERR_FORMAT},
        {"rope_scaling", "{\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096, "
                         "\"beta_fast\": \"x\"}",
         "rope_scaling.beta_fast", EPM_ERR_FORMAT},
        /* a RoPE base of 1 or below (its frequencies past 1; YaRN's log(base) 0 or negative: found by
         * fuzz_config), top level or in rope_scaling */
        {"rope_theta", "0.01", "field 'rope_theta' = 0.01: must be a number in (1, 1e+12)", EPM_ERR_FORMAT},
        {"rope_theta", "1", "field 'rope_theta' = 1:", EPM_ERR_FORMAT},
        {"rope_scaling", "{\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096, "
                         "\"rope_theta\": 0.5}",
         "field 'rope_scaling.rope_theta' = 0.5: must be a number in (1, 1e+12)", EPM_ERR_FORMAT},
        /* numbers kept as float32, held to their range there (what a save writes back: found by fuzzing);
         * YaRN's rotations not so few that the correction range overflows */
        {"routed_scaling_factor", "1e-46", "field 'routed_scaling_factor' = 1e-46: must be a number in (0, 1e+06) as a "
                                           "float32 (0)", EPM_ERR_FORMAT},
        {"routed_scaling_factor", "999999.99", "(0, 1e+06) as a float32 (1e+06)", EPM_ERR_FORMAT},
        {"rms_norm_eps", "0.99999999", "must be a number in (1e-30, 1) as a float32 (1)", EPM_ERR_FORMAT},
        {"rope_scaling", "{\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096, "
                         "\"beta_fast\": 1e-308}",
         "rope_scaling.beta_fast", EPM_ERR_FORMAT},
        {"scoring_func", "\"softmax\"", "scoring_func", EPM_ERR_UNSUPPORTED},
        {"topk_method", "\"greedy\"", "topk_method", EPM_ERR_UNSUPPORTED},
        {"moe_layer_freq", "2", "moe_layer_freq", EPM_ERR_FORMAT},
        {"n_group", "3", "n_group", EPM_ERR_FORMAT},
        {"n_group", "16", "n_group", EPM_ERR_FORMAT}, /* groups of one expert */
        {"qk_rope_head_dim", "7", "qk_rope_head_dim", EPM_ERR_FORMAT},
        {"n_routed_experts", NULL, "n_routed_experts", EPM_ERR_FORMAT},
        {"first_k_dense_replace", "6", "first_k_dense_replace", EPM_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        epm_status st = parse_deepseek(bad[i].key, bad[i].value, &c);
        if (st != bad[i].st || !strstr(epm_last_error(), bad[i].must_show) || !strstr(epm_last_error(), "ds.json"))
            fail_msg("case %zu (%s): status %d, message: %s", i, bad[i].key, st, epm_last_error());
        assert_null(c.moe_layer);
    }
}

/* A config's JSON with one field replaced (value NULL deletes it), parsed
 * under `label`; root is consumed. */
static epm_status parse_with(json_t *root, const char *key, const char *value_json, const char *label,
                             epm_model_config *c)
{
    json_error_t err;
    assert_non_null(root);
    if (key && value_json) {
        json_t *v = json_loads(value_json, JSON_DECODE_ANY, &err);
        assert_non_null(v);
        json_object_set_new(root, key, v);
    } else if (key) {
        json_object_del(root, key);
    }
    char *text = json_dumps(root, 0);
    json_decref(root);
    epm_status st = epm_model_config_parse(text, strlen(text), label, c);
    free(text);
    return st;
}

/* DeepSeek-V2-Lite's config.json as published (remote-code field names and
 * values), one field replaced as parse_deepseek does. */
static epm_status parse_v2_lite(const char *key, const char *value_json, epm_model_config *c)
{
    const char *text =
        "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"aux_loss_alpha\": 0.001, \"bos_token_id\": 100000, "
        "\"eos_token_id\": 100001, \"first_k_dense_replace\": 1, \"hidden_act\": \"silu\", \"hidden_size\": 2048, "
        "\"initializer_range\": 0.02, \"intermediate_size\": 10944, \"kv_lora_rank\": 512, "
        "\"max_position_embeddings\": 163840, \"model_type\": \"deepseek_v2\", \"moe_intermediate_size\": 1408, "
        "\"moe_layer_freq\": 1, \"n_group\": 1, \"n_routed_experts\": 64, \"n_shared_experts\": 2, "
        "\"norm_topk_prob\": false, \"num_attention_heads\": 16, \"num_experts_per_tok\": 6, "
        "\"num_hidden_layers\": 27, \"num_key_value_heads\": 16, \"pretraining_tp\": 1, \"q_lora_rank\": null, "
        "\"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"rms_norm_eps\": 1e-06, \"rope_scaling\": "
        "{\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707, \"mscale_all_dim\": 0.707, "
        "\"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}, \"rope_theta\": 10000, "
        "\"routed_scaling_factor\": 1.0, \"scoring_func\": \"softmax\", \"seq_aux\": true, "
        "\"tie_word_embeddings\": false, \"topk_group\": 1, \"topk_method\": \"greedy\", "
        "\"torch_dtype\": \"bfloat16\", \"use_cache\": true, \"v_head_dim\": 128, \"vocab_size\": 102400}";
    return parse_with(json_loads(text, 0, NULL), key, value_json, "v2lite.json", c);
}

static void test_config_deepseek_v2(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(parse_v2_lite(NULL, NULL, &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_DEEPSEEKV2);
    assert_int_equal(c.num_experts, 64);
    assert_int_equal(c.top_k, 6);
    assert_int_equal(c.shared_ffn, 2 * 1408);
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.head_dim, 192);
    assert_int_equal(c.num_kv_heads, 16);
    assert_int_equal(c.rope_interleave, 1); /* V2 rotates consecutive pairs */
    assert_int_equal(c.router_sigmoid, 0);
    assert_int_equal(c.n_group, 1); /* greedy */
    assert_int_equal(c.group_max, 0);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_float_equal(c.routed_scaling, 1.0f, 0);
    assert_int_equal(c.first_k_dense, 1);
    assert_int_equal(epm_model_config_moe_layers(&c), 26);
    assert_float_equal(c.yarn_factor, 40, 0);
    assert_int_equal(c.yarn_original_max, 4096);
    assert_float_equal(c.yarn_mscale_all_dim, 0.707, 1e-12);
    epm_model_config_clear(&c);
    /* DeepSeek-V2 (236B) routes group_limited_greedy: groups scored by their best expert */
    assert_int_equal(parse_v2_lite("topk_method", "\"group_limited_greedy\"", &c), EPM_OK);
    assert_int_equal(c.n_group, 1);
    epm_model_config_clear(&c);
    /* its code renormalises or scales, never both */
    assert_int_equal(parse_v2_lite("norm_topk_prob", "true", &c), EPM_OK);
    assert_int_equal(c.norm_topk_prob, 1);
    epm_model_config_clear(&c);
    assert_int_equal(parse_v2_lite("routed_scaling_factor", "16.0", &c), EPM_OK);
    assert_float_equal(c.routed_scaling, 16.0f, 0);
    epm_model_config_clear(&c);
    static const struct {
        const char *key, *value, *must_show;
        epm_status st;
    } bad[] = {
        {"topk_method", "\"noaux_tc\"", "topk_method", EPM_ERR_UNSUPPORTED},
        {"scoring_func", "\"sigmoid\"", "scoring_func", EPM_ERR_UNSUPPORTED},
        {"moe_layer_freq", "2", "moe_layer_freq", EPM_ERR_FORMAT}, /* greedy reads no n_group */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        epm_status st = parse_v2_lite(bad[i].key, bad[i].value, &c);
        if (st != bad[i].st || !strstr(epm_last_error(), bad[i].must_show) || !strstr(epm_last_error(), "v2lite.json"))
            fail_msg("case %zu (%s): status %d, message: %s", i, bad[i].key, st, epm_last_error());
    }
}

/* The fixture's config with one field replaced (value NULL deletes it). */
static epm_status parse_edited(const char *fixture, const char *key, const char *value_json, epm_model_config *c)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/config.json", tu_fixtures(), fixture);
    return parse_with(json_load_file(path, 0, NULL), key, value_json, "edited.json", c);
}

static epm_status parse_edited_q3(const char *key, const char *value_json, epm_model_config *c)
{
    return parse_edited("qwen3moe-tiny", key, value_json, c);
}

static void test_config_rope_spellings(void **state)
{
    (void)state;
    epm_model_config c;
    /* the older top-level spelling */
    assert_int_equal(parse_edited("mixtral-tiny", "rope_parameters", NULL, &c), EPM_OK);
    assert_float_equal(c.rope_theta, 1e6, 0); /* MixtralConfig's default */
    epm_model_config_clear(&c);
    assert_int_equal(parse_edited("mixtral-tiny", "rope_parameters", "null", &c), EPM_OK);
    epm_model_config_clear(&c);
    char path[1024];
    snprintf(path, sizeof path, "%s/olmoe-tiny/config.json", tu_fixtures());
    json_t *root = json_load_file(path, 0, NULL);
    json_object_del(root, "rope_parameters");
    json_object_set_new(root, "rope_theta", json_real(500000.0));
    char *text = json_dumps(root, 0);
    assert_int_equal(epm_model_config_parse(text, strlen(text), "top.json", &c), EPM_OK);
    assert_float_equal(c.rope_theta, 500000.0, 0);
    epm_model_config_clear(&c);
    free(text);
    json_decref(root);
    /* the newer nested spelling */
    assert_int_equal(parse_edited("olmoe-tiny", "rope_parameters", "{\"rope_theta\": 20000.0, \"rope_type\": \"default\"}",
                                  &c), EPM_OK);
    assert_float_equal(c.rope_theta, 20000.0, 0);
    epm_model_config_clear(&c);
    /* RoPE scaling other than YaRN is named, in either home */
    assert_int_equal(parse_edited("olmoe-tiny", "rope_parameters", "{\"rope_theta\": 1e4, \"rope_type\": \"llama3\"}",
                                  &c),
                     EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "llama3"));
    assert_non_null(strstr(epm_last_error(), "rope_parameters.rope_type"));
    /* YaRN needs its factor */
    assert_int_equal(parse_edited("olmoe-tiny", "rope_parameters", "{\"rope_theta\": 1e4, \"rope_type\": \"yarn\"}", &c),
                     EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "rope_parameters.factor"));
    /* YaRN as Qwen3's long-context configs write it: the original context from
     * max_position_embeddings' sibling, defaults for the rest */
    assert_int_equal(parse_edited("qwen3moe-tiny", "rope_scaling",
                                  "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}",
                                  &c),
                     EPM_OK);
    assert_float_equal(c.yarn_factor, 4.0, 0);
    assert_int_equal(c.yarn_original_max, 32768);
    assert_float_equal(c.yarn_beta_fast, 32, 0);
    assert_float_equal(c.yarn_beta_slow, 1, 0);
    assert_int_equal(c.yarn_truncate, 1);
    assert_true(c.yarn_attn_factor < 0);
    epm_model_config_clear(&c);
    assert_int_equal(parse_edited("mixtral-tiny", "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", &c),
                     EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "linear"));
}

static void test_config_unknown_arch(void **state)
{
    (void)state;
    epm_model_config c;
    assert_int_equal(parse_edited("mixtral-tiny", "architectures", "[\"GptOssForCausalLM\"]", &c),
                     EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "GptOssForCausalLM"));
    assert_non_null(strstr(epm_last_error(), "edited.json"));
    /* without architectures, model_type decides */
    json_t *root = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "model_type", "olmoe", "vocab_size", 10,
                             "hidden_size", 8, "num_hidden_layers", 1, "num_attention_heads", 2, "num_experts", 4,
                             "num_experts_per_tok", 1, "intermediate_size", 16);
    char *text = json_dumps(root, 0);
    assert_int_equal(epm_model_config_parse(text, strlen(text), "mt.json", &c), EPM_OK);
    assert_int_equal(c.arch, EPM_MODEL_OLMOE);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 4);
    epm_model_config_clear(&c);
    free(text);
    json_decref(root);
    assert_int_equal(epm_model_config_parse("[1]", 3, "list.json", &c), EPM_ERR_FORMAT);
    assert_int_equal(epm_model_config_parse("{\"a\":", 5, "cut.json", &c), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "cut.json"));
}

typedef struct bad_case {
    const char *fixture, *key, *value, *must_show;
    epm_status st;
} bad_case;

static void test_config_bad_fields(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"mixtral-tiny", "hidden_size", "-1", "-1", EPM_ERR_FORMAT},
        {"mixtral-tiny", "vocab_size", "\"256\"", "\"256\"", EPM_ERR_FORMAT},
        {"mixtral-tiny", "num_hidden_layers", "0", "0", EPM_ERR_FORMAT},
        {"mixtral-tiny", "num_attention_heads", "3.5", "3.5", EPM_ERR_FORMAT},
        {"mixtral-tiny", "num_key_value_heads", "3", "3", EPM_ERR_FORMAT},
        {"mixtral-tiny", "head_dim", "\"16\"", "\"16\"", EPM_ERR_FORMAT},
        {"mixtral-tiny", "head_dim", "15", "15", EPM_ERR_UNSUPPORTED},
        {"mixtral-tiny", "num_local_experts", "0", "0", EPM_ERR_FORMAT},
        {"mixtral-tiny", "num_experts_per_tok", "9", "9", EPM_ERR_FORMAT},
        {"mixtral-tiny", "intermediate_size", "true", "true", EPM_ERR_FORMAT},
        {"mixtral-tiny", "rms_norm_eps", "-0.5", "-0.5", EPM_ERR_FORMAT},
        {"mixtral-tiny", "rms_norm_eps", "1e-85", "e-86", EPM_ERR_FORMAT}, /* 0 as a float (fuzzing found it) */
        {"mixtral-tiny", "rope_theta", "\"big\"", "\"big\"", EPM_ERR_FORMAT},
        {"mixtral-tiny", "tie_word_embeddings", "\"yes\"", "\"yes\"", EPM_ERR_FORMAT},
        {"mixtral-tiny", "dtype", "\"float64\"", "\"float64\"", EPM_ERR_FORMAT},
        {"mixtral-tiny", "torch_dtype", "7", NULL, EPM_OK}, /* dtype wins */
        {"mixtral-tiny", "architectures", "5", "5", EPM_ERR_FORMAT},
        {"mixtral-tiny", "hidden_act", "\"gelu\"", "\"gelu\"", EPM_ERR_UNSUPPORTED},
        {"mixtral-tiny", "sliding_window", "-4", "-4", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "mlp_only_layers", "[7]", "mlp_only_layers[0]", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "mlp_only_layers", "{}", "{}", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "decoder_sparse_step", "0", "0", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "moe_intermediate_size", "0", "0", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "shared_expert_intermediate_size", "-2", "-2", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "qkv_bias", "1", "1", EPM_ERR_FORMAT},
        {"qwen2moe-tiny", "num_experts", "\"8\"", "\"8\"", EPM_ERR_FORMAT},
        {"olmoe-tiny", "norm_topk_prob", "1", "1", EPM_ERR_FORMAT},
        {"olmoe-tiny", "clip_qkv", "8.0", "8.0", EPM_ERR_UNSUPPORTED},
        {"olmoe-tiny", "attention_bias", "\"no\"", "\"no\"", EPM_ERR_FORMAT},
        {"olmoe-tiny", "rope_parameters", "[1]", "[1]", EPM_ERR_FORMAT},
        {"olmoe-tiny", "rope_parameters", "{\"rope_theta\": 0}", "rope_parameters.rope_theta", EPM_ERR_FORMAT},
        {"qwen3moe-tiny", "attention_bias", "\"no\"", "\"no\"", EPM_ERR_FORMAT},
        {"qwen3moe-tiny", "head_dim", "33", "33", EPM_ERR_UNSUPPORTED},
        {"qwen3moe-tiny", "mlp_only_layers", "[4]", "mlp_only_layers[0]", EPM_ERR_FORMAT},
        {"qwen3moe-tiny", "moe_intermediate_size", "-1", "-1", EPM_ERR_FORMAT},
        {"qwen3moe-tiny", "rope_parameters", "{\"rope_theta\": 1e6, \"rope_type\": \"longrope\"}", "longrope",
         EPM_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const bad_case *b = &cases[i];
        epm_model_config c;
        epm_status st = parse_edited(b->fixture, b->key, b->value, &c);
        if (st != b->st || (b->must_show && (!strstr(epm_last_error(), b->key) ||
                                             !strstr(epm_last_error(), b->must_show) ||
                                             !strstr(epm_last_error(), "edited.json"))))
            fail_msg("case %zu (%s = %s): status %d, message: %s", i, b->key, b->value, st, epm_last_error());
        if (st == EPM_OK)
            epm_model_config_clear(&c);
        else
            assert_null(c.moe_layer);
    }
    /* a required field that is absent is named */
    epm_model_config c;
    assert_int_equal(parse_edited("mixtral-tiny", "hidden_size", NULL, &c), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'hidden_size' is missing"));
    assert_int_equal(parse_edited("qwen2moe-tiny", "moe_intermediate_size", NULL, &c), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "moe_intermediate_size"));
}

static void test_config_qwen2moe_dense_layers(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/qwen2moe-tiny/config.json", tu_fixtures());
    json_t *root = json_load_file(path, 0, NULL);
    json_object_set_new(root, "decoder_sparse_step", json_integer(2));
    json_object_set_new(root, "mlp_only_layers", json_pack("[i]", 3));
    json_object_del(root, "qkv_bias");
    json_object_del(root, "dtype");
    json_object_set_new(root, "torch_dtype", json_string("bfloat16"));
    char *text = json_dumps(root, 0);
    json_decref(root);
    epm_model_config c;
    assert_int_equal(epm_model_config_parse(text, strlen(text), "q.json", &c), EPM_OK);
    free(text);
    /* sparse where (l + 1) % 2 == 0 and l not in [3] */
    assert_int_equal(c.moe_layer[0], 0);
    assert_int_equal(c.moe_layer[1], 1);
    assert_int_equal(c.moe_layer[2], 0);
    assert_int_equal(c.moe_layer[3], 0);
    assert_int_equal(epm_model_config_moe_layers(&c), 1);
    assert_int_equal(c.qkv_bias_stated, 0);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.dtype, EPM_DTYPE_BF16);
    epm_model_config_clear(&c);
}

static void test_config_save_round_trip(void **state)
{
    (void)state;
    const char *names[] = {"mixtral-tiny", "qwen2moe-tiny", "olmoe-tiny", "qwen3moe-tiny"};
    for (int i = 0; i < 4; i++) {
        epm_model_config a, b;
        assert_int_equal(load_fixture(names[i], &a), EPM_OK);
        a.moe_layer[1] = a.arch == EPM_MODEL_QWEN2MOE || a.arch == EPM_MODEL_QWEN3MOE ? 0 : 1;
        a.dtype = EPM_DTYPE_BF16;
        const char *p = tu_path("saved.json");
        assert_int_equal(epm_model_config_save(&a, p), EPM_OK);
        assert_int_equal(epm_model_config_load(p, &b), EPM_OK);
        assert_int_equal(b.arch, a.arch);
        assert_int_equal(b.vocab_size, a.vocab_size);
        assert_int_equal(b.head_dim, a.head_dim);
        assert_int_equal(b.num_kv_heads, a.num_kv_heads);
        assert_int_equal(b.moe_ffn, a.moe_ffn);
        assert_int_equal(b.dense_ffn, a.dense_ffn);
        assert_int_equal(b.shared_ffn, a.shared_ffn);
        assert_int_equal(b.norm_topk_prob, a.norm_topk_prob);
        assert_int_equal(b.qkv_bias, a.qkv_bias);
        assert_int_equal(b.o_bias, a.o_bias);
        assert_int_equal(b.qk_norm, a.qk_norm);
        assert_int_equal(b.dtype, EPM_DTYPE_BF16);
        assert_float_equal(b.rms_norm_eps, a.rms_norm_eps, 0);
        assert_float_equal(b.rope_theta, a.rope_theta, 0);
        assert_memory_equal(b.moe_layer, a.moe_layer, (size_t)a.num_layers);
        epm_model_config_clear(&b);
        /* a value needing all 17 digits reads back as the same double (7
         * digits were written before); the fixture's short ones stay short */
        float eps = a.rms_norm_eps;
        a.rms_norm_eps = 0.1f + 0.2f, a.rope_theta = 1e6 / 3;
        assert_int_equal(epm_model_config_save(&a, p), EPM_OK);
        assert_int_equal(epm_model_config_load(p, &b), EPM_OK);
        if (b.rms_norm_eps != a.rms_norm_eps || b.rope_theta != a.rope_theta)
            fail_msg("%s: saved %.9g and %.17g, read back %.9g and %.17g", names[i], (double)a.rms_norm_eps,
                     a.rope_theta, (double)b.rms_norm_eps, b.rope_theta);
        epm_model_config_clear(&b);
        a.rms_norm_eps = eps, a.rope_theta = 10000;
        assert_int_equal(epm_model_config_save(&a, p), EPM_OK);
        char text[8192] = {0};
        FILE *f = fopen(p, "r");
        assert_non_null(f);
        size_t got = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        assert_true(got > 0);
        if (!strstr(text, "10000") || strstr(text, "9999") || strstr(text, "00000"))
            fail_msg("%s: short values not written short:\n%s", names[i], text);
        epm_model_config_clear(&a);
    }
}

static void test_config_arch_names(void **state)
{
    (void)state;
    epm_model_arch a;
    assert_int_equal(epm_model_arch_parse("qwen2_moe", &a), EPM_OK);
    assert_int_equal(a, EPM_MODEL_QWEN2MOE);
    assert_int_equal(epm_model_arch_parse("qwen2moe", &a), EPM_OK);
    assert_int_equal(epm_model_arch_parse("OlmoeForCausalLM", &a), EPM_OK);
    assert_int_equal(a, EPM_MODEL_OLMOE);
    assert_int_equal(epm_model_arch_parse("qwen3_moe", &a), EPM_OK);
    assert_int_equal(a, EPM_MODEL_QWEN3MOE);
    assert_int_equal(epm_model_arch_parse("Qwen3MoeForCausalLM", &a), EPM_OK);
    assert_int_equal(a, EPM_MODEL_QWEN3MOE);
    assert_int_equal(epm_model_arch_parse("llama", &a), EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "Qwen3MoeForCausalLM"));
    assert_string_equal(epm_model_arch_class(EPM_MODEL_MIXTRAL), "MixtralForCausalLM");
    assert_string_equal(epm_model_arch_short(EPM_MODEL_OLMOE), "olmoe");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_mixtral_fixture),  cmocka_unit_test(test_config_qwen2moe_fixture),
        cmocka_unit_test(test_config_olmoe_fixture),    cmocka_unit_test(test_config_qwen3moe_fixture),
        cmocka_unit_test(test_config_deepseek),         cmocka_unit_test(test_config_deepseek_v2),
        cmocka_unit_test(test_config_rope_spellings),
        cmocka_unit_test(test_config_unknown_arch),     cmocka_unit_test(test_config_bad_fields),
        cmocka_unit_test(test_config_qwen2moe_dense_layers), cmocka_unit_test(test_config_save_round_trip),
        cmocka_unit_test(test_config_arch_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
