#include "json_show.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *epm_json_show(json_t *v, char *buf, size_t cap)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!s)
        snprintf(buf, cap, "(?)");
    else if (strlen(s) >= cap && cap > 4)
        snprintf(buf, cap, "%.*s...", (int)cap - 4, s);
    else
        snprintf(buf, cap, "%s", s);
    free(s); /* jansson's allocation */
    return buf;
}
