/* A program that holds PostgreSQL and Redis connections in every state the
 * protocol knows (a query running, COPY IN half-sent, COPY OUT unread, a
 * pipeline, LISTEN, commands written but unread...) and then ends: by exit(),
 * by SIGTERM under the default action, or by its own SIGTERM handler closing
 * every connection itself. It knows nothing of lastcall.
 *
 *   states_client rpush REDIS N KEY exit|wait
 *   states_client matrix exit|term|handler PGCONNINFO REDIS TAG
 *   states_client hold PGCONNINFO REDIS TAG
 * REDIS is unix:/path or tcp:PORT (127.0.0.1). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "states_client: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(99);
}

static PGconn *pg_open(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        die("connect", PQerrorMessage(c));
    return c;
}

static void pg_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        die(sql, PQerrorMessage(c));
    PQclear(r);
}

static redisContext *redis_open(const char *target)
{
    redisContext *c = strncmp(target, "tcp:", 4) == 0 ? redisConnect("127.0.0.1", atoi(target + 4))
                                                      : redisConnectUnix(target + 5);
    if (c == NULL || c->err)
        die("redis connect", c ? c->errstr : NULL);
    return c;
}

static void redis_ok(redisContext *c, const char *fmt, const char *a, const char *b)
{
    redisReply *r = redisCommand(c, fmt, a, b);
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        die("redis command", fmt);
    freeReplyObject(r);
}

/* The program's own flush: everything written to the socket, no reply read. */
static void redis_write_all(redisContext *c)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK)
            die("redisBufferWrite", c->errstr);
}

static void append_rpushes(redisContext *c, const char *key, int n)
{
    char v[16];
    for (int i = 0; i < n; i++) {
        snprintf(v, sizeof v, "%d", i);
        if (redisAppendCommand(c, "RPUSH %s %s", key, v) != REDIS_OK)
            die("append", NULL);
    }
}

static void ready(void)
{
    printf("ready\n");
    fflush(stdout);
}

/* 300,000 RPUSHes written, their replies never read, then the end. */
static int cmd_rpush(const char *target, int n, const char *key, const char *how)
{
    redisContext *c = redis_open(target);
    append_rpushes(c, key, n);
    redis_write_all(c);
    ready();
    if (strcmp(how, "exit") == 0)
        exit(0);
    for (;;)
        pause();
}

/* ---- the matrix: every state at once ---- */

static volatile sig_atomic_t term_seen;
static void on_term(int sig)
{
    (void)sig;
    term_seen = 1;
}

struct blocked {
    const char *conninfo;
    const char *redis;
    const char *tag;
    PGconn *pg;
    redisContext *rc;
};

static void *sync_query_thread(void *arg)
{
    struct blocked *b = arg;
    PGresult *r = PQexec(b->pg, "SELECT pg_sleep(30)");
    PQclear(r);
    /* A worker that stays: one ending while exit() runs would race with
     * OpenSSL's exit cleanup (its thread-exit handler), lastcall or not. */
    for (;;)
        pause();
    return NULL;
}

static void *blpop_thread(void *arg)
{
    struct blocked *b = arg;
    char key[96];
    snprintf(key, sizeof key, "%s:blpop", b->tag);
    redisReply *r = redisCommand(b->rc, "BLPOP %s 30", key);
    freeReplyObject(r);
    for (;;)
        pause();
    return NULL;
}

/* Until the sleeps run in their backends (the async one, the pipeline's and,
 * with threads, the thread's) and the BLPOP blocks in Redis. */
static void wait_busy(PGconn *c, const char *redis, const char *tag, int sleeps, int blpop)
{
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
             "current_setting('application_name') AND state = 'active' AND query LIKE "
             "'SELECT pg_sleep%%'");
    redisContext *rc = redis_open(redis);
    char name[128];
    snprintf(name, sizeof name, "name=%s-blpop", tag);
    for (int i = 0; i < 2000; i++) {
        PGresult *r = PQexec(c, sql);
        int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
        PQclear(r);
        int blocked = !blpop;
        if (blpop) {
            redisReply *rr = redisCommand(rc, "CLIENT LIST");
            const char *line = rr && rr->type == REDIS_REPLY_STRING ? strstr(rr->str, name) : NULL;
            const char *end = line ? strchr(line, '\n') : NULL;
            const char *cmd = line ? strstr(line, "cmd=blpop") : NULL;
            blocked = cmd && (end == NULL || cmd < end);
            freeReplyObject(rr);
        }
        if (n >= sleeps && blocked)
            break;
        usleep(5000);
    }
    redisFree(rc);
}

