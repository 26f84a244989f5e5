/*
 * config.c - the gateway's configuration file (gateway.config): providers,
 * models, routes, retries, fallbacks, breakers, cache, guardrails, limits.
 * docs/gateway.md is the reference; an example:
 *
 *     providers:
 *       - name: openai
 *         kind: openai
 *         base_url: https://api.openai.com/v1
 *         api_key_env: OPENAI_API_KEY
 *     models:
 *       - {name: gpt-4o-mini, provider: openai, input_price: 0.15, output_price: 0.60,
 *          context_window: 128000}
 *       - {name: gpt-4o, provider: openai, input_price: 2.50, output_price: 10.00,
 *          context_window: 128000, fallbacks: [gpt-4o-mini]}
 *     routes:
 *       - {name: auto, simple: gpt-4o-mini, complex: gpt-4o}
 *
 * Design:
 *  - libyaml loads the document; it becomes a jansson tree of strings (no
 *    YAML 1.1 guessing: "no" stays "no"), which the readers below walk with
 *    the key path in every message ("models[1].input_price: ...").
 *  - Unknown keys are errors (a typo must not silently drop a setting).
 *  - API keys come only from an environment variable or a file, never from
 *    the YAML itself (a key written there is refused), and are never put in
 *    a message.
 *  - A route without rules gets the service's rule: a prompt that asks to
 *    analyze, explain in detail, compare or evaluate, or that is at least
 *    500 characters long, goes to `complex`; everything else to `simple`.
 *
 * Read once at start, on the main thread.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core.h"
#include "gateway_int.h"

/* The service's words for a complex task, and its length threshold. */
static const char *const service_keywords[] = {"analyze", "explain in detail", "compare", "evaluate"};
#define SERVICE_LONG_PROMPT_CHARS 500
#define SERVICE_DEFAULT_REPLY "I'm unable to process your request at the moment."

typedef struct reader {
    char *why;
    size_t cap;
    int failed;
} reader;

static int fail(reader *r, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(reader *r, const char *path, const char *fmt, ...) {
    if (!r->failed) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(r->why, r->cap, "%s: %s", path, msg);
        r->failed = 1;
    }
    return -1;
}

/* ---- YAML to a tree of strings ------------------------------------------------ */

