/* checkasm-style: every fast op (BLAS) beside its C reference on the same
 * random and adversarial shapes, compared within a stated tolerance, plus
 * identities of the single-implementation helpers (RoPE, attention, top-k). */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "epmoe/model.h"
#include "ops.h"


/* float32 sums of up to a few thousand products: BLAS reorders them, so allow
 * 1e-5 of the largest magnitude (plus 1e-6 for outputs near zero) */
static int close_enough(const float *a, const float *b, size_t n, double *worst)
{
    double m = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(b[i]));
        e = fmax(e, fabs((double)a[i] - b[i]));
    }
    *worst = e;
    return e <= 1e-5 * m + 1e-6;
}

static void test_ops_linear_blas_vs_ref(void **state)
{
    (void)state;
    const epm_ops *ref = epm_ops_ref(), *fast = epm_ops_blas();
    const int shapes[][3] = {{0, 8, 8}, {1, 1, 1}, {1, 3, 5}, {7, 67, 3}, {33, 64, 128}, {256, 1024, 96}};
    uint64_t s = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int n = shapes[k][0], in = shapes[k][1], out = shapes[k][2];
        float *x = tu_rnd((size_t)n * in, &s), *w = tu_rnd((size_t)out * in, &s), *b = tu_rnd((size_t)out, &s);
        float *y0 = calloc((size_t)(n ? n : 1) * out, sizeof *y0), *y1 = calloc((size_t)(n ? n : 1) * out, sizeof *y1);
        for (int bias = 0; bias < 2; bias++) {
            ref->linear(x, n, in, w, bias ? b : NULL, out, y0);
            fast->linear(x, n, in, w, bias ? b : NULL, out, y1);
            double e;
            if (!close_enough(y1, y0, (size_t)n * out, &e)) {
                print_error("linear %dx%d->%d bias %d: max error %g\n", n, in, out, bias, e);
                fail();
            }
        }
        free(x), free(w), free(b), free(y0), free(y1);
    }
}

static void test_ops_swiglu_blas_vs_ref(void **state)
{
    (void)state;
    const epm_ops *ref = epm_ops_ref(), *fast = epm_ops_blas();
    const int shapes[][3] = {{0, 16, 8}, {1, 1, 1}, {5, 3, 7}, {17, 67, 45}, {64, 128, 256}};
    uint64_t s = 2;
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int n = shapes[k][0], h = shapes[k][1], f = shapes[k][2];
        float *x = tu_rnd((size_t)n * h, &s), *g = tu_rnd((size_t)f * h, &s), *u = tu_rnd((size_t)f * h, &s);
        float *d = tu_rnd((size_t)h * f, &s);
        float *scr = malloc((size_t)epm_swiglu_scratch(n ? n : 1, h, f) * sizeof *scr);
        float *y0 = calloc((size_t)(n ? n : 1) * h, sizeof *y0), *y1 = calloc((size_t)(n ? n : 1) * h, sizeof *y1);
        ref->swiglu(x, n, h, f, g, u, d, scr, y0);
        fast->swiglu(x, n, h, f, g, u, d, scr, y1);
        double e;
        if (!close_enough(y1, y0, (size_t)n * h, &e)) {
            print_error("swiglu %d rows %d->%d: max error %g\n", n, h, f, e);
            fail();
        }
        free(x), free(g), free(u), free(d), free(scr), free(y0), free(y1);
    }
}

static void test_ops_comparator_catches_a_wrong_result(void **state)
{
    (void)state;
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4};
    double e;
    assert_true(close_enough(a, b, 4, &e));
    a[2] += 1e-3f; /* what a wrong fast path would look like */
    assert_false(close_enough(a, b, 4, &e));
}

static void test_ops_swiglu_by_hand(void **state)
{
    (void)state;
    /* hidden 1, ffn 1: y = down * silu(gate * x) * (up * x) */
    float x = 2, g = 0.5f, u = 3, d = -1, scr[2], y;
    epm_ops_ref()->swiglu(&x, 1, 1, 1, &g, &u, &d, scr, &y);
    double want = -1.0 * (1.0 / (1.0 + exp(-1.0))) * 6.0;
    assert_true(fabs(y - want) < 1e-6);
}

static void test_ops_rmsnorm(void **state)
{
    (void)state;
    float x[4] = {1, -1, 1, -1}, w[4] = {1, 2, 3, 4}, y[4];
    epm_ops_ref()->rmsnorm(x, 1, 4, w, 0.0f, y);
    for (int i = 0; i < 4; i++)
        assert_true(fabs(y[i] - w[i] * x[i]) < 1e-6);
}

