/* epmoe: element types shared by traces, models and kernels. */
#ifndef EPMOE_TYPES_H
#define EPMOE_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum epm_dtype {
    EPM_DTYPE_F32,
    EPM_DTYPE_F16,
    EPM_DTYPE_BF16,
    EPM_DTYPE_F64,
    EPM_DTYPE_I8,
    EPM_DTYPE_U8,
    EPM_DTYPE_I16,
    EPM_DTYPE_I32,
    EPM_DTYPE_I64,
    EPM_DTYPE_BOOL,
    EPM_DTYPE_F8_E4M3, /* float8 e4m3fn: no infinities, 0x7f/0xff are NaN */
    EPM_DTYPE_F8_E5M2,
    EPM_DTYPE_COUNT
} epm_dtype;

/* Bytes per element. */
EPM_API size_t epm_dtype_size(epm_dtype t);
/* Safetensors spelling ("F32", "BF16", ...). */
EPM_API const char *epm_dtype_name(epm_dtype t);

/* Where a token's hidden state lives between MoE layers (see DESIGN.md). */
typedef enum epm_mode {
    EPM_MODE_HOME = 0,   /* back to the sequence's home rank after each layer */
    EPM_MODE_FOLLOW = 1  /* stays on the rank of its top-1 expert replica */
} epm_mode;

EPM_API const char *epm_mode_name(epm_mode m);
EPM_API epm_status epm_mode_parse(const char *s, epm_mode *out);

#ifdef __cplusplus
}
#endif
#endif
