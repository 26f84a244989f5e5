/*
 * test_wordpiece.c - the WordPiece tokenizer gives exactly the ids of
 * Hugging Face's Rust tokenizer, and rejects bad input and bad files.
 *
 * Goldens (tests/fixtures/tokenizer/, made by tools/make_tokenizer_goldens.js
 * from the real Rust tokenizer) are compared id for id; a failure prints the
 * corpus index, the string and the first differing position. The big BERT
 * vocabularies are read from the shared data folder beside the repository
 * (AISERVE_SOURCE_DIR/../shared/data), as CI lays it out.
 *
 * wordpiece_is_blank is checked against encoding itself for every code
 * point, under four tokenizer configurations.
 *
 * Every input is passed with its exact length in its own heap copy, so
 * ASan catches a read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "wordpiece.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/tokenizer/"
#define UNCASED_VOCAB AISERVE_SOURCE_DIR "/../shared/data/bert-base-uncased-vocab.txt"
#define CASED_VOCAB AISERVE_SOURCE_DIR "/../shared/data/bert-base-cased-vocab.txt"

static wordpiece *load_vocab(const char *path, int lower) {
    wordpiece_options o;
    wordpiece_options_init(&o);
    o.do_lower_case = lower;
    wordpiece *wp = NULL;
    engine_error err = {0};
    int rc = wordpiece_load_vocab(path, &o, &wp, &err);
    if (rc)
        fail_msg("%s", err.message);
    return wp;
}

static json_t *load_json(const char *path) {
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!j)
        fail_msg("%s:%d: %s", path, jerr.line, jerr.text);
    return j;
}

/* Encodes an exact-length heap copy of s; returns the status. */
static int encode(const wordpiece *wp, const char *s, size_t len, size_t max_length, int32_t *ids,
                  size_t cap, size_t *n, engine_error *err) {
    char *copy = malloc(len ? len : 1);
    memcpy(copy, s, len);
    int rc = wordpiece_encode(wp, copy, len, max_length, ids, cap, n, err);
    free(copy);
    return rc;
}

static void print_escaped(const char *s, size_t len) {
    for (size_t i = 0; i < len && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 32 || c == 127)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    if (len > 200)
        fprintf(stderr, "...(%zu bytes)", len);
}

/* Compares one golden; prints what differs. Returns 1 if equal. */
static int check_one(const wordpiece *wp, size_t index, json_t *text, json_t *expected,
                     size_t max_length) {
    const char *s = json_string_value(text);
    size_t len = json_string_length(text);
    size_t n_exp = json_array_size(expected);
    int32_t ids[1024];
    size_t n = 0;
    engine_error err = {0};
    int rc = encode(wp, s, len, max_length, ids, 1024, &n, &err);
    size_t pos = 0;
    while (rc == 0 && pos < n && pos < n_exp && ids[pos] == json_integer_value(json_array_get(expected, pos)))
        pos++;
    if (rc == 0 && n == n_exp && pos == n)
        return 1;
    fprintf(stderr, "MISMATCH corpus[%zu] max_length %zu: \"", index, max_length);
    print_escaped(s, len);
    fprintf(stderr, "\"\n  status %d (%s), %zu ids, expected %zu; first difference at %zu:", rc,
            err.message, n, n_exp, pos);
    for (size_t i = pos; i < pos + 6; i++) {
        long long e = i < n_exp ? (long long)json_integer_value(json_array_get(expected, i)) : -1;
        long long g = i < n ? (long long)ids[i] : -1;
        fprintf(stderr, " [%zu] want %lld %s got %lld %s;", i, e,
                e >= 0 ? wordpiece_token(wp, (int32_t)e) : "-", g, g >= 0 ? wordpiece_token(wp, (int32_t)g) : "-");
    }
    fputc('\n', stderr);
    return 0;
}

