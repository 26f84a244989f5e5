#!/usr/bin/python3
"""report.py - turns what bench/http/run.sh recorded (JSON lines) into the
results file and the tables it prints.

  - Per model, load (quiet, busy) and concurrency: requests/s, p50 and p99
    of every server (the seed, aiserve in each quantization mode and nice
    value), the median over the rounds (each round's value is in the results
    file), and each aiserve's requests/s over the seed's.
  - Under load: the share of its quiet requests/s each server kept (busy /
    quiet, the same concurrency), the issue's busy-host measure; the seed's
    share is the bar.
  - For aiserve runs: the CPU time its threads got per nice value (% of one
    CPU), and the batcher's batches, mean batch size, mean queue wait, mean
    inference time and the share of the run it spent in the engine.
  - GET /health latency measured while /predict ran at the highest
    concurrency; start to ready and resident memory.
  - The share of the machine's CPUs that other processes took during each run
    (busy time from /proc/stat minus the server's, wrk's and the benchmark's
    own busy loops'), because on a shared machine that moves every number.
  - Whether the servers gave the same labels on the 64 check sentences.

Usage: report.py RAW.jsonl META.json OUT.json
"""

import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cpu_shares(rows):
    """{(server, model, phase): shares of all CPUs: others, server, wrk, load, steal}."""
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
        d = {k: b[k] - a[k] for k in ("busy", "server_ticks", "self_ticks", "load_ticks", "steal")}
        others = d["busy"] - d["server_ticks"] - d["self_ticks"] - d["load_ticks"]
        out[key] = {"others": max(0.0, others / capacity), "server": d["server_ticks"] / capacity,
                    "wrk": d["self_ticks"] / capacity, "load": d["load_ticks"] / capacity,
                    "steal": d["steal"] / capacity, "seconds": b["t"] - a["t"]}
    return out


