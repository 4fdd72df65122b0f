// The CUDA backend of ops_gpu.h.
//
// Grouped expert FFN (SwiGLU), on the context's stream (and side streams), in
// four ways:
//  - grouped: cublasGemmGroupedBatchedEx, one call for gate and up together
//    (2 x the non-empty experts as groups of one GEMM each), the fused SiLU*up
//    kernel, one call for down. Why: with fine-grained experts (DeepSeek-V3:
//    256 experts, hidden 7168, FFN 2048) each expert's GEMM is too small to
//    fill the GPU (gate: 2048 output columns = 16 tiles of 128 on 132 SMs), so
//    one GemmEx per expert runs hundreds of under-filled launches back to back;
//    the grouped call puts every expert's tiles into one launch. Its A/B/C
//    pointer arrays must be in device memory: they are written into a pinned
//    host slot (a ring of GROUPED_SLOTS, a slot reused only after the event of
//    its last copy has completed: the host may run that many FFN calls ahead of
//    the GPU) and sent with ONE cudaMemcpyAsync per call into a device buffer
//    that the stream order protects (grown with cudaMallocAsync/cudaFreeAsync).
//  - per expert: one cublasGemmEx per non-empty expert for gate, for up and
//    for down (each picks its own tuned kernel; empty experts cost nothing).
//    With EPM_CUDA_FFN_STREAMS = S > 1 these GEMMs are spread round-robin
//    over S side streams (a cuBLAS handle each), forked from and joined back
//    into the context's stream with events (no host wait): a DeepSeek-V3
//    expert at 128 rows fills 16-32 of 132 SMs, so one stream runs the
//    weights at about half the memory bandwidth (1.6 TB/s of 3.35 on the
//    H100 at 4096 tokens) while several run side by side. The results are
//    the same bits (each GEMM writes its own rows; the SiLU and down stages
//    are ordered after the join). Default 1 until measured on the GPU
//    machine (bench/gpu_session.sh kernels runs both).
//  - batched (EPM_CUDA_GROUPED_GEMM = batched): experts padded to a few row
//    counts, each count one cublasGemmBatchedEx for gate and up together, the
//    SiLU, one for down, then the real rows copied to y (layout and why:
//    ffn_bplan.h). It runs cuBLAS's tuned kernels over many experts per
//    launch and writes gate/up in dt (bf16 in bf16, as vLLM's fused MoE does:
//    half the bytes of the per-expert path's float32 gate/up). The padded
//    areas are the context's (grown from the stream-ordered pool and kept),
//    not the caller's scratch. A call falls back to the per-expert path when
//    a row or pointer is not 16-byte aligned, the device has no pools or no
//    room, cuBLAS refuses the types, or only one expert is busy (a plain
//    GEMM chain). Not yet measured on a GPU, so auto does not take it
//    (bench/gpu_session.sh kernels measures it beside the others).
//  - strided (EPM_CUDA_GROUPED_GEMM = strided): the same padded areas, but
//    batches of uniform stride (cublasGemmStridedBatchedEx) over runs of
//    consecutive experts stacked in one tensor (as serving engines hold
//    them), each run padded to its busiest expert within the buckets' bound
//    (a hot expert ends a run), gate and up one GEMM of 2 ffn outputs when
//    up follows gate. Why beside batched: a pointer-array batch may run
//    kernels that fetch every entry's addresses (cuBLAS's grouped call ran at
//    half of GemmEx's speed), while a strided batch is one 3-D operand to the
//    tuned kernels; the price is more padding and a copy of every expert's
//    input. Falls back as batched does; unmeasured as well.
// Which one (EPM_CUDA_GROUPED_GEMM = auto, the default, | on | off | batched
// | strided, read by create): auto takes the grouped path in bf16 when >= GROUPED_MIN_EXPERTS
// experts are non-empty and their gate GEMMs average <= GROUPED_MAX_EXPERT_MACS
// multiply-adds (rows x hidden x ffn: DeepSeek-V3 up to ~85 rows per expert,
// OLMoE/Qwen2-MoE-sized experts up to ~400-600), else the per-expert path.
// Measured on an H100 with cuBLAS 13.1, bf16, `epmoe bench kernels`, grouped
// vs per-expert: DeepSeek-V3 shape 1 token 0.26 vs 0.43 ms, 16 tokens 3.4 vs
// 5.6 ms, 1024 tokens 8.4 vs 12.8 ms (2.7-2.9 TB/s of expert weights: the
// bandwidth bound), 2048 10.9 vs 12.6 ms, but 4096 17.4 vs 13.7 ms and 16384
// 62 vs 24 ms: cuBLAS's grouped kernels are not its tuned single-GEMM kernels
// (a single GEMM through the grouped call runs at about half GemmEx's
// TFLOP/s), so large per-expert GEMMs stay on GemmEx; Mixtral (8 large
// experts) gains at most ~7% (up to ~80 tokens) and loses with 2 experts
// (1 token: 0.39 vs 0.33 ms; hence the minimum expert count). Float32
// (true FP32, no TF32) was slower grouped on most shapes measured, so auto
// never groups it. `on` forces the grouped call wherever cuBLAS takes the
// types (tests, benchmarks); `off` forces the per-expert path.
// The per-expert path is also the fallback for any stage whose grouped call
// returns CUBLAS_STATUS_NOT_SUPPORTED. cuBLAS's grouped GEMM supports, with
// CUBLAS_COMPUTE_32F (float alpha/beta): A/B/C all float32, all bf16, or all
// fp16, and CUBLAS_COMPUTE_32F_FAST_TF32 for float32; it does NOT take bf16
// (or fp16) A/B with a float32 C (CUBLAS_STATUS_NOT_SUPPORTED, cuBLAS 13.1).
// So in bf16 the grouped gate/up call first asks for float32 outputs (kept for
// a cuBLAS that adds them; the refusal is remembered per context), then writes
// gate and up in bf16: the grouped bf16 path rounds gate x and up x to bf16
// before the SiLU (2^-9 relative each, the order of the rounding of silu * up
// before down that both paths do; inside the 1e-2 bf16 tolerance of the checks).
// Offsets are a host array because cuBLAS takes m from the host: that is one
// device-to-host copy of E+1 integers per layer after routing, the only host
// round trip; a device-side grouped GEMM kernel would remove it.
//
// bf16 on the per-expert path: weights and activations bf16, gate/up GEMMs
// accumulate and store in float32, SiLU*up in float32, rounded once to bf16 for
// the down GEMM, which writes bf16. Compute type 32F everywhere (not TF32:
// float32 results must match the CPU reference at 1e-5).
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

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffn_bplan.h"
#include "ops_gpu.h"

