#!/usr/bin/env bash
# epmoe plan and plan eval from the command line: files, exit codes, messages.
. "$(dirname "$0")/lib.sh" || exit 1
check() { # description, expected exit code, command...
  local what=$1 want=$2; shift 2
  "$@" >"$d/out" 2>"$d/err"
  local got=$?
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$d/err"; fails=$((fails + 1))
  fi
}

check "synth" 0 "$E" trace synth --out "$d/t.st" --layers 4 --experts 8 --k 2 --tokens 2000 --zipf 1.1 \
  --affinity 0.8 --seed 3
check "split" 0 "$E" trace split "$d/t.st" --first "$d/a.st" --second "$d/b.st"
# (eplb and ilp also write the EPLB map SGLang's --init-expert-location loads: one key, a row a MoE
# layer of 4 ranks x 3 slots, every slot an expert; a placement whose ranks hold different numbers,
# greedy's here, is refused below)
for m in contiguous round-robin greedy eplb ilp; do
  map=()
  case $m in eplb | ilp) map=(--eplb-out "$d/$m.eplb.json") ;; esac
  check "plan $m" 0 "$E" plan --trace "$d/a.st" --method $m --nodes 2 --gpus-per-node 2 --slots 3 \
    --time-limit 10 --out "$d/$m.json" --json --quiet "${map[@]}"
  has "$d/out" "\"method\": \"$m\""
  [ -s "$d/$m.json" ] || { echo "FAIL: $m wrote no placement"; fails=$((fails + 1)); }
  [ ${#map[@]} = 0 ] || has "$d/err" "give --model to add their rows"
done
for m in eplb ilp; do
  python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))
sys.exit(0 if list(m) == ["physical_to_logical_map"] and len(m["physical_to_logical_map"]) == 4 and
         all(len(r) == 12 and all(0 <= e < 8 for e in r) for r in m["physical_to_logical_map"]) else 1)' \
    "$d/$m.eplb.json" || fail "the EPLB map of $m: $(head -c 300 "$d/$m.eplb.json")"
done
# with --model, a row for every decoder layer: deepseekv3-tiny's first is dense (first_k_dense_replace
# 1), its row the trivial map; its 4 MoE layers the placement's
check "synth dsv3-tiny" 0 "$E" trace synth --out "$d/ds.st" --layers 4 --experts 8 --k 2 --tokens 200 --seed 5
check "plan --model --eplb-out" 0 "$E" plan --trace "$d/ds.st" --model "${EPM_FIXTURES:?}/deepseekv3-tiny" --method eplb \
  --gpus-per-node 4 --redundant-experts 4 --out "$d/ds.json" --eplb-out "$d/ds.eplb.json" --quiet
python3 - "$d/ds.eplb.json" "$d/ds.json" <<'PY' || fail "the EPLB map with the model's dense layer: $(head -c 300 "$d/ds.eplb.json")"
import json, sys
m = json.load(open(sys.argv[1]))["physical_to_logical_map"]
p = json.load(open(sys.argv[2]))
ok = len(m) == 5 and m[0] == [q % 8 for q in range(12)]
for l in range(4):  # rank r's 3 slots: its experts, ascending
    held = {r: sorted(e for e, ranks in enumerate(p["layers"][l]["experts"]) if r in ranks) for r in range(4)}
    ok = ok and m[l + 1] == sum((held[r] for r in range(4)), [])
sys.exit(0 if ok else 1)
PY
check "greedy --eplb-out" 1 "$E" plan --trace "$d/a.st" --method greedy --nodes 2 --gpus-per-node 2 --slots 3 \
  --eplb-out "$d/greedy.eplb.json" --quiet
has "$d/err" "SGLang and vLLM give every rank the same number"
[ -e "$d/greedy.eplb.json" ] && fail "a refused EPLB map was written"
has "$d/ilp.json" '"format": "epmoe-placement"'
# spare slots: the ILP's replica search starts from eplb's copies when they are better, so its
# objective is never above eplb's, and on this affinity trace below it
has "$d/ilp.json" 'replica search'
obj() { sed -n 's/^ *"objective": \([0-9.e+-]*\),*$/\1/p' "$1"; }
awk -v i="$(obj "$d/ilp.json")" -v e="$(obj "$d/eplb.json")" 'BEGIN { exit !(i != "" && e != "" && i + 0 < e + 0) }' ||
  fail "ilp objective $(obj "$d/ilp.json") not below eplb's $(obj "$d/eplb.json") with spare slots"
check "eval" 0 "$E" plan eval --trace "$d/b.st" "$d/contiguous.json" "$d/eplb.json" "$d/ilp.json" --mode both
has "$d/out" "mode follow"
has "$d/out" "cheaper by"
check "eval json" 0 "$E" plan eval --trace "$d/b.st" "$d/contiguous.json" --json --per-layer
has "$d/out" '"rank_load"'

# redundant experts as vLLM counts them: 8 experts + 4 over 2 x 2 ranks = 3 slots a rank
check "plan redundant" 0 "$E" plan --trace "$d/a.st" --method eplb --nodes 2 --gpus-per-node 2 --redundant-experts 4 \
  --json --quiet --eplb-out "$d/r.eplb.json"
