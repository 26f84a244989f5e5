/*
 * server.c - the HTTP server's threads: one libevent loop per thread, each
 * with its own evhttp and its own listening socket on the shared port
 * (SO_REUSEPORT lets the kernel spread connections over the loops).
 *
 * Design:
 *  - A request is handled entirely on the loop that accepted its
 *    connection. Work for the model goes to the scheduler; the batcher
 *    thread posts the finished call back to that loop's done list and wakes
 *    the loop with event_active (libevent is built with pthread locking), so
 *    the answer is written by the thread that owns the connection.
 *  - Draining: listening sockets are closed, requests that still arrive on open
 *    connections are served with "Connection: close", and the controlling
 *    thread waits for the in-flight count to reach zero or for the timeout.
 *  - conn.c checks the raw bytes against the body and header limits and
 *    answers 413 / 431 in JSON before evhttp parses them; evhttp's own
 *    limits sit above ours as a backstop that bounds memory.
 *  - HTTPS, when configured, lives below evhttp: conn.c gives each
 *    connection an OpenSSL bufferevent (tls.c), so evhttp and conn.c's
 *    checks see the decrypted bytes, on the same port and loops.
 *
 * Threads: http_server_* from the controlling thread; everything else runs
 * on the loop threads, except http_post, which other threads call.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/thread.h>

#include "http_int.h"

uint64_t http_now_us(void) {
    return serving_now_us();
}

static void set_err(char *err, size_t len, const char *fmt, const char *a, const char *b) {
    if (err && len)
        snprintf(err, len, fmt, a, b);
}

/* Connection closed while its request waited for the scheduler: the call
 * must never touch the request again (libevent frees it next). */
static void on_connection_close(struct evhttp_connection *evcon, void *arg) {
    http_call *call = arg;
    (void)evcon;
    if (call) {
        /* A request the connection let go of (libevent detaches one that is
         * still being answered when the peer goes away, and leaves it to
         * us) is freed with the call; one still attached is freed by
         * libevent with the connection. */
        if (call->req && !evhttp_request_get_connection(call->req))
            call->orphan_req = call->req;
        call->req = NULL;
        if (call->on_gone)
            call->on_gone(call);
    }
}

static void handle_request(struct evhttp_request *req, void *arg) {
    http_loop *loop = arg;
    http_server *s = loop->server;
    http_call *call = calloc(1, sizeof *call);
    if (!call) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    call->loop = loop;
    call->req = req;
    call->start_us = http_now_us();
    atomic_fetch_add(&s->in_flight, 1);
    metric_inc(s->metrics.in_flight);
    http_request_id_make(req, call->request_id, sizeof call->request_id);
    http_conn_request_started(loop, req);
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(evcon, &addr, &port);
        http_copy(call->client, sizeof call->client, addr ? addr : "");
        /* While the call is pending, a closing connection tells it. */
        evhttp_connection_set_closecb(evcon, on_connection_close, call);
    }
    http_dispatch(call);
}

void http_post(http_call *call) {
    http_loop *loop = call->loop;
    pthread_mutex_lock(&loop->done_lock);
    call->next_done = loop->done_head;
    loop->done_head = call;
    pthread_mutex_unlock(&loop->done_lock);
    event_active(loop->done_event, EV_READ, 0);
}

static void on_done_event(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_loop *loop = arg;
    pthread_mutex_lock(&loop->done_lock);
    http_call *list = loop->done_head;
    loop->done_head = NULL;
    pthread_mutex_unlock(&loop->done_lock);
    /* The list is newest first; answer oldest first. */
    http_call *rev = NULL;
    while (list) {
        http_call *next = list->next_done;
        list->next_done = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        http_call *next = rev->next_done;
        atomic_fetch_sub(&loop->server->pending_jobs, 1);
        rev->on_posted(rev);
        rev = next;
    }
}

void http_loop_apply_listener_state(http_loop *loop) {
    http_server *s = loop->server;
    if (!loop->bound)
        return;
    if (atomic_load(&s->draining)) {
        /* Close the listening socket: new clients are refused at once
         * instead of waiting in a backlog nobody will accept from. */
        evhttp_del_accept_socket(loop->http, loop->bound);
        loop->bound = NULL;
        loop->listener = NULL;
        loop->listening = 0;
        return;
    }
    int want = !atomic_load(&s->accept_paused);
    if (want != loop->listening) {
        if (want)
            evconnlistener_enable(loop->listener);
        else
            evconnlistener_disable(loop->listener);
        loop->listening = want;
    }
}

static void on_control_event(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_loop_apply_listener_state(arg);
}

