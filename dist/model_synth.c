/* Synthetic checkpoints: any MoE shape, random weights, the Hub's layout.
 * Tensors are generated while they are written, a chunk at a time, so that a
 * checkpoint of Mixtral-8x7B's layer shape needs no more memory than a chunk. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "half.h"
#include "model_internal.h"

enum { CHUNK = 1 << 16 };

void epm_model_synth_opts_init(epm_model_synth_opts *o)
{
    memset(o, 0, sizeof *o);
    o->arch = EPM_MODEL_MIXTRAL;
    o->hidden = 64;
    o->layers = 4;
    o->experts = 8;
    o->k = 2;
    o->ffn = 128;
    o->heads = 4;
    o->kv_heads = 2;
    o->vocab = 256;
    o->shared_ffn = -1; /* 4 * ffn */
    o->dense_ffn = -1;  /* 4 * ffn */
    o->dtype = EPM_DTYPE_F32;
    o->fp8_block[0] = o->fp8_block[1] = 128;
    o->seed = 1;
    o->shards = 1;
    o->router_scale = 8.0;
    o->q_lora = o->kv_lora = o->qk_rope = o->v_head = o->n_group = o->topk_group = o->first_dense = -1;
    o->routed_scaling = -1;
}

static epm_status range(const char *opt, long v, long lo, long hi)
{
    if (v < lo || v > hi)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: %s = %ld is outside [%ld, %ld]", opt, v, lo, hi);
    return EPM_OK;
}

/* DeepSeek-V3's or V2's attention and router shape, the unset parts derived. */
static epm_status deepseek_config(const epm_model_synth_opts *o, epm_model_config *c)
{
    int nope = o->head_dim ? o->head_dim : o->hidden / o->heads;
    c->mla = 1;
    c->q_lora_rank = o->q_lora >= 0 ? o->q_lora : o->hidden / 2;
    c->kv_lora_rank = o->kv_lora >= 0 ? o->kv_lora : o->hidden / 2;
    c->qk_nope_dim = nope;
    c->qk_rope_dim = o->qk_rope >= 0 ? o->qk_rope : (nope / 4) * 2 > 2 ? (nope / 4) * 2 : 2;
    c->v_head_dim = o->v_head >= 0 ? o->v_head : nope;
    c->rope_interleave = 1;
    /* what the loader accepts (config.c), so that a synthesised model loads */
    EPM_CHECK(range("head-dim (qk_nope_head_dim)", nope, 0, 1024));
    EPM_CHECK(range("q-lora-rank", c->q_lora_rank, 0, 1L << 16));
    EPM_CHECK(range("kv-lora-rank", c->kv_lora_rank, 1, 1L << 16));
    EPM_CHECK(range("qk-rope-dim", c->qk_rope_dim, 2, 1024));
    EPM_CHECK(range("v-head-dim", c->v_head_dim, 1, 1024));
    if (c->qk_rope_dim % 2)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: qk-rope-dim = %d must be even", c->qk_rope_dim);
    int qk = nope + c->qk_rope_dim;
    c->head_dim = qk > c->v_head_dim ? qk : c->v_head_dim;
    c->head_dim += c->head_dim % 2;
    c->num_kv_heads = c->num_heads;
    int E = o->experts, g = E % 4 == 0 && E >= 8 ? 4 : 1;
    c->n_group = o->n_group > 0 ? o->n_group : g;
    EPM_CHECK(range("groups", c->n_group, 1, 1024));
    c->topk_group = o->topk_group > 0 ? o->topk_group : c->n_group > 1 ? c->n_group / 2 : 1;
    if (E % c->n_group || (c->n_group > 1 && E / c->n_group < 2) || c->topk_group > c->n_group ||
        (int64_t)c->topk_group * (E / c->n_group) < o->k)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: %d groups, %d kept, do not fit %d experts top-%d (groups of "
                        "2 or more that leave k to choose from)", c->n_group, c->topk_group, E, o->k);
    int v3 = o->arch == EPM_MODEL_DEEPSEEKV3;
    /* V3: sigmoid, renormalised, x2.5; V2 (DeepSeek-V2 itself): softmax,
     * group_limited_greedy where there are groups, not renormalised, scaled */
    c->router_sigmoid = v3;
    c->group_max = !v3 && c->n_group > 1;
    c->norm_topk_prob = v3;
    c->routed_scaling = o->routed_scaling > 0 ? (float)o->routed_scaling : v3 ? 2.5f : 1.0f;
    c->first_k_dense = o->first_dense >= 0 ? o->first_dense : o->layers > 1;
    EPM_CHECK(range("first-dense", c->first_k_dense, 0, o->layers - 1));
    c->shared_ffn = o->shared_ffn < 0 ? (v3 ? 1 : 2) * o->ffn : o->shared_ffn;
    if (c->shared_ffn % o->ffn || c->shared_ffn / o->ffn > 64)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: shared-ffn = %d is not a whole number (at most 64) of "
                        "experts of %d", c->shared_ffn, o->ffn);
    return EPM_OK;
}


