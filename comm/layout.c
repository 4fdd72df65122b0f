/* Layout of one MoE layer's all-to-all: validation, replica choice, the
 * route of every row (flat, or hierarchical through one gateway per node
 * pair), and the metadata exchange that tells each rank which rows it will
 * receive, for which local experts, and which partial sums it combines. */
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"

#define MAX_K 256

/* One row's metadata as it travels with the layout exchange (not counted). */
typedef struct meta {
    uint64_t key;
    int32_t src, tok, comb, from; /* from: the serving rank (combine metadata) */
} meta;

typedef struct pool {
    char *m;        /* rows of mb bytes: meta, then ids[k], dst[k], w[k] */
    size_t mb;
    int64_t n, cap;
    int k;
} pool;

static meta *pm(const pool *p, int64_t i) { return (meta *)(p->m + (size_t)i * p->mb); }
static int32_t *pids(const pool *p, int64_t i) { return (int32_t *)(pm(p, i) + 1); }
static int32_t *pdst(const pool *p, int64_t i) { return pids(p, i) + p->k; }
static float *pw(const pool *p, int64_t i) { return (float *)(pdst(p, i) + p->k); }

static epm_status pool_reserve(pool *p, int64_t n)
{
    if (n <= p->cap)
        return EPM_OK;
    int64_t cap = p->cap ? p->cap : 64;
    while (cap < n)
        cap *= 2;
    char *m = epm_realloc(p->m, (size_t)cap * p->mb);
    if (!m)
        return EPM_ERR_NOMEM;
    p->m = m;
    p->cap = cap;
    return EPM_OK;
}

/* ---- validation (local), then agreement ---- */

static uint64_t placement_hash(const epm_placement *p, int layer)
{
    uint64_t h = 1469598103934665603ull;
    for (int e = 0; e < epm_placement_experts(p); e++) {
        const int *r;
        int n = epm_placement_replicas(p, layer, e, &r);
        for (int i = 0; i <= n; i++) {
            h ^= (uint64_t)(i < n ? r[i] + 1 : 0) + ((uint64_t)e << 32);
            h *= 1099511628211ull;
        }
    }
    return h;
}

static epm_status validate(epm_comm *c, const epm_placement *p, int layer, int64_t ntok, int k, const int32_t *ids,
                           const float *weights, const uint64_t *keys, const int *comb)
{
    if (!p)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: placement is NULL");
    if (epm_placement_ranks(p) != c->size)
        return epm_fail(EPM_ERR_MISMATCH, "a2a layout: the placement is for %d ranks but this run has %d",
                        epm_placement_ranks(p), c->size);
    if (layer < 0 || layer >= epm_placement_layers(p))
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: layer %d is not in the placement's 0..%d", layer,
                        epm_placement_layers(p) - 1);
    if (k < 1 || k > MAX_K)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: k = %d is not in 1..%d", k, MAX_K);
    if (ntok < 0 || ntok > INT32_MAX)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: token count %lld is not in 0..2^31-1", (long long)ntok);
    if (ntok > 0 && (!ids || !weights || !keys))
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: ids, weights and keys are required for %lld tokens",
                        (long long)ntok);
    int E = epm_placement_experts(p);
    for (int64_t t = 0; t < ntok; t++) {
        for (int j = 0; j < k; j++) {
            int32_t e = ids[t * k + j];
            if (e < -1 || e >= E)
                return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: layer %d token %lld choice %d: expert id %d is "
                                "not in -1..%d", layer, (long long)t, j, e, E - 1);
            const int *r;
            if (e >= 0 && epm_placement_replicas(p, layer, e, &r) == 0)
                return epm_fail(EPM_ERR_MISMATCH, "a2a layout: layer %d expert %d has no rank in the placement",
                                layer, e);
        }
        if (comb && (comb[t] < 0 || comb[t] >= c->size))
            return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: token %lld: combine rank %d is not in 0..%d",
                            (long long)t, comb[t], c->size - 1);
    }
    return EPM_OK;
}

