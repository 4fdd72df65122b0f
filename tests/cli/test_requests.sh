#!/usr/bin/env bash
# epmoe run on requests, vLLM's way: a list of objects or JSON lines, each
# with its prompt ids, output length and sampling parameters, laid over the
# run's; what each request ran with comes back in the JSON.
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
export ASAN_OPTIONS=$no_leaks
require mpirun
require python3
run() { timeout 60 mpirun --oversubscribe "$@"; }
# the sanitizer pass of CI (EPM_TEST_QUICK=1) skips the `if full` blocks, which the normal pass ran
full() { [ "${EPM_TEST_QUICK:-0}" != 1 ]; }
m=$F/mixtral-tiny # eos_token_id 2
# gj EXPR: a Python expression over the last output's JSON (d)
gj() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$d/out" "$1"; }
A='[1, 5, 9, 13, 17, 21]'
B='[4, 8, 15, 16, 23, 42]'
# request 0 samples with its own seed; 1 is greedy with a penalty, no EOS and a stop token of
# its own; 2 gives nothing (the run's sampling, --max-new-tokens's length, else vLLM's 16)
cat >"$d/req.json" <<JSON
[{"prompt_token_ids": $A, "max_tokens": 6, "temperature": 0.8, "seed": 5, "top_k": -1, "top_p": null},
 {"prompt_token_ids": $B, "repetition_penalty": 1.2, "ignore_eos": true, "stop_token_ids": [300]},
 {"prompt_token_ids": $A}]
JSON
run -np 2 "$E" run --model "$m" --input "$d/req.json" --kernels ref --json >"$d/out" 2>"$d/err" ||
  { fail "request list"; head -5 "$d/err"; }
[ "$(gj '[len(g) for g in d["generated"]]')" = "[6, 16, 16]" ] ||
  fail "request lengths: $(gj '[len(g) for g in d["generated"]]'), expected [6, 16, 16]"
[ "$(gj '[(r["temperature"], r["top_k"], r["seed_of"], r["max_tokens"]) for r in d["request_sampling"]]')" = \
  "[(0.8, 0, 'request', 6), (0, 0, 'run', 16), (0, 0, 'run', 16)]" ] ||
  fail "request sampling: $(gj 'd["request_sampling"]')"
[ "$(gj '[r["stop_token_ids"] for r in d["request_sampling"]] + [d["request_sampling"][1]["repetition_penalty"]]')" = \
  "[[2], [300], [2], 1.2]" ] || fail "request stop tokens: $(gj 'd["request_sampling"]')"
cp "$d/out" "$d/list.json"
# its own seed: request 0 draws what sequence 0 of a run with that seed and temperature draws
echo "[$A]" >"$d/a.json"
run -np 2 "$E" run --model "$m" --input "$d/a.json" --kernels ref --json --temperature 0.8 --seed 5 \
  --generation-config none --max-new-tokens 6 >"$d/out" 2>"$d/err" || { fail "run-wide seed"; head -5 "$d/err"; }
own=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["generated"][0])' "$d/list.json")
[ "$(gj 'd["generated"][0]')" = "$own" ] || fail "request with seed 5: $own; run with --seed 5: $(gj 'd["generated"][0]')"
# JSON lines (a blank line, 3 ranks): the same requests, request 1 now stopping at its third token
stop=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["generated"][1][2])' "$d/list.json")
{ echo "{\"prompt_token_ids\": $A, \"max_tokens\": 6, \"temperature\": 0.8, \"seed\": 5}"
  echo
  echo "{\"prompt_token_ids\": $B, \"repetition_penalty\": 1.2, \"ignore_eos\": true, \"stop_token_ids\": [$stop]}"
  echo "{\"input_ids\": $A}"; } >"$d/req.jsonl"
run -np 3 "$E" run --model "$m" --input "$d/req.jsonl" --kernels ref --json >"$d/out" 2>"$d/err" ||
  { fail "JSON lines"; head -5 "$d/err"; }
