/* A small sparse MIP (0-based) and the one place where it meets GLPK
 * (1-based). GLPK ends the process on misuse or internal failure unless an
 * error hook longjmps out of it; this file installs that hook around every
 * call, silences GLPK's terminal output (keeping its last lines for the
 * error message) and turns a failure into EPM_ERR_SOLVER. */
#include <glpk.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "ilp_internal.h"

int epm_ilp_test_glpk_fault;

void epm_mip_init(epm_mip *m) { memset(m, 0, sizeof *m); }

void epm_mip_free(epm_mip *m)
{
    epm_free(m->obj);
    epm_free(m->lb);
    epm_free(m->ub);
    epm_free(m->integer);
    epm_free(m->pa);
    epm_free(m->pb);
    epm_free(m->row_type);
    epm_free(m->rhs);
    epm_free(m->row_owner);
    epm_free(m->ti);
    epm_free(m->tj);
    epm_free(m->tv);
    memset(m, 0, sizeof *m);
}

static int grow(void **p, size_t elem, size_t n)
{
    void *q = epm_realloc(*p, n * elem);
    if (!q)
        return 0;
    *p = q;
    return 1;
}

int epm_mip_col(epm_mip *m, double lb, double ub, int integer, double obj)
{
    if (m->ncols == m->cap_cols) {
        int n = m->cap_cols ? 2 * m->cap_cols : 1024;
        if (!grow((void **)&m->obj, sizeof *m->obj, (size_t)n) || !grow((void **)&m->lb, sizeof *m->lb, (size_t)n) ||
            !grow((void **)&m->ub, sizeof *m->ub, (size_t)n) ||
            !grow((void **)&m->integer, sizeof *m->integer, (size_t)n) ||
            !grow((void **)&m->pa, sizeof *m->pa, (size_t)n) || !grow((void **)&m->pb, sizeof *m->pb, (size_t)n))
            return -1;
        m->cap_cols = n;
    }
    m->obj[m->ncols] = obj;
    m->lb[m->ncols] = lb;
    m->ub[m->ncols] = ub;
    m->integer[m->ncols] = (char)integer;
    m->pa[m->ncols] = m->pb[m->ncols] = -1;
    return m->ncols++;
}

void epm_mip_col_product(epm_mip *m, int col, int a, int b)
{
    if (col >= 0) {
        m->pa[col] = a;
        m->pb[col] = b;
    }
}

int epm_mip_row(epm_mip *m, int type, double rhs, int owner)
{
    if (m->nrows == m->cap_rows) {
        int n = m->cap_rows ? 2 * m->cap_rows : 1024;
        if (!grow((void **)&m->row_type, sizeof *m->row_type, (size_t)n) ||
            !grow((void **)&m->rhs, sizeof *m->rhs, (size_t)n) ||
            !grow((void **)&m->row_owner, sizeof *m->row_owner, (size_t)n))
            return -1;
        m->cap_rows = n;
    }
    m->row_type[m->nrows] = type;
    m->rhs[m->nrows] = rhs;
    m->row_owner[m->nrows] = owner;
    return m->nrows++;
}

epm_status epm_mip_coef(epm_mip *m, int row, int col, double v)
{
    if (row < 0 || col < 0)
        return EPM_ERR_NOMEM; /* the row or column itself failed to allocate */
    if (m->nnz == m->cap_nnz) {
        size_t n = m->cap_nnz ? 2 * m->cap_nnz : 4096;
        if (!grow((void **)&m->ti, sizeof *m->ti, n) || !grow((void **)&m->tj, sizeof *m->tj, n) ||
            !grow((void **)&m->tv, sizeof *m->tv, n))
            return EPM_ERR_NOMEM;
        m->cap_nnz = n;
    }
    m->ti[m->nnz] = row;
    m->tj[m->nnz] = col;
    m->tv[m->nnz] = v;
    m->nnz++;
    return EPM_OK;
}

