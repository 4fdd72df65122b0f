#!/usr/bin/env bash
# epmoe plan eval (and the output-over-input guard of epmoe plan): reports,
# exit codes 0/1/2, and a message naming the file for every failure.
. "$(dirname "$0")/lib.sh" || exit 1
check() { # description, expected exit code, command...
  local what=$1 want=$2; shift 2
  "$@" >"$d/out" 2>"$d/err"
  local got=$?
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$d/err"; fails=$((fails + 1))
  fi
}
lacks() { # file, text
  ! grep -q -- "$2" "$1" || { echo "FAIL: '$2' unexpectedly in $1:"; cat "$1"; fails=$((fails + 1)); }
}

check "synth" 0 "$E" trace synth --out "$d/t.st" --layers 3 --experts 8 --k 2 --tokens 1200 --zipf 1.2 \
  --affinity 0.8 --seed 11
check "split" 0 "$E" trace split "$d/t.st" --first "$d/a.st" --second "$d/b.st"
cl=(--nodes 2 --gpus-per-node 2)
check "plan contiguous" 0 "$E" plan --trace "$d/a.st" "${cl[@]}" --out "$d/c.json" --quiet
check "plan eplb" 0 "$E" plan --trace "$d/a.st" "${cl[@]}" --method eplb --slots 3 --out "$d/e.json" \
  --eplb-out "$d/e.map.json" --quiet
check "plan greedy follow" 0 "$E" plan --trace "$d/a.st" "${cl[@]}" --method greedy --mode follow \
  --out "$d/g.json" --quiet

# side by side, on the held-out half; the first placement is the reference
check "eval" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" "$d/e.json" "$d/g.json"
has "$d/out" "mode home (ratios against $d/c.json)"
has "$d/out" "mode follow (ratios against $d/c.json)" # g.json was planned for follow
has "$d/out" "c.json  *contiguous .* 1.000$"
has "$d/out" "e.json  *eplb"
has "$d/out" "x-node xfer"
check "eval per layer" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --mode follow --per-layer
has "$d/out" "layer   2: max load"
lacks "$d/out" "layer   3"
# --hier auto is the flat path (as run's); on, the wire is priced and printed per layer, the counted bytes
# the same; on a placement for 4 nodes of 4 ranks too
check "eval --hier on" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --hier on --per-layer
has "$d/out" "on the wire (hierarchical path, priced): [0-9]* bytes in [0-9]* messages intra-node, [0-9]* bytes in [0-9]* messages inter-node"
has "$d/out" "on the wire intra [0-9]* inter [0-9]*"
grep "c.json  *contiguous" "$d/out" | awk '{print $4, $5, $6, $7}' >"$d/hier_counts"
check "eval --hier auto" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --per-layer
lacks "$d/out" "on the wire"
grep "c.json  *contiguous" "$d/out" | awk '{print $4, $5, $6, $7}' | cmp -s - "$d/hier_counts" ||
  fail "plan eval --hier on counts other bytes than the flat path"
check "plan 4 x 4" 0 "$E" plan --trace "$d/a.st" --nodes 4 --gpus-per-node 4 --out "$d/c44.json" --quiet \
  --method round-robin
lacks "$d/err" "plans for the flat exchange"
# the ILP plans the flat exchange, which run takes by default (--hier auto): nothing to say about it
check "plan 4 x 4, ilp" 0 "$E" plan --trace "$d/a.st" --nodes 4 --gpus-per-node 4 --quiet --method ilp --time-limit 2
lacks "$d/err" "plans for the flat exchange"
check "eval 4 x 4, auto" 0 "$E" plan eval --trace "$d/b.st" "$d/c44.json" --json
has "$d/out" '"path": "flat"'
check "eval 4 x 4, on" 0 "$E" plan eval --trace "$d/b.st" "$d/c44.json" --json --hier on
has "$d/out" '"path": "hierarchical"'
check "eval 4 x 4, off" 0 "$E" plan eval --trace "$d/b.st" "$d/c44.json" --json --hier off
has "$d/out" '"path": "flat"'
# a latency a message: the same bytes and messages, a longer modelled time (b.st has no passes: one exchange
# a layer); refused below 0
check "eval, latency" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --json --inter-latency-us 5 --intra-latency-us 1
cp "$d/out" "$d/lat.json"
check "eval, no latency" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --json
python3 - "$d/lat.json" "$d/out" <<'EOF' || fail "plan eval --inter-latency-us: $(head -c 400 "$d/lat.json")"
import json, sys
a, b = (json.load(open(f))['placements'][0]['results'][0] for f in sys.argv[1:])
m = a['wire_msgs']
print(a['modelled_seconds'], b['modelled_seconds'], m)
sys.exit(0 if a['wire_bytes'] == b['wire_bytes'] and m == b['wire_msgs'] and m['inter_node'] > 0 and
         a['modelled_seconds'] > b['modelled_seconds'] else 1)
