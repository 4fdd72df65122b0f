/* How a rank waits for something only polling can see (an MPI request that
 * progresses inside MPI_Test, a CUDA stream whose NCCL peer may have died). */
#include <sched.h>
#include <time.h>

#include "core.h"

/* Poll again at once for the first 20 us, then yield until
 * EPM_BACKOFF_SPIN_S: the thing waited for usually completes within that,
 * and each poll then comes back at once (a fixed
 * 200 us sleep made every agreement of a 2-rank decode step cost that much
 * per reduction round: 153 decoded tokens/s instead of 7500 on the tiny
 * Mixtral). After it, sleep 10 us doubling to max_ns, so that a rank
 * waiting for a slow or stalled peer leaves the core to it. */
long epm_backoff(double waited, long nap_ns, long max_ns)
{
    if (waited < 20e-6)
        return 0; /* the peers are a few microseconds behind: poll again at once */
    if (waited < EPM_BACKOFF_SPIN_S) {
        sched_yield();
        return 0;
    }
    nap_ns = nap_ns ? nap_ns * 2 : 10000;
    nap_ns = nap_ns < max_ns ? nap_ns : max_ns;
    struct timespec ts = {0, nap_ns};
    nanosleep(&ts, NULL);
    return nap_ns;
}
