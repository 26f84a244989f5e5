/*
 * fuzz_config.c - libFuzzer target for the configuration loader: any bytes
 * given as the YAML file, and any key/value given to core_config_set,
 * either apply or fail with a message and leave the configuration
 * untouched; never a crash, an out-of-bounds access or a leak.
 *
 *  - The input is written to a memfd and loaded from /proc/self/fd/N over
 *    the defaults (core_config_load_file reads a path, as the server does).
 *  - The input split at its first NUL is a key and a value for
 *    core_config_set; without a NUL, the input is a value for the setting
 *    its first byte picks. The value also goes to the value parsers.
 *  - Whatever loaded must survive core_config_write_yaml and loading back
 *    unchanged, as core.h promises.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A memfd holding the bytes, and its /proc path; -1 on failure. */
static int memfd_with(const void *data, size_t size, char *path, size_t cap) {
    int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        p += n;
        size -= (size_t)n;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

/* A failure must say why and change nothing. */
static void check_failure(const core_config *before, const core_config *after, const core_error *err,
                          const char *what) {
    if (memchr(err->message, 0, sizeof err->message) == NULL || err->message[0] == '\0') {
        fprintf(stderr, "%s failed without a message\n", what);
        abort();
    }
    if (memcmp(before, after, sizeof *before) != 0) {
        fprintf(stderr, "%s failed (%s) but changed the configuration\n", what, err->message);
        abort();
    }
}

/* describe_json without the file name, which legitimately differs. */
static char *describe(const core_config *c) {
    core_config tmp = *c;
    tmp.config_file[0] = '\0';
    return core_config_describe_json(&tmp);
}

/* core_config_write_yaml, then load that over the defaults: the same
 * configuration must come back. */
static void check_round_trip(const core_config *c, const char *what) {
    char *yaml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&yaml, &len);
    if (!f)
        return;
    int wrc = core_config_write_yaml(c, f);
    fclose(f);
    if (wrc != 0) {
        free(yaml);
        return;
    }
    char path[64];
    int fd = memfd_with(yaml, len, path, sizeof path);
    if (fd < 0) {
        free(yaml);
        return;
    }
    core_config back;
    core_config_defaults(&back);
    core_error err = {{0}};
    if (core_config_load_file(&back, path, &err) != 0) {
        fprintf(stderr, "%s: the written YAML does not load back: %s\n---\n%s---\n", what, err.message,
                yaml);
        abort();
    }
    char *a = describe(c), *b = describe(&back);
    if (a && b && strcmp(a, b) != 0) {
        fprintf(stderr, "%s: round trip changed the configuration\nbefore %s\nafter  %s\n", what, a, b);
        abort();
    }
    free(a);
    free(b);
    close(fd);
    free(yaml);
}

static void fuzz_file(const uint8_t *data, size_t size) {
    char path[64];
    int fd = memfd_with(data, size, path, sizeof path);
    if (fd < 0)
        return;
    core_config c, before;
    core_config_defaults(&c);
    before = c;
    core_error err = {{0}};
    if (core_config_load_file(&c, path, &err) == 0) {
        if (strcmp(c.config_file, path) != 0) {
            fprintf(stderr, "config_file is '%s', not '%s'\n", c.config_file, path);
            abort();
        }
        core_error verr = {{0}};
        (void)core_config_validate(&c, &verr);
        check_round_trip(&c, "file");
    } else {
        check_failure(&before, &c, &err, "core_config_load_file");
    }
    close(fd);
}

static void fuzz_set(const uint8_t *data, size_t size) {
    /* NUL-terminated copies, exact size so ASan sees any overread. */
    const uint8_t *nul = memchr(data, 0, size);
    char *key = NULL, *value = NULL;
    if (nul) {
        size_t klen = (size_t)(nul - data);
        key = malloc(klen + 1);
        value = malloc(size - klen);
        if (!key || !value)
            goto out_alloc;
        memcpy(key, data, klen);
        key[klen] = 0;
        memcpy(value, nul + 1, size - klen - 1);
        value[size - klen - 1] = 0;
    } else {
        core_setting_info info;
        size_t n = core_config_n_settings();
        if (size == 0 || n == 0 || core_config_setting_info(data[0] % n, &info) != 0)
            return;
        key = strdup(info.key);
        value = malloc(size);
        if (!key || !value)
            goto out_alloc;
        memcpy(value, data + 1, size - 1);
        value[size - 1] = 0;
    }

    core_config c, before;
    core_config_defaults(&c);
    before = c;
    core_error err = {{0}};
    if (core_config_set(&c, key, value, &err) == 0)
        check_round_trip(&c, "set");
    else
        check_failure(&before, &c, &err, "core_config_set");

    int64_t us;
    uint64_t bytes;
    int b;
    (void)core_parse_duration_us(value, &us);
    (void)core_parse_size_bytes(value, &bytes);
    (void)core_parse_bool(value, &b);
out_alloc:
    free(key);
    free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_file(data, size);
    fuzz_set(data, size);
    return 0;
}
