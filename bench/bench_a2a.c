/* epmoe bench a2a: the runtime's token dispatch + combine against a raw
 * MPI_Alltoallv of the same bytes in the same run, in the style of
 * nccl-tests' alltoall_perf: sizes from bytes to hundreds of MiB, time per
 * operation, algorithm bandwidth and bus bandwidth (busbw = algbw*(n-1)/n).
 *
 * Each rank's tokens pick top-k experts from a seeded generator; experts sit
 * on ranks contiguously (E/R per rank). As in dist/runtime_moe.c, a token goes
 * once to each distinct other rank holding one of its experts (dispatch:
 * build the rows, epm_xcomm_exchange_buf), comes back as a partial sum to
 * its home rank (combine: the same) and is summed into the output; the
 * exchange buffers are reused from one operation to the next.
 * Tokens are added until this rank's dispatch rows reach `size` bytes. The
 * baseline moves exactly those per-peer row counts, already packed, with two
 * MPI_Alltoallv calls (there and back). A fourth method, full16, is the
 * whole of ours with activations in bf16 on the wire (epmoe run --wire-dtype
 * bf16): rows rounded into bf16 pairs (half the width), the same exchanges,
 * widened as they are summed; its ratio is full's time over its own.
 * full8 is the same with --wire-dtype fp8's rows: the dispatch as e4m3
 * with a scale per 128 values, dequantised where it lands and sent back
 * as bf16 (the runtime's expert input, then its partial sum). */
#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "half.h"
#include "xcomm.h"

static const char usage[] =
    "usage: mpirun -np N epmoe bench a2a [options]\n"
    "  --min-bytes B        smallest dispatch volume per rank (default 8)\n"
    "  --max-bytes B        largest (default 16 MiB; hundreds of MiB need the memory: ~6x per rank)\n"
    "  --step F             size factor between lines (default 4)\n"
    "  --row-bytes B        bytes per token row, hidden * 4 (default 8192; smaller sizes use one row)\n"
    "  --experts-per-rank E experts per rank, contiguous placement (default 8)\n"
    "  --k K                experts per token (default 2)\n"
    "  --a2a T              exchange transport: alltoallv, p2p, staged (CUDA builds), nccl (NCCL\n"
    "                       builds) (default: EPM_A2A, else alltoallv)\n"
    "  --hier auto|on|off   hierarchical exchange (default: EPM_A2A_HIER, else auto)\n"
    "  --virtual-nodes N    split the ranks into N pretend nodes\n"
    "  --seed S             routing seed (default 1)\n"
    "  --time S             seconds of timed work per size and method (default 0.2)\n"
    "  --csv                CSV rows instead of a table\n";

enum { ROUNDS = 5 };
enum { O_MIN = 256, O_MAX, O_STEP, O_ROW, O_EPR, O_K, O_A2A, O_HIER, O_VN, O_SEED, O_TIME, O_CSV, O_HELP };
static const struct option opts[] = {
    {"min-bytes", required_argument, 0, O_MIN},     {"max-bytes", required_argument, 0, O_MAX},
    {"step", required_argument, 0, O_STEP},         {"row-bytes", required_argument, 0, O_ROW},
    {"experts-per-rank", required_argument, 0, O_EPR}, {"k", required_argument, 0, O_K},
    {"a2a", required_argument, 0, O_A2A},           {"hier", required_argument, 0, O_HIER},
    {"virtual-nodes", required_argument, 0, O_VN},  {"seed", required_argument, 0, O_SEED},
    {"time", required_argument, 0, O_TIME},         {"csv", no_argument, 0, O_CSV},
    {"help", no_argument, 0, O_HELP},               {0, 0, 0, 0}};

typedef struct cfg {
    long min, max, step, row, epr, k;
    uint64_t seed;
    double secs;
    int csv;
} cfg;

