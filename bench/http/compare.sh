#!/usr/bin/env bash
# compare.sh OLD_AISERVE NEW_AISERVE [ROUNDS] - two aiserve binaries side by
# side on the request path: run.sh's aiserve run (POST /predict under wrk,
# cache and rate limit off), for each binary in turn, interleaved over ROUNDS
# rounds (default 3) so that drift of the machine hits both alike. Then a
# table of requests/s and p50/p99 per round and the median ratios new/old.
#
# Environment: as run.sh (BENCH_DURATION, BENCH_CONCURRENCY default "64",
# BENCH_MODELS default "sentiment", BENCH_MODES default "none", BENCH_LOADS
# default "quiet", ...); BENCH_SKIP is set to "seed".
# A benchmark, not a test: it never fails on a number.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-3}
tmp=$(mktemp -d /tmp/aiserve-bench-compare.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/old" "$tmp/new"
ln -s "$old" "$tmp/old/aiserve"
ln -s "$new" "$tmp/new/aiserve"
export BENCH_SKIP=seed BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-64} BENCH_MODELS=${BENCH_MODELS:-sentiment} \
  BENCH_MODES=${BENCH_MODES:-none} BENCH_LOADS=${BENCH_LOADS:-quiet}
: >"$tmp/results"
for r in $(seq "$rounds"); do
  for which in old new; do
    echo "compare.sh: round $r, $which" >&2
    before=$(ls "$HERE/work"/results-*.json 2>/dev/null | sort | tail -1 || true)
    "$HERE/run.sh" "$tmp/$which" >/dev/null
    after=$(ls "$HERE/work"/results-*.json | sort | tail -1)
    [[ "$after" != "$before" ]] || { echo "compare.sh: run.sh wrote no result" >&2; exit 1; }
    echo "$r $which $after" >>"$tmp/results"
  done
done
/usr/bin/python3 - "$tmp/results" "$old" "$new" <<'PY'
import json, statistics, subprocess, sys
rows = [line.split() for line in open(sys.argv[1])]
table = {}
for rnd, which, path in rows:
    res = json.load(open(path))
    for t in res["table"]:
        for name, a in t["servers"].items():
            key = (t["model"], f"{name}, {t['load']}", t["concurrency"])
            table.setdefault(key, {}).setdefault(which, []).append(a)
meta = json.load(open(rows[0][2]))
print(f"CPU: {meta['cpu_model']} ({meta['n_cpus']} cores); old {sys.argv[2]}; new {sys.argv[3]}")
print("| model | server, load | concurrency | round | old req/s | new req/s | old p99 ms | new p99 ms |")
print("|---|---|---|---|---|---|---|---|")
for (model, what, c), d in table.items():
    for i, (o, n) in enumerate(zip(d["old"], d["new"]), 1):
        print(f"| {model} | {what} | {c} | {i} | {o['rps']:.1f} | {n['rps']:.1f} | {o.get('p99') or 0:.1f} | "
              f"{n.get('p99') or 0:.1f} |")
    rps = statistics.median(n["rps"] / o["rps"] for o, n in zip(d["old"], d["new"]))
    p99 = statistics.median((n.get("p99") or 0) / (o.get("p99") or 1) for o, n in zip(d["old"], d["new"]))
    print(f"median new/old: req/s {rps:.3f}, p99 {p99:.3f} ({model}, {what}, concurrency {c})")
PY
