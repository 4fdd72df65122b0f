#include <stdlib.h>
#include <string.h>

#include "trace_internal.h"

epm_status epm_trace_create(int layers, int64_t tokens, int k, int experts, epm_trace **out)
{
    *out = NULL;
    if (layers <= 0 || tokens < 0 || k <= 0 || experts <= 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace: layers=%d tokens=%lld k=%d experts=%d must be positive",
                        layers, (long long)tokens, k, experts);
    size_t n;
    if (!epm_mul_ok((size_t)layers, (size_t)tokens, &n) || !epm_mul_ok(n, (size_t)k, &n) ||
        n > (size_t)INT64_MAX / sizeof(int32_t))
        return epm_fail(EPM_ERR_INVALID_ARG, "trace: %d layers x %lld tokens x %d is too large", layers,
                        (long long)tokens, k);
    epm_trace *t = epm_calloc(1, sizeof *t);
    if (!t)
        return EPM_ERR_NOMEM;
    t->ids = epm_malloc(n * sizeof *t->ids);
    if (!t->ids) {
        epm_free(t);
        return EPM_ERR_NOMEM;
    }
    memset(t->ids, 0xff, n * sizeof *t->ids); /* all -1 */
    t->layers = layers;
    t->tokens = tokens;
    t->k = k;
    t->experts = experts;
    *out = t;
    return EPM_OK;
}

void epm_trace_destroy(epm_trace *t)
{
    if (!t)
        return;
    epm_free(t->ids);
    epm_free(t->weights);
    epm_free(t->seq_ids);
    epm_free(t->pass_ids);
    epm_free(t);
}

int epm_trace_layers(const epm_trace *t) { return t->layers; }
int64_t epm_trace_tokens(const epm_trace *t) { return t->tokens; }
int epm_trace_k(const epm_trace *t) { return t->k; }
int epm_trace_experts(const epm_trace *t) { return t->experts; }

static size_t layer_off(const epm_trace *t, int layer) { return (size_t)layer * (size_t)t->tokens * (size_t)t->k; }

int32_t *epm_trace_ids(epm_trace *t, int layer) { return t->ids + layer_off(t, layer); }
const int32_t *epm_trace_ids_const(const epm_trace *t, int layer) { return t->ids + layer_off(t, layer); }

const float *epm_trace_weights(const epm_trace *t, int layer)
{
    return t->weights ? t->weights + layer_off(t, layer) : NULL;
}

float *epm_trace_weights_mut(epm_trace *t, int layer)
{
    return t->weights ? t->weights + layer_off(t, layer) : NULL;
}

epm_status epm_trace_weights_alloc(epm_trace *t)
{
    if (t->weights)
        return EPM_OK;
    t->weights = epm_calloc(layer_off(t, t->layers) ? layer_off(t, t->layers) : 1, sizeof(float));
    return t->weights ? EPM_OK : EPM_ERR_NOMEM;
}

const int32_t *epm_trace_seq_ids(const epm_trace *t) { return t->seq_ids; }

/* A per-token column (seq_ids, pass_ids): a copy of src with every value >= min, or none for NULL */
static epm_status set_column(const epm_trace *t, int32_t **col, const int32_t *src, int min, const char *name)
{
    if (!src) {
        epm_free(*col);
        *col = NULL;
        return EPM_OK;
    }
    for (int64_t i = 0; i < t->tokens; i++)
        if (src[i] < min)
            return epm_fail(EPM_ERR_INVALID_ARG, "trace: %s[%lld] = %d is below %d", name, (long long)i, src[i], min);
    if (!*col) {
        *col = epm_malloc((size_t)(t->tokens ? t->tokens : 1) * sizeof **col);
        if (!*col)
            return EPM_ERR_NOMEM;
    }
    memcpy(*col, src, (size_t)t->tokens * sizeof **col);
    return EPM_OK;
}

epm_status epm_trace_set_seq_ids(epm_trace *t, const int32_t *seq_ids)
{
    return set_column(t, &t->seq_ids, seq_ids, 0, "seq_ids");
}

const int32_t *epm_trace_pass_ids(const epm_trace *t) { return t->pass_ids; }

epm_status epm_trace_set_pass_ids(epm_trace *t, const int32_t *pass_ids)
{
    return set_column(t, &t->pass_ids, pass_ids, -1, "pass_ids");
}

