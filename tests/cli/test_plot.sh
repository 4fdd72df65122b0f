#!/usr/bin/env bash
# bench/plot.py on the CSV of the quick benches: epmoe bench plan (Mixtral
# shape, 256 tokens), kernels (CPU, DeepSeek-V3-like shape, 1/4/16 tokens),
# a2a (2 and 3 ranks) and run (a tiny synthetic OLMoE, 2 and 3 ranks). Every
# chart it prints is written, is well-formed SVG of about 720x440 with a title,
# axis labels, ticks and a legend, and holds one point per CSV row and column
# drawn, each carrying that row's value (data-y) and its file:line (data-src);
# runs concatenated into one file (header lines repeated) give the same points
# as separate files. Bad input (a missing file, an unknown header, a bad
# number, a short row) exits non-zero naming the file and line, and leaves no
# SVG behind, not even over the charts of an earlier run. A value a log axis
# cannot show is left out with a note, not a failure.
# The figures themselves are not judged: this is a 2-core CI machine.
. "$(dirname "$0")/lib.sh" || exit 1
S=${EPM_SOURCE_ROOT:?}
P=$S/bench/plot.py
require mpirun
require python3
# the interpreter itself: a version manager's python3 shim can cost 0.3 s a start
PY=$(python3 -c 'import sys; print(sys.executable)') && [ -x "$PY" ] || PY=python3
cd "$d" || exit 1
show() { sed 's/^/  | /' "$d/out" | head -12; sed 's/^/  ! /' "$d/err" | head -6; }
# leak checking off under mpirun only (lib.sh): plot's own epmoe runs keep it
mpi() { ASAN_OPTIONS=$no_leaks timeout 120 mpirun --oversubscribe "$@"; }
# bench FILE CMD...: CMD exits 0, its stdout is FILE
bench() {
  local f=$1; shift
  "$@" >"$d/$f" 2>"$d/err"
  local rc=$?
  [ $rc = 0 ] && [ -s "$d/$f" ] || { fail "$*: exit $rc, expected 0 and CSV"; cp "$d/$f" "$d/out"; show; }
}
# plot CMD-ARGS...: python3 plot.py ARGS; stdout in $d/out, stderr in $d/err, exit status in $rc
plot() { timeout 60 "$PY" "$P" "$@" >"$d/out" 2>"$d/err"; rc=$?; }

# ---- the benches ----
bench plan.csv "$E" bench plan --shape mixtral --tokens 256 --time-limit 2 --quiet --csv
bench kernels.csv "$E" bench kernels --backend cpu --shape dsv3 --weight-gb 0.001 --tokens 1,4,16 --reps 1 --csv
for n in 2 3; do
  bench a2a_np$n.csv mpi -np $n "$E" bench a2a --a2a alltoallv --hier off --max-bytes 65536 --step 4 --time 0.01 --csv
done
"$E" model synth --out "$d/model" --arch olmoe >/dev/null 2>"$d/err" || { fail "model synth"; show; }
for n in 2 3; do
  bench run_np$n.csv mpi -np $n "$E" bench run --model "$d/model" --batch 6 --seq 8 --new 2 --reps 1 --time-limit 0.2 \
    --workdir "$d/work$n" --methods contiguous,eplb,ilp --modes home,follow --csv
done
[ "$fails" = 0 ] || { echo "$fails failure(s) before plotting"; exit 1; }

# ---- the charts ----
charts="a2a_busbw a2a_ratio kernels_tflops kernels_ratio plan_t_vs_contiguous plan_inter_vs_contiguous run_tokens run_speedup"
plot --out svg plan.csv kernels.csv a2a_np2.csv a2a_np3.csv run_np2.csv run_np3.csv
if [ $rc != 0 ]; then
  fail "plot: exit $rc"; show
else
  # the paths written, one per line, and nothing else
  for c in $charts; do echo "svg/$c.svg"; done | sort >"$d/want"
  sort "$d/out" | diff "$d/want" - >/dev/null || { fail "plot printed other paths than the 8 charts"; show; }
  [ "$(ls -A svg | wc -l)" = 8 ] || { fail "plot left more than the 8 charts in --out:"; ls -A svg; }
