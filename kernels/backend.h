/* What every kernel backend shares (internal): the instance behind the
 * public epm_kernels handle, and the constructors backend.c picks from. */
#ifndef EPM_KERNELS_BACKEND_H
#define EPM_KERNELS_BACKEND_H

#include "epmoe/kernels.h"

struct epm_kernels {
    const char *name;
    const epm_kernel_ops *ops;
    int host_memory;
    void *ctx;                   /* the backend's own state (CUDA: the device context) */
    void (*release)(void *ctx);  /* frees ctx; NULL when there is none */
};

/* The host-memory backends: "ref" (epm_ref_* behind the table) and "cpu"
 * (BLAS GEMMs, the reference elsewhere). */
const epm_kernel_ops *epm_kernels_ref_ops(void);
const epm_kernel_ops *epm_kernels_cpu_ops(void);

/* Fills kb for GPU 0, or EPM_ERR_UNSUPPORTED when the build has no CUDA or
 * no device is visible. */
epm_status epm_kernels_cuda_open(epm_kernels *kb);
/* Visible CUDA devices; 0 in a build without CUDA. */
int epm_kernels_cuda_devices(void);

/* Rows per GEMM of the CPU grouped FFN: scratch stays bounded at 16k tokens
 * x top-8 while each GEMM stays large enough to run at the BLAS's full rate. */
enum { EPM_CPU_FFN_CHUNK = 1024 };
/* Rows of an expert up to which the bf16-weight FFN dots each weight row
 * with every input row directly (cpu_ffn_bf16.c), at most: 1 under AVX-512
 * and 3 under AVX2, where cpu_gemm_nt.c takes the rows past them up to its
 * limit; widened panels and SGEMM past that. */
enum { EPM_CPU_FFN_W16_DIRECT_ROWS = 4 };

/* The argument checks of the CPU grouped FFNs, each failure naming fn. */
epm_status epm_cpu_ffn_check(const char *fn, const void *x, const int64_t *offsets, int experts, int hidden,
                             int ffn, const void *const *gate, const void *const *up, const void *const *down,
                             const void *scratch, const void *y);
/* The CPU grouped expert FFN, float32 (cpu_ffn.c); scratch from
 * epm_cpu_ffn_scratch_bytes. */
size_t epm_cpu_ffn_scratch_bytes(int64_t rows, int hidden, int ffn);
epm_status epm_cpu_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y);
/* The same over bfloat16 weights (cpu_ffn_bf16.c): x, y and scratch float32;
 * scratch holds epm_cpu_ffn_w16_scratch_floats(rows of the busiest expert,
 * hidden, ffn, 0) floats (the float32 path's, plus a panel of widened
 * weights when an expert has more than a few rows). */
epm_status epm_cpu_grouped_ffn_w16(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                   const uint16_t *const *gate, const uint16_t *const *up,
                                   const uint16_t *const *down, float *scratch, float *y);
size_t epm_cpu_ffn_w16_scratch_floats(int64_t max_rows, int hidden, int ffn, int fixed_panel);
/* As epm_cpu_grouped_ffn_w16 with panels of fixed_panel weight rows (> 0;
 * 0 = the automatic size; the scratch to match): the tests' way to several
 * panels and a short last one on small weights. */
epm_status epm_cpu_grouped_ffn_w16_panels(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                          const uint16_t *const *gate, const uint16_t *const *up,
                                          const uint16_t *const *down, float *scratch, float *y, int fixed_panel);
/* The widened-panel GEMM of the low-precision weight paths (cpu_ffn_bf16.c):
 * y[m][N] (ld N) = x[m][K] w^T, panel_rows output features at a time widened
 * by widen (rows r0..r1 of w, K floats each, into out) into panel, then
 * SGEMM, each OpenMP thread widening and multiplying its own slice. */
typedef void (*epm_cpu_widen_fn)(const void *w, int64_t r0, int64_t r1, int K, float *out);
void epm_cpu_panel_linear(const float *x, int64_t m, int K, epm_cpu_widen_fn widen, const void *w, int N,
                          float *panel, int panel_rows, float *y);
/* Output features per panel for inputs of width K (fixed > 0: that many),
 * and the floats a panel of either FFN projection needs. */
int epm_cpu_panel_rows(int K, int N, int fixed);
size_t epm_cpu_panel_floats(int hidden, int ffn, int fixed);
/* The expert FFN over FP8 weights (cpu_ffn_fp8.c; ops.h's epm_w8): scratch
 * holds epm_cpu_ffn_w8_scratch_floats(rows of the busiest expert, hidden,
 * ffn) floats. An expert of 5-192 rows also takes decoding buffers from
 * epm_malloc for the call (192 KiB a thread: the threads are known only
 * then); when that fails it returns EPM_ERR_NOMEM with y partly written. */
struct epm_w8;
size_t epm_cpu_ffn_w8_scratch_floats(int64_t max_rows, int hidden, int ffn);
epm_status epm_cpu_grouped_ffn_w8(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                  const struct epm_w8 *gate, const struct epm_w8 *up, const struct epm_w8 *down,
                                  float *scratch, float *y);
/* rows r0..r1 of an FP8 weight of K columns as the float32 values it
 * stands for (bf16(e4m3 x scale)): the widening of the panel path */
void epm_cpu_w8_rows(const struct epm_w8 *w, int64_t r0, int64_t r1, int K, float *out);
/* The same for columns [c0, c1) of those rows (row stride ldo). */
void epm_cpu_w8_block(const struct epm_w8 *w, int64_t r0, int64_t r1, int K, int c0, int c1, float *out,
                      int64_t ldo);
/* A linear layer over an FP8 weight [out][in] (cpu_ffn_fp8.c): the direct
 * kernel up to 4 rows, cpu_gemm_nt.c's decoding GEMM up to 192 (AVX2 or
 * AVX-512), else decoded panels and SGEMM; b float32 or NULL; its packed
 * rows, decoding buffers or panel come from epm_malloc. */
epm_status epm_cpu_linear_w8(const float *x, int64_t n, int in, const struct epm_w8 *w, const float *b, int out,
                             float *y);
epm_status epm_cpu_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y);
/* epm_ref_attention's contract in float32 on OpenMP's threads (cpu_attention.c);
 * its scores buffer comes from epm_malloc. */
epm_status epm_cpu_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc,
                             int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs);
/* The same over a bf16 K/V cache (epm_ref_attention_bf16's contract): each
 * cached value widened as it is read, the float32 kernel's arithmetic. */
epm_status epm_cpu_attention_bf16(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                  const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                  float *probs);
/* The same over an fp8 K/V cache (epm_ref_attention_fp8's contract): each
 * cached head row's dot products and value sums taken over its e4m3 values
 * and multiplied by its scale once. */
epm_status epm_cpu_attention_fp8(const float *q, int64_t n, const int32_t *pos, const uint8_t *kc, const float *ks,
                                 const uint8_t *vc, const float *vs, int64_t cache_len, int heads, int kv_heads,
                                 int hd, float *out, float *probs);
/* The same over a bf16 weight [out][in] (cpu_ffn_bf16.c), with the bf16
 * FFN's three ways by rows; its buffers come from epm_malloc (EPM_ERR_NOMEM
 * when they cannot). */
epm_status epm_cpu_linear_w16(const float *x, int64_t n, int in, const uint16_t *w, const float *b, int out,
                              float *y);

#endif
