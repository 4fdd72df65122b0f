#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

static int dtype_from_name(const char *s, epm_dtype *out)
{
    for (int t = 0; t < EPM_DTYPE_COUNT; t++) {
        if (strcmp(s, epm_dtype_name((epm_dtype)t)) == 0) {
            *out = (epm_dtype)t;
            return 1;
        }
    }
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const epm_st_tensor *x = *(const epm_st_tensor *const *)a;
    const epm_st_tensor *y = *(const epm_st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static epm_status parse_entry(const char *label, const char *name, json_t *v, epm_st_tensor *t,
                              size_t data_size)
{
    if (!json_is_object(v))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", label, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'dtype' missing or not a string", label, name);
    if (!dtype_from_name(json_string_value(jd), &t->dtype))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'dtype' has unknown value '%s'", label, name,
                        json_string_value(jd));
    if (!json_is_array(js))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape' missing or not an array", label, name);
    size_t nd = json_array_size(js);
    if (nd > EPM_ST_MAX_DIMS)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape' has %zu dims, at most %d supported",
                        label, name, nd, EPM_ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape[%zu]' is not a non-negative integer",
                            label, name, i);
        t->shape[i] = (int64_t)json_integer_value(d);
        if (!epm_mul_ok(numel, (size_t)t->shape[i], &numel))
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'shape' overflows", label, name);
    }
    t->numel = (int64_t)numel;
    size_t bytes;
    if (!epm_mul_ok(numel, epm_dtype_size(t->dtype), &bytes))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': byte size overflows", label, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': field 'data_offsets' is not [begin, end]", label, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return epm_fail(EPM_ERR_FORMAT,
                        "%s: tensor '%s': field 'data_offsets' = [%lld, %lld] lies outside the %zu data bytes",
                        label, name, (long long)b, (long long)e, data_size);
    if ((uint64_t)(e - b) != bytes)
        return epm_fail(EPM_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets span %lld bytes but dtype %s and shape need %zu", label,
                        name, (long long)(e - b), epm_dtype_name(t->dtype), bytes);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    return EPM_OK;
}

epm_status epm_st_parse(const void *buf, size_t size, const char *label, epm_safetensors **out)
{
    *out = NULL;
    const uint8_t *p = buf;
    if (size < 8)
        return epm_fail(EPM_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", label, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > EPM_ST_MAX_HEADER || hlen > size - 8)
        return epm_fail(EPM_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes) or the %llu limit",
                        label, (unsigned long long)hlen, size, (unsigned long long)EPM_ST_MAX_HEADER);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: header is not valid JSON (byte %d: %s)", label, jerr.position,
                        jerr.text);
    epm_status st = EPM_OK;
    epm_safetensors *s = epm_calloc(1, sizeof *s);
    if (!s) {
        json_decref(root);
        return EPM_ERR_NOMEM;
    }
    if (!json_is_object(root)) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: header is not a JSON object", label);
        goto fail;
    }
    s->data = p + 8 + hlen;
    s->data_size = size - 8 - (size_t)hlen;
    s->path = epm_strdup(label);
    size_t n = json_object_size(root);
    s->tensors = epm_calloc(n ? n : 1, sizeof *s->tensors);
    if (!s->path || !s->tensors) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        epm_st_tensor *t = &s->tensors[s->count];
        EPM_CHECK_GOTO(parse_entry(label, key, val, t, s->data_size), st, fail);
        t->name = epm_strdup(key);
        if (!t->name) {
            st = EPM_ERR_NOMEM;
            goto fail;
        }
        t->data = s->data + t->begin;
        s->count++;
    }
    /* Overlapping tensors would let one write alias another; the format forbids them. */
    if (s->count > 1) {
        epm_st_tensor **order = epm_malloc((size_t)s->count * sizeof *order);
        if (!order) {
            st = EPM_ERR_NOMEM;
            goto fail;
        }
        for (int i = 0; i < s->count; i++)
            order[i] = &s->tensors[i];
        qsort(order, (size_t)s->count, sizeof *order, cmp_begin);
        for (int i = 1; i < s->count; i++) {
            if (order[i]->begin < order[i - 1]->end) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section", label,
                              order[i - 1]->name, order[i]->name);
                break;
            }
        }
        epm_free(order);
        if (st != EPM_OK)
            goto fail;
    }
    json_decref(root);
    *out = s;
    return EPM_OK;
fail:
    json_decref(root);
    epm_st_close(s);
    return st;
}

epm_status epm_st_open(const char *path, epm_safetensors **out)
{
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
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return epm_fail(EPM_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        }
    }
    close(fd);
    epm_status st = epm_st_parse(map ? map : "", size, path, out);
    if (st != EPM_OK) {
        if (map)
            munmap(map, size);
        return st;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    return EPM_OK;
}

void epm_st_unneeded(const void *p, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, b = a + bytes;
    const uintptr_t lo = (a + page - 1) / page * page, hi = b / page * page; /* (whole pages only) */
    if (p && page > 0 && hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* (read-only file pages: a later read faults them in) */
}

void epm_st_willneed(const void *p, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p;
    const uintptr_t lo = page > 0 ? a / page * page : a; /* (madvise wants a page-aligned start) */
    if (p && page > 0 && bytes > 0)
        (void)madvise((void *)lo, a + bytes - lo, MADV_WILLNEED); /* (advice: the kernel reads ahead, or not) */
}

void epm_st_close(epm_safetensors *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->count; i++)
        epm_free(s->tensors[i].name);
    epm_free(s->tensors);
    epm_free(s->path);
    if (s->map)
        munmap(s->map, s->map_size);
    epm_free(s);
}

