/*
 * serve.c - `aiserve serve`: the HTTP server's process lifecycle.
 *
 *   configuration (core) -> logging level -> metrics registry
 *   -> model repository scanned (serving) -> HTTP loops listening (http)
 *   -> on a terminal, or when AISERVE_BANNER asks, a banner on stderr with
 *      the address really used and curl lines to try (stdout stays JSON)
 *   -> models loaded on the loader thread (the server answers /health/live
 *      at once and /health/ready with 503 until every model is loaded)
 *   -> SIGTERM / SIGINT: stop accepting, let requests in flight finish
 *      (bounded by drain_timeout), exit 0; a second signal exits at once.
 *   -> rate limits and the response cache, each in its own memory store
 *      (guard over store), swept for expired entries once a second from
 *      this thread; or both in one Redis (redis.url), with a connection per
 *      HTTP loop
 *   -> SIGHUP, or the API key store's file changing (checked about once a
 *      second from this thread, never on a request's path): the key store
 *      is read again; a file that does not load is logged and the keys in
 *      use stay.
 *
 * Signals are blocked in every thread and taken synchronously here with
 * sigtimedwait, so no handler runs inside library code. SIGPIPE is ignored
 * (a client that hangs up is an ordinary event).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "core.h"
#include "guard.h"
#include "http.h"
#include "obs.h"
#include "serving.h"
#include "gateway.h"
#include "jobs.h"
#include "store.h"

#ifndef AISERVE_VERSION
#define AISERVE_VERSION "0.0.0"
#endif
#ifndef AISERVE_REVISION
#define AISERVE_REVISION "unknown"
#endif

extern char **environ;

static log_level to_log_level(core_log_level l) {
    switch (l) {
    case CORE_LOG_DEBUG: return LOG_DEBUG;
    case CORE_LOG_INFO: return LOG_INFO;
    case CORE_LOG_WARNING: return LOG_WARN;
    case CORE_LOG_ERROR: return LOG_ERROR;
    }
    return LOG_INFO;
}

/* Waits up to `ms` for SIGINT/SIGTERM/SIGHUP; returns the signal or 0. */
static int wait_signal(const sigset_t *set, long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* Whether clients on other machines can reach host: anything but a
 * loopback address (127.0.0.0/8, ::1) or "localhost". */
static int is_exposed(const char *host) {
    unsigned char addr[16];
    if (strcmp(host, "localhost") == 0)
        return 0;
    if (inet_pton(AF_INET, host, addr) == 1)
        return addr[0] != 127;
    if (inet_pton(AF_INET6, host, addr) == 1) {
        static const unsigned char loopback6[16] = {[15] = 1};
        return memcmp(addr, loopback6, 16) != 0;
    }
    return 1;
}

/* With no keys every endpoint is open: say so, loudly when exposed. */
static void log_auth_state(guard_keys *keys, const char *host) {
    guard_keys_stats st;
    guard_keys_get_stats(keys, &st);
    if (st.n_keys == 0) {
        log_event(is_exposed(host) ? LOG_WARN : LOG_INFO, "auth_disabled", "keys_file", json_string(st.path),
                  "host", json_string(host), "message",
                  json_string("no API keys are configured (the key store is missing or empty): every "
                              "endpoint is open; create one with `aiserve keys create`"),
                  NULL);
        return;
    }
    if (st.mode & 077) {
        char mode[8];
        snprintf(mode, sizeof mode, "0%03o", st.mode & 0777);
        log_event(LOG_WARN, "keys_file_permissions", "keys_file", json_string(st.path), "mode",
                  json_string(mode), "message",
                  json_string("the key store can be read by other users; chmod 600 it"), NULL);
    }
}

/* Whether to print the banner: as AISERVE_BANNER says (a boolean;
 * scripts/serve.sh sets it), else when stderr is a terminal. */
static int wants_banner(void) {
    const char *v = getenv("AISERVE_BANNER");
    int on;
    if (v && *v && core_parse_bool(v, &on) == 0)
        return on;
    return isatty(STDERR_FILENO);
}

/* The banner for a person: where the server listens, as resolved from
 * flags, environment and file, and requests to try. On stderr, since the
 * JSON logs own stdout. A wildcard address is reached through loopback. */
static void print_banner(const core_config *cfg, int port, guard_keys *keys) {
    int any4 = strcmp(cfg->host, "0.0.0.0") == 0, any6 = strcmp(cfg->host, "::") == 0;
    const char *host = any4 ? "127.0.0.1" : any6 ? "::1" : cfg->host;
    unsigned char addr[16];
    int bracket = inet_pton(AF_INET6, host, addr) == 1;
    char url[sizeof cfg->host + 32];
    snprintf(url, sizeof url, "%s://%s%s%s:%d", cfg->tls_cert[0] ? "https" : "http", bracket ? "[" : "", host,
             bracket ? "]" : "", port);
    if (any4 || any6)
        fprintf(stderr, "aiserve: serving %s on %s%s%s:%d, every %saddress; from this machine %s "
                "(Ctrl-C to stop). Try:\n", cfg->model_repository, any6 ? "[" : "", cfg->host, any6 ? "]" : "",
                port, any4 ? "IPv4 " : "", url);
    else
        fprintf(stderr, "aiserve: serving %s on %s (Ctrl-C to stop). Try:\n", cfg->model_repository, url);
    fprintf(stderr,
            "  curl -s %s/predict -H 'Content-Type: application/json' "
            "-d '{\"text\": \"a gripping, beautifully made film\"}'\n"
            "  curl -s %s/v1/models\n"
            "  curl -s %s/metrics\n"
            "or open %s/ in a browser: the operator console (API docs at %s/docs).\n",
            url, url, url, url, url);
    guard_keys_stats st;
    guard_keys_get_stats(keys, &st);
    if (st.n_keys > 0)
        fprintf(stderr, "API keys are on (%s): add -H 'Authorization: Bearer KEY'.\n", st.path);
    for (int i = 0; cfg->ratelimit_enabled && i < cfg->ratelimit_tiers.n; i++) {
        const core_tier *t = &cfg->ratelimit_tiers.tier[i];
        if (strcmp(t->name, "anonymous") == 0)
            fprintf(stderr,
                    "Rate limit: %d requests a minute per client address (bursts of %d), then 429; "
                    "--no-rate-limit turns it off.\n",
                    t->requests_per_minute, t->burst);
    }
}

/* Rate limiting and the response cache, with their stores: one memory
 * store each, or one Redis store (redis.url) that both share with every
 * instance pointed at it. */
typedef struct protection {
    kv_store *limits, *answers; /* memory stores, when no Redis */
    kv_store *redis;            /* the shared store, when redis.url is set */
    kv_store *counters;         /* the gateway's budgets, in memory when no Redis */
    guard_ratelimit *ratelimit;
    guard_cache *cache;
} protection;

/* Bucket memory at most: a backstop (about 400,000 buckets), since idle
 * buckets expire on their own; past it the least recently used clients
 * are forgotten (they start again with a full bucket). */
#define RATELIMIT_STORE_BYTES (UINT64_C(64) << 20)

static void protection_close(protection *p) {
    guard_cache_destroy(p->cache);
    kv_destroy(p->answers);
    guard_ratelimit_destroy(p->ratelimit);
    kv_destroy(p->limits);
    kv_destroy(p->counters);
    kv_destroy(p->redis);
    memset(p, 0, sizeof *p);
}

/* The Redis of redis.url, as configured: shared by the protection store and
 * the batch job queue. */
static kv_redis_options redis_options(const core_config *cfg, metrics_registry *registry) {
    return (kv_redis_options){
        .url = cfg->redis_url,
        .key_prefix = cfg->redis_key_prefix,
        .connect_timeout_us = (uint64_t)cfg->redis_connect_timeout_ms * 1000u,
        .command_timeout_us = (uint64_t)cfg->redis_command_timeout_ms * 1000u,
        .metrics = registry,
    };
}

/* Makes what cfg enables. Returns 0, or -1 with a message in err. */
static int protection_open(const core_config *cfg, metrics_registry *registry, protection *p, char *err,
                           size_t cap) {
    memset(p, 0, sizeof *p);
    guard_error gerr = {0};
    if (cfg->redis_url[0] && (cfg->ratelimit_enabled || cfg->cache_enabled || cfg->gateway_config[0])) {
        kv_redis_options ro = redis_options(cfg, registry);
        char rerr[300];
        if (kv_redis_create(&ro, &p->redis, rerr, sizeof rerr) != KV_OK) {
            snprintf(err, cap, "redis.url: %s", rerr);
            return -1;
        }
    }
    if (cfg->ratelimit_enabled) {
        guard_tier tiers[CORE_MAX_TIERS];
        size_t n = 0;
        for (int i = 0; i < cfg->ratelimit_tiers.n && i < CORE_MAX_TIERS; i++, n++) {
            const core_tier *t = &cfg->ratelimit_tiers.tier[i];
            memset(&tiers[n], 0, sizeof tiers[n]);
            snprintf(tiers[n].name, sizeof tiers[n].name, "%s", t->name);
            tiers[n].requests_per_minute = t->requests_per_minute;
            tiers[n].burst = t->burst;
        }
        guard_ratelimit_options ro = {
            .tiers = tiers,
            .n_tiers = n,
            .trusted_proxies = cfg->trusted_proxies,
            .store = p->redis,
            .deny_on_backend_failure = strcmp(cfg->ratelimit_on_backend_failure, "deny") == 0,
        };
        kv_memory_options mo = {.max_bytes = RATELIMIT_STORE_BYTES};
        if (!p->redis && kv_memory_create(&mo, &p->limits) != KV_OK) {
            snprintf(err, cap, "rate limiter: out of memory");
            protection_close(p);
            return -1;
        }
        if (!ro.store)
            ro.store = p->limits;
        if (guard_ratelimit_create(&ro, registry, &p->ratelimit, &gerr) != 0) {
            snprintf(err, cap, "rate limiter: %.400s", gerr.message);
            protection_close(p);
            return -1;
        }
    }
    if (cfg->gateway_config[0] && !p->redis) {
        kv_memory_options mo = {.max_bytes = RATELIMIT_STORE_BYTES};
        if (kv_memory_create(&mo, &p->counters) != KV_OK) {
            snprintf(err, cap, "gateway budgets: out of memory");
            protection_close(p);
            return -1;
        }
    }
    if (cfg->cache_enabled) {
        kv_memory_options mo = {.max_bytes = cfg->cache_max_bytes};
        if (!p->redis && kv_memory_create(&mo, &p->answers) != KV_OK) {
            snprintf(err, cap, "cache: cannot make a store of %llu bytes", (unsigned long long)cfg->cache_max_bytes);
            protection_close(p);
            return -1;
        }
        guard_cache_options co = {.store = p->redis ? p->redis : p->answers,
                                  .ttl_us = (uint64_t)cfg->cache_ttl_ms * 1000u};
        if (guard_cache_create(&co, registry, &p->cache, &gerr) != 0) {
            snprintf(err, cap, "cache: %.400s", gerr.message);
            protection_close(p);
            return -1;
        }
    }
    return 0;
}

/* models.traffic ("sentiment@1=80,sentiment@2=20", checked by core):
 * one split per model. 0, or -1 with a message in err. */
/* Reports a reload: rc from guard_keys_reload / guard_keys_poll. */
static void log_keys_reload(guard_keys *keys, int rc, const guard_error *err, const char *trigger,
                            const char *host) {
    if (rc == 0)
        return;
    guard_keys_stats st;
    guard_keys_get_stats(keys, &st);
    if (rc < 0) {
        log_event(LOG_ERROR, "keys_reload_failed", "trigger", json_string(trigger), "error",
                  json_string(err->message), "keys_in_use", json_integer((json_int_t)st.n_keys), NULL);
        return;
    }
    log_event(LOG_INFO, "keys_reloaded", "trigger", json_string(trigger), "keys_file", json_string(st.path),
              "keys", json_integer((json_int_t)st.n_keys), "active", json_integer((json_int_t)st.n_active),
              NULL);
    log_auth_state(keys, host);
}

/* Tears down what cli_serve made, in reverse order (NULLs are skipped). */
static void close_all(http_server *server, gateway *gw, jobs *batch, serving_repo *repo, protection *prot,
                      guard_keys *keys, metrics_registry *registry) {
    http_server_destroy(server);
    gateway_destroy(gw); /* after the server: its loops held the gateway's calls */
    jobs_close(batch); /* before the repository: its worker holds a version */
    serving_repo_destroy(repo);
    protection_close(prot);
    guard_keys_close(keys);
    metrics_registry_destroy(registry);
}

int cli_serve(int argc, char **argv) {
    core_config cfg;
    core_error cerr = {{0}};
    int rc = core_config_load(&cfg, argc, argv, environ, stdout, &cerr);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "aiserve serve: %s\n", cerr.message);
        return 2;
    }
    log_set_level(to_log_level(cfg.log_level));
    double t_start = core_wall_time();
    uint64_t t0 = core_now_us();

    /* Before any thread exists: signals go only to sigtimedwait below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    const int cpus = core_cpu_count();
    char *described = core_config_describe_json(&cfg);
    json_error_t jerr;
    json_t *config_json = described ? json_loads(described, 0, &jerr) : NULL;
    free(described);
    log_event(LOG_INFO, "starting", "version", json_string(AISERVE_VERSION), "revision",
              json_string(AISERVE_REVISION), "pid", json_integer(getpid()), "cpus",
              json_integer(cpus), "config", config_json ? config_json : json_null(), NULL);

    /* What start-up makes, torn down in reverse at `failed` when a step
     * fails (every close takes what was never made). */
    char why[512] = "";
    const char *failed_keys_file = NULL; /* the key store was what failed */
    guard_keys *keys = NULL;
    protection prot = {0};
    serving_repo *repo = NULL;
    jobs *batch = NULL;
    gateway *gw = NULL;
    http_server *server = NULL;
    metrics_registry *registry = metrics_registry_create();
    if (!registry || metrics_register_process(registry) != 0) {
        snprintf(why, sizeof why, "out of memory");
        goto failed;
    }
    const char *build_labels[] = {"version", "revision"};
    metric_family *build = metrics_gauge(registry, "aiserve_build_info",
                                         "Always 1; labels name the build", 2, build_labels);
    const char *build_values[] = {AISERVE_VERSION, AISERVE_REVISION};
    if (build)
        metric_set(metric_series(build, build_values), 1);
    metric_family *start_family = metrics_gauge(
        registry, "aiserve_ready_time_seconds",
        "Seconds from process start until every model was loaded", 0, NULL);
    metric *ready_time = start_family ? metric_series(start_family, NULL) : NULL;

    /* A key store that is there but cannot be read must stop the start:
     * serving openly instead would be the wrong way to fail. */
    guard_error gerr = {0};
    if (guard_keys_open(cfg.keys_file, cfg.keys_required, registry, &keys, &gerr) != 0) {
        snprintf(why, sizeof why, "%s", gerr.message);
        failed_keys_file = cfg.keys_file;
        goto failed;
    }
    {
        guard_keys_stats st;
        guard_keys_get_stats(keys, &st);
        if (st.n_keys > 0)
            log_event(LOG_INFO, "keys_loaded", "keys_file", json_string(st.path), "keys",
                      json_integer((json_int_t)st.n_keys), "active", json_integer((json_int_t)st.n_active),
                      NULL);
        log_auth_state(keys, cfg.host);
    }

    if (protection_open(&cfg, registry, &prot, why, sizeof why) != 0)
        goto failed;

    serving_options sopts = {
        .repository = cfg.model_repository,
        .default_model = cfg.default_model,
        .engine_threads = cfg.engine_threads > 0 ? cfg.engine_threads : cpus,
        .engine_nice = cfg.engine_nice,
        .max_batch_size = cfg.max_batch_size,
        .max_queue_delay_us = cfg.max_queue_delay_us,
        .max_queue_size = cfg.max_queue_size,
        .version_policy = cfg.version_policy,
        .quantization = cfg.quantization,
        .poll_interval_us = (uint64_t)cfg.poll_interval_ms * 1000u,
    };
    serving_error serr = {0};
    if (serving_repo_create(&sopts, registry, &repo, &serr) != 0) {
        snprintf(why, sizeof why, "%s", serr.message);
        goto failed;
    }
    if (cli_apply_policy(repo, &cfg, why, sizeof why) != 0)
        goto failed;

    if (cfg.batch_enabled) {
        jobs_options jo = {
            .data_dir = cfg.batch_data_dir,
            .repo = repo,
            .max_inputs = (size_t)cfg.batch_max_inputs,
            .max_active_per_owner = cfg.batch_max_jobs_per_key,
            .retention_us = (uint64_t)cfg.batch_retention_ms * 1000u,
            .metrics = registry,
            .lease_us = (uint64_t)cfg.batch_lease_ms * 1000u,
        };
        kv_redis_options batch_redis = redis_options(&cfg, NULL); /* links count no metrics */
        if (strcmp(cfg.batch_store, "redis") == 0 || (strcmp(cfg.batch_store, "auto") == 0 && cfg.redis_url[0]))
            jo.redis = &batch_redis;
        if (jobs_open(&jo, &batch, why, sizeof why) != JOBS_OK)
            goto failed;
    }

    if (cfg.gateway_config[0]) {
        gateway_options go = {.config_file = cfg.gateway_config, .metrics = registry, .cache = prot.cache,
                              .store = prot.redis ? prot.redis : prot.counters, .repo = repo};
        if (gateway_create(&go, &gw, why, sizeof why) != 0)
            goto failed;
    }

    http_options hopts = {
        .host = cfg.host,
        .port = cfg.port,
        .n_threads = cfg.http_threads > 0 ? cfg.http_threads : cpus,
        .max_connections = cfg.max_connections,
        .max_body_bytes = (size_t)cfg.max_body_bytes,
        .max_header_bytes = (size_t)cfg.max_header_bytes,
        .read_timeout_ms = cfg.read_timeout_ms,
        .idle_timeout_ms = cfg.idle_timeout_ms,
        .request_timeout_ms = cfg.request_timeout_ms,
        .max_text_chars = cfg.max_text_chars,
        .max_inputs = cfg.max_inputs,
        .access_log = cfg.access_log,
        .version = AISERVE_VERSION,
        .keys = keys,
        .ratelimit = prot.ratelimit,
        .cache = prot.cache,
        .shared_store = prot.redis,
        .jobs = batch,
        .gateway = gw,
        .max_batch_inputs = (size_t)cfg.batch_max_inputs,
        .tls_cert_file = cfg.tls_cert,
        .tls_key_file = cfg.tls_key,
        .cors_allowed_origins = cfg.cors_allowed_origins,
        .cors_max_age_s = cfg.cors_max_age_ms / 1000,
    };
    if (http_server_create(&hopts, repo, registry, &server, why, sizeof why) != 0 ||
        http_server_start(server, why, sizeof why) != 0)
        goto failed;
    if (is_exposed(cfg.host))
        log_event(LOG_WARN, "exposed", "host", json_string(cfg.host), "message",
                  json_string("listening beyond loopback"), NULL);
    log_event(LOG_INFO, "listening", "host", json_string(cfg.host), "port",
              json_integer(http_server_port(server)), "tls", json_boolean(cfg.tls_cert[0] != 0),
              "event_loops", json_integer(hopts.n_threads), "model_repository",
              json_string(cfg.model_repository), NULL);
    if (wants_banner())
        print_banner(&cfg, http_server_port(server), keys);
    if (serving_repo_start(repo) != 0 || (batch && jobs_start(batch) != JOBS_OK)) {
        snprintf(why, sizeof why, "cannot start the loader");
        goto failed;
    }

    int sig = 0, announced = 0;
    uint64_t last_sweep_us = core_now_us();
    while (!sig) {
        sig = wait_signal(&sigs, announced ? 1000 : 5);
        if (sig == SIGHUP) {
            sig = 0;
            log_keys_reload(keys, guard_keys_reload(keys, &gerr), &gerr, "sighup", cfg.host);
        } else {
            log_keys_reload(keys, guard_keys_poll(keys, core_now_us(), &gerr), &gerr, "file_changed",
                            cfg.host);
        }
        if (core_now_us() - last_sweep_us >= 1000000u) { /* expired buckets and answers */
            last_sweep_us = core_now_us();
            kv_maintain(prot.limits);
            kv_maintain(prot.counters);
            guard_cache_maintain(prot.cache);
        }
        if (!announced && serving_repo_is_settled(repo)) {
            announced = 1;
            double secs = (double)(core_now_us() - t0) / 1e6;
            if (serving_repo_is_ready(repo)) {
                if (ready_time)
                    metric_set(ready_time, secs);
                log_event(LOG_INFO, "ready", "startup_seconds", json_real(secs), "default_model",
                          json_string(serving_repo_default_model(repo)), NULL);
            } else {
                log_event(LOG_ERROR, "not_ready", "message",
                          json_string("a model has no loadable version (see model_load_failed); "
                                      "serving the rest, /health/ready answers 503"),
                          NULL);
            }
        }
    }

    log_event(LOG_INFO, "shutting_down", "signal", json_string(strsignal(sig)), "in_flight",
              json_integer(http_server_in_flight(server)), "drain_timeout_ms",
              json_integer(cfg.drain_timeout_ms), NULL);
    http_server_stop_accepting(server);
    uint64_t until = core_now_us() + (uint64_t)cfg.drain_timeout_ms * 1000u;
    while (http_server_in_flight(server) > 0 && core_now_us() < until) {
        int again = wait_signal(&sigs, 5);
        if (again == SIGHUP) /* no reloads while draining */
            again = 0;
        if (again && http_server_in_flight(server) == 0)
            break; /* it came as the last request finished: nothing to abandon, stop as usual */
        if (again) {
            log_event(LOG_WARN, "exit_now", "signal", json_string(strsignal(again)), "in_flight",
                      json_integer(http_server_in_flight(server)), NULL);
            _exit(128 + again);
        }
    }
    int left = http_server_in_flight(server);
    if (left > 0) {
        /* Out of time: queued work is answered 503 instead of computed; give
         * the loops a moment to write those answers (only the batches being
         * computed remain). */
        serving_repo_cancel_queued(repo);
        uint64_t grace = core_now_us() + 2000000u;
        while (http_server_in_flight(server) > 0 && core_now_us() < grace) {
            int again = wait_signal(&sigs, 5);
            if (again && again != SIGHUP)
                _exit(128 + again);
        }
    }
    int dropped = http_server_in_flight(server); /* closed without an answer */
    if (!serving_repo_is_settled(repo)) {
        /* A model is still loading (a slow disk, a stuck file): joining the
         * loader could take any time, so leave without cleaning up. */
        log_event(LOG_WARN, "stopped", "unfinished_requests", json_integer(left), "message",
                  json_string("exiting while a model was still loading"), NULL);
        _exit(0);
    }
    close_all(server, gw, batch, repo, &prot, keys, registry);
    /* unfinished_requests: in flight when the drain timeout ran out (they
     * were answered 503, or dropped when even that did not get out). */
    log_event(left ? LOG_WARN : LOG_INFO, "stopped", "unfinished_requests", json_integer(left),
              "dropped_requests", json_integer(dropped), "uptime_seconds",
              json_real(core_wall_time() - t_start), NULL);
    return 0;

failed:
    if (failed_keys_file)
        log_event(LOG_ERROR, "startup_failed", "error", json_string(why), "keys_file",
                  json_string(failed_keys_file), NULL);
    else
        log_event(LOG_ERROR, "startup_failed", "error", json_string(why), NULL);
    close_all(server, gw, batch, repo, &prot, keys, registry);
    return 2;
}
