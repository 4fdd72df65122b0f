/* Row exchange: flat (one hop, source -> destination) and hierarchical
 * (an intra-node hop that gathers the rows for each destination local rank,
 * then one hop between nodes straight to the destination: Tutel's 2DH),
 * both split into start and wait; and the multi-destination exchange (a row
 * given once for several ranks: replicated on the flat path, sent between
 * nodes once per destination node on the hierarchical one). Every hop packs its
 * rows by destination, exchanges the per-peer counts, copies its own rows
 * and leaves the rest to the transport table (transport.h: alltoallv, p2p,
 * staged, NCCL). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hier_route.h"
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
    int nhops;               /* 1 flat, 2 hierarchical, 3 hierarchical multi-destination */
    epm_xcomm_buf *out, own; /* own: for the calls that hand out fresh buffers */
    char *aug;               /* hierarchical: the gathering hop's rows */
    char *maug[2];           /* multi-destination: the rows sent by hops 1 and 2 */
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

void epm_xcomm_pool_trim(epm_xcomm *x)
{
    for (int i = 0; i < (int)(sizeof x->pool / sizeof *x->pool); i++)
        if (!x->pool[i].used) {
            epm_free(x->pool[i].p);
            memset(&x->pool[i], 0, sizeof x->pool[i]);
        }
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

/* A rank that failed before one of an exchange's hops (out of memory, or
 * invalid arguments from its caller) still takes part in the hop's counts
 * phase, with its failure instead of counts (epm_xcomm_counts), so that
 * every rank returns from the exchange, the others with the cause, instead
 * of waiting for it. This rank keeps its own error, also where a lower
 * rank's failure is the one the others hear of. */
static epm_status hop_poison(epm_xcomm *x, epm_status st)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", epm_last_error());
    (void)epm_xcomm_counts(x, st, NULL, NULL);
    return epm_fail(st, "rank %d: %s", x->rank, why); /* (as an agreement names its origin) */
}

/* into: receive straight into the caller's buffer (grown) instead of scratch.
 * borrow: the rows stay valid until the wait, so rows already grouped by
 * destination (a combine sending back in received order, or a dispatch
 * built by destination) are sent from where they are, without packing. */
