/* epmoe bench plan: the placement planner at three model shapes. For each
 * shape and mode it synthesises a trace with skewed expert popularity and
 * cross-layer affinity, plans on the first half with every method, and
 * evaluates every placement on the second half (the traffic to come), next
 * to contiguous measured in the same run; with --eplb-interval also online
 * rebalancing over the second half's passes, which needs no forecast (the
 * placements an epmoe run would take, as plan eval replays them); with
 * --groups, group-limited routing (DeepSeek's n_group, topk_group) and eplb
 * with the groups kept whole on nodes beside the global eplb, and every
 * row's nodes a token reaches. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "epmoe/epmoe.h"

typedef struct {
    const char *name, *desc;
    int layers, experts, k, nodes, gpn;
} bench_shape;

static const bench_shape shapes[] = {
    {"mixtral", "Mixtral-8x7B: 32 layers, 8 experts, top-2, 8 ranks in 1 node", 32, 8, 2, 1, 8},
    {"qwen", "DeepSeek-V2-Lite/Qwen-MoE: 27 layers, 64 experts, top-6, 16 ranks in 2 nodes", 27, 64, 6, 2, 8},
    {"dsv3", "DeepSeek-V3: 58 layers, 256 experts, top-8, 64 ranks in 8 nodes", 58, 256, 8, 8, 8},
};

static void usage(void)
{
    printf("usage: epmoe bench plan [options]\n"
           "  --shape NAME     mixtral, qwen, dsv3 or all (default all)\n"
           "  --mode M         home, follow or both (default both)\n"
           "  --tokens N       tokens in the synthetic trace, half planned, half evaluated (default 8192)\n"
           "  --time-limit S   ILP time limit per solve in seconds (default 60)\n"
           "  --mip-gap G      ILP relative gap (default 1e-4)\n"
           "  --zipf S         expert popularity skew (default 1.0)\n"
           "  --affinity A     cross-layer affinity in [0,1] (default 0.7)\n"
           "  --seed N         trace seed (default 1)\n"
           "  --drift N        other experts hot every N tokens (default: never): traffic that changes,\n"
           "                   so the first half forecasts the second less well\n"
           "  --eplb-interval N  also 'online': contiguous rebalanced every N passes of the second half\n"
           "                   (epmoe run --eplb-interval, as plan eval --eplb-interval replays it)\n"
           "  --eplb-window W  the passes whose loads count (default N)\n"
           "  --eplb-min-gain F  a layer moves only if that lowers its busiest rank's pairs by at\n"
           "                   least F of them (default 0)\n"
           "  --expert-bytes N  bytes of an expert the online row copies between ranks at each placement\n"
           "                   taken, charged in its time (default 352321536: Mixtral-8x7B's in bf16, as\n"
           "                   the modelled compute; 0: none, run --eplb-from checkpoint)\n"
           "  --eplb-lag N     online's placements in service N passes after their boundaries, the\n"
           "                   copies overlapping those passes (run --eplb-lag; default 0)\n"
           "  --groups G       group-limited routing in the trace (DeepSeek's n_group; dsv3's is 8) and a\n"
           "                   row 'eplb-groups': eplb keeping each group whole on a node (its hierarchical\n"
           "                   policy) beside the global one (default: none)\n"
           "  --topk-groups M  the groups a token chooses within (topk_group; default: every group)\n"
           "  --slots N        experts a rank may hold (default: the fewest that fit, no spare slot);\n"
           "                   spare slots take copies (eplb's replicas, the ILP's replica search)\n"
           "  --pass-tokens P  the trace in passes of P tokens, as run --trace-out records them: every\n"
           "                   row's modelled time is taken pass by pass, as plan eval does, and the\n"
           "                   ILP plans so (default: 256 with --eplb-interval, else no passes)\n"
           "  --hier on|off    price every row on the hierarchical path (run --hier on; plan eval --hier):\n"
           "                   bytes are then its wire's, and the modelled time its (default off: flat)\n"
           "  --intra-latency-us U, --inter-latency-us U  a message's latency in the modelled time, inside\n"
           "                   a node and between nodes (plan eval's; default 0: bandwidth alone)\n"
           "  --quiet          no solver progress on stderr\n"
           "  --csv            one CSV row per (shape, mode, method)\n");
}

typedef struct {
    double solve_s, objective, bound, gap;
    epm_plan_quality quality;
    double max_over_mean, max_load, bytes[EPM_LINK_COUNT], t_total;
    int rebalances; /* online */
    int64_t moved;
    double copied, t_copies; /* the experts' copies between ranks: bytes, modelled seconds (in t_total) */
    double nodes_per_token, node_dispatches; /* plan eval's: the nodes a token reaches, and the transfers
                                                of a path that crosses to each node once */
} row;

