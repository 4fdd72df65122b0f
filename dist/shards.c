/* A checkpoint's tensors across its files: the single model.safetensors, or
 * the shards listed by model.safetensors.index.json. Names are hashed once so
 * that checking a large model's few thousand tensors stays linear. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model_internal.h"

/* ---- index.json ---- */

void epm_model_index_destroy(epm_model_index *ix)
{
    if (!ix)
        return;
    for (int i = 0; i < ix->nfiles; i++)
        epm_free(ix->files[i]);
    for (int i = 0; i < ix->count; i++)
        epm_free(ix->names[i]);
    epm_free(ix->files);
    epm_free(ix->names);
    epm_free(ix->file);
    epm_free(ix);
}

static int plain_name(const char *f)
{
    return f[0] && !strchr(f, '/') && !strchr(f, '\\') && strcmp(f, ".") && strcmp(f, "..");
}

static epm_status index_fill(json_t *root, const char *label, epm_model_index *ix)
{
    if (!json_is_object(root))
        return epm_fail(EPM_ERR_FORMAT, "%s: top level is not a JSON object", label);
    json_t *meta = json_object_get(root, "metadata");
    ix->total_size = -1;
    if (meta && !json_is_null(meta)) {
        if (!json_is_object(meta))
            return epm_fail(EPM_ERR_FORMAT, "%s: field 'metadata' is not an object", label);
        json_t *ts = json_object_get(meta, "total_size");
        if (ts && !json_is_null(ts)) {
            /* transformers writes an integer; some tools write a float */
            double v = json_is_number(ts) ? json_number_value(ts) : -1;
            if (!(v >= 0 && v < 9e18))
                return epm_fail(EPM_ERR_FORMAT, "%s: field 'metadata.total_size' is not a byte count", label);
            ix->total_size = (int64_t)v;
        }
    }
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'weight_map' is missing, empty or not an object", label);
    size_t n = json_object_size(map);
    ix->names = epm_calloc(n, sizeof *ix->names);
    ix->file = epm_calloc(n, sizeof *ix->file);
    ix->files = epm_calloc(n, sizeof *ix->files);
    if (!ix->names || !ix->file || !ix->files)
        return EPM_ERR_NOMEM;
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v)
    {
        const char *f = json_is_string(v) ? json_string_value(v) : NULL;
        if (!f || !plain_name(f))
            return epm_fail(EPM_ERR_FORMAT, "%s: field 'weight_map.%s' is not a file name in the model folder",
                            label, key);
        int fi = ix->nfiles - 1;
        /* shards are usually listed in runs, so the last file is the likely one */
        if (fi < 0 || strcmp(ix->files[fi], f)) {
            for (fi = 0; fi < ix->nfiles && strcmp(ix->files[fi], f); fi++)
                ;
            if (fi == ix->nfiles) {
                if (!(ix->files[fi] = epm_strdup(f)))
                    return EPM_ERR_NOMEM;
                ix->nfiles++;
            }
        }
        if (!(ix->names[ix->count] = epm_strdup(key)))
            return EPM_ERR_NOMEM;
        ix->file[ix->count++] = fi;
    }
    return EPM_OK;
}

epm_status epm_model_index_parse(const char *text, size_t len, const char *label, epm_model_index **out)
{
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    epm_model_index *ix = epm_calloc(1, sizeof *ix);
    epm_status st = ix ? index_fill(root, label, ix) : EPM_ERR_NOMEM;
    json_decref(root);
    if (st != EPM_OK) {
        epm_model_index_destroy(ix);
        return st;
    }
    *out = ix;
    return EPM_OK;
}

/* ---- the tensor directory ---- */

typedef struct slot {
    const char *name; /* NULL = empty */
    int file;         /* index into files */
    const epm_st_tensor *t;
} slot;

