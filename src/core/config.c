/*
 * config.c - the settings table and the load pipeline for `aiserve serve`.
 *
 * Design:
 *  - core_settings[] below is the only list of settings. A row names the
 *    YAML key, flag, environment variable(s), type, default, bounds, help
 *    and the core_config member (its type checked at compile time). Adding
 *    a setting is adding a member and a row; --help, the dumps and the docs
 *    table follow (test_config fails until docs/configuration.md does).
 *  - Loading works on a copy and copies back only on success, so a failed
 *    load (or reload) leaves the caller's configuration as it was.
 *  - Flags are read twice: once before anything else, to find --help (which
 *    wins over every error) and --config; then applied last, so they
 *    override the file and the environment.
 *  - Every error names its source: file and line, environment variable, or
 *    flag; a misspelt flag or key gets the closest real one suggested.
 * No output, no getenv (the caller passes envp), no globals beyond the
 * const table: any thread.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core_int.h"

/* --- the table ------------------------------------------------------------ */

#define MEMBER(f) (((core_config *)0)->f)
/* offsetof(core_config, f), failing to compile unless member f has type T. */
#define OFFSET_AS(f, T) \
    (offsetof(core_config, f) + 0 * sizeof(char[__builtin_types_compatible_p(__typeof__(MEMBER(f)), T) ? 1 : -1]))
#define PLACE(f, T) .field = #f, .offset = OFFSET_AS(f, T), .size = sizeof(MEMBER(f))
#define ROW(sec, k, fl, ev, alias, mv, ty) \
    .section = sec, .key = k, .name = sec "." k, .flag = fl, .env = ev, .env_alias = alias, .metavar = mv, .type = ty

#define STRING(sec, k, fl, ev, alias, mv, f, dflt, min_len, h)                                      \
    {ROW(sec, k, fl, ev, alias, mv, SETTING_STRING), PLACE(f, char[sizeof(MEMBER(f))]), .def_str = dflt, \
     .min = min_len, .max = sizeof(MEMBER(f)) - 1, .help = h}
#define INT(sec, k, fl, ev, f, dflt, lo, hi, h) \
    {ROW(sec, k, fl, ev, NULL, "N", SETTING_INT), PLACE(f, int), .def = dflt, .min = lo, .max = hi, .help = h}
#define BOOL(sec, k, fl, ev, f, dflt, h) \
    {ROW(sec, k, fl, ev, NULL, NULL, SETTING_BOOL), PLACE(f, bool), .def = dflt, .min = 0, .max = 1, .help = h}
/* Durations: default and bounds in microseconds; stored in units of `unit`. */
#define DURATION(sec, k, fl, ev, f, unit, dflt, lo, hi, h)                                          \
    {ROW(sec, k, fl, ev, NULL, "DURATION", SETTING_DURATION), PLACE(f, int64_t), .unit_us = unit, \
     .def = dflt, .min = lo, .max = hi, .help = h}
#define SIZE(sec, k, fl, ev, f, dflt, lo, hi, h)                                                   \
    {ROW(sec, k, fl, ev, NULL, "SIZE", SETTING_SIZE), PLACE(f, uint64_t), .def = dflt, .min = lo, \
     .max = hi, .help = h}
/* A list of items, each checked by `check`; stored joined by commas. */
#define ITEMS(sec, k, fl, ev, mv, f, check, what, h)                                                  \
    {ROW(sec, k, fl, ev, NULL, mv, SETTING_LIST), PLACE(f, char[sizeof(MEMBER(f))]), .def_str = "", \
     .min = 0, .max = sizeof(MEMBER(f)) - 1, .check_item = check, .items = what, .help = h}
#define TIERS(sec, k, fl, ev, f, h)                                                                   \
    {ROW(sec, k, fl, ev, NULL, "TIERS", SETTING_TIERS), PLACE(f, core_tiers), .def_str = "",       \
     .min = 1, .max = CORE_TIER_RATE_MAX, .help = h}
#define LEVEL(sec, k, fl, ev, alias, f, dflt, h)                                                  \
    {ROW(sec, k, fl, ev, alias, "LEVEL", SETTING_LEVEL), PLACE(f, core_log_level), .def = dflt, \
     .min = CORE_LOG_DEBUG, .max = CORE_LOG_ERROR, .help = h}

#define US 1
#define MS 1000
#define SEC INT64_C(1000000)
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define KIB 1024
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

static int check_address(const char *item, char *why, size_t cap);

/* A traffic split entry: MODEL@VERSION=PERCENT. */
static int check_split_item(const char *item, char *why, size_t cap) {
    const char *at = strchr(item, '@'), *eq = at ? strchr(at, '=') : NULL;
    int ok = at && eq && at > item && at - item < 128;
    if (ok) {
        size_t vd = strspn(at + 1, "0123456789"), wd = strspn(eq + 1, "0123456789");
        ok = vd > 0 && at + 1 + vd == eq && at[1] != '0' && wd > 0 && wd <= 3 && !eq[1 + wd] &&
             strtol(eq + 1, NULL, 10) <= 100;
    }
    if (!ok)
        return snprintf(why, cap, "'%.100s' is not MODEL@VERSION=PERCENT (sentiment@2=20)", item), -1;
    return 0;
}

/* A quantization entry: MODE, MODEL=MODE or MODEL@VERSION=MODE, MODE one
 * of none, bf16, int8. */
static int check_quant_item(const char *item, char *why, size_t cap) {
    const char *eq = strrchr(item, '='), *mode = eq ? eq + 1 : item;
    int ok = strcmp(mode, "none") == 0 || strcmp(mode, "bf16") == 0 || strcmp(mode, "int8") == 0;
    if (ok && eq) {
        const char *at = memchr(item, '@', (size_t)(eq - item));
        size_t name = (size_t)((at ? at : eq) - item);
        ok = name > 0 && name < 128;
        if (ok && at) {
            size_t vd = strspn(at + 1, "0123456789");
            ok = vd > 0 && vd < 13 && at[1] != '0' && at + 1 + vd == eq;
        }
    }
    if (!ok)
        return snprintf(why, cap, "'%.100s' is not MODE, MODEL=MODE or MODEL@VERSION=MODE with MODE none, bf16 "
                        "or int8 (sentiment@2=int8)", item), -1;
    return 0;
}

