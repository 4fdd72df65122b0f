/* Seeded row-exchange scenarios that every rank can compute for every rank,
 * so a receiver knows exactly which rows it must get, in which order, and
 * what the byte counts must be, without trusting the code under test. */
#ifndef EPM_TEST_XCOMM_REF_H
#define EPM_TEST_XCOMM_REF_H

#include <stdint.h>
#include <string.h>

#include "xcomm.h"

enum { XW = 7, XP = 5 }; /* row width in floats, of which payload (the rest is metadata, as in the runtime) */

typedef enum xdest {
    XD_RANDOM = 0, /* uniform over ranks, oneself included */
    XD_ONE,        /* all-to-one skew: every row to the last rank */
    XD_EVEN        /* only even ranks receive: odd ones get nothing */
} xdest;

typedef struct xscen {
    uint64_t seed;
    xdest dest;
    int max_rows;   /* rows per rank are 0 .. max_rows */
    int empty_every; /* ranks r with r % empty_every == 1 send nothing (0: none) */
} xscen;

static inline uint64_t xs_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline int64_t xs_rows(const xscen *s, int src)
{
    if (s->empty_every && src % s->empty_every == 1)
        return 0;
    return (int64_t)(xs_mix(s->seed * 1000003u + (uint64_t)src) % (uint64_t)(s->max_rows + 1));
}

static inline int xs_dest(const xscen *s, int R, int src, int64_t i)
{
    uint64_t h = xs_mix(s->seed ^ ((uint64_t)src << 32) ^ (uint64_t)i ^ 0x5bd1e995u);
    switch (s->dest) {
    case XD_ONE:
        return R - 1;
    case XD_EVEN:
        return (int)(h % (uint64_t)((R + 1) / 2)) * 2;
    default:
        return (int)(h % (uint64_t)R);
    }
}

/* every element distinct and exactly representable */
static inline float xs_val(int src, int64_t i, int c) { return (float)(src * 65536 + (int)i * 8 + c) + 0.25f; }

/* this rank's rows and destinations (epm_free both) */
static inline void xs_make(const xscen *s, int R, int me, int64_t *n, int **dest, float **rows)
{
    *n = xs_rows(s, me);
    *dest = epm_malloc((size_t)(*n + 1) * sizeof **dest);
    *rows = epm_malloc((size_t)(*n + 1) * XW * sizeof **rows);
    for (int64_t i = 0; i < *n; i++) {
        (*dest)[i] = xs_dest(s, R, me, i);
        for (int c = 0; c < XW; c++)
            (*rows)[i * XW + c] = xs_val(me, i, c);
    }
}

/* node of rank r as the test sees it: vn pretend nodes, or one real node (one machine) */
static inline int xs_node(int R, int vn, int r) { return vn > 0 ? r / (R / vn) : 0; }

static inline epm_link xs_link(int R, int vn, int a, int b)
{
    if (a == b)
        return EPM_LINK_SELF;
    return xs_node(R, vn, a) == xs_node(R, vn, b) ? EPM_LINK_INTRA : EPM_LINK_INTER;
}

/* What rank me must receive: rows from sources in rank order, each in send
 * order; and the bytes it must count as sender. Returns the row count. */
static inline int64_t xs_expect(const xscen *s, int R, int vn, int me, float **rows, int **src,
                                int64_t counted[EPM_LINK_COUNT])
{
    int64_t total = 0;
    for (int q = 0; q < R; q++)
        for (int64_t i = 0; i < xs_rows(s, q); i++)
            total += xs_dest(s, R, q, i) == me;
    *rows = epm_malloc((size_t)(total + 1) * XW * sizeof **rows);
    *src = epm_malloc((size_t)(total + 1) * sizeof **src);
    int64_t k = 0;
    for (int q = 0; q < R; q++)
        for (int64_t i = 0; i < xs_rows(s, q); i++)
            if (xs_dest(s, R, q, i) == me) {
                (*src)[k] = q;
                for (int c = 0; c < XW; c++)
                    (*rows)[k * XW + c] = xs_val(q, i, c);
                k++;
            }
    memset(counted, 0, EPM_LINK_COUNT * sizeof *counted);
    for (int64_t i = 0; i < xs_rows(s, me); i++) {
        int d = xs_dest(s, R, me, i);
        if (d != me)
            counted[xs_link(R, vn, me, d)] += XP * (int64_t)sizeof(float);
    }
    return total;
}

#endif
