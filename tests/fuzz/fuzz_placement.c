/* Fuzz target: placement JSON. What the parser accepts must be a placement
 * that eval and run can use without further checks: every expert placed,
 * replicas sorted and on ranks of the cluster, and a route for every expert. */
#include <stdint.h>
#include <stdlib.h>

#include "epmoe/placement.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_placement *p = NULL;
    if (epm_placement_parse_json((const char *)data, size, "fuzz", &p) != EPM_OK) {
        if (p)
            abort(); /* a failure leaves no half-built object behind */
        return 0;
    }
    if (epm_placement_validate(p, epm_placement_max_slots(p)) != EPM_OK)
        abort();
    const int R = epm_placement_ranks(p);
    for (int l = 0; l < epm_placement_layers(p); l++)
        for (int32_t e = 0; e < epm_placement_experts(p); e++) {
            const int *r;
            int n = epm_placement_replicas(p, l, e, &r);
            for (int j = 0; j < n; j++)
                if (r[j] < 0 || r[j] >= R || (j && r[j] <= r[j - 1]))
                    abort();
            int dst = -1;
            epm_route_pick(p, l, &e, 1, (int)(e % R), (uint64_t)e * 7919u, &dst);
            if (dst < 0 || dst >= R || !epm_placement_has(p, l, e, dst))
                abort();
        }
    epm_placement_destroy(p);
    return 0;
}