extern "C" epm_status epm_fail(epm_status s, const char *fmt, ...);

// auto's rule for the grouped FFN (see the top comment for the measurements):
// at least this many non-empty experts, whose gate GEMMs average at most this
// many multiply-adds (rows x hidden x ffn)
#define GROUPED_MIN_EXPERTS 4
#define GROUPED_MAX_EXPERT_MACS 1.25e9
#define GROUPED_SLOTS 8           // pinned staging slots in the ring
#define GROUPED_MIN_PTRS (11 * 256) // first capacity: one call over 256 experts
#define FFN_STREAMS_MAX 16        // EPM_CUDA_FFN_STREAMS at most

enum { GROUPED_AUTO, GROUPED_ON, GROUPED_OFF, GROUPED_BATCHED, GROUPED_STRIDED };

// One pinned host buffer of device pointers and the event recorded after the
// cudaMemcpyAsync that reads it: the buffer is rewritten only once that event
// has completed.
typedef struct grouped_slot {
    void **host;
    size_t cap; // pointers
    cudaEvent_t copied;
    int pending; // copied has been recorded and not yet waited for
} grouped_slot;

struct epm_gpu {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    int grouped_mode;  // GROUPED_AUTO / _ON / _OFF / _BATCHED / _STRIDED from EPM_CUDA_GROUPED_GEMM
    int pools;         // cudaMallocAsync works on this device
    int gu_f32_refused; // the grouped call refused bf16 A/B with a float32 C
    int batched_refused; // cublasGemmBatchedEx refused the batched path's types
    int batched_strict;  // EPM_TEST_CUDA_BATCHED_STRICT: a call that cannot take the batched path fails
    epm_ffn_bplan bplan; // the batched path's layout, arrays reused across calls
    char *barea;         // the batched path's padded areas, grown in stream order and kept
    size_t barea_cap;    // bytes
    void **dptr;       // device copy of one call's pointer arrays
    size_t dptr_cap;   // pointers
    grouped_slot slot[GROUPED_SLOTS];
    unsigned next_slot;
    void *par;         // host per-group parameter arrays (read by cuBLAS during the call)
    size_t par_cap;    // bytes
    int nside;         // side streams of the per-expert path (0: it runs on stream)
    cudaStream_t side[FFN_STREAMS_MAX];
    cublasHandle_t side_blas[FFN_STREAMS_MAX];
    cudaEvent_t fork, joined[FFN_STREAMS_MAX];
};

#define CU(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            (void)cudaGetLastError(); /* clear it: a later launch check must not see this stale error */  \
            return epm_fail(EPM_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
        }                                                                                                 \
    } while (0)
#define CB(call)                                                                                          \
    do {                                                                                                  \
        cublasStatus_t s_ = (call);                                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                  \
            return epm_fail(EPM_ERR_CUDA, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_); \
    } while (0)
#define LAUNCHED() CU(cudaGetLastError())
// core.h's EPM_CHECK (core.h itself is C without extern "C", so not included here)
#define CHECK(expr)                                                                                       \
    do {                                                                                                  \
        epm_status c_ = (expr);                                                                           \
        if (c_ != EPM_OK)                                                                                 \
            return c_;                                                                                    \
    } while (0)

