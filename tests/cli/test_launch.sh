#!/usr/bin/env bash
# epmoe launch: the mpirun line it builds, and every mismatch refused before
# launch with its own message. With the argument 'multinode' (suite
# multinode), real runs across pseudo-nodes through tests/multinode/harness.sh.
. "$(dirname "$0")/lib.sh" || exit 1
check() { # description, expected exit code, command...
  local what=$1 want=$2; shift 2
  "$@" >"$d/out" 2>"$d/err"
  local got=$?
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$d/out" "$d/err"; fails=$((fails + 1))
  fi
}
has() { # file, text
  grep -qF -- "$2" "$1" || { echo "FAIL: '$2' not in $1:"; cat "$1"; fails=$((fails + 1)); }
}
hasnt() {
  ! grep -qF -- "$2" "$1" || { echo "FAIL: '$2' in $1:"; cat "$1"; fails=$((fails + 1)); }
}

if [ "${1:-}" = multinode ]; then
  H=${EPM_HARNESS:?} P=${EPM_MPI_NODES:?}
  "$H" -n 1 -- true 2>"$d/err"
  [ $? = 77 ] && { cat "$d/err"; exit 77; }
  # 2 nodes x 2 ranks, --hosts, interface and agent from the harness.
  # shellcheck disable=SC2016
  check "2x2 run" 0 "$H" -n 2 -t 40 -- sh -c '"$0" launch --hosts node1:2,node2:2 --gpus-per-node 2 \
    --iface "$EPM_MN_IFACE" --agent "$EPM_MN_AGENT" --report-bindings -- "$1"' "$E" "$P"
  for l in "rank 0 of 4 host node1 shmnode 0" "rank 1 of 4 host node1 shmnode 0" \
           "rank 2 of 4 host node2 shmnode 1" "rank 3 of 4 host node2 shmnode 1" "nodes 2 ranks 4" \
           "binding: rank 0 node node1 local 0/2 gpu -" "binding: rank 3 node node2 local 1/2 gpu -"; do
    has "$d/out" "$l"
  done
  # 3 nodes x 1 rank from a hostfile; the printed (--dry-run) line is what runs.
  # shellcheck disable=SC2016
  check "3x1 dry-run line" 0 "$H" -n 3 -t 40 -- sh -c 'printf "node1 slots=1\nnode2 slots=1 # x\nnode3 slots=1\n" \
    >"$EPM_MN_DIR/hosts.txt" && line=$("$0" launch --hostfile "$EPM_MN_DIR/hosts.txt" --gpus-per-node 1 \
    --iface 192.0.2.0/24 --agent "$EPM_MN_AGENT" --dry-run -- "$1") && echo "LINE $line" && eval "$line"' "$E" "$P"
  has "$d/out" "--map-by ppr:1:node --bind-to none --mca btl_tcp_if_include 192.0.2.0/24"
  has "$d/out" "rank 2 of 3 host node3 shmnode 2"
  has "$d/out" "nodes 3 ranks 3"
  # A host the nodes do not have: refused before launch (it does not resolve there).
  # shellcheck disable=SC2016
  check "unknown host" 1 "$H" -n 2 -t 40 -- sh -c '"$0" launch --hosts node1:2,node9:2 --gpus-per-node 2 \
    --agent "$EPM_MN_AGENT" -- "$1"' "$E" "$P"
  has "$d/err" "host node9 (--hosts entry 2) does not resolve"
  # epmoe run on the fixtures across real nodes: the reference logits, in both
  # modes, with a placement that launch checks and passes on.
  F=${EPM_FIXTURES:?} C=$(dirname "$H")/compare_logits.py
  "$E" trace synth --out "$d/t.st" --layers 4 --experts 8 --k 2 --tokens 512 >/dev/null 2>&1 &&
    "$E" plan --trace "$d/t.st" --method greedy --nodes 2 --gpus-per-node 2 --out "$d/p4.json" --quiet \
      >/dev/null 2>&1 || { echo "FAIL: could not make a placement"; fails=$((fails + 1)); }
  for mode in home follow; do
    # follow over a rate-limited link between the nodes (tc tbf)
    rate=""; [ $mode = follow ] && rate="-r 1gbit"
    # shellcheck disable=SC2016,SC2086
    check "run 2x2 $mode" 0 "$H" -n 2 $rate -t 60 -- sh -c '"$0" launch --hosts node1:2,node2:2 --gpus-per-node 2 \
      --iface eth0 --agent "$EPM_MN_AGENT" --placement "$3" -- run --model "$1" --input "$1/reference.safetensors" \
      --all-logits --logits-out "$EPM_MN_DIR/l.st" --mode "$4" --report &&
      python3 "$2" "$EPM_MN_DIR/l.st" "$1/reference.safetensors" 1e-4' "$E" "$F/mixtral-tiny" "$C" "$d/p4.json" $mode
    has "$d/err" "--placement $d/p4.json"
    has "$d/err" "ranks 4 (2 nodes)"
    has "$d/out" "logits [2, 16, 256]: max abs diff"
  done
  # shellcheck disable=SC2016
  check "run 3x1" 0 "$H" -n 3 -t 60 -- sh -c '"$0" launch --hosts node1:1,node2:1,node3:1 --gpus-per-node 1 \
    --iface eth0 --agent "$EPM_MN_AGENT" -- run --model "$1" --input "$1/reference.safetensors" --all-logits \
    --logits-out "$EPM_MN_DIR/l.st" --mode follow && python3 "$2" "$EPM_MN_DIR/l.st" "$1/reference.safetensors" 1e-4' \
    "$E" "$F/qwen2moe-tiny" "$C"
  has "$d/out" "logits [2, 16, 256]: max abs diff"
  # 3 nodes x 2 ranks, home mode, with the hierarchical path forced on
  # shellcheck disable=SC2016
  check "run 3x2" 0 "$H" -n 3 -t 60 -- sh -c '"$0" launch --hosts node1:2,node2:2,node3:2 --gpus-per-node 2 \
    --iface eth0 --agent "$EPM_MN_AGENT" -- run --model "$1" --input "$1/reference.safetensors" --all-logits \
    --logits-out "$EPM_MN_DIR/l.st" --hier on --report && python3 "$2" "$EPM_MN_DIR/l.st" "$1/reference.safetensors" 1e-4' \
    "$E" "$F/olmoe-tiny" "$C"
  has "$d/out" "logits [2, 16, 256]: max abs diff"
  has "$d/err" "ranks 6 (3 nodes)"
  has "$d/err" "hierarchical"
  # flat vs hierarchical between real nodes (2 x 3 ranks): the same counted
  # bytes, fewer inter-node bytes and messages on the wire when hierarchical
  for hier in off on; do
    # shellcheck disable=SC2016
    check "run 2x3 --hier $hier" 0 "$H" -n 2 -t 60 -- sh -c '"$0" launch --hosts node1:3,node2:3 --gpus-per-node 3 \
      --iface eth0 --agent "$EPM_MN_AGENT" -- run --model "$1" --input "$1/reference.safetensors" --max-new-tokens 2 \
      --hier "$2" --json --report' "$E" "$F/olmoe-tiny" $hier
    cp "$d/out" "$d/hier_$hier.json"
  done
  python3 - "$d/hier_off.json" "$d/hier_on.json" <<'EOF' || { echo "FAIL: hierarchical inter-node bytes"; fails=$((fails + 1)); }
