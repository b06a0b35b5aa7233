/* MySQL/MariaDB (issue 14) against a real MariaDB server started for this
 * binary (tests/harness/mariadb.sh): the server's error log (log_warnings=2)
 * says which clients left without COM_QUIT ("Aborted connection ID"); its
 * process list says which threads and queries are left. Differential where it
 * can be: the same program with and without lastcall. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/options.h>
#include <mysql.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define CLIENT build_path("tests/clients/mysql_client")
#define LAUNCHER build_path("shim/lastcall")


static MYSQL *admin(void)
{
    MYSQL *m = mysql_init(NULL);
    cr_assert_not_null(mysql_real_connect(m, "localhost", getenv("LC_TEST_MY_USER"),
                                          getenv("LC_TEST_MY_PASSWORD"), getenv("LC_TEST_MY_DB"),
                                          0, getenv("LC_TEST_MY_SOCK"), 0),
                       "%s", mysql_error(m));
    return m;
}

static long scalar(const char *sql)
{
    MYSQL *m = admin();
    cr_assert_eq(mysql_query(m, sql), 0, "%s: %s", sql, mysql_error(m));
    MYSQL_RES *r = mysql_store_result(m);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    long v = row && row[0] ? atol(row[0]) : -1;
    if (r)
        mysql_free_result(r);
    mysql_close(m);
    return v;
}

/* Does the server still have thread ID (the connection)? */
static int thread_alive(unsigned long id)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = %lu",
             id);
    return scalar(sql) > 0;
}

static int wait_thread_gone(unsigned long id, int timeout_ms)
{
    for (int t = 0; t < timeout_ms; t += 20) {
        if (!thread_alive(id))
            return 0;
        sleep_ms(20);
    }
    return -1;
}

/* Is thread ID running a query (not sleeping between commands)? */
static int thread_busy(unsigned long id)
{
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT COUNT(*) FROM information_schema.processlist WHERE id = %lu AND command "
             "<> 'Sleep'",
             id);
    return scalar(sql) > 0;
}

/* "Aborted connection ID to db" lines in the server's error log. */
static int aborted(unsigned long id)
{
    char *log = slurp(getenv("LC_TEST_MY_LOG"));
    cr_assert_not_null(log);
    char needle[64];
    snprintf(needle, sizeof needle, "Aborted connection %lu ", id);
    int n = 0;
    for (char *p = log; (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(log);
    return n;
}

/* The server logs an abort when its thread notices the end: wait for it. */
static int aborted_within(const unsigned long *ids, int n, int timeout_ms)
{
    int total = 0;
    for (int t = 0; t <= timeout_ms; t += 50) {
        total = 0;
        for (int i = 0; i < n; i++)
            total += aborted(ids[i]);
        if (total >= n)
            break;
        sleep_ms(50);
    }
    return total;
}

/* The thread ids after "ready" (or after WORD) in the client's output. */
static int ids_after(const char *out, const char *word, unsigned long *ids, int max)
{
    const char *p = strstr(out, word);
    if (p == NULL)
        return 0;
    p += strlen(word);
    int n = 0;
    char *end;
    while (n < max) {
        unsigned long v = strtoul(p, &end, 10);
        if (end == p)
            break;
        ids[n++] = v;
        p = end;
    }
    return n;
}

static void start_client(struct proc *p, int preload, const char *const *env,
                         const char *const *argv, unsigned long *ids, int max, int *n)
{
    struct run_opts o = {.preload = preload, .env = env};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "ready", 15000), 0, "%s%s", p->out, p->err);
    /* The whole line: the ids follow the word. */
    for (int t = 0; t < 5000 && !strchr(strstr(p->out, "ready"), '\n'); t += 20)
        proc_wait_for(p, "\x01", 20); /* reads for 20 ms */
    *n = ids_after(p->out, "ready", ids, max);
    cr_assert_gt(*n, 0, "[%s] %s", p->out, p->err);
}

