/*
 * wire.c - the OpenAI chat-completions wire format (wire_int.h): the
 * request a client sends, checked the way OpenAI documents it; the body
 * sent upstream; the exact cache's key material; upstream answers and
 * stream chunks read and rewritten; chunks and completions the gateway
 * makes itself; upstream error bodies.
 *
 * - A request is loaded once with jansson and checked field by field;
 *   each refusal names the field as OpenAI's "param" does
 *   ("messages[1].content[0].text") and says what was expected.
 * - Optional fields that OpenAI marks nullable accept null as "not given".
 * - Unknown fields are kept and forwarded untouched.
 * - Serialisation is compact and deterministic (insertion order for
 *   upstream bodies, sorted keys for cache material).
 * Pure functions: no I/O, no globals; any thread.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

/* ---- small helpers ------------------------------------------------------ */

/* Room for a field path ("messages[12].content[3].text") before it is cut
 * to gw_fail.param; wider so that no index width can overflow it. */
#define PARAM_CAP 96

/* Fills fail and returns -1. */
static int fail_set(gw_fail *fail, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_set(gw_fail *fail, int status, const char *param, const char *fmt, ...) {
    fail->status = status;
    snprintf(fail->param, sizeof fail->param, "%s", param);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail->message, sizeof fail->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* The length of the longest valid UTF-8 prefix of s[n] (n when all of it
 * is valid). Strict as jansson is: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (len > n - i)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return n;
}

/* Code points of valid UTF-8 text (its lead bytes). */
static size_t utf8_count(const char *s, size_t n) {
    size_t cps = 0;
    for (size_t i = 0; i < n; i++)
        cps += ((unsigned char)s[i] & 0xC0) != 0x80;
    return cps;
}

/* "a string", "an integer", ... for "must be X, not Y" messages. */
static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

/* A JSON string or NULL when absent or of another type. */
static const char *str_or_null(json_t *v) { return json_is_string(v) ? json_string_value(v) : NULL; }

/* Compact JSON text of v (malloc'd, *len set), NULL when out of memory. */
static char *dump(const json_t *v, size_t flags, size_t *len) {
    char *s = json_dumps(v, JSON_COMPACT | flags);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* ---- requests ----------------------------------------------------------- */

size_t gw_estimate_tokens(const char *text, size_t len) {
    size_t words = 0;
    int in_word = 0;
    for (size_t i = 0; i < len; i++) {
        int space = isspace((unsigned char)text[i]);
        words += !space && !in_word;
        in_word = !space;
    }
    size_t by_bytes = len / 4 + (len % 4 != 0);
    return by_bytes > words ? by_bytes : words;
}

/* The message roles OpenAI accepts. */
static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", "function"};

/* What the message loop gathers. */
typedef struct text_tally {
    size_t chars, tokens;
} text_tally;

static void tally_text(text_tally *t, json_t *s) {
    const char *text = json_string_value(s);
    size_t len = json_string_length(s);
    t->chars += utf8_count(text, len);
    t->tokens += gw_estimate_tokens(text, len);
}

/* Checks messages[i].content (present or not) and counts its text. */
static int check_content(json_t *msg, size_t i, const char *role, text_tally *t, gw_fail *fail) {
    char param[PARAM_CAP];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    json_t *content = json_object_get(msg, "content");
    if (!content || json_is_null(content)) {
        int is_assistant = strcmp(role, "assistant") == 0;
        json_t *calls = json_object_get(msg, "tool_calls"), *fcall = json_object_get(msg, "function_call");
        if (is_assistant && ((calls && !json_is_null(calls)) || (fcall && !json_is_null(fcall))))
            return 0;
        return fail_set(fail, GATEWAY_EINVAL, param,
                        "%s is %s; only an assistant message with tool_calls or function_call may leave it out", param,
                        content ? "null" : "missing");
    }
    if (json_is_string(content)) {
        tally_text(t, content);
        return 0;
    }
    if (!json_is_array(content))
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must be a string or an array of content parts, not %s", param,
                        json_kind(content));
    if (json_array_size(content) == 0)
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must not be an empty array", param);
    size_t k;
    json_t *part;
    json_array_foreach(content, k, part) {
        char at[PARAM_CAP];
        snprintf(at, sizeof at, "messages[%zu].content[%zu]", i, k);
        if (!json_is_object(part))
            return fail_set(fail, GATEWAY_EINVAL, at,
                            "%s must be an object such as {\"type\": \"text\", \"text\": \"...\"}, not %s", at,
                            json_kind(part));
        const char *type = str_or_null(json_object_get(part, "type"));
        if (!type) {
            snprintf(at, sizeof at, "messages[%zu].content[%zu].type", i, k);
            return fail_set(fail, GATEWAY_EINVAL, at, "%s must be a string such as \"text\" or \"image_url\"", at);
        }
        if (strcmp(type, "text") != 0)
            continue; /* images, audio, files: forwarded, no text to count */
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text)) {
            snprintf(at, sizeof at, "messages[%zu].content[%zu].text", i, k);
            return fail_set(fail, GATEWAY_EINVAL, at, "%s must be a string, not %s", at,
                            text ? json_kind(text) : "missing");
        }
        tally_text(t, text);
    }
    return 0;
}

