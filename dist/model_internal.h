/* Internals of the checkpoint loader: the shard index and the tensor
 * directory across a checkpoint's files (not installed). */
#ifndef EPM_MODEL_INTERNAL_H
#define EPM_MODEL_INTERNAL_H

#include <stdio.h>

#include "core.h"
#include "epmoe/model.h"
#include "safetensors.h"

/* model.safetensors.index.json: which file holds each tensor. */
typedef struct epm_model_index {
    int nfiles;
    char **files;     /* distinct file names, in order of first mention */
    int count;
    char **names;     /* [count] tensor names */
    int *file;        /* [count] index into files */
    int64_t total_size; /* metadata.total_size, -1 when absent */
} epm_model_index;

/* File names must be plain names inside the model folder (no '/', not "."
 * or ".."); the weight_map must be a non-empty object of strings. */
epm_status epm_model_index_parse(const char *text, size_t len, const char *label, epm_model_index **out);
void epm_model_index_destroy(epm_model_index *ix);

/* Every tensor of a checkpoint, across its files. */
typedef struct epm_shards epm_shards;

/* dir/model.safetensors.index.json with its shards when the index exists,
 * else dir/model.safetensors. Every file is mapped and its header validated;
 * every weight_map entry must be in the file it names. */
epm_status epm_shards_open(const char *dir, epm_shards **out);
void epm_shards_close(epm_shards *s);
/* NULL when absent; *path (optional) receives the file holding it. */
const epm_st_tensor *epm_shards_find(const epm_shards *s, const char *name, const char **path);
/* What a missing tensor is missing from: the index, or the single file. */
const char *epm_shards_where(const epm_shards *s);
int epm_shards_files(const epm_shards *s);
int64_t epm_shards_file_bytes(const epm_shards *s);

/* Every tensor a config implies, in checkpoint order (globals, then each
 * layer with its experts): what the loader checks and what synth writes. */
typedef struct epm_model_tensor_info {
    const char *name;
    int ndim;
    int64_t shape[2];
    int layer, expert; /* -1 when not a layer's / a routed expert's */
    int matrix;        /* a weight matrix that may be held as bf16 (epm_model_set_expert_dtype for
                          routed experts, epm_model_set_dense_dtype for the others) */
    int fp8ok;         /* one that may also stay FP8 (not the embedding, LM head or MLA's kv_b) */
} epm_model_tensor_info;
typedef epm_status (*epm_model_tensor_fn)(void *ctx, const epm_model_tensor_info *t);

/* The tensor of an FP8 weight's block scales: "<weight>_scale_inv", as
 * DeepSeek-V3's and Qwen3's FP8 releases name it (the loader, model info
 * and synth each need it). buf of at least strlen(weight) + 11 bytes. */
static inline const char *epm_fp8_scale_name(const char *weight, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s_scale_inv", weight);
    return buf;
}
epm_status epm_model_tensors(const epm_model_config *cfg, epm_model_tensor_fn fn, void *ctx);

#endif
