/* Production serving traces as CSV (serving_trace.h). The text is read by
 * length alone (not NUL-terminated: the fuzz target feeds raw bytes). */
#include "serving_trace.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"
#include "json_show.h"

/* a request's tokens, as the token reader holds them (tokens.c: a prompt up to 2^24 tokens, up to 2^20
 * new ones): what a run can be given; a trace's INT32_MAX made 8 GiB prompts (found reading it) */
enum { MAX_PROMPT = 1 << 24, MAX_OUTPUT = 1 << 20 };

enum { MAX_FIELDS = 64 };

typedef struct field {
    const char *s;
    size_t n;
} field;

enum { COL_TIME, COL_PROMPT, COL_OUTPUT, NCOL };

static const char *const col_names[NCOL][2] = {
    {"timestamp", NULL},
    {"contexttokens", "request tokens"},
    {"generatedtokens", "response tokens"},
};

/* The fields of one line [s, s + n): comma separated, each trimmed of
 * spaces, double quotes around a field removed ("" inside it is kept as
 * written: no trace field carries one). Returns the count, or -1 past
 * MAX_FIELDS or at an unclosed quote. */
static int split(const char *s, size_t n, field *f)
{
    int k = 0;
    size_t i = 0;
    for (;;) {
        if (k == MAX_FIELDS)
            return -1;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        size_t a = i, b;
        if (i < n && s[i] == '"') {
            a = ++i;
            while (i < n && !(s[i] == '"' && (i + 1 == n || s[i + 1] != '"')))
                i += s[i] == '"' ? 2 : 1;
            if (i >= n)
                return -1;
            b = i++;
            while (i < n && (s[i] == ' ' || s[i] == '\t'))
                i++;
            if (i < n && s[i] != ',')
                return -1;
        } else {
            while (i < n && s[i] != ',')
                i++;
            b = i;
            while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
                b--;
        }
        f[k++] = (field){s + a, b - a};
        if (i >= n)
            return k;
        i++; /* the comma */
    }
}

static int name_is(const field *f, const char *name)
{
    size_t m = strlen(name);
    if (f->n != m)
        return 0;
    for (size_t i = 0; i < m; i++)
        if (tolower((unsigned char)f->s[i]) != name[i])
            return 0;
    return 1;
}

