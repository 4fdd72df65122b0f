/* Reading and writing routing traces: safetensors (topk_ids.{l} per layer)
 * and NumPy .npy [layers, tokens, k]. Every size, offset and id is checked
 * before use; errors name the file, the tensor or field, and the value. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "trace_internal.h"

/* Real models route to at most a few dozen experts per token; the bound keeps
 * the per-row duplicate check of a hostile file from going quadratic. */
enum { TRACE_MAX_K = 256 };
/* Far beyond any model (DeepSeek-V3 has 58 MoE layers); bounds the work a
 * hostile .npy of zero tokens could ask for. */
enum { TRACE_MAX_LAYERS = 1 << 16 };
/* The largest published expert count is about a million (PEER, 1024^2); an
 * id beyond that is corruption, and would make per-expert tables huge. */
enum { TRACE_MAX_EXPERTS = 1 << 20 };

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    float f;
    if (exp == 0)
        f = ldexpf((float)mant, -24); /* subnormal or zero */
    else if (exp == 31)
        f = mant ? NAN : INFINITY;
    else
        f = ldexpf((float)(mant | 0x400), exp - 25);
    return sign ? -f : f;
}

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* An id as stored (int32 or int64) into the trace's int32, refusing what does
 * not fit; `where` names the tensor, `flat` the element. */
static epm_status read_ids(const uint8_t *src, size_t esize, size_t n, int32_t *dst, const char *label,
                           const char *where, int64_t k)
{
    for (size_t i = 0; i < n; i++) {
        int64_t v = esize == 8 ? (int64_t)le64(src + 8 * i) : (int64_t)(int32_t)le32(src + 4 * i);
        if (v < INT32_MIN || v > INT32_MAX)
            return epm_fail(EPM_ERR_FORMAT, "%s: %s[%lld][%lld] = %lld does not fit an int32 expert id", label,
                            where, (long long)(i / (size_t)k), (long long)(i % (size_t)k), (long long)v);
        dst[i] = (int32_t)v;
    }
    return EPM_OK;
}

/* With experts = 0 the expert count is the largest id + 1; a trace of only
 * -1 cannot say how many experts there are. */
static epm_status settle_experts(epm_trace *t, int experts, const char *label)
{
    if (experts < 0 || experts > TRACE_MAX_EXPERTS)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: experts = %d is outside [0, %d] (0 infers it)", label, experts,
                        TRACE_MAX_EXPERTS);
    if (experts == 0) {
        int32_t max = -1;
        size_t n = (size_t)t->layers * (size_t)t->tokens * (size_t)t->k, at = 0;
        for (size_t i = 0; i < n; i++)
            if (t->ids[i] > max) {
                max = t->ids[i];
                at = i;
            }
        if (max < 0)
            return epm_fail(EPM_ERR_FORMAT,
                            "%s: every topk_ids slot is -1, so the expert count cannot be inferred (pass it)",
                            label);
        if (max >= TRACE_MAX_EXPERTS) {
            size_t per_layer = (size_t)t->tokens * (size_t)t->k;
            return epm_fail(EPM_ERR_FORMAT, "%s: topk_ids.%zu[%zu][%zu] = %d is beyond the %d-expert limit", label,
                            at / per_layer, at % per_layer / (size_t)t->k, at % (size_t)t->k, max,
                            TRACE_MAX_EXPERTS);
        }
        experts = max + 1;
    }
    t->experts = experts;
    return epm_trace_check_ids(t, label);
}

static epm_status check_k(const char *label, const char *what, int64_t k)
{
    if (k < 1 || k > TRACE_MAX_K)
        return epm_fail(EPM_ERR_FORMAT, "%s: %s: k (experts per token) = %lld is outside [1, %d]", label, what,
                        (long long)k, TRACE_MAX_K);
    return EPM_OK;
}

/* ---- safetensors ---- */

/* "topk_ids.12" -> 12 when name is prefix + a canonical decimal (no sign, no
 * leading zero); -1 when it has the prefix but a malformed number; -2 when
 * the prefix does not match. */
static long layer_of(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0)
        return -2;
    const char *s = name + n;
    if (!*s || (s[0] == '0' && s[1]) || strlen(s) > 9)
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

