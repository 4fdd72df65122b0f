/* The C reference kernels on small cases worked out by hand, and the
 * identities the single-implementation helpers must keep. These are what
 * make the reference an oracle: every fast path is compared with it. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "epmoe/kernels.h"
#include "half.h"

#define near(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))
#define ok(call) assert_int_equal((call), EPM_OK)


/* The router with its options spelled out, as the cases below read best. */
static epm_status router(const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p, int renorm,
                         int32_t *ids, float *wts)
{
    epm_router_opts o;
    epm_router_opts_init(&o);
    o.k = k, o.score = sigmoid ? EPM_SCORE_SIGMOID : EPM_SCORE_SOFTMAX, o.top_p = top_p, o.renorm = renorm;
    return epm_ref_router(logits, n, experts, &o, ids, wts);
}

/* Top-p over given probabilities: the router on their logarithms. */
static void topk_p(const float *p, int d, int k, float top_p, int32_t *ids, float *vals)
{
    float l[16];
    for (int e = 0; e < d; e++)
        l[e] = logf(p[e]);
    ok(router(l, 1, d, k, 0, top_p, 0, ids, vals));
}

static double silu(double v) { return v / (1 + exp(-v)); }

static void test_kernels_ref_linear_with_bias(void **state)
{
    (void)state;
    /* rows (1, 2) and (-1, 0.5) through W = [[1,0],[0,1],[1,1]], b = (0.5, -1, 2) */
    const float x[4] = {1, 2, -1, 0.5f}, w[6] = {1, 0, 0, 1, 1, 1}, b[3] = {0.5f, -1, 2};
    const float want[6] = {1.5f, 1, 5, -0.5f, -0.5f, 1.5f};
    float y[6];
    ok(epm_ref_linear(x, 2, 2, w, b, 3, y));
    for (int i = 0; i < 6; i++)
        near(y[i], want[i], 1e-7);
    ok(epm_ref_linear(x, 2, 2, w, NULL, 3, y)); /* no bias: y = x W^T */
    near(y[0], 1, 1e-7);
    near(y[5], -0.5, 1e-7);
}

static void test_kernels_ref_rmsnorm(void **state)
{
    (void)state;
    /* (3, 4): mean square 12.5 */
    const float x[2] = {3, 4}, w[2] = {1, 2};
    float y[2];
    ok(epm_ref_rmsnorm(x, 1, 2, w, 0.0f, y));
    near(y[0], 3 / sqrt(12.5), 1e-6);
    near(y[1], 8 / sqrt(12.5), 1e-6);
    /* eps keeps an all-zero row finite */
    const float z[3] = {0, 0, 0}, w3[3] = {1, 1, 1};
    float yz[3];
    ok(epm_ref_rmsnorm(z, 1, 3, w3, 1e-6f, yz));
    for (int i = 0; i < 3; i++)
        assert_true(yz[i] == 0.0f);
    /* in place, as the runtime calls it for q/k norms */
    float v[2] = {3, 4};
    ok(epm_ref_rmsnorm(v, 1, 2, w, 0.0f, v));
    near(v[1], 8 / sqrt(12.5), 1e-6);
}

static void test_kernels_ref_swiglu_one_row(void **state)
{
    (void)state;
    /* hidden 2, ffn 2, x = (1, -1):
     * gate = I -> g = (1, -1); up = [[2,1],[1,1]] -> u = (1, 0);
     * h = (silu(1) * 1, silu(-1) * 0); down = [[1,2],[3,4]] -> y = (h0, 3 h0) */
    const float x[2] = {1, -1}, g[4] = {1, 0, 0, 1}, u[4] = {2, 1, 1, 1}, d[4] = {1, 2, 3, 4};
    float y[2];
    ok(epm_ref_expert_ffn(x, 1, 2, 2, g, u, d, y));
    near(y[0], silu(1), 1e-6);
    near(y[1], 3 * silu(1), 1e-6);
    near(silu(1), 0.7310585786, 1e-9); /* the hand value */
}

