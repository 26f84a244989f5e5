/*
 * keystore.c - editing the key store file, as `aiserve keys` does: making
 * a key, adding its record, revoking a record.
 *
 * Design:
 *  - A key is 32 bytes from RAND_bytes, written "ais_" + unpadded base64url
 *    (43 characters). Only its SHA-256 (hex) goes into the file; the key
 *    itself is handed to the caller once and wiped from this module's
 *    memory.
 *  - Read-modify-write under an exclusive flock of the file's directory, so
 *    two `aiserve keys` runs never lose each other's record. The document
 *    is edited as JSON, so fields this version does not know survive.
 *  - The file is replaced atomically: a temporary file in the same
 *    directory (mode 0600), fsync, rename over the old one, fsync of the
 *    directory. A reader (the server) sees the old file or the new one,
 *    never a mix.
 *  - An existing file that does not validate is never rewritten: the error
 *    names the problem and the file stays as it was.
 *
 * Any thread; no globals.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "guard_int.h"

/* The directory part of path ("." when there is none) into dir[cap]. */
static void dir_of(const char *path, char *dir, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, cap, ".");
    else if (slash == path)
        snprintf(dir, cap, "/");
    else
        snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

/* Opens (creating it when missing, one level, mode 0700) and locks the
 * directory of path into *fd. Returns 0, or GUARD_EIO with err. */
static int lock_dir(const char *path, char *dir, size_t cap, int *fd, guard_error *err) {
    dir_of(path, dir, cap);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return guard_set_error(err, GUARD_EIO, "%s: cannot create the directory %s: %s", path, dir,
                               strerror(errno));
    *fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (*fd < 0)
        return guard_set_error(err, GUARD_EIO, "%s: cannot open the directory %s: %s", path, dir,
                               strerror(errno));
    while (flock(*fd, LOCK_EX) != 0) {
        if (errno == EINTR)
            continue;
        int rc = guard_set_error(err, GUARD_EIO, "%s: cannot lock the directory %s: %s", path, dir,
                                 strerror(errno));
        close(*fd);
        *fd = -1;
        return rc;
    }
    return 0;
}

/* Revoked as the server reads it (keys.c): "revoked": true, or a
 * non-empty "revoked_at". */
static bool record_is_revoked(json_t *rec) {
    json_t *at = json_object_get(rec, "revoked_at");
    return json_is_true(json_object_get(rec, "revoked")) || (json_is_string(at) && json_string_length(at) > 0);
}

/* Reads and validates the store; a missing or empty file gives a new empty
 * document. *doc is the caller's. */
