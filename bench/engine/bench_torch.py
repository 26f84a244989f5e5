#!/usr/bin/python3
"""bench_torch.py - PyTorch eager on the engine benchmark's cases: the stack
aiserve replaces (a FastAPI service calling a transformers model).

  - The model is tools/hf_reference.py's class for config.json's
    architecture (DistilBertForSequenceClassification,
    RobertaForSequenceClassification, MPNetModel: transformers' module
    layout and math) loaded from the same model.safetensors the C engine
    reads; torch.set_num_threads(2), torch.set_num_interop_threads(1),
    everything under torch.no_grad(), F32.
  - A classifier's forward gives logits. An embedding model's (no id2label)
    is followed by what sentence-transformers' Pooling(mean) and Normalize
    modules compute, the mean of the last hidden states over the attention
    mask, L2-normalised (the pooling make_bench_model.py's files name), and
    that is timed with it.
  - Each case is padded to its longest sequence with the model's pad id
    (cases.json's meta.pad_id) and an attention mask, as a user of
    transformers would (a case with "batch_size", the offline run,
    as consecutive batches of that many, each padded to its own longest,
    timed as a whole); GFLOP/s counts the useful (unpadded) FLOPs from
    cases.json, the same count for every runtime.
  - Timing: --warmup runs (fewer once they take --seconds, at least one),
    then runs until both --min-runs runs and --seconds have passed; median
    and p90 of the forward call only (input tensors are built once per
    case). One JSON line per case on stdout.
  - --load: process start (--t0-ns, CLOCK_REALTIME ns taken just before exec)
    to the first result (16 ids inside every bench model's vocabulary), and
    VmRSS after load and after it.

Usage: bench_torch.py --model-dir DIR (--cases cases.json | --load)
       [--seconds 2] [--min-runs 3] [--warmup 2] [--threads 2] [--t0-ns N]
"""

import time

T_START_NS = time.time_ns()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import hf_reference as hf  # noqa: E402


def vm_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_model(model_dir):
    """The model and its forward(ids, mask): logits, or a normalised mean embedding."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model = hf.model_from_config(config)
    model.load_state_dict(hf.read_safetensors(os.path.join(model_dir, "model.safetensors")))
    model.eval()
    if "id2label" in config:
        return model
    return lambda ids, mask: hf.l2_normalize(hf.pool_mean(model(ids, mask), mask))


def padded(seqs, pad_id=0):
    seq = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), seq), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(seqs), seq, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def median(xs):
    n = len(xs)
    return xs[(n - 1) // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def percentile(xs, q):
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


@torch.no_grad()
def bench_cases(model, args):
    with open(args.cases) as f:
        doc = json.load(f)
    pad_id = doc.get("meta", {}).get("pad_id", 0)
    for c in doc["cases"]:
        size = c.get("batch_size") or len(c["input_ids"])
        calls = [padded(c["input_ids"][i:i + size], pad_id) for i in range(0, len(c["input_ids"]), size)]
        warm = time.perf_counter()
        for i in range(args.warmup):
            if i >= 1 and time.perf_counter() - warm >= args.seconds:
                break
            for ids, mask in calls:
                model(ids, mask)
        ms = []
        start = time.perf_counter()
        while len(ms) < args.min_runs or time.perf_counter() - start < args.seconds:
            t0 = time.perf_counter()
            for ids, mask in calls:
                model(ids, mask)
            ms.append((time.perf_counter() - t0) * 1e3)
        ms.sort()
        med = median(ms)
        print(json.dumps({
            "runtime": "pytorch", "case": c["name"], "batch": c["batch"], "seq": c["seq"],
            "ms_median": round(med, 4), "ms_p90": round(percentile(ms, 0.9), 4),
            "seqs_per_s": round(c["batch"] / (med / 1e3), 2),
            "gflops": round(c["useful_flops"] / (med / 1e3) / 1e9, 2),
            "tokens": c["tokens"], "padded_tokens": sum(ids.numel() for ids, _ in calls), "runs": len(ms),
            "threads": args.threads}), flush=True)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--cases")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--min-runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--t0-ns", type=int, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t0_ns = args.t0_ns if args.t0_ns is not None else T_START_NS
    model = load_model(args.model_dir)
    if args.load:
        rss_load = vm_rss_mb()
        loaded_ns = time.time_ns()
        ids = [101] + [2000 + i for i in range(14)] + [102]
        model(*padded([ids]))
        first_ns = time.time_ns()
        print(json.dumps({
            "runtime": "pytorch", "case": "load", "load_ms": (loaded_ns - t0_ns) / 1e6,
            "first_inference_ms": (first_ns - t0_ns) / 1e6,
            "rss_after_load_mb": round(rss_load, 1), "rss_after_first_mb": round(vm_rss_mb(), 1),
            "threads": args.threads}))
        return
    if not args.cases:
        sys.exit("bench_torch.py: one of --cases, --load is required")
    bench_cases(model, args)


if __name__ == "__main__":
    main()
