/*
 * test_model.c - the engine against golden values from the Python reference.
 *
 * Every directory under tests/fixtures/models/ (written by
 * tools/make_fixtures.py from tools/hf_reference.py: BERT, DistilBERT,
 * RoBERTa, XLM-RoBERTa and MPNet, with WordPiece, byte-level BPE and
 * Unigram tokenizers) is one test. For each, with n_threads 1 and 2, the
 * test loads the model and checks:
 *  - the model info against expected.json's "model" block and "max_length"
 *    (which is sentence-transformers' max_seq_length where the fixture has
 *    sentence_bert_config.json);
 *  - engine_tokenize ids exactly (the Rust tokenizers' for tokenizer.json
 *    fixtures), and truncation to a smaller max_length;
 *  - engine_classify logits and scores ("probs": probabilities, or for a
 *    regression model the logits themselves) and the score function the
 *    model info names (classifiers), or ENGINE_EUNSUPPORTED (embedding
 *    models);
 *  - engine_embed mean and CLS pooling, raw and L2-normalised;
 *  - where the fixture has "pairs": engine_tokenize_pair ids and token
 *    types exactly, engine_classify_pairs logits and probabilities;
 * all texts in one packed batch and again one text at a time, to the
 * fixture's tolerance. Invalid UTF-8 in one text of a batch must fail the
 * whole call with ENGINE_EINPUT and a message naming that text's index.
 * engine_text_is_blank must follow each model's tokenizer settings.
 * The largest absolute error seen is printed at the end.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine.h"
#include "model_fixtures.h"


static double g_max_err; /* largest |engine - reference| over every check */

static const char *info_str(const fixture *fx, const char *key)
{
    const char *s = json_string_value(json_object_get(fx->info, key));
    assert_non_null(s);
    return s;
}

static int info_int(const fixture *fx, const char *key)
{
    json_t *v = json_object_get(fx->info, key);
    assert_non_null(v);
    return json_is_boolean(v) ? json_is_true(v) : (int)json_integer_value(v);
}

/* Compares got[0..dim) with the JSON array list[case_i][key] to the tolerance. */
static void check_close_in(const fixture *fx, json_t *list, const char *what, size_t case_i, const char *key,
                           const float *got, int dim)
{
    json_t *want = json_object_get(json_array_get(list, case_i), key);
    if (!json_is_array(want) || (int)json_array_size(want) != dim)
        fail_msg("%s: case %zu: '%s' has %zu values, engine gives %d", fx->dir, case_i, key,
                 json_array_size(want), dim);
    for (int j = 0; j < dim; j++) {
        double w = json_number_value(json_array_get(want, (size_t)j));
        double e = fabs((double)got[j] - w);
        if (!(e <= fx->tol)) /* also catches NaN */
            fail_msg("%s: %s: case %zu %s[%d] = %.7g, expected %.7g (|err| %.3g > %.3g)", fx->dir,
                     what, case_i, key, j, (double)got[j], w, e, fx->tol);
        if (e > g_max_err)
            g_max_err = e;
    }
}

static void check_close(const fixture *fx, const char *what, size_t case_i, const char *key,
                        const float *got, int dim)
{
    check_close_in(fx, fx->cases, what, case_i, key, got, dim);
}

static void check_pair_close(const fixture *fx, const char *what, size_t pair_i, const char *key,
                          const float *got, int dim)
{
    check_close_in(fx, json_object_get(fx->root, "pairs"), what, pair_i, key, got, dim);
}