static epm_status make_config(const epm_model_synth_opts *o, epm_model_config *c)
{
    memset(c, 0, sizeof *c);
    if ((unsigned)o->arch >= EPM_MODEL_ARCH_COUNT)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: arch %d is not an architecture", (int)o->arch);
    EPM_CHECK(range("hidden", o->hidden, 2, 1L << 16));
    EPM_CHECK(range("layers", o->layers, 1, 4096));
    EPM_CHECK(range("experts", o->experts, 1, 1L << 16));
    EPM_CHECK(range("k", o->k, 1, o->experts));
    EPM_CHECK(range("ffn", o->ffn, 1, 1L << 20));
    EPM_CHECK(range("heads", o->heads, 1, o->hidden / 2));
    EPM_CHECK(range("kv-heads", o->kv_heads, 1, o->heads));
    EPM_CHECK(range("head-dim", o->head_dim, 0, 1024));
    EPM_CHECK(range("vocab", o->vocab, 1, 1L << 24));
    EPM_CHECK(range("shards", o->shards, 1, 99999));
    if (o->heads % o->kv_heads)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: kv-heads = %d does not divide heads = %d", o->kv_heads,
                        o->heads);
    int ds = o->arch == EPM_MODEL_DEEPSEEKV3 || o->arch == EPM_MODEL_DEEPSEEKV2;
    if (o->head_dim == 0 && (o->hidden % o->heads || (!ds && (o->hidden / o->heads) % 2)))
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: hidden = %d over heads = %d must give an even head size",
                        o->hidden, o->heads);
    if (o->head_dim % 2 && !ds)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: head_dim = %d must be even for RoPE", o->head_dim);
    if (o->dtype != EPM_DTYPE_F32 && o->dtype != EPM_DTYPE_BF16 && o->dtype != EPM_DTYPE_F16 &&
        o->dtype != EPM_DTYPE_F8_E4M3)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: dtype %s is not F32, BF16, F16 or F8_E4M3",
                        epm_dtype_name(o->dtype));
    if (o->dtype == EPM_DTYPE_F8_E4M3) {
        EPM_CHECK(range("fp8 block rows", o->fp8_block[0], 1, 65536));
        EPM_CHECK(range("fp8 block columns", o->fp8_block[1], 1, 65536));
    }
    if (!(o->router_scale > 0 && o->router_scale < 1e6))
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: router_scale = %g must be positive", o->router_scale);
    int qwen = o->arch == EPM_MODEL_QWEN2MOE || o->arch == EPM_MODEL_QWEN3MOE;
    if (!qwen && o->n_mlp_only > 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: dense MLP layers (mlp_only) exist only in qwen2moe and "
                        "qwen3moe");
    c->arch = o->arch;
    c->vocab_size = o->vocab;
    c->hidden_size = o->hidden;
    c->num_layers = o->layers;
    c->num_heads = o->heads;
    c->num_kv_heads = o->kv_heads;
    c->head_dim = o->head_dim ? o->head_dim : o->hidden / o->heads;
    c->num_experts = o->experts;
    c->top_k = o->k;
    c->moe_ffn = o->ffn;
    c->dense_ffn = o->ffn;
    c->norm_topk_prob = o->arch == EPM_MODEL_MIXTRAL;
    c->qkv_bias_stated = 1;
    c->tie_word_embeddings = o->tie_embeddings != 0;
    c->rms_norm_eps = 1e-5f;
    c->rope_theta = o->arch == EPM_MODEL_MIXTRAL ? 1e6 : 1e4;
    c->dtype = o->dtype == EPM_DTYPE_F8_E4M3 ? EPM_DTYPE_BF16 : o->dtype;
    if (o->dtype == EPM_DTYPE_F8_E4M3) {
        c->fp8_block[0] = o->fp8_block[0];
        c->fp8_block[1] = o->fp8_block[1];
    }
    c->decoder_sparse_step = 1;
    if (o->yarn_factor > 0) {
        if (!(o->yarn_factor < 1e6) || o->yarn_original_max < 1 || o->yarn_factor * o->yarn_original_max > 1 << 30)
            return epm_fail(EPM_ERR_INVALID_ARG, "model synth: YaRN factor %g over an original context of %d",
                            o->yarn_factor, o->yarn_original_max);
        c->yarn_factor = o->yarn_factor;
        c->yarn_original_max = o->yarn_original_max;
        c->yarn_beta_fast = 32;
        c->yarn_beta_slow = 1;
        c->yarn_mscale = o->yarn_mscale;
        c->yarn_mscale_all_dim = o->yarn_mscale_all_dim;
        c->yarn_attn_factor = -1;
        c->yarn_truncate = 1;
        c->max_position_embeddings = (int)(o->yarn_factor * o->yarn_original_max);
    }
    if (qwen || ds) {
        c->dense_ffn = o->dense_ffn < 0 ? 4 * o->ffn : o->dense_ffn;
        EPM_CHECK(range("dense-ffn", c->dense_ffn, 1, 1L << 20));
        c->rms_norm_eps = 1e-6f;
    }
    if (o->arch == EPM_MODEL_QWEN2MOE) {
        c->shared_ffn = o->shared_ffn < 0 ? 4 * o->ffn : o->shared_ffn;
        EPM_CHECK(range("shared-ffn", c->shared_ffn, 0, 1L << 20));
        c->qkv_bias = 1;
    }
    if (o->arch == EPM_MODEL_QWEN3MOE) {
        /* as the released Qwen3-MoE checkpoints: renormalised top-k, no biases */
        c->norm_topk_prob = 1;
        c->qk_norm = EPM_QK_NORM_PER_HEAD;
    }
    if (o->arch == EPM_MODEL_OLMOE)
        c->qk_norm = EPM_QK_NORM_WHOLE;
    if (ds) {
        c->rms_norm_eps = 1e-6f;
        EPM_CHECK(deepseek_config(o, c));
    }
    c->moe_layer = epm_malloc((size_t)c->num_layers);
    if (!c->moe_layer)
        return EPM_ERR_NOMEM;
    memset(c->moe_layer, 1, (size_t)c->num_layers);
    memset(c->moe_layer, 0, (size_t)c->first_k_dense);
    for (int i = 0; i < o->n_mlp_only; i++) {
        if (o->mlp_only[i] < 0 || o->mlp_only[i] >= o->layers) {
            epm_model_config_clear(c);
            return epm_fail(EPM_ERR_INVALID_ARG, "model synth: mlp-only layer %d is outside [0, %d)", o->mlp_only[i],
                            o->layers);
        }
        c->moe_layer[o->mlp_only[i]] = 0;
    }
    if (o->n_mlp_only > 0 && epm_model_config_moe_layers(c) == 0) {
        epm_model_config_clear(c);
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: mlp-only layers cover all %d layers: no MoE layer is left",
                        o->layers);
    }
    return EPM_OK;
}

