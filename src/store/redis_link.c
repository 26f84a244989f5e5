/*
 * redis_link.c - where a Redis is (the redis:// / unix:// URL parser that
 * both Redis clients share) and kv_redis_link: one blocking connection for
 * one worker thread (the batch job queue's), with the command timeout set
 * on the socket, connected on first use and again after any I/O error.
 *
 * The event loops never use a link: they talk to Redis through the async
 * backend (redis.c). A link is for threads whose work is to wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "store_int.h"

/* ---- URL ------------------------------------------------------------------- */

static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* A copy of s[0..n) with %XX decoded; NULL on a bad escape, NUL byte or no
 * memory. */
static char *decode(const char *s, size_t n) {
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hex_value(s[i + 1]) : -1;
            int lo = i + 2 < n ? hex_value(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        *o++ = ch;
    }
    *o = 0;
    return out;
}

static int parse_db(const char *s, int *db) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > 100000)
        return -1;
    *db = (int)v;
    return 0;
}

#define URL_FAIL(...) return snprintf(err, cap, __VA_ARGS__), KV_EINVAL

/* redis://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path[?db=N] */
int redis_target_parse(redis_target *t, const char *url, char *err, size_t cap) {
    const char *p;
    int is_unix = 0;
    if (strncmp(url, "redis://", 8) == 0)
        p = url + 8;
    else if (strncmp(url, "unix://", 7) == 0)
        p = url + 7, is_unix = 1;
    else if (strncmp(url, "rediss://", 9) == 0)
        URL_FAIL("redis URL: rediss:// (TLS) is not supported by this build's hiredis; use a TLS tunnel "
                 "(stunnel, a service mesh) and redis:// to it");
    else
        URL_FAIL("redis URL: must start with redis:// or unix:// (redis://[:password@]host[:port][/db])");
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            URL_FAIL("redis URL: write the password as redis://:password@host (or user:password@)");
        if (colon > p && !(t->user = decode(p, (size_t)(colon - p))))
            URL_FAIL("redis URL: bad %%-escape in the user name");
        if (!(t->password = decode(colon + 1, (size_t)(at - colon - 1))))
            URL_FAIL("redis URL: bad %%-escape in the password");
        p = at + 1;
    }
    if (is_unix) {
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || p[0] != '/')
            URL_FAIL("redis URL: unix:// needs an absolute socket path (unix:///run/redis.sock)");
        if (!(t->unix_path = decode(p, n)))
            URL_FAIL("redis URL: bad %%-escape in the socket path");
        if (q && (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, &t->db) != 0))
            URL_FAIL("redis URL: the only query a unix:// URL takes is ?db=N");
        snprintf(t->endpoint, sizeof t->endpoint, "%.290s", t->unix_path);
        return KV_OK;
    }
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(p, ']');
        if (!host_end)
            URL_FAIL("redis URL: unclosed [ in the host");
        p = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        p = host_end;
    }
    if (host_end == host)
        URL_FAIL("redis URL: no host (redis://host[:port][/db])");
    t->host = strndup(host, (size_t)(host_end - host));
    t->port = 6379;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535 || (*end && *end != '/'))
            URL_FAIL("redis URL: the port must be a number from 1 to 65535");
        t->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1] && parse_db(p + 1, &t->db) != 0)
        URL_FAIL("redis URL: the database after / must be a number (redis://host:6379/0)");
    else if (*p && *p != '/')
        URL_FAIL("redis URL: unexpected text after the host");
    snprintf(t->endpoint, sizeof t->endpoint, "%s%.250s%s:%d", strchr(t->host, ':') ? "[" : "", t->host,
             strchr(t->host, ':') ? "]" : "", t->port);
    return KV_OK;
}

void redis_target_free(redis_target *t) {
    free(t->host);
    free(t->unix_path);
    free(t->user);
    free(t->password);
    memset(t, 0, sizeof *t);
}

/* ---- synchronous links ------------------------------------------------------ */

struct kv_redis_link {
    redis_target t;
    char *prefix;
    struct timeval connect_timeout, command_timeout;
    redisContext *c; /* NULL until connected, and after a failure */
};

static struct timeval tv_of(uint64_t us) {
    return (struct timeval){.tv_sec = (time_t)(us / 1000000u), .tv_usec = (suseconds_t)(us % 1000000u)};
}