static void check_goldens(const char *vocab, int lower, const char *expected_file) {
    wordpiece *wp = load_vocab(vocab, lower);
    json_t *corpus = load_json(FIXTURES "corpus.json");
    json_t *exp = load_json(expected_file);
    json_t *ids = json_object_get(exp, "ids");
    assert_int_equal(json_array_size(ids), json_array_size(corpus));
    assert_true(json_array_size(corpus) >= 300);
    size_t max_length = (size_t)json_integer_value(json_object_get(exp, "max_length"));
    size_t bad = 0, total = 0;
    for (size_t i = 0; i < json_array_size(corpus); i++, total++)
        bad += !check_one(wp, i, json_array_get(corpus, i), json_array_get(ids, i), max_length);
    json_t *shorts = json_object_get(exp, "short");
    size_t short_len = (size_t)json_integer_value(json_object_get(shorts, "max_length"));
    json_t *cases = json_object_get(shorts, "cases");
    for (size_t k = 0; k < json_array_size(cases); k++, total++) {
        json_t *c = json_array_get(cases, k);
        size_t i = (size_t)json_integer_value(json_array_get(c, 0));
        bad += !check_one(wp, i, json_array_get(corpus, i), json_array_get(c, 1), short_len);
    }
    printf("%s: %zu/%zu goldens equal\n", expected_file + strlen(FIXTURES), total - bad, total);
    json_decref(corpus);
    json_decref(exp);
    wordpiece_destroy(wp);
    assert_int_equal(bad, 0);
}

static void test_goldens_uncased(void **state) {
    (void)state;
    check_goldens(UNCASED_VOCAB, 1, FIXTURES "expected_uncased.json");
}

static void test_goldens_cased(void **state) {
    (void)state;
    check_goldens(CASED_VOCAB, 0, FIXTURES "expected_cased.json");
}

/* The small tokenizer.json files, loaded with wordpiece_load_json. */
static void test_goldens_small_json(void **state) {
    (void)state;
    json_t *all = load_json(FIXTURES "expected_small.json");
    size_t bad = 0;
    for (size_t k = 0; k < json_array_size(all); k++) {
        json_t *g = json_array_get(all, k);
        char path[1024];
        snprintf(path, sizeof path, FIXTURES "%s", json_string_value(json_object_get(g, "file")));
        wordpiece *wp = NULL;
        engine_error err = {0};
        if (wordpiece_load_json(path, NULL, &wp, &err))
            fail_msg("%s", err.message);
        json_t *texts = json_object_get(g, "texts");
        json_t *short_ = json_object_get(g, "short");
        for (size_t i = 0; i < json_array_size(texts); i++) {
            bad += !check_one(wp, i, json_array_get(texts, i), json_array_get(json_object_get(g, "ids"), i),
                              (size_t)json_integer_value(json_object_get(g, "max_length")));
            bad += !check_one(wp, i, json_array_get(texts, i), json_array_get(json_object_get(short_, "ids"), i),
                              (size_t)json_integer_value(json_object_get(short_, "max_length")));
        }
        wordpiece_destroy(wp);
    }
    json_decref(all);
    assert_int_equal(bad, 0);
}

static void test_accessors(void **state) {
    (void)state;
    wordpiece_options o;
    wordpiece_options_init(&o);
    assert_int_equal(o.do_lower_case, 1);
    assert_int_equal(o.strip_accents, -1);
    assert_int_equal(o.tokenize_chinese_chars, 1);
    assert_int_equal(o.clean_text, 1);
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    assert_int_equal(wordpiece_vocab_size(wp), 30522);
    assert_int_equal(wordpiece_cls_id(wp), 101);
    assert_int_equal(wordpiece_sep_id(wp), 102);
    assert_int_equal(wordpiece_unk_id(wp), 100);
    assert_int_equal(wordpiece_pad_id(wp), 0);
    assert_int_equal(wordpiece_does_lower_case(wp), 1);
    assert_string_equal(wordpiece_token(wp, 1996), "the");
    assert_int_equal(wordpiece_lookup(wp, "the", 3), 1996);
    assert_int_equal(wordpiece_lookup(wp, "thex", 3), 1996);
    assert_int_equal(wordpiece_lookup(wp, "##s", 3), 2015);
    assert_int_equal(wordpiece_lookup(wp, "no-such-token", 13), -1);
    assert_null(wordpiece_token(wp, -1));
    assert_null(wordpiece_token(wp, 30522));
    wordpiece_destroy(wp);
    wp = load_vocab(CASED_VOCAB, 0);
    assert_int_equal(wordpiece_vocab_size(wp), 28996);
    assert_int_equal(wordpiece_does_lower_case(wp), 0);
    wordpiece_destroy(wp);
}

