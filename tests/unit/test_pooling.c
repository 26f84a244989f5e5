/*
 * test_pooling.c - sentence-transformers' settings in the engine:
 *  - every pooling mode of engine_embed (mean, cls, max, mean_sqrt_len,
 *    last) on every fixture model, against values computed here from the
 *    encoder's token states for the golden ids (the forward alone, as
 *    test_bert.c runs it), and mean_sqrt_len against the PyTorch
 *    reference's mean times sqrt(tokens);
 *  - modules.json and the Pooling config.json (each mode, Normalize, the
 *    refusals), sentence_bert_config.json's do_lower_case (the text is
 *    lower-cased as Python's str.lower before tokenizing, final sigma
 *    included) and
 *    config_sentence_transformers.json's prompts, on copies of fixtures in
 *    a temporary directory.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <jansson.h>
#include <math.h>
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

#include "bert.h"
#include "engine.h"
#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/models"

/* What the Pooling module computes from one sequence's token states. */
static void pool_by_hand(const float *rows, int n, size_t H, engine_pooling p, float *out) {
    for (size_t j = 0; j < H; j++) {
        double sum = 0, max = -1e9;
        for (int t = 0; t < n; t++) {
            sum += rows[(size_t)t * H + j];
            max = rows[(size_t)t * H + j] > max ? rows[(size_t)t * H + j] : max;
        }
        out[j] = p == ENGINE_POOL_CLS             ? rows[j]
                 : p == ENGINE_POOL_LAST          ? rows[(size_t)(n - 1) * H + j]
                 : p == ENGINE_POOL_MAX           ? (float)max
                 : p == ENGINE_POOL_MEAN_SQRT_LEN ? (float)(sum / sqrt(n))
                                                  : (float)(sum / n);
    }
}

static void check_model(const char *name) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    engine_error err = {0};
    model_config cfg;
    assert_int_equal(model_config_load(dir, &cfg, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    safetensors *st;
    assert_int_equal(safetensors_open(path, &st, &err), 0);
    bert_weights w;
    assert_int_equal(bert_weights_bind(&w, &cfg, st, &err), 0);
    engine_model *m;
    assert_int_equal(engine_model_load(dir, NULL, &m, &err), 0);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_t *exp = json_load_file(path, JSON_ALLOW_NUL, NULL);
    assert_non_null(exp);
    const double tol = json_number_value(json_object_get(exp, "tolerance"));
    json_t *cases = json_object_get(exp, "cases");
    const size_t n = json_array_size(cases), H = (size_t)cfg.hidden;

    const char **texts = calloc(n, sizeof *texts);
    size_t *lens = calloc(n, sizeof *lens);
    int32_t *ids = malloc(sizeof(int32_t) * n * 1024);
    int *offsets = malloc(sizeof(int) * (n + 1));
    offsets[0] = 0;
    for (size_t c = 0; c < n; c++) {
        json_t *jc = json_array_get(cases, c), *jids = json_object_get(jc, "ids");
        texts[c] = json_string_value(json_object_get(jc, "text"));
        lens[c] = json_string_length(json_object_get(jc, "text"));
        for (size_t t = 0; t < json_array_size(jids); t++)
            ids[offsets[c] + t] = (int32_t)json_integer_value(json_array_get(jids, t));
        offsets[c + 1] = offsets[c] + (int)json_array_size(jids);
    }
    bert_batch batch = {.ids = ids, .offsets = offsets, .n_seqs = (int)n, .n_tokens = offsets[n]};
    float *hidden = malloc(sizeof(float) * (size_t)batch.n_tokens * H);
    threadpool *pool = threadpool_create(1);
    float *scratch = aligned_alloc(64, (bert_scratch_floats(&cfg, &batch, 1) * sizeof(float) + 63) / 64 * 64);
    bert_encode(&w, &cfg, &batch, pool, kernels_best(), hidden, scratch);

    float *got = malloc(sizeof(float) * n * H), *want = malloc(sizeof(float) * H);
    for (engine_pooling p = ENGINE_POOL_MEAN; p <= ENGINE_POOL_LAST; p++) {
        assert_int_equal(engine_embed(m, texts, lens, n, p, 0, got, &err), 0);
        for (size_t c = 0; c < n; c++) {
            const int len = offsets[c + 1] - offsets[c];
            pool_by_hand(hidden + (size_t)offsets[c] * H, len, H, p, want);
            json_t *mean = json_object_get(json_array_get(cases, c), "mean");
            for (size_t j = 0; j < H; j++) {
                if (fabs(got[c * H + j] - want[j]) > tol)
                    fail_msg("%s case %zu %s[%zu]: got %.7g, from the token states %.7g", name, c,
                             engine_pooling_name(p), j, (double)got[c * H + j], (double)want[j]);
                /* the reference's mean scaled back to a sum, over sqrt(n) */
                double ref = json_number_value(json_array_get(mean, j)) * sqrt(len);
                if (p == ENGINE_POOL_MEAN_SQRT_LEN && fabs(got[c * H + j] - ref) > tol * sqrt(len))
                    fail_msg("%s case %zu mean_sqrt_len[%zu]: got %.7g, reference %.7g", name, c, j,
                             (double)got[c * H + j], ref);
            }
        }
    }
    free(got);
    free(want);
    free(scratch);
    threadpool_destroy(pool);
    free(hidden);
    free(ids);
    free(offsets);
    free(texts);
    free(lens);
    json_decref(exp);
    engine_model_free(m);
    bert_weights_fini(&w);
    safetensors_close(st);
    model_config_fini(&cfg);
}

static void test_pooling_modes(void **state) {
    (void)state;
    DIR *d = opendir(FIXTURES);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') {
            check_model(e->d_name);
            n++;
        }
    closedir(d);
    assert_true(n >= 10);
}

