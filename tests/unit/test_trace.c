/* Trace readers and writers: the bundled fixtures, round trips through both
 * formats, and malformed files, each refused with an error naming the
 * tensor or field. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/trace.h"
#include "safetensors.h"

/* ---- independent builders for test files ---- */

typedef struct tspec {
    const char *name, *dtype;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t bytes;
} tspec;

static uint8_t filebuf[1 << 16];

/* A safetensors file from specs, written here by hand rather than through
 * the library's writer, so that the reader is checked against the format. */
static size_t st_build(const tspec *t, int n)
{
    char hdr[8192];
    size_t h = 0, off = 0;
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "{");
    for (int i = 0; i < n; i++) {
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                              t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].bytes);
        off += t[i].bytes;
    }
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
    assert_true(h < sizeof hdr);
    for (int b = 0; b < 8; b++)
        filebuf[b] = (uint8_t)((uint64_t)h >> (8 * b));
    memcpy(filebuf + 8, hdr, h);
    size_t p = 8 + h;
    for (int i = 0; i < n; i++) {
        assert_true(p + t[i].bytes <= sizeof filebuf);
        memcpy(filebuf + p, t[i].data, t[i].bytes);
        p += t[i].bytes;
    }
    return p;
}

/* A .npy file: magic, version, header length, the dict text padded with
 * spaces and '\n' to 16 bytes, then data. */
static size_t npy_build(int major, const char *dict, const void *data, size_t bytes)
{
    size_t pre = major == 1 ? 10 : 12;
    size_t n = strlen(dict);
    size_t total = (pre + n + 1 + 15) & ~(size_t)15;
    size_t hlen = total - pre;
    memcpy(filebuf, "\x93NUMPY", 6);
    filebuf[6] = (uint8_t)major;
    filebuf[7] = 0;
    for (size_t b = 0; b < (major == 1 ? 2u : 4u); b++)
        filebuf[8 + b] = (uint8_t)(hlen >> (8 * b));
    memcpy(filebuf + pre, dict, n);
    memset(filebuf + pre + n, ' ', hlen - n - 1);
    filebuf[total - 1] = '\n';
    assert_true(total + bytes <= sizeof filebuf);
    memcpy(filebuf + total, data, bytes);
    return total + bytes;
}

/* Parses buf, expects failure with status st and a detail containing each of the needles. */
static void expect_fail(size_t size, int experts, epm_status st, const char *needle1, const char *needle2)
{
    epm_trace *t = (epm_trace *)1;
    epm_clear_error();
    epm_status got = epm_trace_parse(filebuf, size, "bad.trace", experts, &t);
    if (got != st || !strstr(epm_last_error(), needle1) || (needle2 && !strstr(epm_last_error(), needle2)))
        fail_msg("expected status %d with '%s'%s%s, got %d: %s", st, needle1, needle2 ? " and " : "",
                 needle2 ? needle2 : "", got, epm_last_error());
    assert_null(t);
    assert_non_null(strstr(epm_last_error(), "bad.trace"));
}

static epm_trace *expect_ok(size_t size, int experts)
{
    epm_trace *t = NULL;
    epm_status st = epm_trace_parse(filebuf, size, "good.trace", experts, &t);
    if (st != EPM_OK)
        fail_msg("parse failed: %s", epm_last_error());
    return t;
}

/* two layers, 3 tokens, k = 2 */
static const int32_t ids0[6] = {0, 1, 2, 3, 1, -1};
static const int32_t ids1[6] = {3, 2, 0, -1, -1, -1};

/* ---- fixtures ---- */