static void test_truncation(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    const char *s = "the quick brown fox jumps over the lazy dog";
    int32_t ids[64];
    size_t n;
    engine_error err = {0};
    assert_int_equal(encode(wp, s, strlen(s), 512, ids, 64, &n, &err), 0);
    assert_int_equal(n, 11);
    int32_t full[11];
    memcpy(full, ids, sizeof full);
    for (size_t max = 2; max <= 12; max++) {
        assert_int_equal(encode(wp, s, strlen(s), max, ids, 64, &n, &err), 0);
        size_t want = max < 11 ? max : 11;
        assert_int_equal(n, want);
        assert_int_equal(ids[0], 101);
        assert_int_equal(ids[n - 1], 102);
        for (size_t i = 1; i + 1 < n; i++)
            assert_int_equal(ids[i], full[i]);
    }
    /* A word cut by the limit still comes out as its first pieces. */
    const char *w = "unaffable";
    assert_int_equal(encode(wp, w, strlen(w), 512, ids, 64, &n, &err), 0);
    assert_true(n > 4);
    int32_t second = ids[2];
    assert_int_equal(encode(wp, w, strlen(w), 4, ids, 64, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ids[2], second);
    /* max_length below 2 has no room for [CLS] and [SEP]. */
    assert_int_equal(encode(wp, s, strlen(s), 1, ids, 64, &n, &err), ENGINE_EARG);
    assert_int_equal(encode(wp, s, strlen(s), 0, ids, 64, &n, &err), ENGINE_EARG);
    /* Empty text. */
    assert_int_equal(encode(wp, "", 0, 512, ids, 64, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(wordpiece_encode(wp, NULL, 0, 512, ids, 64, &n, &err), 0);
    assert_int_equal(n, 2);
    wordpiece_destroy(wp);
}

static void test_cap_too_small(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    const char *s = "hello world, again";
    int32_t ids[16];
    size_t n = 0;
    engine_error err = {0};
    assert_int_equal(encode(wp, s, strlen(s), 512, ids, 16, &n, &err), 0);
    size_t need = n;
    assert_int_equal(need, 6);
    for (size_t cap = 0; cap < need; cap++) {
        n = 0;
        err.status = 0;
        int rc = encode(wp, s, strlen(s), 512, cap ? ids : NULL, cap, &n, &err);
        assert_int_equal(rc, ENGINE_EARG);
        assert_int_equal(err.status, ENGINE_EARG);
        assert_int_equal(n, need); /* tells the caller how much to allocate */
    }
    /* The limit bounds what is needed. */
    assert_int_equal(encode(wp, s, strlen(s), 3, ids, 3, &n, &err), 0);
    assert_int_equal(n, 3);
    wordpiece_destroy(wp);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        {"\xC0\x80", 2},          {"\xC1\xBF", 2},         {"\xE0\x80\x80", 3},     {"\xE0\x9F\xBF", 3},
        {"\xF0\x80\x80\x80", 4},  {"\xF0\x8F\xBF\xBF", 4}, {"\xED\xA0\x80", 3},     {"\xED\xBF\xBF", 3},
        {"\xF4\x90\x80\x80", 4},  {"\xF5\x80\x80\x80", 4}, {"\xF7\xBF\xBF\xBF", 4}, {"\xF8\x88\x80\x80\x80", 5},
        {"\xFE", 1},              {"\xFF", 1},             {"\x80", 1},             {"\xBF", 1},
        {"\xC3", 1},              {"\xE2\x82", 2},         {"\xF0\x9F\x98", 3},     {"abc\xC3", 4},
        {"a\xC3(b", 4},           {"\xE2\x28\xA1", 3},     {"\xC3\xA9\xA9", 3},     {"longer ascii text then \xE9", 24},
        {"ok\0\xFF", 4},
    };
    int32_t ids[64];
    size_t n;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        engine_error err = {0};
        int rc = encode(wp, bad[i].s, bad[i].len, 512, ids, 64, &n, &err);
        if (rc != ENGINE_EINPUT)
            fail_msg("case %zu: status %d, want ENGINE_EINPUT", i, rc);
        assert_non_null(strstr(err.message, "UTF-8"));
        assert_int_equal(n, 0);
    }
    /* Edges that are valid: U+10FFFF, U+FFFD, U+D7FF, U+E000, NUL bytes. */
    static const struct {
        const char *s;
        size_t len;
    } good[] = {{"\xF4\x8F\xBF\xBF", 4}, {"\xEF\xBF\xBD", 3}, {"\xED\x9F\xBF", 3}, {"\xEE\x80\x80", 3},
                {"a\0b", 3},             {"\0\0\0", 3},       {"\xC2\x80", 2}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        engine_error err = {0};
        if (encode(wp, good[i].s, good[i].len, 512, ids, 64, &n, &err) != 0)
            fail_msg("good case %zu: %s", i, err.message);
    }
    /* NUL is cleaned away, not a terminator: "a\0b" is the word "ab". */
    int32_t ab[8];
    size_t n_ab;
    engine_error err = {0};
    assert_int_equal(encode(wp, "ab", 2, 512, ab, 8, &n_ab, &err), 0);
    assert_int_equal(encode(wp, "a\0b", 3, 512, ids, 64, &n, &err), 0);
    assert_int_equal(n, n_ab);
    assert_memory_equal(ids, ab, n * sizeof ids[0]);
    wordpiece_destroy(wp);
}

/* Writes bytes to a fresh temporary file; returns its path (free it). */
static char *temp_file(const char *bytes, size_t len) {
    char *path = strdup("/tmp/test_wordpiece_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    close(fd);
    return path;
}

static int load_vocab_bytes(const char *bytes, size_t len, wordpiece **wp, engine_error *err) {
    char *path = temp_file(bytes, len);
    int rc = wordpiece_load_vocab(path, NULL, wp, err);
    unlink(path);
    free(path);
    return rc;
}

static int load_json_text(const char *text, wordpiece **wp, engine_error *err) {
    char *path = temp_file(text, strlen(text));
    int rc = wordpiece_load_json(path, NULL, wp, err);
    if (rc)
        assert_non_null(strstr(err->message, path)); /* errors name the file */
    unlink(path);
    free(path);
    return rc;
}

static void test_vocab_load(void **state) {
    (void)state;
    wordpiece *wp = NULL;
    engine_error err = {0};
    assert_int_equal(wordpiece_load_vocab("/nonexistent/vocab.txt", NULL, &wp, &err), ENGINE_EIO);
    assert_non_null(strstr(err.message, "/nonexistent/vocab.txt"));
    assert_null(wp);

    assert_int_equal(load_vocab_bytes("", 0, &wp, &err), ENGINE_EFORMAT);
    const char empty_line[] = "[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n";
    assert_int_equal(load_vocab_bytes(empty_line, sizeof empty_line - 1, &wp, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, ":3:"));
    const char trailing_blank[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n\n\r\n";
    assert_int_equal(load_vocab_bytes(trailing_blank, sizeof trailing_blank - 1, &wp, &err), 0);
    assert_int_equal(wordpiece_vocab_size(wp), 4);
    wordpiece_destroy(wp);
    wp = NULL;
    const char no_unk[] = "[PAD]\n[CLS]\n[SEP]\nhello\n";
    assert_int_equal(load_vocab_bytes(no_unk, sizeof no_unk - 1, &wp, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "[UNK]"));
    const char no_sep[] = "[UNK]\n[CLS]\nhello\n";
    assert_int_equal(load_vocab_bytes(no_sep, sizeof no_sep - 1, &wp, &err), ENGINE_EFORMAT);
    const char bad_utf8[] = "[UNK]\n[CLS]\n[SEP]\nab\xFF\n";
    assert_int_equal(load_vocab_bytes(bad_utf8, sizeof bad_utf8 - 1, &wp, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, ":4:"));
    assert_null(wp);

    /* CRLF lines, no final newline, a duplicate: the later id wins (as a
     * dict filled line by line in HF does); [PAD] is optional. */
    const char crlf[] = "[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\nworld\r\n##s\r\nhello";
    assert_int_equal(load_vocab_bytes(crlf, sizeof crlf - 1, &wp, &err), 0);
    assert_int_equal(wordpiece_vocab_size(wp), 7);
    assert_int_equal(wordpiece_pad_id(wp), -1);
    assert_int_equal(wordpiece_lookup(wp, "hello", 5), 6);
    assert_string_equal(wordpiece_token(wp, 4), "world");
    int32_t ids[16];
    size_t n;
    assert_int_equal(encode(wp, "Hello worlds!", 13, 512, ids, 16, &n, &err), 0);
    const int32_t want[] = {1, 6, 4, 5, 0, 2};
    assert_int_equal(n, 6);
    assert_memory_equal(ids, want, sizeof want);
    wordpiece_destroy(wp);
}

static void test_json_load(void **state) {
    (void)state;
    wordpiece *wp = NULL;
    engine_error err = {0};
    assert_int_equal(wordpiece_load_json("/nonexistent/tokenizer.json", NULL, &wp, &err), ENGINE_EIO);
    assert_int_equal(load_json_text("{not json", &wp, &err), ENGINE_EFORMAT);
    assert_int_equal(load_json_text("{\"version\": \"1.0\"}", &wp, &err), ENGINE_EFORMAT);
    assert_int_equal(load_json_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}", &wp, &err),
                     ENGINE_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "BPE"));
    assert_int_equal(load_json_text("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", &wp, &err),
                     ENGINE_EUNSUPPORTED);
    const char *vocab = "\"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2, \"a\": 3, \"##b\": 4}";
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"model\": {\"type\": \"WordPiece\", %s}, \"normalizer\": {\"type\": \"NFC\"}}", vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), ENGINE_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "NFC"));
    snprintf(buf, sizeof buf, "{\"model\": {\"type\": \"WordPiece\", %s}, \"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
             vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), ENGINE_EUNSUPPORTED);
    snprintf(buf, sizeof buf, "{\"model\": {\"type\": \"WordPiece\", %s, \"unk_token\": \"<unk>\"}}", vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "<unk>"));
    assert_int_equal(load_json_text("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": -1}}}", &wp, &err),
                     ENGINE_EFORMAT);
    assert_int_equal(load_json_text("{\"model\": {\"type\": \"WordPiece\", \"vocab\": [1]}}", &wp, &err),
                     ENGINE_EFORMAT);
    snprintf(buf, sizeof buf,
             "{\"model\": {\"type\": \"WordPiece\", %s}, \"added_tokens\": [{\"id\": 5, \"content\": \"x\", "
             "\"single_word\": true}]}",
             vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), ENGINE_EUNSUPPORTED);
    snprintf(buf, sizeof buf, "{\"model\": {\"type\": \"WordPiece\", %s}, \"post_processor\": {\"type\": \"ByteLevel\"}}",
             vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), ENGINE_EUNSUPPORTED);
    assert_null(wp);

    /* Minimal file: defaults fill the rest (lowercase, "##", [CLS]/[SEP]
     * from the vocabulary). An old file without model.type still loads. */
    snprintf(buf, sizeof buf, "{\"model\": {%s, \"continuing_subword_prefix\": \"##\"}}", vocab);
    assert_int_equal(load_json_text(buf, &wp, &err), 0);
    int32_t ids[16];
    size_t n;
    assert_int_equal(encode(wp, "AB ab c", 7, 512, ids, 16, &n, &err), 0);
    const int32_t want[] = {1, 3, 4, 3, 4, 0, 2};
    assert_int_equal(n, 7);
    assert_memory_equal(ids, want, sizeof want);
    wordpiece_destroy(wp);
}

