/*
 * test_engine_load.c - a broken model directory is a clear load error that
 * names the file and the problem; never a crash, never a half-loaded model.
 *
 * Each case copies a good fixture model to a scratch directory, breaks one
 * thing (a config key, a file, the tensors) and loads it. Also: where
 * sentence_bert_config.json's max_seq_length sets the truncation, and what
 * problem_type regression does to a classifier with several labels.
 */
#include <fcntl.h>
#include <jansson.h>
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

#include "engine.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/models"

static char scratch[256];

static void copy_fixture(const char *name) {
    char cmd[1024];
    snprintf(scratch, sizeof scratch, "/tmp/aiserve-load-XXXXXX");
    assert_non_null(mkdtemp(scratch));
    snprintf(cmd, sizeof cmd, "cp -r '%s/%s/.' '%s/'", FIXTURES, name, scratch);
    assert_int_equal(system(cmd), 0);
}

static void remove_scratch(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    assert_int_equal(system(cmd), 0);
}

static void path_of(char *out, size_t cap, const char *file) { snprintf(out, cap, "%s/%s", scratch, file); }

/* Sets config.json[key] = value (value taken), or deletes key if value NULL. */
static void edit_config(const char *key, json_t *value) {
    char path[512];
    path_of(path, sizeof path, "config.json");
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    if (value)
        json_object_set_new(root, key, value);
    else
        json_object_del(root, key);
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
}

