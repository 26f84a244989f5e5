/*
 * test_guard.c - the guard module's API keys through guard.h: scope lists,
 * the key store as `aiserve keys` edits it (create, list, revoke, what the
 * file holds and its mode, a corrupt file left untouched), every way a file
 * can be invalid, the check of a presented key (missing, invalid, revoked,
 * lacking scope, open without keys), the comparison path (a stored hash
 * that differs from the presented key's in its last or first byte never
 * matches), reloads that keep the old keys when the new file is bad,
 * change detection by polling, and readers that keep checking keys while
 * the set is swapped under them.
 *
 * Each test works in its own temporary directory and removes it.
 */
#define _GNU_SOURCE
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "guard.h"
#include "obs.h"

/* ---- helpers ---------------------------------------------------------- */

typedef struct tmp_dir {
    char root[64];
    char path[128]; /* root/keys.json */
} tmp_dir;

static void tmp_init(tmp_dir *d) {
    snprintf(d->root, sizeof d->root, "/tmp/aiserve-guard-XXXXXX");
    assert_non_null(mkdtemp(d->root));
    snprintf(d->path, sizeof d->path, "%s/keys.json", d->root);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void tmp_fini(tmp_dir *d) { nftw(d->root, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

static void write_text(const char *path, const char *text) {
    /* Through a rename, as an editor or `aiserve keys` would: a new inode. */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Creates a key and returns it (static buffer per call slot). */
static const char *create_key(const char *path, const char *name, guard_scopes scopes) {
    static char keys[64][GUARD_KEY_CHARS + 1];
    static int next;
    char *key = keys[next++ % 64];
    guard_error err = {0};
    int rc = guard_keystore_create(path, name, scopes, NULL, key, GUARD_KEY_CHARS + 1, &err);
    if (rc != 0)
        print_error("create %s: %s\n", name, err.message);
    assert_int_equal(rc, 0);
    return key;
}

/* The stored sha256 of the record named name. */
static void stored_hash(const char *path, const char *name, char hex[65]) {
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    assert_non_null(doc);
    json_t *keys = json_object_get(doc, "keys");
    hex[0] = 0;
    for (size_t i = 0; i < json_array_size(keys); i++) {
        json_t *rec = json_array_get(keys, i);
        if (strcmp(json_string_value(json_object_get(rec, "name")), name) == 0)
            snprintf(hex, 65, "%s", json_string_value(json_object_get(rec, "sha256")));
    }
    json_decref(doc);
    assert_int_equal(strlen(hex), 64);
}

static guard_auth_status check(guard_keys *k, guard_keys_view *v, const char *key, guard_scopes need) {
    guard_auth a;
    guard_keys_authorize(k, v, key, key ? strlen(key) : 0, need, &a);
    return a.status;
}

/* ---- scopes ------------------------------------------------------------ */

static void test_scopes(void **state) {
    (void)state;
    guard_scopes s = 0;
    guard_error err = {0};
    assert_int_equal(guard_scopes_parse("predict", &s, &err), 0);
    assert_int_equal(s, GUARD_SCOPE_PREDICT);
    assert_int_equal(guard_scopes_parse("chat,predict,chat,admin,embed,batch", &s, &err), 0);
    assert_int_equal(s, GUARD_SCOPE_ALL);
    char buf[128];
    guard_scopes_format(s, buf, sizeof buf);
    assert_string_equal(buf, "predict,embed,batch,chat,admin");
    guard_scopes_format(GUARD_SCOPE_EMBED | GUARD_SCOPE_CHAT, buf, sizeof buf);
    assert_string_equal(buf, "embed,chat");
    assert_string_equal(guard_scope_name(GUARD_SCOPE_BATCH), "batch");
    assert_string_equal(guard_scope_name(0), "");

    s = 12345;
    const char *bad[] = {"", "predict,", ",predict", "predict,,embed", "Predict", "predict ,embed", "read", NULL};
    for (size_t i = 0; bad[i]; i++) {
        err.status = 0;
        assert_int_equal(guard_scopes_parse(bad[i], &s, &err), GUARD_EINVAL);
        assert_int_equal(err.status, GUARD_EINVAL);
        assert_true(err.message[0]);
        assert_int_equal(s, 12345); /* untouched */
    }
    guard_scopes_parse("predict,read", &s, &err);
    assert_non_null(strstr(err.message, "'read'"));
    assert_non_null(strstr(err.message, "predict, embed, batch, chat, admin"));
    assert_int_equal(guard_scopes_parse(NULL, &s, &err), GUARD_EINVAL);

    assert_true(guard_name_is_valid("web-1.prod_A"));
    assert_false(guard_name_is_valid(""));
    assert_false(guard_name_is_valid("a b"));
    assert_false(guard_name_is_valid("é"));
    char long_name[66];
    memset(long_name, 'a', 65);
    long_name[65] = 0;
    assert_false(guard_name_is_valid(long_name));
    long_name[64] = 0;
    assert_true(guard_name_is_valid(long_name));
    assert_string_equal(guard_status_name(GUARD_EEXIST), "GUARD_EEXIST");
}

/* ---- the key store as `aiserve keys` edits it --------------------------- */

static void test_create_list_revoke(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    char path[160];
    snprintf(path, sizeof path, "%s/sub/keys.json", d.root); /* the directory is made */
    guard_error err = {0};
    char key[GUARD_KEY_CHARS + 1];
    assert_int_equal(guard_keystore_create(path, "web", GUARD_SCOPE_PREDICT | GUARD_SCOPE_EMBED, "gold", key,
                                           sizeof key, &err),
                     0);
    /* ais_ + 43 characters of base64url. */
    assert_int_equal(strlen(key), GUARD_KEY_CHARS);
    assert_memory_equal(key, "ais_", 4);
    for (size_t i = 4; i < strlen(key); i++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", key[i]));

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char dir[160];
    snprintf(dir, sizeof dir, "%s/sub", d.root);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char *text = read_text(path);
    assert_null(strstr(text, key));     /* only the hash */
    assert_null(strstr(text, key + 4)); /* not even without its prefix */
    free(text);

    char key2[GUARD_KEY_CHARS + 1];
    assert_int_equal(guard_keystore_create(path, "batch-job", GUARD_SCOPE_BATCH, NULL, key2, sizeof key2, &err), 0);
    assert_string_not_equal(key, key2);

    /* Refusals leave the file as it was. */
    text = read_text(path);
    char junk[GUARD_KEY_CHARS + 1];
    assert_int_equal(guard_keystore_create(path, "web", GUARD_SCOPE_PREDICT, NULL, junk, sizeof junk, &err),
                     GUARD_EEXIST);
    assert_non_null(strstr(err.message, "'web'"));
    assert_string_equal(junk, "");
    assert_int_equal(guard_keystore_create(path, "bad name", GUARD_SCOPE_PREDICT, NULL, junk, sizeof junk, &err),
                     GUARD_EINVAL);
    assert_int_equal(guard_keystore_create(path, "ok", GUARD_SCOPE_PREDICT, "bad tier", junk, sizeof junk, &err),
                     GUARD_EINVAL);
    assert_int_equal(guard_keystore_create(path, "ok", 0, NULL, junk, sizeof junk, &err), GUARD_EINVAL);
    char *after = read_text(path);
    assert_string_equal(text, after);
    free(text);
    free(after);

    /* list */
    guard_keyset *set = NULL;
    bool exists = false;
    assert_int_equal(guard_keyset_load(path, &set, &exists, &err), 0);
    assert_true(exists);
    assert_int_equal(guard_keyset_size(set), 2);
    assert_int_equal(guard_keyset_n_active(set), 2);
    const guard_key_info *web = guard_keyset_get(set, 0);
    assert_string_equal(web->name, "web");
    assert_string_equal(web->tier, "gold");
    assert_int_equal(web->scopes, GUARD_SCOPE_PREDICT | GUARD_SCOPE_EMBED);
    assert_false(web->revoked);
    assert_int_equal(strlen(web->created), 20); /* 2026-11-27T11:02:10Z */
    assert_int_equal(web->created[10], 'T');
    assert_int_equal(web->created[19], 'Z');
    assert_string_equal(guard_keyset_get(set, 1)->tier, "default");
    assert_null(guard_keyset_get(set, 2));
    assert_ptr_equal(guard_keyset_lookup(set, key, strlen(key)), web);
    assert_ptr_equal(guard_keyset_lookup(set, key2, strlen(key2)), guard_keyset_get(set, 1));
    assert_null(guard_keyset_lookup(set, key, strlen(key) - 1));
    assert_null(guard_keyset_lookup(set, "", 0));
    guard_keyset_release(set);

    /* revoke */
    assert_int_equal(guard_keystore_revoke(path, "web", &err), 0);
    assert_int_equal(guard_keystore_revoke(path, "web", &err), 1);
    assert_int_equal(guard_keystore_revoke(path, "nobody", &err), GUARD_ENOTFOUND);
    assert_non_null(strstr(err.message, "'nobody'"));
    assert_int_equal(guard_keyset_load(path, &set, NULL, &err), 0);
    assert_true(guard_keyset_get(set, 0)->revoked);
    assert_int_equal(strlen(guard_keyset_get(set, 0)->revoked_at), 20);
    assert_false(guard_keyset_get(set, 1)->revoked);
    assert_int_equal(guard_keyset_n_active(set), 1);
    guard_keyset_release(set);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* Fields this version does not know survive a rewrite. */
    text = read_text(path);
    char *pos = strstr(text, "\"tier\": \"gold\"");
    assert_non_null(pos);
    char *edited = calloc(1, strlen(text) + 64);
    memcpy(edited, text, (size_t)(pos - text));
    strcat(edited, "\"note\": \"kept\", ");
    strcat(edited, pos);
    write_text(path, edited);
    free(text);
    free(edited);
    assert_int_equal(guard_keystore_revoke(path, "batch-job", &err), 0);
    text = read_text(path);
    assert_non_null(strstr(text, "\"note\": \"kept\""));
    free(text);
    tmp_fini(&d);
}

static void test_missing_and_empty_files(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    guard_error err = {0};
    guard_keyset *set = NULL;
    bool exists = true;
    assert_int_equal(guard_keyset_load(d.path, &set, &exists, &err), 0);
    assert_false(exists);
    assert_int_equal(guard_keyset_size(set), 0);
    assert_null(guard_keyset_lookup(set, "ais_x", 5));
    guard_keyset_release(set);
    write_text(d.path, "");
    exists = true;
    assert_int_equal(guard_keyset_load(d.path, &set, &exists, &err), 0);
    assert_false(exists);
    guard_keyset_release(set);
    /* A directory is not a key store. */
    assert_int_equal(guard_keyset_load(d.root, &set, NULL, &err), GUARD_EIO);
    assert_non_null(strstr(err.message, "not a regular file"));
    assert_null(set);
    tmp_fini(&d);
}

static void test_invalid_files(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    static const char H[] = "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
    static const char H2[] = "\"1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
    char rec_ok[256];
    snprintf(rec_ok, sizeof rec_ok, "{\"name\": \"a\", \"sha256\": %s, \"scopes\": [\"predict\"]}", H);
    struct {
        const char *text, *expect;
    } cases[] = {
        {"garbage", "not valid JSON"},
        {"{\"keys\": [", "line 1"},
        {"[]", "JSON object"},
        {"{}", "\"keys\""},
        {"{\"keys\": {}}", "\"keys\""},
        {"{\"version\": 2, \"keys\": []}", "version"},
        {"{\"keys\": [1]}", "keys[0]"},
        {"{\"keys\": [{\"sha256\": H, \"scopes\": []}]}", "\"name\""},
        {"{\"keys\": [{\"name\": \"a b\", \"sha256\": H, \"scopes\": []}]}", "\"name\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": \"abc\", \"scopes\": []}]}", "key 'a': \"sha256\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": "
         "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\", \"scopes\": []}]}",
         "\"sha256\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": H}]}", "\"scopes\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": H, \"scopes\": [\"read\"]}]}", "scopes[0]"},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": H, \"scopes\": [], \"tier\": \"x y\"}]}", "\"tier\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": H, \"scopes\": [], \"revoked\": \"no\"}]}", "\"revoked\""},
        {"{\"keys\": [{\"name\": \"a\", \"sha256\": H, \"scopes\": [], \"created\": 5}]}", "\"created\""},
        {"{\"keys\": [REC, {\"name\": \"a\", \"sha256\": H2, \"scopes\": []}]}", "twice"},
        {"{\"keys\": [REC, {\"name\": \"b\", \"sha256\": H, \"scopes\": []}]}", "same key hash as key 'a'"},
        {"{\"keys\": [], \"keys\": []}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* Expand H, H2 and REC in the case text. */
        char text[1024] = "";
        for (const char *p = cases[i].text; *p;) {
            if (strncmp(p, "REC", 3) == 0) {
                strcat(text, rec_ok);
                p += 3;
            } else if (strncmp(p, "H2", 2) == 0) {
                strcat(text, H2);
                p += 2;
            } else if (*p == 'H' && (p[1] == ',' || p[1] == '}')) {
                strcat(text, H);
                p += 1;
            } else {
                strncat(text, p, 1);
                p++;
            }
        }
        write_text(d.path, text);
        guard_error err = {0};
        guard_keyset *set = (guard_keyset *)1;
        int rc = guard_keyset_load(d.path, &set, NULL, &err);
        if (rc != GUARD_EFORMAT || !strstr(err.message, cases[i].expect) || !strstr(err.message, d.path))
            print_error("case %zu (%s): rc %d, message: %s\n", i, text, rc, err.message);
        assert_int_equal(rc, GUARD_EFORMAT);
        assert_int_equal(err.status, GUARD_EFORMAT);
        assert_non_null(strstr(err.message, cases[i].expect));
        assert_null(set);
        /* `aiserve keys` refuses to touch it. */
        char junk[GUARD_KEY_CHARS + 1];
        assert_int_equal(guard_keystore_create(d.path, "new", GUARD_SCOPE_PREDICT, NULL, junk, sizeof junk, &err),
                         GUARD_EFORMAT);
        assert_non_null(strstr(err.message, "left as it is"));
        assert_int_equal(guard_keystore_revoke(d.path, "a", &err), GUARD_EFORMAT);
        char *after = read_text(d.path);
        assert_string_equal(after, text);
        free(after);
    }
    /* revoked_at alone revokes; null fields are absent. */
    char text[512];
    snprintf(text, sizeof text,
             "{\"keys\": [{\"name\": \"a\", \"sha256\": %s, \"scopes\": [], \"revoked_at\": \"2026-01-01T00:00:00Z\","
             " \"tier\": null, \"created\": null}]}",
             H);
    write_text(d.path, text);
    guard_keyset *set = NULL;
    guard_error err = {0};
    assert_int_equal(guard_keyset_load(d.path, &set, NULL, &err), 0);
    assert_true(guard_keyset_get(set, 0)->revoked);
    assert_string_equal(guard_keyset_get(set, 0)->tier, "default");
    guard_keyset_release(set);
    assert_int_equal(guard_keystore_revoke(d.path, "a", &err), 1); /* already */
    tmp_fini(&d);
}

/* ---- checking keys ---------------------------------------------------------- */

static void test_authorize(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    const char *web = create_key(d.path, "web", GUARD_SCOPE_PREDICT);
    const char *emb = create_key(d.path, "emb", GUARD_SCOPE_EMBED);
    const char *old = create_key(d.path, "old", GUARD_SCOPE_ALL);
    guard_error err = {0};
    assert_int_equal(guard_keystore_revoke(d.path, "old", &err), 0);

    metrics_registry *reg = metrics_registry_create();
    guard_keys *k = NULL;
    assert_int_equal(guard_keys_open(d.path, false, reg, &k, &err), 0);
    guard_keys_stats st;
    guard_keys_get_stats(k, &st);
    assert_int_equal(st.n_keys, 3);
    assert_int_equal(st.n_active, 2);
    assert_true(st.exists);
    assert_int_equal(st.mode, 0600);
    assert_string_equal(st.path, d.path);

    guard_keys_view v = {0};
    guard_auth a;
    guard_keys_authorize(k, &v, web, strlen(web), GUARD_SCOPE_PREDICT, &a);
    assert_int_equal(a.status, GUARD_AUTH_OK);
    assert_string_equal(a.key->name, "web");
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_ANY), GUARD_AUTH_OK);
    guard_keys_authorize(k, &v, emb, strlen(emb), GUARD_SCOPE_PREDICT, &a);
    assert_int_equal(a.status, GUARD_AUTH_SCOPE);
    assert_string_equal(a.key->name, "emb");
    assert_int_equal(check(k, &v, emb, GUARD_SCOPE_ANY), GUARD_AUTH_OK);
    assert_int_equal(check(k, &v, emb, GUARD_SCOPE_EMBED | GUARD_SCOPE_PREDICT), GUARD_AUTH_SCOPE);
    guard_keys_authorize(k, &v, old, strlen(old), GUARD_SCOPE_PREDICT, &a);
    assert_int_equal(a.status, GUARD_AUTH_REVOKED);
    assert_string_equal(a.key->name, "old");
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_MISSING);
    guard_keys_authorize(k, &v, web, 0, GUARD_SCOPE_PREDICT, &a);
    assert_int_equal(a.status, GUARD_AUTH_MISSING);
    assert_null(a.key);
    assert_int_equal(check(k, &v, "ais_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", GUARD_SCOPE_PREDICT),
                     GUARD_AUTH_INVALID);
    /* The presented bytes exactly: no trimming, no case folding. */
    char variant[GUARD_KEY_CHARS + 2];
    snprintf(variant, sizeof variant, "%s ", web);
    assert_int_equal(check(k, &v, variant, GUARD_SCOPE_PREDICT), GUARD_AUTH_INVALID);
    snprintf(variant, sizeof variant, "%s", web);
    variant[0] = 'A';
    assert_int_equal(check(k, &v, variant, GUARD_SCOPE_PREDICT), GUARD_AUTH_INVALID);
    char *huge = malloc(100000);
    memset(huge, 'a', 99999);
    huge[99999] = 0;
    assert_int_equal(check(k, &v, huge, GUARD_SCOPE_PREDICT), GUARD_AUTH_INVALID);
    free(huge);
    guard_keys_count_failure(k, GUARD_AUTH_INVALID);

    char *text = metrics_render(reg, NULL);
    assert_non_null(strstr(text, "aiserve_auth_failures_total{reason=\"missing\"} 2\n"));
    assert_non_null(strstr(text, "aiserve_auth_failures_total{reason=\"invalid\"} 5\n"));
    assert_non_null(strstr(text, "aiserve_auth_failures_total{reason=\"revoked\"} 1\n"));
    assert_non_null(strstr(text, "aiserve_auth_failures_total{reason=\"scope\"} 2\n"));
    assert_non_null(strstr(text, "aiserve_api_keys{state=\"active\"} 2\n"));
    assert_non_null(strstr(text, "aiserve_api_keys{state=\"revoked\"} 1\n"));
    assert_null(strstr(text, web));
    free(text);
    guard_keys_view_release(&v);
    guard_keys_close(k);
    metrics_registry_destroy(reg);

    /* No file: open, whatever is presented. */
    guard_keys *open_k = NULL;
    char missing[160];
    snprintf(missing, sizeof missing, "%s/none.json", d.root);
    assert_int_equal(guard_keys_open(missing, false, NULL, &open_k, &err), 0);
    guard_keys_get_stats(open_k, &st);
    assert_false(st.exists);
    assert_int_equal(st.n_keys, 0);
    assert_int_equal(check(open_k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_OPEN);
    assert_int_equal(check(open_k, &v, "whatever", GUARD_SCOPE_ADMIN), GUARD_AUTH_OPEN);
    guard_keys_view_release(&v);
    guard_keys_close(open_k);

    /* A corrupt file refuses the start. */
    write_text(missing, "{\"keys\": [}");
    guard_keys *bad = (guard_keys *)1;
    assert_int_equal(guard_keys_open(missing, false, NULL, &bad, &err), GUARD_EFORMAT);
    assert_null(bad);
    assert_non_null(strstr(err.message, "not valid JSON"));
    tmp_fini(&d);
}

