"""make_fixtures.py - golden test fixtures for the C engine (tests/unit/test_model.c).

Writes tests/fixtures/models/<name>/ for a set of tiny random-weight BERT and
DistilBERT models: a complete Hugging Face model directory (config.json,
model.safetensors, vocab.txt, tokenizer_config.json) plus expected.json with what
transformers would compute for a fixed list of texts:

    {"tolerance": 1e-4, "max_length": N,
     "model": {"architecture", "model_type", "task", "dtype", "labels", "multi_label",
               "do_lower_case", "hidden", "n_layers", "n_heads", "intermediate",
               "vocab_size", "max_position"},
     "cases": [{"text", "ids", "logits", "probs", "mean", "cls"}, ...]}

"logits"/"probs" only for classifiers (probs: softmax, or sigmoid when multi-label);
"mean"/"cls" are the pooled last hidden states for every model. Expected values are
computed in float64 from the weights as stored (rounded to the file's dtype), on one
right-padded batch of all texts with an attention mask; the script checks that each
text run alone gives the same values, and that the safetensors file reads back to
the weights the values came from.

Deterministic: fixed seeds, so a second run writes the same bytes.
Run: /usr/bin/python3 tools/make_fixtures.py
"""

import collections
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "models")
DATA_DIR = "/work/shared/data"
TOLERANCE = 1e-4

# Letters whose "##" continuation is left out of the vocabulary, so that words
# with them past the first character fall back to [UNK] as a whole.
MISSING_CONTINUATIONS = "jqxz"
SUFFIXES = ["##ing", "##ed", "##ly", "##er", "##est", "##ness", "##able", "##ful",
            "##less", "##ment", "##tion", "##ies", "##al", "##ic", "##ous", "##ive",
            "##ity", "##en", "##es", "##ish", "##ist", "##ers", "##ted", "##ling", "##ize"]
CJK_KNOWN = ["中", "文", "日", "本"]  # other ideographs become [UNK]
CASED_WORDS = ["The", "It", "This", "Hello", "World", "Paris"]
N_SST_WORDS = 330

LONG_TEXT = " ".join([
    "it 's a charming and often affecting journey .",
    "the film is strictly routine , but the performances are quite good and well worth watching .",
    "unflinchingly bleak and desperate , yet somehow hopeful in its final moments .",
] * 24)

TEXTS = [
    "it 's a charming and often affecting journey .",
    "Hello, world!",
    "The movie was absolutely wonderful; I loved every minute of it.",
    "Café naïve résumé — déjà vu, Ångström",
    "中文字符 and 日本語 mixed with 한국어 text",
    "",
    "   \t\n  ",
    "Supercalifragilisticexpialidocious quixotic jazz fizz",
    "a" * 120 + " short",
    LONG_TEXT,
    "Numbers 12345 and 3.14, symbols @#$%^&*() ... ??? !!!",
    "control\x00chars\u200bmore\ufffdwords\ttab\r\nnewline",
    "emoji 🙂 and ß and İstanbul",
    "Don't stop-believing... (really)! THE Quick BROWN fox",
]