/* ---- the tensor list, with a shard for each ---- */

typedef struct item {
    char *name;
    int ndim;
    int64_t shape[2];
    epm_dtype dtype;
    int scales_of; /* >= 0: the weight_scale_inv of that FP8 item, derived from its values */
    size_t bytes;
    int shard;
} item;

typedef struct plan {
    item *it;
    int n, cap;
    epm_dtype dtype;  /* the checkpoint's: F8_E4M3 puts the layers' matrices in FP8, the rest in BF16 */
    int block[2];
    uint64_t total;
} plan;

static epm_status add_item(plan *p, const char *name, int ndim, int64_t d0, int64_t d1, epm_dtype dt, int scales_of);

static epm_status collect(void *vp, const epm_model_tensor_info *t)
{
    plan *p = vp;
    int fp8 = p->dtype == EPM_DTYPE_F8_E4M3 && t->matrix && t->layer >= 0;
    epm_dtype dt = fp8 ? EPM_DTYPE_F8_E4M3 : p->dtype == EPM_DTYPE_F8_E4M3 ? EPM_DTYPE_BF16 : p->dtype;
    EPM_CHECK(add_item(p, t->name, t->ndim, t->shape[0], t->shape[1], dt, -1));
    if (!fp8)
        return EPM_OK;
    char name[256];
    epm_fp8_scale_name(t->name, name, sizeof name);
    return add_item(p, name, 2, (t->shape[0] + p->block[0] - 1) / p->block[0],
                    (t->shape[1] + p->block[1] - 1) / p->block[1], EPM_DTYPE_F32, p->n - 1);
}

