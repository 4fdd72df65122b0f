#!/usr/bin/env bash
# epmoe model: synth -> info round trip for each architecture, sharded and
# bf16 checkpoints, the fixtures, and exit codes (0 ok, 1 failure, 2 usage);
# with mpirun, epmoe run on a synthesised sharded bf16 Qwen2-MoE with a dense
# layer, and on bf16 DeepSeek-V3 / V2 and Qwen3-MoE checkpoints with YaRN.
. "$(dirname "$0")/lib.sh" || exit 1
: "${EPM_FIXTURES:?path of tests/fixtures}"
export ASAN_OPTIONS=$no_leaks

expect() {
    local want=$1
    shift
    "$@" >"$d/out" 2>"$d/err"
    local rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: expected exit $want, got $rc: $*"
        sed 's/^/  | /' "$d/err" | head -5
        fails=$((fails + 1))
    fi
}

contains() {
    if ! grep -qF -- "$2" "$1"; then
        echo "FAIL: $(basename "$1") lacks '$2'"
        sed 's/^/  | /' "$1" | head -8
        fails=$((fails + 1))
    fi
}

# the bundled fixtures
expect 0 "$EPMOE" model info "$EPM_FIXTURES/qwen2moe-tiny"
contains "$d/out" "Qwen2MoeForCausalLM"
contains "$d/out" "shared expert ffn 96"
expect 0 "$EPMOE" model info "$EPM_FIXTURES/mixtral-tiny" --json
contains "$d/out" '"experts": 8, "k": 2'

# synth -> info, each architecture; the JSON reports what was asked for
for arch in mixtral qwen2moe olmoe; do
    expect 0 "$EPMOE" model synth --out "$d/$arch" --arch "$arch" --hidden 32 --layers 3 --experts 6 --k 2 \
        --ffn 24 --heads 4 --kv-heads 2 --vocab 100 --seed 7
    expect 0 "$EPMOE" model info "$d/$arch" --json
    contains "$d/out" '"hidden_size": 32, "layers": 3, "moe_layers": 3, "heads": 4, "kv_heads": 2'
    contains "$d/out" '"experts": 6, "k": 2, "moe_ffn": 24'
    contains "$d/out" '"files": 1'
    # 3 matrices of 32 x 24 per expert, float32
    contains "$d/out" '"params_per_expert": 2304, "bytes_per_expert": 9216'
done
contains "$d/out" '"qk_norm": true'

# sharded bf16 with a dense layer: the same parameters, in 4 files
expect 0 "$EPMOE" model synth --out "$d/sh" --arch qwen2moe --hidden 32 --layers 3 --experts 6 --k 2 --ffn 24 \
    --heads 4 --kv-heads 2 --vocab 100 --dtype bf16 --shards 4 --mlp-only-layers 1
contains "$d/out" "4 files + index"
for i in 1 2 3 4; do
    [ -f "$d/sh/model-0000$i-of-00004.safetensors" ] || { echo "FAIL: shard $i missing"; fails=$((fails + 1)); }
done
[ -f "$d/sh/model.safetensors.index.json" ] || { echo "FAIL: index missing"; fails=$((fails + 1)); }
expect 0 "$EPMOE" model info "$d/sh" --json
contains "$d/out" '"moe_layers": 2'
contains "$d/out" '"dtype": "BF16", "files": 4'
contains "$d/out" '"params_per_expert": 2304, "bytes_per_expert": 4608'
expect 0 "$EPMOE" model info "$d/sh"
contains "$d/out" "per expert  2304 params"

# the same seed and shape give the same bytes
expect 0 "$EPMOE" model synth --out "$d/again" --arch mixtral --hidden 32 --layers 3 --experts 6 --k 2 \
    --ffn 24 --heads 4 --kv-heads 2 --vocab 100 --seed 7
cmp -s "$d/mixtral/model.safetensors" "$d/again/model.safetensors" ||
    { echo "FAIL: synth is not deterministic"; fails=$((fails + 1)); }

