/* epmoe bench kernels: the grouped expert FFN of a kernel backend (the
 * public epm_kernels table: one SwiGLU GEMM chain per expert over all its
 * rows) beside the ceiling, ONE SwiGLU GEMM chain over all routed rows with a
 * single weight set (the same FLOPs, each GEMM in one call), measured in the
 * same run on the same backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../launch/cli.h"
#include "bench.h"
#include "bench_kernels.h"
#include "blas_info.h"
#include "cpu_gemm_nt.h"
#include "cpu_sgemm.h"
#include "core.h"
#include "epmoe/kernels.h"

static const char usage[] =
    "usage: epmoe bench kernels [--shape mixtral|dsv3|all] [--tokens LIST] [--reps R]\n"
    "                           [--backend cpu|ref|cuda] [--dtype f32|bf16|fp8] [--csv]\n"
    "  --backend      also --kernels, as epmoe run names it; blas is cpu\n"
    "  mixtral: hidden 4096, expert FFN 14336, 8 experts, top-2\n"
    "  dsv3:    hidden 7168, expert FFN 2048, 256 experts, top-8 (DeepSeek-V3-like)\n"
    "  --tokens LIST  batch sizes, e.g. 1,16,128,1024,4096,16384. Default on the CPU\n"
    "                 1,16,128,512 (a 2-core machine finishes in a few minutes); on\n"
    "                 cuda 1,16,128,1024,4096,16384\n"
    "  --dtype        default f32 on the CPU backends, bf16 on cuda. bf16 on the cpu\n"
    "                 backend keeps the weights bf16 and also times the float32 path\n"
    "                 on the same weights widened (columns f32_s, vs_f32 = f32_s /\n"
    "                 grouped_s); --weight-gb then bounds both copies. fp8 (cpu\n"
    "                 and ref): e4m3 weights with a float32 scale per 128 x 128\n"
    "                 block, held as stored (DeepSeek-V3's format), beside the same\n"
    "                 weights dequantised to bf16 (columns bf16_s, vs_bf16 = bf16_s /\n"
    "                 grouped_s, max_rel_diff between the two outputs)\n"
    "  --weight-gb G  distinct expert weights to allocate, GB (default 3 on the CPU,\n"
    "                 all experts on cuda); experts cycle through the weight sets that fit\n"
    "Routing: each token picks k distinct experts uniformly at random. FLOPs count\n"
    "6 * hidden * ffn per routed row (gate, up, down). Every weight set is far larger\n"
    "than any cache, so cycling sets still reads each expert's weights from memory.\n";

typedef epm_bench_shape shape;

static const shape shapes[] = {{"mixtral", 4096, 14336, 8, 2}, {"dsv3", 7168, 2048, 256, 8}};

void epm_bench_route_random(int64_t T, int E, int K, uint64_t *seed, int32_t *ids, int32_t *perm)
{
    for (int e = 0; e < E; e++)
        perm[e] = e;
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            int r = j + (int)(epm_rand_unit(seed) * (E - j));
            int32_t tmp = perm[j];
            perm[j] = perm[r], perm[r] = tmp;
            ids[t * K + j] = perm[j];
        }
}

typedef struct bench {
    epm_kernels *kb;
    const epm_kernel_ops *o;
    epm_dtype dt;
    size_t es;
    int reps;
    int vs_f32; /* bf16 on the CPU: the float32 path on the widened weights timed beside it */
} bench;

/* Random values in [-0.01, 0.01) in the element type: one chunk drawn, then
 * uploaded over and over. Drawing every value costs ~7 ns each on the
 * 2-core VM: over a minute per run for DeepSeek-V3's 11.3 G weights, where
 * a GPU session has 15 minutes for all its runs; a GEMM's speed does not
 * depend on the values repeating. */
static epm_status fill(bench *b, void *dst, size_t n, uint64_t *seed)
{
    enum { CHUNK = 1 << 22 };
    size_t c = n < CHUNK ? n : CHUNK;
    float *h = epm_malloc((c ? c : 1) * sizeof *h);
    if (!h)
        return epm_fail(EPM_ERR_NOMEM, "bench kernels: fill buffer");
    for (size_t i = 0; i < c; i++)
        h[i] = (float)(epm_rand_unit(seed) - 0.5) * 0.02f;
    epm_status st = EPM_OK;
    if (b->dt != EPM_DTYPE_F32) /* narrowed in place: the first half of h */
        st = epm_ref_convert(h, EPM_DTYPE_F32, (int64_t)c, b->dt, h);
    for (size_t at = 0; st == EPM_OK && at < n; at += CHUNK) {
        size_t m = n - at < CHUNK ? n - at : CHUNK;
        st = b->o->upload(b->kb, (char *)dst + at * b->es, h, m * b->es);
    }
    epm_free(h);
    return st;
}

