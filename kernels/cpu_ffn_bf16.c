/* The CPU expert FFN over bfloat16 weights, float32 activations and float32
 * accumulation. Why: MoE checkpoints ship in bf16, and widening every expert
 * to float32 at load doubles the memory a rank needs and the bytes each
 * decoded token reads; Debian's OpenBLAS has no bf16 GEMM (cblas_sbgemm), so
 * the weights are widened where they are used. Every product is the same as
 * float32 math on the widened weights (a bf16 value widens exactly); only the
 * order of the additions differs from the reference.
 *
 * Three ways, by the rows an expert chunk has:
 *  - up to DIRECT_ROWS rows (decode; fewer where cpu_gemm_nt.c runs:
 *    direct_rows_for): each weight row is widened in registers
 *    and dotted with every input row, gate and up in the same pass with the
 *    SiLU applied on the spot, threads over output features. It reads the
 *    bf16 weights once: half the bytes of the float32 path, which is what
 *    bounds decode. At 1-2 rows per expert it ran 1.9-2.7x the float32 FFN,
 *    against 1.35-1.4x for the next way, which pads to 4 rows.
 *  - up to NT_ROWS rows, where the CPU has AVX2 or AVX-512: cpu_gemm_nt.c,
 *    which widens each weight as it loads it. From 4 rows on it is as fast as
 *    the direct kernel or faster (16 rows: 1.19x float32 against 0.58x; 32:
 *    1.08x against 0.70x; 2-core Zen 5, the float32 side on the same GEMM).
 *  - more rows, or neither instruction set: panels of the weight widened to
 *    float32 into the caller's scratch, then SGEMM. Each OpenMP thread
 *    widens its own slice of a panel and multiplies it (a BLAS on one thread
 *    each, cpu_sgemm.h): Mixtral's 1024-row experts ran at 0.86 of float32
 *    against 0.77 with the widening on one thread. (Before the BLAS ran on
 *    OpenMP's threads, a second pool beside OpenBLAS's cost more in their
 *    spinning than it saved.) A panel has at least PANEL_MIN_ROWS rows because each
 *    SGEMM packs its whole input block again: below a few hundred output
 *    columns that repacking costs more than the widening saves. Larger panels
 *    (128 MiB) ran 128-row Mixtral experts faster alone (0.84 of float32
 *    against 0.69) but a whole model slower (0.68 against 1.18 on a 2-core
 *    Zen 5), so they stay at 8 MiB.
 * epm_cpu_linear_w16 takes the same three ways for the dense matrices a
 * checkpoint stores in bf16 (epm_model_set_dense_dtype). */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "cpu_gemm_nt.h"
#include "cpu_omp.h"
#include "cpu_sgemm.h"
#include "half.h"
#include "kcheck.h"
#include "ops.h"
#include "cpu_vec.h" /* last: its settings hold for the rest of the file */

enum {
    ROW_BLOCK = 4,               /* rows the direct kernel dots with one weight row at once */
    DIRECT_ROWS = EPM_CPU_FFN_W16_DIRECT_ROWS, /* rows of an expert up to which the direct kernel runs */
    CHUNK = EPM_CPU_FFN_CHUNK,   /* rows per chunk of the panel path, as cpu_ffn.c */
    NT_ROWS = EPM_GEMM_NT_MAX_ROWS, /* rows of a chunk up to which cpu_gemm_nt.c runs it, where the CPU can */
    PANEL_MIN_ROWS = 512,        /* output features per widened panel, at least (wide rows: 14-29 MiB) ... */
    PANEL_FLOATS = 2 << 20,      /* ... or as many as fill this many floats (8 MiB) */
    PAR_MIN_WORK = 1 << 16       /* multiply-adds below which one thread does it all */
};
_Static_assert(ROW_BLOCK == 4, "dot_block's switch covers 1..4 rows");

typedef epm_vf8 vf8;

