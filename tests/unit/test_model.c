/* Checkpoint loading: the fixtures open and hand out the bytes in their
 * files; a rank that asks for some experts reads only those; sharded,
 * bf16 and f16 checkpoints written by synth load as the same weights; a
 * missing tensor, a missing shard and a truncated file are each named. */
#include "test_util.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"
#include "epmoe/model.h"
#include "half.h"
#include "safetensors.h"

static const char *fixture(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%.400s/%s", tu_fixtures(), name);
    return buf;
}

/* The float32 values of a tensor as stored in a fixture file. */
static const float *raw(const epm_safetensors *st, const char *name)
{
    const epm_st_tensor *t = epm_st_find(st, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, EPM_DTYPE_F32);
    return t->data;
}

static void test_model_fixtures_open(void **state)
{
    (void)state;
    const char *names[] = {"mixtral-tiny", "qwen2moe-tiny", "olmoe-tiny", "qwen3moe-tiny"};
    for (int i = 0; i < 4; i++) {
        char file[1024];
        snprintf(file, sizeof file, "%s/model.safetensors", fixture(names[i]));
        epm_safetensors *st;
        assert_int_equal(epm_st_open(file, &st), EPM_OK);
        epm_model *m;
        assert_int_equal(epm_model_open(fixture(names[i]), &m), EPM_OK);
        const epm_model_config *c = epm_model_get_config(m);
        assert_int_equal(epm_model_bytes_loaded(m), 0); /* opening reads headers only */
        assert_int_equal(epm_model_files(m), 1);
        const epm_model_dense *d;
        assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
        assert_int_equal(d->num_layers, 4);
        assert_int_equal(d->embed.dtype, EPM_DTYPE_F32);
        assert_memory_equal(d->embed.data, raw(st, "model.embed_tokens.weight"), 256 * 64 * 4);
        assert_memory_equal(d->lm_head.data, raw(st, "lm_head.weight"), 256 * 64 * 4);
        assert_memory_equal(d->final_norm, raw(st, "model.norm.weight"), 64 * 4);
        for (int l = 0; l < 4; l++) {
            const epm_model_layer *w = &d->layer[l];
            char n[128];
            snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
            int kv = c->num_kv_heads * c->head_dim; /* 32, and 64 for Qwen3-MoE's wider heads */
            assert_memory_equal(w->k.data, raw(st, n), (size_t)kv * 64 * 4);
            snprintf(n, sizeof n, "model.layers.%d.%s.gate.weight", l,
                     c->arch == EPM_MODEL_MIXTRAL ? "block_sparse_moe" : "mlp");
            assert_memory_equal(w->router, raw(st, n), 8 * 64 * 4);
            assert_int_equal(w->is_moe, 1);
            assert_null(w->mlp.gate);
            assert_null(w->o_bias);
            if (c->arch == EPM_MODEL_QWEN2MOE) {
                snprintf(n, sizeof n, "model.layers.%d.self_attn.v_proj.bias", l);
                assert_memory_equal(w->v_bias, raw(st, n), 32 * 4);
                snprintf(n, sizeof n, "model.layers.%d.mlp.shared_expert_gate.weight", l);
                assert_memory_equal(w->shared_gate, raw(st, n), 64 * 4);
                snprintf(n, sizeof n, "model.layers.%d.mlp.shared_expert.down_proj.weight", l);
                assert_memory_equal(w->shared.down, raw(st, n), 64 * 96 * 4);
                assert_int_equal(w->shared.ffn, 96);
            } else {
                assert_null(w->q_bias);
                assert_null(w->shared.gate);
            }
            if (c->arch == EPM_MODEL_OLMOE) {
                snprintf(n, sizeof n, "model.layers.%d.self_attn.q_norm.weight", l);
                assert_memory_equal(w->q_norm, raw(st, n), 64 * 4);
                snprintf(n, sizeof n, "model.layers.%d.self_attn.k_norm.weight", l);
                assert_memory_equal(w->k_norm, raw(st, n), 32 * 4);
            } else if (c->arch == EPM_MODEL_QWEN3MOE) {
                /* one weight for every head */
                snprintf(n, sizeof n, "model.layers.%d.self_attn.q_norm.weight", l);
                assert_memory_equal(w->q_norm, raw(st, n), 32 * 4);
                snprintf(n, sizeof n, "model.layers.%d.self_attn.k_norm.weight", l);
                assert_memory_equal(w->k_norm, raw(st, n), 32 * 4);
            } else {
                assert_null(w->q_norm);
            }
            assert_null(epm_model_expert(m, l, 0));
        }
        assert_int_equal(epm_model_expert_bytes_loaded(m), 0);
        /* every dense byte of the file, and nothing else, was read */
        int64_t expert_bytes = 4LL * 8 * 3 * 64 * c->moe_ffn * 4;
        assert_int_equal(epm_model_bytes_loaded(m), (int64_t)st->data_size - expert_bytes);
        epm_model_close(m);
        epm_st_close(st);
    }
}

static void test_model_expert_subset(void **state)
{
    (void)state;
    epm_safetensors *st;
    char file[1024];
    snprintf(file, sizeof file, "%s/model.safetensors", fixture("mixtral-tiny"));
    assert_int_equal(epm_st_open(file, &st), EPM_OK);
    epm_model *m;
    assert_int_equal(epm_model_open(fixture("mixtral-tiny"), &m), EPM_OK);
    assert_int_equal(epm_model_load_dense(m, NULL), EPM_OK);
    int64_t dense = epm_model_bytes_loaded(m);
    int want[2] = {5, 2};
    epm_model_mlp got[2];
    assert_int_equal(epm_model_load_experts(m, 1, want, 2, got), EPM_OK);
    const int64_t one = 3LL * 128 * 64 * 4;
    assert_int_equal(epm_model_expert_bytes_loaded(m), 2 * one);
    assert_int_equal(epm_model_bytes_loaded(m), dense + 2 * one);
    assert_memory_equal(got[0].gate, raw(st, "model.layers.1.block_sparse_moe.experts.5.w1.weight"), 128 * 64 * 4);
    assert_memory_equal(got[0].up, raw(st, "model.layers.1.block_sparse_moe.experts.5.w3.weight"), 128 * 64 * 4);
    assert_memory_equal(got[1].down, raw(st, "model.layers.1.block_sparse_moe.experts.2.w2.weight"), 128 * 64 * 4);
    assert_int_equal(got[1].ffn, 128);
    assert_non_null(epm_model_expert(m, 1, 5));
    assert_non_null(epm_model_expert(m, 1, 2));
    assert_null(epm_model_expert(m, 1, 3));
    assert_null(epm_model_expert(m, 0, 5));
    /* a second request reads nothing more */
    assert_int_equal(epm_model_load_experts(m, 1, want, 2, NULL), EPM_OK);
    assert_int_equal(epm_model_expert_bytes_loaded(m), 2 * one);
    int bad[1] = {8};
    assert_int_equal(epm_model_load_experts(m, 1, bad, 1, NULL), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_model_load_experts(m, 4, want, 1, NULL), EPM_ERR_INVALID_ARG);
    epm_model_close(m);
    epm_st_close(st);
}

static void synth(const char *dir, epm_model_arch arch, epm_dtype dtype, int shards, int tie)
{
    epm_model_synth_opts o;
    epm_model_synth_opts_init(&o);
    o.arch = arch;
    o.hidden = 32;
    o.layers = 3;
    o.experts = 6;
    o.k = 2;
    o.ffn = 24;
    o.heads = 4;
    o.kv_heads = 2;
    o.vocab = 50;
    o.shared_ffn = 40;
    o.dense_ffn = 36;
    static const int only[1] = {1};
    if (arch == EPM_MODEL_QWEN2MOE || arch == EPM_MODEL_QWEN3MOE) {
        o.mlp_only = only;
        o.n_mlp_only = 1;
    }
    if (arch == EPM_MODEL_QWEN3MOE)
        o.head_dim = 16; /* heads * head_dim = 64, twice the hidden size, as in Qwen3-30B-A3B */
    if (arch == EPM_MODEL_DEEPSEEKV3 || arch == EPM_MODEL_DEEPSEEKV2)
        o.shared_ffn = 24; /* one shared expert of the routed width */
    o.dtype = dtype;
    o.shards = shards;
    o.seed = 42;
    o.tie_embeddings = tie;
    epm_status st = epm_model_synth(&o, dir);
    if (st != EPM_OK)
        fail_msg("synth %s: %s", dir, epm_last_error());
}

typedef struct loaded {
    epm_model *m;
    const epm_model_dense *d;
} loaded;

static loaded load_all(const char *dir)
{
    loaded x;
    epm_status st = epm_model_open(dir, &x.m);
    if (st != EPM_OK)
        fail_msg("open %s: %s", dir, epm_last_error());
    assert_int_equal(epm_model_load_dense(x.m, &x.d), EPM_OK);
    const epm_model_config *c = epm_model_get_config(x.m);
    int all[64];
    for (int e = 0; e < c->num_experts; e++)
        all[e] = e;
    for (int l = 0; l < c->num_layers; l++)
        if (c->moe_layer[l])
            assert_int_equal(epm_model_load_experts(x.m, l, all, c->num_experts, NULL), EPM_OK);
    return x;
}

/* A weight held in float32 (the loads these tests compare widen everything). */
static const float *f32w(epm_weight w)
{
    assert_int_equal(w.dtype, EPM_DTYPE_F32);
    return w.data;
}