import json, sys
off, on = (json.load(open(p))['report'] for p in sys.argv[1:3])
counted = lambda r: [sum(l['bytes'][c] for l in r['layers']) for c in (1, 2)]
print('flat: wire inter', off['wire_bytes'][2], 'in', off['wire_msgs'][2], 'messages; hierarchical:',
      on['wire_bytes'][2], 'in', on['wire_msgs'][2], 'messages; counted', counted(off))
ok = (not off['hierarchical'] and on['hierarchical'] and counted(off) == counted(on)
      and 0 < on['wire_bytes'][2] < off['wire_bytes'][2] and on['wire_msgs'][2] < off['wire_msgs'][2])
sys.exit(0 if ok else 1)
EOF
  # ranks numbered round-robin over the nodes (mpirun --map-by node): the
  # node MPI finds is not the node the placement's numbering assumes
  # shellcheck disable=SC2016
  check "ranks mapped by node" 1 "$H" -n 2 -t 60 -- sh -c 'mpirun --host node1:2,node2:2 -np 4 --map-by node \
    --mca plm_rsh_agent "$EPM_MN_AGENT" --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
    "$0" run --model "$1" --input "$1/reference.safetensors"' "$E" "$F/olmoe-tiny"
  has "$d/err" "by MPI's shared-memory split"
  checks_done "multinode launch: all checks passed"
