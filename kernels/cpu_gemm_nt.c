/* y = x . w^T for few rows of x, the weight read in place (cpu_gemm_nt.h).
 *
 * Blocking: the input rows are packed once per call, in blocks of KC along k
 * and of 4 rows, each 16-wide step of k holding the 4 rows' values side by
 * side, so that the kernel reads one sequential stream (reading 4 rows of x
 * in place ran at 0.6-0.75 of this: 4 short strided streams per tile). For
 * each k-block, each thread walks its share of the output features a tile at
 * a time (4 weight rows with AVX-512, 3 with AVX2) and, for each, every
 * 4-row block of x: the tile's weight rows (4 x 4 KiB) stay in L1 while the
 * k-block of packed x (at 128 rows, 512 KiB) stays in L2, and the weight is
 * read from memory once per pass of up to 256 rows. A tile keeps 4 x NR vector accumulators along k and
 * folds them into y once per k-block: with AVX-512, 16 vectors to 16 sums in
 * one transposing tree (5-10% faster than 16 separate reductions). KC = 1024
 * measured best of 512, 768, 1024 and 2048 (2048 no longer fits L1).
 *
 * Weights held in a format no tile reads (FP8) come through a decoding
 * callback instead: for each k-block each thread decodes its features
 * DEC_ROWS at a time into its own buffer (in L2 beside the x block) and runs
 * the float32 tiles on that. Decoding a whole FP8 matrix to float32 first
 * cost 8 more bytes of memory traffic per weight (bench/README.md). */
#include "cpu_gemm_nt.h"

#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "cpu_omp.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EPM_GEMM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

enum {
    KC = 1024,               /* k per block (a multiple of KV) for passes of up to KC_ROWS rows ... */
    KC_ROWS = 128,
    KC_WIDE = 512,           /* ... and for more, up to PASS_ROWS: the k-block of x stays at 512 KiB */
    PASS_ROWS = 256,         /* rows per pass over the weight */
    KV = 16,                 /* k per packed step */
    MR = 4,                  /* rows per packed block and per tile */
    DEC_ROWS = 48,           /* weight rows decoded at a time (a multiple of 4 and 3): 192 KiB a k-block */
    DEC_LD = KC + 16,        /* their row stride: rows 4 KiB apart would share the caches' sets */
    PAR_MIN_WORK = 1 << 20   /* multiply-adds below which one thread does it all */
};

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* rows per pass: m split evenly into passes of at most PASS_ROWS */
static int64_t pass_rows(int64_t m)
{
    int64_t passes = (m + PASS_ROWS - 1) / PASS_ROWS;
    return passes ? round_up((m + passes - 1) / passes, MR) : 0;
}

/* plus ALIGN_SLACK floats to start the packed rows on a cache line: a
 * 64-byte load that straddles two lines costs two (the kernel ran at 0.75 of
 * itself on a 16-byte-aligned buffer) */
enum { ALIGN_SLACK = 64 / sizeof(float) - 1 };

size_t epm_cpu_gemm_nt_pack_floats(int64_t m, int k)
{
    return m > 0 ? (size_t)(pass_rows(m) * round_up(k, KV)) + ALIGN_SLACK : 0;
}

/* Block b (rows 4b..4b+3) of the k-block at k0 (kc wide) into dst: per
 * 16-step of k, the 4 rows' 16 values one after another; rows past m and k
 * past the block are zeros, so the kernels need no row or k tails on x. */
static void pack_block(const float *x, int64_t m, int k, int k0, int kc, int64_t b, float *dst)
{
    int kcp = (int)round_up(kc, KV);
    for (int kk = 0; kk < kcp; kk += KV)
        for (int i = 0; i < MR; i++) {
            float *d = dst + (int64_t)kk * MR + i * KV;
            int64_t row = b * MR + i;
            int have = row < m ? (kc - kk < KV ? kc - kk : KV) : 0;
            if (have > 0)
                memcpy(d, x + row * k + k0 + kk, (size_t)have * sizeof *d);
            if (have < KV)
                memset(d + have, 0, (size_t)(KV - have) * sizeof *d);
        }
}

