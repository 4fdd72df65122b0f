#!/usr/bin/env python3
"""SVG charts of the CSV output of `epmoe bench plan|kernels|a2a|run --csv`.

Standard library only: no matplotlib, no numpy. Run `plot.py --help`.

Each input file holds the CSV of one or more runs of the benchmarks: the kind
of each block of rows is told by its header line (the column names), and a
header line may come again in the middle of a file (runs concatenated with
cat), where it starts a new block. Blank lines and lines starting with '#'
are skipped, and so, with a note on stderr, is a whole file of a benchmark
that has no charts (`bench sampling`, `bench attention`).

The SVG files are built in memory first; only when every chart is built are
they written, each to a temporary file in the output folder and renamed into
place, so bad data never leaves a partial set of charts behind.

SVG structure, for whoever reads the charts back (tests/cli/test_plot.sh
does): every data point is a <circle class="point"> (line charts) or a
<rect class="point"> (bar charts) with data-x / data-y (the plotted values)
and data-src (file:line of its CSV row) attributes and a <title> tooltip;
points sit in <g class="series" data-series="NAME">; reference lines are
<line class="ref" data-ref="VALUE">; the legend is <g class="legend"> with
one <g class="entry" data-series="NAME"> per series.
"""

import csv
import math
import os
import re
import sys
import tempfile

PROG = 'plot.py'

USAGE = """usage: python3 bench/plot.py [--out DIR] FILE.csv...

Reads the CSV of `epmoe bench plan|kernels|a2a|run --csv` (several files, or
runs concatenated into one file with their header lines repeated; FILE '-' is
standard input) and writes SVG charts to DIR/<bench>_<chart>.svg, printing
the paths written, one per line:
  a2a_busbw.svg                 bus bandwidth (GB/s) vs size, ours and raw MPI_Alltoallv, per rank count
  a2a_ratio.svg                 ours / raw time vs size, target 1.25
  kernels_tflops.svg            grouped expert FFN and dense GEMM ceiling TFLOP/s vs tokens
  kernels_ratio.svg             grouped / dense vs tokens, targets 0.7 (CPU) and 0.6 (GPU)
  plan_t_vs_contiguous.svg      modelled layer time relative to contiguous, per shape, mode, method
  plan_inter_vs_contiguous.svg  inter-node bytes relative to contiguous, per shape, mode, method
  run_tokens.svg                prefill and decode tokens/s per mode and method vs ranks
  run_speedup.svg               prefill and decode tokens/s relative to contiguous vs ranks

options:
  -o, --out DIR     output folder (default: the current one; created if missing)
  -h, --help        this text

Exit status: 0 written, 1 bad data or a file that cannot be read or written
(nothing written), 2 bad usage."""


class Usage(Exception):
    """bad command line: exit 2"""


class Bad(Exception):
    """bad data, or a file that cannot be read or written: exit 1"""


def note(msg):
    sys.stderr.write('%s: note: %s\n' % (PROG, msg))


# ---------------------------------------------------------------------------
# reading

# the columns of each benchmark's CSV header, with what each must hold:
# 's' text, 'n' a number, 'n?' a number or empty (left empty by the bench
# where it has no value: a heuristic's bound and gap; a ratio at one rank)
KINDS = {
    'plan': [('shape', 's'), ('mode', 's'), ('method', 's'), ('solve_s', 'n'), ('objective', 'n?'), ('bound', 'n?'),
             ('gap', 'n?'), ('quality', 's'), ('max_over_mean_load', 'n'), ('mean_max_load', 'n'),
             ('bytes_intra', 'n'), ('bytes_inter', 'n'), ('t_model_s', 'n'), ('t_vs_contiguous', 'n'),
             ('inter_vs_contiguous', 'n'), ('maxload_vs_contiguous', 'n')],
    'kernels': [('backend', 's'), ('dtype', 's'), ('shape', 's'), ('tokens', 'n'), ('rows', 'n'),
                ('experts_used', 'n'), ('grouped_s', 'n'), ('grouped_tflops', 'n'), ('weight_gbs', 'n'),
                ('dense_s', 'n'), ('dense_tflops', 'n'), ('ratio', 'n')],
    'a2a': [('ranks', 'n'), ('nodes', 'n'), ('a2a', 's'), ('hier', 'n'), ('bytes', 'n'), ('row_bytes', 'n'),
            ('ours_us', 'n'), ('ours_algbw_gbs', 'n'), ('ours_busbw_gbs', 'n'), ('raw_us', 'n'),
            ('raw_algbw_gbs', 'n'), ('raw_busbw_gbs', 'n'), ('ratio', 'n?'), ('full_us', 'n'), ('ratio_full', 'n?'),
            ('size', 'n')],
    'run': [('ranks', 'n'), ('nodes', 'n'), ('mode', 's'), ('method', 's'), ('prefill_tok_s', 'n'),
            ('decode_tok_s', 'n'), ('intra_bytes', 'n'),
            ('inter_bytes', 'n'), ('kv_bytes', 'n'), ('max_load', 'n'), ('prefill_vs_contiguous', 'n'),
            ('decode_vs_contiguous', 'n'), ('bytes_vs_contiguous', 'n'), ('kv_cache_bytes_per_rank', 'n')],
}

