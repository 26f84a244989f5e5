/*
 * model_config.c - parses config.json, tokenizer_config.json and
 * sentence-transformers' sentence_bert_config.json, modules.json (and its
 * Pooling config.json), config_sentence_transformers.json (see
 * model_config.h). Every error names the
 * file and the key; a key of the wrong type is an error, never silently
 * defaulted.
 */
#include "model_config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* Reads a positive integer key; `def` < 0 means required. */
static int get_int(const json_t *root, const char *path, const char *key, int def, int *out,
                   engine_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return engine_error_set(err, ENGINE_ECONFIG, "%s: missing required key '%s'", path, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT_MAX / 16)
        return engine_error_set(err, ENGINE_ECONFIG, "%s: '%s' must be a positive integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_bool(const json_t *root, const char *path, const char *key, int def, int *out,
                    engine_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: '%s' must be true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

/* Reads a non-negative integer key (an index), `def` when absent. */
static int get_index(const json_t *root, const char *path, const char *key, int def, int *out,
                     engine_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX / 16)
        return engine_error_set(err, ENGINE_ECONFIG, "%s: '%s' must be a non-negative integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

/* model_type -> the engine's architecture and the prefix of transformers'
 * class names (the architectures entry must begin with it). */
typedef struct model_family {
    const char *model_type, *prefix;
    engine_arch arch;
} model_family;

static const model_family families[] = {
    {"bert", "Bert", ENGINE_ARCH_BERT},
    {"distilbert", "DistilBert", ENGINE_ARCH_DISTILBERT},
    {"roberta", "Roberta", ENGINE_ARCH_ROBERTA},
    {"xlm-roberta", "XLMRoberta", ENGINE_ARCH_ROBERTA},
    {"mpnet", "MPNet", ENGINE_ARCH_MPNET},
};

int model_config_position_limit(const model_config *cfg) {
    return cfg->position_pad < 0 ? cfg->max_position : cfg->max_position - cfg->position_pad - 1;
}

static int parse_activation(const char *path, const char *key, const json_t *v, model_activation *out,
                            engine_error *err) {
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (!v)
        s = "gelu";
    if (!s)
        return engine_error_set(err, ENGINE_ECONFIG, "%s: '%s' must be a string", path, key);
    if (strcmp(s, "gelu") == 0)
        *out = ACT_GELU;
    else if (strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_pytorch_tanh") == 0)
        *out = ACT_GELU_TANH;
    else if (strcmp(s, "relu") == 0)
        *out = ACT_RELU;
    else
        return engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: %s '%s' is not supported (gelu, "
                                "gelu_new, gelu_pytorch_tanh, relu)", path, key, s);
    return 0;
}

/* id2label: {"0": "NEGATIVE", "1": "POSITIVE"}; ids must be exactly 0..n-1. */
static int parse_labels(const json_t *root, const char *path, model_config *cfg, engine_error *err) {
    json_t *map = json_object_get(root, "id2label");
    int n = 0;
    if (map && !json_is_null(map)) {
        if (!json_is_object(map) || json_object_size(map) == 0 || json_object_size(map) > 100000)
            return engine_error_set(err, ENGINE_ECONFIG, "%s: 'id2label' must be a non-empty object",
                                    path);
        n = (int)json_object_size(map);
        json_t *nl = json_object_get(root, "num_labels");
        if (json_is_integer(nl) && json_integer_value(nl) != n)
            return engine_error_set(err, ENGINE_ECONFIG,
                                    "%s: 'num_labels' is %lld but 'id2label' has %d entries", path,
                                    (long long)json_integer_value(nl), n);
    } else if (get_int(root, path, "num_labels", 2, &n, err)) {
        return err ? err->status : ENGINE_ECONFIG;
    }
    cfg->labels = calloc((size_t)n, sizeof *cfg->labels);
    if (!cfg->labels)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    cfg->n_labels = n;
    if (!map || json_is_null(map)) {
        for (int i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof name, "LABEL_%d", i);
            if (!(cfg->labels[i] = strdup(name)))
                return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        }
        return 0;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (errno || end == key || *end || id < 0 || id >= n)
            return engine_error_set(err, ENGINE_ECONFIG,
                                    "%s: id2label key '%s' is not an id in 0..%d", path, key, n - 1);
        if (!json_is_string(val) || json_string_length(val) == 0)
            return engine_error_set(err, ENGINE_ECONFIG, "%s: id2label['%s'] must be a non-empty string",
                                    path, key);
        if (cfg->labels[id])
            return engine_error_set(err, ENGINE_ECONFIG, "%s: id2label has id %ld twice", path, id);
        if (!(cfg->labels[id] = strdup(json_string_value(val))))
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    }
    return 0;
}

static int parse_model_config(const json_t *root, const char *path, model_config *cfg,
                              engine_error *err) {
    if (!json_is_object(root))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON object", path);
    json_t *mt = json_object_get(root, "model_type");
    json_t *archs = json_object_get(root, "architectures");
    const char *arch_name = NULL;
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0)))
            return engine_error_set(err, ENGINE_ECONFIG,
                                    "%s: 'architectures' must be a non-empty list of strings", path);
        arch_name = json_string_value(json_array_get(archs, 0));
    }
    if (!json_is_string(mt))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: missing or non-string 'model_type'", path);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", json_string_value(mt));
    const model_family *fam = NULL;
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (strcmp(cfg->model_type, families[i].model_type) == 0)
            fam = &families[i];
    if (!fam)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s: model_type '%s' is not supported (bert, distilbert, roberta, xlm-roberta, "
                                "mpnet)", path, cfg->model_type);
    cfg->arch = fam->arch;
    char default_arch[64];
    snprintf(default_arch, sizeof default_arch, "%sModel", fam->prefix);
    if (!arch_name)
        arch_name = default_arch;
    /* The prefix names the family; "DistilBert..." does not begin with "Bert",
     * nor "XLMRoberta..." with "Roberta". */
    const size_t prefix_len = strlen(fam->prefix);
    if (strncmp(arch_name, fam->prefix, prefix_len) != 0)
        return engine_error_set(err, ENGINE_ECONFIG,
                                "%s: architecture '%s' contradicts model_type '%s'", path, arch_name,
                                cfg->model_type);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", arch_name);
    const char *suffix = arch_name + prefix_len;
    if (strcmp(suffix, "ForSequenceClassification") == 0)
        cfg->task = ENGINE_TASK_CLASSIFY;
    else if (strcmp(suffix, "Model") == 0 || strcmp(suffix, "ForMaskedLM") == 0 ||
             strcmp(suffix, "ForPreTraining") == 0)
        cfg->task = ENGINE_TASK_EMBED; /* the encoder, as an embedding model */
    else
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s: architecture '%s' is not supported (%sForSequenceClassification, "
                                "%sModel)", path, arch_name, fam->prefix, fam->prefix);

    int rc;
    cfg->position_pad = -1;
    if (cfg->arch != ENGINE_ARCH_DISTILBERT) {
        if ((rc = get_int(root, path, "hidden_size", -1, &cfg->hidden, err)) ||
            (rc = get_int(root, path, "num_hidden_layers", -1, &cfg->n_layers, err)) ||
            (rc = get_int(root, path, "num_attention_heads", -1, &cfg->n_heads, err)) ||
            (rc = get_int(root, path, "intermediate_size", -1, &cfg->intermediate, err)) ||
            (rc = parse_activation(path, "hidden_act", json_object_get(root, "hidden_act"), &cfg->act,
                                   err)))
            return rc;
        if (cfg->arch != ENGINE_ARCH_MPNET) {
            if ((rc = get_int(root, path, "type_vocab_size", 2, &cfg->type_vocab_size, err)))
                return rc;
            json_t *pet = json_object_get(root, "position_embedding_type");
            if (pet && !json_is_null(pet) &&
                (!json_is_string(pet) || strcmp(json_string_value(pet), "absolute") != 0))
                return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                        "%s: position_embedding_type must be \"absolute\" (relative "
                                        "position embeddings are not supported)", path);
        }
        if (cfg->arch == ENGINE_ARCH_ROBERTA &&
            (rc = get_index(root, path, "pad_token_id", 1, &cfg->position_pad, err)))
            return rc;
        if (cfg->arch == ENGINE_ARCH_MPNET) {
            cfg->position_pad = 1; /* MPNetEmbeddings.padding_idx, whatever pad_token_id says */
            if ((rc = get_int(root, path, "relative_attention_num_buckets", 32, &cfg->rel_buckets, err)))
                return rc;
            /* transformers computes 32 buckets whatever the config says */
            if (cfg->rel_buckets < MODEL_MPNET_BUCKETS)
                return engine_error_set(err, ENGINE_ECONFIG,
                                        "%s: 'relative_attention_num_buckets' is %d but MPNet's position bias "
                                        "uses %d buckets", path, cfg->rel_buckets, MODEL_MPNET_BUCKETS);
        }
        json_t *eps = json_object_get(root, "layer_norm_eps");
        cfg->layer_norm_eps = 1e-12f;
        if (eps && !json_is_null(eps)) {
            if (!json_is_number(eps) || json_number_value(eps) <= 0 || json_number_value(eps) > 1)
                return engine_error_set(err, ENGINE_ECONFIG,
                                        "%s: 'layer_norm_eps' must be a number in (0, 1]", path);
            cfg->layer_norm_eps = (float)json_number_value(eps);
        }
    } else {
        if ((rc = get_int(root, path, "dim", -1, &cfg->hidden, err)) ||
            (rc = get_int(root, path, "n_layers", -1, &cfg->n_layers, err)) ||
            (rc = get_int(root, path, "n_heads", -1, &cfg->n_heads, err)) ||
            (rc = get_int(root, path, "hidden_dim", -1, &cfg->intermediate, err)) ||
            (rc = parse_activation(path, "activation", json_object_get(root, "activation"), &cfg->act,
                                   err)))
            return rc;
        cfg->layer_norm_eps = 1e-12f; /* fixed in transformers' DistilBERT */
        cfg->type_vocab_size = 0;
        int sinusoidal = 0;
        if ((rc = get_bool(root, path, "sinusoidal_pos_embds", 0, &sinusoidal, err)))
            return rc;
        /* Sinusoidal tables are stored in the checkpoint as ordinary weights. */
    }
    if ((rc = get_int(root, path, "vocab_size", -1, &cfg->vocab_size, err)) ||
        (rc = get_int(root, path, "max_position_embeddings", 512, &cfg->max_position, err)))
        return rc;
    if (model_config_position_limit(cfg) < 2)
        return engine_error_set(err, ENGINE_ECONFIG,
                                "%s: max_position_embeddings %d leaves room for %d tokens (at least 2 needed)",
                                path, cfg->max_position, model_config_position_limit(cfg));
    if (cfg->hidden % cfg->n_heads != 0)
        return engine_error_set(err, ENGINE_ECONFIG,
                                "%s: hidden size %d is not a multiple of the %d attention heads", path,
                                cfg->hidden, cfg->n_heads);
    json_t *pt = json_object_get(root, "problem_type");
    if (pt && !json_is_null(pt)) {
        if (!json_is_string(pt))
            return engine_error_set(err, ENGINE_ECONFIG, "%s: 'problem_type' must be a string", path);
        const char *p = json_string_value(pt);
        static const engine_problem known[] = {ENGINE_PROBLEM_SINGLE_LABEL, ENGINE_PROBLEM_MULTI_LABEL,
                                               ENGINE_PROBLEM_REGRESSION};
        for (size_t i = 0; i < sizeof known / sizeof *known && !cfg->problem; i++)
            if (strcmp(p, engine_problem_name(known[i])) == 0)
                cfg->problem = known[i];
        if (!cfg->problem)
            return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                    "%s: problem_type '%s' is not supported (single_label_classification, "
                                    "multi_label_classification, regression)", path, p);
    }
    if (cfg->task == ENGINE_TASK_CLASSIFY)
        return parse_labels(root, path, cfg, err);
    return 0;
}

