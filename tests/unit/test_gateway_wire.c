/*
 * test_gateway_wire.c - the gateway's OpenAI wire format and SSE parser
 * (src/gateway/internal/wire_int.h): chat requests of every documented
 * shape accepted, every invalid shape refused with OpenAI's "param" and an
 * actionable message, the input limits, UTF-8, the upstream body and the
 * cache material, completions and stream chunks parsed, rewritten and made,
 * context-length errors as OpenAI, vLLM and llama.cpp write them; and the
 * event-stream parser over every line ending, comments, multi-line data,
 * names, the BOM, any split of the bytes into feeds, its size bound,
 * truncation and a callback that stops it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "wire_int.h"

/* ---- request helpers -------------------------------------------------- */

static const gw_limits roomy = {.max_messages = 100, .max_chars = 100000, .max_tokens = 100000};

static void parse_ok(const char *body, const gw_limits *lim, gw_chat *c) {
    gw_fail fail;
    int rc = gw_chat_parse(body, strlen(body), lim, c, &fail);
    if (rc != 0)
        print_error("refused %s\n  -> %s (param %s)\n", body, fail.message, fail.param);
    assert_int_equal(rc, 0);
}

/* Asserts that body is refused with status at param, the message holding
 * `says`. */
static void refused(const char *body, size_t len, const gw_limits *lim, int status, const char *param,
                    const char *says) {
    gw_chat c;
    gw_fail fail;
    memset(&fail, 0x5A, sizeof fail);
    int rc = gw_chat_parse(body, len, lim, &c, &fail);
    if (rc != -1 || fail.status != status || strcmp(fail.param, param) != 0 || !strstr(fail.message, says))
        print_error(
            "body %.*s\n  -> rc %d status %d param '%s' message '%s'\n  want status %d param '%s' saying '%s'\n",
            (int)len, body, rc, rc ? fail.status : 0, rc ? fail.param : "", rc ? fail.message : "", status, param,
            says);
    assert_int_equal(rc, -1);
    assert_int_equal(fail.status, status);
    assert_string_equal(fail.param, param);
    assert_non_null(strstr(fail.message, says));
    assert_null(c.body);
    assert_null(c.routing_text);
}

#define REFUSED(body, status, param, says) refused(body, strlen(body), &roomy, status, param, says)

/* Compact JSON of a value, for comparisons (malloc'd). */
static char *reparse_dump(const char *text, size_t flags) {
    json_t *v = json_loads(text, 0, NULL);
    assert_non_null(v);
    char *s = json_dumps(v, JSON_COMPACT | flags);
    json_decref(v);
    return s;
}

/* ---- requests: accepted ------------------------------------------------ */

static void test_minimal_request(void **state) {
    (void)state;
    gw_chat c;
    parse_ok("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]}", &roomy, &c);
    assert_string_equal(c.model, "gpt-4o");
    assert_int_equal(c.n_messages, 1);
    assert_int_equal(c.stream, 0);
    assert_int_equal(c.include_usage, 0);
    assert_int_equal(c.deterministic, 0);
    assert_int_equal(c.max_tokens, -1);
    assert_int_equal(c.text_chars, 11);
    assert_int_equal(c.est_tokens, 3 + 4); /* ceil(11 / 4) + 4 for the message */
    assert_string_equal(c.routing_text, "Hello there");
    gw_chat_free(&c);
    assert_null(c.body);
    gw_chat_free(&c); /* twice is harmless */
}

static void test_every_documented_shape(void **state) {
    (void)state;
    const char *body =
        "{\"model\":\"router-main\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"No emoji.\"}]},"
        "{\"role\":\"user\",\"name\":\"ana\",\"content\":\"What is the weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
        "\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"12 C\"},"
        "{\"role\":\"assistant\",\"function_call\":{\"name\":\"f\",\"arguments\":\"{}\"}},"
        "{\"role\":\"function\",\"name\":\"f\",\"content\":\"ok\"},"
        "{\"role\":\"assistant\",\"content\":\"It is 12 C.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Caf\\u00e9 \\u2615\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://example.com/a.png\"}},"
        "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"AAAA\",\"format\":\"wav\"}},"
        "{\"type\":\"text\",\"text\":\"and this?\"}]}],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"temperature\":0,\"top_p\":1,\"n\":1,"
        "\"max_tokens\":10,\"max_completion_tokens\":50,\"stop\":[\"\\n\\n\",\"END\"],\"seed\":-7,"
        "\"presence_penalty\":-2,\"frequency_penalty\":1.5,\"logit_bias\":{\"50256\":-100},"
        "\"logprobs\":true,\"top_logprobs\":3,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"weather\"}},\"parallel_tool_calls\":false,"
        "\"response_format\":{\"type\":\"json_object\"},\"user\":\"u-1\",\"metadata\":{\"team\":\"x\"},"
        "\"x_vendor_extension\":{\"anything\":[1,2]}}";
    gw_chat c;
    parse_ok(body, &roomy, &c);
    assert_string_equal(c.model, "router-main");
    assert_int_equal(c.n_messages, 9);
    assert_int_equal(c.stream, 1);
    assert_int_equal(c.include_usage, 1);
    assert_int_equal(c.deterministic, 1);
    assert_int_equal(c.max_tokens, 50); /* max_completion_tokens wins */
    /* Text parts of the last user message, joined with \n. */
    assert_string_equal(c.routing_text, "Caf\xc3\xa9 \xe2\x98\x95\nand this?");
    /* Code points: 9 + 9 + 20 + 4 + 2 + 11 + 6 ("Café ☕") + 9. */
    assert_int_equal(c.text_chars, 9 + 9 + 20 + 4 + 2 + 11 + 6 + 9);
    /* Unknown fields are kept for the upstream. */
    assert_non_null(json_object_get(c.body, "x_vendor_extension"));
    gw_chat_free(&c);

    /* The string form of stop, tool_choice as a string. */
    parse_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":\"END\","
             "\"tool_choice\":\"none\",\"max_tokens\":7,\"stream\":false}",
             &roomy, &c);
    assert_int_equal(c.max_tokens, 7);
    assert_int_equal(c.stream, 0);
    gw_chat_free(&c);
}

static void test_nullable_fields_count_as_absent(void **state) {
    (void)state;
    gw_chat c;
    parse_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":null,"
             "\"top_p\":null,\"n\":null,\"max_tokens\":null,\"max_completion_tokens\":null,\"stop\":null,"
             "\"stream\":null,\"stream_options\":null,\"seed\":null,\"logit_bias\":null,\"tools\":null,"
             "\"tool_choice\":null,\"user\":null}",
             &roomy, &c);
    assert_int_equal(c.stream, 0);
    assert_int_equal(c.deterministic, 0);
    assert_int_equal(c.max_tokens, -1);
    gw_chat_free(&c);
}

static void test_deterministic(void **state) {
    (void)state;
    static const struct {
        const char *extra;
        int deterministic;
    } cases[] = {
        {"\"temperature\":0", 1},
        {"\"temperature\":0.0", 1},
        {"\"temperature\":0,\"n\":1", 1},
        {"\"temperature\":0,\"n\":null", 1},
        {"\"temperature\":0,\"n\":2", 0},
        {"\"temperature\":0.2", 0},
        {"\"top_p\":0", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s}",
                 cases[i].extra);
        gw_chat c;
        parse_ok(body, &roomy, &c);
        if (c.deterministic != cases[i].deterministic)
            print_error("%s\n", body);
        assert_int_equal(c.deterministic, cases[i].deterministic);
        gw_chat_free(&c);
    }
}

