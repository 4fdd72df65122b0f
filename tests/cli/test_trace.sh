#!/usr/bin/env bash
# epmoe trace: exit codes (0 ok, 1 failure, 2 usage) and the
# synth -> stats -> split -> convert round trip.
set -u
: "${EPMOE:?path of the epmoe binary}" "${EPM_FIXTURES:?path of tests/fixtures}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect CODE CMD...: runs CMD, keeps its output in $tmp/out and $tmp/err
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

# contains FILE TEXT: FILE has TEXT (fixed string)
contains() {
    if ! grep -qF -- "$2" "$1"; then
        echo "FAIL: $(basename "$1") lacks '$2'"
        sed 's/^/  | /' "$1" | head -5
        fails=$((fails + 1))
    fi
}

same() {
    if ! cmp -s "$1" "$2"; then
        echo "FAIL: $1 and $2 differ"
        fails=$((fails + 1))
    fi
}

fx="$EPM_FIXTURES/mixtral-tiny/reference.safetensors"

# ---- help and usage errors ----
expect 0 "$EPMOE" trace --help
contains "$tmp/out" "synth"
expect 2 "$EPMOE" trace
expect 2 "$EPMOE" trace frobnicate
for sub in stats synth convert split; do
    expect 0 "$EPMOE" trace "$sub" --help
    contains "$tmp/out" "usage: epmoe trace $sub"
done
expect 2 "$EPMOE" trace stats
expect 2 "$EPMOE" trace stats "$fx" --top-m 0
expect 2 "$EPMOE" trace stats "$fx" --top-m
contains "$tmp/err" "--top-m needs a value"
expect 2 "$EPMOE" trace stats "$fx" --experts many
contains "$tmp/err" "--experts"
expect 2 "$EPMOE" trace stats "$fx" --bogus
expect 2 "$EPMOE" trace stats "$fx" "$fx"
expect 2 "$EPMOE" trace synth --layers 2 --experts 8 --k 2 --tokens 10
contains "$tmp/err" "--out"
expect 2 "$EPMOE" trace synth --out "$tmp/x.safetensors" --layers 2 --experts 8 --k 9 --tokens 10
expect 2 "$EPMOE" trace synth --out "$tmp/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --affinity 1.5
expect 2 "$EPMOE" trace synth --out "$tmp/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --seed -3
expect 2 "$EPMOE" trace convert "$fx"
expect 2 "$EPMOE" trace split "$fx" --first "$tmp/a.safetensors"
[ -e "$tmp/x.safetensors" ] && { echo "FAIL: a usage error wrote a file"; fails=$((fails + 1)); }

# ---- failures ----
expect 1 "$EPMOE" trace stats "$tmp/missing.safetensors"
contains "$tmp/err" "missing.safetensors"
printf 'not a trace at all' >"$tmp/bad.bin"
expect 1 "$EPMOE" trace stats "$tmp/bad.bin"
contains "$tmp/err" "not a routing trace"
expect 1 "$EPMOE" trace stats "$fx" --experts 4
contains "$tmp/err" "outside [0, 4)"
expect 1 "$EPMOE" trace synth --out "$tmp/no/such/dir/t.safetensors" --layers 2 --experts 8 --k 2 --tokens 10
expect 1 "$EPMOE" trace convert "$tmp/bad.bin" "$tmp/out.npy"
[ -e "$tmp/out.npy" ] && { echo "FAIL: a failed convert wrote its output"; fails=$((fails + 1)); }

# ---- stats of the bundled fixtures ----
for m in mixtral-tiny olmoe-tiny qwen2moe-tiny; do
    expect 0 "$EPMOE" trace stats "$EPM_FIXTURES/$m/reference.safetensors"
    contains "$tmp/out" "4 layers, 32 tokens, k = 2, 8 experts"
