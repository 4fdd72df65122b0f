/* Set-up shared by the comm/ programs under mpirun (test_comm_*.c): the
 * rank count and this rank's number, communicators with their options, what
 * one rank received from a row exchange and its comparison with another
 * path's or with the seeded reference (xcomm_ref.h, xmulti_ref.h), checks of
 * the error message, and a test runner that ends every rank once one of
 * them fails a check. Static inline: each program uses only some of it. */
#ifndef EPM_TEST_COMM_FIXTURE_H
#define EPM_TEST_COMM_FIXTURE_H

#include "test_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "epmoe/comm.h"
#include "xcomm.h"
#include "xmulti_ref.h"

/* ranks in the job, and this one (fx_init) */
static int R, me;

/* ---- the test runner ---- */

/* A check that fails on one rank sends that rank on to the next test while
 * the others wait in a collective it will never join: the job would sit
 * until the harness's timeout and then say only that it timed out. So every
 * test runs through fx_body, which marks it unfinished until it returns, and
 * a rank that left one unfinished ends the whole job before it starts the
 * next (or finalizes), once cmocka has printed what failed. */
typedef struct fx_case {
    CMUnitTestFunction fn;
    const char *name;
} fx_case;

static const char *fx_unfinished;

static inline void fx_end_job_if_failed(void)
{
    if (!fx_unfinished)
        return;
    fflush(stdout); /* cmocka's verdict: MPI_Abort does not flush */
    fprintf(stderr, "rank %d of %d: %s failed: ending every rank (the others may wait in a collective it left)\n", me,
            R, fx_unfinished);
    fflush(stderr);
    epm_xcomm_abort(NULL, 1);
}

static inline void fx_body(void **state)
{
    const fx_case *c = *state;
    fx_end_job_if_failed();
    fx_unfinished = c->name;
    void *none = NULL;
    c->fn(&none);
    fx_unfinished = NULL;
}

/* cmocka_unit_test(f) run through fx_body; only in an automatic array (the
 * case lives as long as the block of main() that runs the group) */
#define FX_TEST(f) {.name = #f, .test_func = fx_body, .initial_state = &(fx_case){f, #f}}

/* MPI up (as the runtime starts it), R and me set. */
static inline epm_status fx_init(void)
{
    epm_xcomm *x;
    epm_status st = epm_xcomm_create_opts(NULL, &x);
    if (st != EPM_OK)
        return st;
    R = epm_xcomm_size(x);
    me = epm_xcomm_rank(x);
    epm_xcomm_destroy(x);
    return EPM_OK;
}

/* failed: cmocka_run_group_tests' result; the last test may have failed on
 * this rank alone, and MPI_Finalize would wait for the others */
static inline int fx_finish(int failed)
{
    fx_end_job_if_failed();
    epm_xcomm_finalize();
    return failed;
}

/* main()'s run of its group: 1 when MPI does not start */
#define fx_main(tests) (fx_init() != EPM_OK ? 1 : fx_finish(cmocka_run_group_tests(tests, NULL, NULL)))

/* ---- communicators ---- */

/* the token all-to-all's: vnodes pretend nodes (0: the real ones), hier the
 * hierarchical mode; the transport is the default */
static inline epm_comm *fx_comm(int vnodes, epm_hier_mode hier)
{
    epm_comm_opts o;
    epm_comm_opts_init(&o);
    o.virtual_nodes = vnodes;
    o.hierarchical = hier;
    epm_comm *c;
    assert_int_equal(epm_comm_create(&o, &c), EPM_OK);
    return c;
}

/* the runtime's row exchange, on the transport asked for */
static inline epm_xcomm *fx_xcomm(int vn, epm_xcomm_a2a a2a, epm_xcomm_hier hier)
{
    epm_xcomm_opts o;
    epm_xcomm_opts_init(&o);
    o.virtual_nodes = vn;
    o.a2a = a2a;
    o.hier = hier;
    epm_xcomm *x;
    assert_int_equal(epm_xcomm_create_opts(&o, &x), EPM_OK);
    assert_int_equal(epm_xcomm_transport(x), a2a);
    return x;
}