static json_t *node_to_json(yaml_document_t *doc, yaml_node_t *node, int depth) {
    if (!node || depth > 32)
        return NULL;
    switch (node->type) {
    case YAML_SCALAR_NODE: {
        const char *v = (const char *)node->data.scalar.value;
        size_t n = node->data.scalar.length;
        if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
            (n == 0 || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL")))
            return json_null();
        return json_stringn(v, n);
    }
    case YAML_SEQUENCE_NODE: {
        json_t *a = json_array();
        for (yaml_node_item_t *it = node->data.sequence.items.start; a && it < node->data.sequence.items.top; it++) {
            json_t *v = node_to_json(doc, yaml_document_get_node(doc, *it), depth + 1);
            if (!v || json_array_append_new(a, v)) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case YAML_MAPPING_NODE: {
        json_t *o = json_object();
        for (yaml_node_pair_t *p = node->data.mapping.pairs.start; o && p < node->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            json_t *v = node_to_json(doc, yaml_document_get_node(doc, p->value), depth + 1);
            if (!v || !k || k->type != YAML_SCALAR_NODE ||
                json_object_get(o, (const char *)k->data.scalar.value) ||
                json_object_set_new(o, (const char *)k->data.scalar.value, v)) {
                json_decref(v);
                json_decref(o);
                return NULL; /* a key given twice or not a name: reported by the caller */
            }
        }
        return o;
    }
    default:
        return NULL;
    }
}

static json_t *load_yaml(const char *path, reader *r) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(r, path, "cannot open: %s", strerror(errno));
        return NULL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    json_t *root = NULL;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        fail(r, path, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        fail(r, path, "line %zu: %s", parser.problem_mark.line + 1, parser.problem ? parser.problem : "bad YAML");
    } else {
        yaml_node_t *top = yaml_document_get_root_node(&doc);
        root = top ? node_to_json(&doc, top, 0) : json_object();
        if (!root)
            fail(r, path, "not a mapping of settings (a key given twice, or a key that is not a name?)");
        else if (!json_is_object(root)) {
            fail(r, path, "the file must be a mapping of settings");
            json_decref(root);
            root = NULL;
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return root;
}

/* ---- typed readers ------------------------------------------------------------------ */

/* Fails on any key of obj not in the NULL-terminated list. */
static int only_keys(reader *r, const char *path, json_t *obj, const char *const *keys) {
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        size_t i = 0;
        while (keys[i] && strcmp(keys[i], k) != 0)
            i++;
        if (!keys[i])
            return fail(r, path, "unknown key '%s'", k);
    }
    return 0;
}

static json_t *get_object(reader *r, const char *path, json_t *parent, const char *key) {
    json_t *v = json_object_get(parent, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_object(v)) {
        fail(r, path, "'%s' must be a mapping", key);
        return NULL;
    }
    return v;
}

static const char *get_string(reader *r, const char *path, json_t *obj, const char *key, const char *dflt) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return dflt;
    if (!json_is_string(v)) {
        fail(r, path, "'%s' must be a single value", key);
        return dflt;
    }
    return json_string_value(v);
}

static double get_number(reader *r, const char *path, json_t *obj, const char *key, double dflt, double lo,
                         double hi) {
    const char *s = get_string(r, path, obj, key, NULL);
    if (!s)
        return dflt;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        fail(r, path, "'%s' must be a number from %g to %g (got '%.60s')", key, lo, hi, s);
        return dflt;
    }
    return v;
}

static long get_long(reader *r, const char *path, json_t *obj, const char *key, long dflt, long lo, long hi) {
    const char *s = get_string(r, path, obj, key, NULL);
    if (!s)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fail(r, path, "'%s' must be a whole number from %ld to %ld (got '%.60s')", key, lo, hi, s);
        return dflt;
    }
    return v;
}

static uint64_t get_duration(reader *r, const char *path, json_t *obj, const char *key, uint64_t dflt) {
    const char *s = get_string(r, path, obj, key, NULL);
    if (!s)
        return dflt;
    int64_t us;
    size_t n = strlen(s);
    int has_unit = n > 0 && ((s[n - 1] >= 'a' && s[n - 1] <= 'z') || (s[n - 1] >= 'A' && s[n - 1] <= 'Z'));
    if (!has_unit || core_parse_duration_us(s, &us) != 0 || us <= 0) {
        fail(r, path, "'%s' must be a duration with its unit, such as 500ms, 10s or 2m (got '%.60s')", key, s);
        return dflt;
    }
    return (uint64_t)us;
}

static int get_bool(reader *r, const char *path, json_t *obj, const char *key, int dflt) {
    const char *s = get_string(r, path, obj, key, NULL);
    if (!s)
        return dflt;
    int v;
    if (core_parse_bool(s, &v) != 0) {
        fail(r, path, "'%s' must be true or false (got '%.60s')", key, s);
        return dflt;
    }
    return v;
}

static json_t *get_list(reader *r, const char *path, json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_array(v)) {
        fail(r, path, "'%s' must be a sequence", key);
        return NULL;
    }
    return v;
}

static void copy_name(reader *r, const char *path, char *dst, const char *src, const char *what) {
    if (!src || !*src) {
        fail(r, path, "needs a %s", what);
        return;
    }
    if (strlen(src) >= GW_NAME_MAX) {
        fail(r, path, "%s '%.40s...' is longer than %d bytes", what, src, GW_NAME_MAX - 1);
        return;
    }
    strcpy(dst, src);
}

/* ---- sections ---------------------------------------------------------------------- */

