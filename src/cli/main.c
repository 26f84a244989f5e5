/*
 * main.c - the aiserve command line: the server and offline commands over
 * the engine.
 *
 *   aiserve serve    [--config FILE] [flags]      (serve.c)
 *   aiserve keys     create|list|revoke ...       (keys.c)
 *   aiserve batch    --model DIR --input FILE --output FILE.jsonl [--resume]   (batch.c)
 *   aiserve predict  --model DIR [--batch-size N] [--threads N] [--input FILE] [TEXT ...]
 *   aiserve embed    --model DIR [--pooling mean|cls|max|mean_sqrt_len|last] [--normalize] [--input FILE] [TEXT ...]
 *   aiserve tokenize --model DIR [--max-length N] [--input FILE] [TEXT ...]
 *   aiserve info     --model DIR
 *   aiserve eval     --model DIR --data FILE.tsv [--format text|json] [--batch-size N]
 *   aiserve help     [COMMAND]    (the same as COMMAND --help)
 *
 * Every command answers --help / -h with its own usage and options, on
 * stdout, exit status 0; `aiserve --help` lists the commands.
 *
 * Output is one JSON object per text, in input order (JSON lines). A text
 * the engine rejects (invalid UTF-8) gets {"error": ...} in its place and
 * the exit status is 1; a model that fails to load is one line on stderr
 * and exit status 2, as is a usage error. JSON is formatted here, at the
 * edge; the engine never sees it.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"

/* The commands, in the order the general help lists them. serve, keys and
 * batch parse their own arguments (their files print their --help); the
 * model commands share parse_args and print their help from `about` and the
 * rows of model_options that name them. */
enum { CMD_PREDICT = 1, CMD_EMBED = 2, CMD_TOKENIZE = 4, CMD_INFO = 8, CMD_EVAL = 16 };

typedef struct command {
    const char *name;
    const char *summary; /* one line of the general help */
    unsigned bit;        /* a model command's CMD_ bit; 0 for the others */
    const char *synopsis; /* model commands: what follows "aiserve NAME " */
    const char *about;    /* model commands: what it prints, for its --help */
    int (*run)(int argc, char **argv); /* argv[0] is the command's name */
} command;

static int run_serve(int argc, char **argv) { return cli_serve(argc - 1, argv + 1); }
static int run_keys(int argc, char **argv) { return cli_keys(argc - 1, argv + 1); }
static int run_model_command(int argc, char **argv);

static const command commands[] = {
    {"serve", "serve the models of a repository over HTTP", 0, NULL, NULL, run_serve},
    {"keys", "create, list and revoke API keys", 0, NULL, NULL, run_keys},
    {"batch", "classify a .txt or .jsonl file into a JSON-lines file, resumably", 0, NULL, NULL, cli_batch},
    {"predict", "classify texts: {\"label\", \"confidence\", \"probs\", \"logits\"} per text", CMD_PREDICT,
     "--model DIR [--batch-size N] [--threads N] [--input FILE] [TEXT ...]",
     "Classifies each text and prints one JSON line per text, in input order:\n"
     "{\"label\", \"confidence\", \"probs\", \"logits\"}, the arrays in label-id order (id2label);\n"
     "\"probs\" are the scores transformers' text-classification pipeline gives: a softmax,\n"
     "a sigmoid per label for a multi-label or one-label model, or the logits themselves\n"
     "for problem_type regression (`aiserve info` names it as \"score\").\n",
     run_model_command},
    {"embed", "embed texts: {\"embedding\": [...]} per text", CMD_EMBED,
     "--model DIR [--pooling mean|cls|max|mean_sqrt_len|last] [--normalize] [--batch-size N] [--threads N]\n"
     "                     [--input FILE] [TEXT ...]",
     "Embeds each text and prints one JSON line per text, in input order:\n"
     "{\"embedding\": [...]}. Works on any BERT or DistilBERT checkpoint, a classifier's\n"
     "encoder included.\n",
     run_model_command},
    {"tokenize", "show what the model sees: {\"ids\", \"tokens\"} per text", CMD_TOKENIZE,
     "--model DIR [--max-length N] [--input FILE] [TEXT ...]",
     "Prints the model's token ids and tokens for each text, one JSON line per\n"
     "text, in input order: {\"ids\": [...], \"tokens\": [...]}.\n",
     run_model_command},
    {"info", "architecture, sizes, labels, dtype, parameter count", CMD_INFO, "--model DIR",
     "Prints one JSON line describing the model: architecture, sizes, labels,\n"
     "dtype and parameter count.\n",
     run_model_command},
    {"eval", "accuracy, precision/recall, confusion matrix and speed on a labelled TSV", CMD_EVAL,
     "--model DIR --data FILE.tsv [--format text|json] [--batch-size N] [--threads N]",
     "Classifies every row of a TSV with 'sentence' and 'label' columns and reports\n"
     "accuracy, per-class precision, recall and support, the confusion matrix\n"
     "(rows: true label) and sequences/s.\n",
     run_model_command},
};