def thread_detail(rec, seconds, hz):
    """A threads record -> CPU per nice value (% of one CPU) and batcher figures."""
    out = {"nice_cpu_pct": {}, "nice_threads": {}}
    for nice, (n, ticks) in rec["after"].items():
        before = rec["before"].get(nice, [0, 0])[1]
        out["nice_cpu_pct"][nice] = round(100 * (ticks - before) / hz / seconds, 1) if seconds else None
        out["nice_threads"][nice] = n
    a, b = rec.get("batcher_before"), rec.get("batcher_after")
    if a and b:
        d = {k: b[k] - a[k] for k in b}
        n = d["aiserve_batch_size_count"]
        out["batcher"] = {
            "batches": int(n),
            "mean_batch": round(d["aiserve_batch_size_sum"] / n, 2) if n else None,
            "mean_queue_wait_ms": round(1e3 * d["aiserve_queue_wait_seconds_sum"] /
                                        d["aiserve_queue_wait_seconds_count"], 2)
            if d["aiserve_queue_wait_seconds_count"] else None,
            "mean_inference_ms": round(1e3 * d["aiserve_inference_seconds_sum"] / n, 2) if n else None,
            "engine_share": round(d["aiserve_inference_seconds_sum"] / seconds, 3) if seconds else None,
        }
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


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


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
    hz = next((r["hz"] for r in rows if r["kind"] == "cpu"), 100)

    models, server_order = [], []
    for r in rows:
        if r.get("model") and r["model"] not in models:
            models.append(r["model"])
        if r["kind"] == "server" and r["server"] not in server_order:
            server_order.append(r["server"])
    servers = {}
    for r in rows:
        if r["kind"] == "server":
            servers[(r["server"], r["model"])] = dict(r)
        elif r["kind"] in ("rss", "exit"):
            s = servers.setdefault((r["server"], r["model"]), {})
            s.update({k: v for k, v in r.items() if k not in ("kind", "server", "model")})
    threads = {(r["server"], r["model"], r["phase"], r["round"]): r for r in rows if r["kind"] == "threads"}
    runs = [r for r in rows if r["kind"] == "wrk" and r["phase"] == "predict"]
    for r in runs:
        phase = f"predict-{r['load']}-c{r['concurrency']}"
        r["cpu"] = shares.get((r["server"], r["model"], f"{phase}-r{r['round']}"))
        rec = threads.get((r["server"], r["model"], phase, r["round"]))
        if rec:
            r["threads"] = thread_detail(rec, r["result"]["duration_s"], hz)

    table = []
    for model in models:
        keys = []
        for r in runs:
            if r["model"] == model and (r["load"], r["concurrency"]) not in keys:
                keys.append((r["load"], r["concurrency"]))
        for load_name, c in keys:
            row = {"model": model, "load": load_name, "concurrency": c, "servers": {}, "notes": []}
            for name in server_order:
                mine = [r for r in runs if (r["server"], r["model"], r["load"], r["concurrency"]) ==
                        (name, model, load_name, c)]
                if not mine:
                    continue
                sums = [summary(r["result"]) for r in mine]
                agg = {"rps": med(s["rps"] for s in sums),
                       "p50": med(s.get("p50") for s in sums), "p99": med(s.get("p99") for s in sums),
                       "rounds_rps": [s["rps"] for s in sums],
                       "others_cpu_max": max((r["cpu"] or {}).get("others", 0.0) for r in mine)}
                details = [r["threads"] for r in mine if r.get("threads")]
                if details and details[0].get("batcher"):
                    agg["batcher"] = {k: med(d["batcher"][k] for d in details) for k in details[0]["batcher"]}
                if details:
                    nices = sorted({n for d in details for n in d["nice_cpu_pct"]}, key=int)
                    agg["nice_cpu_pct"] = {n: med(d["nice_cpu_pct"].get(n) for d in details) for n in nices}
                    agg["nice_threads"] = details[-1]["nice_threads"]
                row["servers"][name] = agg
                for r in mine:
                    res = r["result"]
                    if res["requests"] == 0:
                        row["notes"].append(f"{name} round {r['round']}: no request completed in the run")
                    elif res["socket_errors"]["timeout"]:
                        row["notes"].append(f"{name} round {r['round']}: {res['socket_errors']['timeout']} "
                                            "requests over 30 s, not in its latencies")
            seed = row["servers"].get("seed")
            for name, agg in row["servers"].items():
                if name != "seed" and seed and seed["rps"]:
                    agg["x_seed"] = agg["rps"] / seed["rps"]
            table.append(row)

    kept = []
    for model in models:
        concs = sorted({t["concurrency"] for t in table if t["model"] == model})
        for c in concs:
            q = next((t for t in table if (t["model"], t["load"], t["concurrency"]) == (model, "quiet", c)), None)
            b = next((t for t in table if (t["model"], t["load"], t["concurrency"]) == (model, "busy", c)), None)
            if not q or not b:
                continue
            k = {"model": model, "concurrency": c, "servers": {}}
            for name in server_order:
                if name in q["servers"] and name in b["servers"] and q["servers"][name]["rps"]:
                    k["servers"][name] = {"quiet_rps": q["servers"][name]["rps"], "busy_rps": b["servers"][name]["rps"],
                                          "kept": b["servers"][name]["rps"] / q["servers"][name]["rps"]}
            kept.append(k)

    health = []
    for r in rows:
        if r["kind"] == "wrk" and r["phase"].startswith("health-during"):
            health.append({"model": r["model"], "server": r["server"], "phase": r["phase"],
                           **(summary(r["result"]))})
    agreement = {}
    for model in models:
        s = servers.get(("seed", model))
        for name in server_order:
            a = servers.get((name, model))
            if name == "seed" or not s or not a or "check" not in s or "check" not in a:
                continue
            ls, la = s["check"]["labels"], a["check"]["labels"]
            diffs = [abs(x - y) for x, y in zip(s["check"]["confidences"], a["check"]["confidences"])]
            agreement[f"{name}/{model}"] = {"same_label": sum(x == y for x, y in zip(ls, la)),
                                            "n": len(ls), "max_confidence_diff": max(diffs)}

    result = dict(meta, table=table, kept_under_load=kept, health_under_load=health,
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
      f"{meta['rounds']} round(s), wrk threads {meta['wrk_threads']}, seed torch threads "
      f"{meta['seed_torch_threads']}; busy = {meta['busy_procs']} busy loops at nice 0, one per CPU")
    p(f"command: {meta['command']}")
    for model in models:
        for name in server_order:
            s = servers.get((name, model))
            if s and "model_dir" in s:
                extra = f"; BLAS: {s['blas']}" if s.get("blas") else ""
                loaded = ((s.get("version") or {}).get("model_loaded") or {})
                if loaded:
                    extra += f"; runs {loaded.get('quantization')} ({loaded.get('kernels')})"
                p(f"  {name} on {model}: {s['model_dir']}{extra}; threads by nice value: "
                  f"{', '.join(f'nice {n}: {v[0]}' for n, v in sorted(s['thread_nices'].items(), key=lambda x: int(x[0])))}")
    p("")
    p("POST /predict, ~12-word sentences: requests/s (p50 / p99 ms), median over the rounds; "
      "(x) = aiserve req/s / seed req/s")
    p("")
    p("| model | load | concurrency | " + " | ".join(server_order) + " | other CPU |")
    p("|---|---|---:|" + "---:|" * len(server_order) + "---:|")
    for t in table:
        cells = []
        for name in server_order:
            a = t["servers"].get(name)
            if not a:
                cells.append("-")
                continue
            x = f" **{a['x_seed']:.1f}x**" if "x_seed" in a else ""
            cells.append(f"{fmt(a['rps'])} ({fmt(a['p50'])} / {fmt(a['p99'])}){x}")
        others = max((a["others_cpu_max"] for a in t["servers"].values()), default=0.0)
        p(f"| {t['model']} | {t['load']} | {t['concurrency']} | " + " | ".join(cells) + f" | {others * 100:.0f}% |")
    for t in table:
        for n in t["notes"]:
            p(f"  ! {t['model']} {t['load']} at concurrency {t['concurrency']}: {n}")
    if kept:
        p("")
        p("Busy host: share of its quiet requests/s each server kept under the competing load "
          "(target: aiserve keeps at least the seed's share)")
        p("")
        p("| model | concurrency | " + " | ".join(server_order) + " |")
        p("|---|---:|" + "---:|" * len(server_order))
        for k in kept:
            seed = k["servers"].get("seed")
            cells = []
            for name in server_order:
                v = k["servers"].get(name)
                if not v:
                    cells.append("-")
                    continue
                mark = ""
                if seed and name != "seed":
                    mark = " (met)" if v["kept"] >= seed["kept"] else " (NOT met)"
                cells.append(f"{100 * v['kept']:.0f}%{mark}")
            p(f"| {k['model']} | {k['concurrency']} | " + " | ".join(cells) + " |")
    details = [(t, name, a) for t in table for name, a in t["servers"].items() if a.get("batcher")]
    if details:
        p("")
        p("aiserve under the runs: CPU per nice value of its threads (% of one CPU), and the batcher "
          "(medians over the rounds)")
        p("")
        p("| model | load | concurrency | server | CPU by nice | batches | mean batch | queue wait ms | "
          "inference ms | in the engine |")
        p("|---|---|---:|---|---|---:|---:|---:|---:|---:|")
        for t, name, a in details:
            b = a["batcher"]
            nices = ", ".join(f"nice {n}: {fmt(v, 0)}%" for n, v in a.get("nice_cpu_pct", {}).items())
            p(f"| {t['model']} | {t['load']} | {t['concurrency']} | {name} | {nices} | {fmt(b['batches'], 0)} | "
              f"{fmt(b['mean_batch'])} | {fmt(b['mean_queue_wait_ms'])} | {fmt(b['mean_inference_ms'])} | "
              f"{fmt(100 * b['engine_share'], 0) if b['engine_share'] is not None else '-'}% |")
    if health:
        p("")
        p("GET /health while /predict runs at the highest concurrency (ms)")
        p("")
        p("| model | server | phase | requests | p50 | p99 | max |")
        p("|---|---|---|---:|---:|---:|---:|")
        for h in health:
            p(f"| {h['model']} | {h['server']} | {h['phase']} | {h['requests']} | {fmt(h.get('p50'), 2)} | "
              f"{fmt(h.get('p99'), 2)} | {fmt(h.get('max'), 2)} |")
    p("")
    p("| model | server | start to ready ms | RSS ready MB | RSS end MB |")
    p("|---|---|---:|---:|---:|")
    for model in models:
        for name in server_order:
            s = servers.get((name, model))
            if s and "ready" in s:
                p(f"| {model} | {name} | {fmt(s['ready'].get('ready_ms'), 0)} | "
                  f"{fmt(s.get('rss_ready_mb'))} | {fmt(s.get('rss_end_mb'))} |")
    for key, ag in agreement.items():
        p(f"labels, seed vs {key}: {ag['same_label']}/{ag['n']} the same, "
          f"max |confidence diff| {ag['max_confidence_diff']:.4f}")
    p("")
    p("'other CPU': share of the machine's CPUs that other processes took during the run "
      "(the largest over the servers' runs; the benchmark's own busy loops are not counted); "
      "above a few percent the numbers are only indicative.")
    p(f"results: {out_path}")


if __name__ == "__main__":
    main()