Test(mysql, exit_with_open_transactions_leaves_no_aborted_connection)
{
    const char *argv[] = {CLIENT, "tx", "3", NULL};
    unsigned long ids[8];
    int n;
    struct proc p;

    /* Without lastcall: every connection ends without COM_QUIT. */
    start_client(&p, 0, NULL, argv, ids, 8, &n);
    cr_assert_eq(proc_wait(&p, 15000, NULL), 0);
    int without = aborted_within(ids, n, 5000);
    fprintf(stderr, "exit() with %d open transactions: %d 'Aborted connection' lines without "
                    "lastcall, ",
            n, without);
    cr_assert_eq(without, n, "without lastcall the server should log each abort");

    start_client(&p, 1, NULL, argv, ids, 8, &n);
    cr_assert_eq(proc_wait(&p, 15000, NULL), 0, "%s", p.err);
    for (int i = 0; i < n; i++)
        cr_assert_eq(wait_thread_gone(ids[i], 5000), 0);
    int with = aborted_within(ids, n, 1000);
    fprintf(stderr, "%d with\n", with);
    cr_assert_eq(with, 0, "%s", p.err);
    /* Rolled back: the row lock is free again at once. */
    cr_assert_eq(scalar("SELECT COUNT(*) FROM t WHERE id = 1"), 1);
}

Test(mysql, exit_over_tcp_leaves_no_aborted_connection)
{
    const char *argv[] = {CLIENT, "tcp", "tx", "2", NULL};
    unsigned long ids[8];
    int n;
    struct proc p;
    start_client(&p, 1, NULL, argv, ids, 8, &n);
    cr_assert_eq(proc_wait(&p, 15000, NULL), 0, "%s", p.err);
    for (int i = 0; i < n; i++)
        cr_assert_eq(wait_thread_gone(ids[i], 5000), 0);
    cr_assert_eq(aborted_within(ids, n, 1000), 0);
}

static void sigterm_during_sleep(const char *mode)
{
    const char *env[] = {"LASTCALL_GRACE=300ms", "LASTCALL_LOG=info", NULL};
    const char *argv[] = {CLIENT, mode, "60", NULL};
    unsigned long id;
    int n;
    struct proc p;
    start_client(&p, 1, env, argv, &id, 1, &n);
    for (int t = 0; t < 5000 && !thread_busy(id); t += 20)
        sleep_ms(20);
    cr_assert(thread_busy(id), "the query never started");
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int st = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %d: %s", st, p.err);
    /* The grace period was waited, the query cancelled, the thread is gone. */
    cr_assert_geq(ms, 250, "died after %lld ms: %s", (long long)ms, p.err);
    cr_assert_lt(ms, 5000 + slack_ms(), "%s", p.err);
    cr_assert_eq(wait_thread_gone(id, 3000), 0, "the server thread is still there");
    cr_assert(strstr(p.err, "1 query cancelled"), "%s", p.err);
    cr_assert(strstr(p.err, "1 MySQL"), "%s", p.err);
    cr_assert_eq(aborted_within(&id, 1, 500), 0, "%s", p.err);
}

Test(mysql, sigterm_during_a_query_cancels_it_after_the_grace)
{
    sigterm_during_sleep("sleep");
}

Test(mysql, sigterm_after_send_query_cancels_the_unread_query)
{
    sigterm_during_sleep("send");
}

Test(mysql, sigterm_during_a_prepared_statement_cancels_it)
{
    sigterm_during_sleep("stmt");
}

/* The non-blocking API: connected with mysql_real_connect_start/_cont, a
 * query started and left unfinished (no thread inside the library). */
Test(mysql, sigterm_with_a_non_blocking_query_under_way)
{
    sigterm_during_sleep("async");
}

Test(mysql, sigterm_while_a_result_is_streamed)
{
    const char *env[] = {"LASTCALL_GRACE=200ms", "LASTCALL_LOG=info", NULL};
    const char *argv[] = {CLIENT, "stream", NULL};
    unsigned long id;
    int n;
    struct proc p;
    start_client(&p, 1, env, argv, &id, 1, &n);
    cr_assert(thread_busy(id), "the server should still be sending rows");
    kill(p.pid, SIGTERM);
    int st = proc_wait(&p, 10000, NULL);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %d: %s", st, p.err);
    cr_assert(strstr(p.err, "1 query cancelled"), "a streamed set counts as busy: %s", p.err);
    cr_assert_eq(wait_thread_gone(id, 3000), 0);
    cr_assert_eq(aborted_within(&id, 1, 500), 0, "%s", p.err);
}