static void check_info(const fixture *fx, const engine_model *m)
{
    const engine_model_info *info = engine_model_get_info(m);
    assert_non_null(info);
    static const struct {
        const char *model_type;
        engine_arch arch;
    } archs[] = {{"bert", ENGINE_ARCH_BERT},
                 {"distilbert", ENGINE_ARCH_DISTILBERT},
                 {"roberta", ENGINE_ARCH_ROBERTA},
                 {"xlm-roberta", ENGINE_ARCH_ROBERTA},
                 {"mpnet", ENGINE_ARCH_MPNET}};
    const char *type = info_str(fx, "model_type");
    assert_string_equal(info->model_type, type);
    size_t a = 0;
    while (a < sizeof archs / sizeof *archs && strcmp(archs[a].model_type, type) != 0)
        a++;
    assert_true(a < sizeof archs / sizeof *archs);
    assert_int_equal(info->arch, archs[a].arch);
    assert_string_equal(info->tokenizer, info_str(fx, "tokenizer"));
    assert_string_equal(info->architecture, info_str(fx, "architecture"));
    int classify = strcmp(info_str(fx, "task"), "classify") == 0;
    assert_int_equal(info->task, classify ? ENGINE_TASK_CLASSIFY : ENGINE_TASK_EMBED);
    assert_string_equal(info->dtype, info_str(fx, "dtype"));
    assert_int_equal(info->n_layers, info_int(fx, "n_layers"));
    assert_int_equal(info->hidden, fx->hidden);
    assert_int_equal(info->n_heads, info_int(fx, "n_heads"));
    assert_int_equal(info->intermediate, info_int(fx, "intermediate"));
    assert_int_equal(info->vocab_size, info_int(fx, "vocab_size"));
    assert_int_equal(info->max_position, info_int(fx, "max_position"));
    assert_int_equal(info->max_length, fx->max_length);
    assert_int_equal(!!info->multi_label, info_int(fx, "multi_label"));
    /* The scores the fixture's "probs" hold (transformers' pipeline): none
     * for problem_type regression (named only by the fixtures that have
     * it), a sigmoid for multi-label and one-label models, else softmax. */
    const char *problem = json_string_value(json_object_get(fx->info, "problem_type"));
    if (problem) {
        assert_string_equal(problem, "regression");
        assert_int_equal(info->problem_type, ENGINE_PROBLEM_REGRESSION);
        assert_string_equal(engine_problem_name(info->problem_type), "regression");
    }
    if (!classify)
        assert_int_equal(info->problem_type, ENGINE_PROBLEM_UNSET);
    else
        assert_int_equal(info->score_fn, problem                                  ? ENGINE_SCORE_NONE
                                         : info->multi_label || fx->n_labels == 1 ? ENGINE_SCORE_SIGMOID
                                                                                  : ENGINE_SCORE_SOFTMAX);
    assert_int_equal(!!info->do_lower_case, info_int(fx, "do_lower_case"));
    assert_true(info->n_params > 0);
    assert_true(info->weight_bytes > 0);
    assert_int_equal(info->n_labels, fx->n_labels);
    json_t *labels = json_object_get(fx->info, "labels");
    for (int i = 0; i < fx->n_labels; i++) {
        const char *name = engine_model_label(m, i);
        assert_non_null(name);
        assert_string_equal(name, json_string_value(json_array_get(labels, (size_t)i)));
    }
    assert_null(engine_model_label(m, fx->n_labels));
    assert_null(engine_model_label(m, -1));
}

