/* epmoe bench kernels --dtype fp8: the CPU grouped expert FFN over FP8
 * weights (DeepSeek-V3's release format, held as stored: e4m3 codes and a
 * float32 scale per 128 x 128 block) beside the same FFN over the same
 * weights dequantised to bf16 (the loader's other holding, the baseline),
 * and beside the dense chain of the same FLOPs over FP8 weights (the
 * ceiling, as for the other dtypes). Both holdings are the same model, so
 * the run also prints how far their outputs are apart. Through the ops
 * tables the runtime calls (kernels/ops.h), not the epm_kernels one: that
 * table has no FP8 entry, and FP8 is CPU-only. */
#include <stdio.h>
#include <string.h>

#include "bench_kernels.h"
#include "cpu_omp.h"
#include "core.h"
#include "half.h"
#include "epmoe/kernels.h"
#include "ops.h"

enum { BLOCK = 128 }; /* DeepSeek-V3's weight_block_size */

/* One expert's three matrices [gate; up; down]: codes, scales, and the
 * dequantised bf16 copy. */
typedef struct fp8_set {
    uint8_t *q;
    float *s;
    uint16_t *w16;
} fp8_set;

static int64_t blocks_of(int rows, int cols)
{
    return (int64_t)((rows + BLOCK - 1) / BLOCK) * ((cols + BLOCK - 1) / BLOCK);
}

/* Codes uniform over the non-NaN ones (subnormal codes included), scales
 * about 0.01 / 448 per block (weights of a few hundredths, as trained
 * experts'); the bf16 copy dequantised as the loader does it. */
static void fill_set(fp8_set *st, int64_t n, int64_t ns, uint64_t *seed)
{
    for (int64_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(epm_rand_unit(seed) * 254);
        st->q[i] = (uint8_t)(c >= 0x7f ? c + 1 : c);
    }
    for (int64_t i = 0; i < ns; i++)
        st->s[i] = (float)((0.5 + epm_rand_unit(seed)) * 0.01 / 448);
}

static void dequant_matrix(const uint8_t *q, const float *s, int rows, int cols, uint16_t *w)
{
    const int nbc = (cols + BLOCK - 1) / BLOCK;
EPM_OMP("omp parallel for")
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            w[(int64_t)r * cols + c] = epm_f32_to_bf16(epm_f8e4m3_to_f32(q[(int64_t)r * cols + c]) *
                                                       s[(int64_t)(r / BLOCK) * nbc + c / BLOCK]);
}

/* The expert views of one set: gate and up [F][H], down [H][F]. */
static void views(const fp8_set *st, int H, int F, epm_w8 *g, epm_w8 *u, epm_w8 *d, const uint16_t **g16,
                  const uint16_t **u16, const uint16_t **d16)
{
    const int64_t m = (int64_t)F * H, nb = blocks_of(F, H);
    *g = (epm_w8){st->q, st->s, BLOCK, BLOCK};
    *u = (epm_w8){st->q + m, st->s + nb, BLOCK, BLOCK};
    *d = (epm_w8){st->q + 2 * m, st->s + 2 * nb, BLOCK, BLOCK};
    *g16 = st->w16, *u16 = st->w16 + m, *d16 = st->w16 + 2 * m;
}

typedef struct fp8_case {
    const epm_ops *ops;
    int H, F, E;
    const epm_w8 *g, *u, *d;
    const uint16_t *const *g16, *const *u16, *const *d16;
    const float *x;
    float *scr, *y8, *y16;
} fp8_case;

static epm_status time_w8(const fp8_case *c, int experts, const int64_t *off, float *y, double *best)
{
    double t0 = epm_now();
    EPM_CHECK(c->ops->grouped_swiglu_w8(c->x, off, experts, c->H, c->F, c->g, c->u, c->d, c->scr, y));
    double t = epm_now() - t0;
    *best = t < *best ? t : *best;
    return EPM_OK;
}