static void test_routing_text_without_user(void **state) {
    (void)state;
    gw_chat c;
    parse_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"only system\"}]}", &roomy, &c);
    assert_string_equal(c.routing_text, "");
    gw_chat_free(&c);
    parse_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"first\"},"
             "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"second\"},"
             "{\"role\":\"assistant\",\"content\":\"b\"}]}",
             &roomy, &c);
    assert_string_equal(c.routing_text, "second");
    gw_chat_free(&c);
}

/* ---- requests: refused ------------------------------------------------- */

#define MSG(m) "{\"model\":\"m\",\"messages\":[" m "]}"
#define USER "{\"role\":\"user\",\"content\":\"hi\"}"
#define WITH(fields) "{\"model\":\"m\",\"messages\":[" USER "]," fields "}"

static void test_refused_body_and_model(void **state) {
    (void)state;
    REFUSED("", GATEWAY_EJSON, "", "not valid JSON");
    REFUSED("{", GATEWAY_EJSON, "", "not valid JSON");
    REFUSED("{\"model\":\"m\",}", GATEWAY_EJSON, "", "line 1");
    REFUSED("[1,2]", GATEWAY_EINVAL, "", "must be a JSON object, not an array");
    REFUSED("\"text\"", GATEWAY_EINVAL, "", "must be a JSON object");
    REFUSED("{\"messages\":[" USER "]}", GATEWAY_EINVAL, "model", "missing");
    REFUSED("{\"model\":5,\"messages\":[" USER "]}", GATEWAY_EINVAL, "model", "non-empty string");
    REFUSED("{\"model\":\"\",\"messages\":[" USER "]}", GATEWAY_EINVAL, "model", "non-empty string");
    REFUSED("{\"model\":\"gpt\\u0000x\",\"messages\":[" USER "]}", GATEWAY_EINVAL, "model", "non-empty string");
    REFUSED("{\"model\":\"m\"}", GATEWAY_EINVAL, "messages", "must be an array of messages, not missing");
    REFUSED("{\"model\":\"m\",\"messages\":{}}", GATEWAY_EINVAL, "messages", "not an object");
    REFUSED(MSG(""), GATEWAY_EINVAL, "messages", "at least one message");
}

