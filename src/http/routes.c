/*
 * routes.c - the one route table and the dispatch it drives.
 *
 * Every path the server answers is a row of http_routes: methods, a path
 * pattern, the metrics' endpoint label, the API-key scope it needs and its
 * handler (or, for inference endpoints, the pipeline's ops). Nothing else
 * lists routes: the 404 / 405 decision and its Allow header, CORS
 * preflights, the scope check and the endpoint label all come from here
 * and the OpenAPI document (openapi.c, from each row's doc).
 *
 * Matching: the path (without its query) is split at '/'; a trailing slash
 * is dropped first ("/predict/" is "/predict"). A literal segment matches
 * itself; a placeholder matches one non-empty segment of its kind, checked
 * and decoded into call->params:
 *   {name}     a model name: percent-decoded, valid UTF-8, no NUL, < 256
 *              bytes. It is only ever compared with the repository's names,
 *              so "..", slashes or NULs can never reach the file system.
 *   {version}  a version number: digits, no leading zero, at most 12
 *   {ref}      a version number or an alias name
 *   {id}       a job id, as written (the handler checks it)
 *   {alias}    an alias name, as written (the handler checks it)
 *   {file}     a file name: [A-Za-z0-9._-], no leading dot, < 128 bytes
 *              (the handler looks it up among the embedded files)
 * A path that no row matches is 404; one that rows match but not with the
 * request's method is 405 with Allow listing theirs. HEAD is answered
 * wherever GET is (evhttp sends the head only).
 *
 * Order of checks for a matched path: CORS preflight (before the key:
 * browsers send none), API key and scope (401/403; before the method, so a
 * caller without a key learns nothing), method (405), handler. Rows of one
 * path share its scope.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/keyvalq_struct.h>

#include "http_int.h"

#define OPEN HTTP_SCOPE_OPEN
#define ANY GUARD_SCOPE_ANY
#define PREDICT GUARD_SCOPE_PREDICT
#define EMBED GUARD_SCOPE_EMBED
#define BATCH GUARD_SCOPE_BATCH
#define CHAT GUARD_SCOPE_CHAT
#define ADMIN GUARD_SCOPE_ADMIN
#define INFER(ops) NULL, &(ops)
/* The row's OpenAPI entry: summary, request schema, answers (http_route_doc);
 * DOCQ adds its query parameters (names of openapi.c's queries[]). */
#define DOC(summary, request, responses) {summary, request, responses, NULL}
#define DOCQ(summary, request, responses, query) {summary, request, responses, query}
#define PREDICTION "200=Prediction 404 422 429 503 504"