/* A placement planned on the first half and evaluated on the second; online:
 * contiguous, rebalanced over the second half's passes as eo says (no
 * objective; its time is the evaluation's, the rebalances' planning in it). */
static epm_status run_one(const epm_trace *plan_half, const epm_trace *eval_half, const epm_cluster *c,
                          const epm_plan_opts *po, const epm_eval_opts *eo, int online, row *out)
{
    epm_plan_opts o = *po;
    o.method = online ? EPM_METHOD_CONTIGUOUS : po->method;
    epm_placement *p = NULL;
    double t0 = epm_now();
    EPM_CHECK(epm_plan(plan_half, c, &o, &p));
    out->solve_s = epm_now() - t0;
    const epm_placement_info *in = epm_placement_get_info(p);
    out->objective = online ? NAN : in->objective;
    out->bound = online ? NAN : in->bound;
    out->gap = online ? NAN : in->gap;
    out->quality = online ? EPM_QUALITY_HEURISTIC : in->quality;
    epm_eval_result *r = NULL;
    t0 = epm_now();
    epm_status st = epm_eval(eval_half, p, eo, &r);
    epm_placement_destroy(p);
    EPM_CHECK(st);
    if (online)
        out->solve_s = epm_now() - t0;
    out->max_over_mean = r->max_over_mean_load;
    double ml = 0.0;
    for (int l = 0; l < r->layers; l++)
        ml += (double)r->layer[l].max_load;
    out->max_load = ml / (r->layers ? r->layers : 1);
    for (int k = 0; k < EPM_LINK_COUNT; k++) /* (the wire's: the counted bytes on the flat path) */
        out->bytes[k] = (double)r->wire_bytes[k];
    out->t_total = r->t_total;
    out->rebalances = r->rebalances;
    out->moved = r->moved;
    out->copied = (double)(r->move_bytes[EPM_LINK_INTRA] + r->move_bytes[EPM_LINK_INTER]);
    out->t_copies = r->t_moves;
    out->nodes_per_token = r->routed ? (double)r->nodes_reached / (double)r->routed : 0;
    out->node_dispatches = (double)r->node_dispatches;
    epm_eval_result_destroy(r);
    return EPM_OK;
}

/* The held-out half's passes numbered from 0, as a run numbers its own:
 * online's first boundary then comes after N of them, whatever pass the
 * half began in. */
static epm_status passes_from_zero(epm_trace *t)
{
    const int64_t n = epm_trace_tokens(t);
    const int32_t *p = epm_trace_pass_ids(t);
    int32_t first = INT32_MAX;
    for (int64_t i = 0; i < n; i++)
        first = p[i] >= 0 && p[i] < first ? p[i] : first;
    int32_t *q = malloc((size_t)(n ? n : 1) * sizeof *q);
    if (!q)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++)
        q[i] = p[i] >= 0 ? p[i] - first : -1;
    epm_status st = epm_trace_set_pass_ids(t, q);
    free(q);
    return st;
}

