/* static_program_run.h - what static_program.c (shapes, whole images) and
 * static_program_split.c (one image's nodes split between the threads) share while
 * running a program: the call's context and one node of one image. */
#ifndef MQ_STATIC_PROGRAM_RUN_H
#define MQ_STATIC_PROGRAM_RUN_H

#include <stdint.h>

#include "static_program.h"

typedef struct {
    const mq_sp_program *p;
    const mq_sp_shape *shapes;
    const float *x;
    int64_t in_elems, out_elems, scratch_bytes; /* scratch_bytes: one image's values, a multiple of 64 */
    const int64_t *offsets;                     /* value -> its region in an image's scratch */
    int64_t expand_offset, expand_stride;       /* bcast add: its two expanded operands in the scratch */
    float *out;
    int inner_threads;
    int failed;
} mq_sp_run_ctx;

/* Node i of image b (its values in scratch) on t threads; 0, or -1 out of memory. */
int mq_sp_run_node(const mq_sp_run_ctx *c, int64_t b, int i, int8_t *scratch, int t);

/* Every node of image b (scratch: c->scratch_bytes) on c->inner_threads; 0, or -1 out of memory. */
int mq_sp_run_image(const mq_sp_run_ctx *c, int64_t b, int8_t *scratch);

/* The batch on nthreads threads: images [0, whole) whole, each node of images [whole, batch)
 * split between the threads (fine: each node in as many pieces as it allows); 0, or -1 out of
 * memory. */
int mq_sp_run_split(const mq_sp_run_ctx *c, int64_t whole, int64_t batch, int nthreads, int fine);

/* 1 while recent split calls gained too little (the rest of this call then runs on one thread). */
int mq_sp_split_backing_off(void);

#endif