// cuBLAS is opened with the first GPU context, not linked: its static
// initialisers cost every process that links it about 0.45 s of CPU (a
// CPU-only `epmoe --help` took 0.47 s, and the test suite starts hundreds
// of processes, MPI ranks each). Only these entry points are used.
#define EPM_STR_(x) #x
#define EPM_STR(x) EPM_STR_(x)
#define CUBLAS_SONAME "libcublas.so." EPM_STR(CUBLAS_VER_MAJOR)
// the C entry points (C++ also sees deprecated overloads taking cudaDataType)
typedef cublasStatus_t (*gemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                  const void *, cudaDataType, int, const void *, cudaDataType, int, const void *,
                                  void *, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
typedef cublasStatus_t (*gemm_batched_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                          const void *, const void *const[], cudaDataType, int, const void *const[],
                                          cudaDataType, int, const void *, void *const[], cudaDataType, int, int,
                                          cublasComputeType_t, cublasGemmAlgo_t);
typedef cublasStatus_t (*gemm_strided_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                          const void *, const void *, cudaDataType, int, long long, const void *,
                                          cudaDataType, int, long long, const void *, void *, cudaDataType, int,
                                          long long, int, cublasComputeType_t, cublasGemmAlgo_t);
static struct {
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    gemm_fn gemm;
    gemm_batched_fn gemm_batched;
    gemm_strided_fn gemm_strided;
    decltype(&cublasGemmGroupedBatchedEx) gemm_grouped;
} cb;
static pthread_once_t cb_once = PTHREAD_ONCE_INIT;
static char cb_error[512]; // empty once every entry point is found

static void *cb_sym(void *h, const char *name)
{
    void *f = dlsym(h, name);
    if (!f && !cb_error[0])
        snprintf(cb_error, sizeof cb_error, "%s has no %s (a cuBLAS older than this build's %s)", CUBLAS_SONAME,
                 name, EPM_STR(CUBLAS_VER_MAJOR) "." EPM_STR(CUBLAS_VER_MINOR));
    return f;
}

static void cb_open(void)
{
    // by name (the runpath, LD_LIBRARY_PATH), then where the build found it
    void *h = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
#ifdef EPM_CUDA_LIBDIR
    if (!h)
        h = dlopen(EPM_CUDA_LIBDIR "/" CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!h) {
        const char *why = dlerror();
        snprintf(cb_error, sizeof cb_error, "cuBLAS (%s) could not be loaded: %s", CUBLAS_SONAME, why ? why : "?");
        return;
    }
    cb.create = (decltype(cb.create))cb_sym(h, "cublasCreate_v2");
    cb.destroy = (decltype(cb.destroy))cb_sym(h, "cublasDestroy_v2");
    cb.set_stream = (decltype(cb.set_stream))cb_sym(h, "cublasSetStream_v2");
    cb.gemm = (decltype(cb.gemm))cb_sym(h, "cublasGemmEx");
    cb.gemm_batched = (decltype(cb.gemm_batched))cb_sym(h, "cublasGemmBatchedEx");
    cb.gemm_strided = (decltype(cb.gemm_strided))cb_sym(h, "cublasGemmStridedBatchedEx");
    cb.gemm_grouped = (decltype(cb.gemm_grouped))cb_sym(h, "cublasGemmGroupedBatchedEx");
}

extern "C" epm_status epm_gpu_cublas_open(void)
{
    pthread_once(&cb_once, cb_open);
    return cb_error[0] ? epm_fail(EPM_ERR_CUDA, "GPU backend: %s", cb_error) : EPM_OK;
}

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
    if (g->stream) // queued GEMMs may still read the pointer buffer
        cudaStreamSynchronize(g->stream);
    if (g->dptr) {
        if (g->pools) {
            cudaFreeAsync(g->dptr, g->stream);
            cudaStreamSynchronize(g->stream);
        } else {
            cudaFree(g->dptr);
        }
    }
    for (int i = 0; i < GROUPED_SLOTS; i++) {
        if (g->slot[i].host)
            cudaFreeHost(g->slot[i].host);
        if (g->slot[i].copied)
            cudaEventDestroy(g->slot[i].copied);
    }
    free(g->par);
    epm_ffn_bplan_free(&g->bplan);
    if (g->barea) { // only ever allocated from the pool (batched_fits needs it); the stream was synced above
        cudaFreeAsync(g->barea, g->stream);
        cudaStreamSynchronize(g->stream);
    }
    for (int i = 0; i < FFN_STREAMS_MAX; i++) {
        if (g->side[i])
            cudaStreamSynchronize(g->side[i]);
        if (g->side_blas[i])
            cb.destroy(g->side_blas[i]);
        if (g->side[i])
            cudaStreamDestroy(g->side[i]);
        if (g->joined[i])
            cudaEventDestroy(g->joined[i]);
    }
    if (g->fork)
        cudaEventDestroy(g->fork);
    if (g->blas)
        cb.destroy(g->blas);
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
    int mode = GROUPED_AUTO;
    const char *gm = getenv("EPM_CUDA_GROUPED_GEMM");
    if (gm && *gm && strcmp(gm, "auto")) {
        if (!strcmp(gm, "on") || !strcmp(gm, "1"))
            mode = GROUPED_ON;
        else if (!strcmp(gm, "off") || !strcmp(gm, "0"))
            mode = GROUPED_OFF;
        else if (!strcmp(gm, "batched"))
            mode = GROUPED_BATCHED;
        else if (!strcmp(gm, "strided"))
            mode = GROUPED_STRIDED;
        else
            return epm_fail(EPM_ERR_INVALID_ARG,
                            "GPU backend: EPM_CUDA_GROUPED_GEMM = '%s' (auto, on, off, batched or strided)", gm);
    }
    int nside = 1;
    const char *fs = getenv("EPM_CUDA_FFN_STREAMS");
    if (fs && *fs) {
        char *end = NULL;
        long v = strtol(fs, &end, 10);
        if (*end || v < 1 || v > FFN_STREAMS_MAX)
            return epm_fail(EPM_ERR_INVALID_ARG, "GPU backend: EPM_CUDA_FFN_STREAMS = '%s' (an integer from 1 to %d)",
                            fs, FFN_STREAMS_MAX);
        nside = (int)v;
    }
    CHECK(epm_gpu_cublas_open());
    epm_gpu *g = (epm_gpu *)calloc(1, sizeof *g);
    if (!g)
        return epm_fail(EPM_ERR_NOMEM, "GPU backend: context");
    g->device = device;
    g->grouped_mode = mode;
    // a test hook: proves the batched path ran rather than its fallback
    const char *strict = getenv("EPM_TEST_CUDA_BATCHED_STRICT");
    g->batched_strict = strict && *strict && strcmp(strict, "0");
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking);
    for (int i = 0; i < GROUPED_SLOTS && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&g->slot[i].copied, cudaEventDisableTiming);
    int pools = 0;
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device);
    g->pools = pools;
    if (e != cudaSuccess) {
        cu_destroy(g);
        return epm_fail(EPM_ERR_CUDA, "GPU backend: device %d: %s", device, cudaGetErrorString(e));
    }
    // default math mode: CUBLAS_COMPUTE_32F then means true float32 (TF32
    // only with CUBLAS_TF32_TENSOR_OP_MATH or the _FAST_TF32 compute types)
    cublasStatus_t bs = cb.create(&g->blas);
    if (bs != CUBLAS_STATUS_SUCCESS)
        g->blas = NULL;
    else
        bs = cb.set_stream(g->blas, g->stream);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        cu_destroy(g);
        return epm_fail(EPM_ERR_CUDA, "GPU backend: cuBLAS on device %d", device);
    }
    if (nside > 1) {
        e = cudaEventCreateWithFlags(&g->fork, cudaEventDisableTiming);
        for (int i = 0; i < nside && e == cudaSuccess && bs == CUBLAS_STATUS_SUCCESS; i++) {
            e = cudaStreamCreateWithFlags(&g->side[i], cudaStreamNonBlocking);
            if (e == cudaSuccess)
                e = cudaEventCreateWithFlags(&g->joined[i], cudaEventDisableTiming);
            if (e == cudaSuccess && (bs = cb.create(&g->side_blas[i])) != CUBLAS_STATUS_SUCCESS)
                g->side_blas[i] = NULL;
            if (e == cudaSuccess && bs == CUBLAS_STATUS_SUCCESS)
                bs = cb.set_stream(g->side_blas[i], g->side[i]);
        }
        if (e != cudaSuccess || bs != CUBLAS_STATUS_SUCCESS) {
            cu_destroy(g);
            return epm_fail(EPM_ERR_CUDA, "GPU backend: %d FFN streams on device %d: %s", nside, device,
                            e != cudaSuccess ? cudaGetErrorString(e) : "cuBLAS handle");
        }
        g->nside = nside;
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

template <typename TI, typename TO> __global__ void k_silu_mul(const TI *gt, const TI *up, TO *h, int64_t n)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) {
        float v = to_f<TI>(gt[i]);
        h[i] = from_f<TO>(v / (1.0f + expf(-v)) * to_f<TI>(up[i]));
    }
}

