/*
 * fuzz_pii.c - libFuzzer target for the guardrails' PII detectors
 * (guard_pii_scan, guard_pii_apply, guard_pii_stream_*), which read text
 * from clients and upstream LLMs.
 *
 * Input: byte 0 is the policy (2 bits per type: 0 off, 1 redact, 2 block,
 * 3 redact); byte 1's low 4 bits are n, the next n bytes chunk sizes used
 * in turn (0: an empty feed); the rest is the text. Checks, abort() on
 * failure:
 *  - scan: matches in order, non-overlapping, inside the text, of enabled
 *    types, on word boundaries, and apply's text is the text with exactly
 *    those matches replaced;
 *  - streaming: the chunks released concatenate to apply's text with the
 *    same counts (when apply blocks: the stream blocks, having released a
 *    prefix of it); a release never splits a redaction, and no more than
 *    PII_HOLD_MAX bytes are held back after any feed.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"

#define PII_HOLD_MAX 319 /* guard.h: the most a stream holds back */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_alnum(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static size_t redaction_len(guard_pii_type t) { return strlen("[REDACTED:]") + strlen(guard_pii_type_name(t)); }

/* The input offset that an output prefix of out_len bytes (of apply's
 * text) stands for; aborts when the prefix ends inside a redaction. */
static size_t input_offset(const guard_pii_match *m, size_t n, size_t out_len) {
    size_t in = 0, out = 0;
    for (size_t i = 0; i < n; i++) {
        if (out_len <= out + (m[i].start - in))
            return in + (out_len - out);
        out += m[i].start - in + redaction_len(m[i].type);
        if (out_len < out)
            abort();
        in = m[i].start + m[i].len;
    }
    return in + (out_len - out);
}

/* Appends a feed's or the finish's answer; checks its shape. */
static void take(char **all, size_t *all_len, int rc, char *out, size_t out_len, bool *blocked) {
    if (rc != 0 && rc != 1)
        abort(); /* -1: out of memory, which libFuzzer's limits do not reach */
    if (!out || out[out_len] != 0 || (*blocked && rc != 1) || (rc == 1 && out_len != 0))
        abort();
    *blocked = *blocked || rc == 1;
    char *grown = realloc(*all, *all_len + out_len + 1);
    if (!grown)
        abort();
    memcpy(grown + *all_len, out, out_len);
    *all_len += out_len;
    *all = grown;
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    guard_pii_policy p;
    for (int t = 0; t < GUARD_PII_COUNT; t++) {
        int a = (data[0] >> (2 * t)) & 3;
        p.action[t] = a == 2 ? GUARD_PII_BLOCK : a == 0 ? GUARD_PII_OFF : GUARD_PII_REDACT;
    }
    size_t n_sizes = data[1] & 15;
    if (size < 2 + n_sizes)
        return 0;
    const uint8_t *sizes = data + 2;
    size_t len = size - 2 - n_sizes;
    /* A private copy so ASan sees the text's exact bounds. */
    char *text = malloc(len ? len : 1);
    if (!text)
        return 0;
    memcpy(text, data + 2 + n_sizes, len);

    guard_pii_match *m = malloc((len + 1) * sizeof *m);
    guard_pii_result want;
    if (!m || guard_pii_apply(&p, text, len, &want) != 0)
        abort();
    size_t n = guard_pii_scan(&p, text, len, m, len + 1);
    unsigned total = 0;
    for (int t = 0; t < GUARD_PII_COUNT; t++)
        total += want.found[t];
    if (n != total || want.text[want.len] != 0)
        abort();
    bool any_block = false;
    for (size_t i = 0, end = 0; i < n; i++) {
        size_t s = m[i].start, e = m[i].start + m[i].len;
        if ((unsigned)m[i].type >= GUARD_PII_COUNT || p.action[m[i].type] == GUARD_PII_OFF || m[i].len == 0 ||
            s < end || e > len)
            abort();
        if (s > 0 && is_alnum((unsigned char)text[s - 1]) && is_alnum((unsigned char)text[s]))
            abort();
        if (e < len && is_alnum((unsigned char)text[e - 1]) && is_alnum((unsigned char)text[e]))
            abort();
        if ((unsigned char)text[s] >= 0x80 || (unsigned char)text[e - 1] >= 0x80)
            abort();
        any_block = any_block || p.action[m[i].type] == GUARD_PII_BLOCK;
        end = e;
    }
    if (any_block != (want.blocked != 0))
        abort();
    /* apply's text is the text with those matches replaced. */
    size_t at_in = 0, at_out = 0;
    for (size_t i = 0; i < n; i++) {
        size_t gap = m[i].start - at_in;
        const char *name = guard_pii_type_name(m[i].type);
        if (at_out + gap + redaction_len(m[i].type) > want.len ||
            memcmp(want.text + at_out, text + at_in, gap) != 0 ||
            memcmp(want.text + at_out + gap, "[REDACTED:", 10) != 0 ||
            memcmp(want.text + at_out + gap + 10, name, strlen(name)) != 0 ||
            want.text[at_out + gap + redaction_len(m[i].type) - 1] != ']')
            abort();
        at_out += gap + redaction_len(m[i].type);
        at_in = m[i].start + m[i].len;
    }
    if (want.len - at_out != len - at_in || memcmp(want.text + at_out, text + at_in, len - at_in) != 0)
        abort();

    /* The same text streamed in the chunks the input chose. */
    bool any_size = false;
    for (size_t i = 0; i < n_sizes; i++)
        any_size = any_size || sizes[i] != 0;
    guard_pii_stream *st = guard_pii_stream_new(&p);
    if (!st)
        abort();
    char *all = NULL;
    size_t all_len = 0, fed = 0;
    bool blocked = false;
    for (size_t j = 0; fed < len; j++) {
        size_t chunk = any_size ? sizes[j % n_sizes] : len;
        if (chunk > len - fed)
            chunk = len - fed;
        char *out = NULL;
        size_t out_len = 0;
        int rc = guard_pii_stream_feed(st, text + fed, chunk, &out, &out_len);
        take(&all, &all_len, rc, out, out_len, &blocked);
        fed += chunk;
        if (all_len > want.len || memcmp(all, want.text, all_len) != 0)
            abort();
        if (!blocked && fed - input_offset(m, n, all_len) > PII_HOLD_MAX)
            abort();
    }
    char *out = NULL;
    size_t out_len = 0;
    int rc = guard_pii_stream_finish(st, &out, &out_len);
    take(&all, &all_len, rc, out, out_len, &blocked);
    unsigned found[GUARD_PII_COUNT];
    guard_pii_stream_found(st, found);
    guard_pii_stream_free(st);
    if (blocked != (want.blocked != 0))
        abort();
    if (!blocked && (all_len != want.len || memcmp(all, want.text, all_len) != 0 ||
                     memcmp(found, want.found, sizeof found) != 0))
        abort();
    if (blocked && (all_len > want.len || memcmp(all, want.text, all_len) != 0))
        abort();

    free(all);
    free(want.text);
    free(m);
    free(text);
    return 0;
}
