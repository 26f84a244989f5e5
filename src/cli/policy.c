/*
 * policy.c - the serving policy a configuration starts with: models.traffic,
 * models.shadow and models.cascade, applied to a model repository. Shared by
 * `aiserve serve` and `aiserve batch`, so an offline run serves a model the
 * way the server would.
 *
 * The entries were checked for shape when the configuration was loaded
 * (config.c); here each is handed to serving, which checks it against the
 * repository (the model and its versions must exist).
 *
 * Threads: the calling thread, before the repository serves.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Calls fn on each entry of a comma-separated list, with the model name
 * (the part before '@') as its own string. Stops at the first failure. */
static int each_entry(const char *list, int (*fn)(serving_repo *, const char *model, const char *rest,
                                                   void *ud, serving_error *),
                      serving_repo *repo, void *ud, serving_error *err) {
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ","), name = strcspn(p, "@");
        char model[128], rest[128];
        if (name < len && name < sizeof model && len - name - 1 < sizeof rest) {
            snprintf(model, sizeof model, "%.*s", (int)name, p);
            snprintf(rest, sizeof rest, "%.*s", (int)(len - name - 1), p + name + 1);
            int rc = fn(repo, model, rest, ud, err);
            if (rc != 0) {
                char why[sizeof err->message];
                snprintf(why, sizeof why, "%s", err->message);
                snprintf(err->message, sizeof err->message, "%.*s: %.380s", (int)(len < 120 ? len : 120), p, why);
                return rc;
            }
        }
        p += len + (p[len] == ',');
    }
    return 0;
}

static int refuse(serving_error *err, const char *what) {
    err->status = SERVING_EINPUT;
    snprintf(err->message, sizeof err->message, "%s", what);
    return SERVING_EINPUT;
}

/* models.traffic: the entries of one model make one split. */
typedef struct split_build {
    char models[16][128];
    serving_split splits[16];
    size_t n;
} split_build;

static int add_split_entry(serving_repo *repo, const char *model, const char *rest, void *ud,
                           serving_error *err) {
    (void)repo;
    split_build *b = ud;
    size_t k = 0;
    while (k < b->n && strcmp(b->models[k], model) != 0)
        k++;
    if (k == b->n) {
        if (b->n == 16)
            return refuse(err, "splits for more than 16 models");
        snprintf(b->models[b->n++], sizeof b->models[0], "%s", model);
    }
    serving_split *s = &b->splits[k];
    if (s->n == SERVING_MAX_SPLIT)
        return refuse(err, "a split of more than 16 versions");
    s->version[s->n] = strtol(rest, NULL, 10);
    s->weight[s->n++] = (int)strtol(strchr(rest, '=') + 1, NULL, 10);
    return 0;
}

static int set_shadow_entry(serving_repo *repo, const char *model, const char *rest, void *ud,
                            serving_error *err) {
    (void)ud;
    serving_shadow sh = {.version = strtol(rest, NULL, 10), .percent = (int)strtol(strchr(rest, '=') + 1, NULL, 10)};
    return serving_set_shadow(repo, model, &sh, err);
}

static int set_cascade_entry(serving_repo *repo, const char *model, const char *rest, void *ud,
                             serving_error *err) {
    (void)ud;
    serving_cascade c = {.first = strtol(rest, NULL, 10), .then = strtol(strchr(rest, '>') + 1, NULL, 10),
                         .threshold = strtod(strchr(rest, '=') + 1, NULL)};
    return serving_set_cascade(repo, model, &c, err);
}

int cli_apply_policy(serving_repo *repo, const core_config *cfg, char *why, size_t cap) {
    serving_error err = {0};
    split_build *b = calloc(1, sizeof *b);
    if (!b)
        return snprintf(why, cap, "out of memory"), -1;
    int rc = each_entry(cfg->traffic, add_split_entry, repo, b, &err);
    for (size_t k = 0; rc == 0 && k < b->n; k++)
        if ((rc = serving_set_split(repo, b->models[k], &b->splits[k], &err)) != 0) {
            char reason[sizeof err.message];
            snprintf(reason, sizeof reason, "%s", err.message);
            snprintf(err.message, sizeof err.message, "model '%s': %.380s", b->models[k], reason);
        }
    free(b);
    if (rc != 0)
        return snprintf(why, cap, "models.traffic: %.400s", err.message), -1;
    if (each_entry(cfg->shadow, set_shadow_entry, repo, NULL, &err) != 0)
        return snprintf(why, cap, "models.shadow: %.400s", err.message), -1;
    if (each_entry(cfg->cascade, set_cascade_entry, repo, NULL, &err) != 0)
        return snprintf(why, cap, "models.cascade: %.400s", err.message), -1;
    return 0;
}
