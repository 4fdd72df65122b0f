/* Which GPU, NUMA node and cores a rank gets. The split is a pure function of
 * a node's layout (epm_binding_compute) so that it is tested on made-up
 * machines; hwloc only supplies the layout and does the binding. */
#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "epmoe/launch.h"

#define MAX_GPUS 256

void epm_binding_opts_init(epm_binding_opts *o)
{
    memset(o, 0, sizeof *o);
    o->rank = -1;
    o->local_size = 1;
    o->use_gpus = 1;
}

static epm_status env_int(const char *var, long lo, long hi, int *out)
{
    const char *v = getenv(var);
    if (!v)
        return EPM_OK;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return epm_fail(EPM_ERR_INVALID_ARG, "environment %s='%s' is not an integer in [%ld, %ld]", var, v, lo, hi);
    *out = (int)x;
    return EPM_OK;
}

epm_status epm_binding_opts_from_env(epm_binding_opts *o, int *map_buf, int map_cap)
{
    if (!o)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_binding_opts_from_env: NULL options");
    EPM_CHECK(env_int("OMPI_COMM_WORLD_RANK", 0, 1 << 30, &o->rank));
    EPM_CHECK(env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, 1 << 20, &o->local_rank));
    EPM_CHECK(env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1, 1 << 20, &o->local_size));
    const char *m = getenv("EPM_GPU_MAP");
    if (!m || !*m)
        return EPM_OK;
    int n = 0;
    for (const char *s = m;; n++) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (errno || end == s || x < 0 || x >= MAX_GPUS || (*end && *end != ','))
            return epm_fail(EPM_ERR_INVALID_ARG, "environment EPM_GPU_MAP='%s': entry %d is not a GPU index in [0, %d)",
                            m, n + 1, MAX_GPUS);
        if (n >= map_cap)
            return epm_fail(EPM_ERR_INVALID_ARG, "environment EPM_GPU_MAP='%s' has more than %d entries", m, map_cap);
        map_buf[n] = (int)x;
        if (!*end) {
            n++;
            break;
        }
        s = end + 1;
    }
    o->gpu_map = map_buf;
    o->gpu_map_len = n;
    return EPM_OK;
}

static int core_numa(const epm_node_layout *node, int c) { return node->core_numa ? node->core_numa[c] : -1; }
static int gpu_numa(const epm_node_layout *node, int g) { return node->gpu_numa ? node->gpu_numa[g] : -1; }

/* Writes a bit list as ranges: 0-3,6. */
static void mask_list(const uint64_t *mask, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < n;) {
        if (!(mask[i / 64] >> (i % 64) & 1)) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < n && (mask[(j + 1) / 64] >> ((j + 1) % 64) & 1))
            j++;
        int w = j > i ? snprintf(buf + len, cap - len, "%s%d-%d", len ? "," : "", i, j)
                      : snprintf(buf + len, cap - len, "%s%d", len ? "," : "", i);
        if (w < 0 || (size_t)w >= cap - len) {
            buf[cap - 1] = 0;
            return;
        }
        len += (size_t)w;
        i = j + 1;
    }
}

