/* Token-id input: JSON, .npy and safetensors give the same batches; ids
 * outside the vocabulary and malformed files are refused with the file, the
 * element (input_ids[sequence][position]) and its value named. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/model.h"
#include "npy.h"

static uint8_t buf[4096];

/* A .npy file built here by hand: magic, version 1.0, padded dict, data. */
static size_t npy(const char *dict, const void *data, size_t bytes)
{
    size_t n = strlen(dict), total = (10 + n + 1 + 15) & ~(size_t)15, hlen = total - 10;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)hlen;
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + 10, dict, n);
    memset(buf + 10 + n, ' ', hlen - n - 1);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, bytes);
    return total + bytes;
}

static epm_tokens *parse_ok(const void *data, size_t n, int vocab)
{
    epm_tokens *t = NULL;
    epm_status st = epm_tokens_parse(data, n, "in", vocab, &t);
    if (st != EPM_OK)
        fail_msg("unexpected failure: %s", epm_last_error());
    return t;
}

static epm_status parse_bad(const char *text, int vocab)
{
    epm_tokens *t = NULL;
    epm_status st = epm_tokens_parse(text, strlen(text), "in.json", vocab, &t);
    assert_null(t);
    return st;
}

static void test_tokens_json(void **state)
{
    (void)state;
    const char *a = "[[1, 2, 3], [4, 5]]";
    epm_tokens *t = parse_ok(a, strlen(a), 10);
    assert_int_equal(t->batch, 2);
    assert_int_equal(t->lens[0], 3);
    assert_int_equal(t->lens[1], 2);
    assert_int_equal(t->ids[0][2], 3);
    assert_int_equal(t->ids[1][0], 4);
    epm_tokens_destroy(t);
    const char *b = "{\"input_ids\": [[7, 8]]}";
    t = parse_ok(b, strlen(b), 0);
    assert_int_equal(t->batch, 1);
    assert_int_equal(t->ids[0][1], 8);
    epm_tokens_destroy(t);
    const char *c = "[9, 0, 4]"; /* one sequence */
    t = parse_ok(c, strlen(c), 10);
    assert_int_equal(t->batch, 1);
    assert_int_equal(t->lens[0], 3);
    assert_int_equal(t->ids[0][0], 9);
    epm_tokens_destroy(t);
    /* a tokenizer's padded batch: masked positions go */
    const char *d = "{\"input_ids\": [[0, 0, 5, 6], [1, 2, 3, 4]], \"attention_mask\": [[0, 0, 1, 1], [1, 1, 1, 1]]}";
    t = parse_ok(d, strlen(d), 10);
    assert_int_equal(t->lens[0], 2);
    assert_int_equal(t->ids[0][0], 5);
    assert_int_equal(t->lens[1], 4);
    epm_tokens_destroy(t);
}