/* One tile: rows of y at yt (stride ldy, mv valid of 4), nr output features
 * from weight rows at wt (stride ldw elements, float32 or bf16 by the tile),
 * over the packed x block xp of kc k; first = the k-block at 0, which stores
 * rather than adds. */
typedef void (*tile_fn)(const float *xp, int kc, const void *wt, int64_t ldw, float *yt, int64_t ldy, int mv,
                        int first);

/* gcc 12 at -O3 does not see the _mm*_storeu_ps before each put fill sums
 * (clang has no such warning, and -Werror refuses the unknown name) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
static inline void put(float *y, int64_t ldy, int mv, int nr, const float *sums, int first)
{
    for (int i = 0; i < mv; i++)
        for (int j = 0; j < nr; j++)
            y[i * ldy + j] = first ? sums[i * nr + j] : y[i * ldy + j] + sums[i * nr + j];
}

/* The last have (< 16) weights of a row, zero-padded to a step: a step's
 * worth is not read, so nothing past the weight's end is touched. */
static inline void tail_copy(const void *w, int es, int have, void *step)
{
    memset(step, 0, (size_t)KV * es);
    memcpy(step, w, (size_t)have * es);
}

#ifdef EPM_GEMM_X86
#define T512 __attribute__((target("avx512f,fma")))
#define T256 __attribute__((target("avx2,fma")))

/* 16 weights as float32: loaded, or bf16 widened (a bf16 value is the top
 * half of its float32, so the widening is exact). */
T512 static inline __attribute__((always_inline)) __m512 w512_f32(const float *p) { return _mm512_loadu_ps(p); }
T512 static inline __attribute__((always_inline)) __m512 w512_bf16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
T256 static inline __attribute__((always_inline)) __m256 w256_f32(const float *p) { return _mm256_loadu_ps(p); }
T256 static inline __attribute__((always_inline)) __m256 w256_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 16 vectors to their 16 sums: lane 4 i + j of the result is the sum of
 * the (4 j + i)-th argument. Four levels, each adding two halves of every
 * pair; by value, so that nothing goes through the stack (through an array
 * the fold cost 10% of the kernel). */
#define FOLD1(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE))
#define FOLD2(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD))
#define FOLD3(a, b) _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
#define FOLD4(a, b) _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE))
T512 static inline __attribute__((always_inline)) __m512
tree16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5, __m512 v6, __m512 v7, __m512 v8, __m512 v9,
       __m512 v10, __m512 v11, __m512 v12, __m512 v13, __m512 v14, __m512 v15)
{
    __m512 r0 = FOLD1(v0, v1), r1 = FOLD1(v2, v3), r2 = FOLD1(v4, v5), r3 = FOLD1(v6, v7), r4 = FOLD1(v8, v9),
           r5 = FOLD1(v10, v11), r6 = FOLD1(v12, v13), r7 = FOLD1(v14, v15);
    __m512 s0 = FOLD2(r0, r1), s1 = FOLD2(r2, r3), s2 = FOLD2(r4, r5), s3 = FOLD2(r6, r7);
    return FOLD4(FOLD3(s0, s1), FOLD3(s2, s3));
}

/* y rows of a full 4 x 4 tile from tree16's lanes (row i: lanes 4 i .. 4 i + 3) */
T512 static inline __attribute__((always_inline)) void put44(float *yt, int64_t ldy, __m512 t, int first)
{
    __m128 r0 = _mm512_extractf32x4_ps(t, 0), r1 = _mm512_extractf32x4_ps(t, 1);
    __m128 r2 = _mm512_extractf32x4_ps(t, 2), r3 = _mm512_extractf32x4_ps(t, 3);
    if (!first) {
        r0 = _mm_add_ps(r0, _mm_loadu_ps(yt)), r1 = _mm_add_ps(r1, _mm_loadu_ps(yt + ldy));
        r2 = _mm_add_ps(r2, _mm_loadu_ps(yt + 2 * ldy)), r3 = _mm_add_ps(r3, _mm_loadu_ps(yt + 3 * ldy));
    }
    _mm_storeu_ps(yt, r0), _mm_storeu_ps(yt + ldy, r1);
    _mm_storeu_ps(yt + 2 * ldy, r2), _mm_storeu_ps(yt + 3 * ldy, r3);
}

