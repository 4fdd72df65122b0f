/* epmoe: Hugging Face MoE checkpoints — config.json, weights, token ids.
 *
 * A checkpoint is a folder laid out as on the Hub: `config.json` plus either
 * `model.safetensors`, or shards `model-0000N-of-0000M.safetensors` listed by
 * `model.safetensors.index.json` (its `weight_map`). Tensors may be F32, BF16
 * or F16; they are handed out as float32, row-major, [out, in] as in PyTorch's
 * nn.Linear, so kernels consume them directly.
 *
 * Architectures and the tensor names read (l = layer, e = expert):
 *
 *   all:  model.embed_tokens.weight            [vocab, hidden]
 *         model.norm.weight                    [hidden]
 *         lm_head.weight                       [vocab, hidden]  (absent when tie_word_embeddings)
 *         model.layers.l.input_layernorm.weight          [hidden]
 *         model.layers.l.post_attention_layernorm.weight [hidden]
 *         model.layers.l.self_attn.{q,k,v,o}_proj.weight [heads*hd | kv*hd | kv*hd, hidden], [hidden, heads*hd]
 *   MixtralForCausalLM (model_type mixtral):
 *         model.layers.l.block_sparse_moe.gate.weight                [experts, hidden]
 *         model.layers.l.block_sparse_moe.experts.e.w1.weight        [ffn, hidden]  (gate)
 *         model.layers.l.block_sparse_moe.experts.e.w3.weight        [ffn, hidden]  (up)
 *         model.layers.l.block_sparse_moe.experts.e.w2.weight        [hidden, ffn]  (down)
 *   Qwen2MoeForCausalLM (qwen2_moe), OlmoeForCausalLM (olmoe), Qwen3MoeForCausalLM (qwen3_moe):
 *         model.layers.l.mlp.gate.weight                             [experts, hidden]
 *         model.layers.l.mlp.experts.e.{gate,up,down}_proj.weight    [ffn, hidden] x2, [hidden, ffn]
 *   Qwen2-MoE only:
 *         model.layers.l.self_attn.{q,k,v}_proj.bias                 (qkv_bias; when config.json does not
 *                                                                     say, present iff layer 0 has them)
 *         model.layers.l.mlp.shared_expert.{gate,up,down}_proj.weight [shared, hidden] x2, [hidden, shared]
 *         model.layers.l.mlp.shared_expert_gate.weight               [1, hidden]
 *         dense layers (mlp_only_layers, decoder_sparse_step):
 *         model.layers.l.mlp.{gate,up,down}_proj.weight              [inter, hidden] x2, [hidden, inter]
 *   OLMoE only:
 *         model.layers.l.self_attn.q_norm.weight [heads*hd], k_norm.weight [kv*hd]
 *         model.layers.l.self_attn.{q,k,v,o}_proj.bias when attention_bias is true
 *   DeepseekV3ForCausalLM (deepseek_v3), DeepseekV2ForCausalLM (deepseek_v2, no correction bias,
 *         softmax routing): routed experts as Qwen2-MoE; layers before
 *         first_k_dense_replace dense (mlp.{gate,up,down}_proj);
 *         model.layers.l.mlp.gate.e_score_correction_bias               [experts]
 *         model.layers.l.mlp.shared_experts.{gate,up,down}_proj.weight   (n_shared_experts * moe width)
 *         model.layers.l.self_attn.q_a_proj.weight, q_a_layernorm.weight, q_b_proj.weight
 *                                   (or q_proj.weight when q_lora_rank is null)
 *         model.layers.l.self_attn.kv_a_proj_with_mqa.weight, kv_a_layernorm.weight, kv_b_proj.weight
 *         model.layers.l.self_attn.{q_a_proj,kv_a_proj_with_mqa,o_proj}.bias when attention_bias
 *   Qwen3MoeForCausalLM (qwen3_moe): the experts and dense layers as Qwen2-MoE, no shared expert;
 *         model.layers.l.self_attn.q_norm.weight [hd], k_norm.weight [hd] (applied to each head)
 *         model.layers.l.self_attn.{q,k,v,o}_proj.bias when attention_bias is true
 *
 * Other tensors in the files (rotary caches and the like) are ignored. */
