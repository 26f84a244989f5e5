/*
 * test_safetensors.c - the safetensors reader accepts well-formed files and
 * rejects hostile ones with a message naming the tensor and the problem.
 *
 * Every hostile case is built in memory from a header string, so each test
 * shows the exact bytes it feeds; under ASan a read past any buffer fails.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "safetensors.h"

typedef struct image {
    uint8_t *bytes;
    size_t len;
} image;

/* 8-byte length + header + data_len bytes of data (value i & 0xff). */
static image make_image(const char *header, size_t data_len) {
    size_t n = strlen(header);
    image im = {.len = 8 + n + data_len};
    im.bytes = malloc(im.len);
    for (int i = 0; i < 8; i++)
        im.bytes[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(im.bytes + 8, header, n);
    for (size_t i = 0; i < data_len; i++)
        im.bytes[8 + n + i] = (uint8_t)i;
    return im;
}

/* Parses a copy of exactly len bytes (so ASan sees the true end). */
static int parse_exact(const uint8_t *bytes, size_t len, engine_error *err) {
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, bytes, len);
    safetensors *st = NULL;
    int rc = safetensors_parse(copy, len, "test.safetensors", &st, err);
    if (rc == 0) {
        for (size_t i = 0; i < safetensors_count(st); i++) { /* touch every byte */
            const safetensors_tensor *t = safetensors_at(st, i);
            volatile uint8_t sum = 0;
            for (uint64_t b = 0; b < t->n_bytes; b++)
                sum += ((const uint8_t *)t->data)[b];
            (void)sum;
        }
    }
    safetensors_close(st);
    free(copy);
    return rc;
}

static void expect_error(const char *header, size_t data_len, const char *needle) {
    image im = make_image(header, data_len);
    engine_error err = {0};
    int rc = parse_exact(im.bytes, im.len, &err);
    if (rc != ENGINE_EFORMAT || !strstr(err.message, needle))
        print_error("header %s\n  rc %d, message '%s', wanted '%s'\n", header, rc, err.message, needle);
    assert_int_equal(rc, ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, needle));
    assert_non_null(strstr(err.message, "test.safetensors"));
    free(im.bytes);
}

static const char *valid_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"c\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[32,32]}}";

static void test_valid_file(void **state) {
    (void)state;
    image im = make_image(valid_header, 32);
    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(safetensors_parse(im.bytes, im.len, "ok", &st, &err), 0);
    assert_int_equal(safetensors_count(st), 3);
    const safetensors_tensor *a = safetensors_find(st, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, ST_F32);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->shape[1], 3);
    assert_int_equal(a->n_elems, 6);
    assert_ptr_equal(a->data, im.bytes + 8 + strlen(valid_header)); /* in place, not copied */
    const safetensors_tensor *b = safetensors_find(st, "b");
    assert_int_equal(b->dtype, ST_F16);
    assert_int_equal(((const uint8_t *)b->data)[0], 24);
    assert_int_equal(safetensors_find(st, "c")->n_elems, 0);
    assert_null(safetensors_find(st, "missing"));
    safetensors_close(st);
    free(im.bytes);
}

static void test_every_truncation_is_an_error(void **state) {
    (void)state;
    image im = make_image(valid_header, 32);
    for (size_t len = 0; len < im.len; len++) {
        engine_error err = {0};
        int rc = parse_exact(im.bytes, len, &err);
        assert_int_equal(rc, ENGINE_EFORMAT);
        assert_true(strlen(err.message) > 0);
    }
    free(im.bytes);
}

static void test_header_length_past_end(void **state) {
    (void)state;
    image im = make_image("{}", 0);
    engine_error err = {0};
    im.bytes[0] = 200; /* header claims 200 bytes, file has 2 */
    assert_int_equal(parse_exact(im.bytes, im.len, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "past the end"));
    memset(im.bytes, 0xff, 8); /* 2^64 - 1 */
    assert_int_equal(parse_exact(im.bytes, im.len, &err), ENGINE_EFORMAT);
    free(im.bytes);
}

static void test_header_not_json(void **state) {
    (void)state;
    expect_error("{\"a\": ", 0, "not a JSON object");
    expect_error("[1, 2, 3]", 0, "not a JSON object");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                 4, "not a JSON object");
    expect_error("{\"__metadata__\": 5}", 0, "__metadata__");
    expect_error("{\"a\": 5}", 0, "'a'");
}

static void test_bad_dtype(void **state) {
    (void)state;
    expect_error("{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 "tensor 'w': unknown dtype 'F33'");
    expect_error("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w'");
    expect_error("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
}

static void test_bad_shape(void **state) {
    (void)state;
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                 "tensor 'w': shape[0]");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, "shape");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                 "shape");
    /* element count overflows 64 bits */
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
                 4, "overflows");
    /* 2^62 elements of 4 bytes: count fits, bytes do not */
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}",
                 4, "data span");
}

static void test_shape_disagrees_with_span(void **state) {
    (void)state;
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16,
                 "tensor 'w': shape needs 4 elements of F32 but the data span is 12 bytes");
    expect_error("{\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,12]}}", 16, "data span");
}

static void test_offsets_outside_data(void **state) {
    (void)state;
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12,
                 "tensor 'w': data_offsets [8, 16] outside the data section (12 bytes)");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 12, "outside");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 12, "data_offsets");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 12, "data_offsets");
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551612,"
                 "18446744073709551616]}}",
                 12, "not a JSON object"); /* past int64: jansson rejects the number */
}

static void test_overlapping_tensors(void **state) {
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, "overlaps");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 16, "overlaps");
}

static void test_open_errors(void **state) {
    (void)state;
    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(safetensors_open("/nonexistent/model.safetensors", &st, &err), ENGINE_EIO);
    assert_non_null(strstr(err.message, "/nonexistent/model.safetensors"));
    assert_null(st);
    assert_int_equal(safetensors_open("/tmp", &st, &err), ENGINE_EIO);

    char path[] = "/tmp/aiserve-st-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    image im = make_image(valid_header, 32);
    assert_int_equal(write(fd, im.bytes, im.len - 5), (ssize_t)(im.len - 5)); /* truncated */
    close(fd);
    assert_int_equal(safetensors_open(path, &st, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, path));
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, im.bytes, im.len), (ssize_t)im.len);
    close(fd);
    assert_int_equal(safetensors_open(path, &st, &err), 0);
    assert_int_equal(safetensors_count(st), 3);
    safetensors_close(st);
    unlink(path);
    free(im.bytes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_file),
        cmocka_unit_test(test_every_truncation_is_an_error),
        cmocka_unit_test(test_header_length_past_end),
        cmocka_unit_test(test_header_not_json),
        cmocka_unit_test(test_bad_dtype),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test(test_shape_disagrees_with_span),
        cmocka_unit_test(test_offsets_outside_data),
        cmocka_unit_test(test_overlapping_tensors),
        cmocka_unit_test(test_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
