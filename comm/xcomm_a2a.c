/* Row exchange: flat (one hop, source -> destination) and hierarchical
 * (an intra-node hop that gathers the rows for each destination local rank,
 * then one hop between nodes straight to the destination: Tutel's 2DH),
 * both split into start and wait. Every hop packs its
 * rows by destination, exchanges the per-peer counts, copies its own rows
 * and leaves the rest to the transport table (transport.h: alltoallv, p2p,
 * staged, NCCL). */
#include <string.h>

#include "xcomm_internal.h"

/* One hop: n rows of rb bytes, row i to dest[i] (-1: not sent). */
typedef struct hop {
    int64_t *scount, *rcount, *soff, *roff; /* [R], [R], [R + 1], [R + 1] */
    char *sbuf, *rbuf;                      /* packed by destination; received by source */
    const char **sptr;                      /* [sent] row addresses for the transport */
    int64_t nsent, nrecv;
    size_t rb;
    int tag, started, rbuf_owned, sbuf_borrowed;
    epm_xfer xf;
    epm_xfer_req *tq;
} hop;

struct epm_xcomm_req {
    epm_xcomm *x;
    int width;
    size_t payload; /* bytes counted per row per hop */
    hop h[3];
    int nhops;
    epm_xcomm_buf *out, own; /* own: for the calls that hand out fresh buffers */
    char *aug;               /* hierarchical: the gathering hop's rows */
};

enum { HDR = 2 * sizeof(int32_t) }; /* hierarchical rows: source rank, final rank, then the row */

/* Scratch from the communicator's pool: a free block big enough, else the
 * biggest free one regrown, else (all in use by exchanges in flight) fresh. */
static void *pool_get(epm_xcomm *x, size_t bytes)
{
    int n = (int)(sizeof x->pool / sizeof *x->pool), best = -1;
    bytes = bytes ? bytes : 1;
    for (int i = 0; i < n; i++)
        if (!x->pool[i].used && x->pool[i].cap >= bytes && (best < 0 || x->pool[i].cap < x->pool[best].cap))
            best = i;
    if (best < 0)
        for (int i = 0; i < n; i++)
            if (!x->pool[i].used && (best < 0 || x->pool[i].cap > x->pool[best].cap))
                best = i;
    if (best < 0)
        return epm_malloc(bytes);
    if (x->pool[best].cap < bytes) {
        epm_free(x->pool[best].p);
        x->pool[best].p = epm_malloc(bytes);
        x->pool[best].cap = x->pool[best].p ? bytes : 0;
        if (!x->pool[best].p)
            return NULL;
    }
    x->pool[best].used = 1;
    return x->pool[best].p;
}

static void pool_put(epm_xcomm *x, void *p)
{
    if (!p)
        return;
    for (int i = 0; i < (int)(sizeof x->pool / sizeof *x->pool); i++)
        if (x->pool[i].p == p) {
            x->pool[i].used = 0;
            return;
        }
    epm_free(p);
}

void epm_xcomm_pool_release(epm_xcomm *x)
{
    for (int i = 0; i < (int)(sizeof x->pool / sizeof *x->pool); i++) {
        epm_free(x->pool[i].p);
        memset(&x->pool[i], 0, sizeof x->pool[i]);
    }
}

static epm_status grow(void **p, size_t *cap, size_t need)
{
    need = need ? need : 1;
    if (*cap >= need)
        return EPM_OK;
    epm_free(*p);
    *p = epm_malloc(need);
    *cap = *p ? need : 0;
    return *p ? EPM_OK : EPM_ERR_NOMEM;
}

void epm_xcomm_buf_free(epm_xcomm_buf *b)
{
    if (!b)
        return;
    epm_free(b->rows);
    epm_free(b->src);
    memset(b, 0, sizeof *b);
}

static void hop_free(epm_xcomm *x, hop *h)
{
    pool_put(x, h->scount);
    if (!h->sbuf_borrowed)
        pool_put(x, h->sbuf);
    if (h->rbuf_owned)
        pool_put(x, h->rbuf);
    pool_put(x, h->sptr);
    memset(h, 0, sizeof *h);
}

/* into: receive straight into the caller's buffer (grown) instead of scratch.
 * borrow: the rows stay valid until the wait, so rows already grouped by
 * destination (a combine sending back in received order, or a dispatch
 * built by destination) are sent from where they are, without packing. */