/* Every rank must agree on k and on the placement of this layer. */
static epm_status check_same(epm_comm *c, int k, uint64_t h)
{
    int64_t v[4] = {k, -k, (int64_t)(h >> 1), -(int64_t)(h >> 1)};
    EPM_CHECK(epm_comm_allreduce_max_i64(c, v, 4));
    if (v[0] != -v[1])
        return epm_fail(EPM_ERR_MISMATCH, "a2a layout: ranks pass different k (%lld .. %lld)", (long long)-v[1],
                        (long long)v[0]);
    if (v[2] != -v[3])
        return epm_fail(EPM_ERR_MISMATCH, "a2a layout: ranks pass different placements for this layer");
    return EPM_OK;
}

/* ---- routing ---- */

static int in_list(const int *a, int n, int x)
{
    for (int i = 0; i < n; i++)
        if (a[i] == x)
            return 1;
    return 0;
}

/* distinct serving ranks of a row, ascending */
static int distinct(const int32_t *dst, int k, int *out)
{
    int n = 0;
    for (int j = 0; j < k; j++)
        if (dst[j] >= 0 && !in_list(out, n, dst[j]))
            out[n++] = dst[j];
    for (int i = 1; i < n; i++)
        for (int q = i; q > 0 && out[q - 1] > out[q]; q--) {
            int t = out[q];
            out[q] = out[q - 1];
            out[q - 1] = t;
        }
    return n;
}

/* Targets of pool row i at step s. recv_step: the step the row arrived in
 * (-1 for an initial row). Dispatch rows may go to several peers; combine
 * rows to one. */
static int targets(const epm_comm *c, int hier, int combine, const pool *p, int64_t i, int recv_step, int s,
                   int *out)
{
    const meta *m = pm(p, i);
    int me = c->rank, P = c->per_node, mynode = c->node_of[me];
    int n = 0;
    if (!combine) {
        int D[MAX_K];
        int nd = distinct(pdst(p, i), p->k, D);
        if (!hier) {
            if (s == 0 && recv_step < 0)
                for (int q = 0; q < nd; q++)
                    if (D[q] != me)
                        out[n++] = D[q];
            return n;
        }
        if (s == 0 && recv_step < 0) {
            for (int q = 0; q < nd; q++) {
                int node = c->node_of[D[q]];
                int gw = node * P + me % P;
                if (node != mynode && !in_list(out, n, gw))
                    out[n++] = gw;
            }
        } else if (s == 1 && recv_step <= 0) {
            for (int q = 0; q < nd; q++)
                if (D[q] != me && c->node_of[D[q]] == mynode)
                    out[n++] = D[q];
        }
        return n;
    }
    int cr = m->comb;
    if (cr == me)
        return 0;
    if (!hier)
        return s == 0 && recv_step < 0 ? (out[0] = cr, 1) : 0;
    int cnode = c->node_of[cr];
    if (s == 0 && recv_step < 0) {
        int hop = cnode == mynode ? cr : mynode * P + cr % P;
        if (hop != me)
            return out[0] = hop, 1;
        return 0;
    }
    /* step 1: what is left here and not on the combine rank's node goes there */
    if (s == 1 && cnode != mynode && (recv_step == 0 || (recv_step < 0 && mynode * P + cr % P == me)))
        return out[0] = cr, 1;
    return 0;
}

