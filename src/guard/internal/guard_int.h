/*
 * guard_int.h - what the guard module's files share and nobody else sees:
 * error helpers, SHA-256, reading the key store file and turning its JSON
 * into a keyset, and the metrics collector that the limiter and the cache
 * use to publish their backend's size. Not a public header.
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

/* A metrics collector over a kv_store that can be detached: the registry
 * owns the collector's box (it may render after the limiter or cache is
 * gone), and detaching makes later renders skip it. fn(ud, store, series)
 * runs at every render, under the box's lock, with the n (<= 8) series
 * given here. Returns NULL when out of memory. */
typedef struct guard_collector guard_collector;
typedef void (*guard_collect_fn)(void *ud, kv_store *store, metric *const *series);
guard_collector *guard_collector_attach(metrics_registry *r, kv_store *store, guard_collect_fn fn, void *ud,
                                        metric *const *series, size_t n);
/* Stops the collector from touching the store. NULL is fine. */
void guard_collector_detach(guard_collector *c);

#endif /* AISERVE_GUARD_INT_H */