/* Checks messages[i] and counts its text; *role_out is its role. */
static int check_message(json_t *msg, size_t i, text_tally *t, const char **role_out, gw_fail *fail) {
    char param[PARAM_CAP];
    snprintf(param, sizeof param, "messages[%zu]", i);
    if (!json_is_object(msg))
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must be an object with a role and content, not %s", param,
                        json_kind(msg));
    snprintf(param, sizeof param, "messages[%zu].role", i);
    json_t *rv = json_object_get(msg, "role");
    const char *role = str_or_null(rv);
    if (!role)
        return fail_set(fail, GATEWAY_EINVAL, param,
                        "%s must be one of system, developer, user, assistant, tool or function (it is %s)", param,
                        rv ? json_kind(rv) : "missing");
    size_t r = 0;
    while (r < sizeof roles / sizeof *roles && strcmp(role, roles[r]) != 0)
        r++;
    if (r == sizeof roles / sizeof *roles)
        return fail_set(fail, GATEWAY_EINVAL, param,
                        "%s must be one of system, developer, user, assistant, tool or function, not \"%.40s\"", param,
                        role);
    *role_out = roles[r];
    if (check_content(msg, i, role, t, fail) < 0)
        return -1;
    json_t *name = json_object_get(msg, "name");
    int is_function = strcmp(role, "function") == 0;
    if ((name && !json_is_string(name)) || (!name && is_function)) {
        snprintf(param, sizeof param, "messages[%zu].name", i);
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must be a string%s", param,
                        is_function ? " (a function message names its function)" : "");
    }
    json_t *id = json_object_get(msg, "tool_call_id");
    int is_tool = strcmp(role, "tool") == 0;
    if ((id && !json_is_string(id)) || (!id && is_tool)) {
        snprintf(param, sizeof param, "messages[%zu].tool_call_id", i);
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must be a string%s", param,
                        is_tool ? " (a tool message names the tool call it answers)" : "");
    }
    json_t *calls = json_object_get(msg, "tool_calls");
    if (calls && !json_is_null(calls) && !json_is_array(calls)) {
        snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
        return fail_set(fail, GATEWAY_EINVAL, param, "%s must be an array, not %s", param, json_kind(calls));
    }
    return 0;
}

/* The checked top-level fields and what each must be (null always
 * accepted: OpenAI marks them nullable). */
typedef enum field_kind { F_BOOL, F_NUMBER, F_INTEGER, F_STRING, F_OBJECT, F_ARRAY, F_STRING_OR_OBJECT } field_kind;
typedef struct field_rule {
    const char *name;
    field_kind kind;
    double min, max; /* F_NUMBER, F_INTEGER */
} field_rule;

