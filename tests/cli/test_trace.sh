#!/usr/bin/env bash
# epmoe trace: exit codes (0 ok, 1 failure, 2 usage) and the
# synth -> stats -> split -> convert round trip.
. "$(dirname "$0")/lib.sh" || exit 1
: "${EPM_FIXTURES:?path of tests/fixtures}"

# expect CODE CMD...: runs CMD, keeps its output in $d/out and $d/err
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

# same_stats A B DROP: `trace stats --json` of A and B agree but for the lines matching DROP
same_stats() {
    expect 0 "$EPMOE" trace stats "$1" --json
    grep -v "$3" "$d/out" >"$d/stats_a.json"
    expect 0 "$EPMOE" trace stats "$2" --json
    grep -v "$3" "$d/out" >"$d/stats_b.json"
    same "$d/stats_a.json" "$d/stats_b.json"
}

fx="$EPM_FIXTURES/mixtral-tiny/reference.safetensors"

# ---- help and usage errors ----
expect 0 "$EPMOE" trace --help
contains "$d/out" "synth"
expect 2 "$EPMOE" trace
expect 2 "$EPMOE" trace frobnicate
for sub in stats synth convert split; do
    expect 0 "$EPMOE" trace "$sub" --help
    contains "$d/out" "usage: epmoe trace $sub"
done
expect 2 "$EPMOE" trace stats
expect 2 "$EPMOE" trace stats "$fx" --top-m 0
expect 2 "$EPMOE" trace stats "$fx" --top-m
contains "$d/err" "--top-m needs a value"
expect 2 "$EPMOE" trace stats "$fx" --experts many
contains "$d/err" "--experts"
expect 2 "$EPMOE" trace stats "$fx" --bogus
expect 2 "$EPMOE" trace stats "$fx" "$fx"
expect 2 "$EPMOE" trace synth --layers 2 --experts 8 --k 2 --tokens 10
contains "$d/err" "--out"
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 9 --tokens 10
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --affinity 1.5
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --seed -3
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --topk-groups 2
contains "$d/err" "--topk-groups 2 limits the groups of --groups, which is not given"
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --groups 0
expect 2 "$EPMOE" trace convert "$fx"
expect 2 "$EPMOE" trace split "$fx" --first "$d/a.safetensors"
[ -e "$d/x.safetensors" ] && { echo "FAIL: a usage error wrote a file"; fails=$((fails + 1)); }

# ---- a cut past the last sequence boundary moves back to it; one sequence is refused ----
expect 0 "$EPMOE" trace synth --out "$d/seq.st" --layers 2 --experts 8 --k 2 --tokens 1000 --seq-len 100
expect 0 "$EPMOE" trace split "$d/seq.st" --first "$d/s1.st" --second "$d/s2.st" --fraction 0.99
contains "$d/err" "1000 tokens -> $d/s1.st (900) + $d/s2.st (100)"
expect 0 "$EPMOE" trace synth --out "$d/one.st" --layers 2 --experts 8 --k 2 --tokens 100 --seq-len 100
expect 0 "$EPMOE" trace split "$d/one.st" --first "$d/o1.st" --second "$d/o2.st"
contains "$d/err" "note: no cut leaves every sequence of $d/one.st whole (its sequences interleave); 1 sequence is in both halves"
# a run's trace: each sequence's prompt, then the decode steps of all in turn
echo '[[1, 2, 3, 4], [9, 8, 7], [5, 6]]' >"$d/in3.json"
# (Open MPI's singleton leaks what LeakSanitizer would stop on)
expect 0 env ASAN_OPTIONS="$no_leaks" "$EPMOE" run \
  --model "$EPM_FIXTURES/mixtral-tiny" --input "$d/in3.json" --max-new-tokens 3 --trace-out "$d/run.st"
expect 0 "$EPMOE" trace split "$d/run.st" --first "$d/r1.st" --second "$d/r2.st"
contains "$d/err" "note: no cut leaves every sequence of $d/run.st whole (its sequences interleave); 3 sequences are in both halves"

# ---- failures ----
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 2 --tokens 10 --groups 3
contains "$d/err" "--groups 3 must divide --experts 8"
expect 2 "$EPMOE" trace synth --out "$d/x.safetensors" --layers 2 --experts 8 --k 3 --tokens 10 --groups 4 --topk-groups 1
contains "$d/err" "--topk-groups 1: within 1 of the 4 groups of 2 experts, a token cannot choose --k 3"
[ -e "$d/x.safetensors" ] && { echo "FAIL: a refused synth wrote a file"; fails=$((fails + 1)); }
expect 1 "$EPMOE" trace stats "$d/missing.safetensors"
contains "$d/err" "missing.safetensors"
printf 'not a trace at all' >"$d/bad.bin"
expect 1 "$EPMOE" trace stats "$d/bad.bin"
contains "$d/err" "not a routing trace"
expect 1 "$EPMOE" trace stats "$fx" --experts 4
contains "$d/err" "outside [0, 4)"
expect 1 "$EPMOE" trace synth --out "$d/no/such/dir/t.safetensors" --layers 2 --experts 8 --k 2 --tokens 10
expect 1 "$EPMOE" trace convert "$d/bad.bin" "$d/out.npy"
[ -e "$d/out.npy" ] && { echo "FAIL: a failed convert wrote its output"; fails=$((fails + 1)); }