/* Compares every weight of two loaded models: exactly (tol < 0), or each
 * value of b within tol relative of a (plus half the smallest f16 step). */
static int64_t compare_arrays(const float *a, const float *b, int64_t n, double tol)
{
    if (!a || !b) {
        assert_true(a == b);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        if (tol < 0)
            assert_true(a[i] == b[i]);
        else if (fabs((double)a[i] - b[i]) > tol * fabs((double)a[i]) + 0x1p-24) /* f16 subnormals */
            fail_msg("value %lld: %.9g vs %.9g", (long long)i, a[i], b[i]);
    }
    return n;
}

static int64_t compare_models(loaded a, loaded b, double tol)
{
    const epm_model_config *c = epm_model_get_config(a.m);
    int64_t H = c->hidden_size, V = c->vocab_size, q = (int64_t)c->num_heads * c->head_dim,
            kv = (int64_t)c->num_kv_heads * c->head_dim, n = 0;
    n += compare_arrays(f32w(a.d->embed), f32w(b.d->embed), V * H, tol);
    n += compare_arrays(f32w(a.d->lm_head), f32w(b.d->lm_head), V * H, tol);
    n += compare_arrays(a.d->final_norm, b.d->final_norm, H, tol);
    for (int l = 0; l < c->num_layers; l++) {
        const epm_model_layer *x = &a.d->layer[l], *y = &b.d->layer[l];
        n += compare_arrays(x->input_norm, y->input_norm, H, tol);
        n += compare_arrays(x->post_attn_norm, y->post_attn_norm, H, tol);
        n += compare_arrays(f32w(x->q), f32w(y->q), c->mla ? 0 : q * H, tol);
        n += compare_arrays(f32w(x->k), f32w(y->k), kv * H, tol);
        n += compare_arrays(f32w(x->v), f32w(y->v), kv * H, tol);
        int64_t od = c->mla ? (int64_t)c->num_heads * c->v_head_dim : q; /* o_proj's input width */
        n += compare_arrays(f32w(x->o), f32w(y->o), H * od, tol);
        if (c->mla) {
            int64_t qk = c->qk_nope_dim + c->qk_rope_dim, QL = c->q_lora_rank, KL = c->kv_lora_rank;
            n += compare_arrays(f32w(x->q_a), f32w(y->q_a), QL * H, tol);
            n += compare_arrays(f32w(x->q_b), f32w(y->q_b), c->num_heads * qk * QL, tol);
            n += compare_arrays(f32w(x->kv_a), f32w(y->kv_a), (KL + c->qk_rope_dim) * H, tol);
            n += compare_arrays(f32w(x->kv_b), f32w(y->kv_b), c->num_heads * (c->qk_nope_dim + c->v_head_dim) * KL,
                                tol);
            n += compare_arrays(x->q_a_norm, y->q_a_norm, QL, tol);
            n += compare_arrays(x->kv_a_norm, y->kv_a_norm, KL, tol);
            n += compare_arrays(x->router_bias, y->router_bias, x->is_moe ? c->num_experts : 0, tol);
        }
        n += compare_arrays(x->q_bias, y->q_bias, q, tol);
        n += compare_arrays(x->v_bias, y->v_bias, kv, tol);
        int whole = c->qk_norm == EPM_QK_NORM_WHOLE;
        n += compare_arrays(x->q_norm, y->q_norm, whole ? q : c->head_dim, tol);
        n += compare_arrays(x->k_norm, y->k_norm, whole ? kv : c->head_dim, tol);
        n += compare_arrays(x->router, y->router, x->is_moe ? c->num_experts * H : 0, tol);
        n += compare_arrays(x->shared.gate, y->shared.gate, (int64_t)x->shared.ffn * H, tol);
        n += compare_arrays(x->shared.down, y->shared.down, (int64_t)x->shared.ffn * H, tol);
        n += compare_arrays(x->shared_gate, y->shared_gate, H, tol);
        n += compare_arrays(x->mlp.up, y->mlp.up, (int64_t)x->mlp.ffn * H, tol);
        n += compare_arrays(x->mlp.down, y->mlp.down, (int64_t)x->mlp.ffn * H, tol);
        for (int e = 0; x->is_moe && e < c->num_experts; e++) {
            const epm_model_mlp *p = epm_model_expert(a.m, l, e), *r = epm_model_expert(b.m, l, e);
            assert_non_null(p);
            assert_non_null(r);
            n += compare_arrays(p->gate, r->gate, (int64_t)c->moe_ffn * H, tol);
            n += compare_arrays(p->up, r->up, (int64_t)c->moe_ffn * H, tol);
            n += compare_arrays(p->down, r->down, (int64_t)c->moe_ffn * H, tol);
        }
    }
    return n;
}

static void test_model_sharded_equals_single(void **state)
{
    (void)state;
    for (int arch = 0; arch < EPM_MODEL_ARCH_COUNT; arch++) {
        const char *one = tu_path("one"), *three = tu_path("three");
        synth(one, (epm_model_arch)arch, EPM_DTYPE_F32, 1, 0);
        synth(three, (epm_model_arch)arch, EPM_DTYPE_F32, 3, 0);
        loaded a = load_all(one), b = load_all(three);
        assert_int_equal(epm_model_files(a.m), 1);
        assert_int_equal(epm_model_files(b.m), 3);
        const epm_model_config *c = epm_model_get_config(b.m);
        assert_int_equal(c->arch, arch);
        if (arch == EPM_MODEL_QWEN2MOE || arch == EPM_MODEL_QWEN3MOE) {
            assert_int_equal(c->moe_layer[1], 0);
            assert_non_null(b.d->layer[1].mlp.gate);
            assert_int_equal(b.d->layer[1].mlp.ffn, 36);
            assert_null(b.d->layer[1].router);
            assert_int_equal(b.d->layer[0].shared.ffn, arch == EPM_MODEL_QWEN2MOE ? 40 : 0);
            assert_int_equal(epm_model_load_experts(b.m, 1, (int[]){0}, 1, NULL), EPM_ERR_INVALID_ARG);
        }
        if (arch == EPM_MODEL_DEEPSEEKV2) {
            /* softmax routing, no correction bias; MLA as V3's */
            assert_int_equal(c->router_sigmoid, 0);
            assert_null(b.d->layer[1].router_bias);
            assert_non_null(b.d->layer[1].kv_b.data);
            assert_null(b.d->layer[1].shared_gate);
        }
        if (arch == EPM_MODEL_DEEPSEEKV3) {
            /* MLA's projections (q LoRA, kv latent), the router's correction bias,
             * a shared expert without a gate, a dense first layer */
            assert_int_equal(c->mla, 1);
            assert_int_equal(c->moe_layer[0], 0);
            assert_non_null(b.d->layer[0].mlp.gate);
            const epm_model_layer *x = &b.d->layer[1];
            assert_non_null(x->q_a.data);
            assert_non_null(x->q_b.data);
            assert_non_null(x->kv_a.data);
            assert_non_null(x->kv_b.data);
            assert_non_null(x->q_a_norm);
            assert_non_null(x->kv_a_norm);
            assert_null(x->q.data);
            assert_null(x->k.data);
            assert_non_null(x->router_bias);
            assert_true(x->router_bias[0] > 0);
            assert_int_equal(x->shared.ffn, 24);
            assert_null(x->shared_gate);
        }
        if (arch == EPM_MODEL_QWEN3MOE) {
            /* per-head q/k norms of the stated head_dim (epm_model_open checked the
             * tensors' shapes), no biases, no shared expert */
            assert_int_equal(c->head_dim, 16);
            assert_int_equal(c->qk_norm, EPM_QK_NORM_PER_HEAD);
            assert_non_null(b.d->layer[0].q_norm);
            assert_null(b.d->layer[0].q_bias);
            assert_null(b.d->layer[0].o_bias);
            assert_null(b.d->layer[0].shared.gate);
        }
        assert_true(compare_models(a, b, -1) > 10000);
        assert_int_equal(epm_model_bytes_loaded(a.m), epm_model_bytes_loaded(b.m));
        /* routing must be decisive: the router's rows are wider than the experts' */
        double r = 0, w = 0;
        int l0 = c->moe_layer[0] ? 0 : 1; /* DeepSeek-V3's first layer is dense */
        for (int i = 0; i < 32; i++) {
            r += fabs(a.d->layer[l0].router[i]);
            w += fabs(((const float *)epm_model_expert(a.m, l0, 0)->gate)[i]);
        }
        assert_true(r > 4 * w);
        epm_model_close(a.m);
        epm_model_close(b.m);
    }
}

