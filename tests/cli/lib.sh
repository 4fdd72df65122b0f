# The set-up every test of this folder shares, sourced before anything else:
#   . "$(dirname "$0")/lib.sh" || exit 1
# (by $0, whatever the working directory: meson runs `bash BUILD/../tests/cli/
# test_x.sh`, and multinode_launch reaches test_launch.sh from tests/multinode).
# POSIX sh, so that it stays valid whichever shell sources it; the scripts
# themselves are bash.
# A script that names its temporary folder sets tmp_template before sourcing;
# one that leaves processes behind redefines cleanup; one whose failures need
# more context redefines fail.
# shellcheck disable=SC2034 # E, no_leaks: for the scripts that source this
set -u
E=${EPMOE:?path of the epmoe binary}
# mpirun refuses root without these (containers, CI); meson sets them, but a
# run by hand would not
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's unloaded components look like leaks to LeakSanitizer (see
# tests/mpi/meson.build). Not exported here: a test whose epmoe also runs
# without MPI keeps leak checking there (ASAN_OPTIONS=$no_leaks mpirun ...).
no_leaks=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
# a named template (/tmp/epm-NAME.XXXXXX) makes a test's files, and its
# processes (their command lines name "$d/"), recognisable in /tmp and ps
d=$(mktemp -d ${tmp_template:+"$tmp_template"}) || exit 1
cleanup() { :; }
# cleanup runs first: a process still writing into $d would defeat rm -rf
trap 'cleanup; rm -rf "$d"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# has FILE PATTERN: a line of FILE matches the grep pattern; else a failure
# showing the file's first lines
has() { grep -q -- "$2" "$1" || { fail "'$2' not in $1:"; head -20 "$1"; }; }
# exit 77 is meson's "skipped": a machine without the tool is not a failure
require() { command -v "$1" >/dev/null || { echo "$1 not found${2:+ ($2)}: skipped"; exit 77; }; }
# the script's last line: PASSED and status 0, or FAILED (if given) and
# status 1; meson judges by the status alone
checks_done() {
  if [ "$fails" = 0 ]; then echo "$1"; exit 0; fi
  [ $# -lt 2 ] || echo "$2"
  exit 1
}