#define CMD_ALL (CMD_PREDICT | CMD_EMBED | CMD_TOKENIZE | CMD_INFO | CMD_EVAL)
#define CMD_TEXTS (CMD_PREDICT | CMD_EMBED | CMD_TOKENIZE)  /* take TEXT arguments and --input */
#define CMD_BATCHED (CMD_PREDICT | CMD_EMBED | CMD_EVAL)    /* run forward passes in batches */

/* The model commands' options, each with the commands that take it: a
 * command's --help lists its rows, and parse_args accepts only those. */
static const struct model_option {
    struct option getopt; /* .val is also the short option */
    unsigned commands;
    const char *help;     /* as --help prints it, after two blanks */
} model_options[] = {
    {{"model", required_argument, 0, 'm'}, CMD_ALL,
     "--model DIR        Hugging Face model directory (config.json, model.safetensors,\n"
     "                     vocab.txt or tokenizer.json)"},
    {{"input", required_argument, 0, 'i'}, CMD_TEXTS,
     "--input FILE       read one text per line from FILE ('-' is stdin), after TEXT args"},
    {{"data", required_argument, 0, 'd'}, CMD_EVAL,
     "--data FILE.tsv    labelled data, '-' is stdin (header with 'sentence' and 'label';\n"
     "                     a label is an id or a name from id2label)"},
    {{"format", required_argument, 0, 'f'}, CMD_EVAL, "--format text|json report format (default text)"},
    {{"pooling", required_argument, 0, 'p'}, CMD_EMBED,
     "--pooling MODE     mean, cls, max, mean_sqrt_len or last (the last token's state) of the token states "
     "(default mean)"},
    {{"normalize", no_argument, 0, 'n'}, CMD_EMBED, "--normalize        L2-normalise embeddings"},
    {{"max-length", required_argument, 0, 'l'}, CMD_TOKENIZE,
     "--max-length N     truncate to N tokens (default: the model's)"},
    {{"batch-size", required_argument, 0, 'b'}, CMD_BATCHED, "--batch-size N     texts per forward pass (default 32)"},
    {{"threads", required_argument, 0, 't'}, CMD_BATCHED,
     "--threads N        compute threads (default: the number of CPUs)"},
    {{"quantization", required_argument, 0, 'q'}, CMD_ALL & ~CMD_TOKENIZE,
     "--quantization none|bf16|int8\n"
     "                     the encoder's linear layers as int8 or bf16 (default none:\n"
     "                     float32, as transformers; docs/engine.md, Reduced precision)"},
};

enum { N_MODEL_OPTIONS = sizeof model_options / sizeof *model_options };

