#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* Counters are atomic because comm and kernels may allocate from threads. */
static atomic_uint_fast64_t alloc_count;
static atomic_uint_fast64_t fail_at;

void epm_fault_fail_nth_alloc(uint64_t n)
{
    atomic_store(&alloc_count, 0);
    atomic_store(&fail_at, n);
}

uint64_t epm_fault_alloc_count(void) { return atomic_load(&alloc_count); }

static int injected_failure(void)
{
    uint64_t n = atomic_fetch_add(&alloc_count, 1) + 1;
    uint64_t f = atomic_load(&fail_at);
    return f != 0 && n == f;
}

void *epm_malloc(size_t size)
{
    void *p = injected_failure() ? NULL : malloc(size ? size : 1);
    if (!p)
        epm_fail(EPM_ERR_NOMEM, "allocation of %zu bytes failed", size);
    return p;
}

void *epm_calloc(size_t n, size_t size)
{
    size_t total;
    if (!epm_mul_ok(n, size, &total)) {
        epm_fail(EPM_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = injected_failure() ? NULL : calloc(total ? total : 1, 1);
    if (!p)
        epm_fail(EPM_ERR_NOMEM, "allocation of %zu bytes failed", total);
    return p;
}

void *epm_realloc(void *old, size_t size)
{
    void *p = injected_failure() ? NULL : realloc(old, size ? size : 1);
    if (!p)
        epm_fail(EPM_ERR_NOMEM, "allocation of %zu bytes failed", size);
    return p;
}

void epm_free(void *p) { free(p); }

char *epm_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = epm_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int epm_mul_ok(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}