static void test_refused_messages(void **state) {
    (void)state;
    REFUSED(MSG("5"), GATEWAY_EINVAL, "messages[0]", "must be an object with a role and content, not an integer");
    REFUSED(MSG(USER ",{\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[1].role", "missing");
    REFUSED(MSG(USER "," USER "," USER ",{\"role\":\"robot\",\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[3].role",
            "not \"robot\"");
    REFUSED(MSG("{\"role\":3,\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[0].role", "it is an integer");
    REFUSED(MSG("{\"role\":\"User\",\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[0].role",
            "system, developer, user, assistant, tool or function");
    REFUSED(MSG("{\"role\":\"user\"}"), GATEWAY_EINVAL, "messages[0].content", "is missing");
    REFUSED(MSG("{\"role\":\"user\",\"content\":null}"), GATEWAY_EINVAL, "messages[0].content", "is null");
    REFUSED(MSG(USER ",{\"role\":\"assistant\",\"content\":null}"), GATEWAY_EINVAL, "messages[1].content",
            "only an assistant message with tool_calls");
    REFUSED(MSG(USER ",{\"role\":\"assistant\",\"content\":null,\"tool_calls\":null}"), GATEWAY_EINVAL,
            "messages[1].content", "is null");
    REFUSED(MSG("{\"role\":\"user\",\"content\":5}"), GATEWAY_EINVAL, "messages[0].content",
            "a string or an array of content parts, not an integer");
    REFUSED(MSG("{\"role\":\"user\",\"content\":{\"text\":\"x\"}}"), GATEWAY_EINVAL, "messages[0].content",
            "not an object");
    REFUSED(MSG("{\"role\":\"user\",\"content\":[]}"), GATEWAY_EINVAL, "messages[0].content", "empty array");
    REFUSED(MSG("{\"role\":\"user\",\"content\":[\"hi\"]}"), GATEWAY_EINVAL, "messages[0].content[0]",
            "must be an object such as");
    REFUSED(MSG("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"text\":\"b\"}]}"),
            GATEWAY_EINVAL, "messages[0].content[1].type", "must be a string");
    REFUSED(MSG("{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}"), GATEWAY_EINVAL, "messages[0].content[0].text",
            "not missing");
    REFUSED(MSG("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":[\"x\"]}]}"), GATEWAY_EINVAL,
            "messages[0].content[0].text", "not an array");
    REFUSED(MSG(USER ",{\"role\":\"tool\",\"content\":\"12 C\"}"), GATEWAY_EINVAL, "messages[1].tool_call_id",
            "names the tool call");
    REFUSED(MSG("{\"role\":\"tool\",\"tool_call_id\":7,\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[0].tool_call_id",
            "must be a string");
    REFUSED(MSG("{\"role\":\"function\",\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[0].name", "names its function");
    REFUSED(MSG("{\"role\":\"user\",\"name\":5,\"content\":\"x\"}"), GATEWAY_EINVAL, "messages[0].name",
            "must be a string");
    REFUSED(MSG("{\"role\":\"assistant\",\"content\":\"x\",\"tool_calls\":{}}"), GATEWAY_EINVAL,
            "messages[0].tool_calls", "must be an array, not an object");
}

static void test_refused_fields(void **state) {
    (void)state;
    REFUSED(WITH("\"temperature\":2.5"), GATEWAY_EINVAL, "temperature", "a number from 0 to 2; 2.5 is out of range");
    REFUSED(WITH("\"temperature\":-0.1"), GATEWAY_EINVAL, "temperature", "out of range");
    REFUSED(WITH("\"temperature\":\"hot\""), GATEWAY_EINVAL, "temperature", "not a string");
    REFUSED(WITH("\"top_p\":1.01"), GATEWAY_EINVAL, "top_p", "from 0 to 1");
    REFUSED(WITH("\"n\":0"), GATEWAY_EINVAL, "n", "an integer >= 1");
    REFUSED(WITH("\"n\":1.5"), GATEWAY_EINVAL, "n", "an integer >= 1, not a number");
    REFUSED(WITH("\"n\":\"2\""), GATEWAY_EINVAL, "n", "not a string");
    REFUSED(WITH("\"max_tokens\":0"), GATEWAY_EINVAL, "max_tokens", "an integer >= 1");
    REFUSED(WITH("\"max_tokens\":1.0"), GATEWAY_EINVAL, "max_tokens", "not a number");
    REFUSED(WITH("\"max_completion_tokens\":-5"), GATEWAY_EINVAL, "max_completion_tokens", "out of range");
    REFUSED(WITH("\"stop\":5"), GATEWAY_EINVAL, "stop", "up to 4 strings, not an integer");
    REFUSED(WITH("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]"), GATEWAY_EINVAL, "stop", "up to 4 strings");
    REFUSED(WITH("\"stop\":[\"a\",1]"), GATEWAY_EINVAL, "stop[1]", "must be a string, not an integer");
    REFUSED(WITH("\"stream\":\"yes\""), GATEWAY_EINVAL, "stream", "a boolean, not a string");
    REFUSED(WITH("\"stream\":1"), GATEWAY_EINVAL, "stream", "a boolean");
    REFUSED(WITH("\"stream_options\":{\"include_usage\":true}"), GATEWAY_EINVAL, "stream_options",
            "only allowed when stream is true");
    REFUSED(WITH("\"stream\":false,\"stream_options\":{}"), GATEWAY_EINVAL, "stream_options", "stream is true");
    REFUSED(WITH("\"stream\":true,\"stream_options\":true"), GATEWAY_EINVAL, "stream_options", "an object");
    REFUSED(WITH("\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}"), GATEWAY_EINVAL,
            "stream_options.include_usage", "a boolean");
    REFUSED(WITH("\"seed\":1.5"), GATEWAY_EINVAL, "seed", "an integer");
    REFUSED(WITH("\"presence_penalty\":3"), GATEWAY_EINVAL, "presence_penalty", "from -2 to 2");
    REFUSED(WITH("\"frequency_penalty\":-2.5"), GATEWAY_EINVAL, "frequency_penalty", "from -2 to 2");
    REFUSED(WITH("\"logit_bias\":[]"), GATEWAY_EINVAL, "logit_bias", "an object");
    REFUSED(WITH("\"logit_bias\":{\"50256\":200}"), GATEWAY_EINVAL, "logit_bias", "\"50256\" maps to a number out");
    REFUSED(WITH("\"logit_bias\":{\"1\":\"ban\"}"), GATEWAY_EINVAL, "logit_bias", "a string");
    REFUSED(WITH("\"top_logprobs\":21"), GATEWAY_EINVAL, "top_logprobs", "from 0 to 20");
    REFUSED(WITH("\"tools\":{}"), GATEWAY_EINVAL, "tools", "an array");
    REFUSED(WITH("\"tool_choice\":5"), GATEWAY_EINVAL, "tool_choice", "a string or an object");
    REFUSED(WITH("\"response_format\":\"json\""), GATEWAY_EINVAL, "response_format", "an object");
    REFUSED(WITH("\"user\":5"), GATEWAY_EINVAL, "user", "a string");
    REFUSED(WITH("\"metadata\":\"x\""), GATEWAY_EINVAL, "metadata", "an object");
}

static void test_utf8(void **state) {
    (void)state;
    static const char bad_content[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}";
    refused(bad_content, sizeof bad_content - 1, &roomy, GATEWAY_EUTF8, "", "not valid UTF-8 (byte 54: 0xe9)");
    /* Overlong '/', an encoded surrogate, above U+10FFFF, a cut sequence. */
    static const char *const bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[128];
        int n = snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                         bad[i]);
        refused(body, (size_t)n, &roomy, GATEWAY_EUTF8, "", "not valid UTF-8");
    }
    /* Not UTF-8 wins over a syntax error that comes first. */
    static const char both[] = "{\"model\" \"m\", \"x\": \"\xff\"}";
    refused(both, sizeof both - 1, &roomy, GATEWAY_EUTF8, "", "byte 20");
    /* A lone surrogate escape is a JSON error, not a UTF-8 one. */
    REFUSED(MSG("{\"role\":\"user\",\"content\":\"\\ud800\"}"), GATEWAY_EJSON, "", "not valid JSON");
    /* Four-byte characters count once; NUL escapes are text. */
    gw_chat c;
    parse_ok(MSG("{\"role\":\"user\",\"content\":\"\xf0\x9f\x8e\x89\\u0000x\"}"), &roomy, &c);
    assert_int_equal(c.text_chars, 3);
    gw_chat_free(&c);
}

static void test_limits(void **state) {
    (void)state;
    const char *three = MSG(USER "," USER "," USER);
    gw_limits lim = {.max_messages = 3};
    gw_chat c;
    parse_ok(three, &lim, &c);
    gw_chat_free(&c);
    lim.max_messages = 2;
    refused(three, strlen(three), &lim, GATEWAY_ETOOBIG, "messages", "has 3 messages; this gateway accepts at most 2");

    /* "héllo wörld 🎉": 13 code points, 18 bytes. */
    const char *text = MSG("{\"role\":\"user\",\"content\":\"h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x8e\x89\"}");
    lim = (gw_limits){.max_chars = 13};
    parse_ok(text, &lim, &c);
    assert_int_equal(c.text_chars, 13);
    assert_int_equal(c.est_tokens, 5 + 4); /* ceil(18 / 4) + 4 */
    gw_chat_free(&c);
    lim.max_chars = 12;
    refused(text, strlen(text), &lim, GATEWAY_ETOOBIG, "messages",
            "hold 13 characters of text; this gateway accepts at most 12");
    lim = (gw_limits){.max_tokens = 9};
    parse_ok(text, &lim, &c);
    gw_chat_free(&c);
    lim.max_tokens = 8;
    refused(text, strlen(text), &lim, GATEWAY_ETOOBIG, "messages",
            "about 9 tokens long (estimated); this gateway accepts at most 8");

    /* Text parts count; image parts do not. */
    const char *parts = MSG("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"abc\"},"
                            "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAAAAAAAAAA\"}},"
                            "{\"type\":\"text\",\"text\":\"de\"}]}");
    lim = (gw_limits){.max_chars = 5};
    parse_ok(parts, &lim, &c);
    assert_int_equal(c.text_chars, 5);
    gw_chat_free(&c);

    /* No limits: NULL or zeros. */
    parse_ok(three, NULL, &c);
    gw_chat_free(&c);
    lim = (gw_limits){0};
    parse_ok(text, &lim, &c);
    gw_chat_free(&c);
}

static void test_estimate_tokens(void **state) {
    (void)state;
    assert_int_equal(gw_estimate_tokens("", 0), 0);
    assert_int_equal(gw_estimate_tokens("abcd", 4), 1);
    assert_int_equal(gw_estimate_tokens("abcde", 5), 2);
    assert_int_equal(gw_estimate_tokens("a b c d e f", 11), 6); /* words beat bytes */
    assert_int_equal(gw_estimate_tokens("   \n", 4), 1);
    const char *para = "The quick brown fox jumps over the lazy dog.";
    assert_int_equal(gw_estimate_tokens(para, strlen(para)), 11);
}

/* ---- upstream body and cache material ---------------------------------- */

static void test_upstream_body(void **state) {
    (void)state;
    gw_chat c;
    parse_ok("{ \"model\" : \"fast\", \"messages\" : [ {\"role\":\"user\",\"content\":\"hi\"} ],\n"
             "  \"temperature\": 0.5, \"x_extra\": {\"b\": 1, \"a\": 2} }",
             &roomy, &c);
    size_t len = 0;
    char *up = gw_chat_upstream_body(&c, "gpt-4o-mini", &len);
    assert_non_null(up);
    /* Compact, in the client's order, model replaced, nothing else touched. */
    assert_string_equal(up, "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                            "\"temperature\":0.5,\"x_extra\":{\"b\":1,\"a\":2}}");
    assert_int_equal(len, strlen(up));
    /* The parsed request still names what the client asked for. */
    assert_string_equal(c.model, "fast");
    assert_string_equal(json_string_value(json_object_get(c.body, "model")), "fast");
    char *again = gw_chat_upstream_body(&c, "gpt-4o-mini", &len);
    assert_string_equal(up, again);
    free(again);
    free(up);
    gw_chat_free(&c);

    /* Streaming: include_usage is turned on for the gateway's own counting,
     * other stream options kept, the client's view unchanged. */
    parse_ok(WITH("\"stream\":true,\"stream_options\":{\"include_usage\":false,\"x\":1}"), &roomy, &c);
    up = gw_chat_upstream_body(&c, "up", &len);
    assert_string_equal(up, "{\"model\":\"up\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                            "\"stream_options\":{\"include_usage\":true,\"x\":1}}");
    assert_int_equal(c.include_usage, 0);
    assert_true(json_is_false(json_object_get(json_object_get(c.body, "stream_options"), "include_usage")));
    free(up);
    gw_chat_free(&c);

    parse_ok(WITH("\"stream\":true"), &roomy, &c);
    up = gw_chat_upstream_body(&c, "up", &len);
    assert_non_null(strstr(up, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}"));
    free(up);
    gw_chat_free(&c);

    /* Not streaming: no stream_options appear. */
    parse_ok(WITH("\"stream\":false"), &roomy, &c);
    up = gw_chat_upstream_body(&c, "up", &len);
    assert_null(strstr(up, "stream_options"));
    free(up);
    gw_chat_free(&c);
}

/* The cache material of body for target (malloc'd). */
static char *material(const char *body, const char *target) {
    gw_chat c;
    parse_ok(body, &roomy, &c);
    size_t len = 0;
    char *m = gw_chat_cache_material(&c, target, &len);
    assert_non_null(m);
    assert_int_equal(len, strlen(m));
    gw_chat_free(&c);
    return m;
}

static void test_cache_material(void **state) {
    (void)state;
    const char *base =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,"
        "\"max_tokens\":20,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
        "{\"type\":\"object\",\"properties\":{}}}}]}";
    char *ref = material(base, "m");
    /* Sorted keys at every depth, compact, target in place of model. */
    assert_string_equal(ref, "{\"request\":{\"max_tokens\":20,\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],"
                             "\"temperature\":0.0,\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":"
                             "{\"properties\":{},\"type\":\"object\"}},\"type\":\"function\"}]},\"target\":\"m\"}");

    /* The same answer: streaming, its options, user, metadata, key order,
     * spacing, null fields, 0 written as 0.0. */
    static const char *const same[] = {
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}],\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u1\","
        "\"metadata\":{\"k\":\"v\"}}",
        "{\"tools\":[{\"function\":{\"parameters\":{\"properties\":{},\"type\":\"object\"},\"name\":\"f\"},"
        "\"type\":\"function\"}],\"max_tokens\":20,\"temperature\":0.0,\"messages\":[{\"content\":\"hi\","
        "\"role\":\"user\"}],\"model\":\"m\",\"user\":\"u2\",\"seed\":null}",
        "{ \"model\" : \"other-name-same-target\" , \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
        "\"temperature\":0,\"max_tokens\":20,\"stream\":false,\"tools\":[{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{}}}}]}",
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        char *m = material(same[i], "m");
        if (strcmp(m, ref) != 0)
            print_error("case %zu:\n%s\n%s\n", i, m, ref);
        assert_string_equal(m, ref);
        free(m);
    }

    /* Different answers: target, text, role, sampling, stop, seed, tools. */
    char *m = material(base, "m2");
    assert_string_not_equal(m, ref);
    free(m);
    static const char *const differ[] = {
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi!\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0.1,\"max_tokens\":20,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":21,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"stop\":\"x\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":"
        "\"object\",\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"seed\":1,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":"
        "\"object\",\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,\"max_tokens\":20,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"g\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{}}}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0,"
        "\"max_completion_tokens\":20,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{}}}}]}",
    };
    for (size_t i = 0; i < sizeof differ / sizeof *differ; i++) {
        m = material(differ[i], "m");
        if (strcmp(m, ref) == 0)
            print_error("case %zu should differ\n", i);
        assert_string_not_equal(m, ref);
        free(m);
    }
    free(ref);
}

/* ---- completions ------------------------------------------------------- */

static const char openai_completion[] =
    "{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"gpt-4o-mini\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello! My email is a@b.c\"},"
    "\"finish_reason\":\"stop\"},{\"index\":1,\"message\":{\"role\":\"assistant\",\"content\":null,"
    "\"tool_calls\":[]},\"finish_reason\":\"tool_calls\"},{\"index\":2,\"message\":{\"role\":\"assistant\","
    "\"content\":\"second\"},\"finish_reason\":\"length\"}],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":9,\"total_tokens\":21}}";

static void test_completion_parse(void **state) {
    (void)state;
    json_t *v = NULL;
    gw_usage u;
    gw_fail fail;
    assert_int_equal(gw_completion_parse(openai_completion, strlen(openai_completion), &v, &u, &fail), 0);
    assert_non_null(v);
    assert_int_equal(u.known, 1);
    assert_int_equal(u.prompt_tokens, 12);
    assert_int_equal(u.completion_tokens, 9);
    json_decref(v);

    const char *no_usage = "{\"choices\":[]}";
    assert_int_equal(gw_completion_parse(no_usage, strlen(no_usage), &v, &u, &fail), 0);
    assert_int_equal(u.known, 0);
    json_decref(v);
    const char *half_usage = "{\"choices\":[],\"usage\":{\"prompt_tokens\":3}}";
    assert_int_equal(gw_completion_parse(half_usage, strlen(half_usage), &v, &u, &fail), 0);
    assert_int_equal(u.known, 0);
    json_decref(v);

    static const struct {
        const char *body;
        const char *says;
    } bad[] = {
        {"<html>502 Bad Gateway</html>", "not JSON"},
        {"", "not JSON"},
        {"{\"object\":\"chat.completion\"}", "no \"choices\" array"},
        {"{\"choices\":{}}", "no \"choices\" array"},
        {"[1]", "no \"choices\" array"},
        {"{\"choices\":[\"\xff\"]}", "not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        v = (json_t *)1;
        assert_int_equal(gw_completion_parse(bad[i].body, strlen(bad[i].body), &v, &u, &fail), -1);
        assert_null(v);
        assert_int_equal(fail.status, GATEWAY_EUPSTREAM);
        assert_non_null(strstr(fail.message, bad[i].says));
    }
}

typedef struct map_log {
    size_t calls;
    size_t choices[8];
    char texts[8][64];
} map_log;

/* Redacts "a@b.c" in choice 0; keeps the others. */
static char *redact(void *ud, size_t choice, const char *text, size_t len) {
    map_log *log = ud;
    log->choices[log->calls] = choice;
    snprintf(log->texts[log->calls], sizeof log->texts[0], "%.*s", (int)len, text);
    log->calls++;
    return choice == 0 ? strdup("Hello! My email is [EMAIL]") : NULL;
}

static char *not_utf8(void *ud, size_t choice, const char *text, size_t len) {
    (void)ud, (void)choice, (void)text, (void)len;
    return strdup("\xff");
}

static void test_completion_map_content(void **state) {
    (void)state;
    json_t *v;
    gw_usage u;
    gw_fail fail;
    assert_int_equal(gw_completion_parse(openai_completion, strlen(openai_completion), &v, &u, &fail), 0);
    map_log log = {0};
    assert_int_equal(gw_completion_map_content(v, redact, &log), 0);
    /* Choice 1 has null content: not offered. */
    assert_int_equal(log.calls, 2);
    assert_int_equal(log.choices[0], 0);
    assert_string_equal(log.texts[0], "Hello! My email is a@b.c");
    assert_int_equal(log.choices[1], 2);
    assert_string_equal(log.texts[1], "second");
    json_t *choices = json_object_get(v, "choices");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(json_array_get(choices, 0), "message"), "content")),
        "Hello! My email is [EMAIL]");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(json_array_get(choices, 2), "message"), "content")),
        "second");
    assert_int_equal(gw_completion_map_content(v, not_utf8, NULL), -1);
    json_decref(v);
}