static epm_status add_item(plan *p, const char *name, int ndim, int64_t d0, int64_t d1, epm_dtype dt, int scales_of)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 256;
        item *n = epm_realloc(p->it, (size_t)cap * sizeof *n);
        if (!n)
            return EPM_ERR_NOMEM;
        p->it = n;
        p->cap = cap;
    }
    item *x = &p->it[p->n];
    memset(x, 0, sizeof *x);
    if (!(x->name = epm_strdup(name)))
        return EPM_ERR_NOMEM;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->dtype = dt;
    x->scales_of = scales_of;
    size_t numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    if (!epm_mul_ok(numel, epm_dtype_size(dt), &x->bytes))
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: tensor '%s' is too large", name);
    p->total += x->bytes;
    p->n++;
    return EPM_OK;
}

static void plan_free(plan *p)
{
    for (int i = 0; i < p->n; i++)
        epm_free(p->it[i].name);
    epm_free(p->it);
}

/* Consecutive tensors per shard, balanced by bytes, none empty. */
static epm_status assign_shards(plan *p, int shards)
{
    if (shards > p->n)
        return epm_fail(EPM_ERR_INVALID_ARG, "model synth: %d shards for a model of %d tensors", shards, p->n);
    int s = 0, in_s = 0;
    uint64_t cum = 0;
    for (int i = 0; i < p->n; i++) {
        int must_move = p->n - i == shards - s;
        int full = (double)cum >= (double)(s + 1) * (double)p->total / shards;
        if (in_s > 0 && s < shards - 1 && (must_move || full)) {
            s++;
            in_s = 0;
        }
        p->it[i].shard = s;
        in_s++;
        cum += p->it[i].bytes;
    }
    return EPM_OK;
}

/* ---- values ---- */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Uniform values with the spread of each kind's usual initialisation; the
 * router's is multiplied so that routing is decisive, not uniform. Norm
 * weights sit near one (not exactly, so a loader that skips them is caught). */
