/* Internal helpers shared by every part of libepmoe (not installed). */
#ifndef EPM_CORE_H
#define EPM_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#if defined(__GNUC__)
#define EPM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define EPM_PRINTF(a, b)
#endif

/* Records a detail message for this thread and returns s, so that
 * `return epm_fail(EPM_ERR_FORMAT, "%s: tensor '%s' ...", path, name);` reads well. */
epm_status epm_fail(epm_status s, const char *fmt, ...) EPM_PRINTF(2, 3);

/* Prepends context ("while loading X: ") to the current detail message. */
epm_status epm_fail_context(epm_status s, const char *fmt, ...) EPM_PRINTF(2, 3);

/* n bytes of s fit for an error message: printable (others '?'), at most
 * 48 and "..." after; buf holds 64. */
const char *epm_text_shown(const char *s, size_t n, char buf[64]);

#define EPM_CHECK(expr)                         \
    do {                                        \
        epm_status epm_check_s_ = (expr);       \
        if (epm_check_s_ != EPM_OK)             \
            return epm_check_s_;                \
    } while (0)

#define EPM_CHECK_GOTO(expr, st, label)         \
    do {                                        \
        (st) = (expr);                          \
        if ((st) != EPM_OK)                     \
            goto label;                         \
    } while (0)

/* Allocation goes through these so that tests can make the n-th one fail
 * (dav1d's habit). They set the error detail on failure. */
void *epm_malloc(size_t size);
void *epm_calloc(size_t n, size_t size);
void *epm_realloc(void *p, size_t size);
void epm_free(void *p);
char *epm_strdup(const char *s);

/* n * size with overflow check; returns 0 on overflow. */
int epm_mul_ok(size_t a, size_t b, size_t *out);

/* Fault injection: fail the n-th allocation from now (1-based); 0 disables.
 * Returns how many allocations were made since the last call. */
void epm_fault_fail_nth_alloc(uint64_t n);
uint64_t epm_fault_alloc_count(void);

/* Whole-file helpers. epm_read_file reads at most max_bytes (error beyond). */
epm_status epm_read_file(const char *path, size_t max_bytes, char **data, size_t *size);

/* Writes through produce(ctx, FILE *) to "path.tmp.<pid>", then fsyncs and
 * renames over path, so a reader sees either the old file or the complete new
 * one, never a truncated one. */
typedef epm_status (*epm_produce_fn)(void *ctx, void *file);
epm_status epm_write_atomic(const char *path, epm_produce_fn produce, void *ctx);
/* fwrite that reports a short write as EPM_ERR_IO naming path. */
epm_status epm_file_write(void *file, const char *path, const void *buf, size_t n);

/* 1 when a and b name the same existing file (same device and inode). */
int epm_same_file(const char *a, const char *b);

/* Monotonic clock in seconds. */
double epm_now(void);

/* One pause of a polling wait that has lasted `waited` seconds: none for
 * 20 us, a yield until EPM_BACKOFF_SPIN_S, then sleeps growing from 10 us
 * to max_ns (a wait overshoots its event by at most that much).
 * nap_ns: what the previous call returned (0 at first); returns the next. */
#define EPM_BACKOFF_SPIN_S 2e-3
long epm_backoff(double waited, long nap_ns, long max_ns);

/* splitmix64: small, fast, deterministic across platforms. */
static inline uint64_t epm_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline double epm_rand_unit(uint64_t *state)
{
    return (double)(epm_splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
