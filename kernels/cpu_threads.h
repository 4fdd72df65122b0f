/* The CPU kernels' thread count for a rank (internal; cpu_threads.c says why). */
#ifndef EPM_KERNELS_CPU_THREADS_H
#define EPM_KERNELS_CPU_THREADS_H

/* Unless OMP_NUM_THREADS is set: OpenMP's threads for this process become
 * its share of the machine's cores when ranks_here ranks run on it (at most
 * the cores it may run on, at least 1). Returns the threads the kernels now
 * take (1 without OpenMP). */
int epm_cpu_threads_share(int ranks_here);

#endif