static epm_status hop_start(epm_xcomm *x, hop *h, int64_t n, const int *dest, const char *rows, size_t rb,
                            size_t payload, int tag, epm_xcomm_buf *into, int borrow)
{
    int R = x->size, me = x->rank;
    memset(h, 0, sizeof *h);
    h->rb = rb;
    h->tag = tag;
    h->scount = pool_get(x, (4 * (size_t)R + 2) * sizeof(int64_t));
    if (!h->scount)
        return EPM_ERR_NOMEM;
    memset(h->scount, 0, (4 * (size_t)R + 2) * sizeof(int64_t));
    h->rcount = h->scount + R;
    h->soff = h->scount + 2 * R;
    h->roff = h->soff + R + 1;
    for (int64_t i = 0; i < n; i++)
        if (dest[i] >= 0)
            h->scount[dest[i]]++;
    for (int r = 0; r < R; r++)
        h->soff[r + 1] = h->soff[r] + h->scount[r];
    h->nsent = h->soff[R];
    for (int64_t i = 1; i < n && borrow; i++)
        borrow = dest[i] >= dest[i - 1];
    borrow = borrow && (n == 0 || dest[0] >= 0);
    h->sbuf_borrowed = borrow;
    h->sbuf = borrow ? (char *)rows : pool_get(x, (size_t)h->nsent * rb);
    h->sptr = pool_get(x, (size_t)h->nsent * sizeof *h->sptr);
    if (!h->sbuf || !h->sptr)
        return EPM_ERR_NOMEM;
    if (!borrow) {
        int64_t *fill = epm_malloc((size_t)R * sizeof *fill);
        if (!fill)
            return EPM_ERR_NOMEM;
        memcpy(fill, h->soff, (size_t)R * sizeof *fill);
        for (int64_t i = 0; i < n; i++)
            if (dest[i] >= 0)
                memcpy(h->sbuf + (size_t)fill[dest[i]]++ * rb, rows + (size_t)i * rb, rb);
        epm_free(fill);
    }
    for (int64_t j = 0; j < h->nsent; j++)
        h->sptr[j] = h->sbuf + (size_t)j * rb;
    for (int r = 0; r < R; r++)
        if (r != me && h->scount[r]) {
            epm_link l = epm_xcomm_link(x, me, r);
            x->wire.bytes[l] += h->scount[r] * (int64_t)payload;
            x->wire.msgs[l]++;
        }
    int rc = MPI_Alltoall(h->scount, 1, MPI_INT64_T, h->rcount, 1, MPI_INT64_T, x->comm);
    if (rc != MPI_SUCCESS)
        return epm_xcomm_mpi_err(rc, "MPI_Alltoall of row counts");
    for (int r = 0; r < R; r++)
        h->roff[r + 1] = h->roff[r] + h->rcount[r];
    h->nrecv = h->roff[R];
    if (into) {
        EPM_CHECK(grow((void **)&into->rows, &into->rows_cap, (size_t)h->nrecv * rb));
        h->rbuf = (char *)into->rows;
    } else {
        h->rbuf = pool_get(x, (size_t)h->nrecv * rb);
        h->rbuf_owned = 1;
        if (!h->rbuf)
            return EPM_ERR_NOMEM;
    }
    /* staying on the rank moves nothing */
    memcpy(h->rbuf + (size_t)h->roff[me] * rb, h->sbuf + (size_t)h->soff[me] * rb, (size_t)h->scount[me] * rb);
    h->xf = (epm_xfer){.row_bytes = rb, .src_rows = h->sptr, .send_off = h->soff, .recv = h->rbuf,
                       .recv_off = h->roff, .tag = tag};
    EPM_CHECK(x->tr->ops->start(x->tr, &h->xf, &h->tq));
    h->started = 1;
    return EPM_OK;
}

static epm_status hop_wait(epm_xcomm *x, hop *h)
{
    if (!h->started)
        return EPM_OK;
    h->started = 0;
    epm_xfer_req *q = h->tq;
    h->tq = NULL;
    return x->tr->ops->wait(x->tr, q);
}

static void req_free(epm_xcomm_req *q)
{
    if (!q)
        return;
    for (int i = 0; i < 3; i++)
        hop_free(q->x, &q->h[i]);
    pool_put(q->x, q->aug);
    epm_free(q);
}

/* Tutel's 2DH: a row for rank (node m, local l) first goes to local rank l
 * of this node, which sends everything its node has for local rank l of
 * every other node in one message per node: every rank is a gateway, for
 * the rows to its own local index, so the traffic between nodes spreads
 * over all ranks and a row makes at most two hops. */
static int gateway(const epm_xcomm *x, int dst) { return x->node_of[x->rank] * x->per_node + dst % x->per_node; }

/* The gathering hop's rows are written with their header straight into
 * gateway order, so the hop sends them from there (no second pack). */
