#!/usr/bin/python3
"""quantize_onnx.py - the engine benchmark's ONNX Runtime int8 model: what
onnxruntime.quantization.quantize_dynamic makes of the fp32 export's MatMul
nodes, written with python3-onnx alone (onnxruntime's Python package, and so
its quantiser, comes from PyPI, which this machine cannot reach).

Works on any of make_bench_model.py's exports. For every MatMul whose second
input is a constant 2-D weight W [K, N] (found in the graph: the encoder's
linear layers, six a layer: Q, K, V, output, FFN up and down, so 36 in
DistilBERT-base and 72 in the 12-layer RoBERTa-base and MPNet-base; the
bias Add after each stays as it is), exactly as quantize_dynamic's QOperator
format writes it:

    x ──DynamicQuantizeLinear──> x_q (u8), x_scale, x_zero   (per tensor)
    MatMulInteger(x_q, W_q, x_zero, W_zero) -> int32
    Cast(to float) ─> Mul(·, Mul(x_scale, W_scale)) -> the MatMul's output

  - Weights: int8, symmetric (zero point 0, values in [-127, 127], scale
    max|W| / 127, rounded half to even), per output channel by default
    (W_scale and W_zero have N entries: quantize_dynamic(per_channel=True),
    the same weight scheme as aiserve's int8), or one scale for the whole
    tensor with --per-tensor (quantize_dynamic's default).
  - Inputs: u8, asymmetric, one scale per tensor, at run time
    (DynamicQuantizeLinear; aiserve uses one scale per token).
  - One DynamicQuantizeLinear per quantised tensor (Q, K and V share theirs),
    as quantize_dynamic does. The attention products (no constant weight),
    a classifier head (Gemm), embeddings and MPNet's position-bias table
    (Gather), an embedding model's pooling and everything else stay fp32. quantize_dynamic would also store the embedding tables in 8 bits
    (its Gather quantisation), which changes memory, not the forward's
    speed; that is not done here.

ONNX Runtime fuses each DynamicQuantizeLinear -> MatMulInteger -> Cast ->
Mul chain into one DynamicQuantizeMatMul (with the bias Add) at
graphOptimizationLevel 'all', which bench_ort.js sets. After writing the
model this script checks, through onnxruntime-node (bench_ort.js --compare),
that ORT runs it, that the optimised graph holds the fused kernels (none of
the MatMulInteger chains left), and how far its output is from the fp32
model's on every case of cases.json (max |diff|; labels in common for
logits, the least cosine similarity for embeddings).

Messages go to stderr; with --json the check's result is printed on stdout
as one JSON line (run.sh keeps it in the results file).

Usage: quantize_onnx.py FP32.onnx OUT.onnx [--per-tensor] [--cases cases.json]
       [--json] [--force]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def quantize_weight(w, per_channel):
    """Symmetric int8 of W [K, N]: (W_q int8 [K, N], scale float32 [N] or [])."""
    amax = np.abs(w).max(axis=0) if per_channel else np.abs(w).max()
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_model(model, per_channel):
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dynamic = {}  # input tensor name -> (x_q, x_scale, x_zero)
    nodes, added, n_done = [], [], 0
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" else None
        if w_name not in inits or len(inits[w_name].dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        q, scale = quantize_weight(w, per_channel)
        base = node.name or node.output[0]
        q_name, s_name, z_name = w_name + "_quantized", w_name + "_scale", w_name + "_zero_point"
        if q_name not in inits:
            for t in (numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name)):
                added.append(t)
                inits[t.name] = t
        x = node.input[0]
        if x not in dynamic:
            dynamic[x] = (x + "_quantized", x + "_scale", x + "_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(dynamic[x]),
                                          name=x + "_QuantizeLinear"))
        x_q, x_scale, x_zero = dynamic[x]
        y = node.output[0]
        nodes += [
            helper.make_node("MatMulInteger", [x_q, q_name, x_zero, z_name], [y + "_int32"],
                             name=base + "_quant"),
            helper.make_node("Cast", [y + "_int32"], [y + "_cast"], to=TensorProto.FLOAT,
                             name=base + "_quant_cast"),
            helper.make_node("Mul", [x_scale, s_name], [y + "_scales"], name=base + "_quant_scales_mul"),
            helper.make_node("Mul", [y + "_cast", y + "_scales"], [y], name=base + "_quant_output_scale_mul"),
        ]
        n_done += 1
    used = {i for n in nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return n_done


def describe(model):
    """How the model's weights are quantised: MatMuls replaced, scales per tensor or channel."""
    inits = {t.name: t for t in model.graph.initializer}
    mm = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    per_channel = any(len(inits[n.input[1][:-len("_quantized")] + "_scale"].dims) == 1 for n in mm)
    return {"matmuls_quantized": len(mm), "weights": "int8 symmetric, per output channel" if per_channel
            else "int8 symmetric, per tensor", "inputs": "uint8 asymmetric per tensor (DynamicQuantizeLinear)"}