static int parse_tokenizer_config(const json_t *root, const char *path, model_config *cfg,
                                  engine_error *err) {
    if (!json_is_object(root))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON object", path);
    int rc;
    if ((rc = get_bool(root, path, "do_lower_case", 1, &cfg->do_lower_case, err)) ||
        (rc = get_bool(root, path, "tokenize_chinese_chars", 1, &cfg->tokenize_chinese_chars, err)) ||
        (rc = get_bool(root, path, "add_prefix_space", 0, &cfg->add_prefix_space, err)))
        return rc;
    json_t *sa = json_object_get(root, "strip_accents");
    if (sa && !json_is_null(sa)) {
        if (!json_is_boolean(sa))
            return engine_error_set(err, ENGINE_ECONFIG, "%s: 'strip_accents' must be true, false or null",
                                    path);
        cfg->strip_accents = json_is_true(sa);
    }
    json_t *ml = json_object_get(root, "model_max_length");
    if (ml && !json_is_null(ml)) {
        /* transformers writes 1e30 ("no limit") as a huge number. */
        double v = json_is_number(ml) ? json_number_value(ml) : -1;
        if (v < 2)
            return engine_error_set(err, ENGINE_ECONFIG,
                                    "%s: 'model_max_length' must be a number >= 2", path);
        const int limit = model_config_position_limit(cfg);
        cfg->max_length = v < limit ? (int)v : limit;
    }
    return 0;
}