static epm_status time_once(bench *b, epm_dtype dt, int experts, const int64_t *off, int H, int F, const void *x,
                            const void *const *g, const void *const *u, const void *const *d, void *scr, void *y,
                            double *best)
{
    double t0 = epm_now();
    EPM_CHECK(b->o->grouped_ffn(b->kb, dt, x, off, experts, H, F, g, u, d, scr, y));
    EPM_CHECK(b->o->sync(b->kb));
    double t = epm_now() - t0;
    *best = t < *best ? t : *best;
    return EPM_OK;
}

/* The float32 side of a bf16 run on the CPU: its rows, weights and scratch. */
typedef struct f32_side {
    const void *x;
    const void *const *g, *const *u, *const *d;
    void *scr, *y;
} f32_side;

/* Best of --reps for the grouped FFN and the dense chain (and the float32
 * grouped FFN when s32 is set), one of each in turn, so that a slow spell
 * of a shared machine hits every side alike. */
static epm_status best_of(bench *b, int experts, const int64_t *off, const int64_t *dense, int H, int F,
                          const void *x, const void *const *g, const void *const *u, const void *const *d, void *scr,
                          void *y, const f32_side *s32, double *tg, double *td, double *t32)
{
    *tg = *td = *t32 = 1e30;
    if (!epm_kernels_host_memory(b->kb)) { /* one untimed call each: cuBLAS picks and loads its kernels */
        double ignored = 1e30;
        EPM_CHECK(time_once(b, b->dt, experts, off, H, F, x, g, u, d, scr, y, &ignored));
        EPM_CHECK(time_once(b, b->dt, 1, dense, H, F, x, g, u, d, scr, y, &ignored));
    }
    for (int r = 0; r < b->reps; r++) {
        EPM_CHECK(time_once(b, b->dt, experts, off, H, F, x, g, u, d, scr, y, tg));
        EPM_CHECK(time_once(b, b->dt, 1, dense, H, F, x, g, u, d, scr, y, td));
        if (s32)
            EPM_CHECK(time_once(b, EPM_DTYPE_F32, experts, off, H, F, s32->x, s32->g, s32->u, s32->d, s32->scr,
                                s32->y, t32));
    }
    return EPM_OK;
}

/* One batch: the grouped FFN over off's experts, then the dense chain (and
 * the float32 grouped FFN over sets32, the widened sets, when b->vs_f32). */
