/*
 * keys.c - `aiserve keys`: managing the API key store (guard.h has its
 * format).
 *
 *   aiserve keys create --name NAME --scopes predict[,embed,...] [--tier NAME]
 *   aiserve keys list
 *   aiserve keys revoke NAME
 *   (each also takes --keys-file PATH and --config FILE)
 *
 * The store is found as the server finds it: --keys-file, else
 * AISERVE_KEYS_FILE, else auth.keys_file in the YAML file (--config /
 * AISERVE_CONFIG), else ./data/keys.json. `create` prints the new key alone
 * on stdout, once (so KEY=$(aiserve keys create ...) works); `list` prints
 * one JSON object per key, never a key or its hash. Messages go to stderr.
 * Exit status: 0 ok, 2 usage or key store error.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cli.h"
#include "core.h"
#include "guard.h"

extern char **environ;

static void usage(FILE *out) {
    fputs("usage: aiserve keys create --name NAME --scopes SCOPE[,SCOPE...] [--tier NAME] [options]\n"
          "       aiserve keys list [options]\n"
          "       aiserve keys revoke NAME [options]\n"
          "\n"
          "  create   make a new API key, store its SHA-256 and print the key once on stdout\n"
          "  list     one JSON line per key: name, scopes, tier, created, revoked (never the key)\n"
          "  revoke   refuse the key from now on (a running server picks it up within about\n"
          "           two seconds, or at once on SIGHUP)\n"
          "\n"
          "options:\n"
          "  --name NAME        key name: 1 to 64 of A-Z a-z 0-9 . _ - (unique)\n"
          "  --scopes LIST      comma-separated: predict, embed, batch, chat, admin\n"
          "  --tier NAME        rate-limit tier (default \"default\")\n"
          "  --keys-file PATH   the key store (default: AISERVE_KEYS_FILE, auth.keys_file in the\n"
          "                     --config file, else ./data/keys.json)\n"
          "  --config FILE      aiserve.yaml to take auth.keys_file from\n"
          "\n"
          "Keys look like ais_ followed by 43 characters of base64url (256 random bits).\n"
          "exit status: 0 ok, 2 usage or key store error\n",
          out);
}

/* The key store path, by the server's precedence. */
static int resolve_path(const char *flag_path, const char *config_path, char *out, size_t cap) {
    char *argv[4];
    int argc = 0;
    if (config_path) {
        argv[argc++] = "--config";
        argv[argc++] = (char *)config_path;
    }
    if (flag_path) {
        argv[argc++] = "--keys-file";
        argv[argc++] = (char *)flag_path;
    }
    core_config *cfg = malloc(sizeof *cfg);
    core_error err = {{0}};
    if (!cfg) {
        fprintf(stderr, "aiserve keys: out of memory\n");
        return -1;
    }
    int rc = core_config_load(cfg, argc, argv, environ, NULL, &err);
    if (rc == 0)
        snprintf(out, cap, "%s", cfg->keys_file);
    else
        fprintf(stderr, "aiserve keys: %s\n", err.message);
    free(cfg);
    return rc == 0 ? 0 : -1;
}

static int cmd_create(const char *path, const char *name, const char *scopes_text, const char *tier) {
    guard_error err = {0};
    guard_scopes scopes = 0;
    if (guard_scopes_parse(scopes_text, &scopes, &err) != 0) {
        fprintf(stderr, "aiserve keys: --scopes: %s\n", err.message);
        return EXIT_LOAD;
    }
    char key[GUARD_KEY_CHARS + 1];
    if (guard_keystore_create(path, name, scopes, tier, key, sizeof key, &err) != 0) {
        fprintf(stderr, "aiserve keys: %s\n", err.message);
        return EXIT_LOAD;
    }
    printf("%s\n", key);
    fflush(stdout);
    OPENSSL_cleanse(key, sizeof key);
    char list[128];
    guard_scopes_format(scopes, list, sizeof list);
    fprintf(stderr,
            "aiserve keys: created key '%s' (scopes %s, tier %s) in %s\n"
            "aiserve keys: the key is shown only this once; only its SHA-256 is stored\n",
            name, list, tier ? tier : "default", path);
    return 0;
}

