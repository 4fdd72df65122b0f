// The CUDA backend of ops_gpu.h.
//
// Grouped expert FFN: cublasGemmEx once per non-empty expert for gate and for
// up, one fused SiLU*up kernel over all rows, then cublasGemmEx per expert for
// down, all on the context's one stream. Why not cublasGemmGroupedBatchedEx
// (present in CUDA 12.5+ and 13): it wants the A/B/C pointer arrays in device
// memory, so each layer would upload three pointer arrays before its GEMMs, and
// it has no fast path yet for groups of very different m (our experts' row
// counts differ by orders of magnitude); per-expert GemmEx calls pick a tuned
// kernel per size and skip empty experts for free. The grouped call is the
// first thing to try on the GPU machine when the many-small-experts shape
// (256 experts, a few rows each) is launch-bound.
// Offsets are a host array because cuBLAS takes m from the host: that is one
// device-to-host copy of E+1 integers per layer after routing, the only host
// round trip; a device-side grouped GEMM kernel would remove it.
//
// bf16: weights and activations bf16, gate/up GEMMs accumulate and store in
// float32, SiLU*up in float32, rounded once to bf16 for the down GEMM, which
// writes bf16. Compute type 32F everywhere (not TF32: float32 results must
// match the CPU reference at 1e-5).
//
// The other kernels are straightforward and correct rather than tuned:
// RMSNorm one block per row; RoPE one thread per rotated pair; attention one
// warp per (query row, head) streaming keys with an online softmax (prefill
// and decode alike, not flash attention); router one thread per token (E
// sequential, exact tie rule); routing a single block doing a stable counting
// sort (O(E * n * k) reads, fine up to 16k tokens x top-8).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>

#include "ops_gpu.h"

extern "C" epm_status epm_fail(epm_status s, const char *fmt, ...);

struct epm_gpu {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
};

#define CU(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess)                                                                            \
            return epm_fail(EPM_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
    } while (0)
#define CB(call)                                                                                          \
    do {                                                                                                  \
        cublasStatus_t s_ = (call);                                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                  \
            return epm_fail(EPM_ERR_CUDA, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_); \
    } while (0)
#define LAUNCHED() CU(cudaGetLastError())

static unsigned blocks_for(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

static size_t esize(epm_gpu_dtype dt) { return dt == EPM_GPU_BF16 ? 2 : 4; }
static cudaDataType_t ctype(epm_gpu_dtype dt) { return dt == EPM_GPU_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// ---- context and memory ----

static int cu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess)
        return 0;
    return n;
}

static void cu_destroy(epm_gpu *g)
{
    if (!g)
        return;
    if (g->blas)
        cublasDestroy(g->blas);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    free(g);
}

static epm_status cu_create(int device, epm_gpu **out)
{
    *out = NULL;
    int n = cu_device_count();
    if (device < 0 || device >= n)
        return epm_fail(EPM_ERR_CUDA, "GPU backend: device %d requested, %d visible", device, n);
    epm_gpu *g = (epm_gpu *)calloc(1, sizeof *g);
    if (!g)
        return epm_fail(EPM_ERR_NOMEM, "GPU backend: context");
    g->device = device;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        cu_destroy(g);
        return epm_fail(EPM_ERR_CUDA, "GPU backend: device %d: %s", device, cudaGetErrorString(e));
    }
    // default math mode: CUBLAS_COMPUTE_32F then means true float32 (TF32
    // only with CUBLAS_TF32_TENSOR_OP_MATH or the _FAST_TF32 compute types)
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(g->blas, g->stream) != CUBLAS_STATUS_SUCCESS) {
        g->blas = NULL;
        cu_destroy(g);
        return epm_fail(EPM_ERR_CUDA, "GPU backend: cuBLAS on device %d", device);
    }
    *out = g;
    return EPM_OK;
}

static epm_status cu_alloc(epm_gpu *g, size_t bytes, void **out)
{
    (void)g;
    *out = NULL;
    CU(cudaMalloc(out, bytes ? bytes : 1));
    return EPM_OK;
}

static void cu_free(epm_gpu *g, void *p)
{
    (void)g;
    if (p)
        cudaFree(p);
}

static epm_status cu_upload(epm_gpu *g, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g->stream));
    // the host buffer may be reused by the caller at once
    CU(cudaStreamSynchronize(g->stream));
    return EPM_OK;
}

