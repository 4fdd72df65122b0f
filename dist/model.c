/* Opening a checkpoint and loading its weights as float32 (weight matrices
 * may stay bf16, routed experts FP8: epm_model_set_expert_dtype,
 * epm_model_set_dense_dtype). Opening checks every tensor
 * the config implies (headers only); loading reads the dense weights and only
 * the experts a rank asks for, so that a rank's I/O follows its placement. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "half.h"
#include "model_internal.h"

struct epm_model {
    char *dir;
    epm_model_config cfg;
    epm_shards *sh;
    epm_model_dense dense;
    int dense_loaded;
    epm_model_mlp *experts; /* [layers * experts]; gate NULL = not loaded */
    int experts_loaded;     /* any expert yet: their dtype is fixed from then on */
    int keep_bf16;          /* routed experts stay bf16 (every one of them is BF16, or FP8, in the checkpoint) */
    int keep_fp8;           /* routed experts stay FP8 (every one of them is FP8 in the checkpoint) */
    int keep_dense16;       /* so do the dense weight matrices (the same rule) */
    int keep_dense8;        /* and those that may stay FP8 stay so (every one of them is FP8) */
    void **owned;           /* converted or aligned copies */
    int nowned, capowned;
    int64_t bytes, expert_bytes;
};

/* One tensor the config implies: its name, shape, and where its pointer
 * goes once loaded: a float32 one (dst), a weight matrix (wt, which records
 * its dtype), or an MLP weight's (mlp), whose dtype the MLP records. */
typedef struct spec {
    char name[192];
    int ndim;
    int64_t shape[2];
    const float **dst;
    epm_weight *wt;
    const void **mlp;
    const float **scale; /* an MLP weight's FP8 scales, when held FP8 */
    int fp8ok;           /* may be held FP8: an MLP's, or an attention projection's but kv_b's (whose
                            slices MLA's absorption reads) */
} spec;

/* Up to this many tensors per layer besides the routed experts. */
enum { MAX_LAYER_SPECS = 24 };

static spec *vadd(spec *s, int *n, int64_t d0, int64_t d1, const char *fmt, va_list ap) EPM_PRINTF(5, 0);

static spec *vadd(spec *s, int *n, int64_t d0, int64_t d1, const char *fmt, va_list ap)
{
    spec *x = &s[(*n)++];
    memset(x, 0, sizeof *x);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    x->ndim = d1 > 0 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    return x;
}

static void add(spec *s, int *n, const float **dst, int64_t d0, int64_t d1, const char *fmt, ...) EPM_PRINTF(6, 7);

static void add(spec *s, int *n, const float **dst, int64_t d0, int64_t d1, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vadd(s, n, d0, d1, fmt, ap)->dst = dst;
    va_end(ap);
}

/* A weight matrix: float32, or bf16 for dense weights kept so. */
static void add_w(spec *s, int *n, epm_weight *dst, int64_t d0, int64_t d1, const char *fmt, ...) EPM_PRINTF(6, 7);

static void add_w(spec *s, int *n, epm_weight *dst, int64_t d0, int64_t d1, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vadd(s, n, d0, d1, fmt, ap)->wt = dst;
    va_end(ap);
}

/* An attention projection, which may also stay FP8. */
static void add_w8(spec *s, int *n, epm_weight *dst, int64_t d0, int64_t d1, const char *fmt, ...) EPM_PRINTF(6, 7);

static void add_w8(spec *s, int *n, epm_weight *dst, int64_t d0, int64_t d1, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    spec *x = vadd(s, n, d0, d1, fmt, ap);
    va_end(ap);
    x->wt = dst;
    x->fp8ok = 1;
}

/* An MLP weight (gate, up or down): float32, or bf16 when kept so. */
static void add_mlp(spec *s, int *n, const void **dst, const float **scale, int64_t d0, int64_t d1,
                    const char *fmt, ...) EPM_PRINTF(7, 8);

static void add_mlp(spec *s, int *n, const void **dst, const float **scale, int64_t d0, int64_t d1,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    spec *x = vadd(s, n, d0, d1, fmt, ap);
    va_end(ap);
    x->mlp = dst;
    x->scale = scale;
    x->fp8ok = 1;
}

/* Multi-head latent attention's projections (DeepSeek-V3). */
static int mla_specs(const epm_model_config *c, int l, epm_model_layer *w, spec *s)
{
    int n = 0;
    int64_t H = c->hidden_size, nh = c->num_heads, qk = c->qk_nope_dim + c->qk_rope_dim, QL = c->q_lora_rank,
            KL = c->kv_lora_rank;
#define L "model.layers.%d.%s"
    if (QL) {
        add_w8(s, &n, &w->q_a, QL, H, L, l, "self_attn.q_a_proj.weight");
        add(s, &n, &w->q_a_norm, QL, 0, L, l, "self_attn.q_a_layernorm.weight");
        add_w8(s, &n, &w->q_b, nh * qk, QL, L, l, "self_attn.q_b_proj.weight");
        if (c->qkv_bias)
            add(s, &n, &w->q_a_bias, QL, 0, L, l, "self_attn.q_a_proj.bias");
    } else {
        add_w8(s, &n, &w->q, nh * qk, H, L, l, "self_attn.q_proj.weight");
    }
    add_w8(s, &n, &w->kv_a, KL + c->qk_rope_dim, H, L, l, "self_attn.kv_a_proj_with_mqa.weight");
    if (c->qkv_bias)
        add(s, &n, &w->kv_a_bias, KL + c->qk_rope_dim, 0, L, l, "self_attn.kv_a_proj_with_mqa.bias");
    add(s, &n, &w->kv_a_norm, KL, 0, L, l, "self_attn.kv_a_layernorm.weight");
    add_w(s, &n, &w->kv_b, nh * (c->qk_nope_dim + c->v_head_dim), KL, L, l, "self_attn.kv_b_proj.weight");
    add_w8(s, &n, &w->o, H, nh * c->v_head_dim, L, l, "self_attn.o_proj.weight");
#undef L
    return n;
}

