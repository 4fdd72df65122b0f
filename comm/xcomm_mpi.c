#include <limits.h>
#include <mpi.h>
#include <time.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "epm_config.h"
#include "hier_route.h"
#include "mpi_world.h"
#include "xcomm_internal.h"

epm_status epm_xcomm_mpi_err(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return epm_fail(EPM_ERR_MPI, "%s failed: %s", what, msg);
}

#define MPI_TRY(call)                                   \
    do {                                                \
        int rc_ = (call);                               \
        if (rc_ != MPI_SUCCESS)                         \
            return epm_xcomm_mpi_err(rc_, #call);       \
    } while (0)

static const char *const a2a_names[] = {"alltoallv", "p2p", "staged", "nccl"};

void epm_xcomm_opts_init(epm_xcomm_opts *o)
{
    memset(o, 0, sizeof *o);
    o->a2a = EPM_XA2A_ALLTOALLV;
    o->hier = EPM_XHIER_AUTO;
}

const char *epm_xcomm_a2a_name(epm_xcomm_a2a a)
{
    return (unsigned)a < sizeof a2a_names / sizeof *a2a_names ? a2a_names[a] : "?";
}

epm_status epm_xcomm_a2a_parse(const char *s, epm_xcomm_a2a *out)
{
    for (int i = 0; i < (int)(sizeof a2a_names / sizeof *a2a_names); i++)
        if (!strcmp(s, a2a_names[i])) {
            *out = (epm_xcomm_a2a)i;
            return EPM_OK;
        }
    return epm_fail(EPM_ERR_INVALID_ARG, "EPM_A2A: '%s' is not alltoallv, p2p, staged or nccl", s);
}

epm_status epm_xcomm_hier_parse(const char *s, epm_xcomm_hier *out)
{
    if (!strcmp(s, "auto"))
        *out = EPM_XHIER_AUTO;
    else if (!strcmp(s, "on"))
        *out = EPM_XHIER_ON;
    else if (!strcmp(s, "off"))
        *out = EPM_XHIER_OFF;
    else
        return epm_fail(EPM_ERR_INVALID_ARG, "EPM_A2A_HIER: '%s' is not auto, on or off", s);
    return EPM_OK;
}

epm_status epm_xcomm_opts_from_env(epm_xcomm_opts *o)
{
    const char *a = getenv("EPM_A2A"), *h = getenv("EPM_A2A_HIER");
    if (a && *a)
        EPM_CHECK(epm_xcomm_a2a_parse(a, &o->a2a));
    if (h && *h)
        EPM_CHECK(epm_xcomm_hier_parse(h, &o->hier));
    return EPM_OK;
}

epm_status epm_xcomm_opts_resolve(epm_xcomm_opts *o, const char *a2a, const char *hier)
{
    const char *ea = getenv("EPM_A2A"), *eh = getenv("EPM_A2A_HIER");
    if (a2a && epm_xcomm_a2a_parse(a2a, &o->a2a) != EPM_OK)
        return epm_fail(EPM_ERR_INVALID_ARG, "--a2a '%s': expected alltoallv, p2p, staged or nccl", a2a);
    if (!a2a && ea && *ea)
        EPM_CHECK(epm_xcomm_a2a_parse(ea, &o->a2a));
    if (hier && epm_xcomm_hier_parse(hier, &o->hier) != EPM_OK)
        return epm_fail(EPM_ERR_INVALID_ARG, "--hier '%s': expected auto, on or off", hier);
    if (!hier && eh && *eh)
        EPM_CHECK(epm_xcomm_hier_parse(eh, &o->hier));
    return EPM_OK;
}

/* The transport table behind exchange. */
static epm_status make_transport(epm_xcomm *x)
{
    int local = x->rank % x->per_node;
    switch (x->a2a) {
    case EPM_XA2A_ALLTOALLV:
        return epm_transport_alltoallv_create(&x->comm, x->rank, x->size, &x->tr);
    case EPM_XA2A_P2P:
        return epm_transport_mpi_create(&x->comm, x->rank, x->size, &x->tr);
    case EPM_XA2A_STAGED:
#if EPM_HAVE_CUDA
        return epm_transport_staged_create(&x->comm, x->rank, x->size, local, &x->tr);
#else
        return epm_fail(EPM_ERR_UNSUPPORTED, "the staged transport (--a2a, EPM_A2A): this build has no CUDA");
#endif
    case EPM_XA2A_NCCL:
#if EPM_HAVE_NCCL
        return epm_transport_nccl_create(&x->comm, x->rank, x->size, local, &x->tr);
#else
        return epm_fail(EPM_ERR_UNSUPPORTED, "the nccl transport (--a2a, EPM_A2A): this build has no NCCL");
#endif
    }
    (void)local;
    return epm_fail(EPM_ERR_INVALID_ARG, "xcomm options: a2a %d is not a transport", (int)x->a2a);
}

epm_status epm_xcomm_create(int virtual_nodes, epm_xcomm **out)
{
    epm_xcomm_opts o;
    epm_xcomm_opts_init(&o);
    o.virtual_nodes = virtual_nodes;
    *out = NULL;
    EPM_CHECK(epm_xcomm_opts_from_env(&o));
    return epm_xcomm_create_opts(&o, out);
}

epm_status epm_xcomm_world(int *rank, int *size)
{
    *rank = 0;
    *size = 1;
    EPM_CHECK(epm_mpi_world_up());
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return EPM_OK;
}

epm_status epm_xcomm_create_opts(const epm_xcomm_opts *o, epm_xcomm **out)
{
    epm_xcomm_opts def;
    epm_xcomm_opts_init(&def);
    if (!o)
        o = &def;
    int virtual_nodes = o->virtual_nodes;
    *out = NULL;
    if ((unsigned)o->a2a > EPM_XA2A_NCCL)
        return epm_fail(EPM_ERR_INVALID_ARG, "xcomm options: a2a %d is not a transport", (int)o->a2a);
    if ((unsigned)o->hier > EPM_XHIER_OFF)
        return epm_fail(EPM_ERR_INVALID_ARG, "xcomm options: hier %d is not auto, on or off", (int)o->hier);
    /* the communicator first, then this rank's memory, then one agreement:
     * a rank that cannot allocate must not leave the others in a collective */
    MPI_Comm comm;
    int me = 0, size = 1;
    EPM_CHECK(epm_mpi_world_dup(&comm, &me, &size));
    epm_xcomm *x = epm_calloc(1, sizeof *x);
    int *node_of = epm_malloc((size_t)size * sizeof *node_of);
    int *leads = epm_malloc((size_t)size * sizeof *leads);
    int64_t *poison = epm_malloc(8 * (size_t)size * sizeof *poison);
    /* a hop's rows ride with its counts (decode's exchanges), beside 32-byte headers */
    const size_t emax = epm_ride_max(size);
    const size_t eslots = (size_t)size * (EPM_XCOMM_EHDR + emax);
    char *esend = epm_malloc(eslots), *erecv = epm_malloc(eslots);
    MPI_Request *ereq = epm_malloc(2 * (size_t)size * sizeof *ereq);
    MPI_Status *estat = epm_malloc((size_t)size * sizeof *estat);
    int ok = x && node_of && leads && poison && esend && erecv && ereq && estat, first = ok ? size : me;
    MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm);
    MPI_Comm ctl = MPI_COMM_NULL;
    if (first == size && MPI_Comm_dup(comm, &ctl) != MPI_SUCCESS)
        first = -1; /* (a failed dup is collective: every rank sees it) */
    if (first < size) {
        epm_free(x);
        epm_free(node_of);
        epm_free(leads);
        epm_free(poison);
        epm_free(esend);
        epm_free(erecv);
        epm_free(ereq);
        epm_free(estat);
        MPI_Comm_free(&comm);
        if (first < 0)
            return epm_fail(EPM_ERR_MPI, "MPI_Comm_dup of the exchanges' communicator failed");
        if (first == me) {
            char why[512];
            snprintf(why, sizeof why, "%s", epm_last_error());
            return epm_fail(EPM_ERR_NOMEM, "rank %d: %s (its communicator state)", me, why);
        }
        return epm_fail(EPM_ERR_REMOTE, "rank %d could not allocate its communicator state", first);
    }
    x->comm = comm;
    x->rank = me;
    x->size = size;
    x->node_of = node_of;
    x->poison = poison;
    MPI_Comm_set_errhandler(ctl, MPI_ERRORS_RETURN);
    x->ctl = ctl;
    x->emax = emax;
    x->esend = esend;
    x->erecv = erecv;
    x->ereq = ereq;
    x->estat = estat;
    epm_status st = EPM_OK;
    /* the ranks on this machine (they share its cores, whatever nodes are
     * pretended), and without virtual nodes the nodes themselves */
    MPI_Comm shm;
    int lead = x->rank;
    MPI_Comm_split_type(x->comm, MPI_COMM_TYPE_SHARED, x->rank, MPI_INFO_NULL, &shm);
    MPI_Comm_size(shm, &x->local_ranks);
    if (virtual_nodes <= 0)
        MPI_Allreduce(MPI_IN_PLACE, &lead, 1, MPI_INT, MPI_MIN, shm);
    MPI_Comm_free(&shm);
    if (virtual_nodes > 0) {
        if (x->size % virtual_nodes)
            st = epm_fail(EPM_ERR_INVALID_ARG, "--virtual-nodes %d does not divide the %d ranks", virtual_nodes,
                          x->size);
        for (int r = 0; r < x->size && st == EPM_OK; r++)
            x->node_of[r] = r / (x->size / virtual_nodes);
    } else {
        /* real nodes: the shared-memory split, numbered by their lowest rank */
        MPI_Allgather(&lead, 1, MPI_INT, leads, 1, MPI_INT, x->comm);
        /* node id = how many node leaders come before this rank's leader */
        for (int r = 0; r < x->size; r++) {
            int id = 0;
            for (int q = 0; q < leads[r]; q++)
                id += leads[q] == q;
            x->node_of[r] = id;
        }
    }
    epm_free(leads);
    if (st == EPM_OK) {
        x->nodes = x->node_of[x->size - 1] + 1;
        x->per_node = x->size / x->nodes;
        for (int r = 0; r < x->size && st == EPM_OK; r++)
            if (x->node_of[r] != r / x->per_node)
                st = epm_fail(EPM_ERR_MISMATCH,
                              "rank %d is on node %d by MPI's shared-memory split (%d nodes) but on node %d by the "
                              "numbering a placement's cluster assumes (rank / %d ranks per node); epmoe needs the "
                              "same number of ranks on every node, numbered node by node (mpirun --map-by "
                              "ppr:N:node)", r, x->node_of[r], x->nodes, r / x->per_node, x->per_node);
    }
    if (st == EPM_OK) {
        x->a2a = o->a2a;
        x->hier = epm_xcomm_hier_takes(o->hier, x->nodes, x->per_node);
        st = make_transport(x);
    }
    /* a transport that failed on one rank (no GPU, no memory there) fails on all */
    st = epm_xcomm_agree(x, st);
    if (st != EPM_OK) {
        epm_xcomm_destroy(x);
        return st;
    }
    *out = x;
    return EPM_OK;
}

