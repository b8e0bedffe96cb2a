/* parallel.c - split a range of work items over threads (the GIL is released).
 *
 * The default backend is a small persistent pool built so that a call never
 * waits on a thread the OS may not be running: with other processes on the
 * cores (DataLoader workers, a second notebook), a descheduled helper can sit
 * out a whole scheduler slice (milliseconds), which made small layers take
 * ~36 ms a call whatever their size when calls waited for every helper.
 *
 *  - The work is cut into small pieces taken from one shared counter, by the
 *    caller and by whichever helpers are running.  The caller never waits for
 *    a helper to start: if none wakes in time, the caller does every piece.
 *    It waits only for pieces a helper has already claimed (one piece each).
 *  - Helpers spin a few microseconds after a job (the next layer's call often
 *    comes right away), then sleep on a futex: no long spinning that would
 *    take a core from the caller or from another process.
 *  - fork(): the child has only the forking thread, so a child handler
 *    forgets the helpers and the child starts its own on its first call.
 *
 * "omp-team" (the default; MONO_QUANT_THREADS=omp-team) is the pool that hands
 * jobs of 15 us or more (TEAM_MIN_WORK_NS) to torch's OpenMP team when torch's libgomp is in the
 * process: with libgomp's default wait policy its worker spins for
 * milliseconds after each torch op on the core our helper wants, so a
 * 2-thread call on the pool runs at about 1-thread speed there.  omp_team.c
 * says how, and how fork stays safe.  The team's end of region waits for
 * every worker, so after a call that waited too long for one (descheduled:
 * other processes hold the cores) the pool is used alone for a while
 * (BACKOFF_PAUSE_*).  The default since a quiet 2-core host measured it at
 * 1.3-1.9x the pool's speed on large calls (docs/benchmarks.md, "torch's
 * OpenMP team"); MONO_QUANT_THREADS=pool uses the pool alone.
 *
 * Middling calls (a kernel's rule: mq_threads_for_work) split only while
 * the split ones' callers keep their cores, and run on one thread for a while
 * (BACKOFF_PAUSE_*) after two in a row whose caller was off its core for a
 * good part of the call (SMALL_STRIKES): where the cores are shared, a woken helper takes the caller's
 * core or claims a piece and is descheduled, and such a call is short enough
 * that a lost scheduler slice costs it many times what a second thread saves.
 *
 * "pthreads" (MONO_QUANT_THREADS=pthreads) is the simple fallback: threads
 * started per call, detached, taking small pieces from a shared counter as the
 * caller does (it never waits for a thread that has not started). */
#define _GNU_SOURCE /* syscall, pthread_sigmask, clock_gettime under -std=c11 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "mq.h"
#include "omp_team.h"

#define MQ_MAX_THREADS 256
#define PIECES_PER_THREAD 8      /* small pieces: a late or descheduled helper holds little */
#define HELPER_SPIN_NS 2000      /* a helper spins this long for the next job, then sleeps: longer spins took
                                    * a core from torch's own OpenMP workers between layers (docs/benchmarks.md) */
#define CALLER_SPIN_MIN_NS 50000 /* the caller's wait for claimed pieces before it sleeps: at least */
#define CALLER_SPIN_MAX_NS 2000000 /* and at most (a helper that takes longer was descheduled) */
#define TEAM_WAIT_MIN_NS 200000 /* a team call whose caller waited past its last piece longer than this */
                                /* and than 2 of its own pieces had a descheduled worker: */