double epm_mip_value(const epm_mip *m, const double *x)
{
    double v = m->obj_const;
    for (int j = 0; j < m->ncols; j++)
        v += m->obj[j] * x[j];
    return v;
}

epm_status epm_mip_complete(const epm_mip *m, double *x)
{
    /* rows grouped by owner, owners in creation order: an auxiliary column
     * only refers to columns created before it */
    size_t nc = (size_t)m->ncols, nr = (size_t)m->nrows;
    int *first = epm_malloc((nc + 1) * sizeof *first);
    int *rows = epm_malloc((nr ? nr : 1) * sizeof *rows);
    size_t *rstart = epm_malloc((nr + 1) * sizeof *rstart);
    size_t *ent = epm_malloc((m->nnz ? m->nnz : 1) * sizeof *ent);
    epm_status st = EPM_OK;
    if (!first || !rows || !rstart || !ent) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    memset(first, 0, (nc + 1) * sizeof *first);
    for (size_t i = 0; i < nr; i++)
        if (m->row_owner[i] >= 0)
            first[m->row_owner[i] + 1]++;
    for (size_t j = 0; j < nc; j++)
        first[j + 1] += first[j];
    {
        int *fill = epm_malloc((nc + 1) * sizeof *fill);
        if (!fill) {
            st = EPM_ERR_NOMEM;
            goto out;
        }
        memcpy(fill, first, (nc + 1) * sizeof *fill);
        for (size_t i = 0; i < nr; i++)
            if (m->row_owner[i] >= 0)
                rows[fill[m->row_owner[i]]++] = (int)i;
        epm_free(fill);
    }
    /* entries per row */
    memset(rstart, 0, (nr + 1) * sizeof *rstart);
    for (size_t q = 0; q < m->nnz; q++)
        rstart[m->ti[q] + 1]++;
    for (size_t i = 0; i < nr; i++)
        rstart[i + 1] += rstart[i];
    {
        size_t *fill = epm_malloc((nr + 1) * sizeof *fill);
        if (!fill) {
            st = EPM_ERR_NOMEM;
            goto out;
        }
        memcpy(fill, rstart, (nr + 1) * sizeof *fill);
        for (size_t q = 0; q < m->nnz; q++)
            ent[fill[m->ti[q]]++] = q;
        epm_free(fill);
    }
    for (size_t j = 0; j < nc; j++) {
        if (m->pa[j] >= 0) {
            x[j] = x[m->pa[j]] * x[m->pb[j]];
            continue;
        }
        if (first[j] == first[j + 1])
            continue;
        double lo = m->lb[j], hi = m->ub[j];
        int have_lo = 0, have_hi = 0;
        double best_lo = -INFINITY, best_hi = INFINITY;
        for (int q = first[j]; q < first[j + 1]; q++) {
            int i = rows[q];
            double a = 0.0, rest = 0.0;
            for (size_t e = rstart[i]; e < rstart[i + 1]; e++) {
                size_t z = ent[e];
                if ((size_t)m->tj[z] == j)
                    a += m->tv[z];
                else
                    rest += m->tv[z] * x[m->tj[z]];
            }
            if (a == 0.0)
                continue;
            double v = (m->rhs[i] - rest) / a;
            int type = m->row_type[i];
            int is_upper = (type == EPM_MIP_LE) == (a > 0);
            if (type == EPM_MIP_EQ || !is_upper) {
                have_lo = 1;
                best_lo = v > best_lo ? v : best_lo;
            }
            if (type == EPM_MIP_EQ || is_upper) {
                have_hi = 1;
                best_hi = v < best_hi ? v : best_hi;
            }
        }
        double v;
        if (m->obj[j] > 0 || (m->obj[j] == 0 && have_lo))
            v = have_lo ? best_lo : lo;
        else
            v = have_hi ? best_hi : hi;
        if (v < lo)
            v = lo;
        if (v > hi)
            v = hi;
        x[j] = v;
    }
out:
    epm_free(first);
    epm_free(rows);
    epm_free(rstart);
    epm_free(ent);
    return st;
}