/* A stored hash one byte away from the presented key's - in the last byte
 * (same table slot: only the full comparison tells them apart) or the
 * first - never matches; the exact hash does, among many keys. */
static void test_comparison_path(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    const char *key = create_key(d.path, "real", GUARD_SCOPE_PREDICT);
    char hex[65];
    stored_hash(d.path, "real", hex);
    char last[65], first[65];
    snprintf(last, sizeof last, "%s", hex);
    last[63] = last[63] == '0' ? '1' : '0';
    snprintf(first, sizeof first, "%s", hex);
    first[0] = first[0] == '0' ? '1' : '0';
    char text[1024];
    snprintf(text, sizeof text,
             "{\"keys\": [{\"name\": \"near-last\", \"sha256\": \"%s\", \"scopes\": [\"predict\"]},"
             " {\"name\": \"near-first\", \"sha256\": \"%s\", \"scopes\": [\"predict\"]}]}",
             last, first);
    write_text(d.path, text);
    guard_keyset *set = NULL;
    guard_error err = {0};
    assert_int_equal(guard_keyset_load(d.path, &set, NULL, &err), 0);
    assert_null(guard_keyset_lookup(set, key, strlen(key)));
    guard_keyset_release(set);
    /* Upper-case hex in a hand-written file reads the same. */
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 32 : hex[i]);
    snprintf(text, sizeof text,
             "{\"keys\": [{\"name\": \"near-last\", \"sha256\": \"%s\", \"scopes\": [\"predict\"]},"
             " {\"name\": \"exact\", \"sha256\": \"%s\", \"scopes\": [\"predict\"]}]}",
             last, upper);
    write_text(d.path, text);
    assert_int_equal(guard_keyset_load(d.path, &set, NULL, &err), 0);
    const guard_key_info *found = guard_keyset_lookup(set, key, strlen(key));
    assert_non_null(found);
    assert_string_equal(found->name, "exact");
    guard_keyset_release(set);

    /* Many keys: every one finds its own record (probing past collisions in
     * the table), and every one with a character changed finds none. */
    unlink(d.path);
    enum { N = 40 };
    const char *keys[N];
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "k%d", i);
        keys[i] = create_key(d.path, name, GUARD_SCOPE_PREDICT);
    }
    assert_int_equal(guard_keyset_load(d.path, &set, NULL, &err), 0);
    for (int i = 0; i < N; i++) {
        const guard_key_info *r = guard_keyset_lookup(set, keys[i], strlen(keys[i]));
        assert_non_null(r);
        assert_ptr_equal(r, guard_keyset_get(set, (size_t)i));
        char changed[GUARD_KEY_CHARS + 1];
        snprintf(changed, sizeof changed, "%s", keys[i]);
        changed[GUARD_KEY_CHARS - 1] = changed[GUARD_KEY_CHARS - 1] == 'A' ? 'B' : 'A';
        assert_null(guard_keyset_lookup(set, changed, strlen(changed)));
    }
    guard_keyset_release(set);
    tmp_fini(&d);
}

