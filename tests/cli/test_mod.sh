#!/usr/bin/env bash
# Mixture-of-Depths and TA-MoE's node cap in epmoe run: capacity 1 changes nothing; with skipping,
# every rank count and both modes give the 1-rank run's tokens and logits;
# skipped tokens move no bytes (plan eval of the run's own trace predicts
# exactly the bytes the run counted); bad options are refused by name.
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
export ASAN_OPTIONS=$no_leaks
require mpirun
require python3
# with the status of the command that failed, and the end of its output
fail() { echo "FAIL: $* (last exit status $?)"; fails=$((fails + 1)); tail -3 "$d/out" "$d/err" 2>/dev/null; }
run() { timeout 120 mpirun --oversubscribe "$@"; }

# logits of two safetensors files: identical (tol 0) or within a relative tolerance
cmp_logits() { # a b tol
  python3 - "$1" "$2" "$3" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    t = h['logits']
    s, e = t['data_offsets']
    raw = b[8 + n + s:8 + n + e]
    return struct.unpack('<%df' % (len(raw) // 4), raw)
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
if len(a) != len(b):
    sys.exit('logits differ in size: %d vs %d' % (len(a), len(b)))
scale = max(abs(x) for x in a) or 1.0
worst = max(abs(x - y) for x, y in zip(a, b)) / scale
if worst > tol:
    sys.exit('logits differ: max |a-b| / max|a| = %.3g > %g' % (worst, tol))
EOF
}
# the sanitizer pass of CI (EPM_TEST_QUICK=1) runs each path once, not each comparison (the normal pass's)
quick() { [ "${EPM_TEST_QUICK:-0}" = 1 ]; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(eval(sys.argv[2])))" "$@"; }

python3 -c "import json; print(json.dumps([[(7*i+3*s)%60+1 for i in range(n)] for s,n in enumerate([13,6,21,9])]))" \
  >"$d/in.json"

# OLMoE: attention scores at 2 and 3 ranks, the schedule at 3; Mixtral
# (another attention and router shape) one source at 3 ranks, which keeps CI
# short (test_run's MoD-free paths cover 1-8 ranks; 4 ranks here cost CI
# about 20 s)
names=(olmoe-tiny mixtral-tiny)
quick && names=(olmoe-tiny)
for name in "${names[@]}"; do
  m=$F/$name
  srcs=(schedule attention) nps=(2 3)
  # the sanitizer pass of CI (EPM_TEST_QUICK=1) checks the odd count only
  [ "${EPM_TEST_QUICK:-0}" = 1 ] && nps=(3)
  [ $name = mixtral-tiny ] && srcs=(attention) nps=(3)
  # capacity 1: the same bits as no MoD at all, whichever score source
  run -np 2 "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 3 --logits-out "$d/off.st" --json \
    >"$d/off.json" 2>"$d/err" || { fail "$name: run without MoD"; tail -3 "$d/off.json"; }
  for src in "${srcs[@]}"; do
    run -np 2 "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 3 --mod "$src" --mod-capacity 1 \
      --logits-out "$d/c1.st" --json >"$d/c1.json" 2>"$d/err" || { fail "$name: --mod $src capacity 1"; head -3 "$d/err"; }
    cmp_logits "$d/off.st" "$d/c1.st" 0 || fail "$name: --mod $src --mod-capacity 1 changed the logits"
  done
  # the same over a bf16 K/V cache (A-MoD's scores then come from it)
  if [ $name = olmoe-tiny ]; then
    for mod in "" "--mod attention --mod-capacity 1"; do
      # shellcheck disable=SC2086
      run -np 3 "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 3 --mode follow --kv-dtype bf16 $mod \
        --logits-out "$d/kv16${mod:+-mod}.st" --json >"$d/c1.json" 2>"$d/err" ||
        { fail "$name: --kv-dtype bf16 $mod"; head -3 "$d/err"; }
    done
    cmp_logits "$d/kv16.st" "$d/kv16-mod.st" 0 || fail "$name: bf16 cache: --mod attention capacity 1 changed the logits"
    cmp_logits "$d/off.st" "$d/kv16.st" 2e-2 || fail "$name: bf16 cache: logits off float32's"
    # skipping by scores read from the bf16 (and the fp8) cache: 3 ranks in follow mode decide as 1 rank does
    for kvd in bf16 fp8; do
      for np in 1 3; do
        run -np $np "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 4 --mode follow --kv-dtype $kvd \
          --mod attention --mod-capacity 0.5 --logits-out "$d/kvs$np.st" --json --report >"$d/kvs$np.json" 2>"$d/err" ||
          { fail "$name: --kv-dtype $kvd --mod attention 0.5 at $np ranks"; head -3 "$d/err"; }
      done
      [ "$(field "$d/kvs1.json" "[d['generated'], d['report']['layer_tokens']]")" = \
        "$(field "$d/kvs3.json" "[d['generated'], d['report']['layer_tokens']]")" ] ||
        fail "$name: $kvd cache, A-MoD 0.5: 3 ranks generated or skipped otherwise than 1"
      cmp_logits "$d/kvs1.st" "$d/kvs3.st" 1e-4 || fail "$name: $kvd cache, A-MoD 0.5: 3 ranks' logits off 1 rank's"
      [ $kvd = bf16 ] && { cmp_logits "$d/kv16.st" "$d/kvs1.st" 1e-4 2>/dev/null && fail "$name: bf16 cache, A-MoD 0.5 skipped nothing"; }
    done
  fi

  # skipping: the 1-rank run is the reference of the same rule at 2 and 3 ranks, home and follow
  for src in "${srcs[@]}"; do
    args=(--model "$m" --input "$d/in.json" --max-new-tokens 4 --mod "$src" --mod-capacity 0.5)
    run -np 1 "$E" run "${args[@]}" --logits-out "$d/ref.st" --trace-out "$d/ref.trace.st" --json --report \
      >"$d/ref.json" 2>"$d/err" || { fail "$name: 1-rank --mod $src"; head -3 "$d/err"; continue; }
    gen=$(field "$d/ref.json" "d['generated']")
    lt=$(field "$d/ref.json" "d['report']['layer_tokens']")
    total=$(field "$d/ref.json" "(d['report']['prefill_tokens'] + d['report']['decode_tokens']) * len(d['report']['layer_tokens'])")
    ran=$(field "$d/ref.json" "sum(d['report']['layer_tokens'])")
    [ "$ran" -lt "$total" ] || fail "$name: --mod $src skipped nothing ($ran of $total token-blocks ran)"
    cmp_logits "$d/off.st" "$d/ref.st" 1e-4 2>/dev/null && fail "$name: --mod $src 0.5 left the logits unchanged"
    counts=("${nps[@]}")
    [ $src = schedule ] && counts=(3)
    for np in "${counts[@]}"; do
      for mode in home follow; do
        run -np $np "$E" run "${args[@]}" --mode $mode --logits-out "$d/np.st" --json --report >"$d/np.json" 2>"$d/err" \
          || { fail "$name: --mod $src at $np ranks, $mode"; head -3 "$d/err"; continue; }
        [ "$(field "$d/np.json" "d['generated']")" = "$gen" ] || fail "$name: --mod $src $np ranks $mode: other tokens"
        [ "$(field "$d/np.json" "d['report']['layer_tokens']")" = "$lt" ] || fail "$name: --mod $src $np ranks $mode: other skips"
        cmp_logits "$d/ref.st" "$d/np.st" 1e-4 || fail "$name: --mod $src $np ranks $mode: logits"
      done
    done
  done
done

# a checkpoint trained with MoD routers: model.layers.{l}.mod_router.weight [1, hidden]
mkdir -p "$d/routed"
cp "$F/olmoe-tiny/config.json" "$d/routed/"
python3 - "$F/olmoe-tiny/model.safetensors" "$d/routed/model.safetensors" <<'EOF'
import json, random, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
data = bytearray(b[8 + n:])
cfg = json.load(open(sys.argv[2].rsplit('/', 1)[0] + '/config.json'))
H, L = cfg['hidden_size'], cfg['num_hidden_layers']
rng = random.Random(5)
for l in range(1, L):
    raw = struct.pack('<%df' % H, *[rng.gauss(0, 1) for _ in range(H)])
    h['model.layers.%d.mod_router.weight' % l] = {'dtype': 'F32', 'shape': [1, H],
                                                   'data_offsets': [len(data), len(data) + len(raw)]}
    data += raw
hb = json.dumps(h).encode()
hb += b' ' * (-len(hb) % 8)
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(hb)) + hb + bytes(data))
EOF
args=(--model "$d/routed" --input "$d/in.json" --max-new-tokens 4 --mod router --mod-capacity 0.25)
run -np 1 "$E" run "${args[@]}" --logits-out "$d/ref.st" --json --report >"$d/ref.json" 2>"$d/err" \
  || { fail "1-rank --mod router"; head -3 "$d/err"; }
