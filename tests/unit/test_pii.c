/*
 * test_pii.c - the guardrails' PII detectors through guard.h: what each
 * detector matches in its documented forms, and the near misses it must
 * leave alone (Luhn-invalid, short and long numbers, digits glued to
 * letters or longer runs, invalid SSN areas, bad emails, versions, dates,
 * prices); which match wins where two overlap; the actions per detector
 * and the counts; UTF-8 around matches; and streaming: every way of
 * cutting a set of texts (each single and each pair of cut points, byte by
 * byte, random chunks) releases exactly what guard_pii_apply makes of the
 * whole text, a blocked stream releases nothing more, and the held-back
 * tail stays small for prose and within its documented bound otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guard.h"

/* The stream's documented bound on held-back bytes (guard.h, docs/guardrails.md). */
#define HOLD_MAX 319

/* ---- helpers ---------------------------------------------------------- */

static guard_pii_policy policy_all(guard_pii_action a) {
    guard_pii_policy p;
    for (int t = 0; t < GUARD_PII_COUNT; t++)
        p.action[t] = a;
    return p;
}

static guard_pii_result apply(const guard_pii_policy *p, const char *text, size_t len) {
    guard_pii_result r;
    assert_int_equal(guard_pii_apply(p, text, len, &r), 0);
    assert_non_null(r.text);
    assert_int_equal(strlen(r.text), r.len);
    return r;
}

/* Every detector redacting, text in, want out. */
static void check_redacts(const char *in, const char *want) {
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    guard_pii_result r = apply(&p, in, strlen(in));
    if (strcmp(r.text, want) != 0) {
        print_error("in:   \"%s\"\nwant: \"%s\"\ngot:  \"%s\"\n", in, want, r.text);
        fail();
    }
    assert_false(r.blocked);
    free(r.text);
}

typedef struct run_result {
    char *text; /* everything released, concatenated */
    size_t len;
    unsigned found[GUARD_PII_COUNT];
    int blocked;     /* a feed or the finish returned 1 */
    size_t max_held; /* most bytes fed but not released after a feed (texts without matches) */
} run_result;

static void run_append(run_result *r, const char *s, size_t n) {
    r->text = realloc(r->text, r->len + n + 1);
    assert_non_null(r->text);
    memcpy(r->text + r->len, s, n);
    r->len += n;
    r->text[r->len] = 0;
}

/* Checks one feed's or the finish's answer and adds it to r. */
static void run_take(run_result *r, int rc, char *out, size_t out_len) {
    assert_true(rc == 0 || rc == 1);
    if (r->blocked)
        assert_int_equal(rc, 1); /* once blocked, always blocked */
    assert_non_null(out);
    assert_int_equal(strlen(out), out_len);
    if (rc == 1) {
        assert_int_equal(out_len, 0);
        r->blocked = 1;
    }
    run_append(r, out, out_len);
    free(out);
}

/* Streams text cut at cuts[0..n_cuts) (ascending offsets), then finishes. */
static run_result stream_run(const guard_pii_policy *p, const char *text, size_t len, const size_t *cuts,
                             size_t n_cuts) {
    guard_pii_stream *s = guard_pii_stream_new(p);
    assert_non_null(s);
    run_result r = {0};
    run_append(&r, "", 0);
    size_t from = 0;
    for (size_t c = 0; c <= n_cuts; c++) {
        size_t to = c < n_cuts ? cuts[c] : len;
        char *out = NULL;
        size_t out_len = 0;
        int rc = guard_pii_stream_feed(s, text + from, to - from, &out, &out_len);
        run_take(&r, rc, out, out_len);
        from = to;
        if (r.len <= to && to - r.len > r.max_held)
            r.max_held = to - r.len;
    }
    char *out = NULL;
    size_t out_len = 0;
    int rc = guard_pii_stream_finish(s, &out, &out_len);
    run_take(&r, rc, out, out_len);
    guard_pii_stream_found(s, r.found);
    guard_pii_stream_free(s);
    return r;
}

