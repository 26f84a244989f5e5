/*
 * error.c - engine status names, messages and the error-record helper, and
 * engine_map_file (opening a weights file the way every reader does, with
 * its errors).
 *
 * The status list lives once, in engine.h (ENGINE_STATUS_MAP); the table
 * here is generated from it (status.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

int engine_map_file(const char *path, void **map, size_t *len, engine_error *err) {
    *map = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return engine_error_set(err, ENGINE_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return engine_error_set(err, ENGINE_EIO, "%s: not a regular file", path);
    }
    size_t n = (size_t)sb.st_size;
    void *m = n ? mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return engine_error_set(err, ENGINE_EIO, "%s: cannot map: %s", path, strerror(e));
    *map = m;
    *len = n;
    return 0;
}
