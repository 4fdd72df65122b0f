/* epmoe launch: check hosts, GPUs and placement against each other, then run
 * (or print) the one mpirun line that starts the job on every node. Every
 * check happens before anything starts, because a mismatch found by rank 37
 * after the model is loaded costs minutes and says less. */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "core.h"
#include "epmoe/launch.h"

static const char usage[] =
    "usage: epmoe launch (--hostfile FILE | --hosts H1:S1,H2:S2) --gpus-per-node G [options] -- COMMAND...\n"
    "\n"
    "Checks hosts, GPU map and placement against each other, then runs the mpirun line that starts\n"
    "COMMAND on every rank (G ranks per node, one per GPU). COMMAND is an epmoe subcommand\n"
    "(run, bench, ...: this epmoe binary runs it) or a program.\n"
    "  --hostfile FILE     Open MPI hostfile: 'name slots=N [max_slots=M]' per line, '#' comments\n"
    "  --hosts LIST        h1:2,h2:2 (Open MPI's --host syntax; 'h' alone is 1 slot)\n"
    "  --gpus-per-node G   ranks (GPUs) per node: the placement's gpus_per_node\n"
    "  --np N              total ranks; must be hosts x G (the default)\n"
    "  --placement FILE    placement JSON whose cluster must match (default: 'run --placement FILE';\n"
    "                      given here for 'run', it is passed on)\n"
    "  --gpu-map LIST      GPU index of each local rank, e.g. 0,2,4,6 (default: local rank)\n"
    "  --node-gpus N       GPUs present on each node, the bound of --gpu-map (default G)\n"
    "  --iface IF          network MPI uses between nodes: interface name (also NCCL_SOCKET_IFNAME)\n"
    "                      or CIDR (192.0.2.0/24)\n"
    "  --env VAR[=VALUE]   pass a variable to every rank (repeatable; NCCL_* pass by themselves)\n"
    "  --mca KEY=VALUE     extra Open MPI parameter (repeatable)\n"
    "  --agent SCRIPT      remote shell mpirun uses instead of ssh (plm_rsh_agent)\n"
    "  --mpirun PATH       mpirun to use (default: mpirun on PATH)\n"
    "  --report-bindings   every rank prints its binding (EPM_REPORT_BINDINGS=1)\n"
    "  --no-resolve        skip the check that every host name resolves\n"
    "  --dry-run           print the mpirun line, shell-quoted, instead of running it\n"
    "Exit status: 0 ok (or mpirun's own status), 1 a check failed, 2 usage.\n";

enum { O_HOSTFILE = 256, O_HOSTS, O_GPN, O_NP, O_PLACE, O_MAP, O_NODEGPUS, O_IFACE, O_ENV, O_MCA, O_AGENT,
       O_MPIRUN, O_REPORT, O_NORESOLVE, O_DRY, O_HELP };

static const struct option opts[] = {
    {"hostfile", required_argument, 0, O_HOSTFILE}, {"hosts", required_argument, 0, O_HOSTS},
    {"gpus-per-node", required_argument, 0, O_GPN},  {"np", required_argument, 0, O_NP},
    {"placement", required_argument, 0, O_PLACE},    {"gpu-map", required_argument, 0, O_MAP},
    {"node-gpus", required_argument, 0, O_NODEGPUS}, {"iface", required_argument, 0, O_IFACE},
    {"env", required_argument, 0, O_ENV},            {"mca", required_argument, 0, O_MCA},
    {"agent", required_argument, 0, O_AGENT},        {"mpirun", required_argument, 0, O_MPIRUN},
    {"report-bindings", no_argument, 0, O_REPORT},   {"no-resolve", no_argument, 0, O_NORESOLVE},
    {"dry-run", no_argument, 0, O_DRY},              {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0}};

#define W "launch"
#define MAX_MAP 256

/* A growing argv whose strings it owns. */
typedef struct words {
    char **v;
    int n, cap;
} words;

static int words_add(words *w, const char *s)
{
    if (w->n + 2 > w->cap) {
        int cap = w->cap ? 2 * w->cap : 32;
        char **p = epm_realloc(w->v, (size_t)cap * sizeof *p);
        if (!p)
            return 0;
        w->v = p;
        w->cap = cap;
    }
    if (!(w->v[w->n] = epm_strdup(s)))
        return 0;
    w->v[++w->n] = NULL;
    return 1;
}

