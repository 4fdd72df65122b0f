#!/usr/bin/env bash
# epmoe bench plan, kernels, a2a and run on the smallest instances they take:
# each exits 0 and prints the columns it documents; CSV headers and rows parse,
# figures are finite, positive where they must be, and agree with each other
# (ratios are the quotients of the printed times, bandwidths the bytes over
# the time, within the printed rounding). Bad arguments exit 2 before any work,
# naming the option and the value; --help exits 0 with the usage.
# The figures themselves are not judged: this is a 2-core CI machine, and the
# sizes are kept tiny for the sanitizer build.
# Not run: bench kernels --shape mixtral (two Mixtral expert weight sets are
# 1.4 GB of float32, several seconds to fill); dsv3 with --weight-gb at its
# minimum (2 sets, 352 MB) is the smallest instance the bench has.
. "$(dirname "$0")/lib.sh" || exit 1
F=${EPM_FIXTURES:?}
require mpirun
require python3
cd "$d" || exit 1 # anything a bench writes by default lands here, and is checked for
show() { sed 's/^/  | /' "$d/out" | head -12; sed 's/^/  ! /' "$d/err" | head -6; }
# leak checking off under mpirun only (lib.sh): the benches run without it keep it
mpi() { ASAN_OPTIONS=$no_leaks timeout 120 mpirun --oversubscribe "$@"; }
# ok DESCRIPTION CMD...: CMD exits 0; its output is in $d/out and $d/err
ok() {
  local what=$1; shift
  "$@" >"$d/out" 2>"$d/err"
  local rc=$?
  [ $rc = 0 ] || { fail "$what: exit $rc, expected 0"; show; return 1; }
}
# usage BENCH OPTION VALUE ARGS...: `epmoe bench BENCH ARGS` exits 2 before
# doing anything (nothing on stdout), its message naming OPTION and 'VALUE'
usage() {
  local b=$1 opt=$2 val=$3; shift 3
  timeout 60 "$E" bench "$b" "$@" >"$d/out" 2>"$d/err"
  local rc=$?
  if [ $rc != 2 ]; then
    fail "bench $b $*: exit $rc, expected 2"; show
  elif [ -s "$d/out" ]; then
    fail "bench $b $*: refused only after printing"; show
  else
    for w in $opt ${val:+"'$val'"}; do
      grep -qF -- "$w" "$d/err" || { fail "bench $b $*: the message does not name $w"; show; }
    done
  fi
}
# help_ok BENCH OPTION...: --help exits 0 with the usage on stdout, naming each OPTION
help_ok() {
  local b=$1; shift
  ok "bench $b --help" "$E" bench "$b" --help || return
  head -1 "$d/out" | grep -q "^usage: .*epmoe bench $b" || { fail "bench $b --help: no usage line"; show; }
  for o in "$@"; do grep -qF -- "$o" "$d/out" || fail "bench $b --help does not mention $o"; done
}
# csvcheck KIND ARGS...: $d/out is checked by check.py below, all at the end
# (one python start: a process start is slow on the CI machine)
jobs=0
: >"$d/jobs"
csvcheck() {
  jobs=$((jobs + 1))
  cp "$d/out" "$d/out.$jobs"
  (IFS=$'\t'; echo "$1"$'\t'"$d/out.$jobs${2+$'\t'}${*:2}") >>"$d/jobs"
}

cat >"$d/check.py" <<'EOF'
import csv, math, re, sys

path = None  # the output being checked
bad = []  # what is wrong with it

def need(cond, msg):
    if not cond:
        bad.append(msg)

def num(row, key, lo=None, lo_open=False):
    """the field as a finite number; lo: a lower bound (open when lo_open)"""
    try:
        v = float(row[key])
    except (KeyError, TypeError, ValueError):
        bad.append('%s = %r is not a number' % (key, row.get(key)))
        return float('nan')
    need(math.isfinite(v), '%s = %r is not finite' % (key, row[key]))
    if lo is not None:
        need(v > lo if lo_open else v >= lo, '%s = %r is not %s %g' % (key, row[key], '>' if lo_open else '>=', lo))
    return v

def ulp(field):
    """half a unit in the last printed place of a number"""
    m = re.match(r'^-?\d*(?:\.(\d*))?(?:[eE]([-+]?\d+))?$', field.strip())
    if not m:
        return 0.5
    frac = len(m.group(1) or '')
    exp = int(m.group(2) or 0)
    return 0.5 * 10.0 ** (exp - frac)

def agrees(row, key, want, inputs, what):
    """row[key] equals want = f(inputs) within the rounding of the printed
    inputs and of the field itself; an input is a field of row, or (other
    row, field). f is a product or quotient of the inputs, so its relative
    error is at most prod((1+e)/(1-e)) - 1 over their relative roundings e:
    exact rather than the first-order sum, which 2.4 / 0.6 (each rounded to
    0.1) already exceeds"""
    got = float(row[key])
    fields = [i if isinstance(i, tuple) else (row, i) for i in inputs]
    span = 1.0
    for r, k in fields:
        if float(r[k]) != 0:
            e = ulp(r[k]) / abs(float(r[k]))
            span = span * (1 + e) / (1 - e) if e < 1 else float('inf')
    tol = abs(want) * (span - 1) * 1.01 + ulp(row[key]) * 1.01 + 1e-12
    need(abs(got - want) <= tol, '%s = %s, expected %s = %.6g (tolerance %.2g)' % (key, row[key], what, want, tol))

def load(header):
    with open(path, newline='') as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    need(bool(lines), 'no output')
    if not lines:
        return []
    got = lines[0].split(',')
    need(got == header, 'header %s, documented %s' % (got, header))
    rows = list(csv.DictReader(lines))
    for i, r in enumerate(rows):
        need(None not in r and None not in r.values(),
             'row %d has %d fields, header %d' % (i + 1, len(lines[i + 1].split(',')), len(header)))
    return rows