static void test_completion_make(void **state) {
    (void)state;
    gw_usage u = {.known = 1, .prompt_tokens = 7, .completion_tokens = 5};
    json_t *c = gw_completion_make("chatcmpl-gw-1", 1700000001, "fast", "Cached answer \xe2\x9c\x93", &u);
    assert_non_null(c);
    char *text = json_dumps(c, JSON_COMPACT);
    assert_string_equal(text, "{\"id\":\"chatcmpl-gw-1\",\"object\":\"chat.completion\",\"created\":1700000001,"
                              "\"model\":\"fast\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                              "\"content\":\"Cached answer \xe2\x9c\x93\"},\"finish_reason\":\"stop\"}],"
                              "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}");
    /* What the gateway makes, it reads back. */
    json_t *back;
    gw_usage ub;
    gw_fail fail;
    assert_int_equal(gw_completion_parse(text, strlen(text), &back, &ub, &fail), 0);
    assert_int_equal(ub.known, 1);
    assert_int_equal(ub.prompt_tokens, 7);
    assert_int_equal(ub.completion_tokens, 5);
    json_decref(back);
    free(text);
    json_decref(c);

    c = gw_completion_make("id", 1, "m", "x", NULL);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(c, "usage"), "total_tokens")), 0);
    json_decref(c);
    assert_null(gw_completion_make("id", 1, "m", "\xc3", &u));
}

