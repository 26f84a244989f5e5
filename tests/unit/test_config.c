/*
 * test_config.c - the server's configuration as an operator meets it:
 * defaults, a YAML file, environment variables and flags, each overriding
 * the one before; every value syntax, good and bad; bounds; errors that name
 * the file and line, the variable or the flag; --help and
 * docs/configuration.md listing every setting, and staying in step with the
 * settings table. Also the small utilities of core.h.
 *
 * Fixture files live in tests/fixtures/config/. The environment is passed as
 * an array, never through the process environment.
 */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/config"
#define DOCS AISERVE_SOURCE_DIR "/docs/configuration.md"

/* NULL-terminated string lists for argv and envp. */
#define LIST(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NONE ((const char *const[]){NULL})

static int count(const char *const *list) {
    int n = 0;
    while (list[n])
        n++;
    return n;
}

/* core_config_load with argv `args` and environment `env`. */
static int load(core_config *c, core_error *err, const char *const *args, const char *const *env) {
    memset(err, 0, sizeof *err);
    return core_config_load(c, count(args), (char **)args, (char **)env, NULL, err);
}

/* Loads and requires success. */
static void load_ok(core_config *c, const char *const *args, const char *const *env) {
    core_error err;
    int rc = load(c, &err, args, env);
    if (rc != 0)
        print_error("load failed: %s\n", err.message);
    assert_int_equal(rc, 0);
}

/* Loads, requires failure, and checks that the message contains each of
 * the given fragments. */
#define LOAD_FAILS(args, env, ...) load_fails(args, env, LIST(__VA_ARGS__))
static void load_fails(const char *const *args, const char *const *env, const char *const *fragments) {
    core_config c;
    core_config_defaults(&c);
    core_config before = c;
    core_error err;
    int rc = load(&c, &err, args, env);
    if (rc != -1)
        print_error("expected a failure, got %d\n", rc);
    assert_int_equal(rc, -1);
    for (int i = 0; fragments[i]; i++)
        if (!strstr(err.message, fragments[i])) {
            print_error("message '%s'\n  lacks '%s'\n", err.message, fragments[i]);
            fail();
        }
    /* A failed load changes nothing. */
    assert_memory_equal(&c, &before, sizeof c);
}

static char *fixture(const char *name) {
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", FIXTURES, name);
    return p;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Writes text to a new temporary file; returns its path (static buffer). */
static const char *temp_yaml(const char *text) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/aiserve-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* What a FILE-writing function writes, as a malloc'd string. */
static char *capture(void (*fn)(FILE *)) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fn(f);
    fclose(f);
    return buf;
}

static char *capture_yaml(const core_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(core_config_write_yaml(c, f), 0);
    fclose(f);
    return buf;
}

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) {
        print_error("'%s' not found\n", needle);
        fail();
    }
}

/* --- defaults and precedence ---------------------------------------------- */

static void test_defaults(void **state) {
    (void)state;
    core_config c;
    core_config_defaults(&c);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8000);
    assert_int_equal(c.http_threads, 0);
    assert_int_equal(c.max_connections, 1024);
    assert_int_equal(c.max_body_bytes, 1024 * 1024);
    assert_int_equal(c.max_header_bytes, 8 * 1024);
    assert_int_equal(c.read_timeout_ms, 10000);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_string_equal(c.model_repository, "./models");
    assert_string_equal(c.default_model, "");
    assert_int_equal(c.engine_threads, 0);
    assert_int_equal(c.engine_nice, 0);
    assert_int_equal(c.max_batch_size, 32);
    assert_int_equal(c.max_queue_delay_us, 2000);
    assert_int_equal(c.max_queue_size, 1024);
    assert_int_equal(c.request_timeout_ms, 30000);
    assert_int_equal(c.max_text_chars, 10000);
    assert_int_equal(c.max_inputs, 64);
    assert_int_equal(c.log_level, CORE_LOG_INFO);
    assert_true(c.access_log);
    assert_string_equal(c.config_file, "");
    assert_int_equal(core_config_validate(&c, NULL), 0);

    /* No file, no environment, no flags: the defaults. */
    core_config loaded;
    load_ok(&loaded, NONE, NONE);
    assert_memory_equal(&loaded, &c, sizeof c);
    /* NULL envp is an empty environment; unrelated variables are ignored. */
    core_error err;
    assert_int_equal(core_config_load(&loaded, 0, NULL, NULL, NULL, &err), 0);
    assert_memory_equal(&loaded, &c, sizeof c);
    load_ok(&loaded, NONE, LIST("PATH=/usr/bin", "AISERVE_BIN=/x/aiserve", "AISERVE_PORTS=1"));
    assert_memory_equal(&loaded, &c, sizeof c);
}

static void test_file_overrides_defaults(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, LIST("--config", fixture("partial.yaml")), NONE);
    assert_int_equal(c.port, 9000);
    assert_string_equal(c.host, "0.0.0.0");
    assert_string_equal(c.model_repository, "/from/file");
    assert_int_equal(c.log_level, CORE_LOG_WARNING);
    assert_int_equal(c.max_batch_size, 32); /* not in the file */
    assert_string_equal(c.config_file, fixture("partial.yaml"));

    char flag[600];
    snprintf(flag, sizeof flag, "--config=%s", fixture("partial.yaml"));
    load_ok(&c, LIST(flag), NONE);
    assert_int_equal(c.port, 9000);
}

static void test_env_overrides_file_and_flag_overrides_env(void **state) {
    (void)state;
    core_config c;
    const char *file = fixture("partial.yaml");
    load_ok(&c, LIST("--config", file), LIST("AISERVE_PORT=9100"));
    assert_int_equal(c.port, 9100);
    assert_string_equal(c.host, "0.0.0.0"); /* still from the file */

    load_ok(&c, LIST("--config", file, "--port", "9200"), LIST("AISERVE_PORT=9100"));
    assert_int_equal(c.port, 9200);
    /* The order of flags on the line does not matter for precedence... */
    load_ok(&c, LIST("--port=9300", "--config", file), LIST("AISERVE_PORT=9100"));
    assert_int_equal(c.port, 9300);
    /* ...but the last of a repeated flag wins. */
    load_ok(&c, LIST("--port", "1", "--port", "2"), NONE);
    assert_int_equal(c.port, 2);

    /* Every kind of setting through every source. */
    load_ok(&c, NONE,
            LIST("AISERVE_HOST=::", "AISERVE_HTTP_THREADS=3", "AISERVE_MAX_BODY_SIZE=2MiB",
                 "AISERVE_READ_TIMEOUT=250ms", "AISERVE_ACCESS_LOG=no", "AISERVE_LOG_LEVEL=error"));
    assert_string_equal(c.host, "::");
    assert_int_equal(c.http_threads, 3);
    assert_int_equal(c.max_body_bytes, 2 * 1024 * 1024);
    assert_int_equal(c.read_timeout_ms, 250);
    assert_false(c.access_log);
    assert_int_equal(c.log_level, CORE_LOG_ERROR);

    /* An empty variable counts as unset. */
    load_ok(&c, LIST("--config", file), LIST("AISERVE_PORT=", "AISERVE_HOST="));
    assert_int_equal(c.port, 9000);
    assert_string_equal(c.host, "0.0.0.0");
}