#ifndef EPMOE_MODEL_H
#define EPMOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/generate.h"
#include "epmoe/status.h"
#include "epmoe/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum epm_model_arch {
    EPM_MODEL_MIXTRAL,
    EPM_MODEL_QWEN2MOE,
    EPM_MODEL_OLMOE,
    EPM_MODEL_QWEN3MOE,
    EPM_MODEL_DEEPSEEKV3,
    EPM_MODEL_DEEPSEEKV2,
    EPM_MODEL_ARCH_COUNT
} epm_model_arch;

/* Where q/k RMSNorm applies: over the whole projection output (OLMoE: weights
 * [heads*hd] and [kv*hd]) or over each head with one shared weight [hd]
 * (Qwen3-MoE). */
typedef enum epm_qk_norm {
    EPM_QK_NORM_NONE,
    EPM_QK_NORM_WHOLE,
    EPM_QK_NORM_PER_HEAD
} epm_qk_norm;

/* "MixtralForCausalLM", ... and "mixtral", "qwen2moe", "olmoe", "qwen3moe",
 * "deepseekv3", "deepseekv2". */
EPM_API const char *epm_model_arch_class(epm_model_arch a);
EPM_API const char *epm_model_arch_short(epm_model_arch a);
/* Accepts the class name, the short name or the model_type ("qwen2_moe",
 * "qwen3_moe", "deepseek_v3"). */
EPM_API epm_status epm_model_arch_parse(const char *s, epm_model_arch *out);

/* ---- config.json ---- */

typedef struct epm_model_config {
    epm_model_arch arch;
    int vocab_size;
    int hidden_size;
    int num_layers;
    int num_heads, num_kv_heads, head_dim; /* head_dim: config value, else hidden / heads; with MLA the
                                              width attention runs at (below) and kv heads = heads */
    int num_experts;                       /* num_local_experts (Mixtral) / num_experts */
    int top_k;                             /* num_experts_per_tok */
    int moe_ffn;    /* width of each routed expert (Qwen2-MoE moe_intermediate_size, else intermediate_size) */
    int dense_ffn;  /* intermediate_size: width of dense MLP layers */
    int shared_ffn; /* Qwen2-MoE shared_expert_intermediate_size, DeepSeek-V3 n_shared_experts *
                       moe_intermediate_size; 0 = no shared expert */
    int norm_topk_prob;  /* renormalise the top-k softmax weights (Mixtral: always) */
    int qkv_bias;        /* q/k/v projections have biases */
    int qkv_bias_stated; /* 0: config.json is silent, epm_model_open decides from the tensors */
    int o_bias;          /* o projection has a bias (OLMoE attention_bias) */
    int qk_norm;         /* RMSNorm on q and k after projection: EPM_QK_NORM_* */
    int tie_word_embeddings;
    int sliding_window;  /* 0 = full attention; else the window the config asks for */
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings; /* 0 when the config does not say */
    /* RoPE scaling "yarn" (YaRN) when yarn_factor > 0: frequencies between
     * interpolated and extrapolated ones over a ramp set by beta_fast/slow
     * and yarn_original_max, cos and sin scaled by an attention factor
     * (stated, or from mscale / mscale_all_dim); DeepSeek-V3 also scales its
     * softmax by get_mscale(factor, mscale_all_dim)^2 (epm_model_rope_freqs). */
    double yarn_factor, yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;
    double yarn_attn_factor; /* < 0: derived */
    int yarn_original_max, yarn_truncate;
    epm_dtype dtype;     /* declared "dtype"/"torch_dtype" (F32 when absent); tensors carry their own */
    int decoder_sparse_step;
    uint8_t *moe_layer;  /* [num_layers]: 1 = sparse MoE block, 0 = dense MLP */
    /* DeepSeek's multi-head latent attention (MLA): the run caches the
     * latent (epm_model_kv_floats), or, expanded, a key and a value per head
     * of head_dim = max(qk_nope + qk_rope, v_head_dim) (a value shorter than
     * that padded with zeros). */
    int mla;
    int q_lora_rank;      /* 0: q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj */
    int kv_lora_rank;
    int qk_nope_dim, qk_rope_dim, v_head_dim;
    int rope_interleave;  /* RoPE pairs the rope part's (2j, 2j+1), not (j, j + d/2) */
    int first_k_dense;    /* first_k_dense_replace: layers before it are dense */
    /* DeepSeek-V3's router: sigmoid scores; e_score_correction_bias added for
     * the choice only; experts in n_group groups of which the topk_group with
     * the highest sum of their two best scores may be chosen; the chosen
     * weights (scores without the bias) times routed_scaling. */
    int router_sigmoid;
    int n_group, topk_group;
    int group_max;         /* DeepSeek-V2's group_limited_greedy: a group scores its best expert */
    float routed_scaling;  /* 1 for the others; DeepSeek-V2 with norm_topk_prob: 1 (its code scales
                              only weights it does not renormalise) */
    /* quantization_config "fp8": weight matrices may be float8 e4m3 with a
     * float32 weight_scale_inv per [rows, columns] block, dequantised at
     * load; 0, 0 = not quantised */
    int fp8_block[2];
} epm_model_config;