static void test_model_half_precision_converts(void **state)
{
    (void)state;
    const char *f32 = tu_path("f32"), *bf16 = tu_path("bf16"), *f16 = tu_path("f16");
    synth(f32, EPM_MODEL_OLMOE, EPM_DTYPE_F32, 1, 1);
    synth(bf16, EPM_MODEL_OLMOE, EPM_DTYPE_BF16, 2, 1);
    synth(f16, EPM_MODEL_OLMOE, EPM_DTYPE_F16, 1, 1);
    loaded a = load_all(f32), b = load_all(bf16), h = load_all(f16);
    assert_ptr_equal(b.d->lm_head.data, b.d->embed.data); /* tied */
    assert_int_equal(epm_model_get_config(b.m)->dtype, EPM_DTYPE_BF16);
    /* bf16 keeps 8 significant bits, f16 11 (all values here are normal halves) */
    assert_true(compare_models(a, b, 1.0 / 256) > 10000);
    assert_true(compare_models(a, h, 1.0 / 2048) > 10000);
    /* and exactly the rounding of the float32 weights */
    float x = f32w(a.d->layer[2].q)[7];
    assert_true(f32w(b.d->layer[2].q)[7] == epm_bf16_to_f32(epm_f32_to_bf16(x)));
    assert_true(f32w(h.d->layer[2].q)[7] == epm_f16_to_f32(epm_f32_to_f16(x)));
    assert_int_equal(epm_model_bytes_loaded(b.m) * 2, epm_model_bytes_loaded(a.m));
    epm_model_close(a.m);
    epm_model_close(b.m);
    epm_model_close(h.m);
}

/* Routed experts held bf16: the checkpoint's own bits, the dense
 * weights and Qwen2-MoE's shared expert still float32; the choice is refused
 * once an expert is loaded, and a float32 or f16 checkpoint stays float32. */
static void test_model_experts_kept_bf16(void **state)
{
    (void)state;
    const char *bf16 = tu_path("keep16"), *f16 = tu_path("keep16_f16");
    synth(bf16, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 2, 0);
    synth(f16, EPM_MODEL_QWEN2MOE, EPM_DTYPE_F16, 1, 0);
    epm_model *m, *w;
    assert_int_equal(epm_model_open(bf16, &m), EPM_OK);
    assert_int_equal(epm_model_open(bf16, &w), EPM_OK);
    epm_dtype got = EPM_DTYPE_F16;
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_F16, &got), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "F32, BF16 or F8_E4M3, not F16"));
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_BF16);
    const epm_model_dense *d;
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    int want[2] = {5, 0};
    epm_model_mlp e[2], f[2];
    assert_int_equal(epm_model_load_experts(m, 2, want, 2, e), EPM_OK);
    assert_int_equal(epm_model_load_experts(w, 2, want, 2, f), EPM_OK); /* the default: widened */
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_F32, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "fixed once one is loaded"));
    assert_int_equal(d->layer[2].shared.dtype, EPM_DTYPE_F32);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(e[i].dtype, EPM_DTYPE_BF16);
        assert_int_equal(f[i].dtype, EPM_DTYPE_F32);
        const void *ge[3] = {e[i].gate, e[i].up, e[i].down}, *gf[3] = {f[i].gate, f[i].up, f[i].down};
        for (int t = 0; t < 3; t++)
            for (int j = 0; j < 24 * 32; j++)
                assert_true(epm_bf16_to_f32(((const uint16_t *)ge[t])[j]) == ((const float *)gf[t])[j]);
    }
    /* the bytes read are the file's, whatever the experts are held in */
    assert_int_equal(epm_model_expert_bytes_loaded(m), epm_model_expert_bytes_loaded(w));
    epm_model_close(m);
    epm_model_close(w);
    assert_int_equal(epm_model_open(f16, &m), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F32);
    assert_int_equal(epm_model_load_experts(m, 2, want, 1, e), EPM_OK);
    assert_int_equal(e[0].dtype, EPM_DTYPE_F32);
    epm_model_close(m);
    assert_int_equal(epm_model_open(fixture("mixtral-tiny"), &m), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F32);
    epm_model_close(m);
    epm_clear_error();
}

/* Dropped experts (online rebalancing moved them away) are forgotten and
 * their copies freed (ASan's leak check and double-free check watch); loaded
 * again they are read again, the same values; held as stored (mapped) or
 * widened (copies); a bad layer or expert is refused. */
static void test_model_drop_experts(void **state)
{
    (void)state;
    const char *dir = tu_path("drop16");
    synth(dir, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 1, 0);
    for (int widen = 0; widen < 2; widen++) {
        epm_model *m;
        assert_int_equal(epm_model_open(dir, &m), EPM_OK);
        if (!widen)
            assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_BF16, NULL), EPM_OK);
        const size_t bytes = (size_t)24 * 32 * (widen ? 4 : 2);
        int want[3] = {5, 0, 3};
        epm_model_mlp e[3];
        assert_int_equal(epm_model_load_experts(m, 2, want, 3, e), EPM_OK);
        void *before = malloc(bytes);
        assert_non_null(before);
        memcpy(before, e[0].down, bytes);
        const int64_t read = epm_model_expert_bytes_loaded(m);
        assert_int_equal(epm_model_drop_experts(m, 2, (int[]){5, 3, 4}, 3), EPM_OK); /* (4: not loaded) */
        assert_null(epm_model_expert(m, 2, 5));
        assert_null(epm_model_expert(m, 2, 3));
        assert_non_null(epm_model_expert(m, 2, 0));
        assert_int_equal(epm_model_drop_experts(m, 2, (int[]){5}, 1), EPM_OK); /* twice: nothing */
        epm_model_mlp again;
        assert_int_equal(epm_model_load_experts(m, 2, want, 1, &again), EPM_OK);
        assert_int_equal(epm_model_expert_bytes_loaded(m), read + read / 3); /* read again */
        assert_memory_equal(again.down, before, bytes);
        free(before);
        assert_int_equal(epm_model_drop_experts(m, 9, want, 1), EPM_ERR_INVALID_ARG);
        assert_non_null(strstr(epm_last_error(), "layer 9 is not a MoE layer"));
        assert_int_equal(epm_model_drop_experts(m, 2, (int[]){6}, 1), EPM_ERR_INVALID_ARG);
        assert_non_null(strstr(epm_last_error(), "expert 6 of layer 2 does not exist"));
        assert_int_equal(epm_model_drop_experts(m, 2, NULL, 1), EPM_ERR_INVALID_ARG);
        epm_model_close(m);
    }
    epm_clear_error();
}

/* A routed expert packed on one rank and unpacked on another (online
 * rebalancing's transfer between peers): the same bytes, dtype and FP8
 * scales as the sender holds, in each held dtype (bf16 as stored, widened
 * to float32, FP8 with partial scale blocks); no checkpoint read is counted;
 * dropped like any other (ASan watches the copies); a missing expert, a
 * short buffer or a wrong size is refused, naming the expert. */
static void synth_fp8(const char *dir, epm_dtype dtype);

static void test_model_expert_packed(void **state)
{
    (void)state;
    const char *d16 = tu_path("pack16"), *d8 = tu_path("pack8");
    synth(d16, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 1, 0);
    synth_fp8(d8, EPM_DTYPE_F8_E4M3);
    const struct {
        const char *dir;
        epm_dtype want;
        size_t es;
    } cases[3] = {{d16, EPM_DTYPE_BF16, 2}, {d16, EPM_DTYPE_F32, 4}, {d8, EPM_DTYPE_F8_E4M3, 1}};
    for (int c = 0; c < 3; c++) {
        epm_model *a, *b;
        assert_int_equal(epm_model_open(cases[c].dir, &a), EPM_OK);
        assert_int_equal(epm_model_open(cases[c].dir, &b), EPM_OK);
        epm_dtype got;
        assert_int_equal(epm_model_set_expert_dtype(a, cases[c].want, &got), EPM_OK);
        assert_int_equal(got, cases[c].want);
        assert_int_equal(epm_model_set_expert_dtype(b, cases[c].want, NULL), EPM_OK);
        const epm_model_config *cfg = epm_model_get_config(a);
        int l = 0;
        while (!cfg->moe_layer[l])
            l++;
        const size_t H = (size_t)cfg->hidden_size, F = (size_t)cfg->moe_ffn, mat = H * F * cases[c].es;
        size_t want_bytes = 3 * ((mat + 3) & ~(size_t)3);
        const int fp8 = cases[c].want == EPM_DTYPE_F8_E4M3;
        const size_t bl[2] = {(size_t)cfg->fp8_block[0], (size_t)cfg->fp8_block[1]};
        const size_t sc_up = fp8 ? ((F + bl[0] - 1) / bl[0]) * ((H + bl[1] - 1) / bl[1]) : 0,
                     sc_down = fp8 ? ((H + bl[0] - 1) / bl[0]) * ((F + bl[1] - 1) / bl[1]) : 0;
        want_bytes += (2 * sc_up + sc_down) * sizeof(float);
        const int64_t n = epm_model_expert_packed_bytes(a);
        assert_int_equal(n, (int64_t)want_bytes);
        assert_int_equal(epm_model_expert_packed_bytes(b), n);
        void *buf = malloc((size_t)n);
        assert_non_null(buf);
        assert_int_equal(epm_model_pack_expert(a, l, 3, buf, n), EPM_ERR_INVALID_ARG); /* (not loaded) */
        assert_non_null(strstr(epm_last_error(), "expert 3 of layer"));
        epm_model_mlp ea;
        assert_int_equal(epm_model_load_experts(a, l, (int[]){3}, 1, &ea), EPM_OK);
        assert_int_equal(epm_model_pack_expert(a, l, 3, buf, n - 1), EPM_ERR_INVALID_ARG);
        assert_int_equal(epm_model_pack_expert(a, l, 3, buf, n), EPM_OK);
        assert_int_equal(epm_model_unpack_expert(b, l, 3, buf, n + 4), EPM_ERR_INVALID_ARG);
        assert_non_null(strstr(epm_last_error(), "arrived as"));
        assert_int_equal(epm_model_unpack_expert(b, l, cfg->num_experts, buf, n), EPM_ERR_INVALID_ARG);
        assert_int_equal(epm_model_unpack_expert(b, l, 3, buf, n), EPM_OK);
        const epm_model_mlp *eb = epm_model_expert(b, l, 3);
        assert_non_null(eb);
        assert_int_equal(eb->dtype, ea.dtype);
        assert_int_equal(eb->ffn, ea.ffn);
        assert_memory_equal(eb->gate, ea.gate, mat);
        assert_memory_equal(eb->up, ea.up, mat);
        assert_memory_equal(eb->down, ea.down, mat);
        if (fp8) {
            assert_memory_equal(eb->block, ea.block, sizeof ea.block);
            assert_memory_equal(eb->scale[0], ea.scale[0], sc_up * sizeof(float));
            assert_memory_equal(eb->scale[1], ea.scale[1], sc_up * sizeof(float));
            assert_memory_equal(eb->scale[2], ea.scale[2], sc_down * sizeof(float));
        } else {
            assert_null(eb->scale[0]);
        }
        assert_int_equal(epm_model_expert_bytes_loaded(b), 0); /* (nothing read from the file) */
        /* the dtype is fixed from then on, as after a load */
        assert_int_equal(epm_model_set_expert_dtype(b, EPM_DTYPE_F32, NULL), EPM_ERR_INVALID_ARG);
        assert_int_equal(epm_model_unpack_expert(b, l, 3, buf, n), EPM_OK); /* (held: kept) */
        assert_ptr_equal(epm_model_expert(b, l, 3), eb);
        assert_int_equal(epm_model_drop_experts(b, l, (int[]){3}, 1), EPM_OK);
        assert_null(epm_model_expert(b, l, 3));
        assert_int_equal(epm_model_unpack_expert(b, l, 3, buf, n), EPM_OK); /* (again, and closed with it) */
        free(buf);
        epm_model_close(a);
        epm_model_close(b);
    }
    epm_clear_error();
}

