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

#endif

#endif
