/* epm_plan_ilp: the GLPK MIP planner and the decomposition that carries it to
 * DeepSeek shapes.
 *
 * 1. Score every heuristic with epm_plan_objective; the best is the warm
 *    start and the fallback.
 * 2. Build the exact MIP over single-copy placements (ilp_model.c) when it
 *    fits: Mixtral-like shapes (one expert a rank) and small instances. GLPK
 *    solves it from the warm start within the time limit and gap; its bound
 *    is a bound on epm_plan_objective over single-copy placements.
 * 3. Otherwise (or when GLPK stops short) improve the incumbent by the
 *    exact-delta local search of ilp_search.c: the objective couples layers
 *    only through consecutive pairs of a token's path, so moves inside one
 *    layer are scored from the tokens they touch. The search spends the
 *    incumbent's slack on what carries over to the tokens to come: it
 *    minimises a sample-average (ILP_FOLDS folds of the planning tokens,
 *    or the trace's passes where it has them: plan_folds.c) estimate of
 *    epm_eval's modelled time -- the busiest rank's compute and
 *    communication, home-agnostic in home mode -- while epm_plan_objective
 *    may not rise above the incumbent's. The MIP's proven optima are left
 *    as they are: they already are the best on the planning trace.
 * 4. With spare slots, add replicas greedily where epm_plan_objective drops.
 * The reported bound is the larger of the MIP's and a per-layer bound valid
 * for every placement (ilp_cost.c), so the gap is never flattering.
 *
 * 5. With spare slots, the search over placements with copies
 *    (replica_search.c) from the better of step 4's and the best heuristic,
 *    in the second half of the time limit.
 *
 * Determinism: the searches are deterministic; the time limit can cut them
 * short at a point that depends on the machine's speed. GLPK switches from
 * pseudocost to most-fractional branching at a quarter of its share of the
 * time (ilp_glpk.c), so its path depends on the clock too: a MIP that ends
 * by proof gives the same objective on any machine, not always the same
 * placement among equal ones. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ilp_internal.h"

/* Larger MIPs are not worth handing to GLPK on two cores. */
enum { ILP_MAX_COLS = 20000 };
/* Folds of the search's sample-average model. On the bench's Qwen shape
 * (home mode, seeds 1-2) held-out time improves from 1 fold (the planning
 * sample's own stragglers, which overfit) through 2 and 4 to 8, and 16 is
 * no better than 8 (bench/README.md). */
enum { ILP_FOLDS = 8 };
/* The replica search takes the same folds where ranks hold several experts
 * each (E >= 2R) and the planning sample's own maxima (1 fold) where they
 * hold one or two: held-out time against eplb's, bench plan --slots 5
 * (home / follow), 1 fold against 8: Qwen seed 1 0.922 / 0.867 against
 * 0.908 / 0.851, seed 2 0.906 / 0.874 against 0.901 / 0.870, DeepSeek-V3
 * 0.974 / 0.868 against 0.940 / 0.865; Mixtral (8 experts on 8 ranks,
 * --slots 2) 1.002 / 0.924 against 1.009 / 0.959. A rank of one or two
 * experts gains or loses load a whole expert's share at a time, and a
 * fold's busiest rank is then no better a forecast than the whole
 * sample's. (Measured on those four traces, without passes; a rule, not a
 * law.) A trace with passes is folded by them in both searches whatever
 * the folds asked (but split where there are fewer), as epm_eval times it
 * pass by pass: held-out time against eplb's at 64-token passes, Qwen
 * 0.974 / 0.958 with token folds against 0.884 / 0.947, Mixtral 0.991 /
 * 0.970 against 0.977 / 0.955 (bench/README.md). */

static void say(const epm_plan_opts *o, const char *msg)
{
    if (o->progress)
        o->progress(o->progress_user, msg);
}

static epm_status best_heuristic(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                                 epm_placement **best, double *best_obj)
{
    static const epm_method order[] = {EPM_METHOD_CONTIGUOUS, EPM_METHOD_ROUND_ROBIN, EPM_METHOD_GREEDY,
                                       EPM_METHOD_EPLB};
    *best = NULL;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        epm_placement *p = NULL;
        double obj;
        epm_status st = epm_plan_heuristic(order[i], t, c, o, &p);
        if (st == EPM_OK)
            st = epm_plan_objective(t, p, o, &obj);
        if (st != EPM_OK) {
            epm_placement_destroy(p);
            epm_placement_destroy(*best);
            *best = NULL;
            return st;
        }
        if (!*best || obj < *best_obj) {
            epm_placement_destroy(*best);
            *best = p;
            *best_obj = obj;
        } else {
            epm_placement_destroy(p);
        }
    }
    return EPM_OK;
}

