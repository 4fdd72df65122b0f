/* The staged transport (device rows through pinned host memory, then MPI):
 * run alone or under mpirun with several ranks on one GPU. */
#define GT_TRANSPORT EPM_TRANSPORT_STAGED
#define GT_XA2A EPM_XA2A_STAGED
#include "gpu_transport_suite.h"
