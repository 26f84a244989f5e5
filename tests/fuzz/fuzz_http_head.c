/*
 * fuzz_http_head.c - libFuzzer target for the raw request-head scanner
 * (src/http/head_scan.c), which reads untrusted bytes before evhttp does.
 * The input is a head; the same bytes are also tried as a chunk-size line.
 * Checks: no read outside the input (ASan), results in their documented
 * ranges.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private copy so ASan sees the exact bounds. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    int64_t cl = http_head_content_length(buf, size);
    if (cl < -2 || cl > 999999999999999999LL)
        abort();
    int chunked = http_head_is_chunked(buf, size);
    if (chunked != 0 && chunked != 1)
        abort();
    int ok = http_chunk_size_line_ok(buf, size);
    if (ok != 0 && ok != 1)
        abort();
    free(buf);
    return 0;
}
