/* The activation rows' dtype between ranks (epm_run_opts.wire_bf16,
 * wire_fp8). With bf16, a row's payload travels as bf16 pairs packed into
 * the float rows the exchange moves, so the transports (MPI, staged, NCCL,
 * the hierarchical path) carry half the bytes unchanged; the row's header
 * (token id, expert ids, weights) stays float32, exact. The runtime counts
 * what plan eval models, 2 bytes per element: an odd width's pad half-word
 * goes over the wire (the exchange's wire statistics include it) but is not
 * payload.
 *
 * fp8 (home mode) is DeepEP's low-precision dispatch: a dispatch row carries
 * the expert input (the normalised hidden state, not the residual stream,
 * which stays home) as float8 e4m3 with one float32 scale per block of 128
 * values (the block's largest magnitude over 448, e4m3's largest), and the
 * combine is bf16. The payload is hidden bytes of codes, padded to a float,
 * then the scales: hidden + 4 x ceil(hidden / 128) bytes counted. */
#include "half.h"
#include "runtime_internal.h"

int epm_wire_floats(const rt *r, int n) { return r->wire16 ? (n + 1) / 2 : n; }

int64_t epm_wire_bytes(const rt *r, int n) { return (int64_t)n * (r->wire16 ? 2 : 4); }

int epm_wire_dispatch_floats(const rt *r, int n)
{
    return r->wire8 ? epm_fp8_row_floats(n) : epm_wire_floats(r, n);
}

int64_t epm_wire_dispatch_bytes(const rt *r, int n)
{
    return r->wire8 ? (int64_t)n + 4 * (int64_t)epm_fp8_row_blocks(n) : epm_wire_bytes(r, n);
}

void epm_wire_put(const rt *r, float *row, int n, const float *src)
{
    if (!r->wire16) {
        memcpy(row, src, (size_t)n * sizeof *src);
        return;
    }
    epm_bf16_pack(row, src, n);
    if (n & 1) { /* the pad travels too: no uninitialised bytes on the wire */
        uint16_t z = 0;
        memcpy((unsigned char *)row + 2 * (size_t)n, &z, sizeof z);
    }
}

void epm_wire_get(const rt *r, const float *row, int n, float *dst)
{
    if (!r->wire16) {
        memcpy(dst, row, (size_t)n * sizeof *dst);
        return;
    }
    epm_bf16_unpack(dst, row, n);
}

void epm_wire_add(const rt *r, const float *row, int n, float *acc)
{
    if (r->wire16) {
        epm_bf16_add(acc, row, n);
        return;
    }
    for (int j = 0; j < n; j++)
        acc[j] += row[j];
}

void epm_wire_round(const rt *r, float *x, int64_t n)
{
    if (!r->wire16)
        return;
    uint16_t h[256];
    for (int64_t j = 0; j < n; j += 256) {
        int64_t m = n - j < 256 ? n - j : 256;
        epm_bf16_pack(h, x + j, m);
        epm_bf16_unpack(x + j, h, m);
    }
}

void epm_wire_dispatch_put(const rt *r, float *row, int n, const float *h, const float *x)
{
    if (r->wire8)
        epm_fp8_row_put(row, n, x);
    else
        epm_wire_put(r, row, n, h);
}

void epm_wire_dispatch_input(const rt *r, const float *row, int n, const float *norm, float *xin)
{
    if (r->wire8) {
        epm_fp8_row_get(row, n, xin);
        return;
    }
    epm_wire_get(r, row, n, xin);
    r->ref->rmsnorm(xin, 1, n, norm, r->c->rms_norm_eps, xin);
}

void epm_wire_count(int floats, int64_t row_bytes, const int64_t sent[EPM_LINK_COUNT], int64_t *counted)
{
    if (!counted)
        return;
    /* every row of one exchange has the same payload: the exchange counted
     * 4 x floats bytes per row copy */
    int64_t per = 4 * (int64_t)floats;
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        counted[c] += per ? sent[c] / per * row_bytes : 0;
}
