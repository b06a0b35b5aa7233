/* Workloads for the benchmarks. Each prints one line "result <value>" (ns
 * unless said otherwise) and knows nothing of lastcall. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#ifdef LC_BENCH_MYSQL
#include <mysql.h>

static MYSQL *my(void)
{
    MYSQL *m = mysql_init(NULL);
    if (m == NULL || mysql_real_connect(m, "localhost", getenv("LC_TEST_MY_USER"),
                                        getenv("LC_TEST_MY_PASSWORD"), getenv("LC_TEST_MY_DB"), 0,
                                        getenv("LC_TEST_MY_SOCK"), 0) == NULL) {
        fprintf(stderr, "bench: mariadb: %s\n", m ? mysql_error(m) : "out of memory");
        exit(99);
    }
    return m;
}
#endif

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PGconn *pg(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench: %s", PQerrorMessage(c));
        exit(99);
    }
    return c;
}

static redisContext *rd(void)
{
    redisContext *c = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    /* A unix socket whose listen backlog is full refuses with EAGAIN: the
     * server is behind on accepting. Wait for it, as a real client would. */
    for (int tries = 0; c && c->err && strstr(c->errstr, "temporarily") && tries < 1000; tries++) {
        redisFree(c);
        usleep(100);
        c = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    }
    if (c == NULL || c->err) {
        fprintf(stderr, "bench: redis connect failed: %s\n", c ? c->errstr : "out of memory");
        exit(99);
    }
    return c;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void *idle_thread(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void *sleeper(void *arg)
{
    PGconn *c = arg;
    PQclear(PQexec(c, "SELECT pg_sleep(60)"));
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *cmd = argv[1];
    long n = atol(argv[2]);
    long long t0, t1;
    if (strcmp(cmd, "pq-roundtrip") == 0) {
        PGconn *c = pg();
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            PQclear(PQexec(c, "SELECT 1"));
        t1 = now_ns();
        PQfinish(c);
    } else if (strcmp(cmd, "redis-roundtrip") == 0) {
        redisContext *c = rd();
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            freeReplyObject(redisCommand(c, "PING"));
        t1 = now_ns();
        redisFree(c);
    } else if (strcmp(cmd, "redis-pipeline") == 0 || strcmp(cmd, "redis-pipeline-mt") == 0) {
        /* -mt: the same client with an idle thread of its own, so glibc's
         * malloc is in its multi-threaded mode on both sides. Without it the
         * client stays single-threaded unless lastcall starts a thread. */
        if (strcmp(cmd, "redis-pipeline-mt") == 0) {
            pthread_t idle;
            pthread_create(&idle, NULL, idle_thread, NULL);
            pthread_detach(idle);
        }
        redisContext *c = rd();
        t0 = now_ns();
        for (int round = 0; round < 10; round++) {
            for (long i = 0; i < n / 10; i++)
                redisAppendCommand(c, "PING");
            for (long i = 0; i < n / 10; i++) {
                void *r;
                redisGetReply(c, &r);
                freeReplyObject(r);
            }
        }
        t1 = now_ns();
        redisFree(c);
    } else if (strcmp(cmd, "pq-connect") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            PQfinish(pg());
        t1 = now_ns();
#ifdef LC_BENCH_MYSQL
    } else if (strcmp(cmd, "my-roundtrip") == 0) {
        MYSQL *m = my();
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            mysql_query(m, "SELECT 1");
            mysql_free_result(mysql_store_result(m));
        }
        t1 = now_ns();
        mysql_close(m);
    } else if (strcmp(cmd, "my-connect") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            mysql_close(my());
        t1 = now_ns();
#endif
    } else if (strcmp(cmd, "redis-connect") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            redisFree(rd());
        t1 = now_ns();
    } else if (strcmp(cmd, "isbusy") == 0) {
        /* A query-path call that never touches the network: its cost is
         * libpq's plus the hook's, nothing else (for callgrind). */
        PGconn *c = pg();
        int busy = 0;
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            busy += PQisBusy(c);
        t1 = now_ns();
        if (busy)
            fprintf(stderr, "busy?\n");
        PQfinish(c);
    } else if (strcmp(cmd, "hold") == 0) {
        /* n PostgreSQL and argv[3] Redis idle connections, until killed. */
        raise_fd_limit();
        long r = argc > 3 ? atol(argv[3]) : 0;
        for (long i = 0; i < n; i++)
            pg();
        for (long i = 0; i < r; i++)
            rd();
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    } else if (strcmp(cmd, "inflight") == 0) {
        /* n threads, each inside a long query, until killed. */
        raise_fd_limit();
        PGconn **conns = calloc((size_t)n, sizeof *conns);
        for (long i = 0; i < n; i++)
            conns[i] = pg();
        for (long i = 0; i < n; i++) {
            pthread_t t;
            pthread_create(&t, NULL, sleeper, conns[i]);
        }
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    } else if (strcmp(cmd, "sigaction") == 0) {
        /* SIGTERM switched between SIG_DFL and SIG_IGN, then read back, as a
         * program that guards a section does; one connection, so that the
         * hook is in force. */
        PGconn *c = pg();
        struct sigaction dfl, ign, old;
        memset(&dfl, 0, sizeof dfl);
        memset(&ign, 0, sizeof ign);
        dfl.sa_handler = SIG_DFL;
        ign.sa_handler = SIG_IGN;
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            sigaction(SIGTERM, i % 2 ? &dfl : &ign, NULL);
            sigaction(SIGTERM, NULL, &old);
        }
        t1 = now_ns();
        PQfinish(c);
    } else {
        return 2;
    }
    printf("result %lld\n", t1 - t0);
    return 0;
}