static epm_status hop_start(epm_xcomm *x, hop *h, int64_t n, const int *dest, const char *rows, size_t rb,
                            size_t payload, int tag, epm_xcomm_buf *into, int borrow, const int64_t *rowmap)
{
    int R = x->size, me = x->rank;
    memset(h, 0, sizeof *h);
    h->rb = rb;
    h->tag = tag;
    /* the counts and offsets, then which peers' rows rode with the counts, each way */
    const size_t cbytes = (4 * (size_t)R + 2) * sizeof(int64_t);
    h->scount = pool_get(x, cbytes + 2 * (size_t)R);
    if (!h->scount)
        return hop_poison(x, EPM_ERR_NOMEM);
    memset(h->scount, 0, cbytes + 2 * (size_t)R);
    unsigned char *rode = (unsigned char *)h->scount + cbytes, *got = rode + R;
    h->rcount = h->scount + R;
    h->soff = h->scount + 2 * R;
    h->roff = h->soff + R + 1;
    for (int64_t i = 0; i < n; i++)
        if (dest[i] >= 0)
            h->scount[dest[i]]++;
    for (int r = 0; r < R; r++)
        h->soff[r + 1] = h->soff[r] + h->scount[r];
    h->nsent = h->soff[R];
    borrow = borrow && !rowmap;
    for (int64_t i = 1; i < n && borrow; i++)
        borrow = dest[i] >= dest[i - 1];
    borrow = borrow && (n == 0 || dest[0] >= 0);
    h->sbuf_borrowed = borrow;
    h->sbuf = borrow ? (char *)rows : pool_get(x, (size_t)h->nsent * rb);
    h->sptr = pool_get(x, (size_t)h->nsent * sizeof *h->sptr);
    if (!h->sbuf || !h->sptr)
        return hop_poison(x, EPM_ERR_NOMEM);
    if (!borrow) {
        int64_t *fill = epm_malloc((size_t)R * sizeof *fill);
        if (!fill)
            return hop_poison(x, EPM_ERR_NOMEM);
        memcpy(fill, h->soff, (size_t)R * sizeof *fill);
        for (int64_t i = 0; i < n; i++)
            if (dest[i] >= 0)
                memcpy(h->sbuf + (size_t)fill[dest[i]]++ * rb, rows + (size_t)(rowmap ? rowmap[i] : i) * rb, rb);
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
    /* Room to receive into, set aside before the counts: a rank that found
     * no room after them could fail alone, so that every rank would have to
     * agree again before sending. The counts phase tells every rank what all
     * send in all and the room each has; where every rank's room covers it
     * (decode's steady state: room for what the last hops moved), nobody can
     * fail after the counts and that agreement is left out. */
    const size_t want = epm_xcomm_room_want(&x->hop_room);
    int64_t room = -1;
    if (x->tr->ops->reserve && !x->no_room) {
        epm_status rst = x->tr->ops->reserve(x->tr);
        if (rst == EPM_OK && into) {
            rst = grow((void **)&into->rows, &into->rows_cap, want);
            room = (int64_t)(into->rows_cap / rb);
        } else if (rst == EPM_OK && want) {
            h->rbuf = pool_get(x, want);
            h->rbuf_owned = h->rbuf != NULL;
            rst = h->rbuf ? EPM_OK : EPM_ERR_NOMEM;
            room = (int64_t)(want / rb);
        }
        if (rst != EPM_OK)
            return hop_poison(x, rst);
    }
    /* Rows ride with the counts where they fit (host transports: a device
     * transport's rows are not where the CPU packs them) */
    int64_t all = 0;
    int fit = 0, data = 1;
    const epm_xcomm_rows ride = {h->sbuf, h->soff, rb};
    EPM_CHECK(epm_xcomm_counts_rows(x, EPM_OK, h->scount, h->rcount, room, x->tr->ops->device ? NULL : &ride, rode,
                                    got, &fit, &all, &data));
    epm_xcomm_room_note(&x->hop_room, (size_t)all * rb);
    for (int r = 0; r < R; r++)
        h->roff[r + 1] = h->roff[r] + h->rcount[r];
    h->nrecv = h->roff[R];
    fit = fit && all <= INT_MAX; /* (a transport's counts are int) */
    epm_status ast = EPM_OK;
    if (into) {
        ast = grow((void **)&into->rows, &into->rows_cap, (size_t)h->nrecv * rb);
        h->rbuf = (char *)into->rows;
    } else if (!h->rbuf || want < (size_t)h->nrecv * rb) {
        pool_put(x, h->rbuf);
        h->rbuf = pool_get(x, (size_t)h->nrecv * rb);
        h->rbuf_owned = 1;
        ast = h->rbuf ? EPM_OK : EPM_ERR_NOMEM;
    }
    if (ast == EPM_OK)
        for (int r = 0; r < R; r++)
            if (got[r])
                memcpy(h->rbuf + (size_t)h->roff[r] * rb, epm_xcomm_rode_rows(x, r), (size_t)h->rcount[r] * rb);
    x->wire.hops++;
    if (!data) {
        /* every row rode with its counts: no step, and nobody waits for this
         * rank in this hop, so a failure here is its own (the next counts
         * phase, an agreement or an exchange, tells the others) */
        if (ast != EPM_OK)
            return ast;
        x->wire.hops_fused++;
        memcpy(h->rbuf + (size_t)h->roff[me] * rb, h->sbuf + (size_t)h->soff[me] * rb, (size_t)h->scount[me] * rb);
        return EPM_OK;
    }
    h->xf = (epm_xfer){.row_bytes = rb, .src_rows = h->sptr, .send_off = h->soff, .recv = h->rbuf,
                       .recv_off = h->roff, .skip_send = rode, .skip_recv = got, .tag = tag};
    if (ast == EPM_OK)
        ast = x->tr->ops->prepare(x->tr, &h->xf, &h->tq);
    if (fit && ast != EPM_OK) /* (room and a reserved step: prepare cannot fail but by a bug) */
        return epm_fail(EPM_ERR_INTERNAL, "rank %d: an exchange's step failed after its ranks found room: %s", me,
                        epm_last_error());
    /* receive buffers and the transport's step: every rank has its own, or
     * nobody sends */
    int first = ast == EPM_OK ? R : me;
    x->wire.hops_agreed += !fit;
    int rc = fit ? MPI_SUCCESS : MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, x->comm);
    if (rc != MPI_SUCCESS || first < R) {
        if (h->tq)
            x->tr->ops->release(x->tr, h->tq);
        h->tq = NULL;
        if (rc != MPI_SUCCESS)
            return epm_xcomm_mpi_err(rc, "MPI_Allreduce of receive-buffer status");
        return first == me ? ast : epm_fail(EPM_ERR_REMOTE, "rank %d could not prepare its part of an exchange of "
                                            "rows", first);
    }
    if (x->tr->ops->post) {
        epm_status pst = x->tr->ops->post(x->tr, h->tq);
        if (pst != EPM_OK) {
            h->tq = NULL; /* freed by the failed post */
            return pst;
        }
    }
    /* staying on the rank moves nothing */
    memcpy(h->rbuf + (size_t)h->roff[me] * rb, h->sbuf + (size_t)h->soff[me] * rb, (size_t)h->scount[me] * rb);
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
    pool_put(q->x, q->maug[0]);
    pool_put(q->x, q->maug[1]);
    epm_free(q);
}