/* The 4 x 4 step: 4 packed x vectors meet each of 4 weight vectors (the
 * accumulators are named, not an array, so that they stay in registers). */
#define STEP44(W, w0, w1, w2, w3)                                                                                  \
    do {                                                                                                           \
        __m512 x0 = _mm512_loadu_ps(xp), x1 = _mm512_loadu_ps(xp + 16), x2 = _mm512_loadu_ps(xp + 32),             \
               x3 = _mm512_loadu_ps(xp + 48);                                                                      \
        __m512 wv = W(w0);                                                                                         \
        a00 = _mm512_fmadd_ps(x0, wv, a00), a10 = _mm512_fmadd_ps(x1, wv, a10);                                    \
        a20 = _mm512_fmadd_ps(x2, wv, a20), a30 = _mm512_fmadd_ps(x3, wv, a30);                                    \
        wv = W(w1);                                                                                                \
        a01 = _mm512_fmadd_ps(x0, wv, a01), a11 = _mm512_fmadd_ps(x1, wv, a11);                                    \
        a21 = _mm512_fmadd_ps(x2, wv, a21), a31 = _mm512_fmadd_ps(x3, wv, a31);                                    \
        wv = W(w2);                                                                                                \
        a02 = _mm512_fmadd_ps(x0, wv, a02), a12 = _mm512_fmadd_ps(x1, wv, a12);                                    \
        a22 = _mm512_fmadd_ps(x2, wv, a22), a32 = _mm512_fmadd_ps(x3, wv, a32);                                    \
        wv = W(w3);                                                                                                \
        a03 = _mm512_fmadd_ps(x0, wv, a03), a13 = _mm512_fmadd_ps(x1, wv, a13);                                    \
        a23 = _mm512_fmadd_ps(x2, wv, a23), a33 = _mm512_fmadd_ps(x3, wv, a33);                                    \
    } while (0)

/* The 4 x 1 step (the features past the last whole tile). */
#define STEP41(W, w0)                                                                                              \
    do {                                                                                                           \
        __m512 wv = W(w0);                                                                                         \
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp), wv, a0), a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 16), wv, a1); \
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 32), wv, a2);                                                    \
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 48), wv, a3);                                                    \
    } while (0)

/* The AVX-512 tiles over weights of type WT, loaded by W: 4 x 4 and 4 x 1. */
#define TILES_512(WT, W)                                                                                           \
    T512 static void tile44_512_##WT(const float *xp, int kc, const void *wt, int64_t ldw, float *yt, int64_t ldy, \
                                     int mv, int first)                                                            \
    {                                                                                                              \
        const WT *w0 = wt, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;                                         \
        __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,        \
               a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;  \
        int k = 0;                                                                                                 \
        for (; k + KV <= kc; k += KV, xp += MR * KV)                                                               \
            STEP44(W, w0 + k, w1 + k, w2 + k, w3 + k);                                                             \
        if (k < kc) {                                                                                              \
            WT s0[KV], s1[KV], s2[KV], s3[KV];                                                                     \
            tail_copy(w0 + k, sizeof(WT), kc - k, s0), tail_copy(w1 + k, sizeof(WT), kc - k, s1);                  \
            tail_copy(w2 + k, sizeof(WT), kc - k, s2), tail_copy(w3 + k, sizeof(WT), kc - k, s3);                  \
            STEP44(W, s0, s1, s2, s3);                                                                             \
        }                                                                                                          \
        __m512 t = tree16(a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32, a03, a13, a23, a33);         \
        if (mv == MR) {                                                                                            \
            put44(yt, ldy, t, first);                                                                              \
            return;                                                                                                \
        }                                                                                                          \
        float sums[16];                                                                                            \
        _mm512_storeu_ps(sums, t);                                                                                 \
        put(yt, ldy, mv, 4, sums, first);                                                                          \
    }                                                                                                              \
    T512 static void tile41_512_##WT(const float *xp, int kc, const void *wt, int64_t ldw, float *yt, int64_t ldy, \
                                     int mv, int first)                                                            \
    {                                                                                                              \
        (void)ldw;                                                                                                 \
        const WT *w0 = wt;                                                                                         \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                                \
        int k = 0;                                                                                                 \
        for (; k + KV <= kc; k += KV, xp += MR * KV)                                                               \
            STEP41(W, w0 + k);                                                                                     \
        if (k < kc) {                                                                                              \
            WT s0[KV];                                                                                             \
            tail_copy(w0 + k, sizeof(WT), kc - k, s0);                                                             \
            STEP41(W, s0);                                                                                         \
        }                                                                                                          \
        const float sums[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),       \
                               _mm512_reduce_add_ps(a3)};                                                          \
        put(yt, ldy, mv, 1, sums, first);                                                                          \
    }