static const field_rule field_rules[] = {
    {"stream", F_BOOL, 0, 0},
    {"stream_options", F_OBJECT, 0, 0},
    {"temperature", F_NUMBER, 0, 2},
    {"top_p", F_NUMBER, 0, 1},
    {"n", F_INTEGER, 1, HUGE_VAL},
    {"max_tokens", F_INTEGER, 1, HUGE_VAL},
    {"max_completion_tokens", F_INTEGER, 1, HUGE_VAL},
    {"seed", F_INTEGER, -HUGE_VAL, HUGE_VAL},
    {"presence_penalty", F_NUMBER, -2, 2},
    {"frequency_penalty", F_NUMBER, -2, 2},
    {"logprobs", F_BOOL, 0, 0},
    {"top_logprobs", F_INTEGER, 0, 20},
    {"logit_bias", F_OBJECT, 0, 0},
    {"tools", F_ARRAY, 0, 0},
    {"tool_choice", F_STRING_OR_OBJECT, 0, 0},
    {"parallel_tool_calls", F_BOOL, 0, 0},
    {"response_format", F_OBJECT, 0, 0},
    {"user", F_STRING, 0, 0},
    {"metadata", F_OBJECT, 0, 0},
};

static int kind_is(const json_t *v, field_kind kind) {
    switch (kind) {
    case F_BOOL:
        return json_is_boolean(v);
    case F_NUMBER:
        return json_is_number(v);
    case F_INTEGER:
        return json_is_integer(v);
    case F_STRING:
        return json_is_string(v);
    case F_OBJECT:
        return json_is_object(v);
    case F_ARRAY:
        return json_is_array(v);
    case F_STRING_OR_OBJECT:
        return json_is_string(v) || json_is_object(v);
    }
    return 0;
}

static const char *const kind_text[] = {
    [F_BOOL] = "a boolean",
    [F_NUMBER] = "a number",
    [F_INTEGER] = "an integer",
    [F_STRING] = "a string",
    [F_OBJECT] = "an object",
    [F_ARRAY] = "an array",
    [F_STRING_OR_OBJECT] = "a string or an object",
};

static int check_field(json_t *body, const field_rule *r, gw_fail *fail) {
    json_t *v = json_object_get(body, r->name);
    if (!v || json_is_null(v))
        return 0;
    /* What it must be: "a boolean", "an integer >= 1", "a number from 0 to 2". */
    char want[64];
    if ((r->kind != F_NUMBER && r->kind != F_INTEGER) || (isinf(r->min) && isinf(r->max)))
        snprintf(want, sizeof want, "%s", kind_text[r->kind]);
    else if (isinf(r->max))
        snprintf(want, sizeof want, "%s >= %g", kind_text[r->kind], r->min);
    else
        snprintf(want, sizeof want, "%s from %g to %g", kind_text[r->kind], r->min, r->max);
    if (!kind_is(v, r->kind))
        return fail_set(fail, GATEWAY_EINVAL, r->name, "%s must be %s, not %s", r->name, want, json_kind(v));
    if ((r->kind == F_NUMBER || r->kind == F_INTEGER) &&
        !(json_number_value(v) >= r->min && json_number_value(v) <= r->max))
        return fail_set(fail, GATEWAY_EINVAL, r->name, "%s must be %s; %g is out of range", r->name, want,
                        json_number_value(v));
    return 0;
}

/* The fields whose shape is more than a type: stop, stream_options,
 * logit_bias. */