static epm_status run_case(bench *b, const shape *sh, const int64_t *off, void *const *sets, void *const *sets32,
                           int nsets, double *tg, double *td, double *t32)
{
    const int H = sh->hidden, F = sh->ffn, E = sh->experts;
    int64_t rows = off[E] ? off[E] : 1;
    size_t per = (size_t)3 * F * H * b->es;
    void *x = NULL, *y = NULL, *scr = NULL;
    const void **g = epm_calloc((size_t)E, sizeof *g), **u = epm_calloc((size_t)E, sizeof *u);
    const void **d = epm_calloc((size_t)E, sizeof *d);
    epm_status st = g && u && d ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "bench kernels: %d experts", E);
    uint64_t seed = 17;
    if (st == EPM_OK)
        st = b->o->alloc(b->kb, (size_t)rows * H * b->es, &x);
    if (st == EPM_OK)
        st = b->o->alloc(b->kb, (size_t)rows * H * b->es, &y);
    size_t scr_bytes = b->o->grouped_ffn_scratch(b->kb, b->dt, rows, H, F);
    if (st == EPM_OK)
        st = b->o->alloc(b->kb, scr_bytes, &scr);
    if (st == EPM_OK)
        st = fill(b, x, (size_t)rows * H, &seed);
    /* y and the scratch are written before timing as well: a runtime reuses
     * them layer after layer, and on the CPU the first touch of a fresh
     * buffer (a page fault per 4 KiB, 0.9 GB of y at DeepSeek-V3's 4k tokens)
     * would otherwise be charged to whichever side runs first at --reps 1 */
    if (st == EPM_OK)
        st = fill(b, y, (size_t)rows * H, &seed);
    if (st == EPM_OK)
        st = fill(b, scr, scr_bytes / b->es, &seed);
    for (int e = 0; e < E && st == EPM_OK; e++) {
        char *w = (char *)sets[e % nsets];
        g[e] = w, u[e] = w + per / 3, d[e] = w + 2 * (per / 3);
    }
    const int64_t dense[2] = {0, off[E]};
    /* the float32 side: the same rows and weights widened (exactly) */
    void *x32 = NULL, *y32 = NULL, *scr32 = NULL;
    const void **g32 = NULL, **u32 = NULL, **d32 = NULL;
    f32_side side = {0};
    if (st == EPM_OK && b->vs_f32) {
        size_t sb32 = b->o->grouped_ffn_scratch(b->kb, EPM_DTYPE_F32, rows, H, F);
        g32 = epm_calloc((size_t)E, sizeof *g32), u32 = epm_calloc((size_t)E, sizeof *u32);
        d32 = epm_calloc((size_t)E, sizeof *d32);
        st = g32 && u32 && d32 ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "bench kernels: %d experts", E);
        if (st == EPM_OK)
            st = b->o->alloc(b->kb, (size_t)rows * H * 4, &x32);
        if (st == EPM_OK)
            st = b->o->alloc(b->kb, (size_t)rows * H * 4, &y32);
        if (st == EPM_OK)
            st = b->o->alloc(b->kb, sb32 ? sb32 : 4, &scr32);
        if (st == EPM_OK)
            st = b->o->convert(b->kb, x, b->dt, rows * H, EPM_DTYPE_F32, x32);
        if (st == EPM_OK) { /* touched before timing, as y and the scratch above */
            memset(y32, 0, (size_t)rows * H * 4);
            memset(scr32, 0, sb32);
        }
        for (int e = 0; e < E && st == EPM_OK; e++) {
            char *w = (char *)sets32[e % nsets];
            size_t m = (size_t)F * H * 4;
            g32[e] = w, u32[e] = w + m, d32[e] = w + 2 * m;
        }
        side = (f32_side){x32, g32, u32, d32, scr32, y32};
    }
    if (st == EPM_OK)
        st = best_of(b, E, off, dense, H, F, x, g, u, d, scr, y, b->vs_f32 ? &side : NULL, tg, td, t32);
    b->o->free(b->kb, x), b->o->free(b->kb, y), b->o->free(b->kb, scr);
    b->o->free(b->kb, x32), b->o->free(b->kb, y32), b->o->free(b->kb, scr32);
    epm_free(g), epm_free(u), epm_free(d), epm_free(g32), epm_free(u32), epm_free(d32);
    return st;
}

enum { MAX_TOKEN_COUNTS = 64 };

