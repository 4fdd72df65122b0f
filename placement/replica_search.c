/* Local search over placements with copies: what the planner does with spare
 * slots. The MIP and its search (ilp.c) decide single copies; eplb decides
 * copy counts by load and packs them for balance alone, blind to which
 * experts a token takes together or one after another. This search starts
 * from the better of the two and moves copies: swaps two of one layer between
 * ranks, moves one into a free slot, gives a copy of an expert that has
 * several to another expert, or fills a free slot. Each move is scored by its
 * exact change of epm_plan_objective, from the tokens it touches only:
 *   - at its layer, the tokens that chose one of its experts (their replica
 *     picks, epm_route_pick, may change; no other token's can);
 *   - in follow mode, where a token's top-1 copy decides where it runs the
 *     next layer, those whose rank changed, at the next layers, as far as
 *     their path keeps changing, and at the end their return home.
 * The sums are integers (loads, bytes per link class) and the objective is
 * recomposed from them in epm_plan_objective's own order, so the value the
 * search reports is epm_plan_objective's, bit for bit (test_replica_search).
 *
 * Moves come from a fixed-seed generator and the budget is counted in
 * proposals, so the result depends on the input alone unless the deadline
 * cuts it short. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "placement_internal.h"
#include "planner.h"
#include "epmoe/trace.h"

/* Passes beyond this are sampled (plan_folds.c): the model's work per move grows with the folds. */
enum { MAX_FOLDS = 1024 };

typedef struct {
    const epm_trace *t;
    epm_placement *p;
    const epm_cluster *c;
    int L, E, K, R, S, follow;
    int64_t T;
    int64_t hb;
    double bw, tw, denom, cost[EPM_LINK_COUNT];
    int32_t *home;       /* [T] */
    int32_t *src;        /* follow: [(L + 1) * T] the rank a token is on when layer l starts (L: at the end) */
    int64_t *load;       /* [L * R] */
    int64_t *bytes;      /* [L * LINKS] dispatch, combine and K/V bytes by link class */
    int64_t *maxl;       /* [L] */
    int64_t gather[EPM_LINK_COUNT];
    /* what epm_eval charges, the busiest rank, per layer and fold (s->fold) in
     * [L][F][6R]: each rank's load [R], its dispatch and combine hidden vectors [4][R] (sent intra,
     * sent inter, received intra, received inter), and in follow mode the tokens whose K/V row it
     * sends [R]; each layer's model term */
    epm_plan_opts o;     /* (resolved) */
    int F, folds_asked;
    int32_t *fold;       /* [T] each token's fold (epm_plan_folds: a trace's passes where it has them;
                            -1: out of the model, in the objective only) */
    int64_t *fx;
    int64_t *gx;         /* follow: [F][4R] the final return home, as the layers' phases */
    double gmodel;       /* its term */
    double *model;       /* [L] */
    double rho;          /* another node's link cost */
    double kv_ratio;     /* a K/V row's bytes over a hidden vector's */
    int gpn;
    int64_t *kv_of;      /* [R * LINKS] follow: the bytes of one K/V row sent from rank s to every other */
    int64_t *occ_start;  /* [L * E + 1] */
    int32_t *occ;        /* tokens choosing (l, e), each once */
    int *held;           /* [L * R * S]: rank r's experts at layer l in its first rank_count slots */
    /* one move's scratch and undo */
    uint32_t *stamp, epoch;
    int32_t *aff, *cur, *cur_src, *nxt, *nxt_src;
    int *touched, ntouched;
    char *is_touched;
    int64_t *save_load, *save_bytes, *save_max, save_gather[EPM_LINK_COUNT];
    double save_gmodel;
    /* each fold's term, kept so that a move recomputes only the folds its tokens are in: the
     * layers' [L * F] (fold_term), then follow mode's return home [F]; cell c < L * F is fold
     * c % F of layer c / F, cell L * F + f the return home's fold f */
    double *term;
    uint32_t *mark, mepoch; /* [L * F + F]: the move that saved the cell */
    int logging;            /* (a move is being tried: cells are saved before they change) */
    int64_t *cells, ncells; /* the cells the move changed, in order */
    int64_t *cell_save;     /* [(L * F + F) * 6R]: their sums before it, by that order */
    double *term_save;      /* [L * F + F] */
    int gather_dirty;
    double *save_model;
    int64_t *log_idx;
    int32_t *log_old;
    int64_t nlog, cap_log;
    int *dst, *distinct;
} rs;

static int64_t *lb(rs *s, int l) { return s->bytes + (size_t)l * EPM_LINK_COUNT; }

static int srcof(const rs *s, int l, int64_t i)
{
    return s->follow ? s->src[(size_t)l * (size_t)s->T + (size_t)i] : s->home[i];
}

