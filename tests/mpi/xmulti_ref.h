/* Seeded multi-destination row exchanges (epm_xcomm_exchange_multi) that
 * every rank can compute for every rank: which ranks each row goes to, what
 * each rank must receive (the single-destination reference of xcomm_ref.h
 * applied to the rows replicated once per destination), the bytes the
 * eval.h model counts, and the exact wire bytes of the flat path and of the
 * hierarchical one between nodes, derived from the scenario alone. */
#ifndef EPM_TEST_XMULTI_REF_H
#define EPM_TEST_XMULTI_REF_H

#include "hier_route.h"
#include "xcomm_ref.h"

enum { XM_MAX_SLOTS = 8 };

typedef enum mdest {
    MD_RANDOM = 0, /* 0 .. slots distinct ranks anywhere (oneself only with .self) */
    MD_ONE_NODE,   /* 0 .. slots distinct ranks, all on one other node (several per node) */
    MD_SPREAD      /* slots distinct ranks other than oneself, so every node is hit (broadcast-like) */
} mdest;

typedef struct mscen {
    uint64_t seed;
    mdest dest;
    int slots;       /* D: destination entries per row (-1 padded, at random positions) */
    int max_rows;    /* rows per rank are 0 .. max_rows */
    int empty_every; /* ranks r with r % empty_every == 1 send nothing (0: none) */
    int self;        /* MD_RANDOM: oneself may be a destination */
} mscen;

static inline int64_t ms_rows(const mscen *s, int src)
{
    xscen x = {.seed = s->seed, .max_rows = s->max_rows, .empty_every = s->empty_every};
    return xs_rows(&x, src);
}

/* The destination entries of row i of rank src: slots ints, -1 padded. R
 * ranks in vn pretend nodes (vn <= 1: one node). Returns how many are ranks. */
static inline int ms_dest(const mscen *s, int R, int vn, int src, int64_t i, int *out)
{
    int P = vn > 1 ? R / vn : R, nodes = vn > 1 ? vn : 1, mynode = src / P;
    uint64_t h = xs_mix(s->seed * 7919u ^ ((uint64_t)src << 40) ^ (uint64_t)i);
    int cand[1024], nc = 0;
    int want;
    if (s->dest == MD_ONE_NODE) {
        int m = nodes > 1 ? (mynode + 1 + (int)(h % (uint64_t)(nodes - 1))) % nodes : 0;
        for (int r = m * P; r < (m + 1) * P; r++)
            if (r != src)
                cand[nc++] = r;
        want = (int)(xs_mix(h) % (uint64_t)(s->slots + 1));
    } else {
        for (int r = 0; r < R; r++)
            if (r != src || (s->dest == MD_RANDOM && s->self))
                cand[nc++] = r;
        want = s->dest == MD_SPREAD ? s->slots : (int)(xs_mix(h) % (uint64_t)(s->slots + 1));
    }
    want = want < nc ? want : nc;
    /* partial Fisher-Yates: want distinct candidates */
    for (int a = 0; a < want; a++) {
        h = xs_mix(h + (uint64_t)a);
        int b = a + (int)(h % (uint64_t)(nc - a)), t = cand[a];
        cand[a] = cand[b];
        cand[b] = t;
    }
    /* spread them over the slots, -1 elsewhere */
    for (int j = 0; j < s->slots; j++)
        out[j] = -1;
    for (int a = 0, placed = 0; a < want; a++) {
        h = xs_mix(h ^ 0xa5a5u);
        int free_slots = s->slots - placed, pick = (int)(h % (uint64_t)free_slots);
        for (int j = 0; j < s->slots; j++)
            if (out[j] < 0 && pick-- == 0) {
                out[j] = cand[a];
                break;
            }
        placed++;
    }
    return want;
}

/* this rank's rows and destination entries (epm_free both) */
static inline void ms_make(const mscen *s, int R, int vn, int me, int64_t *n, int **dest, float **rows)
{
    *n = ms_rows(s, me);
    *dest = epm_malloc((size_t)(*n * s->slots + 1) * sizeof **dest);
    *rows = epm_malloc((size_t)(*n + 1) * XW * sizeof **rows);
    for (int64_t i = 0; i < *n; i++) {
        ms_dest(s, R, vn, me, i, *dest + i * s->slots);
        for (int c = 0; c < XW; c++)
            (*rows)[i * XW + c] = xs_val(me, i, c);
    }
}

/* The same rows replicated once per destination, in slot order: the input
 * of the single-destination exchange that exchange_multi must equal. */
