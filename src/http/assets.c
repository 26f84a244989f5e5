/*
 * assets.c - GET /docs, GET /ui and their files: the pages embedded in the
 * binary (web/web_assets.h), served by URL path.
 *
 * A file is stored gzip-compressed. A client that accepts gzip (every
 * browser) gets those bytes as they are, with Content-Encoding: gzip; any
 * other gets them inflated (zlib) on the way out. Every answer carries a
 * strong ETag, Cache-Control: no-cache (a browser revalidates, and gets 304
 * Not Modified while the binary is the same), Vary: Accept-Encoding,
 * X-Content-Type-Options: nosniff and a Content-Security-Policy that allows
 * only this server's own scripts (no inline script, no eval, no other
 * origin), so a page can run nothing the binary did not bring.
 *
 * Loop thread only; the files are read-only data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <zlib.h>

#include "http_int.h"
#include "web_assets.h"

/* The console allows nothing inline at all; Swagger UI (/docs) writes
 * style attributes into its markup and draws its icons from data: URLs. */
#define CSP_COMMON "default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; " \
                   "form-action 'none'; frame-ancestors 'none'; "
#define CSP_STRICT CSP_COMMON "style-src 'self'; img-src 'self'"
#define CSP_DOCS CSP_COMMON "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:"

static const web_asset *find(const char *path) {
    for (size_t i = 0; i < web_n_assets; i++)
        if (strcmp(web_assets[i].path, path) == 0)
            return &web_assets[i];
    return NULL;
}

/* Whether an Accept-Encoding value takes gzip: a "gzip" (or "*") element
 * whose q is not zero (RFC 9110, 12.5.3). */
static int accepts_gzip(const char *value) {
    if (!value)
        return 0;
    int star = 0;
    while (*value) {
        value += strspn(value, " \t,");
        size_t n = strcspn(value, ",;");
        size_t name = n;
        while (name && (value[name - 1] == ' ' || value[name - 1] == '\t'))
            name--;
        const char *end = value + strcspn(value, ",");
        const char *q = strstr(value, "q=");
        int zero = q && q < end && strtod(q + 2, NULL) == 0.0;
        if (name == 4 && strncasecmp(value, "gzip", 4) == 0)
            return !zero;
        if (name == 1 && value[0] == '*')
            star = !zero;
        value = end;
    }
    return star;
}

/* The file inflated into a new buffer; NULL when out of memory (the data
 * is the build's own gzip output, so it cannot be malformed). */
static struct evbuffer *inflated(const web_asset *a) {
    struct evbuffer *body = evbuffer_new();
    struct evbuffer_iovec v;
    if (!body || evbuffer_reserve_space(body, (ev_ssize_t)(a->size ? a->size : 1), &v, 1) < 1) {
        if (body)
            evbuffer_free(body);
        return NULL;
    }
    z_stream z = {0};
    int ok = inflateInit2(&z, 16 + MAX_WBITS) == Z_OK; /* 16: a gzip wrapper */
    if (ok) {
        z.next_in = (Bytef *)a->gz;
        z.avail_in = (uInt)a->gz_size;
        z.next_out = v.iov_base;
        z.avail_out = (uInt)a->size;
        ok = inflate(&z, Z_FINISH) == Z_STREAM_END && z.total_out == a->size;
        inflateEnd(&z);
    }
    v.iov_len = ok ? a->size : 0;
    evbuffer_commit_space(body, &v, 1);
    if (!ok) {
        evbuffer_free(body);
        return NULL;
    }
    return body;
}

void http_static(http_call *call) {
    /* The row's pattern names the file: "/docs", or "/docs/" + {file}. */
    const char *pattern = call->route->pattern;
    char path[256];
    const char *hole = strchr(pattern, '{');
    snprintf(path, sizeof path, "%.*s%s", hole ? (int)(hole - pattern) : (int)strlen(pattern), pattern,
             hole ? call->params.file : "");
    const web_asset *a = find(path);
    if (!a) {
        http_reply_error(call, HTTP_ERR_NOT_FOUND, "no such file: %s", path);
        return;
    }
    http_add_header(call, "ETag", a->etag);
    http_add_header(call, "Cache-Control", "no-cache");
    http_add_header(call, "Vary", "Accept-Encoding");
    http_add_header(call, "X-Content-Type-Options", "nosniff");
    http_add_header(call, "Content-Security-Policy", strncmp(path, "/docs", 5) == 0 ? CSP_DOCS : CSP_STRICT);
    http_add_header(call, "Referrer-Policy", "no-referrer");
    const char *match = http_header(call, "If-None-Match");
    if (match && (strstr(match, a->etag) || strcmp(match, "*") == 0)) {
        http_reply_buffer(call, 304, NULL, NULL);
        return;
    }
    struct evbuffer *body;
    if (accepts_gzip(http_header(call, "Accept-Encoding"))) {
        body = evbuffer_new();
        if (body)
            evbuffer_add_reference(body, a->gz, a->gz_size, NULL, NULL);
        http_add_header(call, "Content-Encoding", "gzip");
    } else {
        body = inflated(a);
    }
    if (!body) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    http_reply_buffer(call, 200, a->type, body);
}
