#!/usr/bin/env bash
# Soak: 13 sequences of mixed lengths (1 to 40 tokens) decoded at 1, 5 and 7
# ranks (3 is everywhere else), in modes home and follow, on every bundled fixture, must give the
# same generated tokens as the 1-rank run and its prefill logits within 1e-4
# (of max(1, max |logit|)). Odd rank counts leave ranks with two sequences
# next to ranks with one, and sequences homed away from every expert.
tmp_template=/tmp/epm-soak.XXXXXX
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
S=${EPM_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
export ASAN_OPTIONS=$no_leaks
require mpirun
require python3 "logits comparison"
cmp_logits=$S/tests/multinode/compare_logits.py

# 13 prompts, lengths 1..40, ids from a fixed LCG (vocabulary 256)
awk 'BEGIN {
  split("1 2 3 5 8 11 15 19 24 29 33 37 40", len, " ");
  x = 12345; printf "[";
  for (s = 1; s <= 13; s++) {
    printf "%s[", (s > 1 ? ", " : "");
    for (p = 0; p < len[s]; p++) { x = (x * 75 + 74) % 65537; printf "%s%d", (p ? ", " : ""), x % 256 }
    printf "]";
  }
  print "]";
}' >"$d/in.json"
NEW=6

t0=$(date +%s)
for model in mixtral-tiny qwen2moe-tiny olmoe-tiny; do
  for mode in home follow; do
    for R in 1 5 7; do
      tag=$model.$mode.$R
      if ! timeout 120 mpirun --oversubscribe -np "$R" "$E" run --model "$F/$model" --input "$d/in.json" \
        --mode "$mode" --max-new-tokens "$NEW" --json --logits-out "$d/$tag.st" --all-logits \
        >"$d/$tag.json" 2>"$d/$tag.err"; then
        fail "$model $mode at $R ranks: the run failed:"
        head -5 "$d/$tag.err"
        continue
      fi
      ref=$model.home.1
      [ "$tag" = "$ref" ] && continue
      cmp -s "$d/$tag.json" "$d/$ref.json" ||
        fail "$model $mode at $R ranks: generated $(head -c 200 "$d/$tag.json"), at 1 rank $(head -c 200 "$d/$ref.json")"
      out=$(python3 "$cmp_logits" "$d/$tag.st" "$d/$ref.st" 1e-4) || fail "$model $mode at $R ranks: $out"
      echo "$model $mode $R $out" >>"$d/diffs"
    done
  done
  echo "  $model: home and follow at 1, 5, 7 ranks agree ($(grep -o '\[\[.*' "$d/$model.home.1.json" | head -c 60)...)"
done
worst=$(sed -n 's/.*max abs diff \([^ ]*\) .*/\1/p' "$d/diffs" 2>/dev/null | sort -g | tail -1)
echo "soak: $(($(date +%s) - t0)) s, largest logit difference from the 1-rank run: ${worst:-?}"
checks_done "all soak checks passed"
