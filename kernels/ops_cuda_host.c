/* The runtime's epm_ops table over the GPU backend (ops_cuda_host.h): plain
 * C calling the epm_gpu_ops table only, built in every configuration (without
 * CUDA, epm_gpu_ops_cuda() is NULL and opening says so).
 *
 * One static context: the gpu table and its context, the weight cache (open
 * addressing with linear probing on (host pointer, bytes), grown at 70% load,
 * never shrunk; entries leave only by epm_ops_cuda_forget, which rebuilds the
 * table, so no tombstones), three device activation
 * buffers (x, y, scratch; grown by half again or to the need, never shrunk),
 * and a host array of device weight pointers for the grouped FFN. Every op
 * ends with the download of y, which waits for the stream, so no device work
 * is in flight between ops: buffers can be freed and reused at once. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "core.h"
#include "kcheck.h"
#include "ops_cuda_host.h"
#include "ops_gpu.h"

enum { PROBES = 4, ERR_MAX = 1024, MIN_SLOTS = 64 };

typedef struct wentry {
    const void *host; /* NULL: an empty slot */
    size_t bytes;
    void *dev;
    uint32_t probe[PROBES]; /* sampled words of the host tensor at upload */
} wentry;

typedef struct dbuf {
    void *p;
    size_t cap;
} dbuf;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
    int open, device;
    const epm_gpu_ops *G;
    epm_gpu *g;
    epm_status err; /* first error since open (or since close, for ops called while closed) */
    char msg[ERR_MAX];
    wentry *tab;
    size_t cap, used; /* slots (a power of two), entries */
    int64_t bytes;    /* weight bytes on the device */
    dbuf x, y, scr;
    const void **wp; /* 3 * experts device weight pointers for grouped_swiglu */
    size_t wp_cap;
} S;

/* ---- errors ---- */

/* Keeps the first error (its detail with the op's name in front). */
static void record(epm_status st, const char *op)
{
    if (st == EPM_OK || S.err != EPM_OK)
        return;
    epm_fail_context(st, "GPU ops (cuda) %s", op);
    S.err = st;
    snprintf(S.msg, sizeof S.msg, "%s", epm_last_error());
}

static void zero(float *y, int64_t rows, int64_t width)
{
    size_t n = 0;
    if (y && rows > 0 && width > 0 && epm_mul_ok((size_t)rows, (size_t)width, &n) &&
        epm_mul_ok(n, sizeof *y, &n))
        memset(y, 0, n);
}

/* rows * width floats in bytes, or EPM_ERR_INVALID_ARG when that overflows */
static epm_status fbytes(const char *op, int64_t rows, int64_t width, size_t *out)
{
    if (!epm_mul_ok((size_t)rows, (size_t)width, out) || !epm_mul_ok(*out, sizeof(float), out))
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: %lld x %lld floats overflow size_t", op, (long long)rows,
                        (long long)width);
    return EPM_OK;
}

/* The state every op starts in: open and nothing failed yet. */
static epm_status usable(void)
{
    if (S.err != EPM_OK)
        return S.err;
    if (!S.open)
        return epm_fail(EPM_ERR_INVALID_ARG, "called while the table is closed (epm_ops_cuda_open first)");
    return EPM_OK;
}

/* ---- device buffers ---- */

static epm_status grow(dbuf *b, size_t bytes, const char *what)
{
    if (bytes <= b->cap && b->p)
        return EPM_OK;
    size_t cap = b->cap + b->cap / 2;
    cap = cap > bytes ? cap : bytes;
    S.G->free(S.g, b->p); /* idle: the last op's download waited for the stream */
    b->p = NULL, b->cap = 0;
    epm_status st = S.G->alloc(S.g, cap, &b->p);
    if (st != EPM_OK)
        return epm_fail_context(st, "%s buffer of %zu bytes", what, cap);
    b->cap = cap;
    return EPM_OK;
}

/* ---- the weight cache ---- */