struct epm_shards {
    char *where;
    epm_model_index *ix;    /* NULL for a single file */
    int nfiles;
    epm_safetensors **files;
    slot *table;
    size_t mask;
    int64_t file_bytes;
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static slot *lookup(const epm_shards *s, const char *name)
{
    for (size_t i = fnv1a(name) & s->mask;; i = (i + 1) & s->mask)
        if (!s->table[i].name || !strcmp(s->table[i].name, name))
            return &s->table[i];
}

static epm_status table_alloc(epm_shards *s, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    s->table = epm_calloc(cap, sizeof *s->table);
    s->mask = cap - 1;
    return s->table ? EPM_OK : EPM_ERR_NOMEM;
}

static epm_status join(char *buf, size_t cap, const char *dir, const char *file)
{
    int n = snprintf(buf, cap, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= cap)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", dir);
    return EPM_OK;
}

static epm_status open_file(epm_shards *s, const char *path, int i)
{
    epm_status st = epm_st_open(path, &s->files[i]);
    if (st != EPM_OK)
        return st;
    s->file_bytes += (int64_t)s->files[i]->map_size;
    return EPM_OK;
}

static epm_status open_single(epm_shards *s, const char *dir)
{
    char path[4096];
    EPM_CHECK(join(path, sizeof path, dir, "model.safetensors"));
    struct stat sb;
    if (stat(path, &sb) != 0)
        return epm_fail(EPM_ERR_IO, "%s: no model.safetensors and no model.safetensors.index.json: %s", dir,
                        strerror(errno));
    if (!(s->where = epm_strdup(path)) || !(s->files = epm_calloc(1, sizeof *s->files)))
        return EPM_ERR_NOMEM;
    s->nfiles = 1;
    EPM_CHECK(open_file(s, path, 0));
    const epm_safetensors *f = s->files[0];
    EPM_CHECK(table_alloc(s, (size_t)f->count));
    for (int i = 0; i < f->count; i++) {
        slot *e = lookup(s, f->tensors[i].name);
        *e = (slot){f->tensors[i].name, 0, &f->tensors[i]};
    }
    return EPM_OK;
}

static epm_status open_sharded(epm_shards *s, const char *dir, const char *index_path)
{
    char *text;
    size_t n;
    if (!(s->where = epm_strdup(index_path)))
        return EPM_ERR_NOMEM;
    EPM_CHECK(epm_read_file(index_path, (size_t)256 << 20, &text, &n));
    epm_status st = epm_model_index_parse(text, n, index_path, &s->ix);
    epm_free(text);
    if (st != EPM_OK)
        return st;
    const epm_model_index *ix = s->ix;
    if (!(s->files = epm_calloc((size_t)ix->nfiles, sizeof *s->files)))
        return EPM_ERR_NOMEM;
    s->nfiles = ix->nfiles;
    char path[4096];
    for (int i = 0; i < ix->nfiles; i++) {
        EPM_CHECK(join(path, sizeof path, dir, ix->files[i]));
        struct stat sb;
        if (stat(path, &sb) != 0) {
            int first = 0;
            while (ix->file[first] != i)
                first++;
            return epm_fail(EPM_ERR_IO, "%s: weight_map['%s'] names '%s', which is missing from %s: %s", index_path,
                            ix->names[first], ix->files[i], dir, strerror(errno));
        }
        EPM_CHECK(open_file(s, path, i));
    }
    EPM_CHECK(table_alloc(s, (size_t)ix->count));
    for (int i = 0; i < ix->count; i++)
        *lookup(s, ix->names[i]) = (slot){ix->names[i], ix->file[i], NULL};
    for (int f = 0; f < s->nfiles; f++)
        for (int i = 0; i < s->files[f]->count; i++) {
            slot *e = lookup(s, s->files[f]->tensors[i].name);
            if (e->name && e->file == f)
                e->t = &s->files[f]->tensors[i];
        }
    for (int i = 0; i < ix->count; i++)
        if (!lookup(s, ix->names[i])->t)
            return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' is missing from this file, where %s puts it",
                            s->files[ix->file[i]]->path, ix->names[i], index_path);
    return EPM_OK;
}

epm_status epm_shards_open(const char *dir, epm_shards **out)
{
    *out = NULL;
    epm_shards *s = epm_calloc(1, sizeof *s);
    if (!s)
        return EPM_ERR_NOMEM;
    char index_path[4096];
    epm_status st = join(index_path, sizeof index_path, dir, "model.safetensors.index.json");
    struct stat sb;
    if (st == EPM_OK)
        st = stat(index_path, &sb) == 0 ? open_sharded(s, dir, index_path) : open_single(s, dir);
    if (st != EPM_OK) {
        epm_shards_close(s);
        return st;
    }
    *out = s;
    return EPM_OK;
}

void epm_shards_close(epm_shards *s)
{
    if (!s)
        return;
    for (int i = 0; s->files && i < s->nfiles; i++)
        epm_st_close(s->files[i]);
    epm_free(s->files);
    epm_free(s->table);
    epm_model_index_destroy(s->ix);
    epm_free(s->where);
    epm_free(s);
}

const epm_st_tensor *epm_shards_find(const epm_shards *s, const char *name, const char **path)
{
    const slot *e = lookup(s, name);
    if (!e->name || !e->t)
        return NULL;
    if (path)
        *path = s->files[e->file]->path;
    return e->t;
}

const char *epm_shards_where(const epm_shards *s) { return s->where; }
int epm_shards_files(const epm_shards *s) { return s->nfiles; }
int64_t epm_shards_file_bytes(const epm_shards *s) { return s->file_bytes; }
