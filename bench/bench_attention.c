/* epmoe bench attention: a kernel backend's causal GQA attention (the public
 * epm_kernels table: cpu = kernels/cpu_attention.c, cuda = the device
 * kernel) beside the C reference (epm_ref_attention, the oracle, which the
 * runtime used for every query before the cpu table had its own), at the
 * head shapes of Mixtral and OLMoE, for decode (one query at the end of the
 * context) and a prefill chunk (queries ending there), timed in the same run. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "epmoe/kernels.h"

static const char usage[] =
    "usage: epmoe bench attention [--contexts LIST] [--chunk N] [--reps R] [--backend cpu|cuda] [--csv]\n"
    "  --contexts LIST  context lengths (positions in the KV cache), default 512,2048,8192\n"
    "  --chunk N        prefill queries per call, ending at the context length (default 32)\n"
    "  --reps R         best of R calls of the backend (default 5; the reference runs once)\n"
    "Shapes: mixtral (32 heads, 8 KV heads, head_dim 128), olmoe (16 heads, 16 KV heads, 128).\n"
    "ratio = reference time / backend time; GB/s counts the K and V rows each query reads.\n";

typedef struct ashape {
    const char *name;
    int heads, kv_heads, hd;
} ashape;

static const ashape ashapes[] = {{"mixtral", 32, 8, 128}, {"olmoe", 16, 16, 128}};

typedef struct att_case {
    const epm_kernel_ops *o;
    epm_kernels *kb;
    const ashape *sh;
    int64_t L, n;
    float *q, *kc, *vc, *out;      /* host */
    void *dq, *dk, *dv, *dout, *dpos; /* backend memory */
    int32_t *pos;
} att_case;

static epm_status backend_once(att_case *c, double *secs)
{
    double t0 = epm_now();
    EPM_CHECK(c->o->attention(c->kb, c->dq, c->n, c->dpos, c->dk, c->dv, c->L, c->sh->heads, c->sh->kv_heads,
                              c->sh->hd, c->dout, NULL));
    EPM_CHECK(c->o->sync(c->kb));
    *secs = epm_now() - t0;
    return EPM_OK;
}

static epm_status run_one(att_case *c, int reps, int csv, const char *backend)
{
    const ashape *sh = c->sh;
    double best = 1e30, t;
    EPM_CHECK(backend_once(c, &t)); /* untimed: first touch, device kernels loaded */
    for (int r = 0; r < reps; r++) {
        EPM_CHECK(backend_once(c, &t));
        best = t < best ? t : best;
    }
    double t0 = epm_now();
    EPM_CHECK(epm_ref_attention(c->q, c->n, c->pos, c->kc, c->vc, c->L, sh->heads, sh->kv_heads, sh->hd, c->out,
                                NULL));
    double ref = epm_now() - t0;
    double bytes = 0;
    for (int64_t i = 0; i < c->n; i++)
        bytes += 2.0 * (c->pos[i] + 1) * sh->kv_heads * sh->hd * sizeof(float);
    printf(csv ? "%s,%s,%s,%lld,%lld,%.6g,%.6g,%.2f,%.4f\n" : "%-8s %-8s %-7s %8lld %6lld %11.6f %11.6f %8.2f %9.2f\n",
           backend, sh->name, c->n == 1 ? "decode" : "prefill", (long long)c->L, (long long)c->n, best, ref,
           bytes / best / 1e9, ref / best);
    fflush(stdout);
    return EPM_OK;
}

static epm_status up(att_case *c, void **d, const void *h, size_t bytes)
{
    EPM_CHECK(c->o->alloc(c->kb, bytes, d));
    return c->o->upload(c->kb, *d, h, bytes);
}

static epm_status bench_context(epm_kernels *kb, const ashape *sh, int64_t L, int64_t chunk, int reps, int csv,
                                const char *backend, uint64_t *seed)
{
    att_case c = {.o = epm_kernels_ops(kb), .kb = kb, .sh = sh, .L = L};
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
    epm_free(c.kc), epm_free(c.vc), epm_free(c.q), epm_free(c.out), epm_free(c.pos);
    return st;
}

int epm_bench_attention(int argc, char **argv)
{
    const char *W = "bench attention";
    const char *contexts = "512,2048,8192", *backend = "cpu";
    long reps = 5, chunk = 32;
    int csv = 0, c;
    static const struct option opts[] = {
        {"contexts", required_argument, 0, 'x'}, {"chunk", required_argument, 0, 'n'},
        {"reps", required_argument, 0, 'r'},     {"backend", required_argument, 0, 'b'},
        {"csv", no_argument, 0, 'c'},            {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'x': contexts = optarg; break;
        case 'n': if (!cli_parse_int(W, "--chunk", optarg, 1, 4096, &chunk)) return EPM_EXIT_USAGE; break;
        case 'r': if (!cli_parse_int(W, "--reps", optarg, 1, 1000, &reps)) return EPM_EXIT_USAGE; break;
        case 'b': backend = optarg; break;
        case 'c': csv = 1; break;
        case 'h': fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda"))
        return cli_usage_error(W, "--backend '%s' is not cpu or cuda", backend);
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
    if (!csv)
        printf("# backend %s beside epm_ref_attention (one thread, double); best of %ld; prefill chunk %ld\n",
               backend, reps, chunk);
    printf(csv ? "backend,shape,phase,context,queries,backend_s,ref_s,kv_gbs,ratio\n"
               : "%-8s %-8s %-7s %8s %6s %11s %11s %8s %9s\n",
           "backend", "shape", "phase", "context", "rows", "backend s", "ref s", "KV GB/s", "ratio");
    uint64_t seed = 11;
    for (size_t si = 0; si < sizeof ashapes / sizeof *ashapes && st == EPM_OK; si++)
        for (int i = 0; i < nl && st == EPM_OK; i++) {
            if (!csv)
                fprintf(stderr, "bench attention: %s, context %ld\n", ashapes[si].name, L[i]);
            st = bench_context(kb, &ashapes[si], L[i], chunk, (int)reps, csv, backend, &seed);
        }
    epm_kernels_destroy(kb);
    return st == EPM_OK ? EPM_EXIT_OK : cli_fail(W, st);
}