static int check_special_fields(json_t *body, gw_fail *fail) {
    json_t *stop = json_object_get(body, "stop");
    if (stop && !json_is_null(stop) && !json_is_string(stop)) {
        if (!json_is_array(stop) || json_array_size(stop) > 4)
            return fail_set(fail, GATEWAY_EINVAL, "stop",
                            "stop must be a string or an array of up to 4 strings, not %s",
                            json_is_array(stop) ? "an array of more" : json_kind(stop));
        size_t k;
        json_t *s;
        json_array_foreach(stop, k, s) {
            if (!json_is_string(s)) {
                char param[PARAM_CAP];
                snprintf(param, sizeof param, "stop[%zu]", k);
                return fail_set(fail, GATEWAY_EINVAL, param, "%s must be a string, not %s", param, json_kind(s));
            }
        }
    }
    json_t *opts = json_object_get(body, "stream_options");
    if (opts && json_is_object(opts)) {
        if (!json_is_true(json_object_get(body, "stream")))
            return fail_set(fail, GATEWAY_EINVAL, "stream_options",
                            "stream_options is only allowed when stream is true");
        json_t *iu = json_object_get(opts, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return fail_set(fail, GATEWAY_EINVAL, "stream_options.include_usage",
                            "stream_options.include_usage must be a boolean, not %s", json_kind(iu));
    }
    json_t *bias = json_object_get(body, "logit_bias");
    if (bias && json_is_object(bias)) {
        const char *key;
        json_t *v;
        json_object_foreach(bias, key, v) {
            if (!json_is_number(v) || json_number_value(v) < -100 || json_number_value(v) > 100)
                return fail_set(fail, GATEWAY_EINVAL, "logit_bias",
                                "logit_bias maps token ids to numbers from -100 to 100; \"%.32s\" maps to %s", key,
                                json_is_number(v) ? "a number out of range" : json_kind(v));
        }
    }
    return 0;
}

/* The text of message msg's content (strings and text parts joined with
 * "\n"), malloc'd. */
static char *message_text(json_t *msg) {
    json_t *content = json_object_get(msg, "content");
    if (json_is_string(content))
        return strndup(json_string_value(content), json_string_length(content));
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(content, k, part) {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text) && strcmp(json_string_value(json_object_get(part, "type")), "text") == 0)
            total += json_string_length(text) + 1;
    }
    char *out = malloc(total + 1), *at = out;
    if (!out)
        return NULL;
    json_array_foreach(content, k, part) {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text) && strcmp(json_string_value(json_object_get(part, "type")), "text") == 0) {
            if (at != out)
                *at++ = '\n';
            memcpy(at, json_string_value(text), json_string_length(text));
            at += json_string_length(text);
        }
    }
    *at = '\0';
    return out;
}

/* The request's fields, after its messages. */
static int check_request_fields(json_t *body, gw_fail *fail) {
    for (size_t r = 0; r < sizeof field_rules / sizeof *field_rules; r++) {
        if (check_field(body, &field_rules[r], fail) < 0)
            return -1;
    }
    return check_special_fields(body, fail);
}

static int check_limits(const gw_chat *c, const gw_limits *lim, gw_fail *fail) {
    if (!lim)
        return 0;
    if (lim->max_chars && c->text_chars > lim->max_chars)
        return fail_set(fail, GATEWAY_ETOOBIG, "messages",
                        "the messages hold %zu characters of text; this gateway accepts at most %zu", c->text_chars,
                        lim->max_chars);
    if (lim->max_tokens && c->est_tokens > lim->max_tokens)
        return fail_set(fail, GATEWAY_ETOOBIG, "messages",
                        "the messages are about %zu tokens long (estimated); this gateway accepts at most %zu",
                        c->est_tokens, lim->max_tokens);
    return 0;
}

