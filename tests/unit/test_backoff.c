/* The polling wait's schedule (dist/backoff.c): no pause for 20 us, yields
 * until EPM_BACKOFF_SPIN_S, then sleeps doubling from 10 us to the cap. The
 * returned next sleep is checked, and each sleep's length loosely (never
 * shorter than asked; a loaded machine may take longer). */
#include "test_util.h"

#include "core.h"

static void test_no_sleep_while_spinning(void **state)
{
    (void)state;
    assert_int_equal(epm_backoff(0, 0, 200000), 0);
    assert_int_equal(epm_backoff(10e-6, 0, 200000), 0);
    assert_int_equal(epm_backoff(1e-3, 0, 200000), 0);
    assert_int_equal(epm_backoff(EPM_BACKOFF_SPIN_S * 0.99, 0, 200000), 0);
}

static void test_sleeps_double_to_the_cap(void **state)
{
    (void)state;
    long want[] = {10000, 20000, 40000, 80000, 160000, 200000, 200000};
    long nap = 0;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        double t0 = epm_now();
        nap = epm_backoff(EPM_BACKOFF_SPIN_S, nap, 200000);
        double slept = epm_now() - t0;
        assert_int_equal(nap, want[i]);
        assert_true(slept >= want[i] * 1e-9 * 0.99);
    }
    /* a lower cap (the NCCL stream poll's 50 us) is never exceeded */
    nap = 0;
    for (int i = 0; i < 5; i++)
        nap = epm_backoff(1.0, nap, 50000);
    assert_int_equal(nap, 50000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_sleep_while_spinning),
        cmocka_unit_test(test_sleeps_double_to_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