/* Tutel's 2DH: a row for rank (node m, local l) first goes to local rank l
 * of this node, which sends everything its node has for local rank l of
 * every other node in one message per node: every rank is a gateway, for
 * the rows to its own local index, so the traffic between nodes spreads
 * over all ranks and a row makes at most two hops.
 * The gathering hop's rows are written with their header straight into
 * gateway order, so the hop sends them from there (no second pack). */
static epm_status hier_start(epm_xcomm_req *q, int64_t n, const int *dest, const float *rows)
{
    epm_xcomm *x = q->x;
    int R = x->size, W = q->width, me = x->rank;
    size_t rb = HDR + (size_t)W * sizeof(float);
    char *aug = pool_get(x, (size_t)n * rb);
    int *hd = pool_get(x, (size_t)n * sizeof *hd);
    int64_t *at = epm_calloc((size_t)R + 1, sizeof *at);
    epm_status st = aug && hd && at ? EPM_OK : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n && st == EPM_OK; i++)
        at[epm_hier_gateway(me, x->per_node, dest[i]) + 1]++;
    for (int r = 0; r < R && st == EPM_OK; r++)
        at[r + 1] += at[r];
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        int g = epm_hier_gateway(me, x->per_node, dest[i]);
        int64_t j = at[g]++;
        int32_t h2[2] = {me, dest[i]};
        memcpy(aug + (size_t)j * rb, h2, HDR);
        memcpy(aug + (size_t)j * rb + HDR, rows + i * W, (size_t)W * sizeof(float));
        hd[j] = g;
    }
    epm_free(at);
    if (st == EPM_OK)
        st = hop_start(x, &q->h[0], n, hd, aug, rb, q->payload, (int)(x->seq % 8192) * 4, NULL, 1, NULL);
    else
        st = hop_poison(x, st);
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
        return hop_poison(x, EPM_ERR_NOMEM); /* the others are in the hop between nodes */
    for (int64_t i = 0; i < na; i++) {
        int f = hdr_at(a->rbuf + (size_t)i * rb, 1);
        d[i] = x->node_of[f] == mine ? -1 : f;
    }
    epm_status st = hop_start(x, c, na, d, a->rbuf, rb, q->payload, a->tag + 1, NULL, 1, NULL);
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

