/* The baseline placement methods and the objective every method reports. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement_internal.h"
#include "planner.h"

epm_status epm_plan_slots(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, int *slots)
{
    int E = epm_trace_experts(t), R = epm_cluster_ranks(c);
    int need = (E + R - 1) / R;
    int s = o->slots_per_rank > 0 ? o->slots_per_rank : need;
    if ((long)s * R < E)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: slots_per_rank = %d on %d ranks holds %ld experts, the trace has %d",
                        s, R, (long)s * R, E);
    if (s > E)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: slots_per_rank = %d is more than the %d experts", s, E);
    *slots = s;
    return EPM_OK;
}

/* assignments per expert in each layer: [L * E] */
static epm_status expert_loads(const epm_trace *t, int64_t **out)
{
    int L = epm_trace_layers(t), E = epm_trace_experts(t), K = epm_trace_k(t);
    int64_t T = epm_trace_tokens(t);
    int64_t *load = epm_calloc((size_t)L * (size_t)E, sizeof *load);
    if (!load)
        return EPM_ERR_NOMEM;
    for (int l = 0; l < L; l++) {
        const int32_t *ids = epm_trace_ids_const(t, l);
        for (int64_t i = 0; i < T * K; i++)
            if (ids[i] >= 0)
                load[(size_t)l * (size_t)E + (size_t)ids[i]]++;
    }
    *out = load;
    return EPM_OK;
}

typedef struct item {
    int expert;
    double weight;
} item;

static int item_cmp(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->weight != y->weight)
        return x->weight > y->weight ? -1 : 1;
    return x->expert - y->expert;
}

/* Least-loaded rank among [lo, hi) with a free slot and no copy of expert e;
 * ties go to the lower rank. -1 when none. */
static int least_loaded(const epm_placement *p, int l, const double *rload, int lo, int hi, int slots, int e)
{
    int best = -1;
    for (int r = lo; r < hi; r++) {
        if (epm_placement_rank_count(p, l, r) >= slots || epm_placement_has(p, l, e, r))
            continue;
        if (best < 0 || rload[r] < rload[best])
            best = r;
    }
    return best;
}

static epm_status place_greedy(epm_placement *p, int l, const int64_t *load, int slots, item *items, double *rload)
{
    int E = p->experts, R = p->ranks;
    for (int e = 0; e < E; e++)
        items[e] = (item){e, (double)load[e]};
    qsort(items, (size_t)E, sizeof *items, item_cmp);
    memset(rload, 0, (size_t)R * sizeof *rload);
    for (int i = 0; i < E; i++) {
        int r = least_loaded(p, l, rload, 0, R, slots, items[i].expert);
        if (r < 0)
            return epm_fail(EPM_ERR_INTERNAL, "greedy: no free slot for expert %d", items[i].expert);
        EPM_CHECK(epm_placement_add(p, l, items[i].expert, r));
        rload[r] += items[i].weight;
    }
    return EPM_OK;
}

/* Places a replica of e on a rank of [lo, hi) even when every rank with a free
 * slot already holds e: moves another expert f from a rank without e to the
 * free rank, which frees a place for e. */
static epm_status place_with_repair(epm_placement *p, int l, double *rload, const double *w, int lo, int hi,
                                    int slots, int e, double weight)
{
    int r = least_loaded(p, l, rload, lo, hi, slots, e);
    if (r >= 0) {
        rload[r] += weight;
        return epm_placement_add(p, l, e, r);
    }
    for (int q = lo; q < hi; q++) {
        if (epm_placement_rank_count(p, l, q) >= slots)
            continue; /* q has a free slot but holds e */
        for (int s = lo; s < hi; s++) {
            if (s == q || epm_placement_has(p, l, e, s))
                continue;
            for (int f = 0; f < p->experts; f++) {
                if (!epm_placement_has(p, l, f, s) || epm_placement_has(p, l, f, q))
                    continue;
                /* move f from s to q, then e onto s */
                size_t i = epm_pl_le(p, l, f);
                int *reps = p->reps + i * (size_t)p->ranks;
                for (int j = 0; j < p->count[i]; j++) {
                    if (reps[j] == s) {
                        memmove(reps + j, reps + j + 1, (size_t)(p->count[i] - j - 1) * sizeof *reps);
                        p->count[i]--;
                        p->rank_count[(size_t)l * (size_t)p->ranks + (size_t)s]--;
                        break;
                    }
                }
                EPM_CHECK(epm_placement_add(p, l, f, q));
                rload[s] -= w[f];
                rload[q] += w[f];
                rload[s] += weight;
                return epm_placement_add(p, l, e, s);
            }
        }
    }
    return epm_fail(EPM_ERR_INTERNAL, "eplb: cannot place a replica of expert %d in layer %d", e, l);
}

