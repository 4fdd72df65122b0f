/* epmoe: the cost model that `plan eval` predicts and `epmoe run` counts.
 *
 * For each token and MoE layer (see DESIGN.md):
 *   src  = home rank (mode home) or the rank the token is on now (mode follow;
 *          the home rank at the first MoE layer)
 *   dst  = epm_route_pick(placement, layer, ids, k, src, token) per chosen expert
 *   D    = the distinct ranks in dst (a token is sent once per rank)
 *   home:   dispatch src -> d and combine d -> src, for d in D, d != src
 *   follow: dispatch src -> d for d in D, d != src; combine d -> c for d in D,
 *           d != c, where c = dst[0] (the top-1 replica) becomes the token's
 *           rank for the next layer; and the token's new K/V row (kv_row_bytes)
 *           goes from src to every other rank (the all-gather of the
 *           replicated KV cache). After the last layer the token's state goes
 *           from its rank to its home rank (gather_bytes).
 * Each transfer moves hidden_bytes = hidden * dtype size (a dispatch
 * dispatch_bytes where that is set: fp8 rows with their scales) and is
 * counted under the link class of its two ranks. A token whose row starts with -1 skips the
 * layer: it moves nothing, writes no K/V row and, in follow, stays where it
 * is; trailing -1 ids (dynamic k) are simply not dispatched.
 * The expert load of a rank is the number of (token, expert) pairs it serves.
 * Home rank of a token = its sequence id mod ranks.
 *
 * Modelled time (a model for comparing placements, not a measurement):
 *   t_compute = max_load * flops_per_assignment / (gpu_tflops * 1e12)
 *   t_comm    = T(dispatch + combine) + T(K/V all-gather, follow only)
 *   T(phase)  = max over ranks of max(send time, receive time), where a rank's
 *               time = intra bytes / (intra_gbps * 1e9) + inter bytes /
 *               (inter_gbps * 1e9), plus its messages times the class's
 *               latency (epm_eval_opts.intra_latency_s, inter_latency_s; 0
 *               by default): a phase ends with its busiest rank, send and
 *               receive overlap, the two link classes do not.
 *   t_total   = sum over layers of t_compute + t_comm, plus T(final gather)
 *               in follow mode, plus with online rebalancing T(the experts
 *               each placement taken copies between ranks).
 * A trace with pass_ids is timed pass by pass, as a run waits: the max_load
 * of t_compute, each phase's busiest rank and the final gather are those of
 * each pass's tokens, summed over passes (so neither traffic that moves its
 * hot experts about nor a rebalanced run's placements can hide a pass's
 * straggler); without pass_ids the whole trace is one pass. The per-layer
 * max_load, max_send_bytes and max_recv_bytes below are the whole trace's,
 * as the run counts them.
 *
 * The hierarchical path (epm_eval_opts.hierarchical; comm/hier_route.h's
 * routes): the counts above stay the model's, while the wire, and with it
 * the modelled time, is the path's. A dispatch goes once from src to each
 * of its ranks on src's node and to a gateway of src's node for each other
 * destination node (epm_hier_gateways, keyed by the token's number: none
 * when src or a local destination has the local index, one copy where a
 * gateway serves several nodes), which sends it once to that node's rank of
 * the same local index, itself a destination, which fans it out to the rest
 * there. A combine (and the
 * final gather) from d to c on another node goes to the rank of d's node
 * with c's local index, then to c. The K/V all-gather is flat either way.
 * Per rank, a phase's send and receive bytes are then those of every hop. */
#ifndef EPMOE_EVAL_H
#define EPMOE_EVAL_H

#include <stdint.h>

