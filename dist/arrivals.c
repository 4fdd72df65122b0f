/* Request arrival times for online serving runs (runtime.h): a gamma
 * renewal process, as vLLM's benchmark_serving draws its --request-rate
 * arrivals (shape = burstiness, mean interval 1 / rate; shape 1 is a
 * Poisson process, below 1 burstier, above 1 more regular). */
#include <math.h>

#include "runtime.h"

static double unit_open(uint64_t *s) /* (0, 1): logs and powers of it stay finite */
{
    double u;
    do
        u = epm_rand_unit(s);
    while (u <= 0);
    return u;
}

static double normal(uint64_t *s) /* Box-Muller, one of the pair */
{
    const double u = unit_open(s), v = epm_rand_unit(s);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* Gamma(k, 1) by Marsaglia and Tsang's squeeze (2000); for k < 1 through
 * Gamma(k + 1) x U^(1/k), their boost */
static double gamma1(uint64_t *s, double k)
{
    if (k < 1)
        return gamma1(s, k + 1) * pow(unit_open(s), 1 / k);
    const double d = k - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x, v;
        do {
            x = normal(s);
            v = 1 + c * x;
        } while (v <= 0);
        v = v * v * v;
        const double u = unit_open(s);
        if (u < 1 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1 - v + log(v)))
            return d * v;
    }
}

epm_status epm_arrivals(int n, double rate, double burstiness, uint64_t seed, double *out)
{
    if (n < 0 || !(rate > 0) || !(burstiness > 0) || !isfinite(burstiness))
        return epm_fail(EPM_ERR_INVALID_ARG, "arrivals: %d requests at rate %g/s, burstiness %g (rate > 0, "
                        "burstiness > 0 and finite)", n, rate, burstiness);
    uint64_t s = seed ^ 0x61727269766c7321ull; /* apart from the sampler's streams of the same seed */
    double t = 0;
    for (int i = 0; i < n; i++) {
        /* the first request comes at once, each next one interval later */
        if (i > 0 && isfinite(rate))
            t += gamma1(&s, burstiness) / (burstiness * rate);
        out[i] = t;
    }
    return EPM_OK;
}
