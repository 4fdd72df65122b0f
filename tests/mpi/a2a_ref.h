/* Seeded token data and a single-process reference of dispatch and combine,
 * computed identically on every rank, for the comm/ tests under mpirun. */
#ifndef EPM_TEST_A2A_REF_H
#define EPM_TEST_A2A_REF_H

#include <stdint.h>
#include <string.h>

#include "core.h"
#include "epmoe/comm.h"
#include "half.h"

typedef struct scen {
    int R, E, k, hidden;
    epm_dtype dt;
    int follow;       /* combine on the top-1 replica's rank */
    int replicas;     /* every expert also on the next rank */
    int skew;         /* every token chooses expert 0 (k = 1) */
    int empty_every;  /* rank r has no tokens when r % empty_every == 1 (0: never) */
    int identity;     /* f_e(x) = x, weights 1/k (k a power of two) */
    uint64_t seed;
    int vnodes;
    /* derived */
    epm_placement *p;
    int64_t *ntok, *first; /* per rank: token count, global index of its first token */
    int64_t total;
    int32_t *ids;  /* [total * k] */
    float *w;
    int *dst;      /* [total * k] serving rank per choice (route pick at the source) */
    int *src;      /* [total] */
    int *comb;     /* [total] */
} scen;

static inline int sc_any(const scen *s, int64_t g)
{
    for (int j = 0; j < s->k; j++)
        if (s->dst[g * s->k + j] >= 0)
            return 1;
    return 0;
}

static inline void sc_build(scen *s)
{
    epm_cluster c;
    int nodes = s->vnodes ? s->vnodes : 1;
    epm_cluster_init(&c, nodes, s->R / nodes);
    epm_placement_create(1, s->E, s->k, &c, &s->p);
    for (int e = 0; e < s->E; e++) {
        int r = (int)((int64_t)e * s->R / s->E);
        epm_placement_add(s->p, 0, e, r);
        if (s->replicas && s->R > 1)
            epm_placement_add(s->p, 0, e, (r + 1) % s->R);
    }
    s->ntok = epm_calloc((size_t)s->R, sizeof(int64_t));
    s->first = epm_calloc((size_t)s->R + 1, sizeof(int64_t));
    uint64_t st = s->seed;
    for (int r = 0; r < s->R; r++) {
        s->ntok[r] = s->empty_every && r % s->empty_every == 1 ? 0 : 5 + (int64_t)(epm_splitmix64(&st) % 40);
        s->first[r + 1] = s->first[r] + s->ntok[r];
    }
    s->total = s->first[s->R];
    size_t n = (size_t)(s->total ? s->total : 1) * (size_t)s->k;
    s->ids = epm_malloc(n * sizeof *s->ids);
    s->w = epm_malloc(n * sizeof *s->w);
    s->dst = epm_malloc(n * sizeof *s->dst);
    s->src = epm_malloc((size_t)(s->total ? s->total : 1) * sizeof *s->src);
    s->comb = epm_malloc((size_t)(s->total ? s->total : 1) * sizeof *s->comb);
    for (int r = 0; r < s->R; r++)
        for (int64_t g = s->first[r]; g < s->first[r + 1]; g++) {
            int32_t *id = s->ids + g * s->k;
            float *w = s->w + g * s->k;
            uint64_t u = epm_splitmix64(&st);
            for (int j = 0; j < s->k; j++) {
                if (s->skew) {
                    id[j] = 0;
                } else {
                    int e, dup;
                    do { /* distinct experts per token */
                        e = (int)(epm_splitmix64(&st) % (uint64_t)s->E);
                        dup = 0;
                        for (int q = 0; q < j; q++)
                            dup |= id[q] == e;
                    } while (dup);
                    id[j] = e;
                }
                w[j] = s->identity ? 1.0f / (float)s->k : (float)(1 + epm_splitmix64(&st) % 1000) / 1009.0f;
            }
            if (!s->identity && u % 11 == 3) /* some tokens skip the layer */
                for (int j = 0; j < s->k; j++)
                    id[j] = -1;
            else if (!s->identity && s->k > 1 && u % 7 == 2) /* dynamic k: one choice unused */
                id[s->k - 1] = -1;
            s->src[g] = r;
            epm_route_pick(s->p, 0, id, s->k, r, (uint64_t)g, s->dst + g * s->k);
            s->comb[g] = s->follow && sc_any(s, g) ? s->dst[g * s->k] : r;
        }
}