/* wordpiece_is_blank on an exact-length heap copy of s. */
static int is_blank(const wordpiece *wp, const char *s, size_t len) {
    char *copy = malloc(len ? len : 1);
    memcpy(copy, s, len);
    int blank = wordpiece_is_blank(wp, copy, len);
    free(copy);
    return blank;
}

static size_t put_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Is one code point alone blank? */
static int cp_blank(const wordpiece *wp, uint32_t cp) {
    char buf[4];
    return is_blank(wp, buf, put_utf8(cp, buf));
}

/* Number of ids encoding s gives, [CLS] and [SEP] included. */
static size_t n_ids(const wordpiece *wp, const char *s, size_t len) {
    int32_t ids[16];
    size_t n = 0;
    engine_error err = {0};
    int rc = encode(wp, s, len, 512, ids, 16, &n, &err);
    if (rc != 0 && rc != ENGINE_EARG)
        fail_msg("encode: %s", err.message);
    return n;
}

/* Every code point but the surrogates, alone: blank exactly when encoding
 * it gives [CLS] [SEP] alone. Then all the blank ones in one text (blank,
 * with long runs of combining marks where accents are stripped), and that
 * text with one letter at its start, in its middle or at its end (not). */
static void check_every_code_point(const wordpiece *wp, const char *name, int clean, int strip) {
    char *all = malloc(0x110000 * 4);
    assert_non_null(all);
    size_t all_len = 0, mid = 0, n_blank = 0, bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        char buf[4];
        size_t len = put_utf8(cp, buf);
        int blank = is_blank(wp, buf, len);
        size_t n = n_ids(wp, buf, len);
        if (blank != (n == 2) && bad++ < 10)
            fprintf(stderr, "%s: U+%04X: blank %d but %zu ids\n", name, (unsigned)cp, blank, n);
        if (blank) {
            memcpy(all + all_len, buf, len);
            all_len += len;
            n_blank++;
        }
        if (cp == 0x3000)
            mid = all_len;
    }
    printf("%s: %zu code points are blank\n", name, n_blank);
    assert_int_equal(bad, 0);

    /* The tokenizer's white space is blank whatever the options. */
    static const uint32_t white[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,
                                     0xA0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                                     0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028,
                                     0x2029, 0x202F, 0x205F, 0x3000};
    for (size_t i = 0; i < sizeof white / sizeof white[0]; i++)
        if (!cp_blank(wp, white[i]))
            fail_msg("%s: white space U+%04X is not blank", name, (unsigned)white[i]);
    /* clean_text drops controls, format and private-use characters. */
    static const uint32_t cleaned[] = {0x00,   0x07,   0x7F,   0xAD,   0x200B,
                                       0x200D, 0x2060, 0xFEFF, 0xFFFD, 0xE000};
    for (size_t i = 0; i < sizeof cleaned / sizeof cleaned[0]; i++)
        if (cp_blank(wp, cleaned[i]) != clean)
            fail_msg("%s: U+%04X blank %d, want %d", name, (unsigned)cleaned[i], !clean, clean);
    /* strip_accents drops nonspacing marks. */
    assert_int_equal(cp_blank(wp, 0x301), strip);
    assert_int_equal(cp_blank(wp, 0x5B4), strip);
    /* Letters, digits, punctuation, CJK and symbols are never blank. */
    static const uint32_t kept[] = {'a', 'Z', '0', '.', '[', 0xE9, 0x130, 0x4E00, 0x2603, 0x1F600};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        if (cp_blank(wp, kept[i]))
            fail_msg("%s: U+%04X is blank", name, (unsigned)kept[i]);

    assert_true(is_blank(wp, all, all_len));
    assert_int_equal(n_ids(wp, all, all_len), 2);
    char *with = malloc(all_len + 1);
    assert_non_null(with);
    size_t at[] = {0, mid, all_len};
    for (size_t k = 0; k < 3; k++) {
        memcpy(with, all, at[k]);
        with[at[k]] = 'x';
        memcpy(with + at[k] + 1, all + at[k], all_len - at[k]);
        if (is_blank(wp, with, all_len + 1))
            fail_msg("%s: a letter at byte %zu of the blank text is not seen", name, at[k]);
        assert_true(n_ids(wp, with, all_len + 1) > 2);
    }
    free(with);
    free(all);
}

