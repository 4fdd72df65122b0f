/* float32 to and from bf16 in bulk, and fp8 dispatch rows: the rows of a
 * low-precision wire (runtime_wire.c) and bench a2a's. The bf16 ones take
 * eight values at a time on GCC vectors, in the clones of cpu_vec.h: a
 * scalar loop cost more than the bytes it saved on a shared-memory exchange
 * (bench a2a's full16 column). The same rounding as epm_f32_to_bf16:
 * nearest even, NaN kept quiet. Loads and stores go through memcpy: the rows
 * are float arrays. */
#include <float.h>
#include <math.h>

#include "half.h"
#include "cpu_vec.h" /* last: its settings hold for the rest of the file */

typedef uint32_t epm_vu8 __attribute__((vector_size(32)));
typedef uint16_t epm_vh8 __attribute__((vector_size(16)));

EPM_CLONES void epm_bf16_pack(void *dst, const float *src, int64_t n)
{
    unsigned char *d = dst;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        epm_vu8 u, m, r;
        memcpy(&u, src + j, sizeof u);
        r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        m = (epm_vu8)((u & 0x7fffffffu) > 0x7f800000u);
        r = (r & ~m) | (((u >> 16) | 0x40u) & m);
        epm_vh8 h = __builtin_convertvector(r, epm_vh8);
        memcpy(d + 2 * j, &h, sizeof h);
    }
    for (; j < n; j++) {
        uint16_t h = epm_f32_to_bf16(src[j]);
        memcpy(d + 2 * j, &h, sizeof h);
    }
}

EPM_CLONES void epm_bf16_unpack(float *dst, const void *src, int64_t n)
{
    const unsigned char *s = src;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        epm_vf8 f = epm_bf16x8((const uint16_t *)(const void *)(s + 2 * j)); /* read by memcpy */
        memcpy(dst + j, &f, sizeof f);
    }
    for (; j < n; j++) {
        uint16_t h;
        memcpy(&h, s + 2 * j, sizeof h);
        dst[j] = epm_bf16_to_f32(h);
    }
}

EPM_CLONES void epm_bf16_add(float *acc, const void *src, int64_t n)
{
    const unsigned char *s = src;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        epm_vf8 a;
        memcpy(&a, acc + j, sizeof a);
        a += epm_bf16x8((const uint16_t *)(const void *)(s + 2 * j));
        memcpy(acc + j, &a, sizeof a);
    }
    for (; j < n; j++) {
        uint16_t h;
        memcpy(&h, s + 2 * j, sizeof h);
        acc[j] += epm_bf16_to_f32(h);
    }
}

EPM_CLONES void epm_f8e4m3_pack(void *dst, const float *src, float mul, int64_t n)
{
    typedef uint8_t vb8 __attribute__((vector_size(8)));
    unsigned char *d = dst;
    int64_t j = 0;
    /* epm_f32_to_f8e4m3's branches as masks: NaN, the normal range (round
     * at the third mantissa bit, saturate beyond 448), and below 2^-6 the
     * subnormal steps of 2^-9, rounded to nearest even by adding 2^23 */
    for (; j + 8 <= n; j += 8) {
        epm_vf8 y;
        memcpy(&y, src + j, sizeof y);
        y *= mul;
        epm_vu8 u, a, sub, nan, sat, r, code;
        memcpy(&u, &y, sizeof u);
        a = u & 0x7fffffffu;
        nan = (epm_vu8)(a > 0x7f800000u);
        sub = (epm_vu8)(a < 0x3c800000u);
        r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
        sat = (epm_vu8)((r >> 3) > 135u) | ((epm_vu8)((r >> 3) == 135u) & (epm_vu8)((r & 7u) == 7u));
        code = ((((r >> 3) - 120u) << 3) | (r & 7u)) & ~sat;
        code |= 0x7eu & sat;
        epm_vf8 af, t;
        memcpy(&af, &a, sizeof af);
        t = af * 512.0f + 8388608.0f;
        epm_vu8 q;
        memcpy(&q, &t, sizeof q);
        code = (code & ~sub) | ((q - 0x4b000000u) & sub);
        code = (code & ~nan) | (0x7fu & nan);
        code |= (u >> 24) & 0x80u;
        vb8 b = __builtin_convertvector(code, vb8);
        memcpy(d + j, &b, sizeof b);
    }
    for (; j < n; j++)
        d[j] = epm_f32_to_f8e4m3(src[j] * mul);
}