const http_route http_routes[] = {
    /* The seed service's API. */
    {HTTP_POST, "/predict", "/predict", PREDICT, INFER(http_seed_predict_ops),
     DOC("Classify a text or a list of texts with the default model", "PredictRequest", PREDICTION)},
    {HTTP_GET, "/health", "/health", OPEN, http_health, NULL, DOC("Server health", NULL, "200=Health 503=Health")},
    {HTTP_GET, "/metrics", "/metrics", OPEN, http_metrics_page, NULL,
     DOC("Prometheus metrics", NULL, "200=text/plain")},
    {HTTP_POST, "/batch_predict", "/batch_predict", BATCH, http_batch_seed_submit, NULL,
     DOC("Submit a batch job (the seed service's API)", "SeedBatchRequest", "200=SeedBatchSubmitted 404 422 429 503")},
    {HTTP_GET, "/batch_result/{id}", "/batch_result/{task_id}", BATCH, http_batch_seed_result, NULL,
     DOC("A batch job's status and results (the seed service's API)", NULL, "200=SeedBatchResult 404 503")},
    /* Health for orchestrators. */
    {HTTP_GET, "/health/live", "/health/live", OPEN, http_health_live, NULL,
     DOC("Liveness", NULL, "200=Status")},
    {HTTP_GET, "/health/ready", "/health/ready", OPEN, http_health_ready, NULL,
     DOC("Readiness: every model has a loaded version", NULL, "200=Status 503")},
    /* Models. */
    {HTTP_GET, "/v1/models", "/v1/models", ANY, http_models, NULL, DOC("List the models", NULL, "200=ModelList")},
    {HTTP_GET, "/v1/models/{name}", "/v1/models/{name}", ANY, http_model, NULL,
     DOC("One model of the repository", NULL, "200=Model 404")},
    {HTTP_POST, "/v1/models/{name}/predict", "/v1/models/{name}/predict", PREDICT, INFER(http_seed_predict_ops),
     DOC("Classify with a model", "PredictRequest", PREDICTION)},
    {HTTP_POST, "/v1/models/{name}/versions/{ref}/predict", "/v1/models/{name}/versions/{version}/predict",
     PREDICT, INFER(http_seed_predict_ops),
     DOC("Classify with a version or an alias of a model", "PredictRequest", PREDICTION)},
    {HTTP_POST, "/v1/embeddings", "/v1/embeddings", EMBED, INFER(http_embeddings_ops),
     DOC("Embed texts (OpenAI's embeddings API)", "EmbeddingsRequest", "200=EmbeddingList 404 422 429 503 504")},
    {HTTP_POST, "/embed", "/embed", EMBED, INFER(http_tei_embed_ops),
     DOC("Embed texts (Hugging Face TEI's API)", "TeiEmbedRequest", "200=TeiEmbedResponse 404 422 429 503 504")},
    /* Reranking with a cross-encoder. */
    {HTTP_POST, "/rerank", "/rerank", PREDICT, INFER(http_tei_rerank_ops),
     DOC("Rank texts by relevance to a query (Hugging Face TEI's API)", "TeiRerankRequest",
         "200=TeiRerankResponse 404 422 429 503 504")},
    {HTTP_POST, "/v1/rerank", "/v1/rerank", PREDICT, INFER(http_rerank_ops),
     DOC("Rank documents by relevance to a query (Cohere's and Jina's API)", "RerankRequest",
         "200=RerankResponse 404 422 429 503 504")},
    /* The LLM gateway. */
    {HTTP_POST, "/v1/chat/completions", "/v1/chat/completions", CHAT, http_chat, NULL,
     DOC("Chat completion through the LLM gateway (OpenAI's API)", "ChatCompletionRequest",
         "200=ChatCompletion,text/event-stream 404 422 429 502 503 504")},
    {HTTP_GET, "/v1/gateway/budgets", "/v1/gateway/budgets", CHAT, http_gateway_budgets, NULL,
     DOC("What your API key's gateway budgets have left (with scope admin: every configured key's)", NULL,
         "200=BudgetList 404 503")},
    /* Batch jobs. */
    {HTTP_POST, "/v1/batch", "/v1/batch", BATCH, http_batch_submit, NULL,
     DOC("Submit a batch job", "BatchRequest", "202=BatchJob 404 422 429 503")},
    {HTTP_GET, "/v1/batch", "/v1/batch", BATCH, http_batch_list, NULL,
     DOCQ("Your batch jobs, newest first, a page at a time", NULL, "200=BatchList 422 503", "limit after")},
    {HTTP_GET, "/v1/batch/{id}", "/v1/batch/{id}", BATCH, http_batch_get, NULL,
     DOC("A batch job", NULL, "200=BatchJob 404 503")},
    {HTTP_DELETE, "/v1/batch/{id}", "/v1/batch/{id}", BATCH, http_batch_cancel, NULL,
     DOC("Cancel a batch job", NULL, "200=BatchJob 404 409 503")},
    {HTTP_GET, "/v1/batch/{id}/results", "/v1/batch/{id}/results", BATCH, http_batch_results, NULL,
     DOCQ("A page of a batch job's results", NULL, "200=BatchResults 404 422 503", "offset limit")},
    /* The Open Inference Protocol (KServe v2). */
    {HTTP_GET, "/v2", "/v2", ANY, http_kserve_server, NULL, DOC("KServe v2 server metadata", NULL, "200=KServeServer")},
    {HTTP_GET, "/v2/health/live", "/v2/health/live", OPEN, http_kserve_live, NULL,
     DOC("KServe v2 liveness", NULL, "200=KServeLive")},
    {HTTP_GET, "/v2/health/ready", "/v2/health/ready", OPEN, http_kserve_ready, NULL,
     DOC("KServe v2 readiness", NULL, "200=KServeReady 503=KServeReady")},
    {HTTP_GET, "/v2/models/{name}", "/v2/models/{name}", ANY, http_kserve_model, NULL,
     DOC("KServe v2 model metadata", NULL, "200=KServeModel 404")},
    {HTTP_GET, "/v2/models/{name}/versions/{version}", "/v2/models/{name}", ANY, http_kserve_model, NULL,
     DOC("KServe v2 model version metadata", NULL, "200=KServeModel 404")},
    {HTTP_GET, "/v2/models/{name}/ready", "/v2/models/{name}/ready", ANY, http_kserve_model_ready, NULL,
     DOC("KServe v2 model readiness", NULL, "200=KServeModelReady 404 503=KServeModelReady")},
    {HTTP_GET, "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/ready", ANY,
     http_kserve_model_ready, NULL,
     DOC("KServe v2 model version readiness", NULL, "200=KServeModelReady 404 503=KServeModelReady")},
    {HTTP_POST, "/v2/models/{name}/infer", "/v2/models/{name}/infer", PREDICT, INFER(http_kserve_infer_ops),
     DOC("KServe v2 inference", "KServeInferRequest", "200=KServeInferResponse 404 422 429 503 504")},
    {HTTP_POST, "/v2/models/{name}/versions/{version}/infer", "/v2/models/{name}/infer", PREDICT,
     INFER(http_kserve_infer_ops),
     DOC("KServe v2 inference on a version", "KServeInferRequest", "200=KServeInferResponse 404 422 429 503 504")},
    /* Administration. */
    {HTTP_GET, "/admin/models/{name}/traffic", "/admin/models/{name}/traffic", ADMIN, http_admin_traffic_get, NULL,
     DOC("A model's traffic split", NULL, "200=Traffic 404")},
    {HTTP_PUT, "/admin/models/{name}/traffic", "/admin/models/{name}/traffic", ADMIN, http_admin_traffic_put, NULL,
     DOC("Set a model's traffic split ({} clears it)", "TrafficSplit", "200=Traffic 404 422")},
    {HTTP_GET, "/admin/models/{name}/aliases", "/admin/models/{name}/aliases", ADMIN, http_admin_aliases_get, NULL,
     DOC("A model's aliases", NULL, "200=Aliases 404")},
    {HTTP_PUT, "/admin/models/{name}/aliases/{alias}", "/admin/models/{name}/aliases/{alias}", ADMIN,
     http_admin_alias_put, NULL, DOC("Point an alias at a version", "AliasRequest", "200=Aliases 404 422")},
    {HTTP_DELETE, "/admin/models/{name}/aliases/{alias}", "/admin/models/{name}/aliases/{alias}", ADMIN,
     http_admin_alias_delete, NULL, DOC("Remove an alias", NULL, "200=Aliases 404")},
    {HTTP_GET, "/admin/models/{name}/shadow", "/admin/models/{name}/shadow", ADMIN, http_admin_shadow, NULL,
     DOC("A model's shadow version", NULL, "200=Shadow 404")},
    {HTTP_PUT, "/admin/models/{name}/shadow", "/admin/models/{name}/shadow", ADMIN, http_admin_shadow, NULL,
     DOC("Set a model's shadow version ({} turns it off)", "ShadowRequest", "200=Shadow 404 422")},
    {HTTP_GET, "/admin/models/{name}/cascade", "/admin/models/{name}/cascade", ADMIN, http_admin_cascade, NULL,
     DOC("A model's cascade", NULL, "200=Cascade 404")},
    {HTTP_PUT, "/admin/models/{name}/cascade", "/admin/models/{name}/cascade", ADMIN, http_admin_cascade, NULL,
     DOC("Set a model's cascade ({} turns it off)", "CascadeRequest", "200=Cascade 404 422")},
    {HTTP_POST, "/admin/models/{name}/versions/{version}/load", "/admin/models/{name}/versions/{version}/load",
     ADMIN, http_admin_version_load, NULL, DOC("Load a version", NULL, "202=VersionAction 404 503")},
    {HTTP_POST, "/admin/models/{name}/versions/{version}/unload", "/admin/models/{name}/versions/{version}/unload",
     ADMIN, http_admin_version_unload, NULL, DOC("Unload a version", NULL, "202=VersionAction 404 503")},
    /* The operator console (GET /ui) and what it reads. */
    {HTTP_GET, "/", "/", OPEN, http_root, NULL, DOC("The operator console: redirects to /ui", NULL, "302")},
    {HTTP_GET, "/ui", "/ui", OPEN, http_static, NULL,
     DOC("The operator console (a web page; its data needs an API key once keys are configured)", NULL,
         "200=text/html")},
    {HTTP_GET, "/ui/{file}", "/ui/{file}", OPEN, http_static, NULL,
     DOC("A file of the console (script, style sheet, icon, licence)", NULL, "200=*/* 404")},
    {HTTP_GET, "/v1/metrics/history", "/v1/metrics/history", ANY, http_history, NULL,
     DOC("The console's metrics over the last 15 minutes, one sample a second (?since=ms&families=a,b)", NULL,
         "200=History 422")},
    /* This API's description. */
    {HTTP_GET, "/openapi.json", "/openapi.json", OPEN, http_openapi, NULL,
     DOC("This API as an OpenAPI 3.1 document", NULL, "200=application/json")},
    {HTTP_GET, "/docs", "/docs", OPEN, http_static, NULL,
     DOC("This API as a web page (Swagger UI over /openapi.json)", NULL, "200=text/html")},
    {HTTP_GET, "/docs/{file}", "/docs/{file}", OPEN, http_static, NULL,
     DOC("A file of the /docs page (script, style sheet, image, licence)", NULL, "200=*/* 404")},
};
const size_t http_n_routes = sizeof http_routes / sizeof http_routes[0];