static int layer_specs(const epm_model_config *c, int l, epm_model_layer *w, spec *s)
{
    int n = 0;
    int64_t H = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
#define L "model.layers.%d.%s"
    add(s, &n, &w->input_norm, H, 0, L, l, "input_layernorm.weight");
    add(s, &n, &w->post_attn_norm, H, 0, L, l, "post_attention_layernorm.weight");
    if (c->mla) {
        n += mla_specs(c, l, w, s + n);
    } else {
        add_w8(s, &n, &w->q, q, H, L, l, "self_attn.q_proj.weight");
        add_w8(s, &n, &w->k, kv, H, L, l, "self_attn.k_proj.weight");
        add_w8(s, &n, &w->v, kv, H, L, l, "self_attn.v_proj.weight");
        add_w8(s, &n, &w->o, H, q, L, l, "self_attn.o_proj.weight");
    }
    if (c->qkv_bias && !c->mla) {
        add(s, &n, &w->q_bias, q, 0, L, l, "self_attn.q_proj.bias");
        add(s, &n, &w->k_bias, kv, 0, L, l, "self_attn.k_proj.bias");
        add(s, &n, &w->v_bias, kv, 0, L, l, "self_attn.v_proj.bias");
    }
    if (c->o_bias)
        add(s, &n, &w->o_bias, H, 0, L, l, "self_attn.o_proj.bias");
    if (c->qk_norm != EPM_QK_NORM_NONE) {
        int whole = c->qk_norm == EPM_QK_NORM_WHOLE;
        add(s, &n, &w->q_norm, whole ? q : c->head_dim, 0, L, l, "self_attn.q_norm.weight");
        add(s, &n, &w->k_norm, whole ? kv : c->head_dim, 0, L, l, "self_attn.k_norm.weight");
    }
    w->is_moe = c->moe_layer[l];
    if (!w->is_moe) {
        int64_t F = c->dense_ffn;
        w->mlp.ffn = c->dense_ffn;
        add_mlp(s, &n, &w->mlp.gate, &w->mlp.scale[0], F, H, L, l, "mlp.gate_proj.weight");
        add_mlp(s, &n, &w->mlp.up, &w->mlp.scale[1], F, H, L, l, "mlp.up_proj.weight");
        add_mlp(s, &n, &w->mlp.down, &w->mlp.scale[2], H, F, L, l, "mlp.down_proj.weight");
        return n;
    }
    add(s, &n, &w->router, c->num_experts, H, L, l,
        c->arch == EPM_MODEL_MIXTRAL ? "block_sparse_moe.gate.weight" : "mlp.gate.weight");
    if (c->router_sigmoid)
        add(s, &n, &w->router_bias, c->num_experts, 0, L, l, "mlp.gate.e_score_correction_bias");
    if (c->shared_ffn > 0) { /* Qwen2-MoE's one, gated; DeepSeek's n_shared_experts, ungated */
        int64_t S = c->shared_ffn;
        const char *sh = c->arch == EPM_MODEL_QWEN2MOE ? "mlp.shared_expert" : "mlp.shared_experts";
        w->shared.ffn = c->shared_ffn;
        add_mlp(s, &n, &w->shared.gate, &w->shared.scale[0], S, H, "model.layers.%d.%s.gate_proj.weight", l, sh);
        add_mlp(s, &n, &w->shared.up, &w->shared.scale[1], S, H, "model.layers.%d.%s.up_proj.weight", l, sh);
        add_mlp(s, &n, &w->shared.down, &w->shared.scale[2], H, S, "model.layers.%d.%s.down_proj.weight", l, sh);
        if (c->arch == EPM_MODEL_QWEN2MOE)
            add(s, &n, &w->shared_gate, 1, H, L, l, "mlp.shared_expert_gate.weight");
    }
    return n;
#undef L
}

static int expert_specs(const epm_model_config *c, int l, int e, epm_model_mlp *w, spec *s)
{
    int n = 0, mix = c->arch == EPM_MODEL_MIXTRAL;
    int64_t H = c->hidden_size, F = c->moe_ffn;
    const char *blk = mix ? "block_sparse_moe" : "mlp";
#define E "model.layers.%d.%s.experts.%d.%s"
    memset(w, 0, sizeof *w);
    w->ffn = c->moe_ffn;
    add_mlp(s, &n, &w->gate, &w->scale[0], F, H, E, l, blk, e, mix ? "w1.weight" : "gate_proj.weight");
    add_mlp(s, &n, &w->up, &w->scale[1], F, H, E, l, blk, e, mix ? "w3.weight" : "up_proj.weight");
    add_mlp(s, &n, &w->down, &w->scale[2], H, F, E, l, blk, e, mix ? "w2.weight" : "down_proj.weight");
#undef E
    return n;
}

static int global_specs(const epm_model_config *c, epm_model_dense *d, spec *s)
{
    int n = 0;
    int64_t V = c->vocab_size, H = c->hidden_size;
    add_w(s, &n, &d->embed, V, H, "model.embed_tokens.weight");
    add(s, &n, &d->final_norm, H, 0, "model.norm.weight");
    if (!c->tie_word_embeddings)
        add_w(s, &n, &d->lm_head, V, H, "lm_head.weight");
    return n;
}