static char *read_secret_file(reader *r, const char *path, const char *file) {
    FILE *f = fopen(file, "rb");
    if (!f) {
        fail(r, path, "api_key_file %s: cannot open: %s", file, strerror(errno));
        return NULL;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = 0;
    if (n == 0) {
        fail(r, path, "api_key_file %s is empty", file);
        return NULL;
    }
    return strdup(buf);
}

static void read_provider(reader *r, const char *path, json_t *o, gw_provider *p) {
    static const char *const keys[] = {"name", "kind", "base_url", "api_key_env", "api_key_file",
                                       "connect_timeout", "timeout", "api_key", NULL};
    if (!json_is_object(o)) {
        fail(r, path, "a provider must be a mapping");
        return;
    }
    if (only_keys(r, path, o, keys))
        return;
    if (json_object_get(o, "api_key"))
        fail(r, path, "an API key is never written in the configuration: use api_key_env (an environment "
                      "variable's name) or api_key_file");
    copy_name(r, path, p->name, get_string(r, path, o, "name", NULL), "name");
    const char *kind = get_string(r, path, o, "kind", "openai");
    if (strcmp(kind, "openai") == 0)
        p->kind = GW_KIND_OPENAI;
    else if (strcmp(kind, "anthropic") == 0)
        p->kind = GW_KIND_ANTHROPIC;
    else
        fail(r, path, "kind must be openai or anthropic (got '%.40s')", kind);
    const char *url = get_string(r, path, o, "base_url", NULL);
    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) ||
        strlen(url) >= sizeof p->base_url)
        fail(r, path, "base_url must be an http:// or https:// URL, such as https://api.openai.com/v1");
    else {
        strcpy(p->base_url, url);
        size_t n = strlen(p->base_url);
        while (n > 0 && p->base_url[n - 1] == '/')
            p->base_url[--n] = 0;
    }
    const char *env = get_string(r, path, o, "api_key_env", NULL);
    const char *file = get_string(r, path, o, "api_key_file", NULL);
    if (env && file)
        fail(r, path, "give api_key_env or api_key_file, not both");
    else if (env) {
        const char *v = getenv(env);
        snprintf(p->api_key_source, sizeof p->api_key_source, "environment variable %.120s", env);
        if (!v || !*v)
            fail(r, path, "api_key_env: the environment variable %.120s is not set", env);
        else
            p->api_key = strdup(v);
    } else if (file) {
        snprintf(p->api_key_source, sizeof p->api_key_source, "file %.140s", file);
        p->api_key = read_secret_file(r, path, file);
    }
    p->connect_timeout_us = get_duration(r, path, o, "connect_timeout", 5000000);
    p->timeout_us = get_duration(r, path, o, "timeout", 60000000);
}

/* Index of the model named by s (at path), or fails. */
static size_t model_ref(reader *r, const char *path, const gw_config *c, const char *s) {
    long i = s ? gw_config_model(c, s) : -1;
    if (i < 0) {
        fail(r, path, "no model named '%.80s' (models are listed under models:)", s ? s : "");
        return 0;
    }
    return (size_t)i;
}

static size_t read_model_list(reader *r, const char *path, const gw_config *c, json_t *list, size_t *out,
                              size_t cap) {
    size_t n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        if (n == cap) {
            fail(r, path, "at most %zu models", cap);
            break;
        }
        out[n++] = model_ref(r, path, c, json_string_value(v));
    }
    return n;
}

static void read_model(reader *r, const char *path, json_t *o, gw_config *c, size_t index) {
    static const char *const keys[] = {"name", "provider", "upstream_model", "input_price", "output_price",
                                       "context_window", "fallbacks", NULL};
    gw_model *m = &c->models[index];
    if (!json_is_object(o)) {
        fail(r, path, "a model must be a mapping");
        return;
    }
    if (only_keys(r, path, o, keys))
        return;
    copy_name(r, path, m->name, get_string(r, path, o, "name", NULL), "name");
    copy_name(r, path, m->upstream, get_string(r, path, o, "upstream_model", m->name), "upstream_model");
    const char *prov = get_string(r, path, o, "provider", NULL);
    size_t k = 0;
    while (prov && k < c->n_providers && strcmp(c->providers[k].name, prov) != 0)
        k++;
    if (!prov || k == c->n_providers)
        fail(r, path, "provider '%.80s' is not one of the providers", prov ? prov : "");
    m->provider = k;
    m->input_price = get_number(r, path, o, "input_price", 0, 0, 1e6);
    m->output_price = get_number(r, path, o, "output_price", 0, 0, 1e6);
    m->context_window = get_long(r, path, o, "context_window", 0, 0, 100000000);
}

