/* Fuzz target: generation_config.json. An accepted config must hold at most
 * 64 stop ids, all >= 0, valid sampling parameters (greedy unless do_sample),
 * and a sampler made from it must pick a token with a finite logit, the same
 * one again for the same (seed, sequence, step), the top one when greedy. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "epmoe/generate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { V = 37 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_generation_config g;
    if (epm_generation_config_parse((const char *)data, size, "fuzz.json", &g) != EPM_OK)
        return 0;
    if (g.n_eos < 0 || g.n_eos > EPM_MAX_STOP_IDS || (g.do_sample != 0 && g.do_sample != 1))
        __builtin_trap();
    for (int i = 0; i < g.n_eos; i++)
        if (g.eos[i] < 0)
            __builtin_trap();
    const epm_sampling *p = &g.sampling;
    if (epm_sampling_validate(p) != EPM_OK)
        __builtin_trap();
    if (!g.do_sample && (epm_sampling_random(p) || p->temperature != 0 || p->top_k != 0 || p->top_p != 0 ||
                         p->min_p != 0))
        __builtin_trap();

    /* a fixed row: ties (at the top too), a NaN, -inf, a wide range */
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)((i * 7) % 11) * 0.75f - 3;
    logits[3] = NAN;
    logits[8] = -INFINITY;
    logits[20] = 40;
    logits[30] = -1e30f;
    /* the sequence so far: its stop ids (most outside the vocabulary) and a few in it */
    int32_t seq[EPM_MAX_STOP_IDS + 4];
    int64_t n = 0;
    for (int i = 0; i < g.n_eos; i++)
        seq[n++] = g.eos[i];
    seq[n++] = 20;
    seq[n++] = 5;
    seq[n++] = 5;
    seq[n++] = -1;

    epm_sampler *s = NULL;
    if (epm_sampler_create(p, V, &s) != EPM_OK || !s)
        __builtin_trap();
    for (int64_t step = 0; step < 4; step++) {
        int32_t t = -1, u = -1;
        if (epm_sampler_next(s, logits, seq, n, seq, step, (int64_t)size, step, &t) != EPM_OK)
            __builtin_trap();
        if (t < 0 || t >= V || !isfinite(logits[t]))
            __builtin_trap();
        if (epm_sampler_next(s, logits, seq, n, seq, step, (int64_t)size, step, &u) != EPM_OK || u != t)
            __builtin_trap();
        /* without a sequence (no penalty), greedy takes the top logit, id 20 */
        if (epm_sampler_next(s, logits, NULL, 0, NULL, 0, 0, step, &u) != EPM_OK || u < 0 || u >= V ||
            !isfinite(logits[u]) || (!epm_sampling_random(p) && u != 20))
            __builtin_trap();
    }
    epm_sampler_destroy(s);
    return 0;
}