python3 - "$d/list.json" "$d/out" <<'PY' || fail "JSON lines against the list"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
g1 = a["generated"][1]
cut = g1.index(g1[2]) + 1
assert b["generated"][0] == a["generated"][0] and b["generated"][2] == a["generated"][2], (a, b)
assert b["generated"][1] == g1[:cut] and b["finish_reason"] == ["length", "stop", "length"], (g1, b)
PY
# n samples of a request: sequences of their own (request_index), each draw its own; with the
# request's seed, sample 0 draws what the request alone draws. Logprobs where a request asks, with
# its number of top tokens (null where it does not ask); text-only options accepted, best_of 1 too
cat >"$d/n.json" <<JSON
[{"prompt_token_ids": $A, "max_tokens": 6, "temperature": 0.8, "seed": 5, "n": 3, "logprobs": 2},
 {"prompt_token_ids": $B, "max_tokens": 2, "prompt_logprobs": 1, "best_of": 1, "skip_special_tokens": true,
  "stop": []}]
JSON
run -np 3 "$E" run --model "$m" --input "$d/n.json" --kernels ref --json >"$d/out" 2>"$d/err" ||
  { fail "n samples"; head -5 "$d/err"; }
python3 - "$d/list.json" "$d/out" <<'PY' || fail "n samples, logprobs per request"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
g = b["generated"]
assert b["request_index"] == [0, 0, 0, 1], b["request_index"]
assert g[0] == a["generated"][0] and len({tuple(x) for x in g[:3]}) == 3, g
assert [None if l is None else [len(t["top"]) for t in l] for l in b["logprobs"]] == [[2] * 6] * 3 + [None], b
assert b["prompt_logprobs"][:3] == [None] * 3 and len(b["prompt_logprobs"][3]) == 6, b["prompt_logprobs"]
assert all(len(t["top"]) == 1 for t in b["prompt_logprobs"][3][1:]), b["prompt_logprobs"][3]
assert [r["seed_of"] for r in b["request_sampling"]] == ["request"] * 3 + ["run"], b["request_sampling"]
PY
run -np 2 "$E" run --model "$m" --input "$d/n.json" >"$d/out" 2>"$d/err"
[ $? = 1 ] || fail "logprobs without --json: exit status not 1"
has "$d/err" "requests ask for logprobs, which come with --json or --output"
# --output: a JSON line per request, its samples under outputs, as vLLM's RequestOutput; the same
# tokens and logprobs as --json's columns
run -np 2 "$E" run --model "$m" --input "$d/n.json" --kernels ref --json --output "$d/n.out.jsonl" >"$d/out" \
  2>"$d/err" || { fail "--output"; head -5 "$d/err"; }
python3 - "$d/out" "$d/n.out.jsonl" <<'PY' || fail "--output against --json"
import json, math, sys
a = json.load(open(sys.argv[1]))
lines = [json.loads(l) for l in open(sys.argv[2])]
assert [l["request_index"] for l in lines] == [0, 1] and [l["prompt_tokens"] for l in lines] == [6, 6], lines
s = 0
for l in lines:
    for o in l["outputs"]:
        assert o["token_ids"] == a["generated"][s] and o["finish_reason"] == a["finish_reason"][s], (o, s)
        assert o["logprobs"] == a["logprobs"][s], (o, s)
        if o["logprobs"] is None:
            assert o["cumulative_logprob"] is None
        else:
            assert abs(o["cumulative_logprob"] - sum(t["logprob"] for t in o["logprobs"])) < 1e-4, o
        s += 1
    assert l["prompt_logprobs"] == a["prompt_logprobs"][s - 1], l
assert [o["index"] for o in lines[0]["outputs"]] == [0, 1, 2] and s == 4
PY
if full; then
# without --json: the text on stdout, logprobs in the file; a file of its own per output. One
# sample at a time (continuous batching, each admitted as the one before ends): the same file
run -np 2 "$E" run --model "$m" --input "$d/n.json" --kernels ref --output "$d/n2.jsonl" --max-num-seqs 1 \
  >"$d/out" 2>"$d/err" || { fail "--output without --json"; head -5 "$d/err"; }
cmp -s "$d/n.out.jsonl" "$d/n2.jsonl" || fail "--output without --json, --max-num-seqs 1: another file"
has "$d/out" "^sequence 3:"
run -np 1 "$E" run --model "$m" --input "$d/n.json" --output "$d/x.st" --trace-out "$d/x.st" >"$d/out" 2>"$d/err"
[ $? = 2 ] || fail "one file for two outputs: exit status not 2"
has "$d/err" "is given as two outputs"
# a trace recorded by requests of different lengths (no stop tokens) replays: it is shorter than
# max_tokens for all
printf '[{"prompt_token_ids": %s, "max_tokens": 2}, {"prompt_token_ids": %s}]\n' "$A" "$B" >"$d/lens.json"
run -np 2 "$E" run --model "$m" --input "$d/lens.json" --json --max-new-tokens 9 --ignore-eos \
  --trace-out "$d/lens.st" >"$d/out" 2>"$d/err" || { fail "trace of requests"; head -5 "$d/err"; }