/* ---- GLPK ---- */
typedef struct {
    char text[512];
} term_buf;

static int term_hook(void *info, const char *s)
{
    term_buf *b = info;
    size_t have = strlen(b->text), add = strlen(s);
    if (add >= sizeof b->text) {
        s += add - (sizeof b->text - 1);
        add = sizeof b->text - 1;
    }
    if (have + add >= sizeof b->text) {
        size_t drop = have + add - (sizeof b->text - 1);
        memmove(b->text, b->text + drop, have - drop + 1);
        have -= drop;
    }
    memcpy(b->text + have, s, add + 1);
    return 1; /* never print */
}

static void error_hook(void *info) { longjmp(*(jmp_buf *)info, 1); }

typedef struct {
    const double *start1; /* 1-based */
    int start_given;
    double t_end;
    double bound;
    int have_bound;
    epm_progress_fn progress;
    void *user;
    double t0, last_report;
} cb_info;

static void callback(glp_tree *tree, void *info)
{
    cb_info *c = info;
    int reason = glp_ios_reason(tree);
    if (reason == GLP_IHEUR && c->start1 && !c->start_given) {
        c->start_given = 1;
        glp_ios_heur_sol(tree, c->start1);
    }
    int best = glp_ios_best_node(tree);
    if (best) {
        double b = glp_ios_node_bound(tree, best);
        if (isfinite(b) && fabs(b) < 1e300 && (!c->have_bound || b > c->bound)) {
            c->bound = b;
            c->have_bound = 1;
        }
    }
    double now = epm_now();
    if (reason == GLP_IBRANCH && now - c->t0 > 0.25 * (c->t_end - c->t0)) {
        /* GLPK's pseudocost branching starts each variable's pseudocost by
         * solving LPs, and never looks at the clock while it does: on a
         * 3,000-column model that took 3.5 s of a 0.6 s share. Past a
         * quarter of the share, branch on the most fractional variable. */
        glp_prob *P = glp_ios_get_prob(tree);
        int j_best = 0;
        double frac_best = -1;
        for (int j = 1; j <= glp_get_num_cols(P); j++)
            if (glp_ios_can_branch(tree, j)) {
                double v = glp_get_col_prim(P, j), f = v - floor(v);
                f = f < 0.5 ? f : 1 - f;
                if (f > frac_best) {
                    frac_best = f;
                    j_best = j;
                }
            }
        if (j_best)
            glp_ios_branch_upon(tree, j_best, GLP_NO_BRNCH);
    }
    if (c->progress && now - c->last_report >= 1.0) {
        c->last_report = now;
        glp_prob *P = glp_ios_get_prob(tree);
        char msg[200];
        int st = glp_mip_status(P);
        if (st == GLP_FEAS || st == GLP_OPT)
            snprintf(msg, sizeof msg, "ilp: %.1f s, incumbent %.6g, bound %.6g", now - c->t0, glp_mip_obj_val(P),
                     c->have_bound ? c->bound : NAN);
        else
            snprintf(msg, sizeof msg, "ilp: %.1f s, no incumbent yet, bound %.6g", now - c->t0,
                     c->have_bound ? c->bound : NAN);
        c->progress(c->user, msg);
    }
    if (now >= c->t_end)
        glp_ios_terminate(tree);
}

static int ms_left(double t_end)
{
    double left = (t_end - epm_now()) * 1000.0;
    if (left < 1)
        return 1;
    return left > 2e9 ? 2000000000 : (int)left;
}

/* Everything that calls GLPK, behind guarded() so that a GLPK error (which
 * longjmps out of the library) leaves no live local of ours to clobber. */
