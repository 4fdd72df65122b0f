/* The state of one `epmoe run`, shared by the files of the runtime: the
 * run and its layer loop (runtime.c), attention (runtime_attention.c), the
 * MoE block (runtime_moe.c), the up-front checks (runtime_checks.c), the KV
 * cache, MLA, Mixture-of-Depths, online rebalancing and the wire's row
 * formats (runtime_kv.c, _mla.c, _mod.c, _eplb.c, _wire.c); internal. */
#ifndef EPM_RUNTIME_INTERNAL_H
#define EPM_RUNTIME_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "epmoe/model.h"
#include "ops.h"
#include "runtime.h"
#include "xcomm.h"

enum { EPM_KV_F32, EPM_KV_BF16, EPM_KV_FP8 };

typedef struct rt {
    const epm_run_opts *o;
    epm_xcomm *x;
    epm_xcomm *xc;        /* asynchronous rebalancing's copies of experts (epm_run_opts.eplb_lag, from peers):
                             flat, p2p, posted at the boundary, moving under the passes; NULL otherwise */
    int me, R;
    epm_model *m;
    const epm_model_dense *dense;
    const epm_model_config *c;
    const epm_ops *ops, *ref;
    const epm_placement *p;
    epm_placement *owned_p;
    int64_t *eplb_load;   /* [moe_layers][experts] this rank's gate choices in the window (online rebalancing) */
    int eplb_counting;    /* the pass running is in the window */
    int eplb_slots;
    int eplb_groups; /* epm_plan_rebalance's groups: the option's, else the model's n_group (0: none) */
    epm_xcomm_wire eplb_wire; /* what online rebalancing's copies of experts put on the links, this rank */
    int64_t eplb_counted[EPM_LINK_COUNT]; /* the change's copies, as plan eval counts them */
    /* with a lag (epm_run_opts.eplb_lag): the placement taken, in service from pass eplb_switch_at; its
     * gains, its moves (copying) and their exchange in flight, received into eplb_in */
    epm_placement *eplb_next;
    int64_t eplb_switch_at, eplb_moved_next;
    epm_expert_move *eplb_mv;
    int64_t eplb_nmv;
    epm_xcomm_req *eplb_req;
    float *eplb_rows;     /* the copies this rank sends, lent to the exchange till the switch; kept */
    size_t eplb_rows_cap;

    epm_xcomm_buf eplb_in;
    int B, N, steps, max_len;
    int64_t total;     /* tokens of the whole run: prefill + decode */
    const int *lens;
    int *offset;       /* [B] first prefill g of each sequence */
    int *moe_index;    /* [layers] MoE layer number, or -1 for dense layers */
    int moe_layers;
    void **kc, **vc;   /* [layers * B] caches of max_len x kv_w values in kvt (runtime_kv.c), NULL where
                          this rank keeps none (vc: also with MLA's latent cache, whose rows kc holds) */
    int kvt;           /* EPM_KV_F32, _BF16 (epm_run_opts.kv_bf16) or _FP8 (kv_fp8) */
    int kv_w, kv_grp;  /* values per cached row (K or V; MLA's latent row) and per fp8 scale (a head
                          row: head_dim, or the latent row, which decoding attends as one head) */
    int wire16;        /* activation rows travel between ranks as bf16 (epm_run_opts.wire_bf16; with
                          wire_fp8 too: its combine) */
    int wire8;         /* dispatch rows carry the expert input in fp8 (epm_run_opts.wire_fp8) */
    int latent;        /* MLA cached as its latent (runtime_mla.c) */
    epm_weight *mla_ukt; /* [layers] with the latent: kv_b's key half per head, transposed to
                            [heads][kv_lora][qk_nope] (as held), so that absorbing it into the
                            queries is a linear layer */
    int32_t *trace_rec; /* [n_rec][2 + k]: moe layer, g, ids */
    int64_t n_rec, cap_rec;
    epm_run_report *rep;
    int64_t *bytes_local, *kv_local, *load_local, gather_local[EPM_LINK_COUNT];
    int64_t kv_dense_local[EPM_LINK_COUNT]; /* follow: the dense layers' K/V all-gather (not a MoE layer's) */
    int64_t mod_local[EPM_LINK_COUNT];      /* MoD's all-gather of router scores */
    int64_t aside_msgs[2][EPM_LINK_COUNT];  /* the messages of those two: [0] dense K/V, [1] MoD */
    int64_t kv_cache_bytes;  /* the K/V caches this rank holds now (sequences admitted and not ended, and
                                the rows ended ones keep for prefix caching) */
    int64_t kv_cache_peak;   /* and held at most */
    int64_t kv_positions;    /* their positions (epm_run_opts.max_total_tokens' measure) */
    int64_t kv_positions_peak;
    int cuda;          /* ops is the GPU table (ops_cuda_host.h): its errors are checked at every agreement */
    int w16;           /* routed experts are held bf16 (ops->grouped_swiglu_w16 runs them) */
    int w8;            /* or FP8, as stored (ops->grouped_swiglu_w8) */
    int d16;           /* so are the dense matrices (ops->linear_w16; the shared and dense MLPs through
                          ops->grouped_swiglu_w16) */
    int d8;            /* and those of an FP8 checkpoint that may be are FP8 (epm_model_set_dense_dtype;
                          ops->linear_w8, ops->grouped_swiglu_w8); d16 is set too */
    /* the FFN scratch (routed experts, shared experts, dense MLPs), kept
     * from layer to layer and grown when a layer needs more: tens of MB on
     * the bf16 panel path, whose pages a fresh allocation per layer would
     * fault in again every time */
    float *ffn_scr;
    int64_t ffn_scr_n;
    /* the forward pass under way (scheduler.h): its prompt tokens' window g0 .. g0 + pf_n - 1 (the
       pieces' tokens among them: pass_of[g] == chunk), then its decode tokens dg0 .. dg0 + pn - pf_n - 1;
       pass_t and pass_g map a token to its index in the pass's arrays and back */
    int64_t g0, pf_n, dg0, pn;
    int prefill;          /* the pass holds prompt tokens */
    int64_t pass_n;       /* tokens of the pass on all ranks */
    int chunk;            /* the pass's number */
    int32_t *adm;         /* [B] the sequences whose prompt pieces the pass holds, ascending */
    int nadm;
    int *places;          /* [R] sequences each home rank holds at once, at most */
    int max_seqs;         /* the places of all ranks (those of a rank with fewer sequences: theirs) */
    int64_t mine_most;    /* prompt tokens of this rank's places' longest sequences (the memory check's) */
    struct epm_sched *sched;
    const int32_t *const *prompts; /* [B] the batch's prompt tokens (the caller's) */
    int32_t *cached;         /* [B] prompt positions each sequence copied from a donor (prefix caching) */
    int64_t cached_tokens;   /* their sum */
    int64_t *reserve;        /* [B] each sequence's K/V positions, with max_total_tokens or prefix caching */
    int64_t *kv_kept;        /* [B] prefix caching: the rows an ended sequence's caches keep here (0: as held) */
    const int32_t **outputs; /* [B] prefix caching: each sequence's generated tokens (the result's) */
    /* decoding: sequences leave the batch at a stop token */
    uint8_t *fed;         /* [B] it ran a pass whose new token the next sum brings */
    int64_t dec_base;     /* g of this pass's first decode token: N + the tokens decoded before */
    int32_t *dec_seq;     /* [steps * B] the sequence of each decoded token, in trace order (its g - N) */
    int32_t *pass_of;     /* [total] the pass (chunk) that runs each token, -1 none (yet): the trace's pass_ids */
    int32_t *dec_pos;     /* [steps * B] and its position */
    /* Mixture-of-Depths (runtime_mod.c) */
    uint8_t *mod_on;      /* [layers] */
    int32_t *kv_n;        /* [layers * B] cache rows written per sequence (every rank keeps the count) */
    int32_t *kv_base;     /* [B] kv_n of the current layer before this pass */
    uint8_t *sel;         /* [pass] token runs the current layer */
    int32_t *cidx;        /* [pass] its cache row at the current layer */
    int32_t *sel_list;    /* [pass] selected pass indices, in order (grouped by sequence) */
    int32_t *sel_first;   /* [B] index into sel_list of each sequence's first selected token */
    uint8_t *amod_need;   /* [layers] A-MoD scores are taken from this layer's attention */
    double *sc_att, *sc_diag; /* [total] A-MoD scores: mean and self (decode-style) attention received */
    double *tau;          /* [layers] decode thresholds calibrated in prefill */
    int64_t *acc;         /* [3 * pass] fixed-point attention sums */
    float *sc_tmp;        /* [2 * pass] gathered scores */
    int64_t *layer_tokens; /* [layers] tokens that ran each block, this rank */
    /* YaRN (NULL without): RoPE's frequencies, the factor on cos and sin,
     * and DeepSeek-V3's on the softmax scale */
    double *rope_inv, rope_cs, softmax_scale;
} rt;

