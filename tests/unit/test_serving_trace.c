/* Production serving traces (dist/serving_trace.c): Azure's and BurstGPT's
 * CSV as published (times to seconds from the first request, dates across
 * a leap day and a UTC offset), failed requests left out and counted, rows
 * out of order sorted stably, CSV's variations (CRLF, a byte order mark,
 * quotes, spaces, blank lines), Mooncake's JSON lines with their block
 * hashes, and every malformed input refused with the file, line, column
 * (or key) and value. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

#include "serving_trace.h"

static epm_serving_trace *parse_ok(const char *text)
{
    epm_serving_trace *t = NULL;
    epm_status st = epm_serving_trace_parse(text, strlen(text), "t.csv", &t);
    if (st != EPM_OK)
        fprintf(stderr, "%s\n", epm_last_error());
    assert_int_equal(st, EPM_OK);
    assert_non_null(t);
    return t;
}

static void refused(const char *text, const char *want)
{
    epm_serving_trace *t = (epm_serving_trace *)&t;
    assert_int_equal(epm_serving_trace_parse(text, strlen(text), "t.csv", &t), EPM_ERR_FORMAT);
    assert_null(t);
    if (!strstr(epm_last_error(), want))
        fprintf(stderr, "got: %s\nwant: %s\n", epm_last_error(), want);
    assert_non_null(strstr(epm_last_error(), want));
}

static void test_azure(void **state)
{
    (void)state;
    epm_serving_trace *t = parse_ok("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                    "2023-11-16 18:15:46.6805900,4808,10\n"
                                    "2023-11-16 18:15:50.9951690,3180,8\n"
                                    "2023-11-16 18:16:00,110,27\n");
    assert_string_equal(t->format, "Azure LLM inference trace");
    assert_int_equal(t->n, 3);
    assert_int_equal(t->rows, 3);
    assert_int_equal(t->skipped, 0);
    assert_int_equal(t->reordered, 0);
    assert_true(t->arrival[0] == 0);
    assert_true(fabs(t->arrival[1] - 4.314579) < 1e-6);
    assert_true(fabs(t->arrival[2] - 13.31941) < 1e-6);
    assert_int_equal(t->prompt_len[0], 4808);
    assert_int_equal(t->output_len[2], 27);
    epm_serving_trace_destroy(t);
    /* across a leap day's midnight, with a 'T', a Z and UTC offsets (the 2024 trace's form) */
    t = parse_ok("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-02-29 23:59:59.5+00:00,1,1\n"
                 "2024-03-01T00:00:00.25Z,2,2\n"
                 "2024-03-01 01:00:01-01:00,3,3\n" /* 02:00:01 UTC */
                 "2024-03-01 02:00:02+01:00,4,4\n"); /* 01:00:02 UTC: out of order */
    assert_int_equal(t->n, 4);
    assert_int_equal(t->reordered, 1);
    assert_true(fabs(t->arrival[1] - 0.75) < 1e-9);
    assert_int_equal(t->prompt_len[2], 4);
    assert_true(fabs(t->arrival[2] - 3602.5) < 1e-9);
    assert_int_equal(t->prompt_len[3], 3);
    assert_true(fabs(t->arrival[3] - 7201.5) < 1e-9);
    epm_serving_trace_destroy(t);
}

static void test_burstgpt(void **state)
{
    (void)state;
    epm_serving_trace *t = parse_ok("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                    "5,ChatGPT,472,18,490,Conversation log\n"
                                    "45,ChatGPT,1087,0,1087,Conversation log\n"
                                    "118,GPT-4,417,217,634,API log\n"
                                    "118,ChatGPT,3,1,4,API log\n"
                                    "100.5,ChatGPT,0,5,5,API log\n");
    assert_string_equal(t->format, "BurstGPT");
    assert_int_equal(t->rows, 5);
    assert_int_equal(t->skipped, 2); /* no output, no prompt */
    assert_int_equal(t->n, 3);
    assert_int_equal(t->reordered, 0);
    assert_true(t->arrival[0] == 0 && t->arrival[1] == 113 && t->arrival[2] == 113);
    assert_int_equal(t->prompt_len[1], 417); /* a tie keeps the file's order */
    assert_int_equal(t->prompt_len[2], 3);
    assert_int_equal(t->output_len[1], 217);
    epm_serving_trace_destroy(t);
    /* out of order, ties in file order */
    t = parse_ok("Timestamp,Request tokens,Response tokens\n9,1,1\n3,2,2\n9,3,3\n3,4,4\n");
    assert_int_equal(t->reordered, 1);
    static const int32_t order[4] = {2, 4, 1, 3};
    for (int i = 0; i < 4; i++)
        assert_int_equal(t->prompt_len[i], order[i]);
    assert_true(t->arrival[0] == 0 && t->arrival[1] == 0 && t->arrival[2] == 6 && t->arrival[3] == 6);
    epm_serving_trace_destroy(t);
}