void epm_xcomm_destroy(epm_xcomm *x)
{
    if (!x)
        return;
    if (x->tr)
        x->tr->ops->destroy(x->tr);
    epm_xcomm_pool_release(x);
    if (x->comm != MPI_COMM_NULL)
        MPI_Comm_free(&x->comm);
    if (x->ctl != MPI_COMM_NULL)
        MPI_Comm_free(&x->ctl);
    epm_free(x->node_of);
    epm_free(x->poison);
    if (!x->epending) { /* (else a late peer may still write there: left to the process's end) */
        epm_free(x->esend);
        epm_free(x->erecv);
    }
    epm_free(x->ereq);
    epm_free(x->estat);
    epm_free(x);
}

int epm_xcomm_rank(const epm_xcomm *x) { return x->rank; }
int epm_xcomm_size(const epm_xcomm *x) { return x->size; }

void epm_xcomm_cluster(const epm_xcomm *x, epm_cluster *c)
{
    epm_cluster_init(c, x->nodes, x->per_node);
}

int epm_xcomm_hierarchical(const epm_xcomm *x) { return x->hier; }

/* auto is the flat path: since a hop's rows ride with its counts, a flat
 * exchange is one phase where the hierarchical path is two hops of them (and
 * three for a dispatch), each hop's counts going to every rank. Measured
 * between pseudo-nodes (decode 100 against 51 tokens/s) and modelled with a
 * latency a message at the Qwen and DeepSeek-V3 shapes (1.6-2.1x), the flat
 * path wins; what the hierarchical one saves is bytes between nodes, for
 * bandwidth-bound passes, with on (bench/README). */
