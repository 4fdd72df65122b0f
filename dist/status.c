#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

enum { EPM_DETAIL_MAX = 1024 };
static _Thread_local char detail[EPM_DETAIL_MAX];

static const char *const names[EPM_STATUS_COUNT] = {
    [EPM_OK] = "ok",
    [EPM_ERR_INVALID_ARG] = "invalid argument",
    [EPM_ERR_IO] = "I/O error",
    [EPM_ERR_FORMAT] = "malformed input",
    [EPM_ERR_NOMEM] = "out of memory",
    [EPM_ERR_UNSUPPORTED] = "unsupported",
    [EPM_ERR_MISMATCH] = "inputs do not match",
    [EPM_ERR_SOLVER] = "solver failure",
    [EPM_ERR_MPI] = "MPI error",
    [EPM_ERR_NCCL] = "NCCL error",
    [EPM_ERR_CUDA] = "CUDA error",
    [EPM_ERR_TIMEOUT] = "timeout",
    [EPM_ERR_REMOTE] = "another rank failed",
    [EPM_ERR_INTERNAL] = "internal error",
};

const char *epm_status_str(epm_status s)
{
    if ((unsigned)s >= EPM_STATUS_COUNT)
        return "unknown status";
    return names[s];
}

const char *epm_last_error(void) { return detail; }

void epm_clear_error(void) { detail[0] = '\0'; }

epm_status epm_fail(epm_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return s;
}

epm_status epm_fail_context(epm_status s, const char *fmt, ...)
{
    char prev[EPM_DETAIL_MAX];
    char ctx[EPM_DETAIL_MAX];
    va_list ap;
    memcpy(prev, detail, sizeof prev);
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    /* truncation of an over-long detail is acceptable; the start names the file */
    size_t n = strlen(ctx);
    if (n > sizeof detail - 3)
        n = sizeof detail - 3;
    memcpy(detail, ctx, n);
    memcpy(detail + n, ": ", 2);
    size_t m = strlen(prev);
    if (m > sizeof detail - n - 3)
        m = sizeof detail - n - 3;
    memcpy(detail + n + 2, prev, m);
    detail[n + 2 + m] = '\0';
    return s;
}

const char *epm_text_shown(const char *s, size_t n, char buf[64])
{
    size_t m = n < 48 ? n : 48, j = 0;
    for (size_t i = 0; i < m; i++)
        buf[j++] = isprint((unsigned char)s[i]) ? s[i] : '?';
    if (m < n) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = 0;
    return buf;
}