/* Replica counts of experts ex[0..n) for `total` slots: one each, then each
 * spare slot to the expert with the most load per replica (DeepSeek EPLB's
 * replication), at most cap replicas an expert (a rank holds an expert once). */
static void replicate(const int64_t *load, const int *ex, int n, int total, int cap, int *reps)
{
    for (int i = 0; i < n; i++)
        reps[ex[i]] = 1;
    for (int spare = total - n; spare > 0; spare--) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            const int e = ex[i];
            if (reps[e] >= cap)
                continue;
            if (best < 0 || (double)load[e] / reps[e] > (double)load[best] / reps[best])
                best = e;
        }
        if (best < 0)
            break;
        reps[best]++;
    }
}

/* The replicas of experts ex[0..n) (counts in reps), heaviest per replica
 * first; items[0..return) */
static int replica_items(const int64_t *load, const int *ex, int n, const int *reps, item *items, double *w)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        const int e = ex[i];
        w[e] = (double)load[e] / reps[e];
        for (int j = 0; j < reps[e]; j++)
            items[m++] = (item){e, w[e]};
    }
    qsort(items, (size_t)m, sizeof *items, item_cmp);
    return m;
}

/* DeepSeek EPLB's idea: spare slots go to the experts with the highest load
 * per replica; replicas are packed onto nodes first, then onto the ranks of
 * each node, heaviest first onto the least-loaded place. */
static epm_status place_eplb(epm_placement *p, int l, const int64_t *load, int slots, item *items, double *rload,
                             int *reps, double *w)
{
    int E = p->experts, R = p->ranks, G = p->cluster.gpus_per_node, N = p->cluster.nodes;
    int *all = reps + E; /* [E]: every expert */
    for (int e = 0; e < E; e++)
        all[e] = e;
    replicate(load, all, E, R * slots, R, reps);
    const int n = replica_items(load, all, E, reps, items, w);
    /* nodes first: balanced node load, at most G*slots replicas per node and
     * at most G replicas of one expert per node */
    double *nload = rload + R;
    int *nfill = all + E; /* [N] */
    int *node_of = nfill + N; /* [n] */
    int *per_node = node_of + n; /* [N * E] */
    memset(nload, 0, (size_t)N * sizeof *nload);
    memset(nfill, 0, (size_t)N * sizeof *nfill);
    memset(per_node, 0, (size_t)N * (size_t)E * sizeof *per_node);
    for (int i = 0; i < n; i++) {
        int e = items[i].expert, best = -1;
        for (int d = 0; d < N; d++) {
            if (nfill[d] >= G * slots || per_node[(size_t)d * (size_t)E + (size_t)e] >= G)
                continue;
            if (best < 0 || nload[d] < nload[best])
                best = d;
        }
        if (best < 0)
            return epm_fail(EPM_ERR_INTERNAL, "eplb: no node can take a replica of expert %d", e);
        node_of[i] = best;
        nfill[best]++;
        nload[best] += items[i].weight;
        per_node[(size_t)best * (size_t)E + (size_t)e]++;
    }
    memset(rload, 0, (size_t)R * sizeof *rload);
    for (int i = 0; i < n; i++) {
        int lo = node_of[i] * G;
        EPM_CHECK(place_with_repair(p, l, rload, w, lo, lo + G, slots, items[i].expert, items[i].weight));
    }
    return EPM_OK;
}

