#!/usr/bin/python3
"""make_cases.py - the engine benchmark's inputs, identical for every runtime.

Writes a cases file (run.sh: work/cases.json for distilbert-base,
work/cases-<model>.json for the others): for each case its batch, padded
length, per-sequence lengths, token ids (with the model's special tokens:
[CLS] ... [SEP], or <s> ... </s>), the same inputs as text (for the C
engine, which takes text) and the useful-FLOP count every runtime's GFLOP/s
is computed from; its meta says what the model is (architecture, task,
tokenizer, parameters) and its pad id, which ORT and PyTorch pad with.

  - Cases: batch 1, 8, 32 x sequence 16, 64, 128 tokens (with the special
    tokens), and b32_mixed: 32 sequences with lengths drawn from 8..128 (ORT
    and PyTorch pad to the longest with an attention mask, the C engine
    packs).
  - sst2_256, the offline run: the first 256 sentences of GLUE SST-2 dev.tsv
    (shared/data/sst2, in file order), run as 8 consecutive batches of 32
    ("batch_size": 32; each runtime makes 8 calls, the peers padding each
    batch to its own longest) and timed as a whole. Its ids come from the
    model's reference tokenizer (below). Left out, with a message, when
    dev.tsv is missing.
  - Words are drawn (fixed seed) from the tokenizer's single-token words made
    only of lowercase ASCII letters, so the text "w1 w2 ... wn" tokenizes to
    <cls> w1 ... wn <sep> and every runtime sees the same ids:
      vocab.txt (distilbert-base): the vocabulary's whole-word tokens;
      tokenizer.json, WordPiece (mpnet-base): the same;
      tokenizer.json, byte-level BPE (roberta-base): the words w whose "Gw"
      (G: the byte-level space) is a vocabulary entry; the first word of a
      text, which has no space before it, also needs "w" itself.
  - The reference tokenizer checks this on every text and gives the sst2_256
    ids: tools/hf_reference.py's BertTokenizer for vocab.txt, Hugging Face's
    Rust tokenizers on tokenizer.json (the npm binding in tools/oracle,
    through tools/make_fixtures.py's oracle) for the others; for a
    tokenizer.json the candidate words are first kept only where it gives
    them exactly one token. bench_engine checks again that aiserve's own
    tokenizer gives exactly these ids.
  - Useful FLOPs count only real (unpadded) tokens: per layer 2*T*K*N for each
    linear layer (q, k, v, out: hidden x hidden; FFN up: hidden x
    intermediate; down: intermediate x hidden) plus attention's 2*2*L^2*d per
    head per sequence of length L, plus a classifier's head per sequence
    (DistilBERT's pre_classifier and classifier, RoBERTa's dense and
    out_proj: hidden x hidden and hidden x labels). MPNet's relative
    position bias is a table lookup and an add, no GEMM; an embedding
    model's mean pooling and normalisation are not counted either.

Usage: make_cases.py MODEL_DIR OUT_JSON
"""

import csv

import json
import math
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
MAX_LENGTH = 512
SST2_DEV = [os.path.join(HERE, "..", "..", "..", "shared", "data", "sst2", "dev.tsv"),
            "/work/shared/data/sst2/dev.tsv"]
BYTE_LEVEL_SPACE = "\u0120"  # "Ġ"


def sst2_sentences(n):
    """The first n sentences of SST-2 dev.tsv, or None when it is not here."""
    for path in SST2_DEV:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [r["sentence"].strip() for r in rows[:n]]
    return None


def shape(cfg):
    """(hidden, layers, intermediate) under DistilBERT's or the others' config names."""
    if cfg["model_type"] == "distilbert":
        return cfg["dim"], cfg["n_layers"], cfg["hidden_dim"]
    return cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]


def useful_flops(cfg, lengths):
    dim, layers, hidden = shape(cfg)
    n_labels = len(cfg.get("id2label", {}))
    tokens = sum(lengths)
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * hidden)
    # Per head: QK^T (L x L x d) and PV (L x L x d), 2 FLOPs each; d * heads = dim.
    attention = sum(2 * 2 * n * n * dim for n in lengths)
    head = len(lengths) * 2 * (dim * dim + dim * n_labels) if n_labels else 0
    return layers * (linear + attention) + head


class VocabTxt:
    """A vocab.txt model: BertTokenizer is the reference."""

    kind = "WordPiece (vocab.txt)"

    def __init__(self, model_dir):
        import hf_reference as hf
        with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
            lower = json.load(f).get("do_lower_case", True)
        self.vocab = hf.load_vocab(os.path.join(model_dir, "vocab.txt"))
        self.tok = hf.BertTokenizer(self.vocab, do_lower_case=lower)
        self.first = self.words = [t for t in self.vocab if re.fullmatch(r"[a-z]+", t)]

    def encode(self, texts):
        return [self.tok.encode(t, max_length=MAX_LENGTH) for t in texts]