/* ---- reloads ----------------------------------------------------------------- */

static void test_reload_keeps_old_keys_on_bad_file(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    const char *web = create_key(d.path, "web", GUARD_SCOPE_PREDICT);
    char *good = read_text(d.path);
    guard_error err = {0};
    metrics_registry *reg = metrics_registry_create();
    guard_keys *k = NULL;
    assert_int_equal(guard_keys_open(d.path, false, reg, &k, &err), 0);
    guard_keys_view v = {0};
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);

    write_text(d.path, "{\"keys\": [{\"name\": \"web\"");
    assert_int_equal(guard_keys_reload(k, &err), GUARD_EFORMAT);
    assert_non_null(strstr(err.message, d.path));
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);

    write_text(d.path, ""); /* a file being rewritten in place */
    assert_int_equal(guard_keys_reload(k, &err), GUARD_EFORMAT);
    assert_non_null(strstr(err.message, "keeping the 1 keys"));
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_MISSING);

    unlink(d.path);
    assert_int_equal(guard_keys_reload(k, &err), GUARD_EIO);
    assert_non_null(strstr(err.message, "missing"));
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);

    write_text(d.path, good);
    assert_int_equal(guard_keystore_revoke(d.path, "web", &err), 0);
    assert_int_equal(guard_keys_reload(k, &err), 1);
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_REVOKED);

    /* Dropping every key on purpose opens the server. */
    write_text(d.path, "{\"keys\": []}");
    assert_int_equal(guard_keys_reload(k, &err), 1);
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_OPEN);
    /* From no keys, a missing file is just no keys. */
    unlink(d.path);
    assert_int_equal(guard_keys_reload(k, &err), 1);
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_OPEN);

    char *text = metrics_render(reg, NULL);
    assert_non_null(strstr(text, "aiserve_keys_reloads_total{result=\"ok\"} 3\n"));
    assert_non_null(strstr(text, "aiserve_keys_reloads_total{result=\"error\"} 3\n"));
    free(text);
    free(good);
    guard_keys_view_release(&v);
    guard_keys_close(k);
    metrics_registry_destroy(reg);
    tmp_fini(&d);
}