static epm_status st_check_names(const epm_safetensors *st, const char *label, int layers, int *has_weights)
{
    int weights = 0;
    for (int i = 0; i < st->count; i++) {
        const char *nm = st->tensors[i].name;
        long l = layer_of(nm, "topk_ids.");
        if (l == -1)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': the layer number is not a non-negative integer",
                            label, nm);
        if (l >= layers)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is present but 'topk_ids.%d' is missing", label, nm,
                            layers);
        l = layer_of(nm, "topk_weights.");
        if (l == -1)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': the layer number is not a non-negative integer",
                            label, nm);
        if (l >= layers)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' has no matching 'topk_ids.%ld'", label, nm, l);
        if (l >= 0)
            weights++;
    }
    if (weights && weights != layers) {
        for (int l = 0; l < layers; l++) {
            char nm[40];
            snprintf(nm, sizeof nm, "topk_weights.%d", l);
            if (!epm_st_find(st, nm))
                return epm_fail(EPM_ERR_FORMAT,
                                "%s: tensor '%s' is missing while other layers have topk_weights", label, nm);
        }
    }
    *has_weights = weights > 0;
    return EPM_OK;
}

static epm_status st_shape2(const char *label, const epm_st_tensor *t, int64_t tokens, int64_t k)
{
    if (t->ndim != 2)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape' has %d dims, expected 2 [tokens, k]", label,
                        t->name, t->ndim);
    if (tokens >= 0 && t->shape[0] != tokens)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape[0]' (tokens) is %lld, but topk_ids.0 has %lld",
                        label, t->name, (long long)t->shape[0], (long long)tokens);
    if (k >= 0 && t->shape[1] != k)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape[1]' (k) is %lld, but topk_ids.0 has %lld",
                        label, t->name, (long long)t->shape[1], (long long)k);
    return EPM_OK;
}

static epm_status st_read_weights(const epm_st_tensor *w, const char *label, float *dst)
{
    const uint8_t *p = w->data;
    size_t n = (size_t)w->numel;
    for (size_t i = 0; i < n; i++) {
        float f;
        switch (w->dtype) {
        case EPM_DTYPE_F32: f = bits_to_float(le32(p + 4 * i)); break;
        case EPM_DTYPE_BF16: f = bits_to_float((uint32_t)le16(p + 2 * i) << 16); break;
        default: f = half_to_float(le16(p + 2 * i)); break;
        }
        if (!isfinite(f))
            return epm_fail(EPM_ERR_FORMAT, "%s: %s[%lld][%lld] = %g is not finite", label, w->name,
                            (long long)(i / (size_t)w->shape[1]), (long long)(i % (size_t)w->shape[1]), (double)f);
        dst[i] = f;
    }
    return EPM_OK;
}

/* An optional per-token column: `name` [tokens] I32 or I64, each value in [min, INT32_MAX] */
static epm_status st_read_column(const epm_safetensors *st, const char *label, epm_trace *t, const char *name, int min,
                                 epm_status (*set)(epm_trace *, const int32_t *))
{
    const epm_st_tensor *s = epm_st_find(st, name);
    if (!s)
        return EPM_OK;
    if (s->dtype != EPM_DTYPE_I32 && s->dtype != EPM_DTYPE_I64)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'dtype' is %s, expected I32 or I64", label, name,
                        epm_dtype_name(s->dtype));
    if (s->ndim != 1 || s->shape[0] != t->tokens)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape' must be [%lld] (one per token)", label, name,
                        (long long)t->tokens);
    int32_t *buf = epm_malloc((size_t)(t->tokens ? t->tokens : 1) * sizeof *buf);
    if (!buf)
        return EPM_ERR_NOMEM;
    const uint8_t *p = s->data;
    epm_status st_ = EPM_OK;
    for (int64_t i = 0; i < t->tokens && st_ == EPM_OK; i++) {
        int64_t v = s->dtype == EPM_DTYPE_I64 ? (int64_t)le64(p + 8 * i) : (int64_t)(int32_t)le32(p + 4 * i);
        if (v < min || v > INT32_MAX)
            st_ = epm_fail(EPM_ERR_FORMAT, "%s: %s[%lld] = %lld is outside [%d, %d]", label, name, (long long)i,
                           (long long)v, min, INT32_MAX);
        else
            buf[i] = (int32_t)v;
    }
    if (st_ == EPM_OK)
        st_ = set(t, buf);
    epm_free(buf);
    return st_;
}