epm_status epm_binding_compute(const epm_node_layout *node, const epm_binding_opts *o, epm_binding *out)
{
    if (!node || !o || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_binding_compute: NULL argument");
    if (node->cores < 1 || node->cores > EPM_BINDING_MAX_CORES)
        return epm_fail(EPM_ERR_UNSUPPORTED, "binding: node has %d cores; supported 1 to %d", node->cores,
                        EPM_BINDING_MAX_CORES);
    if (node->gpus < 0 || node->gpus > MAX_GPUS)
        return epm_fail(EPM_ERR_INVALID_ARG, "binding: node has %d GPUs; supported 0 to %d", node->gpus, MAX_GPUS);
    int n = o->local_size, me = o->local_rank;
    if (n < 1 || me < 0 || me >= n)
        return epm_fail(EPM_ERR_INVALID_ARG, "binding: local rank %d of %d is out of range", me, n);
    memset(out, 0, sizeof *out);
    out->rank = o->rank;
    out->local_rank = me;
    out->local_size = n;
    out->gpu = -1;
    out->numa = -1;
    if (o->node)
        snprintf(out->node, sizeof out->node, "%s", o->node);
    else if (gethostname(out->node, sizeof out->node - 1) != 0)
        snprintf(out->node, sizeof out->node, "?");

    /* A CPU-only node ignores a GPU map: the same launch line then runs on a laptop. */
    int with_gpus = o->use_gpus && node->gpus > 0;
    if (with_gpus && o->gpu_map && o->gpu_map_len < n)
        return epm_fail(EPM_ERR_MISMATCH, "binding: the GPU map has %d entries but node %s runs %d ranks",
                        o->gpu_map_len, out->node, n);
    if (with_gpus)
        for (int j = 0; j < n; j++) {
            int g = o->gpu_map ? o->gpu_map[j] : j;
            if (g < 0 || g >= node->gpus)
                return epm_fail(EPM_ERR_MISMATCH, "binding: local rank %d on node %s: GPU index %d is past the "
                                "node's count %d", j, out->node, g, node->gpus);
            for (int i = 0; o->gpu_map && i < j; i++)
                if (o->gpu_map[i] == g)
                    return epm_fail(EPM_ERR_MISMATCH, "binding: local ranks %d and %d on node %s both map to GPU %d",
                                    i, j, out->node, g);
        }

    /* The ranks sharing my cores: those whose GPU sits on my NUMA node, or
     * (no locality) every rank of the node. */
    int target = -1;
    if (with_gpus) {
        out->gpu = o->gpu_map ? o->gpu_map[me] : me;
        target = gpu_numa(node, out->gpu);
        int has_core = 0;
        for (int c = 0; c < node->cores && target >= 0 && !has_core; c++)
            has_core = core_numa(node, c) == target;
        if (!has_core)
            target = -1;
    }
    int group = 0, pos = 0;
    for (int j = 0; j < n; j++) {
        int in = target < 0 || gpu_numa(node, o->gpu_map ? o->gpu_map[j] : j) == target;
        group += in;
        pos += in && j < me;
    }
    int avail = 0;
    for (int c = 0; c < node->cores; c++)
        avail += target < 0 || core_numa(node, c) == target;
    /* [pos*C/m, (pos+1)*C/m) of the candidate cores, at least one. */
    int lo = (int)((int64_t)pos * avail / group), hi = (int)((int64_t)(pos + 1) * avail / group);
    if (hi <= lo)
        hi = lo + 1;
    int votes[EPM_BINDING_MAX_CORES] = {0};
    for (int c = 0, k = 0; c < node->cores; c++) {
        if (!(target < 0 || core_numa(node, c) == target))
            continue;
        if (k >= lo && k < hi) {
            out->core_mask[c / 64] |= UINT64_C(1) << (c % 64);
            out->core_count++;
            int z = core_numa(node, c);
            if (z >= 0 && z < EPM_BINDING_MAX_CORES)
                votes[z]++;
        }
        k++;
    }
    if (target >= 0) {
        out->numa = target;
    } else {
        for (int z = 0, best = 0; z < EPM_BINDING_MAX_CORES; z++)
            if (votes[z] > best) {
                best = votes[z];
                out->numa = z;
            }
    }
    mask_list(out->core_mask, node->cores, out->cpus, sizeof out->cpus);
    return EPM_OK;
}

int epm_binding_format(const epm_binding *b, char *buf, size_t n)
{
    char rank[16], gpu[16], numa[16];
    snprintf(rank, sizeof rank, b->rank >= 0 ? "%d" : "?", b->rank);
    snprintf(gpu, sizeof gpu, b->gpu >= 0 ? "%d" : "-", b->gpu);
    snprintf(numa, sizeof numa, b->numa >= 0 ? "%d" : "-", b->numa);
    return snprintf(buf, n, "rank %s node %s local %d/%d gpu %s numa %s cpus %s", rank, b->node, b->local_rank,
                    b->local_size, gpu, numa, b->cpus[0] ? b->cpus : "-");
}

/* ---- hwloc ---- */

struct epm_hwtopo {
    hwloc_topology_t topo;
    hwloc_obj_type_t core_type; /* CORE, or PU where hwloc sees no cores */
    epm_node_layout layout;
    int *core_numa;
    int *gpu_numa;
};

void epm_hwtopo_destroy(epm_hwtopo *t)
{
    if (!t)
        return;
    if (t->topo)
        hwloc_topology_destroy(t->topo);
    epm_free(t->core_numa);
    epm_free(t->gpu_numa);
    epm_free(t);
}

typedef struct gpu_ref {
    hwloc_obj_t obj;
} gpu_ref;

static int by_bus_id(const void *a, const void *b)
{
    const struct hwloc_pcidev_attr_s *x = &((const gpu_ref *)a)->obj->attr->pcidev;
    const struct hwloc_pcidev_attr_s *y = &((const gpu_ref *)b)->obj->attr->pcidev;
    unsigned kx = (unsigned)x->domain << 16 | (unsigned)x->bus << 8 | (unsigned)x->dev << 3 | x->func;
    unsigned ky = (unsigned)y->domain << 16 | (unsigned)y->bus << 8 | (unsigned)y->dev << 3 | y->func;
    return kx < ky ? -1 : kx > ky;
}

static int numa_of_set(hwloc_topology_t topo, hwloc_const_cpuset_t set)
{
    int nn = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    for (int z = 0; z < nn; z++) {
        hwloc_obj_t numa = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)z);
        if (numa && numa->cpuset && !hwloc_bitmap_iszero(set) && hwloc_bitmap_isincluded(set, numa->cpuset))
            return (int)numa->logical_index;
    }
    return -1;
}

