/*
 * test_tokenizers.c - byte-level BPE and Unigram (and WordPiece pairs)
 * through tokenizer.h give exactly the ids of Hugging Face's Rust tokenizers,
 * and bad tokenizer files fail to load with an error naming the file.
 *
 * Goldens (tests/fixtures/tokenizer/expected_*.json, made by
 * tools/make_bpe_unigram_goldens.js with the Rust library) name their texts:
 * "c12" is corpus.json[12], "x3" corpus_extra.json[3], "d5" and "t400" the
 * SST-2 dev and train sentences in the shared data folder beside the
 * repository. Each is encoded from an exact-length heap copy (so ASan sees
 * any read past the end) and compared id for id; a failure prints the
 * tokenizer, the text and the first differing position.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "tokenizer.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/tokenizer/"
#define SST2 AISERVE_SOURCE_DIR "/../shared/data/sst2/"

/* --- texts -------------------------------------------------------------------- */

typedef struct texts {
    char **s;
    size_t *len, n;
} texts;

static texts corpus, extra, dev, train;

static json_t *load_json(const char *path) {
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!j)
        fail_msg("%s:%d: %s", path, jerr.line, jerr.text);
    return j;
}

static void texts_add(texts *t, const char *s, size_t len) {
    t->s = realloc(t->s, (t->n + 1) * sizeof *t->s);
    t->len = realloc(t->len, (t->n + 1) * sizeof *t->len);
    t->s[t->n] = malloc(len + 1);
    memcpy(t->s[t->n], s, len);
    t->s[t->n][len] = '\0';
    t->len[t->n++] = len;
}

static void texts_json(texts *t, const char *path) {
    json_t *j = load_json(path);
    for (size_t i = 0; i < json_array_size(j); i++) {
        json_t *s = json_array_get(j, i);
        texts_add(t, json_string_value(s), json_string_length(s));
    }
    json_decref(j);
}

/* SST-2's sentences: the first column of every non-empty line after the
 * header, as the generator reads them. */
static void texts_tsv(texts *t, const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    bool header = true;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        if (header || n == 0) {
            header = false;
            continue;
        }
        char *tab = memchr(line, '\t', (size_t)n);
        texts_add(t, line, tab ? (size_t)(tab - line) : (size_t)n);
    }
    free(line);
    fclose(f);
}

static int setup_texts(void **state) {
    (void)state;
    texts_json(&corpus, FIXTURES "corpus.json");
    texts_json(&extra, FIXTURES "corpus_extra.json");
    texts_tsv(&dev, SST2 "dev.tsv");
    texts_tsv(&train, SST2 "train.tsv");
    return 0;
}

static void texts_free(texts *t) {
    for (size_t i = 0; i < t->n; i++)
        free(t->s[i]);
    free(t->s);
    free(t->len);
}

static int teardown_texts(void **state) {
    (void)state;
    texts_free(&corpus);
    texts_free(&extra);
    texts_free(&dev);
    texts_free(&train);
    return 0;
}

static void text_of(const char *ref, const char **s, size_t *len) {
    const texts *t = ref[0] == 'c' ? &corpus : ref[0] == 'x' ? &extra : ref[0] == 'd' ? &dev : &train;
    size_t i = strtoul(ref + 1, NULL, 10);
    if (i >= t->n)
        fail_msg("golden names text %s, which does not exist", ref);
    *s = t->s[i];
    *len = t->len[i];
}

/* --- comparing ------------------------------------------------------------------ */

static tokenizer *load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    tokenizer *t = NULL;
    engine_error err = {0};
    if (tokenizer_load_json(path, NULL, &t, &err))
        fail_msg("%s", err.message);
    return t;
}

static char *heap_copy(const char *s, size_t len) {
    char *c = malloc(len ? len : 1);
    memcpy(c, s, len);
    return c;
}

static void print_escaped(const char *s, size_t len) {
    for (size_t i = 0; i < len && i < 160; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 32 || c == 127)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    if (len > 160)
        fprintf(stderr, "...(%zu bytes)", len);
}

