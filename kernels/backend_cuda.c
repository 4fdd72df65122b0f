/* The "cuda" backend: the public table over the device kernels of
 * ops_gpu.h (ops_cuda.cu). Plain C, built in every configuration: without
 * CUDA, epm_gpu_ops_cuda() is NULL and creating the backend says so. The
 * host-side checks (shapes, options, limits) happen here, before anything is
 * queued, so a bad call fails by name instead of inside a kernel. */
#include "backend.h"
#include "kcheck.h"
#include "ops_gpu.h"

static const epm_gpu_ops *gpu(void) { return epm_gpu_ops_cuda(); }
static epm_gpu *ctx_of(epm_kernels *kb) { return (epm_gpu *)kb->ctx; }

int epm_kernels_cuda_devices(void)
{
    const epm_gpu_ops *G = gpu();
    int n = G ? G->device_count() : 0;
    return n > 0 ? n : 0;
}

static epm_status gpu_dtype(const char *fn, epm_dtype dt, epm_gpu_dtype *out)
{
    if (dt == EPM_DTYPE_F32)
        *out = EPM_GPU_F32;
    else if (dt == EPM_DTYPE_BF16)
        *out = EPM_GPU_BF16;
    else
        return epm_fail(EPM_ERR_UNSUPPORTED, "cuda %s: dtype %s (F32 or BF16 only)", fn, epm_dtype_name(dt));
    return EPM_OK;
}

static epm_status c_alloc(epm_kernels *kb, size_t bytes, void **out)
{
    KREQ(out != NULL, "cuda alloc: out is NULL");
    return gpu()->alloc(ctx_of(kb), bytes, out);
}

static void c_free(epm_kernels *kb, void *p) { gpu()->free(ctx_of(kb), p); }

static epm_status c_upload(epm_kernels *kb, void *dst, const void *src, size_t bytes)
{
    KPTR("cuda upload", dst, bytes);
    KPTR("cuda upload", src, bytes);
    return gpu()->upload(ctx_of(kb), dst, src, bytes);
}

static epm_status c_download(epm_kernels *kb, void *dst, const void *src, size_t bytes)
{
    KPTR("cuda download", dst, bytes);
    KPTR("cuda download", src, bytes);
    return gpu()->download(ctx_of(kb), dst, src, bytes);
}

static epm_status c_sync(epm_kernels *kb) { return gpu()->sync(ctx_of(kb)); }

static epm_status c_convert(epm_kernels *kb, const void *src, epm_dtype st, int64_t n, epm_dtype dt, void *dst)
{
    epm_gpu_dtype a = EPM_GPU_F32, b = EPM_GPU_F32;
    EPM_CHECK(gpu_dtype("convert", st, &a));
    EPM_CHECK(gpu_dtype("convert", dt, &b));
    KREQ(n >= 0, "cuda convert: n = %lld", (long long)n);
    KREQ(src != dst || a == b, "cuda convert: in place between different widths");
    return gpu()->convert(ctx_of(kb), src, a, dst, b, n);
}

static epm_status c_embed(epm_kernels *kb, const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                          float *out)
{
    KREQ(vocab >= 1 && d >= 1 && n >= 0, "cuda embed: vocab = %lld, d = %d, n = %lld", (long long)vocab, d,
         (long long)n);
    return gpu()->embed(ctx_of(kb), table, vocab, d, ids, n, out);
}

static epm_status c_linear(epm_kernels *kb, const float *x, int64_t n, int in, const float *w, const float *b,
                           int out, float *y)
{
    KREQ(n >= 0 && in >= 1 && out >= 1, "cuda linear: n = %lld, in = %d, out = %d", (long long)n, in, out);
    return gpu()->linear(ctx_of(kb), x, n, in, w, b, out, y);
}

static epm_status c_rmsnorm(epm_kernels *kb, const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    KREQ(n >= 0 && d >= 1 && eps >= 0, "cuda rmsnorm: n = %lld, d = %d, eps = %g", (long long)n, d, (double)eps);
    return gpu()->rmsnorm(ctx_of(kb), x, n, d, w, eps, y);
}

static epm_status c_rope(epm_kernels *kb, float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    KREQ(n >= 0 && heads >= 1 && hd >= 2 && hd % 2 == 0 && theta > 1,
         "cuda rope: n = %lld, heads = %d, head_dim = %d, theta = %g", (long long)n, heads, hd, theta);
    return gpu()->rope(ctx_of(kb), x, n, heads, hd, pos, theta);
}

static epm_status c_attention(epm_kernels *kb, const float *q, int64_t n, const int32_t *pos, const float *kc,
                              const float *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                              float *probs)
{
    if (probs)
        return epm_fail(EPM_ERR_UNSUPPORTED, "cuda attention: probs output (use the ref or cpu backend for "
                        "attention-probability routing)");
    KREQ(n >= 0 && cache_len >= 1 && heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0 && hd >= 1,
         "cuda attention: n = %lld, cache_len = %lld, heads = %d, kv_heads = %d, head_dim = %d", (long long)n,
         (long long)cache_len, heads, kv_heads, hd);
    return gpu()->attention(ctx_of(kb), q, n, pos, kc, vc, heads, kv_heads, hd, out, cache_len);
}

