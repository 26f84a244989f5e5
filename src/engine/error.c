/*
 * error.c - engine status names, messages and the error-record helper.
 *
 * The status list lives once, in engine.h (ENGINE_STATUS_MAP); the table
 * here is generated from it (status.h).
 */
#include <stdarg.h>
#include <stdio.h>

#include "engine_int.h"

static const status_row rows[] = {ENGINE_STATUS_MAP(STATUS_TABLE_ROW)};

const char *engine_status_name(int status) { return status_name(rows, STATUS_COUNT(rows), status, "ENGINE_UNKNOWN"); }
const char *engine_status_message(int status) { return status_message(rows, STATUS_COUNT(rows), status); }

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
