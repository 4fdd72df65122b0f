/* Conversions between float32 and the 16-bit float formats of checkpoints
 * (internal). Round to nearest even, as PyTorch does. */
#ifndef EPM_HALF_H
#define EPM_HALF_H

#include <stdint.h>
#include <string.h>

static inline float epm_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t epm_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* In bulk (dist/rows_lowp.c): dst [n] bf16 = src [n] rounded as above;
 * dst [n] = src [n] bf16 widened; acc [n] += src [n] bf16 widened. The bf16
 * side is any memory (a float row's bytes, for one). */
void epm_bf16_pack(void *dst, const float *src, int64_t n);
void epm_bf16_unpack(float *dst, const void *src, int64_t n);
void epm_bf16_add(float *acc, const void *src, int64_t n);
/* An fp8 dispatch row (DeepEP's): x [n] as float8 e4m3 codes (n bytes,
 * zero-padded to a multiple of 4) then one float32 scale per block of
 * EPM_FP8_ROW_BLOCK values (the block's largest magnitude over 448, at
 * least FLT_MIN, or 1 for an all-zero block), code = e4m3(x * (1 /
 * scale)), nearest even;
 * the row holds epm_fp8_row_floats(n) = n / 4 rounded up + blocks floats
 * (epm_fp8_row_blocks). _get: x = e4m3 value * scale. */
enum { EPM_FP8_ROW_BLOCK = 128 };
/* dst [n] = epm_f32_to_f8e4m3(src [n] * mul), and dst [n] =
 * epm_f8e4m3_to_f32(src [n]) * mul, eight at a time */
void epm_f8e4m3_pack(void *dst, const float *src, float mul, int64_t n);
void epm_f8e4m3_unpack(float *dst, const void *src, float mul, int64_t n);
/* the largest magnitude of x [n], NaN passed over as fmaxf does */
float epm_amax(const float *x, int64_t n);
/* codes [n] = x [n] in e4m3 scaled by one block scale, returned: the
 * block's largest magnitude over 448, at least FLT_MIN, 1 for an all-zero
 * block (the fp8 wire's blocks, the fp8 K/V cache's head rows) */
float epm_fp8_block_put(void *codes, const float *x, int64_t n);
int epm_fp8_row_blocks(int n);
int epm_fp8_row_floats(int n);
void epm_fp8_row_put(float *row, int n, const float *x);
void epm_fp8_row_get(const float *row, int n, float *x);

static inline float epm_f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31u, m = h & 1023u, u;
    if (e == 0 && m == 0) {
        u = s;
    } else if (e == 0) { /* subnormal: shift the mantissa up to an implicit 1 */
        e = 127 - 15 + 1;
        while (!(m & 1024u)) {
            m <<= 1;
            e--;
        }
        u = s | (e << 23) | ((m & 1023u) << 13);
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e - 15 + 127) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t epm_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t s = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(s | 0x7e00u);
    if (a >= 0x477ff000u) /* rounds to beyond the largest half: infinity */
        return (uint16_t)(s | 0x7c00u);
    if (a < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (a < 0x33000000u)
            return (uint16_t)s;
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        q += rem > half || (rem == half && (q & 1));
        return (uint16_t)(s | q);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1);
    return (uint16_t)(s | ((r - 0x38000000u) >> 13));
}

/* float8 e4m3fn (DeepSeek-V3's and Qwen3's FP8 checkpoints): bias 7, three
 * mantissa bits, no infinities; 0x7f and 0xff are NaN. */
static inline float epm_f8e4m3_to_f32(uint8_t b)
{
    uint32_t s = (uint32_t)(b >> 7) << 31, e = (b >> 3) & 15u, m = b & 7u;
    float f;
    if (e == 15 && m == 7) {
        uint32_t u = s | 0x7fc00000u;
        memcpy(&f, &u, 4);
    } else if (e == 0) {
        f = (float)m * (1.0f / 512.0f); /* subnormal: m / 8 * 2^-6, exact */
        if (s)
            f = -f;
    } else {
        uint32_t u = s | ((e - 7 + 127) << 23) | (m << 20);
        memcpy(&f, &u, 4);
    }
    return f;
}

/* Round to nearest even; beyond the largest finite value (448) saturates
 * rather than giving NaN (callers scale into range first). */
static inline uint8_t epm_f32_to_f8e4m3(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t s = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint8_t)(s | 0x7f);
    if (a < 0x3c800000u) { /* below 2^-6: subnormal steps of 2^-9 */
        float x = 0;
        memcpy(&x, &a, 4);
        x *= 512.0f; /* exact: a power of two */
        uint32_t q = (uint32_t)x;
        float rem = x - (float)q;
        q += rem > 0.5f || (rem == 0.5f && (q & 1));
        return (uint8_t)(s | q); /* q == 8 is the smallest normal, 0x08 */
    }
    uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1)) >> 20; /* exponent and 3 mantissa bits */
    int e = (int)(r >> 3) - 127 + 7;
    if (e > 15 || (e == 15 && (r & 7) == 7))
        return (uint8_t)(s | 0x7e);
    return (uint8_t)(s | ((uint32_t)e << 3) | (r & 7));
}

#endif
