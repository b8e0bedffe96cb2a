/* omp_team.c - borrowing torch's OpenMP team for parallel.c's jobs.
 *
 * Why: with libgomp's default wait policy, the worker thread of torch's team
 * spins for milliseconds after each torch op, on the core our pool's helper
 * wants; the helper then barely runs and a 2-thread call runs at about
 * 1-thread speed (docs/benchmarks.md, "OMP_WAIT_POLICY").  That spinning
 * worker is exactly the thread that can start our pieces at once, so when it
 * is there, parallel.c hands it the job (it takes pieces from the job's
 * shared counter, so a late worker holds little).
 *
 *  - Never loads or links libgomp: only a libgomp that is already in the
 *    process (torch's) is used, opened with RTLD_NOLOAD: the one the global
 *    scope gives GOMP_parallel (torch loads its libgomp there, and its own
 *    calls bind to it), not the first of several (another package's vendored
 *    libgomp, loaded first, is a second team with its own thread count).
 *    GOMP_parallel is libgomp's documented entry for "#pragma omp parallel"
 *    (its ABI since GCC 4.9).
 *  - fork(): a libgomp team cannot be used in a child (its next region waits
 *    for workers that do not exist there; torch's own ops hang too, with or
 *    without us).  Before every fork of a process that imported us (whatever
 *    the backend, in children too) the forking thread's team is released with
 *    omp_pause_resource_all (OpenMP 5.0; torch's next region starts it
 *    again), so a child's OpenMP regions, ours or torch's, start a fresh team;
 *    and the child itself never uses the team from here (pid check): it runs
 *    on our pool.
 */
#define _GNU_SOURCE /* dl_iterate_phdr, RTLD_NOLOAD */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "omp_team.h"

#define OMP_PAUSE_HARD 2 /* omp_pause_resource_t's omp_pause_hard (OpenMP 5.0) */

typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
typedef int (*omp_get_level_fn)(void);
typedef int (*omp_pause_resource_all_fn)(int kind);
typedef int (*omp_get_max_threads_fn)(void);

static struct {
    gomp_parallel_fn parallel;
    omp_get_level_fn level; /* regions around the caller, active or not: omp_in_parallel says 0 inside a
                             * region of one thread, where ours would be a nested team (new threads each call) */
    omp_pause_resource_all_fn pause_all;
    omp_get_max_threads_fn max_threads;
    atomic_int pid;  /* the process that found libgomp; 0: none found */
} team;

/* Set in every forked child of a process that imported us (and inherited by its
 * children): a child must never run a region on the team copied from its parent,
 * whether or not the parent had found the team before the fork. */
static atomic_int forked_child;
static int home_pid;

/* Set in the thread that found the team: other threads would get (and start) a team of
 * their own.  Thread-local, not a pthread_t: a thread started after the finder exited
 * often gets its pthread_t back (glibc reuses the stack), and with it a team of its own. */
static _Thread_local int found_team_here;

static int is_libgomp(const char *path) {
    const char *slash = path ? strrchr(path, '/') : NULL, *base = slash ? slash + 1 : path;
    return base && strncmp(base, "libgomp", 7) == 0 && strstr(base, ".so");
}

/* dl_iterate_phdr callback: counts the loaded objects named libgomp*.so*, keeping the last path */
static int count_libgomps(struct dl_phdr_info *info, size_t size, void *out) {
    (void)size;
    if (!is_libgomp(info->dlpi_name)) return 0;
    struct { const char *path; int count; } *found = out;
    found->path = info->dlpi_name;
    found->count++;
    return 0;
}

/* The path of torch's libgomp: the object the global scope resolves GOMP_parallel to (what
 * torch's calls bind to; an Intel or LLVM OpenMP exporting the same name is not libgomp),
 * else the only libgomp loaded; NULL if none or several. */
static const char *torch_libgomp(void) {
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "GOMP_parallel");
    if (sym) return dladdr(sym, &info) && is_libgomp(info.dli_fname) ? info.dli_fname : NULL;
    struct { const char *path; int count; } found = {NULL, 0};
    dl_iterate_phdr(count_libgomps, &found);
    return found.count == 1 ? found.path : NULL;
}

/* torch's libgomp as the fork handler sees it: looked up at each fork until found
 * (torch may be imported after us, or a fork may come before any OpenMP region) */
static struct {
    _Atomic(omp_get_level_fn) level;
    _Atomic(omp_pause_resource_all_fn) pause_all; /* set last: threads may fork at once */
} fork_pause;

static void find_fork_pause(void) {
    const char *path = torch_libgomp();
    void *lib = path ? dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD) : NULL;
    if (!lib) return;
    omp_get_level_fn level = (omp_get_level_fn)dlsym(lib, "omp_get_level");
    omp_pause_resource_all_fn pause_all = (omp_pause_resource_all_fn)dlsym(lib, "omp_pause_resource_all");
    if (!level || !pause_all) return; /* lib stays open */
    atomic_store(&fork_pause.level, level);
    atomic_store(&fork_pause.pause_all, pause_all);
}

/* Releases the forking thread's team (torch's, whether or not a job of ours ran on
 * it): inside a region (level > 0) the team is in use and libgomp refuses anyway. */
static void release_team_before_fork(void) {
    if (!atomic_load(&fork_pause.pause_all)) find_fork_pause();
    omp_pause_resource_all_fn pause_all = atomic_load(&fork_pause.pause_all);
    if (pause_all && atomic_load(&fork_pause.level)() == 0) pause_all(OMP_PAUSE_HARD);
}

static void forget_team_in_child(void) {
    atomic_store(&forked_child, 1);
    atomic_store(&team.pid, 0);
}

void mq_omp_team_watch_forks(void) {
    static int registered;
    if (registered) return; /* called once, at import, with the GIL held */
    home_pid = getpid();
    registered = pthread_atfork(release_team_before_fork, NULL, forget_team_in_child) == 0;
}

static void find_team(void) {
    const char *path = torch_libgomp();
    void *lib = path ? dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD) : NULL;
    if (!lib) return;
    team.parallel = (gomp_parallel_fn)dlsym(lib, "GOMP_parallel");
    team.level = (omp_get_level_fn)dlsym(lib, "omp_get_level");
    team.pause_all = (omp_pause_resource_all_fn)dlsym(lib, "omp_pause_resource_all");
    team.max_threads = (omp_get_max_threads_fn)dlsym(lib, "omp_get_max_threads");
    /* Without the pause, a team we started could hang a forked child: then not at all. */
    if (!team.parallel || !team.level || !team.pause_all || !team.max_threads) return; /* lib stays open */
    /* the fork handlers come from mq_omp_team_watch_forks, registered at import: without them, no team */
    if (atomic_load(&forked_child) || home_pid != getpid()) return;
    found_team_here = 1;
    atomic_store(&team.pid, getpid());
}

int mq_omp_team_usable(int threads) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, find_team);
    const int pid = atomic_load(&team.pid);
    /* Only the team's own size: a region of fewer threads makes libgomp end the
     * extra workers, and torch's next op then waits for new ones to start. */
    return pid != 0 && pid == getpid() && !atomic_load(&forked_child) && found_team_here && team.level() == 0 &&
           team.max_threads() == threads;
}

void mq_omp_team_run(void (*body)(void *), void *data, int threads) { team.parallel(body, data, (unsigned)threads, 0); }