static inline void ms_replicate(const mscen *s, int64_t n, const int *dest, const float *rows, int64_t *rn, int **rdest,
                                float **rrows)
{
    *rn = 0;
    for (int64_t k = 0; k < n * s->slots; k++)
        *rn += dest[k] >= 0;
    *rdest = epm_malloc((size_t)(*rn + 1) * sizeof **rdest);
    *rrows = epm_malloc((size_t)(*rn + 1) * XW * sizeof **rrows);
    int64_t o = 0;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < s->slots; j++)
            if (dest[i * s->slots + j] >= 0) {
                (*rdest)[o] = dest[i * s->slots + j];
                memcpy(*rrows + o * XW, rows + i * XW, XW * sizeof **rrows);
                o++;
            }
}

/* What rank me must receive (sources in rank order, rows in send order) and
 * count as sender: the replicated single-destination reference. */
static inline int64_t ms_expect(const mscen *s, int R, int vn, int me, float **rows, int **src,
                                int64_t counted[EPM_LINK_COUNT])
{
    int d[XM_MAX_SLOTS];
    int64_t total = 0;
    for (int q = 0; q < R; q++)
        for (int64_t i = 0; i < ms_rows(s, q); i++) {
            ms_dest(s, R, vn, q, i, d);
            for (int j = 0; j < s->slots; j++)
                total += d[j] == me;
        }
    *rows = epm_malloc((size_t)(total + 1) * XW * sizeof **rows);
    *src = epm_malloc((size_t)(total + 1) * sizeof **src);
    int64_t k = 0;
    for (int q = 0; q < R; q++)
        for (int64_t i = 0; i < ms_rows(s, q); i++) {
            ms_dest(s, R, vn, q, i, d);
            for (int j = 0; j < s->slots; j++)
                if (d[j] == me) {
                    (*src)[k] = q;
                    for (int c = 0; c < XW; c++)
                        (*rows)[k * XW + c] = xs_val(q, i, c);
                    k++;
                }
        }
    memset(counted, 0, EPM_LINK_COUNT * sizeof *counted);
    for (int64_t i = 0; i < ms_rows(s, me); i++) {
        ms_dest(s, R, vn, me, i, d);
        for (int j = 0; j < s->slots; j++)
            if (d[j] >= 0 && d[j] != me)
                counted[xs_link(R, vn, me, d[j])] += XP * (int64_t)sizeof(float);
    }
    return total;
}

/* Wire bytes summed over all ranks, from the scenario alone:
 *   flat[l]     one copy per (row, destination rank other than the source)
 *   hier_inter  one copy per (row, destination node other than the source's)
 *   fanout      inside destination nodes: (ranks of the row there - 1) per such node
 *   gather_max  the gathering hop's bound: one copy per (row, other destination node) */
typedef struct mwire {
    int64_t flat[EPM_LINK_COUNT];
    int64_t hier_inter, fanout, gather_max;
    int64_t gather; /* the gathering copies to other ranks of the source's node, by epm_hier_gateways (key: row) */
    int64_t multi_node_rows; /* (row, other node) pairs with several ranks there */
} mwire;

static inline void ms_wire(const mscen *s, int R, int vn, mwire *w)
{
    const int64_t pb = XP * (int64_t)sizeof(float);
    int d[XM_MAX_SLOTS];
    memset(w, 0, sizeof *w);
    for (int q = 0; q < R; q++)
        for (int64_t i = 0; i < ms_rows(s, q); i++) {
            ms_dest(s, R, vn, q, i, d);
            int per_node[1024] = {0};
            for (int j = 0; j < s->slots; j++)
                if (d[j] >= 0 && d[j] != q) {
                    w->flat[xs_link(R, vn, q, d[j])] += pb;
                    if (xs_node(R, vn, d[j]) != xs_node(R, vn, q))
                        per_node[xs_node(R, vn, d[j])]++;
                }
            if (vn > 1) {
                int gw[XM_MAX_SLOTS];
                epm_hier_gateways(q, R / vn, s->slots, d, (uint64_t)i, gw);
                for (int j = 0; j < s->slots; j++) {
                    int fresh = gw[j] >= 0 && gw[j] != q && xs_node(R, vn, d[j]) != xs_node(R, vn, q);
                    for (int a = 0; a < s->slots && fresh; a++) /* (one copy a rank: local ones, earlier gateways) */
                        fresh = !(gw[a] == gw[j] && (a < j || xs_node(R, vn, d[a]) == xs_node(R, vn, q)));
                    w->gather += fresh ? pb : 0;
                }
            }
            for (int m = 0; m < (vn > 1 ? vn : 1); m++)
                if (per_node[m]) {
                    w->hier_inter += pb;
                    w->gather_max += pb;
                    w->fanout += (per_node[m] - 1) * pb;
                    w->multi_node_rows += per_node[m] > 1;
                }
        }
}

#endif
