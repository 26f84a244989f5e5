/*
 * engine.h - the inference engine's one public header.
 *
 * Loads a Hugging Face model directory (config.json, model.safetensors,
 * tokenizer.json, vocab.txt or vocab.json + merges.txt, optional
 * tokenizer_config.json and sentence-transformers' sentence_bert_config.json,
 * modules.json, 1_Pooling/config.json, config_sentence_transformers.json;
 * docs/models.md) and runs BERT,
 * DistilBERT, RoBERTa, XLM-RoBERTa and MPNet sequence classifiers (on texts
 * or text pairs, as cross-encoders take them) and embedding models on the
 * CPU, computing what transformers computes (to 1e-4 on logits).
 *
 * Design:
 *  - A loaded model (engine_model) is read-only after engine_model_load
 *    returns. F32 weights are used in place from a read-only mmap of the
 *    safetensors file; F16/BF16 weights are widened to F32 once, at load.
 *    engine_options.quantization may store the encoder's linear layers as
 *    int8 or bf16 instead (engine_quantization below).
 *  - Every call packs a batch of texts of different lengths into one token
 *    matrix (no padding); attention is computed per sequence.
 *  - The model owns one compute thread pool of n_threads threads (the
 *    calling thread counts as one). Calls on one model from several threads
 *    are safe: scratch memory is per call and the pool runs one batch at a
 *    time, so compute threads never stack on top of each other. OpenBLAS
 *    always runs single-threaded inside the engine's threads.
 *
 * Errors: functions that can fail return 0 or a negative engine_status and
 * fill a caller-owned engine_error with a one-line message that names the
 * file, the tensor or the input and the problem.
 *
 * This header must not grow HTTP, JSON-request or server concepts.
 */
#ifndef AISERVE_ENGINE_H
#define AISERVE_ENGINE_H

#include "status.h"
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One list generates the enum, the names and the default messages. */
#define ENGINE_STATUS_MAP(X)                                              \
    X(ENGINE_OK, 0, "success")                                            \
    X(ENGINE_EIO, -1, "cannot read file")                                 \
    X(ENGINE_EFORMAT, -2, "malformed model file")                         \
    X(ENGINE_ECONFIG, -3, "invalid or inconsistent model configuration")  \
    X(ENGINE_EUNSUPPORTED, -4, "unsupported model or feature")            \
    X(ENGINE_EINPUT, -5, "invalid input")                                 \
    X(ENGINE_ENOMEM, -6, "out of memory")                                 \
    X(ENGINE_EARG, -7, "invalid argument")

typedef enum engine_status { ENGINE_STATUS_MAP(STATUS_ENUM_ROW) } engine_status;

/* "ENGINE_EIO" etc.; never NULL. */
const char *engine_status_name(int status);
/* Default message for a status; never NULL. */
const char *engine_status_message(int status);

/* Caller-owned error record. `message` is always NUL-terminated. */
typedef struct engine_error {
    int status;
    char message[512];
} engine_error;

typedef enum engine_arch {
    ENGINE_ARCH_BERT = 1,       /* BertModel / BertForSequenceClassification */
    ENGINE_ARCH_DISTILBERT = 2, /* DistilBertModel / DistilBert...Classification */
    ENGINE_ARCH_ROBERTA = 3,    /* (XLM)RobertaModel / (XLM)Roberta...Classification */
    ENGINE_ARCH_MPNET = 4,      /* MPNetModel / MPNetForSequenceClassification */
} engine_arch;

typedef enum engine_task {
    ENGINE_TASK_CLASSIFY = 1, /* has a classification head */
    ENGINE_TASK_EMBED = 2,    /* encoder only */
} engine_task;

/* config.json's problem_type, as transformers' PretrainedConfig takes it. */
typedef enum engine_problem {
    ENGINE_PROBLEM_UNSET = 0,        /* absent or null */
    ENGINE_PROBLEM_SINGLE_LABEL = 1, /* "single_label_classification" */
    ENGINE_PROBLEM_MULTI_LABEL = 2,  /* "multi_label_classification" */
    ENGINE_PROBLEM_REGRESSION = 3,   /* "regression": trained on float targets (STS-B cross-encoders,
                                      * score regressors), one value per label */
} engine_problem;

