"""make_fixtures.py - golden test fixtures for the C engine (tests/unit/test_model.c).

Writes tests/fixtures/models/<name>/ for a set of tiny random-weight models of
every architecture the engine runs (BERT, DistilBERT, RoBERTa, XLM-RoBERTa,
MPNet): a complete Hugging Face model directory (config.json, model.safetensors,
the tokenizer: vocab.txt or tokenizer.json, tokenizer_config.json; for a
sentence-transformers model also sentence_bert_config.json, modules.json and
1_Pooling/config.json) plus expected.json with what transformers would compute
for a fixed list of texts (and, for cross-encoders, text pairs):

    {"tolerance": 1e-4, "max_length": N,
     "model": {"architecture", "model_type", "task", "dtype", "labels", "multi_label",
               "do_lower_case", "tokenizer", "hidden", "n_layers", "n_heads",
               "intermediate", "vocab_size", "max_position"[, "problem_type"]},
     "cases": [{"text", "ids", "logits", "probs", "mean", "cls"}, ...],
     "pairs": [{"a", "b", "ids", "types", "logits", "probs"}, ...]}

"logits"/"probs" only for classifiers (probs: the scores transformers'
text-classification pipeline gives: softmax, or sigmoid when multi-label or one
label, or the logits themselves for problem_type regression); "problem_type" only
for regression models (so that the older fixtures' bytes stay as they were);
"mean"/"cls" are the pooled last hidden states for every model;
"pairs" only where MODELS asks for them ("types": the token types the model is
given: BERT's 0/1, 0 for the others, whose tokenizers give none).

Token ids: BERT and DistilBERT fixtures use tools/hf_reference.py's BertTokenizer
on vocab.txt; the others have a tokenizer.json cut down from the BPE and Unigram
fixtures of tests/fixtures/tokenizer/ (or MPNet's WordPiece layout) and take their
ids from Hugging Face's Rust tokenizers (the npm binding in tools/oracle), as do
all pairs (BERT's through the tokenizer.json transformers' BertConverter writes
for vocab.txt; its single texts must equal BertTokenizer's).

Expected values are computed in float64 from the weights as stored (rounded to the
file's dtype), on one right-padded batch of all texts with an attention mask; the
script checks that each text run alone gives the same values, that an independent
composition of each architecture (one sequence at a time, straight from the state
dict, integer arithmetic for MPNet's buckets) gives them too, and that the
safetensors file reads back to the weights the values came from.

Deterministic: fixed seeds, so a second run writes the same bytes.
Run: /usr/bin/python3 tools/make_fixtures.py
(needs tools/oracle: cd tools/oracle && npm install --ignore-scripts)
"""

import collections
import json
import math
import os
import shutil
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "models")
TOKENIZER_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
ORACLE = os.path.join(ROOT, "tools", "oracle", "node_modules", "tokenizers")
DATA_DIR = "/work/shared/data"
TOLERANCE = 1e-4
MIN_LABEL_MARGIN = 0.03  # between a text's two best logits (single-label classifiers)

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

# Texts with the special tokens RoBERTa-style tokenizers match in raw text: a
# <pad> inside a text keeps position padding_idx and is not counted.
SPECIAL_TEXTS = [
    "a <pad> inside <pad> the text",
    "the <mask> was good",
    "<s>nested</s> specials",
]

# Query/document pairs for cross-encoders: each side and both truncated, empty sides.
PAIRS = [
    ("what is a charming journey?", TEXTS[0]),
    (TEXTS[1], TEXTS[2]),
    ("Café naïve", LONG_TEXT),
    (LONG_TEXT, "short answer"),
    (LONG_TEXT, LONG_TEXT),
    ("", TEXTS[2]),
    (TEXTS[4], ""),
    ("query with 中文 <pad>", "emoji 🙂 and ß"),
]