/* Encodes a case (one text or a pair) and compares; returns 1 if equal. */
static int check_case(const tokenizer *t, const char *name, json_t *c, bool pair, size_t max_length) {
    const char *a, *b = NULL;
    size_t al, bl = 0;
    text_of(json_string_value(json_array_get(c, 0)), &a, &al);
    if (pair)
        text_of(json_string_value(json_array_get(c, 1)), &b, &bl);
    json_t *want = json_array_get(c, pair ? 2 : 1);
    size_t n_want = json_array_size(want);
    int32_t ids[1100];
    size_t n = 0;
    engine_error err = {0};
    char *ca = heap_copy(a, al), *cb = pair ? heap_copy(b, bl) : NULL;
    int rc = pair ? tokenizer_encode_pair(t, ca, al, cb, bl, max_length, ids, 1100, &n, &err)
                  : tokenizer_encode(t, ca, al, max_length, ids, 1100, &n, &err);
    free(ca);
    free(cb);
    size_t pos = 0;
    while (rc == 0 && pos < n && pos < n_want && ids[pos] == json_integer_value(json_array_get(want, pos)))
        pos++;
    if (rc == 0 && n == n_want && pos == n)
        return 1;
    fprintf(stderr, "MISMATCH %s max_length %zu: \"", name, max_length);
    print_escaped(a, al);
    if (pair) {
        fprintf(stderr, "\" + \"");
        print_escaped(b, bl);
    }
    fprintf(stderr, "\" (%s%s%s)\n  status %d (%s), %zu ids, expected %zu; first difference at %zu:",
            json_string_value(json_array_get(c, 0)), pair ? ", " : "",
            pair ? json_string_value(json_array_get(c, 1)) : "", rc, err.message, n, n_want, pos);
    for (size_t i = pos; i < pos + 6; i++) {
        long long e = i < n_want ? (long long)json_integer_value(json_array_get(want, i)) : -1;
        long long g = i < n ? (long long)ids[i] : -1;
        const char *te = e >= 0 ? tokenizer_token(t, (int32_t)e) : NULL, *tg = g >= 0 ? tokenizer_token(t, (int32_t)g) : NULL;
        fprintf(stderr, " [%zu] want %lld %s got %lld %s;", i, e, te ? te : "-", g, tg ? tg : "-");
    }
    fputc('\n', stderr);
    return 0;
}

static size_t goldens_checked;

static void check_goldens(const char *name) {
    tokenizer *t = load(name);
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "expected_%.*s.json", (int)(strlen(name) - 5), name);
    json_t *g = load_json(path);
    static const char *const sets[] = {"singles", "short", "pairs", "short_pairs"};
    size_t bad = 0, total = 0;
    for (size_t k = 0; k < 4; k++) {
        json_t *set = json_object_get(g, sets[k]);
        json_t *cases = json_object_get(set, "cases");
        size_t max_length = (size_t)json_integer_value(json_object_get(set, "max_length"));
        assert_true(json_array_size(cases) > 0);
        for (size_t i = 0; i < json_array_size(cases); i++, total++)
            bad += !check_case(t, name, json_array_get(cases, i), k >= 2, max_length);
    }
    printf("%s: %zu/%zu goldens equal\n", name, total - bad, total);
    goldens_checked += total;
    json_decref(g);
    tokenizer_destroy(t);
    assert_int_equal(bad, 0);
}

static void test_bpe_roberta(void **state) {
    (void)state;
    check_goldens("bpe_roberta.json");
}

static void test_bpe_options(void **state) {
    (void)state;
    check_goldens("bpe_options.json");
}

static void test_bpe_fallback(void **state) {
    (void)state;
    check_goldens("bpe_fallback.json");
}

static void test_unigram_xlmr(void **state) {
    (void)state;
    check_goldens("unigram_xlmr.json");
}

static void test_unigram_options(void **state) {
    (void)state;
    check_goldens("unigram_options.json");
}

static void test_unigram_ties(void **state) {
    (void)state;
    check_goldens("unigram_ties.json");
}

static void test_wordpiece_pairs(void **state) {
    (void)state;
    check_goldens("small_tokenizer.json");
    check_goldens("small_tokenizer_options.json");
}

/* --- the interface ------------------------------------------------------------- */

