/* static_program_split.c - a static program call as one job of pieces for the threads: whole
 * images, and for the images that would leave threads idle (fewer than the threads: batch 1 on
 * 2 threads) every node split between them.
 *
 * A node of a split image is a step of a few pieces (blocks of a conv's output rows, ranges of
 * an add; a small node is one piece, see plan_step); a whole image is a step of one piece.  The
 * pieces are numbered in program order and one mq_parallel_for hands them out.  A thread runs a
 * piece once it claimed it (one flag per piece) and the steps that wrote its inputs are done;
 * while such a step is not done it runs that step's unclaimed pieces itself, and spins only for
 * pieces another thread is running.  After its own pieces it takes any piece nobody started.
 * So the pool's property holds in full: nobody waits for a thread that has not started, and
 * nobody for more than the one piece a thread is running (the pool waits for the ranges it
 * handed out: a late or descheduled helper's range is taken over piece by piece); a caller
 * alone runs every piece; and no order in which the pool hands out the pieces can deadlock (a
 * thread only waits for steps before the one it is in, and runs what is unclaimed there).
 * Why not one mq_parallel_for per node: the helper, asleep after each short node, was woken
 * per node (a futex wake: tens of microseconds on a busy host) to arrive when a 2-10 us node
 * was over; here it is woken once per call and goes from node to node with the caller.
 * Results are bit-identical: each piece computes its outputs exactly as the whole node does. */
#define _GNU_SOURCE /* sched_yield, clock_gettime under -std=c11 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mq.h"
#include "static_int8.h"
#include "static_program_run.h"

#define PIECE_MIN_MACS ((int64_t)1 << 15)   /* a conv piece: less is not worth a hand-over */
#define PIECE_MIN_VALUES ((int64_t)1 << 12) /* an add piece (values) */
#define PIECES_PER_THREAD 3                 /* pieces of a large node per thread: slack for a late one */

typedef struct {
    _Alignas(64) atomic_llong done; /* pieces finished (its own cache line: the threads' meeting point) */
    int64_t first, items;           /* its pieces: [first, first + items) of the job's numbering */
    int64_t image;                  /* the image (batch index) */
    int node, slot;                 /* node (-1: the whole image), and the image's scratch slot */
    int split;                      /* 1: the pieces of work; 0: one piece, the whole node */
    mq_static_work work;
} team_step;

typedef struct {
    const mq_sp_run_ctx *c;
    team_step *steps;
    int nsteps;
    const int *producer; /* value -> the node that writes it */
    int8_t *scratch;     /* one region per image of the job */
    atomic_char *claimed; /* per piece: taken by a thread */
    atomic_int failed;
    int64_t caller_ns, caller_pieces; /* the calling thread's time in pieces (waits excluded), and pieces run */
} team_job;

static _Thread_local const team_job *called_job; /* the job this thread called (it alone writes caller_*) */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static _Thread_local int64_t waited_ns;      /* this thread's spins in wait_step_done */
static _Thread_local int8_t *image_scratch; /* this thread's scratch for whole images (in team_pieces) */

static void wait_step_done(team_job *t, int s);

/* Waits for the steps that write the inputs of step s (same image). */
static void wait_inputs(team_job *t, int s) {
    const team_step *st = &t->steps[s];
    const mq_sp_node *nd = &t->c->p->nodes[st->node < 0 ? 0 : st->node];
    const int first = s - st->node; /* node 0 of this image */
    if (st->node < 0 || nd->kind == MQ_SP_QUANTIZE) return; /* a whole image, or its first node */
    wait_step_done(t, first + t->producer[nd->in0]);
    if ((nd->kind == MQ_SP_ADD || nd->kind == MQ_SP_BCAST_ADD) && nd->in1 >= 0)
        wait_step_done(t, first + t->producer[nd->in1]);
    if (nd->kind == MQ_SP_CAT)
        for (int64_t j = 0; j < nd->n; j++) wait_step_done(t, first + t->producer[nd->cat_in[j]]);
    if (nd->kind == MQ_SP_BCAST_ADD) /* one expansion buffer per image: after the image's earlier broadcast adds */
        for (int j = st->node - 1; j >= 0; j--)
            if (t->c->p->nodes[j].kind == MQ_SP_BCAST_ADD) {
                wait_step_done(t, first + j);
                break;
            }
}