static int bench_shape(bench *b, const shape *sh, const long *tokens, int ntokens, double weight_gb, int csv,
                       uint64_t *seed)
{
    const char *W = "bench kernels";
    const int E = sh->experts, K = sh->k;
    size_t per = (size_t)3 * sh->ffn * sh->hidden * b->es, per32 = (size_t)3 * sh->ffn * sh->hidden * 4;
    /* --weight-gb bounds both copies when the float32 one is timed beside */
    int nsets = weight_gb > 0 ? (int)(weight_gb * 1e9 / (double)(per + (b->vs_f32 ? per32 : 0))) : E;
    nsets = nsets < 2 ? 2 : nsets > E ? E : nsets;
    /* the experts stacked in one block, [gate; up; down] each, as serving
     * engines hold them (vLLM's and SGLang's w13/w2 tensors): the strided
     * CUDA path needs the uniform stride; the other paths take any layout */
    void *sets[256] = {0}, *sets32[256] = {0}, *block = NULL, *block32 = NULL;
    int rc = EPM_EXIT_OK;
    epm_status ast = b->o->alloc(b->kb, per * (size_t)nsets, &block);
    if (ast == EPM_OK && b->vs_f32)
        ast = b->o->alloc(b->kb, per32 * (size_t)nsets, &block32);
    for (int i = 0; i < nsets && ast == EPM_OK; i++) {
        sets[i] = (char *)block + per * (size_t)i;
        ast = fill(b, sets[i], per / b->es, seed);
        if (ast == EPM_OK && b->vs_f32) {
            sets32[i] = (char *)block32 + per32 * (size_t)i;
            ast = b->o->convert(b->kb, sets[i], b->dt, (int64_t)(per / b->es), EPM_DTYPE_F32, sets32[i]);
        }
    }
    if (ast != EPM_OK)
        rc = cli_fail(W, ast);
    for (int ti = 0; ti < ntokens && rc == EPM_EXIT_OK; ti++) {
        long T = tokens[ti];
        int32_t *ids = epm_malloc((size_t)T * K * sizeof *ids), *src = epm_malloc((size_t)T * K * sizeof *src);
        int32_t *rof = epm_malloc((size_t)T * K * sizeof *rof), *perm = epm_malloc((size_t)E * sizeof *perm);
        int64_t *off = epm_malloc((size_t)(E + 1) * sizeof *off);
        epm_status st = ids && src && rof && perm && off ? EPM_OK : epm_fail(EPM_ERR_NOMEM, "bench kernels: routing");
        if (st == EPM_OK) {
            epm_bench_route_random(T, E, K, seed, ids, perm);
            st = epm_ref_route(ids, T, K, E, off, src, rof);
        }
        double tg = 0, td = 0, t32 = 0;
        if (st == EPM_OK)
            st = run_case(b, sh, off, sets, sets32, nsets, &tg, &td, &t32);
        if (st != EPM_OK) {
            rc = cli_fail(W, st);
        } else {
            double rows = (double)off[E], flops = 6.0 * sh->hidden * (double)sh->ffn * rows;
            /* at small batch the grouped FFN streams every chosen expert's
             * weights once: its bound is memory bandwidth, shown as wGB/s */
            int used = 0;
            for (int e = 0; e < E; e++)
                used += off[e + 1] > off[e];
            double wbytes = (double)used * per;
            printf(csv ? "%s,%s,%s,%ld,%.0f,%d,%.6f,%.4f,%.2f,%.6f,%.4f,%.3f"
                       : "%s%s%-8s %7ld %7.0f %5d %11.6f %9.4f %8.2f %11.6f %9.4f %7.3f",
                   csv ? epm_kernels_name(b->kb) : "", csv ? epm_dtype_name(b->dt) : "", sh->name, T, rows, used, tg,
                   flops / tg / 1e12, wbytes / tg / 1e9, td, flops / td / 1e12, td / tg);
            if (b->vs_f32)
                printf(csv ? ",%.6f,%.3f" : " %11.6f %7.3f", t32, t32 / tg);
            putchar('\n');
            fflush(stdout);
        }
        epm_free(ids), epm_free(src), epm_free(rof), epm_free(perm), epm_free(off);
    }
    b->o->free(b->kb, block), b->o->free(b->kb, block32);
    return rc;
}

void epm_bench_print_blas(void)
{
    char blas[256];
    epm_blas_describe(blas, sizeof blas);
    printf("# blas: %s; threads: %s\n", blas, epm_cpu_sgemm_threading());
    printf("# cpu gemm for up to %d rows: %s\n", EPM_GEMM_NT_MAX_ROWS,
           epm_cpu_isa_active() == EPM_CPU_ISA_OFF ? "the blas (EPM_CPU_ISA off or no AVX2)"
                                                   : epm_cpu_isa_name(epm_cpu_isa_active()));
}