static void test_tokens_json_errors(void **state)
{
    (void)state;
    assert_int_equal(parse_bad("[[1, 2], [3, 4, 10]]", 10), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[1][2]"));
    assert_non_null(strstr(epm_last_error(), "token id 10"));
    assert_non_null(strstr(epm_last_error(), "in.json"));
    assert_int_equal(parse_bad("[[1, -1]]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[0][1]: token id -1"));
    assert_int_equal(parse_bad("[[1, 2.5]]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[0][1]: 2.5 is not"));
    assert_int_equal(parse_bad("[[1], [\"a\", 2]]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[1][0]: \"a\" is not"));
    assert_int_equal(parse_bad("[[1], []]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[1]: sequence 1 is not a non-empty list of token ids (got [])"));
    assert_int_equal(parse_bad("[[1, 2], \"x\"]", 0), EPM_ERR_FORMAT); /* what epmoe run's CLI test feeds */
    assert_non_null(strstr(epm_last_error(), "input_ids[1]: sequence 1 is not"));
    assert_int_equal(parse_bad("[[[1]]]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[0][0]: [1] is not"));
    assert_int_equal(parse_bad("{\"input_ids\": null}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1]], \"input_ids\": [[2]]}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("\"1 2 3\"", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("[[1, 2147483648]]", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "2147483648"));
    assert_int_equal(parse_bad("[]", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"ids\": [[1]]}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("[[1], 2]", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("[[1, 2", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("[[4294967297]]", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"attention_mask\": [[1]]}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "attention_mask"));
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"attention_mask\": [[0, 0]]}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"attention_mask\": [[1, 2]]}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "attention_mask[0][1] = 2"));
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"attention_mask\": [[true, true]]}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"attention_mask\": 1}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [1, 2], \"attention_mask\": [[1, 1]]}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2], [3]], \"attention_mask\": [[1, 1]]}", 0), EPM_ERR_FORMAT);
}

/* "max_new_tokens" beside the ids: one for all, one per sequence, or none */
static void test_tokens_max_new(void **state)
{
    (void)state;
    const char *all = "{\"input_ids\": [[1, 2], [3]], \"max_new_tokens\": 5}";
    epm_tokens *t = parse_ok(all, strlen(all), 0);
    assert_non_null(t->max_new);
    assert_int_equal(t->max_new[0], 5);
    assert_int_equal(t->max_new[1], 5);
    epm_tokens_destroy(t);
    const char *each = "{\"input_ids\": [[1, 2], [3], [4]], \"max_new_tokens\": [2, 1048576, 1]}";
    t = parse_ok(each, strlen(each), 0);
    assert_int_equal(t->max_new[0], 2);
    assert_int_equal(t->max_new[1], 1 << 20);
    assert_int_equal(t->max_new[2], 1);
    epm_tokens_destroy(t);
    const char *none[] = {"{\"input_ids\": [[1]], \"max_new_tokens\": null}", "{\"input_ids\": [[1]]}", "[[1]]"};
    for (int i = 0; i < 3; i++) {
        t = parse_ok(none[i], strlen(none[i]), 0);
        assert_null(t->max_new);
        epm_tokens_destroy(t);
    }
    assert_int_equal(parse_bad("{\"input_ids\": [[1], [2]], \"max_new_tokens\": [3]}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: field 'max_new_tokens' has 1 values for 2 sequences"));
    assert_int_equal(parse_bad("{\"input_ids\": [[1], [2]], \"max_new_tokens\": [3, 0]}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: max_new_tokens[1] = 0"));
    assert_int_equal(parse_bad("{\"input_ids\": [[1]], \"max_new_tokens\": 1048577}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "max_new_tokens = 1048577"));
    assert_int_equal(parse_bad("{\"input_ids\": [[1]], \"max_new_tokens\": \"4\"}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "max_new_tokens = \"4\""));
    assert_int_equal(parse_bad("{\"input_ids\": [[1]], \"max_new_tokens\": 2.5}", 0), EPM_ERR_FORMAT);
    assert_int_equal(parse_bad("{\"input_ids\": [[1]], \"max_new_tokens\": {}}", 0), EPM_ERR_FORMAT);
}

static void test_tokens_npy(void **state)
{
    (void)state;
    int32_t a[6] = {1, 2, 3, 4, 5, 6};
    size_t n = npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", a, sizeof a);
    epm_tokens *t = parse_ok(buf, n, 7);
    assert_int_equal(t->batch, 2);
    assert_int_equal(t->lens[1], 3);
    assert_int_equal(t->ids[1][2], 6);
    epm_tokens_destroy(t);
    int64_t b[3] = {40, 0, 9};
    n = npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", b, sizeof b);
    t = parse_ok(buf, n, 41);
    assert_int_equal(t->batch, 1);
    assert_int_equal(t->ids[0][0], 40);
    epm_tokens_destroy(t);
    epm_tokens *bad = NULL;
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 40, &bad), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[0][0]: token id 40"));
    assert_int_equal(epm_tokens_parse(buf, n - 1, "ids.npy", 0, &bad), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "truncated"));
    float f[2] = {1, 2};
    n = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", f, sizeof f);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "F32"));
    n = npy("{'descr': '>i4', 'fortran_order': False, 'shape': (1, 2), }", a, 8);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_UNSUPPORTED);
    n = npy("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }", a, sizeof a);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_UNSUPPORTED);
    n = npy("{'descr': '<i4', 'fortran_order': False, 'shape': (0, 3), }", a, 0);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_FORMAT);
    n = npy("{'descr': '<i4', 'shape': (2, 3), }", a, sizeof a);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_FORMAT);
    n = npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1, 6), }", a, sizeof a);
    assert_int_equal(epm_tokens_parse(buf, n, "ids.npy", 0, &bad), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "3 dimensions"));
    assert_null(bad);
}

static void test_tokens_npy_header(void **state)
{
    (void)state;
    int16_t v[4] = {1, 2, 3, 4};
    size_t n = npy("{'shape': (2,2), 'fortran_order': False, 'descr': '<i2'}", v, sizeof v);
    epm_npy h;
    assert_int_equal(epm_npy_parse(buf, n, "x.npy", &h), EPM_OK);
    assert_int_equal(h.dtype, EPM_DTYPE_I16);
    assert_int_equal(h.ndim, 2);
    assert_int_equal(h.numel, 4);
    assert_int_equal(h.data_bytes, 8);
    n = npy("{'descr': '<i2', 'fortran_order': False, 'shape': (), }", v, 2);
    assert_int_equal(epm_npy_parse(buf, n, "x.npy", &h), EPM_OK);
    assert_int_equal(h.ndim, 0);
    assert_int_equal(h.numel, 1);
    n = npy("{'descr': '<i2', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }", v, 2);
    assert_int_equal(epm_npy_parse(buf, n, "x.npy", &h), EPM_ERR_FORMAT);
    n = npy("{'descr': '<i2', 'descr': '<i2', 'fortran_order': False, 'shape': (1,), }", v, 2);
    assert_int_equal(epm_npy_parse(buf, n, "x.npy", &h), EPM_ERR_FORMAT);
    buf[6] = 7;
    assert_int_equal(epm_npy_parse(buf, n, "x.npy", &h), EPM_ERR_UNSUPPORTED);
    assert_int_equal(epm_npy_parse(buf, 7, "x.npy", &h), EPM_ERR_FORMAT);
}

