/*
 * config_file.c - reads the YAML configuration file (libyaml's document API).
 *
 * The file is one mapping of sections, each a mapping of settings whose
 * values are scalars, except a list (a sequence of scalars, or one scalar
 * with commas) and tiers (a mapping of tier names to mappings):
 *
 *     server:
 *       port: 8080
 *       read_timeout: 5s
 *     ratelimit:
 *       trusted_proxies: [10.0.0.0/8, 192.168.1.5]
 *       tiers:
 *         pro: {requests_per_minute: 1000, burst: 200}
 *
 * Lists and tiers are turned into their one-line text ("10.0.0.0/8,
 * 192.168.1.5", "pro=1000/200") and given to the setting's parser, so the
 * file, the environment and the flags share one set of rules.
 *
 * Anything else is an error naming the file, the line (of the key) and the key: an
 * unknown section or key (with the closest real one suggested), a key or
 * section given twice, a sequence or mapping where a value belongs, a value
 * with no text, a second YAML document. A section with no settings (`server:`) and an
 * empty file are fine. libyaml does not interpret scalars here: "on", "8000"
 * and "30s" all arrive as text and get the setting's own parser, so YAML
 * 1.1's guesses (`no` as false, `010` as octal) never apply.
 * The file is trusted operator input, read whole; nothing is printed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "core_int.h"

typedef struct file_ctx {
    const char *path;
    yaml_document_t *doc;
    core_config *c;
    core_origins *origins;
    size_t seen_line[CORE_MAX_SETTINGS]; /* line each setting was set at, 0 if not yet */
    size_t section_line[16];             /* the same for sections */
    core_error *err;
} file_ctx;

static size_t line_of(const yaml_node_t *node) { return node->start_mark.line + 1; }