/* Piece k of step s, if no thread took it yet: after its inputs, run. */
static void run_piece(team_job *t, int s, int64_t k) {
    team_step *st = &t->steps[s];
    atomic_char *flag = &t->claimed[st->first + k];
    char free_flag = 0;
    if (atomic_load_explicit(flag, memory_order_relaxed) ||
        !atomic_compare_exchange_strong_explicit(flag, &free_flag, 1, memory_order_relaxed, memory_order_relaxed))
        return;
    wait_inputs(t, s);
    if (st->node < 0) { /* a whole image, in this thread's scratch */
        if (!image_scratch) image_scratch = malloc(mq_alloc_bytes(t->c->scratch_bytes, 1, 64));
        if (!image_scratch || mq_sp_run_image(t->c, st->image, image_scratch) < 0)
            atomic_store_explicit(&t->failed, 1, memory_order_relaxed);
    } else if (st->split) {
        st->work.run(st->work.ctx, k, k + 1);
    } else if (mq_sp_run_node(t->c, st->image, st->node, t->scratch + st->slot * t->c->scratch_bytes, 1) < 0) {
        atomic_store_explicit(&t->failed, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&st->done, 1, memory_order_release);
    if (called_job == t) t->caller_pieces++;
}

/* Until step s is done: its pieces nobody took, here; then spin for those other threads run. */
static void wait_step_done(team_job *t, int s) {
    team_step *st = &t->steps[s];
    if (atomic_load_explicit(&st->done, memory_order_acquire) >= st->items) return;
    for (int64_t k = 0; k < st->items; k++) run_piece(t, s, k);
    if (atomic_load_explicit(&st->done, memory_order_acquire) >= st->items) return;
    const int64_t start = now_ns();
    for (int64_t spins = 0; atomic_load_explicit(&st->done, memory_order_acquire) < st->items; spins++) {
        if (spins > 2000)
            sched_yield(); /* the thread running its last piece was descheduled: let it have a core */
        else
            cpu_pause();
    }
    waited_ns += now_ns() - start;
}

/* Pieces [begin, end) of the job (those nobody took yet), in order. */
static void team_pieces(void *vjob, int64_t begin, int64_t end) {
    team_job *t = vjob;
    const int64_t start = called_job == t ? now_ns() : 0;
    waited_ns = 0;
    int lo = 0, hi = t->nsteps - 1; /* the step of piece `begin` */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (t->steps[mid].first <= begin) lo = mid;
        else hi = mid - 1;
    }
    for (int s = lo; s < t->nsteps && t->steps[s].first < end; s++) {
        const team_step *st = &t->steps[s];
        const int64_t p0 = begin > st->first ? begin - st->first : 0;
        const int64_t p1 = end < st->first + st->items ? end - st->first : st->items;
        for (int64_t k = p0; k < p1; k++) run_piece(t, s, k);
    }
    /* then any piece not started yet, whoever the pool gave it to: the pool waits for the pieces it
     * handed out, and this way none of them holds more than the one piece its thread is running */
    for (int s = 0; s < t->nsteps; s++)
        if (atomic_load_explicit(&t->steps[s].done, memory_order_relaxed) < t->steps[s].items)
            for (int64_t k = 0; k < t->steps[s].items; k++) run_piece(t, s, k);
    free(image_scratch);
    image_scratch = NULL;
    if (called_job == t) t->caller_ns += now_ns() - start - waited_ns;
}

/* Backing off to one thread: a split call that took more than SLOWER_THAN_ALONE of what the caller
 * alone would have needed (its own time per piece times the pieces) gained too little: the helper
 * came late or was descheduled (other processes, or another pool's spinning threads, hold the
 * cores), and the caller waited for it.  The next calls then run on the caller alone, twice as many after
 * each such call in a row (up to BACKOFF_MOST), fewer after each call that went well; the bits
 * are the same either way.  Per process: the cores' load is. */
#define SLOWER_THAN_ALONE 0.8
#define BACKOFF_FIRST 4
#define BACKOFF_MOST 256
static atomic_int split_skip;    /* calls left to run on one thread */
static atomic_int split_backoff; /* calls to skip after the next call that waited */

int mq_sp_split_backing_off(void) {
    int left = atomic_load_explicit(&split_skip, memory_order_relaxed);
    while (left > 0)
        if (atomic_compare_exchange_weak_explicit(&split_skip, &left, left - 1, memory_order_relaxed,
                                                  memory_order_relaxed))
            return 1;
    return 0;
}

static void split_went(int waited) {
    const int b = atomic_load_explicit(&split_backoff, memory_order_relaxed);
    if (waited) {
        const int next = b < BACKOFF_FIRST ? BACKOFF_FIRST : b >= BACKOFF_MOST ? BACKOFF_MOST : 2 * b;
        atomic_store_explicit(&split_backoff, next, memory_order_relaxed);
        atomic_store_explicit(&split_skip, next, memory_order_relaxed);
    } else {
        atomic_store_explicit(&split_backoff, b / 2, memory_order_relaxed);
    }
}

/* Pieces for a node of `work` units, each at least `min_work`, a few per thread; `fine`
 * (tests): as many as the node allows. */
static int64_t pieces_for(int64_t work, int64_t min_work, int nthreads, int fine) {
    if (fine) return work;
    const int64_t most = (int64_t)nthreads * PIECES_PER_THREAD, by_work = work / min_work;
    return by_work < 1 ? 1 : by_work > most ? most : by_work;
}