// scratch: gate [rows][ffn] f32, up [rows][ffn] f32, h [rows][ffn] dt (the
// grouped bf16 path stores gate and up as bf16 at the start of their f32 areas)
static size_t cu_grouped_scratch_bytes(epm_gpu_dtype dt, int64_t rows, int ffn)
{
    return (size_t)rows * ffn * (8 + esize(dt));
}

// Row-major y[m][out] = x[m][in] W^T with W [out][in] is, column-major,
// y^T (out x m) = W^T-as-stored (in x out, transposed) * x^T (in x m):
// transa T, transb N, cuBLAS (m, n, k) = (out, rows, in), lda = ldb = in,
// ldc = out. The grouped calls use the same mapping per group.
static cublasStatus_t gemm_rows(cublasHandle_t hd, const void *w, cudaDataType_t wt, const void *x,
                                cudaDataType_t xt, int64_t m, int in, int out, void *y, cudaDataType_t yt)
{
    const float one = 1.0f, zero = 0.0f;
    return cb.gemm(hd, CUBLAS_OP_T, CUBLAS_OP_N, out, (int)m, in, &one, w, wt, in, x, xt, in, &zero, y, yt, out,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// Host per-group arrays for one FFN call over ne non-empty experts: groups
// [0, 2 ne) are gate then up, [2 ne, 3 ne) down; every group holds one GEMM.
typedef struct grouped_par {
    cublasOperation_t *ta, *tb;
    int *m, *n, *k, *lda, *ldb, *ldc, *size;
    float *alpha, *beta;
} grouped_par;

static epm_status grouped_par_get(epm_gpu *g, int ne, grouped_par *p)
{
    size_t groups = (size_t)3 * ne;
    size_t need = groups * (2 * sizeof(cublasOperation_t) + 7 * sizeof(int) + 2 * sizeof(float));
    if (need > g->par_cap) {
        void *np = realloc(g->par, need);
        if (!np)
            return epm_fail(EPM_ERR_NOMEM, "GPU grouped FFN: parameters for %d experts", ne);
        g->par = np, g->par_cap = need;
    }
    char *b = (char *)g->par;
    p->ta = (cublasOperation_t *)b, b += groups * sizeof(cublasOperation_t);
    p->tb = (cublasOperation_t *)b, b += groups * sizeof(cublasOperation_t);
    int **ints[7] = {&p->m, &p->n, &p->k, &p->lda, &p->ldb, &p->ldc, &p->size};
    for (int i = 0; i < 7; i++)
        *ints[i] = (int *)b, b += groups * sizeof(int);
    p->alpha = (float *)b, b += groups * sizeof(float);
    p->beta = (float *)b;
    return EPM_OK;
}

// group i: C_i (out x rows) = op(A_i = W, T) (out x in) * op(B_i = x, N) (in x rows)
static void grouped_par_set(grouped_par *p, int i, int64_t rows, int in, int out)
{
    p->ta[i] = CUBLAS_OP_T, p->tb[i] = CUBLAS_OP_N;
    p->m[i] = out, p->n[i] = (int)rows, p->k[i] = in;
    p->lda[i] = in, p->ldb[i] = in, p->ldc[i] = out;
    p->size[i] = 1;
    p->alpha[i] = 1.0f, p->beta[i] = 0.0f;
}

// A pinned slot with room for `count` pointers whose previous copy has
// completed, and a device buffer as large; grown geometrically (rarely: the
// first capacity covers 256 experts). Growing the device buffer is stream
// ordered, so GEMMs still queued on the old one keep it until they are done.
static epm_status grouped_slot_get(epm_gpu *g, size_t count, grouped_slot **out)
{
    grouped_slot *s = &g->slot[g->next_slot % GROUPED_SLOTS];
    if (s->pending) { // normally complete long ago: waits only when the host is GROUPED_SLOTS calls ahead
        CU(cudaEventSynchronize(s->copied));
        s->pending = 0;
    }
    if (s->cap < count) {
        size_t cap = count > 2 * s->cap ? count : 2 * s->cap;
        cap = cap > GROUPED_MIN_PTRS ? cap : GROUPED_MIN_PTRS;
        void **old = s->host;
        s->host = NULL, s->cap = 0;
        if (old) // its last copy has completed (waited for above)
            CU(cudaFreeHost(old));
        CU(cudaMallocHost((void **)&s->host, cap * sizeof(void *)));
        s->cap = cap;
    }
    if (g->dptr_cap < count) {
        size_t cap = count > 2 * g->dptr_cap ? count : 2 * g->dptr_cap;
        cap = cap > GROUPED_MIN_PTRS ? cap : GROUPED_MIN_PTRS;
        void **old = g->dptr;
        g->dptr = NULL, g->dptr_cap = 0;
        if (old && g->pools) {
            CU(cudaFreeAsync(old, g->stream));
        } else if (old) { // no stream-ordered allocator: wait for the GEMMs that read it (growth only)
            CU(cudaStreamSynchronize(g->stream));
            CU(cudaFree(old));
        }
        if (g->pools)
            CU(cudaMallocAsync((void **)&g->dptr, cap * sizeof(void *), g->stream));
        else
            CU(cudaMalloc((void **)&g->dptr, cap * sizeof(void *)));
        g->dptr_cap = cap;
    }
    *out = s;
    return EPM_OK;
}

// The one host-to-device copy of a call's pointer arrays; the slot is busy
// until the stream has executed it.
static epm_status grouped_slot_send(epm_gpu *g, grouped_slot *s, size_t count)
{
    CU(cudaMemcpyAsync(g->dptr, s->host, count * sizeof(void *), cudaMemcpyHostToDevice, g->stream));
    CU(cudaEventRecord(s->copied, g->stream));
    s->pending = 1;
    g->next_slot++;
    return EPM_OK;
}

static cublasStatus_t grouped_gemm(epm_gpu *g, const grouped_par *p, int first, int count, void *const *A,
                                   void *const *B, void *const *C, cudaDataType_t abt, cudaDataType_t ct)
{
    return cb.gemm_grouped(g->blas, p->ta + first, p->tb + first, p->m + first, p->n + first, p->k + first,
                                      p->alpha + first, (const void *const *)A, abt, p->lda + first,
                                      (const void *const *)B, abt, p->ldb + first, p->beta + first, C, ct,
                                      p->ldc + first, count, p->size + first, CUBLAS_COMPUTE_32F);
}

// The side streams start after everything queued on the context's stream.
static epm_status side_fork(epm_gpu *g)
{
    CU(cudaEventRecord(g->fork, g->stream));
    for (int i = 0; i < g->nside; i++)
        CU(cudaStreamWaitEvent(g->side[i], g->fork, 0));
    return EPM_OK;
}

// The context's stream waits for every side stream: called after a fork on
// every way out, a failed GEMM's included, so that nothing queued later on
// the stream (SiLU, down, a copy, a free) runs while a side GEMM still reads
// or writes its buffers. st: the caller's status so far (kept if not OK).
static epm_status side_join(epm_gpu *g, epm_status st)
{
    for (int i = 0; i < g->nside; i++) {
        cudaError_t e = cudaEventRecord(g->joined[i], g->side[i]);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(g->stream, g->joined[i], 0);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            if (st == EPM_OK)
                st = epm_fail(EPM_ERR_CUDA, "GPU backend: joining FFN stream %d: %s", i, cudaGetErrorString(e));
        }
    }
    return st;
}

// One cublasGemmEx per non-empty expert: gate and up (G, U float32) when
// down_stage is 0, else down (Hh -> y); on the context's stream, or
// round-robin over the side streams.
static epm_status per_expert_gemms(epm_gpu *g, int down_stage, cudaDataType_t t, size_t es, const int64_t *offsets,
                                   int experts, int hidden, int ffn, const void *const *gate, const void *const *up,
                                   const void *const *down, const char *xb, float *G, float *U, const char *Hh,
                                   char *yb)
{
    int S = g->nside;
    epm_status st = EPM_OK;
    if (S > 1 && (st = side_fork(g)) != EPM_OK)
        return side_join(g, st);
    for (int e = 0, item = 0; e < experts && st == EPM_OK; e++) {
        int64_t o = offsets[e], m = offsets[e + 1] - o;
        if (m <= 0)
            continue;
        for (int part = 0; part < (down_stage ? 1 : 2) && st == EPM_OK; part++, item++) {
            cublasHandle_t h = S > 1 ? g->side_blas[item % S] : g->blas;
            cublasStatus_t bs;
            if (down_stage)
                bs = gemm_rows(h, down[e], t, Hh + (size_t)o * ffn * es, t, m, ffn, hidden,
                               yb + (size_t)o * hidden * es, t);
            else
                bs = gemm_rows(h, part ? up[e] : gate[e], t, xb + (size_t)o * hidden * es, t, m, hidden, ffn,
                               (part ? U : G) + o * ffn, CUDA_R_32F);
            if (bs != CUBLAS_STATUS_SUCCESS)
                st = epm_fail(EPM_ERR_CUDA, "GPU grouped FFN: cublasGemmEx of expert %d's %s: cuBLAS status %d", e,
                              down_stage ? "down" : part ? "up" : "gate", (int)bs);
        }
    }
    return S > 1 ? side_join(g, st) : st;
}

static int grouped_wanted(const epm_gpu *g, epm_gpu_dtype dt, int ne, int64_t rows, int hidden, int ffn)
{
    if (g->grouped_mode != GROUPED_AUTO)
        return g->grouped_mode == GROUPED_ON;
    return dt == EPM_GPU_BF16 && ne >= GROUPED_MIN_EXPERTS &&
           (double)rows * hidden * ffn <= GROUPED_MAX_EXPERT_MACS * ne;
}

// ---- the batched path (EPM_CUDA_GROUPED_GEMM = batched; layout: ffn_bplan.h) ----

static_assert(sizeof(void *) == sizeof(int64_t), "the copy tables share the pointer buffer");

// Rows copied between x or y and the padded areas, as 16-byte words: entry t
// of tab is (source row, destination row, rows). Grid-stride in both
// dimensions (y over entries, x over the words of one entry).
__global__ void k_copy_rows(const uint4 *src, uint4 *dst, const int64_t *tab, int entries, int64_t words)
{
    for (int t = blockIdx.y; t < entries; t += gridDim.y) {
        const uint4 *s = src + tab[3 * t] * words;
        uint4 *d = dst + tab[3 * t + 1] * words;
        int64_t n = tab[3 * t + 2] * words;
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
            d[i] = s[i];
    }
}

static epm_status copy_rows(epm_gpu *g, const void *src, void *dst, const int64_t *tab, int entries, int64_t max_rows,
                            size_t row_bytes)
{
    if (entries <= 0)
        return EPM_OK;
    int64_t words = (int64_t)(row_bytes / 16);
    unsigned bx = blocks_for(max_rows * words, 256);
    dim3 grid(bx < 1024 ? bx : 1024, entries < 65535 ? entries : 65535);
    k_copy_rows<<<grid, 256, 0, g->stream>>>((const uint4 *)src, (uint4 *)dst, tab, entries, words);
    LAUNCHED();
    return EPM_OK;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Whether this call can take the batched path: 16-byte rows and pointers
// (the copy kernel moves 16-byte words; cuBLAS is handed pointers it cannot
// inspect) and a stream-ordered allocator for the padded areas.
static int batched_fits(const epm_gpu *g, size_t es, const void *x, const int64_t *offsets, int experts, int hidden,
                        int ffn, const void *const *gate, const void *const *up, const void *const *down,
                        const void *y)
{
    if (!g->pools || g->batched_refused || (hidden * es) % 16 || (ffn * es) % 16 || !aligned16(x) || !aligned16(y))
        return 0;
    for (int e = 0; e < experts; e++)
        if (offsets[e + 1] > offsets[e] && !(aligned16(gate[e]) && aligned16(up[e]) && aligned16(down[e])))
            return 0;
    return 1;
}

static size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// A call the batched or strided path cannot take: the caller falls back,
// unless the strict test hook wants to know.
static epm_status unfit(const epm_gpu *g, const char *path, int hidden, int ffn)
{
    if (!g->batched_strict)
        return EPM_OK;
    return epm_fail(EPM_ERR_UNSUPPORTED, "GPU %s FFN: hidden %d, ffn %d or a pointer is not 16-byte aligned, or "
                    "cuBLAS refused the batches before", path, hidden, ffn);
}

// The end of a batched or strided call: cuBLAS refusing the types (refused)
// sends this call and every later one to the per-expert path.
static epm_status padded_end(epm_gpu *g, const char *path, epm_gpu_dtype dt, epm_status st, int refused, int *done)
{
    if (st != EPM_OK)
        return st;
    if (refused) {
        g->batched_refused = 1;
        if (g->batched_strict)
            return epm_fail(EPM_ERR_UNSUPPORTED, "GPU %s FFN: cuBLAS refused %s batches", path,
                            dt == EPM_GPU_BF16 ? "bfloat16" : "float32");
    }
    *done = !refused;
    return EPM_OK;
}

// The padded areas, kept between calls: a fresh pool allocation of this size
// (GBs at 16k tokens) per call would map pages again whenever the pool trims
// at a sync; the stream orders a later call's writes after this one's reads.
// EPM_ERR_NOMEM when the device has no room: the caller then takes the
// per-expert path, which needs only the caller's scratch. Zeroed when grown:
// the padding rows are read before anything writes them (harmless, their
// results are dropped, but a memory checker would flag every call).
static epm_status barea_get(epm_gpu *g, size_t need, char **out)
{
    if (need > g->barea_cap) {
        size_t cap = need + need / 4;
        char *old = g->barea;
        g->barea = NULL, g->barea_cap = 0;
        if (old)
            CU(cudaFreeAsync(old, g->stream));
        cudaError_t e = cudaMallocAsync((void **)&g->barea, cap, g->stream);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            g->barea = NULL;
            return epm_fail(EPM_ERR_NOMEM, "GPU batched FFN: %zu bytes of padded rows", cap);
        }
        CU(e);
        g->barea_cap = cap;
        CU(cudaMemsetAsync(g->barea, 0, cap, g->stream));
    }
    *out = g->barea;
    return EPM_OK;
}

// The padded areas of a call, or *out NULL (and EPM_OK) when the device has
// no room and the call should fall back (not under the strict test hook).
static epm_status barea_or_fallback(epm_gpu *g, size_t need, char **out)
{
    *out = NULL; // barea_get sets it only when it succeeds
    epm_status st = barea_get(g, need, out);
    return st == EPM_ERR_NOMEM && !g->batched_strict ? EPM_OK : st;
}

// One batched call: C_i (out x B) = W_i^T-as-stored (out x in) * X_i (in x B)
// for i < count, every W of type t (see gemm_rows for the mapping).
static cublasStatus_t batched_gemm(cublasHandle_t h, void *const *A, void *const *B, void *const *C, cudaDataType_t t,
                                   int64_t brows, int in, int out, int count)
{
    const float one = 1.0f, zero = 0.0f;
    return cb.gemm_batched(h, CUBLAS_OP_T, CUBLAS_OP_N, out, (int)brows, in, &one, (const void *const *)A, t, in,
                               (const void *const *)B, t, in, &zero, C, t, out, count, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT);
}

// One bucket's batches on one stream: gate and up (2n entries), SiLU * up,
// down (n entries), P its pointer arrays on the device (epm_ffn_bplan_ptrs).
// *refused when cuBLAS refused a batch (the caller falls back; what ran
// wrote only the padded areas).
static epm_status batched_bucket(epm_gpu *g, int b, cublasHandle_t hb, cudaStream_t sb, epm_gpu_dtype dt,
                                 void *const *P, char *gt, char *upo, char *h, int hidden, int ffn, int *refused)
{
    const epm_ffn_bplan *pl = &g->bplan;
    cudaDataType_t t = ctype(dt);
    int n = pl->first[b + 1] - pl->first[b];
    int64_t brows = pl->brows[b];
    cublasStatus_t bs = batched_gemm(hb, P, P + 2 * n, P + 4 * n, t, brows, hidden, ffn, 2 * n);
    if (bs == CUBLAS_STATUS_SUCCESS) {
        size_t at = (size_t)pl->p[pl->first[b]] * ffn * esize(dt);
        int64_t nh = (int64_t)n * brows * ffn;
        unsigned nbk = blocks_for(nh, 256);
        if (dt == EPM_GPU_BF16)
            k_silu_mul<<<nbk, 256, 0, sb>>>((const __nv_bfloat16 *)(gt + at), (const __nv_bfloat16 *)(upo + at),
                                             (__nv_bfloat16 *)(h + at), nh);
        else
            k_silu_mul<<<nbk, 256, 0, sb>>>((const float *)(gt + at), (const float *)(upo + at), (float *)(h + at),
                                             nh);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return epm_fail(EPM_ERR_CUDA, "GPU batched FFN: SiLU of bucket %d: %s", b, cudaGetErrorString(e));
        bs = batched_gemm(hb, P + 6 * n, P + 7 * n, P + 8 * n, t, brows, ffn, hidden, n);
    }
    if (bs == CUBLAS_STATUS_NOT_SUPPORTED) {
        *refused = 1;
        return EPM_OK;
    }
    if (bs != CUBLAS_STATUS_SUCCESS)
        return epm_fail(EPM_ERR_CUDA, "GPU batched FFN: cublasGemmBatchedEx, bucket %d (%d experts of %lld rows): "
                        "cuBLAS status %d", b, n, (long long)brows, (int)bs);
    return EPM_OK;
}

// ---- the strided path (EPM_CUDA_GROUPED_GEMM = strided; layout: ffn_bplan.h's runs) ----

// h[r][f] = silu(gu[r][f]) * gu[r][ffn + f]: gate and up side by side in one
// row of 2 ffn (the fused GEMM's output, and where the unfused pair writes)
template <typename T> __global__ void k_silu_mul_pairs(const T *gu, T *h, int64_t n, int ffn)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) {
        // a 32-bit division where the index fits (16k tokens x top-8 x FFN 14336 does): a 64-bit one
        // is a long emulated sequence per element of a kernel that should be bound by memory
        int64_t r, f;
        if (n <= (int64_t)UINT32_MAX) {
            uint32_t q = (uint32_t)i / (uint32_t)ffn;
            r = q, f = (int64_t)((uint32_t)i - q * (uint32_t)ffn);
        } else {
            r = i / ffn, f = i % ffn;
        }
        float v = to_f<T>(gu[r * 2 * ffn + f]);
        h[i] = from_f<T>(v / (1.0f + expf(-v)) * to_f<T>(gu[r * 2 * ffn + ffn + f]));
    }
}