/* ---- stream chunks ------------------------------------------------------ */

static void test_chunk_parse(void **state) {
    (void)state;
    gw_chunk ch;
    const char *role = "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
                       "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                       "\"finish_reason\":null}]}";
    assert_int_equal(gw_chunk_parse(role, strlen(role), &ch), 0);
    assert_int_equal(ch.has_choices, 1);
    assert_non_null(ch.content);
    assert_int_equal(ch.content_len, 0);
    assert_null(ch.finish_reason);
    assert_int_equal(ch.usage.known, 0);
    gw_chunk_free(&ch);
    assert_null(ch.obj);

    const char *text = "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\u0000lo\"},"
                       "\"finish_reason\":null}]}";
    assert_int_equal(gw_chunk_parse(text, strlen(text), &ch), 0);
    assert_int_equal(ch.content_len, 6);
    assert_memory_equal(ch.content, "Hel\0lo", 6);
    gw_chunk_free(&ch);

    const char *fin = "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}";
    assert_int_equal(gw_chunk_parse(fin, strlen(fin), &ch), 0);
    assert_null(ch.content);
    assert_string_equal(ch.finish_reason, "stop");
    gw_chunk_free(&ch);

    const char *usage = "{\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,"
                        "\"total_tokens\":13}}";
    assert_int_equal(gw_chunk_parse(usage, strlen(usage), &ch), 0);
    assert_int_equal(ch.has_choices, 0);
    assert_int_equal(ch.usage.known, 1);
    assert_int_equal(ch.usage.prompt_tokens, 10);
    assert_int_equal(ch.usage.completion_tokens, 3);
    gw_chunk_free(&ch);

    static const char *const bad[] = {"[DONE]", "", "[]", "\"x\"", "{\"a\":", "{\"a\":\"\xff\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(gw_chunk_parse(bad[i], strlen(bad[i]), &ch), -1);
        assert_null(ch.obj);
        assert_null(ch.content);
    }
}

static void test_chunk_rewrite(void **state) {
    (void)state;
    const char *in = "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024\","
                     "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail a@b.c\"},\"logprobs\":null,"
                     "\"finish_reason\":null}],\"system_fingerprint\":\"fp\"}";
    gw_chunk ch;
    assert_int_equal(gw_chunk_parse(in, strlen(in), &ch), 0);
    size_t len = 0;
    char *out = gw_chunk_rewrite(&ch, "fast", "mail [EMAIL]", 12, &len);
    assert_string_equal(out, "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"fast\","
                             "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail [EMAIL]\"},\"logprobs\":null,"
                             "\"finish_reason\":null}],\"system_fingerprint\":\"fp\"}");
    assert_int_equal(len, strlen(out));
    free(out);
    /* The parsed chunk is as it was. */
    char *orig = json_dumps(ch.obj, JSON_COMPACT);
    char *want = reparse_dump(in, 0);
    assert_string_equal(orig, want);
    assert_string_equal(ch.content, "mail a@b.c");
    free(orig);
    free(want);
    /* model NULL keeps the upstream's. */
    out = gw_chunk_rewrite(&ch, NULL, "x", 1, &len);
    assert_non_null(strstr(out, "\"model\":\"gpt-4o-2024\""));
    assert_non_null(strstr(out, "\"delta\":{\"content\":\"x\"}"));
    free(out);
    assert_null(gw_chunk_rewrite(&ch, NULL, "\xff", 1, &len));
    /* content NULL: the model alone. */
    out = gw_chunk_rewrite(&ch, "fast", NULL, 0, &len);
    want = reparse_dump(in, 0);
    assert_non_null(strstr(out, "\"model\":\"fast\""));
    assert_non_null(strstr(out, "\"delta\":{\"content\":\"mail a@b.c\"}"));
    assert_int_equal(strlen(out), strlen(want) - strlen("gpt-4o-2024") + strlen("fast"));
    free(want);
    free(out);
    gw_chunk_free(&ch);

    /* No delta: one is made; no choices: only the model changes. */
    const char *bare = "{\"choices\":[{\"index\":0}]}";
    assert_int_equal(gw_chunk_parse(bare, strlen(bare), &ch), 0);
    out = gw_chunk_rewrite(&ch, NULL, "hi", 2, &len);
    assert_string_equal(out, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}");
    free(out);
    gw_chunk_free(&ch);
    const char *usage = "{\"model\":\"u\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}";
    assert_int_equal(gw_chunk_parse(usage, strlen(usage), &ch), 0);
    out = gw_chunk_rewrite(&ch, "fast", "ignored", 7, &len);
    assert_string_equal(out,
                        "{\"model\":\"fast\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}");
    free(out);
    gw_chunk_free(&ch);
}

static void test_chunk_make(void **state) {
    (void)state;
    size_t len;
    char *s = gw_chunk_make("chatcmpl-gw", 5, "fast", "Hi", NULL, NULL, &len);
    assert_string_equal(s,
                        "{\"id\":\"chatcmpl-gw\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"fast\","
                        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},"
                        "\"finish_reason\":null}]}");
    assert_int_equal(len, strlen(s));
    gw_chunk ch;
    assert_int_equal(gw_chunk_parse(s, len, &ch), 0);
    assert_string_equal(ch.content, "Hi");
    assert_null(ch.finish_reason);
    assert_int_equal(ch.has_choices, 1);
    gw_chunk_free(&ch);
    free(s);

    s = gw_chunk_make("id", 5, "fast", NULL, "stop", NULL, &len);
    assert_non_null(strstr(s, "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]"));
    assert_int_equal(gw_chunk_parse(s, len, &ch), 0);
    assert_null(ch.content);
    assert_string_equal(ch.finish_reason, "stop");
    gw_chunk_free(&ch);
    free(s);

    gw_usage u = {.known = 1, .prompt_tokens = 4, .completion_tokens = 6};
    s = gw_chunk_make("id", 5, "fast", "unused", "stop", &u, &len);
    assert_string_equal(s,
                        "{\"id\":\"id\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"fast\","
                        "\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}");
    assert_int_equal(gw_chunk_parse(s, len, &ch), 0);
    assert_int_equal(ch.has_choices, 0);
    assert_int_equal(ch.usage.known, 1);
    assert_int_equal(ch.usage.completion_tokens, 6);
    gw_chunk_free(&ch);
    free(s);
    assert_null(gw_chunk_make("id", 5, "fast", "\xe2\x82", NULL, NULL, &len));
}