/* One hidden vector from -> to: its link class's bytes, and the two ranks'. */
static inline void phase_add(rs *s, int64_t *ph, int64_t *b, int from, int to, int sign)
{
    epm_link k = epm_cluster_link(s->c, from, to);
    size_t inter = k == EPM_LINK_INTER;
    b[k] += sign * s->hb;
    if (!ph) /* (a token outside the model's folds) */
        return;
    ph[inter * (size_t)s->R + (size_t)from] += sign;
    ph[(2 + inter) * (size_t)s->R + (size_t)to] += sign;
}

/* The sums of cell c (see rs.term): 6R of a layer's fold, 4R of the return home's. */
static int64_t *cell_sums(const rs *s, size_t c, size_t *n)
{
    const size_t R = (size_t)s->R, LF = (size_t)s->L * (size_t)s->F;
    *n = (c < LF ? 6 : 4) * R;
    return c < LF ? s->fx + c * 6 * R : s->gx + (c - LF) * 4 * R;
}

/* Saves cell c the first time a move changes it. */
static void cell_touch(rs *s, size_t c)
{
    if (!s->logging || s->mark[c] == s->mepoch)
        return;
    s->mark[c] = s->mepoch;
    size_t n;
    const int64_t *v = cell_sums(s, c, &n);
    memcpy(s->cell_save + (size_t)s->ncells * 6 * (size_t)s->R, v, n * sizeof *v);
    s->term_save[s->ncells] = s->term[c];
    s->cells[s->ncells++] = (int64_t)c;
}

/* Adds sign times token i's counts at layer l from rank src (epm_eval's,
 * line for line) and returns where it is after the layer. */
static int tok_layer(rs *s, int l, int64_t i, int src, int sign)
{
    const int32_t *row = epm_trace_ids_const(s->t, l) + (size_t)i * (size_t)s->K;
    if (row[0] < 0)
        return src;
    epm_route_pick(s->p, l, row, s->K, src, (uint64_t)i, s->dst);
    const size_t R = (size_t)s->R;
    int64_t *load = s->load + (size_t)l * R, *b = lb(s, l);
    int64_t *fx = NULL, *ph = NULL;
    if (s->fold[i] >= 0) {
        const size_t cell = (size_t)l * (size_t)s->F + (size_t)s->fold[i];
        cell_touch(s, cell);
        fx = s->fx + cell * 6 * R;
        ph = fx + R;
    }
    int nd = 0;
    for (int j = 0; j < s->K; j++) {
        if (s->dst[j] < 0)
            continue;
        load[s->dst[j]] += sign;
        if (fx)
            fx[s->dst[j]] += sign;
        int seen = 0;
        for (int q = 0; q < nd; q++)
            seen |= s->distinct[q] == s->dst[j];
        if (!seen)
            s->distinct[nd++] = s->dst[j];
    }
    int comb = s->follow ? s->dst[0] : src;
    for (int q = 0; q < nd; q++) {
        int d = s->distinct[q];
        if (d != src)
            phase_add(s, ph, b, src, d, sign);
        if (d != comb)
            phase_add(s, ph, b, d, comb, sign);
    }
    if (s->follow) {
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            b[k] += sign * s->kv_of[(size_t)src * EPM_LINK_COUNT + (size_t)k];
        if (fx)
            fx[5 * R + (size_t)src] += sign;
    }
    return comb;
}

static void gather_add(rs *s, int64_t i, int where, int sign)
{
    if (where == s->home[i])
        return;
    const size_t R = (size_t)s->R;
    epm_link k = epm_cluster_link(s->c, where, s->home[i]);
    size_t inter = k == EPM_LINK_INTER;
    s->gather[k] += sign * s->hb;
    if (s->fold[i] < 0)
        return;
    const size_t cell = (size_t)s->L * (size_t)s->F + (size_t)s->fold[i];
    cell_touch(s, cell);
    s->gather_dirty = 1;
    int64_t *g = s->gx + (size_t)s->fold[i] * 4 * R;
    g[inter * R + (size_t)where] += sign;
    g[(2 + inter) * R + (size_t)s->home[i]] += sign;
}

/* A phase's busiest rank, in units of one intra-node hidden vector (another
 * node's cost rho), from its hidden vectors [4][R] (sent intra, sent inter,
 * received intra, received inter): epm_cost_phase_seconds' rule. */
static double busiest_units(const rs *s, const int64_t *ph)
{
    const size_t R = (size_t)s->R;
    double m = 0;
    for (size_t r = 0; r < R; r++) {
        double snd = (double)ph[r] + s->rho * (double)ph[R + r], rcv = (double)ph[2 * R + r] + s->rho * (double)ph[3 * R + r];
        m = snd > m ? snd : m;
        m = rcv > m ? rcv : m;
    }
    return m;
}

/* The final return home's term of the model: its phase's busiest rank, per
 * fold (follow mode; epm_eval charges it once a pass), from the folds' terms. */
