/*
 * collect.c - metrics collectors over a key-value store that outlive
 * neither side: the metrics registry owns the box (collectors are freed
 * with the registry), the limiter or cache detaches it when it goes, and a
 * render after that skips it. The box's mutex orders a render against the
 * detach, so a render never reads a store being destroyed.
 *
 * Any thread.
 */
#include <pthread.h>
#include <stdlib.h>

#include "guard_int.h"

struct guard_collector {
    pthread_mutex_t lock;
    kv_store *store; /* NULL once detached */
    guard_collect_fn fn;
    void *ud;
    metric *series[8];
};

static void run(void *ud) {
    guard_collector *c = ud;
    pthread_mutex_lock(&c->lock);
    if (c->store)
        c->fn(c->ud, c->store, c->series);
    pthread_mutex_unlock(&c->lock);
}

static void box_free(void *ud) {
    guard_collector *c = ud;
    pthread_mutex_destroy(&c->lock);
    free(c);
}

guard_collector *guard_collector_attach(metrics_registry *r, kv_store *store, guard_collect_fn fn, void *ud,
                                        metric *const *series, size_t n) {
    guard_collector *c = calloc(1, sizeof *c);
    if (!c || n > 8) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->store = store;
    c->fn = fn;
    c->ud = ud;
    for (size_t i = 0; i < n; i++)
        c->series[i] = series[i];
    if (metrics_on_collect_owned(r, run, c, box_free) != 0) {
        box_free(c);
        return NULL;
    }
    return c;
}

void guard_collector_detach(guard_collector *c) {
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->store = NULL;
    pthread_mutex_unlock(&c->lock);
}
