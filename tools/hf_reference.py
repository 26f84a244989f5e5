"""hf_reference.py - a small reference for Hugging Face BERT, DistilBERT,
RoBERTa, XLM-RoBERTa and MPNet.

Written without `transformers` (not installed here): torch modules whose
state_dict() names and forward math are exactly Hugging Face's (after
transformers' modeling_bert.py, modeling_distilbert.py, modeling_roberta.py,
modeling_xlm_roberta.py and modeling_mpnet.py), a hand-written safetensors
reader/writer, HF-style config.json dicts, the slow BertTokenizer
(BasicTokenizer + WordPiece), and a writer for a complete HF model directory.
The C engine's golden fixtures (tools/make_fixtures.py) and other offline
scripts (benchmark export, training) import it.

API
  Safetensors
    write_safetensors(path, tensors, metadata=None)  F32/F16/BF16 by tensor dtype
    read_safetensors(path) -> {name: tensor}          read_safetensors_header(path)
  Configs (plain dicts, the layout of real config.json files)
    bert_config(vocab_size, hidden_size=..., labels=None, problem_type=None, ...)
    distilbert_config(vocab_size, dim=..., labels=None, ...)
    roberta_config(vocab_size, ..., model_type="roberta" or "xlm-roberta")
    mpnet_config(vocab_size, ...)
    config_dict(model_type, **kw)                      dispatches on model_type
  Models (take a config dict; names as transformers' state_dict())
    BertModel, BertForSequenceClassification,
    DistilBertModel, DistilBertForSequenceClassification,
    RobertaModel, RobertaForSequenceClassification,
    XLMRobertaModel, XLMRobertaForSequenceClassification,
    MPNetModel, MPNetForSequenceClassification, model_from_config(config)
    model.hidden_states(input_ids, attention_mask, token_type_ids=None) -> [B, T, H]
    model(input_ids, attention_mask, token_type_ids=None) -> logits [B, L] (classifiers)
      or hidden (bases); token_type_ids None means all 0 (BERT and RoBERTa read them)
    create_position_ids_from_input_ids(input_ids, padding_idx)   RoBERTa's and MPNet's
    mpnet_relative_position_bucket(relative_position)            MPNet's 32 buckets
    round_weights_(model, dtype)   round every parameter through "F32"/"F16"/"BF16"
  Pooling and heads
    pool_mean(hidden, mask), pool_cls(hidden), l2_normalize(x), probabilities(logits, multi_label)
  Tokenizer (transformers' slow BertTokenizer)
    load_vocab(path) -> [token]; BertTokenizer(vocab_tokens, do_lower_case=True)
    .tokenize(text) -> [piece]; .encode(text, max_length) -> [id] with [CLS]/[SEP]
    .encode_batch(texts, max_length) -> (input_ids, attention_mask), right-padded with [PAD]
  Model directory
    save_model_dir(dir, model, config, vocab_tokens, dtype="F32", do_lower_case=True,
                   model_max_length=512)
      writes config.json, model.safetensors, vocab.txt, tokenizer_config.json.

Attention masks follow transformers: masked keys get torch.finfo(dtype).min added
to the scores, so a right-padded batch reproduces each text run alone. Compute in
float64 (model.double()) for golden values.
"""

import json
import math
import os
import struct
import unicodedata

import torch
from torch import nn

# ---------------------------------------------------------------------------
# safetensors

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# Same-width integer views, so bytes can be taken through numpy (no bf16 there).
_INT_VIEWS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def torch_dtype(name):
    """torch dtype for a safetensors dtype name ("F32", "F16", "BF16")."""
    return _DTYPES[name]