fi
# the same runs concatenated, header lines repeated
cat a2a_np2.csv a2a_np3.csv >a2a_all.csv
cat run_np2.csv run_np3.csv >run_all.csv
plot --out cat a2a_all.csv run_all.csv
[ $rc = 0 ] || { fail "plot of concatenated runs: exit $rc"; show; }
# the default --out is the current folder, paths printed bare
mkdir here && (cd here && "$PY" "$P" ../plan.csv >"$d/out" 2>"$d/err") || { fail "plot without --out"; show; }
[ "$(cat "$d/out")" = "$(printf 'plan_t_vs_contiguous.svg\nplan_inter_vs_contiguous.svg')" ] && [ -s here/plan_t_vs_contiguous.svg ] ||
  { fail "plot without --out: not written to the current folder"; show; }

# ---- bad input: exit 1 (2 for usage), one line naming the file and line, nothing written ----
printf 'foo,bar,baz\n1,2,3\n' >unknown.csv
# line 3 of a2a_np2.csv: the ours_us field (7th) made 'abc'
awk -F, -v OFS=, 'NR == 3 { $7 = "abc" } 1' a2a_np2.csv >badnum.csv
# line 4 of kernels.csv without its last field
awk -F, -v OFS=, 'NR == 4 { NF = NF - 1 } 1' kernels.csv >short.csv
# bad WANT_RC NAME WORD... -- FILES...: plot --out bad/NAME FILES exits WANT_RC, its stderr one line holding
# each WORD; bad/NAME ends up without any SVG, and a chart already there is untouched
bad() {
  local want=$1 name=$2; shift 2
  local words=()
  while [ "$1" != -- ]; do words+=("$1"); shift; done
  shift
  mkdir -p "bad/$name"
  echo old >"bad/$name/a2a_busbw.svg"
  plot --out "bad/$name" "$@"
  if [ $rc != "$want" ]; then
    fail "plot $*: exit $rc, expected $want"; show
  else
    [ "$(wc -l <"$d/err")" = 1 ] || { fail "plot $*: not a one-line message"; show; }
    for w in "${words[@]}"; do grep -qF -- "$w" "$d/err" || { fail "plot $*: the message does not name $w"; show; }; done
    [ -s "$d/out" ] && { fail "plot $*: printed paths despite failing"; show; }
  fi
  [ "$(cat "bad/$name/a2a_busbw.svg")" = old ] || fail "plot $*: overwrote an earlier chart"
  [ "$(ls -A "bad/$name")" = a2a_busbw.svg ] || { fail "plot $*: left files behind:"; ls -A "bad/$name"; }
}
# the good files come first: their charts would be built before the bad file is read
bad 1 missing nope.csv -- a2a_np2.csv plan.csv nope.csv
bad 1 unknown unknown.csv:1 foo,bar -- a2a_np2.csv unknown.csv
bad 1 badnum badnum.csv:3 ours_us "'abc'" -- plan.csv badnum.csv
bad 1 short short.csv:4 "column ratio" "11 fields" -- a2a_np2.csv short.csv
: >empty.csv
bad 1 empty empty.csv -- a2a_np2.csv empty.csv
bad 2 nofile "no CSV file" --
bad 2 option "'--bogus'" -- --bogus a2a_np2.csv
plot --help
[ $rc = 0 ] && grep -q '^usage: ' "$d/out" && grep -q 'a2a_busbw.svg' "$d/out" || { fail "plot --help"; show; }

# ---- what a log axis cannot show is left out with a note; an empty ratio (one rank) is allowed ----
# line 2 of a2a_np2.csv: ours_busbw_gbs (9th field) 0; a 1-rank row: no bytes, no bus bandwidth, no ratio
awk -F, -v OFS=, 'NR == 2 { $9 = "0.0000" } 1' a2a_np2.csv >zero.csv
printf '%s\n' "$(head -1 a2a_np2.csv)" '1,1,alltoallv,0,0,8,0.50,0.0000,0.0000,0.10,0.0000,0.0000,,0.60,,8,0.70,,0.80,,0.90,,1.00,,1.10,' >one.csv
plot --out zero zero.csv one.csv
if [ $rc != 0 ]; then
  fail "plot of a zero bandwidth: exit $rc"; show
else
  grep -q 'note: .*zero.csv:2' "$d/err" || { fail "no note of the zero bandwidth left out"; show; }
  grep -q 'note: .*one.csv:2' "$d/err" || { fail "no note of the 1-rank row left out"; show; }
fi