# name: (model_type, config keyword arguments, dtype, seed, tokenizer settings)
MODELS = {
    "distilbert-f32": ("distilbert", dict(max_position_embeddings=64,
                                          labels=["NEGATIVE", "POSITIVE"]), "F32", 1, {}),
    "distilbert-f16": ("distilbert", dict(max_position_embeddings=64,
                                          labels=["NEGATIVE", "POSITIVE"]), "F16", 1, {}),
    "distilbert-bf16": ("distilbert", dict(max_position_embeddings=64,
                                           labels=["NEGATIVE", "POSITIVE"]), "BF16", 1, {}),
    "bert-f32": ("bert", dict(num_attention_heads=2, max_position_embeddings=96),
                 "F32", 2, dict(model_max_length=40)),
    "bert-f16": ("bert", dict(num_attention_heads=2, max_position_embeddings=96),
                 "F16", 2, dict(model_max_length=40)),
    "bert-bf16": ("bert", dict(num_attention_heads=2, max_position_embeddings=96),
                  "BF16", 2, dict(model_max_length=40)),
    "bert-base-embed": ("bert", dict(architecture="BertModel", num_hidden_layers=3,
                                     layer_norm_eps=1e-5), "F32", 3, {}),
    "distilbert-base-embed": ("distilbert", dict(architecture="DistilBertModel", n_heads=2,
                                                 max_position_embeddings=64), "F32", 4, {}),
    "bert-multilabel": ("bert", dict(max_position_embeddings=64,
                                     labels=["toxic", "spam", "off_topic"],
                                     problem_type="multi_label_classification"), "F32", 5, {}),
    "distilbert-relu-3label": ("distilbert", dict(activation="relu", n_layers=3, n_heads=8,
                                                  max_position_embeddings=96,
                                                  labels=["negative", "neutral", "positive"]),
                               "F32", 6, dict(model_max_length=80)),
    "bert-cased-gelu-new": ("bert", dict(hidden_act="gelu_new", max_position_embeddings=64,
                                         layer_norm_eps=1e-6, labels=["bad", "good"]),
                            "F16", 7, dict(do_lower_case=False)),
}


def build_vocab():
    """Special tokens, characters and their ## forms, some CJK, common ## suffixes,
    capitalised words for the cased model, then the most frequent SST-2 dev words
    (all taken from bert-base-uncased's or bert-base-cased's vocabulary)."""
    uncased = set(ref.load_vocab(os.path.join(DATA_DIR, "bert-base-uncased-vocab.txt")))
    cased = set(ref.load_vocab(os.path.join(DATA_DIR, "bert-base-cased-vocab.txt")))
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = list(ref.SPECIAL_TOKENS) + chars
    tokens += ["##" + c for c in chars if c.isalnum() and c not in MISSING_CONTINUATIONS]
    tokens += CJK_KNOWN + SUFFIXES
    tokens += [chr(c) for c in range(ord("A"), ord("Z") + 1)] + CASED_WORDS
    for tok in tokens[len(ref.SPECIAL_TOKENS):]:
        assert tok in uncased or tok in cased, tok
    counts = collections.Counter()
    with open(os.path.join(DATA_DIR, "sst2", "dev.tsv"), encoding="utf-8") as f:
        next(f)
        for line in f:
            counts.update(line.split("\t")[0].split())
    seen = set(tokens)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
             if w.isalpha() and w.isascii() and len(w) > 1 and w in uncased and w not in seen]
    return tokens + words[:N_SST_WORDS]


def init_weights(model, seed):
    """Random weights with non-trivial scales: LayerNorm gammas around 1 and betas
    around 0 (not exactly), embeddings and projections large enough that logits
    are spread out."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif "embeddings" in name:
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.startswith("classifier") or name.startswith("pre_classifier"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.2 * noise)


def short(values):
    """Floats with 9 significant digits (well inside the tolerance, smaller JSON)."""
    return [float(f"{v:.9g}") for v in values]


def compute(model, ids, mask, multi_label):
    """(hidden, mean, cls, logits, probs) for a batch; logits/probs None for encoders."""
    with torch.no_grad():
        hidden = model.hidden_states(ids, mask)
        logits = probs = None
        if "id2label" in model.config:
            logits = model(ids, mask)
            probs = ref.probabilities(logits, multi_label)
    return hidden, ref.pool_mean(hidden, mask), ref.pool_cls(hidden), logits, probs


def write_expected(path, expected):
    """expected.json with one line per case (readable diffs, small file)."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    lines = [f" {dump(k)}: {dump(v)}," for k, v in expected.items() if k != "cases"]
    cases = ",\n".join("  " + dump(c) for c in expected["cases"])
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + "\n".join(lines) + '\n "cases": [\n' + cases + "\n ]\n}\n")


