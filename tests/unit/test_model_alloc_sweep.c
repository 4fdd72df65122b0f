/* Allocation-failure sweep (alloc_sweep.h) of the public model loader: open
 * + dense + every expert of every MoE layer. Every failure must also leave
 * *out NULL; the ASan build runs LeakSanitizer over this program too. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/epmoe.h"
#include "epmoe/model.h"
#include "alloc_sweep.h"

/* the last: DeepSeek-V3's FP8 format, its experts and dense matrices held FP8 (their scales copied) */
static const char *const fixtures[] = {"qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny", "deepseekv3-fp8-tiny"};
enum { NFIX = sizeof fixtures / sizeof *fixtures };

/* open, load the dense weights, then every expert, one MoE layer at a time */
static epm_status load_all(const char *dir)
{
    epm_model *m = (epm_model *)0x1; /* must come back NULL on failure */
    epm_status st = epm_model_open(dir, &m);
    if (st != EPM_OK) {
        assert_null(m);
        return st;
    }
    st = epm_model_set_expert_dtype(m, EPM_DTYPE_F8_E4M3, NULL);
    if (st == EPM_OK)
        st = epm_model_set_dense_dtype(m, EPM_DTYPE_F8_E4M3, NULL);
    if (st == EPM_OK)
        st = epm_model_load_dense(m, NULL);
    const epm_model_config *c = epm_model_get_config(m);
    int experts[256];
    for (int e = 0; e < c->num_experts && e < 256; e++)
        experts[e] = e;
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++)
        if (c->moe_layer[l])
            st = epm_model_load_experts(m, l, experts, c->num_experts, NULL);
    epm_model_close(m);
    return st;
}

static epm_status load_all_cb(void *dir) { return load_all(dir); }

static void test_model_load_alloc_sweep(void **state)
{
    (void)state;
    uint64_t total = 0;
    for (int f = 0; f < NFIX; f++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", tu_fixtures(), fixtures[f]);
        uint64_t k = tu_alloc_sweep(fixtures[f], load_all_cb, dir);
        fprintf(stderr, "%s: %llu allocation points of the loader failed cleanly\n", fixtures[f],
                (unsigned long long)k);
        assert_true(k > 10);
        total += k;
    }
    assert_int_equal(tu_leak_check(), 0);
    fprintf(stderr, "loader: %llu allocation points in all\n", (unsigned long long)total);
}

int main(int argc, char **argv)
{
    (void)argc;
    tu_live_bytes_setup(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_load_alloc_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
