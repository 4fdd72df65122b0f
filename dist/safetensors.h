/* Safetensors reader and writer (internal). The reader validates the whole
 * header before anything is used: a bounded header, known dtypes, shapes whose
 * byte size matches data_offsets, offsets inside the file, no overlaps. */
#ifndef EPM_SAFETENSORS_H
#define EPM_SAFETENSORS_H

#include <stdio.h>

#include "core.h"
#include "epmoe/types.h"

enum { EPM_ST_MAX_DIMS = 8 };
/* A header larger than this is refused (the format's own reference reader
 * uses 100 MB). */
#define EPM_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct epm_st_tensor {
    char *name;
    epm_dtype dtype;
    int ndim;
    int64_t shape[EPM_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* byte offsets inside the data section */
    const void *data;    /* points into the mapping */
} epm_st_tensor;

typedef struct epm_safetensors {
    char *path;
    void *map;      /* whole file mapping (NULL when parsed from a caller's buffer) */
    size_t map_size;
    const uint8_t *data;
    size_t data_size;
    int count;
    epm_st_tensor *tensors;
} epm_safetensors;

/* Maps and validates a file. */
epm_status epm_st_open(const char *path, epm_safetensors **out);
/* Validates a buffer the caller keeps alive (fuzzing, tests). */
epm_status epm_st_parse(const void *buf, size_t size, const char *label, epm_safetensors **out);
void epm_st_close(epm_safetensors *st);
const epm_st_tensor *epm_st_find(const epm_safetensors *st, const char *name);

/* Typed lookup: the tensor must exist, have dtype and ndim dims; shape entries
 * >= 0 must match (negative = any). Errors name file, tensor and field. */
epm_status epm_st_expect(const epm_safetensors *st, const char *name, epm_dtype dtype, int ndim,
                         const int64_t *shape, const epm_st_tensor **out);

/* Writer: collects tensors (borrowed pointers), then writes atomically. */
typedef struct epm_st_writer epm_st_writer;
epm_status epm_st_writer_create(epm_st_writer **out);
epm_status epm_st_writer_add(epm_st_writer *w, const char *name, epm_dtype dtype, int ndim,
                             const int64_t *shape, const void *data);
epm_status epm_st_writer_save(epm_st_writer *w, const char *path);
void epm_st_writer_destroy(epm_st_writer *w);

/* Tells the kernel that the mapped bytes p[0..bytes) of an open file are
 * not needed for now (their whole pages leave this process's resident set;
 * reading them again faults them back in from the file): online
 * rebalancing's dropped experts. p must lie in a file's read-only mapping
 * (anonymous memory would lose its contents). */
void epm_st_unneeded(const void *p, size_t bytes);
/* Asks the kernel to read a mapped range ahead, in the background (online
 * rebalancing's experts, fetched while passes run under the old placement). */
void epm_st_willneed(const void *p, size_t bytes);

#endif