static void test_config_file_from_environment(void **state) {
    (void)state;
    core_config c;
    char env[600];
    snprintf(env, sizeof env, "AISERVE_CONFIG=%s", fixture("partial.yaml"));
    load_ok(&c, NONE, LIST(env));
    assert_int_equal(c.port, 9000);
    /* --config beats AISERVE_CONFIG. */
    load_ok(&c, LIST("--config", fixture("full.yaml")), LIST(env));
    assert_int_equal(c.port, 9090);
    assert_string_equal(c.config_file, fixture("full.yaml"));

    LOAD_FAILS(NONE, LIST("AISERVE_CONFIG=/nonexistent/aiserve.yaml"), "/nonexistent/aiserve.yaml",
               "AISERVE_CONFIG", "cannot open", "No such file");
    LOAD_FAILS(LIST("--config", "/nonexistent/a.yaml"), NONE, "/nonexistent/a.yaml", "flag --config",
               "cannot open");
    LOAD_FAILS(LIST("--config", FIXTURES), NONE, "is a directory");
    LOAD_FAILS(LIST("--config"), NONE, "flag --config: needs a file name");
    LOAD_FAILS(LIST("--config="), NONE, "flag --config: needs a file name");
}

static void test_seed_model_path(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, NONE, LIST("MODEL_PATH=/seed/models"));
    assert_string_equal(c.model_repository, "/seed/models");
    /* The AISERVE_ name wins, whichever comes first in the environment. */
    load_ok(&c, NONE, LIST("MODEL_PATH=/seed/models", "AISERVE_MODEL_REPOSITORY=/new/models"));
    assert_string_equal(c.model_repository, "/new/models");
    load_ok(&c, NONE, LIST("AISERVE_MODEL_REPOSITORY=/new/models", "MODEL_PATH=/seed/models"));
    assert_string_equal(c.model_repository, "/new/models");
    /* Both override the file; the flag overrides both. */
    load_ok(&c, LIST("--config", fixture("partial.yaml")), LIST("MODEL_PATH=/seed/models"));
    assert_string_equal(c.model_repository, "/seed/models");
    load_ok(&c, LIST("--model-repository", "/flag/models"), LIST("MODEL_PATH=/seed/models"));
    assert_string_equal(c.model_repository, "/flag/models");
    /* An empty AISERVE_MODEL_REPOSITORY does not hide MODEL_PATH. */
    load_ok(&c, NONE, LIST("AISERVE_MODEL_REPOSITORY=", "MODEL_PATH=/seed/models"));
    assert_string_equal(c.model_repository, "/seed/models");
}

static void test_seed_log_level(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, NONE, LIST("LOG_LEVEL=DEBUG"));
    assert_int_equal(c.log_level, CORE_LOG_DEBUG);
    load_ok(&c, NONE, LIST("LOG_LEVEL=debug", "AISERVE_LOG_LEVEL=Error"));
    assert_int_equal(c.log_level, CORE_LOG_ERROR);
    load_ok(&c, NONE, LIST("LOG_LEVEL=warn"));
    assert_int_equal(c.log_level, CORE_LOG_WARNING);
    load_ok(&c, LIST("--log-level", "info"), LIST("LOG_LEVEL=debug"));
    assert_int_equal(c.log_level, CORE_LOG_INFO);
    LOAD_FAILS(NONE, LIST("LOG_LEVEL=verbose"), "environment LOG_LEVEL: 'verbose' is not a log level",
               "debug, info, warning, error");
    LOAD_FAILS(NONE, LIST("AISERVE_LOG_LEVEL=trace"), "environment AISERVE_LOG_LEVEL:");
    assert_string_equal(core_log_level_name(CORE_LOG_WARNING), "warning");
    assert_string_equal(core_log_level_name((core_log_level)42), "unknown");
}

/* --- value syntax --------------------------------------------------------- */

static void test_parse_duration(void **state) {
    (void)state;
    static const struct {
        const char *text;
        int64_t us;
    } good[] = {
        {"250ms", 250000},      {"30s", 30000000},   {"2m", 120000000},     {"1h", 3600000000},
        {"1500us", 1500},       {"1500", 1500},      {"0", 0},              {"0s", 0},
        {"1.5s", 1500000},      {"0.1s", 100000},    {".5ms", 500},         {"1h30m", 5400000000},
        {"1m30s", 90000000},    {"2.5h", 9000000000}, {"1\xc2\xb5s", 1},    {"007ms", 7000},
        {"9223372036854775807us", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t v = -1;
        if (core_parse_duration_us(good[i].text, &v) != 0 || v != good[i].us) {
            print_error("'%s': got %lld\n", good[i].text, (long long)v);
            fail();
        }
    }
    static const char *const bad[] = {
        "",   "s",   "ms",   "10x", "10 s", " 10s", "10s ", "-5s",  "+5s",  "1.5.5s",  "1e3ms", "10S",
        "1d", "0.5us", "1.0000005ms", "10ms5", "9223372036854775808us", "99999999999999h", "1..5s", ".s",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 42;
        if (core_parse_duration_us(bad[i], &v) != -1 || v != 42) {
            print_error("'%s' was accepted as %lld\n", bad[i], (long long)v);
            fail();
        }
    }
    int64_t v;
    assert_int_equal(core_parse_duration_us(NULL, &v), -1);
}

static void test_parse_size(void **state) {
    (void)state;
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"1MiB", 1048576},   {"512KiB", 524288}, {"1MB", 1000000},      {"64k", 64000},
        {"64K", 64000},      {"64Ki", 65536},    {"100", 100},          {"100B", 100},
        {"1GiB", 1073741824}, {"1gib", 1073741824}, {"2G", 2000000000}, {"1.5KiB", 1536},
        {"1TiB", 1099511627776ull}, {"0", 0},   {"1kb", 1000},        {"0.1KB", 100},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 7;
        if (core_parse_size_bytes(good[i].text, &v) != 0 || v != good[i].bytes) {
            print_error("'%s': got %llu\n", good[i].text, (unsigned long long)v);
            fail();
        }
    }
    static const char *const bad[] = {"", "MiB", "1XB", "1 MiB", "-1", "1.5", "1MiBs", "1iB", "1Bi",
                                      "99999999999999999999", "20000000TiB", "1.2.3k", "k1", "0.0001KB"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 7;
        if (core_parse_size_bytes(bad[i], &v) != -1 || v != 7) {
            print_error("'%s' was accepted as %llu\n", bad[i], (unsigned long long)v);
            fail();
        }
    }
}