EOF
check "eval, latency text" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" --inter-latency-us 5
has "$d/out" "on the wire (flat path, priced): [0-9]* bytes in [0-9]* messages intra-node"
check "eval, negative latency" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --inter-latency-us -1
has "$d/err" "--inter-latency-us"
check "eval --hier, bad" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --hier sometimes
has "$d/err" "--hier"
check "plan --hier (plan eval's)" 2 "$E" plan --trace "$d/a.st" --hier on --out "$d/x.json"
check "eval both" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" "$d/e.json" --mode both --hidden 1024 \
  --dtype-bytes 4
has "$d/out" "e.json: .* mode is cheaper by"
has "$d/out" "follow keeps 4x the KV cache memory"
check "eval json" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" "$d/e.json" --mode both --json --per-layer
has "$d/out" '"cheaper_mode": "'
has "$d/out" '"ratio_to_first": 1.0,'
has "$d/out" '"transfers_crossing_nodes": '
has "$d/out" '"rank_load": \['
if command -v python3 >/dev/null; then
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); p=r["placements"];
assert len(p)==2 and [x["mode"] for x in p[1]["results"]]==["home","follow"], r
assert all(len(x["layers"])==3 and len(x["layers"][0]["rank_load"])==4 for x in p[0]["results"])
h=p[0]["results"][0]; assert h["gather_bytes"]=={"intra_node":0,"inter_node":0} and h["kv_cache_factor"]==1' \
    "$d/out" || { echo "FAIL: eval --json is not the expected JSON"; fails=$((fails + 1)); }
fi
# the same input gives the same numbers
"$E" plan eval --trace "$d/b.st" "$d/e.json" --json >"$d/j1" 2>/dev/null
"$E" plan eval --trace "$d/b.st" "$d/e.json" --json >"$d/j2" 2>/dev/null
cmp -s "$d/j1" "$d/j2" || { echo "FAIL: eval is not deterministic"; fails=$((fails + 1)); }
# eplb export: 4 ranks x 3 slots per layer, every slot an expert
has "$d/e.map.json" '^{"physical_to_logical_map":\[\[[0-9][0-9]*\(,[0-9][0-9]*\)\{11\}\],'

# online rebalancing over a drifting trace's passes (other experts hot every 1000 tokens, passes of
# 100): placements taken every 4 passes, a better balance than the static placement's, the last
# one written (4 x 3 slots, eplb's, the eval's mode)
check "synth passes, drift" 0 "$E" trace synth --out "$d/drift.st" --layers 3 --experts 8 --k 2 --tokens 4000 \
  --zipf 1.2 --pass-tokens 100 --drift 1000 --seq-len 50 --seed 3
check "stats of passes" 0 "$E" trace stats "$d/drift.st"
has "$d/out" "with seq_ids, with pass_ids (40 passes)"
check "eval online" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 --json \
  --placement-out "$d/online.json" --mode follow
check "eval static" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --json --mode follow
cp "$d/out" "$d/static.json"
has "$d/out" '"passes": 40}$'
check "eval static, text" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --mode follow
has "$d/out" "^modelled time pass by pass: the trace's 40 passes (pass_ids)"
check "eval without passes, text" 0 "$E" plan eval --trace "$d/b.st" "$d/e.json"
lacks "$d/out" "pass by pass"
check "eval online, text" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-window 2 \
  --eplb-slots 3 --eplb-from peers
has "$d/out" "    online rebalancing: [0-9]* placements taken, [0-9]* experts moved, copied: [1-9][0-9]* bytes intra-node"
has "$d/online.json" '"method": "eplb"'
has "$d/online.json" '"mode": "follow"'
if command -v python3 >/dev/null; then
  "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 --json --mode follow \
    --eplb-from peers >"$d/on.json"
  python3 -c 'import json,sys; on=json.load(open(sys.argv[1]))["placements"][0]["results"][0]
st=json.load(open(sys.argv[2]))["placements"][0]["results"][0]
assert on["eplb"]["rebalances"]==9 and on["eplb"]["experts_moved"]>0 and "eplb" not in st, (on, st)
assert on["max_over_mean_load"] < st["max_over_mean_load"], (on["max_over_mean_load"], st["max_over_mean_load"])
# each expert moved is copied once between ranks (default: bf16 of the default shape), in the time
c=on["eplb"]["bytes_copied"]
assert c["intra_node"] + c["inter_node"] == on["eplb"]["experts_moved"] * 6 * 4096 * 14336, on
assert 0 < on["eplb"]["copy_seconds"] < on["modelled_seconds"], on' \
    "$d/on.json" "$d/static.json" || { echo "FAIL: online rebalancing in plan eval"; fails=$((fails + 1)); }
  # from the checkpoint (the default, as run's): nothing copied, each gain read by its rank (counted,
  # and priced with --read-gbps: the time less the copies', plus the reads')
  "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 --json --mode follow \
    >"$d/on0.json"
  "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 --json --mode follow \
    --read-gbps 2 >"$d/onr.json"
  python3 -c 'import json,sys; on, z, rd = (json.load(open(f))["placements"][0]["results"][0] for f in sys.argv[1:4])