static void value_law(const item *x, double router_scale, double *center, double *half)
{
    double fan_in = x->ndim == 2 ? (double)x->shape[1] : 1.0;
    *center = 0;
    if (ends_with(x->name, "norm.weight")) {
        *center = 1.0;
        *half = 0.1;
    } else if (ends_with(x->name, "e_score_correction_bias")) {
        /* positive, so that every kept expert's choice score is above the 0
         * that transformers gives a dropped group's (DeepSeek's code: -inf) */
        *center = 0.055;
        *half = 0.045;
    } else if (ends_with(x->name, ".bias")) {
        *half = 0.1;
    } else if (!strcmp(x->name, "model.embed_tokens.weight")) {
        *half = sqrt(3.0);
    } else {
        *half = sqrt(3.0 / fan_in);
        if (ends_with(x->name, "block_sparse_moe.gate.weight") || ends_with(x->name, "mlp.gate.weight"))
            *half *= router_scale;
    }
}

typedef struct shard_ctx {
    const plan *p;
    const epm_model_synth_opts *o;
    int shard;
    const char *path;
    const char *header;
    size_t hlen;
} shard_ctx;

/* The next value of a tensor's stream: uniform in center +- half. */
static float draw(uint64_t *rng, double center, double half)
{
    return (float)(center + half * (2.0 * epm_rand_unit(rng) - 1.0));
}

/* An FP8 weight (or, scales_only, its weight_scale_inv), a block row at a
 * time: each block's scale is its largest magnitude over 448, e4m3's largest
 * value, so that every value of it is in range. */
static epm_status write_fp8(const shard_ctx *c, const item *w, int scales_only, void *f)
{
    double center, half;
    value_law(w, c->o->router_scale, &center, &half);
    uint64_t rng = c->o->seed ^ name_hash(w->name);
    const int64_t rows = w->shape[0], cols = w->shape[1], b0 = c->p->block[0], b1 = c->p->block[1];
    const int64_t nb = (cols + b1 - 1) / b1;
    float *v = epm_malloc((size_t)(b0 < rows ? b0 : rows) * (size_t)cols * sizeof *v);
    float *sc = epm_malloc((size_t)nb * sizeof *sc);
    uint8_t *q = epm_malloc((size_t)(b0 < rows ? b0 : rows) * (size_t)cols);
    epm_status st = v && sc && q ? EPM_OK : EPM_ERR_NOMEM;
    for (int64_t r0 = 0; r0 < rows && st == EPM_OK; r0 += b0) {
        int64_t nr = rows - r0 < b0 ? rows - r0 : b0;
        for (int64_t i = 0; i < nr * cols; i++)
            v[i] = draw(&rng, center, half);
        for (int64_t b = 0; b < nb; b++) {
            float amax = 0;
            for (int64_t i = 0; i < nr; i++)
                for (int64_t j = b * b1; j < cols && j < (b + 1) * b1; j++)
                    amax = fabsf(v[i * cols + j]) > amax ? fabsf(v[i * cols + j]) : amax;
            sc[b] = amax > 0 ? amax / 448.0f : 1.0f;
        }
        if (scales_only) {
            st = epm_file_write(f, c->path, sc, (size_t)nb * sizeof *sc); /* little-endian hosts only, as elsewhere */
            continue;
        }
        for (int64_t i = 0; i < nr; i++)
            for (int64_t j = 0; j < cols; j++)
                q[i * cols + j] = epm_f32_to_f8e4m3(v[i * cols + j] / sc[j / b1]);
        st = epm_file_write(f, c->path, q, (size_t)(nr * cols));
    }
    epm_free(v);
    epm_free(sc);
    epm_free(q);
    return st;
}

