/* The JSON text of a value, shortened to fit buf (ending "..."), for the
 * error messages of the JSON readers, which name the value they refuse
 * (internal). "(?)" where jansson cannot print it. */
#ifndef EPM_JSON_SHOW_H
#define EPM_JSON_SHOW_H

#include <jansson.h>
#include <stddef.h>

const char *epm_json_show(json_t *v, char *buf, size_t cap);

#endif