assert z["eplb"]["bytes_copied"] == {"intra_node": 0, "inter_node": 0} and z["eplb"]["copy_seconds"] == 0, z
assert abs(on["modelled_seconds"] - on["eplb"]["copy_seconds"] - z["modelled_seconds"]) < 1e-9, (on, z)
assert z["bytes"] == on["bytes"] and z["eplb"]["experts_moved"] == on["eplb"]["experts_moved"], (on, z)
assert on["eplb"]["source"] == "peers" and on["eplb"]["bytes_read"] == 0 and z["eplb"]["source"] == "checkpoint", (on, z)
assert z["eplb"]["bytes_read"] == z["eplb"]["experts_moved"] * 6 * 4096 * 14336 and z["eplb"]["read_seconds"] is None, z
assert rd["eplb"]["bytes_read"] == z["eplb"]["bytes_read"] and rd["eplb"]["read_seconds"] > 0, rd
# a rank reads its gains alone: at least the busiest of 4 ranks share, at most all of them, at 2 GB/s
per = 6 * 4096 * 14336 / 2e9
assert z["eplb"]["experts_moved"] / 4 * per <= rd["eplb"]["read_seconds"] <= z["eplb"]["experts_moved"] * per, rd
assert abs(rd["modelled_seconds"] - rd["eplb"]["read_seconds"] - z["modelled_seconds"]) < 1e-8 * rd["modelled_seconds"], (rd, z)' \
    "$d/on.json" "$d/on0.json" "$d/onr.json" || { echo "FAIL: plan eval from the checkpoint"; fails=$((fails + 1)); }
fi
# an interval beyond the trace's passes: no placement taken, and the report says so (the static figures)
check "eval online, none taken" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 1000 --json
has "$d/out" '"eplb": {"rebalances": 0, "experts_moved": 0, "source": "checkpoint", "bytes_copied": {"intra_node": 0, "inter_node": 0}, "copy_seconds": 0.0, "bytes_read": 0, "read_seconds": null}'
check "eval online, one placement out of two" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" "$d/e.json" \
  --eplb-interval 4 --placement-out "$d/x.json"
has "$d/err" "name one placement, not 2"
check "eval online, both modes out" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --mode both \
  --eplb-interval 4 --placement-out "$d/x.json"
has "$d/err" "--placement-out writes one mode's last placement"
check "eval window over interval" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 2 --eplb-window 3
has "$d/err" "--eplb-window 3: the loads of at most the --eplb-interval's 2 passes count"
check "eval min gain alone" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-min-gain 0.1
has "$d/err" "--eplb-min-gain is online rebalancing's"
check "eval online, min gain" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 \
  --eplb-min-gain 0.1 --json --mode follow
if command -v python3 >/dev/null; then # fewer experts moved than every time (on.json: the same without it)
  python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["placements"][0]["results"][0]["eplb"]
a=json.load(open(sys.argv[2]))["placements"][0]["results"][0]["eplb"]
assert g["experts_moved"] < a["experts_moved"] and g["rebalances"] <= a["rebalances"], (g, a)' "$d/out" "$d/on.json" ||
    { echo "FAIL: --eplb-min-gain moves no fewer experts"; fails=$((fails + 1)); }
fi
check "eval slots alone" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-slots 3
has "$d/err" "--eplb-slots is online rebalancing's"
check "eval redundant alone" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --redundant-experts 4
has "$d/err" "--redundant-experts is online rebalancing's"
check "eval redundant and slots" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 \
  --redundant-experts 4
has "$d/err" "--eplb-slots 3 and --redundant-experts 4: each sets the slots"
check "eval online without passes" 1 "$E" plan eval --trace "$d/b.st" "$d/c.json" --eplb-interval 4
has "$d/err" "$d/b.st: online rebalancing (--eplb-interval) replays the trace's passes, and it has no pass_ids"
check "synth bad drift" 2 "$E" trace synth --out "$d/x.st" --layers 3 --experts 8 --k 2 --tokens 40 --drift 0

# usage errors: exit 2
check "eval no trace" 2 "$E" plan eval "$d/c.json"
has "$d/err" "--trace is required"
check "eval no placement" 2 "$E" plan eval --trace "$d/b.st"
check "eval bad mode" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --mode sideways
has "$d/err" "sideways"
check "eval bad hidden" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --hidden 0
has "$d/err" "--hidden"
check "eval bad dtype" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --dtype-bytes 3x
check "eval unknown option" 2 "$E" plan eval --trace "$d/b.st" "$d/c.json" --method ilp

