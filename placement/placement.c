#include <math.h>
#include <stdio.h>
#include <string.h>

#include "placement_internal.h"

const char *epm_plan_quality_name(epm_plan_quality q)
{
    switch (q) {
    case EPM_QUALITY_OPTIMAL:
        return "optimal";
    case EPM_QUALITY_FEASIBLE:
        return "feasible";
    case EPM_QUALITY_FALLBACK:
        return "fallback";
    default:
        return "heuristic";
    }
}

epm_status epm_placement_create(int layers, int experts, int k, const epm_cluster *c, epm_placement **out)
{
    *out = NULL;
    EPM_CHECK(epm_cluster_validate(c));
    if (layers <= 0 || experts <= 0 || k <= 0 || k > experts || layers > 100000 || experts > 100000)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement: layers=%d experts=%d k=%d out of range", layers, experts,
                        k);
    int ranks = epm_cluster_ranks(c);
    size_t le = (size_t)layers * (size_t)experts, ler;
    /* (the replica table is dense, 4 bytes an entry: 2^28 entries is 1 GiB, DeepSeek-V3's 61 x 256
     * on 16384 ranks) */
    if (!epm_mul_ok(le, (size_t)ranks, &ler) || ler > ((size_t)1 << 28))
        return epm_fail(EPM_ERR_INVALID_ARG, "placement: %d layers x %d experts x %d ranks is too large (more than "
                        "2^28 entries in its replica table)", layers, experts, ranks);
    epm_placement *p = epm_calloc(1, sizeof *p);
    if (!p)
        return EPM_ERR_NOMEM;
    p->reps = epm_malloc(ler * sizeof *p->reps);
    p->count = epm_calloc(le, sizeof *p->count);
    p->rank_count = epm_calloc((size_t)layers * (size_t)ranks, sizeof *p->rank_count);
    if (!p->reps || !p->count || !p->rank_count) {
        epm_placement_destroy(p);
        return EPM_ERR_NOMEM;
    }
    p->layers = layers;
    p->experts = experts;
    p->k = k;
    p->ranks = ranks;
    p->cluster = *c;
    snprintf(p->info.method, sizeof p->info.method, "%s", "manual");
    p->info.objective = NAN;
    p->info.bound = NAN;
    p->info.gap = NAN;
    *out = p;
    return EPM_OK;
}

epm_status epm_placement_clone(const epm_placement *p, epm_placement **out)
{
    epm_placement *q;
    EPM_CHECK(epm_placement_create(p->layers, p->experts, p->k, &p->cluster, &q));
    size_t le = (size_t)p->layers * (size_t)p->experts;
    memcpy(q->reps, p->reps, le * (size_t)p->ranks * sizeof *q->reps);
    memcpy(q->count, p->count, le * sizeof *q->count);
    memcpy(q->rank_count, p->rank_count, (size_t)p->layers * (size_t)p->ranks * sizeof *q->rank_count);
    q->info = p->info;
    *out = q;
    return EPM_OK;
}

void epm_placement_destroy(epm_placement *p)
{
    if (!p)
        return;
    epm_free(p->reps);
    epm_free(p->count);
    epm_free(p->rank_count);
    epm_free(p);
}

int epm_placement_layers(const epm_placement *p) { return p->layers; }
int epm_placement_experts(const epm_placement *p) { return p->experts; }
int epm_placement_k(const epm_placement *p) { return p->k; }
int epm_placement_ranks(const epm_placement *p) { return p->ranks; }
const epm_cluster *epm_placement_cluster(const epm_placement *p) { return &p->cluster; }

epm_status epm_placement_add(epm_placement *p, int layer, int expert, int rank)
{
    if (layer < 0 || layer >= p->layers || expert < 0 || expert >= p->experts || rank < 0 || rank >= p->ranks)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement: layer %d expert %d rank %d out of range (%d, %d, %d)",
                        layer, expert, rank, p->layers, p->experts, p->ranks);
    size_t i = epm_pl_le(p, layer, expert);
    int *r = p->reps + i * (size_t)p->ranks;
    int n = p->count[i];
    int pos = n;
    for (int j = 0; j < n; j++) {
        if (r[j] == rank)
            return epm_fail(EPM_ERR_INVALID_ARG, "placement: layer %d expert %d already has a replica on rank %d",
                            layer, expert, rank);
        if (r[j] > rank && pos == n)
            pos = j;
    }
    memmove(r + pos + 1, r + pos, (size_t)(n - pos) * sizeof *r);
    r[pos] = rank;
    p->count[i] = n + 1;
    p->rank_count[(size_t)layer * (size_t)p->ranks + (size_t)rank]++;
    return EPM_OK;
}