static void test_parse_bool(void **state) {
    (void)state;
    static const char *const yes[] = {"true", "TRUE", "True", "yes", "Yes", "on", "ON", "1"};
    static const char *const no[] = {"false", "FALSE", "no", "NO", "off", "Off", "0"};
    static const char *const bad[] = {"", "y", "n", "2", "enabled", "truee", " true", "-1"};
    int v;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        v = -1;
        assert_int_equal(core_parse_bool(yes[i], &v), 0);
        assert_int_equal(v, 1);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        v = -1;
        assert_int_equal(core_parse_bool(no[i], &v), 0);
        assert_int_equal(v, 0);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = -1;
        assert_int_equal(core_parse_bool(bad[i], &v), -1);
        assert_int_equal(v, -1);
    }
}

/* A bare number is in the unit the setting names; the result must be a
 * whole number of that unit. */
static void test_duration_settings_units(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, LIST("--read-timeout", "250", "--max-queue-delay-us", "250", "--request-timeout", "1.5s",
                     "--idle-timeout=1h30m", "--drain-timeout", "0"),
            NONE);
    assert_int_equal(c.read_timeout_ms, 250);
    assert_int_equal(c.max_queue_delay_us, 250);
    assert_int_equal(c.request_timeout_ms, 1500);
    assert_int_equal(c.idle_timeout_ms, 90 * 60 * 1000);
    assert_int_equal(c.drain_timeout_ms, 0);
    load_ok(&c, LIST("--max-queue-delay-us", "3ms", "--read-timeout", "2000us"), NONE);
    assert_int_equal(c.max_queue_delay_us, 3000);
    assert_int_equal(c.read_timeout_ms, 2);

    LOAD_FAILS(LIST("--read-timeout", "1500us"), NONE, "flag --read-timeout: '1500us' is not a whole number of milliseconds");
    LOAD_FAILS(LIST("--read-timeout", "10x"), NONE, "flag --read-timeout: '10x' is not a duration",
               "bare number is in milliseconds");
    LOAD_FAILS(NONE, LIST("AISERVE_MAX_QUEUE_DELAY_US=soon"), "environment AISERVE_MAX_QUEUE_DELAY_US: 'soon' is not a duration",
               "bare number is in microseconds");
    LOAD_FAILS(LIST("--config", fixture("bad_duration.yaml")), NONE,
               "bad_duration.yaml:2: batching.request_timeout: '30 seconds' is not a duration");
}

static void test_values_trimmed_and_sizes(void **state) {
    (void)state;
    core_config c;
    /* Surrounding blanks in a number are forgiven (a shell quirk)... */
    load_ok(&c, NONE, LIST("AISERVE_PORT= 8080 ", "AISERVE_MAX_HEADER_SIZE=16KiB"));
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.max_header_bytes, 16384);
    /* ...but a string is taken exactly. */
    load_ok(&c, NONE, LIST("AISERVE_DEFAULT_MODEL= x"));
    assert_string_equal(c.default_model, " x");
    load_ok(&c, LIST("--max-body-size", "64k"), NONE);
    assert_int_equal(c.max_body_bytes, 64000);
    load_ok(&c, LIST("--max-body-size", "4096"), NONE);
    assert_int_equal(c.max_body_bytes, 4096);
    LOAD_FAILS(LIST("--max-body-size", "lots"), NONE, "flag --max-body-size: 'lots' is not a size");
    LOAD_FAILS(LIST("--max-body-size", "2GB"), NONE,
               "flag --max-body-size: 2GB (2000000000 bytes) is out of range 1KiB..1GiB");
    LOAD_FAILS(LIST("--max-header-size", "100"), NONE, "flag --max-header-size: 100 is out of range 1KiB..1MiB");
    LOAD_FAILS(NONE, LIST("AISERVE_ACCESS_LOG=maybe"),
               "environment AISERVE_ACCESS_LOG: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)");
    LOAD_FAILS(NONE, LIST("AISERVE_PORT=80a"), "environment AISERVE_PORT: '80a' is not an integer");
    LOAD_FAILS(NONE, LIST("AISERVE_PORT=0x50"), "'0x50' is not an integer");
    LOAD_FAILS(NONE, LIST("AISERVE_PORT=99999999999999999999999"), "is not an integer");
}

/* --- bounds --------------------------------------------------------------- */

static void test_bounds(void **state) {
    (void)state;
    core_config c;
    LOAD_FAILS(LIST("--config", fixture("bad_port.yaml")), NONE,
               "bad_port.yaml:4: server.port: 70000 is out of range 0..65535");
    LOAD_FAILS(NONE, LIST("AISERVE_PORT=70000"), "environment AISERVE_PORT: 70000 is out of range 0..65535");
    LOAD_FAILS(LIST("--port", "70000"), NONE, "flag --port: 70000 is out of range 0..65535");
    LOAD_FAILS(LIST("--port=-1"), NONE, "flag --port: -1 is out of range 0..65535");
    load_ok(&c, LIST("--port", "0"), NONE);
    assert_int_equal(c.port, 0);
    load_ok(&c, LIST("--port", "65535"), NONE);
    assert_int_equal(c.port, 65535);

    LOAD_FAILS(LIST("--max-batch-size", "0"), NONE, "flag --max-batch-size: 0 is out of range 1..1024");
    LOAD_FAILS(LIST("--max-batch-size", "1025"), NONE, "1025 is out of range 1..1024");
    load_ok(&c, LIST("--max-batch-size", "1024"), NONE);
    assert_int_equal(c.max_batch_size, 1024);
    LOAD_FAILS(LIST("--http-threads", "257"), NONE, "flag --http-threads: 257 is out of range 0..256");
    LOAD_FAILS(LIST("--read-timeout", "0"), NONE, "flag --read-timeout: 0 is out of range 1ms..1h");
    LOAD_FAILS(LIST("--read-timeout", "2h"), NONE, "2h is out of range 1ms..1h");
    LOAD_FAILS(LIST("--max-queue-delay-us", "11s"), NONE, "11s is out of range 0us..10s");
    LOAD_FAILS(LIST("--max-inputs", "0"), NONE, "flag --max-inputs: 0 is out of range");
    LOAD_FAILS(LIST("--max-text-length", "0"), NONE, "flag --max-text-length: 0 is out of range");

    /* Strings: the host must not be empty and must fit its field. */
    LOAD_FAILS(LIST("--host", ""), NONE, "flag --host: must not be empty");
    LOAD_FAILS(LIST("--host="), NONE, "flag --host: must not be empty");
    char long_host[400];
    memset(long_host, 'a', sizeof long_host - 1);
    long_host[sizeof long_host - 1] = 0;
    LOAD_FAILS(LIST("--host", long_host), NONE, "flag --host: is 399 bytes long; at most 255 are allowed");
    char long_env[420];
    snprintf(long_env, sizeof long_env, "AISERVE_HOST=%s", long_host);
    LOAD_FAILS(NONE, LIST(long_env), "environment AISERVE_HOST: is 399 bytes long");
    char longest[256];
    memset(longest, 'h', 255);
    longest[255] = 0;
    load_ok(&c, LIST("--host", longest), NONE);
    assert_string_equal(c.host, longest);

    /* default_model may be set back to empty by a flag. */
    load_ok(&c, LIST("--default-model=", "--config", fixture("full.yaml")), NONE);
    assert_string_equal(c.default_model, "");
}