/* Runs the route on metadata: fills r's steps and appends received rows to pool. */
static epm_status route(epm_comm *c, int hier, int combine, pool *p, a2a_route *r, int tag0, int8_t **recv_step_out)
{
    int R = c->size, me = c->rank;
    int64_t n0 = p->n;
    r->nsteps = hier ? 2 : 1;
    r->n0 = n0;
    int8_t *rs = NULL;
    int *tgt = epm_malloc((size_t)R * sizeof *tgt);
    int *scnt = epm_calloc((size_t)R, sizeof *scnt), *rcnt = epm_calloc((size_t)R, sizeof *rcnt);
    const char **ptrs = NULL;
    epm_status st = tgt && scnt && rcnt ? EPM_OK : EPM_ERR_NOMEM;
    epm_transport *mt = NULL;
    if (st == EPM_OK)
        st = epm_transport_mpi_create(&c->comm, me, R, &mt);
    if (st == EPM_OK && !(rs = epm_malloc((size_t)(n0 ? n0 : 1))))
        st = EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n0 && st == EPM_OK; i++)
        rs[i] = -1;
    for (int s = 0; s < r->nsteps && st == EPM_OK; s++) {
        a2a_step *sp = &r->step[s];
        sp->tag = tag0 + s;
        sp->send_off = epm_calloc((size_t)R + 1, sizeof(int64_t));
        sp->recv_off = epm_calloc((size_t)R + 1, sizeof(int64_t));
        if (!sp->send_off || !sp->recv_off) {
            st = EPM_ERR_NOMEM;
            break;
        }
        int64_t np = p->n, nsend = 0;
        memset(scnt, 0, (size_t)R * sizeof *scnt);
        for (int64_t i = 0; i < np; i++) {
            int nt = targets(c, hier, combine, p, i, rs[i], s, tgt);
            for (int q = 0; q < nt; q++)
                scnt[tgt[q]]++;
            nsend += nt;
        }
        for (int q = 0; q < R; q++)
            sp->send_off[q + 1] = sp->send_off[q] + scnt[q];
        sp->send_idx = epm_malloc((size_t)(nsend ? nsend : 1) * sizeof(int64_t));
        ptrs = epm_malloc((size_t)(nsend ? nsend : 1) * sizeof *ptrs);
        if (!sp->send_idx || !ptrs) {
            st = EPM_ERR_NOMEM;
            break;
        }
        memset(scnt, 0, (size_t)R * sizeof *scnt);
        for (int64_t i = 0; i < np; i++) {
            int nt = targets(c, hier, combine, p, i, rs[i], s, tgt);
            for (int q = 0; q < nt; q++) {
                int d = tgt[q];
                sp->send_idx[sp->send_off[d] + scnt[d]++] = i;
                r->wire[epm_comm_link(c, me, d)]++;
            }
        }
        int rc = MPI_Alltoall(scnt, 1, MPI_INT, rcnt, 1, MPI_INT, c->comm);
        if (rc != MPI_SUCCESS) {
            st = epm_comm_mpi_err(rc, "MPI_Alltoall of layout row counts");
            break;
        }
        for (int q = 0; q < R; q++)
            sp->recv_off[q + 1] = sp->recv_off[q] + rcnt[q];
        int64_t nrecv = sp->recv_off[R];
        st = pool_reserve(p, np + nrecv);
        if (st != EPM_OK)
            break;
        int8_t *rs2 = epm_realloc(rs, (size_t)(np + nrecv ? np + nrecv : 1));
        if (!rs2) {
            st = EPM_ERR_NOMEM;
            break;
        }
        rs = rs2;
        for (int64_t j = 0; j < nsend; j++)
            ptrs[j] = p->m + (size_t)sp->send_idx[j] * p->mb;
        epm_xfer x = {.row_bytes = p->mb, .src_rows = ptrs, .send_off = sp->send_off,
                      .recv = p->m + (size_t)np * p->mb, .recv_off = sp->recv_off, .tag = 1000 + sp->tag};
        epm_xfer_req *q = NULL;
        st = epm_transport_start(mt, &x, &q);
        if (st == EPM_OK)
            st = mt->ops->wait(mt, q);
        for (int64_t j = 0; j < nrecv; j++)
            rs[np + j] = (int8_t)s;
        p->n = np + nrecv;
        epm_free(ptrs);
        ptrs = NULL;
    }
    r->pool = p->n;
    epm_free(ptrs);
    epm_free(tgt);
    epm_free(scnt);
    epm_free(rcnt);
    if (mt)
        mt->ops->destroy(mt);
    if (st != EPM_OK) {
        epm_free(rs);
        return st;
    }
    *recv_step_out = rs;
    return EPM_OK;
}

static void route_free(a2a_route *r)
{
    for (int s = 0; s < EPM_A2A_MAX_STEPS; s++) {
        epm_free(r->step[s].send_off);
        epm_free(r->step[s].send_idx);
        epm_free(r->step[s].recv_off);
    }
    epm_free(r->direct);
}