static void gather_model(rs *s)
{
    double v = 0;
    const double *g = s->term + (size_t)s->L * (size_t)s->F;
    for (int f = 0; s->follow && f < s->F; f++)
        v += g[f];
    s->gmodel = v;
}

/* One fold's part of a layer's model term: balance_weight * its busiest
 * load + traffic_weight * its busiest rank's units (one intra-node hidden
 * vector each; another node's cost rho) of the dispatch/combine phase and,
 * in follow mode, of the K/V phase. */
static double fold_term(const rs *s, const int64_t *f)
{
    const size_t R = (size_t)s->R;
    int64_t m = 0;
    for (size_t r = 0; r < R; r++)
        m = f[r] > m ? f[r] : m;
    const double a2a = busiest_units(s, f + R);
    double kv = 0;
    if (s->follow) {
        /* a rank sends its tokens' rows to every other and receives every other rank's tokens' */
        const int64_t *n = f + 5 * R;
        int64_t all = 0;
        for (size_t r = 0; r < R; r++)
            all += n[r];
        const size_t G = (size_t)s->gpn; /* (ranks = nodes x gpus_per_node) */
        for (size_t node0 = 0; node0 < R; node0 += G) {
            int64_t on = 0;
            for (size_t r = node0; r < node0 + G; r++)
                on += n[r];
            for (size_t r = node0; r < node0 + G; r++) {
                double snd = (double)n[r] * ((double)(G - 1) + s->rho * (double)(R - G));
                double rcv = (double)(on - n[r]) + s->rho * (double)(all - on);
                kv = snd > kv ? snd : kv;
                kv = rcv > kv ? rcv : kv;
            }
        }
        kv *= s->kv_ratio;
    }
    return s->bw * (double)m + s->tw * (a2a + kv);
}

static void cell_term(rs *s, size_t c)
{
    size_t n;
    const int64_t *v = cell_sums(s, c, &n);
    s->term[c] = c < (size_t)s->L * (size_t)s->F ? fold_term(s, v) : s->tw * busiest_units(s, v);
}

/* Layer l's busiest load (the objective's), and its term of the search's
 * model of epm_eval's time: the sum over folds of fold_term (kept per fold
 * in term), each fold a pass of the trace's, or a sample of 1/F of its
 * tokens, so the sum is F times the mean over folds.
 * Two reasons for it (as in ilp_search.c for single copies). The objective
 * charges traffic at the mean rank, epm_eval's time at the busiest: a move
 * that lowers the sum by piling transfers onto one rank does not lower the
 * time (bench/README.md). And the busiest rank of the planning sample is
 * biased low, the more so the smaller the sample: a search that fills
 * every rank up to it loses to the next batch's noise; F smaller samples
 * keep the slack that noise needs. */
static void layer_max(rs *s, int l)
{
    const size_t R = (size_t)s->R;
    const int64_t *load = s->load + (size_t)l * R;
    int64_t m = 0;
    for (size_t r = 0; r < R; r++)
        m = load[r] > m ? load[r] : m;
    s->maxl[l] = m;
    double v = 0;
    const double *term = s->term + (size_t)l * (size_t)s->F;
    for (int f = 0; f < s->F; f++)
        v += term[f];
    s->model[l] = v;
}

static double model_total(const rs *s)
{
    double v = s->gmodel;
    for (int l = 0; l < s->L; l++)
        v += s->model[l];
    return v;
}

/* epm_plan_objective on the sums: its terms, in its order. */
static double objective(const rs *s)
{
    double v = 0;
    for (int l = 0; l < s->L; l++)
        v += epm_plan_objective_term(s->bw, s->tw, s->denom, s->cost, s->maxl[l], s->bytes + (size_t)l * EPM_LINK_COUNT);
    return v + epm_plan_objective_term(s->bw, s->tw, s->denom, s->cost, 0, s->gather);
}

static void rs_free(rs *s)
{
    epm_free(s->home);
    epm_free(s->fold);
    epm_free(s->src);
    epm_free(s->load);
    epm_free(s->bytes);
    epm_free(s->maxl);
    epm_free(s->fx);
    epm_free(s->gx);
    epm_free(s->term);
    epm_free(s->mark);
    epm_free(s->cells);
    epm_free(s->cell_save);
    epm_free(s->term_save);
    epm_free(s->model);
    epm_free(s->save_model);
    epm_free(s->kv_of);
    epm_free(s->occ_start);
    epm_free(s->occ);
    epm_free(s->held);
    epm_free(s->stamp);
    epm_free(s->aff);
    epm_free(s->cur);
    epm_free(s->cur_src);
    epm_free(s->nxt);
    epm_free(s->nxt_src);
    epm_free(s->touched);
    epm_free(s->is_touched);
    epm_free(s->save_load);
    epm_free(s->save_bytes);
    epm_free(s->save_max);
    epm_free(s->log_idx);
    epm_free(s->log_old);
    epm_free(s->dst);
    epm_free(s->distinct);
}

