/* A test program no different from an application: it uses libpq and hiredis
 * and knows nothing of lastcall (it only peeks at lastcall's counters through
 * dlsym when asked to print them). Each subcommand is one scenario.
 * Connection settings come from PG* variables and LC_TEST_REDIS_SOCK. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "lastcall.h"

extern char **environ;

static void die(const char *what)
{
    fprintf(stderr, "lc_client: %s\n", what);
    exit(99);
}

static PGconn *pg_open(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "lc_client: %s", PQerrorMessage(c));
        exit(99);
    }
    return c;
}

static void pg_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "lc_client: %s: %s", sql, PQerrorMessage(c));
        exit(99);
    }
    PQclear(r);
}

static redisContext *redis_open(void)
{
    const char *sock = getenv("LC_TEST_REDIS_SOCK");
    if (!sock)
        die("LC_TEST_REDIS_SOCK unset");
    redisContext *c = redisConnectUnix(sock);
    if (c == NULL || c->err)
        die("redis connect failed");
    return c;
}

static void print_stats(void)
{
    int (*get)(struct lastcall_stats *, unsigned long) =
        (int (*)(struct lastcall_stats *, unsigned long))dlsym(RTLD_DEFAULT, "lastcall_get_stats");
    struct lastcall_stats s;
    if (get == NULL || get(&s, sizeof s) != 0) {
        printf("stats none\n");
        return;
    }
    printf("stats pq_opened=%lu pq_closed=%lu pq_live=%lu pq_failed=%lu redis_opened=%lu "
           "redis_closed=%lu redis_live=%lu redis_failed=%lu\n",
           s.pq_opened, s.pq_closed, s.pq_live, s.pq_failed, s.redis_opened, s.redis_closed,
           s.redis_live, s.redis_failed);
    fflush(stdout);
}

/* N connections each inside an open transaction, plus a Redis SET that was
 * appended but never flushed; then exit() without closing anything. */
static int cmd_exit_open_tx(int n, const char *key)
{
    for (int i = 0; i < n; i++) {
        PGconn *c = pg_open();
        pg_ok(c, "BEGIN");
        pg_ok(c, "SELECT txid_current()");
    }
    redisContext *r = redis_open();
    redisAppendCommand(r, "SET %s %s", key, "buffered-value");
    print_stats();
    exit(0);
}

static int churn_rounds;

static void *churn_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < churn_rounds; i++) {
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) == CONNECTION_OK)
            PQclear(PQexec(c, "SELECT 1"));
        PQfinish(c);
        redisContext *r = redis_open();
        freeReplyObject(redisCommand(r, "PING"));
        redisFree(r);
    }
    return NULL;
}

static int cmd_threads(int threads, int rounds)
{
    churn_rounds = rounds;
    pthread_t t[64];
    if (threads > 64)
        threads = 64;
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, churn_thread, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    print_stats();
    return 0;
}

/* Parent connects, a child is forked and exits through exit() (its atexit
 * drain runs), then the parent's connections must still work. */
static int cmd_fork(void)
{
    PGconn *c = pg_open();
    redisContext *r = redis_open();
    pg_ok(c, "SELECT 1");
    pid_t pid = fork();
    if (pid == 0) {
        printf("child stats:\n");
        print_stats();
        exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("child failed");
    pg_ok(c, "SELECT 2");
    redisReply *rep = redisCommand(r, "PING");
    if (rep == NULL || rep->type != REDIS_REPLY_STATUS)
        die("redis broken after fork");
    freeReplyObject(rep);
    printf("parent ok\n");
    PQfinish(c);
    redisFree(r);
    return 0;
}

/* SSL: sslmode=require over TCP, an open transaction, then exit(). */
static int cmd_ssl(int n)
{
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%s sslmode=require",
             getenv("LC_TEST_PG_PORT") ? getenv("LC_TEST_PG_PORT") : "5432");
    for (int i = 0; i < n; i++) {
        PGconn *c = PQconnectdb(conninfo);
        if (PQstatus(c) != CONNECTION_OK || !PQsslInUse(c)) {
            fprintf(stderr, "lc_client: ssl: %s", PQerrorMessage(c));
            exit(99);
        }
        pg_ok(c, "BEGIN");
        pg_ok(c, "SELECT 1");
    }
    print_stats();
    exit(0);
}

/* Stalled servers with output queued: prints the backend pid, waits for a
 * line on stdin (the test stops the servers), queues big writes, exits. */
static int cmd_stall(void)
{
    PGconn *c = pg_open();
    redisContext *r = redis_open();
    pg_ok(c, "BEGIN");
    printf("backend %d\n", PQbackendPID(c));
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL)
        die("no go");
    size_t big = 16u << 20;
    char *payload = malloc(big + 32);
    memset(payload, 'x', big);
    payload[big] = '\0';
    redisAppendCommand(r, "SET stall %b", payload, big);
    PQsetnonblocking(c, 1);
    char *sql = malloc(big + 32);
    snprintf(sql, big + 32, "SELECT '%s'", payload);
    if (!PQsendQuery(c, sql))
        die("sendquery");
    PQflush(c);
    printf("exiting\n");
    fflush(stdout);
    exit(0);
}