void epm_a2a_layout_destroy(epm_a2a_layout *l)
{
    if (!l)
        return;
    route_free(&l->disp);
    route_free(&l->comb);
    epm_free(l->row_pool);
    epm_free(l->row_key);
    epm_free(l->row_src);
    epm_free(l->exp_ids);
    epm_free(l->exp_off);
    epm_free(l->exp_rows);
    epm_free(l->exp_w);
    epm_free(l->out_key);
    epm_free(l->out_src);
    epm_free(l->out_off);
    epm_free(l->out_pool);
    epm_free(l->pool_buf);
    epm_free(l->src_ptrs);
    epm_free(l->dst_ptrs);
    epm_free(l->pack_send);
    epm_free(l->pack_recv);
    epm_transport *t = l->c->tr;
    if (t->ops->host_free) {
        if (l->host_in)
            t->ops->host_free(t, l->host_in);
        if (l->host_out)
            t->ops->host_free(t, l->host_out);
    } else {
        epm_free(l->host_in);
        epm_free(l->host_out);
    }
    epm_free(l);
}

static epm_status direct_init(a2a_route *r)
{
    int64_t n = r->pool - r->n0;
    r->direct = epm_malloc((size_t)(n ? n : 1) * sizeof *r->direct);
    if (!r->direct)
        return EPM_ERR_NOMEM;
    for (int64_t j = 0; j < n; j++)
        r->direct[j] = -1;
    return EPM_OK;
}

/* ---- sorting helpers (deterministic orders of the contract) ---- */

typedef struct ord {
    int32_t src, tok, from;
    int64_t idx;
} ord;

static int ord_cmp(const void *a, const void *b)
{
    const ord *x = a, *y = b;
    if (x->src != y->src)
        return x->src < y->src ? -1 : 1;
    if (x->tok != y->tok)
        return x->tok < y->tok ? -1 : 1;
    if (x->from != y->from)
        return x->from < y->from ? -1 : 1;
    return 0;
}

/* Would the hierarchical path move fewer (cost-weighted) bytes? Counted at
 * each source rank for its own tokens, summed over ranks. */
static epm_status choose_hier(epm_comm *c, const pool *p, int64_t ntok, int *hier)
{
    *hier = 0;
    if (c->nodes < 2 || c->per_node < 2 || c->opts.hierarchical == EPM_HIER_OFF)
        return EPM_OK;
    if (c->opts.hierarchical == EPM_HIER_ON) {
        *hier = 1;
        return EPM_OK;
    }
    int me = c->rank, P = c->per_node;
    int64_t v[4] = {0, 0, 0, 0}; /* flat intra, flat inter, hier intra, hier inter */
    for (int64_t t = 0; t < ntok; t++) {
        int D[MAX_K], nodes[MAX_K], nn = 0;
        int nd = distinct(pdst(p, t), p->k, D);
        int cr = pm(p, t)->comb;
        for (int q = 0; q < nd; q++) {
            int d = D[q], nd_ = c->node_of[d];
            if (d != me) {
                v[c->node_of[me] == nd_ ? 0 : 1]++;
                if (c->node_of[me] == nd_)
                    v[2]++;
                else if (!in_list(nodes, nn, nd_)) {
                    nodes[nn++] = nd_;
                    v[3]++;
                }
                if (c->node_of[me] != nd_ && nd_ * P + me % P != d)
                    v[2]++; /* forward inside the destination node */
            }
            if (d != cr) {
                int inter = c->node_of[d] != c->node_of[cr];
                v[inter]++;
                v[2 + inter]++;
                if (inter && c->node_of[d] * P + cr % P != d)
                    v[2]++; /* hop to the gateway inside the serving node */
            }
        }
    }
    EPM_CHECK(epm_comm_allreduce_sum_i64(c, v, 4));
    epm_cluster cl;
    epm_comm_cluster(c, &cl);
    double ratio = epm_cluster_link_cost(&cl, EPM_LINK_INTER);
    *hier = (double)v[2] + ratio * (double)v[3] < (double)v[0] + ratio * (double)v[1];
    return EPM_OK;
}