static void check_fixture(const char *model, const int32_t first8[8])
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s/reference.safetensors", tu_fixtures(), model);
    epm_trace *t;
    epm_status st = epm_trace_load(path, 0, &t);
    if (st != EPM_OK)
        fail_msg("%s: %s", path, epm_last_error());
    assert_int_equal(epm_trace_layers(t), 4);
    assert_int_equal(epm_trace_tokens(t), 32);
    assert_int_equal(epm_trace_k(t), 2);
    assert_int_equal(epm_trace_experts(t), 8);
    assert_null(epm_trace_weights(t, 0));
    assert_null(epm_trace_seq_ids(t));
    assert_memory_equal(epm_trace_ids_const(t, 0), first8, 8 * sizeof(int32_t));
    /* Cross-check against the router's logits in the same file: the chosen
     * experts are the two largest logits, in descending order. */
    epm_safetensors *sf;
    assert_int_equal(epm_st_open(path, &sf), EPM_OK);
    for (int l = 0; l < 4; l++) {
        char nm[32];
        snprintf(nm, sizeof nm, "router_logits.%d", l);
        const epm_st_tensor *r = epm_st_find(sf, nm);
        assert_non_null(r);
        const float *lg = r->data;
        const int32_t *ids = epm_trace_ids_const(t, l);
        for (int i = 0; i < 32; i++) {
            int best = 0, second = -1;
            for (int e = 1; e < 8; e++) {
                if (lg[i * 8 + e] > lg[i * 8 + best]) {
                    second = best;
                    best = e;
                } else if (second < 0 || lg[i * 8 + e] > lg[i * 8 + second]) {
                    second = e;
                }
            }
            assert_int_equal(ids[i * 2], best);
            assert_int_equal(ids[i * 2 + 1], second);
        }
    }
    epm_st_close(sf);
    /* experts given: same trace; too few: the offending id is named */
    epm_trace *t8;
    assert_int_equal(epm_trace_load(path, 8, &t8), EPM_OK);
    assert_memory_equal(epm_trace_ids_const(t8, 3), epm_trace_ids_const(t, 3), 64 * sizeof(int32_t));
    epm_trace_destroy(t8);
    epm_trace_destroy(t);
    assert_int_equal(epm_trace_load(path, 6, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "topk_ids."));
    assert_non_null(strstr(epm_last_error(), "outside [0, 6)"));
}

static void test_trace_load_fixtures(void **state)
{
    (void)state;
    check_fixture("mixtral-tiny", (const int32_t[8]){6, 3, 6, 3, 6, 2, 6, 0});
    check_fixture("olmoe-tiny", (const int32_t[8]){6, 3, 7, 1, 3, 0, 7, 3});
    check_fixture("qwen2moe-tiny", (const int32_t[8]){6, 1, 6, 0, 1, 7, 1, 5});
}

static void test_trace_load_missing_file(void **state)
{
    (void)state;
    epm_trace *t;
    assert_int_equal(epm_trace_load(tu_path("nope.safetensors"), 0, &t), EPM_ERR_IO);
    assert_non_null(strstr(epm_last_error(), "nope.safetensors"));
    assert_null(t);
}

/* ---- valid hand-made files ---- */