/* The best single-copy start: each heuristic with its replicas dropped. */
static epm_status best_start(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, const epm_ilp_ctx *x,
                             int *rank_of, int *tmp)
{
    static const epm_method order[] = {EPM_METHOD_CONTIGUOUS, EPM_METHOD_ROUND_ROBIN, EPM_METHOD_GREEDY,
                                       EPM_METHOD_EPLB};
    double best = INFINITY;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        epm_placement *p = NULL;
        EPM_CHECK(epm_plan_heuristic(order[i], t, c, o, &p));
        epm_ilp_from_placement(x, p, tmp);
        epm_placement_destroy(p);
        double v = epm_ilp_total(x, tmp);
        if (i == 0 || v < best) { /* (the first whatever its total: an infinite one left rank_of unset) */
            best = v;
            memcpy(rank_of, tmp, (size_t)x->L * (size_t)x->E * sizeof *rank_of);
        }
    }
    return EPM_OK;
}

static double rank_load_of(const epm_placement *p, const epm_ilp_ctx *x, int l, int r)
{
    double s = 0.0;
    for (int e = 0; e < x->E; e++)
        if (epm_placement_has(p, l, e, r)) {
            const int *rr;
            int n = epm_placement_replicas(p, l, e, &rr);
            s += (double)x->load[(size_t)l * (size_t)x->E + (size_t)e] / (double)n;
        }
    return s;
}

/* Spare slots: replicate hot experts onto the least-loaded rank with room,
 * keeping each replica only when the exact objective drops. */
static epm_status add_replicas(const epm_trace *t, const epm_plan_opts *o, const epm_ilp_ctx *x, double deadline,
                               epm_placement **pp, double *obj)
{
    epm_placement *p = *pp;
    char *tried = epm_malloc((size_t)x->E);
    if (!tried)
        return EPM_ERR_NOMEM;
    epm_status st = EPM_OK;
    for (int l = 0; l < x->L && epm_now() < deadline; l++) {
        memset(tried, 0, (size_t)x->E);
        for (;;) {
            int best_r = -1;
            double best_load = INFINITY;
            for (int r = 0; r < x->R; r++)
                if (epm_placement_rank_count(p, l, r) < x->S) {
                    double ld = rank_load_of(p, x, l, r);
                    if (ld < best_load) {
                        best_load = ld;
                        best_r = r;
                    }
                }
            if (best_r < 0)
                break;
            int best_e = -1;
            double hot = -1.0;
            for (int e = 0; e < x->E; e++) {
                if (tried[e] || epm_placement_has(p, l, e, best_r))
                    continue;
                const int *rr;
                int n = epm_placement_replicas(p, l, e, &rr);
                double v = (double)x->load[(size_t)l * (size_t)x->E + (size_t)e] / (double)n;
                if (v > hot) {
                    hot = v;
                    best_e = e;
                }
            }
            if (best_e < 0 || epm_now() >= deadline)
                break;
            tried[best_e] = 1;
            epm_placement *q = NULL;
            double v;
            EPM_CHECK_GOTO(epm_placement_clone(p, &q), st, out);
            st = epm_placement_add(q, l, best_e, best_r);
            if (st == EPM_OK)
                st = epm_plan_objective(t, q, o, &v);
            if (st != EPM_OK) {
                epm_placement_destroy(q);
                goto out;
            }
            if (v < *obj - 1e-9 * fabs(*obj)) {
                epm_placement_destroy(p);
                p = q;
                *obj = v;
            } else {
                epm_placement_destroy(q);
            }
        }
    }
out:
    epm_free(tried);
    *pp = p;
    return st;
}

/* The replica search's index holds every (layer, token, choice) and, in
 * follow mode, every (layer, token)'s rank: past this, the planner keeps
 * its copies as they are. */
static int rs_too_large(const epm_trace *t)
{
    double n = (double)epm_trace_layers(t) * (double)epm_trace_tokens(t);
    return n * (epm_trace_k(t) + 1) > (double)(1 << 28);
}

static void finish_info(epm_placement *p, const epm_plan_opts *o, epm_plan_quality q, double obj, double bound,
                        double t0, const char *note)
{
    epm_placement_info info = *epm_placement_get_info(p);
    snprintf(info.method, sizeof info.method, "%s", epm_method_name(EPM_METHOD_ILP));
    info.mode = o->mode;
    info.quality = q;
    info.objective = obj;
    if (bound > obj)
        bound = obj; /* rounding only: the bound is below every placement */
    info.bound = bound;
    info.gap = obj != 0.0 ? (obj - bound) / fabs(obj) : 0.0;
    if (info.gap < 0)
        info.gap = 0.0;
    info.solve_seconds = epm_now() - t0;
    snprintf(info.note, sizeof info.note, "%s", note);
    epm_placement_set_info(p, &info);
}