static epm_status build(epm_comm *c, epm_a2a_layout *l, const epm_placement *p, int layer, int64_t ntok, int k,
                        const int32_t *ids, const float *weights, const uint64_t *keys, const int *comb)
{
    int me = c->rank;
    pool dp = {.mb = (sizeof(meta) + 12 * (size_t)k + 7) / 8 * 8, .k = k};
    pool cp = {.mb = dp.mb, .k = k};
    int8_t *drs = NULL, *crs = NULL;
    ord *o = NULL;
    epm_status st = pool_reserve(&dp, ntok);
    for (int64_t t = 0; t < ntok && st == EPM_OK; t++) {
        meta *m = pm(&dp, t);
        memset(m, 0, dp.mb);
        m->key = keys[t];
        m->src = me;
        m->tok = (int32_t)t;
        memcpy(pids(&dp, t), ids + t * k, (size_t)k * sizeof(int32_t));
        memcpy(pw(&dp, t), weights + t * k, (size_t)k * sizeof(float));
        epm_route_pick(p, layer, ids + t * k, k, me, keys[t], pdst(&dp, t));
        int any = 0;
        for (int j = 0; j < k; j++)
            any |= pdst(&dp, t)[j] >= 0;
        /* a skipped token stays where it is (DESIGN.md) */
        m->comb = comb && any ? comb[t] : me;
        int D[MAX_K];
        int nd = distinct(pdst(&dp, t), k, D);
        for (int q = 0; q < nd; q++) {
            if (D[q] != me) {
                l->disp.model[epm_comm_link(c, me, D[q])]++;
                l->disp.model_rows++;
            }
        }
    }
    dp.n = ntok;
    if (st == EPM_OK)
        st = choose_hier(c, &dp, ntok, &l->hier);
    if (st == EPM_OK)
        st = route(c, l->hier, 0, &dp, &l->disp, 10, &drs);
    if (st != EPM_OK)
        goto out;

    /* dispatch output rows: own tokens served here, then received rows by (src, tok) */
    int64_t nrecv_final = 0;
    for (int64_t i = ntok; i < dp.n; i++)
        nrecv_final += in_list(pdst(&dp, i), k, me);
    int64_t nloc = 0;
    for (int64_t t = 0; t < ntok; t++)
        nloc += in_list(pdst(&dp, t), k, me);
    l->nlocal = nloc;
    l->nrows = nloc + nrecv_final;
    int64_t nr = l->nrows;
    l->row_pool = epm_malloc((size_t)(nr ? nr : 1) * sizeof(int64_t));
    l->row_key = epm_malloc((size_t)(nr ? nr : 1) * sizeof(uint64_t));
    l->row_src = epm_malloc((size_t)(nr ? nr : 1) * sizeof(int));
    o = epm_malloc((size_t)(dp.n ? dp.n : 1) * sizeof *o);
    if (!l->row_pool || !l->row_key || !l->row_src || !o) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    int64_t no = 0;
    for (int64_t i = ntok; i < dp.n; i++)
        if (in_list(pdst(&dp, i), k, me))
            o[no++] = (ord){pm(&dp, i)->src, pm(&dp, i)->tok, 0, i};
    qsort(o, (size_t)no, sizeof *o, ord_cmp);
    int64_t w = 0;
    for (int64_t t = 0; t < ntok; t++)
        if (in_list(pdst(&dp, t), k, me))
            l->row_pool[w++] = t;
    for (int64_t i = 0; i < no; i++)
        l->row_pool[w++] = o[i].idx;
    st = direct_init(&l->disp);
    if (st != EPM_OK)
        goto out;
    for (int64_t i = 0; i < nr; i++)
        if (l->row_pool[i] >= ntok)
            l->disp.direct[l->row_pool[i] - ntok] = i;
    for (int64_t i = 0; i < nr; i++) {
        l->row_key[i] = pm(&dp, l->row_pool[i])->key;
        l->row_src[i] = pm(&dp, l->row_pool[i])->src;
    }

    /* per local expert: rows and weights (rows ascending, so expert batches keep row order) */
    int E = epm_placement_experts(p);
    int64_t *cnt = epm_calloc((size_t)E + 1, sizeof *cnt);
    if (!cnt) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < nr; i++)
        for (int j = 0; j < k; j++)
            if (pdst(&dp, l->row_pool[i])[j] == me)
                cnt[pids(&dp, l->row_pool[i])[j]]++;
    l->nexp = 0;
    for (int e = 0; e < E; e++)
        l->nexp += cnt[e] > 0;
    l->exp_ids = epm_malloc((size_t)(l->nexp ? l->nexp : 1) * sizeof(int32_t));
    l->exp_off = epm_calloc((size_t)l->nexp + 1, sizeof(int64_t));
    int64_t tot = 0;
    for (int e = 0; e < E; e++)
        tot += cnt[e];
    l->exp_rows = epm_malloc((size_t)(tot ? tot : 1) * sizeof(int64_t));
    l->exp_w = epm_malloc((size_t)(tot ? tot : 1) * sizeof(float));
    int *slot = epm_malloc((size_t)E * sizeof *slot);
    if (!l->exp_ids || !l->exp_off || !l->exp_rows || !l->exp_w || !slot) {
        epm_free(cnt);
        epm_free(slot);
        st = EPM_ERR_NOMEM;
        goto out;
    }
    int ne = 0;
    for (int e = 0; e < E; e++) {
        slot[e] = -1;
        if (cnt[e]) {
            l->exp_ids[ne] = e;
            l->exp_off[ne + 1] = l->exp_off[ne] + cnt[e];
            slot[e] = ne++;
        }
        cnt[e] = 0;
    }
    for (int64_t i = 0; i < nr; i++)
        for (int j = 0; j < k; j++)
            if (pdst(&dp, l->row_pool[i])[j] == me) {
                int s = slot[pids(&dp, l->row_pool[i])[j]];
                int64_t at = l->exp_off[s] + cnt[s]++;
                l->exp_rows[at] = i;
                l->exp_w[at] = pw(&dp, l->row_pool[i])[j];
            }
    epm_free(cnt);
    epm_free(slot);

    /* combine: the pool starts with this rank's partial rows */
    st = pool_reserve(&cp, nr);
    if (st != EPM_OK)
        goto out;
    for (int64_t i = 0; i < nr; i++) {
        memcpy(pm(&cp, i), pm(&dp, l->row_pool[i]), dp.mb);
        pm(&cp, i)->from = me;
        if (pm(&cp, i)->comb != me) {
            l->comb.model[epm_comm_link(c, me, pm(&cp, i)->comb)]++;
            l->comb.model_rows++;
        }
    }
    cp.n = nr;
    st = route(c, l->hier, 1, &cp, &l->comb, 20, &crs);
    if (st != EPM_OK)
        goto out;
    /* contributions that end here: own partials for own-combined tokens, and
     * rows whose last hop was to this rank */
    epm_free(o);
    o = epm_malloc((size_t)(cp.n + ntok + 1) * sizeof *o);
    if (!o) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    no = 0;
    for (int64_t i = 0; i < cp.n; i++)
        if (pm(&cp, i)->comb == me)
            o[no++] = (ord){pm(&cp, i)->src, pm(&cp, i)->tok, pm(&cp, i)->from, i};
    /* skipped own tokens: an output row with no contribution */
    for (int64_t t = 0; t < ntok; t++) {
        int any = 0;
        for (int j = 0; j < k; j++)
            any |= pdst(&dp, t)[j] >= 0;
        if (!any)
            o[no++] = (ord){me, (int32_t)t, -1, -1};
    }
    qsort(o, (size_t)no, sizeof *o, ord_cmp);
    int64_t nout = 0;
    for (int64_t i = 0; i < no; i++)
        nout += i == 0 || o[i].src != o[i - 1].src || o[i].tok != o[i - 1].tok;
    l->nout = nout;
    l->out_key = epm_malloc((size_t)(nout ? nout : 1) * sizeof(uint64_t));
    l->out_src = epm_malloc((size_t)(nout ? nout : 1) * sizeof(int));
    l->out_off = epm_calloc((size_t)nout + 1, sizeof(int64_t));
    l->out_pool = epm_malloc((size_t)(no ? no : 1) * sizeof(int64_t));
    if (!l->out_key || !l->out_src || !l->out_off || !l->out_pool) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    int64_t oi = -1, nc = 0;
    for (int64_t i = 0; i < no; i++) {
        if (i == 0 || o[i].src != o[i - 1].src || o[i].tok != o[i - 1].tok) {
            oi++;
            l->out_src[oi] = o[i].src;
            l->out_key[oi] = o[i].idx >= 0 ? pm(&cp, o[i].idx)->key : keys[o[i].tok];
        }
        if (o[i].idx >= 0)
            l->out_pool[nc++] = o[i].idx;
        l->out_off[oi + 1] = nc;
    }
    /* a received partial that is its token's only one lands in the output row */
    st = direct_init(&l->comb);
    for (int64_t q = 0; q < nout && st == EPM_OK; q++)
        if (l->out_off[q + 1] - l->out_off[q] == 1 && l->out_pool[l->out_off[q]] >= nr)
            l->comb.direct[l->out_pool[l->out_off[q]] - nr] = q;
