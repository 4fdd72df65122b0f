/* epmoe run: distributed inference of a Hugging Face MoE checkpoint. Run it
 * under mpirun; every rank parses the same arguments. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "core.h"
#include "run_output.h"
#include "run_requests.h"
#include "runtime.h"
#include "serving_trace.h"
#include "epmoe/launch.h"
#include "epmoe/model.h"
#include "safetensors.h"
#include "xcomm.h"

static const char usage[] =
    "usage: mpirun -np N epmoe run --model DIR --input TOKENS [options]\n"
    "\n"
    "Prefill a batch, then decode (greedy or sampled), expert-parallel over the MPI ranks.\n"
    "  --model DIR              Hugging Face checkpoint (config.json + safetensors)\n"
    "  --input FILE             token ids: JSON [[1,2,3],[4,5]] or {\"input_ids\": ..., \"attention_mask\": ...,\n"
    "                           \"max_new_tokens\": N or [per sequence]}, requests (vLLM's) as a JSON list\n"
    "                           or JSON lines of {\"prompt_token_ids\": [...], \"max_tokens\": N, and\n"
    "                           SamplingParams' temperature, top_k, top_p, min_p, seed, stop_token_ids,\n"
    "                           ignore_eos, min_tokens, penalties, n, logprobs and prompt_logprobs,\n"
    "                           each over the run's},\n"
    "                           .npy int32/int64 [batch, seq], or safetensors with 'input_ids'\n"
    "  --placement FILE         placement JSON from epmoe plan (default: contiguous)\n"
    "  --mode home|follow       where tokens live between MoE layers (default: --placement's mode,\n"
    "                           else home)\n"
    "  --max-new-tokens N       tokens to generate per sequence at most (default 0, or the input's\n"
    "                           max_new_tokens, which this caps); a sequence ends\n"
    "                           earlier at a stop token (the checkpoint's eos_token_id, --stop-token-ids)\n"
    "  --generation-config auto|none|FILE\n"
    "                           decoding defaults: auto (default) the checkpoint's generation_config.json,\n"
    "                           as transformers' generate() reads it (sampling only where do_sample is\n"
    "                           true; its eos_token_id, else config.json's); none: greedy, and only\n"
    "                           config.json's eos_token_id; the flags below override either\n"
    "  --temperature T          sample from softmax(logits / T); 0: greedy (the highest logit). Over a\n"
    "                           greedy generation config, with its top-k, top-p and min-p, as\n"
    "                           generate(do_sample=True) (top_k 50 where it is silent)\n"
    "  --sample-top-k K         sample among the K most likely tokens (0: all)\n"
    "  --sample-top-p P         nucleus sampling: the most likely tokens until their mass reaches P\n"
    "                           (--top-p is the router's dynamic expert count, not this)\n"
    "  --min-p P                drop tokens less likely than P x the most likely one\n"
    "  --repetition-penalty R   divide (multiply, if negative) the logits of tokens already in the\n"
    "                           sequence by R (greedy too; 1: off)\n"
    "  --presence-penalty P     subtract P from the logit of each token generated so far (vLLM, [-2, 2])\n"
    "  --frequency-penalty F    subtract F per time it was generated (vLLM, [-2, 2])\n"
    "  --min-tokens N           no stop token before N tokens (vLLM's min_tokens; the generation\n"
    "                           config's min_new_tokens)\n"
    "  --seed N                 a draw depends on (seed, sequence, step) and the logits alone: logits\n"
    "                           equal to the bit draw the same token at any rank count (default 0)\n"
    "  --stop-token-ids LIST    more stop tokens, e.g. 2,32000 (kept in the output)\n"
    "  --ignore-eos             do not stop at the checkpoint's eos_token_id (benchmarks)\n"
    "  --logprobs N             with --json or --output: each generated token's log-probability\n"
    "                           under the model (log_softmax of its logits, before penalty,\n"
    "                           temperature and top-k/p) and the N (0-20) most likely tokens' there\n"
    "  --prompt-logprobs N      with --json or --output: each prompt token's log-probability given\n"
    "                           the tokens before it, the N (0-20) most likely tokens' there, and\n"
    "                           (--json) each prompt's perplexity (vLLM's prompt_logprobs)\n"
    "  --virtual-nodes N        split the ranks into N pretend nodes\n"
    "  --route-from-trace FILE  replace the gate's choices by a recorded trace (a row of -1\n"
    "                           skips the layer's block, as MoD recorded it, --mod or not); one\n"
    "                           this input's run recorded must have the same decoded tokens and\n"
    "                           passes (other stop tokens, chunks or --max-num-seqs are refused)\n"
    "  --trace-out FILE         write the routing of every MoE layer (trace format)\n"
    "  --logits-out FILE        write logits (safetensors 'logits')\n"
    "  --output FILE            results as JSON lines, one per request (one per sequence without\n"
    "                           requests), as vLLM's RequestOutput: request_index, prompt_tokens,\n"
    "                           outputs [{index, token_ids, finish_reason, cumulative_logprob,\n"
    "                           logprobs}] (a request's n samples), prompt_logprobs\n"
    "  --all-logits             logits of every prompt position, not only the last\n"
    "  --prefill-chunk T        prefill in passes of at most T of each rank's prompt tokens (chunked\n"
    "                           prefill: activation memory follows T, not the prompts; default 8192,\n"
    "                           one pass with --mod router|attention; 0 = one pass)\n"
    "  --max-num-seqs N         at most N sequences decode at once (continuous batching, vLLM's\n"
    "                           max_num_seqs), N/ranks on each home rank (at least one): a rank's others\n"
    "                           wait in order, each admitted (prefilled, its K/V caches taken) when one\n"
    "                           of its own ends; K/V memory for those places, the same tokens. Default\n"
    "                           256, all at once with --mod router|attention; 0 = all\n"
    "  --max-total-tokens N     the K/V positions a rank's caches may hold at once (SGLang's\n"
    "                           --max-total-tokens, TGI's --max-batch-total-tokens): a sequence is\n"
    "                           admitted when its prompt and output cap fit beside those held, in order;\n"
    "                           home mode each rank's pool, follow mode one for all (every rank holds\n"
    "                           every sequence's caches). The memory check counts the pool; the same\n"
    "                           tokens. Default: places alone\n"
    "  --enable-prefix-caching  a sequence admitted while its home rank (follow mode: any) holds or kept\n"
    "                           the K/V rows of a prefix of its prompt (another's prompt and the outputs\n"
    "                           it fed: a conversation's last turn) starts with them and prefills the\n"
    "                           rest, its last prompt token at least (vLLM's automatic prefix caching).\n"
    "                           An ended sequence's rows are kept until an admission needs the room\n"
    "                           (--max-total-tokens, else the places' largest reserves), least\n"
    "                           recently used first. One that would find --prefix-caching-wait\n"
    "                           positions more once a held one still prefilling them has waits for it\n"
    "                           (in-batch prefix caching, as SGLang's), so sequences admitted together\n"
    "                           share too; else only where sequences are admitted while others are\n"
    "                           held or kept: --max-num-seqs below the batch, or arrivals. The same\n"
    "                           tokens. Not with --mod, --all-logits, --prompt-logprobs or\n"
    "                           --route-from-trace\n"
    "  --prefix-caching-wait N  the prompt positions in flight worth waiting for (default 32, SGLang's\n"
    "                           threshold; 0: never wait)\n"
    "  --max-num-batched-tokens N\n"
    "                           instead of --prefill-chunk: at most N tokens a pass on each rank, its\n"
    "                           decode tokens first and its prompts' chunks in what they leave (vLLM's\n"
    "                           max_num_batched_tokens); at least the rank's places\n"
    "  --separate-prefill       passes hold prompt tokens or decode tokens, never both: decoding waits\n"
    "                           while a prompt is prefilled (vLLM before V1). Default: mixed batches,\n"
    "                           each pass the decoding sequences' next tokens and the admitted\n"
    "                           prompts' chunks (vLLM V1); the same tokens either way\n"
    "  --request-rate R         online serving: requests arrive at R per second (a Poisson process,\n"
    "                           as vLLM's benchmark_serving; 'inf': all at the start, the default),\n"
    "                           the first at once; each is admitted once it arrives, and TTFT and end\n"
    "                           to end count from its arrival (a request's n samples arrive together)\n"
    "  --burstiness B           the arrivals' gamma shape (default 1, Poisson; below 1 burstier)\n"
    "  --arrival-seed S         the arrivals' random seed (default 0)\n"
    "  --arrivals-from FILE     instead of --request-rate: request r arrives at the r-th request time of\n"
    "                           a serving trace (a .csv: Azure's LLM inference traces, BurstGPT; or\n"
    "                           Mooncake's JSON lines; its rows without prompt or output tokens left\n"
    "                           out, its lengths unused), from the first; at least as many as the\n"
    "                           input's requests\n"
    "  --time-scale X           those times multiplied by X (0.5: twice as fast; default 1)\n"
    "  --kernels ref|blas|cuda  compute kernels (default blas, also called cpu; cuda: the GPU of the rank's\n"
    "                           local index)\n"
    "  --bind                   bind each rank's threads and memory to the cores of its GPU's NUMA node\n"
    "                           (its share of the node's cores without GPUs; EPM_GPU_MAP=0,2,.. maps GPUs)\n"
    "  --report-bindings        print each rank's GPU, NUMA node and cores (stderr, one line per rank)\n"
    "  --timeout SEC            give up (every rank, non-zero exit) when a rank stalls this long\n"
    "  --top-p P                dynamic expert count: experts until their probability reaches P (<= k)\n"
    "  --ta-strength S          topology-aware gating: lower each expert's log-probability by S x the\n"
    "                           link cost to its nearest replica (0 = off)\n"
    "  --max-memory GB          refuse to start when a rank would hold more (weights as held + KV\n"
    "                           cache + a prefill pass's activations; default: the machine's\n"
    "                           available memory shared by its ranks)\n"
    "  --expert-dtype auto|bf16|f32\n"
    "                           auto (default): routed experts stay as the checkpoint stores them\n"
    "                           where the kernels are ref or blas: bf16 (half of float32's memory),\n"
    "                           or FP8 with its block scales (a quarter); the same values either\n"
    "                           way; bf16: an FP8 checkpoint's dequantised at load; f32: widened\n"
    "  --dense-dtype auto|bf16|f32\n"
    "                           the same for the dense weight matrices (attention projections,\n"
    "                           embedding, LM head, shared experts, dense MLPs; norms and routers stay\n"
    "                           float32): auto holds them bf16 when all of them are so stored (or\n"
    "                           FP8), and an FP8 checkpoint's attention projections (but MLA's kv_b)\n"
    "                           and shared and dense MLPs FP8 when all of those are; bf16: those\n"
    "                           dequantised too\n"
    "  --kv-dtype f32|bf16|fp8  what the K/V cache holds each value in: f32 (default, the reference\n"
    "                           arithmetic), bf16 (half the cache memory and half the bytes a decode\n"
    "                           step streams; K and V rounded to bf16 as they are stored) or fp8\n"
    "                           (float8 e4m3 with a float32 scale per cached head row, its largest\n"
    "                           magnitude over 448: about a quarter of the memory; vLLM's\n"
    "                           fp8_e4m3 cache dtype, with a scale per row, not per tensor)\n"
    "  --wire-dtype f32|bf16|fp8\n"
    "                           what activations travel between ranks in: f32 (default); bf16 (half\n"
    "                           the bytes of dispatch, combine, the K/V all-gather and the final\n"
    "                           gather, as DeepEP and vLLM send them): expert inputs and combined\n"
    "                           partial sums are rounded to bf16 on every rank, remote or not, and in\n"
    "                           follow mode so are the residual streams and the all-gathered K/V rows;\n"
    "                           fp8 (home mode, DeepEP's low-precision dispatch): the expert inputs as\n"
    "                           e4m3 with a scale per 128 values (hidden + 4 x ceil(hidden / 128)\n"
    "                           bytes a row), the combine in bf16. plan eval --wire-dtype predicts\n"
    "                           the bytes of each\n"
    "  --mla-cache latent|expanded\n"
    "                           DeepSeek's multi-head latent attention: cache the latent (default;\n"
    "                           kv_lora_rank + qk_rope_head_dim floats per token and layer, kv_b_proj\n"
    "                           absorbed) or a key and a value per head (transformers' arithmetic)\n"
    "  --eplb-interval N        online expert rebalancing (vLLM's and SGLang's --enable-eplb): every N\n"
    "                           forward passes the ranks sum how often each expert was chosen over the\n"
    "                           last --eplb-window passes and take the eplb placement of those loads\n"
    "                           (hot experts replicated into spare slots); a rank reads the experts it\n"
    "                           gains (--eplb-from) and drops those it loses. The same tokens\n"
    "                           (but with --ta-strength or --ta-node-cap, whose bias follows the\n"
    "                           placement); the bytes follow each pass's placement, which plan eval\n"
    "                           --eplb-interval predicts from the run's --trace-out\n"
    "  --eplb-window W          the passes whose loads count (default N)\n"
    "  --eplb-from S            where a gained expert comes from: checkpoint (default: the file every\n"
    "                           rank maps; no traffic between ranks) or peers (copied from a rank that\n"
    "                           holds it, on the same node where one does, as vLLM and SGLang copy\n"
    "                           experts between GPUs; plan eval --eplb-from peers prices the copies)\n"
    "  --eplb-slots S           experts a rank holds a MoE layer (default: the placement's most; the\n"
    "                           memory check counts S)\n"
    "  --redundant-experts N    instead of --eplb-slots: N physical experts beyond the model's (vLLM's\n"
    "                           num_redundant_experts), (experts + N) / ranks slots a rank\n"
    "  --eplb-lag N             asynchronous rebalancing (vLLM's default, use_async): each placement\n"
    "                           comes into service N passes after its boundary (below the interval),\n"
    "                           the passes between running under the one before while its experts are\n"
    "                           fetched (the checkpoint's pages read ahead; copies posted at the\n"
    "                           boundary on a communicator of their own, flat p2p, whatever --a2a,\n"
    "                           and waited for at the switch); default 0: at once\n"
    "  --expert-groups N        the expert groups rebalancing keeps whole on a node where they divide\n"
    "                           over the nodes (DeepSeek EPLB's hierarchical policy: group-limited\n"
    "                           routing then reaches no more nodes than its topk_group); default: the\n"
    "                           model's n_group, as vLLM and SGLang take it; 1: none (the global\n"
    "                           policy); plan eval --expert-groups replays it\n"
    "  --eplb-min-gain F        a MoE layer takes its new placement only if it lowers its busiest\n"
    "                           rank's (token, expert) pairs of the window by at least F of them\n"
    "                           (an expert's shared evenly by its replicas; default 0: every time);\n"
    "                           fewer experts move for a small gain\n"
    "  --placement-out FILE     the placement the last pass ran under (online rebalancing's last,\n"
    "                           learnt from the traffic: a --placement for the next run; with\n"
    "                           --eplb-lag, one still in flight at the end), as JSON\n"
    "  --a2a T                  row exchange: alltoallv (default), p2p, staged (MPI through pinned host\n"
    "                           memory, CUDA builds), nccl (one rank per GPU); EPM_A2A sets the default\n"
    "  --hier auto|on|off       hierarchical exchange between nodes (Tutel's 2DH): on; default auto, the\n"
    "                           flat exchange (one phase a hop where rows ride with their counts)\n"
    "  --ta-node-cap F          at most this share of a rank's tokens per MoE layer may choose experts\n"
    "                           on another node (TA-MoE's target dispatch distribution; live routing)\n"
    "  --mod off|router|attention|schedule\n"
    "                           Mixture-of-Depths: tokens that skip a block pass through on the residual\n"
    "                           stream, with no attention, no K/V row there and no dispatch (see README)\n"
    "  --mod-capacity F         fraction of each sequence's tokens that run a MoD layer (default 1)\n"
    "  --mod-layers LIST        MoD layers, e.g. 1-5,7 (default: every layer but the first)\n"
    "  --report                 per-layer bytes and loads, times, tokens/s (stderr, or stdout with --json)\n"
    "  --json                   results as JSON on stdout\n";

enum { O_TOPP = 300, O_TA, O_TIMEOUT, O_BIND, O_RBIND, O_MOD, O_MODCAP, O_MODLAY, O_TACAP, O_A2A, O_HIER, O_MAXMEM,
       O_EDT, O_DDT, O_MLA, O_KVDT, O_WDT, O_GENCFG, O_TEMP, O_STOPK, O_STOPP, O_MINP, O_REPP, O_SEED, O_STOPIDS,
       O_NOEOS, O_LOGPROBS, O_PRESP, O_FREQP, O_MINTOK, O_CHUNK, O_PLOGPROBS, O_MAXSEQS, O_SEPPRE,
       O_RATE, O_BURST, O_ASEED, O_MNBT, O_MTT, O_ARRFROM, O_TSCALE, O_PREFIX, O_PWAIT, O_EPLBI,
       O_EPLBW, O_EPLBS, O_POUT, O_EPLBG, O_EPLBF, O_EPLBLAG, O_GROUPS, O_REDUNDANT };
enum { O_MODEL = 256, O_INPUT, O_PLACE, O_MODE, O_MAXNEW, O_VN, O_RFT, O_TOUT, O_LOUT, O_OUT, O_ALL, O_KER, O_REP, O_JSON, O_HELP };

static const struct option opts[] = {
    {"model", required_argument, 0, O_MODEL},        {"input", required_argument, 0, O_INPUT},
    {"placement", required_argument, 0, O_PLACE},    {"mode", required_argument, 0, O_MODE},
    {"max-new-tokens", required_argument, 0, O_MAXNEW}, {"virtual-nodes", required_argument, 0, O_VN},
    {"route-from-trace", required_argument, 0, O_RFT}, {"trace-out", required_argument, 0, O_TOUT},
    {"logits-out", required_argument, 0, O_LOUT},    {"all-logits", no_argument, 0, O_ALL},
    {"kernels", required_argument, 0, O_KER},        {"report", no_argument, 0, O_REP},
    {"output", required_argument, 0, O_OUT},       {"json", no_argument, 0, O_JSON},                {"help", no_argument, 0, O_HELP},
    {"bind", no_argument, 0, O_BIND},                {"report-bindings", no_argument, 0, O_RBIND},
    {"timeout", required_argument, 0, O_TIMEOUT},    {"top-p", required_argument, 0, O_TOPP},         {"ta-strength", required_argument, 0, O_TA},
    {"mod", required_argument, 0, O_MOD},            {"mod-capacity", required_argument, 0, O_MODCAP},
    {"mod-layers", required_argument, 0, O_MODLAY}, {"ta-node-cap", required_argument, 0, O_TACAP},
    {"a2a", required_argument, 0, O_A2A},            {"hier", required_argument, 0, O_HIER},
    {"max-memory", required_argument, 0, O_MAXMEM},  {"expert-dtype", required_argument, 0, O_EDT},
    {"dense-dtype", required_argument, 0, O_DDT},     {"mla-cache", required_argument, 0, O_MLA},
    {"kv-dtype", required_argument, 0, O_KVDT},
    {"wire-dtype", required_argument, 0, O_WDT},
    {"generation-config", required_argument, 0, O_GENCFG}, {"temperature", required_argument, 0, O_TEMP},
    {"sample-top-k", required_argument, 0, O_STOPK}, {"sample-top-p", required_argument, 0, O_STOPP},
    {"min-p", required_argument, 0, O_MINP},         {"repetition-penalty", required_argument, 0, O_REPP},
    {"seed", required_argument, 0, O_SEED},          {"stop-token-ids", required_argument, 0, O_STOPIDS},
    {"ignore-eos", no_argument, 0, O_NOEOS},        {"logprobs", required_argument, 0, O_LOGPROBS},
    {"presence-penalty", required_argument, 0, O_PRESP}, {"frequency-penalty", required_argument, 0, O_FREQP},
    {"min-tokens", required_argument, 0, O_MINTOK}, {"prefill-chunk", required_argument, 0, O_CHUNK},
    {"max-num-seqs", required_argument, 0, O_MAXSEQS},
    {"separate-prefill", no_argument, 0, O_SEPPRE},
    {"request-rate", required_argument, 0, O_RATE}, {"burstiness", required_argument, 0, O_BURST},
    {"arrival-seed", required_argument, 0, O_ASEED}, {"max-num-batched-tokens", required_argument, 0, O_MNBT},
    {"prompt-logprobs", required_argument, 0, O_PLOGPROBS}, {"max-total-tokens", required_argument, 0, O_MTT},
    {"arrivals-from", required_argument, 0, O_ARRFROM}, {"time-scale", required_argument, 0, O_TSCALE},
    {"enable-prefix-caching", no_argument, 0, O_PREFIX}, {"prefix-caching-wait", required_argument, 0, O_PWAIT},
    {"eplb-interval", required_argument, 0, O_EPLBI}, {"eplb-window", required_argument, 0, O_EPLBW},
    {"eplb-slots", required_argument, 0, O_EPLBS}, {"placement-out", required_argument, 0, O_POUT},
    {"redundant-experts", required_argument, 0, O_REDUNDANT},
    {"eplb-min-gain", required_argument, 0, O_EPLBG}, {"eplb-from", required_argument, 0, O_EPLBF},
    {"eplb-lag", required_argument, 0, O_EPLBLAG},
    {"expert-groups", required_argument, 0, O_GROUPS},
    {0, 0, 0, 0}};

/* The checkpoint file (a name in dir) that out would overwrite, or NULL:
 * compared as files, so other spellings, symlinks and hard links count. */