static void test_accessors(void **state) {
    (void)state;
    tokenizer *t = load("bpe_roberta.json");
    assert_int_equal(tokenizer_get_kind(t), TOKENIZER_BPE);
    assert_string_equal(tokenizer_kind_name(tokenizer_get_kind(t)), "BPE");
    assert_int_equal(tokenizer_vocab_size(t), 6000);
    assert_int_equal(tokenizer_cls_id(t), 0);
    assert_int_equal(tokenizer_pad_id(t), 1);
    assert_int_equal(tokenizer_sep_id(t), 2);
    assert_int_equal(tokenizer_unk_id(t), -1); /* RoBERTa's BPE has no unk_token */
    assert_int_equal(tokenizer_does_lower_case(t), 0);
    assert_string_equal(tokenizer_token(t, 0), "<s>");
    assert_string_equal(tokenizer_token(t, 5999), "<mask>");
    assert_null(tokenizer_token(t, 6000));
    assert_null(tokenizer_token(t, -1));
    assert_non_null(strstr(tokenizer_path(t), "bpe_roberta.json"));
    tokenizer_destroy(t);
    t = load("unigram_xlmr.json");
    assert_int_equal(tokenizer_get_kind(t), TOKENIZER_UNIGRAM);
    assert_string_equal(tokenizer_kind_name(tokenizer_get_kind(t)), "Unigram");
    assert_int_equal(tokenizer_cls_id(t), 0);
    assert_int_equal(tokenizer_pad_id(t), 1);
    assert_int_equal(tokenizer_sep_id(t), 2);
    assert_int_equal(tokenizer_unk_id(t), 3);
    assert_string_equal(tokenizer_token(t, 3), "<unk>");
    assert_string_equal(tokenizer_token(t, (int32_t)tokenizer_vocab_size(t) - 1), "<mask>");
    tokenizer_destroy(t);
    t = load("small_tokenizer.json");
    assert_int_equal(tokenizer_get_kind(t), TOKENIZER_WORDPIECE);
    assert_int_equal(tokenizer_does_lower_case(t), 1);
    tokenizer_destroy(t);
}

/* Blank is exactly "only the special tokens", for every corpus text. */
static void test_is_blank(void **state) {
    (void)state;
    const char *names[] = {"bpe_roberta.json", "bpe_fallback.json", "unigram_xlmr.json", "unigram_options.json"};
    for (size_t k = 0; k < 4; k++) {
        tokenizer *t = load(names[k]);
        size_t blank = 0;
        for (size_t i = 0; i < corpus.n + extra.n; i++) {
            const char *s = i < corpus.n ? corpus.s[i] : extra.s[i - corpus.n];
            size_t len = i < corpus.n ? corpus.len[i] : extra.len[i - corpus.n];
            int32_t ids[1100];
            size_t n = 0;
            engine_error err;
            assert_int_equal(tokenizer_encode(t, s, len, 1024, ids, 1100, &n, &err), 0);
            int want = n == 2;
            if (tokenizer_is_blank(t, s, len) != want)
                fail_msg("%s: text %zu: is_blank %d but %zu ids", names[k], i, !want, n);
            blank += want;
        }
        assert_true(blank >= 1); /* "" at least */
        tokenizer_destroy(t);
    }
}

