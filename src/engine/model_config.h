/*
 * model_config.h - a Hugging Face model directory's config.json and
 * tokenizer_config.json, parsed into one struct (jansson).
 *
 * config.json keys read, by model_type:
 *   bert:       hidden_size, num_hidden_layers, num_attention_heads,
 *               intermediate_size, hidden_act, max_position_embeddings,
 *               type_vocab_size, vocab_size, layer_norm_eps (1e-12)
 *   distilbert: dim, n_layers, n_heads, hidden_dim, activation,
 *               max_position_embeddings, vocab_size (LayerNorm eps 1e-12)
 *   both:       architectures[0], id2label (or num_labels), problem_type
 * tokenizer_config.json (optional): do_lower_case (default true, as
 * BertTokenizer), strip_accents, tokenize_chinese_chars, model_max_length
 * (default 512; capped at max_position_embeddings).
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
    int vocab_size, max_position, type_vocab_size;
    float layer_norm_eps;
    model_activation act;
    int n_labels;
    char **labels; /* n_labels strings, owned */
    int multi_label;
    /* tokenizer_config.json */
    int do_lower_case;
    int strip_accents; /* -1: follow do_lower_case */
    int tokenize_chinese_chars;
    int max_length;    /* min(model_max_length, max_position_embeddings) */
} model_config;

/* Reads dir/config.json and, if present, dir/tokenizer_config.json.
 * On failure returns ENGINE_EIO/ECONFIG/EUNSUPPORTED with a message naming
 * the file and the key. model_config_fini frees what it owns either way. */
int model_config_load(const char *dir, model_config *cfg, engine_error *err);

void model_config_fini(model_config *cfg);

#endif