# name: (model_type, config keyword arguments, dtype, seed, tokenizer settings)
# Tokenizer settings: do_lower_case, model_max_length (vocab.txt models);
# "tokenizer": "bpe", "unigram" or "mpnet" for a tokenizer.json; "pairs": pair
# goldens; "max_seq_length": a sentence-transformers model truncating there.
MODELS = {
    "distilbert-f32": ("distilbert", dict(max_position_embeddings=64,
                                          labels=["NEGATIVE", "POSITIVE"]), "F32", 1, {}),
    "distilbert-f16": ("distilbert", dict(max_position_embeddings=64,
                                          labels=["NEGATIVE", "POSITIVE"]), "F16", 1, {}),
    "distilbert-bf16": ("distilbert", dict(max_position_embeddings=64,
                                           labels=["NEGATIVE", "POSITIVE"]), "BF16", 1, {}),
    "bert-f32": ("bert", dict(num_attention_heads=2, max_position_embeddings=96),
                 "F32", 2, dict(model_max_length=40, pairs=True)),
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
    "roberta-cls": ("roberta", dict(labels=["negative", "neutral", "positive"]), "F32", 8,
                    dict(tokenizer="bpe", pairs=True)),
    "roberta-embed-bf16": ("roberta", dict(architecture="RobertaModel", num_attention_heads=2,
                                           max_position_embeddings=42), "BF16", 9,
                           dict(tokenizer="bpe")),
    "xlmr-reranker": ("xlm-roberta", dict(labels=["LABEL_0"]), "F32", 10,
                      dict(tokenizer="unigram", pairs=True)),
    "xlmr-embed-f16": ("xlm-roberta", dict(architecture="XLMRobertaModel", num_hidden_layers=3),
                       "F16", 11, dict(tokenizer="unigram")),
    "mpnet-embed": ("mpnet", dict(architecture="MPNetModel"), "F32", 12,
                    dict(tokenizer="mpnet", max_seq_length=48)),
    "mpnet-cls": ("mpnet", dict(hidden_act="gelu_new", labels=["bad", "good"]), "F32", 15,
                  dict(tokenizer="mpnet", pairs=True)),
    # An STS-B style cross-encoder: one label trained on float targets.
    "roberta-regression": ("roberta", dict(labels=["LABEL_0"], problem_type="regression"), "F32", 16,
                           dict(tokenizer="bpe", pairs=True)),
}

# Vocabulary sizes of the cut-down tokenizer.json files (weights stay small).
BPE_MERGES = 700
UNIGRAM_PIECES = 1000


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


def _added(content, tok_id, **opts):
    """An added_tokens entry as transformers' converters write them."""
    entry = {"id": tok_id, "content": content, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
    entry.update(opts)
    return entry


def _template(cls, sep, double_sep, pair_type):
    """TemplateProcessing: cls A sep / cls A sep [sep] B sep, B's part of type pair_type."""
    def special(tok, type_id):
        return {"SpecialToken": {"id": tok[0], "type_id": type_id}}

    def seq(name, type_id):
        return {"Sequence": {"id": name, "type_id": type_id}}

    pair = [special(cls, 0), seq("A", 0), special(sep, 0)]
    pair += [special(sep, pair_type)] if double_sep else []
    pair += [seq("B", pair_type), special(sep, pair_type)]
    return {"type": "TemplateProcessing", "single": [special(cls, 0), seq("A", 0), special(sep, 0)],
            "pair": pair,
            "special_tokens": {t[0]: {"id": t[0], "ids": [t[1]], "tokens": [t[0]]} for t in (cls, sep)}}


def bpe_tokenizer():
    """RoBERTa's layout (tests/fixtures/tokenizer/bpe_roberta.json) cut to its first
    BPE_MERGES merges: a prefix of BPE training is what a smaller training gives."""
    with open(os.path.join(TOKENIZER_DIR, "bpe_roberta.json"), encoding="utf-8") as f:
        tok = json.load(f)
    model = tok["model"]
    model["merges"] = model["merges"][:BPE_MERGES]
    kept = 4 + 256 + BPE_MERGES  # <s> <pad> </s> <unk>, the byte characters, one token a merge
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < kept}
    assert len(model["vocab"]) == kept
    model["vocab"]["<mask>"] = kept
    tok["added_tokens"][-1]["id"] = kept
    return tok