Test(mysql, the_programs_own_close_after_sigterm_is_graceful)
{
    const char *argv[] = {CLIENT, "handler", NULL};
    unsigned long id;
    int n;
    struct proc p;
    start_client(&p, 1, NULL, argv, &id, 1, &n);
    kill(p.pid, SIGTERM);
    int st = proc_wait(&p, 10000, NULL);
    cr_assert_eq(st, 0, "status %d: %s%s", st, p.out, p.err);
    cr_assert(strstr(p.out, "closed"), "%s", p.out);
    cr_assert_eq(wait_thread_gone(id, 3000), 0);
    cr_assert_eq(aborted_within(&id, 1, 500), 0, "%s", p.err);
}

/* libmariadb reconnects by itself (MYSQL_OPT_RECONNECT) through its own
 * exports, on a MYSQL of its own that it copies over the program's: the
 * program's handle stays the one tracked, and its new connection is closed. */
Test(mysql, an_automatic_reconnect_keeps_the_handle_tracked)
{
    const char *env[] = {"LASTCALL_LOG=debug", NULL};
    const char *argv[] = {CLIENT, "reconnect", NULL};
    struct run_opts o = {.preload = 1, .env = env};
    struct proc p;
    int st = run(&o, argv, &p, 15000);
    cr_assert_eq(st, 0, "%s%s", p.out, p.err);
    unsigned long ids[2];
    cr_assert_eq(ids_after(p.out, "ready", ids, 2), 2, "%s", p.out);
    cr_assert_neq(ids[0], ids[1], "no reconnect happened");
    int opens = 0;
    for (const char *q = p.err; (q = strstr(q, "open MySQL")) != NULL; q++)
        opens++;
    cr_assert_eq(opens, 1, "the library's own connection must not be tracked: %s", p.err);
    cr_assert(strstr(p.err, "drained 1 MySQL"), "%s", p.err);
    cr_assert_eq(wait_thread_gone(ids[0], 3000), 0);
    cr_assert_eq(aborted_within(&ids[0], 1, 500), 0, "%s", p.err);
}

/* What the drain logs, at its most verbose, never holds the password. */
Test(mysql, the_password_is_never_logged_or_reported)
{
    char rep[600], env_rep[700];
    snprintf(rep, sizeof rep, "%s/report-pw.json", getenv("LC_TEST_MY_DIR"));
    snprintf(env_rep, sizeof env_rep, "LASTCALL_REPORT=%s", rep);
    const char *env[] = {"LASTCALL_LOG=debug", "LASTCALL_GRACE=200ms", env_rep,
                         "LASTCALL_REPORT_FORMAT=json", NULL};
    const char *argv[] = {CLIENT, "sleep", "60", NULL};
    unsigned long id;
    int n;
    struct proc p;
    start_client(&p, 1, env, argv, &id, 1, &n);
    sleep_ms(100);
    kill(p.pid, SIGTERM);
    proc_wait(&p, 10000, NULL);
    cr_assert(strstr(p.err, "1 query cancelled"), "%s", p.err);
    const char *pw = getenv("LC_TEST_MY_PASSWORD");
    cr_assert_null(strstr(p.err, pw), "%s", p.err);
    cr_assert_null(strstr(p.out, pw), "%s", p.out);
    char *r = slurp(rep);
    cr_assert_not_null(r);
    cr_assert_null(strstr(r, pw), "%s", r);
    free(r);
}

Test(mysql, lastcall_status_shows_mysql_idle_in_transaction)
{
    const char *argv[] = {CLIENT, "idle", NULL};
    unsigned long id;
    int n;
    struct proc p, st;
    start_client(&p, 1, NULL, argv, &id, 1, &n);
    char pid[16];
    snprintf(pid, sizeof pid, "%d", (int)p.pid);
    const char *status[] = {LAUNCHER, "status", pid, NULL};
    struct run_opts o = {0};
    int s = run(&o, status, &st, 10000);
    cr_assert_eq(s, 0, "%s%s", st.out, st.err);
    cr_assert(strstr(st.out, "MySQL: 1 live (in flight 0, idle 0, idle in transaction 1, "
                             "failed 0)"),
              "%s", st.out);
    cr_assert(strstr(st.out, "PostgreSQL: 0 live"), "%s", st.out);
    const char *json[] = {LAUNCHER, "status", "--json", pid, NULL};
    s = run(&o, json, &st, 10000);
    cr_assert_eq(s, 0, "%s%s", st.out, st.err);
    cr_assert(strstr(st.out, "\"mysql\": {"), "%s", st.out);
    kill(p.pid, SIGTERM);
    proc_wait(&p, 10000, NULL);
}

