/* A small service for the stop-delay tests (test_stop_delay.c): it keeps
 * answering requests (a PostgreSQL query and a Redis INCR each) and prints a
 * line per answered request with the monotonic time, so the test can count
 * what was served after it sent SIGTERM.
 *
 *   stopdelay_client serve            SIG_DFL: lastcall's drain ends it
 *   stopdelay_client handler          its own SIGTERM handler: prints
 *                                     "handler T", stops serving, exit(0)
 *   stopdelay_client sleep            one long query (pg_sleep(30)) in flight
 *   stopdelay_client exit_busy        a query in flight on a thread, then
 *                                     exit(0) from main 500 ms after "ready"
 *   stopdelay_client forked           serve in a fork child (the delay's
 *                                     timers are the parent's): prints
 *                                     "child N", reports how the child ended
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <sys/wait.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

static volatile sig_atomic_t stop;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_term(int sig)
{
    (void)sig;
    char line[64];
    int64_t t = mono_ms();
    /* "handler T\n" without stdio. */
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + t % 10);
        t /= 10;
    } while (t);
    int o = 0;
    memcpy(line, "handler ", 8);
    o = 8;
    while (n)
        line[o++] = digits[--n];
    line[o++] = '\n';
    ssize_t w = write(STDOUT_FILENO, line, (size_t)o);
    (void)w;
    stop = 1;
}

static PGconn *pg_open(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        exit(3);
    }
    return c;
}

static void serve(void)
{
    PGconn *pg = pg_open();
    redisContext *r = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (r == NULL || r->err) {
        fprintf(stderr, "redis connect failed\n");
        exit(3);
    }
    printf("ready pid %d\n", (int)getpid());
    for (long n = 1; !stop; n++) {
        char sql[64];
        snprintf(sql, sizeof sql, "select %ld", n);
        PGresult *res = PQexec(pg, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            printf("failed %ld %lld: %s", n, (long long)mono_ms(), PQerrorMessage(pg));
            exit(4);
        }
        PQclear(res);
        redisReply *rep = redisCommand(r, "INCR stopdelay_requests");
        if (rep == NULL) {
            printf("failed %ld %lld: redis\n", n, (long long)mono_ms());
            exit(4);
        }
        freeReplyObject(rep);
        printf("answered %ld %lld\n", n, (long long)mono_ms());
        usleep(50 * 1000);
    }
    printf("stopping %lld\n", (long long)mono_ms());
    /* Connections left open: the exit drain closes them. */
    exit(0);
}

static int busy_started;

static void *run_busy(void *arg)
{
    PGconn *c = arg;
    __atomic_store_n(&busy_started, 1, __ATOMIC_RELEASE);
    PGresult *res = PQexec(c, "select pg_sleep(30)");
    PQclear(res);
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "serve";
    if (strcmp(mode, "serve") == 0) {
        serve();
    } else if (strcmp(mode, "handler") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_term;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGTERM, &sa, NULL);
        serve();
    } else if (strcmp(mode, "sleep") == 0) {
        PGconn *pg = pg_open();
        printf("ready pid %d\n", (int)getpid());
        PGresult *res = PQexec(pg, "select pg_sleep(30)");
        printf("query ended %lld: %s\n", (long long)mono_ms(), PQresStatus(PQresultStatus(res)));
        PQclear(res);
        return 0;
    } else if (strcmp(mode, "exit_busy") == 0) {
        PGconn *pg = pg_open();
        pthread_t t;
        pthread_create(&t, NULL, run_busy, pg);
        pthread_detach(t); /* it is still in its query at exit() */
        while (!__atomic_load_n(&busy_started, __ATOMIC_ACQUIRE))
            usleep(10 * 1000);
        usleep(200 * 1000);
        printf("ready pid %d\n", (int)getpid());
        /* The signal's arrival interrupts a sleep (EINTR): sleep on to 500 ms. */
        int64_t until = mono_ms() + 500;
        while (mono_ms() < until)
            usleep(10 * 1000);
        printf("exiting %lld\n", (long long)mono_ms());
        exit(0);
    } else if (strcmp(mode, "forked") == 0) {
        pid_t child = fork();
        if (child == 0)
            serve();
        printf("child %d\n", (int)child);
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        printf("child ended %s %d\n", WIFSIGNALED(status) ? "signal" : "status",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return 0;
    } else {
        fprintf(stderr, "usage: stopdelay_client serve|handler|sleep|forked|exit_busy\n");
        return 2;
    }
    return 0;
}