/* ---- upstream errors ---------------------------------------------------- */

static void test_context_length_errors(void **state) {
    (void)state;
    static const struct {
        int status;
        const char *body;
        int yes;
    } cases[] = {
        /* OpenAI. */
        {400,
         "{\"error\":{\"message\":\"This model's maximum context length is 4097 tokens. However, your messages "
         "resulted in 5000 tokens. Please reduce the length of the messages.\",\"type\":\"invalid_request_error\","
         "\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}",
         1},
        /* The code alone, worded otherwise (Azure OpenAI, Groq). */
        {400, "{\"error\":{\"message\":\"Input too long.\",\"code\":\"context_length_exceeded\"}}", 1},
        /* vLLM, old and new wording. */
        {400,
         "{\"object\":\"error\",\"message\":\"This model's maximum context length is 2048 tokens. However, you "
         "requested 2100 tokens (2000 in the messages, 100 in the completion). Please reduce the length of the "
         "messages or completion.\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}",
         1},
        {400,
         "{\"error\":{\"message\":\"'max_tokens' or 'max_completion_tokens' is too large: 100. This model's "
         "maximum context length is 4096 tokens and your request has 4000 input tokens (100 > 4096 - 4000).\","
         "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}",
         1},
        /* llama.cpp server, with and without its error type. */
        {400,
         "{\"error\":{\"code\":400,\"message\":\"the request exceeds the available context size. try increasing "
         "the context size or enable context shift\",\"type\":\"exceed_context_size_error\",\"n_prompt_tokens\":"
         "14429,\"n_ctx\":8192}}",
         1},
        {400,
         "{\"error\":{\"code\":400,\"message\":\"request (4390 tokens) exceeds the available context size "
         "(4096 tokens), try increasing it\",\"type\":\"invalid_request_error\"}}",
         1},
        {500, "{\"error\":{\"code\":500,\"message\":\"Context size has been exceeded.\",\"type\":\"server_error\"}}",
         1},
        /* llama-cpp-python, Mistral, Anthropic, TGI. */
        {400, "{\"error\":{\"message\":\"Requested tokens (2285) exceed context window of 2048\"}}", 1},
        {400,
         "{\"object\":\"error\",\"message\":\"Prompt contains 40000 tokens and 0 draft tokens, too large for "
         "model with 32768 maximum context length\",\"type\":\"invalid_request_error\"}",
         1},
        {400,
         "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long: "
         "201234 tokens > 200000 maximum\"}}",
         1},
        {422,
         "{\"error\":\"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 "
         "`inputs` tokens and 200 `max_new_tokens`\",\"error_type\":\"validation\"}",
         1},
        /* Plain text. */
        {400, "This model's maximum context length is 8192 tokens", 1},
        /* Not about the context window. */
        {429,
         "{\"error\":{\"message\":\"Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used "
         "29000, Requested 2000.\",\"type\":\"tokens\",\"code\":\"rate_limit_exceeded\"}}",
         0},
        {400,
         "{\"error\":{\"message\":\"max_tokens is too large: 50000. This model supports at most 16384 "
         "completion tokens, whereas you provided 50000.\",\"type\":\"invalid_request_error\",\"param\":"
         "\"max_tokens\",\"code\":\"invalid_value\"}}",
         0},
        {401, "{\"error\":{\"message\":\"Incorrect API key provided\",\"code\":\"invalid_api_key\"}}", 0},
        {502, "<html><body>502 Bad Gateway</body></html>", 0},
        {500, "", 0},
        /* A success is never an error. */
        {200, "{\"error\":{\"code\":\"context_length_exceeded\"}}", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int got = gw_error_is_context_length(cases[i].status, cases[i].body, strlen(cases[i].body));
        if (got != cases[i].yes)
            print_error("case %zu: %s\n", i, cases[i].body);
        assert_int_equal(got, cases[i].yes);
    }
}

static void test_error_message(void **state) {
    (void)state;
    char buf[256];
    const char *openai = "{\"error\":{\"message\":\"Incorrect API key provided: sk-abc.\\nSee docs.\","
                         "\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}";
    gw_error_message(openai, strlen(openai), buf, sizeof buf);
    assert_string_equal(buf, "Incorrect API key provided: sk-abc. See docs.");
    const char *tgi = "{\"error\":\"Model is overloaded\",\"error_type\":\"overloaded\"}";
    gw_error_message(tgi, strlen(tgi), buf, sizeof buf);
    assert_string_equal(buf, "Model is overloaded");
    const char *vllm = "{\"object\":\"error\",\"message\":\"The model `x` does not exist.\",\"code\":404}";
    gw_error_message(vllm, strlen(vllm), buf, sizeof buf);
    assert_string_equal(buf, "The model `x` does not exist.");
    const char *fastapi = "{\"detail\":\"Not Found\"}";
    gw_error_message(fastapi, strlen(fastapi), buf, sizeof buf);
    assert_string_equal(buf, "Not Found");

    /* Not OpenAI-shaped: the first 200 bytes, made printable. */
    const char *html = "<html>\r\n<h1>502 Bad Gateway</h1>\xff</html>";
    gw_error_message(html, strlen(html), buf, sizeof buf);
    assert_string_equal(buf, "<html>?"
                             "?<h1>502 Bad Gateway</h1>?</html>");
    char longb[300];
    memset(longb, 'x', sizeof longb);
    gw_error_message(longb, sizeof longb, buf, sizeof buf);
    assert_int_equal(strlen(buf), 200);
    gw_error_message("", 0, buf, sizeof buf);
    assert_string_equal(buf, "(empty body)");
    gw_error_message("{\"error\":{\"code\":1}}", 20, buf, sizeof buf);
    assert_string_equal(buf, "{\"error\":{\"code\":1}}");

    /* A small buffer cuts at a character boundary. */
    const char *utf = "{\"error\":{\"message\":\"ab\xe2\x82\xac\"}}";
    char small[5];
    gw_error_message(utf, strlen(utf), small, sizeof small);
    assert_string_equal(small, "ab");
    char tiny[1] = {'z'};
    gw_error_message(utf, strlen(utf), tiny, 1);
    assert_int_equal(tiny[0], '\0');
    gw_error_message(utf, strlen(utf), tiny, 0);
}

/* ---- server-sent events ------------------------------------------------- */

/* Every event as "name\x1fdata\x1e", and when to stop. */
typedef struct sse_log {
    char text[8192];
    size_t len;
    int n_events;
    int stop_at; /* return stop_rc on this event (1-based); 0: never */
    int stop_rc;
} sse_log;

static int record(void *ud, const char *event, const char *data, size_t len) {
    sse_log *log = ud;
    assert_int_equal(data[len], '\0');
    log->len += (size_t)snprintf(log->text + log->len, sizeof log->text - log->len, "%s\x1f", event);
    assert_true(log->len + len + 1 < sizeof log->text);
    memcpy(log->text + log->len, data, len);
    log->len += len;
    log->text[log->len++] = '\x1e';
    log->text[log->len] = '\0';
    log->n_events++;
    return log->n_events == log->stop_at ? log->stop_rc : 0;
}

/* Feeds s[n] in pieces of `step` bytes (0: whole); the first non-zero
 * return, or 0. */
static int feed_steps(gw_sse *p, const char *s, size_t n, size_t step) {
    int first = 0;
    for (size_t at = 0; at < n || (n == 0 && at == 0);) {
        size_t k = step == 0 ? n - at : (n - at < step ? n - at : step);
        int rc = gw_sse_feed(p, s + at, k);
        if (rc && !first)
            first = rc;
        at += k;
        if (k == 0)
            break;
    }
    return first;
}

/* Parses s whole and returns the log (and truncated/rc). */
static void sse_parse(const char *s, size_t n, size_t step, size_t max, sse_log *log, int *rc, int *truncated) {
    memset(log, 0, sizeof *log);
    gw_sse *p = gw_sse_new(max, record, log);
    assert_non_null(p);
    *rc = feed_steps(p, s, n, step);
    *truncated = gw_sse_truncated(p);
    gw_sse_free(p);
}

static void expect_events(const char *s, const char *want) {
    for (size_t step = 0; step <= 3; step++) {
        sse_log log;
        int rc, tr;
        sse_parse(s, strlen(s), step, 4096, &log, &rc, &tr);
        if (strcmp(log.text, want) != 0)
            print_error("step %zu: %s\n got  %s\n want %s\n", step, s, log.text, want);
        assert_int_equal(rc, 0);
        assert_string_equal(log.text, want);
    }
}

static void test_sse_line_endings(void **state) {
    (void)state;
    const char *want = "\x1f"
                       "one\x1e"
                       "\x1f"
                       "two\x1e";
    expect_events("data: one\n\ndata: two\n\n", want);
    expect_events("data: one\r\n\r\ndata: two\r\n\r\n", want);
    expect_events("data: one\r\rdata: two\r\r", want);
    expect_events("data: one\r\n\ndata: two\r\r\n", want);
    /* A lone \r ends a line even before other text. */
    expect_events("data: a\rdata: b\r\r", "\x1f"
                                          "a\nb\x1e");
}

static void test_sse_fields(void **state) {
    (void)state;
    /* Comments and keep-alives, unknown fields, id and retry: ignored. */
    expect_events(": ping\n\n:\n\n: ok\ndata: x\nid: 7\nretry: 1000\nfoo: bar\n\n", "\x1f"
                                                                                    "x\x1e");
    /* Multi-line data joined with \n; one space after the colon dropped. */
    expect_events("data: a\ndata:b\ndata:  c\ndata\ndata:\n\n", "\x1f"
                                                                "a\nb\n c\n\n\x1e");
    /* An empty data line is still an event. */
    expect_events("data\n\n", "\x1f\x1e");
    expect_events("data:\n\n", "\x1f\x1e");
    /* Event names apply to their event only; no data, no event. */
    expect_events("event: ping\n\nevent: error\ndata: {\"e\":1}\n\ndata: next\n\n", "error\x1f{\"e\":1}\x1e"
                                                                                    "\x1f"
                                                                                    "next\x1e");
    expect_events("event: a\nevent: b\ndata: x\n\n", "b\x1f"
                                                     "x\x1e");
    /* A field name is the whole text before the first colon. */
    expect_events("data : x\n\ndata: a:b: c\n\n", "\x1f"
                                                  "a:b: c\x1e");
    /* OpenAI's stream, [DONE] included. */
    expect_events("data: {\"choices\":[]}\n\ndata: [DONE]\n\n", "\x1f{\"choices\":[]}\x1e\x1f[DONE]\x1e");
}

static void test_sse_bom(void **state) {
    (void)state;
    expect_events("\xef\xbb\xbf"
                  "data: x\n\n",
                  "\x1f"
                  "x\x1e");
    /* Only at the very start: later, it is text. */
    expect_events("\xef\xbb\xbf\xef\xbb\xbf"
                  "data: x\n\n",
                  "");
    expect_events("data: \xef\xbb\xbf\n\n", "\x1f\xef\xbb\xbf\x1e");
    /* Bytes that start like a BOM and then differ are line bytes. */
    expect_events("\xef\xbb"
                  "data: x\n\ndata: y\n\n",
                  "\x1f"
                  "y\x1e");
    expect_events("\xef\n"
                  "data: y\n\n",
                  "\x1f"
                  "y\x1e");
    /* Split across feeds. */
    sse_log log = {0};
    gw_sse *p = gw_sse_new(100, record, &log);
    assert_int_equal(gw_sse_feed(p, "\xef", 1), 0);
    assert_int_equal(gw_sse_truncated(p), 1);
    assert_int_equal(gw_sse_feed(p, "\xbb", 1), 0);
    assert_int_equal(gw_sse_feed(p, "", 0), 0);
    assert_int_equal(gw_sse_feed(p,
                                 "\xbf"
                                 "da",
                                 3),
                     0);
    assert_int_equal(gw_sse_feed(p, "ta: z\n\n", 7), 0);
    assert_string_equal(log.text, "\x1f"
                                  "z\x1e");
    assert_int_equal(gw_sse_truncated(p), 0);
    gw_sse_free(p);
}

static void test_sse_crlf_split(void **state) {
    (void)state;
    sse_log log = {0};
    gw_sse *p = gw_sse_new(100, record, &log);
    /* The \n after a feed-ending \r belongs to it: not an empty line. */
    assert_int_equal(gw_sse_feed(p, "data: a\r", 8), 0);
    assert_int_equal(gw_sse_feed(p, "", 0), 0);
    assert_int_equal(gw_sse_feed(p, "\ndata: b\r", 9), 0);
    assert_int_equal(log.n_events, 0);
    assert_int_equal(gw_sse_feed(p, "\n", 1), 0);
    assert_int_equal(log.n_events, 0);
    assert_int_equal(gw_sse_feed(p, "\r", 1), 0);
    assert_int_equal(log.n_events, 1); /* the \r ends the blank line at once */
    assert_int_equal(gw_sse_feed(p, "\n", 1), 0);
    assert_string_equal(log.text, "\x1f"
                                  "a\nb\x1e");
    assert_int_equal(gw_sse_truncated(p), 0);
    gw_sse_free(p);
}

static const char stream[] = "\xef\xbb\xbf: keep-alive\r\n"
                             "event: message\r\n"
                             "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n"
                             "data: {\"id\":\"c1\",\r\ndata: \"x\":1}\n\n"
                             "id: 3\rretry: 10\rdata:lo\r\r"
                             "event: error\ndata\n\n"
                             ": bye\n"
                             "data: [DONE]\n\n";

static void test_sse_any_split_same_events(void **state) {
    (void)state;
    size_t n = sizeof stream - 1;
    sse_log whole, split;
    int rc, tr;
    sse_parse(stream, n, 0, 4096, &whole, &rc, &tr);
    assert_int_equal(rc, 0);
    assert_int_equal(tr, 0);
    assert_int_equal(whole.n_events, 5);
    assert_string_equal(whole.text, "message\x1f{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\x1e"
                                    "\x1f{\"id\":\"c1\",\n\"x\":1}\x1e"
                                    "\x1flo\x1e"
                                    "error\x1f\x1e"
                                    "\x1f[DONE]\x1e");
    /* Every single split point, every pair of split points. */
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b++) {
            memset(&split, 0, sizeof split);
            gw_sse *p = gw_sse_new(4096, record, &split);
            assert_int_equal(gw_sse_feed(p, stream, a), 0);
            assert_int_equal(gw_sse_feed(p, stream + a, b - a), 0);
            assert_int_equal(gw_sse_feed(p, stream + b, n - b), 0);
            assert_int_equal(gw_sse_truncated(p), 0);
            gw_sse_free(p);
            if (strcmp(split.text, whole.text) != 0)
                print_error("split at %zu and %zu\n", a, b);
            assert_string_equal(split.text, whole.text);
        }
    }
    /* Byte by byte. */
    sse_parse(stream, n, 1, 4096, &split, &rc, &tr);
    assert_string_equal(split.text, whole.text);
}