epm_status epm_plan_ilp(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, epm_placement **out)
{
    if (!t || !c || !o || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "ilp: NULL argument");
    if (!(o->mip_gap >= 0 && o->mip_gap < 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "ilp: option 'mip_gap' = %g is outside [0, 1)", o->mip_gap);
    if (isnan(o->time_limit_s))
        return epm_fail(EPM_ERR_INVALID_ARG, "ilp: option 'time_limit_s' is NaN");
    if (epm_trace_k(t) > 256)
        return epm_fail(EPM_ERR_UNSUPPORTED, "ilp: trace k = %d exceeds 256 experts per token", epm_trace_k(t));
    epm_plan_opts resolved;
    epm_plan_resolve(o, c, &resolved);
    o = &resolved;
    double t0 = epm_now();
    double deadline = t0 + (o->time_limit_s > 0 ? o->time_limit_s : 0.0);
    int slots;
    EPM_CHECK(epm_plan_slots(t, c, o, &slots));
    int R = epm_cluster_ranks(c), E = epm_trace_experts(t);
    int spares = R * slots > E;
    /* with spare slots the replica search needs its share: the single-copy stages end at half the limit */
    const double deadline1 = spares ? t0 + 0.5 * (deadline - t0) : deadline;

    epm_placement *heur = NULL, *res = NULL;
    double heur_obj = INFINITY;
    EPM_CHECK(best_heuristic(t, c, o, &heur, &heur_obj));

    epm_ilp_ctx x;
    epm_status st = epm_ilp_ctx_init(&x, t, c, o, slots);
    if (st != EPM_OK) {
        epm_placement_destroy(heur);
        return st;
    }
    size_t LE = (size_t)x.L * (size_t)x.E;
    int *rank_of = epm_malloc((LE ? LE : 1) * sizeof *rank_of);
    int *tmp = epm_malloc((LE ? LE : 1) * sizeof *tmp);
    int *col_x = epm_malloc((LE * (size_t)R + 1) * sizeof *col_x);
    epm_mip m;
    epm_mip_init(&m);
    epm_mip_result mr = {0};
    double *start = NULL;
    if (!rank_of || !tmp || !col_x) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    EPM_CHECK_GOTO(best_start(t, c, o, &x, rank_of, tmp), st, out);
    double cur = epm_ilp_total(&x, rank_of);
    double bound;
    EPM_CHECK_GOTO(epm_ilp_bound(&x, spares, &bound), st, out);
    int mip_found = 0, mip_optimal = 0, searched = 0, decomposed = 0, filled_won = 0;
    char why[200] = "";

    if (epm_ilp_decompose_applies(&x) && o->time_limit_s > 0) {
        double lb;
        EPM_CHECK_GOTO(epm_ilp_decompose(&x, deadline1, tmp, &lb), st, out);
        double v = epm_ilp_total(&x, tmp);
        if (v <= cur) {
            cur = v;
            memcpy(rank_of, tmp, LE * sizeof *rank_of);
        }
        if (!spares && lb > bound)
            bound = lb;
        /* the chain's only slack is where layer 0 and the last layer sit
         * relative to the homes: let the search trade a little of it */
        if (cur - bound > o->mip_gap * fabs(cur)) {
            EPM_CHECK_GOTO(epm_ilp_search(&x, rank_of, (int64_t)8 * x.L * x.E * 4, deadline1, 0, o->progress,
                                          o->progress_user, &v),
                           st, out);
            cur = v;
        }
        if (cur - bound <= o->mip_gap * fabs(cur)) {
            decomposed = 1;
            mip_found = mip_optimal = 1;
            snprintf(why, sizeof why, "proven by the layer-pair decomposition (assignment bounds)");
        }
    }

    if (decomposed) {
        /* nothing left for GLPK to prove */
    } else if (!(o->time_limit_s > 0)) {
        snprintf(why, sizeof why, "time limit %g s leaves GLPK no time", o->time_limit_s);
    } else {
        epm_status bs = epm_ilp_build(&x, ILP_MAX_COLS, &m, col_x);
        if (bs == EPM_ERR_UNSUPPORTED) {
            snprintf(why, sizeof why, "one MIP too large (%s)", epm_last_error());
            epm_clear_error();
        } else if (bs != EPM_OK) {
            st = bs;
            goto out;
        } else {
            char msg[160];
            snprintf(msg, sizeof msg, "ilp: MIP with %d columns, %d rows, %zu nonzeros", m.ncols, m.nrows, m.nnz);
            say(o, msg);
            start = epm_calloc((size_t)m.ncols, sizeof *start);
            mr.x = epm_malloc((size_t)m.ncols * sizeof *mr.x);
            if (!start || !mr.x) {
                st = EPM_ERR_NOMEM;
                goto out;
            }
            epm_ilp_start(&x, col_x, rank_of, start);
            EPM_CHECK_GOTO(epm_mip_complete(&m, start), st, out);
            /* keep time for the search in case GLPK cannot even finish the
             * root LP; the decomposed case has its incumbent already */
            double left = deadline1 - epm_now();
            double mip_time = epm_ilp_decompose_applies(&x) ? left : 0.6 * left;
            epm_status ss = epm_mip_solve(&m, start, mip_time, o->mip_gap, o->progress, o->progress_user, &mr);
            if (ss == EPM_ERR_NOMEM) {
                st = ss;
                goto out;
            }
            if (ss != EPM_OK) {
                snprintf(why, sizeof why, "%s", epm_last_error());
                epm_clear_error();
            } else if (!mr.found) {
                snprintf(why, sizeof why, "GLPK found no solution: %s", mr.note);
            } else {
                mip_found = 1;
                mip_optimal = mr.optimal;
                epm_ilp_read(&x, col_x, mr.x, tmp);
                double v = epm_ilp_total(&x, tmp);
                if (v <= cur) {
                    cur = v;
                    memcpy(rank_of, tmp, LE * sizeof *rank_of);
                }
                if (!spares && isfinite(mr.bound) && mr.bound > bound)
                    bound = mr.bound;
                snprintf(why, sizeof why, "MIP %d cols: %s", m.ncols, mr.note);
            }
        }
    }

    /* polish what the MIP did not prove (or replace it where it was too big) */
    if (!mip_optimal && epm_now() < deadline1) {
        int64_t budget = (int64_t)40 * (int64_t)x.L * (int64_t)x.E * 4;
        double v;
        memcpy(tmp, rank_of, LE * sizeof *tmp);
        EPM_CHECK_GOTO(epm_ilp_search(&x, rank_of, budget, deadline1, ILP_FOLDS, o->progress, o->progress_user, &v),
                       st, out);
        if (v < cur - 1e-12 * fabs(cur) || memcmp(tmp, rank_of, LE * sizeof *tmp))
            searched = 1;
        cur = v;
    }

    EPM_CHECK_GOTO(epm_ilp_to_placement(&x, rank_of, epm_trace_k(t), &res), st, out);
    double obj;
    EPM_CHECK_GOTO(epm_plan_objective(t, res, o, &obj), st, out);
    if (spares) {
        /* two ways to fill the spare slots: replicas by load per replica as eplb counts them (the
         * single copies where the ILP put them), and the greedy replicas that lower the objective;
         * the better is kept */
        epm_placement *filled = NULL;
        double fobj = INFINITY;
        EPM_CHECK_GOTO(epm_plan_fill_replicas(res, x.load, x.S, &filled), st, out);
        st = epm_plan_objective(t, filled, o, &fobj);
        if (st == EPM_OK && epm_now() < deadline1)
            st = add_replicas(t, o, &x, deadline1, &res, &obj);
        if (st == EPM_OK && fobj < obj) {
            epm_placement_destroy(res);
            res = filled, obj = fobj, filled = NULL;
            filled_won = 1;
        }
        epm_placement_destroy(filled);
        if (st != EPM_OK)
            goto out;
    }

    if (spares) {
        /* every slot a copy, as SGLang and vLLM deploy them (greedy replicas, kept only where the
         * objective drops, and a heuristic without replicas leave some empty): then the search, whose
         * moves keep every slot filled */
        int added = 0;
        EPM_CHECK_GOTO(epm_plan_complete_slots(res, x.load, x.S, &added), st, out);
        if (added)
            EPM_CHECK_GOTO(epm_plan_objective(t, res, o, &obj), st, out);
        EPM_CHECK_GOTO(epm_plan_complete_slots(heur, x.load, x.S, &added), st, out);
        if (added)
            EPM_CHECK_GOTO(epm_plan_objective(t, heur, o, &heur_obj), st, out);
    }

    /* copies decided together with where they go: from the better of the two (eplb's packing often
     * wins on balance alone), the search over placements with copies (replica_search.c) */
    int64_t rs_kept = 0;
    int rs_from_heur = 0;
    char rs_why[96] = "";
    if (spares && !(epm_now() < deadline)) {
        snprintf(rs_why, sizeof rs_why, "no time left for the replica search");
    } else if (spares) {
        if (rs_too_large(t)) {
            snprintf(rs_why, sizeof rs_why, "no replica search (%d layers x %lld tokens x k %d is past its index)",
                     x.L, (long long)x.T, x.K);
        } else {
            rs_from_heur = heur_obj < obj;
            epm_placement *s = NULL;
            double v;
            EPM_CHECK_GOTO(epm_placement_clone(rs_from_heur ? heur : res, &s), st, out);
            const int folds = x.E >= 2 * x.R ? ILP_FOLDS : 1;
            st = epm_plan_replica_search(t, o, x.S, folds, (int64_t)200 * x.L * x.R * x.S, deadline, s, &v, &rs_kept);
            if (st == EPM_ERR_TIMEOUT) { /* (its setup outlasted the limit: the copies stay as they are) */
                snprintf(rs_why, sizeof rs_why, "%.95s", epm_last_error());
                epm_clear_error();
                st = EPM_OK;
            } else if (st != EPM_OK) {
                epm_placement_destroy(s);
                goto out;
            }
            if (rs_kept > 0) { /* (its objective is at most the start's) */
                epm_placement_destroy(res);
                res = s;
                obj = v;
            } else {
                epm_placement_destroy(s);
            }
            char msg[160];
            snprintf(msg, sizeof msg, "ilp: replica search kept %lld moves%s", (long long)rs_kept,
                     epm_trace_pass_ids(t) ? " (its model pass by pass, as the trace's)" : "");
            say(o, msg);
        }
    }

    epm_plan_quality q;
    char note[256];
    if (obj > heur_obj || (!mip_found && !searched && !rs_kept && obj >= heur_obj)) {
        /* nothing beat the best heuristic: return it, saying why */
        epm_placement_destroy(res);
        res = heur;
        heur = NULL;
        obj = heur_obj;
        q = mip_optimal && !spares ? EPM_QUALITY_OPTIMAL /* it was optimal already */
            : mip_found            ? EPM_QUALITY_FEASIBLE
                                   : EPM_QUALITY_FALLBACK;
        snprintf(note, sizeof note, "%s%.100s%s%.70s; returned the best heuristic (%.31s)",
                 q == EPM_QUALITY_FALLBACK ? "fallback: " : "", why[0] ? why : "no improvement",
                 rs_why[0] ? "; " : "", rs_why, epm_placement_get_info(res)->method);
    } else if (rs_kept && rs_from_heur) {
        /* what the single-copy stages found was set aside: say what was kept */
        q = EPM_QUALITY_FEASIBLE;
        snprintf(note, sizeof note, "replica search (busiest-rank time) from the best heuristic (%.31s), past the "
                 "single-copy stages (%.80s); bound covers all placements",
                 epm_placement_get_info(heur)->method, why[0] ? why : "no improvement");
    } else {
        q = mip_optimal && !spares ? EPM_QUALITY_OPTIMAL : EPM_QUALITY_FEASIBLE;
        const char *copies = !spares              ? ""
                             : rs_kept && filled_won ? "; replicas by load per replica, then the replica search"
                             : rs_kept                 ? "; replicas added greedily, then the replica search"
                             : filled_won              ? "; replicas by load per replica"
                                                       : "; replicas added greedily";
        /* what was done after the MIP, whole; why the MIP ended, as much of it as the rest leaves room for */
        char done[232];
        snprintf(done, sizeof done, "%s%s%s%.60s%s",
                 searched ? "; local search (sample-average busiest-rank time, objective kept) improved it" : "",
                 copies, rs_why[0] ? "; " : "", rs_why, spares ? "; bound covers all placements" : "");
        snprintf(note, sizeof note, "%.*s%s", (int)(sizeof note - 1 - strlen(done)), why, done);
    }
    if (q == EPM_QUALITY_OPTIMAL && obj - bound > o->mip_gap * fabs(obj) + 1e-9 * fabs(obj))
        q = EPM_QUALITY_FEASIBLE;
    finish_info(res, o, q, obj, bound, t0, note);
    *out = res;
    res = NULL;
out:
    epm_placement_destroy(heur);
    epm_placement_destroy(res);
    epm_free(rank_of);
    epm_free(tmp);
    epm_free(col_x);
    epm_free(start);
    epm_free(mr.x);
    epm_mip_free(&m);
    epm_ilp_ctx_free(&x);
    return st;
}