/* The layout binding needs: cores and their NUMA nodes, NVIDIA GPUs in PCI
 * bus order (what CUDA numbers with CUDA_DEVICE_ORDER=PCI_BUS_ID) and the NUMA
 * node of each GPU's nearest non-I/O ancestor. */
static epm_status fill_layout(epm_hwtopo *t, const char *what)
{
    hwloc_topology_t topo = t->topo;
    t->core_type = HWLOC_OBJ_CORE;
    int cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    if (cores <= 0) {
        t->core_type = HWLOC_OBJ_PU;
        cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    }
    if (cores < 1 || cores > EPM_BINDING_MAX_CORES)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %d cores; supported 1 to %d", what, cores, EPM_BINDING_MAX_CORES);
    t->core_numa = epm_calloc((size_t)cores, sizeof *t->core_numa);
    t->gpu_numa = epm_calloc(MAX_GPUS, sizeof *t->gpu_numa);
    gpu_ref *gpus = epm_calloc(MAX_GPUS, sizeof *gpus);
    if (!t->core_numa || !t->gpu_numa || !gpus) {
        epm_free(gpus);
        return EPM_ERR_NOMEM;
    }
    for (int c = 0; c < cores; c++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, t->core_type, (unsigned)c);
        t->core_numa[c] = o && o->cpuset ? numa_of_set(topo, o->cpuset) : -1;
    }
    int ng = 0;
    for (hwloc_obj_t p = hwloc_get_next_pcidev(topo, NULL); p && ng < MAX_GPUS; p = hwloc_get_next_pcidev(topo, p))
        if (p->attr->pcidev.vendor_id == 0x10de && (p->attr->pcidev.class_id >> 8) == 0x03)
            gpus[ng++].obj = p;
    qsort(gpus, (size_t)ng, sizeof *gpus, by_bus_id);
    for (int g = 0; g < ng; g++) {
        hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(topo, gpus[g].obj);
        t->gpu_numa[g] = anc && anc->cpuset ? numa_of_set(topo, anc->cpuset) : -1;
        /* An ancestor spanning several NUMA nodes (the machine root on a
         * two-socket box without PCI locality info): take its first. */
        if (t->gpu_numa[g] < 0 && anc && anc->nodeset && !hwloc_bitmap_iszero(anc->nodeset)) {
            hwloc_obj_t z = hwloc_get_numanode_obj_by_os_index(topo, (unsigned)hwloc_bitmap_first(anc->nodeset));
            t->gpu_numa[g] = z ? (int)z->logical_index : -1;
        }
    }
    epm_free(gpus);
    t->layout = (epm_node_layout){cores, t->core_numa, ng, t->gpu_numa};
    return EPM_OK;
}

typedef enum { SRC_SYSTEM, SRC_SYNTHETIC, SRC_XML } topo_source;

