/* Issue 13, the drain: in a signal drain, a connection with nothing to say is
 * left to the kernel's close when the process dies. Checked against what the
 * servers saw: the same program with lastcall (SIGTERM) and without (killed),
 * counting PostgreSQL's, PgBouncer's and redis-server's log lines and the
 * connections left; and that a socket another process still holds gets the
 * explicit goodbye, since the kernel's close would not end it. This binary is
 * also the client (run again with --idle-client, under LD_PRELOAD). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "harness.h"

extern char **environ;

/* ---- the client: --idle-client CONNINFO NPG REDIS NREDIS EXTRA NAME ----
 * NPG PostgreSQL connections (CONNINFO, "" for the environment's), NREDIS
 * Redis ones (REDIS: unix or tcp), each named NAME on the Redis side. EXTRA:
 * none; tx (the first PostgreSQL connection in a transaction); listen (it
 * LISTENs on NAME); fork (a child that keeps every socket); spawn (a
 * posix_spawn'd sleep, which runs no fork handler and keeps what is not
 * close-on-exec); exit (exit() instead of waiting for a signal). */
static int idle_client(char **argv)
{
    const char *conninfo = argv[0], *transport = argv[2], *extra = argv[4], *name = argv[5];
    int npg = atoi(argv[1]), nrd = atoi(argv[3]);
    for (int i = 0; i < npg; i++) {
        PGconn *c = PQconnectdb(conninfo);
        if (PQstatus(c) != CONNECTION_OK) {
            fprintf(stderr, "idle client: %s", PQerrorMessage(c));
            return 3;
        }
        char sql[128];
        snprintf(sql, sizeof sql, "LISTEN %s", name);
        if (i == 0 && (strcmp(extra, "tx") == 0 || strcmp(extra, "listen") == 0))
            PQclear(PQexec(c, strcmp(extra, "tx") == 0 ? "BEGIN" : sql));
    }
    for (int i = 0; i < nrd; i++) {
        redisContext *r = strcmp(transport, "tcp") == 0
                              ? redisConnect("127.0.0.1", atoi(getenv("LC_TEST_REDIS_PORT")))
                              : redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
        if (r == NULL || r->err) {
            fprintf(stderr, "idle client: redis: %s\n", r ? r->errstr : "?");
            return 3;
        }
        freeReplyObject(redisCommand(r, "CLIENT SETNAME %s", name));
    }
    pid_t child = 0;
    if (strcmp(extra, "fork") == 0 && (child = fork()) == 0) {
        for (;;)
            pause();
    }
    if (strcmp(extra, "spawn") == 0) {
        char *sargv[] = {"sleep", "60", NULL};
        if (posix_spawn(&child, "/bin/sleep", NULL, NULL, sargv, environ) != 0)
            return 3;
    }
    printf("ready %d\n", (int)child);
    fflush(stdout);
    if (strcmp(extra, "exit") == 0)
        exit(0);
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    if (argc == 8 && strcmp(argv[1], "--idle-client") == 0)
        return idle_client(argv + 2);
    return harness_main(argc, argv);
}

/* ---- what the servers saw ---- */

/* Redis connections named NAME, or -1. */
static int redis_named(const char *name)
{
    redisContext *r = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (r == NULL || r->err)
        return -1;
    redisReply *rep = redisCommand(r, "CLIENT LIST");
    int n = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        char needle[128];
        snprintf(needle, sizeof needle, " name=%s ", name);
        n = 0;
        for (const char *p = rep->str; (p = strstr(p, needle)) != NULL; p++)
            n++;
    }
    freeReplyObject(rep);
    redisFree(r);
    return n;
}

static int redis_wait_named_gone(const char *name, int timeout_ms)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    int n;
    while ((n = redis_named(name)) != 0 && now_us() < until)
        sleep_ms(20);
    return n;
}

/* Lines in redis-server's log (its verbosity is the default, notice). */
static int redis_log_lines(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/redis.log", getenv("LC_TEST_DIR"));
    return file_count(path, "\n");
}

/* ---- one run ---- */

struct outcome {
    int status;
    int left_to_kernel;   /* connections the drain left to the kernel (debug line) */
    int pg_abrupt;        /* PostgreSQL's abrupt-end lines for the app */
    int pgb_bad;          /* PgBouncer's */
    int redis_log;        /* new lines in redis-server's log */
    int pg_left, redis_left;
    pid_t child;
    char err[8192];
};

/* Runs the client (with lastcall: SIGTERM; without: SIGKILL), then counts
 * what the servers saw. BEFORE_SIGNAL runs once the client is ready. */
