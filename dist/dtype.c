#include <string.h>

#include "core.h"
#include "epmoe/types.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[EPM_DTYPE_COUNT] = {
    [EPM_DTYPE_F32] = {"F32", 4}, [EPM_DTYPE_F16] = {"F16", 2}, [EPM_DTYPE_BF16] = {"BF16", 2},
    [EPM_DTYPE_F64] = {"F64", 8}, [EPM_DTYPE_I8] = {"I8", 1},   [EPM_DTYPE_U8] = {"U8", 1},
    [EPM_DTYPE_I16] = {"I16", 2}, [EPM_DTYPE_I32] = {"I32", 4}, [EPM_DTYPE_I64] = {"I64", 8},
    [EPM_DTYPE_BOOL] = {"BOOL", 1}, [EPM_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [EPM_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

size_t epm_dtype_size(epm_dtype t) { return (unsigned)t < EPM_DTYPE_COUNT ? dtypes[t].size : 0; }

const char *epm_dtype_name(epm_dtype t)
{
    return (unsigned)t < EPM_DTYPE_COUNT ? dtypes[t].name : "?";
}

const char *epm_mode_name(epm_mode m) { return m == EPM_MODE_FOLLOW ? "follow" : "home"; }

epm_status epm_mode_parse(const char *s, epm_mode *out)
{
    if (s && strcmp(s, "home") == 0)
        *out = EPM_MODE_HOME;
    else if (s && strcmp(s, "follow") == 0)
        *out = EPM_MODE_FOLLOW;
    else
        return epm_fail(EPM_ERR_INVALID_ARG, "mode '%s' is not one of: home, follow", s ? s : "(null)");
    return EPM_OK;
}