static epm_status cu_download(epm_gpu *g, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    return EPM_OK;
}

static epm_status cu_sync(epm_gpu *g)
{
    CU(cudaStreamSynchronize(g->stream));
    return EPM_OK;
}

template <typename S, typename D> __global__ void k_convert(const S *s, D *d, int64_t n)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n)
        d[i] = from_f<D>(to_f<S>(s[i]));
}

static epm_status cu_convert(epm_gpu *g, const void *src, epm_gpu_dtype st, void *dst, epm_gpu_dtype dt, int64_t n)
{
    if (n <= 0)
        return EPM_OK;
    unsigned b = blocks_for(n, 256);
    if (st == EPM_GPU_F32 && dt == EPM_GPU_BF16)
        k_convert<float, __nv_bfloat16><<<b, 256, 0, g->stream>>>((const float *)src, (__nv_bfloat16 *)dst, n);
    else if (st == EPM_GPU_BF16 && dt == EPM_GPU_F32)
        k_convert<__nv_bfloat16, float><<<b, 256, 0, g->stream>>>((const __nv_bfloat16 *)src, (float *)dst, n);
    else if (st == dt)
        CU(cudaMemcpyAsync(dst, src, (size_t)n * esize(st), cudaMemcpyDeviceToDevice, g->stream));
    else
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU convert: dtype %d -> %d", (int)st, (int)dt);
    LAUNCHED();
    return EPM_OK;
}

// ---- RMSNorm ----

__global__ void k_rmsnorm(const float *x, int d, const float *w, float eps, float *y)
{
    __shared__ float part[256];
    const float *xr = x + (int64_t)blockIdx.x * d;
    float s = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        s += xr[j] * xr[j];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h /= 2) {
        if ((int)threadIdx.x < h)
            part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    float inv = (float)(1.0 / sqrt((double)part[0] / d + eps));
    float *yr = y + (int64_t)blockIdx.x * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        yr[j] = w[j] * (xr[j] * inv); // in place is safe: each element read then written by one thread
}

static epm_status cu_rmsnorm(epm_gpu *g, const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    if (n <= 0)
        return EPM_OK;
    if (n > 0x7fffffff)
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU rmsnorm: %lld rows", (long long)n);
    k_rmsnorm<<<(unsigned)n, 256, 0, g->stream>>>(x, d, w, eps, y);
    LAUNCHED();
    return EPM_OK;
}

// ---- RoPE (rotate_half) ----

__global__ void k_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    int half = hd / 2;
    int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (id >= n * heads * half)
        return;
    int j = (int)(id % half);
    int64_t rh = id / half; // row * heads + head
    int64_t i = rh / heads;
    double a = (double)pos[i] * pow(theta, -2.0 * j / hd);
    float c = (float)cos(a), s = (float)sin(a);
    float *v = x + rh * hd;
    float x1 = v[j], x2 = v[j + half];
    v[j] = x1 * c - x2 * s;
    v[j + half] = x2 * c + x1 * s;
}

static epm_status cu_rope(epm_gpu *g, float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    int64_t t = n * heads * (hd / 2);
    if (t <= 0)
        return EPM_OK;
    k_rope<<<blocks_for(t, 256), 256, 0, g->stream>>>(x, n, heads, hd, pos, theta);
    LAUNCHED();
    return EPM_OK;
}

// ---- attention: one warp per (row, head), online softmax over the keys ----

#define ATT_MAX_PER_LANE 8 // hd <= 256

__global__ void k_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                            int kv_heads, int hd, float *out, float scale)
{
    int64_t wid = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (wid >= n * heads) // the whole warp leaves together
        return;
    int64_t i = wid / heads;
    int h = (int)(wid % heads), kh = h / (heads / kv_heads);
    float qv[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE];
    const float *qr = q + wid * hd;
#pragma unroll
    for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
        int j = lane + 32 * c;
        qv[c] = j < hd ? qr[j] : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY, z = 0.0f;
    int64_t len = (int64_t)pos[i] + 1;
    for (int64_t t = 0; t < len; t++) {
        const float *kr = kc + (t * kv_heads + kh) * hd, *vr = vc + (t * kv_heads + kh) * hd;
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
            int j = lane + 32 * c;
            if (j < hd)
                s += qv[c] * kr[j];
        }
        for (int o = 16; o > 0; o /= 2)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        s *= scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn); // m = -inf the first time: corr = 0
        z = z * corr + p;