static void test_kernels_ref_grouped_matches_per_expert(void **state)
{
    (void)state;
    enum { H = 5, F = 3, E = 3, N = 6 };
    uint64_t s = 11;
    float *x = tu_rnd(N * H, &s), *w = tu_rnd((size_t)E * 3 * F * H, &s);
    const float *g[E], *u[E], *d[E];
    for (int e = 0; e < E; e++)
        g[e] = w + (size_t)e * 3 * F * H, u[e] = g[e] + F * H, d[e] = u[e] + F * H;
    g[1] = u[1] = d[1] = NULL; /* expert 1 has no rows and is not loaded */
    const int64_t off[E + 1] = {0, 2, 2, N};
    float y[N * H], want[N * H];
    ok(epm_ref_grouped_ffn(x, off, E, H, F, g, u, d, y));
    ok(epm_ref_expert_ffn(x, 2, H, F, g[0], u[0], d[0], want));
    ok(epm_ref_expert_ffn(x + 2 * H, 4, H, F, g[2], u[2], d[2], want + 2 * H));
    assert_memory_equal(y, want, sizeof y);
    /* rows for an expert without weights, and offsets that go backwards */
    const int64_t bad1[E + 1] = {0, 2, 3, N}, bad2[E + 1] = {0, 3, 2, N};
    assert_int_equal(epm_ref_grouped_ffn(x, bad1, E, H, F, g, u, d, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 1"));
    assert_int_equal(epm_ref_grouped_ffn(x, bad2, E, H, F, g, u, d, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "offsets[2]"));
    epm_clear_error();
    free(x), free(w);
}

static void test_kernels_ref_rope(void **state)
{
    (void)state;
    uint64_t s = 3;
    float *v = tu_rnd(2 * 8, &s), orig[16];
    memcpy(orig, v, sizeof orig);
    int32_t pos0 = 0, pos7 = 7;
    ok(epm_ref_rope(v, 1, 2, 8, &pos0, 10000.0));
    assert_memory_equal(v, orig, sizeof orig); /* position 0 is the identity */
    ok(epm_ref_rope(v, 1, 2, 8, &pos7, 10000.0));
    int moved = 0;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++) { /* each (j, j + hd/2) pair keeps its length */
            near(hypot(orig[h * 8 + j], orig[h * 8 + j + 4]), hypot(v[h * 8 + j], v[h * 8 + j + 4]), 1e-5);
            moved |= fabs(v[h * 8 + j] - orig[h * 8 + j]) > 1e-3;
        }
    assert_true(moved);
    /* head dim 2: frequency theta^0 = 1, so position 1 turns (1, 0) by one radian */
    float p[2] = {1, 0};
    int32_t pos1 = 1;
    ok(epm_ref_rope(p, 1, 1, 2, &pos1, 10000.0));
    near(p[0], cos(1.0), 1e-6);
    near(p[1], sin(1.0), 1e-6);
    /* rotations compose: 3 then 4 equals 7 */
    float a[8], b[8];
    memcpy(a, orig, sizeof a), memcpy(b, orig, sizeof b);
    int32_t p3 = 3, p4 = 4;
    ok(epm_ref_rope(a, 1, 1, 8, &p3, 10000.0));
    ok(epm_ref_rope(a, 1, 1, 8, &p4, 10000.0));
    ok(epm_ref_rope(b, 1, 1, 8, &pos7, 10000.0));
    for (int i = 0; i < 8; i++)
        near(a[i], b[i], 1e-5);
    free(v);
}

static void test_kernels_ref_attention_causal(void **state)
{
    (void)state;
    enum { T = 5, KV = 1, H = 2, D = 4 };
    uint64_t s = 4;
    float *kc = tu_rnd(T * KV * D, &s), *vc = tu_rnd(T * KV * D, &s), *q = tu_rnd(3 * H * D, &s);
    float out1[3 * H * D], out2[3 * H * D], probs[H * 3 * T];
    const int32_t pos[3] = {0, 1, 2}; /* a prefill of three rows */
    ok(epm_ref_attention(q, 3, pos, kc, vc, T, H, KV, D, out1, probs));
    /* changing key/value 2 leaves rows at positions 0 and 1 alone, not row 2 */
    kc[2 * D] += 5, vc[2 * D] += 5;
    ok(epm_ref_attention(q, 3, pos, kc, vc, T, H, KV, D, out2, NULL));
    assert_memory_equal(out1, out2, 2 * H * D * sizeof(float));
    assert_memory_not_equal(out1 + 2 * H * D, out2 + 2 * H * D, H * D * sizeof(float));
    for (int h = 0; h < H; h++)
        for (int i = 0; i < 3; i++) {
            double sum = 0;
            for (int t = 0; t < T; t++) {
                sum += probs[(h * 3 + i) * T + t];
                if (t > i)
                    assert_true(probs[(h * 3 + i) * T + t] == 0.0f);
            }
            near(sum, 1, 1e-6);
        }
    /* position 0 sees only key 0: the output is value row 0 */
    for (int j = 0; j < D; j++)
        near(out2[j], vc[j], 1e-6);
    free(kc), free(vc), free(q);
}

static void test_kernels_ref_attention_gqa_and_uniform(void **state)
{
    (void)state;
    enum { T = 4, KV = 2, H = 4, D = 2 };
    float kc[T * KV * D], vc[T * KV * D], q[H * D], out[H * D];
    uint64_t s = 9;
    for (int i = 0; i < T * KV * D; i++)
        kc[i] = (float)(2 * epm_rand_unit(&s) - 1);
    /* kv head 0 holds values 3, kv head 1 values 7 + t: heads 0-1 must read
     * kv head 0 and heads 2-3 kv head 1 (group = heads / kv_heads) */
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++)
            vc[(t * KV + 0) * D + j] = 3, vc[(t * KV + 1) * D + j] = 7 + (float)t;
    memset(q, 0, sizeof q); /* equal scores: the output is the mean of V */
    int32_t pos = 3;
    ok(epm_ref_attention(q, 1, &pos, kc, vc, T, H, KV, D, out, NULL));
    for (int j = 0; j < D; j++) {
        near(out[0 * D + j], 3, 1e-6);
        near(out[1 * D + j], 3, 1e-6);
        near(out[2 * D + j], 8.5, 1e-6); /* mean of 7, 8, 9, 10 */
        near(out[3 * D + j], 8.5, 1e-6);
    }
    pos = 1; /* only keys 0..1: mean of 7, 8 */
    ok(epm_ref_attention(q, 1, &pos, kc, vc, T, H, KV, D, out, NULL));
    near(out[2 * D], 7.5, 1e-6);
}