/* The inverted index: per (layer, expert), the tokens that chose it. */
static epm_status build_occ(rs *s)
{
    const size_t LE = (size_t)s->L * (size_t)s->E;
    s->occ_start = epm_calloc(LE + 1, sizeof *s->occ_start);
    int64_t *fill = epm_calloc(LE ? LE : 1, sizeof *fill); /* (each list's entries so far) */
    epm_status st = s->occ_start && fill ? EPM_OK : EPM_ERR_NOMEM;
    for (int pass = 0; pass < 2 && st == EPM_OK; pass++) {
        for (int l = 0; l < s->L; l++) {
            const int32_t *ids = epm_trace_ids_const(s->t, l);
            for (int64_t i = 0; i < s->T; i++) {
                const int32_t *row = ids + (size_t)i * (size_t)s->K;
                for (int j = 0; j < s->K; j++) {
                    int e = row[j], dup = 0;
                    if (e < 0 || e >= s->E)
                        continue;
                    for (int u = 0; u < j; u++)
                        dup |= row[u] == e;
                    if (dup)
                        continue;
                    size_t le = (size_t)l * (size_t)s->E + (size_t)e;
                    if (pass == 0)
                        s->occ_start[le + 1]++;
                    else
                        s->occ[s->occ_start[le] + fill[le]++] = (int32_t)i;
                }
            }
        }
        if (pass == 0) {
            for (size_t le = 0; le < LE; le++)
                s->occ_start[le + 1] += s->occ_start[le];
            s->occ = epm_malloc((size_t)(s->occ_start[LE] ? s->occ_start[LE] : 1) * sizeof *s->occ);
            if (!s->occ)
                st = EPM_ERR_NOMEM;
        }
    }
    epm_free(fill);
    return st;
}