/* "d0, d1, ..." of a tensor's shape, for messages. */
static const char *shape_str(const epm_st_tensor *t, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int d = 0, o = 0; d < t->ndim && o < (int)cap; d++)
        o += snprintf(buf + o, cap - (size_t)o, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    return buf;
}

/* An FP8 weight's scales: "<name>_scale_inv" (the name ends in ".weight"),
 * float32 or bf16, one per block of the config's weight_block_size. */
static epm_status fp8_scales(const epm_model *m, const spec *x, const char *path, const epm_st_tensor **out,
                             const char **out_path)
{
    char name[sizeof x->name + 16];
    epm_fp8_scale_name(x->name, name, sizeof name);
    const int *b = m->cfg.fp8_block;
    if (b[0] <= 0)
        return epm_fail(EPM_ERR_FORMAT,
                        "%s: tensor '%s' has dtype F8_E4M3 but config.json has no fp8 quantization_config", path,
                        x->name);
    const char *spath;
    const epm_st_tensor *s = epm_shards_find(m->sh, name, &spath);
    if (!s)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is missing (the F8_E4M3 tensor '%s' needs its scales)",
                        epm_shards_where(m->sh), name, x->name);
    int64_t r = (x->shape[0] + b[0] - 1) / b[0], c = (x->shape[1] + b[1] - 1) / b[1];
    if ((s->dtype != EPM_DTYPE_F32 && s->dtype != EPM_DTYPE_BF16) || s->ndim != 2 || s->shape[0] != r ||
        s->shape[1] != c) {
        char got[96];
        return epm_fail(EPM_ERR_FORMAT,
                        "%s: tensor '%s' is %s [%s], want F32 or BF16 [%lld, %lld] (blocks of [%d, %d] over "
                        "[%lld, %lld])",
                        spath, name, epm_dtype_name(s->dtype), shape_str(s, got, sizeof got), (long long)r, (long long)c, b[0], b[1],
                        (long long)x->shape[0], (long long)x->shape[1]);
    }
    if (out)
        *out = s;
    if (out_path)
        *out_path = spath;
    return EPM_OK;
}

static epm_status check(const epm_model *m, const spec *x, int matrix)
{
    const char *path;
    const epm_st_tensor *t = epm_shards_find(m->sh, x->name, &path);
    if (!t)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is missing (the %s config.json implies it)",
                        epm_shards_where(m->sh), x->name, epm_model_arch_class(m->cfg.arch));
    int fp8 = t->dtype == EPM_DTYPE_F8_E4M3 && matrix && x->ndim == 2;
    if (t->dtype != EPM_DTYPE_F32 && t->dtype != EPM_DTYPE_BF16 && t->dtype != EPM_DTYPE_F16 && !fp8)
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%s: tensor '%s' has dtype %s (F32, BF16 and F16 are supported; F8_E4M3 for weight "
                        "matrices with block scales)",
                        path, x->name, epm_dtype_name(t->dtype));
    if (t->ndim != x->ndim || t->shape[0] != x->shape[0] || (x->ndim == 2 && t->shape[1] != x->shape[1])) {
        char got[96], want[64];
        if (x->ndim == 2)
            snprintf(want, sizeof want, "%lld, %lld", (long long)x->shape[0], (long long)x->shape[1]);
        else
            snprintf(want, sizeof want, "%lld", (long long)x->shape[0]);
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' has shape [%s], config.json implies [%s]", path, x->name,
                        shape_str(t, got, sizeof got), want);
    }
    return fp8 ? fp8_scales(m, x, path, NULL, NULL) : EPM_OK;
}

static epm_status own(epm_model *m, void *f)
{
    if (m->nowned == m->capowned) {
        int cap = m->capowned ? 2 * m->capowned : 64;
        void **n = epm_realloc(m->owned, (size_t)cap * sizeof *n);
        if (!n)
            return EPM_ERR_NOMEM;
        m->owned = n;
        m->capowned = cap;
    }
    m->owned[m->nowned++] = f;
    return EPM_OK;
}

/* Element i of an FP8 weight's scale tensor (F32 or BF16, little-endian). */
static float scale_at(const epm_st_tensor *sc, int64_t i)
{
    const uint8_t *s8 = sc->data;
    if (sc->dtype == EPM_DTYPE_BF16)
        return epm_bf16_to_f32((uint16_t)(s8[2 * i] | (s8[2 * i + 1] << 8)));
    float f;
    memcpy(&f, s8 + 4 * i, 4);
    return f;
}

typedef struct fp8_job {
    const spec *x;
    const char *path, *spath;
    const epm_st_tensor *t, *sc;
    int b0, b1, to16;
    float lut[256];
    void *out;
} fp8_job;

/* Row i of an FP8 matrix dequantised; report: the error is also described
 * (epm_fail), else only returned (the rows run on OpenMP threads). */
