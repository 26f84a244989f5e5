#!/usr/bin/env python3
"""report.py DIR - the report of the load-testing kit (bench/load/run.sh).

Reads what run.sh left in DIR (meta.txt: KEY=VALUE lines; wrk-c<N>.txt: wrk's
output for concurrency N, whose line starting with {"requests" is the JSON of
bench/http/result_line.lua) and writes into DIR:

  results.json    the run's settings and one entry per concurrency
  summary.md      the settings and a table with a row per concurrency
  throughput.svg  requests/s against concurrency
  latency.svg     p50, p90 and p99 latency (ms) against concurrency
  errors.svg      non-2xx answers, socket errors and unexpected bodies

Standard library only: the SVG is written by hand. Running it again on a
report directory rebuilds these files.
"""

import json
import math
import os
import sys
from xml.sax.saxutils import escape


def read_meta(d):
    meta = {}
    with open(os.path.join(d, "meta.txt"), encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            meta[key] = value
    return meta


def read_run(path):
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f if l.startswith('{"requests"')]
    if not lines:
        sys.exit("report.py: no result line in %s" % path)
    return json.loads(lines[-1])


def nice_max(v):
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power
    of ten) at or above v."""
    if v <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * p >= v:
            return m * p
    return 10 * p


def fmt(v):
    return ("%.0f" % v) if v >= 100 or v == int(v) else ("%.3g" % v)


COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c")


def line_chart(title, ylabel, xs, series, ymax_at_least=0):
    """An SVG line chart; xs are the concurrencies (evenly spaced, labelled),
    series is a list of (name, [y per x]); the y axis reaches at least
    ymax_at_least (so that counts that are all 0 get whole-number ticks)."""
    w, h, left, right, top, bottom = 640, 400, 70, 150, 40, 50
    pw, ph = w - left - right, h - top - bottom
    ymax = nice_max(max([max(ys) for _, ys in series] + [ymax_at_least]))
    step = pw / max(len(xs) - 1, 1)

    def px(i):
        return left + (i * step if len(xs) > 1 else pw / 2)

    def py(v):
        return top + ph - v / ymax * ph

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">' % (w, h, w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>'
           % (left, escape(title))]
    for k in range(6):
        v = ymax * k / 5
        y = py(v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>'
                   % (left, y, left + pw, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, y + 4, fmt(v)))
    for i, x in enumerate(xs):
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (px(i), top + ph + 18, x))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>'
               % (left, top + ph, left + pw, top + ph))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>'
               % (left, top, left, top + ph))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">concurrency (open connections)</text>'
               % (left + pw / 2, h - 10))
    out.append('<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>'
               % (top + ph / 2, escape(ylabel)))
    for n, (name, ys) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join("%.1f,%.1f" % (px(i), py(v)) for i, v in enumerate(ys))
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>'
                   % (points, colour))
        for i, v in enumerate(ys):
            out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s at %s: %s</title>'
                       '</circle>' % (px(i), py(v), colour, escape(name), xs[i], fmt(v)))
        ly = top + 10 + n * 20
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                   % (left + pw + 15, ly, left + pw + 35, ly, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (left + pw + 40, ly + 4, escape(name)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    d = sys.argv[1]
    meta = read_meta(d)
    runs = []
    for c in meta["concurrency"].split():
        r = read_run(os.path.join(d, "wrk-c%s.txt" % c))
        r["concurrency"] = int(c)
        r["socket_errors_total"] = sum(r["socket_errors"].values())
        runs.append(r)

    with open(os.path.join(d, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=2)
        f.write("\n")

    xs = [r["concurrency"] for r in runs]
    charts = {
        "throughput.svg": line_chart("Throughput", "requests/s", xs,
                                     [("requests/s", [r["requests_per_s"] for r in runs])]),
        "latency.svg": line_chart("Latency", "milliseconds", xs,
                                  [(p, [r["latency_ms"][p] for r in runs])
                                   for p in ("p50", "p90", "p99")]),
        "errors.svg": line_chart("Errors", "requests", xs,
                                 [("non-2xx", [r["non_2xx"] for r in runs]),
                                  ("socket errors", [r["socket_errors_total"] for r in runs]),
                                  ("unexpected body", [r["bad_body"] for r in runs])], 5),
    }
    for name, svg in charts.items():
        with open(os.path.join(d, name), "w", encoding="utf-8") as f:
            f.write(svg)

    md = ["# Load test of %s%s" % (meta["url"], meta["endpoint"]), "",
          "- Date: %s" % meta["date"],
          "- Command: `%s`" % meta["command"],
          "- URL: %s, endpoint `%s`; body: %s%s" % (
              meta["url"], meta["endpoint"], meta["body"],
              ", model `%s`" % meta["model"] if meta.get("model") else ""),
          "- API key sent: %s; `Cache-Control: no-cache`: %s" % (
              meta["api_key_sent"], meta["cache_control_no_cache"]),
          "- %s s per concurrency after a %s s warm-up; wrk %s, %s threads, timeout %s s" % (
              meta["duration_s"], meta["warmup_s"], meta["wrk_version"], meta["wrk_threads"],
              meta["timeout_s"]),
          "- Client: %s, %s CPUs (`%s`)" % (meta["client_cpu"], meta["client_cpus"],
                                           meta["client_host"]),
          "",
          "| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | non-2xx "
          "| socket errors (connect/read/write/timeout) | unexpected body |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in runs:
        s, l = r["socket_errors"], r["latency_ms"]
        md.append("| %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %d | %d (%d/%d/%d/%d) | %d |" % (
            r["concurrency"], r["requests"], r["requests_per_s"], l["p50"], l["p90"], l["p99"],
            l["max"], r["non_2xx"], r["socket_errors_total"], s["connect"], s["read"],
            s["write"], s["timeout"], r["bad_body"]))
    md += ["", "![throughput](throughput.svg)", "", "![latency](latency.svg)", "",
           "![errors](errors.svg)", ""]
    with open(os.path.join(d, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
