/*
 * status.h - the one way every module declares its status codes: a list
 * macro (libuv's UV_ERRNO_MAP) generates the enum, the names and the
 * messages, so a code, its name and its message can never drift apart.
 * Header-only; depends on nothing, so the engine may use it too.
 *
 * A module's public header writes
 *
 *     #define SERVING_STATUS_MAP(X)                 \
 *         X(SERVING_OK, 0, "success")               \
 *         X(SERVING_ENOTFOUND, -1, "no such model")
 *     typedef enum serving_status { SERVING_STATUS_MAP(STATUS_ENUM_ROW) } serving_status;
 *
 * and one of its .c files
 *
 *     static const status_row rows[] = {SERVING_STATUS_MAP(STATUS_TABLE_ROW)};
 *     const char *serving_status_name(int s) {
 *         return status_name(rows, STATUS_COUNT(rows), s, "SERVING_UNKNOWN");
 *     }
 *     const char *serving_status_message(int s) { return status_message(rows, STATUS_COUNT(rows), s); }
 *
 * 0 is success and errors are negative. Which HTTP status and error code a
 * module's status becomes is decided in one place, the HTTP layer's table
 * (src/http/status.c), keyed by the module ids below.
 */
#ifndef AISERVE_STATUS_H
#define AISERVE_STATUS_H

#include <stddef.h>

typedef struct status_row {
    int code;
    const char *name;    /* "SERVING_ENOTFOUND" */
    const char *message; /* a default message a user can read */
} status_row;

#define STATUS_ENUM_ROW(name, code, message) name = code,
#define STATUS_TABLE_ROW(name, code, message) {code, #name, message},
#define STATUS_COUNT(rows) (sizeof(rows) / sizeof((rows)[0]))

/* The modules whose statuses reach a client. */
typedef enum status_module {
    STATUS_MODULE_ENGINE,
    STATUS_MODULE_SERVING,
    STATUS_MODULE_JOBS,
    STATUS_MODULE_STORE,
    STATUS_MODULE_GUARD,
    STATUS_MODULE_GATEWAY,
} status_module;

static inline const status_row *status_find(const status_row *rows, size_t n, int code) {
    for (size_t i = 0; i < n; i++)
        if (rows[i].code == code)
            return &rows[i];
    return NULL;
}

/* The code's name, or `unknown` ("SERVING_UNKNOWN"); never NULL. */
static inline const char *status_name(const status_row *rows, size_t n, int code, const char *unknown) {
    const status_row *r = status_find(rows, n, code);
    return r ? r->name : unknown;
}

/* The code's message, or "unknown status"; never NULL. */
static inline const char *status_message(const status_row *rows, size_t n, int code) {
    const status_row *r = status_find(rows, n, code);
    return r ? r->message : "unknown status";
}

#endif /* AISERVE_STATUS_H */