def check(kind, args):
    if kind == 'plan':  # args: modes[, 'online']
        modes = args[0].split(',')
        methods = ['contiguous', 'round-robin', 'greedy', 'eplb', 'ilp'] + (['online'] if args[1:] == ['online'] else [])
        rows = load(['shape', 'mode', 'method', 'solve_s', 'objective', 'bound', 'gap', 'quality', 'max_over_mean_load',
                     'mean_max_load', 'bytes_intra', 'bytes_inter', 't_model_s', 't_vs_contiguous', 'inter_vs_contiguous',
                     'maxload_vs_contiguous', 'nodes_per_token', 'node_dispatches'])
        need([(r['mode'], r['method']) for r in rows] == [(m, k) for m in modes for k in methods],
             'rows %s, expected every method in each mode %s' % ([(r['mode'], r['method']) for r in rows], modes))
        base = {}
        for r in rows:
            need(r['shape'] == 'mixtral', 'shape %s' % r['shape'])
            num(r, 'solve_s', 0)  # printed to 1 us: a heuristic's 0.000000 is allowed
            # online rebalancing (contiguous, rebalanced over the evaluated half) has no objective
            obj = num(r, 'objective', 0, True) if r['method'] != 'online' else need(r['objective'] == '', 'online objective')
            num(r, 'max_over_mean_load', 1)
            num(r, 'mean_max_load', 0, True)
            num(r, 'bytes_intra', 0, True)
            # Mixtral's shape is 8 ranks in 1 node: nothing crosses nodes
            need(num(r, 'bytes_inter', 0) == 0, '%s: inter-node bytes in a 1-node cluster' % r['method'])
            need(num(r, 'nodes_per_token', 0) == 1 and num(r, 'node_dispatches', 0) == 0,
                 '%s: tokens reach other nodes in a 1-node cluster' % r['method'])
            num(r, 't_model_s', 0, True)
            for k in ('t_vs_contiguous', 'inter_vs_contiguous', 'maxload_vs_contiguous'):
                num(r, k, 0, True)
            if r['method'] == 'contiguous':
                base[r['mode']] = r
                for k in ('t_vs_contiguous', 'inter_vs_contiguous', 'maxload_vs_contiguous'):
                    need(float(r[k]) == 1, 'contiguous %s: %s = %s, not 1' % (r['mode'], k, r[k]))
            elif r['mode'] in base:
                c = base[r['mode']]
                agrees(r, 't_vs_contiguous', float(r['t_model_s']) / float(c['t_model_s']),
                       ['t_model_s', (c, 't_model_s')], 't_model_s / contiguous')
                # mean_max_load is printed to 0.01, the ratio from the unrounded loads
                need(abs(float(r['maxload_vs_contiguous']) - float(r['mean_max_load']) / float(c['mean_max_load']))
                     <= 1e-4 + 0.011 / float(c['mean_max_load']), '%s: maxload_vs_contiguous' % r['method'])
            if r['method'] == 'ilp':
                # README: the Mixtral shape is proven optimal, its bound a valid lower bound
                need(r['quality'] == 'optimal', 'ilp %s: quality %s, not optimal' % (r['mode'], r['quality']))
                bound, gap = num(r, 'bound', 0, True), num(r, 'gap', 0)
                need(bound <= obj * (1 + 1e-5), 'ilp %s: bound %g above the objective %g' % (r['mode'], bound, obj))
                need(gap <= 1e-4, 'ilp %s: gap %g above --mip-gap 1e-4 while optimal' % (r['mode'], gap))
            else:  # a heuristic has no bound: empty fields
                need(r['quality'] == 'heuristic', '%s: quality %s' % (r['method'], r['quality']))
                for k in ('bound', 'gap'):
                    need(r[k] == '', '%s: %s = %s without a bound' % (r['method'], k, r[k]))

    elif kind == 'plan-table':  # the table: a header and a row per method
        text = open(path).read()
        need('mode follow' in text, 'no "mode follow" line')
        lines = text.splitlines()
        hdr = [l.split() for l in lines if l.startswith('method ')]
        need(hdr == [['method', 'solve_s', 'objective', 'bound', 'gap', 'quality', 'max/mean', 'maxload', 'intra_GB',
                      'inter_GB', 't_model_ms', 't/contig', 'inter/c', 'nodes/tok']], 'table header %s' % hdr)
        methods = ['contiguous', 'round-robin', 'greedy', 'eplb', 'ilp']
        body = [l.split() for l in lines if l.split() and l.split()[0] in methods]
        need([b[0] for b in body] == methods, 'method rows %s' % body)
        for b in body:
            need(len(b) == 14, 'row %s: %d fields' % (b, len(b)))
            if len(b) == 14:
                # a heuristic's bound and gap are "-"
                need((b[3], b[4]) == ('-', '-') if b[0] != 'ilp' else '-' not in b, 'row %s: bound, gap' % b)
                v = [float(x) if x != '-' else 0.0 for i, x in enumerate(b) if i not in (0, 5)]
                need(all(math.isfinite(x) for x in v), 'row %s' % b)
                need(float(b[10]) > 0 and float(b[11]) > 0, 'row %s: modelled time' % b)
                need(float(b[13]) == 1, 'row %s: one node, yet tokens reach %s' % (b, b[13]))

    elif kind == 'kernels':  # args: backend, tokens list
        backend, tokens = args[0], [int(t) for t in args[1].split(',')]
        H, FF, E, K = 7168, 2048, 256, 8  # the dsv3 shape
        rows = load(['backend', 'dtype', 'shape', 'tokens', 'rows', 'experts_used', 'grouped_s', 'grouped_tflops',
                     'weight_gbs', 'dense_s', 'dense_tflops', 'ratio'])
        need([int(r['tokens']) for r in rows] == tokens, 'token rows %s, asked %s' % ([r['tokens'] for r in rows], tokens))
        for r in rows:
            need(r['backend'] == backend and r['dtype'].lower() == 'f32' and r['shape'] == 'dsv3',
                 'backend/dtype/shape %s/%s/%s' % (r['backend'], r['dtype'], r['shape']))
            T, n, used = int(r['tokens']), num(r, 'rows', 1), num(r, 'experts_used', 1)
            need(n == T * K, 'rows %s: not tokens x top-%d' % (r['rows'], K))
            need(used <= min(E, n) and (T > 1 or used == K), 'experts_used %s of %d rows' % (r['experts_used'], n))
            tg, td = num(r, 'grouped_s', 0, True), num(r, 'dense_s', 0, True)
            for k in ('grouped_tflops', 'weight_gbs', 'dense_tflops'):
                num(r, k, 0)  # printed to 4 places: a slow sanitizer build may show 0.0000
            num(r, 'ratio', 0, True)
            if tg > 0 and td > 0:
                fl = 6.0 * H * FF * n
                agrees(r, 'grouped_tflops', fl / tg / 1e12, ['grouped_s'], '6*H*F*rows / grouped_s')
                agrees(r, 'dense_tflops', fl / td / 1e12, ['dense_s'], '6*H*F*rows / dense_s')
                agrees(r, 'weight_gbs', used * 3 * H * FF * 4 / tg / 1e9, ['grouped_s'], 'used weights / grouped_s')
                agrees(r, 'ratio', td / tg, ['grouped_s', 'dense_s'], 'dense_s / grouped_s')

    elif kind == 'kernels-fp8':  # args: backend, tokens list
        backend, tokens = args[0], [int(t) for t in args[1].split(',')]
        H, FF, E, K = 7168, 2048, 256, 8  # the dsv3 shape
        rows = load(['backend', 'dtype', 'shape', 'tokens', 'rows', 'experts_used', 'grouped_s', 'grouped_tflops',
                     'weight_gbs', 'dense_s', 'dense_tflops', 'ratio', 'bf16_s', 'vs_bf16', 'max_rel_diff'])
        need([int(r['tokens']) for r in rows] == tokens, 'token rows %s, asked %s' % ([r['tokens'] for r in rows], tokens))
        for r in rows:
            need(r['backend'] == backend and r['dtype'] == 'F8_E4M3' and r['shape'] == 'dsv3',
                 'backend/dtype/shape %s/%s/%s' % (r['backend'], r['dtype'], r['shape']))
            T, n, used = int(r['tokens']), num(r, 'rows', 1), num(r, 'experts_used', 1)
            need(n == T * K, 'rows %s: not tokens x top-%d' % (r['rows'], K))
            need(used <= min(E, n) and (T > 1 or used == K), 'experts_used %s of %d rows' % (r['experts_used'], n))
            tg, td, t16 = num(r, 'grouped_s', 0, True), num(r, 'dense_s', 0, True), num(r, 'bf16_s', 0, True)
            for k in ('grouped_tflops', 'weight_gbs', 'dense_tflops'):
                num(r, k, 0)
            # the FP8 and the bf16 holdings are one model: outputs apart by float rounding only
            need(num(r, 'max_rel_diff', 0) < 1e-4, 'FP8 and bf16 outputs %s apart' % r['max_rel_diff'])
            if tg > 0 and td > 0 and t16 > 0:
                fl = 6.0 * H * FF * n
                agrees(r, 'grouped_tflops', fl / tg / 1e12, ['grouped_s'], '6*H*F*rows / grouped_s')
                agrees(r, 'dense_tflops', fl / td / 1e12, ['dense_s'], '6*H*F*rows / dense_s')
                # a byte per weight: FP8 codes
                agrees(r, 'weight_gbs', used * 3 * H * FF / tg / 1e9, ['grouped_s'], 'used FP8 weights / grouped_s')
                agrees(r, 'ratio', td / tg, ['grouped_s', 'dense_s'], 'dense_s / grouped_s')
                agrees(r, 'vs_bf16', t16 / tg, ['grouped_s', 'bf16_s'], 'bf16_s / grouped_s')

    elif kind == 'kernels-table':  # args: tokens
        lines = open(path).read().splitlines()
        need(any(l.startswith('# backend ref') for l in lines), 'no "# backend ref" line')
        need(['shape', 'tokens', 'rows', 'used', 'grouped', 's', 'TFLOP/s', 'wGB/s', 'dense', 's', 'TFLOP/s', 'ratio'] in
             [l.split() for l in lines], 'no table header')
        body = [l.split() for l in lines if l.startswith('dsv3')]
        need([b[1] for b in body] == args[0].split(','), 'rows %s' % body)
        for b in body:
            need(len(b) == 10, 'row %s: %d fields' % (b, len(b)))
            if len(b) == 10:
                r = dict(zip(['shape', 'tokens', 'rows', 'used', 'grouped_s', 'gt', 'wgb', 'dense_s', 'dt', 'ratio'], b))
                for k in ('grouped_s', 'dense_s', 'ratio'):
                    num(r, k, 0, True)
                for k in ('gt', 'wgb', 'dt'):
                    num(r, k, 0)
                agrees(r, 'ratio', float(r['dense_s']) / float(r['grouped_s']), ['grouped_s', 'dense_s'], 'dense / grouped')

    elif kind == 'a2a':  # args: ranks, transport, sizes
        R, a2a, sizes = int(args[0]), args[1], [int(s) for s in args[2].split(',')]
        rows = load(['ranks', 'nodes', 'a2a', 'hier', 'bytes', 'row_bytes', 'ours_us', 'ours_algbw_gbs', 'ours_busbw_gbs',
                     'raw_us', 'raw_algbw_gbs', 'raw_busbw_gbs', 'ratio', 'full_us', 'ratio_full', 'size', 'full16_us',
                     'full_vs_full16', 'full8_us', 'full_vs_full8', 'agreed_us', 'agreed_vs_ours', 'roomless_us',
                     'roomless_vs_ours', 'unfused_us', 'unfused_vs_ours'])
        need(len(rows) == len(sizes), '%d size rows, expected %d (%s)' % (len(rows), len(sizes), sizes))
        for r, size in zip(rows, sizes):
            need((r['ranks'], r['nodes'], r['a2a'], r['hier']) == (str(R), '1', a2a, '0'),
                 'ranks/nodes/a2a/hier %s/%s/%s/%s' % (r['ranks'], r['nodes'], r['a2a'], r['hier']))
            # tokens are added until a rank's rows reach the size; top-2 adds at most one row more
            b = num(r, 'bytes', 0, True)
            need(size - 0.5 <= b <= 2 * size + 0.5, 'bytes %s for size %d' % (r['bytes'], size))
            need(r['size'] == str(size), 'size %s, asked %d' % (r['size'], size))
            need(num(r, 'row_bytes', 4) == min(size, 8192), 'row_bytes %s for size %d' % (r['row_bytes'], size))
            ours, raw, full = num(r, 'ours_us', 0, True), num(r, 'raw_us', 0, True), num(r, 'full_us', 0, True)
            f16, f8, ag = num(r, 'full16_us', 0, True), num(r, 'full8_us', 0, True), num(r, 'agreed_us', 0, True)
            rl, uf = num(r, 'roomless_us', 0, True), num(r, 'unfused_us', 0, True)
            for k in ('ours_algbw_gbs', 'ours_busbw_gbs', 'raw_algbw_gbs', 'raw_busbw_gbs'):
                num(r, k, 0)  # 0.0000 GB/s at 8 B on a slow machine
            for k in ('ratio', 'ratio_full', 'full_vs_full16', 'full_vs_full8', 'agreed_vs_ours', 'roomless_vs_ours',
                      'unfused_vs_ours'):
                num(r, k, 0, True)
            if ours > 0 and raw > 0 and full > 0 and f16 > 0 and f8 > 0:
                agrees(r, 'ratio', ours / raw, ['ours_us', 'raw_us'], 'ours_us / raw_us')
                agrees(r, 'ratio_full', full / raw, ['full_us', 'raw_us'], 'full_us / raw_us')
                agrees(r, 'full_vs_full16', full / f16, ['full_us', 'full16_us'], 'full_us / full16_us')
                agrees(r, 'full_vs_full8', full / f8, ['full_us', 'full8_us'], 'full_us / full8_us')
                if ag > 0:
                    agrees(r, 'agreed_vs_ours', ag / ours, ['agreed_us', 'ours_us'], 'agreed_us / ours_us')
                if rl > 0:
                    agrees(r, 'roomless_vs_ours', rl / ours, ['roomless_us', 'ours_us'], 'roomless_us / ours_us')
                if uf > 0:
                    agrees(r, 'unfused_vs_ours', uf / ours, ['unfused_us', 'ours_us'], 'unfused_us / ours_us')
                for side, t in (('ours', ours), ('raw', raw)):
                    agrees(r, side + '_algbw_gbs', 2 * b / t / 1e3, ['bytes', side + '_us'], '2 * bytes / ' + side + '_us')
                    agrees(r, side + '_busbw_gbs', 2 * b / t / 1e3 * (R - 1) / R, ['bytes', side + '_us'],
                           'algbw * (n-1)/n')

    elif kind == 'a2a-table':  # args: ranks, sizes
        R, sizes = int(args[0]), [int(x) for x in args[1].split(',')]
        lines = open(path).read().splitlines()
        need(any(l.startswith('# epmoe bench a2a: %d ranks' % R) for l in lines),
             'no "# epmoe bench a2a: %d ranks" line' % R)
        need(['size', 'row', 'ours_us', 'algbw', 'busbw', 'raw_us', 'algbw', 'busbw', 'ratio', 'full_us', 'ratio',
              'full16_us', 'f/f16', 'full8_us', 'f/f8', 'agreed_us', 'a/o', 'roomless_us', 'r/o', 'unfused_us', 'u/o'] in
             [l.split() for l in lines], 'no table header')
        body = [l.split() for l in lines if l.strip() and not l.startswith('#') and not l.split()[0] == 'size']
        need(len(body) == len(sizes), '%d size rows, expected %d (%s)' % (len(body), len(sizes), sizes))
        for b, size in zip(body, sizes):
            need(len(b) == 22, 'row %s: %d fields' % (b, len(b)))
            if len(b) != 22:
                continue
            r = dict(zip(['n', 'unit', 'row', 'ours', 'oa', 'ob', 'raw', 'ra', 'rb', 'ratio', 'full', 'ratio_full',
                          'full16', 'f_f16', 'full8', 'f_f8', 'agreed', 'a_o', 'roomless', 'r_o', 'unfused', 'u_o'], b))
            n = num(r, 'n', 0, True) * {'B': 1, 'KiB': 1024, 'MiB': 1 << 20}.get(r['unit'], float('nan'))
            need(size - 0.5 <= n <= 2 * size + 0.5, 'size %s %s for %d bytes' % (r['n'], r['unit'], size))
            need(r['row'] == str(min(size, 8192)), 'row bytes %s for size %d' % (r['row'], size))
            ours, raw, full = num(r, 'ours', 0, True), num(r, 'raw', 0, True), num(r, 'full', 0, True)
            f16, f8, ag = num(r, 'full16', 0, True), num(r, 'full8', 0, True), num(r, 'agreed', 0, True)
            rl, uf = num(r, 'roomless', 0, True), num(r, 'unfused', 0, True)
            for k in ('oa', 'ob', 'ra', 'rb', 'ratio', 'ratio_full', 'f_f16', 'f_f8', 'a_o', 'r_o', 'u_o'):
                num(r, k, 0)  # a bandwidth may print as 0.000 at 8 B
            if ours > 0 and raw > 0 and full > 0 and f16 > 0 and f8 > 0:
                agrees(r, 'ratio', ours / raw, ['ours', 'raw'], 'ours_us / raw_us')
                agrees(r, 'ratio_full', full / raw, ['full', 'raw'], 'full_us / raw_us')
                agrees(r, 'f_f16', full / f16, ['full', 'full16'], 'full_us / full16_us')
                agrees(r, 'f_f8', full / f8, ['full', 'full8'], 'full_us / full8_us')
                if ag > 0:
                    agrees(r, 'a_o', ag / ours, ['agreed', 'ours'], 'agreed_us / ours_us')
                if rl > 0:
                    agrees(r, 'r_o', rl / ours, ['roomless', 'ours'], 'roomless_us / ours_us')
                if uf > 0:
                    agrees(r, 'u_o', uf / ours, ['unfused', 'ours'], 'unfused_us / ours_us')
        # the agreement's latency beside a blocking MPI_Allreduce, last
        m = re.fullmatch(r'# a bare agreement \(epm_xcomm_agree: a counts phase of zeros, polled with a deadline\): (\S+) us; '
                         r'blocking MPI_Allreduce of one int: (\S+) us; ratio (\S+)', lines[-1] if lines else '')
        need(m is not None, 'no agreement line at the end: %r' % (lines[-1] if lines else ''))
        if m:
            a = dict(zip(('agree', 'allreduce', 'ratio'), m.groups()))
            ta, tr = num(a, 'agree', 0, True), num(a, 'allreduce', 0, True)
            if ta > 0 and tr > 0:
                agrees(a, 'ratio', ta / tr, ['agree', 'allreduce'], 'agreement / MPI_Allreduce')

    elif kind == 'run':  # args: ranks, modes, methods
        R, modes, methods = int(args[0]), args[1].split(','), args[2].split(',')
        rows = load(['ranks', 'nodes', 'mode', 'method', 'prefill_tok_s', 'decode_tok_s', 'intra_bytes', 'inter_bytes',
                     'kv_bytes', 'max_load', 'prefill_vs_contiguous', 'decode_vs_contiguous', 'bytes_vs_contiguous',
                     'kv_cache_bytes_per_rank'])
        need([(r['mode'], r['method']) for r in rows] == [(m, k) for m in modes for k in methods],
             'rows %s' % [(r['mode'], r['method']) for r in rows])
        base, kvmem = {}, {}
        for r in rows:
            need((r['ranks'], r['nodes']) == (str(R), '1'), 'ranks/nodes %s/%s' % (r['ranks'], r['nodes']))
            num(r, 'prefill_tok_s', 0, True)
            num(r, 'decode_tok_s', 0, True)
            num(r, 'max_load', 0, True)
            num(r, 'intra_bytes', 0)
            # R ranks in one node: every byte stays inside it
            need(num(r, 'inter_bytes', 0) == 0, '%s %s: inter-node bytes in one node' % (r['mode'], r['method']))
            kv = num(r, 'kv_bytes', 0)
            # the K/V all-gather is follow mode's, and no placement changes it
            need((kv > 0) == (r['mode'] == 'follow'), '%s %s: kv_bytes %s' % (r['mode'], r['method'], r['kv_bytes']))
            for k in ('prefill_vs_contiguous', 'decode_vs_contiguous', 'bytes_vs_contiguous'):
                num(r, k, 0, True)
            kvmem.setdefault(r['mode'], set()).add(num(r, 'kv_cache_bytes_per_rank', 0, True))
            if r['mode'] not in base:
                base[r['mode']] = r
                need(r['method'] == 'contiguous', 'the first method is not contiguous')
                need(float(r['intra_bytes']) > 0, 'contiguous %s at %d ranks moves nothing' % (r['mode'], R))
                for k in ('prefill_vs_contiguous', 'decode_vs_contiguous', 'bytes_vs_contiguous'):
                    need(float(r[k]) == 1, 'contiguous %s: %s = %s, not 1' % (r['mode'], k, r[k]))
            else:
                c = base[r['mode']]
                tot = lambda x: float(x['intra_bytes']) + float(x['inter_bytes']) + float(x['kv_bytes'])
                agrees(r, 'bytes_vs_contiguous', tot(r) / tot(c), [], 'bytes / contiguous bytes')
                agrees(r, 'prefill_vs_contiguous', float(r['prefill_tok_s']) / float(c['prefill_tok_s']),
                       ['prefill_tok_s', (c, 'prefill_tok_s')], 'prefill / contiguous prefill')
                need(r['kv_bytes'] == c['kv_bytes'],
                     '%s %s: kv_bytes %s, contiguous %s' % (r['mode'], r['method'], r['kv_bytes'], c['kv_bytes']))
        # README: follow keeps every rank's KV caches, home a rank its own: up to R times the fullest
        # home rank's (exactly R times where every sequence's prompt and output length are the same)
        if len(kvmem.get('home', ())) == 1 and len(kvmem.get('follow', ())) == 1:
            h, f = kvmem['home'].pop(), kvmem['follow'].pop()
            need(h < f <= R * h, 'KV cache per rank: follow %g, home %g, not more and at most %d times' % (f, h, R))
        else:
            need(False, 'KV cache per rank differs between methods: %s' % kvmem)

    elif kind == 'mod':  # args: capacity
        rows = load(['capacity', 'intra_bytes', 'inter_bytes', 'bytes_vs_neutral', 'inter_vs_neutral', 'logit_rel_err',
                     'topk_agreement', 'token_agreement', 'blocks_run', 'prefill_tok_s', 'decode_tok_s'])
        need([r['capacity'] for r in rows] == ['1', args[0]], 'capacities %s' % [r['capacity'] for r in rows])
        for r in rows:
            for k in ('intra_bytes', 'inter_bytes', 'logit_rel_err', 'topk_agreement', 'token_agreement'):
                num(r, k, 0)
            for k in ('bytes_vs_neutral', 'inter_vs_neutral', 'blocks_run', 'prefill_tok_s', 'decode_tok_s'):
                num(r, k, 0, True)
            for k in ('topk_agreement', 'token_agreement', 'blocks_run'):
                need(float(r[k]) <= 1, '%s = %s above 1' % (k, r[k]))
        if len(rows) == 2:
            n, c = rows
            for k, v in (('bytes_vs_neutral', 1), ('logit_rel_err', 0), ('topk_agreement', 1), ('token_agreement', 1),
                         ('blocks_run', 1)):
                need(float(n[k]) == v, 'capacity 1: %s = %s, not %g' % (k, n[k], v))
            # capacity < 1 skips blocks, and skipped tokens move no bytes
            need(float(c['blocks_run']) < 1, 'capacity %s ran every block' % args[0])
            need(float(c['bytes_vs_neutral']) < 1, 'capacity %s moved as many bytes' % args[0])
            agrees(c, 'bytes_vs_neutral', (float(c['intra_bytes']) + float(c['inter_bytes'])) /
                   (float(n['intra_bytes']) + float(n['inter_bytes'])), [], 'bytes / capacity-1 bytes')

    elif kind == 'ta-table':  # strengths 0 and 1, ranks in as many virtual nodes
        lines = open(path).read().splitlines()
        need(any(l.startswith('# bench run --ta:') for l in lines), 'no "# bench run --ta:" line')
        need(['strength', 'intra', 'bytes', 'inter', 'bytes', 'B/neut', 'inter/n', 'logit', 'rel', 'err', 'top-k', 'agr',
              'token', 'agr', 'ran', 'prefill', 't/s', 'decode', 't/s'] in [l.split() for l in lines], 'no table header')
        body = [l.split() for l in lines if l[:1].isdigit()]
        need([b[0] for b in body] == ['0', '1'] and all(len(b) == 11 for b in body), 'strength rows %s' % body)
        if len(body) == 2 and all(len(b) == 11 for b in body):
            v = [[float(x) for x in b] for b in body]
            need(all(math.isfinite(x) and x >= 0 for b in v for x in b), 'rows %s' % body)
            need(v[0][1] == 0 and v[1][1] == 0, 'intra-node bytes with one rank a node')
            need(v[0][2] > 0 and v[0][3:5] == [1, 1] and v[0][5] == 0, 'strength 0: %s' % body[0])
            # topology-aware gating keeps tokens nearer: fewer inter-node bytes
            need(0 < v[1][2] < v[0][2], 'strength 1 did not cut inter-node bytes: %s' % body)
            need(abs(v[1][4] - v[1][2] / v[0][2]) <= 5e-4 + 1e-9, 'strength 1: inter/n %s' % body[1][4])
    else:
        bad.append('unknown kind ' + kind)