static int words_addf(words *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int words_addf(words *w, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < sizeof buf && words_add(w, buf);
}

static void words_free(words *w)
{
    for (int i = 0; i < w->n; i++)
        epm_free(w->v[i]);
    epm_free(w->v);
}

/* Quoted only when the shell would change the word. */
static void put_quoted(FILE *f, const char *s)
{
    int plain = *s != 0;
    for (const char *p = s; *p && plain; p++)
        plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-", *p) != NULL;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++)
        if (*p == '\'')
            fputs("'\\''", f);
        else
            fputc(*p, f);
    fputc('\'', f);
}

static void print_line(FILE *f, const words *w)
{
    for (int i = 0; i < w->n; i++) {
        if (i)
            fputc(' ', f);
        put_quoted(f, w->v[i]);
    }
    fputc('\n', f);
}

static int parse_map(const char *s, int *map, int *n)
{
    *n = 0;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (errno || end == s || x < 0 || x > 4095 || (*end && *end != ',') || *n >= MAX_MAP)
            return 0;
        map[(*n)++] = (int)x;
        if (!*end)
            return 1;
        s = end + 1;
    }
}

static const char *const epmoe_subcommands[] = {"trace", "plan", "run", "bench", "version"};

static int is_subcommand(const char *s)
{
    for (size_t i = 0; i < sizeof epmoe_subcommands / sizeof *epmoe_subcommands; i++)
        if (!strcmp(s, epmoe_subcommands[i]))
            return 1;
    return 0;
}

/* Where `--placement` appears in the command, if it does. */
static const char *command_placement(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--placement") && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--placement=", 12))
            return argv[i] + 12;
    }
    return NULL;
}

static int on_path(const char *name, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    if (strchr(name, '/'))
        return snprintf(out, cap, "%s", name) < (int)cap && access(name, X_OK) == 0;
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n && (size_t)snprintf(out, cap, "%.*s/%s", (int)n, p, name) < cap && access(out, X_OK) == 0)
            return 1;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

/* "host b (hosts.txt line 2)" */
static const char *where(const epm_hostlist *h, int i, char *buf, size_t n)
{
    const char *label = epm_hostlist_label(h);
    snprintf(buf, n, "host %s (%s %s %d)", epm_hostlist_name(h, i), label, label[0] == '-' ? "entry" : "line",
             epm_hostlist_line(h, i));
    return buf;
}

typedef struct launch_args {
    const char *hostfile, *hosts, *placement, *iface, *agent, *mpirun;
    long gpn, np, node_gpus;
    int map[MAX_MAP], map_len;
    int report, resolve, dry;
    words env, mca;
} launch_args;

/* Every check that can be made before mpirun starts; each failure says which
 * input disagrees with which. */