/* kB this process has resident, by a walk of its page tables (Linux's
 * smaps_rollup: exact, and file pages on tmpfs count too), -1 where unknown */
static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Rss: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

/* kB of the whole pages inside [p, p + bytes) */
static long whole_pages_kb(const void *p, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p;
    const uintptr_t lo = (a + page - 1) / page * page, hi = (a + bytes) / page * page;
    return hi > lo ? (long)((hi - lo) / 1024) : 0;
}

/* A dropped expert held as stored (its bf16 pages mapped, not copied)
 * leaves the resident set: its pages are given back at once, not whenever
 * the kernel reclaims them; read again, the same values. */
static void test_model_drop_unmaps(void **state)
{
    (void)state;
    if (rss_kb() < 0)
        skip();
    epm_model_synth_opts o;
    epm_model_synth_opts_init(&o);
    o.arch = EPM_MODEL_MIXTRAL;
    o.hidden = 256;
    o.layers = 1;
    o.experts = 2;
    o.k = 1;
    o.ffn = 2048; /* 1 MB a matrix in bf16 */
    o.heads = 4;
    o.kv_heads = 2;
    o.vocab = 32;
    o.dtype = EPM_DTYPE_BF16;
    o.seed = 3;
    const char *dir = tu_path("drop_unmaps");
    assert_int_equal(epm_model_synth(&o, dir), EPM_OK);
    epm_model *m;
    assert_int_equal(epm_model_open(dir, &m), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(m, EPM_DTYPE_BF16, NULL), EPM_OK);
    epm_model_mlp e;
    const long before = rss_kb();
    assert_int_equal(epm_model_load_experts(m, 0, (int[]){1}, 1, &e), EPM_OK); /* (its pages faulted in) */
    const size_t bytes = (size_t)2048 * 256 * 2;
    const long pages = whole_pages_kb(e.gate, bytes) + whole_pages_kb(e.up, bytes) + whole_pages_kb(e.down, bytes);
    assert_true(pages >= 3 * 1024 * 9 / 10);
    const uint16_t first = ((const uint16_t *)e.down)[12345];
    const long loaded = rss_kb();
    /* (a tenth of slack: reading the counter allocates, and a sanitizer's allocator never reuses) */
    assert_true(loaded - before >= pages * 9 / 10);
    assert_int_equal(epm_model_drop_experts(m, 0, (int[]){1}, 1), EPM_OK);
    assert_true(loaded - rss_kb() >= pages * 9 / 10);
    assert_int_equal(epm_model_load_experts(m, 0, (int[]){1}, 1, &e), EPM_OK);
    assert_int_equal(((const uint16_t *)e.down)[12345], first);
    epm_model_close(m);
}

/* A matrix held bf16 and its float32 widening: the same values, bit for bit. */
static void same_widened(epm_weight a, epm_weight b, int64_t n)
{
    assert_int_equal(a.dtype, EPM_DTYPE_BF16);
    assert_int_equal(b.dtype, EPM_DTYPE_F32);
    for (int64_t i = 0; i < n; i++)
        assert_true(epm_bf16_to_f32(((const uint16_t *)a.data)[i]) == ((const float *)b.data)[i]);
}

/* The dense matrices held bf16 (attention, embedding, LM head, shared expert,
 * dense MLP): the checkpoint's bits, norms and routers still float32; refused
 * once loaded; an f16 checkpoint stays float32; a tied head is the embedding. */
static void test_model_dense_kept_bf16(void **state)
{
    (void)state;
    const char *bf16 = tu_path("dense16"), *f16 = tu_path("dense16_f16"), *tied = tu_path("dense16_tied");
    synth(bf16, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 1, 0);
    synth(f16, EPM_MODEL_QWEN2MOE, EPM_DTYPE_F16, 1, 0);
    synth(tied, EPM_MODEL_OLMOE, EPM_DTYPE_BF16, 1, 1);
    epm_model *m, *w;
    assert_int_equal(epm_model_open(bf16, &m), EPM_OK);
    assert_int_equal(epm_model_open(bf16, &w), EPM_OK);
    epm_dtype got = EPM_DTYPE_F16;
    assert_int_equal(epm_model_set_dense_dtype(m, EPM_DTYPE_F16, &got), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "F32, BF16 or F8_E4M3, not F16"));
    assert_int_equal(epm_model_set_dense_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_BF16);
    const epm_model_dense *d, *e;
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    assert_int_equal(epm_model_load_dense(w, &e), EPM_OK);
    assert_int_equal(epm_model_set_dense_dtype(m, EPM_DTYPE_F32, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "fixed once they are loaded"));
    const epm_model_config *c = epm_model_get_config(m);
    int64_t H = c->hidden_size, V = c->vocab_size, q = (int64_t)c->num_heads * c->head_dim,
            kv = (int64_t)c->num_kv_heads * c->head_dim;
    same_widened(d->embed, e->embed, V * H);
    same_widened(d->lm_head, e->lm_head, V * H);
    assert_true(d->final_norm[3] == e->final_norm[3]);
    int dense_layers = 0, shared = 0;
    for (int l = 0; l < c->num_layers; l++) {
        const epm_model_layer *x = &d->layer[l], *y = &e->layer[l];
        same_widened(x->q, y->q, q * H);
        same_widened(x->k, y->k, kv * H);
        same_widened(x->v, y->v, kv * H);
        same_widened(x->o, y->o, H * q);
        assert_true(x->input_norm[1] == y->input_norm[1] && x->q_bias[2] == y->q_bias[2]);
        const epm_model_mlp *a = x->is_moe ? &x->shared : &x->mlp, *b = x->is_moe ? &y->shared : &y->mlp;
        if (x->is_moe)
            assert_true(x->router[5] == y->router[5] && x->shared_gate[0] == y->shared_gate[0]);
        if (!a->gate)
            continue;
        dense_layers += !x->is_moe, shared += x->is_moe;
        assert_int_equal(a->dtype, EPM_DTYPE_BF16);
        assert_int_equal(b->dtype, EPM_DTYPE_F32);
        assert_int_equal(a->ffn, b->ffn);
        const void *ga[3] = {a->gate, a->up, a->down}, *gb[3] = {b->gate, b->up, b->down};
        for (int t = 0; t < 3; t++)
            same_widened((epm_weight){.data = ga[t], .dtype = EPM_DTYPE_BF16},
                         (epm_weight){.data = gb[t], .dtype = EPM_DTYPE_F32}, H * a->ffn);
    }
    assert_int_equal(dense_layers, 1);
    assert_true(shared >= 1);
    /* the bytes read are the file's, whatever the weights are held in */
    assert_int_equal(epm_model_bytes_loaded(m), epm_model_bytes_loaded(w));
    epm_model_close(m);
    epm_model_close(w);
    assert_int_equal(epm_model_open(f16, &m), EPM_OK);
    assert_int_equal(epm_model_set_dense_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F32);
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    assert_int_equal(d->layer[0].q.dtype, EPM_DTYPE_F32);
    assert_int_equal(d->layer[1].mlp.dtype, EPM_DTYPE_F32);
    epm_model_close(m);
    assert_int_equal(epm_model_open(tied, &m), EPM_OK);
    assert_int_equal(epm_model_set_dense_dtype(m, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_BF16);
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    assert_ptr_equal(d->lm_head.data, d->embed.data);
    assert_int_equal(d->lm_head.dtype, EPM_DTYPE_BF16);
    epm_model_close(m);
    epm_clear_error();
}