static epm_status parse_safetensors(const void *buf, size_t size, const char *label, int experts,
                                    epm_trace **out)
{
    epm_safetensors *st = NULL;
    epm_trace *t = NULL;
    epm_status s;
    EPM_CHECK(epm_st_parse(buf, size, label, &st));

    int layers = 0;
    char nm[40];
    for (;; layers++) {
        snprintf(nm, sizeof nm, "topk_ids.%d", layers);
        if (!epm_st_find(st, nm))
            break;
    }
    if (layers == 0) {
        s = epm_fail(EPM_ERR_FORMAT, "%s: tensor 'topk_ids.0' is missing: not a routing trace", label);
        goto fail;
    }
    int has_weights = 0;
    EPM_CHECK_GOTO(st_check_names(st, label, layers, &has_weights), s, fail);

    const epm_st_tensor *t0 = epm_st_find(st, "topk_ids.0");
    EPM_CHECK_GOTO(st_shape2(label, t0, -1, -1), s, fail);
    EPM_CHECK_GOTO(check_k(label, "tensor 'topk_ids.0': field 'shape[1]'", t0->shape[1]), s, fail);
    int64_t tokens = t0->shape[0], k = t0->shape[1];
    EPM_CHECK_GOTO(epm_trace_create(layers, tokens, (int)k, 1, &t), s, fail);
    if (has_weights)
        EPM_CHECK_GOTO(epm_trace_weights_alloc(t), s, fail);

    for (int l = 0; l < layers; l++) {
        snprintf(nm, sizeof nm, "topk_ids.%d", l);
        const epm_st_tensor *ti = epm_st_find(st, nm);
        if (ti->dtype != EPM_DTYPE_I32 && ti->dtype != EPM_DTYPE_I64) {
            s = epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'dtype' is %s, expected I32 (or I64)", label, nm,
                         epm_dtype_name(ti->dtype));
            goto fail;
        }
        EPM_CHECK_GOTO(st_shape2(label, ti, tokens, k), s, fail);
        EPM_CHECK_GOTO(read_ids(ti->data, epm_dtype_size(ti->dtype), (size_t)ti->numel, epm_trace_ids(t, l), label,
                                nm, k),
                       s, fail);
        if (!has_weights)
            continue;
        snprintf(nm, sizeof nm, "topk_weights.%d", l);
        const epm_st_tensor *tw = epm_st_find(st, nm);
        if (tw->dtype != EPM_DTYPE_F32 && tw->dtype != EPM_DTYPE_BF16 && tw->dtype != EPM_DTYPE_F16) {
            s = epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'dtype' is %s, expected F32, BF16 or F16", label,
                         nm, epm_dtype_name(tw->dtype));
            goto fail;
        }
        EPM_CHECK_GOTO(st_shape2(label, tw, tokens, k), s, fail);
        EPM_CHECK_GOTO(st_read_weights(tw, label, epm_trace_weights_mut(t, l)), s, fail);
    }
    EPM_CHECK_GOTO(st_read_column(st, label, t, "seq_ids", 0, epm_trace_set_seq_ids), s, fail);
    EPM_CHECK_GOTO(st_read_column(st, label, t, "pass_ids", -1, epm_trace_set_pass_ids), s, fail);
    EPM_CHECK_GOTO(settle_experts(t, experts, label), s, fail);
    epm_st_close(st);
    *out = t;
    return EPM_OK;
fail:
    epm_trace_destroy(t);
    epm_st_close(st);
    return s;
}

/* ---- NumPy .npy ----
 * The header is a Python dict literal such as
 *   {'descr': '<i4', 'fortran_order': False, 'shape': (4, 32, 2), }
 * parsed here by a strict recursive-descent reader that accepts exactly that
 * grammar (no escapes, no nesting beyond the shape tuple), never eval. */

typedef struct npy_cursor {
    const char *p, *end;
    const char *label;
} npy_cursor;

