/*
 * test_torchbin.c - the pytorch_model.bin reader hands out exactly what
 * torch.save wrote, and refuses hostile archives and pickles with a message
 * naming the file and what it found.
 *
 * Good files are real torch.save output (tools/make_torchbin_fixtures.py),
 * compared bit for bit with safetensors files of the same tensors. Hostile
 * cases are built here, in memory, from pickle bytes spelled out in the
 * test (zip_image.h); under ASan a read past any buffer fails.
 */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../fuzz/zip_image.h"
#include "bert.h"
#include "checkpoint.h"
#include "model_config.h"
#include "safetensors.h"
#include "torchbin.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/torchbin"
#define MODELS AISERVE_SOURCE_DIR "/tests/fixtures/models"

/* ---- helpers --------------------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

/* Parses a copy of exactly len bytes (so ASan sees the true end); touches
 * every tensor byte on success. */
static int parse_exact(const uint8_t *bytes, size_t len, engine_error *err) {
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, bytes, len);
    safetensors *st = NULL;
    int rc = torchbin_parse(copy, len, "test.bin", &st, err);
    free(copy); /* the result must not borrow the file's bytes */
    if (rc == 0) {
        for (size_t i = 0; i < safetensors_count(st); i++) {
            const safetensors_tensor *t = safetensors_at(st, i);
            volatile uint8_t sum = 0;
            for (uint64_t b = 0; b < t->n_bytes; b++)
                sum += ((const uint8_t *)t->data)[b];
            (void)sum;
        }
    }
    safetensors_close(st);
    return rc;
}

static void expect_image_error(const uint8_t *bytes, size_t len, const char *needle) {
    engine_error err = {0};
    int rc = parse_exact(bytes, len, &err);
    if (rc != ENGINE_EFORMAT || !strstr(err.message, needle))
        print_error("rc %d, message '%s', wanted '%s'\n", rc, err.message, needle);
    assert_int_equal(rc, ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, needle));
    assert_non_null(strstr(err.message, "test.bin"));
}

/* Pickle bytes, written opcode by opcode. */
typedef struct pkl {
    uint8_t b[4096];
    size_t n;
} pkl;