# failures: 1 for bad files, 2 for bad usage
expect 1 "$EPMOE" model info "$d/absent"
contains "$d/err" "config.json"
truncate -s 1000 "$d/olmoe/model.safetensors"
expect 1 "$EPMOE" model info "$d/olmoe"
contains "$d/err" "model.safetensors"
sed -i 's/MixtralForCausalLM/GPT2LMHeadModel/' "$d/again/config.json"
expect 1 "$EPMOE" model info "$d/again"
contains "$d/err" "GPT2LMHeadModel"
expect 2 "$EPMOE" model
expect 2 "$EPMOE" model frobnicate
expect 2 "$EPMOE" model info
expect 2 "$EPMOE" model synth --arch mixtral
contains "$d/err" "--out"
expect 2 "$EPMOE" model synth --out "$d/x" --arch llama
contains "$d/err" "llama"
expect 2 "$EPMOE" model synth --out "$d/x" --k 9
expect 2 "$EPMOE" model synth --out "$d/x" --heads 3
expect 2 "$EPMOE" model synth --out "$d/x" --dtype f64
expect 2 "$EPMOE" model synth --out "$d/x" --hidden abc
expect 2 "$EPMOE" model synth --out "$d/x" --arch mixtral --mlp-only-layers 1
expect 2 "$EPMOE" model synth --out "$d/x" --arch mixtral --q-lora-rank 8
contains "$d/err" "--q-lora-rank is not an option of --arch mixtral"
expect 2 "$EPMOE" model synth --out "$d/x" --arch olmoe --shared-ffn 64
contains "$d/err" "--shared-ffn is not an option of --arch olmoe"
expect 2 "$EPMOE" model synth --out "$d/x" --arch qwen2moe --mlp-only-layers 1,-2
contains "$d/err" "option --mlp-only-layers: '-2' is not an integer"
expect 2 "$EPMOE" model synth --out "$d/x" --arch qwen2moe --layers 2 --mlp-only-layers 0,1
contains "$d/err" "no MoE layer"
expect 0 "$EPMOE" model synth --help
contains "$d/out" "--shards"
contains "$d/out" "--yarn"

# DeepSeek and Qwen3: what synth was asked for is what info reports
expect 0 "$EPMOE" model synth --out "$d/v3" --arch deepseekv3 --hidden 64 --layers 3 --experts 8 --k 2 --ffn 16 \
    --heads 4 --head-dim 16 --qk-rope-dim 8 --v-head-dim 12 --q-lora-rank 24 --kv-lora-rank 20 --groups 4 \
    --topk-groups 2 --vocab 128 --dtype bf16 --router-scale 3 --yarn 4,64,1,0.8
expect 0 "$EPMOE" model info "$d/v3" --json
contains "$d/out" '"architecture": "DeepseekV3ForCausalLM"'
contains "$d/out" '"router": "sigmoid", "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "mla": true'
contains "$d/out" '"q_lora_rank": 24, "kv_lora_rank": 20, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8'
contains "$d/out" '"rope_type": "yarn", "yarn_factor": 4, "yarn_original_max_position_embeddings": 64'
contains "$d/out" '"moe_layers": 2' # the first layer dense
expect 0 "$EPMOE" model synth --out "$d/v2" --arch deepseekv2 --hidden 64 --layers 3 --experts 8 --k 2 --ffn 16 \
    --heads 4 --head-dim 16 --qk-rope-dim 8 --q-lora-rank 0 --kv-lora-rank 20 --groups 2 --topk-groups 1 \
    --routed-scaling 1.5 --vocab 128 --dtype bf16 --router-scale 2 --yarn 4,64,0.707,0.707
expect 0 "$EPMOE" model info "$d/v2"
contains "$d/out" "softmax, 2 groups (1 kept, each scored by its best expert), weights x 1.5"
contains "$d/out" "shared expert ffn 32" # two shared experts by default
expect 0 "$EPMOE" model synth --out "$d/q3" --arch qwen3moe --hidden 32 --layers 2 --experts 6 --k 2 --ffn 16 \
    --heads 4 --head-dim 16 --vocab 128 --dtype bf16 --yarn 4,64
expect 0 "$EPMOE" model info "$d/q3"
contains "$d/out" "head_dim 16, q/k norm per head"
expect 2 "$EPMOE" model synth --out "$d/x" --arch deepseekv3 --yarn 4
contains "$d/err" "--yarn"
expect 2 "$EPMOE" model synth --out "$d/x" --arch deepseekv3 --groups 3
contains "$d/err" "groups"
# DeepSeek-V3's FP8 release format: e4m3 matrices with a float32 scale per block
expect 0 "$EPMOE" model synth --out "$d/v3f8" --arch deepseekv3 --hidden 64 --layers 3 --experts 8 --k 2 --ffn 16 \
    --heads 4 --head-dim 16 --vocab 128 --dtype fp8 --fp8-block 16,24 --router-scale 3 --yarn 4,64,1,0.8