static void idle_run(int preload, const char *conninfo, int npg, const char *redis, int nrd,
                     const char *extra, const char *name, void (*before_signal)(const char *),
                     struct outcome *o)
{
    memset(o, 0, sizeof *o);
    char spg[8], srd[8];
    snprintf(spg, sizeof spg, "%d", npg);
    snprintf(srd, sizeof srd, "%d", nrd);
    /* Without Criterion's worker variable: the client is no test worker. */
    const char *argv[] = {"env", "-u", "BXFI_MAP", build_path("tests/integration/test_idle_close"),
                          "--idle-client", conninfo, spg, redis, srd, extra, name, NULL};
    const char *env[] = {"LASTCALL_LOG=debug", NULL};
    struct run_opts opts = {.preload = preload, .env = env, .app = name};
    int pgb_before = getenv("LC_TEST_PGB_LOG") ? pgbouncer_log_bad() : 0;
    int redis_before = redis_log_lines();
    struct proc p;
    proc_start(&p, &opts, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "%s did not get ready: %s", name, p.err);
    char *ready = strstr(p.out, "ready ");
    o->child = ready ? atoi(ready + 6) : 0;
    if (strcmp(extra, "exit") != 0) {
        if (before_signal)
            before_signal(name);
        sleep_ms(100);
        kill(p.pid, preload ? SIGTERM : SIGKILL);
    }
    o->status = proc_wait(&p, 10000, NULL);
    /* Another process may hold the sockets: give the servers a moment. */
    o->pg_left = strstr(conninfo, "pgbouncer") ? 0 : pg_wait_backends_gone(name, 2000 + slack_ms());
    o->redis_left = redis_wait_named_gone(name, 2000 + slack_ms());
    sleep_ms(200); /* log lines are written as the backends exit */
    o->pg_abrupt = pg_log_abrupt(name);
    o->pgb_bad = getenv("LC_TEST_PGB_LOG") ? pgbouncer_log_bad() - pgb_before : 0;
    o->redis_log = redis_log_lines() - redis_before;
    const char *k = strstr(p.err, "left to the kernel");
    if (k) {
        const char *line = k;
        while (line > p.err && line[-1] != '\n')
            line--;
        const char *num = strstr(line, "drain: ");
        o->left_to_kernel = num && num < k ? atoi(num + 7) : -1;
    }
    snprintf(o->err, sizeof o->err, "%.8000s", p.err);
    if (o->child > 0) {
        kill(o->child, SIGKILL);
        if (strcmp(extra, "spawn") == 0)
            sleep_ms(50); /* the client's own child: reaped by init once it died */
        if (!strstr(conninfo, "pgbouncer"))
            pg_wait_backends_gone(name, 5000);
        redis_wait_named_gone(name, 5000);
    }
}

static void notify(const char *name)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT 1 FROM (SELECT pg_notify('%s', 'x')) n", name);
    pg_scalar(sql);
    sleep_ms(100); /* on its way into the client's socket */
}

static void report(const char *what, const struct outcome *o)
{
    fprintf(stderr,
            "%-34s status %d, left to the kernel %d, PostgreSQL abrupt %d, PgBouncer bad %d, "
            "redis log +%d, left: %d backends, %d Redis\n",
            what, o->status, o->left_to_kernel, o->pg_abrupt, o->pgb_bad, o->redis_log,
            o->pg_left, o->redis_left);
}

/* Every transport: what lastcall leaves to the kernel, and that the servers'
 * logs stay as clean as with the goodbye. Without lastcall the same program
 * killed shows what each server logs for a plain close: nothing for
 * PostgreSQL over unix and TCP, a reset over TLS (OpenSSL 3's unexpected EOF
 * without close_notify), "client unexpected eof" in PgBouncer. */
Test(idle_close, idle_connections_left_to_the_kernel_keep_every_log_clean, .timeout = 300)
{
    cr_assert_eq(pgbouncer_start(), 0, "pgbouncer did not start");
    char pgb[512];
    snprintf(pgb, sizeof pgb, "host=%s port=%s", getenv("LC_TEST_PGB_DIR"),
             getenv("LC_TEST_PGB_PORT"));
    struct {
        const char *name, *conninfo, *redis;
        int kernel_with; /* connections left to the kernel with lastcall */
        int abrupt_without, pgb_without;
    } cases[] = {
        /* unix: 3 PostgreSQL and 3 Redis left to the kernel */
        {"ic_unix", "", "unix", 6, 0, 0},
        /* TCP: PostgreSQL's peer cannot be known (a pooler?), Redis's read
         * of what we sent cannot be proved without its EOF */
        {"ic_tcp", "host=127.0.0.1 sslmode=disable", "tcp", 0, 0, 0},
        {"ic_tls", "host=127.0.0.1 sslmode=require", "unix", 3, 3, 0},
        {"ic_pgbouncer", pgb, "unix", 3, 0, 3},
    };
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        struct outcome w, wo;
        snprintf(name, sizeof name, "%s_without", cases[i].name);
        idle_run(0, cases[i].conninfo, 3, cases[i].redis, 3, "none", name, NULL, &wo);
        report(name, &wo);
        snprintf(name, sizeof name, "%s_with", cases[i].name);
        idle_run(1, cases[i].conninfo, 3, cases[i].redis, 3, "none", name, NULL, &w);
        report(name, &w);
        /* Through PgBouncer the server connections stay pooled. */
        int pooled = cases[i].pgb_without > 0;
        int ok = died_by(w.status, SIGTERM) && w.left_to_kernel == cases[i].kernel_with &&
                 w.pg_abrupt == 0 && w.pgb_bad == 0 && w.redis_log == 0 &&
                 (pooled || w.pg_left == 0) &&
                 w.redis_left == 0 && strstr(w.err, "drained 3 PostgreSQL") &&
                 strstr(w.err, "and 3 Redis connections");
        /* The plain kill, for comparison: the detectors see what they should. */
        ok = ok && wo.pg_abrupt == cases[i].abrupt_without &&
             wo.pgb_bad == cases[i].pgb_without && wo.redis_log == 0;
        if (!ok) {
            failures++;
            fprintf(stderr, "%s stderr: %s\n", cases[i].name, w.err);
            pg_log_dump_app(name);
        }
    }
    pgbouncer_stop();
    unsetenv("LC_TEST_PGB_LOG");
    cr_assert_eq(failures, 0, "%d transports failed (see above)", failures);
}

