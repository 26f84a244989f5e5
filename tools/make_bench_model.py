#!/usr/bin/python3
"""make_bench_model.py - the engine benchmark's models, in the two forms their
runtimes load.

Writes a checkpoint with exactly the shape of a real hub model (--model) but
random weights from a fixed seed, because no hub can be reached from here and
the benchmark measures speed, not accuracy:

  distilbert-base (the default): distilbert-base-uncased-finetuned-sst-2-english
      DistilBertForSequenceClassification: dim 768, 6 layers, 12 heads,
      hidden_dim 3072, vocab 30522, 512 positions, gelu, labels
      NEGATIVE/POSITIVE; 66,955,010 parameters. Tokenizer: bert-base-uncased's
      vocab.txt (shared/data).
  roberta-base: cardiffnlp/twitter-roberta-base-sentiment-latest
      RobertaForSequenceClassification: hidden 768, 12 layers, 12 heads,
      intermediate 3072, vocab 50265, 514 positions, pad 1, type_vocab_size
      1, gelu, layer_norm_eps 1e-5, labels negative/neutral/positive;
      124,647,939 parameters. Tokenizer: tests/fixtures/tokenizer/
      bpe_roberta.json, a byte-level BPE in RoBERTa's layout (6,000 tokens
      trained on SST-2); the embedding table keeps its 50,265 rows, the
      tokenizer uses the first 6,000.
  mpnet-base: sentence-transformers/all-mpnet-base-v2
      MPNetModel (with its pooler, as the checkpoint has it) + mean pooling +
      Normalize (sentence-transformers' files, max_seq_length 384): hidden
      768, 12 layers, 12 heads, intermediate 3072, vocab 30527, 514
      positions, 32 relative-attention buckets, layer_norm_eps 1e-5;
      109,486,464 parameters. Tokenizer: MPNet's WordPiece tokenizer.json
      built from bert-base-uncased's vocab.txt (<s> <pad> </s> <unk> first,
      <mask> last).

For --model NAME it writes

  bench/engine/work/NAME/       Hugging Face model dir (config.json,
                                model.safetensors F32, the tokenizer:
                                vocab.txt or tokenizer.json, and
                                tokenizer_config.json; sentence-transformers'
                                files for mpnet-base)
  bench/engine/work/NAME.onnx   the same weights through torch.onnx.export
                                (opset 14; inputs input_ids, attention_mask
                                int64 [batch, sequence]; output logits
                                [batch, labels], or for mpnet-base
                                sentence_embedding [batch, 768]: the mean
                                over the mask, L2-normalised, in the graph)
  bench/engine/work/onnx-check.json (distilbert-base),
  bench/engine/work/onnx-check-NAME.json (the others)
                                a few padded batches and PyTorch's output for
                                them, which bench_ort.js --check compares
                                with ONNX Runtime's (1e-4)

Weights: Linear weights and embeddings ~ N(0, 0.02) (BERT's initializer_range),
biases ~ N(0, 0.02) rather than zero so the bias adds do work, LayerNorm weight
1 + N(0, 0.02) and bias N(0, 0.02). The model classes, config layout and the
safetensors writer come from tools/hf_reference.py (Hugging Face state_dict
names), and the tokenizer.json layouts and sentence-transformers files from
tools/make_fixtures.py, so the C engine, PyTorch and ONNX Runtime all see the
same tensors.

Usage: tools/make_bench_model.py [--model distilbert-base|roberta-base|mpnet-base]
       [--out DIR] [--force] [--skip-check]
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
import make_fixtures as fixtures  # noqa: E402  (tokenizer.json layouts, sentence-transformers files)

SEED = 20240601
VOCAB = os.path.join(os.path.dirname(ROOT), "shared", "data", "bert-base-uncased-vocab.txt")
BPE_ROBERTA = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "bpe_roberta.json")
DEFAULT_OUT = os.path.join(ROOT, "bench", "engine", "work")
MODELS = ("distilbert-base", "roberta-base", "mpnet-base")


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


def make_distilbert_base(model_dir):
    """Writes distilbert-base's model dir; returns (model, cls id, sep id, pad id)."""
    vocab_path = find_vocab()
    vocab = hf.load_vocab(vocab_path)
    config = distilbert_base_config(len(vocab))
    model = randomize_(hf.DistilBertForSequenceClassification(config), SEED).eval()
    hf.save_model_dir(model_dir, model, config, vocab, dtype="F32", do_lower_case=True,
                      model_max_length=512)
    shutil.copyfile(vocab_path, os.path.join(model_dir, "vocab.txt"))  # byte-exact copy
    return model, vocab.index("[CLS]"), vocab.index("[SEP]"), config["pad_token_id"]


