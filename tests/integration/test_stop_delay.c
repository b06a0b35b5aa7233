/* LASTCALL_STOP_DELAY (issue 15): a managed signal is held back while the
 * program keeps serving (load balancers still send traffic right after
 * SIGTERM), then goes on as usual: the drain and death, or the program's own
 * handler. A second signal proceeds at once; the deadline counts from the end
 * of the delay. The service is tests/clients/stopdelay_client. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/stopdelay_client")
#define LAUNCHER build_path("shim/lastcall")

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Requests the client answered at or after T0 (monotonic ms), and the time of
 * the last one. */
static int answered_after(const struct proc *p, int64_t t0, int64_t *last)
{
    int count = 0;
    *last = 0;
    const char *s = p->out;
    while ((s = strstr(s, "answered ")) != NULL) {
        long n;
        long long t;
        if (sscanf(s, "answered %ld %lld", &n, &t) == 2 && t >= t0) {
            count++;
            if (t > *last)
                *last = t;
        }
        s += 9;
    }
    return count;
}

static int64_t handler_time(const struct proc *p)
{
    const char *s = strstr(p->out, "handler ");
    long long t;
    return s && sscanf(s, "handler %lld", &t) == 1 ? t : -1;
}

struct stopped {
    int status;
    int64_t t0;      /* when SIGTERM was sent (monotonic ms) */
    int64_t exit_ms; /* from SIGTERM to exit */
    int answered;    /* requests answered after SIGTERM */
    int64_t last;    /* the last one's time */
};

/* Runs `stopdelay_client MODE` with ENV, SIGTERMs it once it has served a
 * while, waits for its end. */
static struct stopped serve_then_term(const char *mode, const char *app,
                                      const char *const *env, struct proc *p)
{
    const char *argv[] = {CLIENT, mode, NULL};
    struct run_opts o = {.preload = 1, .app = app, .env = env};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "answered 3 ", 10000), 0, "%s %s", p->out, p->err);
    struct stopped r;
    r.t0 = mono_ms();
    kill(p->pid, SIGTERM);
    r.status = proc_wait(p, 20000, NULL);
    r.exit_ms = mono_ms() - r.t0;
    r.answered = answered_after(p, r.t0, &r.last);
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    return r;
}

Test(stop_delay, requests_are_answered_during_the_delay_then_the_drain_runs)
{
    struct proc p;
    const char *env_without[] = {"LASTCALL_LOG=info", NULL};
    struct stopped without = serve_then_term("serve", "sd_without", env_without, &p);
    cr_assert(died_by(without.status, SIGTERM), "status %d: %s", without.status, p.err);

    const char *env[] = {"LASTCALL_STOP_DELAY=1500ms", "LASTCALL_LOG=info", NULL};
    struct stopped with = serve_then_term("serve", "sd_with", env, &p);
    fprintf(stderr,
            "SIGTERM to a serving program: without a stop delay %d requests answered after "
            "it, dead after %lld ms; with LASTCALL_STOP_DELAY=1500ms %d answered (the last "
            "%lld ms after the signal), dead after %lld ms\n",
            without.answered, (long long)without.exit_ms, with.answered,
            (long long)(with.last - with.t0), (long long)with.exit_ms);
    cr_assert_leq(without.answered, 1, "the request in flight at most");
    cr_assert(died_by(with.status, SIGTERM), "status %d: %s", with.status, p.err);
    cr_assert_geq(with.answered, 10, "%s", p.out);
    cr_assert_geq(with.last - with.t0, 1300, "served until the end of the delay: %s", p.out);
    cr_assert_geq(with.exit_ms, 1500);
    cr_assert_leq(with.exit_ms, 1500 + 1000 + slack_ms());
    cr_assert_null(strstr(p.out, "failed"), "%s", p.out);
    cr_assert_eq(pg_log_abrupt("sd_with"), 0, "%s", p.err);
    cr_assert_not_null(strstr(p.err, "SIGTERM: stop delay of 1500 ms begins"), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "SIGTERM: stop delay over after"), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "drained 1 PostgreSQL"), "%s", p.err);
}

