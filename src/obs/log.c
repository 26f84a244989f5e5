/*
 * log.c - the JSON-lines logger (see obs.h), and the UTF-8 helpers the obs
 * module shares (obs_int.h).
 *
 * Design:
 *  - A line is built in a stack buffer (the heap only for long lines): the
 *    time/level/msg prefix is written by hand, then the caller's fields
 *    object is dumped by jansson and spliced in after it, so the common case
 *    allocates nothing beyond what the caller's json_t already holds.
 *  - The level, the fd and the dropped-line count are process-wide atomics;
 *    reading them takes no lock.
 *  - The write itself holds one process-wide mutex: write(2) is atomic for
 *    pipes only up to PIPE_BUF bytes, and not at all for sockets or ttys, so
 *    without the lock long lines from two threads could interleave.
 *  - The logger never blocks on EAGAIN: a line that cannot start is dropped
 *    and counted; one that has started gets about 100 ms to finish.
 */
#include "obs.h"
#include "obs_int.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = LOG_INFO;
static _Atomic int g_fd = 1;
static _Atomic uint64_t g_dropped;
static pthread_mutex_t g_write_lock = PTHREAD_MUTEX_INITIALIZER;

/* Compact, and reals with 15 significant digits: a logged 12.345 reads
 * "12.345", not "12.345000000000001" (logs are for people; metrics carry
 * the exact numbers). */
#define LOG_DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

/* How long a line that is partly written may wait for the reader. */
#define LOG_FINISH_MS 100

/* ---- UTF-8 ---- */

/* Length of the well-formed sequence at s (at most n bytes), or 0. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

size_t log_utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq_len(u + i, n - i);
        if (!k)
            break;
        i += k;
    }
    return i;
}

size_t log_utf8_scrub(const char *s, size_t n, char *out) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t k = utf8_seq_len(u + i, n - i);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    return o;
}

/* ---- levels ---- */

int log_level_parse(const char *s, log_level *out) {
    static const struct {
        const char *name;
        log_level level;
    } names[] = {
        {"debug", LOG_DEBUG}, {"info", LOG_INFO},   {"warn", LOG_WARN},   {"warning", LOG_WARN},
        {"error", LOG_ERROR}, {"critical", LOG_ERROR}, {"fatal", LOG_ERROR},
    };
    if (!s || !out)
        return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

const char *log_level_name(log_level l) {
    switch (l) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warning";
    case LOG_ERROR:
        return "error";
    }
    return "unknown";
}

void log_set_level(log_level l) {
    int v = (int)l;
    v = v < LOG_DEBUG ? LOG_DEBUG : v > LOG_ERROR ? LOG_ERROR : v;
    atomic_store_explicit(&g_level, v, memory_order_relaxed);
}

log_level log_get_level(void) { return (log_level)atomic_load_explicit(&g_level, memory_order_relaxed); }

int log_enabled(log_level l) { return (int)l >= atomic_load_explicit(&g_level, memory_order_relaxed); }

void log_set_output(int fd) { atomic_store_explicit(&g_fd, fd, memory_order_relaxed); }

uint64_t log_dropped_lines(void) { return atomic_load_explicit(&g_dropped, memory_order_relaxed); }

/* ---- line buffer ---- */

typedef struct line_buf {
    char *p;
    size_t len, cap;
    int heap, oom;
    char stack[1024];
} line_buf;

static void lb_init(line_buf *b) {
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
    b->heap = 0;
    b->oom = 0;
}

static void lb_free(line_buf *b) {
    if (b->heap)
        free(b->p);
}