/* config.json's spelling of p; NULL for ENGINE_PROBLEM_UNSET (and outside the enum). */
const char *engine_problem_name(engine_problem p);

/* How a classifier's scores come from its logits, as transformers'
 * TextClassificationPipeline picks its function_to_apply: NONE for
 * problem_type regression; SIGMOID (per label) for multi_label_classification
 * and for one-label models; SOFTMAX otherwise. */
typedef enum engine_score_fn {
    ENGINE_SCORE_SOFTMAX = 0,
    ENGINE_SCORE_SIGMOID = 1,
    ENGINE_SCORE_NONE = 2, /* the logits themselves */
} engine_score_fn;

/* "softmax", "sigmoid", "none" (the pipeline's names); "?" outside the enum. */
const char *engine_score_fn_name(engine_score_fn f);

/* How engine_embed turns a sequence's token states into one vector, as
 * sentence-transformers' Pooling module computes it over the attention
 * mask: every token of the text, the special tokens included. */
typedef enum engine_pooling {
    ENGINE_POOL_MEAN = 0,          /* mean over the tokens */
    ENGINE_POOL_CLS = 1,           /* the first token's state ([CLS], <s>) */
    ENGINE_POOL_MAX = 2,           /* per dimension, the largest value over the tokens */
    ENGINE_POOL_MEAN_SQRT_LEN = 3, /* the tokens' sum divided by sqrt(token count) */
    ENGINE_POOL_LAST = 4,          /* the last token's state ([SEP], </s>) */
} engine_pooling;

/* "mean", "cls", "max", "mean_sqrt_len", "last"; "?" outside the enum. */
const char *engine_pooling_name(engine_pooling p);
/* Parses one of those names: 0, or ENGINE_EARG (err lists the names). */
int engine_pooling_parse(const char *name, engine_pooling *out, engine_error *err);

/* v /= max(||v||, 1e-12) in place, as torch.nn.functional.normalize and
 * sentence-transformers' Normalize: what engine_embed's `normalize` does,
 * for callers that normalise a vector it gave unnormalised. */
void engine_l2_normalize(float *v, size_t n);

/* How the encoder's linear layers (attention Q, K, V, output; FFN up and
 * down) are stored and multiplied. Everything else (embeddings' sums,
 * attention scores and softmax, LayerNorm, GELU, biases, the classifier
 * heads) stays fp32 in every mode. docs/engine.md ("Reduced precision")
 * has the measured accuracy and speed of each.
 *  - NONE: fp32, as transformers computes (1e-4 on logits). The default.
 *  - BF16: weights rounded to bf16 at load (BF16 checkpoints taken as they
 *    are; half the memory of fp32); each layer's input rounded to bf16;
 *    products accumulated in fp32 (AVX512-BF16 vdpbf16ps; on CPUs without
 *    it the bf16 weights are widened to fp32 in registers: same results,
 *    about fp32's speed).
 *  - INT8: dynamic quantisation, as ONNX Runtime's and PyTorch's: weights
 *    int8, symmetric per output channel, quantised at load (a quarter of
 *    fp32's memory); each layer's input quantised per token to u8 with its
 *    own scale and zero point at run time; int32 accumulation (AVX512-VNNI,
 *    AVX-VNNI, or AVX2 with 7-bit weights as ONNX Runtime's reduce_range,
 *    with a note).
 * A mode the CPU cannot run well falls back (engine_model_info says what
 * runs and why): int8 and bf16 need AVX2 at least, else the model loads
 * as NONE. */
typedef enum engine_quantization {
    ENGINE_QUANT_NONE = 0,
    ENGINE_QUANT_BF16 = 1,
    ENGINE_QUANT_INT8 = 2,
} engine_quantization;

/* "none", "bf16", "int8"; "?" for a value outside the enum. */
const char *engine_quantization_name(engine_quantization q);
/* Parses one of those names into *out: 0, or ENGINE_EARG (err says which
 * names there are) for anything else. */
