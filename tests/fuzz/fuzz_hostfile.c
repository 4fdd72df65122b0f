/* Fuzz target: Open MPI hostfiles and --hosts lists (the same bytes as both). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/launch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const epm_hostlist *h)
{
    long total = 0;
    for (int i = 0; i < epm_hostlist_count(h); i++) {
        if (!epm_hostlist_name(h, i)[0] || !epm_hostlist_spec(h, i)[0])
            abort();
        if (epm_hostlist_max_slots(h, i) && epm_hostlist_slots(h, i) > epm_hostlist_max_slots(h, i))
            abort();
        total += epm_hostlist_slots(h, i);
    }
    long t = epm_hostlist_total_slots(h);
    if (t != -1 && t != total)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epm_hostlist *h = NULL;
    if (epm_hostfile_parse((const char *)data, size, "fuzz", &h) == EPM_OK)
        walk(h);
    epm_hostlist_destroy(h);
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = 0;
    h = NULL;
    if (epm_hosts_parse(s, &h) == EPM_OK)
        walk(h);
    epm_hostlist_destroy(h);
    free(s);
    return 0;
}
