/*
 * upstream.c - HTTP calls to upstream LLM providers on libcurl's multi
 * interface, driven by one libevent base (the HTTP loop's): no thread per
 * call; curl tells us which sockets to watch and when to wake
 * (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION), and the loop tells
 * curl what happened (curl_multi_socket_action), as in curl's hiperfifo
 * example.
 *
 * Design:
 *  - One CURLM per loop: its connection cache keeps upstream connections
 *    alive between calls (keep-alive reuse, TLS sessions), and its DNS
 *    cache is shared by its transfers. TLS peers are verified (curl's
 *    default) against the system's CA store.
 *  - A transfer reports its head once (status, Retry-After, whether the
 *    body is text/event-stream), then body bytes as they arrive, then
 *    exactly one on_done, unless it was cancelled. Callbacks never run
 *    after gw_transfer_cancel.
 *  - A callback that wants the transfer stopped returns non-zero (curl
 *    forbids removing a handle from inside its own callbacks); the
 *    transfer then ends with GW_XFER_ABORTED.
 *
 * Threads: everything on the loop's thread.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway_int.h"

struct gw_multi {
    CURLM *multi;
    struct event_base *base;
    struct event *timer;
    int running;
};

struct gw_transfer {
    gw_multi *m;
    CURL *easy;
    struct curl_slist *headers;
    gw_transfer_ops ops;
    void *ud;
    int head_done;
    int status;
    double retry_after_s;
    int event_stream;
    int aborted;
    char error[CURL_ERROR_SIZE];
};

typedef struct sock_ctx {
    struct event *ev;
    gw_multi *m;
} sock_ctx;

static void check_done(gw_multi *m);

static void on_socket_event(evutil_socket_t fd, short kind, void *arg) {
    gw_multi *m = arg;
    int action = ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(m->multi, fd, action, &m->running);
    check_done(m);
}

static void on_timer(evutil_socket_t fd, short kind, void *arg) {
    (void)fd;
    (void)kind;
    gw_multi *m = arg;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &m->running);
    check_done(m);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy;
    gw_multi *m = userp;
    sock_ctx *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sc) {
            event_free(sc->ev);
            free(sc);
            curl_multi_assign(m->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!sc) {
        if (!(sc = calloc(1, sizeof *sc)))
            return -1;
        sc->m = m;
        curl_multi_assign(m->multi, s, sc);
    } else {
        event_free(sc->ev);
    }
    sc->ev = event_new(m->base, s, kind, on_socket_event, m);
    if (!sc->ev)
        return -1;
    event_add(sc->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    gw_multi *m = userp;
    if (timeout_ms < 0) {
        evtimer_del(m->timer);
    } else {
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        evtimer_add(m->timer, &tv);
    }
    return 0;
}

gw_multi *gw_multi_create(struct event_base *base) {
    static int initialised; /* the first loop's thread, before any other starts a transfer */
    if (!initialised) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        initialised = 1;
    }
    gw_multi *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base = base;
    m->multi = curl_multi_init();
    m->timer = evtimer_new(base, on_timer, m);
    if (!m->multi || !m->timer) {
        gw_multi_destroy(m);
        return NULL;
    }
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    /* CURLMOPT_MAXCONNECTS stays curl's default (four times the transfers
     * added): a fixed cap below the calls in flight made most calls open a
     * new connection under load (bench/README.md, gateway section). */
    return m;
}

static void transfer_free(gw_transfer *t) {
    if (t->easy) {
        curl_multi_remove_handle(t->m->multi, t->easy);
        curl_easy_cleanup(t->easy);
    }
    curl_slist_free_all(t->headers);
    free(t);
}

void gw_multi_destroy(gw_multi *m) {
    if (!m)
        return;
    if (m->multi) /* the gateway cancelled every transfer first */
        curl_multi_cleanup(m->multi);
    if (m->timer)
        event_free(m->timer);
    free(m);
}

