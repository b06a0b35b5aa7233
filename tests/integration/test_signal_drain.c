/* The drain on SIGTERM/SIGINT (issue: drain on signals), against real servers
 * and programs no one here wrote: psql, pgbench, python3 with psycopg2. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/lc_client")

static void terminate_app(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = '%s'", app);
    pg_scalar(sql);
    pg_wait_backends_gone(app, 5000);
}

Test(signal_drain, psql_long_query_is_cancelled_and_psql_dies_by_sigterm)
{
    const char *argv[] = {"psql", "-X", "-q", "-c", "select pg_sleep(60)", NULL};

    /* Without lastcall: psql dies, its backend runs on. */
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "psql_without"};
    proc_start(&p, &without, argv);
    cr_assert_eq(wait_active_query("psql_without", 10000), 0);
    kill(p.pid, SIGTERM);
    int s_without = proc_wait(&p, 10000, NULL);
    sleep_ms(1500);
    int left_without = pg_backends("psql_without");
    terminate_app("psql_without");

    /* With lastcall: the query is cancelled after the grace period, the
     * backend is gone, psql still dies by SIGTERM. */
    const char *env[] = {"LASTCALL_GRACE=1s", NULL};
    struct run_opts with = {.preload = 1, .app = "psql_with", .env = env};
    proc_start(&p, &with, argv);
    cr_assert_eq(wait_active_query("psql_with", 10000), 0);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int s_with = proc_wait(&p, 10000, NULL);
    int left = pg_wait_backends_gone("psql_with", 10000);
    int64_t gone_ms = (now_us() - t0) / 1000;

    fprintf(stderr, "psql SIGTERM'd: without lastcall status %d, backend still running after "
                    "1.5 s: %s; with lastcall status %d, backend gone after %lld ms\n",
            s_without, left_without ? "yes" : "no", s_with, (long long)gone_ms);
    cr_assert(died_by(s_without, SIGTERM));
    cr_assert_eq(left_without, 1, "the problem did not show without lastcall");
    cr_assert(died_by(s_with, SIGTERM), "status %d; stderr %s", s_with, p.err);
    cr_assert_eq(left, 0);
    cr_assert_leq(gone_ms, 1000 + 1000 + 200 + slack_ms() /* grace + 1 s, plus polling */);
    cr_assert_eq(pg_log_abrupt("psql_with"), 0);
    cr_assert_eq(pg_log_count("psql_with", "canceling statement due to user request"), 1);
}

static int pgbench_run(int preload, const char *app, int *abrupt, int64_t *exit_ms)
{
    const char *argv[] = {"pgbench", "-n", "-c", "20", "-j", "2", "-T", "60", NULL};
    struct proc p;
    struct run_opts o = {.preload = preload, .app = app};
    proc_start(&p, &o, argv);
    int64_t until = now_us() + 15000000;
    while (pg_backends(app) < 20 && now_us() < until)
        sleep_ms(50);
    sleep_ms(1000);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 20000, NULL);
    *exit_ms = (now_us() - t0) / 1000;
    pg_wait_backends_gone(app, 10000);
    *abrupt = pg_log_abrupt(app);
    return s;
}

Test(signal_drain, pgbench_sigterm_closes_every_connection_cleanly)
{
    struct proc init;
    const char *argv_init[] = {"pgbench", "-i", "-q", "-s", "1", NULL};
    struct run_opts o = {.app = "pgb_init"};
    int s = run(&o, argv_init, &init, 60000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "pgbench -i: %s", init.err);

    int abrupt_without, abrupt_with;
    int64_t ms_without, ms_with;
    int s_without = pgbench_run(0, "pgb_without", &abrupt_without, &ms_without);
    int s_with = pgbench_run(1, "pgb_with", &abrupt_with, &ms_with);
    fprintf(stderr, "pgbench -c 20 -j 2 SIGTERM'd: abrupt-disconnect log lines without lastcall "
                    "%d, with %d; exit after %lld ms / %lld ms\n",
            abrupt_without, abrupt_with, (long long)ms_without, (long long)ms_with);
    cr_assert(died_by(s_without, SIGTERM));
    cr_assert_geq(abrupt_without, 20, "the problem did not show without lastcall");
    cr_assert(died_by(s_with, SIGTERM), "status %d", s_with);
    if (abrupt_with)
        pg_log_dump_app("pgb_with");
    cr_assert_eq(abrupt_with, 0);
    cr_assert_eq(pg_backends("pgb_with"), 0);
}