static inline void sc_free(scen *s)
{
    epm_placement_destroy(s->p);
    epm_free(s->ntok);
    epm_free(s->first);
    epm_free(s->ids);
    epm_free(s->w);
    epm_free(s->dst);
    epm_free(s->src);
    epm_free(s->comb);
}

/* hidden value h of global token g (multiples of 1/8: exact in bf16) */
static inline float sc_x(int64_t g, int h) { return (float)((g * 31 + h * 7) % 97 - 48) / 8.0f; }
/* ... as a row of dtype dt holds it */
static inline float sc_xd(epm_dtype dt, int64_t g, int h)
{
    return dt == EPM_DTYPE_F32 ? sc_x(g, h) : epm_bf16_to_f32(epm_f32_to_bf16(sc_x(g, h)));
}

static inline float sc_f(const scen *s, int e, float x) { return s->identity ? x : x * (1.0f + (float)e / 7.0f) - 0.3f * (float)e; }

static inline float sc_load(epm_dtype dt, const void *buf, int64_t i)
{
    return dt == EPM_DTYPE_F32 ? ((const float *)buf)[i] : epm_bf16_to_f32(((const uint16_t *)buf)[i]);
}

static inline void sc_store(epm_dtype dt, void *buf, int64_t i, float v)
{
    if (dt == EPM_DTYPE_F32)
        ((float *)buf)[i] = v;
    else
        ((uint16_t *)buf)[i] = epm_f32_to_bf16(v);
}

/* what the runtime computes per dispatch row on rank d: the sum over d's
 * experts (ascending expert id) of w * f_e(x), in f32, stored in dt */
static inline float sc_partial(const scen *s, int64_t g, int d, int h)
{
    float x = sc_xd(s->dt, g, h);
    float acc = 0;
    int first = 1;
    for (int e = 0; e < s->E; e++)
        for (int j = 0; j < s->k; j++)
            if (s->ids[g * s->k + j] == e && s->dst[g * s->k + j] == d) {
                float v = s->w[g * s->k + j] * sc_f(s, e, x);
                acc = first ? v : acc + v;
                first = 0;
            }
    if (s->dt == EPM_DTYPE_BF16)
        acc = epm_bf16_to_f32(epm_f32_to_bf16(acc));
    return acc;
}

/* combine output of token g: partials of its distinct serving ranks, ascending */
static inline float sc_out(const scen *s, int64_t g, int h)
{
    float acc = 0;
    int first = 1;
    for (int d = 0; d < s->R; d++) {
        int serves = 0;
        for (int j = 0; j < s->k; j++)
            serves |= s->dst[g * s->k + j] == d;
        if (!serves)
            continue;
        float v = sc_partial(s, g, d, h);
        acc = first ? v : acc + v;
        first = 0;
    }
    if (s->dt == EPM_DTYPE_BF16)
        acc = epm_bf16_to_f32(epm_f32_to_bf16(acc));
    return acc;
}

/* eval.h's count of what rank `me` sends, in rows, per phase and link class */
static inline void sc_model_rows(const scen *s, const epm_comm *c, int me, int64_t rows[2][EPM_LINK_COUNT])
{
    memset(rows, 0, 2 * EPM_LINK_COUNT * sizeof(int64_t));
    for (int64_t g = 0; g < s->total; g++) {
        int seen[64] = {0};
        for (int j = 0; j < s->k; j++) {
            int d = s->dst[g * s->k + j];
            if (d < 0 || seen[d])
                continue;
            seen[d] = 1;
            if (s->src[g] == me && d != me)
                rows[0][epm_comm_link(c, me, d)]++;
            if (d == me && s->comb[g] != me)
                rows[1][epm_comm_link(c, me, s->comb[g])]++;
        }
    }
}

/* Rank me's share of s as it sends it: the tokens' keys (their global
 * indices) and, x not NULL, their hidden rows in s->dt. epm_free both; each
 * holds one element at least, so a rank without tokens can make one up. */
static inline void sc_local(const scen *s, int me, uint64_t **keys, void **x)
{
    int64_t n = s->ntok[me], g0 = s->first[me], m = n ? n : 1;
    int H = s->hidden;
    *keys = epm_malloc((size_t)m * sizeof **keys);
    for (int64_t t = 0; t < n; t++)
        (*keys)[t] = (uint64_t)(g0 + t);
    if (!x)
        return;
    *x = epm_malloc((size_t)m * (size_t)H * epm_dtype_size(s->dt));
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < H; h++)
            sc_store(s->dt, *x, t * H + h, sc_x(g0 + t, h));
}