static epm_status fp8_row(const fp8_job *J, int64_t i, int report)
{
    const int64_t cols = J->x->shape[1], sc_cols = J->sc->shape[1];
    const uint8_t *q = (const uint8_t *)J->t->data + i * cols;
    const char *name = J->x->name;
    for (int64_t jb = 0; jb < sc_cols; jb++) {
        int64_t j1 = (jb + 1) * J->b1 < cols ? (jb + 1) * J->b1 : cols;
        float scale = scale_at(J->sc, (i / J->b0) * sc_cols + jb);
        if (!isfinite(scale))
            return !report ? EPM_ERR_FORMAT
                           : epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s_scale_inv' element [%lld, %lld] is not finite",
                                      J->spath, name, (long long)(i / J->b0), (long long)jb);
        for (int64_t j = jb * J->b1; j < j1; j++) {
            uint8_t code = q[j];
            if ((code & 0x7f) == 0x7f)
                return !report ? EPM_ERR_FORMAT
                               : epm_fail(EPM_ERR_FORMAT,
                                          "%s: tensor '%s' element [%lld, %lld] is NaN (float8 code 0x%02x)", J->path,
                                          name, (long long)i, (long long)j, code);
            uint16_t v = epm_f32_to_bf16(J->lut[code] * scale);
            if ((v & 0x7f80u) == 0x7f80u) /* a finite scale too large: the product overflows bf16 */
                return !report ? EPM_ERR_FORMAT
                               : epm_fail(EPM_ERR_FORMAT,
                                          "%s: tensor '%s' element [%lld, %lld] (float8 %g) times its scale %g "
                                          "(tensor '%s_scale_inv' element [%lld, %lld]) overflows bfloat16",
                                          J->path, name, (long long)i, (long long)j, (double)J->lut[code],
                                          (double)scale, name, (long long)(i / J->b0), (long long)jb);
            if (!J->out)
                continue;
            if (J->to16)
                ((uint16_t *)J->out)[i * cols + j] = v;
            else
                ((float *)J->out)[i * cols + j] = epm_bf16_to_f32(v);
        }
    }
    return EPM_OK;
}

/* w = e4m3(q) * scale of its block in float32, rounded to bf16, as
 * DeepSeek's weight_dequant and fp8_cast_bf16.py make it: the model an FP8
 * checkpoint stands for is that bf16 one, whether its matrices are held bf16
 * or widened to float32. NaN codes, non-finite scales and products beyond
 * bf16 are errors (the first in row order is named): they would poison every
 * token. Rows in parallel: a rank dequantises gigabytes at load. */
static epm_status fp8_dequant(const epm_model *m, const spec *x, const char *path, const epm_st_tensor *t,
                              const char *spath, const epm_st_tensor *sc, int to16, void *out)
{
    fp8_job J = {x, path, spath, t, sc, m->cfg.fp8_block[0], m->cfg.fp8_block[1], to16, {0}, out};
    for (int b = 0; b < 256; b++)
        J.lut[b] = epm_f8e4m3_to_f32((uint8_t)b);
    const int64_t rows = x->shape[0];
    int64_t bad = rows;
#pragma omp parallel for schedule(static) reduction(min : bad) if (rows * x->shape[1] > (1 << 20))
    for (int64_t i = 0; i < rows; i++)
        if (i < bad && fp8_row(&J, i, 0) != EPM_OK)
            bad = i;
    return bad < rows ? fp8_row(&J, bad, 1) : EPM_OK;
}

/* An FP8 weight held as stored (a routed expert's, or a dense one that may
 * be): its codes and scales checked as dequantisation checks them (which
 * also reads every page of the mapping, at load), the mapping itself, and
 * its scales as float32. */
static epm_status fetch_fp8(epm_model *m, const spec *x, const char *path, const epm_st_tensor *t,
                            const char *spath, const epm_st_tensor *sc)
{
    EPM_CHECK(fp8_dequant(m, x, path, t, spath, sc, 0, NULL));
    float *f = epm_malloc((size_t)sc->numel * sizeof *f);
    if (!f)
        return epm_fail(EPM_ERR_NOMEM, "%s: allocation of %lld scales of tensor '%s_scale_inv' failed", spath,
                        (long long)sc->numel, x->name);
    for (int64_t i = 0; i < sc->numel; i++)
        f[i] = scale_at(sc, i);
    epm_status st = own(m, f);
    if (st != EPM_OK) {
        epm_free(f);
        return st;
    }
    if (x->wt) {
        *x->wt = (epm_weight){t->data, EPM_DTYPE_F8_E4M3, f, {m->cfg.fp8_block[0], m->cfg.fp8_block[1]}};
    } else {
        *x->mlp = t->data;
        *x->scale = f;
    }
    return EPM_OK;
}

/* The data of a checked tensor, into x->dst, x->wt or x->mlp: the mapping
 * itself when it is aligned float32, or aligned bf16 kept as stored (keep16,
 * for a matrix; its pages are read here), or FP8 kept as stored (keep8, for
 * a matrix that may be: fetch_fp8); else a float32 copy (or an aligned bf16
 * one). */