# each line of the job file: kind, output file, arguments (tab-separated)
failed = 0
for job in open(sys.argv[1]).read().splitlines():
    kind, path, *args = job.split('\t')
    bad.clear()
    try:
        check(kind, args)
    except Exception as e:  # a field that does not parse where the checks above assumed one
        bad.append('%s: %s' % (type(e).__name__, e))
    if bad:
        failed += 1
        print('FAIL: bench output (%s %s) is not as documented:' % (kind, ' '.join(args)))
        for b in bad:
            print('  ' + b)
        for l in open(path).read().splitlines()[:14]:
            print('  | ' + l)
sys.exit(min(failed, 100))
EOF

# ---- bench plan: the Mixtral shape (32 layers, 8 experts, top-2, 8 ranks), 256 tokens ----
ok "bench plan csv" "$E" bench plan --shape mixtral --tokens 256 --time-limit 5 --csv &&
  csvcheck plan home,follow
ok "bench plan table" "$E" bench plan --shape mixtral --mode follow --tokens 256 --time-limit 5 --quiet &&
  csvcheck plan-table
# with online rebalancing over the evaluated half's passes of 16 tokens, hot experts changing every 64
ok "bench plan online" "$E" bench plan --shape mixtral --tokens 256 --time-limit 5 --drift 64 --eplb-interval 2 \
  --pass-tokens 16 --csv &&
  csvcheck plan home,follow online