/* A long query in this thread; SIGTERM arrives from outside. With "reset",
 * PQreset first: the backend and its cancel key change. */
static int cmd_sleep_query(const char *seconds, int reset)
{
    PGconn *c = pg_open();
    if (reset) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK)
            die("reset failed");
    }
    printf("backend %d\n", PQbackendPID(c));
    fflush(stdout);
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT pg_sleep(%s)", seconds);
    PGresult *res = PQexec(c, sql);
    printf("query returned %s\n", PQresStatus(PQresultStatus(res)));
    return 0;
}


static volatile sig_atomic_t got_signal;
static volatile sig_atomic_t got_signal_number;

static void on_term(int sig, siginfo_t *info, void *uctx)
{
    (void)info;
    (void)uctx;
    got_signal = 1;
    got_signal_number = sig;
}

/* Its own SIGTERM handler sets a flag; main returns, leaving an open
 * transaction and a buffered Redis SET behind. */
static int cmd_own_handler(const char *key)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_term;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    struct sigaction back;
    sigaction(SIGTERM, NULL, &back);
    if (back.sa_sigaction != on_term || !(back.sa_flags & SA_SIGINFO))
        die("sigaction did not read back what was set");
    PGconn *c = pg_open();
    pg_ok(c, "BEGIN");
    pg_ok(c, "SELECT 1");
    redisContext *r = redis_open();
    redisAppendCommand(r, "SET %s %s", key, "from-own-handler");
    printf("ready\n");
    fflush(stdout);
    while (!got_signal)
        pause();
    printf("handler ran for signal %d\n", (int)got_signal_number);
    fflush(stdout);
    return 0;
}

static void exit_from_handler(int sig)
{
    (void)sig;
    exit(0); /* as webdis does: atexit handlers now run in signal context */
}

__attribute__((noreturn)) static int cmd_exit_in_handler(const char *key)
{
    signal(SIGTERM, exit_from_handler);
    PGconn *c = pg_open();
    pg_ok(c, "BEGIN");
    pg_ok(c, "SELECT 1");
    redisContext *r = redis_open();
    redisAppendCommand(r, "SET %s %s", key, "exit-in-handler");
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

/* An async context with a command queued and no event loop ever run: only
 * the exit drain can flush it. */
static int cmd_async_exit(const char *key)
{
    redisAsyncContext *ac = redisAsyncConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (ac == NULL || ac->err)
        die("async connect failed");
    if (redisAsyncCommand(ac, NULL, NULL, "SET %s %s", key, "async-value") != REDIS_OK)
        die("async command failed");
    print_stats();
    exit(0);
}

/* Holds connections open (one in a transaction, a buffered Redis SET) and
 * waits to be signalled. */
__attribute__((noreturn)) static int cmd_hold(const char *key)
{
    PGconn *c = pg_open();
    pg_ok(c, "BEGIN");
    pg_ok(c, "SELECT 1");
    redisContext *r = redis_open();
    redisAppendCommand(r, "SET %s %s", key, "held");
    printf("ready pid %d\n", (int)getpid());
    fflush(stdout);
    for (;;)
        sleep(60);
}

static PGconn *blocked_conn;
static redisContext *blocked_redis;

static void *blocked_pg(void *arg)
{
    (void)arg;
    PGresult *res = PQexec(blocked_conn, "SELECT count(*) FROM lc_locked");
    printf("pg returned %s\n", PQresStatus(PQresultStatus(res)));
    return NULL;
}

static void *blocked_rd(void *arg)
{
    (void)arg;
    redisReply *rep = redisCommand(blocked_redis, "PING");
    printf("redis returned %s\n", rep ? "reply" : "error");
    return NULL;
}

/* A query blocked on a lock and a command to a stopped redis-server, each in
 * its own thread; the test stops the server and holds the lock. */
static int cmd_blocked(void)
{
    blocked_conn = pg_open();
    blocked_redis = redis_open();
    printf("connected\n");
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL)
        die("no go");
    pthread_t a, b;
    pthread_create(&a, NULL, blocked_pg, NULL);
    pthread_create(&b, NULL, blocked_rd, NULL);
    printf("blocked\n");
    fflush(stdout);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("both returned\n");
    return 0;
}


/* Connections the server kills while we hold them; then a buffered write and
 * exit(). The drain meets broken sockets: no SIGPIPE may kill us. */
static int cmd_killed_conns(void)
{
    PGconn *c = pg_open();
    pg_ok(c, "BEGIN");
    redisContext *r = redis_open();
    redisReply *id = redisCommand(r, "CLIENT ID");
    printf("backend %d redis %lld ready\n", PQbackendPID(c), id ? id->integer : -1LL);
    fflush(stdout);
    freeReplyObject(id);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL)
        die("no go");
    redisAppendCommand(r, "SET killed-conn lost-anyway");
    printf("exiting\n");
    fflush(stdout);
    exit(0);
}