# failures: exit 1, naming the file and what is wrong
check "eval missing placement" 1 "$E" plan eval --trace "$d/b.st" "$d/c.json" "$d/none.json"
has "$d/err" "none.json"
check "eval missing trace" 1 "$E" plan eval --trace "$d/none.st" "$d/c.json"
has "$d/err" "none.st"
"$E" trace synth --out "$d/l4.st" --layers 4 --experts 8 --k 2 --tokens 50 >/dev/null 2>&1
check "wrong trace: layers" 1 "$E" plan eval --trace "$d/l4.st" "$d/c.json"
has "$d/err" "the trace has 4 MoE layers, the placement 3"
"$E" trace synth --out "$d/e16.st" --layers 3 --experts 16 --k 2 --tokens 50 >/dev/null 2>&1
check "wrong trace: experts" 1 "$E" plan eval --trace "$d/e16.st" "$d/c.json"
has "$d/err" "e16.st"
sed 's/"gpus_per_node": 2/"gpus_per_node": 1/' "$d/c.json" >"$d/shrunk.json"
check "placement rank beyond its cluster" 1 "$E" plan eval --trace "$d/b.st" "$d/shrunk.json"
has "$d/err" "shrunk.json: layers\[0\].experts\[[0-9]*\]\[0\] = [0-9]* is not a rank of the 2-rank cluster"
sed 's/"version": 1/"version": 2/' "$d/c.json" >"$d/v2.json"
check "future version" 1 "$E" plan eval --trace "$d/b.st" "$d/v2.json"
has "$d/err" "v2.json: version = 2"
printf '{"format": "epmoe-placement"' >"$d/cut.json"
check "truncated placement" 1 "$E" plan eval --trace "$d/b.st" "$d/cut.json"
has "$d/err" "cut.json: not valid JSON"

# plan never writes an output over an input (exit 2, input untouched)
cp "$d/a.st" "$d/keep.st"
check "out over trace" 2 "$E" plan --trace "$d/a.st" --out "$d/a.st"
has "$d/err" "would overwrite the input"
check "out over trace by another path" 2 "$E" plan --trace "$d/a.st" --out "$d/../$(basename "$d")/a.st"
check "eplb-out over trace" 2 "$E" plan --trace "$d/a.st" --eplb-out "$d/a.st"
cmp -s "$d/a.st" "$d/keep.st" || { echo "FAIL: the trace was modified"; fails=$((fails + 1)); }
echo '{"nodes": 2, "gpus_per_node": 2}' >"$d/cluster.json"
check "out over cluster" 2 "$E" plan --trace "$d/a.st" --cluster "$d/cluster.json" --out "$d/cluster.json"
has "$d/err" "cluster.json"
check "out equals eplb-out" 2 "$E" plan --trace "$d/a.st" --out "$d/x.json" --eplb-out "$d/x.json"
has "$d/err" "same file"
[ -e "$d/x.json" ] && { echo "FAIL: x.json written"; fails=$((fails + 1)); }
check "plan with cluster file" 0 "$E" plan --trace "$d/a.st" --cluster "$d/cluster.json" --out "$d/cf.json" --json --quiet
has "$d/out" '"ranks": 4'

