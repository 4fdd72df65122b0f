#include <jansson.h>
#include <math.h>
#include <string.h>

#include "core.h"
#include "epmoe/cluster.h"
#include "json_show.h"

void epm_cluster_init(epm_cluster *c, int nodes, int gpus_per_node)
{
    c->nodes = nodes;
    c->gpus_per_node = gpus_per_node;
    c->intra_gbps = 150.0;
    c->inter_gbps = 25.0;
    c->gpu_tflops = 400.0;
}

epm_status epm_cluster_validate(const epm_cluster *c)
{
    if (c->nodes < 1 || c->nodes > 4096)
        return epm_fail(EPM_ERR_INVALID_ARG, "cluster: nodes = %d is outside [1, 4096]", c->nodes);
    if (c->gpus_per_node < 1 || c->gpus_per_node > 1024)
        return epm_fail(EPM_ERR_INVALID_ARG, "cluster: gpus_per_node = %d is outside [1, 1024]", c->gpus_per_node);
    if ((long)c->nodes * c->gpus_per_node > 65536)
        return epm_fail(EPM_ERR_INVALID_ARG, "cluster: %d x %d ranks is more than 65536", c->nodes,
                        c->gpus_per_node);
    /* 1 mB/s to 1 ZB/s, 1 FLOP/s to 1 ZFLOP/s (wider than the CLI flags': the unit tests count in
     * bytes and FLOPs a second): bounds that keep the cost model's ratios and times finite, which a
     * subnormal or a huge rate did not (the ILP's weights infinite, plan eval's time inf: found by
     * fuzzing) */
    const struct {
        const char *name;
        double v;
    } rate[] = {{"intra_node_gbps", c->intra_gbps}, {"inter_node_gbps", c->inter_gbps}, {"gpu_tflops", c->gpu_tflops}};
    for (size_t i = 0; i < sizeof rate / sizeof *rate; i++)
        if (!(rate[i].v >= 1e-12 && rate[i].v <= 1e12))
            return epm_fail(EPM_ERR_INVALID_ARG, "cluster: %s = %g is outside [1e-12, 1e+12]", rate[i].name, rate[i].v);
    return EPM_OK;
}

double epm_cluster_link_cost(const epm_cluster *c, epm_link l)
{
    switch (l) {
    case EPM_LINK_SELF:
        return 0.0;
    case EPM_LINK_INTRA:
        return 1.0;
    default:
        return c->intra_gbps / c->inter_gbps;
    }
}

const char *epm_link_name(epm_link l)
{
    static const char *const n[EPM_LINK_COUNT] = {"self", "intra_node", "inter_node"};
    return (unsigned)l < EPM_LINK_COUNT ? n[l] : "?";
}

static epm_status get_int(json_t *root, const char *label, const char *key, int *v)
{
    json_t *j = json_object_get(root, key);
    if (!j)
        return EPM_OK;
    char b[96];
    if (!json_is_integer(j) || json_integer_value(j) < 1 || json_integer_value(j) > 65536)
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' = %s: must be an integer in [1, 65536]", label, key,
                        epm_json_show(j, b, sizeof b));
    *v = (int)json_integer_value(j);
    return EPM_OK;
}

static epm_status get_num(json_t *root, const char *label, const char *key, double *v)
{
    json_t *j = json_object_get(root, key);
    if (!j)
        return EPM_OK;
    char b[96];
    if (!json_is_number(j) || !(json_number_value(j) > 0))
        return epm_fail(EPM_ERR_FORMAT, "%s: field '%s' = %s: must be a positive number", label, key,
                        epm_json_show(j, b, sizeof b));
    *v = json_number_value(j);
    return EPM_OK;
}

epm_status epm_cluster_parse_json(const char *text, size_t len, const char *label, epm_cluster *out)
{
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    epm_status st = EPM_OK;
    epm_cluster c;
    epm_cluster_init(&c, 1, 8);
    if (!json_is_object(root)) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: top level is not an object", label);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        static const char *const known[] = {"nodes", "gpus_per_node", "intra_node_gbps", "inter_node_gbps",
                                            "gpu_tflops"};
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            st = epm_fail(EPM_ERR_FORMAT, "%s: unknown field '%s'", label, key);
            goto out;
        }
    }
    EPM_CHECK_GOTO(get_int(root, label, "nodes", &c.nodes), st, out);
    EPM_CHECK_GOTO(get_int(root, label, "gpus_per_node", &c.gpus_per_node), st, out);
    EPM_CHECK_GOTO(get_num(root, label, "intra_node_gbps", &c.intra_gbps), st, out);
    EPM_CHECK_GOTO(get_num(root, label, "inter_node_gbps", &c.inter_gbps), st, out);
    EPM_CHECK_GOTO(get_num(root, label, "gpu_tflops", &c.gpu_tflops), st, out);
    st = epm_cluster_validate(&c);
    if (st != EPM_OK) {
        epm_fail_context(st, "%s", label);
        goto out;
    }
    *out = c;
out:
    json_decref(root);
    return st;
}

epm_status epm_cluster_load_json(const char *path, epm_cluster *out)
{
    char *text;
    size_t n;
    EPM_CHECK(epm_read_file(path, 1 << 20, &text, &n));
    epm_status st = epm_cluster_parse_json(text, n, path, out);
    epm_free(text);
    return st;
}
