/* `lastcall status PID` (issue 15): a live view of a running program's
 * connections, asked of a real program (tests/clients/status_app) against the
 * harness's servers; every error case leaves the process unharmed. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

#define LAUNCHER build_path("shim/lastcall")
#define APP build_path("tests/clients/status_app")

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int threads_of(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    return count_entries(dir);
}

static int fds_of(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    return count_entries(dir);
}

static int alive(pid_t pid)
{
    return !proc_exited(pid);
}

static pid_t start_app(struct proc *p, const char *mode, int preload, const char *const *env,
                       const char *app)
{
    const char *argv[] = {APP, mode, NULL};
    struct run_opts o = {.preload = preload, .env = env, .app = app};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "ready pid", 15000), 0, "%s %s", p->out, p->err);
    return p->pid;
}

/* `lastcall status ARGS... PID`; returns the wait status. */
static int status_of(pid_t pid, const char *a1, const char *a2, struct proc *out)
{
    char pid_s[32];
    snprintf(pid_s, sizeof pid_s, "%d", (int)pid);
    const char *argv[6] = {LAUNCHER, "status"};
    int a = 2;
    if (a1)
        argv[a++] = a1;
    if (a2)
        argv[a++] = a2;
    argv[a++] = pid_s;
    argv[a] = NULL;
    struct run_opts o = {0};
    return run(&o, argv, out, 30000);
}

static int exit_code(int s)
{
    return WIFEXITED(s) ? WEXITSTATUS(s) : -1;
}

static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl != NULL && nl[1] == '\0';
}

static void stop_and_check_drain(struct proc *p, const char *app)
{
    kill(p->pid, SIGTERM);
    int s = proc_wait(p, 20000, NULL);
    cr_assert(WIFSIGNALED(s) && WTERMSIG(s) == SIGTERM, "status %d: %s", s, p->err);
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    cr_assert_eq(pg_log_abrupt(app), 0, "%s", p->err);
}

Test(status, a_running_program_with_leaks_text_stacks_and_json)
{
    struct proc app;
    const char *env[] = {"LASTCALL_STACKS=on", NULL};
    pid_t pid = start_app(&app, "busy", 1, env, "status_busy");
    int threads_before = threads_of(pid);

    struct proc st;
    int s = status_of(pid, NULL, NULL, &st);
    fprintf(stderr, "lastcall status %d:\n%s", (int)pid, st.out);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "PostgreSQL: 5 live (in flight 1, idle 2, idle in "
                                      "transaction 1, failed 1), oldest "), "%s", st.out);
    cr_assert_not_null(strstr(st.out, "Redis: 2 live (in flight 0, idle 2, failed 0), oldest "),
                       "%s", st.out);
    /* Per target: the failed connect's socket directory is its own target. */
    cr_assert_not_null(strstr(st.out, "/nonexistent-lastcall-dir"), "%s", st.out);
    cr_assert_not_null(strstr(st.out, ": 4 live (in flight 1, idle 2, idle in transaction 1, "
                                      "failed 0)"), "%s", st.out);
    cr_assert_null(strstr(st.out, "opened at"), "no stacks without --stacks");

    s = status_of(pid, "--stacks", NULL, &st);
    fprintf(stderr, "lastcall status --stacks %d:\n%s", (int)pid, st.out);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    const char *fns[] = {"open_idle", "open_in_transaction", "open_failing", "open_redis",
                         "run_busy"};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        cr_assert_not_null(strstr(st.out, fns[i]), "%s missing: %s", fns[i], st.out);
    cr_assert_not_null(strstr(st.out, "2 PostgreSQL connections to "), "%s", st.out);
    cr_assert_not_null(strstr(st.out, "2 Redis connections to "), "%s", st.out);
    cr_assert_not_null(strstr(st.out, "status_app.c:"), "file:line as in the leak report");

    s = status_of(pid, "--json", "--stacks", &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    char pid_s[16];
    snprintf(pid_s, sizeof pid_s, "%d", (int)pid);
    const char *args[] = {st.out, pid_s, NULL};
    char *ok = python(
        "import json, sys\n"
        "d = json.loads(sys.argv[1])\n"
        "pg, r = d['postgresql'], d['redis']\n"
        "assert d['pid'] == int(sys.argv[2]), d['pid']\n"
        "assert (pg['live'], pg['in_flight'], pg['idle'], pg['idle_in_transaction'], "
        "pg['failed']) == (5, 1, 2, 1, 1), pg\n"
        "assert (r['live'], r['idle'], r['in_flight']) == (2, 2, 0), r\n"
        "assert pg['oldest_ms'] > 0 and sum(t['live'] for t in pg['targets']) == 5\n"
        "fns = {f['function'] for g in d['stacks'] for f in g['stack']}\n"
        "assert {'open_idle', 'open_in_transaction', 'open_redis', 'run_busy'} <= fns, fns\n"
        "assert sum(g['count'] for g in d['stacks']) == 7\n"
        "print('ok')\n",
        args);
    cr_assert(ok && strcmp(ok, "ok\n") == 0, "json: %s", st.out);
    free(ok);

    /* A thread's id names its process, as for kill(1). */
    char task_dir[64];
    snprintf(task_dir, sizeof task_dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(task_dir);
    cr_assert_not_null(d);
    pid_t tid = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.' && atoi(de->d_name) != pid)
            tid = atoi(de->d_name);
    closedir(d);
    cr_assert_gt(tid, 0);
    s = status_of(tid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "PostgreSQL: 5 live"), "%s", st.out);

    /* Asked four times, the process goes on as before; a SIGTERM still
     * drains it. */
    cr_assert(alive(pid));
    /* Each answer runs on a short-lived thread: gone once answered. */
    for (int i = 0; i < 100 && threads_of(pid) != threads_before; i++)
        sleep_ms(20);
    cr_assert_eq(threads_of(pid), threads_before, "a thread of ours was left behind");
    stop_and_check_drain(&app, "status_busy");
}