# --model: the shape from a checkpoint's config.json. DeepSeek-V3's follow mode all-gathers MLA's
# latent rows (32 + 8 floats, float32): plan eval --model predicts the bytes a 3-rank run counts
F=${EPM_FIXTURES:?}
ds=$F/deepseekv3-tiny
if command -v mpirun >/dev/null; then
  echo '[[5, 9, 13, 2, 7, 11, 3], [4, 8, 1, 6], [10, 12, 14, 15, 16]]' >"$d/in.json"
  mpi() { ASAN_OPTIONS=$no_leaks timeout 120 mpirun --oversubscribe "$@"; }
  # predicts NAME MODEL CONDITION [RUN_FLAG [EVAL_FLAG]]: a traced 3-rank follow run, a plan from its
  # trace, the run with it (and RUN_FLAG) and plan eval --model of the plan (and EVAL_FLAG): the bytes
  # run counted are plan eval's, and CONDITION (Python over the report r, its bytes run and its K/V
  # bytes kv) holds; $d/NAME-eval.json keeps the eval
  predicts() {
    local name=$1 model=$2 rf=${4:-} ef=${5:-}
    check "$name: traced run" 0 mpi -np 3 "$E" run --model "$model" --input "$d/in.json" --max-new-tokens 3 \
      --mode follow --trace-out "$d/$name.st"
    check "$name: plan --model" 0 "$E" plan --trace "$d/$name.st" --model "$model" --gpus-per-node 3 \
      --method greedy --mode follow --out "$d/$name.json" --quiet
    # shellcheck disable=SC2086
    # (the traced routing replayed: a bf16 or fp8 wire could tip a router's near-tie, and then the
    # run would not be the trace's)
    check "$name: run with the plan" 0 mpi -np 3 "$E" run --model "$model" --input "$d/in.json" --max-new-tokens 3 \
      --mode follow --placement "$d/$name.json" --json --report --route-from-trace "$d/$name.st" $rf
    cp "$d/out" "$d/$name-run.json"
    # shellcheck disable=SC2086
    check "$name: plan eval --model" 0 "$E" plan eval --trace "$d/$name.st" "$d/$name.json" --model "$model" --json $ef
    cp "$d/out" "$d/$name-eval.json"
    python3 - "$d/$name-run.json" "$d/$name-eval.json" "$3" <<'EOF2' ||
import json, sys
r = json.load(open(sys.argv[1]))['report']
e = json.load(open(sys.argv[2]))['placements'][0]['results'][0]
run = [sum(l['bytes'][c] + l['kv_bytes'][c] for l in r['layers']) + r['gather_bytes'][c] for c in (1, 2)]
kv = sum(l['kv_bytes'][1] for l in r['layers'])
ev = [e['bytes']['intra_node'], e['bytes']['inter_node']]
print('run counted', run, '(K/V', kv, ') plan eval predicted', ev, '; cache', r['kv_cache'], r['kv_row_floats'],
      '; experts held', r['expert_dtype'])
sys.exit(0 if run == ev and eval(sys.argv[3]) else 1)
EOF2
      { echo "FAIL: plan eval --model does not predict the run's bytes ($name)"; fails=$((fails + 1)); }
  }
  predicts ds "$ds" "kv > 0 and kv % 160 == 0 and r['kv_cache'] == 'mla-latent' and r['kv_row_floats'] == 40"
  # run --mla-cache expanded all-gathers a key and a value per head: plan eval --mla-cache expanded
  # predicts it (the latent width would count a fraction of its K/V bytes)
  predicts dsx "$ds" "kv > 0 and r['kv_cache'] == 'mla-expanded' and r['kv_row_floats'] > 40" \
    "--mla-cache expanded" "--mla-cache expanded"
  check "plan eval --mla-cache without --model" 2 "$E" plan eval --trace "$d/ds.st" "$d/ds.json" --mla-cache expanded
  has "$d/err" "--mla-cache sizes the K/V rows of --model's checkpoint, which is not given"
  check "plan --mla-cache of a model without MLA" 1 "$E" plan --trace "$d/t.st" --model "$F/mixtral-tiny" \
    --mla-cache expanded
  has "$d/err" "--mla-cache expanded: $F/mixtral-tiny is not a multi-head latent attention model"
  # a bf16 checkpoint: run's activations are float32 on the wire all the same, and --model says so
  # (it once predicted 2 bytes per element: half of what run counts)
  check "synth bf16" 0 "$E" model synth --out "$d/m16" --dtype bf16 --layers 2 --experts 8 --k 2
  predicts m16 "$d/m16" "run[0] > 0 and r['expert_dtype'] == 'BF16'"
  # activations in bf16 on the wire: 2 bytes per element, as plan eval --dtype-bytes 2 predicts, also
  # for an odd hidden size (whose rows carry a pad half-word that is not payload)
  check "synth hidden 33" 0 "$E" model synth --out "$d/m33" --hidden 33 --head-dim 6 --layers 2
  predicts w33 "$d/m33" "kv > 0 and r['wire_dtype'] == 'BF16'" "--wire-dtype bf16" "--dtype-bytes 2"
  # fp8 dispatch (home mode): rows of 33 e4m3 codes (padded to 36 bytes on the wire) and one scale,
  # counted as 33 + 4 bytes, and a bf16 combine; plan eval --wire-dtype fp8 predicts them
  predicts w8 "$d/m33" "kv == 0 and r['wire_dtype'] == 'F8_E4M3'" "--wire-dtype fp8 --mode home" \
    "--wire-dtype fp8 --mode home"
  check "plan eval --wire-dtype with --dtype-bytes" 2 "$E" plan eval --trace "$d/w8.st" "$d/w8.json" \
    --wire-dtype bf16 --dtype-bytes 2
  has "$d/err" "--wire-dtype bf16 and --dtype-bytes 2: give one"
  check "plan eval --wire-dtype fp8, follow" 2 "$E" plan eval --trace "$d/w8.st" "$d/w8.json" --wire-dtype fp8
  has "$d/err" "--wire-dtype fp8 is for home mode (epmoe run refuses it in follow mode), and the placements ask for follow"
  check "plan eval --wire-dtype f16" 2 "$E" plan eval --trace "$d/w8.st" "$d/w8.json" --wire-dtype f16 --mode home
  has "$d/err" "--wire-dtype 'f16' is not f32, bf16 or fp8"
  # the flags the model replaces change the prediction; given beside it, they win
  check "plan eval --model --kv-dim" 0 "$E" plan eval --trace "$d/ds.st" "$d/ds.json" --model "$ds" --kv-dim 192 --json
  cmp -s "$d/out" "$d/ds-eval.json" && { echo "FAIL: --kv-dim beside --model changed nothing"; fails=$((fails + 1)); }