static epm_status c_router(epm_kernels *kb, const float *logits, int64_t n, int experts, const epm_router_opts *o,
                           int32_t *ids, float *wts)
{
    KREQ(o != NULL, "cuda router: options are NULL");
    KREQ(n >= 0, "cuda router: n = %lld", (long long)n);
    KREQ(o->score == EPM_SCORE_SOFTMAX || o->score == EPM_SCORE_SIGMOID, "cuda router: score = %d", (int)o->score);
    KREQ(o->top_p >= 0, "cuda router: top_p = %g", (double)o->top_p);
    return gpu()->router(ctx_of(kb), logits, n, experts, o->k, o->score == EPM_SCORE_SIGMOID, o->top_p, o->renorm,
                         ids, wts);
}

static epm_status c_route(epm_kernels *kb, const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                          int32_t *row_src, int32_t *row_of)
{
    KREQ(n >= 0 && k >= 1 && experts >= 1, "cuda route: n = %lld, k = %d, experts = %d", (long long)n, k, experts);
    KREQ(n <= INT32_MAX / k, "cuda route: n * k = %lld * %d overflows the int32 row maps", (long long)n, k);
    return gpu()->route(ctx_of(kb), ids, n, k, experts, offsets, row_src, row_of);
}

static epm_status c_permute(epm_kernels *kb, epm_dtype dt, const void *x, int hidden, const int32_t *row_src,
                            int64_t rows, void *out)
{
    epm_gpu_dtype t = EPM_GPU_F32;
    EPM_CHECK(gpu_dtype("permute", dt, &t));
    KREQ(hidden >= 1 && rows >= 0, "cuda permute: hidden = %d, rows = %lld", hidden, (long long)rows);
    return gpu()->permute(ctx_of(kb), t, x, hidden, row_src, rows, out);
}

static epm_status c_unpermute(epm_kernels *kb, epm_dtype dt, const void *y, int hidden, const int32_t *row_of,
                              const float *w, int64_t n, int k, void *out)
{
    epm_gpu_dtype t = EPM_GPU_F32;
    EPM_CHECK(gpu_dtype("unpermute", dt, &t));
    KREQ(hidden >= 1 && n >= 0 && k >= 1, "cuda unpermute: hidden = %d, n = %lld, k = %d", hidden, (long long)n, k);
    return gpu()->unpermute(ctx_of(kb), t, y, hidden, row_of, w, n, k, out);
}

static size_t c_ffn_scratch(epm_kernels *kb, epm_dtype dt, int64_t rows, int hidden, int ffn)
{
    (void)kb, (void)hidden;
    return gpu()->grouped_scratch_bytes(dt == EPM_DTYPE_BF16 ? EPM_GPU_BF16 : EPM_GPU_F32, rows, ffn);
}

static epm_status c_grouped_ffn(epm_kernels *kb, epm_dtype dt, const void *x, const int64_t *offsets, int experts,
                                int hidden, int ffn, const void *const *gate, const void *const *up,
                                const void *const *down, void *scratch, void *y)
{
    epm_gpu_dtype t = EPM_GPU_F32;
    EPM_CHECK(gpu_dtype("grouped_ffn", dt, &t));
    EPM_CHECK(epm_ref_check_offsets("cuda grouped_ffn", offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "cuda grouped_ffn: hidden = %d, ffn = %d", hidden, ffn);
    KREQ(gate && up && down, "cuda grouped_ffn: a weight pointer array is NULL");
    return gpu()->grouped_swiglu(ctx_of(kb), t, x, offsets, experts, hidden, ffn, gate, up, down, scratch, y);
}

static const epm_kernel_ops cuda_table = {
    .alloc = c_alloc, .free = c_free, .upload = c_upload, .download = c_download, .sync = c_sync,
    .convert = c_convert, .embed = c_embed, .linear = c_linear, .rmsnorm = c_rmsnorm, .rope = c_rope,
    .attention = c_attention, .router = c_router, .route = c_route, .permute = c_permute,
    .unpermute = c_unpermute, .grouped_ffn_scratch = c_ffn_scratch, .grouped_ffn = c_grouped_ffn,
};

static void release(void *ctx) { gpu()->destroy((epm_gpu *)ctx); }

epm_status epm_kernels_cuda_open(epm_kernels *kb)
{
    const epm_gpu_ops *G = gpu();
    if (!G)
        return epm_fail(EPM_ERR_UNSUPPORTED, "kernels backend 'cuda': this epmoe was built without CUDA (nvcc was "
                        "not found when it was configured)");
    if (G->device_count() <= 0)
        return epm_fail(EPM_ERR_UNSUPPORTED, "kernels backend 'cuda': no CUDA device is visible "
                        "(cudaGetDeviceCount found none)");
    epm_gpu *g = NULL;
    EPM_CHECK(G->create(0, &g));
    kb->name = "cuda", kb->ops = &cuda_table, kb->host_memory = 0, kb->ctx = g, kb->release = release;
    return EPM_OK;
}
