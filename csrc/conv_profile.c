/* conv_profile.c - the dynamic int8 conv's step timings (conv_profile.h). */
#define _GNU_SOURCE /* clock_gettime under -std=c11 */
#include "conv_profile.h"

#include <time.h>

int mq_conv_profile_on = 0;
static int64_t step_ns[MQ_CONV_STEPS], calls, direct_calls;

int64_t mq_conv_profile_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void mq_conv_profile_stop(mq_conv_step step, int64_t start) {
    if (start) __atomic_fetch_add(&step_ns[step], mq_conv_profile_clock() - start, __ATOMIC_RELAXED);
}

void mq_conv_profile_count_call(int direct) {
    if (!__atomic_load_n(&mq_conv_profile_on, __ATOMIC_RELAXED)) return;
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    if (direct) __atomic_fetch_add(&direct_calls, 1, __ATOMIC_RELAXED);
}

void mq_conv_profile_take(int64_t out[MQ_CONV_STEPS], int64_t *n_calls, int64_t *n_direct) {
    for (int s = 0; s < MQ_CONV_STEPS; s++) out[s] = __atomic_exchange_n(&step_ns[s], 0, __ATOMIC_RELAXED);
    *n_calls = __atomic_exchange_n(&calls, 0, __ATOMIC_RELAXED);
    *n_direct = __atomic_exchange_n(&direct_calls, 0, __ATOMIC_RELAXED);
}