static void test_kernels_ref_softmax(void **state)
{
    (void)state;
    float x[2] = {0, (float)log(3.0)};
    ok(epm_ref_softmax(x, 1, 2, x));
    near(x[0], 0.25, 1e-7);
    near(x[1], 0.75, 1e-7);
    float big[3] = {1000, 1000, -1000}; /* no overflow: the max is subtracted */
    ok(epm_ref_softmax(big, 1, 3, big));
    near(big[0], 0.5, 1e-7);
    near(big[1], 0.5, 1e-7);
    near(big[2], 0, 1e-30);
    float one = 42;
    ok(epm_ref_softmax(&one, 1, 1, &one));
    assert_true(one == 1.0f);
}

static void test_kernels_ref_topk_ties(void **state)
{
    (void)state;
    const float s[4] = {1, 3, 3, 2};
    int32_t ids[4];
    float v[4];
    ok(epm_ref_topk(s, 4, 2, ids, v));
    assert_int_equal(ids[0], 1); /* 3 at 1 and 2: the lower index first */
    assert_int_equal(ids[1], 2);
    assert_true(v[0] == 3 && v[1] == 3);
    ok(epm_ref_topk(s, 4, 4, ids, v));
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 0);
    const float eq[3] = {5, 5, 5};
    ok(epm_ref_topk(eq, 3, 3, ids, v));
    for (int j = 0; j < 3; j++)
        assert_int_equal(ids[j], j);
}

static void test_kernels_ref_topk_p(void **state)
{
    (void)state;
    const float p[4] = {0.15f, 0.5f, 0.05f, 0.3f};
    int32_t ids[4];
    float v[4];
    topk_p(p, 4, 4, 0.7f, ids, v); /* 0.5 < 0.7, 0.8 >= 0.7: two */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], -1);
    assert_int_equal(ids[3], -1);
    assert_true(v[2] == 0 && v[3] == 0);
    near(v[0], 0.5, 1e-6);
    near(v[1], 0.3, 1e-6);
    topk_p(p, 4, 4, 0.5f, ids, v); /* the top expert alone reaches p */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], -1);
    topk_p(p, 4, 4, 0.01f, ids, v); /* always at least one */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], -1);
    topk_p(p, 4, 4, 1.0f, ids, v); /* p = 1 keeps all k */
    assert_int_equal(ids[2], 0);
    assert_int_equal(ids[3], 2);
    topk_p(p, 4, 2, 0.99f, ids, v); /* never more than k */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
}

