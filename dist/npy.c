/* NumPy .npy: magic, version, header length, a Python dict literal
 * {'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }, then data. */
#include <string.h>

#include "npy.h"

static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

int epm_npy_is(const void *buf, size_t size) { return size >= 6 && !memcmp(buf, magic, 6); }

typedef struct cur {
    const char *p, *end, *start, *label;
} cur;

static void skip_ws(cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int eat(cur *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static epm_status bad(const cur *c, const char *what)
{
    return epm_fail(EPM_ERR_FORMAT, "%s: .npy header, byte %td: %s", c->label, c->p - c->start, what);
}

/* A quoted string without escapes (none of the keys or dtypes need them). */
static int quoted(cur *c, char *buf, size_t cap)
{
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return 0;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || n + 1 >= cap)
            return 0;
        buf[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return 0;
    c->p++;
    buf[n] = '\0';
    return 1;
}

static int word(cur *c, const char *w)
{
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, w, n)) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int number(cur *c, int64_t *out)
{
    skip_ws(c);
    int64_t v = 0;
    const char *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L') /* Python 2 longs */
        c->p++;
    *out = v;
    return c->p > s;
}

static int dtype_of(const char *d, epm_dtype *out)
{
    static const struct {
        const char *code;
        epm_dtype t;
    } map[] = {{"f4", EPM_DTYPE_F32}, {"f2", EPM_DTYPE_F16}, {"f8", EPM_DTYPE_F64}, {"i1", EPM_DTYPE_I8},
               {"u1", EPM_DTYPE_U8},  {"i2", EPM_DTYPE_I16}, {"i4", EPM_DTYPE_I32}, {"i8", EPM_DTYPE_I64},
               {"b1", EPM_DTYPE_BOOL}};
    if (d[0] != '<' && d[0] != '|' && d[0] != '=')
        return 0;
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strcmp(d + 1, map[i].code)) {
            /* one-byte types carry '|', wider ones an explicit byte order */
            if ((d[0] == '|') != (epm_dtype_size(map[i].t) == 1) && d[0] != '=')
                return 0;
            *out = map[i].t;
            return 1;
        }
    return 0;
}

static epm_status parse_dict(cur *c, epm_npy *h)
{
    int seen_d = 0, seen_f = 0, seen_s = 0, fortran = 0;
    char descr[16];
    if (!eat(c, '{'))
        return bad(c, "expected '{'");
    for (;;) {
        if (eat(c, '}'))
            break;
        char key[32];
        if (!quoted(c, key, sizeof key))
            return bad(c, "expected a quoted key or '}'");
        if (!eat(c, ':'))
            return bad(c, "expected ':'");
        if (!strcmp(key, "descr") && !seen_d) {
            if (!quoted(c, descr, sizeof descr))
                return bad(c, "'descr' is not a short quoted dtype");
            if (!dtype_of(descr, &h->dtype))
                return epm_fail(EPM_ERR_UNSUPPORTED, "%s: .npy dtype '%s' is not supported (little-endian ints, "
                                "floats, bool)", c->label, descr);
            seen_d = 1;
        } else if (!strcmp(key, "fortran_order") && !seen_f) {
            if (word(c, "True"))
                fortran = 1;
            else if (!word(c, "False"))
                return bad(c, "'fortran_order' is not True or False");
            seen_f = 1;
        } else if (!strcmp(key, "shape") && !seen_s) {
            if (!eat(c, '('))
                return bad(c, "'shape' is not a tuple");
            h->ndim = 0;
            while (!eat(c, ')')) {
                if (h->ndim == EPM_NPY_MAX_DIMS)
                    return bad(c, "'shape' has too many dimensions");
                if (!number(c, &h->shape[h->ndim]))
                    return bad(c, "'shape' entry is not a non-negative integer");
                h->ndim++;
                if (!eat(c, ',')) {
                    if (!eat(c, ')'))
                        return bad(c, "expected ',' or ')' in 'shape'");
                    break;
                }
            }
            seen_s = 1;
        } else {
            return bad(c, "unknown or repeated key");
        }
        if (!eat(c, ',')) {
            if (!eat(c, '}'))
                return bad(c, "expected ',' or '}'");
            break;
        }
    }
    if (!seen_d || !seen_f || !seen_s)
        return bad(c, "'descr', 'fortran_order' and 'shape' are all required");
    int big_dims = 0;
    for (int i = 0; i < h->ndim; i++)
        big_dims += h->shape[i] > 1;
    if (fortran && big_dims > 1)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: .npy in Fortran order is not supported (save with C order)",
                        c->label);
    return EPM_OK;
}

epm_status epm_npy_parse(const void *buf, size_t size, const char *label, epm_npy *out)
{
    memset(out, 0, sizeof *out);
    const uint8_t *b = buf;
    if (!epm_npy_is(buf, size) || size < 10)
        return epm_fail(EPM_ERR_FORMAT, "%s: not a .npy file (magic missing or file too short)", label);
    int major = b[6];
    size_t pre = major == 1 ? 10 : 12;
    if (major < 1 || major > 3)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: .npy version %d.%d is not supported (1.0, 2.0, 3.0)", label, major,
                        b[7]);
    if (size < pre)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy file ends inside its preamble", label);
    uint64_t hlen = major == 1 ? (uint64_t)(b[8] | b[9] << 8)
                               : (uint64_t)b[8] | (uint64_t)b[9] << 8 | (uint64_t)b[10] << 16 | (uint64_t)b[11] << 24;
    if (hlen > size - pre)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy header length %llu runs past the end of the %zu-byte file", label,
                        (unsigned long long)hlen, size);
    const char *txt = (const char *)b + pre;
    cur c = {txt, txt + hlen, txt, label};
    EPM_CHECK(parse_dict(&c, out));
    size_t numel = 1, bytes;
    for (int i = 0; i < out->ndim; i++)
        if (!epm_mul_ok(numel, (size_t)out->shape[i], &numel) || numel > (size_t)INT64_MAX)
            return epm_fail(EPM_ERR_FORMAT, "%s: .npy shape overflows", label);
    if (!epm_mul_ok(numel, epm_dtype_size(out->dtype), &bytes))
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy data size overflows", label);
    size_t have = size - pre - (size_t)hlen;
    if (have != bytes)
        return epm_fail(EPM_ERR_FORMAT, "%s: .npy data is %zu bytes, shape and dtype %s need %zu%s", label, have,
                        epm_dtype_name(out->dtype), bytes, have < bytes ? " (truncated file?)" : "");
    out->numel = (int64_t)numel;
    out->data = b + pre + hlen;
    out->data_bytes = bytes;
    return EPM_OK;
}
