/* Shared pieces of the epmoe command line (not part of the library). */
#ifndef EPM_CLI_H
#define EPM_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "epmoe/epmoe.h"

/* Exit codes: 0 success, 1 the work failed (bad file, solver, MPI), 2 usage. */
enum { EPM_EXIT_OK = 0, EPM_EXIT_FAIL = 1, EPM_EXIT_USAGE = 2 };

/* Prints "epmoe <what>: error: <status>: <detail>" to stderr; returns EPM_EXIT_FAIL. */
int cli_fail(const char *what, epm_status st);
/* cli_fail for a failure every rank agreed on: the ranks that only heard of
 * it (EPM_ERR_REMOTE) stay silent, so the job prints it once. */
int cli_fail_agreed(const char *what, epm_status st);
/* Prints "epmoe <what>: <message>" and a hint to use --help; returns EPM_EXIT_USAGE. */
int cli_usage_error(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* --virtual-nodes that does not divide the job's ranks (MPI started to know
 * them): rank 0 says so, MPI is finalized, and every rank gets
 * EPM_EXIT_USAGE alike, before any collective; else EPM_EXIT_OK. 0: not given. */
int cli_virtual_nodes_usage(const char *what, long virtual_nodes);

/* Online rebalancing's options beside --eplb-interval (0: not given): orphan
 * names the first other one given (NULL: none), refused without an
 * interval, and a window beyond the interval is refused; returns
 * EPM_EXIT_USAGE after the message, else EPM_EXIT_OK. */
int cli_eplb_usage(const char *what, long interval, long window, long lag, const char *orphan);

/* A slots flag (--slots, --eplb-slots; 0: not given) and --redundant-experts
 * (< 0: not given) each set the slots a rank holds: both given are refused
 * (EPM_EXIT_USAGE after the message), else EPM_EXIT_OK. */
int cli_slots_or_redundant(const char *what, const char *flag, long slots, long redundant);

/* Progress callback: "[  12.3s] message" on stderr. */
void cli_progress(void *user, const char *message);

/* For getopt_long's '?' (opterr is 0: getopt prints nothing itself): says
 * which option was unknown or lacks its value; returns EPM_EXIT_USAGE. */
int cli_option_error(const char *what, char **argv);
struct option;
/* For an option of a table two commands share (plan, plan eval) that this
 * one does not take: names it; returns EPM_EXIT_USAGE. */
int cli_option_not_here(const char *what, int code, const struct option *opts);
/* Before getopt_long: every "--name" in argv[1..] must be an option of opts
 * spelled out whole. getopt_long takes an unambiguous prefix for the option
 * it begins (run --trace as --trace-out, which would overwrite the trace);
 * here it is refused, naming the options it begins. Scanning stops at "--",
 * and with stop_at_word at the first word that is not an option (the
 * command of epmoe launch). opts is a struct option array. EPM_EXIT_OK, or
 * EPM_EXIT_USAGE after the message. */
int cli_exact_options(const char *what, int argc, char **argv, const struct option *opts, int stop_at_word);

/* Strict number parsing for option values; the error names the option and value. */
int cli_parse_int(const char *what, const char *opt, const char *val, long lo, long hi, long *out);
/* A comma-separated list of such integers into out[0, *n), at most cap of
 * them, the whole list checked before any work; else a usage error "OPT:
 * 'VAL' is not a list of at most CAP NOUN" (or the bad item's) and 0. */
int cli_parse_int_list(const char *what, const char *opt, const char *val, long lo, long hi, const char *noun,
                       long *out, int cap, int *n);
/* The same for numbers (cli_parse_double's). */
int cli_parse_double_list(const char *what, const char *opt, const char *val, double lo, double hi,
                          const char *noun, double *out, int cap, int *n);
/* *out = the index of val among names (NULL-terminated); else a usage error
 * "OPT 'VAL' is not A, B or C" and 0 */
int cli_parse_choice(const char *what, const char *opt, const char *val, const char *const *names, int *out);
/* epmoe run's (and bench run's) --prefill-chunk: each rank's prompt tokens
 * a pass, as SGLang's default chunked_prefill_size on large GPUs */
enum { CLI_PREFILL_CHUNK = 8192 };
/* sequences decoding at once by default (vLLM's max_num_seqs): the rest wait
 * for a place, so that a file of many requests holds K/V caches for these */
enum { CLI_MAX_NUM_SEQS = 256 };
/* the output length of a request that gives no max_tokens (vLLM's SamplingParams default) */
enum { CLI_REQUEST_MAX_TOKENS = 16 };
/* --wire-dtype's values (epmoe run, plan eval, bench run), in this order */
enum { CLI_WIRE_F32, CLI_WIRE_BF16, CLI_WIRE_FP8 };
extern const char *const cli_wire_dtypes[];
int cli_parse_double(const char *what, const char *opt, const char *val, double lo, double hi, double *out);
int cli_parse_u64(const char *what, const char *opt, const char *val, uint64_t *out);

/* True when a and b are the same existing file: outputs never overwrite inputs. */
int cli_same_file(const char *a, const char *b);

/* Bytes of one routed expert of the checkpoint in dir as epmoe run holds
 * and copies it: held CLI_HELD_AUTO as run does by default (bf16 and FP8
 * with its scales as stored, other dtypes widened to float32), _BF16 or
 * _F32 as run --expert-dtype bf16 / f32 (and --kernels cuda, f32) hold it;
 * CLI_STORED: as the checkpoint stores it, what a read of it costs (run's
 * bytes_read). Where only config.json is there (a planning machine), its
 * shape in the dtype its declared one implies (FP8's scales left out), said
 * on stderr under what; -2 after an error printed (weights that cannot be
 * read, no config). */
enum { CLI_HELD_AUTO, CLI_HELD_BF16, CLI_HELD_F32, CLI_STORED };
extern const char *const cli_held_dtypes[]; /* "auto", "bf16", "f32": run --expert-dtype's words */
long cli_model_expert_bytes(const char *what, const char *dir, int held);
/* Bytes of an expert of hidden x ffn packed as epmoe run copies it: its
 * three matrices at elem bytes a weight, each padded to 4 (FP8's scales
 * left out) */
long cli_expert_bytes(long elem, long hidden, long ffn);

/* --expert-bytes' bound: 1 TiB, so that a change's sum of copies fits int64 */
#define CLI_EXPERT_BYTES_MAX (1L << 40)

/* Subcommands. Each takes argv with argv[0] the subcommand's name. */
int epm_cli_trace(int argc, char **argv);
int epm_cli_plan(int argc, char **argv);
int epm_cli_plan_moves(int argc, char **argv); /* plan moves */
int epm_cli_bench(int argc, char **argv);
int epm_cli_run(int argc, char **argv);
int epm_cli_model(int argc, char **argv);
int epm_cli_launch(int argc, char **argv);

#endif
