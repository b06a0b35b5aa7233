/* One thread switches SIGTERM's handler between two functions of the
 * program, one taking siginfo (SA_SIGINFO) and one not, as fast as it can;
 * another sends the process SIGTERM as fast as it can. Every delivery must
 * call one of the two with the calling convention it was installed with:
 * lastcall's handler copies the program's disposition while the other
 * thread rewrites it. Prints "calls A B" and exits 0; a handler that finds
 * itself called wrongly exits 3.
 *
 *   flip_handlers MILLISECONDS */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Atomics: handlers run on both threads (ThreadSanitizer checks this
 * program too, with and without lastcall). */
static long calls_a, calls_b;
static int stop;

static void with_info(int sig, siginfo_t *info, void *uctx)
{
    if (sig != SIGTERM || info == NULL || info->si_signo != SIGTERM || uctx == NULL)
        _exit(3);
    __atomic_add_fetch(&calls_a, 1, __ATOMIC_RELAXED);
}

static void without_info(int sig)
{
    if (sig != SIGTERM)
        _exit(3);
    __atomic_add_fetch(&calls_b, 1, __ATOMIC_RELAXED);
}

static void *sender(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE))
        kill(getpid(), SIGTERM);
    return NULL;
}

int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 1000;
    struct sigaction a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.sa_sigaction = with_info;
    a.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaddset(&a.sa_mask, SIGUSR1);
    b.sa_handler = without_info;
    b.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &a, NULL);
    pthread_t t;
    pthread_create(&t, NULL, sender, NULL);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0;; i++) {
        sigaction(SIGTERM, i % 2 ? &a : &b, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 >= ms)
            break;
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    printf("calls %ld %ld\n", __atomic_load_n(&calls_a, __ATOMIC_RELAXED),
           __atomic_load_n(&calls_b, __ATOMIC_RELAXED));
    return 0;
}
