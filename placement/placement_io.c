/* Placement JSON (format "epmoe-placement", version 1) and the EPLB-style
 * physical-to-logical export. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "placement_internal.h"

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *to_json(const epm_placement *p)
{
    const epm_placement_info *in = &p->info;
    json_t *layers = json_array();
    for (int l = 0; l < p->layers && layers; l++) {
        json_t *ex = json_array();
        for (int e = 0; e < p->experts; e++) {
            const int *r;
            int n = epm_placement_replicas(p, l, e, &r);
            json_t *a = json_array();
            for (int j = 0; j < n; j++)
                json_array_append_new(a, json_integer(r[j]));
            json_array_append_new(ex, a);
        }
        json_array_append_new(layers, json_pack("{s:i, s:o}", "layer", l, "experts", ex));
    }
    return json_pack("{s:s, s:i, s:{s:i, s:i, s:i}, s:{s:i, s:i, s:f, s:f, s:f}, s:s, s:s, s:s, s:o, s:o, s:o, "
                     "s:f, s:s, s:i, s:o}",
                     "format", "epmoe-placement", "version", EPM_PLACEMENT_FORMAT_VERSION, "model", "layers",
                     p->layers, "experts", p->experts, "k", p->k, "cluster", "nodes", p->cluster.nodes,
                     "gpus_per_node", p->cluster.gpus_per_node, "intra_node_gbps", p->cluster.intra_gbps,
                     "inter_node_gbps", p->cluster.inter_gbps, "gpu_tflops", p->cluster.gpu_tflops, "mode",
                     epm_mode_name(in->mode), "method", in->method, "quality", epm_plan_quality_name(in->quality),
                     "objective", num_or_null(in->objective), "bound", num_or_null(in->bound), "gap",
                     num_or_null(in->gap), "solve_seconds", isfinite(in->solve_seconds) ? in->solve_seconds : 0.0,
                     "note", in->note, "slots_per_rank", epm_placement_max_slots(p), "layers", layers);
}

typedef struct {
    const char *text;
    const char *path;
} dump_ctx;

static epm_status dump(void *vctx, void *f)
{
    dump_ctx *c = vctx;
    EPM_CHECK(epm_file_write(f, c->path, c->text, strlen(c->text)));
    return epm_file_write(f, c->path, "\n", 1);
}

static epm_status write_json(json_t *root, const char *path, size_t flags)
{
    if (!root)
        return epm_fail(EPM_ERR_NOMEM, "%s: out of memory building JSON", path);
    char *text = json_dumps(root, flags);
    json_decref(root);
    if (!text)
        return epm_fail(EPM_ERR_NOMEM, "%s: out of memory serialising JSON", path);
    dump_ctx c = {text, path};
    epm_status st = epm_write_atomic(path, dump, &c);
    free(text);
    return st;
}

epm_status epm_placement_save_json(const epm_placement *p, const char *path)
{
    return write_json(to_json(p), path, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
}

/* ---- loading ---- */