Test(status, a_process_never_asked_pays_nothing_and_one_without_connections_answers)
{
    struct proc without, with;
    pid_t p0 = start_app(&without, "idle", 0, NULL, NULL);
    pid_t p1 = start_app(&with, "idle", 1, NULL, NULL);
    int t0 = threads_of(p0), t1 = threads_of(p1);
    int f0 = fds_of(p0), f1 = fds_of(p1);
    fprintf(stderr, "an idle program: %d thread(s) and %d fds without lastcall, %d and %d under "
                    "lastcall\n", t0, f0, t1, f1);
    cr_assert_eq(t1, t0);
    cr_assert_eq(f1, f0);

    struct proc st;
    int s = status_of(p1, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "PostgreSQL: 0 live\nRedis: 0 live\n"), "%s", st.out);
    s = status_of(p1, "--json", NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "\"live\": 0"), "%s", st.out);
    /* Answered from the signal handler: still no thread, no descriptor. */
    cr_assert_eq(threads_of(p1), t0);
    cr_assert_eq(fds_of(p1), f0);
    cr_assert(alive(p1));
    kill(p0, SIGKILL);
    kill(p1, SIGTERM);
    proc_wait(&without, 10000, NULL);
    int st1 = proc_wait(&with, 10000, NULL);
    cr_assert(WIFSIGNALED(st1) && WTERMSIG(st1) == SIGTERM);
}