static epm_status load(topo_source src, const char *arg, size_t len, epm_hwtopo **out)
{
    if (!out || (src != SRC_SYSTEM && !arg))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_hwtopo_load: NULL argument");
    *out = NULL;
    epm_hwtopo *t = epm_calloc(1, sizeof *t);
    if (!t)
        return EPM_ERR_NOMEM;
    const char *what = src == SRC_SYSTEM ? "hwloc topology of this machine"
                       : src == SRC_SYNTHETIC ? "hwloc synthetic topology" : "hwloc XML topology";
    epm_status st = EPM_OK;
    if (hwloc_topology_init(&t->topo) != 0) {
        t->topo = NULL;
        st = epm_fail(EPM_ERR_NOMEM, "%s: hwloc_topology_init failed", what);
        goto fail;
    }
    /* PCI devices are filtered out by default; GPUs are what locality is about. */
    hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    int rc = 0;
    if (src == SRC_SYNTHETIC)
        rc = hwloc_topology_set_synthetic(t->topo, arg);
    else if (src == SRC_XML)
        rc = len > (size_t)1 << 30 ? -1 : hwloc_topology_set_xmlbuffer(t->topo, arg, (int)len);
    if (rc != 0) {
        st = epm_fail(EPM_ERR_FORMAT, "%s: '%.60s' is not accepted by hwloc", what, src == SRC_XML ? "<xml>" : arg);
        goto fail;
    }
    if (hwloc_topology_load(t->topo) != 0) {
        st = epm_fail(EPM_ERR_UNSUPPORTED, "%s: hwloc_topology_load failed: %s", what, strerror(errno));
        goto fail;
    }
    EPM_CHECK_GOTO(fill_layout(t, what), st, fail);
    *out = t;
    return EPM_OK;
fail:
    epm_hwtopo_destroy(t);
    return st;
}

epm_status epm_hwtopo_load(epm_hwtopo **out) { return load(SRC_SYSTEM, NULL, 0, out); }
epm_status epm_hwtopo_load_synthetic(const char *desc, epm_hwtopo **out) { return load(SRC_SYNTHETIC, desc, 0, out); }
epm_status epm_hwtopo_load_xml(const char *xml, size_t len, epm_hwtopo **out) { return load(SRC_XML, xml, len, out); }

const epm_node_layout *epm_hwtopo_layout(const epm_hwtopo *t) { return t ? &t->layout : NULL; }

/* The PUs of b's cores. */
static hwloc_bitmap_t cpuset_of(const epm_hwtopo *t, const epm_binding *b)
{
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    for (int c = 0; set && c < t->layout.cores; c++)
        if (b->core_mask[c / 64] >> (c % 64) & 1) {
            hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, t->core_type, (unsigned)c);
            if (o && o->cpuset)
                hwloc_bitmap_or(set, set, o->cpuset);
        }
    return set;
}

epm_status epm_binding_plan(const epm_hwtopo *t, const epm_binding_opts *o, epm_binding *out)
{
    if (!t)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_binding_plan: NULL topology");
    EPM_CHECK(epm_binding_compute(&t->layout, o, out));
    hwloc_bitmap_t set = cpuset_of(t, out);
    if (!set)
        return epm_fail(EPM_ERR_NOMEM, "binding: hwloc_bitmap_alloc failed");
    hwloc_bitmap_list_snprintf(out->cpus, sizeof out->cpus, set);
    hwloc_bitmap_free(set);
    return EPM_OK;
}

epm_status epm_binding_apply(const epm_hwtopo *t, const epm_binding *b)
{
    if (!t || !b)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_binding_apply: NULL argument");
    if (!hwloc_topology_is_thissystem(t->topo))
        return epm_fail(EPM_ERR_INVALID_ARG, "binding: the topology is not this machine's (synthetic or XML)");
    hwloc_bitmap_t set = cpuset_of(t, b);
    if (!set)
        return epm_fail(EPM_ERR_NOMEM, "binding: hwloc_bitmap_alloc failed");
    epm_status st = EPM_OK;
    if (hwloc_bitmap_iszero(set))
        st = epm_fail(EPM_ERR_INVALID_ARG, "binding: rank %d has no cores to bind to", b->rank);
    else if (hwloc_set_cpubind(t->topo, set, 0) != 0)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "binding: rank %d to cpus %s: %s", b->rank, b->cpus, strerror(errno));
    hwloc_bitmap_free(set);
    /* One NUMA node: nothing to choose, and containers often forbid mbind. */
    if (st == EPM_OK && b->numa >= 0 && hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE) > 1) {
        hwloc_obj_t z = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)b->numa);
        if (!z || hwloc_set_membind(t->topo, z->nodeset, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET) != 0)
            st = epm_fail(EPM_ERR_UNSUPPORTED, "binding: rank %d memory to NUMA node %d: %s", b->rank, b->numa,
                          z ? strerror(errno) : "no such node");
    }
    return st;
}