/* ---- matching -------------------------------------------------------------- */

/* evhttp's methods: their names (for the log) and their bit in a row's
 * methods (0: no row takes it; HEAD is GET's). */
static const struct {
    enum evhttp_cmd_type cmd;
    const char *name;
    unsigned bit;
} methods[] = {
    {EVHTTP_REQ_GET, "GET", HTTP_GET},          {EVHTTP_REQ_HEAD, "HEAD", HTTP_GET},
    {EVHTTP_REQ_POST, "POST", HTTP_POST},       {EVHTTP_REQ_PUT, "PUT", HTTP_PUT},
    {EVHTTP_REQ_DELETE, "DELETE", HTTP_DELETE}, {EVHTTP_REQ_OPTIONS, "OPTIONS", 0},
    {EVHTTP_REQ_TRACE, "TRACE", 0},             {EVHTTP_REQ_CONNECT, "CONNECT", 0},
    {EVHTTP_REQ_PATCH, "PATCH", 0},
};

static size_t method_index(enum evhttp_cmd_type cmd) {
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].cmd == cmd)
            return i;
    return SIZE_MAX;
}

/* "GET, POST" for a bit set, into buf[cap]; with_head names HEAD after GET
 * (Allow does; CORS preflights need not: HEAD is a CORS-safelisted method). */
