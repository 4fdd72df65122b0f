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

/* The CPU grouped expert FFN, float32 (cpu_ffn.c); scratch from
 * epm_cpu_ffn_scratch_bytes. */
size_t epm_cpu_ffn_scratch_bytes(int64_t rows, int hidden, int ffn);
epm_status epm_cpu_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y);
epm_status epm_cpu_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y);

#endif
