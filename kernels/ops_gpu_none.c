/* A build without CUDA: no GPU backend, and callers say so. */
#include "core.h"
#include "ops_gpu.h"

const epm_gpu_ops *epm_gpu_ops_cuda(void) { return NULL; }

epm_status epm_gpu_cublas_open(void) { return epm_fail(EPM_ERR_UNSUPPORTED, "GPU backend: built without CUDA"); }
