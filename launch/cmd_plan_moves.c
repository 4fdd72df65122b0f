/* epmoe plan moves: what changing a deployed placement to another costs in
 * copies of experts, priced as online rebalancing makes them (each gained
 * replica from the rank epm_placement_moves names) by the cost model's
 * phase; with --align, the new placement's nodes and ranks renamed first to
 * keep what the old one holds (the same balance and traffic, fewest moves). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "epmoe/model.h"
#include "xcomm.h"

static const char usage[] =
    "usage: epmoe plan moves FROM.json TO.json [options]\n"
    "What changing placement FROM (deployed) to TO costs: every replica TO has that FROM lacks is\n"
    "copied from a rank holding it in FROM (on the same node where one does; the source epmoe run's\n"
    "online rebalancing takes), priced as plan eval prices a phase: the busiest rank's bytes over\n"
    "FROM's cluster links. Also the most one rank gains: what it reads where run reads gained\n"
    "experts from the checkpoint (its default) instead.\n"
    "  --expert-bytes N   bytes of one expert copied (epmoe run reports its expert_bytes)\n"
    "  --model DIR        instead: the checkpoint's experts as stored (its config's shape in bf16\n"
    "                     where its weights are not there)\n"
    "  --hidden H --ffn F without either: the expert's shape, in bf16 (default 4096 x 14336,\n"
    "                     Mixtral-8x7B's)\n"
    "  --expert-dtype D   auto (as stored, run's default), bf16 or f32: as run --expert-dtype holds\n"
    "                     the experts it copies (--kernels cuda holds f32); reads stay as stored\n"
    "  --read-gbps G      price those reads too: the GB/s one rank reads at (the ranks side by side)\n"
    "  --align            rename TO's nodes and ranks first so that as many replicas as possible stay\n"
    "                     where FROM holds them (the same balance and traffic)\n"
    "  --out FILE         write TO as priced (aligned with --align): the placement to deploy\n"
    "  --hier auto|on|off the path the copies take between nodes, as run --hier (default auto: the\n"
    "                     flat one; on: the hierarchical one, through a gateway rank);\n"
    "                     as plan eval prices a rebalance's copies between passes\n"
    "  --per-layer        also the experts copied per MoE layer\n"
    "  --json             JSON instead of text\n";

enum { O_XB = 256, O_MODEL, O_HIDDEN, O_FFN, O_ALIGN, O_OUT, O_PERLAYER, O_JSON, O_RGBPS, O_EDT, O_HIER, O_HELP };
static const struct option opts[] = {
    {"expert-bytes", required_argument, 0, O_XB}, {"model", required_argument, 0, O_MODEL},
    {"hidden", required_argument, 0, O_HIDDEN},   {"ffn", required_argument, 0, O_FFN},
    {"align", no_argument, 0, O_ALIGN},           {"out", required_argument, 0, O_OUT},
    {"per-layer", no_argument, 0, O_PERLAYER},    {"json", no_argument, 0, O_JSON},
    {"read-gbps", required_argument, 0, O_RGBPS}, {"expert-dtype", required_argument, 0, O_EDT},
    {"hier", required_argument, 0, O_HIER},       {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0}};

/* the experts copied in each layer, [layers] */
static epm_status per_layer_counts(const epm_placement *from, const epm_placement *to, int64_t *count)
{
    int64_t n;
    EPM_CHECK(epm_placement_moves(from, to, NULL, 0, &n));
    epm_expert_move *mv = malloc((size_t)(n ? n : 1) * sizeof *mv);
    if (!mv)
        return EPM_ERR_NOMEM;
    epm_status st = epm_placement_moves(from, to, mv, n, &n);
    for (int64_t i = 0; i < n && st == EPM_OK; i++)
        count[mv[i].layer]++;
    free(mv);
    return st;
}

/* The placements must be of the model's MoE layers and experts (config.json
 * alone: a planning machine need not hold the weights). */
static epm_status model_shape_check(const char *dir, const epm_placement *p, const char *path)
{
    char cfg[4096];
    if (snprintf(cfg, sizeof cfg, "%s/config.json", dir) >= (int)sizeof cfg)
        return epm_fail(EPM_ERR_INVALID_ARG, "--model '%s': path too long", dir);
    epm_model_config c;
    EPM_CHECK(epm_model_config_load(cfg, &c));
    const int layers = epm_model_config_moe_layers(&c), experts = c.num_experts;
    epm_model_config_clear(&c);
    if (epm_placement_layers(p) != layers || epm_placement_experts(p) != experts)
        return epm_fail(EPM_ERR_MISMATCH, "%s has %d MoE layers of %d experts, the model %s %d of %d", path,
                        epm_placement_layers(p), epm_placement_experts(p), dir, layers, experts);
    return EPM_OK;
}