static void test_kernels_ref_router(void **state)
{
    (void)state;
    /* logits (0, ln 3, ln 2, 0): softmax (1, 3, 2, 1) / 7 */
    const float l[4] = {0, (float)log(3.0), (float)log(2.0), 0};
    int32_t ids[2];
    float w[2];
    assert_int_equal(router(l, 1, 4, 2, 0, 0.0f, 0, ids, w), EPM_OK);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    near(w[0], 3.0 / 7, 1e-6);
    near(w[1], 2.0 / 7, 1e-6);
    assert_int_equal(router(l, 1, 4, 2, 0, 0.0f, 1, ids, w), EPM_OK); /* renormalised: 3/5, 2/5 */
    near(w[0], 0.6, 1e-6);
    near(w[1], 0.4, 1e-6);
    assert_int_equal(router(l, 1, 4, 2, 0, 0.4f, 1, ids, w), EPM_OK); /* 3/7 >= 0.4: one expert, weight 1 */
    assert_int_equal(ids[1], -1);
    near(w[0], 1, 1e-7);
    /* sigmoid scores: logits 0 and 0 tie at 0.5, the lower index first */
    int32_t i4[4];
    float w4[4];
    assert_int_equal(router(l, 1, 4, 4, 1, 0.0f, 0, i4, w4), EPM_OK);
    assert_int_equal(i4[2], 0);
    assert_int_equal(i4[3], 3);
    near(w4[0], 0.75, 1e-6); /* sigmoid(ln 3) = 3/4 */
    assert_int_equal(router(l, 1, 4, 5, 0, 0.0f, 0, i4, w4), EPM_ERR_INVALID_ARG);
    assert_int_equal(router(l, 1, 4, 2, 1, 0.5f, 0, i4, w4), EPM_ERR_INVALID_ARG);
    epm_clear_error();
}

static void test_kernels_ref_route_permute_unpermute(void **state)
{
    (void)state;
    /* tokens: 0 -> (1, 0), 1 -> (1, none), 2 -> (0, 1); 3 experts */
    const int32_t ids[6] = {1, 0, 1, -1, 0, 1};
    int64_t off[4];
    int32_t src[6], row_of[6];
    assert_int_equal(epm_ref_route(ids, 3, 2, 3, off, src, row_of), EPM_OK);
    const int64_t want_off[4] = {0, 2, 5, 5};
    const int32_t want_src[5] = {0, 2, 0, 1, 2}, want_of[6] = {2, 0, 3, -1, 1, 4};
    assert_memory_equal(off, want_off, sizeof want_off);
    assert_memory_equal(src, want_src, sizeof want_src);
    assert_memory_equal(row_of, want_of, sizeof want_of);

    /* permute then un-permute with weights summing to 1 and an identity
     * "expert" gives the input back */
    const float x[6] = {1, 2, 3, 4, 5, 6}, w[6] = {0.25f, 0.75f, 1, 0, 0.5f, 0.5f};
    float px[10], out[6];
    ok(epm_ref_permute(x, 2, src, 5, px));
    assert_true(px[2] == 5 && px[3] == 6 && px[6] == 3); /* rows 1 (token 2) and 3 (token 1) */
    ok(epm_ref_unpermute(px, 2, row_of, w, 3, 2, out));
    for (int i = 0; i < 6; i++)
        near(out[i], x[i], 1e-7);

    const int32_t bad[2] = {0, 3};
    assert_int_equal(epm_ref_route(bad, 1, 2, 3, off, src, row_of), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "slot 1"));
    epm_clear_error();
}

