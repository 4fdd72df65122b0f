/* epmoe plan / epmoe plan eval (plan moves: cmd_plan_moves.c) */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "epmoe/model.h"
#include "half.h"
#include "xcomm.h"

static const char plan_usage[] =
    "usage: epmoe plan --trace FILE [options]\n"
    "       epmoe plan eval --trace FILE PLAN.json [PLAN2.json ...] [options]\n"
    "       epmoe plan moves FROM.json TO.json [options]   (what changing placement costs)\n"
    "\n"
    "Plans where each MoE layer's experts live, from a routing trace.\n"
    "  --trace FILE          routing trace (safetensors or .npy)\n"
    "  --model DIR           the checkpoint (its config.json; weights are not read): experts, --hidden,\n"
    "                        --kv-dim and --ffn from it, and its MoE layers must be the trace's\n"
    "                        (flags given beside it win)\n"
    "  --experts N           experts per layer (default: largest id in the trace + 1)\n"
    "  --method M            contiguous | round-robin | greedy | eplb | ilp (default contiguous)\n"
    "  --mode M              home | follow: the execution mode to plan for (default home)\n"
    "  --nodes N             nodes (default 1)\n"
    "  --gpus-per-node G     ranks per node (default 8)\n"
    "  --cluster FILE        cluster JSON instead of the four flags around it\n"
    "  --intra-gbps X        GB/s per rank inside a node (default 150)\n"
    "  --inter-gbps X        GB/s per rank between nodes (default 25)\n"
    "  --slots S             experts a rank holds per layer; spares get replicas (eplb, ilp)\n"
    "  --redundant-experts N instead of --slots: N physical experts beyond the experts of a layer\n"
    "                        (vLLM's num_redundant_experts, SGLang's ep_num_redundant_experts), so\n"
    "                        (experts + N) / ranks slots a rank, which must divide as those engines\n"
    "                        require; eplb and ilp fill them\n"
    "  --expert-groups N     the groups of group-limited routing (DeepSeek's n_group: experts in N\n"
    "                        groups of consecutive ids; default: --model's n_group, else none). eplb\n"
    "                        keeps each group whole on one node where N divides over the nodes\n"
    "                        (DeepSeek EPLB's hierarchical policy), so that a token reaches no more\n"
    "                        nodes than the groups it may choose (topk_group)\n"
    "  --time-limit SEC      ILP budget (default 60). Its searches time a trace with pass_ids (run\n"
    "                        --trace-out records them) pass by pass, as plan eval does\n"
    "  --mip-gap G           ILP relative gap to stop at (default 1e-4)\n"
    "  --hidden H            hidden size, for the follow-mode K/V term (default 4096)\n"
    "  --mla-cache latent|expanded  with --model of an MLA checkpoint (DeepSeek-V2/V3), the K/V\n"
    "                        rows of epmoe run --mla-cache: its latent (default), or a key and a value\n"
    "                        per head\n"
    "  --kv-dim D            K+V width per token per layer, follow mode (default hidden/2; `epmoe model\n"
    "                        info` prints a model's: MLA's latent is kv_lora_rank + qk_rope_head_dim)\n"
    "  --ffn F               expert FFN width (default 14336), for the automatic balance weight\n"
    "  --balance-weight W    weight of the straggler load (default: auto, modelled FFN time of one\n"
    "                        token over one intra-node transfer, from --hidden, --ffn and the cluster)\n"
    "  --traffic-weight W    weight of the link-cost-weighted traffic (default 1)\n"
    "  --out FILE            write the placement JSON\n"
    "  --eplb-out FILE       also write the EPLB physical-to-logical map (SGLang's --init-expert-location;\n"
    "                        every rank must hold as many experts: eplb or ilp fill the slots)\n"
    "  --json                print the summary as JSON\n"
    "  --quiet               no progress on stderr\n";

static const char eval_usage[] =
    "usage: epmoe plan eval --trace FILE PLAN.json [PLAN2.json ...] [options]\n"
    "\n"
    "Replays a trace against placements (ideally a trace other than the one planned from) and\n"
    "prints side by side: per-rank expert load (max/mean), token transfers crossing ranks and\n"
    "nodes, bytes per link class and a modelled MoE time, with ratios to the first placement;\n"
    "on several nodes also the nodes a token reaches (mean, most) and the inter-node dispatches\n"
    "of a path that crosses to each node once (run's hierarchical path, DeepEP's). A trace with\n"
    "pass_ids (run --trace-out records them) is timed pass by pass, as a run waits on each.\n"
    "  --trace FILE          routing trace\n"
    "  --model DIR           --hidden, --kv-dim and --ffn from the checkpoint's config.json, whose\n"
    "                        experts and MoE layers must be the trace's (flags given beside it\n"
    "                        win), and --dtype-bytes 4: epmoe run's activations are float32 on the\n"
    "                        wire whatever the weights' dtype, so this predicts what run counts\n"
    "                        (add --wire-dtype for a run with it)\n"
    "  --mode M              home | follow | both (default: the placements' own mode; both when\n"
    "                        they were planned for different modes)\n"
    "  --hidden H            hidden size (default 4096)\n"
    "  --dtype-bytes B       bytes per element on the wire (default 2: bf16, epmoe run --wire-dtype\n"
    "                        bf16; 4 for its float32 default)\n"
    "  --wire-dtype T        what epmoe run --wire-dtype T sends: f32 (--dtype-bytes 4), bf16 (2), or\n"
    "                        fp8 (home mode: dispatch rows of hidden + 4 x ceil(hidden / 128) bytes,\n"
    "                        e4m3 with a scale per 128 values, and a bf16 combine); instead of\n"
    "                        --dtype-bytes\n"
    "  --mla-cache latent|expanded  with --model of an MLA checkpoint (DeepSeek-V2/V3), the K/V\n"
    "                        rows of epmoe run --mla-cache: its latent (default), or a key and a value\n"
    "                        per head\n"
    "  --kv-dim D            K+V width per token per layer for follow (default hidden/2; `epmoe model\n"
    "                        info` prints a model's)\n"
    "  --ffn F               expert FFN width, for modelled compute (default 14336)\n"
    "  --eplb-interval N     a run with online rebalancing (epmoe run --eplb-interval N): the trace's\n"
    "                        passes (its pass_ids, which run --trace-out records) replayed in order,\n"
    "                        each token charged under the placement of its pass, every N passes a\n"
    "                        new one taken from the loads of the window as the run takes it; the\n"
    "                        placements named are where it starts\n"
    "  --eplb-window W       the passes whose loads count (default N)\n"
    "  --eplb-slots S        experts a rank holds a MoE layer (default: the placement's most)\n"
    "  --redundant-experts N instead of --eplb-slots: (experts + N) / ranks slots a rank, as vLLM's\n"
    "                        num_redundant_experts\n"
    "  --eplb-min-gain F     as run --eplb-min-gain: a layer moves only if that lowers its busiest\n"
    "                        rank's pairs by at least F of them (default 0)\n"
    "  --eplb-from S         as run --eplb-from: checkpoint (default: each expert a placement adds is\n"
    "                        read by the rank that gains it; nothing between ranks) or peers: copied\n"
    "                        from the rank run takes it from, a phase of the same model as dispatch\n"
    "                        for each MoE layer\n"
    "  --expert-bytes N      bytes of one expert, read (checkpoint: as stored, what run's bytes_read\n"
    "                        sums) or copied (peers: as held, run reports its expert_bytes). Default:\n"
    "                        as --model's checkpoint stores them (its config's shape and dtype where\n"
    "                        its weights are not there), else bf16 of --hidden x --ffn\n"
    "  --expert-groups N     as run takes the model's n_group: its rebalancing keeps each of N groups\n"
    "                        whole on a node where they divide over the nodes (default: --model's\n"
    "                        n_group, else none)\n"
    "  --eplb-lag N          as run --eplb-lag: each placement in service N passes after its boundary,\n"
    "                        the passes between under the one before; its copies (one phase, all\n"
    "                        layers) or reads are charged only for what they take beyond those\n"
    "                        passes' modelled time (as a transport that sends them under the passes)\n"
    "  --expert-dtype D      peers: auto (as stored, run's default), bf16 or f32, as run --expert-dtype\n"
    "                        holds the experts it copies (--kernels cuda holds f32)\n"
    "  --read-gbps G         checkpoint: the GB/s one rank reads experts at, pricing the reads (a\n"
    "                        rank's one after another, the ranks side by side); without it they are\n"
    "                        counted, not priced\n"
    "  --placement-out FILE  the placement the last pass ran under (one placement, one mode; with\n"
    "                        --eplb-lag, one still in flight at the end), as run --placement-out\n"
    "                        writes it\n"
    "  --hier auto|on|off    the path run's exchanges take between nodes, as run --hier (default auto:\n"
    "                        the flat one; on: hierarchical between nodes): on the hierarchical one\n"
    "                        (a dispatch crosses to each node once, through gateways; Tutel's 2DH) the\n"
    "                        modelled time prices its wire, printed beside the counted bytes, which\n"
    "                        run counts whatever the path\n"
    "  --intra-latency-us U  a message's latency inside a node, and\n"
    "  --inter-latency-us U  between nodes, in microseconds (default 0: bandwidth alone): each hop's\n"
    "                        rows for one peer are a message, on the rank that sends it and the one\n"
    "                        that receives it, in every phase of the modelled time (the trace's\n"
    "                        pass_ids are the run's exchanges: without them the trace is one)\n"
    "  --per-layer           also print every layer\n"
    "  --json                JSON instead of text\n";