static epm_status get_int(json_t *o, const char *label, const char *field, long lo, long hi, int *out)
{
    json_t *j = json_object_get(o, field);
    if (!json_is_integer(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' is missing or not an integer", label, field);
    json_int_t v = json_integer_value(j);
    if (v < lo || v > hi)
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' = %lld is outside [%ld, %ld]", label, field, (long long)v,
                        lo, hi);
    *out = (int)v;
    return EPM_OK;
}

static epm_status get_real(json_t *o, const char *label, const char *field, int required, double *out)
{
    json_t *j = json_object_get(o, field);
    if (!j || json_is_null(j)) {
        if (required)
            return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' is missing", label, field);
        *out = NAN;
        return EPM_OK;
    }
    if (!json_is_number(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' is not a number", label, field);
    *out = json_number_value(j);
    return EPM_OK;
}

static epm_status parse_root(json_t *root, const char *label, epm_placement **out)
{
    epm_status st;
    if (!json_is_object(root))
        return epm_fail(EPM_ERR_FORMAT, "%s: top level is not an object", label);
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "epmoe-placement"))
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'format' is not \"epmoe-placement\"", label);
    int version;
    EPM_CHECK(get_int(root, label, "version", 0, 1 << 30, &version));
    if (version != EPM_PLACEMENT_FORMAT_VERSION)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: field 'version' = %d; this build reads version %d", label, version,
                        EPM_PLACEMENT_FORMAT_VERSION);
    json_t *model = json_object_get(root, "model"), *cl = json_object_get(root, "cluster");
    if (!json_is_object(model) || !json_is_object(cl))
        return epm_fail(EPM_ERR_FORMAT, "%s: fields 'model' and 'cluster' must be objects", label);
    int L, E, K;
    EPM_CHECK(get_int(model, label, "layers", 1, 100000, &L));
    EPM_CHECK(get_int(model, label, "experts", 1, 100000, &E));
    EPM_CHECK(get_int(model, label, "k", 1, E, &K));
    epm_cluster c;
    epm_cluster_init(&c, 1, 1);
    EPM_CHECK(get_int(cl, label, "nodes", 1, 4096, &c.nodes));
    EPM_CHECK(get_int(cl, label, "gpus_per_node", 1, 1024, &c.gpus_per_node));
    EPM_CHECK(get_real(cl, label, "intra_node_gbps", 1, &c.intra_gbps));
    EPM_CHECK(get_real(cl, label, "inter_node_gbps", 1, &c.inter_gbps));
    EPM_CHECK(get_real(cl, label, "gpu_tflops", 1, &c.gpu_tflops));
    if ((st = epm_cluster_validate(&c)) != EPM_OK)
        return epm_fail_context(EPM_ERR_FORMAT, "%s: field 'cluster'", label);
    epm_placement_info info;
    memset(&info, 0, sizeof info);
    json_t *j = json_object_get(root, "mode");
    if (!json_is_string(j) || epm_mode_parse(json_string_value(j), &info.mode) != EPM_OK)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'mode' must be \"home\" or \"follow\"", label);
    j = json_object_get(root, "method");
    snprintf(info.method, sizeof info.method, "%s", json_is_string(j) ? json_string_value(j) : "unknown");
    j = json_object_get(root, "quality");
    info.quality = EPM_QUALITY_HEURISTIC;
    for (int q = EPM_QUALITY_HEURISTIC; q <= EPM_QUALITY_FALLBACK; q++)
        if (json_is_string(j) && !strcmp(json_string_value(j), epm_plan_quality_name((epm_plan_quality)q)))
            info.quality = (epm_plan_quality)q;
    EPM_CHECK(get_real(root, label, "objective", 0, &info.objective));
    EPM_CHECK(get_real(root, label, "bound", 0, &info.bound));
    EPM_CHECK(get_real(root, label, "gap", 0, &info.gap));
    EPM_CHECK(get_real(root, label, "solve_seconds", 0, &info.solve_seconds));
    j = json_object_get(root, "note");
    snprintf(info.note, sizeof info.note, "%s", json_is_string(j) ? json_string_value(j) : "");

    json_t *layers = json_object_get(root, "layers");
    if (!json_is_array(layers) || json_array_size(layers) != (size_t)L)
        return epm_fail(EPM_ERR_FORMAT, "%s: field 'layers' must be an array of %d layers", label, L);
    epm_placement *p;
    EPM_CHECK(epm_placement_create(L, E, K, &c, &p));
    for (int l = 0; l < L; l++) {
        json_t *ly = json_array_get(layers, (size_t)l);
        json_t *ex = json_is_object(ly) ? json_object_get(ly, "experts") : NULL;
        if (!json_is_array(ex) || json_array_size(ex) != (size_t)E) {
            st = epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts must be an array of %d rank lists", label, l, E);
            goto fail;
        }
        for (int e = 0; e < E; e++) {
            json_t *a = json_array_get(ex, (size_t)e);
            if (!json_is_array(a) || json_array_size(a) == 0) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts[%d] must be a non-empty array of ranks", label,
                              l, e);
                goto fail;
            }
            for (size_t q = 0; q < json_array_size(a); q++) {
                json_t *rv = json_array_get(a, q);
                json_int_t r = json_is_integer(rv) ? json_integer_value(rv) : -1;
                if (!json_is_integer(rv) || r < 0 || r >= p->ranks) {
                    st = epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts[%d][%zu] = %lld is not a rank of the %d-rank cluster",
                                  label, l, e, q, (long long)r, p->ranks);
                    goto fail;
                }
                if (epm_placement_has(p, l, e, (int)r)) {
                    st = epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts[%d] lists rank %lld twice", label, l, e,
                                  (long long)r);
                    goto fail;
                }
                EPM_CHECK_GOTO(epm_placement_add(p, l, e, (int)r), st, fail);
            }
        }
    }
    epm_placement_set_info(p, &info);
    *out = p;
    return EPM_OK;
fail:
    epm_placement_destroy(p);
    return st;
}

epm_status epm_placement_parse_json(const char *text, size_t len, const char *label, epm_placement **out)
{
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    epm_status st = parse_root(root, label, out);
    json_decref(root);
    return st;
}

epm_status epm_placement_load_json(const char *path, epm_placement **out)
{
    char *text;
    size_t n;
    *out = NULL;
    EPM_CHECK(epm_read_file(path, (size_t)1 << 30, &text, &n));
    epm_status st = epm_placement_parse_json(text, n, path, out);
    epm_free(text);
    return st;
}

epm_status epm_placement_export_eplb(const epm_placement *p, const char *path)
{
    int S = epm_placement_max_slots(p);
    json_t *map = json_array();
    for (int l = 0; l < p->layers && map; l++) {
        json_t *row = json_array();
        for (int r = 0; r < p->ranks; r++) {
            int used = 0;
            for (int e = 0; e < p->experts; e++)
                if (epm_placement_has(p, l, e, r)) {
                    json_array_append_new(row, json_integer(e));
                    used++;
                }
            for (; used < S; used++)
                json_array_append_new(row, json_integer(-1));
        }
        json_array_append_new(map, row);
    }
    return write_json(json_pack("{s:i, s:i, s:i, s:o}", "num_layers", p->layers, "num_logical_experts", p->experts,
                                "num_physical_experts", p->ranks * S, "physical_to_logical_map", map),
                      path, JSON_COMPACT);
}