out:
    epm_free(o);
    epm_free(drs);
    epm_free(crs);
    epm_free(dp.m);
    epm_free(cp.m);
    return st;
}

epm_status epm_a2a_layout_create(epm_comm *c, const epm_placement *p, int layer, int64_t ntok, int k,
                                 const int32_t *ids, const float *weights, const uint64_t *keys,
                                 const int *combine_rank, epm_a2a_layout **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: out is NULL");
    *out = NULL;
    if (!c)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a layout: comm is NULL");
    epm_status st = validate(c, p, layer, ntok, k, ids, weights, keys, combine_rank);
    EPM_CHECK(epm_comm_agree(c, st, NULL));
    EPM_CHECK(epm_comm_agree(c, check_same(c, k, placement_hash(p, layer)), NULL));
    epm_a2a_layout *l = epm_calloc(1, sizeof *l);
    st = l ? EPM_OK : EPM_ERR_NOMEM;
    st = epm_comm_agree(c, st, NULL);
    if (st != EPM_OK) {
        epm_free(l);
        return st;
    }
    l->c = c;
    /* an allocation failing on one rank mid-way fails the others at their
     * next collective step, not with a hang: each step is guarded below */
    st = build(c, l, p, layer, ntok, k, ids, weights, keys, combine_rank);
    st = epm_comm_agree(c, st, NULL);
    if (st != EPM_OK) {
        epm_a2a_layout_destroy(l);
        return st;
    }
    *out = l;
    return EPM_OK;
}