static void test_model_half_conversions(void **state)
{
    (void)state;
    assert_true(epm_f16_to_f32(0x3c00) == 1.0f);
    assert_true(epm_f16_to_f32(0xc000) == -2.0f);
    assert_true(epm_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(epm_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(isinf(epm_f16_to_f32(0x7c00)));
    assert_int_equal(epm_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(epm_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(epm_f32_to_f16(ldexpf(1, -24)), 0x0001);
    assert_int_equal(epm_f32_to_f16(ldexpf(1, -26)), 0x0000);
    assert_int_equal(epm_f32_to_bf16(1.0f), 0x3f80);
    assert_true(epm_bf16_to_f32(0x3f80) == 1.0f);
    /* ties to even: 1 + 2^-8 lies halfway between two bf16 values */
    assert_int_equal(epm_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);
    assert_int_equal(epm_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive half survives the round trip */
        if (epm_f32_to_f16(epm_f16_to_f32((uint16_t)h)) != h)
            fail_msg("half 0x%04x", h);
}

/* The bulk conversions (a bf16 wire's rows) give the scalar ones' bits at
 * every length (the vector body and its tail), at every offset, on values
 * that round up, down, to even, overflow to Inf, and NaN; and they write
 * nothing past n */
static void test_model_bf16_bulk_conversions(void **state)
{
    (void)state;
    enum { N = 77 };
    float src[N + 3], back[N + 3], acc[N + 3], want[N + 3];
    uint16_t h[N + 4];
    uint64_t rng = 7;
    for (int i = 0; i < N + 3; i++) {
        uint32_t u = (uint32_t)epm_splitmix64(&rng);
        memcpy(&src[i], &u, 4);
        if (i % 5 == 1)
            src[i] = 1.0f + (float)(i % 4) * ldexpf(1, -8); /* ties, both ways */
        if (i % 11 == 3)
            src[i] = i % 2 ? 3.4e38f : -3.39e38f; /* rounds to Inf / stays finite */
    }
    src[6] = NAN;
    uint32_t snan = 0x7f800001u; /* a NaN whose rounding would carry into Inf */
    memcpy(&src[12], &snan, 4);
    src[9] = -INFINITY;
    for (int off = 0; off < 3; off++)
        for (int n = 0; n <= N; n++) {
            for (int i = 0; i < N + 4; i++)
                h[i] = 0xabcd;
            epm_bf16_pack(h, src + off, n);
            for (int i = 0; i < n; i++)
                if (h[i] != epm_f32_to_bf16(src[off + i]))
                    fail_msg("pack n %d offset %d [%d]: 0x%04x, scalar 0x%04x", n, off, i, h[i],
                             epm_f32_to_bf16(src[off + i]));
            assert_int_equal(h[n], 0xabcd);
            epm_bf16_unpack(back + off, h, n);
            for (int i = 0; i < n; i++) {
                float w = epm_bf16_to_f32(h[i]);
                if (memcmp(&back[off + i], &w, 4))
                    fail_msg("unpack n %d offset %d [%d]", n, off, i);
                acc[off + i] = (float)i;
                want[off + i] = (float)i + w;
            }
            epm_bf16_add(acc + off, h, n);
            for (int i = 0; i < n; i++)
                if (memcmp(&acc[off + i], &want[off + i], 4) && !(isnan(acc[off + i]) && isnan(want[off + i])))
                    fail_msg("add n %d offset %d [%d]", n, off, i);
        }
    assert_true(isnan(epm_bf16_to_f32(epm_f32_to_bf16(NAN))));
}

/* fp8 dispatch rows: per block of 128 (a partial last one), the scale is
 * the block's largest magnitude over 448 and the codes those of the scalar
 * conversion; that largest value comes back exactly and every value within
 * e4m3's rounding (2^-4 of itself, or half a subnormal step); an all-zero
 * block has scale 1 and zero codes; the pad bytes are zero; nothing is
 * written past the row */
static void test_model_fp8_rows(void **state)
{
    (void)state;
    enum { N = 200 }; /* 128 + 72 */
    float x[N], back[N], lut[256];
    for (int b = 0; b < 256; b++)
        lut[b] = epm_f8e4m3_to_f32((uint8_t)b);
    uint64_t rng = 3;
    for (int i = 0; i < N; i++)
        x[i] = i < 128 ? (float)((double)(epm_splitmix64(&rng) % 20001) / 1000.0 - 10.0) : 0.0f;
    x[5] = 37.5f;       /* block 0's largest */
    x[17] = 1e-6f;      /* a subnormal code */
    x[40] = NAN;        /* passed over by the scale, NaN in its own place */
    const int codes = 200, floats = codes / 4 + 2;
    float row[N / 4 + 2 + 1];
    memset(row, 0x5a, sizeof row);
    for (int n = 199; n <= 200; n++) {
        epm_fp8_row_put(row, n, x);
        const unsigned char *q = (const unsigned char *)row;
        int cb = 4 * ((n + 3) / 4);
        float s0, s1;
        memcpy(&s0, q + cb, 4);
        memcpy(&s1, q + cb + 4, 4);
        assert_true(s0 == 37.5f / 448.0f);
        assert_true(s1 == 1.0f); /* block 1 is all zeros */
        for (int j = 0; j < n; j++)
            assert_int_equal(q[j], epm_f32_to_f8e4m3(x[j] * (1.0f / (j < 128 ? s0 : s1))));
        for (int j = n; j < cb; j++)
            assert_int_equal(q[j], 0);
        epm_fp8_row_get(row, n, back);
        assert_true(back[5] == 37.5f);
        assert_true(isnan(back[40]));
        for (int j = 0; j < n; j++) {
            double err = fabs((double)back[j] - x[j]), sub = (j < 128 ? s0 : s1) * 0x1p-10;
            if (err > fabs(x[j]) * 0x1p-4 + sub)
                fail_msg("n %d [%d]: %g back as %g", n, j, x[j], back[j]);
        }
    }
    float last;
    memcpy(&last, &row[floats], 4);
    uint32_t u;
    memcpy(&u, &last, 4);
    assert_int_equal(u, 0x5a5a5a5au);
    /* the vector encoder against the scalar one on a sweep of bit patterns
     * (both signs, every exponent, NaN, Inf, subnormals, ties), scaled by
     * 1 and by 1/3, at lengths that leave tails */
    enum { SW = 4099 };
    static float sw[SW];
    static unsigned char got[SW];
    for (uint64_t base = 0; base < (1ull << 32); base += (uint64_t)SW * 977) {
        for (int i = 0; i < SW; i++) {
            uint32_t v = (uint32_t)(base + (uint64_t)i * 977);
            memcpy(&sw[i], &v, 4);
        }
        for (int k = 0; k < 2; k++) {
            float mul = k ? 1.0f / 3.0f : 1.0f;
            int len = SW - (int)(base % 7);
            epm_f8e4m3_pack(got, sw, mul, len);
            for (int i = 0; i < len; i++)
                if (got[i] != epm_f32_to_f8e4m3(sw[i] * mul))
                    fail_msg("e4m3 of %a x %g: 0x%02x, scalar 0x%02x", (double)sw[i], (double)mul, got[i],
                             epm_f32_to_f8e4m3(sw[i] * mul));
        }
    }
    /* and the vector decoder: every code, at lengths that leave tails, scaled */
    {
        unsigned char all[256 + 7];
        float dec[256 + 7];
        for (int i = 0; i < 256 + 7; i++)
            all[i] = (unsigned char)(i * 37 + 11);
        for (int len = 256; len < 256 + 7; len++) {
            epm_f8e4m3_unpack(dec, all, 0.75f, len);
            for (int i = 0; i < len; i++) {
                float w = lut[all[i]] * 0.75f;
                if (memcmp(&dec[i], &w, 4))
                    fail_msg("e4m3 0x%02x x 0.75: %a, scalar %a", all[i], (double)dec[i], (double)w);
            }
        }
    }
    for (int i = 0; i < 512; i++) /* every e4m3 value, and the midpoints between them (ties) */
        sw[i] = i % 2 ? (lut[i / 2] + lut[(i / 2 + 1) % 256]) / 2 : lut[i / 2];
    epm_f8e4m3_pack(got, sw, 1.0f, 512);
    for (int i = 0; i < 512; i++)
        if (got[i] != epm_f32_to_f8e4m3(sw[i]))
            fail_msg("e4m3 of %a: 0x%02x, scalar 0x%02x", (double)sw[i], got[i], epm_f32_to_f8e4m3(sw[i]));
    /* a block of values far below 448 x FLT_MIN: a finite scale, zeros
     * stay zeros (an infinite inverse once made them NaN) */
    float tiny[4] = {1e-37f, 0.0f, -5e-38f, 1e-40f}, tb[4];
    epm_fp8_row_put(row, 4, tiny);
    epm_fp8_row_get(row, 4, tb);
    assert_true(tb[1] == 0.0f);
    for (int j = 0; j < 4; j++)
        if (!(fabsf(tb[j] - tiny[j]) <= fabsf(tiny[j]) * 0x1p-4f + FLT_MIN * 0x1p-9f))
            fail_msg("tiny [%d]: %g back as %g", j, tiny[j], tb[j]);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void edit_json(const char *path, const char *key, json_t *value)
{
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    json_t *obj = root;
    if (!strncmp(key, "weight_map.", 11)) {
        obj = json_object_get(root, "weight_map");
        key += 11;
    }
    json_object_set_new(obj, key, value);
    char *s = json_dumps(root, 0);
    write_text(path, s);
    free(s);
    json_decref(root);
}

static epm_status try_open(const char *dir)
{
    epm_model *m = NULL;
    epm_status st = epm_model_open(dir, &m);
    assert_true(st != EPM_OK || m != NULL);
    epm_model_close(m);
    return st;
}

static void test_model_missing_tensor(void **state)
{
    (void)state;
    char p[1024];
    const char *dir = tu_path("tied");
    synth(dir, EPM_MODEL_MIXTRAL, EPM_DTYPE_F32, 1, 1);
    assert_int_equal(try_open(dir), EPM_OK);
    snprintf(p, sizeof p, "%s/config.json", dir);
    edit_json(p, "tie_word_embeddings", json_false());
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'lm_head.weight' is missing"));
    assert_non_null(strstr(epm_last_error(), "model.safetensors"));
    /* a shape the config does not imply */
    edit_json(p, "tie_word_embeddings", json_true());
    edit_json(p, "intermediate_size", json_integer(100));
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "model.layers.0.block_sparse_moe.experts.0.w1.weight"));
    assert_non_null(strstr(epm_last_error(), "[24, 32]"));
    assert_non_null(strstr(epm_last_error(), "[100, 32]"));
    /* no weights at all */
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(try_open(dir), EPM_ERR_IO);
    assert_non_null(strstr(epm_last_error(), "no model.safetensors"));
}

static void test_model_shard_errors(void **state)
{
    (void)state;
    char p[1024];
    const char *dir = tu_path("sh");
    synth(dir, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 2, 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    /* the index puts the final norm in the second shard, which lacks it */
    edit_json(p, "weight_map.model.norm.weight", json_string("model-00002-of-00002.safetensors"));
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'model.norm.weight'"));
    assert_non_null(strstr(epm_last_error(), "model-00002-of-00002.safetensors"));
    /* a shard that is not there */
    edit_json(p, "weight_map.model.norm.weight", json_string("model-00003-of-00003.safetensors"));
    assert_int_equal(try_open(dir), EPM_ERR_IO);
    assert_non_null(strstr(epm_last_error(), "model-00003-of-00003.safetensors"));
    /* a path that leaves the folder */
    edit_json(p, "weight_map.model.norm.weight", json_string("../model-00001-of-00002.safetensors"));
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "weight_map.model.norm.weight"));
    /* a tensor the config implies but the index lacks */
    synth(dir, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 2, 0);
    json_t *root = json_load_file(p, 0, NULL);
    json_object_del(json_object_get(root, "weight_map"), "model.layers.2.mlp.experts.5.up_proj.weight");
    json_dump_file(root, p, 0);
    json_decref(root);
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'model.layers.2.mlp.experts.5.up_proj.weight' is missing"));
    assert_non_null(strstr(epm_last_error(), "model.safetensors.index.json"));
    write_text(p, "{\"weight_map\": {}}");
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "weight_map"));
}

static void test_model_truncated_file(void **state)
{
    (void)state;
    char p[1024];
    const char *dir = tu_path("cut");
    synth(dir, EPM_MODEL_OLMOE, EPM_DTYPE_F32, 1, 0);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(truncate(p, sb.st_size - 100), 0);
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), p));
    assert_non_null(strstr(epm_last_error(), "data_offsets"));
    assert_int_equal(truncate(p, 5), 0);
    assert_int_equal(try_open(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "too short"));
}

