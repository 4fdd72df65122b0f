#include "mpi_world.h"

epm_status epm_mpi_world_up(void)
{
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        /* FUNNELED: only the main thread calls MPI; BLAS and CUDA threads never do */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return epm_fail(EPM_ERR_MPI, "MPI_Init_thread failed");
    }
    return EPM_OK;
}

epm_status epm_mpi_world_dup(MPI_Comm *comm, int *rank, int *size)
{
    EPM_CHECK(epm_mpi_world_up());
    if (MPI_Comm_dup(MPI_COMM_WORLD, comm) != MPI_SUCCESS)
        return epm_fail(EPM_ERR_MPI, "MPI_Comm_dup(MPI_COMM_WORLD) failed");
    MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(*comm, rank);
    MPI_Comm_size(*comm, size);
    return EPM_OK;
}
