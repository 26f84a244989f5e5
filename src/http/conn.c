/*
 * conn.c - client connections as the server sees them: how many are open,
 * how long a request takes to arrive, how long a keep-alive connection
 * idles. evhttp (libevent 2.1) offers no hooks for any of this, so the
 * server creates each connection's bufferevent itself (evhttp_set_bevcb)
 * and watches it.
 *
 * Design:
 *  - conn_bev_create (evhttp's bevcb) makes the socket bufferevent, takes a
 *    reference on it and watches its input buffer. The reference keeps the
 *    bufferevent (and, with BEV_OPT_CLOSE_ON_FREE, its socket) alive after
 *    evhttp frees it, so a file descriptor is never reused while this file
 *    still knows it; evhttp shuts the socket's write side at once, so the
 *    client sees the close immediately.
 *  - A sweep timer per loop (every 100 ms) finds connections evhttp has
 *    released (bufferevent_free clears the callbacks), drops the reference
 *    and forgets them; and closes (shutdown) connections that
 *      * took longer than read_timeout to send one whole request (slowloris:
 *        evhttp's own timeout restarts with every byte), or
 *      * idled longer than idle_timeout between requests.
 *  - At max_connections the listeners stop accepting (the kernel's backlog
 *    holds further clients) until a connection closes; a connection that
 *    still slips through gets a canned 503 and is closed.
 *  - A request in progress (handed to the router, not yet answered) is never
 *    timed out here: the request deadline (504) covers it.
 *  - With TLS the bufferevent is an OpenSSL one (tls.c) and everything
 *    above holds unchanged: its input buffer holds the decrypted bytes the
 *    raw checks want, bufferevent_getfd gives the socket, and shutdown()
 *    ends the TLS session with the TCP one. The handshake counts as part
 *    of the first request (read_timeout from accept), so a client cannot
 *    hold a connection by handshaking slowly; canned answers go out as TLS
 *    records (write_raw), and only once the handshake is done.
 *
 * Loop thread only (each loop sweeps its own connections); the fd table is
 * shared, but an entry is only written by the loop that owns the fd.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "http_int.h"

struct http_conn {
    http_loop *loop;
    struct bufferevent *bev;
    int is_tls;                /* bev is an OpenSSL bufferevent */
    evutil_socket_t fd;        /* -1 until evhttp has set it */
    uint64_t accepted_us;
    uint64_t request_start_us; /* first byte of the request being received; 0: none */
    uint64_t idle_since_us;    /* last answer written (or accept) */
    int busy;                  /* a request is being handled */
    int closing;               /* 1: shutdown() done; 2: over the limit, answer 503;
                                  3: refuse (no TLS session could be made) */
    struct evbuffer_cb_entry *input_cb;
    /* The request being received, as raw bytes (see on_input). */
    int in_body;               /* its head ended ("\r\n\r\n" seen) */
    size_t head_bytes, body_bytes;
    int64_t content_length;    /* declared; -1: none (chunked or no body) */
    http_conn *prev, *next;
};

static void remember_fd(http_conn *c);

/* Best effort: the socket is about to be shut down either way. */
static void write_raw(http_conn *c, const char *data, size_t n) {
    if (c->is_tls) {
        http_tls_send(c->bev, data, n);
        return;
    }
    ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
}

static void shut(http_conn *c) {
    if (c->fd >= 0 && !c->closing) {
        shutdown(c->fd, SHUT_RDWR);
        c->closing = 1;
    }
}

/* A connection over max_connections: the canned 503, then closed. */
static void answer_busy(http_conn *c) {
    static const char body[] =
        "{\"error\":{\"message\":\"too many open connections; retry later\","
        "\"type\":\"service_unavailable_error\",\"code\":\"too_many_connections\"},"
        "\"detail\":\"too many open connections; retry later\"}";
    char busy[512];
    int n = snprintf(busy, sizeof busy,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Retry-After: 1\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof body - 1, body);
    write_raw(c, busy, (size_t)n);
    c->closing = 0;
    shut(c);
}