expect 0 "$EPMOE" model info "$d/v3f8"
contains "$d/out" "quantised   FP8 (e4m3) weight matrices, a scale per [16, 24] block"
contains "$d/out" "kv cache    40 floats per token and layer (latent; 192 expanded)"
expect 0 "$EPMOE" model info "$d/v3f8" --json
contains "$d/out" '"fp8_block": [16, 24]'
expect 2 "$EPMOE" model synth --out "$d/x" --dtype fp8 --fp8-block 16
contains "$d/err" "--fp8-block"
# Qwen3-MoE's FP8 release format (q/k/v/o and the experts FP8, the per-head norms bf16): the run's
# logits against the oracle's own dequantisation and forward
S=${EPM_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
if command -v python3 >/dev/null; then
    expect 0 "$EPMOE" model synth --out "$d/q3f8" --arch qwen3moe --hidden 64 --layers 3 --experts 8 --k 2 \
        --ffn 32 --heads 4 --kv-heads 2 --head-dim 32 --vocab 256 --dtype fp8 --fp8-block 16,24 --router-scale 3
    expect 0 python3 "$S/tests/fixtures/hf_reference.py" write "$d/q3f8" --input-from "$S/tests/fixtures/qwen3moe-tiny"
    # the experts held FP8 (the default) and dequantised to bf16: the same model
    for edt in auto bf16; do
        expect 0 "$EPMOE" run --model "$d/q3f8" --input "$d/q3f8/reference.safetensors" --all-logits \
            --logits-out "$d/q3f8.st" --expert-dtype $edt --report --json
        contains "$d/out" "\"expert_dtype\": \"$([ $edt = auto ] && echo F8_E4M3 || echo BF16)\", \"dense_dtype\": \"F8_E4M3\""
        expect 0 python3 "$S/tests/multinode/compare_logits.py" "$d/q3f8.st" "$d/q3f8/reference.safetensors" 1e-5
    done
fi
expect 2 "$EPMOE" run --model "$d/v3f8" --input "$d/x.json" --expert-dtype fp8
contains "$d/err" "--expert-dtype 'fp8' is not auto, bf16 or f32"
expect 2 "$EPMOE" model synth --out "$d/x" --dtype fp8 --fp8-block 4294967297,128
contains "$d/err" "--fp8-block '4294967297,128'"
expect 2 "$EPMOE" model synth --out "$d/x" --dtype bf16 --fp8-block 16,24
contains "$d/err" "--fp8-block needs --dtype fp8"
expect 2 "$EPMOE" model synth --out "$d/x" --dtype e5m2
contains "$d/err" "f32, bf16, f16, fp8"
expect 2 "$EPMOE" run --model "$d/v3f8" --input "$d/x.json" --mla-cache compressed
contains "$d/err" "--mla-cache 'compressed' is not latent or expanded"

# the synthesised checkpoint runs: 2 ranks generate what 1 rank does
if command -v mpirun >/dev/null; then
    echo '[[1, 2, 3, 4], [5, 6, 7]]' >"$d/in.json"
    expect 0 timeout 120 mpirun --oversubscribe -np 2 "$EPMOE" run --model "$d/sh" --input "$d/in.json" \
        --max-new-tokens 3 --json
    cp "$d/out" "$d/run2.json"
    contains "$d/run2.json" '"generated": [['
    expect 0 timeout 120 mpirun --oversubscribe -np 1 "$EPMOE" run --model "$d/sh" --input "$d/in.json" \
        --max-new-tokens 3 --json
    cmp -s "$d/out" "$d/run2.json" || { echo "FAIL: 1 and 2 ranks generate differently"; fails=$((fails + 1)); }
    # MLA, the group limits and YaRN from bf16 (and FP8) files: 3 ranks in follow mode
    # generate what 1 rank does with the reference kernels and every weight widened
    for m in v3 v2 q3 v3f8; do
        expect 0 timeout 120 mpirun --oversubscribe -np 3 "$EPMOE" run --model "$d/$m" --input "$d/in.json" \
            --max-new-tokens 3 --mode follow --json
        cp "$d/out" "$d/run3.json"
        contains "$d/run3.json" '"generated": [['
        # (and DeepSeek's MLA as a key and a value per head there, its latent at 3 ranks)
        expect 0 timeout 120 mpirun --oversubscribe -np 1 "$EPMOE" run --model "$d/$m" --input "$d/in.json" \
            --max-new-tokens 3 --kernels ref --expert-dtype f32 --dense-dtype f32 --json \
            $([ $m = q3 ] || echo --mla-cache expanded)
        one=$(grep -o '"generated": \[\[[^]]*\], \[[^]]*\]\]' "$d/out")
        three=$(grep -o '"generated": \[\[[^]]*\], \[[^]]*\]\]' "$d/run3.json")
        [ -n "$one" ] && [ "$one" = "$three" ] ||
            { echo "FAIL: $m: 3 ranks (blas, bf16) and 1 rank (ref, f32) generate differently"; fails=$((fails + 1)); }
    done
else
    echo "mpirun not found: epmoe run on a synthesised model skipped"
fi

checks_done ok "$fails failure(s)"
