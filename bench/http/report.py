#!/usr/bin/python3
"""report.py - turns what bench/http/run.sh recorded (JSON lines) into the
results file and the tables it prints.

  - Per model and concurrency: requests/s, p50, p90, p99 and max latency of
    the seed service and of aiserve, and aiserve's requests/s over the seed's.
  - GET /health latency measured while /predict ran at the highest
    concurrency; start to ready (process start to the first 200 from the
    readiness path) and resident memory when ready and at the end.
  - The share of the machine's CPUs that other processes took during each run
    (busy time from /proc/stat minus the server's and wrk's own), because on a
    shared 2-core machine that moves every number.
  - Whether the two servers gave the same labels on the 64 check sentences.

Usage: report.py RAW.jsonl META.json OUT.json
"""

import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cpu_shares(rows):
    """{(server, model, phase): share of all CPUs taken by other processes}."""
    marks = {}
    for r in rows:
        if r["kind"] == "cpu":
            marks.setdefault((r["server"], r["model"], r["phase"]), {})[r["edge"]] = r
    out = {}
    for key, m in marks.items():
        if "start" not in m or "end" not in m:
            continue
        a, b = m["start"], m["end"]
        capacity = (b["t"] - a["t"]) * a["hz"] * a["ncpu"]
        if capacity <= 0:
            continue
        others = (b["busy"] - a["busy"]) - (b["server_ticks"] - a["server_ticks"]) \
            - (b["self_ticks"] - a["self_ticks"])
        out[key] = {"others": max(0.0, others / capacity),
                    "server": (b["server_ticks"] - a["server_ticks"]) / capacity,
                    "wrk": (b["self_ticks"] - a["self_ticks"]) / capacity,
                    "steal": (b["steal"] - a["steal"]) / capacity}
    return out


def summary(r):
    """requests/s and latencies of one wrk result; no latencies when nothing
    completed (wrk then reports zeros)."""
    if not r:
        return None
    out = {"rps": r["requests_per_s"], "requests": r["requests"]}
    if r["requests"]:
        out.update(r["latency_ms"])
    return out


