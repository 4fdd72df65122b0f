/* The trace object's layout, shared by the files of placement/ that build it. */
#ifndef EPM_TRACE_INTERNAL_H
#define EPM_TRACE_INTERNAL_H

#include "core.h"
#include "epmoe/trace.h"

struct epm_trace {
    int layers, k, experts;
    int64_t tokens;
    int32_t *ids;      /* [layers][tokens][k] */
    float *weights;    /* [layers][tokens][k] or NULL */
    int32_t *seq_ids;  /* [tokens] or NULL */
    int32_t *pass_ids; /* [tokens] or NULL */
};

/* Checks every id is -1 or in [0, experts), -1 only trailing within a row, no
 * expert twice in a row. label names the source in errors. */
epm_status epm_trace_check_ids(const epm_trace *t, const char *label);

/* The distinct pass ids >= 0, sorted: *ids (epm_malloc'd, NULL when none) and
 * their count. */
epm_status epm_trace_pass_list(const epm_trace *t, int32_t **ids, int64_t *n);

#endif