// count entries: C_i (out x B) = W_i^T-as-stored (out x in) * X_i (in x B),
// W_i = w + i * sw, X_i = x + i * sx, C_i = c + i * sc (elements)
static cublasStatus_t strided_gemm(cublasHandle_t h, const void *w, int64_t sw, const void *x, int64_t sx, void *c,
                                   int ldc, int64_t sc, cudaDataType_t t, int64_t brows, int in, int out, int count)
{
    const float one = 1.0f, zero = 0.0f;
    return cb.gemm_strided(h, CUBLAS_OP_T, CUBLAS_OP_N, out, (int)brows, in, &one, w, t, in, sw, x, t, in,
                                      sx, &zero, c, t, ldc, sc, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// One run's batches on one stream (epm_ffn_bplan_sgemms: gate and up, then
// down), the SiLU in between. *refused when cuBLAS refused a batch.
static epm_status strided_run(epm_gpu *g, int b, cublasHandle_t hb, cudaStream_t sb, epm_gpu_dtype dt,
                              const void *const *gate, const void *const *up, const void *const *down,
                              const char *spare, char *gu, char *h, char *yp, int hidden, int ffn, int *refused)
{
    const epm_ffn_bplan *pl = &g->bplan;
    cudaDataType_t t = ctype(dt);
    int n = pl->first[b + 1] - pl->first[b];
    int64_t B = pl->brows[b];
    epm_ffn_sgemm q[3];
    int k = epm_ffn_bplan_sgemms(pl, b, gate, up, down, spare, gu, h, yp, hidden, ffn, esize(dt), q);
    for (int i = 0; i < k; i++) {
        if (i == k - 1) { // down reads what the SiLU writes
            int64_t nh = (int64_t)n * B * ffn;
            if (dt == EPM_GPU_BF16)
                k_silu_mul_pairs<<<blocks_for(nh, 256), 256, 0, sb>>>((const __nv_bfloat16 *)q[0].y,
                                                                       (__nv_bfloat16 *)q[i].x, nh, ffn);
            else
                k_silu_mul_pairs<<<blocks_for(nh, 256), 256, 0, sb>>>((const float *)q[0].y, (float *)q[i].x, nh,
                                                                       ffn);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess)
                return epm_fail(EPM_ERR_CUDA, "GPU strided FFN: SiLU of run %d: %s", b, cudaGetErrorString(e));
        }
        cublasStatus_t bs = strided_gemm(hb, q[i].w, q[i].w_stride, q[i].x, q[i].x_stride, q[i].y, q[i].ldy,
                                         q[i].y_stride, t, B, q[i].in, q[i].out, n);
        if (bs == CUBLAS_STATUS_NOT_SUPPORTED) {
            *refused = 1;
            return EPM_OK;
        }
        if (bs != CUBLAS_STATUS_SUCCESS)
            return epm_fail(EPM_ERR_CUDA, "GPU strided FFN: cublasGemmStridedBatchedEx %d of run %d (%d experts of "
                            "%lld rows from expert %d): cuBLAS status %d", i, b, n, (long long)B,
                            pl->expert[pl->first[b]], (int)bs);
    }
    return EPM_OK;
}

// ---- both padded paths ----

// The grouped FFN over padded batches (ffn_bplan.h): buckets of experts
// through cublasGemmBatchedEx, or (strided) runs of stacked experts through
// cublasGemmStridedBatchedEx. Inputs that cannot be read in place are
// gathered to the spare area, the batches run bucket by bucket (round-robin
// over the side streams), and the real rows are scattered back to y.
// *done = 0 (and EPM_OK) when this call does not fit the path, the device
// has no room, or cuBLAS refused it: the caller then runs the per-expert
// path, from the start.
static epm_status padded_swiglu(epm_gpu *g, int strided, epm_gpu_dtype dt, const void *x, const int64_t *offsets,
                                int experts, int hidden, int ffn, const void *const *gate, const void *const *up,
                                const void *const *down, void *y, int *done)
{
    *done = 0;
    const char *path = strided ? "strided" : "batched";
    size_t es = esize(dt);
    if (!batched_fits(g, es, x, offsets, experts, hidden, ffn, gate, up, down, y))
        return unfit(g, path, hidden, ffn);
    epm_ffn_bplan *pl = &g->bplan;
    CHECK(strided ? epm_ffn_bplan_make_runs(pl, offsets, experts, gate, up, down, (size_t)ffn * hidden * es)
                  : epm_ffn_bplan_make(pl, offsets, experts));
    if (pl->ne == 0)
        return EPM_OK;

    // batched: pointers [9 ne] bucket by bucket; then the gather table
    // [3 ncopy] and the scatter table [3 ne]; one copy to the device
    size_t nptr = strided ? 0 : (size_t)9 * pl->ne;
    size_t count = nptr + (size_t)3 * pl->ncopy + (size_t)3 * pl->ne;
    grouped_slot *s = NULL;
    CHECK(grouped_slot_get(g, count, &s));
    // gate and up (two areas of rows of ffn, batched; one of rows of 2 ffn,
    // strided: the same bytes), h, the down output, the spare inputs
    size_t fbytes = align256((size_t)pl->padded_rows * ffn * es);
    size_t ybytes = align256((size_t)pl->padded_rows * hidden * es);
    size_t sbytes = align256((size_t)pl->spare_rows * hidden * es);
    char *area = NULL;
    CHECK(barea_or_fallback(g, 3 * fbytes + ybytes + sbytes, &area));
    if (!area)
        return EPM_OK;
    char *gu = area, *h = area + 2 * fbytes, *yp = h + fbytes, *spare = yp + ybytes;
    for (int b = 0; b < pl->nb && !strided; b++)
        epm_ffn_bplan_ptrs(pl, b, gate, up, down, (const char *)x, spare, gu, gu + fbytes, h, yp, hidden, ffn, es,
                           s->host + (size_t)9 * pl->first[b]);
    int64_t *tab = (int64_t *)(s->host + nptr);
    epm_ffn_bplan_tables(pl, tab, tab + 3 * pl->ncopy);
    epm_status st = grouped_slot_send(g, s, count);
    const int64_t *dtab = (const int64_t *)(g->dptr + nptr);
    if (st == EPM_OK)
        st = copy_rows(g, x, spare, dtab, pl->ncopy, pl->max_rows, hidden * es);
    int refused = 0, S = g->nside;
    if (st == EPM_OK && S > 1)
        st = side_fork(g);
    for (int b = 0; b < pl->nb && st == EPM_OK && !refused; b++) {
        cublasHandle_t hb = S > 1 ? g->side_blas[b % S] : g->blas;
        cudaStream_t sb = S > 1 ? g->side[b % S] : g->stream;
        st = strided ? strided_run(g, b, hb, sb, dt, gate, up, down, spare, gu, h, yp, hidden, ffn, &refused)
                     : batched_bucket(g, b, hb, sb, dt, g->dptr + (size_t)9 * pl->first[b], gu, gu + fbytes, h,
                                      hidden, ffn, &refused);
    }
    if (S > 1)
        st = side_join(g, st);
    if (st == EPM_OK && !refused)
        st = copy_rows(g, yp, y, dtab + 3 * pl->ncopy, pl->ne, pl->max_rows, hidden * es);
    return padded_end(g, path, dt, st, refused, done);
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
    int ne = 0;
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m <= 0)
            continue;
        if (m > 0x7fffffff || !gate[e] || !up[e] || !down[e])
            return epm_fail(EPM_ERR_INVALID_ARG, "GPU grouped FFN: expert %d has %lld rows and %s weights", e,
                            (long long)m, gate[e] && up[e] && down[e] ? "" : "no");
        ne++;
    }
    // one busy expert is one plain GEMM chain: padding gains nothing there
    // (and bench kernels' dense ceiling stays the same chain in every mode)
    if ((g->grouped_mode == GROUPED_BATCHED || g->grouped_mode == GROUPED_STRIDED) && ne >= 2) {
        int done = 0;
        CHECK(padded_swiglu(g, g->grouped_mode == GROUPED_STRIDED, dt, x, offsets, experts, hidden, ffn, gate, up,
                            down, y, &done));
        if (done)
            return EPM_OK;
    }

    int gu_grouped = 0, gu_bf16 = 0, down_grouped = 0;
    void **dp = NULL; // the device pointer arrays, 11 ne of them (below)
    grouped_par p = {};
    if (grouped_wanted(g, dt, ne, rows, hidden, ffn)) {
        // pointer arrays, in order: gate then up weights [2 ne]; x blocks
        // twice [2 ne]; float32 gate, up outputs [2 ne]; bf16 gate, up outputs
        // [2 ne] (the same scratch, packed at 2 bytes); down weights [ne];
        // h blocks [ne]; y blocks [ne]
        size_t count = (size_t)11 * ne;
        grouped_slot *s = NULL;
        CHECK(grouped_par_get(g, ne, &p));
        CHECK(grouped_slot_get(g, count, &s));
        void **P = s->host;
        __nv_bfloat16 *G16 = (__nv_bfloat16 *)G, *U16 = (__nv_bfloat16 *)U;
        for (int e = 0, i = 0; e < experts; e++) {
            int64_t o = offsets[e], m = offsets[e + 1] - o;
            if (m <= 0)
                continue;
            grouped_par_set(&p, i, m, hidden, ffn);
            grouped_par_set(&p, ne + i, m, hidden, ffn);
            grouped_par_set(&p, 2 * ne + i, m, ffn, hidden);
            P[i] = (void *)gate[e], P[ne + i] = (void *)up[e];
            P[2 * ne + i] = P[3 * ne + i] = (void *)(xb + (size_t)o * hidden * es);
            P[4 * ne + i] = G + o * ffn, P[5 * ne + i] = U + o * ffn;
            P[6 * ne + i] = G16 + o * ffn, P[7 * ne + i] = U16 + o * ffn;
            P[8 * ne + i] = (void *)down[e];
            P[9 * ne + i] = Hh + (size_t)o * ffn * es;
            P[10 * ne + i] = yb + (size_t)o * hidden * es;
            i++;
        }
        CHECK(grouped_slot_send(g, s, count));
        dp = g->dptr;

        // gate and up: one call of 2 ne groups; float32 outputs where cuBLAS
        // takes them, else (bf16 A/B) bf16 outputs
        cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
        if (dt == EPM_GPU_F32 || !g->gu_f32_refused) {
            st = grouped_gemm(g, &p, 0, 2 * ne, dp, dp + 2 * ne, dp + 4 * ne, t, CUDA_R_32F);
            if (st == CUBLAS_STATUS_NOT_SUPPORTED && dt == EPM_GPU_BF16)
                g->gu_f32_refused = 1;
        }
        if (st == CUBLAS_STATUS_NOT_SUPPORTED && dt == EPM_GPU_BF16) {
            st = grouped_gemm(g, &p, 0, 2 * ne, dp, dp + 2 * ne, dp + 6 * ne, t, CUDA_R_16BF);
            gu_bf16 = st == CUBLAS_STATUS_SUCCESS;
        }
        if (st != CUBLAS_STATUS_NOT_SUPPORTED)
            CB(st);
        gu_grouped = st == CUBLAS_STATUS_SUCCESS;
    }
    if (!gu_grouped) // per expert (also the fallback when cuBLAS refused the grouped call)
        CHECK(per_expert_gemms(g, 0, t, es, offsets, experts, hidden, ffn, gate, up, down, xb, G, U, Hh, yb));

    int64_t nh = rows * ffn;
    unsigned nb = blocks_for(nh, 256);
    if (gu_bf16)
        k_silu_mul<<<nb, 256, 0, g->stream>>>((const __nv_bfloat16 *)G, (const __nv_bfloat16 *)U,
                                               (__nv_bfloat16 *)Hh, nh);
    else if (dt == EPM_GPU_BF16)
        k_silu_mul<<<nb, 256, 0, g->stream>>>((const float *)G, (const float *)U, (__nv_bfloat16 *)Hh, nh);
    else
        k_silu_mul<<<nb, 256, 0, g->stream>>>((const float *)G, (const float *)U, (float *)Hh, nh);
    LAUNCHED();

    if (dp) { // down: one call of ne groups, input and output of type dt
        cublasStatus_t st = grouped_gemm(g, &p, 2 * ne, ne, dp + 8 * ne, dp + 9 * ne, dp + 10 * ne, t, t);
        if (st != CUBLAS_STATUS_NOT_SUPPORTED)
            CB(st);
        down_grouped = st == CUBLAS_STATUS_SUCCESS;
    }
    if (!down_grouped)
        CHECK(per_expert_gemms(g, 1, t, es, offsets, experts, hidden, ffn, gate, up, down, xb, G, U, Hh, yb));
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