static int check(const launch_args *a, const epm_hostlist *h, const char *placement)
{
    char b1[512];
    int hosts = epm_hostlist_count(h);
    const char *label = epm_hostlist_label(h);
    for (int i = 0; i < hosts; i++) {
        int s = epm_hostlist_slots(h, i), m = epm_hostlist_max_slots(h, i);
        if (s && s < a->gpn) {
            fprintf(stderr, "epmoe launch: error: %s has slots=%d, fewer than --gpus-per-node %ld\n",
                    where(h, i, b1, sizeof b1), s, a->gpn);
            return EPM_EXIT_FAIL;
        }
        if (m && m < a->gpn) {
            fprintf(stderr, "epmoe launch: error: %s has max_slots=%d, fewer than --gpus-per-node %ld\n",
                    where(h, i, b1, sizeof b1), m, a->gpn);
            return EPM_EXIT_FAIL;
        }
    }
    long total = epm_hostlist_total_slots(h), want = (long)hosts * a->gpn;
    long np = a->np > 0 ? a->np : want;
    if (total >= 0 && np > total) {
        fprintf(stderr, "epmoe launch: error: more ranks than slots: %ld ranks, but %s gives %ld slots on %d host%s\n",
                np, label, total, hosts, hosts == 1 ? "" : "s");
        return EPM_EXIT_FAIL;
    }
    if (np != want) {
        fprintf(stderr, "epmoe launch: error: --np %ld is not %d host%s x %ld GPUs per node = %ld; epmoe runs the "
                "same number of ranks on every node\n", np, hosts, hosts == 1 ? "" : "s", a->gpn, want);
        return EPM_EXIT_FAIL;
    }
    if (a->map_len) {
        long bound = a->node_gpus > 0 ? a->node_gpus : a->gpn;
        if (a->map_len != a->gpn) {
            fprintf(stderr, "epmoe launch: error: --gpu-map has %d entries but each node runs %ld ranks "
                    "(--gpus-per-node)\n", a->map_len, a->gpn);
            return EPM_EXIT_FAIL;
        }
        for (int j = 0; j < a->map_len; j++) {
            if (a->map[j] >= bound) {
                fprintf(stderr, "epmoe launch: error: --gpu-map: GPU index %d of local rank %d is past the node's "
                        "count of %ld GPUs (%s)\n", a->map[j], j, bound,
                        a->node_gpus > 0 ? "--node-gpus" : "--gpus-per-node; more with --node-gpus");
                return EPM_EXIT_FAIL;
            }
            for (int i = 0; i < j; i++)
                if (a->map[i] == a->map[j]) {
                    fprintf(stderr, "epmoe launch: error: --gpu-map: local ranks %d and %d both use GPU %d\n", i,
                            j, a->map[j]);
                    return EPM_EXIT_FAIL;
                }
        }
    } else if (a->node_gpus > 0 && a->node_gpus < a->gpn) {
        fprintf(stderr, "epmoe launch: error: --gpus-per-node %ld ranks need GPU indices up to %ld, past the "
                "node's count of %ld GPUs (--node-gpus)\n", a->gpn, a->gpn - 1, a->node_gpus);
        return EPM_EXIT_FAIL;
    }
    if (placement) {
        epm_placement *p = NULL;
        epm_status st = epm_placement_load_json(placement, &p);
        if (st != EPM_OK)
            return cli_fail(W, st);
        const epm_cluster *c = epm_placement_cluster(p);
        int cn = c->nodes, cg = c->gpus_per_node, cr = epm_placement_ranks(p);
        epm_placement_destroy(p);
        if (cr != np) {
            fprintf(stderr, "epmoe launch: error: placement %s is for %d ranks (%d node%s x %d GPUs) but this launch "
                    "starts %ld (%d host%s x %ld GPUs)\n", placement, cr, cn, cn == 1 ? "" : "s", cg, np, hosts,
                    hosts == 1 ? "" : "s", a->gpn);
            return EPM_EXIT_FAIL;
        }
        if (cn != hosts) {
            fprintf(stderr, "epmoe launch: error: placement %s is for %d node%s but %s lists %d host%s\n", placement,
                    cn, cn == 1 ? "" : "s", label, hosts, hosts == 1 ? "" : "s");
            return EPM_EXIT_FAIL;
        }
        if (cg != a->gpn) {
            fprintf(stderr, "epmoe launch: error: placement %s has %d GPUs per node but --gpus-per-node is %ld\n",
                    placement, cg, a->gpn);
            return EPM_EXIT_FAIL;
        }
    }
    for (int i = 0; a->resolve && i < hosts; i++) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
        int rc = getaddrinfo(epm_hostlist_name(h, i), NULL, &hints, &res);
        if (res)
            freeaddrinfo(res);
        if (rc != 0) {
            fprintf(stderr, "epmoe launch: error: %s does not resolve: %s (fix the name, or --no-resolve when "
                    "only the remote shell knows it)\n", where(h, i, b1, sizeof b1), gai_strerror(rc));
            return EPM_EXIT_FAIL;
        }
    }
    return EPM_EXIT_OK;
}

static int is_cidr(const char *s) { return strchr(s, '/') != NULL; }