fi
# a model whose experts or MoE layers are not the trace's is refused, naming both
check "synth 6 experts" 0 "$E" model synth --out "$d/m6" --experts 6 --layers 3
check "synth 2 layers" 0 "$E" model synth --out "$d/m2" --experts 8 --layers 2
check "plan --model mismatch" 1 "$E" plan --trace "$d/t.st" --model "$d/m2" --quiet
has "$d/err" "has 3 MoE layers of 8 experts, the model $d/m2 2 of 8"
check "plan --model fewer experts" 1 "$E" plan --trace "$d/t.st" --model "$d/m6" --quiet
has "$d/err" "is outside \[0, 6)"
check "plan eval --model mismatch" 1 "$E" plan eval --trace "$d/b.st" "$d/c.json" --model "$d/m6"
has "$d/err" "the model $d/m6 3 of 6"
check "plan --model missing" 1 "$E" plan --trace "$d/t.st" --model "$d/nothing" --quiet
has "$d/err" "$d/nothing/config.json"

# plan moves: what changing c.json to e.json costs in copies of experts (as online rebalancing copies
# them), per layer; aligned first, fewer; the aligned placement written and priced again alike
check "moves" 0 "$E" plan moves "$d/c.json" "$d/e.json" --per-layer --expert-bytes 1000 --json
cp "$d/out" "$d/moves.json"
check "moves aligned" 0 "$E" plan moves "$d/c.json" "$d/e.json" --align --out "$d/ea.json" --expert-bytes 1000 --json
cp "$d/out" "$d/moves_a.json"
check "moves of the aligned" 0 "$E" plan moves "$d/c.json" "$d/ea.json" --expert-bytes 1000 --json
if command -v python3 >/dev/null; then
  python3 - "$d/moves.json" "$d/moves_a.json" "$d/out" <<'EOF' || { echo "FAIL: plan moves"; fails=$((fails + 1)); }
import json, sys
m, a, again = (json.load(open(f)) for f in sys.argv[1:4])
n = m["experts_copied"]
assert n > 0 and len(m["per_layer"]) == 3 and sum(m["per_layer"]) == n, m
assert m["bytes_copied"]["intra_node"] + m["bytes_copied"]["inter_node"] == 1000 * n and m["expert_bytes"] == 1000, m
assert m["modelled_seconds"] > 0 and m["max_send_bytes"] >= 1000 and not m["aligned"], m
assert a["aligned"] and a["experts_copied"] <= n, (a, m)
assert again["experts_copied"] == a["experts_copied"] and again["bytes_copied"] == a["bytes_copied"], (again, a)
# read from the checkpoint instead: the busiest gainer's (among 4 ranks), priced only with --read-gbps
r = m["read"]
assert n / 4 <= r["max_rank_experts"] <= n and r["max_rank_bytes"] == 1000 * r["max_rank_experts"], m
assert r["seconds"] is None, m
EOF
fi
has "$d/ea.json" '"method": "eplb"'
check "moves priced reads" 0 "$E" plan moves "$d/c.json" "$d/e.json" --expert-bytes 1000 --read-gbps 0.000001
has "$d/out" "read from the checkpoint instead: the busiest rank reads [1-9][0-9]* experts, [1-9][0-9]*000 bytes, [0-9.]* s at 1e-06 GB/s"
check "moves to itself" 0 "$E" plan moves "$d/c.json" "$d/c.json"
has "$d/out" "c.json: 0 experts copied, 352321536 bytes each"
has "$d/out" "modelled 0.000000 s (150 GB/s within a node, 25 between nodes; the flat path)"
# the path (auto: flat on 2 ranks a node, as run): through the gateways, the same bytes counted, no
# faster, as plan eval's replay prices a rebalance's copies there
check "moves hier on" 0 "$E" plan moves "$d/c.json" "$d/e.json" --expert-bytes 1000 --json --hier on
cp "$d/out" "$d/moves_h.json"
if command -v python3 >/dev/null; then
  python3 - "$d/moves.json" "$d/moves_h.json" <<'EOF' || fail "plan moves --hier on against the flat path"
