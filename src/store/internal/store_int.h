/*
 * store_int.h - what the store module's files share: the base every
 * backend's store struct starts with. Not a public header.
 */
#ifndef AISERVE_STORE_INT_H
#define AISERVE_STORE_INT_H

#include "store.h"

/* Every backend's struct begins with this, so a kv_store * is also a
 * pointer to the backend's own struct. */
struct kv_store {
    const kv_backend *backend;
};

/* Checks bucket params; 0 or KV_EINVAL. Shared so every backend refuses
 * the same inputs. */
int kv_bucket_params_check(const kv_bucket_params *p);

/* The integer token-bucket step every backend performs (the Redis script
 * does the same arithmetic): `level` is in units (a token is period_us
 * units), `last_us` the time of the previous step; fresh means no bucket
 * yet (it starts full). Updates *level / *last_us and fills *out. */
void kv_bucket_step(const kv_bucket_params *p, int fresh, int64_t *level, uint64_t *last_us, uint64_t now_us,
                    kv_bucket_result *out);

/* Where a Redis is, parsed from a redis:// or unix:// URL (redis_link.c):
 * shared by the async backend (redis.c) and the synchronous links. */
typedef struct redis_target {
    char *host, *unix_path, *user, *password; /* malloc'd; NULL when absent */
    char endpoint[300]; /* "host:port" or the socket path, for messages (never the password) */
    int port, db;
} redis_target;

/* Fills t from url: KV_OK, or KV_EINVAL with a message in err[cap] (t may
 * hold parts: free it either way). */
int redis_target_parse(redis_target *t, const char *url, char *err, size_t cap);
void redis_target_free(redis_target *t);

#endif /* AISERVE_STORE_INT_H */
