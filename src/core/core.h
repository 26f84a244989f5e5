/*
 * core.h - the core module's one public header: the server's configuration
 * and a few small utilities (clocks, CPU count).
 *
 * Configuration:
 *  - Every setting is one row of a static table in config.c: its YAML key
 *    (section.key), environment variable, flag, type, default, bounds, help
 *    text and place in struct core_config. Loading, --help, the YAML and
 *    JSON dumps and docs/configuration.md all come from that table.
 *  - Precedence, lowest first: the defaults, the YAML file (--config FILE,
 *    else AISERVE_CONFIG), the environment, the command-line flags.
 *  - Value syntax (the same in YAML, environment and flags):
 *      int       decimal, checked against the setting's range
 *      bool      true/false, yes/no, on/off, 1/0 (any case)
 *      duration  number + unit, us ms s m h ("250ms", "1.5s", "1h30m"); a
 *                bare number is in the unit of the field ("_ms", "_us")
 *      size      bytes, or with k M G T (x1000, also kB MB ...) or
 *                Ki Mi Gi Ti (x1024, also KiB MiB ...), any case ("1MiB", "64k")
 *      level     debug, info, warning (or warn), error (any case)
 *      list      items separated by commas ("10.0.0.0/8,::1"), or a YAML
 *                sequence; "[]" is the empty list
 *      tiers     NAME=REQUESTS_PER_MINUTE/BURST items separated by commas
 *                ("default=100/100,pro=1000/200"), or a YAML mapping
 *                NAME: {requests_per_minute: N, burst: N}
 *    An environment variable set to "" counts as unset.
 *  - Failures fill a caller-owned core_error with one line naming where the
 *    bad value came from ("aiserve.yaml:12: server.port: ...",
 *    "environment AISERVE_PORT: ...", "flag --port: ...").
 *
 * The module prints nothing on its own: only the functions given a FILE *
 * write, and only to it. It reads the environment only through the envp
 * it is given. Every function here may be called from any thread; none
 * keeps state between calls.
 */
#ifndef AISERVE_CORE_H
#define AISERVE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Caller-owned error record. `message` is always NUL-terminated. */
typedef struct core_error {
    char message[512];
} core_error;

/* logging.level, stored as this enum (ordered: a message is logged when its
 * level >= the configured one). */
typedef enum core_log_level {
    CORE_LOG_DEBUG = 0,
    CORE_LOG_INFO = 1,
    CORE_LOG_WARNING = 2,
    CORE_LOG_ERROR = 3,
} core_log_level;

/* "debug", "info", "warning", "error"; "unknown" for anything else. */
const char *core_log_level_name(core_log_level level);

/* Rate-limit tiers (ratelimit.tiers). The built-in tiers "default" and
 * "anonymous" are always present, first and in that order (100 requests a
 * minute, burst 100, unless configured); configured tiers follow in the
 * order given. */
#define CORE_MAX_TIERS 32
#define CORE_TIER_NAME_MAX 64 /* [A-Za-z0-9._-]{1,64}, as API key tiers */
#define CORE_TIER_RATE_MAX 10000000
typedef struct core_tier {
    char name[CORE_TIER_NAME_MAX + 1];
    int requests_per_minute; /* 1..CORE_TIER_RATE_MAX: refill rate */
    int burst;               /* 1..CORE_TIER_RATE_MAX: bucket size */
} core_tier;
typedef struct core_tiers {
    int n;
    core_tier tier[CORE_MAX_TIERS];
} core_tiers;

/* The server's effective configuration. Plain data: copy it freely.
 * Durations are stored in the unit their field name carries; 0 in a
 * *_threads field means "one per CPU" (core_cpu_count) and is resolved by
 * the user of the setting, not here. */
