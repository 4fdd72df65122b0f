#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core.h"
#include "epmoe/model.h"
#include "xcomm.h"

int cli_fail(const char *what, epm_status st)
{
    const char *d = epm_last_error();
    fprintf(stderr, "epmoe %s: error: %s%s%s\n", what, epm_status_str(st), d[0] ? ": " : "", d);
    return EPM_EXIT_FAIL;
}

int cli_fail_agreed(const char *what, epm_status st)
{
    return st == EPM_ERR_REMOTE ? EPM_EXIT_FAIL : cli_fail(what, st);
}

int cli_virtual_nodes_usage(const char *what, long virtual_nodes)
{
    int rank = 0, size = 1;
    if (virtual_nodes <= 0 || epm_xcomm_world(&rank, &size) != EPM_OK || size % virtual_nodes == 0)
        return EPM_EXIT_OK; /* (MPI failing to start is the communicator's to report) */
    if (rank == 0)
        cli_usage_error(what, "--virtual-nodes %ld does not divide the %d ranks", virtual_nodes, size);
    epm_xcomm_finalize();
    return EPM_EXIT_USAGE;
}

int cli_usage_error(const char *what, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "epmoe %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see 'epmoe %s --help')\n", what);
    return EPM_EXIT_USAGE;
}

int cli_slots_or_redundant(const char *what, const char *flag, long slots, long redundant)
{
    if (slots > 0 && redundant >= 0)
        return cli_usage_error(what, "%s %ld and --redundant-experts %ld: each sets the slots a rank holds; give one",
                               flag, slots, redundant);
    return EPM_EXIT_OK;
}

int cli_eplb_usage(const char *what, long interval, long window, long lag, const char *orphan)
{
    orphan = orphan ? orphan : lag > 0 ? "--eplb-lag" : NULL;
    if (orphan && !interval)
        return cli_usage_error(what, "%s is online rebalancing's: --eplb-interval is not given", orphan);
    if (window > interval)
        return cli_usage_error(what, "--eplb-window %ld: the loads of at most the --eplb-interval's %ld passes count",
                               window, interval);
    if (lag >= interval && lag > 0) /* (one placement in flight at a time) */
        return cli_usage_error(what, "--eplb-lag %ld: a placement must be in service before the next boundary, "
                               "fewer than the --eplb-interval's %ld passes later", lag, interval);
    return EPM_EXIT_OK;
}

int cli_exact_options(const char *what, int argc, char **argv, const struct option *opts, int stop_at_word)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--"))
            break;
        if (a[0] != '-' || a[1] != '-') {
            if (stop_at_word && a[0] != '-')
                break;
            continue;
        }
        const char *name = a + 2;
        const size_t n = strcspn(name, "=");
        const struct option *o = NULL;
        for (const struct option *p = opts; p->name && !o; p++)
            if (strlen(p->name) == n && !strncmp(p->name, name, n))
                o = p;
        if (o) {
            i += o->has_arg == required_argument && !name[n]; /* (its value: not an option, whatever it reads) */
            continue;
        }
        char alt[256] = "";
        size_t at = 0;
        for (const struct option *p = opts; p->name && n > 0; p++)
            if (!strncmp(p->name, name, n) && at + strlen(p->name) + 8 < sizeof alt)
                at += (size_t)snprintf(alt + at, sizeof alt - at, "%s--%s", at ? ", " : "", p->name);
        return cli_usage_error(what, "unknown option '--%.*s'%s%s%s", (int)n, name, at ? " (options are spelled whole: "
                               : "", alt, at ? ")" : "");
    }
    return EPM_EXIT_OK;
}

int cli_option_error(const char *what, char **argv)
{
    /* getopt_long has stepped past the offending word: a known option at the
     * end of the line without its value (optopt = its code), else an unknown
     * or ambiguous one (optopt 0, or the letter of an unknown short option) */
    const char *a = optind > 0 ? argv[optind - 1] : NULL;
    if (!a)
        return cli_usage_error(what, "bad option");
    if (optopt >= 256 || (optopt > 0 && a[0] == '-' && a[1] == '-')) /* (a known long option) */
        return strchr(a, '=') ? cli_usage_error(what, "option '%.*s' takes no value", (int)strcspn(a, "="), a)
                              : cli_usage_error(what, "option '%s' needs a value", a);
    if (optopt > 0)
        return cli_usage_error(what, "unknown option '-%c'", optopt);
    return cli_usage_error(what, "unknown option '%s'", a);
}

int cli_option_not_here(const char *what, int code, const struct option *opts)
{
    for (const struct option *p = opts; p->name; p++)
        if (p->val == code)
            return cli_usage_error(what, "option '--%s' is not one of this command's", p->name);
    return cli_usage_error(what, "bad option");
}

void cli_progress(void *user, const char *message)
{
    static double t0;
    (void)user;
    if (t0 == 0)
        t0 = epm_now();
    fprintf(stderr, "[%7.1fs] %s\n", epm_now() - t0, message);
}

