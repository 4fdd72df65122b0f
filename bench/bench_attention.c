/* epmoe bench attention: a kernel backend's causal GQA attention (the public
 * epm_kernels table: cpu = kernels/cpu_attention.c, cuda = the device
 * kernel) beside the C reference (epm_ref_attention, the oracle, which the
 * runtime used for every query before the cpu table had its own), at the
 * head shapes of Mixtral and OLMoE, for decode (one query at the end of the
 * context) and a prefill chunk (queries ending there), timed in the same run.
 * With --kv-dtype bf16 or fp8 the cache is that (run --kv-dtype), and the
 * backend's float32 kernel on the same values, widened, is timed beside it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "epmoe/kernels.h"
#include "half.h"

static const char usage[] =
    "usage: epmoe bench attention [--contexts LIST] [--chunk N] [--reps R] [--backend cpu|cuda]\n"
    "                              [--kv-dtype f32|bf16|fp8] [--csv]\n"
    "  --contexts LIST  context lengths (positions in the KV cache), default 512,2048,8192\n"
    "  --chunk N        prefill queries per call, ending at the context length (default 32)\n"
    "  --reps R         best of R calls of the backend (default 5; the reference runs once)\n"
    "Shapes: mixtral (32 heads, 8 KV heads, head_dim 128), olmoe (16 heads, 16 KV heads, 128).\n"
    "  --kv-dtype T     the cache's values: f32 (default), bf16, or fp8 (e4m3 with a float32 scale per\n"
    "                   head row, as epmoe run --kv-dtype fp8 holds it); bf16 and fp8 add f32_s (the\n"
    "                   backend over the same values in float32, best of R, same run) and vs_f32 =\n"
    "                   f32_s / backend_s\n"
    "ratio = reference time / backend time; GB/s counts the K and V bytes each query reads.\n";

typedef struct ashape {
    const char *name;
    int heads, kv_heads, hd;
} ashape;

static const ashape ashapes[] = {{"mixtral", 32, 8, 128}, {"olmoe", 16, 16, 128}};

enum { KV_F32, KV_BF16, KV_FP8 };

typedef struct att_case {
    const epm_kernel_ops *o;
    epm_kernels *kb;
    const ashape *sh;
    int64_t L, n;
    float *q, *kc, *vc, *out;      /* host */
    int kind;                      /* KV_F32, KV_BF16 or KV_FP8: what the timed cache holds */
    uint16_t *kh, *vh;             /* host, bf16 */
    uint8_t *k8, *v8;              /* host, fp8 codes */
    float *ks, *vs;                /* and their scales [L][kv_heads] */
    void *dq, *dk, *dv, *dout, *dpos; /* backend memory */
    void *dkh, *dvh, *dk8, *dv8, *dks, *dvs;
    int32_t *pos;
} att_case;

static epm_status backend_once(att_case *c, int kind, double *secs)
{
    const ashape *sh = c->sh;
    double t0 = epm_now();
    if (kind == KV_FP8)
        EPM_CHECK(c->o->attention_fp8(c->kb, c->dq, c->n, c->dpos, c->dk8, c->dks, c->dv8, c->dvs, c->L, sh->heads,
                                      sh->kv_heads, sh->hd, c->dout, NULL));
    else if (kind == KV_BF16)
        EPM_CHECK(c->o->attention_bf16(c->kb, c->dq, c->n, c->dpos, c->dkh, c->dvh, c->L, sh->heads, sh->kv_heads,
                                       sh->hd, c->dout, NULL));
    else
        EPM_CHECK(c->o->attention(c->kb, c->dq, c->n, c->dpos, c->dk, c->dv, c->L, sh->heads, sh->kv_heads, sh->hd,
                                  c->dout, NULL));
    EPM_CHECK(c->o->sync(c->kb));
    *secs = epm_now() - t0;
    return EPM_OK;
}

/* best of reps after an untimed call (first touch, device kernels loaded) */
static epm_status backend_best(att_case *c, int kind, int reps, double *best)
{
    double t;
    EPM_CHECK(backend_once(c, kind, &t));
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        EPM_CHECK(backend_once(c, kind, &t));
        *best = t < *best ? t : *best;
    }
    return EPM_OK;
}