static void check_tokenize(const fixture *fx, const engine_model *m)
{
    size_t cap = (size_t)fx->max_length + 8;
    int32_t *ids = calloc(cap, sizeof *ids);
    assert_non_null(ids);
    engine_error err = {0};
    for (size_t i = 0; i < fx->n; i++) {
        json_t *want = json_object_get(json_array_get(fx->cases, i), "ids");
        size_t n_want = json_array_size(want), n_ids = 0;
        int rc = engine_tokenize(m, fx->texts[i], fx->lens[i], 0, ids, cap, &n_ids, &err);
        if (rc != 0)
            fail_msg("%s: tokenize case %zu: %s: %s", fx->dir, i, engine_status_name(rc), err.message);
        if (n_ids != n_want)
            fail_msg("%s: tokenize case %zu: %zu ids, expected %zu", fx->dir, i, n_ids, n_want);
        for (size_t j = 0; j < n_ids; j++)
            if (ids[j] != (int32_t)json_integer_value(json_array_get(want, j)))
                fail_msg("%s: tokenize case %zu: id[%zu] = %d (%s), expected %d", fx->dir, i, j,
                         ids[j], engine_token_text(m, ids[j]) ? engine_token_text(m, ids[j]) : "?",
                         (int)json_integer_value(json_array_get(want, j)));

        /* A smaller max_length keeps [CLS], the first pieces and [SEP]. */
        if (n_want > 5) {
            rc = engine_tokenize(m, fx->texts[i], fx->lens[i], 5, ids, cap, &n_ids, &err);
            assert_int_equal(rc, 0);
            assert_int_equal(n_ids, 5);
            for (size_t j = 0; j < 4; j++)
                assert_int_equal(ids[j], json_integer_value(json_array_get(want, j)));
            assert_int_equal(ids[4], json_integer_value(json_array_get(want, n_want - 1)));
            /* Too small an output buffer is the caller's error. */
            rc = engine_tokenize(m, fx->texts[i], fx->lens[i], 0, ids, 2, &n_ids, &err);
            assert_int_equal(rc, ENGINE_EARG);
        }
    }
    free(ids);
}

static void check_classify(const fixture *fx, engine_model *m)
{
    engine_error err = {0};
    int nl = fx->n_labels;
    float *logits = calloc(fx->n * (size_t)(nl ? nl : 1), sizeof *logits);
    float *probs = calloc(fx->n * (size_t)(nl ? nl : 1), sizeof *probs);
    assert_non_null(logits);
    assert_non_null(probs);
    if (nl == 0) {
        int rc = engine_classify(m, fx->texts, fx->lens, fx->n, logits, probs, &err);
        assert_int_equal(rc, ENGINE_EUNSUPPORTED);
        assert_int_equal(err.status, ENGINE_EUNSUPPORTED);
    } else {
        int rc = engine_classify(m, fx->texts, fx->lens, fx->n, logits, probs, &err);
        if (rc != 0)
            fail_msg("%s: classify batch: %s: %s", fx->dir, engine_status_name(rc), err.message);
        for (size_t i = 0; i < fx->n; i++) {
            check_close(fx, "classify batch", i, "logits", logits + i * (size_t)nl, nl);
            check_close(fx, "classify batch", i, "probs", probs + i * (size_t)nl, nl);
        }
        for (size_t i = 0; i < fx->n; i++) {
            rc = engine_classify(m, &fx->texts[i], &fx->lens[i], 1, logits, probs, &err);
            if (rc != 0)
                fail_msg("%s: classify case %zu: %s: %s", fx->dir, i, engine_status_name(rc),
                         err.message);
            check_close(fx, "classify single", i, "logits", logits, nl);
            check_close(fx, "classify single", i, "probs", probs, nl);
            /* Either output may be NULL. */
            rc = engine_classify(m, &fx->texts[i], &fx->lens[i], 1, NULL, probs, &err);
            assert_int_equal(rc, 0);
            check_close(fx, "classify probs only", i, "probs", probs, nl);
        }
    }
    free(logits);
    free(probs);
}

/* Expected normalised mean: the reference mean scaled to unit length. */
static void check_normalized(const fixture *fx, size_t case_i, const float *got)
{
    json_t *want = json_object_get(json_array_get(fx->cases, case_i), "mean");
    double norm_want = 0, norm_got = 0;
    for (int j = 0; j < fx->hidden; j++) {
        double w = json_number_value(json_array_get(want, (size_t)j));
        norm_want += w * w;
        norm_got += (double)got[j] * got[j];
    }
    norm_want = sqrt(norm_want);
    if (fabs(sqrt(norm_got) - 1.0) > fx->tol)
        fail_msg("%s: case %zu: normalised mean has norm %.7g", fx->dir, case_i, sqrt(norm_got));
    for (int j = 0; j < fx->hidden; j++) {
        double w = json_number_value(json_array_get(want, (size_t)j)) / norm_want;
        double e = fabs((double)got[j] - w);
        if (!(e <= fx->tol))
            fail_msg("%s: case %zu: normalised mean[%d] = %.7g, expected %.7g", fx->dir, case_i, j,
                     (double)got[j], w);
        if (e > g_max_err)
            g_max_err = e;
    }
}

