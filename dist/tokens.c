/* Token-id input of `epmoe run`: JSON lists, .npy or safetensors, chosen by
 * content. Text tokenisation is the user's tokenizer's job, not ours. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/model.h"
#include "json_show.h"
#include "npy.h"
#include "request.h"
#include "safetensors.h"

/* Bounds that keep a hostile file from asking for absurd allocations; the
 * longest contexts of current MoE models are far below them. */
enum { MAX_BATCH = 1 << 20, MAX_SEQ = 1 << 24 };

void epm_tokens_destroy(epm_tokens *t)
{
    if (!t)
        return;
    for (int s = 0; t->ids && s < t->batch; s++)
        epm_free(t->ids[s]);
    epm_free(t->ids);
    epm_free(t->lens);
    epm_free(t->max_new);
    epm_free(t->req);
    epm_free(t);
}

static epm_status alloc_batch(int batch, epm_tokens **out)
{
    epm_tokens *t = epm_calloc(1, sizeof *t);
    if (!t)
        return EPM_ERR_NOMEM;
    t->batch = batch;
    t->lens = epm_calloc((size_t)batch, sizeof *t->lens);
    t->ids = epm_calloc((size_t)batch, sizeof *t->ids);
    if (!t->lens || !t->ids) {
        epm_tokens_destroy(t);
        return EPM_ERR_NOMEM;
    }
    *out = t;
    return EPM_OK;
}

/* Errors name the element as input_ids[sequence][position], whatever the
 * format, so that a user finds it in the file they wrote. */
static epm_status check_id(const char *label, int vocab, int s, int i, long long v)
{
    if (v < 0 || v > INT32_MAX || (vocab > 0 && v >= vocab))
        return epm_fail(EPM_ERR_FORMAT, "%s: input_ids[%d][%d]: token id %lld is outside [0, %lld)", label, s, i, v,
                        vocab > 0 ? (long long)vocab : (long long)INT32_MAX + 1);
    return EPM_OK;
}

/* A dense [batch, seq] (or [seq]) integer array, from .npy or safetensors. */
static epm_status from_array(const char *label, int vocab, epm_dtype dtype, int ndim, const int64_t *shape,
                             const uint8_t *data, epm_tokens **out)
{
    if (dtype != EPM_DTYPE_I32 && dtype != EPM_DTYPE_I64)
        return epm_fail(EPM_ERR_FORMAT, "%s: token ids have dtype %s; int32 or int64 expected", label,
                        epm_dtype_name(dtype));
    if (ndim != 1 && ndim != 2)
        return epm_fail(EPM_ERR_FORMAT, "%s: token ids have %d dimensions; [batch, seq] or [seq] expected", label,
                        ndim);
    int64_t batch = ndim == 2 ? shape[0] : 1, seq = shape[ndim - 1];
    if (batch < 1 || batch > MAX_BATCH || seq < 1 || seq > MAX_SEQ)
        return epm_fail(EPM_ERR_FORMAT, "%s: token ids have shape [%lld, %lld]; each must be in [1, %d] and [1, %d]",
                        label, (long long)batch, (long long)seq, MAX_BATCH, MAX_SEQ);
    epm_tokens *t;
    EPM_CHECK(alloc_batch((int)batch, &t));
    size_t w = epm_dtype_size(dtype);
    epm_status st = EPM_OK;
    for (int s = 0; s < t->batch && st == EPM_OK; s++) {
        t->lens[s] = (int)seq;
        if (!(t->ids[s] = epm_malloc((size_t)seq * sizeof(int32_t)))) {
            st = EPM_ERR_NOMEM;
            break;
        }
        for (int i = 0; i < (int)seq; i++) {
            const uint8_t *p = data + ((size_t)s * (size_t)seq + (size_t)i) * w;
            long long v;
            if (w == 4) {
                int32_t x;
                memcpy(&x, p, 4);
                v = x;
            } else {
                int64_t x;
                memcpy(&x, p, 8);
                v = (long long)x;
            }
            if ((st = check_id(label, vocab, s, i, v)) != EPM_OK)
                break;
            t->ids[s][i] = (int32_t)v;
        }
    }
    if (st != EPM_OK) {
        epm_tokens_destroy(t);
        return st;
    }
    *out = t;
    return EPM_OK;
}

