/* A build without CUDA: no GPU backend, and callers say so. */
#include "ops_gpu.h"

const epm_gpu_ops *epm_gpu_ops_cuda(void) { return NULL; }