/* sentence-transformers' Transformer module truncates at max_seq_length
 * (when set) instead of the tokenizer's model_max_length, and lower-cases
 * the text first when do_lower_case is set. */
static int parse_sentence_bert_config(const json_t *root, const char *path, model_config *cfg,
                                      engine_error *err) {
    if (!json_is_object(root))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON object", path);
    int rc = get_bool(root, path, "do_lower_case", 0, &cfg->st_lower_case, err);
    if (rc)
        return rc;
    json_t *ml = json_object_get(root, "max_seq_length");
    if (!ml || json_is_null(ml))
        return 0;
    if (!json_is_integer(ml) || json_integer_value(ml) < 2)
        return engine_error_set(err, ENGINE_ECONFIG, "%s: 'max_seq_length' must be an integer >= 2", path);
    const int limit = model_config_position_limit(cfg);
    cfg->max_length = json_integer_value(ml) < limit ? (int)json_integer_value(ml) : limit;
    return 0;
}

#define MAX_PROMPTS 64
#define MAX_PROMPT_BYTES 4096

/* config_sentence_transformers.json: the named prompts (name -> text) and
 * the default prompt's name, which must be one of them. */
static int parse_st_prompts(const json_t *root, const char *path, model_config *cfg, engine_error *err) {
    if (!json_is_object(root))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON object", path);
    json_t *prompts = json_object_get(root, "prompts"), *def = json_object_get(root, "default_prompt_name");
    if (prompts && !json_is_null(prompts)) {
        if (!json_is_object(prompts) || json_object_size(prompts) > MAX_PROMPTS)
            return engine_error_set(err, ENGINE_ECONFIG, "%s: 'prompts' must be an object of at most %d names",
                                    path, MAX_PROMPTS);
        size_t n = json_object_size(prompts);
        cfg->prompt_names = calloc(n ? n : 1, sizeof *cfg->prompt_names);
        cfg->prompts = calloc(n ? n : 1, sizeof *cfg->prompts);
        if (!cfg->prompt_names || !cfg->prompts)
            return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
        const char *name;
        json_t *text;
        json_object_foreach((json_t *)prompts, name, text) {
            if (!json_is_string(text) || json_string_length(text) > MAX_PROMPT_BYTES ||
                strlen(json_string_value(text)) != json_string_length(text))
                return engine_error_set(err, ENGINE_ECONFIG, "%s: prompt '%.64s' must be a string of at most %d bytes",
                                        path, name, MAX_PROMPT_BYTES);
            int i = cfg->n_prompts;
            cfg->prompt_names[i] = strdup(name);
            cfg->prompts[i] = strdup(json_string_value(text));
            cfg->n_prompts++;
            if (!cfg->prompt_names[i] || !cfg->prompts[i])
                return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
        }
    }
    if (def && !json_is_null(def)) {
        int found = 0;
        for (int i = 0; json_is_string(def) && i < cfg->n_prompts; i++)
            found |= strcmp(cfg->prompt_names[i], json_string_value(def)) == 0;
        if (!found)
            return engine_error_set(err, ENGINE_ECONFIG, "%s: 'default_prompt_name' must name one of 'prompts'",
                                    path);
        if (!(cfg->default_prompt_name = strdup(json_string_value(def))))
            return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    }
    return 0;
}