def make_roberta_base(model_dir):
    """cardiffnlp/twitter-roberta-base-sentiment-latest's shape with bpe_roberta.json."""
    with open(BPE_ROBERTA, encoding="utf-8") as f:
        tokenizer = json.load(f)
    config = hf.roberta_config(50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=514,
                               labels=["negative", "neutral", "positive"])
    model = randomize_(hf.RobertaForSequenceClassification(config), SEED).eval()
    hf.save_model_dir(model_dir, model, config, None, dtype="F32", tokenizer_json=tokenizer,
                      tokenizer_config=fixtures.TOKENIZER_CONFIGS["bpe"])
    vocab = tokenizer["model"]["vocab"]
    return model, vocab["<s>"], vocab["</s>"], config["pad_token_id"]


def make_mpnet_base(model_dir):
    """sentence-transformers/all-mpnet-base-v2's shape: MPNetModel, mean pooling, Normalize."""
    tokenizer = fixtures.wordpiece_tokenizer(hf.load_vocab(find_vocab()), mpnet=True)
    vocab = tokenizer["model"]["vocab"]
    config = hf.mpnet_config(len(vocab), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=514,
                             architecture="MPNetModel")
    assert config["vocab_size"] == 30527, config["vocab_size"]
    model = randomize_(hf.MPNetModel(config), SEED).eval()
    hf.save_model_dir(model_dir, model, config, None, dtype="F32", tokenizer_json=tokenizer,
                      tokenizer_config=fixtures.TOKENIZER_CONFIGS["mpnet"])
    fixtures.write_sentence_transformers(model_dir, config["hidden_size"], 384)
    return model, vocab["<s>"], vocab["</s>"], config["pad_token_id"]


MAKERS = {"distilbert-base": make_distilbert_base, "roberta-base": make_roberta_base,
          "mpnet-base": make_mpnet_base}


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


def output_name(model):
    """The ONNX output: a classifier's logits, an embedding model's sentence_embedding."""
    return "logits" if "id2label" in model.config else "sentence_embedding"


class OnnxWrapper(torch.nn.Module):
    """Plain positional forward(input_ids, attention_mask) for export: a
    classifier's logits, or an embedding model's last hidden states averaged
    over the mask and L2-normalised (sentence-transformers' Pooling(mean) and
    Normalize, as make_mpnet_base's files say)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.embed = output_name(model) == "sentence_embedding"

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids, attention_mask)
        return hf.l2_normalize(hf.pool_mean(out, attention_mask)) if self.embed else out


def export_onnx(model, path):
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    out = output_name(model)
    torch.onnx.export(OnnxWrapper(model).eval(), (ids, mask), path, opset_version=14,
                      input_names=["input_ids", "attention_mask"], output_names=[out],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "attention_mask": {0: "batch", 1: "sequence"},
                                    out: {0: "batch"}},
                      do_constant_folding=True)
    import onnx
    onnx.checker.check_model(path)


@torch.no_grad()
def write_check(model, path, special_ids, pad_id):
    """A few padded batches of random ids and PyTorch's output for them
    (under the ONNX output's name)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    wrapper = OnnxWrapper(model).eval()
    cases = []
    for batch, lengths in ((1, [7]), (3, [16, 5, 11]), (4, [64, 33, 2, 50])):
        seq = max(lengths)
        ids = torch.full((batch, seq), pad_id, dtype=torch.int64)
        mask = torch.zeros(batch, seq, dtype=torch.int64)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.randint(1000, model.config["vocab_size"], (n,), generator=gen)
            ids[i, 0], ids[i, n - 1] = special_ids
            mask[i, :n] = 1
        out = wrapper(ids, mask)
        cases.append({"batch": batch, "seq": seq, "input_ids": ids.flatten().tolist(),
                      "attention_mask": mask.flatten().tolist(),
                      output_name(model): out.flatten().tolist()})
    with open(path, "w") as f:
        json.dump({"tolerance": 1e-4, "cases": cases}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=MODELS, default=MODELS[0],
                    help="the shape to write (default distilbert-base)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default bench/engine/work)")
    ap.add_argument("--force", action="store_true", help="rewrite even if present")
    ap.add_argument("--skip-check", action="store_true", help="do not run the ORT check")
    args = ap.parse_args()

    model_dir = os.path.join(args.out, args.model)
    onnx_path = os.path.join(args.out, f"{args.model}.onnx")
    check_path = os.path.join(args.out, "onnx-check.json" if args.model == MODELS[0]
                              else f"onnx-check-{args.model}.json")
    done = all(os.path.exists(p) for p in (os.path.join(model_dir, "model.safetensors"),
                                           onnx_path, check_path))
    if done and not args.force:
        print(f"make_bench_model.py: {model_dir} and {onnx_path} exist (--force rewrites)")
        return

    torch.manual_seed(SEED)
    model, cls_id, sep_id, pad_id = MAKERS[args.model](model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"make_bench_model.py: {args.model}: {n_params:,} parameters")
    print(f"make_bench_model.py: wrote {model_dir}")

    # Export what was written (read back), so ONNX and safetensors are the same bytes.
    model.load_state_dict(hf.read_safetensors(os.path.join(model_dir, "model.safetensors")))
    export_onnx(model, onnx_path)
    print(f"make_bench_model.py: wrote {onnx_path}")
    write_check(model, check_path, (cls_id, sep_id), pad_id)

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
