/* The CPU expert FFN over FP8 weights (ops.h's epm_w8: e4m3 codes and a
 * float32 scale per block), float32 activations and accumulation. Why:
 * DeepSeek-V3/R1 publish their experts in FP8, and holding them dequantised
 * to bf16 doubles the memory a rank needs for them and the bytes each
 * decoded token reads.
 *
 * A weight is decoded where it is used to the value the loader's
 * dequantisation gives, bf16(e4m3 x scale), so both holdings run the same
 * model (SGLang's CPU kernels also unpack FP8 to bf16 with its scale).
 * Decoding: an e4m3 code shifted left by 7 (its sign moved to bit 15) is a
 * float16 of 2^-8 times its value, subnormals included, which F16C
 * (vcvtph2ps) widens exactly; times 2^8 (exact), times the block's scale,
 * rounded to bf16 by integer operations. About a dozen vector operations
 * per 16 weights, where decoding the e4m3 fields bit by bit (exponent
 * rebias, a subnormal fix-up) took about thirty: decode at 0.36x the bf16
 * kernel's rate before, 1.00-1.06x after (bench/README.md). Without the
 * rounding it ran 1.33x, but it would be another model than the bf16 one by
 * up to 2^-9 per weight. Under AVX-512 (with BW) most blocks now take a
 * table instead: 16 values decoded per block row that way, then each code
 * is a 16-bit permute into them plus its exponent and sign (tab512_make
 * says why that is exact), about 11 operations per 32 weights: decode with
 * FP8 dense matrices and experts went from 0.72-0.97x to 1.00-1.07x of bf16.
 *
 * Three ways, by the rows an expert has:
 *  - up to DIRECT_ROWS (decode): each weight row is decoded in registers and
 *    dotted with every input row at once, gate and up in the same pass with
 *    the SiLU applied on the spot; threads over output features. It reads
 *    one byte per weight.
 *  - up to EPM_GEMM_NT_MAX_ROWS, where the CPU has AVX2 or AVX-512:
 *    cpu_gemm_nt.c's GEMM for few rows, each thread decoding its weight rows
 *    a k-block of 48 rows at a time into a buffer that stays in L2, so that
 *    the codes are read once and nothing decoded goes back to memory. (The
 *    first version decoded each matrix whole to float32 first, 9 bytes of
 *    traffic per weight against bf16's 2: 0.48-0.77x of bf16 on experts
 *    from memory; panels and SGEMM were slower still; bench/README.md.)
 *  - more rows: panels decoded to float32 into the caller's scratch, then
 *    SGEMM (cpu_ffn_bf16.c's panel path with this file's decoding).
 * Under AVX-512 with BW (16 floats a vector) or AVX2 with F16C (8; also
 * AVX-512 CPUs without BW); elsewhere, or with EPM_CPU_ISA=off, one weight
 * at a time in portable C. */
#include <string.h>

#include "backend.h"
#include "cpu_gemm_nt.h"
#include "cpu_omp.h"
#include "half.h"
#include "kcheck.h"
#include "ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define W8_X86 1
#include <immintrin.h>
#define T512 __attribute__((target("avx512f,avx512bw,fma,f16c")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL inline __attribute__((always_inline))
#endif

enum {
    DIRECT_ROWS = 4,           /* rows of an expert up to which the direct kernel runs */
    CHUNK = EPM_CPU_FFN_CHUNK, /* rows per chunk of the panel path, as cpu_ffn.c */
    PAR_MIN_WORK = 1 << 16     /* multiply-adds below which one thread does it all */
};

typedef enum { W8_PORTABLE, W8_AVX2, W8_AVX512 } w8_isa;

/* the CPU GEMM's choice (EPM_CPU_ISA, or what the tests force), F16C
 * besides for AVX2 */
static w8_isa w8_isa_active(void)
{
#ifdef W8_X86
    epm_cpu_isa isa = epm_cpu_isa_active();
    /* F16C, and AVX512BW for the table decoding's 16-bit permutes (every
     * AVX-512 CPU but Knights Landing has it, which takes the AVX2 kernels) */
    int have = epm_cpu_x86_feats();
    if (!(have & EPM_X86_F16C))
        have = 0;
    if (isa == EPM_CPU_ISA_AVX512 && have == 3)
        return W8_AVX512;
    if (isa != EPM_CPU_ISA_OFF && (have & 1))
        return W8_AVX2;
#endif
    return W8_PORTABLE;
}