int epm_xcomm_hier_takes(epm_xcomm_hier h, int nodes, int per_node)
{
    (void)per_node;
    return nodes > 1 && h == EPM_XHIER_ON;
}
epm_xcomm_a2a epm_xcomm_transport(const epm_xcomm *x) { return x->a2a; }
int epm_xcomm_node_of(const epm_xcomm *x, int rank) { return x->node_of[rank]; }

void epm_xcomm_wire_get(const epm_xcomm *x, epm_xcomm_wire *out) { *out = x->wire; }
void epm_xcomm_wire_reset(epm_xcomm *x) { memset(&x->wire, 0, sizeof x->wire); }

epm_status epm_xcomm_allgather(epm_xcomm *x, int64_t n, const float *rows, int width, int payload_floats,
                               int64_t counted[EPM_LINK_COUNT], float **out_rows, int64_t *out_n)
{
    int R = x->size, me = x->rank;
    int *counts = epm_malloc((size_t)R * sizeof *counts), *disp = epm_malloc((size_t)R * sizeof *disp);
    unsigned char *got = epm_malloc(2 * (size_t)R), *rode = got ? got + R : NULL;
    *out_rows = NULL;
    /* the counts phase is also the agreement: a rank that cannot allocate,
     * or any rank's failure before it, fails it on every rank */
    int cnt = (int)n;
    epm_status lst = !counts || !disp || !got ? EPM_ERR_NOMEM
                     : n < 0 || n > INT_MAX ? epm_fail(EPM_ERR_INVALID_ARG, "all-gather of %lld rows", (long long)n)
                                            : EPM_OK;
    /* the result's rows set aside before the counts, as an exchange's hop
     * does (xcomm_a2a.c): where every rank's room covers the rows gathered,
     * no agreement after the counts. Each rank's counts to all R peers sum
     * to R x its rows, so room is offered in those units. */
    const size_t rowb = (size_t)width * sizeof(float);
    const size_t want = epm_xcomm_room_want(&x->ag_room);
    float *buf = NULL;
    if (lst == EPM_OK && want && !x->no_room) {
        buf = epm_malloc(want);
        lst = buf ? EPM_OK : EPM_ERR_NOMEM;
    }
    int64_t room = buf && rowb ? (int64_t)(want / rowb) * R : -1; /* (none without a buffer: nothing to hand out) */
    /* (R each, beside the headers the phase receives; every peer's rows are the same, from offset 0) */
    int64_t *sc = x->poison + 6 * R, *rc_ = x->poison + 7 * R, *from = x->poison + 4 * R;
    for (int r = 0; r < R; r++)
        sc[r] = n, from[r] = 0;
    /* the rows ride with the counts where they fit (decode's K/V rows): then
     * every rank has every rank's rows after the phase, and nothing follows */
    const epm_xcomm_rows ride = {(const char *)rows, from, rowb};
    int fit = 0, data = 1;
    epm_status st =
        epm_xcomm_counts_rows(x, lst, sc, rc_, room, lst == EPM_OK ? &ride : NULL, rode, got, &fit, NULL, &data);
    if (st != EPM_OK) {
        epm_free(buf);
        epm_free(counts);
        epm_free(disp);
        epm_free(got);
        return st;
    }
    int64_t total = 0;
    for (int r = 0; r < R; r++) {
        counts[r] = (int)rc_[r];
        disp[r] = (int)total;
        total += counts[r];
    }
    const size_t need = (size_t)(total ? total : 1) * rowb;
    epm_xcomm_room_note(&x->ag_room, need);
    if (!fit && (!buf || want < need)) {
        epm_free(buf);
        buf = epm_malloc(need ? need : 1);
    }
    /* (with every row ridden nobody waits for this rank: a failure here is its own, told at the next phase) */
    int first = buf ? R : me;
    int rc = fit || !data ? MPI_SUCCESS : MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, x->comm);
    if (rc != MPI_SUCCESS)
        st = epm_xcomm_mpi_err(rc, "MPI_Allreduce of the all-gather's buffer status");
    else if (first == me)
        st = EPM_ERR_NOMEM;
    else if (first < R)
        st = epm_fail(EPM_ERR_REMOTE, "rank %d could not allocate for an all-gather of rows", first);
    /* the rows that rode, and this rank's own where they rode (the same to
     * every peer); the all-gather, where one follows, moves only the rest:
     * a rank whose rows rode sends none, and nobody receives them again */
    const int mine_rode = R > 1 && rode[me ? 0 : 1];
    for (int r = 0; r < R && st == EPM_OK; r++) {
        const char *src = r == me ? (mine_rode || !data ? (const char *)rows : NULL)
                                  : got[r] ? epm_xcomm_rode_rows(x, r) : NULL;
        if (counts[r] && !src && !data)
            st = epm_fail(EPM_ERR_INTERNAL, "all-gather: rank %d's %d rows did not ride", r, counts[r]);
        else if (counts[r] && src) {
            memcpy((char *)buf + (size_t)disp[r] * rowb, src, (size_t)counts[r] * rowb);
            counts[r] = 0;
        }
    }
    if (st == EPM_OK && data) {
        MPI_Datatype row;
        MPI_Type_contiguous(width, MPI_FLOAT, &row);
        MPI_Type_commit(&row);
        rc = MPI_Allgatherv(rows, mine_rode ? 0 : cnt, row, buf, counts, disp, row, x->comm);
        MPI_Type_free(&row);
        if (rc != MPI_SUCCESS)
            st = epm_xcomm_mpi_err(rc, "MPI_Allgatherv of rows");
    }
    x->wire.gathers += st == EPM_OK;
    x->wire.gathers_fused += st == EPM_OK && !data;
    if (st == EPM_OK && counted)
        for (int r = 0; r < R; r++)
            if (r != x->rank)
                counted[epm_xcomm_link(x, x->rank, r)] += (int64_t)n * payload_floats * 4;
    if (st == EPM_OK && n > 0)
        for (int r = 0; r < R; r++)
            if (r != x->rank) {
                x->wire.bytes[epm_xcomm_link(x, x->rank, r)] += (int64_t)n * payload_floats * 4;
                x->wire.msgs[epm_xcomm_link(x, x->rank, r)]++;
            }
    if (st == EPM_OK) {
        *out_rows = buf;
        *out_n = total;
    } else {
        epm_free(buf);
    }
    epm_free(counts);
    epm_free(disp);
    epm_free(got);
    return st;
}

