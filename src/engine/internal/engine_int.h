/*
 * engine_int.h - helpers shared by the engine's own files; not public.
 *
 * Only files under src/engine/ and the engine's unit tests include this.
 */
#ifndef AISERVE_ENGINE_INT_H
#define AISERVE_ENGINE_INT_H

#include "engine.h"

#if defined(__GNUC__)
#define ENGINE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ENGINE_PRINTF(a, b)
#endif

/* Fills err (may be NULL) with status and a formatted message; returns
 * status so that callers can write `return engine_error_set(...)`. */
int engine_error_set(engine_error *err, int status, const char *fmt, ...) ENGINE_PRINTF(3, 4);

/* Maps the regular file at path read-only (private). *map is NULL for an
 * empty file; the caller munmaps (map, *len) when *map is not NULL.
 * ENGINE_EIO naming the file when it cannot be opened or mapped. (error.c) */
int engine_map_file(const char *path, void **map, size_t *len, engine_error *err);

#endif