/* AVX2: 16 vector registers allow 4 rows x 3 weight rows: 12 accumulators,
 * 3 weight vectors and 1 x vector live (4 x 2, with 8 accumulators, kept too
 * few FMAs in flight: 0.65-0.7 of OpenBLAS's AVX2 SGEMM). Each 16-step in two
 * halves of 8. */
#define HALF43(W, w0, w1, w2, o)                                                                                   \
    do {                                                                                                           \
        __m256 v0 = W((w0) + (o)), v1 = W((w1) + (o)), v2 = W((w2) + (o)), xv;                                     \
        xv = _mm256_loadu_ps(xp + (o));                                                                            \
        a00 = _mm256_fmadd_ps(xv, v0, a00), a01 = _mm256_fmadd_ps(xv, v1, a01), a02 = _mm256_fmadd_ps(xv, v2, a02); \
        xv = _mm256_loadu_ps(xp + 16 + (o));                                                                       \
        a10 = _mm256_fmadd_ps(xv, v0, a10), a11 = _mm256_fmadd_ps(xv, v1, a11), a12 = _mm256_fmadd_ps(xv, v2, a12); \
        xv = _mm256_loadu_ps(xp + 32 + (o));                                                                       \
        a20 = _mm256_fmadd_ps(xv, v0, a20), a21 = _mm256_fmadd_ps(xv, v1, a21), a22 = _mm256_fmadd_ps(xv, v2, a22); \
        xv = _mm256_loadu_ps(xp + 48 + (o));                                                                       \
        a30 = _mm256_fmadd_ps(xv, v0, a30), a31 = _mm256_fmadd_ps(xv, v1, a31), a32 = _mm256_fmadd_ps(xv, v2, a32); \
    } while (0)
#define HALF41(W, w0, o)                                                                                           \
    do {                                                                                                           \
        __m256 wv = W((w0) + (o));                                                                                 \
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + (o)), wv, a0);                                                   \
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 16 + (o)), wv, a1);                                              \
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 32 + (o)), wv, a2);                                              \
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 48 + (o)), wv, a3);                                              \
    } while (0)