gen=$(field "$d/ref.json" "d['generated']")
ran=$(field "$d/ref.json" "sum(d['report']['layer_tokens'])")
total=$(field "$d/ref.json" "(d['report']['prefill_tokens'] + d['report']['decode_tokens']) * len(d['report']['layer_tokens'])")
[ "$ran" -lt "$total" ] || fail "--mod router skipped nothing"
for np in 3; do
  for mode in home follow; do
    run -np $np "$E" run "${args[@]}" --mode $mode --logits-out "$d/np.st" --json >"$d/np.json" 2>"$d/err" \
      || { fail "--mod router at $np ranks, $mode"; head -3 "$d/err"; continue; }
    [ "$(field "$d/np.json" "d['generated']")" = "$gen" ] || fail "--mod router $np ranks $mode: other tokens"
    cmp_logits "$d/ref.st" "$d/np.st" 1e-4 || fail "--mod router $np ranks $mode: logits"
  done
done

# skipped tokens move no bytes: their trace rows are -1, and plan eval of the
# run's own trace, under the run's placement, predicts the bytes it counted
m=$F/olmoe-tiny
modes=(home follow)
quick && modes=(follow)
for mode in "${modes[@]}"; do
  run -np 3 "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 3 --mod attention --mod-capacity 0.5 \
    --mode $mode --trace-out "$d/t.st" --json --report >"$d/r.json" 2>"$d/err" || { fail "traced MoD run ($mode)"; head -3 "$d/err"; }
  "$E" plan --trace "$d/t.st" --gpus-per-node 3 --method contiguous --mode $mode --out "$d/p.json" >/dev/null 2>"$d/err" \
    || { fail "plan contiguous ($mode)"; head -3 "$d/err"; }
  run -np 3 "$E" run --model "$m" --input "$d/in.json" --max-new-tokens 3 --mod attention --mod-capacity 0.5 \
    --mode $mode --placement "$d/p.json" --json --report >"$d/r2.json" 2>"$d/err" || { fail "MoD run with the plan ($mode)"; head -3 "$d/err"; }
  # olmoe-tiny: hidden 64 in float32, K+V width 2 x 2 heads x 16
  "$E" plan eval --trace "$d/t.st" "$d/p.json" --mode $mode --hidden 64 --dtype-bytes 4 --kv-dim 64 --json \
    >"$d/ev.json" 2>"$d/err" || { fail "plan eval ($mode)"; head -3 "$d/err"; }
  python3 - "$d/r2.json" "$d/ev.json" "$mode" <<'EOF' || fail "$mode: plan eval of the MoD trace does not predict the run's bytes"