# benches whose CSV has no plots: a file of theirs among the inputs is skipped with a note
UNPLOTTED = [(['vocab', 'config', 'us_per_token'], 'epmoe bench sampling'),
             (['backend', 'shape', 'phase', 'context', 'queries'], 'epmoe bench attention')]

NUMBER = re.compile(r'^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:inf|infinity|nan)$', re.I)


def detect(fields):
    """the benchmark whose header these fields are, or None: every column of
    the benchmark's header present (more are allowed), no name twice"""
    names = set(fields)
    if len(names) != len(fields):
        return None
    best = None
    for kind, cols in KINDS.items():
        if all(c in names for c, _ in cols) and (best is None or len(cols) > len(KINDS[best])):
            best = kind
    return best


class Block:
    """the rows under one header line"""

    def __init__(self, kind, line, header):
        self.kind, self.line, self.header = kind, line, header
        self.rows = []


def read(path, blocks):
    """appends the blocks of one file to blocks"""
    name = '<stdin>' if path == '-' else path
    try:
        if path == '-':
            data = sys.stdin.read()
        else:
            with open(path, encoding='utf-8', newline='') as f:
                data = f.read()
    except OSError as e:
        raise Bad('%s: cannot read: %s' % (name, e.strerror or e))
    except UnicodeDecodeError as e:
        raise Bad('%s: not a UTF-8 text file (byte %d)' % (name, e.start))
    if data.startswith('\ufeff'):
        data = data[1:]
    block, seen, rows = None, False, 0
    for n, line in enumerate(data.split('\n'), 1):
        line = line.rstrip('\r')
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        seen = True
        try:
            fields = [f.strip() for f in next(csv.reader([line], strict=True))]
        except csv.Error as e:
            raise Bad('%s:%d: not a CSV line (%s): %s' % (name, n, e, line[:60]))
        kind = detect(fields)
        if kind:
            block = Block(kind, n, fields)
            blocks.append(block)
            continue
        if block is None:
            for cols, bench in UNPLOTTED:
                if fields[:len(cols)] == cols:  # (a whole file of a bench without plots: said and passed over)
                    note('%s: the CSV of %s, which has no plots: skipped' % (name, bench))
                    return
            hint = ''
            if fields and fields[0] in ('capacity', 'strength'):
                hint = ' (bench run --mod / --ta rows are not plotted)'
            raise Bad('%s:%d: unknown header %r: not the CSV of epmoe bench plan, kernels, a2a or run (--csv)%s'
                      % (name, n, line[:80], hint))
        h = block.header
        if len(fields) != len(h):
            if len(fields) < len(h):
                raise Bad('%s:%d: %d fields, the header (line %d) has %d: column %s (field %d) is missing'
                          % (name, n, len(fields), block.line, len(h), h[len(fields)], len(fields) + 1))
            raise Bad('%s:%d: %d fields, the header (line %d) has %d: field %d %r is beyond the header'
                      % (name, n, len(fields), block.line, len(h), len(h) + 1, fields[len(h)]))
        types = dict(KINDS[block.kind])
        row = {'_src': '%s:%d' % (os.path.basename(name), n)}
        for i, (col, v) in enumerate(zip(h, fields)):
            t = types.get(col, 's')
            if t == 's':
                row[col] = v
            elif v == '':
                if t != 'n?':
                    raise Bad('%s:%d: column %s (field %d) is empty, expected a number' % (name, n, col, i + 1))
                row[col] = None
            elif NUMBER.match(v):
                row[col] = float(v)
            else:
                raise Bad('%s:%d: column %s (field %d): %r is not a number' % (name, n, col, i + 1, v))
        block.rows.append(row)
        rows += 1
    if not seen:
        raise Bad('%s: empty: no CSV header' % name)
    if not rows:
        raise Bad('%s:%d: a header and no data rows' % (name, block.line))


# ---------------------------------------------------------------------------
# numbers and axes


def fmt(v, digits=4):
    """a number, short"""
    if v is None or not math.isfinite(v):
        return str(v)
    if v == 0:
        return '0'
    if v == int(v) and abs(v) < 1e7:
        return '%d' % v
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        m, e = ('%.*e' % (digits - 1, v)).split('e')
        m = m.rstrip('0').rstrip('.')
        return '%se%d' % (m, int(e))
    s = '%.*g' % (digits, v)
    return s