/* Makes room for `extra` more bytes; 0 or -1 (oom set). */
static int lb_reserve(line_buf *b, size_t extra) {
    if (b->oom)
        return -1;
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = b->heap ? realloc(b->p, cap) : malloc(cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    if (!b->heap)
        memcpy(p, b->p, b->len);
    b->p = p;
    b->cap = cap;
    b->heap = 1;
    return 0;
}

static void lb_put(line_buf *b, const char *s, size_t n) {
    if (lb_reserve(b, n) == 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static void lb_puts(line_buf *b, const char *s) { lb_put(b, s, strlen(s)); }

/* Appends s as a JSON string literal (quotes included), scrubbing invalid
 * UTF-8. */
static void lb_put_json_string(line_buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(s);
    lb_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq_len((const unsigned char *)s + i, n - i);
        unsigned char c = (unsigned char)s[i];
        if (!k) {
            lb_put(b, "\xEF\xBF\xBD", 3);
            i++;
            continue;
        }
        if (k > 1) {
            lb_put(b, s + i, k);
        } else if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            lb_put(b, e, 2);
        } else if (c == '\n') {
            lb_put(b, "\\n", 2);
        } else if (c == '\r') {
            lb_put(b, "\\r", 2);
        } else if (c == '\t') {
            lb_put(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            lb_put(b, e, 6);
        } else {
            lb_put(b, s + i, 1);
        }
        i += k;
    }
    lb_put(b, "\"", 1);
}

/* Appends the JSON dump of `obj` (compact, insertion order). */
static void lb_put_json(line_buf *b, const json_t *obj) {
    size_t room = b->oom ? 0 : b->cap - b->len;
    size_t need = json_dumpb(obj, room ? b->p + b->len : NULL, room, LOG_DUMP_FLAGS);
    if (need == 0) {
        b->oom = 1; /* jansson failed: ENOMEM or a value it cannot encode */
        return;
    }
    if (need <= room) {
        b->len += need;
        return;
    }
    if (lb_reserve(b, need) != 0)
        return;
    if (json_dumpb(obj, b->p + b->len, need, LOG_DUMP_FLAGS) != need) {
        b->oom = 1;
        return;
    }
    b->len += need;
}

static int is_reserved_key(const char *k) {
    return strcmp(k, "time") == 0 || strcmp(k, "level") == 0 || strcmp(k, "msg") == 0;
}

/* Returns fields with reserved keys renamed to "fields.<key>": fields itself
 * (a new reference) when none is reserved, else a new object. */
static json_t *rename_reserved(json_t *fields) {
    const char *key;
    json_t *value;
    int any = 0;
    json_object_foreach(fields, key, value) {
        if (is_reserved_key(key))
            any = 1;
    }
    if (!any)
        return json_incref(fields);
    json_t *copy = json_object();
    if (!copy)
        return NULL;
    json_object_foreach(fields, key, value) {
        if (is_reserved_key(key)) {
            char renamed[32];
            snprintf(renamed, sizeof renamed, "fields.%s", key);
            json_object_set(copy, renamed, value);
        } else {
            json_object_set(copy, key, value);
        }
    }
    return copy;
}

/* ---- output ---- */

/* Writes the whole line; 0, or -1 if it was dropped. Caller holds
 * g_write_lock. */
static int write_line(int fd, const char *p, size_t n) {
    size_t off = 0;
    struct timespec deadline = {0, 0};
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (off == 0)
                return -1; /* nothing written yet: drop the whole line */
            /* Part of the line is out: finish it if the reader catches up
             * soon, so the next line does not start mid-line. */
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (deadline.tv_sec == 0 && deadline.tv_nsec == 0) {
                deadline = now;
                deadline.tv_nsec += LOG_FINISH_MS * 1000000L;
                if (deadline.tv_nsec >= 1000000000L) {
                    deadline.tv_sec++;
                    deadline.tv_nsec -= 1000000000L;
                }
            }
            long left_ms = (deadline.tv_sec - now.tv_sec) * 1000L + (deadline.tv_nsec - now.tv_nsec) / 1000000L;
            if (left_ms <= 0)
                return -1;
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            (void)poll(&pfd, 1, (int)left_ms);
            continue;
        }
        return -1; /* EBADF, EPIPE, ENOSPC, ...: nothing better to do */
    }
    return 0;
}

void log_json(log_level level, const char *msg, json_t *fields) {
    if (!log_enabled(level)) {
        json_decref(fields);
        return;
    }
    if ((int)level < LOG_DEBUG)
        level = LOG_DEBUG;
    if ((int)level > LOG_ERROR)
        level = LOG_ERROR;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char head[96];
    int hn = snprintf(head, sizeof head,
                      "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"msg\":",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      ts.tv_nsec / 1000000L, log_level_name(level));

    line_buf b;
    lb_init(&b);
    lb_put(&b, head, (size_t)hn);
    lb_put_json_string(&b, msg ? msg : "");

    if (fields && !json_is_object(fields)) {
        json_t *wrapped = json_object();
        if (wrapped)
            json_object_set(wrapped, "fields", fields);
        json_decref(fields);
        fields = wrapped;
    }
    if (fields && json_object_size(fields) > 0) {
        json_t *out = rename_reserved(fields);
        if (!out) {
            b.oom = 1;
        } else {
            size_t at = b.len;
            lb_put_json(&b, out);
            if (!b.oom)
                b.p[at] = ','; /* splice: {"a":1} becomes ,"a":1} */
            json_decref(out);
        }
    } else {
        lb_put(&b, "}", 1);
    }
    json_decref(fields);
    lb_puts(&b, "\n");

    if (b.oom) {
        atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
        lb_free(&b);
        return;
    }
    int fd = atomic_load_explicit(&g_fd, memory_order_relaxed);
    pthread_mutex_lock(&g_write_lock);
    int rc = write_line(fd, b.p, b.len);
    pthread_mutex_unlock(&g_write_lock);
    if (rc != 0)
        atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
    lb_free(&b);
}

void log_event(log_level level, const char *msg, ...) {
    int enabled = log_enabled(level);
    json_t *fields = enabled ? json_object() : NULL;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key)
            break;
        json_t *value = va_arg(ap, json_t *);
        if (!fields) {
            json_decref(value); /* disabled, or ENOMEM: the values are still ours */
            continue;
        }
        /* set_new takes value even on failure (an invalid UTF-8 key). */
        json_object_set_new(fields, key, value ? value : json_null());
    }
    va_end(ap);
    if (!enabled)
        return;
    if (!fields) {
        atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
        return;
    }
    log_json(level, msg, fields);
}
