/* A leaky program, built with -g and without -rdynamic. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

__attribute__((noinline)) static PGconn *open_pg_leak(void)
{
    PGconn *c = PQconnectdb("");
    PQclear(PQexec(c, "SELECT 1"));
    return c;
}

__attribute__((noinline)) static redisContext *open_redis_leak(void)
{
    return redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
}

/* Passwords in every form libpq takes; none may reach a report or a log. */
__attribute__((noinline)) static void open_with_passwords(void)
{
    PQconnectdb("password=s3cr3t-conninfo");
    char uri[512];
    snprintf(uri, sizeof uri, "postgresql://%s:s3cr3t-uri@/%s?host=%s&port=%s", getenv("PGUSER"),
             getenv("PGDATABASE"), getenv("PGHOST"), getenv("PGPORT"));
    PQconnectdb(uri);
    const char *keys[] = {"password", "dbname", NULL};
    const char *vals[] = {"s3cr3t-params", getenv("PGDATABASE"), NULL};
    PQconnectdbParams(keys, vals, 0);
    PQsetdbLogin(NULL, NULL, NULL, NULL, NULL, NULL, "s3cr3t-setdb");
}

__attribute__((noinline)) static void failed_connect(void)
{
    PQconnectdb("host=/nonexistent-lastcall-dir connect_timeout=1");
}

static void *leak_in_thread(void *arg)
{
    (void)arg;
    open_pg_leak();
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "leak";
    if (strcmp(mode, "leak") == 0) {
        for (int i = 0; i < 5; i++)
            open_pg_leak();
        for (int i = 0; i < 3; i++)
            open_redis_leak();
        open_with_passwords();
        failed_connect();
        PQfinish(open_pg_leak()); /* one closed properly */
        exit(0);
    }
    if (strcmp(mode, "thread") == 0) {
        /* Opened from a thread's start routine. */
        pthread_t t;
        pthread_create(&t, NULL, leak_in_thread, NULL);
        pthread_join(t, NULL);
        exit(0);
    }
    if (strcmp(mode, "threshold") == 0) {
        int n = argc > 2 ? atoi(argv[2]) : 5;
        for (int i = 0; i < n; i++)
            open_pg_leak();
        exit(0);
    }
    if (strcmp(mode, "idle") == 0) {
        /* Idle past LASTCALL_LEAK_AGE, then used again. */
        PGconn *c = open_pg_leak();
        int ms = argc > 2 ? atoi(argv[2]) : 500;
        usleep((useconds_t)ms * 1000);
        PQclear(PQexec(c, "SELECT 2"));
        usleep(100 * 1000);
        PQfinish(c);
        printf("done\n");
        return 0;
    }
    if (strcmp(mode, "status") == 0) {
        signal(SIGTERM, on_term);
        PGconn *a = open_pg_leak();
        PGconn *b = open_pg_leak();
        PQclear(PQexec(b, "BEGIN"));
        redisContext *r = open_redis_leak();
        failed_connect();
        printf("ready\n");
        fflush(stdout);
        while (!stop)
            pause();
        PQfinish(a);
        PQfinish(b);
        redisFree(r);
        return 0;
    }
    return 2;
}
