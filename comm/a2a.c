/* Dispatch and combine: run a layout's route on payload rows, split into
 * start and wait so that the runtime can overlap them with compute. Device
 * buffers are staged through host memory here when the transport asks for
 * it; the summation of combine is fixed (ascending serving rank, f32
 * accumulation), so every transport and path gives the same bits. */
#include <string.h>

#include "comm_internal.h"
#include "half.h"

static epm_status grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return EPM_OK;
    char *b = epm_realloc(*buf, need);
    if (!b)
        return EPM_ERR_NOMEM;
    *buf = b;
    *cap = need;
    return EPM_OK;
}

/* staging buffers come from the transport (pinned memory for device copies) */
static epm_status grow_host(epm_transport *t, char **buf, size_t *cap, size_t need)
{
    if (!t->ops->host_alloc)
        return grow(buf, cap, need);
    if (need <= *cap)
        return EPM_OK;
    char *b = t->ops->host_alloc(t, need);
    if (!b)
        return epm_fail(EPM_ERR_CUDA, "staging: %zu bytes of pinned host memory could not be allocated", need);
    if (*buf)
        t->ops->host_free(t, *buf);
    *buf = b;
    *cap = need;
    return EPM_OK;
}

static epm_status check_args(epm_a2a_layout *l, epm_dtype dt, int hidden, const char *what)
{
    if (!l)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: layout is NULL", what);
    if (l->busy)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: the layout has a %s in flight (call its _wait first)", what,
                        l->busy == 1 ? "dispatch" : "combine");
    if (dt != EPM_DTYPE_F32 && dt != EPM_DTYPE_BF16)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: hidden rows of %s: only F32 and BF16 move", what,
                        epm_dtype_name(dt));
    if (hidden <= 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: hidden size %d is not positive", what, hidden);
    return EPM_OK;
}

static size_t row_bytes(const epm_a2a_layout *l) { return (size_t)l->hidden * epm_dtype_size(l->dt); }

/* address of pool row i: initial rows in `in`; received rows where they
 * were scattered (the output row) or in pool_buf */
static const char *pool_row(const epm_a2a_layout *l, const a2a_route *r, int64_t i)
{
    size_t rb = row_bytes(l);
    if (i < r->n0)
        return l->in + (size_t)i * rb;
    int64_t o = r->direct[i - r->n0];
    return o >= 0 ? l->out + (size_t)o * rb : l->pool_buf + (size_t)(i - r->n0) * rb;
}

static epm_status step_start(epm_a2a_layout *l, const a2a_route *r, int s, int64_t base)
{
    const a2a_step *sp = &r->step[s];
    int R = l->c->size;
    int64_t n = sp->send_off[R];
    size_t need = (size_t)(n ? n : 1) * sizeof *l->src_ptrs;
    if (need > l->src_cap) {
        const char **p = epm_realloc(l->src_ptrs, need);
        if (!p)
            return EPM_ERR_NOMEM;
        l->src_ptrs = p;
        l->src_cap = need;
    }
    for (int64_t j = 0; j < n; j++)
        l->src_ptrs[j] = pool_row(l, r, sp->send_idx[j]);
    size_t rb = row_bytes(l);
    int64_t nrecv = sp->recv_off[R];
    EPM_CHECK(grow(&l->pack_send, &l->pack_send_cap, (size_t)(n ? n : 1) * rb));
    EPM_CHECK(grow(&l->pack_recv, &l->pack_recv_cap, (size_t)(nrecv ? nrecv : 1) * rb));
    epm_xfer x = {.row_bytes = row_bytes(l), .src_rows = l->src_ptrs, .send_off = sp->send_off,
                  .recv = l->pool_buf + (size_t)base * row_bytes(l), .recv_off = sp->recv_off,
                  .dst_rows = l->dst_ptrs + base, .pack_send = l->pack_send, .pack_recv = l->pack_recv,
                  .tag = sp->tag};
    epm_transport *t = l->c->tr;
    /* device transports that stage receive host rows here too (see start) */
    return epm_transport_start(t, &x, &l->req);
}

static int64_t step_recv(const a2a_route *r, int s, int size) { return r->step[s].recv_off[size]; }

