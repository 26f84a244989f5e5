/*
 * safetensors.c - validating safetensors reader (format in safetensors.h).
 *
 * Order of checks, each before anything depends on it:
 *  1. file at least 8 bytes; header length N <= file size - 8 and <= 100 MiB;
 *  2. header is a JSON object without duplicate keys (jansson);
 *  3. per tensor: dtype known, shape a list of non-negative integers, offsets
 *     two non-negative integers with begin <= end <= data section size,
 *     product(shape) * dtype size == end - begin, computed without overflow;
 *  4. after sorting by offset, no tensor starts before the previous ends.
 * Only then are data pointers formed. The JSON tree is kept for the names.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_int.h"

struct safetensors {
    char *path;
    void *map; /* NULL when parsing a caller's buffer */
    size_t map_len;
    json_t *header;
    safetensors_tensor *tensors;
    size_t n_tensors;
    void *owner; /* safetensors_wrap: what the tensors borrow from */
    void (*release)(void *owner);
};

static const struct {
    const char *name;
    safetensors_dtype dtype;
    size_t size;
} dtype_table[] = {
    {"F32", ST_F32, 4},         {"F16", ST_F16, 2},        {"BF16", ST_BF16, 2},
    {"F64", ST_F64, 8},         {"I64", ST_I64, 8},        {"I32", ST_I32, 4},
    {"I16", ST_I16, 2},         {"I8", ST_I8, 1},          {"U8", ST_U8, 1},
    {"BOOL", ST_BOOL, 1},       {"U16", ST_OTHER_KNOWN, 2}, {"U32", ST_OTHER_KNOWN, 4},
    {"U64", ST_OTHER_KNOWN, 8}, {"F8_E4M3", ST_OTHER_KNOWN, 1},
    {"F8_E5M2", ST_OTHER_KNOWN, 1},
};

static int get_offset(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int cmp_by_begin(const void *a, const void *b) {
    const safetensors_tensor *x = *(const safetensors_tensor *const *)a;
    const safetensors_tensor *y = *(const safetensors_tensor *const *)b;
    const uint8_t *px = x->data, *py = y->data;
    return px < py ? -1 : px > py ? 1 : 0;
}

/* Validates one header entry and fills t (data pointer relative to `data`). */
static int parse_entry(safetensors *st, const char *name, json_t *entry, const uint8_t *data,
                       uint64_t data_len, safetensors_tensor *t, engine_error *err) {
    const char *path = st->path;
    if (!json_is_object(entry))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s': header entry is not an object",
                                path, name);
    json_t *jd = json_object_get(entry, "dtype");
    json_t *js = json_object_get(entry, "shape");
    json_t *jo = json_object_get(entry, "data_offsets");
    if (!json_is_string(jd))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s': missing or non-string dtype",
                                path, name);
    size_t elem_size = 0;
    const char *dname = json_string_value(jd);
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++) {
        if (strcmp(dname, dtype_table[i].name) == 0) {
            t->dtype = dtype_table[i].dtype;
            t->dtype_name = dtype_table[i].name;
            elem_size = dtype_table[i].size;
            break;
        }
    }
    if (!elem_size)
        return engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s': unknown dtype '%.32s'", path,
                                name, dname);
    if (!json_is_array(js) || json_array_size(js) > SAFETENSORS_MAX_DIMS)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': shape must be a list of at most %d integers", path,
                                name, SAFETENSORS_MAX_DIMS);
    uint64_t n_elems = 1;
    t->n_dims = (int)json_array_size(js);
    for (int d = 0; d < t->n_dims; d++) {
        uint64_t dim;
        if (get_offset(json_array_get(js, (size_t)d), &dim))
            return engine_error_set(err, ENGINE_EFORMAT,
                                    "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                                    name, d);
        if (dim && n_elems > UINT64_MAX / dim)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s': shape overflows", path,
                                    name);
        n_elems *= dim;
        t->shape[d] = (int64_t)dim;
    }
    uint64_t begin, end;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || get_offset(json_array_get(jo, 0), &begin) ||
        get_offset(json_array_get(jo, 1), &end))
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': data_offsets must be [begin, end] non-negative integers",
                                path, name);
    if (begin > end || end > data_len)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section "
                                "(%llu bytes)",
                                path, name, (unsigned long long)begin, (unsigned long long)end,
                                (unsigned long long)data_len);
    if (n_elems > UINT64_MAX / elem_size || n_elems * elem_size != end - begin)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': shape needs %llu elements of %s but the data span "
                                "is %llu bytes",
                                path, name, (unsigned long long)n_elems, t->dtype_name,
                                (unsigned long long)(end - begin));
    t->name = name;
    t->n_elems = n_elems;
    t->n_bytes = end - begin;
    t->data = data + begin;
    return 0;
}