typedef struct bcase {
    epm_xcomm *x;
    int R, me, W; /* W floats per row */
    int W16;      /* floats per row of bf16 pairs */
    int64_t ntok, nrows;
    float *h;     /* [ntok][W] token hidden vectors */
    int64_t *tok; /* [nrows] token of each dispatch row */
    int *dest;    /* [nrows] */
    float *rows, *out;
    epm_xcomm_buf disp, comb; /* reused across iterations, as a layer loop would */
    float *rows16;
    epm_xcomm_buf disp16, comb16;
    int W8;                        /* floats per fp8 row: codes, then scales */
    int64_t ncap;                  /* rows a rank may receive (the baseline's count) */
    float *rows8, *mid16, *wide;
    epm_xcomm_buf disp8, comb8;
    /* baseline */
    float *sbuf, *rbuf;
    int *cnt; /* send counts, displacements, receive counts, displacements: [4][R] */
    MPI_Datatype row;
} bcase;

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* the exchanges of dispatch and combine, rows already built */
static epm_status exchanges(bcase *b)
{
    epm_xcomm_buf *d = &b->disp, *c = &b->comb;
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, b->nrows, b->dest, b->rows, b->W, b->W, NULL, d));
    /* the partial sums go back to the token's home rank, in the order received */
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, d->n, d->src, d->rows, b->W, b->W, NULL, c));
    if (c->n != b->nrows)
        return epm_fail(EPM_ERR_INTERNAL, "bench a2a: %lld rows came back of %lld", (long long)c->n,
                        (long long)b->nrows);
    return EPM_OK;
}

/* The exchanges as the runtime ran them before their counts phase became
 * their agreement on failures: a one-int MPI_Allreduce (the least that
 * agreement cost) before each. Its time over ours is what the fusion saves. */
static epm_status agreed(bcase *b)
{
    epm_xcomm_buf *d = &b->disp, *c = &b->comb;
    int v = 0;
    if (MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return epm_fail(EPM_ERR_MPI, "bench a2a: MPI_Allreduce failed");
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, b->nrows, b->dest, b->rows, b->W, b->W, NULL, d));
    if (MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return epm_fail(EPM_ERR_MPI, "bench a2a: MPI_Allreduce failed");
    return epm_xcomm_exchange_buf(b->x, d->n, d->src, d->rows, b->W, b->W, NULL, c);
}

/* The exchanges offering no room to receive into before their counts, as
 * they ran before (comm/xcomm_a2a.c, hop_start): each then agrees, after its
 * counts, that every rank could allocate. Its time over ours is what the
 * room saves. */
static epm_status roomless(bcase *b)
{
    epm_xcomm_set_room(b->x, 0);
    epm_status st = exchanges(b);
    epm_xcomm_set_room(b->x, 1);
    return st;
}

/* The exchanges with no rows riding in their counts messages, as they ran
 * before (comm/xcomm_mpi.c, epm_xcomm_counts_rows): every hop's rows wait for
 * the step after its counts. Its time over ours is what riding saves. */
static epm_status unfused(bcase *b)
{
    epm_xcomm_set_eager(b->x, 0);
    epm_status st = exchanges(b);
    epm_xcomm_set_eager(b->x, 1);
    return st;
}

/* dispatch, identity experts, combine: what moe_block does around its
 * experts. Rows are built grouped by destination rank, so they come back in
 * the same order and the exchanges send them from where they are. */
static void build_rows(const bcase *b, float *rows)
{
    for (int64_t i = 0; i < b->nrows; i++)
        memcpy(rows + i * b->W, b->h + b->tok[i] * b->W, (size_t)b->W * sizeof(float));
}

static epm_status ours(bcase *b)
{
    int W = b->W;
    build_rows(b, b->rows);
    EPM_CHECK(exchanges(b));
    memset(b->out, 0, (size_t)b->ntok * W * sizeof(float));
    for (int64_t i = 0; i < b->nrows; i++) {
        const float *p = b->comb.rows + i * W;
        float *o = b->out + b->tok[i] * W;
        for (int k = 0; k < W; k++)
            o[k] += p[k];
    }
    return EPM_OK;
}

/* the bf16 combine: rows [d->n] of bf16 back to where d's came from, widened
 * as they are summed into the tokens */