static epm_status rs_init(rs *s, const epm_trace *t, epm_placement *p, const epm_plan_opts *o, int slots, int folds,
                          double deadline)
{
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->folds_asked = folds;
    s->t = t;
    s->p = p;
    s->c = &p->cluster;
    s->L = p->layers;
    s->E = p->experts;
    s->K = epm_trace_k(t);
    s->R = p->ranks;
    s->S = slots;
    s->T = epm_trace_tokens(t);
    s->follow = o->mode == EPM_MODE_FOLLOW;
    s->hb = (int64_t)o->hidden * 2;
    const int64_t kvb = (int64_t)(o->kv_dim > 0 ? o->kv_dim : o->hidden / 2) * 2;
    s->bw = o->balance_weight;
    s->tw = o->traffic_weight;
    s->denom = (double)s->hb * s->R;
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        s->cost[k] = epm_cluster_link_cost(s->c, (epm_link)k);
    s->rho = s->cost[EPM_LINK_INTER];
    s->kv_ratio = s->hb > 0 ? (double)kvb / (double)s->hb : 0;
    s->gpn = s->c->gpus_per_node;
    {
        /* the folds' sums, their terms and their undo copies take at most 128 MiB together */
        const double per_fold = 96.0 * s->R * s->L + 80.0 * s->R + 28.0 * (s->L + 1);
        const double cap = (double)(128 << 20) / per_fold;
        EPM_CHECK(epm_plan_folds(t, folds, cap < 1 ? 1 : cap > MAX_FOLDS ? MAX_FOLDS : (int)cap, &s->fold, &s->F));
    }
    const size_t T = (size_t)s->T, L = (size_t)s->L, R = (size_t)s->R, LR = L * R;
    const size_t Tn = T ? T : 1;
    s->home = epm_malloc(Tn * sizeof *s->home);
    if (s->follow)
        s->src = epm_malloc((L + 1) * Tn * sizeof *s->src);
    s->load = epm_calloc(LR, sizeof *s->load);
    s->bytes = epm_calloc(L * EPM_LINK_COUNT, sizeof *s->bytes);
    s->maxl = epm_calloc(L, sizeof *s->maxl);
    s->fx = epm_calloc(LR * (size_t)s->F * 6, sizeof *s->fx);
    s->gx = epm_calloc(R * (size_t)s->F * 4, sizeof *s->gx);
    const size_t ncell = (L + 1) * (size_t)s->F;
    s->term = epm_calloc(ncell, sizeof *s->term);
    s->mark = epm_calloc(ncell, sizeof *s->mark);
    s->cells = epm_malloc(ncell * sizeof *s->cells);
    s->cell_save = epm_malloc(ncell * 6 * R * sizeof *s->cell_save);
    s->term_save = epm_malloc(ncell * sizeof *s->term_save);
    s->model = epm_calloc(L, sizeof *s->model);
    s->save_model = epm_malloc(L * sizeof *s->save_model);
    s->kv_of = epm_calloc(R * EPM_LINK_COUNT, sizeof *s->kv_of);
    s->held = epm_malloc(LR * (size_t)slots * sizeof *s->held);
    s->aff = epm_malloc(Tn * sizeof *s->aff);
    s->cur = epm_malloc(Tn * sizeof *s->cur);
    s->cur_src = epm_malloc(Tn * sizeof *s->cur_src);
    s->nxt = epm_malloc(Tn * sizeof *s->nxt);
    s->nxt_src = epm_malloc(Tn * sizeof *s->nxt_src);
    s->touched = epm_malloc(L * sizeof *s->touched);
    s->is_touched = epm_calloc(L, 1);
    s->save_load = epm_malloc(LR * sizeof *s->save_load);
    s->save_bytes = epm_malloc(L * EPM_LINK_COUNT * sizeof *s->save_bytes);
    s->save_max = epm_malloc(L * sizeof *s->save_max);
    s->dst = epm_malloc((size_t)s->K * sizeof *s->dst);
    s->distinct = epm_malloc((size_t)s->K * sizeof *s->distinct);
    s->stamp = epm_calloc(Tn, sizeof *s->stamp);
    if (!s->home || (s->follow && !s->src) || !s->load || !s->bytes || !s->maxl || !s->kv_of || !s->held ||
        !s->aff || !s->cur || !s->cur_src || !s->nxt || !s->nxt_src || !s->touched || !s->is_touched ||
        !s->save_load || !s->save_bytes || !s->save_max || !s->dst || !s->distinct || !s->fx ||
        !s->model || !s->save_model || !s->gx || !s->term || !s->mark || !s->cells || !s->cell_save ||
        !s->term_save || !s->stamp)
        return EPM_ERR_NOMEM;
    if (epm_now() >= deadline)
        return epm_fail(EPM_ERR_TIMEOUT, "replica search: no time left for its setup");
    EPM_CHECK(build_occ(s));
    for (size_t i = 0; i < T; i++)
        s->home[i] = (int32_t)(epm_trace_seq_of(t, (int64_t)i) % s->R);
    for (int a = 0; a < s->R; a++)
        for (int q = 0; q < s->R; q++)
            if (q != a)
                s->kv_of[(size_t)a * EPM_LINK_COUNT + epm_cluster_link(s->c, a, q)] += kvb;
    for (int l = 0; l < s->L; l++)
        for (int r = 0; r < s->R; r++) {
            int *h = s->held + ((size_t)l * R + (size_t)r) * (size_t)slots, n = 0;
            for (int e = 0; e < s->E; e++) /* (at most `slots`: the entry validated p) */
                if (epm_placement_has(p, l, e, r))
                    h[n++] = e;
        }
    if (s->follow)
        for (size_t i = 0; i < T; i++)
            s->src[i] = s->home[i];
    for (int l = 0; l < s->L; l++) {
        if (epm_now() >= deadline) /* (its setup is L passes over the tokens: a long trace's take seconds) */
            return epm_fail(EPM_ERR_TIMEOUT, "replica search: the time limit came during its setup (layer %d of %d)",
                            l, s->L);
        for (size_t i = 0; i < T; i++) {
            int comb = tok_layer(s, l, (int64_t)i, srcof(s, l, (int64_t)i), 1);
            if (s->follow)
                s->src[((size_t)l + 1) * T + i] = comb;
        }
        for (size_t f = 0; f < (size_t)s->F; f++)
            cell_term(s, (size_t)l * (size_t)s->F + f);
        layer_max(s, l);
    }
    if (s->follow)
        for (size_t i = 0; i < T; i++)
            gather_add(s, (int64_t)i, s->src[L * T + i], 1);
    for (size_t f = 0; f < (size_t)s->F; f++)
        cell_term(s, L * (size_t)s->F + f);
    gather_model(s);
    return EPM_OK;
}

static void touch(rs *s, int l)
{
    if (s->is_touched[l])
        return;
    s->is_touched[l] = 1;
    s->touched[s->ntouched++] = l;
    memcpy(s->save_load + (size_t)l * (size_t)s->R, s->load + (size_t)l * (size_t)s->R,
           (size_t)s->R * sizeof *s->load);
    memcpy(s->save_bytes + (size_t)l * EPM_LINK_COUNT, lb(s, l), EPM_LINK_COUNT * sizeof *s->bytes);
    s->save_max[l] = s->maxl[l];
    s->save_model[l] = s->model[l];
}