static void test_encode_errors(void **state) {
    (void)state;
    tokenizer *t = load("unigram_xlmr.json");
    int32_t ids[64];
    size_t n = 99;
    engine_error err = {0};
    assert_int_equal(tokenizer_encode(t, "ab\xC3", 3, 512, ids, 64, &n, &err), ENGINE_EINPUT);
    assert_non_null(strstr(err.message, "UTF-8"));
    assert_int_equal(n, 0);
    assert_int_equal(tokenizer_encode_pair(t, "ok", 2, "\xFF", 1, 512, ids, 64, &n, &err), ENGINE_EINPUT);
    assert_non_null(strstr(err.message, "second"));
    assert_int_equal(tokenizer_is_blank(t, "\xFF", 1), 0);
    /* max_length must hold the specials: 2 for one text, 4 for a pair. */
    assert_int_equal(tokenizer_encode(t, "hello", 5, 1, ids, 64, &n, &err), ENGINE_EARG);
    assert_int_equal(tokenizer_encode(t, "hello", 5, 2, ids, 64, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(tokenizer_encode_pair(t, "a", 1, "b", 1, 3, ids, 64, &n, &err), ENGINE_EARG);
    assert_int_equal(tokenizer_encode_pair(t, "a", 1, "b", 1, 4, ids, 64, &n, &err), 0);
    assert_int_equal(n, 4);
    /* Too small a buffer says how much is needed. */
    const char *s = "the quick brown fox jumps over the lazy dog";
    assert_int_equal(tokenizer_encode(t, s, strlen(s), 512, ids, 64, &n, &err), 0);
    size_t need = n;
    for (size_t cap = 0; cap < need; cap++) {
        n = 0;
        assert_int_equal(tokenizer_encode(t, s, strlen(s), 512, cap ? ids : NULL, cap, &n, &err), ENGINE_EARG);
        assert_int_equal(n, need);
    }
    assert_int_equal(tokenizer_encode_pair(t, s, strlen(s), s, strlen(s), 512, ids, 64, &n, &err), 0);
    need = n;
    assert_int_equal(tokenizer_encode_pair(t, s, strlen(s), s, strlen(s), 512, ids, need - 1, &n, &err), ENGINE_EARG);
    assert_int_equal(n, need);
    /* NULL with a zero length is the empty text. */
    assert_int_equal(tokenizer_encode(t, NULL, 0, 512, ids, 64, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(tokenizer_is_blank(t, NULL, 0), 1);
    tokenizer_destroy(t);
}

/* --- loading ------------------------------------------------------------------- */

static char *temp_dir(void) {
    char *dir = strdup("/tmp/test_tokenizers_XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

static void write_file(const char *dir, const char *name, const char *bytes, size_t len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
}

static void remove_dir(char *dir) {
    const char *names[] = {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model"};
    for (size_t i = 0; i < 5; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
    free(dir);
}

/* Loads `text` as a tokenizer.json; returns the status (the error must name
 * the file). */
static int load_text(const char *text, engine_error *err) {
    char *dir = temp_dir();
    write_file(dir, "tokenizer.json", text, strlen(text));
    tokenizer *t = NULL;
    int rc = tokenizer_load(dir, NULL, &t, err);
    if (rc)
        assert_non_null(strstr(err->message, dir));
    else
        tokenizer_destroy(t);
    remove_dir(dir);
    return rc;
}

/* A small valid file of each kind, edited by the cases below. */
#define BPE_HEAD "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]"
#define UNI_HEAD "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"add_prefix_space\": true}, " \
                 "\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0], [\"a\", -1]]}"

static void test_load_errors(void **state) {
    (void)state;
    engine_error err = {0};
    assert_int_equal(load_text(BPE_HEAD "}}", &err), 0);
    assert_int_equal(load_text(UNI_HEAD "}", &err), 0);
    struct {
        const char *text;
        int status;
        const char *says;
    } cases[] = {
        {"{not json", ENGINE_EFORMAT, ":1:"},
        {"{\"model\": 3}", ENGINE_EFORMAT, "model"},
        {"{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", ENGINE_EUNSUPPORTED, "WordLevel"},
        /* BPE */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", ENGINE_EFORMAT, "not an object"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", ENGINE_EFORMAT, "vocab[\"a\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999}, \"merges\": []}}", ENGINE_EFORMAT, "vocab[\"a\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a c\"]}}", ENGINE_EFORMAT, "\"c\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a a\"]}}", ENGINE_EFORMAT, "\"aa\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}", ENGINE_EFORMAT, "merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a a a\"]}}", ENGINE_EFORMAT, "merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", ENGINE_EFORMAT, "merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": 5}}", ENGINE_EFORMAT, "merges"},
        {BPE_HEAD ", \"dropout\": 0.1}}", ENGINE_EUNSUPPORTED, "dropout"},
        {BPE_HEAD ", \"ignore_merges\": true}}", ENGINE_EUNSUPPORTED, "ignore_merges"},
        {BPE_HEAD ", \"unk_token\": \"<unk>\"}}", ENGINE_EFORMAT, "<unk>"},
        {BPE_HEAD ", \"continuing_subword_prefix\": \"##\"}}", ENGINE_EFORMAT, "prefix"},
        /* Unigram */
        {"{\"model\": {\"type\": \"Unigram\", \"unk_id\": null, \"vocab\": [[\"a\", 0]]}}", ENGINE_EUNSUPPORTED, "unk_id"},
        {"{\"model\": {\"type\": \"Unigram\", \"unk_id\": 1, \"vocab\": [[\"a\", 0]]}}", ENGINE_EFORMAT, "unk_id"},
        {"{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": []}}", ENGINE_EFORMAT, "vocab"},
        {"{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"a\", \"x\"]]}}", ENGINE_EFORMAT, "vocab[0]"},
        {"{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"a\"]]}}", ENGINE_EFORMAT, "vocab[0]"},
        /* the pipeline */
        {BPE_HEAD "}, \"normalizer\": {\"type\": \"NFKC\"}}", ENGINE_EUNSUPPORTED, "NFKC"},
        {BPE_HEAD "}, \"pre_tokenizer\": {\"type\": \"Whitespace\"}}", ENGINE_EUNSUPPORTED, "Whitespace"},
        {BPE_HEAD "}, \"post_processor\": {\"type\": \"Nope\"}}", ENGINE_EUNSUPPORTED, "Nope"},
        {BPE_HEAD "}, \"post_processor\": {\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", -4], \"sep\": [\"</s>\", 2]}}",
         ENGINE_EFORMAT, "cls and sep"},
        {BPE_HEAD "}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"X\"}}, "
                  "{\"Sequence\": {\"id\": \"A\"}}], \"pair\": [{\"Sequence\": {\"id\": \"A\"}}, {\"Sequence\": {\"id\": \"B\"}}], "
                  "\"special_tokens\": {}}}",
         ENGINE_EFORMAT, "special token"},
        {BPE_HEAD "}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"Sequence\": {\"id\": \"A\"}}], "
                  "\"pair\": [{\"Sequence\": {\"id\": \"A\"}}], \"special_tokens\": {}}}",
         ENGINE_EFORMAT, "both sequences"},
        {BPE_HEAD "}, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"ab\", \"add_prefix_space\": true}}",
         ENGINE_EFORMAT, "one character"},
        {BPE_HEAD "}, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"_\", \"prepend_scheme\": \"x\"}}",
         ENGINE_EFORMAT, "prepend_scheme"},
        {BPE_HEAD "}, \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"a|b\"}, \"content\": \"\"}}",
         ENGINE_EUNSUPPORTED, "a|b"},
        {BPE_HEAD "}, \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \"\"}, \"content\": \"x\"}}",
         ENGINE_EUNSUPPORTED, "empty"},
        {BPE_HEAD "}, \"added_tokens\": [{\"content\": 5}]}", ENGINE_EFORMAT, "added_tokens[0]"},
        {BPE_HEAD "}, \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \"x\"}, \"content\": \"\"}, "
                  "\"added_tokens\": [{\"content\": \"x\", \"normalized\": true}]}",
         ENGINE_EUNSUPPORTED, "empty once normalized"},
        /* the precompiled character map */
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"a$==\"}}", ENGINE_EFORMAT, "base64"},
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"abc\"}}", ENGINE_EFORMAT, "base64"},
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": 7}}", ENGINE_EFORMAT, "not a string"},
        /* a 4-byte header claiming a 256-byte trie, and nothing after it */
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAEAAA==\"}}", ENGINE_EFORMAT, "does not fit"},
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAA=\"}}", ENGINE_EFORMAT, "does not fit"},
        /* an empty trie and a replacement blob that is not UTF-8 (0xFF) */
        {UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAAAP8=\"}}", ENGINE_EFORMAT, "UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err = (engine_error){0};
        int rc = load_text(cases[i].text, &err);
        if (rc != cases[i].status || !strstr(err.message, cases[i].says))
            fail_msg("case %zu: status %d (%s), want %d and \"%s\"", i, rc, err.message, cases[i].status, cases[i].says);
    }
    /* An empty trie with valid replacements loads and maps nothing. */
    assert_int_equal(load_text(UNI_HEAD ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAAAA==\"}}",
                               &err),
                     0);
}