static void test_rope_identities(void **state)
{
    (void)state;
    uint64_t s = 3;
    float *v = tu_rnd(2 * 8, &s), orig[16];
    memcpy(orig, v, sizeof orig);
    int32_t pos0[1] = {0}, pos7[1] = {7};
    epm_rope(v, 1, 2, 8, pos0, 10000.0);
    assert_memory_equal(v, orig, sizeof orig); /* position 0 rotates by nothing */
    epm_rope(v, 1, 2, 8, pos7, 10000.0);
    for (int h = 0; h < 2; h++) { /* rotation keeps each pair's length */
        for (int j = 0; j < 4; j++) {
            double a = hypot(orig[h * 8 + j], orig[h * 8 + j + 4]), b = hypot(v[h * 8 + j], v[h * 8 + j + 4]);
            assert_true(fabs(a - b) < 1e-5);
        }
    }
    free(v);
}

static void test_attention_causal_and_gqa(void **state)
{
    (void)state;
    enum { T = 5, KV = 1, H = 2, D = 4 };
    uint64_t s = 4;
    float *kc = tu_rnd(T * KV * D, &s), *vc = tu_rnd(T * KV * D, &s), *q = tu_rnd(H * D, &s);
    float out1[H * D], out2[H * D], probs[H * T];
    int32_t p2[1] = {2};
    epm_attention(q, 1, p2, kc, vc, H, KV, D, out1, probs, T);
    /* a later key never changes an earlier query */
    kc[4 * D] += 5, vc[4 * D] += 5;
    epm_attention(q, 1, p2, kc, vc, H, KV, D, out2, NULL, T);
    assert_memory_equal(out1, out2, sizeof out1);
    for (int h = 0; h < H; h++) {
        double sum = 0;
        for (int t = 0; t < T; t++)
            sum += probs[h * T + t];
        assert_true(fabs(sum - 1) < 1e-6);
        assert_true(probs[h * T + 3] == 0 && probs[h * T + 4] == 0);
    }
    /* equal scores (zero query) average the values */
    float zq[H * D] = {0};
    epm_attention(zq, 1, p2, kc, vc, H, KV, D, out1, NULL, T);
    for (int j = 0; j < D; j++)
        assert_true(fabs(out1[j] - (vc[j] + vc[D + j] + vc[2 * D + j]) / 3) < 1e-6);
    free(kc), free(vc), free(q);
}

static void test_topk_ties(void **state)
{
    (void)state;
    float sc[5] = {0.1f, 0.5f, 0.5f, 0.2f, 0.5f};
    int32_t ids[3];
    float v[3];
    epm_topk(sc, 5, 3, ids, v);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 4);
}

/* DeepSeek-V3's group limit, by hand: 4 groups of 3, a group's score the sum
 * of its best two, the best 2 groups kept */
static void test_group_limit(void **state)
{
    (void)state;
    float sc[12] = {0.9f, 0.0f, 0.0f, /* group 0: 0.9 */
                    0.5f, 0.5f, 0.1f, /* group 1: 1.0 */
                    0.4f, 0.3f, 0.3f, /* group 2: 0.7 */
                    0.2f, 0.7f, 0.2f /* group 3: 0.9, ties group 0: the lower group wins */};
    float keep[12], gs[12]; /* scratch for up to 12 groups */
    memcpy(keep, sc, sizeof sc);
    epm_group_limit(keep, 12, 4, 2, 0, gs);
    for (int e = 0; e < 12; e++) {
        int kept = e < 6; /* groups 0 and 1 */
        if (kept)
            assert_true(keep[e] == sc[e]);
        else
            assert_true(isinf(keep[e]) && keep[e] < 0);
    }
    /* the best single expert (0.9, group 0) survives though group 1 outranks its group */
    int32_t ids[2];
    float v[2];
    epm_topk(keep, 12, 2, ids, v);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 3);
    /* keeping every group changes nothing; one expert per group ranks by itself */
    memcpy(keep, sc, sizeof sc);
    epm_group_limit(keep, 12, 4, 4, 0, gs);
    assert_memory_equal(keep, sc, sizeof sc);
    memcpy(keep, sc, sizeof sc);
    epm_group_limit(keep, 12, 12, 1, 0, gs);
    for (int e = 0; e < 12; e++)
        assert_true(e == 0 ? keep[e] == 0.9f : isinf(keep[e]));
    /* negative scores (a negative correction bias): a group of them loses to any other */
    float neg[4] = {-0.2f, -0.1f, 0.05f, 0.0f};
    epm_group_limit(neg, 4, 2, 1, 0, gs);
    assert_true(isinf(neg[0]) && isinf(neg[1]) && neg[2] == 0.05f);
    /* DeepSeek-V2 scores a group by its best expert (0.9, 0.5, 0.4, 0.7):
     * groups 0 and 3 now, where the sums kept 0 and 1 */
    memcpy(keep, sc, sizeof sc);
    epm_group_limit(keep, 12, 4, 2, 1, gs);
    for (int e = 0; e < 12; e++) {
        int kept = e < 3 || e >= 9; /* groups 0 and 3 */
        assert_true(kept ? keep[e] == sc[e] : isinf(keep[e]));
    }
}