#pragma unroll
        for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
            int j = lane + 32 * c;
            if (j < hd)
                acc[c] = acc[c] * corr + p * vr[j];
        }
        m = mn;
    }
    float *orow = out + wid * hd;
#pragma unroll
    for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
        int j = lane + 32 * c;
        if (j < hd)
            orow[j] = acc[c] / z;
    }
}

static epm_status cu_attention(epm_gpu *g, const float *q, int64_t n, const int32_t *pos, const float *kc,
                               const float *vc, int heads, int kv_heads, int hd, float *out, int64_t cache_len)
{
    (void)cache_len; // positions index the cache; the caller guarantees pos < cache_len
    if (hd > 32 * ATT_MAX_PER_LANE || hd < 1 || kv_heads < 1 || heads % kv_heads)
        return epm_fail(EPM_ERR_UNSUPPORTED, "GPU attention: head_dim %d, heads %d, kv_heads %d (head_dim <= %d, "
                                             "heads a multiple of kv_heads)", hd, heads, kv_heads, 32 * ATT_MAX_PER_LANE);
    int64_t warps = n * heads;
    if (warps <= 0)
        return EPM_OK;
    k_attention<<<blocks_for(warps * 32, 128), 128, 0, g->stream>>>(q, n, pos, kc, vc, heads, kv_heads, hd, out,
                                                                     (float)(1.0 / sqrt((double)hd)));
    LAUNCHED();
    return EPM_OK;
}

// ---- router: softmax + top-k (+ top-p, renorm), one thread per token ----

#define ROUTER_MAX_K 16

__device__ __forceinline__ float router_score(const float *l, int e, float m, double s, int sigmoid)
{
    // rounded exactly as epm_router rounds them on the CPU, so ties break alike
    return sigmoid ? 1.0f / (1.0f + expf(-l[e])) : (float)(expf(l[e] - m) / s);
}

__global__ void k_router(const float *logits, int64_t n, int E, int k, int sigmoid, float top_p, int renorm,
                         int32_t *ids, float *wts)
{
    int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= n)
        return;
    const float *l = logits + t * E;
    float m = l[0];
    for (int e = 1; e < E; e++)
        m = fmaxf(m, l[e]);
    double s = 0;
    for (int e = 0; e < E; e++)
        s += expf(l[e] - m);
    int32_t pick[ROUTER_MAX_K];
    float val[ROUTER_MAX_K];
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int q = 0; q < j; q++)
                taken |= pick[q] == e;
            float p = router_score(l, e, m, s, sigmoid);
            if (!taken && (best < 0 || p > bv))
                best = e, bv = p;
        }
        pick[j] = best, val[j] = bv;
    }
    if (top_p > 0 && top_p < 1) {
        double mass = 0;
        for (int j = 0; j < k; j++) {
            if (j > 0 && mass >= top_p) {
                pick[j] = -1, val[j] = 0;
                continue;
            }
            mass += val[j];
        }
    }
    if (renorm) {
        double z = 0;
        for (int j = 0; j < k; j++)
            z += val[j];
        for (int j = 0; j < k && z > 0; j++)
            val[j] = (float)(val[j] / z);
    }
    for (int j = 0; j < k; j++)
        ids[t * k + j] = pick[j], wts[t * k + j] = val[j];
}

static epm_status cu_router(epm_gpu *g, const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p,
                            int renorm, int32_t *ids, float *wts)
{
    if (experts < 1 || experts > 1024 || k < 1 || k > ROUTER_MAX_K || k > experts)
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU router: %d experts, k %d (1 <= k <= min(E, %d), E <= 1024)",
                        experts, k, ROUTER_MAX_K);
    if (sigmoid && top_p > 0 && top_p < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU router: top_p = %g needs softmax scores", (double)top_p);
    if (n <= 0)
        return EPM_OK;
    k_router<<<blocks_for(n, 128), 128, 0, g->stream>>>(logits, n, experts, k, sigmoid, top_p, renorm, ids, wts);
    LAUNCHED();
    return EPM_OK;
}

// ---- routing: a stable counting sort in one block ----