/* The mpirun line. */
static int build(const launch_args *a, const epm_hostlist *h, const char *mpirun, const char *hostfile_abs,
                 const char *place_abs, int cargc, char **cargv, words *w)
{
    int ok = words_add(w, mpirun);
    if (hostfile_abs) {
        ok = ok && words_add(w, "--hostfile") && words_add(w, hostfile_abs);
    } else {
        char buf[8192];
        size_t len = 0;
        for (int i = 0; i < epm_hostlist_count(h); i++) {
            int n = snprintf(buf + len, sizeof buf - len, "%s%s:%d", i ? "," : "", epm_hostlist_spec(h, i),
                             epm_hostlist_slots(h, i));
            if (n < 0 || (size_t)n >= sizeof buf - len)
                return 0;
            len += (size_t)n;
        }
        ok = ok && words_add(w, "--host") && words_add(w, buf);
    }
    long np = (long)epm_hostlist_count(h) * a->gpn;
    ok = ok && words_add(w, "-np") && words_addf(w, "%ld", np);
    /* Mapped by node, G per node, ranks node-major: the cluster's numbering. */
    ok = ok && words_add(w, "--map-by") && words_addf(w, "ppr:%ld:node", a->gpn);
    /* Each rank binds itself to its GPU's NUMA node (launch/binding.c). */
    ok = ok && words_add(w, "--bind-to") && words_add(w, "none");
    if (a->iface) {
        ok = ok && words_add(w, "--mca") && words_add(w, "btl_tcp_if_include") && words_add(w, a->iface);
        ok = ok && words_add(w, "--mca") && words_add(w, "oob_tcp_if_include") && words_add(w, a->iface);
    }
    if (a->agent)
        ok = ok && words_add(w, "--mca") && words_add(w, "plm_rsh_agent") && words_add(w, a->agent);
    for (int i = 0; i < a->mca.n; i++) {
        const char *kv = a->mca.v[i], *eq = strchr(kv, '=');
        ok = ok && words_add(w, "--mca") && words_addf(w, "%.*s", (int)(eq - kv), kv) && words_add(w, eq + 1);
    }
    /* CUDA's default order is fastest-first; PCI order is what hwloc sees. */
    if (!getenv("CUDA_DEVICE_ORDER"))
        ok = ok && words_add(w, "-x") && words_add(w, "CUDA_DEVICE_ORDER=PCI_BUS_ID");
    if (a->iface && !is_cidr(a->iface) && !getenv("NCCL_SOCKET_IFNAME"))
        ok = ok && words_add(w, "-x") && words_addf(w, "NCCL_SOCKET_IFNAME=%s", a->iface);
    if (a->map_len) {
        char buf[4 * MAX_MAP * 5];
        size_t len = 0;
        for (int j = 0; j < a->map_len; j++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%d", j ? "," : "", a->map[j]);
        ok = ok && words_add(w, "-x") && words_addf(w, "EPM_GPU_MAP=%s", buf);
    }
    if (a->report)
        ok = ok && words_add(w, "-x") && words_add(w, "EPM_REPORT_BINDINGS=1");
    extern char **environ;
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "NCCL_", 5) || !strncmp(*e, "OMP_NUM_THREADS=", 16) ||
            !strncmp(*e, "OPENBLAS_NUM_THREADS=", 21) || !strncmp(*e, "EPM_CPU_ISA=", 12))
            ok = ok && words_add(w, "-x") && words_add(w, *e);
    for (int i = 0; i < a->env.n; i++) {
        const char *v = a->env.v[i];
        if (strchr(v, '=') || !getenv(v))
            ok = ok && words_add(w, "-x") && words_add(w, v);
        else /* the value now, so that the printed line does the same later */
            ok = ok && words_add(w, "-x") && words_addf(w, "%s=%s", v, getenv(v));
    }
    for (int i = 0; i < cargc; i++) {
        if (i == 0 && is_subcommand(cargv[0])) {
            char self[PATH_MAX];
            ok = ok && realpath("/proc/self/exe", self) && words_add(w, self);
        }
        ok = ok && words_add(w, cargv[i]);
    }
    if (place_abs)
        ok = ok && words_add(w, "--placement") && words_add(w, place_abs);
    return ok;
}