/* The direct kernel reads a weight row 2 W elements at a time (W floats per
 * vector) as W bf16 pairs in 32-bit lanes: shifting each lane left by 16
 * widens its even element, masking its low half widens the odd one (two
 * operations for 2 W weights, no shuffles). The input rows are laid out to
 * match once per call ("paired"), so each half meets its weights in place.
 * direct_gate_up and direct_linear: acc0[i] = x[i] . w0 and acc1[i] = x[i] .
 * w1 for up to ROW_BLOCK rows at once, each input load feeding two weight
 * rows, as the input rows come from L2 while the weights stream; each weight
 * row is read from memory once and dotted with every row block while in L1.
 * direct_gate_up writes silu(x . gate[n]) * (x . up[n]) paired (width F) for
 * the down projection; output features go two at a time. */
typedef struct direct_kernels {
    void (*to_paired)(const float *x, int M, int K, float *xp);
    void (*gate_up)(int M, const float *xp, int K, const uint16_t *gate, const uint16_t *up, int n0, int n1,
                    float *hp, int F);
    void (*linear)(int M, const float *xp, int K, const uint16_t *w, int n0, int n1, float *y, int64_t ldy);
} direct_kernels;

#define DW 8
#define DSFX _w8
#define DATTR EPM_CLONES
#include "cpu_ffn_bf16_direct.inc"
#undef DW
#undef DSFX
#undef DATTR
#ifdef EPM_CLONES_ON
#define DW 16
#define DSFX _w16
/* the features epm_cpu_isa_best checks for AVX-512, no more: x86-64-v4
 * would let GCC use AVX512VL registers that an AVX512F-only CPU lacks */
#define DATTR __attribute__((target("avx512f,fma")))
#include "cpu_ffn_bf16_direct.inc"
#undef DW
#undef DSFX
#undef DATTR
#endif

/* 16-wide under AVX-512 (1.12-1.2x the 8-wide clone's rate at 1 row, bf16
 * rows of 2048 on a 2-core Zen 5, quiet), else 8-wide */
static const direct_kernels *direct_for(epm_cpu_isa isa)
{
#ifdef EPM_CLONES_ON
    if (isa == EPM_CPU_ISA_AVX512)
        return &direct_w16;
#endif
    (void)isa;
    return &direct_w8;
}

/* Rows of an expert (or linear layer) up to which the direct kernel runs,
 * by what cpu_gemm_nt.c can do here: one weight row dotted with a few input
 * rows beats that GEMM's 4-row tiles at 1 row under AVX-512 (1.1-1.3x; even
 * at 2, 1.2-1.7x behind at 3-4) and at 1 row under AVX2 (1.3-1.4x; even at
 * 2-3, behind at 4); without either, the next way is the panels. (Bf16
 * linear layers of 2048 and 4096 inputs, 2-core Zen 5, quiet machine.) */
static int direct_rows_for(epm_cpu_isa isa)
{
    return isa == EPM_CPU_ISA_AVX512 ? 1 : isa == EPM_CPU_ISA_AVX2 ? 3 : DIRECT_ROWS;
}

/* p rounded up to a cache line: a vector load across two costs as much as two */
static float *line_up(float *p) { return p + (-(uintptr_t)p / sizeof *p & 15); }

/* scratch: M x F of h, then M x H of x, both paired */
static void direct_expert(const direct_kernels *dk, int M, const float *x, int H, int F, const uint16_t *gate,
                          const uint16_t *up, const uint16_t *down, float *scratch, float *y)
{
    float *h = line_up(scratch), *xp = line_up(h + (int64_t)M * F);
    dk->to_paired(x, M, H, xp);
    int nt = epm_omp_threads_for((int64_t)M * H * F, PAR_MIN_WORK);
    (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
    {
        int64_t c0, c1;
        epm_omp_share(F, 1, &c0, &c1);
        dk->gate_up(M, xp, H, gate, up, (int)c0, (int)c1, h, F);
EPM_OMP("omp barrier")
        epm_omp_share(H, 1, &c0, &c1);
        dk->linear(M, h, F, down, (int)c0, (int)c1, y, H);
    }
}

EPM_CLONES static void widen_span(const uint16_t *w, int64_t n, float *out)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vf8 f = epm_bf16x8(w + i);
        memcpy(out + i, &f, sizeof f);
    }
    for (; i < n; i++)
        out[i] = epm_bf16_to_f32(w[i]);
}

static void widen_bf16_rows(const void *w, int64_t r0, int64_t r1, int K, float *out)
{
    widen_span((const uint16_t *)w + r0 * K, (r1 - r0) * K, out);
}

