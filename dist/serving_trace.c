/* Production serving traces as CSV (serving_trace.h). The text is read by
 * length alone (not NUL-terminated: the fuzz target feeds raw bytes). */
#include "serving_trace.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

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
 * 1970 UTC for a date. */
static int timestamp(const char *p, size_t n, double *out)
{
    if (seconds(p, n, INT64_C(1) << 40, out))
        return 1;
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
        if (n - end != 6 || p[end + 3] != ':')
            return 0;
        const int64_t oh = digits(p + end + 1, 2, 23), om = digits(p + end + 4, 2, 59);
        if (oh < 0 || om < 0)
            return 0;
        offset = (p[end] == '+' ? 1 : -1) * (double)(oh * 3600 + om * 60);
    }
    *out = (double)(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) + sec - offset;
    return 1;
}

void epm_serving_trace_destroy(epm_serving_trace *t)
{
    if (!t)
        return;
    epm_free(t->arrival);
    epm_free(t->prompt_len);
    epm_free(t->output_len);
    epm_free(t);
}

int epm_serving_trace_is(const char *path)
{
    const size_t n = path ? strlen(path) : 0;
    return n > 4 && (!strcmp(path + n - 4, ".csv") || !strcmp(path + n - 4, ".CSV"));
}

typedef struct row {
    double t;
    int64_t at; /* its place in the file: the tie rule of the sort */
    int32_t prompt, output;
} row;

static int by_time(const void *a, const void *b)
{
    const row *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return (x->at > y->at) - (x->at < y->at);
}

/* Grows rows to hold one more. */
static epm_status room(row **rows, int64_t n, int64_t *cap)
{
    if (n < *cap)
        return EPM_OK;
    const int64_t c = *cap ? 2 * *cap : 1024;
    size_t bytes;
    if (!epm_mul_ok((size_t)c, sizeof **rows, &bytes))
        return EPM_ERR_NOMEM;
    row *r = epm_realloc(*rows, bytes);
    if (!r)
        return EPM_ERR_NOMEM;
    *rows = r;
    *cap = c;
    return EPM_OK;
}

static epm_status parse_rows(const char *text, size_t len, const char *label, row **rows_out, int64_t *nrows,
                             int64_t *skipped, const char **format)
{
    field f[MAX_FIELDS];
    int col[NCOL] = {-1, -1, -1}, nhead = 0;
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
        row r = {0, n, 0, 0};
        const field *ft = &f[col[COL_TIME]];
        if (!timestamp(ft->s, ft->n, &r.t)) {
            st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: %s '%s' is neither seconds nor a date and time "
                          "(YYYY-MM-DD HH:MM:SS[.f][+HH:MM])", label, (long long)line, what[COL_TIME],
                          epm_text_shown(ft->s, ft->n, b1));
            break;
        }
        for (int w = COL_PROMPT; w <= COL_OUTPUT; w++) {
            const field *fv = &f[col[w]];
            const int64_t v = digits(fv->s, fv->n, INT32_MAX);
            if (v < 0) {
                st = epm_fail(EPM_ERR_FORMAT, "%s:%lld: %s '%s' is not a count of tokens (0 to %d)", label,
                              (long long)line, what[w], epm_text_shown(fv->s, fv->n, b2), INT32_MAX);
                goto out;
            }
            *(w == COL_PROMPT ? &r.prompt : &r.output) = (int32_t)v;
        }
        if (r.prompt == 0 || r.output == 0) { /* a failed request: nothing to replay */
            ++*skipped;
            continue;
        }
        if ((st = room(&rows, n, &cap)) != EPM_OK)
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

epm_status epm_serving_trace_parse(const char *text, size_t len, const char *label, epm_serving_trace **out)
{
    *out = NULL;
    row *rows = NULL;
    int64_t n = 0, skipped = 0;
    const char *format = NULL;
    EPM_CHECK(parse_rows(text, len, label, &rows, &n, &skipped, &format));
    if (n == 0) {
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
    if (!t || !t->arrival || !t->prompt_len || !t->output_len) {
        epm_serving_trace_destroy(t);
        epm_free(rows);
        return EPM_ERR_NOMEM;
    }
    for (int64_t i = 1; i < n; i++)
        t->reordered |= rows[i].t < rows[i - 1].t;
    if (t->reordered)
        qsort(rows, (size_t)n, sizeof *rows, by_time);
    for (int64_t i = 0; i < n; i++) {
        t->arrival[i] = rows[i].t - rows[0].t;
        t->prompt_len[i] = rows[i].prompt;
        t->output_len[i] = rows[i].output;
    }
    t->n = n;
    t->rows = n + skipped;
    t->skipped = skipped;
    t->format = format;
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