static void write_file(const char *file, const char *text) {
    char path[512];
    path_of(path, sizeof path, file);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Loads the scratch dir; expects `status` and every needle in the message. */
static void expect_load_error(int status, const char *needle1, const char *needle2) {
    engine_model *m = (engine_model *)1;
    engine_error err = {0};
    engine_options opts = {.n_threads = 2};
    int rc = engine_model_load(scratch, &opts, &m, &err);
    if (rc != status || (needle1 && !strstr(err.message, needle1)) ||
        (needle2 && !strstr(err.message, needle2)))
        print_error("rc %d (%s), message: %s\n", rc, engine_status_name(rc), err.message);
    assert_int_equal(rc, status);
    assert_null(m);
    if (needle1)
        assert_non_null(strstr(err.message, needle1));
    if (needle2)
        assert_non_null(strstr(err.message, needle2));
    assert_null(strchr(err.message, '\n')); /* one line */
    assert_int_equal(err.status, status);
    assert_true(strncmp(engine_status_name(rc), "ENGINE_E", 8) == 0);
    assert_true(strlen(engine_status_message(rc)) > 0 && strcmp(engine_status_message(rc), "unknown status"));
    remove_scratch();
}

static void test_good_fixture_loads(void **state) {
    (void)state;
    copy_fixture("distilbert-f32");
    engine_model *m = NULL;
    engine_error err = {0};
    assert_int_equal(engine_model_load(scratch, NULL, &m, &err), 0);
    assert_non_null(m);
    engine_model_free(m);
    remove_scratch();
}

static void test_missing_dir_and_files(void **state) {
    (void)state;
    engine_model *m = NULL;
    engine_error err = {0};
    assert_int_equal(engine_model_load("/nonexistent/model", NULL, &m, &err), ENGINE_EIO);
    assert_non_null(strstr(err.message, "/nonexistent/model"));

    copy_fixture("distilbert-f32");
    char path[512];
    path_of(path, sizeof path, "config.json");
    unlink(path);
    expect_load_error(ENGINE_EIO, "config.json", "cannot open");

    copy_fixture("distilbert-f32");
    path_of(path, sizeof path, "vocab.txt");
    unlink(path);
    expect_load_error(ENGINE_EIO, "vocab.txt", "tokenizer.json");

    copy_fixture("distilbert-f32");
    path_of(path, sizeof path, "model.safetensors");
    unlink(path);
    expect_load_error(ENGINE_EIO, "model.safetensors", "missing");

    /* Without model.safetensors, pytorch_model.bin is read (checkpoint.h):
     * a safetensors file under that name is not the zip torch.save writes. */
    copy_fixture("distilbert-f32");
    path_of(path, sizeof path, "model.safetensors");
    char bin[512];
    path_of(bin, sizeof bin, "pytorch_model.bin");
    assert_int_equal(rename(path, bin), 0);
    expect_load_error(ENGINE_EFORMAT, "pytorch_model.bin", "not a zip archive");
}

/* A model whose weights are only pytorch_model.bin (torch.save of the same
 * tensors) loads and computes what its safetensors twin computes. */
static void test_pytorch_model_bin_loads(void **state) {
    (void)state;
    engine_options opts = {.n_threads = 2};
    const char *text = "it 's a charming and often affecting journey .";
    const size_t len = strlen(text);
    float want[2], got[2];
    for (int i = 0; i < 2; i++) {
        copy_fixture("bert-f32");
        if (i == 1) {
            char path[512], cmd[1024];
            path_of(path, sizeof path, "model.safetensors");
            unlink(path);
            snprintf(cmd, sizeof cmd, "cp '%s/tests/fixtures/torchbin/bert-f32.bin' '%s/pytorch_model.bin'",
                     AISERVE_SOURCE_DIR, scratch);
            assert_int_equal(system(cmd), 0);
        }
        engine_model *m = NULL;
        engine_error err = {0};
        int rc = engine_model_load(scratch, &opts, &m, &err);
        if (rc)
            print_error("%s\n", err.message);
        assert_int_equal(rc, 0);
        assert_int_equal(engine_classify(m, &text, &len, 1, i ? got : want, NULL, &err), 0);
        engine_model_free(m);
        remove_scratch();
    }
    assert_memory_equal(got, want, sizeof got);
}

static void test_bad_config(void **state) {
    (void)state;
    copy_fixture("distilbert-f32");
    write_file("config.json", "{\"model_type\": \"distilbert\",");
    expect_load_error(ENGINE_ECONFIG, "config.json", "invalid JSON");

    copy_fixture("distilbert-f32");
    edit_config("model_type", json_string("gpt2"));
    expect_load_error(ENGINE_EUNSUPPORTED, "config.json", "gpt2");

    copy_fixture("distilbert-f32");
    edit_config("architectures", json_pack("[s]", "BertForSequenceClassification"));
    expect_load_error(ENGINE_ECONFIG, "config.json", "contradicts");

    copy_fixture("bert-f32");
    edit_config("architectures", json_pack("[s]", "BertForQuestionAnswering"));
    expect_load_error(ENGINE_EUNSUPPORTED, "config.json", "BertForQuestionAnswering");

    copy_fixture("distilbert-f32");
    edit_config("dim", NULL);
    expect_load_error(ENGINE_ECONFIG, "config.json", "'dim'");

    copy_fixture("distilbert-f32");
    edit_config("n_heads", json_string("four"));
    expect_load_error(ENGINE_ECONFIG, "config.json", "'n_heads'");

    copy_fixture("distilbert-f32");
    edit_config("n_heads", json_integer(5));
    expect_load_error(ENGINE_ECONFIG, "config.json", "multiple");

    copy_fixture("bert-f32");
    edit_config("hidden_act", json_string("swish"));
    expect_load_error(ENGINE_EUNSUPPORTED, "config.json", "swish");

    copy_fixture("bert-f32");
    edit_config("id2label", json_pack("{s:s,s:s}", "0", "A", "2", "C"));
    expect_load_error(ENGINE_ECONFIG, "config.json", "id2label");

    copy_fixture("bert-f32");
    edit_config("problem_type", json_string("ordinal_regression"));
    expect_load_error(ENGINE_EUNSUPPORTED, "config.json", "ordinal_regression");

    copy_fixture("bert-f32");
    edit_config("problem_type", json_integer(1));
    expect_load_error(ENGINE_ECONFIG, "config.json", "'problem_type'");

    copy_fixture("bert-f32");
    write_file("tokenizer_config.json", "{\"do_lower_case\": \"yes\"}");
    expect_load_error(ENGINE_ECONFIG, "tokenizer_config.json", "do_lower_case");
}

static void test_config_contradicts_tensors(void **state) {
    (void)state;
    copy_fixture("distilbert-f32");
    edit_config("dim", json_integer(64));
    expect_load_error(ENGINE_ECONFIG, "word_embeddings", "config.json implies");

    copy_fixture("bert-f32");
    edit_config("num_hidden_layers", json_integer(3));
    expect_load_error(ENGINE_ECONFIG, "encoder.layer.2.", "missing");

    copy_fixture("bert-f32");
    edit_config("intermediate_size", json_integer(65));
    expect_load_error(ENGINE_ECONFIG, "intermediate.dense.weight", "shape");

    copy_fixture("distilbert-f32");
    edit_config("id2label", json_pack("{s:s,s:s,s:s}", "0", "A", "1", "B", "2", "C"));
    expect_load_error(ENGINE_ECONFIG, "classifier.weight", "3 labels");

    copy_fixture("distilbert-f32");
    edit_config("vocab_size", json_integer(100));
    expect_load_error(ENGINE_ECONFIG, "vocabulary", "vocab_size");
}

static void test_corrupt_weights(void **state) {
    (void)state;
    char path[512];
    copy_fixture("distilbert-f32");
    path_of(path, sizeof path, "model.safetensors");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size / 2), 0);
    expect_load_error(ENGINE_EFORMAT, "model.safetensors", "outside the data section");

    copy_fixture("distilbert-f32");
    path_of(path, sizeof path, "model.safetensors");
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "\xff\xff\xff\x7f", 4, 0), 4); /* header length past the end */
    close(fd);
    expect_load_error(ENGINE_EFORMAT, "model.safetensors", "past the end");

    copy_fixture("distilbert-f32");
    write_file("model.safetensors", "");
    expect_load_error(ENGINE_EFORMAT, "model.safetensors", "too short");
}