epm_status epm_plan_fill_replicas(const epm_placement *base, const int64_t *load, int slots, epm_placement **out)
{
    *out = NULL;
    const int L = base->layers, E = base->experts, R = base->ranks;
    epm_placement *p = NULL;
    item *items = epm_malloc(((size_t)R * (size_t)slots + 1) * sizeof *items);
    int *all = epm_malloc((size_t)E * sizeof *all), *reps = epm_malloc((size_t)E * sizeof *reps);
    double *rload = epm_malloc((size_t)R * sizeof *rload);
    epm_status st = items && all && reps && rload ? epm_placement_clone(base, &p) : EPM_ERR_NOMEM;
    for (int e = 0; e < E && st == EPM_OK; e++)
        all[e] = e;
    for (int l = 0; l < L && st == EPM_OK; l++) {
        const int64_t *ll = load + (size_t)l * (size_t)E;
        replicate(ll, all, E, R * slots, R, reps);
        memset(rload, 0, (size_t)R * sizeof *rload);
        int n = 0;
        for (int e = 0; e < E; e++) {
            const int *had;
            const int nh = epm_placement_replicas(p, l, e, &had);
            reps[e] = reps[e] > nh ? reps[e] : nh;
            const double w = (double)ll[e] / reps[e];
            for (int i = 0; i < nh; i++)
                rload[had[i]] += w;
            for (int j = nh; j < reps[e]; j++)
                items[n++] = (item){e, w};
        }
        qsort(items, (size_t)n, sizeof *items, item_cmp);
        for (int i = 0; i < n && st == EPM_OK; i++) {
            const int r = least_loaded(p, l, rload, 0, R, slots, items[i].expert);
            if (r < 0)
                continue; /* (every rank with room holds it: one replica fewer) */
            rload[r] += items[i].weight;
            st = epm_placement_add(p, l, items[i].expert, r);
        }
    }
    epm_free(items);
    epm_free(all);
    epm_free(reps);
    epm_free(rload);
    if (st != EPM_OK) {
        epm_placement_destroy(p);
        return st;
    }
    *out = p;
    return EPM_OK;
}

epm_status epm_plan_complete_slots(epm_placement *p, const int64_t *load, int slots, int *added)
{
    *added = 0;
    const int E = p->experts, R = p->ranks;
    for (int l = 0; l < p->layers; l++)
        for (int r = 0; r < R; r++)
            while (epm_placement_rank_count(p, l, r) < slots && epm_placement_rank_count(p, l, r) < E) {
                int best = -1;
                double w = -1;
                for (int e = 0; e < E; e++) {
                    if (epm_placement_has(p, l, e, r))
                        continue;
                    const int *had;
                    const double v = (double)load[(size_t)l * (size_t)E + (size_t)e] /
                                     (epm_placement_replicas(p, l, e, &had) + 1);
                    if (v > w) {
                        w = v;
                        best = e;
                    }
                }
                EPM_CHECK(epm_placement_add(p, l, best, r));
                ++*added;
            }
    return EPM_OK;
}

/* Whether eplb keeps expert groups whole on nodes: DeepSeek EPLB's
 * hierarchical policy, where group-limited routing (n_group, topk_group)
 * then bounds the nodes a token reaches; it needs the groups to divide over
 * the nodes, and otherwise falls back to the global policy, as DeepSeek's
 * does. */
int epm_eplb_hierarchical(int groups, int experts, const epm_cluster *c)
{
    return groups > 1 && c->nodes > 1 && experts % groups == 0 && groups % c->nodes == 0;
}

/* The hierarchical policy: the groups (experts [g*E/groups, (g+1)*E/groups))
 * packed onto nodes by load, groups/nodes each, heaviest first onto the
 * lightest node with room; then on each node, over its own experts and
 * ranks only, replicas for its G*slots slots and their packing, as above. */
