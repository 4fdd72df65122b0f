/* epmoe bench run: end-to-end tokens/s and bytes per link class of `epmoe run`
 * with routing replayed from a synthetic trace (skew + cross-layer affinity),
 * for each execution mode and placement method, beside contiguous placement
 * measured in the same run. Launch under mpirun. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "bench_run.h"
#include "core.h"
#include "epmoe/model.h"
#include "runtime.h"
#include "serving_trace.h"
#include "xcomm.h"

static const char usage[] =
    "usage: mpirun -np N epmoe bench run --model DIR [options]\n"
    "  --model DIR          checkpoint (epmoe model synth makes one of any shape)\n"
    "  --batch B            sequences (default 8)\n"
    "  --seq S              prompt length (default 64)\n"
    "  --new N              greedy tokens per sequence (default 8; also --max-new-tokens, as run)\n"
    "  --input FILE         instead of --batch and --seq: the sequences of FILE, as epmoe run --input\n"
    "                       reads it (token lists, requests: a dataset's prompt and output lengths;\n"
    "                       a request's max_tokens, else --new; its n samples; its sampling\n"
    "                       parameters not applied: greedy), or a serving trace as CSV (Azure's LLM\n"
    "                       inference traces: TIMESTAMP,ContextTokens,GeneratedTokens; BurstGPT:\n"
    "                       Timestamp,...,Request tokens,Response tokens,...) or JSON lines as\n"
    "                       Mooncake's ({\"timestamp\": ms, \"input_length\", \"output_length\",\n"
    "                       \"hash_ids\"}): its requests' prompt and output lengths, prompts drawn from\n"
    "                       the vocabulary (a Mooncake hash's 512-token block from the hash: shared\n"
    "                       prefixes stay shared); rows without prompt or output tokens (failed\n"
    "                       requests) left out, and counted\n"
    "  --num-prompts N      the trace's first N requests (default 1000, as vLLM's benchmark_serving)\n"
    "  --max-num-seqs N     at most N sequences decode at once (N/ranks on each home rank), as epmoe\n"
    "                       run --max-num-seqs (default 256; all at once with --mod router|attention;\n"
    "                       0 = all)\n"
    "  --separate-prefill   passes hold prompt or decode tokens, never both, as epmoe run\n"
    "                       --separate-prefill (default: mixed)\n"
    "  --prefill-chunk T    at most T of a rank's prompt tokens a pass, as epmoe run --prefill-chunk\n"
    "                       (default 8192; 0 = whole prompts)\n"
    "  --max-num-batched-tokens N\n"
    "                       instead: at most N tokens a pass on each rank, decode tokens first, as\n"
    "                       epmoe run --max-num-batched-tokens\n"
    "  --max-total-tokens N K/V positions a rank's caches may hold at once, as epmoe run\n"
    "                       --max-total-tokens (default: places alone)\n"
    "  --zipf S             routing skew of the synthetic trace (default 1.0)\n"
    "  --affinity A         cross-layer affinity of the trace (default 0.8)\n"
    "  --plan-seed S        plan from a trace of seed S (other hot experts: a stale forecast), the\n"
    "                       runs still replaying seed 7's (default: plan from the replayed trace)\n"
    "  --drift N            routing that changes within the run: every N tokens of the trace (in\n"
    "                       the order the prompts and then the new tokens are numbered) other\n"
    "                       experts are hot; the plans see the whole run's mixture (default: none)\n"
    "  --methods LIST       placements, comma separated, contiguous first (the baseline;\n"
    "                       default contiguous,eplb,ilp); 'online': contiguous with online\n"
    "                       rebalancing (epmoe run --eplb-interval, at --eplb-interval), gained\n"
    "                       experts read from the checkpoint; 'online-peers': the same, copied from\n"
    "                       a rank that holds them (run --eplb-from peers); 'online-async' and\n"
    "                       'online-peers-async': each with run --eplb-lag (--eplb-lag below)\n"
    "  --modes LIST         home,follow (default both)\n"
    "  --slots S            experts per rank per layer for eplb/ilp/online (default: one spare)\n"
    "  --eplb-interval N    online's passes between rebalances (default 4), over the last\n"
    "                       --eplb-window passes (default N), a layer moving only if that\n"
    "                       lowers its busiest rank's pairs by at least --eplb-min-gain of\n"
    "                       them (default 0)\n"
    "  --eplb-lag N         the -async methods' passes from a boundary to its placement's service\n"
    "                       (default 1)\n"
    "  --virtual-nodes N    split the ranks into N pretend nodes\n"
    "  --time-limit SEC     ILP budget (default 20)\n"
    "  --workdir DIR        where rank 0 writes placements for the others (default bench-run-work)\n"
    "  --reps R             runs per configuration, best time kept, alternated over the methods\n"
    "                       of a mode (default 2)\n"
    "  --warmup W           untimed runs of the first configuration before any timed one, so that\n"
    "                       the baseline does not pay for cold caches and first-touch memory (default 1)\n"
    "  --ta LIST            instead: topology-aware gating strengths (e.g. 0,0.5,1,2), live routing,\n"
    "                       contiguous placement: bytes per link class and how far the outputs move\n"
    "                       from strength 0 (logit error, top-k agreement, greedy-token agreement)\n"
    "  --mod SRC            instead: Mixture-of-Depths (router|attention|schedule) at the capacities of\n"
    "                       --capacities (default 1,0.75,0.5,0.25), live routing, contiguous placement:\n"
    "                       tokens/s, bytes and the same deviation columns, from capacity 1\n"
    "  --capacities LIST    MoD capacities for --mod\n"
    "  --expert-dtypes      instead: every weight widened to float32 at load, then the routed experts\n"
    "                       held as the checkpoint stores them, then the dense matrices too (epmoe run\n"
    "                       --expert-dtype and --dense-dtype f32/f32, auto/f32, auto/auto: bf16 for a\n"
    "                       bf16 checkpoint), and for an FP8 one everything dequantised to bf16\n"
    "                       (bf16/bf16), alternated --reps times, live routing, contiguous\n"
    "                       placement: best tokens/s of each, over all-float32's and over the run\n"
    "                       holding every matrix bf16 (auto/auto for a bf16 checkpoint, bf16/bf16\n"
    "                       for an FP8 one), logit error and greedy-token agreement against\n"
    "                       all-float32\n"
    "  --mla-cache          instead (DeepSeek models): MLA cached expanded (a key and a value per head,\n"
    "                       the baseline) then as its latent, alternated --reps times, live routing,\n"
    "                       contiguous placement: KV cache bytes of the fullest rank, best tokens/s,\n"
    "                       each over expanded's, logit error and greedy-token agreement\n"
    "  --kv-dtypes          instead: the K/V cache in float32 (the baseline), in bf16 and in fp8 (epmoe\n"
    "                       run --kv-dtype), alternated --reps times, live routing, contiguous placement:\n"
    "                       the same columns as --mla-cache, over float32's\n"
    "  --wire-dtypes        instead: activations between ranks in float32 (the baseline), in bf16, and\n"
    "                       in home mode with fp8 dispatch (epmoe run --wire-dtype), alternated --reps\n"
    "                       times, live routing,\n"
    "                       contiguous placement: bytes counted (all layers and link classes, K/V\n"
    "                       and final gather included) over float32's, best dispatch + combine\n"
    "                       seconds (slowest rank) and float32's over them (the speed-up), best\n"
    "                       tokens/s, each over float32's, logit error and greedy-token agreement\n"
    "  --room               instead: the exchanges' counts phase three ways, alternated --reps times,\n"
    "                       live routing, contiguous placement: 'none' offers no room to receive into\n"
    "                       and carries no rows (the baseline: each hop agrees again after its counts\n"
    "                       that every rank could allocate, then moves its rows, as before both),\n"
    "                       'room' offers the room, 'riding' also carries each hop's rows for a peer\n"
    "                       in its counts message where they fit (the default): hops, hops that\n"
    "                       agreed again, hops whose rows all rode, best dispatch + combine seconds\n"
    "                       (slowest rank) and the baseline's over them, best tokens/s, each over\n"
    "                       the baseline's, logit error and greedy-token agreement\n"
    "  --prefill-chunks LIST\n"
    "                       instead: the prompts prefilled in one pass (the baseline), then in passes\n"
    "                       of each of these chunk sizes (epmoe run --prefill-chunk, at most 8),\n"
    "                       alternated --reps times, live routing, contiguous placement: passes, peak\n"
    "                       resident memory of the fullest rank, best prefill tokens/s, each over one\n"
    "                       pass's, last logits' error and greedy-token agreement against one pass\n"
    "  --continuous LIST    instead: for each N of LIST (at most 8), the sequences decoded with at\n"
    "                       most N at once in static batches of N one after another (the baseline,\n"
    "                       each batch until its longest sequence ends), continuously (epmoe run\n"
    "                       --max-num-seqs N) with prefill passes of their own (--separate-prefill),\n"
    "                       and continuously in mixed batches (the default), alternated --reps times,\n"
    "                       live routing, contiguous placement: passes, decoding passes, generated\n"
    "                       tokens/s over prefill + decoding and over static's, the prefill's share\n"
    "                       of the time, K/V caches of the fullest rank, token agreement with static.\n"
    "                       Without --input, sequence s generates 1 to --new tokens (seeded, uniform);\n"
    "                       each N is its own --max-num-seqs\n"
    "  --request-rates LIST instead: online serving (vLLM's benchmark_serving): the batch offline (the\n"
    "                       baseline: every request at the start), then arriving at each of these\n"
    "                       rates (requests/s, at most 8; epmoe run --request-rate, seed 0), live\n"
    "                       routing, contiguous placement, --max-num-seqs at once, alternated --reps\n"
    "                       times, the repetition of median duration (the faster middle one at even\n"
    "                       --reps): duration, requests/s and tokens/s over it and over the offline\n"
    "                       batch's, seconds waiting for arrivals, TTFT and end to end (from\n"
    "                       arrival) p50/p99, TPOT p50, ITL p99, token agreement with offline.\n"
    "                       Output lengths as --continuous's\n"
    "  --burstiness B       the arrivals' gamma shape (default 1: Poisson; below 1 burstier)\n"
    "  --prefix-caching     instead: the batch without prefix caching (the baseline), with it but no\n"
    "                       in-batch wait (row no_wait), and with it (epmoe run\n"
    "                       --enable-prefix-caching), alternated --reps times, live routing,\n"
    "                       contiguous placement, --max-num-seqs at once (below the batch, later\n"
    "                       sequences find their prefix held or kept; with the wait, those admitted\n"
    "                       together share too): prompt tokens computed and copied, best prefill\n"
    "                       seconds and tokens/s, each over the baseline's, TTFT p50, token\n"
    "                       agreement. Output lengths as --continuous's\n"
    "  --shared-prefix T    the random prompts' first T tokens the same in all (a system prompt, as\n"
    "                       vLLM's prefix_repetition dataset)\n"
    "  --turns T            with --prefix-caching: --batch conversations of T turns (default 1), each\n"
    "                       turn's prompt the last one's prompt and its --new outputs (greedy), then\n"
    "                       --turn-tokens more (a chat's next message); one place a conversation\n"
    "                       (--max-num-seqs --batch unless given), so a turn comes after the last\n"
    "  --turn-tokens N      new tokens a later turn adds (default 32)\n"
    "  --trace-arrivals     a serving trace's requests also as they arrived (a row 'trace' after\n"
    "                       --request-rates' rows, or alone after the offline batch; its burst column\n"
    "                       is the trace's 1/CV^2 of intervals)\n"
    "  --time-scale X       the trace's times multiplied by X (0.5: twice as fast; default 1)\n"
    "  --kernels K          ref, blas (default) or cuda, as epmoe run --kernels\n"
    "  --wire-dtype T       f32 (default), bf16 or fp8 (home mode only), as epmoe run --wire-dtype, for\n"
    "                       every run but --wire-dtypes' own\n"
    "  --csv                CSV rows instead of a table\n";

enum { O_TA = 300, O_MOD, O_CAPS, O_KER, O_WARM, O_EDT, O_MLA, O_KVDT, O_WIDT, O_ROOM, O_WIRE, O_CHUNKS, O_INPUT, O_MAXSEQS, O_CONT, O_SEPPRE, O_RATES,
       O_BURST, O_CHUNK, O_MNBT, O_MTT, O_NPROMPTS, O_TARR, O_TSCALE,
       O_PREFIX, O_SHPRE, O_TURNS, O_TURNTOK, O_EPLBI, O_EPLBW, O_PSEED, O_DRIFT, O_EPLBG, O_EPLBLAG };
enum { O_MODEL = 256, O_BATCH, O_SEQ, O_NEW, O_ZIPF, O_AFF, O_METHODS, O_MODES, O_SLOTS, O_VN, O_TL, O_WD, O_REPS, O_CSV, O_HELP };

static const struct option opts[] = {
    {"model", required_argument, 0, O_MODEL}, {"batch", required_argument, 0, O_BATCH},
    {"seq", required_argument, 0, O_SEQ},     {"new", required_argument, 0, O_NEW},
    {"max-new-tokens", required_argument, 0, O_NEW}, /* (epmoe run's name for it) */
    {"zipf", required_argument, 0, O_ZIPF},   {"affinity", required_argument, 0, O_AFF},
    {"methods", required_argument, 0, O_METHODS}, {"modes", required_argument, 0, O_MODES},
    {"slots", required_argument, 0, O_SLOTS}, {"virtual-nodes", required_argument, 0, O_VN},
    {"time-limit", required_argument, 0, O_TL}, {"workdir", required_argument, 0, O_WD},
    {"reps", required_argument, 0, O_REPS},   {"csv", no_argument, 0, O_CSV},
    {"help", no_argument, 0, O_HELP},         {"ta", required_argument, 0, O_TA},
    {"mod", required_argument, 0, O_MOD},     {"capacities", required_argument, 0, O_CAPS},
    {"kernels", required_argument, 0, O_KER}, {"warmup", required_argument, 0, O_WARM},
    {"expert-dtypes", no_argument, 0, O_EDT},       {"mla-cache", no_argument, 0, O_MLA},
    {"kv-dtypes", no_argument, 0, O_KVDT},    {"wire-dtypes", no_argument, 0, O_WIDT}, {"room", no_argument, 0, O_ROOM},
    {"wire-dtype", required_argument, 0, O_WIRE}, {"prefill-chunks", required_argument, 0, O_CHUNKS},
    {"input", required_argument, 0, O_INPUT}, {"max-num-seqs", required_argument, 0, O_MAXSEQS},
    {"continuous", required_argument, 0, O_CONT}, {"separate-prefill", no_argument, 0, O_SEPPRE},
    {"request-rates", required_argument, 0, O_RATES}, {"prefill-chunk", required_argument, 0, O_CHUNK},
    {"max-num-batched-tokens", required_argument, 0, O_MNBT}, {"burstiness", required_argument, 0, O_BURST},
    {"max-total-tokens", required_argument, 0, O_MTT}, {"num-prompts", required_argument, 0, O_NPROMPTS},
    {"trace-arrivals", no_argument, 0, O_TARR},        {"time-scale", required_argument, 0, O_TSCALE},
    {"prefix-caching", no_argument, 0, O_PREFIX},      {"shared-prefix", required_argument, 0, O_SHPRE},
    {"turns", required_argument, 0, O_TURNS},          {"turn-tokens", required_argument, 0, O_TURNTOK},
    {"eplb-interval", required_argument, 0, O_EPLBI},  {"eplb-window", required_argument, 0, O_EPLBW},
    {"plan-seed", required_argument, 0, O_PSEED},      {"drift", required_argument, 0, O_DRIFT},
    {"eplb-min-gain", required_argument, 0, O_EPLBG},  {"eplb-lag", required_argument, 0, O_EPLBLAG},
    {0, 0, 0, 0}};