static void put(pkl *p, const void *bytes, size_t n) {
    assert_true(p->n + n <= sizeof p->b);
    memcpy(p->b + p->n, bytes, n);
    p->n += n;
}
static void put_op(pkl *p, const char *ops) { put(p, ops, strlen(ops)); }
static void put_str(pkl *p, const char *s) { /* BINUNICODE */
    uint32_t n = (uint32_t)strlen(s);
    uint8_t h[5] = {'X', (uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    put(p, h, 5);
    put(p, s, n);
}
static void put_int(pkl *p, int32_t i) { /* BININT */
    uint32_t u = (uint32_t)i;
    uint8_t h[5] = {'J', (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    put(p, h, 5);
}
static void put_global(pkl *p, const char *module, const char *name) {
    put_op(p, "c");
    put_op(p, module);
    put_op(p, "\n");
    put_op(p, name);
    put_op(p, "\n");
}

typedef struct tensor_spec {
    const char *name, *type, *key;
    int numel, offset, n_dims;
    int shape[4], stride[4];
} tensor_spec;

/* One state dict entry as torch.save writes it: name, then
 * _rebuild_tensor_v2((persistent id), offset, shape, stride, False,
 * OrderedDict()). */
static void put_tensor(pkl *p, const tensor_spec *t) {
    put_str(p, t->name);
    put_global(p, "torch._utils", "_rebuild_tensor_v2");
    put_op(p, "((");
    put_str(p, "storage");
    put_global(p, "torch", t->type);
    put_str(p, t->key);
    put_str(p, "cpu");
    put_int(p, t->numel);
    put_op(p, "tQ");
    put_int(p, t->offset);
    put_op(p, "(");
    for (int d = 0; d < t->n_dims; d++)
        put_int(p, t->shape[d]);
    put_op(p, "t(");
    for (int d = 0; d < t->n_dims; d++)
        put_int(p, t->stride[d]);
    put_op(p, "t\x89");
    put_global(p, "collections", "OrderedDict");
    put_op(p, ")RtR");
}

/* A state dict of the given tensors. */
static pkl state_dict(const tensor_spec *t, int n) {
    pkl p = {.n = 0};
    put_op(&p, "\x80\x02");
    put_global(&p, "collections", "OrderedDict");
    put_op(&p, ")R(");
    for (int i = 0; i < n; i++)
        put_tensor(&p, &t[i]);
    put_op(&p, "u.");
    return p;
}

static const tensor_spec w34 = {"w", "FloatStorage", "0", 12, 0, 2, {3, 4}, {4, 1}};
static uint8_t storage0[48] = "0123456789abcdef0123456789abcdef0123456789abcdef";

/* An archive of data.pkl and data/0 (48 bytes) under "archive/". */
static uint8_t *archive_of(const void *pickle, size_t n, size_t *len) {
    zip_image_entry e[] = {{"archive/data.pkl", pickle, n, 0},
                           {"archive/data/0", storage0, sizeof storage0, 0},
                           {"archive/version", "3\n", 2, 0}};
    uint8_t *zip = zip_image(e, 3, len);
    assert_non_null(zip);
    return zip;
}

static void expect_pickle_error(const void *pickle, size_t n, const char *needle) {
    size_t len;
    uint8_t *zip = archive_of(pickle, n, &len);
    expect_image_error(zip, len, needle);
    free(zip);
}

static void expect_dict_error(const tensor_spec *t, int n, const char *needle) {
    pkl p = state_dict(t, n);
    expect_pickle_error(p.b, p.n, needle);
}

static safetensors *open_ok(const char *path) {
    safetensors *st = NULL;
    engine_error err = {0};
    int rc = strstr(path, ".safetensors") ? safetensors_open(path, &st, &err) : torchbin_open(path, &st, &err);
    if (rc)
        print_error("%s: %s\n", path, err.message);
    assert_int_equal(rc, 0);
    return st;
}

static const safetensors_tensor *find(const safetensors *st, const char *name) {
    const safetensors_tensor *t = safetensors_find(st, name);
    if (!t)
        print_error("tensor %s missing\n", name);
    assert_non_null(t);
    return t;
}

/* Every tensor of `want` is in `got` with the same dtype, shape and bytes. */
static void expect_same_tensors(const safetensors *got, const safetensors *want) {
    for (size_t i = 0; i < safetensors_count(want); i++) {
        const safetensors_tensor *w = safetensors_at(want, i);
        const safetensors_tensor *g = find(got, w->name);
        assert_int_equal(g->dtype, w->dtype);
        assert_string_equal(g->dtype_name, w->dtype_name);
        assert_int_equal(g->n_dims, w->n_dims);
        for (int d = 0; d < w->n_dims; d++)
            assert_int_equal(g->shape[d], w->shape[d]);
        assert_int_equal(g->n_elems, w->n_elems);
        assert_int_equal(g->n_bytes, w->n_bytes);
        assert_memory_equal(g->data, w->data, w->n_bytes);
    }
}

/* ---- what torch.save writes ------------------------------------------------ */

static void check_mixed(const char *file) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", FIXTURES, file);
    safetensors *bin = open_ok(path);
    safetensors *want = open_ok(FIXTURES "/mixed.safetensors");
    expect_same_tensors(bin, want);
    assert_int_equal(safetensors_count(bin), safetensors_count(want) + 1); /* + position_ids */
    assert_string_equal(safetensors_path(bin), path);
    assert_string_equal(safetensors_at(bin, 0)->name, "shared.whole"); /* the file's order */

    /* Views share their storage at its offset; tied weights are one buffer. */
    const safetensors_tensor *whole = find(bin, "shared.whole");
    assert_int_equal((uintptr_t)whole->data % 64, 0);
    assert_ptr_equal(find(bin, "shared.head")->data, whole->data);
    assert_ptr_equal(find(bin, "shared.tail_2d")->data, (const float *)whole->data + 10);
    assert_ptr_equal(find(bin, "cls.predictions.decoder.weight")->data,
                     find(bin, "embeddings.word_embeddings.weight")->data);
    assert_ptr_equal(find(bin, "half.row")->data, (const uint16_t *)find(bin, "half.weight")->data + 4);
    assert_int_equal(find(bin, "bf16.weight")->dtype, ST_BF16);
    assert_int_equal(find(bin, "scalar")->n_dims, 0);
    assert_int_equal(find(bin, "scalar")->n_elems, 1);
    assert_int_equal(find(bin, "empty")->n_bytes, 0);

    const safetensors_tensor *pos = find(bin, "embeddings.position_ids");
    assert_int_equal(pos->dtype, ST_I64);
    assert_string_equal(pos->dtype_name, "I64");
    assert_int_equal(pos->n_dims, 2);
    assert_int_equal(pos->shape[0], 1);
    assert_int_equal(pos->shape[1], 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(((const int64_t *)pos->data)[i], i);
    safetensors_close(want);
    safetensors_close(bin);
}

static void test_mixed_as_torch_saved(void **state) {
    (void)state;
    check_mixed("mixed.bin");
}

static void test_mixed_protocol_4(void **state) {
    (void)state;
    check_mixed("mixed-proto4.bin");
}

static void test_mixed_deflated(void **state) {
    (void)state;
    check_mixed("mixed-deflated.bin");
}

/* A real model's checkpoint: the same tensors as its safetensors, and the
 * BERT binder takes the handle unchanged. */
static void test_bert_checkpoint(void **state) {
    (void)state;
    safetensors *bin = open_ok(FIXTURES "/bert-f32.bin");
    safetensors *want = open_ok(MODELS "/bert-f32/model.safetensors");
    expect_same_tensors(bin, want);
    assert_int_equal(safetensors_count(bin), safetensors_count(want));

    model_config cfg;
    engine_error err = {0};
    assert_int_equal(model_config_load(MODELS "/bert-f32", &cfg, &err), 0);
    bert_weights w;
    memset(&w, 0, sizeof w);
    int rc = bert_weights_bind(&w, &cfg, bin, &err);
    if (rc)
        print_error("%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(w.dtype_mask, 1 << ST_F32);
    bert_weights_fini(&w);
    model_config_fini(&cfg);
    safetensors_close(want);
    safetensors_close(bin);
}

/* checkpoint_open: model.safetensors wins; pytorch_model.bin otherwise. */
static void test_checkpoint_choice(void **state) {
    (void)state;
    char dir[] = "/tmp/aiserve-torchbin-XXXXXX", path[512], cmd[1024];
    assert_non_null(mkdtemp(dir));
    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(checkpoint_open(dir, &st, &err), ENGINE_EIO);
    assert_non_null(strstr(err.message, "model.safetensors: missing, and no pytorch_model.bin"));

    snprintf(cmd, sizeof cmd, "cp '%s/bert-f32.bin' '%s/pytorch_model.bin'", FIXTURES, dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(checkpoint_open(dir, &st, &err), 0);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    assert_string_equal(safetensors_path(st), path);
    assert_non_null(safetensors_find(st, "bert.embeddings.word_embeddings.weight"));
    safetensors_close(st);

    /* Both: the safetensors file is read and the .bin is not even opened. */
    snprintf(cmd, sizeof cmd, "cp '%s/bert-f32/model.safetensors' '%s/' && echo broken > '%s'",
             MODELS, dir, path);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(checkpoint_open(dir, &st, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_string_equal(safetensors_path(st), path);
    safetensors_close(st);

    /* Only the broken .bin: its error names it. */
    unlink(path);
    assert_int_equal(checkpoint_open(dir, &st, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "pytorch_model.bin: not a zip archive"));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The hand-built state dict the hostile cases below alter, read correctly. */
static void test_built_state_dict(void **state) {
    (void)state;
    tensor_spec two[] = {w34, {"tail", "FloatStorage", "0", 12, 8, 1, {4}, {1}}};
    pkl p = state_dict(two, 2);
    size_t len;
    uint8_t *zip = archive_of(p.b, p.n, &len);
    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(torchbin_parse(zip, len, "test.bin", &st, &err), 0);
    free(zip);
    const safetensors_tensor *w = find(st, "w"), *tail = find(st, "tail");
    assert_int_equal(w->n_bytes, 48);
    assert_memory_equal(w->data, storage0, 48);
    assert_memory_equal(tail->data, storage0 + 32, 16);
    safetensors_close(st);
}

/* ---- hostile pickles ---------------------------------------------------------- */

static void test_refuses_code(void **state) {
    (void)state;
    static const char os_system[] = "\x80\x02" "cos\nsystem\n" "X\x02\x00\x00\x00ls" "\x85R.";
    expect_pickle_error(os_system, sizeof os_system - 1, "refusing to unpickle global 'os system'");
    static const char eval[] = "\x80\x04\x8c\x08" "builtins" "\x8c\x04" "eval" "\x93.";
    expect_pickle_error(eval, sizeof eval - 1, "refusing to unpickle global 'builtins eval'");
    /* a near miss of an accepted name */
    static const char near[] = "\x80\x02" "ctorch._utils\n_rebuild_tensor\n.";
    expect_pickle_error(near, sizeof near - 1, "global 'torch._utils _rebuild_tensor'");
    static const char inst[] = "\x80\x02(" "ios\nsystem\n" ".";
    expect_pickle_error(inst, sizeof inst - 1, "refusing pickle opcode INST");
    static const char obj[] = "\x80\x02(N" "o.";
    expect_pickle_error(obj, sizeof obj - 1, "refusing pickle opcode OBJ");
    static const char newobj[] = "\x80\x02N)\x81.";
    expect_pickle_error(newobj, sizeof newobj - 1, "refusing pickle opcode NEWOBJ");
    static const char unknown[] = "\x80\x02\xff.";
    expect_pickle_error(unknown, sizeof unknown - 1, "unknown pickle opcode 0xff");
    /* an accepted global called with something else than torch's arguments */
    static const char storage_call[] = "\x80\x02" "ctorch\nFloatStorage\n" ")R.";
    expect_pickle_error(storage_call, sizeof storage_call - 1, "refusing to call torch.FloatStorage");
    static const char persid[] = "\x80\x02X\x01\x00\x00\x00xQ.";
    expect_pickle_error(persid, sizeof persid - 1, "persistent id is not ('storage'");
}

static void test_bounded_nesting_and_memory(void **state) {
    (void)state;
    static uint8_t deep[1000];
    memcpy(deep, "\x80\x02", 2);
    memset(deep + 2, '(', sizeof deep - 2);
    expect_pickle_error(deep, sizeof deep, "MARKs nest deeper than 32");
    memcpy(deep, "\x80\x02N", 3); /* ((((None,),),),...) */
    memset(deep + 3, 0x85, sizeof deep - 4);
    deep[sizeof deep - 1] = '.';
    expect_pickle_error(deep, sizeof deep, "values nest deeper than 32");

    static const char huge_str[] = "\x80\x02X\xff\xff\xff\xff" "ab";
    expect_pickle_error(huge_str, sizeof huge_str - 1, "BINUNICODE of 4294967295 bytes runs past the end");
    static const char huge_long[] = "\x80\x02\x8a\x7f" "abc";
    expect_pickle_error(huge_long, sizeof huge_long - 1, "LONG1 of 127 bytes");
    static const char short_int[] = "\x80\x02J\x01";
    expect_pickle_error(short_int, sizeof short_int - 1, "BININT runs past the end");
    static const char no_stop[] = "\x80\x02N";
    expect_pickle_error(no_stop, sizeof no_stop - 1, "ends without STOP");
    static const char memo_gap[] = "\x80\x02Nr\x00\x00\x00\x10.";
    expect_pickle_error(memo_gap, sizeof memo_gap - 1, "memo index 268435456 out of order");
    static const char memo_get[] = "\x80\x02h\x05.";
    expect_pickle_error(memo_get, sizeof memo_get - 1, "memo index 5 was never stored");
    static const char underflow[] = "\x80\x02(N\x86.";
    expect_pickle_error(underflow, sizeof underflow - 1, "TUPLE2 needs 2 value(s)");

    /* 8 million empty lists: each costs the unpickler memory, so the budget
     * stops it long before the machine runs out. */
    size_t n = 8u << 20;
    uint8_t *lists = malloc(n);
    memset(lists, ']', n);
    memcpy(lists, "\x80\x02", 2);
    expect_pickle_error(lists, n, "needs more than 256 MiB");
    free(lists);
}

static void test_not_a_state_dict(void **state) {
    (void)state;
    static const char none[] = "\x80\x02N.";
    expect_pickle_error(none, sizeof none - 1, "data.pkl holds type None, not a state dict");
    static const char not_tensor[] = "\x80\x02}X\x01\x00\x00\x00" "aK\x01s.";
    expect_pickle_error(not_tensor, sizeof not_tensor - 1, "'a' has type int, not tensor");
    tensor_spec dup[] = {w34, w34};
    expect_dict_error(dup, 2, "tensor 'w' appears twice");
    tensor_spec clash[] = {w34, {"v", "HalfStorage", "0", 24, 0, 1, {24}, {1}}};
    expect_dict_error(clash, 2, "storage 'data/0' is declared twice with different types or sizes");
    tensor_spec bad_key = w34;
    bad_key.key = "../0";
    expect_dict_error(&bad_key, 1, "storage key '../0' is not letters, digits or '_'");
}

static void test_storage_problems(void **state) {
    (void)state;
    tensor_spec t = w34;
    t.key = "7";
    expect_dict_error(&t, 1, "tensor 'w': its storage 'archive/data/7' is missing");
    t = w34;
    t.numel = 13; /* 52 bytes declared, 48 stored */
    expect_dict_error(&t, 1, "entry 'archive/data/0': has 48 bytes, but data.pkl says it holds 13 F32");
    t = w34;
    t.shape[0] = 4; /* 16 elements from a 12-element storage */
    t.stride[0] = 4;
    expect_dict_error(&t, 1, "tensor 'w': elements 0 to 16 lie past the end of its storage");
    t = w34;
    t.offset = 1; /* one element too far */
    expect_dict_error(&t, 1, "elements 1 to 13 lie past the end");
    t = w34;
    t.stride[0] = 1;
    t.stride[1] = 3; /* a transposed view */
    expect_dict_error(&t, 1, "tensor 'w' is not contiguous");
    t = w34;
    t.type = "ComplexFloatStorage";
    expect_dict_error(&t, 1, "refusing to unpickle global 'torch ComplexFloatStorage'");

    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(torchbin_open(FIXTURES "/noncontig.bin", &st, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "noncontig.bin: tensor 't' is not contiguous"));
}

/* ---- hostile archives ---------------------------------------------------------- */

static void test_every_truncation_is_an_error(void **state) {
    (void)state;
    size_t len;
    uint8_t *bytes = read_file(FIXTURES "/mixed.bin", &len);
    engine_error err = {0};
    assert_int_equal(parse_exact(bytes, len, &err), 0);
    for (size_t n = 0; n < len; n++) {
        int rc = parse_exact(bytes, n, &err);
        if (rc != ENGINE_EFORMAT)
            print_error("truncated to %zu: rc %d\n", n, rc);
        assert_int_equal(rc, ENGINE_EFORMAT);
        assert_non_null(strstr(err.message, "test.bin"));
    }
    free(bytes);
}

/* Any one byte of a real checkpoint changed: read or refused, never more. */
static void test_every_byte_flip_is_safe(void **state) {
    (void)state;
    size_t len;
    uint8_t *bytes = read_file(FIXTURES "/mixed.bin", &len);
    int n_read = 0;
    for (size_t i = 0; i < len; i++) {
        engine_error err = {0};
        bytes[i] ^= 0xff;
        int rc = parse_exact(bytes, len, &err);
        bytes[i] ^= 0xff;
        if (rc != 0 && rc != ENGINE_EFORMAT)
            print_error("byte %zu flipped: rc %d %s\n", i, rc, err.message);
        assert_true(rc == 0 || rc == ENGINE_EFORMAT);
        n_read += rc == 0;
    }
    assert_true(n_read < (int)len / 4); /* most bytes matter: CRCs, headers, the pickle */
    free(bytes);
}

static void test_archive_problems(void **state) {
    (void)state;
    safetensors *st = NULL;
    engine_error err = {0};
    assert_int_equal(torchbin_open(FIXTURES "/legacy.bin", &st, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "legacy.bin: not a zip archive; torch.save files from before torch 1.6"));
    assert_int_equal(torchbin_open(FIXTURES "/missing.bin", &st, &err), ENGINE_EIO);
    /* data/0's bytes are data/1's entry: reading both would read more than
     * the file holds (the non-recursive zip bomb's trick). */
    assert_int_equal(torchbin_open(FIXTURES "/overlap.bin", &st, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "overlap.bin: entry 'archive/data/1': entries overlap"));

    pkl p = state_dict(&w34, 1);
    struct {
        zip_image_entry e[4];
        size_t n;
        const char *needle;
    } cases[] = {
        {{{"archive/data.pkl", p.b, p.n, 0}, {"archive/data/0", storage0, 48, 0}, {"archive/byteorder", "big", 3, 0}},
         3, "byteorder is 'big'; only little-endian"},
        {{{"archive/data.pkl", p.b, p.n, 0}, {"archive/data/0", storage0, 48, 0}, {"/etc/passwd", "x", 1, 0}},
         3, "entry '/etc/passwd': has an absolute or '..' path"},
        {{{"archive/data.pkl", p.b, p.n, 0}, {"archive/../data/0", storage0, 48, 0}},
         2, "entry 'archive/../data/0': has an absolute or '..' path"},
        {{{"archive/data.pkl", p.b, p.n, 0}, {"other/data.pkl", p.b, p.n, 0}}, 2, "more than one <name>/data.pkl"},
        {{{"archive/data/0", storage0, 48, 0}}, 1, "without <name>/data.pkl"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        uint8_t *zip = zip_image(cases[i].e, cases[i].n, &len);
        assert_non_null(zip);
        expect_image_error(zip, len, cases[i].needle);
        free(zip);
    }
    /* The same archive with "little" is read. */
    zip_image_entry little[] = {{"archive/data.pkl", p.b, p.n, 0},
                                {"archive/data/0", storage0, 48, 0},
                                {"archive/byteorder", "little", 6, 0}};
    size_t len;
    uint8_t *zip = zip_image(little, 3, &len);
    assert_int_equal(parse_exact(zip, len, &err), 0);
    free(zip);
}

/* A corrupted storage byte fails libzip's CRC check. */
static void test_corrupt_storage(void **state) {
    (void)state;
    size_t len;
    pkl p = state_dict(&w34, 1);
    uint8_t *zip = archive_of(p.b, p.n, &len);
    uint8_t *at = memmem(zip, len, storage0, sizeof storage0);
    assert_non_null(at);
    at[5] ^= 1;
    expect_image_error(zip, len, "entry 'archive/data/0': CRC error");
    free(zip);
}

/* A deflated entry far larger than the file is a zip bomb; a storage
 * whose compressed bytes are honest deflate is read. */
static void test_zip_bomb(void **state) {
    (void)state;
    size_t big = 8u << 20;
    uint8_t *zeros = calloc(1, big);
    tensor_spec t = {"z", "FloatStorage", "0", (int)(big / 4), 0, 1, {(int)(big / 4)}, {1}};
    pkl p = state_dict(&t, 1);
    zip_image_entry e[] = {{"archive/data.pkl", p.b, p.n, 0}, {"archive/data/0", zeros, big, 1}};
    size_t len;
    uint8_t *zip = zip_image(e, 2, &len);
    assert_true(len < big / 64);
    expect_image_error(zip, len, "entry 'archive/data/0': inflates to 8388608 bytes");
    free(zip);

    e[1].len = 4096; /* within the bound: read */
    t.numel = t.shape[0] = 1024;
    p = state_dict(&t, 1);
    e[0].len = p.n;
    zip = zip_image(e, 2, &len);
    engine_error err = {0};
    assert_int_equal(parse_exact(zip, len, &err), 0);
    free(zip);
    free(zeros);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_as_torch_saved),
        cmocka_unit_test(test_mixed_protocol_4),
        cmocka_unit_test(test_mixed_deflated),
        cmocka_unit_test(test_bert_checkpoint),
        cmocka_unit_test(test_checkpoint_choice),
        cmocka_unit_test(test_built_state_dict),
        cmocka_unit_test(test_refuses_code),
        cmocka_unit_test(test_bounded_nesting_and_memory),
        cmocka_unit_test(test_not_a_state_dict),
        cmocka_unit_test(test_storage_problems),
        cmocka_unit_test(test_every_truncation_is_an_error),
        cmocka_unit_test(test_every_byte_flip_is_safe),
        cmocka_unit_test(test_archive_problems),
        cmocka_unit_test(test_corrupt_storage),
        cmocka_unit_test(test_zip_bomb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