def fmt_bytes(v):
    """a size in B / KiB / MiB / GiB"""
    for unit, div in (('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
        if v >= div:
            return '%s %s' % (fmt(v / div, 3), unit)
    return '%s B' % fmt(v, 3)


def nice_step(span, target):
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw * 0.999:
            return m * mag
    return 10 * mag


def linear_ticks(lo, hi, target=6):
    """nice ticks and the domain they span, covering lo..hi"""
    if hi - lo <= 0:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, target - 1)
    t0, t1 = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [k * step for k in range(t0, t1 + 1)]
    ticks = [0.0 if abs(t) < step * 1e-9 else t for t in ticks]
    dec = max(0, -int(math.floor(math.log10(step) + 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6) == 2.5 else 0))
    return ticks, (ticks[0], ticks[-1]), dec


class Axis:
    """scale: 'lin', 'log2' or 'log10'. values: the data (and reference
    values) it must show; ticks: explicit tick values (optional);
    label: the axis title; tickfmt: value -> tick label"""

    def __init__(self, scale, values, label, tickfmt=None, ticks=None):
        self.scale, self.label = scale, label
        vals = [v for v in values if v is not None and math.isfinite(v) and (scale == 'lin' or v > 0)]
        if not vals:
            vals = [1.0]
        lo, hi = min(vals), max(vals)
        if scale == 'lin':
            self.ticks, (self.d0, self.d1), dec = linear_ticks(lo, hi)
            self.tickfmt = tickfmt or (lambda v, d=dec: '%.*f' % (d, v))
            if ticks is not None:
                self.ticks = ticks
            return
        b = 2.0 if scale == 'log2' else 10.0
        l0, l1 = math.log(lo, b), math.log(hi, b)
        pad = (l1 - l0) * 0.08 if l1 > l0 else (1.0 if b == 2 else 0.3)
        self.d0, self.d1 = b ** (l0 - pad), b ** (l1 + pad)
        self.tickfmt = tickfmt or fmt
        if ticks is not None:
            self.ticks = ticks
        elif b == 2:
            e0, e1 = math.ceil(l0 - pad - 1e-9), math.floor(l1 + pad + 1e-9)
            step = next(s for s in (1, 2, 5, 10, 20, 50) if (e1 - e0) // s + 1 <= 10)
            self.ticks = [2.0 ** e for e in range(e0, e1 + 1) if e % step == 0]
        else:
            self.ticks = self.log10_ticks(l0 - pad, l1 + pad)

    @staticmethod
    def log10_ticks(a, b):
        """ticks between 10^a and 10^b: decades over 2.5 decades or more, 1-2-5 over
        one or more, else (or when those give under 3) nice linear ones"""
        e0, e1 = math.floor(a), math.ceil(b)
        for mult, least in (((1,), 2.5), ((1, 2, 5), 1.0)):
            if b - a < least:
                continue
            t = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mult]
            t = [v for v in t if a <= math.log10(v) <= b]
            if len(t) >= 3:
                if len(t) > 10:  # decades only: every k-th
                    k = math.ceil(len(t) / 9)
                    t = [v for v in t if round(math.log10(v)) % k == 0]
                return t
        lo, hi = 10 ** a, 10 ** b
        for target in (5, 8, 12):
            ticks, _, _ = linear_ticks(lo, hi, target)
            t = [v for v in ticks if lo <= v <= hi and v > 0]
            if len(t) >= 3:
                return t
        return t

    def frac(self, v):
        if self.scale == 'lin':
            return (v - self.d0) / (self.d1 - self.d0)
        return (math.log(v) - math.log(self.d0)) / (math.log(self.d1) - math.log(self.d0))

    def ok(self, v):
        return v is not None and math.isfinite(v) and (self.scale == 'lin' or v > 0)


# ---------------------------------------------------------------------------
# SVG

W = 720
TOP = 68  # plot area top
PH = 276  # plot area height
LEFT = 72
RIGHT = 22
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
# Okabe-Ito (readable by the colour-blind), then a few more
PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#000000', '#8C564B', '#7F7F7F',
           '#B8860B', '#17BECF', '#9467BD']
METHOD_COLOURS = {'contiguous': '#7F7F7F', 'round-robin': '#56B4E9', 'greedy': '#009E73', 'eplb': '#E69F00',
                  'ilp': '#0072B2'}


