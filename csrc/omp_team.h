/* omp_team.h - running a parallel.c job on torch's own OpenMP team (see omp_team.c).
 * Internal to parallel.c; nothing else calls these. */
#ifndef MQ_OMP_TEAM_H
#define MQ_OMP_TEAM_H

/* Registers the fork handlers (release the team before a fork, mark the child);
 * called once at import, so that a fork before the team is first used is seen too. */
void mq_omp_team_watch_forks(void);

/* 1 when this thread may start an OpenMP region of `threads` threads on the
 * libgomp that torch already loaded: found, in the process that imported us
 * (never a forked child), by this thread, inside no OpenMP region (not even one of one thread), and
 * `threads` is the team's size (so libgomp neither ends nor starts workers). */
int mq_omp_team_usable(int threads);

/* Runs body(data) on `threads` threads of the calling thread's libgomp team
 * (the caller is one of them) and returns when all of them have left it.
 * Only after mq_omp_team_usable() said 1. */
void mq_omp_team_run(void (*body)(void *), void *data, int threads);

#endif
