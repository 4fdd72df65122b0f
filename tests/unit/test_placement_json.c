/* Placement JSON: round trip, EPLB export, and malformed files named precisely. */
#include "test_util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/epmoe.h"

static epm_placement *sample(void)
{
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    epm_placement *p;
    assert_int_equal(epm_placement_create(2, 3, 2, &c, &p), EPM_OK);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 3; e++)
            assert_int_equal(epm_placement_add(p, l, e, (e + l) % 4), EPM_OK);
    assert_int_equal(epm_placement_add(p, 1, 0, 3), EPM_OK); /* a replica */
    epm_placement_info in = *epm_placement_get_info(p);
    snprintf(in.method, sizeof in.method, "ilp");
    in.mode = EPM_MODE_FOLLOW;
    in.quality = EPM_QUALITY_FEASIBLE;
    in.objective = 12.5;
    in.bound = 10;
    in.gap = 0.2;
    epm_placement_set_info(p, &in);
    return p;
}

static void test_placement_json_round_trip(void **state)
{
    (void)state;
    epm_placement *p = sample(), *q;
    const char *path = tu_path("p.json");
    assert_int_equal(epm_placement_save_json(p, path), EPM_OK);
    assert_int_equal(epm_placement_load_json(path, &q), EPM_OK);
    assert_int_equal(epm_placement_ranks(q), 4);
    assert_int_equal(epm_placement_cluster(q)->nodes, 2);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 3; e++)
            for (int r = 0; r < 4; r++)
                assert_int_equal(epm_placement_has(p, l, e, r), epm_placement_has(q, l, e, r));
    const epm_placement_info *in = epm_placement_get_info(q);
    assert_string_equal(in->method, "ilp");
    assert_int_equal(in->mode, EPM_MODE_FOLLOW);
    assert_int_equal(in->quality, EPM_QUALITY_FEASIBLE);
    assert_true(fabs(in->objective - 12.5) < 1e-12 && fabs(in->bound - 10) < 1e-12);
    epm_placement_destroy(q);
    epm_placement_destroy(p);
}

static void test_placement_eplb_export(void **state)
{
    (void)state;
    /* ranks holding different numbers (the sample's) are refused, naming the layer and rank */
    epm_placement *p = sample();
    const char *path = tu_path("eplb.json");
    assert_int_equal(epm_placement_export_eplb(p, path), EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "in MoE layer 0 rank 0 holds 1 expert where another holds 2"));
    epm_placement_destroy(p);
    /* 2 layers of 3 experts on 4 ranks x 2 slots: every slot filled */
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    assert_int_equal(epm_placement_create(2, 3, 2, &c, &p), EPM_OK);
    static const int held[2][4][2] = {{{0, 1}, {2, 0}, {1, 2}, {0, 2}}, {{2, 1}, {0, 1}, {0, 2}, {1, 0}}};
    for (int l = 0; l < 2; l++)
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 2; j++)
                assert_int_equal(epm_placement_add(p, l, held[l][r][j], r), EPM_OK);
    assert_int_equal(epm_placement_export_eplb(p, path), EPM_OK);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    assert_non_null(root);
    assert_int_equal(json_object_size(root), 1); /* (SGLang passes every key to init_by_mapping) */
    json_t *map = json_object_get(root, "physical_to_logical_map");
    assert_int_equal(json_array_size(map), 2);
    /* a rank's slots in ascending expert id */
    const int want[2][8] = {{0, 1, 0, 2, 1, 2, 0, 2}, {1, 2, 0, 1, 0, 2, 0, 1}};
    for (int l = 0; l < 2; l++) {
        json_t *row = json_array_get(map, (size_t)l);
        assert_int_equal(json_array_size(row), 8);
        for (int i = 0; i < 8; i++)
            assert_int_equal(json_integer_value(json_array_get(row, (size_t)i)), want[l][i]);
    }
    json_decref(root);
    /* a model of 4 decoder layers, the first and third dense: their rows the trivial map */
    const uint8_t is_moe[4] = {0, 1, 0, 1};
    assert_int_equal(epm_placement_export_eplb_layers(p, path, 4, is_moe), EPM_OK);
    root = json_load_file(path, 0, &err);
    map = json_object_get(root, "physical_to_logical_map");
    assert_int_equal(json_array_size(map), 4);
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < 8; i++)
            assert_int_equal(json_integer_value(json_array_get(json_array_get(map, (size_t)l), (size_t)i)),
                             is_moe[l] ? want[l / 2][i] : i % 3);
    json_decref(root);
    const uint8_t three_moe[4] = {1, 1, 0, 1};
    assert_int_equal(epm_placement_export_eplb_layers(p, path, 4, three_moe), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "the model has 3 MoE layers, the placement 2"));
    epm_placement_destroy(p);
}