has "$d/out" '"slots_per_rank": 3'
python3 -c 'import json, sys; m = json.load(open(sys.argv[1]))["physical_to_logical_map"]
sys.exit(0 if len(m) == 4 and all(len(r) == 12 for r in m) else 1)' \
  "$d/r.eplb.json" || fail "--redundant-experts 4: not 12 physical experts a layer"
# a method that leaves spare slots empty: noted, and its map (8 physical experts) refused beside N = 4
check "plan redundant contiguous" 1 "$E" plan --trace "$d/a.st" --method contiguous --nodes 2 --gpus-per-node 2 \
  --redundant-experts 4 --eplb-out "$d/rc.eplb.json" --quiet
has "$d/err" "note: --redundant-experts 4 gives spare slots, and contiguous leaves them empty"
has "$d/err" "the placement holds 8 physical experts, and --redundant-experts 4 asks for 12"
[ -e "$d/rc.eplb.json" ] && fail "a refused EPLB map was written"
check "plan redundant past all" 2 "$E" plan --trace "$d/a.st" --nodes 2 --gpus-per-node 2 --redundant-experts 25
has "$d/err" "--redundant-experts 25: 4 ranks of at most 8 experts each hold at most 24 redundant ones"
check "plan redundant, not dividing" 2 "$E" plan --trace "$d/a.st" --nodes 2 --gpus-per-node 2 --redundant-experts 3
has "$d/err" "--redundant-experts 3: 8 experts and 3 redundant are 11 physical experts, which do not divide over 4 ranks"
has "$d/err" "0 or 4 would"
check "plan redundant and slots" 2 "$E" plan --trace "$d/a.st" --redundant-experts 8 --slots 2
has "$d/err" "--slots 2 and --redundant-experts 8: each sets the slots"

# usage errors: exit 2
check "no trace" 2 "$E" plan --method ilp
check "bad method" 2 "$E" plan --trace "$d/a.st" --method magic
has "$d/err" "magic"
check "bad mode" 2 "$E" plan --trace "$d/a.st" --mode sideways
check "bad nodes" 2 "$E" plan --trace "$d/a.st" --nodes 0
check "output over input" 2 "$E" plan --trace "$d/a.st" --out "$d/a.st"
check "eval without placement" 2 "$E" plan eval --trace "$d/b.st"
check "help" 0 "$E" plan --help
check "eval help" 0 "$E" plan eval --help

# failures: exit 1 with the file named
check "missing trace" 1 "$E" plan --trace "$d/none.st"
has "$d/err" "none.st"
check "slots too few" 1 "$E" plan --trace "$d/a.st" --nodes 1 --gpus-per-node 2 --slots 2
has "$d/err" "slots_per_rank = 2"
"$E" trace synth --out "$d/other.st" --layers 3 --experts 8 --k 2 --tokens 100 >/dev/null 2>&1
check "trace of another model" 1 "$E" plan eval --trace "$d/other.st" "$d/ilp.json"
has "$d/err" "3 MoE layers"
echo '{"format": "epmoe-placement", "version": 1}' >"$d/broken.json"
check "broken placement" 1 "$E" plan eval --trace "$d/b.st" "$d/broken.json"
has "$d/err" "broken.json"
echo '{"nodes": 2, "gpus_per_node": 0}' >"$d/cl.json"
check "bad cluster" 1 "$E" plan --trace "$d/a.st" --cluster "$d/cl.json"
has "$d/err" "cl.json: field 'gpus_per_node' = 0: must be an integer in \[1, 65536\]"
echo '{"nodes": 2, "gpus_per_node": 2, "inter_node_gbps": "fast"}' >"$d/cl2.json"
check "bad cluster bandwidth" 1 "$E" plan --trace "$d/a.st" --cluster "$d/cl2.json"
has "$d/err" "cl2.json: field 'inter_node_gbps' = \"fast\": must be a positive number"
check "cluster and a bandwidth" 2 "$E" plan --trace "$d/a.st" --cluster "$d/cl.json" --inter-gbps 10
has "$d/err" "--cluster and --inter-gbps exclude each other"

# every getopt-parsed subcommand: a valued option at the end of the line, an
# unknown option: exit 2, one message naming the option (getopt prints nothing
# of its own) and the hint
bad_opt() { # subcommand words..., option, expected message
  local n=$#
  local msg=${!n}
  check "$* (usage)" 2 "$E" "${@:1:n-1}"
  has "$d/err" "$msg"
  [ "$(wc -l <"$d/err")" = 2 ] || { echo "FAIL: ${*:1:n-1}: not one message and the hint:"; cat "$d/err"; fails=$((fails + 1)); }
  [ -s "$d/out" ] && { echo "FAIL: ${*:1:n-1}: printed on stdout"; fails=$((fails + 1)); }
}
for words in "plan --out" "plan eval --trace" "run --model" "launch --hosts" "model synth --out" \
  "bench a2a --max-bytes" "bench kernels --tokens" "bench run --batch" "bench plan --shape"; do
  set -- $words
  o=${*: -1}
  bad_opt "$@" "option '$o' needs a value"
  bad_opt "${@:1:$#-1}" --frobnicate "unknown option '--frobnicate'"
done

checks_done "all plan CLI checks passed"
