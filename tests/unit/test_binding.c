/* Binding: the split of a node's cores and GPUs among its ranks, on made-up
 * layouts and hwloc synthetic/XML topologies, the report line, and a real
 * bind of this process. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "test_util.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/launch.h"

/* hwloc's PCI plugin (dlopen'ed, then closed) leaves allocations that LSan
 * only attributes to libhwloc (suppressed in tests/lsan.supp) with the slow
 * unwinder; the fast one stops in the unloaded module. Read by ASan builds only. */
const char *__asan_default_options(void);
__attribute__((visibility("default"))) const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }

static epm_binding_opts opts(int local_rank, int local_size)
{
    epm_binding_opts o;
    epm_binding_opts_init(&o);
    o.rank = local_rank;
    o.local_rank = local_rank;
    o.local_size = local_size;
    o.node = "n";
    return o;
}

static void expect(const epm_node_layout *node, epm_binding_opts o, int gpu, int numa, const char *cpus)
{
    epm_binding b;
    epm_status st = epm_binding_compute(node, &o, &b);
    if (st != EPM_OK)
        fail_msg("local rank %d/%d refused: %s", o.local_rank, o.local_size, epm_last_error());
    assert_int_equal(b.gpu, gpu);
    assert_int_equal(b.numa, numa);
    if (strcmp(b.cpus, cpus))
        fail_msg("local rank %d/%d: cpus '%s', expected '%s'", o.local_rank, o.local_size, b.cpus, cpus);
}

static const int two_numa[8] = {0, 0, 0, 0, 1, 1, 1, 1};

static void test_binding_cpu_even_split(void **state)
{
    (void)state;
    epm_node_layout node = {8, two_numa, 0, NULL};
    expect(&node, opts(0, 2), -1, 0, "0-3");
    expect(&node, opts(1, 2), -1, 1, "4-7");
    /* local rank i of n: [i*C/n, (i+1)*C/n) */
    expect(&node, opts(0, 3), -1, 0, "0-1");
    expect(&node, opts(1, 3), -1, 0, "2-4"); /* 2 of its 3 cores on NUMA 0 */
    expect(&node, opts(2, 3), -1, 1, "5-7");
    expect(&node, opts(0, 1), -1, 0, "0-7");
    /* More ranks than cores: neighbours share, nobody is left without one. */
    expect(&node, opts(0, 16), -1, 0, "0");
    expect(&node, opts(1, 16), -1, 0, "0");
    expect(&node, opts(3, 16), -1, 0, "1");
    expect(&node, opts(15, 16), -1, 1, "7");
    /* No NUMA information. */
    epm_node_layout flat = {5, NULL, 0, NULL};
    expect(&flat, opts(1, 2), -1, -1, "2-4");
}

static void test_binding_gpu_locality(void **state)
{
    (void)state;
    const int gpu_numa[4] = {0, 0, 1, 1};
    epm_node_layout node = {8, two_numa, 4, gpu_numa};
    expect(&node, opts(0, 4), 0, 0, "0-1");
    expect(&node, opts(1, 4), 1, 0, "2-3");
    expect(&node, opts(2, 4), 2, 1, "4-5");
    expect(&node, opts(3, 4), 3, 1, "6-7");
    /* A map moves ranks to the NUMA node of their GPU. */
    const int map[4] = {2, 0, 3, 1};
    epm_binding_opts o = opts(0, 4);
    o.gpu_map = map;
    o.gpu_map_len = 4;
    expect(&node, o, 2, 1, "4-5");
    o.local_rank = 1;
    expect(&node, o, 0, 0, "0-1");
    o.local_rank = 3;
    expect(&node, o, 1, 0, "2-3");
    /* Two ranks whose GPUs both hang off NUMA 1 share its cores, not the node's. */
    const int skew[2] = {2, 3};
    o = opts(0, 2);
    o.gpu_map = skew;
    o.gpu_map_len = 2;
    expect(&node, o, 2, 1, "4-5");
    o.local_rank = 1;
    expect(&node, o, 3, 1, "6-7");
    /* GPUs without locality: the even split. */
    epm_node_layout unknown = {8, two_numa, 4, NULL};
    expect(&unknown, opts(3, 4), 3, 1, "6-7");
    /* CPU-only by request, or on a node without GPUs (the map is then ignored). */
    o = opts(1, 2);
    o.use_gpus = 0;
    expect(&node, o, -1, 1, "4-7");
    epm_node_layout cpu = {8, two_numa, 0, NULL};
    o = opts(0, 2);
    o.gpu_map = skew;
    o.gpu_map_len = 2;
    expect(&cpu, o, -1, 0, "0-3");
}

static void expect_refusal(const epm_node_layout *node, epm_binding_opts o, epm_status want, const char *needle)
{
    epm_binding b;
    assert_int_equal(epm_binding_compute(node, &o, &b), want);
    if (!strstr(epm_last_error(), needle))
        fail_msg("detail '%s' lacks '%s'", epm_last_error(), needle);
}