typedef struct {
    const epm_mip *m;
    int n;
    int *ia, *ja;
    double *ar, *start1;
    double t0, time_limit_s, mip_gap;
    epm_progress_fn progress;
    void *progress_user;
    epm_mip_result *res;
    double *x;
    glp_prob *P; /* set as soon as it exists, so the error path can tell */
} glpk_run;

static void run_glpk(void *arg)
{
    glpk_run *g = arg;
    const epm_mip *m = g->m;
    int n = g->n;
    epm_mip_result *res = g->res;
    double *x = g->x;
    glp_prob *P = g->P = glp_create_prob();
    glp_set_obj_dir(P, GLP_MIN);
    glp_set_obj_coef(P, 0, m->obj_const);
    if (m->nrows)
        glp_add_rows(P, m->nrows);
    if (n)
        glp_add_cols(P, n);
    for (int i = 0; i < m->nrows; i++) {
        int type = m->row_type[i] == EPM_MIP_LE ? GLP_UP : m->row_type[i] == EPM_MIP_GE ? GLP_LO : GLP_FX;
        glp_set_row_bnds(P, i + 1, type, m->rhs[i], m->rhs[i]);
    }
    for (int j = 0; j < n; j++) {
        int type = isinf(m->ub[j]) ? GLP_LO : m->lb[j] == m->ub[j] ? GLP_FX : GLP_DB;
        glp_set_col_bnds(P, j + 1, type, m->lb[j], m->ub[j]);
        glp_set_obj_coef(P, j + 1, m->obj[j]);
        if (m->integer[j])
            glp_set_col_kind(P, j + 1, m->lb[j] == 0 && m->ub[j] == 1 ? GLP_BV : GLP_IV);
    }
    if (m->nnz)
        glp_load_matrix(P, (int)m->nnz, g->ia, g->ja, g->ar);
    if (epm_ilp_test_glpk_fault)
        glp_set_col_bnds(P, n + 7, GLP_FX, 0, 0); /* out of range: GLPK's own error path */

    double t_end = g->t0 + g->time_limit_s;
    glp_smcp sp;
    glp_init_smcp(&sp);
    sp.msg_lev = GLP_MSG_OFF;
    sp.tm_lim = ms_left(t_end);
    sp.presolve = GLP_OFF;
    int rc = glp_simplex(P, &sp);
    if (rc != 0 || glp_get_status(P) != GLP_OPT) {
        snprintf(res->note, sizeof res->note, "root LP not solved (glp_simplex %d, status %d) within %.3g s", rc,
                 glp_get_status(P), g->time_limit_s);
        return;
    }
    res->bound = glp_get_obj_val(P);

    cb_info cb = {.start1 = g->start1, .t_end = t_end, .progress = g->progress, .user = g->progress_user,
                  .t0 = g->t0, .last_report = g->t0};
    glp_iocp ip;
    glp_init_iocp(&ip);
    ip.msg_lev = GLP_MSG_OFF;
    ip.tm_lim = ms_left(t_end);
    ip.mip_gap = g->mip_gap;
    ip.cb_func = callback;
    ip.cb_info = &cb;
    ip.presolve = GLP_OFF; /* the start point is for the columns as given */
    ip.br_tech = GLP_BR_PCH;
    ip.bt_tech = GLP_BT_BLB;
    ip.gmi_cuts = GLP_ON;
    ip.mir_cuts = GLP_ON;
    rc = glp_intopt(P, &ip);
    int ms = glp_mip_status(P);
    if (cb.have_bound && cb.bound > res->bound)
        res->bound = cb.bound;
    if (ms == GLP_OPT || ms == GLP_FEAS) {
        res->found = 1;
        res->value = glp_mip_obj_val(P);
        for (int j = 0; j < n; j++)
            x[j] = glp_mip_col_val(P, j + 1);
        if (rc == 0 && ms == GLP_OPT) {
            res->optimal = 1;
            res->bound = res->value; /* the search tree was exhausted */
        } else if (rc == GLP_EMIPGAP) {
            res->optimal = 1;
        }
        if (res->bound > res->value)
            res->bound = res->value;
    }
    snprintf(res->note, sizeof res->note, "%s after %.2f s",
             rc == 0                ? (ms == GLP_OPT ? "search completed" : "search ended")
             : rc == GLP_EMIPGAP    ? "mip gap reached"
             : rc == GLP_ETMLIM     ? "GLPK's share of the time limit reached"
             : rc == GLP_ESTOP      ? "GLPK's share of the time limit reached"
                                    : "GLPK stopped",
             epm_now() - g->t0);
}

