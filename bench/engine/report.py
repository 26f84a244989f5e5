#!/usr/bin/python3
"""report.py - turns the engine benchmark's JSON lines into tables and one
results file.

Reads the JSON lines that bench_engine, bench_ort.js, bench_torch.py,
bench_gemm and bench_peak printed during one run.sh run (run.sh adds "model" to each
runtime's lines, and puts quantize_onnx.py's check of each model's int8
ONNX model in as {"info": "ort_int8_model", "model", ...}), plus the run's
metadata (the models, as make_cases.py describes them, and
bench_tokenizer's output lines verbatim, when it was built), and for each
model, in one section:

  - takes each runtime's median over the rounds per case (ms per batch), and
    prints a table of those, with each round's value in the results file;
  - prints the ratios (peer ms / aiserve ms: above 1 means aiserve is
    faster): aiserve fp32 against ORT fp32 and PyTorch, aiserve int8 against
    ORT int8 and ORT fp32, aiserve bf16 and int8 against aiserve fp32; and,
    for distilbert-base, the model issue 19 set them on, that issue's
    targets on the cases they name, met or not;
  - prints useful GFLOP/s and sequences per second per runtime;
  - prints load-to-first-inference time and resident memory per runtime;
then the OpenBLAS SGEMM ceiling on the models' shapes (the same 768/3072
shapes for all three), and writes everything (raw lines included) to the
results JSON, with one entry per model under "models".

Lines that are not JSON objects are ignored, so a runtime's log lines may be
mixed in. Nothing here judges the numbers: benchmarks never gate anything.

Usage: report.py RAW.jsonl META.json OUT.json
"""

import json
import sys

import statistics

RUNTIMES = ("ort", "ort-int8", "pytorch", "aiserve", "aiserve-bf16", "aiserve-int8")
NAMES = {"ort": "ORT", "ort-int8": "ORT int8", "pytorch": "PyTorch", "aiserve": "aiserve",
         "aiserve-bf16": "aiserve bf16", "aiserve-int8": "aiserve int8"}
# (column, runtime, peer): peer ms / runtime ms
RATIOS = (("fp32/ORT", "aiserve", "ort"), ("int8/ORT-int8", "aiserve-int8", "ort-int8"),
          ("int8/ORT", "aiserve-int8", "ort"), ("bf16/fp32", "aiserve-bf16", "aiserve"),
          ("int8/fp32", "aiserve-int8", "aiserve"), ("fp32/PT", "aiserve", "pytorch"))
# The targets (issue 19, on TARGET_MODEL): (ratio column, cases, at least)
TARGETS = (("int8/ORT-int8", ("b1_s16", "b8_s64", "b32_s64"), 1.3), ("int8/ORT-int8", ("sst2_256",), 1.5),
           ("bf16/fp32", ("b8_s64", "b32_s64"), 1.6))
TARGET_MODEL = "distilbert-base"


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