static double agree_timeout_s; /* 0 = wait forever */
static int timed_out;          /* a counts phase gave up on a silent rank (process-wide, as the deadline) */

void epm_xcomm_set_timeout(double seconds)
{
    agree_timeout_s = seconds > 0 ? seconds : 0;
    epm_transport_set_timeout(seconds);
}

void epm_xcomm_abort(epm_xcomm *x, int code) { MPI_Abort(x ? x->comm : MPI_COMM_WORLD, code); }

/* After a timeout, which ranks are still alive: live ranks answer probes
 * while they wait (answer_probes), a stalled or dead one does not. On the
 * counts phases' communicator, whose messages (tag 0) they cannot match,
 * where the rows' tags would span these. */
enum { TAG_PROBE = 0x7e51, TAG_REPLY = 0x7e52 };

static void answer_probes(epm_xcomm *x)
{
    for (;;) {
        int flag = 0, v;
        MPI_Status stt;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_PROBE, x->ctl, &flag, &stt) != MPI_SUCCESS || !flag)
            return;
        MPI_Recv(&v, 1, MPI_INT, stt.MPI_SOURCE, TAG_PROBE, x->ctl, MPI_STATUS_IGNORE);
        MPI_Send(&x->rank, 1, MPI_INT, stt.MPI_SOURCE, TAG_REPLY, x->ctl);
    }
}