static void check_embed(const fixture *fx, engine_model *m)
{
    static const struct {
        engine_pooling pooling;
        const char *key;
    } pools[] = {{ENGINE_POOL_MEAN, "mean"}, {ENGINE_POOL_CLS, "cls"}};
    engine_error err = {0};
    size_t h = (size_t)fx->hidden;
    float *out = calloc(fx->n * h, sizeof *out);
    assert_non_null(out);
    for (size_t p = 0; p < sizeof pools / sizeof pools[0]; p++) {
        int rc = engine_embed(m, fx->texts, fx->lens, fx->n, pools[p].pooling, 0, out, &err);
        if (rc != 0)
            fail_msg("%s: embed batch: %s: %s", fx->dir, engine_status_name(rc), err.message);
        for (size_t i = 0; i < fx->n; i++)
            check_close(fx, "embed batch", i, pools[p].key, out + i * h, fx->hidden);
        for (size_t i = 0; i < fx->n; i++) {
            rc = engine_embed(m, &fx->texts[i], &fx->lens[i], 1, pools[p].pooling, 0, out, &err);
            if (rc != 0)
                fail_msg("%s: embed case %zu: %s: %s", fx->dir, i, engine_status_name(rc),
                         err.message);
            check_close(fx, "embed single", i, pools[p].key, out, fx->hidden);
        }
    }
    int rc = engine_embed(m, fx->texts, fx->lens, fx->n, ENGINE_POOL_MEAN, 1, out, &err);
    if (rc != 0)
        fail_msg("%s: embed normalised: %s: %s", fx->dir, engine_status_name(rc), err.message);
    for (size_t i = 0; i < fx->n; i++)
        check_normalized(fx, i, out + i * h);
    free(out);
}

/* True if `message` contains the number `index` not as part of a longer number. */
static int mentions_index(const char *message, size_t index)
{
    char num[32];
    snprintf(num, sizeof num, "%zu", index);
    size_t len = strlen(num);
    for (const char *p = strstr(message, num); p; p = strstr(p + 1, num)) {
        int before = p > message && p[-1] >= '0' && p[-1] <= '9';
        int after = p[len] >= '0' && p[len] <= '9';
        if (!before && !after)
            return 1;
    }
    return 0;
}

static void check_invalid_utf8(const fixture *fx, engine_model *m)
{
    static const char bad[] = "fine start \xff\xfe then garbage";
    const char *texts[] = {"a good text", "another good one", bad};
    size_t lens[] = {strlen(texts[0]), strlen(texts[1]), sizeof bad - 1};
    size_t nl = (size_t)(fx->n_labels ? fx->n_labels : 1);
    float *out = calloc(3 * ((size_t)fx->hidden + nl), sizeof *out);
    assert_non_null(out);
    engine_error err = {0};
    int rc;
    if (fx->n_labels) {
        rc = engine_classify(m, texts, lens, 3, out, out + 3 * nl, &err);
        assert_int_equal(rc, ENGINE_EINPUT);
        assert_int_equal(err.status, ENGINE_EINPUT);
        if (!mentions_index(err.message, 2))
            fail_msg("%s: classify error does not name text 2: \"%s\"", fx->dir, err.message);
    }
    memset(&err, 0, sizeof err);
    rc = engine_embed(m, texts, lens, 3, ENGINE_POOL_MEAN, 1, out, &err);
    assert_int_equal(rc, ENGINE_EINPUT);
    if (!mentions_index(err.message, 2))
        fail_msg("%s: embed error does not name text 2: \"%s\"", fx->dir, err.message);

    int32_t ids[64];
    size_t n_ids = 0;
    rc = engine_tokenize(m, bad, sizeof bad - 1, 0, ids, 64, &n_ids, &err);
    assert_int_equal(rc, ENGINE_EINPUT);
    free(out);
}

