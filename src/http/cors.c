/*
 * cors.c - Cross-Origin Resource Sharing: which web pages (origins) may call
 * the API from a browser, and the answers to the browser's preflights.
 *
 * Design:
 *  - An allow-list of origins (`cors.allowed_origins`, comma-separated
 *    "scheme://host[:port]" as browsers send them), or "*" for any origin.
 *    Empty (the default): no CORS header on any answer, so browsers keep
 *    other sites' pages from reading anything.
 *  - Every answer (errors included, so a page can read why it failed)
 *    goes through http_cors_add_headers from reply.c: with a list,
 *    `Vary: Origin` always (the answer depends on the Origin header) and
 *    the request's own Origin echoed in Access-Control-Allow-Origin when it
 *    is listed; with "*", `Access-Control-Allow-Origin: *` on every answer
 *    (the same for everyone, so nothing to vary on). Never
 *    Allow-Credentials: API keys travel in headers, not cookies.
 *  - A preflight (OPTIONS with Origin and Access-Control-Request-Method) on
 *    a known route is answered here, before the API key check (browsers
 *    send no credentials on a preflight): 204 with the route's methods,
 *    the allowed request headers and Max-Age; a disallowed origin, method
 *    or request header gets 400 `cors_forbidden` in the error shape, as
 *    Starlette's CORSMiddleware answers 400 "Disallowed CORS origin".
 *    Other OPTIONS requests are routed as before (405).
 *
 * The configuration is parsed once at start and read-only afterwards; the
 * functions taking a call run on the call's loop thread.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/keyvalq_struct.h>

#include "http_int.h"

struct http_cors {
    int allow_any;     /* "*" */
    size_t n_origins;  /* listed origins, lower case */
    char **origins;
    char max_age[24];  /* seconds, for Access-Control-Max-Age */
};

/* Request headers a page may send (the safelisted ones included, for when
 * their values are not safelisted: Content-Type: application/json). */
static const char *const allowed_headers[] = {
    "Accept", "Accept-Language", "Content-Language", "Content-Type", "Authorization",
    "X-API-Key", "X-Request-ID", "X-User-ID", "Cache-Control",
};
static const char allowed_headers_value[] =
    "Accept, Accept-Language, Content-Language, Content-Type, Authorization, X-API-Key, X-Request-ID, "
    "X-User-ID, Cache-Control";
/* Response headers a page's script may read. */
static const char exposed_headers_value[] =
    "X-Request-ID, X-Cache, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, "
    "X-Route-Reason, X-Gateway-Model, X-Gateway-Fallbacks, X-Semantic-Similarity";

/* Whether s[0..n) is an origin as browsers serialize it: scheme "://" host
 * [":" port], lower case, nothing after. Writes the lower-cased copy. */