Test(status, errors_are_clear_and_leave_the_process_unharmed)
{
    struct proc st;
    /* Does not exist: a child that has been reaped. */
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0);
    int s = status_of(gone, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "no process with pid"), "%s", st.err);
    cr_assert(one_line(st.err), "%s", st.err);

    /* Not under lastcall: nothing is sent (the signal's default action
     * would kill it). */
    struct proc plain;
    pid_t pid = start_app(&plain, "idle", 0, NULL, NULL);
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "is not running under lastcall"), "%s", st.err);
    cr_assert(one_line(st.err), "%s", st.err);
    sleep_ms(200);
    cr_assert(alive(pid));
    kill(pid, SIGKILL);
    proc_wait(&plain, 10000, NULL);

    /* Under lastcall but disabled: our handler is not there either. */
    struct proc off;
    const char *env_off[] = {"LASTCALL_DISABLE=1", NULL};
    pid = start_app(&off, "idle", 1, env_off, NULL);
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "does not answer status requests"), "%s", st.err);
    sleep_ms(200);
    cr_assert(alive(pid));
    kill(pid, SIGKILL);
    proc_wait(&off, 10000, NULL);

    /* No answer within 2 s: a stopped process. After SIGCONT it is fine and
     * answers again. */
    struct proc app;
    pid = start_app(&app, "busy", 1, NULL, "status_stopped");
    kill(pid, SIGSTOP);
    int64_t t0 = now_us();
    s = status_of(pid, NULL, NULL, &st);
    int64_t waited_ms = (now_us() - t0) / 1000;
    kill(pid, SIGCONT);
    fprintf(stderr, "a stopped process: %s", st.err);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "no answer from pid"), "%s", st.err);
    cr_assert_not_null(strstr(st.err, "within 2 s"), "%s", st.err);
    cr_assert(one_line(st.err), "%s", st.err);
    cr_assert_geq(waited_ms, 2000);
    cr_assert_leq(waited_ms, 3000 + slack_ms());
    sleep_ms(300);
    cr_assert(alive(pid));
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "PostgreSQL: 5 live"), "%s", st.out);
    stop_and_check_drain(&app, "status_stopped");

    /* Bad input: one line, status 2. */
    const char *bad[][3] = {{NULL}, {"abc"}, {"0"}, {"-5"}, {"12x"}, {"--bogus", "1"},
                            {"1", "2"}, {"99999999999"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[6] = {LAUNCHER, "status"};
        int a = 2;
        for (int k = 0; k < 2 && bad[i][k]; k++)
            argv[a++] = bad[i][k];
        argv[a] = NULL;
        struct run_opts o = {0};
        s = run(&o, argv, &st, 10000);
        cr_assert_eq(exit_code(s), 2, "case %zu: %s", i, st.err);
        cr_assert_not_null(strstr(st.err, "lastcall status: "), "%s", st.err);
        cr_assert_null(strstr(st.err, "\n\n"), "%s", st.err);
    }
}

/* Same user or root: a user may not ask about another user's process (the
 * kernel would not let it signal it either), and may ask about its own. */
Test(status, permission_denied_for_another_user_allowed_for_the_same)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to run the two sides as different users");
    struct proc app;
    pid_t pid = start_app(&app, "idle", 1, NULL, NULL);
    char pid_s[16];
    snprintf(pid_s, sizeof pid_s, "%d", (int)pid);
    const char *as_nobody[] = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               LAUNCHER, "status", pid_s, NULL};
    struct run_opts o = {0};
    struct proc st;
    int s = run(&o, as_nobody, &st, 10000);
    cr_assert_eq(exit_code(s), 1, "%s", st.err);
    cr_assert_not_null(strstr(st.err, "permission denied"), "%s", st.err);
    cr_assert(one_line(st.err), "%s", st.err);
    sleep_ms(200);
    cr_assert(alive(pid));
    kill(pid, SIGTERM);
    proc_wait(&app, 10000, NULL);

    /* Both sides nobody. */
    const char *app_argv[] = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              APP, "idle", NULL};
    struct run_opts ao = {.preload = 1};
    proc_start(&app, &ao, app_argv);
    cr_assert_eq(proc_wait_for(&app, "ready pid", 10000), 0, "%s", app.err);
    snprintf(pid_s, sizeof pid_s, "%d", (int)app.pid);
    s = run(&o, as_nobody, &st, 10000);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    cr_assert_not_null(strstr(st.out, "PostgreSQL: 0 live"), "%s", st.out);
    kill(app.pid, SIGTERM);
    proc_wait(&app, 10000, NULL);
}

/* The status signal stays the program's: its own handler gets its own
 * signals (and never a status request); ignored, lastcall status refuses
 * rather than send it; under the default action it kills, as it would. */