static int int_list(json_t *a)
{
    if (!json_is_array(a))
        return 0;
    for (size_t i = 0; i < json_array_size(a); i++)
        if (!json_is_integer(json_array_get(a, i)))
            return 0;
    return 1;
}

/* "max_new_tokens": absent or null (the run's --max-new-tokens), an integer
 * for every sequence, or a list of one per sequence; each in [1, 2^20] */
static epm_status max_new_of(json_t *v, const char *label, epm_tokens *t)
{
    if (!v || json_is_null(v))
        return EPM_OK;
    char b[64];
    if (json_is_array(v) && json_array_size(v) != (size_t)t->batch)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'max_new_tokens' has %zu values for %d sequences", label,
                        json_array_size(v), t->batch);
    if (!(t->max_new = epm_malloc((size_t)t->batch * sizeof *t->max_new)))
        return EPM_ERR_NOMEM;
    for (int s = 0; s < t->batch; s++) {
        json_t *e = json_is_array(v) ? json_array_get(v, (size_t)s) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > (1 << 20)) {
            char at[16] = "";
            if (json_is_array(v))
                snprintf(at, sizeof at, "[%d]", s);
            return epm_fail(EPM_ERR_FORMAT, "%s: max_new_tokens%s = %s: expected an integer in [1, 1048576], or a "
                            "list of one per sequence", label, at, epm_json_show(e, b, sizeof b));
        }
        t->max_new[s] = (int)json_integer_value(e);
    }
    return EPM_OK;
}

/* Request objects (vLLM's: prompt_token_ids, max_tokens, SamplingParams),
 * from a JSON list (lines NULL), a JSON-lines file (the line of each) or a
 * file of one request object (single). */
static epm_status from_requests(json_t *list, const int *lines, int single, const char *label, int vocab,
                                epm_tokens **out)
{
    const int batch = (int)json_array_size(list);
    epm_tokens *t;
    EPM_CHECK(alloc_batch(batch, &t));
    t->max_new = epm_calloc((size_t)batch, sizeof *t->max_new);
    t->req = epm_calloc((size_t)batch, sizeof *t->req);
    epm_status st = t->max_new && t->req ? EPM_OK : EPM_ERR_NOMEM;
    for (int s = 0; s < batch && st == EPM_OK; s++) {
        char where[48];
        if (single)
            snprintf(where, sizeof where, "the request");
        else if (lines)
            snprintf(where, sizeof where, "line %d (request %d)", lines[s], s);
        else
            snprintf(where, sizeof where, "requests[%d]", s);
        st = epm_request_from_json(json_array_get(list, (size_t)s), label, where, vocab, MAX_SEQ, &t->ids[s],
                                   &t->lens[s], &t->max_new[s], &t->req[s]);
    }
    if (st != EPM_OK) {
        epm_tokens_destroy(t);
        return st;
    }
    *out = t;
    return EPM_OK;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static int only_space(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_space(p[i]))
            return 0;
    return 1;
}

/* the line breaks in p[0, n), which error messages count lines by */
static int newlines(const char *p, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += p[i] == '\n';
    return k;
}

/* JSON lines: one request object per line (blank lines skipped) */
static epm_status from_jsonl(const char *text, size_t len, const char *label, int vocab, epm_tokens **out)
{
    json_t *list = json_array();
    int *lines = NULL, cap = 0, line = 1;
    epm_status st = list ? EPM_OK : EPM_ERR_NOMEM;
    for (size_t off = 0; st == EPM_OK;) {
        while (off < len && is_space(text[off]))
            line += text[off++] == '\n';
        if (off == len)
            break;
        json_error_t err;
        json_t *v = json_loadb(text + off, len - off, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &err);
        if (!v) {
            st = epm_fail(EPM_ERR_FORMAT, "%s: line %d: not a JSON request object (%s)", label, line + err.line - 1,
                          err.text);
            break;
        }
        int n = (int)json_array_size(list);
        if (n == MAX_BATCH) {
            json_decref(v);
            st = epm_fail(EPM_ERR_FORMAT, "%s: more than %d requests", label, MAX_BATCH);
            break;
        }
        if (n == cap) {
            int *l = epm_realloc(lines, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *l);
            if (!l) {
                json_decref(v);
                st = EPM_ERR_NOMEM;
                break;
            }
            lines = l;
        }
        lines[n] = line;
        if (json_array_append_new(list, v))
            st = EPM_ERR_NOMEM;
        line += newlines(text + off, (size_t)err.position);
        off += err.position;
    }
    if (st == EPM_OK)
        st = from_requests(list, lines, 0, label, vocab, out);
    json_decref(list);
    epm_free(lines);
    return st;
}

