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

/* ---- loading ----
 * Every message names the file, the field's path (model.layers,
 * layers[3].experts[5][1]) and, where there is one, the offending value. */

static const char *type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static epm_status get_int(json_t *o, const char *label, const char *path, const char *field, long lo, long hi,
                          int *out)
{
    json_t *j = json_object_get(o, field);
    if (!j)
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s%s is missing", label, path, field);
    if (!json_is_integer(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s%s is %s, not an integer", label, path, field, type_name(j));
    json_int_t v = json_integer_value(j);
    if (v < lo || v > hi)
        return epm_fail(EPM_ERR_FORMAT, "%s: %s%s = %lld is outside [%ld, %ld]", label, path, field, (long long)v, lo,
                        hi);
    *out = (int)v;
    return EPM_OK;
}

/* A number that must be positive and finite (bandwidths, throughput). */
static epm_status get_positive(json_t *o, const char *label, const char *path, const char *field, double *out)
{
    json_t *j = json_object_get(o, field);
    if (!j)
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s%s is missing", label, path, field);
    if (!json_is_number(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s%s is %s, not a number", label, path, field, type_name(j));
    double v = json_number_value(j);
    if (!(v > 0) || !isfinite(v))
        return epm_fail(EPM_ERR_FORMAT, "%s: %s%s = %g must be a positive number", label, path, field, v);
    *out = v;
    return EPM_OK;
}

/* Optional metadata number: absent or null reads as NaN. */
static epm_status get_optional(json_t *o, const char *label, const char *field, double *out)
{
    json_t *j = json_object_get(o, field);
    if (!j || json_is_null(j)) {
        *out = NAN;
        return EPM_OK;
    }
    if (!json_is_number(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s is %s, not a number or null", label, field, type_name(j));
    *out = json_number_value(j);
    return EPM_OK;
}

static epm_status get_string(json_t *o, const char *label, const char *field, const char *dflt, char *buf,
                             size_t size)
{
    json_t *j = json_object_get(o, field);
    if (!j) {
        snprintf(buf, size, "%s", dflt);
        return EPM_OK;
    }
    if (!json_is_string(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s is %s, not a string", label, field, type_name(j));
    if (json_string_length(j) >= size)
        return epm_fail(EPM_ERR_FORMAT, "%s: field %s is %zu bytes long; at most %zu are allowed", label, field,
                        json_string_length(j), size - 1);
    snprintf(buf, size, "%s", json_string_value(j));
    return EPM_OK;
}

static epm_status parse_info(json_t *root, const char *label, epm_placement_info *info)
{
    char word[32];
    memset(info, 0, sizeof *info);
    json_t *j = json_object_get(root, "mode");
    if (!json_is_string(j))
        return epm_fail(EPM_ERR_FORMAT, "%s: field mode is %s; it must be \"home\" or \"follow\"", label,
                        j ? type_name(j) : "missing");
    if (epm_mode_parse(json_string_value(j), &info->mode) != EPM_OK)
        return epm_fail(EPM_ERR_FORMAT, "%s: mode = \"%s\" is not \"home\" or \"follow\"", label,
                        json_string_value(j));
    EPM_CHECK(get_string(root, label, "method", "unknown", info->method, sizeof info->method));
    EPM_CHECK(get_string(root, label, "quality", "heuristic", word, sizeof word));
    int q = EPM_QUALITY_HEURISTIC;
    while (q <= EPM_QUALITY_FALLBACK && strcmp(word, epm_plan_quality_name((epm_plan_quality)q)))
        q++;
    if (q > EPM_QUALITY_FALLBACK)
        return epm_fail(EPM_ERR_FORMAT, "%s: quality = \"%s\" is not heuristic, optimal, feasible or fallback", label,
                        word);
    info->quality = (epm_plan_quality)q;
    EPM_CHECK(get_optional(root, label, "objective", &info->objective));
    EPM_CHECK(get_optional(root, label, "bound", &info->bound));
    EPM_CHECK(get_optional(root, label, "gap", &info->gap));
    EPM_CHECK(get_optional(root, label, "solve_seconds", &info->solve_seconds));
    if (isnan(info->solve_seconds))
        info->solve_seconds = 0;
    return get_string(root, label, "note", "", info->note, sizeof info->note);
}

/* The layers' shape, L layers of E expert lists, checked before the
 * placement's L x E x ranks table is allocated for them (a file of a few
 * bytes declaring 32768 experts on 65536 ranks asked for 8 GiB: found by
 * fuzzing). */
static epm_status check_layers_shape(json_t *layers, const char *label, int L, int E)
{
    if (!layers)
        return epm_fail(EPM_ERR_FORMAT, "%s: field layers is missing", label);
    if (!json_is_array(layers))
        return epm_fail(EPM_ERR_FORMAT, "%s: field layers is %s, not an array", label, type_name(layers));
    if (json_array_size(layers) != (size_t)L)
        return epm_fail(EPM_ERR_FORMAT, "%s: layers has %zu entries; model.layers = %d needs an array of %d layers",
                        label, json_array_size(layers), L, L);
    for (int l = 0; l < L; l++) {
        json_t *ly = json_array_get(layers, (size_t)l), *ex = json_object_get(ly, "experts");
        if (!json_is_object(ly))
            return epm_fail(EPM_ERR_FORMAT, "%s: layers[%d] is %s, not an object", label, l, type_name(ly));
        if (!json_is_array(ex) || json_array_size(ex) != (size_t)E)
            return epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts must be an array of %d rank lists (model.experts)",
                            label, l, E);
    }
    return EPM_OK;
}

static epm_status parse_layers(json_t *layers, const char *label, epm_placement *p)
{
    const int L = p->layers, E = p->experts;
    for (int l = 0; l < L; l++) {
        json_t *ly = json_array_get(layers, (size_t)l); /* (an object: check_layers_shape) */
        json_t *idx = json_object_get(ly, "layer");
        if (idx && (!json_is_integer(idx) || json_integer_value(idx) != l))
            return epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].layer = %lld; the layers must be listed in order 0, 1, ...",
                            label, l, json_is_integer(idx) ? (long long)json_integer_value(idx) : -1LL);
        json_t *ex = json_object_get(ly, "experts"); /* (its shape: check_layers_shape) */
        for (int e = 0; e < E; e++) {
            json_t *a = json_array_get(ex, (size_t)e);
            if (!json_is_array(a) || json_array_size(a) == 0)
                return epm_fail(EPM_ERR_FORMAT,
                                "%s: layers[%d].experts[%d] must be a non-empty array of ranks (every expert placed)",
                                label, l, e);
            for (size_t q = 0; q < json_array_size(a); q++) {
                json_t *rv = json_array_get(a, q);
                if (!json_is_integer(rv))
                    return epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts[%d][%zu] is %s, not a rank", label, l, e, q,
                                    type_name(rv));
                json_int_t r = json_integer_value(rv);
                if (r < 0 || r >= p->ranks)
                    return epm_fail(EPM_ERR_FORMAT,
                                    "%s: layers[%d].experts[%d][%zu] = %lld is not a rank of the %d-rank cluster",
                                    label, l, e, q, (long long)r, p->ranks);
                if (epm_placement_has(p, l, e, (int)r))
                    return epm_fail(EPM_ERR_FORMAT, "%s: layers[%d].experts[%d][%zu] = %lld: rank listed twice", label,
                                    l, e, q, (long long)r);
                EPM_CHECK(epm_placement_add(p, l, e, (int)r));
            }
        }
    }
    return EPM_OK;
}

static epm_status parse_root(json_t *root, const char *label, epm_placement **out)
{
    epm_status st;
    if (!json_is_object(root))
        return epm_fail(EPM_ERR_FORMAT, "%s: the top level is %s, not an object", label, type_name(root));
    json_t *fmt = json_object_get(root, "format");
    if (!fmt)
        return epm_fail(EPM_ERR_FORMAT, "%s: field format is missing; is this an epmoe placement?", label);
    if (!json_is_string(fmt))
        return epm_fail(EPM_ERR_FORMAT, "%s: field format is %s, not \"epmoe-placement\"", label, type_name(fmt));
    if (strcmp(json_string_value(fmt), "epmoe-placement"))
        return epm_fail(EPM_ERR_FORMAT, "%s: format = \"%s\"; an epmoe placement has \"epmoe-placement\"", label,
                        json_string_value(fmt));
    int version;
    EPM_CHECK(get_int(root, label, "", "version", 0, 1 << 30, &version));
    if (version != EPM_PLACEMENT_FORMAT_VERSION)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: version = %d; this build reads version %d", label, version,
                        EPM_PLACEMENT_FORMAT_VERSION);
    json_t *model = json_object_get(root, "model"), *cl = json_object_get(root, "cluster");
    if (!json_is_object(model))
        return epm_fail(EPM_ERR_FORMAT, "%s: field model is %s, not an object", label,
                        model ? type_name(model) : "missing");
    if (!json_is_object(cl))
        return epm_fail(EPM_ERR_FORMAT, "%s: field cluster is %s, not an object", label,
                        cl ? type_name(cl) : "missing");
    int L, E, K;
    EPM_CHECK(get_int(model, label, "model.", "layers", 1, 100000, &L));
    EPM_CHECK(get_int(model, label, "model.", "experts", 1, 100000, &E));
    EPM_CHECK(get_int(model, label, "model.", "k", 1, E, &K));
    epm_cluster c;
    epm_cluster_init(&c, 1, 1);
    EPM_CHECK(get_int(cl, label, "cluster.", "nodes", 1, 4096, &c.nodes));
    EPM_CHECK(get_int(cl, label, "cluster.", "gpus_per_node", 1, 1024, &c.gpus_per_node));
    EPM_CHECK(get_positive(cl, label, "cluster.", "intra_node_gbps", &c.intra_gbps));
    EPM_CHECK(get_positive(cl, label, "cluster.", "inter_node_gbps", &c.inter_gbps));
    EPM_CHECK(get_positive(cl, label, "cluster.", "gpu_tflops", &c.gpu_tflops));
    if (epm_cluster_validate(&c) != EPM_OK)
        return epm_fail_context(EPM_ERR_FORMAT, "%s: field cluster", label);
    epm_placement_info info;
    EPM_CHECK(parse_info(root, label, &info));
    int slots = 0;
    if (json_object_get(root, "slots_per_rank"))
        EPM_CHECK(get_int(root, label, "", "slots_per_rank", 1, E, &slots));

    epm_placement *p;
    EPM_CHECK(check_layers_shape(json_object_get(root, "layers"), label, L, E));
    EPM_CHECK(epm_placement_create(L, E, K, &c, &p));
    EPM_CHECK_GOTO(parse_layers(json_object_get(root, "layers"), label, p), st, fail);
    /* the declared slots are what the runtime allocates per rank: a layer
     * that needs more would not fit */
    for (int l = 0; slots > 0 && l < L; l++)
        for (int r = 0; r < p->ranks; r++)
            if (epm_placement_rank_count(p, l, r) > slots) {
                st = epm_fail(EPM_ERR_FORMAT, "%s: slots_per_rank = %d, but layers[%d] puts %d experts on rank %d",
                              label, slots, l, epm_placement_rank_count(p, l, r), r);
                goto fail;
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

epm_status epm_placement_export_eplb_layers(const epm_placement *p, const char *path, int total_layers,
                                            const uint8_t *is_moe)
{
    /* SGLang (--init-expert-location) and vLLM give every rank the same number of physical experts,
     * all of them a logical expert: a map with an empty slot would not load, or (SGLang reads a slot
     * of -1 as the last expert) would route tokens to a copy that is not there */
    const int S = epm_placement_max_slots(p);
    for (int l = 0; l < p->layers; l++)
        for (int r = 0; r < p->ranks; r++)
            if (epm_placement_rank_count(p, l, r) != S)
                return epm_fail(EPM_ERR_UNSUPPORTED, "EPLB export %s: in MoE layer %d rank %d holds %d expert%s where "
                                "another holds %d; SGLang and vLLM give every rank the same number (plan with eplb or ilp, "
                                "which fill spare slots, with --slots or --redundant-experts that divide)", path, l,
                                r, epm_placement_rank_count(p, l, r), epm_placement_rank_count(p, l, r) == 1 ? "" : "s",
                                S);
    int rows = is_moe ? total_layers : p->layers, moe = 0;
    for (int l = 0; is_moe && l < total_layers; l++)
        moe += is_moe[l] != 0;
    if (is_moe && moe != p->layers)
        return epm_fail(EPM_ERR_MISMATCH, "EPLB export %s: the model has %d MoE layers, the placement %d", path, moe,
                        p->layers);
    json_t *map = json_array();
    epm_status st = map ? EPM_OK : EPM_ERR_NOMEM;
    for (int l = 0, ml = 0; l < rows && st == EPM_OK; l++) {
        json_t *row = json_array();
        if (!row || json_array_append_new(map, row) != 0) {
            st = EPM_ERR_NOMEM;
            break;
        }
        if (is_moe && !is_moe[l]) { /* a dense layer: the trivial map, as SGLang's init_trivial */
            for (int q = 0; q < p->ranks * S && st == EPM_OK; q++)
                if (json_array_append_new(row, json_integer(q % p->experts)) != 0)
                    st = EPM_ERR_NOMEM;
            continue;
        }
        for (int r = 0; r < p->ranks; r++)
            for (int e = 0; e < p->experts && st == EPM_OK; e++)
                if (epm_placement_has(p, ml, e, r) && json_array_append_new(row, json_integer(e)) != 0)
                    st = EPM_ERR_NOMEM;
        ml++;
    }
    if (st != EPM_OK) {
        json_decref(map);
        return st;
    }
    /* (one key: SGLang passes the file's keys to init_by_mapping as arguments) */
    return write_json(json_pack("{s:o}", "physical_to_logical_map", map), path, JSON_COMPACT);
}

epm_status epm_placement_export_eplb(const epm_placement *p, const char *path)
{
    return epm_placement_export_eplb_layers(p, path, 0, NULL);
}
