#!/usr/bin/env bash
# epmoe run holds routed experts and the dense matrices bf16 where the
# checkpoint stores them so (--expert-dtype auto and --dense-dtype auto, the
# defaults, with the ref or blas kernels): the same tokens and, to float32
# rounding, the same logits as widening them at load (f32), each alone or
# both, for Mixtral at 1 and 3 ranks and Qwen2-MoE (a shared expert and a
# dense MLP layer, in 2 shards) at 3; the ref kernels (the oracle) agree with
# blas; a data section at an odd offset (bf16 copied, not mapped) gives the
# same logits; a float32 checkpoint keeps float32.
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
export ASAN_OPTIONS=$no_leaks
require mpirun
require python3
here=$(dirname "$0")
run() { timeout 120 mpirun --oversubscribe "$@"; }
ok() { # description, command...: must exit 0
  local what=$1; shift
  "$@" >"$d/out" 2>"$d/err" || { fail "$what: exit $?"; head -5 "$d/err"; }
}
close() { # what, got.st, want.st, tolerance
  python3 "$here/../multinode/compare_logits.py" "$2" "$3" "$4" >"$d/cmp" 2>&1 || { fail "$1: $(cat "$d/cmp")"; }
}
same_tokens() { # what, a.json, b.json: the generated tokens agree
  python3 -c 'import json,sys; a,b=(json.load(open(p))["generated"] for p in sys.argv[1:3]); sys.exit(a != b)' \
    "$2" "$3" || fail "$1: generated tokens differ"
}

echo '[[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7], [4, 4, 2, 40, 17]]' >"$d/in.json"
"$E" model synth --out "$d/mix" --arch mixtral --hidden 64 --layers 2 --experts 8 --k 2 --ffn 96 --vocab 128 \
  --dtype bf16 >/dev/null 2>&1 || fail "model synth mixtral"
"$E" model synth --out "$d/qwen" --arch qwen2moe --hidden 64 --layers 3 --experts 6 --k 2 --ffn 40 --vocab 128 \
  --shared-ffn 72 --mlp-only-layers 1 --dtype bf16 --shards 2 >/dev/null 2>&1 || fail "model synth qwen2moe"

for mn in mix:1 mix:3 qwen:3; do
  m=${mn%:*} n=${mn#*:}
  for et in auto f32; do
    for dt in auto f32; do
      ok "$m at $n ranks, --expert-dtype $et --dense-dtype $dt" run -np "$n" "$E" run --model "$d/$m" \
        --input "$d/in.json" --max-new-tokens 4 --all-logits --logits-out "$d/l_$et$dt.st" --expert-dtype $et \
        --dense-dtype $dt --json --report
      cp "$d/out" "$d/o_$et$dt.json"
    done
  done
  has "$d/o_autoauto.json" '"expert_dtype": "BF16", "dense_dtype": "BF16"'
  has "$d/o_autof32.json" '"expert_dtype": "BF16", "dense_dtype": "F32"'
  has "$d/o_f32auto.json" '"expert_dtype": "F32", "dense_dtype": "BF16"'
  has "$d/o_f32f32.json" '"expert_dtype": "F32", "dense_dtype": "F32"'
  for v in autoauto autof32 f32auto; do
    close "$m at $n ranks: $v vs widened" "$d/l_$v.st" "$d/l_f32f32.st" 1e-5
    same_tokens "$m at $n ranks: $v" "$d/o_$v.json" "$d/o_f32f32.json"
  done
done

# the reference kernels hold them bf16 as well: the oracle of the blas path
ok "ref kernels, 2 ranks" run -np 2 "$E" run --model "$d/mix" --input "$d/in.json" --kernels ref --all-logits \
  --logits-out "$d/l_ref.st" --json --report
has "$d/out" '"expert_dtype": "BF16", "dense_dtype": "BF16"'
ok "blas kernels, 2 ranks" run -np 2 "$E" run --model "$d/mix" --input "$d/in.json" --all-logits \
  --logits-out "$d/l_blas.st"
close "ref vs blas, bf16 weights" "$d/l_blas.st" "$d/l_ref.st" 1e-5

# the data section one byte further: every bf16 tensor at an odd address is copied
python3 - "$d/mix/model.safetensors" "$d/odd" <<'PY' || fail "rewriting the checkpoint"
import os, shutil, struct, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
shutil.copy(os.path.join(os.path.dirname(src), "config.json"), out)
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
header = b[8:8 + n].rstrip(b" ")
if len(header) % 2 == 0:  # JSON allows trailing spaces: the data then starts at an odd offset
    header += b" "
open(os.path.join(out, "model.safetensors"), "wb").write(struct.pack("<Q", len(header)) + header + b[8 + n:])
PY
ok "odd data offset" run -np 2 "$E" run --model "$d/odd" --input "$d/in.json" --all-logits --logits-out "$d/l_odd.st"
close "odd data offset vs mapped" "$d/l_odd.st" "$d/l_blas.st" 0

# a float32 checkpoint stays float32
ok "float32 fixture" run -np 2 "$E" run --model "$F/mixtral-tiny" --input "$d/in.json" --json --report
has "$d/out" '"expert_dtype": "F32", "dense_dtype": "F32"'
# the memory check counts the weights as held
"$E" run --model "$d/mix" --input "$d/in.json" --max-memory 0.00001 >"$d/out" 2>"$d/err"
[ $? = 1 ] || fail "--max-memory below the weights: not refused"
has "$d/err" "routed experts as bf16, dense matrices as bf16"
"$E" run --model "$d/mix" --input "$d/in.json" --max-memory 0.00001 --dense-dtype f32 >"$d/out" 2>"$d/err"
has "$d/err" "dense matrices as float32"
"$E" run --model "$d/mix" --input "$d/in.json" --expert-dtype f16 >"$d/out" 2>"$d/err"
[ $? = 2 ] || fail "--expert-dtype f16: not a usage error"
has "$d/err" "--expert-dtype 'f16' is not auto, bf16 or f32"
# an FP8 checkpoint's experts are counted as held: FP8, or dequantised to bf16
"$E" run --model "$F/deepseekv3-fp8-tiny" --input "$d/in.json" --max-memory 0.00001 >"$d/out" 2>"$d/err"
has "$d/err" "routed experts as fp8, dense matrices as fp8 and bf16"
has "$d/err" "FFN scratch"
"$E" run --model "$F/deepseekv3-fp8-tiny" --input "$d/in.json" --max-memory 0.00001 --expert-dtype bf16 \
  --dense-dtype bf16 >"$d/out" 2>"$d/err"
has "$d/err" "routed experts as bf16, dense matrices as bf16"
"$E" run --model "$d/mix" --input "$d/in.json" --dense-dtype fp8 >"$d/out" 2>"$d/err"
[ $? = 2 ] || fail "--dense-dtype fp8: not a usage error"
has "$d/err" "--dense-dtype 'fp8' is not auto, bf16 or f32"
checks_done "bf16 weights: all checks passed"