# ---- the SVG files, against the CSV rows ----
cat >"$d/check.py" <<'EOF'
import csv, math, sys
import xml.etree.ElementTree as ET

NS = '{http://www.w3.org/2000/svg}'
bad = []


def need(cond, msg):
    if not cond:
        bad.append(msg)


def rows(*files):
    """the CSV rows of files, header lines repeated in a file allowed; each row knows its file:line"""
    out = []
    for f in files:
        header = None
        for n, line in enumerate(open(f).read().splitlines(), 1):
            fields = next(csv.reader([line]))
            if header is None or fields == header:
                header = fields
                continue
            r = dict(zip(header, fields))
            r['_src'] = '%s:%d' % (f, n)
            out.append(r)
    return out


def load(path):
    """the points of an SVG: {series: [(x, y, src)]}, also checking its frame"""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        bad.append('%s: not well-formed SVG: %s' % (path, e))
        return {}, None
    need(root.tag == NS + 'svg', '%s: root %s, not svg' % (path, root.tag))
    w, h = float(root.get('width', 0)), float(root.get('height', 0))
    need(700 <= w <= 740 and 380 <= h <= 520, '%s: %gx%g, not about 720x440' % (path, w, h))
    t = root.find(NS + 'title')
    need(t is not None and (t.text or '').startswith('epmoe bench'), '%s: no <title>' % path)

    def texts(cls):
        return [e.text for e in root.iter(NS + 'text') if cls in (e.get('class') or '').split()]

    for cls, least in (('title', 1), ('xlabel', 1), ('ylabel', 1), ('xtick', 1), ('ytick', 2)):
        need(len(texts(cls)) >= least and all(texts(cls)), '%s: %d %s texts, expected %d or more' % (
            path, len(texts(cls)), cls, least))
    # units in the axis labels
    need(any('(' in t or '/' in t for t in texts('ylabel')), '%s: y label without units %s' % (path, texts('ylabel')))
    pts = {}
    for g in root.iter(NS + 'g'):
        if g.get('class') != 'series':
            continue
        name = g.get('data-series')
        for e in g:
            if e.get('class') == 'point':
                need(e.tag in (NS + 'circle', NS + 'rect'), '%s: point %s' % (path, e.tag))
                tip = e.find(NS + 'title')
                need(tip is not None and name in (tip.text or ''), '%s: point without a tooltip naming %s' % (path, name))
                x = e.get('data-x')
                pts.setdefault(name, []).append((float(x) if x is not None else e.get('data-group'),
                                                 float(e.get('data-y')), e.get('data-src')))
    legend = [e.get('data-series') for g in root.iter(NS + 'g') if g.get('class') == 'legend'
              for e in g if e.get('class') == 'entry']
    legend_text = [t for g in root.iter(NS + 'g') if g.get('class') == 'legend' for t in (x.text for x in g.iter(NS + 'text'))]
    need(sorted(legend) == sorted(pts) and sorted(legend_text) == sorted(pts),
         '%s: legend %s, series %s' % (path, legend, sorted(pts)))
    refs = sorted(float(e.get('data-ref')) for e in root.iter(NS + 'line') if e.get('class') == 'ref')
    return pts, refs


def expect(path, want, want_refs):
    """want: {series: [(x, y, src)]} from the CSV rows; the SVG must hold exactly those points"""
    got, refs = load(path)
    if not got and not want:
        return
    need(sorted(got) == sorted(want), '%s: series %s, expected %s' % (path, sorted(got), sorted(want)))
    for s in want:
        g, w = sorted(got.get(s, [])), sorted(want[s])
        need(len(g) == len(w), '%s: series %s has %d points, expected %d (CSV rows)' % (path, s, len(g), len(w)))
        for a, b in zip(g, w):
            need(a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-12) and a[2] == b[2],
                 '%s: series %s point %s, expected %s' % (path, s, a, b))
    need(refs == sorted(want_refs), '%s: reference lines %s, expected %s' % (path, refs, sorted(want_refs)))


def add(want, name, x, y, src, log=False):
    y = float(y)
    if not log or y > 0:
        want.setdefault(name, []).append((x, y, src))


