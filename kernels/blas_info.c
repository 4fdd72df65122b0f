/* The CPU BLAS in one line (blas_info.h says why). */
#include "blas_info.h"

#include <stdio.h>
#include <stdlib.h>

#include "epm_config.h"

#if EPM_HAVE_OPENBLAS
#include <cblas.h>
#endif

void epm_blas_describe(char *buf, size_t cap)
{
#if EPM_HAVE_OPENBLAS
    const char *config = openblas_get_config(), *forced = getenv("OPENBLAS_CORETYPE");
    if (forced && *forced)
        snprintf(buf, cap, "%s (OPENBLAS_CORETYPE=%s)", config ? config : "OpenBLAS", forced);
    else
        snprintf(buf, cap, "%s", config ? config : "OpenBLAS");
#else
    snprintf(buf, cap, "a CBLAS other than OpenBLAS (its kernels are not known)");
#endif
}