/* [sum a, sum b, sum c, sum d] */
T256 static inline __m128 sum4_256(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

#define TILES_256(WT, W)                                                                                           \
    T256 static void tile43_256_##WT(const float *xp, int kc, const void *wt, int64_t ldw, float *yt, int64_t ldy, \
                                     int mv, int first)                                                            \
    {                                                                                                              \
        const WT *w0 = wt, *w1 = w0 + ldw, *w2 = w1 + ldw;                                                         \
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00, a20 = a00,        \
               a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;                                              \
        int k = 0;                                                                                                 \
        for (; k + KV <= kc; k += KV, xp += MR * KV) {                                                             \
            HALF43(W, w0 + k, w1 + k, w2 + k, 0);                                                                  \
            HALF43(W, w0 + k, w1 + k, w2 + k, 8);                                                                  \
        }                                                                                                          \
        if (k < kc) {                                                                                              \
            WT s0[KV], s1[KV], s2[KV];                                                                             \
            tail_copy(w0 + k, sizeof(WT), kc - k, s0), tail_copy(w1 + k, sizeof(WT), kc - k, s1);                  \
            tail_copy(w2 + k, sizeof(WT), kc - k, s2);                                                             \
            HALF43(W, s0, s1, s2, 0);                                                                              \
            HALF43(W, s0, s1, s2, 8);                                                                              \
        }                                                                                                          \
        /* sums row by row: [a00 a01 a02 a10] [a11 a12 a20 a21] [a22 a30 a31 a32] */                               \
        float sums[12];                                                                                            \
        _mm_storeu_ps(sums, sum4_256(a00, a01, a02, a10));                                                         \
        _mm_storeu_ps(sums + 4, sum4_256(a11, a12, a20, a21));                                                     \
        _mm_storeu_ps(sums + 8, sum4_256(a22, a30, a31, a32));                                                     \
        put(yt, ldy, mv, 3, sums, first);                                                                          \
    }                                                                                                              \
    T256 static void tile41_256_##WT(const float *xp, int kc, const void *wt, int64_t ldw, float *yt, int64_t ldy, \
                                     int mv, int first)                                                            \
    {                                                                                                              \
        (void)ldw;                                                                                                 \
        const WT *w0 = wt;                                                                                         \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                                \
        int k = 0;                                                                                                 \
        for (; k + KV <= kc; k += KV, xp += MR * KV) {                                                             \
            HALF41(W, w0 + k, 0);                                                                                  \
            HALF41(W, w0 + k, 8);                                                                                  \
        }                                                                                                          \
        if (k < kc) {                                                                                              \
            WT s0[KV];                                                                                             \
            tail_copy(w0 + k, sizeof(WT), kc - k, s0);                                                             \
            HALF41(W, s0, 0);                                                                                      \
            HALF41(W, s0, 8);                                                                                      \
        }                                                                                                          \
        float sums[4];                                                                                             \
        _mm_storeu_ps(sums, sum4_256(a0, a1, a2, a3));                                                             \
        put(yt, ldy, mv, 1, sums, first);                                                                          \
    }

typedef uint16_t bf16;
TILES_512(float, w512_f32)
TILES_512(bf16, w512_bf16)
TILES_256(float, w256_f32)
TILES_256(bf16, w256_bf16)

/* A weight type's tiles for an instruction set. */
typedef struct tiles {
    tile_fn tile, one;
    int nr, es; /* features per tile, bytes per weight */
} tiles;

static tiles tiles_for(epm_cpu_isa isa, int bf16_weights)
{
    if (isa == EPM_CPU_ISA_AVX512)
        return bf16_weights ? (tiles){tile44_512_bf16, tile41_512_bf16, 4, 2}
                            : (tiles){tile44_512_float, tile41_512_float, 4, 4};
    return bf16_weights ? (tiles){tile43_256_bf16, tile41_256_bf16, 3, 2}
                        : (tiles){tile43_256_float, tile41_256_float, 3, 4};
}
#endif

epm_cpu_isa epm_cpu_isa_best(void)
{
#ifdef EPM_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
        return EPM_CPU_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return EPM_CPU_ISA_AVX2;
#endif
    return EPM_CPU_ISA_OFF;
}

int epm_cpu_x86_feats(void)
{
#ifdef EPM_GEMM_X86
    /* cpuid, not __builtin_cpu_supports: clang 14 does not know "f16c" */
    static int feats = -1;
    int have = __atomic_load_n(&feats, __ATOMIC_RELAXED);
    if (have < 0) {
        unsigned a, b, c, d;
        have = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) ? EPM_X86_F16C : 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX512BW))
            have |= EPM_X86_AVX512BW;
        __atomic_store_n(&feats, have, __ATOMIC_RELAXED);
    }
    return have;
#else
    return 0;
#endif
}

const char *epm_cpu_isa_name(epm_cpu_isa isa)
{
    return isa == EPM_CPU_ISA_AVX512 ? "avx512" : isa == EPM_CPU_ISA_AVX2 ? "avx2" : "off";
}