/* Digits [p, p + n) as an integer of at most max; -1 if not. */
static int64_t digits(const char *p, size_t n, int64_t max)
{
    if (n == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9' || v > (max - (p[i] - '0')) / 10)
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1, doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in(int64_t y, int64_t m)
{
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return dm[m - 1] + (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
}

/* Seconds and a fraction [p, p + n) ("12" or "12.5"), at most max whole. */
static int seconds(const char *p, size_t n, int64_t max, double *out)
{
    size_t dot = 0;
    while (dot < n && p[dot] != '.')
        dot++;
    const int64_t whole = digits(p, dot, max);
    if (whole < 0 || (dot < n && dot + 1 == n))
        return 0;
    double frac = 0, scale = 0.1;
    for (size_t i = dot + 1; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        frac += (p[i] - '0') * scale;
    }
    *out = (double)whole + frac;
    return 1;
}

/* A timestamp: seconds ("1043.5"), or "YYYY-MM-DD HH:MM:SS[.f]" (or with a
 * 'T'), optionally "Z" or a "+HH:MM" / "-HH:MM" offset; seconds since
 * 1970 UTC for a date. *form: 0 either (then set: 1 seconds, 2 a date), else
 * that one alone (a trace mixing them would put decades between rows). */
static int timestamp(const char *p, size_t n, int *form, double *out)
{
    if (*form != 2 && seconds(p, n, INT64_C(1) << 40, out))
        return *form = 1;
    if (*form == 1)
        return 0;
    if (n < 19 || p[4] != '-' || p[7] != '-' || (p[10] != ' ' && p[10] != 'T') || p[13] != ':' || p[16] != ':')
        return 0;
    const int64_t y = digits(p, 4, 9999), mo = digits(p + 5, 2, 12), d = digits(p + 8, 2, 31);
    const int64_t h = digits(p + 11, 2, 23), mi = digits(p + 14, 2, 59);
    if (y < 1 || mo < 1 || d < 1 || h < 0 || mi < 0 || d > days_in(y, mo))
        return 0;
    size_t end = 19; /* SS, then .f, then the offset if any */
    if (end < n && p[end] == '.')
        for (end++; end < n && p[end] >= '0' && p[end] <= '9';)
            end++;
    double sec;
    if (digits(p + 17, 2, 60) < 0 || end == 20 || !seconds(p + 17, end - 17, 60, &sec))
        return 0;
    double offset = 0;
    if (end < n && p[end] == 'Z') {
        if (end + 1 != n)
            return 0;
    } else if (end < n) {
        if (n - end != 6 || (p[end] != '+' && p[end] != '-') || p[end + 3] != ':')
            return 0;
        const int64_t oh = digits(p + end + 1, 2, 23), om = digits(p + end + 4, 2, 59);
        if (oh < 0 || om < 0)
            return 0;
        offset = (p[end] == '+' ? 1 : -1) * (double)(oh * 3600 + om * 60);
    }
    *out = (double)(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) + sec - offset;
    return *form = 2;
}

void epm_serving_trace_destroy(epm_serving_trace *t)
{
    if (!t)
        return;
    epm_free(t->arrival);
    epm_free(t->prompt_len);
    epm_free(t->output_len);
    epm_free(t->hash_off);
    epm_free(t->hash_ids);
    epm_free(t);
}

/* Whether the text's first non-blank line is a JSON object naming a
 * timestamp and an input length: Mooncake's form. */
static int mooncake_form(const char *text, size_t len)
{
    size_t i = 0, e;
    while (i < len && isspace((unsigned char)text[i]))
        i++;
    if (i == len || text[i] != '{')
        return 0;
    for (e = i; e < len && text[e] != '\n';)
        e++;
    int time = 0, in = 0;
    for (size_t j = i; j < e; j++) {
        time |= e - j >= 11 && !memcmp(text + j, "\"timestamp\"", 11);
        in |= e - j >= 14 && !memcmp(text + j, "\"input_length\"", 14);
    }
    return time && in;
}

int epm_serving_trace_is(const char *path)
{
    const size_t n = path ? strlen(path) : 0;
    if (n > 4 && (!strcmp(path + n - 4, ".csv") || !strcmp(path + n - 4, ".CSV")))
        return 1;
    FILE *f = n ? fopen(path, "rb") : NULL;
    if (!f)
        return 0;
    char head[65536]; /* a first line's hashes: 4 KB for a 100k-token prompt */
    const size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    return mooncake_form(head, got);
}

typedef struct row {
    double t;
    int64_t at; /* its place in the file: the tie rule of the sort */
    int32_t prompt, output;
    int64_t hash_at, hashes; /* Mooncake's block hashes: where in the list read, how many */
} row;

static int by_time(const void *a, const void *b)
{
    const row *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return (x->at > y->at) - (x->at < y->at);
}

/* Grows the array *p of *cap elements of elem bytes to hold one more than n. */
static epm_status room(void **p, size_t elem, int64_t n, int64_t *cap)
{
    if (n < *cap)
        return EPM_OK;
    const int64_t c = *cap ? 2 * *cap : 1024;
    size_t bytes;
    if (!epm_mul_ok((size_t)c, elem, &bytes))
        return EPM_ERR_NOMEM;
    void *grown = epm_realloc(*p, bytes);
    if (!grown)
        return EPM_ERR_NOMEM;
    *p = grown;
    *cap = c;
    return EPM_OK;
}

static epm_status parse_rows(const char *text, size_t len, const char *label, row **rows_out, int64_t *nrows,
                             int64_t *skipped, const char **format)
{
    field f[MAX_FIELDS];
    int col[NCOL] = {-1, -1, -1}, nhead = 0, form = 0;
    int64_t line = 0, cap = 0, n = 0;
    row *rows = NULL;
    char b1[64], b2[64];
    size_t i = 0;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) /* a UTF-8 byte order mark */
        i = 3;
    epm_status st = EPM_OK;
    while (i < len && st == EPM_OK) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        const size_t next = e + 1;
        line++;
        if (e > i && text[e - 1] == '\r')
            e--;
        size_t a = i;
        while (a < e && (text[a] == ' ' || text[a] == '\t'))
            a++;
        i = next;
        if (a == e) /* a blank line */
            continue;
        const int k = split(text + a, e - a, f);
        if (k < 0) {
            st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: '%s' is not a CSV row (an unclosed quote, or more than %d fields)",
                          label, (long long)line, epm_text_shown(text + a, e - a, b1), MAX_FIELDS);
            break;
        }
        if (nhead == 0) { /* the header: each column by its name */
            nhead = k;
            for (int c = 0; c < k; c++)
                for (int w = 0; w < NCOL; w++)
                    for (int v = 0; v < 2; v++)
                        if (col_names[w][v] && name_is(&f[c], col_names[w][v])) {
                            if (col[w] >= 0) {
                                st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: two columns named '%s'", label,
                                              (long long)line, epm_text_shown(f[c].s, f[c].n, b1));
                                goto out;
                            }
                            col[w] = c;
                            if (w == COL_PROMPT)
                                *format = v == 0 ? "Azure LLM inference trace" : "BurstGPT";
                        }
            for (int w = 0; w < NCOL; w++)
                if (col[w] < 0) {
                    st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: the header '%s' has no %s column (a serving trace: "
                                  "TIMESTAMP,ContextTokens,GeneratedTokens as Azure's LLM inference traces, or "
                                  "Timestamp,...,Request tokens,Response tokens,... as BurstGPT)", label,
                                  (long long)line, epm_text_shown(text + a, e - a, b1),
                                  w == COL_TIME ? "timestamp" : w == COL_PROMPT ? "prompt tokens" : "output tokens");
                    goto out;
                }
            if (name_is(&f[col[COL_PROMPT]], "contexttokens") != name_is(&f[col[COL_OUTPUT]], "generatedtokens")) {
                st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: the header '%s' mixes Azure's and BurstGPT's column names",
                              label, (long long)line, epm_text_shown(text + a, e - a, b1));
                goto out;
            }
            continue;
        }
        if (k != nhead) {
            st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: %d fields, the header has %d", label, (long long)line, k, nhead);
            break;
        }
        static const char *const what[NCOL] = {"timestamp", "prompt tokens", "output tokens"};
        row r = {0, n, 0, 0, 0, 0};
        const field *ft = &f[col[COL_TIME]];
        const int was = form;
        if (!timestamp(ft->s, ft->n, &form, &r.t)) {
            st = was ? epm_fail(EPM_ERR_FORMAT, "%s:%lld: %s '%s' is not %s, as the rows before it", label,
                                (long long)line, what[COL_TIME], epm_text_shown(ft->s, ft->n, b1),
                                was == 1 ? "seconds" : "a date and time (YYYY-MM-DD HH:MM:SS[.f][+HH:MM])")
                     : epm_fail(EPM_ERR_FORMAT, "%s:%lld: %s '%s' is neither seconds nor a date and time "
                                "(YYYY-MM-DD HH:MM:SS[.f][+HH:MM])", label, (long long)line, what[COL_TIME],
                                epm_text_shown(ft->s, ft->n, b1));
            break;
        }
        for (int w = COL_PROMPT; w <= COL_OUTPUT; w++) {
            const field *fv = &f[col[w]];
            const int most = w == COL_PROMPT ? MAX_PROMPT : MAX_OUTPUT;
            const int64_t v = digits(fv->s, fv->n, most);
            if (v < 0) {
                st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: %s '%s' is not a count of tokens (0 to %d)", label,
                              (long long)line, what[w], epm_text_shown(fv->s, fv->n, b2), most);
                goto out;
            }
            *(w == COL_PROMPT ? &r.prompt : &r.output) = (int32_t)v;
        }
        if (r.prompt == 0 || r.output == 0) { /* a failed request: nothing to replay */
            ++*skipped;
            continue;
        }
        if ((st = room((void **)&rows, sizeof *rows, n, &cap)) != EPM_OK)
            break;
        rows[n++] = r;
    }
    if (st == EPM_OK && nhead == 0)
        st = epm_fail(EPM_ERR_FORMAT, "%s: empty (a serving trace is a CSV header and a row per request)", label);