void epm_placement_remove(epm_placement *p, int layer, int expert, int rank)
{
    size_t i = epm_pl_le(p, layer, expert);
    int *r = p->reps + i * (size_t)p->ranks;
    int n = p->count[i];
    for (int j = 0; j < n; j++)
        if (r[j] == rank) {
            memmove(r + j, r + j + 1, (size_t)(n - j - 1) * sizeof *r);
            p->count[i] = n - 1;
            p->rank_count[(size_t)layer * (size_t)p->ranks + (size_t)rank]--;
            return;
        }
}

void epm_placement_clear_layer(epm_placement *p, int layer)
{
    memset(p->count + epm_pl_le(p, layer, 0), 0, (size_t)p->experts * sizeof *p->count);
    memset(p->rank_count + (size_t)layer * (size_t)p->ranks, 0, (size_t)p->ranks * sizeof *p->rank_count);
}

int epm_placement_replicas(const epm_placement *p, int layer, int expert, const int **ranks)
{
    size_t i = epm_pl_le(p, layer, expert);
    *ranks = p->reps + i * (size_t)p->ranks;
    return p->count[i];
}

int epm_placement_rank_count(const epm_placement *p, int layer, int rank)
{
    return p->rank_count[(size_t)layer * (size_t)p->ranks + (size_t)rank];
}

int epm_placement_max_slots(const epm_placement *p)
{
    int m = 0;
    for (size_t i = 0; i < (size_t)p->layers * (size_t)p->ranks; i++)
        m = p->rank_count[i] > m ? p->rank_count[i] : m;
    return m;
}

int epm_placement_has(const epm_placement *p, int layer, int expert, int rank)
{
    const int *r;
    int n = epm_placement_replicas(p, layer, expert, &r);
    for (int j = 0; j < n; j++)
        if (r[j] == rank)
            return 1;
    return 0;
}

epm_status epm_placement_validate(const epm_placement *p, int slots_per_rank)
{
    for (int l = 0; l < p->layers; l++) {
        for (int e = 0; e < p->experts; e++)
            if (p->count[epm_pl_le(p, l, e)] == 0)
                return epm_fail(EPM_ERR_MISMATCH, "placement: layer %d expert %d is on no rank", l, e);
        if (slots_per_rank > 0)
            for (int r = 0; r < p->ranks; r++)
                if (epm_placement_rank_count(p, l, r) > slots_per_rank)
                    return epm_fail(EPM_ERR_MISMATCH, "placement: layer %d rank %d holds %d experts, slots are %d",
                                    l, r, epm_placement_rank_count(p, l, r), slots_per_rank);
    }
    return EPM_OK;
}

const epm_placement_info *epm_placement_get_info(const epm_placement *p) { return &p->info; }
void epm_placement_set_info(epm_placement *p, const epm_placement_info *info) { p->info = *info; }

void epm_route_pick(const epm_placement *p, int layer, const int32_t *ids, int k, int src, uint64_t key,
                    int *ranks_out)
{
    for (int j = 0; j < k; j++) {
        int e = ids[j];
        if (e < 0 || e >= p->experts) {
            ranks_out[j] = -1;
            continue;
        }
        const int *r;
        int n = epm_placement_replicas(p, layer, e, &r);
        if (n <= 1) {
            ranks_out[j] = n ? r[0] : -1;
            continue;
        }
        /* cheapest link class first; ties broken by (key + j) so that tokens
         * spread over equal replicas without any shared state. The replicas
         * of the best class are kept as found (most experts have few copies;
         * past 64 the class is computed again), in their order either way */
        enum { KEEP = 64 };
        int keep[KEEP];
        epm_link best = EPM_LINK_COUNT;
        int ties = 0;
        for (int q = 0; q < n; q++) {
            epm_link c = epm_cluster_link(&p->cluster, src, r[q]);
            if (c < best) {
                best = c;
                ties = 0;
            }
            if (c == best) {
                if (ties < KEEP)
                    keep[ties] = r[q];
                ties++;
            }
        }
        int pick = (int)((key + (uint64_t)j) % (uint64_t)ties);
        if (pick < KEEP) {
            ranks_out[j] = keep[pick];
            continue;
        }
        for (int q = 0; q < n; q++) {
            if (epm_cluster_link(&p->cluster, src, r[q]) != best)
                continue;
            if (pick-- == 0) {
                ranks_out[j] = r[q];
                break;
            }
        }
    }
}