/* 0: *out set; 1: not a known value; 2: more than the CPU has */
static int parse_isa(const char *v, epm_cpu_isa best, epm_cpu_isa *out)
{
    if (!v || !*v || !strcmp(v, "auto")) {
        *out = best;
        return 0;
    }
    epm_cpu_isa want;
    if (!strcmp(v, "off"))
        want = EPM_CPU_ISA_OFF;
    else if (!strcmp(v, "avx2"))
        want = EPM_CPU_ISA_AVX2;
    else if (!strcmp(v, "avx512"))
        want = EPM_CPU_ISA_AVX512;
    else
        return 1;
    if (want > best)
        return 2;
    *out = want;
    return 0;
}

epm_status epm_cpu_isa_from_env(epm_cpu_isa *out)
{
    const char *v = getenv("EPM_CPU_ISA");
    epm_cpu_isa best = epm_cpu_isa_best();
    switch (parse_isa(v, best, out)) {
    case 0: return EPM_OK;
    case 1:
        return epm_fail(EPM_ERR_INVALID_ARG, "environment EPM_CPU_ISA = '%s': expected auto, avx512, avx2 or off",
                        v);
    default:
        return epm_fail(EPM_ERR_UNSUPPORTED, "environment EPM_CPU_ISA = '%s': this CPU runs at most '%s'", v,
                        epm_cpu_isa_name(best));
    }
}

static int cached = -1; /* every thread works out the same answer; a race only repeats it */

void epm_cpu_isa_force(epm_cpu_isa isa)
{
    epm_cpu_isa best = epm_cpu_isa_best();
    __atomic_store_n(&cached, (int)(isa > best ? best : isa), __ATOMIC_RELAXED);
}

epm_cpu_isa epm_cpu_isa_active(void)
{
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        epm_cpu_isa isa = EPM_CPU_ISA_OFF;
        if (parse_isa(getenv("EPM_CPU_ISA"), epm_cpu_isa_best(), &isa) != 0)
            isa = EPM_CPU_ISA_OFF;
        c = (int)isa;
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return (epm_cpu_isa)c;
}

#ifdef EPM_GEMM_X86
/* How a pass gets its weight rows: in place (dec NULL), or decoded by dec a
 * k-block of DEC_ROWS rows at a time into the thread's wbuf. */
typedef struct wsrc {
    const void *w;
    epm_gemm_nt_decode_fn dec;
    float *wbuf; /* DEC_ROWS x DEC_LD floats per thread */
} wsrc;

static void pass_tiles(const tiles *tl, const float *xb, int64_t blocks, int64_t step, int kc, const char *wt,
                       int64_t ldw, int64_t c, int64_t c1, int64_t m, float *y, int n, int first)
{
    while (c < c1) {
        int whole = c + tl->nr <= c1;
        for (int64_t b = 0; b < blocks; b++)
            (whole ? tl->tile : tl->one)(xb + b * step, kc, wt, ldw, y + b * MR * n + c, n,
                                         (int)(m - b * MR < MR ? m - b * MR : MR), first);
        wt += (whole ? tl->nr : 1) * ldw * tl->es;
        c += whole ? tl->nr : 1;
    }
}