static epm_status start_common(epm_a2a_layout *l, const a2a_route *r, const void *in, int64_t nin_rows,
                               epm_dtype dt, int hidden, void *out, int64_t nout_rows)
{
    epm_transport *t = l->c->tr;
    l->dt = dt;
    l->hidden = hidden;
    size_t rb = row_bytes(l);
    if (t->ops->device) {
        /* stage: device input to host, host output copied back in _wait */
        EPM_CHECK(grow_host(t, &l->host_in, &l->host_in_cap, (size_t)(nin_rows ? nin_rows : 1) * rb));
        EPM_CHECK(grow_host(t, &l->host_out, &l->host_out_cap, (size_t)(nout_rows ? nout_rows : 1) * rb));
        if (nin_rows)
            EPM_CHECK(t->ops->to_host(t, l->host_in, in, (size_t)nin_rows * rb));
        l->in = l->host_in;
        l->out = l->host_out;
        l->dev_out = out;
    } else {
        l->in = in;
        l->out = out;
        l->dev_out = NULL;
    }
    int64_t recv = r->pool - r->n0;
    l->cur_step = 0;
    EPM_CHECK(grow(&l->pool_buf, &l->pool_cap, (size_t)(recv ? recv : 1) * rb));
    size_t need = (size_t)(recv ? recv : 1) * sizeof *l->dst_ptrs;
    if (need > l->dst_cap) {
        char **p = epm_realloc(l->dst_ptrs, need);
        if (!p)
            return EPM_ERR_NOMEM;
        l->dst_ptrs = p;
        l->dst_cap = need;
    }
    for (int64_t j = 0; j < recv; j++)
        l->dst_ptrs[j] = (char *)pool_row(l, r, r->n0 + j);
    return step_start(l, r, 0, 0);
}

/* finishes the current step and runs the remaining ones */
static epm_status finish_steps(epm_a2a_layout *l, const a2a_route *r)
{
    epm_transport *t = l->c->tr;
    int R = l->c->size;
    int64_t base = 0;
    for (int s = l->cur_step; s < r->nsteps; s++) {
        if (s > l->cur_step)
            EPM_CHECK(step_start(l, r, s, base));
        epm_xfer_req *q = l->req;
        l->req = NULL;
        EPM_CHECK(t->ops->wait(t, q));
        base += step_recv(r, s, R);
    }
    return EPM_OK;
}

static void count(epm_a2a_layout *l, const a2a_route *r, epm_comm_phase ph)
{
    epm_comm_stats *s = &l->c->stats;
    int64_t rb = (int64_t)row_bytes(l);
    for (int k = 0; k < EPM_LINK_COUNT; k++) {
        s->model[ph][k] += r->model[k] * rb;
        s->wire[ph][k] += r->wire[k] * rb;
    }
    s->rows[ph] += r->model_rows;
    s->ops[ph]++;
    s->hier_ops += l->hier;
}

static void fail_reset(epm_a2a_layout *l)
{
    l->busy = 0;
    l->req = NULL;
}

epm_status epm_a2a_dispatch_start(epm_a2a_layout *l, const void *hidden_in, epm_dtype dt, int hidden,
                                  void *rows_out)
{
    EPM_CHECK(check_args(l, dt, hidden, "a2a dispatch"));
    if ((l->disp.n0 && !hidden_in) || (l->nrows && !rows_out))
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a dispatch: hidden_in or rows_out is NULL");
    epm_status st = start_common(l, &l->disp, hidden_in, l->disp.n0, dt, hidden, rows_out, l->nrows);
    if (st != EPM_OK)
        return st;
    l->busy = 1;
    return EPM_OK;
}