static size_t hash(const void *p, size_t bytes)
{
    uint64_t z = (uint64_t)(uintptr_t)p ^ ((uint64_t)bytes * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (size_t)(z ^ (z >> 31));
}

static void sample(const void *host, size_t bytes, uint32_t *probe)
{
    size_t words = bytes / 4;
    for (int i = 0; i < PROBES; i++) {
        size_t at = words ? (i == PROBES - 1 ? words - 1 : words / (PROBES - 1) * i) : 0;
        probe[i] = 0;
        if (words)
            memcpy(&probe[i], (const char *)host + at * 4, 4);
    }
}

static wentry *slot_of(wentry *tab, size_t cap, const void *host, size_t bytes)
{
    size_t i = hash(host, bytes) & (cap - 1);
    while (tab[i].host && !(tab[i].host == host && tab[i].bytes == bytes))
        i = (i + 1) & (cap - 1);
    return &tab[i];
}

static epm_status cache_reserve(void)
{
    if ((S.used + 1) * 10 <= S.cap * 7)
        return EPM_OK;
    size_t cap = S.cap ? 2 * S.cap : MIN_SLOTS;
    wentry *t = epm_calloc(cap, sizeof *t);
    if (!t)
        return epm_fail(EPM_ERR_NOMEM, "weight cache of %zu entries", cap);
    for (size_t i = 0; i < S.cap; i++)
        if (S.tab[i].host)
            *slot_of(t, cap, S.tab[i].host, S.tab[i].bytes) = S.tab[i];
    epm_free(S.tab);
    S.tab = t, S.cap = cap;
    return EPM_OK;
}

/* The device copy of the weight tensor host[bytes], uploaded on first use. */
static epm_status weight(const void *host, size_t bytes, const void **dev)
{
    *dev = NULL;
    if (!host)
        return epm_fail(EPM_ERR_INVALID_ARG, "a weight pointer is NULL");
    uint32_t probe[PROBES];
    sample(host, bytes, probe);
    if (S.cap) {
        wentry *e = slot_of(S.tab, S.cap, host, bytes);
        if (e->host) {
            if (memcmp(e->probe, probe, sizeof probe)) { /* the address now holds other data */
                EPM_CHECK(S.G->upload(S.g, e->dev, host, bytes));
                memcpy(e->probe, probe, sizeof probe);
            }
            *dev = e->dev;
            return EPM_OK;
        }
    }
    EPM_CHECK(cache_reserve());
    void *d = NULL;
    epm_status st = S.G->alloc(S.g, bytes, &d);
    if (st != EPM_OK)
        return epm_fail_context(st, "weight of %zu bytes (%lld cached)", bytes, (long long)S.bytes);
    st = S.G->upload(S.g, d, host, bytes);
    if (st != EPM_OK) {
        S.G->free(S.g, d);
        return st;
    }
    wentry *e = slot_of(S.tab, S.cap, host, bytes);
    e->host = host, e->bytes = bytes, e->dev = d;
    memcpy(e->probe, probe, sizeof probe);
    S.used++;
    S.bytes += (int64_t)bytes;
    *dev = d;
    return EPM_OK;
}

static int by_address(const void *a, const void *b)
{
    const uintptr_t x = (uintptr_t)*(const void *const *)a, y = (uintptr_t)*(const void *const *)b;
    return (x > y) - (x < y);
}

epm_status epm_ops_cuda_forget(const void **hosts, int n)
{
    if (n < 0 || (n > 0 && !hosts))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_ops_cuda_forget: %d pointers", n);
    if (n == 0)
        return EPM_OK;
    pthread_mutex_lock(&lock);
    epm_status st = EPM_OK;
    wentry *t = S.cap ? epm_calloc(S.cap, sizeof *t) : NULL;
    if (S.cap && !t)
        st = epm_fail(EPM_ERR_NOMEM, "weight cache of %zu entries", S.cap);
    if (st == EPM_OK && S.cap) {
        qsort(hosts, (size_t)n, sizeof *hosts, by_address);
        size_t used = 0;
        for (size_t i = 0; i < S.cap; i++) {
            wentry *e = &S.tab[i];
            if (!e->host)
                continue;
            if (bsearch(&e->host, hosts, (size_t)n, sizeof *hosts, by_address)) {
                S.G->free(S.g, e->dev);
                S.bytes -= (int64_t)e->bytes;
                continue;
            }
            *slot_of(t, S.cap, e->host, e->bytes) = *e;
            used++;
        }
        epm_free(S.tab);
        S.tab = t, S.used = used;
        t = NULL;
    }
    epm_free(t);
    pthread_mutex_unlock(&lock);
    return st;
}

/* A float32 weight [rows][cols]. */
static epm_status fweight(const float *host, int64_t rows, int64_t cols, const void **dev)
{
    size_t bytes = 0;
    EPM_CHECK(fbytes("weight", rows, cols, &bytes));
    return weight(host, bytes, dev);
}

/* ---- the ops: each runs under the lock; any failure is recorded and zeroes y ---- */

static epm_status run_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    EPM_CHECK(usable());
    KREQ(n >= 0, "n = %lld", (long long)n);
    KREQ(in >= 1, "in = %d", in);
    KREQ(out >= 1, "out = %d", out);
    KPTR("linear", x, n);
    KPTR("linear", w, 1);
    KPTR("linear", y, n);
    if (n == 0)
        return EPM_OK;
    const void *wd = NULL, *bd = NULL;
    EPM_CHECK(fweight(w, out, in, &wd));
    if (b)
        EPM_CHECK(fweight(b, 1, out, &bd));
    size_t xb = 0, yb = 0;
    EPM_CHECK(fbytes("x", n, in, &xb));
    EPM_CHECK(fbytes("y", n, out, &yb));
    EPM_CHECK(grow(&S.x, xb, "x"));
    EPM_CHECK(grow(&S.y, yb, "y"));
    EPM_CHECK(S.G->upload(S.g, S.x.p, x, xb));
    EPM_CHECK(S.G->linear(S.g, S.x.p, n, in, wd, bd, out, S.y.p));
    return S.G->download(S.g, y, S.y.p, yb);
}