enum {
    O_TRACE = 256, O_EXPERTS, O_METHOD, O_MODE, O_NODES, O_GPN, O_CLUSTER, O_INTRA, O_INTER, O_SLOTS, O_TLIM,
    O_GAP, O_HIDDEN, O_BW, O_TW, O_OUT, O_EPLB, O_JSON, O_QUIET, O_DTB, O_KV, O_FFN, O_PERLAYER, O_MODEL, O_WIRE,
    O_EPLBI, O_EPLBW, O_EPLBS, O_POUT, O_EPLBG, O_XB, O_EPLBF, O_RGBPS, O_EPLBLAG, O_EDT, O_GROUPS, O_REDUNDANT, O_HIER,
    O_LAT_INTRA, O_LAT_INTER, O_MLA, O_HELP
};

static const struct option plan_opts[] = {
    {"trace", required_argument, 0, O_TRACE},       {"experts", required_argument, 0, O_EXPERTS},
    {"method", required_argument, 0, O_METHOD},     {"mode", required_argument, 0, O_MODE},
    {"nodes", required_argument, 0, O_NODES},       {"gpus-per-node", required_argument, 0, O_GPN},
    {"cluster", required_argument, 0, O_CLUSTER},   {"intra-gbps", required_argument, 0, O_INTRA},
    {"inter-gbps", required_argument, 0, O_INTER},  {"slots", required_argument, 0, O_SLOTS},
    {"time-limit", required_argument, 0, O_TLIM},   {"mip-gap", required_argument, 0, O_GAP},
    {"hidden", required_argument, 0, O_HIDDEN},     {"balance-weight", required_argument, 0, O_BW},
    {"traffic-weight", required_argument, 0, O_TW}, {"out", required_argument, 0, O_OUT},
    {"eplb-out", required_argument, 0, O_EPLB},     {"json", no_argument, 0, O_JSON},
    {"quiet", no_argument, 0, O_QUIET},             {"dtype-bytes", required_argument, 0, O_DTB},
    {"kv-dim", required_argument, 0, O_KV},         {"ffn", required_argument, 0, O_FFN},
    {"per-layer", no_argument, 0, O_PERLAYER},      {"model", required_argument, 0, O_MODEL},
    {"wire-dtype", required_argument, 0, O_WIRE},   {"hier", required_argument, 0, O_HIER},
    {"intra-latency-us", required_argument, 0, O_LAT_INTRA}, {"inter-latency-us", required_argument, 0, O_LAT_INTER},
    {"eplb-interval", required_argument, 0, O_EPLBI},
    {"eplb-window", required_argument, 0, O_EPLBW}, {"eplb-slots", required_argument, 0, O_EPLBS},
    {"placement-out", required_argument, 0, O_POUT}, {"eplb-min-gain", required_argument, 0, O_EPLBG},
    {"expert-bytes", required_argument, 0, O_XB},   {"eplb-from", required_argument, 0, O_EPLBF},
    {"read-gbps", required_argument, 0, O_RGBPS},   {"eplb-lag", required_argument, 0, O_EPLBLAG},
    {"expert-dtype", required_argument, 0, O_EDT},  {"expert-groups", required_argument, 0, O_GROUPS},
    {"redundant-experts", required_argument, 0, O_REDUNDANT},
    {"mla-cache", required_argument, 0, O_MLA},
    {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0}};

/* What the planner's and the evaluator's cost terms need from a checkpoint,
 * read from its config.json alone (a planning machine need not hold the
 * weights). */
typedef struct model_shape {
    const char *dir;
    int hidden, kv_dim, ffn, experts, moe_layers, groups;
    int num_layers;            /* decoder layers, and which are MoE (for the EPLB export; 0 past 4096) */
    uint8_t is_moe[4096];
} model_shape;

/* mla_expanded: the K/V rows of run --mla-cache expanded (a key and a value
 * per head) rather than MLA's latent; refused for a model without MLA. */
static epm_status model_shape_load(const char *dir, int mla_expanded, model_shape *m)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return epm_fail(EPM_ERR_INVALID_ARG, "--model '%s': path too long", dir);
    epm_model_config c;
    EPM_CHECK(epm_model_config_load(path, &c));
    m->dir = dir;
    m->hidden = c.hidden_size;
    if (mla_expanded && !c.mla) {
        epm_model_config_clear(&c);
        return epm_fail(EPM_ERR_INVALID_ARG, "--mla-cache expanded: %s is not a multi-head latent attention model "
                        "(DeepSeek-V2/V3)", dir);
    }
    m->kv_dim = epm_model_kv_floats(&c, mla_expanded); /* what epmoe run all-gathers in follow mode (MLA: its
                                                          latent, or with --mla-cache expanded a key and a value
                                                          per head) */
    m->ffn = c.moe_ffn;
    m->experts = c.num_experts;
    m->moe_layers = epm_model_config_moe_layers(&c);
    m->groups = c.n_group; /* (what run's rebalancing takes) */
    m->num_layers = c.moe_layer && c.num_layers <= (int)sizeof m->is_moe ? c.num_layers : 0;
    if (m->num_layers)
        memcpy(m->is_moe, c.moe_layer, (size_t)m->num_layers);
    epm_model_config_clear(&c);
    return EPM_OK;
}