/* Directory layouts: which file wins, and what is refused. */
static void test_load_dir(void **state) {
    (void)state;
    tokenizer *t = NULL;
    engine_error err = {0};
    char *dir = temp_dir();
    assert_int_equal(tokenizer_load(dir, NULL, &t, &err), ENGINE_EIO);
    assert_non_null(strstr(err.message, "no tokenizer"));
    write_file(dir, "spiece.model", "x", 1);
    assert_int_equal(tokenizer_load(dir, NULL, &t, &err), ENGINE_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "spiece.model"));
    const char vocab_txt[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n";
    write_file(dir, "vocab.txt", vocab_txt, sizeof vocab_txt - 1);
    assert_int_equal(tokenizer_load(dir, NULL, &t, &err), 0);
    assert_int_equal(tokenizer_get_kind(t), TOKENIZER_WORDPIECE);
    int32_t ids[16];
    size_t n;
    assert_int_equal(tokenizer_encode_pair(t, "hello", 5, "hello", 5, 512, ids, 16, &n, &err), 0);
    const int32_t want[] = {2, 4, 3, 4, 3};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    tokenizer_destroy(t);
    write_file(dir, "tokenizer.json", UNI_HEAD "}", strlen(UNI_HEAD "}"));
    assert_int_equal(tokenizer_load(dir, NULL, &t, &err), 0);
    assert_int_equal(tokenizer_get_kind(t), TOKENIZER_UNIGRAM); /* tokenizer.json wins */
    tokenizer_destroy(t);
    remove_dir(dir);
}