/* What one rank got from a dispatch + combine, for comparing two paths. */
typedef struct sc_result {
    int64_t nrows, nout;
    void *rows, *out;
    uint64_t *out_keys;
    epm_comm_stats stats;
    int hier;
} sc_result;

static inline void sc_result_free(sc_result *r)
{
    epm_free(r->rows);
    epm_free(r->out);
    epm_free(r->out_keys);
}

/* Builds a layout for this rank's share of s, dispatches, checks every
 * dispatched row and expert list against the reference, computes the
 * partials as the runtime would, combines and checks the output and the
 * byte counts. split: use the _start/_wait calls. */
static inline void sc_run(const scen *s, epm_comm *c, int split, sc_result *res)
{
    int me = epm_comm_rank(c), k = s->k, H = s->hidden;
    size_t es = epm_dtype_size(s->dt), rb = (size_t)H * es;
    int64_t n = s->ntok[me], g0 = s->first[me];
    uint64_t *keys;
    void *x;
    sc_local(s, me, &keys, &x);
    epm_comm_stats_reset(c);
    epm_a2a_layout *l;
    epm_status st = epm_a2a_layout_create(c, s->p, 0, n, k, s->ids + g0 * k, s->w + g0 * k, keys,
                                          s->follow ? s->comb + g0 : NULL, &l);
    if (st != EPM_OK)
        fprintf(stderr, "rank %d: %s\n", me, epm_last_error());
    assert_int_equal(st, EPM_OK);
    res->hier = epm_a2a_hierarchical(l);

    /* dispatch rows: own tokens served here, then received ones by (src, token) = global index */
    int64_t nr = epm_a2a_rows(l), want = 0, wloc = 0;
    for (int64_t g = 0; g < s->total; g++) {
        int serves = 0;
        for (int j = 0; j < k; j++)
            serves |= s->dst[g * k + j] == me;
        want += serves;
        wloc += serves && s->src[g] == me;
    }
    assert_int_equal(nr, want);
    assert_int_equal(epm_a2a_local_rows(l), wloc);
    void *rows = epm_malloc((size_t)(nr ? nr : 1) * rb);
    if (split) {
        assert_int_equal(epm_a2a_dispatch_start(l, x, s->dt, H, rows), EPM_OK);
        assert_int_equal(epm_a2a_dispatch_start(l, x, s->dt, H, rows), EPM_ERR_INVALID_ARG); /* one in flight */
        assert_int_equal(epm_a2a_dispatch_wait(l), EPM_OK);
    } else {
        assert_int_equal(epm_a2a_dispatch(l, x, s->dt, H, rows), EPM_OK);
    }
    const uint64_t *rk = epm_a2a_row_keys(l);
    const int *rsrc = epm_a2a_row_src(l);
    for (int64_t i = 0; i < nr; i++) {
        int64_t g = (int64_t)rk[i];
        assert_true(g >= 0 && g < s->total);
        assert_int_equal(rsrc[i], s->src[g]);
        if (i > 0 && i != wloc)
            assert_true(rk[i] > rk[i - 1]);
        assert_int_equal(i < wloc, s->src[g] == me);
        for (int h = 0; h < H; h++)
            assert_true(sc_load(s->dt, rows, i * H + h) == sc_xd(s->dt, g, h));
    }
    /* each local expert gets exactly the (token, weight) pairs the gate chose */
    const int32_t *eids;
    int ne = epm_a2a_experts(l, &eids);
    int64_t pairs = 0;
    for (int i = 0; i < ne; i++) {
        const int64_t *er;
        const float *ew;
        int64_t m = epm_a2a_expert_rows(l, i, &er, &ew);
        assert_true(m > 0);
        assert_true(i == 0 || eids[i] > eids[i - 1]);
        int64_t expect = 0;
        for (int64_t g = 0; g < s->total; g++)
            for (int j = 0; j < k; j++)
                if (s->ids[g * k + j] == eids[i] && s->dst[g * k + j] == me)
                    expect++;
        assert_int_equal(m, expect);
        for (int64_t q = 0; q < m; q++) {
            assert_true(er[q] >= 0 && er[q] < nr);
            assert_true(q == 0 || er[q] > er[q - 1]);
            int64_t g = (int64_t)rk[er[q]];
            int found = 0;
            for (int j = 0; j < k; j++)
                found |= s->ids[g * k + j] == eids[i] && s->dst[g * k + j] == me && s->w[g * k + j] == ew[q];
            assert_true(found);
        }
        pairs += m;
    }
    int64_t want_pairs = 0;
    for (int64_t g = 0; g < s->total * k; g++)
        want_pairs += s->dst[g] == me;
    assert_int_equal(pairs, want_pairs);

    /* partials as the runtime computes them: experts in ascending id, f32 */
    float *acc = epm_calloc((size_t)(nr ? nr : 1) * (size_t)H, sizeof *acc);
    char *seen = epm_calloc((size_t)(nr ? nr : 1), 1);
    for (int i = 0; i < ne; i++) {
        const int64_t *er;
        const float *ew;
        int64_t m = epm_a2a_expert_rows(l, i, &er, &ew);
        for (int64_t q = 0; q < m; q++)
            for (int h = 0; h < H; h++) {
                float v = ew[q] * sc_f(s, eids[i], sc_load(s->dt, rows, er[q] * H + h));
                acc[er[q] * H + h] = seen[er[q]] ? acc[er[q] * H + h] + v : v;
                seen[er[q]] = h == H - 1 ? 1 : seen[er[q]];
            }
    }
    void *partial = epm_malloc((size_t)(nr ? nr : 1) * rb);
    for (int64_t i = 0; i < nr * H; i++)
        sc_store(s->dt, partial, i, acc[i]);
    int64_t no = epm_a2a_out_rows(l);
    void *out = epm_malloc((size_t)(no ? no : 1) * rb);
    uint64_t *okeys = epm_malloc((size_t)(no ? no : 1) * sizeof *okeys);
    if (split) {
        assert_int_equal(epm_a2a_combine_start(l, partial, s->dt, H, out, okeys), EPM_OK);
        assert_int_equal(epm_a2a_combine_wait(l), EPM_OK);
        assert_int_equal(epm_a2a_combine_wait(l), EPM_ERR_INVALID_ARG);
    } else {
        assert_int_equal(epm_a2a_combine(l, partial, s->dt, H, out, okeys), EPM_OK);
    }
    /* output: tokens combined here, ascending global index, equal to the reference bit for bit */
    int64_t wo = 0;
    for (int64_t g = 0; g < s->total; g++)
        if (s->comb[g] == me) {
            assert_true(wo < no);
            assert_int_equal(okeys[wo], (uint64_t)g);
            assert_int_equal(epm_a2a_out_src(l)[wo], s->src[g]);
            for (int h = 0; h < H; h++) {
                float got = sc_load(s->dt, out, wo * H + h), ref = sc_any(s, g) ? sc_out(s, g, h) : 0.0f;
                if (got != ref)
                    fprintf(stderr, "rank %d token %lld h %d: got %g want %g\n", me, (long long)g, h, got, ref);
                assert_true(got == ref);
                if (s->identity)
                    assert_true(got == (sc_any(s, g) ? sc_xd(s->dt, g, h) : 0.0f));
            }
            wo++;
        }
    assert_int_equal(wo, no);
    if (!s->follow) /* home: the local tokens in their original order */
        for (int64_t t = 0; t < n; t++)
            assert_int_equal(okeys[t], keys[t]);

    /* bytes: eval.h's model, counted independently here */
    int64_t mr[2][EPM_LINK_COUNT];
    sc_model_rows(s, c, me, mr);
    epm_comm_stats_get(c, &res->stats);
    for (int ph = 0; ph < 2; ph++)
        for (int cl = 0; cl < EPM_LINK_COUNT; cl++) {
            assert_int_equal(res->stats.model[ph][cl], mr[ph][cl] * (int64_t)rb);
            if (!res->hier)
                assert_int_equal(res->stats.wire[ph][cl], mr[ph][cl] * (int64_t)rb);
        }
    assert_int_equal(res->stats.ops[EPM_PHASE_DISPATCH], 1);
    assert_int_equal(res->stats.ops[EPM_PHASE_COMBINE], 1);

    res->nrows = nr;
    res->rows = rows;
    res->nout = no;
    res->out = out;
    res->out_keys = okeys;
    epm_free(acc);
    epm_free(seen);
    epm_free(partial);
    epm_free(x);
    epm_free(keys);
    epm_a2a_layout_destroy(l);
}

#endif