Test(status, the_signal_is_not_taken_from_the_program)
{
    int sig = SIGRTMAX - 7;
    struct proc own;
    pid_t pid = start_app(&own, "own", 1, NULL, NULL);
    struct proc st;
    int s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    union sigval v = {.sival_int = 42};
    sigqueue(pid, sig, v);
    kill(pid, sig);
    cr_assert_eq(proc_wait_for(&own, "own 42", 5000), 0, "%s", own.out);
    cr_assert_eq(proc_wait_for(&own, "own 0", 5000), 0, "%s", own.out);
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 0, "%s", st.err);
    sleep_ms(200);
    kill(pid, SIGKILL);
    proc_wait(&own, 10000, NULL);
    int calls = 0;
    for (const char *p = own.out; (p = strstr(p, "own ")) != NULL; p++)
        calls++;
    cr_assert_eq(calls, 2, "the program's handler saw only its two signals: %s", own.out);

    struct proc ign;
    pid = start_app(&ign, "ignore", 1, NULL, NULL);
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "ignores signal"), "%s", st.err);
    kill(pid, sig);
    sleep_ms(200);
    cr_assert(alive(pid));
    kill(pid, SIGKILL);
    proc_wait(&ign, 10000, NULL);

    /* Blocked on every thread (a program reading it with signalfd or
     * sigwait): refused, nothing queued for the program to read. */
    struct proc blk;
    pid = start_app(&blk, "block", 1, NULL, NULL);
    s = status_of(pid, NULL, NULL, &st);
    cr_assert_eq(exit_code(s), 1);
    cr_assert_not_null(strstr(st.err, "on every thread; nothing was sent"), "%s", st.err);
    char spath[64];
    snprintf(spath, sizeof spath, "/proc/%d/status", (int)pid);
    char *pst = slurp(spath);
    const char *shdpnd = pst ? strstr(pst, "\nShdPnd:\t") : NULL;
    cr_assert(shdpnd && strtoull(shdpnd + 9, NULL, 16) == 0, "a signal was queued: %s", pst);
    free(pst);
    kill(pid, SIGKILL);
    proc_wait(&blk, 10000, NULL);

    /* Default action, with and without lastcall: death by the signal. */
    for (int preload = 0; preload < 2; preload++) {
        struct proc d;
        pid = start_app(&d, "idle", preload, NULL, NULL);
        kill(pid, sig);
        s = proc_wait(&d, 10000, NULL);
        cr_assert(WIFSIGNALED(s) && WTERMSIG(s) == sig, "preload %d: status %d", preload, s);
    }
}

/* unshare --fork has one child: the namespace's PID 1, seen from here. */
/* As PID 1 of a PID namespace (a container's entrypoint): a stray status
 * signal under the default disposition is dropped by the kernel, with or
 * without lastcall; asked from outside the namespace, it answers. */
Test(status, as_pid1_a_stray_signal_is_dropped_and_status_answers)
{
    skip_unless_pid_namespace();
    for (int preload = 0; preload < 2; preload++) {
        const char *argv[] = {"unshare", "--pid", "--fork", "--mount-proc", APP, "idle", NULL};
        struct run_opts o = {.preload = preload};
        struct proc p;
        proc_start(&p, &o, argv);
        cr_assert_eq(proc_wait_for(&p, "ready pid 1", 10000), 0, "%s", p.err);
        pid_t pid1 = pid1_of(p.pid);
        cr_assert_gt(pid1, 0);
        kill(pid1, SIGRTMAX - 7);
        sleep_ms(300);
        cr_assert(alive(pid1), "preload %d: PID 1 died of a stray signal", preload);
        if (preload) {
            struct proc st;
            int s = status_of(pid1, NULL, NULL, &st);
            cr_assert_eq(exit_code(s), 0, "%s", st.err);
            char head[96];
            snprintf(head, sizeof head, "lastcall status: pid %d (1 in its PID namespace), ",
                     (int)pid1);
            cr_assert_not_null(strstr(st.out, head), "%s", st.out);
        }
        kill(pid1, SIGKILL);
        proc_wait(&p, 10000, NULL);
    }
}