/* An event base with epoll's change list: evhttp turns a connection's read
 * and write events off and on again several times per request, and the
 * change list folds those into at most one epoll_ctl per fd per loop turn
 * (perf showed epoll_ctl as the largest cost of a cached answer). Safe here:
 * no fd is ever dup'ed. */
static struct event_base *new_loop_base(void) {
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

/* How long a stopping loop waits for answers already given to reach their
 * sockets (a client that stopped reading is not waited for beyond this). */
#define STOP_FLUSH_US 2000000u

/* Shutdown, on the loop's thread: close its store connection (pending
 * operations fail and their requests go on as in an outage), let the
 * answers already handed to evhttp finish writing (the drain counts a
 * request done when it is answered, and the bytes may still sit in the
 * connection's buffer), then stop. Re-armed as a 1 ms timer while bytes
 * remain. */
static void on_stop_event(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_loop *loop = arg;
    if (!loop->stop_deadline_us) {
        loop->stop_deadline_us = http_now_us() + STOP_FLUSH_US;
        kv_detach(loop->server->opts.shared_store, loop->base);
    }
    if (http_conn_unsent(loop) > 0 && http_now_us() < loop->stop_deadline_us) {
        struct timeval tick = {0, 1000};
        event_add(loop->stop_event, &tick);
        return;
    }
    event_base_loopbreak(loop->base);
}

static void *loop_main(void *arg) {
    http_loop *loop = arg;
    event_base_dispatch(loop->base);
    return NULL;
}

static int make_listener(http_server *s, http_loop *loop, char *err, size_t err_len) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    int rc = getaddrinfo(s->host, port, &hints, &res);
    if (rc != 0) {
        set_err(err, err_len, "cannot resolve host %s: %s", s->host, gai_strerror(rc));
        return -1;
    }
    loop->listener = evconnlistener_new_bind(
        loop->base, NULL, NULL,
        LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_FREE |
            LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_THREADSAFE,
        1024, res->ai_addr, (int)res->ai_addrlen);
    freeaddrinfo(res);
    if (!loop->listener) {
        char msg[64];
        snprintf(msg, sizeof msg, "%d: %s", s->port, strerror(errno));
        set_err(err, err_len, "cannot listen on %s port %s", s->host, msg);
        return -1;
    }
    if (s->port == 0) { /* the first loop picked a port; the others share it */
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        getsockname(evconnlistener_get_fd(loop->listener), (struct sockaddr *)&ss, &len);
        s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    loop->bound = evhttp_bind_listener(loop->http, loop->listener);
    loop->listening = 1;
    if (!loop->bound) {
        set_err(err, err_len, "cannot bind the HTTP server to the listener%s%s", "", "");
        return -1;
    }
    return 0;
}

static void register_metrics(http_server *s) {
    metrics_registry *r = s->registry;
    const char *ep_status[] = {"endpoint", "status"};
    const char *ep[] = {"endpoint"};
    const char *et[] = {"error_type"};
    s->metrics.requests = metrics_counter(r, "prediction_requests_total",
                                          "HTTP requests by endpoint and status code", 2, ep_status);
    metric_family *lat = metrics_histogram(r, "prediction_latency_seconds",
                                           "Request latency from arrival to answer", 1, ep,
                                           metrics_latency_buckets, metrics_n_latency_buckets);
    /* One series per endpoint label; routes sharing a label share it. */
    s->metrics.latency = calloc(http_n_routes, sizeof *s->metrics.latency);
    for (size_t i = 0; i < http_n_routes && lat && s->metrics.latency; i++)
        s->metrics.latency[i] = metric_series(lat, (const char *[]){http_routes[i].label});
    s->metrics.latency_other = lat ? metric_series(lat, (const char *[]){HTTP_LABEL_OTHER}) : NULL;
    s->metrics.model_errors = metrics_counter(r, "model_errors_total",
                                              "Failed predictions by error type", 1, et);
    metric_family *f;
    f = metrics_gauge(r, "aiserve_http_connections", "Open client connections", 0, NULL);
    s->metrics.connections = f ? metric_series(f, NULL) : NULL;
    f = metrics_gauge(r, "aiserve_http_requests_in_flight", "Requests received and not yet answered",
                      0, NULL);
    s->metrics.in_flight = f ? metric_series(f, NULL) : NULL;
    f = metrics_counter(r, "aiserve_requests_shed_total",
                        "Requests refused with 503 because a model queue was full", 0, NULL);
    s->metrics.shed = f ? metric_series(f, NULL) : NULL;
}

int http_server_create(const http_options *opts, serving_repo *repo, metrics_registry *metrics,
                       http_server **out, char *err, size_t err_len) {
    *out = NULL;
    static int threads_ready;
    if (!threads_ready) {
        if (evthread_use_pthreads() != 0) {
            set_err(err, err_len, "libevent has no pthread support%s%s", "", "");
            return -1;
        }
        threads_ready = 1;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, err_len, "out of memory%s%s", "", "");
        return -1;
    }
    s->opts = *opts;
    snprintf(s->host, sizeof s->host, "%s", opts->host ? opts->host : "127.0.0.1");
    snprintf(s->version, sizeof s->version, "%s", opts->version ? opts->version : "0");
    s->opts.host = s->host;
    s->opts.version = s->version;
    s->repo = repo;
    s->registry = metrics;
    s->port = opts->port;
    s->n_loops = opts->n_threads > 0 ? opts->n_threads : 1;
    s->limits = (http_limits){.max_text_chars = (size_t)opts->max_text_chars, .max_inputs = (size_t)opts->max_inputs};
    s->batch_limits = (http_limits){.max_text_chars = (size_t)opts->max_text_chars,
                                    .max_inputs = opts->max_batch_inputs};
    s->start_time = (double)time(NULL);
    /* Pointers into the caller's strings are not kept. */
    s->opts.tls_cert_file = s->opts.tls_key_file = s->opts.cors_allowed_origins = NULL;
    if (opts->tls_cert_file && opts->tls_cert_file[0] &&
        http_tls_create(opts->tls_cert_file, opts->tls_key_file ? opts->tls_key_file : "", &s->tls, err,
                        err_len) != 0) {
        free(s);
        return -1;
    }
    if (http_cors_create(opts->cors_allowed_origins, opts->cors_max_age_s, &s->cors, err, err_len) != 0) {
        http_tls_destroy(s->tls);
        free(s);
        return -1;
    }
    register_metrics(s);
    if (!(s->history = http_console_history(metrics))) {
        http_cors_destroy(s->cors);
        http_tls_destroy(s->tls);
        free(s);
        set_err(err, err_len, "out of memory%s%s", "", "");
        return -1;
    }
    *out = s;
    return 0;
}