static epm_status run_one(att_case *c, int reps, int csv, const char *backend)
{
    const ashape *sh = c->sh;
    const int kind = c->kind;
    double best, f32 = 0;
    /* the two caches alternate per pass, so that a slow spell hits both */
    EPM_CHECK(backend_best(c, kind, reps, &best));
    if (kind != KV_F32)
        EPM_CHECK(backend_best(c, KV_F32, reps, &f32));
    double t0 = epm_now();
    if (kind == KV_FP8)
        EPM_CHECK(epm_ref_attention_fp8(c->q, c->n, c->pos, c->k8, c->ks, c->v8, c->vs, c->L, sh->heads,
                                        sh->kv_heads, sh->hd, c->out, NULL));
    else if (kind == KV_BF16)
        EPM_CHECK(epm_ref_attention_bf16(c->q, c->n, c->pos, c->kh, c->vh, c->L, sh->heads, sh->kv_heads, sh->hd,
                                         c->out, NULL));
    else
        EPM_CHECK(epm_ref_attention(c->q, c->n, c->pos, c->kc, c->vc, c->L, sh->heads, sh->kv_heads, sh->hd, c->out,
                                    NULL));
    double ref = epm_now() - t0;
    double bytes = 0;
    for (int64_t i = 0; i < c->n; i++)
        bytes += 2.0 * (c->pos[i] + 1) * sh->kv_heads *
                 (kind == KV_FP8 ? sh->hd + sizeof(float) : (double)sh->hd * (kind == KV_BF16 ? 2 : sizeof(float)));
    printf(csv ? "%s,%s,%s,%lld,%lld,%.6g,%.6g,%.4g,%.4g" : "%-8s %-8s %-7s %8lld %6lld %11.6f %11.6f %8.2f %9.2f",
           backend, sh->name, c->n == 1 ? "decode" : "prefill", (long long)c->L, (long long)c->n, best, ref,
           bytes / best / 1e9, ref / best);
    if (kind != KV_F32)
        printf(csv ? ",%.6g,%.4f" : " %11.6f %8.3f", f32, f32 / best);
    printf("\n");
    fflush(stdout);
    return EPM_OK;
}

static epm_status up(att_case *c, void **d, const void *h, size_t bytes)
{
    EPM_CHECK(c->o->alloc(c->kb, bytes, d));
    return c->o->upload(c->kb, *d, h, bytes);
}