/* A cascade entry: MODEL@FIRST>THEN=THRESHOLD, threshold in (0, 1]. */
static int check_cascade_item(const char *item, char *why, size_t cap) {
    const char *at = strchr(item, '@'), *gt = at ? strchr(at, '>') : NULL, *eq = gt ? strchr(gt, '=') : NULL;
    int ok = at && gt && eq && at > item && at - item < 128;
    if (ok) {
        size_t fd = strspn(at + 1, "0123456789"), td = strspn(gt + 1, "0123456789");
        char *end;
        double t = strtod(eq + 1, &end);
        ok = fd > 0 && fd < 10 && at[1] != '0' && at + 1 + fd == gt && td > 0 && td < 10 && gt[1] != '0' &&
             gt + 1 + td == eq && end > eq + 1 && !*end && t > 0 && t <= 1;
    }
    if (!ok)
        return snprintf(why, cap, "'%.100s' is not MODEL@FIRST>THEN=THRESHOLD with 0 < THRESHOLD <= 1 "
                        "(sentiment@1>2=0.8)", item), -1;
    return 0;
}

/* A web origin as browsers send it in the Origin header: scheme "://" host
 * [":" port] and nothing after (no path, no trailing slash); or "*". */
static int check_origin(const char *item, char *why, size_t cap) {
    const char *p = item;
    if (strcmp(item, "*") == 0)
        return 0;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
           (p > item && ((*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.')))
        p++;
    int ok = p > item && strncmp(p, "://", 3) == 0;
    if (ok) {
        p += 3;
        size_t host = *p == '[' ? strcspn(p, "]") + 1 : strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_");
        ok = host > 0 && (*p != '[' || p[host - 1] == ']');
        p += ok ? host : 0;
        if (ok && *p == ':') {
            size_t digits = strspn(++p, "0123456789");
            long port = digits && digits <= 5 ? strtol(p, NULL, 10) : 0;
            ok = port >= 1 && port <= 65535;
            p += digits;
        }
        ok = ok && *p == 0;
    }
    if (!ok)
        return snprintf(why, cap,
                        "'%.100s' is not an origin: write scheme://host[:port] as browsers send it "
                        "(https://app.example.com, http://localhost:3000; no path or trailing slash), or *",
                        item),
               -1;
    return 0;
}

const core_setting core_settings[] = {
    STRING("server", "host", "--host", "AISERVE_HOST", NULL, "HOST", host, "127.0.0.1", 1,
           "Address to listen on: an IP address or a host name (0.0.0.0 for every IPv4 interface)."),
    INT("server", "port", "--port", "AISERVE_PORT", port, 8000, 0, 65535,
        "TCP port to listen on; 0 picks a free port, and the server logs the one it got."),
    INT("server", "threads", "--http-threads", "AISERVE_HTTP_THREADS", http_threads, 0, 0, 256,
        "HTTP event loops, one thread each; 0 means one per CPU."),
    INT("server", "max_connections", "--max-connections", "AISERVE_MAX_CONNECTIONS", max_connections, 1024,
        1, 1000000, "Client connections open at once, at most."),
    SIZE("server", "max_body_size", "--max-body-size", "AISERVE_MAX_BODY_SIZE", max_body_bytes, 1 * MIB,
         1 * KIB, 1 * GIB, "Largest request body; a larger one gets 413."),
    SIZE("server", "max_header_size", "--max-header-size", "AISERVE_MAX_HEADER_SIZE", max_header_bytes,
         8 * KIB, 1 * KIB, 1 * MIB, "Largest request line plus headers; larger gets 431."),
    DURATION("server", "read_timeout", "--read-timeout", "AISERVE_READ_TIMEOUT", read_timeout_ms, MS,
             10 * SEC, 1 * MS, 1 * HOUR, "A client must send its whole request (headers and body) within this."),
    DURATION("server", "idle_timeout", "--idle-timeout", "AISERVE_IDLE_TIMEOUT", idle_timeout_ms, MS,
             60 * SEC, 1 * MS, 24 * HOUR, "A keep-alive connection idle for this long is closed."),
    DURATION("server", "drain_timeout", "--drain-timeout", "AISERVE_DRAIN_TIMEOUT", drain_timeout_ms, MS,
             30 * SEC, 0, 1 * HOUR,
             "Graceful shutdown: how long requests in flight may take to finish before the server exits anyway."),
    STRING("server", "tls_cert", "--tls-cert", "AISERVE_TLS_CERT", NULL, "FILE", tls_cert, "", 0,
           "PEM certificate chain (the server's certificate first, then intermediates); with server.tls_key "
           "the server speaks HTTPS only (TLS 1.2 or 1.3) on its port. Empty: plain HTTP."),
    STRING("server", "tls_key", "--tls-key", "AISERVE_TLS_KEY", NULL, "FILE", tls_key, "", 0,
           "PEM private key (not passphrase-protected) of server.tls_cert; give both or neither."),

    STRING("models", "repository", "--model-repository", "AISERVE_MODEL_REPOSITORY", "MODEL_PATH", "DIR",
           model_repository, "./models", 1, "Directory of models, laid out as NAME/VERSION/ with a Hugging Face model in each version."),
    STRING("models", "default_model", "--default-model", "AISERVE_DEFAULT_MODEL", NULL, "NAME", default_model,
           "", 0, "Model that /predict serves; empty means the only model in the repository, or \"sentiment\" when there are several."),
    STRING("models", "version_policy", "--version-policy", "AISERVE_VERSION_POLICY", NULL, "POLICY",
           version_policy, "latest", 3,
           "Which versions of each model are loaded and served, as TF Serving's version policy: latest (the "
           "newest that loads), latest:N (the N newest; older ones only while none of those loads), all, or "
           "specific:1,3 (those only). A request without a version gets the newest loaded one."),
    ITEMS("models", "traffic", "--traffic", "AISERVE_TRAFFIC", "LIST", traffic, check_split_item,
          "MODEL@VERSION=PERCENT entries",
          "Traffic splits at start: the share of a model's requests (those that name no version) each version "
          "gets, as sentiment@1=80, sentiment@2=20 (per model, summing to 100). Requests with X-User-ID stick to "
          "one version. The admin API changes them while serving."),
    ITEMS("models", "shadow", "--shadow", "AISERVE_SHADOW", "LIST", shadow, check_split_item,
          "MODEL@VERSION=PERCENT entries",
          "Shadow traffic at start: PERCENT of a model's requests (1..100) are also sent, in the background, to "
          "VERSION, whose answers are only compared with the ones returned (aiserve_shadow_predictions_total), as "
          "sentiment@2=10. One per model. Applies to online requests, batch jobs and `aiserve batch`. The admin "
          "API changes it while serving."),
    ITEMS("models", "cascade", "--cascade", "AISERVE_CASCADE", "LIST", cascade, check_cascade_item,
          "MODEL@FIRST>THEN=THRESHOLD entries",
          "Cascades at start: version FIRST answers, and a text it gives less than THRESHOLD confidence "
          "(0..1) goes on to version THEN, whose answer stands, as sentiment@1>2=0.8. One per model. Applies "
          "to requests that name no version (or name FIRST), batch jobs and `aiserve batch`. The admin API "
          "changes it while serving."),
    ITEMS("models", "quantization", "--quantization", "AISERVE_QUANTIZATION", "LIST", quantization,
          check_quant_item, "MODE, MODEL=MODE or MODEL@VERSION=MODE entries",
          "How versions run their encoder's linear layers: none (float32, equal to transformers), bf16 or int8 "
          "(faster, slightly different numbers: docs/engine.md, Reduced precision). A bare MODE is every "
          "model's; MODEL=MODE and MODEL@VERSION=MODE override it, the most specific entry winning, as "
          "int8, sentiment@3=none. Read when a version loads."),
    DURATION("models", "poll_interval", "--poll-interval", "AISERVE_POLL_INTERVAL", poll_interval_ms, MS,
             2 * SEC, 0, 1 * HOUR,
             "How often the repository is looked at again: a new version directory is loaded and warmed up, "
             "then serves (as the version policy says); a version the policy drops, or whose directory is "
             "gone, is unloaded once no request holds it. 0: only at start."),
    INT("models", "engine_threads", "--engine-threads", "AISERVE_ENGINE_THREADS", engine_threads, 0, 0, 256,
        "Compute threads per model for the forward pass; 0 means one per CPU."),
    INT("models", "engine_nice", "--engine-nice", "AISERVE_ENGINE_NICE", engine_nice, 0, 0, 19,
        "Added to the nice value of the compute threads (each model's batcher and forward-pass threads; the "
        "HTTP threads keep the server's own). 0 gives them the server's priority. Higher values make "
        "inference yield the CPU to the event loops and to every other process on the host: beside one busy "
        "process per CPU, 5 leaves the compute threads about a quarter of each CPU instead of half "
        "(docs/engine.md, Threads)."),

    INT("batching", "max_batch_size", "--max-batch-size", "AISERVE_MAX_BATCH_SIZE", max_batch_size, 32, 1,
        1024, "Texts per forward pass, at most."),
    DURATION("batching", "max_queue_delay_us", "--max-queue-delay-us", "AISERVE_MAX_QUEUE_DELAY_US",
             max_queue_delay_us, US, 2 * MS, 0, 10 * SEC,
             "How long the batcher may hold a queued text while it waits for more to fill a batch; 0 runs what is queued at once."),
    INT("batching", "max_queue_size", "--max-queue-size", "AISERVE_MAX_QUEUE_SIZE", max_queue_size, 1024, 1,
        1000000, "Texts waiting per model version, at most; when full, a request gets 503 with Retry-After."),
    DURATION("batching", "request_timeout", "--request-timeout", "AISERVE_REQUEST_TIMEOUT", request_timeout_ms,
             MS, 30 * SEC, 1 * MS, 1 * HOUR, "Deadline for a request's inference, from arrival; past it the client gets 504."),

    INT("limits", "max_text_length", "--max-text-length", "AISERVE_MAX_TEXT_LENGTH", max_text_chars, 10000, 1,
        1000000, "Characters (Unicode code points) per text, at most; a longer text gets 422."),
    INT("limits", "max_inputs", "--max-inputs", "AISERVE_MAX_INPUTS", max_inputs, 64, 1, 100000,
        "Texts per request, at most; more gets 422. At most batching.max_queue_size."),

    STRING("auth", "keys_file", "--keys-file", "AISERVE_KEYS_FILE", NULL, "FILE", keys_file, "./data/keys.json", 1,
           "API key store, written by `aiserve keys`; it holds only SHA-256 hashes of the keys. Missing or empty: no "
           "keys are required (unless auth.keys_required). Read again on SIGHUP and when the file changes."),
    BOOL("auth", "keys_required", "--keys-required", "AISERVE_KEYS_REQUIRED", keys_required, 0,
         "Refuse to run without API keys: a key store that is missing, empty or all revoked stops the start "
         "(exit 2, naming the file), and a reload that would leave no active key is refused (the keys in use "
         "stay). For deployments whose keys come from a secret."),

    BOOL("ratelimit", "enabled", "--rate-limit", "AISERVE_RATE_LIMIT", ratelimit_enabled, 1,
         "Limit requests to the model endpoints with a token bucket per API key (per client address for "
         "requests without one); over the limit a request gets 429 with Retry-After."),
    TIERS("ratelimit", "tiers", "--rate-limit-tiers", "AISERVE_RATE_LIMIT_TIERS", ratelimit_tiers,
          "Limits per tier: requests per minute (the refill rate) and burst (the bucket size). A key's tier is "
          "set by `aiserve keys create --tier`; a tier that is not listed gets the limits of \"default\"; "
          "requests without a key use \"anonymous\". Both exist even when not listed (100/100)."),
    ITEMS("ratelimit", "trusted_proxies", "--trusted-proxies", "AISERVE_TRUSTED_PROXIES", "LIST", trusted_proxies,
          check_address, "IP addresses or CIDR blocks",
          "Proxies whose X-Forwarded-For header is believed when a request without a key is limited by its "
          "client address; from any other peer the header is ignored."),
    STRING("ratelimit", "on_backend_failure", "--rate-limit-on-backend-failure",
           "AISERVE_RATE_LIMIT_ON_BACKEND_FAILURE", NULL, "allow|deny", ratelimit_on_backend_failure, "allow", 4,
           "What the limiter does while its store (Redis) cannot be reached: allow admits every request (the "
           "service stays up, unlimited); deny answers 503 with Retry-After."),

    BOOL("cache", "enabled", "--cache", "AISERVE_CACHE", cache_enabled, 1,
         "Cache prediction responses in memory, keyed by model, version, texts and parameters, and run "
         "identical requests that arrive together once."),
    SIZE("cache", "max_size", "--cache-max-size", "AISERVE_CACHE_MAX_SIZE", cache_max_bytes, 64 * MIB, 64 * KIB,
         INT64_C(64) * GIB, "Memory the response cache may hold (keys, answers and bookkeeping); past it the least "
         "recently used answers are dropped."),
    DURATION("cache", "ttl", "--cache-ttl", "AISERVE_CACHE_TTL", cache_ttl_ms, MS, 1 * HOUR, 1 * SEC, 30 * 24 * HOUR,
             "How long a cached answer is served before it is computed again."),

    {ROW("redis", "url", "--redis-url", "AISERVE_REDIS_URL", NULL, "URL", SETTING_STRING),
     PLACE(redis_url, char[sizeof(MEMBER(redis_url))]), .def_str = "", .min = 0,
     .max = sizeof(MEMBER(redis_url)) - 1, .secret_userinfo = true,
     .help = "Redis that rate limits and cached answers live in, shared by every instance pointed at it: "
             "redis://[[user]:password@]host[:port][/db] or unix:///path/redis.sock[?db=N]. Empty: both stay "
             "in this process's memory. The password is never logged."},
    STRING("redis", "key_prefix", "--redis-key-prefix", "AISERVE_REDIS_KEY_PREFIX", NULL, "PREFIX",
           redis_key_prefix, "aiserve:", 0,
           "Put before every Redis key, so several deployments can share one Redis without sharing answers "
           "or limits."),
    DURATION("redis", "connect_timeout", "--redis-connect-timeout", "AISERVE_REDIS_CONNECT_TIMEOUT",
             redis_connect_timeout_ms, MS, 1 * SEC, 10 * MS, 60 * SEC,
             "A connection to Redis must be up (connected, authenticated, answering) within this, or it is "
             "retried with backoff (100 ms doubling to 5 s)."),
    DURATION("redis", "command_timeout", "--redis-command-timeout", "AISERVE_REDIS_COMMAND_TIMEOUT",
             redis_command_timeout_ms, MS, 1 * SEC, 10 * MS, 60 * SEC,
             "Redis must answer a command within this; otherwise the connection is dropped and reopened, and "
             "the requests that waited go on without it (cache bypassed, limits by their failure policy)."),

    STRING("gateway", "config", "--gateway-config", "AISERVE_GATEWAY_CONFIG", NULL, "FILE", gateway_config, "", 0,
           "The LLM gateway's configuration (providers, models, routes, retries, fallbacks, guardrails; "
           "docs/gateway.md). Empty: no gateway, and /v1/chat/completions answers 404."),

    BOOL("batch", "enabled", "--batch", "AISERVE_BATCH", batch_enabled, 1,
         "Accept batch jobs (POST /batch_predict, /v1/batch): stored (see batch.store) and run in the "
         "background, only on capacity online requests leave free."),
    STRING("batch", "store", "--batch-store", "AISERVE_BATCH_STORE", NULL, "auto|sqlite|redis", batch_store,
           "auto", 4,
           "Where batch jobs live: sqlite (jobs.db under batch.data_dir, this instance only), redis (one queue "
           "in redis.url that every instance naming it shares: any instance accepts, runs and answers for any "
           "job), or auto (redis when redis.url is set, else sqlite)."),
    STRING("batch", "data_dir", "--batch-data-dir", "AISERVE_BATCH_DATA_DIR", NULL, "DIR", batch_data_dir,
           "./data", 1,
           "Directory of the batch job database (jobs.db, SQLite in WAL mode); created if missing. One aiserve "
           "process per directory."),
    INT("batch", "max_inputs", "--batch-max-inputs", "AISERVE_BATCH_MAX_INPUTS", batch_max_inputs, 100000, 1,
        10000000, "Inputs per batch job, at most; more gets 422. The request body must also fit "
        "server.max_body_size."),
    INT("batch", "max_jobs_per_key", "--batch-max-jobs-per-key", "AISERVE_BATCH_MAX_JOBS_PER_KEY",
        batch_max_jobs_per_key, 4, 1, 100000,
        "Unfinished (queued or running) batch jobs per API key, at most; one more gets 429."),
    DURATION("batch", "retention", "--batch-retention", "AISERVE_BATCH_RETENTION", batch_retention_ms, MS,
             24 * HOUR, 1 * SEC, 365 * 24 * HOUR,
             "How long a finished batch job and its results are kept; then they are deleted."),
    DURATION("batch", "lease", "--batch-lease", "AISERVE_BATCH_LEASE", batch_lease_ms, MS, 30 * SEC, 1 * SEC,
             HOUR,
             "Redis store: how long a chunk an instance took stays its own without renewal (renewed every third "
             "of this while it waits or runs). A chunk whose instance died goes back on the queue this long "
             "after its last renewal."),

    ITEMS("cors", "allowed_origins", "--cors-allowed-origins", "AISERVE_CORS_ALLOWED_ORIGINS", "LIST",
          cors_allowed_origins, check_origin, "origins (scheme://host[:port]) or *",
          "Web pages (origins) whose scripts may call the API from a browser, or * for any page; empty: none "
          "(browsers keep every other site's pages from reading the answers)."),
    DURATION("cors", "max_age", "--cors-max-age", "AISERVE_CORS_MAX_AGE", cors_max_age_ms, MS, 10 * MIN, 0,
             24 * HOUR, "How long a browser may cache a preflight's answer (Access-Control-Max-Age, in whole seconds)."),

    LEVEL("logging", "level", "--log-level", "AISERVE_LOG_LEVEL", "LOG_LEVEL", log_level, CORE_LOG_INFO,
          "Least severe level that is logged: debug, info, warning or error."),
    BOOL("logging", "access_log", "--access-log", "AISERVE_ACCESS_LOG", access_log, 1,
         "One JSON line per request in the log."),
};

const size_t core_n_settings = sizeof core_settings / sizeof core_settings[0];
_Static_assert(sizeof core_settings / sizeof core_settings[0] <= CORE_MAX_SETTINGS, "raise CORE_MAX_SETTINGS");

const char *const core_sections[] = {"server", "models",    "batching", "limits", "auth",
                                     "ratelimit", "cache", "redis", "gateway", "batch", "cors", "logging", NULL};
_Static_assert(sizeof core_sections / sizeof core_sections[0] <= 16, "config_file.c tracks 16 sections");

static const char *const level_names[] = {"debug", "info", "warning", "error"};

const char *core_log_level_name(core_log_level level) {
    return (unsigned)level < 4 ? level_names[level] : "unknown";
}

/* --- errors and lookups --------------------------------------------------- */

void core_set_error(core_error *err, const char *fmt, ...) {
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

const core_setting *core_setting_by_name(const char *section, const char *key) {
    for (size_t i = 0; i < core_n_settings; i++)
        if (strcmp(core_settings[i].section, section) == 0 && strcmp(core_settings[i].key, key) == 0)
            return &core_settings[i];
    return NULL;
}

static const core_setting *setting_by_flag(const char *flag, size_t len) {
    for (size_t i = 0; i < core_n_settings; i++)
        if (strlen(core_settings[i].flag) == len && memcmp(core_settings[i].flag, flag, len) == 0)
            return &core_settings[i];
    return NULL;
}

/* Optimal string alignment distance (a transposition counts 1), capped at
 * 9 for long strings. */
static int edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    if (n > 63 || m > 63)
        return 9;
    int d[64][64];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1];
            int best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

const char *core_suggest_flag(const char *flag) {
    const char *best = NULL;
    int best_d = 3; /* suggest only within 2 edits */
    for (size_t i = 0; i < core_n_settings; i++) {
        int d = edit_distance(flag, core_settings[i].flag);
        if (d < best_d)
            best_d = d, best = core_settings[i].flag;
    }
    if (edit_distance(flag, "--config") < best_d)
        best = "--config";
    return best;
}

const core_setting *core_suggest_key(const char *section, const char *key) {
    /* The right key in the wrong section is the likeliest slip. */
    for (size_t i = 0; i < core_n_settings; i++)
        if (strcmp(core_settings[i].key, key) == 0)
            return &core_settings[i];
    char name[160];
    snprintf(name, sizeof name, "%s.%s", section, key);
    const core_setting *best = NULL;
    int best_d = 3;
    for (size_t i = 0; i < core_n_settings; i++) {
        int d = edit_distance(name, core_settings[i].name);
        if (d < best_d)
            best_d = d, best = &core_settings[i];
    }
    return best;
}

const char *core_suggest_section(const char *name) {
    const char *best = NULL;
    int best_d = 3;
    for (const char *const *s = core_sections; *s; s++) {
        int d = edit_distance(name, *s);
        if (d < best_d)
            best_d = d, best = *s;
    }
    return best;
}

/* --- values --------------------------------------------------------------- */

static const char *unit_name(int64_t unit_us) { return unit_us == MS ? "milliseconds" : "microseconds"; }

static int parse_int(const char *s, int64_t *out) {
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (!*p || strspn(p, "0123456789") != strlen(p))
        return -1;
    int64_t v = 0;
    for (; *p; p++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
            return -1;
    *out = *s == '-' ? -v : v;
    return 0;
}

/* Strict UTF-8: no overlongs, surrogates or code points above U+10FFFF. */
static int valid_utf8(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char b = p[i];
        size_t k = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (k == 0 || i + k > n)
            return 0;
        uint32_t cp = k == 1 ? b : (uint32_t)(b & (0x7F >> k));
        for (size_t j = 1; j < k; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

/* --- lists and tiers ------------------------------------------------------ */

/* An IPv4 or IPv6 address, optionally with a /prefix length. */
static int check_address(const char *item, char *why, size_t cap) {
    char addr[64];
    const char *slash = strchr(item, '/');
    size_t n = slash ? (size_t)(slash - item) : strlen(item);
    unsigned char bytes[16];
    int bits = 0;
    if (n > 0 && n < sizeof addr) {
        memcpy(addr, item, n);
        addr[n] = 0;
        if (inet_pton(AF_INET, addr, bytes) == 1)
            bits = 32;
        else if (inet_pton(AF_INET6, addr, bytes) == 1)
            bits = 128;
    }
    if (!bits)
        return snprintf(why, cap, "'%.64s' is not an IP address or a CIDR block (10.0.0.0/8, fd00::/8)", item), -1;
    if (slash) {
        int64_t len;
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3 || strspn(p, "0123456789") != strlen(p) || parse_int(p, &len) < 0 || len > bits)
            return snprintf(why, cap, "'%.64s': the prefix length must be 0..%d", item, bits), -1;
    }
    return 0;
}

static int is_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* value[0..len) trimmed of blanks into *start / *n. */
static void trim(const char **start, size_t *n) {
    while (*n && is_blank(**start))
        (*start)++, (*n)--;
    while (*n && is_blank((*start)[*n - 1]))
        (*n)--;
}

/* A list: items separated by commas, optionally inside [ ]; blanks around
 * items are dropped; stored joined by "," ("" for none). */
static int apply_list(const core_setting *s, char *place, const char *value, size_t len, char *why, size_t cap) {
    if (!valid_utf8((const unsigned char *)value, len))
        return snprintf(why, cap, "is not valid UTF-8"), -1;
    trim(&value, &len);
    if (len >= 2 && value[0] == '[' && value[len - 1] == ']') {
        value++, len -= 2;
        trim(&value, &len);
    }
    char *out = calloc(1, s->size);
    char *item = malloc(len + 1);
    if (!out || !item) {
        free(out);
        free(item);
        return snprintf(why, cap, "out of memory"), -1;
    }
    size_t used = 0;
    int rc = 0;
    for (size_t pos = 0; len > 0 && pos <= len && rc == 0;) {
        const char *comma = memchr(value + pos, ',', len - pos);
        size_t end = comma ? (size_t)(comma - value) : len;
        const char *p = value + pos;
        size_t n = end - pos;
        trim(&p, &n);
        pos = end + 1;
        if (n == 0) {
            rc = -1;
            snprintf(why, cap, "has an empty item (two commas in a row, or one at an end)");
            break;
        }
        memcpy(item, p, n);
        item[n] = 0;
        if (s->check_item && s->check_item(item, why, cap) < 0) {
            rc = -1;
            break;
        }
        if (used + (used ? 1 : 0) + n > (size_t)s->max) {
            rc = -1;
            snprintf(why, cap, "is longer than %lld bytes", (long long)s->max);
            break;
        }
        if (used)
            out[used++] = ',';
        memcpy(out + used, item, n);
        used += n;
        if (!comma)
            break;
    }
    if (rc == 0)
        memcpy(place, out, s->size);
    free(out);
    free(item);
    return rc;
}

static const core_tier builtin_tiers[] = {{"default", 100, 100}, {"anonymous", 100, 100}};

static int tier_name_ok(const char *p, size_t n) {
    if (n == 0 || n > CORE_TIER_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* A rate in 1..CORE_TIER_RATE_MAX from p[0..n). */
static int parse_rate(const char *p, size_t n, int *out) {
    char text[16];
    int64_t v;
    if (n == 0 || n >= sizeof text)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return -1;
    memcpy(text, p, n);
    text[n] = 0;
    if (parse_int(text, &v) < 0 || v < 1 || v > CORE_TIER_RATE_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

int core_tiers_parse(const char *text, size_t len, core_tiers *out, char *why, size_t cap) {
    core_tiers t;
    memset(&t, 0, sizeof t);
    for (size_t i = 0; i < sizeof builtin_tiers / sizeof builtin_tiers[0]; i++)
        t.tier[t.n++] = builtin_tiers[i];
    int given[CORE_MAX_TIERS] = {0};
    if (memchr(text, 0, len))
        return snprintf(why, cap, "the value contains a NUL byte"), -1;
    trim(&text, &len);
    for (size_t pos = 0; len > 0;) {
        const char *comma = memchr(text + pos, ',', len - pos);
        size_t end = comma ? (size_t)(comma - text) : len;
        const char *p = text + pos;
        size_t n = end - pos;
        trim(&p, &n);
        if (n == 0)
            return snprintf(why, cap, "has an empty item (two commas in a row, or one at an end)"), -1;
        const char *eq = memchr(p, '=', n);
        const char *name = p;
        size_t name_len = eq ? (size_t)(eq - p) : n;
        trim(&name, &name_len);
        if (!eq)
            return snprintf(why, cap, "'%.*s' is not NAME=REQUESTS_PER_MINUTE/BURST", (int)(n < 80 ? n : 80), p), -1;
        if (!tier_name_ok(name, name_len))
            return snprintf(why, cap, "'%.*s' is not a tier name (1 to %d of A-Z a-z 0-9 . _ -)",
                            (int)(name_len < 80 ? name_len : 80), name, CORE_TIER_NAME_MAX),
                   -1;
        const char *rates = eq + 1;
        size_t rates_len = (size_t)(p + n - rates);
        trim(&rates, &rates_len);
        const char *slash = memchr(rates, '/', rates_len);
        const char *rpm = rates, *burst = slash ? slash + 1 : NULL;
        size_t rpm_len = slash ? (size_t)(slash - rates) : rates_len;
        size_t burst_len = slash ? (size_t)(rates + rates_len - burst) : 0;
        trim(&rpm, &rpm_len);
        if (burst)
            trim(&burst, &burst_len);
        core_tier tier;
        memset(&tier, 0, sizeof tier);
        memcpy(tier.name, name, name_len);
        if (parse_rate(rpm, rpm_len, &tier.requests_per_minute) < 0)
            return snprintf(why, cap, "tier %s: requests per minute '%.*s' is not an integer in 1..%d", tier.name,
                            (int)(rpm_len < 40 ? rpm_len : 40), rpm, CORE_TIER_RATE_MAX),
                   -1;
        tier.burst = tier.requests_per_minute;
        if (burst && parse_rate(burst, burst_len, &tier.burst) < 0)
            return snprintf(why, cap, "tier %s: burst '%.*s' is not an integer in 1..%d", tier.name,
                            (int)(burst_len < 40 ? burst_len : 40), burst, CORE_TIER_RATE_MAX),
                   -1;
        int k = 0;
        while (k < t.n && strcmp(t.tier[k].name, tier.name) != 0)
            k++;
        if (k < t.n && given[k])
            return snprintf(why, cap, "tier %s is given twice", tier.name), -1;
        if (k == t.n) {
            if (t.n == CORE_MAX_TIERS)
                return snprintf(why, cap, "has more than %d tiers", CORE_MAX_TIERS), -1;
            t.n++;
        }
        t.tier[k] = tier;
        given[k] = 1;
        if (!comma)
            break;
        pos = end + 1;
    }
    *out = t;
    return 0;
}

void core_tiers_format(const core_tiers *t, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < t->n && i < CORE_MAX_TIERS; i++) {
        int w = snprintf(buf + used, cap - used, "%s%.*s=%d/%d", i ? "," : "", CORE_TIER_NAME_MAX,
                         t->tier[i].name, t->tier[i].requests_per_minute, t->tier[i].burst);
        if (w < 0 || (size_t)w >= cap - used)
            break;
        used += (size_t)w;
    }
}

int core_setting_apply(const core_setting *s, core_config *c, const char *value, size_t len, char *why,
                       size_t cap) {
    char *place = (char *)c + s->offset;
    if (memchr(value, 0, len))
        return snprintf(why, cap, "the value contains a NUL byte"), -1;
    if (s->type == SETTING_LIST)
        return apply_list(s, place, value, len, why, cap);
    if (s->type == SETTING_TIERS) {
        core_tiers t;
        if (core_tiers_parse(value, len, &t, why, cap) < 0)
            return -1;
        memcpy(place, &t, sizeof t);
        return 0;
    }
    if (s->type == SETTING_STRING) {
        if ((int64_t)len < s->min)
            return snprintf(why, cap, "must not be empty"), -1;
        if ((int64_t)len > s->max)
            return snprintf(why, cap, "is %zu bytes long; at most %lld are allowed", len, (long long)s->max), -1;
        if (!valid_utf8((const unsigned char *)value, len))
            return snprintf(why, cap, "is not valid UTF-8"), -1;
        memcpy(place, value, len);
        place[len] = 0;
        return 0;
    }

    /* Everything else is a short word: trim it and NUL-terminate it. */
    while (len && (*value == ' ' || *value == '\t'))
        value++, len--;
    while (len && (value[len - 1] == ' ' || value[len - 1] == '\t' || value[len - 1] == '\n' ||
                   value[len - 1] == '\r'))
        len--;
    char text[96];
    if (len >= sizeof text)
        len = sizeof text - 1; /* too long for any valid value; the parser rejects what is left */
    memcpy(text, value, len);
    text[len] = 0;
    if (len == 0)
        return snprintf(why, cap, "has no value"), -1;

    char range[64];
    core_setting_format_range(s, range, sizeof range);
    switch (s->type) {
    case SETTING_INT: {
        int64_t v;
        if (parse_int(text, &v) < 0)
            return snprintf(why, cap, "'%s' is not an integer", text), -1;
        if (v < s->min || v > s->max)
            return snprintf(why, cap, "%s is out of range %s", text, range), -1;
        int iv = (int)v;
        memcpy(place, &iv, sizeof iv);
        return 0;
    }
    case SETTING_BOOL: {
        int v;
        if (core_parse_bool(text, &v) < 0)
            return snprintf(why, cap, "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", text), -1;
        bool b = v;
        memcpy(place, &b, sizeof b);
        return 0;
    }
    case SETTING_DURATION: {
        int64_t us;
        if (core_parse_duration(text, s->unit_us, &us) < 0)
            return snprintf(why, cap,
                            "'%s' is not a duration (a number with a unit: us, ms, s, m or h, as in 250ms "
                            "or 30s; a bare number is in %s)",
                            text, unit_name(s->unit_us)),
                   -1;
        if (us % s->unit_us)
            return snprintf(why, cap, "'%s' is not a whole number of %s", text, unit_name(s->unit_us)), -1;
        if (us < s->min || us > s->max)
            return snprintf(why, cap, "%s is out of range %s", text, range), -1;
        int64_t v = us / s->unit_us;
        memcpy(place, &v, sizeof v);
        return 0;
    }
    case SETTING_SIZE: {
        uint64_t v;
        if (core_parse_size_bytes(text, &v) < 0)
            return snprintf(why, cap,
                            "'%s' is not a size (bytes, or a number with k, M, G (x1000) or KiB, MiB, GiB "
                            "(x1024), as in 1MiB or 64k)",
                            text),
                   -1;
        if (v < (uint64_t)s->min || v > (uint64_t)s->max) {
            if (strspn(text, "0123456789") == len)
                return snprintf(why, cap, "%s is out of range %s", text, range), -1;
            return snprintf(why, cap, "%s (%llu bytes) is out of range %s", text, (unsigned long long)v, range),
                   -1;
        }
        memcpy(place, &v, sizeof v);
        return 0;
    }
    case SETTING_LEVEL: {
        int level = -1;
        for (int i = 0; i < 4; i++)
            if (strcasecmp(text, level_names[i]) == 0)
                level = i;
        if (strcasecmp(text, "warn") == 0)
            level = CORE_LOG_WARNING;
        if (level < 0)
            return snprintf(why, cap, "'%s' is not a log level (debug, info, warning, error)", text), -1;
        core_log_level v = (core_log_level)level;
        memcpy(place, &v, sizeof v);
        return 0;
    }
    case SETTING_STRING:
    case SETTING_LIST:
    case SETTING_TIERS:
        break;
    }
    return snprintf(why, cap, "unknown setting type"), -1;
}

void core_config_defaults(core_config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        char *place = (char *)c + s->offset;
        switch (s->type) {
        case SETTING_STRING:
        case SETTING_LIST:
            snprintf(place, s->size, "%s", s->def_str);
            break;
        case SETTING_TIERS: {
            core_tiers t;
            char why[8];
            core_tiers_parse(s->def_str, strlen(s->def_str), &t, why, sizeof why);
            memcpy(place, &t, sizeof t);
            break;
        }
        case SETTING_INT: {
            int v = (int)s->def;
            memcpy(place, &v, sizeof v);
            break;
        }
        case SETTING_BOOL: {
            bool v = s->def != 0;
            memcpy(place, &v, sizeof v);
            break;
        }
        case SETTING_DURATION: {
            int64_t v = s->def / s->unit_us;
            memcpy(place, &v, sizeof v);
            break;
        }
        case SETTING_SIZE: {
            uint64_t v = (uint64_t)s->def;
            memcpy(place, &v, sizeof v);
            break;
        }
        case SETTING_LEVEL: {
            core_log_level v = (core_log_level)s->def;
            memcpy(place, &v, sizeof v);
            break;
        }
        }
    }
}

/* --- checks over the whole configuration ---------------------------------- */

/* Whether the stored value of s is within its bounds. */
static int in_bounds(const core_setting *s, const core_config *c) {
    const char *place = (const char *)c + s->offset;
    switch (s->type) {
    case SETTING_STRING:
    case SETTING_LIST: {
        const char *end = memchr(place, 0, s->size);
        return end && end - place >= s->min;
    }
    case SETTING_TIERS: {
        core_tiers t;
        memcpy(&t, place, sizeof t);
        if (t.n < 2 || t.n > CORE_MAX_TIERS)
            return 0;
        for (int i = 0; i < t.n; i++) {
            const core_tier *tier = &t.tier[i];
            const char *end = memchr(tier->name, 0, sizeof tier->name);
            if (!end || !tier_name_ok(tier->name, (size_t)(end - tier->name)) || tier->requests_per_minute < 1 ||
                tier->requests_per_minute > CORE_TIER_RATE_MAX || tier->burst < 1 || tier->burst > CORE_TIER_RATE_MAX)
                return 0;
        }
        return 1;
    }
    case SETTING_INT: {
        int v;
        memcpy(&v, place, sizeof v);
        return v >= s->min && v <= s->max;
    }
    case SETTING_BOOL:
        return 1;
    case SETTING_DURATION: {
        int64_t v;
        memcpy(&v, place, sizeof v);
        return v >= s->min / s->unit_us && v <= s->max / s->unit_us;
    }
    case SETTING_SIZE: {
        uint64_t v;
        memcpy(&v, place, sizeof v);
        return v >= (uint64_t)s->min && v <= (uint64_t)s->max;
    }
    case SETTING_LEVEL: {
        core_log_level v;
        memcpy(&v, place, sizeof v);
        return (int)v >= s->min && (int)v <= s->max;
    }
    }
    return 0;
}

static const char *origin_of(const core_origins *origins, const core_setting *s) {
    const char *o = origins ? origins->origin[s - core_settings] : "";
    return *o ? o : "the default";
}

int core_config_check(const core_config *c, const core_origins *origins, core_error *err) {
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        if (!in_bounds(s, c)) {
            if (s->type == SETTING_TIERS) {
                core_set_error(err, "%s: a tier has a bad name or a rate outside 1..%d, or there are more than %d",
                               s->name, CORE_TIER_RATE_MAX, CORE_MAX_TIERS);
                return -1;
            }
            if (s->type == SETTING_STRING || s->type == SETTING_LIST) {
                const char *place = (const char *)c + s->offset;
                core_set_error(err, "%s: %s", s->name,
                               memchr(place, 0, s->size) ? "must not be empty" : "is not NUL-terminated");
                return -1;
            }
            char range[64], value[96] = "";
            core_setting_format_range(s, range, sizeof range);
            core_setting_format(s, c, value, sizeof value);
            core_set_error(err, "%s: %s is out of range %s", s->name, value, range);
            return -1;
        }
    }
    if (!c->tls_cert[0] != !c->tls_key[0]) {
        const core_setting *set = core_setting_by_name("server", c->tls_cert[0] ? "tls_cert" : "tls_key");
        core_set_error(err,
                       "%s is set (from %s) but %s is not: HTTPS needs both the certificate and its key "
                       "(--tls-cert FILE --tls-key FILE); give neither for plain HTTP",
                       set->name, origin_of(origins, set), c->tls_cert[0] ? "server.tls_key" : "server.tls_cert");
        return -1;
    }
    if (strcmp(c->ratelimit_on_backend_failure, "allow") != 0 &&
        strcmp(c->ratelimit_on_backend_failure, "deny") != 0) {
        const core_setting *set = core_setting_by_name("ratelimit", "on_backend_failure");
        core_set_error(err, "%s: '%s' (from %s) must be allow or deny", set->name, c->ratelimit_on_backend_failure,
                       origin_of(origins, set));
        return -1;
    }
    if (strcmp(c->batch_store, "auto") != 0 && strcmp(c->batch_store, "sqlite") != 0 &&
        strcmp(c->batch_store, "redis") != 0) {
        const core_setting *set = core_setting_by_name("batch", "store");
        core_set_error(err, "%s: '%s' (from %s) must be auto, sqlite or redis", set->name, c->batch_store,
                       origin_of(origins, set));
        return -1;
    }
    if (strcmp(c->batch_store, "redis") == 0 && !c->redis_url[0]) {
        const core_setting *set = core_setting_by_name("batch", "store");
        core_set_error(err, "%s is redis (from %s) but redis.url is empty: name the Redis (--redis-url URL)",
                       set->name, origin_of(origins, set));
        return -1;
    }
    if (c->max_inputs > c->max_queue_size) {
        const core_setting *in = core_setting_by_name("limits", "max_inputs");
        const core_setting *queue = core_setting_by_name("batching", "max_queue_size");
        core_set_error(err,
                       "limits.max_inputs (%d, from %s) is larger than batching.max_queue_size (%d, from %s): "
                       "a request with that many texts could never be queued",
                       c->max_inputs, origin_of(origins, in), c->max_queue_size, origin_of(origins, queue));
        return -1;
    }
    return 0;
}

int core_config_validate(const core_config *c, core_error *err) { return core_config_check(c, NULL, err); }

int core_config_set(core_config *c, const char *key, const char *value, core_error *err) {
    const char *dot = key ? strchr(key, '.') : NULL;
    const core_setting *s = NULL;
    if (dot && dot - key < 64) {
        char section[64];
        memcpy(section, key, (size_t)(dot - key));
        section[dot - key] = 0;
        s = core_setting_by_name(section, dot + 1);
    }
    if (!s) {
        core_set_error(err, "unknown setting %s", key ? key : "(null)");
        return -1;
    }
    char why[400];
    core_config tmp = *c;
    if (core_setting_apply(s, &tmp, value ? value : "", value ? strlen(value) : 0, why, sizeof why) < 0) {
        core_set_error(err, "%s: %s", s->name, why);
        return -1;
    }
    *c = tmp;
    return 0;
}

/* --- environment and flags ------------------------------------------------ */

/* Value of NAME in envp, or NULL when unset or empty. */
static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return (*e)[n + 1] ? *e + n + 1 : NULL;
    return NULL;
}

static int apply_env(core_config *c, char **envp, core_origins *origins, core_error *err) {
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        const char *names[2] = {s->env_alias, s->env}; /* the AISERVE_ name wins */
        for (int k = 0; k < 2; k++) {
            const char *value = names[k] ? env_get(envp, names[k]) : NULL;
            if (!value)
                continue;
            char why[400];
            if (core_setting_apply(s, c, value, strlen(value), why, sizeof why) < 0) {
                core_set_error(err, "environment %s: %s", names[k], why);
                return -1;
            }
            snprintf(origins->origin[i], sizeof origins->origin[i], "environment %s", names[k]);
        }
    }
    return 0;
}

/* One flag with its value, as found in argv. */
typedef struct flag_value {
    const core_setting *setting;
    const char *flag; /* as written, up to '=' */
    size_t flag_len;
    const char *value;
} flag_value;

typedef struct flag_scan {
    flag_value *values;
    size_t n_values;
    int help;
    const char *config_path;
    core_error error; /* the first syntax error, if any */
    int has_error;
} flag_scan;

static void scan_error(flag_scan *scan, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void scan_error(flag_scan *scan, const char *fmt, ...) {
    if (scan->has_error)
        return;
    scan->has_error = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(scan->error.message, sizeof scan->error.message, fmt, ap);
    va_end(ap);
}

/* Splits argv into flags and values. Keeps going after a syntax error so
 * that --help anywhere still wins. */
static void scan_flags(flag_scan *scan, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            scan->help = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == 0) {
            if (arg[0] == '-' && arg[1] != 0 && strcmp(arg, "--") != 0)
                scan_error(scan, "unknown flag %s (see --help)", arg);
            else
                scan_error(scan, "unexpected argument '%s': settings are given as --name value", arg);
            continue;
        }
        const char *eq = strchr(arg, '=');
        size_t flag_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const char *value = eq ? eq + 1 : NULL;
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;

        if (flag_len == 8 && memcmp(arg, "--config", 8) == 0) {
            if (!value && next && strncmp(next, "--", 2) != 0)
                value = next, i++;
            if (!value || !*value)
                scan_error(scan, "flag --config: needs a file name");
            else
                scan->config_path = value;
            continue;
        }

        const core_setting *s = setting_by_flag(arg, flag_len);
        if (!s && flag_len > 5 && memcmp(arg, "--no-", 5) == 0) {
            char positive[128];
            snprintf(positive, sizeof positive, "--%.*s", (int)(flag_len - 5), arg + 5);
            const core_setting *b = setting_by_flag(positive, strlen(positive));
            if (b && b->type == SETTING_BOOL) {
                if (value)
                    scan_error(scan, "flag %.*s: takes no value", (int)flag_len, arg);
                else
                    scan->values[scan->n_values++] = (flag_value){b, arg, flag_len, "false"};
                continue;
            }
        }
        if (!s) {
            char written[128];
            snprintf(written, sizeof written, "%.*s", (int)(flag_len < 100 ? flag_len : 100), arg);
            const char *hint = core_suggest_flag(written);
            if (hint)
                scan_error(scan, "unknown flag %s (did you mean %s?)", written, hint);
            else
                scan_error(scan, "unknown flag %s (see --help)", written);
            continue;
        }
        if (!value && s->type == SETTING_BOOL) {
            int ignored;
            if (next && core_parse_bool(next, &ignored) == 0)
                value = next, i++;
            else
                value = "true";
        } else if (!value) {
            if (!next || strncmp(next, "--", 2) == 0) {
                scan_error(scan, "flag %s: needs a value (%s)", s->flag, s->metavar);
                continue;
            }
            value = next, i++;
        }
        scan->values[scan->n_values++] = (flag_value){s, arg, flag_len, value};
    }
}

int core_config_load(core_config *c, int argc, char **argv, char **envp, FILE *help_out, core_error *err) {
    if (err)
        err->message[0] = 0;
    flag_scan scan = {0};
    scan.values = calloc(argc > 0 ? (size_t)argc : 1, sizeof *scan.values);
    core_origins *origins = calloc(1, sizeof *origins);
    core_config *tmp = malloc(sizeof *tmp);
    int rc = -1;
    if (!scan.values || !origins || !tmp) {
        core_set_error(err, "out of memory");
        goto done;
    }
    scan_flags(&scan, argc, argv);
    if (scan.help) {
        if (help_out)
            core_config_print_help(help_out);
        rc = 1;
        goto done;
    }
    if (scan.has_error) {
        core_set_error(err, "%s", scan.error.message);
        goto done;
    }

    core_config_defaults(tmp);
    const char *path = scan.config_path, *via = "flag --config";
    if (!path) {
        path = env_get(envp, "AISERVE_CONFIG");
        via = "environment AISERVE_CONFIG";
    }
    if (path && core_config_file_apply(tmp, path, via, origins, err) < 0)
        goto done;
    if (apply_env(tmp, envp, origins, err) < 0)
        goto done;
    for (size_t i = 0; i < scan.n_values; i++) {
        const flag_value *f = &scan.values[i];
        char why[400];
        if (core_setting_apply(f->setting, tmp, f->value, strlen(f->value), why, sizeof why) < 0) {
            core_set_error(err, "flag %.*s: %s", (int)f->flag_len, f->flag, why);
            goto done;
        }
        snprintf(origins->origin[f->setting - core_settings], sizeof origins->origin[0], "flag %.*s",
                 (int)(f->flag_len < 100 ? f->flag_len : 100), f->flag);
    }
    if (core_config_check(tmp, origins, err) < 0)
        goto done;
    *c = *tmp;
    rc = 0;
done:
    free(scan.values);
    free(origins);
    free(tmp);
    return rc;
}
