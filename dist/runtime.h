/* The distributed layer loop of `epmoe run` (internal). Sequences are spread
 * over ranks (sequence s lives on rank s mod R, its home); each MoE layer is
 * expert-parallel: route -> dispatch -> local experts -> combine, in mode
 * home or follow (DESIGN.md). dist/ calls comm/ and kernels/ only through
 * xcomm.h and ops.h. */
#ifndef EPM_RUNTIME_H
#define EPM_RUNTIME_H

#include "core.h"
#include "epmoe/eval.h"
#include "epmoe/generate.h"
#include "epmoe/placement.h"
#include "epmoe/trace.h"
#include "scheduler.h"

/* Mixture-of-Depths: where the scores that pick the tokens running a block
 * come from (docs in dist/README.md or the README's MoD section). */
typedef enum epm_mod_source {
    EPM_MOD_OFF = 0,
    EPM_MOD_ROUTER,    /* a learned vector per layer: model.layers.{l}.mod_router.weight [1, hidden] . h */
    EPM_MOD_ATTENTION, /* A-MoD: attention the token received in the previous attention it ran */
    EPM_MOD_SCHEDULE   /* a fixed, position-staggered schedule of density capacity */
} epm_mod_source;

typedef struct epm_run_opts {
    const char *model_dir;
    const epm_placement *placement; /* NULL = contiguous over the run's ranks */
    const char *placement_label;    /* its file, named in errors (NULL: none) */
    int eplb_interval;              /* > 0: online expert rebalancing (vLLM's and SGLang's --enable-eplb):
                                       every this many forward passes the ranks sum the (token, expert)
                                       pairs each expert was chosen for over the last eplb_window passes
                                       and all take the eplb placement of those loads; a rank reads the
                                       experts it gains from the checkpoint (or copies them from a rank
                                       that holds them: eplb_from_peers) and drops those it loses.
                                       The same tokens (but with topology-aware gating, whose bias follows
                                       the placement); the bytes follow the placement of each pass */
    int eplb_window;                /* those passes (0: eplb_interval; at most eplb_interval) */
    int eplb_slots;                 /* experts a rank holds a MoE layer (0: the placement's most; spares
                                       hold replicas of the hottest) */
    int eplb_redundant_given;       /* instead of eplb_slots: eplb_redundant physical experts beyond the
                                       model's (vLLM's num_redundant_experts), so (experts + it) / ranks
                                       slots a rank, which must divide */
    int eplb_redundant;
    double eplb_min_gain;           /* a layer moves only if its busiest rank's share of the window's
                                       counts drops by this fraction (epm_plan_rebalance); 0 = always */
    int eplb_from_peers;            /* online rebalancing copies a gained expert from a rank that holds
                                       it (epm_placement_moves names which; as vLLM and SGLang do between
                                       GPUs) rather than reading it from the checkpoint: traffic between
                                       ranks that plan eval prices, no read of the file */
    int eplb_lag;                   /* asynchronous rebalancing (vLLM's use_async): a placement taken at a
                                       boundary comes into service this many passes later (0: at once;
                                       below eplb_interval), its gained experts fetched meanwhile: the
                                       checkpoint's pages read ahead by the kernel, or the copies posted at
                                       the boundary and waited for at the switch; the passes between run
                                       under the placement before */
    int eplb_groups;                /* the expert groups online rebalancing keeps whole on a node where
                                       they divide over the nodes (DeepSeek EPLB's hierarchical policy;
                                       epm_plan_rebalance's groups): 0 = the model's n_group (vLLM's
                                       and SGLang's choice), 1 = none (the global policy) */
    int exchange_no_room;           /* exchanges offer no room to receive into in their counts phase, so
                                       that each agrees again after it that every rank could allocate (as
                                       before the room; bench run --room's baseline) */
    int exchange_no_eager;          /* no rows ride in the exchanges' counts messages: every hop's rows wait
                                       for a step after its counts (as before; bench run --room's middle) */
    epm_mode mode;
    int virtual_nodes;
    int max_new_tokens;
    const int *max_new_per_seq;     /* [batch] or NULL: sequence s ends ("length") after min(this,
                                       max_new_tokens) tokens and leaves the batch; each >= 1 */
    epm_sampling sampling;          /* how each new token is chosen (zero: greedy), on its sequence's home
                                       rank; the draws depend on (seed, sequence, step) alone */
    const int32_t *stop_ids;        /* a sequence ends when it generates one of these (it is kept in the
                                       output); it then leaves the batch: no compute, no exchange */
    int n_stop;
    const epm_sampling *seq_sampling; /* [batch] or NULL: sequence s's own sampling and stop tokens
                                       (its stop_ids and n_stop), in place of sampling, stop_ids and
                                       n_stop: requests that each bring their own
                                       (epm_request_sampling_apply) */
    int logprobs_on;                /* return each generated token's log-probability under the model
                                       (log_softmax of its logits: vLLM's raw logprobs) */
    int top_logprobs;               /* and the most likely tokens' at each step, 0 .. EPM_MAX_LOGPROBS */
    int prompt_logprobs_on;         /* return each prompt token's log-probability given the tokens before
                                       it (vLLM's prompt_logprobs, what perplexity and lm-eval's
                                       loglikelihood read; a sequence's first token has none): the LM
                                       head then runs on every prompt row, a prefill pass's at a time */
    int prompt_top_logprobs;        /* and the most likely tokens' at each position, 0 .. EPM_MAX_LOGPROBS */
    double max_memory;              /* bytes a rank may hold (weights as held + KV cache + an estimate of
                                       a prefill pass's activations); 0 = the machine's available memory
                                       shared by the node's ranks */
    const char *ops;                /* "ref" or "blas" */
    const epm_trace *route_from;    /* replay routing from a trace (NULL = the gate decides); a row of -1
                                       skips the layer's block, as MoD recorded it */
    int keep_logits;                /* keep every prefill position's logits (else last only) */
    int drop_logits;                /* keep none (res->logits NULL, unless keep_logits): a caller that reads
                                       tokens alone spares rank 0 batch x vocab floats and the prefill
                                       their gather; the tokens are the same */
    int64_t prefill_chunk;          /* > 0: prefill in passes of at most this many of each rank's prompt
                                       tokens (vLLM's chunked prefill: activations bounded by the chunk,
                                       not the prompts); a pass's queries attend the rows earlier passes
                                       cached. Not with MoD router or attention. 0: one pass */
    int chunk_counts_decode;        /* prefill_chunk is a rank's token budget a pass, decode tokens included
                                       and first (vLLM's max_num_batched_tokens): a prompt's chunk takes
                                       what the rank's decoding sequences leave; at least the rank's places.
                                       Nothing changes with prefill_chunk 0 or separate_prefill */
    int separate_prefill;           /* a pass holds prompt tokens or decode tokens, never both: decoding
                                       waits while any rank prefills (vLLM before V1; SGLang without
                                       --enable-mixed-chunk). 0: mixed batches, as vLLM V1: each pass
                                       holds every decoding sequence's next token and the prompt
                                       chunks of those admitted (scheduler.h) */
    int max_num_seqs;               /* > 0: at most this many sequences decode at once (vLLM's
                                       max_num_seqs), shared out over their home ranks (rank q has
                                       N / R, the first N mod R one more, at least one each, as each
                                       data-parallel attention rank has its own): a rank's other
                                       sequences wait, in order, and each is admitted (prefilled, its
                                       K/V caches taken) when one of that rank's ends and gives its
                                       caches back: continuous batching, K/V memory for a rank's places
                                       rather than its sequences. Each sequence's tokens are those of the
                                       whole batch at once (with kernels whose rows do not depend on the
                                       pass, as the reference's; else to their rounding), and so are the
                                       counted bytes where no expert is replicated (a replica is picked
                                       per token by its place in the trace, which admission changes;
                                       plan eval on the run's own trace predicts them either way). Not
                                       below the batch with MoD router or
                                       attention, whose decode thresholds one prefill of the batch
                                       sets. 0: all */
    int prefix_caching;             /* automatic prefix caching (vLLM's --enable-prefix-caching): an admitted
                                       sequence starts with the K/V rows of the longest prompt prefix it
                                       shares with the rows of a sequence its rank holds or kept (follow
                                       mode: any rank's; every rank holds every cache): its prompt and the
                                       outputs it fed in earlier passes. It prefills the rest, never less
                                       than its last token. An ended sequence's rows are kept until an
                                       admission needs their room (the pool, which the memory check then
                                       counts, else its places' largest reserves), least recently used
                                       first; they are copied, or handed over where the donor is kept and
                                       all prefix or the room is short (a conversation's next turn). The
                                       same tokens (with kernels and routing whose rows do not depend on
                                       the pass); in the recorded trace the copied positions' rows
                                       are -1 (not computed), which plan eval skips. Not with MoD
                                       (whose cache rows are not positions), a routing replay, all logits or
                                       prompt logprobs (which the copied positions do not compute) */
    int prefix_defer;               /* with prefix_caching: a sequence that would find this many prompt
                                       positions more once a held sequence still prefilling them has (the
                                       same system prompt arriving together, a request's n samples) waits
                                       for it rather than computing them too, holding back its rank's later
                                       ones (SGLang's in-batch prefix caching). 0: 32, SGLang's; < 0: never */
    int64_t max_total_tokens;       /* > 0: the K/V positions a rank's caches may hold at once (SGLang's
                                       --max-total-tokens, TGI's --max-batch-total-tokens): a sequence
                                       reserves its prompt and its output cap (its caches' positions)
                                       when it is admitted and gives them back when it ends, and is
                                       admitted only when they fit beside those held, in order (a rank's
                                       next one that does not fit holds back its later ones). Home mode:
                                       each home rank's pool; follow mode: one for the batch, as every
                                       rank holds every admitted sequence's caches. Each sequence must
                                       fit alone. The memory check counts the pool's K/V bytes where they
                                       are fewer than the places'. Tokens as without it, as with
                                       max_num_seqs. 0: places alone */
    double top_p;                   /* > 0: dynamic expert count, experts in score order until their
                                       probability mass reaches top_p, at most k ('Harder Tasks Need
                                       More Experts') */
    double timeout_s;               /* > 0: deadline of every wait for the other ranks */
    double ta_strength;             /* > 0: topology-aware gating (TA-MoE): each expert's log-probability
                                       is lowered by ta_strength x the link cost (0 same rank, 1 same
                                       node, intra/inter GB/s ratio other node) from the token's rank
                                       to the expert's nearest replica; 0 changes nothing */
    const char *a2a;                /* row exchange: alltoallv|p2p|staged|nccl; NULL = EPM_A2A or alltoallv */
    const char *a2a_hier;           /* hierarchical exchange: auto|on|off; NULL = EPM_A2A_HIER or auto */
    int ta_node_cap_on;             /* TA-MoE's target dispatch distribution as a cap: per MoE layer, at */
    double ta_node_cap;             /* most this share of a rank's tokens may choose an expert on another
                                       node (the rest choose among the experts of their node) */
    epm_mod_source mod;             /* Mixture-of-Depths layer skipping (EPM_MOD_OFF: every token runs every block
                                       but a replay's rows of -1) */
    double mod_capacity;            /* fraction of each sequence's tokens that run a MoD layer, (0, 1]; 0 = 1 */
    const char *mod_layers;         /* the MoD layers, e.g. "1-5,7" (0-based); NULL = every layer but the first */
    int experts_f32;                /* hold routed experts in float32 even when the checkpoint's are bf16 and
                                       the kernels take bf16 weights (which halves their memory: default) */
    int experts_bf16;               /* hold an FP8 checkpoint's routed experts dequantised to bf16 even when
                                       the kernels take FP8 weights (held as stored: default, half of bf16) */
    int dense_f32;                  /* the same for the dense weight matrices (attention, embedding, LM
                                       head, shared experts, dense MLPs: epm_model_set_dense_dtype) */
    int dense_bf16;                 /* hold an FP8 checkpoint's dense matrices dequantised to bf16 (default:
                                       attention projections and shared and dense MLPs FP8 as stored) */
    int mla_expanded;               /* DeepSeek's MLA: cache a key and a value per head (transformers'
                                       arithmetic) rather than the latent (the default: kv_lora_rank +
                                       qk_rope_head_dim floats per token and layer) */
    int kv_bf16;                    /* hold the K/V cache in bf16 (half of float32's memory and of the bytes
                                       decoding streams; each value rounded to bf16 as it is stored) rather
                                       than float32 (the default, the checkpoints' reference arithmetic) */
    int kv_fp8;                     /* hold it in float8 e4m3 with a float32 scale per cached head row
                                       (vLLM's fp8_e4m3 cache dtype: a quarter of float32's memory, plus 4
                                       bytes per head row; each row scaled by its largest magnitude over
                                       448 as it is stored). Not with kv_bf16 */
    int wire_bf16;                  /* activations travel between ranks in bf16, as DeepEP's and vLLM's
                                       dispatch and combine send them (half of float32's bytes: plan eval's
                                       dtype bytes 2): every MoE layer's expert inputs are rounded to bf16,
                                       on every rank, whether their expert is remote or not; so are the
                                       partial sums of the combine, and in follow mode the residual streams
                                       and the K/V rows the ranks all-gather. Default float32 */
    const double *arrival;          /* [batch] or NULL: seconds from the run's start at which each sequence
                                       arrives (an online serving run; epm_arrivals draws them as a
                                       request rate), in order: none is admitted before it arrives, and
                                       when every sequence left is still to arrive the ranks wait. TTFT
                                       and end to end count from arrival. NULL: all at the start (an
                                       offline batch). Not with MoD router or attention, nor a replay */
    int wire_fp8;                   /* home mode: dispatch rows carry each token's expert input (the
                                       normalised hidden state) in float8 e4m3 with a float32 scale per
                                       128 values, as DeepEP's fp8 dispatch (hidden + 4 x ceil(hidden /
                                       128) bytes: plan eval's dispatch bytes), on every rank, remote
                                       or not; the combine is bf16 as with wire_bf16. Not with it */
} epm_run_opts;

