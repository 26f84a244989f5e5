/*
 * safetensors.h - read-only, validating reader of the safetensors format.
 *
 * On-disk layout (little-endian):
 *
 *   +---------+------------------------+--------------------------------+
 *   | u64  N  | N bytes of JSON header | data section (rest of the file)|
 *   +---------+------------------------+--------------------------------+
 *
 *   header = { "__metadata__": {str: str}        (optional),
 *              "<name>": { "dtype": "F32",
 *                          "shape": [d0, d1, ...],
 *                          "data_offsets": [begin, end] }, ... }
 *
 * Offsets are relative to the data section. Everything is validated before
 * a tensor is handed out: N against the file size, the JSON, each dtype, the
 * shape's element count times the dtype size against end - begin (with
 * overflow checks), offsets inside the data section, and no two tensors
 * overlapping. A hostile file yields an error naming the file, the tensor
 * and the problem, never an out-of-bounds read.
 *
 * The file is memory-mapped read-only; tensor data pointers point into the
 * mapping and stay valid until safetensors_close. Any thread may read a
 * safetensors after it is opened.
 */
#ifndef AISERVE_SAFETENSORS_H
#define AISERVE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

#define SAFETENSORS_MAX_DIMS 8
#define SAFETENSORS_MAX_HEADER_BYTES (100u * 1024u * 1024u)

typedef enum safetensors_dtype {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL,
    ST_OTHER_KNOWN, /* a valid safetensors dtype the engine cannot compute with */
} safetensors_dtype;

typedef struct safetensors_tensor {
    const char *name;       /* borrowed from the safetensors */
    safetensors_dtype dtype;
    const char *dtype_name; /* "F32", ... */
    int n_dims;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    uint64_t n_elems;
    const void *data;       /* inside the mapping; n_bytes long */
    uint64_t n_bytes;
} safetensors_tensor;

typedef struct safetensors safetensors;

/* Maps and validates `path`. On success *out is owned by the caller
 * (safetensors_close). Errors: ENGINE_EIO (cannot open/map), ENGINE_EFORMAT. */
int safetensors_open(const char *path, safetensors **out, engine_error *err);

/* Validates an in-memory image (used by the fuzzer and the tests). `buf`
 * is borrowed and must outlive the result; `label` names it in errors. */
int safetensors_parse(const void *buf, size_t len, const char *label, safetensors **out,
                      engine_error *err);

/* Wraps tensors that another reader has validated (torchbin.h) in a
 * safetensors handle, so that code binding weights reads either format
 * through the same lookups. Takes `tensors` (malloc'd array of n_tensors;
 * their names and data stay borrowed from `owner`) and `owner`, which
 * safetensors_close hands to release(owner); both are also released when
 * this fails (ENGINE_ENOMEM). `label` (copied) names the file in errors. */
int safetensors_wrap(const char *label, safetensors_tensor *tensors, size_t n_tensors, void *owner,
                     void (*release)(void *owner), safetensors **out, engine_error *err);

void safetensors_close(safetensors *st);

size_t safetensors_count(const safetensors *st);
const safetensors_tensor *safetensors_at(const safetensors *st, size_t i);
/* Tensor by name, or NULL. */
const safetensors_tensor *safetensors_find(const safetensors *st, const char *name);
/* The file name given at open (or the label), for error messages. */
const char *safetensors_path(const safetensors *st);

#endif