/* Answers the raw connection with an error and closes it (see on_input). */
static void reject(http_conn *c, http_error e, const char *message) {
    remember_fd(c);
    if (c->fd >= 0 && !c->closing) {
        char response[2048];
        size_t n = http_raw_error_format(c->loop, e, message, response, sizeof response);
        if (n)
            write_raw(c, response, n);
        shutdown(c->fd, SHUT_RDWR);
        c->closing = 1;
    }
}

/* Watches the raw bytes of each request before evhttp parses them, so that
 * limits are answered in the API's JSON error shape (evhttp 2.1 answers its
 * own limits with an HTML page) and so that ambiguous framing is refused:
 *  - a head (request line + headers) over max_header_size: 431;
 *  - a declared Content-Length over max_body_size: 413 before the body is
 *    read; a body (chunked) that grows past it: 413;
 *  - two Content-Length headers that disagree: 400 (RFC 9112 6.3; a proxy
 *    and this server could otherwise frame the request differently).
 * The head is scanned when it arrives whole in the buffer, which is the
 * usual case; a head dribbled over many reads is still bounded by evhttp's
 * own (larger) limits. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
    http_conn *c = arg;
    if (info->n_added == 0)
        return;
    if (c->closing == 3) {
        /* No TLS session: these bytes came in clear on the TLS port and
         * must never reach evhttp. */
        remember_fd(c);
        evbuffer_drain(buf, evbuffer_get_length(buf));
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RDWR);
        return;
    }
    if (c->closing == 2) {
        /* Over the limit: answered now, before evhttp could serve it (the
         * sweep answers those that send nothing). Over TLS, bytes here
         * mean the handshake is done, so the 503 can go out encrypted. */
        remember_fd(c);
        if (c->fd >= 0) {
            evbuffer_drain(buf, evbuffer_get_length(buf));
            answer_busy(c);
        }
        return;
    }
    if (c->busy || c->closing)
        return;
    http_server *s = c->loop->server;
    if (c->request_start_us == 0)
        c->request_start_us = http_now_us();
    if (c->in_body) {
        c->body_bytes += info->n_added;
        if (c->content_length < 0 && c->body_bytes > s->opts.max_body_bytes + 4096)
            reject(c, HTTP_ERR_BODY_TOO_LARGE, "request body is over the size limit");
        return;
    }
    /* Find the end of the head in what was just added (and the 3 bytes before). */
    size_t from = info->orig_size > 3 ? info->orig_size - 3 : 0;
    struct evbuffer_ptr start;
    evbuffer_ptr_set(buf, &start, from, EVBUFFER_PTR_SET);
    struct evbuffer_ptr end = evbuffer_search(buf, "\r\n\r\n", 4, &start);
    if (end.pos < 0) {
        c->head_bytes += info->n_added;
        if (c->head_bytes > s->opts.max_header_bytes)
            reject(c, HTTP_ERR_HEADERS_TOO_LARGE, "request headers are over the size limit");
        return;
    }
    size_t head_end = (size_t)end.pos + 4;
    c->head_bytes += head_end - info->orig_size;
    if (c->head_bytes > s->opts.max_header_bytes) {
        reject(c, HTTP_ERR_HEADERS_TOO_LARGE, "request headers are over the size limit");
        return;
    }
    c->in_body = 1;
    c->body_bytes = evbuffer_get_length(buf) - head_end;
    c->content_length = -1;
    if (head_end <= 64 * 1024) {
        const char *head = (const char *)evbuffer_pullup(buf, (ev_ssize_t)head_end);
        int64_t cl = head ? http_head_content_length(head, head_end) : -1;
        int chunked = head && http_head_is_chunked(head, head_end);
        if (cl == -2) {
            reject(c, HTTP_ERR_INVALID_REQUEST_FRAMING, "conflicting or malformed Content-Length headers");
            return;
        }
        if (cl > (int64_t)s->opts.max_body_bytes) {
            char msg[160];
            snprintf(msg, sizeof msg, "request body is %lld bytes; the limit is %zu", (long long)cl,
                     s->opts.max_body_bytes);
            reject(c, HTTP_ERR_BODY_TOO_LARGE, msg);
            return;
        }
        c->content_length = cl;
        /* A chunked body whose first chunk-size line is already here must
         * start with hex digits (evhttp 2.1 would call it "too large"). */
        size_t avail = evbuffer_get_length(buf) - head_end;
        if (chunked && avail > 0) {
            size_t look = avail < 32 ? avail : 32;
            const char *line = (const char *)evbuffer_pullup(buf, (ev_ssize_t)(head_end + look));
            if (line && !http_chunk_size_line_ok(line + head_end, look))
                reject(c, HTTP_ERR_INVALID_REQUEST_FRAMING, "malformed chunk size in a chunked body");
        }
    }
}

