/*
 * fuzz_redis_url.c - libFuzzer target for the Redis backend's URL parser
 * (kv_redis_create): any bytes as redis.url either make a store or fail
 * with KV_EINVAL and a message; never a crash, an out-of-bounds access or
 * a leak. Nothing connects: no loop is attached, so a store made here is
 * never healthy.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *url = malloc(size + 1);
    if (!url)
        return 0;
    memcpy(url, data, size);
    url[size] = 0;
    char err[256] = "";
    kv_redis_options o = {.url = url};
    kv_store *s = NULL;
    int rc = kv_redis_create(&o, &s, err, sizeof err);
    if (rc == KV_OK) {
        if (!s)
            abort();
        kv_health h;
        kv_get_health(s, &h);
        if (h.ok)
            abort(); /* nothing attached: never healthy */
        kv_destroy(s);
    } else if (s || rc != KV_EINVAL || !err[0]) {
        abort();
    }
    free(url);
    return 0;
}
