/* epmoe model: synthetic checkpoints in the Hub layout, and what a checkpoint holds. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "epmoe/model.h"
#include "model_internal.h"

static void model_usage(FILE *f)
{
    fprintf(f, "usage: epmoe model <synth|info> [options]   (epmoe model <sub> --help)\n\n"
               "  synth   write a checkpoint of any MoE shape with random weights (config.json + safetensors)\n"
               "  info    print a checkpoint's architecture, shape, files and parameter counts\n");
}

/* ---- synth ---- */

static const char synth_help[] =
    "usage: epmoe model synth --out DIR [options]\n"
    "\n"
    "Writes config.json and model.safetensors (or shards and their index) with random\n"
    "weights; the router's are scaled so that routing is decisive. The same seed gives\n"
    "the same weights whatever --dtype rounds them to and however many --shards.\n"
    "  --out DIR              model folder (created if missing)\n"
    "  --arch A               mixtral, qwen2moe, olmoe, qwen3moe, deepseekv3 or deepseekv2 (default mixtral)\n"
    "  --hidden H             hidden size (default 64)\n"
    "  --layers L             decoder layers (default 4)\n"
    "  --experts E            routed experts per MoE layer (default 8)\n"
    "  --k K                  experts per token (default 2)\n"
    "  --ffn F                routed expert width (default 128)\n"
    "  --heads N              attention heads (default 4)\n"
    "  --kv-heads M           key/value heads (default 2)\n"
    "  --head-dim D           attention head width (default hidden / heads; Qwen3-MoE's is wider;\n"
    "                         deepseekv3: the query/key part without RoPE, qk_nope_head_dim)\n"
    "  --vocab V              vocabulary size (default 256)\n"
    "  --dtype f32|bf16|f16|fp8  stored dtype (default f32); fp8: the layers' weight matrices in float8\n"
    "                         e4m3 with block scales (weight_scale_inv), the rest bf16, as DeepSeek-V3's\n"
    "                         FP8 release\n"
    "  --fp8-block R,C        rows and columns of an fp8 scale's block (default 128,128)\n"
    "  --seed S               random seed (default 1)\n"
    "  --shards N             split into N files with model.safetensors.index.json (default 1)\n"
    "  --shared-ffn S         qwen2moe shared expert width (default 4*F; 0 = none)\n"
    "  --dense-ffn D          qwen2moe/qwen3moe dense MLP width (default 4*F)\n"
    "  --mlp-only-layers L,.. qwen2moe/qwen3moe layers with a dense MLP instead of experts\n"
    "  --tie-embeddings       lm_head shares the embedding matrix\n"
    "  --router-scale X       router weight spread relative to the others (default 8)\n"
    "  --yarn F,ORIG[,M,MA]   YaRN RoPE scaling: factor F over an original context of ORIG positions,\n"
    "                         mscale M and mscale_all_dim MA (default 0: unset)\n"
    "deepseekv3, deepseekv2 (multi-head latent attention; routing in groups: V3 sigmoid + bias,\n"
    "V2 softmax, group_limited_greedy where there are groups; -1 or unset = derived):\n"
    "  --q-lora-rank N        query LoRA rank (default hidden/2; 0 = a plain q_proj)\n"
    "  --kv-lora-rank N       key/value latent width (default hidden/2)\n"
    "  --qk-rope-dim N        RoPE part of each query/key head (default half the --head-dim part, even)\n"
    "  --v-head-dim N         value head width (default the --head-dim part)\n"
    "  --groups G             expert groups (n_group; default 4 where 8+ experts divide, else 1)\n"
    "  --topk-groups T        groups a token may choose from (default G/2)\n"
    "  --first-dense N        leading dense layers (first_k_dense_replace; default 1)\n"
    "  --shared-ffn S         is a multiple of --ffn here: S/F shared experts (default F; V2 2F)\n"
    "  --routed-scaling X     routed_scaling_factor (default V3 2.5, V2 1)\n";

enum {
    S_OUT = 256, S_ARCH, S_HIDDEN, S_LAYERS, S_EXPERTS, S_K, S_FFN, S_HEADS, S_KV, S_VOCAB, S_DTYPE, S_SEED, S_SHARDS,
    S_SHARED, S_DENSE, S_MLPONLY, S_TIE, S_RSCALE, S_HEADDIM, S_QLORA, S_KVLORA, S_ROPE, S_VHEAD, S_GROUPS,
    S_TOPKG, S_FIRSTD, S_YARN, S_RSCALING, S_FP8BLOCK, S_HELP
};