static void test_kernels_ref_convert(void **state)
{
    (void)state;
    /* 1 + 2^-8 is halfway between two bf16 values: to even (1.0); 1 + 3 * 2^-8 to 1 + 2^-6 */
    const float f[6] = {1.0f, -2.5f, 1.00390625f, 1.01171875f, 65520.0f, NAN};
    uint16_t b[6], h[6];
    float back[6];
    ok(epm_ref_convert(f, EPM_DTYPE_F32, 6, EPM_DTYPE_BF16, b));
    assert_int_equal(b[0], 0x3f80);
    assert_int_equal(b[1], 0xc020);
    assert_int_equal(b[2], 0x3f80);
    assert_int_equal(b[3], 0x3f82);
    assert_true((b[5] & 0x7f80) == 0x7f80 && (b[5] & 0x7f) != 0); /* NaN stays NaN */
    ok(epm_ref_convert(f, EPM_DTYPE_F32, 6, EPM_DTYPE_F16, h));
    assert_int_equal(h[0], 0x3c00);
    assert_int_equal(h[1], 0xc100);
    assert_int_equal(h[4], 0x7c00); /* 65520 rounds past the largest half: infinity */
    ok(epm_ref_convert(h, EPM_DTYPE_F16, 2, EPM_DTYPE_F32, back));
    assert_true(back[0] == 1.0f && back[1] == -2.5f);
    ok(epm_ref_convert(b, EPM_DTYPE_BF16, 4, EPM_DTYPE_F32, back));
    assert_true(back[2] == 1.0f && back[3] == 1.015625f);
    /* bf16 -> f16 through float32, in place (same width) */
    uint16_t v[1] = {0x4040}; /* bf16 3.0 */
    ok(epm_ref_convert(v, EPM_DTYPE_BF16, 1, EPM_DTYPE_F16, v));
    assert_int_equal(v[0], 0x4200); /* f16 3.0 */
    assert_int_equal(epm_ref_convert(f, EPM_DTYPE_F32, 2, EPM_DTYPE_I32, b), EPM_ERR_INVALID_ARG);
    float g[3] = {1.0f, -2.5f, 3.0f}; /* narrowing in place */
    ok(epm_ref_convert(g, EPM_DTYPE_F32, 3, EPM_DTYPE_BF16, g));
    const uint16_t *gb = (const uint16_t *)g;
    assert_true(gb[0] == 0x3f80 && gb[1] == 0xc020 && gb[2] == 0x4040);
    assert_int_equal(epm_ref_convert(g, EPM_DTYPE_BF16, 1, EPM_DTYPE_F32, g), EPM_ERR_INVALID_ARG); /* widening */
    epm_clear_error();
}

static void test_kernels_ref_silu_sigmoid(void **state)
{
    (void)state;
    const float x[4] = {0, 1, -1, 80};
    float y[4];
    ok(epm_ref_sigmoid(x, 4, y));
    near(y[0], 0.5, 1e-7);
    near(y[1], 0.7310585786, 1e-7);
    near(y[1] + y[2], 1, 1e-7); /* sigmoid(-x) = 1 - sigmoid(x) */
    near(y[3], 1, 1e-7);
    ok(epm_ref_silu(x, 4, y));
    near(y[0], 0, 1e-9);
    near(y[1], 0.7310585786, 1e-7);
    near(y[2], -0.2689414214, 1e-7);
    near(y[3], 80, 1e-4);
    float z[2] = {-100, 2};
    ok(epm_ref_silu(z, 2, z)); /* in place; large negative -> -0 side, finite */
    near(z[0], 0, 1e-30);
    near(z[1], 2 / (1 + exp(-2.0)), 1e-6);
}

static void test_kernels_ref_embed(void **state)
{
    (void)state;
    const float table[6] = {1, 2, 3, 4, 5, 6}; /* vocab 3, d 2 */
    const int32_t ids[3] = {2, 0, 2};
    float out[6];
    ok(epm_ref_embed(table, 3, 2, ids, 3, out));
    const float want[6] = {5, 6, 1, 2, 5, 6};
    assert_memory_equal(out, want, sizeof want);
    const int32_t bad[2] = {1, 3};
    assert_int_equal(epm_ref_embed(table, 3, 2, bad, 2, out), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "ids[1] = 3"));
    epm_clear_error();
}

/* OLMoE normalises the whole q projection, Qwen3 each head: different
 * results from one routine with different row widths. */
static void test_kernels_ref_rmsnorm_width(void **state)
{
    (void)state;
    const float x[4] = {1, 1, 3, 3}, w[4] = {1, 1, 1, 1}; /* one token, 2 heads of 2 */
    float whole[4], per_head[4];
    ok(epm_ref_rmsnorm(x, 1, 4, w, 0.0f, whole));
    ok(epm_ref_rmsnorm(x, 2, 2, w, 0.0f, per_head));
    near(whole[0], 1 / sqrt(5.0), 1e-6); /* mean square (1+1+9+9)/4 = 5 */
    near(per_head[0], 1, 1e-6);
    near(per_head[2], 1, 1e-6);
}

/* A decode step after a prefill sees the same keys as the prefill's last row:
 * the outputs agree; and a query at position p after a cache of p + 1 rows
 * equals the naive softmax(q K^T / sqrt(d)) V computed here. */
