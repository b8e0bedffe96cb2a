/* omp_team.h - running a parallel.c job on torch's own OpenMP team (see omp_team.c).
 * Internal to parallel.c; nothing else calls these. */
#ifndef MQ_OMP_TEAM_H
#define MQ_OMP_TEAM_H

/* 1 when this thread may start an OpenMP region on the libgomp that torch
 * already loaded: found, in the process that found it (not a forked child),
 * and not inside an OpenMP region. */
int mq_omp_team_usable(void);

/* Runs body(data) on `threads` threads of the calling thread's libgomp team
 * (the caller is one of them) and returns when all of them have left it.
 * Only after mq_omp_team_usable() said 1. */
void mq_omp_team_run(void (*body)(void *), void *data, int threads);

#endif