/* A copy of fixture `name` in a temporary directory: every file a symlink,
 * except the sentence-transformers files the test writes. */
typedef struct tmp_model {
    char dir[256];
} tmp_model;

static void tmp_model_make(tmp_model *t, const char *name) {
    snprintf(t->dir, sizeof t->dir, "/tmp/aiserve-pooling-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                        "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char src[600], dst[600];
        snprintf(src, sizeof src, "%s/%s/%s", FIXTURES, name, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", t->dir, files[i]);
        if (access(src, F_OK) == 0)
            assert_int_equal(symlink(src, dst), 0);
    }
}

static void tmp_model_write(tmp_model *t, const char *rel, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", t->dir, rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    mkdir(path, 0755);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void tmp_model_remove(tmp_model *t) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

static int load(tmp_model *t, engine_model **m, engine_error *err) {
    return engine_model_load(t->dir, NULL, m, err);
}

static const char MODULES[] =
    "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
    "{\"idx\":1,\"name\":\"1\",\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"}%s]";

static void write_modules(tmp_model *t, const char *extra) {
    char text[1024];
    snprintf(text, sizeof text, MODULES, extra);
    tmp_model_write(t, "modules.json", text);
}

static void test_modules_and_pooling_config(void **state) {
    (void)state;
    static const struct {
        const char *key;
        engine_pooling pooling;
    } modes[] = {{"pooling_mode_cls_token", ENGINE_POOL_CLS},
                 {"pooling_mode_mean_tokens", ENGINE_POOL_MEAN},
                 {"pooling_mode_max_tokens", ENGINE_POOL_MAX},
                 {"pooling_mode_mean_sqrt_len_tokens", ENGINE_POOL_MEAN_SQRT_LEN},
                 {"pooling_mode_lasttoken", ENGINE_POOL_LAST}};
    engine_error err = {0};
    engine_model *m = NULL;
    tmp_model t;
    tmp_model_make(&t, "mpnet-embed");
    /* no modules.json: mean, normalised */
    assert_int_equal(load(&t, &m, &err), 0);
    assert_int_equal(engine_model_get_info(m)->pooling, ENGINE_POOL_MEAN);
    assert_true(engine_model_get_info(m)->normalize);
    engine_model_free(m);
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        char text[256];
        snprintf(text, sizeof text, "{\"word_embedding_dimension\": 32, \"%s\": true, \"include_prompt\": true}",
                 modes[i].key);
        tmp_model_write(&t, "1_Pooling/config.json", text);
        write_modules(&t, i % 2 ? ",{\"idx\":2,\"name\":\"2\",\"path\":\"2_Normalize\","
                                  "\"type\":\"sentence_transformers.models.Normalize\"}"
                                : "");
        if (load(&t, &m, &err))
            fail_msg("%s: %s", modes[i].key, err.message);
        assert_int_equal(engine_model_get_info(m)->pooling, modes[i].pooling);
        assert_int_equal(engine_model_get_info(m)->normalize, (int)(i % 2));
        engine_model_free(m);
    }
    static const struct {
        const char *pooling, *extra, *says;
    } bad[] = {
        {"{\"pooling_mode_cls_token\": true, \"pooling_mode_mean_tokens\": true}", "", "more than one"},
        {"{\"pooling_mode_cls_token\": false}", "", "no pooling mode"},
        {"{\"pooling_mode_weightedmean_tokens\": true}", "", "weightedmean"},
        {"{\"pooling_mode_mean_tokens\": true, \"include_prompt\": false}", "", "include_prompt"},
        {"{\"pooling_mode_mean_tokens\": \"yes\"}", "", "true or false"},
        {"{\"pooling_mode_mean_tokens\": true}",
         ",{\"idx\":2,\"name\":\"2\",\"path\":\"2_Dense\",\"type\":\"sentence_transformers.models.Dense\"}",
         "sentence_transformers.models.Dense"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tmp_model_write(&t, "1_Pooling/config.json", bad[i].pooling);
        write_modules(&t, bad[i].extra);
        m = NULL;
        int rc = load(&t, &m, &err);
        assert_null(m);
        assert_true(rc == ENGINE_EUNSUPPORTED || rc == ENGINE_ECONFIG);
        if (!strstr(err.message, bad[i].says))
            fail_msg("case %zu: '%s' does not say '%s'", i, err.message, bad[i].says);
    }
    tmp_model_write(&t, "modules.json",
                    "[{\"type\":\"sentence_transformers.models.Pooling\",\"path\":\"../1_Pooling\"}]");
    assert_int_equal(load(&t, &m, &err), ENGINE_ECONFIG);
    tmp_model_remove(&t);
}

