/* A single-threaded program for the lazy drain thread tests
 * (tests/integration/test_lazy_thread.c): where a signal finds it, and
 * what it does in its handlers, are the cases.
 *
 *   lazy_client MODE NPG
 *     idle        NPG connections + 1 Redis, then pause() forever
 *     libc        the same, then malloc/free/memcpy/snprintf forever (mostly inside libc)
 *     queries     PQexec("SELECT 1") on each connection, forever (mostly inside libpq)
 *     sleep       one connection inside SELECT pg_sleep(60)
 *     thread      the connections, then one thread of the program's own, then pause()
 *     exit-idle   a SIGALRM handler that calls exit(3), armed for 300 ms; pause()
 *     exit-libc   the same handler, armed every 3 ms while the loop of "libc" runs
 *     flip        the loop of "libc", switching SIGTERM between SIG_DFL and SIG_IGN
 *     flip20      SIGTERM switched between SIG_DFL and SIG_IGN every 20 us (issue 19,
 *                 case 7), a little libc work in between
 *     ctor        dlopen/dlclose of the plugin in $LC_CTOR_PLUGIN (its constructor
 *                 sleeps 200 ms under ld.so's load lock), 1 ms apart, forever
 *
 * Every connection but in "queries" and "sleep" holds an open transaction
 * (PostgreSQL logs an abrupt end only of those). Every mode prints "tasks N"
 * (its threads now) and "ready" once connected. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static void on_alarm(int sig)
{
    (void)sig;
    exit(3);
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void libc_loop(int flip)
{
    char buf[4096], text[256];
    unsigned seed = (unsigned)getpid();
    for (long round = 0;; round++) {
        if (flip && round % 64 == 0) /* phases of some 100 us, mostly inside libc */
            signal(SIGTERM, round / 64 % 2 ? SIG_IGN : SIG_DFL);
        size_t n = 16 + (size_t)(rand_r(&seed) % 4000);
        char *p = malloc(n);
        if (p == NULL)
            continue;
        memcpy(p, buf, n);
        snprintf(text, sizeof text, "%zu %p %s", n, (void *)p, p[0] ? "x" : "y");
        free(p);
    }
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void flip_every_20us(void)
{
    char text[64];
    for (long round = 0;; round++) {
        signal(SIGTERM, round % 2 ? SIG_IGN : SIG_DFL);
        long long until = now_ns() + 20000;
        while (now_ns() < until)
            snprintf(text, sizeof text, "%ld", round);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *mode = argv[1];
    int npg = atoi(argv[2]);
    PGconn **pg = calloc((size_t)npg + 1, sizeof *pg);
    for (int i = 0; i < npg; i++) {
        pg[i] = PQconnectdb("");
        if (PQstatus(pg[i]) != CONNECTION_OK) {
            fprintf(stderr, "connect: %s", PQerrorMessage(pg[i]));
            return 1;
        }
        if (strcmp(mode, "queries") != 0 && strcmp(mode, "sleep") != 0)
            PQclear(PQexec(pg[i], "BEGIN"));
    }
    redisContext *rc = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (rc == NULL || rc->err) {
        fprintf(stderr, "redis connect failed\n");
        return 1;
    }
    if (strcmp(mode, "thread") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, sleeper, NULL);
    }
    printf("tasks %d\nready\n", tasks());
    fflush(stdout);
    /* Armed after "ready" is out: a 3 ms alarm that came first (a loaded
     * machine) made exit() from the handler lose the line the test waits for. */
    if (strncmp(mode, "exit-", 5) == 0) {
        signal(SIGALRM, on_alarm);
        struct itimerval it = {{0, 0}, {0, 300000}};
        if (strcmp(mode, "exit-libc") == 0)
            it.it_value.tv_usec = 3000;
        setitimer(ITIMER_REAL, &it, NULL);
    }
    if (strcmp(mode, "libc") == 0 || strcmp(mode, "exit-libc") == 0 ||
        strcmp(mode, "flip") == 0)
        libc_loop(strcmp(mode, "flip") == 0);
    if (strcmp(mode, "flip20") == 0)
        flip_every_20us();
    if (strcmp(mode, "ctor") == 0)
        for (;;) {
            void *h = dlopen(getenv("LC_CTOR_PLUGIN"), RTLD_NOW | RTLD_LOCAL);
            if (h == NULL) {
                fprintf(stderr, "dlopen: %s\n", dlerror());
                return 1;
            }
            dlclose(h);
            usleep(1000);
        }
    if (strcmp(mode, "queries") == 0)
        for (;;)
            for (int i = 0; i < npg; i++)
                PQclear(PQexec(pg[i], "SELECT 1"));
    if (strcmp(mode, "sleep") == 0)
        PQclear(PQexec(pg[0], "SELECT pg_sleep(60)"));
    for (;;)
        pause();
}