static inline float value1(uint8_t q, float s) { return epm_bf16_to_f32(epm_f32_to_bf16(epm_f8e4m3_to_f32(q) * s)); }

/* Row r of an FP8 weight of K columns: its codes and its blocks' scales. */
typedef struct w8_row {
    const uint8_t *q;
    const float *s;
} w8_row;

static inline w8_row row_at(const epm_w8 *w, int64_t r, int K)
{
    if (!w)
        return (w8_row){NULL, NULL};
    return (w8_row){w->q + r * K, w->scale + r / w->br * ((K + w->bc - 1) / w->bc)};
}

/* The weights a vector loop leaves in block cb, columns j..j1, one at a time
 * into the rows' scalar sums (r1.q NULL: no second matrix). */
static inline void tail(int M, const float *x, int64_t ldx, w8_row r0, w8_row r1, int64_t cb, int64_t j, int64_t j1,
                        float *ta, float *tb)
{
    for (; j < j1; j++) {
        float d0 = value1(r0.q[j], r0.s[cb]), d1 = r1.q ? value1(r1.q[j], r1.s[cb]) : 0;
        for (int i = 0; i < M; i++) {
            ta[i] += x[i * ldx + j] * d0;
            tb[i] += x[i * ldx + j] * d1;
        }
    }
}

/* One weight row against M input rows, for w0 and (when not NULL) w1:
 * acc0[i] = x[i] . w0[r], acc1[i] = x[i] . w1[r]. Each ISA's version below
 * runs its vectors over whole groups of a block, the rest one at a time. */
/* The AVX-512 decoding tables of the current row block, for the first
 * DIRECT_TABS column blocks of w0 (k = 0) and w1 (k = 1; the direct
 * kernel's up): a block's scale serves br rows, and making its table for
 * every row cost a fifth of the direct kernel's operations at 4 rows. Raw
 * bytes, so that the generic code can hold one for whichever kernel runs. */
enum { DIRECT_TABS = 64, TAB_BYTES = 128 };
typedef struct w8_tabcache {
    int64_t rb[2]; /* the row block the tables are of; -1: none yet */
    signed char made[2][DIRECT_TABS]; /* -1: not made, else the table maker's answer */
    _Alignas(64) unsigned char t[2][DIRECT_TABS][TAB_BYTES];
} w8_tabcache;

typedef struct dot_args {
    const float *x;
    int64_t ldx;
    const epm_w8 *w0, *w1;
    int64_t r;
    int K;
    w8_tabcache *tabs;
} dot_args;

static void dot_portable(int M, const dot_args *a, float *acc0, float *acc1)
{
    const int bc = a->w0->bc;
    w8_row r0 = row_at(a->w0, a->r, a->K), r1 = row_at(a->w1, a->r, a->K);
    for (int i = 0; i < M; i++)
        acc0[i] = 0, acc1[i] = 0;
    for (int64_t cb = 0; cb * bc < a->K; cb++)
        tail(M, a->x, a->ldx, r0, r1, cb, cb * bc, (cb + 1) * bc < a->K ? (cb + 1) * bc : a->K, acc0, acc1);
}

static void rows_portable(const epm_w8 *w, int64_t r0, int64_t r1, int K, int c0, int c1, float *out, int64_t ldo)
{
    for (int64_t r = r0; r < r1; r++) {
        w8_row wr = row_at(w, r, K);
        for (int64_t j = c0; j < c1; j++)
            out[(r - r0) * ldo + j - c0] = value1(wr.q[j], wr.s[j / w->bc]);
    }
}

/* each row count its own unrolled body */
#define DOT_BY_ROWS(fn, M, a, acc0, acc1)       \
    switch (M) {                                \
    case 1: fn(1, a, acc0, acc1); break;        \
    case 2: fn(2, a, acc0, acc1); break;        \
    case 3: fn(3, a, acc0, acc1); break;        \
    default: fn(4, a, acc0, acc1); break;       \
    }

#ifdef W8_X86
/* 8 codes (codes16: 16) in 16-bit lanes as float16 bit patterns of
 * 2^-8 times their values: shifted left by 7, the sign from bit 14 to 15 */