/* Parses config.json text; label (usually its path) names it in errors. On
 * failure cfg is left empty (nothing to clear). */
EPM_API epm_status epm_model_config_parse(const char *text, size_t len, const char *label, epm_model_config *cfg);
EPM_API epm_status epm_model_config_load(const char *path, epm_model_config *cfg);
/* RoPE's inverse frequencies inv[dim / 2] for a rotary width dim (head_dim,
 * or DeepSeek-V3's qk_rope_head_dim), the factor on cos and sin, and the
 * extra factor on the attention's softmax scale (1 but for YaRN on DeepSeek-V3). */
EPM_API void epm_model_rope_freqs(const epm_model_config *cfg, int dim, double *inv, double *cs_scale,
                                  double *softmax_scale);
/* Writes config.json in the Hub's spelling (rope_parameters, dtype), atomically. */
EPM_API epm_status epm_model_config_save(const epm_model_config *cfg, const char *path);
EPM_API void epm_model_config_clear(epm_model_config *cfg);
EPM_API int epm_model_config_moe_layers(const epm_model_config *cfg);
/* Floats a KV cache row holds per token and layer (what follow mode
 * all-gathers: plan's kv_dim): 2 x kv heads x head_dim, or for MLA cached as
 * its latent (mla_expanded 0) kv_lora_rank + qk_rope_head_dim. */
EPM_API int epm_model_kv_floats(const epm_model_config *cfg, int mla_expanded);

/* ---- weights ---- */

/* A SwiGLU MLP: down(silu(gate x) * up x). gate/up [ffn, hidden], down
 * [hidden, ffn], of type dtype: F32 (float), or BF16 (uint16_t bit patterns)
 * or F8_E4M3 (codes, with scale and block below) held as stored (routed
 * experts: epm_model_set_expert_dtype; shared experts and dense MLPs:
 * epm_model_set_dense_dtype). */
typedef struct epm_model_mlp {
    const void *gate, *up, *down;
    int ffn;
    epm_dtype dtype;
    /* F8_E4M3 (an FP8 checkpoint's MLP held as stored): gate, up, down are
     * uint8_t e4m3 codes and
     * scale[0..2] their float32 scales, one per block of block[0] rows x
     * block[1] columns (row-major, [ceil(rows / block[0])][ceil(cols /
     * block[1])]); weight (i, j) stands for bf16(e4m3 x its block's scale).
     * Unused otherwise. */
    const float *scale[3];
    int block[2];
} epm_model_mlp;

/* A weight matrix [out, in] as held: F32 (float), or BF16 (uint16_t bit
 * patterns) held as stored (epm_model_set_dense_dtype). A struct, not a bare
 * pointer, so that no caller can take it for float32 unawares. */
