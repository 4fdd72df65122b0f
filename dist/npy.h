/* NumPy .npy reader (internal): versions 1.0, 2.0 and 3.0, little-endian or
 * byte-order-free dtypes, C order. The header dict is parsed strictly; the
 * data must be exactly the bytes the shape and dtype need. */
#ifndef EPM_NPY_H
#define EPM_NPY_H

#include "core.h"
#include "epmoe/types.h"

enum { EPM_NPY_MAX_DIMS = 8 };

typedef struct epm_npy {
    epm_dtype dtype;
    int ndim;
    int64_t shape[EPM_NPY_MAX_DIMS];
    int64_t numel;
    const void *data; /* into the caller's buffer; may be unaligned */
    size_t data_bytes;
} epm_npy;

/* 1 when buf starts with the .npy magic. */
int epm_npy_is(const void *buf, size_t size);
/* Parses buf (kept alive by the caller); label names it in errors. */
epm_status epm_npy_parse(const void *buf, size_t size, const char *label, epm_npy *out);

#endif