static epm_status fetch(epm_model *m, const spec *x, int keep16, int keep8, int64_t *bytes)
{
    const char *path;
    const epm_st_tensor *t = epm_shards_find(m->sh, x->name, &path);
    *bytes += (int64_t)(t->end - t->begin);
    const void *p = NULL;
    void *copy = NULL;
    const uint8_t *src = t->data;
    size_t n = (size_t)(t->numel ? t->numel : 1);
    int fp8 = t->dtype == EPM_DTYPE_F8_E4M3;
    keep16 = keep16 && (t->dtype == EPM_DTYPE_BF16 || fp8) && (x->wt || x->mlp);
    if (fp8) {
        const epm_st_tensor *sc;
        const char *spath;
        EPM_CHECK(fp8_scales(m, x, path, &sc, &spath));
        *bytes += (int64_t)(sc->end - sc->begin);
        if (keep8 && x->fp8ok)
            return fetch_fp8(m, x, path, t, spath, sc);
        if (!(copy = epm_malloc(n * (keep16 ? 2 : 4))))
            return EPM_ERR_NOMEM;
        epm_status st = fp8_dequant(m, x, path, t, spath, sc, keep16, copy);
        if (st != EPM_OK) {
            epm_free(copy);
            return st;
        }
    } else if (keep16) {
        if (((uintptr_t)t->data & 1) == 0) {
            /* mapped pages are faulted in here, at load, as a copy's would be:
             * else the first forward pass pays for every page of its experts */
            volatile uint8_t sink = 0;
            for (size_t b = 0; b < (size_t)t->numel * 2; b += 4096)
                sink ^= src[b];
            (void)sink;
            p = t->data;
        } else if ((copy = epm_malloc(n * 2))) {
            memcpy(copy, src, (size_t)t->numel * 2);
        }
    } else if (t->dtype == EPM_DTYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        p = t->data;
    } else if ((copy = epm_malloc(n * sizeof(float)))) {
        float *f = copy;
        if (t->dtype == EPM_DTYPE_F32) {
            memcpy(f, src, (size_t)t->numel * 4);
        } else {
            int bf = t->dtype == EPM_DTYPE_BF16;
            for (int64_t i = 0; i < t->numel; i++) {
                uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)); /* safetensors is little-endian */
                f[i] = bf ? epm_bf16_to_f32(h) : epm_f16_to_f32(h);
            }
        }
    }
    if (!p && !copy)
        return EPM_ERR_NOMEM;
    if (copy) {
        epm_status st = own(m, copy);
        if (st != EPM_OK) {
            epm_free(copy);
            return st;
        }
        p = copy;
    }
    if (x->dst) {
        *x->dst = p;
    } else if (x->wt) {
        x->wt->data = p;
        x->wt->dtype = keep16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    } else {
        *x->mlp = p;
    }
    return EPM_OK;
}

static epm_status visit(const spec *s, int n, int layer, int expert, epm_model_tensor_fn fn, void *ctx)
{
    for (int i = 0; i < n; i++) {
        epm_model_tensor_info t = {s[i].name, s[i].ndim, {s[i].shape[0], s[i].shape[1]}, layer, expert,
                                   s[i].wt || s[i].mlp, s[i].fp8ok};
        EPM_CHECK(fn(ctx, &t));
    }
    return EPM_OK;
}

epm_status epm_model_tensors(const epm_model_config *c, epm_model_tensor_fn fn, void *ctx)
{
    spec s[MAX_LAYER_SPECS];
    epm_model_dense d;
    epm_model_layer w;
    epm_model_mlp e;
    EPM_CHECK(visit(s, global_specs(c, &d, s), -1, -1, fn, ctx));
    for (int l = 0; l < c->num_layers; l++) {
        EPM_CHECK(visit(s, layer_specs(c, l, &w, s), l, -1, fn, ctx));
        for (int x = 0; c->moe_layer[l] && x < c->num_experts; x++)
            EPM_CHECK(visit(s, expert_specs(c, l, x, &e, s), l, x, fn, ctx));
    }
    return EPM_OK;
}

static epm_status check_one(void *vm, const epm_model_tensor_info *t)
{
    spec x;
    if (snprintf(x.name, sizeof x.name, "%s", t->name) >= (int)sizeof x.name)
        return epm_fail(EPM_ERR_INTERNAL, "tensor name '%.40s...' longer than %zu", t->name, sizeof x.name - 1);
    x.ndim = t->ndim;
    x.shape[0] = t->shape[0];
    x.shape[1] = t->shape[1];
    return check(vm, &x, t->matrix);
}

epm_status epm_model_open(const char *dir, epm_model **out)
{
    if (!dir || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_open: NULL argument");
    *out = NULL;
    epm_model *m = epm_calloc(1, sizeof *m);
    if (!m)
        return EPM_ERR_NOMEM;
    epm_status st;
    char path[4096];
    if (!(m->dir = epm_strdup(dir))) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) {
        st = epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", dir);
        goto fail;
    }
    EPM_CHECK_GOTO(epm_model_config_load(path, &m->cfg), st, fail);
    EPM_CHECK_GOTO(epm_shards_open(dir, &m->sh), st, fail);
    /* Qwen2-MoE configs from before transformers 5 do not say; their models all have the biases. */
    if (!m->cfg.qkv_bias_stated)
        m->cfg.qkv_bias = epm_shards_find(m->sh, "model.layers.0.self_attn.q_proj.bias", NULL) != NULL;
    EPM_CHECK_GOTO(epm_model_tensors(&m->cfg, check_one, m), st, fail);
    size_t slots = (size_t)m->cfg.num_layers * (size_t)m->cfg.num_experts;
    m->experts = epm_calloc(slots, sizeof *m->experts);
    m->dense.layer = epm_calloc((size_t)m->cfg.num_layers, sizeof *m->dense.layer);
    if (!m->experts || !m->dense.layer) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    m->dense.num_layers = m->cfg.num_layers;
    *out = m;
    return EPM_OK;
fail:
    epm_model_close(m);
    return st;
}

void epm_model_close(epm_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->nowned; i++)
        epm_free(m->owned[i]);
    epm_free(m->owned);
    epm_free(m->experts);
    epm_free(m->dense.layer);
    epm_shards_close(m->sh);
    epm_model_config_clear(&m->cfg);
    epm_free(m->dir);
    epm_free(m);
}

const epm_model_config *epm_model_get_config(const epm_model *m) { return m ? &m->cfg : NULL; }

