/*
 * error.c - engine status names, messages and the error-record helper.
 *
 * The status list lives once, in engine.h (ENGINE_STATUS_MAP); the tables
 * here are generated from it.
 */
#include <stdarg.h>
#include <stdio.h>

#include "engine_int.h"

const char *engine_status_name(int status) {
    switch (status) {
#define ENGINE_STATUS_NAME(name, code, msg) \
    case code:                              \
        return "ENGINE_" #name;
        ENGINE_STATUS_MAP(ENGINE_STATUS_NAME)
#undef ENGINE_STATUS_NAME
    }
    return "ENGINE_UNKNOWN";
}

const char *engine_status_message(int status) {
    switch (status) {
#define ENGINE_STATUS_MSG(name, code, msg) \
    case code:                             \
        return msg;
        ENGINE_STATUS_MAP(ENGINE_STATUS_MSG)
#undef ENGINE_STATUS_MSG
    }
    return "unknown status";
}

int engine_error_set(engine_error *err, int status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->status = status;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}