def a2a(dir, files, where=None):
    busbw, ratio = {}, {}
    for r in rows(*files):
        src = where(r) if where else r['_src']
        k = '%s rank%s' % (r['ranks'], '' if r['ranks'] == '1' else 's')
        if float(r['bytes']) > 0:
            add(busbw, k + ' ours', float(r['size']), r['ours_busbw_gbs'], src, True)
            add(busbw, k + ' raw', float(r['size']), r['raw_busbw_gbs'], src, True)
            if r['ratio'] != '':
                add(ratio, k, float(r['size']), r['ratio'], src)
    expect(dir + '/a2a_busbw.svg', busbw, [])
    expect(dir + '/a2a_ratio.svg', ratio, [1.25])
    return busbw, ratio


def run(dir, files, rank_of):
    """rank_of(row): the rank count the chart should show the row at"""
    tok, speed = {}, {}
    for r in rows(*files):
        x = rank_of(r)
        need(float(r['ranks']) == x, '%s: ranks %s, the run had %g' % (r['_src'], r['ranks'], x))
        k = '%s %s' % (r['mode'], r['method'])
        for c in ('prefill_tok_s', 'decode_tok_s'):
            add(tok, k, x, r[c], r['_src'], True)
        if r['method'] != 'contiguous':
            for c in ('prefill_vs_contiguous', 'decode_vs_contiguous'):
                add(speed, k, x, r[c], r['_src'])
    need(len(tok) == 6 and all(len(v) == 4 for v in tok.values()),
         'bench run: expected 6 mode/method series of 2 ranks x 2 phases, got %s' % tok)
    expect(dir + '/run_tokens.svg', tok, [])
    expect(dir + '/run_speedup.svg', speed, [1.0, 1.0])


job = sys.argv[1]
if job == 'all':
    a2a('svg', ['a2a_np2.csv', 'a2a_np3.csv'])
    tf, ratio = {}, {}
    for r in rows('kernels.csv'):
        k = '%s %s %s' % (r['shape'], r['backend'], r['dtype'])
        add(tf, k + ' grouped', float(r['tokens']), r['grouped_tflops'], r['_src'], True)
        add(tf, k + ' dense ceiling', float(r['tokens']), r['dense_tflops'], r['_src'], True)
        add(ratio, k, float(r['tokens']), r['ratio'], r['_src'])
    need(len(tf) == 2 and len(ratio) == 1, 'kernels: series %s, %s' % (list(tf), list(ratio)))
    expect('svg/kernels_tflops.svg', tf, [])
    expect('svg/kernels_ratio.svg', ratio, [0.6, 0.7])
    for col, chart in (('t_vs_contiguous', 'plan_t_vs_contiguous'), ('inter_vs_contiguous', 'plan_inter_vs_contiguous')):
        want = {}
        for r in rows('plan.csv'):
            add(want, r['method'], r['shape'] + ' ' + r['mode'], r[col], r['_src'])
        need(sum(map(len, want.values())) == 10, 'plan: %d rows, expected 5 methods x 2 modes' % sum(map(len, want.values())))
        expect('svg/%s.svg' % chart, want, [1.0])
    run('svg', ['run_np2.csv', 'run_np3.csv'], lambda r: 2.0 if r['_src'].startswith('run_np2.csv:') else 3.0)
elif job == 'cat':
    # the concatenated files: the points of the separate ones, from the lines of the joined file
    n2 = len(open('a2a_np2.csv').read().splitlines())
    a2a('cat', ['a2a_all.csv'])
    a2a('cat', ['a2a_np2.csv', 'a2a_np3.csv'],
              lambda r: 'a2a_all.csv:%d' % (int(r['_src'].split(':')[1]) + (n2 if 'np3' in r['_src'] else 0)))
    # lines of run_all.csv up to the last of run_np2.csv are the 2-rank run
    n2 = len(open('run_np2.csv').read().splitlines())
    run('cat', ['run_all.csv'], lambda r: 2.0 if int(r['_src'].split(':')[1]) <= n2 else 3.0)
elif job == 'zero':
    busbw, ratio = a2a('zero', ['zero.csv', 'one.csv'])
    need(len(busbw['2 ranks ours']) == len(busbw['2 ranks raw']) - 1, 'zero: the zero bandwidth was drawn')
    need('1 rank ours' not in busbw and '1 rank' not in ratio, 'one: the 1-rank row was drawn')
for b in bad:
    print('FAIL: ' + b)
sys.exit(min(len(bad), 100))
EOF
for job in all cat zero; do
  "$PY" "$d/check.py" $job
  fails=$((fails + $?))
done

checks_done "all plot checks passed" "$fails failure(s)"