T256 static INL __m128i codes8(const uint8_t *q)
{
    __m128i h = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)q)), 7);
    return _mm_add_epi16(h, _mm_and_si128(h, _mm_set1_epi16(0x4000)));
}

T512 static INL __m256i codes16(const uint8_t *q)
{
    __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)q)), 7);
    return _mm256_add_epi16(h, _mm256_and_si256(h, _mm256_set1_epi16(0x4000)));
}

/* 8 codes times their scale v, rounded to bf16 (ties to even) by integer
 * operations: no NaN or overflow here (the loader refuses both) */
T256 static INL __m256 decode256(const uint8_t *q, __m256 v)
{
    __m256i u = _mm256_castps_si256(_mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(codes8(q)), _mm256_set1_ps(256.0f)), v));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16),
                                                                                          _mm256_set1_epi32(1))));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)));
}

T256 static INL float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* the same for 16 codes */
T512 static INL __m512 decode512(const uint8_t *q, __m512 v)
{
    __m512i u = _mm512_castps_si512(_mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(codes16(q)), _mm512_set1_ps(256.0f)), v));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16),
                                                                                          _mm512_set1_epi32(1))));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}

#define W8S _256
#define W8ATTR T256
#define W8V __m256
#define W8W 8
#define W8DEC decode256
#define W8LOAD _mm256_loadu_ps
#define W8STORE _mm256_storeu_ps
#define W8FMA _mm256_fmadd_ps
#define W8SET1 _mm256_set1_ps
#define W8ZERO _mm256_setzero_ps
#define W8SUM hsum256
#include "cpu_ffn_fp8_isa.inc"

/* The table decoding (AVX-512BW), 32 codes a step. Within a block every
 * code's value is 2^(e-1) times one of 8 values (e >= 1, by its 3 mantissa
 * bits), or one of 8 others (e = 0, the subnormal codes), and negated by
 * its sign: bf16 rounding commutes with powers of two while nothing
 * underflows or overflows (|scale| in [2^-120, 2^119): the e = 1 values
 * are normal and no code's value is beyond bf16; other blocks take
 * decode512; the e = 0 values are used as decoded, subnormal or not). So the 16 values are decoded once per block row by the exact
 * formula (decode512), and a code's bf16 is a 16-bit permute into them,
 * plus (e - 1) << 7 (its exponent), xor its sign: about 11 operations per
 * 32 weights where decode512 takes 12 per 16. */
typedef struct tab512 {
    __m512i t; /* e >= 1: the bf16 of (8 + m) x 2^-9 x scale, less 1 << 7, at every index with m = index & 7 */
    __m512i s; /* e == 0: the bf16 of m x 2^-9 x scale, likewise */
} tab512;

T512 static INL int tab512_make(float scale, tab512 *tb)
{
    float a = scale < 0 ? -scale : scale;
    if (!(a >= 0x1p-120f && a < 0x1p119f))
        return 0;
    static const uint8_t codes[16] = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
    __m512i d = _mm512_srli_epi32(_mm512_castps_si512(decode512(codes, _mm512_set1_ps(scale))), 16);
    __m512i b = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(d)); /* words 0-7: e = 1, 8-15: e = 0 */
    const __m512i m7 = _mm512_and_si512(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                                                         16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                        _mm512_set1_epi16(7));
    tb->t = _mm512_sub_epi16(_mm512_permutexvar_epi16(m7, b), _mm512_set1_epi16(1 << 7));
    tb->s = _mm512_permutexvar_epi16(_mm512_or_si512(m7, _mm512_set1_epi16(8)), b);
    return 1;
}

_Static_assert(sizeof(tab512) <= TAB_BYTES, "a table fits w8_tabcache's slot");

/* The table of scale s, a column block of w (k: w0 or w1) at row r whose
 * cache slot is `slot`: from the cache for the first DIRECT_TABS slots,
 * else made into own; NULL where the scale is out of the table's range. */
T512 static INL const tab512 *tab512_for(w8_tabcache *c, int k, const epm_w8 *w, int64_t r, int64_t slot, float s,
                                         tab512 *own)
{
    if (!c || slot >= DIRECT_TABS)
        return tab512_make(s, own) ? own : NULL;
    const int64_t rb = r / w->br;
    if (c->rb[k] != rb) {
        memset(c->made[k], -1, sizeof c->made[k]);
        c->rb[k] = rb;
    }
    tab512 *t = (tab512 *)(void *)c->t[k][slot];
    if (c->made[k][slot] < 0)
        c->made[k][slot] = (signed char)tab512_make(s, t);
    return c->made[k][slot] ? t : NULL;
}

