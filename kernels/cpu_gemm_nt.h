/* A float32 GEMM for few rows against a large weight in its checkpoint
 * layout (internal): y[m][n] = x[m][k] . w[n][k]^T, the shape of every
 * expert GEMM. Why not the BLAS: a BLAS packs the weight into its own layout
 * on every call, and with an expert's 128 rows that repacking is a third of
 * the time (OpenBLAS's AVX-512 SGEMM runs 128-row experts at 0.68-0.74 of
 * its large-m rate). Here each weight row is dotted in place with four input
 * rows at once, so the weight streams from memory once and is never copied;
 * only the input rows are packed, which is cheap at these sizes.
 *
 * The instruction set is picked at run time: AVX-512F or AVX2 with FMA on
 * x86-64, or none (the caller uses the BLAS). EPM_CPU_ISA (auto, avx512,
 * avx2, off) caps it, so that a CPU figure can be taken with the kernels a
 * BLAS was held to, and the tests run every kind the CPU has. */
#ifndef EPM_KERNELS_CPU_GEMM_NT_H
#define EPM_KERNELS_CPU_GEMM_NT_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

typedef enum { EPM_CPU_ISA_OFF = 0, EPM_CPU_ISA_AVX2 = 1, EPM_CPU_ISA_AVX512 = 2 } epm_cpu_isa;

/* Rows up to which the CPU FFN takes this GEMM over the BLAS: past them the
 * BLAS's repacking is amortised and it runs faster (measured on a 2-core
 * Zen 5 against OpenBLAS 0.3.21's AVX-512 kernels, both on two threads:
 * 1.8-2x the BLAS at 16 rows, 1.1-1.2x at 64-128, 0.95-0.98 at 256, 0.86 at
 * 1024, on the gate/up and down shapes of Mixtral and DeepSeek-V3). */
enum { EPM_GEMM_NT_MAX_ROWS = 192 };

/* The best kind this CPU (and its OS) runs. */
epm_cpu_isa epm_cpu_isa_best(void);
/* The kind to use: EPM_CPU_ISA if set, else the best. Fails naming the
 * variable and its value when it is not one of auto, avx512, avx2, off, or
 * asks for more than the CPU has. */
epm_status epm_cpu_isa_from_env(epm_cpu_isa *out);
/* epm_cpu_isa_from_env's answer, worked out once (OFF when it fails: the
 * "cpu" backend refuses to open then, naming the problem). */
epm_cpu_isa epm_cpu_isa_active(void);
const char *epm_cpu_isa_name(epm_cpu_isa isa);
/* x86 features besides the ISA level, by cpuid, once (in a VM every cpuid
 * traps to the hypervisor): EPM_X86_F16C (the fp8 kernels' conversions),
 * EPM_X86_AVX512BW (their 16-bit permutes); 0 elsewhere. */
enum { EPM_X86_F16C = 1, EPM_X86_AVX512BW = 2 };
int epm_cpu_x86_feats(void);
/* For the tests: every kernel takes isa from now on (at most the best), so
 * that each way through the CPU FFN runs in one process. */
void epm_cpu_isa_force(epm_cpu_isa isa);

/* Floats of packed input rows epm_cpu_gemm_nt needs for m rows of width k. */
size_t epm_cpu_gemm_nt_pack_floats(int64_t m, int k);
/* y[m][n] (row stride n) = x[m][k] . w[n][k]^T, with isa (not OFF, and one
 * the CPU runs); pack holds epm_cpu_gemm_nt_pack_floats(m, k) floats. Splits
 * the output features over OpenMP's threads when the work is large enough.
 * No checks: the callers' own argument checks cover it. */
void epm_cpu_gemm_nt(epm_cpu_isa isa, const float *x, int64_t m, int k, const float *w, int n, float *y,
                     float *pack);
/* The same over bfloat16 weights (bit patterns, as checkpoints hold them),
 * widened exactly as they are loaded: float32 math on the widened weights. */
void epm_cpu_gemm_nt_w16(epm_cpu_isa isa, const float *x, int64_t m, int k, const uint16_t *w, int n, float *y,
                         float *pack);

/* The same over weights held in another format (FP8: cpu_ffn_fp8.c), which
 * dec decodes to float32: rows [r0, r1), columns [j0, j1) of w into out
 * (row stride ldo). Each thread decodes its own output features a
 * k-block of up to 48 rows at a time into its part of wbuf, which stays in
 * the L2 cache beside the packed input block, so that the weight is read
 * once per pass and nothing decoded goes back to memory (decoding a whole
 * matrix first costs 8 more bytes of traffic per weight). wbuf holds
 * epm_cpu_gemm_nt_decode_floats(threads) floats, for one call at a time; at
 * most `threads` threads run. */
typedef void (*epm_gemm_nt_decode_fn)(const void *w, int64_t r0, int64_t r1, int j0, int j1, float *out,
                                      int64_t ldo);
size_t epm_cpu_gemm_nt_decode_floats(int threads);
void epm_cpu_gemm_nt_decoded(epm_cpu_isa isa, const float *x, int64_t m, int k, epm_gemm_nt_decode_fn dec,
                             const void *w, int n, float *y, float *pack, float *wbuf, int threads);

#endif
