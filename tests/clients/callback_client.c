/* Programs whose shutdown finds them inside a call in a way the per-thread
 * in-flight stack must see (tests/integration/test_callbacks.c).
 *
 *   callback_client MODE
 *     notice       connection A's notice processor prints its thread id and,
 *                  at the second notice, says "in callback", waits 300 ms and
 *                  runs PQexec(B); A runs a DO block that raises a NOTICE
 *                  every 50 ms for 10 s
 *     notice-exit  the same, and a second thread calls exit(5) once the
 *                  callback said "in callback"
 *     getline      COPY ... TO STDOUT of a slow query read with PQgetline;
 *                  "copying" after the first line
 *     lo-write OID a lo_write on page 0 of large object OID, which another
 *                  session (the test's) holds an uncommitted write on: it
 *                  waits for that lock ("writing" just before)
 *     plugin PATH  a connection idle in a transaction and a thread of the
 *                  program's that sleeps; then dlopen(PATH), whose constructor
 *                  sleeps with the loader's lock held
 *     threads N    N threads inside PQconnectdb to a TCP listener of our own
 *                  that never answers, then the main thread in a Redis BLPOP
 *                  ("blocking" just before)
 *
 * Every mode prints "main tid N" and "ready" once connected. Output is
 * unbuffered: the process dies by a signal. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <libpq/libpq-fs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static PGconn *b_conn;
static volatile int in_callback;
static int notices;

static PGconn *connect_pg(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        printf("connect failed: %s\n", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        printf("%s failed: %s\n", sql, PQerrorMessage(c));
        exit(2);
    }
    PQclear(r);
}

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
    printf("notice tid %d\n", (int)gettid());
    if (++notices != 2)
        return;
    printf("in callback\n");
    in_callback = 1;
    struct timespec end, now;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_nsec += 300 * 1000000L;
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    do {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL); /* a signal's EINTR must not shorten the wait */
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec < end.tv_nsec));
    PGresult *r = PQexec(b_conn, "SELECT 1");
    printf("B's query in the callback: %s\n", PQresStatus(PQresultStatus(r)));
    PQclear(r);
}

static void *exit_when_in_callback(void *arg)
{
    (void)arg;
    while (!in_callback)
        usleep(1000);
    usleep(50 * 1000);
    printf("exit(5)\n");
    exit(5);
}

static void notice_mode(int with_exit)
{
    PGconn *a = connect_pg();
    b_conn = connect_pg();
    PQsetNoticeProcessor(a, on_notice, NULL);
    if (with_exit) {
        pthread_t t;
        pthread_create(&t, NULL, exit_when_in_callback, NULL);
    }
    printf("ready\n");
    PGresult *r = PQexec(a, "DO $$ BEGIN FOR i IN 1..200 LOOP RAISE NOTICE 'tick %', i; "
                            "PERFORM pg_sleep(0.05); END LOOP; END $$");
    printf("A's DO block: %s\n", PQresStatus(PQresultStatus(r)));
    PQclear(r);
}

static void getline_mode(void)
{
    PGconn *a = connect_pg();
    printf("ready\n");
    PGresult *r = PQexec(a, "COPY (SELECT g, pg_sleep(0.01) FROM generate_series(1, 100000) g) "
                            "TO STDOUT");
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        printf("COPY failed: %s\n", PQerrorMessage(a));
        exit(2);
    }
    PQclear(r);
    char line[256];
    int first = 1;
    while (PQgetline(a, line, sizeof line) == 0) {
        if (strcmp(line, "\\.") == 0)
            break;
        if (first)
            printf("copying\n");
        first = 0;
    }
    printf("COPY ended\n");
    PQendcopy(a);
}

static void lo_write_mode(Oid oid)
{
    PGconn *a = connect_pg();
    exec_ok(a, "BEGIN");
    int fa = lo_open(a, oid, INV_WRITE);
    if (fa < 0) {
        printf("lo_open failed: %s\n", PQerrorMessage(a));
        exit(2);
    }
    printf("ready\n");
    printf("writing\n");
    int w = lo_write(a, fa, "wait", 4);
    printf("lo_write returned %d: %s\n", w, PQerrorMessage(a));
}

static void *connect_forever(void *arg)
{
    PGconn *c = PQconnectdb(arg);
    printf("a connect returned: %s\n", PQerrorMessage(c));
    return NULL;
}

static void threads_mode(int n)
{
    /* The connects need a socket each. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 256) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)n + 256 ? rl.rlim_max : (rlim_t)n + 256;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    redisContext *rc = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (rc == NULL || rc->err) {
        printf("redis connect failed\n");
        exit(2);
    }
    /* A listener that never answers: each connect sends its startup packet
     * and waits, inside PQconnectdb, for good. */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 4096) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &len) != 0) {
        printf("listener failed\n");
        exit(2);
    }
    static char conninfo[128];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d sslmode=disable gssencmode=disable dbname=x user=x",
             (int)ntohs(sa.sin_port));
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, connect_forever, conninfo) != 0) {
            printf("thread %d failed\n", i);
            exit(2);
        }
    }
    /* Every thread inside its connect: as many connections queued. */
    for (int tries = 0; tries < 3000; tries++) {
        FILE *f = fopen("/proc/self/net/tcp", "r");
        int established = 0;
        char line[512];
        while (f && fgets(line, sizeof line, f))
            established += strstr(line, " 01 ") != NULL;
        if (f)
            fclose(f);
        if (established >= 2 * n)
            break;
        usleep(10 * 1000);
    }
    printf("ready\n");
    printf("blocking\n");
    redisReply *r = redisCommand(rc, "BLPOP lc_callbacks_never 0");
    printf("BLPOP returned %p\n", (void *)r);
}

static void *sleep_forever(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void plugin_mode(const char *path)
{
    PGconn *a = connect_pg();
    exec_ok(a, "BEGIN");
    exec_ok(a, "SELECT 1");
    pthread_t t;
    pthread_create(&t, NULL, sleep_forever, NULL);
    printf("ready\n");
    void *h = dlopen(path, RTLD_NOW);
    printf("dlopen returned %p\n", h);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2)
        return 2;
    printf("main tid %d\n", (int)gettid());
    const char *mode = argv[1];
    if (strcmp(mode, "notice") == 0)
        notice_mode(0);
    else if (strcmp(mode, "notice-exit") == 0)
        notice_mode(1);
    else if (strcmp(mode, "getline") == 0)
        getline_mode();
    else if (strcmp(mode, "lo-write") == 0 && argc > 2)
        lo_write_mode((Oid)strtoul(argv[2], NULL, 10));
    else if (strcmp(mode, "plugin") == 0 && argc > 2)
        plugin_mode(argv[2]);
    else if (strcmp(mode, "threads") == 0 && argc > 2)
        threads_mode(atoi(argv[2]));
    else
        return 2;
    return 0;
}
