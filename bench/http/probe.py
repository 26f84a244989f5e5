#!/usr/bin/python3
"""probe.py - small HTTP checks for bench/http/run.sh, so that the benchmark
measures a server that is up and answering correctly.

  wait   polls GET URL+PATH until it answers 200; fails when the server process
         exits first or the timeout passes. Prints {"ready_ms": ...}: time from
         --t0-ns (CLOCK_REALTIME ns, taken by run.sh just before starting the
         server) to the first 200.
  check  POSTs every sentence of predict.lua to /predict one by one, and all of
         them at once as {"texts": [...]}, and checks each answer: 200, a label
         from the model's config.json id2label, a confidence in [0, 1], and for
         aiserve "model" and "model_version" too; the batch answer must agree
         with the single ones. Prints {"labels": [...], "confidences": [...]}.
         Any failure is an error (exit 1) with the reason on stderr.

Usage: probe.py wait --url http://127.0.0.1:PORT --path /health --pid PID
                     [--timeout 180] [--t0-ns N]
       probe.py check --url http://127.0.0.1:PORT --model-dir DIR --kind seed|aiserve
"""

import argparse
import http.client
import json
import os
import re
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))


def sentences():
    """The sentences embedded in predict.lua (one quoted string per line)."""
    with open(os.path.join(HERE, "predict.lua"), encoding="utf-8") as f:
        out = [m.group(1) for m in re.finditer(r'^  "(.*)",$', f.read(), re.M)]
    if not out:
        sys.exit("probe.py: no sentences found in predict.lua")
    return out


def connect(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def request(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by run.sh) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmd_wait(args):
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive(args.pid):
            sys.exit(f"probe.py: the server (pid {args.pid}) exited before it was ready "
                     f"({last})")
        try:
            conn = connect(args.url)
            status, body = request(conn, "GET", args.path)
            conn.close()
            if status == 200:
                t = time.time_ns()
                ready_ms = (t - args.t0_ns) / 1e6 if args.t0_ns else None
                print(json.dumps({"ready_ms": ready_ms}))
                return
            last = f"GET {args.path}: {status} {body[:200]!r}"
        except OSError as e:
            last = f"GET {args.path}: {e}"
        time.sleep(0.01)
    sys.exit(f"probe.py: the server was not ready after {args.timeout} s ({last})")


def fail(msg):
    sys.exit(f"probe.py check: {msg}")


def check_prediction(p, labels, kind, what):
    if not isinstance(p, dict) or p.get("label") not in labels:
        fail(f"{what}: label not one of {sorted(labels)}: {p!r}")
    c = p.get("confidence")
    if not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
        fail(f"{what}: confidence not a number in [0, 1]: {p!r}")


def cmd_check(args):
    with open(os.path.join(args.model_dir, "config.json")) as f:
        labels = set(json.load(f)["id2label"].values())
    texts = sentences()
    conn = connect(args.url)
    got_labels, got_conf = [], []
    for i, text in enumerate(texts):
        status, body = request(conn, "POST", "/predict", {"text": text})
        what = f"POST /predict sentence {i} ({text!r})"
        if status != 200:
            fail(f"{what}: status {status}: {body[:300]!r}")
        try:
            p = json.loads(body)
        except ValueError:
            fail(f"{what}: body is not JSON: {body[:300]!r}")
        check_prediction(p, labels, args.kind, what)
        if args.kind == "aiserve" and not (isinstance(p.get("model"), str) and
                                           isinstance(p.get("model_version"), str)):
            fail(f"{what}: no \"model\" / \"model_version\" strings: {p!r}")
        got_labels.append(p["label"])
        got_conf.append(p["confidence"])
    status, body = request(conn, "POST", "/predict", {"texts": texts})
    what = f"POST /predict with {len(texts)} texts"
    if status != 200:
        fail(f"{what}: status {status}: {body[:300]!r}")
    preds = json.loads(body).get("predictions")
    if not isinstance(preds, list) or len(preds) != len(texts):
        fail(f"{what}: \"predictions\" is not a list of {len(texts)}: {body[:300]!r}")
    for i, p in enumerate(preds):
        check_prediction(p, labels, args.kind, f"{what}, item {i}")
        # Batched and single answers of one server agree (padding must not change
        # a result); confidences are rounded by the servers, hence the tolerance.
        near_tie = max(p["confidence"], got_conf[i]) < 0.501
        if ((p["label"] != got_labels[i] and not near_tie) or
                abs(p["confidence"] - got_conf[i]) > 2e-3):
            fail(f"{what}, item {i}: {p!r} differs from the single answer "
                 f"{got_labels[i]} {got_conf[i]}")
    conn.close()
    print(json.dumps({"labels": got_labels, "confidences": got_conf}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--url", required=True)
    w.add_argument("--path", required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--timeout", type=float, default=180)
    w.add_argument("--t0-ns", type=int, default=0)
    c = sub.add_parser("check")
    c.add_argument("--url", required=True)
    c.add_argument("--model-dir", required=True)
    c.add_argument("--kind", choices=("seed", "aiserve"), required=True)
    args = ap.parse_args()
    {"wait": cmd_wait, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    main()