import json, sys
r = json.load(open(sys.argv[1]))['report']
e = json.load(open(sys.argv[2]))['placements'][0]['results'][0]
run = [sum(l['bytes'][c] + l['kv_bytes'][c] for l in r['layers']) + r['gather_bytes'][c] for c in (1, 2)]
ev = [e['bytes']['intra_node'], e['bytes']['inter_node']]
print(sys.argv[3], 'run counted', run, 'plan eval predicted', ev)
sys.exit(0 if run == ev and run[0] > 0 else 1)
EOF
done

# TA-MoE's node cap: with 2 virtual nodes, cap 0 keeps every dispatch inside
# the node, a cap in between sends fewer bytes across than none, and a run
# repeats its bytes exactly
inter() { field "$1" "[sum(l['bytes'][c] for l in d['report']['layers']) for c in (1, 2)]"; }
# (all three caps in follow mode; home checks that cap 0 keeps every byte inside the node)
quick || {
run -np 4 "$E" run --model "$m" --input "$d/in.json" --virtual-nodes 2 --max-new-tokens 3 --mode home --ta-node-cap 0 \
  --json --report >"$d/ta_home0.json" 2>"$d/err" || { fail "--ta-node-cap 0 (home)"; head -3 "$d/err"; }
python3 -c "import json,sys; b=json.loads(sys.argv[1]); sys.exit(0 if b[1] == 0 and b[0] > 0 else 1)" \
  "$(inter "$d/ta_home0.json")" || fail "home: --ta-node-cap 0 sends bytes between nodes"
}
for mode in follow; do
  for cap in none 0.3 0; do
    a=(); [ $cap != none ] && a=(--ta-node-cap $cap)
    run -np 4 "$E" run --model "$m" --input "$d/in.json" --virtual-nodes 2 --max-new-tokens 3 --mode $mode "${a[@]}" \
      --json --report >"$d/ta_$cap.json" 2>"$d/err" || { fail "--ta-node-cap $cap ($mode)"; head -3 "$d/err"; }
  done

  b_none=$(inter "$d/ta_none.json"); b_mid=$(inter "$d/ta_0.3.json"); b_zero=$(inter "$d/ta_0.json")
  echo "$mode: intra/inter bytes without cap $b_none, cap 0.3 $b_mid, cap 0 $b_zero"
  python3 -c "import json,sys; n,m,z=map(json.loads,sys.argv[1:4]); sys.exit(0 if z[1]==0 and n[1]>0 and m[1]<n[1] else 1)" \
    "$b_none" "$b_mid" "$b_zero" || fail "$mode: the node cap does not cut inter-node bytes as it should"
  quick || { # (a repetition: the normal pass)
    run -np 4 "$E" run --model "$m" --input "$d/in.json" --virtual-nodes 2 --max-new-tokens 3 --mode $mode \
      --ta-node-cap 0.3 --json --report >"$d/ta_again.json" 2>"$d/err"
    [ "$(inter "$d/ta_again.json")" = "$b_mid" ] || fail "$mode: --ta-node-cap is not deterministic"
  }
done

# refused with the reason (one process without mpirun: its abort handling costs 2 s a refusal)
check_err() { # what, expected text, args...
  local what=$1 want=$2; shift 2
  if timeout 120 "$E" run --model "$m" --input "$d/in.json" "$@" >"$d/out" 2>"$d/err"; then
    fail "$what: exited 0"
  else
    grep -q -- "$want" "$d/err" || { fail "$what: '$want' not in the error"; head -3 "$d/err"; }
  fi
}
check_err "attention on layer 0" "layer 0 has no earlier attention" --mod attention --mod-capacity 0.5 --mod-layers 0-2
check_err "layer past the model" "not within the model's layers" --mod schedule --mod-capacity 0.5 --mod-layers 1-9
check_err "router without tensors" "mod_router.weight" --mod router --mod-capacity 0.5
check_err "bad source" "--mod must be" --mod sometimes
check_err "capacity 0" "mod-capacity" --mod schedule --mod-capacity 0
check_err "node cap above 1" "ta-node-cap" --ta-node-cap 1.5

checks_done "all MoD checks passed" "$fails failure(s)"
