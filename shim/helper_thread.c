#define _GNU_SOURCE
#include "helper_thread.h"

#include <pthread.h>
#include <signal.h>

__thread int lc_creating_helper __attribute__((tls_model("initial-exec")));

int lc_helper_thread(void *(*fn)(void *), void *arg, size_t stack_size)
{
    /* A new thread inherits the creating thread's mask: block everything for
     * the instant of the creation, then give the caller its own back. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, stack_size);
    pthread_t tid;
    lc_creating_helper = 1;
    int r = pthread_create(&tid, &attr, fn, arg);
    lc_creating_helper = 0;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}