#define BACKOFF_PAUSE_MIN_NS 50000000    /* then the pool alone for 50 ms, */
#define BACKOFF_PAUSE_MAX_NS 1600000000  /* doubled while it stays so, up to 1.6 s */
#define TEAM_MIN_WORK_NS 15000 /* jobs of less work (one thread's time, last seen) stay on the pool: */
                               /* a wait for a descheduled worker would cost them many times their time. */
                               /* On the pool, just after a torch op (torch's worker spinning on the core */
                               /* our helper wants), a job runs at one thread's speed: 0.2 ms here made */
                               /* the AMX weight-only 128 x 384 x 384 as slow on 2 threads as on 1, and the */
                               /* 384-wide encoders at 128 rows 0.81-0.89 of fp32's time (0.72-0.73 at */
                               /* 0.05 ms; int4 0.61 -> 0.53); the demo's weight-only batch 32 went from */
                               /* 1.0x to 1.28x fp32 at AVX2 on the team (session 21).  A middling call */
                               /* (mq_threads_for_work, which the small-split back-off keeps on one */
                               /* thread under load) of no work seen yet goes too: on the pool its helper */
                               /* waited ~0.4 ms for torch's worker's core and the back-off set in (the */
                               /* demo's weight-only batch 32 at 1.1x fp32 in 2 of 4 runs, else 1.4x). */
                               /* Session 21 saw int4 384x384 at 1024 rows bimodal (0.6-1.2x) with the */
                               /* team for every job: a floor stays.  60 us until session 33: a sleeping */
                               /* helper of ours took 15-25 us to wake on a KVM host, so jobs of 20-60 us */
                               /* split on the pool ran slower than on one thread; at 15 us (one process, */
                               /* interleaved against 60: benchmarks' team_min_work_for_tests) the quiet */
                               /* models were level or ahead (bert384-128 weight-only 0.76 -> 0.63 of fp32's */
                               /* time, int4 768 x 768 at 8 rows 0.84 -> 0.63, 768 -> 3072 at 1 row */
                               /* 0.58 -> 0.28) and beside two busy processes no worse (Intel Xeon, 2 Dec) */
#define SMALL_OFF_CPU_MIN_NS 50000 /* a split call whose caller was off its core longer than this and */
                                   /* than a quarter of the call: then calls that may stay on one thread */
                                   /* (mq_threads_for_work) do, for a while */
#define WORK_SEEN_SETS 256 /* x WORK_SEEN_WAYS: a model's layers x regions per layer, with room */
#define WORK_SEEN_WAYS 4