epm_status epm_a2a_dispatch_wait(epm_a2a_layout *l)
{
    if (!l || l->busy != 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a dispatch_wait: no dispatch in flight");
    epm_status st = finish_steps(l, &l->disp);
    if (st != EPM_OK) {
        fail_reset(l);
        return st;
    }
    size_t rb = row_bytes(l);
    for (int64_t i = 0; i < l->nrows; i++) {
        const char *src = pool_row(l, &l->disp, l->row_pool[i]);
        if (src != l->out + (size_t)i * rb) /* not scattered in place by the transport */
            memcpy(l->out + (size_t)i * rb, src, rb);
    }
    if (l->dev_out && l->nrows)
        st = l->c->tr->ops->to_device(l->c->tr, l->dev_out, l->out, (size_t)l->nrows * rb);
    l->busy = 0;
    if (st == EPM_OK)
        count(l, &l->disp, EPM_PHASE_DISPATCH);
    return st;
}

epm_status epm_a2a_dispatch(epm_a2a_layout *l, const void *hidden_in, epm_dtype dt, int hidden, void *rows_out)
{
    EPM_CHECK(epm_a2a_dispatch_start(l, hidden_in, dt, hidden, rows_out));
    return epm_a2a_dispatch_wait(l);
}

epm_status epm_a2a_combine_start(epm_a2a_layout *l, const void *partial, epm_dtype dt, int hidden, void *out,
                                 uint64_t *out_keys)
{
    EPM_CHECK(check_args(l, dt, hidden, "a2a combine"));
    if ((l->nrows && !partial) || (l->nout && !out))
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a combine: partial or out is NULL");
    epm_status st = start_common(l, &l->comb, partial, l->nrows, dt, hidden, out, l->nout);
    if (st != EPM_OK)
        return st;
    l->out_keys_dst = out_keys;
    l->busy = 2;
    return EPM_OK;
}

/* out row = sum of its contributions in ascending serving rank */
static void reduce(epm_a2a_layout *l)
{
    int H = l->hidden;
    size_t rb = row_bytes(l);
    for (int64_t o = 0; o < l->nout; o++) {
        int64_t a = l->out_off[o], b = l->out_off[o + 1];
        char *dst = l->out + (size_t)o * rb;
        if (b == a) {
            memset(dst, 0, rb);
            continue;
        }
        if (b - a == 1) {
            const char *src = pool_row(l, &l->comb, l->out_pool[a]);
            if (src != dst)
                memcpy(dst, src, rb);
            continue;
        }
        if (l->dt == EPM_DTYPE_F32) {
            float *d = (float *)dst;
            memcpy(d, pool_row(l, &l->comb, l->out_pool[a]), rb);
            for (int64_t c = a + 1; c < b; c++) {
                const float *s = (const float *)pool_row(l, &l->comb, l->out_pool[c]);
                for (int h = 0; h < H; h++)
                    d[h] += s[h];
            }
        } else {
            uint16_t *d = (uint16_t *)dst;
            for (int h = 0; h < H; h++) {
                float acc = 0;
                for (int64_t c = a; c < b; c++) {
                    const uint16_t *s = (const uint16_t *)pool_row(l, &l->comb, l->out_pool[c]);
                    acc = c == a ? epm_bf16_to_f32(s[h]) : acc + epm_bf16_to_f32(s[h]);
                }
                d[h] = epm_f32_to_bf16(acc);
            }
        }
    }
}

epm_status epm_a2a_combine_wait(epm_a2a_layout *l)
{
    if (!l || l->busy != 2)
        return epm_fail(EPM_ERR_INVALID_ARG, "a2a combine_wait: no combine in flight");
    epm_status st = finish_steps(l, &l->comb);
    if (st != EPM_OK) {
        fail_reset(l);
        return st;
    }
    reduce(l);
    if (l->dev_out && l->nout)
        st = l->c->tr->ops->to_device(l->c->tr, l->dev_out, l->out, (size_t)l->nout * row_bytes(l));
    if (l->out_keys_dst)
        memcpy(l->out_keys_dst, l->out_key, (size_t)l->nout * sizeof *l->out_key);
    l->busy = 0;
    if (st == EPM_OK)
        count(l, &l->comb, EPM_PHASE_COMBINE);
    return st;
}

epm_status epm_a2a_combine(epm_a2a_layout *l, const void *partial, epm_dtype dt, int hidden, void *out,
                           uint64_t *out_keys)
{
    EPM_CHECK(epm_a2a_combine_start(l, partial, dt, hidden, out, out_keys));
    return epm_a2a_combine_wait(l);
}