Test(signal_drain, own_handler_runs_and_exit_drain_closes_the_rest)
{
    struct proc p;
    const char *argv[] = {CLIENT, "own-handler", "own_key", NULL};
    struct run_opts o = {.preload = 1, .app = "own_handler"};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    cr_assert(strstr(p.out, "handler ran for signal 15"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("own_handler", 10000), 0);
    cr_assert_eq(pg_log_abrupt("own_handler"), 0);
    char *v = redis_get("own_key");
    cr_assert(v && strcmp(v, "from-own-handler") == 0);
}

Test(signal_drain, python_psycopg2_sigterm_with_open_transactions)
{
    char script[1024];
    snprintf(script, sizeof script, "%s/tests/clients/psycopg_hold.py",
             getenv("LASTCALL_SOURCE_ROOT"));
    const char *argv[] = {"/usr/bin/python3", script, NULL};

    struct proc p;
    struct run_opts without = {.preload = 0, .app = "py_without"};
    proc_start(&p, &without, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 20000), 0, "%s", p.err);
    kill(p.pid, SIGTERM);
    int s_without = proc_wait(&p, 10000, NULL);
    pg_wait_backends_gone("py_without", 10000);
    int abrupt_without = pg_log_abrupt("py_without");

    struct run_opts with = {.preload = 1, .app = "py_with"};
    proc_start(&p, &with, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 20000), 0, "%s", p.err);
    kill(p.pid, SIGTERM);
    int s_with = proc_wait(&p, 10000, NULL);
    int left = pg_wait_backends_gone("py_with", 10000);
    int abrupt_with = pg_log_abrupt("py_with");
    fprintf(stderr, "python3+psycopg2 SIGTERM'd with 3 open transactions: abrupt lines without "
                    "lastcall %d, with %d\n", abrupt_without, abrupt_with);
    cr_assert(died_by(s_without, SIGTERM));
    cr_assert_eq(abrupt_without, 3, "the problem did not show without lastcall");
    cr_assert(died_by(s_with, SIGTERM), "status %d: %s", s_with, p.err);
    cr_assert_eq(left, 0);
    cr_assert_eq(abrupt_with, 0);
}

/* Runs `unshare --pid --fork CMD...` (with a user namespace when not root). */
static int start_as_pid1(struct proc *p, const struct run_opts *o, const char *key)
{
    /* util-linux < 2.38 (Debian 11's unshare) --fork leaves SIGINT and SIGTERM
     * ignored in its child: env puts them back to the default first. */
    const char *argv_root[] = {"unshare", "--pid", "--fork", "env", "--default-signal=INT,TERM",
                               CLIENT, "hold", key, NULL};
    const char *argv_user[] = {"unshare", "--user", "--map-root-user", "--pid", "--fork",
                               "env", "--default-signal=INT,TERM", CLIENT, "hold", key, NULL};
    proc_start(p, o, geteuid() == 0 ? argv_root : argv_user);
    if (proc_wait_for(p, "ready pid 1", 10000) != 0)
        return -1;
    /* The client is the unshare process's only child. */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", p->pid, p->pid);
    FILE *f = fopen(path, "r");
    int child = 0;
    if (f == NULL || fscanf(f, "%d", &child) != 1)
        child = -1;
    if (f)
        fclose(f);
    return child;
}