static int cmd_list(const char *path) {
    guard_error err = {0};
    guard_keyset *set = NULL;
    bool exists = false;
    if (guard_keyset_load(path, &set, &exists, &err) != 0) {
        fprintf(stderr, "aiserve keys: %s\n", err.message);
        return EXIT_LOAD;
    }
    if (!exists)
        fprintf(stderr, "aiserve keys: no keys in %s\n", path);
    for (size_t i = 0; i < guard_keyset_size(set); i++) {
        const guard_key_info *k = guard_keyset_get(set, i);
        json_t *scopes = json_array();
        for (int b = 0; b < GUARD_N_SCOPES; b++)
            if (k->scopes & (1u << b))
                json_array_append_new(scopes, json_string(guard_scope_name(1u << b)));
        json_t *o = json_pack("{s:s, s:o, s:s, s:s, s:b}", "name", k->name, "scopes", scopes, "tier", k->tier,
                              "created", k->created, "revoked", k->revoked);
        if (o && k->revoked_at[0])
            json_object_set_new(o, "revoked_at", json_string(k->revoked_at));
        cli_print_json(o);
    }
    fflush(stdout);
    guard_keyset_release(set);
    return 0;
}

static int cmd_revoke(const char *path, const char *name) {
    guard_error err = {0};
    int rc = guard_keystore_revoke(path, name, &err);
    if (rc < 0) {
        fprintf(stderr, "aiserve keys: %s\n", err.message);
        return EXIT_LOAD;
    }
    if (rc == 1)
        fprintf(stderr, "aiserve keys: '%s' was already revoked\n", name);
    else
        fprintf(stderr,
                "aiserve keys: revoked '%s' in %s; a running server refuses it within about two seconds "
                "(at once after SIGHUP)\n",
                name, path);
    return 0;
}

int cli_keys(int argc, char **argv) {
    static const struct option opts[] = {
        {"name", required_argument, 0, 'n'},      {"scopes", required_argument, 0, 's'},
        {"tier", required_argument, 0, 't'},      {"keys-file", required_argument, 0, 'k'},
        {"config", required_argument, 0, 'c'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? EXIT_LOAD : 0;
    }
    const char *command = argv[0];
    const char *name = NULL, *scopes = NULL, *tier = NULL, *keys_file = NULL, *config = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 's': scopes = optarg; break;
        case 't': tier = optarg; break;
        case 'k': keys_file = optarg; break;
        case 'c': config = optarg; break;
        case 'h': usage(stdout); return 0;
        case ':':
            fprintf(stderr, "aiserve keys: %s needs a value\n", argv[optind - 1]);
            return EXIT_LOAD;
        default:
            fprintf(stderr, "aiserve keys: unknown option %s (see aiserve keys --help)\n", argv[optind - 1]);
            return EXIT_LOAD;
        }
    }
    int n_args = argc - optind;
    char **args = argv + optind;
    int is_create = strcmp(command, "create") == 0, is_list = strcmp(command, "list") == 0,
        is_revoke = strcmp(command, "revoke") == 0;
    if (!is_create && !is_list && !is_revoke) {
        fprintf(stderr, "aiserve keys: unknown command '%s' (create, list, revoke)\n", command);
        return EXIT_LOAD;
    }
    if (!is_create && (name || scopes || tier)) {
        fprintf(stderr, "aiserve keys: --name, --scopes and --tier belong to 'create'\n");
        return EXIT_LOAD;
    }
    if (is_create && (!name || !scopes)) {
        fprintf(stderr, "aiserve keys: create needs --name NAME and --scopes LIST\n");
        return EXIT_LOAD;
    }
    if (is_revoke && n_args != 1) {
        fprintf(stderr, "aiserve keys: revoke takes one key name\n");
        return EXIT_LOAD;
    }
    if (!is_revoke && n_args != 0) {
        fprintf(stderr, "aiserve keys: unexpected argument '%s'\n", args[0]);
        return EXIT_LOAD;
    }
    char path[4096];
    if (resolve_path(keys_file, config, path, sizeof path) != 0)
        return EXIT_LOAD;
    if (is_create)
        return cmd_create(path, name, scopes, tier);
    if (is_list)
        return cmd_list(path);
    return cmd_revoke(path, args[0]);
}