static void test_binding_refusals(void **state)
{
    (void)state;
    const int gpu_numa[4] = {0, 0, 1, 1};
    epm_node_layout node = {8, two_numa, 4, gpu_numa};
    expect_refusal(&node, opts(4, 5), EPM_ERR_MISMATCH, "GPU index 4 is past the node's count 4");
    const int past[2] = {0, 7}, dup[2] = {1, 1};
    epm_binding_opts o = opts(0, 2);
    o.gpu_map = past;
    o.gpu_map_len = 2;
    expect_refusal(&node, o, EPM_ERR_MISMATCH, "local rank 1 on node n: GPU index 7 is past the node's count 4");
    o.gpu_map = dup;
    expect_refusal(&node, o, EPM_ERR_MISMATCH, "both map to GPU 1");
    o.gpu_map_len = 1;
    expect_refusal(&node, o, EPM_ERR_MISMATCH, "the GPU map has 1 entries but node n runs 2 ranks");
    expect_refusal(&node, opts(2, 2), EPM_ERR_INVALID_ARG, "local rank 2 of 2");
    epm_node_layout none = {0, NULL, 0, NULL};
    expect_refusal(&none, opts(0, 1), EPM_ERR_UNSUPPORTED, "0 cores");
}

static void test_binding_format(void **state)
{
    (void)state;
    epm_hwtopo *t = NULL;
    assert_int_equal(epm_hwtopo_load_synthetic("core:4 pu:1", &t), EPM_OK);
    epm_binding_opts o = opts(1, 2);
    o.rank = 3;
    o.node = "host2";
    epm_binding b;
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    char line[256];
    epm_binding_format(&b, line, sizeof line);
    assert_string_equal(line, "rank 3 node host2 local 1/2 gpu - numa 0 cpus 2-3");
    o.rank = -1;
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    epm_binding_format(&b, line, sizeof line);
    assert_string_equal(line, "rank ? node host2 local 1/2 gpu - numa 0 cpus 2-3");
    /* A synthetic topology is not this machine: refused, not bound. */
    assert_int_equal(epm_binding_apply(t, &b), EPM_ERR_INVALID_ARG);
    epm_hwtopo_destroy(t);
}

static void test_binding_synthetic_numa(void **state)
{
    (void)state;
    epm_hwtopo *t = NULL;
    assert_int_equal(epm_hwtopo_load_synthetic("numa:2 core:4 pu:2", &t), EPM_OK);
    const epm_node_layout *l = epm_hwtopo_layout(t);
    assert_int_equal(l->cores, 8);
    assert_int_equal(l->gpus, 0);
    for (int c = 0; c < 8; c++)
        assert_int_equal(l->core_numa[c], c / 4);
    epm_binding b;
    epm_binding_opts o = opts(1, 2);
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    assert_int_equal(b.numa, 1);
    assert_string_equal(b.cpus, "8-15"); /* two PUs per core */
    assert_int_equal(b.core_count, 4);
    epm_hwtopo_destroy(t);
    assert_int_equal(epm_hwtopo_load_synthetic("numa:2 banana:4", &t), EPM_ERR_FORMAT);
    assert_null(t);
}

/* Two packages, one NUMA node and two cores each; an NVIDIA GPU behind each
 * package (listed out of bus order) and a NIC that is not a GPU. */
#define SETS(c, n) "cpuset=\"" c "\" complete_cpuset=\"" c "\" nodeset=\"" n "\" complete_nodeset=\"" n "\""
#define CPU(o, c, n) "<object type=\"Core\" os_index=\"" #o "\" " SETS(c, n) ">" \
                     "<object type=\"PU\" os_index=\"" #o "\" " SETS(c, n) "/></object>"
static const char xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
    "<topology version=\"2.0\">"
    "<object type=\"Machine\" os_index=\"0\" cpuset=\"0x0000000f\" complete_cpuset=\"0x0000000f\" "
    "allowed_cpuset=\"0x0000000f\" nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\" allowed_nodeset=\"0x00000003\">"
    "<object type=\"Package\" os_index=\"0\" " SETS("0x00000003", "0x1") ">"
    "<object type=\"NUMANode\" os_index=\"0\" " SETS("0x00000003", "0x1") " local_memory=\"1073741824\"/>"
    CPU(0, "0x00000001", "0x1") CPU(1, "0x00000002", "0x1")
    "<object type=\"Bridge\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[01-02]\">"
    "<object type=\"PCIDev\" pci_busid=\"0000:02:00.0\" pci_type=\"0200 [15b3:101b] [15b3:0007] 00\"/>"
    "<object type=\"PCIDev\" pci_busid=\"0000:01:00.0\" pci_type=\"0302 [10de:2330] [10de:16c1] a1\"/>"
    "</object></object>"
    "<object type=\"Package\" os_index=\"1\" " SETS("0x0000000c", "0x2") ">"
    "<object type=\"NUMANode\" os_index=\"1\" " SETS("0x0000000c", "0x2") " local_memory=\"1073741824\"/>"
    CPU(2, "0x00000004", "0x2") CPU(3, "0x00000008", "0x2")
    "<object type=\"Bridge\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[00-00]\">"
    "<object type=\"PCIDev\" pci_busid=\"0000:00:05.0\" pci_type=\"0302 [10de:2330] [10de:16c1] a1\"/>"
    "</object></object></object></topology>\n";