/* Step s = node i of image b: its pieces (0 when the node is one piece), or -1 out of memory. */
static int plan_step(const mq_sp_run_ctx *c, team_step *st, int8_t *scratch, int nthreads, int fine) {
    const mq_sp_node *nd = &c->p->nodes[st->node];
    const mq_sp_shape o = c->shapes[nd->out];
    st->split = 0;
    st->items = 1;
    if (nd->kind != MQ_SP_CONV && nd->kind != MQ_SP_DEPTHWISE && nd->kind != MQ_SP_ADD) return 0;
    const mq_sp_shape in = c->shapes[nd->in0];
    const int8_t *src = scratch + c->offsets[nd->in0];
    int8_t *yq = nd->out_float ? NULL : scratch + c->offsets[nd->out];
    float *yf = nd->out_float ? c->out + st->image * c->out_elems : NULL;
    int ready;
    if (nd->kind == MQ_SP_ADD) {
        const int64_t values = o.h * o.w * o.c, pieces = pieces_for(values / 64 + 1, PIECE_MIN_VALUES / 64, nthreads, fine);
        if (pieces < 2) return 0;
        ready = mq_add_static_work(src, nd->a_scale, nd->x_zp, scratch + c->offsets[nd->in1], nd->b_scale, nd->b_zp,
                                   values, nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->out_zp, yq, yf, pieces,
                                   &st->work);
    } else {
        const int64_t taps = nd->kh * nd->kw * (nd->kind == MQ_SP_CONV ? in.c * o.c : o.c);
        const int64_t pieces = fine ? o.h : pieces_for(o.h * o.w * taps, PIECE_MIN_MACS, nthreads, 0);
        if (pieces < 2 || o.h < 2) return 0;
        if (nd->kind == MQ_SP_CONV)
            ready = mq_conv2d_static_work(src, in.c, in.h, in.w, nd->kh, nd->kw, nd->sh, nd->sw, nd->ph, nd->pw,
                                          nd->dh, nd->dw, nd->packed, nd->w_sum, nd->x_w_scale, nd->bias, nd->n,
                                          nd->act_lo, nd->act_hi, nd->inv_out_scale, nd->x_zp, nd->out_zp, yq, yf,
                                          pieces, &st->work);
        else
            ready = mq_depthwise_static_work(src, in.c, in.h, in.w, nd->kh, nd->kw, nd->sh, nd->sw, nd->ph, nd->pw,
                                             nd->dh, nd->dw, nd->packed, nd->x_w_scale, nd->bias, nd->act_lo,
                                             nd->act_hi, nd->inv_out_scale, nd->x_zp, nd->out_zp, yq, yf, pieces,
                                             &st->work);
    }
    if (ready <= 0) return ready;
    st->split = 1;
    st->items = st->work.items;
    return 0;
}

int mq_sp_run_split(const mq_sp_run_ctx *c, int64_t whole, int64_t batch, int nthreads, int fine) {
    const mq_sp_program *p = c->p;
    const int64_t count = batch - whole; /* images split node by node */
    const int nsteps = (int)(whole + count * p->count);
    team_step *steps = aligned_alloc(64, mq_alloc_bytes(nsteps, sizeof(team_step), 64));
    int *producer = malloc(mq_alloc_bytes(p->values > 0 ? p->values : 1, sizeof(int), 1));
    int8_t *scratch = malloc(mq_alloc_bytes(count > 0 ? count : 1, c->scratch_bytes, 64));
    atomic_char *claimed = NULL;
    int status = 0, planned = 0;
    if (!steps || !producer || !scratch) {
        status = -1;
        goto done;
    }
    for (int i = 0; i < p->count; i++) producer[p->nodes[i].out] = i;
    int64_t pieces = 0;
    for (; planned < nsteps; planned++) {
        team_step *st = &steps[planned];
        memset(st, 0, sizeof *st);
        if (planned < whole) { /* a whole image: one piece */
            st->image = planned;
            st->node = -1;
            st->items = 1;
        } else {
            st->slot = (int)((planned - whole) / p->count);
            st->image = whole + st->slot;
            st->node = (int)((planned - whole) % p->count);
            if (plan_step(c, st, scratch + st->slot * c->scratch_bytes, nthreads, fine) < 0) {
                status = -1;
                goto done;
            }
        }
        st->first = pieces;
        pieces += st->items;
    }
    claimed = calloc((size_t)pieces, sizeof *claimed);
    if (!claimed) {
        status = -1;
        goto done;
    }
    team_job job = {c, steps, nsteps, producer, scratch, claimed, 0, 0, 0};
    const int64_t start = now_ns();
    called_job = &job;
    mq_parallel_for(pieces, 1, nthreads, team_pieces, &job);
    called_job = NULL;
    /* (pieces of one kind: the caller's time per piece is an estimate; a call where the
     * helpers took every piece says nothing about the caller alone, so it does not count) */
    if (!fine && whole == 0 && job.caller_pieces) {
        const double alone = (double)job.caller_ns * (double)pieces / (double)job.caller_pieces;
        split_went((double)(now_ns() - start) > SLOWER_THAN_ALONE * alone);
    }
    if (atomic_load(&job.failed)) status = -1;
done:
    for (int s = 0; s < planned; s++)
        if (steps[s].split) {
            if (*steps[s].work.failed) status = -1;
            mq_static_work_free(&steps[s].work);
        }
    free(steps);
    free(producer);
    free(scratch);
    free(claimed);
    return status;
}