static void expect_bad(const char *text, const char *needle)
{
    epm_placement *p = NULL;
    epm_status st = epm_placement_parse_json(text, strlen(text), "bad.json", &p);
    assert_true(st != EPM_OK);
    assert_null(p);
    if (!strstr(epm_last_error(), needle)) {
        fprintf(stderr, "error '%s' lacks '%s'\n", epm_last_error(), needle);
        fail();
    }
}

#define HEAD                                                                                                   \
    "{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 1, \"experts\": 2, \"k\": 1}, " \
    "\"cluster\": {\"nodes\": 1, \"gpus_per_node\": 2, \"intra_node_gbps\": 100, \"inter_node_gbps\": 10, "   \
    "\"gpu_tflops\": 100}, \"mode\": \"home\", "

#define LAYERS_OK "\"layers\": [{\"layer\": 0, \"experts\": [[0], [1]]}]}"

static void test_placement_json_malformed(void **state)
{
    (void)state;
    epm_placement *p;
    const char *ok = HEAD LAYERS_OK;
    assert_int_equal(epm_placement_parse_json(ok, strlen(ok), "ok.json", &p), EPM_OK);
    assert_string_equal(epm_placement_get_info(p)->method, "unknown"); /* optional metadata */
    assert_int_equal(epm_placement_get_info(p)->quality, EPM_QUALITY_HEURISTIC);
    epm_placement_destroy(p);
    expect_bad("{", "bad.json: not valid JSON");
    expect_bad("[]", "top level is an array");
    expect_bad("{\"format\": \"x\"}", "format = \"x\"");
    expect_bad("{\"format\": 3}", "field format is an integer");
    expect_bad("{\"nodes\": 2}", "field format is missing");
    expect_bad("{\"format\": \"epmoe-placement\"}", "field version is missing");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 9}", "version = 9; this build reads version 1");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": \"1\"}", "field version is a string");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": [], \"cluster\": {}}",
               "field model is an array");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 0}, \"cluster\": {}}",
               "model.layers = 0 is outside");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 1, \"experts\": 2, "
               "\"k\": 3}, \"cluster\": {}}",
               "model.k = 3 is outside [1, 2]");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 1, \"experts\": 2, "
               "\"k\": 1}, \"cluster\": {\"nodes\": 1}}",
               "field cluster.gpus_per_node is missing");
    expect_bad("{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 1, \"experts\": 2, "
               "\"k\": 1}, \"cluster\": {\"nodes\": 1, \"gpus_per_node\": 2, \"intra_node_gbps\": -4}}",
               "cluster.intra_node_gbps = -4 must be a positive number");
    /* the ranks of every expert */
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0], [7]]}]}",
               "bad.json: layers[0].experts[1][0] = 7 is not a rank of the 2-rank cluster");
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0], [1, -1]]}]}",
               "layers[0].experts[1][1] = -1 is not a rank");
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0], [1.5]]}]}",
               "layers[0].experts[1][0] is a real number, not a rank");
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0], []]}]}", "layers[0].experts[1] must be a non-empty");
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0, 1, 0], [1]]}]}",
               "layers[0].experts[0][2] = 0: rank listed twice");
    expect_bad(HEAD "\"layers\": [{\"layer\": 0, \"experts\": [[0]]}]}", "layers[0].experts must be an array of 2");
    expect_bad(HEAD "\"layers\": [{\"layer\": 3, \"experts\": [[0], [1]]}]}", "layers[0].layer = 3");
    expect_bad(HEAD "\"layers\": [7]}", "layers[0] is an integer, not an object");
    expect_bad(HEAD "\"layers\": []}", "layers has 0 entries; model.layers = 1");
    expect_bad(HEAD "\"layers\": {}}", "field layers is an object, not an array");
    expect_bad(HEAD "\"slots\": 1}", "field layers is missing");
    /* metadata */
    const char *no_mode = "{\"format\": \"epmoe-placement\", \"version\": 1, \"model\": {\"layers\": 1, "
                          "\"experts\": 2, \"k\": 1}, \"cluster\": {\"nodes\": 1, \"gpus_per_node\": 2, "
                          "\"intra_node_gbps\": 100, \"inter_node_gbps\": 10, \"gpu_tflops\": 100}, " LAYERS_OK;
    expect_bad(no_mode, "field mode is missing");
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s\"mode\": \"sideways\", %s", (int)(strlen(HEAD) - strlen("\"mode\": \"home\", ")),
             HEAD, LAYERS_OK);
    expect_bad(buf, "mode = \"sideways\" is not");
    expect_bad(HEAD "\"quality\": \"great\", " LAYERS_OK, "quality = \"great\" is not heuristic");
    expect_bad(HEAD "\"method\": 4, " LAYERS_OK, "field method is an integer, not a string");
    expect_bad(HEAD "\"objective\": \"low\", " LAYERS_OK, "field objective is a string");
    expect_bad(HEAD "\"method\": \"a-method-name-much-longer-than-32-bytes\", " LAYERS_OK, "field method is 39 bytes long; at most 31");
    /* declared slots must hold what the layers place */
    expect_bad(HEAD "\"slots_per_rank\": 1, \"layers\": [{\"layer\": 0, \"experts\": [[0], [0]]}]}",
               "slots_per_rank = 1, but layers[0] puts 2 experts on rank 0");
    expect_bad(HEAD "\"slots_per_rank\": 0, " LAYERS_OK, "slots_per_rank = 0 is outside [1, 2]");
    const char *dup = HEAD "\"mode\": \"home\", \"layers\": []}";
    expect_bad(dup, "not valid JSON"); /* duplicate key */
    /* null metadata reads as "none" */
    const char *nulls = HEAD "\"objective\": null, \"bound\": null, \"gap\": null, \"slots_per_rank\": 1, " LAYERS_OK;
    assert_int_equal(epm_placement_parse_json(nulls, strlen(nulls), "n.json", &p), EPM_OK);
    assert_true(isnan(epm_placement_get_info(p)->objective) && isnan(epm_placement_get_info(p)->gap));
    epm_placement_destroy(p);
}

