/* epm_plan: validates the options once, then hands over to one method. */
#include <math.h>
#include <stdio.h>

#include "core.h"
#include "planner.h"

void epm_plan_opts_init(epm_plan_opts *o)
{
    o->method = EPM_METHOD_CONTIGUOUS;
    o->mode = EPM_MODE_HOME;
    o->slots_per_rank = 0;
    o->balance_weight = -1.0;
    o->traffic_weight = 1.0;
    o->time_limit_s = 60.0;
    o->mip_gap = 1e-4;
    o->hidden = 4096;
    o->kv_dim = 0;
    o->ffn = 14336;
    o->progress = NULL;
    o->progress_user = NULL;
    o->expert_groups = 0;
}

void epm_plan_resolve(const epm_plan_opts *o, const epm_cluster *c, epm_plan_opts *out)
{
    *out = *o;
    if (o->balance_weight < 0) {
        /* both terms in seconds: one straggler assignment vs one intra-node transfer */
        double t_assign = 6.0 * o->hidden * (double)o->ffn / (c->gpu_tflops * 1e12);
        double t_xfer = 2.0 * o->hidden / (c->intra_gbps * 1e9);
        out->balance_weight = t_assign / t_xfer;
    }
}

static epm_status check_opts(const epm_plan_opts *o)
{
    if ((unsigned)o->method >= EPM_METHOD_COUNT)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: method = %d is not a method", (int)o->method);
    if (o->mode != EPM_MODE_HOME && o->mode != EPM_MODE_FOLLOW)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: mode = %d is not home or follow", (int)o->mode);
    if (o->slots_per_rank < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: slots_per_rank = %d is negative", o->slots_per_rank);
    if (isnan(o->balance_weight) || !isfinite(o->balance_weight))
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: balance_weight = %g must be finite (< 0 = auto)",
                        o->balance_weight);
    if (o->ffn <= 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: ffn = %d must be > 0", o->ffn);
    if (!(o->traffic_weight >= 0) || !isfinite(o->traffic_weight))
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: traffic_weight = %g must be >= 0", o->traffic_weight);
    if (o->balance_weight == 0 && o->traffic_weight == 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: balance_weight and traffic_weight are both 0");
    if (!(o->time_limit_s >= 0) || !isfinite(o->time_limit_s))
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: time_limit_s = %g must be >= 0", o->time_limit_s);
    if (!(o->mip_gap >= 0 && o->mip_gap < 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: mip_gap = %g must be in [0, 1)", o->mip_gap);
    if (o->hidden <= 0 || o->kv_dim < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "plan: hidden = %d must be > 0 and kv_dim = %d >= 0", o->hidden,
                        o->kv_dim);
    return EPM_OK;
}

epm_status epm_plan(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, epm_placement **out)
{
    epm_plan_opts defaults;
    *out = NULL;
    if (!o) {
        epm_plan_opts_init(&defaults);
        o = &defaults;
    }
    EPM_CHECK(check_opts(o));
    EPM_CHECK(epm_cluster_validate(c));
    epm_plan_opts resolved;
    epm_plan_resolve(o, c, &resolved);
    o = &resolved;
    int slots;
    EPM_CHECK(epm_plan_slots(t, c, o, &slots));
    EPM_CHECK(epm_expert_groups_check(o->expert_groups, epm_trace_experts(t), "plan: expert_groups"));
    double t0 = epm_now();
    epm_placement *p;
    if (o->method == EPM_METHOD_ILP)
        EPM_CHECK(epm_plan_ilp(t, c, o, &p));
    else
        EPM_CHECK(epm_plan_heuristic(o->method, t, c, o, &p));
    epm_placement_info info = *epm_placement_get_info(p);
    info.mode = o->mode;
    info.solve_seconds = epm_now() - t0;
    epm_placement_set_info(p, &info);
    *out = p;
    return EPM_OK;
}
