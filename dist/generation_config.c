/* generation_config.json, the decoding defaults a checkpoint ships with, read
 * as transformers' GenerationConfig reads it: sampling only where do_sample is
 * true, with its defaults (temperature 1, top_k 50) for what the file leaves
 * out; min_new_tokens and repetition_penalty either way. Decoding methods epmoe does not run (beam search, typical sampling,
 * epsilon and eta cutoffs, n-gram bans) are refused by name rather than
 * ignored: they would change the tokens. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"
#include "json_show.h"
#include "epmoe/generate.h"

static epm_status bad(const char *label, const char *key, json_t *v, epm_status code, const char *why)
{
    char b[96];
    return epm_fail(code, "%s: field '%s' = %s: %s", label, key, epm_json_show(v, b, sizeof b), why);
}

/* eos_token_id: absent or null (no stop token), an id, or a list of ids */
static epm_status parse_eos(json_t *root, const char *label, epm_generation_config *g, int *present)
{
    json_t *v = json_object_get(root, "eos_token_id");
    *present = v != NULL;
    g->n_eos = 0;
    if (!v || json_is_null(v))
        return EPM_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (n > EPM_MAX_STOP_IDS)
        return bad(label, "eos_token_id", v, EPM_ERR_UNSUPPORTED, "epmoe takes at most 64 stop tokens");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return bad(label, "eos_token_id", v, EPM_ERR_FORMAT, "must be a token id >= 0, a list of them, or null");
        g->eos[g->n_eos++] = (int32_t)json_integer_value(e);
    }
    return EPM_OK;
}

/* A number in [lo, hi] (open where lo_open / hi_open), or absent/null (keeps *out). */
static epm_status get_num(json_t *root, const char *label, const char *key, double lo, int lo_open, double hi,
                          int hi_open, double *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return EPM_OK;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= lo && x <= hi) || (lo_open && x == lo) || (hi_open && x == hi)) {
        char why[96];
        snprintf(why, sizeof why, "must be a number in %c%g, %g%c", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
        return bad(label, key, v, EPM_ERR_FORMAT, why);
    }
    *out = x;
    return EPM_OK;
}

/* A field whose only value epmoe runs is `neutral` (or absent, or null). */
static epm_status neutral(json_t *root, const char *label, const char *key, double neutral_value, const char *what)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || (json_is_number(v) && json_number_value(v) == neutral_value))
        return EPM_OK;
    char why[160];
    snprintf(why, sizeof why, "epmoe does not run %s (use --generation-config none, or a copy of the file without it)",
             what);
    return bad(label, key, v, EPM_ERR_UNSUPPORTED, why);
}

/* A field whose only value epmoe runs is absent, null, or empty (a list or object). */
static epm_status none_given(json_t *root, const char *label, const char *key, const char *what)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || (json_is_array(v) && !json_array_size(v)) || (json_is_object(v) && !json_object_size(v)))
        return EPM_OK;
    char why[160];
    snprintf(why, sizeof why, "epmoe does not run %s (use --generation-config none, or a copy of the file without it)",
             what);
    return bad(label, key, v, EPM_ERR_UNSUPPORTED, why);
}