static double ratio(double a, double b) { return b != 0.0 ? a / b : (a == 0.0 ? 1.0 : INFINITY); }

enum { O_SHAPE = 256, O_MODE, O_TOKENS, O_TIME, O_GAP, O_ZIPF, O_AFF, O_SEED, O_CSV, O_QUIET, O_DRIFT, O_EPLBI, O_EPLBW,
       O_PASS, O_EPLBG, O_XB, O_EPLBLAG, O_GROUPS, O_TOPKG, O_SLOTS, O_HIER, O_LATA, O_LATE, O_HELP };
static const struct option opts[] = {
    {"shape", required_argument, 0, O_SHAPE},   {"mode", required_argument, 0, O_MODE},
    {"tokens", required_argument, 0, O_TOKENS}, {"time-limit", required_argument, 0, O_TIME},
    {"mip-gap", required_argument, 0, O_GAP},   {"zipf", required_argument, 0, O_ZIPF},
    {"affinity", required_argument, 0, O_AFF},  {"seed", required_argument, 0, O_SEED},
    {"csv", no_argument, 0, O_CSV},             {"quiet", no_argument, 0, O_QUIET},
    {"drift", required_argument, 0, O_DRIFT},   {"eplb-interval", required_argument, 0, O_EPLBI},
    {"eplb-window", required_argument, 0, O_EPLBW}, {"pass-tokens", required_argument, 0, O_PASS},
    {"eplb-min-gain", required_argument, 0, O_EPLBG}, {"expert-bytes", required_argument, 0, O_XB},
    {"eplb-lag", required_argument, 0, O_EPLBLAG},  {"groups", required_argument, 0, O_GROUPS},
    {"topk-groups", required_argument, 0, O_TOPKG}, {"slots", required_argument, 0, O_SLOTS},
    {"hier", required_argument, 0, O_HIER},         {"intra-latency-us", required_argument, 0, O_LATA},
    {"inter-latency-us", required_argument, 0, O_LATE},
    {"help", no_argument, 0, O_HELP},           {0, 0, 0, 0}};

