/*
 * bert.h - BERT, DistilBERT, RoBERTa / XLM-RoBERTa and MPNet encoders and
 * their heads, on packed batches.
 *
 * A packed batch is the concatenation of every sequence's token ids (no
 * padding): sequence s owns tokens [offsets[s], offsets[s + 1]). Linear
 * layers run once over all tokens; attention runs per (sequence, head).
 * All four are post-LayerNorm transformers and share one forward:
 *
 *   h = LN(word[id] + pos[p(i)] (+ type[t(i)] for BERT and RoBERTa))
 *   per layer:  a = LN(h + Wo · attn(Wq h, Wk h, Wv h));  h = LN(a + W2 · act(W1 a))
 *   BERT head:             logits = Wc · tanh(Wp · h[CLS])      (pooler.dense, classifier)
 *   DistilBERT head:       logits = Wc · relu(Wpre · h[CLS])    (pre_classifier, classifier)
 *   RoBERTa, MPNet head:   logits = Wo · tanh(Wd · h[<s>])      (classifier.dense, .out_proj)
 *
 * p(i) = i for BERT and DistilBERT. RoBERTa and MPNet number positions as
 * transformers' create_position_ids_from_input_ids: pad + 1, pad + 2, ...
 * over the tokens that are not the padding id, which keeps position pad.
 * t(i) is the batch's token type (pairs for BERT), else 0.
 * MPNet adds to every layer's attention scores (after the 1/sqrt(d) scale)
 * the relative position bias B[bucket(key - query), head], the buckets of
 * transformers' MPNetEncoder.compute_position_bias, the same for all layers.
 *
 * Weights are borrowed (the mmap, or buffers the model owns); the forward
 * writes only to the scratch it is given, so any number of forwards may
 * run at once on one bert_weights, each with its own pool.
 *
 * Reduced precision (bert_weights_bind_as with ENGINE_QUANT_INT8 or _BF16):
 * the six linear layers of every encoder layer are packed at load
 * (kernels.h) and the F32 pages they came from are given back; the input
 * of each is quantised (int8) or rounded (bf16) once per layer, by rows,
 * into scratch. Embedding tables stored as F16 or BF16 are read in place
 * and widened a row at a time. Attention, softmax, LayerNorm, GELU, the
 * biases and the heads (pooler / pre_classifier, classifier) stay fp32.
 */
#ifndef AISERVE_BERT_H
#define AISERVE_BERT_H

#include <stdint.h>

#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"

typedef struct bert_linear {
    const float *w;       /* n_out x n_in, row-major (PyTorch's nn.Linear layout); NULL when packed */
    kernel_packed packed; /* the int8 or bf16 weight when bert_weights.quant says so; owned */
    const float *b;       /* n_out */
    int n_out, n_in;
} bert_linear;

/* An embedding table in its stored precision: rows of `hidden` values. */
typedef struct bert_table {
    const void *data;
    safetensors_dtype dtype; /* ST_F32, or ST_F16 / ST_BF16 read in place (reduced precision) */
} bert_table;

typedef struct bert_norm {
    const float *gamma, *beta;
} bert_norm;

typedef struct bert_layer {
    bert_linear q, k, v, o;
    bert_norm attn_norm;
    bert_linear ff1, ff2;
    bert_norm out_norm;
} bert_layer;

typedef struct bert_weights {
    bert_table word, pos, type;     /* type.data is NULL for DistilBERT and MPNet */
    bert_norm emb_norm;
    bert_layer *layers;             /* owned, n_layers of them */
    int n_layers;
    const float *rel_bias;          /* MPNet: rel_buckets x n_heads; else NULL */
    bert_linear pre;                /* pooler.dense, pre_classifier or classifier.dense */
    bert_linear classifier;         /* classifier or classifier.out_proj */
    void **owned;                   /* widened F16/BF16 or realigned tensors */
    int n_owned, cap_owned;
    int dtype_mask;                 /* 1 << safetensors_dtype of every tensor used */
    engine_quantization quant;      /* how the encoder's linear layers are stored */
    uint64_t memory_bytes;          /* bytes the weights occupy as used (in place or converted) */
} bert_weights;

/* Finds and checks every tensor the config needs (names with or without the
 * "bert." / "distilbert." / "roberta." / "mpnet." prefix; LayerNorm
 * gamma/beta accepted as aliases).
 * A missing tensor or a shape that disagrees with the config is ENGINE_ECONFIG
 * naming the tensor and both shapes. On failure bert_weights_fini is still
 * needed. */
int bert_weights_bind(bert_weights *w, const model_config *cfg, const safetensors *st,
                      engine_error *err);
/* bert_weights_bind with the encoder's linear layers stored as `quant`
 * asks (ENGINE_QUANT_NONE: the same as bert_weights_bind), int8 packed for
 * the kernels that go with `ops` (kernels_q8_for: 7-bit weights for plain
 * AVX2), which bert_encode should then be given. */
int bert_weights_bind_as(bert_weights *w, const model_config *cfg, const safetensors *st,
                         engine_quantization quant, const kernel_ops *ops, engine_error *err);
void bert_weights_fini(bert_weights *w);

typedef struct bert_batch {
    const int32_t *ids;   /* n_tokens ids, all < vocab size */
    const uint8_t *types; /* n_tokens token types, all < type_vocab_size; NULL: all 0 */
    const int *offsets;   /* n_seqs + 1 entries */
    int n_seqs, n_tokens;
} bert_batch;

/* Floats of scratch bert_encode needs for this batch on n_threads with fp32
 * weights. */
size_t bert_scratch_floats(const model_config *cfg, const bert_batch *batch, int n_threads);
/* Floats of scratch reduced-precision weights need on top (the quantised or
 * rounded inputs of the linear layers); 0 for fp32 weights. */
size_t bert_scratch_lowp_floats(const bert_weights *w, const model_config *cfg, const bert_batch *batch);

/* Runs the encoder: writes the last hidden states (n_tokens x hidden) to
 * `hidden`, using `scratch` (bert_scratch_floats + bert_scratch_lowp_floats
 * floats, 64-byte aligned, not overlapping hidden). Reduced-precision
 * weights run on the kernels that go with `ops` (kernels_q8_for,
 * kernels_bf16_for). Cannot fail. */
void bert_encode(const bert_weights *w, const model_config *cfg, const bert_batch *batch,
                 threadpool *pool, const kernel_ops *ops, float *hidden, float *scratch);

/* Classification head over the first token's rows: logits (n_seqs x n_labels). */
int bert_classify_head(const bert_weights *w, const model_config *cfg, const bert_batch *batch,
                       const float *hidden, const kernel_ops *ops, float *logits, engine_error *err);

#endif