fi

# ---- the mpirun line ----
printf '# test cluster\nlocalhost slots=2 max_slots=4\n\n127.0.0.1 slots=2 # same machine, other name\n' >"$d/hosts.txt"
check "help" 0 "$E" launch --help
has "$d/out" "--hostfile FILE"
check "dry-run hostfile" 0 "$E" launch --hostfile "$d/hosts.txt" --gpus-per-node 2 --iface eth0 --dry-run \
  --gpu-map 1,0 --report-bindings --env 'GREETING=a b' --mca btl=tcp,self -- run --model /m --input /i
has "$d/out" "mpirun --hostfile $d/hosts.txt -np 4 --map-by ppr:2:node --bind-to none"
has "$d/out" "--mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0"
has "$d/out" "--mca btl tcp,self"
has "$d/out" "-x CUDA_DEVICE_ORDER=PCI_BUS_ID -x NCCL_SOCKET_IFNAME=eth0 -x EPM_GPU_MAP=1,0 -x EPM_REPORT_BINDINGS=1"
has "$d/out" "-x 'GREETING=a b'"
has "$d/out" "/epmoe run --model /m --input /i"
# The printed line is one shell-quoted command whose words are the ones exec'd.
eval "set -- $(cat "$d/out")"
[ "$1" = mpirun ] && [ "$(for a; do [ "$a" = "GREETING=a b" ] && echo y; done)" = y ] ||
  { echo "FAIL: dry-run line does not re-parse into its words: $*"; fails=$((fails + 1)); }
check "dry-run hosts, CIDR iface" 0 "$E" launch --hosts nodeA:4,bob@nodeB:4 --gpus-per-node 4 --no-resolve \
  --iface 10.0.0.0/8 --agent /bin/true --dry-run -- bench a2a
has "$d/out" "--host nodeA:4,bob@nodeB:4 -np 8 --map-by ppr:4:node"
has "$d/out" "--mca plm_rsh_agent /usr/bin/true"
hasnt "$d/out" "NCCL_SOCKET_IFNAME"
has "$d/out" "/epmoe bench a2a"
# the CPU kernels' settings reach every node
check "dry-run, EPM_CPU_ISA" 0 env EPM_CPU_ISA=avx2 "$E" launch --hosts nodeA:1 --gpus-per-node 1 --no-resolve \
  --agent /bin/true --dry-run -- run
has "$d/out" "-x EPM_CPU_ISA=avx2"
check "program, not subcommand" 0 "$E" launch --hosts localhost:1 --gpus-per-node 1 --dry-run -- hostname -s
has "$d/out" "ppr:1:node --bind-to none -x CUDA_DEVICE_ORDER=PCI_BUS_ID hostname -s"