def esc(s):
    return (str(s).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;').replace('"', '&quot;'))


def num_attr(v):
    return repr(float(v))


class Colours:
    """a colour per key, fixed for known methods, else from the palette"""

    def __init__(self, fixed=None):
        self.fixed, self.used = dict(fixed or {}), {}

    def __call__(self, key):
        if key in self.fixed:
            return self.fixed[key]
        if key not in self.used:
            free = [c for c in PALETTE if c not in self.used.values() and c not in self.fixed.values()]
            self.used[key] = free[0] if free else PALETTE[len(self.used) % len(PALETTE)]
        return self.used[key]


class Series:
    def __init__(self, name, colour, dashed=False, hollow=False):
        self.name, self.colour, self.dashed, self.hollow = name, colour, dashed, hollow
        self.points = []  # (x, y, tooltip, src)


class Panel:
    def __init__(self, title, xaxis, yaxis, series, refs=()):
        self.title, self.x, self.y, self.series, self.refs = title, xaxis, yaxis, series, list(refs)


class Skips:
    """points a log axis cannot show (or a value that is not finite), told on stderr once per chart and column"""

    def __init__(self):
        self.seen = {}

    def add(self, chart, col, row, v):
        self.seen.setdefault((chart, col), []).append((row['_src'], v))

    def report(self):
        for (chart, col), items in self.seen.items():
            where = ', '.join('%s (%s)' % (s, fmt(v)) for s, v in items[:4]) + (' ...' if len(items) > 4 else '')
            note('%s: %d value(s) of %s not drawn (not positive on a log axis, or not finite): %s'
                 % (chart, len(items), col, where))


def text(x, y, s, size=11, anchor='start', cls=None, extra='', fill='#222'):
    c = ' class="%s"' % cls if cls else ''
    return '<text%s x="%.1f" y="%.1f" font-size="%g" text-anchor="%s" fill="%s"%s>%s</text>' % (
        c, x, y, size, anchor, fill, extra, esc(s))


def text_width(s, size=11):
    return len(s) * size * 0.58


def legend(entries, y0):
    """entries: (name, colour, dashed, hollow, bar); flowed in rows from y0.
    Returns (svg, height)"""
    out, x, y = ['<g class="legend">'], LEFT, y0
    for name, colour, dashed, hollow, bar in entries:
        w = 30 + text_width(name) + 18
        if x + w > W - RIGHT and x > LEFT:
            x, y = LEFT, y + 18
        out.append('<g class="entry" data-series="%s">' % esc(name))
        if bar:
            out.append('<rect class="swatch" x="%.1f" y="%.1f" width="20" height="10" fill="%s"/>' % (x + 2, y - 9, colour))
        else:
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>'
                       % (x, y - 4, x + 24, y - 4, colour, ' stroke-dasharray="5 3"' if dashed else ''))
            out.append('<circle class="swatch" cx="%.1f" cy="%.1f" r="3.5" fill="%s" stroke="%s" stroke-width="1.5"/>'
                       % (x + 12, y - 4, '#fff' if hollow else colour, colour))
        out.append(text(x + 30, y, name))
        out.append('</g>')
        x += w
    out.append('</g>')
    return '\n'.join(out), y - y0 + 18


def ref_label(x0, pw, yy, label, boxes):
    """the label of a reference line at height yy: at the left or right end,
    above or below the line, wherever it covers the fewest of boxes (data:
    (x0, y0, x1, y1)); the box it takes is added to boxes"""
    w = text_width(label, 10) + 4
    best = None
    for pref, (tx, anchor) in enumerate(((x0 + 5, 'start'), (x0 + pw - 5, 'end'))):
        bx = tx if anchor == 'start' else tx - w
        for below, ty in ((0, yy - 4), (1, yy + 13)):
            box = (bx - 3, ty - 11, bx + w + 3, ty + 3)
            hits = sum(1 for b in boxes if b[0] <= box[2] and box[0] <= b[2] and b[1] <= box[3] and box[1] <= b[3])
            score = (hits, below + pref)
            if best is None or score < best[0]:
                best = (score, tx, ty, anchor, box)
    _, tx, ty, anchor, box = best
    boxes.append(box)
    return text(tx, ty, label, 10, anchor, cls='ref-label', fill='#444')


def frame(title, subtitle, body, legend_entries, sources, bottom):
    """the whole SVG: title, subtitle, plot body (ending at y = bottom), legend"""
    leg, lh = legend(legend_entries, bottom + 16)
    H = int(bottom + 16 + lh + 6)
    head = ['<?xml version="1.0" encoding="UTF-8"?>',
            '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s>' % (W, H, W, H, FONT),
            '<title>%s</title>' % esc(title),
            '<desc>epmoe bench/plot.py from %s</desc>' % esc(', '.join(sources)),
            '<rect x="0" y="0" width="%d" height="%d" fill="#fff"/>' % (W, H),
            text(LEFT, 24, title, min(15.0, round((W - LEFT - RIGHT) / (0.62 * len(title)), 1)), cls='title',
                 extra=' font-weight="bold"'),
            text(LEFT, 42, subtitle, 11, cls='subtitle', fill='#555')]
    return '\n'.join(head + [body, leg, '</svg>', ''])


