#!/usr/bin/env bash
# Failing ranks under mpirun, at 2 and 4 ranks (and 8 with EPM_LONG_TESTS=1; the
# sanitizer pass of CI, EPM_TEST_QUICK=1, at 3 only):
#   kill-prefill  a rank killed with SIGKILL in the middle of prefill
#   kill-decode   a rank killed with SIGKILL in the middle of a decode step
#   shard         a rank that cannot open a shard of the checkpoint
#   alloc-first   the first allocation of the run fails on one rank
#   alloc-layer   an allocation inside the layer loop fails on one rank
#   stall         a rank that stalls past --timeout
# Each must end every rank within 30 s of the fault, with a non-zero exit,
# one message naming the failing rank and the cause, and no process left.
# Prints the seconds from the fault to the last process gone, as a table.
#
# How the faults are made:
# - SIGKILL: the stall hook of dist/runtime.c (EPM_TEST_STALL_RANK/SECONDS)
#   sleeps at layer 1 of every forward pass, prefill's and each decode
#   step's. The test watches that rank's main thread: asleep in
#   (clock_)nanosleep with no context switch for 0.3 s is the hook. The first
#   such sleep is prefill; one after the rank woke up again (its context
#   switch count moved) is a decode step. It is killed there.
# - shard: a real deployment fault, without hooks: every node has its own
#   copy of the checkpoint, and one node's copy lacks a shard. mpirun's MPMD
#   form gives the last rank such a copy (the same files, one shard gone).
# - alloc: EPM_TEST_FAIL_ALLOC_RANK/NTH (launch/cmd_run.c) fail the n-th
#   allocation of epm_run on that rank (dist/alloc.c's injector).
tmp_template=/tmp/epm-failures.XXXXXX
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
export OMPI_MCA_rmaps_base_oversubscribe=1 ASAN_OPTIONS=$no_leaks
require mpirun
# every process of this test has "$d/" in its command line
mine() { pgrep -f -- "$d/"; }
# at exit (lib.sh), before $d goes: whatever a failed case left running
cleanup() {
  local p
  for p in $(mine); do kill -9 "$p" 2>/dev/null; done
}

t_script=$SECONDS
RANKS="2 4"
[ "${EPM_LONG_TESTS:-0}" = 1 ] && RANKS="2 4 8"
[ "${EPM_TEST_QUICK:-0}" = 1 ] && RANKS="3"
RANKS=${EPM_FAILURE_RANKS:-$RANKS} # e.g. "8": only those
LIMIT=30 # seconds from the fault to the last process gone
m=$F/mixtral-tiny
# eight short prompts: every rank is home to a sequence at 8 ranks
echo '[[1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17], [18, 19, 20], [21, 22]]' >"$d/in.json"
# a sharded copy of a tiny model, and a copy of it that lacks the last shard
"$E" model synth --out "$d/syn" --layers 4 --experts 8 --k 2 --hidden 64 --ffn 128 --shards 4 >/dev/null ||
  fail "model synth"