static void tokenize(engine_model *m, const char *text, int32_t *ids, size_t *n) {
    engine_error err;
    assert_int_equal(engine_tokenize(m, text, strlen(text), 0, ids, 256, n, &err), 0);
}

static void test_do_lower_case(void **state) {
    (void)state;
    engine_error err = {0};
    engine_model *cased, *lowered;
    tmp_model t;
    tmp_model_make(&t, "bert-cased-gelu-new");
    assert_int_equal(load(&t, &cased, &err), 0);
    assert_false(engine_model_get_info(cased)->st_lower_case);
    tmp_model_write(&t, "sentence_bert_config.json", "{\"max_seq_length\": 64, \"do_lower_case\": true}");
    assert_int_equal(load(&t, &lowered, &err), 0);
    assert_true(engine_model_get_info(lowered)->st_lower_case);
    /* Python: "The FILM İs ΟΔΟΣ, ΣΑΣ.".lower() */
    static const char text[] = "The FILM \xc4\xb0s \xce\x9f\xce\x94\xce\x9f\xce\xa3, \xce\xa3\xce\x91\xce\xa3.";
    static const char lower[] = "the film i\xcc\x87s \xce\xbf\xce\xb4\xce\xbf\xcf\x82, \xcf\x83\xce\xb1\xcf\x82.";
    int32_t a[256], b[256], c[256];
    size_t na, nb, nc;
    tokenize(lowered, text, a, &na);
    tokenize(cased, lower, b, &nb);
    tokenize(cased, text, c, &nc);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    assert_false(na == nc && memcmp(a, c, na * sizeof *a) == 0); /* the cased model sees "The FILM" */
    /* what engine_embed computes is the lowered text's */
    float *ea = malloc(sizeof(float) * 64 * 2), *eb = ea + 64;
    const char *ta[] = {text}, *tb[] = {lower};
    size_t la[] = {strlen(text)}, lb[] = {strlen(lower)};
    assert_true(engine_model_get_info(cased)->hidden <= 64);
    assert_int_equal(engine_embed(lowered, ta, la, 1, ENGINE_POOL_MEAN, 0, ea, &err), 0);
    assert_int_equal(engine_embed(cased, tb, lb, 1, ENGINE_POOL_MEAN, 0, eb, &err), 0);
    assert_memory_equal(ea, eb, sizeof(float) * (size_t)engine_model_get_info(cased)->hidden);
    /* invalid UTF-8 is still reported */
    const char *bad[] = {"ok \xff"};
    size_t bl[] = {4};
    assert_int_equal(engine_embed(lowered, bad, bl, 1, ENGINE_POOL_MEAN, 0, ea, &err), ENGINE_EINPUT);
    free(ea);
    engine_model_free(cased);
    engine_model_free(lowered);
    tmp_model_remove(&t);
}