/* [[...], ...], a single [...], {"input_ids": ..., "attention_mask": ...}
 * as a tokenizer returns it (masked-out positions, padding, are dropped), or
 * requests: a list of objects, or one per line (JSON lines). */
static epm_status from_json(const char *text, size_t len, const char *label, int vocab, epm_tokens **out)
{
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not .npy, safetensors or valid JSON (line %d: %s)", label, err.line,
                        err.text);
    if (!only_space(text + err.position, len - err.position)) { /* more after the first value */
        const int obj = json_is_object(root);
        json_decref(root);
        if (obj) /* JSON lines of requests */
            return from_jsonl(text, len, label, vocab, out);
        return epm_fail(EPM_ERR_FORMAT, "%s: line %d: more text after the JSON value (only requests, one object a "
                        "line, come as JSON lines)", label, 1 + newlines(text, (size_t)err.position));
    }
    if (epm_request_like(root)) { /* one request */
        json_t *one = json_array();
        epm_status st = one && !json_array_append(one, root) ? from_requests(one, NULL, 1, label, vocab, out)
                                                             : EPM_ERR_NOMEM;
        json_decref(one);
        json_decref(root);
        return st;
    }
    if (json_is_array(root) && json_array_size(root) > 0 && json_is_object(json_array_get(root, 0))) {
        epm_status st = json_array_size(root) > MAX_BATCH
                            ? epm_fail(EPM_ERR_FORMAT, "%s: %zu requests; at most %d", label, json_array_size(root),
                                       MAX_BATCH)
                            : from_requests(root, NULL, 0, label, vocab, out);
        json_decref(root);
        return st;
    }
    epm_status st = EPM_OK;
    epm_tokens *t = NULL;
    json_t *ids = root, *mask = NULL;
    if (json_is_object(root)) {
        /* a tokenizer's output (transformers' BatchEncoding) and epmoe's
         * max_new_tokens; another key is a mistake to name, not to ignore
         * (a misspelt "temprature" would otherwise change nothing) */
        static const char *const known[] = {"input_ids", "attention_mask", "max_new_tokens", "token_type_ids",
                                            "position_ids", "special_tokens_mask", "offset_mapping",
                                            "overflowing_tokens", "num_truncated_tokens", "length", NULL};
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v) {
            int k = 0;
            while (known[k] && strcmp(known[k], key))
                k++;
            if (!known[k]) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: unknown field '%s' beside 'input_ids' (a tokenizer's output takes "
                              "input_ids, attention_mask and max_new_tokens; sampling parameters come with requests, "
                              "{\"prompt_token_ids\": [...], ...})", label, key);
                goto out;
            }
        }
        ids = json_object_get(root, "input_ids");
        mask = json_object_get(root, "attention_mask");
        if (json_is_null(mask))
            mask = NULL;
    }
    int flat = int_list(ids) && json_array_size(ids) > 0;
    if (mask && flat != int_list(mask)) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: field 'attention_mask' is not shaped like 'input_ids'", label);
        goto out;
    }
    if (!json_is_array(ids) || json_array_size(ids) == 0 || json_array_size(ids) > MAX_BATCH) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: expected a non-empty list of token-id lists, or {\"input_ids\": [[...]]}",
                      label);
        goto out;
    }
    int batch = flat ? 1 : (int)json_array_size(ids);
    if (mask && (!json_is_array(mask) || (flat ? json_array_size(mask) != json_array_size(ids)
                                                : json_array_size(mask) != (size_t)batch))) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: field 'attention_mask' is not shaped like 'input_ids'", label);
        goto out;
    }
    EPM_CHECK_GOTO(alloc_batch(batch, &t), st, out);
    for (int s = 0; s < batch; s++) {
        json_t *seq = flat ? ids : json_array_get(ids, (size_t)s);
        json_t *ms = !mask ? NULL : flat ? mask : json_array_get(mask, (size_t)s);
        char b[64];
        if (!json_is_array(seq) || json_array_size(seq) == 0 || json_array_size(seq) > MAX_SEQ) {
            st = epm_fail(EPM_ERR_FORMAT,
                          "%s: input_ids[%d]: sequence %d is not a non-empty list of token ids (got %s)", label, s, s,
                          epm_json_show(seq, b, sizeof b));
            goto out;
        }
        if (ms && (!json_is_array(ms) || json_array_size(ms) != json_array_size(seq))) {
            st = epm_fail(EPM_ERR_FORMAT, "%s: attention_mask[%d] = %s does not match the length of input_ids[%d]",
                          label, s, epm_json_show(ms, b, sizeof b), s);
            goto out;
        }
        size_t n = json_array_size(seq);
        if (!(t->ids[s] = epm_malloc(n * sizeof(int32_t)))) {
            st = EPM_ERR_NOMEM;
            goto out;
        }
        int kept = 0;
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(seq, i);
            if (ms) {
                json_t *mv = json_array_get(ms, i);
                if (!json_is_integer(mv) || (json_integer_value(mv) != 0 && json_integer_value(mv) != 1)) {
                    st = epm_fail(EPM_ERR_FORMAT, "%s: attention_mask[%d][%zu] = %s is not 0 or 1", label, s, i,
                                  epm_json_show(mv, b, sizeof b));
                    goto out;
                }
                if (json_integer_value(mv) == 0)
                    continue;
            }
            if (!json_is_integer(v)) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: input_ids[%d][%zu]: %s is not an integer token id", label, s, i,
                              epm_json_show(v, b, sizeof b));
                goto out;
            }
            EPM_CHECK_GOTO(check_id(label, vocab, s, (int)i, (long long)json_integer_value(v)), st, out);
            t->ids[s][kept++] = (int32_t)json_integer_value(v);
        }
        if (kept == 0) {
            st = epm_fail(EPM_ERR_FORMAT, "%s: input_ids[%d] has no tokens once attention_mask[%d] is applied", label,
                          s, s);
            goto out;
        }
        t->lens[s] = kept;
    }
    if (json_is_object(root))
        st = max_new_of(json_object_get(root, "max_new_tokens"), label, t);
