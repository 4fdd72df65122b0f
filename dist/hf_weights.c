/* Loading a checkpoint's tensors: each rank maps the shards and reads only
 * the dense weights and the experts its placement gives it. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "hf_model.h"

struct epm_hf_model {
    char *dir;
    epm_hf_config cfg;
    epm_safetensors **shards;
    int nshards;
    float **owned; /* converted copies */
    int nowned, capowned;
    int64_t bytes;
    const float *embed, *final_norm, *lm_head;
    epm_hf_layer *layer;
};

const epm_hf_config *epm_hf_cfg(const epm_hf_model *m) { return &m->cfg; }
const epm_hf_layer *epm_hf_layer_w(const epm_hf_model *m, int l) { return &m->layer[l]; }
const float *epm_hf_embed(const epm_hf_model *m) { return m->embed; }
const float *epm_hf_final_norm(const epm_hf_model *m) { return m->final_norm; }
const float *epm_hf_lm_head(const epm_hf_model *m) { return m->lm_head; }
int64_t epm_hf_bytes_loaded(const epm_hf_model *m) { return m->bytes; }

static epm_status add_shard(epm_hf_model *m, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", m->dir, file);
    for (int i = 0; i < m->nshards; i++)
        if (!strcmp(m->shards[i]->path, path))
            return EPM_OK;
    epm_safetensors **n = epm_realloc(m->shards, (size_t)(m->nshards + 1) * sizeof *n);
    if (!n)
        return EPM_ERR_NOMEM;
    m->shards = n;
    EPM_CHECK(epm_st_open(path, &m->shards[m->nshards]));
    m->nshards++;
    return EPM_OK;
}

static epm_status open_index(epm_hf_model *m, const char *index_path)
{
    char *text;
    size_t n;
    EPM_CHECK(epm_read_file(index_path, (size_t)256 << 20, &text, &n));
    json_error_t err;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
    epm_free(text);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", index_path, err.line, err.text);
    epm_status st = EPM_OK;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: field 'weight_map' is missing or not an object", index_path);
    } else {
        const char *key;
        json_t *v;
        json_object_foreach(map, key, v)
        {
            const char *f = json_is_string(v) ? json_string_value(v) : NULL;
            if (!f || strchr(f, '/') || !strcmp(f, "..")) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: weight_map['%s'] is not a file name in the model folder",
                              index_path, key);
                break;
            }
            if ((st = add_shard(m, f)) != EPM_OK)
                break;
        }
    }
    json_decref(root);
    return st;
}

epm_status epm_hf_open(const char *dir, epm_hf_model **out)
{
    *out = NULL;
    epm_hf_model *m = epm_calloc(1, sizeof *m);
    if (!m)
        return EPM_ERR_NOMEM;
    epm_status st;
    char path[4096];
    char *text = NULL;
    size_t n;
    m->dir = epm_strdup(dir);
    if (!m->dir) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    EPM_CHECK_GOTO(epm_read_file(path, 1 << 20, &text, &n), st, fail);
    st = epm_hf_config_parse(text, n, path, &m->cfg);
    epm_free(text);
    if (st != EPM_OK)
        goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        EPM_CHECK_GOTO(open_index(m, path), st, fail);
    } else {
        EPM_CHECK_GOTO(add_shard(m, "model.safetensors"), st, fail);
    }
    m->layer = epm_calloc((size_t)m->cfg.layers, sizeof *m->layer);
    if (!m->layer) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    *out = m;
    return EPM_OK;
fail:
    epm_hf_close(m);
    return st;
}

void epm_hf_close(epm_hf_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->nshards; i++)
        epm_st_close(m->shards[i]);
    for (int i = 0; i < m->nowned; i++)
        epm_free(m->owned[i]);
    if (m->layer)
        for (int l = 0; l < m->cfg.layers; l++) {
            epm_free((void *)m->layer[l].gate);
            epm_free((void *)m->layer[l].up);
            epm_free((void *)m->layer[l].down);
        }
    epm_free(m->layer);
    epm_free(m->owned);
    epm_free(m->shards);
    epm_hf_config_free(&m->cfg);
    epm_free(m->dir);
    epm_free(m);
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else { /* subnormal: normalise */
            e = 127 - 15 + 1;
            while (!(m & 1024)) {
                m <<= 1;
                e--;
            }
            u = s | (e << 23) | ((m & 1023) << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e - 15 + 127) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Finds name in the shards, checks its shape, returns float32 data. */
static epm_status tensor(epm_hf_model *m, const char *name, int64_t d0, int64_t d1, const float **out)
{
    const epm_st_tensor *t = NULL;
    const epm_safetensors *in = NULL;
    for (int i = 0; i < m->nshards && !t; i++) {
        t = epm_st_find(m->shards[i], name);
        in = m->shards[i];
    }
    if (!t)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is missing from the checkpoint", m->dir, name);
    int nd = d1 > 0 ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' has shape [%lld%s%lld], config.json implies [%lld%s%lld]",
                        in->path, name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                        t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)d0, nd > 1 ? ", " : "",
                        nd > 1 ? (long long)d1 : 0LL);
    m->bytes += (int64_t)(t->end - t->begin);
    if (t->dtype == EPM_DTYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        return EPM_OK;
    }
    if (t->dtype != EPM_DTYPE_F32 && t->dtype != EPM_DTYPE_BF16 && t->dtype != EPM_DTYPE_F16)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (F32, BF16, F16 supported)", in->path,
                        name, epm_dtype_name(t->dtype));
    float *f = epm_malloc((size_t)t->numel * sizeof *f);
    if (!f)
        return EPM_ERR_NOMEM;
    const uint8_t *src = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        if (t->dtype == EPM_DTYPE_F32) {
            memcpy(&f[i], src + 4 * i, 4);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            f[i] = t->dtype == EPM_DTYPE_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
    }
    if (m->nowned == m->capowned) {
        int cap = m->capowned ? 2 * m->capowned : 64;
        float **n = epm_realloc(m->owned, (size_t)cap * sizeof *n);
        if (!n) {
            epm_free(f);
            return EPM_ERR_NOMEM;
        }
        m->owned = n;
        m->capowned = cap;
    }
    m->owned[m->nowned++] = f;
    *out = f;
    return EPM_OK;
}