int epm_bench_kernels(int argc, char **argv)
{
    const char *W = "bench kernels";
    const char *which = "all", *tokens_s = NULL, *backend = "cpu", *dtype = NULL;
    long reps = 3;
    double weight_gb = -1;
    int csv = 0, c;
    static const struct option opts[] = {
        {"shape", required_argument, 0, 's'},     {"tokens", required_argument, 0, 't'},
        {"reps", required_argument, 0, 'r'},      {"backend", required_argument, 0, 'b'},
        {"dtype", required_argument, 0, 'd'},     {"weight-gb", required_argument, 0, 'w'},
        {"csv", no_argument, 0, 'c'},             {"help", no_argument, 0, 'h'},
        {"kernels", required_argument, 0, 'b'}, /* (epmoe run's name for it) */
        {0, 0, 0, 0}};
    if (cli_exact_options(W, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': which = optarg; break;
        case 't': tokens_s = optarg; break;
        case 'r': if (!cli_parse_int(W, "--reps", optarg, 1, 1000, &reps)) return EPM_EXIT_USAGE; break;
        case 'b': backend = optarg; break;
        case 'd': dtype = optarg; break;
        case 'w': {
            char *end;
            weight_gb = strtod(optarg, &end);
            if (*end || !(weight_gb > 0 && weight_gb < 1e4))
                return cli_usage_error(W, "--weight-gb '%s' is not a positive number of GB", optarg);
            break;
        }
        case 'c': csv = 1; break;
        case 'h': fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (strcmp(which, "all") && strcmp(which, "mixtral") && strcmp(which, "dsv3"))
        return cli_usage_error(W, "--shape '%s' is not mixtral, dsv3 or all", which);
    if (!strcmp(backend, "blas")) /* the earlier name of the CPU path */
        backend = "cpu";
    if (strcmp(backend, "cpu") && strcmp(backend, "ref") && strcmp(backend, "cuda"))
        return cli_usage_error(W, "--backend/--kernels '%s' is not cpu (blas), ref or cuda", backend);
    /* any case: the CSV names them as safetensors does (F32, BF16) */
    if (dtype && strcasecmp(dtype, "f32") && strcasecmp(dtype, "bf16") && strcasecmp(dtype, "fp8"))
        return cli_usage_error(W, "--dtype '%s' is not f32, bf16 or fp8", dtype);
    const int fp8 = dtype && !strcasecmp(dtype, "fp8");
    if (fp8 && !strcmp(backend, "cuda"))
        return cli_usage_error(W, "--dtype fp8 with --backend 'cuda': FP8 weights run on the cpu and ref backends "
                                  "(the CUDA kernels widen them)");
    long tokens[MAX_TOKEN_COUNTS];
    int ntokens = 0;
    if (tokens_s && !cli_parse_int_list(W, "--tokens", tokens_s, 1, 1 << 20, "batch sizes", tokens, MAX_TOKEN_COUNTS,
                                        &ntokens))
        return EPM_EXIT_USAGE;
    bench b = {0};
    b.reps = (int)reps;
    epm_status st = epm_kernels_create(backend, &b.kb);
    if (st != EPM_OK)
        return cli_fail(W, st);
    b.o = epm_kernels_ops(b.kb);
    int host = epm_kernels_host_memory(b.kb);
    if (!dtype)
        dtype = host ? "f32" : "bf16";
    int rc = EPM_EXIT_OK;
    b.dt = !strcasecmp(dtype, "f32") ? EPM_DTYPE_F32 : EPM_DTYPE_BF16;
    b.es = epm_dtype_size(b.dt);
    b.vs_f32 = host && !fp8 && b.dt == EPM_DTYPE_BF16 && !strcmp(backend, "cpu");
    if (weight_gb < 0 && host)
        weight_gb = 3;
    if (!tokens_s) { /* the defaults parse */
        tokens_s = host ? "1,16,128,512" : "1,16,128,1024,4096,16384";
        cli_parse_int_list(W, "--tokens", tokens_s, 1, 1 << 20, "batch sizes", tokens, MAX_TOKEN_COUNTS, &ntokens);
    }
    if (!csv)
        printf("# backend %s %s; tokens %s%s; best of %ld; dense = one GEMM chain, same FLOPs\n", backend,
               fp8 ? "F8_E4M3 (blocks of 128 x 128)" : epm_dtype_name(b.dt), tokens_s,
               host && !strcmp(tokens_s, "1,16,128,512") ? " (small CPU default; the shapes scale to 16384)" : "",
               reps);
    if (!csv && host)
        epm_bench_print_blas();
    printf(csv ? "backend,dtype,shape,tokens,rows,experts_used,grouped_s,grouped_tflops,weight_gbs,dense_s,"
                 "dense_tflops,ratio"
               : "%-8s %7s %7s %5s %11s %9s %8s %11s %9s %7s",
           "shape", "tokens", "rows", "used", "grouped s", "TFLOP/s", "wGB/s", "dense s", "TFLOP/s", "ratio");
    if (b.vs_f32)
        printf(csv ? ",f32_s,vs_f32" : " %11s %7s", "f32 s", "vs f32");
    if (fp8)
        printf(csv ? ",bf16_s,vs_bf16,max_rel_diff" : " %11s %7s %9s", "bf16 s", "vs bf16", "rel diff");
    putchar('\n');
    uint64_t seed = 5;
    const epm_bench_kernels_args fa = {tokens, ntokens, (int)reps, csv, !strcmp(backend, "ref"), weight_gb};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes && rc == EPM_EXIT_OK; si++)
        if (!strcmp(which, "all") || !strcmp(which, shapes[si].name))
            rc = fp8 ? epm_bench_kernels_fp8(&fa, &shapes[si], &seed)
                     : bench_shape(&b, &shapes[si], tokens, ntokens, weight_gb, csv, &seed);
    epm_kernels_destroy(b.kb);
    return rc;
}