static const char *methods_text(unsigned bits, int with_head, char *buf, size_t cap) {
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (!(bits & methods[i].bit) || (methods[i].cmd == EVHTTP_REQ_HEAD && !with_head))
            continue;
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", methods[i].name);
    }
    return buf;
}

int http_is_valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { len = 1; cp = c; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* Copies segment seg[0..n) into dst[cap] as it is; "" when it does not fit. */
static void copy_segment(char *dst, size_t cap, const char *seg, size_t n) {
    if (n >= cap)
        n = 0;
    memcpy(dst, seg, n);
    dst[n] = '\0';
}

/* Matches one segment against a placeholder; 1 with params filled. */
static int match_placeholder(const char *kind, size_t kind_len, const char *seg, size_t n, http_path_params *p) {
#define IS(k) (kind_len == sizeof k - 1 && memcmp(kind, k, kind_len) == 0)
    if (IS("{name}")) {
        char raw[256];
        if (n >= sizeof raw)
            return 0;
        memcpy(raw, seg, n);
        raw[n] = '\0';
        size_t dlen = 0;
        char *name = evhttp_uridecode(raw, 0, &dlen);
        int ok = name && dlen > 0 && dlen < sizeof p->name && strlen(name) == dlen &&
                 http_is_valid_utf8((const unsigned char *)name, dlen);
        if (ok)
            memcpy(p->name, name, dlen + 1);
        free(name);
        return ok;
    }
    if (IS("{version}") || IS("{ref}")) {
        if (n >= sizeof p->version)
            return 0;
        char ref[sizeof p->version];
        memcpy(ref, seg, n);
        ref[n] = '\0';
        if (!http_version_ref_valid(ref, IS("{ref}")))
            return 0;
        memcpy(p->version, ref, n + 1);
        return 1;
    }
    if (IS("{id}")) {
        copy_segment(p->id, sizeof p->id, seg, n);
        return 1;
    }
    if (IS("{alias}")) {
        copy_segment(p->alias, sizeof p->alias, seg, n);
        return 1;
    }
    if (IS("{file}")) {
        if (n >= sizeof p->file || seg[0] == '.')
            return 0;
        for (size_t i = 0; i < n; i++)
            if (!isalnum((unsigned char)seg[i]) && !strchr("._-", seg[i]))
                return 0;
        copy_segment(p->file, sizeof p->file, seg, n);
        return 1;
    }
#undef IS
    return 0;
}

/* Whether path (len bytes, no trailing slash) matches pattern, filling p.
 * The shape first (literal segments, and a non-empty segment for each
 * placeholder), then the placeholders' own checks, so that a model name is
 * decoded only for a row whose shape fits. */
static int match(const char *pattern, const char *path, size_t len, http_path_params *p) {
    struct hole { const char *kind, *seg; size_t kind_len, seg_len; } holes[4];
    size_t n_holes = 0;
    const char *end = path + len;
    while (*pattern) {
        if (*pattern != '/' || path >= end || *path != '/')
            return 0;
        pattern++, path++;
        size_t pn = strcspn(pattern, "/");
        const char *slash = memchr(path, '/', (size_t)(end - path));
        size_t sn = slash ? (size_t)(slash - path) : (size_t)(end - path);
        if (pattern[0] == '{') {
            if (sn == 0 || n_holes == sizeof holes / sizeof holes[0])
                return 0;
            holes[n_holes++] = (struct hole){pattern, path, pn, sn};
        } else if (pn != sn || memcmp(pattern, path, pn) != 0) {
            return 0;
        }
        pattern += pn;
        path += sn;
    }
    if (path != end)
        return 0;
    memset(p, 0, sizeof *p); /* nothing left from a row that failed below */
    for (size_t i = 0; i < n_holes; i++)
        if (!match_placeholder(holes[i].kind, holes[i].kind_len, holes[i].seg, holes[i].seg_len, p))
            return 0;
    return 1;
}

/* ---- API keys ------------------------------------------------------------ */

/* The key a request carries: X-API-Key (the seed's header) or
 * "Authorization: Bearer <key>" (OpenAI clients); another Authorization
 * scheme carries no key. *key and *len get the first one found (NULL, 0 for
 * none; they point into the request's headers). Returns 1 when the request
 * carries two different keys. */
static int presented_key(struct evhttp_request *req, const char **key, size_t *len) {
    *key = NULL;
    *len = 0;
    int conflict = 0;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        const char *v = NULL;
        if (strcasecmp(kv->key, "X-API-Key") == 0) {
            v = kv->value;
        } else if (strcasecmp(kv->key, "Authorization") == 0 && strncasecmp(kv->value, "Bearer", 6) == 0 &&
                   (kv->value[6] == ' ' || kv->value[6] == '\t')) {
            v = kv->value + 6;
        }
        if (!v)
            continue;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strlen(v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n == 0)
            continue;
        if (!*key) {
            *key = v;
            *len = n;
        } else if (n != *len || memcmp(v, *key, n) != 0) {
            conflict = 1; /* both are the client's own bytes: no secret to protect */
        }
    }
    return conflict;
}