/* RoBERTa, XLM-R and MPNet checkpoints: their own keys and tensors. */
static void test_new_architectures(void **state) {
    (void)state;
    copy_fixture("roberta-cls");
    edit_config("architectures", json_pack("[s]", "XLMRobertaForSequenceClassification"));
    expect_load_error(ENGINE_ECONFIG, "config.json", "contradicts");

    copy_fixture("roberta-cls");
    edit_config("max_position_embeddings", json_integer(3)); /* pad 1: positions 2.. */
    expect_load_error(ENGINE_ECONFIG, "config.json", "max_position_embeddings");

    copy_fixture("roberta-cls");
    edit_config("pad_token_id", json_integer(-1));
    expect_load_error(ENGINE_ECONFIG, "config.json", "'pad_token_id'");

    copy_fixture("roberta-cls");
    edit_config("vocab_size", json_integer(900));
    expect_load_error(ENGINE_ECONFIG, "tokenizer.json", "vocab_size");

    copy_fixture("xlmr-reranker");
    edit_config("id2label", json_pack("{s:s,s:s}", "0", "A", "1", "B"));
    expect_load_error(ENGINE_ECONFIG, "classifier.out_proj.weight", "2 labels");

    copy_fixture("mpnet-cls");
    edit_config("relative_attention_num_buckets", json_integer(16));
    expect_load_error(ENGINE_ECONFIG, "config.json", "relative_attention_num_buckets");

    copy_fixture("mpnet-cls");
    edit_config("relative_attention_num_buckets", json_integer(64));
    expect_load_error(ENGINE_ECONFIG, "encoder.relative_attention_bias.weight", "config.json implies");

    copy_fixture("mpnet-cls");
    edit_config("num_attention_heads", json_integer(2));
    expect_load_error(ENGINE_ECONFIG, "relative_attention_bias", "config.json implies");
}

/* Loads the scratch directory and returns its max_length. */
static int loaded_max_length(void) {
    engine_model *m = NULL;
    engine_error err = {0};
    if (engine_model_load(scratch, NULL, &m, &err) != 0)
        fail_msg("load: %s", err.message);
    int n = engine_model_get_info(m)->max_length;
    /* A long text is cut there. */
    char text[2000] = "";
    for (int i = 0; i < 100; i++)
        strcat(text, "the film . ");
    int32_t ids[600];
    size_t n_ids = 0;
    assert_int_equal(engine_tokenize(m, text, strlen(text), 0, ids, 600, &n_ids, &err), 0);
    assert_int_equal(n_ids, n);
    engine_model_free(m);
    return n;
}