static void test_cross_setting_check(void **state) {
    (void)state;
    core_config c;
    LOAD_FAILS(LIST("--max-inputs", "2000"), NONE,
               "limits.max_inputs (2000, from flag --max-inputs) is larger than batching.max_queue_size "
               "(1024, from the default)");
    LOAD_FAILS(LIST("--config", fixture("partial.yaml")), LIST("AISERVE_MAX_QUEUE_SIZE=10"),
               "batching.max_queue_size (10, from environment AISERVE_MAX_QUEUE_SIZE)");
    load_ok(&c, LIST("--max-inputs", "2000", "--max-queue-size", "2000"), NONE);
    assert_int_equal(c.max_inputs, 2000);

    /* validate on a struct built by hand. */
    core_error err;
    core_config_defaults(&c);
    c.max_queue_size = 8;
    assert_int_equal(core_config_validate(&c, &err), -1);
    assert_contains(err.message, "limits.max_inputs (64, from the default)");
    core_config_defaults(&c);
    c.port = 70000;
    assert_int_equal(core_config_validate(&c, &err), -1);
    assert_string_equal(err.message, "server.port: 70000 is out of range 0..65535");
    core_config_defaults(&c);
    c.read_timeout_ms = 0;
    assert_int_equal(core_config_validate(&c, &err), -1);
    assert_string_equal(err.message, "server.read_timeout: 0ms is out of range 1ms..1h");
    core_config_defaults(&c);
    c.host[0] = 0;
    assert_int_equal(core_config_validate(&c, &err), -1);
    assert_contains(err.message, "server.host");
    core_config_defaults(&c);
    c.log_level = (core_log_level)9;
    assert_int_equal(core_config_validate(&c, &err), -1);
    assert_contains(err.message, "logging.level");

    /* HTTPS needs the certificate and its key together. */
    LOAD_FAILS(LIST("--tls-cert", "/tls/cert.pem"), NONE,
               "server.tls_cert is set (from flag --tls-cert) but server.tls_key is not");
    LOAD_FAILS(NONE, LIST("AISERVE_TLS_KEY=/tls/key.pem"),
               "server.tls_key is set (from environment AISERVE_TLS_KEY) but server.tls_cert is not");
    load_ok(&c, LIST("--tls-cert", "/tls/cert.pem", "--tls-key", "/tls/key.pem"), NONE);
    assert_string_equal(c.tls_key, "/tls/key.pem");

    /* Batch jobs in Redis need a Redis. */
    LOAD_FAILS(LIST("--batch-store", "mysql"), NONE,
               "batch.store: 'mysql' (from flag --batch-store) must be auto, sqlite or redis");
    LOAD_FAILS(NONE, LIST("AISERVE_BATCH_STORE=redis"),
               "batch.store is redis (from environment AISERVE_BATCH_STORE) but redis.url is empty");
    load_ok(&c, LIST("--batch-store", "redis", "--redis-url", "redis://127.0.0.1"), NONE);
    assert_string_equal(c.batch_store, "redis");
}

static void test_cors_origins(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, LIST("--cors-allowed-origins", " https://a.example , http://localhost:3000,http://[::1]:8080"),
            NONE);
    assert_string_equal(c.cors_allowed_origins, "https://a.example,http://localhost:3000,http://[::1]:8080");
    assert_int_equal(c.cors_max_age_ms, 600000);
    load_ok(&c, NONE, LIST("AISERVE_CORS_ALLOWED_ORIGINS=*", "AISERVE_CORS_MAX_AGE=2h"));
    assert_string_equal(c.cors_allowed_origins, "*");
    assert_int_equal(c.cors_max_age_ms, 7200000);
    LOAD_FAILS(LIST("--cors-allowed-origins", "https://a.example/"), NONE, "'https://a.example/' is not an origin");
    LOAD_FAILS(LIST("--cors-allowed-origins", "a.example"), NONE, "'a.example' is not an origin");
    LOAD_FAILS(LIST("--cors-allowed-origins", "https://a.example:99999"), NONE, "is not an origin");
    LOAD_FAILS(LIST("--cors-allowed-origins", "null"), NONE, "'null' is not an origin");
    LOAD_FAILS(LIST("--cors-max-age", "25h"), NONE, "flag --cors-max-age: 25h is out of range 0ms..24h");
}

/* Rate-limit tiers (a mapping in YAML, NAME=RPM/BURST elsewhere), trusted
 * proxies (a list) and the cache settings. */
static void yaml_fails(const char *text, const char *fragment) {
    const char *path = temp_yaml(text);
    load_fails(LIST("--config", path), NONE, LIST(fragment));
    unlink(path);
}

