/* Fuzz target: cluster description JSON. */
#include <stdint.h>

#include "epmoe/cluster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_cluster c;
    if (epm_cluster_parse_json((const char *)data, size, "fuzz", &c) == EPM_OK)
        (void)epm_cluster_link_cost(&c, epm_cluster_link(&c, 0, epm_cluster_ranks(&c) - 1));
    return 0;
}
