#!/usr/bin/env bash
# Nothing half-written: a command writing over an existing output is killed
# with SIGKILL at several points (before its write, then 0, 3, 10, 30, 100, ... ms
# after its temporary file appears, until it finishes first); every time the
# output must be the old complete file or the new complete one, and what is
# left beside it must be the killed writer's own "<output>.tmp.<pid>" and
# nothing else. Then: an output that names an input (same path, another
# spelling, a symbolic or a hard link) is refused with exit status 2 and a
# message, and the input is left as it was.
tmp_template=/tmp/epm-atomic.XXXXXX
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
export ASAN_OPTIONS=$no_leaks
ms_sleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; } # 2560 -> 2.560 (was 0.2560)
# same content; with NORM=json the plan's own timing is left out
same() {
  if [ "${NORM:-}" = json ]; then
    cmp -s <(sed 's/"solve_seconds": [0-9.e+-]*//' "$1") <(sed 's/"solve_seconds": [0-9.e+-]*//' "$2")
  else
    cmp -s "$1" "$2"
  fi
}

# kill_during_write LABEL OUT OLD NEW CMD...: OUT starts as a copy of OLD;
# CMD, run to the end, writes NEW (byte for byte: the commands are seeded)
kill_during_write() {
  local label=$1 out=$2 old=$3 new=$4
  shift 4
  # (the last steps only where a loaded machine makes the 50 MB write outlast 1 s: until this
  # stop, ms_sleep turned 1000 and more into 0.1-0.256 s, so a write past 0.3 s failed here)
  local dir base delays=(pre 0 3 10 30 100 300 1000 2560 10000)
  dir=$(dirname "$out")
  base=$(basename "$out")
  local kills=0 mid=0 olds=0 news=0 left=0 done_first=0 nsize p dl tsize f
  nsize=$(stat -c %s "$new")
  for dl in "${delays[@]}"; do
    cp "$old" "$out"
    "$@" >/dev/null 2>&1 &
    p=$!
    if [ "$dl" = pre ]; then
      ms_sleep 20 # still starting up: reading, computing
    else
      # the temporary file appears when the write begins
      while kill -0 "$p" 2>/dev/null && [ ! -e "$out.tmp.$p" ]; do :; done
      [ "$dl" = 0 ] || ms_sleep "$dl"
    fi
    tsize=$(stat -c %s "$out.tmp.$p" 2>/dev/null || echo -)
    if kill -9 "$p" 2>/dev/null; then
      kills=$((kills + 1))
      [ "$tsize" != - ] && [ "$tsize" -lt "$nsize" ] && mid=$((mid + 1))
    else
      done_first=1 # it finished before the kill
    fi
    wait "$p" 2>/dev/null
    if same "$out" "$old"; then
      olds=$((olds + 1))
    elif same "$out" "$new"; then
      news=$((news + 1))
    else
      fail "$label: killed ${dl} ms into the write: $out is neither the old file nor the new one ($(stat -c %s "$out") bytes)"
    fi
    for f in "$dir/$base".*; do
      [ -e "$f" ] || continue
      if [ "$f" = "$out.tmp.$p" ]; then
        left=$((left + 1))
        rm -f "$f"
      else
        fail "$label: unexpected file beside the output: $f"
        rm -f "$f"
      fi
    done
    [ "$done_first" = 1 ] && break
  done
  echo "  $label: $kills kills ($mid in the middle of the write): $olds old, $news new," \
    "$left temporary files left (named $base.tmp.<pid>)"
  [ "$done_first" = 1 ] || fail "$label: still writing $((${delays[-1]})) ms after its write began"
  [ "$mid" -ge "${MIN_MID:-1}" ] || fail "$label: no kill landed in the middle of the write"
}

# 1. safetensors (50 MB) over a smaller old trace
"$E" trace synth --out "$d/new.st" --layers 16 --experts 64 --k 4 --tokens 200000 --seed 1 >/dev/null 2>&1 ||
  fail "trace synth"