/* A latency's distribution over requests (or over tokens, for the gaps
 * between them), in seconds: numpy's percentiles (linear between ranks),
 * as vLLM's benchmark_serving reports them. n = 0: nothing measured (all
 * fields 0). */
typedef struct epm_latency {
    double mean, p50, p90, p99, max;
    int64_t n;
} epm_latency;

/* n request arrival times into out[0, n) (seconds, the first at 0), drawn
 * as vLLM's benchmark_serving draws --request-rate arrivals: intervals of a
 * gamma distribution of shape burstiness (1: a Poisson process; below 1
 * burstier, above 1 steadier) and mean 1 / rate; rate INFINITY: all at 0.
 * Deterministic in seed. */
epm_status epm_arrivals(int n, double rate, double burstiness, uint64_t seed, double *out);

/* The distribution of the finite values of v[0, n) (NaN: none). */
epm_status epm_latency_of(const double *v, int64_t n, epm_latency *out);

/* The gaps between consecutive tokens of each of batch sequences whose
 * n[s] tokens were made at times t[s][0 .. n[s]) ([batch][stride], as
 * epm_run_result's t_token): gaps[s][j] = t[s][j] - t[s][j - 1] for
 * 0 < j < n[s], NaN elsewhere (the inter-token latency's samples). */
