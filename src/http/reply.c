/*
 * reply.c - how every answer leaves the server: JSON bodies, the one error
 * shape, the request id, the per-request metrics and the access log line;
 * and reading a request's JSON body.
 *
 * The error shape is OpenAI's, with FastAPI's "detail" beside it so the
 * seed service's clients (response.json()["detail"]) read errors unchanged:
 *
 *     {"error": {"message", "type", "code", "request_id"}, "detail": message}
 *
 * Every answer goes through send_and_finish(), which is therefore the one
 * place that counts prediction_requests_total / prediction_latency_seconds,
 * writes the access log line and frees the call. Answers during a drain
 * carry "Connection: close" so that keep-alive clients move elsewhere.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>

#include "http_int.h"

static const struct {
    int status;
    const char *type, *code;
} error_table[HTTP_ERR_COUNT] = {
#define HTTP_ERROR_ROW(name, status, type, code) [HTTP_ERR_##name] = {status, type, code},
    HTTP_ERROR_MAP(HTTP_ERROR_ROW)
#undef HTTP_ERROR_ROW
};

int http_error_status(http_error e) { return error_table[e].status; }
const char *http_error_type(http_error e) { return error_table[e].type; }
const char *http_error_code(http_error e) { return error_table[e].code; }

/* A client's X-Request-ID is echoed when it is 1-64 characters of
 * [A-Za-z0-9._:-]; anything else (CRLF included) is replaced by a fresh id,
 * so the header can never inject into a response or a log line. */
static int valid_request_id(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

void http_request_id_make(struct evhttp_request *req, char *out, size_t cap) {
    const char *given =
        req ? evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-ID") : NULL;
    if (given && valid_request_id(given)) {
        http_copy(out, cap, given);
        return;
    }
    /* 128 random bits from a per-thread xorshift seeded by getrandom. */
    static __thread uint64_t state[2];
    if (state[0] == 0 && state[1] == 0) {
        if (getrandom(state, sizeof state, 0) != sizeof state || (state[0] | state[1]) == 0) {
            state[0] = (uint64_t)(uintptr_t)&state ^ http_now_us();
            state[1] = 0x9e3779b97f4a7c15ull;
        }
    }
    uint64_t words[2];
    for (int i = 0; i < 2; i++) {
        uint64_t s1 = state[0];
        const uint64_t s0 = state[1];
        state[0] = s0;
        s1 ^= s1 << 23;
        state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        words[i] = state[1] + s0;
    }
    static const char hex[] = "0123456789abcdef";
    if (cap < 33) {
        if (cap)
            out[0] = '\0';
        return;
    }
    for (int i = 0; i < 32; i++)
        out[i] = hex[(words[i / 16] >> (60 - 4 * (i % 16))) & 15];
    out[32] = '\0';
}

void http_add_header(http_call *call, const char *name, const char *value) {
    if (call->req)
        evhttp_add_header(evhttp_request_get_output_headers(call->req), name, value);
}

const char *http_header(http_call *call, const char *name) {
    return call->req ? evhttp_find_header(evhttp_request_get_input_headers(call->req), name) : NULL;
}

void http_call_free(http_call *call) {
    http_infer_free(call->infer);
    http_chat_free(call);
    if (call->orphan_req)
        evhttp_request_free(call->orphan_req);
    free(call);
}

static void access_log(http_call *call, double seconds) {
    http_server *s = call->loop->server;
    if (!s->opts.access_log || !log_enabled(LOG_INFO))
        return;
    json_t *f = json_object();
    json_object_set_new(f, "request_id", json_string(call->request_id));
    json_object_set_new(f, "method", json_string(call->method));
    /* The path is the client's: jansson escapes it; invalid UTF-8 is
     * replaced so the line stays valid JSON. */
    json_t *path = json_string(call->path);
    json_object_set_new(f, "path", path ? path : json_string("(not UTF-8)"));
    json_object_set_new(f, "status", json_integer(call->status));
    json_object_set_new(f, "duration_ms", json_real(seconds * 1000.0));
    const char *model;
    long version;
    int batch_size;
    if (http_infer_describe(call->infer, &model, &version, &batch_size)) {
        json_object_set_new(f, "model", json_string(model));
        char ver[24];
        json_object_set_new(f, "version", json_string(http_format_int(version, ver)));
        if (batch_size)
            json_object_set_new(f, "batch_size", json_integer(batch_size));
    }
    json_object_set_new(f, "client", json_string(call->client));
    if (call->key_name[0]) /* the key's name, never the key */
        json_object_set_new(f, "key", json_string(call->key_name));
    log_json(LOG_INFO, "request", f);
}

/* Reason phrases libevent 2.1 does not know (it would say "Client Error");
 * NULL lets libevent choose. */
static const char *reason_phrase(int status) {
    switch (status) {
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    default: return NULL;
    }
}

/* The headers every answer carries. */
static void add_common_headers(http_call *call) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(call->req);
    http_cors_add_headers(call);
    evhttp_add_header(h, "X-Request-ID", call->request_id);
    if (atomic_load(&call->loop->server->draining))
        evhttp_add_header(h, "Connection", "close");
}

static void forget_close(http_call *call) {
    struct evhttp_connection *evcon = call->req ? evhttp_request_get_connection(call->req) : NULL;
    if (evcon)
        evhttp_connection_set_closecb(evcon, NULL, NULL);
}

static void finish_call(http_call *call, int status);

