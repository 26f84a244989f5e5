"""sentiment_mlm.py - masked-language-model self-pretraining for aiserve's
sentiment classifiers (imported by tools/train_sentiment.py and
tools/sentiment_kd_experiments.py; not run directly).

No pretrained weights can be downloaded, and the only text at hand is SST-2
train itself. Krishna et al. (2022, "Downstream datasets make surprisingly
good pretraining corpora") found that BERT-style masked-LM pretraining on the
downstream task's own training text, followed by ordinary fine-tuning, already
helps over training from scratch. This module does that pretraining on the
encoder of hf_reference's BertForSequenceClassification, in place, so the
same model object (HF state_dict names) is then fine-tuned; the MLM head is
thrown away afterwards and never shipped. The pooler and classifier get no
gradient here (they stay at their initialisation).

Recipe (BERT's): 15 % of the word pieces of each sequence (not [CLS]/[SEP];
at least one per sequence) are predicted; of those, 80 % are replaced by
[MASK], 10 % by a random word piece, 10 % kept. The head is BERT's
(dense + GELU + LayerNorm, decoder tied to the word embeddings, output bias).
To save CPU the softmax runs over the word pieces that occur in the
pretraining text only (the targets are always among them), and random
replacements are drawn from them too. Dropout at HF's sites
(sentiment_kd.encoder_forward), AdamW with warmup and linear decay
(sentiment_kd.adamw_with_warmup), dynamic masking (new masks every epoch).

Corpus: the distinct sequences of the given training rows. "roots" keeps only
rows that are not a word sub-span of another row (about the full sentences:
every other row's text is inside one of them); "all" keeps every distinct row.
Sequences are cut to max_len word pieces (keeping [SEP]).
"""

import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

import sentiment_kd as kd

CLS, SEP, MASK, PAD = 101, 102, 103, 0


def corpus(texts, seqs, mode="roots", max_len=64):
    """Distinct id sequences for pretraining from parallel rows (texts, seqs),
    truncated to max_len (the last piece replaced by [SEP])."""
    if mode == "roots":
        pick = kd.find_roots(texts)
    elif mode == "all":
        pick = range(len(seqs))
    else:
        raise ValueError(mode)
    out, seen = [], set()
    for k in pick:
        s = list(seqs[k])
        if len(s) > max_len:
            s = s[:max_len - 1] + [SEP]
        key = tuple(s)
        if key not in seen and len(s) > 2:
            seen.add(key)
            out.append(s)
    return out


class MLMHead(nn.Module):
    """BERT's cls.predictions: transform (dense, GELU, LayerNorm) and a decoder
    tied to the word embeddings, plus an output bias."""

    def __init__(self, model):
        super().__init__()
        c = model.config
        h = c["hidden_size"]
        self.dense = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.bias = nn.Parameter(torch.zeros(c["vocab_size"]))
        self.dense.weight.data.normal_(0.0, 0.02)
        self.dense.bias.data.zero_()

    def forward(self, x, word_embeddings, out_ids):
        x = self.LayerNorm(F.gelu(self.dense(x)))
        return x @ word_embeddings[out_ids].t() + self.bias[out_ids]


class _Both(nn.Module):
    """Holds the classifier and the head so one optimiser sees both."""

    def __init__(self, model, head):
        super().__init__()
        self.model = model
        self.head = head


def mask_tokens(ids, mask, gen, out_ids, p=0.15):
    """(inputs, selected [B, T] bool) with BERT's 80/10/10 corruption of the
    selected positions; at least one selected per sequence with a word piece."""
    cand = mask.bool() & (ids != CLS) & (ids != SEP)
    r = torch.rand(ids.shape, generator=gen)
    sel = (r < p) & cand
    none = (~sel.any(1)) & cand.any(1)
    if none.any():
        first = r.masked_fill(~cand, 2.0).argmin(1)
        rows = none.nonzero(as_tuple=True)[0]
        sel[rows, first[rows]] = True
    how = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[sel & (how < 0.8)] = MASK
    rnd = sel & (how >= 0.8) & (how < 0.9)
    n_rnd = int(rnd.sum())
    if n_rnd:
        inputs[rnd] = out_ids[torch.randint(len(out_ids), (n_rnd,), generator=gen)]
    return inputs, sel


def preset_cfg(cfg):
    """The pretraining settings of a train_sentiment preset (keys mlm_*)."""
    return dict(epochs=cfg["mlm_epochs"], batch=cfg["mlm_batch"], lr=cfg["mlm_lr"],
                warmup=cfg["mlm_warmup"], weight_decay=cfg["weight_decay"],
                dropout=cfg["dropout"], attn_dropout=cfg["attn_dropout"],
                corpus=cfg["mlm_corpus"], max_len=cfg["mlm_max_len"])


def pretrain(model, seqs, cfg, seed, log=print, device="cpu"):
    """Masked-LM pretraining of `model`'s encoder in place on `seqs` (id
    sequences with [CLS]/[SEP]). cfg keys: epochs, batch, lr, warmup,
    weight_decay, dropout, attn_dropout (and optional mask_prob, default 0.15).
    Returns a per-epoch history [{epoch, loss, acc (masked-piece accuracy), seconds}]."""
    model.to(device)
    head = MLMHead(model).to(device)
    both = _Both(model, head)
    opt, sched = kd.adamw_with_warmup(both, cfg, len(seqs))
    used = sorted(set(t for s in seqs for t in s) - {CLS, SEP, PAD, MASK})
    out_ids = torch.tensor(used, dtype=torch.long)
    compact = torch.full((model.config["vocab_size"],), -1, dtype=torch.long)
    compact[out_ids] = torch.arange(len(used))
    out_ids_dev = out_ids.to(device)
    compact = compact.to(device)
    lengths = [len(s) for s in seqs]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    p_mask = cfg.get("mask_prob", 0.15)
    steps_per_epoch = math.ceil(len(seqs) / cfg["batch"])
    log(f"    MLM: {len(seqs)} sequences, {sum(lengths)} pieces, output vocabulary "
        f"{len(used)}, {steps_per_epoch} steps/epoch x {cfg['epochs']} epochs")
    history = []
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.time()
        both.train()
        tot, n, correct = 0.0, 0, 0
        for bi, sel in enumerate(kd.make_batches(lengths, cfg["batch"], rng)):
            ids, mask = kd.pad_batch([seqs[i] for i in sel], "cpu")
            inputs, picked = mask_tokens(ids, mask, gen, out_ids, p_mask)
            inputs, mask, picked = inputs.to(device), mask.to(device), picked.to(device)
            hidden = kd.encoder_forward(model, inputs, mask, cfg["dropout"],
                                        cfg["attn_dropout"], True)
            logits = head(hidden[picked], model.bert.embeddings.word_embeddings.weight,
                          out_ids_dev)
            target = compact[ids.to(device)[picked]]
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(both.parameters(), 1.0)
            opt.step()
            sched.step()
            k = int(target.numel())
            tot += loss.item() * k
            n += k
            correct += int((logits.argmax(1) == target).sum())
            if epoch == 1 and bi == 19:
                el = time.time() - t0
                log(f"    MLM first 20 steps {el:.1f}s; epoch estimate "
                    f"{el / 20 * steps_per_epoch:.0f}s")
        rec = dict(epoch=epoch, loss=tot / n, acc=correct / n, seconds=time.time() - t0)
        history.append(rec)
        log(f"    MLM epoch {epoch}: loss {rec['loss']:.4f} masked acc {rec['acc'] * 100:.1f}% "
            f"{rec['seconds']:.0f}s")
    return history
