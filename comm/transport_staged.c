/* Staged transport: the caller's rows live in device memory; they are copied
 * to pinned host memory, exchanged with MPI, and copied back. This is the
 * path for several ranks sharing one GPU, where NCCL refuses to build a
 * communicator (duplicate GPU). */
#include <cuda_runtime.h>
#include <stdio.h>

#include "comm_internal.h"

typedef struct staged {
    epm_transport base;
    int device;
} staged;

static epm_status cuda_err(cudaError_t e, const char *what)
{
    return epm_fail(EPM_ERR_CUDA, "%s failed: %s", what, cudaGetErrorString(e));
}

static epm_status st_to_host(epm_transport *t, void *host, const void *dev, size_t bytes)
{
    cudaError_t e = cudaSetDevice(((staged *)t)->device);
    if (e == cudaSuccess)
        e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? EPM_OK : cuda_err(e, "cudaMemcpy device -> pinned host (staged transport)");
}

static epm_status st_to_device(epm_transport *t, void *dev, const void *host, size_t bytes)
{
    cudaError_t e = cudaSetDevice(((staged *)t)->device);
    if (e == cudaSuccess)
        e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? EPM_OK : cuda_err(e, "cudaMemcpy pinned host -> device (staged transport)");
}

static void *st_host_alloc(epm_transport *t, size_t bytes)
{
    (void)t;
    void *p = NULL;
    return cudaMallocHost(&p, bytes) == cudaSuccess ? p : NULL;
}

static void st_host_free(epm_transport *t, void *p)
{
    (void)t;
    cudaFreeHost(p);
}

static void st_destroy(epm_transport *t) { epm_free(t); }

static const epm_transport_ops staged_ops = {
    .name = "staged",
    .device = 1,
    .prepare = epm_transport_mpi_prepare,
    .post = epm_transport_mpi_post,
    .wait = epm_transport_mpi_wait,
    .release = epm_transport_mpi_release,
    .to_host = st_to_host,
    .to_device = st_to_device,
    .host_alloc = st_host_alloc,
    .host_free = st_host_free,
    .destroy = st_destroy,
};

epm_status epm_transport_staged_create(void *mpi_comm, int rank, int size, int local_rank, epm_transport **out)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        return epm_fail(EPM_ERR_CUDA, "transport staged: no CUDA device (%s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    staged *s = epm_calloc(1, sizeof *s);
    if (!s)
        return EPM_ERR_NOMEM;
    s->base.ops = &staged_ops;
    s->base.mpi_comm = mpi_comm;
    s->base.rank = rank;
    s->base.size = size;
    s->device = local_rank % n; /* ranks sharing a GPU share it here */
    *out = &s->base;
    return EPM_OK;
}