static epm_status place_eplb_grouped(epm_placement *p, int l, const int64_t *load, int slots, int groups,
                                     item *items, double *rload, int *reps, double *w)
{
    const int E = p->experts, R = p->ranks, G = p->cluster.gpus_per_node, N = p->cluster.nodes;
    const int gs = E / groups, per = groups / N;
    item *gi = epm_malloc((size_t)groups * sizeof *gi);
    int *node_of = epm_malloc((size_t)groups * sizeof *node_of), *fill = epm_calloc((size_t)N, sizeof *fill);
    int *ex = epm_malloc((size_t)per * (size_t)gs * sizeof *ex);
    double *nload = epm_calloc((size_t)N, sizeof *nload);
    epm_status st = gi && node_of && fill && ex && nload ? EPM_OK : EPM_ERR_NOMEM;
    for (int g = 0; g < groups && st == EPM_OK; g++) {
        double sum = 0;
        for (int e = g * gs; e < (g + 1) * gs; e++)
            sum += (double)load[e];
        gi[g] = (item){g, sum};
    }
    if (st == EPM_OK)
        qsort(gi, (size_t)groups, sizeof *gi, item_cmp);
    for (int i = 0; i < groups && st == EPM_OK; i++) {
        int best = -1;
        for (int d = 0; d < N; d++)
            if (fill[d] < per && (best < 0 || nload[d] < nload[best]))
                best = d;
        node_of[gi[i].expert] = best; /* (room remains: groups = per * N) */
        fill[best]++;
        nload[best] += gi[i].weight;
    }
    memset(rload, 0, (size_t)R * sizeof *rload);
    for (int d = 0; d < N && st == EPM_OK; d++) {
        int n = 0;
        for (int g = 0; g < groups; g++)
            for (int e = g * gs; e < (g + 1) * gs && node_of[g] == d; e++)
                ex[n++] = e;
        replicate(load, ex, n, G * slots, G, reps);
        const int m = replica_items(load, ex, n, reps, items, w);
        for (int i = 0; i < m && st == EPM_OK; i++)
            st = place_with_repair(p, l, rload, w, d * G, d * G + G, slots, items[i].expert, items[i].weight);
    }
    epm_free(gi);
    epm_free(node_of);
    epm_free(fill);
    epm_free(ex);
    epm_free(nload);
    return st;
}

static const char *const method_names[EPM_METHOD_COUNT] = {"contiguous", "round-robin", "greedy", "eplb", "ilp"};

const char *epm_method_name(epm_method m) { return (unsigned)m < EPM_METHOD_COUNT ? method_names[m] : "?"; }

epm_status epm_method_parse(const char *s, epm_method *out)
{
    for (int m = 0; m < EPM_METHOD_COUNT; m++) {
        if (s && !strcmp(s, method_names[m])) {
            *out = (epm_method)m;
            return EPM_OK;
        }
    }
    return epm_fail(EPM_ERR_INVALID_ARG, "method '%s' is not one of: contiguous, round-robin, greedy, eplb, ilp",
                    s ? s : "(null)");
}