static const char *shape_name(const yaml_node_t *node) {
    switch (node->type) {
    case YAML_SCALAR_NODE:
        return "a single value";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

/* An empty plain scalar, ~, null, or anything tagged !!null. */
static int is_null(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE)
        return 0;
    if (node->tag && strcmp((const char *)node->tag, YAML_NULL_TAG) == 0)
        return 1;
    if (node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *v = (const char *)node->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

/* The text of a mapping key, which must be a plain name. */
static const char *key_text(file_ctx *ctx, const yaml_node_t *key) {
    if (key->type != YAML_SCALAR_NODE || memchr(key->data.scalar.value, 0, key->data.scalar.length)) {
        core_set_error(ctx->err, "%s:%zu: a key must be a name, found %s", ctx->path, line_of(key),
                       shape_name(key));
        return NULL;
    }
    return (const char *)key->data.scalar.value;
}

/* Appends text to a growing buffer; -1 when out of memory. */
static int append(char **buf, size_t *len, size_t *cap, const char *text, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t want = (*cap ? *cap * 2 : 256);
        while (want < *len + n + 1)
            want *= 2;
        char *grown = realloc(*buf, want);
        if (!grown)
            return -1;
        *buf = grown;
        *cap = want;
    }
    memcpy(*buf + *len, text, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/* A sequence of scalars as "a,b,c" (malloc'd into *out). */
static int list_text(file_ctx *ctx, const core_setting *s, const yaml_node_t *seq, char **out) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(ctx->doc, *it);
        if (!item || item->type != YAML_SCALAR_NODE || is_null(item)) {
            core_set_error(ctx->err, "%s:%zu: %s: each item must be a single value, found %s", ctx->path,
                           item ? line_of(item) : 0, s->name, item ? shape_name(item) : "nothing");
            free(buf);
            return -1;
        }
        const char *v = (const char *)item->data.scalar.value;
        size_t n = item->data.scalar.length;
        if (memchr(v, ',', n)) {
            core_set_error(ctx->err, "%s:%zu: %s: an item of a sequence must not contain a comma", ctx->path,
                           line_of(item), s->name);
            free(buf);
            return -1;
        }
        if ((len && append(&buf, &len, &cap, ",", 1) < 0) || append(&buf, &len, &cap, v, n) < 0) {
            core_set_error(ctx->err, "out of memory");
            free(buf);
            return -1;
        }
    }
    if (!buf && append(&buf, &len, &cap, "", 0) < 0) {
        core_set_error(ctx->err, "out of memory");
        return -1;
    }
    *out = buf;
    return 0;
}

/* A scalar that is a whole number (digits only), for a tier's rates. */
static const char *rate_text(const yaml_node_t *v) {
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.length == 0 || v->data.scalar.length > 12)
        return NULL;
    const char *p = (const char *)v->data.scalar.value;
    return strspn(p, "0123456789") == v->data.scalar.length ? p : NULL;
}

/* A mapping of tiers as "name=rpm/burst,..." (malloc'd into *out). */
static int tiers_text(file_ctx *ctx, const core_setting *s, const yaml_node_t *map, char **out) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(ctx->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(ctx->doc, pair->value);
        const char *name = k ? key_text(ctx, k) : NULL;
        if (!name || !v) {
            free(buf);
            return -1;
        }
        if (strpbrk(name, ",=/") || !*name) {
            core_set_error(ctx->err, "%s:%zu: %s: '%.64s' is not a tier name (1 to 64 of A-Z a-z 0-9 . _ -)",
                           ctx->path, line_of(k), s->name, name);
            free(buf);
            return -1;
        }
        if (v->type != YAML_MAPPING_NODE) {
            core_set_error(ctx->err,
                           "%s:%zu: %s.%.64s: expected a mapping {requests_per_minute: N, burst: N}, found %s",
                           ctx->path, line_of(k), s->name, name, shape_name(v));
            free(buf);
            return -1;
        }
        const char *rpm = NULL, *burst = NULL;
        size_t rpm_line = 0, burst_line = 0;
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
            yaml_node_t *fk = yaml_document_get_node(ctx->doc, q->key);
            yaml_node_t *fv = yaml_document_get_node(ctx->doc, q->value);
            const char *field = fk ? key_text(ctx, fk) : NULL;
            if (!field || !fv) {
                free(buf);
                return -1;
            }
            const char **slot = strcmp(field, "requests_per_minute") == 0 ? &rpm
                                : strcmp(field, "burst") == 0            ? &burst
                                                                         : NULL;
            size_t *slot_line = slot == &rpm ? &rpm_line : &burst_line;
            if (!slot) {
                core_set_error(ctx->err, "%s:%zu: %s.%.64s: unknown key '%.64s' (a tier has requests_per_minute and burst)",
                               ctx->path, line_of(fk), s->name, name, field);
                free(buf);
                return -1;
            }
            if (*slot) {
                core_set_error(ctx->err, "%s:%zu: %s.%.64s.%s is set twice (also at line %zu)", ctx->path,
                               line_of(fk), s->name, name, field, *slot_line);
                free(buf);
                return -1;
            }
            *slot = rate_text(fv);
            *slot_line = line_of(fk);
            if (!*slot) {
                core_set_error(ctx->err, "%s:%zu: %s.%.64s.%s: expected a whole number in 1..%d", ctx->path,
                               line_of(fk), s->name, name, field, CORE_TIER_RATE_MAX);
                free(buf);
                return -1;
            }
        }
        if (!rpm) {
            core_set_error(ctx->err, "%s:%zu: %s.%.64s: requests_per_minute is missing", ctx->path, line_of(k),
                           s->name, name);
            free(buf);
            return -1;
        }
        if ((len && append(&buf, &len, &cap, ",", 1) < 0) || append(&buf, &len, &cap, name, strlen(name)) < 0 ||
            append(&buf, &len, &cap, "=", 1) < 0 || append(&buf, &len, &cap, rpm, strlen(rpm)) < 0 ||
            (burst && (append(&buf, &len, &cap, "/", 1) < 0 || append(&buf, &len, &cap, burst, strlen(burst)) < 0))) {
            core_set_error(ctx->err, "out of memory");
            free(buf);
            return -1;
        }
    }
    if (!buf && append(&buf, &len, &cap, "", 0) < 0) {
        core_set_error(ctx->err, "out of memory");
        return -1;
    }
    *out = buf;
    return 0;
}