def unigram_tokenizer():
    """XLM-RoBERTa's layout (tests/fixtures/tokenizer/unigram_xlmr.json) with every
    one-character piece and the first others, UNIGRAM_PIECES pieces in all."""
    with open(os.path.join(TOKENIZER_DIR, "unigram_xlmr.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    specials, pieces, mask = vocab[:4], vocab[4:-1], vocab[-1]
    n_multi = UNIGRAM_PIECES - sum(1 for p, _ in pieces if len(p) == 1)
    kept = []
    for piece in pieces:
        if len(piece[0]) == 1 or n_multi > 0:
            n_multi -= len(piece[0]) > 1
            kept.append(piece)
    tok["model"]["vocab"] = specials + kept + [mask]
    tok["added_tokens"][-1]["id"] = len(specials) + len(kept)
    return tok


def wordpiece_tokenizer(vocab, mpnet, do_lower_case=True):
    """The tokenizer.json transformers' converters write for a WordPiece vocabulary:
    BertConverter ([CLS] A [SEP] / ... B:1 [SEP]:1) for `vocab` itself, or
    MPNetConverter for MPNet's layout (<s> <pad> </s> <unk> first, <mask> last,
    [UNK] as the model's unknown token; <s> A </s> / <s> A </s></s> B </s>)."""
    if mpnet:
        vocab = ["<s>", "<pad>", "</s>", "<unk>"] + vocab + ["<mask>"]
    ids = {t: i for i, t in enumerate(vocab)}
    if mpnet:
        added = [_added(t, ids[t]) for t in ("<s>", "<pad>", "</s>", "<unk>", "[UNK]")]
        added.append(_added("<mask>", ids["<mask>"], lstrip=True))
        post = _template(("<s>", 0), ("</s>", 2), True, 1)
    else:
        added = [_added(t, ids[t]) for t in ref.SPECIAL_TOKENS]
        post = _template(("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"]), False, 1)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": do_lower_case},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": post,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids},
    }


# tokenizer.json's model kind, as the engine names it.
TOKENIZER_KINDS = {None: "WordPiece", "mpnet": "WordPiece", "bpe": "BPE", "unigram": "Unigram"}

# tokenizer_config.json of each layout (what matters: model_max_length).
TOKENIZER_CONFIGS = {
    "bpe": {"add_prefix_space": False, "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
            "errors": "replace", "mask_token": "<mask>", "model_max_length": 512, "pad_token": "<pad>",
            "sep_token": "</s>", "tokenizer_class": "RobertaTokenizer", "trim_offsets": True,
            "unk_token": "<unk>"},
    "unigram": {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
                "model_max_length": 512, "pad_token": "<pad>", "sep_token": "</s>",
                "tokenizer_class": "XLMRobertaTokenizer", "unk_token": "<unk>"},
    "mpnet": {"bos_token": "<s>", "cls_token": "<s>", "do_lower_case": True, "eos_token": "</s>",
              "mask_token": "<mask>", "model_max_length": 512, "pad_token": "<pad>",
              "sep_token": "</s>", "strip_accents": None, "tokenize_chinese_chars": True,
              "tokenizer_class": "MPNetTokenizer", "unk_token": "[UNK]"},
}

_ORACLE_JS = r"""
const tk = require(process.env.ORACLE);
let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', async () => {
  const job = JSON.parse(input);
  const t = tk.Tokenizer.fromString(job.tokenizer);
  for (const a of job.added)
    if (t.tokenToId(a.content) !== a.id) throw new Error(`added token ${a.content}: id ${t.tokenToId(a.content)}, file says ${a.id}`);
  t.setTruncation(job.max_length);
  const out = { singles: [], pairs: [] };
  for (const s of job.singles) out.singles.push((await t.encode(s)).getIds());
  for (const [a, b] of job.pairs) {
    const e = await t.encode(a, b);
    out.pairs.push([e.getIds(), e.getTypeIds()]);
  }
  process.stdout.write(JSON.stringify(out));
});
"""


def oracle(tokenizer_json, texts, pairs, max_length):
    """Ids of each text and (ids, type ids) of each pair from Hugging Face's Rust
    tokenizers on `tokenizer_json`, truncated to max_length (longest_first)."""
    job = {"tokenizer": json.dumps(tokenizer_json, ensure_ascii=False),
           "added": tokenizer_json["added_tokens"], "singles": texts,
           "pairs": [list(p) for p in pairs], "max_length": max_length}
    out = subprocess.run(["node", "-e", _ORACLE_JS], input=json.dumps(job).encode("utf-8"),
                         stdout=subprocess.PIPE, check=True, env=dict(os.environ, ORACLE=ORACLE))
    result = json.loads(out.stdout)
    return result["singles"], result["pairs"]


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
            elif "embeddings" in name or "relative_attention_bias" in name:
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.startswith("classifier") or name.startswith("pre_classifier"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.2 * noise)