static epm_status hier_start(epm_xcomm_req *q, int64_t n, const int *dest, const float *rows)
{
    epm_xcomm *x = q->x;
    int R = x->size, W = q->width, me = x->rank, mine = x->node_of[me];
    size_t rb = HDR + (size_t)W * sizeof(float);
    char *aug = pool_get(x, (size_t)n * rb);
    int *hd = pool_get(x, (size_t)n * sizeof *hd);
    int64_t *at = epm_calloc((size_t)R + 1, sizeof *at);
    epm_status st = aug && hd && at ? EPM_OK : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n && st == EPM_OK; i++)
        at[(x->node_of[dest[i]] == mine ? dest[i] : gateway(x, dest[i])) + 1]++;
    for (int r = 0; r < R && st == EPM_OK; r++)
        at[r + 1] += at[r];
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        int g = x->node_of[dest[i]] == mine ? dest[i] : gateway(x, dest[i]);
        int64_t j = at[g]++;
        int32_t h2[2] = {me, dest[i]};
        memcpy(aug + (size_t)j * rb, h2, HDR);
        memcpy(aug + (size_t)j * rb + HDR, rows + i * W, (size_t)W * sizeof(float));
        hd[j] = g;
    }
    epm_free(at);
    if (st == EPM_OK)
        st = hop_start(x, &q->h[0], n, hd, aug, rb, q->payload, (int)(x->seq % 8192) * 4, NULL, 1);
    q->aug = aug; /* sent from until the wait */
    pool_put(x, hd);
    return st;
}

static int32_t hdr_at(const char *row, int i)
{
    int32_t v;
    memcpy(&v, row + i * sizeof(int32_t), sizeof v);
    return v;
}

/* After the gathering hop: send the rows for other nodes between nodes,
 * each straight to its destination; merge by source rank. */
static epm_status hier_finish(epm_xcomm_req *q)
{
    epm_xcomm *x = q->x;
    int R = x->size, me = x->rank, mine = x->node_of[me], W = q->width;
    hop *a = &q->h[0], *c = &q->h[1];
    size_t rb = a->rb;
    EPM_CHECK(hop_wait(x, a));
    int64_t na = a->nrecv;
    int *d = epm_malloc((size_t)(na ? na : 1) * sizeof *d);
    if (!d)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < na; i++) {
        int f = hdr_at(a->rbuf + (size_t)i * rb, 1);
        d[i] = x->node_of[f] == mine ? -1 : f;
    }
    epm_status st = hop_start(x, c, na, d, a->rbuf, rb, q->payload, a->tag + 1, NULL, 1);
    if (st == EPM_OK)
        st = hop_wait(x, c);
    epm_free(d);
    if (st != EPM_OK)
        return st;
    /* rows of one source reach this rank by one path, in its send order:
     * a stable bucket by source gives the flat path's order */
    int64_t *off = epm_calloc((size_t)R + 1, sizeof *off);
    int64_t total = 0;
    if (!off)
        return EPM_ERR_NOMEM;
    const char *part[2] = {a->rbuf, c->rbuf};
    int64_t pn[2] = {na, c->nrecv};
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < pn[p]; i++) {
            const char *row = part[p] + (size_t)i * rb;
            if (hdr_at(row, 1) == me) {
                off[hdr_at(row, 0) + 1]++;
                total++;
            }
        }
    for (int r = 0; r < R; r++)
        off[r + 1] += off[r];
    epm_xcomm_buf *o = q->out;
    st = grow((void **)&o->rows, &o->rows_cap, (size_t)total * (size_t)W * sizeof *o->rows);
    if (st == EPM_OK)
        st = grow((void **)&o->src, &o->src_cap, (size_t)total * sizeof *o->src);
    if (st != EPM_OK) {
        epm_free(off);
        return st;
    }
    float *rows = o->rows;
    int *src = o->src;
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < pn[p]; i++) {
            const char *row = part[p] + (size_t)i * rb;
            if (hdr_at(row, 1) != me)
                continue;
            int s = hdr_at(row, 0);
            int64_t at = off[s]++;
            src[at] = s;
            memcpy(rows + at * W, row + HDR, (size_t)W * sizeof *rows);
        }
    epm_free(off);
    o->n = total;
    return EPM_OK;
}