/* ---- multi-destination rows (exchange_multi) ----
 *
 * Hierarchical path, three hops, every rank taking part in each:
 *   hop 0 (intra): a row goes once to each of its destinations on this node
 *     and, for each other node m it has destinations on, once to this
 *     node's gateway for m: local rank c of this node, where c is the local
 *     index of one of the row's destinations on m (this rank's own local
 *     index when it is one of them, so the hop is a copy; else one already
 *     receiving the row in this hop; else one by rotation);
 *   hop 1 (inter): the gateway (local c) sends the row once to rank (m, c),
 *     itself a destination, with the list of the row's destinations on m;
 *   hop 2 (intra): (m, c) fans the row out to the others of that list.
 * A copy of a row carries in its header the destinations it still serves
 * (a bitmask over ranks), so one copy to the gateway serves several nodes,
 * and a gateway that is itself a destination gets one copy, not two. A row
 * crosses between nodes once per destination node. Each rank takes the
 * copies that name it; sorted by (source rank, source row) they are exactly
 * what the flat exchange of the replicated rows delivers. */

/* int32 source rank, int32 0, int64 row index at the source, the mask */
static size_t mhdr_bytes(const epm_xcomm *x) { return 16 + 4 * (size_t)((x->size + 31) / 32); }

static void mhdr_write(char *p, int32_t src, int64_t idx, const uint32_t *mask, int mw)
{
    int32_t h[2] = {src, 0};
    memcpy(p, h, sizeof h);
    memcpy(p + 8, &idx, sizeof idx);
    memcpy(p + 16, mask, (size_t)mw * sizeof *mask);
}

/* Copies to send in one hop: copy k goes to rank tgt[k], is input row
 * row[k] and serves the ranks of mask[k]. */
typedef struct memit {
    int64_t n;
    int *tgt;
    int64_t *row;
    uint32_t *mask; /* [n][mw] */
} memit;

typedef struct mscratch {
    uint32_t *tm;   /* [R][mw]: per next rank, the destinations its copy of the current row serves */
    int64_t *seen;  /* [R]: 1 + the last input row that has a copy for this rank */
    int *touched;   /* [R]: next ranks of the current row, in first-use order */
    int nt;
} mscratch;

static void memit_free(epm_xcomm *x, memit *e, mscratch *m)
{
    pool_put(x, e->tgt);
    pool_put(x, e->row);
    pool_put(x, e->mask);
    epm_free(m->tm);
    epm_free(m->seen);
    epm_free(m->touched);
    memset(e, 0, sizeof *e);
    memset(m, 0, sizeof *m);
}

static epm_status memit_alloc(epm_xcomm *x, memit *e, mscratch *m, int64_t cap)
{
    int R = x->size, mw = (R + 31) / 32;
    memset(e, 0, sizeof *e);
    memset(m, 0, sizeof *m);
    e->tgt = pool_get(x, (size_t)cap * sizeof *e->tgt);
    e->row = pool_get(x, (size_t)cap * sizeof *e->row);
    e->mask = pool_get(x, (size_t)cap * (size_t)mw * sizeof *e->mask);
    m->tm = epm_calloc((size_t)R * (size_t)mw, sizeof *m->tm);
    m->seen = epm_calloc((size_t)R, sizeof *m->seen);
    m->touched = epm_malloc((size_t)R * sizeof *m->touched);
    if (!e->tgt || !e->row || !e->mask || !m->tm || !m->seen || !m->touched) {
        memit_free(x, e, m);
        return EPM_ERR_NOMEM;
    }
    return EPM_OK;
}

/* the copy of input row i for rank t also serves rank d */
static void mserve(const epm_xcomm *x, mscratch *m, int64_t i, int t, int d)
{
    int mw = (x->size + 31) / 32;
    if (m->seen[t] != i + 1) {
        m->seen[t] = i + 1;
        m->touched[m->nt++] = t;
    }
    m->tm[(size_t)t * mw + d / 32] |= 1u << (d % 32);
}

