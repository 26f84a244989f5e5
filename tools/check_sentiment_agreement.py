#!/usr/bin/python3
"""check_sentiment_agreement.py - check that aiserve's C engine agrees with
the PyTorch reference on a sentiment model directory.

    /usr/bin/python3 tools/check_sentiment_agreement.py MODEL_DIR TSV [AISERVE]

MODEL_DIR: a Hugging Face BERT classifier directory (e.g. models/sentiment/1).
TSV: `sentence\\tlabel` file with a header (e.g. /work/shared/data/sst2/dev.tsv);
     sentences are passed exactly as in the file (only the newline stripped).
AISERVE: path of the aiserve binary (default build/aiserve next to tools/).

Runs `aiserve predict --model MODEL_DIR --input <sentences file>` and the
tools/hf_reference.py forward of the same weights (read back with
read_safetensors, computed in float64), then reports label mismatches and the
largest |probability difference|, plus both accuracies against the TSV labels.
Exit status 1 if any label differs or any difference exceeds --tol (1e-4),
2 if aiserve fails or the outputs cannot be compared.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as hf  # noqa: E402
import train_sentiment  # noqa: E402


def read_tsv(path):
    """(sentences, labels), the sentences exactly as in the file."""
    rows = train_sentiment.read_tsv(path)
    return [s for s, _ in rows], [label for _, label in rows]


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["id2label"] = {int(k): v for k, v in config["id2label"].items()}
    model = hf.model_from_config(config)
    tensors = hf.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    state = {k: v.to(torch.float64) for k, v in tensors.items()}
    model = model.double()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        tok_cfg = json.load(f)
    tok = hf.BertTokenizer(hf.load_vocab(os.path.join(model_dir, "vocab.txt")),
                           do_lower_case=tok_cfg.get("do_lower_case", True))
    max_len = min(tok_cfg.get("model_max_length", 512), config["max_position_embeddings"])
    return model, config, tok, max_len


@torch.no_grad()
def reference(model, tok, sents, max_len, batch=64):
    seqs = [tok.encode(s, max_len) for s in sents]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    n_labels = model.classifier.out_features
    logits = torch.zeros((len(seqs), n_labels), dtype=torch.float64)
    for j in range(0, len(order), batch):
        sel = order[j:j + batch]
        width = max(len(seqs[i]) for i in sel)
        ids = torch.zeros((len(sel), width), dtype=torch.long)
        mask = torch.zeros((len(sel), width), dtype=torch.long)
        for r, i in enumerate(sel):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        logits[sel] = model(ids, mask)
    return hf.probabilities(logits), logits


def run_aiserve(binary, model_dir, sents, threads):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="\n", suffix=".txt",
                                     delete=False) as f:
        f.write("".join(s + "\n" for s in sents))
        path = f.name
    try:
        cmd = [binary, "predict", "--model", model_dir, "--input", path]
        if threads:
            cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(2)
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
    if len(lines) != len(sents):
        print(f"aiserve printed {len(lines)} results for {len(sents)} texts", file=sys.stderr)
        raise SystemExit(2)
    return lines


def main():
    default_bin = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "build", "aiserve")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("tsv")
    ap.add_argument("aiserve", nargs="?", default=default_bin)
    ap.add_argument("--tol", type=float, default=1e-4, help="max |prob diff| allowed")
    ap.add_argument("--threads", type=int, default=0, help="aiserve --threads (0: its default)")
    ap.add_argument("--show", type=int, default=5, help="print up to N worst texts")
    args = ap.parse_args()

    sents, gold = read_tsv(args.tsv)
    model, config, tok, max_len = load_model(args.model_dir)
    id2label = config["id2label"]
    probs, _ = reference(model, tok, sents, max_len)
    ref_labels = [id2label[int(i)] for i in probs.argmax(1)]
    out = run_aiserve(args.aiserve, args.model_dir, sents, args.threads)

    c_probs = torch.tensor([o["probs"] for o in out], dtype=torch.float64)
    if c_probs.shape != probs.shape:
        print(f"probs shape {tuple(c_probs.shape)} vs reference {tuple(probs.shape)}",
              file=sys.stderr)
        raise SystemExit(2)
    c_labels = [o["label"] for o in out]
    diff = (c_probs - probs).abs().max(1).values
    mismatches = [i for i in range(len(sents)) if c_labels[i] != ref_labels[i]]
    label_ids = {v: k for k, v in id2label.items()}
    ref_acc = sum(int(probs[i].argmax()) == gold[i] for i in range(len(sents))) / len(sents)
    c_acc = sum(label_ids.get(c_labels[i]) == gold[i] for i in range(len(sents))) / len(sents)
    worst = int(diff.argmax())

    print(f"model {args.model_dir}: {len(sents)} texts from {args.tsv}")
    print(f"accuracy vs TSV labels: aiserve {c_acc * 100:.2f}% "
          f"({round(c_acc * len(sents))}/{len(sents)}), PyTorch float64 {ref_acc * 100:.2f}%")
    print(f"label mismatches: {len(mismatches)}")
    print(f"max |prob diff|: {diff.max().item():.3e} (text {worst + 1}); "
          f"mean {diff.mean().item():.3e}; tolerance {args.tol:g}")
    for i in (mismatches + [int(j) for j in diff.argsort(descending=True)])[:args.show]:
        print(f"  #{i + 1}: aiserve {c_labels[i]} {out[i]['probs']} | ref {ref_labels[i]} "
              f"{probs[i].tolist()} | {sents[i][:60]!r}")
    ok = not mismatches and diff.max().item() <= args.tol
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