cp "$d/out" "$d/traced.json"
run -np 3 "$E" run --model "$m" --input "$d/lens.json" --json --max-new-tokens 9 --ignore-eos \
  --route-from-trace "$d/lens.st" >"$d/out" 2>"$d/err" || { fail "replay of requests of different lengths"; head -5 "$d/err"; }
[ "$(gj 'd["generated"]')" = "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["generated"])' \
  "$d/traced.json")" ] || fail "replayed requests: other tokens"
# --max-new-tokens caps every request and gives those without max_tokens theirs
check_caps() {
  run -np 2 "$E" run --model "$m" --input "$d/req.json" --kernels ref --json --max-new-tokens "$1" >"$d/out" \
    2>"$d/err" || { fail "--max-new-tokens $1"; head -5 "$d/err"; }
  [ "$(gj '[len(g) for g in d["generated"]]')" = "$2" ] || fail "--max-new-tokens $1: $(gj 'd["generated"]')"
}
check_caps 3 "[3, 3, 3]"
check_caps 9 "[6, 9, 9]"
fi
# refusals name the file, the request and the field; every rank ends (the first at 2 ranks, the
# rest in one process: the input is read alike everywhere)
ranks=2
refuse() { # description, text, expected message part
  printf '%s\n' "$2" >"$d/bad.jsonl"
  local rc
  if [ "$ranks" = 2 ]; then
    run -np 2 "$E" run --model "$m" --input "$d/bad.jsonl" >"$d/out" 2>"$d/err"
  else
    timeout 60 "$E" run --model "$m" --input "$d/bad.jsonl" >"$d/out" 2>"$d/err"
  fi
  rc=$?
  ranks=1
  [ $rc = 1 ] || fail "$1: exit status $rc, not 1"
  has "$d/err" "$3"
}
refuse "misspelt field" '{"prompt_token_ids": [1]}
{"prompt_token_ids": [2], "temprature": 0.5}' "bad.jsonl: line 2 (request 1): unknown field 'temprature'"
refuse "text prompt" '[{"prompt": "Hello"}]' "requests\[0\]: field 'prompt' is text, and epmoe has no tokenizer"
refuse "bad top_p" '[{"prompt_token_ids": [1], "top_p": 0}]' "requests\[0\]: field 'top_p' = 0: expected a number in (0, 1\]"
# min_tokens beyond what a request may generate (here vLLM's default 16), and truncation on a request
# that is greedy because the run is, are refused as vLLM and the run's own flags refuse them
refuse "min_tokens over the length" '[{"prompt_token_ids": [1]}, {"prompt_token_ids": [1], "min_tokens": 20}]' \
  "request 1: min_tokens = 20 is more than the 16 tokens it may generate"
refuse "top_p on a greedy run" '[{"prompt_token_ids": [1], "top_p": 0.5}]' \
  "request 0: top_k, top_p and min_p shape sampling, but this request decodes greedily as the run does"
full || checks_done "all request checks passed" # (the parser's refusals: test_tokens under the sanitizers)
# nothing decoded: no request sampling to echo
run -np 2 "$E" run --model "$m" --input "$d/req.json" --max-new-tokens 0 --json >"$d/out" 2>"$d/err" ||
  { fail "prefill only"; head -5 "$d/err"; }
[ "$(gj '[d["request_sampling"], d["request_index"], d["generated"]]')" = "[None, [0, 1, 2], [[], [], []]]" ] ||
  fail "prefill only: $(head -c 300 "$d/out")"
refuse "best of n" '[{"prompt_token_ids": [1], "best_of": 2}]' "field 'best_of' = 2: best-of-n is not run"
refuse "stop strings" '[{"prompt_token_ids": [1], "stop": ["a"]}]' "stop strings need a tokenizer"
refuse "n of 0" '[{"prompt_token_ids": [1], "n": 0}]' "field 'n' = 0: expected an integer in \[1, 1024\]"
refuse "id outside the vocabulary" '[{"prompt_token_ids": [1, 256]}]' "prompt_token_ids\[1\]' = 256"
checks_done "all request checks passed"