static void read_rule(reader *r, const char *path, json_t *o, gw_config *c, gw_rule *rule) {
    static const char *const keys[] = {"keywords", "min_chars", "min_input_tokens", "min_max_tokens",
                                       "cheapest_fit", "model", "reason", NULL};
    if (!json_is_object(o) || only_keys(r, path, o, keys)) {
        fail(r, path, "a rule is a mapping with one condition and a model");
        return;
    }
    json_t *kw = get_list(r, path, o, "keywords");
    json_t *fit = get_list(r, path, o, "cheapest_fit");
    const char *mins[] = {"min_chars", "min_input_tokens", "min_max_tokens"};
    const gw_rule_kind min_kinds[] = {GW_RULE_MIN_CHARS, GW_RULE_MIN_TOKENS, GW_RULE_MIN_MAX_TOKENS};
    int n_conditions = (kw != NULL) + (fit != NULL);
    for (int i = 0; i < 3; i++)
        if (json_object_get(o, mins[i])) {
            n_conditions++;
            rule->kind = min_kinds[i];
            rule->n = get_long(r, path, o, mins[i], 0, 0, 100000000);
            snprintf(rule->reason, sizeof rule->reason, "%s %ld", mins[i], rule->n);
        }
    if (n_conditions != 1) {
        fail(r, path, "a rule has exactly one of keywords, min_chars, min_input_tokens, min_max_tokens, "
                      "cheapest_fit");
        return;
    }
    if (kw) {
        rule->kind = GW_RULE_KEYWORDS;
        rule->keywords = calloc(json_array_size(kw) + 1, sizeof *rule->keywords);
        size_t i;
        json_t *v;
        json_array_foreach(kw, i, v) {
            if (!json_is_string(v) || !json_string_length(v)) {
                fail(r, path, "keywords[%zu] must be a word or phrase", i);
                return;
            }
            char *w = rule->keywords ? strdup(json_string_value(v)) : NULL;
            if (!w) {
                fail(r, path, "out of memory");
                return;
            }
            for (char *p = w; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p - 'A' + 'a');
            rule->keywords[rule->n_keywords++] = w;
        }
        snprintf(rule->reason, sizeof rule->reason, "keywords");
    }
    if (fit) {
        rule->kind = GW_RULE_CHEAPEST_FIT;
        rule->n_candidates = read_model_list(r, path, c, fit, rule->candidates, 16);
        snprintf(rule->reason, sizeof rule->reason, "cheapest_fit");
        if (json_object_get(o, "model"))
            fail(r, path, "a cheapest_fit rule picks among its models; it takes no 'model'");
    } else {
        rule->model = model_ref(r, path, c, get_string(r, path, o, "model", NULL));
    }
    const char *reason = get_string(r, path, o, "reason", NULL);
    if (reason)
        snprintf(rule->reason, sizeof rule->reason, "%s", reason);
}

static void service_rules(reader *r, const char *path, gw_route *route, size_t complex) {
    route->rules = calloc(2, sizeof *route->rules);
    char **kw = calloc(sizeof service_keywords / sizeof service_keywords[0], sizeof *kw);
    if (!route->rules || !kw) {
        free(kw);
        fail(r, path, "out of memory");
        return;
    }
    route->n_rules = 2;
    route->rules[0] = (gw_rule){.kind = GW_RULE_KEYWORDS, .keywords = kw, .model = complex, .reason = "complex_task"};
    for (size_t i = 0; i < sizeof service_keywords / sizeof service_keywords[0]; i++)
        if ((kw[i] = strdup(service_keywords[i])))
            route->rules[0].n_keywords++;
    route->rules[1] = (gw_rule){.kind = GW_RULE_MIN_CHARS, .n = SERVICE_LONG_PROMPT_CHARS, .model = complex,
                                .reason = "long_prompt"};
}