static void test_blank_every_code_point(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    check_every_code_point(wp, "uncased vocab.txt", 1, 1);
    wordpiece_destroy(wp);
    wp = load_vocab(CASED_VOCAB, 0);
    check_every_code_point(wp, "cased vocab.txt", 1, 0);
    wordpiece_destroy(wp);
    /* lowercase, clean_text, raw added tokens */
    engine_error err = {0};
    if (wordpiece_load_json(FIXTURES "small_tokenizer.json", NULL, &wp, &err))
        fail_msg("%s", err.message);
    check_every_code_point(wp, "small_tokenizer.json", 1, 1);
    wordpiece_destroy(wp);
    /* no clean_text, strip_accents without lowercase, normalized added tokens */
    if (wordpiece_load_json(FIXTURES "small_tokenizer_options.json", NULL, &wp, &err))
        fail_msg("%s", err.message);
    check_every_code_point(wp, "small_tokenizer_options.json", 0, 1);
    wordpiece_destroy(wp);
}

/* Mixed blank characters, ASCII and Unicode; the edges of the function. */
static void test_blank_texts(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    static const char *const blank[] = {
        "",
        " \t\r\n",
        "\xE3\x80\x80",                                     /* U+3000 */
        "\xC2\xA0\xE2\x80\xA8\xE2\x80\x8B",                 /* U+00A0 U+2028 U+200B */
        " \xE3\x80\x80 \xC2\xA0 \xE2\x80\xA8 \xE2\x80\x8B ", /* with ASCII spaces */
        "\xEF\xBB\xBF\xE3\x80\x80\xCC\x81\xCC\x81\x0B\x0C",  /* U+FEFF, U+0301 twice, \v \f */
        "\xEF\xBF\xBD\xEE\x80\x80\xF3\xB0\x80\x80",          /* U+FFFD, private use */
    };
    for (size_t i = 0; i < sizeof blank / sizeof blank[0]; i++) {
        if (!is_blank(wp, blank[i], strlen(blank[i])))
            fail_msg("blank case %zu is not blank", i);
        assert_int_equal(n_ids(wp, blank[i], strlen(blank[i])), 2);
    }
    assert_true(is_blank(wp, "\0\0 \0", 4)); /* NUL is cleaned away */
    assert_true(wordpiece_is_blank(wp, NULL, 0));
    static const char *const not_blank[] = {
        "\xE3\x80\x80x",           /* one letter after U+3000 */
        "\xC2\xA0 \xE2\x80\xA8 .", /* punctuation is a token */
        "\xE2\x80\x8B\xE4\xB8\x80", /* CJK */
        "\xE3\x80\x80[CLS]",       /* a special token written in the text */
        "e\xCC\x81",               /* a mark on a letter */
    };
    for (size_t i = 0; i < sizeof not_blank / sizeof not_blank[0]; i++)
        if (is_blank(wp, not_blank[i], strlen(not_blank[i])))
            fail_msg("case %zu is blank", i);
    assert_false(is_blank(wp, "\0a", 2));
    /* Invalid UTF-8 is not blank (encoding reports it); never a crash. */
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {{"\xFF", 1},         {"  \xE3\x80", 4}, {"\xE3\x80\x80\xC0\x80", 5},
               {"\xED\xA0\x80", 3}, {"\x80 ", 2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(is_blank(wp, bad[i].s, bad[i].len));
    wordpiece_destroy(wp);
}

/* Encoding from several threads at once gives the single-thread answers. */
typedef struct thread_arg {
    const wordpiece *wp;
    json_t *corpus;
    json_t *ids;
    size_t bad;
} thread_arg;

static void *thread_main(void *p) {
    thread_arg *a = p;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < json_array_size(a->corpus); i++)
            a->bad += !check_one(a->wp, i, json_array_get(a->corpus, i), json_array_get(a->ids, i), 512);
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    wordpiece *wp = load_vocab(UNCASED_VOCAB, 1);
    json_t *corpus = load_json(FIXTURES "corpus.json");
    json_t *exp = load_json(FIXTURES "expected_uncased.json");
    pthread_t t[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thread_arg){wp, corpus, json_object_get(exp, "ids"), 0};
        assert_int_equal(pthread_create(&t[i], NULL, thread_main, &a[i]), 0);
    }
    size_t bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        bad += a[i].bad;
    }
    json_decref(corpus);
    json_decref(exp);
    wordpiece_destroy(wp);
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens_uncased), cmocka_unit_test(test_goldens_cased),
        cmocka_unit_test(test_goldens_small_json), cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_truncation),     cmocka_unit_test(test_cap_too_small),
        cmocka_unit_test(test_invalid_utf8),   cmocka_unit_test(test_vocab_load),
        cmocka_unit_test(test_json_load),      cmocka_unit_test(test_threads),
        cmocka_unit_test(test_blank_every_code_point), cmocka_unit_test(test_blank_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