#include "epmoe/cluster.h"
#include "epmoe/placement.h"
#include "epmoe/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_eval_opts {
    epm_mode mode;
    int64_t hidden_bytes;  /* bytes of one hidden vector on the wire */
    int64_t kv_row_bytes;  /* bytes of one token's K and V rows for one layer (follow) */
    double flops_per_assignment; /* expert FLOPs per (token, expert): 6 * hidden * ffn for SwiGLU */
    int64_t dispatch_bytes; /* bytes of one dispatched row where it differs from hidden_bytes (epmoe
                               run --wire-dtype fp8: hidden + 4 x ceil(hidden / 128)); 0 = hidden_bytes.
                               Appended last, so the fields before it keep their places */
    /* Online rebalancing (epmoe run --eplb-interval, --eplb-window, --eplb-slots): the trace's
     * pass_ids are replayed in order; before pass q, when epm_eplb_due(eplb_interval, q), the
     * placement becomes epm_plan_rebalance (with eplb_min_gain) of the one before over the (token,
     * expert) pairs of the passes that epm_eplb_counts since the last due boundary, exactly as the run
     * takes it (the counts are spent at every boundary, a placement taken or not), and each token is
     * charged under the placement of its pass. eplb_interval 0 (the default): the placement alone.
     * eplb_slots 0: the placement's most experts on a rank. */
    int eplb_interval, eplb_window, eplb_slots;
    double eplb_min_gain; /* epm_plan_rebalance's min_gain (epmoe run --eplb-min-gain); 0 = take each */
    /* Bytes of one routed expert copied between ranks when a placement is taken (epmoe run
     * --eplb-from peers, whose report's eplb_expert_bytes this is: epm_model_expert_packed_bytes).
     * Each replica a placement adds goes from the rank epm_placement_moves names, at the boundary,
     * before the pass after it: move_bytes, and in t_moves and t_total as epm_eval_moves_path
     * prices them (on the hierarchical path where hierarchical and eplb_lag is 0, as the run's
     * copies between passes go; a lag's copies go flat). 0 (the default) = none: the run's
     * default reads them from the checkpoint */
    int64_t expert_bytes;
    /* Or read from the checkpoint (the run's default, --eplb-from checkpoint): bytes of one routed
     * expert as the checkpoint stores it (what the run's report sums over its reads, eplb_bytes).
     * Each replica a placement adds is read by the rank that gains it, at the boundary: read_bytes;
     * with read_gbps (the GB/s one rank reads at) also t_reads, in t_total: a rank's reads one after
     * another, the ranks side by side, the boundary waiting for the last. 0 (the defaults) = not
     * counted, not priced. A run copies or reads: not both with expert_bytes */
    int64_t read_expert_bytes;
    double read_gbps;
    /* Asynchronous rebalancing (epmoe run --eplb-lag): a placement taken at a boundary serves from
     * eplb_lag passes later (the first pass at or after that number; the passes before it run
     * under the one before), its copies or reads overlapping those passes: the modelled time
     * charges only what they take beyond those passes' layers' modelled seconds. A placement still
     * waiting when the trace ends is taken after its last pass. 0 (the default): at once */
    int eplb_lag;
    /* The expert groups the run's rebalancing keeps whole on nodes (epm_plan_rebalance's groups:
     * the model's n_group, as epmoe run takes it); 0 (the default) = none */
    int eplb_groups;
    /* 1: the run's exchanges take the hierarchical path (epmoe run --hier on; its default, auto,
     * is the flat path: epmoe plan eval --hier resolves the same), and
     * the modelled time prices its wire (see below) instead of the transfers above; the counted
     * bytes stay the model's. 0 (the default): the flat path, whose wire is the counted bytes */
    int hierarchical;
    /* Seconds each message costs on a link class (the alpha of an alpha-beta model: a hop's rows
     * for one peer are one message), on the rank that sends it and on the one that receives it, in
     * the modelled time's phases. 0 (the defaults): bandwidth alone. Messages are counted up to
     * 1024 ranks; a latency above that is refused */
    double intra_latency_s, inter_latency_s;
} epm_eval_opts;

/* Mixtral-8x7B-like defaults: hidden 4096 in bf16, 8 KV heads x 128 x 2 (K,V) x bf16,
 * ffn 14336. */
EPM_API void epm_eval_opts_init(epm_eval_opts *o);

typedef struct epm_eval_layer {
    int64_t bytes[EPM_LINK_COUNT];       /* dispatch + combine bytes per link class */
    int64_t kv_bytes[EPM_LINK_COUNT];    /* K/V all-gather bytes (follow) per link class */
    int64_t transfers[EPM_LINK_COUNT];   /* dispatch + combine messages of one token */
    int64_t max_load, sum_load;          /* per-rank expert load: max and total */
    int64_t max_send_bytes, max_recv_bytes; /* busiest rank, all link classes and phases (K/V
                                               included), this layer */
    double t_compute, t_comm;            /* modelled seconds */
} epm_eval_layer;