def make_model(name, vocab):
    model_type, kw, dtype, seed, tok = MODELS[name]
    config = ref.config_dict(model_type, vocab_size=len(vocab), **kw)
    do_lower_case = tok.get("do_lower_case", True)
    model_max_length = tok.get("model_max_length", 512)
    max_length = min(model_max_length, config["max_position_embeddings"])
    multi_label = config.get("problem_type") == "multi_label_classification"

    model = ref.model_from_config(config).double().eval()
    init_weights(model, seed)
    ref.round_weights_(model, dtype)

    path = os.path.join(OUT_DIR, name)
    ref.save_model_dir(path, model, config, vocab, dtype, do_lower_case, model_max_length)
    stored = ref.read_safetensors(os.path.join(path, "model.safetensors"))
    state = model.state_dict()
    assert sorted(stored) == sorted(state), name
    for key, value in state.items():
        assert torch.equal(stored[key].double(), value), f"{name}: {key} does not round-trip"

    tokenizer = ref.BertTokenizer(vocab, do_lower_case=do_lower_case)
    ids, mask = tokenizer.encode_batch(TEXTS, max_length)
    hidden, mean, cls, logits, probs = compute(model, ids, mask, multi_label)

    worst = 0.0
    cases = []
    for i, text in enumerate(TEXTS):
        one_ids, one_mask = tokenizer.encode_batch([text], max_length)
        n = one_ids.shape[1]
        assert torch.equal(one_ids[0], ids[i, :n]) and int(mask[i].sum()) == n, (name, i)
        h1, mean1, cls1, logits1, _ = compute(model, one_ids, one_mask, multi_label)
        pairs = [(h1[0], hidden[i, :n]), (mean1[0], mean[i]), (cls1[0], cls[i])]
        if logits is not None:
            pairs.append((logits1[0], logits[i]))
        worst = max([worst] + [float((a - b).abs().max()) for a, b in pairs])
        case = {"text": text, "ids": one_ids[0].tolist()}
        if logits is not None:
            case["logits"] = short(logits[i].tolist())
            case["probs"] = short(probs[i].tolist())
        case["mean"] = short(mean[i].tolist())
        case["cls"] = short(cls[i].tolist())
        cases.append(case)
    assert worst < 1e-10, f"{name}: padded batch differs from single texts by {worst}"

    hidden_size = config.get("hidden_size", config.get("dim"))
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))] \
        if "id2label" in config else []
    expected = {
        "tolerance": TOLERANCE,
        "max_length": max_length,
        "model": {
            "architecture": config["architectures"][0],
            "model_type": model_type,
            "task": "classify" if labels else "embed",
            "dtype": dtype,
            "labels": labels,
            "multi_label": multi_label,
            "do_lower_case": do_lower_case,
            "hidden": hidden_size,
            "n_layers": config.get("num_hidden_layers", config.get("n_layers")),
            "n_heads": config.get("num_attention_heads", config.get("n_heads")),
            "intermediate": config.get("intermediate_size", config.get("hidden_dim")),
            "vocab_size": len(vocab),
            "max_position": config["max_position_embeddings"],
        },
        "cases": cases,
    }
    write_expected(os.path.join(path, "expected.json"), expected)
    n_unk = sum(c["ids"].count(vocab.index("[UNK]")) for c in cases)
    spread = float(logits.abs().max()) if logits is not None else 0.0
    print(f"{name:24s} {dtype:4s} max_length {max_length:3d}  [UNK]s {n_unk:3d}  "
          f"max|logit| {spread:6.3f}  padded-vs-single {worst:.1e}")


def main():
    torch.set_num_threads(1)
    vocab = build_vocab()
    assert len(vocab) == len(set(vocab))
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    for name in MODELS:
        make_model(name, vocab)
    print(f"vocab {len(vocab)} tokens, {len(MODELS)} models in {OUT_DIR}")


if __name__ == "__main__":
    main()