def model_section(model, lines, meta):
    """Prints one model's tables; returns its entry for the results file."""
    by_case = {}
    order = []
    lines = [x for x in lines if x.get("model") == model["name"]]
    loads = [x for x in lines if x.get("case") == "load"]
    for x in lines:
        rt, case = x.get("runtime"), x.get("case")
        if rt in RUNTIMES and case and case != "load" and "ms_median" in x:
            if case not in by_case:
                by_case[case] = {}
                order.append(case)
            by_case[case].setdefault(rt, []).append(x)

    rows = []
    fallbacks = sorted({f"{x['runtime']}: {x['note']}" for x in lines if x.get("note")})
    for case in order:
        r = by_case[case]
        any_rt = next(iter(r.values()))[0]
        row = {"case": case, "batch": any_rt["batch"], "seq": any_rt["seq"],
               "tokens": any_rt.get("tokens")}
        ms = {}
        for rt in RUNTIMES:
            if rt in r:
                runs = r[rt]
                ms[rt] = statistics.median(x["ms_median"] for x in runs)
                row[f"{rt}_ms"] = round(ms[rt], 4)
                row[f"{rt}_ms_rounds"] = [x["ms_median"] for x in runs]
                row[f"{rt}_ms_p90"] = statistics.median(x["ms_p90"] for x in runs)
                row[f"{rt}_seqs_per_s"] = round(any_rt["batch"] / (ms[rt] / 1e3), 2)
                row[f"{rt}_gflops"] = round(statistics.median(x["gflops"] for x in runs), 2)
        for col, rt, peer in RATIOS:
            if rt in ms and peer in ms:
                row[f"x_{col}"] = round(ms[peer] / ms[rt], 3)
        rows.append(row)

    print()
    print(f"=== {model.get('description', model['name'])}")
    q = next((x for x in lines if x.get("info") == "ort_int8_model"), None)
    if q:
        agreement = (f"labels in common {q['same_label']}/{q['sequences']}" if "same_label" in q
                     else f"least cosine similarity {q['min_cosine']:.6f}")
        print(f"ORT int8 model: {q['matmuls_quantized']} MatMuls, weights {q['weights']}, inputs {q['inputs']}; "
              f"max |{q['output']} diff| from ORT fp32 {q['max_abs_diff']:.4g} (largest |value| "
              f"{q['max_abs_logit']:.3g}), {agreement}; fused: {json.dumps(q['optimized_ops'])}")
    for f in fallbacks:
        print(f"NOTE, a mode fell back: {f}")
    present = [rt for rt in RUNTIMES if any(f"{rt}_ms" in row for row in rows)]
    print()
    print(f"ms per batch, median over {meta.get('rounds', 1)} round(s)")
    head = f"{'case':<10} {'tok':>5} |" + "".join(f" {NAMES[rt]:>12}" for rt in present)
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['case']:<10} {row['tokens'] or 0:>5} |"
              + "".join(f" {fmt(row.get(f'{rt}_ms'), 2):>12}" for rt in present))
    cols = [c for c, rt, peer in RATIOS if rt in present and peer in present]
    if cols:
        print()
        print("speed ratios (peer ms / aiserve ms; above 1 = the first named is faster)")
        head = f"{'case':<10} |" + "".join(f" {c:>13}" for c in cols)
        print(head)
        print("-" * len(head))
        for row in rows:
            print(f"{row['case']:<10} |" + "".join(f" {fmt(row.get(f'x_{c}'), 2):>13}" for c in cols))
        print("(aiserve's times include tokenizing the text, the peers' do not)")
    targets = []
    for col, cases, least in TARGETS if model["name"] == TARGET_MODEL else ():
        for case in cases:
            row = next((r for r in rows if r["case"] == case), None)
            if row and f"x_{col}" in row:
                targets.append({"ratio": col, "case": case, "at_least": least, "measured": row[f"x_{col}"],
                                "met": row[f"x_{col}"] >= least})
    if targets:
        print()
        print("targets: " + "; ".join(f"{t['ratio']} {t['case']} {t['measured']:.2f} (>= {t['at_least']}: "
                                      f"{'met' if t['met'] else 'NOT met'})" for t in targets))
    print()
    print("sequences/s and useful GFLOP/s (medians over the rounds)")
    head = f"{'case':<10} |" + "".join(f" {NAMES[rt]:>13}" for rt in present)
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['case']:<10} |" + "".join(
            f" {fmt(row.get(f'{rt}_seqs_per_s')):>6}/{fmt(row.get(f'{rt}_gflops'), 0):>6}" for rt in present))

    if loads:
        print()
        print(f"{'load (median of runs)':<22} {'to loaded ms':>12} {'to 1st result ms':>16}"
              f" {'RSS loaded MB':>13} {'RSS after 1st MB':>16}")
        for x in loads:
            print(f"{NAMES.get(x['runtime'], x['runtime']):<22} {fmt(x.get('load_ms')):>12}"
                  f" {fmt(x.get('first_inference_ms')):>16} {fmt(x.get('rss_after_load_mb')):>13}"
                  f" {fmt(x.get('rss_after_first_mb')):>16}")
        rss = {x["runtime"]: x.get("rss_after_first_mb") for x in loads}
        if rss.get("aiserve") and rss.get("aiserve-int8"):
            share = rss["aiserve-int8"] / rss["aiserve"]
            line = f"aiserve int8 RSS after the first result: {100 * share:.0f}% of fp32's"
            if model["name"] == TARGET_MODEL:
                targets.append({"ratio": "rss int8/fp32", "case": "load", "at_most": 0.4,
                                "measured": round(share, 3), "met": share <= 0.4})
                line += f" (target at most 40%: {'met' if share <= 0.4 else 'NOT met'})"
            print(line)
    return dict(model, ort_int8_model=q, table=rows, targets=targets, load=loads)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: report.py RAW.jsonl META.json OUT.json")
    lines = read_lines(sys.argv[1])
    with open(sys.argv[2]) as f:
        meta = json.load(f)
    gemm = [x for x in lines if x.get("runtime") == "openblas"]
    tokenizer = meta.pop("tokenizer_lines", [])  # bench_tokenizer's output, verbatim

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
    meta["models"] = [model_section(m, lines, meta) for m in meta.get("models", [])]

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

    peaks = [x for x in lines if x.get("runtime") == "peak"]
    kernels = [x for x in lines if x.get("runtime") == "kernel"]
    if peaks:
        print()
        print("Arithmetic peaks (bench_peak: one instruction, registers only), Gop/s: "
              + ", ".join(f"{x['case'][5:]} {x['insn']} {x['threads']} thr {x['gops']:.0f}" for x in peaks))
    if kernels:
        print("The engine's linear kernels on 1 thread, Gop/s (share of that thread's peak); M = tokens")
        groups = {}
        for x in kernels:
            groups.setdefault((x["mode"], x["kernels"]), []).append(x)
        for (mode, name), xs in groups.items():
            cells = "  ".join(f"m{x['m']}_k{x['k']}_n{x['n']}={x['gops']:.0f}"
                              + (f" ({100 * x['of_peak']:.0f}%)" if x.get("of_peak") is not None else "")
                              for x in xs)
            print(f"  {mode} ({name}): {cells}")

    if tokenizer:
        print()
        for x in tokenizer:
            print("tokenizer:", x)

    result = dict(meta, gemm=gemm, peaks=peaks, kernels=kernels, tokenizer=tokenizer, raw=lines)
    with open(sys.argv[3], "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print()
    print(f"results: {sys.argv[3]}")


if __name__ == "__main__":
    main()