/* One live-routing run per setting against the neutral one (TA strength 0,
 * or MoD capacity 1): what topology-aware gating or layer skipping saves and
 * what it costs in output fidelity. mod: EPM_MOD_OFF sweeps TA strengths. */
static const char *kernels = "blas";
static int wire = CLI_WIRE_F32; /* --wire-dtype */
static const int *max_new_of = NULL; /* --input's output lengths per sequence (NULL: --new for all) */
static long max_seqs = CLI_MAX_NUM_SEQS; /* --max-num-seqs */
static int separate = 0;                 /* --separate-prefill */
static long prefill_chunk = CLI_PREFILL_CHUNK; /* --prefill-chunk, or --max-num-batched-tokens: */
static int counts_decode = 0;                  /* ... which counts a rank's decode tokens too */
static long pool = 0;                          /* --max-total-tokens */

static void wire_opts(epm_run_opts *o)
{
    o->wire_bf16 = wire == CLI_WIRE_BF16;
    o->wire_fp8 = wire == CLI_WIRE_FP8;
}

/* A live-routing run of the sweeps: every prompt logit kept, contiguous placement. */
static void live_opts(epm_run_opts *o, const char *model, epm_mode mode, int vn, int nnew)
{
    memset(o, 0, sizeof *o);
    o->model_dir = model;
    o->mode = mode;
    o->virtual_nodes = vn;
    o->max_new_tokens = nnew;
    o->max_new_per_seq = max_new_of;
    o->keep_logits = 1;
    o->prefill_chunk = prefill_chunk; /* as epmoe run's */
    o->chunk_counts_decode = counts_decode;
    o->max_num_seqs = (int)max_seqs;
    o->max_total_tokens = pool;
    o->separate_prefill = separate;
    o->ops = kernels;
    wire_opts(o);
}