def write_safetensors(path, tensors, metadata=None):
    """Writes `tensors` ({name: tensor of float32/float16/bfloat16}) to `path`.

    Layout: u64 little-endian header length N, N bytes of JSON header
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
    padded with spaces to a multiple of 8, then the data: tensors in sorted-name
    order, contiguous, little-endian. Metadata values must be strings.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = t.view(_INT_VIEWS[t.dtype]).numpy().astype("<i%d" % t.element_size()).tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def read_safetensors_header(path):
    """The parsed JSON header of a safetensors file (including "__metadata__")."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def read_safetensors(path):
    """Reads a safetensors file into {name: tensor} (F32/F16/BF16 tensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        raw = bytearray(data[begin:end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(entry["shape"]).clone()
    return out


# ---------------------------------------------------------------------------
# configs

def _labels(labels):
    """id2label / label2id dicts from a list of label names (HF's defaults if None)."""
    if labels is None:
        labels = ["LABEL_0", "LABEL_1"]
    id2label = {str(i): name for i, name in enumerate(labels)}
    label2id = {name: i for i, name in enumerate(labels)}
    return id2label, label2id


def bert_config(vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, hidden_act="gelu", max_position_embeddings=512,
                type_vocab_size=2, layer_norm_eps=1e-12, labels=None, problem_type=None,
                architecture="BertForSequenceClassification", pad_token_id=0,
                torch_dtype="float32"):
    """A config.json dict for BERT, laid out like bert-base-uncased's.

    `labels` is the list of label names in id order (classifiers only);
    `architecture` is "BertForSequenceClassification" or "BertModel".
    """
    cfg = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": layer_norm_eps,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "torch_dtype": torch_dtype,
        "type_vocab_size": type_vocab_size,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if architecture != "BertModel":
        cfg["id2label"], cfg["label2id"] = _labels(labels)
    if problem_type is not None:
        cfg["problem_type"] = problem_type
    return dict(sorted(cfg.items()))


def distilbert_config(vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                      activation="gelu", max_position_embeddings=512, labels=None,
                      problem_type=None, architecture="DistilBertForSequenceClassification",
                      pad_token_id=0, torch_dtype="float32"):
    """A config.json dict for DistilBERT, laid out like
    distilbert-base-uncased-finetuned-sst-2-english's."""
    cfg = {
        "activation": activation,
        "architectures": [architecture],
        "attention_dropout": 0.1,
        "dim": dim,
        "dropout": 0.1,
        "hidden_dim": hidden_dim,
        "initializer_range": 0.02,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "distilbert",
        "n_heads": n_heads,
        "n_layers": n_layers,
        "pad_token_id": pad_token_id,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "sinusoidal_pos_embds": False,
        "tie_weights_": True,
        "torch_dtype": torch_dtype,
        "vocab_size": vocab_size,
    }
    if architecture != "DistilBertModel":
        cfg["id2label"], cfg["label2id"] = _labels(labels)
    if problem_type is not None:
        cfg["problem_type"] = problem_type
    return dict(sorted(cfg.items()))


def roberta_config(vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, hidden_act="gelu", max_position_embeddings=66,
                   type_vocab_size=1, layer_norm_eps=1e-5, labels=None, problem_type=None,
                   architecture=None, pad_token_id=1, model_type="roberta",
                   torch_dtype="float32"):
    """A config.json dict for RoBERTa ("roberta") or XLM-RoBERTa ("xlm-roberta"),
    laid out like roberta-base's and xlm-roberta-base's: positions start after
    pad_token_id, so max_position_embeddings is the longest text + 2.
    `architecture` defaults to the family's ForSequenceClassification."""
    family = "Roberta" if model_type == "roberta" else "XLMRoberta"
    architecture = architecture or family + "ForSequenceClassification"
    assert architecture.startswith(family), architecture
    cfg = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": layer_norm_eps,
        "max_position_embeddings": max_position_embeddings,
        "model_type": model_type,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "torch_dtype": torch_dtype,
        "type_vocab_size": type_vocab_size,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if not architecture.endswith("Model"):
        cfg["id2label"], cfg["label2id"] = _labels(labels)
    if problem_type is not None:
        cfg["problem_type"] = problem_type
    return dict(sorted(cfg.items()))


def mpnet_config(vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, hidden_act="gelu", max_position_embeddings=66,
                 layer_norm_eps=1e-5, relative_attention_num_buckets=32, labels=None,
                 problem_type=None, architecture="MPNetForSequenceClassification",
                 torch_dtype="float32"):
    """A config.json dict for MPNet, laid out like microsoft/mpnet-base's
    (sentence-transformers/all-mpnet-base-v2 is an MPNetModel)."""
    cfg = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": layer_norm_eps,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "mpnet",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": 1,
        "relative_attention_num_buckets": relative_attention_num_buckets,
        "torch_dtype": torch_dtype,
        "vocab_size": vocab_size,
    }
    if architecture != "MPNetModel":
        cfg["id2label"], cfg["label2id"] = _labels(labels)
    if problem_type is not None:
        cfg["problem_type"] = problem_type
    return dict(sorted(cfg.items()))