void epm_token_gaps(const double *t, const int *n, int batch, int stride, double *gaps);

typedef struct epm_run_report {
    int ranks, nodes, moe_layers;
    int64_t prefill_tokens, decode_tokens;
    int prefill_passes;    /* forward passes that held prompt tokens (epm_run_opts.prefill_chunk), over
                              every admission; mixed ones too */
    int max_num_seqs;      /* sequences that decoded at once, at most (epm_run_opts.max_num_seqs, or the
                              batch) */
    int64_t decode_steps;  /* passes that held decode tokens (each of every decoding sequence's next) */
    int64_t mixed_passes;  /* passes that held both */
    double t_prefill, t_decode; /* the passes' seconds, a mixed one's shared out by its tokens */
    double t_attention, t_gate, t_dispatch, t_experts, t_combine;
    int64_t *bytes;        /* [moe_layers][EPM_LINK_COUNT] dispatch+combine, all ranks */
    int64_t *kv_bytes;     /* [moe_layers][EPM_LINK_COUNT] follow all-gather */
    int64_t *rank_load;    /* [moe_layers][ranks] (token, expert) pairs served */
    int64_t gather_bytes[EPM_LINK_COUNT];
    int64_t weight_bytes_max; /* largest checkpoint bytes any rank read */
    int64_t weight_bytes_sum;
    /* Serving latencies, on rank 0's clock at the end of the pass that made each token, from each
     * sequence's arrival (epm_run_opts.arrival; offline: the first pass's start): time to first
     * token (queueing for a place included), time per output token after the first ((finish - first) / (tokens - 1), of
     * sequences with two or more), the gaps between a sequence's consecutive tokens (inter-token
     * latency, over all tokens: where prefill passes stall decoding), and end to end */
    epm_latency ttft, tpot, itl, e2e;
    double t_wait;         /* seconds the ranks had nothing to run, waiting for a request to arrive */
    int64_t cached_prompt_tokens; /* prompt tokens whose K/V rows came from a held or kept sequence's
                                     (prefix caching: copied or handed over) rather than computed:
                                     prefill_tokens leaves them out */
    int64_t kv_positions_max;    /* K/V positions the fullest rank's caches held at once (each admitted
                                    sequence's prompt and output cap, and with prefix caching the rows
                                    ended ones keep: what max_total_tokens bounds) */
    int64_t kv_cache_bytes_max;  /* KV cache memory of the fullest rank at its fullest (follow keeps every
                                    live sequence's; with max_num_seqs those of the sequences decoding;
                                    with prefix caching the kept rows too) */
    int64_t wire_bytes[EPM_LINK_COUNT]; /* what went over the links (differs from bytes only on the
                                           hierarchical path, which forwards through gateways) */
    int64_t wire_msgs[EPM_LINK_COUNT];
    int64_t dense_kv_bytes[EPM_LINK_COUNT]; /* follow mode: the K/V all-gather of layers without experts
                                               (DeepSeek's first dense layers), in wire_bytes but in no MoE
                                               layer's kv_bytes: plan eval models MoE layers, and predicts
                                               wire_bytes less these and mod_score_bytes */
    int64_t mod_score_bytes[EPM_LINK_COUNT]; /* Mixture-of-Depths: the all-gather of router scores (2 floats a
                                                token and layer), in wire_bytes, not in the model's bytes */
    int64_t dense_kv_msgs[EPM_LINK_COUNT], mod_score_msgs[EPM_LINK_COUNT]; /* their messages, in wire_msgs */
    int hierarchical;      /* exchanges took the hierarchical (2DH) path */
    int cpu_threads;       /* OpenMP threads of rank 0's CPU kernels: OMP_NUM_THREADS, else its share of its
                              machine's cores (kernels/cpu_threads.c) */
    int64_t hops, hops_agreed; /* the exchanges' hops (one a flat exchange), and those that agreed again after
                                  their counts that every rank could allocate (some rank lacked room), rank 0's */
    int64_t hops_fused;    /* hops whose rows all rode in their counts messages (no step after them) */
    int route_from_run;    /* epm_run_opts.route_from was recorded by a run of this batch (its prompt
                              tokens numbered as here), so its decoded tokens and passes were checked
                              against this run's; 0: another trace, its rows taken in this run's
                              token order, which plan eval of it does not predict */
    int eplb_rebalances;   /* online rebalancing (epm_run_opts.eplb_interval): placements taken */
    int64_t eplb_moved;    /* experts the ranks gained over them (a replica on a rank that lacked it) */
    int64_t eplb_bytes;    /* checkpoint bytes the ranks read for them */
    int64_t eplb_peer_bytes[EPM_LINK_COUNT]; /* or copied between ranks (epm_run_opts.eplb_from_peers), per
                                                link class (plan eval's move_bytes; what the copies put on
                                                the wire is in eplb_wire_bytes and _msgs, not in wire_bytes) */
    int64_t eplb_expert_bytes; /* bytes of one expert copied so (epm_model_expert_packed_bytes; 0 when
                                  they come from the checkpoint): plan eval's expert_bytes */
    int64_t eplb_wire_bytes[EPM_LINK_COUNT], eplb_wire_msgs[EPM_LINK_COUNT];
    int eplb_lag;          /* the passes from a boundary to its placement's service (epm_run_opts.eplb_lag) */
    int eplb_groups;       /* the expert groups its placements kept whole on nodes (0: none), and
                              whether they did (epm_eplb_hierarchical: the groups divide over the nodes) */
    int eplb_hierarchical;
    double t_eplb;         /* seconds rank 0 spent at the boundaries (the sum, the plan, the loads), those
                              that took nothing too, and with a lag at the switches (the wait, the loads) */
    const char *transport; /* the row exchange's transport */
    int num_layers;
    int64_t *layer_tokens;  /* [num_layers] tokens that ran each block (all ranks, prefill + decode);
                               fewer than prefill + decode tokens only where MoD skipped some */
    epm_dtype expert_dtype; /* what routed experts were held in: F32, or BF16 as the checkpoint stores them */
    epm_dtype dense_dtype;  /* what the dense weight matrices were held in, the same way */
    const char *kv_cache;   /* what a KV cache row holds: "keys-values", or for MLA "mla-latent" or
                               "mla-expanded" (epm_run_opts.mla_expanded) */
    int kv_row_floats;      /* its width per token and layer (epm_model_kv_floats): plan's kv_dim */
    epm_dtype kv_dtype;     /* what the cache holds each value in: F32, BF16 (epm_run_opts.kv_bf16), or
                               F8_E4M3 (kv_fp8, with a scale per head row);
                               rows travel between ranks in wire_dtype either way */
    epm_dtype wire_dtype;   /* what activation rows travel between ranks in: F32, BF16 (wire_bf16), or
                               F8_E4M3 (wire_fp8: dispatch; its combine is bf16) */
} epm_run_report;