/* the current row's copies, one per next rank */
static void memit_row(const epm_xcomm *x, memit *e, mscratch *m, int64_t i)
{
    int mw = (x->size + 31) / 32;
    for (int a = 0; a < m->nt; a++) {
        int t = m->touched[a];
        e->tgt[e->n] = t;
        e->row[e->n] = i;
        memcpy(e->mask + (size_t)e->n * mw, m->tm + (size_t)t * mw, (size_t)mw * sizeof *e->mask);
        memset(m->tm + (size_t)t * mw, 0, (size_t)mw * sizeof *m->tm);
        e->n++;
    }
    m->nt = 0;
}

/* Packs the copies by next rank (stable) and starts hop hopi. Input row i:
 * header at hdr + i * stride (NULL: the caller's rows, source this rank,
 * index i), row bytes at pay + i * stride. */
static epm_status mpack(epm_xcomm_req *q, int hopi, const memit *e, const char *hdr, const char *pay, size_t stride,
                        char **aug_out)
{
    epm_xcomm *x = q->x;
    int R = x->size, mw = (R + 31) / 32;
    size_t hb = mhdr_bytes(x), wb = (size_t)q->width * sizeof(float), rb = hb + wb;
    char *aug = pool_get(x, (size_t)e->n * rb);
    int *hd = pool_get(x, (size_t)e->n * sizeof *hd);
    int64_t *at = epm_calloc((size_t)R + 1, sizeof *at);
    *aug_out = aug;
    if (!aug || !hd || !at) {
        pool_put(x, hd);
        epm_free(at);
        return hop_poison(x, EPM_ERR_NOMEM);
    }
    for (int64_t k = 0; k < e->n; k++)
        at[e->tgt[k] + 1]++;
    for (int r = 0; r < R; r++)
        at[r + 1] += at[r];
    for (int64_t k = 0; k < e->n; k++) {
        int64_t j = at[e->tgt[k]]++, i = e->row[k];
        int32_t src = x->rank;
        int64_t idx = i;
        if (hdr) {
            memcpy(&src, hdr + (size_t)i * stride, sizeof src);
            memcpy(&idx, hdr + (size_t)i * stride + 8, sizeof idx);
        }
        mhdr_write(aug + (size_t)j * rb, src, idx, e->mask + (size_t)k * mw, mw);
        memcpy(aug + (size_t)j * rb + hb, pay + (size_t)i * stride, wb);
        hd[j] = e->tgt[k];
    }
    epm_free(at);
    /* hops 1 and 2 start in the wait, after later exchanges may have started:
     * their tags follow hop 0's */
    int tag = hopi ? q->h[0].tag + hopi : (int)(x->seq % 8192) * 4;
    epm_status st = hop_start(x, &q->h[hopi], e->n, hd, aug, rb, q->payload, tag, NULL, 1, NULL);
    pool_put(x, hd);
    return st;
}

/* Hop 0 from the caller's rows (validated; ne valid destinations in all):
 * each row's gateways are epm_hier_gateways' (keys NULL: the row's index) */
static epm_status mhier_start(epm_xcomm_req *q, int64_t n, int slots, const int *dest, const uint64_t *keys,
                              const float *rows, int64_t ne)
{
    epm_xcomm *x = q->x;
    memit e;
    mscratch m;
    int *gw = epm_malloc((size_t)(slots ? slots : 1) * sizeof *gw);
    epm_status ast = gw ? memit_alloc(x, &e, &m, ne) : EPM_ERR_NOMEM;
    if (ast != EPM_OK) {
        epm_free(gw);
        return hop_poison(x, ast);
    }
    for (int64_t i = 0; i < n && slots > 0; i++) { /* (no slots: no copies, and dest may be NULL) */
        const int *dr = dest + (size_t)i * slots;
        epm_hier_gateways(x->rank, x->per_node, slots, dr, keys ? keys[i] : (uint64_t)i, gw);
        for (int j = 0; j < slots; j++)
            if (dr[j] >= 0)
                mserve(x, &m, i, gw[j], dr[j]);
        memit_row(x, &e, &m, i);
    }
    epm_free(gw);
    epm_status st = mpack(q, 0, &e, NULL, (const char *)rows, (size_t)q->width * sizeof(float), &q->aug);
    memit_free(x, &e, &m);
    return st;
}