static void test_sse_size_bound(void **state) {
    (void)state;
    /* The bound covers the event's data plus the line being read. */
    /* The second line (16 bytes) is read while the data holds 10. */
    const char *fits = "data: 0123456789\ndata: 0123456789\n\n";
    sse_log log;
    int rc, tr;
    for (size_t step = 0; step <= 2; step++) {
        sse_parse(fits, strlen(fits), step, 26, &log, &rc, &tr);
        assert_int_equal(rc, 0);
        assert_int_equal(log.n_events, 1);
        sse_parse(fits, strlen(fits), step, 25, &log, &rc, &tr);
        assert_int_equal(rc, GW_SSE_ETOOBIG);
        assert_int_equal(log.n_events, 0);
    }
    /* Events before the oversized one come out; nothing after. */
    const char *s = "data: ok\n\ndata: 0123456789012345678901234567890123456789\n\ndata: late\n\n";
    for (size_t step = 0; step <= 5; step++) {
        sse_parse(s, strlen(s), step, 32, &log, &rc, &tr);
        assert_int_equal(rc, GW_SSE_ETOOBIG);
        assert_string_equal(log.text, "\x1fok\x1e");
    }
    /* An endless line fails as soon as it passes the bound, and the
     * parser then takes nothing more. */
    memset(&log, 0, sizeof log);
    gw_sse *p = gw_sse_new(64, record, &log);
    char chunk[16];
    memset(chunk, 'a', sizeof chunk);
    int fed = 0, got = 0;
    while (got == 0 && fed < 100) {
        got = gw_sse_feed(p, chunk, sizeof chunk);
        fed++;
    }
    assert_int_equal(got, GW_SSE_ETOOBIG);
    assert_int_equal(fed, 5); /* 80 > 64 */
    assert_int_equal(gw_sse_feed(p, "\n\ndata: x\n\n", 11), GW_SSE_ETOOBIG);
    assert_int_equal(log.n_events, 0);
    gw_sse_free(p);
    /* Comments count too: a megabyte of ':' is not memory. */
    memset(&log, 0, sizeof log);
    p = gw_sse_new(64, record, &log);
    assert_int_equal(gw_sse_feed(p, ":", 1), 0);
    got = 0;
    for (int i = 0; i < 10 && !got; i++)
        got = gw_sse_feed(p, chunk, sizeof chunk);
    assert_int_equal(got, GW_SSE_ETOOBIG);
    gw_sse_free(p);
}

