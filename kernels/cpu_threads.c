/* How many OpenMP threads a rank's CPU kernels take by default. OpenMP's
 * own default is every core the process may run on, which is right for one
 * process a machine and wrong for several: mpirun leaves ranks unbound when
 * they outnumber the cores (--oversubscribe) and binds them to a whole
 * socket beyond two, so each rank's team spans the cores the others' teams
 * span too, and OpenMP's spinning barriers then wait on threads that the
 * scheduler has parked. Measured here: decode of the tiny Mixtral, 8
 * sequences on 4 ranks of a 2-core machine, 271 tokens/s with each rank's
 * default of 2 threads, 11,544 with 1 (bench/README.md). torch.distributed's
 * launcher sets OMP_NUM_THREADS=1 for the same reason; a share of the
 * node's cores keeps a lone rank's threads. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "cpu_threads.h"
#include "cpu_omp.h"

int epm_cpu_threads_share(int ranks_here)
{
#ifdef _OPENMP
    const char *e = getenv("OMP_NUM_THREADS");
    if (e && *e) /* the user's choice, as OpenMP read it */
        return omp_get_max_threads();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    long may = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : online;
    long n = online / (ranks_here > 0 ? ranks_here : 1);
    n = n < may ? n : may;
    n = n < 1 ? 1 : n;
    omp_set_num_threads((int)n);
    return (int)n;
#else
    (void)ranks_here;
    return 1;
#endif
}