static epm_status bench_context(epm_kernels *kb, const ashape *sh, int64_t L, int64_t chunk, int reps, int csv,
                                const char *backend, int kind, uint64_t *seed)
{
    att_case c = {.o = epm_kernels_ops(kb), .kb = kb, .sh = sh, .L = L, .kind = kind};
    size_t kv = (size_t)L * sh->kv_heads * sh->hd, qn = (size_t)chunk * sh->heads * sh->hd;
    c.kc = epm_malloc(kv * sizeof(float));
    c.vc = epm_malloc(kv * sizeof(float));
    c.q = epm_malloc(qn * sizeof(float));
    c.out = epm_malloc(qn * sizeof(float));
    c.pos = epm_malloc((size_t)chunk * sizeof(int32_t));
    epm_status st = c.kc && c.vc && c.q && c.out && c.pos ? EPM_OK : EPM_ERR_NOMEM;
    for (size_t i = 0; st == EPM_OK && i < kv; i++) {
        *seed = *seed * 6364136223846793005ULL + 1442695040888963407ULL;
        c.kc[i] = (float)((*seed >> 40) & 0xffff) / 32768.0f - 1.0f;
        c.vc[i] = (float)((*seed >> 20) & 0xffff) / 32768.0f - 1.0f;
    }
    for (size_t i = 0; st == EPM_OK && i < qn; i++)
        c.q[i] = c.kc[i % kv] * 0.5f;
    if (st == EPM_OK && kind == KV_FP8) { /* the float32 cache holds the fp8 one's values, as epmoe run stores them */
        size_t rows = (size_t)L * sh->kv_heads;
        c.k8 = epm_malloc(kv), c.v8 = epm_malloc(kv);
        c.ks = epm_malloc(rows * sizeof *c.ks), c.vs = epm_malloc(rows * sizeof *c.vs);
        st = c.k8 && c.v8 && c.ks && c.vs ? EPM_OK : EPM_ERR_NOMEM;
        for (size_t i = 0; st == EPM_OK && i < rows; i++) {
            float *x[2] = {c.kc + i * sh->hd, c.vc + i * sh->hd}, *sc[2] = {c.ks + i, c.vs + i};
            uint8_t *q[2] = {c.k8 + i * sh->hd, c.v8 + i * sh->hd};
            for (int w = 0; w < 2; w++) {
                *sc[w] = epm_fp8_block_put(q[w], x[w], sh->hd);
                epm_f8e4m3_unpack(x[w], q[w], *sc[w], sh->hd);
            }
        }
        if (st == EPM_OK)
            st = up(&c, &c.dk8, c.k8, kv);
        if (st == EPM_OK)
            st = up(&c, &c.dv8, c.v8, kv);
        if (st == EPM_OK)
            st = up(&c, &c.dks, c.ks, rows * sizeof *c.ks);
        if (st == EPM_OK)
            st = up(&c, &c.dvs, c.vs, rows * sizeof *c.vs);
    }
    if (st == EPM_OK && kind == KV_BF16) { /* both caches hold the same values: the float32 one the bf16 one's, widened */
        c.kh = epm_malloc(kv * sizeof *c.kh);
        c.vh = epm_malloc(kv * sizeof *c.vh);
        st = c.kh && c.vh ? EPM_OK : EPM_ERR_NOMEM;
        for (size_t i = 0; st == EPM_OK && i < kv; i++) {
            c.kh[i] = epm_f32_to_bf16(c.kc[i]), c.kc[i] = epm_bf16_to_f32(c.kh[i]);
            c.vh[i] = epm_f32_to_bf16(c.vc[i]), c.vc[i] = epm_bf16_to_f32(c.vh[i]);
        }
        if (st == EPM_OK)
            st = up(&c, &c.dkh, c.kh, kv * sizeof *c.kh);
        if (st == EPM_OK)
            st = up(&c, &c.dvh, c.vh, kv * sizeof *c.vh);
    }
    if (st == EPM_OK)
        st = up(&c, &c.dk, c.kc, kv * sizeof(float));
    if (st == EPM_OK)
        st = up(&c, &c.dv, c.vc, kv * sizeof(float));
    if (st == EPM_OK)
        st = up(&c, &c.dq, c.q, qn * sizeof(float));
    if (st == EPM_OK)
        st = c.o->alloc(kb, qn * sizeof(float), &c.dout);
    for (int pass = 0; pass < 2 && st == EPM_OK; pass++) { /* decode, then the prefill chunk */
        c.n = pass ? (chunk < L ? chunk : L) : 1;
        for (int64_t i = 0; i < c.n; i++)
            c.pos[i] = (int32_t)(L - c.n + i);
        c.o->free(kb, c.dpos);
        c.dpos = NULL;
        st = up(&c, &c.dpos, c.pos, (size_t)c.n * sizeof(int32_t));
        if (st == EPM_OK)
            st = run_one(&c, reps, csv, backend);
    }
    c.o->free(kb, c.dk), c.o->free(kb, c.dv), c.o->free(kb, c.dq), c.o->free(kb, c.dout), c.o->free(kb, c.dpos);
    c.o->free(kb, c.dkh), c.o->free(kb, c.dvh);
    c.o->free(kb, c.dk8), c.o->free(kb, c.dv8), c.o->free(kb, c.dks), c.o->free(kb, c.dvs);
    epm_free(c.kc), epm_free(c.vc), epm_free(c.q), epm_free(c.out), epm_free(c.pos), epm_free(c.kh), epm_free(c.vh);
    epm_free(c.k8), epm_free(c.v8), epm_free(c.ks), epm_free(c.vs);
    return st;
}