const epm_st_tensor *epm_st_find(const epm_safetensors *s, const char *name)
{
    for (int i = 0; i < s->count; i++)
        if (strcmp(s->tensors[i].name, name) == 0)
            return &s->tensors[i];
    return NULL;
}

epm_status epm_st_expect(const epm_safetensors *s, const char *name, epm_dtype dtype, int ndim,
                         const int64_t *shape, const epm_st_tensor **out)
{
    const epm_st_tensor *t = epm_st_find(s, name);
    *out = NULL;
    if (!t)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is missing", s->path, name);
    if (t->dtype != dtype)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': dtype is %s, expected %s", s->path, name,
                        epm_dtype_name(t->dtype), epm_dtype_name(dtype));
    if (t->ndim != ndim)
        return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': has %d dims, expected %d", s->path, name, t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape && shape[i] >= 0 && t->shape[i] != shape[i])
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s': shape[%d] is %lld, expected %lld", s->path, name, i,
                            (long long)t->shape[i], (long long)shape[i]);
    *out = t;
    return EPM_OK;
}

/* ---- writer ---- */

typedef struct st_item {
    char *name;
    epm_dtype dtype;
    int ndim;
    int64_t shape[EPM_ST_MAX_DIMS];
    const void *data;
    size_t bytes;
} st_item;

struct epm_st_writer {
    st_item *items;
    int count, cap;
};

epm_status epm_st_writer_create(epm_st_writer **out)
{
    *out = epm_calloc(1, sizeof **out);
    return *out ? EPM_OK : EPM_ERR_NOMEM;
}

void epm_st_writer_destroy(epm_st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->count; i++)
        epm_free(w->items[i].name);
    epm_free(w->items);
    epm_free(w);
}

epm_status epm_st_writer_add(epm_st_writer *w, const char *name, epm_dtype dtype, int ndim, const int64_t *shape,
                             const void *data)
{
    if (ndim < 0 || ndim > EPM_ST_MAX_DIMS || (unsigned)dtype >= EPM_DTYPE_COUNT)
        return epm_fail(EPM_ERR_INVALID_ARG, "safetensors writer: tensor '%s': bad dtype or %d dims", name, ndim);
    if (w->count == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_item *n = epm_realloc(w->items, (size_t)cap * sizeof *n);
        if (!n)
            return EPM_ERR_NOMEM;
        w->items = n;
        w->cap = cap;
    }
    st_item *it = &w->items[w->count];
    memset(it, 0, sizeof *it);
    size_t bytes = epm_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !epm_mul_ok(bytes, (size_t)shape[i], &bytes))
            return epm_fail(EPM_ERR_INVALID_ARG, "safetensors writer: tensor '%s': bad shape", name);
        it->shape[i] = shape[i];
    }
    it->name = epm_strdup(name);
    if (!it->name)
        return EPM_ERR_NOMEM;
    it->dtype = dtype;
    it->ndim = ndim;
    it->data = data;
    it->bytes = bytes;
    w->count++;
    return EPM_OK;
}

typedef struct {
    const epm_st_writer *w;
    const char *header;
    size_t hlen;
    const char *path;
} st_write_ctx;

static epm_status produce(void *vctx, void *f)
{
    st_write_ctx *c = vctx;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)c->hlen >> (8 * i));
    EPM_CHECK(epm_file_write(f, c->path, len8, 8));
    EPM_CHECK(epm_file_write(f, c->path, c->header, c->hlen));
    for (int i = 0; i < c->w->count; i++)
        EPM_CHECK(epm_file_write(f, c->path, c->w->items[i].data, c->w->items[i].bytes));
    return EPM_OK;
}

epm_status epm_st_writer_save(epm_st_writer *w, const char *path)
{
    epm_status st = EPM_OK;
    json_t *root = json_object();
    char *hdr = NULL;
    if (!root)
        return epm_fail(EPM_ERR_NOMEM, "safetensors writer: out of memory");
    uint64_t off = 0;
    for (int i = 0; i < w->count && st == EPM_OK; i++) {
        const st_item *it = &w->items[i];
        json_t *shape = json_array();
        for (int d = 0; d < it->ndim; d++)
            json_array_append_new(shape, json_integer(it->shape[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", epm_dtype_name(it->dtype), "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + it->bytes));
        if (!e || json_object_set_new(root, it->name, e) != 0)
            st = epm_fail(EPM_ERR_NOMEM, "safetensors writer: out of memory");
        off += it->bytes;
    }
    if (st == EPM_OK) {
        hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!hdr)
            st = epm_fail(EPM_ERR_NOMEM, "safetensors writer: out of memory");
    }
    if (st == EPM_OK) {
        /* Pad the header with spaces to 8 bytes so that the data is aligned, as
         * the reference writer does. */
        size_t n = strlen(hdr);
        size_t padded = (n + 7) & ~(size_t)7;
        char *h = epm_malloc(padded);
        if (!h) {
            st = EPM_ERR_NOMEM;
        } else {
            memcpy(h, hdr, n);
            memset(h + n, ' ', padded - n);
            st_write_ctx c = {w, h, padded, path};
            st = epm_write_atomic(path, produce, &c);
            epm_free(h);
        }
    }
    free(hdr);
    json_decref(root);
    return st;
}