def config_dict(model_type, **kw):
    """The config builder for model_type ("bert", "distilbert", "roberta",
    "xlm-roberta", "mpnet") called with **kw."""
    if model_type in ("roberta", "xlm-roberta"):
        return roberta_config(model_type=model_type, **kw)
    return {"bert": bert_config, "distilbert": distilbert_config, "mpnet": mpnet_config}[model_type](**kw)


# ---------------------------------------------------------------------------
# model math

def activation(name):
    """HF activations: "gelu" (exact erf), "gelu_new" (tanh approximation), "relu"."""
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_new":
        return lambda x: 0.5 * x * (1.0 + torch.tanh(
            math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "relu":
        return torch.relu
    raise ValueError(f"unsupported activation {name!r}")


def _attention(q, k, v, attention_mask, n_heads, position_bias=None):
    """Multi-head scaled dot-product attention on [B, T, H] projections.

    attention_mask is [B, T] of 1 (token) / 0 (padding); masked keys get
    finfo(dtype).min added to the scores, as transformers does.
    position_bias ([B, heads, T, T], MPNet's) is added to the scaled scores.
    """
    b, t, h = q.shape
    d = h // n_heads

    def split(x):
        return x.view(b, t, n_heads, d).transpose(1, 2)

    scores = torch.matmul(split(q), split(k).transpose(-1, -2)) / math.sqrt(d)
    if position_bias is not None:
        scores = scores + position_bias
    bias = (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * torch.finfo(scores.dtype).min
    probs = torch.softmax(scores + bias, dim=-1)
    return torch.matmul(probs, split(v)).transpose(1, 2).reshape(b, t, h)


class BertEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, input_ids, token_type_ids=None):
        pos = torch.arange(input_ids.shape[1])
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = (self.word_embeddings(input_ids) + self.position_embeddings(pos)[None]
             + self.token_type_embeddings(types))
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)


class BertSelfOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertSelfOutput(c)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])


class BertOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["intermediate_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])


class BertLayer(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, c):
        super().__init__()
        self.n_heads = c["num_attention_heads"]
        self.act = activation(c["hidden_act"])
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c)

    def forward(self, x, mask):
        s = self.attention.self
        ctx = _attention(s.query(x), s.key(x), s.value(x), mask, self.n_heads)
        o = self.attention.output
        x = o.LayerNorm(o.dense(ctx) + x)
        y = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(y + x)


class BertEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c["num_hidden_layers"]))


class BertPooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """transformers.BertModel (with its pooler, as real checkpoints have)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, attention_mask)
        return x

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.hidden_states(input_ids, attention_mask, token_type_ids)


class BertForSequenceClassification(nn.Module):
    """logits = classifier(tanh(pooler.dense(h[:, 0])))."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config["hidden_size"], len(config["id2label"]))

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        return self.bert.hidden_states(input_ids, attention_mask, token_type_ids)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.bert.pooler(hidden))


class DistilBertEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["dim"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["dim"])
        self.LayerNorm = nn.LayerNorm(c["dim"], eps=1e-12)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1])
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos)[None])


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["dim"]
        self.n_heads = c["n_heads"]
        self.q_lin, self.k_lin = nn.Linear(d, d), nn.Linear(d, d)
        self.v_lin, self.out_lin = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):
        ctx = _attention(self.q_lin(x), self.k_lin(x), self.v_lin(x), mask, self.n_heads)
        return self.out_lin(ctx)