/* Python's str.lower() turns U+03A3 into final U+03C2 at the end of a
 * word and U+03C3 elsewhere: the Final_Sigma context of Unicode's
 * SpecialCasing (CPython's handle_capital_sigma: a cased character before
 * it and none after it, case-ignorable characters skipped on both sides).
 * The lowered text is seen through a byte-level BPE tokenizer (RoBERTa's,
 * which maps every byte and never lower-cases), so equal ids mean equal
 * bytes. Each `lower` below is what /usr/bin/python3 (3.11, Unicode 14.0)
 * gave for text.lower() of its `text`, written out as UTF-8 bytes in C
 * escapes by a short script (the comment above each: ascii() of the result). */
static void test_do_lower_case_final_sigma(void **state) {
    (void)state;
    static const struct {
        const char *what, *text, *lower;
    } cases[] = {
        /* '\u03bf\u03b4\u03bf\u03c2' */
        {"word-final",
         "\xce\x9f\xce\x94\xce\x9f\xce\xa3",
         "\xce\xbf\xce\xb4\xce\xbf\xcf\x82"},
        /* '\u03b1\u03c3\u03b1' */
        {"in the middle",
         "\xce\x91\xce\xa3\xce\x91",
         "\xce\xb1\xcf\x83\xce\xb1"},
        /* '\u03c3' */
        {"alone",
         "\xce\xa3",
         "\xcf\x83"},
        /* '\u03b1 \u03c3 \u03b1' */
        {"alone between words",
         "\xce\x91 \xce\xa3 \xce\x91",
         "\xce\xb1 \xcf\x83 \xce\xb1"},
        /* '\u03bf\u03b4\u03bf\u03c2, \u03bf\u03b4\u03bf\u03c2. \u03bf\u03b4\u03bf\u03c2!' */
        {"before punctuation",
         "\xce\x9f\xce\x94\xce\x9f\xce\xa3, \xce\x9f\xce\x94\xce\x9f\xce\xa3. \xce\x9f\xce\x94"
         "\xce\x9f\xce\xa3!",
         "\xce\xbf\xce\xb4\xce\xbf\xcf\x82, \xce\xbf\xce\xb4\xce\xbf\xcf\x82. \xce\xbf\xce\xb4"
         "\xce\xbf\xcf\x82!"},
        /* '\u03b1\u03c3.\u03b2' */
        {"case-ignorable '.', then a letter",
         "\xce\x91\xce\xa3.\xce\x92",
         "\xce\xb1\xcf\x83.\xce\xb2"},
        /* "\u03b1\u03c3'\u03b2 \u03b1'\u03c2" */
        {"case-ignorable apostrophe, either side",
         "\xce\x91\xce\xa3'\xce\x92 \xce\x91'\xce\xa3",
         "\xce\xb1\xcf\x83'\xce\xb2 \xce\xb1'\xcf\x82"},
        /* '\u03b1\u03c2\u0301 \u03b1\u03c3\u0301\u0308\u03b2' */
        {"combining marks after",
         "\xce\x91\xce\xa3\xcc\x81 \xce\x91\xce\xa3\xcc\x81\xcc\x88\xce\x92",
         "\xce\xb1\xcf\x82\xcc\x81 \xce\xb1\xcf\x83\xcc\x81\xcc\x88\xce\xb2"},
        /* '\u03b1\u0301\u03c2' */
        {"combining mark before",
         "\xce\x91\xcc\x81\xce\xa3",
         "\xce\xb1\xcc\x81\xcf\x82"},
        /* '\u03b1\u03c3\u0387\u03b2 \u03b1\u0387\u03c2' */
        {"Greek ano teleia (case-ignorable)",
         "\xce\x91\xce\xa3\xce\x87\xce\x92 \xce\x91\xce\x87\xce\xa3",
         "\xce\xb1\xcf\x83\xce\x87\xce\xb2 \xce\xb1\xce\x87\xcf\x82"},
        /* '\u03b1\u03c3\u200b\u03b2' */
        {"zero-width space (case-ignorable)",
         "\xce\x91\xce\xa3\xe2\x80\x8b\xce\x92",
         "\xce\xb1\xcf\x83\xe2\x80\x8b\xce\xb2"},
        /* '\u2170\u03c2 \xaa\u03c2 \u03b1\u03c3\u24d0' */
        {"cased non-letters",
         "\xe2\x85\xa0\xce\xa3 \xc2\xaa\xce\xa3 \xce\x91\xce\xa3\xe2\x93\x90",
         "\xe2\x85\xb0\xcf\x82 \xc2\xaa\xcf\x82 \xce\xb1\xcf\x83\xe2\x93\x90"},
        /* '\u02b0\u03c3' */
        {"cased but case-ignorable before",
         "\xca\xb0\xce\xa3",
         "\xca\xb0\xcf\x83"},
        /* '\u03c3\u03c2 \u03b1\u03c3\u03c2' */
        {"two in a row",
         "\xce\xa3\xce\xa3 \xce\x91\xce\xa3\xce\xa3",
         "\xcf\x83\xcf\x82 \xce\xb1\xcf\x83\xcf\x82"},
        /* '\u03b1\u03c21' */
        {"digit after",
         "\xce\x91\xce\xa3" "1",
         "\xce\xb1\xcf\x82" "1"},
        /* 'i\u0307\u03c2' */
        {"after U+0130",
         "\xc4\xb0\xce\xa3",
         "i\xcc\x87\xcf\x82"},
    };
    engine_error err = {0};
    engine_model *plain, *lowered;
    tmp_model t;
    tmp_model_make(&t, "roberta-embed-bf16");
    assert_int_equal(load(&t, &plain, &err), 0);
    tmp_model_write(&t, "sentence_bert_config.json", "{\"do_lower_case\": true}");
    assert_int_equal(load(&t, &lowered, &err), 0);
    const size_t max_length = (size_t)engine_model_get_info(plain)->max_length;
    int32_t a[256], b[256];
    size_t na, nb;
    /* the tokenizer tells the two small sigmas apart */
    tokenize(plain, "\xcf\x83", a, &na);
    tokenize(plain, "\xcf\x82", b, &nb);
    assert_false(na == nb && memcmp(a, b, na * sizeof *a) == 0);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tokenize(lowered, cases[i].text, a, &na);
        tokenize(plain, cases[i].lower, b, &nb);
        assert_true(nb < max_length); /* nothing cut off */
        if (na != nb || memcmp(a, b, na * sizeof *a) != 0)
            fail_msg("%s: the lowered text is not Python's str.lower()", cases[i].what);
    }
    engine_model_free(plain);
    engine_model_free(lowered);
    tmp_model_remove(&t);
}

