#!/usr/bin/env bash
# The README's two commands:
#   bash launch/bootstrap.sh demo   install what is missing, build, plan + evaluate + run the bundled demo
#   bash launch/bootstrap.sh test   install what is missing, build, run every test (and again under ASan+UBSan)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}

pkgs="meson ninja-build pkg-config gcc clang libopenmpi-dev openmpi-bin libglpk-dev libhwloc-dev
      libcmocka-dev libopenblas-dev libjansson-dev python3 iproute2 util-linux procps"
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "bootstrap: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends $missing >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends $missing >/dev/null; }
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
jobs=$(nproc 2>/dev/null || echo 2)

setup() { # dir, options...: configure and build quietly, show the log on failure
  local dir=$1; shift
  local log
  log=$(mktemp)
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; return 1; }
  else
    meson setup "$dir" "$@" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; return 1; }
  fi
  ninja -C "$dir" -j "$jobs" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; return 1; }
  rm -f "$log"
}

case $what in
demo)
  setup build
  exec bash launch/demo.sh build/launch/epmoe
  ;;
test)
  setup build
  meson test -C build --print-errorlogs --num-processes "$jobs"
  # The same suites under AddressSanitizer + UndefinedBehaviorSanitizer (CPU
  # build: the CUDA runtime and ASan's shadow memory do not mix), at -O1 as
  # ASan's authors advise: a fifth faster than -O0 here, errors still exact.
  setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dcuda=disabled -Dbuildtype=debug \
    -Doptimization=1
  # EPM_TEST_QUICK: tests that repeat one scenario at several rank counts keep
  # the odd count there (the normal build above ran them all).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 EPM_TEST_QUICK=1 \
    meson test -C build-asan --print-errorlogs --num-processes "$jobs" --no-suite slow
  ;;
*)
  echo "usage: bash launch/bootstrap.sh demo|test" >&2
  exit 2
  ;;
esac
