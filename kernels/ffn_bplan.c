/* The padded expert FFN paths' layouts (ffn_bplan.h). */
#include "ffn_bplan.h"

#include <stdlib.h>

#include "kcheck.h"

int64_t epm_ffn_bucket_rows(int64_t m)
{
    int64_t q = 16;
    while (q * 16 < m)
        q *= 2;
    return (m + q - 1) / q * q;
}

/* Largest bucket first, then expert id: the big batches start first, and
 * equal buckets keep the experts' order (their x rows are then read in
 * order). */
static int by_bucket(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] > y[0] ? -1 : 1;
    return (x[1] > y[1]) - (x[1] < y[1]);
}

static epm_status grow(epm_ffn_bplan *pl, int experts)
{
    /* int64 arrays: o, m, p, s, brows [experts] each, then the sort keys
     * [2 experts], stride [3 experts]; int32: expert [experts], first
     * [experts + 1], fused [experts] */
    size_t n = (size_t)experts;
    size_t need = (10 * n + 1) * sizeof(int64_t) + (3 * n + 1) * sizeof(int32_t);
    if (need > pl->cap) {
        void *mem = realloc(pl->mem, need);
        if (!mem)
            return epm_fail(EPM_ERR_NOMEM, "batched FFN layout for %d experts", experts);
        pl->mem = mem, pl->cap = need;
    }
    int64_t *w = pl->mem;
    pl->o = w, pl->m = w + n, pl->p = w + 2 * n, pl->s = w + 3 * n, pl->brows = w + 4 * n;
    pl->stride = w + 7 * n;
    pl->expert = (int32_t *)(w + 10 * n + 1);
    pl->first = pl->expert + n;
    pl->fused = pl->first + n + 1;
    return EPM_OK;
}

epm_status epm_ffn_bplan_make(epm_ffn_bplan *pl, const int64_t *offsets, int experts)
{
    KREQ(experts >= 1, "batched FFN: %d experts", experts);
    EPM_CHECK(epm_ref_check_offsets("batched FFN", offsets, experts));
    EPM_CHECK(grow(pl, experts));
    int64_t *key = pl->brows + experts; /* [2 experts]: (bucket rows, expert) */
    int ne = 0;
    int64_t rows = offsets[experts], max_rows = 0;
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m <= 0)
            continue;
        int64_t b = epm_ffn_bucket_rows(m);
        KREQ(b <= INT32_MAX, "batched FFN: expert %d has %lld rows (a batch holds at most %d)", e, (long long)m,
             INT32_MAX);
        key[2 * ne] = b, key[2 * ne + 1] = e;
        max_rows = m > max_rows ? m : max_rows;
        ne++;
    }
    qsort(key, (size_t)ne, 2 * sizeof *key, by_bucket);
    int nb = 0, ncopy = 0;
    int64_t padded = 0, spare = 0;
    for (int j = 0; j < ne; j++) {
        int64_t b = key[2 * j];
        int e = (int)key[2 * j + 1];
        pl->expert[j] = e;
        pl->o[j] = offsets[e], pl->m[j] = offsets[e + 1] - offsets[e];
        pl->p[j] = padded;
        padded += b;
        if (pl->o[j] + b <= rows) {
            pl->s[j] = -1;
        } else {
            pl->s[j] = spare;
            spare += b;
            ncopy++;
        }
        if (j == 0 || b != key[2 * (j - 1)]) {
            pl->first[nb] = j;
            pl->brows[nb++] = b;
        }
    }
    pl->first[nb] = ne;
    pl->ne = ne, pl->nb = nb, pl->ncopy = ncopy;
    pl->rows = rows, pl->padded_rows = padded, pl->spare_rows = spare, pl->max_rows = max_rows;
    return EPM_OK;
}

static int64_t gap(const void *a, const void *b) { return (int64_t)((uintptr_t)b - (uintptr_t)a); }

epm_status epm_ffn_bplan_make_runs(epm_ffn_bplan *pl, const int64_t *offsets, int experts, const void *const *gate,
                                   const void *const *up, const void *const *down, size_t gu_bytes)
{
    KREQ(experts >= 1, "batched FFN: %d experts", experts);
    EPM_CHECK(epm_ref_check_offsets("batched FFN", offsets, experts));
    EPM_CHECK(grow(pl, experts));
    int ne = 0, nb = 0;
    int64_t padded = 0, max_rows = 0;
    for (int e = 0; e < experts;) {
        if (offsets[e + 1] == offsets[e]) {
            e++;
            continue;
        }
        /* a run from e: each next expert must keep the strides its second
         * one set, and the run's padding within the buckets' bound (1/8 of
         * its rows and 16 rows an expert), so that a hot expert ends a run
         * rather than padding all its neighbours to its rows */
        int f = e + 1;
        int64_t sg = 0, su = 0, sd = 0, most = offsets[e + 1] - offsets[e], sum = most;
        for (; f < experts && offsets[f + 1] > offsets[f]; f++) {
            int64_t g = gap(gate[f - 1], gate[f]), u = gap(up[f - 1], up[f]), d = gap(down[f - 1], down[f]);
            if (f == e + 1 && (g <= 0 || u <= 0 || d <= 0 || g % 16 || u % 16 || d % 16))
                break;
            if (f > e + 1 && (g != sg || u != su || d != sd))
                break;
            int64_t m = offsets[f + 1] - offsets[f], big = m > most ? m : most, n = f - e + 1;
            if ((double)n * (double)epm_ffn_bucket_rows(big) > (double)(sum + m) * 9 / 8 + 16.0 * (double)n)
                break;
            sg = g, su = u, sd = d;
            most = big, sum += m;
        }
        int64_t b = epm_ffn_bucket_rows(most);
        KREQ(b <= INT32_MAX, "batched FFN: expert %d has %lld rows (a batch holds at most %d)", e, (long long)most,
             INT32_MAX);
        int fused = 1;
        pl->first[nb] = ne;
        for (int x = e; x < f; x++, ne++) {
            pl->expert[ne] = x;
            pl->o[ne] = offsets[x], pl->m[ne] = offsets[x + 1] - offsets[x];
            pl->p[ne] = pl->s[ne] = padded;
            padded += b;
            fused = fused && gap(gate[x], up[x]) == (int64_t)gu_bytes;
        }
        pl->brows[nb] = b;
        pl->stride[3 * nb] = sg, pl->stride[3 * nb + 1] = su, pl->stride[3 * nb + 2] = sd;
        pl->fused[nb++] = fused;
        max_rows = most > max_rows ? most : max_rows;
        e = f;
    }
    pl->first[nb] = ne;
    pl->ne = ne, pl->nb = nb, pl->ncopy = ne;
    pl->rows = offsets[experts], pl->padded_rows = padded, pl->spare_rows = padded, pl->max_rows = max_rows;
    return EPM_OK;
}

void epm_ffn_bplan_free(epm_ffn_bplan *pl)
{
    if (!pl)
        return;
    free(pl->mem);
    *pl = (epm_ffn_bplan){0};
}
