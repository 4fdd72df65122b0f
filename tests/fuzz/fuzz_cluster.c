/* Fuzz target: cluster description JSON. An accepted cluster passes
 * epm_cluster_validate and gives finite, ordered link costs. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "epmoe/cluster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_cluster c;
    if (epm_cluster_parse_json((const char *)data, size, "fuzz", &c) != EPM_OK)
        return 0;
    if (epm_cluster_validate(&c) != EPM_OK)
        abort();
    int last = epm_cluster_ranks(&c) - 1;
    double cost = epm_cluster_link_cost(&c, epm_cluster_link(&c, 0, last));
    if (!isfinite(cost) || cost < 0 || epm_cluster_link_cost(&c, EPM_LINK_SELF) != 0)
        abort();
    if (epm_cluster_node_of(&c, last) != c.nodes - 1)
        abort();
    return 0;
}