static void test_kernels_ref_attention_decode_matches_prefill(void **state)
{
    (void)state;
    enum { T = 6, KV = 2, H = 4, D = 3 };
    uint64_t s = 21;
    float *kc = tu_rnd(T * KV * D, &s), *vc = tu_rnd(T * KV * D, &s), *q = tu_rnd(T * H * D, &s);
    float pre[T * H * D], dec[H * D], probs[H * T];
    int32_t pos[T];
    for (int i = 0; i < T; i++)
        pos[i] = i;
    ok(epm_ref_attention(q, T, pos, kc, vc, T, H, KV, D, pre, NULL));
    int32_t last = T - 1;
    ok(epm_ref_attention(q + (T - 1) * H * D, 1, &last, kc, vc, T, H, KV, D, dec, probs));
    for (int j = 0; j < H * D; j++)
        near(dec[j], pre[(T - 1) * H * D + j], 1e-6);
    for (int h = 0; h < H; h++) {
        int kh = h / (H / KV);
        double sc[T], z = 0;
        for (int t = 0; t < T; t++) {
            sc[t] = 0;
            for (int j = 0; j < D; j++)
                sc[t] += q[((T - 1) * H + h) * D + j] * kc[(t * KV + kh) * D + j];
            sc[t] = exp(sc[t] / sqrt(D));
            z += sc[t];
        }
        for (int j = 0; j < D; j++) {
            double o = 0;
            for (int t = 0; t < T; t++)
                o += sc[t] / z * vc[(t * KV + kh) * D + j];
            near(dec[h * D + j], o, 1e-6);
        }
        near(probs[h * T + 2], sc[2] / z, 1e-6);
    }
    free(kc), free(vc), free(q);
}

static void test_kernels_ref_bad_arguments(void **state)
{
    (void)state;
    float x[8] = {0}, y[8];
    int32_t pos[1] = {4};
    assert_int_equal(epm_ref_rope(x, 1, 1, 3, pos, 10000.0), EPM_ERR_INVALID_ARG); /* odd head dim */
    assert_non_null(strstr(epm_last_error(), "head_dim = 3"));
    assert_int_equal(epm_ref_attention(x, 1, pos, x, x, 4, 1, 1, 2, y, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "pos[0] = 4"));
    pos[0] = 0;
    assert_int_equal(epm_ref_attention(x, 1, pos, x, x, 4, 3, 2, 2, y, NULL), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_ref_linear(x, 1, 0, x, NULL, 2, y), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_ref_linear(NULL, 1, 2, x, NULL, 2, y), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_ref_linear(NULL, 0, 2, x, NULL, 2, NULL), EPM_OK); /* no rows, nothing read */
    assert_int_equal(epm_ref_rmsnorm(x, 1, 2, x, -1.0f, y), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_ref_router(x, 1, 2, NULL, pos, y), EPM_ERR_INVALID_ARG);
    float nan_logit[2] = {0, NAN};
    int32_t id[1];
    assert_int_equal(router(nan_logit, 1, 2, 1, 0, 0, 0, id, y), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "logits[0][1] is NaN"));
    epm_clear_error();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_ref_linear_with_bias),
        cmocka_unit_test(test_kernels_ref_rmsnorm),
        cmocka_unit_test(test_kernels_ref_swiglu_one_row),
        cmocka_unit_test(test_kernels_ref_grouped_matches_per_expert),
        cmocka_unit_test(test_kernels_ref_rope),
        cmocka_unit_test(test_kernels_ref_attention_causal),
        cmocka_unit_test(test_kernels_ref_attention_gqa_and_uniform),
        cmocka_unit_test(test_kernels_ref_softmax),
        cmocka_unit_test(test_kernels_ref_topk_ties),
        cmocka_unit_test(test_kernels_ref_topk_p),
        cmocka_unit_test(test_kernels_ref_router),
        cmocka_unit_test(test_kernels_ref_route_permute_unpermute),
        cmocka_unit_test(test_kernels_ref_convert),
        cmocka_unit_test(test_kernels_ref_silu_sigmoid),
        cmocka_unit_test(test_kernels_ref_embed),
        cmocka_unit_test(test_kernels_ref_rmsnorm_width),
        cmocka_unit_test(test_kernels_ref_attention_decode_matches_prefill),
        cmocka_unit_test(test_kernels_ref_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