def check(model_path, fp32_path, cases):
    """bench_ort.js --compare: ORT runs the model, fuses it, and its logits
    against the fp32 model's. Returns the check's JSON line."""
    ort_js = os.path.join(HERE, "bench_ort.js")
    with tempfile.TemporaryDirectory() as tmp:
        opt = os.path.join(tmp, "optimized.onnx")
        out = subprocess.run(["node", ort_js, "--model", model_path, "--compare", fp32_path, "--cases", cases,
                              "--optimized-out", opt], check=True, capture_output=True, text=True).stdout
        ops = {}
        for n in onnx.load(opt, load_external_data=False).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    result = json.loads(out.strip().splitlines()[-1])
    result["optimized_ops"] = {k: ops[k] for k in sorted(ops) if k in (
        "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear", "MatMul")}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fp32")
    ap.add_argument("out")
    ap.add_argument("--per-tensor", action="store_true",
                    help="one weight scale per tensor (quantize_dynamic's default), not per output channel")
    ap.add_argument("--cases", help="cases.json: check the result through onnxruntime-node")
    ap.add_argument("--json", action="store_true", help="print the check's result as JSON on stdout")
    ap.add_argument("--force", action="store_true", help="rewrite even if OUT is newer than FP32")
    args = ap.parse_args()

    if (not args.force and os.path.exists(args.out) and
            os.path.getmtime(args.out) >= os.path.getmtime(args.fp32)):
        print(f"quantize_onnx.py: {args.out} exists (--force rewrites)", file=sys.stderr)
    else:
        model = onnx.load(args.fp32)
        n = quantize_model(model, per_channel=not args.per_tensor)
        onnx.checker.check_model(model)
        tmp = args.out + ".tmp"
        onnx.save(model, tmp)
        os.replace(tmp, args.out)
        print(f"quantize_onnx.py: {n} MatMul nodes quantised "
              f"({'per tensor' if args.per_tensor else 'per output channel'}) -> {args.out} "
              f"({os.path.getsize(args.out) / 1e6:.0f} MB)", file=sys.stderr)
    if args.cases:
        r = dict(describe(onnx.load(args.out, load_external_data=False)), **check(args.out, args.fp32, args.cases))
        fused = r["optimized_ops"].get("DynamicQuantizeMatMul", 0) + r["optimized_ops"].get("MatMulIntegerToFloat", 0)
        agreement = (f"labels in common {r['same_label']}/{r['sequences']}" if "same_label" in r
                     else f"least cosine similarity {r['min_cosine']:.6f}")
        print(f"quantize_onnx.py: ONNX Runtime int8 vs fp32 on {r['cases']} cases ({r['sequences']} sequences): "
              f"max |{r['output']} diff| {r['max_abs_diff']:.4g} (largest |value| {r['max_abs_logit']:.3g}), "
              f"{agreement}; {r['matmuls_quantized']} MatMuls quantised; optimised graph: {r['optimized_ops']}",
              file=sys.stderr)
        if fused == 0 or r["optimized_ops"].get("MatMulInteger", 0):
            sys.exit("quantize_onnx.py: ONNX Runtime did not fuse the int8 MatMuls "
                     "(no DynamicQuantizeMatMul in the optimised graph)")
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
