/*
 * threadpool.h - the engine's compute threads.
 *
 * A pool of n threads runs one parallel region at a time: threadpool_run
 * calls fn(ctx, i, n) once on each thread i in 0..n-1 (i == 0 is the calling
 * thread) and returns when all have returned. Workers spin briefly between
 * regions (a forward pass runs ~7 regions per layer back to back) and then
 * sleep on a condition variable, so an idle pool costs no CPU.
 *
 * Threading: threadpool_run must not be called by two threads at once; the
 * engine serialises batches on one pool with its own mutex.
 */
#ifndef AISERVE_THREADPOOL_H
#define AISERVE_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *ctx, int thread_idx, int n_threads);

/* Creates n_threads - 1 workers (n_threads <= 1: none). NULL on failure. */
threadpool *threadpool_create(int n_threads);
void threadpool_destroy(threadpool *pool);
int threadpool_size(const threadpool *pool);
void threadpool_run(threadpool *pool, threadpool_fn fn, void *ctx);

/* Splits [0, n) into n_parts chunks, rounded to multiples of `align`; part
 * i gets [*begin, *end). */
void threadpool_split(int n, int align, int part, int n_parts, int *begin, int *end);

#endif
