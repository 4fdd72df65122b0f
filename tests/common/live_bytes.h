/* Bytes the process holds on the heap right now: AddressSanitizer's own count
 * under ASan, glibc's mallinfo2() otherwise. dist/alloc.c counts allocations
 * made but not live ones, and LeakSanitizer is off under mpirun (Open MPI's
 * unloaded components look like leaks), so the allocation-failure sweeps
 * compare this before and after each failed call. */
#ifndef EPM_LIVE_BYTES_H
#define EPM_LIVE_BYTES_H

#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* provided by the sanitizer runtime when there is one */
size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));
int __lsan_do_recoverable_leak_check(void) __attribute__((weak));
void __lsan_disable(void) __attribute__((weak));
void __lsan_enable(void) __attribute__((weak));

/* Allocations this thread makes between the two are never reported as leaks
 * (for MPI_Init: components it opens and closes again keep a few bytes that
 * no suppression can name once they are unloaded). */
static inline void tu_leaks_ignore_begin(void)
{
    if (__lsan_disable)
        __lsan_disable();
}
static inline void tu_leaks_ignore_end(void)
{
    if (__lsan_enable)
        __lsan_enable();
}

/* glibc's per-thread caches (tcache) keep freed blocks that mallinfo2 still
 * counts as in use, so without ASan the program runs again with them off.
 * Call first thing in main(). */
static inline void tu_live_bytes_setup(char **argv)
{
    if (__sanitizer_get_current_allocated_bytes)
        return;
    const char *t = getenv("GLIBC_TUNABLES");
    if (t && strstr(t, "glibc.malloc.tcache_count=0"))
        return;
    char v[1024];
    snprintf(v, sizeof v, "%s%sglibc.malloc.tcache_count=0", t ? t : "", t ? ":" : "");
    setenv("GLIBC_TUNABLES", v, 1);
    execv("/proc/self/exe", argv); /* returns only on failure: then differences may be spurious */
    perror("execv /proc/self/exe");
}

static inline size_t tu_live_bytes(void)
{
    if (__sanitizer_get_current_allocated_bytes)
        return __sanitizer_get_current_allocated_bytes();
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* LeakSanitizer now, while every library is still loaded (its suppressions can
 * name them); 0 without LeakSanitizer or when it found nothing. */
static inline int tu_leak_check(void)
{
    return __lsan_do_recoverable_leak_check ? __lsan_do_recoverable_leak_check() : 0;
}

#endif