"$E" trace synth --out "$d/old.st" --layers 16 --experts 64 --k 4 --tokens 150000 --seed 2 >/dev/null 2>&1
kill_during_write "trace synth (safetensors)" "$d/out.st" "$d/old.st" "$d/new.st" \
  "$E" trace synth --out "$d/out.st" --layers 16 --experts 64 --k 4 --tokens 200000 --seed 1
# 2. .npy over an old one
"$E" trace convert "$d/new.st" "$d/new.npy" >/dev/null 2>&1 || fail "trace convert"
"$E" trace synth --out "$d/old.npy" --layers 16 --experts 64 --k 4 --tokens 150000 --seed 2 >/dev/null 2>&1
kill_during_write "trace convert (.npy)" "$d/out.npy" "$d/old.npy" "$d/new.npy" \
  "$E" trace convert "$d/new.st" "$d/out.npy"
# 3. placement JSON (small: the kills land before or during its short write)
"$E" plan --trace "$d/new.st" --method greedy --nodes 2 --gpus-per-node 4 --out "$d/new.json" --quiet >/dev/null
"$E" plan --trace "$d/new.st" --method contiguous --nodes 2 --gpus-per-node 4 --out "$d/old.json" --quiet >/dev/null
NORM=json MIN_MID=0 kill_during_write "plan --out (JSON)" "$d/out.json" "$d/old.json" "$d/new.json" \
  "$E" plan --trace "$d/new.st" --method greedy --nodes 2 --gpus-per-node 4 --out "$d/out.json" --quiet