# ---- stats of the bundled fixtures ----
for m in mixtral-tiny olmoe-tiny qwen2moe-tiny; do
    expect 0 "$EPMOE" trace stats "$EPM_FIXTURES/$m/reference.safetensors"
    contains "$d/out" "4 layers, 32 tokens, k = 2, 8 experts"
done
expect 0 "$EPMOE" trace stats "$fx" --json --top-m 3
contains "$d/out" '"tokens": 32'
contains "$d/out" '"top_m": 3'
if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["per_layer"]) == 4
assert all(sum(l["load"]) == 64 for l in d["per_layer"])' "$d/out" ||
        { echo "FAIL: stats --json is not the expected JSON"; fails=$((fails + 1)); }
fi

# ---- synth -> stats -> split -> convert ----
synth=(trace synth --layers 3 --experts 16 --k 2 --tokens 1000 --zipf 1.2 --affinity 0.8 --seq-len 300 --weights --seed 9)
expect 0 "$EPMOE" "${synth[@]}" --out "$d/t.safetensors"
expect 0 "$EPMOE" "${synth[@]}" --out="$d/t2.safetensors"
same "$d/t.safetensors" "$d/t2.safetensors"
expect 0 "$EPMOE" trace stats "$d/t.safetensors"
contains "$d/out" "3 layers, 1000 tokens, k = 2, 16 experts, with weights, with seq_ids"

# the cut at 500 moves forward to the sequence boundary at 600
expect 0 "$EPMOE" trace split "$d/t.safetensors" --first "$d/a.safetensors" --second "$d/b.safetensors"
expect 0 "$EPMOE" trace stats "$d/a.safetensors" --experts 16
contains "$d/out" "600 tokens"
expect 0 "$EPMOE" trace stats "$d/b.safetensors" --experts 16
contains "$d/out" "400 tokens"
expect 0 "$EPMOE" trace split "$d/t.safetensors" --first "$d/a1.npy" --second "$d/b1.npy" --fraction 0.2
contains "$d/err" "1000 tokens"
expect 2 "$EPMOE" trace split "$d/t.safetensors" --first "$d/a.safetensors" --second "$d/a.safetensors"
expect 2 "$EPMOE" trace split "$d/t.safetensors" --first "$d/t.safetensors" --second "$d/c.safetensors"
expect 2 "$EPMOE" trace split "$d/t.safetensors" --first "$d/c.safetensors" --second "$d/d.safetensors" --fraction 1
expect 2 "$EPMOE" trace split "$d/t.safetensors" --first "$d/c.safetensors" --second "$d/d.safetensors" --fraction 0.0001

# safetensors -> npy -> safetensors -> npy keeps every id
expect 0 "$EPMOE" trace convert "$d/b.safetensors" "$d/b.npy"
contains "$d/err" "ids only"
expect 0 "$EPMOE" trace convert "$d/b.npy" "$d/b2.safetensors"
expect 0 "$EPMOE" trace convert "$d/b2.safetensors" "$d/b3.npy"
same "$d/b.npy" "$d/b3.npy"
same_stats "$d/b.safetensors" "$d/b.npy" '"file"\|has_'
# the fixture through .npy and back: same ids as the original's topk_ids
expect 0 "$EPMOE" trace convert "$fx" "$d/fx.npy"
expect 0 "$EPMOE" trace convert "$d/fx.npy" "$d/fx.safetensors"
same_stats "$fx" "$d/fx.safetensors" '"file"'

# outputs never overwrite inputs
expect 2 "$EPMOE" trace convert "$d/b.npy" "$d/b.npy"
ln -s "$d/b.npy" "$d/link.npy"
expect 2 "$EPMOE" trace convert "$d/b.npy" "$d/link.npy"
same "$d/b.npy" "$d/b3.npy"

# ---- affinity where there is none to measure (Mixture-of-Depths skipped a whole layer) ----
python3 - "$d/skip.npy" <<'EOF'
import struct, sys
ids = [0, -1, 1, -1, -1, -1, -1, -1, 2, 3, 3, 2]  # [3 layers, 2 tokens, k 2]; layer 1 all skipped
h = "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 2, 2), }"
h += " " * (63 - (10 + len(h)) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + struct.pack("<12i", *ids))
EOF
expect 0 "$EPMOE" trace stats "$d/skip.npy" --experts 4
contains "$d/out" "no token has an expert at two consecutive layers"
expect 0 "$EPMOE" trace stats "$d/skip.npy" --experts 4 --json
contains "$d/out" '"mean_cond_entropy_bits": null'
contains "$d/out" '"affinity_layers": 0'

checks_done "all trace CLI checks passed" "$fails check(s) failed"
