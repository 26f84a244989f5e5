/*
 * threadpool.c - spin-then-sleep worker pool (see threadpool.h).
 *
 * A region is published by bumping `generation` (release); workers that
 * see a new generation (acquire) read fn/ctx, run, and decrement `pending`.
 * The caller runs part 0 itself and waits for `pending` to reach zero.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* About 100-300 us of spinning before a worker sleeps. */
#define SPIN_ITERATIONS 20000

struct threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;
    atomic_int pending;
    atomic_int stop;
    int n_sleeping; /* under lock */
    threadpool_fn fn;
    void *ctx;
};

typedef struct worker_arg {
    threadpool *pool;
    int idx;
} worker_arg;

static void *worker_main(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    threadpool *pool = arg.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               spins < SPIN_ITERATIONS) {
            CPU_RELAX();
            spins++;
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->lock);
            pool->n_sleeping++;
            while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->wake, &pool->lock);
            pool->n_sleeping--;
            pthread_mutex_unlock(&pool->lock);
        }
        seen = gen;
        if (atomic_load(&pool->stop))
            return NULL;
        pool->fn(pool->ctx, arg.idx, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel);
    }
}

threadpool *threadpool_create(int n_threads) {
    threadpool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->n_threads = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (pool->n_threads > 1) {
        pool->threads = calloc((size_t)pool->n_threads, sizeof *pool->threads);
        if (!pool->threads)
            goto fail;
        for (int i = 1; i < pool->n_threads; i++) {
            worker_arg *arg = malloc(sizeof *arg);
            if (!arg)
                goto fail_started;
            arg->pool = pool;
            arg->idx = i;
            if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
                free(arg);
                goto fail_started;
            }
            continue;
        fail_started:
            pool->n_threads = i; /* only i-1 workers exist: stop those */
            threadpool_destroy(pool);
            return NULL;
        }
    }
    return pool;
fail:
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool);
    return NULL;
}

void threadpool_destroy(threadpool *pool) {
    if (!pool)
        return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n_threads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int threadpool_size(const threadpool *pool) { return pool->n_threads; }

void threadpool_run(threadpool *pool, threadpool_fn fn, void *ctx) {
    if (pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (pool->n_sleeping)
        pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    fn(ctx, 0, pool->n_threads);
    int spins = 0;
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) > 0) {
        if (++spins < SPIN_ITERATIONS)
            CPU_RELAX();
        else
            sched_yield();
    }
}

void threadpool_split(int n, int align, int part, int n_parts, int *begin, int *end) {
    if (align < 1)
        align = 1;
    int units = (n + align - 1) / align;
    int per = units / n_parts, extra = units % n_parts;
    int b = part * per + (part < extra ? part : extra);
    int e = b + per + (part < extra ? 1 : 0);
    *begin = b * align < n ? b * align : n;
    *end = e * align < n ? e * align : n;
}