/* sentence-transformers truncates at sentence_bert_config.json's
 * max_seq_length instead of model_max_length, never past the positions. */
static void test_sentence_transformers_max_seq_length(void **state) {
    (void)state;
    copy_fixture("mpnet-embed"); /* max_seq_length 48, positions for 64 */
    assert_int_equal(loaded_max_length(), 48);
    write_file("sentence_bert_config.json", "{\"max_seq_length\": 20, \"do_lower_case\": false}");
    assert_int_equal(loaded_max_length(), 20);
    write_file("sentence_bert_config.json", "{\"max_seq_length\": 1000}");
    assert_int_equal(loaded_max_length(), 64);
    write_file("sentence_bert_config.json", "{\"max_seq_length\": null}");
    assert_int_equal(loaded_max_length(), 64);
    char path[512];
    path_of(path, sizeof path, "sentence_bert_config.json");
    unlink(path);
    assert_int_equal(loaded_max_length(), 64); /* tokenizer_config.json's 512, capped */
    remove_scratch();

    copy_fixture("mpnet-embed");
    write_file("sentence_bert_config.json", "{\"max_seq_length\": \"long\"}");
    expect_load_error(ENGINE_ECONFIG, "sentence_bert_config.json", "max_seq_length");

    copy_fixture("mpnet-embed");
    write_file("sentence_bert_config.json", "[384]");
    expect_load_error(ENGINE_ECONFIG, "sentence_bert_config.json", "not a JSON object");
}

/* problem_type regression with several labels (transformers allows it: one
 * float target per label): the same logits as without it, and the scores
 * are those logits, for texts and for pairs (the one-label case is the
 * roberta-regression fixture, test_model.c). */
static void test_regression_labels(void **state) {
    (void)state;
    static const char *const texts[] = {"a gripping film", "dull", "Hello, world!"};
    static const size_t lens[] = {15, 4, 13};
    enum { N = 3, K = 3 };
    engine_model *plain = NULL, *reg = NULL;
    engine_error err = {0};
    assert_int_equal(engine_model_load(FIXTURES "/roberta-cls", NULL, &plain, &err), 0);
    copy_fixture("roberta-cls");
    edit_config("problem_type", json_string("regression"));
    if (engine_model_load(scratch, NULL, &reg, &err) != 0)
        fail_msg("load: %s", err.message);
    const engine_model_info *info = engine_model_get_info(reg);
    assert_int_equal(info->n_labels, K);
    assert_int_equal(info->problem_type, ENGINE_PROBLEM_REGRESSION);
    assert_int_equal(info->score_fn, ENGINE_SCORE_NONE);
    assert_string_equal(engine_score_fn_name(info->score_fn), "none");
    assert_int_equal(engine_model_get_info(plain)->score_fn, ENGINE_SCORE_SOFTMAX);
    float logits[N * K], scores[N * K], plain_logits[N * K], probs[N * K];
    assert_int_equal(engine_classify(reg, texts, lens, N, logits, scores, &err), 0);
    assert_int_equal(engine_classify(plain, texts, lens, N, plain_logits, probs, &err), 0);
    assert_memory_equal(logits, plain_logits, sizeof logits);
    assert_memory_equal(scores, logits, sizeof scores);
    assert_false(memcmp(probs, logits, sizeof probs) == 0); /* the plain model's softmax */
    assert_int_equal(engine_classify_pairs(reg, texts, lens, texts + 1, lens + 1, 2, logits, scores, NULL, &err), 0);
    assert_memory_equal(scores, logits, 2 * K * sizeof *scores);
    engine_model_free(reg);
    engine_model_free(plain);
    remove_scratch();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regression_labels),
        cmocka_unit_test(test_new_architectures),
        cmocka_unit_test(test_sentence_transformers_max_seq_length),
        cmocka_unit_test(test_good_fixture_loads),
        cmocka_unit_test(test_missing_dir_and_files),
        cmocka_unit_test(test_pytorch_model_bin_loads),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_config_contradicts_tensors),
        cmocka_unit_test(test_corrupt_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