static void read_semantic(reader *r, const char *path, json_t *o, gw_semantic *s) {
    static const char *const keys[] = {"model", "threshold", "max_entries", "max_size", "ttl", NULL};
    if (only_keys(r, path, o, keys))
        return;
    copy_name(r, path, s->model, get_string(r, path, o, "model", NULL), "model (a local embedding model)");
    s->threshold = get_number(r, path, o, "threshold", 0.95, 0.5, 1);
    s->max_entries = (size_t)get_long(r, path, o, "max_entries", 10000, 1, 10000000);
    s->max_bytes = 64u << 20;
    const char *size = get_string(r, path, o, "max_size", NULL);
    uint64_t bytes;
    if (size && (core_parse_size_bytes(size, &bytes) != 0 || bytes < 4096 || bytes > (1ull << 36)))
        fail(r, path, "max_size must be a size from 4KiB to 64GiB (got '%.40s')", size);
    else if (size)
        s->max_bytes = (size_t)bytes;
    s->ttl_us = get_duration(r, path, o, "ttl", 3600ull * 1000000u);
}

static void read_route(reader *r, const char *path, json_t *o, gw_config *c, gw_route *route) {
    static const char *const keys[] = {"name", "rules", "default", "simple", "complex", "fallbacks", "cache",
                                       "semantic_cache", NULL};
    if (!json_is_object(o)) {
        fail(r, path, "a route must be a mapping");
        return;
    }
    if (only_keys(r, path, o, keys))
        return;
    copy_name(r, path, route->name, get_string(r, path, o, "name", NULL), "name");
    if (gw_config_model(c, route->name) >= 0)
        fail(r, path, "'%s' is a model's name too; a route needs its own", route->name);
    json_t *rules = get_list(r, path, o, "rules");
    const char *simple = get_string(r, path, o, "simple", NULL), *complex = get_string(r, path, o, "complex", NULL);
    const char *dflt = get_string(r, path, o, "default", NULL);
    if (rules && (simple || complex))
        fail(r, path, "give rules and default, or simple and complex (the service's rule), not both");
    if (rules) {
        route->rules = calloc(json_array_size(rules) + 1, sizeof *route->rules);
        size_t i;
        json_t *v;
        json_array_foreach(rules, i, v) {
            char p[300];
            snprintf(p, sizeof p, "%.270s.rules[%zu]", path, i);
            if (route->rules)
                read_rule(r, p, v, c, &route->rules[route->n_rules++]);
        }
        route->default_model = model_ref(r, path, c, dflt);
    } else {
        if (!simple || !complex || dflt)
            fail(r, path, "a route needs rules and a default, or simple and complex models");
        route->default_model = model_ref(r, path, c, simple);
        if (!r->failed)
            service_rules(r, path, route, model_ref(r, path, c, complex));
    }
    json_t *fb = get_list(r, path, o, "fallbacks");
    if (fb)
        route->n_fallbacks = read_model_list(r, path, c, fb, route->fallbacks, 8);
    json_t *sem = get_object(r, path, o, "semantic_cache");
    if (sem) {
        char p[300];
        snprintf(p, sizeof p, "%.270s.semantic_cache", path);
        read_semantic(r, p, sem, &route->semantic);
    }
    const char *cache = get_string(r, path, o, "cache", "deterministic");
    if (strcmp(cache, "always") == 0)
        route->cache_always = 1;
    else if (strcmp(cache, "deterministic") != 0)
        fail(r, path, "cache must be deterministic (temperature 0 only) or always");
}

static void read_policy(reader *r, const char *path, json_t *o, guard_pii_policy *p) {
    static const char *const keys[] = {"ssn", "card", "email", "phone", NULL};
    if (!o || only_keys(r, path, o, keys))
        return;
    for (int t = 0; t < GUARD_PII_COUNT; t++) {
        const char *s = get_string(r, path, o, guard_pii_type_name((guard_pii_type)t), NULL);
        if (s && guard_pii_action_parse(s, &p->action[t]) != 0)
            fail(r, path, "%s must be off, redact or block (got '%.40s')", guard_pii_type_name((guard_pii_type)t), s);
    }
}

