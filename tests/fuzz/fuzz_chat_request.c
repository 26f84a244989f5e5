/*
 * fuzz_chat_request.c - libFuzzer target for the gateway's chat request
 * parser (gw_chat_parse) and what the gateway derives from a request: any
 * bytes either parse into a request within the (small) limits whose
 * upstream body is a valid request again, with the same cache material,
 * or are refused with a request status, a NUL-terminated param and a
 * message; never a crash, an out-of-bounds access or a leak.
 *
 * The same bytes also go through the upstream-answer readers
 * (gw_completion_parse, gw_chunk_parse and their rewriters, the error-body
 * readers), which see upstream bytes of any shape.
 *
 * Test-only: it reaches the gateway's internal header through the
 * aiserve_gateway_internal target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const gw_limits fuzz_limits = {.max_messages = 8, .max_chars = 256, .max_tokens = 128};

/* The cache material of c for target "t" (aborts when out of memory). */
static char *material(const gw_chat *c, size_t *len) {
    char *m = gw_chat_cache_material(c, "t", len);
    if (!m || strlen(m) != *len)
        abort();
    return m;
}

static void check_request(const char *text, size_t size) {
    gw_chat c;
    gw_fail fail;
    if (gw_chat_parse(text, size, &fuzz_limits, &c, &fail) != 0) {
        if (fail.status != GATEWAY_EJSON && fail.status != GATEWAY_EUTF8 && fail.status != GATEWAY_EINVAL &&
            fail.status != GATEWAY_ETOOBIG)
            abort();
        if (!memchr(fail.param, '\0', sizeof fail.param) || !memchr(fail.message, '\0', sizeof fail.message) ||
            fail.message[0] == '\0' || c.body || c.routing_text)
            abort();
        return;
    }
    if (!c.model || !c.routing_text || c.n_messages < 1 || c.n_messages > fuzz_limits.max_messages ||
        c.text_chars > fuzz_limits.max_chars || c.est_tokens > fuzz_limits.max_tokens || c.max_tokens == 0 ||
        c.max_tokens < -1)
        abort();
    /* The upstream body is a valid request for the upstream's model, that
     * streams usage when the client streams, and asks the same question. */
    size_t up_len = 0, m1_len = 0, m2_len = 0;
    char *up = gw_chat_upstream_body(&c, "upstream-model", &up_len);
    if (!up || strlen(up) != up_len)
        abort();
    gw_chat again;
    if (gw_chat_parse(up, up_len, &fuzz_limits, &again, &fail) != 0)
        abort();
    if (strcmp(again.model, "upstream-model") != 0 || again.stream != c.stream || (c.stream && !again.include_usage) ||
        again.n_messages != c.n_messages || again.text_chars != c.text_chars ||
        again.deterministic != c.deterministic || again.max_tokens != c.max_tokens ||
        strcmp(again.routing_text, c.routing_text) != 0)
        abort();
    char *m1 = material(&c, &m1_len), *m2 = material(&again, &m2_len);
    if (m1_len != m2_len || memcmp(m1, m2, m1_len) != 0)
        abort();
    free(m1);
    free(m2);
    free(up);
    gw_chat_free(&again);
    gw_chat_free(&c);
}

static char *upper(void *ud, size_t choice, const char *text, size_t len) {
    (void)ud, (void)choice;
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    for (size_t i = 0; i < len; i++)
        s[i] = text[i] >= 'a' && text[i] <= 'z' ? (char)(text[i] - 32) : (text[i] ? text[i] : ' ');
    s[len] = '\0';
    return s;
}

static void check_answers(const char *text, size_t size) {
    json_t *completion = NULL;
    gw_usage usage;
    gw_fail fail;
    if (gw_completion_parse(text, size, &completion, &usage, &fail) == 0) {
        if (gw_completion_map_content(completion, upper, NULL) != 0)
            abort();
        json_decref(completion);
    } else if (completion || fail.status != GATEWAY_EUPSTREAM) {
        abort();
    }
    gw_chunk chunk;
    if (gw_chunk_parse(text, size, &chunk) == 0) {
        size_t len = 0;
        char *out = gw_chunk_rewrite(&chunk, "m", "x", 1, &len);
        if (!out)
            abort();
        /* The rewrite reads back with its content wherever a first choice
         * was there to hold it, and the new model always. */
        int has_first = json_is_object(json_array_get(json_object_get(chunk.obj, "choices"), 0));
        gw_chunk back;
        if (gw_chunk_parse(out, len, &back) != 0)
            abort();
        if ((has_first && (!back.content || back.content_len != 1 || back.content[0] != 'x')) ||
            strcmp(json_string_value(json_object_get(back.obj, "model")), "m") != 0)
            abort();
        gw_chunk_free(&back);
        free(out);
        gw_chunk_free(&chunk);
    }
    (void)gw_error_is_context_length(400, text, size);
    char buf[64];
    gw_error_message(text, size, buf, sizeof buf);
    if (!memchr(buf, '\0', sizeof buf))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_request((const char *)data, size);
    check_answers((const char *)data, size);
    return 0;
}