class FFN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.lin1 = nn.Linear(c["dim"], c["hidden_dim"])
        self.lin2 = nn.Linear(c["hidden_dim"], c["dim"])
        self.act = activation(c["activation"])

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class TransformerBlock(nn.Module):
    """Post-LN: x = sa_layer_norm(attn(x) + x); x = output_layer_norm(ffn(x) + x)."""

    def __init__(self, c):
        super().__init__()
        self.attention = MultiHeadSelfAttention(c)
        self.sa_layer_norm = nn.LayerNorm(c["dim"], eps=1e-12)
        self.ffn = FFN(c)
        self.output_layer_norm = nn.LayerNorm(c["dim"], eps=1e-12)

    def forward(self, x, mask):
        x = self.sa_layer_norm(self.attention(x, mask) + x)
        return self.output_layer_norm(self.ffn(x) + x)


class Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(c) for _ in range(c["n_layers"]))


class DistilBertModel(nn.Module):
    """transformers.DistilBertModel."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = DistilBertEmbeddings(config)
        self.transformer = Transformer(config)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        """(DistilBERT has no token types; its tokenizer gives none.)"""
        x = self.embeddings(input_ids)
        for layer in self.transformer.layer:
            x = layer(x, attention_mask)
        return x

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.hidden_states(input_ids, attention_mask)


class DistilBertForSequenceClassification(nn.Module):
    """logits = classifier(relu(pre_classifier(h[:, 0])))."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config["dim"], config["dim"])
        self.classifier = nn.Linear(config["dim"], len(config["id2label"]))

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        return self.distilbert.hidden_states(input_ids, attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.hidden_states(input_ids, attention_mask)[:, 0]
        return self.classifier(torch.relu(self.pre_classifier(h)))


def create_position_ids_from_input_ids(input_ids, padding_idx):
    """transformers' position ids for RoBERTa and MPNet: padding_idx + 1,
    padding_idx + 2, ... over the tokens that are not padding_idx (which keep
    padding_idx), counted along each row."""
    mask = input_ids.ne(padding_idx).int()
    incremental = torch.cumsum(mask, dim=1).type_as(mask) * mask
    return incremental.long() + padding_idx


class RobertaEmbeddings(nn.Module):
    """BERT's embeddings with positions from create_position_ids_from_input_ids
    (transformers adds word + token_type, then position)."""

    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.padding_idx = c["pad_token_id"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], h, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], h,
                                                padding_idx=self.padding_idx)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])

    def forward(self, input_ids, token_type_ids=None):
        pos = create_position_ids_from_input_ids(input_ids, self.padding_idx)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(pos)
        return self.LayerNorm(x)


class RobertaClassificationHead(nn.Module):
    """logits = out_proj(tanh(dense(h[:, 0]))) (the <s> token). MPNet's
    MPNetClassificationHead is the same."""

    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.out_proj = nn.Linear(c["hidden_size"], len(c["id2label"]))

    def forward(self, hidden):
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


class RobertaModel(BertModel):
    """transformers.RobertaModel: BertModel with RobertaEmbeddings (BERT's
    encoder layers, the same modules and names, and its forward), and the
    pooler when add_pooling_layer (True for the bare model, as real
    checkpoints have it; False inside the classifier)."""

    def __init__(self, config, add_pooling_layer=True):
        nn.Module.__init__(self)  # BertModel's own modules are not wanted
        self.config = config
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = BertEncoder(config)
        if add_pooling_layer:
            self.pooler = BertPooler(config)