static int parse_origin(const char *s, size_t n, char *out) {
    size_t i = 0;
    for (; i < n; i++) {
        char c = (char)(s[i] | 0x20);
        if (!((c >= 'a' && c <= 'z') || (i > 0 && ((c >= '0' && c <= '9') || s[i] == '+' || s[i] == '-' ||
                                                     s[i] == '.'))))
            break;
    }
    if (i == 0 || n - i < 4 || memcmp(s + i, "://", 3) != 0)
        return 0;
    size_t host = i + 3, j = host;
    if (j < n && s[j] == '[') { /* an IPv6 literal */
        j++;
        while (j < n && s[j] && strchr("0123456789abcdefABCDEF:.", s[j]) != NULL)
            j++;
        if (j >= n || s[j] != ']')
            return 0;
        j++;
    } else {
        while (j < n && s[j] && strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", s[j]))
            j++;
        if (j == host)
            return 0;
    }
    if (j < n && s[j] == ':') {
        size_t p = ++j;
        long port = 0;
        while (j < n && s[j] >= '0' && s[j] <= '9' && j - p < 6)
            port = port * 10 + (s[j++] - '0');
        if (j == p || port < 1 || port > 65535)
            return 0;
    }
    if (j != n)
        return 0; /* a path, a trailing slash, a query, a space */
    for (size_t k = 0; k < n; k++)
        out[k] = (s[k] >= 'A' && s[k] <= 'Z') ? (char)(s[k] | 0x20) : s[k];
    out[n] = 0;
    return 1;
}

void http_cors_destroy(http_cors *c) {
    if (!c)
        return;
    for (size_t i = 0; i < c->n_origins; i++)
        free(c->origins[i]);
    free(c->origins);
    free(c);
}

int http_cors_create(const char *allowed, int64_t max_age_s, http_cors **out, char *err, size_t err_len) {
    *out = NULL;
    http_cors *c = calloc(1, sizeof *c);
    size_t cap = 1;
    for (const char *p = allowed ? allowed : ""; *p; p++)
        cap += *p == ',';
    if (c)
        c->origins = calloc(cap, sizeof *c->origins);
    if (!c || !c->origins) {
        http_cors_destroy(c);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    snprintf(c->max_age, sizeof c->max_age, "%lld", (long long)(max_age_s > 0 ? max_age_s : 0));
    const char *p = allowed ? allowed : "";
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        size_t n = (size_t)(b - a);
        p = *end ? end + 1 : end;
        if (n == 0)
            continue; /* "a, b," */
        if (n == 1 && *a == '*') {
            c->allow_any = 1;
            continue;
        }
        char *origin = malloc(n + 1);
        if (!origin) {
            http_cors_destroy(c);
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        if (!parse_origin(a, n, origin)) {
            snprintf(err, err_len,
                     "cors.allowed_origins: '%.*s' is not an origin: write scheme://host[:port] as browsers "
                     "send it (\"https://app.example.com\", \"http://localhost:3000\"; no path or trailing "
                     "slash), or * for any origin",
                     (int)(n < 200 ? n : 200), a);
            free(origin);
            http_cors_destroy(c);
            return -1;
        }
        c->origins[c->n_origins++] = origin;
    }
    if (c->allow_any && c->n_origins) {
        snprintf(err, err_len,
                 "cors.allowed_origins: * allows every origin; list either * alone or the origins");
        http_cors_destroy(c);
        return -1;
    }
    *out = c;
    return 0;
}

static int enabled(const http_cors *c) {
    return c && (c->allow_any || c->n_origins);
}

static int origin_allowed(const http_cors *c, const char *origin) {
    if (c->allow_any)
        return 1;
    for (size_t i = 0; i < c->n_origins; i++)
        if (strcmp(c->origins[i], origin) == 0)
            return 1;
    return 0;
}

int http_cors_is_preflight(struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    return evhttp_request_get_command(req) == EVHTTP_REQ_OPTIONS && evhttp_find_header(h, "Origin") &&
           evhttp_find_header(h, "Access-Control-Request-Method");
}

/* Whether method is one of the comma-separated list (methods are
 * case-sensitive). */
static int method_listed(const char *methods, const char *method) {
    size_t n = strlen(method);
    for (const char *p = methods; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t k = strcspn(p, ", ");
        if (k == n && k && memcmp(p, method, n) == 0)
            return 1;
        p += k;
    }
    return 0;
}

/* Whether every name in the Access-Control-Request-Headers list is allowed. */
static int headers_allowed(const char *list) {
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t k = strcspn(p, ", \t");
        if (k == 0)
            break;
        int ok = 0;
        for (size_t i = 0; i < sizeof allowed_headers / sizeof allowed_headers[0] && !ok; i++)
            ok = strlen(allowed_headers[i]) == k && strncasecmp(allowed_headers[i], p, k) == 0;
        if (!ok)
            return 0;
        p += k;
    }
    return 1;
}

void http_cors_preflight(http_call *call, const char *methods) {
    struct evhttp_request *req = call->req;
    const http_cors *c = call->loop->server->cors;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *origin = evhttp_find_header(h, "Origin");
    const char *method = evhttp_find_header(h, "Access-Control-Request-Method");
    const char *headers = evhttp_find_header(h, "Access-Control-Request-Headers");
    if (!enabled(c) || !origin_allowed(c, origin)) {
        http_reply_error(call, HTTP_ERR_CORS_FORBIDDEN,
                         "Disallowed CORS origin: %.200s is not in cors.allowed_origins%s", origin,
                         enabled(c) ? "" : " (empty: no origin is allowed)");
        return;
    }
    if (!method_listed(methods, method)) {
        http_reply_error(call, HTTP_ERR_CORS_FORBIDDEN, "Disallowed CORS method: %s takes %s, not %.32s",
                         http_call_label(call), methods, method);
        return;
    }
    if (headers && !headers_allowed(headers)) {
        http_reply_error(call, HTTP_ERR_CORS_FORBIDDEN,
                         "Disallowed CORS headers: %.300s; allowed request headers are %s", headers,
                         allowed_headers_value);
        return;
    }
    http_add_header(call, "Access-Control-Allow-Methods", methods);
    http_add_header(call, "Access-Control-Allow-Headers", allowed_headers_value);
    http_add_header(call, "Access-Control-Max-Age", c->max_age);
    http_reply_text(call, 204, NULL, "", 0);
}

void http_cors_add_headers(http_call *call) {
    const http_cors *c = call->loop->server->cors;
    if (!enabled(c) || !call->req)
        return;
    struct evkeyvalq *h = evhttp_request_get_input_headers(call->req);
    const char *origin = evhttp_find_header(h, "Origin");
    if (c->allow_any) {
        http_add_header(call, "Access-Control-Allow-Origin", "*");
    } else {
        http_add_header(call, "Vary", "Origin");
        if (!origin || !origin_allowed(c, origin))
            return;
        http_add_header(call, "Access-Control-Allow-Origin", origin);
    }
    if (!http_cors_is_preflight(call->req))
        http_add_header(call, "Access-Control-Expose-Headers", exposed_headers_value);
}
