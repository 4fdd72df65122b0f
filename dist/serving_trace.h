/* Production serving traces (internal): when each request arrived and how
 * many prompt and output tokens it had, as the public traces that serving
 * papers replay publish them (Splitwise's and DynamoLLM's Azure LLM
 * inference traces; BurstGPT). Both are CSV with a header row:
 *   Azure:    TIMESTAMP,ContextTokens,GeneratedTokens
 *             (TIMESTAMP as "2023-11-16 18:15:46.6805900", optionally with
 *             a UTC offset such as "+00:00", or seconds)
 *   BurstGPT: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
 *             (Timestamp in seconds from the trace's start)
 * Columns are found by name (any case, any order, others ignored). Or JSON
 * lines as Mooncake's traces (FAST '25):
 *   {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}
 *   (timestamp in milliseconds; hash_ids name each 512-token block of the
 *   prompt, equal where prompts share a prefix; other keys ignored)
 * A request with no prompt or no output tokens (BurstGPT's failed requests)
 * is left out and counted; rows out of time order are sorted, stably. */
#ifndef EPM_SERVING_TRACE_H
#define EPM_SERVING_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

typedef struct epm_serving_trace {
    int64_t n;            /* requests kept, in arrival order */
    double *arrival;      /* [n] seconds after the first kept request, nondecreasing */
    int32_t *prompt_len;  /* [n] >= 1 */
    int32_t *output_len;  /* [n] >= 1 */
    int64_t rows;         /* data rows read */
    int64_t skipped;      /* rows left out: no prompt or no output tokens */
    int reordered;        /* the rows were not in time order */
    const char *format;   /* "Azure LLM inference trace", "BurstGPT" or "Mooncake trace" */
    int64_t *hash_off;    /* [n + 1] Mooncake's: request i's block hashes are hash_ids[hash_off[i],
                             hash_off[i + 1]); NULL for the CSV traces */
    int64_t *hash_ids;
} epm_serving_trace;

enum { EPM_TRACE_HASH_BLOCK = 512 }; /* prompt tokens a Mooncake hash id names */

/* label names the text in error messages (its file). */
epm_status epm_serving_trace_parse(const char *text, size_t len, const char *label, epm_serving_trace **out);
epm_status epm_serving_trace_load(const char *path, epm_serving_trace **out);
void epm_serving_trace_destroy(epm_serving_trace *t);

/* Whether path names such a trace: a .csv file, or a file whose first line
 * is a JSON object with "timestamp" and "input_length" (Mooncake's; a
 * request list has neither). What epmoe's inputs take it by. */
int epm_serving_trace_is(const char *path);

#endif
