/* Fuzz target: the trace reader (safetensors or .npy, chosen by content),
 * then the statistics over whatever it accepted, and plan eval with online
 * rebalancing over its pass_ids (any numbers, any order) where it has them. */
#include <stdint.h>

#include "epmoe/eval.h"
#include "epmoe/plan.h"
#include "epmoe/trace.h"

/* a contiguous placement of the trace's shape on 2 nodes x 2 ranks, evaluated
 * with a rebalance every 2 passes */
static void eval_rebalanced(const epm_trace *t)
{
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    epm_plan_opts po;
    epm_plan_opts_init(&po);
    epm_placement *p = NULL;
    if (epm_plan(t, &c, &po, &p) != EPM_OK)
        return;
    epm_eval_opts eo;
    epm_eval_opts_init(&eo);
    eo.eplb_interval = 2;
    eo.eplb_window = 1;
    eo.eplb_slots = epm_placement_max_slots(p) + 1 <= epm_trace_experts(t) ? epm_placement_max_slots(p) + 1 : 0;
    epm_eval_result *r = NULL;
    if (epm_eval(t, p, &eo, &r) == EPM_OK)
        epm_eval_result_destroy(r);
    epm_placement_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* experts inferred, and a fixed count that some ids will exceed */
    static const int experts[2] = {0, 8};
    for (int i = 0; i < 2; i++) {
        epm_trace *t = NULL;
        if (epm_trace_parse(data, size, "fuzz", experts[i], &t) != EPM_OK)
            continue;
        /* A valid trace may still ask for layers x experts counters beyond
         * the fuzzer's memory limit; that is not a bug. */
        epm_trace_stats *s = NULL;
        if ((int64_t)epm_trace_layers(t) * epm_trace_experts(t) <= (1 << 16) &&
            epm_trace_stats_compute(t, 2, &s) == EPM_OK)
            epm_trace_stats_destroy(s);
        if (epm_trace_pass_ids(t) && (int64_t)epm_trace_layers(t) * epm_trace_experts(t) <= (1 << 12) &&
            epm_trace_tokens(t) * epm_trace_layers(t) <= (1 << 16))
            eval_rebalanced(t);
        epm_trace_destroy(t);
    }
    return 0;
}