static void test_trace_safetensors_optional_tensors(void **state)
{
    (void)state;
    const float w0[6] = {0.75f, 0.25f, 0.5f, 0.5f, 1, 0};
    const uint16_t w1_bf16[6] = {0x3f40, 0x3e80, 0x3f80, 0, 0x3f80, 0}; /* 0.75 0.25 1 0 1 0 */
    const int64_t seq[3] = {0, 0, 7};
    const int64_t pass[3] = {4, -1, 0}; /* (-1: a token that never ran) */
    const int64_t ids1_64[6] = {3, 2, 0, -1, -1, -1};
    tspec sp[] = {
        {"logits", "F32", 1, {2}, w0, 8},
        {"topk_ids.0", "I32", 2, {3, 2}, ids0, sizeof ids0},
        {"topk_ids.1", "I64", 2, {3, 2}, ids1_64, sizeof ids1_64},
        {"topk_weights.0", "F32", 2, {3, 2}, w0, sizeof w0},
        {"topk_weights.1", "BF16", 2, {3, 2}, w1_bf16, sizeof w1_bf16},
        {"seq_ids", "I64", 1, {3}, seq, sizeof seq},
        {"pass_ids", "I64", 1, {3}, pass, sizeof pass},
    };
    epm_trace *t = expect_ok(st_build(sp, 7), 0);
    assert_int_equal(epm_trace_layers(t), 2);
    assert_int_equal(epm_trace_experts(t), 4);
    assert_memory_equal(epm_trace_ids_const(t, 0), ids0, sizeof ids0);
    assert_memory_equal(epm_trace_ids_const(t, 1), ids1, sizeof ids1);
    assert_true(epm_trace_weights(t, 0)[0] == 0.75f);
    assert_true(epm_trace_weights(t, 1)[0] == 0.75f && epm_trace_weights(t, 1)[1] == 0.25f);
    assert_true(epm_trace_weights(t, 1)[2] == 1.0f);
    assert_int_equal(epm_trace_seq_ids(t)[2], 7);
    assert_int_equal(epm_trace_seq_of(t, 2), 7);
    assert_int_equal(epm_trace_pass_ids(t)[0], 4);
    assert_int_equal(epm_trace_pass_ids(t)[1], -1);

    /* round trip through the library's writer */
    const char *p = tu_path("rt.safetensors");
    assert_int_equal(epm_trace_save(t, p), EPM_OK);
    epm_trace *u;
    assert_int_equal(epm_trace_load(p, 0, &u), EPM_OK);
    for (int l = 0; l < 2; l++) {
        assert_memory_equal(epm_trace_ids_const(u, l), epm_trace_ids_const(t, l), sizeof ids0);
        assert_memory_equal(epm_trace_weights(u, l), epm_trace_weights(t, l), sizeof w0);
    }
    assert_memory_equal(epm_trace_seq_ids(u), epm_trace_seq_ids(t), 3 * sizeof(int32_t));
    assert_memory_equal(epm_trace_pass_ids(u), epm_trace_pass_ids(t), 3 * sizeof(int32_t));
    epm_trace_destroy(u);
    /* a slice keeps its tokens' passes; the setter refuses below -1 and NULL drops them */
    assert_int_equal(epm_trace_slice(t, 1, 3, &u), EPM_OK);
    assert_int_equal(epm_trace_pass_ids(u)[0], -1);
    assert_int_equal(epm_trace_pass_ids(u)[1], 0);
    const int32_t bad[2] = {0, -2};
    assert_int_equal(epm_trace_set_pass_ids(u, bad), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "pass_ids[1] = -2 is below -1"));
    /* the passes plan eval times: distinct ids >= 0 (4 and 0 in t; 0 in u's [-1, 0]; none without) */
    int64_t np = -1;
    assert_int_equal(epm_trace_passes(t, &np), EPM_OK);
    assert_int_equal(np, 2);
    assert_int_equal(epm_trace_passes(u, &np), EPM_OK);
    assert_int_equal(np, 1);
    assert_int_equal(epm_trace_set_pass_ids(u, NULL), EPM_OK);
    assert_null(epm_trace_pass_ids(u));
    assert_int_equal(epm_trace_passes(u, &np), EPM_OK);
    assert_int_equal(np, 0);
    epm_trace_destroy(u);
    epm_trace_destroy(t);
}

static void test_trace_f16_weights(void **state)
{
    (void)state;
    /* 1, 0.5, the smallest subnormal 2^-24, -2, 65504 (largest finite), 0 */
    const uint16_t h[6] = {0x3c00, 0x3800, 0x0001, 0xc000, 0x7bff, 0x0000};
    tspec sp[] = {{"topk_ids.0", "I32", 2, {3, 2}, ids0, sizeof ids0},
                  {"topk_weights.0", "F16", 2, {3, 2}, h, sizeof h}};
    epm_trace *t = expect_ok(st_build(sp, 2), 0);
    const float *w = epm_trace_weights(t, 0);
    assert_true(w[0] == 1.0f && w[1] == 0.5f && w[2] == ldexpf(1.0f, -24) && w[3] == -2.0f);
    assert_true(w[4] == 65504.0f && w[5] == 0.0f);
    epm_trace_destroy(t);
}

