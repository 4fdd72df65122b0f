#!/bin/sh
# The GPU kernel figures of bench/README.md in one run: `epmoe bench kernels`
# on cuda (grouped expert FFN beside a dense GEMM of the same FLOPs) and the
# PyTorch expert loop (bench/torch_moe_loop.py) on the same shapes, joined per
# (shape, tokens) with the speed-up over PyTorch as a ratio.
# usage: bench/gpu_kernels_vs_torch.sh EPMOE_BINARY [DTYPE] [TOKENS]
set -eu
bin=${1:?usage: $0 EPMOE_BINARY [bf16|f32] [TOKENS]}
dt=${2:-bf16}
tokens=${3:-1,16,128,1024,4096,16384}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" bench kernels --backend cuda --dtype "$dt" --tokens "$tokens" --csv > "$tmp/epmoe.csv"
python3 "$here/torch_moe_loop.py" --dtype "$dt" --tokens "$tokens" > "$tmp/torch.csv"
awk -F, '
    FNR == 1 { next }
    FILENAME ~ /torch/ { torch[$3 "," $4] = $6; next }
    { key = $3 "," $4; ep[key] = $7 * 1000; tf[key] = $8; dense[key] = $11; ceil[key] = $12; order[++n] = key }
    END {
        print "shape,tokens,epmoe_ms,epmoe_tflops,dense_tflops,of_ceiling,torch_ms,speedup_vs_torch"
        for (i = 1; i <= n; i++) {
            k = order[i]
            printf "%s,%.4f,%s,%s,%s,%s,%.2f\n", k, ep[k], tf[k], dense[k], ceil[k], torch[k], torch[k] / ep[k]
        }
    }' "$tmp/epmoe.csv" "$tmp/torch.csv"