ok "bench plan online, table" "$E" bench plan --shape mixtral --mode home --tokens 256 --time-limit 5 --eplb-interval 2 \
  --pass-tokens 16 --eplb-min-gain 0.05 --eplb-window 1 --quiet &&
  has "$d/out" "# online: [0-9]* placements taken over the second half's 8 passes"
# passes without online rebalancing: every row timed pass by pass, each pass's busiest rank
# (contiguous plans the same; its time can only grow from the whole half's one busiest rank)
ok "bench plan passes" "$E" bench plan --shape mixtral --mode home --tokens 256 --time-limit 1 --pass-tokens 16 \
  --csv && cp "$d/out" "$d/passes.csv" &&
  ok "bench plan no passes" "$E" bench plan --shape mixtral --mode home --tokens 256 --time-limit 1 --csv &&
  python3 -c 'import csv,sys; r=[{x["method"]: x for x in csv.DictReader(open(f))} for f in sys.argv[1:]]
a, b = float(r[0]["contiguous"]["t_model_s"]), float(r[1]["contiguous"]["t_model_s"])
print(a, b); sys.exit(0 if a > b and r[0]["contiguous"]["bytes_intra"] == r[1]["contiguous"]["bytes_intra"] else 1)' \
    "$d/passes.csv" "$d/out" || fail "bench plan --pass-tokens: $(head -c 600 "$d/passes.csv")"
ok "bench plan passes, table" "$E" bench plan --shape mixtral --mode home --tokens 256 --time-limit 1 \
  --pass-tokens 16 --quiet && has "$d/out" "8 ranks in 1 node, 256 tokens .*, passes of 16 tokens"
# group-limited routing (4 groups, a token's within 1) on the Qwen shape's 2 nodes: eplb keeping the groups
# whole ('eplb-groups') sends each token to one node, the global eplb to more
ok "bench plan groups" "$E" bench plan --shape qwen --mode home --tokens 256 --time-limit 1 --groups 4 --topk-groups 1 \
  --csv &&
  python3 -c 'import csv,sys; r={x["method"]: x for x in csv.DictReader(open(sys.argv[1]))}
print({k: r[k]["nodes_per_token"] for k in r})
sys.exit(0 if float(r["eplb-groups"]["nodes_per_token"]) == 1 and float(r["eplb"]["nodes_per_token"]) > 1 and
         float(r["eplb-groups"]["node_dispatches"]) < float(r["eplb"]["node_dispatches"]) else 1)' "$d/out" ||
  fail "bench plan --groups: $(head -c 600 "$d/out")"
# the hierarchical path's wire and a latency a message (Qwen shape, 2 nodes of 8, passes of 64 tokens: the
# run's exchanges), each against the flat path without one: for the same contiguous placement the path has
# fewer inter-node bytes and more intra-node ones (its gathering and fan-out hops); a latency, the same
# bytes and a longer modelled time (not in the sanitizer pass, EPM_TEST_QUICK=1: the model's arithmetic,
# which the unit and MPI suites run there)
qwen_plan() { "$E" bench plan --shape qwen --mode home --tokens 256 --time-limit 1 --pass-tokens 64 --csv "$@"; }
[ "${EPM_TEST_QUICK:-0}" = 1 ] || {
  ok "bench plan flat" qwen_plan && cp "$d/out" "$d/flat.csv" &&
    ok "bench plan hier" qwen_plan --hier on && cp "$d/out" "$d/hier.csv" &&
    ok "bench plan latency" qwen_plan --inter-latency-us 10 --intra-latency-us 2 &&
    python3 -c 'import csv,sys; f, h, a = ({x["method"]: x for x in csv.DictReader(open(p))} for p in sys.argv[1:])
fc, hc = f["contiguous"], h["contiguous"]
print(hc["bytes_inter"], fc["bytes_inter"], hc["bytes_intra"], fc["bytes_intra"], a["eplb"]["t_model_s"], f["eplb"]["t_model_s"])
sys.exit(0 if float(hc["bytes_inter"]) < float(fc["bytes_inter"]) and float(hc["bytes_intra"]) > float(fc["bytes_intra"])
         and float(a["eplb"]["t_model_s"]) > float(f["eplb"]["t_model_s"]) and
         a["eplb"]["bytes_inter"] == f["eplb"]["bytes_inter"] else 1)' "$d/flat.csv" "$d/hier.csv" "$d/out" ||
    fail "bench plan --hier, --inter-latency-us: $(head -c 600 "$d/hier.csv")"
}
usage plan --hier sometimes --hier sometimes
usage plan --inter-latency-us -1 --inter-latency-us -1
# spare slots (2 a rank): the ratio line of the ILP (its replica search) against eplb
ok "bench plan slots" "$E" bench plan --shape mixtral --mode follow --tokens 256 --time-limit 1 --slots 2 --quiet &&
  has "$d/out" "8 ranks in 1 node, 256 tokens .*, 2 slots a rank (8 spare)" &&
  has "$d/out" "# ilp against eplb with spare slots: modelled time [0-9.]*x, max/mean load"