/* A store opened with `required` refuses to start, or to reload, into a set
 * without an active key: a missing secret never opens the server. */
static void test_required_keys(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    guard_error err = {0};
    guard_keys *k = (guard_keys *)1;
    assert_int_equal(guard_keys_open(d.path, true, NULL, &k, &err), GUARD_EFORMAT);
    assert_null(k);
    assert_non_null(strstr(err.message, d.path));
    assert_non_null(strstr(err.message, "the file is missing, and keys are required"));
    write_text(d.path, "{\"keys\": []}");
    assert_int_equal(guard_keys_open(d.path, true, NULL, &k, &err), GUARD_EFORMAT);
    assert_non_null(strstr(err.message, "it has no keys"));

    const char *web = create_key(d.path, "web", GUARD_SCOPE_PREDICT);
    assert_int_equal(guard_keys_open(d.path, true, NULL, &k, &err), 0);
    guard_keys_view v = {0};
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);
    /* Emptied, every key revoked, removed: each reload is refused, the key kept. */
    char *good = read_text(d.path);
    write_text(d.path, "{\"keys\": []}");
    assert_int_equal(guard_keys_reload(k, &err), GUARD_EFORMAT);
    assert_non_null(strstr(err.message, "keeping the 1 keys in use"));
    write_text(d.path, good);
    assert_int_equal(guard_keystore_revoke(d.path, "web", &err), 0);
    assert_int_equal(guard_keys_reload(k, &err), GUARD_EFORMAT);
    assert_non_null(strstr(err.message, "every key is revoked"));
    unlink(d.path);
    assert_true(guard_keys_reload(k, &err) < 0);
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_MISSING);
    /* A set with a key is taken. */
    write_text(d.path, good);
    const char *other = create_key(d.path, "other", GUARD_SCOPE_PREDICT);
    assert_int_equal(guard_keys_reload(k, &err), 1);
    assert_int_equal(check(k, &v, other, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);
    free(good);
    guard_keys_view_release(&v);
    guard_keys_close(k);
    tmp_fini(&d);
}

