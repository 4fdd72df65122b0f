/* Hostfiles and --hosts lists: what is accepted, and that every refusal names
 * the file, the line and the value. */
#include "test_util.h"

#include <string.h>

#include "core.h"
#include "epmoe/launch.h"

static epm_hostlist *parse_ok(const char *text)
{
    epm_hostlist *h = NULL;
    epm_status st = epm_hostfile_parse(text, strlen(text), "hosts.txt", &h);
    if (st != EPM_OK)
        fail_msg("rejected: %s", epm_last_error());
    return h;
}

/* Refused with FORMAT, and the detail holds each of the needles. */
static void parse_bad(const char *text, const char *needle1, const char *needle2)
{
    epm_hostlist *h = (epm_hostlist *)1;
    assert_int_equal(epm_hostfile_parse(text, strlen(text), "hosts.txt", &h), EPM_ERR_FORMAT);
    assert_null(h);
    const char *e = epm_last_error();
    if (!strstr(e, needle1) || (needle2 && !strstr(e, needle2)))
        fail_msg("detail '%s' lacks '%s' / '%s'", e, needle1, needle2 ? needle2 : "");
}

static void test_hostfile_full_syntax(void **state)
{
    (void)state;
    epm_hostlist *h = parse_ok("# two nodes\r\n"
                               "\n"
                               "node1 slots=8 max_slots=16   # GPU box\r\n"
                               "   \t\n"
                               "alice@node2.example.org\tslots=8 max-slots=8\n"
                               "10.0.0.3 slots=4");
    assert_int_equal(epm_hostlist_count(h), 3);
    assert_string_equal(epm_hostlist_name(h, 0), "node1");
    assert_int_equal(epm_hostlist_slots(h, 0), 8);
    assert_int_equal(epm_hostlist_max_slots(h, 0), 16);
    assert_int_equal(epm_hostlist_line(h, 0), 3);
    assert_string_equal(epm_hostlist_name(h, 1), "node2.example.org");
    assert_string_equal(epm_hostlist_spec(h, 1), "alice@node2.example.org");
    assert_int_equal(epm_hostlist_max_slots(h, 1), 8);
    assert_int_equal(epm_hostlist_line(h, 1), 5);
    assert_string_equal(epm_hostlist_name(h, 2), "10.0.0.3");
    assert_int_equal(epm_hostlist_line(h, 2), 6);
    assert_int_equal(epm_hostlist_total_slots(h), 20);
    assert_string_equal(epm_hostlist_label(h), "hosts.txt");
    assert_null(epm_hostlist_name(h, 3));
    assert_null(epm_hostlist_name(h, -1));
    epm_hostlist_destroy(h);
}

static void test_hostfile_slots_absent(void **state)
{
    (void)state;
    epm_hostlist *h = parse_ok("a\nb slots=2\n");
    assert_int_equal(epm_hostlist_slots(h, 0), 0);
    assert_int_equal(epm_hostlist_max_slots(h, 0), 0);
    assert_int_equal(epm_hostlist_total_slots(h), -1);
    epm_hostlist_destroy(h);
}

static void test_hostfile_refusals(void **state)
{
    (void)state;
    parse_bad("a slots=2\nb cpus=2\n", "hosts.txt:2", "'cpus'");
    parse_bad("a slots=0\n", "hosts.txt:1", "slots='0'");
    parse_bad("a slots=-2\n", "hosts.txt:1", "'-2'");
    parse_bad("a slots=2x\n", "hosts.txt:1", "'2x'");
    parse_bad("a slots=\n", "hosts.txt:1", "slots=''");
    parse_bad("a slots=99999999999999999999\n", "hosts.txt:1", "not an integer");
    parse_bad("a slots=4 max_slots=2\n", "slots=4 is more than max_slots=2", NULL);
    parse_bad("a slots=1 slots=2\n", "hosts.txt:1", "twice");
    parse_bad("a\n\n# x\nA slots=2\n", "hosts.txt:4", "already listed at line 1");
    parse_bad("good\nba$d slots=1\n", "hosts.txt:2", "'ba$d'");
    parse_bad("-a slots=1\n", "hosts.txt:1", "'-a'");
    parse_bad("@a slots=1\n", "hosts.txt:1", "empty user");
    parse_bad("u@ slots=1\n", "hosts.txt:1", "empty name");
    parse_bad("a 4\n", "hosts.txt:1", "'4' after host 'a' is not key=value");
    parse_bad("# nothing\n\n", "hosts.txt: no hosts", NULL);
    parse_bad("", "no hosts", NULL);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    parse_bad(longname, "longer than 255", NULL);
    epm_hostlist *h = NULL;
    assert_int_equal(epm_hostfile_parse("a\0b\n", 4, "bin", &h), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "bin:1: NUL byte"));
    assert_int_equal(epm_hostfile_parse(NULL, 0, "x", NULL), EPM_ERR_INVALID_ARG);
}