typedef struct epm_weight {
    const void *data;
    epm_dtype dtype;
    /* F8_E4M3 (epm_model_set_dense_dtype): data are e4m3 codes, scale their
     * float32 scales per block of block[0] x block[1], as epm_model_mlp's */
    const float *scale;
    int block[2];
} epm_weight;

typedef struct epm_model_layer {
    const float *input_norm, *post_attn_norm;  /* [hidden] */
    epm_weight q, k, v, o;                     /* [heads*hd, H], [kv*hd, H], [kv*hd, H], [H, heads*hd];
                                                  MLA: q_proj [heads*qk, H] (no q LoRA), no k or v,
                                                  o [H, heads*v_head_dim] */
    /* MLA (DeepSeek-V3), qk = qk_nope + qk_rope: q_a [q_lora, H], q_b [heads*qk, q_lora],
     * kv_a [kv_lora + qk_rope, H], kv_b [heads*(qk_nope + v_head_dim), kv_lora] */
    epm_weight q_a, q_b, kv_a, kv_b;
    const float *q_a_norm, *kv_a_norm;          /* [q_lora], [kv_lora] (eps 1e-6 whatever the config says) */
    const float *q_a_bias, *kv_a_bias;          /* attention_bias only */
    const float *router_bias;                   /* DeepSeek-V3 e_score_correction_bias [experts] */
    const float *q_bias, *k_bias, *v_bias, *o_bias; /* NULL when the model has none */
    const float *q_norm, *k_norm;              /* OLMoE: [heads*hd], [kv*hd]; Qwen3-MoE: [hd] each;
                                                  else NULL */
    int is_moe;
    const float *router;                       /* MoE layers: [experts, hidden] */
    epm_model_mlp shared;                      /* Qwen2-MoE shared expert (gate NULL when none) */
    const float *shared_gate;                  /* [1, hidden]: sigmoid(shared_gate . x) scales it
                                                  (Qwen2-MoE; NULL: added as is, DeepSeek-V3) */
    epm_model_mlp mlp;                         /* dense layers only */
    const float *mod_router;                   /* [hidden] Mixture-of-Depths router (tensor
                                                  model.layers.{l}.mod_router.weight, [1, hidden] or
                                                  [hidden]); NULL when the checkpoint has none */
} epm_model_layer;

typedef struct epm_model_dense {
    epm_weight embed;        /* [vocab, hidden] */
    const float *final_norm; /* [hidden] */
    epm_weight lm_head;      /* [vocab, hidden]; the embedding itself when tied */
    int num_layers;
    epm_model_layer *layer;  /* [num_layers] */
} epm_model_dense;

typedef struct epm_model epm_model;

/* Reads config.json and the index, maps every shard and checks that each
 * tensor the config implies is present with the right shape and a float
 * dtype. Reads no tensor data. */
EPM_API epm_status epm_model_open(const char *dir, epm_model **out);
EPM_API void epm_model_close(epm_model *m);
EPM_API const epm_model_config *epm_model_get_config(const epm_model *m);

/* Everything but the routed experts; idempotent. The weights live until
 * epm_model_close. */
EPM_API epm_status epm_model_load_dense(epm_model *m, const epm_model_dense **out);
/* Routed experts experts[0..n) of a MoE layer; out[i] (may be NULL) receives
 * their weights. Loading an expert twice reads it once. */
EPM_API epm_status epm_model_load_experts(epm_model *m, int layer, const int *experts, int n,
                                          epm_model_mlp *out);
/* The dtype routed experts are held in from their first load on: F32 (the
 * default; every tensor widened), or BF16 when want is BF16 and every routed
 * expert tensor of the checkpoint is BF16 (or FP8, dequantised to bf16): they are then used as stored
 * (mapped, not copied, when aligned), half the memory of float32 and the
 * same values. want F8_E4M3: held as stored (mapped, their scales copied to
 * float32) when every routed expert tensor is FP8, a quarter of float32's
 * memory, standing for the same bf16 values; else as for BF16. The codes and
 * scales are checked at load as when dequantising (NaN codes, non-finite
 * scales, products beyond bf16 are refused). *got (may be NULL) receives
 * the dtype chosen. Call before the first epm_model_load_experts
 * (EPM_ERR_INVALID_ARG after). */
