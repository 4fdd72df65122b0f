/* Internal interface between the parts of the ILP planner: the cost digest
 * of a trace (ilp_cost.c), the sparse MIP and its GLPK boundary (ilp_glpk.c),
 * the model builder (ilp_model.c), the local search used at scale
 * (ilp_search.c) and the driver (ilp.c). */
#ifndef EPM_ILP_INTERNAL_H
#define EPM_ILP_INTERNAL_H

#include "planner.h"

/* ---- the trace digested for cost evaluation (ilp_cost.c) ----
 * "Single-copy" placements only (each expert on exactly one rank), given as
 * rank_of[l * E + e]: that is what the MIP and the local search decide; the
 * replica pass afterwards is scored by epm_plan_objective itself. */
typedef struct epm_ilp_ctx {
    const epm_trace *t;
    const epm_cluster *c;
    epm_mode mode;
    int L, E, K, R, S, N, gpn;
    int64_t T;
    double rho;        /* link cost of another node (1 when there is one node) */
    double kv_ratio;   /* K/V row bytes over hidden bytes (follow) */
    double kv_fan;     /* sum over r != src of cost(src, r): same for every src */
    double bw, tw;     /* balance weight; traffic weight already divided by R */
    int32_t *home;     /* [T] home rank of each token */
    int32_t *src;      /* [L * T] follow: source of the token at layer l, as
                          ls * E + a (top-1 expert a of an earlier layer ls), or
                          -(home + 1) when the token has not run an expert yet */
    int32_t *last;     /* [T] follow: ls * E + a of the token's last top-1, or -1 */
    int64_t *load;     /* [L * E] assignments per expert */
    int64_t *active;   /* [L] tokens with at least one expert */
    double constant;   /* the placement-independent part of the objective */
    int has_skips;
} epm_ilp_ctx;

epm_status epm_ilp_ctx_init(epm_ilp_ctx *x, const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                            int slots);
void epm_ilp_ctx_free(epm_ilp_ctx *x);

static inline double epm_ilp_cost(const epm_ilp_ctx *x, int a, int b)
{
    if (a == b)
        return 0.0;
    return a / x->gpn == b / x->gpn ? 1.0 : x->rho;
}

/* Objective of layer l (balance + its dispatch/combine traffic, plus the final
 * gather when l is the last layer in follow mode), without the constant. */
double epm_ilp_layer_cost(const epm_ilp_ctx *x, const int *rank_of, int l);
/* epm_plan_objective of the single-copy placement rank_of. */
double epm_ilp_total(const epm_ilp_ctx *x, const int *rank_of);
/* A lower bound on epm_plan_objective valid for every placement with the
 * given slots (replicas included when spares is set), layer by layer. */
epm_status epm_ilp_bound(const epm_ilp_ctx *x, int spares, double *out);

/* rank_of <-> placement (the first replica of each expert). */
epm_status epm_ilp_to_placement(const epm_ilp_ctx *x, const int *rank_of, int k, epm_placement **out);
void epm_ilp_from_placement(const epm_ilp_ctx *x, const epm_placement *p, int *rank_of);

/* ---- a sparse MIP, 0-based, and its solution by GLPK (ilp_glpk.c) ---- */
enum { EPM_MIP_LE = 0, EPM_MIP_GE = 1, EPM_MIP_EQ = 2 };

typedef struct epm_mip {
    int ncols, nrows;
    size_t nnz;
    int cap_cols, cap_rows;
    size_t cap_nnz;
    double *obj, *lb, *ub;  /* [cols] */
    char *integer;          /* [cols] 1 = integer */
    int *pa, *pb;           /* [cols] start value = x[pa] * x[pb] when pa >= 0 */
    int *row_type;          /* [rows] EPM_MIP_* with right-hand side rhs */
    double *rhs;
    int *row_owner;         /* [rows] the auxiliary column a linking row bounds, or -1 */
    int *ti, *tj;           /* [nnz] row, column */
    double *tv;
    double obj_const;
} epm_mip;

void epm_mip_init(epm_mip *m);
void epm_mip_free(epm_mip *m);
/* Returns the new column's index, or -1 when out of memory. */
int epm_mip_col(epm_mip *m, double lb, double ub, int integer, double obj);
int epm_mip_row(epm_mip *m, int type, double rhs, int owner);
/* Declares column col's start value as the product of columns a and b. */
void epm_mip_col_product(epm_mip *m, int col, int a, int b);
epm_status epm_mip_coef(epm_mip *m, int row, int col, double v);
/* Completes a start point: given the integer columns' values in x, sets each
 * auxiliary column (in creation order) to the tightest value its owned rows
 * allow in the direction its objective pushes it. */
epm_status epm_mip_complete(const epm_mip *m, double *x);
double epm_mip_value(const epm_mip *m, const double *x);