__global__ void k_route(const int32_t *ids, int64_t nk, int k, int E, int64_t *offsets, int32_t *row_src,
                        int32_t *row_of)
{
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int64_t c = 0;
        for (int64_t i = 0; i < nk; i++)
            c += ids[i] == e;
        offsets[e + 1] = c;
    }
    for (int64_t i = threadIdx.x; i < nk; i += blockDim.x)
        if (ids[i] < 0 || ids[i] >= E)
            row_of[i] = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
        offsets[0] = 0;
        for (int e = 0; e < E; e++)
            offsets[e + 1] += offsets[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int64_t r = offsets[e];
        for (int64_t i = 0; i < nk; i++)
            if (ids[i] == e) {
                row_src[r] = (int32_t)(i / k);
                row_of[i] = (int32_t)r;
                r++;
            }
    }
}

static epm_status cu_route(epm_gpu *g, const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                           int32_t *row_src, int32_t *row_of)
{
    if (experts < 1 || k < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU route: %d experts, k %d", experts, k);
    k_route<<<1, 1024, 0, g->stream>>>(ids, n * k, k, experts, offsets, row_src, row_of);
    LAUNCHED();
    return EPM_OK;
}

// ---- permute / un-permute ----

template <typename T> __global__ void k_permute(const T *x, int hidden, const int32_t *row_src, int64_t rows, T *out)
{
    int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (id >= rows * hidden)
        return;
    int64_t r = id / hidden;
    int h = (int)(id % hidden);
    out[id] = x[(int64_t)row_src[r] * hidden + h];
}

template <typename T>
__global__ void k_unpermute(const T *y, int hidden, const int32_t *row_of, const float *w, int64_t n, int k, T *out)
{
    int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (id >= n * hidden)
        return;
    int64_t t = id / hidden;
    int h = (int)(id % hidden);
    float acc = 0.0f; // slot order, as the reference sums
    for (int j = 0; j < k; j++) {
        int32_t r = row_of[t * k + j];
        if (r >= 0)
            acc += w[t * k + j] * to_f<T>(y[(int64_t)r * hidden + h]);
    }
    out[id] = from_f<T>(acc);
}

static epm_status cu_permute(epm_gpu *g, epm_gpu_dtype dt, const void *x, int hidden, const int32_t *row_src,
                             int64_t rows, void *out)
{
    int64_t t = rows * hidden;
    if (t <= 0)
        return EPM_OK;
    if (dt == EPM_GPU_BF16)
        k_permute<<<blocks_for(t, 256), 256, 0, g->stream>>>((const __nv_bfloat16 *)x, hidden, row_src, rows,
                                                              (__nv_bfloat16 *)out);
    else
        k_permute<<<blocks_for(t, 256), 256, 0, g->stream>>>((const float *)x, hidden, row_src, rows, (float *)out);
    LAUNCHED();
    return EPM_OK;
}

static epm_status cu_unpermute(epm_gpu *g, epm_gpu_dtype dt, const void *y, int hidden, const int32_t *row_of,
                               const float *w, int64_t n, int k, void *out)
{
    int64_t t = n * hidden;
    if (t <= 0)
        return EPM_OK;
    if (dt == EPM_GPU_BF16)
        k_unpermute<<<blocks_for(t, 256), 256, 0, g->stream>>>((const __nv_bfloat16 *)y, hidden, row_of, w, n, k,
                                                                (__nv_bfloat16 *)out);
    else
        k_unpermute<<<blocks_for(t, 256), 256, 0, g->stream>>>((const float *)y, hidden, row_of, w, n, k,
                                                                (float *)out);
    LAUNCHED();
    return EPM_OK;
}

// ---- grouped expert FFN ----

template <typename T> __global__ void k_silu_mul(const float *gt, const float *up, T *h, int64_t n)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) {
        float v = gt[i];
        h[i] = from_f<T>(v / (1.0f + expf(-v)) * up[i]);
    }
}

// scratch: gate [rows][ffn] f32, up [rows][ffn] f32, h [rows][ffn] dt
static size_t cu_grouped_scratch_bytes(epm_gpu_dtype dt, int64_t rows, int ffn)
{
    return (size_t)rows * ffn * (8 + esize(dt));
}