int epm_bench_attention(int argc, char **argv)
{
    const char *W = "bench attention";
    const char *contexts = "512,2048,8192", *backend = "cpu", *kvdt = "f32";
    long reps = 5, chunk = 32;
    int csv = 0, c;
    static const struct option opts[] = {
        {"contexts", required_argument, 0, 'x'}, {"chunk", required_argument, 0, 'n'},
        {"reps", required_argument, 0, 'r'},     {"backend", required_argument, 0, 'b'},
        {"csv", no_argument, 0, 'c'},            {"help", no_argument, 0, 'h'},
        {"kv-dtype", required_argument, 0, 'k'},
        {0, 0, 0, 0}};
    if (cli_exact_options(W, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'x': contexts = optarg; break;
        case 'n': if (!cli_parse_int(W, "--chunk", optarg, 1, 4096, &chunk)) return EPM_EXIT_USAGE; break;
        case 'r': if (!cli_parse_int(W, "--reps", optarg, 1, 1000, &reps)) return EPM_EXIT_USAGE; break;
        case 'b': backend = optarg; break;
        case 'k': kvdt = optarg; break;
        case 'c': csv = 1; break;
        case 'h': fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda"))
        return cli_usage_error(W, "--backend '%s' is not cpu or cuda", backend);
    static const char *const kinds[] = {"f32", "bf16", "fp8", NULL};
    int kind;
    if (!cli_parse_choice(W, "--kv-dtype", kvdt, kinds, &kind))
        return EPM_EXIT_USAGE;
    long L[32];
    int nl = 0;
    char buf[256];
    if (strlen(contexts) >= sizeof buf)
        return cli_usage_error(W, "--contexts '%s' is too long", contexts);
    snprintf(buf, sizeof buf, "%s", contexts);
    for (char *save = NULL, *e = strtok_r(buf, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        if (nl == 32)
            return cli_usage_error(W, "--contexts: more than 32 lengths");
        if (!cli_parse_int(W, "--contexts", e, 1, 1 << 20, &L[nl++]))
            return EPM_EXIT_USAGE;
    }
    if (nl == 0)
        return cli_usage_error(W, "--contexts '%s' names no length", contexts);
    epm_kernels *kb = NULL;
    epm_status st = epm_kernels_create(backend, &kb);
    if (st != EPM_OK)
        return cli_fail(W, st);
    if ((kind == KV_BF16 && !epm_kernels_ops(kb)->attention_bf16) ||
        (kind == KV_FP8 && !epm_kernels_ops(kb)->attention_fp8)) {
        epm_kernels_destroy(kb);
        return cli_fail(W, epm_fail(EPM_ERR_UNSUPPORTED, "--kv-dtype %s: the %s backend has no attention over a "
                                    "%s cache", kvdt, backend, kvdt));
    }
    const int lowp = kind != KV_F32;
    if (!csv)
        printf("# backend %s beside epm_ref_attention%s (one thread, double); best of %ld; prefill chunk %ld; "
               "cache %s\n", backend, kind == KV_FP8 ? "_fp8" : lowp ? "_bf16" : "", reps, chunk,
               kind == KV_FP8 ? "fp8 (e4m3, a float32 scale per head row)" : lowp ? "bf16" : "float32");
    if (csv)
        printf("backend,shape,phase,context,queries,backend_s,ref_s,kv_gbs,ratio%s\n", lowp ? ",f32_s,vs_f32" : "");
    else
        printf("%-8s %-8s %-7s %8s %6s %11s %11s %8s %9s%s\n", "backend", "shape", "phase", "context", "rows",
               "backend s", "ref s", "KV GB/s", "ratio", lowp ? "       f32 s   vs f32" : "");
    uint64_t seed = 11;
    for (size_t si = 0; si < sizeof ashapes / sizeof *ashapes && st == EPM_OK; si++)
        for (int i = 0; i < nl && st == EPM_OK; i++) {
            if (!csv)
                fprintf(stderr, "bench attention: %s, context %ld\n", ashapes[si].name, L[i]);
            st = bench_context(kb, &ashapes[si], L[i], chunk, (int)reps, csv, backend, kind, &seed);
        }
    epm_kernels_destroy(kb);
    return st == EPM_OK ? EPM_EXIT_OK : cli_fail(W, st);
}
