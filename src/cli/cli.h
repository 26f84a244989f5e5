/*
 * cli.h - what the command-line front end's files share: the parsed
 * arguments and the JSON-lines output helpers. Not an engine header: JSON
 * lives here, at the edge.
 */
#ifndef AISERVE_CLI_H
#define AISERVE_CLI_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#include "core.h"
#include "engine.h"
#include "serving.h"

enum { EXIT_INPUT = 1, EXIT_LOAD = 2 };

typedef struct cli_args {
    const char *command;
    const char *model_dir;
    const char *input;
    const char *data;   /* eval: TSV with sentence and label columns */
    int json_format;    /* eval: --format json */
    int batch_size;
    int n_threads;
    int max_length;
    engine_pooling pooling;
    int normalize;
    engine_quantization quantization; /* --quantization none|bf16|int8 */
    char **texts; /* owned list; the strings are owned too */
    size_t *lens;
    size_t n_texts, cap_texts;
} cli_args;

/* Appends a copy of s[0..len) to the texts; -1 when out of memory. */
int cli_add_text(cli_args *a, const char *s, size_t len);
/* Opens a file to read ('-' is stdin); on failure prints one line naming it
 * and returns NULL. Close with cli_close. */
FILE *cli_open(const char *path);
void cli_close(FILE *f);
/* Parses a decimal int in [lo, hi] into *out; -1 (and *out untouched) when
 * s is not one. */
int cli_parse_int(const char *s, int lo, int hi, int *out);
/* Writes obj (taken; NULL is fine) to out as one compact JSON line, with
 * floats at 7 significant digits: the one number format of every command.
 * Returns 0, or -1 when it could not be formatted or written. */
int cli_write_json(FILE *out, json_t *obj);
/* cli_write_json on stdout, ignoring failures (stdout's are seen at exit). */
void cli_print_json(json_t *obj);
json_t *cli_float_array(const float *v, size_t n);
/* The index of the largest of v[0..n): the predicted label. */
int cli_argmax(const float *v, int n);
/* Adds one text's classification result to obj (borrowed, returned for
 * chaining): "label" (the name of the argmax of logits, given), "confidence",
 * "probs" and "logits", each array n_labels long in label-id order. The
 * per-text result of predict and batch. */
json_t *cli_prediction_set(json_t *obj, const char *label, int n_labels, const float *logits, const float *probs);

/* aiserve eval: accuracy, per-class precision and recall, confusion matrix
 * and throughput of the model on a labelled TSV. Returns the exit status. */
int cli_eval(engine_model *model, const cli_args *args);

/* `aiserve serve`: argv holds the arguments after "serve". Returns the exit
 * status (0 after a clean shutdown, 2 for configuration or startup errors). */
int cli_serve(int argc, char **argv);

/* `aiserve keys create|list|revoke`: argv holds the arguments after "keys".
 * Returns the exit status (0 ok, 2 usage or key store error). */
int cli_keys(int argc, char **argv);

/* `aiserve batch`: classifies a .txt or .jsonl file into a JSON-lines file,
 * resumably (batch.c has the contract). argv[0] is "batch", the options
 * follow. Returns the exit status: 0 ok, 1 some line got an error result,
 * 2 usage, input, output or model load error, 130 interrupted. */
int cli_batch(int argc, char **argv);

/* Applies the configuration's models.traffic, models.shadow and
 * models.cascade to repo (scanned, not necessarily loaded). Returns 0, or -1
 * with why naming the setting and the reason (an unknown model or version). */
int cli_apply_policy(serving_repo *repo, const core_config *cfg, char *why, size_t cap);

#endif
