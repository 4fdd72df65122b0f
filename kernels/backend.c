/* Backend selection by name: the one place that knows which backends exist. */
#include <string.h>

#include "backend.h"
#include "core.h"
#include "cpu_gemm_nt.h"

epm_status epm_kernels_create(const char *name, epm_kernels **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "kernels: out is NULL");
    *out = NULL;
    if (!name)
        return epm_fail(EPM_ERR_INVALID_ARG, "kernels: backend name is NULL");
    int want_cuda = !strcmp(name, "cuda") || (!strcmp(name, "auto") && epm_kernels_cuda_devices() > 0);
    if (!want_cuda && strcmp(name, "ref") && strcmp(name, "cpu") && strcmp(name, "auto"))
        return epm_fail(EPM_ERR_INVALID_ARG, "kernels: backend '%s' is not one of ref, cpu, cuda, auto", name);
    if (!want_cuda && strcmp(name, "ref")) { /* a bad EPM_CPU_ISA fails here, not silently later */
        epm_cpu_isa isa;
        EPM_CHECK(epm_cpu_isa_from_env(&isa));
    }
    epm_kernels *kb = epm_calloc(1, sizeof *kb);
    if (!kb)
        return epm_fail(EPM_ERR_NOMEM, "kernels: backend '%s'", name);
    if (want_cuda) {
        epm_status st = epm_kernels_cuda_open(kb);
        if (st != EPM_OK) {
            epm_free(kb);
            return st;
        }
    } else if (!strcmp(name, "ref")) {
        kb->name = "ref", kb->ops = epm_kernels_ref_ops(), kb->host_memory = 1;
    } else {
        kb->name = "cpu", kb->ops = epm_kernels_cpu_ops(), kb->host_memory = 1;
    }
    *out = kb;
    return EPM_OK;
}

void epm_kernels_destroy(epm_kernels *kb)
{
    if (!kb)
        return;
    if (kb->release)
        kb->release(kb->ctx);
    epm_free(kb);
}

const char *epm_kernels_name(const epm_kernels *kb) { return kb ? kb->name : "(none)"; }

const epm_kernel_ops *epm_kernels_ops(const epm_kernels *kb) { return kb ? kb->ops : NULL; }

int epm_kernels_host_memory(const epm_kernels *kb) { return kb ? kb->host_memory : 0; }
