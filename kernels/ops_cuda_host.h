/* The runtime's epm_ops table on the GPU: the same host-pointer contract as
 * ops.h (float32, row-major, weights [out][in]), each op run through the
 * epm_gpu_ops table of ops_gpu.h on one device.
 *
 * Per call: x is uploaded into a reusable device buffer (grown as needed),
 * the op runs on the device in float32 (cuBLAS compute type 32F, no TF32),
 * y is downloaded; the call returns when y is on the host. x may equal y.
 * The `scratch` arguments of swiglu and grouped_swiglu are not used (the
 * device has its own).
 *
 * Weights (w, b of linear; w of rmsnorm; gate/up/down) are uploaded on first
 * use and kept: a cache keyed by (host pointer, byte size), so they must stay
 * constant and at their address while the table is open (the model's tensors
 * do for the model's lifetime). Close the table before the model is closed,
 * or before weights at a reused address could differ. A hit also compares
 * four sampled words of the host tensor with what was uploaded and uploads
 * again if they differ: a cheap guard against a reused address, not a
 * guarantee. An expert with no rows in a grouped call is never uploaded.
 * Nothing is evicted but what epm_ops_cuda_forget names: a model whose
 * weights do not fit on the device fails with EPM_ERR_CUDA (out of memory)
 * on the first op that cannot upload.
 *
 * Errors: the ops of epm_ops return void, so the first failure of any op
 * (invalid arguments as the reference would refuse them, CUDA or cuBLAS
 * errors, out of memory) is recorded. That op leaves its output zeroed
 * (where its size is known: not for grouped offsets that are invalid), and
 * from then on every op does nothing but zero its output, until
 * epm_ops_cuda_close(). The caller checks epm_ops_cuda_error() after each
 * layer (or at least before using results). An op called while the table is
 * closed records EPM_ERR_INVALID_ARG the same way (cleared by the next open).
 *
 * Process-wide: the op pointers carry no context, so there is one static
 * context, one device per process. Calls are serialized by a mutex; the
 * device was made current (cudaSetDevice) in the thread that opened, so call
 * the ops from that thread unless the device is 0. */
#ifndef EPM_OPS_CUDA_HOST_H
#define EPM_OPS_CUDA_HOST_H

#include <stdint.h>

#include "ops.h"

/* Opens the table on CUDA device `device` (a new stream and cuBLAS handle)
 * and sets *out to it. Opening again while open returns the same table for
 * the same device (EPM_OK; nothing is reset) and EPM_ERR_INVALID_ARG for
 * another device. EPM_ERR_UNSUPPORTED when this build has no CUDA, no device
 * is visible, or `device` is not below the visible count; EPM_ERR_INVALID_ARG
 * for out NULL or device < 0; EPM_ERR_CUDA (naming the device and the CUDA
 * error) when the context cannot be created. *out is NULL on failure. */
epm_status epm_ops_cuda_open(int device, const epm_ops **out);

/* Waits for the device, frees every device buffer (activations and cached
 * weights) and the context, and clears the recorded error. Safe when not
 * open, and twice. The table must not be used until the next open. */
void epm_ops_cuda_close(void);

/* EPM_OK, or the first error an op hit since the table was opened; then the
 * detail of that first error is also made this thread's epm_last_error().
 * EPM_OK when nothing failed (also when closed and no op was called since). */
epm_status epm_ops_cuda_error(void);

/* Frees the device copies of the weights at hosts[0..n) (every byte size
 * cached for each; the array is sorted in place), which are about to be
 * freed or to hold other data: online rebalancing drops experts. Safe when
 * closed, and for pointers never uploaded. */
epm_status epm_ops_cuda_forget(const void **hosts, int n);

/* Bytes of weights now held on the device by the cache (0 when closed). */
int64_t epm_ops_cuda_weight_bytes(void);

#endif