static volatile sig_atomic_t storm_hits;

static void on_usr1(int sig)
{
    (void)sig;
    storm_hits++;
}

/* Work while SIGUSR1 arrives every millisecond (no SA_RESTART). */
static int cmd_storm(int rounds)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    PGconn *c = pg_open();
    redisContext *r = redis_open();
    printf("ready\n");
    fflush(stdout);
    int pg_errors = 0, redis_errors = 0;
    for (int i = 0; i < rounds; i++) {
        PGresult *res = PQexec(c, "SELECT 1");
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            pg_errors++;
        PQclear(res);
        redisReply *rep = redisCommand(r, "PING");
        if (rep == NULL || rep->type != REDIS_REPLY_STATUS)
            redis_errors++;
        freeReplyObject(rep);
    }
    printf("storm done: pg_errors=%d redis_errors=%d signals=%d\n", pg_errors, redis_errors,
           (int)storm_hits);
    fflush(stdout);
    PQfinish(c);
    redisFree(r);
    return 0;
}

/* A prefork server: the parent's connections must survive 50 children that
 * query on their own connections and leave in every way a child can. */
static int cmd_prefork(int children)
{
    PGconn *c = pg_open();
    redisContext *r = redis_open();
    pg_ok(c, "BEGIN");
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            PGconn *mine = pg_open();
            pg_ok(mine, "SELECT 1");
            if (i % 5 == 0 || i % 5 == 4)
                pg_ok(mine, "BEGIN"); /* left open: only the child's own drain closes it cleanly */
            redisContext *rmine = redis_open();
            freeReplyObject(redisCommand(rmine, "PING"));
            switch (i % 5) {
            case 0:
                exit(0);             /* normal exit: the child's drain, own handles only */
            case 1:
                _exit(0);            /* abrupt */
            case 2:
                raise(SIGKILL);      /* abrupt */
                _exit(1);
            case 3:
                execl("/bin/true", "true", (char *)NULL); /* exec after fork */
                _exit(127);
            default:
                raise(SIGTERM);      /* a signal drain in the child */
                _exit(1);
            }
        }
        int status;
        waitpid(pid, &status, 0);
    }
    /* vfork + exec and posix_spawn from the parent. */
    pid_t v = vfork();
    if (v == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(v, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("vfork+exec failed");
    pid_t s;
    char *const args[] = {"true", NULL};
    if (posix_spawn(&s, "/bin/true", NULL, NULL, args, environ) != 0)
        die("posix_spawn failed");
    waitpid(s, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("posix_spawn child failed");
    pg_ok(c, "SELECT 1");
    pg_ok(c, "COMMIT");
    redisReply *rep = redisCommand(r, "PING");
    if (rep == NULL || rep->type != REDIS_REPLY_STATUS)
        die("the parent's Redis connection broke");
    freeReplyObject(rep);
    printf("parent intact\n");
    PQfinish(c);
    redisFree(r);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        die("usage: lc_client COMMAND ...");
    const char *cmd = argv[1];
    if (strcmp(cmd, "exit-open-tx") == 0 && argc >= 4)
        return cmd_exit_open_tx(atoi(argv[2]), argv[3]);
    if (strcmp(cmd, "threads") == 0 && argc >= 4)
        return cmd_threads(atoi(argv[2]), atoi(argv[3]));
    if (strcmp(cmd, "fork") == 0)
        return cmd_fork();
    if (strcmp(cmd, "ssl") == 0 && argc >= 3)
        return cmd_ssl(atoi(argv[2]));
    if (strcmp(cmd, "stall") == 0)
        return cmd_stall();
    if (strcmp(cmd, "sleep-query") == 0 && argc >= 3)
        return cmd_sleep_query(argv[2], argc >= 4 && strcmp(argv[3], "reset") == 0);
    if (strcmp(cmd, "own-handler") == 0 && argc >= 3)
        return cmd_own_handler(argv[2]);
    if (strcmp(cmd, "exit-in-handler") == 0 && argc >= 3)
        return cmd_exit_in_handler(argv[2]);
    if (strcmp(cmd, "async-exit") == 0 && argc >= 3)
        return cmd_async_exit(argv[2]);
    if (strcmp(cmd, "hold") == 0 && argc >= 3)
        return cmd_hold(argv[2]);
    if (strcmp(cmd, "killed-conns") == 0)
        return cmd_killed_conns();
    if (strcmp(cmd, "storm") == 0 && argc >= 3)
        return cmd_storm(atoi(argv[2]));
    if (strcmp(cmd, "prefork") == 0 && argc >= 3)
        return cmd_prefork(atoi(argv[2]));
    if (strcmp(cmd, "blocked") == 0)
        return cmd_blocked();
    die("unknown command");
    return 99;
}