EPM_API epm_status epm_model_set_expert_dtype(epm_model *m, epm_dtype want, epm_dtype *got);
/* The same for the dense weight matrices (epm_weight and the shared and
 * dense MLPs: attention projections, embedding, LM head; not the norms,
 * biases or routers, which stay float32): F32 (the default), or BF16 when
 * want is BF16 and every one of those matrices is BF16 (or FP8) in the checkpoint.
 * want F8_E4M3: as for BF16, and when besides every attention projection
 * but MLA's kv_b and every shared or dense MLP weight is FP8 (DeepSeek-V3's
 * release), those stay FP8 as stored (the embedding, LM head and kv_b are
 * held bf16). Call before epm_model_load_dense (EPM_ERR_INVALID_ARG after). */
EPM_API epm_status epm_model_set_dense_dtype(epm_model *m, epm_dtype want, epm_dtype *got);
/* Forgets routed experts experts[0..n) of a MoE layer (online rebalancing
 * moved them elsewhere): the copies this model made of them are freed, and
 * mapped ones' pages leave the resident set (madvise; the file keeps them);
 * pointers to them are no longer valid. One not loaded is skipped; loading it again reads it again. */
EPM_API epm_status epm_model_drop_experts(epm_model *m, int layer, const int *experts, int n);
/* Asks the kernel to read experts[0..n) of a MoE layer from the checkpoint
 * ahead, in the background, so that loading them later finds their pages
 * in memory (asynchronous online rebalancing). Advice only: nothing is
 * loaded or counted, and a kernel may ignore it. */
EPM_API epm_status epm_model_prefetch_experts(const epm_model *m, int layer, const int *experts, int n);
/* Weights of an expert already loaded, or NULL. */
EPM_API const epm_model_mlp *epm_model_expert(const epm_model *m, int layer, int expert);
/* A routed expert between ranks (online rebalancing takes a gained expert
 * from a rank that holds it, as vLLM and SGLang do, not from the file):
 * packed as held (gate, up, down at the expert dtype's width, then for FP8
 * their float32 scales, each part padded to 4 bytes), the same size for
 * every expert of a model once the dtype is set. Pack needs the expert
 * loaded and cap >= that size; unpack takes exactly that many bytes from a
 * model of the same checkpoint and dtype and holds the expert as a copy it
 * owns (dropped like any other; one held already is kept). Neither reads the
 * checkpoint, so epm_model_bytes_loaded does not count them. */
EPM_API int64_t epm_model_expert_packed_bytes(const epm_model *m);
EPM_API epm_status epm_model_pack_expert(const epm_model *m, int layer, int expert, void *dst, int64_t cap);
EPM_API epm_status epm_model_unpack_expert(epm_model *m, int layer, int expert, const void *src, int64_t bytes);

/* Bytes of one routed expert as the checkpoint stores it (its matrices and,
 * for FP8, their scales): what loading it reads, whatever it is held in.
 * 0 without routed experts; -1 (the error set) where its tensors are not
 * all there or not well-formed. */
EPM_API int64_t epm_model_expert_stored_bytes(const epm_model *m);
/* Checkpoint bytes this process has read (tensor data at their stored dtype),
 * and those of routed experts alone: what a rank's placement costs it. */
EPM_API int64_t epm_model_bytes_loaded(const epm_model *m);
EPM_API int64_t epm_model_expert_bytes_loaded(const epm_model *m);
/* Number of checkpoint files and their total size on disk. */
EPM_API int epm_model_files(const epm_model *m);
EPM_API int64_t epm_model_file_bytes(const epm_model *m);

/* ---- synthetic checkpoints ---- */