static void test_model_qkv_bias_from_tensors(void **state)
{
    (void)state;
    /* a Qwen2-MoE config from before transformers 5 does not say qkv_bias */
    char src[1024], p[1024];
    const char *dir = tu_path("oldqwen");
    assert_int_equal(mkdir(dir, 0777), 0);
    snprintf(src, sizeof src, "%s/model.safetensors", fixture("qwen2moe-tiny"));
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(symlink(src, p), 0);
    snprintf(src, sizeof src, "%s/config.json", fixture("qwen2moe-tiny"));
    json_t *root = json_load_file(src, 0, NULL);
    json_object_del(root, "qkv_bias");
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_dump_file(root, p, 0);
    json_decref(root);
    epm_model *m;
    assert_int_equal(epm_model_open(dir, &m), EPM_OK);
    assert_int_equal(epm_model_get_config(m)->qkv_bias, 1);
    const epm_model_dense *d;
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    assert_non_null(d->layer[3].k_bias);
    epm_model_close(m);
    /* a config that denies them is believed: the biases are not read */
    edit_json(p, "qkv_bias", json_false());
    assert_int_equal(epm_model_open(dir, &m), EPM_OK);
    assert_int_equal(epm_model_load_dense(m, &d), EPM_OK);
    assert_null(d->layer[0].q_bias);
    epm_model_close(m);
}

static void test_model_synth_rejects_bad_shapes(void **state)
{
    (void)state;
    epm_model_synth_opts o;
    epm_model_synth_opts_init(&o);
    o.k = 9;
    assert_int_equal(epm_model_synth(&o, tu_path("bad")), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "k = 9"));
    epm_model_synth_opts_init(&o);
    o.heads = 3;
    assert_int_equal(epm_model_synth(&o, tu_path("bad")), EPM_ERR_INVALID_ARG);
    epm_model_synth_opts_init(&o);
    o.shards = 100000;
    assert_int_equal(epm_model_synth(&o, tu_path("bad")), EPM_ERR_INVALID_ARG);
    epm_model_synth_opts_init(&o);
    o.layers = 1;
    o.shards = 50; /* more files than tensors */
    assert_int_equal(epm_model_synth(&o, tu_path("bad")), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "50 shards"));
    /* a "MoE" model without a MoE layer would only fail later, in the runtime */
    epm_model_synth_opts_init(&o);
    o.arch = EPM_MODEL_QWEN2MOE;
    o.layers = 2;
    o.mlp_only = (const int[]){1, 0};
    o.n_mlp_only = 2;
    assert_int_equal(epm_model_synth(&o, tu_path("bad")), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "no MoE layer"));
}

static void test_model_alloc_failures(void **state)
{
    (void)state;
    /* every allocation of open + load fails cleanly in turn (no leak, no crash) */
    const char *dir = tu_path("small");
    synth(dir, EPM_MODEL_QWEN2MOE, EPM_DTYPE_BF16, 2, 0);
    int failed = 0, succeeded = 0;
    for (uint64_t n = 1; n < 2000; n++) {
        epm_fault_fail_nth_alloc(n);
        epm_model *m = NULL;
        epm_status st = epm_model_open(dir, &m);
        if (st == EPM_OK) {
            st = epm_model_load_dense(m, NULL);
            if (st == EPM_OK)
                st = epm_model_load_experts(m, 0, (int[]){1, 4}, 2, NULL);
        }
        epm_model_close(m);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            succeeded = 1;
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        failed++;
    }
    assert_true(succeeded); /* the loop reached the end of open + load */
    assert_true(failed > 10);
}


static void test_model_fp8_conversions(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        int e = (c >> 3) & 15, m = c & 7;
        float v = epm_f8e4m3_to_f32((uint8_t)c);
        if (e == 15 && m == 7) {
            assert_true(isnan(v));
            continue;
        }
        float want = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
        assert_true(v == ((c & 0x80) ? -want : want));
        assert_int_equal(epm_f32_to_f8e4m3(v), c); /* every finite code survives the round trip */
    }
    assert_true(epm_f8e4m3_to_f32(0x7e) == 448.0f);
    /* ties to even: 1 + 1/16 lies halfway between 1 (0x38) and 1.125 (0x39) */
    assert_int_equal(epm_f32_to_f8e4m3(1.0625f), 0x38);
    assert_int_equal(epm_f32_to_f8e4m3(1.1875f), 0x3a);
    assert_int_equal(epm_f32_to_f8e4m3(1.07f), 0x39);
    /* subnormals, steps of 2^-9, and the carry into the smallest normal */
    assert_int_equal(epm_f32_to_f8e4m3(ldexpf(1, -10)), 0x00);
    assert_int_equal(epm_f32_to_f8e4m3(ldexpf(3, -10)), 0x02);
    assert_int_equal(epm_f32_to_f8e4m3(-ldexpf(15, -10)), 0x88);
    /* beyond 448 saturates; NaN stays NaN */
    assert_int_equal(epm_f32_to_f8e4m3(470.0f), 0x7e);
    assert_int_equal(epm_f32_to_f8e4m3(-1e30f), 0xfe);
    assert_int_equal(epm_f32_to_f8e4m3(NAN) & 0x7f, 0x7f);
}

static void synth_fp8(const char *dir, epm_dtype dtype)
{
    epm_model_synth_opts o;
    epm_model_synth_opts_init(&o);
    o.arch = EPM_MODEL_DEEPSEEKV3;
    o.hidden = 32;
    o.layers = 3;
    o.experts = 8;
    o.ffn = 24;
    o.heads = 4;
    o.kv_heads = 4;
    o.vocab = 50;
    o.dtype = dtype;
    o.fp8_block[0] = 5; /* blocks that divide nothing: partial ones at every edge */
    o.fp8_block[1] = 7;
    o.seed = 9;
    if (epm_model_synth(&o, dir) != EPM_OK)
        fail_msg("synth %s: %s", dir, epm_last_error());
}

