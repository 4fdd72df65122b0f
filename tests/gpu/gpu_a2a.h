/* Shared by the GPU transport tests: the same dispatch + combine on host
 * buffers (MPI transport) and on device buffers (the transport under test)
 * must give the same bits. Skips (77) without a CUDA device. */
#ifndef EPM_TEST_GPU_A2A_H
#define EPM_TEST_GPU_A2A_H

#include <cuda_runtime.h>
#include <stdio.h>

#include "../mpi/a2a_ref.h"

static inline int gpu_present(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/* dispatch + combine of s's rows for this rank through comm c; device: via cudaMalloc'ed buffers */
static inline void gpu_run(const scen *s, epm_comm *c, int device, void **rows_out, int64_t *nrows, void **out,
                           int64_t *nout)
{
    int me = epm_comm_rank(c), k = s->k, H = s->hidden;
    size_t rb = (size_t)H * epm_dtype_size(s->dt);
    int64_t n = s->ntok[me], g0 = s->first[me];
    uint64_t *keys = epm_malloc((size_t)(n + 1) * sizeof *keys);
    char *x = epm_malloc((size_t)(n + 1) * rb);
    for (int64_t t = 0; t < n; t++) {
        keys[t] = (uint64_t)(g0 + t);
        for (int h = 0; h < H; h++)
            sc_store(s->dt, x, t * H + h, sc_x(g0 + t, h));
    }
    epm_a2a_layout *l;
    assert_int_equal(epm_a2a_layout_create(c, s->p, 0, n, k, s->ids + g0 * k, s->w + g0 * k, keys,
                                           s->follow ? s->comb + g0 : NULL, &l), EPM_OK);
    *nrows = epm_a2a_rows(l);
    *nout = epm_a2a_out_rows(l);
    char *rows = epm_malloc((size_t)(*nrows + 1) * rb), *o = epm_malloc((size_t)(*nout + 1) * rb);
    /* partial = row scaled by the row index parity: any deterministic function will do */
    char *partial = epm_malloc((size_t)(*nrows + 1) * rb);
    if (!device) {
        assert_int_equal(epm_a2a_dispatch(l, x, s->dt, H, rows), EPM_OK);
        for (int64_t i = 0; i < *nrows * H; i++)
            sc_store(s->dt, partial, i, sc_load(s->dt, rows, i) * 0.75f);
        assert_int_equal(epm_a2a_combine(l, partial, s->dt, H, o, NULL), EPM_OK);
    } else {
        void *dx, *drows, *dpart, *dout;
        assert_int_equal(cudaMalloc(&dx, (size_t)(n + 1) * rb), cudaSuccess);
        assert_int_equal(cudaMalloc(&drows, (size_t)(*nrows + 1) * rb), cudaSuccess);
        assert_int_equal(cudaMalloc(&dpart, (size_t)(*nrows + 1) * rb), cudaSuccess);
        assert_int_equal(cudaMalloc(&dout, (size_t)(*nout + 1) * rb), cudaSuccess);
        assert_int_equal(cudaMemcpy(dx, x, (size_t)n * rb, cudaMemcpyHostToDevice), cudaSuccess);
        assert_int_equal(epm_a2a_dispatch_start(l, dx, s->dt, H, drows), EPM_OK);
        assert_int_equal(epm_a2a_dispatch_wait(l), EPM_OK);
        assert_int_equal(cudaMemcpy(rows, drows, (size_t)*nrows * rb, cudaMemcpyDeviceToHost), cudaSuccess);
        for (int64_t i = 0; i < *nrows * H; i++)
            sc_store(s->dt, partial, i, sc_load(s->dt, rows, i) * 0.75f);
        assert_int_equal(cudaMemcpy(dpart, partial, (size_t)*nrows * rb, cudaMemcpyHostToDevice), cudaSuccess);
        assert_int_equal(epm_a2a_combine(l, dpart, s->dt, H, dout, NULL), EPM_OK);
        assert_int_equal(cudaMemcpy(o, dout, (size_t)*nout * rb, cudaMemcpyDeviceToHost), cudaSuccess);
        cudaFree(dx);
        cudaFree(drows);
        cudaFree(dpart);
        cudaFree(dout);
    }
    epm_free(partial);
    epm_free(x);
    epm_free(keys);
    epm_a2a_layout_destroy(l);
    *rows_out = rows;
    *out = o;
}

/* host (MPI) vs device (transport t) on the same data: identical bits */
static inline void gpu_compare(epm_transport_kind t, scen s, int R)
{
    s.R = R;
    sc_build(&s);
    epm_comm_opts o;
    epm_comm_opts_init(&o);
    epm_comm *host, *dev;
    assert_int_equal(epm_comm_create(&o, &host), EPM_OK);
    o.transport = t;
    o.device_buffers = 1;
    epm_status st = epm_comm_create(&o, &dev);
    if (st != EPM_OK)
        fprintf(stderr, "%s\n", epm_last_error());
    assert_int_equal(st, EPM_OK);
    assert_int_equal(epm_comm_transport(dev), t);
    void *hr, *ho, *dr, *dout;
    int64_t hn, hno, dn, dno;
    gpu_run(&s, host, 0, &hr, &hn, &ho, &hno);
    gpu_run(&s, dev, 1, &dr, &dn, &dout, &dno);
    size_t rb = (size_t)s.hidden * epm_dtype_size(s.dt);
    assert_int_equal(hn, dn);
    assert_int_equal(hno, dno);
    assert_memory_equal(hr, dr, (size_t)hn * rb);
    assert_memory_equal(ho, dout, (size_t)hno * rb);
    epm_comm_stats a, b;
    epm_comm_stats_get(host, &a);
    epm_comm_stats_get(dev, &b);
    assert_memory_equal(a.model, b.model, sizeof a.model);
    epm_free(hr);
    epm_free(ho);
    epm_free(dr);
    epm_free(dout);
    epm_comm_destroy(host);
    epm_comm_destroy(dev);
    sc_free(&s);
}

#endif