static const command *find_command(const char *name) {
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void usage(FILE *out) {
    fputs("usage: aiserve COMMAND [options]\n"
          "\n"
          "commands:\n",
          out);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fputs("\n"
          "aiserve COMMAND --help (or aiserve help COMMAND) prints a command's usage and options.\n",
          out);
}

/* A model command's --help. */
static void command_usage(const command *cmd, FILE *out) {
    fprintf(out, "usage: aiserve %s %s\n\n%s\noptions:\n", cmd->name, cmd->synopsis, cmd->about);
    for (size_t i = 0; i < N_MODEL_OPTIONS; i++)
        if (model_options[i].commands & cmd->bit)
            fprintf(out, "  %s\n", model_options[i].help);
    fputs("  -h, --help         this help\n\n", out);
    fputs(cmd->bit == CMD_INFO ? "exit status: 0 ok, 2 usage or model load error\n"
                               : "exit status: 0 ok, 1 some text was rejected, 2 usage or model load error\n",
          out);
}

int cli_add_text(cli_args *a, const char *s, size_t len) {
    if (a->n_texts == a->cap_texts) {
        size_t cap = a->cap_texts ? 2 * a->cap_texts : 64;
        char **t = realloc(a->texts, cap * sizeof *t);
        if (!t)
            return -1;
        a->texts = t;
        size_t *l = realloc(a->lens, cap * sizeof *l);
        if (!l)
            return -1;
        a->lens = l;
        a->cap_texts = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, s, len);
    copy[len] = 0;
    a->texts[a->n_texts] = copy;
    a->lens[a->n_texts++] = len;
    return 0;
}

FILE *cli_open(const char *path) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        fprintf(stderr, "aiserve: %s: cannot open: %s\n", path, strerror(errno));
    return f;
}

void cli_close(FILE *f) {
    if (f && f != stdin)
        fclose(f);
}

static int read_lines(cli_args *a, const char *path) {
    FILE *f = cli_open(path);
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            n--;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (cli_add_text(a, line, (size_t)n)) {
            rc = -1;
            break;
        }
    }
    free(line);
    cli_close(f);
    return rc;
}

int cli_parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* Parses a model command's arguments: argv[0] is the command's name. Returns
 * 0, or -1 after printing why (--help prints the command's usage and exits). */
static int parse_args(int argc, char **argv, const command *cmd, cli_args *a) {
    struct option opts[N_MODEL_OPTIONS + 2];
    char shorts[2 * N_MODEL_OPTIONS + 3] = ":";
    size_t n_opts = 0, n_shorts = 1;
    for (size_t i = 0; i < N_MODEL_OPTIONS; i++) {
        if (!(model_options[i].commands & cmd->bit))
            continue;
        opts[n_opts++] = model_options[i].getopt;
        shorts[n_shorts++] = (char)model_options[i].getopt.val;
        if (model_options[i].getopt.has_arg == required_argument)
            shorts[n_shorts++] = ':';
    }
    opts[n_opts++] = (struct option){"help", no_argument, 0, 'h'};
    opts[n_opts] = (struct option){0, 0, 0, 0};
    shorts[n_shorts++] = 'h';
    shorts[n_shorts] = 0;
    a->batch_size = 32;
    long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    a->n_threads = n_cpus > 0 && n_cpus <= 256 ? (int)n_cpus : 1;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            a->model_dir = optarg;
            break;
        case 'i':
            a->input = optarg;
            break;
        case 'b':
            if (cli_parse_int(optarg, 1, 4096, &a->batch_size))
                return fprintf(stderr, "aiserve: --batch-size must be 1..4096\n"), -1;
            break;
        case 't':
            if (cli_parse_int(optarg, 1, 256, &a->n_threads))
                return fprintf(stderr, "aiserve: --threads must be 1..256\n"), -1;
            break;
        case 'p': {
            engine_error perr;
            if (engine_pooling_parse(optarg, &a->pooling, &perr))
                return fprintf(stderr, "aiserve: --%s\n", perr.message), -1;
            break;
        }
        case 'n':
            a->normalize = 1;
            break;
        case 'q': {
            engine_error qerr;
            if (engine_quantization_parse(optarg, &a->quantization, &qerr))
                return fprintf(stderr, "aiserve: --quantization: %s\n", qerr.message), -1;
            break;
        }
        case 'l':
            if (cli_parse_int(optarg, 2, 1 << 20, &a->max_length))
                return fprintf(stderr, "aiserve: --max-length must be at least 2\n"), -1;
            break;
        case 'd':
            a->data = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "json") == 0)
                a->json_format = 1;
            else if (strcmp(optarg, "text") != 0)
                return fprintf(stderr, "aiserve: --format must be text or json\n"), -1;
            break;
        case 'h':
            command_usage(cmd, stdout);
            exit(0);
        case ':':
            return fprintf(stderr, "aiserve %s: %s needs a value\n", cmd->name, argv[optind - 1]), -1;
        default: {
            char short_opt[3] = {'-', (char)optopt, 0}; /* optopt is 0 for a long option */
            return fprintf(stderr, "aiserve %s: unknown option %s (see aiserve %s --help)\n", cmd->name,
                           optopt ? short_opt : argv[optind - 1], cmd->name), -1;
        }
        }
    }
    if (optind < argc && !(cmd->bit & CMD_TEXTS))
        return fprintf(stderr, "aiserve %s: unexpected argument '%s' (see aiserve %s --help)\n", cmd->name,
                       argv[optind], cmd->name), -1;
    if (!a->model_dir)
        return fprintf(stderr, "aiserve: %s needs --model DIR\n", a->command), -1;
    if (strcmp(a->command, "eval") == 0 && !a->data)
        return fprintf(stderr, "aiserve: eval needs --data FILE.tsv\n"), -1;
    for (int i = optind; i < argc; i++)
        if (cli_add_text(a, argv[i], strlen(argv[i])))
            return -1;
    if (a->input && read_lines(a, a->input))
        return -1;
    return 0;
}