/* Checks the request's API key against the scope its endpoint needs.
 * Returns 1 when the request may go on (a good key, or no keys configured);
 * otherwise answers 401 or 403 and returns 0. Messages name the key's
 * name at most, never the key. */
int http_authorized(http_call *call, guard_scopes required) {
    http_server *s = call->loop->server;
    if (!s->opts.keys || required == HTTP_SCOPE_OPEN) {
        call->key_scopes = s->opts.keys ? 0 : GUARD_SCOPE_ALL;
        return 1;
    }
    const char *key;
    size_t len;
    int conflict = presented_key(call->req, &key, &len);
    guard_auth auth;
    guard_keys_authorize(s->opts.keys, &call->loop->keys_view, key, len, required, &auth);
    if (auth.status == GUARD_AUTH_OPEN) {
        call->key_scopes = GUARD_SCOPE_ALL;
        return 1;
    }
    if (conflict) {
        if (auth.status == GUARD_AUTH_OK)
            guard_keys_count_failure(s->opts.keys, GUARD_AUTH_INVALID);
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\", error=\"invalid_request\"");
        http_reply_error(call, HTTP_ERR_INVALID_API_KEY,
                         "the request carries two different API keys (X-API-Key and Authorization); send one");
        return 0;
    }
    if (auth.key) {
        http_copy(call->key_name, sizeof call->key_name, auth.key->name);
        http_copy(call->key_tier, sizeof call->key_tier, auth.key->tier);
        call->key_scopes = auth.key->scopes;
    }
    switch (auth.status) {
    case GUARD_AUTH_OK:
    case GUARD_AUTH_OPEN:
        return 1;
    case GUARD_AUTH_MISSING:
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\"");
        http_reply_error(call, HTTP_ERR_MISSING_API_KEY,
                         "an API key is required: send it as X-API-Key: <key> or Authorization: Bearer <key>");
        return 0;
    case GUARD_AUTH_INVALID:
    case GUARD_AUTH_REVOKED:
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\", error=\"invalid_token\"");
        http_reply_error(call, HTTP_ERR_INVALID_API_KEY, "%s",
                         auth.status == GUARD_AUTH_REVOKED ? "the API key was revoked" : "the API key is not valid");
        return 0;
    case GUARD_AUTH_SCOPE: {
        const char *scope = guard_scope_name(required & ~auth.key->scopes);
        char challenge[128];
        snprintf(challenge, sizeof challenge, "Bearer realm=\"aiserve\", error=\"insufficient_scope\", scope=\"%s\"",
                 scope);
        http_add_header(call, "WWW-Authenticate", challenge);
        http_reply_error(call, HTTP_ERR_INSUFFICIENT_SCOPE, "the API key '%s' lacks the scope '%s' that %s needs",
                         auth.key->name, scope, http_call_label(call));
        return 0;
    }
    case GUARD_AUTH_COUNT:
        break;
    }
    http_reply_error(call, HTTP_ERR_INTERNAL, "internal error");
    return 0;
}