typedef struct epm_run_result {
    int batch, vocab;
    int *lens;          /* [batch] prompt lengths */
    int32_t *generated; /* [batch][max_new_tokens]; sequence s's first gen_len[s] are its tokens, the
                           rest -1 */
    int *gen_len;       /* [batch] tokens generated (a stop token included) */
    int *stopped;       /* [batch] 1: ended at a stop token (finish_reason "stop"), 0: at
                           max_new_tokens ("length") */
    float *logprob;     /* with logprobs_on: [batch][max_new_tokens], the generated token's */
    int top_logprobs;   /* and at each of those steps the most likely tokens, most likely first: */
    int32_t *top_ids;   /* [batch][max_new_tokens][top_logprobs] */
    float *top_lp;      /* [batch][max_new_tokens][top_logprobs] */
    float *logits;      /* rank 0: [total prefill tokens][vocab] (keep_logits) or [batch][vocab]; NULL with
                           drop_logits */
    int logits_kept;    /* every rank: the run kept them (on rank 0) */
    float *prompt_lp;   /* rank 0, with prompt_logprobs_on: [total prefill tokens] (sequence s's token p at
                           offset(s) + p), its log-probability after the tokens before it; NaN at p = 0 */
    int prompt_top;     /* and at each of those the most likely tokens, most likely first: */
    int32_t *prompt_top_ids; /* [total prefill tokens][prompt_top] */
    float *prompt_top_lp;    /* [total prefill tokens][prompt_top] */
    epm_trace *trace;   /* rank 0: the routing of every MoE layer, prefill then decode tokens */
    epm_placement *placement; /* every rank: the placement the last pass ran under (online rebalancing's
                                 last; else the run's own), its info's mode the run's */
    double *t_arrive;   /* [batch] seconds from the run's start to each sequence's arrival (0 offline), */
    double *t_admit;    /*         to the pass that admitted it, */
    double *t_first;    /*         to the end of the pass that made its first token (NaN: none), */
    double *t_done;     /*         and to the end of its last pass (report.ttft and the others) */
    double *t_token;    /* [batch][max(max_new_tokens, 1)] (generated's layout) and to the end of the pass
                           that made each of its tokens */
    epm_run_report report;
} epm_run_result;

/* Collective over all ranks: every rank passes the same prompts. Results on
 * rank 0 (the others get the report only). Any rank's failure is returned on
 * every rank with the failing rank named. */
epm_status epm_run(const epm_run_opts *o, int batch, const int *lens, const int32_t *const *prompts,
                   epm_run_result **out);
void epm_run_result_destroy(epm_run_result *r);

#endif