static void test_tokens_safetensors_and_files(void **state)
{
    (void)state;
    /* an input_ids int64 [2, 2] tensor, written by hand */
    const char *hdr = "{\"input_ids\":{\"dtype\":\"I64\",\"shape\":[2,2],\"data_offsets\":[0,32]}}";
    size_t h = strlen(hdr);
    memset(buf, 0, 8);
    buf[0] = (uint8_t)h;
    memcpy(buf + 8, hdr, h);
    int64_t ids[4] = {3, 1, 4, 1};
    memcpy(buf + 8 + h, ids, sizeof ids);
    const char *p = tu_write("ids.safetensors", buf, 8 + h + sizeof ids);
    epm_tokens *t = NULL;
    assert_int_equal(epm_tokens_load(p, 5, &t), EPM_OK);
    assert_int_equal(t->batch, 2);
    assert_int_equal(t->ids[1][0], 4);
    epm_tokens_destroy(t);
    t = NULL;
    assert_int_equal(epm_tokens_load(p, 4, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "input_ids[1][0]: token id 4"));
    assert_non_null(strstr(epm_last_error(), p));
    const char *j = tu_write("ids.json", "[[2, 3]]\n", 9);
    assert_int_equal(epm_tokens_load(j, 5, &t), EPM_OK);
    assert_int_equal(t->ids[0][1], 3);
    epm_tokens_destroy(t);
    t = NULL;
    assert_int_equal(epm_tokens_load(tu_path("absent.json"), 5, &t), EPM_ERR_IO);
    assert_int_equal(epm_tokens_parse("[[1]]", 5, "x", -1, &t), EPM_ERR_INVALID_ARG);
}

/* A safetensors buffer with one tensor, header padded to 8 bytes. */
static size_t st_one(const char *name, const char *dtype, const char *shape, const void *data, size_t bytes)
{
    char hdr[256];
    int h = snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[0,%zu]}}", name, dtype,
                     shape, bytes);
    while (h % 8)
        hdr[h++] = ' ';
    memset(buf, 0, 8);
    buf[0] = (uint8_t)h;
    memcpy(buf + 8, hdr, (size_t)h);
    memcpy(buf + 8 + h, data, bytes);
    return 8 + (size_t)h + bytes;
}

static void test_tokens_safetensors_errors(void **state)
{
    (void)state;
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    epm_tokens *t = NULL;
    size_t n = st_one("input_ids", "I32", "[2,3]", ids, sizeof ids);
    t = parse_ok(buf, n, 7);
    assert_int_equal(t->batch, 2);
    assert_int_equal(t->lens[0], 3);
    assert_int_equal(t->ids[1][2], 6);
    epm_tokens_destroy(t);
    t = NULL;
    n = st_one("tokens", "I32", "[2,3]", ids, sizeof ids);
    assert_int_equal(epm_tokens_parse(buf, n, "in.st", 0, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "'input_ids'"));
    n = st_one("input_ids", "F32", "[2,3]", ids, sizeof ids);
    assert_int_equal(epm_tokens_parse(buf, n, "in.st", 0, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "F32"));
    n = st_one("input_ids", "I16", "[1,2]", ids, 4);
    assert_int_equal(epm_tokens_parse(buf, n, "in.st", 0, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "I16"));
    n = st_one("input_ids", "I32", "[1,2,3]", ids, sizeof ids);
    assert_int_equal(epm_tokens_parse(buf, n, "in.st", 0, &t), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "3 dimensions"));
    n = st_one("input_ids", "I32", "[0,3]", ids, 0);
    assert_int_equal(epm_tokens_parse(buf, n, "in.st", 0, &t), EPM_ERR_FORMAT);
    n = st_one("input_ids", "I32", "[2,3]", ids, sizeof ids);
    assert_int_not_equal(epm_tokens_parse(buf, n - 4, "in.st", 0, &t), EPM_OK); /* truncated data */
    assert_non_null(strstr(epm_last_error(), "in.st"));
    assert_null(t);
}

/* Every allocation of a parse may fail: a clean EPM_ERR_NOMEM, nothing leaked. */
static void test_tokens_alloc_failures(void **state)
{
    (void)state;
    const char *a = "{\"input_ids\": [[1, 2, 3], [4, 5]], \"attention_mask\": [[1, 1, 1], [0, 1]]}";
    for (uint64_t k = 1;; k++) {
        epm_tokens *t = NULL;
        epm_fault_fail_nth_alloc(k);
        epm_status st = epm_tokens_parse(a, strlen(a), "in.json", 10, &t);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            assert_int_equal(t->lens[1], 1);
            epm_tokens_destroy(t);
            assert_true(k > 3);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(t);
        assert_true(k < 100);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_json),
        cmocka_unit_test(test_tokens_json_errors),
        cmocka_unit_test(test_tokens_max_new),
        cmocka_unit_test(test_tokens_npy),
        cmocka_unit_test(test_tokens_npy_header),
        cmocka_unit_test(test_tokens_safetensors_and_files),
        cmocka_unit_test(test_tokens_safetensors_errors),
        cmocka_unit_test(test_tokens_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