/* Checks the parsed body and fills c (body already set). */
static int check_request(gw_chat *c, const gw_limits *lim, gw_fail *fail) {
    json_t *body = c->body;
    if (!json_is_object(body))
        return fail_set(fail, GATEWAY_EINVAL, "", "the request body must be a JSON object, not %s", json_kind(body));
    json_t *model = json_object_get(body, "model");
    /* No NUL inside: the gateway reads the name as a C string. */
    if (!json_is_string(model) || json_string_length(model) == 0 ||
        strlen(json_string_value(model)) != json_string_length(model))
        return fail_set(fail, GATEWAY_EINVAL, "model", "model must be a non-empty string naming a model or route%s",
                        model ? "" : " (it is missing)");
    c->model = json_string_value(model);
    json_t *messages = json_object_get(body, "messages");
    if (!json_is_array(messages))
        return fail_set(fail, GATEWAY_EINVAL, "messages", "messages must be an array of messages, not %s",
                        messages ? json_kind(messages) : "missing");
    c->n_messages = json_array_size(messages);
    if (c->n_messages == 0)
        return fail_set(fail, GATEWAY_EINVAL, "messages", "messages must hold at least one message");
    if (lim && lim->max_messages && c->n_messages > lim->max_messages)
        return fail_set(fail, GATEWAY_ETOOBIG, "messages",
                        "the request has %zu messages; this gateway accepts at most %zu", c->n_messages,
                        lim->max_messages);
    text_tally t = {0, 0};
    json_t *last_user = NULL, *msg;
    size_t i;
    json_array_foreach(messages, i, msg) {
        const char *role = NULL;
        if (check_message(msg, i, &t, &role, fail) < 0)
            return -1;
        t.tokens += 4;
        if (strcmp(role, "user") == 0)
            last_user = msg;
    }
    c->text_chars = t.chars;
    c->est_tokens = t.tokens;
    if (check_request_fields(body, fail) < 0 || check_limits(c, lim, fail) < 0)
        return -1;
    c->stream = json_is_true(json_object_get(body, "stream"));
    c->include_usage = json_is_true(json_object_get(json_object_get(body, "stream_options"), "include_usage"));
    json_t *temp = json_object_get(body, "temperature"), *n = json_object_get(body, "n");
    c->deterministic =
        json_is_number(temp) && json_number_value(temp) == 0 && (!n || json_is_null(n) || json_integer_value(n) == 1);
    json_t *mct = json_object_get(body, "max_completion_tokens"), *mt = json_object_get(body, "max_tokens");
    c->max_tokens = json_is_integer(mct)  ? (long)json_integer_value(mct)
                    : json_is_integer(mt) ? (long)json_integer_value(mt)
                                          : -1;
    c->routing_text = last_user ? message_text(last_user) : strdup("");
    if (!c->routing_text)
        return fail_set(fail, GATEWAY_ENOMEM, "", "out of memory");
    return 0;
}

int gw_chat_parse(const char *data, size_t len, const gw_limits *lim, gw_chat *out, gw_fail *fail) {
    memset(out, 0, sizeof *out);
    fail->status = 0;
    fail->param[0] = fail->message[0] = '\0';
    json_error_t jerr;
    out->body = json_loadb(len ? data : "", len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (!out->body) {
        /* jansson reports the first error it meets; a body that is not
         * UTF-8 anywhere is a UTF-8 error whatever came first. */
        size_t valid = utf8_valid_prefix((const unsigned char *)data, len);
        if (valid < len)
            return fail_set(fail, GATEWAY_EUTF8, "", "the request body is not valid UTF-8 (byte %zu: 0x%02x)", valid,
                            (unsigned char)data[valid]);
        return fail_set(fail, GATEWAY_EJSON, "", "the request body is not valid JSON: %s (line %d, column %d)",
                        jerr.text, jerr.line, jerr.column);
    }
    if (check_request(out, lim, fail) < 0) {
        gw_chat_free(out);
        return -1;
    }
    return 0;
}

void gw_chat_free(gw_chat *c) {
    if (!c)
        return;
    json_decref(c->body);
    free(c->routing_text);
    memset(c, 0, sizeof *c);
}

char *gw_chat_upstream_body(const gw_chat *c, const char *upstream_model, size_t *len) {
    /* A shallow copy: the client's values are shared, never changed. */
    json_t *up = json_copy(c->body);
    char *out = NULL;
    if (!up || json_object_set_new(up, "model", json_string(upstream_model)) < 0)
        goto done;
    if (c->stream) {
        json_t *opts = json_object_get(c->body, "stream_options");
        json_t *copy = json_is_object(opts) ? json_copy(opts) : json_object();
        if (!copy || json_object_set_new(copy, "include_usage", json_true()) < 0 ||
            json_object_set_new(up, "stream_options", copy) < 0) {
            json_decref(copy);
            goto done;
        }
    }
    out = dump(up, 0, len);
done:
    json_decref(up);
    return out;
}

/* Fields that never change the answer, left out of cache material. */
static const char *const cache_ignored[] = {"model", "stream", "stream_options", "user", "metadata"};
/* Number fields where 0 and 0.0 mean the same: written as reals. */
static const char *const cache_reals[] = {"temperature", "top_p", "presence_penalty", "frequency_penalty"};

static int name_in(const char *name, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (strcmp(name, list[i]) == 0)
            return 1;
    }
    return 0;
}

