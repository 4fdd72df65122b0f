/* Causal grouped-query attention on the CPU, over a float32, a bf16 or an
 * fp8 K/V cache (half or about a quarter of the bytes to stream in
 * decoding; widened as read, float32 arithmetic every way; an fp8 head
 * row's scale multiplies its dot products and its weight in the value sums
 * once, not each value). Why not the
 * reference: it is the oracle, in double with two passes over the keys and
 * one thread, and decoding at long contexts spends its time here (2048
 * positions, 16 heads of 128: about 8M double multiply-adds per token and
 * layer). Here each query row's positions are cut into ranges of RANGE, the
 * (row, range) pieces split over OpenMP's threads (the cut and the merge
 * order do not depend on the thread count: the same bits on 1 thread or
 * 64, as the runtime's ranks need), and each piece walks its
 * positions in order, every head at each position: a cache row holds all KV
 * heads side by side, so the caches stream from memory once, in order (one
 * kv head at a time would stride 4 KB between positions, a page per row: a
 * third of the speed at 8192 positions). Under GQA each cached vector is
 * loaded (and, from a bf16 cache, widened) once for its group of query
 * heads, and the values' products go into each output vector four
 * positions at a time, where a head at a time made the group read the row
 * and store its output once per head and position (Mixtral's heads: 1.2-1.5x,
 * bench attention). Scores go block by block through
 * an online softmax (running max, sum and unnormalised output per head,
 * rescaled when the max grows); the pieces of a row are merged at the end,
 * as flash-decoding does. The sums are float32 in vectors of 8 (the
 * reference's double sums differ by float rounding: the tests' 1e-5). With
 * probs wanted (A-MoD's scores) a second pass writes them, over (row, kv
 * head) pieces that keep every score; the output is the first pass's either
 * way, so that MoD at capacity 1 is the same bits as no MoD. */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "cpu_gemm_nt.h"
#include "cpu_omp.h"
#include "half.h"
#include "kcheck.h"
#include "cpu_vec.h" /* last: its settings hold for the rest of the file */

/* F16C's fp8 kernels: GCC's target pragmas, and only where the integer
 * copy has clones that fuse multiply-adds as the F16C copy does (else the
 * two would round differently) */
#if defined(__x86_64__) && defined(EPM_CLONES_ON)
#define EPM_ATT_X86 1
#include <immintrin.h>
#endif


enum { PAR_MIN_WORK = 1 << 15 }; /* multiply-adds below which one thread does it all */

typedef epm_vf8 v8;

static inline __attribute__((always_inline)) v8 ld8(const float *p)
{
    v8 f;
    memcpy(&f, p, sizeof f);
    return f;
}

#define AI __attribute__((always_inline))

/* o[j] += w * v[j] (the merge of a row's pieces) */
static inline AI void axpy(float *o, float w, const float *v, int d)
{
    int j = 0;
    for (; j + 8 <= d; j += 8) {
        v8 x = ld8(o + j) + w * ld8(v + j);
        memcpy(o + j, &x, sizeof x);
    }
    for (; j < d; j++)
        o[j] += w * v[j];
}

/* The cache's element types. An fp8 cache's values are e4m3 codes times a
 * scale per cached head row (sc, [positions][kv heads]): kv8 and kv1 give
 * the codes' values, and each head row's dot products and value sums are
 * multiplied by its scale once (scale_of), not every value. */
enum { KV_F32, KV_BF16, KV_FP8 };

/* the scale of the head row at element i (hd values a row) */
static inline AI float scale_of(const float *sc, int64_t i, int hd) { return sc[i / hd]; }

enum {
    BLOCK = 128, /* positions per step of the online softmax */
    RANGE = 256  /* positions per piece: fixed, so that no result depends on the thread count */
};

/* The kernels with e4m3 codes decoded by bit operations (any CPU) */
#define AN(name) name
#define KV_FP8X8 epm_f8e4m3x8
#define KV_FP8X16(p, a, b) (*(a) = epm_f8e4m3x8(p), *(b) = epm_f8e4m3x8((p) + 8))
#define KV_FP8_MUL 1.0f
#include "cpu_attention_kv.inc"