static void test_poll_detects_changes(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    guard_error err = {0};
    guard_keys *k = NULL;
    /* Opened without a file: open until one appears. */
    assert_int_equal(guard_keys_open(d.path, false, NULL, &k, &err), 0);
    guard_keys_view v = {0};
    const uint64_t S = 1000000;
    uint64_t t = 5 * S;
    assert_int_equal(guard_keys_poll(k, t, &err), 0);
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_OPEN);
    const char *web = create_key(d.path, "web", GUARD_SCOPE_PREDICT);
    assert_int_equal(guard_keys_poll(k, t + S / 2, &err), 0); /* at most once a second */
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_OPEN);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 1);
    assert_int_equal(check(k, &v, NULL, GUARD_SCOPE_PREDICT), GUARD_AUTH_MISSING);
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 0); /* unchanged */

    assert_int_equal(guard_keystore_revoke(d.path, "web", &err), 0);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 1);
    assert_int_equal(check(k, &v, web, GUARD_SCOPE_PREDICT), GUARD_AUTH_REVOKED);

    /* An in-place rewrite (same inode) is seen too. */
    const char *web2 = create_key(d.path, "web2", GUARD_SCOPE_PREDICT);
    char *text = read_text(d.path);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 1);
    assert_int_equal(check(k, &v, web2, GUARD_SCOPE_PREDICT), GUARD_AUTH_OK);
    assert_int_equal(guard_keystore_revoke(d.path, "web2", &err), 0);
    char *revoked = read_text(d.path);
    write_text(d.path, text);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 1);
    FILE *f = fopen(d.path, "r+");
    assert_non_null(f);
    fputs(revoked, f);
    fclose(f);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 1);
    assert_int_equal(check(k, &v, web2, GUARD_SCOPE_PREDICT), GUARD_AUTH_REVOKED);

    /* A bad file is reported once, not every second. */
    write_text(d.path, "nonsense");
    t += S;
    assert_true(guard_keys_poll(k, t, &err) < 0);
    t += S;
    assert_int_equal(guard_keys_poll(k, t, &err), 0);
    assert_int_equal(check(k, &v, web2, GUARD_SCOPE_PREDICT), GUARD_AUTH_REVOKED);
    free(text);
    free(revoked);
    guard_keys_view_release(&v);
    guard_keys_close(k);
    tmp_fini(&d);
}

