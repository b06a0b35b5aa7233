/* Issue 19: what a thread is inside when shutdown finds it, beyond one
 * outermost call per thread (tests/clients/callback_client.c).
 *
 * - A notice processor of connection A runs PQexec(B), and the signal (or
 *   another thread's exit()) arrives inside it. Without lastcall the process
 *   ends at once; with it, it must end as it would (death by SIGTERM, exit
 *   status 5) within the deadline + 100 ms, and the program's callback must
 *   never run on a thread of lastcall's (the drain once read A on its own
 *   thread, delivering the NOTICE again there, and B's PQexec hung at the gate).
 * - PQgetline and lo_write in progress: a thread inside them is inside the
 *   connection (grace, then cancel), and the close is clean.
 * - More than 1024 threads inside calls: the drain's snapshot sees them all
 *   (it once stopped at 1024).
 * - A drain while the loader's lock is held (a plugin's constructor runs):
 *   every libpq function the drain needs was resolved at the first connect,
 *   so it makes no loader call and ends in time (it once looked each one up
 *   at its first use, and waited for the constructor).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <libpq-fe.h>
#include <libpq/libpq-fs.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/callback_client")
#define DEADLINE_MS 2000
#define GRACE_MS 500

static const char *const drain_env[] = {"LASTCALL_DEADLINE=2s", "LASTCALL_GRACE=500ms",
                                        "LASTCALL_LOG=info", NULL};

static void start(struct proc *p, int preload, const char *const *argv, const char *app)
{
    struct run_opts o = {.preload = preload, .app = app, .env = preload ? drain_env : NULL};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "ready", 30000), 0, "%s did not get ready: %s %s", argv[1],
                 p->out, p->err);
}

/* Every "notice tid N" line names the program's main thread. */
static int notices_on_main_thread(const struct proc *p)
{
    const char *m = strstr(p->out, "main tid ");
    if (m == NULL)
        return 0;
    int main_tid = atoi(m + 9), seen = 0;
    for (const char *s = p->out; (s = strstr(s, "notice tid ")) != NULL; s += 11) {
        if (atoi(s + 11) != main_tid)
            return 0;
        seen++;
    }
    return seen > 0;
}

/* Sends SIG once the client printed NEEDLE (0: no signal, it ends by itself);
 * returns the wait status and the milliseconds from then to its end. */
static int end_after(struct proc *p, const char *needle, int sig, int64_t *ms)
{
    cr_assert_eq(proc_wait_for(p, needle, 30000), 0, "no \"%s\": %s %s", needle, p->out, p->err);
    int64_t t0 = now_us();
    if (sig)
        kill(p->pid, sig);
    int status = proc_wait(p, 20000, NULL);
    *ms = (now_us() - t0) / 1000;
    return status;
}

Test(callbacks, sigterm_inside_a_notice_processor_that_calls_another_connection)
{
    const char *argv[] = {CLIENT, "notice", NULL};
    struct proc a, b;
    int64_t without_ms, with_ms;
    start(&a, 0, argv, "cb_notice_without");
    int sa = end_after(&a, "in callback", SIGTERM, &without_ms);
    start(&b, 1, argv, "cb_notice_with");
    int sb = end_after(&b, "in callback", SIGTERM, &with_ms);
    fprintf(stderr, "SIGTERM in the callback: without lastcall %lld ms, with %lld ms\n",
            (long long)without_ms, (long long)with_ms);
    cr_assert(died_by(sa, SIGTERM), "without: status %d", sa);
    cr_assert(died_by(sb, SIGTERM), "with: status %d: %s %s", sb, b.out, b.err);
    cr_assert_leq(with_ms, DEADLINE_MS + 100 + slack_ms(), "%lld ms: %s", (long long)with_ms,
                  b.err);
    cr_assert(notices_on_main_thread(&b), "a notice callback ran on another thread: %s", b.out);
    /* B's query was gated: it never ran after the signal. */
    cr_assert_null(strstr(b.out, "B's query in the callback"), "%s", b.out);
    cr_assert_eq(pg_wait_backends_gone("cb_notice_with", 10000), 0);
    /* B is closed cleanly. A, which the parked thread's outer call is inside,
     * is cancelled and then cut at close (its libpq state belongs to that
     * call): the notices and the cancel's answer left unread in its socket
     * can make the process's end a reset, which the backend may log once
     * ("could not receive data from client") if the reset overtakes the FIN. */
    int abrupt = pg_log_abrupt("cb_notice_with");
    if (abrupt)
        pg_log_dump_app("cb_notice_with");
    cr_assert_leq(abrupt, 1);
}

Test(callbacks, exit_from_another_thread_while_a_notice_processor_runs)
{
    if (getenv("LASTCALL_TEST_TSAN"))
        cr_skip_test("exit() while another thread runs is a race of the program's own, which "
                     "ThreadSanitizer reports without lastcall too (exit code 66)");
    const char *argv[] = {CLIENT, "notice-exit", NULL};
    struct proc a, b;
    int64_t without_ms, with_ms;
    start(&a, 0, argv, "cb_exit_without");
    int sa = end_after(&a, "in callback", 0, &without_ms);
    start(&b, 1, argv, "cb_exit_with");
    int sb = end_after(&b, "in callback", 0, &with_ms);
    fprintf(stderr, "exit() during the callback: without lastcall %lld ms, with %lld ms\n",
            (long long)without_ms, (long long)with_ms);
    cr_assert(WIFEXITED(sa) && WEXITSTATUS(sa) == 5, "without: status %d", sa);
    cr_assert(WIFEXITED(sb) && WEXITSTATUS(sb) == 5, "with: status %d: %s %s", sb, b.out, b.err);
    /* From the exit() call, 50 ms after "in callback". */
    cr_assert_leq(with_ms, 50 + DEADLINE_MS + 100 + slack_ms(), "%lld ms: %s",
                  (long long)with_ms, b.err);
    cr_assert(notices_on_main_thread(&b), "a notice callback ran on another thread: %s", b.out);
    cr_assert_eq(pg_wait_backends_gone("cb_exit_with", 10000), 0);
}

