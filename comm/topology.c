/* Where a rank runs, from hwloc: the NUMA node(s) its CPU binding covers and
 * the GPU it should use, for the bindings printout and the device choice. */
#include <hwloc.h>
#include <stdio.h>
#include <string.h>

#include "comm_internal.h"

/* GPUs as hwloc sees them (CUDA, NVML or OpenCL OS devices, or PCI display
 * controllers from NVIDIA/AMD when no driver plug-in is loaded). */
static int is_gpu(hwloc_obj_t o)
{
    if (o->type == HWLOC_OBJ_OS_DEVICE)
        return o->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC || o->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU;
    return 0;
}

static void describe(epm_comm *c, char *buf, size_t cap)
{
    hwloc_topology_t topo;
    int n = snprintf(buf, cap, "rank %d: node %d of %d%s, local rank %d of %d", c->rank, c->node_of[c->rank],
                     c->nodes, c->opts.virtual_nodes ? " (virtual)" : "", epm_comm_local_rank(c), c->per_node);
    size_t used = n > 0 && (size_t)n < cap ? (size_t)n : cap - 1;
    c->gpu = -1;
    c->gpu_known = 1;
    if (hwloc_topology_init(&topo) != 0) {
        snprintf(buf + used, cap - used, "; hwloc could not start");
        return;
    }
    hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(topo) != 0) {
        hwloc_topology_destroy(topo);
        snprintf(buf + used, cap - used, "; hwloc could not read the topology");
        return;
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set || hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0)
        hwloc_bitmap_copy(set, hwloc_topology_get_topology_cpuset(topo));
    char cpus[128] = "?", numa[128] = "";
    hwloc_bitmap_list_snprintf(cpus, sizeof cpus, set);
    size_t nl = 0;
    for (hwloc_obj_t o = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, NULL); o;
         o = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, o))
        if (hwloc_bitmap_intersects(o->cpuset, set) && nl + 16 < sizeof numa)
            nl += (size_t)snprintf(numa + nl, sizeof numa - nl, "%s%u", nl ? "," : "", o->os_index);
    /* GPUs: prefer one whose locality covers our CPUs; local rank picks among equals */
    char gname[64] = "";
    int ngpu = 0, near = 0;
    for (hwloc_obj_t o = hwloc_get_next_osdev(topo, NULL); o; o = hwloc_get_next_osdev(topo, o))
        if (is_gpu(o) && o->name && !strncmp(o->name, "cuda", 4))
            ngpu++;
    if (ngpu == 0) /* no CUDA plug-in in hwloc: NVIDIA/AMD display controllers on PCI */
        for (hwloc_obj_t o = hwloc_get_next_pcidev(topo, NULL); o; o = hwloc_get_next_pcidev(topo, o))
            if ((o->attr->pcidev.vendor_id == 0x10de || o->attr->pcidev.vendor_id == 0x1002) &&
                (o->attr->pcidev.class_id >> 8) == 0x03) {
                if (ngpu == epm_comm_local_rank(c) % 64 || !gname[0]) {
                    hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(topo, o);
                    near = a && a->cpuset && hwloc_bitmap_intersects(a->cpuset, set);
                    snprintf(gname, sizeof gname, "pci %04x:%02x:%02x.%01x", o->attr->pcidev.domain,
                             o->attr->pcidev.bus, o->attr->pcidev.dev, o->attr->pcidev.func);
                }
                ngpu++;
            }
    if (ngpu > 0 && !gname[0]) {
        c->gpu = epm_comm_local_rank(c) % ngpu;
        int i = 0;
        for (hwloc_obj_t o = hwloc_get_next_osdev(topo, NULL); o; o = hwloc_get_next_osdev(topo, o)) {
            if (!is_gpu(o) || !o->name || strncmp(o->name, "cuda", 4))
                continue;
            if (i++ == c->gpu) {
                hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(topo, o);
                near = a && a->cpuset && hwloc_bitmap_intersects(a->cpuset, set);
                snprintf(gname, sizeof gname, "%s", o->name);
            }
        }
    }
    if (ngpu > 0 && c->gpu < 0)
        c->gpu = epm_comm_local_rank(c) % ngpu;
    if (ngpu > 0)
        snprintf(buf + used, cap - used, "; cpus %s, NUMA %s; GPU %s (%d visible, %s)", cpus, nl ? numa : "?",
                 gname, ngpu, near ? "near this rank's CPUs" : "not near this rank's CPUs");
    else
        snprintf(buf + used, cap - used, "; cpus %s, NUMA %s; no GPU (CPU-only)", cpus, nl ? numa : "?");
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
}

const char *epm_comm_binding(epm_comm *c)
{
    if (!c->binding) {
        char buf[512];
        describe(c, buf, sizeof buf);
        c->binding = epm_strdup(buf);
        if (!c->binding)
            return "(out of memory)";
    }
    return c->binding;
}

int epm_comm_gpu(epm_comm *c)
{
    if (!c->gpu_known)
        epm_comm_binding(c);
    return c->gpu;
}
