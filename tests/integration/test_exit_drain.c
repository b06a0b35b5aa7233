/* The exit drain (issue: foundation), against real servers. */
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

#define CLIENT build_path("tests/clients/lc_client")

static void assert_exit0(int status, struct proc *p)
{
    cr_assert(status != -1, "timed out; stderr: %s", p->err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "status %d; stdout: %s; stderr: %s", status, p->out, p->err);
}

Test(exit_drain, open_transactions_and_buffered_redis_write)
{
    /* Without lastcall: one "unexpected EOF" per connection, the SET lost. */
    struct proc p;
    const char *argv_without[] = {CLIENT, "exit-open-tx", "5", "eot_key_without", NULL};
    struct run_opts without = {.preload = 0, .app = "eot_without"};
    assert_exit0(run(&without, argv_without, &p, 30000), &p);
    cr_assert_eq(pg_wait_backends_gone("eot_without", 10000), 0);
    int abrupt_without = pg_log_count("eot_without", "unexpected EOF");
    char *lost = redis_get("eot_key_without");

    /* With lastcall: Terminate for each, the SET flushed. */
    const char *argv_with[] = {CLIENT, "exit-open-tx", "5", "eot_key_with", NULL};
    struct run_opts with = {.preload = 1, .app = "eot_with"};
    assert_exit0(run(&with, argv_with, &p, 30000), &p);
    cr_assert(strstr(p.out, "pq_opened=5") && strstr(p.out, "redis_opened=1"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("eot_with", 10000), 0, "backends left behind");
    int abrupt_with = pg_log_abrupt("eot_with");
    char *kept = redis_get("eot_key_with");

    fprintf(stderr, "exit with 5 open transactions: \"unexpected EOF\" lines without lastcall %d, "
                    "with %d; buffered SET without: %s, with: %s\n",
            abrupt_without, abrupt_with, lost ? "arrived" : "lost", kept ? "arrived" : "lost");
    cr_assert_eq(abrupt_without, 5, "the problem did not show without lastcall");
    cr_assert_null(lost, "without lastcall the buffered SET should be lost");
    if (abrupt_with != 0)
        pg_log_dump_app("eot_with");
    cr_assert_eq(abrupt_with, 0);
    cr_assert_not_null(kept, "buffered SET did not arrive");
    cr_assert_str_eq(kept, "buffered-value");
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

Test(exit_drain, threads_churn_all_tracked_none_left)
{
    struct proc p;
    const char *argv[] = {CLIENT, "threads", "8", "100", NULL};
    struct run_opts o = {.preload = 1, .app = "churn"};
    assert_exit0(run(&o, argv, &p, 120000), &p);
    cr_assert(strstr(p.out, "pq_opened=800 pq_closed=800 pq_live=0 pq_failed=0 "
                            "redis_opened=800 redis_closed=800 redis_live=0"),
              "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("churn", 10000), 0);
    cr_assert_eq(pg_log_abrupt("churn"), 0);
}

Test(exit_drain, fork_child_leaves_parent_connections_alone)
{
    struct proc p;
    const char *argv[] = {CLIENT, "fork", NULL};
    struct run_opts o = {.preload = 1, .app = "forker"};
    assert_exit0(run(&o, argv, &p, 30000), &p);
    cr_assert(strstr(p.out, "parent ok"), "%s", p.out);
    /* The child owns nothing: its counters start at zero. */
    cr_assert(strstr(p.out, "pq_opened=0"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("forker", 10000), 0);
    cr_assert_eq(pg_log_abrupt("forker"), 0);
}

Test(exit_drain, libraries_loaded_rtld_local_are_tracked_and_drained)
{
    struct proc p;
    const char *argv[] = {build_path("tests/clients/lc_dlopen_client"),
                          build_path("tests/clients/localmod.so"), "local_key", NULL};
    struct run_opts o = {.preload = 1, .app = "rtld_local"};
    assert_exit0(run(&o, argv, &p, 30000), &p);
    cr_assert(strstr(p.out, "pq_opened=2 pq_live=2 redis_opened=1 redis_live=1"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("rtld_local", 10000), 0);
    cr_assert_eq(pg_log_abrupt("rtld_local"), 0);
    char *v = redis_get("local_key");
    cr_assert(v && strcmp(v, "local-module") == 0, "buffered SET from the module lost");
}

Test(exit_drain, programs_using_neither_library_are_unchanged)
{
    struct proc a, b;
    struct run_opts plain = {.preload = 0}, pre = {.preload = 1};

    const char *t[] = {"true", NULL};
    int s1 = run(&plain, t, &a, 10000), s2 = run(&pre, t, &b, 10000);
    cr_assert_eq(s1, s2);
    cr_assert_eq(b.out_len + b.err_len, 0, "%s%s", b.out, b.err);

    const char *sh[] = {"sh", "-c", "echo hi; echo oops >&2; exit 3", NULL};
    s1 = run(&plain, sh, &a, 10000);
    s2 = run(&pre, sh, &b, 10000);
    cr_assert(WIFEXITED(s2) && WEXITSTATUS(s2) == 3);
    cr_assert_eq(s1, s2);
    cr_assert_str_eq(a.out, b.out);
    cr_assert_str_eq(a.err, b.err);

    const char *killed[] = {"sh", "-c", "kill -TERM $$; sleep 5", NULL};
    s1 = run(&plain, killed, &a, 10000);
    s2 = run(&pre, killed, &b, 10000);
    cr_assert(WIFSIGNALED(s2) && WTERMSIG(s2) == SIGTERM, "status %d", s2);
    cr_assert_eq(s1, s2);

    /* A shell that traps TERM keeps its trap. */
    const char *trap[] = {"bash", "-c", "trap 'echo trapped; exit 7' TERM; kill -TERM $$; sleep 5",
                          NULL};
    s1 = run(&plain, trap, &a, 10000);
    s2 = run(&pre, trap, &b, 10000);
    cr_assert_eq(s1, s2);
    cr_assert_str_eq(a.out, b.out);
}

Test(exit_drain, bad_configuration_one_line_and_default)
{
    struct proc p;
    const char *env[] = {"LASTCALL_DEADLINE=soonish", NULL};
    struct run_opts o = {.preload = 1, .env = env};
    const char *argv[] = {"sh", "-c", "echo fine", NULL};
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert_str_eq(p.out, "fine\n");
    cr_assert(strstr(p.err, "LASTCALL_DEADLINE") && strstr(p.err, "soonish"), "%s", p.err);
    cr_assert_eq(strchr(p.err, '\n'), p.err + p.err_len - 1, "more than one line: %s", p.err);
}

Test(exit_drain, ssl_connections_are_drained_cleanly)
{
    struct proc p;
    const char *argv[] = {CLIENT, "ssl", "3", NULL};
    struct run_opts o = {.preload = 1, .app = "ssl_with"};
    assert_exit0(run(&o, argv, &p, 30000), &p);
    cr_assert(strstr(p.out, "pq_opened=3"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("ssl_with", 10000), 0);
    if (pg_log_abrupt("ssl_with") || pg_log_count("ssl_with", "SSL"))
        pg_log_dump_app("ssl_with");
    cr_assert_eq(pg_log_abrupt("ssl_with"), 0);
    cr_assert_eq(pg_log_count("ssl_with", "SSL"), 0);
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

Test(exit_drain, stalled_servers_with_output_queued_meet_the_deadline)
{
    struct proc p;
    const char *env[] = {"LASTCALL_DEADLINE=1s", NULL};
    struct run_opts o = {.preload = 1, .app = "stall", .env = env, .keep_stdin = 1};
    const char *argv[] = {CLIENT, "stall", NULL};
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "backend ", 10000), 0, "%s %s", p.out, p.err);
    int backend = atoi(strstr(p.out, "backend ") + 8);
    pid_t rpid = redis_pid();
    cr_assert(backend > 0 && rpid > 0);
    kill(backend, SIGSTOP);
    kill(rpid, SIGSTOP);
    cr_assert_eq(write(p.in_fd, "go\n", 3), 3);
    int seen = proc_wait_for(&p, "exiting", 10000);
    int64_t t0 = now_us();
    int64_t dummy;
    int status = proc_wait(&p, 10000, &dummy);
    int64_t elapsed_ms = (now_us() - t0) / 1000;
    kill(backend, SIGCONT);
    kill(rpid, SIGCONT);
    cr_assert_eq(seen, 0, "client never got to exit: %s %s", p.out, p.err);
    assert_exit0(status, &p);
    fprintf(stderr, "stalled servers: exit took %lld ms with a 1000 ms deadline\n",
            (long long)elapsed_ms);
    cr_assert_leq(elapsed_ms, 1100 + slack_ms(), "exit took %lld ms", (long long)elapsed_ms);
    pg_wait_backends_gone("stall", 10000);
}

Test(exit_drain, async_redis_context_is_tracked_and_flushed)
{
    struct proc p;
    const char *argv[] = {CLIENT, "async-exit", "async_key", NULL};
    struct run_opts o = {.preload = 1};
    assert_exit0(run(&o, argv, &p, 30000), &p);
    cr_assert(strstr(p.out, "redis_opened=1"), "%s", p.out);
    char *v = redis_get("async_key");
    cr_assert(v && strcmp(v, "async-value") == 0, "the queued async SET was lost");

    /* Without lastcall nothing ever writes it. */
    const char *argv2[] = {CLIENT, "async-exit", "async_key_without", NULL};
    struct run_opts plain = {.preload = 0};
    assert_exit0(run(&plain, argv2, &p, 30000), &p);
    cr_assert_null(redis_get("async_key_without"));
}

Test(exit_drain, disabled_lastcall_does_nothing)
{
    struct proc p;
    const char *env[] = {"LASTCALL_DISABLE=1", NULL};
    const char *argv[] = {CLIENT, "exit-open-tx", "2", "disabled_key", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "disabled"};
    assert_exit0(run(&o, argv, &p, 30000), &p);
    cr_assert(strstr(p.out, "pq_opened=0"), "%s", p.out);
    cr_assert_eq(pg_wait_backends_gone("disabled", 10000), 0);
    /* As without lastcall: abrupt ends, the buffered SET lost. */
    cr_assert_eq(pg_log_count("disabled", "unexpected EOF"), 2);
    cr_assert_null(redis_get("disabled_key"));
}