char *gw_chat_cache_material(const gw_chat *c, const char *target, size_t *len) {
    json_t *req = json_object(), *top = NULL;
    char *out = NULL;
    if (!req)
        return NULL;
    const char *key;
    json_t *v;
    json_object_foreach(c->body, key, v) {
        /* Null is "not given" for every nullable field. */
        if (json_is_null(v) || name_in(key, cache_ignored, sizeof cache_ignored / sizeof *cache_ignored))
            continue;
        json_t *val = json_is_integer(v) && name_in(key, cache_reals, sizeof cache_reals / sizeof *cache_reals)
                          ? json_real((double)json_integer_value(v))
                          : json_incref(v);
        if (json_object_set_new(req, key, val) < 0)
            goto done;
    }
    top = json_object();
    if (!top || json_object_set_new(top, "target", json_string(target)) < 0 || json_object_set(top, "request", req) < 0)
        goto done;
    out = dump(top, JSON_SORT_KEYS, len);
done:
    json_decref(top);
    json_decref(req);
    return out;
}

/* ---- upstream answers --------------------------------------------------- */

/* usage.prompt_tokens and usage.completion_tokens of obj, when both are
 * integers. */
static void read_usage(json_t *obj, gw_usage *u) {
    json_t *usage = json_object_get(obj, "usage");
    json_t *p = json_object_get(usage, "prompt_tokens"), *c = json_object_get(usage, "completion_tokens");
    u->known = json_is_integer(p) && json_is_integer(c);
    u->prompt_tokens = u->known ? (long)json_integer_value(p) : 0;
    u->completion_tokens = u->known ? (long)json_integer_value(c) : 0;
}

int gw_completion_parse(const char *data, size_t len, json_t **out, gw_usage *usage, gw_fail *fail) {
    *out = NULL;
    memset(usage, 0, sizeof *usage);
    json_error_t jerr;
    json_t *v = json_loadb(len ? data : "", len, JSON_ALLOW_NUL, &jerr);
    if (!v)
        return fail_set(fail, GATEWAY_EUPSTREAM, "", "the upstream answer is not JSON: %s (line %d, column %d)",
                        jerr.text, jerr.line, jerr.column);
    if (!json_is_array(json_object_get(v, "choices"))) {
        json_decref(v);
        return fail_set(fail, GATEWAY_EUPSTREAM, "", "the upstream answer has no \"choices\" array");
    }
    read_usage(v, usage);
    *out = v;
    return 0;
}

int gw_completion_map_content(json_t *completion, char *(*fn)(void *ud, size_t choice, const char *text, size_t len),
                              void *ud) {
    size_t i;
    json_t *choice;
    json_array_foreach(json_object_get(completion, "choices"), i, choice) {
        json_t *message = json_object_get(choice, "message");
        json_t *content = json_object_get(message, "content");
        if (!json_is_string(content))
            continue;
        char *repl = fn(ud, i, json_string_value(content), json_string_length(content));
        if (!repl)
            continue;
        json_t *s = json_string(repl);
        free(repl);
        if (!s || json_object_set_new(message, "content", s) < 0)
            return -1;
    }
    return 0;
}