#define T(field, d0, d1, ...)                                          \
    do {                                                               \
        snprintf(name, sizeof name, __VA_ARGS__);                      \
        EPM_CHECK(tensor(m, name, (d0), (d1), &(field)));              \
    } while (0)

static epm_status load_layer(epm_hf_model *m, int l, const unsigned char *want)
{
    const epm_hf_config *c = &m->cfg;
    epm_hf_layer *w = &m->layer[l];
    char name[256];
    int H = c->hidden, q = c->heads * c->head_dim, kv = c->kv_heads * c->head_dim;
    const char *p = "model.layers";
    T(w->in_norm, H, 0, "%s.%d.input_layernorm.weight", p, l);
    T(w->post_norm, H, 0, "%s.%d.post_attention_layernorm.weight", p, l);
    T(w->wq, q, H, "%s.%d.self_attn.q_proj.weight", p, l);
    T(w->wk, kv, H, "%s.%d.self_attn.k_proj.weight", p, l);
    T(w->wv, kv, H, "%s.%d.self_attn.v_proj.weight", p, l);
    T(w->wo, H, q, "%s.%d.self_attn.o_proj.weight", p, l);
    if (c->qkv_bias) {
        T(w->bq, q, 0, "%s.%d.self_attn.q_proj.bias", p, l);
        T(w->bk, kv, 0, "%s.%d.self_attn.k_proj.bias", p, l);
        T(w->bv, kv, 0, "%s.%d.self_attn.v_proj.bias", p, l);
    }
    if (c->qk_norm) {
        T(w->q_norm, q, 0, "%s.%d.self_attn.q_norm.weight", p, l);
        T(w->k_norm, kv, 0, "%s.%d.self_attn.k_norm.weight", p, l);
    }
    if (!c->sparse[l]) {
        T(w->mlp_gate, c->dense_ffn, H, "%s.%d.mlp.gate_proj.weight", p, l);
        T(w->mlp_up, c->dense_ffn, H, "%s.%d.mlp.up_proj.weight", p, l);
        T(w->mlp_down, H, c->dense_ffn, "%s.%d.mlp.down_proj.weight", p, l);
        return EPM_OK;
    }
    int mix = c->arch == EPM_ARCH_MIXTRAL;
    const char *moe = mix ? "block_sparse_moe" : "mlp";
    T(w->router, c->experts, H, "%s.%d.%s.gate.weight", p, l, moe);
    if (c->arch == EPM_ARCH_QWEN2MOE && c->shared_ffn > 0) {
        T(w->sh_gate, c->shared_ffn, H, "%s.%d.mlp.shared_expert.gate_proj.weight", p, l);
        T(w->sh_up, c->shared_ffn, H, "%s.%d.mlp.shared_expert.up_proj.weight", p, l);
        T(w->sh_down, H, c->shared_ffn, "%s.%d.mlp.shared_expert.down_proj.weight", p, l);
        T(w->sh_router, 1, H, "%s.%d.mlp.shared_expert_gate.weight", p, l);
    }
    w->gate = epm_calloc((size_t)c->experts, sizeof *w->gate);
    w->up = epm_calloc((size_t)c->experts, sizeof *w->up);
    w->down = epm_calloc((size_t)c->experts, sizeof *w->down);
    if (!w->gate || !w->up || !w->down)
        return EPM_ERR_NOMEM;
    int F = c->moe_ffn;
    for (int e = 0; e < c->experts; e++) {
        if (want && !want[(size_t)l * (size_t)c->experts + (size_t)e])
            continue;
        T(w->gate[e], F, H, "%s.%d.%s.experts.%d.%s.weight", p, l, moe, e, mix ? "w1" : "gate_proj");
        T(w->up[e], F, H, "%s.%d.%s.experts.%d.%s.weight", p, l, moe, e, mix ? "w3" : "up_proj");
        T(w->down[e], H, F, "%s.%d.%s.experts.%d.%s.weight", p, l, moe, e, mix ? "w2" : "down_proj");
    }
    return EPM_OK;
}

epm_status epm_hf_load(epm_hf_model *m, const unsigned char *want)
{
    const epm_hf_config *c = &m->cfg;
    char name[256];
    T(m->embed, c->vocab, c->hidden, "model.embed_tokens.weight");
    T(m->final_norm, c->hidden, 0, "model.norm.weight");
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else
        T(m->lm_head, c->vocab, c->hidden, "lm_head.weight");
    for (int l = 0; l < c->layers; l++)
        EPM_CHECK(load_layer(m, l, want));
    return EPM_OK;
}
