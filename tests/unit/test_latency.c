/* Latency distributions (dist/latency.c) against numpy.percentile's
 * default (linear) on values worked out by hand; NaN entries are no
 * sample; nothing measured is all zero. */
#include <math.h>

#include "test_util.h"

#include "runtime.h"

static void test_percentiles_as_numpy(void **state)
{
    (void)state;
    /* np.percentile([4, 1, 3, 2], [50, 90, 99]) = 2.5, 3.7, 3.97 */
    const double v[] = {4, NAN, 1, 3, 2};
    epm_latency l;
    assert_int_equal(epm_latency_of(v, 5, &l), EPM_OK);
    assert_int_equal(l.n, 4);
    assert_true(fabs(l.mean - 2.5) < 1e-12);
    assert_true(fabs(l.p50 - 2.5) < 1e-12);
    assert_true(fabs(l.p90 - 3.7) < 1e-12);
    assert_true(fabs(l.p99 - 3.97) < 1e-12);
    assert_true(l.max == 4);
    /* one value: every percentile is it */
    const double one[] = {0.25};
    assert_int_equal(epm_latency_of(one, 1, &l), EPM_OK);
    assert_true(l.n == 1 && l.p50 == 0.25 && l.p99 == 0.25 && l.mean == 0.25 && l.max == 0.25);
    /* np.percentile(range(101), 99) = 99 */
    double r[101];
    for (int i = 0; i < 101; i++)
        r[100 - i] = i;
    assert_int_equal(epm_latency_of(r, 101, &l), EPM_OK);
    assert_true(fabs(l.p99 - 99) < 1e-12 && fabs(l.p90 - 90) < 1e-12 && fabs(l.p50 - 50) < 1e-12);
}

static void test_nothing_measured(void **state)
{
    (void)state;
    const double v[] = {NAN, INFINITY};
    epm_latency l = {1, 1, 1, 1, 1, 1};
    assert_int_equal(epm_latency_of(v, 2, &l), EPM_OK);
    assert_true(l.n == 0 && l.mean == 0 && l.p50 == 0 && l.p99 == 0 && l.max == 0);
    assert_int_equal(epm_latency_of(NULL, 0, &l), EPM_OK);
    assert_int_equal(l.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles_as_numpy),
        cmocka_unit_test(test_nothing_measured),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
