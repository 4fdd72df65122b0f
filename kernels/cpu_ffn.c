/* The CPU fast path: linear layers and the grouped expert FFN as SGEMMs
 * through the BLAS (cpu_sgemm.c: on OpenMP's threads). Each expert's rows go through
 * gate, up and down as one GEMM each (the grouped-GEMM idea by loop), in
 * chunks of at most CHUNK rows so that scratch stays bounded at 16k tokens x
 * top-8 while each GEMM stays large enough to run at the BLAS's full rate.
 * Gate and up are not packed into one [2 ffn][hidden] matrix: that needs a
 * second copy of every expert's weights, and at the sizes where the call
 * overhead it saves matters (a few rows) the GEMMs are bound by reading the
 * weights, which packing does not change. Chunks of up to
 * EPM_GEMM_NT_MAX_ROWS rows go through cpu_gemm_nt.c instead of the BLAS,
 * where the CPU runs it: the BLAS's repacking of the weight is not amortised
 * over so few rows. */
#include <math.h>
#include <stdlib.h>

#include "backend.h"
#include "cpu_gemm_nt.h"
#include "cpu_omp.h"
#include "cpu_sgemm.h"
#include "kcheck.h"
#include "ops.h"

enum { CHUNK = EPM_CPU_FFN_CHUNK, NT_ROWS = EPM_GEMM_NT_MAX_ROWS };

static void sgemm_rows(const float *x, int64_t m, int in, const float *w, int out, float *y)
{
    epm_cpu_sgemm_nt(x, m, in, w, out, y, out);
}

/* sgemm_rows, through cpu_gemm_nt.c when m is small and the CPU runs it;
 * pack: epm_cpu_gemm_nt_pack_floats(m, in) floats */
static void expert_gemm(const float *x, int64_t m, int in, const float *w, int out, float *y, float *pack)
{
    epm_cpu_isa isa = epm_cpu_isa_active();
    if (m <= NT_ROWS && isa != EPM_CPU_ISA_OFF)
        epm_cpu_gemm_nt(isa, x, m, in, w, out, y, pack);
    else
        sgemm_rows(x, m, in, w, out, y);
}

epm_status epm_cpu_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    KREQ(n >= 0 && n <= INT32_MAX, "cpu linear: n = %lld", (long long)n);
    KREQ(in >= 1 && out >= 1, "cpu linear: in = %d, out = %d", in, out);
    KPTR("cpu linear", x, n);
    KPTR("cpu linear", w, 1);
    KPTR("cpu linear", y, n);
    if (n == 0)
        return EPM_OK;
    /* few rows (decode): the CPU GEMM, its packed rows allocated here (the
     * runtime's linear has no scratch; at decode sizes a heap block that
     * malloc hands back call after call). Plain malloc, outside the fault
     * sweeps: without it the BLAS computes the same y, so no failure to report */
    float *pack = n <= NT_ROWS && epm_cpu_isa_active() != EPM_CPU_ISA_OFF
                      ? malloc(epm_cpu_gemm_nt_pack_floats(n, in) * sizeof *pack)
                      : NULL;
    if (pack)
        expert_gemm(x, n, in, w, out, y, pack);
    else
        sgemm_rows(x, n, in, w, out, y);
    free(pack);
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[i * out + o] += b[o];
    return EPM_OK;
}

/* gate and up outputs of a chunk, then the packed input rows of the largest
 * chunk that can go through cpu_gemm_nt.c (every expert's chunks are at most
 * min(rows, CHUNK) rows, and one of at most NT_ROWS is at most min(rows,
 * NT_ROWS), NT_ROWS < CHUNK) */
size_t epm_cpu_ffn_scratch_bytes(int64_t rows, int hidden, int ffn)
{
    int64_t m = rows < CHUNK ? rows : CHUNK, p = rows < NT_ROWS ? rows : NT_ROWS;
    size_t pack = epm_cpu_gemm_nt_pack_floats(p, hidden > ffn ? hidden : ffn);
    return ((size_t)(2 * m * ffn) + pack) * sizeof(float);
}

epm_status epm_cpu_ffn_check(const char *fn, const void *x, const int64_t *offsets, int experts, int hidden,
                             int ffn, const void *const *gate, const void *const *up, const void *const *down,
                             const void *scratch, const void *y)
{
    EPM_CHECK(epm_ref_check_offsets(fn, offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "%s: hidden = %d, ffn = %d", fn, hidden, ffn);
    KREQ(gate && up && down, "%s: a weight pointer array is NULL", fn);
    KREQ(x || offsets[experts] == 0, "%s: x is NULL", fn);
    KREQ(y || offsets[experts] == 0, "%s: y is NULL", fn);
    KREQ(scratch || offsets[experts] == 0, "%s: scratch is NULL", fn);
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        KREQ(m == 0 || (gate[e] && up[e] && down[e]), "%s: expert %d has %lld rows but no weights", fn, e,
             (long long)m);
    }
    return EPM_OK;
}

epm_status epm_cpu_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y)
{
    EPM_CHECK(epm_cpu_ffn_check("cpu grouped_ffn", x, offsets, experts, hidden, ffn, (const void *const *)gate,
                                (const void *const *)up, (const void *const *)down, scratch, y));
    int64_t busiest = epm_busiest_rows(offsets, experts), chunk_max = busiest < CHUNK ? busiest : CHUNK;
    for (int e = 0; e < experts; e++) {
        for (int64_t r0 = offsets[e]; r0 < offsets[e + 1]; r0 += CHUNK) {
            int64_t m = offsets[e + 1] - r0 < CHUNK ? offsets[e + 1] - r0 : CHUNK;
            float *g = scratch, *u = scratch + m * ffn, *pack = scratch + 2 * chunk_max * ffn;
            expert_gemm(x + r0 * hidden, m, hidden, gate[e], ffn, g, pack);
            expert_gemm(x + r0 * hidden, m, hidden, up[e], ffn, u, pack);
            epm_swiglu_inplace(g, u, m * ffn);
            expert_gemm(g, m, ffn, down[e], hidden, y + r0 * hidden, pack);
        }
    }
    return EPM_OK;
}
