/* The single-process allocation-failure sweep (dav1d's habit), shared by the
 * unit sweeps: for n = 1, 2, 3, ... the n-th allocation through epm_malloc /
 * calloc / realloc fails, until a call never reaches the n-th allocation.
 * Every failure must return EPM_ERR_NOMEM with a detail naming the
 * allocation, and hold no memory afterwards (live heap bytes before ==
 * after, live_bytes.h); a call that reached the n-th allocation and still
 * succeeded swallowed the failure. Include after cmocka (test_util.h). */
#ifndef EPM_ALLOC_SWEEP_H
#define EPM_ALLOC_SWEEP_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "live_bytes.h"

typedef epm_status (*tu_sweep_fn)(void *ctx);

/* Runs fn once to warm caches (it must succeed), then sweeps; returns the
 * allocation points that failed cleanly. what names the call in messages. */
static inline uint64_t tu_alloc_sweep(const char *what, tu_sweep_fn fn, void *ctx)
{
    assert_int_equal(fn(ctx), EPM_OK); /* warm: anything cached once is cached now */
    uint64_t n = 1;
    for (;; n++) {
        size_t before, after;
        uint64_t made;
        epm_status st;
        /* twice when memory is still held after the first: the C library
         * keeps a few one-time buffers of its own (glibc's count only) */
        for (int again = 0; again < 2; again++) {
            before = tu_live_bytes();
            epm_fault_fail_nth_alloc(n);
            st = fn(ctx);
            made = epm_fault_alloc_count();
            epm_fault_fail_nth_alloc(0);
            after = tu_live_bytes();
            if (after == before)
                break;
        }
        if (after != before)
            fprintf(stderr, "%s: allocation %llu failed: %lld bytes still held\n", what, (unsigned long long)n,
                    (long long)after - (long long)before);
        assert_int_equal(after, before);
        if (st == EPM_OK) {
            if (made >= n)
                fprintf(stderr, "%s: allocation %llu failed and the call still succeeded\n", what,
                        (unsigned long long)n);
            assert_true(made < n);
            return n - 1;
        }
        if (st != EPM_ERR_NOMEM)
            fprintf(stderr, "%s: allocation %llu: %s: %s\n", what, (unsigned long long)n, epm_status_str(st),
                    epm_last_error());
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_non_null(strstr(epm_last_error(), "allocation"));
        epm_clear_error();
    }
}

#endif