static epm_status combine16(bcase *b, const epm_xcomm_buf *d, const float *rows, epm_xcomm_buf *c)
{
    int W = b->W, W16 = b->W16;
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, d->n, d->src, rows, W16, W16, NULL, c));
    if (c->n != b->nrows)
        return epm_fail(EPM_ERR_INTERNAL, "bench a2a: %lld bf16 rows came back of %lld", (long long)c->n,
                        (long long)b->nrows);
    memset(b->out, 0, (size_t)b->ntok * W * sizeof(float));
    for (int64_t i = 0; i < b->nrows; i++)
        epm_bf16_add(b->out + b->tok[i] * W, c->rows + i * W16, W);
    return EPM_OK;
}

static epm_status ours16(bcase *b)
{
    int W = b->W, W16 = b->W16;
    for (int64_t i = 0; i < b->nrows; i++) /* an odd row's pad half-word stays as set up */
        epm_bf16_pack(b->rows16 + i * W16, b->h + b->tok[i] * W, W);
    epm_xcomm_buf *d = &b->disp16, *c = &b->comb16;
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, b->nrows, b->dest, b->rows16, W16, W16, NULL, d));
    return combine16(b, d, d->rows, c);
}

static epm_status ours8(bcase *b)
{
    int W = b->W, W16 = b->W16, W8 = b->W8;
    for (int64_t i = 0; i < b->nrows; i++)
        epm_fp8_row_put(b->rows8 + i * W8, W, b->h + b->tok[i] * W);
    epm_xcomm_buf *d = &b->disp8, *c = &b->comb8;
    EPM_CHECK(epm_xcomm_exchange_buf(b->x, b->nrows, b->dest, b->rows8, W8, W8, NULL, d));
    if (d->n > b->ncap)
        return epm_fail(EPM_ERR_INTERNAL, "bench a2a: %lld fp8 rows arrived, room for %lld", (long long)d->n,
                        (long long)b->ncap);
    for (int64_t i = 0; i < d->n; i++) { /* pad half-words stay as set up */
        epm_fp8_row_get(d->rows + i * W8, W, b->wide);
        epm_bf16_pack(b->mid16 + i * W16, b->wide, W);
    }
    return combine16(b, d, b->mid16, c);
}