double epm_bench_logit_err(const float *a, const float *b, int64_t n)
{
    double err = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)b[i] - a[i]));
        mx = fmax(mx, fabs((double)a[i]));
    }
    return mx > 0 ? err / mx : 0.0;
}

double epm_bench_token_agreement(const int32_t *a, const int32_t *b, int n)
{
    int same = 0;
    int both = 0; /* positions past a sequence's length (-1 in both) are no tokens */
    for (int i = 0; i < n; i++) {
        same += a[i] == b[i] && a[i] >= 0;
        both += a[i] >= 0 || b[i] >= 0;
    }
    return both > 0 ? (double)same / both : 1.0;
}

static int fidelity_sweep(epm_xcomm *x, const char *model, const char *list, epm_mod_source mod, epm_mode mode,
                          int vn, int batch, const int *lens, const int32_t *const *prompts, int nnew, int csv)
{
    int me = epm_xcomm_rank(x);
    char buf[256];
    const double neutral = mod ? 1.0 : 0.0;
    snprintf(buf, sizeof buf, "%s,%s", mod ? "1" : "0", list);
    epm_run_result *base = NULL;
    if (me == 0)
        printf(csv ? "%s,intra_bytes,inter_bytes,bytes_vs_neutral,inter_vs_neutral,logit_rel_err,topk_agreement,"
                     "token_agreement,blocks_run,prefill_tok_s,decode_tok_s\n"
                   : "%-9s %12s %12s %8s %8s %13s %9s %9s %8s %11s %11s\n",
               mod ? "capacity" : "strength", "intra bytes", "inter bytes", "B/neut", "inter/n", "logit rel err",
               "top-k agr", "token agr", "ran", "prefill t/s", "decode t/s");
    int first = 1, rc = EPM_EXIT_OK;
    for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
        double value = atof(s);
        if (!first && value == neutral)
            continue;
        epm_run_opts o;
        live_opts(&o, model, mode, vn, nnew);
        if (mod) {
            o.mod = mod;
            o.mod_capacity = value;
            if (mod != EPM_MOD_SCHEDULE) /* ranked over whole prompts: one pass of all, as epmoe run */
                o.prefill_chunk = 0, o.max_num_seqs = 0, o.max_total_tokens = 0;
        } else {
            o.ta_strength = value;
        }
        epm_run_result *res = NULL;
        epm_status st = epm_run(&o, batch, lens, prompts, &res);
        if (st != EPM_OK) {
            rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
            break;
        }
        int64_t b[3] = {0, 0, 0};
        for (int l = 0; l < res->report.moe_layers; l++)
            for (int q = 0; q < 3; q++)
                b[q] += res->report.bytes[l * 3 + q];
        if (first) {
            base = res;
            first = 0;
        }
        if (me == 0) {
            int64_t n = 0;
            for (int q = 0; q < batch; q++)
                n += lens[q];
            const epm_trace *ta = res->trace, *tb = base->trace;
            int K = epm_trace_k(ta);
            int64_t same = 0, rows = 0;
            for (int l = 0; l < epm_trace_layers(ta); l++)
                for (int64_t i = 0; i < n; i++, rows++) {
                    const int32_t *u = epm_trace_ids_const(ta, l) + i * K, *v = epm_trace_ids_const(tb, l) + i * K;
                    int eq = 1;
                    for (int j = 0; j < K; j++) {
                        int found = 0;
                        for (int q = 0; q < K; q++)
                            found |= u[j] == v[q];
                        eq &= found;
                    }
                    same += eq;
                }
            int64_t base_inter = 0, base_all = 0;
            for (int l = 0; l < base->report.moe_layers; l++) {
                base_inter += base->report.bytes[l * 3 + 2];
                base_all += base->report.bytes[l * 3 + 1] + base->report.bytes[l * 3 + 2];
            }
            int64_t ran = 0, blocks = (res->report.prefill_tokens + res->report.decode_tokens) * res->report.num_layers;
            for (int l = 0; l < res->report.num_layers; l++)
                ran += res->report.layer_tokens[l];
            printf(csv ? "%g,%lld,%lld,%.3f,%.3f,%.3g,%.4f,%.4f,%.4f,%.1f,%.1f\n"
                       : "%-9g %12lld %12lld %8.3f %8.3f %13.3g %9.4f %9.4f %8.4f %11.1f %11.1f\n",
                   value, (long long)b[1], (long long)b[2], base_all ? (double)(b[1] + b[2]) / base_all : 1.0,
                   base_inter ? (double)b[2] / base_inter : 1.0,
                   epm_bench_logit_err(base->logits, res->logits, n * res->vocab), (double)same / rows,
                   epm_bench_token_agreement(base->generated, res->generated, batch * nnew), blocks ? (double)ran / blocks : 1.0,
                   res->report.prefill_tokens / res->report.t_prefill,
                   res->report.t_decode > 0 ? res->report.decode_tokens / res->report.t_decode : 0.0);
            fflush(stdout);
        }
        if (res != base)
            epm_run_result_destroy(res);
    }
    epm_run_result_destroy(base);
    return rc;
}

/* Every weight widened to float32, then the experts held as stored, then the
 * dense matrices too (auto), one run of each in turn --reps times so that a
 * slow spell hits all alike; the first of each is also the output
 * comparison against the first. */
/* All the bytes a run counted: every MoE layer's dispatch, combine and
 * K/V all-gather and the final gather, every link class but a rank's own */
static int64_t report_bytes(const epm_run_report *r)
{
    int64_t s = 0;
    for (int c = 1; c < EPM_LINK_COUNT; c++) {
        for (int l = 0; l < r->moe_layers; l++)
            s += r->bytes[l * EPM_LINK_COUNT + c] + r->kv_bytes[l * EPM_LINK_COUNT + c];
        s += r->gather_bytes[c];
    }
    return s;
}

/* Variants of one run, alternated --reps times, the first the baseline:
 * 'd' the weights' dtypes held (all float32; routed experts as stored; dense
 * matrices too), 'm' MLA's cache (expanded; latent), 'k' the K/V cache's
 * dtype (float32; bf16; fp8), 'w' the activations' between ranks (float32;
 * bf16; fp8 dispatch in home mode), 'r' the exchanges' counts phase (no room,
 * no rows riding, as before both; room offered; room and rows riding).
 * Best prefill and decode
 * times of each, and its logits and tokens against the baseline's. */