static void npy_ws(npy_cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int npy_eat(npy_cursor *c, char ch)
{
    npy_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static epm_status npy_bad(const npy_cursor *c, const char *start, const char *what)
{
    return epm_fail(EPM_ERR_FORMAT, "%s: .npy header byte %td: %s", c->label, c->p - start, what);
}

/* A quoted string without escapes, copied into buf (truncated never: too long is an error). */
static int npy_string(npy_cursor *c, char *buf, size_t cap)
{
    npy_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return 0;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || (unsigned char)*c->p < 0x20 || n + 1 >= cap)
            return 0;
        buf[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return 0;
    c->p++;
    buf[n] = '\0';
    return 1;
}

static int npy_word(npy_cursor *c, const char *w)
{
    npy_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int npy_uint(npy_cursor *c, int64_t *out)
{
    npy_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return 0;
    int64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L') /* Python 2 wrote long literals */
        c->p++;
    *out = v;
    return 1;
}

typedef struct npy_header {
    char descr[16];
    int fortran;
    int ndim;
    int64_t shape[EPM_ST_MAX_DIMS];
} npy_header;

static epm_status npy_parse_dict(const char *txt, size_t n, const char *label, npy_header *h)
{
    npy_cursor c = {txt, txt + n, label};
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    if (!npy_eat(&c, '{'))
        return npy_bad(&c, txt, "expected '{'");
    for (;;) {
        if (npy_eat(&c, '}'))
            break;
        char key[32];
        if (!npy_string(&c, key, sizeof key))
            return npy_bad(&c, txt, "expected a quoted key or '}'");
        if (!npy_eat(&c, ':'))
            return npy_bad(&c, txt, "expected ':' after a key");
        if (!strcmp(key, "descr") && !seen_descr) {
            seen_descr = 1;
            if (!npy_string(&c, h->descr, sizeof h->descr))
                return npy_bad(&c, txt, "field 'descr' is not a short quoted string");
        } else if (!strcmp(key, "fortran_order") && !seen_fortran) {
            seen_fortran = 1;
            if (npy_word(&c, "True"))
                h->fortran = 1;
            else if (npy_word(&c, "False"))
                h->fortran = 0;
            else
                return npy_bad(&c, txt, "field 'fortran_order' is not True or False");
        } else if (!strcmp(key, "shape") && !seen_shape) {
            seen_shape = 1;
            if (!npy_eat(&c, '('))
                return npy_bad(&c, txt, "field 'shape' is not a tuple");
            h->ndim = 0;
            while (!npy_eat(&c, ')')) {
                if (h->ndim == EPM_ST_MAX_DIMS)
                    return npy_bad(&c, txt, "field 'shape' has too many dims");
                if (!npy_uint(&c, &h->shape[h->ndim]))
                    return npy_bad(&c, txt, "field 'shape' holds something other than a non-negative integer");
                h->ndim++;
                if (!npy_eat(&c, ',')) {
                    if (!npy_eat(&c, ')'))
                        return npy_bad(&c, txt, "field 'shape': expected ',' or ')'");
                    break;
                }
            }
        } else {
            return epm_fail(EPM_ERR_FORMAT, "%s: .npy header: key '%s' is unknown or repeated", label, key);
        }
        if (!npy_eat(&c, ',')) {
            if (!npy_eat(&c, '}'))
                return npy_bad(&c, txt, "expected ',' or '}'");
            break;
        }
    }
    npy_ws(&c);
    if (c.p != c.end)
        return npy_bad(&c, txt, "unexpected text after the dict");
    if (!seen_descr || !seen_fortran || !seen_shape)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy header: field '%s' is missing", label,
                        !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
    return EPM_OK;
}

static epm_status parse_npy(const void *buf, size_t size, const char *label, int experts, epm_trace **out)
{
    const uint8_t *p = buf;
    if (size < 10)
        return epm_fail(EPM_ERR_FORMAT, "%s: file is %zu bytes, too short for a .npy header", label, size);
    int major = p[6], minor = p[7];
    if (major < 1 || major > 3 || minor != 0)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy format version %d.%d is not 1.0, 2.0 or 3.0", label, major, minor);
    size_t pre = major == 1 ? 10 : 12;
    if (size < pre)
        return epm_fail(EPM_ERR_FORMAT, "%s: file is %zu bytes, too short for a .npy %d.0 header", label, size,
                        major);
    uint64_t hlen = major == 1 ? le16(p + 8) : le32(p + 8);
    if (hlen > size - pre)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy header length %llu runs past the end of the file (%zu bytes)",
                        label, (unsigned long long)hlen, size);
    npy_header h = {0};
    EPM_CHECK(npy_parse_dict((const char *)p + pre, (size_t)hlen, label, &h));

    const char *d = h.descr;
    if ((d[0] != '<' && d[0] != '|' && d[0] != '=') || d[1] != 'i' || (strcmp(d + 2, "4") && strcmp(d + 2, "8")))
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy field 'descr' is '%s', expected '<i4' or '<i8' (little-endian int32/int64)",
                        label, d);
    size_t esize = d[2] == '8' ? 8 : 4;
    if (h.fortran)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy field 'fortran_order' is True; only C order is supported", label);
    if (h.ndim != 3)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy field 'shape' has %d dims, expected 3 (layers, tokens, k)", label,
                        h.ndim);
    if (h.shape[0] < 1 || h.shape[0] > TRACE_MAX_LAYERS)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy field 'shape[0]' (layers) = %lld must be in [1, %d]", label,
                        (long long)h.shape[0], TRACE_MAX_LAYERS);
    EPM_CHECK(check_k(label, ".npy field 'shape[2]'", h.shape[2]));
    size_t n, bytes;
    if (!epm_mul_ok((size_t)h.shape[0], (size_t)h.shape[1], &n) || !epm_mul_ok(n, (size_t)h.shape[2], &n) ||
        !epm_mul_ok(n, esize, &bytes))
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy field 'shape' (%lld, %lld, %lld) overflows", label,
                        (long long)h.shape[0], (long long)h.shape[1], (long long)h.shape[2]);
    size_t have = size - pre - (size_t)hlen;
    if (have != bytes)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy data is %zu bytes but descr '%s' and shape (%lld, %lld, %lld) need %zu",
                        label, have, d, (long long)h.shape[0], (long long)h.shape[1], (long long)h.shape[2], bytes);

    epm_trace *t;
    EPM_CHECK(epm_trace_create((int)h.shape[0], h.shape[1], (int)h.shape[2], 1, &t));
    const uint8_t *data = p + pre + hlen;
    size_t per_layer = (size_t)h.shape[1] * (size_t)h.shape[2];
    epm_status s = EPM_OK;
    for (int l = 0; l < t->layers && s == EPM_OK; l++) {
        char where[40];
        snprintf(where, sizeof where, "element [%d]", l);
        s = read_ids(data + (size_t)l * per_layer * esize, esize, per_layer, epm_trace_ids(t, l), label, where,
                     h.shape[2]);
    }
    if (s == EPM_OK)
        s = settle_experts(t, experts, label);
    if (s != EPM_OK) {
        epm_trace_destroy(t);
        return s;
    }
    *out = t;
    return EPM_OK;
}