static epm_status parse(json_t *root, const char *label, epm_generation_config *g, int *eos_present)
{
    if (!json_is_object(root))
        return epm_fail(EPM_ERR_FORMAT, "%s: not a JSON object", label);
    EPM_CHECK(parse_eos(root, label, g, eos_present));
    json_t *v = json_object_get(root, "do_sample");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return bad(label, "do_sample", v, EPM_ERR_FORMAT, "must be true or false");
    g->do_sample = v && json_is_true(v);
    /* transformers' defaults where the file is silent */
    double temperature = 1, top_p = 1, min_p = 0, rp = 1, top_k = 50;
    EPM_CHECK(get_num(root, label, "temperature", 0, 0, 1e6, 0, &temperature));
    EPM_CHECK(get_num(root, label, "top_p", 0, 1, 1, 0, &top_p));
    EPM_CHECK(get_num(root, label, "min_p", 0, 0, 1, 1, &min_p));
    EPM_CHECK(get_num(root, label, "repetition_penalty", EPM_REPETITION_PENALTY_MIN, 0, EPM_REPETITION_PENALTY_MAX, 0,
                      &rp));
    v = json_object_get(root, "top_k");
    if (v && json_is_null(v))
        top_k = 0; /* None: no top-k */
    else if (v && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX))
        return bad(label, "top_k", v, EPM_ERR_FORMAT, "must be an integer >= 0, or null");
    else if (v)
        top_k = (double)json_integer_value(v);
    EPM_CHECK(neutral(root, label, "num_beams", 1, "beam search"));
    EPM_CHECK(neutral(root, label, "no_repeat_ngram_size", 0, "n-gram bans"));
    EPM_CHECK(neutral(root, label, "penalty_alpha", 0, "contrastive search"));
    EPM_CHECK(neutral(root, label, "min_length", 0, "a minimum length counting the prompt (min_new_tokens is "
                      "run)"));
    v = json_object_get(root, "min_new_tokens");
    if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX))
        return bad(label, "min_new_tokens", v, EPM_ERR_FORMAT, "must be an integer >= 0, or null");
    const int min_new = v && json_is_integer(v) ? (int)json_integer_value(v) : 0;
    EPM_CHECK(none_given(root, label, "suppress_tokens", "token suppression"));
    EPM_CHECK(none_given(root, label, "begin_suppress_tokens", "token suppression"));
    EPM_CHECK(none_given(root, label, "bad_words_ids", "banned words"));
    EPM_CHECK(none_given(root, label, "sequence_bias", "sequence biases"));
    EPM_CHECK(none_given(root, label, "forced_bos_token_id", "forced tokens"));
    EPM_CHECK(none_given(root, label, "forced_eos_token_id", "forced tokens"));
    if (g->do_sample) {
        EPM_CHECK(neutral(root, label, "typical_p", 1, "typical sampling"));
        EPM_CHECK(neutral(root, label, "epsilon_cutoff", 0, "epsilon sampling"));
        EPM_CHECK(neutral(root, label, "eta_cutoff", 0, "eta sampling"));
    }
    memset(&g->if_sampled, 0, sizeof g->if_sampled);
    g->if_sampled.temperature = temperature; /* 0 is greedy, as vLLM takes it */
    g->if_sampled.top_k = (int)top_k;
    g->if_sampled.top_p = top_p;
    g->if_sampled.min_p = min_p;
    g->if_sampled.repetition_penalty = rp;
    g->if_sampled.min_tokens = min_new;
    memset(&g->sampling, 0, sizeof g->sampling);
    g->sampling.repetition_penalty = rp;
    g->sampling.min_tokens = min_new;
    if (g->do_sample)
        g->sampling = g->if_sampled;
    return EPM_OK;
}

static epm_status parse_text(const char *text, size_t len, const char *label, epm_generation_config *g,
                             int *eos_present)
{
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", label, err.line, err.text);
    epm_status st = parse(root, label, g, eos_present);
    json_decref(root);
    return st;
}

epm_status epm_generation_config_parse(const char *text, size_t len, const char *label, epm_generation_config *out)
{
    if (!text || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_generation_config_parse: NULL argument");
    memset(out, 0, sizeof *out);
    int eos_present;
    epm_status st = parse_text(text, len, label ? label : "generation_config.json", out, &eos_present);
    if (st != EPM_OK)
        memset(out, 0, sizeof *out);
    return st;
}

epm_status epm_generation_config_eos(const char *model_dir, epm_generation_config *out)
{
    if (!model_dir || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_generation_config_eos: NULL argument");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", model_dir) >= (int)sizeof path)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", model_dir);
    char *text;
    size_t n;
    EPM_CHECK(epm_read_file(path, (size_t)16 << 20, &text, &n));
    json_error_t err;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
    epm_free(text);
    if (!root)
        return epm_fail(EPM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, err.line, err.text);
    int present;
    epm_status st = json_is_object(root) ? parse_eos(root, path, out, &present)
                                         : epm_fail(EPM_ERR_FORMAT, "%s: not a JSON object", path);
    json_decref(root);
    return st;
}

epm_status epm_generation_config_load(const char *model_dir, const char *path, epm_generation_config *out)
{
    if (!model_dir || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_generation_config_load: NULL argument");
    memset(out, 0, sizeof *out);
    char own[4096];
    if (!path) {
        if (snprintf(own, sizeof own, "%s/generation_config.json", model_dir) >= (int)sizeof own)
            return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", model_dir);
        struct stat sb;
        if (stat(own, &sb) == 0)
            path = own;
        else if (errno != ENOENT)
            return epm_fail(EPM_ERR_IO, "%s: %s", own, strerror(errno));
    }
    int eos_present = 0;
    epm_status st = EPM_OK;
    if (path) {
        char *text;
        size_t n;
        st = epm_read_file(path, (size_t)16 << 20, &text, &n);
        if (st == EPM_OK) {
            st = parse_text(text, n, path, out, &eos_present);
            epm_free(text);
        }
    } else {
        /* no file: transformers' GenerationConfig defaults all the same
         * (greedy; top_k 50 should a flag turn sampling on) */
        st = parse_text("{}", 2, own, out, &eos_present);
    }
    if (st == EPM_OK && !eos_present)
        st = epm_generation_config_eos(model_dir, out);
    if (st != EPM_OK)
        memset(out, 0, sizeof *out);
    return st;
}