static int read_setting(file_ctx *ctx, const char *section, const yaml_node_t *key_node,
                        const yaml_node_t *value) {
    const char *key = key_text(ctx, key_node);
    if (!key)
        return -1;
    const core_setting *s = core_setting_by_name(section, key);
    if (!s) {
        const core_setting *hint = core_suggest_key(section, key);
        if (hint)
            core_set_error(ctx->err, "%s:%zu: unknown key %s.%.100s (did you mean %s?)", ctx->path,
                           line_of(key_node), section, key, hint->name);
        else
            core_set_error(ctx->err, "%s:%zu: unknown key %s.%.100s (see docs/configuration.md)", ctx->path,
                           line_of(key_node), section, key);
        return -1;
    }
    size_t i = (size_t)(s - core_settings);
    if (ctx->seen_line[i]) {
        core_set_error(ctx->err, "%s:%zu: %s is set twice (also at line %zu)", ctx->path, line_of(key_node),
                       s->name, ctx->seen_line[i]);
        return -1;
    }
    ctx->seen_line[i] = line_of(key_node);
    char *composed = NULL; /* a list's or tiers' one-line text */
    if (s->type == SETTING_LIST && value->type == YAML_SEQUENCE_NODE) {
        if (list_text(ctx, s, value, &composed) < 0)
            return -1;
    } else if (s->type == SETTING_TIERS && value->type == YAML_MAPPING_NODE) {
        if (tiers_text(ctx, s, value, &composed) < 0)
            return -1;
    } else if (value->type != YAML_SCALAR_NODE) {
        core_set_error(ctx->err, "%s:%zu: %s: expected a single value, found %s", ctx->path,
                       line_of(key_node), s->name, shape_name(value));
        return -1;
    }
    if (!composed && is_null(value)) {
        core_set_error(ctx->err, "%s:%zu: %s has no value (delete the line to keep the default)", ctx->path,
                       line_of(key_node), s->name);
        return -1;
    }
    char why[400];
    const char *text = composed ? composed : (const char *)value->data.scalar.value;
    size_t text_len = composed ? strlen(composed) : value->data.scalar.length;
    int rc = core_setting_apply(s, ctx->c, text, text_len, why, sizeof why);
    free(composed);
    if (rc < 0) {
        core_set_error(ctx->err, "%s:%zu: %s: %s", ctx->path, line_of(key_node), s->name, why);
        return -1;
    }
    if (ctx->origins)
        snprintf(ctx->origins->origin[i], sizeof ctx->origins->origin[i], "%.140s:%zu", ctx->path,
                 line_of(key_node));
    return 0;
}