/* A copy that reached its destination: where its row is, for the final sort. */
typedef struct mgot {
    int64_t idx;
    int32_t src;
    const char *row;
} mgot;

typedef struct mgots {
    mgot *v;
    int64_t n, cap;
} mgots;

static int mgot_cmp(const void *a, const void *b)
{
    const mgot *p = a, *r = b;
    if (p->src != r->src)
        return p->src < r->src ? -1 : 1;
    return (p->idx > r->idx) - (p->idx < r->idx);
}

/* After hop hopi - 1: take the copies that name this rank, send the rest on
 * in hop hopi (1: to (node, this local index) for other nodes; 2: straight
 * to ranks of this node). hopi 3: nothing may be left. */
static epm_status mforward(epm_xcomm_req *q, int hopi, mgots *got)
{
    epm_xcomm *x = q->x;
    int R = x->size, mw = (R + 31) / 32, P = x->per_node, me = x->rank, mine = x->node_of[me];
    const hop *in = &q->h[hopi - 1];
    size_t hb = mhdr_bytes(x), rb = in->rb;
    int64_t nin = in->nrecv, ne = 0;
    uint32_t *mk = epm_malloc((size_t)mw * sizeof *mk);
    if (!mk)
        return hopi < 3 ? hop_poison(x, EPM_ERR_NOMEM) : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < nin; i++) {
        memcpy(mk, in->rbuf + (size_t)i * rb + 16, (size_t)mw * sizeof *mk);
        for (int w = 0; w < mw; w++)
            ne += __builtin_popcount(mk[w]);
    }
    if (got->n + nin > got->cap) {
        int64_t cap = got->cap * 2 > got->n + nin ? got->cap * 2 : got->n + nin;
        mgot *v = epm_realloc(got->v, (size_t)(cap ? cap : 1) * sizeof *v);
        if (!v) {
            epm_free(mk);
            return hopi < 3 ? hop_poison(x, EPM_ERR_NOMEM) : EPM_ERR_NOMEM;
        }
        got->v = v;
        got->cap = cap;
    }
    memit e = {0};
    mscratch m = {0};
    epm_status st = hopi < 3 ? memit_alloc(x, &e, &m, ne) : EPM_OK;
    for (int64_t i = 0; i < nin && st == EPM_OK; i++) {
        const char *row = in->rbuf + (size_t)i * rb;
        memcpy(mk, row + 16, (size_t)mw * sizeof *mk);
        if (mk[me / 32] >> (me % 32) & 1u) {
            mgot *gv = &got->v[got->n++];
            memcpy(&gv->src, row, sizeof gv->src);
            memcpy(&gv->idx, row + 8, sizeof gv->idx);
            gv->row = row + hb;
            mk[me / 32] &= ~(1u << (me % 32));
        }
        for (int w = 0; w < mw && st == EPM_OK; w++)
            for (uint32_t b = mk[w]; b && st == EPM_OK; b &= b - 1) {
                int d = w * 32 + __builtin_ctz(b);
                if (hopi == 3)
                    st = epm_fail(EPM_ERR_INTERNAL, "exchange_multi: rank %d holds a row for rank %d after the "
                                  "last hop", me, d);
                else
                    mserve(x, &m, i, x->node_of[d] == mine ? d : x->node_of[d] * P + me % P, d);
            }
        if (hopi < 3)
            memit_row(x, &e, &m, i);
    }
    epm_free(mk);
    if (hopi == 3)
        return st;
    if (st == EPM_OK)
        st = mpack(q, hopi, &e, in->rbuf, in->rbuf + hb, rb, &q->maug[hopi - 1]);
    else if (st == EPM_ERR_NOMEM)
        st = hop_poison(x, st);
    memit_free(x, &e, &m);
    return st;
}