int epm_bench_plan(int argc, char **argv)
{
    const char *what = "bench plan";
    const char *shape_name = "all", *mode_name = "both";
    long tokens = 8192;
    double time_limit = 60, gap = 1e-4, zipf = 1.0, affinity = 0.7;
    uint64_t seed = 1;
    long drift = 0, eplb_i = 0, eplb_w = 0, pass_tokens = 256, lag = 0, groups = 0, topk_groups = 0, slots = 0;
    double eplb_g = 0;
    long xb = -1;
    int pass_given = 0, hier = 0;
    double lat_us[2] = {0, 0};
    int csv = 0, quiet = 0;
    int c;
    if (cli_exact_options(what, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_SHAPE:
            shape_name = optarg;
            break;
        case O_MODE:
            mode_name = optarg;
            break;
        case O_TOKENS:
            if (!cli_parse_int(what, "--tokens", optarg, 4, 1L << 26, &tokens))
                return EPM_EXIT_USAGE;
            break;
        case O_TIME:
            if (!cli_parse_double(what, "--time-limit", optarg, 0, 86400, &time_limit))
                return EPM_EXIT_USAGE;
            break;
        case O_GAP:
            if (!cli_parse_double(what, "--mip-gap", optarg, 0, 1, &gap))
                return EPM_EXIT_USAGE;
            break;
        case O_ZIPF:
            if (!cli_parse_double(what, "--zipf", optarg, 0, 16, &zipf))
                return EPM_EXIT_USAGE;
            break;
        case O_AFF:
            if (!cli_parse_double(what, "--affinity", optarg, 0, 1, &affinity))
                return EPM_EXIT_USAGE;
            break;
        case O_SEED:
            if (!cli_parse_u64(what, "--seed", optarg, &seed))
                return EPM_EXIT_USAGE;
            break;
        case O_CSV:
            csv = 1;
            break;
        case O_DRIFT:
            if (!cli_parse_int(what, "--drift", optarg, 1, 1L << 40, &drift))
                return EPM_EXIT_USAGE;
            break;
        case O_EPLBI:
            if (!cli_parse_int(what, "--eplb-interval", optarg, 1, INT32_MAX, &eplb_i))
                return EPM_EXIT_USAGE;
            break;
        case O_EPLBW:
            if (!cli_parse_int(what, "--eplb-window", optarg, 1, INT32_MAX, &eplb_w))
                return EPM_EXIT_USAGE;
            break;
        case O_EPLBG:
            if (!cli_parse_double(what, "--eplb-min-gain", optarg, 0, 0.999, &eplb_g))
                return EPM_EXIT_USAGE;
            break;
        case O_XB:
            if (!cli_parse_int(what, "--expert-bytes", optarg, 0, CLI_EXPERT_BYTES_MAX, &xb))
                return EPM_EXIT_USAGE;
            break;
        case O_EPLBLAG:
            if (!cli_parse_int(what, "--eplb-lag", optarg, 0, INT32_MAX, &lag))
                return EPM_EXIT_USAGE;
            break;
        case O_GROUPS:
            if (!cli_parse_int(what, "--groups", optarg, 2, 1 << 16, &groups))
                return EPM_EXIT_USAGE;
            break;
        case O_TOPKG:
            if (!cli_parse_int(what, "--topk-groups", optarg, 1, 1 << 16, &topk_groups))
                return EPM_EXIT_USAGE;
            break;
        case O_SLOTS:
            if (!cli_parse_int(what, "--slots", optarg, 1, 1 << 16, &slots))
                return EPM_EXIT_USAGE;
            break;
        case O_PASS:
            if (!cli_parse_int(what, "--pass-tokens", optarg, 1, 1L << 26, &pass_tokens))
                return EPM_EXIT_USAGE;
            pass_given = 1;
            break;
        case O_HIER: {
            static const char *const onoff[] = {"off", "on", NULL};
            if (!cli_parse_choice(what, "--hier", optarg, onoff, &hier))
                return EPM_EXIT_USAGE;
            break;
        }
        case O_LATA:
        case O_LATE:
            if (!cli_parse_double(what, c == O_LATA ? "--intra-latency-us" : "--inter-latency-us", optarg, 0, 1e9,
                                  &lat_us[c == O_LATE]))
                return EPM_EXIT_USAGE;
            break;
        case O_QUIET:
            quiet = 1;
            break;
        case 'h':
        case O_HELP:
            usage();
            return EPM_EXIT_OK;
        default:
            return cli_option_error(what, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(what, "unexpected argument '%s'", argv[optind]);
    if (cli_eplb_usage(what, eplb_i, eplb_w, lag,
                       eplb_w ? "--eplb-window" : eplb_g > 0 ? "--eplb-min-gain"
                       : xb >= 0 ? "--expert-bytes" : NULL) !=
        EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if (topk_groups && !groups)
        return cli_usage_error(what, "--topk-groups %ld limits the groups of --groups, which is not given", topk_groups);
    int want_shape[3] = {0, 0, 0};
    int any = 0;
    for (int s = 0; s < 3; s++)
        any |= want_shape[s] = !strcmp(shape_name, "all") || !strcmp(shape_name, shapes[s].name);
    if (!any)
        return cli_usage_error(what, "option --shape: '%s' is not mixtral, qwen, dsv3 or all", shape_name);
    for (int s = 0; s < 3; s++) { /* (each shape asked for takes the groups, as trace synth checks, and the slots) */
        const bench_shape *sh = &shapes[s];
        const long limit = topk_groups ? topk_groups : groups;
        if (want_shape[s] && groups &&
            !(sh->experts % groups == 0 && limit <= groups && limit * (sh->experts / groups) >= sh->k))
            return cli_usage_error(what, "--groups %ld --topk-groups %ld: the %s shape cannot hold them (%d experts "
                                   "in %ld groups, a token's %d within %ld)", groups, topk_groups, sh->name,
                                   sh->experts, groups, sh->k, limit);
        if (want_shape[s] && slots && !((long)sh->nodes * sh->gpn * slots >= sh->experts && slots <= sh->experts))
            return cli_usage_error(what, slots > sh->experts ? "--slots %ld: the %s shape has %d experts, a rank "
                                   "holds each at most once" : "--slots %ld: the %s shape's %d experts do not fit on "
                                   "its %d ranks", slots, sh->name, sh->experts, sh->nodes * sh->gpn);
    }
    int modes[2], nmodes = 0;
    if (!strcmp(mode_name, "both")) {
        modes[nmodes++] = EPM_MODE_HOME;
        modes[nmodes++] = EPM_MODE_FOLLOW;
    } else {
        epm_mode m;
        if (epm_mode_parse(mode_name, &m) != EPM_OK)
            return cli_usage_error(what, "option --mode: '%s' is not home, follow or both", mode_name);
        modes[nmodes++] = (int)m;
    }

    if (csv)
        printf("shape,mode,method,solve_s,objective,bound,gap,quality,max_over_mean_load,mean_max_load,"
               "bytes_intra,bytes_inter,t_model_s,t_vs_contiguous,inter_vs_contiguous,maxload_vs_contiguous,"
               "nodes_per_token,node_dispatches\n");
    for (int s = 0; s < 3; s++) {
        if (!want_shape[s])
            continue;
        const bench_shape *sh = &shapes[s];
        epm_trace_synth_opts so;
        epm_trace_synth_opts_init(&so);
        so.layers = sh->layers;
        so.experts = sh->experts;
        so.k = sh->k;
        so.tokens = tokens;
        so.tokens_per_seq = 64;
        so.zipf_s = zipf;
        so.affinity = affinity;
        so.successors = 2;
        so.seed = seed;
        so.drift_tokens = drift;
        so.groups = (int)groups;
        so.topk_groups = (int)topk_groups;
        /* passes (online's replay needs them), which price every row pass by pass and which the
         * ILP plans for (without them the modelled times are the whole half's) */
        so.tokens_per_pass = eplb_i > 0 || pass_given ? pass_tokens : 0;
        epm_trace *t = NULL, *first = NULL, *second = NULL;
        epm_status st = epm_trace_synth(&so, &t);
        if (st == EPM_OK)
            st = epm_trace_slice(t, 0, tokens / 2, &first);
        if (st == EPM_OK)
            st = epm_trace_slice(t, tokens / 2, tokens, &second);
        if (st == EPM_OK && epm_trace_pass_ids(second))
            st = passes_from_zero(second);
        epm_trace_destroy(t);
        if (st != EPM_OK) {
            epm_trace_destroy(first);
            epm_trace_destroy(second);
            return cli_fail(what, st);
        }
        epm_cluster c;
        epm_cluster_init(&c, sh->nodes, sh->gpn);
        if (!csv)
            printf("\n== %s, %ld tokens (plan on the first half, evaluate on the second), zipf %.2g, affinity %.2g%s",
                   sh->desc, tokens, zipf, affinity, drift ? ", drifting" : "");
        if (!csv && slots)
            printf(", %ld slots a rank (%ld spare)", slots, slots * sh->nodes * sh->gpn - sh->experts);
        if (!csv && so.tokens_per_pass)
            printf(", passes of %ld tokens", pass_tokens);
        if (!csv && hier)
            printf(", priced on the hierarchical path (bytes: its wire's)");
        if (!csv && (lat_us[0] > 0 || lat_us[1] > 0))
            printf(", %g / %g us a message (intra / inter)", lat_us[0], lat_us[1]);
        if (!csv)
            printf("\n");
        for (int mi = 0; mi < nmodes; mi++) {
            epm_plan_opts po;
            epm_plan_opts_init(&po);
            po.mode = (epm_mode)modes[mi];
            po.hidden = 4096;
            po.kv_dim = 2048; /* 8 KV heads x 128 x (K, V): eval's default row */
            po.time_limit_s = time_limit;
            po.mip_gap = gap;
            po.slots_per_rank = (int)slots;
            po.progress = quiet || csv ? NULL : cli_progress;
            epm_eval_opts eo;
            epm_eval_opts_init(&eo);
            eo.mode = po.mode;
            eo.hidden_bytes = (int64_t)po.hidden * 2;
            eo.kv_row_bytes = (int64_t)po.kv_dim * 2;
            eo.hierarchical = hier;
            eo.intra_latency_s = lat_us[0] * 1e-6;
            eo.inter_latency_s = lat_us[1] * 1e-6;
            /* (a model of GPUs, whose experts online rebalancing copies between them as vLLM does:
             * Mixtral-8x7B's in bf16, the expert whose FLOPs eo models, unless told) */
            eo.expert_bytes = xb >= 0 ? xb : cli_expert_bytes(2, 4096, 14336);
            /* weigh the objective in modelled microseconds, as plan eval
             * does: the straggler's expert compute against one intra-node
             * hidden-vector transfer per rank (about 16:1 at these defaults) */
            po.balance_weight = eo.flops_per_assignment / (c.gpu_tflops * 1e12) * 1e6;
            po.traffic_weight = (double)eo.hidden_bytes / (c.intra_gbps * 1e9) * 1e6;
            /* the methods; with groups eplb keeping them whole ('eplb-groups'); online last */
            row rows[EPM_METHOD_COUNT + 2];
            const int grouped = groups > 0 ? EPM_METHOD_COUNT : -1, online = EPM_METHOD_COUNT + (groups > 0);
            const int nrows = online + (eplb_i > 0);
            for (int m = 0; m < nrows; m++) {
                po.method = (epm_method)(m < EPM_METHOD_COUNT ? m : m == grouped ? EPM_METHOD_EPLB : EPM_METHOD_CONTIGUOUS);
                po.expert_groups = m == grouped ? (int)groups : 0;
                epm_eval_opts oe = eo;
                oe.eplb_interval = m == online ? (int)eplb_i : 0;
                oe.eplb_window = m == online ? (int)eplb_w : 0;
                oe.eplb_min_gain = m == online ? eplb_g : 0;
                oe.eplb_lag = m == online ? (int)lag : 0;
                oe.eplb_groups = m == online ? (int)groups : 0; /* (a run's rebalancing keeps the model's groups) */
                st = run_one(first, second, &c, &po, &oe, m == online, &rows[m]);
                if (st != EPM_OK) {
                    epm_trace_destroy(first);
                    epm_trace_destroy(second);
                    return cli_fail(what, st);
                }
            }
            const row *base = &rows[EPM_METHOD_CONTIGUOUS];
            if (!csv) {
                printf("\nmode %s\n", epm_mode_name(po.mode));
                printf("%-12s %8s %12s %12s %8s %-9s %8s %8s %10s %10s %10s %8s %8s %9s\n", "method", "solve_s",
                       "objective", "bound", "gap", "quality", "max/mean", "maxload", "intra_GB", "inter_GB",
                       "t_model_ms", "t/contig", "inter/c", "nodes/tok");
            }
            for (int m = 0; m < nrows; m++) {
                const row *r = &rows[m];
                const char *name = m < EPM_METHOD_COUNT ? epm_method_name((epm_method)m) : m == grouped ? "eplb-groups"
                                                                                                       : "online";
                double tr = ratio(r->t_total, base->t_total);
                double ir = ratio(r->bytes[EPM_LINK_INTER], base->bytes[EPM_LINK_INTER]);
                double lr = ratio(r->max_load, base->max_load);
                /* a heuristic has no bound: an empty CSV field, "-" in the table */
                char bnd[32] = "", gp[32] = "", obj[32] = "";
                if (isfinite(r->objective)) /* (online's has none) */
                    snprintf(obj, sizeof obj, csv ? "%.6g" : "%12.6g", r->objective);
                if (isfinite(r->bound))
                    snprintf(bnd, sizeof bnd, csv ? "%.6g" : "%12.6g", r->bound);
                if (isfinite(r->gap))
                    snprintf(gp, sizeof gp, csv ? "%.6g" : "%8.4f", r->gap);
                if (csv)
                    printf("%s,%s,%s,%.6f,%s,%s,%s,%s,%.4f,%.2f,%.0f,%.0f,%.6g,%.4f,%.4f,%.4f,%.4f,%.0f\n", sh->name,
                           epm_mode_name(po.mode), name, r->solve_s, obj, bnd, gp,
                           epm_plan_quality_name(r->quality), r->max_over_mean, r->max_load, r->bytes[EPM_LINK_INTRA],
                           r->bytes[EPM_LINK_INTER], r->t_total, tr, ir, lr, r->nodes_per_token, r->node_dispatches);
                else
                    printf("%-12s %8.3f %12s %12s %8s %-9s %8.3f %8.1f %10.3f %10.3f %10.3f %8.3f %8.3f %9.3f\n",
                           name, r->solve_s, *obj ? obj : "-", *bnd ? bnd : "-", *gp ? gp : "-",
                           epm_plan_quality_name(r->quality), r->max_over_mean, r->max_load,
                           r->bytes[EPM_LINK_INTRA] / 1e9, r->bytes[EPM_LINK_INTER] / 1e9, r->t_total * 1e3, tr,
                           ir, r->nodes_per_token);
                fflush(stdout);
            }
            if (!csv && eplb_i > 0)
                printf("# online: %d placements taken over the second half's %ld passes, %lld experts moved, "
                       "%.2f GB copied between ranks (%.3f ms of its t_model_ms)\n",
                       rows[online].rebalances, (tokens - tokens / 2 + pass_tokens - 1) / pass_tokens,
                       (long long)rows[online].moved, rows[online].copied / 1e9, rows[online].t_copies * 1e3);
            if (!csv && slots * sh->nodes * sh->gpn > sh->experts)
                printf("# ilp against eplb with spare slots: modelled time %.3fx, max/mean load %.3f against "
                       "%.3f, inter-node bytes %.3fx (held-out half)\n",
                       ratio(rows[EPM_METHOD_ILP].t_total, rows[EPM_METHOD_EPLB].t_total),
                       rows[EPM_METHOD_ILP].max_over_mean, rows[EPM_METHOD_EPLB].max_over_mean,
                       ratio(rows[EPM_METHOD_ILP].bytes[EPM_LINK_INTER], rows[EPM_METHOD_EPLB].bytes[EPM_LINK_INTER]));
            if (!csv && groups > 0)
                printf("# eplb-groups against eplb: %.3f against %.3f nodes a token (%.3fx), %.0f against %.0f "
                       "dispatches crossing nodes once each (%.3fx), modelled time %.3fx\n",
                       rows[grouped].nodes_per_token, rows[EPM_METHOD_EPLB].nodes_per_token,
                       ratio(rows[grouped].nodes_per_token, rows[EPM_METHOD_EPLB].nodes_per_token),
                       rows[grouped].node_dispatches, rows[EPM_METHOD_EPLB].node_dispatches,
                       ratio(rows[grouped].node_dispatches, rows[EPM_METHOD_EPLB].node_dispatches),
                       ratio(rows[grouped].t_total, rows[EPM_METHOD_EPLB].t_total));
        }
        epm_trace_destroy(first);
        epm_trace_destroy(second);
    }
    return EPM_EXIT_OK;
}