static void test_trace_npy_versions_and_dtypes(void **state)
{
    (void)state;
    const int64_t ids64[12] = {0, 1, 2, 3, 1, -1, 3, 2, 0, -1, -1, -1};
    int32_t ids32[12];
    for (int i = 0; i < 12; i++)
        ids32[i] = (int32_t)ids64[i];
    const char *d4 = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 2), }";
    const char *d8 = "{\"shape\": (2,3,2), \"descr\": \"|i8\", \"fortran_order\": False}";
    for (int major = 1; major <= 3; major++) {
        epm_trace *t = expect_ok(npy_build(major, d4, ids32, sizeof ids32), 0);
        assert_int_equal(epm_trace_layers(t), 2);
        assert_int_equal(epm_trace_tokens(t), 3);
        assert_int_equal(epm_trace_k(t), 2);
        assert_int_equal(epm_trace_experts(t), 4);
        assert_memory_equal(epm_trace_ids_const(t, 1), ids1, sizeof ids1);
        epm_trace_destroy(t);
        t = expect_ok(npy_build(major, d8, ids64, sizeof ids64), 5);
        assert_int_equal(epm_trace_experts(t), 5);
        assert_memory_equal(epm_trace_ids_const(t, 0), ids0, sizeof ids0);
        epm_trace_destroy(t);
    }
}

static void test_trace_npy_round_trip(void **state)
{
    (void)state;
    epm_trace *t;
    assert_int_equal(epm_trace_create(3, 5, 3, 9, &t), EPM_OK);
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 3; j++)
                epm_trace_ids(t, l)[i * 3 + j] = (i + j == 6) ? -1 : (l + 2 * i + 3 * j) % 9;
    const char *p = tu_path("rt.npy");
    assert_int_equal(epm_trace_save_npy(t, p), EPM_OK);
    epm_trace *u;
    assert_int_equal(epm_trace_load(p, 9, &u), EPM_OK);
    assert_int_equal(epm_trace_layers(u), 3);
    assert_int_equal(epm_trace_tokens(u), 5);
    for (int l = 0; l < 3; l++)
        assert_memory_equal(epm_trace_ids_const(u, l), epm_trace_ids_const(t, l), 15 * sizeof(int32_t));
    /* the header is what NumPy writes: 64-byte aligned data, '\n' last */
    char *buf;
    size_t n;
    assert_int_equal(epm_read_file(p, 1 << 20, &buf, &n), EPM_OK);
    size_t data_at = n - 3 * 5 * 3 * 4;
    assert_int_equal(data_at % 64, 0);
    assert_int_equal(buf[data_at - 1], '\n');
    assert_non_null(strstr(buf + 10, "'shape': (3, 5, 3)"));
    epm_free(buf);
    epm_trace_destroy(u);
    epm_trace_destroy(t);
}

static void test_trace_zero_tokens(void **state)
{
    (void)state;
    const char *d = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 0, 2), }";
    epm_trace *t = expect_ok(npy_build(1, d, "", 0), 4);
    assert_int_equal(epm_trace_tokens(t), 0);
    epm_trace_destroy(t);
    expect_fail(npy_build(1, d, "", 0), 0, EPM_ERR_FORMAT, "every topk_ids slot is -1", NULL);
}

/* ---- malformed safetensors ---- */

