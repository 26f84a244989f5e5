#!/usr/bin/python3
"""report.py RAW.jsonl OUT.json REVISION CPU - the cache benchmark's table:
requests/s and latency per configuration and concurrency (medians over the
rounds), aiserve's ratios to
the seed's Redis-cached service, and the cost of the API key check plus rate
limiting (1 - guarded / open throughput) per backend."""

import json
import os
import sys

raw, out, rev, cpu = sys.argv[1:5]
runs = [json.loads(l) for l in open(raw) if l.strip()]
# Medians over the rounds of each (configuration, concurrency).
rounds = {}
for r in runs:
    if r["phase"] == "hit":
        res = dict(r["result"])
        res["cpu_us_per_request"] = 1e6 * r["server_cpu_s"] / max(1, res["requests"])
        rounds.setdefault((r["config"], r["concurrency"]), []).append(res)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


hits = {}
for key, rs in rounds.items():
    hits[key] = {"requests_per_s": median([x["requests_per_s"] for x in rs]),
                 "cpu_us_per_request": median([x["cpu_us_per_request"] for x in rs]),
                 "latency_ms": {k: median([x["latency_ms"][k] for x in rs]) for k in rs[0]["latency_ms"]},
                 "rounds": len(rs)}
concs = sorted({c for _, c in hits})
configs = [c for c in ("seed-redis", "aiserve-memory", "aiserve-memory-guard", "aiserve-redis",
                       "aiserve-redis-guard") if any((c, k) in hits for k in concs)]

print("\ncache hits, bundled sentiment model, %s, %d CPUs, revision %s; medians of %d rounds"
      % (cpu, os.cpu_count(), rev, max(v["rounds"] for v in hits.values())))
print("%-22s %5s %10s %8s %8s %8s %9s %11s" % ("configuration", "conc", "req/s", "p50 ms", "p99 ms", "max ms",
                                               "x seed", "CPU us/req"))
summary = {}
for c in configs:
    for k in concs:
        r = hits.get((c, k))
        if not r:
            continue
        seed = hits.get(("seed-redis", k))
        ratio = r["requests_per_s"] / seed["requests_per_s"] if seed else None
        lat = r["latency_ms"]
        print("%-22s %5d %10.0f %8.2f %8.2f %8.1f %9s %11.1f" % (
            c, k, r["requests_per_s"], lat["p50"], lat["p99"], lat["max"], "%.1fx" % ratio if ratio else "-",
            r["cpu_us_per_request"]))
        summary.setdefault(c, {})[k] = {"requests_per_s": r["requests_per_s"], "latency_ms": lat,
                                        "ratio_to_seed": ratio, "cpu_us_per_request": r["cpu_us_per_request"]}
print("\nAPI key check + rate limiting, cost on the cache-hit path: 1 - guarded/open throughput, "
      "and server CPU per request guarded/open:")
overhead = {}
for backend in ("memory", "redis"):
    for k in concs:
        a, b = hits.get(("aiserve-" + backend, k)), hits.get(("aiserve-%s-guard" % backend, k))
        if a and b:
            cost = 1 - b["requests_per_s"] / a["requests_per_s"]
            cpu = b["cpu_us_per_request"] / a["cpu_us_per_request"] - 1
            overhead.setdefault(backend, {})[k] = {"throughput": cost, "cpu_per_request": cpu}
            print("  %-7s c=%-3d throughput %+.1f%%, CPU per request %+.1f%%" % (backend, k, 100 * cost, 100 * cpu))
json.dump({"revision": rev, "cpu": cpu, "n_cpus": os.cpu_count(), "hits": summary, "guard_cost": overhead,
           "runs": runs}, open(out, "w"), indent=1)
print("\nwrote", out)