int epm_cli_launch(int argc, char **argv)
{
    launch_args a = {.gpn = 0, .np = 0, .resolve = 1};
    int c, rc = EPM_EXIT_USAGE;
    epm_hostlist *h = NULL;
    words w = {0};
    if (cli_exact_options(W, argc, argv, opts, 1) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case O_HOSTFILE: a.hostfile = optarg; break;
        case O_HOSTS: a.hosts = optarg; break;
        case O_GPN:
            if (!cli_parse_int(W, "--gpus-per-node", optarg, 1, 4096, &a.gpn))
                goto out;
            break;
        case O_NP:
            if (!cli_parse_int(W, "--np", optarg, 1, 1 << 24, &a.np))
                goto out;
            break;
        case O_NODEGPUS:
            if (!cli_parse_int(W, "--node-gpus", optarg, 1, 4096, &a.node_gpus))
                goto out;
            break;
        case O_PLACE: a.placement = optarg; break;
        case O_MAP:
            if (!parse_map(optarg, a.map, &a.map_len)) {
                rc = cli_usage_error(W, "option --gpu-map: '%s' is not a list of GPU indices like 0,1,2,3", optarg);
                goto out;
            }
            break;
        case O_IFACE:
            if (!*optarg || strpbrk(optarg, " \t'\"$`\\")) {
                rc = cli_usage_error(W, "option --iface: '%s' is not an interface name or CIDR", optarg);
                goto out;
            }
            a.iface = optarg;
            break;
        case O_ENV:
            if (!*optarg || *optarg == '=' || !words_add(&a.env, optarg)) {
                rc = cli_usage_error(W, "option --env: '%s' is not VAR or VAR=VALUE", optarg);
                goto out;
            }
            break;
        case O_MCA: {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !words_add(&a.mca, optarg)) {
                rc = cli_usage_error(W, "option --mca: '%s' is not KEY=VALUE", optarg);
                goto out;
            }
            break;
        }
        case O_AGENT: a.agent = optarg; break;
        case O_MPIRUN: a.mpirun = optarg; break;
        case O_REPORT: a.report = 1; break;
        case O_NORESOLVE: a.resolve = 0; break;
        case O_DRY: a.dry = 1; break;
        case O_HELP:
            fputs(usage, stdout);
            rc = EPM_EXIT_OK;
            goto out;
        default:
            rc = cli_option_error(W, argv);
            goto out;
        }
    }
    if (optind < argc && strcmp(argv[optind - 1], "--") != 0) {
        rc = cli_usage_error(W, "'%s' before '--': the command to run goes after '--'", argv[optind]);
        goto out;
    }
    int cargc = argc - optind;
    char **cargv = argv + optind;
    if (!!a.hostfile == !!a.hosts) {
        rc = cli_usage_error(W, "give exactly one of --hostfile FILE and --hosts LIST");
        goto out;
    }
    if (a.gpn == 0) {
        rc = cli_usage_error(W, "--gpus-per-node G is required (the ranks of every node)");
        goto out;
    }
    if (cargc == 0) {
        rc = cli_usage_error(W, "no command after '--' (e.g. -- run --model DIR --input FILE)");
        goto out;
    }
    const char *cmd_place = command_placement(cargc, cargv);
    if (a.placement && cmd_place && !cli_same_file(a.placement, cmd_place)) {
        rc = cli_usage_error(W, "--placement %s differs from the command's --placement %s", a.placement, cmd_place);
        goto out;
    }
    rc = EPM_EXIT_FAIL;
    epm_status st = a.hostfile ? epm_hostfile_load(a.hostfile, &h) : epm_hosts_parse(a.hosts, &h);
    if (st != EPM_OK) {
        rc = cli_fail(W, st);
        goto out;
    }
    const char *placement = a.placement ? a.placement : cmd_place;
    if ((rc = check(&a, h, placement)) != EPM_EXIT_OK)
        goto out;
    rc = EPM_EXIT_FAIL;

    /* Absolute paths: the remote shell starts in another directory, on another host. */
    char hostfile_abs[PATH_MAX], place_abs[PATH_MAX], agent_abs[PATH_MAX], mpirun_path[PATH_MAX];
    if (a.hostfile && !realpath(a.hostfile, hostfile_abs)) {
        fprintf(stderr, "epmoe launch: error: %s: %s\n", a.hostfile, strerror(errno));
        goto out;
    }
    int pass_place = a.placement && !cmd_place && !strcmp(cargv[0], "run");
    if (pass_place && !realpath(a.placement, place_abs)) {
        fprintf(stderr, "epmoe launch: error: %s: %s\n", a.placement, strerror(errno));
        goto out;
    }
    if (a.agent) {
        if (!realpath(a.agent, agent_abs) || access(agent_abs, X_OK) != 0) {
            fprintf(stderr, "epmoe launch: error: --agent %s is not an executable file: %s\n", a.agent,
                    strerror(errno ? errno : EACCES));
            goto out;
        }
        a.agent = agent_abs;
    }
    const char *mpirun = a.mpirun ? a.mpirun : "mpirun";
    int found = on_path(mpirun, mpirun_path, sizeof mpirun_path);
    if (!found && !a.dry) {
        fprintf(stderr, "epmoe launch: error: %s not found%s (apt-get install openmpi-bin, or --mpirun PATH)\n",
                mpirun, strchr(mpirun, '/') ? " or not executable" : " on PATH");
        goto out;
    }
    if (!is_subcommand(cargv[0]) && strchr(cargv[0], '/') && access(cargv[0], X_OK) != 0) {
        fprintf(stderr, "epmoe launch: error: command %s is not an executable file\n", cargv[0]);
        goto out;
    }
    if (!build(&a, h, found && !a.dry ? mpirun_path : mpirun, a.hostfile ? hostfile_abs : NULL,
               pass_place ? place_abs : NULL, cargc, cargv, &w)) {
        fprintf(stderr, "epmoe launch: error: the mpirun line is too long or out of memory\n");
        goto out;
    }
    if (a.dry) {
        print_line(stdout, &w);
        rc = fflush(stdout) == 0 ? EPM_EXIT_OK : EPM_EXIT_FAIL;
        goto out;
    }
    fputs("epmoe launch: ", stderr);
    print_line(stderr, &w);
    fflush(stdout);
    fflush(stderr);
    execv(w.v[0], w.v);
    fprintf(stderr, "epmoe launch: error: cannot run %s: %s\n", w.v[0], strerror(errno));
out:
    words_free(&w);
    words_free(&a.env);
    words_free(&a.mca);
    epm_hostlist_destroy(h);
    return rc;
}
