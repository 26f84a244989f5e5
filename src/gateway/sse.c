/*
 * sse.c - an incremental text/event-stream parser (wire_int.h), as the
 * WHATWG HTML standard's "interpreting an event stream" reads a stream:
 *
 * - Bytes arrive in feeds of any size; a line that spans feeds is kept in
 *   `line` until its end arrives, a line wholly inside one feed is read in
 *   place. A \r ending one feed and a \n starting the next are one line
 *   ending (after_cr).
 * - The UTF-8 BOM is matched byte by byte, so it may be split too; bytes
 *   that start like a BOM and then differ are ordinary line bytes.
 * - Memory is bounded: the event's data plus the line being read never
 *   pass max_event_bytes (checked as bytes arrive, so a feed's size never
 *   changes which events come out).
 * - The parser is a state machine over its own buffers; one parser per
 *   stream, one thread at a time.
 */
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

/* A growable byte buffer, always with room for a terminating NUL. */
typedef struct sse_buf {
    char *p;
    size_t len, cap;
} sse_buf;

static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
#define BOM_DONE 3 /* bom_matched: past the BOM (or there was none) */

struct gw_sse {
    gw_sse_event_fn fn;
    void *ud;
    size_t max;    /* max_event_bytes */
    sse_buf line;  /* the line not yet ended */
    sse_buf data;  /* the event's data lines joined with \n */
    sse_buf event; /* the event's name */
    int has_data;  /* a data line was seen (data may still be "") */
    int after_cr;  /* the last byte fed was a \r ending a line */
    unsigned bom_matched;
    int err; /* once non-zero, every feed returns it */
};

/* Appends s[n] to b, growing it (b->len + n stays within max by the
 * callers' checks). */
static int buf_append(sse_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return GW_SSE_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

gw_sse *gw_sse_new(size_t max_event_bytes, gw_sse_event_fn fn, void *ud) {
    gw_sse *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fn = fn;
    p->ud = ud;
    p->max = max_event_bytes;
    /* data and event are handed to the callback even when empty. */
    if (buf_append(&p->data, "", 0) < 0 || buf_append(&p->event, "", 0) < 0) {
        gw_sse_free(p);
        return NULL;
    }
    return p;
}

void gw_sse_free(gw_sse *p) {
    if (!p)
        return;
    free(p->line.p);
    free(p->data.p);
    free(p->event.p);
    free(p);
}

/* A blank line: the event goes out when it has data. */
static int dispatch(gw_sse *p) {
    int rc = 0;
    if (p->has_data)
        rc = p->fn(p->ud, p->event.p, p->data.p, p->data.len);
    p->has_data = 0;
    p->data.len = 0;
    p->data.p[0] = '\0';
    p->event.len = 0;
    p->event.p[0] = '\0';
    return rc;
}

/* One complete line s[n] (its ending removed). */
static int process_line(gw_sse *p, const char *s, size_t n) {
    if (n > p->max - p->data.len)
        return GW_SSE_ETOOBIG;
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':')
        return 0; /* a comment */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *value = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - value);
    if (vlen && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (flen == 4 && memcmp(s, "data", 4) == 0) {
        /* The joined data stays within max: vlen + 1 <= n. */
        int rc = p->has_data ? buf_append(&p->data, "\n", 1) : 0;
        p->has_data = 1;
        return rc ? rc : buf_append(&p->data, value, vlen);
    }
    if (flen == 5 && memcmp(s, "event", 5) == 0) {
        p->event.len = 0;
        return buf_append(&p->event, value, vlen);
    }
    return 0; /* id, retry and unknown fields */
}

/* Bytes of a line that has not ended yet. */
static int hold(gw_sse *p, const char *s, size_t n) {
    if (p->line.len + n > p->max - p->data.len)
        return GW_SSE_ETOOBIG;
    return buf_append(&p->line, s, n);
}

/* Consumes what it can of a BOM at the stream's start; returns how many
 * bytes of buf it took (matched BOM bytes are dropped, a partial match
 * that then differs is given back as line bytes). */
static size_t skip_bom(gw_sse *p, const char *buf, size_t len, int *rc) {
    size_t i = 0;
    while (p->bom_matched < BOM_DONE && i < len) {
        if ((unsigned char)buf[i] == bom[p->bom_matched]) {
            p->bom_matched++;
            i++;
            continue;
        }
        unsigned had = p->bom_matched;
        p->bom_matched = BOM_DONE;
        *rc = hold(p, (const char *)bom, had);
    }
    return i;
}

int gw_sse_feed(gw_sse *p, const char *buf, size_t len) {
    if (p->err)
        return p->err;
    int rc = 0;
    size_t i = skip_bom(p, buf, len, &rc);
    if (!rc && p->after_cr && i < len) {
        p->after_cr = 0;
        i += buf[i] == '\n';
    }
    while (!rc && i < len) {
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r')
            j++;
        if (j == len) {
            rc = hold(p, buf + i, len - i);
            break;
        }
        if (p->line.len) {
            rc = hold(p, buf + i, j - i);
            if (!rc)
                rc = process_line(p, p->line.p, p->line.len);
            p->line.len = 0;
        } else {
            rc = process_line(p, buf + i, j - i);
        }
        if (buf[j] == '\r') {
            if (j + 1 < len)
                j += buf[j + 1] == '\n';
            else
                p->after_cr = 1;
        }
        i = j + 1;
    }
    p->err = rc;
    return rc;
}

int gw_sse_truncated(const gw_sse *p) {
    return p->line.len > 0 || p->has_data || (p->bom_matched > 0 && p->bom_matched < BOM_DONE);
}
