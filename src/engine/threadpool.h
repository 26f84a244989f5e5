/*
 * threadpool.h - the engine's compute threads.
 *
 * A pool of n threads runs one parallel region at a time. A region is
 * n_chunks independent chunks of work: threadpool_run calls
 * fn(ctx, chunk, thread) exactly once for every chunk in 0..n_chunks-1,
 * on whichever thread claims it first (the calling thread is thread 0 and
 * claims chunks too), and returns when all have run. `thread` (0..n-1)
 * indexes per-thread scratch.
 *
 * Why chunks are claimed rather than assigned: if the machine is busy and a
 * worker is not scheduled, the caller simply runs the worker's chunks itself
 * instead of waiting a whole scheduler time slice for it; at worst the pool
 * degrades to one thread, never below it. Workers spin briefly between
 * regions (a forward pass runs them back to back) and then sleep on a
 * condition variable, so an idle pool costs no CPU.
 *
 * Threading: threadpool_run must not be called by two threads at once; the
 * engine serialises batches on one pool with its own mutex.
 */
#ifndef AISERVE_THREADPOOL_H
#define AISERVE_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *ctx, int chunk, int thread);

/* Creates n_threads - 1 workers (n_threads <= 1: none). NULL on failure. */
threadpool *threadpool_create(int n_threads);
void threadpool_destroy(threadpool *pool);
int threadpool_size(const threadpool *pool);
void threadpool_run(threadpool *pool, int n_chunks, threadpool_fn fn, void *ctx);

#endif