static void test_sse_truncated(void **state) {
    (void)state;
    static const struct {
        const char *s;
        int truncated;
    } cases[] = {
        {"", 0},           {"data: x\n\n", 0},  {"data: x\n", 1}, /* data waiting for its blank line */
        {"data: x", 1},                                           /* a line without its end */
        {": comment", 1},  {"data: x\r", 1},    {"data: x\r\r", 0},
        {"event: e\n", 0}, /* nothing would have been dispatched */
        {": ok\n", 0},     {"\xef\xbb\xbf", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sse_log log;
        int rc, tr;
        sse_parse(cases[i].s, strlen(cases[i].s), 0, 100, &log, &rc, &tr);
        if (tr != cases[i].truncated)
            print_error("case %zu\n", i);
        assert_int_equal(tr, cases[i].truncated);
        /* The unfinished event never comes out. */
        if (i == 2 || i == 3)
            assert_int_equal(log.n_events, 0);
    }
}

static void test_sse_callback_stops(void **state) {
    (void)state;
    sse_log log = {.stop_at = 2, .stop_rc = 42};
    gw_sse *p = gw_sse_new(100, record, &log);
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    assert_int_equal(gw_sse_feed(p, s, strlen(s)), 42);
    assert_int_equal(log.n_events, 2);
    assert_int_equal(gw_sse_feed(p, "data: 4\n\n", 9), 42);
    assert_int_equal(log.n_events, 2);
    assert_string_equal(log.text, "\x1f"
                                  "1\x1e\x1f"
                                  "2\x1e");
    gw_sse_free(p);
    gw_sse_free(NULL);
}

/* An OpenAI stream through the parser and the chunk reader together. */
typedef struct stream_sum {
    char text[256];
    size_t len;
    gw_usage usage;
    int done;
    char finish[16];
} stream_sum;

static int sum_event(void *ud, const char *event, const char *data, size_t len) {
    stream_sum *s = ud;
    assert_string_equal(event, "");
    if (strcmp(data, "[DONE]") == 0) {
        s->done = 1;
        return 0;
    }
    gw_chunk ch;
    assert_int_equal(gw_chunk_parse(data, len, &ch), 0);
    if (ch.content) {
        memcpy(s->text + s->len, ch.content, ch.content_len);
        s->len += ch.content_len;
    }
    if (ch.finish_reason)
        snprintf(s->finish, sizeof s->finish, "%s", ch.finish_reason);
    if (ch.usage.known)
        s->usage = ch.usage;
    gw_chunk_free(&ch);
    return 0;
}

static void test_sse_openai_stream(void **state) {
    (void)state;
    const char *body =
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
        "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
        "\"Hello\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
        "\" world\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},"
        "\"finish_reason\":\"stop\"}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
        "\"completion_tokens\":2,\"total_tokens\":11}}\n\n"
        "data: [DONE]\n\n";
    stream_sum sum = {0};
    gw_sse *p = gw_sse_new(1 << 16, sum_event, &sum);
    assert_int_equal(feed_steps(p, body, strlen(body), 7), 0);
    assert_int_equal(gw_sse_truncated(p), 0);
    gw_sse_free(p);
    assert_int_equal(sum.done, 1);
    assert_string_equal(sum.text, "Hello world");
    assert_string_equal(sum.finish, "stop");
    assert_int_equal(sum.usage.known, 1);
    assert_int_equal(sum.usage.prompt_tokens, 9);
    assert_int_equal(sum.usage.completion_tokens, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_request),
        cmocka_unit_test(test_every_documented_shape),
        cmocka_unit_test(test_nullable_fields_count_as_absent),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_routing_text_without_user),
        cmocka_unit_test(test_refused_body_and_model),
        cmocka_unit_test(test_refused_messages),
        cmocka_unit_test(test_refused_fields),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_estimate_tokens),
        cmocka_unit_test(test_upstream_body),
        cmocka_unit_test(test_cache_material),
        cmocka_unit_test(test_completion_parse),
        cmocka_unit_test(test_completion_map_content),
        cmocka_unit_test(test_completion_make),
        cmocka_unit_test(test_chunk_parse),
        cmocka_unit_test(test_chunk_rewrite),
        cmocka_unit_test(test_chunk_make),
        cmocka_unit_test(test_context_length_errors),
        cmocka_unit_test(test_error_message),
        cmocka_unit_test(test_sse_line_endings),
        cmocka_unit_test(test_sse_fields),
        cmocka_unit_test(test_sse_bom),
        cmocka_unit_test(test_sse_crlf_split),
        cmocka_unit_test(test_sse_any_split_same_events),
        cmocka_unit_test(test_sse_size_bound),
        cmocka_unit_test(test_sse_truncated),
        cmocka_unit_test(test_sse_callback_stops),
        cmocka_unit_test(test_sse_openai_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
