"""report.py RAW OUT - the tables of the gateway benchmark (bench/gateway/run.sh).

RAW holds run.sh's JSON lines: one "meta", one "run" per wrk run (round,
target direct|aiserve, mode json|stream, connections, rate, CPU ticks of the
fake, aiserve and wrk, the machine's busy ticks, new upstream connections,
wrk's result line), "aiserve_idle" (its CPU time per second with no
requests), "stream_timing" (stream_timing.js's line, per target),
"aiserve_rss_kb", and "streams" (streams.js's line).

Per cell (mode, connections, rate) and round, the overhead is aiserve's
latency minus the direct latency at the same percentile, from the two runs of
that round (made one after the other); the tables give the median over the
rounds (and the range). Ratios are aiserve / direct. Prints Markdown tables
and writes OUT: the meta line, every run, the summary.
"""
import json
import statistics
import sys


def load(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    meta = next(r for r in rows if r["kind"] == "meta")
    runs = [r for r in rows if r["kind"] == "run"]
    streams = next((r["result"] for r in rows if r["kind"] == "streams"), None)
    rss = next((r for r in rows if r["kind"] == "aiserve_rss_kb"), None)
    timing = {r["target"]: r["result"] for r in rows if r["kind"] == "stream_timing"}
    idle = next((r["cpu_us_per_s"] for r in rows if r["kind"] == "aiserve_idle"), None)
    return meta, runs, streams, rss, timing, idle


def cpu_pct(run, field):
    """% of one core: *_cpu_us fields are microseconds, wrk_ticks clock ticks."""
    secs = run[field] / 1e6 if field.endswith("_us") else run[field] / run["hz"]
    return 100.0 * secs / run["wall_s"]


def summarize(runs):
    cells = {}
    for r in runs:
        cells.setdefault((r["mode"], r["connections"], r["rate"]), {}).setdefault(r["round"], {})[r["target"]] = r
    out = []
    for (mode, conns, rate), rounds in sorted(cells.items(), key=lambda kv: (kv[0][2] > 0, kv[0][0], kv[0][1])):
        pairs = [(p["direct"], p["aiserve"]) for _, p in sorted(rounds.items()) if "direct" in p and "aiserve" in p]
        if not pairs:
            continue
        cell = {"mode": mode, "connections": conns, "rate": rate, "rounds": len(pairs)}
        for q in ("p50", "p99"):
            d = [a["wrk"]["latency_ms"][q] for a, _ in pairs]
            g = [b["wrk"]["latency_ms"][q] for _, b in pairs]
            over = [y - x for x, y in zip(d, g)]
            cell[q] = {"direct_ms": statistics.median(d), "aiserve_ms": statistics.median(g),
                       "overhead_ms": statistics.median(over), "overhead_min_ms": min(over),
                       "overhead_max_ms": max(over), "ratio": statistics.median(y / x for x, y in zip(d, g)),
                       "per_round_overhead_ms": over}
        med = lambda xs: statistics.median(xs)
        cell["direct_rps"] = med(a["wrk"]["requests_per_s"] for a, _ in pairs)
        cell["aiserve_rps"] = med(b["wrk"]["requests_per_s"] for _, b in pairs)
        cell["errors"] = sum(x["wrk"]["non_2xx"] + sum(x["wrk"]["socket_errors"].values())
                             for pair in pairs for x in pair)
        cell["fake_cpu_pct_direct"] = med(cpu_pct(a, "fake_cpu_us") for a, _ in pairs)
        cell["fake_cpu_pct_aiserve"] = med(cpu_pct(b, "fake_cpu_us") for _, b in pairs)
        cell["aiserve_cpu_pct"] = med(cpu_pct(b, "aiserve_cpu_us") for _, b in pairs)
        cell["wrk_cpu_pct_aiserve"] = med(cpu_pct(b, "wrk_ticks") for _, b in pairs)
        cell["machine_busy_pct_aiserve"] = med(100.0 * b["busy_ticks"] / b["hz"] / b["wall_s"] / b["ncpu"]
                                               for _, b in pairs)
        cell["aiserve_cpu_us_per_request"] = med(b["aiserve_cpu_us"] / max(b["wrk"]["requests"], 1)
                                                 for _, b in pairs)
        cell["new_upstream_connections_per_request"] = med(
            b["new_upstream_connections"] / max(b["wrk"]["requests"], 1) for _, b in pairs)
        out.append(cell)
    return out


def fmt(x, digits=2):
    return "{:,.{}f}".format(x, digits)


def main():
    meta, runs, streams, rss, timing, idle = load(sys.argv[1])
    cells = summarize(runs)
    print()
    print("revision %s%s, %s (family %s, model %s), %d CPUs; %s" % (
        meta["git_revision"][:12], " (dirty)" if meta["git_dirty"] else "", meta["cpu_model"],
        meta["cpu_family"], meta["cpu_model_number"], meta["n_cpus"], meta["date"]))
    print("command: " + meta["command"])
    for fixed in (False, True):
        rows = [c for c in cells if (c["rate"] > 0) == fixed]
        if not rows:
            continue
        print()
        print("Fixed rate (wrk paced by chat.lua's delay())" if fixed else "Closed loop (each client waits for its answer)")
        print()
        print("| mode | %s | direct p50 | aiserve p50 | overhead p50 | direct p99 | aiserve p99 | overhead p99 "
              "(range over rounds) | p99 ratio | direct req/s | aiserve req/s | errors |" %
              ("rate (connections)" if fixed else "clients"))
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in rows:
            who = "%d (%d)" % (c["rate"], c["connections"]) if fixed else str(c["connections"])
            p50, p99 = c["p50"], c["p99"]
            print("| %s | %s | %s | %s | **%s** | %s | %s | **%s** (%s to %s) | %.3fx | %s | %s | %d |" % (
                c["mode"], who, fmt(p50["direct_ms"]), fmt(p50["aiserve_ms"]), fmt(p50["overhead_ms"]),
                fmt(p99["direct_ms"]), fmt(p99["aiserve_ms"]), fmt(p99["overhead_ms"]),
                fmt(p99["overhead_min_ms"]), fmt(p99["overhead_max_ms"]), p99["ratio"],
                fmt(c["direct_rps"], 0), fmt(c["aiserve_rps"], 0), c["errors"]))
    print()
    print("Where the CPU went (medians; % of one core; machine busy: % of all cores, the runs through aiserve)")
    print()
    print("| mode | clients / rate | fake CPU % direct | fake CPU % via aiserve | aiserve CPU % | aiserve CPU us "
          "per request | wrk CPU % | machine busy % | new upstream connections per request |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        who = "%d/s" % c["rate"] if c["rate"] else str(c["connections"])
        print("| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.3f |" % (
            c["mode"], who, c["fake_cpu_pct_direct"], c["fake_cpu_pct_aiserve"], c["aiserve_cpu_pct"],
            c["aiserve_cpu_us_per_request"], c["wrk_cpu_pct_aiserve"], c["machine_busy_pct_aiserve"],
            c["new_upstream_connections_per_request"]))
    if idle is not None:
        print()
        print("aiserve idle (no requests): %d us of CPU per second; it is in the CPU per request above" % idle)
    if timing:
        print()
        print("Stream timing (one client, streams one after another; ms from the request: p50 / max)")
        print()
        print("| target | first content event | last byte | longest wait between two content events |")
        print("|---|---:|---:|---:|")
        for t in ("direct", "aiserve"):
            if t in timing:
                r = timing[t]
                print("| %s | %s / %s | %s / %s | %s / %s |" % (
                    t, fmt(r["first_ms"]["p50"]), fmt(r["first_ms"]["max"]), fmt(r["last_ms"]["p50"]),
                    fmt(r["last_ms"]["max"]), fmt(r["max_gap_ms"]["p50"]), fmt(r["max_gap_ms"]["max"])))
    if rss:
        print()
        print("aiserve VmRSS after the overhead runs: %.1f MB" % (rss["after_overhead"] / 1024))
    if streams:
        s = streams
        print()
        print("Open streams: %d asked, %d open at once, %d complete, failed %s; all open %.1f s after the first "
              "connection; aiserve VmRSS before %.1f MB, all open %.1f MB (peak %.1f), after %.1f MB: "
              "%.2f KB per open stream (slope over the ramp %s KB); the fake held %s streams at once" % (
                  s["asked"], s["opened"], s["completed"], json.dumps(s["failed"]), s["open_s"],
                  s["rss_kb"]["before"] / 1024, s["rss_kb"]["all_open"] / 1024, s["rss_kb"]["peak"] / 1024,
                  (s["rss_kb"]["after"] or 0) / 1024, s["rss_per_stream_kb"] or 0,
                  s["rss_slope_kb"], (s.get("fake") or {}).get("max_open_streams")))
    json.dump({"meta": meta, "summary": cells, "aiserve_idle_cpu_us_per_s": idle, "stream_timing": timing, "streams": streams, "aiserve_rss_kb": rss,
               "runs": runs},
              open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