static const struct option synth_opts[] = {
    {"out", required_argument, 0, S_OUT},         {"arch", required_argument, 0, S_ARCH},
    {"hidden", required_argument, 0, S_HIDDEN},   {"layers", required_argument, 0, S_LAYERS},
    {"experts", required_argument, 0, S_EXPERTS}, {"k", required_argument, 0, S_K},
    {"ffn", required_argument, 0, S_FFN},         {"heads", required_argument, 0, S_HEADS},
    {"kv-heads", required_argument, 0, S_KV},     {"vocab", required_argument, 0, S_VOCAB},
    {"dtype", required_argument, 0, S_DTYPE},     {"seed", required_argument, 0, S_SEED},
    {"shards", required_argument, 0, S_SHARDS},   {"shared-ffn", required_argument, 0, S_SHARED},
    {"dense-ffn", required_argument, 0, S_DENSE}, {"mlp-only-layers", required_argument, 0, S_MLPONLY},
    {"tie-embeddings", no_argument, 0, S_TIE},    {"router-scale", required_argument, 0, S_RSCALE},
    {"head-dim", required_argument, 0, S_HEADDIM}, {"q-lora-rank", required_argument, 0, S_QLORA},
    {"kv-lora-rank", required_argument, 0, S_KVLORA}, {"qk-rope-dim", required_argument, 0, S_ROPE},
    {"v-head-dim", required_argument, 0, S_VHEAD}, {"groups", required_argument, 0, S_GROUPS},
    {"topk-groups", required_argument, 0, S_TOPKG}, {"first-dense", required_argument, 0, S_FIRSTD},
    {"yarn", required_argument, 0, S_YARN},       {"routed-scaling", required_argument, 0, S_RSCALING},
    {"fp8-block", required_argument, 0, S_FP8BLOCK}, {"help", no_argument, 0, S_HELP},
    {0, 0, 0, 0}};

