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
    /* a key that is neither a tokenizer's nor max_new_tokens: named (a misspelt sampling field would otherwise
     * change nothing); a tokenizer's others are taken and ignored */
    assert_int_equal(parse_bad("{\"input_ids\": [[1, 2]], \"temprature\": 0.5}", 0), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: unknown field 'temprature' beside 'input_ids'"));
    {
        const char *tk = "{\"input_ids\": [[1, 2]], \"token_type_ids\": [[0, 0]], \"special_tokens_mask\": [[1, 0]]}";
        epm_tokens *t = parse_ok(tk, strlen(tk), 0);
        assert_int_equal(t->batch, 1);
        epm_tokens_destroy(t);
    }
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

/* ---- requests, vLLM's way: a list of objects, or one object per line ---- */

/* four requests: every field; aliases, top_k -1 and false; nulls and an
 * empty stop list; an explicit greedy temperature 0 */
static const char *const REQS[4] = { /* (parenthesised: one element, as clang's -Wstring-concatenation asks) */
    ("{\"prompt_token_ids\": [1, 2, 3], \"max_tokens\": 7, \"temperature\": 0.5, \"top_k\": 40, \"top_p\": 0.9, "
     "\"min_p\": 0.05, \"repetition_penalty\": 1.25, \"presence_penalty\": -0.5, \"frequency_penalty\": 1.5, "
     "\"min_tokens\": 3, \"seed\": 1234567890123, \"stop_token_ids\": [5, 99999, 6], \"ignore_eos\": true}"),
    "{\"input_ids\": [4], \"max_new_tokens\": 2, \"top_k\": -1, \"ignore_eos\": false}",
    ("{\"prompt_token_ids\": [9, 8], \"temperature\": null, \"top_k\": 0, \"seed\": null, \"max_tokens\": null, "
     "\"stop_token_ids\": [], \"ignore_eos\": null, \"min_p\": 0, \"top_p\": 1}"),
    "{\"temperature\": 0, \"prompt_token_ids\": [7], \"seed\": 0, \"min_tokens\": 0}",
};

enum {
    REQ_ALL = EPM_REQ_TEMPERATURE | EPM_REQ_TOP_K | EPM_REQ_TOP_P | EPM_REQ_MIN_P | EPM_REQ_REPETITION |
              EPM_REQ_PRESENCE | EPM_REQ_FREQUENCY | EPM_REQ_MIN_TOKENS | EPM_REQ_SEED | EPM_REQ_IGNORE_EOS
};

/* what REQS parse to */
static void check_reqs(const epm_tokens *t)
{
    assert_int_equal(t->batch, 4);
    assert_non_null(t->max_new);
    assert_non_null(t->req);
    const int lens[4] = {3, 1, 2, 1}, first[4] = {1, 4, 9, 7}, max_new[4] = {7, 2, 0, 0};
    for (int s = 0; s < 4; s++) {
        assert_int_equal(t->lens[s], lens[s]);
        assert_int_equal(t->ids[s][0], first[s]);
        assert_int_equal(t->max_new[s], max_new[s]);
    }
    assert_int_equal(t->ids[0][2], 3);
    assert_int_equal(t->ids[2][1], 8);
    /* request 0: every field, every bit */
    const epm_request_sampling *r = &t->req[0];
    assert_int_equal(r->set, REQ_ALL);
    assert_true(r->s.temperature == 0.5);
    assert_int_equal(r->s.top_k, 40);
    assert_true(r->s.top_p == 0.9);
    assert_true(r->s.min_p == 0.05);
    assert_true(r->s.repetition_penalty == 1.25);
    assert_true(r->s.presence_penalty == -0.5);
    assert_true(r->s.frequency_penalty == 1.5);
    assert_int_equal(r->s.min_tokens, 3);
    assert_true(r->s.seed == 1234567890123ull);
    assert_int_equal(r->ignore_eos, 1);
    assert_int_equal(r->n_stop, 3); /* stop ids are not held to the prompt's vocabulary */
    assert_int_equal(r->stop[0], 5);
    assert_int_equal(r->stop[1], 99999);
    assert_int_equal(r->stop[2], 6);
    /* request 1: top_k -1 is off (0) but given; ignore_eos false is given */
    r = &t->req[1];
    assert_int_equal(r->set, EPM_REQ_TOP_K | EPM_REQ_IGNORE_EOS);
    assert_int_equal(r->s.top_k, 0);
    assert_int_equal(r->ignore_eos, 0);
    assert_int_equal(r->n_stop, 0);
    assert_true(r->s.temperature == 0 && r->s.top_p == 0 && r->s.seed == 0);
    /* request 2: null is absent; top_k 0, min_p 0 and top_p 1 are given */
    r = &t->req[2];
    assert_int_equal(r->set, EPM_REQ_TOP_K | EPM_REQ_MIN_P | EPM_REQ_TOP_P);
    assert_int_equal(r->s.top_k, 0);
    assert_true(r->s.top_p == 1);
    assert_int_equal(r->n_stop, 0);
    /* request 3: temperature 0, seed 0 and min_tokens 0 are given (0 is not absent) */
    r = &t->req[3];
    assert_int_equal(r->set, EPM_REQ_TEMPERATURE | EPM_REQ_SEED | EPM_REQ_MIN_TOKENS);
    assert_true(r->s.temperature == 0);
    assert_true(r->s.seed == 0);
}

static void same_tokens(const epm_tokens *a, const epm_tokens *b)
{
    assert_int_equal(a->batch, b->batch);
    assert_non_null(a->req);
    assert_non_null(b->req);
    for (int s = 0; s < a->batch; s++) {
        assert_int_equal(a->lens[s], b->lens[s]);
        assert_memory_equal(a->ids[s], b->ids[s], (size_t)a->lens[s] * sizeof(int32_t));
        assert_int_equal(a->max_new[s], b->max_new[s]);
        const epm_request_sampling *x = &a->req[s], *y = &b->req[s];
        assert_int_equal(x->set, y->set);
        assert_true(x->s.temperature == y->s.temperature && x->s.top_p == y->s.top_p && x->s.min_p == y->s.min_p);
        assert_true(x->s.repetition_penalty == y->s.repetition_penalty);
        assert_true(x->s.presence_penalty == y->s.presence_penalty);
        assert_true(x->s.frequency_penalty == y->s.frequency_penalty);
        assert_int_equal(x->s.top_k, y->s.top_k);
        assert_int_equal(x->s.min_tokens, y->s.min_tokens);
        assert_true(x->s.seed == y->s.seed);
        assert_int_equal(x->ignore_eos, y->ignore_eos);
        assert_int_equal(x->n_stop, y->n_stop);
        assert_memory_equal(x->stop, y->stop, (size_t)x->n_stop * sizeof(int32_t));
    }
}

static void test_tokens_requests(void **state)
{
    (void)state;
    char list[2048], lines[2048];
    snprintf(list, sizeof list, "[%s,\n %s, %s,\n%s]\n", REQS[0], REQS[1], REQS[2], REQS[3]);
    epm_tokens *a = parse_ok(list, strlen(list), 10);
    check_reqs(a);
    /* JSON lines: blank lines, CRLF and a last line without its newline */
    const char *forms[] = {"%s\n%s\n%s\n%s\n", "\n\n%s\n\n%s\r\n   \n%s\r\n%s", "%s\n%s\n%s\n%s\n\n\n"};
    for (int f = 0; f < 3; f++) {
        snprintf(lines, sizeof lines, forms[f], REQS[0], REQS[1], REQS[2], REQS[3]);
        epm_tokens *b = parse_ok(lines, strlen(lines), 10);
        check_reqs(b);
        same_tokens(a, b);
        epm_tokens_destroy(b);
    }
    epm_tokens_destroy(a);
    /* the other forms have no requests */
    const char *plain[] = {"[[1, 2], [3]]", "[4, 5]", "{\"input_ids\": [[1]], \"max_new_tokens\": 2}"};
    for (int i = 0; i < 3; i++) {
        epm_tokens *t = parse_ok(plain[i], strlen(plain[i]), 10);
        assert_null(t->req);
        epm_tokens_destroy(t);
    }
    /* 64 stop ids are allowed */
    char many[1024];
    int n = snprintf(many, sizeof many, "[{\"prompt_token_ids\": [1], \"stop_token_ids\": [");
    for (int i = 0; i < EPM_MAX_STOP_IDS; i++)
        n += snprintf(many + n, sizeof many - (size_t)n, "%s%d", i ? ", " : "", 1000 + i);
    snprintf(many + n, sizeof many - (size_t)n, "]}]");
    epm_tokens *t = parse_ok(many, strlen(many), 10);
    assert_int_equal(t->req[0].n_stop, EPM_MAX_STOP_IDS);
    assert_int_equal(t->req[0].stop[EPM_MAX_STOP_IDS - 1], 1000 + EPM_MAX_STOP_IDS - 1);
    assert_int_equal(t->req[0].set, 0);
    epm_tokens_destroy(t);
    /* a file of one request object; input_ids with a sampling field is one too (not a tokenizer's
     * output, whose other fields are ignored), so its temperature is not dropped */
    const char *one[] = {"{\"prompt_token_ids\": [1, 2], \"max_tokens\": 4}\n",
                         "{\"input_ids\": [1, 2], \"temperature\": 0.5, \"max_tokens\": 4}",
                         "{\"prompt_token_ids\": [1, 2], \"input_ids\": null, \"max_tokens\": 4}"};
    for (int i = 0; i < 3; i++) {
        t = parse_ok(one[i], strlen(one[i]), 10);
        assert_int_equal(t->batch, 1);
        assert_non_null(t->req);
        assert_int_equal(t->lens[0], 2);
        assert_int_equal(t->max_new[0], 4);
        assert_int_equal(t->req[0].set, i == 1 ? EPM_REQ_TEMPERATURE : 0);
        epm_tokens_destroy(t);
    }
    const char *more = "[{\"prompt_token_ids\": [1], \"n\": 3, \"logprobs\": 0, \"prompt_logprobs\": 20, "
                       "\"best_of\": 3, \"use_beam_search\": false, \"stop\": [], \"logit_bias\": null, "
                       "\"length_penalty\": 1.0, \"skip_special_tokens\": true, \"detokenize\": false}, "
                       "{\"prompt_token_ids\": [2], \"best_of\": 1}]";
    t = parse_ok(more, strlen(more), 10);
    assert_int_equal(t->req[0].set, EPM_REQ_N | EPM_REQ_LOGPROBS | EPM_REQ_PROMPT_LOGPROBS);
    assert_int_equal(t->req[0].n, 3);
    assert_int_equal(t->req[0].logprobs, 0);
    assert_int_equal(t->req[0].prompt_logprobs, 20);
    assert_int_equal(t->req[1].set, 0);
    epm_tokens_destroy(t);
    const char *tok = "{\"input_ids\": [[1, 2]], \"attention_mask\": [[1, 1]], \"token_type_ids\": [[0, 0]]}";
    t = parse_ok(tok, strlen(tok), 10);
    assert_null(t->req);
    assert_null(t->max_new);
    epm_tokens_destroy(t);
    const char *junk = "[[1, 2]]\n]";
    assert_int_equal(parse_bad(junk, 10), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: line 1: more text after the JSON value"));
    const char *bad1 = "{\"input_ids\": [[1, 2]], \"max_tokens\": 3}";
    assert_int_equal(parse_bad(bad1, 10), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: the request: field 'input_ids[0]' = [1,2]"));
}

/* A refused request, second in a list and third line (after a blank one) of
 * JSON lines: the status, and the message names the file, the request and
 * each of what[]. */
static void req_bad(const char *obj, epm_status code, const char *what1, const char *what2)
{
    const char *ok = "{\"prompt_token_ids\": [1, 2], \"max_tokens\": 4}";
    char text[4096];
    for (int form = 0; form < 2; form++) {
        snprintf(text, sizeof text, form ? "%s\n\n%s\n%s\n" : "[%s, %s, %s]", ok, obj, ok);
        epm_clear_error();
        epm_status st = parse_bad(text, 10);
        const char *e = epm_last_error();
        const char *where = form ? "in.json: line 3 (request 1)" : "in.json: requests[1]";
        if (form && obj[0] != '{' && obj[0] != '[') { /* a line of JSON lines holds an object or an array */
            if (st != EPM_ERR_FORMAT || !strstr(e, "in.json: line 3:"))
                fail_msg("%s: status %d, error \"%s\", expected one naming line 3", text, st, e);
            continue;
        }
        if (st != code)
            fail_msg("%s: status %d (%s), expected %d", text, st, e, code);
        if (!strstr(e, where) || !strstr(e, what1) || (what2 && !strstr(e, what2)))
            fail_msg("%s: error \"%s\" does not name \"%s\", \"%s\" and \"%s\"", text, e, where, what1,
                     what2 ? what2 : "");
    }
}

static void test_tokens_requests_errors(void **state)
{
    (void)state;
    req_bad("{\"prompt_token_ids\": [1], \"temprature\": 0.5}", EPM_ERR_FORMAT, "unknown field 'temprature'", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"Temperature\": 0.5}", EPM_ERR_FORMAT, "unknown field 'Temperature'", NULL);
    req_bad("{\"prompt\": \"Hello\"}", EPM_ERR_UNSUPPORTED, "'prompt'", "tokenizer");
    req_bad("{\"prompt_token_ids\": [1], \"prompt\": \"Hello\"}", EPM_ERR_UNSUPPORTED, "'prompt'", "tokenizer");
    req_bad("{\"prompt_token_ids\": [1], \"temperature\": -1}", EPM_ERR_FORMAT, "'temperature' = -1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"temperature\": \"0.5\"}", EPM_ERR_FORMAT, "'temperature' = \"0.5\"", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"temperature\": true}", EPM_ERR_FORMAT, "'temperature' = true", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"top_p\": 0}", EPM_ERR_FORMAT, "'top_p' = 0", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"top_p\": 1.5}", EPM_ERR_FORMAT, "'top_p' = 1.5", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"min_p\": 1}", EPM_ERR_FORMAT, "'min_p' = 1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"min_p\": -0.1}", EPM_ERR_FORMAT, "'min_p' = -0.1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"top_k\": -2}", EPM_ERR_FORMAT, "'top_k' = -2", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"top_k\": 1.5}", EPM_ERR_FORMAT, "'top_k' = 1.5", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"repetition_penalty\": 0}", EPM_ERR_FORMAT, "'repetition_penalty' = 0",
            NULL);
    /* (a seen logit over it is +inf, which the sampler refuses mid-run: found by fuzzing) */
    req_bad("{\"prompt_token_ids\": [1], \"repetition_penalty\": 1e-300}", EPM_ERR_FORMAT, "'repetition_penalty' = 1",
            "e-300: expected a number in [1e-06, 1e+06]");
    req_bad("{\"prompt_token_ids\": [1], \"presence_penalty\": 2.5}", EPM_ERR_FORMAT, "'presence_penalty' = 2.5",
            NULL);
    req_bad("{\"prompt_token_ids\": [1], \"frequency_penalty\": -3}", EPM_ERR_FORMAT, "'frequency_penalty' = -3",
            NULL);
    req_bad("{\"prompt_token_ids\": [1], \"min_tokens\": -1}", EPM_ERR_FORMAT, "'min_tokens' = -1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"seed\": -1}", EPM_ERR_FORMAT, "'seed' = -1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"seed\": 1.5}", EPM_ERR_FORMAT, "'seed' = 1.5", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"ignore_eos\": 1}", EPM_ERR_FORMAT, "'ignore_eos' = 1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"max_tokens\": 4, \"max_new_tokens\": 4}", EPM_ERR_FORMAT,
            "'max_tokens'", "'max_new_tokens'");
    req_bad("{\"prompt_token_ids\": [1], \"max_new_tokens\": 4, \"max_tokens\": 5}", EPM_ERR_FORMAT,
            "'max_tokens'", "'max_new_tokens'");
    req_bad("{\"prompt_token_ids\": [1], \"max_tokens\": 0}", EPM_ERR_FORMAT, "'max_tokens' = 0", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"max_new_tokens\": 1048577}", EPM_ERR_FORMAT,
            "'max_new_tokens' = 1048577", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"stop_token_ids\": [3, -1]}", EPM_ERR_FORMAT, "'stop_token_ids[1]' = -1",
            NULL);
    req_bad("{\"prompt_token_ids\": [1], \"stop_token_ids\": 3}", EPM_ERR_FORMAT, "'stop_token_ids' = 3", NULL);
    char many[1024];
    int n = snprintf(many, sizeof many, "{\"prompt_token_ids\": [1], \"stop_token_ids\": [");
    for (int i = 0; i < EPM_MAX_STOP_IDS + 1; i++)
        n += snprintf(many + n, sizeof many - (size_t)n, "%s%d", i ? ", " : "", i);
    snprintf(many + n, sizeof many - (size_t)n, "]}");
    req_bad(many, EPM_ERR_FORMAT, "'stop_token_ids'", "at most 64");
    /* the prompt: ids in the vocabulary (10 here), under either name; present, a non-empty list */
    req_bad("{\"prompt_token_ids\": [1, 10]}", EPM_ERR_FORMAT, "'prompt_token_ids[1]' = 10", NULL);
    req_bad("{\"input_ids\": [10]}", EPM_ERR_FORMAT, "'input_ids[0]' = 10", NULL);
    req_bad("{\"prompt_token_ids\": [1, -1]}", EPM_ERR_FORMAT, "'prompt_token_ids[1]' = -1", NULL);
    req_bad("{\"prompt_token_ids\": [1, 2.5]}", EPM_ERR_FORMAT, "'prompt_token_ids[1]' = 2.5", NULL);
    req_bad("{\"prompt_token_ids\": [[1]]}", EPM_ERR_FORMAT, "'prompt_token_ids[0]' = [1]", NULL);
    req_bad("{\"prompt_token_ids\": []}", EPM_ERR_FORMAT, "'prompt_token_ids' = []", NULL);
    req_bad("{\"max_tokens\": 3}", EPM_ERR_FORMAT, "no 'prompt_token_ids'", NULL);
    req_bad("{}", EPM_ERR_FORMAT, "no 'prompt_token_ids'", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"input_ids\": [1]}", EPM_ERR_FORMAT, "'prompt_token_ids'", "'input_ids'");
    req_bad("{\"prompt_token_ids\": null}", EPM_ERR_FORMAT, "no 'prompt_token_ids'", NULL);
    /* n samples, logprobs; vLLM's fields that epmoe does not run refused unless at their default */
    req_bad("{\"prompt_token_ids\": [1], \"n\": 0}", EPM_ERR_FORMAT, "'n' = 0", "[1, 1024]");
    req_bad("{\"prompt_token_ids\": [1], \"n\": 1025}", EPM_ERR_FORMAT, "'n' = 1025", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"logprobs\": 21}", EPM_ERR_FORMAT, "'logprobs' = 21", "[0, 20]");
    req_bad("{\"prompt_token_ids\": [1], \"logprobs\": -1}", EPM_ERR_FORMAT, "'logprobs' = -1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"prompt_logprobs\": true}", EPM_ERR_FORMAT, "'prompt_logprobs' = true",
            NULL);
    req_bad("{\"prompt_token_ids\": [1], \"best_of\": 2}", EPM_ERR_UNSUPPORTED, "'best_of' = 2", "use n");
    req_bad("{\"prompt_token_ids\": [1], \"n\": 2, \"best_of\": 3}", EPM_ERR_UNSUPPORTED, "'best_of' = 3", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"length_penalty\": 0.8}", EPM_ERR_UNSUPPORTED, "'length_penalty' = 0.8",
            NULL);
    req_bad("{\"prompt_token_ids\": [1], \"use_beam_search\": true}", EPM_ERR_UNSUPPORTED, "beam search", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"stop\": [\"a\"]}", EPM_ERR_UNSUPPORTED, "'stop'", "stop_token_ids");
    req_bad("{\"prompt_token_ids\": [1], \"logit_bias\": {\"5\": 1}}", EPM_ERR_UNSUPPORTED, "'logit_bias'", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"skip_special_tokens\": 1}", EPM_ERR_FORMAT,
            "'skip_special_tokens' = 1", NULL);
    req_bad("{\"prompt_token_ids\": [1], \"max_tokens\": 2, \"min_tokens\": 3}", EPM_ERR_FORMAT,
            "min_tokens = 3 is more than max_tokens = 2", NULL);
    /* an element that is no request object */
    req_bad("5", EPM_ERR_FORMAT, "is 5, not a request object", NULL);
    req_bad("[1, 2]", EPM_ERR_FORMAT, "is [1,2], not a request object", NULL);
    req_bad("\"x\"", EPM_ERR_FORMAT, "is \"x\", not a request object", NULL);
}

/* A JSON syntax error in JSON lines names its line, blank lines and CRLF counted. */
static void test_tokens_requests_syntax(void **state)
{
    (void)state;
    const char *ok = "{\"prompt_token_ids\": [1], \"max_tokens\": 2}";
    struct {
        const char *fmt;
        const char *line;
    } cases[] = {
        {"%s\n%s\n{\"prompt_token_ids\": [1,, 2]}\n%s\n", "line 3:"},
        {"%s\n\n{\"prompt_token_ids\": [1] \"max_tokens\": 2}\n%s\n%s\n", "line 3:"},
        {"%s\r\n\r\n{\"prompt_token_ids\": [1], }\r\n%s\r\n%s\r\n", "line 3:"},
        {"\n\n%s\n\n%s\n\n{\"prompt_token_ids\": [1] x\n%s\n", "line 7:"},
        {"%s %s\n%s\n{\"prompt_token_ids\": nul}", "line 3:"}, /* two requests on line 1 */
        {"%s\n%s\n%s\n{\"prompt_token_ids\": [1]}}\n", "line 4:"},
        /* an object over several lines (read, though JSON lines has one a line): the lines after it count */
        {"{\n  \"prompt_token_ids\": [1],\n  \"max_tokens\": 2\n}\n%s\n{\"prompt_token_ids\": [1] x}\n%s%s", "line 6:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024];
        snprintf(text, sizeof text, cases[i].fmt, ok, ok, ok);
        epm_clear_error();
        epm_status st = parse_bad(text, 10);
        if (st != EPM_ERR_FORMAT || !strstr(epm_last_error(), "in.json") ||
            !strstr(epm_last_error(), cases[i].line))
            fail_msg("case %zu: status %d, error \"%s\", expected one naming \"%s\"", i, st, epm_last_error(),
                     cases[i].line);
    }
    /* the request numbers count requests, not lines */
    char text[1024];
    snprintf(text, sizeof text, "\n%s\n\n\n%s\n{\"prompt_token_ids\": [1], \"topk\": 3}\n", ok, ok);
    assert_int_equal(parse_bad(text, 10), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "in.json: line 6 (request 2): unknown field 'topk'"));
}

/* Every allocation of a request parse may fail, a list or JSON lines alike. */
static void test_tokens_requests_alloc_failures(void **state)
{
    (void)state;
    char texts[2][2048];
    snprintf(texts[0], sizeof texts[0], "[%s, %s, %s, %s]", REQS[0], REQS[1], REQS[2], REQS[3]);
    snprintf(texts[1], sizeof texts[1], "%s\n%s\n\n%s\n%s\n", REQS[0], REQS[1], REQS[2], REQS[3]);
    for (int f = 0; f < 2; f++)
        for (uint64_t k = 1;; k++) {
            epm_tokens *t = NULL;
            epm_fault_fail_nth_alloc(k);
            epm_status st = epm_tokens_parse(texts[f], strlen(texts[f]), "in.json", 10, &t);
            epm_fault_fail_nth_alloc(0);
            if (st == EPM_OK) {
                check_reqs(t);
                epm_tokens_destroy(t);
                assert_true(k > 6);
                break;
            }
            if (st != EPM_ERR_NOMEM)
                fail_msg("form %d, allocation %llu failed: status %d (%s)", f, (unsigned long long)k, st,
                         epm_last_error());
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
        cmocka_unit_test(test_tokens_requests),
        cmocka_unit_test(test_tokens_requests_errors),
        cmocka_unit_test(test_tokens_requests_syntax),
        cmocka_unit_test(test_tokens_requests_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
