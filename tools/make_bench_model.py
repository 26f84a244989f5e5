#!/usr/bin/python3
"""make_bench_model.py - the engine benchmark's model, in the two forms its
runtimes load.

Writes a checkpoint with exactly the shape of distilbert-base-uncased-finetuned-
sst-2-english (dim 768, 6 layers, 12 heads, hidden_dim 3072, vocab 30522, 512
positions, gelu, labels NEGATIVE/POSITIVE; 66,955,010 parameters) but random
weights from a fixed seed, because no hub can be reached from here and the
benchmark measures speed, not accuracy:

  bench/engine/work/distilbert-base/      Hugging Face model dir (config.json,
                                          model.safetensors F32, vocab.txt,
                                          tokenizer_config.json)
  bench/engine/work/distilbert-base.onnx  the same weights through
                                          torch.onnx.export (opset 14; inputs
                                          input_ids, attention_mask int64
                                          [batch, sequence]; output logits)
  bench/engine/work/onnx-check.json       a few inputs and PyTorch's logits,
                                          which bench_ort.js --check compares
                                          with ONNX Runtime's (1e-4)

Weights: Linear weights and embeddings ~ N(0, 0.02) (BERT's initializer_range),
biases ~ N(0, 0.02) rather than zero so the bias adds do work, LayerNorm weight
1 + N(0, 0.02) and bias N(0, 0.02). The model classes, config layout and the
safetensors writer come from tools/hf_reference.py (Hugging Face state_dict
names), so the C engine, PyTorch and ONNX Runtime all see the same tensors.

Usage: tools/make_bench_model.py [--out DIR] [--force] [--skip-check]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import hf_reference as hf  # noqa: E402

SEED = 20240601
VOCAB = os.path.join(os.path.dirname(ROOT), "shared", "data", "bert-base-uncased-vocab.txt")
DEFAULT_OUT = os.path.join(ROOT, "bench", "engine", "work")


def find_vocab():
    """bert-base-uncased's vocab.txt from shared/data (beside the checkout)."""
    for path in (VOCAB, "/work/shared/data/bert-base-uncased-vocab.txt"):
        if os.path.exists(path):
            return path
    sys.exit("make_bench_model.py: bert-base-uncased-vocab.txt not found in shared/data")


def distilbert_base_config(vocab_size):
    """config.json of distilbert-base-uncased-finetuned-sst-2-english."""
    cfg = hf.distilbert_config(vocab_size, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                               activation="gelu", max_position_embeddings=512,
                               labels=["NEGATIVE", "POSITIVE"])
    cfg["finetuning_task"] = "sst-2"
    cfg["output_past"] = True
    return dict(sorted(cfg.items()))


@torch.no_grad()
def randomize_(model, seed):
    """Deterministic BERT-style random weights (see the file header)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen) * 0.02
        if "LayerNorm" in name or "layer_norm" in name:
            p.copy_(noise + 1.0 if name.endswith("weight") else noise)
        else:
            p.copy_(noise)
    return model


class OnnxWrapper(torch.nn.Module):
    """Plain positional forward(input_ids, attention_mask) -> logits for export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def export_onnx(model, path):
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    torch.onnx.export(OnnxWrapper(model).eval(), (ids, mask), path, opset_version=14,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "attention_mask": {0: "batch", 1: "sequence"},
                                    "logits": {0: "batch"}},
                      do_constant_folding=True)
    import onnx
    onnx.checker.check_model(path)


@torch.no_grad()
def write_check(model, path, vocab_size):
    """A few padded batches of random ids and PyTorch's logits for them."""
    gen = torch.Generator().manual_seed(SEED + 1)
    cases = []
    for batch, lengths in ((1, [7]), (3, [16, 5, 11]), (4, [64, 33, 2, 50])):
        seq = max(lengths)
        ids = torch.zeros(batch, seq, dtype=torch.int64)
        mask = torch.zeros(batch, seq, dtype=torch.int64)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.randint(1000, vocab_size, (n,), generator=gen)
            ids[i, 0], ids[i, n - 1] = 101, 102
            mask[i, :n] = 1
        logits = model(ids, mask)
        cases.append({"batch": batch, "seq": seq, "input_ids": ids.flatten().tolist(),
                      "attention_mask": mask.flatten().tolist(),
                      "logits": logits.flatten().tolist()})
    with open(path, "w") as f:
        json.dump({"tolerance": 1e-4, "cases": cases}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default bench/engine/work)")
    ap.add_argument("--force", action="store_true", help="rewrite even if present")
    ap.add_argument("--skip-check", action="store_true", help="do not run the ORT check")
    args = ap.parse_args()

    model_dir = os.path.join(args.out, "distilbert-base")
    onnx_path = os.path.join(args.out, "distilbert-base.onnx")
    check_path = os.path.join(args.out, "onnx-check.json")
    done = all(os.path.exists(p) for p in (os.path.join(model_dir, "model.safetensors"),
                                           onnx_path, check_path))
    if done and not args.force:
        print(f"make_bench_model.py: {model_dir} and {onnx_path} exist (--force rewrites)")
        return

    torch.manual_seed(SEED)
    vocab_path = find_vocab()
    vocab = hf.load_vocab(vocab_path)
    config = distilbert_base_config(len(vocab))
    model = randomize_(hf.DistilBertForSequenceClassification(config), SEED).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"make_bench_model.py: {n_params:,} parameters")

    hf.save_model_dir(model_dir, model, config, vocab, dtype="F32", do_lower_case=True,
                      model_max_length=512)
    shutil.copyfile(vocab_path, os.path.join(model_dir, "vocab.txt"))  # byte-exact copy
    print(f"make_bench_model.py: wrote {model_dir}")

    # Export what was written (read back), so ONNX and safetensors are the same bytes.
    model.load_state_dict(hf.read_safetensors(os.path.join(model_dir, "model.safetensors")))
    export_onnx(model, onnx_path)
    print(f"make_bench_model.py: wrote {onnx_path}")
    write_check(model, check_path, len(vocab))

    if args.skip_check:
        return
    ort_js = os.path.join(ROOT, "bench", "engine", "bench_ort.js")
    if not os.path.isdir(os.path.join(ROOT, "bench", "engine", "node_modules", "onnxruntime-node")):
        print("make_bench_model.py: onnxruntime-node not installed; skipped the ORT check "
              "(cd bench/engine && ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
        return
    subprocess.run(["node", ort_js, "--model", onnx_path, "--check", check_path], check=True)


if __name__ == "__main__":
    main()