/* Parses "Retry-After: seconds" (an HTTP date is read as unknown). */
static double parse_retry_after(const char *v, size_t n) {
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, v, n);
    buf[n] = 0;
    char *end;
    double s = strtod(buf, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    return end != buf && *end == 0 && s >= 0 && s < 86400 ? s : -1;
}

static int deliver_head(gw_transfer *t) {
    if (t->head_done)
        return 0;
    t->head_done = 1;
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    t->status = (int)code;
    return t->ops.on_head(t->ud, t->status, t->retry_after_s, t->event_stream);
}

static size_t header_cb(char *line, size_t size, size_t n, void *ud) {
    gw_transfer *t = ud;
    size_t len = size * n;
    if (t->aborted)
        return 0;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) { /* a new header block (after a 100 Continue) */
        t->retry_after_s = -1;
        t->event_stream = 0;
        return len;
    }
    if (len <= 2 && (line[0] == '\r' || line[0] == '\n')) { /* the end of a block */
        long code = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && deliver_head(t) != 0) {
            t->aborted = 1;
            return 0;
        }
        return len;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return len;
    size_t name = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vlen = len - name - 1;
    while (vlen && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    if (name == 11 && strncasecmp(line, "retry-after", 11) == 0)
        t->retry_after_s = parse_retry_after(v, vlen);
    else if (name == 12 && strncasecmp(line, "content-type", 12) == 0)
        t->event_stream = vlen >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
    return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud) {
    gw_transfer *t = ud;
    size_t len = size * n;
    if (t->aborted || deliver_head(t) != 0 || t->ops.on_body(t->ud, data, len) != 0) {
        t->aborted = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    return len;
}

static void check_done(gw_multi *m) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        gw_transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode rc = msg->data.result;
        int result = GW_XFER_OK;
        if (t->aborted)
            result = GW_XFER_ABORTED;
        else if (rc == CURLE_OPERATION_TIMEDOUT)
            result = GW_XFER_TIMEOUT;
        else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY ||
                 rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION)
            result = GW_XFER_CONNECT;
        else if (rc == CURLE_OUT_OF_MEMORY)
            result = GW_XFER_ENOMEM;
        else if (rc != CURLE_OK)
            result = GW_XFER_BROKEN;
        else if (deliver_head(t) != 0) /* an answer with no body */
            result = GW_XFER_ABORTED;
        if (result != GW_XFER_OK && !t->error[0])
            snprintf(t->error, sizeof t->error, "%s", curl_easy_strerror(rc));
        gw_transfer_ops ops = t->ops;
        void *ud = t->ud;
        char error[CURL_ERROR_SIZE];
        snprintf(error, sizeof error, "%s", t->error);
        transfer_free(t);
        ops.on_done(ud, result, error);
    }
}

gw_transfer *gw_transfer_start(gw_multi *m, const gw_transfer_request *req, const gw_transfer_ops *ops, void *ud) {
    gw_transfer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->m = m;
    t->ops = *ops;
    t->ud = ud;
    t->retry_after_s = -1;
    t->easy = curl_easy_init();
    int ok = t->easy != NULL;
    for (size_t i = 0; ok && i < req->n_headers; i++) {
        struct curl_slist *h = curl_slist_append(t->headers, req->headers[i]);
        ok = h != NULL;
        if (ok)
            t->headers = h;
    }
    if (ok) {
        struct curl_slist *h = curl_slist_append(t->headers, "Expect:"); /* no 100-continue round trip */
        ok = h != NULL;
        if (ok)
            t->headers = h;
    }
    if (!ok) {
        curl_slist_free_all(t->headers);
        if (t->easy)
            curl_easy_cleanup(t->easy);
        free(t);
        return NULL;
    }
    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(req->connect_timeout_us / 1000));
    if (req->timeout_us)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_us / 1000));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (curl_multi_add_handle(m->multi, e) != CURLM_OK) {
        curl_slist_free_all(t->headers);
        curl_easy_cleanup(e);
        free(t);
        return NULL;
    }
    return t;
}

void gw_transfer_cancel(gw_transfer *t) {
    if (t)
        transfer_free(t);
}