static void read_budget(reader *r, const char *path, json_t *o, gw_budget *b) {
    static const char *const keys[] = {"daily_usd", "monthly_usd", "tokens_per_minute", NULL};
    if (!json_is_object(o)) {
        fail(r, path, "a budget is a mapping of daily_usd, monthly_usd, tokens_per_minute");
        return;
    }
    if (only_keys(r, path, o, keys))
        return;
    b->daily_usd = get_number(r, path, o, "daily_usd", 0, 0, 1e9);
    b->monthly_usd = get_number(r, path, o, "monthly_usd", 0, 0, 1e9);
    b->tokens_per_minute = get_long(r, path, o, "tokens_per_minute", 0, 0, 1000000000);
}

static void read_budgets(reader *r, const char *path, json_t *o, gw_config *c) {
    static const char *const keys[] = {"default", "keys", "reserve_tokens", NULL};
    if (only_keys(r, path, o, keys))
        return;
    c->budgets = 1;
    json_t *d = get_object(r, path, o, "default");
    if (d)
        read_budget(r, path, d, &c->default_budget);
    json_t *k = get_object(r, path, o, "keys");
    if (k) {
        c->key_budgets = calloc(json_object_size(k) + 1, sizeof *c->key_budgets);
        const char *name;
        json_t *v;
        json_object_foreach(k, name, v) {
            if (!c->key_budgets || strlen(name) >= sizeof c->key_budgets[0].key) {
                fail(r, path, "keys: '%.60s' is not an API key's name", name);
                return;
            }
            char p[300];
            snprintf(p, sizeof p, "%.200s.keys.%.64s", path, name);
            strcpy(c->key_budgets[c->n_key_budgets].key, name);
            read_budget(r, p, v, &c->key_budgets[c->n_key_budgets++].budget);
        }
    }
    c->reserve_tokens = get_long(r, path, o, "reserve_tokens", c->reserve_tokens, 1, 10000000);
}

const gw_budget *gw_config_budget(const gw_config *c, const char *name) {
    for (size_t i = 0; name && i < c->n_key_budgets; i++)
        if (strcmp(c->key_budgets[i].key, name) == 0)
            return &c->key_budgets[i].budget;
    return &c->default_budget;
}

long gw_config_model(const gw_config *c, const char *name) {
    for (size_t i = 0; i < c->n_models; i++)
        if (strcmp(c->models[i].name, name) == 0)
            return (long)i;
    return -1;
}

long gw_config_route(const gw_config *c, const char *name) {
    for (size_t i = 0; i < c->n_routes; i++)
        if (strcmp(c->routes[i].name, name) == 0)
            return (long)i;
    return -1;
}

static void defaults(gw_config *c) {
    *c = (gw_config){
        .attempts = 3,
        .min_wait_us = 4000000,
        .max_wait_us = 10000000,
        .multiplier = 1,
        .deadline_us = 120000000,
        .stale_cache = 1,
        .context_fallback = 1,
        .breaker_failures = 5,
        .breaker_ratio = 0.5,
        .breaker_min_requests = 20,
        .breaker_window_us = 60000000,
        .breaker_cooldown_us = 30000000,
        .cache = 1,
        .limits = {.max_messages = 1000, .max_chars = 1000000, .max_tokens = 1000000},
        .max_response_bytes = 16u << 20,
        .reserve_tokens = 4096,
    };
    /* The service filtered social security and card numbers out of answers. */
    c->output_policy.action[GUARD_PII_SSN] = GUARD_PII_BLOCK;
    c->output_policy.action[GUARD_PII_CARD] = GUARD_PII_BLOCK;
}