/* ---- entry points ---- */

epm_status epm_trace_parse(const void *buf, size_t size, const char *label, int experts, epm_trace **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_trace_parse: out is NULL");
    *out = NULL;
    if (!label)
        label = "(buffer)";
    if (!buf && size)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: buffer is NULL", label);
    if (experts < 0 || experts > TRACE_MAX_EXPERTS)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: experts = %d is outside [0, %d] (0 infers it)", label, experts,
                        TRACE_MAX_EXPERTS);
    const uint8_t *p = buf;
    if (size >= sizeof npy_magic && memcmp(p, npy_magic, sizeof npy_magic) == 0)
        return parse_npy(buf, size, label, experts, out);
    if (size >= 9 && p[8] == '{')
        return parse_safetensors(buf, size, label, experts, out);
    return epm_fail(EPM_ERR_FORMAT,
                    "%s: not a routing trace: neither a .npy file (magic \\x93NUMPY) nor safetensors (8-byte header "
                    "length, then '{') (%zu bytes)",
                    label, size);
}

epm_status epm_trace_load(const char *path, int experts, epm_trace **out)
{
    if (!out || !path)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_trace_load: path or out is NULL");
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return epm_fail(EPM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return epm_fail(EPM_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        /* Mapped, not read: a trace of a large model is gigabytes and is read once. */
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return epm_fail(EPM_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        }
    }
    close(fd);
    epm_status s = epm_trace_parse(map ? map : "", size, path, experts, out);
    if (map)
        munmap(map, size);
    return s;
}

static epm_status check_saveable(const epm_trace *t, const char *path)
{
    if (!t || !path)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace save: trace or path is NULL");
    return epm_trace_check_ids(t, path);
}

epm_status epm_trace_save(const epm_trace *t, const char *path)
{
    EPM_CHECK(check_saveable(t, path));
    epm_st_writer *w;
    EPM_CHECK(epm_st_writer_create(&w));
    epm_status s = EPM_OK;
    int64_t shape[2] = {t->tokens, t->k};
    char nm[40];
    for (int l = 0; l < t->layers && s == EPM_OK; l++) {
        snprintf(nm, sizeof nm, "topk_ids.%d", l);
        s = epm_st_writer_add(w, nm, EPM_DTYPE_I32, 2, shape, epm_trace_ids_const(t, l));
    }
    for (int l = 0; l < t->layers && s == EPM_OK && t->weights; l++) {
        snprintf(nm, sizeof nm, "topk_weights.%d", l);
        s = epm_st_writer_add(w, nm, EPM_DTYPE_F32, 2, shape, epm_trace_weights(t, l));
    }
    if (s == EPM_OK && t->seq_ids)
        s = epm_st_writer_add(w, "seq_ids", EPM_DTYPE_I32, 1, &t->tokens, t->seq_ids);
    if (s == EPM_OK && t->pass_ids)
        s = epm_st_writer_add(w, "pass_ids", EPM_DTYPE_I32, 1, &t->tokens, t->pass_ids);
    if (s == EPM_OK)
        s = epm_st_writer_save(w, path);
    epm_st_writer_destroy(w);
    return s;
}

typedef struct npy_write_ctx {
    const epm_trace *t;
    const char *path;
    const char *header;
    size_t hlen;
} npy_write_ctx;

static epm_status npy_produce(void *vctx, void *f)
{
    npy_write_ctx *c = vctx;
    EPM_CHECK(epm_file_write(f, c->path, c->header, c->hlen));
    size_t n = (size_t)c->t->layers * (size_t)c->t->tokens * (size_t)c->t->k;
    /* Written little-endian byte by byte in chunks, whatever the host order. */
    uint8_t chunk[4096];
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)c->t->ids[i];
        for (int b = 0; b < 4; b++)
            chunk[used++] = (uint8_t)(v >> (8 * b));
        if (used == sizeof chunk) {
            EPM_CHECK(epm_file_write(f, c->path, chunk, used));
            used = 0;
        }
    }
    return epm_file_write(f, c->path, chunk, used);
}

epm_status epm_trace_save_npy(const epm_trace *t, const char *path)
{
    EPM_CHECK(check_saveable(t, path));
    /* Version 1.0, header padded with spaces so that the data starts on a
     * 64-byte boundary, ending in '\n', as NumPy writes it. */
    char dict[160];
    int n = snprintf(dict, sizeof dict, "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %lld, %d), }",
                     t->layers, (long long)t->tokens, t->k);
    if (n < 0 || (size_t)n >= sizeof dict)
        return epm_fail(EPM_ERR_INTERNAL, "%s: .npy header does not fit", path);
    size_t total = (10 + (size_t)n + 1 + 63) & ~(size_t)63;
    char header[256];
    memcpy(header, npy_magic, sizeof npy_magic);
    header[6] = 1;
    header[7] = 0;
    size_t hlen = total - 10;
    header[8] = (char)(hlen & 0xff);
    header[9] = (char)(hlen >> 8);
    memcpy(header + 10, dict, (size_t)n);
    memset(header + 10 + n, ' ', total - 10 - (size_t)n - 1);
    header[total - 1] = '\n';
    npy_write_ctx c = {t, path, header, total};
    return epm_write_atomic(path, npy_produce, &c);
}
