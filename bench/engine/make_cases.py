#!/usr/bin/python3
"""make_cases.py - the engine benchmark's inputs, identical for every runtime.

Writes bench/engine/work/cases.json: for each case its batch, padded length,
per-sequence lengths, token ids ([CLS] ... [SEP]), the same inputs as text (for
the C engine, which takes text) and the useful-FLOP count every runtime's
GFLOP/s is computed from.

  - Cases: batch 1, 8, 32 x sequence 16, 64, 128 tokens (with [CLS]/[SEP]),
    and b32_mixed: 32 sequences with lengths drawn from 8..128 (ORT and
    PyTorch pad to the longest with an attention mask, the C engine packs).
  - sst2_256, the offline run: the first 256 sentences of GLUE SST-2 dev.tsv
    (shared/data/sst2, in file order), run as 8 consecutive batches of 32
    ("batch_size": 32; each runtime makes 8 calls, the peers padding each
    batch to its own longest) and timed as a whole. Its ids come from the
    reference tokenizer. Left out, with a message, when dev.tsv is missing.
  - Words are drawn (fixed seed) from the vocabulary's whole-word tokens made
    only of lowercase ASCII letters, so each word is exactly one WordPiece
    token and the text "w1 w2 ... wn" tokenizes to [CLS] w1 ... wn [SEP]:
    every runtime sees the same ids. This is checked here with the reference
    tokenizer from tools/hf_reference.py.
  - Useful FLOPs count only real (unpadded) tokens: per layer 2*T*K*N for each
    linear layer (q, k, v, out: dim x dim; lin1: dim x hidden; lin2: hidden x
    dim) plus attention's 2*2*L^2*d per head per sequence of length L, plus the
    head (pre_classifier dim x dim, classifier dim x labels) per sequence.

Usage: make_cases.py MODEL_DIR OUT_JSON
"""

import csv

import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))

SEED = 1234
BATCHES = (1, 8, 32)
SEQS = (16, 64, 128)
MIXED_BATCH, MIXED_MIN, MIXED_MAX = 32, 8, 128
OFFLINE_TEXTS, OFFLINE_BATCH = 256, 32
SST2_DEV = [os.path.join(HERE, "..", "..", "..", "shared", "data", "sst2", "dev.tsv"),
            "/work/shared/data/sst2/dev.tsv"]


def sst2_sentences(n):
    """The first n sentences of SST-2 dev.tsv, or None when it is not here."""
    for path in SST2_DEV:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [r["sentence"].strip() for r in rows[:n]]
    return None


def useful_flops(cfg, lengths):
    dim, hidden, layers = cfg["dim"], cfg["hidden_dim"], cfg["n_layers"]
    n_labels = len(cfg["id2label"])
    tokens = sum(lengths)
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * hidden)
    # Per head: QK^T (L x L x d) and PV (L x L x d), 2 FLOPs each; d * heads = dim.
    attention = sum(2 * 2 * n * n * dim for n in lengths)
    head = len(lengths) * 2 * (dim * dim + dim * n_labels)
    return layers * (linear + attention) + head


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_cases.py MODEL_DIR OUT_JSON")
    model_dir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    index = {tok: i for i, tok in enumerate(vocab)}
    words = [tok for tok in vocab if re.fullmatch(r"[a-z]+", tok)]
    cls_id, sep_id = index["[CLS]"], index["[SEP]"]

    rng = random.Random(SEED)
    specs = [(f"b{b}_s{s}", b, [s] * b) for b in BATCHES for s in SEQS]
    specs.append((f"b{MIXED_BATCH}_mixed", MIXED_BATCH,
                  [rng.randint(MIXED_MIN, MIXED_MAX) for _ in range(MIXED_BATCH)]))

    cases = []
    for name, batch, lengths in specs:
        texts, ids = [], []
        for n in lengths:
            seq_words = [rng.choice(words) for _ in range(n - 2)]
            texts.append(" ".join(seq_words))
            ids.append([cls_id] + [index[w] for w in seq_words] + [sep_id])
        cases.append({"name": name, "batch": batch, "seq": max(lengths), "lengths": lengths,
                      "tokens": sum(lengths), "useful_flops": useful_flops(cfg, lengths),
                      "input_ids": ids, "texts": texts})

    import hf_reference as hf  # the reference tokenizer: text and ids are the same input
    tok = hf.BertTokenizer(vocab, do_lower_case=True)
    for case in cases:
        for text, ids in zip(case["texts"][:4], case["input_ids"][:4]):
            if tok.encode(text, max_length=512) != ids:
                sys.exit(f"make_cases.py: {case['name']}: text does not tokenize to its ids")

    texts = sst2_sentences(OFFLINE_TEXTS)
    if texts is None:
        print("make_cases.py: shared/data/sst2/dev.tsv not found; the offline case sst2_256 is left out")
    else:
        ids = [tok.encode(t, max_length=512) for t in texts]
        lengths = [len(x) for x in ids]
        cases.append({"name": f"sst2_{OFFLINE_TEXTS}", "batch": len(texts), "batch_size": OFFLINE_BATCH,
                      "seq": max(lengths), "lengths": lengths, "tokens": sum(lengths),
                      "useful_flops": useful_flops(cfg, lengths), "input_ids": ids, "texts": texts})

    meta = {"seed": SEED, "model": os.path.basename(os.path.normpath(model_dir)),
            "n_words": len(words),
            "config": {k: cfg[k] for k in ("dim", "n_layers", "n_heads", "hidden_dim",
                                           "vocab_size")}}
    with open(out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f)
    print(f"make_cases.py: {len(cases)} cases ({len(words)} single-token words) -> {out}")


if __name__ == "__main__":
    main()