typedef struct epm_mip_result {
    int found;        /* an integer solution is in x */
    int optimal;      /* proven within mip_gap */
    double value;     /* its objective */
    double bound;     /* valid lower bound on the MIP optimum */
    double *x;        /* [ncols], owned by the caller of epm_mip_solve */
    char note[160];   /* how the solve ended */
} epm_mip_result;

/* Solves min obj over m within time_limit_s (whole call) and relative gap;
 * start (may be NULL) is a feasible integer point given to GLPK as its first
 * incumbent. Errors inside GLPK become EPM_ERR_SOLVER; they never end the
 * process. progress may be NULL. */
/* Test hook: when set, the next solves make GLPK fail inside its own code. */
extern int epm_ilp_test_glpk_fault;
epm_status epm_mip_solve(const epm_mip *m, const double *start, double time_limit_s, double mip_gap,
                         epm_progress_fn progress, void *progress_user, epm_mip_result *res);

/* ---- the model (ilp_model.c) ---- */
/* Builds the MIP over all layers, exact for single-copy placements with at
 * most `slots` experts a rank. col_x[(l * E + e) * R + r] receives x's
 * columns. Fails with EPM_ERR_UNSUPPORTED when the model would exceed
 * max_cols columns. */
epm_status epm_ilp_build(const epm_ilp_ctx *x, int64_t max_cols, epm_mip *m, int *col_x);
/* Values of x's columns for rank_of (others 0; complete with epm_mip_complete). */
void epm_ilp_start(const epm_ilp_ctx *x, const int *col_x, const int *rank_of, double *v);
void epm_ilp_read(const epm_ilp_ctx *x, const int *col_x, const double *v, int *rank_of);

/* ---- exact decomposition (ilp_decompose.c) ---- */
/* Follow mode, one node, one expert a rank and E = R, no skipped tokens. */
int epm_ilp_decompose_applies(const epm_ilp_ctx *x);
/* Chains the layer pairs' optimal assignments into rank_of and writes a
 * lower bound on epm_plan_objective over single-copy placements in *lb;
 * with E <= 8 and before deadline, the optimum itself and its value. */
epm_status epm_ilp_decompose(const epm_ilp_ctx *x, double deadline, int *rank_of, double *lb);
/* Maximum-weight perfect assignment of the n x n matrix w (row -> column),
 * exact (Hungarian method). */
epm_status epm_ilp_assign_max(int n, const double *w, int *col_of_row, double *value);
/* H + G of the chain of layer assignments sig ([L][n]: the layer-l expert
 * beside each layer-(l-1) expert) at its best, and the layer-0 ranks pi0
 * that attain it; hg: n x n scratch (ilp_chain.c). */
epm_status epm_ilp_chain_hg(int n, int L, const int *sig, const double *h0, const double *g, double *hg, int *pi0,
                            double *val);
/* The decomposition's exact search over chains (ilp_chain.c). w: [L][n][n]
 * layer pair savings (layer 0 unused); h0, g: [n][n] the home savings of
 * layer 0's and of the last layer's experts; sig: [L][n] the layers' optimal
 * assignments, rewritten with the optimum's chain, and pi0 with its layer-0
 * ranks. *savings: the optimum's total. *done = 0 (nothing written) when n
 * > 8 or the deadline came first. */
epm_status epm_ilp_exact_chain(int n, int L, const double *w, const double *h0, const double *g, int *sig, int *pi0,
                               double deadline, double *savings, int *done);

/* ---- local search at scale (ilp_search.c) ---- */
/* Improves rank_of by exact-delta swaps and moves (capacity x->S), layer by
 * layer, for at most max_evals move evaluations or until deadline. With
 * folds = 0 it minimises epm_plan_objective. With folds = F >= 1 it
 * minimises a sample-average approximation over F folds of the planning
 * tokens (a trace with pass_ids: its passes) of epm_eval's per-layer modelled time (busiest rank's compute and
 * communication; see ilp_search.c), subject to epm_plan_objective staying at
 * or below its value at the start. Returns epm_plan_objective of the result
 * (single-copy) in *obj. */
epm_status epm_ilp_search(const epm_ilp_ctx *x, int *rank_of, int64_t max_evals, double deadline, int folds,
                          epm_progress_fn progress, void *progress_user, double *obj);
/* Test hook: when N > 0, the search with folds compares what it keeps per
 * (layer, fold) with a fresh setup after every N-th move tried and fails
 * with EPM_ERR_INTERNAL naming the first that differs. */
extern int epm_ilp_search_test_check;
/* What the search minimises with folds >= 1, for rank_of (tests): the sum
 * over layers of the fold-mean of balance_weight * max_r load plus
 * traffic_weight * the busiest rank's comm units. */
epm_status epm_ilp_search_model(const epm_ilp_ctx *x, const int *rank_of, int folds, double *value);

#endif