Test(signal_drain, pid1_in_a_pid_namespace_drains_and_exits_143)
{
    if (getenv("LASTCALL_TEST_TSAN"))
        cr_skip_test("ThreadSanitizer's runtime does not run as PID 1 of a namespace");
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "pid1_without"};
    int child = start_as_pid1(&p, &without, "pid1_key_without");
    if (child < 0) {
        proc_wait(&p, 100, NULL);
        cr_skip_test("unshare --pid is not available here: %s", p.err);
    }
    kill(child, SIGTERM);
    sleep_ms(1000);
    int alive_without = kill(child, 0) == 0;
    kill(child, SIGKILL);
    proc_wait(&p, 10000, NULL);
    terminate_app("pid1_without");

    struct run_opts with = {.preload = 1, .app = "pid1_with"};
    child = start_as_pid1(&p, &with, "pid1_key_with");
    cr_assert_gt(child, 0, "%s", p.err);
    kill(child, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    fprintf(stderr, "PID 1 SIGTERM'd: without lastcall still running after 1 s: %s; with "
                    "lastcall exit status %d\n",
            alive_without ? "yes" : "no", WIFEXITED(s) ? WEXITSTATUS(s) : -1);
    cr_assert(alive_without, "without lastcall PID 1 should ignore SIGTERM");
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 143, "status %d: %s", s, p.err);
    cr_assert_eq(pg_wait_backends_gone("pid1_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("pid1_with"), 0);
    char *v = redis_get("pid1_key_with");
    cr_assert(v && strcmp(v, "held") == 0);
}

Test(signal_drain, stalled_redis_and_a_lock_wait_meet_the_deadline)
{
    PGconn *locker = PQconnectdb("application_name=locker");
    cr_assert_eq(PQstatus(locker), CONNECTION_OK);
    PQclear(PQexec(locker, "CREATE TABLE IF NOT EXISTS lc_locked (x int)"));

    struct proc p;
    const char *env[] = {"LASTCALL_DEADLINE=2s", "LASTCALL_GRACE=1s", NULL};
    struct run_opts o = {.preload = 1, .app = "blocked", .env = env, .keep_stdin = 1};
    const char *argv[] = {CLIENT, "blocked", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "connected", 10000), 0, "%s", p.err);
    PQclear(PQexec(locker, "BEGIN"));
    PQclear(PQexec(locker, "LOCK TABLE lc_locked IN ACCESS EXCLUSIVE MODE"));
    pid_t rpid = redis_pid();
    kill(rpid, SIGSTOP);
    cr_assert_eq(write(p.in_fd, "go\n", 3), 3);
    cr_assert_eq(proc_wait_for(&p, "blocked", 10000), 0);
    cr_assert_eq(wait_active_query("blocked", 10000), 0);
    sleep_ms(200);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    kill(rpid, SIGCONT);
    PQclear(PQexec(locker, "ROLLBACK"));
    PQfinish(locker);
    fprintf(stderr, "stalled redis + lock wait: SIGTERM to exit %lld ms (deadline 2000 ms)\n",
            (long long)ms);
    cr_assert(died_by(s, SIGTERM), "status %d: %s %s", s, p.out, p.err);
    cr_assert_leq(ms, 2100 + slack_ms());
    /* The program's own code did not run on after the signal. */
    cr_assert_null(strstr(p.out, "both returned"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("blocked", 10000), 0);
    cr_assert_eq(pg_log_abrupt("blocked"), 0);
}

Test(signal_drain, second_sigint_ends_the_process_at_once)
{
    struct proc p;
    const char *env[] = {"LASTCALL_GRACE=20s", "LASTCALL_DEADLINE=30s", NULL};
    struct run_opts o = {.preload = 1, .app = "two_ints", .env = env};
    const char *argv[] = {CLIENT, "sleep-query", "30", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "backend", 10000), 0, "%s", p.err);
    cr_assert_eq(wait_active_query("two_ints", 10000), 0);
    kill(p.pid, SIGINT);
    sleep_ms(300);
    cr_assert_eq(kill(p.pid, 0), 0, "the first SIGINT should start a drain, not kill");
    int64_t t0 = now_us();
    kill(p.pid, SIGINT);
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    terminate_app("two_ints");
    cr_assert(died_by(s, SIGINT), "status %d", s);
    cr_assert_leq(ms, 300 + slack_ms(), "second SIGINT took %lld ms", (long long)ms);
}