/* the outer kernels, one per cache dtype (kind a constant in each) over a
 * copy of the bodies (piece_body, kv_head_probs_body), with attributes */
#define PIECE(attr, name, piece_body, kind)                                                                      \
    attr static void name(const float *q, int heads, int group, int hd, const void *kc, const float *ks,         \
                          const void *vc, const float *vs, int kv_heads, int64_t t0, int64_t t1, float scale,    \
                          float *sc, float *m, float *z, float *o)                                               \
    {                                                                                                            \
        piece_body(q, heads, group, hd, kc, ks, vc, vs, kind, kv_heads, t0, t1, scale, sc, m, z, o);             \
    }
#define KV_HEAD_PROBS(attr, name, probs_body, kind)                                                              \
    attr static void name(const float *q, int group, int hd, const void *kc, const float *ks, int kv_heads, int kh, \
                          int64_t len, float scale, float *sc, float *p0, int64_t pstride, int64_t cache_len)    \
    {                                                                                                            \
        probs_body(q, group, hd, kc, ks, kind, kv_heads, kh, len, scale, sc, p0, pstride, cache_len);            \
    }
PIECE(EPM_CLONES, piece_f32, piece, KV_F32)
PIECE(EPM_CLONES, piece_bf16, piece, KV_BF16)
PIECE(EPM_CLONES, piece_fp8, piece, KV_FP8)
KV_HEAD_PROBS(EPM_CLONES, kv_head_probs_f32, kv_head_probs, KV_F32)
KV_HEAD_PROBS(EPM_CLONES, kv_head_probs_bf16, kv_head_probs, KV_BF16)
KV_HEAD_PROBS(EPM_CLONES, kv_head_probs_fp8, kv_head_probs, KV_FP8)

#ifdef EPM_ATT_X86
/* The same kernels for AVX2 CPUs with F16C, whose fp8 copies decode codes
 * with its conversion: an e4m3 code, sign-extended to 16 bits and shifted
 * left by 7 with bit 14 cleared, is the float16 of 2^-8 times its value
 * (subnormal codes included, which vcvtph2ps widens exactly, whatever the
 * MXCSR says); a carry out of bits 7-13 marks the NaN codes, whose bit 14
 * then makes a float16 NaN. The 2^8 goes into the head row's scale. Four
 * integer operations and a conversion per 8 values, where the bit
 * operations take about a dozen (bench attention --kv-dtype fp8). */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
/* up to 16 codes (bytes) as float16 bit patterns, 16 lanes */
static inline AI __m256i f16_of_codes(__m128i bytes)
{
    __m256i x = _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7);
    x = _mm256_and_si256(x, _mm256_set1_epi16((short)0xbf80));
    return _mm256_or_si256(x, _mm256_and_si256(_mm256_add_epi16(x, _mm256_set1_epi16(0x80)), _mm256_set1_epi16(0x4000)));
}

static inline AI v8 fp8x8_f16c(const uint8_t *p)
{
    __m256 f = _mm256_cvtph_ps(_mm256_castsi256_si128(f16_of_codes(_mm_loadl_epi64((const __m128i *)(const void *)p))));
    v8 r;
    memcpy(&r, &f, sizeof r);
    return r;
}

/* 16 codes: the integer steps once for both halves */
static inline AI void fp8x16_f16c(const uint8_t *p, v8 *a, v8 *b)
{
    __m256i x = f16_of_codes(_mm_loadu_si128((const __m128i *)(const void *)p));
    __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(x)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(x, 1));
    memcpy(a, &lo, sizeof lo);
    memcpy(b, &hi, sizeof hi);
}
#define AN(name) name##_f16c
#define KV_FP8X8 fp8x8_f16c
#define KV_FP8X16 fp8x16_f16c
#define KV_FP8_MUL 256.0f
#include "cpu_attention_kv.inc"