import json, sys
m, h = (json.load(open(f)) for f in sys.argv[1:3])
assert m["path"] == "flat" and h["path"] == "hierarchical", (m, h)
assert h["bytes_copied"] == m["bytes_copied"] and h["experts_copied"] == m["experts_copied"], (m, h)
assert h["modelled_seconds"] >= m["modelled_seconds"] > 0 and h["max_send_bytes"] >= m["max_send_bytes"], (m, h)
EOF
fi
check "moves hier bad" 2 "$E" plan moves "$d/c.json" "$d/e.json" --hier sometimes
has "$d/err" "--hier 'sometimes'"
check "synth a model" 0 "$E" model synth --out "$d/m8" --experts 8 --layers 3 --hidden 32 --ffn 16
check "moves --model" 0 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m8"
has "$d/out" "experts copied, $((3 * 32 * 16 * 4)) bytes each" # (synth's default: float32)
# a bf16 checkpoint: copied as run holds it (as stored by default, widened with --expert-dtype f32), read
# as stored; a float32 one stays float32 under bf16, as run keeps it
check "synth a bf16 model" 0 "$E" model synth --out "$d/m16" --experts 8 --layers 3 --hidden 32 --ffn 16 --dtype bf16
check "moves bf16" 0 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m16" --read-gbps 1
has "$d/out" "experts copied, $((3 * 32 * 16 * 2)) bytes each"
check "moves bf16 held f32" 0 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m16" --expert-dtype f32 --read-gbps 1 --json
gj() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$d/out" "$1"; }
[ "$(gj "d['expert_bytes'] == 2 * 3072 and d['read']['max_rank_bytes'] == 3072 * d['read']['max_rank_experts'] > 0")" = True ] ||
  fail "plan moves --expert-dtype f32: $(head -c 300 "$d/out")"
check "moves f32 held bf16" 0 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m8" --expert-dtype bf16
has "$d/out" "experts copied, $((3 * 32 * 16 * 4)) bytes each"
check "moves dtype and bytes" 2 "$E" plan moves "$d/c.json" "$d/e.json" --expert-bytes 8 --expert-dtype f32
has "$d/err" "--expert-bytes 8 and --expert-dtype f32: each sets the bytes of an expert"
check "moves dtype word" 2 "$E" plan moves "$d/c.json" "$d/e.json" --expert-dtype f16
check "moves one placement" 2 "$E" plan moves "$d/c.json"
has "$d/err" "name two placements, FROM and TO (1 given)"
check "moves out over input" 2 "$E" plan moves "$d/c.json" "$d/e.json" --out "$d/e.json"
has "$d/err" "would overwrite an input"
check "moves model and bytes" 2 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m8" --expert-bytes 8
check "moves model and shape" 2 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/m8" --hidden 64
has "$d/err" "--hidden and --ffn size an expert when neither --model nor --expert-bytes does"
mkdir -p "$d/cfgonly" && cp "$d/m8/config.json" "$d/cfgonly/"
check "moves --model, config alone" 0 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/cfgonly"
has "$d/out" "experts copied, $((3 * 32 * 16 * 4)) bytes each" # (its shape, in its declared float32)
has "$d/err" "holds no weights to read"
mkdir -p "$d/cfgtrunc" && cp "$d/m8/config.json" "$d/cfgtrunc/" && head -c 100 "$d/m8/model.safetensors" >"$d/cfgtrunc/model.safetensors"
check "moves --model, weights unreadable" 1 "$E" plan moves "$d/c.json" "$d/e.json" --model "$d/cfgtrunc"
has "$d/err" "cfgtrunc/model.safetensors"
check "eval online, unreadable weights" 1 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --model "$d/cfgtrunc" \
  --eplb-interval 4 --eplb-from peers
check "eval online from the checkpoint, text" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 \
  --eplb-slots 3
has "$d/out" "experts moved, read from the checkpoint: [1-9][0-9]* bytes (not priced: --read-gbps)"
check "eval --expert-dtype without peers" 2 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 \
  --eplb-slots 3 --expert-dtype f32
has "$d/err" "--expert-dtype f32 sizes the experts copied between ranks (--eplb-from peers); a read from the checkpoint is as stored"
check "eval --expert-dtype f32" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 --eplb-slots 3 \
  --eplb-from peers --expert-dtype f32 --json
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["placements"][0]["results"][0]["eplb"]
sys.exit(0 if sum(e["bytes_copied"].values()) == e["experts_moved"] * 12 * 4096 * 14336 > 0 else 1)' "$d/out" ||
  fail "plan eval --expert-dtype f32: not float32 copies of the default shape"
check "eval online from the checkpoint, priced" 0 "$E" plan eval --trace "$d/drift.st" "$d/c.json" --eplb-interval 4 \
  --eplb-slots 3 --read-gbps 2
has "$d/out" "experts moved, read from the checkpoint: [1-9][0-9]* bytes, [0-9.]* ms"
check "plan 1 node" 0 "$E" plan --trace "$d/a.st" --nodes 1 --gpus-per-node 4 --out "$d/one.json" --quiet
check "moves other cluster" 1 "$E" plan moves "$d/c.json" "$d/one.json"
has "$d/err" "c.json is for 2 nodes of 2 ranks, $d/one.json for 1 of 4"
check "synth 4 experts" 0 "$E" trace synth --out "$d/x4.st" --layers 3 --experts 4 --k 2 --tokens 100
check "plan 4 experts" 0 "$E" plan --trace "$d/x4.st" "${cl[@]}" --out "$d/x4.json" --quiet
check "moves other shape" 1 "$E" plan moves "$d/c.json" "$d/x4.json"
has "$d/err" "c.json has 3 layers x 8 experts on 4 ranks, $d/x4.json 3 x 4 on 4"
check "moves missing" 1 "$E" plan moves "$d/c.json" "$d/none.json"
has "$d/err" "$d/none.json"
check "moves help" 0 "$E" plan moves --help
has "$d/out" "usage: epmoe plan moves FROM.json TO.json"

