/* parallel.c - split a range of rows over short-lived POSIX threads.
 *
 * Kernels here run for milliseconds on big tensors, so a thread start
 * (~20 us) is noise; small inputs stay on the caller's thread via min_chunk.
 * Callers hold no Python state: module.c releases the GIL around this. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>

#include "mq.h"

/* ---- torch's own OpenMP pool, when the caller hands it to us -------------
 * torch runs its ops on an OpenMP team whose idle workers spin for a while
 * after each op.  Short-lived pthreads started right after a torch op share
 * the cores with those spinners and run up to 4x slower on a small machine;
 * running our chunks on the same OpenMP team avoids that and the thread
 * start.  The runtime is looked up in the already loaded library
 * (RTLD_NOLOAD): mono-quant never loads or links an OpenMP of its own. */
typedef void (*gomp_parallel_t)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
static gomp_parallel_t gomp_parallel;
static int (*omp_in_parallel)(void);

/* libgomp's team does not survive fork(): a forked child (a DataLoader
 * worker, say) goes back to pthreads. */
static void openmp_off_in_child(void) { gomp_parallel = NULL; }

int mq_use_openmp_runtime(const char *path) {
    static int atfork_registered = 0;
    if (!atfork_registered) atfork_registered = pthread_atfork(NULL, NULL, openmp_off_in_child) == 0;
    if (!path) {
        gomp_parallel = NULL;
        return 0;
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (!lib) return -1;
    gomp_parallel_t par = (gomp_parallel_t)dlsym(lib, "GOMP_parallel");
    int (*ip)(void) = (int (*)(void))dlsym(lib, "omp_in_parallel");
    if (!par || !ip) {
        dlclose(lib);
        return -1;
    }
    omp_in_parallel = ip;
    gomp_parallel = par; /* the handle stays open: the library stays loaded */
    return 0;
}

const char *mq_threading_backend(void) { return gomp_parallel ? "openmp" : "pthreads"; }

typedef struct {
    mq_range_fn fn;
    void *ctx;
    int64_t n;
    int64_t pieces;    /* n split into this many contiguous pieces */
    atomic_llong next; /* the next piece to claim */
} omp_job;

/* Team members claim pieces until none is left: a member the OS runs late
 * (another process on its core) ends up with fewer pieces instead of the
 * whole call waiting for a fixed share. */
static void omp_worker(void *arg) {
    omp_job *job = arg;
    for (;;) {
        const int64_t piece = atomic_fetch_add(&job->next, 1);
        if (piece >= job->pieces) break;
        job->fn(job->ctx, job->n * piece / job->pieces, job->n * (piece + 1) / job->pieces);
    }
}

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
    if (gomp_parallel && !omp_in_parallel()) {
        /* 4 pieces per thread, each still at least min_chunk items */
        omp_job job = {fn, ctx, n, (int64_t)parts * 4 < max_parts ? (int64_t)parts * 4 : max_parts, 0};
        gomp_parallel(omp_worker, &job, (unsigned)parts, 0);
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