/* YaRN's frequencies, by hand: dim 8, base 1e4, 64 original positions,
 * factor 4: the correction range is [floor(-0.50), ceil(1.01)] = [0, 2], so
 * the ramp over j = 0..3 is 0, 0.5, 1, 1 and the frequencies are the plain
 * ones times 1, 0.5 + 0.5 / 4, 1/4, 1/4 */
static void test_rope_yarn(void **state)
{
    (void)state;
    epm_model_config c;
    memset(&c, 0, sizeof c);
    c.rope_theta = 1e4;
    double inv[4], cs, sm, plain[4];
    epm_model_rope_freqs(&c, 8, plain, &cs, &sm);
    assert_true(cs == 1 && sm == 1);
    for (int j = 0; j < 4; j++)
        assert_true(fabs(plain[j] - pow(1e4, -2.0 * j / 8)) < 1e-15);
    c.yarn_factor = 4;
    c.yarn_original_max = 64;
    c.yarn_beta_fast = 32;
    c.yarn_beta_slow = 1;
    c.yarn_attn_factor = -1;
    c.yarn_truncate = 1;
    epm_model_rope_freqs(&c, 8, inv, &cs, &sm);
    const double want[4] = {1, 0.625, 0.25, 0.25};
    for (int j = 0; j < 4; j++)
        assert_true(fabs(inv[j] - plain[j] * want[j]) < 1e-15 * plain[j]);
    assert_true(fabs(cs - (0.1 * log(4) + 1)) < 1e-15); /* no mscale pair: get_mscale(factor) */
    assert_true(sm == 1);                                  /* not MLA */
    /* DeepSeek's pair: the ratio on cos and sin, mscale_all_dim's square on the softmax */
    c.yarn_mscale = 1.0;
    c.yarn_mscale_all_dim = 0.8;
    c.mla = 1;
    epm_model_rope_freqs(&c, 8, inv, &cs, &sm);
    double m1 = 0.1 * log(4) + 1, m8 = 0.08 * log(4) + 1;
    assert_true(fabs(cs - m1 / m8) < 1e-15);
    assert_true(fabs(sm - m8 * m8) < 1e-15);
    /* DeepSeek-V2's code always takes the ratio, get_mscale(f, 0) being 1 */
    c.arch = EPM_MODEL_DEEPSEEKV2;
    c.yarn_mscale = 0.707;
    c.yarn_mscale_all_dim = 0;
    epm_model_rope_freqs(&c, 8, inv, &cs, &sm);
    assert_true(fabs(cs - (0.0707 * log(4) + 1)) < 1e-15);
    assert_true(sm == 1); /* no mscale_all_dim: no softmax factor */
    c.arch = EPM_MODEL_DEEPSEEKV3;
    c.yarn_mscale = 1.0;
    c.yarn_mscale_all_dim = 0.8;
    /* without truncation the range is [0, 1.01]: j = 1 is (almost) all interpolated */
    c.yarn_truncate = 0;
    epm_model_rope_freqs(&c, 8, inv, &cs, &sm);
    assert_true(inv[1] < plain[1] * 0.26 && inv[0] == plain[0]);
    /* factor 1 is plain RoPE */
    c.yarn_factor = 1;
    c.yarn_truncate = 1;
    epm_model_rope_freqs(&c, 8, inv, &cs, &sm);
    for (int j = 0; j < 4; j++)
        assert_true(fabs(inv[j] - plain[j]) < 1e-15 * plain[j]);
    assert_true(cs == 1 && sm == 1);
    /* the kernel with plain frequencies and scale 1 is epm_rope, bit for bit */
    float a[16], b[16];
    for (int i = 0; i < 16; i++)
        a[i] = b[i] = (float)sin(i + 1.0);
    const int32_t pos[1] = {37};
    epm_rope(a, 1, 2, 8, pos, 1e4);
    epm_rope_freqs(b, 1, 2, 8, pos, plain, 1.0);
    assert_memory_equal(a, b, sizeof a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_linear_blas_vs_ref), cmocka_unit_test(test_ops_swiglu_blas_vs_ref),
        cmocka_unit_test(test_ops_comparator_catches_a_wrong_result), cmocka_unit_test(test_ops_swiglu_by_hand),
        cmocka_unit_test(test_ops_rmsnorm), cmocka_unit_test(test_rope_identities),
        cmocka_unit_test(test_attention_causal_and_gqa), cmocka_unit_test(test_topk_ties),
        cmocka_unit_test(test_group_limit),           cmocka_unit_test(test_rope_yarn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
