/*
 * fuzz_sse.c - libFuzzer target for the gateway's server-sent events
 * parser (gw_sse_*): a stream fed whole and the same stream fed in
 * fuzz-chosen pieces give the same events, the same result and the same
 * truncation; every event's data is NUL-terminated and within the bound;
 * never a crash, an out-of-bounds access or a leak (abort on mismatch).
 *
 * Input: [flags][n][n piece lengths][stream]. flags & 3 picks the bound
 * (8, 64, 1024 or 1 MiB bytes), (flags >> 2) & 7 the event whose callback
 * stops the parser (0: none). Pieces cycle through the n lengths (0 is an
 * empty feed then one byte; n = 0 feeds byte by byte).
 *
 * Test-only: it reaches the gateway's internal header through the
 * aiserve_gateway_internal target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STOP_RC 99

/* The events seen, each as [event length][event][data length][data]. */
typedef struct run {
    uint8_t *log;
    size_t len, cap;
    size_t max;
    int n_events, stop_at;
} run;

static void put(run *r, const void *p, size_t n) {
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->len + n)
            cap *= 2;
        r->log = realloc(r->log, cap);
        if (!r->log)
            abort();
        r->cap = cap;
    }
    memcpy(r->log + r->len, p, n);
    r->len += n;
}

static int on_event(void *ud, const char *event, const char *data, size_t len) {
    run *r = ud;
    if (data[len] != '\0' || len > r->max)
        abort();
    size_t elen = strlen(event);
    put(r, &elen, sizeof elen);
    put(r, event, elen);
    put(r, &len, sizeof len);
    put(r, data, len);
    return ++r->n_events == r->stop_at ? STOP_RC : 0;
}

/* Feeds s[n] in the pieces lens[n_lens] describe; the first non-zero
 * return (0 when none) and the truncation flag. */
static int feed(run *r, const uint8_t *s, size_t n, const uint8_t *lens, size_t n_lens, int *truncated) {
    gw_sse *p = gw_sse_new(r->max, on_event, r);
    if (!p)
        abort();
    int first = 0;
    for (size_t at = 0, i = 0; at < n; i++) {
        size_t piece = lens ? lens[i % n_lens] : n;
        if (piece == 0) {
            int rc = gw_sse_feed(p, (const char *)s + at, 0);
            first = first ? first : rc;
            piece = 1;
        }
        if (piece > n - at)
            piece = n - at;
        int rc = gw_sse_feed(p, (const char *)s + at, piece);
        first = first ? first : rc;
        at += piece;
    }
    *truncated = gw_sse_truncated(p);
    gw_sse_free(p);
    return first;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const size_t bounds[] = {8, 64, 1024, 1 << 20};
    static const uint8_t one = 1;
    if (size < 2)
        return 0;
    size_t n_lens = data[1] & 15;
    if (size < 2 + n_lens)
        return 0;
    const uint8_t *lens = n_lens ? data + 2 : &one;
    const uint8_t *s = data + 2 + n_lens;
    size_t n = size - 2 - n_lens;
    run whole = {.max = bounds[data[0] & 3], .stop_at = (data[0] >> 2) & 7};
    run split = whole;
    int t1 = 0, t2 = 0;
    int rc1 = feed(&whole, s, n, NULL, 0, &t1);
    int rc2 = feed(&split, s, n, lens, n_lens ? n_lens : 1, &t2);
    if (rc1 != rc2 || whole.len != split.len || whole.n_events != split.n_events ||
        (whole.len && memcmp(whole.log, split.log, whole.len) != 0))
        abort();
    /* After an error each run stops where it saw it; otherwise both saw
     * the whole stream. */
    if (rc1 == 0 && t1 != t2)
        abort();
    if (rc1 != 0 && rc1 != GW_SSE_ETOOBIG && rc1 != GW_SSE_ENOMEM && rc1 != STOP_RC)
        abort();
    free(whole.log);
    free(split.log);
    return 0;
}
