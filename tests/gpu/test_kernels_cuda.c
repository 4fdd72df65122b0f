/* The "cuda" backend beside the C reference, op by op, on the shapes and
 * tolerances of ../unit/kernels_check.h (the CPU test's), float32 and
 * bfloat16. Exits 77 (skip) when cudaGetDeviceCount fails or finds no
 * device. The attention-probabilities output is the one stated limit of the
 * CUDA backend (EPM_ERR_UNSUPPORTED, checked below). */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

#include "../unit/kernels_check.h"
#include "backend.h"

static int setup(void **state) { return kc_setup(state, "cuda"); }
static int teardown(void **state) { return kc_teardown(state); }

static void test_kernels_cuda_linear(void **state) { kc_linear(*state); }
static void test_kernels_cuda_rmsnorm(void **state) { kc_rmsnorm(*state); }
static void test_kernels_cuda_rope(void **state) { kc_rope(*state); }
static void test_kernels_cuda_attention(void **state) { kc_attention(*state, 0); }
static void test_kernels_cuda_router(void **state) { kc_router(*state); }
static void test_kernels_cuda_route(void **state) { kc_route(*state); }
static void test_kernels_cuda_permute_f32(void **state) { kc_permute(*state, EPM_DTYPE_F32); }
static void test_kernels_cuda_permute_bf16(void **state) { kc_permute(*state, EPM_DTYPE_BF16); }
static void test_kernels_cuda_embed_convert(void **state) { kc_embed_convert(*state); }
static void test_kernels_cuda_grouped_ffn_f32(void **state) { assert_true(kc_grouped_ffn(*state, EPM_DTYPE_F32, 0)); }
static void test_kernels_cuda_grouped_ffn_bf16(void **state)
{
    assert_true(kc_grouped_ffn(*state, EPM_DTYPE_BF16, 0));
}

static void test_kernels_cuda_attention_probs_refused(void **state)
{
    kc_ctx *c = *state;
    float one = 1;
    assert_int_equal(c->F->attention(c->fast, &one, 1, NULL, &one, &one, 1, 1, 1, 1, &one, &one),
                     EPM_ERR_UNSUPPORTED);
    assert_non_null(strstr(epm_last_error(), "probs"));
    epm_clear_error();
}

int main(void)
{
    if (epm_kernels_cuda_devices() <= 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_cuda_linear),
        cmocka_unit_test(test_kernels_cuda_rmsnorm),
        cmocka_unit_test(test_kernels_cuda_rope),
        cmocka_unit_test(test_kernels_cuda_attention),
        cmocka_unit_test(test_kernels_cuda_router),
        cmocka_unit_test(test_kernels_cuda_route),
        cmocka_unit_test(test_kernels_cuda_permute_f32),
        cmocka_unit_test(test_kernels_cuda_permute_bf16),
        cmocka_unit_test(test_kernels_cuda_embed_convert),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_f32),
        cmocka_unit_test(test_kernels_cuda_grouped_ffn_bf16),
        cmocka_unit_test(test_kernels_cuda_attention_probs_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