static int variant_compare(epm_xcomm *x, char which, const char *model, int fp8, epm_mode mode, int vn, int batch,
                           const int *lens, const int32_t *const *prompts, int nnew, int reps, int csv)
{
    int me = epm_xcomm_rank(x), rc = EPM_EXIT_OK;
    fp8 = which == 'd' && fp8; /* an FP8 checkpoint: also everything dequantised to bf16, the row FP8 is against */
    enum { MAXV = 4 };
    /* kb: every matrix held bf16; 'w' in home mode: fp8 dispatch too */
    const int configs =
                  which == 'd' ? 3 + fp8 : (which == 'w' && mode == EPM_MODE_HOME) || which == 'k' || which == 'r' ? 3 : 2,
              kb = fp8 ? 3 : 2;
    epm_run_result *first[MAXV] = {NULL, NULL, NULL, NULL};
    double pre[MAXV] = {1e30, 1e30, 1e30, 1e30}, dec[MAXV] = {1e30, 1e30, 1e30, 1e30};
    double comm[MAXV] = {1e30, 1e30, 1e30, 1e30}; /* dispatch + combine */
    for (int r = 0; r < reps && rc == EPM_EXIT_OK; r++)
        for (int k = 0; k < configs; k++) {
            epm_run_opts o;
            live_opts(&o, model, mode, vn, nnew);
            if (which == 'd') {
                o.experts_f32 = k == 0;
                o.dense_f32 = k < 2;
                o.experts_bf16 = o.dense_bf16 = k == 3;
            } else if (which == 'm') {
                o.mla_expanded = k == 0;
            } else if (which == 'k') {
                o.kv_bf16 = k == 1;
                o.kv_fp8 = k == 2;
            } else if (which == 'r') {
                o.exchange_no_room = k == 0;
                o.exchange_no_eager = k < 2;
            } else {
                o.wire_bf16 = k == 1;
                o.wire_fp8 = k == 2;
            }
            epm_run_result *res = NULL;
            epm_status st = epm_run(&o, batch, lens, prompts, &res);
            if (st != EPM_OK) {
                rc = me == 0 ? cli_fail("bench run", st) : EPM_EXIT_FAIL;
                break;
            }
            pre[k] = res->report.t_prefill < pre[k] ? res->report.t_prefill : pre[k];
            dec[k] = res->report.t_decode < dec[k] ? res->report.t_decode : dec[k];
            comm[k] = fmin(comm[k], res->report.t_dispatch + res->report.t_combine);
            if (!first[k])
                first[k] = res;
            else
                epm_run_result_destroy(res);
        }
    if (rc == EPM_EXIT_OK && me == 0) {
        const epm_run_result *a = first[0];
        int64_t n = 0;
        for (int q = 0; q < batch; q++)
            n += lens[q];
        double pt = (double)a->report.prefill_tokens, dt = (double)a->report.decode_tokens;
        if (which == 'd')
            printf(csv ? "experts,dense,prefill_tok_s,decode_tok_s,prefill_vs_f32,decode_vs_f32,prefill_vs_bf16,"
                         "decode_vs_bf16,logit_rel_err,token_agreement\n"
                       : "%-8s %-6s %12s %12s %9s %9s %9s %9s %13s %9s\n",
                   "experts", "dense", "prefill t/s", "decode t/s", "pre/f32", "dec/f32", "pre/bf16", "dec/bf16",
                   "logit rel err", "token agr");
        else if (which == 'r')
            printf(csv ? "counts,hops,hops_agreed,hops_fused,comm_s,comm_base_over_this,prefill_tok_s,decode_tok_s,"
                         "prefill_vs_base,decode_vs_base,logit_rel_err,token_agreement\n"
                       : "%-7s %10s %11s %10s %10s %9s %12s %12s %9s %9s %13s %9s\n",
                   "counts", "hops", "agreed", "fused", "comm s", "base/comm", "prefill t/s", "decode t/s", "pre/base",
                   "dec/base", "logit rel err", "token agr");
        else if (which == 'w')
            printf(csv ? "wire_dtype,bytes,bytes_vs_f32,comm_s,comm_f32_over_this,prefill_tok_s,decode_tok_s,prefill_vs_f32,"
                         "decode_vs_f32,logit_rel_err,token_agreement\n"
                       : "%-10s %12s %9s %10s %9s %12s %12s %9s %9s %13s %9s\n",
                   "wire dtype", "bytes", "bytes/f32", "comm s", "f32/comm", "prefill t/s", "decode t/s", "pre/f32",
                   "dec/f32", "logit rel err", "token agr");
        else if (csv) /* the cache's two forms ('m') or dtypes ('k'), against the first */
            printf("%s,kv_cache_bytes_rank,kv_vs_%s,prefill_tok_s,decode_tok_s,prefill_vs_%s,decode_vs_%s,"
                   "logit_rel_err,token_agreement\n", which == 'm' ? "mla_cache" : "kv_dtype",
                   which == 'm' ? "expanded" : "f32", which == 'm' ? "expanded" : "f32",
                   which == 'm' ? "expanded" : "f32");
        else
            printf("%-9s %14s %8s %12s %12s %9s %9s %13s %9s\n", which == 'm' ? "mla cache" : "kv dtype",
                   "kv bytes/rank", which == 'm' ? "kv/exp" : "kv/f32", "prefill t/s", "decode t/s",
                   which == 'm' ? "pre/exp" : "pre/f32", which == 'm' ? "dec/exp" : "dec/f32", "logit rel err",
                   "token agr");
        for (int k = 0; k < configs; k++) {
            const epm_run_result *b = first[k];
            double pts = pt / pre[k], dts = dec[k] > 0 ? dt / dec[k] : 0.0, pr = pre[0] / pre[k],
                   dr = dec[k] > 0 ? dec[0] / dec[k] : 1.0, e = epm_bench_logit_err(a->logits, b->logits, n * a->vocab),
                   agr = epm_bench_token_agreement(a->generated, b->generated, batch * nnew);
            double pb = pre[kb] / pre[k], db = dec[k] > 0 ? dec[kb] / dec[k] : 1.0;
            if (which == 'd')
                printf(csv ? "%s,%s,%.1f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3g,%.4f\n"
                           : "%-8s %-6s %12.1f %12.1f %9.3f %9.3f %9.3f %9.3f %13.3g %9.4f\n",
                       epm_dtype_name(b->report.expert_dtype), epm_dtype_name(b->report.dense_dtype), pts, dts, pr, dr,
                       pb, db, e, agr);
            else if (which == 'r')
                printf(csv ? "%s,%lld,%lld,%lld,%.6f,%.3f,%.1f,%.1f,%.3f,%.3f,%.3g,%.4f\n"
                           : "%-7s %10lld %11lld %10lld %10.6f %9.3f %12.1f %12.1f %9.3f %9.3f %13.3g %9.4f\n",
                       k == 2 ? "riding" : k ? "room" : "none", (long long)b->report.hops,
                       (long long)b->report.hops_agreed, (long long)b->report.hops_fused, comm[k], comm[0] / comm[k],
                       pts, dts, pr, dr, e, agr);
            else if (which == 'w')
                printf(csv ? "%s,%lld,%.4f,%.6f,%.3f,%.1f,%.1f,%.3f,%.3f,%.3g,%.4f\n"
                           : "%-10s %12lld %9.4f %10.6f %9.3f %12.1f %12.1f %9.3f %9.3f %13.3g %9.4f\n",
                       epm_dtype_name(b->report.wire_dtype), (long long)report_bytes(&b->report),
                       (double)report_bytes(&b->report) / (double)report_bytes(&a->report), comm[k], comm[0] / comm[k],
                       pts, dts, pr, dr, e, agr);
            else
                printf(csv ? "%s,%lld,%.4f,%.1f,%.1f,%.3f,%.3f,%.3g,%.4f\n"
                           : "%-9s %14lld %8.4f %12.1f %12.1f %9.3f %9.3f %13.3g %9.4f\n",
                       which == 'k' ? epm_dtype_name(b->report.kv_dtype) : k ? "latent" : "expanded",
                       (long long)b->report.kv_cache_bytes_max,
                       (double)b->report.kv_cache_bytes_max / (double)a->report.kv_cache_bytes_max, pts, dts, pr, dr,
                       e, agr);
        }
        fflush(stdout);
    }
    for (int k = 0; k < configs; k++)
        epm_run_result_destroy(first[k]);
    return rc;
}

/* Every entry of a comma-separated option list, checked before any work, so
 * that a typo is a usage error naming it, not a failure after the first runs
 * (nor, for numbers, atof's silent 0). kind: 'm' mode, 'p' placement method,
 * 't' TA strength, 'c' MoD capacity (the ranges of epmoe run's options). */
enum { BENCH_MAX_METHODS = 16 };

/* 'online', 'online-peers', 'online-async', 'online-peers-async': contiguous rebalanced as it runs,
 * gained experts copied from peers or read, at once or with --eplb-lag */
static int online_kind(const char *m, int *peers, int *async)
{
    static const char *const names[] = {"online", "online-peers", "online-async", "online-peers-async"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(m, names[i])) {
            *peers = i % 2, *async = i / 2;
            return 1;
        }
    *peers = *async = 0;
    return 0;
}

static int check_list(const char *W, const char *opt, const char *list, size_t room, int kind)
{
    char buf[256];
    if (strlen(list) >= room || strlen(list) >= sizeof buf) {
        cli_usage_error(W, "option %s: the list '%s' is too long", opt, list);
        return 0;
    }
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *e = strtok_r(buf, ",", &save); e; e = strtok_r(NULL, ",", &save), n++) {
        double d;
        epm_mode mode;
        epm_method method;
        if (kind == 'm' && epm_mode_parse(e, &mode) != EPM_OK) {
            cli_usage_error(W, "option %s: '%s' is not home or follow", opt, e);
            return 0;
        }
        int peers, async;
        if (kind == 'p' && !online_kind(e, &peers, &async) && epm_method_parse(e, &method) != EPM_OK) {
            cli_usage_error(W, "option %s: %s", opt, epm_last_error());
            return 0;
        }
        if ((kind == 't' && !cli_parse_double(W, opt, e, 0, 1e6, &d)) ||
            (kind == 'c' && !cli_parse_double(W, opt, e, 1e-9, 1, &d)))
            return 0;
    }
    if (!n) {
        cli_usage_error(W, "option %s: '%s' lists nothing", opt, list);
        return 0;
    }
    if (kind == 'p' && n > BENCH_MAX_METHODS) {
        cli_usage_error(W, "option %s: '%s' lists %d methods, at most %d", opt, list, n, BENCH_MAX_METHODS);
        return 0;
    }
    /* the ratio columns divide by the first method's row */
    if (kind == 'p' && strncmp(list, "contiguous", 10) != 0) {
        cli_usage_error(W, "option %s: '%s' must start with contiguous, the baseline of the *_vs_contiguous columns",
                        opt, list);
        return 0;
    }
    return 1;
}

