/* Fuzz target: placement JSON. */
#include <stdint.h>

#include "epmoe/placement.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_placement *p = NULL;
    if (epm_placement_parse_json((const char *)data, size, "fuzz", &p) == EPM_OK) {
        (void)epm_placement_validate(p, 0);
        (void)epm_placement_max_slots(p);
        epm_placement_destroy(p);
    }
    return 0;
}
