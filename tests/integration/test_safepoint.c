/* Issue 19, the lazy drain thread's safe points and the program's view of
 * its signal dispositions. Each case runs with and without lastcall. */
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

static const char *script(const char *name)
{
    static char path[4][1024];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/tests/clients/%s", getenv("LASTCALL_SOURCE_ROOT"), name);
    return p;
}

/* Starts ARGV, waits for "ready" and a moment of work, sends SIGTERM; returns
 * the wait status, *MS the time from the signal to the end. */
static int sigterm_after_work(const char *const *argv, int preload, const char *app,
                              const char *const *env, int work_ms, int64_t *ms)
{
    struct proc p;
    struct run_opts o = {.preload = preload, .app = app, .env = env};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "%s did not get ready: %s", app, p.err);
    sleep_ms(work_ms);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int status = proc_wait(&p, 15000, NULL);
    *ms = (now_us() - t0) / 1000;
    if (preload && !died_by(status, SIGTERM))
        fprintf(stderr, "%s: status %d: %s\n", app, status, p.err);
    return status;
}

/* Case 5: Debian's python3 is not PIE and holds the canonical PLT entry of
 * malloc; the interpreter's own code must count as a safe point. */
Test(safepoint, python_running_python_code_is_drained_at_once)
{
    const char *argv[] = {"/usr/bin/python3", script("py_batch.py"), NULL};
    const char *env[] = {"LASTCALL_LOG=info", "LASTCALL_GRACE=3s", NULL};
    int64_t ms;
    int status = sigterm_after_work(argv, 0, "py_batch_without", NULL, 200, &ms);
    cr_assert(died_by(status, SIGTERM), "without lastcall: status %d", status);
    pg_wait_backends_gone("py_batch_without", 10000);
    cr_assert_eq(pg_log_abrupt("py_batch_without"), 1, "the problem did not show without lastcall");
    int64_t worst = 0;
    for (int i = 0; i < 8; i++) {
        status = sigterm_after_work(argv, 1, "py_batch_with", env, 100 + 50 * i, &ms);
        cr_assert(died_by(status, SIGTERM), "trial %d: status %d", i, status);
        worst = ms > worst ? ms : worst;
        cr_assert_lt(ms, 1000 + slack_ms(), "trial %d: %lld ms after the signal", i, (long long)ms);
    }
    cr_assert_eq(pg_wait_backends_gone("py_batch_with", 10000), 0);
    int abrupt = pg_log_abrupt("py_batch_with");
    if (abrupt)
        pg_log_dump_app("py_batch_with");
    cr_assert_eq(abrupt, 0);
    fprintf(stderr, "python3 in pure-Python work, SIGTERM: 8 of 8 drained, slowest %lld ms\n",
            (long long)worst);
}

/* Case 2's lock: a signal that finds the program inside a dlopen'd object's
 * constructor (ld.so holds its load lock for it) must not park it there, or
 * the drain's first loader call waits for good. The drain waits for the
 * constructor to return, then drains. */
Test(safepoint, a_constructor_under_the_loader_lock_is_not_a_safe_point)
{
    char plugin[1200];
    snprintf(plugin, sizeof plugin, "LC_CTOR_PLUGIN=%s", build_path("tests/clients/ctor_sleep.so"));
    const char *argv[] = {build_path("tests/clients/lazy_client"), "ctor", "1", NULL};
    const char *env[] = {"LASTCALL_LOG=info", plugin, NULL};
    int64_t ms;
    int status = sigterm_after_work(argv, 0, "ctor_without", env, 300, &ms);
    cr_assert(died_by(status, SIGTERM), "without lastcall: status %d", status);
    for (int i = 0; i < 6; i++) {
        struct proc p;
        struct run_opts o = {.preload = 1, .app = "ctor_with", .env = env};
        proc_start(&p, &o, argv);
        cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "%s", p.err);
        sleep_ms(100 + 70 * i);
        int64_t t0 = now_us();
        kill(p.pid, SIGTERM);
        status = proc_wait(&p, 15000, NULL);
        ms = (now_us() - t0) / 1000;
        cr_assert(died_by(status, SIGTERM), "trial %d: status %d: %s", i, status, p.err);
        cr_assert(strstr(p.err, "SIGTERM: drained 1 PostgreSQL"), "trial %d: %s", i, p.err);
        /* At most one constructor (200 ms) to wait out. */
        cr_assert_lt(ms, 1000 + slack_ms(), "trial %d: %lld ms", i, (long long)ms);
    }
    cr_assert_eq(pg_wait_backends_gone("ctor_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("ctor_with"), 0);
}

/* SIGTERMs at random moments to a program that switches SIGTERM between
 * SIG_DFL and SIG_IGN every 20 us, until one kills; over TRIALS processes.
 * *SENT gets the number of signals sent. */
static int flip_kills(int preload, const char *app, int trials, int *sent)
{
    const char *argv[] = {build_path("tests/clients/lazy_client"), "flip20", "1", NULL};
    const char *env[] = {"LASTCALL_LOG=info", NULL};
    int kills = 0;
    *sent = 0;
    for (int t = 0; t < trials; t++) {
        struct proc p;
        struct run_opts o = {.preload = preload, .app = app, .env = env};
        proc_start(&p, &o, argv);
        cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "%s", p.err);
        for (int tries = 0; tries < 200 && !proc_exited(p.pid); tries++) {
            sleep_ms(1 + rand() % 5);
            kill(p.pid, SIGTERM);
            ++*sent;
            for (int w = 0; w < 20 && !proc_exited(p.pid); w++)
                sleep_ms(1); /* a drain takes a few ms: no second signal meanwhile */
        }
        int status = proc_wait(&p, 10000, NULL);
        cr_assert(died_by(status, SIGTERM), "%s trial %d: status %d: %s", app, t, status, p.err);
        if (preload)
            cr_assert(strstr(p.err, "SIGTERM: drained 1 PostgreSQL"), "%s", p.err);
        kills++;
    }
    return kills;
}