/* A Pooling module's config.json: exactly one mode the engine has. */
static int parse_pooling(const json_t *root, const char *path, model_config *cfg, engine_error *err) {
    if (!json_is_object(root))
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON object", path);
    static const struct {
        const char *key;
        engine_pooling pooling;
        int supported;
    } modes[] = {{"pooling_mode_cls_token", ENGINE_POOL_CLS, 1},
                 {"pooling_mode_mean_tokens", ENGINE_POOL_MEAN, 1},
                 {"pooling_mode_max_tokens", ENGINE_POOL_MAX, 1},
                 {"pooling_mode_mean_sqrt_len_tokens", ENGINE_POOL_MEAN_SQRT_LEN, 1},
                 {"pooling_mode_lasttoken", ENGINE_POOL_LAST, 1},
                 {"pooling_mode_weightedmean_tokens", ENGINE_POOL_MEAN, 0}};
    int n_on = 0, rc, on = 0, include_prompt = 1;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        if ((rc = get_bool(root, path, modes[i].key, 0, &on, err)))
            return rc;
        if (on && !modes[i].supported)
            return engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: '%s' is not supported", path, modes[i].key);
        if (on) {
            cfg->pooling = modes[i].pooling;
            n_on++;
        }
    }
    if (n_on != 1)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s: %s pooling mode is set; the engine pools with exactly one of cls, mean, "
                                "max, mean_sqrt_len and lasttoken", path, n_on ? "more than one" : "no");
    if ((rc = get_bool(root, path, "include_prompt", 1, &include_prompt, err)))
        return rc;
    if (!include_prompt)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s: include_prompt false (pooling without the prompt's tokens) is not supported",
                                path);
    return 0;
}