static void test_rate_limit_settings(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, NONE, NONE);
    assert_true(c.ratelimit_enabled);
    assert_int_equal(c.ratelimit_tiers.n, 2);
    assert_string_equal(c.ratelimit_tiers.tier[0].name, "default");
    assert_int_equal(c.ratelimit_tiers.tier[0].requests_per_minute, 100);
    assert_int_equal(c.ratelimit_tiers.tier[0].burst, 100);
    assert_string_equal(c.ratelimit_tiers.tier[1].name, "anonymous");
    assert_string_equal(c.trusted_proxies, "");
    assert_true(c.cache_enabled);
    assert_int_equal(c.cache_max_bytes, 64u << 20);
    assert_int_equal(c.cache_ttl_ms, 3600000);

    /* Flags: built-ins replaced by name, others added in order; a missing
     * burst equals the rate; blanks around items are fine. */
    load_ok(&c, LIST("--rate-limit-tiers", " pro=1000/200 , default=50, free=10/1", "--no-rate-limit",
                     "--trusted-proxies", "[10.0.0.0/8, ::1]", "--no-cache", "--cache-ttl", "90s"),
            NONE);
    assert_false(c.ratelimit_enabled);
    assert_int_equal(c.ratelimit_tiers.n, 4);
    assert_string_equal(c.ratelimit_tiers.tier[0].name, "default");
    assert_int_equal(c.ratelimit_tiers.tier[0].requests_per_minute, 50);
    assert_int_equal(c.ratelimit_tiers.tier[0].burst, 50);
    assert_string_equal(c.ratelimit_tiers.tier[1].name, "anonymous");
    assert_string_equal(c.ratelimit_tiers.tier[2].name, "pro");
    assert_int_equal(c.ratelimit_tiers.tier[2].burst, 200);
    assert_string_equal(c.ratelimit_tiers.tier[3].name, "free");
    assert_string_equal(c.trusted_proxies, "10.0.0.0/8,::1");
    assert_false(c.cache_enabled);
    assert_int_equal(c.cache_ttl_ms, 90000);
    load_ok(&c, NONE, LIST("AISERVE_RATE_LIMIT_TIERS=anonymous=5/2", "AISERVE_TRUSTED_PROXIES=192.168.0.1",
                           "AISERVE_CACHE_MAX_SIZE=1GiB"));
    assert_int_equal(c.ratelimit_tiers.tier[1].requests_per_minute, 5);
    assert_int_equal(c.ratelimit_tiers.tier[1].burst, 2);
    assert_string_equal(c.trusted_proxies, "192.168.0.1");
    assert_int_equal(c.cache_max_bytes, 1u << 30);

    /* YAML: a mapping of tiers, a sequence (or one line) of proxies. */
    const char *path = temp_yaml("ratelimit:\n"
                                 "  tiers:\n"
                                 "    pro: {requests_per_minute: 1000, burst: 200}\n"
                                 "    anonymous:\n"
                                 "      requests_per_minute: 30\n"
                                 "  trusted_proxies:\n"
                                 "    - 10.0.0.0/8\n"
                                 "    - \"fd00::/8\"\n"
                                 "cache:\n"
                                 "  max_size: 128MiB\n");
    load_ok(&c, LIST("--config", path), NONE);
    unlink(path);
    assert_int_equal(c.ratelimit_tiers.n, 3);
    assert_string_equal(c.ratelimit_tiers.tier[2].name, "pro");
    assert_int_equal(c.ratelimit_tiers.tier[2].requests_per_minute, 1000);
    assert_int_equal(c.ratelimit_tiers.tier[1].requests_per_minute, 30);
    assert_int_equal(c.ratelimit_tiers.tier[1].burst, 30);
    assert_string_equal(c.trusted_proxies, "10.0.0.0/8,fd00::/8");
    assert_int_equal(c.cache_max_bytes, 128u << 20);
    path = temp_yaml("ratelimit:\n  tiers: \"pro=10/5\"\n  trusted_proxies: \"127.0.0.1, ::1\"\n");
    load_ok(&c, LIST("--config", path), NONE);
    unlink(path);
    assert_int_equal(c.ratelimit_tiers.tier[2].burst, 5);
    assert_string_equal(c.trusted_proxies, "127.0.0.1,::1");
    path = temp_yaml("ratelimit:\n  tiers: {}\n  trusted_proxies: []\n");
    load_ok(&c, LIST("--config", path), NONE);
    unlink(path);
    assert_int_equal(c.ratelimit_tiers.n, 2);
    assert_string_equal(c.trusted_proxies, "");

    /* Errors name the place and the problem. */
    LOAD_FAILS(LIST("--rate-limit-tiers", "pro=0/5"), NONE,
               "flag --rate-limit-tiers: tier pro: requests per minute '0' is not an integer in 1..10000000");
    LOAD_FAILS(LIST("--rate-limit-tiers", "pro=5/x"), NONE, "tier pro: burst 'x' is not an integer");
    LOAD_FAILS(LIST("--rate-limit-tiers", "pro"), NONE, "'pro' is not NAME=REQUESTS_PER_MINUTE/BURST");
    LOAD_FAILS(LIST("--rate-limit-tiers", "a/b=1"), NONE, "'a/b' is not a tier name");
    LOAD_FAILS(LIST("--rate-limit-tiers", "pro=1,pro=2"), NONE, "tier pro is given twice");
    LOAD_FAILS(LIST("--rate-limit-tiers", "pro=1,"), NONE, "has an empty item");
    LOAD_FAILS(NONE, LIST("AISERVE_TRUSTED_PROXIES=10.0.0.0/33"), "environment AISERVE_TRUSTED_PROXIES",
               "'10.0.0.0/33': the prefix length must be 0..32");
    LOAD_FAILS(LIST("--trusted-proxies", "proxy.example"), NONE, "'proxy.example' is not an IP address");
    LOAD_FAILS(LIST("--trusted-proxies", "1.2.3.4,,5.6.7.8"), NONE, "has an empty item");
    LOAD_FAILS(LIST("--cache-max-size", "1KiB"), NONE, "out of range 64KiB..64GiB");
    LOAD_FAILS(LIST("--cache-ttl", "0s"), NONE, "out of range 1s..720h");
    yaml_fails("ratelimit:\n  tiers:\n    pro: {requests_per_minute: 10, brust: 5}\n",
               ":3: ratelimit.tiers.pro: unknown key 'brust'");
    yaml_fails("ratelimit:\n  tiers:\n    pro: {burst: 5}\n", ":3: ratelimit.tiers.pro: requests_per_minute is missing");
    yaml_fails("ratelimit:\n  tiers:\n    pro: {requests_per_minute: ten}\n",
               ":3: ratelimit.tiers.pro.requests_per_minute: expected a whole number");
    yaml_fails("ratelimit:\n  tiers:\n    pro: 10\n", ":3: ratelimit.tiers.pro: expected a mapping");
    yaml_fails("ratelimit:\n  tiers:\n    pro: {requests_per_minute: 1, requests_per_minute: 2}\n",
               "requests_per_minute is set twice");
    yaml_fails("ratelimit:\n  tiers:\n    - pro\n", ":2: ratelimit.tiers: expected a single value, found a sequence");
    yaml_fails("ratelimit:\n  tiers:\n    \"bad name\": {requests_per_minute: 1}\n",
               "'bad name' is not a tier name");
    yaml_fails("ratelimit:\n  trusted_proxies:\n    - [10.0.0.1]\n",
               "ratelimit.trusted_proxies: each item must be a single value, found a sequence");
    yaml_fails("ratelimit:\n  trusted_proxies:\n    - \"10.0.0.1,10.0.0.2\"\n", "must not contain a comma");
    yaml_fails("ratelimit:\n  trusted_proxies: {a: 1}\n", "expected a single value, found a mapping");

    /* What is loaded is written back as it loads. */
    core_config d;
    core_config_defaults(&d);
    core_error err;
    assert_int_equal(core_config_set(&d, "ratelimit.tiers", "-odd=7/3,pro=1000/200", &err), 0);
    assert_int_equal(core_config_set(&d, "ratelimit.trusted_proxies", "::1,10.1.0.0/16", &err), 0);
    char *yaml = capture_yaml(&d);
    assert_contains(yaml, "  tiers:\n    default: {requests_per_minute: 100, burst: 100}\n");
    assert_contains(yaml, "    \"-odd\": {requests_per_minute: 7, burst: 3}\n");
    assert_contains(yaml, "  trusted_proxies: [\"::1\", \"10.1.0.0/16\"]\n");
    path = temp_yaml(yaml);
    core_config back;
    load_ok(&back, LIST("--config", path), NONE);
    unlink(path);
    assert_memory_equal(&back.ratelimit_tiers, &d.ratelimit_tiers, sizeof d.ratelimit_tiers);
    assert_string_equal(back.trusted_proxies, d.trusted_proxies);
    free(yaml);
    char *json = core_config_describe_json(&d);
    assert_contains(json, "\"ratelimit_tiers\":{\"default\":{\"requests_per_minute\":100,\"burst\":100},");
    assert_contains(json, "\"trusted_proxies\":[\"::1\",\"10.1.0.0/16\"]");
    free(json);
}