int safetensors_parse(const void *buf, size_t len, const char *label, safetensors **out,
                      engine_error *err) {
    *out = NULL;
    safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(label ? label : "<memory>"))) {
        free(st);
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", label ? label : "<memory>");
    }
    int rc = 0;
    const uint8_t *bytes = buf;
    if (len < 8) {
        rc = engine_error_set(err, ENGINE_EFORMAT,
                              "%s: file is %zu bytes, too short for a safetensors header", st->path, len);
        goto fail;
    }
    uint64_t n_header = 0;
    for (int i = 7; i >= 0; i--)
        n_header = (n_header << 8) | bytes[i];
    if (n_header > len - 8 || n_header > SAFETENSORS_MAX_HEADER_BYTES) {
        rc = engine_error_set(err, ENGINE_EFORMAT,
                              "%s: header length %llu is past the end of the file (%zu bytes) or over "
                              "100 MiB; the file is truncated or not safetensors",
                              st->path, (unsigned long long)n_header, len);
        goto fail;
    }
    json_error_t jerr;
    st->header = json_loadb((const char *)bytes + 8, (size_t)n_header, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header || !json_is_object(st->header)) {
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: header is not a JSON object: %s", st->path,
                              st->header ? "wrong type" : jerr.text);
        goto fail;
    }
    const uint8_t *data = bytes + 8 + n_header;
    uint64_t data_len = len - 8 - n_header;
    size_t n_keys = json_object_size(st->header);
    st->tensors = calloc(n_keys ? n_keys : 1, sizeof *st->tensors);
    if (!st->tensors) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", st->path);
        goto fail;
    }
    const char *name;
    json_t *entry;
    json_object_foreach(st->header, name, entry) {
        if (strcmp(name, "__metadata__") == 0) {
            if (!json_is_object(entry)) {
                rc = engine_error_set(err, ENGINE_EFORMAT, "%s: __metadata__ is not an object",
                                      st->path);
                goto fail;
            }
            continue;
        }
        rc = parse_entry(st, name, entry, data, data_len, &st->tensors[st->n_tensors], err);
        if (rc)
            goto fail;
        st->n_tensors++;
    }
    if (st->n_tensors > 1) {
        const safetensors_tensor **order = malloc(st->n_tensors * sizeof *order);
        if (!order) {
            rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", st->path);
            goto fail;
        }
        for (size_t i = 0; i < st->n_tensors; i++)
            order[i] = &st->tensors[i];
        qsort(order, st->n_tensors, sizeof *order, cmp_by_begin);
        for (size_t i = 1; i < st->n_tensors; i++) {
            const uint8_t *prev_end = (const uint8_t *)order[i - 1]->data + order[i - 1]->n_bytes;
            if ((const uint8_t *)order[i]->data < prev_end) {
                rc = engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s' overlaps tensor '%s'",
                                      st->path, order[i]->name, order[i - 1]->name);
                free(order);
                goto fail;
            }
        }
        free(order);
    }
    *out = st;
    return 0;
fail:
    safetensors_close(st);
    return rc;
}

int safetensors_open(const char *path, safetensors **out, engine_error *err) {
    *out = NULL;
    void *map;
    size_t len;
    int rc = engine_map_file(path, &map, &len, err);
    if (rc)
        return rc;
    static const uint8_t empty[1];
    rc = safetensors_parse(map ? map : empty, len, path, out, err);
    if (rc) {
        if (map)
            munmap(map, len);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_len = len;
    return 0;
}

int safetensors_wrap(const char *label, safetensors_tensor *tensors, size_t n_tensors, void *owner,
                     void (*release)(void *owner), safetensors **out, engine_error *err) {
    *out = NULL;
    safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(label))) {
        free(st);
        free(tensors);
        release(owner);
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", label);
    }
    st->tensors = tensors;
    st->n_tensors = n_tensors;
    st->owner = owner;
    st->release = release;
    *out = st;
    return 0;
}

void safetensors_close(safetensors *st) {
    if (!st)
        return;
    if (st->release)
        st->release(st->owner);
    if (st->map)
        munmap(st->map, st->map_len);
    json_decref(st->header);
    free(st->tensors);
    free(st->path);
    free(st);
}

size_t safetensors_count(const safetensors *st) { return st->n_tensors; }

const safetensors_tensor *safetensors_at(const safetensors *st, size_t i) {
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

const safetensors_tensor *safetensors_find(const safetensors *st, const char *name) {
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0)
            return &st->tensors[i];
    return NULL;
}

const char *safetensors_path(const safetensors *st) { return st->path; }
