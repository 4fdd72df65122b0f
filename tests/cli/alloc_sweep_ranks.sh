#!/usr/bin/env bash
# By hand, not in a suite (about 2 s per allocation point: 25 minutes at 2
# ranks): fails the n-th allocation of epm_run on one rank of a multi-rank
# `epmoe run` (launch/cmd_run.c's EPM_TEST_FAIL_ALLOC_RANK/NTH hook), for
# n = 1, 2, ... until a run never reaches it, and classifies each:
#   CLEAN    every rank stopped, non-zero, the message names the rank
#   TIMEOUT  it ended only through --timeout (a rank left a collective early)
#   HANG     still running 8 s after the start (killed): no deadline applied
#   CRASH    a process died of a signal
#   ABSORBED the run succeeded although the allocation failed
#   OTHER    anything else
#   usage: EPMOE=build/launch/epmoe EPM_FIXTURES=tests/fixtures \
#          bash tests/cli/alloc_sweep_ranks.sh [RANKS [FAILING_RANK [FIRST_N]]] > sweep.txt
# EPM_SWEEP_ARGS adds run flags, e.g. "--virtual-nodes 2 --hier on" for the
# hierarchical exchange.
# One line per n: n, exit status, seconds, class, number of messages, first message.
# The stack of one point: run that rank under gdb with
#   mpirun -np 1 epmoe run ... : -np 1 -x EPM_TEST_FAIL_ALLOC_RANK=1 -x EPM_TEST_FAIL_ALLOC_NTH=N \
#     gdb -batch -ex 'break epm_fail if s == EPM_ERR_NOMEM' -ex run -ex bt --args epmoe run ...
tmp_template=/tmp/epm-sweep.XXXXXX
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
R=${1:-2}
FR=${2:-$((R - 1))}
n=${3:-1}
export ASAN_OPTIONS=$no_leaks
# at exit (lib.sh), before $d goes: a run the sweep left running
cleanup() { for p in $(pgrep -f -- "$d/"); do kill -9 "$p"; done 2>/dev/null; }
echo '[[1, 2, 3, 4, 5], [9, 8, 7]]' >"$d/in.json"
for (( ; ; n++)); do
  s=$(date +%s%N)
  EPM_TEST_FAIL_ALLOC_RANK=$FR EPM_TEST_FAIL_ALLOC_NTH=$n mpirun --oversubscribe -np "$R" "$E" run \
    --model "$F/mixtral-tiny" --input "$d/in.json" --max-new-tokens 3 --timeout 3 ${EPM_SWEEP_ARGS:-} >"$d/out" 2>"$d/err" &
  mp=$!
  for _ in $(seq 80); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
  hung=0
  if kill -0 "$mp" 2>/dev/null; then
    hung=1
    kill -TERM "$mp"
    sleep 1
    for p in $(pgrep -f -- "$d/"); do kill -9 "$p"; done 2>/dev/null
  fi
  wait "$mp" 2>/dev/null
  rc=$?
  t=$((($(date +%s%N) - s) / 1000000))
  msg=$(grep -m1 'epmoe run: error' "$d/err")
  if [ $hung = 1 ]; then c=HANG
  elif grep -q 'exited on signal' "$d/err"; then c=CRASH
  elif [ $rc = 0 ] && grep -q 'sequence 0' "$d/out"; then
    # absorbed, or past the last allocation point (the hook cannot tell):
    # 30 successes in a row end the sweep
    c=ABSORBED
  elif grep -q 'waited 3 s' "$d/err"; then c=TIMEOUT
  elif grep -q "rank $FR" <<<"$msg"; then c=CLEAN
  else c=OTHER
  fi
  if [ "$c" = ABSORBED ]; then streak=$((${streak:-0} + 1)); else streak=0; fi
  printf '%s %s %d.%03d %s %s | %s\n' "$n" "$rc" $((t / 1000)) $((t % 1000)) "$c" \
    "$(grep -c 'epmoe run: error' "$d/err")" "$msg"
  [ "$streak" -ge 30 ] && break
done
echo "# the last 30 runs succeeded: allocation points 1 to $((n - 30)) on rank $FR of $R"
