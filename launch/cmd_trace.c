/* epmoe trace: inspect, synthesise, convert and split routing traces. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "core.h"

/* Work above this many ids (or bytes on disk) takes about a second on a
 * small machine, so it gets a progress line. */
#define BIG_WORK ((int64_t)32 * 1000 * 1000)

/* "--name value" or "--name=value": returns the value and advances *i, or
 * NULL when argv[*i] is another option. *missing is set when the name matches
 * but no value follows. */
static const char *opt_val(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void progress_if_big_file(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && sb.st_size > BIG_WORK) {
        char msg[600];
        snprintf(msg, sizeof msg, "reading %s (%.0f MB)", path, (double)sb.st_size / 1e6);
        cli_progress(NULL, msg);
    }
}

static epm_status load(const char *path, int experts, epm_trace **out)
{
    progress_if_big_file(path);
    return epm_trace_load(path, experts, out);
}

/* The format follows the name: .npy for NumPy (ids only), anything else safetensors. */
static epm_status save(const char *what, const epm_trace *t, const char *path)
{
    if (!ends_with(path, ".npy"))
        return epm_trace_save(t, path);
    if (epm_trace_weights(t, 0) || epm_trace_seq_ids(t) || epm_trace_pass_ids(t))
        fprintf(stderr, "epmoe %s: note: %s is .npy, which holds ids only; topk_weights, seq_ids and pass_ids are not "
                "written\n", what, path);
    return epm_trace_save_npy(t, path);
}

/* ---- stats ---- */

static void stats_usage(FILE *f)
{
    fprintf(f, "usage: epmoe trace stats FILE [--experts N] [--top-m M] [--json]\n\n"
               "Per-layer expert load and imbalance (max/mean), and cross-layer affinity:\n"
               "H(next | top-1) is the conditional entropy, in bits, of each expert chosen at\n"
               "layer l+1 given the top-1 expert at l; top-m is the share of tokens whose top-1\n"
               "at l+1 is among the m most frequent successors of their top-1 at l. Both are\n"
               "over the tokens with an expert at l and at l+1 ('-', JSON null: none, as at\n"
               "the last layer or where Mixture-of-Depths skipped every token at one of them).\n\n"
               "  --experts N   expert count (default: largest id + 1)\n"
               "  --top-m M     m for the top-m share (default 2)\n"
               "  --json        machine-readable output on stdout\n");
}

static int stats_json(const char *path, const epm_trace *t, const epm_trace_stats *s, int64_t passes)
{
    json_t *root = json_object();
    json_t *layers = json_array();
    for (int l = 0; l < s->layers; l++) {
        const epm_trace_layer_stats *ls = &s->layer[l];
        json_t *load = json_array();
        for (int e = 0; e < s->experts; e++)
            json_array_append_new(load, json_integer(s->load[(size_t)l * (size_t)s->experts + (size_t)e]));
        /* (null where no token has an expert at both l and l+1: nothing to measure) */
        const int aff = ls->transitions > 0;
        json_array_append_new(layers, json_pack("{s:i, s:o, s:I, s:f, s:o, s:o, s:f, s:I}", "layer", l, "load", load,
                                                "max_load", (json_int_t)ls->max_load, "imbalance", ls->imbalance,
                                                "cond_entropy_bits", aff ? json_real(ls->cond_entropy) : json_null(),
                                                "topm_share", aff ? json_real(ls->topm_share) : json_null(),
                                                "skipped_share", ls->skipped_share, "transitions",
                                                (json_int_t)ls->transitions));
    }
    json_object_set_new(root, "file", json_string(path));
    json_object_set_new(root, "layers", json_integer(s->layers));
    json_object_set_new(root, "tokens", json_integer(epm_trace_tokens(t)));
    json_object_set_new(root, "k", json_integer(epm_trace_k(t)));
    json_object_set_new(root, "experts", json_integer(s->experts));
    json_object_set_new(root, "top_m", json_integer(s->top_m));
    json_object_set_new(root, "has_weights", json_boolean(epm_trace_weights(t, 0) != NULL));
    json_object_set_new(root, "has_seq_ids", json_boolean(epm_trace_seq_ids(t) != NULL));
    json_object_set_new(root, "has_pass_ids", json_boolean(epm_trace_pass_ids(t) != NULL));
    json_object_set_new(root, "passes", json_integer(passes));
    json_object_set_new(root, "mean_imbalance", json_real(s->mean_imbalance));
    json_object_set_new(root, "mean_cond_entropy_bits",
                        s->affinity_layers ? json_real(s->mean_cond_entropy) : json_null());
    json_object_set_new(root, "mean_topm_share", s->affinity_layers ? json_real(s->mean_topm_share) : json_null());
    json_object_set_new(root, "affinity_layers", json_integer(s->affinity_layers));
    json_object_set_new(root, "per_layer", layers);
    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(root);
    if (!txt) {
        fprintf(stderr, "epmoe trace stats: error: out of memory writing JSON\n");
        return EPM_EXIT_FAIL;
    }
    printf("%s\n", txt);
    free(txt);
    return EPM_EXIT_OK;
}

