#define _GNU_SOURCE
#include "helper_thread.h"

#include <pthread.h>
#include <signal.h>

#include "glibc_compat.h"

__thread int lc_creating_helper __attribute__((tls_model("initial-exec")));

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
