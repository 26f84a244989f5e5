/*
 * guard_int.h - what the guard module's files share and nobody else sees:
 * error helpers, SHA-256, reading the key store file and turning its JSON
 * into a keyset. Not a public header.
 */
#ifndef AISERVE_GUARD_INT_H
#define AISERVE_GUARD_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#include "guard.h"

#define GUARD_SHA256_BYTES 32
#define GUARD_FILE_MAX_BYTES (16u << 20) /* a key store larger than this is refused */

/* Fills err (may be NULL) printf-style and returns status. */
int guard_set_error(guard_error *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* SHA-256 of data[0..len) into out. Returns 0, or -1 if OpenSSL failed. */
int guard_sha256(const void *data, size_t len, unsigned char out[GUARD_SHA256_BYTES]);

/* The current time as RFC 3339 UTC, "2026-11-27T11:02:10Z". */
void guard_now_rfc3339(char *buf, size_t cap);

/* Reads the whole file at path into a malloc'd, NUL-terminated buffer
 * (*data, freed by the caller; NULL when the file is missing) of *len
 * bytes, and its fstat into *st (zeroed when missing). A missing file is
 * not an error: *exists = false. Returns 0 or GUARD_EIO with err. */
int guard_file_read(const char *path, char **data, size_t *len, struct stat *st, bool *exists,
                    guard_error *err);

/* Validates a parsed key store document (borrowed) and builds a keyset (one
 * reference, the caller's). path only names the file in messages. Returns 0
 * or GUARD_EFORMAT / GUARD_ENOMEM with err. */
int guard_keyset_from_json(const char *path, json_t *doc, guard_keyset **out, guard_error *err);

/* Parses data[0..len) as a key store: zero bytes is the empty store
 * (*doc NULL); otherwise *doc is the document (caller decrefs). Returns 0 or
 * GUARD_EFORMAT with err ("path: not valid JSON: ... (line L, column C)"). */
int guard_json_parse(const char *path, const char *data, size_t len, json_t **doc, guard_error *err);

#endif /* AISERVE_GUARD_INT_H */