/* --mla-cache latent|expanded (as epmoe run's); 0 after a usage error. */
static int parse_mla(const char *W, const char *arg, int *expanded, int *given)
{
    if (strcmp(arg, "latent") && strcmp(arg, "expanded"))
        return cli_usage_error(W, "--mla-cache: '%s' is not latent or expanded", arg), 0;
    *expanded = !strcmp(arg, "expanded");
    *given = 1;
    return 1;
}

/* The trace must be of the model's MoE layers and experts. */
static epm_status model_shape_check(const model_shape *m, const epm_trace *t, const char *trace_path)
{
    if (!m->dir)
        return EPM_OK;
    if (epm_trace_layers(t) != m->moe_layers || epm_trace_experts(t) != m->experts)
        return epm_fail(EPM_ERR_MISMATCH, "the trace %s has %d MoE layers of %d experts, the model %s %d of %d",
                        trace_path, epm_trace_layers(t), epm_trace_experts(t), m->dir, m->moe_layers, m->experts);
    return EPM_OK;
}



/* An output that names an input (or another output): the same path, or the
 * same file reached another way. */
static int clash(const char *a, const char *b) { return a && b && (!strcmp(a, b) || cli_same_file(a, b)); }

static int cmd_plan(int argc, char **argv)
{
    const char *W = "plan";
    const char *trace_path = NULL, *out = NULL, *eplb_out = NULL, *cluster_path = NULL;
    long experts = 0, nodes = 1, gpn = 8, v, groups = 0, redundant = -1;
    int json = 0, quiet = 0, have_nodes = 0, have_hidden = 0, have_kv = 0, have_ffn = 0, groups_given = 0;
    const char *model_dir = NULL;
    int mla_expanded = 0, mla_given = 0; /* --mla-cache: the K/V rows of run --mla-cache */
    model_shape ms = {0};
    double intra = -1, inter = -1;
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    int c;
    if (cli_exact_options(W, argc, argv, plan_opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", plan_opts, NULL)) != -1) {
        switch (c) {
        case O_TRACE: trace_path = optarg; break;
        case O_EXPERTS: if (!cli_parse_int(W, "--experts", optarg, 1, 1 << 20, &experts)) return EPM_EXIT_USAGE; break;
        case O_METHOD:
            if (epm_method_parse(optarg, &o.method) != EPM_OK) return cli_usage_error(W, "%s", epm_last_error());
            break;
        case O_MODE:
            if (epm_mode_parse(optarg, &o.mode) != EPM_OK) return cli_usage_error(W, "%s", epm_last_error());
            break;
        case O_NODES: if (!cli_parse_int(W, "--nodes", optarg, 1, 4096, &nodes)) return EPM_EXIT_USAGE; have_nodes = 1; break;
        case O_GPN: if (!cli_parse_int(W, "--gpus-per-node", optarg, 1, 1024, &gpn)) return EPM_EXIT_USAGE; have_nodes = 1; break;
        case O_CLUSTER: cluster_path = optarg; break;
        case O_INTRA: if (!cli_parse_double(W, "--intra-gbps", optarg, 1e-6, 1e9, &intra)) return EPM_EXIT_USAGE; break;
        case O_INTER: if (!cli_parse_double(W, "--inter-gbps", optarg, 1e-6, 1e9, &inter)) return EPM_EXIT_USAGE; break;
        case O_SLOTS: if (!cli_parse_int(W, "--slots", optarg, 1, 1 << 20, &v)) return EPM_EXIT_USAGE; o.slots_per_rank = (int)v; break;
        case O_GROUPS: if (!cli_parse_int(W, "--expert-groups", optarg, 1, 1 << 20, &groups)) return EPM_EXIT_USAGE; groups_given = 1; break;
        case O_REDUNDANT: if (!cli_parse_int(W, "--redundant-experts", optarg, 0, 1 << 20, &redundant)) return EPM_EXIT_USAGE; break;
        case O_TLIM: if (!cli_parse_double(W, "--time-limit", optarg, 0, 1e7, &o.time_limit_s)) return EPM_EXIT_USAGE; break;
        case O_GAP: if (!cli_parse_double(W, "--mip-gap", optarg, 0, 0.999, &o.mip_gap)) return EPM_EXIT_USAGE; break;
        case O_HIDDEN: if (!cli_parse_int(W, "--hidden", optarg, 1, 1 << 20, &v)) return EPM_EXIT_USAGE; o.hidden = (int)v; have_hidden = 1; break;
        case O_MODEL: model_dir = optarg; break;
        case O_MLA:
            if (!parse_mla(W, optarg, &mla_expanded, &mla_given))
                return EPM_EXIT_USAGE;
            break;
        case O_BW: if (!cli_parse_double(W, "--balance-weight", optarg, 0, 1e9, &o.balance_weight)) return EPM_EXIT_USAGE; break;
        case O_FFN: if (!cli_parse_int(W, "--ffn", optarg, 1, 1 << 24, &v)) return EPM_EXIT_USAGE; o.ffn = (int)v; have_ffn = 1; break;
        case O_KV: if (!cli_parse_int(W, "--kv-dim", optarg, 0, 1 << 20, &v)) return EPM_EXIT_USAGE; o.kv_dim = (int)v; have_kv = 1; break;
        case O_TW: if (!cli_parse_double(W, "--traffic-weight", optarg, 0, 1e9, &o.traffic_weight)) return EPM_EXIT_USAGE; break;
        case O_OUT: out = optarg; break;
        case O_EPLB: eplb_out = optarg; break;
        case O_JSON: json = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: fputs(plan_usage, stdout); return EPM_EXIT_OK;
        default: return c == '?' ? cli_option_error(W, argv) : cli_option_not_here(W, c, plan_opts);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (!trace_path)
        return cli_usage_error(W, "--trace is required");
    if (cli_slots_or_redundant(W, "--slots", o.slots_per_rank, redundant) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if (cluster_path && have_nodes)
        return cli_usage_error(W, "--cluster and --nodes/--gpus-per-node exclude each other");
    if (cluster_path && (intra > 0 || inter > 0)) /* (the file's bandwidths are the cluster's) */
        return cli_usage_error(W, "--cluster and --%s-gbps exclude each other: the file gives the bandwidths",
                               intra > 0 ? "intra" : "inter");
    const char *inputs[2] = {trace_path, cluster_path}, *outputs[2] = {out, eplb_out};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (clash(outputs[i], inputs[j]))
                return cli_usage_error(W, "%s '%s' would overwrite the input '%s'", i ? "--eplb-out" : "--out",
                                       outputs[i], inputs[j]);
    if (clash(out, eplb_out))
        return cli_usage_error(W, "--out and --eplb-out name the same file '%s'", out);

    epm_status st;
    if (mla_given && !model_dir)
        return cli_usage_error(W, "--mla-cache sizes the K/V rows of --model's checkpoint, which is not given");
    if (model_dir) {
        if ((st = model_shape_load(model_dir, mla_expanded, &ms)) != EPM_OK)
            return cli_fail(W, st);
        o.hidden = have_hidden ? o.hidden : ms.hidden;
        o.kv_dim = have_kv ? o.kv_dim : ms.kv_dim;
        o.ffn = have_ffn ? o.ffn : ms.ffn;
        experts = experts ? experts : ms.experts;
        groups = groups ? groups : ms.groups;
    }
    o.expert_groups = (int)groups;
    epm_cluster cl;
    epm_cluster_init(&cl, (int)nodes, (int)gpn);
    if (cluster_path && (st = epm_cluster_load_json(cluster_path, &cl)) != EPM_OK)
        return cli_fail(W, st);
    if (intra > 0)
        cl.intra_gbps = intra;
    if (inter > 0)
        cl.inter_gbps = inter;
    if (!quiet) {
        o.progress = cli_progress;
        cli_progress(NULL, "reading the trace");
    }
    epm_trace *t;
    if ((st = epm_trace_load(trace_path, (int)experts, &t)) != EPM_OK)
        return cli_fail(W, st);
    if ((st = model_shape_check(&ms, t, trace_path)) != EPM_OK) {
        epm_trace_destroy(t);
        return cli_fail(W, st);
    }
    if (groups && epm_expert_groups_check((int)groups, epm_trace_experts(t), "--expert-groups") != EPM_OK) {
        epm_trace_destroy(t);
        return cli_usage_error(W, "%s", epm_last_error());
    }
    if (redundant >= 0 && epm_redundant_slots(epm_trace_experts(t), epm_cluster_ranks(&cl), (int)redundant,
                                              "--redundant-experts", &o.slots_per_rank) != EPM_OK) {
        epm_trace_destroy(t);
        return cli_usage_error(W, "%s", epm_last_error());
    }
    /* (what the groups do, where they do nothing) */
    if (groups > 1 && o.method != EPM_METHOD_EPLB && groups_given)
        fprintf(stderr, "epmoe plan: note: --expert-groups shapes eplb's placements; %s does not take them\n",
                epm_method_name(o.method));
    if (groups > 1 && o.method == EPM_METHOD_EPLB && !epm_eplb_hierarchical((int)groups, epm_trace_experts(t), &cl))
        fprintf(stderr, "epmoe plan: note: %ld expert groups do not divide over %d nodes: eplb's global policy\n",
                groups, cl.nodes);
    if (redundant > 0 && o.method != EPM_METHOD_EPLB && o.method != EPM_METHOD_ILP)
        fprintf(stderr, "epmoe plan: note: --redundant-experts %ld gives spare slots, and %s leaves them empty (eplb "
                "and ilp fill them)\n", redundant, epm_method_name(o.method));
    const int exp_total = epm_trace_experts(t);
    epm_placement *p = NULL;
    st = epm_plan(t, &cl, &o, &p);
    epm_trace_destroy(t);
    if (st != EPM_OK)
        return cli_fail(W, st);
    /* (SGLang's map has a row for every decoder layer: the model's dense ones where --model says) */
    if (out)
        st = epm_placement_save_json(p, out);
    /* (an engine started with --ep-num-redundant-experts N builds experts + N physical ones: the map must
     * have as many) */
    if (st == EPM_OK && eplb_out && redundant >= 0 &&
        (int64_t)epm_placement_ranks(p) * epm_placement_max_slots(p) != (int64_t)exp_total + redundant)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "EPLB export %s: the placement holds %lld physical experts, and "
                      "--redundant-experts %ld asks for %lld (%s leaves spare slots empty: eplb and ilp fill them)",
                      eplb_out, (long long)epm_placement_ranks(p) * epm_placement_max_slots(p), redundant,
                      (long long)exp_total + redundant, epm_method_name(o.method));
    if (st == EPM_OK && eplb_out)
        st = epm_placement_export_eplb_layers(p, eplb_out, ms.num_layers, ms.num_layers ? ms.is_moe : NULL);
    if (st == EPM_OK && eplb_out && !ms.dir)
        fprintf(stderr, "epmoe plan: note: %s has a row for each of the trace's %d MoE layers; SGLang's map has one "
                "for every decoder layer: where the model has dense ones (DeepSeek's first_k_dense_replace), give "
                "--model to add their rows\n", eplb_out, epm_placement_layers(p));
    if (st != EPM_OK) {
        epm_placement_destroy(p);
        return cli_fail(W, st);
    }
    const epm_placement_info *in = epm_placement_get_info(p);
    if (!out && !eplb_out && !quiet) /* (a long solve's result is otherwise only its summary) */
        fprintf(stderr, "epmoe plan: note: the placement is not written anywhere (--out FILE)\n");
    if (json) {
        printf("{\"method\": \"%s\", \"mode\": \"%s\", \"quality\": \"%s\", \"objective\": %.6f, ", in->method,
               epm_mode_name(in->mode), epm_plan_quality_name(in->quality), in->objective);
        if (isfinite(in->bound))
            printf("\"bound\": %.6f, \"gap\": %.6g, ", in->bound, in->gap);
        else
            printf("\"bound\": null, \"gap\": null, ");
        printf("\"solve_seconds\": %.3f, \"ranks\": %d, \"slots_per_rank\": %d, \"out\": %s%s%s}\n",
               in->solve_seconds, epm_placement_ranks(p), epm_placement_max_slots(p), out ? "\"" : "",
               out ? out : "null", out ? "\"" : "");
    } else {
        printf("method %s  mode %s  quality %s  objective %.3f", in->method, epm_mode_name(in->mode),
               epm_plan_quality_name(in->quality), in->objective);
        if (isfinite(in->bound))
            printf("  bound %.3f  gap %.3g%%", in->bound, 100 * in->gap);
        printf("  time %.2fs  ranks %d  slots %d\n", in->solve_seconds, epm_placement_ranks(p),
               epm_placement_max_slots(p));
        if (in->note[0])
            printf("note: %s\n", in->note);
    }
    epm_placement_destroy(p);
    return EPM_EXIT_OK;
}

typedef struct {
    const char *path;
    epm_placement *p;
    epm_eval_result *r[2];
    epm_mode modes[2];
    int nmodes;
    int eplb_slots; /* online rebalancing's, from --eplb-slots or --redundant-experts */
    int hier;       /* its exchanges take the hierarchical path (--hier, its cluster) */
} evaluated;

static json_t *link_obj(const int64_t *b)
{
    return json_pack("{s:I, s:I}", "intra_node", (json_int_t)b[EPM_LINK_INTRA], "inter_node",
                     (json_int_t)b[EPM_LINK_INTER]);
}

static json_t *triple(const int64_t *b) { return json_pack("[I, I, I]", (json_int_t)b[0], (json_int_t)b[1], (json_int_t)b[2]); }

static void cross_counts(const epm_eval_result *r, int64_t *x_rank, int64_t *x_node)
{
    *x_rank = *x_node = 0;
    for (int l = 0; l < r->layers; l++) {
        *x_rank += r->layer[l].transfers[EPM_LINK_INTRA] + r->layer[l].transfers[EPM_LINK_INTER];
        *x_node += r->layer[l].transfers[EPM_LINK_INTER];
    }
}

/* what a rebalanced eval's report says of the experts its placements took */
enum { ONLINE = 1, ONLINE_PEERS = 2, ONLINE_READ_PRICED = 4 };

static json_t *result_json(const epm_eval_result *r, const epm_eval_result *base, int per_layer, int online, int hier)
{
    int64_t xr, xn, maxload = 0;
    double mean = 0;
    cross_counts(r, &xr, &xn);
    for (int l = 0; l < r->layers; l++) {
        maxload = r->layer[l].max_load > maxload ? r->layer[l].max_load : maxload;
        mean += (double)r->layer[l].sum_load / r->ranks / r->layers;
    }
    json_t *o = json_pack("{s:s, s:f, s:I, s:f, s:I, s:I, s:o, s:o, s:f, s:f, s:f}", "mode", epm_mode_name(r->mode),
                          "max_over_mean_load", r->max_over_mean_load, "max_rank_load", (json_int_t)maxload,
                          "mean_rank_load", mean, "transfers_crossing_ranks", (json_int_t)xr,
                          "transfers_crossing_nodes", (json_int_t)xn, "bytes", link_obj(r->total_bytes),
                          "gather_bytes", link_obj(r->gather_bytes), "modelled_seconds", r->t_total,
                          "ratio_to_first", base->t_total > 0 ? r->t_total / base->t_total : 1.0, "kv_cache_factor",
                          r->kv_cache_factor);
    if (o) { /* (what the path puts on the wire, which the modelled time prices) */
        json_object_set_new(o, "path", json_string(hier ? "hierarchical" : "flat"));
        json_object_set_new(o, "wire_bytes", link_obj(r->wire_bytes));
        json_object_set_new(o, "wire_msgs", r->msgs_counted ? link_obj(r->wire_msgs) : json_null());
    }
    if (o && r->routed > 0) /* (the nodes tokens reach: DeepSeek's node-limited routing) */
        json_object_set_new(o, "nodes", json_pack("{s:f, s:i, s:I}", "per_token", (double)r->nodes_reached / r->routed,
                                                  "most", r->max_nodes_reached, "dispatches_crossing",
                                                  (json_int_t)r->node_dispatches));
    if (o && online) /* (a rebalanced run's: what it took, none perhaps, and from where) */
        json_object_set_new(o, "eplb", json_pack("{s:i, s:I, s:s, s:o, s:f, s:I, s:o}", "rebalances", r->rebalances,
                                                 "experts_moved", (json_int_t)r->moved, "source",
                                                 online & ONLINE_PEERS ? "peers" : "checkpoint", "bytes_copied",
                                                 link_obj(r->move_bytes), "copy_seconds", r->t_moves, "bytes_read",
                                                 (json_int_t)r->read_bytes, "read_seconds",
                                                 online & ONLINE_READ_PRICED ? json_real(r->t_reads) : json_null()));
    if (o && per_layer) {
        json_t *layers = json_array();
        for (int l = 0; l < r->layers && layers; l++) {
            const epm_eval_layer *y = &r->layer[l];
            json_t *load = json_array();
            for (int q = 0; q < r->ranks; q++)
                json_array_append_new(load, json_integer(r->rank_load[(size_t)l * (size_t)r->ranks + (size_t)q]));
            json_array_append_new(layers, json_pack("{s:i, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:f, s:f}", "layer", l,
                                                    "bytes", triple(y->bytes), "kv_bytes", triple(y->kv_bytes),
                                                    "wire_bytes", triple(r->layer_wire + (size_t)l * EPM_LINK_COUNT),
                                                    "transfers", triple(y->transfers), "rank_load", load,
                                                    "max_send_bytes", (json_int_t)y->max_send_bytes,
                                                    "max_recv_bytes", (json_int_t)y->max_recv_bytes, "t_compute",
                                                    y->t_compute, "t_comm", y->t_comm));
        }
        json_object_set_new(o, "layers", layers);
    }
    return o;
}

static int print_eval_json(const evaluated *ev, int n, int per_layer, int online, int64_t passes)
{
    json_t *list = json_array();
    for (int i = 0; i < n && list; i++) {
        const epm_placement_info *in = epm_placement_get_info(ev[i].p);
        json_t *results = json_array();
        for (int m = 0; m < ev[i].nmodes; m++)
            json_array_append_new(results, result_json(ev[i].r[m], ev[0].r[m], per_layer, online, ev[i].hier));
        json_t *pl = json_pack("{s:s, s:s, s:s, s:o}", "file", ev[i].path, "method", in->method, "planned_for",
                               epm_mode_name(in->mode), "results", results);
        if (pl && ev[i].nmodes == 2) {
            double h = ev[i].r[0]->t_total, f = ev[i].r[1]->t_total;
            json_object_set_new(pl, "cheaper_mode", json_string(f < h ? "follow" : "home"));
            json_object_set_new(pl, "saving", json_real((f < h ? h - f : f - h) / (f < h ? h : f > 0 ? f : 1)));
        }
        json_array_append_new(list, pl);
    }
    json_t *root = json_pack("{s:o, s:I}", "placements", list, "passes", (json_int_t)passes);
    char *text = root ? json_dumps(root, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(root);
    if (!text)
        return cli_fail("plan eval", epm_fail(EPM_ERR_NOMEM, "out of memory building the JSON report"));
    puts(text);
    free(text);
    return EPM_EXIT_OK;
}

static void print_eval_text(const evaluated *ev, int n, int per_layer, int online, int64_t passes, int latency)
{
    if (passes > 0)
        printf("modelled time pass by pass: the trace's %lld passes (pass_ids), each phase's busiest rank in each\n",
               (long long)passes);
    for (int m = 0; m < ev[0].nmodes; m++) {
        const epm_eval_result *base = ev[0].r[m];
        printf("mode %s (ratios against %s)\n", epm_mode_name(ev[0].modes[m]), ev[0].path);
        printf("%-28s %-12s %9s %12s %12s %14s %14s %12s %7s\n", "placement", "method", "max/mean", "x-rank xfer",
               "x-node xfer", "intra bytes", "inter bytes", "model ms", "ratio");
        for (int i = 0; i < n; i++) {
            const epm_eval_result *r = ev[i].r[m];
            int64_t xr, xn;
            cross_counts(r, &xr, &xn);
            const char *name = strrchr(ev[i].path, '/') ? strrchr(ev[i].path, '/') + 1 : ev[i].path;
            printf("%-28.28s %-12.12s %9.3f %12lld %12lld %14lld %14lld %12.4f %7.3f\n", name,
                   epm_placement_get_info(ev[i].p)->method, r->max_over_mean_load, (long long)xr, (long long)xn,
                   (long long)r->total_bytes[EPM_LINK_INTRA], (long long)r->total_bytes[EPM_LINK_INTER],
                   1e3 * r->t_total, base->t_total > 0 ? r->t_total / base->t_total : 1.0);
            if (epm_placement_cluster(ev[i].p)->nodes > 1 && r->routed > 0)
                printf("    nodes a token reaches: %.3f on average, %d at most; %lld dispatches cross nodes once "
                       "each (hierarchical path)\n", (double)r->nodes_reached / r->routed, r->max_nodes_reached,
                       (long long)r->node_dispatches);
            if (r->msgs_counted && (ev[i].hier || latency))
                printf("    on the wire (%s path, priced): %lld bytes in %lld messages intra-node, %lld bytes in %lld "
                       "messages inter-node\n", ev[i].hier ? "hierarchical" : "flat", (long long)r->wire_bytes[EPM_LINK_INTRA],
                       (long long)r->wire_msgs[EPM_LINK_INTRA], (long long)r->wire_bytes[EPM_LINK_INTER],
                       (long long)r->wire_msgs[EPM_LINK_INTER]);
            else if (ev[i].hier) /* (past the ranks whose messages are counted) */
                printf("    on the wire (hierarchical path, priced): %lld bytes intra-node, %lld inter-node\n",
                       (long long)r->wire_bytes[EPM_LINK_INTRA], (long long)r->wire_bytes[EPM_LINK_INTER]);
            if (online & ONLINE_PEERS)
                printf("    online rebalancing: %d placements taken, %lld experts moved, copied: %lld bytes "
                       "intra-node, %lld inter-node, %.4f ms\n", r->rebalances, (long long)r->moved,
                       (long long)r->move_bytes[EPM_LINK_INTRA], (long long)r->move_bytes[EPM_LINK_INTER],
                       1e3 * r->t_moves);
            else if (online & ONLINE_READ_PRICED)
                printf("    online rebalancing: %d placements taken, %lld experts moved, read from the checkpoint: "
                       "%lld bytes, %.4f ms\n", r->rebalances, (long long)r->moved, (long long)r->read_bytes,
                       1e3 * r->t_reads);
            else if (online)
                printf("    online rebalancing: %d placements taken, %lld experts moved, read from the checkpoint: "
                       "%lld bytes (not priced: --read-gbps)\n", r->rebalances, (long long)r->moved,
                       (long long)r->read_bytes);
            for (int l = 0; per_layer && l < r->layers; l++) {
                const epm_eval_layer *y = &r->layer[l];
                printf("    layer %3d: max load %lld / mean %.1f, x-rank %lld, x-node %lld, bytes intra %lld inter %lld"
                       " (+kv %lld/%lld), %.4f ms\n",
                       l, (long long)y->max_load, (double)y->sum_load / r->ranks,
                       (long long)(y->transfers[1] + y->transfers[2]), (long long)y->transfers[2],
                       (long long)y->bytes[1], (long long)y->bytes[2], (long long)y->kv_bytes[1],
                       (long long)y->kv_bytes[2], 1e3 * (y->t_compute + y->t_comm));
                if (ev[i].hier)
                    printf("               on the wire intra %lld inter %lld\n",
                           (long long)r->layer_wire[(size_t)l * EPM_LINK_COUNT + EPM_LINK_INTRA],
                           (long long)r->layer_wire[(size_t)l * EPM_LINK_COUNT + EPM_LINK_INTER]);
            }
        }
    }
    if (ev[0].nmodes == 2) {
        for (int i = 0; i < n; i++) {
            double h = ev[i].r[0]->t_total, f = ev[i].r[1]->t_total;
            printf("%s: %s mode is cheaper by %.1f%% (modelled %.4f vs %.4f ms); follow keeps %gx the KV cache "
                   "memory of home\n",
                   ev[i].path, f < h ? "follow" : "home", 100.0 * fabs(h - f) / (f < h ? h : f), 1e3 * (f < h ? f : h),
                   1e3 * (f < h ? h : f), ev[i].r[1]->kv_cache_factor);
        }
    }
}

/* p as the run that ran in mode under it writes it (epmoe run --placement-out) */
static epm_status save_last(const epm_placement *p, epm_mode mode, const char *path)
{
    epm_placement *q;
    EPM_CHECK(epm_placement_clone(p, &q));
    epm_placement_info info = *epm_placement_get_info(q);
    info.mode = mode;
    epm_placement_set_info(q, &info);
    const epm_status st = epm_placement_save_json(q, path);
    epm_placement_destroy(q);
    return st;
}

static int cmd_eval(int argc, char **argv)
{
    const char *W = "plan eval";
    const char *trace_path = NULL, *mode_s = NULL, *wire_s = NULL, *pout = NULL;
    long hidden = 4096, dtb = 2, kv = 0, ffn = 14336, eplb_i = 0, eplb_w = 0, eplb_s = 0, xb = -1, lag = 0, groups = 0;
    long redundant = -1;
    int peers = 0, from_given = 0, held = CLI_HELD_AUTO, held_given = 0;
    epm_xcomm_hier hier = EPM_XHIER_AUTO;
    double eplb_g = 0, rgbps = 0, lat_us[2] = {0, 0};
    int json = 0, per_layer = 0, c, have_hidden = 0, have_dtb = 0, have_kv = 0, have_ffn = 0;
    const char *model_dir = NULL;
    int mla_expanded = 0, mla_given = 0; /* --mla-cache: the K/V rows of run --mla-cache */
    model_shape ms = {0};
    if (cli_exact_options(W, argc, argv, plan_opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", plan_opts, NULL)) != -1) {
        switch (c) {
        case O_TRACE: trace_path = optarg; break;
        case O_MODE: mode_s = optarg; break;
        case O_HIDDEN: if (!cli_parse_int(W, "--hidden", optarg, 1, 1 << 20, &hidden)) return EPM_EXIT_USAGE; have_hidden = 1; break;
        case O_DTB: if (!cli_parse_int(W, "--dtype-bytes", optarg, 1, 8, &dtb)) return EPM_EXIT_USAGE; have_dtb = 1; break;
        case O_KV: if (!cli_parse_int(W, "--kv-dim", optarg, 0, 1 << 20, &kv)) return EPM_EXIT_USAGE; have_kv = 1; break;
        case O_FFN: if (!cli_parse_int(W, "--ffn", optarg, 1, 1 << 24, &ffn)) return EPM_EXIT_USAGE; have_ffn = 1; break;
        case O_MODEL: model_dir = optarg; break;
        case O_MLA:
            if (!parse_mla(W, optarg, &mla_expanded, &mla_given))
                return EPM_EXIT_USAGE;
            break;
        case O_PERLAYER: per_layer = 1; break;
        case O_WIRE: wire_s = optarg; break;
        case O_HIER:
            if (epm_xcomm_hier_parse(optarg, &hier) != EPM_OK)
                return cli_usage_error(W, "--hier '%s': expected auto, on or off", optarg);
            break;
        case O_LAT_INTRA: if (!cli_parse_double(W, "--intra-latency-us", optarg, 0, 1e9, &lat_us[0])) return EPM_EXIT_USAGE; break;
        case O_LAT_INTER: if (!cli_parse_double(W, "--inter-latency-us", optarg, 0, 1e9, &lat_us[1])) return EPM_EXIT_USAGE; break;
        case O_EPLBI: if (!cli_parse_int(W, "--eplb-interval", optarg, 1, INT32_MAX, &eplb_i)) return EPM_EXIT_USAGE; break;
        case O_EPLBW: if (!cli_parse_int(W, "--eplb-window", optarg, 1, INT32_MAX, &eplb_w)) return EPM_EXIT_USAGE; break;
        case O_EPLBS: if (!cli_parse_int(W, "--eplb-slots", optarg, 1, INT32_MAX, &eplb_s)) return EPM_EXIT_USAGE; break;
        case O_REDUNDANT: if (!cli_parse_int(W, "--redundant-experts", optarg, 0, 1 << 20, &redundant)) return EPM_EXIT_USAGE; break;
        case O_POUT: pout = optarg; break;
        case O_EPLBG: if (!cli_parse_double(W, "--eplb-min-gain", optarg, 0, 0.999, &eplb_g)) return EPM_EXIT_USAGE; break;
        case O_XB: if (!cli_parse_int(W, "--expert-bytes", optarg, 0, CLI_EXPERT_BYTES_MAX, &xb)) return EPM_EXIT_USAGE; break;
        case O_EPLBF: {
            static const char *const from[] = {"checkpoint", "peers", NULL};
            int k;
            if (!cli_parse_choice(W, "--eplb-from", optarg, from, &k))
                return EPM_EXIT_USAGE;
            peers = k == 1;
            from_given = 1;
            break;
        }
        case O_EPLBLAG: if (!cli_parse_int(W, "--eplb-lag", optarg, 0, INT32_MAX, &lag)) return EPM_EXIT_USAGE; break;
        case O_GROUPS: if (!cli_parse_int(W, "--expert-groups", optarg, 1, 1 << 20, &groups)) return EPM_EXIT_USAGE; break;
        case O_EDT: if (!cli_parse_choice(W, "--expert-dtype", optarg, cli_held_dtypes, &held)) return EPM_EXIT_USAGE; held_given = 1; break;
        case O_RGBPS: if (!cli_parse_double(W, "--read-gbps", optarg, 1e-6, 1e9, &rgbps)) return EPM_EXIT_USAGE; break;
        case O_JSON: json = 1; break;
        case O_HELP: fputs(eval_usage, stdout); return EPM_EXIT_OK;
        default: return c == '?' ? cli_option_error(W, argv) : cli_option_not_here(W, c, plan_opts);
        }
    }
    if (!trace_path)
        return cli_usage_error(W, "--trace is required");
    int n = argc - optind;
    if (n < 1)
        return cli_usage_error(W, "name at least one placement JSON");
    if (cli_slots_or_redundant(W, "--eplb-slots", eplb_s, redundant) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if (cli_eplb_usage(W, eplb_i, eplb_w, lag,
                       eplb_w ? "--eplb-window" : eplb_s ? "--eplb-slots" : redundant >= 0 ? "--redundant-experts"
                       : eplb_g > 0 ? "--eplb-min-gain"
                       : from_given ? "--eplb-from" : xb >= 0 ? "--expert-bytes" : rgbps > 0 ? "--read-gbps"
                       : groups ? "--expert-groups" : NULL) !=
        EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if (pout && n > 1)
        return cli_usage_error(W, "--placement-out writes one placement's last: name one placement, not %d", n);
    if (rgbps > 0 && peers)
        return cli_usage_error(W, "--read-gbps %g prices reads from the checkpoint, and --eplb-from peers copies "
                               "experts between ranks instead", rgbps);
    /* (a read costs the bytes as stored, whatever run holds them in; a copy is as held) */
    if (held_given && !peers)
        return cli_usage_error(W, "--expert-dtype %s sizes the experts copied between ranks (--eplb-from peers); a "
                               "read from the checkpoint is as stored", cli_held_dtypes[held]);
    if (held_given && xb >= 0)
        return cli_usage_error(W, "--expert-bytes %ld and --expert-dtype %s: each sets the bytes of an expert; give "
                               "one", xb, cli_held_dtypes[held]);
    epm_mode fixed = EPM_MODE_HOME;
    int both = mode_s && !strcmp(mode_s, "both");
    if (mode_s && !both && epm_mode_parse(mode_s, &fixed) != EPM_OK)
        return cli_usage_error(W, "--mode '%s' is not home, follow or both", mode_s);
    int wire = CLI_WIRE_F32;
    if (wire_s) {
        if (!cli_parse_choice(W, "--wire-dtype", wire_s, cli_wire_dtypes, &wire))
            return EPM_EXIT_USAGE;
        if (have_dtb)
            return cli_usage_error(W, "--wire-dtype %s and --dtype-bytes %ld: give one", wire_s, dtb);
        dtb = wire == CLI_WIRE_F32 ? 4 : 2; /* fp8's combine is bf16 */
        have_dtb = 1;
    }
    int fp8 = wire == CLI_WIRE_FP8;
    epm_status st;
    if (mla_given && !model_dir)
        return cli_usage_error(W, "--mla-cache sizes the K/V rows of --model's checkpoint, which is not given");
    if (model_dir) {
        if ((st = model_shape_load(model_dir, mla_expanded, &ms)) != EPM_OK)
            return cli_fail(W, st);
        hidden = have_hidden ? hidden : ms.hidden;
        /* what epmoe run sends: its activations are float32 whatever the
         * weights are held in (a bf16 checkpoint's too), so plan eval --model
         * predicts the run's bytes; --wire-dtype those of run --wire-dtype */
        dtb = have_dtb ? dtb : (long)sizeof(float);
        kv = have_kv ? kv : ms.kv_dim;
        ffn = have_ffn ? ffn : ms.ffn;
        groups = groups ? groups : ms.groups;
        /* (a copy is as run holds the expert, a read as the checkpoint stores it) */
        if (eplb_i > 0 && xb < 0 && (xb = cli_model_expert_bytes(W, model_dir, peers ? held : CLI_STORED)) < -1)
            return EPM_EXIT_FAIL;
    }
    if (xb < 0) /* (bf16, or as held, each part padded to 4 bytes as run packs it) */
        xb = cli_expert_bytes(held == CLI_HELD_F32 ? 4 : 2, hidden, ffn);
    epm_trace *t = NULL;
    evaluated *ev = calloc((size_t)n, sizeof *ev);
    int rc = EPM_EXIT_FAIL;
    if (!ev)
        return cli_fail(W, epm_fail(EPM_ERR_NOMEM, "out of memory"));
    for (int i = 0; i < n; i++) {
        ev[i].path = argv[optind + i];
        if ((st = epm_placement_load_json(ev[i].path, &ev[i].p)) != EPM_OK) {
            rc = cli_fail(W, st);
            goto out;
        }
    }
    /* (the trace is read for the first placement's experts: a trace that
     * reads without that bound names more, the placement's mismatch as much
     * as the trace's) */
    const int e0 = epm_placement_experts(ev[0].p);
    if ((st = epm_trace_load(trace_path, e0, &t)) != EPM_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", epm_last_error());
        epm_trace *wide = NULL;
        const int more = st == EPM_ERR_FORMAT && epm_trace_load(trace_path, 0, &wide) == EPM_OK &&
                         epm_trace_experts(wide) > e0;
        epm_trace_destroy(wide);
        epm_fail(st, "%s", why);
        rc = cli_fail(W, more ? epm_fail_context(st, "%s has %d experts per MoE layer", ev[0].path, e0) : st);
        goto out;
    }
    if ((st = model_shape_check(&ms, t, trace_path)) != EPM_OK) {
        rc = cli_fail(W, st);
        goto out;
    }
    if (eplb_i > 0 && !epm_trace_pass_ids(t)) {
        rc = cli_fail(W, epm_fail(EPM_ERR_INVALID_ARG, "%s: online rebalancing (--eplb-interval) replays the "
                                  "trace's passes, and it has no pass_ids (epmoe run --trace-out records them, "
                                  "epmoe trace synth --pass-tokens makes them)", trace_path));
        goto out;
    }
    if (eplb_i > 0 && groups && epm_expert_groups_check((int)groups, epm_trace_experts(t), "--expert-groups") != EPM_OK) {
        rc = cli_usage_error(W, "%s", epm_last_error());
        goto out;
    }
    for (int i = 1; i < n; i++) { /* (allowed: a user may compare cluster sizes; said, since ratios are against the first) */
        const epm_cluster *a = epm_placement_cluster(ev[0].p), *b = epm_placement_cluster(ev[i].p);
        if (a->nodes != b->nodes || a->gpus_per_node != b->gpus_per_node)
            fprintf(stderr, "epmoe plan eval: note: %s is for %d node%s x %d ranks, %s for %d x %d: the ratios "
                    "compare different clusters\n", ev[0].path, a->nodes, a->nodes == 1 ? "" : "s", a->gpus_per_node,
                    ev[i].path, b->nodes, b->gpus_per_node);
    }
    /* Without --mode, the placements' own mode; placements planned for
     * different modes are compared in both, side by side. */
    if (!mode_s) {
        fixed = epm_placement_get_info(ev[0].p)->mode;
        for (int i = 1; i < n && !both; i++)
            if (epm_placement_get_info(ev[i].p)->mode != fixed) {
                both = 1;
                fprintf(stderr, "epmoe plan eval: %s was planned for %s mode, %s for %s: evaluating both modes\n",
                        ev[0].path, epm_mode_name(fixed), ev[i].path,
                        epm_mode_name(epm_placement_get_info(ev[i].p)->mode));
            }
    }
    /* as epmoe run refuses it: follow mode's rows carry the residual streams */
    if (fp8 && (both || fixed == EPM_MODE_FOLLOW)) {
        rc = cli_usage_error(W, "--wire-dtype fp8 is for home mode (epmoe run refuses it in follow mode), and %s %s",
                             mode_s ? "--mode asks for" : "the placements ask for", both ? "both modes" : "follow");
        goto out;
    }
    if (pout && both) {
        rc = cli_usage_error(W, "--placement-out writes one mode's last placement, and %s both modes",
                             mode_s ? "--mode asks for" : "the placements ask for");
        goto out;
    }
    for (int i = 0; i < n; i++) { /* (before anything is evaluated: each placement's ranks) */
        ev[i].eplb_slots = (int)eplb_s;
        if (redundant >= 0 && epm_redundant_slots(epm_placement_experts(ev[i].p), epm_placement_ranks(ev[i].p),
                                                  (int)redundant, "--redundant-experts", &ev[i].eplb_slots) != EPM_OK) {
            rc = cli_usage_error(W, "%s (%s)", epm_last_error(), ev[i].path);
            goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        if (epm_placement_experts(ev[i].p) != epm_trace_experts(t)) {
            rc = cli_fail(W, epm_fail(EPM_ERR_MISMATCH, "%s has %d experts per layer, the trace %s has %d", ev[i].path,
                                      epm_placement_experts(ev[i].p), trace_path, epm_trace_experts(t)));
            goto out;
        }
        ev[i].nmodes = both ? 2 : 1;
        ev[i].modes[0] = both ? EPM_MODE_HOME : fixed;
        ev[i].modes[1] = EPM_MODE_FOLLOW;
        for (int m = 0; m < ev[i].nmodes; m++) {
            epm_eval_opts eo;
            epm_eval_opts_init(&eo);
            eo.mode = ev[i].modes[m];
            eo.hidden_bytes = hidden * dtb;
            eo.dispatch_bytes = fp8 ? hidden + 4 * (int64_t)epm_fp8_row_blocks((int)hidden) : 0; /* the rows run sends */
            eo.kv_row_bytes = (kv ? kv : hidden / 2) * dtb;
            eo.flops_per_assignment = 6.0 * (double)hidden * (double)ffn;
            eo.eplb_interval = (int)eplb_i;
            eo.eplb_window = (int)eplb_w;
            eo.eplb_slots = ev[i].eplb_slots;
            eo.eplb_min_gain = eplb_g;
            eo.expert_bytes = peers ? xb : 0;
            eo.read_expert_bytes = peers ? 0 : xb; /* (the run's default: each gainer reads the file) */
            eo.read_gbps = rgbps;
            eo.eplb_lag = (int)lag;
            eo.eplb_groups = eplb_i > 0 ? (int)groups : 0;
            const epm_cluster *pc = epm_placement_cluster(ev[i].p);
            eo.hierarchical = epm_xcomm_hier_takes(hier, pc->nodes, pc->gpus_per_node);
            eo.intra_latency_s = lat_us[0] * 1e-6;
            eo.inter_latency_s = lat_us[1] * 1e-6;
            ev[i].hier = eo.hierarchical;
            if ((st = epm_eval(t, ev[i].p, &eo, &ev[i].r[m])) != EPM_OK) {
                rc = cli_fail(W, epm_fail_context(st, "%s", ev[i].path));
                goto out;
            }
        }
    }
    if (pout && (st = save_last(ev[0].r[0]->last ? ev[0].r[0]->last : ev[0].p, ev[0].modes[0], pout)) != EPM_OK) {
        rc = cli_fail(W, st);
        goto out;
    }
    const int online = eplb_i == 0 ? 0 : peers ? ONLINE | ONLINE_PEERS : rgbps > 0 ? ONLINE | ONLINE_READ_PRICED : ONLINE;
    int64_t passes;
    if ((st = epm_trace_passes(t, &passes)) != EPM_OK) {
        rc = cli_fail(W, st);
    } else if (json) {
        rc = print_eval_json(ev, n, per_layer, online, passes);
    } else {
        print_eval_text(ev, n, per_layer, online, passes, lat_us[0] > 0 || lat_us[1] > 0);
        rc = EPM_EXIT_OK;
    }
out:
    for (int i = 0; i < n; i++) {
        epm_placement_destroy(ev[i].p);
        epm_eval_result_destroy(ev[i].r[0]);
        epm_eval_result_destroy(ev[i].r[1]);
    }
    free(ev);
    epm_trace_destroy(t);
    return rc;
}

int epm_cli_plan(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "eval"))
        return cmd_eval(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "moves"))
        return epm_cli_plan_moves(argc - 1, argv + 1);
    if (argc < 2)
        return cli_usage_error("plan", "--trace is required");
    return cmd_plan(argc, argv);
}