/* engine_text_is_blank follows the model's tokenizer: exactly when
 * engine_tokenize gives the two special tokens alone. WordPiece: white space
 * and format characters are blank; a lone combining mark only where accents
 * are stripped (uncased models). Byte-level BPE keeps every byte. */
static void check_blank(const fixture *fx, engine_model *m)
{
    /* U+3000 U+00A0 U+2028 U+200B among ASCII white space */
    static const char space[] = " \xE3\x80\x80\xC2\xA0\xE2\x80\xA8\xE2\x80\x8B\t";
    static const char letter[] = "\xE3\x80\x80x";
    static const char mark[] = "\xCC\x81\xCC\x81"; /* U+0301 twice */
    static const char *const texts[] = {space, "", letter, mark, "  ", "\xE2\x80\x8B"};
    const char *kind = engine_model_get_info(m)->tokenizer;
    assert_true(engine_text_is_blank(m, "", 0));
    assert_false(engine_text_is_blank(m, letter, sizeof letter - 1));
    if (strcmp(kind, "WordPiece") == 0)
        assert_true(engine_text_is_blank(m, space, sizeof space - 1));
    if (strcmp(kind, "BPE") == 0)
        assert_false(engine_text_is_blank(m, " ", 1));
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t ids[32];
        size_t n_ids = 0;
        engine_error err = {0};
        assert_int_equal(engine_tokenize(m, texts[i], strlen(texts[i]), 0, ids, 32, &n_ids, &err), 0);
        if (engine_text_is_blank(m, texts[i], strlen(texts[i])) != (n_ids == 2))
            fail_msg("%s: text %zu: blank %d but %zu ids", fx->dir, i,
                     engine_text_is_blank(m, texts[i], strlen(texts[i])), n_ids);
    }
    if (strcmp(kind, "WordPiece") == 0 &&
        engine_text_is_blank(m, mark, sizeof mark - 1) != engine_model_get_info(m)->do_lower_case)
        fail_msg("%s: combining marks: blank %d, do_lower_case %d", fx->dir,
                 engine_text_is_blank(m, mark, sizeof mark - 1), engine_model_get_info(m)->do_lower_case);
}

/* Pairs as cross-encoders see them: ids and token types exactly, then
 * logits and probabilities, all pairs in one batch and one at a time; a
 * pair with invalid UTF-8 fails the batch naming the pair and the text. */
