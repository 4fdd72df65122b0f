/* epmoe: routing traces — which experts each token chose, layer by layer.
 *
 * Layout (DESIGN.md): safetensors with `topk_ids.{l}` [tokens, k] int32 per
 * MoE layer, experts in descending score; optional `topk_weights.{l}`
 * [tokens, k] float32; optional `seq_ids` [tokens] int32; optional `pass_ids`
 * [tokens] int32, the forward pass each token ran in (numbered from 0 in the
 * order the passes ran; -1: a token that never ran, such as a prompt position
 * prefix caching copied), which `epmoe run --trace-out` writes and online
 * rebalancing's replay in `plan eval` needs. Or NumPy `.npy`
 * int32/int64 [layers, tokens, k].
 *
 * An id of -1 means "no expert in this slot": a token with a dynamic expert
 * count (top-p) pads its row with trailing -1, and a token that
 * Mixture-of-Depths skips at a layer has a row of -1 only. */
#ifndef EPMOE_TRACE_H
#define EPMOE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_trace epm_trace;

/* All ids -1, no weights, no seq_ids, no pass_ids. experts > 0. */
EPM_API epm_status epm_trace_create(int layers, int64_t tokens, int k, int experts, epm_trace **out);
EPM_API void epm_trace_destroy(epm_trace *t);

/* Reads safetensors or .npy (chosen by content, not name). experts = 0 infers
 * max id + 1; otherwise every id must be < experts. */
EPM_API epm_status epm_trace_load(const char *path, int experts, epm_trace **out);
/* Parses an in-memory file (fuzzing). label names it in errors. */
EPM_API epm_status epm_trace_parse(const void *buf, size_t size, const char *label, int experts,
                                   epm_trace **out);
/* Writes the safetensors layout above, atomically. */
EPM_API epm_status epm_trace_save(const epm_trace *t, const char *path);
/* Writes ids only as .npy int32 [layers, tokens, k] (version 1.0), atomically;
 * weights, seq_ids and pass_ids have no place in that format and are not written. */
EPM_API epm_status epm_trace_save_npy(const epm_trace *t, const char *path);

EPM_API int epm_trace_layers(const epm_trace *t);
EPM_API int64_t epm_trace_tokens(const epm_trace *t);
EPM_API int epm_trace_k(const epm_trace *t);
EPM_API int epm_trace_experts(const epm_trace *t);

/* [tokens * k] ids of one layer, row-major. Writable for builders. */
EPM_API int32_t *epm_trace_ids(epm_trace *t, int layer);
EPM_API const int32_t *epm_trace_ids_const(const epm_trace *t, int layer);
/* [tokens * k] gate weights of one layer, or NULL when the trace has none. */
EPM_API const float *epm_trace_weights(const epm_trace *t, int layer);
/* Allocates weights for every layer (zeros) and returns layer's row. */
EPM_API epm_status epm_trace_weights_alloc(epm_trace *t);
EPM_API float *epm_trace_weights_mut(epm_trace *t, int layer);
/* [tokens] sequence ids, or NULL. Without them every token is its own sequence. */
EPM_API const int32_t *epm_trace_seq_ids(const epm_trace *t);
EPM_API epm_status epm_trace_set_seq_ids(epm_trace *t, const int32_t *seq_ids);

/* [tokens] pass ids, or NULL; values >= -1. */
EPM_API const int32_t *epm_trace_pass_ids(const epm_trace *t);
EPM_API epm_status epm_trace_set_pass_ids(epm_trace *t, const int32_t *pass_ids);

/* The distinct passes of pass_ids (ids >= 0): what plan eval times one by
 * one; 0 without pass_ids. */
EPM_API epm_status epm_trace_passes(const epm_trace *t, int64_t *passes);

/* Sequence of token `tok`: seq_ids[tok] if present, else tok. */
EPM_API int64_t epm_trace_seq_of(const epm_trace *t, int64_t tok);

/* Copy of tokens [begin, end) (all layers): plan on one half, evaluate on the other. */
EPM_API epm_status epm_trace_slice(const epm_trace *t, int64_t begin, int64_t end, epm_trace **out);

/* ---- statistics (epmoe trace stats) ---- */
typedef struct epm_trace_layer_stats {
    double imbalance;        /* max expert load / mean expert load */
    int64_t max_load;        /* assignments to the busiest expert */
    double cond_entropy;     /* H(expert at l+1 | top-1 expert at l), bits; 0 for the last layer */
    double topm_share;       /* share of tokens whose top-1 at l+1 is among the m most frequent
                                successors of their top-1 at l */
    double skipped_share;    /* share of tokens with no expert at this layer */
    int64_t transitions;     /* tokens with an expert at l and at l+1: where 0 (the last layer, or
                                skips at one of the two), cond_entropy and topm_share are 0 and
                                mean nothing, and the means leave the layer out */
} epm_trace_layer_stats;

typedef struct epm_trace_stats {
    int layers, experts;
    int top_m;                      /* m used for topm_share */
    int64_t *load;                  /* [layers * experts] assignments per expert */
    epm_trace_layer_stats *layer;   /* [layers] */
    double mean_imbalance, mean_cond_entropy, mean_topm_share; /* (the affinity means: 0 where no
                                                                   layer has transitions) */
    int affinity_layers;            /* layers with transitions, which those means are over */
} epm_trace_stats;

EPM_API epm_status epm_trace_stats_compute(const epm_trace *t, int top_m, epm_trace_stats **out);
EPM_API void epm_trace_stats_destroy(epm_trace_stats *s);

/* ---- synthetic traces (epmoe trace synth) ---- */
typedef struct epm_trace_synth_opts {
    int layers, experts, k;
    int64_t tokens;
    int64_t tokens_per_seq;  /* > 0 writes seq_ids in blocks of this many tokens; 0 = none */
    double zipf_s;           /* load skew: expert popularity ~ 1/rank^s (0 = uniform) */
    double affinity;         /* in [0,1]: probability that a token's next top-1 follows its
                                current top-1's preferred successors */
    int successors;          /* preferred successors per expert (>= 1) */
    uint64_t seed;
    int with_weights;        /* also emit softmax-like gate weights */
    int64_t tokens_per_pass; /* > 0 writes pass_ids in blocks of this many tokens (the passes of a
                                run that takes them in order); 0 = none */
    int64_t drift_tokens;    /* > 0: every this many tokens each layer's popularity is drawn anew
                                (other experts hot, as traffic changes); the preferred successors
                                stay. 0 = one popularity for the whole trace */
    int groups;              /* group-limited routing (DeepSeek's n_group, topk_group): the experts
                                in this many groups of E/groups ids each, a token choosing its k
                                within topk_groups of them (its top-1's group, then others by
                                popularity); 0 or 1 = no groups */
    int topk_groups;         /* 0 = every group (no limit) */
} epm_trace_synth_opts;

EPM_API void epm_trace_synth_opts_init(epm_trace_synth_opts *o);
EPM_API epm_status epm_trace_synth(const epm_trace_synth_opts *o, epm_trace **out);

#ifdef __cplusplus
}
#endif
#endif