static void stats_text(const char *path, const epm_trace *t, const epm_trace_stats *s, int64_t passes)
{
    int E = s->experts;
    printf("%s: %d layers, %lld tokens, k = %d, %d experts%s%s", path, s->layers, (long long)epm_trace_tokens(t),
           epm_trace_k(t), E, epm_trace_weights(t, 0) ? ", with weights" : "",
           epm_trace_seq_ids(t) ? ", with seq_ids" : "");
    if (epm_trace_pass_ids(t))
        printf(", with pass_ids (%lld passes)", (long long)passes);
    printf("\n");
    printf("%5s %10s %9s %14s %9s %8s", "layer", "max load", "max/mean", "H(next|top1)", "top-m", "skipped");
    if (E <= 16)
        printf("  load per expert");
    printf("\n");
    for (int l = 0; l < s->layers; l++) {
        const epm_trace_layer_stats *ls = &s->layer[l];
        printf("%5d %10lld %9.3f ", l, (long long)ls->max_load, ls->imbalance);
        if (ls->transitions > 0)
            printf("%14.3f %8.1f%%", ls->cond_entropy, 100 * ls->topm_share);
        else
            printf("%14s %9s", "-", "-");
        printf(" %7.1f%%", 100 * ls->skipped_share);
        if (E <= 16) {
            printf(" ");
            for (int e = 0; e < E; e++)
                printf(" %lld", (long long)s->load[(size_t)l * (size_t)E + (size_t)e]);
        }
        printf("\n");
    }
    if (s->affinity_layers > 0)
        printf("mean: imbalance %.3f, H(next|top1) %.3f bits (uniform would be %.3f), top-%d share %.1f%%%s\n",
               s->mean_imbalance, s->mean_cond_entropy, E > 1 ? log2((double)E) : 0.0, s->top_m,
               100 * s->mean_topm_share, s->affinity_layers < s->layers - 1 ? " (over the layers with a '-' left out)"
                                                                          : "");
    else
        printf("mean: imbalance %.3f; no token has an expert at two consecutive layers: no affinity to measure\n",
               s->mean_imbalance);
    if (E > 16)
        printf("(per-expert loads: --json)\n");
}