def line_chart(title, subtitle, panels, sources):
    """one or more panels side by side, one legend for all"""
    n = len(panels)
    gap = 70
    pw = (W - LEFT - RIGHT - gap * (n - 1)) / n
    out = []
    entries, names = [], set()
    for i, p in enumerate(panels):
        x0 = LEFT + i * (pw + gap)
        y0 = TOP
        X = lambda v, p=p, x0=x0: x0 + p.x.frac(v) * pw
        Y = lambda v, p=p: y0 + PH - p.y.frac(v) * PH
        out.append('<g class="panel" data-panel="%d">' % i)
        if p.title:
            out.append(text(x0 + pw / 2, y0 - 6, p.title, 12, 'middle', cls='panel-title', extra=' font-weight="bold"'))
        # grid and ticks
        for t in p.y.ticks:
            if not p.y.ok(t) or not (min(p.y.d0, p.y.d1) - 1e-12 <= t <= max(p.y.d0, p.y.d1) + 1e-12):
                continue
            yy = Y(t)
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e6e6e6"/>' % (x0, yy, x0 + pw, yy))
            out.append(text(x0 - 6, yy + 4, p.y.tickfmt(t), 10, 'end', cls='tick ytick'))
        for t in p.x.ticks:
            if not p.x.ok(t) or not (p.x.d0 - 1e-12 <= t <= p.x.d1 + 1e-12):
                continue
            xx = X(t)
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e6e6e6"/>' % (xx, y0, xx, y0 + PH))
            out.append(text(xx, y0 + PH + 16, p.x.tickfmt(t), 10, 'middle', cls='tick xtick'))
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#888"/>' % (x0, y0, pw, PH))
        out.append(text(x0 + pw / 2, y0 + PH + 38, p.x.label, 12, 'middle', cls='xlabel'))
        if i == 0 or p.y.label != panels[i - 1].y.label:
            out.append(text(x0 - 52, y0 + PH / 2, p.y.label, 12, 'middle', cls='ylabel',
                            extra=' transform="rotate(-90 %.1f %.1f)"' % (x0 - 52, y0 + PH / 2)))
        # what a reference line's label should not cover: the points and the lines between them
        boxes = []
        for s in p.series:
            pts = sorted((X(x), Y(y)) for x, y, _, _ in s.points)
            boxes += [(px - 4, py - 4, px + 4, py + 4) for px, py in pts]
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                boxes += [(ax + (bx - ax) * k / 8 - 1, ay + (by - ay) * k / 8 - 1,
                           ax + (bx - ax) * k / 8 + 1, ay + (by - ay) * k / 8 + 1) for k in range(1, 8)]
        for v, label in p.refs:
            yy = Y(v)
            out.append('<line class="ref" data-ref="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" '
                       'stroke-width="1.2" stroke-dasharray="7 4"/>' % (num_attr(v), x0, yy, x0 + pw, yy))
            out.append(ref_label(x0, pw, yy, label, boxes))
        for s in p.series:
            if not s.points:  # every value skipped (told on stderr): no line, no legend entry
                continue
            pts = sorted(s.points, key=lambda q: q[0])
            out.append('<g class="series" data-series="%s">' % esc(s.name))
            if len(pts) > 1:
                out.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (
                    s.colour, ' stroke-dasharray="6 4"' if s.dashed else '',
                    ' '.join('%.1f,%.1f' % (X(x), Y(y)) for x, y, _, _ in pts)))
            for x, y, tip, src in pts:
                out.append('<circle class="point" cx="%.1f" cy="%.1f" r="3.6" fill="%s" stroke="%s" stroke-width="1.6" '
                           'data-x="%s" data-y="%s" data-src="%s"><title>%s</title></circle>' % (
                               X(x), Y(y), '#fff' if s.hollow else s.colour, s.colour, num_attr(x), num_attr(y),
                               esc(src), esc('%s: %s (%s)' % (s.name, tip, src))))
            out.append('</g>')
            if s.name not in names:
                names.add(s.name)
                entries.append((s.name, s.colour, s.dashed, s.hollow, False))
        out.append('</g>')
    return frame(title, subtitle, '\n'.join(out), entries, sources, TOP + PH + 44)


def bar_chart(title, subtitle, groups, methods, colour, ylabel, base, base_label, sources, fmt_tip):
    """groups: [(label lines, {method: (value, src)})]; bars rise or fall from base"""
    vals = [v for _, bars in groups for v, _ in bars.values() if v is not None and math.isfinite(v)]
    ax = Axis('lin', vals + [base], ylabel)
    pw = W - LEFT - RIGHT
    x0, y0 = LEFT, TOP
    Y = lambda v: y0 + PH - ax.frac(v) * PH
    out = []
    for t in ax.ticks:
        yy = Y(t)
        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e6e6e6"/>' % (x0, yy, x0 + pw, yy))
        out.append(text(x0 - 6, yy + 4, ax.tickfmt(t), 10, 'end', cls='tick ytick'))
    out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#888"/>' % (x0, y0, pw, PH))
    out.append(text(x0 - 52, y0 + PH / 2, ylabel, 12, 'middle', cls='ylabel',
                    extra=' transform="rotate(-90 %.1f %.1f)"' % (x0 - 52, y0 + PH / 2)))
    gw = pw / max(len(groups), 1)
    bw = min(30.0, gw * 0.82 / max(len(methods), 1))
    by_method = {m: [] for m in methods}
    for gi, (label, bars) in enumerate(groups):
        cx = x0 + gw * (gi + 0.5)
        for li, line in enumerate(label):
            out.append(text(cx, y0 + PH + 15 + 13 * li, line, 10 if li else 11, 'middle', cls='tick xtick'))
        if gi:
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>' % (x0 + gw * gi, y0, x0 + gw * gi, y0 + PH))
        for mi, m in enumerate(methods):
            if m not in bars:
                continue
            v, src = bars[m]
            bx = cx - bw * len(methods) / 2 + bw * mi
            by_method[m].append((bx, v, src, label))
    for m in methods:
        out.append('<g class="series" data-series="%s">' % esc(m))
        for bx, v, src, label in by_method[m]:
            ya, yb = Y(v), Y(base)
            top, h = min(ya, yb), max(abs(ya - yb), 1.5)
            if ya > yb:  # below the base: draw downwards from it
                top = yb
            tip = '%s, %s: %s (%s)' % (' '.join(label), m, fmt_tip(v), src)
            out.append('<rect class="point" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" '
                       'data-group="%s" data-y="%s" data-src="%s"><title>%s</title></rect>' % (
                           bx + 1, top, max(bw - 2, 1), h, colour(m), esc(' '.join(label)), num_attr(v), esc(src),
                           esc(tip)))
            if bw >= 24:
                ty = top - 3 if v >= base else top + h + 10
                out.append(text(bx + bw / 2, ty, '%.3f' % v, 8.5, 'middle', cls='value', fill='#333'))
        out.append('</g>')
    yy = Y(base)
    out.append('<line class="ref" data-ref="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" '
               'stroke-width="1.2" stroke-dasharray="7 4"/>' % (num_attr(base), x0, yy, x0 + pw, yy))
    boxes = []
    for m in methods:
        for bx, v, _, _ in by_method[m]:
            ya, yb = Y(v), Y(base)
            boxes.append((bx, min(ya, yb) - (12 if bw >= 24 and v >= base else 0), bx + bw,
                          max(ya, yb) + (12 if bw >= 24 and v < base else 0)))
    out.append(ref_label(x0, pw, yy, base_label, boxes))
    nlines = max((len(label) for label, _ in groups), default=1)
    out.append(text(x0 + pw / 2, y0 + PH + 16 + 13 * nlines + 8, 'shape, mode', 12, 'middle', cls='xlabel'))
    entries = [(m, colour(m), False, False, True) for m in methods]
    return frame(title, subtitle, '\n'.join(out), entries, sources, TOP + PH + 16 + 13 * nlines + 14)