PIECE(, piece_fp8_f16c, piece_f16c, KV_FP8)
KV_HEAD_PROBS(, kv_head_probs_fp8_f16c, kv_head_probs_f16c, KV_FP8)
#pragma GCC pop_options

/* the fp8 kernels F16C's conversion decodes for, where the CPU has it and
 * EPM_CPU_ISA allows vector kernels */
static int fp8_f16c(void)
{
    return epm_cpu_isa_active() != EPM_CPU_ISA_OFF && (epm_cpu_x86_feats() & EPM_X86_F16C);
}
#endif


typedef void (*piece_fn)(const float *, int, int, int, const void *, const float *, const void *, const float *, int,
                         int64_t, int64_t, float, float *, float *, float *, float *);
typedef void (*probs_fn)(const float *, int, int, const void *, const float *, int, int, int64_t, float, float *,
                         float *, int64_t, int64_t);

static piece_fn piece_for(int kind)
{
#ifdef EPM_ATT_X86
    if (kind == KV_FP8 && fp8_f16c())
        return piece_fp8_f16c;
#endif
    return kind == KV_FP8 ? piece_fp8 : kind == KV_BF16 ? piece_bf16 : piece_f32;
}

static probs_fn probs_for(int kind)
{
#ifdef EPM_ATT_X86
    if (kind == KV_FP8 && fp8_f16c())
        return kv_head_probs_fp8_f16c;
#endif
    return kind == KV_FP8 ? kv_head_probs_fp8 : kind == KV_BF16 ? kv_head_probs_bf16 : kv_head_probs_f32;
}

/* Without probs: (row, range) pieces, then each row's pieces merged. */
static epm_status by_ranges(const float *q, int64_t n, const int32_t *pos, const void *kc, const float *ks,
                            const void *vc, const float *vs, int kind, int heads, int kv_heads, int hd, float *out,
                            int nt, float scale)
{
    const piece_fn run = piece_for(kind);
    const int group = heads / kv_heads;
    /* C ranges per row, for the longest row (a shorter one leaves some empty) */
    int64_t longest = 1;
    for (int64_t i = 0; i < n; i++)
        longest = (int64_t)pos[i] + 1 > longest ? (int64_t)pos[i] + 1 : longest;
    const int64_t C = (longest + RANGE - 1) / RANGE, pieces = n * C;
    const int64_t pw = (int64_t)heads * (hd + 2); /* one piece's m, z and o */
    float *buf = epm_malloc(((size_t)pieces * (size_t)pw + (size_t)nt * heads * BLOCK) * sizeof *buf);
    if (!buf)
        return epm_fail(EPM_ERR_NOMEM, "cpu attention: allocation of %lld pieces of %lld floats failed",
                        (long long)pieces, (long long)pw);
    float *part = buf, *scr = buf + pieces * pw;
EPM_OMP("omp parallel num_threads(nt)")
    {
        int me = epm_omp_me();
        int64_t c0, c1;
        epm_omp_share(pieces, 1, &c0, &c1);
        for (int64_t k = c0; k < c1; k++) {
            int64_t i = k / C, c = k % C, len = (int64_t)pos[i] + 1;
            int64_t t0 = c * RANGE < len ? c * RANGE : len, t1 = (c + 1) * RANGE < len ? (c + 1) * RANGE : len;
            float *pp = part + k * pw;
            run(q + i * heads * hd, heads, group, hd, kc, ks, vc, vs, kv_heads, t0, t1, scale,
                scr + (int64_t)me * heads * BLOCK, pp, pp + heads, pp + 2 * heads);
        }
EPM_OMP("omp barrier")
        epm_omp_share(n * heads, 1, &c0, &c1);
        for (int64_t k = c0; k < c1; k++) {
            int64_t i = k / heads;
            int h = (int)(k % heads);
            float M = -INFINITY, Z = 0, *o = out + (i * heads + h) * hd;
            for (int64_t c = 0; c < C; c++)
                M = part[(i * C + c) * pw + h] > M ? part[(i * C + c) * pw + h] : M;
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int64_t c = 0; c < C; c++) {
                const float *pp = part + (i * C + c) * pw;
                if (pp[heads + h] == 0)
                    continue; /* an empty range */
                float f = expf(pp[h] - M);
                Z += f * pp[heads + h];
                axpy(o, f, pp + 2 * heads + (int64_t)h * hd, hd);
            }
            for (int d = 0; d < hd; d++)
                o[d] /= Z;
        }
    }
    epm_free(buf);
    return EPM_OK;
}

