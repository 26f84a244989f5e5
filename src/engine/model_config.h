/*
 * model_config.h - a Hugging Face model directory's config.json and
 * tokenizer_config.json, parsed into one struct (jansson).
 *
 * config.json keys read, by model_type:
 *   bert, roberta, xlm-roberta, mpnet:
 *               hidden_size, num_hidden_layers, num_attention_heads,
 *               intermediate_size, hidden_act, max_position_embeddings,
 *               vocab_size, layer_norm_eps (1e-12)
 *   bert, roberta, xlm-roberta: type_vocab_size (2), position_embedding_type
 *               ("absolute" only)
 *   roberta, xlm-roberta: pad_token_id (1), where positions start
 *   mpnet:      relative_attention_num_buckets (32); positions start at 1
 *               (fixed in transformers' MPNetEmbeddings)
 *   distilbert: dim, n_layers, n_heads, hidden_dim, activation,
 *               max_position_embeddings, vocab_size (LayerNorm eps 1e-12)
 *   all:        architectures[0], id2label (or num_labels), problem_type
 *               (single_label_classification, multi_label_classification,
 *               regression)
 * tokenizer_config.json (optional): do_lower_case (default true, as
 * BertTokenizer), strip_accents, tokenize_chinese_chars, add_prefix_space
 * (vocab.json + merges.txt only), model_max_length (default 512).
 * sentence_bert_config.json (optional, sentence-transformers):
 * max_seq_length replaces model_max_length, as SentenceTransformer
 * truncates there; do_lower_case (false) lower-cases the text first.
 * modules.json (optional): Transformer, Pooling and Normalize modules (any
 * other, such as Dense, is refused: it would change the vectors); the
 * Pooling module's <path>/config.json: exactly one of pooling_mode_
 * cls_token, mean_tokens, max_tokens, mean_sqrt_len_tokens, lasttoken
 * (weightedmean, several at once, or include_prompt false are refused).
 * Without modules.json: mean pooling, normalised.
 * config_sentence_transformers.json (optional): "prompts" (name -> text)
 * and "default_prompt_name" (one of them, or null).
 * Either way max_length is capped by the position table: at
 * max_position_embeddings, or for RoBERTa-style positions (which start
 * after the padding index) at max_position_embeddings - pad - 1 (512 for
 * roberta-base's 514).
 *
 * Shapes are checked against the tensors later, by the model loader.
 */
#ifndef AISERVE_MODEL_CONFIG_H
#define AISERVE_MODEL_CONFIG_H

#include "engine.h"

typedef enum model_activation {
    ACT_GELU,      /* exact erf */
    ACT_GELU_TANH, /* gelu_new, gelu_pytorch_tanh */
    ACT_RELU,
} model_activation;

typedef struct model_config {
    engine_arch arch;
    engine_task task;
    char architecture[96];
    char model_type[32];
    int hidden, n_layers, n_heads, intermediate;
    int vocab_size, max_position, type_vocab_size; /* type_vocab_size 0: no token types (DistilBERT, MPNet) */
    int position_pad; /* -1: position ids 0, 1, ... (BERT, DistilBERT); else the padding index of
                       * RoBERTa and MPNet: ids pad + 1, pad + 2, ..., the pad token itself at pad */
    int rel_buckets;  /* MPNet: rows of encoder.relative_attention_bias; 0 for the others */
    float layer_norm_eps;
    model_activation act;
    int n_labels;
    char **labels; /* n_labels strings, owned */
    engine_problem problem; /* problem_type */
    /* tokenizer_config.json */
    int do_lower_case;
    int strip_accents; /* -1: follow do_lower_case */
    int tokenize_chinese_chars;
    int add_prefix_space; /* vocab.json + merges.txt */
    int max_length;    /* tokens per text or pair with the specials: model_max_length, or
                        * max_seq_length, capped by the position table */
    /* sentence-transformers */
    int st_lower_case; /* sentence_bert_config.json do_lower_case */
    engine_pooling pooling;
    int normalize;
    int n_prompts;
    char **prompt_names, **prompts; /* n_prompts each, owned */
    char *default_prompt_name;      /* owned; NULL: none */
} model_config;

/* Reads dir/config.json and, if present, dir/tokenizer_config.json and
 * the sentence-transformers files above.
 * On failure returns ENGINE_EIO/ECONFIG/EUNSUPPORTED with a message naming
 * the file and the key. model_config_fini frees what it owns either way. */
int model_config_load(const char *dir, model_config *cfg, engine_error *err);

void model_config_fini(model_config *cfg);

/* The most tokens a sequence may have so that every position id indexes
 * the position table. */
int model_config_position_limit(const model_config *cfg);

/* Buckets of MPNet's relative position bias (transformers'
 * MPNetEncoder.compute_position_bias: 32, max distance 128). */
#define MODEL_MPNET_BUCKETS 32

#endif