static void test_prompts(void **state) {
    (void)state;
    engine_error err = {0};
    engine_model *m;
    tmp_model t;
    tmp_model_make(&t, "mpnet-embed");
    tmp_model_write(&t, "config_sentence_transformers.json",
                    "{\"prompts\": {\"query\": \"query: \", \"passage\": \"passage: \"}, "
                    "\"default_prompt_name\": \"passage\", \"similarity_fn_name\": \"cosine\"}");
    assert_int_equal(load(&t, &m, &err), 0);
    const engine_model_info *info = engine_model_get_info(m);
    assert_int_equal(info->n_prompts, 2);
    assert_string_equal(info->prompt_names[0], "query");
    assert_string_equal(info->prompts[1], "passage: ");
    assert_string_equal(info->default_prompt_name, "passage");
    assert_string_equal(engine_model_prompt(m, "query"), "query: ");
    assert_null(engine_model_prompt(m, "nope"));
    engine_model_free(m);
    static const char *const bad[] = {
        "{\"prompts\": {\"query\": \"q: \"}, \"default_prompt_name\": \"passage\"}",
        "{\"prompts\": {\"query\": 3}}",
        "{\"prompts\": [\"query: \"]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tmp_model_write(&t, "config_sentence_transformers.json", bad[i]);
        m = NULL;
        assert_int_equal(load(&t, &m, &err), ENGINE_ECONFIG);
        assert_null(m);
        assert_non_null(strstr(err.message, "config_sentence_transformers.json"));
    }
    tmp_model_remove(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pooling_modes),
        cmocka_unit_test(test_modules_and_pooling_config),
        cmocka_unit_test(test_do_lower_case),
        cmocka_unit_test(test_do_lower_case_final_sigma),
        cmocka_unit_test(test_prompts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
