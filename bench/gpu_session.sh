#!/bin/sh
# Everything a session on the GPU machine runs, in one call of the device
# tool (each new machine costs minutes): build with CUDA, the GPU tests, the
# GPU figures of bench/README.md. Logs and CSVs go to $OUT (or ./gpu-out).
#   device run (carry .gpu-debs):  sh bench/gpu_session.sh [tests|kernels|a2a|run|all]...
# .gpu-debs comes from ../shared/gpu/fetch-debs.sh plus libjansson4 and
# libjansson-dev (apt-get download into .gpu-debs): the GPU machine has no
# GLPK, cmocka or Jansson.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
what=${*:-all}
. .gpu-debs/env.sh
# env.sh unpacks only on first use; Jansson may have been added since
for f in .gpu-debs/libjansson*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/gpu-debs; done
sed -i "s|^prefix=/usr\$|prefix=/tmp/gpu-debs/usr|" /tmp/gpu-debs/usr/lib/x86_64-linux-gnu/pkgconfig/jansson.pc 2>/dev/null
nvidia-smi -L >"$out/gpu.txt" 2>&1
if [ ! -f build-gpu/build.ninja ]; then
  meson setup build-gpu -Dcuda=enabled >"$out/setup.log" 2>&1 || { tail -n 30 "$out/setup.log"; exit 1; }
fi
ninja -C build-gpu >"$out/build.log" 2>&1 || { grep -B2 -A12 FAILED "$out/build.log" | head -n 60; exit 1; }
E=build-gpu/launch/epmoe
has() { case " $what " in *" $1 "*|*" all "*) return 0 ;; esac; return 1; }

if has tests; then
  meson test -C build-gpu --suite gpu --print-errorlogs >"$out/gpu-tests.log" 2>&1
  echo "gpu suite: $(grep -E '^(Ok|Fail|Skipped):' "$out/gpu-tests.log" | tr -s ' ' | tr '\n' ' ')"
  for n in 2 3; do
    mpirun --oversubscribe -np $n build-gpu/tests/gpu/gputest_transport_staged >"$out/staged_np$n.log" 2>&1
    echo "staged transport at $n ranks on one GPU: exit $?"
  done
  # the fixtures on the GPU kernels: reference logits at 1 and 2 ranks
  for m in mixtral-tiny qwen2moe-tiny olmoe-tiny qwen3moe-tiny deepseekv3-tiny deepseekv2-tiny deepseekv3-fp8-tiny; do
    for n in 1 2; do
      mpirun --oversubscribe -np $n $E run --model tests/fixtures/$m --input tests/fixtures/$m/reference.safetensors \
        --kernels cuda --all-logits --logits-out "$out/l.st" >"$out/run_${m}_${n}.log" 2>&1 &&
        python3 tests/multinode/compare_logits.py "$out/l.st" tests/fixtures/$m/reference.safetensors 1e-4 \
          >>"$out/run_${m}_${n}.log" 2>&1
      echo "$m on cuda kernels, $n rank(s): exit $? $(tail -n 1 "$out/run_${m}_${n}.log")"
    done
  done
fi
if has kernels; then
  sh bench/gpu_kernels_vs_torch.sh $E bf16 >"$out/kernels_bf16.csv" 2>"$out/kernels_bf16.err"
  echo "kernels bf16 vs torch: exit $?"; cat "$out/kernels_bf16.csv"
  $E bench kernels --backend cuda --dtype f32 --tokens 1,128,4096 --csv >"$out/kernels_f32.csv" 2>&1
  echo "kernels f32:"; cat "$out/kernels_f32.csv"
  # the batched and strided paths (ops_cuda.cu, ffn_bplan.h: not in auto until measured), their
  # batches on 1 and 4 streams; strict, so that a call falling back to the per-expert path fails
  # the run instead of being timed under the wrong name (the dense ceiling, one expert, is the
  # same GEMM chain in every mode)
  for p in batched strided; do
    for s in 1 4; do
      EPM_TEST_CUDA_BATCHED_STRICT=1 EPM_CUDA_GROUPED_GEMM=$p EPM_CUDA_FFN_STREAMS=$s $E bench kernels \
        --backend cuda --dtype bf16 \
        --tokens 1,16,128,1024,4096,16384 --csv >"$out/kernels_${p}_streams$s.csv" 2>&1
      echo "kernels bf16, $p on $s stream(s): exit $?"; cat "$out/kernels_${p}_streams$s.csv"
    done
  done
  # the per-expert path on 1, 4 and 8 side streams (ops_cuda.cu: EPM_CUDA_FFN_STREAMS, default 1
  # until these figures say otherwise)
  for s in 1 4 8; do
    EPM_CUDA_GROUPED_GEMM=off EPM_CUDA_FFN_STREAMS=$s $E bench kernels --backend cuda --dtype bf16 --shape dsv3 \
      --tokens 128,1024,4096,16384 --csv >"$out/kernels_streams$s.csv" 2>&1
    echo "kernels bf16 dsv3, per expert on $s stream(s): exit $?"; cat "$out/kernels_streams$s.csv"
  done
  # attention on the device beside the C reference (host, one thread): decode and a prefill chunk
  $E bench attention --backend cuda --csv >"$out/attention_cuda.csv" 2>&1
  echo "attention cuda: exit $?"; cat "$out/attention_cuda.csv"
  # every FFN path side by side: grouped/dense per (shape, tokens), the best marked (what auto should pick)
  python3 - "$out" <<'PY'