static epm_status start(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width, int payload_floats,
                        int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out, int borrow, epm_xcomm_req **req)
{
    *req = NULL;
    if (n < 0 || width < 0 || payload_floats < 0 || payload_floats > width)
        return epm_fail(EPM_ERR_INTERNAL, "exchange: %lld rows of width %d with %d payload floats", (long long)n,
                        width, payload_floats);
    for (int64_t i = 0; i < n; i++)
        if (dest[i] < 0 || dest[i] >= x->size)
            return epm_fail(EPM_ERR_INTERNAL, "exchange: row %lld goes to rank %d of %d", (long long)i, dest[i],
                            x->size);
    epm_xcomm_req *q = epm_calloc(1, sizeof *q);
    if (!q)
        return EPM_ERR_NOMEM;
    q->x = x;
    q->width = width;
    q->payload = (size_t)payload_floats * sizeof(float);
    q->nhops = x->hier ? 2 : 1;
    q->out = out ? out : &q->own;
    q->out->n = 0;
    /* counted is the eval.h model whatever the path: source -> destination */
    if (counted)
        for (int64_t i = 0; i < n; i++)
            if (dest[i] != x->rank)
                counted[epm_xcomm_link(x, x->rank, dest[i])] += (int64_t)q->payload;
    epm_status st;
    if (x->hier)
        st = hier_start(q, n, dest, rows);
    else
        st = hop_start(x, &q->h[0], n, dest, (const char *)rows, (size_t)width * sizeof(float), q->payload,
                       (int)(x->seq % 8192) * 4, q->out, borrow);
    x->seq++;
    x->wire.exchanges++;
    x->wire.hier_exchanges += x->hier;
    if (st != EPM_OK) {
        epm_xcomm_exchange_cancel(q);
        return st;
    }
    *req = q;
    return EPM_OK;
}

epm_status epm_xcomm_exchange_start_buf(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                        int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out,
                                        epm_xcomm_req **req)
{
    return start(x, n, dest, rows, width, payload_floats, counted, out, 0, req);
}

epm_status epm_xcomm_exchange_wait_buf(epm_xcomm_req *q)
{
    epm_xcomm *x = q->x;
    epm_status st;
    if (q->nhops == 2) {
        st = hier_finish(q);
    } else {
        hop *h = &q->h[0];
        epm_xcomm_buf *o = q->out;
        st = hop_wait(x, h);
        if (st == EPM_OK)
            st = grow((void **)&o->src, &o->src_cap, (size_t)h->nrecv * sizeof *o->src);
        if (st == EPM_OK) {
            for (int r = 0; r < x->size; r++)
                for (int64_t j = h->roff[r]; j < h->roff[r + 1]; j++)
                    o->src[j] = r;
            o->n = h->nrecv;
        }
    }
    epm_xcomm_exchange_cancel(q);
    return st;
}

epm_status epm_xcomm_exchange_start(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                    int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_req **req)
{
    return start(x, n, dest, rows, width, payload_floats, counted, NULL, 0, req);
}

epm_status epm_xcomm_exchange_wait(epm_xcomm_req *q, float **out_rows, int **out_src, int64_t *out_n)
{
    *out_rows = NULL;
    *out_src = NULL;
    *out_n = 0;
    epm_xcomm_buf own = q->own; /* the request goes away in the wait */
    int fresh = q->out == &q->own;
    q->own = (epm_xcomm_buf){0};
    if (fresh)
        q->out = &own;
    epm_status st = epm_xcomm_exchange_wait_buf(q);
    if (!fresh)
        return st;
    if (st != EPM_OK) {
        epm_xcomm_buf_free(&own);
        return st;
    }
    /* callers of the fresh-buffer calls free with epm_free, even with 0 rows */
    if (!own.rows)
        own.rows = epm_malloc(1);
    if (!own.src)
        own.src = epm_malloc(sizeof *own.src);
    if (!own.rows || !own.src) {
        epm_xcomm_buf_free(&own);
        return EPM_ERR_NOMEM;
    }
    *out_rows = own.rows;
    *out_src = own.src;
    *out_n = own.n;
    return EPM_OK;
}

void epm_xcomm_exchange_cancel(epm_xcomm_req *q)
{
    if (!q)
        return;
    /* posted transfers must finish before their buffers go */
    for (int i = 0; i < 3; i++)
        if (q->h[i].started)
            (void)hop_wait(q->x, &q->h[i]);
    epm_xcomm_buf_free(&q->own);
    req_free(q);
}

epm_status epm_xcomm_exchange(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                              int payload_floats, int64_t counted[EPM_LINK_COUNT], float **out_rows, int **out_src,
                              int64_t *out_n)
{
    epm_xcomm_req *q;
    *out_rows = NULL;
    *out_src = NULL;
    *out_n = 0;
    /* blocking: the rows outlive the transfer, no need to copy them */
    EPM_CHECK(start(x, n, dest, rows, width, payload_floats, counted, NULL, 1, &q));
    return epm_xcomm_exchange_wait(q, out_rows, out_src, out_n);
}

epm_status epm_xcomm_exchange_buf(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                  int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out)
{
    epm_xcomm_req *q;
    EPM_CHECK(start(x, n, dest, rows, width, payload_floats, counted, out, 1, &q));
    return epm_xcomm_exchange_wait_buf(q);
}
