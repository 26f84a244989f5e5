#!/usr/bin/python3
"""report.py - turns the engine benchmark's JSON lines into a table and one
results file.

Reads the JSON lines that bench_engine, bench_ort.js, bench_torch.py,
bench_gemm printed during one run.sh run, plus the run's metadata (which
carries bench_tokenizer's output lines verbatim, when it was built), and

  - prints a table per case: ms per batch for each runtime, seqs/s and useful
    GFLOP/s, and aiserve's speedup over ORT and over PyTorch (peer ms /
    aiserve ms: above 1 means aiserve is faster);
  - prints load-to-first-inference time and resident memory per runtime, and
    the OpenBLAS SGEMM ceiling on the model's shapes;
  - writes everything (raw lines included) to the results JSON.

Lines that are not JSON objects are ignored, so a runtime's log lines may be
mixed in. Nothing here judges the numbers: benchmarks never gate anything.

Usage: report.py RAW.jsonl META.json OUT.json
"""

import json
import sys

RUNTIMES = ("ort", "pytorch", "aiserve")
NAMES = {"ort": "ORT", "pytorch": "PyTorch", "aiserve": "aiserve"}


def read_lines(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: report.py RAW.jsonl META.json OUT.json")
    lines = read_lines(sys.argv[1])
    with open(sys.argv[2]) as f:
        meta = json.load(f)

    by_case = {}
    order = []
    loads = [x for x in lines if x.get("case") == "load"]
    gemm = [x for x in lines if x.get("runtime") == "openblas"]
    tokenizer = meta.pop("tokenizer_lines", [])  # bench_tokenizer's output, verbatim
    for x in lines:
        rt, case = x.get("runtime"), x.get("case")
        if rt in RUNTIMES and case and case != "load" and "ms_median" in x:
            if case not in by_case:
                by_case[case] = {}
                order.append(case)
            by_case[case][rt] = x

    rows = []
    for case in order:
        r = by_case[case]
        any_rt = next(iter(r.values()))
        row = {"case": case, "batch": any_rt["batch"], "seq": any_rt["seq"],
               "tokens": any_rt.get("tokens")}
        for rt in RUNTIMES:
            if rt in r:
                row[f"{rt}_ms"] = r[rt]["ms_median"]
                row[f"{rt}_ms_p90"] = r[rt]["ms_p90"]
                row[f"{rt}_seqs_per_s"] = r[rt]["seqs_per_s"]
                row[f"{rt}_gflops"] = r[rt]["gflops"]
        if "aiserve" in r:
            for peer in ("ort", "pytorch"):
                if peer in r:
                    row[f"speedup_vs_{peer}"] = round(
                        r[peer]["ms_median"] / r["aiserve"]["ms_median"], 3)
        rows.append(row)

    print(f"engine benchmark  {meta.get('date')}  rev {meta.get('git_revision')}"
          f"{' (dirty)' if meta.get('git_dirty') else ''}")
    print(f"cpu: {meta.get('cpu_model')}, {meta.get('n_cpus')} cpus; threads per runtime: "
          f"{meta.get('threads')}; OPENBLAS_CORETYPE={meta.get('env', {}).get('OPENBLAS_CORETYPE')}")
    print(f"versions: {json.dumps(meta.get('versions', {}))}")
    marks = [x for x in lines if x.get("info") == "cpu"]
    contention = []
    for a, b in zip(marks, marks[1:]):
        cpu_s = (b["t"] - a["t"]) * a["ncpu"]
        if cpu_s <= 0:
            continue
        other = max(0.0, (b["busy"] - a["busy"]) - (b["self"] - a["self"])) / a["hz"]
        contention.append({"part": a["mark"], "seconds": round(b["t"] - a["t"], 1),
                           "other_cpu_share": round(other / cpu_s, 3),
                           "steal_share": round((b["steal"] - a["steal"]) / a["hz"] / cpu_s, 3)})
    if contention:
        print("CPU taken by other processes while each part ran (share of all cpus): "
              + ", ".join(f"{c['part']} {100 * c['other_cpu_share']:.0f}%" for c in contention)
              + "; steal: " + ", ".join(f"{100 * c['steal_share']:.0f}%" for c in contention))
    meta["contention"] = contention
    print()
    head = (f"{'case':<10} {'tok':>5} | {'ms/batch: ORT':>13} {'PyTorch':>9} {'aiserve':>9} |"
            f" {'seqs/s: ORT':>11} {'PyTorch':>8} {'aiserve':>8} |"
            f" {'GFLOP/s: ORT':>12} {'PyTorch':>8} {'aiserve':>8} |"
            f" {'x vs ORT':>8} {'x vs PT':>8}")
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['case']:<10} {row['tokens'] or 0:>5} |"
              f" {fmt(row.get('ort_ms'), 2):>13} {fmt(row.get('pytorch_ms'), 2):>9}"
              f" {fmt(row.get('aiserve_ms'), 2):>9} |"
              f" {fmt(row.get('ort_seqs_per_s')):>11} {fmt(row.get('pytorch_seqs_per_s')):>8}"
              f" {fmt(row.get('aiserve_seqs_per_s')):>8} |"
              f" {fmt(row.get('ort_gflops')):>12} {fmt(row.get('pytorch_gflops')):>8}"
              f" {fmt(row.get('aiserve_gflops')):>8} |"
              f" {fmt(row.get('speedup_vs_ort'), 2):>8} {fmt(row.get('speedup_vs_pytorch'), 2):>8}")
    print("(x vs ORT / x vs PT: peer ms / aiserve ms, above 1 = aiserve faster; aiserve's time"
          " includes tokenizing the text, the peers' does not)")

    if loads:
        print()
        print(f"{'load (median of runs)':<22} {'to loaded ms':>12} {'to 1st result ms':>16}"
              f" {'RSS loaded MB':>13} {'RSS after 1st MB':>16}")
        for x in loads:
            print(f"{NAMES.get(x['runtime'], x['runtime']):<22} {fmt(x.get('load_ms')):>12}"
                  f" {fmt(x.get('first_inference_ms')):>16} {fmt(x.get('rss_after_load_mb')):>13}"
                  f" {fmt(x.get('rss_after_first_mb')):>16}")

    shapes = [x for x in gemm if "gflops" in x]
    if shapes:
        print()
        print("OpenBLAS sgemm GFLOP/s (y = x W^T, NoTrans/Trans; M = tokens)")
        groups = {}
        for x in shapes:
            groups.setdefault((x.get("corename"), x["threads"]), []).append(x)
        for (core, threads), xs in groups.items():
            cells = "  ".join(f"{x['case'].replace('linear_', '')}={x['gflops']:.0f}" for x in xs)
            print(f"  {core}, {threads} thr: {cells}")

    if tokenizer:
        print()
        for x in tokenizer:
            print("tokenizer:", x)

    result = dict(meta, table=rows, load=loads, gemm=gemm, tokenizer=tokenizer, raw=lines)
    with open(sys.argv[3], "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print()
    print(f"results: {sys.argv[3]}")


if __name__ == "__main__":
    main()