enum { PG_IDLE, PG_TX, PG_ASYNC, PG_COPY_IN, PG_COPY_OUT, PG_PIPELINE, PG_LISTEN, PG_UNREAD, PG_N };
enum { RD_WRITTEN, RD_BUFFERED, RD_MULTI, RD_SUBSCRIBED, RD_N };

static int cmd_matrix(const char *mode, const char *conninfo, const char *redis, const char *tag)
{
    int handler = strcmp(mode, "handler") == 0;
    if (handler)
        signal(SIGTERM, on_term);
    PGconn *pg[PG_N];
    for (int i = 0; i < PG_N; i++)
        pg[i] = pg_open(conninfo);
    char sql[400];

    pg_ok(pg[PG_TX], "BEGIN");
    snprintf(sql, sizeof sql, "INSERT INTO states_t VALUES (1, '%s')", tag);
    pg_ok(pg[PG_TX], sql);

    if (!PQsendQuery(pg[PG_ASYNC], "SELECT pg_sleep(30)"))
        die("send", PQerrorMessage(pg[PG_ASYNC]));

    /* 77 rows of 120 bytes plus headers: the 8192-byte block boundary falls
     * inside a CopyData message, whose rest stays in libpq's buffer. */
    PGresult *r = PQexec(pg[PG_COPY_IN], "COPY states_t FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN)
        die("copy in", PQerrorMessage(pg[PG_COPY_IN]));
    PQclear(r);
    char row[120];
    memset(row, 'x', sizeof row);
    row[0] = '2';
    row[1] = '\t';
    row[sizeof row - 1] = '\n';
    for (int i = 0; i < 77; i++)
        if (PQputCopyData(pg[PG_COPY_IN], row, sizeof row) != 1)
            die("PQputCopyData", PQerrorMessage(pg[PG_COPY_IN]));

    /* A COPY OUT read once, then never again: the backend fills the socket. */
    r = PQexec(pg[PG_COPY_OUT], "COPY (SELECT g, repeat('y', 200) FROM generate_series(1, 3000000) g) TO STDOUT");
    if (PQresultStatus(r) != PGRES_COPY_OUT)
        die("copy out", PQerrorMessage(pg[PG_COPY_OUT]));
    PQclear(r);
    char *buf = NULL;
    if (PQgetCopyData(pg[PG_COPY_OUT], &buf, 0) <= 0)
        die("PQgetCopyData", PQerrorMessage(pg[PG_COPY_OUT]));
    PQfreemem(buf);

    /* Non-blocking, pipeline mode: a long query, then a 4 MB parameter the
     * busy backend does not read: a message half on the wire. */
    PGconn *pp = pg[PG_PIPELINE];
#ifndef LIBPQ_HAS_PIPELINING
    /* libpq < 14 (Debian 11's 13) has no pipeline mode: the same long query,
     * sent non-blocking, so the states and the cancel counts stay the same. */
    if (PQsetnonblocking(pp, 1) != 0 || !PQsendQuery(pp, "SELECT pg_sleep(30)"))
        die("nonblocking send", PQerrorMessage(pp));
    for (int i = 0; i < 50 && PQflush(pp) == 1; i++)
        usleep(2000);
#else
    if (PQsetnonblocking(pp, 1) != 0 || PQenterPipelineMode(pp) != 1)
        die("pipeline", PQerrorMessage(pp));
    if (!PQsendQueryParams(pp, "SELECT pg_sleep(30)", 0, NULL, NULL, NULL, NULL, 0))
        die("pipeline send", PQerrorMessage(pp));
    size_t big_len = 4 << 20;
    char *big = malloc(big_len + 1);
    memset(big, 'z', big_len);
    big[big_len] = '\0';
    const char *params[1] = {big};
    if (!PQsendQueryParams(pp, "SELECT length($1)", 1, NULL, params, NULL, NULL, 0))
        die("pipeline send 2", PQerrorMessage(pp));
    if (PQpipelineSync(pp) != 1)
        die("pipeline sync", PQerrorMessage(pp));
    for (int i = 0; i < 50 && PQflush(pp) == 1; i++)
        usleep(2000);
    free(big);
#endif

    pg_ok(pg[PG_LISTEN], "LISTEN states_ch");
    pg_ok(pg[PG_IDLE], "NOTIFY states_ch, 'unread'");

    if (!PQsendQuery(pg[PG_UNREAD], "SELECT 1"))
        die("send", PQerrorMessage(pg[PG_UNREAD]));

    redisContext *rc[RD_N];
    for (int i = 0; i < RD_N; i++)
        rc[i] = redis_open(redis);
    char key[96];
    snprintf(key, sizeof key, "%s:written", tag);
    append_rpushes(rc[RD_WRITTEN], key, 20000);
    redis_write_all(rc[RD_WRITTEN]);
    snprintf(key, sizeof key, "%s:buffered", tag);
    append_rpushes(rc[RD_BUFFERED], key, 1000);
    snprintf(key, sizeof key, "%s:multi", tag);
    redis_ok(rc[RD_MULTI], "MULTI", NULL, NULL);
    redis_ok(rc[RD_MULTI], "SET %s %s", key, "never");
    redis_ok(rc[RD_SUBSCRIBED], "SUBSCRIBE %s", "states_ch", NULL);
    /* What the subscriber will not read. */
    redisContext *pub = redis_open(redis);
    for (int i = 0; i < 100; i++)
        redis_ok(pub, "PUBLISH %s %s", "states_ch", "unread-message");
    redisFree(pub);

    redisAsyncContext *ac = strncmp(redis, "tcp:", 4) == 0
                                ? redisAsyncConnect("127.0.0.1", atoi(redis + 4))
                                : redisAsyncConnectUnix(redis + 5);
    if (ac == NULL || ac->err)
        die("async connect", NULL);
    snprintf(key, sizeof key, "%s:async", tag);
    if (redisAsyncCommand(ac, NULL, NULL, "RPUSH %s queued", key) != REDIS_OK)
        die("async command", NULL);

    /* A thread blocked in PQexec and one in BLPOP: not for the handler mode,
     * whose program closes the connections itself. */
    struct blocked b = {.conninfo = conninfo, .redis = redis, .tag = tag};
    pthread_t t1, t2;
    if (!handler) {
        b.pg = pg_open(conninfo);
        b.rc = redis_open(redis);
        snprintf(key, sizeof key, "%s-blpop", tag);
        redis_ok(b.rc, "CLIENT SETNAME %s", key, NULL);
        /* Detached: exit() comes while they run (TSan reports joinable ones). */
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_create(&t1, &attr, sync_query_thread, &b);
        pthread_create(&t2, &attr, blpop_thread, &b);
        pthread_attr_destroy(&attr);
    }
    wait_busy(pg[PG_IDLE], redis, tag, handler ? 2 : 3, !handler);
    usleep(50 * 1000); /* the COPY OUT fills the socket */
    ready();

    if (strcmp(mode, "exit") == 0)
        exit(0);
    if (!handler)
        for (;;)
            pause();

    while (!term_seen)
        pause();
    /* The program's own shutdown: every connection closed by the program. */
    for (int i = 0; i < PG_N; i++)
        PQfinish(pg[i]);
    for (int i = 0; i < RD_N; i++)
        redisFree(rc[i]);
    redisAsyncFree(ac);
    signal(SIGTERM, SIG_DFL);
    raise(SIGTERM);
    return 98;
}

/* An open transaction and written-but-unread RPUSHes, then nothing: the
 * test stops both servers so that the drain must cut at the deadline. */
static int cmd_hold(const char *conninfo, const char *redis, const char *tag)
{
    PGconn *c = pg_open(conninfo);
    pg_ok(c, "BEGIN");
    pg_ok(c, "SELECT 1");
    redisContext *rc = redis_open(redis);
    char key[96];
    snprintf(key, sizeof key, "%s:written", tag);
    append_rpushes(rc, key, 1000);
    redis_write_all(rc);
    ready();
    while (c != NULL)
        pause();
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 6 && strcmp(argv[1], "rpush") == 0)
        return cmd_rpush(argv[2], atoi(argv[3]), argv[4], argv[5]);
    if (argc >= 6 && strcmp(argv[1], "matrix") == 0)
        return cmd_matrix(argv[2], argv[3], argv[4], argv[5]);
    if (argc >= 5 && strcmp(argv[1], "hold") == 0)
        return cmd_hold(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: states_client rpush|matrix|hold ...\n");
    return 2;
}