Test(signal_drain, no_live_handle_signal_acts_at_once)
{
    struct proc p;
    const char *argv[] = {"sleep", "30", NULL};
    struct run_opts o = {.preload = 1};
    proc_start(&p, &o, argv);
    sleep_ms(200);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(died_by(s, SIGTERM));
    cr_assert_leq((now_us() - t0) / 1000, 200 + slack_ms());
    /* A background job's ignored SIGINT stays ignored. */
    const char *bg[] = {"sh", "-c", "trap '' INT; exec sh -c 'kill -INT $$; echo survived'", NULL};
    s = run(&o, bg, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert_str_eq(p.out, "survived\n");
}

Test(signal_drain, exit_called_from_a_signal_handler_drains_on_the_drain_thread)
{
    struct proc p;
    const char *argv[] = {CLIENT, "exit-in-handler", "handler_exit_key", NULL};
    struct run_opts o = {.preload = 1, .app = "exit_in_handler"};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    /* In pause(): interrupted inside stdio (just after "ready") the handler's
     * exit() leaves the connections to the kernel by design (DESIGN.md);
     * once seen under load on Debian 13. */
    cr_assert_eq(proc_wait_sleeping(p.pid, 5000), 0);
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_eq(pg_wait_backends_gone("exit_in_handler", 10000), 0);
    int abrupt = pg_log_abrupt("exit_in_handler");
    if (abrupt)
        pg_log_dump_app("exit_in_handler");
    cr_assert_eq(abrupt, 0, "%s", p.err);
    char *v = redis_get("handler_exit_key");
    cr_assert(v && strcmp(v, "exit-in-handler") == 0);
}

Test(signal_drain, pqreset_refreshes_the_cancel_key)
{
    struct proc p;
    const char *env[] = {"LASTCALL_GRACE=300ms", NULL};
    struct run_opts o = {.preload = 1, .app = "after_reset", .env = env};
    const char *argv[] = {CLIENT, "sleep-query", "60", "reset", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "backend", 10000), 0, "%s", p.err);
    cr_assert_eq(wait_active_query("after_reset", 10000), 0);
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(died_by(s, SIGTERM), "status %d: %s", s, p.err);
    cr_assert_eq(pg_wait_backends_gone("after_reset", 3000), 0);
    cr_assert_eq(pg_log_count("after_reset", "canceling statement due to user request"), 1);
}

Test(signal_drain, lastcall_signals_none_leaves_sigterm_alone)
{
    struct proc p;
    const char *env[] = {"LASTCALL_SIGNALS=none", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "signals_none"};
    const char *argv[] = {CLIENT, "hold", "signals_none_key", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(died_by(s, SIGTERM), "status %d", s);
    cr_assert_eq(pg_wait_backends_gone("signals_none", 10000), 0);
    /* No drain: the open transaction ends abruptly, the buffered SET is lost. */
    cr_assert_eq(pg_log_count("signals_none", "unexpected EOF"), 1);
    cr_assert_null(redis_get("signals_none_key"));
}

Test(signal_drain, lastcall_signals_hup_drains_on_sighup)
{
    struct proc p;
    const char *env[] = {"LASTCALL_SIGNALS=HUP", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "signals_hup"};
    const char *argv[] = {CLIENT, "hold", "signals_hup_key", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    kill(p.pid, SIGHUP);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(died_by(s, SIGHUP), "status %d", s);
    cr_assert_eq(pg_wait_backends_gone("signals_hup", 10000), 0);
    cr_assert_eq(pg_log_abrupt("signals_hup"), 0);
    char *v = redis_get("signals_hup_key");
    cr_assert(v && strcmp(v, "held") == 0);
}