int epm_bench_run(int argc, char **argv)
{
    const char *W = "bench run";
    const char *input = NULL;
    int shape_given = 0;
    const char *model = NULL, *methods_s = "contiguous,eplb,ilp", *modes_s = "home,follow", *workdir = "bench-run-work";
    long batch = 8, seq = 64, nnew = 8, slots = 0, vn = 0, reps = 2, warm = 1, v;
    double zipf = 1.0, aff = 0.8, tl = 20;
    int csv = 0, c, dtypes = 0, mla = 0, kvdt = 0, widt = 0, room = 0, nchunk = 0, ncont = 0;
    long chunk[8], cont[8];
    double rates[8], burstiness = 1;
    int nrates = 0, burst_given = 0, trace_arrivals = 0, scale_given = 0;
    long num_prompts = 0, shared_prefix = 0;
    int prefix = 0; /* --prefix-caching */
    long turns = 1, turn_tokens = 32;
    long eplb_interval = 4, eplb_window = 0, eplb_lag = 1; /* the 'online' methods' */
    double eplb_gain = 0;
    int eplb_given = 0, lag_given = 0;
    long plan_seed = -1; /* >= 0: plans made from another trace than the one replayed */
    long drift = 0;      /* > 0: the trace's hot experts change every this many tokens */
    int turn_tok_given = 0, max_seqs_given = 0, *turn_lens = NULL;
    int32_t **turn_prompts = NULL; /* --turns' batch */
    double time_scale = 1, *scaled = NULL; /* the trace's arrivals times --time-scale */
    int32_t *seqid = NULL; /* the synthetic trace's, which a pool renumbers per mode */
    const char *ta_list = NULL, *caps = "0.75,0.5,0.25";
    epm_mod_source mod = EPM_MOD_OFF;
    separate = 0;
    prefill_chunk = CLI_PREFILL_CHUNK;
    counts_decode = 0;
    pool = 0;
    int chunk_given = 0;
    if (cli_exact_options(W, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_BATCH:
            if (!cli_parse_int(W, "--batch", optarg, 1, 1 << 16, &batch))
                return EPM_EXIT_USAGE;
            shape_given = 1;
            break;
        case O_SEQ:
            if (!cli_parse_int(W, "--seq", optarg, 1, 1 << 16, &seq))
                return EPM_EXIT_USAGE;
            shape_given = 1;
            break;
        case O_INPUT: input = optarg; break;
        case O_SEPPRE: separate = 1; break;
        case O_CHUNK:
        case O_MNBT:
            if (chunk_given && counts_decode != (c == O_MNBT))
                return cli_usage_error(W, "--max-num-batched-tokens and --prefill-chunk: each sets a pass's chunk; "
                                       "give one");
            if (!cli_parse_int(W, c == O_CHUNK ? "--prefill-chunk" : "--max-num-batched-tokens", optarg,
                               c == O_CHUNK ? 0 : 1, INT32_MAX, &prefill_chunk))
                return EPM_EXIT_USAGE;
            counts_decode = c == O_MNBT;
            chunk_given = 1;
            break;
        case O_MAXSEQS:
            if (!cli_parse_int(W, "--max-num-seqs", optarg, 0, INT32_MAX, &max_seqs)) return EPM_EXIT_USAGE;
            max_seqs_given = 1;
            break;
        case O_MTT:
            if (!cli_parse_int(W, "--max-total-tokens", optarg, 1, INT32_MAX, &pool)) return EPM_EXIT_USAGE;
            break;
        case O_NEW: if (!cli_parse_int(W, "--new", optarg, 1, 1 << 16, &nnew)) return EPM_EXIT_USAGE; break;
        case O_ZIPF: if (!cli_parse_double(W, "--zipf", optarg, 0, 10, &zipf)) return EPM_EXIT_USAGE; break;
        case O_AFF: if (!cli_parse_double(W, "--affinity", optarg, 0, 1, &aff)) return EPM_EXIT_USAGE; break;
        case O_METHODS: methods_s = optarg; break;
        case O_MODES: modes_s = optarg; break;
        case O_SLOTS: if (!cli_parse_int(W, "--slots", optarg, 1, 4096, &slots)) return EPM_EXIT_USAGE; break;
        case O_VN: if (!cli_parse_int(W, "--virtual-nodes", optarg, 1, 4096, &vn)) return EPM_EXIT_USAGE; break;
        case O_TL: if (!cli_parse_double(W, "--time-limit", optarg, 0, 1e6, &tl)) return EPM_EXIT_USAGE; break;
        case O_WD: workdir = optarg; break;
        case O_REPS: if (!cli_parse_int(W, "--reps", optarg, 1, 100, &reps)) return EPM_EXIT_USAGE; break;
        case O_WARM: if (!cli_parse_int(W, "--warmup", optarg, 0, 100, &warm)) return EPM_EXIT_USAGE; break;
        case O_CSV: csv = 1; break;
        case O_EPLBI:
            if (!cli_parse_int(W, "--eplb-interval", optarg, 1, INT32_MAX, &eplb_interval)) return EPM_EXIT_USAGE;
            eplb_given = 1;
            break;
        case O_DRIFT:
            if (!cli_parse_int(W, "--drift", optarg, 1, INT32_MAX, &drift)) return EPM_EXIT_USAGE;
            break;
        case O_PSEED:
            if (!cli_parse_int(W, "--plan-seed", optarg, 0, INT32_MAX, &plan_seed)) return EPM_EXIT_USAGE;
            break;
        case O_EPLBW:
            if (!cli_parse_int(W, "--eplb-window", optarg, 1, INT32_MAX, &eplb_window)) return EPM_EXIT_USAGE;
            break;
        case O_EPLBG:
            if (!cli_parse_double(W, "--eplb-min-gain", optarg, 0, 0.999, &eplb_gain)) return EPM_EXIT_USAGE;
            break;
        case O_EPLBLAG:
            if (!cli_parse_int(W, "--eplb-lag", optarg, 1, INT32_MAX, &eplb_lag)) return EPM_EXIT_USAGE;
            lag_given = 1;
            break;
        case O_TA: ta_list = optarg; break;
        case O_CAPS: caps = optarg; break;
        case O_EDT: dtypes = 1; break;
        case O_MLA: mla = 1; break;
        case O_KVDT: kvdt = 1; break;
        case O_WIDT: widt = 1; break;
        case O_ROOM: room = 1; break;
        case O_CHUNKS:
            if (!cli_parse_int_list(W, "--prefill-chunks", optarg, 1, INT32_MAX, "chunk sizes", chunk, 8, &nchunk))
                return EPM_EXIT_USAGE;
            break;
        case O_CONT:
            if (!cli_parse_int_list(W, "--continuous", optarg, 1, INT32_MAX, "sequence counts", cont, 8, &ncont))
                return EPM_EXIT_USAGE;
            break;
        case O_RATES:
            for (const char *p = optarg; *p; p += strcspn(p, ","), p += *p == ',')
                if (!strncmp(p, "inf", 3) && (p[3] == ',' || !p[3]))
                    return cli_usage_error(W, "option --request-rates: 'inf' (the offline batch) is the baseline, "
                                           "measured first anyway");
            if (!cli_parse_double_list(W, "--request-rates", optarg, 1e-6, 1e9, "rates", rates, 8, &nrates))
                return EPM_EXIT_USAGE;
            break;
        case O_BURST:
            if (!cli_parse_double(W, "--burstiness", optarg, 1e-3, 1e3, &burstiness)) return EPM_EXIT_USAGE;
            burst_given = 1;
            break;
        case O_NPROMPTS:
            if (!cli_parse_int(W, "--num-prompts", optarg, 1, INT32_MAX, &num_prompts)) return EPM_EXIT_USAGE;
            break;
        case O_TARR: trace_arrivals = 1; break;
        case O_PREFIX: prefix = 1; break;
        case O_SHPRE:
            if (!cli_parse_int(W, "--shared-prefix", optarg, 1, 1 << 16, &shared_prefix)) return EPM_EXIT_USAGE;
            break;
        case O_TURNS:
            if (!cli_parse_int(W, "--turns", optarg, 1, 64, &turns)) return EPM_EXIT_USAGE;
            break;
        case O_TURNTOK:
            if (!cli_parse_int(W, "--turn-tokens", optarg, 1, 1 << 16, &turn_tokens)) return EPM_EXIT_USAGE;
            turn_tok_given = 1;
            break;
        case O_TSCALE:
            if (!cli_parse_double(W, "--time-scale", optarg, 1e-6, 1e6, &time_scale)) return EPM_EXIT_USAGE;
            scale_given = 1;
            break;
        case O_WIRE:
            if (!cli_parse_choice(W, "--wire-dtype", optarg, cli_wire_dtypes, &wire))
                return EPM_EXIT_USAGE;
            break;
        case O_KER:
            if (strcmp(optarg, "ref") && strcmp(optarg, "blas") && strcmp(optarg, "cuda"))
                return cli_usage_error(W, "option --kernels: '%s' is not ref, blas or cuda", optarg);
            kernels = optarg;
            break;
        case O_MOD:
            if (!strcmp(optarg, "router"))
                mod = EPM_MOD_ROUTER;
            else if (!strcmp(optarg, "attention"))
                mod = EPM_MOD_ATTENTION;
            else if (!strcmp(optarg, "schedule"))
                mod = EPM_MOD_SCHEDULE;
            else
                return cli_usage_error(W, "option --mod: '%s' is not router, attention or schedule", optarg);
            break;
        case O_HELP: fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (!model)
        return cli_usage_error(W, "--model is required");
    if (burst_given && nrates == 0)
        return cli_usage_error(W, "--burstiness shapes the arrivals of --request-rates, which is not given");
    if (input && shape_given)
        return cli_usage_error(W, "--input %s gives the sequences: --batch and --seq are for the random ones", input);
    if (scale_given && !trace_arrivals)
        return cli_usage_error(W, "--time-scale scales the arrivals of --trace-arrivals, which is not given");
    const int from_trace = input && epm_serving_trace_is(input);
    if (from_trace && !num_prompts) /* a trace's first thousand, as vLLM's benchmark_serving takes by default */
        num_prompts = 1000;
    else if (num_prompts && !from_trace)
        return cli_usage_error(W, "--num-prompts takes the first requests of a serving trace (--input FILE: a .csv "
                               "as Azure's LLM inference traces or BurstGPT, or JSON lines as Mooncake's)");
    if (trace_arrivals && !from_trace)
        return cli_usage_error(W, "--trace-arrivals replays the arrival times of a serving trace: --input FILE (a "
                               ".csv as Azure's LLM inference traces or BurstGPT, or JSON lines as Mooncake's)");
    if (shared_prefix && (input || shared_prefix > seq))
        return cli_usage_error(W, "--shared-prefix %ld: the first tokens of the random prompts (--seq %ld)%s",
                               shared_prefix, seq, input ? ", not of --input's" : "");
    if ((turns > 1 || turn_tok_given) && (!prefix || input))
        return cli_usage_error(W, "--turns %ld%s: conversations of the random prompts for --prefix-caching%s", turns,
                               turn_tok_given ? " and --turn-tokens" : "", !prefix ? ", which is not given" : ", not of --input's");
    if (turn_tok_given && turns == 1)
        return cli_usage_error(W, "--turn-tokens %ld: the tokens a later turn adds; --turns is 1", turn_tokens);
    if (turns > 1 && (int64_t)batch * turns > INT32_MAX / 4)
        return cli_usage_error(W, "--turns %ld: %ld conversations of %ld turns, too many sequences", turns, batch, turns);
    const int chunks = nchunk > 0, conts = ncont > 0, online = nrates > 0 || trace_arrivals;
    if (!!ta_list + !!mod + dtypes + mla + kvdt + widt + chunks + conts + online + prefix + room > 1) {
        char given[256] = "";
        const char *name[] = {"--ta", "--mod", "--expert-dtypes", "--mla-cache", "--kv-dtypes", "--wire-dtypes",
                              "--prefill-chunks", "--continuous", nrates ? "--request-rates" : "--trace-arrivals",
                              "--prefix-caching", "--room"};
        const int on[] = {ta_list != NULL, mod != EPM_MOD_OFF, dtypes, mla, kvdt, widt, chunks, conts, online, prefix,
                          room};
        for (int i = 0; i < 11; i++)
            if (on[i])
                snprintf(given + strlen(given), sizeof given - strlen(given), "%s%s", *given ? " and " : "", name[i]);
        return cli_usage_error(W, "%s: each is a bench of its own; give one", given);
    }
    /* the replayed trace is the placements' comparison's alone; the other benches route live */
    if ((drift || plan_seed >= 0) &&
        (ta_list || mod || dtypes || mla || kvdt || widt || chunks || conts || online || prefix || room))
        return cli_usage_error(W, "%s shapes the trace that the placements' comparison replays; the other benches "
                               "route live", drift ? "--drift" : "--plan-seed");
    /* as epmoe run refuses it, before any run */
    if (wire == CLI_WIRE_FP8 && strstr(modes_s, "follow"))
        return cli_usage_error(W, "--wire-dtype fp8 is for home mode, and --modes '%s' has follow", modes_s);
    /* the sizes are those of the buffers the lists are copied into below */
    if (!check_list(W, "--modes", modes_s, 64, 'm') || !check_list(W, "--methods", methods_s, 128, 'p') ||
        (ta_list && !check_list(W, "--ta", ta_list, 250, 't')) ||
        (mod && !check_list(W, "--capacities", caps, 250, 'c')))
        return EPM_EXIT_USAGE;
    (void)v;
    { /* online rebalancing's options belong to the 'online' method */
        char list[128];
        snprintf(list, sizeof list, ",%s,", methods_s);
        const int online = strstr(list, ",online,") || strstr(list, ",online-peers,") ||
                           strstr(list, ",online-async,") || strstr(list, ",online-peers-async,");
        if ((eplb_given || eplb_window || eplb_gain > 0) && !online)
            return cli_usage_error(W, "%s is the 'online' method's, which --methods (%s) does not list",
                                   eplb_window ? "--eplb-window" : eplb_given ? "--eplb-interval" : "--eplb-min-gain",
                                   methods_s);
        if (lag_given && !strstr(list, "-async,"))
            return cli_usage_error(W, "--eplb-lag is the -async methods', which --methods (%s) does not list", methods_s);
        if (cli_eplb_usage(W, eplb_interval, eplb_window, strstr(list, "-async,") ? eplb_lag : 0, NULL) != EPM_EXIT_OK)
            return EPM_EXIT_USAGE;
    }
    if (mla) { /* before MPI starts: a usage error leaves nothing behind */
        char cp[4096];
        epm_model_config mc;
        snprintf(cp, sizeof cp, "%s/config.json", model);
        epm_status cst = epm_model_config_load(cp, &mc);
        int is_mla = cst == EPM_OK && mc.mla;
        epm_model_config_clear(&mc);
        if (cst == EPM_OK && !is_mla)
            return cli_usage_error(W, "--mla-cache: %s is not a multi-head latent attention model (DeepSeek-V2/V3)",
                                   model);
    }
    if (cli_virtual_nodes_usage(W, vn) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    epm_xcomm *x;
    epm_status st = epm_xcomm_create((int)vn, &x);
    if (st != EPM_OK)
        return cli_fail_agreed(W, st);
    int me = epm_xcomm_rank(x), R = epm_xcomm_size(x);
    epm_cluster cl;
    epm_xcomm_cluster(x, &cl);
    epm_model *m = NULL;
    epm_trace *t = NULL, *tplan = NULL;
    int rc = EPM_EXIT_OK;
    int32_t **prompts = NULL;
    int *lens = NULL;
    epm_bench_input in;
    memset(&in, 0, sizeof in);
    st = epm_model_open(model, &m);
    st = epm_xcomm_agree(x, st);
    if (st != EPM_OK) {
        rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
        goto out;
    }
    const epm_model_config *hc = epm_model_get_config(m);
    int moe_layers = 0;
    for (int l = 0; l < hc->num_layers; l++)
        moe_layers += hc->moe_layer[l];
    if (input) { /* every rank reads it; all agree before the first run */
        st = epm_xcomm_agree(x, epm_bench_input_load(input, hc->vocab_size, (int)nnew, (int)num_prompts, &in));
        if (st != EPM_OK) {
            rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
            goto out;
        }
        batch = in.batch;
        max_new_of = in.max_new;
        for (int s = 0; in.max_new && s < in.batch; s++)
            nnew = s == 0 || in.max_new[s] > nnew ? in.max_new[s] : nnew;
    }
    const int32_t *const *pr = in.prompts;
    const int *pl = in.lens;
    int64_t ptok = 0; /* prompt tokens in all */
    char shape[4400];
    if (input) {
        for (int s = 0; s < batch; s++)
            ptok += pl[s];
        char from[256] = "";
        if (in.trace) /* what was taken of a serving trace */
            snprintf(from, sizeof from, " (%s: the first %ld of %lld requests over %.3g s%s; rows without prompt "
                     "or output tokens left out: %lld; prompt tokens drawn)", in.trace->format, batch,
                     (long long)in.trace->n, in.arrival[batch - 1] * time_scale,
                     time_scale != 1 ? " at --time-scale" : "", (long long)in.trace->skipped);
        snprintf(shape, sizeof shape, "%s: %ld sequences, %lld prompt tokens, up to %ld new%s%s", input, batch,
                 (long long)ptok, nnew, in.sampled ? " (requests' sampling parameters not applied: greedy)" : "",
                 from);
    } else {
        ptok = batch * seq;
        snprintf(shape, sizeof shape, "batch %ld x %ld + %ld new", batch, seq, nnew);
    }
    /* prompts and the routing to replay: the same on every rank (seeded) */
    prompts = input ? NULL : calloc((size_t)batch, sizeof *prompts);
    lens = input ? NULL : calloc((size_t)batch, sizeof *lens);
    uint64_t rng = 12345;
    for (int s = 0; s < batch && prompts && lens; s++) {
        lens[s] = (int)seq;
        prompts[s] = malloc((size_t)seq * sizeof **prompts);
        for (int p = 0; p < seq && prompts[s]; p++) { /* --shared-prefix: its first tokens the same in all */
            uint64_t shared = 999 + (uint64_t)p;
            prompts[s][p] = (int32_t)(epm_splitmix64(p < shared_prefix ? &shared : &rng) % (uint64_t)hc->vocab_size);
        }
    }
    if (!input) {
        if (!prompts || !lens) {
            rc = me == 0 ? cli_fail(W, EPM_ERR_NOMEM) : EPM_EXIT_FAIL;
            goto out;
        }
        pr = (const int32_t *const *)prompts;
        pl = lens;
    }
    if (ta_list || mod || dtypes || mla || kvdt || widt || chunks || conts || online || prefix || room) {
        epm_mode mode = EPM_MODE_HOME;
        char first[16];
        snprintf(first, sizeof first, "%s", modes_s);
        first[strcspn(first, ",")] = '\0';
        if (epm_mode_parse(first, &mode) != EPM_OK) {
            rc = cli_usage_error(W, "--modes: %s", epm_last_error());
            goto out;
        }
        if (me == 0 && !csv)
            printf("# bench run %s: %s, %d ranks (%d nodes), mode %s, %s, kernels %s, wire %s\n",
                   dtypes ? "--expert-dtypes" : mla ? "--mla-cache" : kvdt ? "--kv-dtypes" : widt ? "--wire-dtypes"
                   : room ? "--room"
                   : chunks ? "--prefill-chunks" : conts ? "--continuous" : prefix ? "--prefix-caching"
                   : online ? (nrates ? "--request-rates" : "--trace-arrivals") : mod ? "--mod" : "--ta", model, R,
                   cl.nodes, epm_mode_name(mode), shape, kernels,
                   !widt ? cli_wire_dtypes[wire] : mode == EPM_MODE_HOME ? "f32, bf16, fp8" : "f32, bf16");
        if (me == 0 && !csv)
            epm_bench_print_blas();
        if (conts || online || prefix) {
            epm_run_opts o;
            live_opts(&o, model, mode, (int)vn, (int)nnew);
            o.keep_logits = 0;
            int *spread = NULL; /* without --input: 1 .. --new tokens each, the same on every rank */
            if (!max_new_of && (spread = malloc((size_t)batch * sizeof *spread)) != NULL) {
                uint64_t lr = 777;
                for (int s = 0; s < batch; s++)
                    spread[s] = 1 + (int)(epm_splitmix64(&lr) % (uint64_t)nnew);
            }
            st = epm_xcomm_agree(x, max_new_of || spread ? EPM_OK : EPM_ERR_NOMEM);
            if (st != EPM_OK)
                rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
            else if (conts)
                rc = epm_bench_run_continuous(x, &o, (int)batch, pl, pr, max_new_of ? max_new_of : spread, cont, ncont,
                                              (int)reps, csv);
            else if (prefix && turns > 1) { /* conversations: every turn decodes --new (greedy) */
                o.max_new_per_seq = NULL;
                st = epm_bench_prefix_turns(x, &o, (int)batch, (int)seq, pr, (int)turns, (int)turn_tokens,
                                            hc->vocab_size, &turn_lens, &turn_prompts);
                if (st == EPM_OK && me == 0 && !csv)
                    printf("# %ld conversations of %ld turns, each later turn the last's prompt, its outputs (up to "
                           "%ld) and %ld more tokens: %ld sequences%s\n", batch, turns, nnew, turn_tokens, batch * turns,
                           mode == EPM_MODE_HOME && batch % R ? " (home mode: --batch is not a multiple of the ranks, "
                           "so a conversation's turns have different homes and find no prefix)" : "");
                o.max_num_seqs = max_seqs_given ? (int)max_seqs : (int)batch; /* (a place a conversation) */
                rc = st != EPM_OK ? (me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL)
                                  : epm_bench_run_prefix(x, &o, (int)(batch * turns), turn_lens,
                                                         (const int32_t *const *)turn_prompts, (int)reps, csv);
            }
            else if (prefix) {
                o.max_new_per_seq = max_new_of ? max_new_of : spread;
                rc = epm_bench_run_prefix(x, &o, (int)batch, pl, pr, (int)reps, csv);
            }
            else {
                o.max_new_per_seq = max_new_of ? max_new_of : spread;
                if (trace_arrivals && (scaled = malloc((size_t)batch * sizeof *scaled)) != NULL)
                    for (int q = 0; q < batch; q++)
                        scaled[q] = in.arrival[q] * time_scale;
                st = epm_xcomm_agree(x, scaled || !trace_arrivals ? EPM_OK : EPM_ERR_NOMEM);
                rc = st == EPM_OK ? epm_bench_run_rates(x, &o, (int)batch, pl, pr, rates, nrates, burstiness, scaled,
                                                        (int)reps, csv)
                                  : (me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL);
            }
            free(spread);
            goto out;
        }
        if (chunks) {
            epm_run_opts o;
            live_opts(&o, model, mode, (int)vn, (int)nnew);
            o.keep_logits = 0; /* every prompt row's logits would be most of the memory measured */
            o.max_num_seqs = 0; /* one pass is the whole batch's */
            o.max_total_tokens = 0;
            o.chunk_counts_decode = 0; /* the chunks swept are prompt tokens alone */
            rc = epm_bench_run_chunks(x, &o, (int)batch, pl, pr, chunk, nchunk, (int)reps, csv);
        } else if (dtypes || mla || kvdt || widt || room)
            rc = variant_compare(x, dtypes ? 'd' : mla ? 'm' : kvdt ? 'k' : room ? 'r' : 'w', model, hc->fp8_block[0] > 0, mode, (int)vn, (int)batch, pl,
                                 pr, (int)nnew, (int)reps, csv);
        else
            rc = fidelity_sweep(x, model, mod ? caps : ta_list, mod, mode, (int)vn, (int)batch, pl, pr, (int)nnew,
                                csv);
        goto out;
    }
    int64_t total = ptok + epm_bench_decode_tokens((int)batch, max_new_of, (int)nnew);
    epm_trace_synth_opts so;
    epm_trace_synth_opts_init(&so);
    so.layers = moe_layers;
    so.experts = hc->num_experts;
    so.k = hc->top_k;
    so.tokens = total;
    so.zipf_s = zipf;
    so.affinity = aff;
    so.seed = 7;
    so.drift_tokens = drift;
    st = epm_trace_synth(&so, &t);
    if (st == EPM_OK && plan_seed >= 0) { /* the forecast the plans are made from: other hot experts */
        so.seed = (uint64_t)plan_seed;
        st = epm_trace_synth(&so, &tplan);
    }
    seqid = malloc((size_t)total * sizeof *seqid);
    if (st == EPM_OK && !seqid)
        st = EPM_ERR_NOMEM;
    if (st == EPM_OK)
        st = epm_bench_seq_ids((int)batch, pl, max_new_of, (int)nnew, (int)max_seqs, R, prefill_chunk, counts_decode,
                               separate, pool, 0, seqid);
    if (st == EPM_OK)
        st = epm_trace_set_seq_ids(t, seqid);
    if (st == EPM_OK && tplan)
        st = epm_trace_set_seq_ids(tplan, seqid);
    st = epm_xcomm_agree(x, st); /* every rank fails alike */
    if (st != EPM_OK) {
        rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
        goto out;
    }
    if (me == 0 && !csv)
        printf("# bench run: %s, %d ranks (%d nodes), %s, zipf %.2f affinity %.2f, activations on the wire %s\n",
               model, R, cl.nodes, shape, zipf, aff, cli_wire_dtypes[wire]);
    if (me == 0 && !csv && tplan)
        printf("# plans made from a trace of seed %ld (a stale forecast); the runs replay seed 7's\n", plan_seed);
    if (me == 0 && !csv && drift > 0)
        printf("# routing drifts: other experts hot every %ld tokens of the trace\n", drift);
    if (me == 0 && !csv)
        epm_bench_print_blas();
    if (me == 0)
        printf(csv ? "ranks,nodes,mode,method,prefill_tok_s,decode_tok_s,intra_bytes,inter_bytes,kv_bytes,max_load,"
                     "prefill_vs_contiguous,decode_vs_contiguous,bytes_vs_contiguous,kv_cache_bytes_per_rank\n"
                   : "%-7s %-18s %12s %12s %14s %14s %12s %9s %8s %8s %8s %12s\n",
               "mode", "method", "prefill t/s", "decode t/s", "intra bytes", "inter bytes", "kv bytes", "max load",
               "pf/contig", "dc/contig", "B/contig", "KV mem/rank");
    char modes[64], methods[128];
    snprintf(modes, sizeof modes, "%s", modes_s);
    for (char *ms = strtok(modes, ","); ms && rc == EPM_EXIT_OK; ms = strtok(NULL, ",")) {
        epm_mode mode;
        if (epm_mode_parse(ms, &mode) != EPM_OK) {
            rc = cli_usage_error(W, "--modes: '%s' is not home or follow", ms);
            break;
        }
        /* follow mode's pool is the batch's, which admits in another order than home's */
        if (pool > 0) {
            st = epm_bench_seq_ids((int)batch, pl, max_new_of, (int)nnew, (int)max_seqs, R, prefill_chunk,
                                   counts_decode, separate, pool, mode == EPM_MODE_FOLLOW, seqid);
            if (st == EPM_OK)
                st = epm_trace_set_seq_ids(t, seqid);
            if (st == EPM_OK && tplan)
                st = epm_trace_set_seq_ids(tplan, seqid);
            if (st != EPM_OK) {
                rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
                break;
            }
        }
        /* every method's placement first (rank 0 plans: the ILP's time limit could make ranks differ; the
         * others read its file), then the repetitions alternate over them, so that a machine that drifts
         * (another job, its clock) shifts every method's runs alike */
        enum { MAXM = BENCH_MAX_METHODS };
        struct meth {
            char name[32];
            int online, peers, async;
            epm_placement *p;
            double pf, dc;
            int64_t bytes[3], kv, maxload, kvmem;
            int rebalances; /* online's, the last repetition's: */
            int64_t moved, read, copied;
            double t_eplb;
        } mm[MAXM];
        int nm = 0;
        snprintf(methods, sizeof methods, "%s", methods_s);
        char *save = NULL;
        const int need = (hc->num_experts + R - 1) / R,
                  spare = (int)(slots ? slots : need < hc->num_experts ? need + 1 : need);
        for (char *mt = strtok_r(methods, ",", &save); mt && rc == EPM_EXIT_OK && nm < MAXM;
             mt = strtok_r(NULL, ",", &save)) {
            struct meth *me_ = &mm[nm];
            memset(me_, 0, sizeof *me_);
            snprintf(me_->name, sizeof me_->name, "%s", mt);
            epm_plan_opts po;
            epm_plan_opts_init(&po);
            me_->online = online_kind(mt, &me_->peers, &me_->async); /* contiguous, rebalanced as it runs */
            if (me_->online)
                po.method = EPM_METHOD_CONTIGUOUS;
            else if (epm_method_parse(mt, &po.method) != EPM_OK) {
                rc = cli_usage_error(W, "--methods: %s", epm_last_error());
                break;
            }
            po.mode = mode;
            po.hidden = hc->hidden_size;
            po.kv_dim = epm_model_kv_floats(hc, 0); /* what the run all-gathers (MLA: its latent) */
            po.ffn = hc->moe_ffn;
            po.time_limit_s = tl;
            po.slots_per_rank = po.method == EPM_METHOD_EPLB || po.method == EPM_METHOD_ILP ? spare : need;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s-%s.json", workdir, ms, mt);
            epm_placement *p = NULL;
            st = EPM_OK;
            if (me == 0) {
                char cmd[4200];
                snprintf(cmd, sizeof cmd, "mkdir -p '%s'", workdir);
                if (system(cmd) != 0)
                    st = epm_fail(EPM_ERR_IO, "cannot create %s", workdir);
                if (st == EPM_OK)
                    st = epm_plan(tplan ? tplan : t, &cl, &po, &p);
                if (st == EPM_OK)
                    st = epm_placement_save_json(p, path);
                epm_placement_destroy(p);
                p = NULL;
            }
            st = epm_xcomm_agree(x, st);
            if (st == EPM_OK)
                st = epm_placement_load_json(path, &p);
            st = epm_xcomm_agree(x, st);
            if (st != EPM_OK) {
                rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
                epm_placement_destroy(p);
                break;
            }
            me_->p = p;
            nm++;
        }
        /* negative reps: the warm-up runs, of the first method only */
        for (int rep = -(int)warm; rep < reps && rc == EPM_EXIT_OK; rep++)
            for (int i = 0; i < (rep < 0 ? 1 : nm) && rc == EPM_EXIT_OK; i++) {
                struct meth *me_ = &mm[i];
                epm_run_opts o;
                memset(&o, 0, sizeof o);
                o.model_dir = model;
                o.placement = me_->p;
                o.mode = mode;
                o.virtual_nodes = (int)vn;
                o.max_new_tokens = (int)nnew;
                o.max_new_per_seq = max_new_of;
                o.route_from = t;
                o.ops = kernels;
                o.prefill_chunk = prefill_chunk; /* as epmoe run's, which the trace was numbered for */
                o.chunk_counts_decode = counts_decode;
                o.max_num_seqs = (int)max_seqs;
                o.max_total_tokens = pool;
                o.separate_prefill = separate;
                if (me_->online) {
                    o.eplb_interval = (int)eplb_interval;
                    o.eplb_window = (int)eplb_window;
                    o.eplb_min_gain = eplb_gain;
                    o.eplb_slots = spare;
                    o.eplb_from_peers = me_->peers;
                    o.eplb_lag = me_->async ? (int)eplb_lag : 0;
                }
                wire_opts(&o);
                epm_run_result *res = NULL;
                st = epm_run(&o, (int)batch, pl, pr, &res);
                if (st != EPM_OK) {
                    rc = me == 0 ? cli_fail(W, st) : EPM_EXIT_FAIL;
                    break;
                }
                if (rep < 0) {
                    epm_run_result_destroy(res);
                    continue;
                }
                const epm_run_report *r = &res->report;
                double pf = r->prefill_tokens / r->t_prefill, dc = r->t_decode > 0 ? r->decode_tokens / r->t_decode : 0;
                me_->pf = pf > me_->pf ? pf : me_->pf;
                me_->dc = dc > me_->dc ? dc : me_->dc;
                memset(me_->bytes, 0, sizeof me_->bytes);
                me_->kv = me_->maxload = 0;
                for (int l = 0; l < r->moe_layers; l++) {
                    for (int q = 0; q < 3; q++) {
                        me_->bytes[q] += r->bytes[l * 3 + q];
                        me_->kv += r->kv_bytes[l * 3 + q];
                    }
                    for (int q = 0; q < R; q++)
                        me_->maxload = r->rank_load[l * R + q] > me_->maxload ? r->rank_load[l * R + q] : me_->maxload;
                }
                me_->kvmem = r->kv_cache_bytes_max;
                me_->rebalances = r->eplb_rebalances;
                me_->moved = r->eplb_moved;
                me_->read = r->eplb_bytes;
                me_->copied = r->eplb_peer_bytes[EPM_LINK_INTRA] + r->eplb_peer_bytes[EPM_LINK_INTER];
                me_->t_eplb = r->t_eplb;
                epm_run_result_destroy(res);
            }
        warm = 0;
        for (int i = 0; i < nm && rc == EPM_EXIT_OK; i++) { /* the first method listed is the baseline */
            const struct meth *me_ = &mm[i], *b0 = &mm[0];
            const double b = (double)(me_->bytes[1] + me_->bytes[2] + me_->kv),
                         base_b = (double)(b0->bytes[1] + b0->bytes[2] + b0->kv);
            if (me == 0 && csv)
                printf("%d,%d,", R, cl.nodes);
            if (me == 0)
                printf(csv ? "%s,%s,%.1f,%.1f,%lld,%lld,%lld,%lld,%.3f,%.3f,%.3f,%lld\n"
                           : "%-7s %-18s %12.1f %12.1f %14lld %14lld %12lld %9lld %8.3f %8.3f %8.3f %12lld\n",
                       ms, me_->name, me_->pf, me_->dc, (long long)me_->bytes[1], (long long)me_->bytes[2],
                       (long long)me_->kv, (long long)me_->maxload, me_->pf / b0->pf, b0->dc > 0 ? me_->dc / b0->dc : 0,
                       base_b > 0 ? b / base_b : b > 0 ? INFINITY : 1.0, (long long)me_->kvmem);
            if (me == 0 && !csv && me_->online)
                printf("# %s: %d rebalances (every %ld passes), %lld experts moved, %.1f MB copied between "
                       "ranks, %.1f MB read from the checkpoint, %.3f s\n", me_->name, me_->rebalances, eplb_interval,
                       (long long)me_->moved, (double)me_->copied / 1e6, (double)me_->read / 1e6, me_->t_eplb);
        }
        fflush(stdout);
        for (int i = 0; i < nm; i++)
            epm_placement_destroy(mm[i].p);
    }
out:
    for (long s = 0; turn_prompts && s < batch * turns; s++)
        free(turn_prompts[s]);
    free(turn_prompts);
    free(turn_lens);
    free(seqid);
    free(scaled);
    for (int s = 0; prompts && s < batch; s++)
        free(prompts[s]);
    free(prompts);
    free(lens);
    epm_bench_input_free(&in);
    max_new_of = NULL;
    epm_trace_destroy(t);
    epm_trace_destroy(tplan);
    epm_model_close(m);
    epm_xcomm_destroy(x);
    epm_xcomm_finalize();
    return rc;
}