Test(stop_delay, a_second_signal_during_the_delay_proceeds_at_once)
{
    const char *argv[] = {CLIENT, "serve", NULL};
    const char *env[] = {"LASTCALL_STOP_DELAY=10s", "LASTCALL_LOG=info", NULL};
    struct run_opts o = {.preload = 1, .app = "sd_second", .env = env};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "answered 3 ", 10000), 0, "%s %s", p.out, p.err);
    int64_t t0 = mono_ms();
    kill(p.pid, SIGTERM);
    cr_assert_eq(proc_wait_for_err(&p, "stop delay of 10000 ms begins", 5000), 0, "%s", p.err);
    sleep_ms(400);
    int64_t t1 = mono_ms();
    kill(p.pid, SIGINT);
    int s = proc_wait(&p, 20000, NULL);
    int64_t after_second = mono_ms() - t1;
    int64_t last;
    int answered = answered_after(&p, t0, &last);
    fprintf(stderr, "SIGTERM, then SIGINT 400 ms into a 10 s stop delay: %d requests answered "
                    "in between, dead %lld ms after the second signal\n",
            answered, (long long)after_second);
    /* The second signal is the one that goes on: the drain, then death by it. */
    cr_assert(died_by(s, SIGINT), "status %d: %s", s, p.err);
    cr_assert_geq(answered, 3);
    cr_assert_leq(after_second, 1000 + slack_ms());
    cr_assert_not_null(strstr(p.err, "SIGINT again during the stop delay"), "%s", p.err);
    cr_assert_null(strstr(p.err, "stop delay over"), "%s", p.err);
    cr_assert_eq(pg_wait_backends_gone("sd_second", 10000), 0);
    cr_assert_eq(pg_log_abrupt("sd_second"), 0, "%s", p.err);
}

Test(stop_delay, the_programs_own_handler_runs_only_after_the_delay)
{
    struct proc p;
    const char *env_without[] = {NULL};
    struct stopped without = serve_then_term("handler", "sdh_without", env_without, &p);
    int64_t called_without = handler_time(&p) - without.t0;
    cr_assert(WIFEXITED(without.status) && WEXITSTATUS(without.status) == 0, "%s", p.err);

    const char *env[] = {"LASTCALL_STOP_DELAY=1s", "LASTCALL_LOG=info",
                         "LASTCALL_LOG_FORMAT=json", NULL};
    struct stopped with = serve_then_term("handler", "sdh_with", env, &p);
    int64_t called = handler_time(&p) - with.t0;
    fprintf(stderr, "a program's own SIGTERM handler: called %lld ms after the signal without "
                    "a stop delay, %lld ms after it with LASTCALL_STOP_DELAY=1s (%d requests "
                    "answered in between)\n",
            (long long)called_without, (long long)called, with.answered);
    cr_assert_leq(called_without, 200);
    cr_assert(handler_time(&p) > 0, "%s", p.out);
    cr_assert_geq(called, 1000);
    cr_assert_leq(called, 1000 + 500 + slack_ms());
    cr_assert_geq(with.answered, 8, "%s", p.out);
    /* The program's handler stopped it: it exits as it chose, drained at exit. */
    cr_assert(WIFEXITED(with.status) && WEXITSTATUS(with.status) == 0, "status %d: %s",
              with.status, p.err);
    cr_assert_eq(pg_log_abrupt("sdh_with"), 0, "%s", p.err);
    cr_assert_not_null(strstr(p.err, "\"event\":\"stop_delay_start\""), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "\"event\":\"stop_delay_end\""), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "\"cut_short\":false"), "%s", p.err);
}

/* With a 1 s delay and a 500 ms grace, a query in flight is cancelled 1.5 s
 * after the signal: the grace (and the deadline) start when the delay ends. */