def fmt(x, nd=1):
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def main():
    raw, meta_path, out_path = sys.argv[1:4]
    rows = load(raw)
    with open(meta_path) as f:
        meta = json.load(f)
    shares = cpu_shares(rows)

    models = []
    for r in rows:
        if r.get("model") and r["model"] not in models:
            models.append(r["model"])
    servers = {}
    for r in rows:
        if r["kind"] == "server":
            servers[(r["server"], r["model"])] = dict(r)
        elif r["kind"] in ("rss", "exit"):
            s = servers.setdefault((r["server"], r["model"]), {})
            s.update({k: v for k, v in r.items() if k not in ("kind", "server", "model")})
    runs = [r for r in rows if r["kind"] == "wrk" and r["phase"] != "warmup"]
    for r in runs:
        r["cpu"] = shares.get((r["server"], r["model"], f"predict-c{r['concurrency']}")) \
            if r["phase"] == "predict" else None

    def find(server, model, phase, conc=None):
        for r in runs:
            if (r["server"], r["model"], r["phase"]) == (server, model, phase) and \
                    (conc is None or r["concurrency"] == conc):
                return r["result"]
        return None

    table = []
    for model in models:
        concs = sorted({r["concurrency"] for r in runs
                        if r["model"] == model and r["phase"] == "predict"})
        for c in concs:
            s, a = find("seed", model, "predict", c), find("aiserve", model, "predict", c)
            others = max((shares.get((srv, model, f"predict-c{c}"), {}).get("others", 0.0)
                          for srv in ("seed", "aiserve")), default=0.0)
            notes = []
            for srv, r in (("seed", s), ("aiserve", a)):
                if r and r["requests"] == 0:
                    notes.append(f"{srv}: no request completed in the run")
                elif r and r["socket_errors"]["timeout"]:
                    notes.append(f"{srv}: {r['socket_errors']['timeout']} requests over 30 s, "
                                 "not in its latencies")
            table.append({
                "model": model, "concurrency": c,
                "seed": summary(s), "aiserve": summary(a),
                "ratio_rps": (a["requests_per_s"] / s["requests_per_s"])
                if s and a and s["requests_per_s"] > 0 else None,
                "others_cpu_max": others, "notes": notes})
    health = []
    for model in models:
        for server in ("seed", "aiserve"):
            for r in runs:
                if (r["server"], r["model"]) == (server, model) and \
                        r["phase"].startswith("health-during"):
                    health.append({"model": model, "server": server, "phase": r["phase"],
                                   **(summary(r["result"]))})
    agreement = {}
    for model in models:
        s, a = servers.get(("seed", model)), servers.get(("aiserve", model))
        if s and a and "check" in s and "check" in a:
            ls, la = s["check"]["labels"], a["check"]["labels"]
            diffs = [abs(x - y) for x, y in zip(s["check"]["confidences"],
                                                a["check"]["confidences"])]
            agreement[model] = {"same_label": sum(x == y for x, y in zip(ls, la)),
                                "n": len(ls), "max_confidence_diff": max(diffs)}

    result = dict(meta, table=table, health_under_load=health,
                  servers={f"{k[0]}/{k[1]}": v for k, v in servers.items()},
                  label_agreement=agreement, runs=runs,
                  cpu_shares={"/".join(k): v for k, v in shares.items()})
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)

    # --- what a reader sees -------------------------------------------------
    p = print
    p("")
    p(f"HTTP benchmark {meta['date']}  revision {meta['git_revision']}"
      f"{' (dirty)' if meta['git_dirty'] else ''}")
    p(f"CPU {meta['cpu_model']}, {meta['n_cpus']} cores; {meta['duration_s']} s per run, "
      f"wrk threads {meta['wrk_threads']}, seed torch threads {meta['seed_torch_threads']}")
    for model in models:
        for server in ("seed", "aiserve"):
            s = servers.get((server, model))
            if s and "model_dir" in s:
                extra = f"; BLAS: {s['blas']}" if s.get("blas") else ""
                p(f"  {server} on {model}: {s['model_dir']}{extra}")
    p("")
    p("POST /predict, ~12-word sentences (latency in ms; ratio = aiserve req/s / seed req/s)")
    p("")
    p("| model | concurrency | seed req/s | seed p50 | seed p99 | aiserve req/s | "
      "aiserve p50 | aiserve p99 | ratio | other CPU |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in table:
        s, a = t["seed"] or {}, t["aiserve"] or {}
        ratio = f"{t['ratio_rps']:.1f}x" if t["ratio_rps"] is not None else "-"
        p(f"| {t['model']} | {t['concurrency']} | {fmt(s.get('rps'))} | {fmt(s.get('p50'))} | "
          f"{fmt(s.get('p99'))} | {fmt(a.get('rps'))} | {fmt(a.get('p50'), 2)} | "
          f"{fmt(a.get('p99'), 2)} | {ratio} | {t['others_cpu_max'] * 100:.0f}% |")
    for t in table:
        for n in t["notes"]:
            p(f"  ! {t['model']} at concurrency {t['concurrency']}: {n}")
    if health:
        p("")
        p("GET /health while /predict runs at the highest concurrency (ms)")
        p("")
        p("| model | server | requests | p50 | p90 | p99 | max |")
        p("|---|---|---:|---:|---:|---:|---:|")
        for h in health:
            p(f"| {h['model']} | {h['server']} | {h['requests']} | {fmt(h.get('p50'), 2)} | "
              f"{fmt(h.get('p90'), 2)} | {fmt(h.get('p99'), 2)} | {fmt(h.get('max'), 2)} |")
    p("")
    p("| model | server | start to ready ms | RSS ready MB | RSS end MB |")
    p("|---|---|---:|---:|---:|")
    for model in models:
        for server in ("seed", "aiserve"):
            s = servers.get((server, model))
            if s and "ready" in s:
                p(f"| {model} | {server} | {fmt(s['ready'].get('ready_ms'), 0)} | "
                  f"{fmt(s.get('rss_ready_mb'))} | {fmt(s.get('rss_end_mb'))} |")
    for model, ag in agreement.items():
        p(f"labels, seed vs aiserve on {model}: {ag['same_label']}/{ag['n']} the same, "
          f"max |confidence diff| {ag['max_confidence_diff']:.4f}")
    p("")
    p("'other CPU': share of the machine's CPUs that other processes took during the run "
      "(the larger of the two servers' runs); above a few percent the numbers are only "
      "indicative.")
    p(f"results: {out_path}")


if __name__ == "__main__":
    main()