# Not a dry run: the line is exec'd, and mpirun's exit status is the launch's.
printf '#!/bin/sh\necho "fake mpirun: $*"\nexit 7\n' >"$d/mpirun"
chmod +x "$d/mpirun"
check "exec" 7 "$E" launch --hosts localhost:2 --gpus-per-node 2 --mpirun "$d/mpirun" -- version
has "$d/out" "fake mpirun: --host localhost:2 -np 2 --map-by ppr:2:node"
has "$d/err" "epmoe launch: $d/mpirun --host"
check "no such mpirun" 1 "$E" launch --hosts localhost:2 --gpus-per-node 2 --mpirun "$d/none" -- version
has "$d/err" "not found or not executable"

# ---- placements: the cluster must match ----
"$E" trace synth --out "$d/t.st" --layers 2 --experts 16 --k 2 --tokens 256 >/dev/null 2>&1 &&
  "$E" plan --trace "$d/t.st" --method contiguous --nodes 2 --gpus-per-node 8 --out "$d/p16.json" --quiet \
    >/dev/null 2>&1 || { echo "FAIL: could not make a placement"; fails=$((fails + 1)); }
check "placement for 16 GPUs launched on 8" 1 "$E" launch --hosts a:8 --gpus-per-node 8 --no-resolve \
  --placement "$d/p16.json" --dry-run -- run --model /m
has "$d/err" "placement $d/p16.json is for 16 ranks (2 nodes x 8 GPUs) but this launch starts 8 (1 host x 8 GPUs)"
check "placement nodes" 1 "$E" launch --hosts a:4,b:4,c:4,d:4 --gpus-per-node 4 --no-resolve \
  --placement "$d/p16.json" --dry-run -- run
has "$d/err" "is for 2 nodes but --hosts lists 4 hosts"
check "placement matches, passed to run" 0 "$E" launch --hosts a:8,b:8 --gpus-per-node 8 --no-resolve \
  --placement "$d/p16.json" --dry-run -- run --model /m
has "$d/out" "run --model /m --placement $d/p16.json"
check "placement from the run arguments" 1 "$E" launch --hosts a:8 --gpus-per-node 8 --no-resolve --dry-run \
  -- run --placement "$d/p16.json"
has "$d/err" "is for 16 ranks"
check "two placements" 2 "$E" launch --hosts a:8,b:8 --gpus-per-node 8 --no-resolve --placement "$d/p16.json" \
  --dry-run -- run --placement "$d/hosts.txt"
check "bad placement file" 1 "$E" launch --hosts a:8,b:8 --gpus-per-node 8 --no-resolve \
  --placement "$d/hosts.txt" --dry-run -- run
has "$d/err" "$d/hosts.txt"

# ---- hosts, slots, GPUs ----
check "unknown host" 1 "$E" launch --hosts localhost:2,nosuchhost.invalid:2 --gpus-per-node 2 --dry-run -- run
has "$d/err" "host nosuchhost.invalid (--hosts entry 2) does not resolve"
printf 'a slots=2\nb slots=2\n' >"$d/two.txt"
check "more ranks than slots" 1 "$E" launch --hostfile "$d/two.txt" --gpus-per-node 2 --np 6 --no-resolve \
  --dry-run -- run
has "$d/err" "more ranks than slots: 6 ranks, but $d/two.txt gives 4 slots on 2 hosts"
check "fewer slots than GPUs per node" 1 "$E" launch --hostfile "$d/two.txt" --gpus-per-node 4 --no-resolve \
  --dry-run -- run
has "$d/err" "host a ($d/two.txt line 1) has slots=2, fewer than --gpus-per-node 4"
printf 'a max_slots=1\n' >"$d/max.txt"
check "max_slots below G" 1 "$E" launch --hostfile "$d/max.txt" --gpus-per-node 2 --no-resolve --dry-run -- run
has "$d/err" "has max_slots=1, fewer than --gpus-per-node 2"
check "np not hosts x G" 1 "$E" launch --hosts a:4,b:4 --gpus-per-node 2 --np 6 --no-resolve --dry-run -- run
has "$d/err" "--np 6 is not 2 hosts x 2 GPUs per node = 4"
check "GPU index past the node's count" 1 "$E" launch --hosts a:4 --gpus-per-node 4 --node-gpus 8 \
  --gpu-map 0,2,4,8 --no-resolve --dry-run -- run