static void sigterm_mid_transaction(const char *const *argv, const char *what)
{
    unsigned long ids[2];
    int n;
    struct proc p;
    int counts[2];
    for (int with = 0; with < 2; with++) {
        start_client(&p, with, NULL, argv, ids, 2, &n);
        kill(p.pid, SIGTERM);
        int st = proc_wait(&p, 10000, NULL);
        cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %d: %s", st, p.err);
        cr_assert_eq(wait_thread_gone(ids[0], 5000), 0);
        counts[with] = aborted_within(ids, 1, with ? 500 : 5000);
    }
    fprintf(stderr,
            "%s SIGTERM'd mid-transaction: 'Aborted connection' %d without lastcall, %d with\n",
            what, counts[0], counts[1]);
    cr_assert_eq(counts[0], 1);
    cr_assert_eq(counts[1], 0);
}

Test(mysql, python_mysqldb_sigterm_mid_transaction)
{
    const char *code =
        "import MySQLdb, os, sys, time\n"
        "c = MySQLdb.connect(unix_socket=os.environ['LC_TEST_MY_SOCK'],"
        " user=os.environ['LC_TEST_MY_USER'], passwd=os.environ['LC_TEST_MY_PASSWORD'],"
        " db=os.environ['LC_TEST_MY_DB'])\n"
        "cur = c.cursor()\n"
        "cur.execute('UPDATE t SET v = v + 1 WHERE id = 1')\n"
        "print('ready', c.thread_id(), flush=True)\n"
        "time.sleep(60)\n";
    const char *argv[] = {"/usr/bin/python3", "-c", code, NULL};
    sigterm_mid_transaction(argv, "python3-mysqldb");
}

Test(mysql, perl_dbd_mariadb_sigterm_mid_transaction)
{
    const char *code =
        "use DBI; $| = 1;"
        "my $d = DBI->connect(\"DBI:MariaDB:database=$ENV{LC_TEST_MY_DB};"
        "mariadb_socket=$ENV{LC_TEST_MY_SOCK}\", $ENV{LC_TEST_MY_USER},"
        " $ENV{LC_TEST_MY_PASSWORD}, {RaiseError => 1, AutoCommit => 0});"
        "$d->do('UPDATE t SET v = v + 1 WHERE id = 1');"
        "print 'ready ', $d->{mariadb_thread_id}, \"\\n\"; sleep 60;";
    const char *argv[] = {"perl", "-e", code, NULL};
    sigterm_mid_transaction(argv, "Perl DBD::MariaDB");
}

Test(mysql, doctor_says_no_for_the_static_mariadb_client)
{
    struct run_opts o = {0};
    struct proc p;
    const char *argv[] = {LAUNCHER, "doctor", "mariadb", NULL};
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 1, "status %d: %s", s, p.out);
    cr_assert(strstr(p.out, "no:") && strstr(p.out, "mysql_real_connect"), "%s", p.out);

    const char *client[] = {LAUNCHER, "doctor", CLIENT, NULL};
    s = run(&o, client, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.out);
    cr_assert(strstr(p.out, "yes:") && strstr(p.out, "libmariadb"), "%s", p.out);
}

Test(mysql, fork_child_drains_only_its_own_connection)
{
    const char *argv[] = {CLIENT, "fork", NULL};
    /* The child starts its own drain thread; ThreadSanitizer refuses new
     * threads after a multi-threaded fork unless told otherwise. */
    const char *tsan[] = {"TSAN_OPTIONS=halt_on_error=1:exitcode=66:report_signal_unsafe=0:"
                          "die_after_fork=0",
                          NULL};
    struct run_opts o = {.preload = 1, .env = getenv("LASTCALL_TEST_TSAN") ? tsan : NULL};
    struct proc p;
    int st = run(&o, argv, &p, 20000);
    cr_assert_eq(st, 0, "%s%s", p.out, p.err);
    unsigned long child, parent;
    cr_assert_eq(ids_after(p.out, "child", &child, 1), 1, "%s", p.out);
    cr_assert_eq(ids_after(p.out, "ready", &parent, 1), 1, "the parent's connection broke: %s%s",
                 p.out, p.err);
    cr_assert(strstr(p.out, "child-status 0"), "%s", p.out);
    cr_assert_eq(wait_thread_gone(child, 3000), 0);
    cr_assert_eq(wait_thread_gone(parent, 3000), 0);
    unsigned long both[2] = {child, parent};
    cr_assert_eq(aborted_within(both, 2, 500), 0, "%s", p.err);
}