static int doc_read(const char *path, json_t **doc, guard_error *err) {
    char *data = NULL;
    size_t len = 0;
    struct stat st;
    bool exists = false;
    *doc = NULL;
    int rc = guard_file_read(path, &data, &len, &st, &exists, err);
    if (rc == 0)
        rc = guard_json_parse(path, data, len, doc, err);
    free(data);
    guard_keyset *set = NULL;
    if (rc == 0)
        rc = guard_keyset_from_json(path, *doc, &set, err);
    guard_keyset_release(set);
    if (rc != 0) {
        json_decref(*doc);
        *doc = NULL;
        if (rc == GUARD_EFORMAT && err)
            snprintf(err->message + strlen(err->message), sizeof err->message - strlen(err->message),
                     " (the file was left as it is)");
        return rc;
    }
    if (!*doc) {
        *doc = json_pack("{s:i, s:[]}", "version", 1, "keys");
        if (!*doc)
            return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    return 0;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Replaces path with doc: temporary file, fsync, rename, fsync(dir). */
static int doc_write(const char *path, const char *dir, int dir_fd, json_t *doc, guard_error *err) {
    char *text = json_dumps(doc, JSON_INDENT(2));
    if (!text)
        return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, base) >= sizeof tmp) {
        free(text);
        return guard_set_error(err, GUARD_EIO, "%s: path too long", path);
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        free(text);
        return guard_set_error(err, GUARD_EIO, "%s: cannot create a temporary file in %s: %s", path, dir,
                               strerror(errno));
    }
    int rc = 0;
    if (fchmod(fd, 0600) != 0 || write_all(fd, text, strlen(text)) != 0 || write_all(fd, "\n", 1) != 0 ||
        fsync(fd) != 0)
        rc = guard_set_error(err, GUARD_EIO, "%s: cannot write %s: %s", path, tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = guard_set_error(err, GUARD_EIO, "%s: cannot write %s: %s", path, tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = guard_set_error(err, GUARD_EIO, "%s: cannot replace the file: %s", path, strerror(errno));
    if (rc != 0)
        unlink(tmp);
    else if (fsync(dir_fd) != 0)
        rc = guard_set_error(err, GUARD_EIO, "%s: cannot sync the directory %s: %s", path, dir, strerror(errno));
    free(text);
    return rc;
}

/* The record named name in doc's "keys", or NULL. */
static json_t *find_record(json_t *doc, const char *name) {
    json_t *keys = json_object_get(doc, "keys");
    for (size_t i = 0; i < json_array_size(keys); i++) {
        json_t *rec = json_array_get(keys, i);
        const char *n = json_string_value(json_object_get(rec, "name"));
        if (n && strcmp(n, name) == 0)
            return rec;
    }
    return NULL;
}

/* 32 random bytes as "ais_" + unpadded base64url into out[cap], and the
 * SHA-256 of that text as 64 lowercase hex digits into hex[65]. */
static int make_key(char *out, size_t cap, char hex[65], guard_error *err) {
    unsigned char raw[32], b64[48], hash[GUARD_SHA256_BYTES];
    if (cap < GUARD_KEY_CHARS + 1)
        return guard_set_error(err, GUARD_EINVAL, "key buffer too small");
    if (RAND_bytes(raw, sizeof raw) != 1)
        return guard_set_error(err, GUARD_ECRYPTO, "OpenSSL's random generator failed");
    int n = EVP_EncodeBlock(b64, raw, sizeof raw); /* 44 characters, the last one '=' */
    OPENSSL_cleanse(raw, sizeof raw);
    if (n != 44)
        return guard_set_error(err, GUARD_ECRYPTO, "base64 encoding failed");
    memcpy(out, GUARD_KEY_PREFIX, 4);
    for (int i = 0; i < 43; i++)
        out[4 + i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    out[GUARD_KEY_CHARS] = 0;
    OPENSSL_cleanse(b64, sizeof b64);
    if (guard_sha256(out, GUARD_KEY_CHARS, hash) != 0) {
        OPENSSL_cleanse(out, cap);
        return guard_set_error(err, GUARD_ECRYPTO, "SHA-256 failed");
    }
    for (int i = 0; i < GUARD_SHA256_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    return 0;
}

int guard_keystore_create(const char *path, const char *name, guard_scopes scopes, const char *tier,
                          char *key_out, size_t cap, guard_error *err) {
    if (cap)
        key_out[0] = 0;
    if (!tier)
        tier = "default";
    if (!guard_name_is_valid(name))
        return guard_set_error(err, GUARD_EINVAL,
                               "key name '%.80s' is not valid: use 1 to 64 characters of A-Z a-z 0-9 . _ -",
                               name ? name : "");
    if (!guard_name_is_valid(tier))
        return guard_set_error(err, GUARD_EINVAL,
                               "tier '%.80s' is not valid: use 1 to 64 characters of A-Z a-z 0-9 . _ -", tier);
    if (scopes == 0 || (scopes & ~GUARD_SCOPE_ALL))
        return guard_set_error(err, GUARD_EINVAL, "a key needs at least one scope");
    char dir[4096];
    int dir_fd = -1;
    int rc = lock_dir(path, dir, sizeof dir, &dir_fd, err);
    if (rc != 0)
        return rc;
    json_t *doc = NULL;
    rc = doc_read(path, &doc, err);
    if (rc == 0 && find_record(doc, name))
        rc = guard_set_error(err, GUARD_EEXIST, "%s: a key named '%s' exists already", path, name);
    char hex[65];
    if (rc == 0)
        rc = make_key(key_out, cap, hex, err);
    if (rc == 0) {
        json_t *list = json_array();
        for (int i = 0; i < GUARD_N_SCOPES; i++)
            if (scopes & (1u << i))
                json_array_append_new(list, json_string(guard_scope_name(1u << i)));
        char created[40];
        guard_now_rfc3339(created, sizeof created);
        json_t *rec = json_pack("{s:s, s:s, s:o, s:s, s:s, s:b}", "name", name, "sha256", hex, "scopes", list,
                                "tier", tier, "created", created, "revoked", 0);
        if (!rec || json_array_append_new(json_object_get(doc, "keys"), rec) != 0)
            rc = guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    if (rc == 0)
        rc = doc_write(path, dir, dir_fd, doc, err);
    if (rc != 0 && cap)
        OPENSSL_cleanse(key_out, cap);
    json_decref(doc);
    close(dir_fd); /* drops the lock */
    return rc;
}

int guard_keystore_revoke(const char *path, const char *name, guard_error *err) {
    char dir[4096];
    int dir_fd = -1;
    int rc = lock_dir(path, dir, sizeof dir, &dir_fd, err);
    if (rc != 0)
        return rc;
    json_t *doc = NULL;
    rc = doc_read(path, &doc, err);
    json_t *rec = rc == 0 ? find_record(doc, name) : NULL;
    if (rc == 0 && !rec)
        rc = guard_set_error(err, GUARD_ENOTFOUND, "%s: no key named '%.80s'", path, name);
    if (rc == 0 && record_is_revoked(rec)) {
        rc = 1;
    } else if (rc == 0) {
        char now[40];
        guard_now_rfc3339(now, sizeof now);
        if (json_object_set_new(rec, "revoked", json_true()) != 0 ||
            json_object_set_new(rec, "revoked_at", json_string(now)) != 0)
            rc = guard_set_error(err, GUARD_ENOMEM, "out of memory");
        else
            rc = doc_write(path, dir, dir_fd, doc, err);
    }
    json_decref(doc);
    close(dir_fd);
    return rc;
}