class TokenizerJson:
    """A tokenizer.json model: Hugging Face's Rust tokenizers is the reference."""

    def __init__(self, model_dir):
        from make_fixtures import oracle
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            self.json = json.load(f)
        self.oracle = oracle
        model = self.json["model"]
        self.kind = model["type"] + " (tokenizer.json)"
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        if model["type"] == "BPE":
            words = [t[1:] for t in vocab if t.startswith(BYTE_LEVEL_SPACE) and re.fullmatch(r"[a-z]+", t[1:])]
        elif model["type"] == "WordPiece":
            words = [t for t in vocab if re.fullmatch(r"[a-z]+", t)]
        else:
            sys.exit(f"make_cases.py: no single-token words for a {model['type']} tokenizer")
        # One token with a space before it (words after the first) and without.
        spaced = self.encode([" " + w for w in words])
        alone = self.encode(words)
        self.words = [w for w, ids in zip(words, spaced) if len(ids) == 3]
        self.first = [w for w, a, b in zip(words, spaced, alone) if len(a) == 3 and len(b) == 3]

    def encode(self, texts):
        return self.oracle(self.json, texts, [], MAX_LENGTH)[0]


def n_params(model_dir):
    """Parameters in model.safetensors, from its header."""
    import hf_reference as hf
    header = hf.read_safetensors_header(os.path.join(model_dir, "model.safetensors"))
    return sum(math.prod(e["shape"]) for name, e in header.items() if name != "__metadata__")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_cases.py MODEL_DIR OUT_JSON")
    model_dir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    has_json = os.path.exists(os.path.join(model_dir, "tokenizer.json"))
    tok = TokenizerJson(model_dir) if has_json else VocabTxt(model_dir)
    cls_id, *_, sep_id = tok.encode([""])[0]

    rng = random.Random(SEED)
    specs = [(f"b{b}_s{s}", b, [s] * b) for b in BATCHES for s in SEQS]
    specs.append((f"b{MIXED_BATCH}_mixed", MIXED_BATCH,
                  [rng.randint(MIXED_MIN, MIXED_MAX) for _ in range(MIXED_BATCH)]))

    cases = []
    for name, batch, lengths in specs:
        texts = []
        for n in lengths:
            seq_words = [rng.choice(tok.first)] + [rng.choice(tok.words) for _ in range(n - 3)]
            texts.append(" ".join(seq_words))
        cases.append({"name": name, "batch": batch, "seq": max(lengths), "lengths": lengths,
                      "tokens": sum(lengths), "useful_flops": useful_flops(cfg, lengths),
                      "input_ids": tok.encode(texts), "texts": texts})
    for case in cases:
        for n, ids in zip(case["lengths"], case["input_ids"]):
            if len(ids) != n or ids[0] != cls_id or ids[-1] != sep_id:
                sys.exit(f"make_cases.py: {case['name']}: a text does not tokenize to one token a word")

    texts = sst2_sentences(OFFLINE_TEXTS)
    if texts is None:
        print("make_cases.py: shared/data/sst2/dev.tsv not found; the offline case sst2_256 is left out")
    else:
        ids = tok.encode(texts)
        lengths = [len(x) for x in ids]
        cases.append({"name": f"sst2_{OFFLINE_TEXTS}", "batch": len(texts), "batch_size": OFFLINE_BATCH,
                      "seq": max(lengths), "lengths": lengths, "tokens": sum(lengths),
                      "useful_flops": useful_flops(cfg, lengths), "input_ids": ids, "texts": texts})

    meta = {"seed": SEED, "model": os.path.basename(os.path.normpath(model_dir)),
            "n_words": len(tok.words),
            "config": {k: cfg[k] for k in ("dim", "n_layers", "n_heads", "hidden_dim", "hidden_size",
                                           "num_hidden_layers", "num_attention_heads",
                                           "intermediate_size", "vocab_size") if k in cfg},
            "architecture": cfg["architectures"][0],
            "task": "classify" if "id2label" in cfg else "embed",
            "labels": [cfg["id2label"][str(i)] for i in range(len(cfg.get("id2label", {})))],
            "tokenizer": tok.kind, "pad_id": cfg.get("pad_token_id", 0), "n_params": n_params(model_dir)}
    with open(out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f)
    print(f"make_cases.py: {len(cases)} cases ({len(tok.words)} single-token words) -> {out}")


if __name__ == "__main__":
    main()