static epm_status set_src(rs *s, int l, int64_t i, int32_t v)
{
    size_t idx = (size_t)l * (size_t)s->T + (size_t)i;
    if (s->nlog == s->cap_log) {
        int64_t cap = s->cap_log ? 2 * s->cap_log : 1024;
        int64_t *ni = epm_realloc(s->log_idx, (size_t)cap * sizeof *ni);
        if (!ni)
            return EPM_ERR_NOMEM;
        s->log_idx = ni;
        int32_t *no = epm_realloc(s->log_old, (size_t)cap * sizeof *no);
        if (!no)
            return EPM_ERR_NOMEM;
        s->log_old = no;
        s->cap_log = cap;
    }
    s->log_idx[s->nlog] = (int64_t)idx;
    s->log_old[s->nlog++] = s->src[idx];
    s->src[idx] = v;
    return EPM_OK;
}

/* A placement change at one layer: expert a leaves rank ra (ra < 0: none)
 * and expert b arrives on rank rb (rb < 0: none); a swap is two. */
typedef struct {
    int l, n;
    int e[2], from[2], to[2];
} change;

static void held_replace(rs *s, int l, int r, int old, int now)
{
    int *h = s->held + ((size_t)l * (size_t)s->R + (size_t)r) * (size_t)s->S;
    int n = epm_placement_rank_count(s->p, l, r);
    for (int j = 0; j < n; j++)
        if (h[j] == old) {
            if (now >= 0) {
                h[j] = now;
            } else {
                h[j] = h[n - 1];
                h[n - 1] = -1;
            }
            return;
        }
    if (old < 0 && now >= 0)
        h[n] = now;
}

/* Applies (dir 1) or reverts (dir -1) c on the placement and on held:
 * removals first, so that a full rank has room for what arrives. */
static void apply(rs *s, const change *c, int dir)
{
    for (int u = 0; u < c->n; u++) {
        int from = dir > 0 ? c->from[u] : c->to[u];
        if (from >= 0) {
            held_replace(s, c->l, from, c->e[u], -1);
            epm_placement_remove(s->p, c->l, c->e[u], from);
        }
    }
    for (int u = 0; u < c->n; u++) {
        int to = dir > 0 ? c->to[u] : c->from[u];
        if (to >= 0) {
            held_replace(s, c->l, to, -1, c->e[u]);
            (void)epm_placement_add(s->p, c->l, c->e[u], to); /* (checked by the proposer: not there yet) */
        }
    }
}

static void undo(rs *s, const change *c)
{
    s->logging = 0; /* (try_change may have stopped short) */
    apply(s, c, -1);
    for (int64_t u = s->nlog - 1; u >= 0; u--)
        s->src[s->log_idx[u]] = s->log_old[u];
    for (int u = 0; u < s->ntouched; u++) {
        int l = s->touched[u];
        memcpy(s->load + (size_t)l * (size_t)s->R, s->save_load + (size_t)l * (size_t)s->R,
               (size_t)s->R * sizeof *s->load);
        memcpy(lb(s, l), s->save_bytes + (size_t)l * EPM_LINK_COUNT, EPM_LINK_COUNT * sizeof *s->bytes);
        s->maxl[l] = s->save_max[l];
        s->model[l] = s->save_model[l];
    }
    for (int64_t u = 0; u < s->ncells; u++) {
        size_t n, c = (size_t)s->cells[u];
        int64_t *v = cell_sums(s, c, &n);
        memcpy(v, s->cell_save + (size_t)u * 6 * (size_t)s->R, n * sizeof *v);
        s->term[c] = s->term_save[u];
    }
    memcpy(s->gather, s->save_gather, sizeof s->gather);
    s->gmodel = s->save_gmodel;
}