out:
    if (st != EPM_OK) {
        epm_free(rows);
        return st;
    }
    *rows_out = rows;
    *nrows = n;
    return EPM_OK;
}

/* A Mooncake line's count: a JSON integer, 0 to max. */
static epm_status json_count(json_t *o, const char *key, int64_t max, const char *label, int64_t line, int64_t *v)
{
    json_t *x = json_object_get(o, key);
    char b[64];
    if (!x)
        return epm_fail(EPM_ERR_FORMAT, "%s:%lld: no \"%s\"", label, (long long)line, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > max)
        return epm_fail(EPM_ERR_FORMAT, "%s:%lld: \"%s\" is %s, not a count (0 to %lld)", label, (long long)line,
                        key, epm_json_show(x, b, sizeof b), (long long)max);
    *v = json_integer_value(x);
    return EPM_OK;
}

/* Mooncake's JSON lines: a request an object; timestamp in milliseconds. */
static epm_status parse_mooncake(const char *text, size_t len, const char *label, row **rows_out, int64_t *nrows,
                                 int64_t *skipped, int64_t **hashes_out, int64_t *nhash)
{
    row *rows = NULL;
    int64_t *hashes = NULL, line = 0, cap = 0, n = 0, hcap = 0, nh = 0;
    epm_status st = EPM_OK;
    char b[64];
    for (size_t i = 0; i < len && st == EPM_OK;) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        const size_t a = i;
        i = e + 1;
        line++;
        size_t k = a;
        while (k < e && isspace((unsigned char)text[k]))
            k++;
        if (k == e) /* a blank line */
            continue;
        json_error_t err;
        json_t *o = json_loadb(text + a, e - a, JSON_REJECT_DUPLICATES, &err);
        if (!o || !json_is_object(o)) {
            st = o ? epm_fail(EPM_ERR_FORMAT, "%s:%lld: a request is a JSON object, not %s", label, (long long)line,
                              epm_json_show(o, b, sizeof b))
                   : epm_fail(EPM_ERR_FORMAT, "%s:%lld: not JSON (%s, column %d)", label, (long long)line, err.text,
                              err.column);
            json_decref(o);
            break;
        }
        row r = {0, n, 0, 0, nh, 0};
        json_t *ts = json_object_get(o, "timestamp"), *h = json_object_get(o, "hash_ids");
        int64_t in = 0, outn = 0;
        if (!ts || !json_is_number(ts) || !(json_number_value(ts) >= 0 && json_number_value(ts) < 1e15))
            st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: \"timestamp\" is %s, not milliseconds (a number >= 0)", label,
                          (long long)line, ts ? epm_json_show(ts, b, sizeof b) : "missing");
        if (st == EPM_OK)
            st = json_count(o, "input_length", MAX_PROMPT, label, line, &in);
        if (st == EPM_OK)
            st = json_count(o, "output_length", MAX_OUTPUT, label, line, &outn);
        if (st == EPM_OK && h && !json_is_array(h))
            st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: \"hash_ids\" is %s, not a list of block hashes", label,
                          (long long)line, epm_json_show(h, b, sizeof b));
        for (size_t j = 0; st == EPM_OK && h && j < json_array_size(h); j++) {
            json_t *x = json_array_get(h, j);
            if (!json_is_integer(x) || json_integer_value(x) < 0) {
                st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: \"hash_ids\"[%zu] is %s, not a block hash (an integer >= 0)",
                              label, (long long)line, j, epm_json_show(x, b, sizeof b));
                break;
            }
            if ((st = room((void **)&hashes, sizeof *hashes, nh, &hcap)) != EPM_OK)
                break;
            hashes[nh++] = json_integer_value(x);
        }
        if (st == EPM_OK) {
            r.t = json_number_value(ts) / 1000;
            r.prompt = (int32_t)in, r.output = (int32_t)outn;
            r.hashes = nh - r.hash_at;
        }
        json_decref(o);
        if (st != EPM_OK)
            break;
        if (r.prompt == 0 || r.output == 0) {
            nh = r.hash_at; /* (its hashes go with it) */
            ++*skipped;
            continue;
        }
        if ((st = room((void **)&rows, sizeof *rows, n, &cap)) != EPM_OK)
            break;
        rows[n++] = r;
    }
    if (st != EPM_OK) {
        epm_free(rows);
        epm_free(hashes);
        return st;
    }
    *rows_out = rows;
    *nrows = n;
    *hashes_out = hashes;
    *nhash = nh;
    return EPM_OK;
}