static int cmd_stats(int argc, char **argv)
{
    const char *what = "trace stats", *path = NULL;
    long experts = 0, top_m = 2;
    int json = 0, missing = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (is_help(argv[i])) {
            stats_usage(stdout);
            return EPM_EXIT_OK;
        } else if ((v = opt_val(argc, argv, &i, "--experts", &missing))) {
            if (!cli_parse_int(what, "--experts", v, 0, 1L << 20, &experts))
                return EPM_EXIT_USAGE;
        } else if ((v = opt_val(argc, argv, &i, "--top-m", &missing))) {
            if (!cli_parse_int(what, "--top-m", v, 1, 1L << 30, &top_m))
                return EPM_EXIT_USAGE;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (missing) {
            return cli_usage_error(what, "option %s needs a value", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error(what, "unknown option '%s'", argv[i]);
        } else if (path) {
            return cli_usage_error(what, "one trace file expected, got '%s' and '%s'", path, argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path)
        return cli_usage_error(what, "missing the trace FILE");
    epm_trace *t;
    epm_status st = load(path, (int)experts, &t);
    if (st != EPM_OK)
        return cli_fail(what, st);
    epm_trace_stats *s;
    st = epm_trace_stats_compute(t, (int)top_m, &s);
    if (st != EPM_OK) {
        epm_trace_destroy(t);
        return cli_fail(what, st);
    }
    int64_t passes;
    int rc = EPM_EXIT_OK;
    if ((st = epm_trace_passes(t, &passes)) != EPM_OK)
        rc = cli_fail(what, st);
    else if (json)
        rc = stats_json(path, t, s, passes);
    else
        stats_text(path, t, s, passes);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
    return rc;
}

/* ---- synth ---- */

static void synth_usage(FILE *f)
{
    epm_trace_synth_opts d;
    epm_trace_synth_opts_init(&d);
    fprintf(f,
            "usage: epmoe trace synth --out FILE --layers L --experts E --k K --tokens T\n"
            "                         [--zipf S] [--affinity A] [--successors M] [--seq-len N]\n"
            "                         [--pass-tokens N] [--drift N] [--groups G --topk-groups M]\n"
            "                         [--weights] [--seed S]\n\n"
            "Writes a synthetic routing trace (safetensors, or .npy ids only if FILE ends in .npy),\n"
            "the same for the same options and seed.\n\n"
            "  --zipf S        load skew: expert popularity ~ 1/rank^S (default %g; 0 = uniform)\n"
            "  --affinity A    probability that a token's top-1 at l+1 is one of the preferred\n"
            "                  successors of its top-1 at l (default %g)\n"
            "  --successors M  preferred successors per expert (default %d)\n"
            "  --seq-len N     write seq_ids in blocks of N tokens (default: none)\n"
            "  --pass-tokens N write pass_ids in blocks of N tokens: the forward passes of a run that\n"
            "                  takes the tokens in order, for plan eval --eplb-interval (default: none)\n"
            "  --drift N       every N tokens each layer's popularity is drawn anew: other experts hot,\n"
            "                  as traffic changes (default: none; the preferred successors stay)\n"
            "  --groups G      group-limited routing, as DeepSeek-V2/V3 (n_group): experts in G groups\n"
            "                  of E/G consecutive ids (default: none)\n"
            "  --topk-groups M a token chooses its k experts within M groups (topk_group): its top-1's,\n"
            "                  then others by popularity (default: every group)\n"
            "  --weights       also write topk_weights (descending, summing to 1)\n"
            "  --seed S        random seed (default %llu)\n",
            d.zipf_s, d.affinity, d.successors, (unsigned long long)d.seed);
}

static int cmd_synth(int argc, char **argv)
{
    const char *what = "trace synth", *outp = NULL;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    int missing = 0, have_l = 0, have_e = 0, have_k = 0, have_t = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        long n;
        if (is_help(argv[i])) {
            synth_usage(stdout);
            return EPM_EXIT_OK;
        } else if ((v = opt_val(argc, argv, &i, "--out", &missing))) {
            outp = v;
        } else if ((v = opt_val(argc, argv, &i, "--layers", &missing))) {
            if (!cli_parse_int(what, "--layers", v, 1, 1 << 16, &n))
                return EPM_EXIT_USAGE;
            o.layers = (int)n;
            have_l = 1;
        } else if ((v = opt_val(argc, argv, &i, "--experts", &missing))) {
            if (!cli_parse_int(what, "--experts", v, 1, 1 << 16, &n))
                return EPM_EXIT_USAGE;
            o.experts = (int)n;
            have_e = 1;
        } else if ((v = opt_val(argc, argv, &i, "--k", &missing))) {
            if (!cli_parse_int(what, "--k", v, 1, 256, &n))
                return EPM_EXIT_USAGE;
            o.k = (int)n;
            have_k = 1;
        } else if ((v = opt_val(argc, argv, &i, "--tokens", &missing))) {
            if (!cli_parse_int(what, "--tokens", v, 1, 1L << 40, &n))
                return EPM_EXIT_USAGE;
            o.tokens = n;
            have_t = 1;
        } else if ((v = opt_val(argc, argv, &i, "--zipf", &missing))) {
            if (!cli_parse_double(what, "--zipf", v, 0, 16, &o.zipf_s))
                return EPM_EXIT_USAGE;
        } else if ((v = opt_val(argc, argv, &i, "--affinity", &missing))) {
            if (!cli_parse_double(what, "--affinity", v, 0, 1, &o.affinity))
                return EPM_EXIT_USAGE;
        } else if ((v = opt_val(argc, argv, &i, "--successors", &missing))) {
            if (!cli_parse_int(what, "--successors", v, 1, 256, &n))
                return EPM_EXIT_USAGE;
            o.successors = (int)n;
        } else if ((v = opt_val(argc, argv, &i, "--seq-len", &missing))) {
            if (!cli_parse_int(what, "--seq-len", v, 1, 1L << 40, &n))
                return EPM_EXIT_USAGE;
            o.tokens_per_seq = n;
        } else if ((v = opt_val(argc, argv, &i, "--pass-tokens", &missing))) {
            if (!cli_parse_int(what, "--pass-tokens", v, 1, 1L << 40, &n))
                return EPM_EXIT_USAGE;
            o.tokens_per_pass = n;
        } else if ((v = opt_val(argc, argv, &i, "--drift", &missing))) {
            if (!cli_parse_int(what, "--drift", v, 1, 1L << 40, &n))
                return EPM_EXIT_USAGE;
            o.drift_tokens = n;
        } else if ((v = opt_val(argc, argv, &i, "--groups", &missing))) {
            if (!cli_parse_int(what, "--groups", v, 1, 1 << 16, &n))
                return EPM_EXIT_USAGE;
            o.groups = (int)n;
        } else if ((v = opt_val(argc, argv, &i, "--topk-groups", &missing))) {
            if (!cli_parse_int(what, "--topk-groups", v, 1, 1 << 16, &n))
                return EPM_EXIT_USAGE;
            o.topk_groups = (int)n;
        } else if ((v = opt_val(argc, argv, &i, "--seed", &missing))) {
            if (!cli_parse_u64(what, "--seed", v, &o.seed))
                return EPM_EXIT_USAGE;
        } else if (!strcmp(argv[i], "--weights")) {
            o.with_weights = 1;
        } else if (missing) {
            return cli_usage_error(what, "option %s needs a value", argv[i]);
        } else {
            return cli_usage_error(what, "unknown argument '%s'", argv[i]);
        }
    }
    if (!outp || !have_l || !have_e || !have_k || !have_t)
        return cli_usage_error(what, "--out, --layers, --experts, --k and --tokens are required (missing %s)",
                               !outp ? "--out" : !have_l ? "--layers" : !have_e ? "--experts" : !have_k ? "--k" : "--tokens");
    if (o.k > o.experts)
        return cli_usage_error(what, "--k %d is more than --experts %d", o.k, o.experts);
    if (o.successors > o.experts)
        return cli_usage_error(what, "--successors %d is more than --experts %d", o.successors, o.experts);
    if (o.topk_groups > 0 && o.groups == 0)
        return cli_usage_error(what, "--topk-groups %d limits the groups of --groups, which is not given",
                               o.topk_groups);
    if (o.groups > 0 && o.experts % o.groups)
        return cli_usage_error(what, "--groups %d must divide --experts %d", o.groups, o.experts);
    if (o.groups > 0 && (o.topk_groups > o.groups || (o.topk_groups > 0 && o.topk_groups * (o.experts / o.groups) < o.k)))
        return cli_usage_error(what, "--topk-groups %d: within %d of the %d groups of %d experts, a token cannot choose "
                               "--k %d", o.topk_groups, o.topk_groups, o.groups, o.experts / o.groups, o.k);
    int big = (double)o.layers * (double)o.tokens * (double)o.k > (double)BIG_WORK;
    char msg[700];
    if (big) {
        snprintf(msg, sizeof msg, "synthesising %d layers x %lld tokens x top-%d", o.layers, (long long)o.tokens, o.k);
        cli_progress(NULL, msg);
    }
    epm_trace *t;
    epm_status st = epm_trace_synth(&o, &t);
    if (st != EPM_OK)
        return cli_fail(what, st);
    if (big) {
        snprintf(msg, sizeof msg, "writing %s", outp);
        cli_progress(NULL, msg);
    }
    st = save(what, t, outp);
    epm_trace_destroy(t);
    if (st != EPM_OK)
        return cli_fail(what, st);
    return EPM_EXIT_OK;
}

/* ---- convert ---- */

static void convert_usage(FILE *f)
{
    fprintf(f, "usage: epmoe trace convert IN OUT [--experts N]\n\n"
               "Reads IN (safetensors or .npy, by content) and writes OUT: .npy (ids only) if OUT\n"
               "ends in .npy, safetensors otherwise.\n\n"
               "  --experts N   expert count to check ids against (default: largest id + 1)\n");
}

/* Positional paths plus --experts, shared by convert and split. */
static int parse_paths(const char *what, int argc, char **argv, const char **pos, int npos, long *experts,
                       const char **first, const char **second, double *fraction, void (*usage)(FILE *))
{
    int got = 0, missing = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (is_help(argv[i])) {
            usage(stdout);
            return -1;
        } else if ((v = opt_val(argc, argv, &i, "--experts", &missing))) {
            if (!cli_parse_int(what, "--experts", v, 0, 1L << 20, experts))
                return EPM_EXIT_USAGE;
        } else if (first && (v = opt_val(argc, argv, &i, "--first", &missing))) {
            *first = v;
        } else if (second && (v = opt_val(argc, argv, &i, "--second", &missing))) {
            *second = v;
        } else if (fraction && (v = opt_val(argc, argv, &i, "--fraction", &missing))) {
            if (!cli_parse_double(what, "--fraction", v, 0, 1, fraction))
                return EPM_EXIT_USAGE;
            if (*fraction <= 0 || *fraction >= 1)
                return cli_usage_error(what, "option --fraction: '%s' must be strictly between 0 and 1", v);
        } else if (missing) {
            return cli_usage_error(what, "option %s needs a value", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error(what, "unknown option '%s'", argv[i]);
        } else if (got == npos) {
            return cli_usage_error(what, "unexpected argument '%s'", argv[i]);
        } else {
            pos[got++] = argv[i];
        }
    }
    if (got != npos)
        return cli_usage_error(what, "expected %d file argument%s, got %d", npos, npos > 1 ? "s" : "", got);
    return EPM_EXIT_OK;
}

static int cmd_convert(int argc, char **argv)
{
    const char *what = "trace convert", *pos[2];
    long experts = 0;
    int rc = parse_paths(what, argc, argv, pos, 2, &experts, NULL, NULL, NULL, convert_usage);
    if (rc != EPM_EXIT_OK)
        return rc < 0 ? EPM_EXIT_OK : rc;
    if (cli_same_file(pos[0], pos[1]) || !strcmp(pos[0], pos[1]))
        return cli_usage_error(what, "OUT '%s' is the input file; choose another name", pos[1]);
    epm_trace *t;
    epm_status st = load(pos[0], (int)experts, &t);
    if (st == EPM_OK) {
        st = save(what, t, pos[1]);
        epm_trace_destroy(t);
    }
    return st == EPM_OK ? EPM_EXIT_OK : cli_fail(what, st);
}

/* ---- split ---- */

static void split_usage(FILE *f)
{
    fprintf(f, "usage: epmoe trace split IN --first OUT1 --second OUT2 [--fraction F] [--experts N]\n\n"
               "Splits the tokens of IN into two held-out halves: plan on the first, evaluate on\n"
               "the second. The cut is at F of the tokens (default 0.5), moved when IN has seq_ids to\n"
               "the nearest place (forward first) where no sequence has tokens on both sides; where\n"
               "there is none (one sequence, or a run's trace, whose decode steps interleave the\n"
               "sequences) it stays, and a note says how many sequences are in both halves.\n\n"
               "  --first OUT1   the first F of the tokens (safetensors or .npy, by its extension)\n"
               "  --second OUT2  the rest\n"
               "  --fraction F   where to cut, in (0, 1) (default 0.5)\n"
               "  --experts N    expert count to check ids against (default: largest id + 1)\n");
}

typedef struct seq_at {
    int32_t seq;
    int64_t at;
} seq_at;

static int seq_at_cmp(const void *a, const void *b)
{
    const seq_at *x = a, *y = b;
    return x->seq != y->seq ? (x->seq < y->seq ? -1 : 1) : (x->at > y->at) - (x->at < y->at);
}

/* Where to cut IN's n tokens near `cut` so that no sequence has tokens on
 * both sides: the nearest such cut at or after it, else before it. Sequences
 * may interleave (a run's --trace-out takes every sequence's decode steps in
 * turn), so a cut is whole only where every token before it belongs to a
 * sequence that ends before it. Without seq_ids, cut itself. *split: the
 * sequences a cut must split where none is whole (then *out = cut; -1 on
 * allocation failure). */
static int64_t align_to_sequence(const epm_trace *t, int64_t cut, int64_t *split)
{
    const int32_t *seq = epm_trace_seq_ids(t);
    const int64_t n = epm_trace_tokens(t);
    *split = 0;
    if (!seq || cut <= 0 || cut >= n)
        return cut;
    seq_at *by = malloc((size_t)n * sizeof *by);
    int64_t *last = malloc((size_t)n * sizeof *last); /* last[i]: the last token of token i's sequence */
    if (!by || !last) {
        free(by);
        free(last);
        *split = -1;
        return cut;
    }
    for (int64_t i = 0; i < n; i++)
        by[i] = (seq_at){seq[i], i};
    qsort(by, (size_t)n, sizeof *by, seq_at_cmp);
    for (int64_t i = n - 1, end = -1; i >= 0; i--) {
        end = i == n - 1 || by[i + 1].seq != by[i].seq ? by[i].at : end;
        last[by[i].at] = end;
    }
    /* c is whole when every token before it ends its sequence before it: a running maximum of last */
    int64_t best = -1, reach = -1;
    for (int64_t c = 1; c < n; c++) {
        reach = last[c - 1] > reach ? last[c - 1] : reach;
        if (reach >= c)
            continue;
        best = c; /* (before the cut, the latest; at or after it, the first) */
        if (c >= cut)
            break;
    }
    for (int64_t i = 0; best < 0 && i < n; i++) /* (none whole: the sequences the cut goes through) */
        if ((i == 0 || by[i - 1].seq != by[i].seq) && by[i].at < cut && last[by[i].at] >= cut)
            (*split)++;
    free(by);
    free(last);
    return best < 0 ? cut : best;
}

static int cmd_split(int argc, char **argv)
{
    const char *what = "trace split", *in = NULL, *first = NULL, *second = NULL;
    long experts = 0;
    double fraction = 0.5;
    int rc = parse_paths(what, argc, argv, &in, 1, &experts, &first, &second, &fraction, split_usage);
    if (rc != EPM_EXIT_OK)
        return rc < 0 ? EPM_EXIT_OK : rc;
    if (!first || !second)
        return cli_usage_error(what, "--first and --second are required");
    if (!strcmp(first, second) || cli_same_file(first, second))
        return cli_usage_error(what, "--first and --second name the same file '%s'", first);
    if (!strcmp(in, first) || !strcmp(in, second) || cli_same_file(in, first) || cli_same_file(in, second))
        return cli_usage_error(what, "an output names the input file '%s'", in);
    epm_trace *t, *a = NULL, *b = NULL;
    epm_status st = load(in, (int)experts, &t);
    if (st != EPM_OK)
        return cli_fail(what, st);
    int64_t n = epm_trace_tokens(t);
    int64_t split = 0, cut = align_to_sequence(t, (int64_t)((double)n * fraction + 0.5), &split);
    if (split < 0) {
        epm_trace_destroy(t);
        return cli_fail(what, epm_fail(EPM_ERR_NOMEM, "%s: out of memory ordering its %lld tokens", in, (long long)n));
    }
    if (split > 0) /* (a run's trace: its sequences' decode steps interleave) */
        fprintf(stderr, "epmoe %s: note: no cut leaves every sequence of %s whole (its sequences interleave); %lld "
                "sequence%s in both halves\n", what, in, (long long)split, split > 1 ? "s are" : " is");
    if (cut <= 0 || cut >= n) {
        epm_trace_destroy(t);
        return cli_usage_error(what, "%s has %lld tokens: --fraction %g leaves a half empty", in, (long long)n,
                               fraction);
    }
    st = epm_trace_slice(t, 0, cut, &a);
    if (st == EPM_OK)
        st = epm_trace_slice(t, cut, n, &b);
    if (st == EPM_OK)
        st = save(what, a, first);
    if (st == EPM_OK)
        st = save(what, b, second);
    if (st == EPM_OK)
        fprintf(stderr, "epmoe %s: %lld tokens -> %s (%lld) + %s (%lld)\n", what, (long long)n, first,
                (long long)cut, second, (long long)(n - cut));
    epm_trace_destroy(a);
    epm_trace_destroy(b);
    epm_trace_destroy(t);
    return st == EPM_OK ? EPM_EXIT_OK : cli_fail(what, st);
}

/* ---- dispatch ---- */

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} trace_cmd;

static const trace_cmd trace_cmds[] = {
    {"stats", cmd_stats, "per-layer load, imbalance and cross-layer affinity of a trace"},
    {"synth", cmd_synth, "write a synthetic trace with chosen skew and affinity"},
    {"convert", cmd_convert, "convert between safetensors and .npy"},
    {"split", cmd_split, "split a trace's tokens into two held-out halves"},
};

static void trace_usage(FILE *f)
{
    fprintf(f, "usage: epmoe trace <subcommand> [options]   (epmoe trace <subcommand> --help)\n\n"
               "A trace is safetensors with topk_ids.{l} [tokens, k] int32 per MoE layer (optional\n"
               "topk_weights.{l}, seq_ids, pass_ids: the forward pass each token ran in, which epmoe run\n"
               "--trace-out records) or a .npy int32/int64 array [layers, tokens, k].\n\n"
               "subcommands:\n");
    for (size_t i = 0; i < sizeof trace_cmds / sizeof *trace_cmds; i++)
        fprintf(f, "  %-8s %s\n", trace_cmds[i].name, trace_cmds[i].summary);
}

int epm_cli_trace(int argc, char **argv)
{
    if (argc < 2) {
        trace_usage(stderr);
        return EPM_EXIT_USAGE;
    }
    if (is_help(argv[1]) || !strcmp(argv[1], "help")) {
        trace_usage(stdout);
        return EPM_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof trace_cmds / sizeof *trace_cmds; i++)
        if (!strcmp(argv[1], trace_cmds[i].name))
            return trace_cmds[i].fn(argc - 1, argv + 1);
    return cli_usage_error("trace", "unknown subcommand '%s'", argv[1]);
}