static epm_status mhier_finish(epm_xcomm_req *q)
{
    epm_xcomm *x = q->x;
    int W = q->width;
    mgots got = {0};
    epm_status st = EPM_OK;
    for (int h = 0; h < 3 && st == EPM_OK; h++) {
        st = hop_wait(x, &q->h[h]);
        if (st == EPM_OK)
            st = mforward(q, h + 1, &got);
    }
    epm_xcomm_buf *o = q->out;
    if (st == EPM_OK)
        st = grow((void **)&o->rows, &o->rows_cap, (size_t)got.n * (size_t)W * sizeof *o->rows);
    if (st == EPM_OK)
        st = grow((void **)&o->src, &o->src_cap, (size_t)got.n * sizeof *o->src);
    if (st == EPM_OK) {
        if (got.n > 1)
            qsort(got.v, (size_t)got.n, sizeof *got.v, mgot_cmp);
        for (int64_t i = 0; i < got.n; i++) {
            memcpy(o->rows + i * W, got.v[i].row, (size_t)W * sizeof *o->rows);
            o->src[i] = got.v[i].src;
        }
        o->n = got.n;
    }
    epm_free(got.v);
    return st;
}

/* A new request: a collective is owed even when this fails (hop_poison). */
static epm_status req_new(epm_xcomm *x, int width, int payload_floats, int nhops, epm_xcomm_buf *out,
                          epm_xcomm_req **req)
{
    epm_xcomm_req *q = epm_calloc(1, sizeof *q);
    if (!q)
        return hop_poison(x, EPM_ERR_NOMEM);
    q->x = x;
    q->width = width;
    q->payload = (size_t)payload_floats * sizeof(float);
    q->nhops = nhops;
    q->out = out ? out : &q->own;
    q->out->n = 0;
    *req = q;
    return EPM_OK;
}

static epm_status mstart(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                         const float *rows, int width,
                         int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out, epm_xcomm_req **req)
{
    *req = NULL;
    /* counted first, also when this rank fails below: the tags of later
     * exchanges derive from seq and must match on every rank */
    x->seq++;
    x->wire.exchanges++;
    x->wire.hier_exchanges += x->hier;
    /* a caller's bug on one rank fails the exchange on every rank (poisoned
     * counts), never leaves the others waiting in it */
    if (n < 0 || slots < 0 || width < 0 || payload_floats < 0 || payload_floats > width)
        return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange_multi: %lld rows of width %d with %d payload "
                                      "floats and %d destination slots", (long long)n, width, payload_floats, slots));
    if (n > 0 && slots > 0 && (!dest || (width > 0 && !rows)))
        return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange_multi: %lld rows without %s", (long long)n,
                                      dest ? "rows" : "destinations"));
    int64_t ne = 0;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < slots; j++) {
            int d = dest[(size_t)i * slots + j];
            if (d < -1 || d >= x->size)
                return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange_multi: row %lld goes to rank %d of %d",
                                              (long long)i, d, x->size));
            for (int a = 0; a < j && d >= 0; a++)
                if (dest[(size_t)i * slots + a] == d)
                    return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange_multi: row %lld lists rank %d "
                                                  "twice", (long long)i, d));
            ne += d >= 0;
        }
    epm_xcomm_req *q = NULL;
    EPM_CHECK(req_new(x, width, payload_floats, x->hier ? 3 : 1, out, &q));
    /* counted: the eval.h model, as if each row were sent once per destination rank */
    if (counted)
        for (int64_t k = 0; k < n * slots; k++)
            if (dest[k] >= 0 && dest[k] != x->rank)
                counted[epm_xcomm_link(x, x->rank, dest[k])] += (int64_t)q->payload;
    epm_status st;
    if (x->hier) {
        st = mhier_start(q, n, slots, dest, keys, rows, ne);
    } else {
        /* flat: one copy per destination, packed straight from the caller's rows */
        int *de = pool_get(x, (size_t)ne * sizeof *de);
        int64_t *map = pool_get(x, (size_t)ne * sizeof *map);
        st = de && map ? EPM_OK : EPM_ERR_NOMEM;
        int64_t k = 0;
        for (int64_t i = 0; i < n && st == EPM_OK; i++)
            for (int j = 0; j < slots; j++)
                if (dest[(size_t)i * slots + j] >= 0) {
                    de[k] = dest[(size_t)i * slots + j];
                    map[k++] = i;
                }
        if (st == EPM_OK)
            st = hop_start(x, &q->h[0], ne, de, (const char *)rows, (size_t)width * sizeof(float), q->payload,
                           (int)(x->seq % 8192) * 4, q->out, 0, map);
        else
            st = hop_poison(x, st);
        pool_put(x, de);
        pool_put(x, map);
    }
    if (st != EPM_OK) {
        epm_xcomm_exchange_cancel(q);
        return st;
    }
    *req = q;
    return EPM_OK;
}

