/* Latency distributions (dist/latency.c) against numpy.percentile's
 * default (linear) on values worked out by hand; NaN entries are no
 * sample; nothing measured is all zero. Request arrivals (dist/arrivals.c):
 * their intervals' moments, determinism, bad rates refused. */
#include <math.h>
#include <string.h>

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

/* mean and squared coefficient of variation of the intervals of a[0, n) */
static void interval_moments(const double *a, int n, double *mean, double *cv2)
{
    double s = 0, s2 = 0;
    for (int i = 1; i < n; i++) {
        const double d = a[i] - a[i - 1];
        assert_true(d >= 0);
        s += d;
        s2 += d * d;
    }
    *mean = s / (n - 1);
    *cv2 = (s2 / (n - 1) - *mean * *mean) / (*mean * *mean);
}

/* A gamma renewal process: mean interval 1 / rate, and the squared
 * coefficient of variation of the intervals 1 / burstiness (a Poisson
 * process's is 1). 40000 intervals: the standard error of the mean is
 * 0.25-0.7% and of the CV^2 0.8-1.2% here, so 2.5% and 4.5% are at least
 * three and a half sigmas (a fixed seed: nothing is left to chance in CI). */
static void test_arrivals_are_gamma(void **state)
{
    (void)state;
    enum { N = 40001 };
    double *a = test_malloc(N * sizeof *a), *b = test_malloc(N * sizeof *b);
    static const double shapes[] = {1, 0.5, 4};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(epm_arrivals(N, 4, shapes[i], 9, a), EPM_OK);
        assert_true(a[0] == 0);
        double mean, cv2;
        interval_moments(a, N, &mean, &cv2);
        if (fabs(mean - 0.25) > 0.025 * 0.25 || fabs(cv2 - 1 / shapes[i]) > 0.045 / shapes[i])
            fail_msg("burstiness %g: mean interval %g (0.25), CV^2 %g (%g)", shapes[i], mean, cv2, 1 / shapes[i]);
    }
    /* deterministic in the seed, and the seed matters */
    assert_int_equal(epm_arrivals(N, 4, 1, 9, b), EPM_OK);
    assert_int_equal(epm_arrivals(N, 4, 1, 9, a), EPM_OK);
    assert_memory_equal(a, b, N * sizeof *a);
    assert_int_equal(epm_arrivals(N, 4, 1, 10, b), EPM_OK);
    assert_true(a[1] != b[1]);
    /* an infinite rate: an offline batch */
    assert_int_equal(epm_arrivals(5, INFINITY, 1, 9, a), EPM_OK);
    for (int i = 0; i < 5; i++)
        assert_true(a[i] == 0);
    test_free(a);
    test_free(b);
}

static void test_arrivals_reject_bad_rates(void **state)
{
    (void)state;
    double a[2];
    static const double bad[][2] = {{0, 1}, {-1, 1}, {NAN, 1}, {1, 0}, {1, -2}, {1, INFINITY}, {1, NAN}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(epm_arrivals(2, bad[i][0], bad[i][1], 1, a), EPM_ERR_INVALID_ARG);
        assert_non_null(strstr(epm_last_error(), "burstiness"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles_as_numpy),
        cmocka_unit_test(test_nothing_measured),
        cmocka_unit_test(test_arrivals_are_gamma),
        cmocka_unit_test(test_arrivals_reject_bad_rates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