int cli_parse_int(const char *what, const char *opt, const char *val, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        cli_usage_error(what, "option %s: '%s' is not an integer in [%ld, %ld]", opt, val, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

/* A list's bounds and where its items go: integers (longs) or numbers (doubles). */
typedef struct list_items {
    const char *what, *opt;
    double lo, hi;
    long *ints;
    double *nums;
} list_items;

/* Each item of the comma-separated list val (none empty, each under 32
 * characters, at most cap) parsed into li's array; *n counts them. */
static int parse_list(const list_items *li, const char *val, const char *noun, int cap, int *n)
{
    *n = 0;
    for (const char *p = val;; p++) {
        size_t len = strcspn(p, ",");
        char item[32];
        if (len == 0 || len >= sizeof item || *n == cap) {
            cli_usage_error(li->what, "option %s: '%s' is not a list of at most %d %s", li->opt, val, cap, noun);
            return 0;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (li->ints ? !cli_parse_int(li->what, li->opt, item, (long)li->lo, (long)li->hi, &li->ints[(*n)++])
                     : !cli_parse_double(li->what, li->opt, item, li->lo, li->hi, &li->nums[(*n)++]))
            return 0;
        p += len;
        if (!*p)
            return 1;
    }
}

int cli_parse_int_list(const char *what, const char *opt, const char *val, long lo, long hi, const char *noun,
                       long *out, int cap, int *n)
{
    const list_items li = {what, opt, (double)lo, (double)hi, out, NULL};
    return parse_list(&li, val, noun, cap, n);
}

int cli_parse_double_list(const char *what, const char *opt, const char *val, double lo, double hi,
                          const char *noun, double *out, int cap, int *n)
{
    const list_items li = {what, opt, lo, hi, NULL, out};
    return parse_list(&li, val, noun, cap, n);
}

const char *const cli_wire_dtypes[] = {"f32", "bf16", "fp8", NULL};

int cli_parse_choice(const char *what, const char *opt, const char *val, const char *const *names, int *out)
{
    char list[256] = "";
    size_t at = 0;
    for (int i = 0; names[i]; i++) {
        if (!strcmp(val, names[i])) {
            *out = i;
            return 1;
        }
        const char *sep = !i ? "" : names[i + 1] ? ", " : " or ";
        int w = snprintf(list + at, sizeof list - at, "%s%s", sep, names[i]);
        at = w > 0 && (size_t)w < sizeof list - at ? at + (size_t)w : sizeof list - 1;
    }
    cli_usage_error(what, "%s '%s' is not %s", opt, val, list);
    return 0;
}

int cli_parse_double(const char *what, const char *opt, const char *val, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(v) || v < lo || v > hi) {
        cli_usage_error(what, "option %s: '%s' is not a number in [%g, %g]", opt, val, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

int cli_parse_u64(const char *what, const char *opt, const char *val, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-') {
        cli_usage_error(what, "option %s: '%s' is not a non-negative integer", opt, val);
        return 0;
    }
    *out = v;
    return 1;
}

int cli_same_file(const char *a, const char *b) { return epm_same_file(a, b); }

long cli_expert_bytes(long elem, long hidden, long ffn) { return 3 * ((elem * hidden * ffn + 3) / 4 * 4); }

const char *const cli_held_dtypes[] = {"auto", "bf16", "f32", NULL};

long cli_model_expert_bytes(const char *what, const char *dir, int held)
{
    epm_model *m;
    if (epm_model_open(dir, &m) != EPM_OK) {
        /* (a planning machine may hold the config alone: its shape, in its declared dtype) */
        char path[4096], w1[4200], w2[4200];
        snprintf(w1, sizeof w1, "%s/model.safetensors", dir);
        snprintf(w2, sizeof w2, "%s/model.safetensors.index.json", dir);
        if (!access(w1, F_OK) || !access(w2, F_OK)) { /* (weights there, and unreadable: say why) */
            fprintf(stderr, "epmoe %s: error: %s\n", what, epm_last_error());
            return -2;
        }
        epm_model_config c;
        const int fits = snprintf(path, sizeof path, "%s/config.json", dir) < (int)sizeof path;
        if (!fits || epm_model_config_load(path, &c) != EPM_OK) {
            fprintf(stderr, "epmoe %s: error: %s\n", what, epm_last_error());
            return -2;
        }
        /* (run holds bf16 only where stored bf16 or FP8, FP8 only as stored, else float32) */
        const int d = c.dtype, narrow = d == EPM_DTYPE_BF16 || d == EPM_DTYPE_F8_E4M3;
        const long stored = d == EPM_DTYPE_F32 ? 4 : d == EPM_DTYPE_F8_E4M3 ? 1 : 2;
        const long es = held == CLI_STORED      ? stored
                        : held == CLI_HELD_F32  ? 4
                        : held == CLI_HELD_BF16 ? (narrow ? 2 : 4)
                                                : (d == EPM_DTYPE_F8_E4M3 ? 1 : narrow ? 2 : 4);
        const long b = cli_expert_bytes(es, c.hidden_size, c.moe_ffn);
        epm_model_config_clear(&c);
        fprintf(stderr, "epmoe %s: %s holds no weights to read: its experts are taken at its config's shape and "
                "dtype, %ld bytes each (--expert-bytes sets them)\n", what, dir, b);
        epm_clear_error();
        return b;
    }
    const epm_dtype want = held == CLI_HELD_F32 ? EPM_DTYPE_F32 : held == CLI_HELD_BF16 ? EPM_DTYPE_BF16
                                                                                        : EPM_DTYPE_F8_E4M3;
    long b = held == CLI_STORED ? (long)epm_model_expert_stored_bytes(m)
             : epm_model_set_expert_dtype(m, want, NULL) == EPM_OK ? (long)epm_model_expert_packed_bytes(m)
                                                                   : -1;
    if (b < 0) {
        fprintf(stderr, "epmoe %s: error: %s\n", what, epm_last_error());
        b = -2;
    }
    epm_model_close(m);
    return b;
}
