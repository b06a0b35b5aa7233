/* The drain thread starts only when a drain needs it (issue 13, item 1):
 * a single-threaded program stays single-threaded (glibc's malloc keeps its
 * lock-free mode), and a signal that finds it anywhere (blocked, inside
 * libc, inside libpq, inside a query) still drains every connection. Each
 * case runs with and without lastcall. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/lazy_client")

static int tasks_of(const struct proc *p)
{
    const char *t = strstr(p->out, "tasks ");
    return t ? atoi(t + 6) : -1;
}

/* Starts MODE with NPG connections; returns its thread count once ready. */
static int start(struct proc *p, int preload, const char *mode, const char *npg, const char *app,
                 const char *const *env)
{
    const char *argv[] = {CLIENT, mode, npg, NULL};
    struct run_opts o = {.preload = preload, .app = app, .env = env};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "ready", 30000), 0, "%s did not get ready: %s", mode, p->err);
    return tasks_of(p);
}

static int is_tsan(void)
{
    return getenv("LASTCALL_TEST_TSAN") != NULL;
}

Test(lazy_thread, a_single_threaded_program_stays_single_threaded)
{
    if (is_tsan())
        cr_skip_test("under TSan the drain thread starts at the first connect (DESIGN.md)");
    struct proc a, b;
    int without = start(&a, 0, "idle", "2", "lazy_st_without", NULL);
    int with = start(&b, 1, "idle", "2", "lazy_st_with", NULL);
    kill(a.pid, SIGKILL);
    proc_wait(&a, 10000, NULL);
    kill(b.pid, SIGTERM);
    int status = proc_wait(&b, 10000, NULL);
    fprintf(stderr, "threads once connected: without lastcall %d, with %d\n", without, with);
    cr_assert_eq(without, 1);
    cr_assert_eq(with, 1, "lastcall started a thread in a single-threaded program");
    cr_assert(died_by(status, SIGTERM), "status %d: %s", status, b.err);
    cr_assert_eq(pg_wait_backends_gone("lazy_st_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("lazy_st_with"), 0);
    pg_wait_backends_gone("lazy_st_without", 10000);
    cr_assert_eq(pg_log_abrupt("lazy_st_without"), 2, "the problem did not show without lastcall");
}

Test(lazy_thread, the_programs_first_thread_brings_the_drain_thread)
{
    if (is_tsan())
        cr_skip_test("under TSan the drain thread starts at the first connect");
    struct proc a, b;
    int without = start(&a, 0, "thread", "1", "lazy_thr_without", NULL);
    int with = start(&b, 1, "thread", "1", "lazy_thr_with", NULL);
    kill(a.pid, SIGKILL);
    proc_wait(&a, 10000, NULL);
    kill(b.pid, SIGTERM);
    int status = proc_wait(&b, 10000, NULL);
    cr_assert_eq(without, 2);
    cr_assert_eq(with, 3, "with lastcall: %d threads", with);
    cr_assert(died_by(status, SIGTERM), "status %d: %s", status, b.err);
    cr_assert_eq(pg_wait_backends_gone("lazy_thr_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("lazy_thr_with"), 0);
}

/* SIGTERM at a random moment of a program busy in MODE: it dies by SIGTERM,
 * drained, every time. */
static void random_moments(const char *mode, const char *app, int trials)
{
    const char *env[] = {"LASTCALL_LOG=info", NULL};
    srand((unsigned)getpid());
    int drained = 0;
    for (int i = 0; i < trials; i++) {
        struct proc p;
        start(&p, 1, mode, "2", app, env);
        sleep_ms(20 + rand() % 80);
        kill(p.pid, SIGTERM);
        int status = proc_wait(&p, 10000, NULL);
        cr_assert(died_by(status, SIGTERM), "trial %d: status %d; stderr: %s", i, status, p.err);
        cr_assert(strstr(p.err, "SIGTERM: drained 2 PostgreSQL") != NULL,
                  "trial %d: no drain: %s", i, p.err);
        drained++;
    }
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    int abrupt = pg_log_abrupt(app);
    if (abrupt)
        pg_log_dump_app(app);
    cr_assert_eq(abrupt, 0);
    fprintf(stderr, "%s: %d of %d SIGTERMs at random moments drained\n", mode, drained, trials);
}

/* 25 trials in the suite; LASTCALL_STRESS_TRIALS in the long run
 * (`meson test -C build --suite stress`: 200). */
static int trials(void)
{
    const char *t = getenv("LASTCALL_STRESS_TRIALS");
    return t && atoi(t) > 0 ? atoi(t) : 25;
}

Test(lazy_thread, signals_inside_libc_are_drained)
{
    random_moments("libc", "lazy_libc", trials());
}

Test(lazy_thread, signals_inside_libpq_are_drained)
{
    random_moments("queries", "lazy_queries", trials());
}

/* A program that switches SIGTERM between SIG_DFL and SIG_IGN: a SIGTERM that
 * found SIG_DFL dooms the process even if the program ignores the signal a
 * moment later, while the drain waits for a safe point (its retry comes as a
 * SIGTERM; the kernel would drop it under SIG_IGN). */
Test(lazy_thread, a_signal_that_found_sig_dfl_is_drained_whatever_comes_next)
{
    const char *env[] = {"LASTCALL_LOG=info", NULL};
    /* Under a sanitizer nearly all of this loop is the runtime's malloc and
     * memcpy (unsafe points): the drain may wait longer than the 20 ms
     * between two signals, and a second managed signal ends the process at
     * once, undrained, by design. */
    if (getenv("LASTCALL_TEST_PRELOAD_FIRST"))
        cr_skip_test("plain build only: safe points are rare under a sanitizer runtime");
    for (int i = 0; i < 10; i++) {
        struct proc p;
        start(&p, 1, "flip", "2", "lazy_flip", env);
        /* A SIGTERM that finds SIG_IGN is dropped: send until one finds SIG_DFL. */
        for (int tries = 0; tries < 500 && !proc_exited(p.pid); tries++) {
            kill(p.pid, SIGTERM);
            sleep_ms(20);
        }
        int status = proc_wait(&p, 10000, NULL);
        cr_assert(died_by(status, SIGTERM), "trial %d: status %d: %s", i, status, p.err);
        cr_assert(strstr(p.err, "SIGTERM: drained 2 PostgreSQL") != NULL,
                  "trial %d: died undrained: %s", i, p.err);
    }
    cr_assert_eq(pg_wait_backends_gone("lazy_flip", 10000), 0);
    cr_assert_eq(pg_log_abrupt("lazy_flip"), 0);
}

Test(lazy_thread, a_running_query_is_cancelled_after_the_grace)
{
    const char *env[] = {"LASTCALL_GRACE=300ms", "LASTCALL_LOG=info", NULL};
    struct proc p;
    start(&p, 1, "sleep", "1", "lazy_sleep", env);
    cr_assert_eq(wait_active_query("lazy_sleep", 10000), 0);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int status = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    cr_assert(died_by(status, SIGTERM), "status %d: %s", status, p.err);
    cr_assert(strstr(p.err, "1 query cancelled") != NULL, "%s", p.err);
    cr_assert(ms < 5000 + slack_ms(), "took %lld ms", (long long)ms);
    cr_assert_eq(pg_wait_backends_gone("lazy_sleep", 10000), 0);
    cr_assert_eq(pg_log_abrupt("lazy_sleep"), 0);
}

/* exit() from a handler of a signal lastcall does not manage: the status is
 * the program's, nothing crashes; at a safe point (the program was blocked)
 * the connections are drained. */
Test(lazy_thread, exit_from_a_signal_handler)
{
    const char *env[] = {"LASTCALL_LOG=info", NULL};
    struct proc p;
    start(&p, 0, "exit-idle", "2", "lazy_exit_without", NULL);
    int status = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3, "without: status %d", status);
    start(&p, 1, "exit-idle", "2", "lazy_exit_with", env);
    status = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3, "status %d: %s", status, p.err);
    cr_assert(strstr(p.err, "exit: drained 2 PostgreSQL") != NULL, "%s", p.err);
    cr_assert_eq(pg_wait_backends_gone("lazy_exit_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("lazy_exit_with"), 0);
    pg_wait_backends_gone("lazy_exit_without", 10000);
    cr_assert_eq(pg_log_abrupt("lazy_exit_without"), 2);

    /* Inside libc: drained when the handler interrupted a safe point, left to
     * the kernel (one line) when not; never a crash. */
    int left = 0, drained = 0;
    for (int i = 0; i < 20; i++) {
        start(&p, 1, "exit-libc", "2", "lazy_exit_libc", env);
        status = proc_wait(&p, 10000, NULL);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3, "trial %d: status %d: %s", i,
                  status, p.err);
        if (strstr(p.err, "left to the kernel"))
            left++;
        else if (strstr(p.err, "exit: drained 2 PostgreSQL"))
            drained++;
        else
            cr_assert_fail("trial %d: neither drained nor left: %s", i, p.err);
    }
    fprintf(stderr, "exit() from a handler inside a libc loop: %d drained, %d left to the "
                    "kernel's close\n", drained, left);
    pg_wait_backends_gone("lazy_exit_libc", 10000);
}