epm_status epm_serving_trace_parse(const char *text, size_t len, const char *label, epm_serving_trace **out)
{
    *out = NULL;
    row *rows = NULL;
    int64_t n = 0, skipped = 0;
    const char *format = NULL;
    int64_t *hashes = NULL, nhash = 0;
    if (mooncake_form(text, len)) {
        format = "Mooncake trace";
        EPM_CHECK(parse_mooncake(text, len, label, &rows, &n, &skipped, &hashes, &nhash));
    } else {
        EPM_CHECK(parse_rows(text, len, label, &rows, &n, &skipped, &format));
    }
    if (n == 0) {
        epm_free(hashes);
        epm_free(rows);
        return epm_fail(EPM_ERR_FORMAT, "%s: no request with prompt and output tokens (%lld rows left out)", label,
                        (long long)skipped);
    }
    epm_serving_trace *t = epm_calloc(1, sizeof *t);
    if (t) {
        t->arrival = epm_malloc((size_t)n * sizeof *t->arrival);
        t->prompt_len = epm_malloc((size_t)n * sizeof *t->prompt_len);
        t->output_len = epm_malloc((size_t)n * sizeof *t->output_len);
    }
    if (t && hashes) {
        t->hash_off = epm_malloc((size_t)(n + 1) * sizeof *t->hash_off);
        t->hash_ids = epm_malloc((size_t)(nhash ? nhash : 1) * sizeof *t->hash_ids);
    }
    if (!t || !t->arrival || !t->prompt_len || !t->output_len || (hashes && (!t->hash_off || !t->hash_ids))) {
        epm_serving_trace_destroy(t);
        epm_free(hashes);
        epm_free(rows);
        return EPM_ERR_NOMEM;
    }
    for (int64_t i = 1; i < n; i++)
        t->reordered |= rows[i].t < rows[i - 1].t;
    if (t->reordered)
        qsort(rows, (size_t)n, sizeof *rows, by_time);
    if (hashes)
        t->hash_off[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        t->arrival[i] = rows[i].t - rows[0].t;
        t->prompt_len[i] = rows[i].prompt;
        t->output_len[i] = rows[i].output;
        if (hashes) { /* in arrival order too */
            t->hash_off[i + 1] = t->hash_off[i] + rows[i].hashes;
            memcpy(t->hash_ids + t->hash_off[i], hashes + rows[i].hash_at, (size_t)rows[i].hashes * sizeof *hashes);
        }
    }

    t->n = n;
    t->rows = n + skipped;
    t->skipped = skipped;
    t->format = format;
    epm_free(hashes);
    epm_free(rows);
    *out = t;
    return EPM_OK;
}

epm_status epm_serving_trace_load(const char *path, epm_serving_trace **out)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    EPM_CHECK(epm_read_file(path, (size_t)1 << 32, &text, &len));
    epm_status st = epm_serving_trace_parse(text, len, path, out);
    epm_free(text);
    return st;
}
