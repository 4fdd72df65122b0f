/* The layouts of the padded expert FFN paths (ops_cuda.cu,
 * EPM_CUDA_GROUPED_GEMM = batched or strided), kept in C so that the CPU
 * tests can check them without a GPU. Batched first; the strided runs are
 * described at epm_ffn_bplan_make_runs.
 *
 * Why batches: a uniform-shape batched GEMM (cublasGemmBatchedEx) runs
 * cuBLAS's tuned single-GEMM kernels over many experts in one launch, so a
 * fine-grained MoE (DeepSeek-V3: 256 experts of ~128 rows at 4k tokens)
 * fills every SM; the grouped call (cublasGemmGroupedBatchedEx) allows a
 * different shape per expert but runs slower kernels, and one GEMM per expert
 * leaves most SMs idle. A batch needs one row count, so each expert's rows
 * are rounded up to a bucket (epm_ffn_bucket_rows: at most 1/8 of the rows
 * more past 256 rows, at most 15 below) and the experts of one bucket form
 * one batch. The extra rows are computed and thrown away: a GEMM's output
 * row depends only on the same input row, so what those rows read does not
 * reach the real ones.
 *
 * Where the rows live, per expert j (in bucket order):
 *  - input: x itself from row o[j] (its B rows read into the next experts'
 *    rows, never past x's end), or, where that would read past the end, a
 *    copy in a spare area from row s[j];
 *  - gate, up, h and the down output: padded areas, from row p[j], B rows
 *    each, disjoint;
 *  - the m[j] real rows of the down output are copied back to y from row o[j].
 * The copies are described by tables of (source row, destination row, rows)
 * that one device kernel runs. */
#ifndef EPM_FFN_BPLAN_H
#define EPM_FFN_BPLAN_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_ffn_bplan {
    int ne;                  /* experts with rows */
    int nb;                  /* buckets (batches) */
    int ncopy;               /* experts whose input is copied to the spare area */
    int64_t rows;            /* offsets[E]: rows of x and y */
    int64_t padded_rows;     /* rows of each padded area */
    int64_t spare_rows;      /* rows of the spare area */
    int64_t max_rows;        /* the largest m[j] */
    int32_t *expert;         /* [ne] expert id, bucket order (largest bucket first) */
    int64_t *o, *m, *p, *s;  /* [ne] first row in x/y, rows, first padded row, first spare row or -1 */
    int32_t *first;          /* [nb + 1] bucket b holds experts first[b] .. first[b+1]-1 */
    int64_t *brows;          /* [nb] the padded rows of every expert of bucket b */
    /* runs only (epm_ffn_bplan_make_runs): bucket b's gate, up and down
     * weights at a uniform byte stride from its first expert's, and whether
     * each expert's up matrix directly follows its gate matrix */
    int64_t *stride;         /* [3 nb] gate, up, down strides of bucket b */
    int32_t *fused;          /* [nb] */
    void *mem;               /* the arrays above, grown and reused across calls */
    size_t cap;
} epm_ffn_bplan;

/* Rows a batch gives an expert with m >= 1 rows: m rounded up to a multiple
 * of q, q = 16 up to 256 rows, then doubling with m (q <= m / 8), so that
 * nearby row counts share a batch and padding stays small. */
int64_t epm_ffn_bucket_rows(int64_t m);

/* Lays out one call over offsets[0..experts] (non-decreasing, offsets[0] = 0).
 * Reuses pl's arrays (zero-initialise pl before the first call).
 * EPM_ERR_INVALID_ARG for offsets that are not a valid grouping or a bucket
 * over INT32_MAX rows; EPM_ERR_NOMEM. */
epm_status epm_ffn_bplan_make(epm_ffn_bplan *pl, const int64_t *offsets, int experts);
/* The strided layout (EPM_CUDA_GROUPED_GEMM = strided): a uniform-stride
 * batched GEMM (cublasGemmStridedBatchedEx) needs every operand at one
 * stride, which cuBLAS's strided kernels are built for (a pointer-array batch
 * may run kernels that fetch each entry's address first). So a bucket is a
 * run of consecutive experts with rows whose gate, up and down weights are
 * each at a uniform stride (16-byte multiples, positive: experts stacked in
 * one tensor, as vLLM and SGLang hold them), padded to the bucket rows of
 * the run's busiest expert; every expert's input is copied (s[j] = p[j]), so
 * the input is uniformly strided too. fused[b]: up[e] = gate[e] + gu_bytes
 * for all its experts (gate and up then run as one GEMM of 2 ffn outputs).
 * An idle expert, a change of stride, or padding past the buckets' bound
 * (n * rows > 9/8 of the run's rows + 16 n) ends a run. Same errors as make. */
epm_status epm_ffn_bplan_make_runs(epm_ffn_bplan *pl, const int64_t *offsets, int experts, const void *const *gate,
                                   const void *const *up, const void *const *down, size_t gu_bytes);
void epm_ffn_bplan_free(epm_ffn_bplan *pl);