/* A heuristic placement from the per-expert loads of each layer ([L * E]). */
static epm_status place_from_loads(epm_method m, const int64_t *load, int L, int E, int K, const epm_cluster *c,
                                   int slots, int groups, epm_placement **out)
{
    *out = NULL;
    const int R = epm_cluster_ranks(c);
    epm_placement *p = NULL;
    item *items = NULL;
    double *rload = NULL, *w = NULL;
    int *reps = NULL;
    epm_status st;
    EPM_CHECK_GOTO(epm_placement_create(L, E, K, c, &p), st, fail);
    size_t n_items = (size_t)R * (size_t)slots + (size_t)E;
    items = epm_malloc(n_items * sizeof *items);
    rload = epm_malloc(((size_t)R + (size_t)c->nodes) * sizeof *rload);
    w = epm_malloc((size_t)E * sizeof *w);
    reps = epm_malloc(((size_t)2 * E + (size_t)c->nodes + n_items + (size_t)c->nodes * (size_t)E) * sizeof *reps);
    if (!items || !rload || !w || !reps) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    for (int l = 0; l < L; l++) {
        const int64_t *ll = load + (size_t)l * (size_t)E;
        for (int e = 0; e < E && (m == EPM_METHOD_CONTIGUOUS || m == EPM_METHOD_ROUND_ROBIN); e++) {
            int r = m == EPM_METHOD_CONTIGUOUS ? (int)((int64_t)e * R / E) : e % R;
            EPM_CHECK_GOTO(epm_placement_add(p, l, e, r), st, fail);
        }
        if (m == EPM_METHOD_GREEDY)
            EPM_CHECK_GOTO(place_greedy(p, l, ll, slots, items, rload), st, fail);
        if (m == EPM_METHOD_EPLB && epm_eplb_hierarchical(groups, E, c))
            EPM_CHECK_GOTO(place_eplb_grouped(p, l, ll, slots, groups, items, rload, reps, w), st, fail);
        else if (m == EPM_METHOD_EPLB)
            EPM_CHECK_GOTO(place_eplb(p, l, ll, slots, items, rload, reps, w), st, fail);
    }
    *out = p;
    p = NULL;
    st = EPM_OK;
fail:
    epm_placement_destroy(p);
    epm_free(items);
    epm_free(rload);
    epm_free(w);
    epm_free(reps);
    return st;
}

epm_status epm_expert_groups_check(int groups, int experts, const char *what)
{
    if (groups < 0 || groups > experts || (groups > 0 && experts % groups != 0))
        return epm_fail(EPM_ERR_INVALID_ARG, "%s = %d: expert groups must divide the %d experts (0 or 1: none)", what,
                        groups, experts);
    return EPM_OK;
}

epm_status epm_redundant_slots(int experts, int ranks, int redundant, const char *what, int *slots)
{
    if (experts < 1 || ranks < 1 || redundant < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: %d experts over %d ranks take 0 or more redundant ones", what,
                        redundant, experts, ranks);
    /* (a rank holds each expert once: at most experts slots, so at most experts x (ranks - 1) redundant) */
    const int64_t most = (int64_t)experts * (ranks - 1), phys = (int64_t)experts + redundant;
    if (redundant > most)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: %d ranks of at most %d experts each hold at most %lld redundant "
                        "ones", what, redundant, ranks, experts, (long long)most);
    if (phys % ranks != 0) {
        int64_t up = (phys + ranks - 1) / ranks * ranks - experts, down = phys / ranks * ranks - experts;
        char alt[64];
        if (down >= 0 && up <= most)
            snprintf(alt, sizeof alt, "%lld or %lld", (long long)down, (long long)up);
        else
            snprintf(alt, sizeof alt, "%lld", (long long)(down >= 0 ? down : up)); /* (one of them is) */
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: %d experts and %d redundant are %lld physical experts, which do "
                        "not divide over %d ranks (vLLM and SGLang need them to); %s would", what, redundant, experts,
                        redundant, (long long)phys, ranks, alt);
    }
    *slots = (int)(phys / ranks);
    return EPM_OK;
}

