/* Renaming a placement's nodes, and the ranks within each, to match another
 * (epm_placement_align): the cost model treats the nodes alike, and the
 * ranks of a node alike, so a renamed placement balances and moves the same
 * tokens, while far fewer experts change rank between the two. Online
 * rebalancing takes its new placements so. The renaming is optimal: an
 * assignment of ranks within each pair of nodes, then of nodes, each solved
 * exactly (the Hungarian method), maximising the replicas that stay. */
#include <stdlib.h>
#include <string.h>

#include "epmoe/placement.h"
#include "core.h"

enum { EPM_ALIGN_MAX_RANKS = 2048 };

typedef struct hungarian {
    int64_t *u, *v, *minv;
    int *p, *way;
    char *used;
} hungarian;

/* The assignment of rows to columns of the n x n matrix w (row-major,
 * stride `stride`) with the largest sum: col_of[i] for row i; returns the
 * sum. h: scratch for n. (Kuhn-Munkres with potentials, O(n^3).) */
static int64_t best_assignment(const int *w, int stride, int n, int *col_of, hungarian *h)
{
    const int64_t INF = INT64_MAX / 4;
    for (int j = 0; j <= n; j++)
        h->u[j] = h->v[j] = 0, h->p[j] = 0, h->way[j] = 0;
    for (int i = 1; i <= n; i++) {
        h->p[0] = i;
        int j0 = 0;
        for (int j = 0; j <= n; j++)
            h->minv[j] = INF, h->used[j] = 0;
        do {
            h->used[j0] = 1;
            const int i0 = h->p[j0];
            int64_t delta = INF;
            int j1 = 0;
            for (int j = 1; j <= n; j++) {
                if (h->used[j])
                    continue;
                const int64_t cur = -(int64_t)w[(i0 - 1) * stride + (j - 1)] - h->u[i0] - h->v[j];
                if (cur < h->minv[j])
                    h->minv[j] = cur, h->way[j] = j0;
                if (h->minv[j] < delta)
                    delta = h->minv[j], j1 = j;
            }
            for (int j = 0; j <= n; j++) {
                if (h->used[j])
                    h->u[h->p[j]] += delta, h->v[j] -= delta;
                else
                    h->minv[j] -= delta;
            }
            j0 = j1;
        } while (h->p[j0] != 0);
        do {
            const int j1 = h->way[j0];
            h->p[j0] = h->p[j1];
            j0 = j1;
        } while (j0);
    }
    int64_t sum = 0;
    for (int j = 1; j <= n; j++) {
        col_of[h->p[j] - 1] = j - 1;
        sum += w[(h->p[j] - 1) * stride + (j - 1)];
    }
    return sum;
}

epm_status epm_placement_align(const epm_placement *to, const epm_placement *p, epm_placement **out)
{
    if (out)
        *out = NULL;
    if (!to || !p || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_placement_align: NULL argument");
    const epm_cluster *cl = epm_placement_cluster(p), *ct = epm_placement_cluster(to);
    const int N = cl->nodes, G = cl->gpus_per_node, R = N * G, L = epm_placement_layers(p),
              E = epm_placement_experts(p);
    if (ct->nodes != N || ct->gpus_per_node != G || epm_placement_layers(to) != L || epm_placement_experts(to) != E)
        return epm_fail(EPM_ERR_MISMATCH, "epm_placement_align: %d layers x %d experts on %d x %d ranks against "
                        "%d x %d on %d x %d", L, E, N, G, epm_placement_layers(to), epm_placement_experts(to),
                        ct->nodes, ct->gpus_per_node);
    /* (the dense R x R count of shared experts: a few MB up to this many ranks; beyond, p as named) */
    if (R > EPM_ALIGN_MAX_RANKS)
        return epm_placement_clone(p, out);
    const int M = N > G ? N : G;
    /* stay[a][b]: experts p's rank a and to's rank b both hold */
    int *stay = epm_malloc((size_t)R * R * sizeof *stay), *node_w = epm_malloc((size_t)N * N * sizeof *node_w);
    int *rank_to = epm_malloc((size_t)N * N * G * sizeof *rank_to), *node_to = epm_malloc((size_t)N * sizeof *node_to);
    hungarian h = {epm_malloc((size_t)(M + 1) * sizeof(int64_t)), epm_malloc((size_t)(M + 1) * sizeof(int64_t)),
                   epm_malloc((size_t)(M + 1) * sizeof(int64_t)), epm_malloc((size_t)(M + 1) * sizeof(int)),
                   epm_malloc((size_t)(M + 1) * sizeof(int)), epm_malloc((size_t)(M + 1))};
    epm_status st = stay && node_w && rank_to && node_to && h.u && h.v && h.minv && h.p && h.way && h.used
                        ? epm_placement_create(L, E, epm_placement_k(p), cl, out)
                        : EPM_ERR_NOMEM;
    for (int l = 0; l < L && st == EPM_OK; l++) {
        memset(stay, 0, (size_t)R * R * sizeof *stay);
        for (int e = 0; e < E; e++) {
            const int *ra, *rb;
            const int na = epm_placement_replicas(p, l, e, &ra), nb = epm_placement_replicas(to, l, e, &rb);
            for (int x = 0; x < na; x++)
                for (int y = 0; y < nb; y++)
                    stay[(size_t)ra[x] * R + rb[y]]++;
        }
        /* the best renaming of p's node i's ranks onto to's node j's, for every (i, j); then of the nodes */
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                node_w[i * N + j] = (int)best_assignment(stay + (size_t)i * G * R + (size_t)j * G, R, G,
                                                         rank_to + ((size_t)i * N + j) * G, &h);
        best_assignment(node_w, N, N, node_to, &h);
        for (int e = 0; e < E && st == EPM_OK; e++) {
            const int *reps;
            const int n = epm_placement_replicas(p, l, e, &reps);
            for (int k = 0; k < n && st == EPM_OK; k++) {
                const int i = reps[k] / G, j = node_to[i];
                st = epm_placement_add(*out, l, e, j * G + rank_to[((size_t)i * N + j) * G + reps[k] % G]);
            }
        }
    }
    if (st == EPM_OK)
        epm_placement_set_info(*out, epm_placement_get_info(p));
    epm_free(stay);
    epm_free(node_w);
    epm_free(rank_to);
    epm_free(node_to);
    epm_free(h.u);
    epm_free(h.v);
    epm_free(h.minv);
    epm_free(h.p);
    epm_free(h.way);
    epm_free(h.used);
    if (st != EPM_OK) {
        epm_placement_destroy(*out);
        *out = NULL;
    }
    return st;
}