epm_status epm_model_load_dense(epm_model *m, const epm_model_dense **out)
{
    if (!m)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_load_dense: NULL model");
    if (!m->dense_loaded) {
        const epm_model_config *c = &m->cfg;
        spec s[MAX_LAYER_SPECS];
        int n = global_specs(c, &m->dense, s);
        for (int i = 0; i < n; i++)
            EPM_CHECK(fetch(m, &s[i], m->keep_dense16, 0, &m->bytes));
        if (c->tie_word_embeddings)
            m->dense.lm_head = m->dense.embed;
        for (int l = 0; l < c->num_layers; l++) {
            epm_model_layer *w = &m->dense.layer[l];
            memset(w, 0, sizeof *w);
            n = layer_specs(c, l, w, s);
            /* optional: a Mixture-of-Depths router, when the checkpoint was trained with one */
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.mod_router.weight", l);
            const epm_st_tensor *mr = epm_shards_find(m->sh, name, NULL);
            if (mr)
                add(s, &n, &w->mod_router, mr->ndim == 2 ? 1 : c->hidden_size, mr->ndim == 2 ? c->hidden_size : 0,
                    "%s", name);
            if (mr)
                EPM_CHECK(check(m, &s[n - 1], 0));
            for (int i = 0; i < n; i++)
                EPM_CHECK(fetch(m, &s[i], m->keep_dense16, m->keep_dense8, &m->bytes));
            epm_dtype md = m->keep_dense8 ? EPM_DTYPE_F8_E4M3 : m->keep_dense16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
            w->mlp.dtype = w->shared.dtype = md;
            for (int k = 0; k < 2 && m->keep_dense8; k++)
                w->mlp.block[k] = w->shared.block[k] = c->fp8_block[k];
        }
        m->dense_loaded = 1;
    }
    if (out)
        *out = &m->dense;
    return EPM_OK;
}

/* The arguments of a call about experts experts[0..n) of MoE layer `layer`
 * (fn: the call's name), the experts' numbers aside. */
static epm_status experts_args(const epm_model *m, const char *fn, int layer, const int *experts, int n)
{
    if (!m || (n > 0 && !experts) || n < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: NULL argument or negative count", fn);
    if (layer < 0 || layer >= m->cfg.num_layers || !m->cfg.moe_layer[layer])
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: layer %d is not a MoE layer of this %d-layer model", m->dir, layer,
                        m->cfg.num_layers);
    return EPM_OK;
}

/* EPM_OK where e is an expert of the model, else the error that says so */
static epm_status expert_of(const epm_model *m, int layer, int e)
{
    if (e >= 0 && e < m->cfg.num_experts)
        return EPM_OK;
    return epm_fail(EPM_ERR_INVALID_ARG, "%s: expert %d of layer %d does not exist (%d experts)", m->dir, e, layer,
                    m->cfg.num_experts);
}

epm_status epm_model_load_experts(epm_model *m, int layer, const int *experts, int n, epm_model_mlp *out)
{
    EPM_CHECK(experts_args(m, "epm_model_load_experts", layer, experts, n));
    const epm_model_config *c = &m->cfg;
    for (int i = 0; i < n; i++) {
        int e = experts[i];
        EPM_CHECK(expert_of(m, layer, e));
        epm_model_mlp *slot = &m->experts[(size_t)layer * (size_t)c->num_experts + (size_t)e];
        if (!slot->gate) {
            epm_model_mlp w;
            spec s[3];
            int ns = expert_specs(c, layer, e, &w, s);
            int64_t b = 0;
            m->experts_loaded = 1;
            for (int j = 0; j < ns; j++)
                EPM_CHECK(fetch(m, &s[j], m->keep_bf16, m->keep_fp8, &b));
            w.dtype = m->keep_fp8 ? EPM_DTYPE_F8_E4M3 : m->keep_bf16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
            if (m->keep_fp8)
                memcpy(w.block, c->fp8_block, sizeof w.block);
            m->bytes += b;
            m->expert_bytes += b;
            *slot = w;
        }
        if (out)
            out[i] = *slot;
    }
    return EPM_OK;
}

epm_status epm_model_prefetch_experts(const epm_model *m, int layer, const int *experts, int n)
{
    EPM_CHECK(experts_args(m, "epm_model_prefetch_experts", layer, experts, n));
    for (int i = 0; i < n; i++) {
        EPM_CHECK(expert_of(m, layer, experts[i]));
        epm_model_mlp w;
        spec s[3];
        const int ns = expert_specs(&m->cfg, layer, experts[i], &w, s);
        for (int j = 0; j < ns; j++) {
            const epm_st_tensor *t = epm_shards_find(m->sh, s[j].name, NULL), *sc = NULL;
            if (t) /* (one missing is the load's to report) */
                epm_st_willneed(t->data, (size_t)(t->end - t->begin));
            if (t && t->dtype == EPM_DTYPE_F8_E4M3 && fp8_scales(m, &s[j], "", &sc, NULL) == EPM_OK)
                epm_st_willneed(sc->data, (size_t)(sc->end - sc->begin));
        }
    }
    epm_clear_error(); /* (a scale's absence is the load's to report) */
    return EPM_OK;
}

int64_t epm_model_expert_stored_bytes(const epm_model *m)
{
    if (!m)
        return 0;
    const epm_model_config *c = &m->cfg;
    for (int l = 0; l < c->num_layers; l++) { /* (every routed expert has the first one's shape and dtypes) */
        if (!c->moe_layer[l] || c->num_experts < 1)
            continue;
        epm_model_mlp w;
        spec s[3];
        const int ns = expert_specs(c, l, 0, &w, s);
        int64_t b = 0;
        for (int j = 0; j < ns; j++) {
            const epm_st_tensor *t = epm_shards_find(m->sh, s[j].name, NULL), *sc = NULL;
            if (!t)
                return -1;
            b += (int64_t)(t->end - t->begin);
            if (t->dtype == EPM_DTYPE_F8_E4M3) {
                if (fp8_scales(m, &s[j], "", &sc, NULL) != EPM_OK)
                    return -1;
                b += (int64_t)(sc->end - sc->begin);
            }
        }
        return b;
    }
    return 0;
}

