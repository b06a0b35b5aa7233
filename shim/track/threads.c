/* Threads: lastcall's own (helpers), and the wrapper that sees the
 * program's start. */
#define _GNU_SOURCE
#include "track/threads.h"

#include <errno.h>
#include <stdlib.h>

#include "core/compiler.h"
#include "core/upcalls.h"
#include "platform/glibc_compat.h"
#include "platform/symbols.h"
#include "track/inflight.h"

#include <pthread.h>
#include <signal.h>

/* Set while this thread creates one of ours: the pthread_create wrapper
 * then knows the thread is not the program's. */
static __thread int lc_creating_helper __attribute__((tls_model("initial-exec")));

#if !defined(__GLIBC__) || __GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 32)
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

static void *lc_masked_start(void *p)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    struct lc_masked_start s = *(struct lc_masked_start *)p;
    free(p);
    return s.fn(s.arg);
}

static int lc_pthread_create_deadline_open(pthread_t *tid, const pthread_attr_t *attr,
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

int lc_helper_thread(void *(*fn)(void *), void *arg, size_t stack_size)
{
    sigset_t all;
    sigfillset(&all);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, stack_size);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
    /* The new thread starts with every signal blocked, and the creating
     * thread's own mask stays as it is: the kernel's deadline timer
     * (deadline.h) must reach it even if creating the thread blocks (an
     * allocator, a lock). */
    int masked = pthread_attr_setsigmask_np(&attr, &all) == 0;
#else
    int masked = lc_pthread_attr_setsigmask_np(&attr, &all) == 0; /* glibc_compat.h */
    if (!masked) {
        pthread_t early;
        lc_creating_helper = 1;
        int r = lc_pthread_create_deadline_open(&early, &attr, fn, arg);
        lc_creating_helper = 0;
        if (r != -1) {
            pthread_attr_destroy(&attr);
            return r;
        }
    }
#endif
    /* Otherwise a new thread inherits the creating thread's mask: block
     * everything for the instant of the creation, then give it back. */
    sigset_t old;
    if (!masked)
        pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t tid;
    lc_creating_helper = 1;
    int r = pthread_create(&tid, &attr, fn, arg);
    lc_creating_helper = 0;
    pthread_attr_destroy(&attr);
    if (!masked)
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}

/* The program's threads: every thread's slot is registered as it starts
 * (inflight.h). */
#ifndef __SANITIZE_THREAD__

struct start {
    void *(*fn)(void *);
    void *arg;
};

static void thread_cleanup(void *unused)
{
    (void)unused;
    inflight_unregister_thread();
}

static void *thread_trampoline(void *p)
{
    struct start s = *(struct start *)p;
    free(p);
    inflight_register_thread();
    void *ret;
    /* Runs on return and on pthread_exit/cancel alike: the slot is gone with
     * the thread, so it must leave the list first. */
    pthread_cleanup_push(thread_cleanup, NULL);
    ret = s.fn(s.arg);
    pthread_cleanup_pop(1);
    return ret;
}

LC_EXPORT int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                             void *(*fn)(void *), void *arg)
{
    static void *cache;
    int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))sym_cached(
            &cache, LC_LIB_LIBC, "pthread_create", (const void *)&pthread_create);
    if (real == NULL)
        return ENOSYS;
    if (!lc_creating_helper)
        lc_up.on_program_thread();
    struct start *s = malloc(sizeof *s);
    if (s == NULL)
        return real(thread, attr, fn, arg); /* untracked, but the program goes on */
    s->fn = fn;
    s->arg = arg;
    int r = real(thread, attr, thread_trampoline, s);
    if (r != 0)
        free(s);
    return r;
}
#endif