/* Case 7: the share of SIGTERMs that kill is the same with lastcall as
 * without (a SIGTERM that came under SIG_DFL while the program's sigaction()
 * held our lock used to be discarded by its SIG_IGN: 30-37 % instead of 50 %). */
Test(safepoint, sigterm_under_sig_dfl_is_never_lost)
{
    if (getenv("LASTCALL_TEST_PRELOAD_FIRST"))
        cr_skip_test("plain build only: a sanitizer runtime changes the phases' lengths");
    srand((unsigned)getpid());
    int sent_without, sent_with;
    int k_without = flip_kills(0, "flip_without", 250, &sent_without);
    int k_with = flip_kills(1, "flip_with", 250, &sent_with);
    double p1 = (double)k_without / sent_without, p2 = (double)k_with / sent_with;
    double p = (double)(k_without + k_with) / (sent_without + sent_with);
    /* A two-proportion z-test, at 4 sigma: z^2 against 16 (no libm here). */
    double z2 = (p1 - p2) * (p1 - p2) / (p * (1 - p) * (1.0 / sent_without + 1.0 / sent_with));
    fprintf(stderr, "SIGTERM under a 20 us SIG_DFL/SIG_IGN flip: kills %d/%d (%.0f %%) without "
                    "lastcall, %d/%d (%.0f %%) with; z^2 = %.2f\n",
            k_without, sent_without, 100 * p1, k_with, sent_with, 100 * p2, z2);
    cr_assert_lt(z2, 16.0, "the kill share differs beyond noise");
    cr_assert_eq(pg_wait_backends_gone("flip_with", 10000), 0);
    cr_assert_eq(pg_log_abrupt("flip_with"), 0);
}

/* lastcall's handler copies the program's disposition while another thread
 * rewrites it: every SIGTERM reaches one of the program's two handlers with
 * the calling convention it was installed with, never a torn mix. */
Test(safepoint, handlers_rewritten_while_signals_arrive)
{
    /* Our handler is the kernel's (signals.c is not instrumented), but what
     * it calls in runtime.c is: under a storm of signals an instrumented
     * atomic there makes TSan run its deferred handlers inside ours, which
     * deadlocks on TSan's own mutex (seen: hung for good). The seqlock is
     * checked in the plain and ASan builds. */
    if (getenv("LASTCALL_TEST_TSAN"))
        cr_skip_test("TSan's deferred signals deadlock inside a handler under a signal storm");
    const char *argv[] = {build_path("tests/clients/flip_handlers"), "1500", NULL};
    for (int preload = 0; preload <= 1; preload++) {
        struct proc p;
        struct run_opts o = {.preload = preload, .app = "flip_handlers"};
        int status = run(&o, argv, &p, 30000);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s lastcall: status %d: %s",
                  preload ? "with" : "without", status, p.err);
        long a = 0, b = 0;
        const char *c = strstr(p.out, "calls ");
        cr_assert(c && sscanf(c, "calls %ld %ld", &a, &b) == 2, "%s", p.out);
        fprintf(stderr, "handlers rewritten under fire, %s lastcall: %ld + %ld calls\n",
                preload ? "with" : "without", a, b);
        cr_assert(a > 0 && b > 0);
    }
}