static json_t *load_json(const char *dir, const char *name, char *path, size_t path_cap, int optional,
                         int *rc, engine_error *err) {
    snprintf(path, path_cap, "%s/%s", dir, name);
    json_error_t jerr;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) {
            *rc = 0;
            return NULL;
        }
        *rc = engine_error_set(err, ENGINE_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (!root)
        *rc = engine_error_set(err, ENGINE_ECONFIG, "%s: invalid JSON at line %d: %s", path, jerr.line,
                               jerr.text);
    else
        *rc = 0;
    return root;
}

/* modules.json: a Transformer, at most one Pooling module (its
 * <path>/config.json) and Normalize; any other module would change the
 * vectors, so it is refused. Without the file: mean pooling, normalised. */
static int parse_modules(const char *dir, model_config *cfg, engine_error *err) {
    char path[4096];
    int rc;
    cfg->pooling = ENGINE_POOL_MEAN;
    cfg->normalize = 1;
    json_t *mods = load_json(dir, "modules.json", path, sizeof path, 1, &rc, err);
    if (!mods)
        return rc;
    if (!json_is_array(mods)) {
        json_decref(mods);
        return engine_error_set(err, ENGINE_ECONFIG, "%s: not a JSON array", path);
    }
    cfg->normalize = 0;
    int n_pooling = 0;
    size_t i;
    json_t *m;
    json_array_foreach(mods, i, m) {
        const char *type = json_string_value(json_object_get(m, "type"));
        const char *sub = json_string_value(json_object_get(m, "path"));
        const char *kind = type ? strrchr(type, '.') : NULL;
        kind = kind ? kind + 1 : type;
        if (!kind) {
            rc = engine_error_set(err, ENGINE_ECONFIG, "%s: module %zu has no 'type'", path, i);
        } else if (strcmp(kind, "Normalize") == 0) {
            cfg->normalize = 1;
        } else if (strcmp(kind, "Pooling") == 0) {
            if (!sub || strstr(sub, "..") || sub[0] == '/' || strlen(sub) > 200 || n_pooling++) {
                rc = engine_error_set(err, ENGINE_ECONFIG,
                                      "%s: the Pooling module needs one relative 'path' inside the model "
                                      "directory (and there may be one Pooling module)", path);
            } else {
                char name[256], pc_path[4096];
                snprintf(name, sizeof name, "%s/config.json", sub);
                json_t *pc = load_json(dir, name, pc_path, sizeof pc_path, 0, &rc, err);
                if (pc)
                    rc = parse_pooling(pc, pc_path, cfg, err);
                json_decref(pc);
            }
        } else if (strcmp(kind, "Transformer") != 0) {
            rc = engine_error_set(err, ENGINE_EUNSUPPORTED,
                                  "%s: module '%.100s' is not supported (Transformer, Pooling, Normalize)", path,
                                  type);
        }
        if (rc)
            break;
    }
    json_decref(mods);
    return rc;
}