static int read_section(file_ctx *ctx, const yaml_node_t *key_node, const yaml_node_t *value) {
    const char *name = key_text(ctx, key_node);
    if (!name)
        return -1;
    const char *section = NULL;
    size_t section_index = 0;
    for (size_t i = 0; core_sections[i]; i++)
        if (strcmp(core_sections[i], name) == 0)
            section = core_sections[i], section_index = i;
    if (!section) {
        /* A setting's key at the top level, or a misspelt section. */
        const core_setting *hint = core_suggest_key("", name);
        const char *closest = core_suggest_section(name);
        if (hint && strcmp(hint->key, name) == 0)
            core_set_error(ctx->err,
                           "%s:%zu: unknown section '%.100s': settings go inside a section (did you mean %s?)",
                           ctx->path, line_of(key_node), name, hint->name);
        else if (closest)
            core_set_error(ctx->err, "%s:%zu: unknown section '%.100s' (did you mean %s?)", ctx->path,
                           line_of(key_node), name, closest);
        else
            core_set_error(ctx->err,
                           "%s:%zu: unknown section '%.100s' (sections: server, models, batching, limits, "
                           "auth, ratelimit, cache, logging)",
                           ctx->path, line_of(key_node), name);
        return -1;
    }
    size_t *seen = &ctx->section_line[section_index];
    if (*seen) {
        core_set_error(ctx->err, "%s:%zu: section %s appears twice (also at line %zu)", ctx->path,
                       line_of(key_node), section, *seen);
        return -1;
    }
    *seen = line_of(key_node);
    if (is_null(value))
        return 0; /* "server:" with nothing under it */
    if (value->type != YAML_MAPPING_NODE) {
        core_set_error(ctx->err, "%s:%zu: %s: expected a mapping of settings (key: value lines), found %s",
                       ctx->path, line_of(key_node), section, shape_name(value));
        return -1;
    }
    for (yaml_node_pair_t *pair = value->data.mapping.pairs.start; pair < value->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = yaml_document_get_node(ctx->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(ctx->doc, pair->value);
        if (!k || !v || read_setting(ctx, section, k, v) < 0)
            return -1;
    }
    return 0;
}

static void parse_error(file_ctx *ctx, const yaml_parser_t *parser) {
    const char *problem = parser->problem ? parser->problem : "cannot parse";
    if (parser->error == YAML_READER_ERROR)
        core_set_error(ctx->err, "%s: invalid YAML: %s at byte %zu", ctx->path, problem, parser->problem_offset);
    else if (parser->context)
        core_set_error(ctx->err, "%s:%zu: invalid YAML: %s (%s started at line %zu)", ctx->path,
                       parser->problem_mark.line + 1, problem, parser->context, parser->context_mark.line + 1);
    else
        core_set_error(ctx->err, "%s:%zu: invalid YAML: %s", ctx->path, parser->problem_mark.line + 1, problem);
}

static int read_document(file_ctx *ctx, yaml_parser_t *parser) {
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) {
        parse_error(ctx, parser);
        return -1;
    }
    ctx->doc = &doc;
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !is_null(root)) {
        if (root->type != YAML_MAPPING_NODE) {
            core_set_error(ctx->err, "%s:%zu: expected a mapping of sections (server:, models:, ...), found %s",
                           ctx->path, line_of(root), shape_name(root));
            rc = -1;
        }
        for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
             rc == 0 && pair < root->data.mapping.pairs.top; pair++) {
            yaml_node_t *k = yaml_document_get_node(&doc, pair->key);
            yaml_node_t *v = yaml_document_get_node(&doc, pair->value);
            if (!k || !v || read_section(ctx, k, v) < 0)
                rc = -1;
        }
    }
    if (rc == 0) {
        /* Only one document: the next load must find the end of the stream. */
        yaml_document_t next;
        if (!yaml_parser_load(parser, &next)) {
            parse_error(ctx, parser);
            rc = -1;
        } else {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra) {
                core_set_error(ctx->err, "%s:%zu: a second YAML document; the configuration is one document",
                               ctx->path, line_of(extra));
                rc = -1;
            }
            yaml_document_delete(&next);
        }
    }
    yaml_document_delete(&doc);
    ctx->doc = NULL;
    return rc;
}

int core_config_file_apply(core_config *c, const char *path, const char *via, core_origins *origins,
                           core_error *err) {
    char from[64] = "";
    if (via)
        snprintf(from, sizeof from, " (from %s)", via);
    if (strlen(path) >= sizeof c->config_file) {
        core_set_error(err, "config file name%s is longer than %zu bytes", from, sizeof c->config_file - 1);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        core_set_error(err, "config file %s%s: cannot open: %s", path, from, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        core_set_error(err, "config file %s%s: is a directory", path, from);
        return -1;
    }
    /* Work on copies (of the origins too), so that a failure changes nothing. */
    file_ctx *ctx = calloc(1, sizeof *ctx);
    core_config *tmp = malloc(sizeof *tmp);
    core_origins *scratch = origins ? malloc(sizeof *scratch) : NULL;
    yaml_parser_t parser;
    int rc = -1, parser_ready = 0;
    if (!ctx || !tmp || (origins && !scratch) || !(parser_ready = yaml_parser_initialize(&parser))) {
        core_set_error(err, "out of memory");
        goto done;
    }
    *tmp = *c;
    if (scratch)
        *scratch = *origins;
    *ctx = (file_ctx){.path = path, .c = tmp, .origins = scratch, .err = err};
    yaml_parser_set_input_file(&parser, f);
    rc = read_document(ctx, &parser);
    if (rc == 0) {
        snprintf(tmp->config_file, sizeof tmp->config_file, "%s", path);
        *c = *tmp;
        if (origins)
            *origins = *scratch;
    }
done:
    if (parser_ready)
        yaml_parser_delete(&parser);
    fclose(f);
    free(scratch);
    free(tmp);
    free(ctx);
    return rc;
}

int core_config_load_file(core_config *c, const char *path, core_error *err) {
    if (!path) {
        core_set_error(err, "no config file name");
        return -1;
    }
    return core_config_file_apply(c, path, NULL, NULL, err);
}
