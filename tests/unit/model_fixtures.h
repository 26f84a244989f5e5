/*
 * model_fixtures.h - the engine's golden fixtures (tests/fixtures/models,
 * written by tools/make_fixtures.py) for the tests that run every one of
 * them: a fixture's expected.json parsed, its texts as pointer/length
 * pairs, and the sorted list of fixture names. Header-only (static
 * functions): each including test is one file. Include after cmocka.h and
 * jansson.h.
 */
#ifndef AISERVE_TESTS_MODEL_FIXTURES_H
#define AISERVE_TESTS_MODEL_FIXTURES_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE_ROOT AISERVE_SOURCE_DIR "/tests/fixtures/models"
#define MAX_FIXTURES 64

typedef struct fixture {
    char dir[1024];
    json_t *root;
    json_t *info; /* the "model" block */
    json_t *cases;
    size_t n;
    const char **texts;
    size_t *lens;
    double tol;
    int max_length;
    int hidden;
    int n_labels;
} fixture;

static void fixture_open(fixture *fx, const char *name) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "%s/%s", FIXTURE_ROOT, name);
    char path[1100];
    snprintf(path, sizeof path, "%s/expected.json", fx->dir);
    json_error_t jerr;
    fx->root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!fx->root)
        fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
    fx->info = json_object_get(fx->root, "model");
    fx->cases = json_object_get(fx->root, "cases");
    assert_non_null(fx->info);
    assert_true(json_is_array(fx->cases));
    fx->n = json_array_size(fx->cases);
    assert_true(fx->n > 0);
    fx->tol = json_real_value(json_object_get(fx->root, "tolerance"));
    assert_true(fx->tol > 0);
    fx->max_length = (int)json_integer_value(json_object_get(fx->root, "max_length"));
    fx->hidden = (int)json_integer_value(json_object_get(fx->info, "hidden"));
    fx->n_labels = (int)json_array_size(json_object_get(fx->info, "labels"));
    fx->texts = calloc(fx->n, sizeof *fx->texts);
    fx->lens = calloc(fx->n, sizeof *fx->lens);
    assert_non_null(fx->texts);
    assert_non_null(fx->lens);
    for (size_t i = 0; i < fx->n; i++) {
        json_t *text = json_object_get(json_array_get(fx->cases, i), "text");
        assert_true(json_is_string(text));
        fx->texts[i] = json_string_value(text);
        fx->lens[i] = json_string_length(text);
    }
}

static void fixture_close(fixture *fx) {
    free(fx->texts);
    free(fx->lens);
    json_decref(fx->root);
}

static int fixture_compare_names(const void *a, const void *b) { return strcmp(a, b); }

/* The fixtures' directory names, sorted, into names; their count, or -1
 * (with a message naming `prog`) when the directory cannot be read, is
 * empty or holds more than MAX_FIXTURES. */
static int fixture_names(const char *prog, char names[MAX_FIXTURES][256]) {
    int n = 0;
    DIR *d = opendir(FIXTURE_ROOT);
    if (!d) {
        fprintf(stderr, "%s: cannot open %s (run tools/make_fixtures.py)\n", prog, FIXTURE_ROOT);
        return -1;
    }
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        if (n == MAX_FIXTURES) {
            fprintf(stderr, "%s: more than %d fixtures\n", prog, MAX_FIXTURES);
            closedir(d);
            return -1;
        }
        snprintf(names[n++], 256, "%s", e->d_name);
    }
    closedir(d);
    if (n == 0) {
        fprintf(stderr, "%s: no fixtures in %s\n", prog, FIXTURE_ROOT);
        return -1;
    }
    qsort(names, (size_t)n, sizeof names[0], fixture_compare_names);
    return n;
}

#endif