static void test_hostfile_load(void **state)
{
    (void)state;
    const char *p = tu_write("h.txt", "n1 slots=2\nn2 slots=2\n", 22);
    epm_hostlist *h = NULL;
    assert_int_equal(epm_hostfile_load(p, &h), EPM_OK);
    assert_int_equal(epm_hostlist_count(h), 2);
    assert_string_equal(epm_hostlist_label(h), p);
    epm_hostlist_destroy(h);
    assert_int_equal(epm_hostfile_load("/nonexistent/hosts", &h), EPM_ERR_IO);
    assert_non_null(strstr(epm_last_error(), "/nonexistent/hosts"));
    p = tu_write("bad.txt", "n1 slots=2\nn1\n", 14);
    assert_int_equal(epm_hostfile_load(p, &h), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "bad.txt:2"));
}

static void test_hosts_list(void **state)
{
    (void)state;
    epm_hostlist *h = NULL;
    assert_int_equal(epm_hosts_parse("h1:2,h2:4,h3", &h), EPM_OK);
    assert_int_equal(epm_hostlist_count(h), 3);
    assert_string_equal(epm_hostlist_name(h, 1), "h2");
    assert_int_equal(epm_hostlist_slots(h, 1), 4);
    assert_int_equal(epm_hostlist_slots(h, 2), 1); /* Open MPI: a bare name is one slot */
    assert_int_equal(epm_hostlist_line(h, 2), 3);
    assert_int_equal(epm_hostlist_total_slots(h), 7);
    epm_hostlist_destroy(h);

    const char *bad[][2] = {{"", "entry 1"},         {"a:2,,b", "entry 2"}, {"a:", "slots=''"},
                            {"a:0", "slots='0'"},   {"a:2,b:x", "--hosts:2"}, {"a:1,a:1", "already listed at entry 1"},
                            {"a b:1", "' '"},       {"a:2,", "entry 2"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        h = (epm_hostlist *)1;
        assert_int_equal(epm_hosts_parse(bad[i][0], &h), EPM_ERR_FORMAT);
        assert_null(h);
        if (!strstr(epm_last_error(), bad[i][1]))
            fail_msg("'%s': detail '%s' lacks '%s'", bad[i][0], epm_last_error(), bad[i][1]);
    }
}

/* Every allocation may fail; each failure is NOMEM and leaks nothing (ASan). */
static void test_hostfile_alloc_failures(void **state)
{
    (void)state;
    const char *text = "a slots=1\nb slots=1\nc\nd\ne\nf\ng\nh\ni\nj slots=3\n";
    int ok = 0;
    for (uint64_t n = 1; n < 100 && !ok; n++) {
        epm_hostlist *h = NULL;
        epm_fault_fail_nth_alloc(n);
        epm_status st = epm_hostfile_parse(text, strlen(text), "f", &h);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            assert_int_equal(epm_hostlist_count(h), 10);
            ok = 1;
        } else {
            assert_int_equal(st, EPM_ERR_NOMEM);
            assert_null(h);
        }
        epm_hostlist_destroy(h);
    }
    assert_true(ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostfile_full_syntax), cmocka_unit_test(test_hostfile_slots_absent),
        cmocka_unit_test(test_hostfile_refusals),    cmocka_unit_test(test_hostfile_load),
        cmocka_unit_test(test_hosts_list),           cmocka_unit_test(test_hostfile_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