static void cuda_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    pthread_mutex_lock(&lock);
    epm_status st = run_linear(x, n, in, w, b, out, y);
    if (st != EPM_OK) {
        char what[96];
        snprintf(what, sizeof what, "linear (n %lld, in %d, out %d)", (long long)n, in, out);
        record(st, what);
        zero(y, n, out);
    }
    pthread_mutex_unlock(&lock);
}

static epm_status run_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    EPM_CHECK(usable());
    KREQ(n >= 0, "n = %lld", (long long)n);
    KREQ(d >= 1, "d = %d", d);
    KREQ(eps >= 0 && isfinite(eps), "eps = %g", (double)eps);
    KPTR("rmsnorm", x, n);
    KPTR("rmsnorm", w, 1);
    KPTR("rmsnorm", y, n);
    if (n == 0)
        return EPM_OK;
    const void *wd = NULL;
    EPM_CHECK(fweight(w, 1, d, &wd));
    size_t xb = 0;
    EPM_CHECK(fbytes("x", n, d, &xb));
    EPM_CHECK(grow(&S.x, xb, "x"));
    EPM_CHECK(grow(&S.y, xb, "y"));
    EPM_CHECK(S.G->upload(S.g, S.x.p, x, xb));
    EPM_CHECK(S.G->rmsnorm(S.g, S.x.p, n, d, wd, eps, S.y.p));
    return S.G->download(S.g, y, S.y.p, xb);
}

static void cuda_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    pthread_mutex_lock(&lock);
    epm_status st = run_rmsnorm(x, n, d, w, eps, y);
    if (st != EPM_OK) {
        char what[96];
        snprintf(what, sizeof what, "rmsnorm (n %lld, d %d)", (long long)n, d);
        record(st, what);
        zero(y, n, d);
    }
    pthread_mutex_unlock(&lock);
}

