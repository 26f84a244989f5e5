/*
 * chat.c - POST /v1/chat/completions: the HTTP side of the LLM gateway
 * (src/gateway does the work; gateway.h).
 *
 *   admit (rate limit, as every model endpoint) -> body size -> gateway_chat
 *   -> its answer: a JSON body, or server-sent events written as they come
 *      (chunked), or an error in the one error shape (status.c maps the
 *      gateway's statuses)
 *
 * A client that disconnects cancels the gateway's call (and so its upstream
 * transfer) at once: on_gone, from the connection's close callback.
 *
 * Threads: the call's loop only.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "http_int.h"

/* A non-streamed answer is gathered here and sent whole. */
struct chat_state {
    guard_ratelimit_req ratelimit_req;
    struct evbuffer *body;
    int status;
    /* evhttp notices a closed connection only when it reads or writes,
     * and it does neither while a plain answer is awaited: this watches
     * the socket for the peer's close (EPOLLRDHUP) meanwhile. */
    struct event *peer_watch;
};
typedef struct chat_state chat_state;

static void add_headers(http_call *call, const gateway_header *h, size_t n) {
    for (size_t i = 0; i < n; i++)
        http_add_header(call, h[i].name, h[i].value);
}

static void on_begin(void *ud, int status, int stream, const gateway_header *h, size_t n) {
    http_call *call = ud;
    chat_state *st = call->chat_state;
    add_headers(call, h, n);
    st->status = status;
    if (stream)
        http_stream_start(call, status, "text/event-stream");
    else
        st->body = evbuffer_new();
}

static void on_data(void *ud, const char *buf, size_t len) {
    http_call *call = ud;
    chat_state *st = call->chat_state;
    if (call->streaming)
        http_stream_write(call, buf, len);
    else if (st->body)
        evbuffer_add(st->body, buf, len);
}

static void state_free(http_call *call) {
    chat_state *st = call->chat_state;
    call->chat_state = NULL;
    call->on_gone = NULL;
    if (st && st->body)
        evbuffer_free(st->body);
    if (st && st->peer_watch)
        event_free(st->peer_watch);
    free(st);
}

void http_chat_free(http_call *call) {
    gateway_call_cancel(call->chat); /* answered otherwise (a shutdown's discard): stop it */
    call->chat = NULL;
    state_free(call);
}

static void on_end(void *ud) {
    http_call *call = ud;
    chat_state *st = call->chat_state;
    if (call->streaming) {
        state_free(call);
        http_stream_end(call);
        return;
    }
    struct evbuffer *body = st->body; /* handed to the reply as it is */
    int status = st->status;
    st->body = NULL;
    state_free(call);
    http_reply_buffer(call, status, "application/json", body);
}

static void on_fail(void *ud, int status, const char *param, const char *message, const gateway_header *h,
                    size_t n) {
    http_call *call = ud;
    state_free(call);
    add_headers(call, h, n);
    /* OpenAI's error shape names the request field at fault (null: none). */
    http_error e = http_error_of(STATUS_MODULE_GATEWAY, status);
    json_t *body = http_error_body(call, e, message);
    json_object_set_new(json_object_get(body, "error"), "param", param && *param ? json_string(param) : json_null());
    http_reply_json(call, http_error_status(e), body);
}

static const gateway_reply_ops reply_ops = {on_begin, on_data, on_end, on_fail};

/* The client left: stop the gateway's call; the HTTP call is logged 499. */
static void on_gone(http_call *call) {
    gateway_call_cancel(call->chat);
    call->chat = NULL;
    int streaming = call->streaming;
    state_free(call);
    if (streaming)
        http_stream_end(call);
    else
        http_reply_text(call, 499, "text/plain", "", 0);
}

/* The client closed its connection while the call runs: free the
 * connection, whose close callback runs on_gone (the gateway's call is
 * cancelled, the request logged 499). */
static void on_peer_closed(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_call *call = arg;
    chat_state *st = call->chat_state;
    event_free(st->peer_watch);
    st->peer_watch = NULL;
    struct evhttp_connection *evcon = call->req ? evhttp_request_get_connection(call->req) : NULL;
    if (evcon)
        evhttp_connection_free(evcon);
}

static void watch_peer(http_call *call) {
    chat_state *st = call->chat_state;
    struct evhttp_connection *evcon = call->req ? evhttp_request_get_connection(call->req) : NULL;
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0 || !st)
        return;
    st->peer_watch = event_new(call->loop->base, fd, EV_CLOSED, on_peer_closed, call);
    if (st->peer_watch)
        event_add(st->peer_watch, NULL);
}

static void admitted(http_call *call) {
    http_server *s = call->loop->server;
    if (!call->req) { /* the client left while the limiter answered */
        state_free(call);
        http_reply_text(call, 499, "text/plain", "", 0);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    if (len > s->opts.max_body_bytes) {
        state_free(call);
        http_reply_error(call, HTTP_ERR_BODY_TOO_LARGE, "request body is %zu bytes; the limit is %zu", len,
                         s->opts.max_body_bytes);
        return;
    }
    gateway_request r = {.body = len ? (const char *)evbuffer_pullup(in, -1) : "", .len = len,
                         .key_name = call->key_name, .no_cache = http_wants_fresh(call->req),
                         .request_id = call->request_id};
    call->on_gone = on_gone;
    watch_peer(call); /* before: the call may be answered, and freed, inside gateway_chat */
    if (gateway_chat(call->loop->gateway, &r, &reply_ops, call, &call->chat) != 0) {
        state_free(call);
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
    }
    /* call may be gone here: not touched again */
}

int http_gateway_present(http_call *call) {
    if (call->loop->gateway)
        return 1;
    http_reply_error(call, HTTP_ERR_GATEWAY_DISABLED,
                     "this server has no LLM gateway configured (gateway.config names its file; see "
                     "docs/gateway.md)");
    return 0;
}

void http_chat(http_call *call) {
    if (!http_gateway_present(call))
        return;
    chat_state *st = calloc(1, sizeof *st);
    if (!st) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    call->chat_state = st;
    http_admit(call, &st->ratelimit_req, admitted);
}
