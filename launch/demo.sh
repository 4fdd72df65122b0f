#!/usr/bin/env bash
# The bundled demo: a synthetic routing trace with skew and cross-layer
# affinity, planned on its first half and evaluated on its second.
set -euo pipefail
epmoe=${1:-build/launch/epmoe}
out=demo
mkdir -p "$out"
"$epmoe" version
