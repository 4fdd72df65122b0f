#!/usr/bin/env bash
# The bundled demo: a synthetic routing trace with skewed load and cross-layer
# affinity (Mixtral-like shape on 2 nodes x 4 ranks), planned on its first half
# with every method and evaluated on the held-out second half, in both modes.
set -euo pipefail
epmoe=${1:-build/launch/epmoe}
out=${EPM_DEMO_DIR:-demo}
mkdir -p "$out"
echo "== synthesising a routing trace (16 layers, 16 experts, top-2, 8192 tokens)" >&2
"$epmoe" trace synth --out "$out/trace.safetensors" --layers 16 --experts 16 --k 2 --tokens 8192 \
  --zipf 1.0 --affinity 0.8 --successors 2 --seq-len 256 --seed 7
"$epmoe" trace split "$out/trace.safetensors" --first "$out/plan_half.safetensors" \
  --second "$out/eval_half.safetensors"
"$epmoe" trace stats "$out/plan_half.safetensors" | tail -n 3
# Every method with the same memory, 2 experts a rank (no spare slot: the ILP's single-copy
# setting, MoETuner's), then eplb and the ILP with a third slot a rank for copies of the hot
# experts: what 50% more expert memory buys, and what the ILP's replica search adds to eplb's.
for mode in home follow; do
  for m in contiguous round-robin greedy eplb ilp; do
    "$epmoe" plan --trace "$out/plan_half.safetensors" --method "$m" --mode "$mode" --nodes 2 \
      --gpus-per-node 4 --slots 2 --time-limit 20 --out "$out/$mode-$m.json" >&2
  done
  "$epmoe" plan --trace "$out/plan_half.safetensors" --method eplb --mode "$mode" --nodes 2 \
    --gpus-per-node 4 --slots 3 --out "$out/$mode-eplb-3-slots.json" >&2
  "$epmoe" plan --trace "$out/plan_half.safetensors" --method ilp --mode "$mode" --nodes 2 \
    --gpus-per-node 4 --slots 3 --time-limit 20 --out "$out/$mode-ilp-3-slots.json" >&2
  echo "== $mode mode, held-out half (ratios against contiguous)" >&2
  "$epmoe" plan eval --trace "$out/eval_half.safetensors" --mode "$mode" \
    "$out/$mode-contiguous.json" "$out/$mode-round-robin.json" "$out/$mode-greedy.json" \
    "$out/$mode-eplb.json" "$out/$mode-ilp.json" "$out/$mode-eplb-3-slots.json" \
    "$out/$mode-ilp-3-slots.json"
done

# A multi-rank run of a bundled checkpoint (OLMoE-shaped, from transformers),
# with a placement planned by the ILP from the routing the model itself
# produced: run -> trace -> plan -> run.
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
model=tests/fixtures/olmoe-tiny
echo "== epmoe run on $model: capture its routing on 1 rank" >&2
"$epmoe" run --model "$model" --input "$model/reference.safetensors" --max-new-tokens 8 \
  --trace-out "$out/olmoe_trace.safetensors"
echo "== plan it with the ILP for 2 nodes x 2 ranks (follow mode), one spare slot per rank" >&2
"$epmoe" plan --trace "$out/olmoe_trace.safetensors" --method ilp --mode follow --nodes 2 --gpus-per-node 2 \
  --slots 3 --hidden 64 --time-limit 10 --out "$out/olmoe_ilp.json"
for mode in home follow; do
  echo "== mpirun -np 4 epmoe run --mode $mode with the ILP placement (2 virtual nodes)" >&2
  mpirun --oversubscribe -np 4 "$epmoe" run --model "$model" --input "$model/reference.safetensors" \
    --placement "$out/olmoe_ilp.json" --virtual-nodes 2 --mode "$mode" --max-new-tokens 8 --report
done
echo "== what plan eval predicted for the same routing (bytes per link class agree with the run's counts)" >&2
"$epmoe" plan eval --trace "$out/olmoe_trace.safetensors" "$out/olmoe_ilp.json" --mode both --hidden 64 \
  --dtype-bytes 4 --kv-dim 64
echo "== online rebalancing from the ILP placement: every 2 passes (prompts in chunks of 4), follow mode, gained experts copied from peers" >&2
mpirun --oversubscribe -np 4 "$epmoe" run --model "$model" --input "$model/reference.safetensors" \
  --placement "$out/olmoe_ilp.json" --virtual-nodes 2 --mode follow --max-new-tokens 8 --prefill-chunk 4 \
  --eplb-interval 2 --eplb-from peers --trace-out "$out/olmoe_online.safetensors" --report
echo "== plan eval replays the run's passes: the same bytes, placements taken, experts moved and copied" >&2
"$epmoe" plan eval --trace "$out/olmoe_online.safetensors" "$out/olmoe_ilp.json" --mode follow --model "$model" \
  --dtype-bytes 4 --kv-dim 64 --eplb-interval 2 --eplb-from peers