# ---------------------------------------------------------------------------
# the charts of each benchmark


def varying(rows, cols):
    """the columns of cols whose values differ between rows"""
    return [c for c in cols if len({r[c] for r in rows}) > 1]


def same(rows, col):
    vals = {r[col] for r in rows}
    return vals.pop() if len(vals) == 1 else None


def add_point(series, axis_x, axis_y, row, x, y, chart, col, skips, tip):
    if axis_x.ok(x) and axis_y.ok(y):
        series.points.append((x, y, tip, row['_src']))
    else:
        skips.add(chart, col, row, y if not axis_y.ok(y) else x)


def paired_series(rows, keys, key, col, xa, ya, chart, skips, xcol, solid, dashed, tip):
    """two series per key, one colour: solid = (name suffix, column) drawn
    solid, dashed = the other, hollow; x from xcol"""
    series = []
    for k in keys:
        pair = [(Series(k + solid[0], col(k)), solid[1]),
                (Series(k + dashed[0], col(k), dashed=True, hollow=True), dashed[1])]
        for r in rows:
            if key(r) == k:
                for s, c in pair:
                    add_point(s, xa, ya, r, r[xcol], r[c], chart, c, skips, tip(r, c))
        series += [s for s, _ in pair]
    return series


def src_text(src):
    s = ', '.join(src)
    return s if len(s) <= 60 else '%d files (%s, ...)' % (len(src), src[0])


def sources(rows):
    out = []
    for r in rows:
        f = r['_src'].rsplit(':', 1)[0]
        if f not in out:
            out.append(f)
    return out


def charts_a2a(rows, skips):
    vary = varying(rows, ['nodes', 'a2a', 'hier'])

    def key(r):
        parts = ['%d rank%s' % (r['ranks'], '' if r['ranks'] == 1 else 's')]
        if 'nodes' in vary:
            parts.append('%d node%s' % (r['nodes'], '' if r['nodes'] == 1 else 's'))
        if 'a2a' in vary:
            parts.append(r['a2a'])
        if 'hier' in vary:
            parts.append('hierarchical' if r['hier'] else 'flat')
        return ', '.join(parts)

    keys = []
    for r in sorted(rows, key=lambda r: (r['ranks'], r['nodes'], r['a2a'], r['hier'])):
        if key(r) not in keys:
            keys.append(key(r))
    col = Colours()
    const = []
    if 'nodes' not in vary:
        n = rows[0]['nodes']
        const.append('%d node%s' % (n, '' if n == 1 else 's'))
    if 'a2a' not in vary:
        const.append('transport ' + rows[0]['a2a'])
    if 'hier' not in vary:
        const.append('hierarchical' if rows[0]['hier'] else 'flat')
    src = sources(rows)
    sub = 'ours = dispatch + combine exchanges; %s; from %s' % (', '.join(const), src_text(src))
    xs = [r['size'] for r in rows]  # asked for, the same at every rank count (bytes: what was sent)
    chart = 'a2a_busbw.svg'
    xa = Axis('log2', xs, 'dispatch size asked per rank (bytes, log2 scale)', fmt_bytes)
    ya = Axis('log10', [r[c] for r in rows for c in ('ours_busbw_gbs', 'raw_busbw_gbs')],
              'bus bandwidth (GB/s, log scale)')
    series = paired_series(rows, keys, key, col, xa, ya, chart, skips, 'size',
                           (' ours', 'ours_busbw_gbs'), (' raw', 'raw_busbw_gbs'),
                           lambda r, c: '%s (%s sent): %s GB/s' % (fmt_bytes(r['size']), fmt_bytes(r['bytes']),
                                                                    fmt(r[c])))
    out = [(chart, line_chart('epmoe bench a2a: bus bandwidth, ours vs raw MPI_Alltoallv',
                              sub, [Panel('', xa, ya, series)], src))]
    chart = 'a2a_ratio.svg'
    ya = Axis('lin', [r['ratio'] for r in rows] + [1.25], 'time, ours / raw (lower is better)')
    series = []
    for k in keys:
        s = Series(k, col(k))
        for r in rows:
            if key(r) == k and r['ratio'] is not None:  # empty: no ratio at one rank
                add_point(s, xa, ya, r, r['size'], r['ratio'], chart, 'ratio', skips,
                          '%s: ours / raw %s' % (fmt_bytes(r['size']), fmt(r['ratio'])))
        series.append(s)
    out.append((chart, line_chart('epmoe bench a2a: time of ours relative to raw MPI_Alltoallv', sub,
                                  [Panel('', xa, ya, series, [(1.25, 'target 1.25')])], src)))
    return out