epm_status epm_model_set_expert_dtype(epm_model *m, epm_dtype want, epm_dtype *got)
{
    if (!m)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_set_expert_dtype: NULL model");
    if (want != EPM_DTYPE_F32 && want != EPM_DTYPE_BF16 && want != EPM_DTYPE_F8_E4M3)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: routed experts can be held as F32, BF16 or F8_E4M3, not %s",
                        m->dir, epm_dtype_name(want));
    if (m->experts_loaded)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: the experts' dtype is fixed once one is loaded", m->dir);
    int keep = want != EPM_DTYPE_F32, all8 = want == EPM_DTYPE_F8_E4M3;
    const epm_model_config *c = &m->cfg;
    for (int l = 0; l < c->num_layers && keep; l++) {
        if (!c->moe_layer[l])
            continue;
        for (int e = 0; e < c->num_experts && keep; e++) {
            epm_model_mlp w;
            spec s[3];
            int ns = expert_specs(c, l, e, &w, s);
            for (int j = 0; j < ns && keep; j++) {
                const epm_st_tensor *t = epm_shards_find(m->sh, s[j].name, NULL);
                keep = t && (t->dtype == EPM_DTYPE_BF16 || t->dtype == EPM_DTYPE_F8_E4M3);
                all8 = all8 && t && t->dtype == EPM_DTYPE_F8_E4M3;
            }
        }
    }
    m->keep_fp8 = keep && all8;
    m->keep_bf16 = keep && !m->keep_fp8;
    if (got)
        *got = m->keep_fp8 ? EPM_DTYPE_F8_E4M3 : keep ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    return EPM_OK;
}

/* Every matrix the config implies outside the routed experts is BF16 (or
 * FP8, dequantised to bf16); fp8: every one that may stay FP8 is FP8. */
static int dense_all(const epm_model *m, int fp8)
{
    const epm_model_config *c = &m->cfg;
    spec s[MAX_LAYER_SPECS];
    epm_model_dense d;
    epm_model_layer w;
    int n = global_specs(c, &d, s);
    for (int l = -1; l < c->num_layers; l++) {
        if (l >= 0)
            n = layer_specs(c, l, &w, s);
        for (int i = 0; i < n; i++) {
            const epm_st_tensor *t = epm_shards_find(m->sh, s[i].name, NULL);
            if (fp8 ? s[i].fp8ok && (!t || t->dtype != EPM_DTYPE_F8_E4M3)
                    : (s[i].wt || s[i].mlp) && (!t || (t->dtype != EPM_DTYPE_BF16 && t->dtype != EPM_DTYPE_F8_E4M3)))
                return 0;
        }
    }
    return 1;
}

epm_status epm_model_set_dense_dtype(epm_model *m, epm_dtype want, epm_dtype *got)
{
    if (!m)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_model_set_dense_dtype: NULL model");
    if (want != EPM_DTYPE_F32 && want != EPM_DTYPE_BF16 && want != EPM_DTYPE_F8_E4M3)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: dense weights can be held as F32, BF16 or F8_E4M3, not %s", m->dir,
                        epm_dtype_name(want));
    if (m->dense_loaded)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: the dense weights' dtype is fixed once they are loaded", m->dir);
    m->keep_dense16 = want != EPM_DTYPE_F32 && dense_all(m, 0);
    m->keep_dense8 = m->keep_dense16 && want == EPM_DTYPE_F8_E4M3 && dense_all(m, 1);
    if (got)
        *got = m->keep_dense8 ? EPM_DTYPE_F8_E4M3 : m->keep_dense16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    return EPM_OK;
}

/* Frees f if this model owns it (a copy or FP8 scales): 1; else 0 (mapped
 * data, the file's). */
static int disown(epm_model *m, const void *f)
{
    for (int i = m->nowned - 1; f && i >= 0; i--)
        if (m->owned[i] == f) {
            epm_free(m->owned[i]);
            m->owned[i] = m->owned[--m->nowned];
            return 1;
        }
    return 0;
}

epm_status epm_model_drop_experts(epm_model *m, int layer, const int *experts, int n)
{
    EPM_CHECK(experts_args(m, "epm_model_drop_experts", layer, experts, n));
    const epm_model_config *c = &m->cfg;
    for (int i = 0; i < n; i++) /* (all before any is dropped) */
        EPM_CHECK(expert_of(m, layer, experts[i]));
    for (int i = 0; i < n; i++) {
        epm_model_mlp *slot = &m->experts[(size_t)layer * (size_t)c->num_experts + (size_t)experts[i]];
        if (!slot->gate)
            continue;
        const void *held[6] = {slot->gate, slot->up, slot->down, slot->scale[0], slot->scale[1], slot->scale[2]};
        const size_t bytes = (size_t)slot->ffn * (size_t)c->hidden_size *
                             (slot->dtype == EPM_DTYPE_F8_E4M3 ? 1 : slot->dtype == EPM_DTYPE_BF16 ? 2 : 4);
        for (int j = 0; j < 6; j++)
            if (!disown(m, held[j]) && j < 3) /* mapped: its pages leave the resident set */
                epm_st_unneeded(held[j], bytes);
        memset(slot, 0, sizeof *slot);
    }
    return EPM_OK;
}