static epm_status start(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width, int payload_floats,
                        int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out, int borrow, epm_xcomm_req **req)
{
    *req = NULL;
    /* counted first, also when this rank fails below: the tags of later
     * exchanges derive from seq and must match on every rank */
    x->seq++;
    x->wire.exchanges++;
    x->wire.hier_exchanges += x->hier;
    if (n < 0 || width < 0 || payload_floats < 0 || payload_floats > width)
        return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange: %lld rows of width %d with %d payload floats",
                                      (long long)n, width, payload_floats));
    if (n > 0 && (!dest || (width > 0 && !rows)))
        return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange: %lld rows without %s", (long long)n,
                                      dest ? "rows" : "destinations"));
    for (int64_t i = 0; i < n; i++)
        if (dest[i] < 0 || dest[i] >= x->size)
            return hop_poison(x, epm_fail(EPM_ERR_INVALID_ARG, "exchange: row %lld goes to rank %d of %d",
                                          (long long)i, dest[i], x->size));
    epm_xcomm_req *q = NULL;
    EPM_CHECK(req_new(x, width, payload_floats, x->hier ? 2 : 1, out, &q));
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
                       (int)(x->seq % 8192) * 4, q->out, borrow, NULL);
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

epm_status epm_xcomm_exchange_start_lent(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                         int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out,
                                         epm_xcomm_req **req)
{
    return start(x, n, dest, rows, width, payload_floats, counted, out, 1, req);
}

epm_status epm_xcomm_exchange_wait_buf(epm_xcomm_req *q)
{
    epm_xcomm *x = q->x;
    epm_status st;
    if (q->nhops == 3) {
        st = mhier_finish(q);
    } else if (q->nhops == 2) {
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

epm_status epm_xcomm_exchange_multi_start_buf(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                              const float *rows, int width, int payload_floats,
                                              int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out, epm_xcomm_req **req)
{
    return mstart(x, n, slots, dest, keys, rows, width, payload_floats, counted, out, req);
}

epm_status epm_xcomm_exchange_multi_start(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                          const float *rows, int width, int payload_floats,
                                          int64_t counted[EPM_LINK_COUNT], epm_xcomm_req **req)
{
    return mstart(x, n, slots, dest, keys, rows, width, payload_floats, counted, NULL, req);
}

epm_status epm_xcomm_exchange_multi(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                    const float *rows, int width, int payload_floats, int64_t counted[EPM_LINK_COUNT],
                                    float **out_rows, int **out_src, int64_t *out_n)
{
    epm_xcomm_req *q;
    *out_rows = NULL;
    *out_src = NULL;
    *out_n = 0;
    EPM_CHECK(mstart(x, n, slots, dest, keys, rows, width, payload_floats, counted, NULL, &q));
    return epm_xcomm_exchange_wait(q, out_rows, out_src, out_n);
}

epm_status epm_xcomm_exchange_multi_buf(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                        const float *rows, int width, int payload_floats,
                                        int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out)
{
    epm_xcomm_req *q;
    EPM_CHECK(mstart(x, n, slots, dest, keys, rows, width, payload_floats, counted, out, &q));
    return epm_xcomm_exchange_wait_buf(q);
}