/* Writes the answer (when the connection still lives), counts, logs, frees. */
static void send_and_finish(http_call *call, int status, struct evbuffer *body) {
    call->status = status;
    forget_close(call);
    if (call->req && !call->discard) {
        add_common_headers(call);
        evhttp_send_reply(call->req, status, reason_phrase(status), body);
    }
    if (body)
        evbuffer_free(body);
    finish_call(call, status);
}

int http_stream_start(http_call *call, int status, const char *content_type) {
    if (!call->req || call->discard)
        return -1;
    /* Each event must leave at once: without TCP_NODELAY, Nagle holds the
     * second small write until the client's delayed ACK (40 ms stalls). */
    struct evhttp_connection *evcon = evhttp_request_get_connection(call->req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    call->status = status;
    call->streaming = 1;
    http_add_header(call, "Content-Type", content_type);
    http_add_header(call, "Cache-Control", "no-cache");
    add_common_headers(call);
    evhttp_send_reply_start(call->req, status, reason_phrase(status));
    return 0;
}

void http_stream_write(http_call *call, const char *data, size_t len) {
    if (!call->req || call->discard || len == 0)
        return;
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return;
    evbuffer_add(b, data, len);
    evhttp_send_reply_chunk(call->req, b);
    evbuffer_free(b);
}

void http_stream_end(http_call *call) {
    forget_close(call);
    if (call->req && !call->discard)
        evhttp_send_reply_end(call->req);
    finish_call(call, call->status);
}

/* Counts, logs and frees an answered call. */
static void finish_call(http_call *call, int status) {
    http_server *s = call->loop->server;
    double seconds = (double)(http_now_us() - call->start_us) / 1e6;
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *labels[] = {http_call_label(call), code};
    metric *m = metric_series(s->metrics.requests, labels);
    if (m)
        metric_inc(m);
    metric *latency = call->route ? s->metrics.latency[call->route - http_routes] : s->metrics.latency_other;
    if (latency)
        metric_observe(latency, seconds);
    access_log(call, seconds);
    metric_dec(s->metrics.in_flight);
    atomic_fetch_sub(&s->in_flight, 1);
    http_call_free(call);
}

void http_reply_buffer(http_call *call, int status, const char *content_type, struct evbuffer *body) {
    if (content_type) /* NULL: none, for 204 */
        http_add_header(call, "Content-Type", content_type);
    send_and_finish(call, status, body);
}

void http_reply_text(http_call *call, int status, const char *content_type, const char *text,
                     size_t len) {
    struct evbuffer *body = evbuffer_new();
    if (body)
        evbuffer_add(body, text, len);
    http_reply_buffer(call, status, content_type, body);
}

void http_reply_json(http_call *call, int status, json_t *json) {
    char *text = http_json_text(json);
    if (!text) {
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":\"internal_error\"},"
            "\"detail\":\"out of memory\"}";
        http_reply_text(call, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    http_reply_text(call, status, "application/json", text, strlen(text));
    free(text);
}

json_t *http_error_body(http_call *call, http_error e, const char *message) {
    json_t *msg = json_string(message);
    if (!msg)
        msg = json_string("(message not UTF-8)");
    json_t *err = json_object();
    json_object_set(err, "message", msg);
    json_object_set_new(err, "type", json_string(error_table[e].type));
    json_object_set_new(err, "code", json_string(error_table[e].code));
    json_object_set_new(err, "request_id", json_string(call ? call->request_id : ""));
    return json_pack("{s:o, s:o}", "error", err, "detail", msg);
}

void http_reply_error(http_call *call, http_error e, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    http_reply_json(call, error_table[e].status, http_error_body(call, e, message));
}

void http_reply_fail(http_call *call, const http_fail *fail) {
    http_reply_error(call, fail->error, "%s", fail->message);
}

void http_reply_status(http_call *call, status_module module, int status, const char *message) {
    http_reply_error(call, http_error_of(module, status), "%s", message);
}

json_t *http_read_json(http_call *call) {
    http_server *s = call->loop->server;
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    if (len > s->opts.max_body_bytes) {
        http_reply_error(call, HTTP_ERR_BODY_TOO_LARGE, "request body is %zu bytes; the limit is %zu", len,
                         s->opts.max_body_bytes);
        return NULL;
    }
    http_fail why;
    json_t *body = http_parse_json(len ? (const char *)evbuffer_pullup(in, -1) : "", len, &why);
    if (!body)
        http_reply_fail(call, &why);
    return body;
}

size_t http_raw_error_format(http_loop *loop, http_error e, const char *message, char *out, size_t cap) {
    http_server *s = loop->server;
    char id[40];
    http_request_id_make(NULL, id, sizeof id);
    json_t *err = json_pack("{s:{s:s, s:s, s:s, s:s}, s:s}", "error", "message", message, "type",
                            error_table[e].type, "code", error_table[e].code, "request_id", id, "detail", message);
    char *body = err ? json_dumps(err, JSON_COMPACT) : NULL;
    json_decref(err);
    if (!body)
        return 0;
    static const char *const reasons[] = {[400] = "Bad Request", [413] = "Payload Too Large",
                                          [431] = "Request Header Fields Too Large"};
    int status = error_table[e].status;
    const char *reason = status < 432 && reasons[status] ? reasons[status] : "Error";
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Request-ID: %s\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     status, reason, id, strlen(body), body);
    free(body);
    size_t len = n > 0 && (size_t)n < cap ? (size_t)n : 0;
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *labels[] = {HTTP_LABEL_OTHER, code};
    metric_inc(metric_series(s->metrics.requests, labels));
    if (s->opts.access_log && log_enabled(LOG_INFO))
        log_event(LOG_INFO, "request", "request_id", json_string(id), "status", json_integer(status),
                  "error", json_string(error_table[e].code), NULL);
    return len;
}
