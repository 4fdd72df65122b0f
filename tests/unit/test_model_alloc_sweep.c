/* Allocation-failure sweep of the public model loader (dav1d's habit): for
 * n = 1, 2, 3, ... the n-th allocation of open + dense + every expert of
 * every MoE layer fails, until a load never reaches the n-th allocation.
 * Every failure must return EPM_ERR_NOMEM with its detail, leave *out NULL
 * and hold no memory afterwards (live heap bytes before == after; the ASan
 * build also runs LeakSanitizer over this program). */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/epmoe.h"
#include "epmoe/model.h"
#include "live_bytes.h"

static const char *const fixtures[] = {"qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny"};

/* open, load the dense weights, then every expert, one MoE layer at a time */
static epm_status load_all(const char *dir)
{
    epm_model *m = (epm_model *)0x1; /* must come back NULL on failure */
    epm_status st = epm_model_open(dir, &m);
    if (st != EPM_OK) {
        assert_null(m);
        return st;
    }
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

static void test_model_load_alloc_sweep(void **state)
{
    (void)state;
    uint64_t total = 0;
    for (int f = 0; f < 3; f++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", tu_fixtures(), fixtures[f]);
        assert_int_equal(load_all(dir), EPM_OK); /* warm: anything cached once is cached now */
        uint64_t n = 1;
        for (;; n++) {
            size_t before, after;
            uint64_t made;
            epm_status st;
            /* twice when memory is still held after the first: the C library
             * keeps a few one-time buffers of its own (glibc's count only) */
            for (int again = 0; again < 2; again++) {
                before = tu_live_bytes();
                epm_fault_fail_nth_alloc(n);
                st = load_all(dir);
                made = epm_fault_alloc_count();
                epm_fault_fail_nth_alloc(0);
                after = tu_live_bytes();
                if (after == before)
                    break;
            }
            if (after != before)
                fprintf(stderr, "%s: allocation %llu failed: %lld bytes still held\n", fixtures[f],
                        (unsigned long long)n, (long long)after - (long long)before);
            assert_int_equal(after, before);
            if (st == EPM_OK) {
                /* a success that reached the n-th allocation swallowed the failure */
                if (made >= n)
                    fprintf(stderr, "%s: allocation %llu failed and the load still succeeded\n", fixtures[f],
                            (unsigned long long)n);
                assert_true(made < n);
                break;
            }
            if (st != EPM_ERR_NOMEM)
                fprintf(stderr, "%s: allocation %llu: %s: %s\n", fixtures[f], (unsigned long long)n,
                        epm_status_str(st), epm_last_error());
            assert_int_equal(st, EPM_ERR_NOMEM);
            assert_non_null(strstr(epm_last_error(), "allocation"));
        }
        fprintf(stderr, "%s: %llu allocation points of the loader failed cleanly\n", fixtures[f],
                (unsigned long long)(n - 1));
        assert_true(n - 1 > 10);
        total += n - 1;
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