static epm_status time_w16(const fp8_case *c, const int64_t *off, double *best)
{
    double t0 = epm_now();
    EPM_CHECK(c->ops->grouped_swiglu_w16(c->x, off, c->E, c->H, c->F, c->g16, c->u16, c->d16, c->scr, c->y16));
    double t = epm_now() - t0;
    *best = t < *best ? t : *best;
    return EPM_OK;
}

/* max |y8 - y16| / max |y16| over n values */
static double apart(const float *y8, const float *y16, int64_t n)
{
    double dmax = 0, ymax = 0;
    for (int64_t i = 0; i < n; i++) {
        double dv = (double)y8[i] - y16[i];
        dmax = dv < 0 ? (-dv > dmax ? -dv : dmax) : (dv > dmax ? dv : dmax);
        ymax = y16[i] < 0 ? (-y16[i] > ymax ? -y16[i] : ymax) : (y16[i] > ymax ? y16[i] : ymax);
    }
    return ymax > 0 ? dmax / ymax : dmax;
}

int epm_bench_kernels_fp8(const epm_bench_kernels_args *a, const epm_bench_shape *sh, uint64_t *seed)
{
    const char *W = "bench kernels";
    const int H = sh->hidden, F = sh->ffn, E = sh->experts, K = sh->k;
    const epm_ops *ops = a->ref ? epm_ops_ref() : epm_ops_blas();
    const int64_t m = (int64_t)F * H, nb = 2 * blocks_of(F, H) + blocks_of(H, F);
    const double per = (double)(3 * m) * 3 + (double)nb * 4; /* codes, bf16 copy, scales */
    int nsets = (int)(a->weight_gb * 1e9 / per);
    nsets = nsets < 2 ? 2 : nsets > E ? E : nsets;
    fp8_set *sets = epm_calloc((size_t)nsets, sizeof *sets);
    epm_w8 *w8 = epm_calloc(3 * (size_t)E, sizeof *w8);
    const uint16_t **w16 = epm_calloc(3 * (size_t)E, sizeof *w16);
    epm_status st = sets && w8 && w16 ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "%s: allocation of %d weight sets failed",
                                                           W, nsets);
    for (int i = 0; i < nsets && st == EPM_OK; i++) {
        sets[i].q = epm_malloc((size_t)(3 * m));
        sets[i].s = epm_malloc((size_t)nb * sizeof(float));
        sets[i].w16 = epm_malloc((size_t)(3 * m) * sizeof(uint16_t));
        if (!sets[i].q || !sets[i].s || !sets[i].w16) {
            st = epm_fail(EPM_ERR_NOMEM, "%s: allocation of FP8 weight set %d (%.0f MB) failed", W, i, per / 1e6);
            break;
        }
        fill_set(&sets[i], 3 * m, nb, seed);
        const int64_t b1 = blocks_of(F, H);
        dequant_matrix(sets[i].q, sets[i].s, F, H, sets[i].w16);
        dequant_matrix(sets[i].q + m, sets[i].s + b1, F, H, sets[i].w16 + m);
        dequant_matrix(sets[i].q + 2 * m, sets[i].s + 2 * b1, H, F, sets[i].w16 + 2 * m);
    }
    for (int e = 0; e < E && st == EPM_OK; e++)
        views(&sets[e % nsets], H, F, &w8[e], &w8[E + e], &w8[2 * E + e], &w16[e], &w16[E + e], &w16[2 * E + e]);
    int rc = st == EPM_OK ? EPM_EXIT_OK : cli_fail(W, st);
    for (int ti = 0; ti < a->ntokens && rc == EPM_EXIT_OK; ti++) {
        const long T = a->tokens[ti];
        int32_t *ids = epm_malloc((size_t)T * K * sizeof *ids), *src = epm_malloc((size_t)T * K * sizeof *src);
        int32_t *rof = epm_malloc((size_t)T * K * sizeof *rof), *perm = epm_malloc((size_t)E * sizeof *perm);
        int64_t *off = epm_malloc((size_t)(E + 1) * sizeof *off);
        float *x = NULL, *y8 = NULL, *y16 = NULL, *yd = NULL, *scr = NULL;
        st = ids && src && rof && perm && off ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "%s: routing", W);
        if (st == EPM_OK) {
            epm_bench_route_random(T, E, K, seed, ids, perm);
            st = epm_ref_route(ids, T, K, E, off, src, rof);
        }
        const int64_t rows = st == EPM_OK ? off[E] : 0, dense[2] = {0, rows};
        int64_t sn = 0;
        if (st == EPM_OK) {
            int64_t s8 = epm_grouped_scratch_w8(off, E, H, F), s16 = epm_grouped_scratch_w16(off, E, H, F);
            int64_t sd = epm_grouped_scratch_w8(dense, 1, H, F);
            sn = s8 > s16 ? s8 : s16;
            sn = sd > sn ? sd : sn;
            x = epm_malloc((size_t)rows * H * sizeof *x), y8 = epm_malloc((size_t)rows * H * sizeof *y8);
            y16 = epm_malloc((size_t)rows * H * sizeof *y16), yd = epm_malloc((size_t)rows * H * sizeof *yd);
            scr = epm_malloc((size_t)sn * sizeof *scr);
            if (!x || !y8 || !y16 || !yd || !scr)
                st = epm_fail(EPM_ERR_NOMEM, "%s: allocation of %lld rows of %d failed", W, (long long)rows, H);
        }
        double t8 = 1e30, td = 1e30, t16 = 1e30;
        if (st == EPM_OK) {
            for (int64_t i = 0; i < rows * H; i++)
                x[i] = (float)(epm_rand_unit(seed) - 0.5) * 2;
            /* every buffer touched before timing: a first touch is a page fault per 4 KiB */
            memset(y8, 0, (size_t)rows * H * sizeof *y8), memset(y16, 0, (size_t)rows * H * sizeof *y16);
            memset(yd, 0, (size_t)rows * H * sizeof *yd), memset(scr, 0, (size_t)sn * sizeof *scr);
            const fp8_case c = {ops, H, F, E, w8, w8 + E, w8 + 2 * E, w16, w16 + E, w16 + 2 * E, x, scr, y8, y16};
            /* in turn, so that a slow spell of a shared machine hits every side alike */
            for (int r = 0; r < a->reps && st == EPM_OK; r++) {
                st = time_w8(&c, E, off, y8, &t8);
                if (st == EPM_OK)
                    st = time_w8(&c, 1, dense, yd, &td);
                if (st == EPM_OK)
                    st = time_w16(&c, off, &t16);
            }
        }
        if (st != EPM_OK) {
            rc = cli_fail(W, st);
        } else {
            int used = 0;
            for (int e = 0; e < E; e++)
                used += off[e + 1] > off[e];
            const double flops = 6.0 * H * (double)F * (double)rows;
            const double wbytes = (double)used * (double)(3 * m); /* a byte per weight; scales are 1/4096 of it */
            printf(a->csv ? "%s,F8_E4M3,%s,%ld,%lld,%d,%.6f,%.4f,%.2f,%.6f,%.4f,%.3f,%.6f,%.3f,%.2e\n"
                          : "%s%-8s %7ld %7lld %5d %11.6f %9.4f %8.2f %11.6f %9.4f %7.3f %11.6f %7.3f %9.2e\n",
                   a->csv ? (a->ref ? "ref" : "cpu") : "", sh->name, T, (long long)rows, used, t8, flops / t8 / 1e12,
                   wbytes / t8 / 1e9, td, flops / td / 1e12, td / t8, t16, t16 / t8, apart(y8, y16, rows * H));
            fflush(stdout);
        }
        epm_free(ids), epm_free(src), epm_free(rof), epm_free(perm), epm_free(off);
        epm_free(x), epm_free(y8), epm_free(y16), epm_free(yd), epm_free(scr);
    }
    for (int i = 0; sets && i < nsets; i++)
        epm_free(sets[i].q), epm_free(sets[i].s), epm_free(sets[i].w16);
    epm_free(sets), epm_free(w8), epm_free(w16);
    return rc;
}