static epm_status write_tensor(const shard_ctx *c, const item *x, void *f, uint8_t *buf)
{
    if (x->dtype == EPM_DTYPE_F8_E4M3)
        return write_fp8(c, x, 0, f);
    if (x->scales_of >= 0)
        return write_fp8(c, &c->p->it[x->scales_of], 1, f);
    double center, half;
    value_law(x, c->o->router_scale, &center, &half);
    uint64_t rng = c->o->seed ^ name_hash(x->name);
    size_t elem = epm_dtype_size(x->dtype), numel = x->bytes / elem;
    for (size_t done = 0; done < numel;) {
        size_t n = numel - done < CHUNK ? numel - done : CHUNK;
        for (size_t i = 0; i < n; i++) {
            float v = draw(&rng, center, half);
            if (x->dtype == EPM_DTYPE_F32) {
                memcpy(buf + 4 * i, &v, 4);
            } else {
                uint16_t h = x->dtype == EPM_DTYPE_BF16 ? epm_f32_to_bf16(v) : epm_f32_to_f16(v);
                buf[2 * i] = (uint8_t)h;
                buf[2 * i + 1] = (uint8_t)(h >> 8);
            }
        }
        EPM_CHECK(epm_file_write(f, c->path, buf, n * elem));
        done += n;
    }
    return EPM_OK;
}

static epm_status produce_shard(void *vc, void *f)
{
    const shard_ctx *c = vc;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)c->hlen >> (8 * i));
    EPM_CHECK(epm_file_write(f, c->path, len8, 8));
    EPM_CHECK(epm_file_write(f, c->path, c->header, c->hlen));
    uint8_t *buf = epm_malloc((size_t)CHUNK * 4);
    if (!buf)
        return EPM_ERR_NOMEM;
    epm_status st = EPM_OK;
    for (int i = 0; i < c->p->n && st == EPM_OK; i++)
        if (c->p->it[i].shard == c->shard)
            st = write_tensor(c, &c->p->it[i], f, buf);
    epm_free(buf);
    return st;
}

/* The header of one shard, padded with spaces to 8 bytes so that the data
 * (and every float32 tensor in it) is aligned, as the reference writer does. */
static epm_status shard_header(const plan *p, int shard, char **out, size_t *len)
{
    json_t *root = json_object();
    int ok = root && json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt")) == 0;
    uint64_t off = 0;
    for (int i = 0; ok && i < p->n; i++) {
        const item *x = &p->it[i];
        if (x->shard != shard)
            continue;
        json_t *shape = x->ndim == 2 ? json_pack("[I,I]", (json_int_t)x->shape[0], (json_int_t)x->shape[1])
                                     : json_pack("[I]", (json_int_t)x->shape[0]);
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", epm_dtype_name(x->dtype), "shape", shape, "data_offsets",
                              (json_int_t)off, (json_int_t)(off + x->bytes));
        ok = e && json_object_set_new(root, x->name, e) == 0;
        off += x->bytes;
    }
    char *s = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!s)
        return epm_fail(EPM_ERR_NOMEM, "model synth: out of memory building a header");
    size_t n = strlen(s), padded = (n + 7) & ~(size_t)7;
    char *h = epm_malloc(padded);
    if (h) {
        memcpy(h, s, n);
        memset(h + n, ' ', padded - n);
    }
    free(s);
    if (!h)
        return EPM_ERR_NOMEM;
    *out = h;
    *len = padded;
    return EPM_OK;
}

static void shard_name(char *buf, size_t cap, int shard, int shards)
{
    if (shards == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", shard + 1, shards);
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

static epm_status write_index(const plan *p, int shards, const char *path)
{
    json_t *map = json_object();
    int ok = map != NULL;
    char file[64];
    for (int i = 0; ok && i < p->n; i++) {
        shard_name(file, sizeof file, p->it[i].shard, shards);
        ok = json_object_set_new(map, p->it[i].name, json_string(file)) == 0;
    }
    json_t *root = ok ? json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)p->total, "weight_map", map)
                      : NULL;
    if (!root)
        json_decref(map);
    char *s = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!s)
        return epm_fail(EPM_ERR_NOMEM, "model synth: out of memory building the index");
    text_ctx c = {s, path};
    epm_status st = epm_write_atomic(path, put_text, &c);
    free(s);
    return st;
}

static epm_status path_in(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", dir);
    return EPM_OK;
}

/* Files of a staging directory, removed with it (a killed run's, or ours on failure). */
static void remove_stage(const char *stage)
{
    DIR *d = opendir(stage);
    if (!d)
        return;
    char path[4096];
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", stage, e->d_name) < (int)sizeof path)
            unlink(path);
    closedir(d);
    rmdir(stage);
}