class RobertaForSequenceClassification(nn.Module):
    """roberta (no pooler) + classifier (RobertaClassificationHead)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        return self.roberta.hidden_states(input_ids, attention_mask, token_type_ids)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.classifier(self.hidden_states(input_ids, attention_mask, token_type_ids))


class XLMRobertaModel(RobertaModel):
    """transformers.XLMRobertaModel: RoBERTa's modules under XLM-R's names."""


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    """transformers.XLMRobertaForSequenceClassification (base prefix "roberta")."""


def mpnet_relative_position_bucket(relative_position, num_buckets=32, max_distance=128):
    """MPNetEncoder.relative_position_bucket: relative_position (key - query,
    an integer tensor) to a bucket; half the buckets for each sign, exact up
    to a quarter of them, then logarithmic (float32, as transformers casts)."""
    ret = 0
    n = -relative_position
    num_buckets //= 2
    ret += (n < 0).to(torch.long) * num_buckets
    n = torch.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                                * (num_buckets - max_exact)).to(torch.long)
    val_if_large = torch.min(val_if_large, torch.full_like(val_if_large, num_buckets - 1))
    ret += torch.where(is_small, n, val_if_large)
    return ret


class MPNetEmbeddings(nn.Module):
    """word + position (positions from padding index 1, fixed in transformers)."""

    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.padding_idx = 1
        self.word_embeddings = nn.Embedding(c["vocab_size"], h, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], h,
                                                padding_idx=self.padding_idx)
        self.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])

    def forward(self, input_ids):
        pos = create_position_ids_from_input_ids(input_ids, self.padding_idx)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class MPNetSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))


class MPNetAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn = MPNetSelfAttention(c)
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])


class MPNetLayer(nn.Module):
    """Post-LN as BERT's, with the position bias added to the attention scores."""

    def __init__(self, c):
        super().__init__()
        self.n_heads = c["num_attention_heads"]
        self.act = activation(c["hidden_act"])
        self.attention = MPNetAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c)

    def forward(self, x, mask, position_bias):
        a = self.attention.attn
        ctx = _attention(a.q(x), a.k(x), a.v(x), mask, self.n_heads, position_bias)
        x = self.attention.LayerNorm(a.o(ctx) + x)
        y = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(y + x)


class MPNetEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_heads = c["num_attention_heads"]
        self.layer = nn.ModuleList(MPNetLayer(c) for _ in range(c["num_hidden_layers"]))
        self.relative_attention_bias = nn.Embedding(c["relative_attention_num_buckets"], self.n_heads)

    def compute_position_bias(self, x, num_buckets=32):
        """[B, heads, T, T]: bias[b, h, q, k] = W[bucket(k - q), h] (32 buckets
        whatever the config says, as transformers calls it)."""
        bsz, qlen, klen = x.size(0), x.size(1), x.size(1)
        context_position = torch.arange(qlen, dtype=torch.long)[:, None]
        memory_position = torch.arange(klen, dtype=torch.long)[None, :]
        rp_bucket = mpnet_relative_position_bucket(memory_position - context_position,
                                                   num_buckets=num_buckets)
        values = self.relative_attention_bias(rp_bucket).permute([2, 0, 1]).unsqueeze(0)
        return values.expand((bsz, -1, qlen, klen)).contiguous()