mkdir -p "$d/broken"
for f in "$d"/syn/*; do
  case $f in *00004-of-00004*) ;; *) ln -s "$f" "$d/broken/" ;; esac
done

now() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); } # milliseconds
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# pid of the epmoe process of MPI rank $1, or nothing
rank_pid() {
  local p
  for p in $(mine); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
      return
    fi
  done
}
case $(uname -m) in
x86_64) SLEEPS=" 35 230 " ;;   # nanosleep, clock_nanosleep
aarch64) SLEEPS=" 101 115 " ;;
*) SLEEPS="" ;;                # any sleep: the context switch count alone decides
esac
# prints the voluntary context switch count of $1's main thread when it is
# asleep in the stall hook (in nanosleep, no switch for 0.3 s); else nothing
in_stall() {
  local p=$1 s1 s2 v1 v2
  read -r s1 _ <"/proc/$p/task/$p/syscall" 2>/dev/null || return
  v1=$(awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$p/task/$p/status" 2>/dev/null)
  sleep 0.3
  read -r s2 _ <"/proc/$p/task/$p/syscall" 2>/dev/null || return
  v2=$(awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$p/task/$p/status" 2>/dev/null)
  [ -n "$v1" ] && [ "$v1" = "$v2" ] && [ "$s1" = "$s2" ] || return
  [ -z "$SLEEPS" ] || [[ $SLEEPS == *" $s1 "* ]] || return
  echo "$v1"
}

# start a job in the background: mpirun args...
start() {
  mpirun --oversubscribe "$@" >"$d/out" 2>"$d/err" &
  mp=$!
  t_start=$(now)
  t_fault=$t_start
}
# wait for the job to end; returns its exit status in rc and the time from
# the fault to the last process gone in took (ms); kills it after LIMIT
finish() {
  local what=$1 p
  rc=
  while kill -0 "$mp" 2>/dev/null; do
    if [ $(($(now) - t_fault)) -gt $((LIMIT * 1000)) ]; then
      fail "$what: still running ${LIMIT} s after the fault"
      kill -TERM "$mp" 2>/dev/null
      sleep 2
      for p in $(mine); do kill -9 "$p" 2>/dev/null; done
      break
    fi
    sleep 0.05
  done
  wait "$mp"
  rc=$?
  # mpirun is gone: so must every rank be, at once
  local t_end
  t_end=$(now)
  while [ -n "$(mine)" ] && [ $(($(now) - t_end)) -lt 2000 ]; do sleep 0.05; done
  took=$(($(now) - t_fault))
  if [ -n "$(mine)" ]; then
    fail "$what: processes left behind: $(mine | tr '\n' ' ')"
    for p in $(mine); do kill -9 "$p" 2>/dev/null; done
  fi
  [ "$rc" != 0 ] || fail "$what: exit status 0"
  [ "$took" -le $((LIMIT * 1000)) ] || fail "$what: $(secs "$took") s from the fault to a clean stop"
}
# Open MPI 4.1's mpirun now and then segfaults in its own teardown of a
# failed job (PMIx, libevent, its show_help; see test_run.sh), sometimes
# before it prints its "exited on signal" line. True when mpirun itself (its
# pid, $mp) reported a signal with exit 139.
launcher_crashed() {
  [ "$rc" = 139 ] && grep -q ":$mp\] \*\*\* Process received signal \*\*\*" "$d/err"
}
# exactly one message about the failure: it names rank $2 and matches $3
# (none is accepted only when mpirun crashed before it could print its own)
one_message() {
  local what=$1 fr=$2 cause=$3 msgs n
  msgs=$(grep -E '^epmoe run: error|exited on signal' "$d/err")
  n=$(printf '%s' "$msgs" | grep -c .)
  if [ "$n" = 0 ] && launcher_crashed; then
    echo "  note: $what: mpirun crashed in its own teardown (Open MPI bug) before any message"
    return
  fi
  if [ "$n" != 1 ]; then
    fail "$what: $n messages about the failure, expected 1:"
    printf '%s\n' "$msgs" | head -8 | sed 's/^/    /'
  fi
  grep -qE "rank $fr([^0-9]|$)" <<<"$msgs" || fail "$what: no message names rank $fr"
  grep -qE -- "$cause" <<<"$msgs" || fail "$what: no message gives the cause ($cause)"
}

declare -A T
record() { T[$1,$2]=$(secs "$took"); echo "  $1 at $2 ranks: exit $rc, $(secs "$took") s from the fault to a clean stop"; }

run_args=(run --model "$m" --input "$d/in.json")
for R in $RANKS; do
  last=$((R - 1))

  # (a) SIGKILL in prefill: rank 1, asleep at layer 1 of the prefill forward
  start -np "$R" -x EPM_TEST_STALL_RANK=1 -x EPM_TEST_STALL_SECONDS=20 "$E" "${run_args[@]}" \
    --max-new-tokens 2 --timeout 25
  killed=0
  while [ $(($(now) - t_start)) -lt 20000 ] && kill -0 "$mp" 2>/dev/null; do
    p=$(rank_pid 1)
    if [ -n "$p" ] && [ -n "$(in_stall "$p")" ]; then
      kill -9 "$p" && killed=1 && t_fault=$(now)
      break
    fi
    sleep 0.1
  done
  [ "$killed" = 1 ] || fail "kill-prefill at $R ranks: rank 1 never reached prefill"
  finish "kill-prefill at $R ranks"
  one_message "kill-prefill at $R ranks" 1 "signal 9"
  record kill-prefill "$R"

  # (b) SIGKILL in decode: every forward pass stalls 2 s; the second stall
  # (the rank ran in between) is the first decode step
  start -np "$R" -x EPM_TEST_STALL_RANK="$last" -x EPM_TEST_STALL_SECONDS=2 "$E" "${run_args[@]}" \
    --max-new-tokens 4 --timeout 25
  killed=0 first= t_first=
  while [ $(($(now) - t_start)) -lt 20000 ] && kill -0 "$mp" 2>/dev/null; do
    p=$(rank_pid "$last")
    v=
    [ -n "$p" ] && v=$(in_stall "$p")
    if [ -n "$v" ] && [ -z "$first" ]; then
      first=$v t_first=$(now) # prefill's stall
    elif [ -n "$v" ] && { [ "$v" != "$first" ] || [ $(($(now) - t_first)) -gt 2500 ]; }; then
      kill -9 "$p" && killed=1 && t_fault=$(now)
      break
    fi
    sleep 0.05
  done
  if [ "$killed" = 1 ]; then
    echo "  kill-decode at $R ranks: rank $last killed asleep in a decode step," \
      "$(secs $((t_fault - t_first))) s after its prefill stall was seen"
  else
    fail "kill-decode at $R ranks: rank $last never reached a decode step"
  fi
  finish "kill-decode at $R ranks"
  one_message "kill-decode at $R ranks" "$last" "signal 9"
  record kill-decode "$R"

  # (c) the last rank's copy of the checkpoint lacks a shard
  start -np "$last" "$E" run --model "$d/syn" --input "$d/in.json" --max-new-tokens 2 --timeout 25 : \
    -np 1 "$E" run --model "$d/broken" --input "$d/in.json" --max-new-tokens 2 --timeout 25
  finish "shard at $R ranks"
  one_message "shard at $R ranks" "$last" "model-00004-of-00004.safetensors.*(missing|No such file)"
  record shard "$R"

  # (d) out of memory on the last rank: its first allocation in epm_run
  # (before any collective), then one in the middle of the layer loop
  for nth in 1 250; do
    what=alloc-first
    [ "$nth" = 1 ] || what=alloc-layer
    start -np "$R" -x EPM_TEST_FAIL_ALLOC_RANK="$last" -x EPM_TEST_FAIL_ALLOC_NTH="$nth" "$E" "${run_args[@]}" \
      --max-new-tokens 2 --timeout 25
    finish "$what (allocation $nth) at $R ranks"
    one_message "$what (allocation $nth) at $R ranks" "$last" "out of memory|allocation of"
    record "$what" "$R"
  done

  # (e) the last rank stalls for a minute; the others give up at --timeout 3
  start -np "$R" -x EPM_TEST_STALL_RANK="$last" -x EPM_TEST_STALL_SECONDS=60 "$E" "${run_args[@]}" \
    --max-new-tokens 2 --timeout 3
  finish "stall at $R ranks"
  one_message "stall at $R ranks" "$last" "--timeout|stall"
  record stall "$R"
done

echo
echo "seconds from the fault to the last process gone ($(nproc) cores):"
printf '| scenario |'
for R in $RANKS; do printf ' %s ranks |' "$R"; done
printf '\n| --- |'
for R in $RANKS; do printf ' --- |'; done
echo
for s in kill-prefill kill-decode shard alloc-first alloc-layer stall; do
  printf '| %s |' "$s"
  for R in $RANKS; do printf ' %s |' "${T[$s,$R]:-}"; done
  echo
done
echo "whole script: $((SECONDS - t_script)) s"
checks_done "all failure checks passed"
