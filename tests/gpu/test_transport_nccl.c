/* The NCCL transport (ncclSend/ncclRecv between GPUs): one rank per GPU,
 * since NCCL refuses a duplicate GPU in one communicator. */
#define GT_TRANSPORT EPM_TRANSPORT_NCCL
#define GT_XA2A EPM_XA2A_NCCL
#define GT_FAULT_TESTS 1
#include "gpu_transport_suite.h"