def _mpnet_bucket(key_minus_query):
    """MPNet's bucket by integer arithmetic: 8 exact distances a side, then
    8 + floor(8 log16(n / 8)) = 8 + floor(log2(n^2 / 64)) up to 15; +16 for keys
    after the query."""
    n = -key_minus_query
    ret = 16 if n < 0 else 0
    n = abs(n)
    return ret + (n if n < 8 else min(15, 8 + (n * n // 64).bit_length() - 1))


def independent(state, config, ids, types):
    """One sequence's last hidden state and logits (None for encoders), composed
    straight from the state dict by name with per-head loops and plain functional
    ops: a second derivation of what hf_reference's modules compute."""
    mt = config["model_type"]
    distil = mt == "distilbert"
    hidden = config["dim"] if distil else config["hidden_size"]
    heads = config["n_heads"] if distil else config["num_attention_heads"]
    eps = 1e-12 if distil else config["layer_norm_eps"]
    act = config["activation"] if distil else config["hidden_act"]
    base = {"bert": "bert.", "distilbert": "distilbert.", "roberta": "roberta.",
            "xlm-roberta": "roberta.", "mpnet": "mpnet."}[mt]
    if base + "embeddings.word_embeddings.weight" not in state:
        base = ""

    def g(name, prefix=base):
        return state[prefix + name]

    def ln(x, name):
        return F.layer_norm(x, (hidden,), g(name + ".weight"), g(name + ".bias"), eps)

    def lin(x, name, prefix=base):
        return F.linear(x, g(name + ".weight", prefix), g(name + ".bias", prefix))

    if mt in ("roberta", "xlm-roberta", "mpnet"):
        pad = 1 if mt == "mpnet" else config["pad_token_id"]
        positions, count = [], 0
        for i in ids:
            count += i != pad
            positions.append(pad if i == pad else pad + count)
    else:
        positions = list(range(len(ids)))
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[positions]
    if mt in ("bert", "roberta", "xlm-roberta"):
        x = x + g("embeddings.token_type_embeddings.weight")[types]
    x = ln(x, "embeddings.LayerNorm")
    n, d = len(ids), hidden // heads
    bias = torch.zeros(heads, n, n, dtype=x.dtype)
    if mt == "mpnet":
        table = g("encoder.relative_attention_bias.weight")
        for q in range(n):
            for k in range(n):
                bias[:, q, k] = table[_mpnet_bucket(k - q)]
    if mt == "distilbert":
        names = ("transformer.layer.%d.", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                 "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm")
    elif mt == "mpnet":
        names = ("encoder.layer.%d.", "attention.attn.q", "attention.attn.k", "attention.attn.v",
                 "attention.attn.o", "attention.LayerNorm", "intermediate.dense", "output.dense",
                 "output.LayerNorm")
    else:
        names = ("encoder.layer.%d.", "attention.self.query", "attention.self.key",
                 "attention.self.value", "attention.output.dense", "attention.output.LayerNorm",
                 "intermediate.dense", "output.dense", "output.LayerNorm")
    n_layers = config["n_layers"] if distil else config["num_hidden_layers"]
    for layer in range(n_layers):
        pre = names[0] % layer
        q, k, v = (lin(x, pre + names[i]) for i in (1, 2, 3))
        ctx = torch.empty_like(x)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d) + bias[h]
            ctx[:, cols] = torch.softmax(scores, dim=-1) @ v[:, cols]
        x = ln(lin(ctx, pre + names[4]) + x, pre + names[5])
        y = lin(x, pre + names[6])
        y = torch.relu(y) if act == "relu" else F.gelu(y, approximate="tanh" if act == "gelu_new" else "none")
        x = ln(lin(y, pre + names[7]) + x, pre + names[8])
    if "id2label" not in config:
        return x, None
    if mt == "bert":
        logits = lin(torch.tanh(lin(x[0], "pooler.dense")), "classifier", "")
    elif mt == "distilbert":
        logits = lin(torch.relu(lin(x[0], "pre_classifier", "")), "classifier", "")
    else:
        logits = lin(torch.tanh(lin(x[0], "classifier.dense", "")), "classifier.out_proj", "")
    return x, logits


def short(values):
    """Floats with 9 significant digits (well inside the tolerance, smaller JSON)."""
    return [float(f"{v:.9g}") for v in values]


def scores(logits, problem_type):
    """What transformers' TextClassificationPipeline applies to the logits: nothing
    for regression, else softmax or sigmoid (hf_reference.probabilities)."""
    if problem_type == "regression":
        return logits.clone()
    return ref.probabilities(logits, problem_type == "multi_label_classification")


def compute(model, ids, mask, problem_type, types=None):
    """(hidden, mean, cls, logits, probs) for a batch; logits/probs None for encoders."""
    with torch.no_grad():
        hidden = model.hidden_states(ids, mask, types)
        logits = probs = None
        if "id2label" in model.config:
            logits = model(ids, mask, types)
            probs = scores(logits, problem_type)
    return hidden, ref.pool_mean(hidden, mask), ref.pool_cls(hidden), logits, probs


def pad_batch(seqs, pad_id, types=None):
    """(input_ids, attention_mask, token_type_ids or None), int64 [B, T], right-padded."""
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    type_ids = torch.zeros((len(seqs), width), dtype=torch.long) if types else None
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        if types:
            type_ids[i, :len(seq)] = torch.tensor(types[i])
    return ids, mask, type_ids


def write_expected(path, expected):
    """expected.json with one line per case (readable diffs, small file)."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    lists = [k for k in ("cases", "pairs") if k in expected]
    lines = [f" {dump(k)}: {dump(v)}," for k, v in expected.items() if k not in lists]
    blocks = [f' "{k}": [\n' + ",\n".join("  " + dump(c) for c in expected[k]) + "\n ]" for k in lists]
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + "\n".join(lines) + "\n" + ",\n".join(blocks) + "\n}\n")


def write_sentence_transformers(path, hidden, max_seq_length):
    """sentence-transformers' files: Transformer, mean Pooling, Normalize."""
    def dump(name, value):
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
            f.write("\n")

    dump("sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    dump("modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    dump("1_Pooling/config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})


def make_model(name, vocab):
    model_type, kw, dtype, seed, tok = MODELS[name]
    kind = tok.get("tokenizer")
    do_lower_case = tok.get("do_lower_case", True)
    if kind is None:
        tokenizer_json = None
        pad_id, vocab_size = vocab.index("[PAD]"), len(vocab)
    else:
        tokenizer_json = {"bpe": bpe_tokenizer, "unigram": unigram_tokenizer,
                          "mpnet": lambda: wordpiece_tokenizer(vocab, True)}[kind]()
        model = tokenizer_json["model"]
        vocab_size = len(model["vocab"])
        pad_id = 1  # <pad> in each layout
        assert (model["vocab"][pad_id][0] == "<pad>" if kind == "unigram"
                else model["vocab"]["<pad>"] == pad_id), name
    config = ref.config_dict(model_type, vocab_size=vocab_size, **kw)
    model_max_length = tok.get("model_max_length", 512)
    limit = config["max_position_embeddings"]
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        limit -= pad_id + 1  # positions start after the padding index
    max_length = min(tok.get("max_seq_length", model_max_length), limit)
    problem_type = config.get("problem_type")
    multi_label = problem_type == "multi_label_classification"

    model = ref.model_from_config(config).double().eval()
    init_weights(model, seed)
    ref.round_weights_(model, dtype)

    path = os.path.join(OUT_DIR, name)
    tok_config = dict(TOKENIZER_CONFIGS[kind], model_max_length=model_max_length) if kind else None
    ref.save_model_dir(path, model, config, vocab, dtype, do_lower_case, model_max_length,
                       tokenizer_json, tok_config)
    if "max_seq_length" in tok:
        write_sentence_transformers(path, config["hidden_size"], tok["max_seq_length"])
    stored = ref.read_safetensors(os.path.join(path, "model.safetensors"))
    state = model.state_dict()
    assert sorted(stored) == sorted(state), name
    for key, value in state.items():
        assert torch.equal(stored[key].double(), value), f"{name}: {key} does not round-trip"

    texts = TEXTS + (SPECIAL_TEXTS if kind else [])
    pairs = PAIRS if tok.get("pairs") else []
    if kind is None:
        tokenizer = ref.BertTokenizer(vocab, do_lower_case=do_lower_case)
        seqs = [tokenizer.encode(text, max_length) for text in texts]
        if pairs:  # through the tokenizer.json transformers writes for vocab.txt
            fast = wordpiece_tokenizer(vocab, False, do_lower_case)
            fast_seqs, pair_out = oracle(fast, texts, pairs, max_length)
            assert fast_seqs == seqs, f"{name}: BertTokenizer and the Rust tokenizer disagree"
    else:
        seqs, pair_out = oracle(tokenizer_json, texts, pairs, max_length)
    ids, mask, _ = pad_batch(seqs, pad_id)
    hidden, mean, cls, logits, probs = compute(model, ids, mask, problem_type)

    worst = 0.0
    cases = []
    for i, text in enumerate(texts):
        n = len(seqs[i])
        one_ids, one_mask, _ = pad_batch([seqs[i]], pad_id)
        h1, mean1, cls1, logits1, _ = compute(model, one_ids, one_mask, problem_type)
        h2, logits2 = independent(state, config, seqs[i], [0] * n)
        pairs_close = [(h1[0], hidden[i, :n]), (h2, hidden[i, :n]), (mean1[0], mean[i]), (cls1[0], cls[i])]
        if logits is not None:
            pairs_close += [(logits1[0], logits[i]), (logits2, logits[i])]
        worst = max([worst] + [float((a - b).abs().max()) for a, b in pairs_close])
        case = {"text": text, "ids": seqs[i]}
        if logits is not None:
            case["logits"] = short(logits[i].tolist())
            case["probs"] = short(probs[i].tolist())
        case["mean"] = short(mean[i].tolist())
        case["cls"] = short(cls[i].tolist())
        cases.append(case)

    pair_cases = []
    if pairs:
        # The types the model is given: BERT reads token_type_ids; the others'
        # tokenizers return none, so their models see type 0.
        pair_ids = [p[0] for p in pair_out]
        pair_types = [p[1] if model_type == "bert" else [0] * len(p[0]) for p in pair_out]
        b_ids, b_mask, b_types = pad_batch(pair_ids, pad_id, pair_types)
        _, _, _, p_logits, p_probs = compute(model, b_ids, b_mask, problem_type, b_types)
        for i, (a, b) in enumerate(pairs):
            _, logits2 = independent(state, config, pair_ids[i], pair_types[i])
            worst = max(worst, float((logits2 - p_logits[i]).abs().max()))
            pair_cases.append({"a": a, "b": b, "ids": pair_ids[i], "types": pair_types[i],
                               "logits": short(p_logits[i].tolist()), "probs": short(p_probs[i].tolist())})
    assert worst < 1e-10, f"{name}: padded batch, single texts and the composition differ by {worst}"
    if logits is not None and logits.shape[1] > 1 and not multi_label:
        # test_quant wants int8 and bf16 to keep fp32's label: no near ties
        top2 = logits.topk(2, dim=1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        assert margin > MIN_LABEL_MARGIN, f"{name}: two labels within {margin:.4f}; pick another seed"

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
            "do_lower_case": do_lower_case if kind in (None, "mpnet") else False,
            "tokenizer": TOKENIZER_KINDS[kind],
            "hidden": hidden_size,
            "n_layers": config.get("num_hidden_layers", config.get("n_layers")),
            "n_heads": config.get("num_attention_heads", config.get("n_heads")),
            "intermediate": config.get("intermediate_size", config.get("hidden_dim")),
            "vocab_size": vocab_size,
            "max_position": config["max_position_embeddings"],
        },
        "cases": cases,
    }
    if problem_type == "regression":
        expected["model"]["problem_type"] = problem_type
    if pair_cases:
        expected["pairs"] = pair_cases
    write_expected(os.path.join(path, "expected.json"), expected)
    spread = float(logits.abs().max()) if logits is not None else 0.0
    print(f"{name:24s} {dtype:4s} {TOKENIZER_KINDS[kind]:9s} max_length {max_length:3d}  "
          f"vocab {vocab_size:4d}  pairs {len(pair_cases):2d}  max|logit| {spread:6.3f}  "
          f"worst difference {worst:.1e}")


def main():
    torch.set_num_threads(1)
    vocab = build_vocab()
    assert len(vocab) == len(set(vocab))
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    for name in MODELS:
        make_model(name, vocab)
    print(f"{len(MODELS)} models in {OUT_DIR}")


if __name__ == "__main__":
    main()