static epm_status blame(epm_xcomm *x, double waited)
{
    int R = x->size, me = x->rank;
    int *ans = epm_calloc((size_t)R, sizeof *ans), *got = epm_calloc((size_t)R, sizeof *got);
    MPI_Request *rq = epm_malloc(2 * (size_t)R * sizeof *rq);
    if (!ans || !got || !rq) {
        epm_free(ans);
        epm_free(got);
        epm_free(rq);
        return epm_fail(EPM_ERR_TIMEOUT, "rank %d waited %.0f s (--timeout) for the other ranks: one of them "
                        "stalled or died", me, waited);
    }
    for (int r = 0; r < R; r++) {
        rq[r] = rq[R + r] = MPI_REQUEST_NULL;
        if (r == me)
            continue;
        MPI_Irecv(&ans[r], 1, MPI_INT, r, TAG_REPLY, x->ctl, &rq[r]);
        MPI_Isend(&me, 1, MPI_INT, r, TAG_PROBE, x->ctl, &rq[R + r]);
    }
    got[me] = 1;
    double t0 = epm_now(), window = waited < 4 ? 2 : waited / 2;
    for (int left = R - 1; left > 0 && epm_now() - t0 < window;) {
        answer_probes(x);
        for (int r = 0; r < R; r++) {
            int done = 0;
            if (!got[r] && MPI_Test(&rq[r], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) {
                got[r] = 1;
                left--;
            }
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    char who[256] = "";
    int o = 0, nmiss = 0, lowest_live = me;
    for (int r = R - 1; r >= 0; r--)
        if (got[r])
            lowest_live = r;
    for (int r = 0; r < R; r++)
        if (!got[r] && o < (int)sizeof who - 16)
            o += snprintf(who + o, sizeof who - (size_t)o, "%s%d", nmiss++ ? ", " : "", r);
    /* the requests to a silent rank never complete; the job is about to end */
    epm_free(ans);
    epm_free(got);
    epm_free(rq);
    if (nmiss == 0)
        return epm_fail(EPM_ERR_TIMEOUT, "rank %d waited %.0f s (--timeout) for the other ranks; all answered "
                        "afterwards (a rank was too slow)", me, waited);
    if (me == lowest_live)
        return epm_fail(EPM_ERR_TIMEOUT, "rank%s %s stalled or died: no answer for %.0f s (--timeout)",
                        nmiss > 1 ? "s" : "", who, waited);
    return epm_fail(EPM_ERR_REMOTE, "rank%s %s stalled or died (rank %d reports it)", nmiss > 1 ? "s" : "", who,
                    lowest_live);
}

/* A rank that failed sends this to every peer in a counts phase instead of
 * its counts: ORIGIN where the failure happened, HEARD where it only learnt
 * of another's (EPM_ERR_REMOTE), so that the origin's message and code win. */
enum { CODE_ORIGIN = -1, CODE_HEARD = -2 };

/* Once a deadline gave up on the counts messages: receives are cancelled,
 * and the buffers (a send may still be read) are left to the process. */
static void counts_abandon(epm_xcomm *x, int why)
{
    for (int r = 0; r < x->size; r++)
        if (x->ereq[r] != MPI_REQUEST_NULL) {
            MPI_Cancel(&x->ereq[r]);
            MPI_Request_free(&x->ereq[r]);
        }
    for (int r = 0; r < x->size; r++)
        if (x->ereq[x->size + r] != MPI_REQUEST_NULL)
            MPI_Request_free(&x->ereq[x->size + r]);
    x->epending = why;
    x->failed = 1;
}

epm_status epm_xcomm_counts_rows(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv, int64_t cap,
                                 const epm_xcomm_rows *rows, unsigned char *rode, unsigned char *got, int *fit,
                                 int64_t *all_out, int *data_out)
{
    const int R = x->size, me = x->rank;
    const size_t slot = EPM_XCOMM_EHDR + x->emax;
    if (fit)
        *fit = 0;
    if (all_out)
        *all_out = 0;
    if (data_out)
        *data_out = 0;
    if (x->epending > 0) /* (a deadline passed: no rank can count on the others) */
        return epm_fail(EPM_ERR_TIMEOUT, "rank %d: an earlier exchange gave up on a stalled rank", me);
    if (x->epending < 0)
        return epm_fail(EPM_ERR_MPI, "rank %d: an earlier exchange's counts messages failed in MPI", me);
    /* One message to each peer, from and into the communicator's own slots
     * (after a timeout a late peer must not write into memory its caller
     * freed): its count, this rank's total sent and the rows this rank could
     * receive without allocating (-1: not offered), so that every rank
     * learns the same total and capacities and decides alike whether any
     * must allocate; and the rows themselves where they fit, so that
     * decode's small hops move in this one phase. A rank that failed sends
     * its failure instead (ORIGIN, or HEARD of another's). */
    /* (what rides from here follows this rank's setting; what arrived is
     * judged by the rows' size alone, so a mismatch cannot lose rows) */
    const size_t rb = rows && !x->no_eager ? rows->rb : 0, rbin = rows ? rows->rb : 0;
    const int64_t fits = rb ? (int64_t)(x->emax / rb) : -1; /* rows a message may carry */
    int64_t mine[4] = {0, 0, -1, 0}, total = 0;
    if (local != EPM_OK) {
        int64_t v = local == EPM_ERR_REMOTE ? CODE_HEARD : CODE_ORIGIN;
        mine[0] = mine[1] = mine[2] = mine[3] = v;
    } else if (send) {
        mine[3] = !rb; /* (nothing rides: the step runs, as it always did) */
        for (int r = 0; r < R; r++) {
            total += send[r];
            mine[3] |= r != me && send[r] > fits;
        }
        mine[1] = total, mine[2] = cap;
    }
    for (int r = 0; r < R; r++) {
        x->ereq[r] = x->ereq[R + r] = MPI_REQUEST_NULL;
        if (rode)
            rode[r] = 0;
        if (got)
            got[r] = 0;
    }
    int rc = MPI_SUCCESS;
    for (int r = 0; r < R && rc == MPI_SUCCESS; r++)
        if (r != me)
            rc = MPI_Irecv(x->erecv + (size_t)r * slot, (int)slot, MPI_BYTE, r, 0, x->ctl, &x->ereq[r]);
    for (int r = 0; r < R && rc == MPI_SUCCESS; r++) {
        if (r == me)
            continue;
        char *m = x->esend + (size_t)r * slot;
        int64_t h[4] = {mine[0], mine[1], mine[2], mine[3]};
        size_t n = 0;
        if (local == EPM_OK && send) {
            h[0] = send[r];
            if (send[r] > 0 && send[r] <= fits) {
                n = (size_t)send[r] * rb;
                memcpy(m + EPM_XCOMM_EHDR, rows->buf + (size_t)rows->off[r] * rb, n);
                if (rode)
                    rode[r] = 1;
            }
        }
        memcpy(m, h, sizeof h);
        rc = MPI_Isend(m, (int)(EPM_XCOMM_EHDR + n), MPI_BYTE, r, 0, x->ctl, &x->ereq[R + r]);
    }
    if (rc != MPI_SUCCESS) {
        counts_abandon(x, -1);
        return epm_fail(EPM_ERR_MPI, "rank %d: posting the counts messages (and failures) failed", me);
    }
    /* The wait has a deadline: a rank that stalled or died must not hold the
     * others forever. After a timeout or an MPI error no rank can count on
     * the others: x->failed, as for an agreed failure, so that no further
     * agreement waits for them again. Without a deadline, MPI's blocking
     * wait. */
    MPI_Status *stt = x->estat;
    if (agree_timeout_s <= 0) {
        rc = MPI_Waitall(R, x->ereq, stt);
        if (rc == MPI_SUCCESS)
            rc = MPI_Waitall(R, x->ereq + R, MPI_STATUSES_IGNORE);
    } else {
        double t0 = epm_now();
        long nap_ns = 0;
        /* (the receives once: a second MPI_Testall of completed requests
         * would overwrite their statuses with empty ones) */
        for (int dr = 0, ds = 0; !(dr && ds);) {
            if (!dr)
                rc = MPI_Testall(R, x->ereq, &dr, stt);
            if (rc == MPI_SUCCESS && dr)
                rc = MPI_Testall(R, x->ereq + R, &ds, MPI_STATUSES_IGNORE);
            if (rc != MPI_SUCCESS || (dr && ds))
                break;
            double waited = epm_now() - t0;
            if (waited > agree_timeout_s) {
                counts_abandon(x, 1);
                timed_out = 1;
                return blame(x, agree_timeout_s);
            }
            answer_probes(x);
            /* MPI progresses the messages only inside its calls; past 2 ms a
             * peer is slow or stalled, and 200 us naps leave it the core */
            nap_ns = epm_backoff(waited, nap_ns, 200000);
        }
    }
    if (rc != MPI_SUCCESS) {
        counts_abandon(x, -1);
        return epm_fail(EPM_ERR_MPI, "rank %d: the counts messages (and failures) failed", me);
    }
    /* every rank's header, this rank's own among them (4 a rank; the all-gather's counts lie beyond) */
    int64_t *hs = x->poison;
    for (int r = 0; r < R; r++)
        memcpy(hs + 4 * r, r == me ? mine : (const int64_t *)(x->erecv + (size_t)r * slot), 4 * sizeof *hs);
    /* lowest failing rank wins (origins before those that heard); its
     * message travels to everyone */
    int first = 2 * R;
    for (int r = 0; r < R; r++) {
        int at = hs[4 * r] == CODE_ORIGIN ? r : hs[4 * r] == CODE_HEARD ? R + r : 2 * R;
        first = at < first ? at : first;
    }
    if (first == 2 * R) {
        int64_t all = 0;
        int ok = 1, data = 0;
        if (send) /* (this rank's count to itself, which its message to no one carries) */
            hs[4 * me] = send[me];
        for (int r = 0; r < R; r++) {
            if (recv)
                recv[r] = hs[4 * r];
            all += hs[4 * r + 1];
            data |= hs[4 * r + 3] != 0;
        }
        for (int r = 0; r < R; r++)
            ok &= hs[4 * r + 2] >= all;
        epm_status rst = EPM_OK;
        for (int r = 0; r < R && got && rbin; r++) {
            if (r == me || hs[4 * r] <= 0)
                continue;
            int nb = 0;
            MPI_Get_count(&stt[r], MPI_BYTE, &nb);
            if ((size_t)nb == EPM_XCOMM_EHDR + (size_t)hs[4 * r] * rbin)
                got[r] = 1;
            else if (nb != (int)EPM_XCOMM_EHDR) /* (MPI delivered what no rank sent) */
                rst = epm_fail(EPM_ERR_INTERNAL, "rank %d's counts message has %d bytes for %lld rows of %zu", r,
                               nb, (long long)hs[4 * r], rbin);
        }
        if (rst != EPM_OK)
            return rst;
        if (fit)
            *fit = ok;
        if (all_out)
            *all_out = all;
        if (data_out)
            *data_out = data;
        return EPM_OK;
    }
    x->failed = 1;
    first %= R;
    char msg[1024];
    int code = (int)local;
    if (x->rank == first)
        snprintf(msg, sizeof msg, "%s", epm_last_error());
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, x->comm);
    MPI_Bcast(&code, 1, MPI_INT, first, x->comm);
    msg[sizeof msg - 1] = '\0';
    if (x->rank == first)
        return epm_fail((epm_status)code, "rank %d: %s", first, msg);
    return epm_fail(EPM_ERR_REMOTE, "rank %d: %s: %s", first, epm_status_str((epm_status)code), msg);
}

epm_status epm_xcomm_counts_fit(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv, int64_t cap,
                                int *fit, int64_t *all_out)
{
    return epm_xcomm_counts_rows(x, local, send, recv, cap, NULL, NULL, NULL, fit, all_out, NULL);
}

epm_status epm_xcomm_counts(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv)
{
    return epm_xcomm_counts_fit(x, local, send, recv, -1, NULL, NULL);
}

epm_status epm_xcomm_agree(epm_xcomm *x, epm_status local) { return epm_xcomm_counts(x, local, NULL, NULL); }

int epm_xcomm_failed(const epm_xcomm *x) { return x->failed; }

int epm_xcomm_local_ranks(const epm_xcomm *x) { return x->local_ranks; }

size_t epm_xcomm_held_bytes(const epm_xcomm *x) { return 2 * (size_t)x->size * (EPM_XCOMM_EHDR + x->emax); }

void epm_xcomm_set_room(epm_xcomm *x, int on) { x->no_room = !on; }

void epm_xcomm_set_eager(epm_xcomm *x, int on) { x->no_eager = !on; }

int epm_xcomm_timed_out(void) { return timed_out; }

epm_status epm_xcomm_sum_i64(epm_xcomm *x, int64_t *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, x->comm));
    return EPM_OK;
}

