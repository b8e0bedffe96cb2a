/* parallel.c - split a range of rows over short-lived POSIX threads.
 *
 * Kernels here run for milliseconds on big tensors, so a thread start
 * (~20 us) is noise; small inputs stay on the caller's thread via min_chunk.
 * Callers hold no Python state: module.c releases the GIL around this. */
#include <pthread.h>

#include "mq.h"

#define MQ_MAX_THREADS 256

typedef struct {
    mq_range_fn fn;
    void *ctx;
    int64_t begin, end;
} chunk;

static void *run_chunk(void *arg) {
    chunk *c = arg;
    c->fn(c->ctx, c->begin, c->end);
    return NULL;
}

void mq_parallel_for(int64_t n, int64_t min_chunk, int nthreads, mq_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    int64_t max_parts = (n + min_chunk - 1) / min_chunk;
    int parts = nthreads < 1 ? 1 : nthreads;
    if (parts > MQ_MAX_THREADS) parts = MQ_MAX_THREADS;
    if (parts > max_parts) parts = (int)max_parts;
    if (parts == 1) {
        fn(ctx, 0, n);
        return;
    }
    chunk chunks[MQ_MAX_THREADS];
    pthread_t threads[MQ_MAX_THREADS];
    int started[MQ_MAX_THREADS];
    for (int t = 0; t < parts; t++) {
        chunks[t] = (chunk){fn, ctx, n * t / parts, n * (t + 1) / parts};
        started[t] = 0;
    }
    for (int t = 1; t < parts; t++)
        started[t] = pthread_create(&threads[t], NULL, run_chunk, &chunks[t]) == 0;
    fn(ctx, 0, n / parts); /* chunk 0, on this thread */
    for (int t = 1; t < parts; t++) {
        if (started[t]) pthread_join(threads[t], NULL);
        else fn(ctx, chunks[t].begin, chunks[t].end); /* no thread: do it here */
    }
}