/* offsets[0] = 0, non-decreasing: without setting an error detail */
static int offsets_ok(const int64_t *offsets, int experts)
{
    if (!offsets || experts < 1 || offsets[0] != 0)
        return 0;
    for (int e = 0; e < experts; e++)
        if (offsets[e + 1] < offsets[e])
            return 0;
    return 1;
}

/* The grouped FFN on checked offsets; gate/up/down are host arrays of host pointers. */
static epm_status run_grouped(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                              const float *const *gate, const float *const *up, const float *const *down, float *y)
{
    int64_t rows = offsets[experts];
    KREQ(hidden >= 1, "hidden = %d", hidden);
    KREQ(ffn >= 1, "ffn = %d", ffn);
    KPTR("grouped_swiglu", x, rows);
    KPTR("grouped_swiglu", y, rows);
    if (rows == 0)
        return EPM_OK;
    size_t np = 0;
    KREQ(epm_mul_ok((size_t)experts, 3, &np), "experts = %d", experts);
    if (np > S.wp_cap) {
        const void **p = epm_realloc(S.wp, np * sizeof *p);
        if (!p)
            return epm_fail(EPM_ERR_NOMEM, "weight pointers of %d experts", experts);
        S.wp = p, S.wp_cap = np;
    }
    const void **g = S.wp, **u = S.wp + experts, **dn = S.wp + 2 * (size_t)experts;
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        g[e] = u[e] = dn[e] = NULL;
        if (m == 0) /* not loaded, not uploaded */
            continue;
        KREQ(gate[e] && up[e] && down[e], "expert %d has %lld rows but no weights", e, (long long)m);
        EPM_CHECK(fweight(gate[e], ffn, hidden, &g[e]));
        EPM_CHECK(fweight(up[e], ffn, hidden, &u[e]));
        EPM_CHECK(fweight(down[e], hidden, ffn, &dn[e]));
    }
    size_t xb = 0;
    EPM_CHECK(fbytes("x", rows, hidden, &xb));
    size_t sb = S.G->grouped_scratch_bytes(EPM_GPU_F32, rows, ffn);
    EPM_CHECK(grow(&S.x, xb, "x"));
    EPM_CHECK(grow(&S.y, xb, "y"));
    EPM_CHECK(grow(&S.scr, sb, "scratch"));
    EPM_CHECK(S.G->upload(S.g, S.x.p, x, xb));
    EPM_CHECK(S.G->grouped_swiglu(S.g, EPM_GPU_F32, S.x.p, offsets, experts, hidden, ffn, g, u, dn, S.scr.p, S.y.p));
    return S.G->download(S.g, y, S.y.p, xb);
}

static epm_status run_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                             const float *down, float *y)
{
    EPM_CHECK(usable());
    KREQ(n >= 0, "n = %lld", (long long)n);
    const int64_t off[2] = {0, n};
    return run_grouped(x, off, 1, hidden, ffn, &gate, &up, &down, y);
}

static void cuda_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                        const float *down, float *scratch, float *y)
{
    (void)scratch;
    pthread_mutex_lock(&lock);
    epm_status st = run_swiglu(x, n, hidden, ffn, gate, up, down, y);
    if (st != EPM_OK) {
        char what[96];
        snprintf(what, sizeof what, "swiglu (n %lld, hidden %d, ffn %d)", (long long)n, hidden, ffn);
        record(st, what);
        zero(y, n, hidden);
    }
    pthread_mutex_unlock(&lock);
}

static void cuda_grouped_swiglu(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                const float *const *gate, const float *const *up, const float *const *down,
                                float *scratch, float *y)
{
    (void)scratch;
    pthread_mutex_lock(&lock);
    epm_status st = usable();
    if (st == EPM_OK)
        st = epm_ref_check_offsets("grouped_swiglu", offsets, experts);
    if (st == EPM_OK && !(gate && up && down))
        st = epm_fail(EPM_ERR_INVALID_ARG, "a weight pointer array is NULL");
    if (st == EPM_OK)
        st = run_grouped(x, offsets, experts, hidden, ffn, gate, up, down, y);
    if (st != EPM_OK) {
        char what[96];
        snprintf(what, sizeof what, "grouped_swiglu (experts %d, hidden %d, ffn %d)", experts, hidden, ffn);
        record(st, what);
        if (offsets_ok(offsets, experts))
            zero(y, offsets[experts], hidden);
    }
    pthread_mutex_unlock(&lock);
}