static void remember_fd(http_conn *c) {
    if (c->fd >= 0)
        return;
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd < 0)
        return;
    c->fd = fd;
    http_server *s = c->loop->server;
    if ((size_t)fd < s->n_conn_by_fd)
        s->conn_by_fd[fd] = c;
}

/* evhttp's bevcb: one call per accepted connection, on its loop. */
struct bufferevent *http_conn_bev_create(struct event_base *base, void *arg) {
    http_loop *loop = arg;
    http_server *s = loop->server;
    http_conn *c = calloc(1, sizeof *c);
    struct bufferevent *bev = s->tls ? http_tls_bev_new(s->tls, base) : NULL;
    int refuse = 0;
    if (!bev) {
        if (!c && s->tls)
            return NULL; /* out of memory twice over: evhttp's own (plain) bufferevent would
                            need memory too; a client could at worst be served in clear
                            what it chose to send in clear */
        /* Out of memory for the TLS session: a plain bufferevent whose
         * bytes on_input throws away (closing 3), never served in clear. */
        refuse = s->tls != NULL;
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!bev) {
        free(c);
        return NULL;
    }
    if (!c)
        return bev; /* served, just not watched */
    c->loop = loop;
    c->bev = bev;
    c->is_tls = s->tls && !refuse;
    c->closing = refuse ? 3 : 0;
    c->fd = -1;
    c->content_length = -1;
    c->accepted_us = c->idle_since_us = http_now_us();
    if (c->is_tls)
        c->request_start_us = c->accepted_us; /* the handshake is part of the first request */
    bufferevent_incref(bev);
    c->input_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
    c->next = loop->conns;
    if (loop->conns)
        loop->conns->prev = c;
    loop->conns = c;
    loop->n_conns++;
    int open = atomic_fetch_add(&s->connections, 1) + 1;
    metric_inc(s->metrics.connections);
    if (open > s->opts.max_connections) {
        c->closing = 2; /* answered 503 by the sweep once its fd is known */
    }
    if (open >= s->opts.max_connections) {
        /* This loop stops at once; the others see the flag on their next
         * sweep or control event (a loop never touches another loop's
         * listener: that would wait on the other loop's lock). */
        atomic_store(&s->accept_paused, 1);
        http_loop_apply_listener_state(loop);
        for (int i = 0; i < s->n_loops; i++)
            if (&s->loops[i] != loop)
                event_active(s->loops[i].control_event, EV_READ, 0);
    }
    return bev;
}

static void on_reply_done(struct evhttp_request *req, void *arg) {
    (void)req;
    http_conn *c = arg;
    c->busy = 0;
    c->in_body = 0;
    c->head_bytes = c->body_bytes = 0;
    c->content_length = -1;
    c->idle_since_us = http_now_us();
    c->request_start_us = 0;
    /* A pipelined next request may already be waiting in the buffer: its
     * bytes get the same checks as bytes that arrive later. */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_cb_info waiting = {.orig_size = 0, .n_added = evbuffer_get_length(in)};
    on_input(in, &waiting, c);
}