int gw_config_load(const char *path, gw_config *c, char *why, size_t cap) {
    reader r = {.why = why, .cap = cap};
    defaults(c);
    json_t *root = load_yaml(path, &r);
    if (!root)
        return -1;
    static const char *const keys[] = {"providers", "models", "routes", "retry", "deadline", "fallback", "breaker",
                                       "cache", "guardrails", "limits", "budgets", NULL};
    only_keys(&r, path, root, keys);

    json_t *providers = get_list(&r, path, root, "providers"), *models = get_list(&r, path, root, "models");
    json_t *routes = get_list(&r, path, root, "routes");
    if (!r.failed && (!providers || !json_array_size(providers) || !models || !json_array_size(models)))
        fail(&r, path, "needs at least one provider (providers:) and one model (models:)");
    if (!r.failed) {
        c->providers = calloc(json_array_size(providers), sizeof *c->providers);
        c->models = calloc(json_array_size(models), sizeof *c->models);
        c->routes = calloc(routes ? json_array_size(routes) + 1 : 1, sizeof *c->routes);
        if (!c->providers || !c->models || !c->routes)
            fail(&r, path, "out of memory");
    }
    char p[256];
    size_t i;
    json_t *v;
    if (!r.failed)
        json_array_foreach(providers, i, v) {
            snprintf(p, sizeof p, "%s: providers[%zu]", path, i);
            read_provider(&r, p, v, &c->providers[c->n_providers++]);
            for (size_t k = 0; k + 1 < c->n_providers && !r.failed; k++)
                if (strcmp(c->providers[k].name, c->providers[i].name) == 0)
                    fail(&r, p, "a second provider named '%s'", c->providers[i].name);
        }
    /* Models in two passes: names first, so fallbacks may name later ones. */
    if (!r.failed)
        json_array_foreach(models, i, v) {
            snprintf(p, sizeof p, "%s: models[%zu]", path, i);
            read_model(&r, p, v, c, i);
            if (!r.failed && gw_config_model(c, c->models[i].name) >= 0)
                fail(&r, p, "a second model named '%s'", c->models[i].name);
            c->n_models++;
        }
    if (!r.failed)
        json_array_foreach(models, i, v) {
            snprintf(p, sizeof p, "%s: models[%zu]", path, i);
            json_t *fb = get_list(&r, p, v, "fallbacks");
            if (fb)
                c->models[i].n_fallbacks = read_model_list(&r, p, c, fb, c->models[i].fallbacks, 8);
        }
    if (!r.failed && routes)
        json_array_foreach(routes, i, v) {
            snprintf(p, sizeof p, "%s: routes[%zu]", path, i);
            read_route(&r, p, v, c, &c->routes[c->n_routes++]);
            if (!r.failed && gw_config_route(c, c->routes[i].name) != (long)i)
                fail(&r, p, "a second route named '%s'", c->routes[i].name);
        }

    json_t *o;
    if ((o = get_object(&r, path, root, "retry"))) {
        static const char *const k[] = {"attempts", "min_wait", "max_wait", "multiplier", NULL};
        snprintf(p, sizeof p, "%s: retry", path);
        only_keys(&r, p, o, k);
        c->attempts = (int)get_long(&r, p, o, "attempts", c->attempts, 1, 10);
        c->min_wait_us = get_duration(&r, p, o, "min_wait", c->min_wait_us);
        c->max_wait_us = get_duration(&r, p, o, "max_wait", c->max_wait_us);
        c->multiplier = get_number(&r, p, o, "multiplier", c->multiplier, 0.001, 1000);
        if (c->max_wait_us < c->min_wait_us)
            fail(&r, p, "max_wait is shorter than min_wait");
    }
    snprintf(p, sizeof p, "%s", path);
    c->deadline_us = get_duration(&r, p, root, "deadline", c->deadline_us);
    const char *reply = SERVICE_DEFAULT_REPLY;
    if ((o = get_object(&r, path, root, "fallback"))) {
        static const char *const k[] = {"default_reply", "stale_cache", "context_window", NULL};
        snprintf(p, sizeof p, "%s: fallback", path);
        only_keys(&r, p, o, k);
        json_t *d = json_object_get(o, "default_reply");
        reply = d && json_is_null(d) ? NULL : get_string(&r, p, o, "default_reply", reply);
        c->stale_cache = get_bool(&r, p, o, "stale_cache", c->stale_cache);
        c->context_fallback = get_bool(&r, p, o, "context_window", c->context_fallback);
    }
    if (reply && !(c->default_reply = strdup(reply)))
        fail(&r, path, "out of memory");
    if ((o = get_object(&r, path, root, "breaker"))) {
        static const char *const k[] = {"failures", "failure_ratio", "min_requests", "window", "cooldown", NULL};
        snprintf(p, sizeof p, "%s: breaker", path);
        only_keys(&r, p, o, k);
        c->breaker_failures = (int)get_long(&r, p, o, "failures", c->breaker_failures, 1, 1000000);
        c->breaker_ratio = get_number(&r, p, o, "failure_ratio", c->breaker_ratio, 0, 1);
        c->breaker_min_requests = (int)get_long(&r, p, o, "min_requests", c->breaker_min_requests, 1, 1000000);
        c->breaker_window_us = get_duration(&r, p, o, "window", c->breaker_window_us);
        c->breaker_cooldown_us = get_duration(&r, p, o, "cooldown", c->breaker_cooldown_us);
    }
    if ((o = get_object(&r, path, root, "cache"))) {
        static const char *const k[] = {"enabled", NULL};
        snprintf(p, sizeof p, "%s: cache", path);
        only_keys(&r, p, o, k);
        c->cache = get_bool(&r, p, o, "enabled", c->cache);
    }
    if ((o = get_object(&r, path, root, "guardrails"))) {
        static const char *const k[] = {"input", "output", NULL};
        snprintf(p, sizeof p, "%s: guardrails", path);
        only_keys(&r, p, o, k);
        char q[300];
        snprintf(q, sizeof q, "%s.input", p);
        read_policy(&r, q, get_object(&r, p, o, "input"), &c->input_policy);
        snprintf(q, sizeof q, "%s.output", p);
        read_policy(&r, q, get_object(&r, p, o, "output"), &c->output_policy);
    }
    if ((o = get_object(&r, path, root, "limits"))) {
        static const char *const k[] = {"max_messages", "max_chars", "max_input_tokens", "max_response_size", NULL};
        snprintf(p, sizeof p, "%s: limits", path);
        only_keys(&r, p, o, k);
        c->limits.max_messages = (size_t)get_long(&r, p, o, "max_messages", (long)c->limits.max_messages, 1, 1000000);
        c->limits.max_chars = (size_t)get_long(&r, p, o, "max_chars", (long)c->limits.max_chars, 1, 100000000);
        c->limits.max_tokens = (size_t)get_long(&r, p, o, "max_input_tokens", (long)c->limits.max_tokens, 1, 100000000);
        const char *size = get_string(&r, p, o, "max_response_size", NULL);
        uint64_t bytes;
        if (size && (core_parse_size_bytes(size, &bytes) != 0 || bytes < 1024 || bytes > (1ull << 32)))
            fail(&r, p, "max_response_size must be a size from 1KiB to 4GiB (got '%.40s')", size);
        else if (size)
            c->max_response_bytes = (size_t)bytes;
    }
    if ((o = get_object(&r, path, root, "budgets"))) {
        snprintf(p, sizeof p, "%s: budgets", path);
        read_budgets(&r, p, o, c);
    }
    json_decref(root);
    if (r.failed) {
        gw_config_free(c);
        return -1;
    }
    return 0;
}

void gw_config_free(gw_config *c) {
    for (size_t i = 0; c->providers && i < c->n_providers; i++)
        free(c->providers[i].api_key);
    for (size_t i = 0; c->routes && i < c->n_routes; i++) {
        for (size_t k = 0; c->routes[i].rules && k < c->routes[i].n_rules; k++) {
            for (size_t w = 0; w < c->routes[i].rules[k].n_keywords; w++)
                free(c->routes[i].rules[k].keywords[w]);
            free(c->routes[i].rules[k].keywords);
        }
        free(c->routes[i].rules);
    }
    free(c->key_budgets);
    free(c->providers);
    free(c->models);
    free(c->routes);
    free(c->default_reply);
    memset(c, 0, sizeof *c);
}