int cli_write_json(FILE *out, json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(7)) : NULL;
    int rc = -1;
    if (s) {
        rc = fputs(s, out) == EOF || fputc('\n', out) == EOF ? -1 : 0;
        free(s);
    }
    json_decref(obj);
    return rc;
}

void cli_print_json(json_t *obj) {
    cli_write_json(stdout, obj);
}

json_t *cli_float_array(const float *v, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_real(v[i]));
    return arr;
}

static void print_error_line(const char *message) {
    cli_print_json(json_pack("{s:s}", "error", message));
}

int cli_argmax(const float *v, int n) {
    int best = 0;
    for (int j = 1; j < n; j++)
        if (v[j] > v[best])
            best = j;
    return best;
}

json_t *cli_prediction_set(json_t *obj, const char *label, int n_labels, const float *logits, const float *probs) {
    int best = cli_argmax(logits, n_labels);
    json_object_set_new(obj, "label", json_string(label));
    json_object_set_new(obj, "confidence", json_real(probs[best]));
    json_object_set_new(obj, "probs", cli_float_array(probs, (size_t)n_labels));
    json_object_set_new(obj, "logits", cli_float_array(logits, (size_t)n_labels));
    return obj;
}

/* Runs one chunk; if the batch is rejected for its input, runs the texts one
 * by one so that every good text still gets its answer. */