static void test_csv_forms(void **state)
{
    (void)state;
    /* a byte order mark, CRLF, columns in another order and case, quotes, spaces, blank lines */
    epm_serving_trace *t = parse_ok("\xEF\xBB\xBF"
                                    "generatedtokens , \"Note\", Timestamp,CONTEXTTOKENS\r\n"
                                    "\r\n"
                                    "7,\"a, b\",10, 3\r\n"
                                    "  \n"
                                    "\"8\",\"\",12.25,4");
    assert_int_equal(t->n, 2);
    assert_int_equal(t->prompt_len[0], 3);
    assert_int_equal(t->output_len[1], 8);
    assert_true(t->arrival[1] == 2.25);
    epm_serving_trace_destroy(t);
    assert_true(epm_serving_trace_is("a/azure_conv.csv") && epm_serving_trace_is("B.CSV"));
    assert_false(epm_serving_trace_is("in.json") || epm_serving_trace_is(".csv") || epm_serving_trace_is(NULL));
}

static void test_refusals(void **state)
{
    (void)state;
    refused("", "t.csv: empty");
    refused("\n\n", "t.csv: empty");
    refused("TIMESTAMP,ContextTokens\n", "t.csv:1: the header 'TIMESTAMP,ContextTokens' has no output tokens column");
    refused("Model,Request tokens,Response tokens\n", "has no timestamp column");
    refused("TIMESTAMP,ContextTokens,Response tokens\n", "mixes Azure's and BurstGPT's column names");
    refused("Timestamp,Timestamp,Request tokens,Response tokens\n", "t.csv:1: two columns named 'Timestamp'");
    refused("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no request with prompt and output tokens (0 rows left out)");
    refused("Timestamp,Request tokens,Response tokens\n1,0,3\n2,4,0\n",
            "no request with prompt and output tokens (2 rows left out)");
    refused("Timestamp,Request tokens,Response tokens\n1,2,3\n\n2,x4,5\n", "t.csv:4: prompt tokens 'x4' is not a count");
    refused("Timestamp,Request tokens,Response tokens\n1,2,-3\n", "t.csv:2: output tokens '-3' is not a count");
    refused("Timestamp,Request tokens,Response tokens\n1,2,3000000000\n", "'3000000000' is not a count of tokens");
    /* a run's limits: a prompt of 2^24 tokens, 2^20 new ones (the token reader's) */
    refused("Timestamp,Request tokens,Response tokens\n1,16777217,3\n",
            "t.csv:2: prompt tokens '16777217' is not a count of tokens (0 to 16777216)");
    refused("Timestamp,Request tokens,Response tokens\n1,2,1048577\n", "'1048577' is not a count of tokens (0 to 1048576)");
    refused("Timestamp,Request tokens,Response tokens\n1,2\n", "t.csv:2: 2 fields, the header has 3");
    refused("Timestamp,Request tokens,Response tokens\n1,\"2,3\n", "t.csv:2: '1,\"2,3' is not a CSV row");
    refused("Timestamp,Request tokens,Response tokens\n-1,2,3\n", "timestamp '-1' is neither seconds nor a date");
    refused("Timestamp,Request tokens,Response tokens\n1.,2,3\n", "timestamp '1.'");
    /* one form of time a trace */
    refused("Timestamp,Request tokens,Response tokens\n5,2,3\n2023-11-16 18:00:00,2,3\n",
            "t.csv:3: timestamp '2023-11-16 18:00:00' is not seconds, as the rows before it");
    refused("Timestamp,Request tokens,Response tokens\n2023-11-16 18:00:00,2,3\n7,2,3\n",
            "t.csv:3: timestamp '7' is not a date and time (YYYY-MM-DD");
    static const char *const bad_dates[] = {
        "2023-02-29 00:00:00",  "2023-13-01 00:00:00", "2023-11-16 24:00:00", "2023-11-16 18:60:00",
        "2023-11-16 18:15:61",  "2023-11-16 18:15",    "2023-11-16 18:15:46.", "2023-11-16 18:15:46+0100",
        "2023-11-16 18:15:46Zx", "2023/11/16 18:15:46", "2023-11-16 18:15:46.5 ", "2023-11-16 18:00:00x01:00",
        "2023-11-16 18:00:00 01:00", "2023-11-16 18:00:00.5x01:00",
    };
    for (size_t i = 0; i < sizeof bad_dates / sizeof *bad_dates; i++) {
        char text[160], want[96];
        snprintf(text, sizeof text, "TIMESTAMP,ContextTokens,GeneratedTokens\n\"%s\",1,1\n", bad_dates[i]);
        snprintf(want, sizeof want, "timestamp '%s' is neither", bad_dates[i]); /* (quoted: spaces kept) */
        refused(text, want);
    }
    char many[400] = "";
    for (int i = 0; i < 65; i++)
        strcat(many, i ? ",x" : "x");
    refused(many, "more than 64 fields");
    epm_serving_trace *t = (epm_serving_trace *)&t;
    assert_int_equal(epm_serving_trace_load("/nonexistent/trace.csv", &t), EPM_ERR_IO);
    assert_null(t);
}