int http_server_start(http_server *s, char *err, size_t err_len) {
    s->loops = calloc((size_t)s->n_loops, sizeof *s->loops);
    if (!s->loops || http_conn_table_init(s) != 0) {
        set_err(err, err_len, "out of memory%s%s", "", "");
        return -1;
    }
    /* evhttp's inactivity timeout is only a backstop: conn.c enforces the
     * read (whole request) and idle (keep-alive) timeouts precisely. */
    int64_t backstop_ms = (s->opts.read_timeout_ms > s->opts.idle_timeout_ms
                               ? s->opts.read_timeout_ms : s->opts.idle_timeout_ms) + 1000;
    struct timeval timeout = {.tv_sec = (time_t)(backstop_ms / 1000),
                              .tv_usec = (suseconds_t)(backstop_ms % 1000) * 1000};
    for (int i = 0; i < s->n_loops; i++) {
        http_loop *loop = &s->loops[i];
        loop->server = s;
        loop->index = i;
        pthread_mutex_init(&loop->done_lock, NULL);
        loop->base = new_loop_base();
        loop->http = loop->base ? evhttp_new(loop->base) : NULL;
        loop->done_event = loop->base ? event_new(loop->base, -1, 0, on_done_event, loop) : NULL;
        loop->sweep_event = loop->base ? event_new(loop->base, -1, EV_PERSIST, http_conn_sweep, loop) : NULL;
        loop->control_event = loop->base ? event_new(loop->base, -1, 0, on_control_event, loop) : NULL;
        loop->stop_event = loop->base ? event_new(loop->base, -1, 0, on_stop_event, loop) : NULL;
        if (!loop->base || !loop->http || !loop->done_event || !loop->sweep_event ||
            !loop->control_event || !loop->stop_event) {
            set_err(err, err_len, "cannot create an event loop%s%s", "", "");
            return -1;
        }
        /* Above conn.c's checks, which answer first and in JSON. */
        evhttp_set_max_body_size(loop->http, (ev_ssize_t)(2 * s->opts.max_body_bytes + 65536));
        evhttp_set_max_headers_size(loop->http, (ev_ssize_t)(4 * s->opts.max_header_bytes + 65536));
        evhttp_set_timeout_tv(loop->http, &timeout);
        evhttp_set_allowed_methods(loop->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                                   EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                                   EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
        evhttp_set_default_content_type(loop->http, "application/json");
        evhttp_set_gencb(loop->http, handle_request, loop);
        evhttp_set_bevcb(loop->http, http_conn_bev_create, loop);
        struct timeval sweep = {0, 100 * 1000};
        event_add(loop->sweep_event, &sweep);
        if (i == 0) {
            struct timeval second = {1, 0};
            loop->history_event = event_new(loop->base, -1, EV_PERSIST, http_console_tick, s);
            if (!loop->history_event || event_add(loop->history_event, &second) != 0) {
                set_err(err, err_len, "out of memory%s%s", "", "");
                return -1;
            }
        }
        if (make_listener(s, loop, err, err_len) != 0)
            return -1;
        if (s->opts.gateway && !(loop->gateway = gateway_loop_create(s->opts.gateway, loop->base))) {
            set_err(err, err_len, "cannot set up the LLM gateway of an event loop%s%s", "", "");
            return -1;
        }
        if (kv_attach(s->opts.shared_store, loop->base) != KV_OK) {
            set_err(err, err_len, "cannot set up the %s connection of an event loop%s", kv_backend_name(s->opts.shared_store), "");
            return -1;
        }
    }
    for (int i = 0; i < s->n_loops; i++) {
        if (pthread_create(&s->loops[i].thread, NULL, loop_main, &s->loops[i]) != 0) {
            set_err(err, err_len, "cannot start loop thread: %s%s", strerror(errno), "");
            for (int j = 0; j < i; j++) {
                event_base_loopbreak(s->loops[j].base);
                pthread_join(s->loops[j].thread, NULL);
                s->loops[j].thread = 0;
            }
            return -1;
        }
    }
    return 0;
}

int http_server_port(const http_server *s) {
    return s->port;
}

void http_server_stop_accepting(http_server *s) {
    atomic_store(&s->draining, 1);
    /* Each loop closes its own listener (on_control_event): touching
     * another thread's listener would wait on that loop's lock. */
    for (int i = 0; s->loops && i < s->n_loops; i++)
        if (s->loops[i].control_event)
            event_active(s->loops[i].control_event, EV_READ, 0);
}

int http_server_in_flight(const http_server *s) {
    return atomic_load(&((http_server *)s)->in_flight);
}

void http_server_destroy(http_server *s) {
    if (!s)
        return;
    /* Each loop closes its own store connection (its pending operations
     * end there, as after an outage), then stops. */
    for (int i = 0; s->loops && i < s->n_loops; i++)
        if (s->loops[i].base && s->loops[i].thread && s->loops[i].stop_event)
            event_active(s->loops[i].stop_event, EV_READ, 0);
    for (int i = 0; s->loops && i < s->n_loops; i++)
        if (s->loops[i].thread)
            pthread_join(s->loops[i].thread, NULL);
    /* Calls still held by schedulers come back through the done lists;
     * their connections are about to close, so they are only freed. */
    while (atomic_load(&s->pending_jobs) > 0) {
        for (int i = 0; i < s->n_loops; i++) {
            http_loop *loop = &s->loops[i];
            pthread_mutex_lock(&loop->done_lock);
            http_call *list = loop->done_head;
            loop->done_head = NULL;
            pthread_mutex_unlock(&loop->done_lock);
            while (list) {
                http_call *next = list->next_done;
                atomic_fetch_sub(&s->pending_jobs, 1);
                list->discard = 1;
                list->on_posted(list);
                list = next;
            }
        }
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; s->loops && i < s->n_loops; i++) {
        http_loop *loop = &s->loops[i];
        if (loop->http) /* frees its bound listener and every connection */
            evhttp_free(loop->http);
        http_conn_release_all(loop);
        gateway_loop_destroy(loop->gateway); /* after evhttp_free: closing connections cancelled their calls */
        if (loop->sweep_event)
            event_free(loop->sweep_event);
        if (loop->history_event)
            event_free(loop->history_event);
        if (loop->control_event)
            event_free(loop->control_event);
        if (loop->stop_event)
            event_free(loop->stop_event);
        if (loop->base && !loop->thread) /* never ran: close its connection here */
            kv_detach(s->opts.shared_store, loop->base);
        if (loop->done_event)
            event_free(loop->done_event);
        /* Freed bufferevents finish on the loop (deferred callbacks of TLS
         * bufferevents hold a reference until they run): let them. */
        for (int k = 0; loop->base && k < 8; k++)
            event_base_loop(loop->base, EVLOOP_NONBLOCK);
        if (loop->base)
            event_base_free(loop->base);
        guard_keys_view_release(&loop->keys_view);
        pthread_mutex_destroy(&loop->done_lock);
    }
    free(s->loops);
    free(s->conn_by_fd);
    free(s->metrics.latency);
    http_cors_destroy(s->cors);
    http_tls_destroy(s->tls); /* after evhttp_free: every SSL object is gone */
    obs_history_destroy(s->history);
    free(s);
}