/* --- flags ---------------------------------------------------------------- */

static void test_flag_forms(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, LIST("--port", "1234", "--host=::1", "--no-access-log"), NONE);
    assert_int_equal(c.port, 1234);
    assert_string_equal(c.host, "::1");
    assert_false(c.access_log);
    load_ok(&c, LIST("--access-log"), LIST("AISERVE_ACCESS_LOG=off"));
    assert_true(c.access_log);
    load_ok(&c, LIST("--access-log=false"), NONE);
    assert_false(c.access_log);
    load_ok(&c, LIST("--access-log", "off", "--port", "5"), NONE);
    assert_false(c.access_log);
    assert_int_equal(c.port, 5);
    load_ok(&c, LIST("--no-access-log", "--access-log"), NONE);
    assert_true(c.access_log);
    /* A value may contain '=' and start with one dash. */
    load_ok(&c, LIST("--default-model", "a=b"), NONE);
    assert_string_equal(c.default_model, "a=b");
    load_ok(&c, LIST("--model-repository=-dir"), NONE);
    assert_string_equal(c.model_repository, "-dir");

    LOAD_FAILS(LIST("--prot", "8000"), NONE, "unknown flag --prot (did you mean --port?)");
    LOAD_FAILS(LIST("--prot=8000"), NONE, "unknown flag --prot (did you mean --port?)");
    LOAD_FAILS(LIST("--max-batch", "8"), NONE, "unknown flag --max-batch");
    LOAD_FAILS(LIST("--verbose"), NONE, "unknown flag --verbose (see --help)");
    LOAD_FAILS(LIST("-p", "80"), NONE, "unknown flag -p");
    LOAD_FAILS(LIST("--no-port"), NONE, "unknown flag --no-port");
    LOAD_FAILS(LIST("--no-access-log=yes"), NONE, "flag --no-access-log: takes no value");
    LOAD_FAILS(LIST("serve"), NONE, "unexpected argument 'serve'");
    LOAD_FAILS(LIST("--port"), NONE, "flag --port: needs a value (N)");
    LOAD_FAILS(LIST("--port", "--host", "x"), NONE, "flag --port: needs a value");
    LOAD_FAILS(LIST("--port", "http"), NONE, "flag --port: 'http' is not an integer");
    LOAD_FAILS(LIST("--access-log=maybe"), NONE, "flag --access-log: 'maybe' is not a boolean");
    LOAD_FAILS(LIST("--log-level", "loud"), NONE, "flag --log-level: 'loud' is not a log level");
    /* The first bad flag is the one reported, and nothing is applied. */
    LOAD_FAILS(LIST("--port", "1", "--bogus", "--also-bogus"), NONE, "unknown flag --bogus");
}

/* --- the YAML file -------------------------------------------------------- */

static void test_yaml_errors(void **state) {
    (void)state;
#define FILE_FAILS(name, ...) LOAD_FAILS(LIST("--config", fixture(name)), NONE, __VA_ARGS__)
    FILE_FAILS("unknown_key.yaml", "unknown_key.yaml:3: unknown key server.prot (did you mean server.port?)");
    FILE_FAILS("unknown_section.yaml", "unknown_section.yaml:3: unknown section 'sever' (did you mean server?)");
    FILE_FAILS("top_level_key.yaml", "top_level_key.yaml:2: unknown section 'port'", "server.port");
    FILE_FAILS("wrong_section.yaml",
               "wrong_section.yaml:2: unknown key server.max_batch_size (did you mean batching.max_batch_size?)");
    FILE_FAILS("malformed.yaml", "malformed.yaml:4: invalid YAML:", "line 3");
    FILE_FAILS("bad_indent.yaml", "bad_indent.yaml:3: invalid YAML:");
    FILE_FAILS("sequence_value.yaml", "sequence_value.yaml:3: server.port: expected a single value, found a sequence");
    FILE_FAILS("mapping_value.yaml", "mapping_value.yaml:2: logging.level: expected a single value, found a mapping");
    FILE_FAILS("section_scalar.yaml", "section_scalar.yaml:1: server: expected a mapping of settings");
    FILE_FAILS("not_mapping.yaml", "not_mapping.yaml:1: expected a mapping of sections", "found a sequence");
    FILE_FAILS("duplicate.yaml", "duplicate.yaml:4: server.port is set twice (also at line 2)");
    FILE_FAILS("null_value.yaml", "null_value.yaml:2: server.port has no value");
    FILE_FAILS("duplicate_section.yaml", "duplicate_section.yaml:6: section server appears twice (also at line 2)");
    FILE_FAILS("two_documents.yaml", "two_documents.yaml:4: a second YAML document");
#undef FILE_FAILS

    /* A YAML error is reported even when the environment and flags are fine. */
    LOAD_FAILS(LIST("--config", fixture("bad_port.yaml"), "--port", "80"), NONE, "bad_port.yaml:4");

    /* Invalid UTF-8 and tabs are libyaml's to reject; the message names the file. */
    const char *path = temp_yaml("server:\n  host: \"\xff\xfe\"\n");
    LOAD_FAILS(LIST("--config", path), NONE, path, "invalid YAML");
    unlink(path);
    path = temp_yaml("server:\n\tport: 1\n");
    LOAD_FAILS(LIST("--config", path), NONE, path, ":2: invalid YAML");
    unlink(path);
    path = temp_yaml("server:\n  host: \"a\\0b\"\n");
    LOAD_FAILS(LIST("--config", path), NONE, ":2: server.host: the value contains a NUL byte");
    unlink(path);
    path = temp_yaml("server:\n  ? [a, b]\n  : 1\n");
    LOAD_FAILS(LIST("--config", path), NONE, ":2: a key must be a name, found a sequence");
    unlink(path);
}

static void test_yaml_accepted_forms(void **state) {
    (void)state;
    core_config c;
    load_ok(&c, LIST("--config", fixture("empty.yaml")), NONE);
    core_config d;
    core_config_defaults(&d);
    assert_int_equal(c.port, d.port);
    assert_string_equal(c.config_file, fixture("empty.yaml"));
    load_ok(&c, LIST("--config", fixture("empty_sections.yaml")), NONE);
    assert_int_equal(c.port, d.port);

    /* Values are read by each setting's parser, not by YAML 1.1's rules. */
    load_ok(&c, LIST("--config", fixture("yaml11_words.yaml")), NONE);
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 10);
    assert_false(c.access_log);
    assert_int_equal(c.log_level, CORE_LOG_WARNING);
    assert_string_equal(c.default_model, "no");

    load_ok(&c, LIST("--config", fixture("anchors.yaml")), NONE);
    assert_int_equal(c.read_timeout_ms, 20000);
    assert_int_equal(c.idle_timeout_ms, 20000);

    /* The public file loader applies over what is there. */
    core_error err;
    core_config_defaults(&c);
    c.max_batch_size = 7;
    assert_int_equal(core_config_load_file(&c, fixture("partial.yaml"), &err), 0);
    assert_int_equal(c.port, 9000);
    assert_int_equal(c.max_batch_size, 7);
    core_config before = c;
    assert_int_equal(core_config_load_file(&c, fixture("duplicate.yaml"), &err), -1);
    assert_memory_equal(&c, &before, sizeof c);
    assert_int_equal(core_config_load_file(&c, NULL, &err), -1);
}