const epm_model_mlp *epm_model_expert(const epm_model *m, int layer, int expert)
{
    if (!m || layer < 0 || layer >= m->cfg.num_layers || expert < 0 || expert >= m->cfg.num_experts)
        return NULL;
    const epm_model_mlp *w = &m->experts[(size_t)layer * (size_t)m->cfg.num_experts + (size_t)expert];
    return w->gate ? w : NULL;
}

int64_t epm_model_bytes_loaded(const epm_model *m) { return m ? m->bytes : 0; }
int64_t epm_model_expert_bytes_loaded(const epm_model *m) { return m ? m->expert_bytes : 0; }
int epm_model_files(const epm_model *m) { return m ? epm_shards_files(m->sh) : 0; }
int64_t epm_model_file_bytes(const epm_model *m) { return m ? epm_shards_file_bytes(m->sh) : 0; }

/* ---- experts between ranks (online rebalancing takes a gained expert from
 * a rank that holds it, as vLLM and SGLang do, rather than from the file) ---- */

/* The packed layout: gate, up, down at the held dtype's width, then for FP8
 * their scales (float32), each part at a multiple of 4 bytes. */
typedef struct packed_parts {
    size_t at[6], len[6];
    size_t total;
} packed_parts;

static void packed_layout(const epm_model *m, packed_parts *pp)
{
    const epm_model_config *c = &m->cfg;
    const size_t H = (size_t)c->hidden_size, F = (size_t)c->moe_ffn;
    const size_t es = m->keep_fp8 ? 1 : m->keep_bf16 ? 2 : 4;
    const size_t rows[3] = {F, F, H}, cols[3] = {H, H, F};
    size_t at = 0;
    for (int j = 0; j < 6; j++) {
        const int k = j % 3;
        size_t len = 0;
        if (j < 3)
            len = rows[k] * cols[k] * es;
        else if (m->keep_fp8)
            len = ((rows[k] + (size_t)c->fp8_block[0] - 1) / (size_t)c->fp8_block[0]) *
                  ((cols[k] + (size_t)c->fp8_block[1] - 1) / (size_t)c->fp8_block[1]) * sizeof(float);
        pp->at[j] = at;
        pp->len[j] = len;
        at += (len + 3) & ~(size_t)3;
    }
    pp->total = at;
}

int64_t epm_model_expert_packed_bytes(const epm_model *m)
{
    if (!m)
        return 0;
    packed_parts pp;
    packed_layout(m, &pp);
    return (int64_t)pp.total;
}

epm_status epm_model_pack_expert(const epm_model *m, int layer, int expert, void *dst, int64_t cap)
{
    EPM_CHECK(experts_args(m, "epm_model_pack_expert", layer, &expert, 1));
    EPM_CHECK(expert_of(m, layer, expert));
    const epm_model_mlp *w = epm_model_expert(m, layer, expert);
    packed_parts pp;
    packed_layout(m, &pp);
    if (!w)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: expert %d of layer %d is not loaded here, so it cannot be sent",
                        m->dir, expert, layer);
    if (!dst || cap < (int64_t)pp.total)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: packing expert %d of layer %d takes %zu bytes, not %lld", m->dir,
                        expert, layer, pp.total, (long long)cap);
    const void *part[6] = {w->gate, w->up, w->down, w->scale[0], w->scale[1], w->scale[2]};
    memset(dst, 0, pp.total); /* (the padding too: the bytes sent are all defined) */
    for (int j = 0; j < 6; j++)
        if (pp.len[j])
            memcpy((char *)dst + pp.at[j], part[j], pp.len[j]);
    return EPM_OK;
}

epm_status epm_model_unpack_expert(epm_model *m, int layer, int expert, const void *src, int64_t bytes)
{
    EPM_CHECK(experts_args(m, "epm_model_unpack_expert", layer, &expert, 1));
    EPM_CHECK(expert_of(m, layer, expert));
    packed_parts pp;
    packed_layout(m, &pp);
    if (!src || bytes != (int64_t)pp.total)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: expert %d of layer %d arrived as %lld bytes, and it packs to %zu",
                        m->dir, expert, layer, (long long)bytes, pp.total);
    epm_model_mlp *slot = &m->experts[(size_t)layer * (size_t)m->cfg.num_experts + (size_t)expert];
    if (slot->gate) /* (held already: as loading it twice reads it once) */
        return EPM_OK;
    epm_model_mlp w;
    memset(&w, 0, sizeof w);
    void *copy[6] = {0}; /* (each owned as it is made: a failure disowns, which frees, those before) */
    epm_status st = EPM_OK;
    for (int j = 0; j < 6 && st == EPM_OK; j++) {
        if (!pp.len[j])
            continue;
        void *p = epm_malloc(pp.len[j]);
        if (!p)
            st = epm_fail(EPM_ERR_NOMEM, "%s: allocation of %zu bytes for expert %d of layer %d failed", m->dir,
                          pp.len[j], expert, layer);
        else if ((st = own(m, p)) != EPM_OK)
            epm_free(p);
        else
            copy[j] = memcpy(p, (const char *)src + pp.at[j], pp.len[j]);
    }
    if (st != EPM_OK) {
        for (int j = 0; j < 6; j++)
            disown(m, copy[j]);
        return st;
    }
    w.gate = copy[0], w.up = copy[1], w.down = copy[2];
    w.scale[0] = copy[3], w.scale[1] = copy[4], w.scale[2] = copy[5];
    w.ffn = m->cfg.moe_ffn;
    w.dtype = m->keep_fp8 ? EPM_DTYPE_F8_E4M3 : m->keep_bf16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    if (m->keep_fp8)
        memcpy(w.block, m->cfg.fp8_block, sizeof w.block);
    m->experts_loaded = 1;
    *slot = w;
    return EPM_OK;
}