/* ---- dispatch -------------------------------------------------------------- */

void http_dispatch(http_call *call) {
    struct evhttp_request *req = call->req;
    size_t m = method_index(evhttp_request_get_command(req));
    http_copy(call->method, sizeof call->method, m == SIZE_MAX ? "OTHER" : methods[m].name);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path)
        path = "/";
    http_copy(call->path, sizeof call->path, path);
    size_t len = strlen(path);
    if (len > 1 && path[len - 1] == '/')
        len--; /* "/predict/" is "/predict" */

    unsigned want = m == SIZE_MAX ? 0 : methods[m].bit, allowed = 0;
    const http_route *hit = NULL, *any = NULL;
    for (size_t i = 0; i < http_n_routes && !hit; i++) {
        const http_route *r = &http_routes[i];
        if (!match(r->pattern, path, len, &call->params))
            continue;
        allowed |= r->methods;
        if (!any)
            any = r;
        if (r->methods & want)
            hit = r;
    }
    if (!any) {
        http_reply_error(call, HTTP_ERR_NOT_FOUND, "no route for %s %.200s", call->method,
                         http_is_valid_utf8((const unsigned char *)path, strlen(path)) ? path : "(path)");
        return;
    }
    if (!hit) { /* the other methods of the same path */
        for (size_t i = any - http_routes + 1; i < http_n_routes; i++) {
            http_path_params p;
            if (match(http_routes[i].pattern, path, len, &p))
                allowed |= http_routes[i].methods;
        }
    }
    call->route = hit ? hit : any;
    char allow[64];
    if (http_cors_is_preflight(req)) {
        http_cors_preflight(call, methods_text(allowed, 0, allow, sizeof allow));
        return;
    }
    /* The key before the method: a caller without one learns nothing. */
    if (!http_authorized(call, call->route->scope))
        return;
    if (!hit) {
        methods_text(allowed, 1, allow, sizeof allow);
        http_add_header(call, "Allow", allow);
        http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed on %s; use %s", call->method,
                         http_call_label(call), allow);
        return;
    }
    if (hit->infer)
        http_infer_handler(call);
    else
        hit->handler(call);
}