/* 32 codes of a block whose table is tb: lo gets the first 16 values, hi
 * the next. vpermw reads an index's low 5 bits, (e & 3) << 3 | m, and each
 * table holds its 8 values at every m. */
T512 static INL void dec32(const uint8_t *q, const tab512 *tb, __m512 *lo, __m512 *hi)
{
    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)q));
    const __m512i e = _mm512_and_si512(c, _mm512_set1_epi16(0x78));
    __m512i t = _mm512_permutexvar_epi16(c, tb->t);
    t = _mm512_mask_permutexvar_epi16(t, _mm512_testn_epi16_mask(e, e), c, tb->s);
    t = _mm512_add_epi16(t, _mm512_slli_epi16(e, 4));
    /* t ^ (c << 8 & 0x8000): the sign */
    t = _mm512_ternarylogic_epi32(t, _mm512_slli_epi16(c, 8), _mm512_set1_epi16((short)0x8000), 0x78);
    /* a float32 is its bf16 in the high half: word 2i of the result is 0, word 2i + 1 is t[i] (or t[16 + i]) */
    const __m512i il = _mm512_set_epi16(47, 0, 46, 0, 45, 0, 44, 0, 43, 0, 42, 0, 41, 0, 40, 0, 39, 0, 38, 0, 37, 0,
                                        36, 0, 35, 0, 34, 0, 33, 0, 32, 0);
    const __m512i z = _mm512_setzero_si512();
    *lo = _mm512_castsi512_ps(_mm512_permutex2var_epi16(z, il, t));
    *hi = _mm512_castsi512_ps(_mm512_permutex2var_epi16(z, _mm512_add_epi16(il, _mm512_set1_epi16(16)), t));
}

#define W8PAIR
#define W8TAB tab512
#define W8TABFOR tab512_for
#define W8DEC2 dec32
#define W8S _512
#define W8ATTR T512
#define W8V __m512
#define W8W 16
#define W8DEC decode512
#define W8LOAD _mm512_loadu_ps
#define W8STORE _mm512_storeu_ps
#define W8FMA _mm512_fmadd_ps
#define W8SET1 _mm512_set1_ps
#define W8ZERO _mm512_setzero_ps
#define W8SUM _mm512_reduce_add_ps
#include "cpu_ffn_fp8_isa.inc"
#endif

typedef void (*dot_fn)(int M, const dot_args *a, float *acc0, float *acc1);

static dot_fn dot_for(w8_isa isa)
{
#ifdef W8_X86
    if (isa == W8_AVX512)
        return dot_512;
    if (isa == W8_AVX2)
        return dot_256;
#endif
    (void)isa;
    return dot_portable;
}

void epm_cpu_w8_block(const epm_w8 *w, int64_t r0, int64_t r1, int K, int c0, int c1, float *out, int64_t ldo)
{
#ifdef W8_X86
    w8_isa isa = w8_isa_active();
    if (isa == W8_AVX512) {
        rows_512(w, r0, r1, K, c0, c1, out, ldo);
        return;
    }
    if (isa == W8_AVX2) {
        rows_256(w, r0, r1, K, c0, c1, out, ldo);
        return;
    }
#endif
    rows_portable(w, r0, r1, K, c0, c1, out, ldo);
}

void epm_cpu_w8_rows(const epm_w8 *w, int64_t r0, int64_t r1, int K, float *out)
{
    epm_cpu_w8_block(w, r0, r1, K, 0, K, out, K);
}

static void w8_rows_fn(const void *w, int64_t r0, int64_t r1, int K, float *out)
{
    epm_cpu_w8_rows(w, r0, r1, K, out);
}

/* cpu_gemm_nt.c's decoding callback: a matrix and its row length */
typedef struct w8_k {
    const epm_w8 *w;
    int K;
} w8_k;

static void w8_decode_fn(const void *wk, int64_t r0, int64_t r1, int j0, int j1, float *out, int64_t ldo)
{
    const w8_k *a = wk;
    epm_cpu_w8_block(a->w, r0, r1, a->K, j0, j1, out, ldo);
}