int64_t epm_trace_seq_of(const epm_trace *t, int64_t tok) { return t->seq_ids ? t->seq_ids[tok] : tok; }

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

epm_status epm_trace_pass_list(const epm_trace *t, int32_t **ids, int64_t *n)
{
    *ids = NULL;
    *n = 0;
    int64_t m = 0;
    for (int64_t i = 0; t->pass_ids && i < t->tokens; i++)
        m += t->pass_ids[i] >= 0;
    if (m == 0)
        return EPM_OK;
    int32_t *v = epm_malloc((size_t)m * sizeof *v);
    if (!v)
        return EPM_ERR_NOMEM; /* (epm_malloc said which allocation) */
    m = 0;
    for (int64_t i = 0; i < t->tokens; i++)
        if (t->pass_ids[i] >= 0)
            v[m++] = t->pass_ids[i];
    qsort(v, (size_t)m, sizeof *v, cmp_i32);
    int64_t d = 0;
    for (int64_t i = 0; i < m; i++)
        if (d == 0 || v[d - 1] != v[i])
            v[d++] = v[i];
    *ids = v;
    *n = d;
    return EPM_OK;
}

epm_status epm_trace_passes(const epm_trace *t, int64_t *passes)
{
    int32_t *ids;
    EPM_CHECK(epm_trace_pass_list(t, &ids, passes));
    epm_free(ids);
    return EPM_OK;
}

epm_status epm_trace_slice(const epm_trace *t, int64_t begin, int64_t end, epm_trace **out)
{
    *out = NULL;
    if (begin < 0 || end < begin || end > t->tokens)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace slice [%lld, %lld) is outside [0, %lld)", (long long)begin,
                        (long long)end, (long long)t->tokens);
    epm_trace *s;
    EPM_CHECK(epm_trace_create(t->layers, end - begin, t->k, t->experts, &s));
    size_t row = (size_t)t->k;
    size_t n = (size_t)(end - begin) * row;
    if (t->weights && epm_trace_weights_alloc(s) != EPM_OK) {
        epm_trace_destroy(s);
        return EPM_ERR_NOMEM;
    }
    for (int l = 0; l < t->layers; l++) {
        memcpy(epm_trace_ids(s, l), epm_trace_ids_const(t, l) + (size_t)begin * row, n * sizeof(int32_t));
        if (t->weights)
            memcpy(epm_trace_weights_mut(s, l), epm_trace_weights(t, l) + (size_t)begin * row, n * sizeof(float));
    }
    epm_status st = t->seq_ids ? epm_trace_set_seq_ids(s, t->seq_ids + begin) : EPM_OK;
    if (st == EPM_OK && t->pass_ids)
        st = epm_trace_set_pass_ids(s, t->pass_ids + begin);
    if (st != EPM_OK) {
        epm_trace_destroy(s);
        return st;
    }
    *out = s;
    return EPM_OK;
}

epm_status epm_trace_check_ids(const epm_trace *t, const char *label)
{
    for (int l = 0; l < t->layers; l++) {
        const int32_t *ids = epm_trace_ids_const(t, l);
        for (int64_t i = 0; i < t->tokens; i++) {
            const int32_t *row = ids + (size_t)i * (size_t)t->k;
            int ended = 0;
            for (int j = 0; j < t->k; j++) {
                int32_t e = row[j];
                if (e == -1) {
                    ended = 1;
                    continue;
                }
                if (e < -1 || e >= t->experts)
                    return epm_fail(EPM_ERR_FORMAT, "%s: topk_ids.%d[%lld][%d] = %d is outside [0, %d)", label, l,
                                    (long long)i, j, e, t->experts);
                if (ended)
                    return epm_fail(EPM_ERR_FORMAT,
                                    "%s: topk_ids.%d[%lld][%d] = %d follows a -1 (padding must be trailing)",
                                    label, l, (long long)i, j, e);
                for (int q = 0; q < j; q++)
                    if (row[q] == e)
                        return epm_fail(EPM_ERR_FORMAT, "%s: topk_ids.%d[%lld] names expert %d twice", label, l,
                                        (long long)i, e);
            }
        }
    }
    return EPM_OK;
}