/* RoBERTa's slow files (vocab.json + merges.txt) give the same ids as the
 * tokenizer.json fixture made from them; broken ones name file and line. */
static void test_vocab_merges(void **state) {
    (void)state;
    json_t *j = load_json(FIXTURES "bpe_roberta.json");
    json_t *model = json_object_get(j, "model");
    char *dir = temp_dir();
    char *vocab = json_dumps(json_object_get(model, "vocab"), JSON_COMPACT);
    write_file(dir, "vocab.json", vocab, strlen(vocab));
    free(vocab);
    size_t cap = 1 << 20, len = 0;
    char *merges = malloc(cap);
    len += (size_t)snprintf(merges, cap, "#version: 0.2\n");
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(model, "merges"), i, m) {
        assert_true(len + json_string_length(m) + 2 < cap);
        len += (size_t)snprintf(merges + len, cap - len, "%s\n", json_string_value(m));
    }
    write_file(dir, "merges.txt", merges, len);
    json_decref(j);
    tokenizer *files = NULL, *ref = load("bpe_roberta.json");
    engine_error err = {0};
    if (tokenizer_load(dir, NULL, &files, &err))
        fail_msg("%s", err.message);
    assert_int_equal(tokenizer_get_kind(files), TOKENIZER_BPE);
    assert_int_equal(tokenizer_vocab_size(files), tokenizer_vocab_size(ref));
    for (size_t k = 0; k < corpus.n + extra.n; k++) {
        const char *s = k < corpus.n ? corpus.s[k] : extra.s[k - corpus.n];
        size_t sl = k < corpus.n ? corpus.len[k] : extra.len[k - corpus.n];
        int32_t a[1100], b[1100];
        size_t na, nb;
        assert_int_equal(tokenizer_encode(files, s, sl, 512, a, 1100, &na, &err), 0);
        assert_int_equal(tokenizer_encode(ref, s, sl, 512, b, 1100, &nb, &err), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof a[0]);
    }
    tokenizer_destroy(files);
    tokenizer_destroy(ref);
    /* A merge line that is not "a b", and one naming an unknown token. */
    len = (size_t)snprintf(merges, cap, "#version: 0.2\n\xc4\xa0 t\nbroken\n");
    write_file(dir, "merges.txt", merges, len);
    assert_int_equal(tokenizer_load(dir, NULL, &files, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "merges.txt:3"));
    len = (size_t)snprintf(merges, cap, "\xc4\xa0 zzzzqq\n");
    write_file(dir, "merges.txt", merges, len);
    assert_int_equal(tokenizer_load(dir, NULL, &files, &err), ENGINE_EFORMAT);
    assert_non_null(strstr(err.message, "zzzzqq"));
    free(merges);
    remove_dir(dir);
}