/* Rows [0, m) of one pass: x and y point at the pass's first row. */
static void gemm_pass(const tiles *tl, int nt, const float *x, int64_t m, int k, const wsrc *ws, int n, float *y,
                      float *pack)
{
    const int kcb = m <= KC_ROWS ? KC : KC_WIDE, nr = tl->nr;
    const int64_t blocks = round_up(m, MR) / MR, kblocks = (k + kcb - 1) / kcb;
    const char *wb = ws->w;
    (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
    {
EPM_OMP("omp for schedule(static)")
        for (int64_t q = 0; q < kblocks * blocks; q++) {
            int k0 = (int)(q / blocks) * kcb, kc = k - k0 < kcb ? k - k0 : kcb;
            int64_t b = q % blocks;
            pack_block(x, m, k, k0, kc, b, pack + blocks * MR * k0 + b * MR * round_up(kc, KV));
        }
        /* whole tiles split evenly; the last thread's share ends in the features past the last whole tile */
        int64_t c0, c1;
        epm_omp_share(n, nr, &c0, &c1);
        for (int k0 = 0; k0 < k; k0 += kcb) {
            int kc = k - k0 < kcb ? k - k0 : kcb, first = k0 == 0;
            const float *xb = pack + blocks * MR * k0;
            int64_t step = MR * round_up(kc, KV);
            if (!ws->dec) {
                pass_tiles(tl, xb, blocks, step, kc, wb + (c0 * k + k0) * tl->es, k, c0, c1, m, y, n, first);
                continue;
            }
            /* DEC_ROWS is a multiple of every tile's rows: the chunks split no whole tile */
            float *buf = ws->wbuf + (int64_t)epm_omp_me() * DEC_ROWS * DEC_LD;
            for (int64_t cc = c0; cc < c1; cc += DEC_ROWS) {
                int64_t ce = c1 - cc < DEC_ROWS ? c1 : cc + DEC_ROWS;
                ws->dec(ws->w, cc, ce, k0, k0 + kc, buf, DEC_LD);
                pass_tiles(tl, xb, blocks, step, kc, (const char *)buf, DEC_LD, cc, ce, m, y, n, first);
            }
        }
    }
}

static void gemm(epm_cpu_isa isa, int bf16_weights, const float *x, int64_t m, int k, const wsrc *ws, int n,
                 float *y, float *pack, int max_threads)
{
    if (m <= 0 || n <= 0 || k <= 0 || isa == EPM_CPU_ISA_OFF)
        return;
    const tiles tl = tiles_for(isa, bf16_weights);
    int nt = epm_omp_threads_for(m * n * (int64_t)k, PAR_MIN_WORK);
    if (nt > n / tl.nr)
        nt = n / tl.nr > 0 ? n / tl.nr : 1;
    if (max_threads > 0 && nt > max_threads)
        nt = max_threads;
    const int64_t per = pass_rows(m);
    pack = (float *)(((uintptr_t)pack + 63) & ~(uintptr_t)63);
    for (int64_t r0 = 0; r0 < m; r0 += per)
        gemm_pass(&tl, nt, x + r0 * k, m - r0 < per ? m - r0 : per, k, ws, n, y + r0 * n, pack);
}
#endif

size_t epm_cpu_gemm_nt_decode_floats(int threads)
{
    return (size_t)(threads > 0 ? threads : 1) * DEC_ROWS * DEC_LD;
}

void epm_cpu_gemm_nt_decoded(epm_cpu_isa isa, const float *x, int64_t m, int k, epm_gemm_nt_decode_fn dec,
                             const void *w, int n, float *y, float *pack, float *wbuf, int threads)
{
#ifdef EPM_GEMM_X86
    const wsrc ws = {w, dec, wbuf};
    gemm(isa, 0, x, m, k, &ws, n, y, pack, threads > 0 ? threads : 1);
#else
    (void)isa, (void)x, (void)m, (void)k, (void)dec, (void)w, (void)n, (void)y, (void)pack, (void)wbuf;
    (void)threads;
#endif
}

void epm_cpu_gemm_nt(epm_cpu_isa isa, const float *x, int64_t m, int k, const float *w, int n, float *y,
                     float *pack)
{
#ifdef EPM_GEMM_X86
    const wsrc ws = {w, NULL, NULL};
    gemm(isa, 0, x, m, k, &ws, n, y, pack, 0);
#else
    (void)isa, (void)x, (void)m, (void)k, (void)w, (void)n, (void)y, (void)pack;
#endif
}

void epm_cpu_gemm_nt_w16(epm_cpu_isa isa, const float *x, int64_t m, int k, const uint16_t *w, int n, float *y,
                         float *pack)
{
#ifdef EPM_GEMM_X86
    const wsrc ws = {w, NULL, NULL};
    gemm(isa, 1, x, m, k, &ws, n, y, pack, 0);
#else
    (void)isa, (void)x, (void)m, (void)k, (void)w, (void)n, (void)y, (void)pack;
#endif
}