/* Token g: prompt tokens are 0 .. N - 1, sequence by sequence; decoded
 * tokens follow in the order they are decoded (a step's live sequences in
 * order), so that g is the token's index in the run's trace. */
static inline int seq_of(const rt *r, int64_t g)
{
    if (g >= r->N)
        return r->dec_seq[g - r->N];
    int lo = 0, hi = r->B - 1;
    while (lo < hi) { /* last sequence whose offset <= g */
        int mid = (lo + hi + 1) / 2;
        if (r->offset[mid] <= g)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static inline int pos_of(const rt *r, int64_t g)
{
    if (g >= r->N)
        return r->dec_pos[g - r->N];
    return (int)(g - r->offset[seq_of(r, g)]);
}

/* token g's index in the arrays of the pass under way, and back */
static inline int64_t pass_t(const rt *r, int64_t g) { return g < r->N ? g - r->g0 : r->pf_n + (g - r->dg0); }
static inline int64_t pass_g(const rt *r, int64_t t) { return t < r->pf_n ? r->g0 + t : r->dg0 + (t - r->pf_n); }

/* g travels in two floats' bits: exact for any int64 */
static inline void put_g(float *row, int64_t g) { memcpy(row, &g, sizeof g); }
static inline int64_t get_g(const float *row)
{
    int64_t g;
    memcpy(&g, row, sizeof g);
    return g;
}

/* RoPE on x [n][heads][hd] at positions pos, with the model's frequencies. */
static inline void epm_rt_rope(const rt *r, float *x, int64_t n, int heads, int hd, const int32_t *pos)
{
    if (r->rope_inv)
        epm_rope_freqs(x, n, heads, hd, pos, r->rope_inv, r->rope_cs);
    else
        epm_rope(x, n, heads, hd, pos, r->c->rope_theta);
}

/* y = x W^T (+ b) on the run's kernels, W as held (float32 or bf16). */
epm_status epm_rt_lin(rt *r, const float *x, int64_t n, int in, epm_weight w, const float *b, int out, float *y);

/* What the run holds its routed experts in, and its dense matrices (those
 * that may be FP8; the others bf16 then). */
static inline epm_dtype experts_dtype(const rt *r)
{
    return r->w8 ? EPM_DTYPE_F8_E4M3 : r->w16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
}

static inline epm_dtype dense_dtype(const rt *r)
{
    return r->d8 ? EPM_DTYPE_F8_E4M3 : r->d16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
}

/* Floats of FFN scratch for the rows of offsets over weights held as dt. */
static inline int64_t scratch_floats(epm_dtype dt, const int64_t *offsets, int experts, int hidden, int ffn)
{
    return dt == EPM_DTYPE_F8_E4M3 ? epm_grouped_scratch_w8(offsets, experts, hidden, ffn)
           : dt == EPM_DTYPE_BF16  ? epm_grouped_scratch_w16(offsets, experts, hidden, ffn)
                                   : epm_grouped_scratch(offsets, experts, hidden, ffn);
}

/* Sequence s's output length at most: its own (max_new_per_seq), capped
 * by the run's (at least 1: generated's layout). */
static inline int seq_cap(const rt *r, int s)
{
    const epm_run_opts *o = r->o;
    const int maxnew = o->max_new_tokens > 0 ? o->max_new_tokens : 1;
    return o->max_new_per_seq && o->max_new_per_seq[s] < maxnew ? o->max_new_per_seq[s] : maxnew;
}

/* Positions sequence s's caches hold: its prompt and the tokens it may
 * decode (its own output length, not the run's longest; max_len is the
 * longest of these). */
static inline int64_t kv_rows(const rt *r, int s) { return (int64_t)r->lens[s] + seq_cap(r, s); }

static inline const char *kv_name(const rt *r)
{
    return r->kvt == EPM_KV_FP8 ? "fp8" : r->kvt == EPM_KV_BF16 ? "bf16" : "float32";
}

/* MLA (runtime_mla.c): q, k, v [n][heads][head_dim] of the layer's input x
 * [n][hidden] at positions pos, as the layer loop caches and attends them. */
epm_status epm_mla_qkv(rt *r, int l, const float *x, int64_t n, const int32_t *pos, float *q, float *k, float *v);
/* att [n][heads][head_dim] -> [n][heads][v_head_dim] in place: o_proj's input. */
void epm_mla_compact(const epm_model_config *c, float *att, int64_t n);
/* MLA's latent form: queries q [n][heads][D] (kv_b's key half absorbed) and
 * cache rows krow [n][D] = [normalised latent | roped key part], D =
 * kv_lora_rank + qk_rope_dim, attended as one kv head of width D; then
 * out [n][heads][v_head_dim] = kv_b's value half of each head's attention
 * output att [n][heads][D] (its first kv_lora_rank entries). */
epm_status epm_mla_latent_qk(rt *r, int l, const float *x, int64_t n, const int32_t *pos, int absorbed, float *q,
                             float *krow);
/* Prefill (absorbed 0 above: q [n][heads][head_dim] as the expanded form's):
 * rows krow [len][D] (cached: a cache in r->kvt, else float32) expanded into k, v [len][heads][head_dim], as the expanded form
 * caches them, for attention at the expanded form's cost. */
epm_status epm_mla_expand_rows(rt *r, int l, const void *krow, int64_t cached, int64_t len, float *k, float *v);
/* The K/V cache (runtime_kv.c): bytes of a cache of n values in r->kvt;
 * dst[0..n) = elements c[off..off+n) as float32 (bf16 widened, e4m3 times
 * its row's scale); elements c[off..off+n) = src (rounded to bf16, nearest
 * even; fp8: whole head rows, off and n multiples of r->kv_grp, each
 * scaled by its own scale); and where a fp8 cache's scales and codes lie.
 * rows: the cache's positions (each sequence's caches are sized for its own
 * prompt and output length), where a fp8 cache's codes begin. */
size_t epm_kv_bytes(const rt *r, int64_t n);
/* One cache (a layer's K, V or latent) of rows positions: its bytes. */
size_t epm_kv_cache_bytes(const rt *r, int64_t rows);
/* Rows [0, n) of cache src (of src_rows rows) into cache dst (of dst_rows): as stored, scales with their codes. */
void epm_kv_copy_rows(const rt *r, void *dst, int64_t dst_rows, const void *src, int64_t src_rows, int64_t n);
/* A cache of rows rows made one of to rows, keeping its first rows (or to): cut (the block shrunk where
 * the allocator can; never fails), or grown (NULL where it cannot: c stays valid). */
void *epm_kv_resize(const rt *r, void *c, int64_t rows, int64_t to);
void epm_kv_get(const rt *r, const void *c, int64_t rows, int64_t off, int n, float *dst);
void epm_kv_put(const rt *r, void *c, int64_t rows, int64_t off, int n, const float *src);
const float *epm_kv_scales(const rt *r, const void *c);
const uint8_t *epm_kv_codes(const rt *r, int64_t rows, const void *c);
epm_status epm_mla_latent_out(rt *r, const epm_model_layer *w, const float *att, int64_t n, float *out);
/* r->mla_ukt from the loaded dense weights (with the latent), and its release. */
epm_status epm_mla_setup(rt *r);
void epm_mla_teardown(rt *r);
/* Bytes epm_mla_setup will hold per layer (0 without the latent). */
double epm_mla_setup_bytes(const rt *r);

/* Activation rows between ranks (runtime_wire.c): a payload of n float32
 * values takes epm_wire_floats(n) floats of a row (n, or n/2 rounded up as
 * packed bf16 pairs) and epm_wire_bytes(n) counted bytes; _put writes it
 * (rounding to bf16, nearest even), _get reads it back as float32, _add
 * adds it to acc [n]; _round rounds x [n] in place as _put then _get
 * would. A dispatch row's payload (epm_wire_dispatch_floats, _bytes) is
 * that of the residual stream h, or with fp8 the expert input x as e4m3
 * codes and block scales; _dispatch_input gives the expert input from it
 * (dequantised, or read and normalised with norm). epm_wire_count adds to
 * counted (NULL: nothing) the payload bytes of an exchange of rows of
 * floats payload floats (what it counted in sent) at row_bytes per row:
 * what plan eval models. */
int epm_wire_floats(const rt *r, int n);
int64_t epm_wire_bytes(const rt *r, int n);
int epm_wire_dispatch_floats(const rt *r, int n);
int64_t epm_wire_dispatch_bytes(const rt *r, int n);
void epm_wire_put(const rt *r, float *row, int n, const float *src);
void epm_wire_get(const rt *r, const float *row, int n, float *dst);
void epm_wire_add(const rt *r, const float *row, int n, float *acc);
void epm_wire_round(const rt *r, float *x, int64_t n);
void epm_wire_dispatch_put(const rt *r, float *row, int n, const float *h, const float *x);
void epm_wire_dispatch_input(const rt *r, const float *row, int n, const float *norm, float *xin);
void epm_wire_count(int floats, int64_t row_bytes, const int64_t sent[EPM_LINK_COUNT], int64_t *counted);

/* Online rebalancing (runtime_eplb.c), collective, before pass `pass` runs:
 * a placement taken a lag before comes into service, and when epm_eplb_due
 * (plan.h) says so the ranks sum their counts and take the next one (in
 * service at once, or with a lag from pass + lag). _end: the passes are
 * over, and a placement still in flight comes into service. _teardown
 * frees what a failed run left in flight. */
epm_status epm_eplb_pass(rt *r, int64_t pass);
epm_status epm_eplb_end(rt *r);
void epm_eplb_teardown(rt *r);

/* Collective agreement on st (every rank's first failure wins). */
epm_status epm_rt_sync(rt *r, epm_status st);
/* Before an exchange or all-gather on r->x, whose counts phase is the
 * agreement (epm_xcomm_agree): a failure here is agreed on its own (the
 * others meet it in that counts phase); success costs no collective. */
epm_status epm_rt_ready(rt *r, epm_status st);

/* A layer's attention for the pass's resident tokens (g, h), added to h
 * (runtime_attention.c). */
epm_status epm_rt_attention(rt *r, int l, int64_t n, const int64_t *g, float *h);
/* A layer's MoE (or dense MLP) block over the resident tokens (*pn, *pg,
 * *ph), which follow mode replaces; _skip_block: a MoD layer's attention
 * and block for the selected residents only (runtime_moe.c). */
epm_status epm_rt_moe_block(rt *r, int l, int64_t *pn, int64_t **pg, float **ph);
epm_status epm_rt_skip_block(rt *r, int l, int64_t *pn, int64_t **pg, float **ph);

/* The run's up-front checks (runtime_checks.c): what this rank will hold
 * against the memory it has; and --prefill-chunk, --max-num-seqs,
 * --max-total-tokens and --enable-prefix-caching against the run, setting
 * up the places, reserves and scheduler they size. */
epm_status epm_rt_memory_check(rt *r);
epm_status epm_rt_prefill_check(rt *r);

/* MoD set-up (options, per-layer flags, buffers), after the model is open. */
epm_status epm_mod_setup(rt *r);
void epm_mod_teardown(rt *r);
/* Collective: which pass tokens run layer l (r->sel), their cache rows
 * (r->cidx) and the per-sequence bookkeeping; *all = 1 when every token runs.
 * (n, g, h) are this rank's resident tokens. */
epm_status epm_mod_select(rt *r, int l, int64_t n, const int64_t *g, const float *h, int *all);
/* A-MoD: add query i's attention weights probs [heads][max_len] to the scores
 * of the keys of this pass it saw (local part). */
void epm_mod_attention_add(rt *r, int s, int ci, const float *probs);
/* Collective: sums the pass's attention scores over ranks into sc_att/sc_diag. */
epm_status epm_mod_attention_done(rt *r);

#endif