/* y[m][N] = x[m][K] w^T for m <= EPM_GEMM_NT_MAX_ROWS: cpu_gemm_nt.c's GEMM,
 * each thread decoding its weight rows a k-block at a time into its part of
 * wbuf (threads of them) */
static void nt_linear(epm_cpu_isa isa, const float *x, int64_t m, int K, const epm_w8 *w, int N, float *y,
                      float *pack, float *wbuf, int threads)
{
    const w8_k a = {w, K};
    epm_cpu_gemm_nt_decoded(isa, x, m, K, w8_decode_fn, &a, N, y, pack, wbuf, threads);
}

/* Output features [c0, c1) of w against M <= DIRECT_ROWS rows of width K:
 * y[i][n] (ld ldy) = x[i] . w[n], or with w1, silu(x[i] . w[n]) x (x[i] .
 * w1[n]) (gate and up in one pass). */
static void direct_span(dot_fn dot, int M, const float *x, int K, const epm_w8 *w, const epm_w8 *w1, int64_t c0,
                        int64_t c1, float *y, int64_t ldy)
{
    float a0[DIRECT_ROWS], a1[DIRECT_ROWS];
    w8_tabcache tabs;
    tabs.rb[0] = tabs.rb[1] = -1;
    for (int64_t n = c0; n < c1; n++) {
        dot_args a = {x, K, w, w1, n, K, &tabs};
        dot(M, &a, a0, a1);
        for (int i = 0; i < M; i++)
            y[i * ldy + n] = w1 ? epm_silu(a0[i]) * a1[i] : a0[i];
    }
}

/* M <= DIRECT_ROWS rows through one expert; h: M x F of scratch */
static void direct_expert(int M, const float *x, int H, int F, const epm_w8 *gate, const epm_w8 *up,
                          const epm_w8 *down, float *h, float *y)
{
    const dot_fn dot = dot_for(w8_isa_active());
    int nt = epm_omp_threads_for((int64_t)M * H * F, PAR_MIN_WORK);
    (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
    {
        int64_t c0, c1;
        epm_omp_share(F, 1, &c0, &c1);
        direct_span(dot, M, x, H, gate, up, c0, c1, h, F);
EPM_OMP("omp barrier")
        epm_omp_share(H, 1, &c0, &c1);
        direct_span(dot, M, h, F, down, NULL, c0, c1, y, H);
    }
}

/* past the chunk's gate and up outputs: a panel, or cpu_gemm_nt.c's packed
 * rows (an expert takes one way or the other, whatever the instruction set) */
size_t epm_cpu_ffn_w8_scratch_floats(int64_t max_rows, int hidden, int ffn)
{
    int64_t m = max_rows < CHUNK ? max_rows : CHUNK;
    size_t f = (size_t)(2 * m * ffn) + 1;
    if (max_rows <= DIRECT_ROWS)
        return f;
    size_t panel = epm_cpu_panel_floats(hidden, ffn, 0);
    size_t pack = epm_cpu_gemm_nt_pack_floats(m < EPM_GEMM_NT_MAX_ROWS ? m : EPM_GEMM_NT_MAX_ROWS,
                                              hidden > ffn ? hidden : ffn);
    return f + (panel > pack ? panel : pack);
}

/* The decoding buffers of cpu_gemm_nt.c's FP8 path, one per thread: asked
 * for per call (192 KiB a thread), as the threads are known only then. */
static epm_status nt_buffers(const char *fn, float **wbuf, int *threads)
{
    *threads = epm_omp_threads_for(1, 0);
    *wbuf = epm_malloc(epm_cpu_gemm_nt_decode_floats(*threads) * sizeof **wbuf);
    return *wbuf ? EPM_OK
                 : epm_fail(EPM_ERR_NOMEM, "%s: allocation of %d decoding buffers of %zu floats failed", fn, *threads,
                            epm_cpu_gemm_nt_decode_floats(1));
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
        KREQ(gate[e].bc == up[e].bc, "%s: expert %d's gate and up blocks are %d and %d columns wide (the direct "
             "kernel walks them together)", fn, e, gate[e].bc, up[e].bc);
    }
    int64_t busiest = epm_busiest_rows(offsets, experts), chunk_max = busiest < CHUNK ? busiest : CHUNK;
    float *panel = scratch + 2 * chunk_max * ffn, *wbuf = NULL;
    int pr_in = epm_cpu_panel_rows(hidden, ffn, 0), pr_out = epm_cpu_panel_rows(ffn, hidden, 0), threads = 1;
    const epm_cpu_isa isa = epm_cpu_isa_active();
    epm_status st = EPM_OK;
    for (int e = 0; e < experts && st == EPM_OK; e++) {
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
            if (m <= EPM_GEMM_NT_MAX_ROWS && isa != EPM_CPU_ISA_OFF) { /* panel then holds the packed rows */
                if (!wbuf && (st = nt_buffers(fn, &wbuf, &threads)) != EPM_OK)
                    break;
                nt_linear(isa, x + r0 * hidden, m, hidden, &gate[e], ffn, g, panel, wbuf, threads);
                nt_linear(isa, x + r0 * hidden, m, hidden, &up[e], ffn, u, panel, wbuf, threads);
                epm_swiglu_inplace(g, u, m * ffn);
                nt_linear(isa, g, m, ffn, &down[e], hidden, y + r0 * hidden, panel, wbuf, threads);
                continue;
            }
            epm_cpu_panel_linear(x + r0 * hidden, m, hidden, w8_rows_fn, &gate[e], ffn, panel, pr_in, g);
            epm_cpu_panel_linear(x + r0 * hidden, m, hidden, w8_rows_fn, &up[e], ffn, panel, pr_in, u);
            epm_swiglu_inplace(g, u, m * ffn);
            epm_cpu_panel_linear(g, m, ffn, w8_rows_fn, &down[e], hidden, panel, pr_out, y + r0 * hidden);
        }
    }
    epm_free(wbuf);
    return st;
}