/* The stream releases what apply makes of the whole text: the same text
 * and counts; or, when apply blocks, the stream blocks too, having
 * released only a prefix of it and none of the blocked match. */
static void check_stream(const guard_pii_policy *p, const char *text, size_t len, const size_t *cuts, size_t n_cuts) {
    guard_pii_result want = apply(p, text, len);
    run_result got = stream_run(p, text, len, cuts, n_cuts);
    bool ok;
    if (!want.blocked) {
        ok = !got.blocked && got.len == want.len && memcmp(got.text, want.text, want.len) == 0 &&
             memcmp(got.found, want.found, sizeof want.found) == 0;
    } else {
        ok = got.blocked && got.len <= want.len && memcmp(got.text, want.text, got.len) == 0;
    }
    if (!ok) {
        print_error("text \"%.*s\" cut at", (int)len, text);
        for (size_t c = 0; c < n_cuts; c++)
            print_error(" %zu", cuts[c]);
        print_error("\nwant \"%s\" (blocked %d)\ngot  \"%s\" (blocked %d)\n", want.text, want.blocked, got.text,
                    got.blocked);
        fail();
    }
    free(want.text);
    free(got.text);
}

/* ---- names and actions ------------------------------------------------ */

static void test_names_and_actions(void **state) {
    (void)state;
    assert_string_equal(guard_pii_type_name(GUARD_PII_SSN), "ssn");
    assert_string_equal(guard_pii_type_name(GUARD_PII_CARD), "card");
    assert_string_equal(guard_pii_type_name(GUARD_PII_EMAIL), "email");
    assert_string_equal(guard_pii_type_name(GUARD_PII_PHONE), "phone");
    assert_string_equal(guard_pii_type_name(GUARD_PII_COUNT), "unknown");
    assert_string_equal(guard_pii_type_name((guard_pii_type)-1), "unknown");

    guard_pii_action a = GUARD_PII_BLOCK;
    assert_int_equal(guard_pii_action_parse("off", &a), 0);
    assert_int_equal(a, GUARD_PII_OFF);
    assert_int_equal(guard_pii_action_parse("Redact", &a), 0);
    assert_int_equal(a, GUARD_PII_REDACT);
    assert_int_equal(guard_pii_action_parse("BLOCK", &a), 0);
    assert_int_equal(a, GUARD_PII_BLOCK);
    const char *bad[] = {"", "none", "blocked", "redact ", "of", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a = GUARD_PII_REDACT;
        assert_int_equal(guard_pii_action_parse(bad[i], &a), -1);
        assert_int_equal(a, GUARD_PII_REDACT); /* untouched */
    }
}

/* ---- what each detector matches --------------------------------------- */

