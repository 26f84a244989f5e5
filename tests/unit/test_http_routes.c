/*
 * test_http_routes.c - the one route table (src/http/routes.c) checked as
 * data: every row well formed (a path pattern of literal segments and known
 * placeholders, methods, a label, a handler or inference ops, never both,
 * and its OpenAPI entry), no two rows answering the same method on the same
 * pattern, the rows of one path sharing their scope (the key is checked
 * before the method), and every label a route pattern rather than a
 * client's path. Reaches the table through the test-only
 * aiserve_http_internal target.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http_int.h"

static int placeholder_known(const char *seg, size_t n) {
    static const char *const kinds[] = {"{name}", "{version}", "{ref}", "{id}", "{alias}", "{file}"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strlen(kinds[i]) == n && memcmp(kinds[i], seg, n) == 0)
            return 1;
    return 0;
}

static void test_rows_well_formed(void **state) {
    (void)state;
    assert_true(http_n_routes > 20);
    for (size_t i = 0; i < http_n_routes; i++) {
        const http_route *r = &http_routes[i];
        assert_non_null(r->pattern);
        assert_int_equal(r->pattern[0], '/');
        assert_true(r->methods != 0);
        assert_true((r->methods & ~(unsigned)(HTTP_GET | HTTP_POST | HTTP_PUT | HTTP_DELETE)) == 0);
        assert_true((r->handler != NULL) != (r->infer != NULL));
        if (r->infer)
            assert_int_equal(r->methods, HTTP_POST);
        assert_non_null(r->label);
        assert_int_equal(r->label[0], '/');
        /* The OpenAPI entry: a summary, a body only where the method takes
         * one, and "<status>[=<body>]" answers, exactly one of them 2xx
         * (or a redirect, 3xx). */
        assert_non_null(r->doc.summary);
        assert_true(r->doc.summary[0] != '\0');
        assert_true(r->doc.request == NULL || (r->methods & ~(unsigned)HTTP_GET) != 0);
        assert_non_null(r->doc.responses);
        int n_ok = 0;
        for (const char *p = r->doc.responses; *p;) {
            size_t n = strcspn(p, " ");
            assert_true(n >= 3 && p[0] >= '2' && p[0] <= '5' && (n == 3 || p[3] == '='));
            n_ok += p[0] == '2' || p[0] == '3';
            p += n + (p[n] == ' ');
        }
        assert_int_equal(n_ok, 1);
        size_t len = strlen(r->pattern);
        assert_true(len == 1 || r->pattern[len - 1] != '/');
        for (const char *p = r->pattern + 1; *p;) {
            size_t n = strcspn(p, "/");
            assert_true(n > 0); /* no empty segment */
            if (p[0] == '{')
                assert_true(placeholder_known(p, n));
            else
                assert_null(memchr(p, '{', n));
            p += n + (p[n] == '/');
        }
    }
}

static void test_no_row_twice(void **state) {
    (void)state;
    for (size_t i = 0; i < http_n_routes; i++) {
        for (size_t j = i + 1; j < http_n_routes; j++) {
            const http_route *a = &http_routes[i], *b = &http_routes[j];
            if (strcmp(a->pattern, b->pattern) != 0)
                continue;
            if (a->methods & b->methods)
                fail_msg("%s is routed twice for the same method", a->pattern);
            assert_int_equal(a->scope, b->scope);
            assert_string_equal(a->label, b->label);
        }
    }
}

/* pattern with "/versions/{version}" taken out and each placeholder
 * written "{}", into out[cap]. */
static void shape(const char *pattern, int drop_version, char *out, size_t cap) {
    size_t k = 0;
    for (const char *p = pattern; *p && k + 3 < cap;) {
        if (drop_version && strncmp(p, "/versions/{", 11) == 0) {
            p = strchr(p + 11, '}') + 1;
            continue;
        }
        if (*p == '{') {
            out[k++] = '{', out[k++] = '}';
            p = strchr(p, '}') + 1;
            continue;
        }
        out[k++] = *p++;
    }
    out[k] = '\0';
}

static void test_labels_are_patterns(void **state) {
    (void)state;
    /* A label is its row's own pattern: placeholders may be named for the
     * reader ({task_id} for {id}), and a versioned path may share its
     * model's label ("/v2/models/{name}" for ".../versions/{version}"), so
     * a label is never a value a client chose nor another route's. */
    for (size_t i = 0; i < http_n_routes; i++) {
        const http_route *r = &http_routes[i];
        char label[256], exact[256], unversioned[256];
        shape(r->label, 0, label, sizeof label);
        shape(r->pattern, 0, exact, sizeof exact);
        shape(r->pattern, 1, unversioned, sizeof unversioned);
        if (strcmp(label, exact) != 0 && strcmp(label, unversioned) != 0)
            fail_msg("route %s is labelled %s", r->pattern, r->label);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_well_formed),
        cmocka_unit_test(test_no_row_twice),
        cmocka_unit_test(test_labels_are_patterns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