int engine_quantization_parse(const char *name, engine_quantization *out, engine_error *err);

typedef struct engine_options {
    int n_threads; /* compute threads including the caller; <= 0 means 1 */
    engine_quantization quantization; /* asked for; ENGINE_QUANT_NONE (0) by default */
} engine_options;

/* What a loaded model is; strings borrowed from the model, valid until
 * engine_model_free. */
typedef struct engine_model_info {
    engine_arch arch;
    engine_task task;
    const char *architecture; /* e.g. "DistilBertForSequenceClassification" */
    const char *model_type;   /* "bert", "distilbert", "roberta", "xlm-roberta" or "mpnet" */
    const char *tokenizer;    /* its kind: "WordPiece", "BPE" or "Unigram" */
    const char *dtype;        /* dtype of the weights on disk: "F32", "F16", "BF16", or "mixed" */
    int n_layers, hidden, n_heads, intermediate, vocab_size, max_position;
    int max_length;           /* tokens per text (or pair) incl. [CLS]/[SEP] after truncation:
                               * model_max_length, or sentence-transformers' max_seq_length,
                               * capped by the position table */
    int n_labels;             /* 0 for embedding models */
    int multi_label;          /* problem_type multi_label_classification */
    engine_problem problem_type;  /* config.json's (classifiers; UNSET for embedding models) */
    engine_score_fn score_fn;     /* what engine_classify's scores are (classifiers) */
    int do_lower_case;        /* the tokenizer lower-cases */
    /* sentence-transformers' files (defaults without them):
     *  - sentence_bert_config.json do_lower_case: the text is lower-cased
     *    (as Python's str.lower) before tokenizing (0);
     *  - modules.json and its Pooling module's config.json: pooling and a
     *    Normalize module (mean, normalised: what the server uses without
     *    modules.json; with modules.json, normalised only with Normalize);
     *  - config_sentence_transformers.json: named prompts, prepended to a
     *    text when a request names one, and the default prompt's name. */
    int st_lower_case;
    engine_pooling pooling;
    int normalize;
    int n_prompts;
    const char *const *prompt_names;  /* n_prompts, in the file's order */
    const char *const *prompts;       /* the prompt text of each name */
    const char *default_prompt_name;  /* NULL: none (a request without a name gets no prompt) */
    uint64_t n_params;
    uint64_t weight_bytes;    /* bytes of weights on disk */
    uint64_t weight_memory_bytes; /* bytes the weights occupy as the engine uses them: F32 in place
                                   * from the mapping, widened F16/BF16, packed int8/bf16 layers
                                   * (whose F32 pages are given back) */
    engine_quantization quantization; /* what runs, after any fallback */
    const char *kernels;      /* kernels of the linear layers, e.g. "avx512", "avx512-vnni" */
    const char *quantization_note; /* NULL, or one line for the log: why the mode asked for was
                                    * changed or runs on a slower path */
} engine_model_info;

typedef struct engine_model engine_model;

/* Loads the model directory `dir`. On success returns 0 and stores a new
 * model in *out (owned by the caller, freed with engine_model_free). On
 * failure returns a negative status, fills *err and leaves *out NULL. */
int engine_model_load(const char *dir, const engine_options *opts, engine_model **out,
                      engine_error *err);

/* Frees a model; NULL is fine. No call on it may be running. */
void engine_model_free(engine_model *model);

/* Borrowed, valid until engine_model_free. */
const engine_model_info *engine_model_get_info(const engine_model *model);

/* The prompt text config_sentence_transformers.json names `name`, or NULL
 * when it has no such prompt. Borrowed. */
const char *engine_model_prompt(const engine_model *model, const char *name);

/* Label name for id (from id2label), or NULL if out of range. Borrowed. */
const char *engine_model_label(const engine_model *model, int id);

/* Tokenizes one text as the model sees it ([CLS] ... [SEP], truncated to
 * max_length; max_length <= 0 means the model's). Writes at most `cap` ids
 * to `ids` and the count to *n_ids. Returns 0, or ENGINE_EINPUT for text
 * that is not valid UTF-8 or ENGINE_EARG when cap is too small. Any thread. */
