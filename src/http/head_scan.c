/*
 * head_scan.c - the few facts conn.c reads from a request head before
 * evhttp parses it: the declared Content-Length (and whether two disagree),
 * whether the body is chunked, and whether a chunk-size line starts well.
 *
 * Input is untrusted bytes of a given length, not NUL-terminated; nothing
 * here reads outside [p, p + n). Fuzzed by tests/fuzz/fuzz_http_head.c.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* Reads the head's Content-Length lines (case-insensitive). Returns the
 * value, -1 when there is none, -2 when they conflict or do not parse. */
int64_t http_head_content_length(const char *head, size_t n) {
    int64_t found = -1;
    static const char name[] = "content-length:";
    for (size_t i = 0; i + sizeof name < n; i++) {
        if ((i > 0 && head[i - 1] != '\n') || strncasecmp(head + i, name, sizeof name - 1) != 0)
            continue;
        size_t j = i + sizeof name - 1;
        while (j < n && (head[j] == ' ' || head[j] == '\t'))
            j++;
        int64_t v = 0;
        size_t digits = 0;
        while (j < n && head[j] >= '0' && head[j] <= '9' && digits < 18) {
            v = v * 10 + (head[j++] - '0');
            digits++;
        }
        while (j < n && (head[j] == ' ' || head[j] == '\t'))
            j++;
        if (digits == 0 || j >= n || (head[j] != '\r' && head[j] != '\n'))
            return -2;
        if (found >= 0 && found != v)
            return -2;
        found = v;
    }
    return found;
}

/* Whether the head has "Transfer-Encoding: ...chunked". */
int http_head_is_chunked(const char *head, size_t n) {
    static const char name[] = "transfer-encoding:";
    for (size_t i = 0; i + sizeof name < n; i++) {
        if ((i > 0 && head[i - 1] != '\n') || strncasecmp(head + i, name, sizeof name - 1) != 0)
            continue;
        const char *end = memchr(head + i, '\n', n - i);
        size_t len = end ? (size_t)(end - (head + i)) : n - i;
        for (size_t j = sizeof name - 1; j + 7 <= len; j++)
            if (strncasecmp(head + i + j, "chunked", 7) == 0)
                return 1;
    }
    return 0;
}

/* The start of a chunk: hex digits, then ';' (extensions), CR or more
 * digits still to come; `n` bytes are available. */
int http_chunk_size_line_ok(const char *p, size_t n) {
    size_t i = 0;
    while (i < n && ((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') ||
                     (p[i] >= 'A' && p[i] <= 'F')))
        i++;
    if (i == n)
        return 1; /* only digits so far */
    return i > 0 && (p[i] == '\r' || p[i] == ';' || p[i] == ' ' || p[i] == '\t');
}