Test(stop_delay, the_deadline_counts_from_the_end_of_the_delay)
{
    const char *argv[] = {CLIENT, "sleep", NULL};
    const char *env[] = {"LASTCALL_STOP_DELAY=1s", "LASTCALL_GRACE=500ms",
                         "LASTCALL_DEADLINE=1200ms", NULL};
    struct run_opts o = {.preload = 1, .app = "sd_deadline", .env = env};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(wait_active_query("sd_deadline", 10000), 0, "%s", p.err);
    int64_t t0 = mono_ms();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 20000, NULL);
    int64_t exit_ms = mono_ms() - t0;
    fprintf(stderr, "a query in flight, LASTCALL_STOP_DELAY=1s LASTCALL_GRACE=500ms "
                    "LASTCALL_DEADLINE=1200ms: dead %lld ms after SIGTERM\n",
            (long long)exit_ms);
    cr_assert(died_by(s, SIGTERM), "status %d: %s", s, p.err);
    cr_assert_geq(exit_ms, 1500);
    cr_assert_leq(exit_ms, 1000 + 1200 + 300 + slack_ms());
    cr_assert_eq(pg_wait_backends_gone("sd_deadline", 10000), 0);
    cr_assert_eq(pg_log_count("sd_deadline", "canceling statement due to user request"), 1);
    cr_assert_eq(pg_log_abrupt("sd_deadline"), 0, "%s", p.err);
}

/* unshare --fork has one child: the namespace's PID 1, seen from here. */
/* As PID 1 the kernel drops a signal whose disposition is the default: the
 * delay's timer must still reach lastcall's handler, and the end is the
 * status a container runtime expects, 128+15. */
Test(stop_delay, as_pid1_the_delay_holds_then_pid1_exits_143)
{
    skip_unless_pid_namespace();

    const char *argv[] = {"unshare", "--pid", "--fork", "--mount-proc", LAUNCHER,
                          "--stop-delay", "1s", "--log", "info", "--", CLIENT, "serve", NULL};
    struct run_opts o = {.app = "sd_pid1"};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready pid 1", 10000), 0, "%s %s", p.out, p.err);
    cr_assert_eq(proc_wait_for(&p, "answered 3 ", 10000), 0, "%s %s", p.out, p.err);
    pid_t pid1 = pid1_of(p.pid);
    cr_assert_gt(pid1, 0);
    int64_t t0 = mono_ms();
    kill(pid1, SIGTERM);
    int s = proc_wait(&p, 20000, NULL);
    int64_t exit_ms = mono_ms() - t0;
    int64_t last;
    int answered = answered_after(&p, t0, &last);
    fprintf(stderr, "as PID 1 with --stop-delay 1s: %d requests answered after SIGTERM, exit "
                    "status %d after %lld ms\n",
            answered, WIFEXITED(s) ? WEXITSTATUS(s) : -1, (long long)exit_ms);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 143, "status %d: %s", s, p.err);
    cr_assert_geq(answered, 8, "%s", p.out);
    cr_assert_geq(exit_ms, 1000);
    cr_assert_eq(pg_wait_backends_gone("sd_pid1", 10000), 0);
    cr_assert_eq(pg_log_abrupt("sd_pid1"), 0, "%s", p.err);
    cr_assert_not_null(strstr(p.err, "stop delay over"), "%s", p.err);
}

Test(stop_delay, bad_values_are_refused)
{
    /* The launcher: one line, status 2. */
    const char *bad[] = {"soon", "-1s", "5 parsecs", "25h", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[] = {LAUNCHER, "--stop-delay", bad[i], "--", "true", NULL};
        struct run_opts o = {0};
        struct proc p;
        int s = run(&o, argv, &p, 10000);
        cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 2, "--stop-delay '%s': status %d", bad[i],
                  s);
        cr_assert_not_null(strstr(p.err, "--stop-delay"), "%s", p.err);
        const char *nl = strchr(p.err, '\n');
        cr_assert(nl && nl[1] == '\0', "one line: %s", p.err);
    }
    /* The variable: one complaint, then the default (no delay: death at once). */
    struct proc p;
    const char *env[] = {"LASTCALL_STOP_DELAY=soon", NULL};
    struct stopped r = serve_then_term("serve", "sd_bad", env, &p);
    cr_assert(died_by(r.status, SIGTERM), "status %d: %s", r.status, p.err);
    cr_assert_leq(r.exit_ms, 700 + slack_ms());
    cr_assert_not_null(strstr(p.err, "ignoring LASTCALL_STOP_DELAY=\"soon\""), "%s", p.err);
    cr_assert_not_null(strstr(p.err, "using off"), "%s", p.err);
    cr_assert_eq(pg_log_abrupt("sd_bad"), 0, "%s", p.err);

    const char *help[] = {LAUNCHER, "--help", NULL};
    struct run_opts o = {0};
    struct proc h;
    run(&o, help, &h, 10000);
    cr_assert_not_null(strstr(h.out, "--stop-delay"), "%s", h.out);
}