/* full.yaml sets every setting to something other than its default, and a
 * configuration written as YAML loads back the same. */
static void test_full_file_and_round_trip(void **state) {
    (void)state;
    core_config c, d, back;
    load_ok(&c, LIST("--config", fixture("full.yaml")), NONE);
    core_config_defaults(&d);
    char *cj = core_config_describe_json(&c), *dj = core_config_describe_json(&d);
    assert_non_null(cj);
    assert_non_null(dj);
    json_error_t jerr;
    json_t *cv = json_loads(cj, 0, &jerr), *dv = json_loads(dj, 0, &jerr);
    assert_non_null(cv);
    assert_non_null(dv);
    for (size_t i = 0; i < core_config_n_settings(); i++) {
        core_setting_info info;
        assert_int_equal(core_config_setting_info(i, &info), 0);
        json_t *a = json_object_get(cv, info.field), *b = json_object_get(dv, info.field);
        assert_non_null(a);
        assert_non_null(b);
        if (json_equal(a, b)) {
            print_error("full.yaml leaves %s at its default\n", info.key);
            fail();
        }
    }
    json_decref(cv);
    json_decref(dv);

    char *yaml = capture_yaml(&c);
    const char *path = temp_yaml(yaml);
    core_config_defaults(&back);
    core_error err;
    if (core_config_load_file(&back, path, &err) != 0) {
        print_error("%s\n", err.message);
        fail();
    }
    unlink(path);
    char *bj = core_config_describe_json(&back);
    /* Equal apart from config_file. */
    size_t cut = strlen(cj) - strlen(strstr(cj, ",\"config_file\""));
    assert_int_equal(strncmp(cj, bj, cut), 0);
    free(yaml);
    free(bj);
    free(cj);
    free(dj);
}

static void test_describe_json(void **state) {
    (void)state;
    core_config c;
    core_config_defaults(&c);
    snprintf(c.default_model, sizeof c.default_model, "we\"ird\\name\n\x01");
    char *s = core_config_describe_json(&c);
    assert_non_null(s);
    json_error_t jerr;
    json_t *j = json_loads(s, 0, &jerr);
    if (!j)
        print_error("%s: %s\n", s, jerr.text);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "default_model")), "we\"ird\\name\n\x01");
    assert_int_equal(json_integer_value(json_object_get(j, "read_timeout_ms")), 10000);
    assert_int_equal(json_integer_value(json_object_get(j, "max_body_bytes")), 1048576);
    assert_string_equal(json_string_value(json_object_get(j, "log_level")), "info");
    assert_true(json_is_true(json_object_get(j, "access_log")));
    assert_string_equal(json_string_value(json_object_get(j, "config_file")), "");
    assert_int_equal(json_object_size(j), core_config_n_settings() + 1);
    json_decref(j);
    free(s);
}

static void test_set_by_key(void **state) {
    (void)state;
    core_config c;
    core_error err;
    core_config_defaults(&c);
    assert_int_equal(core_config_set(&c, "server.port", "81", &err), 0);
    assert_int_equal(c.port, 81);
    assert_int_equal(core_config_set(&c, "batching.max_queue_delay_us", "1ms", &err), 0);
    assert_int_equal(c.max_queue_delay_us, 1000);
    assert_int_equal(core_config_set(&c, "server.port", "x", &err), -1);
    assert_string_equal(err.message, "server.port: 'x' is not an integer");
    assert_int_equal(c.port, 81);
    assert_int_equal(core_config_set(&c, "server.nope", "1", &err), -1);
    assert_string_equal(err.message, "unknown setting server.nope");
    assert_int_equal(core_config_set(&c, "port", "1", &err), -1);
    assert_int_equal(core_config_set(&c, NULL, "1", &err), -1);
}

/* Damaged versions of a good file (each byte replaced, the file cut short
 * at every length) and random words as values: every load either succeeds
 * or fails with a message, under the sanitizers, and a failure changes
 * nothing. */
static void test_damaged_input(void **state) {
    (void)state;
    char *good = read_text(fixture("full.yaml"));
    assert_non_null(good);
    size_t n = strlen(good);
    static const char replacements[] = {0, ':', '-', '[', '"', '\n', '\t', '*', '\xff'};
    char *bad = malloc(n + 1);
    assert_non_null(bad);
    char path[64];
    snprintf(path, sizeof path, "/tmp/aiserve-damaged-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    int n_ok = 0, n_failed = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r <= sizeof replacements; r++) {
            memcpy(bad, good, n + 1);
            size_t len = n;
            if (r == sizeof replacements)
                len = i; /* cut short */
            else
                bad[i] = replacements[r];
            FILE *f = fopen(path, "wb");
            assert_non_null(f);
            fwrite(bad, 1, len, f);
            fclose(f);
            core_config c;
            core_config_defaults(&c);
            core_config before = c;
            core_error err = {{0}};
            int rc = core_config_load_file(&c, path, &err);
            assert_true(rc == 0 || rc == -1);
            if (rc == 0) {
                n_ok++;
            } else {
                n_failed++;
                assert_true(strlen(err.message) > 0);
                assert_memory_equal(&c, &before, sizeof c);
            }
        }
    }
    unlink(path);
    assert_true(n_ok > 0 && n_failed > 0);

    uint32_t seed = 12345;
    char word[24];
    for (int k = 0; k < 20000; k++) {
        size_t len = 0;
        size_t want = (seed = seed * 1103515245u + 12345u) >> 16 & 15;
        for (; len < want; len++) {
            seed = seed * 1103515245u + 12345u;
            word[len] = "0123456789.usmhkKMGTiBb -+xe"[(seed >> 16) % 28];
        }
        word[len] = 0;
        int64_t d;
        uint64_t z;
        int b;
        core_parse_duration_us(word, &d);
        core_parse_size_bytes(word, &z);
        core_parse_bool(word, &b);
        core_config c;
        core_config_defaults(&c);
        core_error err;
        core_config_set(&c, "server.read_timeout", word, &err);
        core_config_set(&c, "server.max_body_size", word, &err);
    }
    free(bad);
    free(good);
}

/* --- help and docs -------------------------------------------------------- */