int64_t epm_a2a_rows(const epm_a2a_layout *l) { return l->nrows; }
int64_t epm_a2a_local_rows(const epm_a2a_layout *l) { return l->nlocal; }
const uint64_t *epm_a2a_row_keys(const epm_a2a_layout *l) { return l->row_key; }
const int *epm_a2a_row_src(const epm_a2a_layout *l) { return l->row_src; }
int epm_a2a_experts(const epm_a2a_layout *l, const int32_t **expert_ids)
{
    *expert_ids = l->exp_ids;
    return l->nexp;
}
int64_t epm_a2a_expert_rows(const epm_a2a_layout *l, int i, const int64_t **rows, const float **weights)
{
    if (i < 0 || i >= l->nexp) {
        *rows = NULL;
        *weights = NULL;
        return 0;
    }
    *rows = l->exp_rows + l->exp_off[i];
    *weights = l->exp_w + l->exp_off[i];
    return l->exp_off[i + 1] - l->exp_off[i];
}
int64_t epm_a2a_out_rows(const epm_a2a_layout *l) { return l->nout; }
const uint64_t *epm_a2a_out_keys(const epm_a2a_layout *l) { return l->out_key; }
const int *epm_a2a_out_src(const epm_a2a_layout *l) { return l->out_src; }
int epm_a2a_hierarchical(const epm_a2a_layout *l) { return l->hier; }