/* Mooncake's JSON lines: milliseconds, lengths and block hashes, which
 * follow their request through the sort; a failed request's go with it. */
static void test_mooncake(void **state)
{
    (void)state;
    epm_serving_trace *t = parse_ok("{\"timestamp\": 0, \"input_length\": 700, \"output_length\": 5, \"hash_ids\": [0, 1]}\n"
                                    "\n"
                                    "{\"timestamp\": 1500, \"input_length\": 9, \"output_length\": 0, \"hash_ids\": [7]}\n"
                                    "{\"input_length\": 600, \"timestamp\": 2500.5, \"output_length\": 2, \"hash_ids\": [0, 3],"
                                    " \"extra\": \"kept out\"}\n"
                                    "{\"timestamp\": 1000, \"input_length\": 3, \"output_length\": 1}\n");
    assert_string_equal(t->format, "Mooncake trace");
    assert_int_equal(t->n, 3);
    assert_int_equal(t->skipped, 1);
    assert_int_equal(t->reordered, 1);
    assert_true(t->arrival[0] == 0 && t->arrival[1] == 1 && t->arrival[2] == 2.5005);
    static const int32_t in[3] = {700, 3, 600};
    static const int64_t off[4] = {0, 2, 2, 4}, ids[4] = {0, 1, 0, 3};
    for (int i = 0; i < 3; i++)
        assert_int_equal(t->prompt_len[i], in[i]);
    assert_memory_equal(t->hash_off, off, sizeof off);
    assert_memory_equal(t->hash_ids, ids, sizeof ids);
    epm_serving_trace_destroy(t);
    /* refusals: by file, line, key and value */
    static const char head[] = "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n";
    static const struct {
        const char *line, *want;
    } bad[] = {
        {"{\"timestamp\": 0, \"input_length\": 1}", "t.csv:2: no \"output_length\""},
        {"{\"timestamp\": -1, \"input_length\": 1, \"output_length\": 1}", "t.csv:2: \"timestamp\" is -1, not millis"},
        {"{\"timestamp\": \"0\", \"input_length\": 1, \"output_length\": 1}", "\"timestamp\" is \"0\""},
        {"{\"input_length\": 1, \"output_length\": 1}", "\"timestamp\" is missing"},
        {"{\"timestamp\": 0, \"input_length\": 1.5, \"output_length\": 1}", "\"input_length\" is 1.5, not a count"},
        {"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 3000000000}", "is 3000000000, not a count"},
        {"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": 4}", "\"hash_ids\" is 4, not a list"},
        {"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1, -2]}",
         "\"hash_ids\"[1] is -2, not a block hash"},
        {"[1, 2]", "t.csv:2: a request is a JSON object, not [1,2]"},
        {"{\"timestamp\": 0,", "t.csv:2: not JSON"},
        {"{\"timestamp\": 0, \"timestamp\": 1, \"input_length\": 1, \"output_length\": 1}", "t.csv:2: not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s\n", head, bad[i].line);
        refused(text, bad[i].want);
    }
    refused("{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1}", "no request with prompt and output tokens (1 rows");
    /* a file names its form by its first line */
    const char *path = tu_path("mooncake.jsonl"), *req = tu_path("requests.jsonl");
    FILE *f = fopen(path, "w");
    fputs(head, f);
    fclose(f);
    f = fopen(req, "w");
    fputs("{\"prompt_token_ids\": [1, 2], \"max_tokens\": 3}\n", f);
    fclose(f);
    assert_true(epm_serving_trace_is(path));
    assert_false(epm_serving_trace_is(req));
    assert_false(epm_serving_trace_is("/nonexistent.jsonl"));
    assert_int_equal(epm_serving_trace_load(path, &t), EPM_OK);
    assert_int_equal(t->n, 1);
    epm_serving_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_azure),
        cmocka_unit_test(test_burstgpt),
        cmocka_unit_test(test_csv_forms),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_mooncake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