/* Applies c and updates every sum it changes; returns the new objective. */
static epm_status try_change(rs *s, const change *c, double *obj, double *model)
{
    const size_t T = (size_t)s->T;
    const int l = c->l;
    for (int u = 0; u < s->ntouched; u++)
        s->is_touched[s->touched[u]] = 0;
    s->ntouched = 0;
    s->nlog = 0;
    memcpy(s->save_gather, s->gather, sizeof s->gather);
    s->save_gmodel = s->gmodel;
    s->gather_dirty = 0;
    s->ncells = 0;
    s->logging = 1;
    if (++s->mepoch == 0) {
        memset(s->mark, 0, ((size_t)s->L + 1) * (size_t)s->F * sizeof *s->mark);
        s->mepoch = 1;
    }
    if (++s->epoch == 0) {
        memset(s->stamp, 0, T * sizeof *s->stamp);
        s->epoch = 1;
    }
    touch(s, l);
    int64_t n = 0;
    for (int u = 0; u < c->n; u++) {
        size_t le = (size_t)l * (size_t)s->E + (size_t)c->e[u];
        for (int64_t q = s->occ_start[le]; q < s->occ_start[le + 1]; q++) {
            int32_t i = s->occ[q];
            if (s->stamp[i] != s->epoch) {
                s->stamp[i] = s->epoch;
                s->aff[n++] = i;
            }
        }
    }
    for (int64_t q = 0; q < n; q++)
        tok_layer(s, l, s->aff[q], srcof(s, l, s->aff[q]), -1);
    apply(s, c, 1);
    int64_t nc = 0;
    for (int64_t q = 0; q < n; q++) {
        int32_t i = s->aff[q];
        int comb = tok_layer(s, l, i, srcof(s, l, i), 1);
        if (s->follow && comb != s->src[((size_t)l + 1) * T + (size_t)i]) {
            s->cur[nc] = i;
            s->cur_src[nc++] = comb;
        }
    }
    /* follow: the tokens whose rank changed, layer after layer */
    for (int l2 = l + 1; nc > 0; l2++) {
        if (l2 == s->L) {
            for (int64_t q = 0; q < nc; q++) {
                int32_t i = s->cur[q];
                gather_add(s, i, s->src[(size_t)l2 * T + (size_t)i], -1);
                EPM_CHECK(set_src(s, l2, i, s->cur_src[q]));
                gather_add(s, i, s->cur_src[q], 1);
            }
            break;
        }
        touch(s, l2);
        int64_t nn = 0;
        for (int64_t q = 0; q < nc; q++) {
            int32_t i = s->cur[q];
            tok_layer(s, l2, i, s->src[(size_t)l2 * T + (size_t)i], -1);
            EPM_CHECK(set_src(s, l2, i, s->cur_src[q]));
            int comb = tok_layer(s, l2, i, s->cur_src[q], 1);
            if (comb != s->src[((size_t)l2 + 1) * T + (size_t)i]) {
                s->nxt[nn] = i;
                s->nxt_src[nn++] = comb;
            }
        }
        int32_t *sw = s->cur;
        s->cur = s->nxt;
        s->nxt = sw;
        sw = s->cur_src;
        s->cur_src = s->nxt_src;
        s->nxt_src = sw;
        nc = nn;
    }
    s->logging = 0;
    for (int64_t u = 0; u < s->ncells; u++)
        cell_term(s, (size_t)s->cells[u]);
    for (int u = 0; u < s->ntouched; u++)
        layer_max(s, s->touched[u]);
    if (s->gather_dirty)
        gather_model(s);
    *obj = objective(s);
    *model = model_total(s);
    return EPM_OK;
}

static int held_at(const rs *s, int l, int r, int j)
{
    return s->held[((size_t)l * (size_t)s->R + (size_t)r) * (size_t)s->S + (size_t)j];
}

/* One proposal from the generator; 0 when it is not a valid move. */
static int propose(rs *s, uint64_t *rng, change *c)
{
    const int l = (int)(epm_splitmix64(rng) % (uint64_t)s->L);
    const int r = (int)(epm_splitmix64(rng) % (uint64_t)s->R);
    const int kind = (int)(epm_splitmix64(rng) % 4);
    const int nr = epm_placement_rank_count(s->p, l, r);
    c->l = l;
    if (kind == 3) { /* fill a free slot of r */
        if (nr >= s->S)
            return 0;
        int b = (int)(epm_splitmix64(rng) % (uint64_t)s->E);
        if (epm_placement_has(s->p, l, b, r))
            return 0;
        *c = (change){l, 1, {b, 0}, {-1, 0}, {r, 0}};
        return 1;
    }
    if (nr == 0)
        return 0;
    const int a = held_at(s, l, r, (int)(epm_splitmix64(rng) % (uint64_t)nr));
    if (kind == 2) { /* a copy of a becomes one of b */
        const int *rr;
        if (epm_placement_replicas(s->p, l, a, &rr) < 2)
            return 0;
        int b = (int)(epm_splitmix64(rng) % (uint64_t)s->E);
        if (epm_placement_has(s->p, l, b, r))
            return 0;
        *c = (change){l, 2, {a, b}, {r, -1}, {-1, r}};
        return 1;
    }
    if (s->R < 2)
        return 0;
    int q = (int)(epm_splitmix64(rng) % (uint64_t)(s->R - 1));
    q += q >= r;
    if (epm_placement_has(s->p, l, a, q))
        return 0;
    int j = (int)(epm_splitmix64(rng) % (uint64_t)s->S);
    int nq = epm_placement_rank_count(s->p, l, q);
    if (j >= nq) { /* q's free slot */
        *c = (change){l, 1, {a, 0}, {r, 0}, {q, 0}};
        return 1;
    }
    int b = held_at(s, l, q, j);
    if (b == a || epm_placement_has(s->p, l, b, r))
        return 0;
    *c = (change){l, 2, {a, b}, {r, q}, {q, r}};
    return 1;
}

int epm_replica_search_test_check;

static int differs(const void *a, const void *b, size_t n) { return memcmp(a, b, n) != 0; }

/* Test hook (epm_replica_search_test_check): every sum of s against those
 * of a fresh setup from its placement. */
