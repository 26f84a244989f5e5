/*
 * threadpool.c - chunk-claiming worker pool (see threadpool.h).
 *
 * `claim` packs the region's generation (high 32 bits) with the next chunk
 * index (low 32 bits). A thread claims a chunk with a compare-and-swap that
 * also checks the generation, so a worker waking late can never claim a
 * chunk of a region other than the one whose fn/ctx it read: the caller
 * does not publish a new region until every chunk of the old one is done,
 * and it closes the old region (a new generation with no chunk to claim)
 * before it changes fn, ctx or n_chunks.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Roughly 100-300 us of spinning before a worker sleeps or the caller yields. */
#define SPIN_ITERATIONS 20000

struct threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int n_sleeping;                   /* under lock */
    uint32_t generation;              /* caller's counter */
    _Atomic uint32_t published;       /* last generation announced to workers */
    _Atomic uint64_t claim;           /* generation << 32 | next chunk */
    _Atomic int done;                 /* chunks finished in this region */
    _Atomic int n_chunks;
    _Atomic(threadpool_fn) fn;
    _Atomic(void *) ctx;
    atomic_int stop;
};

typedef struct worker_arg {
    threadpool *pool;
    int idx;
} worker_arg;

/* Claims and runs chunks of generation `gen` until none are left. */
static void work(threadpool *pool, uint32_t gen, int thread) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&pool->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != gen)
            return;
        int chunk = (int)(uint32_t)c;
        if (chunk >= atomic_load_explicit(&pool->n_chunks, memory_order_relaxed))
            return;
        if (!atomic_compare_exchange_weak_explicit(&pool->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        threadpool_fn fn = atomic_load_explicit(&pool->fn, memory_order_relaxed);
        fn(atomic_load_explicit(&pool->ctx, memory_order_relaxed), chunk, thread);
        atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
    }
}

static void *worker_main(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    threadpool *pool = arg.pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->published, memory_order_acquire)) == seen &&
               spins < SPIN_ITERATIONS) {
            CPU_RELAX();
            spins++;
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->lock);
            pool->n_sleeping++;
            while ((gen = atomic_load_explicit(&pool->published, memory_order_acquire)) == seen &&
                   !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->lock);
            pool->n_sleeping--;
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->stop))
            return NULL;
        seen = gen;
        work(pool, gen, arg.idx);
    }
}

threadpool *threadpool_create(int n_threads) {
    threadpool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->n_threads = 1;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
        if (!pool->threads) {
            threadpool_destroy(pool);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *arg = malloc(sizeof *arg);
            if (arg) {
                arg->pool = pool;
                arg->idx = i;
            }
            if (!arg || pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
                free(arg);
                threadpool_destroy(pool); /* joins the i - 1 workers started */
                return NULL;
            }
            pool->n_threads = i + 1;
        }
    }
    return pool;
}

void threadpool_destroy(threadpool *pool) {
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    atomic_fetch_add_explicit(&pool->published, 1, memory_order_release);
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

void threadpool_run(threadpool *pool, int n_chunks, threadpool_fn fn, void *ctx) {
    if (n_chunks <= 0)
        return;
    if (pool->n_threads == 1 || n_chunks == 1) {
        for (int c = 0; c < n_chunks; c++)
            fn(ctx, c, 0);
        return;
    }
    uint32_t gen = ++pool->generation;
    if (gen == 0) /* 0 means "nothing yet" to a new worker */
        gen = ++pool->generation;
    /* First close the old region: a worker still looping in work() for it
     * (all its chunks are done, but it may be between reading `claim` and
     * its compare-and-swap) must fail that swap and leave, rather than see
     * this region's n_chunks with the old claim and run one of this
     * region's chunks twice (and count it twice in `done`, so the caller
     * would return while chunks still run). */
    atomic_store_explicit(&pool->claim, (uint64_t)gen << 32 | UINT32_MAX, memory_order_seq_cst);
    atomic_store_explicit(&pool->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool->n_chunks, n_chunks, memory_order_relaxed);
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->claim, (uint64_t)gen << 32, memory_order_release);
    atomic_store_explicit(&pool->published, gen, memory_order_release);
    pthread_mutex_lock(&pool->lock);
    if (pool->n_sleeping)
        pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    work(pool, gen, 0);
    int spins = 0;
    while (atomic_load_explicit(&pool->done, memory_order_acquire) < n_chunks) {
        if (++spins < SPIN_ITERATIONS)
            CPU_RELAX();
        else
            sched_yield();
    }
}
