/* float32 to and from bf16 in bulk: the rows of a bf16 wire
 * (runtime_wire.c) and bench a2a's. Eight values at a time on GCC vectors,
 * in the clones of cpu_vec.h: a scalar loop cost more than the bytes it
 * saved on a shared-memory exchange (bench a2a's full16 column). The same
 * rounding as epm_f32_to_bf16: nearest even, NaN kept quiet. Loads and
 * stores go through memcpy: the rows are float arrays. */
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