/* no bf16-weight FFN or linear: its weight cache uploads float32 tensors,
 * so the runtime holds every weight in float32 under these kernels; the
 * runtime's attention reads its KV caches in host memory, so the CPU's
 * (every cache dtype) */
static const epm_ops cuda_ops = {"cuda", cuda_linear, cuda_rmsnorm, cuda_swiglu, cuda_grouped_swiglu, NULL, NULL,
                                 epm_cpu_attention, NULL, NULL, epm_cpu_attention_bf16, epm_cpu_attention_fp8};

/* ---- open / close ---- */

/* Frees everything on the device and the context; leaves S cleared. */
static void release(void)
{
    if (S.G && S.g) {
        for (size_t i = 0; i < S.cap; i++)
            if (S.tab[i].host)
                S.G->free(S.g, S.tab[i].dev);
        S.G->free(S.g, S.x.p);
        S.G->free(S.g, S.y.p);
        S.G->free(S.g, S.scr.p);
        S.G->destroy(S.g);
    }
    epm_free(S.tab);
    epm_free(S.wp);
    memset(&S, 0, sizeof S);
}

epm_status epm_ops_cuda_open(int device, const epm_ops **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_ops_cuda_open: out is NULL");
    *out = NULL;
    pthread_mutex_lock(&lock);
    epm_status st = EPM_OK;
    if (S.open) {
        if (device == S.device)
            *out = &cuda_ops;
        else
            st = epm_fail(EPM_ERR_INVALID_ARG,
                          "epm_ops_cuda_open: device %d requested, but the GPU ops are open on device %d (one "
                          "device per process: epm_ops_cuda_close first)",
                          device, S.device);
        pthread_mutex_unlock(&lock);
        return st;
    }
    const epm_gpu_ops *G = epm_gpu_ops_cuda();
    int count = G ? G->device_count() : 0;
    epm_gpu *g = NULL;
    if (device < 0)
        st = epm_fail(EPM_ERR_INVALID_ARG, "epm_ops_cuda_open: device %d", device);
    else if (!G)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "epm_ops_cuda_open: device %d: this epmoe was built without CUDA (nvcc "
                      "was not found when it was configured)", device);
    else if (count <= 0)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "epm_ops_cuda_open: device %d: no CUDA device is visible "
                      "(cudaGetDeviceCount found none)", device);
    else if (device >= count)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "epm_ops_cuda_open: device %d: only %d CUDA device%s visible", device,
                      count, count == 1 ? " is" : "s are");
    else if ((st = G->create(device, &g)) != EPM_OK)
        epm_fail_context(st, "epm_ops_cuda_open: device %d", device);
    if (st == EPM_OK) {
        memset(&S, 0, sizeof S); /* also clears an error recorded by an op called while closed */
        S.open = 1, S.device = device, S.G = G, S.g = g;
        *out = &cuda_ops;
    }
    pthread_mutex_unlock(&lock);
    return st;
}

void epm_ops_cuda_close(void)
{
    pthread_mutex_lock(&lock);
    release();
    pthread_mutex_unlock(&lock);
}

epm_status epm_ops_cuda_error(void)
{
    pthread_mutex_lock(&lock);
    epm_status st = S.err;
    if (st != EPM_OK)
        epm_fail(st, "%s", S.msg);
    pthread_mutex_unlock(&lock);
    return st;
}

int64_t epm_ops_cuda_weight_bytes(void)
{
    pthread_mutex_lock(&lock);
    int64_t b = S.bytes;
    pthread_mutex_unlock(&lock);
    return b;
}
