/* Both communicator objects (the public epm_comm and the runtime's xcomm)
 * start the same way: MPI up if nobody started it, and a private duplicate of
 * the world whose errors come back as codes, so that each can agree on them
 * across ranks instead of MPI aborting the job. */
#ifndef EPM_COMM_MPI_WORLD_H
#define EPM_COMM_MPI_WORLD_H

#include <mpi.h>

#include "core.h"

/* MPI up (FUNNELED) unless it already is. */
epm_status epm_mpi_world_up(void);
epm_status epm_mpi_world_dup(MPI_Comm *comm, int *rank, int *size);

#endif