# expert groups (DeepSeek's n_group): a group-limited trace, 16 experts in 4 groups of which a token
# chooses within 2; eplb with --expert-groups keeps each group on one of the 2 nodes, so no token reaches
# more nodes than its 2 groups, where the global policy's reach more
check "synth grouped" 0 "$E" trace synth --out "$d/grp.st" --layers 2 --experts 16 --k 4 --tokens 2000 --groups 4 \
  --topk-groups 1 --seq-len 20 --seed 4
check "plan eplb grouped" 0 "$E" plan --trace "$d/grp.st" --nodes 2 --gpus-per-node 2 --method eplb --slots 5 \
  --expert-groups 4 --out "$d/grp.json" --quiet
check "plan eplb global" 0 "$E" plan --trace "$d/grp.st" --nodes 2 --gpus-per-node 2 --method eplb --slots 5 \
  --out "$d/glob.json" --quiet
check "eval grouped" 0 "$E" plan eval --trace "$d/grp.st" "$d/glob.json" "$d/grp.json" --json
python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["placements"]; g=p[1]["results"][0]["nodes"]; b=p[0]["results"][0]["nodes"]
print(b, g)
sys.exit(0 if g["most"] == 1 and g["per_token"] == 1 and g["dispatches_crossing"] < b["dispatches_crossing"] and b["most"] == 2 else 1)' \
  "$d/out" || fail "plan --expert-groups: a token's experts not on one node"
check "eval grouped, text" 0 "$E" plan eval --trace "$d/grp.st" "$d/glob.json" "$d/grp.json"
has "$d/out" "nodes a token reaches: 1.000 on average, 1 at most; [0-9]* dispatches cross nodes once each"
check "plan --expert-groups not dividing" 2 "$E" plan --trace "$d/grp.st" --nodes 2 --gpus-per-node 2 --method eplb \
  --slots 5 --expert-groups 3
has "$d/err" "--expert-groups = 3: expert groups must divide the 16 experts"
check "plan --expert-groups, greedy" 0 "$E" plan --trace "$d/grp.st" --nodes 2 --gpus-per-node 2 --method greedy \
  --expert-groups 4 --quiet
has "$d/err" "note: --expert-groups shapes eplb's placements; greedy does not take them"
check "plan --expert-groups over 3 nodes" 0 "$E" plan --trace "$d/grp.st" --nodes 3 --gpus-per-node 2 --method eplb \
  --slots 3 --expert-groups 4 --quiet
has "$d/err" "note: 4 expert groups do not divide over 3 nodes: eplb's global policy"
check "plan eval, plan's option with =" 2 "$E" plan eval --trace "$d/grp.st" "$d/grp.json" --out="$d/x.json"
has "$d/err" "option '--out' is not one of this command's"
check "plan, a flag with a value" 2 "$E" plan --trace "$d/grp.st" --json=1
has "$d/err" "option '--json' takes no value"
check "eval --expert-groups alone" 2 "$E" plan eval --trace "$d/grp.st" "$d/grp.json" --expert-groups 4
has "$d/err" "--expert-groups is online rebalancing's"

# errors that name the file at fault (found walking the README as a new user)
check "synth, 16 experts" 0 "$E" trace synth --out "$d/t16.st" --layers 3 --experts 16 --k 2 --tokens 200 --seed 3
check "eval, a placement of fewer experts than the trace's" 1 "$E" plan eval --trace "$d/t16.st" "$d/c.json"
has "$d/err" "$d/c.json has 8 experts per MoE layer: $d/t16.st: topk_ids"
check "plan 3 ranks" 0 "$E" plan --trace "$d/a.st" --nodes 1 --gpus-per-node 3 --out "$d/c3.json" --quiet
check "eval, placements for two clusters" 0 "$E" plan eval --trace "$d/b.st" "$d/c.json" "$d/c3.json"
has "$d/err" "note: $d/c.json is for 2 nodes x 2 ranks, $d/c3.json for 1 x 3: the ratios compare different clusters"
# plan moves --model: the placements must be of the model's MoE layers and experts (olmoe-tiny: 4 x 8)
check "moves --model, another model's placements" 1 "$E" plan moves "$d/c.json" "$d/e.json" --model "$F/olmoe-tiny"
has "$d/err" "$d/c.json has 3 MoE layers of 8 experts, the model $F/olmoe-tiny 4 of 8"

checks_done "all plan eval CLI checks passed"