typedef struct core_config {
    /* server */
    char host[256];            /* server.host */
    int port;                  /* server.port, 0..65535; 0 = any free port */
    int http_threads;          /* server.threads, 0..256; 0 = one event loop per CPU */
    int max_connections;       /* server.max_connections */
    uint64_t max_body_bytes;   /* server.max_body_size */
    uint64_t max_header_bytes; /* server.max_header_size */
    int64_t read_timeout_ms;   /* server.read_timeout: whole request within this */
    int64_t idle_timeout_ms;   /* server.idle_timeout: keep-alive idle */
    int64_t drain_timeout_ms;  /* server.drain_timeout: graceful shutdown bound */
    char tls_cert[4096];       /* server.tls_cert: PEM chain; "" = plain HTTP */
    char tls_key[4096];        /* server.tls_key: its PEM key; set together with tls_cert */
    /* models */
    char model_repository[4096]; /* models.repository */
    char default_model[256];     /* models.default_model; "" = the only model, else "sentiment" */
    int engine_threads;          /* models.engine_threads; 0 = one per CPU */
    int engine_nice;             /* models.engine_nice: added to the compute threads' nice value, 0..19 */
    char version_policy[512];    /* models.version_policy: latest[:N], all, specific:V,V */
    int64_t poll_interval_ms;    /* models.poll_interval: 0 = never look again */
    char traffic[2048];          /* models.traffic: "model@version=weight,..." ("" = no splits) */
    char shadow[2048];           /* models.shadow: "model@version=percent,..." ("" = none) */
    char cascade[2048];          /* models.cascade: "model@first>then=threshold,..." ("" = none) */
    char quantization[2048];     /* models.quantization: "mode,model=mode,model@version=mode" ("" = none) */
    char gateway_config[4096];   /* gateway.config: the LLM gateway's YAML file; "" = no gateway */
    /* batching */
    int max_batch_size;         /* batching.max_batch_size, texts per forward pass */
    int64_t max_queue_delay_us; /* batching.max_queue_delay_us */
    int max_queue_size;         /* batching.max_queue_size, texts per model version */
    int64_t request_timeout_ms; /* batching.request_timeout: deadline, then 504 */
    /* limits */
    int max_text_chars; /* limits.max_text_length, code points per text */
    int max_inputs;     /* limits.max_inputs, texts per request */
    /* auth */
    char keys_file[4096]; /* auth.keys_file: the API key store (JSON) */
    bool keys_required;   /* auth.keys_required: no active key stops the start */
    /* ratelimit */
    bool ratelimit_enabled;      /* ratelimit.enabled */
    core_tiers ratelimit_tiers;  /* ratelimit.tiers */
    char trusted_proxies[1024];  /* ratelimit.trusted_proxies: "addr,cidr,..." ("" = none) */
    char ratelimit_on_backend_failure[8]; /* ratelimit.on_backend_failure: "allow" or "deny" */
    /* cache */
    bool cache_enabled;          /* cache.enabled */
    uint64_t cache_max_bytes;    /* cache.max_size */
    int64_t cache_ttl_ms;        /* cache.ttl */
    /* redis */
    char redis_url[1024];           /* redis.url: "" = memory backends */
    char redis_key_prefix[65];      /* redis.key_prefix */
    int64_t redis_connect_timeout_ms; /* redis.connect_timeout */
    int64_t redis_command_timeout_ms; /* redis.command_timeout */
    /* batch */
    bool batch_enabled;             /* batch.enabled */
    char batch_data_dir[4096];      /* batch.data_dir: jobs.db lives here */
    int batch_max_inputs;           /* batch.max_inputs: per job */
    int batch_max_jobs_per_key;     /* batch.max_jobs_per_key: unfinished jobs per key */
    int64_t batch_retention_ms;     /* batch.retention: finished jobs are deleted after this */
    char batch_store[8];            /* batch.store: "auto", "sqlite" or "redis" */
    int64_t batch_lease_ms;         /* batch.lease: Redis store, a chunk's lease without renewal */
    /* cors */
    char cors_allowed_origins[4096]; /* cors.allowed_origins: "origin,origin" or "*" ("" = none) */
    int64_t cors_max_age_ms;         /* cors.max_age: preflight cache time */
    /* logging */
    core_log_level log_level; /* logging.level */
    bool access_log;          /* logging.access_log: one JSON line per request */

    /* Not a setting: the YAML file that was read ("" if none), for logs and
     * reloads. */
    char config_file[4096];
} core_config;

/* Sets every setting to its default and config_file to "". Never fails. */
void core_config_defaults(core_config *c);

