/* The CPU expert FFN over FP8 weights (ops.h's epm_w8: e4m3 codes and a
 * float32 scale per block), float32 activations and accumulation. Why:
 * DeepSeek-V3/R1 publish their experts in FP8, and holding them dequantised
 * to bf16 doubles the memory a rank needs for them and the bytes each
 * decoded token reads. Each weight is decoded where it is used to the value
 * the loader's dequantisation gives (bf16(e4m3 x scale)), so the products
 * are those of the bf16 path on the dequantised model; only the order of
 * the additions differs.
 *
 * Two ways, by the rows an expert has:
 *  - up to DIRECT_ROWS (decode): each weight row is decoded in registers, 8
 *    codes at a time, and dotted with every input row at once, gate and up
 *    in the same pass with the SiLU applied on the spot; threads over
 *    output features. It reads one byte per weight.
 *  - more rows: panels decoded to float32 into the caller's scratch, then
 *    SGEMM (cpu_ffn_bf16.c's panel path with this file's decoding). */
#include <string.h>

#include "backend.h"
#include "cpu_omp.h"
#include "half.h"
#include "kcheck.h"
#include "ops.h"
#include "cpu_vec.h" /* last: its settings hold for the rest of the file */

enum {
    DIRECT_ROWS = 4,           /* rows of an expert up to which the direct kernel runs */
    CHUNK = EPM_CPU_FFN_CHUNK, /* rows per chunk of the panel path, as cpu_ffn.c */
    PAR_MIN_WORK = 1 << 16     /* multiply-adds below which one thread does it all */
};

typedef float vf8 __attribute__((vector_size(32)));
typedef uint32_t vu8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef uint8_t vb8 __attribute__((vector_size(8)));

/* 8 e4m3 codes times scale s, rounded to bf16, as floats. A normal code's
 * exponent and mantissa move into a float's (bias 7 to 127); a subnormal
 * one (exponent 0, m x 2^-9) is that float less 2^-7, doubled: exact. The
 * loader refuses NaN codes and products beyond bf16, so neither occurs. */