/* POSIX timers do not survive fork: a child makes its own, and its delay is
 * its own (the parent, which got no signal, keeps running). */
Test(stop_delay, a_fork_child_has_its_own_delay)
{
    if (getenv("LASTCALL_TEST_TSAN"))
        cr_skip_test("under TSan a fork child with connections reports a lock-order inversion: "
                     "inflight_atfork_child re-initialises the slots mutex the parent held "
                     "instead of unlocking it, so TSan believes the child still holds it");
    const char *argv[] = {CLIENT, "forked", NULL};
    const char *env[] = {"LASTCALL_STOP_DELAY=1s", "LASTCALL_LOG=info", NULL};
    struct run_opts o = {.preload = 1, .app = "sd_fork", .env = env};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "answered 3 ", 10000), 0, "%s %s", p.out, p.err);
    const char *c = strstr(p.out, "child ");
    int child = 0;
    cr_assert(c && sscanf(c, "child %d", &child) == 1 && child > 0, "%s", p.out);
    int64_t t0 = mono_ms();
    kill(child, SIGTERM);
    cr_assert_eq(proc_wait_for(&p, "child ended", 10000), 0, "%s %s", p.out, p.err);
    int64_t ended_ms = mono_ms() - t0;
    int s = proc_wait(&p, 10000, NULL);
    int64_t last;
    int answered = answered_after(&p, t0, &last);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_not_null(strstr(p.out, "child ended signal 15"), "%s", p.out);
    cr_assert_geq(ended_ms, 1000);
    cr_assert_geq(answered, 8, "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("sd_fork", 10000), 0);
    cr_assert_eq(pg_log_abrupt("sd_fork"), 0, "%s", p.err);
}

/* The program exits on its own during the delay (a worker that finished):
 * its exit drain runs; the delay running out in the middle of it must not
 * cut it short with the held signal (as a second signal would). */
Test(stop_delay, an_exit_during_the_delay_is_drained_not_cut)
{
    const char *argv[] = {CLIENT, "exit_busy", NULL};
    const char *env[] = {"LASTCALL_STOP_DELAY=1s", "LASTCALL_GRACE=1500ms",
                         "LASTCALL_DEADLINE=3s", "LASTCALL_LOG=info", NULL};
    struct run_opts o = {.preload = 1, .app = "sd_exit", .env = env};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready pid", 10000), 0, "%s %s", p.out, p.err);
    int64_t t0 = mono_ms();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 20000, NULL);
    int64_t exit_ms = mono_ms() - t0;
    fprintf(stderr, "exit() 500 ms into a 1 s stop delay, a query in flight, grace 1.5 s: status "
                    "%d after %lld ms\n", s, (long long)exit_ms);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_geq(exit_ms, 1900, "exit at 500 ms, then the grace: past the delay's end");
    cr_assert_not_null(strstr(p.err, "exiting on its own: the signal is dropped"), "%s", p.err);
    cr_assert_eq(pg_wait_backends_gone("sd_exit", 10000), 0);
    cr_assert_eq(pg_log_abrupt("sd_exit"), 0, "%s", p.err);
    cr_assert_eq(pg_log_count("sd_exit", "canceling statement due to user request"), 1);
}