static int cmd_synth(int argc, char **argv)
{
    const char *W = "model synth", *out = NULL;
    epm_model_synth_opts o;
    epm_model_synth_opts_init(&o);
    int mlp_only[4096];
    long v;
    double d;
    int c, fp8_block_set = 0;
    if (cli_exact_options(W, argc, argv, synth_opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", synth_opts, NULL)) != -1) {
        switch (c) {
        case S_OUT: out = optarg; break;
        case S_ARCH:
            if (epm_model_arch_parse(optarg, &o.arch) != EPM_OK)
                return cli_usage_error(W, "--arch '%s' is not one of: mixtral, qwen2moe, olmoe, qwen3moe, deepseekv3, "
                                          "deepseekv2", optarg);
            break;
#define INT_OPT(code, name, lo, hi, field)                                                 \
    case code:                                                                             \
        if (!cli_parse_int(W, name, optarg, lo, hi, &v))                                   \
            return EPM_EXIT_USAGE;                                                         \
        o.field = (int)v;                                                                  \
        break;
        INT_OPT(S_HIDDEN, "--hidden", 2, 1 << 16, hidden)
        INT_OPT(S_LAYERS, "--layers", 1, 4096, layers)
        INT_OPT(S_EXPERTS, "--experts", 1, 1 << 16, experts)
        INT_OPT(S_K, "--k", 1, 1 << 16, k)
        INT_OPT(S_FFN, "--ffn", 1, 1 << 20, ffn)
        INT_OPT(S_HEADS, "--heads", 1, 4096, heads)
        INT_OPT(S_KV, "--kv-heads", 1, 4096, kv_heads)
        INT_OPT(S_HEADDIM, "--head-dim", 2, 1024, head_dim)
        INT_OPT(S_QLORA, "--q-lora-rank", 0, 1 << 16, q_lora)
        INT_OPT(S_KVLORA, "--kv-lora-rank", 1, 1 << 16, kv_lora)
        INT_OPT(S_ROPE, "--qk-rope-dim", 2, 1024, qk_rope)
        INT_OPT(S_VHEAD, "--v-head-dim", 1, 1024, v_head)
        INT_OPT(S_GROUPS, "--groups", 1, 1 << 16, n_group)
        INT_OPT(S_TOPKG, "--topk-groups", 1, 1 << 16, topk_group)
        INT_OPT(S_FIRSTD, "--first-dense", 0, 4096, first_dense)
        INT_OPT(S_VOCAB, "--vocab", 1, 1 << 24, vocab)
        INT_OPT(S_SHARDS, "--shards", 1, 99999, shards)
        INT_OPT(S_SHARED, "--shared-ffn", 0, 1 << 20, shared_ffn)
        INT_OPT(S_DENSE, "--dense-ffn", 1, 1 << 20, dense_ffn)
#undef INT_OPT
        case S_DTYPE:
            if (!strcmp(optarg, "f32") || !strcmp(optarg, "float32"))
                o.dtype = EPM_DTYPE_F32;
            else if (!strcmp(optarg, "bf16") || !strcmp(optarg, "bfloat16"))
                o.dtype = EPM_DTYPE_BF16;
            else if (!strcmp(optarg, "f16") || !strcmp(optarg, "float16"))
                o.dtype = EPM_DTYPE_F16;
            else if (!strcmp(optarg, "fp8") || !strcmp(optarg, "f8_e4m3") || !strcmp(optarg, "float8_e4m3fn"))
                o.dtype = EPM_DTYPE_F8_E4M3;
            else
                return cli_usage_error(W, "--dtype '%s' is not one of: f32, bf16, f16, fp8", optarg);
            break;
        case S_FP8BLOCK: {
            /* strtol, not sscanf's %d: an out-of-range value is refused, not wrapped */
            char *end;
            errno = 0;
            long r0 = strtol(optarg, &end, 10), r1 = 0;
            int ok = errno == 0 && end != optarg && *end == ',';
            if (ok) {
                const char *p1 = end + 1;
                r1 = strtol(p1, &end, 10);
                ok = errno == 0 && end != p1 && *end == 0;
            }
            if (!ok || r0 < 1 || r1 < 1 || r0 > 65536 || r1 > 65536)
                return cli_usage_error(W, "--fp8-block '%s' is not ROWS,COLUMNS (each in [1, 65536])", optarg);
            o.fp8_block[0] = (int)r0;
            o.fp8_block[1] = (int)r1;
            fp8_block_set = 1;
            break;
        }
        case S_SEED: if (!cli_parse_u64(W, "--seed", optarg, &o.seed)) return EPM_EXIT_USAGE; break;
        case S_MLPONLY:
        {
            static long layers[4096];
            if (!cli_parse_int_list(W, "--mlp-only-layers", optarg, 0, 1 << 20, "layers", layers, 4096,
                                    &o.n_mlp_only))
                return EPM_EXIT_USAGE;
            for (int i = 0; i < o.n_mlp_only; i++)
                mlp_only[i] = (int)layers[i];
            o.mlp_only = mlp_only;
            break;
        }
        case S_TIE: o.tie_embeddings = 1; break;
        case S_RSCALING:
            if (!cli_parse_double(W, "--routed-scaling", optarg, 1e-6, 1e6, &d))
                return EPM_EXIT_USAGE;
            o.routed_scaling = d;
            break;
        case S_YARN: {
            char tail;
            int got = sscanf(optarg, "%lf,%d,%lf,%lf%c", &o.yarn_factor, &o.yarn_original_max, &o.yarn_mscale,
                             &o.yarn_mscale_all_dim, &tail);
            if ((got != 2 && got != 4) || !(o.yarn_factor > 0 && o.yarn_factor < 1e6) || o.yarn_original_max < 1)
                return cli_usage_error(W, "--yarn '%s' is not FACTOR,ORIGINAL[,MSCALE,MSCALE_ALL_DIM] (factor > 0, "
                                          "original >= 1)",
                                       optarg);
            break;
        }
        case S_RSCALE:
            if (!cli_parse_double(W, "--router-scale", optarg, 1e-6, 1e6, &d))
                return EPM_EXIT_USAGE;
            o.router_scale = d;
            break;
        case S_HELP: fputs(synth_help, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (!out)
        return cli_usage_error(W, "--out DIR is required");
    if (fp8_block_set && o.dtype != EPM_DTYPE_F8_E4M3)
        return cli_usage_error(W, "--fp8-block needs --dtype fp8 (the blocks of FP8 weights' scales)");
    /* a bad shape is the user's mistake, not a failure of the work */
    if (o.k > o.experts)
        return cli_usage_error(W, "--k %d exceeds --experts %d", o.k, o.experts);
    /* another architecture's flag would be dropped without a word (the library takes the fields as
     * generic options): the first one given is named */
    const int ds_arch = o.arch == EPM_MODEL_DEEPSEEKV3 || o.arch == EPM_MODEL_DEEPSEEKV2,
              qwen_arch = o.arch == EPM_MODEL_QWEN2MOE || o.arch == EPM_MODEL_QWEN3MOE;
    const struct {
        const char *name;
        int set, takes;
    } only[] = {{"--q-lora-rank", o.q_lora >= 0, ds_arch},     {"--kv-lora-rank", o.kv_lora >= 0, ds_arch},
                {"--qk-rope-dim", o.qk_rope >= 0, ds_arch},    {"--v-head-dim", o.v_head >= 0, ds_arch},
                {"--groups", o.n_group >= 0, ds_arch},         {"--topk-groups", o.topk_group >= 0, ds_arch},
                {"--first-dense", o.first_dense >= 0, ds_arch}, {"--routed-scaling", o.routed_scaling >= 0, ds_arch},
                {"--shared-ffn", o.shared_ffn >= 0, ds_arch || o.arch == EPM_MODEL_QWEN2MOE},
                {"--dense-ffn", o.dense_ffn >= 0, ds_arch || qwen_arch}};
    for (size_t i = 0; i < sizeof only / sizeof *only; i++)
        if (only[i].set && !only[i].takes)
            return cli_usage_error(W, "%s is not an option of --arch %s", only[i].name, epm_model_arch_short(o.arch));
    /* DeepSeek's heads are sized by their parts */
    int ds = o.arch == EPM_MODEL_DEEPSEEKV3 || o.arch == EPM_MODEL_DEEPSEEKV2;
    if (o.heads % o.kv_heads || (o.head_dim == 0 && (o.hidden % o.heads || (!ds && (o.hidden / o.heads) % 2))))
        return cli_usage_error(W, "--kv-heads must divide --heads, and --heads must divide --hidden into an even "
                                  "head size unless --head-dim says it (got hidden %d, heads %d, kv-heads %d)",
                               o.hidden, o.heads, o.kv_heads);
    if (o.head_dim % 2 && !ds)
        return cli_usage_error(W, "--head-dim %d must be even (RoPE turns pairs)", o.head_dim);
    double gb = (double)o.layers * o.experts * 3.0 * o.hidden * o.ffn * (double)epm_dtype_size(o.dtype) / 1e9;
    if (gb > 0.25) {
        char msg[160];
        snprintf(msg, sizeof msg, "writing about %.1f GB of expert weights to %s", gb, out);
        cli_progress(NULL, msg);
    }
    epm_status st = epm_model_synth(&o, out);
    if (st != EPM_OK)
        return st == EPM_ERR_INVALID_ARG ? cli_usage_error(W, "%s", epm_last_error() + (strncmp(epm_last_error(),
                                                  "model synth: ", 13) ? 0 : 13)) : cli_fail(W, st);
    printf("wrote %s: %s, %d layers x %d experts (top-%d), hidden %d, ffn %d, %s, %d file%s\n", out,
           epm_model_arch_class(o.arch), o.layers, o.experts, o.k, o.hidden, o.ffn, epm_dtype_name(o.dtype), o.shards,
           o.shards > 1 ? "s + index" : "");
    return EPM_EXIT_OK;
}

/* ---- info ---- */

typedef struct counts {
    int64_t total, expert;
    const epm_shards *sh;
    int64_t bytes, expert_bytes; /* as stored: what a rank reads for its experts */
} counts;

static epm_status count(void *vc, const epm_model_tensor_info *t)
{
    counts *c = vc;
    int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
    const epm_st_tensor *st = c->sh ? epm_shards_find(c->sh, t->name, NULL) : NULL;
    int64_t b = st ? (int64_t)(st->end - st->begin) : 0;
    if (st && st->dtype == EPM_DTYPE_F8_E4M3) { /* and its block scales */
        char name[256];
        epm_fp8_scale_name(t->name, name, sizeof name);
        const epm_st_tensor *sc = epm_shards_find(c->sh, name, NULL);
        b += sc ? (int64_t)(sc->end - sc->begin) : 0;
    }
    c->total += n;
    c->bytes += b;
    if (t->expert >= 0) {
        c->expert += n;
        c->expert_bytes += b;
    }
    return EPM_OK;
}

static int cmd_info(int argc, char **argv)
{
    const char *W = "model info", *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: epmoe model info DIR [--json]\n\nOpens a checkpoint (checking every tensor's presence "
                   "and shape) and prints its shape.\n");
            return EPM_EXIT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] == '-') {
            return cli_usage_error(W, "unknown option '%s'", argv[i]);
        } else if (dir) {
            return cli_usage_error(W, "unexpected argument '%s'", argv[i]);
        } else {
            dir = argv[i];
        }
    }
    if (!dir)
        return cli_usage_error(W, "a model folder is required");
    epm_model *m;
    epm_status st = epm_model_open(dir, &m);
    if (st != EPM_OK)
        return cli_fail(W, st);
    const epm_model_config *c = epm_model_get_config(m);
    /* the model checked every tensor; the directory gives their stored sizes */
    epm_shards *sh = NULL;
    if ((st = epm_shards_open(dir, &sh)) != EPM_OK) {
        epm_model_close(m);
        return cli_fail(W, st);
    }
    counts n = {0, 0, sh, 0, 0};
    epm_model_tensors(c, count, &n);
    epm_shards_close(sh);
    int moe = epm_model_config_moe_layers(c);
    int64_t per_expert = moe ? n.expert / ((int64_t)moe * c->num_experts) : 0;
    int64_t per_expert_bytes = moe ? n.expert_bytes / ((int64_t)moe * c->num_experts) : 0;
    int64_t active = n.total - n.expert + (int64_t)moe * c->top_k * per_expert;
    char fp8[48] = "null";
    if (c->fp8_block[0] > 0)
        snprintf(fp8, sizeof fp8, "[%d, %d]", c->fp8_block[0], c->fp8_block[1]);
    if (json) {
        printf("{\"architecture\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, \"layers\": %d, "
               "\"moe_layers\": %d, \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"experts\": %d, \"k\": %d, "
               "\"moe_ffn\": %d, \"dense_ffn\": %d, \"shared_ffn\": %d, \"norm_topk_prob\": %s, \"qkv_bias\": %s, "
               "\"qk_norm\": %s, \"tie_word_embeddings\": %s, \"rms_norm_eps\": %g, \"rope_theta\": %g, "
               "\"dtype\": \"%s\", \"files\": %d, \"file_bytes\": %lld, \"params\": %lld, \"expert_params\": %lld, "
               "\"active_params\": %lld, \"tensor_bytes\": %lld, \"expert_bytes\": %lld, \"params_per_expert\": %lld, "
               "\"bytes_per_expert\": %lld, \"router\": \"%s\", \"n_group\": %d, \"topk_group\": %d, "
               "\"routed_scaling_factor\": %g, \"mla\": %s, \"q_lora_rank\": %d, \"kv_lora_rank\": %d, "
               "\"qk_nope_head_dim\": %d, \"qk_rope_head_dim\": %d, \"v_head_dim\": %d, \"rope_type\": \"%s\", "
               "\"yarn_factor\": %g, \"yarn_original_max_position_embeddings\": %d, \"fp8_block\": %s, "
               "\"kv_dim\": %d, \"kv_dim_mla_expanded\": %d}\n",
               epm_model_arch_class(c->arch), c->vocab_size, c->hidden_size, c->num_layers, moe, c->num_heads,
               c->num_kv_heads, c->head_dim, c->num_experts, c->top_k, c->moe_ffn, c->dense_ffn, c->shared_ffn,
               c->norm_topk_prob ? "true" : "false", c->qkv_bias ? "true" : "false", c->qk_norm ? "true" : "false",
               c->tie_word_embeddings ? "true" : "false", (double)c->rms_norm_eps, c->rope_theta,
               epm_dtype_name(c->dtype), epm_model_files(m), (long long)epm_model_file_bytes(m), (long long)n.total,
               (long long)n.expert, (long long)active, (long long)n.bytes, (long long)n.expert_bytes,
               (long long)per_expert, (long long)per_expert_bytes, c->router_sigmoid ? "sigmoid" : "softmax",
               c->n_group > 1 ? c->n_group : 1, c->n_group > 1 ? c->topk_group : 1, (double)c->routed_scaling,
               c->mla ? "true" : "false", c->q_lora_rank, c->kv_lora_rank, c->qk_nope_dim, c->qk_rope_dim,
               c->v_head_dim, c->yarn_factor > 0 ? "yarn" : "default", c->yarn_factor > 0 ? c->yarn_factor : 1.0,
               c->yarn_original_max, fp8, epm_model_kv_floats(c, 0), epm_model_kv_floats(c, 1));
    } else {
        printf("%s: %s\n", dir, epm_model_arch_class(c->arch));
        printf("  layers      %d (%d MoE, %d dense MLP)\n", c->num_layers, moe, c->num_layers - moe);
        printf("  hidden      %d, vocab %d\n", c->hidden_size, c->vocab_size);
        if (c->mla)
            printf("  attention   MLA, %d heads: q LoRA %d (0: q_proj), kv latent %d, q/k %d + %d rope, v %d "
                   "(head_dim %d when expanded)%s, rope theta %g\n",
                   c->num_heads, c->q_lora_rank, c->kv_lora_rank, c->qk_nope_dim, c->qk_rope_dim, c->v_head_dim,
                   c->head_dim, c->qkv_bias ? ", biases" : "", c->rope_theta);
        else
            printf("  attention   %d heads, %d kv heads, head_dim %d%s%s, rope theta %g\n", c->num_heads,
                   c->num_kv_heads, c->head_dim, c->qkv_bias ? ", qkv bias" : "",
                   c->qk_norm == EPM_QK_NORM_PER_HEAD ? ", q/k norm per head" : c->qk_norm ? ", q/k norm" : "",
                   c->rope_theta);
        if (c->mla)
            printf("  kv cache    %d floats per token and layer (latent; %d expanded): plan's --kv-dim\n",
                   epm_model_kv_floats(c, 0), epm_model_kv_floats(c, 1));
        else
            printf("  kv cache    %d floats per token and layer: plan's --kv-dim\n", epm_model_kv_floats(c, 0));
        printf("  experts     %d, top-%d%s, ffn %d", c->num_experts, c->top_k,
               c->norm_topk_prob ? " (renormalised)" : "", c->moe_ffn);
        if (c->shared_ffn)
            printf(", shared expert ffn %d", c->shared_ffn);
        if (moe < c->num_layers)
            printf(", dense ffn %d", c->dense_ffn);
        if (c->yarn_factor > 0)
            printf("\n  rope        YaRN x%g over %d original positions (mscale %g, mscale_all_dim %g)", c->yarn_factor,
                   c->yarn_original_max, c->yarn_mscale, c->yarn_mscale_all_dim);
        if (c->router_sigmoid)
            printf("\n  router      sigmoid + correction bias, %d groups (%d kept), weights x %g", c->n_group,
                   c->topk_group, (double)c->routed_scaling);
        else if (c->n_group > 1 || c->routed_scaling != 1.0f)
            printf("\n  router      softmax, %d groups (%d kept, each scored by its best expert), weights x %g",
                   c->n_group, c->topk_group, (double)c->routed_scaling);
        printf("\n  params      %.4g M total, %.4g M in experts, %.4g M active per token\n", (double)n.total / 1e6,
               (double)n.expert / 1e6, (double)active / 1e6);
        printf("  per expert  %lld params, %.4g MB as stored (%.4g MB for all %d routed experts)\n",
               (long long)per_expert, (double)per_expert_bytes / 1e6, (double)n.expert_bytes / 1e6,
               moe * c->num_experts);
        printf("  files       %d (%.4g MB), dtype %s%s\n", epm_model_files(m), (double)epm_model_file_bytes(m) / 1e6,
               epm_dtype_name(c->dtype), c->tie_word_embeddings ? ", tied embeddings" : "");
        if (c->fp8_block[0] > 0)
            printf("  quantised   FP8 (e4m3) weight matrices, a scale per [%d, %d] block: held FP8 by the ref and\n"
                   "              blas kernels (routed experts; attention, shared and dense MLPs but kv_b), where\n"
                   "              all of a kind are; other FP8 matrices dequantised to bf16 at load\n",
                   c->fp8_block[0], c->fp8_block[1]);
    }
    epm_model_close(m);
    return EPM_EXIT_OK;
}

int epm_cli_model(int argc, char **argv)
{
    if (argc < 2) {
        model_usage(stderr);
        return EPM_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        model_usage(stdout);
        return EPM_EXIT_OK;
    }
    if (!strcmp(argv[1], "synth"))
        return cmd_synth(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info"))
        return cmd_info(argc - 1, argv + 1);
    fprintf(stderr, "epmoe model: unknown subcommand '%s'\n", argv[1]);
    model_usage(stderr);
    return EPM_EXIT_USAGE;
}
