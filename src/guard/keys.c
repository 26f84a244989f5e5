/*
 * keys.c - API keys as the server sees them: the key store file turned
 * into an immutable keyset with a lookup table, the live store that swaps
 * keysets on reload while event loops keep reading, and the per-request
 * check (missing / invalid / revoked / lacking scope).
 *
 * Design (guard.h has the file format and the reload protocol):
 *  - A presented key is hashed with SHA-256; the hash's first 8 bytes pick
 *    a slot in an open-addressing table of record indexes, and every
 *    record met on the probe path is compared with CRYPTO_memcmp on all 32
 *    bytes. Nothing branches on the bytes of a stored hash before that
 *    comparison except the slot index, which only the presented key decides.
 *  - Readers never take a lock on the hot path: each thread's view holds
 *    its own reference and checks one atomic generation counter.
 *  - This file never logs and never keeps a presented key: it is hashed on
 *    the caller's stack and forgotten.
 *
 * Threads: see guard.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "guard_int.h"

/* ---- statuses, errors, scopes ----------------------------------------- */

static const status_row rows[] = {GUARD_STATUS_MAP(STATUS_TABLE_ROW)};

const char *guard_status_name(int status) { return status_name(rows, STATUS_COUNT(rows), status, "GUARD_UNKNOWN"); }
const char *guard_status_message(int status) { return status_message(rows, STATUS_COUNT(rows), status); }

int guard_set_error(guard_error *err, int status, const char *fmt, ...) {
    if (err) {
        err->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

static const char *const scope_names[GUARD_N_SCOPES] = {
#define GUARD_SCOPE_NAME(name, text) text,
    GUARD_SCOPE_MAP(GUARD_SCOPE_NAME)
#undef GUARD_SCOPE_NAME
};

const char *guard_scope_name(guard_scopes scopes) {
    for (int i = 0; i < GUARD_N_SCOPES; i++)
        if (scopes & (1u << i))
            return scope_names[i];
    return "";
}

static int scope_bit(const char *s, size_t n) {
    for (int i = 0; i < GUARD_N_SCOPES; i++)
        if (strlen(scope_names[i]) == n && memcmp(scope_names[i], s, n) == 0)
            return i;
    return -1;
}

int guard_scopes_parse(const char *text, guard_scopes *out, guard_error *err) {
    guard_scopes scopes = 0;
    const char *p = text ? text : "";
    if (!*p)
        return guard_set_error(err, GUARD_EINVAL,
                               "no scopes given (choose from predict, embed, batch, chat, admin)");
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0)
            return guard_set_error(err, GUARD_EINVAL, "empty scope in '%.100s'", text);
        int bit = scope_bit(p, n);
        if (bit < 0)
            return guard_set_error(err, GUARD_EINVAL,
                                   "unknown scope '%.*s' (choose from predict, embed, batch, chat, admin)",
                                   (int)(n < 64 ? n : 64), p);
        scopes |= 1u << bit;
        if (!comma)
            break;
        p = comma + 1;
    }
    *out = scopes;
    return 0;
}

int guard_scopes_format(guard_scopes scopes, char *buf, size_t cap) {
    size_t len = 0;
    if (cap)
        buf[0] = 0;
    for (int i = 0; i < GUARD_N_SCOPES; i++) {
        if (!(scopes & (1u << i)))
            continue;
        int w = snprintf(buf + (len < cap ? len : cap), len < cap ? cap - len : 0, "%s%s",
                         len ? "," : "", scope_names[i]);
        len += (size_t)w;
    }
    return (int)len;
}