/* ---- what a row exchange delivered ---- */

/* What one rank received (rows, their sources), the bytes it counted as
 * sender (eval.h's model) and, where filled, its communicator's wire. */
typedef struct fx_rows {
    float *rows;
    int *src;
    int64_t n, counted[EPM_LINK_COUNT];
    epm_xcomm_wire wire;
} fx_rows;

static inline void fx_rows_free(fx_rows *r)
{
    epm_free(r->rows);
    epm_free(r->src);
    memset(r, 0, sizeof *r);
}

/* a view of rows held elsewhere (an epm_xcomm_buf, separate outputs);
 * counted NULL: zeros */
static inline fx_rows fx_got(float *rows, int *src, int64_t n, const int64_t *counted)
{
    fx_rows r = {.rows = rows, .src = src, .n = n};
    if (counted)
        memcpy(r.counted, counted, sizeof r.counted);
    return r;
}

/* the wire of x so far, summed over ranks */
static inline void fx_wire_sum(epm_xcomm *x, fx_rows *r)
{
    epm_xcomm_wire_get(x, &r->wire);
    assert_int_equal(epm_xcomm_sum_i64(x, r->wire.bytes, EPM_LINK_COUNT), EPM_OK);
    assert_int_equal(epm_xcomm_sum_i64(x, r->wire.msgs, EPM_LINK_COUNT), EPM_OK);
}

/* what fx_same compares besides the count and the rows */
enum { FX_ROWS = 0, FX_SRC = 1, FX_COUNTED = 2 };

/* got has want's rows in want's order, bit for bit (and, per what, from the
 * same sources, with the same bytes counted) */
static inline void fx_same(const fx_rows *got, const fx_rows *want, unsigned what)
{
    assert_int_equal(got->n, want->n);
    if (got->n) {
        assert_memory_equal(got->rows, want->rows, (size_t)got->n * XW * sizeof(float));
        if (what & FX_SRC)
            assert_memory_equal(got->src, want->src, (size_t)got->n * sizeof(int));
    }
    if (what & FX_COUNTED)
        assert_memory_equal(got->counted, want->counted, sizeof got->counted);
}

/* fx_same against a reference, which it frees */
static inline void fx_same_ref(const fx_rows *got, fx_rows ref, unsigned what)
{
    fx_same(got, &ref, what);
    fx_rows_free(&ref);
}

/* what this rank must receive and count in xcomm_ref.h's scenario s over vn
 * pretend nodes (0: one real node) */
static inline fx_rows fx_xs_ref(const xscen *s, int vn)
{
    fx_rows r = {0};
    r.n = xs_expect(s, R, vn, me, &r.rows, &r.src, r.counted);
    return r;
}

/* ... and in xmulti_ref.h's multi-destination scenario s */
static inline fx_rows fx_ms_ref(const mscen *s, int vn)
{
    fx_rows r = {0};
    r.n = ms_expect(s, R, vn, me, &r.rows, &r.src, r.counted);
    return r;
}

/* ---- errors ---- */

/* The last error's message contains the printf-formatted text. A failure
 * shows both texts and the caller's line (cmocka's own asserts would show
 * the expression in here and this line). */
#define fx_error_has(...) fx_error_has_at(__FILE__, __LINE__, __VA_ARGS__)

static inline void fx_error_has_at(const char *file, int line, const char *fmt, ...) CMOCKA_PRINTF_ATTRIBUTE(3, 4);
static inline void fx_error_has_at(const char *file, int line, const char *fmt, ...)
{
    char want[256], why[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    int found = strstr(epm_last_error(), want) != NULL;
    if (!found)
        snprintf(why, sizeof why, "rank %d: the error \"%s\" does not say \"%s\"", me, epm_last_error(), want);
    _assert_true((LargestIntegralType)found, found ? "" : why, file, line);
}

#endif