void http_conn_request_started(http_loop *loop, struct evhttp_request *req) {
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    http_server *s = loop->server;
    if (fd < 0 || (size_t)fd >= s->n_conn_by_fd)
        return;
    http_conn *c = s->conn_by_fd[fd];
    if (!c || c->bev != bev) {
        /* Not yet in the table: find it among this loop's connections. */
        for (c = loop->conns; c && c->bev != bev; c = c->next)
            ;
        if (!c)
            return;
        remember_fd(c);
    }
    c->busy = 1;
    c->request_start_us = 0;
    evhttp_request_set_on_complete_cb(req, on_reply_done, c);
}

static void forget(http_loop *loop, http_conn *c) {
    http_server *s = loop->server;
    if (c->prev)
        c->prev->next = c->next;
    else
        loop->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    loop->n_conns--;
    if (c->fd >= 0 && (size_t)c->fd < s->n_conn_by_fd && s->conn_by_fd[c->fd] == c)
        s->conn_by_fd[c->fd] = NULL;
    if (c->input_cb)
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->input_cb);
    bufferevent_decref(c->bev); /* the last reference: closes the socket */
    free(c);
    atomic_fetch_sub(&s->connections, 1);
    metric_dec(s->metrics.connections);
}

/* bufferevent_free (evhttp letting go of the connection) clears the
 * callbacks; our reference keeps the bufferevent itself alive. */
static int held_by_evhttp(http_conn *c) {
    bufferevent_data_cb rcb = NULL, wcb = NULL;
    bufferevent_event_cb ecb = NULL;
    void *cbarg = NULL;
    bufferevent_getcb(c->bev, &rcb, &wcb, &ecb, &cbarg);
    return rcb || wcb || ecb;
}

void http_conn_sweep(evutil_socket_t fd_unused, short what, void *arg) {
    (void)fd_unused;
    (void)what;
    http_loop *loop = arg;
    http_server *s = loop->server;
    uint64_t now = http_now_us();
    const uint64_t read_us = (uint64_t)s->opts.read_timeout_ms * 1000u;
    const uint64_t idle_us = (uint64_t)s->opts.idle_timeout_ms * 1000u;
    http_conn *c = loop->conns;
    while (c) {
        http_conn *next = c->next;
        if (!held_by_evhttp(c)) {
            forget(loop, c);
            c = next;
            continue;
        }
        remember_fd(c);
        if (c->closing == 2 && c->fd >= 0 && c->is_tls && !http_tls_is_established(c->bev) &&
            now - c->accepted_us <= read_us) {
            /* Over the limit on TLS: the 503 can only go out encrypted, so
             * it waits for the handshake (bounded by read_timeout). */
        } else if (c->closing == 2 && c->fd >= 0) {
            answer_busy(c);
        } else if (c->closing == 3 && c->fd >= 0) {
            shutdown(c->fd, SHUT_RDWR); /* stays 3: on_input keeps dropping bytes */
        } else if (!c->busy && !c->closing) {
            if (c->request_start_us && now - c->request_start_us > read_us)
                shut(c); /* a request that never finishes arriving */
            else if (!c->request_start_us && idle_us && now - c->idle_since_us > idle_us)
                shut(c); /* keep-alive idle */
        }
        c = next;
    }
    if (atomic_load(&s->accept_paused) && atomic_load(&s->connections) < s->opts.max_connections)
        atomic_store(&s->accept_paused, 0);
    http_loop_apply_listener_state(loop);
}

int http_conn_table_init(http_server *s) {
    struct rlimit rl;
    size_t n = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (1u << 22))
        n = (size_t)rl.rlim_cur;
    s->conn_by_fd = calloc(n, sizeof *s->conn_by_fd);
    if (!s->conn_by_fd)
        return -1;
    s->n_conn_by_fd = n;
    return 0;
}

/* Loop thread: connections evhttp still holds whose answer has not all
 * been written to the socket yet (shutdown waits for them). */
int http_conn_unsent(http_loop *loop) {
    int n = 0;
    for (http_conn *c = loop->conns; c; c = c->next)
        if (held_by_evhttp(c) && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
            n++;
    return n;
}

/* Loop thread at shutdown, after evhttp_free: drop every reference. */
void http_conn_release_all(http_loop *loop) {
    while (loop->conns)
        forget(loop, loop->conns);
}
