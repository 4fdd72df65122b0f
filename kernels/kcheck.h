/* Argument checks shared by the kernel entry points (internal): each failure
 * names the kernel, the argument and its value. */
#ifndef EPM_KCHECK_H
#define EPM_KCHECK_H

#include <stdint.h>

#include "core.h"

#define KREQ(cond, ...)                                          \
    do {                                                         \
        if (!(cond))                                             \
            return epm_fail(EPM_ERR_INVALID_ARG, __VA_ARGS__);   \
    } while (0)

/* A pointer may be NULL only when it addresses nothing. */
#define KPTR(fn, p, count) KREQ((p) != NULL || (count) == 0, "%s: %s is NULL", fn, #p)

/* offsets[0] = 0 and non-decreasing over experts + 1 entries. */
epm_status epm_ref_check_offsets(const char *fn, const int64_t *offsets, int experts);

/* The arguments of epm_ref_attention's contract (every host attention
 * kernel takes them), each failure naming fn. */
epm_status epm_attention_check(const char *fn, const float *q, int64_t n, const int32_t *pos, const void *kc,
                               const void *vc, int64_t cache_len, int heads, int kv_heads, int hd,
                               const float *out);

#endif