int kv_redis_link_create(const kv_redis_options *opts, kv_redis_link **out, char *err, size_t cap) {
    *out = NULL;
    if (!opts || !opts->url)
        return snprintf(err, cap, "redis: no URL"), KV_EINVAL;
    kv_redis_link *l = calloc(1, sizeof *l);
    if (!l)
        return snprintf(err, cap, "redis: out of memory"), KV_ENOMEM;
    int rc = redis_target_parse(&l->t, opts->url, err, cap);
    const char *prefix = opts->key_prefix ? opts->key_prefix : "aiserve:";
    if (rc == KV_OK && strlen(prefix) > 64)
        rc = KV_EINVAL, snprintf(err, cap, "redis: the key prefix is longer than 64 bytes");
    if (rc == KV_OK && !(l->prefix = strdup(prefix)))
        rc = KV_ENOMEM, snprintf(err, cap, "redis: out of memory");
    if (rc != KV_OK) {
        kv_redis_link_destroy(l);
        return rc;
    }
    l->connect_timeout = tv_of(opts->connect_timeout_us ? opts->connect_timeout_us : 1000000);
    l->command_timeout = tv_of(opts->command_timeout_us ? opts->command_timeout_us : 1000000);
    *out = l;
    return KV_OK;
}

const char *kv_redis_link_prefix(const kv_redis_link *l) { return l->prefix; }
const char *kv_redis_link_endpoint(const kv_redis_link *l) { return l->t.endpoint; }

/* Drops the connection (if any); the next command reconnects. */
static void link_reset(kv_redis_link *l) {
    if (l && l->c) {
        redisFree(l->c);
        l->c = NULL;
    }
}

void kv_redis_link_destroy(kv_redis_link *l) {
    if (!l)
        return;
    link_reset(l);
    redis_target_free(&l->t);
    free(l->prefix);
    free(l);
}

/* A reply that is an error, or NULL (the connection failed): 0 and the
 * reason in err. */
static int handshake_step(kv_redis_link *l, redisReply *r, const char *what, char *err, size_t cap) {
    if (r && r->type != REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        return 1;
    }
    snprintf(err, cap, "redis %s: %s: %.150s", l->t.endpoint, what,
             r ? r->str : l->c->errstr[0] ? l->c->errstr : "no answer");
    if (r)
        freeReplyObject(r);
    link_reset(l);
    return 0;
}

static int link_connect(kv_redis_link *l, char *err, size_t cap) {
    l->c = l->t.unix_path ? redisConnectUnixWithTimeout(l->t.unix_path, l->connect_timeout)
                          : redisConnectWithTimeout(l->t.host, l->t.port, l->connect_timeout);
    if (!l->c || l->c->err) {
        snprintf(err, cap, "redis %s: cannot connect: %.150s", l->t.endpoint, l->c ? l->c->errstr : "out of memory");
        link_reset(l);
        return -1;
    }
    if (redisSetTimeout(l->c, l->command_timeout) != REDIS_OK) {
        snprintf(err, cap, "redis %s: cannot set the command timeout", l->t.endpoint);
        link_reset(l);
        return -1;
    }
    if (l->t.password) {
        const char *argv[3] = {"AUTH", l->t.user ? l->t.user : l->t.password, l->t.password};
        if (!handshake_step(l, redisCommandArgv(l->c, l->t.user ? 3 : 2, argv, NULL), "AUTH", err, cap))
            return -1;
    }
    if (l->t.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", l->t.db);
        const char *argv[2] = {"SELECT", db};
        if (!handshake_step(l, redisCommandArgv(l->c, 2, argv, NULL), "SELECT", err, cap))
            return -1;
    }
    return 0;
}

void *kv_redis_link_command(kv_redis_link *l, int argc, const char **argv, const size_t *lens, char *err,
                            size_t cap) {
    if (!l->c && link_connect(l, err, cap) != 0)
        return NULL;
    redisReply *r = redisCommandArgv(l->c, argc, argv, lens);
    if (!r) {
        snprintf(err, cap, "redis %s: %.150s", l->t.endpoint,
                 l->c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK) ? "no answer in time"
                                                                                     : l->c->errstr);
        link_reset(l); /* a late answer must not be read as the next command's */
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, cap, "redis %s: %.200s", l->t.endpoint, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}