# a model folder rewritten by model synth: every file stays old or new, and
# the folder mixes them only if the kill lands among the final renames (the
# files are written into a staging directory first)
synth=(model synth --hidden 256 --ffn 512 --layers 4 --experts 8 --shards 4 --out)
"$E" "${synth[@]}" "$d/mnew" --seed 1 >/dev/null 2>&1 || fail "model synth"
"$E" "${synth[@]}" "$d/mold" --seed 2 >/dev/null 2>&1
mixed=0
for dl in 10 30 60 100 200 400 800; do
  rm -rf "$d/m" && cp -r "$d/mold" "$d/m"
  "$E" "${synth[@]}" "$d/m" --seed 1 >/dev/null 2>&1 &
  p=$!
  ms_sleep "$dl"
  kill -9 "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  o=0 n=0
  for f in "$d/mnew"/*; do
    b=$(basename "$f")
    cmp -s "$d/mold/$b" "$f" && continue # the same in both (config.json): says nothing
    if cmp -s "$d/m/$b" "$d/mold/$b"; then
      o=$((o + 1))
    elif cmp -s "$d/m/$b" "$f"; then
      n=$((n + 1))
    else
      fail "model synth killed after $dl ms: $b is neither old nor new"
    fi
  done
  for f in "$d/m"/*; do
    case $(basename "$f") in
    *.tmp.$p) rm -f "$f" ;;
    config.json | model.safetensors.index.json | model-0000?-of-00004.safetensors) ;;
    *) fail "model synth killed after $dl ms: unexpected file $(basename "$f")" ;;
    esac
  done
  [ "$o" != 0 ] && [ "$n" != 0 ] && mixed=$((mixed + 1))
done
echo "  model synth over a model: 7 kills, every file old or new; $mixed times the folder mixed old and new files"

# an output naming an input is refused, the input intact
sum() { cksum <"$1"; }
refused() { # label, file that must stay intact, command...
  local label=$1 keep=$2 before
  shift 2
  before=$(sum "$keep")
  "$@" >"$d/o" 2>"$d/e"
  local rc=$?
  [ "$rc" = 2 ] || fail "$label: exit $rc, expected 2 (refused)"
  grep -qiE 'input|same|overwrite' "$d/e" || { fail "$label: no clear message:"; head -3 "$d/e"; }
  [ "$(sum "$keep")" = "$before" ] || fail "$label: $keep was changed"
}
cp "$d/new.st" "$d/in.st"
ln -s "$d/in.st" "$d/sym.st"
ln "$d/in.st" "$d/hard.st"
mkdir -p "$d/sub"
refused "trace convert IN IN" "$d/in.st" "$E" trace convert "$d/in.st" "$d/in.st"
refused "trace convert, another spelling" "$d/in.st" "$E" trace convert "$d/in.st" "$d/sub/../in.st"
refused "trace convert, symbolic link" "$d/in.st" "$E" trace convert "$d/in.st" "$d/sym.st"
refused "trace convert, hard link" "$d/in.st" "$E" trace convert "$d/in.st" "$d/hard.st"
refused "trace split --first IN" "$d/in.st" "$E" trace split "$d/in.st" --first "$d/in.st" --second "$d/b.st"
refused "trace split --second IN" "$d/in.st" "$E" trace split "$d/in.st" --first "$d/a.st" --second "$d/hard.st"
refused "plan --out TRACE" "$d/in.st" "$E" plan --trace "$d/in.st" --out "$d/in.st" --quiet
refused "plan --eplb-out TRACE" "$d/in.st" "$E" plan --trace "$d/in.st" --eplb-out "$d/sym.st" --quiet
echo '{"nodes": 1, "gpus_per_node": 2}' >"$d/cluster.json"
refused "plan --out CLUSTER" "$d/cluster.json" "$E" plan --trace "$d/in.st" --cluster "$d/cluster.json" \
  --out "$d/cluster.json" --quiet
m=$d/model
cp -r "$F/mixtral-tiny" "$m"
echo '[[1, 2, 3]]' >"$d/in.json"
"$E" plan --trace "$d/in.st" --nodes 1 --gpus-per-node 1 --out "$d/p1.json" --quiet >/dev/null 2>&1
refused "run --trace-out INPUT" "$d/in.json" "$E" run --model "$m" --input "$d/in.json" --trace-out "$d/in.json"
refused "run --logits-out PLACEMENT" "$d/p1.json" "$E" run --model "$m" --input "$d/in.json" \
  --placement "$d/p1.json" --logits-out "$d/p1.json"
refused "run --trace-out ROUTE-FROM-TRACE" "$d/in.st" "$E" run --model "$m" --input "$d/in.json" \
  --route-from-trace "$d/in.st" --trace-out "$d/hard.st"
# the checkpoint is an input too
refused "run --logits-out MODEL/model.safetensors" "$m/model.safetensors" "$E" run --model "$m" \
  --input "$d/in.json" --logits-out "$m/model.safetensors"
cp "$F/mixtral-tiny/model.safetensors" "$m/"
refused "run --trace-out MODEL/config.json" "$m/config.json" "$E" run --model "$m" --input "$d/in.json" \
  --trace-out "$m/config.json"

# a killed writer's temporary file is removed by the next write of that
# output (its process is gone); a live process's, or another output's, stays
sleep 30 & live=$!
dead=$(sh -c 'echo $$')
echo x >"$d/t.st.tmp.$dead"
echo y >"$d/t.st.tmp.$live"
echo z >"$d/u.st.tmp.$dead"
"$E" trace synth --out "$d/t.st" --layers 1 --experts 4 --k 1 --tokens 8 >/dev/null 2>&1 || fail "trace synth t.st"
[ -e "$d/t.st.tmp.$dead" ] && fail "a dead writer's t.st.tmp.$dead was not cleaned up"
[ -e "$d/t.st.tmp.$live" ] || fail "a live process's t.st.tmp.$live was removed"
[ -e "$d/u.st.tmp.$dead" ] || fail "another output's temporary file was removed"
kill "$live" 2>/dev/null

checks_done "all atomic-output checks passed"