typedef struct epm_eval_result {
    int layers, ranks;
    epm_mode mode;
    epm_eval_layer *layer;           /* [layers] */
    int64_t *rank_load;              /* [layers * ranks] expert load per rank */
    int64_t *send_bytes;             /* [layers * ranks] bytes each rank sends (all classes,
                                        dispatch + combine + K/V; not the final gather) */
    int64_t *recv_bytes;             /* [layers * ranks] */
    int64_t gather_bytes[EPM_LINK_COUNT]; /* final return home (follow) */
    int64_t total_bytes[EPM_LINK_COUNT];  /* all of the above summed */
    double t_total;                  /* modelled seconds, sum over layers */
    double max_over_mean_load;       /* mean over layers of max/mean rank load */
    double kv_cache_factor;          /* KV memory relative to home mode (ranks for follow, 1 home) */
    /* online rebalancing (epm_eval_opts.eplb_interval): placements taken, the replicas they
     * added (an expert on a rank that lacked it; the run's eplb_moved), and the last one (NULL
     * when none was taken; its mode the eval's; freed with the result) */
    int rebalances;
    int64_t moved;
    epm_placement *last;
    int64_t move_bytes[EPM_LINK_COUNT]; /* the experts those placements copied between ranks
                                           (epm_eval_opts.expert_bytes each), per link class */
    double t_moves;                  /* their modelled seconds, in t_total */
    int64_t read_bytes;              /* the experts read from the checkpoint instead, all ranks'
                                        (epm_eval_opts.read_expert_bytes each) */
    double t_reads;                  /* their modelled seconds (read_gbps), in t_total */
    /* The nodes tokens reach (DeepSeek's node-limited routing bounds them, and its EPLB keeps
     * expert groups whole on nodes for it): over every (token, MoE layer) not skipped (routed),
     * the distinct nodes of its serving ranks, summed and the most; and node_dispatches, those
     * other than the token's own node: the inter-node dispatch transfers of a path that crosses
     * to each node once (epmoe run's hierarchical path, DeepEP's), where the flat one sends a
     * transfer per rank (transfers above) */
    int64_t routed, nodes_reached, node_dispatches;
    int max_nodes_reached;
    /* What the run's exchanges put on the wire (epm_eval_opts.hierarchical's path): per layer
     * [layers * EPM_LINK_COUNT] dispatch + combine + K/V all-gather, and in all with the final
     * gather: epmoe run's wire_bytes less what it reports outside MoE layers (dense_kv_bytes,
     * mod_score_bytes), for rows whose bytes fill whole floats (the run pads an odd bf16 width
     * or an fp8 one to 4 bytes on the wire). On the flat path the counted bytes */
    int64_t *layer_wire;
    int64_t wire_bytes[EPM_LINK_COUNT];
    /* and its messages (one a hop, sender and receiver with rows between them: epmoe run's
     * wire_msgs less its aside_msgs, the exchanges being the trace's passes), counted where
     * msgs_counted (up to 1024 ranks) */
    int64_t wire_msgs[EPM_LINK_COUNT];
    int msgs_counted;
} epm_eval_result;

/* The trace's layers, experts and the placement's must match; ranks come from
 * the placement's cluster. Online rebalancing needs the trace's pass_ids. */
EPM_API epm_status epm_eval(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o,
                            epm_eval_result **out);
EPM_API void epm_eval_result_destroy(epm_eval_result *r);

/* What changing a placement from `from` to `to` costs in copies of experts:
 * every replica `to` adds (moved), copied from the rank epm_placement_moves
 * names, expert_bytes each, per link class; the busiest rank's bytes sent
 * and received over the whole change; and the modelled seconds: each MoE
 * layer's copies one phase of the model above (from's cluster), the layers
 * one after another, as epmoe run --eplb-from peers exchanges them on the
 * flat path (epm_eval_moves_path: either path). What plan eval's replay
 * charges at each placement it takes (move_bytes, t_moves). max_gained:
 * the most replicas one rank adds, which that rank reads where the run
 * reads them from the checkpoint instead (plan eval's
 * read_bytes and t_reads). Same shape required. */
typedef struct epm_move_cost {
    int64_t moved;
    int64_t bytes[EPM_LINK_COUNT];
    int64_t max_send_bytes, max_recv_bytes;
    double seconds;
    int64_t max_gained;
    double seconds_whole; /* the change's copies as one phase (every layer's in one exchange, as an
                             asynchronous rebalance, epmoe run --eplb-lag, sends them) */
} epm_move_cost;
EPM_API epm_status epm_eval_moves(const epm_placement *from, const epm_placement *to, int64_t expert_bytes,
                                  epm_move_cost *out);
/* epm_eval_moves with the copies on the exchange's hierarchical path where hierarchical (each
 * through the gateway on its source's node, comm/hier_route.h: the path epmoe run's copies
 * between passes take there, and what plan eval's replay charges with epm_eval_opts.hierarchical
 * and no eplb_lag). The counted bytes are the same, source to receiver; max_send_bytes and
 * max_recv_bytes are each rank's on the wire, a gateway's relays among them. */
EPM_API epm_status epm_eval_moves_path(const epm_placement *from, const epm_placement *to, int64_t expert_bytes,
                                       int hierarchical, epm_move_cost *out);

#ifdef __cplusplus
}
#endif
#endif