epm_status epm_xcomm_max_f64(epm_xcomm *x, double *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, x->comm));
    return EPM_OK;
}

epm_status epm_xcomm_gather_bytes(epm_xcomm *x, const void *buf, int64_t n, void **out, int64_t *out_n)
{
    int R = x->size, cnt = (int)n;
    *out = NULL;
    *out_n = 0;
    /* a rank that cannot allocate still takes part in every collective up
     * to the agreement, so that no other rank is left waiting in one */
    int *counts = NULL, *disp = NULL;
    epm_status st = EPM_OK;
    if (x->rank == 0) {
        counts = epm_malloc((size_t)R * sizeof *counts);
        disp = epm_malloc((size_t)R * sizeof *disp);
        if (!counts || !disp)
            st = EPM_ERR_NOMEM;
    }
    st = epm_xcomm_agree(x, st);
    char *all = NULL;
    int64_t total = 0;
    if (st == EPM_OK) {
        int rc = MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, x->comm);
        if (rc != MPI_SUCCESS)
            st = epm_xcomm_mpi_err(rc, "MPI_Gather of sizes");
        if (st == EPM_OK && x->rank == 0) {
            for (int r = 0; r < R; r++) {
                disp[r] = (int)total;
                total += counts[r];
            }
            all = epm_malloc((size_t)(total ? total : 1));
            if (!all)
                st = EPM_ERR_NOMEM;
        }
        st = epm_xcomm_agree(x, st);
    }
    if (st == EPM_OK) {
        int rc = MPI_Gatherv(buf, cnt, MPI_BYTE, all, counts, disp, MPI_BYTE, 0, x->comm);
        if (rc != MPI_SUCCESS)
            st = epm_xcomm_mpi_err(rc, "MPI_Gatherv");
    }
    epm_free(counts);
    epm_free(disp);
    if (st != EPM_OK) {
        epm_free(all);
        return st;
    }
    *out = all;
    *out_n = total;
    return EPM_OK;
}

void epm_xcomm_barrier(epm_xcomm *x) { MPI_Barrier(x->comm); }

void epm_xcomm_finalize(void)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Finalize();
}
