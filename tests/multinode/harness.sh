#!/usr/bin/env bash
# Several real nodes on one machine: each pseudo-node is a network namespace
# with its own host name, /dev/shm and address, joined to the others by a
# bridge, so that Open MPI uses shared memory inside a node and TCP between
# nodes, as on a cluster. mpirun runs in a separate launcher namespace and
# reaches every node through an agent script (its "ssh").
#
#   harness.sh [-n NODES] [-r RATE] [-t SECONDS] -- COMMAND [ARGS...]
#
#   -n NODES    pseudo-nodes node1..nodeN (default 2, at most 200)
#   -r RATE     rate-limit each node's link (tc tbf, e.g. 10gbit): slower between nodes than inside one
#   -t SECONDS  kill COMMAND after this long (default 60)
#
# COMMAND runs in the launcher namespace with, in its environment:
#   EPM_MN_HOSTS   node1,node2,...   (resolvable there: /etc/hosts is the harness's)
#   EPM_MN_AGENT   the agent script, for --mca plm_rsh_agent / epmoe launch --agent
#   EPM_MN_IFACE   eth0, the inter-node interface on every node
#   EPM_MN_DIR     a scratch directory visible on every node
# Exit: COMMAND's status; 77 (skip) with the reason on stderr when namespaces
# cannot be made here. Teardown (processes, namespaces, files) always runs.
set -u

nodes=2 rate="" limit=60
while getopts "n:r:t:" opt; do
  case $opt in
    n) nodes=$OPTARG ;;
    r) rate=$OPTARG ;;
    t) limit=$OPTARG ;;
    *) echo "usage: harness.sh [-n NODES] [-r RATE] [-t SECONDS] -- COMMAND..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then echo "harness.sh: no command" >&2; exit 2; fi
case $nodes in ''|*[!0-9]*) echo "harness.sh: -n '$nodes' is not a number" >&2; exit 2 ;; esac
if [ "$nodes" -lt 1 ] || [ "$nodes" -gt 200 ]; then echo "harness.sh: -n $nodes not in [1, 200]" >&2; exit 2; fi

skip() { echo "SKIP multinode harness: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces (running as uid $(id -u))"
for tool in ip unshare timeout; do
  command -v $tool >/dev/null || skip "'$tool' not found (apt-get install iproute2 util-linux coreutils)"
done
[ -z "$rate" ] || command -v tc >/dev/null || skip "'tc' not found for -r (apt-get install iproute2)"

# Names unique per run: tests of several builds may run at once.
id=em$(( $$ % 100000 ))
sw=${id}sw
dir=$(mktemp -d /tmp/epm-multinode.XXXXXX)
made=()

cleanup() {
  local ns pid
  for ns in "${made[@]}"; do
    # only what this harness started: processes left in its own namespaces
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

newns() {
  if ! err=$(ip netns add "$1" 2>&1); then
    [ ${#made[@]} -eq 0 ] && skip "cannot create a network namespace: $err"
    echo "harness.sh: ip netns add $1: $err" >&2; exit 1
  fi
  made+=("$1")
  ip -n "$1" link set lo up
}

set -e
newns "$sw"
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
# node i at 192.0.2.i; the launcher at 192.0.2.254
printf '127.0.0.1 localhost\n192.0.2.254 launcher\n' >"$dir/hosts"
hosts=""
for i in $(seq 0 "$nodes"); do
  ns=${id}n$i
  newns "$ns"
  ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns"
  ip -n "$sw" link set "p$i" master br0 up
  addr=192.0.2.$([ "$i" = 0 ] && echo 254 || echo "$i")
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  if [ -n "$rate" ] && [ "$i" != 0 ]; then
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 1ms
  fi
  if [ "$i" != 0 ]; then
    echo "$addr node$i" >>"$dir/hosts"
    hosts=${hosts:+$hosts,}node$i
  fi
done

# Each node: own host name (Open MPI 4.1's TCP path crashed without one) and
# own /dev/shm (two "nodes" sharing it collide in the vader transport).
cat >"$dir/agent.sh" <<EOF
#!/bin/sh
# mpirun's remote shell for the pseudo-nodes of $dir
h=\$1; shift
case \$h in
  node[0-9]*) i=\${h#node} ;;
  192.0.2.254|launcher) echo "agent: the launcher is not a node" >&2; exit 255 ;;
  192.0.2.[0-9]*) i=\${h#192.0.2.} ;;
  *) echo "agent: unknown host \$h" >&2; exit 255 ;;
esac
[ "\$i" -ge 1 ] && [ "\$i" -le $nodes ] 2>/dev/null || { echo "agent: unknown host \$h" >&2; exit 255; }
exec ip netns exec ${id}n\$i unshare --uts --mount sh -c \
  "hostname node\$i && mount -t tmpfs tmpfs /dev/shm && mount --bind $dir/hosts /etc/hosts && \$*"
EOF
chmod +x "$dir/agent.sh"
set +e

export EPM_MN_HOSTS=$hosts EPM_MN_AGENT=$dir/agent.sh EPM_MN_IFACE=eth0 EPM_MN_DIR=$dir
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# mpirun starts every daemon itself (no daemon-to-daemon ssh tree).
export OMPI_MCA_plm_rsh_no_tree_spawn=1
timeout --kill-after=5 "$limit" ip netns exec "${id}n0" unshare --uts --mount sh -c \
  'hostname launcher && mount -t tmpfs tmpfs /dev/shm && mount --bind "$0/hosts" /etc/hosts && exec "$@"' \
  "$dir" "$@"
rc=$?
[ $rc = 124 ] && echo "harness.sh: '$*' killed after ${limit}s" >&2
exit $rc
