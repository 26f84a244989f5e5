/*
 * fuzz_keystore.c - libFuzzer target for the API-key store file
 * (guard_keyset_load, as the server reads it at start and on SIGHUP): any
 * bytes either load into a set whose every record has a valid name and
 * tier and answers lookups, or fail with GUARD_EFORMAT and a message;
 * never a crash, an out-of-bounds access or a leak.
 *
 * The input is written to a memfd and loaded from /proc/self/fd/N (the
 * loader reads a path, as the server does).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz_keystore", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    for (size_t at = 0; at < size;) {
        ssize_t n = write(fd, data + at, size - at);
        if (n <= 0) {
            close(fd);
            return 0;
        }
        at += (size_t)n;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    guard_keyset *set = NULL;
    bool exists = false;
    guard_error err = {0};
    int rc = guard_keyset_load(path, &set, &exists, &err);
    if (rc == 0) {
        for (size_t i = 0; i < guard_keyset_size(set); i++) {
            const guard_key_info *k = guard_keyset_get(set, i);
            if (!k || !guard_name_is_valid(k->name) || !guard_name_is_valid(k->tier))
                abort();
        }
        if (guard_keyset_get(set, guard_keyset_size(set)) != NULL)
            abort();
        (void)guard_keyset_lookup(set, (const char *)data, size < 512 ? size : 512);
        guard_keyset_release(set);
    } else if (rc != GUARD_EFORMAT && rc != GUARD_EIO) {
        abort();
    } else if (set) {
        abort();
    }
    close(fd);
    return 0;
}
