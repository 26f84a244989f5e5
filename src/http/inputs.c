/*
 * inputs.c - what every endpoint's body parser shares: the checks of one
 * text (a string, not blank, within the length limit), collecting a list
 * of texts, a boolean flag of a body, JSON itself, the http_fail a parser
 * fills instead of answering, and the query parameters (?limit=&since=)
 * handlers read.
 *
 * Pure functions of their arguments (the query readers: of the request),
 * so parsers can be fuzzed without a server (tests/fuzz/fuzz_bodies.c).
 * Any thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http_int.h"

int http_fail_set(http_fail *f, http_error e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    f->error = e;
    return -1;
}

json_t *http_parse_json(const char *data, size_t len, http_fail *fail) {
    /* One pass: jansson checks the UTF-8 of every byte it reads. */
    json_error_t jerr;
    json_t *body = json_loadb(len ? data : "", len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (!body && json_error_code(&jerr) == json_error_invalid_utf8)
        http_fail_set(fail, HTTP_ERR_INVALID_UTF8, "request body is not valid UTF-8 (line %d, column %d)", jerr.line,
                      jerr.column);
    else if (!body)
        http_fail_set(fail, HTTP_ERR_INVALID_JSON, "request body is not valid JSON: %s (line %d, column %d)",
                      jerr.text, jerr.line, jerr.column);
    return body;
}

/* Where text i is, for errors: "text" or "texts[3]"; a field that is one
 * string ("query") is index HTTP_FIELD_ITSELF. */
static const char *where(const char *field, size_t index, char buf[64]) {
    if (strcmp(field, "text") == 0 || index == HTTP_FIELD_ITSELF)
        return field;
    snprintf(buf, 64, "%.20s[%zu]", field, index);
    return buf;
}

int http_check_blank(const http_inputs *in, const serving_version *v, http_fail *fail) {
    for (size_t i = 0; i < in->n; i++) {
        if (serving_version_text_is_blank(v, in->texts[i], in->lens[i])) {
            char buf[64];
            return http_fail_set(fail, HTTP_ERR_EMPTY_TEXT, "%s must not be empty", where(in->field, i, buf));
        }
    }
    return 0;
}

int http_check_text(const http_limits *limits, json_t *value, const char *field, size_t index, http_fail *fail) {
    char buf[64];
    const char *at = where(field, index, buf);
    if (!json_is_string(value))
        return http_fail_set(fail, HTTP_ERR_INVALID_TEXT, "%s must be a string", at);
    const char *text = json_string_value(value);
    size_t len = json_string_length(value), cps = 0;
    for (size_t i = 0; i < len; i++) /* jansson checked the UTF-8: count lead bytes */
        cps += ((unsigned char)text[i] & 0xC0) != 0x80;
    int blank = 1;
    for (size_t i = 0; i < len && blank; i++)
        blank = text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r';
    if (len == 0 || blank)
        return http_fail_set(fail, HTTP_ERR_EMPTY_TEXT, "%s must not be empty", at);
    if (cps > limits->max_text_chars)
        return http_fail_set(fail, HTTP_ERR_TEXT_TOO_LONG, "%s is %zu characters long; the limit is %zu", at, cps,
                             limits->max_text_chars);
    return 0;
}

/* Points in->texts at n strings of list (or at the one string `one`),
 * each checked; field names them in errors. 0, or -1 with fail. */
int http_inputs_collect(const http_limits *limits, json_t *one, json_t *list, const char *field, http_inputs *in,
                        http_fail *fail) {
    size_t n = one ? 1 : json_array_size(list);
    in->texts = calloc(n ? n : 1, sizeof *in->texts);
    in->lens = calloc(n ? n : 1, sizeof *in->lens);
    if (!in->texts || !in->lens)
        return http_fail_set(fail, HTTP_ERR_INTERNAL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = one ? one : json_array_get(list, i);
        if (http_check_text(limits, v, one ? "text" : field, i, fail) != 0)
            return -1;
        in->texts[i] = json_string_value(v);
        in->lens[i] = json_string_length(v);
    }
    in->n = n;
    in->field = one ? "text" : field;
    return 0;
}


int http_body_flag(json_t *body, const char *name, int dflt, int *out, http_fail *fail) {
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "%s must be true or false", name);
    *out = json_is_true(v);
    return 0;
}

void http_inputs_free(http_inputs *in) {
    json_decref(in->body);
    free(in->texts);
    free(in->lens);
    memset(in, 0, sizeof *in);
}

char *http_json_text(json_t *v) {
    char *text = v ? json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(v);
    return text;
}

int http_version_ref_valid(const char *ref, int alias_ok) {
    size_t digits = strspn(ref, "0123456789");
    if (digits)
        return digits <= 12 && !ref[digits] && ref[0] != '0';
    return alias_ok && serving_alias_name_valid(ref);
}

int http_query_parse(http_call *call, struct evkeyvalq *params) {
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(call->req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    return evhttp_parse_query_str(q ? q : "", params) != 0 ? -1 : 0; /* "": none, and params made empty */
}

uint64_t http_query_number(const struct evkeyvalq *params, const char *name, uint64_t dflt, uint64_t max,
                           int *bad) {
    const char *v = evhttp_find_header(params, name);
    if (!v)
        return dflt;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || v[0] == '-' || v[0] == '+' || errno || x > max) {
        *bad = 1;
        return dflt;
    }
    return x;
}