/* {"prompt_tokens", "completion_tokens", "total_tokens"} of u. */
static json_t *usage_object(const gw_usage *u) {
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens, "completion_tokens",
                     (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)u->prompt_tokens + (json_int_t)u->completion_tokens);
}

json_t *gw_completion_make(const char *id, long created, const char *model, const char *content,
                           const gw_usage *usage) {
    static const gw_usage none = {0, 0, 0};
    return json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:o}", "id", id, "object", "chat.completion",
                     "created", (json_int_t)created, "model", model, "choices", "index", 0, "message", "role",
                     "assistant", "content", content, "finish_reason", "stop", "usage",
                     usage_object(usage ? usage : &none));
}

int gw_chunk_parse(const char *data, size_t len, gw_chunk *out) {
    memset(out, 0, sizeof *out);
    json_t *v = json_loadb(len ? data : "", len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        return -1;
    }
    out->obj = v;
    json_t *choices = json_object_get(v, "choices");
    out->has_choices = json_array_size(choices) > 0;
    json_t *first = json_array_get(choices, 0);
    json_t *content = json_object_get(json_object_get(first, "delta"), "content");
    if (json_is_string(content)) {
        out->content = json_string_value(content);
        out->content_len = json_string_length(content);
    }
    out->finish_reason = str_or_null(json_object_get(first, "finish_reason"));
    read_usage(v, &out->usage);
    return 0;
}

void gw_chunk_free(gw_chunk *c) {
    if (!c)
        return;
    json_decref(c->obj);
    memset(c, 0, sizeof *c);
}

char *gw_chunk_rewrite(const gw_chunk *c, const char *model, const char *content, size_t len, size_t *out_len) {
    /* Copies along the path that changes (chunk, choices, choices[0],
     * delta); everything else is shared with c->obj, which stays as it
     * was. */
    json_t *top = json_copy(c->obj);
    char *out = NULL;
    if (!top)
        return NULL;
    if (model && json_object_set_new(top, "model", json_string(model)) < 0)
        goto done;
    json_t *choices = json_object_get(c->obj, "choices");
    json_t *first = json_array_get(choices, 0);
    if (content && json_is_object(first)) {
        json_t *delta = json_object_get(first, "delta");
        json_t *choices2 = json_copy(choices), *first2 = json_copy(first);
        json_t *delta2 = json_is_object(delta) ? json_copy(delta) : json_object();
        int bad = !choices2 || !first2 || !delta2;
        bad = bad || json_object_set_new(delta2, "content", json_stringn(content, len)) < 0;
        bad = bad || json_object_set(first2, "delta", delta2) < 0;
        bad = bad || json_array_set(choices2, 0, first2) < 0;
        bad = bad || json_object_set(top, "choices", choices2) < 0;
        json_decref(delta2);
        json_decref(first2);
        json_decref(choices2);
        if (bad)
            goto done;
    }
    out = dump(top, 0, out_len);
done:
    json_decref(top);
    return out;
}

char *gw_chunk_make(const char *id, long created, const char *model, const char *content, const char *finish_reason,
                    const gw_usage *usage, size_t *out_len) {
    json_t *chunk = json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "chat.completion.chunk", "created",
                              (json_int_t)created, "model", model);
    json_t *choices =
        usage ? json_array()
              : json_pack("[{s:i, s:o, s:o}]", "index", 0, "delta",
                          content ? json_pack("{s:s, s:s}", "role", "assistant", "content", content) : json_object(),
                          "finish_reason", finish_reason ? json_string(finish_reason) : json_null());
    char *out = NULL;
    if (chunk && choices && json_object_set(chunk, "choices", choices) == 0 &&
        (!usage || json_object_set_new(chunk, "usage", usage_object(usage)) == 0))
        out = dump(chunk, 0, out_len);
    json_decref(choices);
    json_decref(chunk);
    return out;
}

