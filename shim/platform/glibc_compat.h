/* What glibc added after 2.31, the oldest glibc lastcall supports (Debian 11,
 * Ubuntu 20.04), reached so that one binary built on 2.31 loads on every
 * glibc from 2.31 on and still uses the newer feature where it is there.
 *
 * The floor build (tests/platforms/) is made against glibc 2.31's headers and
 * libraries, where these do not exist: they are weak, unversioned references
 * then. On glibc 2.32+ the loader binds such a reference to the one (default)
 * version the library defines; on 2.31 it stays NULL and the fallback runs.
 * A build against a newer glibc binds them as usual (with their versions). */
#ifndef LC_GLIBC_COMPAT_H
#define LC_GLIBC_COMPAT_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "core/upcalls.h"

#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h> /* glibc 2.32 */
#endif
#endif

/* Declared again (weak) whether or not the header above declared it. */
extern char __libc_single_threaded __attribute__((weak));

/* Whether the process has only ever had one thread (glibc's
 * __libc_single_threaded). Without it (glibc 2.31), whether it has one thread
 * now: /proc/self/task has "." and ".." plus one link per thread; anything
 * unknown counts as "not single-threaded", the safe answer. */
static inline int lc_libc_single_threaded(void)
{
    if (&__libc_single_threaded != NULL)
        return __libc_single_threaded;
    struct stat st;
    return stat("/proc/self/task", &st) == 0 && st.st_nlink == 3;
}

#if !defined(__GLIBC__) || __GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 32)
/* Built against a glibc older than 2.32: pthread_attr_setsigmask_np where the
 * running glibc has it, else ENOSYS (the caller then blocks signals around
 * pthread_create instead). */
extern int pthread_attr_setsigmask_np(pthread_attr_t *attr, const sigset_t *sigmask)
    __attribute__((weak));
static inline int lc_pthread_attr_setsigmask_np(pthread_attr_t *attr, const sigset_t *mask)
{
    if (pthread_attr_setsigmask_np == NULL)
        return ENOSYS;
    return pthread_attr_setsigmask_np(attr, mask);
}

/* Without it (glibc 2.31) a helper thread must inherit its blocked mask from
 * the creating thread, which blocking everything would make deaf to the
 * kernel's deadline timer while pthread_create is stuck (in the allocator: a
 * drain stuck for good then never ended). So the creating thread keeps the
 * deadline signal open, and the new thread blocks it as its first act. The
 * one gap left: a process-directed deadline signal that lands in the new
 * thread during those first instructions runs lastcall's handler there.
 * Returns pthread_create's result, or -1 when the hand-over cannot be
 * allocated (the caller then blocks everything, as before). */
struct lc_masked_start {
    void *(*fn)(void *);
    void *arg;
};

static inline void *lc_masked_start(void *p)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    struct lc_masked_start s = *(struct lc_masked_start *)p;
    free(p);
    return s.fn(s.arg);
}

static inline int lc_pthread_create_deadline_open(pthread_t *tid, const pthread_attr_t *attr,
                                                  void *(*fn)(void *), void *arg)
{
    struct lc_masked_start *s = malloc(sizeof *s);
    if (s == NULL)
        return -1;
    s->fn = fn;
    s->arg = arg;
    sigset_t most, old;
    sigfillset(&most);
    int deadline_sig = lc_up.deadline_signal();
    if (deadline_sig > 0)
        sigdelset(&most, deadline_sig);
    pthread_sigmask(SIG_BLOCK, &most, &old);
    int r = pthread_create(tid, attr, lc_masked_start, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        free(s);
    return r;
}
#endif

#endif