epm_status epm_cpu_linear_w8(const float *x, int64_t n, int in, const epm_w8 *w, const float *b, int out, float *y)
{
    static const char fn[] = "cpu linear (fp8 weights)";
    KREQ(n >= 0 && n <= INT32_MAX, "%s: n = %lld", fn, (long long)n);
    KREQ(in >= 1 && out >= 1, "%s: in = %d, out = %d", fn, in, out);
    KPTR(fn, x, n);
    KPTR(fn, w, 1);
    KPTR(fn, y, n);
    KREQ(w->q && w->scale && w->br >= 1 && w->bc >= 1, "%s: no codes or scales, or blocks of %d x %d", fn, w->br,
         w->bc);
    if (n == 0)
        return EPM_OK;
    if (n <= DIRECT_ROWS) { /* decode: output features over the threads */
        const dot_fn dot = dot_for(w8_isa_active());
        int nt = epm_omp_threads_for(n * (int64_t)in * out, PAR_MIN_WORK);
        (void)nt;
EPM_OMP("omp parallel num_threads(nt)")
        {
            int64_t c0, c1;
            epm_omp_share(out, 1, &c0, &c1);
            direct_span(dot, (int)n, x, in, w, NULL, c0, c1, y, out);
        }
    } else if (n <= EPM_GEMM_NT_MAX_ROWS && epm_cpu_isa_active() != EPM_CPU_ISA_OFF) {
        float *wbuf;
        int threads;
        EPM_CHECK(nt_buffers(fn, &wbuf, &threads));
        float *pack = epm_malloc(epm_cpu_gemm_nt_pack_floats(n, in) * sizeof *pack);
        if (!pack) {
            epm_free(wbuf);
            return epm_fail(EPM_ERR_NOMEM, "%s: allocation of %zu floats of packed rows failed", fn,
                            epm_cpu_gemm_nt_pack_floats(n, in));
        }
        nt_linear(epm_cpu_isa_active(), x, n, in, w, out, y, pack, wbuf, threads);
        epm_free(pack), epm_free(wbuf);
    } else { /* panels and SGEMM: a dense matrix may be far larger than an expert's */
        int pr = epm_cpu_panel_rows(in, out, 0);
        float *panel = epm_malloc((size_t)pr * (size_t)in * sizeof *panel);
        if (!panel)
            return epm_fail(EPM_ERR_NOMEM, "%s: allocation of %lld floats of panel failed", fn,
                            (long long)pr * in);
        epm_cpu_panel_linear(x, n, in, w8_rows_fn, w, out, panel, pr, y);
        epm_free(panel);
    }
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[i * out + o] += b[o];
    return EPM_OK;
}