usage plan --slots "" --slots 0
usage plan --slots "" --shape qwen --slots 3
has "$d/err" "--slots 3: the qwen shape's 64 experts do not fit on its 16 ranks"
usage plan --slots "" --shape mixtral --slots 9
has "$d/err" "--slots 9: the mixtral shape has 8 experts, a rank holds each at most once"
usage plan --topk-groups "" --topk-groups 2
has "$d/err" "--topk-groups 2 limits the groups of --groups, which is not given"
usage plan --eplb-window "" --eplb-window 2
has "$d/err" "--eplb-window is online rebalancing's"
usage plan --drift 0 --drift 0
usage plan --eplb-min-gain "" --eplb-min-gain 0.1
usage plan --pass-tokens 0 --pass-tokens 0
help_ok plan --shape --mode --tokens --time-limit --drift --eplb-interval --eplb-window --eplb-min-gain --eplb-lag --groups --topk-groups --slots --pass-tokens --csv
usage plan --tokens x --tokens x
usage plan --affinity 1.5 --affinity 1.5
usage plan --bogus "" --bogus 1
usage plan --seed "" --seed
usage plan extra "" --quiet extra

# ---- bench kernels: the DeepSeek-V3-like shape at 1 and 3 tokens, two weight sets ----
ok "bench kernels cpu csv" "$E" bench kernels --backend cpu --shape dsv3 --tokens 1,3 --reps 1 --weight-gb 0.001 --csv &&
  csvcheck kernels cpu 1,3
# (the tables: not in the sanitizer pass, EPM_TEST_QUICK=1, which runs the same kernels for the CSVs
# and the reference's in the unit tests; 4 s each under ASan)
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  { ok "bench kernels ref" "$E" bench kernels --backend ref --shape dsv3 --tokens 1 --reps 1 --weight-gb 0.001 &&
      csvcheck kernels-table 1 && has "$d/out" "^# blas: ." &&
      has "$d/out" "^# cpu gemm for up to [0-9]* rows: ."; }
# FP8 weights held as stored beside the same weights dequantised to bf16, both backends
# (the sanitizer pass, EPM_TEST_QUICK=1, times one row count: each is 5 s under ASan)
fp8rows=1,5
[ "${EPM_TEST_QUICK:-0}" = 1 ] && fp8rows=5
ok "bench kernels fp8 csv" "$E" bench kernels --dtype fp8 --shape dsv3 --tokens $fp8rows --reps 1 --weight-gb 0.001 \
  --csv && csvcheck kernels-fp8 cpu $fp8rows
# (not in the sanitizer pass, EPM_TEST_QUICK=1: the reference dequantises every weight it reads, 23 s
# under ASan; the unit tests check its FP8 kernels there)
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  { ok "bench kernels fp8 ref" "$E" bench kernels --dtype FP8 --backend ref --shape dsv3 --tokens 1 --reps 1 \
      --weight-gb 0.001 --csv && csvcheck kernels-fp8 ref 1; }
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  { ok "bench kernels fp8 table" "$E" bench kernels --dtype fp8 --shape dsv3 --tokens 1 --reps 1 --weight-gb 0.001 &&
      has "$d/out" "^# backend cpu F8_E4M3 (blocks of 128 x 128)" && has "$d/out" "bf16 s *vs bf16 *rel diff$" &&
      has "$d/out" "^dsv3 *1 *8 *8 .* [0-9.e+-]*$"; }
usage kernels --dtype cuda --dtype fp8 --backend cuda
usage kernels --dtype fp9 --dtype fp9
# EPM_CPU_ISA caps the CPU GEMM's instruction set; a bad value stops the bench by name
ok "bench kernels, EPM_CPU_ISA=off" env EPM_CPU_ISA=off "$E" bench kernels --shape dsv3 --tokens 1 --reps 1 \
  --weight-gb 0.001 && has "$d/out" "^# cpu gemm for up to [0-9]* rows: the blas (EPM_CPU_ISA off"
EPM_CPU_ISA=sse9 "$E" bench kernels --shape dsv3 --tokens 1 --reps 1 --weight-gb 0.001 >"$d/out" 2>"$d/err"
rc=$?
if [ $rc = 0 ] || ! grep -qF "EPM_CPU_ISA = 'sse9'" "$d/err"; then
  fail "bench kernels, EPM_CPU_ISA=sse9: exit $rc, expected a failure naming EPM_CPU_ISA = 'sse9'"; show
fi
# a CPU figure names the BLAS kernels that made it, and a forced kernel set says so
ok "version" "$E" version && has "$d/out" "^blas: ." && has "$d/out" "^cpu gemm (up to [0-9]* rows): [a-z0-9]*$"
if grep -q "^blas: OpenBLAS" "$d/out"; then
  ok "version, OPENBLAS_CORETYPE" env OPENBLAS_CORETYPE=Prescott "$E" version &&
    has "$d/out" "^blas: OpenBLAS .*Prescott.*(OPENBLAS_CORETYPE=Prescott)$"
fi
help_ok kernels --shape --tokens --reps --backend --kernels --dtype fp8 --weight-gb --csv
usage kernels --kernels gpu --kernels gpu
usage kernels --tokens x --shape dsv3 --weight-gb 0.001 --tokens 1,x
usage kernels --tokens 1,,2 --shape dsv3 --weight-gb 0.001 --tokens 1,,2
usage kernels --reps 0 --reps 0
usage kernels --weight-gb -1 --weight-gb -1
usage kernels --bogus "" --bogus

# ---- bench attention: both head shapes, decode and an 8-query prefill chunk, beside the reference ----
ok "bench attention csv" "$E" bench attention --contexts 40,130 --chunk 8 --reps 1 --csv &&
  { awk -F, 'NR == 1 && $1 == "backend" && $9 == "ratio" && NF == 9 {h = 1}
             NR > 1 && $1 == "cpu" && (($3 == "decode" && $5 == 1) || ($3 == "prefill" && $5 == 8)) &&
               ($4 == 40 || $4 == 130) && $6 > 0 && $7 > 0 && $8 > 0 && $9 > 0 {r++}
             END {exit !(h && r == 8 && NR == 9)}' "$d/out" || { fail "bench attention: rows"; show; }; }
# a bf16 cache: the same rows plus the float32 kernel's time on the same values and the ratio
ok "bench attention bf16 csv" "$E" bench attention --contexts 40,300 --chunk 8 --reps 1 --csv --kv-dtype bf16 &&
  { awk -F, 'function abs(x) {return x < 0 ? -x : x}
             NR == 1 && $9 == "ratio" && $10 == "f32_s" && $11 == "vs_f32" && NF == 11 {h = 1}
             NR > 1 && $1 == "cpu" && $6 > 0 && $7 > 0 && $10 > 0 && abs($11 - $10 / $6) <= 1e-3 * $11 + 1e-4 {r++}
             END {exit !(h && r == 8 && NR == 9)}' "$d/out" || { fail "bench attention bf16: rows"; show; }; }
# an fp8 cache: the same columns; the reference and the kernel read its codes and scales
ok "bench attention fp8 csv" "$E" bench attention --contexts 40,300 --chunk 8 --reps 1 --csv --kv-dtype fp8 &&
  { awk -F, 'function abs(x) {return x < 0 ? -x : x}
             NR == 1 && $9 == "ratio" && $10 == "f32_s" && $11 == "vs_f32" && NF == 11 {h = 1}
             NR > 1 && $1 == "cpu" && $6 > 0 && $7 > 0 && $10 > 0 && abs($11 - $10 / $6) <= 1e-3 * $11 + 1e-4 {r++}
             END {exit !(h && r == 8 && NR == 9)}' "$d/out" || { fail "bench attention fp8: rows"; show; }; }
help_ok attention --contexts --chunk --reps --backend --kv-dtype --csv
usage attention --kv-dtype f16 --kv-dtype f16
usage attention --contexts 0 --contexts 0
usage attention --contexts x --contexts 40,x
usage attention --backend ref --backend ref
usage attention --chunk 0 --chunk 0
usage attention --bogus "" --bogus

# ---- bench sampling: every configuration per vocabulary, greedy the baseline, top-p beside a full sort ----
ok "bench sampling csv" "$E" bench sampling --vocabs 17,3000 --reps 20 --csv &&
  { python3 - "$d/out" <<'EOF' || { fail "bench sampling: rows"; show; }; }
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline='')))  # (a configuration's name holds commas, quoted)
h, body = rows[0], rows[1:]
ok = h[0] == 'vocab' and h[3] == 'vs_greedy' and h[5] == 'vs_sort' and len(h) == 6 and len(body) == 12
ok = ok and all(len(r) == 6 and r[0] in ('17', '3000') and float(r[2]) > 0 and float(r[3]) > 0 for r in body)
ok = ok and sum(r[1] == 'greedy' and float(r[3]) == 1 for r in body) == 2
ok = ok and sum(r[1] == 'top_p=0.9' and float(r[4]) > 0 and abs(float(r[5]) - float(r[4]) / float(r[2])) <= 1e-2 * float(r[5])
                for r in body) == 2
ok = ok and any(',' in r[1] for r in body)
sys.exit(0 if ok else 1)
EOF
help_ok sampling --vocabs --reps --csv
usage run strayword "" --model "$F/mixtral-tiny" strayword
usage sampling --vocabs 1 --vocabs 1
usage sampling --vocabs x --vocabs 40,x
usage sampling --reps 0 --reps 0

# ---- bench a2a: 2 and 3 ranks, 8 B to 2 KiB, 10 ms a size and method ----
ok "bench a2a 2 ranks" mpi -np 2 "$E" bench a2a --a2a alltoallv --hier off --max-bytes 2048 --step 16 --time 0.01 &&
  csvcheck a2a-table 2 8,128,2048
ok "bench a2a 3 ranks csv" mpi -np 3 "$E" bench a2a --a2a p2p --hier off --max-bytes 2048 --step 16 --time 0.01 --csv &&
  csvcheck a2a 3 p2p 8,128,2048