/* ---- waiting: spin briefly, then sleep on a futex ---------------------------------------- */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t clock_ns(clockid_t clock) { /* -1 if the clock can't be read */
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
static int64_t thread_cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

#ifdef __linux__
static void futex_wait(atomic_uint *word, unsigned expected) {
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
static void futex_wake(atomic_uint *word, int count) {
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}
#else /* no futex: poll every 50 us (callers always recheck their condition) */
static void futex_wait(atomic_uint *word, unsigned expected) {
    struct timespec ts = {0, 50000};
    if (atomic_load(word) == expected) nanosleep(&ts, NULL);
}
static void futex_wake(atomic_uint *word, int count) { (void)word, (void)count; }
#endif

/* ---- back-off: after a call that waited for a descheduled thread, pause ---------------------- */

/* A pause that starts at BACKOFF_PAUSE_MIN_NS after a call that waited, doubles
 * while calls keep waiting (up to BACKOFF_PAUSE_MAX_NS) and shrinks a little with
 * each call that did not: load comes and goes, and under steady load a wait
 * costs a scheduler slice once per longest pause instead of once per call. */
typedef struct {
    _Atomic int64_t paused_until_ns, pause_ns;
} backoff;

static atomic_int backoff_off; /* tests: the pauses off (a loaded host pauses for real) */

static int backoff_paused(backoff *b) {
    return !atomic_load(&backoff_off) && now_ns() < atomic_load_explicit(&b->paused_until_ns, memory_order_relaxed);
}

/* Read-modify-write without a lock: only the pool's owner (pool.owned) calls it. */
static void backoff_note(backoff *b, int waited_too_long, int64_t end_ns) {
    int64_t pause = atomic_load_explicit(&b->pause_ns, memory_order_relaxed);
    if (waited_too_long) {
        pause = pause < BACKOFF_PAUSE_MIN_NS ? BACKOFF_PAUSE_MIN_NS : pause * 2 > BACKOFF_PAUSE_MAX_NS ? BACKOFF_PAUSE_MAX_NS : pause * 2;
        atomic_store_explicit(&b->pause_ns, pause, memory_order_relaxed);
        atomic_store_explicit(&b->paused_until_ns, end_ns + pause, memory_order_relaxed);
    } else if (pause) {
        pause -= pause / 8;
        atomic_store_explicit(&b->pause_ns, pause < BACKOFF_PAUSE_MIN_NS ? 0 : pause, memory_order_relaxed);
    }
}

static void backoff_reset(backoff *b) {
    atomic_store(&b->paused_until_ns, 0);
    atomic_store(&b->pause_ns, 0);
}

/* Calls of middling work (a kernel's own rule, mq_threads_for_work) split
 * only while the split calls' callers have kept their cores: on a quiet host
 * such a call runs at up to twice its one-thread speed on 2 threads, but where
 * the cores are shared (busy processes beside, or a process given one core)
 * the helper takes the caller's core or claims a piece and is descheduled.
 * The sign is the caller's time off its core during a split call (sleeping
 * on a late piece, or preempted): wall time less its thread's CPU time.  (A
 * caller's wait for claimed pieces alone missed the one-core case: there the
 * helper preempts the caller inside its own pieces.) */
static backoff small_backoff;

/* Consecutive timed split calls whose caller lost its core (the pool's owner only): one alone is
 * a hiccup (a quiet host's demo model, weight-only batch 32: 2 runs in 10 stayed on one thread
 * for half their calls after one, 1.23x fp32 instead of 1.41-1.51x); under load they come in runs. */
static int small_strikes;
#define SMALL_STRIKES 2

static void note_split_call(int64_t wall_start_ns, int64_t cpu_start_ns) {
    const int64_t end = now_ns(), cpu = thread_cpu_ns();
    if (cpu_start_ns < 0 || cpu < 0) return;
    const int64_t wall = end - wall_start_ns, off_cpu = wall - (cpu - cpu_start_ns);
    small_strikes = off_cpu > SMALL_OFF_CPU_MIN_NS && 4 * off_cpu > wall ? small_strikes + 1 : 0;
    backoff_note(&small_backoff, small_strikes >= SMALL_STRIKES, end);
}

/* Set when a middling call was let split: the next split call on this thread
 * (that one's) is timed for the back-off.  Only those: the two thread-CPU-clock
 * reads are system calls (~0.75 us each), and the other calls' good runs would
 * shorten the pause the middling ones' bad runs set. */
static _Thread_local int time_next_split;

/* ---- the pool ---------------------------------------------------------------------------- */

/* One 64-bit word says which job is live and which piece is next, so that
 * claiming a piece and checking that its job is still the current one are
 * one compare-and-swap: generation (24 bits) | helpers wanted (8) | pieces
 * (16) | next piece (16).  A thread reads the job's fields only after it
 * claimed a piece, and the caller does not change them before every claimed
 * piece is done, so the fields need no lock. */
#define CLAIM(gen, helpers, pieces, next) \
    (((uint64_t)(gen) << 40) | ((uint64_t)(helpers) << 32) | ((uint64_t)(pieces) << 16) | (uint64_t)(next))
#define CLAIM_HELPERS(c) ((int)(((c) >> 32) & 0xff))
#define CLAIM_PIECES(c) ((int)(((c) >> 16) & 0xffff))
#define CLAIM_NEXT(c) ((int)((c) & 0xffff))

typedef struct {
    atomic_uint wake;    /* futex word: bumped to wake this helper */
    atomic_int sleeping; /* set before it sleeps, so the caller knows to wake it */
    int index;           /* helpers wanted by a job are 0 .. CLAIM_HELPERS - 1 */
} helper;

static struct {
    atomic_int owned;      /* a caller is using the pool; others run alone */
    _Atomic uint64_t claim;/* see CLAIM */
    atomic_uint done;      /* pieces finished (futex word for the caller) */
    atomic_int caller_sleeping;
    uint32_t gen;          /* the owner's: generation of the last job */
    int started;           /* helpers started (only the owner starts more) */
    mq_range_fn fn;        /* the job, written by the owner before it publishes claim */
    void *ctx;
    int64_t n, piece_items;
    helper helpers[MQ_MAX_THREADS - 1];
} pool;

static _Thread_local int inside_pool_thread; /* a helper calling mq_parallel_for runs alone */

/* Claims and runs pieces of the live job until none is left for this thread
 * (helper index, or -1 for the caller, who takes part in every job and
 * times its pieces: returns the longest, in ns, 0 if it ran none). */
static int64_t run_pieces(int index) {
    int64_t longest = 0;
    uint64_t c = atomic_load_explicit(&pool.claim, memory_order_acquire);
    for (;;) {
        if (CLAIM_NEXT(c) >= CLAIM_PIECES(c) || index >= CLAIM_HELPERS(c)) return longest;
        if (!atomic_compare_exchange_weak_explicit(&pool.claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* c now holds the current word */
        const int64_t begin = (int64_t)CLAIM_NEXT(c) * pool.piece_items;
        const int64_t end = begin + pool.piece_items < pool.n ? begin + pool.piece_items : pool.n;
        const int64_t start = index < 0 ? now_ns() : 0;
        pool.fn(pool.ctx, begin, end);
        if (index < 0) {
            const int64_t took = now_ns() - start;
            longest = took > longest ? took : longest;
        }
        /* seq_cst pairs with the caller's caller_sleeping store: one of us sees the other */
        const unsigned finished = atomic_fetch_add(&pool.done, 1) + 1;
        if (index >= 0 && finished == (unsigned)CLAIM_PIECES(c) && atomic_load(&pool.caller_sleeping))
            futex_wake(&pool.done, 1);
        c = atomic_load_explicit(&pool.claim, memory_order_acquire);
    }
}

static int has_work_for(int index) {
    const uint64_t c = atomic_load(&pool.claim);
    return CLAIM_NEXT(c) < CLAIM_PIECES(c) && index < CLAIM_HELPERS(c);
}

static void *helper_main(void *arg) {
    helper *h = arg;
    inside_pool_thread = 1;
    for (;;) {
        run_pieces(h->index);
        const int64_t spin_until = now_ns() + HELPER_SPIN_NS;
        int found = 0;
        for (int i = 0; !found; i++) {
            found = has_work_for(h->index);
            if ((i & 63) == 63 && now_ns() > spin_until) break;
            cpu_relax();
        }
        if (found) continue;
        const unsigned ticket = atomic_load(&h->wake);
        atomic_store(&h->sleeping, 1); /* seq_cst pairs with the caller's claim store */
        if (!has_work_for(h->index)) futex_wait(&h->wake, ticket);
        atomic_store(&h->sleeping, 0);
    }
    return NULL;
}

/* fork(): the helpers do not exist in the child, and a job the parent had in
 * flight on another thread is not the child's.  Runs in the child before
 * fork() returns, with only the forking thread alive. */
static void forget_pool_in_child(void) {
    memset((void *)&pool, 0, sizeof pool);
    inside_pool_thread = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_pool_in_child); }
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT; /* before the pool is first owned */

/* Starts helpers up to `wanted` (the owner only); returns how many exist. */
static int start_helpers(int wanted) {
    if (pool.started >= wanted) return wanted;
    pthread_attr_t attr;
    sigset_t all, old;
    if (pthread_attr_init(&attr) != 0) return pool.started;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all); /* signals go to the interpreter's threads, never to a helper */
    /* except the ones a helper's own fault raises: blocked, the kernel kills the process without
       running faulthandler's handler (no traceback) */
    static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    while (pool.started < wanted) {
        helper *h = &pool.helpers[pool.started];
        h->index = pool.started;
        pthread_t thread;
        if (pthread_create(&thread, &attr, helper_main, h) != 0) break; /* fewer helpers: the caller does more */
        pool.started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return pool.started;
}

/* Returns the caller's longest piece in ns (0 if it ran none). */
static int64_t run_on_pool(int64_t n, int64_t piece_items, int pieces, int helpers, mq_range_fn fn, void *ctx) {
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.piece_items = piece_items;
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    pool.gen = (pool.gen + 1) & 0xffffff;
    atomic_store(&pool.claim, CLAIM(pool.gen, helpers, pieces, 0)); /* publish (seq_cst) */
    for (int i = 0; i < helpers; i++) {
        helper *h = &pool.helpers[i];
        if (atomic_load(&h->sleeping)) {
            atomic_fetch_add(&h->wake, 1);
            futex_wake(&h->wake, 1);
        }
    }
    const int64_t longest = run_pieces(-1);
    /* What is left are pieces a helper claimed and is running (or was
     * descheduled in).  Spin while a running helper would finish one (about
     * our own longest piece); past that it was descheduled: sleep, freeing
     * our core.  Sleeping sooner costs more than it saves: on a busy machine
     * a woken caller may wait a whole round of the run queue for its core. */
    if (atomic_load_explicit(&pool.done, memory_order_acquire) == (unsigned)pieces) return longest;
    int64_t spin = 2 * longest;
    spin = spin < CALLER_SPIN_MIN_NS ? CALLER_SPIN_MIN_NS : spin > CALLER_SPIN_MAX_NS ? CALLER_SPIN_MAX_NS : spin;
    const int64_t spin_until = now_ns() + spin;
    for (int i = 0; atomic_load_explicit(&pool.done, memory_order_acquire) != (unsigned)pieces; i++) {
        if ((i & 63) == 63 && now_ns() > spin_until) break;
        cpu_relax();
    }
    for (;;) {
        atomic_store(&pool.caller_sleeping, 1);
        const unsigned finished = atomic_load(&pool.done);
        if (finished == (unsigned)pieces) break;
        futex_wait(&pool.done, finished);
    }
    atomic_store(&pool.caller_sleeping, 0);
    return longest;
}

/* ---- torch's OpenMP team ------------------------------------------------------------------- */

typedef struct {
    mq_range_fn fn;
    void *ctx;
    int64_t n, piece_items;
    int pieces;
    atomic_int next;        /* the next piece: every thread of the team takes from it */
    int64_t caller_start_ns;   /* when the caller's region began: libgomp's start waits at the dock
                                * for every worker, so a descheduled one delays it */
    int64_t caller_done_ns;    /* the caller's, when it found no piece left */
    int64_t caller_longest_ns; /* the caller's slowest piece */
} team_job;

static _Thread_local int team_caller; /* set around the caller's GOMP region */
static _Atomic int64_t team_calls;
static backoff team_backoff; /* after a team call that waited: the pool alone for a while */

static void team_body(void *arg) {
    team_job *job = arg;
    const int caller = team_caller;
    int64_t longest = 0;
    if (caller) job->caller_start_ns = now_ns();
    for (int p; (p = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed)) < job->pieces;) {
        const int64_t begin = (int64_t)p * job->piece_items;
        const int64_t end = begin + job->piece_items < job->n ? begin + job->piece_items : job->n;
        const int64_t start = caller ? now_ns() : 0;
        job->fn(job->ctx, begin, end);
        if (caller && now_ns() - start > longest) longest = now_ns() - start;
    }
    if (caller) { /* the region's start and end order these with the caller's reads */
        job->caller_done_ns = now_ns();
        job->caller_longest_ns = longest;
    }
}

/* One thread's time for the last job of each (fn, n) seen, in ns: what a
 * call will cost is known only from the previous one like it.  Set-associative
 * with least-recently-used replacement: a model has a few regions per layer
 * times its layers, and two jobs that evicted each other would both stay on
 * the pool for good (a direct-mapped table of 64 did that to fp16 convs).
 * Read and written by the pool's owner only. */
typedef struct {
    mq_range_fn fn;
    int64_t n, work_ns;
    uint64_t used;
} work_entry;
static work_entry work_seen[WORK_SEEN_SETS][WORK_SEEN_WAYS];
static uint64_t work_clock;

static work_entry *work_find(mq_range_fn fn, int64_t n, int for_insert) {
    uint64_t h = (uint64_t)(uintptr_t)fn ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);
    work_entry *set = work_seen[(h ^ (h >> 29)) % WORK_SEEN_SETS], *oldest = &set[0];
    for (int w = 0; w < WORK_SEEN_WAYS; w++) {
        if (set[w].fn == fn && set[w].n == n) {
            set[w].used = ++work_clock;
            return &set[w];
        }
        if (set[w].used < oldest->used) oldest = &set[w];
    }
    if (!for_insert) return NULL;
    oldest->fn = fn;
    oldest->n = n;
    oldest->used = ++work_clock;
    return oldest;
}

static void remember_work(mq_range_fn fn, int64_t n, int64_t longest_piece_ns, int pieces) {
    if (longest_piece_ns <= 0) return; /* the caller ran no piece: nothing learned */
    work_find(fn, n, 1)->work_ns = longest_piece_ns * pieces;
}

int mq_team_backoff_for_tests(int on) {
    atomic_store(&backoff_off, !on);
    small_strikes = 0;
    backoff_reset(&team_backoff);
    backoff_reset(&small_backoff);
    return 0;
}

/* TEAM_MIN_WORK_NS, which benchmarks may change (mq_team_min_work_for_tests: an A/B in one process) */
static _Atomic int64_t team_min_work_ns = TEAM_MIN_WORK_NS;

int64_t mq_team_min_work_for_tests(int64_t ns) {
    return ns < 0 ? atomic_load(&team_min_work_ns) : atomic_exchange(&team_min_work_ns, ns);
}

/* 1 if this call may go to torch's team: enough work, last time (or, for a middling call, none
 * seen yet), and not paused after a slow call. */
static int team_wanted(mq_range_fn fn, int64_t n, int threads, int middling) {
    const work_entry *seen = work_find(fn, n, 0);
    if (seen ? seen->work_ns < atomic_load_explicit(&team_min_work_ns, memory_order_relaxed) : !middling) return 0;
    return !backoff_paused(&team_backoff) && mq_omp_team_usable(threads);
}

static void run_on_team(int64_t n, int64_t piece_items, int pieces, int threads, mq_range_fn fn, void *ctx) {
    team_job job = {fn, ctx, n, piece_items, pieces, 0, 0, 0, 0};
    team_caller = 1;
    const int64_t begin = now_ns();
    mq_omp_team_run(team_body, &job, threads);
    team_caller = 0;
    /* waited: for the region to start (workers not yet docked) and, past its own last piece, for the others */
    const int64_t end = now_ns(), waited = (job.caller_start_ns - begin) + (end - job.caller_done_ns);
    atomic_fetch_add_explicit(&team_calls, 1, memory_order_relaxed);
    remember_work(fn, n, job.caller_longest_ns, pieces);
    backoff_note(&team_backoff, waited > TEAM_WAIT_MIN_NS && waited > 2 * job.caller_longest_ns, end);
}

int64_t mq_omp_team_calls(void) { return atomic_load(&team_calls); }

/* Calls whose work went to more than one thread (tests: a kernel's chunk rule
 * that leaves a large job on one thread shows as no change here). */
static _Atomic int64_t split_calls;
int64_t mq_parallel_split_calls(void) { return atomic_load(&split_calls); }

void mq_parallel_watch_forks(void) { mq_omp_team_watch_forks(); }

/* ---- the per-call pthreads fallback -------------------------------------------------------- */

/* One call's work for threads started for it: small pieces from a shared counter, so that the
 * caller does the pieces a helper has not started on (a new thread may wait a scheduler slice for a
 * core on a busy host) and waits only for pieces a helper claimed.  Helpers are detached and hold a
 * reference: one that starts after the call returned finds no piece, touches neither fn nor ctx,
 * and frees the job if it is the last holder. */
typedef struct {
    mq_range_fn fn;
    void *ctx;
    int64_t n, piece_items;
    int pieces;
    atomic_int next;      /* the next piece to claim */
    atomic_uint done;     /* pieces finished (futex word for the caller) */
    atomic_int caller_sleeping;
    atomic_int refs;      /* the caller and each started helper */
} call_job;

static void call_job_release(call_job *job) {
    if (atomic_fetch_sub(&job->refs, 1) == 1) free(job);
}

static void call_job_run_pieces(call_job *job, int is_helper) {
    for (;;) {
        const int piece = atomic_fetch_add(&job->next, 1);
        if (piece >= job->pieces) return;
        const int64_t begin = (int64_t)piece * job->piece_items;
        job->fn(job->ctx, begin, begin + job->piece_items < job->n ? begin + job->piece_items : job->n);
        /* seq_cst pairs with the caller's caller_sleeping store: one of us sees the other */
        const unsigned finished = atomic_fetch_add(&job->done, 1) + 1;
        if (is_helper && finished == (unsigned)job->pieces && atomic_load(&job->caller_sleeping))
            futex_wake(&job->done, 1);
    }
}

static void *call_job_helper(void *arg) {
    call_job *job = arg;
    call_job_run_pieces(job, 1);
    call_job_release(job);
    return NULL;
}

static void run_on_new_threads(int64_t n, int64_t unit, int parts, mq_range_fn fn, void *ctx) {
    call_job *job = malloc(sizeof *job);
    if (!job) {
        fn(ctx, 0, n);
        return;
    }
    const int64_t units = (n + unit - 1) / unit, target = (int64_t)parts * PIECES_PER_THREAD;
    job->fn = fn, job->ctx = ctx, job->n = n;
    job->piece_items = (units + target - 1) / target * unit;
    job->pieces = (int)((n + job->piece_items - 1) / job->piece_items);
    atomic_init(&job->next, 0);
    atomic_init(&job->done, 0);
    atomic_init(&job->caller_sleeping, 0);
    atomic_init(&job->refs, 1);
    pthread_attr_t attr;
    const int detached = pthread_attr_init(&attr) == 0 &&
                         pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
    for (int t = 1; detached && t < parts; t++) {
        pthread_t thread;
        atomic_fetch_add(&job->refs, 1);
        if (pthread_create(&thread, &attr, call_job_helper, job) != 0) {
            atomic_fetch_sub(&job->refs, 1); /* no thread: the caller does its pieces */
            break;
        }
    }
    if (detached) pthread_attr_destroy(&attr);
    call_job_run_pieces(job, 0);
    /* what is left are pieces a helper claimed: spin about a piece's time, then sleep */
    const int64_t spin_until = now_ns() + CALLER_SPIN_MIN_NS;
    for (int i = 0; atomic_load(&job->done) != (unsigned)job->pieces; i++) {
        if ((i & 63) == 63 && now_ns() > spin_until) break;
        cpu_relax();
    }
    for (;;) {
        atomic_store(&job->caller_sleeping, 1);
        const unsigned finished = atomic_load(&job->done);
        if (finished == (unsigned)job->pieces) break;
        futex_wait(&job->done, finished);
    }
    call_job_release(job);
}

/* ---- entry point --------------------------------------------------------------------------- */

enum { BACKEND_POOL, BACKEND_PTHREADS, BACKEND_OMP_TEAM };
static const char *const backend_names[] = {"pool", "pthreads", "omp-team"};
/* "omp-team" by default: on a quiet 2-core host, with torch's default OpenMP wait policy, it ran
 * 4096x4096 at batch 32 / 128 1.0-1.5x / 1.3-1.9x faster than the pool alone, and under load it
 * backs off to the pool (docs/benchmarks.md, "torch's OpenMP team as our threads"). */
static atomic_int backend = BACKEND_OMP_TEAM;

int mq_set_threading_backend(const char *name) {
    for (int b = 0; b < (int)(sizeof backend_names / sizeof *backend_names); b++)
        if (strcmp(name, backend_names[b]) == 0) {
            atomic_store(&backend, b);
            return 0;
        }
    return -1;
}

const char *mq_threading_backend(void) { return backend_names[atomic_load(&backend)]; }

int mq_threads_for_work(double work, double split_from, int nthreads) {
    if (work >= MQ_SPLIT_ALWAYS_MACS) return nthreads;
    /* middling work: pthreads starts threads per call, never worth it for such a call */
    if (work < split_from || nthreads <= 1 || atomic_load(&backend) == BACKEND_PTHREADS ||
        backoff_paused(&small_backoff))
        return 1;
    time_next_split = 1;
    return nthreads;
}

void mq_parallel_for(int64_t n, int64_t min_chunk, int nthreads, mq_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    const int64_t units = (n + min_chunk - 1) / min_chunk; /* pieces are whole multiples of min_chunk */
    const int64_t whole_units = n / min_chunk;              /* a thread gets one whole unit of work at least */
    int parts = nthreads < 1 ? 1 : nthreads > MQ_MAX_THREADS ? MQ_MAX_THREADS : nthreads;
    if (parts > whole_units) parts = whole_units > 1 ? (int)whole_units : 1;
    const int chosen = atomic_load(&backend);
    if (parts > 1 && chosen == BACKEND_PTHREADS) {
        atomic_fetch_add_explicit(&split_calls, 1, memory_order_relaxed);
        run_on_new_threads(n, min_chunk, parts, fn, ctx);
        return;
    }
    if (parts > 1) pthread_once(&fork_handler_once, register_fork_handler);
    if (parts == 1 || inside_pool_thread) {
        fn(ctx, 0, n); /* one thread's worth (a middling call's bf16 copy pass keeps its timing mark), or nested */
        return;
    }
    if (atomic_exchange(&pool.owned, 1)) {
        /* another caller owns the pool: this call runs alone, so its mark goes, lest a later
         * (perhaps large) call on this thread be timed and judged as a middling one */
        time_next_split = 0;
        fn(ctx, 0, n);
        return;
    }
    const int timed = time_next_split;
    time_next_split = 0;
    const int64_t wall_start = timed ? now_ns() : 0, cpu_start = timed ? thread_cpu_ns() : -1;
    if (chosen == BACKEND_OMP_TEAM && team_wanted(fn, n, parts, timed)) {
        const int64_t target = (int64_t)parts * PIECES_PER_THREAD;
        const int64_t piece_items = (units + target - 1) / target * min_chunk;
        atomic_fetch_add_explicit(&split_calls, 1, memory_order_relaxed);
        run_on_team(n, piece_items, (int)((n + piece_items - 1) / piece_items), parts, fn, ctx);
        if (timed) note_split_call(wall_start, cpu_start);
        atomic_store(&pool.owned, 0);
        return;
    }
    const int started_before = pool.started;
    const int helpers = start_helpers(parts - 1);
    if (helpers == 0) {
        fn(ctx, 0, n);
    } else {
        atomic_fetch_add_explicit(&split_calls, 1, memory_order_relaxed);
        const int64_t target = (int64_t)(helpers + 1) * PIECES_PER_THREAD;
        const int64_t piece_items = (units + target - 1) / target * min_chunk;
        const int pieces = (int)((n + piece_items - 1) / piece_items);
        remember_work(fn, n, run_on_pool(n, piece_items, pieces, helpers, fn, ctx), pieces);
        /* a call that started the helpers waited on their start, not on a busy host: not judged */
        if (timed && pool.started == started_before) note_split_call(wall_start, cpu_start);
    }
    atomic_store(&pool.owned, 0);
}