/* The full pipeline for `aiserve serve`: defaults, then the YAML file named
 * by --config FILE / --config=FILE in argv (else by AISERVE_CONFIG in envp),
 * then the environment, then the flags in argv.
 *
 * argv holds argc borrowed strings, the arguments after "serve" (argv[0] is
 * the first flag). envp is a NULL-terminated array of "NAME=value" strings
 * (pass `environ`); NULL means an empty environment. Flags are
 * "--name value" or "--name=value"; a boolean flag also as a bare
 * "--name" (true) or "--no-name" (false). -h / --help anywhere wins over
 * everything else.
 *
 * Returns 0 with *c filled; 1 when help was asked for (written to help_out
 * if not NULL; *c untouched); -1 with err filled (if not NULL) and *c
 * untouched. Unknown flags, unknown YAML sections or keys, duplicate keys,
 * wrong YAML shapes, bad values and values out of range are all errors. */
int core_config_load(core_config *c, int argc, char **argv, char **envp, FILE *help_out,
                     core_error *err);

/* Applies the YAML file at `path` over *c (only the settings it names) and
 * records the path in c->config_file. Returns 0, or -1 with err filled
 * ("path:line: ...") and *c untouched. For reloads and tests. */
int core_config_load_file(core_config *c, const char *path, core_error *err);

/* Sets one setting by its YAML key ("server.port") from text, as the file
 * would. Returns 0, or -1 with err filled and *c untouched. */
int core_config_set(core_config *c, const char *key, const char *value, core_error *err);

/* Checks every setting against its bounds and the settings against each
 * other (limits.max_inputs <= batching.max_queue_size). For a struct built
 * by hand; core_config_load already checks. Returns 0 or -1 with err. */
int core_config_validate(const core_config *c, core_error *err);

/* Usage, the value syntax, and every setting: flag, environment variable,
 * YAML key, type and range, default, help. */
void core_config_print_help(FILE *f);

/* The settings table of docs/configuration.md (Markdown), exactly. */
void core_config_write_markdown(FILE *f);

/* *c as a complete YAML file, every setting with its help as a comment;
 * loading it back gives the same configuration. Returns 0, or -1 if
 * writing to f failed. */
int core_config_write_yaml(const core_config *c, FILE *f);

/* *c as one JSON object for the startup log line: the field names of
 * core_config as keys (so the unit is in the name: "read_timeout_ms"),
 * numbers as numbers, log_level as its name, plus "config_file"; a URL's
 * password (redis.url) shows as ***. Returns a
 * malloc'd string the caller frees with free(), or NULL when out of memory. */
char *core_config_describe_json(const core_config *c);

/* One setting of the table, for tests and tools. Strings are static. */
typedef struct core_setting_info {
    const char *key;       /* YAML key, "server.port" */
    const char *env;       /* "AISERVE_PORT" */
    const char *env_alias; /* the seed's name ("MODEL_PATH", "LOG_LEVEL"), which `env` overrides; or NULL */
    const char *flag;      /* "--port" */
    const char *field;     /* name in core_config, "port" */
    const char *type;      /* "string", "int", "bool", "duration", "size", "level", "list", "tiers" */
    const char *help;      /* one or two sentences */
    char default_text[64]; /* the default as it would be written in YAML */
    char range_text[64];   /* "0..65535", "1ms..1h", "true/false", ... */
} core_setting_info;

/* Number of settings in the table. */
size_t core_config_n_settings(void);

/* Fills *out for setting i (table order). Returns 0, or -1 if i is out of range. */
int core_config_setting_info(size_t i, core_setting_info *out);

/* Value parsers, shared by the config and anything else that takes these
 * values. Each returns 0 and stores the value, or -1 (and leaves *out
 * alone) for text that is not a valid value. No surrounding whitespace. */
int core_parse_duration_us(const char *s, int64_t *out_us); /* units us|ms|s|m|h; bare number = us */
int core_parse_size_bytes(const char *s, uint64_t *out);     /* bare number = bytes */
int core_parse_bool(const char *s, int *out);               /* 1 or 0 */

/* Microseconds on CLOCK_MONOTONIC: for intervals and deadlines. */
uint64_t core_now_us(void);

/* Seconds since the Unix epoch on CLOCK_REALTIME: for timestamps. */
double core_wall_time(void);

/* CPUs this process may run on (its sched_getaffinity mask), at least 1. */
int core_cpu_count(void);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_CORE_H */
