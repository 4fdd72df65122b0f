/* Fuzz target: token-id input (JSON, .npy, safetensors by content; request
 * lists and JSON lines). Every accepted id lies inside the vocabulary given,
 * every per-sequence max_new_tokens in [1, 2^20] (a request's may be 0: it
 * gives none), and every request's sampling parameters, laid over a
 * sampling run's, pass validation and choose a token from a row of extreme
 * logits over its own prompt (what a run does with them first). */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "epmoe/generate.h"
#include "epmoe/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int vocab = 1000;
    epm_tokens *t;
    if (epm_tokens_parse(data, size, "fuzz.tokens", vocab, &t) != EPM_OK)
        return 0;
    if (t->batch < 1)
        __builtin_trap();
    /* a row of logits for the requests' samplers: the largest and smallest floats among the prompts' ids
     * (penalties divide and multiply them) */
    static float row[1000];
    for (int i = 0; i < vocab; i++)
        row[i] = i % 3 == 0 ? FLT_MAX : i % 3 == 1 ? -FLT_MAX : (float)(i % 17) - 8;
    for (int s = 0; s < t->batch; s++) {
        if (t->lens[s] < 1)
            __builtin_trap();
        for (int i = 0; i < t->lens[s]; i++)
            if (t->ids[s][i] < 0 || t->ids[s][i] >= vocab)
                __builtin_trap();
        if (t->max_new && (t->max_new[s] < (t->req ? 0 : 1) || t->max_new[s] > (1 << 20)))
            __builtin_trap();
        if (t->req) {
            epm_sampling run = {.temperature = 1}, out; /* (a greedy run refuses a request's top-p) */
            int32_t stop[EPM_MAX_STOP_IDS];
            int n;
            if (t->req[s].n_stop < 0 || t->req[s].n_stop > EPM_MAX_STOP_IDS ||
                epm_request_sampling_apply(&t->req[s], &run, NULL, 0, 0, NULL, 0, "fuzz", &out, stop, &n) != EPM_OK)
                __builtin_trap();
            epm_sampler *sp = NULL;
            int32_t tok = -1;
            if (epm_sampler_create(&out, vocab, &sp) != EPM_OK ||
                epm_sampler_next(sp, row, t->ids[s], t->lens[s], NULL, 0, 0, 0, &tok) != EPM_OK || tok < 0 ||
                tok >= vocab || !isfinite(row[tok]))
                __builtin_trap();
            epm_sampler_destroy(sp);
        }
    }
    epm_tokens_destroy(t);
    return 0;
}