/* SIGTERM while MODE's client is inside a call that waits for the server:
 * busy for the grace, then cancelled, closed cleanly. */
static void busy_call(const char *mode, const char *arg, const char *needle, const char *app)
{
    const char *argv[] = {CLIENT, mode, arg, NULL};
    struct proc p;
    int64_t ms;
    start(&p, 1, argv, app);
    cr_assert_eq(proc_wait_for(&p, needle, 30000), 0, "%s %s", p.out, p.err);
    sleep_ms(100); /* well inside the call */
    int status = end_after(&p, needle, SIGTERM, &ms);
    fprintf(stderr, "%s: SIGTERM to death %lld ms\n%s", mode, (long long)ms, p.err);
    cr_assert(died_by(status, SIGTERM), "status %d: %s %s", status, p.out, p.err);
    cr_assert_geq(ms, GRACE_MS - 20, "ended before the grace: not seen as busy: %s", p.err);
    cr_assert_leq(ms, DEADLINE_MS + 100 + slack_ms(), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "1 cancel request"), "no cancel: %s", p.err);
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    cr_assert_geq(pg_log_count(app, "canceling statement due to user request"), 1);
    int abrupt = pg_log_abrupt(app);
    if (abrupt)
        pg_log_dump_app(app);
    cr_assert_eq(abrupt, 0);
}

Test(callbacks, pqgetline_in_progress_is_in_flight)
{
    busy_call("getline", NULL, "copying", "cb_getline");
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* The lock lo_write waits for is held by a session of the test's own: one of
 * the program's, idle in a transaction, would be frozen by the gate and rolled
 * back at once (issue 19, case 8), and the lo_write would finish. */
Test(callbacks, lo_write_in_progress_is_in_flight)
{
    PGconn *holder = PQconnectdb("application_name=cb_lo_holder");
    cr_assert_eq(PQstatus(holder), CONNECTION_OK, "%s", PQerrorMessage(holder));
    exec_ok(holder, "BEGIN");
    Oid oid = lo_creat(holder, INV_READ | INV_WRITE);
    exec_ok(holder, "COMMIT");
    exec_ok(holder, "BEGIN");
    int fd = lo_open(holder, oid, INV_WRITE);
    cr_assert(fd >= 0 && lo_write(holder, fd, "held", 4) == 4, "%s", PQerrorMessage(holder));
    char oid_text[16];
    snprintf(oid_text, sizeof oid_text, "%u", oid);
    busy_call("lo-write", oid_text, "writing", "cb_lo_write");
    exec_ok(holder, "ROLLBACK");
    PQfinish(holder);
}

Test(callbacks, more_than_1024_threads_inside_calls_are_all_seen)
{
    const char *argv[] = {CLIENT, "threads", "1100", NULL};
    struct proc p;
    int64_t ms;
    start(&p, 1, argv, "cb_threads");
    cr_assert_eq(proc_wait_for(&p, "blocking", 30000), 0, "%s %s", p.out, p.err);
    sleep_ms(200); /* inside the BLPOP */
    int status = end_after(&p, "blocking", SIGTERM, &ms);
    cr_assert(died_by(status, SIGTERM), "status %d: %s %s", status, p.out, p.err);
    const char *g = strstr(p.err, "grace over, ");
    cr_assert_not_null(g, "%s", p.err);
    long busy = atol(g + strlen("grace over, "));
    fprintf(stderr, "1100 threads connecting + BLPOP: %ld busy at the end of the grace\n", busy);
    /* 1100 connects and the main thread's BLPOP, which is registered first,
     * so last in the list the snapshot walks. */
    cr_assert_gt(busy, 1024, "the drain saw %ld: %s", busy, p.err);
    cr_assert_not_null(strstr(p.err, "1 cut"), "the BLPOP was not cut: %s", p.err);
}

Test(callbacks, a_drain_needs_no_loader_call)
{
    const char *argv[] = {CLIENT, "plugin", build_path("tests/clients/sleepy_plugin.so"), NULL};
    struct proc p;
    int64_t ms;
    start(&p, 1, argv, "cb_plugin");
    int status = end_after(&p, "in constructor", SIGTERM, &ms);
    fprintf(stderr, "SIGTERM during a plugin constructor: %lld ms\n%s", (long long)ms, p.err);
    cr_assert(died_by(status, SIGTERM), "status %d: %s %s", status, p.out, p.err);
    /* The constructor sleeps 5 s: a drain waiting for the loader ends after it. */
    cr_assert_leq(ms, DEADLINE_MS + 100 + slack_ms(), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "drained 1 PostgreSQL"), "%s", p.err);
    cr_assert_eq(pg_wait_backends_gone("cb_plugin", 10000), 0);
    int abrupt = pg_log_abrupt("cb_plugin");
    if (abrupt)
        pg_log_dump_app("cb_plugin");
    cr_assert_eq(abrupt, 0);
}