/* An FP8 weight as stored, dequantised by hand: code value times its
 * block's scale in float32, rounded to bf16. */
static void check_dequant(const epm_safetensors *st, const char *name, const float *w, int64_t rows, int64_t cols)
{
    char sn[256];
    snprintf(sn, sizeof sn, "%s_scale_inv", name);
    const epm_st_tensor *q = epm_st_find(st, name), *sc = epm_st_find(st, sn);
    assert_non_null(q);
    assert_non_null(sc);
    assert_int_equal(q->dtype, EPM_DTYPE_F8_E4M3);
    assert_int_equal(sc->shape[0], (rows + 4) / 5);
    assert_int_equal(sc->shape[1], (cols + 6) / 7);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            float s;
            memcpy(&s, (const uint8_t *)sc->data + 4 * ((i / 5) * sc->shape[1] + j / 7), 4);
            uint8_t c = ((const uint8_t *)q->data)[i * cols + j];
            int e = (c >> 3) & 15, m = c & 7;
            float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
            v = (c & 0x80) ? -v : v;
            if (w[i * cols + j] != epm_bf16_to_f32(epm_f32_to_bf16(v * s)))
                fail_msg("%s [%lld, %lld]: %g", name, (long long)i, (long long)j, (double)w[i * cols + j]);
        }
}

/* DeepSeek-V3's FP8 format: the loader's dequantisation against one by
 * hand, close to the float32 weights the same seed gives, the same values
 * held bf16 or widened, and the rest (norms, routers, embedding) bf16. */
static void test_model_fp8_dequantised(void **state)
{
    (void)state;
    const char *d8 = tu_path("fp8"), *d32 = tu_path("fp8_f32");
    synth_fp8(d8, EPM_DTYPE_F8_E4M3);
    synth_fp8(d32, EPM_DTYPE_F32);
    loaded a = load_all(d8), b = load_all(d32);
    const epm_model_config *c = epm_model_get_config(a.m);
    assert_int_equal(c->fp8_block[0], 5);
    assert_int_equal(c->fp8_block[1], 7);
    char file[1024], n[160];
    snprintf(file, sizeof file, "%s/model.safetensors", d8);
    epm_safetensors *st;
    assert_int_equal(epm_st_open(file, &st), EPM_OK);
    /* an expert, the dense layer's MLP and an attention projection */
    const epm_model_mlp *e = epm_model_expert(a.m, 2, 7), *e32 = epm_model_expert(b.m, 2, 7);
    assert_non_null(e);
    check_dequant(st, "model.layers.2.mlp.experts.7.down_proj.weight", e->down, 32, 24);
    check_dequant(st, "model.layers.0.mlp.gate_proj.weight", a.d->layer[0].mlp.gate, c->dense_ffn, 32);
    check_dequant(st, "model.layers.1.self_attn.kv_b_proj.weight", f32w(a.d->layer[1].kv_b),
                  (int64_t)c->num_heads * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank);
    /* e4m3 keeps 4 significant bits of each value scaled into its block's range */
    double err = 0, ref = 0;
    for (int j = 0; j < 32 * 24; j++) {
        err = fmax(err, fabs((double)((const float *)e->up)[j] - ((const float *)e32->up)[j]));
        ref = fmax(ref, fabs((double)((const float *)e32->up)[j]));
    }
    assert_true(err > 0 && err <= ref / 16);
    /* not quantised: bf16 roundings of the float32 values */
    snprintf(n, sizeof n, "model.layers.1.mlp.gate.weight");
    assert_int_equal(epm_st_find(st, n)->dtype, EPM_DTYPE_BF16);
    for (int j = 0; j < 8 * 32; j++)
        assert_true(a.d->layer[1].router[j] == epm_bf16_to_f32(epm_f32_to_bf16(b.d->layer[1].router[j])));
    /* the bytes read are the codes and their scales */
    int64_t one = 0;
    for (int t = 0; t < 3; t++)
        for (int sc = 0; sc < 2; sc++) {
            snprintf(n, sizeof n, "model.layers.2.mlp.experts.7.%s_proj.weight%s", t == 0 ? "gate" : t == 1 ? "up" : "down",
                     sc ? "_scale_inv" : "");
            const epm_st_tensor *x = epm_st_find(st, n);
            one += (int64_t)(x->end - x->begin);
        }
    assert_int_equal(one, 3 * 24 * 32 + 4 * (25 + 25 + 28));
    assert_int_equal(epm_model_expert_bytes_loaded(a.m), 2 * 8 * one);
    /* held bf16: the same values */
    epm_model *h;
    epm_dtype got;
    assert_int_equal(epm_model_open(d8, &h), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(h, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_BF16);
    assert_int_equal(epm_model_set_dense_dtype(h, EPM_DTYPE_BF16, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_BF16);
    const epm_model_dense *hd;
    assert_int_equal(epm_model_load_dense(h, &hd), EPM_OK);
    int want[1] = {7};
    epm_model_mlp he;
    assert_int_equal(epm_model_load_experts(h, 2, want, 1, &he), EPM_OK);
    for (int j = 0; j < 32 * 24; j++)
        assert_true(epm_bf16_to_f32(((const uint16_t *)he.down)[j]) == ((const float *)e->down)[j]);
    same_widened(hd->layer[1].kv_b, a.d->layer[1].kv_b,
                 (int64_t)c->num_heads * (c->qk_nope_dim + c->v_head_dim) * c->kv_lora_rank);
    epm_model_close(h);
    /* held FP8: the mapped codes and their scales as float32, standing for the same values; the
     * same bytes read */
    assert_int_equal(epm_model_open(d8, &h), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(h, EPM_DTYPE_F8_E4M3, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F8_E4M3);
    assert_int_equal(epm_model_load_experts(h, 2, want, 1, &he), EPM_OK);
    assert_int_equal(he.dtype, EPM_DTYPE_F8_E4M3);
    assert_int_equal(he.block[0], 5);
    assert_int_equal(he.block[1], 7);
    assert_memory_equal(he.down, epm_st_find(st, "model.layers.2.mlp.experts.7.down_proj.weight")->data, 32 * 24);
    const epm_st_tensor *dsc = epm_st_find(st, "model.layers.2.mlp.experts.7.down_proj.weight_scale_inv");
    assert_memory_equal(he.scale[2], dsc->data, (size_t)dsc->numel * 4);
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 24; j++) {
            float v = epm_f8e4m3_to_f32(((const uint8_t *)he.down)[i * 24 + j]) * he.scale[2][i / 5 * 4 + j / 7];
            assert_true(epm_bf16_to_f32(epm_f32_to_bf16(v)) == ((const float *)e->down)[i * 24 + j]);
        }
    assert_int_equal(epm_model_expert_bytes_loaded(h), one);
    epm_model_close(h);
    /* the dense matrices held FP8 too: attention projections and the dense and shared MLPs, the
     * same values; kv_b and the embedding bf16 */
    assert_int_equal(epm_model_open(d8, &h), EPM_OK);
    assert_int_equal(epm_model_set_dense_dtype(h, EPM_DTYPE_F8_E4M3, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F8_E4M3);
    assert_int_equal(epm_model_load_dense(h, &hd), EPM_OK);
    const epm_model_layer *l1 = &hd->layer[1];
    assert_int_equal(l1->o.dtype, EPM_DTYPE_F8_E4M3);
    assert_int_equal(l1->o.block[0], 5);
    assert_int_equal(l1->kv_b.dtype, EPM_DTYPE_BF16);
    assert_int_equal(hd->embed.dtype, EPM_DTYPE_BF16);
    assert_int_equal(hd->layer[0].mlp.dtype, EPM_DTYPE_F8_E4M3);
    assert_true(c->shared_ffn > 0);
    assert_int_equal(l1->shared.dtype, EPM_DTYPE_F8_E4M3);
    /* the MLPs' codes and scales: the shared expert's down projection and the dense MLP's gate
     * stand for the dequantised values */
    {
        const epm_model_mlp *mm[2] = {&l1->shared, &hd->layer[0].mlp}, *mf[2] = {&a.d->layer[1].shared, &a.d->layer[0].mlp};
        for (int k = 0; k < 2; k++) {
            int down = k == 0;
            int64_t rows = down ? c->hidden_size : mm[k]->ffn, cols = down ? mm[k]->ffn : c->hidden_size,
                    nb = (cols + 6) / 7;
            const uint8_t *q = down ? mm[k]->down : mm[k]->gate;
            const float *sc = mm[k]->scale[down ? 2 : 0], *want = down ? mf[k]->down : mf[k]->gate;
            assert_non_null(sc);
            assert_int_equal(mm[k]->block[1], 7);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    float v = epm_f8e4m3_to_f32(q[i * cols + j]) * sc[i / 5 * nb + j / 7];
                    assert_true(epm_bf16_to_f32(epm_f32_to_bf16(v)) == want[i * cols + j]);
                }
        }
    }
    {
        int64_t rows = c->hidden_size, cols = (int64_t)c->num_heads * c->v_head_dim, nb = (cols + 6) / 7;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) {
                float v = epm_f8e4m3_to_f32(((const uint8_t *)l1->o.data)[i * cols + j]) * l1->o.scale[i / 5 * nb + j / 7];
                assert_true(epm_bf16_to_f32(epm_f32_to_bf16(v)) == f32w(a.d->layer[1].o)[i * cols + j]);
            }
    }
    epm_model_close(h);
    /* a float32 checkpoint asked for FP8 holds float32 */
    assert_int_equal(epm_model_open(d32, &h), EPM_OK);
    assert_int_equal(epm_model_set_expert_dtype(h, EPM_DTYPE_F8_E4M3, &got), EPM_OK);
    assert_int_equal(got, EPM_DTYPE_F32);
    epm_model_close(h);
    epm_st_close(st);
    epm_model_close(a.m);
    epm_model_close(b.m);
}

/* Overwrites n bytes of a file at offset. */
static void patch(const char *path, long offset, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, offset, SEEK_SET), 0);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* Where a tensor's data starts in its file. */
static long data_offset(const char *path, const char *name)
{
    epm_safetensors *st;
    assert_int_equal(epm_st_open(path, &st), EPM_OK);
    const epm_st_tensor *t = epm_st_find(st, name);
    assert_non_null(t);
    long off = (long)((const uint8_t *)t->data - (const uint8_t *)st->map);
    epm_st_close(st);
    return off;
}