static int guarded(jmp_buf *jb, void (*fn)(void *), void *arg)
{
    void (*volatile f)(void *) = fn;
    void *volatile a = arg;
    if (setjmp(*jb))
        return 1;
    f(a);
    return 0;
}

epm_status epm_mip_solve(const epm_mip *m, const double *start, double time_limit_s, double mip_gap,
                         epm_progress_fn progress, void *progress_user, epm_mip_result *res)
{
    double *x = res->x;
    memset(res, 0, sizeof *res);
    res->x = x;
    res->bound = NAN;
    res->value = NAN;
    double t0 = epm_now();
    if (!(time_limit_s > 0)) {
        snprintf(res->note, sizeof res->note, "time limit %g s: GLPK not run", time_limit_s);
        return EPM_OK;
    }
    int n = m->ncols;
    /* GLPK counts from 1: every index crosses here and only here */
    int *ia = epm_malloc((m->nnz + 1) * sizeof *ia);
    int *ja = epm_malloc((m->nnz + 1) * sizeof *ja);
    double *ar = epm_malloc((m->nnz + 1) * sizeof *ar);
    double *start1 = start ? epm_malloc(((size_t)n + 1) * sizeof *start1) : NULL;
    if (!ia || !ja || !ar || (start && !start1)) {
        epm_free(ia);
        epm_free(ja);
        epm_free(ar);
        epm_free(start1);
        return EPM_ERR_NOMEM;
    }
    for (size_t q = 0; q < m->nnz; q++) {
        ia[q + 1] = m->ti[q] + 1;
        ja[q + 1] = m->tj[q] + 1;
        ar[q + 1] = m->tv[q];
    }
    if (start) {
        start1[0] = 0.0;
        memcpy(start1 + 1, start, (size_t)n * sizeof *start1);
    }

    static _Thread_local term_buf tb;
    static _Thread_local jmp_buf jb;
    tb.text[0] = 0;
    epm_status st = EPM_OK;
    glpk_run g = {.m = m, .n = n, .ia = ia, .ja = ja, .ar = ar, .start1 = start1, .t0 = t0,
                  .time_limit_s = time_limit_s, .mip_gap = mip_gap, .progress = progress,
                  .progress_user = progress_user, .res = res, .x = x};
    glp_term_hook(term_hook, &tb);
    glp_error_hook(error_hook, &jb);
    if (guarded(&jb, run_glpk, &g)) {
        /* GLPK's state is undefined after its error: drop all of it */
        glp_error_hook(NULL, NULL);
        glp_term_hook(NULL, NULL);
        glp_free_env();
        size_t len = strlen(tb.text);
        while (len && (tb.text[len - 1] == '\n' || tb.text[len - 1] == ' '))
            tb.text[--len] = 0;
        st = epm_fail(EPM_ERR_SOLVER, "GLPK failed on the placement MIP (%d columns, %d rows): %s", m->ncols,
                      m->nrows, tb.text[0] ? tb.text : "no message");
    } else {
        glp_delete_prob(g.P);
        glp_error_hook(NULL, NULL);
        glp_term_hook(NULL, NULL);
    }
    epm_free(ia);
    epm_free(ja);
    epm_free(ar);
    epm_free(start1);
    return st;
}