void epm_cpu_panel_linear(const float *x, int64_t m, int K, epm_cpu_widen_fn widen, const void *w, int N,
                          float *panel, int panel_rows, float *y)
{
    int nt = epm_cpu_sgemm_on_caller() ? epm_omp_threads_for(m * (int64_t)N * K, PAR_MIN_WORK) : 1;
    (void)nt;
    for (int n0 = 0; n0 < N; n0 += panel_rows) {
        int nb = N - n0 < panel_rows ? N - n0 : panel_rows;
        /* each thread widens its own slice of the panel and multiplies it (whole groups of 16 features) */
EPM_OMP("omp parallel num_threads(nt)")
        {
            int64_t c0, c1;
            epm_omp_share(nb, 16, &c0, &c1);
            if (c1 > c0) {
                widen(w, n0 + c0, n0 + c1, K, panel + c0 * K);
                epm_cpu_sgemm_nt(x, m, K, panel + c0 * K, (int)(c1 - c0), y + n0 + c0, N);
            }
        }
    }
}

static void panel_linear(const float *x, int64_t m, int K, const uint16_t *w, int N, float *panel, int panel_rows,
                         float *y)
{
    epm_cpu_panel_linear(x, m, K, widen_bf16_rows, w, N, panel, panel_rows, y);
}

int epm_cpu_panel_rows(int K, int N, int fixed)
{
    int64_t r = fixed > 0 ? fixed : PANEL_FLOATS / K;
    if (fixed <= 0 && r < PANEL_MIN_ROWS)
        r = PANEL_MIN_ROWS;
    return r > N ? N : (int)r;
}

size_t epm_cpu_panel_floats(int hidden, int ffn, int fixed)
{
    int64_t a = (int64_t)epm_cpu_panel_rows(hidden, ffn, fixed) * hidden;
    int64_t b = (int64_t)epm_cpu_panel_rows(ffn, hidden, fixed) * ffn;
    return (size_t)(a > b ? a : b);
}

/* gate and up outputs of one chunk (the direct kernel's h in the first half),
 * the direct kernel's paired input rows, then the widened panel when needed */
static int64_t panel_offset(int64_t max_rows, int hidden, int ffn)
{
    int64_t m = max_rows < CHUNK ? max_rows : CHUNK, d = max_rows < DIRECT_ROWS ? max_rows : DIRECT_ROWS;
    return 2 * m * ffn + d * hidden + 32; /* + the direct kernel's two alignments */
}

/* past panel_offset: the widened panel, or cpu_gemm_nt.c's packed rows (an
 * expert takes one way or the other) */
size_t epm_cpu_ffn_w16_scratch_floats(int64_t max_rows, int hidden, int ffn, int fixed_panel)
{
    /* whatever instruction set runs the call: 1 row always takes the direct
     * kernel, up to DIRECT_ROWS rows the direct kernel or the CPU GEMM */
    size_t f = (size_t)panel_offset(max_rows, hidden, ffn);
    if (max_rows <= 1)
        return f;
    size_t pack = epm_cpu_gemm_nt_pack_floats(max_rows < NT_ROWS ? max_rows : NT_ROWS, hidden > ffn ? hidden : ffn);
    size_t panel = max_rows > DIRECT_ROWS ? epm_cpu_panel_floats(hidden, ffn, fixed_panel) : 0;
    return f + (panel > pack ? panel : pack);
}