epm_status epm_plan_from_loads(epm_method m, const int64_t *load, int layers, int experts, int k,
                               const epm_cluster *c, int slots, int groups, epm_placement **out)
{
    if (out)
        *out = NULL;
    if (!load || !c || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_plan_from_loads: NULL argument");
    if (m == EPM_METHOD_ILP || (unsigned)m >= EPM_METHOD_COUNT)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan from loads: '%s' is not a heuristic method", epm_method_name(m));
    const int R = epm_cluster_ranks(c);
    if (layers < 1 || experts < 1 || k < 1 || k > experts || R < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan from loads: %d layers, %d experts, top-%d on %d ranks", layers,
                        experts, k, R);
    if (slots < 1 || (long)slots * R < experts || slots > experts)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan from loads: %d slots a rank on %d ranks for %d experts (from "
                        "%d to %d)", slots, R, experts, (experts + R - 1) / R, experts);
    for (size_t i = 0; i < (size_t)layers * (size_t)experts; i++)
        if (load[i] < 0)
            return epm_fail(EPM_ERR_INVALID_ARG, "plan from loads: expert %d of layer %d has load %lld",
                            (int)(i % (size_t)experts), (int)(i / (size_t)experts), (long long)load[i]);
    EPM_CHECK(epm_expert_groups_check(groups, experts, "plan from loads: groups"));
    EPM_CHECK(place_from_loads(m, load, layers, experts, k, c, slots, groups, out));
    epm_placement_info info = {0};
    snprintf(info.method, sizeof info.method, "%s", epm_method_name(m));
    info.quality = EPM_QUALITY_HEURISTIC;
    info.objective = info.bound = info.gap = NAN;
    epm_placement_set_info(*out, &info);
    return EPM_OK;
}

epm_status epm_plan_heuristic(epm_method m, const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                              epm_placement **out)
{
    *out = NULL;
    epm_plan_opts resolved;
    epm_plan_resolve(o, c, &resolved);
    o = &resolved;
    if (m == EPM_METHOD_ILP || (unsigned)m >= EPM_METHOD_COUNT)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: '%s' is not a heuristic method", epm_method_name(m));
    int slots = 0;
    EPM_CHECK(epm_plan_slots(t, c, o, &slots));
    EPM_CHECK(epm_expert_groups_check(o->expert_groups, epm_trace_experts(t), "plan: expert_groups"));
    epm_placement *p = NULL;
    int64_t *load = NULL;
    epm_status st;
    EPM_CHECK_GOTO(expert_loads(t, &load), st, fail);
    EPM_CHECK_GOTO(place_from_loads(m, load, epm_trace_layers(t), epm_trace_experts(t), epm_trace_k(t), c, slots,
                                    o->expert_groups, &p),
                   st, fail);
    epm_placement_info info = {0};
    snprintf(info.method, sizeof info.method, "%s", epm_method_name(m));
    info.mode = o->mode;
    info.quality = EPM_QUALITY_HEURISTIC;
    info.bound = NAN;
    info.gap = NAN;
    EPM_CHECK_GOTO(epm_plan_objective(t, p, o, &info.objective), st, fail);
    epm_placement_set_info(p, &info);
    *out = p;
    p = NULL;
    st = EPM_OK;
fail:
    epm_placement_destroy(p);
    epm_free(load);
    return st;
}

epm_status epm_plan_objective(const epm_trace *t, const epm_placement *p, const epm_plan_opts *o, double *obj)
{
    epm_plan_opts resolved;
    epm_plan_resolve(o, epm_placement_cluster(p), &resolved);
    o = &resolved;
    epm_eval_opts eo;
    epm_eval_opts_init(&eo);
    eo.mode = o->mode;
    eo.hidden_bytes = (int64_t)o->hidden * 2;
    eo.kv_row_bytes = (int64_t)(o->kv_dim > 0 ? o->kv_dim : o->hidden / 2) * 2;
    epm_eval_result *r;
    EPM_CHECK(epm_eval(t, p, &eo, &r));
    double cost[EPM_LINK_COUNT];
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        cost[k] = epm_cluster_link_cost(epm_placement_cluster(p), (epm_link)k);
    const double denom = (double)eo.hidden_bytes * epm_placement_ranks(p);
    double v = 0;
    for (int l = 0; l < r->layers; l++) {
        int64_t b[EPM_LINK_COUNT];
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            b[k] = r->layer[l].bytes[k] + r->layer[l].kv_bytes[k];
        v += epm_plan_objective_term(o->balance_weight, o->traffic_weight, denom, cost, r->layer[l].max_load, b);
    }
    v += epm_plan_objective_term(o->balance_weight, o->traffic_weight, denom, cost, 0, r->gather_bytes);
    epm_eval_result_destroy(r);
    *obj = v;
    return EPM_OK;
}