int epm_cli_plan_moves(int argc, char **argv)
{
    const char *W = "plan moves";
    const char *model = NULL, *out = NULL;
    long xb = -1, hidden = 4096, ffn = 14336;
    int align = 0, per_layer = 0, json = 0, shape_given = 0, held = CLI_HELD_AUTO, held_given = 0, c;
    epm_xcomm_hier hier = EPM_XHIER_AUTO;
    double rgbps = 0;
    if (cli_exact_options(W, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_XB: if (!cli_parse_int(W, "--expert-bytes", optarg, 0, CLI_EXPERT_BYTES_MAX, &xb)) return EPM_EXIT_USAGE; break;
        case O_MODEL: model = optarg; break;
        case O_HIDDEN: if (!cli_parse_int(W, "--hidden", optarg, 1, 1 << 20, &hidden)) return EPM_EXIT_USAGE; shape_given = 1; break;
        case O_FFN: if (!cli_parse_int(W, "--ffn", optarg, 1, 1 << 24, &ffn)) return EPM_EXIT_USAGE; shape_given = 1; break;
        case O_ALIGN: align = 1; break;
        case O_OUT: out = optarg; break;
        case O_PERLAYER: per_layer = 1; break;
        case O_JSON: json = 1; break;
        case O_EDT: if (!cli_parse_choice(W, "--expert-dtype", optarg, cli_held_dtypes, &held)) return EPM_EXIT_USAGE; held_given = 1; break;
        case O_RGBPS: if (!cli_parse_double(W, "--read-gbps", optarg, 1e-6, 1e9, &rgbps)) return EPM_EXIT_USAGE; break;
        case O_HIER:
            if (epm_xcomm_hier_parse(optarg, &hier) != EPM_OK)
                return cli_usage_error(W, "--hier '%s': expected auto, on or off", optarg);
            break;
        case O_HELP: fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (argc - optind != 2)
        return cli_usage_error(W, "name two placements, FROM and TO (%d given)", argc - optind);
    const char *from_path = argv[optind], *to_path = argv[optind + 1];
    if (model && xb >= 0)
        return cli_usage_error(W, "--model and --expert-bytes %ld: each sets the bytes of an expert; give one", xb);
    if ((model || xb >= 0) && shape_given)
        return cli_usage_error(W, "--hidden and --ffn size an expert when neither --model nor --expert-bytes does");
    if (out && (cli_same_file(out, from_path) || cli_same_file(out, to_path) || !strcmp(out, from_path) ||
                !strcmp(out, to_path)))
        return cli_usage_error(W, "--out '%s' would overwrite an input", out);
    if (held_given && xb >= 0)
        return cli_usage_error(W, "--expert-bytes %ld and --expert-dtype %s: each sets the bytes of an expert; give "
                               "one", xb, cli_held_dtypes[held]);
    /* a copy is as run holds the expert, a read as the checkpoint stores it */
    long rb = xb;
    if (model && ((xb = cli_model_expert_bytes(W, model, held)) < -1 ||
                  (rb = cli_model_expert_bytes(W, model, CLI_STORED)) < -1))
        return EPM_EXIT_FAIL;
    if (xb < 0) { /* (bf16, or as held, each part padded to 4 bytes as run packs it) */
        xb = cli_expert_bytes(held == CLI_HELD_F32 ? 4 : 2, hidden, ffn);
        rb = cli_expert_bytes(2, hidden, ffn);
    }
    epm_placement *from = NULL, *to = NULL, *aligned = NULL;
    int64_t *layer = NULL;
    int rc = EPM_EXIT_FAIL;
    epm_move_cost mc;
    epm_status st = epm_placement_load_json(from_path, &from);
    if (st == EPM_OK)
        st = epm_placement_load_json(to_path, &to);
    if (st == EPM_OK && (epm_placement_layers(from) != epm_placement_layers(to) ||
                         epm_placement_experts(from) != epm_placement_experts(to) ||
                         epm_placement_ranks(from) != epm_placement_ranks(to)))
        st = epm_fail(EPM_ERR_MISMATCH, "%s has %d layers x %d experts on %d ranks, %s %d x %d on %d", from_path,
                      epm_placement_layers(from), epm_placement_experts(from), epm_placement_ranks(from), to_path,
                      epm_placement_layers(to), epm_placement_experts(to), epm_placement_ranks(to));
    /* (the experts priced are the model's: the placements must be of its MoE layers and experts) */
    if (st == EPM_OK && model)
        st = model_shape_check(model, from, from_path);
    /* (the copies run over the deployed cluster: the new plan must be for the same nodes) */
    if (st == EPM_OK && epm_placement_cluster(from)->nodes != epm_placement_cluster(to)->nodes)
        st = epm_fail(EPM_ERR_MISMATCH, "%s is for %d nodes of %d ranks, %s for %d of %d", from_path,
                      epm_placement_cluster(from)->nodes, epm_placement_cluster(from)->gpus_per_node, to_path,
                      epm_placement_cluster(to)->nodes, epm_placement_cluster(to)->gpus_per_node);
    if (st == EPM_OK && align)
        st = epm_placement_align(from, to, &aligned);
    const epm_placement *target = aligned ? aligned : to;
    /* (the path run's exchanges take on FROM's cluster, resolved as run resolves --hier) */
    const int hpath = from ? epm_xcomm_hier_takes(hier, epm_placement_cluster(from)->nodes,
                                                  epm_placement_cluster(from)->gpus_per_node)
                           : 0;
    if (st == EPM_OK)
        st = epm_eval_moves_path(from, target, xb, hpath, &mc);
    const int L = from ? epm_placement_layers(from) : 0;
    if (st == EPM_OK && per_layer)
        st = (layer = calloc((size_t)(L ? L : 1), sizeof *layer)) ? per_layer_counts(from, target, layer)
                                                                   : EPM_ERR_NOMEM;
    if (st == EPM_OK && out)
        st = epm_placement_save_json(target, out);
    if (st != EPM_OK) {
        rc = cli_fail(W, st);
        goto done;
    }
    const epm_cluster *cl = epm_placement_cluster(from);
    /* (each rank reads its own gains, side by side: the boundary waits for the one that gains most) */
    const int64_t read_max = mc.max_gained * rb;
    const double read_s = rgbps > 0 ? (double)read_max / (rgbps * 1e9) : 0;
    if (json) {
        json_t *o = json_pack("{s:s, s:s, s:b, s:I, s:I, s:{s:I, s:I}, s:I, s:I, s:f, s:s}", "from", from_path, "to",
                              to_path, "aligned", align, "experts_copied", (json_int_t)mc.moved, "expert_bytes",
                              (json_int_t)xb, "bytes_copied", "intra_node", (json_int_t)mc.bytes[EPM_LINK_INTRA],
                              "inter_node", (json_int_t)mc.bytes[EPM_LINK_INTER], "max_send_bytes",
                              (json_int_t)mc.max_send_bytes, "max_recv_bytes", (json_int_t)mc.max_recv_bytes,
                              "modelled_seconds", mc.seconds, "path", hpath ? "hierarchical" : "flat");
        if (o)
            json_object_set_new(o, "read", json_pack("{s:I, s:I, s:o}", "max_rank_experts", (json_int_t)mc.max_gained,
                                                     "max_rank_bytes", (json_int_t)read_max, "seconds",
                                                     rgbps > 0 ? json_real(read_s) : json_null()));
        json_t *a = per_layer && o ? json_array() : NULL;
        for (int l = 0; a && l < L; l++)
            json_array_append_new(a, json_integer(layer[l]));
        if (a)
            json_object_set_new(o, "per_layer", a);
        char *txt = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
        if (!txt) {
            json_decref(o);
            rc = cli_fail(W, EPM_ERR_NOMEM);
            goto done;
        }
        puts(txt);
        free(txt);
        json_decref(o);
    } else {
        printf("%s -> %s%s: %lld experts copied, %lld bytes each\n", from_path, to_path,
               align ? " (aligned: nodes and ranks renamed to keep what is in place)" : "", (long long)mc.moved,
               (long long)xb);
        printf("  intra-node %lld bytes, inter-node %lld bytes; the busiest rank sends %lld and receives %lld\n",
               (long long)mc.bytes[EPM_LINK_INTRA], (long long)mc.bytes[EPM_LINK_INTER], (long long)mc.max_send_bytes,
               (long long)mc.max_recv_bytes);
        printf("  modelled %.6f s (%g GB/s within a node, %g between nodes; the %s path)\n", mc.seconds,
               cl->intra_gbps, cl->inter_gbps, hpath ? "hierarchical" : "flat");
        if (rgbps > 0)
            printf("  read from the checkpoint instead: the busiest rank reads %lld experts, %lld bytes, %.6f s at "
                   "%g GB/s\n", (long long)mc.max_gained, (long long)read_max, read_s, rgbps);
        else
            printf("  read from the checkpoint instead: the busiest rank reads %lld experts, %lld bytes (--read-gbps "
                   "prices them)\n", (long long)mc.max_gained, (long long)read_max);
        for (int l = 0; per_layer && l < L; l++)
            printf("  layer %3d: %lld experts copied\n", l, (long long)layer[l]);
    }
    rc = EPM_EXIT_OK;
done:
    free(layer);
    epm_placement_destroy(from);
    epm_placement_destroy(to);
    epm_placement_destroy(aligned);
    return rc;
}