class MPNetModel(nn.Module):
    """transformers.MPNetModel (with its pooler, as real checkpoints have)."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = MPNetEncoder(config)
        if add_pooling_layer:
            self.pooler = BertPooler(config)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        """(MPNet has no token types; its tokenizer gives none.)"""
        x = self.embeddings(input_ids)
        bias = self.encoder.compute_position_bias(x)
        for layer in self.encoder.layer:
            x = layer(x, attention_mask, bias)
        return x

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.hidden_states(input_ids, attention_mask)


class MPNetForSequenceClassification(nn.Module):
    """mpnet (no pooler) + classifier (MPNetClassificationHead: dense, tanh, out_proj)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        return self.mpnet.hidden_states(input_ids, attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.classifier(self.hidden_states(input_ids, attention_mask))


_ARCHITECTURES = {cls.__name__: cls for cls in (
    BertModel, BertForSequenceClassification, DistilBertModel, DistilBertForSequenceClassification,
    RobertaModel, RobertaForSequenceClassification, XLMRobertaModel,
    XLMRobertaForSequenceClassification, MPNetModel, MPNetForSequenceClassification)}


def model_from_config(config):
    """A new (randomly initialised, float32) model for config["architectures"][0]."""
    return _ARCHITECTURES[config["architectures"][0]](config)


@torch.no_grad()
def round_weights_(model, dtype):
    """Rounds every parameter in place through `dtype` ("F32", "F16", "BF16",
    round-to-nearest-even) and back to its own dtype; returns the model."""
    for p in model.parameters():
        p.copy_(p.to(_DTYPES[dtype]).to(p.dtype))
    return model


def pool_mean(hidden, attention_mask):
    """Mean of hidden [B, T, H] over the tokens where attention_mask [B, T] is 1."""
    m = attention_mask.to(hidden.dtype)[:, :, None]
    return (hidden * m).sum(1) / m.sum(1)


def pool_cls(hidden):
    """Hidden state of the first token ([CLS])."""
    return hidden[:, 0]


def l2_normalize(x):
    """Rows of x scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True)


def probabilities(logits, multi_label=False):
    """softmax over labels, or an independent sigmoid per label for multi-label
    and for one-label models (transformers' text-classification pipeline)."""
    if multi_label or logits.shape[-1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------
# tokenizer (transformers' slow BertTokenizer)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path):
    """Tokens of a vocab.txt, id = line number."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class BertTokenizer:
    """BasicTokenizer + WordPiece with [CLS]/[SEP], as transformers' slow
    BertTokenizer with default options (strip_accents follows do_lower_case).
    No NFC pass (newer slow tokenizers add one; the fast tokenizer and the C
    engine do not, and with lower-casing it changes nothing).

    Special-token strings inside the text (e.g. a literal "[CLS]") are not
    treated specially here; keep them out of fixture texts."""

    def __init__(self, vocab_tokens, do_lower_case=True, max_input_chars_per_word=100):
        self.vocab = {tok: i for i, tok in enumerate(vocab_tokens)}
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        for tok in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if tok not in self.vocab:
                raise ValueError(f"vocabulary lacks {tok}")

    def basic_tokenize(self, text):
        """Clean, split CJK, lower-case and strip accents, split on whitespace
        and punctuation."""
        text = "".join(" " if _is_whitespace(ch) else ch for ch in text
                       if ord(ch) not in (0, 0xFFFD) and not _is_control(ch))
        text = "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in text)
        words = []
        for word in text.split():
            if self.do_lower_case:
                word = word.lower()
                word = "".join(ch for ch in unicodedata.normalize("NFD", word)
                               if unicodedata.category(ch) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word):
        """Greedy longest-match-first pieces of one word, or ["[UNK]"]."""
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text):
        return [p for w in self.basic_tokenize(text) for p in self.wordpiece(w)]

    def encode(self, text, max_length=512):
        """[CLS] ids [SEP], word pieces truncated so that the total <= max_length."""
        ids = [self.vocab[p] for p in self.tokenize(text)][:max_length - 2]
        return [self.vocab["[CLS]"]] + ids + [self.vocab["[SEP]"]]

    def encode_batch(self, texts, max_length=512):
        """(input_ids, attention_mask), int64 [B, T], right-padded with [PAD]."""
        seqs = [self.encode(t, max_length) for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.vocab["[PAD]"], dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return ids, mask


# ---------------------------------------------------------------------------
# model directory

def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def save_model_dir(path, model, config, vocab_tokens, dtype="F32", do_lower_case=True,
                   model_max_length=512, tokenizer_json=None, tokenizer_config=None):
    """Writes a Hugging Face model directory: config.json, model.safetensors
    (every parameter cast to `dtype`), and the tokenizer: vocab.txt and a
    BertTokenizer's tokenizer_config.json, or, when `tokenizer_json` (a dict)
    is given, tokenizer.json (compact, as the hub's) and `tokenizer_config`
    (a dict) as tokenizer_config.json."""
    os.makedirs(path, exist_ok=True)
    config = dict(config, torch_dtype={"F32": "float32", "F16": "float16",
                                       "BF16": "bfloat16"}[dtype])
    _write_json(os.path.join(path, "config.json"), config)
    tensors = {k: v.to(_DTYPES[dtype]) for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
    if tokenizer_json is not None:
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_json, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        _write_json(os.path.join(path, "tokenizer_config.json"), tokenizer_config)
        return
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(tok + "\n" for tok in vocab_tokens))
    tok_config = {
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "do_basic_tokenize": True,
        "do_lower_case": do_lower_case,
        "mask_token": "[MASK]",
        "model_max_length": model_max_length,
        "never_split": None,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_config, f, indent=2)
        f.write("\n")