Test(mysql, a_stalled_server_ends_within_the_deadline)
{
    const char *env[] = {"LASTCALL_DEADLINE=1500ms", "LASTCALL_GRACE=300ms", NULL};
    const char *argv[] = {CLIENT, "idle", NULL};
    unsigned long id;
    int n;
    struct proc p;
    start_client(&p, 1, env, argv, &id, 1, &n);
    char *pidtext = slurp(getenv("LC_TEST_MY_PIDFILE"));
    cr_assert_not_null(pidtext);
    pid_t server = (pid_t)atol(pidtext);
    free(pidtext);
    kill(server, SIGSTOP);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int st = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    kill(server, SIGCONT);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %d: %s", st, p.err);
    cr_assert_lt(ms, 1500 + 300 + slack_ms(), "took %lld ms: %s", (long long)ms, p.err);
    cr_assert_eq(wait_thread_gone(id, 5000), 0);
}

Test(mysql, leak_report_lists_mysql_in_text_and_json)
{
    char text[600], json[600], env_text[700], env_json[700];
    snprintf(text, sizeof text, "%s/report.txt", getenv("LC_TEST_MY_DIR"));
    snprintf(json, sizeof json, "%s/report.json", getenv("LC_TEST_MY_DIR"));
    snprintf(env_text, sizeof env_text, "LASTCALL_REPORT=%s", text);
    snprintf(env_json, sizeof env_json, "LASTCALL_REPORT=%s", json);
    const char *argv[] = {CLIENT, "leak", "2", NULL};
    struct proc p;
    const char *e1[] = {env_text, "LASTCALL_STACKS=1", NULL};
    struct run_opts o = {.preload = 1, .env = e1};
    cr_assert_eq(run(&o, argv, &p, 15000), 0, "%s", p.err);
    char *r = slurp(text);
    cr_assert_not_null(r, "%s", p.err);
    cr_assert(strstr(r, "MySQL      opened 3, closed by the program 0, failed connects 1, left "
                        "open 2 (closed by lastcall 2), failed and never freed 1"),
              "%s", r);
    cr_assert(strstr(r, "2 MySQL connections to"), "%s", r);
    cr_assert(strstr(r, "1 MySQL failed connect to (never connected) never freed"), "%s", r);
    cr_assert(strstr(r, "PostgreSQL opened 0"), "the first two kinds stay listed: %s", r);
    free(r);

    const char *e2[] = {env_json, "LASTCALL_REPORT_FORMAT=json", NULL};
    o.env = e2;
    cr_assert_eq(run(&o, argv, &p, 15000), 0, "%s", p.err);
    r = slurp(json);
    cr_assert_not_null(r, "%s", p.err);
    cr_assert(strstr(r, "\"mysql\": {\"opened\": 3, \"closed\": 0, \"failed\": 1, \"leaked\": 2"),
              "%s", r);
    cr_assert(strstr(r, "{\"kind\": \"mysql\", \"count\": 2"), "%s", r);
    free(r);

    /* A program that uses no MySQL: the report is as it always was. */
    const char *closed[] = {CLIENT, "close", NULL};
    o.env = e1;
    cr_assert_eq(run(&o, closed, &p, 15000), 0, "%s", p.err);
    r = slurp(text);
    cr_assert(strstr(r, "MySQL      opened 1, closed by the program 1"), "%s", r);
    cr_assert(strstr(r, "No leaks."), "%s", r);
    free(r);
}

int main(int argc, char **argv)
{
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    criterion_options.jobs = 1; /* the error log and the server are shared */
    if (criterion_handle_args(argc, argv, true)) {
        if (mariadb_start() != 0) {
            fprintf(stderr, "test_mysql: mariadbd did not start\n");
            exit(2);
        }
        result = !criterion_run_all_tests(tests);
        mariadb_stop();
    }
    criterion_finalize(tests);
    return result;
}