has "$d/err" "GPU index 8 of local rank 3 is past the node's count of 8 GPUs (--node-gpus)"
check "GPU map past G" 1 "$E" launch --hosts a:4 --gpus-per-node 4 --gpu-map 0,1,2,4 --no-resolve --dry-run -- run
has "$d/err" "GPU index 4 of local rank 3 is past the node's count of 4 GPUs"
check "GPU map twice" 1 "$E" launch --hosts a:2 --gpus-per-node 2 --gpu-map 1,1 --no-resolve --dry-run -- run
has "$d/err" "local ranks 0 and 1 both use GPU 1"
check "GPU map length" 1 "$E" launch --hosts a:4 --gpus-per-node 4 --gpu-map 0,1 --no-resolve --dry-run -- run
has "$d/err" "--gpu-map has 2 entries but each node runs 4 ranks"
check "more ranks than node GPUs" 1 "$E" launch --hosts a:4 --gpus-per-node 4 --node-gpus 2 --no-resolve \
  --dry-run -- run
has "$d/err" "past the node's count of 2 GPUs (--node-gpus)"
printf 'a slots=2\nb slots=two\n' >"$d/bad.txt"
check "hostfile value" 1 "$E" launch --hostfile "$d/bad.txt" --gpus-per-node 2 --dry-run -- run
has "$d/err" "$d/bad.txt:2: slots='two' is not an integer"
printf 'a slots=2\n# again\na slots=2\n' >"$d/dup.txt"
check "hostfile duplicate" 1 "$E" launch --hostfile "$d/dup.txt" --gpus-per-node 2 --dry-run -- run
has "$d/err" "$d/dup.txt:3: host 'a' is already listed at line 1"
check "missing hostfile" 1 "$E" launch --hostfile "$d/none.txt" --gpus-per-node 2 --dry-run -- run
has "$d/err" "$d/none.txt"
check "agent not executable" 1 "$E" launch --hosts a:1 --gpus-per-node 1 --no-resolve --agent "$d/hosts.txt" \
  --dry-run -- run
has "$d/err" "--agent $d/hosts.txt is not an executable file"

# ---- usage: exit 2 ----
check "no hosts" 2 "$E" launch --gpus-per-node 2 -- run
has "$d/err" "exactly one of --hostfile FILE and --hosts LIST"
check "both hosts" 2 "$E" launch --hosts a:1 --hostfile "$d/two.txt" --gpus-per-node 1 -- run
check "no G" 2 "$E" launch --hosts a:1 -- run
has "$d/err" "--gpus-per-node G is required"
check "no command" 2 "$E" launch --hosts a:1 --gpus-per-node 1
has "$d/err" "no command after '--'"
check "command without --" 2 "$E" launch --hosts a:1 --gpus-per-node 1 run
has "$d/err" "'run' before '--'"
check "bad G" 2 "$E" launch --hosts a:1 --gpus-per-node 0 -- run
check "bad map" 2 "$E" launch --hosts a:1 --gpus-per-node 1 --gpu-map 0,x -- run
has "$d/err" "'0,x'"
check "bad mca" 2 "$E" launch --hosts a:1 --gpus-per-node 1 --mca btl -- run
check "bad iface" 2 "$E" launch --hosts a:1 --gpus-per-node 1 --iface 'eth0;x y' -- run
check "unknown option" 2 "$E" launch --hosts a:1 --gpus-per-node 1 --frobnicate -- run

checks_done "launch: all checks passed"