static void test_table_invariants(void **state) {
    (void)state;
    size_t n = core_config_n_settings();
    assert_true(n >= 20);
    core_setting_info a, b;
    assert_int_equal(core_config_setting_info(n, &a), -1);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(core_config_setting_info(i, &a), 0);
        assert_int_equal(strncmp(a.env, "AISERVE_", 8), 0);
        assert_int_equal(strncmp(a.flag, "--", 2), 0);
        assert_non_null(strchr(a.key, '.'));
        assert_true(strlen(a.help) > 10);
        assert_true(a.default_text[0] || strcmp(a.type, "string") == 0);
        /* The variable is the flag's name: --max-body-size, AISERVE_MAX_BODY_SIZE. */
        char env[128] = "AISERVE_";
        for (const char *p = a.flag + 2; *p; p++)
            env[strlen(env) + 1] = 0, env[strlen(env)] = *p == '-' ? '_' : (char)(*p - 'a' + 'A');
        assert_string_equal(a.env, env);
        for (size_t j = i + 1; j < n; j++) {
            assert_int_equal(core_config_setting_info(j, &b), 0);
            assert_string_not_equal(a.key, b.key);
            assert_string_not_equal(a.env, b.env);
            assert_string_not_equal(a.flag, b.flag);
            assert_string_not_equal(a.field, b.field);
        }
    }
    /* The seed's names are aliases of exactly these settings. */
    int aliases = 0;
    for (size_t i = 0; i < n; i++) {
        core_config_setting_info(i, &a);
        if (a.env_alias) {
            aliases++;
            assert_true(strcmp(a.env_alias, "MODEL_PATH") == 0 || strcmp(a.env_alias, "LOG_LEVEL") == 0);
        }
    }
    assert_int_equal(aliases, 2);
}

static void test_help(void **state) {
    (void)state;
    char *help = capture(core_config_print_help);
    assert_contains(help, "usage: aiserve serve");
    assert_contains(help, "--config FILE");
    assert_contains(help, "AISERVE_CONFIG");
    for (size_t i = 0; i < core_config_n_settings(); i++) {
        core_setting_info info;
        core_config_setting_info(i, &info);
        char flag[64];
        snprintf(flag, sizeof flag, "%s", info.flag);
        if (strcmp(info.type, "bool") == 0)
            snprintf(flag, sizeof flag, "--[no-]%s", info.flag + 2);
        assert_contains(help, flag);
        assert_contains(help, info.env);
        assert_contains(help, info.key);
        if (info.env_alias)
            assert_contains(help, info.env_alias);
    }
    assert_contains(help, "Default 8000; 0..65535.");
    assert_contains(help, "Default 10s; 1ms..1h, a bare number is milliseconds.");

    /* --help (or -h) anywhere returns 1 and prints the same text, even next
     * to bad flags and a missing file; the configuration is untouched. */
    const char *const *cases[] = {
        LIST("--help"),
        LIST("-h"),
        LIST("--port", "99999", "--help"),
        LIST("--bogus", "-h"),
        LIST("--config", "/nonexistent.yaml", "--help"),
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        core_config c;
        memset(&c, 0xab, sizeof c);
        core_config before = c;
        core_error err;
        assert_int_equal(core_config_load(&c, count(cases[k]), (char **)cases[k], NULL, f, &err), 1);
        fclose(f);
        assert_string_equal(out, help);
        assert_memory_equal(&c, &before, sizeof c);
        free(out);
    }
    core_config c;
    core_error err;
    assert_int_equal(core_config_load(&c, 1, (char **)LIST("--help"), NULL, NULL, &err), 1);
    free(help);
}

/* Writes `text` under the build directory, for the message of a failing
 * docs check. */
static void write_expected(const char *name, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", AISERVE_BINARY_DIR, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    print_error("docs/configuration.md is out of date: the current text is in %s\n", path);
}

static void test_docs_match_table(void **state) {
    (void)state;
    char *doc = read_text(DOCS);
    if (!doc)
        print_error("cannot read %s\n", DOCS);
    assert_non_null(doc);
    /* Every setting's YAML key, environment variable(s) and flag. */
    for (size_t i = 0; i < core_config_n_settings(); i++) {
        core_setting_info info;
        core_config_setting_info(i, &info);
        char quoted[128];
        const char *names[] = {info.key, info.env, info.flag, info.env_alias};
        for (size_t k = 0; k < 4; k++) {
            if (!names[k])
                continue;
            snprintf(quoted, sizeof quoted, "`%s", names[k]);
            if (!strstr(doc, quoted)) {
                print_error("docs/configuration.md does not mention %s\n", names[k]);
                fail();
            }
        }
    }
    /* The settings table, exactly as the code renders it. */
    char *table = capture(core_config_write_markdown);
    if (!strstr(doc, table)) {
        write_expected("configuration-table.md", table);
        fail();
    }
    /* The example file: every setting at its default, and it loads. */
    core_config d;
    core_config_defaults(&d);
    char *yaml = capture_yaml(&d);
    const char *start = strstr(doc, "```yaml\n");
    assert_non_null(start);
    start += strlen("```yaml\n");
    const char *end = strstr(start, "```");
    assert_non_null(end);
    if ((size_t)(end - start) != strlen(yaml) || memcmp(start, yaml, strlen(yaml)) != 0) {
        write_expected("aiserve.yaml", yaml);
        fail();
    }
    const char *path = temp_yaml(yaml);
    core_config c;
    load_ok(&c, LIST("--config", path), NONE);
    unlink(path);
    free(yaml);
    free(table);
    free(doc);
}

/* --- utilities ------------------------------------------------------------ */

static void test_clocks_and_cpus(void **state) {
    (void)state;
    uint64_t a = core_now_us();
    struct timespec pause = {0, 2000000};
    nanosleep(&pause, NULL);
    uint64_t b = core_now_us();
    assert_true(b >= a + 1500);
    assert_true(b < a + 2000000);

    double wall = core_wall_time();
    double now = (double)time(NULL);
    assert_true(wall > now - 2 && wall < now + 2);

    int n = core_cpu_count();
    assert_true(n >= 1);
    long online = sysconf(_SC_NPROCESSORS_CONF);
    if (online > 0)
        assert_true(n <= online);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_file_overrides_defaults),
        cmocka_unit_test(test_env_overrides_file_and_flag_overrides_env),
        cmocka_unit_test(test_config_file_from_environment),
        cmocka_unit_test(test_seed_model_path),
        cmocka_unit_test(test_seed_log_level),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_duration_settings_units),
        cmocka_unit_test(test_values_trimmed_and_sizes),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_cross_setting_check),
        cmocka_unit_test(test_cors_origins),
        cmocka_unit_test(test_rate_limit_settings),
        cmocka_unit_test(test_flag_forms),
        cmocka_unit_test(test_yaml_errors),
        cmocka_unit_test(test_yaml_accepted_forms),
        cmocka_unit_test(test_full_file_and_round_trip),
        cmocka_unit_test(test_describe_json),
        cmocka_unit_test(test_set_by_key),
        cmocka_unit_test(test_damaged_input),
        cmocka_unit_test(test_table_invariants),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_docs_match_table),
        cmocka_unit_test(test_clocks_and_cpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