out:
    json_decref(root);
    if (st != EPM_OK) {
        epm_tokens_destroy(t);
        return st;
    }
    *out = t;
    return EPM_OK;
}

static int looks_safetensors(const uint8_t *b, size_t size)
{
    if (size < 9)
        return 0;
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | b[i];
    return h >= 2 && h <= size - 8 && b[8] == '{';
}

epm_status epm_tokens_parse(const void *buf, size_t size, const char *label, int vocab, epm_tokens **out)
{
    if (!out || (!buf && size))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_tokens_parse: NULL argument");
    *out = NULL;
    if (!label)
        label = "tokens";
    if (vocab < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: vocabulary size %d is negative", label, vocab);
    if (epm_npy_is(buf, size)) {
        epm_npy a;
        EPM_CHECK(epm_npy_parse(buf, size, label, &a));
        return from_array(label, vocab, a.dtype, a.ndim, a.shape, a.data, out);
    }
    if (looks_safetensors(buf, size)) {
        epm_safetensors *st;
        EPM_CHECK(epm_st_parse(buf, size, label, &st));
        const epm_st_tensor *t = epm_st_find(st, "input_ids");
        epm_status s = t ? from_array(label, vocab, t->dtype, t->ndim, t->shape, t->data, out)
                         : epm_fail(EPM_ERR_FORMAT, "%s: safetensors file has no 'input_ids' tensor", label);
        epm_st_close(st);
        return s;
    }
    return from_json(buf, size, label, vocab, out);
}

epm_status epm_tokens_load(const char *path, int vocab, epm_tokens **out)
{
    if (!path || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_tokens_load: NULL argument");
    *out = NULL;
    char *data;
    size_t n;
    EPM_CHECK(epm_read_file(path, (size_t)1 << 31, &data, &n));
    epm_status st = epm_tokens_parse(data, n, path, vocab, out);
    epm_free(data);
    return st;
}