static void check_pairs(const fixture *fx, engine_model *m)
{
    json_t *pairs = json_object_get(fx->root, "pairs");
    if (!pairs)
        return;
    const size_t n = json_array_size(pairs), nl = (size_t)fx->n_labels;
    assert_true(n > 0 && nl > 0);
    const char **a = calloc(n, sizeof *a), **b = calloc(n, sizeof *b);
    size_t *a_lens = calloc(n, sizeof *a_lens), *b_lens = calloc(n, sizeof *b_lens);
    float *logits = calloc(n * nl, sizeof *logits), *probs = calloc(n * nl, sizeof *probs);
    const size_t cap = (size_t)fx->max_length;
    int32_t *ids = calloc(cap, sizeof *ids);
    uint8_t *types = calloc(cap, 1);
    assert_true(a && b && a_lens && b_lens && logits && probs && ids && types);
    engine_error err = {0};
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(pairs, i);
        a[i] = json_string_value(json_object_get(p, "a"));
        b[i] = json_string_value(json_object_get(p, "b"));
        assert_true(a[i] && b[i]);
        a_lens[i] = json_string_length(json_object_get(p, "a"));
        b_lens[i] = json_string_length(json_object_get(p, "b"));
        json_t *want = json_object_get(p, "ids"), *want_types = json_object_get(p, "types");
        size_t n_ids = 0;
        int rc = engine_tokenize_pair(m, a[i], a_lens[i], b[i], b_lens[i], 0, ids, types, cap, &n_ids, &err);
        if (rc != 0)
            fail_msg("%s: tokenize pair %zu: %s: %s", fx->dir, i, engine_status_name(rc), err.message);
        if (n_ids != json_array_size(want))
            fail_msg("%s: pair %zu: %zu ids, expected %zu", fx->dir, i, n_ids, json_array_size(want));
        for (size_t j = 0; j < n_ids; j++)
            if (ids[j] != json_integer_value(json_array_get(want, j)) ||
                types[j] != json_integer_value(json_array_get(want_types, j)))
                fail_msg("%s: pair %zu: id[%zu] = %d type %d, expected %d type %d", fx->dir, i, j, ids[j],
                         types[j], (int)json_integer_value(json_array_get(want, j)),
                         (int)json_integer_value(json_array_get(want_types, j)));
    }
    int rc = engine_classify_pairs(m, a, a_lens, b, b_lens, n, logits, probs, NULL, &err);
    if (rc != 0)
        fail_msg("%s: classify pairs: %s: %s", fx->dir, engine_status_name(rc), err.message);
    for (size_t i = 0; i < n; i++) {
        check_pair_close(fx, "classify pairs batch", i, "logits", logits + i * nl, (int)nl);
        check_pair_close(fx, "classify pairs batch", i, "probs", probs + i * nl, (int)nl);
        engine_stats stats = {0};
        rc = engine_classify_pairs(m, &a[i], &a_lens[i], &b[i], &b_lens[i], 1, logits, probs, &stats, &err);
        assert_int_equal(rc, 0);
        assert_int_equal(stats.n_tokens, json_array_size(json_object_get(json_array_get(pairs, i), "ids")));
        check_pair_close(fx, "classify pair", i, "logits", logits, (int)nl);
        check_pair_close(fx, "classify pair", i, "probs", probs, (int)nl);
    }
    static const char bad[] = "ok \xC3";
    const char *bad_b[] = {b[0], bad};
    const size_t bad_lens[] = {b_lens[0], sizeof bad - 1};
    rc = engine_classify_pairs(m, a, a_lens, bad_b, bad_lens, 2, logits, probs, NULL, &err);
    assert_int_equal(rc, ENGINE_EINPUT);
    if (!strstr(err.message, "pair 1") || !strstr(err.message, "second"))
        fail_msg("%s: bad pair error: \"%s\"", fx->dir, err.message);
    free(a);
    free(b);
    free(a_lens);
    free(b_lens);
    free(logits);
    free(probs);
    free(ids);
    free(types);
}

static void test_fixture(void **state)
{
    const char *name = *state;
    fixture fx;
    fixture_open(&fx, name);
    for (int threads = 1; threads <= 2; threads++) {
        engine_options opts = {.n_threads = threads};
        engine_model *m = NULL;
        engine_error err = {0};
        int rc = engine_model_load(fx.dir, &opts, &m, &err);
        if (rc != 0)
            fail_msg("%s: load: %s: %s", fx.dir, engine_status_name(rc), err.message);
        assert_non_null(m);
        check_info(&fx, m);
        check_tokenize(&fx, m);
        check_classify(&fx, m);
        check_embed(&fx, m);
        check_invalid_utf8(&fx, m);
        check_blank(&fx, m);
        check_pairs(&fx, m);
        engine_model_free(m);
    }
    fixture_close(&fx);
}

int main(void)
{
    static char names[MAX_FIXTURES][256];
    static struct CMUnitTest tests[MAX_FIXTURES];
    const int n = fixture_names("test_model", names);
    if (n < 0)
        return 1;
    for (int i = 0; i < n; i++)
        tests[i] = (struct CMUnitTest){names[i], test_fixture, NULL, NULL, names[i]};
    int failed = _cmocka_run_group_tests("engine_model_fixtures", tests, (size_t)n, NULL, NULL);
    printf("max |engine - reference| over all checks: %.3g\n", g_max_err);
    return failed;
}
