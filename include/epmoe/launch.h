/* epmoe: what a multi-node launch needs before mpirun starts, and what each
 * rank does first once it has: the hosts (Open MPI hostfile or --hosts list)
 * and the binding of a rank to its GPU, NUMA node and cores. */
#ifndef EPMOE_LAUNCH_H
#define EPMOE_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- hosts ----
 * Hostfile syntax (Open MPI's): one host per line,
 *     name [slots=N] [max_slots=M | max-slots=M]     # comment
 * blank lines and '#' comments ignored; a name may carry "user@". Any other
 * key is refused. A host listed twice is refused (Open MPI would add the slots
 * together, which hides a copy-paste mistake; epmoe wants one line per node).
 * slots absent: 0, meaning "not given" (Open MPI then counts the host's cores
 * at run time, which no check before launch can know). max_slots absent: 0 (no
 * limit); when given, slots <= max_slots.
 * --hosts list (Open MPI's --host syntax): "h1:2,h2:2"; "h1" alone is 1 slot. */
typedef struct epm_hostlist epm_hostlist;

#define EPM_HOSTNAME_MAX 255

/* label names the text in error messages ("hosts.txt:3: ..."). */
EPM_API epm_status epm_hostfile_parse(const char *text, size_t len, const char *label, epm_hostlist **out);
EPM_API epm_status epm_hostfile_load(const char *path, epm_hostlist **out);
EPM_API epm_status epm_hosts_parse(const char *list, epm_hostlist **out);
EPM_API void epm_hostlist_destroy(epm_hostlist *h);

EPM_API int epm_hostlist_count(const epm_hostlist *h);
/* Name without the "user@" part (what resolves); NULL when i is out of range. */
EPM_API const char *epm_hostlist_name(const epm_hostlist *h, int i);
/* The entry as written ("user@name"), for the mpirun line. */
EPM_API const char *epm_hostlist_spec(const epm_hostlist *h, int i);
EPM_API int epm_hostlist_slots(const epm_hostlist *h, int i);     /* 0: not given */
EPM_API int epm_hostlist_max_slots(const epm_hostlist *h, int i); /* 0: no limit */
/* Where the entry came from: hostfile line, or 1-based position in --hosts. */
EPM_API int epm_hostlist_line(const epm_hostlist *h, int i);
/* The label given to the parser ("--hosts" for epm_hosts_parse). */
EPM_API const char *epm_hostlist_label(const epm_hostlist *h);
/* Sum of slots; -1 when some host does not give its slots. */
EPM_API long epm_hostlist_total_slots(const epm_hostlist *h);

/* ---- binding ----
 * One rank per GPU. A rank's GPU is gpu_map[local_rank], or its local rank
 * when there is no map. Its cores are those of the NUMA node nearest its GPU,
 * split evenly among the local ranks whose GPUs share that NUMA node; without
 * GPUs (or without locality) the node's cores are split evenly among its local
 * ranks: local rank i of n gets cores [i*C/n, (i+1)*C/n) (at least one core, so
 * oversubscribed ranks share). Memory is bound to the NUMA node of its cores. */

#define EPM_BINDING_MAX_CORES 1024

/* What binding needs to know of one node; pure data, so the split logic can
 * be tested without hwloc. Cores in topology (logical) order. */
typedef struct epm_node_layout {
    int cores;
    const int *core_numa; /* NUMA node of each core, -1 unknown; NULL: all unknown */
    int gpus;             /* GPUs present, in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID) */
    const int *gpu_numa;  /* NUMA node nearest each GPU, -1 unknown; NULL: all unknown */
} epm_node_layout;

typedef struct epm_binding_opts {
    int rank;                /* world rank, for the report; -1 unknown */
    int local_rank;          /* rank among the ranks of this node */
    int local_size;          /* ranks on this node */
    const char *node;        /* host name for the report; NULL: gethostname() */
    const int *gpu_map;      /* local rank -> GPU index; NULL: the local rank */
    int gpu_map_len;
    int use_gpus;            /* 0: CPU-only even on a node with GPUs */
} epm_binding_opts;

typedef struct epm_binding {
    int rank, local_rank, local_size;
    char node[64];
    int gpu;         /* device index, -1 none */
    int numa;        /* NUMA node (logical index) of the cores, -1 unknown */
    int core_count;  /* cores chosen */
    uint64_t core_mask[EPM_BINDING_MAX_CORES / 64]; /* logical core indices */
    char cpus[256];  /* the cores as a list ("2-3", "0,4-5"); with hwloc, OS PU indices */
} epm_binding;

/* Defaults: rank -1, local rank 0 of 1, no map, GPUs used when present. */
EPM_API void epm_binding_opts_init(epm_binding_opts *o);
/* Fills rank, local rank and size from Open MPI's environment
 * (OMPI_COMM_WORLD_RANK, _LOCAL_RANK, _LOCAL_SIZE) and the GPU map from
 * EPM_GPU_MAP ("0,2,4,6"); map_buf holds the parsed map (map_cap entries).
 * Variables that are absent keep their values; malformed ones are errors. */
EPM_API epm_status epm_binding_opts_from_env(epm_binding_opts *o, int *map_buf, int map_cap);
/* Pure: the binding of one local rank on a node laid out as described. */
EPM_API epm_status epm_binding_compute(const epm_node_layout *node, const epm_binding_opts *o, epm_binding *out);
/* "rank 3 node host2 local 1/2 gpu - numa 0 cpus 2-3"; returns what snprintf returns. */
EPM_API int epm_binding_format(const epm_binding *b, char *buf, size_t n);

/* A machine's topology as hwloc sees it (cores, NUMA nodes, NVIDIA GPUs by PCI locality). */
typedef struct epm_hwtopo epm_hwtopo;
EPM_API epm_status epm_hwtopo_load(epm_hwtopo **out);
/* hwloc synthetic description, e.g. "numa:2 core:4 pu:1": no PCI devices. */
EPM_API epm_status epm_hwtopo_load_synthetic(const char *desc, epm_hwtopo **out);
/* hwloc XML export (as `lstopo x.xml` writes), GPUs included. hwloc trusts
 * XML more than a parser of untrusted input should: load only exports. */
EPM_API epm_status epm_hwtopo_load_xml(const char *xml, size_t len, epm_hwtopo **out);
EPM_API void epm_hwtopo_destroy(epm_hwtopo *t);
/* The pure description of the topology; valid while t lives. */
EPM_API const epm_node_layout *epm_hwtopo_layout(const epm_hwtopo *t);
/* epm_binding_compute on t's layout, with cpus given as OS PU indices. */
EPM_API epm_status epm_binding_plan(const epm_hwtopo *t, const epm_binding_opts *o, epm_binding *out);
/* Binds the calling process's threads to b's cores and its memory to b's NUMA
 * node. t must be this machine's topology (epm_hwtopo_load). A failure (no
 * permission, a container's cgroup) is returned with a detail; callers report
 * it and go on unbound. */
EPM_API epm_status epm_binding_apply(const epm_hwtopo *t, const epm_binding *b);

#ifdef __cplusplus
}
#endif
#endif