static const char *model_file_clash(const char *dir, const char *out)
{
    static char name[256];
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    const char *hit = NULL;
    for (struct dirent *e; !hit && (e = readdir(d));) {
        char path[4096];
        if (e->d_name[0] == '.' || snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        if (cli_same_file(path, out)) {
            snprintf(name, sizeof name, "%s", e->d_name);
            hit = name;
        }
    }
    closedir(d);
    return hit;
}

static epm_status write_logits(const char *path, const epm_run_result *res, int all)
{
    epm_st_writer *w;
    EPM_CHECK(epm_st_writer_create(&w));
    int64_t shape3[3] = {res->batch, res->lens[0], res->vocab}, shape2[2] = {res->batch, res->vocab};
    int same = 1;
    for (int s = 1; s < res->batch; s++)
        same &= res->lens[s] == res->lens[0];
    epm_status st;
    if (all && same)
        st = epm_st_writer_add(w, "logits", EPM_DTYPE_F32, 3, shape3, res->logits);
    else if (all) {
        int64_t total = 0;
        for (int s = 0; s < res->batch; s++)
            total += res->lens[s];
        int64_t flat[2] = {total, res->vocab};
        st = epm_st_writer_add(w, "logits", EPM_DTYPE_F32, 2, flat, res->logits);
    } else {
        st = epm_st_writer_add(w, "logits", EPM_DTYPE_F32, 2, shape2, res->logits);
    }
    if (st == EPM_OK)
        st = epm_st_writer_save(w, path);
    epm_st_writer_destroy(w);
    return st;
}

static void print_report(FILE *f, const epm_run_result *res, int json)
{
    const epm_run_report *r = &res->report;
    /* (the run's placement carries the mode it ran in) */
    const char *mode = res->placement ? epm_mode_name(epm_placement_get_info(res->placement)->mode) : "?";
    double tps = r->t_prefill > 0 ? (double)r->prefill_tokens / r->t_prefill : 0;
    double dps = r->t_decode > 0 ? (double)r->decode_tokens / r->t_decode : 0;
    if (json) {
        fprintf(f, "\"report\": {\"mode\": \"%s\", \"ranks\": %d, \"nodes\": %d, \"prefill_tokens\": %lld, \"cached_prompt_tokens\": %lld, \"prefill_passes\": %d, \"max_num_seqs\": %d, \"decode_tokens\": %lld, \"decode_steps\": %lld, \"mixed_passes\": %lld, "
                   "\"prefill_tokens_per_s\": %.3f, \"decode_tokens_per_s\": %.3f, \"seconds\": {\"prefill\": %.6f, "
                   "\"decode\": %.6f, \"attention\": %.6f, \"gate\": %.6f, \"dispatch\": %.6f, \"experts\": %.6f, "
                   "\"combine\": %.6f}, \"expert_dtype\": \"%s\", \"dense_dtype\": \"%s\", \"weight_bytes_max_rank\": %lld, \"kv_cache\": \"%s\", \"kv_dtype\": \"%s\", \"kv_row_floats\": %d, \"kv_cache_bytes_max_rank\": %lld, \"kv_positions_max_rank\": %lld, \"wire_dtype\": \"%s\", \"gather_bytes\": [%lld, %lld, %lld], \"layers\": [",
                mode, r->ranks, r->nodes, (long long)r->prefill_tokens, (long long)r->cached_prompt_tokens, r->prefill_passes, r->max_num_seqs, (long long)r->decode_tokens, (long long)r->decode_steps, (long long)r->mixed_passes, tps, dps, r->t_prefill,
                r->t_decode, r->t_attention, r->t_gate, r->t_dispatch, r->t_experts, r->t_combine,
                epm_dtype_name(r->expert_dtype), epm_dtype_name(r->dense_dtype), (long long)r->weight_bytes_max, r->kv_cache ? r->kv_cache : "?", epm_dtype_name(r->kv_dtype), r->kv_row_floats, (long long)r->kv_cache_bytes_max, (long long)r->kv_positions_max, epm_dtype_name(r->wire_dtype), (long long)r->gather_bytes[0], (long long)r->gather_bytes[1],
                (long long)r->gather_bytes[2]);
        for (int l = 0; l < r->moe_layers; l++) {
            const int64_t *b = r->bytes + l * EPM_LINK_COUNT, *k = r->kv_bytes + l * EPM_LINK_COUNT;
            fprintf(f, "%s{\"bytes\": [%lld, %lld, %lld], \"kv_bytes\": [%lld, %lld, %lld], \"rank_load\": [", l ? ", " : "",
                    (long long)b[0], (long long)b[1], (long long)b[2], (long long)k[0], (long long)k[1], (long long)k[2]);
            for (int q = 0; q < r->ranks; q++)
                fprintf(f, "%s%lld", q ? ", " : "", (long long)r->rank_load[(size_t)l * r->ranks + q]);
            fprintf(f, "]}");
        }
        fprintf(f, "], \"hops\": %lld, \"hops_agreed\": %lld, \"hops_fused\": %lld, \"cpu_threads\": %d",
                (long long)r->hops, (long long)r->hops_agreed, (long long)r->hops_fused, r->cpu_threads);
        fprintf(f, ", \"transport\": \"%s\", \"hierarchical\": %s, \"wire_bytes\": [%lld, %lld, %lld], "
                   "\"wire_msgs\": [%lld, %lld, %lld], \"dense_kv_bytes\": [%lld, %lld, %lld], "
                   "\"mod_score_bytes\": [%lld, %lld, %lld], \"aside_msgs\": [%lld, %lld, %lld]",
                r->transport ? r->transport : "?", r->hierarchical ? "true" : "false", (long long)r->wire_bytes[0],
                (long long)r->wire_bytes[1], (long long)r->wire_bytes[2], (long long)r->wire_msgs[0],
                (long long)r->wire_msgs[1], (long long)r->wire_msgs[2], (long long)r->dense_kv_bytes[0],
                (long long)r->dense_kv_bytes[1], (long long)r->dense_kv_bytes[2], (long long)r->mod_score_bytes[0],
                (long long)r->mod_score_bytes[1], (long long)r->mod_score_bytes[2],
                (long long)(r->dense_kv_msgs[0] + r->mod_score_msgs[0]),
                (long long)(r->dense_kv_msgs[1] + r->mod_score_msgs[1]),
                (long long)(r->dense_kv_msgs[2] + r->mod_score_msgs[2]));
        fprintf(f, ", \"eplb\": {\"rebalances\": %d, \"experts_moved\": %lld, \"bytes_read\": %lld, \"expert_bytes\": "
                   "%lld, \"bytes_copied\": [%lld, %lld, %lld], \"wire_bytes\": [%lld, %lld, %lld], \"wire_msgs\": [%lld, "
                   "%lld, %lld], \"seconds\": %.6f, \"lag\": %d, \"groups\": %d, \"hierarchical\": %s}",
                r->eplb_rebalances, (long long)r->eplb_moved, (long long)r->eplb_bytes, (long long)r->eplb_expert_bytes,
                (long long)r->eplb_peer_bytes[0], (long long)r->eplb_peer_bytes[1], (long long)r->eplb_peer_bytes[2],
                (long long)r->eplb_wire_bytes[0], (long long)r->eplb_wire_bytes[1], (long long)r->eplb_wire_bytes[2],
                (long long)r->eplb_wire_msgs[0], (long long)r->eplb_wire_msgs[1], (long long)r->eplb_wire_msgs[2],
                r->t_eplb, r->eplb_lag, r->eplb_groups, r->eplb_hierarchical ? "true" : "false");
        fprintf(f, ", \"layer_tokens\": [");
        for (int l = 0; l < r->num_layers; l++)
            fprintf(f, "%s%lld", l ? ", " : "", (long long)r->layer_tokens[l]);
        fprintf(f, "], \"latency_s\": {");
        const epm_latency *lat[4] = {&r->ttft, &r->tpot, &r->itl, &r->e2e};
        const char *lname[4] = {"ttft", "tpot", "itl", "e2e"};
        for (int i = 0; i < 4; i++)
            fprintf(f, "%s\"%s\": {\"n\": %lld, \"mean\": %.6f, \"p50\": %.6f, \"p90\": %.6f, \"p99\": %.6f, "
                       "\"max\": %.6f}", i ? ", " : "", lname[i], (long long)lat[i]->n, lat[i]->mean, lat[i]->p50,
                    lat[i]->p90, lat[i]->p99, lat[i]->max);
        /* each sequence's times from the run's start (vLLM's RequestMetrics, relative): arrived,
         * admitted, first token (null: none asked for), finished */
        const double *ts[4] = {res->t_arrive, res->t_admit, res->t_first, res->t_done};
        const char *tn[4] = {"arrived", "admitted", "first_token", "finished"};
        fprintf(f, "}, \"wait_for_arrivals_s\": %.6f, \"times_s\": {", r->t_wait);
        for (int k = 0; k < 4; k++) {
            fprintf(f, "%s\"%s\": [", k ? ", " : "", tn[k]);
            for (int s = 0; s < res->batch; s++)
                fprintf(f, isfinite(ts[k][s]) ? "%s%.6f" : "%snull", s ? ", " : "", ts[k][s]);
            fprintf(f, "]");
        }
        fprintf(f, "}}");
        return;
    }
    char passes[192] = "";
    if (r->mixed_passes > 0)
        snprintf(passes, sizeof passes, " (%d passes, %lld of them mixed with decode tokens)", r->prefill_passes,
                 (long long)r->mixed_passes);
    else if (r->prefill_passes > 1)
        snprintf(passes, sizeof passes, " (%d passes)", r->prefill_passes);
    if (r->cached_prompt_tokens > 0) /* prefix caching: what was taken rather than computed (vLLM's hit rate) */
        snprintf(passes + strlen(passes), sizeof passes - strlen(passes),
                 ", %lld more from cached prefixes (hit rate %.1f%%)", (long long)r->cached_prompt_tokens,
                 100.0 * (double)r->cached_prompt_tokens / (double)(r->cached_prompt_tokens + r->prefill_tokens));
    fprintf(f, "%s mode, ranks %d (%d nodes)  prefill %lld tokens%s in %.3f s (%.1f tok/s)  decode %lld tokens in "
               "%.3f s (%.1f tok/s, at most %d sequences at once)\n",
            mode, r->ranks, r->nodes, (long long)r->prefill_tokens, passes, r->t_prefill, tps, (long long)r->decode_tokens,
            r->t_decode, dps, r->max_num_seqs);
    fprintf(f, "time (slowest rank): attention %.3f  gate %.3f  dispatch %.3f  experts %.3f  combine %.3f s\n",
            r->t_attention, r->t_gate, r->t_dispatch, r->t_experts, r->t_combine);
    double last = 0; /* the last arrival */
    for (int q = 0; q < res->batch; q++)
        last = res->t_arrive[q] > last ? res->t_arrive[q] : last;
    char arrivals[128] = "all sequences arriving at the start";
    if (last > 0)
        snprintf(arrivals, sizeof arrivals, "from arrival; arrivals over %.3f s, %.3f s waiting for them", last,
                 r->t_wait);
    if (r->ttft.n > 0)
        fprintf(f, "latency (%s): TTFT mean %.1f ms p50 %.1f p99 %.1f; TPOT mean %.1f ms "
                   "p50 %.1f p99 %.1f; ITL p50 %.1f ms p99 %.1f max %.1f; end to end p50 %.3f s p99 %.3f\n",
                arrivals, 1e3 * r->ttft.mean, 1e3 * r->ttft.p50, 1e3 * r->ttft.p99, 1e3 * r->tpot.mean, 1e3 * r->tpot.p50,
                1e3 * r->tpot.p99, 1e3 * r->itl.p50, 1e3 * r->itl.p99, 1e3 * r->itl.max, r->e2e.p50, r->e2e.p99);
    fprintf(f, "checkpoint bytes read: %lld on the busiest rank, %lld in all; KV cache %lld bytes (%lld positions) on "
               "the fullest rank (%s, %d values per token and layer, each %s%s); routed experts held as %s, dense "
               "matrices as %s\n",
            (long long)r->weight_bytes_max, (long long)r->weight_bytes_sum, (long long)r->kv_cache_bytes_max,
            (long long)r->kv_positions_max,
            r->kv_cache ? r->kv_cache : "?", r->kv_row_floats, epm_dtype_name(r->kv_dtype),
            r->kv_dtype == EPM_DTYPE_F8_E4M3 ? ", a float32 scale per head row" : "",
            epm_dtype_name(r->expert_dtype),
            epm_dtype_name(r->dense_dtype));
    int64_t tot[3] = {0, 0, 0};
    for (int l = 0; l < r->moe_layers; l++) {
        const int64_t *b = r->bytes + l * EPM_LINK_COUNT, *k = r->kv_bytes + l * EPM_LINK_COUNT;
        int64_t mx = 0, sum = 0;
        for (int q = 0; q < r->ranks; q++) {
            int64_t v = r->rank_load[(size_t)l * r->ranks + q];
            mx = v > mx ? v : mx;
            sum += v;
        }
        fprintf(f, "  moe layer %3d: bytes intra %lld inter %lld (+kv %lld/%lld)  load max %lld mean %.1f\n", l,
                (long long)b[1], (long long)b[2], (long long)k[1], (long long)k[2], (long long)mx,
                (double)sum / r->ranks);
        for (int c = 0; c < 3; c++)
            tot[c] += b[c] + k[c];
    }
    fprintf(f, "on the wire (%s%s, activations %s): intra-node %lld bytes in %lld messages, inter-node %lld bytes in %lld messages\n",
            r->transport ? r->transport : "?", r->hierarchical ? ", hierarchical" : ", flat",
            epm_dtype_name(r->wire_dtype), (long long)r->wire_bytes[1], (long long)r->wire_msgs[1], (long long)r->wire_bytes[2],
            (long long)r->wire_msgs[2]);
    /* (in the wire, outside plan eval's model of MoE layers) */
    if (r->dense_kv_bytes[1] + r->dense_kv_bytes[2] + r->mod_score_bytes[1] + r->mod_score_bytes[2] > 0)
        fprintf(f, "  of which not MoE layers' tokens: K/V of layers without experts intra %lld inter %lld, MoD scores "
                   "intra %lld inter %lld bytes\n", (long long)r->dense_kv_bytes[1], (long long)r->dense_kv_bytes[2],
                (long long)r->mod_score_bytes[1], (long long)r->mod_score_bytes[2]);
    if (r->eplb_rebalances > 0 && r->eplb_groups > 1)
        fprintf(f, "online rebalancing: %d expert groups, %s\n", r->eplb_groups,
                r->eplb_hierarchical ? "each kept whole on a node (hierarchical)"
                                     : "the global policy (they do not divide over the nodes)");
    if (r->eplb_rebalances > 0 && r->eplb_lag > 0)
        fprintf(f, "online rebalancing asynchronous: each placement in service %d pass%s after its boundary\n",
                r->eplb_lag, r->eplb_lag > 1 ? "es" : "");
    if (r->eplb_rebalances > 0 && r->eplb_expert_bytes > 0)
        fprintf(f, "online rebalancing: %d placements taken, %lld experts moved, copied from peers: %lld bytes "
                   "intra-node, %lld inter-node (%lld an expert), %.3f s\n", r->eplb_rebalances,
                (long long)r->eplb_moved, (long long)r->eplb_peer_bytes[EPM_LINK_INTRA],
                (long long)r->eplb_peer_bytes[EPM_LINK_INTER], (long long)r->eplb_expert_bytes, r->t_eplb);
    else if (r->eplb_rebalances > 0)
        fprintf(f, "online rebalancing: %d placements taken, %lld experts moved, %lld checkpoint bytes read, "
                   "%.3f s\n", r->eplb_rebalances, (long long)r->eplb_moved, (long long)r->eplb_bytes, r->t_eplb);
    int64_t ran = 0, all = (r->prefill_tokens + r->decode_tokens) * r->num_layers;
    for (int l = 0; l < r->num_layers; l++)
        ran += r->layer_tokens[l];
    if (ran < all)
        fprintf(f, "mixture-of-depths: %lld of %lld token-blocks ran (%.1f%% skipped)\n", (long long)ran,
                (long long)all, 100.0 * (double)(all - ran) / (double)all);
    fprintf(f, "total bytes: intra-node %lld  inter-node %lld  (+ final gather %lld/%lld)\n", (long long)tot[1],
            (long long)tot[2], (long long)r->gather_bytes[1], (long long)r->gather_bytes[2]);
}

/* The decoding flags as given; each one set overrides the generation config's value. */
typedef struct gen_flags {
    const char *config; /* auto (NULL), none, or a file */
    epm_sampling s;
    int temperature, top_k, top_p, min_p, rp, presence, frequency, min_tokens; /* given */
    int32_t stop[EPM_MAX_STOP_IDS];
    int n_stop, ignore_eos;
} gen_flags;

static int parse_stop_ids(const char *W, const char *val, gen_flags *f)
{
    long ids[EPM_MAX_STOP_IDS];
    int n; /* a second --stop-token-ids adds to the first */
    if (!cli_parse_int_list(W, "--stop-token-ids", val, 0, INT32_MAX, "token ids", ids, EPM_MAX_STOP_IDS, &n))
        return 0;
    if (f->n_stop + n > EPM_MAX_STOP_IDS)
        return cli_usage_error(W, "--stop-token-ids: %d ids in all; at most %d", f->n_stop + n, EPM_MAX_STOP_IDS), 0;
    for (int i = 0; i < n; i++)
        f->stop[f->n_stop++] = (int32_t)ids[i];
    return 1;
}

/* The run's sampling and stop tokens: the generation config (the
 * checkpoint's, a file, or none), then the flags over it. */
static epm_status decoding(const char *model_dir, const gen_flags *f, epm_sampling *s, int32_t *stop, int *n_stop,
                           int32_t *eos, int *n_eos)
{
    epm_generation_config gc;
    memset(&gc, 0, sizeof gc);
    int none = f->config && !strcmp(f->config, "none");
    epm_status st = none ? epm_generation_config_eos(model_dir, &gc)
                         : epm_generation_config_load(model_dir, f->config && strcmp(f->config, "auto") ? f->config
                                                                                                          : NULL, &gc);
    if (st != EPM_OK)
        return st;
    /* --temperature > 0 over a greedy config samples as generate(do_sample=True)
     * would: with the file's top-k, top-p and min-p (transformers' top_k 50
     * where it is silent); with `none`, from nothing (vLLM's defaults) */
    *s = f->temperature && f->s.temperature > 0 && !none ? gc.if_sampled : gc.sampling;
    if (f->temperature)
        s->temperature = f->s.temperature;
    if (f->top_k)
        s->top_k = f->s.top_k;
    if (f->top_p)
        s->top_p = f->s.top_p;
    if (f->min_p)
        s->min_p = f->s.min_p;
    if (f->rp)
        s->repetition_penalty = f->s.repetition_penalty;
    if (f->presence)
        s->presence_penalty = f->s.presence_penalty;
    if (f->frequency)
        s->frequency_penalty = f->s.frequency_penalty;
    if (f->min_tokens)
        s->min_tokens = f->s.min_tokens;
    s->seed = f->s.seed;
    if (((f->top_k && f->s.top_k > 0) || (f->top_p && f->s.top_p < 1) || (f->min_p && f->s.min_p > 0)) &&
        !epm_sampling_random(s))
        return epm_fail(EPM_ERR_INVALID_ARG, "--sample-top-k, --sample-top-p and --min-p shape sampling, but this run "
                        "decodes greedily: give --temperature > 0 (or a generation config with do_sample true)");
    if (!epm_sampling_random(s)) /* greedy: only the penalties mean anything (and the report says so) */
        *s = (epm_sampling){.repetition_penalty = s->repetition_penalty, .presence_penalty = s->presence_penalty,
                            .frequency_penalty = s->frequency_penalty, .min_tokens = s->min_tokens, .seed = s->seed};
    EPM_CHECK(epm_sampling_validate(s));
    /* the checkpoint's stop tokens (not with --ignore-eos), then the flags',
     * each once: a request's rule, with no request over the run */
    memcpy(eos, gc.eos, (size_t)gc.n_eos * sizeof *eos);
    *n_eos = gc.n_eos;
    return epm_request_sampling_apply(NULL, s, gc.eos, gc.n_eos, f->ignore_eos, f->stop, f->n_stop, "run", s, stop,
                                      n_stop);
}

/* the fields of a "sampling" object (off as vLLM writes it: top_p and repetition_penalty 1) */
static void print_sampling(const epm_sampling *s)
{
    printf("\"temperature\": %.17g, \"top_k\": %d, \"top_p\": %.17g, \"min_p\": %.17g, \"repetition_penalty\": "
           "%.17g, \"presence_penalty\": %.17g, \"frequency_penalty\": %.17g, \"min_tokens\": %d, \"seed\": %llu",
           s->temperature, s->top_k, s->top_p > 0 ? s->top_p : 1, s->min_p,
           s->repetition_penalty > 0 ? s->repetition_penalty : 1, s->presence_penalty, s->frequency_penalty,
           s->min_tokens, (unsigned long long)s->seed);
}

static void print_ids(const int32_t *ids, int n)
{
    printf("[");
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", (int)ids[i]);
    printf("]");
}

static void print_ints(const int *v, int n)
{
    printf("[");
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", v[i]);
    printf("]");
}

/* "logprobs": per sequence, per generated token {"token", "logprob", "top": [[id, logprob], ...]},
 * with shown[s] of the top tokens (NULL: all; -1: null, a request that did not ask) */
static void print_logprobs(const epm_run_result *res, int maxnew, const int *shown)
{
    printf(", \"logprobs\": [");
    for (int s = 0; s < res->batch; s++) {
        printf("%s", s ? ", " : "");
        if (shown && shown[s] < 0)
            printf("null");
        else
            run_print_gen_lp(stdout, res, maxnew, s, shown ? shown[s] : res->top_logprobs);
    }
    printf("]");
}

/* "prompt_logprobs": per sequence, null for its first token, then per prompt
 * token {"token", "logprob", "top": [[id, logprob], ...]} (vLLM's
 * prompt_logprobs); "prompt_perplexity": per sequence exp(-mean logprob)
 * over those tokens (null for a one-token prompt or one the model rules out) */
static void print_prompt_logprobs(const epm_run_result *res, const int32_t *const *ids, const int *shown)
{
    printf(", \"prompt_logprobs\": [");
    int64_t at = 0;
    for (int s = 0; s < res->batch; at += res->lens[s++]) {
        printf("%s", s ? ", " : "");
        if (shown && shown[s] < 0)
            printf("null");
        else
            run_print_prompt_lp(stdout, res, ids[s], s, at, shown ? shown[s] : res->prompt_top);
    }
    printf("], \"prompt_perplexity\": [");
    at = 0;
    for (int s = 0; s < res->batch; at += res->lens[s++]) {
        double sum = 0;
        if (shown && shown[s] < 0) {
            printf("%snull", s ? ", " : "");
            continue;
        }
        for (int p = 1; p < res->lens[s]; p++)
            sum += res->prompt_lp[at + p];
        double ppl = exp(-sum / (res->lens[s] - 1));
        if (res->lens[s] > 1 && isfinite(ppl))
            printf("%s%.9g", s ? ", " : "", ppl);
        else
            printf("%snull", s ? ", " : "");
    }
    printf("]");
}

/* Binding failures are reported and the run goes on unbound: a container
 * may forbid it, and a slower run beats no run. */
/* A bad EPM_GPU_MAP (or MPI's rank variables) is the user's error and fails
 * the run; a machine that cannot be bound only says so. */
static epm_status bind_rank(int apply, int report)
{
    epm_binding_opts bo;
    int map[256];
    epm_binding b;
    epm_hwtopo *topo = NULL;
    epm_binding_opts_init(&bo);
    EPM_CHECK(epm_binding_opts_from_env(&bo, map, 256));
    epm_status st = epm_hwtopo_load(&topo);
    if (st == EPM_OK)
        st = epm_binding_plan(topo, &bo, &b);
    if (st == EPM_OK && apply && epm_binding_apply(topo, &b) != EPM_OK)
        fprintf(stderr, "epmoe run: rank %d: binding not applied: %s\n", bo.rank, epm_last_error());
    if (st == EPM_OK && report) {
        char line[512];
        epm_binding_format(&b, line, sizeof line);
        fprintf(stderr, "binding: %s\n", line);
    } else if (st != EPM_OK && bo.rank >= 0) {
        fprintf(stderr, "epmoe run: rank %d: no binding: %s\n", bo.rank, epm_last_error());
    } else if (st != EPM_OK) {
        fprintf(stderr, "epmoe run: no binding: %s\n", epm_last_error());
    }
    epm_hwtopo_destroy(topo);
    return EPM_OK;
}

/* ---- test hook: begin -------------------------------------------------
 * EPM_TEST_FAIL_ALLOC_RANK=r EPM_TEST_FAIL_ALLOC_NTH=n make the n-th
 * allocation of the run fail on rank r only (dist/alloc.c's injector), so
 * that tests/cli/test_failures.sh can check that an out-of-memory on one rank
 * ends every rank cleanly, with one message. Nothing happens without both. */
static void test_hook_fail_alloc(int rank)
{
    const char *r = getenv("EPM_TEST_FAIL_ALLOC_RANK"), *n = getenv("EPM_TEST_FAIL_ALLOC_NTH");
    if (r && n && atoi(r) == rank)
        epm_fault_fail_nth_alloc(strtoull(n, NULL, 10));
}
/* ---- test hook: end --------------------------------------------------- */

int epm_cli_run(int argc, char **argv)
{
    const char *W = "run";
    epm_run_opts o;
    memset(&o, 0, sizeof o);
    o.ops = "blas";
    const char *input = NULL, *place = NULL, *rft = NULL, *tout = NULL, *lout = NULL, *oout = NULL,
               *pout = NULL;
    gen_flags gf;
    memset(&gf, 0, sizeof gf);
    int32_t stop_ids[2 * EPM_MAX_STOP_IDS];
    int report = 0, json = 0, c, k, bind = 0, report_bindings = 0, maxnew_given = 0, chunk_given = 0, seqs_given = 0;
    double rate = INFINITY, burstiness = 1; /* --request-rate: offline unless given */
    uint64_t arrival_seed = 0;
    const char *arrivals_from = NULL; /* a serving trace whose request times the input's requests take */
    double time_scale = 1;
    int scale_given = 0, wait_given = 0, from_given = 0;
    const char *shape_of_arrivals = NULL; /* --burstiness or --arrival-seed, given */
    long budget = 0;                      /* --max-num-batched-tokens */
    int mode_given = 0;
    long v;
    if (cli_exact_options(W, argc, argv, opts, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: o.model_dir = optarg; break;
        case O_INPUT: input = optarg; break;
        case O_PLACE: place = optarg; break;
        case O_MODE:
            if (epm_mode_parse(optarg, &o.mode) != EPM_OK) return cli_usage_error(W, "%s", epm_last_error());
            mode_given = 1;
            break;
        case O_MAXNEW:
            if (!cli_parse_int(W, "--max-new-tokens", optarg, 0, 1 << 20, &v)) return EPM_EXIT_USAGE;
            o.max_new_tokens = (int)v;
            maxnew_given = 1;
            break;
        case O_VN: if (!cli_parse_int(W, "--virtual-nodes", optarg, 1, 4096, &v)) return EPM_EXIT_USAGE; o.virtual_nodes = (int)v; break;
        case O_RFT: rft = optarg; break;
        case O_TOUT: tout = optarg; break;
        case O_LOUT: lout = optarg; break;
        case O_OUT: oout = optarg; break;
        case O_ALL: o.keep_logits = 1; break;
        case O_KER:
            if (strcmp(optarg, "ref") && strcmp(optarg, "blas") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda"))
                return cli_usage_error(W, "--kernels must be ref, blas (also cpu, as bench kernels names it) or cuda");
            o.ops = strcmp(optarg, "cpu") ? optarg : "blas";
            break;
        case O_REP: report = 1; break;
        case O_EDT:
        case O_DDT: {
            static const char *const held[] = {"auto", "bf16", "f32", NULL};
            if (!cli_parse_choice(W, c == O_EDT ? "--expert-dtype" : "--dense-dtype", optarg, held, &k))
                return EPM_EXIT_USAGE;
            *(c == O_EDT ? &o.experts_bf16 : &o.dense_bf16) = k == 1;
            *(c == O_EDT ? &o.experts_f32 : &o.dense_f32) = k == 2;
            break;
        }
        case O_KVDT: {
            static const char *const kvd[] = {"f32", "bf16", "fp8", NULL};
            if (!cli_parse_choice(W, "--kv-dtype", optarg, kvd, &k))
                return EPM_EXIT_USAGE;
            o.kv_bf16 = k == 1;
            o.kv_fp8 = k == 2;
            break;
        }
        case O_WDT:
            if (!cli_parse_choice(W, "--wire-dtype", optarg, cli_wire_dtypes, &k))
                return EPM_EXIT_USAGE;
            o.wire_bf16 = k == CLI_WIRE_BF16;
            o.wire_fp8 = k == CLI_WIRE_FP8;
            break;
        case O_MLA: {
            static const char *const forms[] = {"latent", "expanded", NULL};
            if (!cli_parse_choice(W, "--mla-cache", optarg, forms, &k))
                return EPM_EXIT_USAGE;
            o.mla_expanded = k == 1;
            break;
        }
        case O_BIND: bind = 1; break;
        case O_RBIND: report_bindings = 1; break;
        case O_TIMEOUT: if (!cli_parse_double(W, "--timeout", optarg, 0, 1e7, &o.timeout_s)) return EPM_EXIT_USAGE; break;
        case O_TOPP: if (!cli_parse_double(W, "--top-p", optarg, 0, 1, &o.top_p)) return EPM_EXIT_USAGE; break;
        case O_TA: if (!cli_parse_double(W, "--ta-strength", optarg, 0, 1e6, &o.ta_strength)) return EPM_EXIT_USAGE; break;
        case O_MOD: {
            static const char *const names[] = {"off", "router", "attention", "schedule"};
            int k = 0;
            while (k < 4 && strcmp(optarg, names[k]))
                k++;
            if (k == 4)
                return cli_usage_error(W, "--mod must be off, router, attention or schedule");
            o.mod = (epm_mod_source)k;
            break;
        }
        case O_MODCAP:
            if (!cli_parse_double(W, "--mod-capacity", optarg, 1e-9, 1, &o.mod_capacity)) return EPM_EXIT_USAGE;
            break;
        case O_MODLAY: o.mod_layers = optarg; break;
        case O_A2A: o.a2a = optarg; break;
        case O_MAXMEM:
            if (!cli_parse_double(W, "--max-memory", optarg, 1e-9, 1e9, &o.max_memory)) return EPM_EXIT_USAGE;
            o.max_memory *= 1e9;
            break;
        case O_HIER: o.a2a_hier = optarg; break;
        case O_TACAP:
            if (!cli_parse_double(W, "--ta-node-cap", optarg, 0, 1, &o.ta_node_cap)) return EPM_EXIT_USAGE;
            o.ta_node_cap_on = 1;
            break;
        case O_GENCFG: gf.config = optarg; break;
        case O_TEMP:
            if (!cli_parse_double(W, "--temperature", optarg, 0, 1e6, &gf.s.temperature)) return EPM_EXIT_USAGE;
            gf.temperature = 1;
            break;
        case O_STOPK:
            if (!cli_parse_int(W, "--sample-top-k", optarg, 0, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            gf.s.top_k = (int)v;
            gf.top_k = 1;
            break;
        case O_STOPP:
            if (!cli_parse_double(W, "--sample-top-p", optarg, 1e-9, 1, &gf.s.top_p)) return EPM_EXIT_USAGE;
            gf.top_p = 1;
            break;
        case O_MINP:
            if (!cli_parse_double(W, "--min-p", optarg, 0, 0.999999, &gf.s.min_p)) return EPM_EXIT_USAGE;
            gf.min_p = 1;
            break;
        case O_REPP:
            if (!cli_parse_double(W, "--repetition-penalty", optarg, EPM_REPETITION_PENALTY_MIN,
                                  EPM_REPETITION_PENALTY_MAX, &gf.s.repetition_penalty))
                return EPM_EXIT_USAGE;
            gf.rp = 1;
            break;
        case O_PRESP:
        case O_FREQP:
            if (!cli_parse_double(W, c == O_PRESP ? "--presence-penalty" : "--frequency-penalty", optarg, -2, 2,
                                  c == O_PRESP ? &gf.s.presence_penalty : &gf.s.frequency_penalty))
                return EPM_EXIT_USAGE;
            *(c == O_PRESP ? &gf.presence : &gf.frequency) = 1;
            break;
        case O_CHUNK:
            if (!cli_parse_int(W, "--prefill-chunk", optarg, 0, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.prefill_chunk = v;
            chunk_given = 1;
            break;
        case O_MAXSEQS:
            if (!cli_parse_int(W, "--max-num-seqs", optarg, 0, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.max_num_seqs = (int)v;
            seqs_given = 1;
            break;
        case O_MTT:
            if (!cli_parse_int(W, "--max-total-tokens", optarg, 1, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.max_total_tokens = v;
            break;
        case O_SEPPRE: o.separate_prefill = 1; break;
        case O_MNBT:
            if (!cli_parse_int(W, "--max-num-batched-tokens", optarg, 1, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            budget = v;
            break;
        case O_RATE:
            if (!strcmp(optarg, "inf"))
                rate = INFINITY;
            else if (!cli_parse_double(W, "--request-rate", optarg, 1e-9, 1e12, &rate))
                return EPM_EXIT_USAGE;
            break;
        case O_BURST:
            if (!cli_parse_double(W, "--burstiness", optarg, 1e-3, 1e3, &burstiness)) return EPM_EXIT_USAGE;
            shape_of_arrivals = "--burstiness";
            break;
        case O_ARRFROM: arrivals_from = optarg; break;
        case O_PREFIX: o.prefix_caching = 1; break;
        case O_PWAIT:
            if (!cli_parse_int(W, "--prefix-caching-wait", optarg, 0, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.prefix_defer = v > 0 ? (int)v : -1;
            wait_given = 1;
            break;
        case O_EPLBI:
            if (!cli_parse_int(W, "--eplb-interval", optarg, 1, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.eplb_interval = (int)v;
            break;
        case O_EPLBW:
            if (!cli_parse_int(W, "--eplb-window", optarg, 1, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.eplb_window = (int)v;
            break;
        case O_POUT: pout = optarg; break;
        case O_EPLBG:
            if (!cli_parse_double(W, "--eplb-min-gain", optarg, 0, 0.999, &o.eplb_min_gain)) return EPM_EXIT_USAGE;
            break;
        case O_EPLBF: {
            static const char *const from[] = {"checkpoint", "peers", NULL};
            int k;
            if (!cli_parse_choice(W, "--eplb-from", optarg, from, &k))
                return EPM_EXIT_USAGE;
            o.eplb_from_peers = k == 1;
            from_given = 1;
            break;
        }
        case O_EPLBS:
            if (!cli_parse_int(W, "--eplb-slots", optarg, 1, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.eplb_slots = (int)v;
            break;
        case O_REDUNDANT:
            if (!cli_parse_int(W, "--redundant-experts", optarg, 0, 1 << 20, &v)) return EPM_EXIT_USAGE;
            o.eplb_redundant = (int)v;
            o.eplb_redundant_given = 1;
            break;
        case O_EPLBLAG:
            if (!cli_parse_int(W, "--eplb-lag", optarg, 0, INT32_MAX, &v)) return EPM_EXIT_USAGE;
            o.eplb_lag = (int)v;
            break;
        case O_GROUPS:
            if (!cli_parse_int(W, "--expert-groups", optarg, 1, 1 << 20, &v)) return EPM_EXIT_USAGE;
            o.eplb_groups = (int)v;
            break;
        case O_TSCALE:
            if (!cli_parse_double(W, "--time-scale", optarg, 1e-6, 1e6, &time_scale)) return EPM_EXIT_USAGE;
            scale_given = 1;
            break;
        case O_ASEED:
            if (!cli_parse_u64(W, "--arrival-seed", optarg, &arrival_seed)) return EPM_EXIT_USAGE;
            shape_of_arrivals = "--arrival-seed";
            break;
        case O_MINTOK:
            if (!cli_parse_int(W, "--min-tokens", optarg, 0, 1 << 20, &v)) return EPM_EXIT_USAGE;
            gf.s.min_tokens = (int)v;
            gf.min_tokens = 1;
            break;
        case O_SEED: if (!cli_parse_u64(W, "--seed", optarg, &gf.s.seed)) return EPM_EXIT_USAGE; break;
        case O_STOPIDS: if (!parse_stop_ids(W, optarg, &gf)) return EPM_EXIT_USAGE; break;
        case O_NOEOS: gf.ignore_eos = 1; break;
        case O_LOGPROBS:
            if (!cli_parse_int(W, "--logprobs", optarg, 0, EPM_MAX_LOGPROBS, &v)) return EPM_EXIT_USAGE;
            o.logprobs_on = 1;
            o.top_logprobs = (int)v;
            break;
        case O_PLOGPROBS:
            if (!cli_parse_int(W, "--prompt-logprobs", optarg, 0, EPM_MAX_LOGPROBS, &v)) return EPM_EXIT_USAGE;
            o.prompt_logprobs_on = 1;
            o.prompt_top_logprobs = (int)v;
            break;
        case O_JSON: json = 1; break;
        case O_HELP: fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    if (!o.model_dir || !input)
        return cli_usage_error(W, "--model and --input are required");
    if (arrivals_from && isfinite(rate))
        return cli_usage_error(W, "--arrivals-from and --request-rate: each sets when the requests arrive; give one");
    if (scale_given && !arrivals_from)
        return cli_usage_error(W, "--time-scale scales the arrivals of --arrivals-from, which is not given");
    if (cli_slots_or_redundant(W, "--eplb-slots", o.eplb_slots, o.eplb_redundant_given ? o.eplb_redundant : -1) !=
        EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if (cli_eplb_usage(W, o.eplb_interval, o.eplb_window, o.eplb_lag,
                       o.eplb_window ? "--eplb-window" : o.eplb_slots ? "--eplb-slots"
                       : o.eplb_redundant_given ? "--redundant-experts"
                       : o.eplb_min_gain > 0 ? "--eplb-min-gain" : from_given ? "--eplb-from"
                       : o.eplb_groups ? "--expert-groups" : NULL) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    if ((o.mod_capacity > 0 || o.mod_layers) && o.mod == EPM_MOD_OFF) /* (--mod off: what they shape does not run) */
        return cli_usage_error(W, "%s shapes Mixture-of-Depths, and --mod is off or not given",
                               o.mod_layers ? "--mod-layers" : "--mod-capacity");
    if (wait_given && !o.prefix_caching)
        return cli_usage_error(W, "--prefix-caching-wait is prefix caching's: --enable-prefix-caching is not given");
    if (arrivals_from && !epm_serving_trace_is(arrivals_from))
        return cli_usage_error(W, "--arrivals-from %s: not a serving trace (a .csv as Azure's LLM inference traces "
                               "or BurstGPT, or JSON lines as Mooncake's)", arrivals_from);
    if (shape_of_arrivals && !isfinite(rate))
        return cli_usage_error(W, "%s shapes the arrivals of --request-rate, which is not given (or inf)",
                               shape_of_arrivals);
    if (budget > 0 && chunk_given)
        return cli_usage_error(W, "--max-num-batched-tokens and --prefill-chunk: each sets a pass's chunk; give one");
    if (budget > 0) { /* a budget that counts decode tokens too (with --mod router|attention the runtime
                         refuses it by name, as it does a chunk) */
        o.prefill_chunk = budget;
        o.chunk_counts_decode = 1;
        chunk_given = 1;
    }
    /* chunked by default, as SGLang's chunked_prefill_size; MoD's scored
     * sources rank each prompt's tokens over the whole prompt */
    if (!chunk_given)
        o.prefill_chunk = o.mod == EPM_MOD_ROUTER || o.mod == EPM_MOD_ATTENTION ? 0 : CLI_PREFILL_CHUNK;
    if (!seqs_given) /* (their decode thresholds come from one prefill of the whole batch) */
        o.max_num_seqs = o.mod == EPM_MOD_ROUTER || o.mod == EPM_MOD_ATTENTION ? 0 : CLI_MAX_NUM_SEQS;
    o.drop_logits = !lout; /* only --logits-out reads them */
    if (o.logprobs_on && !json && !oout)
        return cli_usage_error(W, "--logprobs %d: logprobs come with --json or --output", o.top_logprobs);
    if (o.prompt_logprobs_on && !json && !oout)
        return cli_usage_error(W, "--prompt-logprobs %d: logprobs come with --json or --output",
                               o.prompt_top_logprobs);
    const char *outs[] = {tout, lout, oout, pout};
    const char *ins[] = {input, place, rft};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            if (outs[i] && ins[j] && cli_same_file(outs[i], ins[j]))
                return cli_usage_error(W, "output '%s' would overwrite an input", outs[i]);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < i; j++)
            if (outs[i] && outs[j] && (!strcmp(outs[i], outs[j]) || cli_same_file(outs[i], outs[j])))
                return cli_usage_error(W, "'%s' is given as two outputs", outs[i]);
    for (int i = 0; i < 4; i++) {
        const char *hit = outs[i] ? model_file_clash(o.model_dir, outs[i]) : NULL;
        if (hit)
            return cli_usage_error(W, "output '%s' would overwrite the checkpoint's %s", outs[i], hit);
    }
    if (cli_virtual_nodes_usage(W, o.virtual_nodes) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    /* (a bad EPM_GPU_MAP fails like a bad input: agreed below, as a node's own environment may set it) */
    const epm_status bst = bind || report_bindings ? bind_rank(bind, report_bindings) : EPM_OK;
    epm_tokens *pr = NULL;
    epm_placement *p = NULL;
    epm_trace *t = NULL;
    epm_run_result *res = NULL;
    /* ids are checked against config.json's vocabulary here, where an error
     * can name the file (a checkpoint without one fails in the run, by name);
     * nothing to decode (logits, a trace): the generation config is not read */
    int vocab = 0, max_pos = 0;
    {
        char cpath[PATH_MAX];
        epm_model_config cfg;
        memset(&cfg, 0, sizeof cfg);
        if (snprintf(cpath, sizeof cpath, "%s/config.json", o.model_dir) < (int)sizeof cpath &&
            epm_model_config_load(cpath, &cfg) == EPM_OK)
            vocab = cfg.vocab_size, max_pos = cfg.max_position_embeddings;
        epm_model_config_clear(&cfg);
    }
    epm_status st = bst != EPM_OK ? bst : epm_tokens_load(input, vocab, &pr);
    run_batch rb; /* the sequences: the input's, or each request's samples */
    memset(&rb, 0, sizeof rb);
    int top = o.logprobs_on ? o.top_logprobs : -1, ptop = o.prompt_logprobs_on ? o.prompt_top_logprobs : -1;
    if (st == EPM_OK)
        st = run_batch_build(pr, input, top, ptop, &rb, &top, &ptop);
    if (st == EPM_OK && (top >= 0 || ptop >= 0) && !json && !oout)
        st = epm_fail(EPM_ERR_INVALID_ARG, "%s: requests ask for %slogprobs, which come with --json or --output",
                      input, top >= 0 ? "" : "prompt ");
    o.logprobs_on = top >= 0, o.top_logprobs = top > 0 ? top : 0;
    o.prompt_logprobs_on = ptop >= 0, o.prompt_top_logprobs = ptop > 0 ? ptop : 0;
    if (st == EPM_OK && rb.max_new) {
        /* the input's lengths per sequence, under --max-new-tokens where it is given; a
         * request without max_tokens has --max-new-tokens, else vLLM's default */
        int most = 0;
        for (int s = 0; s < rb.batch; s++) {
            if (!rb.max_new[s])
                rb.max_new[s] = maxnew_given && o.max_new_tokens > 0 ? o.max_new_tokens : CLI_REQUEST_MAX_TOKENS;
            most = rb.max_new[s] > most ? rb.max_new[s] : most;
        }
        o.max_new_tokens = maxnew_given && o.max_new_tokens < most ? o.max_new_tokens : most;
        o.max_new_per_seq = rb.max_new;
    }
    int32_t eos[EPM_MAX_STOP_IDS];
    int n_eos = 0;
    /* (a file named on the command line is read whatever is decoded: a bad one is the user's error) */
    const int gc_file = gf.config && strcmp(gf.config, "auto") && strcmp(gf.config, "none");
    if (st == EPM_OK && (o.max_new_tokens > 0 || gc_file))
        st = decoding(o.model_dir, &gf, &o.sampling, stop_ids, &o.n_stop, eos, &n_eos);
    o.stop_ids = stop_ids;
    if (st == EPM_OK && o.max_new_tokens > 0)
        st = run_batch_sampling(&rb, pr, input, &o.sampling, eos, n_eos, gf.ignore_eos, gf.stop, gf.n_stop);
    for (int s = 0; st == EPM_OK && rb.own && s < rb.batch; s++) { /* as vLLM refuses it */
        const int most = rb.max_new[s] < o.max_new_tokens ? rb.max_new[s] : o.max_new_tokens;
        if (rb.own[s].min_tokens > most)
            st = epm_fail(EPM_ERR_INVALID_ARG, "%s: request %d: min_tokens = %d is more than the %d tokens it may "
                          "generate", input, rb.req_of[s], rb.own[s].min_tokens, most);
    }
    o.seq_sampling = rb.own;
    /* (vLLM refuses a request past max_model_len; RoPE there extrapolates, which a user should know) */
    int64_t longest = 0;
    for (int s = 0; st == EPM_OK && max_pos > 0 && s < rb.batch; s++) {
        const int64_t n = rb.lens[s] + (rb.max_new && rb.max_new[s] < o.max_new_tokens ? rb.max_new[s] : o.max_new_tokens);
        longest = n > longest ? n : longest;
    }

    /* online serving: each request's arrival, drawn at --request-rate or a serving trace's r-th time
     * (its lengths unused) times --time-scale; a request's samples arrive together */
    double *arrival = NULL;
    int64_t arr_rows = 0, arr_left = 0; /* (--arrivals-from's rows, and those left out: said below) */
    if (st == EPM_OK && (isfinite(rate) || arrivals_from)) {
        const int nreq = rb.req_of ? rb.req_of[rb.batch - 1] + 1 : rb.batch;
        double *drawn = NULL;
        epm_serving_trace *tr = NULL;
        if (!arrivals_from) {
            drawn = epm_malloc((size_t)nreq * sizeof *drawn);
            st = drawn ? epm_arrivals(nreq, rate, burstiness, arrival_seed, drawn) : EPM_ERR_NOMEM;
        } else if ((st = epm_serving_trace_load(arrivals_from, &tr)) == EPM_OK) {
            arr_rows = tr->rows;
            arr_left = tr->skipped;
            if (tr->n < nreq)
                st = epm_fail(EPM_ERR_MISMATCH, "--arrivals-from %s: %lld requests with tokens (of %lld rows), fewer "
                              "than the %d requests of %s, each of which takes a request's time in order",
                              arrivals_from, (long long)tr->n, (long long)tr->rows, nreq, input);
        }
        if (st == EPM_OK && !(arrival = epm_malloc((size_t)rb.batch * sizeof *arrival)))
            st = EPM_ERR_NOMEM;
        const double *at = tr ? tr->arrival : drawn;
        for (int s = 0; st == EPM_OK && s < rb.batch; s++)
            arrival[s] = at[rb.req_of ? rb.req_of[s] : s] * time_scale;
        epm_free(drawn);
        epm_serving_trace_destroy(tr);
        o.arrival = arrival;
    }
    if (st == EPM_OK && place)
        st = epm_placement_load_json(place, &p);
    if (st == EPM_OK && rft)
        st = epm_trace_load(rft, 0, &t);
    int rc = EPM_EXIT_OK, rank = 0;
    /* inputs are read on every rank (each may see other files): agree before
     * the first collective of the run, so that nobody waits for a rank that
     * already gave up */
    epm_xcomm *x = NULL;
    epm_status cs = epm_xcomm_create_opts(NULL, &x); /* (the run's own reads EPM_A2A, under --a2a) */
    if (cs == EPM_OK) {
        rank = epm_xcomm_rank(x);
        st = epm_xcomm_agree(x, st);
        epm_xcomm_destroy(x);
    } else {
        st = cs;
    }
    if (st == EPM_OK) {
        o.placement = p;
        o.placement_label = place;
        o.route_from = t;
        if (rank == 0 && arr_left > 0)
            fprintf(stderr, "epmoe %s: note: --arrivals-from %s: %lld of its %lld rows have no prompt or no output "
                    "tokens and are left out\n", W, arrivals_from, (long long)arr_left, (long long)arr_rows);
        if (rank == 0 && longest > max_pos)
            fprintf(stderr, "epmoe %s: note: a sequence may reach %lld positions, beyond the model's "
                    "max_position_embeddings %d (vLLM refuses such a request; positions past it extrapolate)\n", W,
                    (long long)longest, max_pos);
        /* a placement planned for a mode runs in it unless --mode says otherwise, which is said */
        const epm_mode planned = p ? epm_placement_get_info(p)->mode : o.mode;
        if (p && !mode_given)
            o.mode = planned;
        else if (p && planned != o.mode && rank == 0)
            fprintf(stderr, "epmoe %s: note: %s was planned for %s mode; running in %s mode (--mode)\n", W, place,
                    epm_mode_name(planned), epm_mode_name(o.mode));
        test_hook_fail_alloc(rank);
        st = epm_run(&o, rb.batch, rb.lens, rb.ids, &res);
    }
    if (st == EPM_ERR_TIMEOUT) {
        /* the stalled rank cannot hear us: end the whole job */
        cli_fail(W, st);
        fflush(stderr);
        epm_xcomm_abort(NULL, EPM_EXIT_FAIL);
        rc = EPM_EXIT_FAIL;
    } else if (st == EPM_ERR_REMOTE && epm_xcomm_timed_out()) {
        /* another live rank named the stalled one and ends the job: wait for its abort here, not in
         * MPI_Finalize, whose fence waits for the stalled rank (mpirun, tearing down under the abort
         * with fences pending, hung or crashed in PMIx_server_finalize); should the abort not come,
         * leave without finalizing */
        fflush(stdout);
        fflush(stderr);
        struct timespec ts = {30, 0};
        nanosleep(&ts, NULL);
        _exit(EPM_EXIT_FAIL);
    } else if (st != EPM_OK) {
        /* every rank knows the failure; one of them says it */
        if (st != EPM_ERR_REMOTE)
            rc = cli_fail(W, st);
        else
            rc = EPM_EXIT_FAIL;
    } else if (rank == 0) {
        if (t && !res->report.route_from_run)
            fprintf(stderr, "epmoe %s: note: --route-from-trace: %s was not recorded by a run of this input (its "
                    "seq_ids differ from this batch's, or it has none): its rows were taken in this run's token "
                    "order, unchecked, and plan eval of it does not predict this run's bytes\n", W, rft);
        /* (a longer trace replays its first tokens: a trace of another, longer run, say so) */
        if (t && res->trace && epm_trace_tokens(res->trace) < epm_trace_tokens(t))
            fprintf(stderr, "epmoe %s: note: --route-from-trace: the run took the first %lld of the %lld tokens of "
                    "%s\n", W, (long long)epm_trace_tokens(res->trace), (long long)epm_trace_tokens(t), rft);
        if (tout && (st = epm_trace_save(res->trace, tout)) != EPM_OK)
            rc = cli_fail(W, st);
        if (pout && (st = epm_placement_save_json(res->placement, pout)) != EPM_OK)
            rc = cli_fail(W, st);
        if (lout && res->logits && (st = write_logits(lout, res, o.keep_logits)) != EPM_OK)
            rc = cli_fail(W, st);
        if (oout && (st = run_output_write(oout, res, &rb, o.max_new_tokens > 0 ? o.max_new_tokens : 1)) != EPM_OK)
            rc = cli_fail(W, st);
        if (json) {
            printf("{\"generated\": [");
            for (int s = 0; s < res->batch; s++) {
                printf("%s[", s ? ", " : "");
                for (int j = 0; j < res->gen_len[s]; j++)
                    printf("%s%d", j ? ", " : "", res->generated[(size_t)s * o.max_new_tokens + j]);
                printf("]");
            }
            printf("], \"finish_reason\": [");
            for (int s = 0; s < res->batch; s++)
                printf("%s\"%s\"", s ? ", " : "", res->stopped[s] ? "stop" : "length");
            printf("], \"sampling\": {");
            print_sampling(&o.sampling);
            printf("}, \"stop_token_ids\": ");
            print_ids(o.stop_ids, o.n_stop);
            if (rb.req_of) { /* what each request's samples ran with */
                printf(", \"request_index\": ");
                print_ints(rb.req_of, rb.batch);
                printf(", \"request_sampling\": %s", rb.own ? "[" : "null"); /* null: nothing decoded */
                for (int s = 0; s < res->batch && rb.own; s++) {
                    const epm_sampling *q = &rb.own[s];
                    printf("%s{", s ? ", " : "");
                    print_sampling(q);
                    printf(", \"seed_of\": \"%s\", \"max_tokens\": %d, \"stop_token_ids\": ",
                           q->own_seed ? "request" : "run",
                           rb.max_new[s] < o.max_new_tokens ? rb.max_new[s] : o.max_new_tokens);
                    print_ids(q->stop_ids, q->n_stop);
                    printf("}");
                }
                printf("%s", rb.own ? "]" : "");
            }
            if (res->logprob)
                print_logprobs(res, o.max_new_tokens, rb.lp_top);
            if (res->prompt_lp)
                print_prompt_logprobs(res, rb.ids, rb.plp_top);
            if (report) {
                printf(", ");
                print_report(stdout, res, 1);
            }
            printf("}\n");
        } else {
            for (int s = 0; s < res->batch && o.max_new_tokens > 0; s++) {
                printf("sequence %d:", s);
                for (int j = 0; j < res->gen_len[s]; j++)
                    printf(" %d", res->generated[(size_t)s * o.max_new_tokens + j]);
                printf("%s\n", res->stopped[s] ? "  (stop)" : "");
            }
            if (o.max_new_tokens == 0 && !lout && !tout && !report) /* (a run that prints nothing says why) */
                fprintf(stderr, "epmoe %s: note: --max-new-tokens is 0 (the default): the prompts ran and nothing "
                        "was generated\n", W);
            if (report)
                print_report(stderr, res, 0);
        }
    }
    epm_run_result_destroy(res);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
    epm_tokens_destroy(pr);
    run_batch_free(&rb);
    epm_free(arrival);
    epm_xcomm_finalize();
    return rc;
}