int engine_tokenize(const engine_model *model, const char *text, size_t len, int max_length,
                    int32_t *ids, size_t cap, size_t *n_ids, engine_error *err);

/* Tokenizes a pair as engine_classify_pairs gives it to the model: the
 * tokenizer's pair template ([CLS] a [SEP] b [SEP], <s> a </s></s> b </s>),
 * truncated longest_first to max_length (<= 0: the model's). `types` (NULL,
 * or cap entries) gets each id's token type as the model uses it: BERT's 0
 * for [CLS] a [SEP] and 1 for b [SEP]; 0 everywhere for the other
 * architectures, whose tokenizers give no token_type_ids. ENGINE_EINPUT
 * names the text that is not valid UTF-8. Any thread. */
int engine_tokenize_pair(const engine_model *model, const char *a, size_t a_len, const char *b,
                         size_t b_len, int max_length, int32_t *ids, uint8_t *types, size_t cap,
                         size_t *n_ids, engine_error *err);

/* 1 if the model sees nothing in text (len bytes of UTF-8): its tokenizer
 * drops every character, so engine_tokenize would give the special tokens
 * alone ([CLS] [SEP], <s> </s>). A function of the model, since the
 * tokenizer decides what it drops. WordPiece: white space (U+3000, U+00A0,
 * U+2028, ...) always; controls and format characters (U+200B, U+FEFF,
 * NUL, ...) unless clean_text is off; combining marks (U+0301) only when
 * accents are stripped (uncased models). Byte-level BPE drops nothing but
 * the empty text; Unigram (Metaspace) drops spaces and what its normalizer
 * removes. Empty text is blank; invalid UTF-8 is not (engine_tokenize and
 * engine_classify report it). Stops at the first token. Any thread. */
int engine_text_is_blank(const engine_model *model, const char *text, size_t len);

/* Vocabulary string for a token id, or NULL. Borrowed. */
const char *engine_token_text(const engine_model *model, int32_t id);

/* Classifies n texts (texts[i] of lens[i] bytes, UTF-8). Writes n * n_labels
 * logits and scores (`probs`: info.score_fn of the logits: probabilities by
 * softmax, a sigmoid per label for multi-label models and for models with
 * one label, or for regression models the logits themselves, as
 * transformers' pipeline) in label-id order into caller-owned arrays;
 * either may be NULL.
 * Fails with ENGINE_EUNSUPPORTED on an embedding model, ENGINE_EINPUT if a
 * text is not valid UTF-8 (err names its index; nothing is computed).
 * Any thread. */
int engine_classify(engine_model *model, const char *const *texts, const size_t *lens, size_t n,
                    float *logits, float *probs, engine_error *err);

/* What one call computed, for the caller's metrics. */
typedef struct engine_stats {
    size_t n_tokens; /* tokens in the packed batch, [CLS]/[SEP] included */
} engine_stats;

/* engine_classify, and fills *stats (may be NULL) on success. */
int engine_classify_stats(engine_model *model, const char *const *texts, const size_t *lens,
                          size_t n, float *logits, float *probs, engine_stats *stats,
                          engine_error *err);

/* engine_classify_stats on n pairs (a[i], b[i]): each pair is one sequence
 * (engine_tokenize_pair), as cross-encoders and rerankers score a query and
 * a document. ENGINE_EINPUT names the pair's index and which text. */
int engine_classify_pairs(engine_model *model, const char *const *a, const size_t *a_lens,
                          const char *const *b, const size_t *b_lens, size_t n, float *logits,
                          float *probs, engine_stats *stats, engine_error *err);

/* Embeds n texts: writes n * hidden floats to `out` (caller-owned), pooled
 * as asked and L2-normalised when `normalize`. Works on classification
 * checkpoints too (their encoder). Any thread. */
int engine_embed(engine_model *model, const char *const *texts, const size_t *lens, size_t n,
                 engine_pooling pooling, int normalize, float *out, engine_error *err);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_ENGINE_H */