/* Something to say: a transaction (ROLLBACK, then Terminate), a notification
 * come in (unread, the kernel's close would be a reset): the goodbye. An exit
 * drain leaves nothing to the kernel: the program's atexit code and other
 * threads still run after it. */
Test(idle_close, connections_with_something_to_say_get_the_goodbye)
{
    struct outcome o;
    idle_run(1, "", 3, "unix", 2, "tx", "ic_tx", NULL, &o);
    report("ic_tx", &o);
    cr_assert(died_by(o.status, SIGTERM), "%s", o.err);
    cr_assert_eq(o.left_to_kernel, 4, "2 idle PostgreSQL and 2 Redis: %s", o.err);
    cr_assert_eq(o.pg_abrupt, 0);
    cr_assert_eq(o.pg_left + o.redis_left, 0);

    idle_run(1, "", 3, "unix", 2, "listen", "ic_listen", notify, &o);
    report("ic_listen", &o);
    cr_assert(died_by(o.status, SIGTERM), "%s", o.err);
    cr_assert_eq(o.left_to_kernel, 4, "%s", o.err);
    cr_assert_eq(o.pg_abrupt, 0);
    cr_assert_eq(o.pg_left + o.redis_left, 0);

    /* Under ThreadSanitizer this client's exit() hangs in libp11-kit's
     * destructor (freelocale), with or without lastcall: not there. */
    if (getenv("LASTCALL_TEST_TSAN"))
        return;
    idle_run(1, "", 3, "unix", 2, "exit", "ic_exit", NULL, &o);
    report("ic_exit", &o);
    cr_assert(WIFEXITED(o.status) && WEXITSTATUS(o.status) == 0, "%s", o.err);
    cr_assert_eq(o.left_to_kernel, 0, "%s", o.err);
    cr_assert(strstr(o.err, "drained 3 PostgreSQL"), "%s", o.err);
    cr_assert_eq(o.pg_abrupt + o.pg_left + o.redis_left, 0);
}

/* A forked child keeps a copy of every socket: the kernel's close at the
 * parent's death would end nothing, so the parent's drain says goodbye to
 * each. Without lastcall the connections stay as long as the child. */
Test(idle_close, a_forked_child_holding_the_sockets_does_not_keep_the_connections)
{
    struct outcome wo, w;
    idle_run(0, "", 2, "unix", 2, "fork", "ic_fork_without", NULL, &wo);
    report("ic_fork_without", &wo);
    idle_run(1, "", 2, "unix", 2, "fork", "ic_fork_with", NULL, &w);
    report("ic_fork_with", &w);
    cr_assert_gt(wo.child, 0);
    cr_assert(wo.pg_left == 2 && wo.redis_left == 2, "the problem did not show without lastcall");
    cr_assert(died_by(w.status, SIGTERM), "%s", w.err);
    cr_assert_gt(w.child, 0);
    cr_assert_eq(w.left_to_kernel, 0, "%s", w.err);
    cr_assert_eq(w.pg_left, 0, "a backend stayed while the child lived");
    cr_assert_eq(w.redis_left, 0, "a Redis connection stayed while the child lived");
    cr_assert_eq(w.pg_abrupt, 0);
}

/* posix_spawn runs no fork handler. The spawned program keeps the sockets
 * that are not close-on-exec (hiredis's) and loses libpq's: while it lives,
 * Redis gets the goodbye, PostgreSQL is left to the kernel. */
Test(idle_close, a_spawned_child_keeps_only_what_is_not_close_on_exec)
{
    struct outcome wo, w;
    idle_run(0, "", 2, "unix", 2, "spawn", "ic_spawn_without", NULL, &wo);
    report("ic_spawn_without", &wo);
    idle_run(1, "", 2, "unix", 2, "spawn", "ic_spawn_with", NULL, &w);
    report("ic_spawn_with", &w);
    cr_assert(wo.pg_left == 0 && wo.redis_left == 2, "the problem did not show without lastcall");
    cr_assert(died_by(w.status, SIGTERM), "%s", w.err);
    cr_assert_eq(w.left_to_kernel, 2, "%s", w.err);
    cr_assert_eq(w.pg_left + w.redis_left, 0, "a connection stayed while the child lived");
    cr_assert_eq(w.pg_abrupt, 0);
}