bool guard_name_is_valid(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > GUARD_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

void guard_now_rfc3339(char *buf, size_t cap) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- SHA-256 ----------------------------------------------------------- */

/* Fetched once: an implicit fetch per digest would look the algorithm up
 * in the provider store on every request. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/* One digest context per thread, made once and reused (EVP_Digest would
 * allocate and free one per key check). Freed at thread exit. */
static pthread_key_t sha256_ctx_key;

static void sha256_ctx_free(void *ctx) { EVP_MD_CTX_free(ctx); }

static void sha256_fetch(void) {
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    pthread_key_create(&sha256_ctx_key, sha256_ctx_free);
}

int guard_sha256(const void *data, size_t len, unsigned char out[GUARD_SHA256_BYTES]) {
    pthread_once(&sha256_once, sha256_fetch);
    const EVP_MD *md = sha256_md ? sha256_md : EVP_sha256();
    EVP_MD_CTX *ctx = pthread_getspecific(sha256_ctx_key);
    if (!ctx && (ctx = EVP_MD_CTX_new()) != NULL && pthread_setspecific(sha256_ctx_key, ctx) != 0) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    unsigned int n = 0;
    if (!ctx) /* out of memory: the one-shot call */
        return EVP_Digest(data, len, out, &n, md, NULL) == 1 && n == GUARD_SHA256_BYTES ? 0 : -1;
    if (EVP_DigestInit_ex(ctx, md, NULL) != 1 || EVP_DigestUpdate(ctx, data, len) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != GUARD_SHA256_BYTES)
        return -1;
    return 0;
}

/* ---- the file ----------------------------------------------------------- */

int guard_file_read(const char *path, char **data, size_t *len, struct stat *st, bool *exists,
                    guard_error *err) {
    *data = NULL;
    *len = 0;
    *exists = false;
    memset(st, 0, sizeof *st);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return guard_set_error(err, GUARD_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    int rc = 0;
    if (fstat(fd, st) != 0) {
        rc = guard_set_error(err, GUARD_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    *exists = true;
    if (!S_ISREG(st->st_mode)) {
        rc = guard_set_error(err, GUARD_EIO, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)st->st_size > GUARD_FILE_MAX_BYTES) {
        rc = guard_set_error(err, GUARD_EIO, "%s: %lld bytes; a key store may hold at most %u", path,
                             (long long)st->st_size, GUARD_FILE_MAX_BYTES);
        goto done;
    }
    /* Read to EOF rather than trusting st_size: the file may be growing. */
    size_t cap = (size_t)st->st_size + 1, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        rc = guard_set_error(err, GUARD_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (n == cap) {
            if (cap > GUARD_FILE_MAX_BYTES) {
                free(buf);
                rc = guard_set_error(err, GUARD_EIO, "%s: larger than %u bytes", path, GUARD_FILE_MAX_BYTES);
                goto done;
            }
            char *bigger = realloc(buf, 2 * cap + 1);
            if (!bigger) {
                free(buf);
                rc = guard_set_error(err, GUARD_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            rc = guard_set_error(err, GUARD_EIO, "%s: cannot read: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
done:
    close(fd);
    return rc;
}

int guard_json_parse(const char *path, const char *data, size_t len, json_t **doc, guard_error *err) {
    *doc = NULL;
    if (len == 0)
        return 0;
    json_error_t jerr;
    json_t *d = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!d)
        return guard_set_error(err, GUARD_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", path,
                               jerr.text, jerr.line, jerr.column);
    *doc = d;
    return 0;
}

/* ---- keysets ------------------------------------------------------------ */

struct guard_keyset {
    atomic_long refs;
    size_t n, n_active;
    guard_key_info *info;                      /* n records, file order */
    unsigned char (*hash)[GUARD_SHA256_BYTES]; /* n hashes */
    uint32_t *slots;                           /* record index + 1; 0 = empty */
    size_t mask;                               /* slots - 1 */
};

static guard_keyset *keyset_new(size_t n) {
    guard_keyset *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    atomic_init(&set->refs, 1);
    size_t slots = 8;
    while (slots < 2 * n)
        slots *= 2;
    set->mask = slots - 1;
    set->info = calloc(n ? n : 1, sizeof *set->info);
    set->hash = calloc(n ? n : 1, sizeof *set->hash);
    set->slots = calloc(slots, sizeof *set->slots);
    if (!set->info || !set->hash || !set->slots) {
        free(set->info);
        free(set->hash);
        free(set->slots);
        free(set);
        return NULL;
    }
    return set;
}

static void keyset_free(guard_keyset *set) {
    /* Hashes are not secrets, but there is no reason to leave them lying
     * around in freed memory either. */
    OPENSSL_cleanse(set->hash, (set->n ? set->n : 1) * sizeof *set->hash);
    free(set->info);
    free(set->hash);
    free(set->slots);
    free(set);
}

void guard_keyset_retain(guard_keyset *set) {
    if (set)
        atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
}

void guard_keyset_release(guard_keyset *set) {
    if (set && atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) == 1)
        keyset_free(set);
}

size_t guard_keyset_size(const guard_keyset *set) { return set ? set->n : 0; }
size_t guard_keyset_n_active(const guard_keyset *set) { return set ? set->n_active : 0; }

const guard_key_info *guard_keyset_get(const guard_keyset *set, size_t i) {
    return set && i < set->n ? &set->info[i] : NULL;
}

static size_t slot_of(const unsigned char *hash, size_t mask) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | hash[i];
    return (size_t)(v & mask);
}

static const guard_key_info *lookup_hash(const guard_keyset *set, const unsigned char *hash) {
    if (!set || set->n == 0)
        return NULL;
    for (size_t s = slot_of(hash, set->mask);; s = (s + 1) & set->mask) {
        uint32_t idx = set->slots[s];
        if (idx == 0)
            return NULL; /* the table is at most half full: an empty slot always comes */
        if (CRYPTO_memcmp(set->hash[idx - 1], hash, GUARD_SHA256_BYTES) == 0)
            return &set->info[idx - 1];
    }
}

const guard_key_info *guard_keyset_lookup(const guard_keyset *set, const char *key, size_t len) {
    unsigned char hash[GUARD_SHA256_BYTES];
    if (!set || set->n == 0 || !key || guard_sha256(key, len, hash) != 0)
        return NULL;
    const guard_key_info *found = lookup_hash(set, hash);
    OPENSSL_cleanse(hash, sizeof hash);
    return found;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Copies an optional short string field; -1 when present and not a string
 * (null counts as absent) or too long. */
static int optional_string(json_t *rec, const char *field, char *out, size_t cap) {
    json_t *v = json_object_get(rec, field);
    out[0] = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return -1;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

int guard_keyset_from_json(const char *path, json_t *doc, guard_keyset **out, guard_error *err) {
    *out = NULL;
    json_t *keys = NULL;
    if (doc) {
        if (!json_is_object(doc))
            return guard_set_error(err, GUARD_EFORMAT, "%s: expected a JSON object with a \"keys\" list", path);
        json_t *version = json_object_get(doc, "version");
        if (version && !(json_is_integer(version) && json_integer_value(version) == 1))
            return guard_set_error(err, GUARD_EFORMAT, "%s: unsupported \"version\" (this aiserve reads version 1)",
                                   path);
        keys = json_object_get(doc, "keys");
        if (!json_is_array(keys))
            return guard_set_error(err, GUARD_EFORMAT, "%s: \"keys\" must be a list of key records", path);
    }
    size_t n = keys ? json_array_size(keys) : 0;
    if (n > UINT32_MAX / 4)
        return guard_set_error(err, GUARD_EFORMAT, "%s: too many keys", path);
    guard_keyset *set = keyset_new(n);
    if (!set)
        return guard_set_error(err, GUARD_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_array_get(keys, i);
        guard_key_info *info = &set->info[i];
        unsigned char *hash = set->hash[i];
        char where[128];
        snprintf(where, sizeof where, "%s: keys[%zu]", path, i);
        if (!json_is_object(rec)) {
            rc = guard_set_error(err, GUARD_EFORMAT, "%s: a key record must be a JSON object", where);
            goto fail;
        }
        const char *name = json_string_value(json_object_get(rec, "name"));
        if (!name || !guard_name_is_valid(name)) {
            rc = guard_set_error(err, GUARD_EFORMAT,
                                 "%s: \"name\" must be 1 to 64 characters of A-Z a-z 0-9 . _ -", where);
            goto fail;
        }
        snprintf(info->name, sizeof info->name, "%s", name);
        snprintf(where, sizeof where, "%s: key '%s'", path, name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(set->info[j].name, name) == 0) {
                rc = guard_set_error(err, GUARD_EFORMAT, "%s: the name appears twice", where);
                goto fail;
            }
        json_t *sha = json_object_get(rec, "sha256");
        const char *hex = json_string_value(sha);
        if (!hex || json_string_length(sha) != 2 * GUARD_SHA256_BYTES) {
            rc = guard_set_error(err, GUARD_EFORMAT, "%s: \"sha256\" must be 64 hex digits", where);
            goto fail;
        }
        for (int b = 0; b < GUARD_SHA256_BYTES; b++) {
            int hi = hex_value(hex[2 * b]), lo = hex_value(hex[2 * b + 1]);
            if (hi < 0 || lo < 0) {
                rc = guard_set_error(err, GUARD_EFORMAT, "%s: \"sha256\" must be 64 hex digits", where);
                goto fail;
            }
            hash[b] = (unsigned char)(hi << 4 | lo);
        }
        json_t *scopes = json_object_get(rec, "scopes");
        if (!json_is_array(scopes)) {
            rc = guard_set_error(err, GUARD_EFORMAT, "%s: \"scopes\" must be a list of scope names", where);
            goto fail;
        }
        for (size_t s = 0; s < json_array_size(scopes); s++) {
            json_t *v = json_array_get(scopes, s);
            int bit = json_is_string(v) ? scope_bit(json_string_value(v), json_string_length(v)) : -1;
            if (bit < 0) {
                rc = guard_set_error(err, GUARD_EFORMAT,
                                     "%s: scopes[%zu] is not one of predict, embed, batch, chat, admin", where, s);
                goto fail;
            }
            info->scopes |= 1u << bit;
        }
        json_t *tier = json_object_get(rec, "tier");
        if (!tier || json_is_null(tier)) {
            snprintf(info->tier, sizeof info->tier, "default");
        } else if (!json_is_string(tier) || !guard_name_is_valid(json_string_value(tier))) {
            rc = guard_set_error(err, GUARD_EFORMAT,
                                 "%s: \"tier\" must be 1 to 64 characters of A-Z a-z 0-9 . _ -", where);
            goto fail;
        } else {
            snprintf(info->tier, sizeof info->tier, "%s", json_string_value(tier));
        }
        if (optional_string(rec, "created", info->created, sizeof info->created) != 0 ||
            optional_string(rec, "revoked_at", info->revoked_at, sizeof info->revoked_at) != 0) {
            rc = guard_set_error(err, GUARD_EFORMAT, "%s: \"created\" and \"revoked_at\" must be timestamps",
                                 where);
            goto fail;
        }
        json_t *revoked = json_object_get(rec, "revoked");
        if (revoked && !json_is_boolean(revoked) && !json_is_null(revoked)) {
            rc = guard_set_error(err, GUARD_EFORMAT, "%s: \"revoked\" must be true or false", where);
            goto fail;
        }
        /* revoked_at alone also revokes: a hand edit must never re-admit. */
        info->revoked = json_is_true(revoked) || info->revoked_at[0] != 0;
        if (!info->revoked)
            set->n_active++;
        for (size_t s = slot_of(hash, set->mask);; s = (s + 1) & set->mask) {
            uint32_t idx = set->slots[s];
            if (idx == 0) {
                set->slots[s] = (uint32_t)(i + 1);
                break;
            }
            if (memcmp(set->hash[idx - 1], hash, GUARD_SHA256_BYTES) == 0) {
                rc = guard_set_error(err, GUARD_EFORMAT, "%s: the same key hash as key '%s'", where,
                                     set->info[idx - 1].name);
                goto fail;
            }
        }
    }
    set->n = n;
    *out = set;
    return 0;
fail:
    set->n = n;
    keyset_free(set);
    return rc;
}

/* Reads path into a keyset; st gets the file's identity (zeroed when it is
 * missing), also when the contents are rejected. */
static int keyset_read(const char *path, guard_keyset **out, bool *exists, struct stat *st,
                       guard_error *err) {
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc = guard_file_read(path, &data, &len, st, exists, err);
    if (rc != 0)
        return rc;
    json_t *doc = NULL;
    rc = guard_json_parse(path, data, len, &doc, err);
    free(data);
    if (rc != 0)
        return rc;
    rc = guard_keyset_from_json(path, doc, out, err);
    json_decref(doc);
    return rc;
}

int guard_keyset_load(const char *path, guard_keyset **out, bool *exists, guard_error *err) {
    struct stat st;
    bool ex = false;
    int rc = keyset_read(path, out, &ex, &st, err);
    if (exists)
        *exists = ex && st.st_size > 0;
    return rc;
}

/* ---- the live store ----------------------------------------------------- */

typedef struct file_ident {
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
} file_ident;

static void ident_from_stat(file_ident *id, const struct stat *st, bool exists) {
    memset(id, 0, sizeof *id);
    id->exists = exists;
    if (!exists)
        return;
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtime = st->st_mtim;
    id->ctime = st->st_ctim;
}

static bool ident_equal(const file_ident *a, const file_ident *b) {
    if (a->exists != b->exists)
        return false;
    if (!a->exists)
        return true;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

struct guard_keys {
    char *path;
    pthread_mutex_t lock;          /* current and generation change under it */
    guard_keyset *current;         /* one reference held by the store */
    _Atomic uint64_t generation;   /* bumped at every swap; starts at 1 */
    file_ident ident;              /* what the last load (good or bad) read */
    bool exists;                   /* the file behind current existed with bytes */
    bool required;                 /* a set without an active key is refused */
    unsigned mode;
    bool polled;
    uint64_t last_poll_us;
    metric *failures[GUARD_AUTH_COUNT];
    metric *active, *revoked;
    metric *reload_ok, *reload_error;
};

static const char *const auth_reasons[GUARD_AUTH_COUNT] = {
#define GUARD_AUTH_REASON(name, reason) reason,
    GUARD_AUTH_MAP(GUARD_AUTH_REASON)
#undef GUARD_AUTH_REASON
};

static void register_metrics(guard_keys *k, metrics_registry *r) {
    if (!r)
        return;
    const char *reason[] = {"reason"}, *state[] = {"state"}, *result[] = {"result"};
    metric_family *f = metrics_counter(r, "aiserve_auth_failures_total",
                                       "Requests refused for their API key, by reason (missing, invalid, "
                                       "revoked, scope)",
                                       1, reason);
    for (int i = 0; f && i < GUARD_AUTH_COUNT; i++)
        if (auth_reasons[i])
            k->failures[i] = metric_series(f, &auth_reasons[i]);
    f = metrics_gauge(r, "aiserve_api_keys", "API keys in the key store in use, by state", 1, state);
    if (f) {
        k->active = metric_get(f, "active", NULL);
        k->revoked = metric_get(f, "revoked", NULL);
    }
    f = metrics_counter(r, "aiserve_keys_reloads_total",
                        "Reloads of the API key store (SIGHUP or file change), by result", 1, result);
    if (f) {
        k->reload_ok = metric_get(f, "ok", NULL);
        k->reload_error = metric_get(f, "error", NULL);
    }
}

static void publish_counts(guard_keys *k, const guard_keyset *set) {
    metric_set(k->active, (double)set->n_active);
    metric_set(k->revoked, (double)(set->n - set->n_active));
}

/* A required store's set must have an active key; 0, or GUARD_EFORMAT. */
static int check_required(const guard_keys *k, const guard_keyset *set, bool exists, guard_error *err) {
    if (!k->required || set->n_active > 0)
        return 0;
    return guard_set_error(err, GUARD_EFORMAT,
                           "%s: %s, and keys are required (auth.keys_required): create one with `aiserve keys "
                           "create`, or mount the secret that holds the key store",
                           k->path, !exists ? "the file is missing" : set->n ? "every key is revoked" : "it has no keys");
}

int guard_keys_open(const char *path, bool required, metrics_registry *metrics, guard_keys **out,
                    guard_error *err) {
    *out = NULL;
    guard_keys *k = calloc(1, sizeof *k);
    if (!k || !(k->path = strdup(path))) {
        free(k);
        return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&k->lock, NULL);
    atomic_init(&k->generation, 1);
    struct stat st;
    bool exists = false;
    k->required = required;
    int rc = keyset_read(path, &k->current, &exists, &st, err);
    if (rc == 0)
        rc = check_required(k, k->current, exists, err);
    if (rc != 0) {
        guard_keys_close(k);
        return rc;
    }
    ident_from_stat(&k->ident, &st, exists);
    k->exists = exists && st.st_size > 0;
    k->mode = exists ? (unsigned)(st.st_mode & 07777) : 0;
    register_metrics(k, metrics);
    publish_counts(k, k->current);
    *out = k;
    return 0;
}

void guard_keys_close(guard_keys *k) {
    if (!k)
        return;
    guard_keyset_release(k->current);
    pthread_mutex_destroy(&k->lock);
    free(k->path);
    free(k);
}

int guard_keys_reload(guard_keys *k, guard_error *err) {
    guard_keyset *set = NULL;
    struct stat st;
    bool exists = false;
    int rc = keyset_read(k->path, &set, &exists, &st, err);
    ident_from_stat(&k->ident, &st, exists); /* a bad file is not retried until it changes */
    if (rc == 0 && (!exists || st.st_size == 0) && k->current->n > 0) {
        guard_keyset_release(set);
        rc = guard_set_error(err, exists ? GUARD_EFORMAT : GUARD_EIO,
                             "%s: %s; keeping the %zu keys in use (to drop every key, write {\"keys\": []})",
                             k->path, exists ? "the file is empty" : "the file is missing", k->current->n);
    }
    if (rc == 0 && (rc = check_required(k, set, exists, err)) != 0) {
        guard_keyset_release(set);
        size_t n = strlen(err->message);
        snprintf(err->message + n, sizeof err->message - n, "; keeping the %zu keys in use", k->current->n_active);
    }
    if (rc != 0) {
        metric_inc(k->reload_error);
        return rc;
    }
    pthread_mutex_lock(&k->lock);
    guard_keyset *old = k->current;
    k->current = set;
    atomic_fetch_add_explicit(&k->generation, 1, memory_order_release);
    pthread_mutex_unlock(&k->lock);
    guard_keyset_release(old);
    k->exists = exists && st.st_size > 0;
    k->mode = exists ? (unsigned)(st.st_mode & 07777) : 0;
    metric_inc(k->reload_ok);
    publish_counts(k, set);
    return 1;
}

int guard_keys_poll(guard_keys *k, uint64_t now_us, guard_error *err) {
    if (k->polled && now_us - k->last_poll_us < 1000000u)
        return 0;
    k->polled = true;
    k->last_poll_us = now_us;
    struct stat st;
    file_ident id = {0}; /* missing */
    if (stat(k->path, &st) == 0)
        ident_from_stat(&id, &st, true);
    else if (errno != ENOENT)
        return 0; /* unreadable for now (EACCES on a directory, say): try again later */
    if (ident_equal(&id, &k->ident))
        return 0;
    return guard_keys_reload(k, err);
}

void guard_keys_get_stats(guard_keys *k, guard_keys_stats *out) {
    pthread_mutex_lock(&k->lock);
    out->n_keys = k->current->n;
    out->n_active = k->current->n_active;
    pthread_mutex_unlock(&k->lock);
    out->exists = k->exists;
    out->mode = k->mode;
    out->path = k->path;
}

static void view_refresh(guard_keys *k, guard_keys_view *view) {
    pthread_mutex_lock(&k->lock);
    guard_keyset *old = view->set;
    view->set = k->current;
    guard_keyset_retain(view->set);
    view->generation = atomic_load_explicit(&k->generation, memory_order_relaxed);
    pthread_mutex_unlock(&k->lock);
    guard_keyset_release(old);
}

void guard_keys_count_failure(guard_keys *k, guard_auth_status status) {
    if (k && status >= 0 && status < GUARD_AUTH_COUNT)
        metric_inc(k->failures[status]);
}

void guard_keys_authorize(guard_keys *k, guard_keys_view *view, const char *key, size_t len,
                          guard_scopes required, guard_auth *out) {
    out->key = NULL;
    if (!view->set || view->generation != atomic_load_explicit(&k->generation, memory_order_acquire))
        view_refresh(k, view);
    const guard_keyset *set = view->set;
    if (set->n == 0) {
        out->status = GUARD_AUTH_OPEN;
        return;
    }
    if (!key || len == 0)
        out->status = GUARD_AUTH_MISSING;
    else if (len > GUARD_PRESENTED_MAX)
        out->status = GUARD_AUTH_INVALID;
    else if (!(out->key = guard_keyset_lookup(set, key, len)))
        out->status = GUARD_AUTH_INVALID;
    else if (out->key->revoked)
        out->status = GUARD_AUTH_REVOKED;
    else if ((out->key->scopes & required) != required)
        out->status = GUARD_AUTH_SCOPE;
    else
        out->status = GUARD_AUTH_OK;
    if (out->status != GUARD_AUTH_OK)
        metric_inc(k->failures[out->status]);
}

void guard_keys_view_release(guard_keys_view *view) {
    guard_keyset_release(view->set);
    view->set = NULL;
    view->generation = 0;
}