/* Loop threads keep checking while the main thread swaps sets: every
 * answer is one of the two the files allow, and nothing is freed early
 * (the sanitizer build checks the memory). */
typedef struct reader_arg {
    guard_keys *k;
    const char *key;
    atomic_int *stop;
    long n_ok, n_revoked, n_other;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    guard_keys_view v = {0};
    while (!atomic_load(a->stop)) {
        guard_auth auth;
        guard_keys_authorize(a->k, &v, a->key, strlen(a->key), GUARD_SCOPE_PREDICT, &auth);
        if (auth.status == GUARD_AUTH_OK && strcmp(auth.key->name, "web") == 0)
            a->n_ok++;
        else if (auth.status == GUARD_AUTH_REVOKED && strcmp(auth.key->name, "web") == 0)
            a->n_revoked++;
        else
            a->n_other++;
    }
    guard_keys_view_release(&v);
    return NULL;
}

static void test_readers_during_reloads(void **state) {
    (void)state;
    tmp_dir d;
    tmp_init(&d);
    const char *web = create_key(d.path, "web", GUARD_SCOPE_PREDICT);
    char *active = read_text(d.path);
    guard_error err = {0};
    assert_int_equal(guard_keystore_revoke(d.path, "web", &err), 0);
    char *revoked = read_text(d.path);
    guard_keys *k = NULL;
    assert_int_equal(guard_keys_open(d.path, false, NULL, &k, &err), 0);
    atomic_int stop = 0;
    enum { T = 3 };
    reader_arg args[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        args[i] = (reader_arg){k, web, &stop, 0, 0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    }
    for (int i = 0; i < 200; i++) {
        write_text(d.path, i % 2 ? revoked : active);
        assert_int_equal(guard_keys_reload(k, &err), 1);
        if (i % 20 == 0)
            usleep(1000);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].n_other, 0);
        assert_true(args[i].n_ok + args[i].n_revoked > 0);
    }
    guard_keys_close(k);
    free(active);
    free(revoked);
    tmp_fini(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_create_list_revoke),
        cmocka_unit_test(test_missing_and_empty_files),
        cmocka_unit_test(test_invalid_files),
        cmocka_unit_test(test_authorize),
        cmocka_unit_test(test_comparison_path),
        cmocka_unit_test(test_reload_keeps_old_keys_on_bad_file),
        cmocka_unit_test(test_required_keys),
        cmocka_unit_test(test_poll_detects_changes),
        cmocka_unit_test(test_readers_during_reloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