static epm_status self_check(rs *s, const char *after)
{
    rs f;
    epm_status st = rs_init(&f, s->t, s->p, &s->o, s->S, s->folds_asked, INFINITY);
    const size_t T = (size_t)s->T, L = (size_t)s->L, R = (size_t)s->R, F = (size_t)s->F;
    const char *what = NULL;
    if (st != EPM_OK)
        what = "a fresh setup";
    else if (differs(f.load, s->load, L * R * sizeof *s->load) || differs(f.maxl, s->maxl, L * sizeof *s->maxl))
        what = "loads";
    else if (differs(f.bytes, s->bytes, L * EPM_LINK_COUNT * sizeof *s->bytes) ||
             differs(f.gather, s->gather, sizeof s->gather))
        what = "bytes";
    else if (differs(f.fx, s->fx, L * F * 6 * R * sizeof *s->fx) || differs(f.gx, s->gx, F * 4 * R * sizeof *s->gx) ||
             differs(f.model, s->model, L * sizeof *s->model) || f.gmodel != s->gmodel ||
             differs(f.term, s->term, (L + 1) * F * sizeof *s->term))
        what = "the model's sums";
    else if (s->follow && differs(f.src, s->src, (L + 1) * (T ? T : 1) * sizeof *s->src))
        what = "token positions";
    else if (objective(&f) != objective(s))
        what = "the objective";
    for (size_t lr = 0; !what && st == EPM_OK && lr < L * R; lr++) {
        int n = epm_placement_rank_count(s->p, (int)(lr / R), (int)(lr % R));
        for (int j = 0; j < n && !what; j++) {
            int e = s->held[lr * (size_t)s->S + (size_t)j], found = 0;
            for (int u = 0; u < n; u++)
                found |= f.held[lr * (size_t)s->S + (size_t)u] == e;
            if (!found)
                what = "the slots held";
        }
    }
    rs_free(&f);
    if (what)
        return epm_fail(EPM_ERR_INTERNAL, "replica search: after %s, %s differ from a fresh count", after, what);
    return EPM_OK;
}

static epm_status check_entry(const epm_trace *t, const epm_placement *p, int slots, int folds)
{
    if (epm_trace_layers(t) != p->layers || epm_trace_experts(t) > p->experts)
        return epm_fail(EPM_ERR_MISMATCH, "replica search: the trace (%d layers, %d experts) does not fit the "
                        "placement (%d, %d)", epm_trace_layers(t), epm_trace_experts(t), p->layers, p->experts);
    if (slots < 1 || folds < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "replica search: slots = %d, folds = %d", slots, folds);
    return epm_placement_validate(p, slots);
}

epm_status epm_plan_replica_model(const epm_trace *t, const epm_plan_opts *o, int slots, int folds,
                                  epm_placement *p, double *model)
{
    EPM_CHECK(check_entry(t, p, slots, folds));
    epm_plan_opts resolved;
    epm_plan_resolve(o, &p->cluster, &resolved);
    rs s;
    epm_status st = rs_init(&s, t, p, &resolved, slots, folds, INFINITY);
    if (st == EPM_OK)
        *model = model_total(&s);
    rs_free(&s);
    return st;
}

epm_status epm_plan_replica_search(const epm_trace *t, const epm_plan_opts *o, int slots, int folds,
                                   int64_t max_moves, double deadline, epm_placement *p, double *obj, int64_t *kept)
{
    *kept = 0;
    EPM_CHECK(check_entry(t, p, slots, folds));
    epm_plan_opts resolved;
    epm_plan_resolve(o, &p->cluster, &resolved);
    rs s;
    epm_status st = rs_init(&s, t, p, &resolved, slots, folds, deadline);
    if (st != EPM_OK) {
        rs_free(&s);
        return st;
    }
    /* a move is kept where it lowers the model of epm_eval's time and leaves epm_plan_objective at or
     * below its value at the start, which is what the planner reports */
    const double start = objective(&s);
    double cur = start, cur_model = model_total(&s);
    uint64_t rng = 0x5eed5eedULL;
    for (int64_t m = 0; m < max_moves; m++) {
        if (epm_now() >= deadline) /* (a follow-mode move can take milliseconds) */
            break;
        change c;
        if (!propose(&s, &rng, &c))
            continue;
        double v, vm;
        if ((st = try_change(&s, &c, &v, &vm)) != EPM_OK) {
            undo(&s, &c);
            break;
        }
        if (vm < cur_model - 1e-12 * fabs(cur_model) && v <= start) {
            cur = v;
            cur_model = vm;
            ++*kept;
        } else {
            undo(&s, &c);
        }
        if (epm_replica_search_test_check && (st = self_check(&s, "a move")) != EPM_OK)
            break;
    }
    *obj = cur;
    rs_free(&s);
    return st;
}
