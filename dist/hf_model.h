/* Hugging Face MoE checkpoints: config.json + safetensors (single file or
 * sharded with model.safetensors.index.json). Internal to libepmoe. */
#ifndef EPM_HF_MODEL_H
#define EPM_HF_MODEL_H

#include "core.h"
#include "safetensors.h"

typedef enum epm_arch { EPM_ARCH_MIXTRAL, EPM_ARCH_QWEN2MOE, EPM_ARCH_OLMOE } epm_arch;

typedef struct epm_hf_config {
    epm_arch arch;
    int vocab, hidden, layers, heads, kv_heads, head_dim;
    int experts, k;
    int moe_ffn;     /* per-expert FFN width */
    int shared_ffn;  /* Qwen2-MoE shared expert width (0 = none) */
    int dense_ffn;   /* width of dense MLP layers (Qwen2-MoE mlp_only_layers) */
    int norm_topk;   /* renormalise the top-k gate weights */
    int qkv_bias, qk_norm, tie_embeddings;
    float eps;
    double rope_theta;
    unsigned char *sparse; /* [layers] 1 = MoE layer, 0 = dense MLP */
} epm_hf_config;

epm_status epm_hf_config_parse(const char *text, size_t len, const char *label, epm_hf_config *out);
void epm_hf_config_free(epm_hf_config *c);

/* A layer's weights, float32, [out, in]. Pointers into the mapping when the
 * file holds float32, else converted copies owned by the model. */
typedef struct epm_hf_layer {
    const float *in_norm, *post_norm;
    const float *wq, *wk, *wv, *wo, *bq, *bk, *bv, *q_norm, *k_norm;
    const float *router;                       /* [experts, hidden] (MoE layers) */
    const float **gate, **up, **down;          /* [experts], NULL where not loaded */
    const float *sh_gate, *sh_up, *sh_down, *sh_router; /* Qwen2-MoE shared expert */
    const float *mlp_gate, *mlp_up, *mlp_down; /* dense MLP layers */
} epm_hf_layer;

typedef struct epm_hf_model epm_hf_model;

/* Opens dir (config + shards) and validates the config. Nothing is loaded yet. */
epm_status epm_hf_open(const char *dir, epm_hf_model **out);
void epm_hf_close(epm_hf_model *m);
const epm_hf_config *epm_hf_cfg(const epm_hf_model *m);

/* Loads embeddings, norms, attention, routers, shared experts, dense MLPs and
 * the LM head; then the experts each layer's `want[l][e]` marks (NULL = all). */
epm_status epm_hf_load(epm_hf_model *m, const unsigned char *want);
const epm_hf_layer *epm_hf_layer_w(const epm_hf_model *m, int l);
const float *epm_hf_embed(const epm_hf_model *m);
const float *epm_hf_final_norm(const epm_hf_model *m);
const float *epm_hf_lm_head(const epm_hf_model *m);
/* Bytes of tensor data this process has read from the checkpoint. */
int64_t epm_hf_bytes_loaded(const epm_hf_model *m);

#endif