static inline __attribute__((always_inline)) vf8 decode8(const uint8_t *q, vf8 s)
{
    vb8 b;
    memcpy(&b, q, sizeof b);
    vu8 u = __builtin_convertvector(b, vu8), em = u & 0x7fu;
    vu8 bits = (em << 20) + (120u << 23);
    vf8 fn, fs;
    memcpy(&fn, &bits, sizeof fn);
    fs = (fn - 0x1p-7f) * 2.0f;
    vu8 sub = (vu8)(em < 8u), bs;
    memcpy(&bs, &fs, sizeof bs);
    bits = (bits & ~sub) | (bs & sub) | ((u & 0x80u) << 24);
    vf8 v;
    memcpy(&v, &bits, sizeof v);
    v *= s;
    memcpy(&bits, &v, sizeof bits);
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static inline float decode1(uint8_t q, float s) { return epm_bf16_to_f32(epm_f32_to_bf16(epm_f8e4m3_to_f32(q) * s)); }

static inline __attribute__((always_inline)) vf8 load8(const float *p)
{
    vf8 f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* by pointer and always inlined: a vector passed by value to a function
 * compiled for another instruction set than its caller's clone is garbage */
static inline __attribute__((always_inline)) float hsum8(const vf8 *v)
{
    float s[8];
    memcpy(s, v, sizeof s);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

EPM_CLONES void epm_cpu_w8_rows(const epm_w8 *w, int64_t r0, int64_t r1, int K, float *out)
{
    const int64_t sc_cols = (K + w->bc - 1) / w->bc;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = w->q + r * K;
        const float *s = w->scale + r / w->br * sc_cols;
        float *o = out + (r - r0) * K;
        for (int64_t cb = 0; cb < sc_cols; cb++) {
            int64_t j = cb * w->bc, j1 = j + w->bc < K ? j + w->bc : K;
            vf8 sv = {s[cb], s[cb], s[cb], s[cb], s[cb], s[cb], s[cb], s[cb]};
            for (; j + 8 <= j1; j += 8) {
                vf8 v = decode8(q + j, sv);
                memcpy(o + j, &v, sizeof v);
            }
            for (; j < j1; j++)
                o[j] = decode1(q[j], s[cb]);
        }
    }
}

static void w8_rows_fn(const void *w, int64_t r0, int64_t r1, int K, float *out)
{
    epm_cpu_w8_rows(w, r0, r1, K, out);
}

/* acc0[i] = x[i] . row r of w0 and acc1[i] = x[i] . row r of w1 (w1 may be
 * NULL) for M input rows of width K (ld ldx), each block of codes decoded
 * once for all rows. */
static inline __attribute__((always_inline)) void dot_rows(const int M, const float *x, int64_t ldx, const epm_w8 *w0,
                                                           const epm_w8 *w1, int64_t r, int K, float *acc0,
                                                           float *acc1)
{
    const int64_t sc_cols = (K + w0->bc - 1) / w0->bc;
    const uint8_t *q0 = w0->q + r * K, *q1 = w1 ? w1->q + r * K : NULL;
    const float *s0 = w0->scale + r / w0->br * sc_cols, *s1 = w1 ? w1->scale + r / w1->br * sc_cols : NULL;
    vf8 a[DIRECT_ROWS] = {0}, b[DIRECT_ROWS] = {0};
    float ta[DIRECT_ROWS] = {0}, tb[DIRECT_ROWS] = {0};
    for (int64_t cb = 0; cb < sc_cols; cb++) {
        int64_t j = cb * w0->bc, j1 = j + w0->bc < K ? j + w0->bc : K;
        float f0 = s0[cb], f1 = w1 ? s1[cb] : 0;
        vf8 v0 = {f0, f0, f0, f0, f0, f0, f0, f0}, v1 = {f1, f1, f1, f1, f1, f1, f1, f1};
        for (; j + 8 <= j1; j += 8) {
            vf8 d0 = decode8(q0 + j, v0);
            if (w1) {
                vf8 d1 = decode8(q1 + j, v1);
#pragma GCC unroll 4
                for (int i = 0; i < M; i++) {
                    vf8 xv = load8(x + i * ldx + j);
                    a[i] += xv * d0;
                    b[i] += xv * d1;
                }
            } else {
#pragma GCC unroll 4
                for (int i = 0; i < M; i++)
                    a[i] += load8(x + i * ldx + j) * d0;
            }
        }
        for (; j < j1; j++) {
            float d0 = decode1(q0[j], f0), d1 = w1 ? decode1(q1[j], f1) : 0;
            for (int i = 0; i < M; i++) {
                ta[i] += x[i * ldx + j] * d0;
                tb[i] += x[i * ldx + j] * d1;
            }
        }
    }
    for (int i = 0; i < M; i++) {
        acc0[i] = hsum8(&a[i]) + ta[i];
        if (w1)
            acc1[i] = hsum8(&b[i]) + tb[i];
    }
}

/* the switch gives each row count its own unrolled body */
EPM_CLONES static void dot_block(int M, const float *x, int64_t ldx, const epm_w8 *w0, const epm_w8 *w1, int64_t r,
                                 int K, float *acc0, float *acc1)
{
    switch (M) {
    case 1: dot_rows(1, x, ldx, w0, w1, r, K, acc0, acc1); break;
    case 2: dot_rows(2, x, ldx, w0, w1, r, K, acc0, acc1); break;
    case 3: dot_rows(3, x, ldx, w0, w1, r, K, acc0, acc1); break;
    default: dot_rows(4, x, ldx, w0, w1, r, K, acc0, acc1); break;
    }
}

/* M <= DIRECT_ROWS rows through one expert; h: M x F of scratch */
static void direct_expert(int M, const float *x, int H, int F, const epm_w8 *gate, const epm_w8 *up,
                          const epm_w8 *down, float *h, float *y)
{
    int nt = epm_omp_threads_for((int64_t)M * H * F, PAR_MIN_WORK);
    (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
    {
        float g[DIRECT_ROWS], u[DIRECT_ROWS];
        int64_t c0, c1;
        epm_omp_share(F, 1, &c0, &c1);
        for (int64_t n = c0; n < c1; n++) {
            dot_block(M, x, H, gate, up, n, H, g, u);
            for (int i = 0; i < M; i++)
                h[(int64_t)i * F + n] = epm_silu(g[i]) * u[i];
        }
EPM_OMP("omp barrier")
        epm_omp_share(H, 1, &c0, &c1);
        for (int64_t n = c0; n < c1; n++) {
            dot_block(M, h, F, down, NULL, n, F, g, NULL);
            for (int i = 0; i < M; i++)
                y[(int64_t)i * H + n] = g[i];
        }
    }
}

size_t epm_cpu_ffn_w8_scratch_floats(int64_t max_rows, int hidden, int ffn)
{
    int64_t m = max_rows < CHUNK ? max_rows : CHUNK;
    size_t f = (size_t)(2 * m * ffn);
    return f + (max_rows > DIRECT_ROWS ? epm_cpu_panel_floats(hidden, ffn, 0) : 0) + 1;
}

static epm_status check_w8(const char *fn, const epm_w8 *w, const char *which, int e, int64_t rows)
{
    KREQ(w->q && w->scale, "%s: expert %d has %lld rows but no %s weights", fn, e, (long long)rows, which);
    KREQ(w->br >= 1 && w->bc >= 1, "%s: expert %d's %s blocks are %d x %d", fn, e, which, w->br, w->bc);
    return EPM_OK;
}

epm_status epm_cpu_grouped_ffn_w8(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                  const epm_w8 *gate, const epm_w8 *up, const epm_w8 *down, float *scratch, float *y)
{
    static const char fn[] = "cpu grouped_ffn (fp8 weights)";
    EPM_CHECK(epm_ref_check_offsets(fn, offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "%s: hidden = %d, ffn = %d", fn, hidden, ffn);
    KREQ(gate && up && down, "%s: a weight array is NULL", fn);
    KREQ(x || offsets[experts] == 0, "%s: x is NULL", fn);
    KREQ(y || offsets[experts] == 0, "%s: y is NULL", fn);
    KREQ(scratch || offsets[experts] == 0, "%s: scratch is NULL", fn);
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m == 0)
            continue;
        EPM_CHECK(check_w8(fn, &gate[e], "gate", e, m));
        EPM_CHECK(check_w8(fn, &up[e], "up", e, m));
        EPM_CHECK(check_w8(fn, &down[e], "down", e, m));
    }
    int64_t busiest = epm_busiest_rows(offsets, experts), chunk_max = busiest < CHUNK ? busiest : CHUNK;
    float *panel = scratch + 2 * chunk_max * ffn;
    int pr_in = epm_cpu_panel_rows(hidden, ffn, 0), pr_out = epm_cpu_panel_rows(ffn, hidden, 0);
    for (int e = 0; e < experts; e++) {
        int64_t rows = offsets[e + 1] - offsets[e];
        if (rows == 0)
            continue;
        if (rows <= DIRECT_ROWS) {
            direct_expert((int)rows, x + offsets[e] * hidden, hidden, ffn, &gate[e], &up[e], &down[e], scratch,
                          y + offsets[e] * hidden);
            continue;
        }
        for (int64_t r0 = offsets[e]; r0 < offsets[e + 1]; r0 += CHUNK) {
            int64_t m = offsets[e + 1] - r0 < CHUNK ? offsets[e + 1] - r0 : CHUNK;
            float *g = scratch, *u = scratch + m * ffn;
            epm_cpu_panel_linear(x + r0 * hidden, m, hidden, w8_rows_fn, &gate[e], ffn, panel, pr_in, g);
            epm_cpu_panel_linear(x + r0 * hidden, m, hidden, w8_rows_fn, &up[e], ffn, panel, pr_in, u);
            epm_swiglu_inplace(g, u, m * ffn);
            epm_cpu_panel_linear(g, m, ffn, w8_rows_fn, &down[e], hidden, panel, pr_out, y + r0 * hidden);
        }
    }
    return EPM_OK;
}