static int run_chunk(engine_model *m, cli_args *a, size_t first, size_t n, float *buf_a, float *buf_b) {
    const engine_model_info *info = engine_model_get_info(m);
    const char *const *texts = (const char *const *)a->texts + first;
    const size_t *lens = a->lens + first;
    engine_error err;
    int rc;
    if (strcmp(a->command, "predict") == 0)
        rc = engine_classify(m, texts, lens, n, buf_a, buf_b, &err);
    else
        rc = engine_embed(m, texts, lens, n, a->pooling, a->normalize, buf_a, &err);
    if (rc == ENGINE_EINPUT && n > 1) {
        int status = 0;
        for (size_t i = 0; i < n; i++)
            status |= run_chunk(m, a, first + i, 1, buf_a, buf_b);
        return status;
    }
    if (rc) {
        print_error_line(err.message);
        return rc == ENGINE_EINPUT ? EXIT_INPUT : EXIT_LOAD;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a->command, "predict") == 0) {
            size_t k = (size_t)info->n_labels;
            const float *logits = buf_a + i * k;
            cli_print_json(cli_prediction_set(json_object(), engine_model_label(m, cli_argmax(logits, (int)k)),
                                              (int)k, logits, buf_b + i * k));
        } else {
            size_t h = (size_t)info->hidden;
            cli_print_json(json_pack("{s:o}", "embedding", cli_float_array(buf_a + i * h, h)));
        }
    }
    return 0;
}

static int cmd_batched(engine_model *m, cli_args *a) {
    const engine_model_info *info = engine_model_get_info(m);
    if (strcmp(a->command, "predict") == 0 && info->task != ENGINE_TASK_CLASSIFY) {
        fprintf(stderr, "aiserve: %s: %s has no classification head; use 'aiserve embed'\n",
                a->model_dir, info->architecture);
        return EXIT_LOAD;
    }
    size_t width = strcmp(a->command, "predict") == 0 ? (size_t)info->n_labels : (size_t)info->hidden;
    float *buf_a = malloc((size_t)a->batch_size * width * sizeof(float));
    float *buf_b = malloc((size_t)a->batch_size * width * sizeof(float));
    int status = 0;
    if (!buf_a || !buf_b) {
        fprintf(stderr, "aiserve: out of memory\n");
        status = EXIT_LOAD;
    }
    for (size_t i = 0; !status && i < a->n_texts; i += (size_t)a->batch_size) {
        size_t n = a->n_texts - i < (size_t)a->batch_size ? a->n_texts - i : (size_t)a->batch_size;
        int rc = run_chunk(m, a, i, n, buf_a, buf_b);
        status = rc > status ? rc : status;
        if (rc == EXIT_LOAD)
            break;
    }
    fflush(stdout);
    free(buf_a);
    free(buf_b);
    return status;
}

static int cmd_tokenize(engine_model *m, cli_args *a) {
    const engine_model_info *info = engine_model_get_info(m);
    size_t cap = (size_t)(a->max_length > 0 ? a->max_length : info->max_length) + 2;
    int32_t *ids = malloc(cap * sizeof *ids);
    int status = 0;
    if (!ids)
        return EXIT_LOAD;
    for (size_t i = 0; i < a->n_texts; i++) {
        size_t n = 0;
        engine_error err;
        if (engine_tokenize(m, a->texts[i], a->lens[i], a->max_length, ids, cap, &n, &err)) {
            print_error_line(err.message);
            status = EXIT_INPUT;
            continue;
        }
        json_t *jids = json_array(), *jtok = json_array();
        for (size_t j = 0; j < n; j++) {
            json_array_append_new(jids, json_integer(ids[j]));
            json_array_append_new(jtok, json_string(engine_token_text(m, ids[j])));
        }
        cli_print_json(json_pack("{s:o,s:o}", "ids", jids, "tokens", jtok));
    }
    free(ids);
    return status;
}

