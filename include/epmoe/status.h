/* epmoe: status codes and error details.
 * Every fallible call returns epm_status (0 = EPM_OK). On failure a detail
 * message naming the file, field and value is kept per thread and read with
 * epm_last_error(). */
#ifndef EPMOE_STATUS_H
#define EPMOE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EPM_BUILDING_LIBRARY) && defined(__GNUC__)
#define EPM_API __attribute__((visibility("default")))
#else
#define EPM_API
#endif

typedef enum epm_status {
    EPM_OK = 0,
    EPM_ERR_INVALID_ARG,  /* a parameter or option is out of range */
    EPM_ERR_IO,           /* a file could not be opened, read or written */
    EPM_ERR_FORMAT,       /* a file's content is malformed */
    EPM_ERR_NOMEM,        /* an allocation failed */
    EPM_ERR_UNSUPPORTED,  /* valid input that this build cannot handle */
    EPM_ERR_MISMATCH,     /* inputs disagree (trace vs placement, ranks vs cluster) */
    EPM_ERR_SOLVER,       /* the ILP solver failed */
    EPM_ERR_MPI,          /* an MPI call failed */
    EPM_ERR_NCCL,         /* an NCCL call failed */
    EPM_ERR_CUDA,         /* a CUDA call failed */
    EPM_ERR_TIMEOUT,      /* a deadline passed */
    EPM_ERR_REMOTE,       /* another rank failed; the detail names it */
    EPM_ERR_INTERNAL,     /* a bug in epmoe */
    EPM_STATUS_COUNT
} epm_status;

/* Short fixed text for a status code ("invalid argument", ...). */
EPM_API const char *epm_status_str(epm_status s);

/* The detail of the last failure on this thread: names file, field and value.
 * Never NULL; empty when nothing failed. */
EPM_API const char *epm_last_error(void);

/* Clears the detail of the last failure on this thread. */
EPM_API void epm_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