/* ---- upstream errors ---------------------------------------------------- */

/* The human text an error body carries: error.message, error (a string),
 * message or detail; NULL when none. */
static json_t *error_text(json_t *body) {
    json_t *err = json_object_get(body, "error");
    json_t *msg = json_object_get(err, "message");
    if (json_is_string(msg))
        return msg;
    if (json_is_string(err))
        return err;
    msg = json_object_get(body, "message");
    if (json_is_string(msg))
        return msg;
    msg = json_object_get(body, "detail");
    return json_is_string(msg) ? msg : NULL;
}

/* Case-insensitive search of needle in s[n]. */
static int contains(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i <= n - m; i++) {
        if (strncasecmp(s + i, needle, m) == 0)
            return 1;
    }
    return 0;
}

/* How providers word "the prompt is longer than the context window":
 * OpenAI and vLLM ("This model's maximum context length is 4097 tokens"),
 * llama.cpp ("the request exceeds the available context size", "Context
 * size has been exceeded"), llama-cpp-python ("Requested tokens (2285)
 * exceed context window of 2048"), Mistral ("too large for model with
 * 32768 maximum context length"), Anthropic ("prompt is too long"), TGI
 * ("`inputs` tokens + `max_new_tokens` must be <= 4096"). */
static int says_context_length(const char *s, size_t n) {
    static const char *const nouns[] = {"context length", "context size", "context window"};
    for (size_t i = 0; i < sizeof nouns / sizeof *nouns; i++) {
        if (contains(s, n, nouns[i]) && (contains(s, n, "exceed") || contains(s, n, "maximum")))
            return 1;
    }
    return contains(s, n, "prompt is too long") || contains(s, n, "`max_new_tokens` must be <=");
}

int gw_error_is_context_length(int http_status, const char *body, size_t len) {
    if (http_status < 400 || !body)
        return 0;
    json_t *v = json_loadb(len ? body : "", len, JSON_ALLOW_NUL, NULL);
    int yes = 0;
    if (v) {
        json_t *err = json_object_get(v, "error");
        const char *code = str_or_null(json_object_get(err, "code"));
        const char *type = str_or_null(json_object_get(err, "type"));
        json_t *msg = error_text(v);
        yes = (code && strcmp(code, "context_length_exceeded") == 0) ||
              (type && strcmp(type, "exceed_context_size_error") == 0) ||
              (msg && says_context_length(json_string_value(msg), json_string_length(msg)));
        json_decref(v);
    } else {
        yes = says_context_length(body, len);
    }
    return yes;
}

void gw_error_message(const char *body, size_t len, char *buf, size_t cap) {
    if (cap == 0)
        return;
    json_t *v = body ? json_loadb(len ? body : "", len, JSON_ALLOW_NUL, NULL) : NULL;
    json_t *msg = error_text(v);
    size_t n = 0;
    if (msg) {
        /* Valid UTF-8: cut at a code point's start, controls made spaces. */
        const char *s = json_string_value(msg);
        size_t slen = json_string_length(msg);
        n = slen < cap - 1 ? slen : cap - 1;
        while (n > 0 && n < slen && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7F ? ' ' : s[i];
    } else if (len == 0 || !body) {
        n = (size_t)snprintf(buf, cap, "(empty body)");
        n = n < cap ? n : cap - 1;
    } else {
        n = len < 200 ? len : 200;
        n = n < cap - 1 ? n : cap - 1;
        for (size_t i = 0; i < n; i++)
            buf[i] = body[i] >= 0x20 && body[i] < 0x7F ? body[i] : '?';
    }
    buf[n] = '\0';
    json_decref(v);
}