static int cmd_info(engine_model *m, cli_args *a) {
    const engine_model_info *info = engine_model_get_info(m);
    json_t *labels = json_array();
    for (int i = 0; i < info->n_labels; i++)
        json_array_append_new(labels, json_string(engine_model_label(m, i)));
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:o,s:b,s:b,s:s,s:I,s:I}",
                          "model", a->model_dir, "architecture", info->architecture, "model_type",
                          info->model_type, "task",
                          info->task == ENGINE_TASK_CLASSIFY ? "classification" : "embedding",
                          "layers", info->n_layers, "hidden_size", info->hidden, "heads",
                          info->n_heads, "intermediate_size", info->intermediate, "vocab_size",
                          info->vocab_size, "max_position_embeddings", info->max_position,
                          "max_length", info->max_length, "labels", labels, "multi_label",
                          info->multi_label, "do_lower_case", info->do_lower_case, "dtype",
                          info->dtype, "parameters", (json_int_t)info->n_params, "weight_bytes",
                          (json_int_t)info->weight_bytes);
    json_object_set_new(o, "quantization", json_string(engine_quantization_name(info->quantization)));
    json_object_set_new(o, "kernels", json_string(info->kernels ? info->kernels : ""));
    json_object_set_new(o, "weight_memory_bytes", json_integer((json_int_t)info->weight_memory_bytes));
    if (info->quantization_note)
        json_object_set_new(o, "quantization_note", json_string(info->quantization_note));
    json_object_set_new(o, "tokenizer", json_string(info->tokenizer));
    if (info->task == ENGINE_TASK_CLASSIFY) { /* what `predict` gives as "probs" and "confidence" */
        const char *problem = engine_problem_name(info->problem_type);
        json_object_set_new(o, "problem_type", problem ? json_string(problem) : json_null());
        json_object_set_new(o, "score", json_string(engine_score_fn_name(info->score_fn)));
    }
    if (info->task == ENGINE_TASK_EMBED) { /* as the server embeds (sentence-transformers' files) */
        json_object_set_new(o, "pooling", json_string(engine_pooling_name(info->pooling)));
        json_object_set_new(o, "normalize", json_boolean(info->normalize));
        json_object_set_new(o, "lower_case_input", json_boolean(info->st_lower_case));
        json_t *prompts = json_object();
        for (int i = 0; i < info->n_prompts; i++)
            json_object_set_new(prompts, info->prompt_names[i], json_string(info->prompts[i]));
        json_object_set_new(o, "prompts", prompts);
        json_object_set_new(o, "default_prompt_name",
                            info->default_prompt_name ? json_string(info->default_prompt_name) : json_null());
    }
    cli_print_json(o);
    return 0;
}

/* predict, embed, tokenize, info and eval: argv[0] is the command's name. */
static int run_model_command(int argc, char **argv) {
    const command *cmd = find_command(argv[0]);
    cli_args a = {.command = cmd->name};
    int status = EXIT_LOAD;
    engine_model *m = NULL;
    if (parse_args(argc, argv, cmd, &a) == 0) {
        engine_error err;
        engine_options opts = {.n_threads = a.n_threads, .quantization = a.quantization};
        if (engine_model_load(a.model_dir, &opts, &m, &err)) {
            fprintf(stderr, "aiserve: %s\n", err.message);
        } else if (strcmp(a.command, "info") == 0) {
            status = cmd_info(m, &a);
        } else if (strcmp(a.command, "eval") == 0) {
            status = cli_eval(m, &a);
        } else if (strcmp(a.command, "tokenize") == 0) {
            status = cmd_tokenize(m, &a);
        } else {
            status = cmd_batched(m, &a);
        }
    }
    engine_model_free(m);
    for (size_t i = 0; i < a.n_texts; i++)
        free(a.texts[i]);
    free(a.texts);
    free(a.lens);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_LOAD : 0;
    }
    if (strcmp(argv[1], "help") == 0) { /* aiserve help [COMMAND]: COMMAND --help */
        const command *cmd = argc > 2 ? find_command(argv[2]) : NULL;
        if (argc > 3 || (argc == 3 && !cmd)) {
            fprintf(stderr, "aiserve help: '%s' is not a command (aiserve --help lists them)\n", argv[argc - 1]);
            return EXIT_LOAD;
        }
        if (!cmd) {
            usage(stdout);
            return 0;
        }
        char *help_argv[] = {(char *)cmd->name, "--help", NULL};
        return cmd->run(2, help_argv);
    }
    const command *cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "aiserve: unknown command '%s' (aiserve --help lists them)\n", argv[1]);
        return EXIT_LOAD;
    }
    return cmd->run(argc - 1, argv + 1);
}
