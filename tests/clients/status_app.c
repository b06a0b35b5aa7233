/* A running program for `lastcall status PID` (test_status.c). Built with -g
 * and without -rdynamic, as lc_leaky: the opening functions are named from
 * debug information.
 *
 *   status_app busy      2 idle PostgreSQL connections, 1 idle in a
 *                        transaction, 1 in flight (pg_sleep on a thread),
 *                        1 failed connect, 2 Redis; then waits for a signal
 *   status_app own       no connection; its own SA_SIGINFO handler for
 *                        SIGRTMAX-7 prints "own VALUE" for each signal
 *   status_app ignore    no connection; SIGRTMAX-7 ignored
 *   status_app idle      no connection, nothing installed
 *   status_app block     no connection; SIGRTMAX-7 blocked (as for a signalfd)
 * Each prints "ready pid N" when set up. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

static int busy_started;
static volatile sig_atomic_t own_calls;
static volatile intptr_t own_values[64];

__attribute__((noinline)) static PGconn *open_idle(void)
{
    PGconn *c = PQconnectdb("");
    PQclear(PQexec(c, "SELECT 1"));
    return c;
}

__attribute__((noinline)) static PGconn *open_in_transaction(void)
{
    PGconn *c = PQconnectdb("");
    PQclear(PQexec(c, "BEGIN"));
    return c;
}

__attribute__((noinline)) static redisContext *open_redis(void)
{
    return redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
}

__attribute__((noinline)) static PGconn *open_failing(void)
{
    return PQconnectdb("host=/nonexistent-lastcall-dir connect_timeout=1");
}

__attribute__((noinline)) static void *run_busy(void *arg)
{
    (void)arg;
    PGconn *c = PQconnectdb("");
    __atomic_store_n(&busy_started, 1, __ATOMIC_RELEASE);
    PQclear(PQexec(c, "SELECT pg_sleep(60)"));
    return NULL;
}

static void own_handler(int sig, siginfo_t *info, void *uctx)
{
    (void)sig;
    (void)uctx;
    int i = own_calls;
    if (i < 64)
        own_values[i] = (intptr_t)info->si_value.sival_ptr;
    own_calls = i + 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "busy";
    int sig = SIGRTMAX - 7;
    if (strcmp(mode, "busy") == 0) {
        /* Loops: one call site each, so the stacks group as 2. */
        PGconn *keep[4];
        redisContext *r[2];
        for (int i = 0; i < 2; i++)
            keep[i] = open_idle();
        keep[2] = open_in_transaction();
        keep[3] = open_failing();
        for (int i = 0; i < 2; i++)
            r[i] = open_redis();
        pthread_t t;
        pthread_create(&t, NULL, run_busy, NULL);
        pthread_detach(t);
        while (!__atomic_load_n(&busy_started, __ATOMIC_ACQUIRE))
            usleep(10 * 1000);
        usleep(300 * 1000); /* the query has gone out */
        printf("ready pid %d\n", (int)getpid());
        for (;;)
            pause();
        (void)keep;
        (void)r;
    } else if (strcmp(mode, "own") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = own_handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigaction(sig, &sa, NULL);
        printf("ready pid %d\n", (int)getpid());
        int printed = 0;
        for (;;) {
            usleep(20 * 1000);
            while (printed < own_calls && printed < 64)
                printf("own %ld\n", (long)own_values[printed++]);
        }
    } else if (strcmp(mode, "ignore") == 0) {
        signal(sig, SIG_IGN);
        printf("ready pid %d\n", (int)getpid());
        for (;;)
            pause();
    } else if (strcmp(mode, "block") == 0) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_BLOCK, &one, NULL);
        printf("ready pid %d\n", (int)getpid());
        for (;;)
            pause();
    } else if (strcmp(mode, "idle") == 0) {
        printf("ready pid %d\n", (int)getpid());
        for (;;)
            pause();
    }
    return 2;
}
