#!/usr/bin/env bash
# epmoe model: synth -> info round trip for each architecture, sharded and
# bf16 checkpoints, the fixtures, and exit codes (0 ok, 1 failure, 2 usage);
# with mpirun, epmoe run on a synthesised sharded bf16 Qwen2-MoE with a dense layer.
set -u
: "${EPMOE:?path of the epmoe binary}" "${EPM_FIXTURES:?path of tests/fixtures}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's unloaded components look like leaks to LeakSanitizer (see tests/mpi/meson.build)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

expect() {
    local want=$1
    shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: expected exit $want, got $rc: $*"
        sed 's/^/  | /' "$tmp/err" | head -5
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
contains "$tmp/out" "Qwen2MoeForCausalLM"
contains "$tmp/out" "shared expert ffn 96"
expect 0 "$EPMOE" model info "$EPM_FIXTURES/mixtral-tiny" --json
contains "$tmp/out" '"experts": 8, "k": 2'

# synth -> info, each architecture; the JSON reports what was asked for
for arch in mixtral qwen2moe olmoe; do
    expect 0 "$EPMOE" model synth --out "$tmp/$arch" --arch "$arch" --hidden 32 --layers 3 --experts 6 --k 2 \
        --ffn 24 --heads 4 --kv-heads 2 --vocab 100 --seed 7
    expect 0 "$EPMOE" model info "$tmp/$arch" --json
    contains "$tmp/out" '"hidden_size": 32, "layers": 3, "moe_layers": 3, "heads": 4, "kv_heads": 2'
    contains "$tmp/out" '"experts": 6, "k": 2, "moe_ffn": 24'
    contains "$tmp/out" '"files": 1'
    # 3 matrices of 32 x 24 per expert, float32
    contains "$tmp/out" '"params_per_expert": 2304, "bytes_per_expert": 9216'
done
contains "$tmp/out" '"qk_norm": true'

# sharded bf16 with a dense layer: the same parameters, in 4 files
expect 0 "$EPMOE" model synth --out "$tmp/sh" --arch qwen2moe --hidden 32 --layers 3 --experts 6 --k 2 --ffn 24 \
    --heads 4 --kv-heads 2 --vocab 100 --dtype bf16 --shards 4 --mlp-only-layers 1
contains "$tmp/out" "4 files + index"
for i in 1 2 3 4; do
    [ -f "$tmp/sh/model-0000$i-of-00004.safetensors" ] || { echo "FAIL: shard $i missing"; fails=$((fails + 1)); }
done
[ -f "$tmp/sh/model.safetensors.index.json" ] || { echo "FAIL: index missing"; fails=$((fails + 1)); }
expect 0 "$EPMOE" model info "$tmp/sh" --json
contains "$tmp/out" '"moe_layers": 2'
contains "$tmp/out" '"dtype": "BF16", "files": 4'
contains "$tmp/out" '"params_per_expert": 2304, "bytes_per_expert": 4608'
expect 0 "$EPMOE" model info "$tmp/sh"
contains "$tmp/out" "per expert  2304 params"

# the same seed and shape give the same bytes
expect 0 "$EPMOE" model synth --out "$tmp/again" --arch mixtral --hidden 32 --layers 3 --experts 6 --k 2 \
    --ffn 24 --heads 4 --kv-heads 2 --vocab 100 --seed 7
cmp -s "$tmp/mixtral/model.safetensors" "$tmp/again/model.safetensors" ||
    { echo "FAIL: synth is not deterministic"; fails=$((fails + 1)); }

# failures: 1 for bad files, 2 for bad usage
expect 1 "$EPMOE" model info "$tmp/absent"
contains "$tmp/err" "config.json"
truncate -s 1000 "$tmp/olmoe/model.safetensors"
expect 1 "$EPMOE" model info "$tmp/olmoe"
contains "$tmp/err" "model.safetensors"
sed -i 's/MixtralForCausalLM/GPT2LMHeadModel/' "$tmp/again/config.json"
expect 1 "$EPMOE" model info "$tmp/again"
contains "$tmp/err" "GPT2LMHeadModel"
expect 2 "$EPMOE" model
expect 2 "$EPMOE" model frobnicate
expect 2 "$EPMOE" model info
expect 2 "$EPMOE" model synth --arch mixtral
contains "$tmp/err" "--out"
expect 2 "$EPMOE" model synth --out "$tmp/x" --arch llama
contains "$tmp/err" "llama"
expect 2 "$EPMOE" model synth --out "$tmp/x" --k 9
expect 2 "$EPMOE" model synth --out "$tmp/x" --heads 3
expect 2 "$EPMOE" model synth --out "$tmp/x" --dtype f64
expect 2 "$EPMOE" model synth --out "$tmp/x" --hidden abc
expect 2 "$EPMOE" model synth --out "$tmp/x" --arch mixtral --mlp-only-layers 1
expect 2 "$EPMOE" model synth --out "$tmp/x" --arch qwen2moe --layers 2 --mlp-only-layers 0,1
contains "$tmp/err" "no MoE layer"
expect 0 "$EPMOE" model synth --help
contains "$tmp/out" "--shards"

# the synthesised checkpoint runs: 2 ranks generate what 1 rank does
if command -v mpirun >/dev/null; then
    echo '[[1, 2, 3, 4], [5, 6, 7]]' >"$tmp/in.json"
    expect 0 timeout 120 mpirun --oversubscribe -np 2 "$EPMOE" run --model "$tmp/sh" --input "$tmp/in.json" \
        --max-new-tokens 3 --json
    cp "$tmp/out" "$tmp/run2.json"
    contains "$tmp/run2.json" '"generated": [['
    expect 0 timeout 120 mpirun --oversubscribe -np 1 "$EPMOE" run --model "$tmp/sh" --input "$tmp/in.json" \
        --max-new-tokens 3 --json
    cmp -s "$tmp/out" "$tmp/run2.json" || { echo "FAIL: 1 and 2 ranks generate differently"; fails=$((fails + 1)); }
else
    echo "mpirun not found: epmoe run on a synthesised model skipped"
fi

if [ "$fails" -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "ok"