# one rank: nothing leaves it, so the ratio fields are empty, never a number
ok "bench a2a 1 rank csv" mpi -np 1 "$E" bench a2a --max-bytes 64 --step 8 --time 0.01 --csv &&
  { [ "$(awk -F, 'NR > 1 && NF == 26 && $1 == 1 && $5 == 0 && $13 == "" && $15 == "" && $18 == "" && $20 == "" && $22 == "" && $24 == "" && $26 == ""' "$d/out" | wc -l)" = 2 ] ||
    { fail "bench a2a at 1 rank: not two rows of 0 bytes without ratios"; show; }; }
help_ok a2a --max-bytes --step --time --a2a --csv
usage a2a --max-bytes x --max-bytes x
usage a2a --time 0 --time 0
usage a2a --min-bytes 64 --min-bytes 64 --max-bytes 8
usage a2a --bogus "" --bogus

# ---- bench run: the OLMoE fixture, 2 sequences of 8 tokens + 2 new, 2 ranks ----
m=$F/olmoe-tiny
small=(--model "$m" --batch 2 --seq 8 --new 2 --reps 1 --time-limit 1 --workdir "$d/work")
# (online: contiguous rebalanced before the decode pass; other experts hot every 8 tokens)
ok "bench run csv" mpi -np 2 "$E" bench run "${small[@]}" --methods contiguous,eplb,ilp,online --modes home,follow \
  --eplb-interval 1 --eplb-min-gain 0.05 --drift 8 --csv &&
  csvcheck run 2 home,follow contiguous,eplb,ilp,online
for f in home-contiguous home-eplb home-ilp follow-contiguous follow-eplb follow-ilp; do
  grep -q '"format": "epmoe-placement"' "$d/work/$f.json" 2>/dev/null || fail "bench run wrote no placement $f.json in --workdir"
done
[ ! -e "$d/bench-run-work" ] || fail "bench run wrote into the default workdir despite --workdir"
# the sweep with activations in bf16 on the wire: the same replayed routing, half the bytes of each row
cp "$d/out" "$d/run32.csv"
ok "bench run csv, bf16 wire" mpi -np 2 "$E" bench run "${small[@]}" --methods contiguous,eplb --modes home,follow \
  --wire-dtype bf16 --drift 8 --csv &&
  { python3 - "$d/run32.csv" "$d/out" <<'EOF2' || { fail "bench run --wire-dtype bf16: not half the bytes"; show; }
import csv, sys
a = {(r['mode'], r['method']): r for r in csv.DictReader(open(sys.argv[1]))}
b = list(csv.DictReader(open(sys.argv[2])))
ok = len(b) == 4 and all(int(a[(r['mode'], r['method'])][c]) == 2 * int(r[c]) for r in b
                         for c in ('intra_bytes', 'inter_bytes', 'kv_bytes'))
ok = ok and sum(int(r['intra_bytes']) for r in b) > 0
sys.exit(0 if ok else 1)
EOF2
  }
# online rebalancing with its gained experts read from the file (the default) and copied from peers, at
# once and asynchronously (not in the sanitizer pass, EPM_TEST_QUICK=1: test_run_eplb runs them there)
if [ "${EPM_TEST_QUICK:-0}" != 1 ]; then
  ok "bench run online, file and peers" mpi -np 2 "$E" bench run "${small[@]}" \
    --methods contiguous,online,online-peers,online-peers-async --modes home --eplb-interval 2 --eplb-lag 1 --drift 8 \
    --prefill-chunk 2 &&
    { has "$d/out" "# online-peers: [0-9]* rebalances (every 2 passes), [1-9][0-9]* experts moved, [0-9]*\.[0-9] MB copied between ranks, 0\.0 MB read"
      has "$d/out" "# online-peers-async: [0-9]* rebalances (every 2 passes), [1-9][0-9]* experts moved, [0-9]*\.[0-9] MB copied between ranks, 0\.0 MB read"
      has "$d/out" "# online: [0-9]* rebalances (every 2 passes), [1-9][0-9]* experts moved, 0\.0 MB copied between ranks, [0-9]*\.[0-9] MB read"
      ! grep -q "# online-peers.*: .* 0\.0 MB copied" "$d/out" || fail "bench run online-peers: nothing copied"
      ! grep -q "# online: .* 0\.0 MB read" "$d/out" || fail "bench run online: nothing read"; }
fi
usage run --eplb-lag "" --model "$m" --methods contiguous,online-async --eplb-interval 2 --eplb-lag 2
has "$d/err" "--eplb-lag 2: a placement must be in service before the next boundary"
usage run --eplb-lag "" --model "$m" --methods contiguous,online --eplb-interval 2 --eplb-lag 1
has "$d/err" "--eplb-lag is the -async methods'"
usage plan --eplb-lag "" --eplb-lag 1
has "$d/err" "--eplb-lag is online rebalancing's"

# --input: a file's sequences, a dataset's lengths (a request's max_tokens, else --new; its n
# samples): the replayed trace numbers every decoding step's live sequences as the run does, or the
# run refuses it
printf '{"prompt_token_ids": [1, 2, 3, 4, 5], "max_tokens": 3}\n{"prompt_token_ids": [7, 8], "n": 3}\n' \
  >"$d/in.jsonl"
ok "bench run --input" mpi -np 2 "$E" bench run --model "$m" --input "$d/in.jsonl" --max-new-tokens 2 --reps 1 --time-limit 1 \
  --workdir "$d/work" --methods contiguous,eplb --modes home,follow --csv && csvcheck run 2 home,follow contiguous,eplb
# (three at a time, rank 1 one: its second waits, then is prefilled in a pass of its own; not in the
# sanitizer pass, EPM_TEST_QUICK=1, whose --continuous below runs separate prefill)
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  ok "bench run --input --separate-prefill" mpi -np 2 "$E" bench run --model "$m" --input "$d/in.jsonl" --new 2 \
    --reps 1 --workdir "$d/work" --methods contiguous --modes home --max-num-seqs 3 --separate-prefill
# (two at a time: the trace numbers the sequences as continuous batching admits them, in mixed batches)
ok "bench run --input, table" mpi -np 3 "$E" bench run --model "$m" --input "$d/in.jsonl" --new 2 --reps 1 \
  --workdir "$d/work" --methods contiguous --modes follow --max-num-seqs 2 &&
  { grep -q "in.jsonl: 4 sequences, 11 prompt tokens, up to 3 new, zipf" "$d/out" || { fail "bench run --input: header"; show; }; }
# a budget of 2 tokens a pass, decode tokens first: rank 0's second prompt gets 1 token a pass beside the
# first's decoding (2 with --prefill-chunk 2), so its decode tokens fall one pass later among rank 1's, and
# the trace must number them so or the run refuses it (not in the sanitizer pass)
printf '%s\n' '{"prompt_token_ids": [1, 2, 3, 4, 5, 6, 7, 8], "max_tokens": 3}' \
  '{"prompt_token_ids": [5, 6], "max_tokens": 10}' \
  '{"prompt_token_ids": [7, 8, 9, 10, 11, 12], "n": 2, "max_tokens": 4}' >"$d/in2.jsonl"
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  ok "bench run --input --max-num-batched-tokens" mpi -np 3 "$E" bench run --model "$m" --input "$d/in2.jsonl" \
    --new 10 --reps 1 --workdir "$d/work" --methods contiguous --modes home --max-num-seqs 6 \
    --max-num-batched-tokens 2
# a K/V pool of 12 positions (sequences reserve 11, 12, 10 and 10): home mode's pools let rank 0's second
# wait alone, follow mode's one pool admits one sequence at a time; each mode's trace is numbered for its
# own order, or its run refuses it (not in the sanitizer pass)
[ "${EPM_TEST_QUICK:-0}" = 1 ] ||
  ok "bench run --input --max-total-tokens" mpi -np 3 "$E" bench run --model "$m" --input "$d/in2.jsonl" \
    --new 10 --reps 1 --workdir "$d/work" --methods contiguous --modes home,follow --max-total-tokens 12
usage run "--input $d/in.jsonl gives the sequences" "" --model "$m" --input "$d/in.jsonl" --seq 4
usage run "--wire-dtype fp8 --modes home,follow" "" "${small[@]}" --wire-dtype fp8
usage run --wire-dtype f16 "${small[@]}" --wire-dtype f16
ok "bench run --mod" mpi -np 2 "$E" bench run "${small[@]}" --mod schedule --capacities 0.5 --csv &&
  csvcheck mod 0.5
ok "bench run --ta" mpi -np 2 "$E" bench run "${small[@]}" --virtual-nodes 2 --ta 0,1 && csvcheck ta-table
# float32 against bf16 experts, then bf16 dense matrices too, on a bf16 checkpoint: the F32,F32
# row is the baseline (ratios 1, no error), the others keep every greedy token and the logits to
# float32 rounding
"$E" model synth --out "$d/bf16" --hidden 32 --layers 2 --experts 4 --k 2 --ffn 40 --vocab 64 --dtype bf16 \
  >/dev/null 2>&1 || fail "model synth bf16"