static epm_status raw(bcase *b)
{
    int R = b->R, *c = b->cnt;
    int rc = MPI_Alltoallv(b->sbuf, c, c + R, b->row, b->rbuf, c + 2 * R, c + 3 * R, b->row, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS)
        rc = MPI_Alltoallv(b->rbuf, c + 2 * R, c + 3 * R, b->row, b->sbuf, c, c + R, b->row, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? EPM_OK : epm_fail(EPM_ERR_MPI, "bench a2a: MPI_Alltoallv failed");
}

static epm_status run_one(bcase *b, int which)
{
    return which == 7   ? unfused(b)
           : which == 6 ? roomless(b)
           : which == 5 ? agreed(b)
           : which == 4 ? ours8(b)
           : which == 3 ? ours16(b)
           : which == 2 ? raw(b)
           : which == 1 ? exchanges(b)
                        : ours(b);
}

/* iterations per timing, sized from one timed call (the slowest rank's) */
static int calibrate(bcase *b, int which, double secs, epm_status *st)
{
    *st = run_one(b, which); /* warm-up */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = epm_now();
    if (*st == EPM_OK)
        *st = run_one(b, which);
    double one = epm_now() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &one, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int iters = one > 0 ? (int)(secs / one) : 1000;
    return iters < 2 ? 2 : iters > 1000 ? 1000 : iters;
}

/* seconds per operation: the slowest rank's average over iters */
static double timeit(bcase *b, int which, int iters, epm_status *st)
{
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = epm_now();
    for (int i = 0; i < iters && *st == EPM_OK; i++)
        *st = run_one(b, which);
    double t = (epm_now() - t0) / iters;
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return t;
}

static void bcase_free(bcase *b)
{
    epm_free(b->h);
    epm_free(b->tok);
    epm_free(b->dest);
    epm_free(b->rows);
    epm_free(b->rows16);
    epm_free(b->rows8);
    epm_free(b->mid16);
    epm_free(b->wide);
    epm_free(b->out);
    epm_free(b->sbuf);
    epm_free(b->rbuf);
    epm_free(b->cnt);
    epm_xcomm_buf_free(&b->disp);
    epm_xcomm_buf_free(&b->comb);
    epm_xcomm_buf_free(&b->disp16);
    epm_xcomm_buf_free(&b->comb16);
    epm_xcomm_buf_free(&b->disp8);
    epm_xcomm_buf_free(&b->comb8);
    if (b->row != MPI_DATATYPE_NULL)
        MPI_Type_free(&b->row);
}

/* tokens with top-k routing until this rank's dispatch rows reach size bytes */
static epm_status setup(bcase *b, long size, const cfg *g)
{
    int R = b->R, me = b->me, K = (int)g->k;
    long rb = size < g->row ? size : g->row;
    b->W = (int)(rb / 4 > 0 ? rb / 4 : 1);
    rb = (long)b->W * 4;
    int64_t want = (size + rb - 1) / rb; /* rows */
    int64_t E = g->epr * R, cap = want + K;
    b->row = MPI_DATATYPE_NULL;
    b->tok = epm_malloc((size_t)cap * sizeof *b->tok);
    b->dest = epm_malloc((size_t)cap * sizeof *b->dest);
    b->cnt = epm_calloc(4 * (size_t)R, sizeof *b->cnt);
    if (!b->tok || !b->dest || !b->cnt)
        return EPM_ERR_NOMEM;
    uint64_t st = mix(g->seed * 0x100000001b3ULL + (uint64_t)me);
    while (b->nrows < want && R > 1) {
        int d[64];
        int nd = 0;
        for (int j = 0; j < K; j++) {
            int64_t e;
            int dup;
            do { /* distinct experts per token */
                st = mix(st);
                e = (int64_t)(st % (uint64_t)E);
                dup = 0;
                for (int q = 0; q < j; q++)
                    dup |= d[32 + q] == (int)e;
            } while (dup);
            d[32 + j] = (int)e;
            int r = (int)(e / g->epr), seen = r == me;
            for (int q = 0; q < nd && !seen; q++)
                seen = d[q] == r;
            if (!seen)
                d[nd++] = r;
        }
        for (int q = 0; q < nd && b->nrows < cap; q++) {
            b->tok[b->nrows] = b->ntok;
            b->dest[b->nrows++] = d[q];
        }
        b->ntok++;
    }
    /* rows grouped by destination, token order within (a stable counting sort) */
    int64_t *at = epm_calloc((size_t)R + 1, sizeof *at), *tk = epm_malloc((size_t)(b->nrows + 1) * sizeof *tk);
    int *ds = epm_malloc((size_t)(b->nrows + 1) * sizeof *ds);
    if (!at || !tk || !ds) {
        epm_free(at);
        epm_free(tk);
        epm_free(ds);
        return EPM_ERR_NOMEM;
    }
    for (int64_t i = 0; i < b->nrows; i++)
        at[b->dest[i] + 1]++;
    for (int r = 0; r < R; r++)
        at[r + 1] += at[r];
    for (int64_t i = 0; i < b->nrows; i++) {
        int64_t j = at[b->dest[i]]++;
        tk[j] = b->tok[i];
        ds[j] = b->dest[i];
    }
    epm_free(at);
    epm_free(b->tok);
    epm_free(b->dest);
    b->tok = tk;
    b->dest = ds;
    int W = b->W;
    b->h = epm_malloc((size_t)(b->ntok + 1) * W * sizeof *b->h);
    b->out = epm_malloc((size_t)(b->ntok + 1) * W * sizeof *b->out);
    b->rows = epm_malloc((size_t)(b->nrows + 1) * W * sizeof *b->rows);
    b->W16 = (W + 1) / 2;
    b->rows16 = epm_calloc((size_t)(b->nrows + 1) * b->W16, sizeof *b->rows16);
    b->sbuf = epm_calloc((size_t)(b->nrows + 1) * W, sizeof *b->sbuf);
    if (!b->h || !b->out || !b->rows || !b->rows16 || !b->sbuf)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < b->ntok * W; i++)
        b->h[i] = (float)(i % 1000) * 0.001f;
    /* the baseline sends the very rows ours sends: with zeros instead, a
     * virtual machine's host may back the pages with one shared zero page
     * and the baseline reads from cache (measured: 1.5x faster at 64 MiB) */
    build_rows(b, b->sbuf);
    int *c = b->cnt;
    for (int64_t i = 0; i < b->nrows; i++)
        c[b->dest[i]]++;
    int rc = MPI_Alltoall(c, 1, MPI_INT, c + 2 * R, 1, MPI_INT, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return epm_fail(EPM_ERR_MPI, "bench a2a: MPI_Alltoall of counts failed");
    int64_t nr = 0;
    for (int r = 0; r < R; r++) {
        c[3 * R + r] = (int)nr;
        nr += c[2 * R + r];
        if (r)
            c[R + r] = c[R + r - 1] + c[r - 1];
    }
    b->rbuf = epm_calloc((size_t)(nr + 1) * W, sizeof *b->rbuf);
    b->W8 = epm_fp8_row_floats(W);
    b->ncap = nr;
    b->rows8 = epm_malloc((size_t)(b->nrows + 1) * b->W8 * sizeof *b->rows8);
    b->mid16 = epm_calloc((size_t)(nr + 1) * b->W16, sizeof *b->mid16);
    b->wide = epm_malloc((size_t)W * sizeof *b->wide);
    if (!b->rbuf || !b->rows8 || !b->mid16 || !b->wide)
        return EPM_ERR_NOMEM;
    MPI_Type_contiguous(W, MPI_FLOAT, &b->row);
    MPI_Type_commit(&b->row);
    return EPM_OK;
}

/* Seconds per synchronisation, the slowest rank's average over iters: an
 * agreement (ours) or a blocking MPI_Allreduce of one int. */
static epm_status time_sync(epm_xcomm *x, int ours, int iters, double *sec)
{
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = epm_now();
    for (int i = 0; i < iters; i++) {
        int v = 1;
        if (ours)
            EPM_CHECK(epm_xcomm_agree(x, EPM_OK));
        else
            MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    }
    *sec = (epm_now() - t0) / iters;
    MPI_Allreduce(MPI_IN_PLACE, sec, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return EPM_OK;
}

/* One agreement (epm_xcomm_agree: the non-blocking reduction the runtime
 * polls with a deadline before each exchange) against a plain blocking
 * MPI_Allreduce of one int, best of ROUNDS alternating rounds; seconds each. */
static epm_status agree_latency(epm_xcomm *x, double secs, double *t_ours, double *t_raw)
{
    int iters = 1;
    double t;
    *t_ours = *t_raw = 1e30;
    for (;;) { /* rounds of about secs / (2 * ROUNDS) each */
        EPM_CHECK(time_sync(x, 0, iters, &t));
        if (t * iters > secs / (2 * ROUNDS) || iters >= 1 << 20)
            break;
        iters *= 2;
    }
    for (int round = 0; round < ROUNDS; round++) {
        EPM_CHECK(time_sync(x, 1, iters, &t));
        *t_ours = t < *t_ours ? t : *t_ours;
        EPM_CHECK(time_sync(x, 0, iters, &t));
        *t_raw = t < *t_raw ? t : *t_raw;
    }
    return EPM_OK;
}

static void print_size(double v, char *buf, size_t n)
{
    if (v >= 1 << 20)
        snprintf(buf, n, "%.1f MiB", v / (1 << 20));
    else if (v >= 1 << 10)
        snprintf(buf, n, "%.1f KiB", v / (1 << 10));
    else
        snprintf(buf, n, "%.0f B", v);
}

int epm_bench_a2a(int argc, char **argv)
{
    cfg g = {.min = 8, .max = 16L << 20, .step = 4, .row = 8192, .epr = 8, .k = 2, .seed = 1, .secs = 0.2};
    epm_xcomm_opts xo;
    epm_xcomm_opts_init(&xo);
    epm_status st;
    const char *a2a = NULL, *hier = NULL; /* (resolved with EPM_A2A and EPM_A2A_HIER after the flags) */
    long v;
    int c;
    if (cli_exact_options("bench a2a", argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MIN:
            if (!cli_parse_int("bench a2a", "--min-bytes", optarg, 1, 1L << 40, &g.min))
                return EPM_EXIT_USAGE;
            break;
        case O_MAX:
            if (!cli_parse_int("bench a2a", "--max-bytes", optarg, 1, 1L << 40, &g.max))
                return EPM_EXIT_USAGE;
            break;
        case O_STEP:
            if (!cli_parse_int("bench a2a", "--step", optarg, 2, 1024, &g.step))
                return EPM_EXIT_USAGE;
            break;
        case O_ROW:
            if (!cli_parse_int("bench a2a", "--row-bytes", optarg, 4, 1L << 24, &g.row))
                return EPM_EXIT_USAGE;
            break;
        case O_EPR:
            if (!cli_parse_int("bench a2a", "--experts-per-rank", optarg, 1, 1 << 16, &g.epr))
                return EPM_EXIT_USAGE;
            break;
        case O_K:
            if (!cli_parse_int("bench a2a", "--k", optarg, 1, 32, &g.k))
                return EPM_EXIT_USAGE;
            break;
        case O_A2A:
            if ((st = epm_xcomm_a2a_parse(optarg, &xo.a2a)) != EPM_OK)
                return cli_usage_error("bench a2a", "--a2a: '%s' is not alltoallv, p2p, staged or nccl", optarg);
            a2a = optarg;
            break;
        case O_HIER:
            if ((st = epm_xcomm_hier_parse(optarg, &xo.hier)) != EPM_OK)
                return cli_usage_error("bench a2a", "--hier: '%s' is not auto, on or off", optarg);
            hier = optarg;
            break;
        case O_VN:
            if (!cli_parse_int("bench a2a", "--virtual-nodes", optarg, 0, 1 << 20, &v))
                return EPM_EXIT_USAGE;
            xo.virtual_nodes = (int)v;
            break;
        case O_SEED:
            if (!cli_parse_u64("bench a2a", "--seed", optarg, &g.seed))
                return EPM_EXIT_USAGE;
            break;
        case O_TIME:
            if (!cli_parse_double("bench a2a", "--time", optarg, 0.001, 3600, &g.secs))
                return EPM_EXIT_USAGE;
            break;
        case O_CSV:
            g.csv = 1;
            break;
        case O_HELP:
            fputs(usage, stdout);
            return EPM_EXIT_OK;
        default:
            return cli_option_error("bench a2a", argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("bench a2a", "unexpected argument '%s'", argv[optind]);
    if ((st = epm_xcomm_opts_resolve(&xo, a2a, hier)) != EPM_OK)
        return cli_fail("bench a2a", st);
    if (g.min > g.max)
        return cli_usage_error("bench a2a", "option --min-bytes: '%ld' is above --max-bytes %ld: no size to measure",
                               g.min, g.max);
    if (g.k > g.epr * 1024)
        return cli_usage_error("bench a2a", "--k %ld: more than the experts", g.k);
    if (cli_virtual_nodes_usage("bench a2a", xo.virtual_nodes) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    epm_xcomm *x;
    st = epm_xcomm_create_opts(&xo, &x);
    if (st != EPM_OK)
        return cli_fail_agreed("bench a2a", st);
    int R = epm_xcomm_size(x), me = epm_xcomm_rank(x);
    if (g.k > g.epr * R) {
        epm_xcomm_destroy(x);
        epm_xcomm_finalize();
        if (me)
            return EPM_EXIT_USAGE;
        return cli_usage_error("bench a2a", "--k %ld: more than the %ld experts", g.k, g.epr * R);
    }
    epm_cluster cl;
    epm_xcomm_cluster(x, &cl);
    if (me == 0) {
        if (g.csv)
            printf("ranks,nodes,a2a,hier,bytes,row_bytes,ours_us,ours_algbw_gbs,ours_busbw_gbs,raw_us,raw_algbw_gbs,"
                   "raw_busbw_gbs,ratio,full_us,ratio_full,size,full16_us,full_vs_full16,full8_us,full_vs_full8,"
                   "agreed_us,agreed_vs_ours,roomless_us,roomless_vs_ours,unfused_us,unfused_vs_ours\n");
        else
            printf("# epmoe bench a2a: %d ranks, %d node(s)%s, transport %s%s, top-%ld of %ld experts (contiguous)\n"
                   "# size = dispatch bytes per rank (mean); ours = dispatch + combine exchanges (epm_xcomm);\n"
                   "# raw = MPI_Alltoallv there and back of the same packed rows; full = ours + building the rows\n"
                   "# and summing the combined rows into the tokens; algbw = 2*size/time (GB/s), busbw = algbw*(n-1)/n;\n"
                   "# full16 = full with the rows in bf16 on the wire (half the bytes), f/f16 = full / full16;\n"
                   "# full8 = full with fp8 dispatch rows and a bf16 combine (run --wire-dtype fp8), f/f8 likewise;\n"
                   "# agreed = ours with a one-int MPI_Allreduce before each exchange (the runtime's agreement on\n"
                   "# failures before it became the exchange's counts phase), a/o = agreed / ours;\n"
                   "# roomless = ours offering no room to receive into before the counts, so that each exchange\n"
                   "# agrees again after them that every rank could allocate (as before), r/o = roomless / ours;\n"
                   "# unfused = ours with no rows riding in the counts messages (each hop's rows wait for a step\n"
                   "# after its counts, as before), u/o = unfused / ours;\n"
                   "# time = the fastest of 5 alternating rounds and of single operations interleaved one by one\n"
                   "%s"
                   "%11s %6s %11s %8s %8s %11s %8s %8s %6s %11s %6s %11s %6s %11s %6s %11s %6s %11s %6s %11s %6s\n",
                   R, cl.nodes, xo.virtual_nodes ? " (virtual)" : "", epm_xcomm_a2a_name(xo.a2a),
                   epm_xcomm_hierarchical(x) ? ", hierarchical" : "", g.k, g.epr * R,
                   R == 1 ? "# one rank: no row leaves it, raw moves nothing, so no ratio is given\n" : "",
                   "size", "row", "ours_us", "algbw", "busbw", "raw_us", "algbw", "busbw", "ratio", "full_us", "ratio",
                   "full16_us", "f/f16", "full8_us", "f/f8", "agreed_us", "a/o", "roomless_us", "r/o", "unfused_us", "u/o");
    }
    int rc = EPM_EXIT_OK;
    for (long size = g.min; size <= g.max && rc == EPM_EXIT_OK; size *= g.step) {
        bcase b;
        memset(&b, 0, sizeof b);
        b.x = x;
        b.R = R;
        b.me = me;
        st = epm_xcomm_agree(x, setup(&b, size, &g));
        enum { METHODS = 8 };
        double t[METHODS] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
        int it[METHODS] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int m = 0; m < METHODS && st == EPM_OK; m++)
            it[m] = calibrate(&b, m, g.secs / ROUNDS, &st);
        /* the methods alternate, best of ROUNDS each: a shared machine's
         * noise hits all alike */
        for (int round = 0; round < ROUNDS && st == EPM_OK; round++)
            for (int m = 0; m < METHODS && st == EPM_OK; m++) {
                double one = timeit(&b, m, it[m], &st);
                t[m] = one < t[m] ? one : t[m];
            }
        /* then single operations, the methods interleaved one by one, as
         * many as fit in the same time again: a burst of other work on the
         * machine lands on one operation, not on one method's whole round,
         * and the fastest operation of each method is the one it hit least */
        int pairs = it[2] * ROUNDS < 5000 ? it[2] * ROUNDS : 5000;
        for (int i = 0; i < pairs && st == EPM_OK; i++)
            for (int m = 0; m < METHODS && st == EPM_OK; m++) {
                double one = timeit(&b, m, 1, &st);
                t[m] = one < t[m] ? one : t[m];
            }
        double tf = t[0], to = t[1], tr = t[2], t16 = t[3], t8 = t[4], ta = t[5], tn = t[6], tu = t[7];
        st = epm_xcomm_agree(x, st);
        double bytes = (double)b.nrows * b.W * 4;
        MPI_Allreduce(MPI_IN_PLACE, &bytes, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        bytes /= R;
        if (st != EPM_OK) {
            rc = me == 0 ? cli_fail("bench a2a", st) : EPM_EXIT_FAIL;
        } else if (me == 0) {
            double f = R > 1 ? (double)(R - 1) / R : 0;
            double ao = 2 * bytes / to / 1e9, ar = 2 * bytes / tr / 1e9;
            /* with nothing crossing ranks (one rank) raw moves nothing and
             * ours only its bookkeeping: a ratio would mean nothing, so the
             * fields are left empty (CSV) or "-" (table) */
            char r1[16], r2[16], r3[16], r4[16], r5[16], r6[16], r7[16];
            snprintf(r7, sizeof r7, g.csv ? "" : "-");
            snprintf(r6, sizeof r6, g.csv ? "" : "-");
            snprintf(r5, sizeof r5, g.csv ? "" : "-");
            snprintf(r1, sizeof r1, g.csv ? "" : "-");
            snprintf(r2, sizeof r2, g.csv ? "" : "-");
            snprintf(r3, sizeof r3, g.csv ? "" : "-");
            snprintf(r4, sizeof r4, g.csv ? "" : "-");
            if (bytes > 0) {
                snprintf(r1, sizeof r1, g.csv ? "%.3f" : "%.2f", to / tr);
                snprintf(r2, sizeof r2, g.csv ? "%.3f" : "%.2f", tf / tr);
                snprintf(r3, sizeof r3, g.csv ? "%.3f" : "%.2f", tf / t16);
                snprintf(r4, sizeof r4, g.csv ? "%.3f" : "%.2f", tf / t8);
                snprintf(r5, sizeof r5, g.csv ? "%.3f" : "%.2f", ta / to);
                snprintf(r6, sizeof r6, g.csv ? "%.3f" : "%.2f", tn / to);
                snprintf(r7, sizeof r7, g.csv ? "%.3f" : "%.2f", tu / to);
            }
            if (g.csv) {
                /* size: the size asked for (the same at every rank count); bytes: what each rank
                 * sent on average, which the bandwidths use */
                printf("%d,%d,%s,%d,%.0f,%d,%.2f,%.4f,%.4f,%.2f,%.4f,%.4f,%s,%.2f,%s,%ld,%.2f,%s,%.2f,%s,%.2f,%s,%.2f,%s,"
                       "%.2f,%s\n",
                       R, cl.nodes, epm_xcomm_a2a_name(xo.a2a), epm_xcomm_hierarchical(x), bytes, b.W * 4, to * 1e6, ao,
                       ao * f, tr * 1e6, ar, ar * f, r1, tf * 1e6, r2, size, t16 * 1e6, r3, t8 * 1e6, r4, ta * 1e6, r5,
                       tn * 1e6, r6, tu * 1e6, r7);
            } else {
                char sz[32];
                print_size(bytes, sz, sizeof sz);
                printf("%11s %6d %11.1f %8.3f %8.3f %11.1f %8.3f %8.3f %6s %11.1f %6s %11.1f %6s %11.1f %6s %11.1f "
                       "%6s %11.1f %6s %11.1f %6s\n", sz, b.W * 4, to * 1e6, ao, ao * f, tr * 1e6, ar, ar * f, r1,
                       tf * 1e6, r2, t16 * 1e6, r3, t8 * 1e6, r4, ta * 1e6, r5, tn * 1e6, r6, tu * 1e6, r7);
            }
            fflush(stdout);
        }
        bcase_free(&b);
    }
    /* the latency of a bare agreement, which an exchange's counts phase now
     * is, and which the runtime pays on its own only before its other
     * collectives (table only: the CSV keeps one row per size) */
    if (rc == EPM_EXIT_OK && !g.csv && R > 1) {
        double ta, tr;
        st = epm_xcomm_agree(x, agree_latency(x, g.secs, &ta, &tr));
        if (st != EPM_OK)
            rc = me == 0 ? cli_fail("bench a2a", st) : EPM_EXIT_FAIL;
        else if (me == 0)
            printf("# a bare agreement (epm_xcomm_agree: a counts phase of zeros, polled with a deadline): %.1f us; "
                   "blocking MPI_Allreduce of one int: %.1f us; ratio %.2f\n", ta * 1e6, tr * 1e6, ta / tr);
    }
    epm_xcomm_destroy(x);
    epm_xcomm_finalize();
    return rc;
}