EPM_CLONES void epm_f8e4m3_unpack(float *dst, const void *src, float mul, int64_t n)
{
    const unsigned char *s = src;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        epm_vf8 f = epm_f8e4m3x8(s + j) * mul; /* cpu_vec.h's: epm_f8e4m3_to_f32's values, NaN included */
        memcpy(dst + j, &f, sizeof f);
    }
    for (; j < n; j++)
        dst[j] = epm_f8e4m3_to_f32(s[j]) * mul;
}

/* the largest magnitude of x [n], NaN passed over as fmaxf does: on the
 * bits, which order non-negative floats as integers */
EPM_CLONES float epm_amax(const float *x, int64_t n)
{
    epm_vu8 m = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        epm_vu8 u, gt;
        memcpy(&u, x + j, sizeof u);
        u &= 0x7fffffffu;
        u &= ~(epm_vu8)(u > 0x7f800000u);
        gt = (epm_vu8)(u > m);
        m = (m & ~gt) | (u & gt);
    }
    uint32_t best = 0;
    for (int k = 0; k < 8; k++)
        best = m[k] > best ? m[k] : best;
    float amax;
    memcpy(&amax, &best, sizeof amax);
    for (; j < n; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    return amax;
}

float epm_fp8_block_put(void *codes, const float *x, int64_t n)
{
    float amax = epm_amax(x, n);
    /* An all-zero block keeps scale 1 (its codes are zeros). The scale is
     * at least FLT_MIN: a block of values below 448 x FLT_MIN would
     * otherwise have a subnormal or zero scale whose inverse is infinite,
     * and its zeros would come back NaN. A NaN (which fmaxf passes over)
     * stays NaN in its own place; an infinite value makes the scale
     * infinite, its own place NaN and the block's others 0: garbage either
     * way, as float32 arithmetic would spread it. */
    float scale = amax > 0 ? fmaxf(amax, 448.0f * FLT_MIN) / 448.0f : 1.0f;
    epm_f8e4m3_pack(codes, x, 1.0f / scale, n);
    return scale;
}

int epm_fp8_row_blocks(int n) { return (n + EPM_FP8_ROW_BLOCK - 1) / EPM_FP8_ROW_BLOCK; }

int epm_fp8_row_floats(int n) { return (n + 3) / 4 + epm_fp8_row_blocks(n); }

void epm_fp8_row_put(float *row, int n, const float *x)
{
    unsigned char *q = (unsigned char *)row;
    int nb = epm_fp8_row_blocks(n), codes = 4 * ((n + 3) / 4);
    for (int b = 0; b < nb; b++) {
        int j0 = b * EPM_FP8_ROW_BLOCK, j1 = j0 + EPM_FP8_ROW_BLOCK < n ? j0 + EPM_FP8_ROW_BLOCK : n;
        float scale = epm_fp8_block_put(q + j0, x + j0, j1 - j0);
        memcpy(q + codes + 4 * (size_t)b, &scale, sizeof scale);
    }
    memset(q + n, 0, (size_t)(codes - n));
}

void epm_fp8_row_get(const float *row, int n, float *x)
{
    const unsigned char *q = (const unsigned char *)row;
    int nb = epm_fp8_row_blocks(n), codes = 4 * ((n + 3) / 4);
    for (int b = 0; b < nb; b++) {
        int j0 = b * EPM_FP8_ROW_BLOCK, j1 = j0 + EPM_FP8_ROW_BLOCK < n ? j0 + EPM_FP8_ROW_BLOCK : n;
        float scale;
        memcpy(&scale, q + codes + 4 * (size_t)b, sizeof scale);
        epm_f8e4m3_unpack(x + j0, q + j0, scale, j1 - j0);
    }
}
