/* The K/V cache's element types (epm_run_opts.kv_bf16, kv_fp8): float32
 * (the checkpoints' reference arithmetic), bf16 (vLLM's default for a bf16
 * model: half the memory), or float8 e4m3 with a float32 scale per cached
 * head row (vLLM's and SGLang's fp8_e4m3 cache: a quarter, plus 4 bytes per
 * head row). vLLM takes one scale per layer from calibration and falls back
 * to 1.0; a row's own scale (its largest magnitude over 448, as the fp8
 * wire's blocks) needs no calibration and cannot overflow, at 4 bytes per
 * 128 values. A cache of n values: its scales (n / group floats), then its
 * codes (n bytes). */
#include <stdlib.h>

#include "half.h"
#include "runtime_internal.h"

/* where a cache's codes begin: after the scales of its rows */
static size_t codes_at(const rt *r, int64_t rows) { return (size_t)rows * (size_t)(r->kv_w / r->kv_grp) * sizeof(float); }

size_t epm_kv_bytes(const rt *r, int64_t n)
{
    switch (r->kvt) {
    case EPM_KV_BF16: return (size_t)n * 2;
    case EPM_KV_FP8: return (size_t)n + (size_t)(n / r->kv_grp) * sizeof(float);
    default: return (size_t)n * sizeof(float);
    }
}

size_t epm_kv_cache_bytes(const rt *r, int64_t rows)
{
    const int64_t n = rows * r->kv_w;
    return epm_kv_bytes(r, n);
}

const float *epm_kv_scales(const rt *r, const void *c)
{
    (void)r;
    return c;
}

const uint8_t *epm_kv_codes(const rt *r, int64_t rows, const void *c) { return (const uint8_t *)c + codes_at(r, rows); }

void epm_kv_get(const rt *r, const void *c, int64_t rows, int64_t off, int n, float *dst)
{
    switch (r->kvt) {
    case EPM_KV_BF16: epm_bf16_unpack(dst, (const uint16_t *)c + off, n); return;
    case EPM_KV_FP8: {
        const float *sc = epm_kv_scales(r, c);
        const uint8_t *q = epm_kv_codes(r, rows, c);
        /* a group at a time: the range may start and end inside one */
        for (int64_t j = off; j < off + n;) {
            int64_t gi = j / r->kv_grp, end = (gi + 1) * r->kv_grp < off + n ? (gi + 1) * r->kv_grp : off + n;
            epm_f8e4m3_unpack(dst + (j - off), q + j, sc[gi], end - j);
            j = end;
        }
        return;
    }
    default: memcpy(dst, (const float *)c + off, (size_t)n * sizeof *dst); return;
    }
}

void epm_kv_put(const rt *r, void *c, int64_t rows, int64_t off, int n, const float *src)
{
    switch (r->kvt) {
    case EPM_KV_BF16: epm_bf16_pack((uint16_t *)c + off, src, n); return;
    case EPM_KV_FP8: {
        float *sc = c;
        uint8_t *q = (uint8_t *)c + codes_at(r, rows);
        for (int64_t j = 0; j < n; j += r->kv_grp)
            sc[(off + j) / r->kv_grp] = epm_fp8_block_put(q + off + j, src + j, r->kv_grp);
        return;
    }
    default: memcpy((float *)c + off, src, (size_t)n * sizeof *src); return;
    }
}

void epm_kv_copy_rows(const rt *r, void *dst, int64_t dst_rows, const void *src, int64_t src_rows, int64_t n)
{
    const size_t vals = (size_t)n * (size_t)r->kv_w;
    switch (r->kvt) {
    case EPM_KV_BF16: memcpy(dst, src, vals * 2); return;
    case EPM_KV_FP8:
        memcpy(dst, src, codes_at(r, n));
        memcpy((uint8_t *)dst + codes_at(r, dst_rows), (const uint8_t *)src + codes_at(r, src_rows), vals);
        return;
    default: memcpy(dst, src, vals * sizeof(float)); return;
    }
}

void *epm_kv_resize(const rt *r, void *c, int64_t rows, int64_t to)
{
    const int64_t keep = rows < to ? rows : to;
    const size_t codes = (size_t)(keep * r->kv_w);
    if (to <= rows) { /* the codes move down to follow the kept rows' scales, then the block shrinks */
        if (r->kvt == EPM_KV_FP8)
            memmove((uint8_t *)c + codes_at(r, to), (uint8_t *)c + codes_at(r, rows), codes);
        /* (shrinking in place: where the allocator keeps the block, it stays valid and whole) */
        void *p = realloc(c, epm_kv_cache_bytes(r, to));
        return p ? p : c;
    }
    uint8_t *p = epm_realloc(c, epm_kv_cache_bytes(r, to));
    if (p && r->kvt == EPM_KV_FP8) /* the codes move up past the new rows' scales */
        memmove(p + codes_at(r, to), p + codes_at(r, rows), codes);
    return p;
}