def charts_kernels(rows, skips):
    def key(r):
        return '%s %s %s' % (r['shape'], r['backend'], r['dtype'])

    keys = []
    for r in rows:
        if key(r) not in keys:
            keys.append(key(r))
    col = Colours()
    src = sources(rows)
    sub = 'expert FFN, grouped over the routed experts vs one dense GEMM chain of the same FLOPs; from %s' % src_text(src)
    toks = sorted({r['tokens'] for r in rows if r['tokens'] > 0})
    ticks = toks if len(toks) <= 10 else None
    xa = Axis('log2', toks, 'tokens (log scale)', fmt, ticks)
    chart = 'kernels_tflops.svg'
    ya = Axis('log10', [r[c] for r in rows for c in ('grouped_tflops', 'dense_tflops')], 'achieved TFLOP/s (log scale)')
    series = paired_series(rows, keys, key, col, xa, ya, chart, skips, 'tokens',
                           (' grouped', 'grouped_tflops'), (' dense ceiling', 'dense_tflops'),
                           lambda r, c: '%s tokens: %s TFLOP/s' % (fmt(r['tokens']), fmt(r[c])))
    out = [(chart, line_chart('epmoe bench kernels: grouped expert FFN vs dense GEMM ceiling', sub,
                              [Panel('', xa, ya, series)], src))]
    chart = 'kernels_ratio.svg'
    ya = Axis('lin', [r['ratio'] for r in rows] + [0, 0.6, 0.7], 'grouped / dense TFLOP/s')
    series = []
    for k in keys:
        s = Series(k, col(k))
        for r in rows:
            if key(r) == k:
                add_point(s, xa, ya, r, r['tokens'], r['ratio'], chart, 'ratio', skips,
                          '%s tokens: grouped / dense %s' % (fmt(r['tokens']), fmt(r['ratio'])))
        series.append(s)
    out.append((chart, line_chart('epmoe bench kernels: grouped FFN as a fraction of the dense ceiling', sub,
                                  [Panel('', xa, ya, series, [(0.7, 'CPU target 0.7'), (0.6, 'GPU target 0.6')])],
                                  src)))
    return out


def charts_plan(rows, skips):
    # groups: (shape, mode) in the order read; a method seen again in a group starts another group
    groups, index = [], {}
    methods = []
    for r in rows:
        if r['method'] not in methods:
            methods.append(r['method'])
        k = (r['shape'], r['mode'])
        gi = index.get(k)
        if gi is None or r['method'] in groups[gi][1]:
            n = sum(1 for g in groups if g[2] == k) + 1
            label = [r['shape'], r['mode'] if n == 1 else '%s (%d)' % (r['mode'], n)]
            groups.append((label, {}, k))
            gi = index[k] = len(groups) - 1
        groups[gi][1][r['method']] = r
    colour = Colours(METHOD_COLOURS)
    src = sources(rows)
    out = []
    for col, what, chart in (('t_vs_contiguous', 'modelled layer time', 'plan_t_vs_contiguous.svg'),
                             ('inter_vs_contiguous', 'inter-node bytes', 'plan_inter_vs_contiguous.svg')):
        gs = []
        for label, bars, _ in groups:
            b = {}
            for m, r in bars.items():
                if r[col] is None or not math.isfinite(r[col]):
                    skips.add(chart, col, r, r[col])
                else:
                    b[m] = (r[col], r['_src'])
            gs.append((label, b))
        sub = 'held-out half of a synthetic trace, per shape and mode (below 1: better than contiguous); from %s' % (
            src_text(src))
        out.append((chart, bar_chart('epmoe bench plan: %s relative to contiguous placement' % what, sub, gs, methods,
                                     colour, '%s / contiguous' % what, 1.0, 'contiguous = 1', src,
                                     lambda v: '%.4f of contiguous' % v)))
    return out