// Row-major y[m][out] = x[m][in] W^T with W [out][in] is, column-major,
// y^T (out x m) = W^T-as-stored (in x out, transposed) * x^T (in x m).
static cublasStatus_t gemm_rows(cublasHandle_t hd, const void *w, cudaDataType_t wt, const void *x,
                                cudaDataType_t xt, int64_t m, int in, int out, void *y, cudaDataType_t yt)
{
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmEx(hd, CUBLAS_OP_T, CUBLAS_OP_N, out, (int)m, in, &one, w, wt, in, x, xt, in, &zero, y, yt, out,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static epm_status cu_grouped_swiglu(epm_gpu *g, epm_gpu_dtype dt, const void *x, const int64_t *offsets, int experts,
                                    int hidden, int ffn, const void *const *gate, const void *const *up,
                                    const void *const *down, void *scratch, void *y)
{
    int64_t rows = offsets[experts];
    if (rows <= 0)
        return EPM_OK;
    size_t es = esize(dt);
    cudaDataType_t t = ctype(dt);
    float *G = (float *)scratch, *U = G + rows * ffn;
    char *Hh = (char *)(U + rows * ffn);
    const char *xb = (const char *)x;
    char *yb = (char *)y;
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m <= 0)
            continue;
        if (m > 0x7fffffff || !gate[e] || !up[e] || !down[e])
            return epm_fail(EPM_ERR_INVALID_ARG, "GPU grouped FFN: expert %d has %lld rows and %s weights", e,
                            (long long)m, gate[e] && up[e] && down[e] ? "" : "no");
        const void *xe = xb + (size_t)offsets[e] * hidden * es;
        CB(gemm_rows(g->blas, gate[e], t, xe, t, m, hidden, ffn, G + offsets[e] * ffn, CUDA_R_32F));
        CB(gemm_rows(g->blas, up[e], t, xe, t, m, hidden, ffn, U + offsets[e] * ffn, CUDA_R_32F));
    }
    int64_t nh = rows * ffn;
    if (dt == EPM_GPU_BF16)
        k_silu_mul<<<blocks_for(nh, 256), 256, 0, g->stream>>>(G, U, (__nv_bfloat16 *)Hh, nh);
    else
        k_silu_mul<<<blocks_for(nh, 256), 256, 0, g->stream>>>(G, U, (float *)Hh, nh);
    LAUNCHED();
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m <= 0)
            continue;
        CB(gemm_rows(g->blas, down[e], t, Hh + (size_t)offsets[e] * ffn * es, t, m, ffn, hidden,
                     yb + (size_t)offsets[e] * hidden * es, t));
    }
    return EPM_OK;
}

// ---- linear and embedding ----

__global__ void k_add_bias(float *y, const float *b, int64_t n, int out)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n * out)
        y[i] += b[i % out];
}

static epm_status cu_linear(epm_gpu *g, const float *x, int64_t n, int in, const float *w, const float *b, int out,
                            float *y)
{
    if (n <= 0)
        return EPM_OK;
    if (n > 0x7fffffff)
        return epm_fail(EPM_ERR_INVALID_ARG, "GPU linear: %lld rows", (long long)n);
    CB(gemm_rows(g->blas, w, CUDA_R_32F, x, CUDA_R_32F, n, in, out, y, CUDA_R_32F));
    if (b) {
        k_add_bias<<<blocks_for(n * out, 256), 256, 0, g->stream>>>(y, b, n, out);
        LAUNCHED();
    }
    return EPM_OK;
}

__global__ void k_embed(const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n, float *out)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n * d)
        return;
    int64_t t = i / d;
    int j = (int)(i % d);
    int32_t id = ids[t];
    out[i] = id >= 0 && id < vocab ? table[(int64_t)id * d + j] : 0.0f;
}

static epm_status cu_embed(epm_gpu *g, const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                           float *out)
{
    if (n <= 0)
        return EPM_OK;
    k_embed<<<blocks_for(n * d, 256), 256, 0, g->stream>>>(table, vocab, d, ids, n, out);
    LAUNCHED();
    return EPM_OK;
}

static const epm_gpu_ops cuda_ops = {
    "cuda",        cu_device_count, cu_create,  cu_destroy,   cu_alloc,    cu_free,
    cu_upload,     cu_download,     cu_sync,    cu_convert,   cu_rmsnorm,  cu_rope,
    cu_attention,  cu_router,       cu_route,   cu_permute,   cu_unpermute, cu_grouped_scratch_bytes,
    cu_grouped_swiglu, cu_linear, cu_embed,
};

extern "C" const epm_gpu_ops *epm_gpu_ops_cuda(void) { return &cuda_ops; }