static void test_binding_pci_locality(void **state)
{
    (void)state;
    epm_hwtopo *t = NULL;
    epm_status st = epm_hwtopo_load_xml(xml, sizeof xml, &t);
    if (st != EPM_OK)
        fail_msg("XML refused: %s", epm_last_error());
    const epm_node_layout *l = epm_hwtopo_layout(t);
    assert_int_equal(l->cores, 4);
    assert_int_equal(l->gpus, 2);
    /* PCI bus order: 0000:00:05.0 (package 1) is GPU 0, 0000:01:00.0 (package 0) GPU 1. */
    assert_int_equal(l->gpu_numa[0], 1);
    assert_int_equal(l->gpu_numa[1], 0);
    epm_binding b;
    epm_binding_opts o = opts(0, 2);
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    assert_int_equal(b.gpu, 0);
    assert_int_equal(b.numa, 1);
    assert_string_equal(b.cpus, "2-3");
    o.local_rank = 1;
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    assert_int_equal(b.gpu, 1);
    assert_int_equal(b.numa, 0);
    assert_string_equal(b.cpus, "0-1");
    epm_hwtopo_destroy(t);
    assert_int_equal(epm_hwtopo_load_xml("<nope>", 6, &t), EPM_ERR_FORMAT);
}

static void test_binding_env(void **state)
{
    (void)state;
    int map[8];
    epm_binding_opts o;
    epm_binding_opts_init(&o);
    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
    setenv("EPM_GPU_MAP", "3,2,1,0", 1);
    assert_int_equal(epm_binding_opts_from_env(&o, map, 8), EPM_OK);
    assert_int_equal(o.rank, 5);
    assert_int_equal(o.local_rank, 1);
    assert_int_equal(o.local_size, 4);
    assert_int_equal(o.gpu_map_len, 4);
    assert_int_equal(o.gpu_map[0], 3);
    assert_int_equal(o.gpu_map[3], 0);
    setenv("EPM_GPU_MAP", "0,x", 1);
    assert_int_equal(epm_binding_opts_from_env(&o, map, 8), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "EPM_GPU_MAP='0,x': entry 2"));
    setenv("EPM_GPU_MAP", "0,1,2", 1);
    assert_int_equal(epm_binding_opts_from_env(&o, map, 2), EPM_ERR_INVALID_ARG);
    unsetenv("EPM_GPU_MAP");
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "0", 1);
    assert_int_equal(epm_binding_opts_from_env(&o, map, 8), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "OMPI_COMM_WORLD_LOCAL_SIZE='0'"));
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
    unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
}

/* This machine: bind to the last local rank's share, then check what the
 * kernel reports. A refusal (container policy) is allowed, but must say why. */
static void test_binding_apply_here(void **state)
{
    (void)state;
    epm_hwtopo *t = NULL;
    assert_int_equal(epm_hwtopo_load(&t), EPM_OK);
    const epm_node_layout *l = epm_hwtopo_layout(t);
    assert_true(l->cores >= 1);
    epm_binding_opts o = opts(l->cores > 1 ? 1 : 0, l->cores > 1 ? 2 : 1);
    o.use_gpus = 0;
    epm_binding b;
    assert_int_equal(epm_binding_plan(t, &o, &b), EPM_OK);
    epm_status st = epm_binding_apply(t, &b);
    if (st == EPM_OK) {
        cpu_set_t got, want;
        CPU_ZERO(&got);
        CPU_ZERO(&want);
        assert_int_equal(sched_getaffinity(0, sizeof got, &got), 0);
        for (const char *s = b.cpus; *s;) { /* "a-b,c" */
            char *end;
            long lo = strtol(s, &end, 10), hi = lo;
            if (*end == '-')
                hi = strtol(end + 1, &end, 10);
            for (long c = lo; c <= hi; c++)
                CPU_SET((int)c, &want);
            s = *end == ',' ? end + 1 : end;
        }
        assert_true(CPU_COUNT(&want) >= 1);
        assert_true(CPU_EQUAL(&got, &want));
    } else {
        assert_true(strlen(epm_last_error()) > 0);
    }
    epm_hwtopo_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binding_cpu_even_split), cmocka_unit_test(test_binding_gpu_locality),
        cmocka_unit_test(test_binding_refusals),       cmocka_unit_test(test_binding_format),
        cmocka_unit_test(test_binding_synthetic_numa), cmocka_unit_test(test_binding_pci_locality),
        cmocka_unit_test(test_binding_env),            cmocka_unit_test(test_binding_apply_here),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
