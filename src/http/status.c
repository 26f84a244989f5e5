/*
 * status.c - the one table from another module's status to the error an
 * answer carries (and so its HTTP status: HTTP_ERROR_MAP). Every endpoint
 * that turns a serving, jobs, store or guard status into an answer goes
 * through http_error_of; a status missing here is a bug the client sees as
 * 500 internal_error, never a crash.
 *
 * Any thread (read-only data).
 */
#include "http_int.h"

static const struct {
    status_module module;
    int status;
    http_error error;
} table[] = {
    {STATUS_MODULE_SERVING, SERVING_ENOTFOUND, HTTP_ERR_MODEL_NOT_FOUND},
    {STATUS_MODULE_SERVING, SERVING_ENOVERSION, HTTP_ERR_VERSION_NOT_FOUND},
    {STATUS_MODULE_SERVING, SERVING_ENOTREADY, HTTP_ERR_NOT_READY},
    {STATUS_MODULE_SERVING, SERVING_EFULL, HTTP_ERR_OVERLOADED},
    {STATUS_MODULE_SERVING, SERVING_ETIMEOUT, HTTP_ERR_TIMEOUT},
    {STATUS_MODULE_SERVING, SERVING_ESTOPPED, HTTP_ERR_SHUTTING_DOWN},
    {STATUS_MODULE_SERVING, SERVING_EINPUT, HTTP_ERR_INVALID_TEXT},
    {STATUS_MODULE_SERVING, SERVING_EUNSUPPORTED, HTTP_ERR_UNSUPPORTED_MODEL},
    {STATUS_MODULE_JOBS, JOBS_EINVAL, HTTP_ERR_INVALID_REQUEST},
    {STATUS_MODULE_JOBS, JOBS_ENOTFOUND, HTTP_ERR_JOB_NOT_FOUND},
    {STATUS_MODULE_JOBS, JOBS_ELIMIT, HTTP_ERR_TOO_MANY_JOBS},
    {STATUS_MODULE_JOBS, JOBS_ENOMODEL, HTTP_ERR_MODEL_NOT_FOUND},
    {STATUS_MODULE_JOBS, JOBS_EFINISHED, HTTP_ERR_JOB_FINISHED},
    {STATUS_MODULE_JOBS, JOBS_EUNAVAILABLE, HTTP_ERR_JOB_QUEUE_UNAVAILABLE},
    {STATUS_MODULE_STORE, KV_EUNAVAILABLE, HTTP_ERR_RATE_LIMITER_UNAVAILABLE},
    {STATUS_MODULE_GUARD, GUARD_EINVAL, HTTP_ERR_INVALID_REQUEST},
    {STATUS_MODULE_GUARD, GUARD_ENOTFOUND, HTTP_ERR_NOT_FOUND},
};

http_error http_error_of(status_module module, int status) {
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].module == module && table[i].status == status)
            return table[i].error;
    return HTTP_ERR_INTERNAL;
}