static epm_status cpu_attention(const char *fn, const float *q, int64_t n, const int32_t *pos, const void *kc,
                                const float *ks, const void *vc, const float *vs, int kind, int64_t cache_len,
                                int heads, int kv_heads, int hd, float *out, float *probs)
{
    EPM_CHECK(epm_attention_check(fn, q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out));
    if (kind == KV_FP8) {
        KPTR(fn, ks, 1);
        KPTR(fn, vs, 1);
    }
    int64_t work = 0;
    for (int64_t i = 0; i < n; i++)
        work += 2 * ((int64_t)pos[i] + 1) * heads * hd;
    if (n == 0)
        return EPM_OK;
    const int group = heads / kv_heads, nt = epm_omp_threads_for(work, PAR_MIN_WORK);
    const float scale = (float)(1.0 / sqrt((double)hd));
    /* the output always comes the one way, so that asking for probs changes no bit of it */
    EPM_CHECK(by_ranges(q, n, pos, kc, ks, vc, vs, kind, heads, kv_heads, hd, out, nt, scale));
    if (!probs)
        return EPM_OK;
    const int64_t per = (int64_t)group * cache_len; /* one thread's scores */
    float *sc = epm_malloc((size_t)nt * (size_t)per * sizeof *sc);
    if (!sc)
        return epm_fail(EPM_ERR_NOMEM, "cpu attention: allocation of %d x %lld floats of scores failed", nt,
                        (long long)per);
    const int64_t items = n * kv_heads;
    const probs_fn probs_run = probs_for(kind);
EPM_OMP("omp parallel num_threads(nt)")
    {
        int me = epm_omp_me();
        int64_t c0, c1;
        epm_omp_share(items, 1, &c0, &c1);
        for (int64_t it = c0; it < c1; it++) {
            int64_t i = it / kv_heads;
            int kh = (int)(it % kv_heads), h0 = kh * group;
            probs_run(q + (i * heads + h0) * hd, group, hd, kc, ks, kv_heads, kh, (int64_t)pos[i] + 1, scale,
                      sc + (int64_t)me * per, probs + ((int64_t)h0 * n + i) * cache_len, n * cache_len, cache_len);
        }
    }
    epm_free(sc);
    return EPM_OK;
}

epm_status epm_cpu_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc,
                             int64_t cache_len, int heads, int kv_heads, int hd, float *out, float *probs)
{
    return cpu_attention("cpu attention", q, n, pos, kc, NULL, vc, NULL, KV_F32, cache_len, heads, kv_heads, hd, out,
                         probs);
}

epm_status epm_cpu_attention_bf16(const float *q, int64_t n, const int32_t *pos, const uint16_t *kc,
                                  const uint16_t *vc, int64_t cache_len, int heads, int kv_heads, int hd, float *out,
                                  float *probs)
{
    return cpu_attention("cpu attention (bf16 cache)", q, n, pos, kc, NULL, vc, NULL, KV_BF16, cache_len, heads,
                         kv_heads, hd, out, probs);
}

epm_status epm_cpu_attention_fp8(const float *q, int64_t n, const int32_t *pos, const uint8_t *kc, const float *ks,
                                 const uint8_t *vc, const float *vs, int64_t cache_len, int heads, int kv_heads,
                                 int hd, float *out, float *probs)
{
    return cpu_attention("cpu attention (fp8 cache)", q, n, pos, kc, ks, vc, vs, KV_FP8, cache_len, heads, kv_heads,
                         hd, out, probs);
}