static void test_placement_io_errors(void **state)
{
    (void)state;
    epm_placement *p = NULL;
    assert_int_equal(epm_placement_load_json("/nonexistent/plan.json", &p), EPM_ERR_IO);
    assert_non_null(strstr(epm_last_error(), "/nonexistent/plan.json"));
    epm_placement *s = sample();
    assert_int_equal(epm_placement_save_json(s, "/nonexistent/dir/x.json"), EPM_ERR_IO);
    epm_placement_destroy(s);
}

static void test_placement_alloc_failures(void **state)
{
    (void)state;
    epm_placement *s = sample();
    const char *path = tu_path("fi.json");
    assert_int_equal(epm_placement_save_json(s, path), EPM_OK);
    /* fail every allocation in turn: each is a clean error, never a crash */
    for (uint64_t n = 1; n < 200; n++) {
        epm_placement *q = NULL;
        epm_fault_fail_nth_alloc(n);
        epm_status st = epm_placement_load_json(path, &q);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            epm_placement_destroy(q);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(q);
    }
    epm_placement_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement_json_round_trip), cmocka_unit_test(test_placement_eplb_export),
        cmocka_unit_test(test_placement_json_malformed),  cmocka_unit_test(test_placement_io_errors),
        cmocka_unit_test(test_placement_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