static void test_true_positives(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        /* ssn */
        {"SSN 123-45-6789.", "SSN [REDACTED:ssn]."},
        {"ssn: 078 05 1120", "ssn: [REDACTED:ssn]"},
        {"(665-01-0001)", "([REDACTED:ssn])"},
        /* card: one run, groups of 4, Amex 4-6-5, Diners 4-6-4, 13 and 19 digits */
        {"4111111111111111", "[REDACTED:card]"},
        {"card 4111 1111 1111 1111, exp 12/29", "card [REDACTED:card], exp 12/29"},
        {"5555-5555-5555-4444", "[REDACTED:card]"},
        {"Amex 3782 822463 10005", "Amex [REDACTED:card]"},
        {"Diners 3056-930902-5904", "Diners [REDACTED:card]"},
        {"13: 4222222222222", "13: [REDACTED:card]"},
        {"19: 6011 0009 9013 9420 007 and 6011000990139420007", "19: [REDACTED:card] and [REDACTED:card]"},
        {"#4111111111111111#", "#[REDACTED:card]#"},
        {"with its CVV: 4111 1111 1111 1111 123", "with its CVV: [REDACTED:card] 123"},
        /* email */
        {"mail john.doe+tag@example.co.uk.", "mail [REDACTED:email]."},
        {"<JOHN_99%x@Mail-Server.Example.ORG>", "<[REDACTED:email]>"},
        {"a@b.io", "[REDACTED:email]"},
        {"mailto:x-y@sub.example.com?subject=hi", "mailto:[REDACTED:email]?subject=hi"},
        /* phone: North American */
        {"(415) 555-0123", "[REDACTED:phone]"},
        {"(415)555-0123", "[REDACTED:phone]"},
        {"(415)-555-0123", "[REDACTED:phone]"},
        {"call 415-555-0123 now", "call [REDACTED:phone] now"},
        {"415.555.0123", "[REDACTED:phone]"},
        {"415 555 0123", "[REDACTED:phone]"},
        {"123-456-7890", "[REDACTED:phone]"},
        {"+1 415 555 0123", "[REDACTED:phone]"},
        {"+1-415-555-0123", "[REDACTED:phone]"},
        {"+1 (415) 555-0123", "[REDACTED:phone]"},
        {"+1(415)555-0123", "[REDACTED:phone]"},
        {"1-800-555-0199", "[REDACTED:phone]"},
        /* phone: international */
        {"UK: +44 20 7946 0958.", "UK: [REDACTED:phone]."},
        {"+33 1 23 45 67 89", "[REDACTED:phone]"},
        {"+4915112345678", "[REDACTED:phone]"},
        {"+81-3-1234-5678", "[REDACTED:phone]"},
        {"+61.2.9876.5432", "[REDACTED:phone]"},
        {"+12345678", "[REDACTED:phone]"},
        {"+123456789012345", "[REDACTED:phone]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_redacts(cases[i][0], cases[i][1]);
}

static void test_near_misses(void **state) {
    (void)state;
    static const char *const cases[] = {
        /* ssn: invalid area, group or serial; other shapes; glued */
        "000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "123-45 6789", "123456789",
        "a123-45-6789", "123-45-6789b", "1123-45-6789", "123-45-67890", "123--45-6789",
        /* card: Luhn-invalid, 12 and 20 digits (both Luhn-valid), glued, other groupings */
        "4111111111111112", "4111 1111 1111 1112", "411111111117", "41111111111111111115", "x4111111111111111",
        "4111111111111111x", "94111111111111111", "41111111111111110", "4111 1111-1111 1111", "4111  1111 1111 1111",
        "41 11 11 11 11 11 11 11", "411 1111 1111 1111 1", "4111.1111.1111.1111", "1 0 0 0 2 0 0 0 3 0 0 0 4 0 0 0",
        /* email */
        "john@localhost", "john@example.c", "john@.com", "@example.com", "john@-example.com", "john@example-.com",
        "user@123.456", "john@example.c0m", "john@exa_mple.com", "john @example.com", "john@ example.com",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com", /* local part of 65 */
        "@handle on social media", "josé@example.com",
        /* phone */
        "415-555-01234", "415-555.0123", "4155550123", "x415-555-0123", "415-555-0123x", "+1234567",
        "+1234567890123456", "+0 20 7946 0958", "2+12345678", "(415 555-0123", "(415)  555-0123",
        /* versions, addresses, dates, times, prices, identifiers */
        "v1.2.3.4", "release 10.4.1-2", "192.168.100.200", "2024-01-15", "15/01/2024 12:30:45",
        "2024-01-15T12:30:45Z", "$1,234,567.89", "\xe2\x82\xac 1 234 567,89", "pi 3.14159265358979",
        "ISBN 978-3-16-148410-0", "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "order #123456789012",
        "tel 555-1234", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_redacts(cases[i], cases[i]);
}

static void test_overlaps(void **state) {
    (void)state;
    /* Same start: the longer wins (an email whose local part is a phone). */
    check_redacts("415-555-0123@example.com", "[REDACTED:email]");
    /* The earlier start wins: a phone that runs into a card or an SSN... */
    check_redacts("+1 4111 1111 1111 1111", "[REDACTED:phone] 1111");
    check_redacts("+1 123-45-6789", "[REDACTED:phone]");
    /* ...and with phone off, the later match is found. */
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    p.action[GUARD_PII_PHONE] = GUARD_PII_OFF;
    const char *in[] = {"+1 4111 1111 1111 1111", "+1 123-45-6789"};
    const char *want[] = {"+1 [REDACTED:card]", "+1 [REDACTED:ssn]"};
    for (int i = 0; i < 2; i++) {
        guard_pii_result r = apply(&p, in[i], strlen(in[i]));
        assert_string_equal(r.text, want[i]);
        free(r.text);
    }
    /* Adjacent matches, each whole. */
    check_redacts("123-45-6789,415-555-0123;a@b.io 4111111111111111",
                  "[REDACTED:ssn],[REDACTED:phone];[REDACTED:email] [REDACTED:card]");
}

/* ---- actions and counts ----------------------------------------------- */

static void test_actions_and_counts(void **state) {
    (void)state;
    const char *text = "ssn 123-45-6789 card 4111111111111111 mail a@b.io tel 415-555-0123 and 415-555-0124";
    guard_pii_policy p = {{[GUARD_PII_SSN] = GUARD_PII_BLOCK,
                           [GUARD_PII_CARD] = GUARD_PII_REDACT,
                           [GUARD_PII_EMAIL] = GUARD_PII_OFF,
                           [GUARD_PII_PHONE] = GUARD_PII_REDACT}};
    guard_pii_result r = apply(&p, text, strlen(text));
    assert_true(r.blocked);
    assert_int_equal(r.found[GUARD_PII_SSN], 1);
    assert_int_equal(r.found[GUARD_PII_CARD], 1);
    assert_int_equal(r.found[GUARD_PII_EMAIL], 0); /* off: not looked for */
    assert_int_equal(r.found[GUARD_PII_PHONE], 2);
    /* A blocked text still comes back with every match replaced. */
    assert_string_equal(r.text,
                        "ssn [REDACTED:ssn] card [REDACTED:card] mail a@b.io tel [REDACTED:phone] and [REDACTED:phone]");
    free(r.text);

    /* Redact only: not blocked. */
    p.action[GUARD_PII_SSN] = GUARD_PII_REDACT;
    r = apply(&p, text, strlen(text));
    assert_false(r.blocked);
    assert_int_equal(r.found[GUARD_PII_SSN], 1);
    free(r.text);

    /* Block on a type that is absent: not blocked, nothing changed. */
    guard_pii_policy only_email = {{[GUARD_PII_EMAIL] = GUARD_PII_BLOCK}};
    const char *no_email = "no address here, 123-45-6789";
    r = apply(&only_email, no_email, strlen(no_email));
    assert_false(r.blocked);
    assert_string_equal(r.text, no_email);
    assert_int_equal(r.found[GUARD_PII_SSN], 0);
    free(r.text);

    /* All off: a copy of the text, even with a NUL inside. */
    guard_pii_policy off = policy_all(GUARD_PII_OFF);
    const char with_nul[] = "a@b.io\0" "123-45-6789";
    guard_pii_result o;
    assert_int_equal(guard_pii_apply(&off, with_nul, sizeof with_nul - 1, &o), 0);
    assert_int_equal(o.len, sizeof with_nul - 1);
    assert_memory_equal(o.text, with_nul, o.len);
    assert_ptr_not_equal(o.text, with_nul);
    assert_false(o.blocked);
    for (int t = 0; t < GUARD_PII_COUNT; t++)
        assert_int_equal(o.found[t], 0);
    free(o.text);

    /* The empty text. */
    p = policy_all(GUARD_PII_BLOCK);
    r = apply(&p, "", 0);
    assert_string_equal(r.text, "");
    assert_false(r.blocked);
    free(r.text);
}

static void test_scan(void **state) {
    (void)state;
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    const char *text = "a@b.io 123-45-6789 x 415-555-0123";
    guard_pii_match m[2];
    assert_int_equal(guard_pii_scan(&p, text, strlen(text), m, 2), 3); /* all counted, 2 written */
    assert_int_equal(m[0].type, GUARD_PII_EMAIL);
    assert_int_equal(m[0].start, 0);
    assert_int_equal(m[0].len, 6);
    assert_int_equal(m[1].type, GUARD_PII_SSN);
    assert_int_equal(m[1].start, 7);
    assert_int_equal(m[1].len, 11);
    assert_int_equal(guard_pii_scan(&p, text, strlen(text), NULL, 0), 3);
    guard_pii_match all[4];
    assert_int_equal(guard_pii_scan(&p, text, strlen(text), all, 4), 3);
    assert_int_equal(all[2].type, GUARD_PII_PHONE);
    assert_int_equal(all[2].start, 21);
    assert_int_equal(all[2].len, 12);
}

/* ---- UTF-8 ------------------------------------------------------------ */

static void test_utf8_untouched(void **state) {
    (void)state;
    /* Non-ASCII bytes are never part of a match and count as boundaries,
     * so text without spaces (CJK) still has its numbers found. */
    check_redacts("Caf\xc3\xa9 \xe2\x98\x95 123-45-6789 \xe2\x80\x94 na\xc3\xafve",
                  "Caf\xc3\xa9 \xe2\x98\x95 [REDACTED:ssn] \xe2\x80\x94 na\xc3\xafve");
    check_redacts("\xe7\x94\xb5\xe8\xaf\x9d""415-555-0123\xe8\xb0\xa2\xe8\xb0\xa2",
                  "\xe7\x94\xb5\xe8\xaf\x9d[REDACTED:phone]\xe8\xb0\xa2\xe8\xb0\xa2");
    check_redacts("\xe9\x9b\xbb\xe9\x83\xb5john@example.jp\xe3\x80\x82", "\xe9\x9b\xbb\xe9\x83\xb5[REDACTED:email]\xe3\x80\x82");
    check_redacts("\xc2\xab""4111 1111 1111 1111\xc2\xbb", "\xc2\xab[REDACTED:card]\xc2\xbb");
    /* Invalid UTF-8 passes through as bytes. */
    check_redacts("\xff\xfe 123-45-6789 \x80", "\xff\xfe [REDACTED:ssn] \x80");
}

/* ---- streaming -------------------------------------------------------- */

/* Short texts with each kind of match, near misses and UTF-8. */
static const char *const stream_texts[] = {
    "SSN 123-45-6789 ok",
    "078 05 1120",
    "pay 4111 1111 1111 1111 123 now",
    "4111111111111111",
    "6011-0009-9013-9420-007!",
    "no: 4111111111111112 41111111111111111115",
    "mail john.doe+tag@example.co.uk. thanks",
    "a@b.io",
    "x@y.com.au@z.org",
    "call (415) 555-0123 or +1 415 555 0123",
    "1-800-555-0199, +44 20 7946 0958 12",
    "+1 4111 1111 1111 1111",
    "415-555-0123@example.com",
    "v1.2.3.4 on 2024-01-15 for $1,234.56",
    "\xe7\x94\xb5\xe8\xaf\x9d""415-555-0123\xe8\xb0\xa2 a@b.io\xe3\x80\x82",
    "---- ... a.b.c-d_e%f+g +12345678",
    /* Runs longer than any pattern, released before their end: what follows
     * them is still glued to them. */
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz4111111111111111 "
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz@example.com "
    "999999999999999999999999999999999999999999999999999999999999999999123-45-6789",
};

static const guard_pii_policy *stream_policies(size_t *n) {
    static guard_pii_policy p[3];
    p[0] = policy_all(GUARD_PII_REDACT);
    p[1] = (guard_pii_policy){{[GUARD_PII_SSN] = GUARD_PII_REDACT, [GUARD_PII_EMAIL] = GUARD_PII_REDACT}};
    p[2] = (guard_pii_policy){{[GUARD_PII_CARD] = GUARD_PII_REDACT, [GUARD_PII_PHONE] = GUARD_PII_BLOCK}};
    *n = 3;
    return p;
}

static void test_stream_every_split(void **state) {
    (void)state;
    size_t n_policies;
    const guard_pii_policy *policies = stream_policies(&n_policies);
    for (size_t k = 0; k < n_policies; k++) {
        for (size_t t = 0; t < sizeof stream_texts / sizeof stream_texts[0]; t++) {
            const char *text = stream_texts[t];
            size_t len = strlen(text);
            check_stream(&policies[k], text, len, NULL, 0);
            for (size_t i = 0; i <= len; i++) {
                check_stream(&policies[k], text, len, (size_t[]){i}, 1);
                for (size_t j = i; j <= len; j++)
                    check_stream(&policies[k], text, len, (size_t[]){i, j}, 2);
            }
            size_t bytes[256];
            assert_true(len < 256);
            for (size_t i = 0; i < len; i++)
                bytes[i] = i + 1;
            check_stream(&policies[k], text, len, bytes, len);
        }
    }
}

static void test_stream_random_chunks(void **state) {
    (void)state;
    /* All the texts in one, streamed in chunks of 1 to 24 bytes. */
    char text[4096] = "";
    for (size_t t = 0; t < sizeof stream_texts / sizeof stream_texts[0]; t++) {
        strcat(text, stream_texts[t]);
        strcat(text, t % 2 ? "\n" : " ");
    }
    size_t len = strlen(text);
    size_t n_policies;
    const guard_pii_policy *policies = stream_policies(&n_policies);
    uint64_t rng = 0x9e3779b97f4a7c15u;
    size_t cuts[4096];
    for (int round = 0; round < 300; round++) {
        size_t n = 0;
        for (size_t at = 0;;) {
            rng = rng * 6364136223846793005u + 1442695040888963407u;
            at += (rng >> 33) % 24 + 1;
            if (at >= len)
                break;
            cuts[n++] = at;
        }
        check_stream(&policies[(size_t)round % n_policies], text, len, cuts, n);
    }
}

static void test_stream_block(void **state) {
    (void)state;
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    p.action[GUARD_PII_SSN] = GUARD_PII_BLOCK;
    const char *text = "a@b.io then 123-45-6789 and more";
    size_t len = strlen(text);
    for (size_t i = 0; i <= len; i++) {
        run_result r = stream_run(&p, text, len, (size_t[]){i}, 1);
        assert_true(r.blocked);
        /* At most the text before the SSN was released; never any of it. */
        assert_true(r.len <= strlen("[REDACTED:email] then "));
        assert_memory_equal(r.text, "[REDACTED:email] then ", r.len);
        assert_int_equal(r.found[GUARD_PII_SSN], 1);
        free(r.text);
    }
    /* After the block, feeds and the finish give "" and 1. */
    guard_pii_stream *s = guard_pii_stream_new(&p);
    char *out;
    size_t out_len;
    assert_int_equal(guard_pii_stream_feed(s, "123-45-6789 ", 12, &out, &out_len), 1);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(guard_pii_stream_feed(s, "plain text ", 11, &out, &out_len), 1);
    assert_string_equal(out, "");
    assert_int_equal(out_len, 0);
    free(out);
    assert_int_equal(guard_pii_stream_finish(s, &out, &out_len), 1);
    assert_string_equal(out, "");
    free(out);
    guard_pii_stream_free(s);
}

static void test_stream_holdback_prose(void **state) {
    (void)state;
    /* Prose without digits or '@' in 3-byte chunks: only the word being
     * written is held (it could become an email's local part). */
    const char *text = "The quick brown fox jumps over the lazy dog, then rests; nobody asks why. "
                       "Streaming answers arrive a few bytes at a time, and each is released at once.";
    size_t len = strlen(text);
    size_t cuts[256], n = 0;
    for (size_t at = 3; at < len; at += 3)
        cuts[n++] = at;
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    run_result r = stream_run(&p, text, len, cuts, n);
    assert_string_equal(r.text, text);
    assert_true(r.max_held <= 9); /* the longest word ("Streaming") */
    free(r.text);

    /* With every detector off, nothing is held at all. */
    guard_pii_policy off = policy_all(GUARD_PII_OFF);
    r = stream_run(&off, "a@b.io 4111", 11, (size_t[]){3, 8}, 2);
    assert_int_equal(r.max_held, 0);
    free(r.text);
}

/* Feeds text one byte at a time; returns the most bytes held after a feed
 * and checks the result against apply. */
static size_t held_byte_by_byte(const guard_pii_policy *p, const char *text, size_t *held_at_end) {
    size_t len = strlen(text);
    guard_pii_stream *s = guard_pii_stream_new(p);
    size_t released = 0, max_held = 0;
    char *all = calloc(1, 1);
    for (size_t i = 0; i < len; i++) {
        char *out;
        size_t out_len;
        assert_int_equal(guard_pii_stream_feed(s, text + i, 1, &out, &out_len), 0);
        all = realloc(all, released + out_len + 1);
        memcpy(all + released, out, out_len + 1);
        released += out_len;
        free(out);
        if (released <= i + 1 && i + 1 - released > max_held)
            max_held = i + 1 - released;
        *held_at_end = i + 1 - released;
    }
    char *out;
    size_t out_len;
    assert_int_equal(guard_pii_stream_finish(s, &out, &out_len), 0);
    all = realloc(all, released + out_len + 1);
    memcpy(all + released, out, out_len + 1);
    free(out);
    guard_pii_result want = apply(p, text, len);
    assert_string_equal(all, want.text);
    free(want.text);
    free(all);
    guard_pii_stream_free(s);
    return max_held;
}

static void test_stream_holdback_bounds(void **state) {
    (void)state;
    guard_pii_policy p = policy_all(GUARD_PII_REDACT);
    char text[1024];
    size_t held_end;

    /* A run of letters longer than any local part is released as it comes. */
    memset(text, 'a', 500);
    text[500] = 0;
    assert_true(held_byte_by_byte(&p, text, &held_end) <= 65);
    assert_int_equal(held_end, 0);

    /* The longest possible email (64 + '@' + 253) followed by a dot is
     * the longest hold-back, and it is the documented bound. */
    char *w = text;
    memset(w, 'l', 64), w += 64;
    *w++ = '@';
    for (int i = 0; i < 3; i++)
        memset(w, 'd', 63), w += 63, *w++ = '.';
    memset(w, 't', 61), w += 61;
    strcpy(w, ". end");
    assert_int_equal(held_byte_by_byte(&p, text, &held_end), HOLD_MAX);
    guard_pii_result r = apply(&p, text, strlen(text));
    assert_string_equal(r.text, "[REDACTED:email]. end");
    free(r.text);

    /* Long digit runs, grouped numbers and phone-like text stay far below it. */
    memset(text, '7', 300);
    text[300] = 0;
    assert_true(held_byte_by_byte(&p, text, &held_end) <= 65);
    assert_true(held_byte_by_byte(&p, "4111 1111 1111 1111 1111 1111 1111 1111 +44 20 7946 0958 12 34 56",
                                  &held_end) <= 40);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_actions),
        cmocka_unit_test(test_true_positives),
        cmocka_unit_test(test_near_misses),
        cmocka_unit_test(test_overlaps),
        cmocka_unit_test(test_actions_and_counts),
        cmocka_unit_test(test_scan),
        cmocka_unit_test(test_utf8_untouched),
        cmocka_unit_test(test_stream_every_split),
        cmocka_unit_test(test_stream_random_chunks),
        cmocka_unit_test(test_stream_block),
        cmocka_unit_test(test_stream_holdback_prose),
        cmocka_unit_test(test_stream_holdback_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