/* Options the oracle's version cannot check, against equivalents it can:
 * Metaspace's newer prepend_scheme and split, and Unigram byte_fallback. */
static void test_newer_options(void **state) {
    (void)state;
    json_t *j = load_json(FIXTURES "unigram_xlmr.json");
    json_t *pre = json_object_get(j, "pre_tokenizer");
    json_object_del(pre, "add_prefix_space");
    json_object_set_new(pre, "prepend_scheme", json_string("always"));
    json_object_set_new(pre, "split", json_true());
    char *dir = temp_dir();
    char *text = json_dumps(j, JSON_COMPACT);
    write_file(dir, "tokenizer.json", text, strlen(text));
    free(text);
    tokenizer *newer = NULL, *ref = load("unigram_xlmr.json");
    engine_error err = {0};
    assert_int_equal(tokenizer_load(dir, NULL, &newer, &err), 0);
    for (size_t k = 0; k < corpus.n; k++) {
        int32_t a[1100], b[1100];
        size_t na, nb;
        assert_int_equal(tokenizer_encode(newer, corpus.s[k], corpus.len[k], 512, a, 1100, &na, &err), 0);
        assert_int_equal(tokenizer_encode(ref, corpus.s[k], corpus.len[k], 512, b, 1100, &nb, &err), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof a[0]);
    }
    tokenizer_destroy(newer);
    tokenizer_destroy(ref);
    json_decref(j);
    remove_dir(dir);

    /* byte_fallback: an unknown character becomes its byte pieces when all
     * exist, else <unk>; unknown neighbours are fused first. */
    const char *bf = "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", "
                     "\"split\": false}, \"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"byte_fallback\": true, \"vocab\": "
                     "[[\"<unk>\", 0], [\"\\u2581\", -1], [\"a\", -2], [\"<0xC3>\", -3], [\"<0xA9>\", -3], [\"\\u2581a\", -1.5]]}}";
    dir = temp_dir();
    write_file(dir, "tokenizer.json", bf, strlen(bf));
    tokenizer *t = NULL;
    assert_int_equal(tokenizer_load(dir, NULL, &t, &err), 0);
    int32_t ids[32];
    size_t n;
    /* "a\xc3\xa9 a": ▁a, é as <0xC3><0xA9>, ▁a (split false: one word). */
    assert_int_equal(tokenizer_encode(t, "a\xc3\xa9 a", 5, 512, ids, 32, &n, &err), 0);
    const int32_t want1[] = {5, 3, 4, 5};
    assert_int_equal(n, 4);
    assert_memory_equal(ids, want1, sizeof want1);
    /* "éb": é and b are fused; b has no byte piece, so the run is <unk>. */
    assert_int_equal(tokenizer_encode(t, "\xc3\xa9" "b", 3, 512, ids, 32, &n, &err), 0);
    const int32_t want2[] = {1, 0};
    assert_int_equal(n, 2);
    assert_memory_equal(ids, want2, sizeof want2);
    tokenizer_destroy(t);
    remove_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_roberta),     cmocka_unit_test(test_bpe_options),
        cmocka_unit_test(test_bpe_fallback),    cmocka_unit_test(test_unigram_xlmr),
        cmocka_unit_test(test_unigram_options), cmocka_unit_test(test_unigram_ties),
        cmocka_unit_test(test_wordpiece_pairs),
        cmocka_unit_test(test_accessors),       cmocka_unit_test(test_is_blank),
        cmocka_unit_test(test_encode_errors),   cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_dir),        cmocka_unit_test(test_vocab_merges),
        cmocka_unit_test(test_newer_options),
    };
    int failed = cmocka_run_group_tests(tests, setup_texts, teardown_texts);
    printf("%zu goldens checked\n", goldens_checked);
    return failed;
}
