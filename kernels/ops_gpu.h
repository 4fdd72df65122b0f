/* The GPU compute backend: the same operations as epm_ops plus the MoE
 * routing steps, on device memory. A separate table because epm_ops takes
 * host pointers; every pointer argument here is a device pointer unless its
 * comment says host. All work is queued on the context's one stream, in
 * order; only download and sync wait for it. Operations return EPM_OK or
 * EPM_ERR_CUDA / EPM_ERR_INVALID_ARG with a detail naming the call. */
#ifndef EPM_OPS_GPU_H
#define EPM_OPS_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum epm_gpu_dtype { EPM_GPU_F32 = 0, EPM_GPU_BF16 = 1 } epm_gpu_dtype;

typedef struct epm_gpu epm_gpu; /* one device, one stream, one cuBLAS handle */

typedef struct epm_gpu_ops {
    const char *name;
    /* devices visible; <= 0 when there is no usable GPU (then nothing else may be called) */
    int (*device_count)(void);
    epm_status (*create)(int device, epm_gpu **out);
    void (*destroy)(epm_gpu *g);
    epm_status (*alloc)(epm_gpu *g, size_t bytes, void **out);
    void (*free)(epm_gpu *g, void *p);
    /* host src -> device dst; download waits for the stream, then copies to host dst */
    epm_status (*upload)(epm_gpu *g, void *dst, const void *src, size_t bytes);
    epm_status (*download)(epm_gpu *g, void *dst, const void *src, size_t bytes);
    epm_status (*sync)(epm_gpu *g);
    /* n elements from type st to type dt (round to nearest even into bf16) */
    epm_status (*convert)(epm_gpu *g, const void *src, epm_gpu_dtype st, void *dst, epm_gpu_dtype dt, int64_t n);

    /* float32, the contracts of ops.h's rmsnorm, epm_rope and epm_attention
     * (attention: no probs output; hd <= 256) */
    epm_status (*rmsnorm)(epm_gpu *g, const float *x, int64_t n, int d, const float *w, float eps, float *y);
    epm_status (*rope)(epm_gpu *g, float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta);
    epm_status (*attention)(epm_gpu *g, const float *q, int64_t n, const int32_t *pos, const float *kc,
                            const float *vc, int heads, int kv_heads, int hd, float *out, int64_t cache_len);

    /* epm_router of ops.h (softmax or sigmoid scores, top-k with ties to the
     * lower index, top-p, renorm); ids/wts [n][k] (E <= 1024, k <= 16) */
    epm_status (*router)(epm_gpu *g, const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p,
                         int renorm, int32_t *ids, float *wts);
    /* epm_moe_route on the device (ids outside [0, E) are treated as -1);
     * offsets [E+1] int64 on the device */
    epm_status (*route)(epm_gpu *g, const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets,
                        int32_t *row_src, int32_t *row_of);
    epm_status (*permute)(epm_gpu *g, epm_gpu_dtype dt, const void *x, int hidden, const int32_t *row_src,
                          int64_t rows, void *out);
    epm_status (*unpermute)(epm_gpu *g, epm_gpu_dtype dt, const void *y, int hidden, const int32_t *row_of,
                            const float *w, int64_t n, int k, void *out);

    /* the grouped expert FFN of ops.h on x [offsets[E]][hidden] of type dt;
     * offsets is a HOST array (cuBLAS takes GEMM sizes from the host), gate/up/
     * down are host arrays of device pointers (NULL for an expert with no
     * rows); scratch holds grouped_scratch_bytes(dt, offsets[E], ffn) bytes */
    size_t (*grouped_scratch_bytes)(epm_gpu_dtype dt, int64_t rows, int ffn);
    epm_status (*grouped_swiglu)(epm_gpu *g, epm_gpu_dtype dt, const void *x, const int64_t *offsets, int experts,
                                 int hidden, int ffn, const void *const *gate, const void *const *up,
                                 const void *const *down, void *scratch, void *y);

    /* float32 y[n][out] = x[n][in] W^T (+ b): one cublasGemmEx, then a bias
     * kernel; appended after the FFN so older tables stay valid */
    epm_status (*linear)(epm_gpu *g, const float *x, int64_t n, int in, const float *w, const float *b, int out,
                         float *y);
    /* out[i] = table[ids[i]]; an id outside [0, vocab) gives a zero row (a
     * device kernel cannot fail by name: the host validates token ids) */
    epm_status (*embed)(epm_gpu *g, const float *table, int64_t vocab, int d, const int32_t *ids, int64_t n,
                        float *out);
} epm_gpu_ops;

/* The CUDA backend, or NULL in a build without CUDA. */
const epm_gpu_ops *epm_gpu_ops_cuda(void);
/* Opens cuBLAS (dlopen, once; every GPU context does first): EPM_OK, or
 * EPM_ERR_CUDA naming the library and why. No GPU needed. */
epm_status epm_gpu_cublas_open(void);

#ifdef __cplusplus
}
#endif
#endif