done
expect 0 "$EPMOE" trace stats "$fx" --json --top-m 3
contains "$tmp/out" '"tokens": 32'
contains "$tmp/out" '"top_m": 3'
if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["per_layer"]) == 4
assert all(sum(l["load"]) == 64 for l in d["per_layer"])' "$tmp/out" ||
        { echo "FAIL: stats --json is not the expected JSON"; fails=$((fails + 1)); }
fi

# ---- synth -> stats -> split -> convert ----
synth=(trace synth --layers 3 --experts 16 --k 2 --tokens 1000 --zipf 1.2 --affinity 0.8 --seq-len 300 --weights --seed 9)
expect 0 "$EPMOE" "${synth[@]}" --out "$tmp/t.safetensors"
expect 0 "$EPMOE" "${synth[@]}" --out="$tmp/t2.safetensors"
same "$tmp/t.safetensors" "$tmp/t2.safetensors"
expect 0 "$EPMOE" trace stats "$tmp/t.safetensors"
contains "$tmp/out" "3 layers, 1000 tokens, k = 2, 16 experts, with weights, with seq_ids"

# the cut at 500 moves forward to the sequence boundary at 600
expect 0 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/a.safetensors" --second "$tmp/b.safetensors"
expect 0 "$EPMOE" trace stats "$tmp/a.safetensors" --experts 16
contains "$tmp/out" "600 tokens"
expect 0 "$EPMOE" trace stats "$tmp/b.safetensors" --experts 16
contains "$tmp/out" "400 tokens"
expect 0 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/a1.npy" --second "$tmp/b1.npy" --fraction 0.2
contains "$tmp/err" "1000 tokens"
expect 2 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/a.safetensors" --second "$tmp/a.safetensors"
expect 2 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/t.safetensors" --second "$tmp/c.safetensors"
expect 2 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/c.safetensors" --second "$tmp/d.safetensors" --fraction 1
expect 2 "$EPMOE" trace split "$tmp/t.safetensors" --first "$tmp/c.safetensors" --second "$tmp/d.safetensors" --fraction 0.0001

# safetensors -> npy -> safetensors -> npy keeps every id
expect 0 "$EPMOE" trace convert "$tmp/b.safetensors" "$tmp/b.npy"
contains "$tmp/err" "ids only"
expect 0 "$EPMOE" trace convert "$tmp/b.npy" "$tmp/b2.safetensors"
expect 0 "$EPMOE" trace convert "$tmp/b2.safetensors" "$tmp/b3.npy"
same "$tmp/b.npy" "$tmp/b3.npy"
expect 0 "$EPMOE" trace stats "$tmp/b.safetensors" --json
grep -v '"file"\|has_' "$tmp/out" >"$tmp/s1.json"
expect 0 "$EPMOE" trace stats "$tmp/b.npy" --json
grep -v '"file"\|has_' "$tmp/out" >"$tmp/s2.json"
same "$tmp/s1.json" "$tmp/s2.json"
# the fixture through .npy and back: same ids as the original's topk_ids
expect 0 "$EPMOE" trace convert "$fx" "$tmp/fx.npy"
expect 0 "$EPMOE" trace convert "$tmp/fx.npy" "$tmp/fx.safetensors"
expect 0 "$EPMOE" trace stats "$fx" --json
grep -v '"file"' "$tmp/out" >"$tmp/f1.json"
expect 0 "$EPMOE" trace stats "$tmp/fx.safetensors" --json
grep -v '"file"' "$tmp/out" >"$tmp/f2.json"
same "$tmp/f1.json" "$tmp/f2.json"

# outputs never overwrite inputs
expect 2 "$EPMOE" trace convert "$tmp/b.npy" "$tmp/b.npy"
ln -s "$tmp/b.npy" "$tmp/link.npy"
expect 2 "$EPMOE" trace convert "$tmp/b.npy" "$tmp/link.npy"
same "$tmp/b.npy" "$tmp/b3.npy"

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all trace CLI checks passed"
