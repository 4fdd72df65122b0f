/* Hosts for a launch: Open MPI hostfiles and --host lists, checked so that a
 * mistake is named (file, line, value) before any daemon starts. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core.h"
#include "epmoe/launch.h"

#define HOSTFILE_MAX_BYTES (16u << 20)
#define SLOTS_MAX 1000000L

typedef struct host {
    char *spec; /* as written: [user@]name */
    const char *name;
    int slots, max_slots, line;
} host;

struct epm_hostlist {
    host *hosts;
    int count, cap;
    char label[256];
};

static int name_char(char c) { return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_'; }

/* [user@]name, name of letters, digits, '.', '-', '_' not starting with '-' or '.'. */
static epm_status check_spec(const char *label, int line, const char *s, size_t n, size_t *name_off)
{
    char b[64];
    const char *at = memchr(s, '@', n);
    size_t off = at ? (size_t)(at - s) + 1 : 0;
    if (n > EPM_HOSTNAME_MAX)
        return epm_fail(EPM_ERR_FORMAT, "%s:%d: host '%s' is longer than %d characters", label, line,
                        epm_text_shown(s, n, b), EPM_HOSTNAME_MAX);
    if (off == n || (at && off == 1))
        return epm_fail(EPM_ERR_FORMAT, "%s:%d: host '%s' has an empty %s", label, line, epm_text_shown(s, n, b),
                        off == n ? "name" : "user");
    for (size_t i = 0; i < n; i++) {
        if (i + 1 == off)
            continue;
        if (!name_char(s[i]) || ((i == 0 || i == off) && (s[i] == '-' || s[i] == '.')))
            return epm_fail(EPM_ERR_FORMAT,
                            "%s:%d: host '%s': character '%s' is not allowed in a host name "
                            "(letters, digits, '.', '-', '_', one 'user@' prefix)",
                            label, line, epm_text_shown(s, n, b), epm_text_shown(s + i, 1, (char[64]){0}));
    }
    *name_off = off;
    return EPM_OK;
}

static epm_status parse_count(const char *label, int line, const char *key, const char *v, size_t n, int *out)
{
    char b[64], buf[32];
    if (n == 0 || n >= sizeof buf)
        return epm_fail(EPM_ERR_FORMAT, "%s:%d: %s='%s' is not an integer in [1, %ld]", label, line, key,
                        epm_text_shown(v, n, b), SLOTS_MAX);
    memcpy(buf, v, n);
    buf[n] = 0;
    char *end;
    errno = 0;
    long x = strtol(buf, &end, 10);
    if (errno || *end || !isdigit((unsigned char)buf[0]) || x < 1 || x > SLOTS_MAX)
        return epm_fail(EPM_ERR_FORMAT, "%s:%d: %s='%s' is not an integer in [1, %ld]", label, line, key,
                        epm_text_shown(v, n, b), SLOTS_MAX);
    *out = (int)x;
    return EPM_OK;
}

static epm_status add_host(epm_hostlist *h, const char *label, int line, const char *s, size_t n, int slots,
                           int max_slots)
{
    char b[64];
    size_t off = 0;
    EPM_CHECK(check_spec(label, line, s, n, &off));
    for (int i = 0; i < h->count; i++)
        if (strlen(h->hosts[i].name) == n - off && !strncasecmp(h->hosts[i].name, s + off, n - off))
            return epm_fail(EPM_ERR_FORMAT,
                            "%s:%d: host '%s' is already listed at %s %d; list each node once "
                            "(Open MPI would add the slots together)",
                            label, line, epm_text_shown(s + off, n - off, b), h->label[0] == '-' ? "entry" : "line",
                            h->hosts[i].line);
    if (max_slots && slots > max_slots)
        return epm_fail(EPM_ERR_FORMAT, "%s:%d: host '%s': slots=%d is more than max_slots=%d", label, line,
                        epm_text_shown(s, n, b), slots, max_slots);
    if (h->count == h->cap) {
        int cap = h->cap ? 2 * h->cap : 8;
        host *p = epm_realloc(h->hosts, (size_t)cap * sizeof *p);
        if (!p)
            return EPM_ERR_NOMEM;
        h->hosts = p;
        h->cap = cap;
    }
    char *spec = epm_malloc(n + 1);
    if (!spec)
        return EPM_ERR_NOMEM;
    memcpy(spec, s, n);
    spec[n] = 0;
    h->hosts[h->count++] = (host){spec, spec + off, slots, max_slots, line};
    return EPM_OK;
}

static epm_status new_list(const char *label, epm_hostlist **out)
{
    epm_hostlist *h = epm_calloc(1, sizeof *h);
    if (!h)
        return EPM_ERR_NOMEM;
    snprintf(h->label, sizeof h->label, "%s", label ? label : "hostfile");
    *out = h;
    return EPM_OK;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

/* One line without its comment: "name key=value ...". */
static epm_status parse_line(epm_hostlist *h, const char *label, int line, const char *s, size_t n)
{
    char b[64];
    size_t i = 0;
    while (i < n && is_space(s[i]))
        i++;
    if (i == n)
        return EPM_OK;
    size_t ns = i;
    while (i < n && !is_space(s[i]))
        i++;
    const char *name = s + ns;
    size_t name_len = i - ns;
    int slots = 0, max_slots = 0, seen_slots = 0, seen_max = 0;
    for (;;) {
        while (i < n && is_space(s[i]))
            i++;
        if (i == n)
            break;
        size_t ts = i;
        while (i < n && !is_space(s[i]))
            i++;
        const char *tok = s + ts, *eq = memchr(tok, '=', i - ts);
        size_t klen = eq ? (size_t)(eq - tok) : i - ts;
        const char *v = eq ? eq + 1 : tok + klen;
        size_t vlen = (size_t)(s + i - v);
        if (!eq)
            return epm_fail(EPM_ERR_FORMAT, "%s:%d: '%s' after host '%s' is not key=value "
                            "(slots=N, max_slots=M)", label, line, epm_text_shown(tok, i - ts, b),
                            epm_text_shown(name, name_len, (char[64]){0}));
        if (klen == 5 && !memcmp(tok, "slots", 5)) {
            if (seen_slots++)
                return epm_fail(EPM_ERR_FORMAT, "%s:%d: slots given twice", label, line);
            EPM_CHECK(parse_count(label, line, "slots", v, vlen, &slots));
        } else if (klen == 9 && (!memcmp(tok, "max_slots", 9) || !memcmp(tok, "max-slots", 9))) {
            if (seen_max++)
                return epm_fail(EPM_ERR_FORMAT, "%s:%d: max_slots given twice", label, line);
            EPM_CHECK(parse_count(label, line, "max_slots", v, vlen, &max_slots));
        } else {
            return epm_fail(EPM_ERR_FORMAT, "%s:%d: unknown key '%s' (known: slots, max_slots)", label, line,
                            epm_text_shown(tok, klen, b));
        }
    }
    return add_host(h, label, line, name, name_len, slots, max_slots);
}

epm_status epm_hostfile_parse(const char *text, size_t len, const char *label, epm_hostlist **out)
{
    if (!out || (!text && len))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_hostfile_parse: NULL argument");
    *out = NULL;
    label = label ? label : "hostfile";
    epm_hostlist *h = NULL;
    EPM_CHECK(new_list(label, &h));
    epm_status st = EPM_OK;
    size_t pos = 0;
    for (int line = 1; pos < len && st == EPM_OK; line++) {
        const char *s = text + pos, *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (memchr(s, 0, n)) {
            st = epm_fail(EPM_ERR_FORMAT, "%s:%d: NUL byte: not a text hostfile", label, line);
            break;
        }
        const char *hash = memchr(s, '#', n);
        st = parse_line(h, label, line, s, hash ? (size_t)(hash - s) : n);
    }
    if (st == EPM_OK && h->count == 0)
        st = epm_fail(EPM_ERR_FORMAT, "%s: no hosts (only blank lines and comments)", label);
    if (st != EPM_OK) {
        epm_hostlist_destroy(h);
        return st;
    }
    *out = h;
    return EPM_OK;
}

epm_status epm_hostfile_load(const char *path, epm_hostlist **out)
{
    if (!path || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_hostfile_load: NULL argument");
    char *text = NULL;
    size_t n = 0;
    EPM_CHECK(epm_read_file(path, HOSTFILE_MAX_BYTES, &text, &n));
    epm_status st = epm_hostfile_parse(text, n, path, out);
    epm_free(text);
    return st;
}

epm_status epm_hosts_parse(const char *list, epm_hostlist **out)
{
    if (!list || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_hosts_parse: NULL argument");
    *out = NULL;
    const char *label = "--hosts";
    epm_hostlist *h = NULL;
    EPM_CHECK(new_list(label, &h));
    epm_status st = EPM_OK;
    const char *s = list;
    for (int entry = 1; st == EPM_OK; entry++) {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        const char *colon = memchr(s, ':', n);
        size_t name_len = colon ? (size_t)(colon - s) : n;
        int slots = 1;
        if (n == 0)
            st = epm_fail(EPM_ERR_FORMAT, "%s: entry %d of '%s' is empty", label, entry,
                          epm_text_shown(list, strlen(list), (char[64]){0}));
        else if (colon)
            st = parse_count(label, entry, "slots", colon + 1, n - name_len - 1, &slots);
        if (st == EPM_OK)
            st = add_host(h, label, entry, s, name_len, slots, 0);
        if (!comma)
            break;
        s = comma + 1;
    }
    if (st != EPM_OK) {
        epm_hostlist_destroy(h);
        return st;
    }
    *out = h;
    return EPM_OK;
}

void epm_hostlist_destroy(epm_hostlist *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->count; i++)
        epm_free(h->hosts[i].spec);
    epm_free(h->hosts);
    epm_free(h);
}

int epm_hostlist_count(const epm_hostlist *h) { return h ? h->count : 0; }

static const host *at(const epm_hostlist *h, int i) { return h && i >= 0 && i < h->count ? &h->hosts[i] : NULL; }

const char *epm_hostlist_name(const epm_hostlist *h, int i) { return at(h, i) ? at(h, i)->name : NULL; }
const char *epm_hostlist_spec(const epm_hostlist *h, int i) { return at(h, i) ? at(h, i)->spec : NULL; }
int epm_hostlist_slots(const epm_hostlist *h, int i) { return at(h, i) ? at(h, i)->slots : 0; }
int epm_hostlist_max_slots(const epm_hostlist *h, int i) { return at(h, i) ? at(h, i)->max_slots : 0; }
int epm_hostlist_line(const epm_hostlist *h, int i) { return at(h, i) ? at(h, i)->line : 0; }
const char *epm_hostlist_label(const epm_hostlist *h) { return h ? h->label : ""; }

long epm_hostlist_total_slots(const epm_hostlist *h)
{
    long t = 0;
    for (int i = 0; h && i < h->count; i++) {
        if (h->hosts[i].slots == 0)
            return -1;
        t += h->hosts[i].slots;
    }
    return t;
}