ok "bench run --expert-dtypes" mpi -np 2 "$E" bench run --model "$d/bf16" --batch 2 --seq 8 --new 3 --reps 2 \
  --expert-dtypes --csv &&
  { awk -F, 'NR == 1 && $1 == "experts" && $2 == "dense" && $7 == "prefill_vs_bf16" && NF == 10 {h = 1}
             NR == 2 && $1 == "F32" && $2 == "F32" && $5 == 1 && $6 == 1 && $9 == 0 && $10 == 1 {a = 1}
             NR == 3 && $1 == "BF16" && $2 == "F32" && $3 > 0 && $4 > 0 && $9 < 1e-4 && $10 == 1 {b = 1}
             NR == 4 && $1 == "BF16" && $2 == "BF16" && $7 == 1 && $8 == 1 && $9 < 1e-4 && $10 == 1 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --expert-dtypes: rows"; show; }; }
# an FP8 checkpoint: its experts (then its dense matrices) held FP8, and everything dequantised to bf16
# (the last row, the pre/bf16 baseline)
ok "bench run --expert-dtypes, FP8" mpi -np 2 "$E" bench run --model "$F/deepseekv3-fp8-tiny" --batch 2 --seq 8 \
  --new 3 --reps 1 --expert-dtypes --csv &&
  { awk -F, 'NR == 3 && $1 == "F8_E4M3" && $2 == "F32" && $9 < 1e-4 && $10 == 1 {a = 1}
             NR == 4 && $1 == "F8_E4M3" && $2 == "F8_E4M3" && $7 > 0 && $8 > 0 && $9 < 1e-4 && $10 == 1 {b = 1}
             NR == 5 && $1 == "BF16" && $2 == "BF16" && $7 == 1 && $8 == 1 && $9 < 1e-4 && $10 == 1 {c = 1}
             END {exit !(a && b && c && NR == 5)}' "$d/out" || { fail "bench run --expert-dtypes, FP8: rows"; show; }; }
# MLA cached expanded (the baseline row) and as its latent: (32 + 8) / (2 x 4 heads x 24) of the cache,
# every greedy token and the logits to float32 rounding; refused for a model without MLA
ok "bench run --mla-cache" mpi -np 2 "$E" bench run --model "$F/deepseekv3-tiny" --batch 2 --seq 8 --new 3 --reps 1 \
  --mla-cache --csv &&
  { awk -F, 'NR == 1 && $1 == "mla_cache" && NF == 9 {h = 1}
             NR == 2 && $1 == "expanded" && $3 == 1 && $6 == 1 && $7 == 1 && $8 == 0 && $9 == 1 {a = 1}
             NR == 3 && $1 == "latent" && $3 == 0.2083 && $4 > 0 && $5 > 0 && $8 < 1e-4 && $9 == 1 {b = 1}
             END {exit !(h && a && b && NR == 3)}' "$d/out" || { fail "bench run --mla-cache: rows"; show; }; }
usage run --mla-cache "" --model "$m" --mla-cache
ok "bench run --kv-dtypes" mpi -np 3 "$E" bench run --model "$F/qwen2moe-tiny" --batch 3 --seq 8 --new 3 --reps 1 \
  --kv-dtypes --modes follow --csv &&
  { awk -F, 'NR == 1 && $1 == "kv_dtype" && $3 == "kv_vs_f32" && NF == 9 {h = 1}
             NR == 2 && $1 == "F32" && $2 > 0 && $3 == 1 && $6 == 1 && $7 == 1 && $8 == 0 && $9 == 1 {a = 1; b32 = $2}
             NR == 3 && $1 == "BF16" && $2 * 2 == b32 && $3 == 0.5 && $4 > 0 && $5 > 0 && $8 > 0 && $8 < 0.05 {b = 1}
             NR == 4 && $1 == "F8_E4M3" && $2 * 64 == b32 * 20 && $3 == 0.3125 && $4 > 0 && $5 > 0 && $8 > 0 &&
               $8 < 0.1 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --kv-dtypes: rows"; show; }; }
usage run "--kv-dtypes --mla-cache" "" --model "$m" --kv-dtypes --mla-cache
# activations between ranks in bf16: half the bytes (exactly, unless the rounding tips a router), the logits within
# bf16 rounding of float32's; fp8 dispatch (home mode): fewer bytes still, the logits within its rounding
ok "bench run --wire-dtypes" mpi -np 3 "$E" bench run --model "$F/mixtral-tiny" --batch 3 --seq 8 --new 3 --reps 1 \
  --wire-dtypes --csv &&
  { awk -F, 'NR == 1 && $1 == "wire_dtype" && $3 == "bytes_vs_f32" && $5 == "comm_f32_over_this" && NF == 11 {h = 1}
             NR == 2 && $1 == "F32" && $2 > 0 && $3 == 1 && $4 > 0 && $5 == 1 && $10 == 0 && $11 == 1 {a = 1; b32 = $2}
             NR == 3 && $1 == "BF16" && $3 > 0.45 && $3 < 0.55 && $4 > 0 && $5 > 0 && $10 > 0 && $10 < 0.01 {b = 1}
             NR == 4 && $1 == "F8_E4M3" && $3 > 0.3 && $3 < 0.45 && $4 > 0 && $10 > 0 && $10 < 0.05 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --wire-dtypes: rows"; show; }; }
usage run "--wire-dtypes --kv-dtypes" "" --model "$m" --wire-dtypes --kv-dtypes
# the counts phase three ways: every hop agrees again without room, almost none with it, and with rows riding
# (decode's small hops) none steps after its counts; the same hops, logits and tokens each way
ok "bench run --room" mpi -np 3 "$E" bench run --model "$F/mixtral-tiny" --batch 3 --seq 8 --new 3 --reps 1 \
  --room --csv &&
  { awk -F, 'NR == 1 && $1 == "counts" && $3 == "hops_agreed" && $4 == "hops_fused" && NF == 12 {h = 1}
             NR == 2 && $1 == "none" && $2 > 0 && $3 == $2 && $4 == 0 && $6 == 1 && $11 == 0 && $12 == 1 {a = 1; n = $2}
             NR == 3 && $1 == "room" && $2 == n && $3 < n && $4 == 0 && $11 == 0 && $12 == 1 {b = 1}
             NR == 4 && $1 == "riding" && $2 == n && $3 == 0 && $4 > 0 && $4 <= n && $11 == 0 && $12 == 1 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --room: rows"; show; }; }
# the prompts in one prefill pass (the baseline row), then in passes of 5 and of 3 of each rank's prompt
# tokens: 4 and 6 passes for the fuller rank's 16, a peak resident set measured, the same tokens, and the
# last logits to float32 rounding
ok "bench run --prefill-chunks" mpi -np 2 "$E" bench run --model "$F/olmoe-tiny" --batch 3 --seq 8 --new 3 --reps 1 \
  --prefill-chunks 5,3 --modes follow --csv &&
  { awk -F, 'NR == 1 && $1 == "prefill_chunk" && $4 == "peak_vs_one_pass" && NF == 8 {h = 1}
             NR == 2 && $1 == 0 && $2 == 1 && $3 > 0 && $4 == 1 && $5 > 0 && $6 == 1 && $7 == 0 && $8 == 1 {a = 1}
             NR == 3 && $1 == 5 && $2 == 4 && $3 > 0 && $5 > 0 && $7 < 1e-5 && $8 == 1 {b = 1}
             NR == 4 && $1 == 3 && $2 == 6 && $3 > 0 && $5 > 0 && $7 < 1e-5 && $8 == 1 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --prefill-chunks: rows"; show; }; }
usage run --prefill-chunks 0 --model "$m" --prefill-chunks 4,0
# 7 sequences of 1 to 6 new tokens, at most 2 and 3 at once: in static batches (the baseline),
# continuously with separate prefill passes, and in mixed batches; the reference kernels, the same
# tokens each way; continuously fewer decoding steps, mixed fewer passes
# (the sanitizer pass, EPM_TEST_QUICK=1: at 2 only)
conts=2,3
[ "${EPM_TEST_QUICK:-0}" = 1 ] && conts=2
ok "bench run --continuous" mpi -np 2 "$E" bench run --model "$F/mixtral-tiny" --batch 7 --seq 6 --new 6 --reps 1 \
  --continuous $conts --kernels ref --modes follow --csv &&
  { awk -F, 'NR == 1 && $1 == "max_num_seqs" && $2 == "way" && $7 == "vs_static" && $14 == "itl_p99_ms" &&
               NF == 14 {h = 1}
             NR > 1 && $3 > 0 && $4 > 0 && $5 > 7 && $6 > 0 && $8 > 0 && $8 < 1 && $9 > 0 && $10 == 1 &&
               $11 > 0 && $12 >= $11 && $13 > 0 && $14 >= $13 {n++}
             NR > 1 && $2 == "static" && $7 == 1 {st[$1] = $4; gen[$1] = $5; n++}
             NR > 1 && $2 == "separate" && $4 <= st[$1] && $5 == gen[$1] {sep[$1] = $3; n++}
             NR > 1 && $2 == "mixed" && $3 <= sep[$1] && $5 == gen[$1] {n++}
             NR == 2 && $1 == 2 {a = 1} NR == 5 && $1 == 3 {b = 1}
             END {q = '"$([ "$conts" = 2 ] && echo 1 || echo 0)"'
                  exit !(h && a && (b || q) && n == (q ? 6 : 12) && NR == (q ? 4 : 7))}' "$d/out" ||
    { fail "bench run --continuous: rows"; show; }; }
# online serving: the 7 sequences offline (the baseline row), then arriving at 100 and 400 per second,
# prompts of 6 in chunks of 4; the same tokens, TTFT and end to end ordered, no wait offline
ok "bench run --request-rates" mpi -np 3 "$E" bench run --model "$F/mixtral-tiny" --batch 7 --seq 6 --new 4 \
  --reps 1 --request-rates 100,400 --burstiness 2 --prefill-chunk 4 --kernels ref --modes home --csv &&
  { awk -F, 'NR == 1 && $1 == "request_rate" && $7 == "vs_offline" && $15 == "token_agreement" && NF == 15 {h = 1}
             NR == 2 && $1 == "inf" && $7 == 1 && $8 == 0 {n++}
             NR > 2 && $2 == 2 && $8 >= 0 {n++}
             NR > 1 && $3 == 7 && $4 > 0 && $5 > 0 && $6 > 0 && $9 > 0 && $10 >= $9 && $13 > 0 && $14 >= $13 &&
               $15 == 1 {m++}
             END {exit !(h && n == 3 && m == 3 && NR == 4)}' "$d/out" ||
    { fail "bench run --request-rates: rows"; show; }; }
# a serving trace (BurstGPT's form; its failed request left out, its first 4 requests taken): offline,
# then as they arrived; intervals of 10, 20 and 30 ms: 1/CV^2 = 0.02^2 / (0.0002 / 3) = 6
printf '%s\n' 'Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type' \
  '0,ChatGPT,6,3,9,Conversation log' '0.005,ChatGPT,5,0,5,Conversation log' '0.01,GPT-4,4,2,6,API log' \
  '0.03,ChatGPT,7,4,11,API log' '0.06,ChatGPT,3,1,4,API log' '0.5,ChatGPT,9,9,18,API log' >"$d/burst.csv"
ok "bench run --trace-arrivals" mpi -np 2 "$E" bench run --model "$F/mixtral-tiny" --input "$d/burst.csv" \
  --num-prompts 4 --trace-arrivals --reps 1 --kernels ref --modes home --csv &&
  { awk -F, 'NR == 2 && $1 == "inf" && $3 == 4 && $15 == 1 {a = 1}
             NR == 3 && $1 == "trace" && $2 == 6 && $3 == 4 && $4 >= 0.06 && $15 == 1 {b = 1}
             END {exit !(a && b && NR == 3)}' "$d/out" ||
    { fail "bench run --trace-arrivals: rows"; show; }; }
# (the header, Mooncake's form and prefix caching: not in the sanitizer pass, EPM_TEST_QUICK=1, where
# test_serving_trace and test_run cover the reading and the runs)
if [ "${EPM_TEST_QUICK:-0}" != 1 ]; then
ok "bench run, a trace's header" mpi -np 1 "$E" bench run --model "$F/mixtral-tiny" --input "$d/burst.csv" \
  --trace-arrivals --time-scale 0.5 --reps 1 --kernels ref --modes home &&
  { grep -q "burst.csv: 5 sequences, 29 prompt tokens, up to 9 new (BurstGPT: the first 5 of 5 requests over 0.25 s \
at --time-scale; rows without prompt or output tokens left out: 1; prompt tokens drawn)" "$d/out" &&
    awk '$1 == "trace" && $3 == 5 && $4 >= 0.25 && $4 < 0.5 {t = 1} END {exit !t}' "$d/out" ||
    { fail "bench run, a trace's header and its times at half scale"; show; }; }
# Mooncake's JSON lines (milliseconds; the second request shares the first's 512-token hash block)
printf '%s\n' '{"timestamp": 0, "input_length": 9, "output_length": 2, "hash_ids": [0]}' \
  '{"timestamp": 20, "input_length": 12, "output_length": 3, "hash_ids": [0]}' \
  '{"timestamp": 45, "input_length": 5, "output_length": 1, "hash_ids": [1]}' >"$d/mooncake.jsonl"
ok "bench run, Mooncake's trace" mpi -np 2 "$E" bench run --model "$F/mixtral-tiny" --input "$d/mooncake.jsonl" \
  --trace-arrivals --reps 1 --kernels ref --modes home --csv &&
  { awk -F, 'NR == 3 && $1 == "trace" && $3 == 3 && $4 >= 0.045 && $15 == 1 {t = 1} END {exit !(t && NR == 3)}' \
    "$d/out" || { fail "bench run, Mooncake's trace: rows"; show; }; }
# prefix caching against none: 8 prompts of 40 tokens sharing their first 36, two places a rank. Without
# the in-batch wait each rank's first two prefill all 40 and its later two copy the 36 shared positions
# from them (144 copied, 320 - 144 computed); with it (36 >= 32 positions in flight) the second waits
# for the first and copies too (216 copied); the same tokens
ok "bench run --prefix-caching" mpi -np 2 "$E" bench run --model "$F/mixtral-tiny" --batch 8 --seq 40 --new 4 \
  --shared-prefix 36 --max-num-seqs 4 --prefix-caching --reps 1 --kernels ref --csv &&
  { awk -F, 'NR == 1 && $1 == "prefix_caching" && $9 == "token_agreement" && NF == 9 {h = 1}
             NR == 2 && $1 == "off" && $2 == 320 && $3 == 0 && $5 == 1 && $9 == 1 {a = 1}
             NR == 3 && $1 == "no_wait" && $2 == 176 && $3 == 144 && $4 > 0 && $6 > 0 && $9 == 1 {b = 1}
             NR == 4 && $1 == "on" && $2 == 104 && $3 == 216 && $4 > 0 && $6 > 0 && $9 == 1 {c = 1}
             END {exit !(h && a && b && c && NR == 4)}' "$d/out" || { fail "bench run --prefix-caching: rows"; show; }; }
# two conversations of three turns, one a rank: each later turn's prompt is the last one's (8, then 17
# tokens), its 4 outputs and 5 more, and starts with the 11, then 20 rows the last turn kept (its prompt
# and the 3 outputs it fed): 62 of 8 + 17 + 26 prompt tokens a conversation copied, the same tokens
ok "bench run --prefix-caching --turns" mpi -np 2 "$E" bench run --model "$F/mixtral-tiny" --batch 2 --seq 8 \
  --new 4 --turns 3 --turn-tokens 5 --prefix-caching --reps 1 --kernels ref --csv &&
  { awk -F, 'NR == 2 && $1 == "off" && $2 == 102 && $3 == 0 && $9 == 1 {a = 1}
             NR == 3 && $1 == "no_wait" && $2 == 40 && $3 == 62 && $9 == 1 {c = 1}
             NR == 4 && $1 == "on" && $2 == 40 && $3 == 62 && $9 == 1 {b = 1}
             END {exit !(a && b && c && NR == 4)}' "$d/out" || { fail "bench run --prefix-caching --turns: rows"; show; }; }
fi
usage run --turns "" --model "$m" --turns 2
usage run --turn-tokens "" --model "$m" --prefix-caching --turn-tokens 5
usage run --shared-prefix "" --model "$m" --seq 4 --shared-prefix 5
usage run --trace-arrivals "" --model "$m" --trace-arrivals
usage run --num-prompts "" --model "$m" --num-prompts 3
usage run "--time-scale --trace-arrivals" "" --model "$m" --input "$d/burst.csv" --time-scale 2
usage run --request-rates inf --model "$m" --request-rates 10,inf
usage run --request-rates 0 --model "$m" --request-rates 0
usage run --prefill-chunk -1 --model "$m" --prefill-chunk -1
usage run "--max-num-batched-tokens --prefill-chunk" "" --model "$m" --max-num-batched-tokens 4 --prefill-chunk 2
usage run "--burstiness --request-rates" "" --model "$m" --burstiness 2
usage run "--request-rates --continuous" "" --model "$m" --request-rates 5 --continuous 2
usage run "--continuous --prefill-chunks" "" --model "$m" --continuous 2 --prefill-chunks 4
usage run --prefill-chunks 1,2,3,4,5,6,7,8,9 --model "$m" --prefill-chunks 1,2,3,4,5,6,7,8,9
usage run "--prefill-chunks --kv-dtypes" "" --model "$m" --prefill-chunks 4 --kv-dtypes
usage run --max-num-seqs -1 --model "$m" --max-num-seqs -1
help_ok run --model --batch --seq --new --input --max-num-seqs --separate-prefill --methods --modes --workdir --reps --warmup --ta --mod --capacities \
  --expert-dtypes --mla-cache --kv-dtypes --wire-dtypes --wire-dtype --prefill-chunks --prefill-chunk --max-num-batched-tokens --continuous --request-rates --burstiness --prefix-caching --turns --turn-tokens --eplb-interval --eplb-window --eplb-min-gain --eplb-lag --plan-seed --drift --csv
usage run --model "" --batch 2
usage run --batch x --model "$m" --batch x
usage run --kernels foo --model "$m" --kernels foo
usage run --methods foo --model "$m" --methods contiguous,foo
usage run --plan-seed -1 --model "$m" --plan-seed -1
usage run --drift 0 --model "$m" --drift 0
usage run --eplb-min-gain "" --model "$m" --methods contiguous,eplb --eplb-min-gain 0.1
usage run "--drift" "" --model "$m" --drift 64 --prefill-chunks 4
has "$d/err" "--drift shapes the trace that the placements' comparison replays"
usage run --methods "" --model "$m" --methods contiguous,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb,eplb
has "$d/err" "lists 17 methods, at most 16"
usage run --eplb-interval 0 --model "$m" --eplb-interval 0
usage run --eplb-interval "" --model "$m" --methods contiguous,eplb --eplb-interval 2
has "$d/err" "the 'online' method's, which --methods (contiguous,eplb) does not list"
usage run --eplb-window "" --model "$m" --methods contiguous,online --eplb-window 8
has "$d/err" "--eplb-window 8: the loads of at most the --eplb-interval's 4 passes count"
usage run --methods ilp,contiguous --model "$m" --methods ilp,contiguous
usage run --capacities abc --model "$m" --mod schedule --capacities abc
usage run --ta -1 --model "$m" --ta 0,-1
usage run --warmup -1 --model "$m" --warmup -1
usage run --bogus "" --model "$m" --bogus

# ---- epmoe bench itself ----
ok "bench --help" "$E" bench --help && for b in plan kernels a2a run; do
  grep -q "^  $b " "$d/out" || fail "bench --help does not list $b"
done
usage nope "" nope

python3 -S "$d/check.py" "$d/jobs"
fails=$((fails + $?))

checks_done "all bench checks passed" "$fails failure(s)"
