/* Which tokens each forward pass of `epmoe run` holds (internal): the
 * scheduler that admits sequences into their home ranks' places, splits
 * their prompts into chunks and, in mixed batches, puts those chunks in the
 * same pass as the running sequences' decode tokens (vLLM V1's and
 * SGLang's mixed chunked prefill). epm_run follows it; `bench run`
 * simulates a run with it to number a synthetic trace the way the run will.
 * It depends on the lengths and the arrival times alone (and the clock that
 * rank 0 shares), so every rank builds the same passes. */
#ifndef EPM_SCHEDULER_H
#define EPM_SCHEDULER_H

#include <stdint.h>

#include "core.h"

typedef struct epm_sched epm_sched;

/* positions [from, to) of sequence seq's prompt, prefilled in a pass */
typedef struct epm_sched_piece {
    int seq, from, to;
} epm_sched_piece;

typedef struct epm_sched_pass {
    const int32_t *admitted;    /* sequences admitted as this pass begins (their K/V caches are taken now) */
    int n_admitted;
    const int32_t *cached;      /* [n_admitted] with prefix caching: the first positions of each admitted
                                   sequence's prompt whose K/V rows it takes from donor's, copied or
                                   handed over (0: none) */
    const int32_t *donor;       /* [n_admitted] that held or kept sequence (-1: none) */
    const int32_t *evicted;     /* with prefix caching: kept sequences whose rows are dropped as this pass begins,
                                   those of admission k (to make room for it, after admission k - 1 copied
                                   its prefix) at evict_from[k] .. evict_from[k + 1] - 1; its donor among
                                   them (first) hands its rows over instead of their copy */
    const int32_t *evict_from;  /* [n_admitted + 1] */
    const epm_sched_piece *pre; /* prompt pieces, by ascending sequence */
    int n_pre;
    int64_t pre_tokens;         /* their tokens */
    const int32_t *dec;         /* sequences that decode one token, ascending */
    int n_dec;
    int64_t index;              /* the pass's number, from 0 (empty ones not counted) */
    double wake;                /* an empty pass (no prompt piece, no decode token: every sequence left
                                   is still to arrive): when the next one arrives */
} epm_sched_pass;

typedef struct epm_sched_opts {
    int batch;
    const int *lens;   /* [batch] prompt lengths, each >= 1 (read as it goes: kept by the caller) */
    int ranks;         /* home ranks: sequence s's is s mod ranks */
    int max_num_seqs;  /* 0: all at once (epm_run_places) */
    int64_t chunk;     /* > 0: at most this many of a rank's prompt tokens a pass; 0: whole prompts */
    int separate_prefill;       /* a pass holds prompt tokens or decode tokens, never both: decoding waits while any
                          rank prefills (vLLM before V1, SGLang without --enable-mixed-chunk) */
    const double *arrival; /* [batch] or NULL: when each sequence arrives (seconds, nondecreasing, kept by the
                              caller); one is admitted no earlier. NULL: all at 0 */
    int chunk_counts_decode; /* chunk is a rank's tokens a pass, its decode tokens first (vLLM's
                                max_num_batched_tokens): its prompt pieces take what they leave */
    const int64_t *reserve; /* [batch] K/V positions each sequence's caches take from its admission to its end
                               (kept by the caller); read only with a pool */
    int64_t pool;      /* > 0: positions a rank's caches may hold at once (SGLang's max_total_tokens, TGI's
                          max_batch_total_tokens): a sequence is admitted only when its reserve fits in what
                          the held ones leave; each <= pool. 0: places alone */
    int shared_pool;   /* every rank holds every admitted sequence's caches (follow mode): one pool, and
                          admission in order across ranks, stopping at the first arrived sequence with a
                          place that does not fit (vLLM's first come, first served); a prefix's donor
                          may be any rank's sequence */
    const int32_t *const *prompts; /* [batch] prompt tokens (kept by the caller); read with prefix_caching */
    int prefix_caching; /* an admitted sequence copies the K/V rows of the longest prompt prefix it shares with
                           a held or kept sequence of its rank (shared_pool: of any rank) that earlier passes
                           fed, and prefills from there; never its last prompt token, whose logits give its
                           first (vLLM's automatic prefix caching). An ended sequence's rows (its prompt and
                           the outputs it fed) are kept and give prefixes until its rank needs the room:
                           kept rows and held reserves stay within the pool (vLLM's blocks, free ones
                           keeping their rows), or without one within the places' largest reserves
                           (shared_pool: every rank's places'). An admission that does
                           not fit beside them takes over its donor's rows if that is kept, then drops the
                           least recently used kept sequences (ended or last giving first); a kept donor
                           that is all prefix is taken over in any case. Needs reserve. */
    const int32_t *const *outputs; /* [batch] or NULL: each sequence's tokens after its prompt, as they come (kept
                                      by the caller): a held or kept sequence's fed ones extend its prefix */
    int defer_min; /* with prefix caching, > 0: a sequence that would find at least this many prompt positions
                      more once a held sequence still prefilling them has than the sequences done prefilling
                      give it (the same system prompt, a request's n samples) waits for the whole span, holding back its rank's later ones (a shared pool: all later
                      ones), rather than computing them too (SGLang's in-batch prefix caching, which defers at
                      32). 0: never */
} epm_sched_opts;

epm_status epm_sched_create(const epm_sched_opts *o, epm_sched **out);
void epm_sched_destroy(epm_sched *s);

/* The next pass, as it begins at time now (the arrivals' clock), into *p
 * (valid until the next call): 1, or 0 when every sequence has ended. A
 * sequence whose prompt's last piece ran in the previous pass decodes in
 * this one unless epm_sched_end ended it. The pass is empty only when
 * nothing that has arrived is left to run: the caller waits until p->wake
 * and asks again. */
int epm_sched_next(epm_sched *s, double now, epm_sched_pass *p);

/* Sequence seq ended (its last token came in the previous pass): its place
 * is free for its rank's next waiting sequence. Returns the K/V rows it
 * keeps for prefix caching (its prompt and the outputs it fed, which the
 * caller keeps until a pass evicts it), 0 (its caches are freed), or -1
 * where seq is not held (never admitted, or ended already): nothing. */
int epm_sched_end(epm_sched *s, int seq);

/* A home rank's places: how many of its sequences it holds at once. */
int epm_run_places(int batch, int ranks, int max_num_seqs, int q);

#endif
