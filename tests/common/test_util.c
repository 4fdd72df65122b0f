#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "epmoe/epmoe.h"
#include "planner.h"

static char tmpdir[256];

static void cleanup(void)
{
    char cmd[300];
    if (tmpdir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
}

const char *tu_fixtures(void)
{
    const char *d = getenv("EPM_FIXTURES");
    return d ? d : "tests/fixtures";
}

const char *tu_tmpdir(void)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/epmtest.XXXXXX");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(cleanup);
    }
    return tmpdir;
}

const char *tu_path(const char *name)
{
    static char buf[8][512];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, 512, "%s/%s", tu_tmpdir(), name);
    return b;
}

const char *tu_write(const char *name, const void *data, size_t n)
{
    const char *p = tu_path(name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) {
        perror(p);
        abort();
    }
    fclose(f);
    return p;
}

epm_trace *tu_synth_trace_skew(int layers, int experts, int k, int64_t tokens, uint64_t seed, double zipf_s,
                               int64_t tokens_per_seq)
{
    epm_trace_synth_opts so;
    epm_trace_synth_opts_init(&so);
    so.layers = layers;
    so.experts = experts;
    so.k = k;
    so.tokens = tokens;
    so.seed = seed;
    so.zipf_s = zipf_s;
    so.affinity = 0.7;
    so.tokens_per_seq = tokens_per_seq;
    epm_trace *t = NULL;
    if (epm_trace_synth(&so, &t) != EPM_OK)
        fail_msg("synth: %s", epm_last_error());
    return t;
}

epm_trace *tu_synth_trace(int layers, int experts, int k, int64_t tokens, uint64_t seed)
{
    return tu_synth_trace_skew(layers, experts, k, tokens, seed, 1.0, 5);
}

epm_trace *tu_trace_sampled(const epm_trace *t, int folds)
{
    int32_t *fold;
    int nf;
    assert_int_equal(epm_plan_folds(t, 1, 1 << 20, &fold, &nf), EPM_OK);
    assert_int_equal(nf, folds);
    const int K = epm_trace_k(t);
    epm_trace *u;
    assert_int_equal(epm_trace_slice(t, 0, epm_trace_tokens(t), &u), EPM_OK);
    for (int l = 0; l < epm_trace_layers(u); l++)
        for (int64_t i = 0; i < epm_trace_tokens(u); i++)
            if (fold[i] < 0)
                for (int j = 0; j < K; j++)
                    epm_trace_ids(u, l)[i * K + j] = -1;
    epm_free(fold);
    return u;
}

void tu_plan_opts(epm_plan_opts *o, int method, int mode, int slots, double time_limit_s, double mip_gap)
{
    epm_plan_opts_init(o);
    o->method = (epm_method)method;
    o->mode = (epm_mode)mode;
    o->slots_per_rank = slots;
    o->hidden = 4096;
    o->kv_dim = 1024;
    o->time_limit_s = time_limit_s;
    o->mip_gap = mip_gap;
}

float *tu_rnd(size_t n, uint64_t *seed)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(2 * epm_rand_unit(seed) - 1);
    return v;
}

int64_t tu_largest_sum(int64_t *v, int n, int k)
{
    int64_t sum = 0;
    for (int i = 0; i < k && i < n; i++) { /* the largest left to the front */
        int m = i;
        for (int j = i + 1; j < n; j++)
            m = v[j] > v[m] ? j : m;
        const int64_t t = v[i];
        v[i] = v[m], v[m] = t;
        sum += v[i];
    }
    return sum;
}