/* The pointer arrays of bucket b's two batches, n = its experts, written to
 * out[0 .. 9n): gate/up batch A[2n] (gate weights, then up), B[2n] (the
 * input, twice), C[2n] (gate rows, then up rows); down batch A[n] (down
 * weights), B[n] (h rows), C[n] (down output rows). Row sizes: hidden * es
 * bytes for x, spare and the down output, ffn * es for gate, up and h. */
static inline void epm_ffn_bplan_ptrs(const epm_ffn_bplan *pl, int b, const void *const *gate,
                                      const void *const *up, const void *const *down, const char *x,
                                      const char *spare, char *gt, char *upo, char *h, char *yp, int hidden, int ffn,
                                      size_t es, void **out)
{
    int j0 = pl->first[b], n = pl->first[b + 1] - j0;
    size_t hb = (size_t)hidden * es, fb = (size_t)ffn * es;
    for (int i = 0; i < n; i++) {
        int j = j0 + i, e = pl->expert[j];
        const char *in = pl->s[j] >= 0 ? spare + (size_t)pl->s[j] * hb : x + (size_t)pl->o[j] * hb;
        out[i] = (void *)gate[e], out[n + i] = (void *)up[e];
        out[2 * n + i] = out[3 * n + i] = (void *)in;
        out[4 * n + i] = gt + (size_t)pl->p[j] * fb, out[5 * n + i] = upo + (size_t)pl->p[j] * fb;
        out[6 * n + i] = (void *)down[e];
        out[7 * n + i] = h + (size_t)pl->p[j] * fb;
        out[8 * n + i] = yp + (size_t)pl->p[j] * hb;
    }
}

/* One uniform-stride batch of the strided path: entry i computes, row-major,
 * y_i[r][0..out) = x_i[r][0..in) W_i^T for r < the bucket's rows, with
 * W_i = w + i w_stride, x_i = x + i x_stride, y_i = y + i y_stride
 * (strides in elements) and y's rows ldy elements apart. */
typedef struct epm_ffn_sgemm {
    const void *w;
    const void *x;
    void *y;
    int64_t w_stride, x_stride, y_stride;
    int in, out, ldy;
} epm_ffn_sgemm;

/* Run b's batches in order, returning their count: gate and up as one of
 * 2 ffn outputs when fused, else gate then up into the same rows of 2 ffn
 * (up at column ffn); then down, whose input (h from row p[first[b]]) is
 * where the SiLU writes silu(gate) * up. gu: the gate/up area, rows of
 * 2 ffn; the input rows are the spare copies. */
static inline int epm_ffn_bplan_sgemms(const epm_ffn_bplan *pl, int b, const void *const *gate,
                                       const void *const *up, const void *const *down, const char *spare, char *gu,
                                       char *h, char *yp, int hidden, int ffn, size_t es, epm_ffn_sgemm out[3])
{
    int j0 = pl->first[b], e0 = pl->expert[j0], k = 0;
    int64_t B = pl->brows[b], p0 = pl->p[j0];
    const int64_t *sw = pl->stride + 3 * b;
    const char *in = spare + (size_t)pl->s[j0] * hidden * es;
    char *o = gu + (size_t)p0 * 2 * ffn * es;
    if (pl->fused[b]) {
        out[k++] = (epm_ffn_sgemm){gate[e0], in, o, sw[0] / (int64_t)es, B * hidden, B * 2 * ffn, hidden, 2 * ffn,
                                   2 * ffn};
    } else {
        out[k++] = (epm_ffn_sgemm){gate[e0], in, o, sw[0] / (int64_t)es, B * hidden, B * 2 * ffn, hidden, ffn, 2 * ffn};
        out[k++] = (epm_ffn_sgemm){up[e0], in, o + (size_t)ffn * es, sw[1] / (int64_t)es, B * hidden, B * 2 * ffn,
                                   hidden, ffn, 2 * ffn};
    }
    out[k++] = (epm_ffn_sgemm){down[e0], h + (size_t)p0 * ffn * es, yp + (size_t)p0 * hidden * es,
                               sw[2] / (int64_t)es, B * ffn, B * hidden, ffn, hidden, hidden};
    return k;
}

/* The copy tables, (source row, destination row, rows) per entry: gather
 * [ncopy] (x -> spare, the copied experts in bucket order) and scatter [ne]
 * (the down output -> y, every expert). */
static inline void epm_ffn_bplan_tables(const epm_ffn_bplan *pl, int64_t *gather, int64_t *scatter)
{
    for (int j = 0, c = 0; j < pl->ne; j++) {
        if (pl->s[j] >= 0) {
            gather[3 * c] = pl->o[j], gather[3 * c + 1] = pl->s[j], gather[3 * c + 2] = pl->m[j];
            c++;
        }
        scatter[3 * j] = pl->p[j], scatter[3 * j + 1] = pl->o[j], scatter[3 * j + 2] = pl->m[j];
    }
}

#ifdef __cplusplus
}
#endif

#endif
