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

void epm_fp8_row_put(float *row, int n, const float *x)
{
    unsigned char *q = (unsigned char *)row;
    int nb = (n + EPM_FP8_ROW_BLOCK - 1) / EPM_FP8_ROW_BLOCK, codes = 4 * ((n + 3) / 4);
    for (int b = 0; b < nb; b++) {
        int j0 = b * EPM_FP8_ROW_BLOCK, j1 = j0 + EPM_FP8_ROW_BLOCK < n ? j0 + EPM_FP8_ROW_BLOCK : n;
        float amax = 0;
        for (int j = j0; j < j1; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        /* An all-zero block keeps scale 1 (its codes are zeros). The
         * scale is at least FLT_MIN: a block of values below 448 x FLT_MIN
         * would otherwise have a subnormal or zero scale whose inverse is
         * infinite, and its zeros would come back NaN. A NaN (which fmaxf
         * passes over) stays NaN in its own place; an infinite value makes
         * the scale infinite, its own place NaN and the block's others 0:
         * garbage either way, as float32 arithmetic would spread it. */
        float scale = amax > 0 ? fmaxf(amax, 448.0f * FLT_MIN) / 448.0f : 1.0f, inv = 1.0f / scale;
        for (int j = j0; j < j1; j++)
            q[j] = epm_f32_to_f8e4m3(x[j] * inv);
        memcpy(q + codes + 4 * (size_t)b, &scale, sizeof scale);
    }
    memset(q + n, 0, (size_t)(codes - n));
}

void epm_fp8_row_get(const float *row, int n, const float *lut, float *x)
{
    const unsigned char *q = (const unsigned char *)row;
    int nb = (n + EPM_FP8_ROW_BLOCK - 1) / EPM_FP8_ROW_BLOCK, codes = 4 * ((n + 3) / 4);
    for (int b = 0; b < nb; b++) {
        int j0 = b * EPM_FP8_ROW_BLOCK, j1 = j0 + EPM_FP8_ROW_BLOCK < n ? j0 + EPM_FP8_ROW_BLOCK : n;
        float scale;
        memcpy(&scale, q + codes + 4 * (size_t)b, sizeof scale);
        for (int j = j0; j < j1; j++)
            x[j] = lut[q[j]] * scale;
    }
}