static epm_status try_load(const char *dir)
{
    epm_model *m = NULL;
    epm_status st = epm_model_open(dir, &m);
    if (st == EPM_OK) {
        st = epm_model_load_dense(m, NULL);
        int all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        for (int l = 1; l < 3 && st == EPM_OK; l++)
            st = epm_model_load_experts(m, l, all, 8, NULL);
    }
    epm_model_close(m);
    return st;
}

/* Each way an FP8 checkpoint can be wrong is named: no quantization_config,
 * scales of another block size, a missing scale tensor, a NaN code, a NaN
 * scale; and other quantisation methods are refused. */
static void test_model_fp8_errors(void **state)
{
    (void)state;
    const char *dir = tu_path("fp8_bad");
    char cfg[1024], file[1024];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    synth_fp8(dir, EPM_DTYPE_F8_E4M3);
    assert_int_equal(try_load(dir), EPM_OK);
    edit_json(cfg, "quantization_config", json_null());
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "has dtype F8_E4M3 but config.json has no fp8 quantization_config"));
    edit_json(cfg, "quantization_config", json_pack("{s:s, s:[i,i]}", "quant_method", "fp8", "weight_block_size", 8, 7));
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "_scale_inv' is F32 ["));
    assert_non_null(strstr(epm_last_error(), "], want F32 or BF16 ["));
    assert_non_null(strstr(epm_last_error(), "blocks of [8, 7]"));
    edit_json(cfg, "quantization_config", json_pack("{s:s, s:[i,i]}", "quant_method", "awq", "weight_block_size", 5, 7));
    assert_int_equal(try_load(dir), EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "quantization_config.quant_method"));
    assert_non_null(strstr(epm_last_error(), "\"awq\""));
    edit_json(cfg, "quantization_config", json_pack("{s:s, s:[i,i]}", "quant_method", "fp8", "weight_block_size", 5, 7));
    /* a NaN code in an expert, then a NaN scale */
    const char *w = "model.layers.2.mlp.experts.3.up_proj.weight";
    long off = data_offset(file, w);
    uint8_t nan8 = 0xff;
    patch(file, off + 2 * 32 + 5, &nan8, 1);
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'model.layers.2.mlp.experts.3.up_proj.weight' element [2, 5] is NaN"));
    assert_non_null(strstr(epm_last_error(), file));
    { /* held FP8, the codes are checked all the same */
        epm_model *h;
        epm_dtype got;
        int three[1] = {3};
        assert_int_equal(epm_model_open(dir, &h), EPM_OK);
        assert_int_equal(epm_model_set_expert_dtype(h, EPM_DTYPE_F8_E4M3, &got), EPM_OK);
        assert_int_equal(got, EPM_DTYPE_F8_E4M3);
        assert_int_equal(epm_model_load_experts(h, 2, three, 1, NULL), EPM_ERR_FORMAT);
        assert_non_null(strstr(epm_last_error(), "experts.3.up_proj.weight' element [2, 5] is NaN"));
        epm_model_close(h);
    }
    synth_fp8(dir, EPM_DTYPE_F8_E4M3);
    char sn[160];
    snprintf(sn, sizeof sn, "%s_scale_inv", w);
    float nanf32 = NAN;
    patch(file, data_offset(file, sn) + 4 * (1 * 5 + 2), &nanf32, 4); /* scale [1, 2] of a [5, 5] grid */
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "up_proj.weight_scale_inv' element [1, 2] is not finite"));
    /* a finite scale whose products overflow: refused, not infinite weights */
    synth_fp8(dir, EPM_DTYPE_F8_E4M3);
    float huge = 1e38f;
    patch(file, data_offset(file, sn) + 4 * (1 * 5 + 2), &huge, 4);
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "overflows bfloat16"));
    assert_non_null(strstr(epm_last_error(), "up_proj.weight_scale_inv' element [1, 2]"));
    { /* a scale beyond 2^120 (products still within bf16 when the block's codes are small): held
       * FP8, as dequantised */
        float far = 0x1p121f;
        patch(file, data_offset(file, sn) + 4 * (1 * 5 + 2), &far, 4);
        long at = data_offset(file, w);
        uint8_t tiny = 0x01; /* 2^-9: x 2^121 = 2^112 */
        for (int i = 5; i < 10; i++)
            for (int j = 14; j < 21; j++)
                patch(file, at + i * 32 + j, &tiny, 1);
        assert_int_equal(try_load(dir), EPM_OK);
        epm_model *h;
        int three[1] = {3};
        assert_int_equal(epm_model_open(dir, &h), EPM_OK);
        assert_int_equal(epm_model_set_expert_dtype(h, EPM_DTYPE_F8_E4M3, NULL), EPM_OK);
        epm_model_mlp he;
        assert_int_equal(epm_model_load_experts(h, 2, three, 1, &he), EPM_OK);
        assert_true(he.scale[1][1 * 5 + 2] == far);
        epm_model_close(h);
    }
    /* a matrix large enough to be dequantised on several threads: of two NaN codes, the first in
     * row order is named */
    {
        const char *big = tu_path("fp8_big");
        char bf[1024];
        epm_model_synth_opts o;
        epm_model_synth_opts_init(&o);
        o.hidden = 1024;
        o.ffn = 1040; /* 1040 x 1024 codes: above the parallel threshold of 2^20 */
        o.layers = 1;
        o.experts = 2;
        o.heads = 4;
        o.kv_heads = 2;
        o.vocab = 16;
        o.dtype = EPM_DTYPE_F8_E4M3;
        assert_int_equal(epm_model_synth(&o, big), EPM_OK);
        assert_int_equal(try_open(big), EPM_OK);
        snprintf(bf, sizeof bf, "%s/model.safetensors", big);
        long at = data_offset(bf, "model.layers.0.block_sparse_moe.experts.1.w1.weight");
        patch(bf, at + 1000L * 1024 + 17, &nan8, 1);
        patch(bf, at + 300L * 1024 + 900, &nan8, 1);
        epm_model *bm;
        assert_int_equal(epm_model_open(big, &bm), EPM_OK);
        int one[1] = {1};
        assert_int_equal(epm_model_load_experts(bm, 0, one, 1, NULL), EPM_ERR_FORMAT);
        assert_non_null(strstr(epm_last_error(), "experts.1.w1.weight' element [300, 900] is NaN"));
        epm_model_close(bm);
    }
    /* the scales missing: renamed in the header (same length, same offsets) */
    synth_fp8(dir, EPM_DTYPE_F8_E4M3);
    epm_safetensors *st;
    assert_int_equal(epm_st_open(file, &st), EPM_OK);
    const char *hdr = (const char *)st->map + 8, *at = strstr(hdr, sn);
    assert_non_null(at);
    long pos = 8 + (long)(at - hdr) + (long)strlen(sn) - 3;
    epm_st_close(st);
    patch(file, pos, "inx", 3);
    assert_int_equal(try_load(dir), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "up_proj.weight_scale_inv' is missing (the F8_E4M3 tensor"));
    epm_clear_error();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_fixtures_open),
        cmocka_unit_test(test_model_expert_subset),
        cmocka_unit_test(test_model_sharded_equals_single),
        cmocka_unit_test(test_model_half_precision_converts),
        cmocka_unit_test(test_model_half_conversions),
        cmocka_unit_test(test_model_bf16_bulk_conversions),
        cmocka_unit_test(test_model_fp8_rows),
        cmocka_unit_test(test_model_experts_kept_bf16), cmocka_unit_test(test_model_drop_experts),
        cmocka_unit_test(test_model_expert_packed),
        cmocka_unit_test(test_model_drop_unmaps),
        cmocka_unit_test(test_model_dense_kept_bf16),
        cmocka_unit_test(test_model_missing_tensor),
        cmocka_unit_test(test_model_shard_errors),
        cmocka_unit_test(test_model_truncated_file),
        cmocka_unit_test(test_model_qkv_bias_from_tensors),
        cmocka_unit_test(test_model_synth_rejects_bad_shapes),
        cmocka_unit_test(test_model_alloc_failures),
        cmocka_unit_test(test_model_fp8_conversions),
        cmocka_unit_test(test_model_fp8_dequantised),
        cmocka_unit_test(test_model_fp8_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