/* Staging directories of synth runs that were killed (their process is gone). */
static void remove_dead_stages(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char path[4096];
    for (struct dirent *e; (e = readdir(d));) {
        char *end;
        if (strncmp(e->d_name, ".synth.", 7))
            continue;
        long pid = strtol(e->d_name + 7, &end, 10);
        if (*end || pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
            remove_stage(path);
    }
    closedir(d);
}

/* Every file is written into DIR/.synth.PID first and renamed into DIR only
 * when all exist, config.json last: a run killed while writing (gigabytes,
 * minutes) leaves DIR's old model whole, not a mix of old and new files. */
epm_status epm_model_synth(const epm_model_synth_opts *o, const char *dir)
{
    if (!o || !dir)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_synth: NULL argument");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return epm_fail(EPM_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    remove_dead_stages(dir);
    char stage[4096];
    if (snprintf(stage, sizeof stage, "%s/.synth.%ld", dir, (long)getpid()) >= (int)sizeof stage)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", dir);
    if (mkdir(stage, 0777) != 0 && errno != EEXIST)
        return epm_fail(EPM_ERR_IO, "%s: cannot create: %s", stage, strerror(errno));
    epm_model_config cfg;
    epm_status st = make_config(o, &cfg);
    if (st != EPM_OK) {
        remove_stage(stage);
        return st;
    }
    plan p = {0};
    p.dtype = o->dtype;
    p.block[0] = o->fp8_block[0];
    p.block[1] = o->fp8_block[1];
    char path[4096], file[64];
    st = epm_model_tensors(&cfg, collect, &p);
    if (st == EPM_OK)
        st = assign_shards(&p, o->shards);
    for (int s = 0; st == EPM_OK && s < o->shards; s++) {
        shard_name(file, sizeof file, s, o->shards);
        char *hdr = NULL;
        size_t hlen = 0;
        st = path_in(path, sizeof path, stage, file);
        if (st == EPM_OK)
            st = shard_header(&p, s, &hdr, &hlen);
        shard_ctx c = {&p, o, s, path, hdr, hlen};
        if (st == EPM_OK)
            st = epm_write_atomic(path, produce_shard, &c);
        epm_free(hdr);
    }
    if (st == EPM_OK && o->shards > 1) {
        st = path_in(path, sizeof path, stage, "model.safetensors.index.json");
        if (st == EPM_OK)
            st = write_index(&p, o->shards, path);
    }
    if (st == EPM_OK)
        st = path_in(path, sizeof path, stage, "config.json");
    if (st == EPM_OK)
        st = epm_model_config_save(&cfg, path);
    /* everything is written: move it in, config.json last */
    char to[4096];
    for (int s = 0; st == EPM_OK && s <= o->shards + 1; s++) {
        const char *name = file;
        if (s < o->shards)
            shard_name(file, sizeof file, s, o->shards);
        else if (s == o->shards) {
            if (o->shards == 1)
                continue;
            name = "model.safetensors.index.json";
        } else {
            /* a stale file of the other layout would change what a loader opens */
            st = path_in(to, sizeof to, dir, o->shards > 1 ? "model.safetensors" : "model.safetensors.index.json");
            if (st == EPM_OK && unlink(to) != 0 && errno != ENOENT)
                st = epm_fail(EPM_ERR_IO, "%s: cannot remove the stale file: %s", to, strerror(errno));
            name = "config.json";
        }
        if (st == EPM_OK)
            st = path_in(path, sizeof path, stage, name);
        if (st == EPM_OK)
            st = path_in(to, sizeof to, dir, name);
        if (st == EPM_OK && rename(path, to) != 0)
            st = epm_fail(EPM_ERR_IO, "%s: cannot rename to %s: %s", path, to, strerror(errno));
    }
    remove_stage(stage);
    plan_free(&p);
    epm_model_config_clear(&cfg);
    return st;
}