def charts_run(rows, skips):
    for r in rows:
        r['_x'] = r['ranks']
    xs = sorted({r['_x'] for r in rows})
    xl = 'ranks'
    xa = Axis('log2', xs, xl, fmt, xs)
    keys = []
    for r in rows:
        if (r['mode'], r['method']) not in keys:
            keys.append((r['mode'], r['method']))
    modes = []
    for m, _ in keys:
        if m not in modes:
            modes.append(m)
    colour = Colours(METHOD_COLOURS)
    src = sources(rows)
    sub = 'tokens/s of epmoe run on replayed routing; %s; from %s' % (
        ', '.join('%s: %s' % (m, 'solid' if i == 0 else 'dashed') for i, m in enumerate(modes)), src_text(src))

    def panels(chart, cols, scale, ylabel, skip_base, refs):
        ps = []
        for col, title in cols:
            ya = Axis(scale, [r[col] for r in rows if not (skip_base and r['method'] == 'contiguous')] +
                      [v for v, _ in refs], ylabel)
            series = []
            for mode, method in keys:
                if skip_base and method == 'contiguous':
                    continue
                i = modes.index(mode)
                s = Series('%s %s' % (mode, method), colour(method), dashed=i > 0, hollow=i > 0)
                for r in rows:
                    if (r['mode'], r['method']) == (mode, method):
                        add_point(s, xa, ya, r, r['_x'], r[col], chart, col, skips,
                                  '%s %s: %s' % (xl, fmt(r['_x']), fmt(r[col], 5)))
                series.append(s)
            ps.append(Panel(title, xa, ya, series, refs))
        return ps

    out = [('run_tokens.svg', line_chart('epmoe bench run: tokens/s per placement method', sub,
                                         panels('run_tokens.svg', [('prefill_tok_s', 'prefill'), ('decode_tok_s', 'decode')],
                                                'log10', 'tokens/s (log scale)', False, []), src))]
    out.append(('run_speedup.svg', line_chart(
        'epmoe bench run: speed-up over contiguous placement', sub,
        panels('run_speedup.svg', [('prefill_vs_contiguous', 'prefill'), ('decode_vs_contiguous', 'decode')], 'lin',
               'tokens/s / contiguous', True, [(1.0, 'contiguous = 1')]), src)))
    return out


# ---------------------------------------------------------------------------


def parse_args(argv):
    out, files, i = None, [], 0
    only_files = False
    while i < len(argv):
        a = argv[i]
        i += 1
        if only_files or a == '-' or not a.startswith('-'):
            files.append(a)
        elif a == '--':
            only_files = True
        elif a in ('-h', '--help'):
            return None, None
        elif a in ('-o', '--out') or a.startswith('--out='):
            if '=' in a:
                a, v = a.split('=', 1)
            elif i < len(argv):
                v = argv[i]
                i += 1
            else:
                raise Usage("option '%s' needs a value" % a)
            if not v:
                raise Usage("option '%s' needs a folder" % a)
            out = v
        else:
            raise Usage("unknown option '%s'" % a)
    if not files:
        raise Usage('no CSV file given')
    return out, files


def build(files):
    blocks = []
    for f in files:
        read(f, blocks)
    rows = {}
    for b in blocks:
        rows.setdefault(b.kind, []).extend(b.rows)
    skips = Skips()
    charts = []
    if 'a2a' in rows:
        charts += charts_a2a(rows['a2a'], skips)
    if 'kernels' in rows:
        charts += charts_kernels(rows['kernels'], skips)
    if 'plan' in rows:
        charts += charts_plan(rows['plan'], skips)
    if 'run' in rows:
        charts += charts_run(rows['run'], skips)
    skips.report()
    return charts


def write(outdir, charts):
    """every chart to a temporary file in outdir, then each renamed into place"""
    d = outdir or '.'
    tmps = []
    try:
        os.makedirs(d, exist_ok=True)
        mask = os.umask(0)
        os.umask(mask)
        for name, svg in charts:
            fd, tmp = tempfile.mkstemp(prefix='.%s.' % name, suffix='.tmp', dir=d)
            tmps.append(tmp)
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                f.write(svg)
            os.chmod(tmp, 0o666 & ~mask)
        for tmp, (name, _) in zip(tmps, charts):
            os.replace(tmp, os.path.join(d, name))
    except OSError as e:
        for tmp in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise Bad('%s: cannot write: %s' % (getattr(e, 'filename', None) or d, e.strerror or e))
    return [os.path.join(outdir, name) if outdir else name for name, _ in charts]


def main(argv):
    try:
        outdir, files = parse_args(argv)
        if files is None:
            print(USAGE)
            return 0
        charts = build(files)
        for p in write(outdir, charts):
            print(p)
        return 0
    except Usage as e:
        sys.stderr.write('%s: %s (see --help)\n' % (PROG, e))
        return 2
    except Bad as e:
        sys.stderr.write('%s: %s\n' % (PROG, e))
        return 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