static void test_trace_bad_safetensors_framing(void **state)
{
    (void)state;
    tspec sp[] = {{"topk_ids.0", "I32", 2, {3, 2}, ids0, sizeof ids0},
                  {"topk_ids.1", "I32", 2, {3, 2}, ids1, sizeof ids1}};
    size_t n = st_build(sp, 2);
    expect_fail(n - 4, 0, EPM_ERR_FORMAT, "topk_ids.1", "data_offsets");  /* truncated data */
    expect_fail(40, 0, EPM_ERR_FORMAT, "header length", NULL);           /* truncated header */
    filebuf[3] = 0x7f;                                                    /* length past EOF */
    expect_fail(n, 0, EPM_ERR_FORMAT, "header length", NULL);
    expect_fail(5, 0, EPM_ERR_FORMAT, "not a routing trace", NULL);
    memcpy(filebuf, "hello, world", 12);
    expect_fail(12, 0, EPM_ERR_FORMAT, "not a routing trace", NULL);
    tspec other[] = {{"logits", "F32", 1, {1}, ids0, 4}};
    expect_fail(st_build(other, 1), 0, EPM_ERR_FORMAT, "'topk_ids.0' is missing", NULL);
}

static void test_trace_bad_safetensors_content(void **state)
{
    (void)state;
    const int32_t k3[9] = {0, 1, 2, 0, 1, 2, 0, 1, 2};
    const int64_t big[6] = {0, 1, 2, 3, 1, (int64_t)1 << 33};
    const int32_t oob[6] = {0, 1, 2, 9, 1, -1};
    const int32_t hole[6] = {0, 1, -1, 3, 1, -1};
    const int32_t dup[6] = {0, 1, 2, 2, 1, -1};
    const int32_t neg[6] = {0, 1, -3, 1, 1, -1};
    const int32_t seqneg[3] = {0, -1, 1};
    const float nan6[6] = {0.5f, 0.5f, 1, 0, (float)NAN, 0};
    tspec base = {"topk_ids.0", "I32", 2, {3, 2}, ids0, sizeof ids0};

    tspec gap[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, ids1, sizeof ids1},
                   {"topk_ids.3", "I32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(gap, 3), 0, EPM_ERR_FORMAT, "'topk_ids.3' is present", "'topk_ids.2' is missing");
    tspec badnum[] = {base, {"topk_ids.01", "I32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(badnum, 2), 0, EPM_ERR_FORMAT, "topk_ids.01", "layer number");
    tspec kdiff[] = {base, {"topk_ids.1", "I32", 2, {3, 3}, k3, sizeof k3}};
    expect_fail(st_build(kdiff, 2), 0, EPM_ERR_FORMAT, "topk_ids.1", "shape[1]");
    tspec tdiff[] = {base, {"topk_ids.1", "I32", 2, {2, 2}, ids1, 16}};
    expect_fail(st_build(tdiff, 2), 0, EPM_ERR_FORMAT, "topk_ids.1", "shape[0]");
    tspec f32[] = {base, {"topk_ids.1", "F32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(f32, 2), 0, EPM_ERR_FORMAT, "topk_ids.1", "dtype");
    tspec dim3[] = {{"topk_ids.0", "I32", 3, {1, 3, 2}, ids0, sizeof ids0}};
    expect_fail(st_build(dim3, 1), 0, EPM_ERR_FORMAT, "topk_ids.0", "shape");
    tspec k0[] = {{"topk_ids.0", "I32", 2, {3, 0}, ids0, 0}};
    expect_fail(st_build(k0, 1), 0, EPM_ERR_FORMAT, "topk_ids.0", "k (experts per token) = 0");
    tspec ovf[] = {base, {"topk_ids.1", "I64", 2, {3, 2}, big, sizeof big}};
    expect_fail(st_build(ovf, 2), 0, EPM_ERR_FORMAT, "topk_ids.1[2][1] = 8589934592", "int32");
    tspec range[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, oob, sizeof oob}};
    expect_fail(st_build(range, 2), 8, EPM_ERR_FORMAT, "topk_ids.1[1][1] = 9", "outside [0, 8)");
    tspec trail[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, hole, sizeof hole}};
    expect_fail(st_build(trail, 2), 0, EPM_ERR_FORMAT, "topk_ids.1[1][1] = 3", "trailing");
    tspec twice[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, dup, sizeof dup}};
    expect_fail(st_build(twice, 2), 0, EPM_ERR_FORMAT, "topk_ids.1[1]", "expert 2 twice");
    tspec minus3[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, neg, sizeof neg}};
    expect_fail(st_build(minus3, 2), 0, EPM_ERR_FORMAT, "topk_ids.1[1][0] = -3", NULL);
    const int32_t none[6] = {-1, -1, -1, -1, -1, -1};
    tspec allneg[] = {{"topk_ids.0", "I32", 2, {3, 2}, none, sizeof none}};
    expect_fail(st_build(allneg, 1), 0, EPM_ERR_FORMAT, "cannot be inferred", NULL);
    epm_trace *t = expect_ok(st_build(allneg, 1), 4); /* all skipped is valid when experts is known */
    epm_trace_destroy(t);
    const int32_t huge[6] = {0, 1, 2, 3, 1 << 24, -1};
    tspec hugeid[] = {{"topk_ids.0", "I32", 2, {3, 2}, huge, sizeof huge}};
    expect_fail(st_build(hugeid, 1), 0, EPM_ERR_FORMAT, "topk_ids.0[2][0] = 16777216", "expert limit");
    expect_fail(st_build(hugeid, 1), 1 << 21, EPM_ERR_INVALID_ARG, "experts = 2097152", NULL);
    expect_fail(st_build(hugeid, 1), -1, EPM_ERR_INVALID_ARG, "experts = -1", NULL);

    tspec wpart[] = {base, {"topk_ids.1", "I32", 2, {3, 2}, ids1, sizeof ids1},
                     {"topk_weights.1", "F32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(wpart, 3), 0, EPM_ERR_FORMAT, "'topk_weights.0' is missing", NULL);
    tspec wextra[] = {base, {"topk_weights.0", "F32", 2, {3, 2}, ids1, sizeof ids1},
                      {"topk_weights.1", "F32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(wextra, 3), 0, EPM_ERR_FORMAT, "topk_weights.1", "no matching 'topk_ids.1'");
    tspec wtype[] = {base, {"topk_weights.0", "I32", 2, {3, 2}, ids1, sizeof ids1}};
    expect_fail(st_build(wtype, 2), 0, EPM_ERR_FORMAT, "topk_weights.0", "dtype");
    tspec wshape[] = {base, {"topk_weights.0", "F32", 2, {2, 3}, ids1, sizeof ids1}};
    expect_fail(st_build(wshape, 2), 0, EPM_ERR_FORMAT, "topk_weights.0", "shape[0]");
    tspec wnan[] = {base, {"topk_weights.0", "F32", 2, {3, 2}, nan6, sizeof nan6}};
    expect_fail(st_build(wnan, 2), 0, EPM_ERR_FORMAT, "topk_weights.0[2][0]", "not finite");
    tspec sneg[] = {base, {"seq_ids", "I32", 1, {3}, seqneg, sizeof seqneg}};
    expect_fail(st_build(sneg, 2), 0, EPM_ERR_FORMAT, "seq_ids[1] = -1", NULL);
    tspec sshape[] = {base, {"seq_ids", "I32", 1, {2}, seqneg, 8}};
    expect_fail(st_build(sshape, 2), 0, EPM_ERR_FORMAT, "seq_ids", "shape");
    tspec stype[] = {base, {"seq_ids", "F32", 1, {3}, seqneg, sizeof seqneg}};
    expect_fail(st_build(stype, 2), 0, EPM_ERR_FORMAT, "seq_ids", "dtype");
    const int32_t passneg[3] = {0, -2, 1};
    tspec pneg[] = {base, {"pass_ids", "I32", 1, {3}, passneg, sizeof passneg}};
    expect_fail(st_build(pneg, 2), 0, EPM_ERR_FORMAT, "pass_ids[1] = -2 is outside [-1, ", NULL);
    tspec pshape[] = {base, {"pass_ids", "I32", 2, {3, 1}, passneg, sizeof passneg}};
    expect_fail(st_build(pshape, 2), 0, EPM_ERR_FORMAT, "'pass_ids'", "shape");
    const int64_t passbig[3] = {0, (int64_t)1 << 31, 1};
    tspec pbig[] = {base, {"pass_ids", "I64", 1, {3}, passbig, sizeof passbig}};
    expect_fail(st_build(pbig, 2), 0, EPM_ERR_FORMAT, "pass_ids[1] = 2147483648", NULL);
}

/* ---- malformed .npy ---- */

static void test_trace_bad_npy(void **state)
{
    (void)state;
    int32_t ids[12] = {0, 1, 2, 3, 1, -1, 3, 2, 0, -1, -1, -1};
    int64_t ids64[12] = {0, 1, 2, 3, 1, -1, 3, 2, 0, -1, -1, -1};
#define DICT(descr, fo, shape) "{'descr': '" descr "', 'fortran_order': " fo ", 'shape': " shape ", }"
    expect_fail(npy_build(1, DICT("<i4", "True", "(2, 3, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT,
                "fortran_order", NULL);
    expect_fail(npy_build(1, DICT("<f4", "False", "(2, 3, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT, "descr",
                "'<f4'");
    expect_fail(npy_build(1, DICT(">i4", "False", "(2, 3, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT, "descr",
                "'>i4'");
    expect_fail(npy_build(1, DICT("<i2", "False", "(2, 3, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT, "descr", NULL);
    expect_fail(npy_build(1, DICT("<i4", "False", "(6, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT, "shape",
                "2 dims");
    expect_fail(npy_build(1, DICT("<i4", "False", "(2, 3, 2)"), ids, sizeof ids - 4), 0, EPM_ERR_FORMAT,
                "data is 44 bytes", "need 48");
    expect_fail(npy_build(1, DICT("<i4", "False", "(2, 3, 2)"), ids, sizeof ids) - 47, 0, EPM_ERR_FORMAT,
                "data is 1 bytes", NULL);
    expect_fail(npy_build(1, DICT("<i4", "False", "(99999999999, 99999999999, 2)"), ids, sizeof ids), 0,
                EPM_ERR_FORMAT, "layers", NULL);
    expect_fail(npy_build(1, DICT("<i4", "False", "(2, 99999999999999, 99999999)"), ids, sizeof ids), 0,
                EPM_ERR_FORMAT, "shape", NULL);
    expect_fail(npy_build(1, DICT("<i4", "False", "(2, -3, 2)"), ids, sizeof ids), 0, EPM_ERR_FORMAT, "shape",
                NULL);
    ids64[7] = (int64_t)1 << 40;
    expect_fail(npy_build(2, DICT("<i8", "False", "(2, 3, 2)"), ids64, sizeof ids64), 0, EPM_ERR_FORMAT,
                "[1][0][1] = 1099511627776", "int32");
    ids[7] = 8;
    expect_fail(npy_build(1, DICT("<i4", "False", "(2, 3, 2)"), ids, sizeof ids), 8, EPM_ERR_FORMAT,
                "topk_ids.1[0][1] = 8", NULL);
    ids[7] = 2;
    /* header syntax */
    static const char *bad_dicts[] = {
        "['descr', '<i4']",
        "{'descr': '<i4', 'fortran_order': False}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 2), 'extra': 1}",
        "{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 2)}",
        "{'descr': '<i4', 'fortran_order': false, 'shape': (2, 3, 2)}",
        "{'descr': '<i\\x34', 'fortran_order': False, 'shape': (2, 3, 2)}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': [2, 3, 2]}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 2)} junk",
        "{'descr': '<i4' 'fortran_order': False, 'shape': (2, 3, 2)}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3 2)}",
        "{'descr: '<i4', 'fortran_order': False, 'shape': (2, 3, 2)}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 2),",
    };
    for (size_t i = 0; i < sizeof bad_dicts / sizeof *bad_dicts; i++)
        expect_fail(npy_build(1, bad_dicts[i], ids, sizeof ids), 0, EPM_ERR_FORMAT, ".npy header", NULL);
    /* header length past the end; bad version; too short */
    size_t n = npy_build(1, DICT("<i4", "False", "(2, 3, 2)"), ids, sizeof ids);
    filebuf[9] = 0x40;
    expect_fail(n, 0, EPM_ERR_FORMAT, "header length", "past the end");
    n = npy_build(2, DICT("<i4", "False", "(2, 3, 2)"), ids, sizeof ids);
    filebuf[11] = 0x01;
    expect_fail(n, 0, EPM_ERR_FORMAT, "header length", NULL);
    filebuf[6] = 4;
    expect_fail(n, 0, EPM_ERR_FORMAT, "version 4.0", NULL);
    expect_fail(8, 0, EPM_ERR_FORMAT, "too short", NULL);
#undef DICT
}

/* Every allocation failing in turn: a clean NOMEM each time, no leak (ASan). */
static void test_trace_load_alloc_failures(void **state)
{
    (void)state;
    const float w[6] = {1, 0, 1, 0, 1, 0};
    const int32_t seq[3] = {0, 0, 1};
    tspec sp[] = {{"topk_ids.0", "I32", 2, {3, 2}, ids0, sizeof ids0},
                  {"topk_ids.1", "I32", 2, {3, 2}, ids1, sizeof ids1},
                  {"topk_weights.0", "F32", 2, {3, 2}, w, sizeof w},
                  {"topk_weights.1", "F32", 2, {3, 2}, w, sizeof w},
                  {"seq_ids", "I32", 1, {3}, seq, sizeof seq}};
    size_t n = st_build(sp, 5);
    int failures = 0;
    for (uint64_t nth = 1; nth < 200; nth++) {
        epm_trace *t = NULL;
        epm_fault_fail_nth_alloc(nth);
        epm_status st = epm_trace_parse(filebuf, n, "f", 0, &t);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            epm_trace_destroy(t);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(t);
        failures++;
    }
    assert_true(failures >= 5);
}

static void test_trace_save_refuses_invalid(void **state)
{
    (void)state;
    epm_trace *t;
    assert_int_equal(epm_trace_create(1, 2, 2, 4, &t), EPM_OK);
    int32_t *ids = epm_trace_ids(t, 0);
    ids[0] = 1;
    ids[1] = 1; /* duplicate */
    assert_int_equal(epm_trace_save(t, tu_path("dup.safetensors")), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "twice"));
    assert_int_equal(epm_trace_save_npy(t, tu_path("dup.npy")), EPM_ERR_FORMAT);
    ids[1] = 2;
    assert_int_equal(epm_trace_save(t, tu_path("ok.safetensors")), EPM_OK);
    assert_int_equal(epm_trace_save(t, tu_path("no/such/dir/x.safetensors")), EPM_ERR_IO);
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_load_fixtures),
        cmocka_unit_test(test_trace_load_missing_file),
        cmocka_unit_test(test_trace_safetensors_optional_tensors),
        cmocka_unit_test(test_trace_f16_weights),
        cmocka_unit_test(test_trace_npy_versions_and_dtypes),
        cmocka_unit_test(test_trace_npy_round_trip),
        cmocka_unit_test(test_trace_zero_tokens),
        cmocka_unit_test(test_trace_bad_safetensors_framing),
        cmocka_unit_test(test_trace_bad_safetensors_content),
        cmocka_unit_test(test_trace_bad_npy),
        cmocka_unit_test(test_trace_load_alloc_failures),
        cmocka_unit_test(test_trace_save_refuses_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