typedef struct epm_model_synth_opts {
    epm_model_arch arch;
    int hidden, layers, experts, k, ffn, heads, kv_heads, vocab;
    int head_dim;         /* 0 = hidden / heads; else stated in config.json (Qwen3-MoE's is wider) */
    int shared_ffn;       /* Qwen2-MoE shared expert width (default 4 * ffn, 0 = none) */
    int dense_ffn;        /* intermediate_size for Qwen2-MoE / Qwen3-MoE dense layers (default 4 * ffn) */
    const int *mlp_only;  /* Qwen2-MoE / Qwen3-MoE: layers that get a dense MLP */
    int n_mlp_only;
    int tie_embeddings;
    epm_dtype dtype;      /* F32, BF16, F16, or F8_E4M3: the layers' weight matrices in float8 with a
                             float32 weight_scale_inv per fp8_block (amax / 448), the rest BF16, as
                             DeepSeek-V3's FP8 release */
    int fp8_block[2];     /* rows, columns of a scale's block (default 128, 128) */
    uint64_t seed;
    int shards;           /* 1 = model.safetensors; more = model-0000N-of-0000M + index */
    double router_scale;  /* router weights' spread relative to the others (default 8): decisive routing */
    /* DeepSeek-V3 and V2 (head_dim, when set, is qk_nope_head_dim; -1 = derived):
     * q_lora (hidden / 2; 0 = a plain q_proj), kv_lora (hidden / 2), qk_rope
     * (half the nope width, even), v_head (the nope width), n_group and
     * topk_group (4 and 2 where the experts allow, else 1 and 1),
     * first_dense (1 when there are 2+ layers); shared_ffn, when set, a
     * multiple of ffn (default: one shared expert for V3, two for V2) */
    int q_lora, kv_lora, qk_rope, v_head, n_group, topk_group, first_dense;
    double routed_scaling; /* <= 0: V3 2.5, V2 1 */
    /* YaRN RoPE scaling when yarn_factor > 0 (max_position_embeddings =
     * factor x original; beta_fast 32, beta_slow 1) */
    double yarn_factor, yarn_mscale, yarn_mscale_all_dim;
    int yarn_original_max;
} epm_model_synth_opts;

EPM_API void epm_model_synth_opts_init(epm_model_synth_opts *o);
/* Writes config.json and the weights into dir (created if missing). Each
 * tensor's values depend only on the seed and its name, so the same seed gives
 * the same weights whatever the dtype rounding or the number of shards. */
EPM_API epm_status epm_model_synth(const epm_model_synth_opts *o, const char *dir);

/* ---- token ids ---- */

typedef struct epm_tokens {
    int batch;
    int *lens;       /* [batch] */
    int32_t **ids;   /* [batch][lens[s]] */
    int *max_new;    /* [batch] or NULL: JSON's "max_new_tokens", one for all or one per sequence
                        (each >= 1), as a serving benchmark gives each request its output length;
                        a request's max_tokens (0: it gives none) */
    epm_request_sampling *req; /* [batch] or NULL: each request's own decoding parameters */
} epm_tokens;

/* JSON ([[1,2,3],[4,5]] or {"input_ids": [[...]], "max_new_tokens": 8 | [8, 2]}); requests, vLLM's
 * way: a JSON list of objects, or one object per line (JSON lines), each
 * {"prompt_token_ids": [...], "max_tokens": N, and SamplingParams fields:
 * temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
 * frequency_penalty, min_tokens, seed, stop_token_ids, ignore_eos}, unknown
 * fields refused by name; .npy int32/int64
 * [batch, seq] (or [seq]), or safetensors with an integer `input_ids`
 * tensor; chosen by content. vocab > 0: every id must be below it; errors
 * name the sequence and position. */
EPM_API epm_status epm_tokens_load(const char *path, int vocab, epm_tokens **out);
EPM_API epm_status epm_tokens_parse(const void *buf, size_t size, const char *label, int vocab, epm_tokens **out);
EPM_API void epm_tokens_destroy(epm_tokens *t);

#ifdef __cplusplus
}
#endif
#endif