epm_status epm_cpu_grouped_ffn_w16_panels(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                          const uint16_t *const *gate, const uint16_t *const *up,
                                          const uint16_t *const *down, float *scratch, float *y, int fixed_panel)
{
    EPM_CHECK(epm_cpu_ffn_check("cpu grouped_ffn (bf16 weights)", x, offsets, experts, hidden, ffn,
                                (const void *const *)gate, (const void *const *)up, (const void *const *)down,
                                scratch, y));
    float *panel = scratch + panel_offset(epm_busiest_rows(offsets, experts), hidden, ffn);
    const epm_cpu_isa isa = epm_cpu_isa_active();
    int pr_in = epm_cpu_panel_rows(hidden, ffn, fixed_panel), pr_out = epm_cpu_panel_rows(ffn, hidden, fixed_panel);
    for (int e = 0; e < experts; e++) {
        int64_t rows = offsets[e + 1] - offsets[e];
        if (rows <= direct_rows_for(isa)) {
            if (rows > 0)
                direct_expert(direct_for(isa), (int)rows, x + offsets[e] * hidden, hidden, ffn, gate[e], up[e], down[e], scratch,
                              y + offsets[e] * hidden);
            continue;
        }
        for (int64_t r0 = offsets[e]; r0 < offsets[e + 1]; r0 += CHUNK) {
            int64_t m = offsets[e + 1] - r0 < CHUNK ? offsets[e + 1] - r0 : CHUNK;
            float *g = scratch, *u = scratch + m * ffn;
            int nt_path = m <= NT_ROWS && isa != EPM_CPU_ISA_OFF; /* panel then holds the packed rows */
            if (nt_path) {
                epm_cpu_gemm_nt_w16(isa, x + r0 * hidden, m, hidden, gate[e], ffn, g, panel);
                epm_cpu_gemm_nt_w16(isa, x + r0 * hidden, m, hidden, up[e], ffn, u, panel);
            } else {
                panel_linear(x + r0 * hidden, m, hidden, gate[e], ffn, panel, pr_in, g);
                panel_linear(x + r0 * hidden, m, hidden, up[e], ffn, panel, pr_in, u);
            }
            epm_swiglu_inplace(g, u, m * ffn);
            if (nt_path)
                epm_cpu_gemm_nt_w16(isa, g, m, ffn, down[e], hidden, y + r0 * hidden, panel);
            else
                panel_linear(g, m, ffn, down[e], hidden, panel, pr_out, y + r0 * hidden);
        }
    }
    return EPM_OK;
}

epm_status epm_cpu_grouped_ffn_w16(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                   const uint16_t *const *gate, const uint16_t *const *up,
                                   const uint16_t *const *down, float *scratch, float *y)
{
    return epm_cpu_grouped_ffn_w16_panels(x, offsets, experts, hidden, ffn, gate, up, down, scratch, y, 0);
}

epm_status epm_cpu_linear_w16(const float *x, int64_t n, int in, const uint16_t *w, const float *b, int out,
                              float *y)
{
    KREQ(n >= 0 && n <= INT32_MAX, "cpu linear (bf16 weights): n = %lld", (long long)n);
    KREQ(in >= 1 && out >= 1, "cpu linear (bf16 weights): in = %d, out = %d", in, out);
    KPTR("cpu linear (bf16 weights)", x, n);
    KPTR("cpu linear (bf16 weights)", w, 1);
    KPTR("cpu linear (bf16 weights)", y, n);
    if (n == 0)
        return EPM_OK;
    const epm_cpu_isa isa = epm_cpu_isa_active();
    int direct = n <= direct_rows_for(isa), nt_path = !direct && n <= NT_ROWS && isa != EPM_CPU_ISA_OFF;
    int pr = epm_cpu_panel_rows(in, out, 0);
    size_t floats = direct    ? (size_t)n * (size_t)in
                    : nt_path ? epm_cpu_gemm_nt_pack_floats(n, in)
                              : (size_t)pr * (size_t)in;
    float *mem = epm_malloc((floats + 16) * sizeof *mem), *buf = mem ? line_up(mem) : NULL;
    if (!mem)
        return epm_fail(EPM_ERR_NOMEM, "cpu linear (bf16 weights): allocation of %zu floats of scratch failed",
                        floats);
    if (direct) {
        /* decode: the FFN's direct kernel, output features over the threads in pairs */
        const direct_kernels *dk = direct_for(isa);
        dk->to_paired(x, (int)n, in, buf);
        int nt = epm_omp_threads_for(n * (int64_t)in * out, PAR_MIN_WORK);
        (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
        {
            int64_t c0, c1;
            epm_omp_share(out, 2, &c0, &c1);
            dk->linear((int)n, buf, in, w, (int)c0, (int)c1, y, out);
        }
    } else if (nt_path) {
        epm_cpu_gemm_nt_w16(isa, x, n, in, w, out, y, buf);
    } else {
        panel_linear(x, n, in, w, out, buf, pr, y);
    }
    epm_free(mem);
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[i * out + o] += b[o];
    return EPM_OK;
}