import csv, glob, os, sys
out = sys.argv[1]
paths = {}
for f in sorted(glob.glob(os.path.join(out, 'kernels_*streams*.csv'))):
    name = os.path.basename(f)[len('kernels_'):-len('.csv')]
    try:
        for r in csv.DictReader(open(f)):
            paths.setdefault((r['shape'], int(r['tokens'])), {})[name] = (float(r['grouped_s']), float(r['ratio']))
    except (KeyError, ValueError, TypeError):
        print('unreadable: %s' % f)
auto = os.path.join(out, 'kernels_bf16.csv')
if os.path.exists(auto):
    try:
        for r in csv.DictReader(open(auto)):
            paths.setdefault((r['shape'], int(r['tokens'])), {})['auto'] = (float(r['epmoe_ms']) / 1e3,
                                                                            float(r['of_ceiling']))
    except (KeyError, ValueError, TypeError):
        print('unreadable: %s' % auto)
for (shape, tokens), v in sorted(paths.items()):
    best = min(v, key=lambda k: v[k][0])
    print('%s %6d  ' % (shape, tokens) + '  '.join('%s %.3f ms %.2f%s' % (k, v[k][0] * 1e3, v[k][1],
                                                    ' *' if k == best else '') for k in sorted(v)))
PY
fi
if has a2a; then
  EPM_A2A=nccl mpirun -np 1 $E bench a2a --min-bytes 1048576 --max-bytes 67108864 --time 0.2 --csv \
    >"$out/a2a_nccl_np1.csv" 2>&1
  echo "a2a nccl, 1 rank: exit $?"; cat "$out/a2a_nccl_np1.csv"
  for n in 2 4; do
    EPM_A2A=staged mpirun --oversubscribe -np $n $E bench a2a --min-bytes 1048576 --max-bytes 67108864 --time 0.2 \
      --csv >"$out/a2a_staged_np$n.csv" 2>&1
    echo "a2a staged, $n ranks on one GPU: exit $?"; cat "$out/a2a_staged_np$n.csv"
  done
  # host rows over MPI with one core per rank (16 cores): the 4-8 rank points the 2-core VM
  # can only oversubscribe
  for n in 4 8; do
    mpirun --oversubscribe -np $n $E bench a2a --min-bytes 1048576 --step 2 --max-bytes 33554432 --time 0.5 \
      --csv >"$out/a2a_mpi_np$n.csv" 2>&1
    echo "a2a MPI host rows, $n ranks: exit $?"; cat "$out/a2a_mpi_np$n.csv"
  done
fi
if has run; then
  # one Mixtral-8x7B decoder layer pair in bf16 (2.8 GB), routing replayed from skewed traces
  [ -f /tmp/mixtral2/config.json ] || $E model synth --out /tmp/mixtral2 --arch mixtral --hidden 4096 --layers 2 \
    --experts 8 --k 2 --ffn 14336 --heads 32 --kv-heads 8 --vocab 32000 --dtype bf16 >"$out/synth.log" 2>&1
  for n in 1 2 4; do
    for k in cuda blas; do
      [ $k = blas ] && [ $n = 4 ] && continue # 16 CPU cores: enough for the CPU baseline at 1 and 2
      mpirun --oversubscribe -np $n $E bench run --model /tmp/mixtral2 --kernels $k --methods contiguous,ilp \
        --modes home --batch 8 --seq 128 --new 4 --reps 1 --time-limit 5 --workdir /tmp/bw --csv \
        >"$out/run_${k}_np$n.csv" 2>&1
      echo "bench run $k, $n rank(s): exit $?"; cat "$out/run_${k}_np$n.csv"
    done
  done
  # the CPU path's bf16 experts (blas holds them as stored) against widening them, 16 cores
  mpirun --oversubscribe -np 1 $E bench run --model /tmp/mixtral2 --expert-dtypes --batch 8 --seq 128 --new 8 \
    --reps 2 --csv >"$out/run_expert_dtypes.csv" 2>&1
  echo "bench run --expert-dtypes, 1 rank: exit $?"; cat "$out/run_expert_dtypes.csv"
fi