int model_config_load(const char *dir, model_config *cfg, engine_error *err) {
    memset(cfg, 0, sizeof *cfg);
    cfg->do_lower_case = 1;
    cfg->strip_accents = -1;
    cfg->tokenize_chinese_chars = 1;
    char path[4096];
    int rc;
    json_t *root = load_json(dir, "config.json", path, sizeof path, 0, &rc, err);
    if (!root)
        return rc;
    rc = parse_model_config(root, path, cfg, err);
    json_decref(root);
    if (rc)
        return rc;
    /* 512 (the FastAPI service's truncation) unless tokenizer_config.json's
     * model_max_length or sentence_bert_config.json's max_seq_length says
     * otherwise; never past the position table. */
    const int limit = model_config_position_limit(cfg);
    cfg->max_length = limit < 512 ? limit : 512;
    static const struct {
        const char *name;
        int (*parse)(const json_t *, const char *, model_config *, engine_error *);
    } optional[] = {{"tokenizer_config.json", parse_tokenizer_config},
                    {"sentence_bert_config.json", parse_sentence_bert_config},
                    {"config_sentence_transformers.json", parse_st_prompts}};
    for (size_t i = 0; i < sizeof optional / sizeof *optional; i++) {
        root = load_json(dir, optional[i].name, path, sizeof path, 1, &rc, err);
        if (rc)
            return rc;
        if (root) {
            rc = optional[i].parse(root, path, cfg, err);
            json_decref(root);
            if (rc)
                return rc;
        }
    }
    return parse_modules(dir, cfg, err);
}

void model_config_fini(model_config *cfg) {
    for (int i = 0; i < cfg->n_prompts; i++) {
        free(cfg->prompt_names[i]);
        free(cfg->prompts[i]);
    }
    free(cfg->prompt_names);
    free(cfg->prompts);
    free(cfg->default_prompt_name);
    cfg->prompt_names = cfg->prompts = NULL;
    cfg->default_prompt_name = NULL;
    cfg->n_prompts = 0;
    if (cfg->labels) {
        for (int i = 0; i < cfg->n_labels; i++)
            free(cfg->labels[i]);
        free(cfg->labels);
    }
    cfg->labels = NULL;
    cfg->n_labels = 0;
}
