/* valgrind memcheck over the integration clients with the shim preloaded:
 * connects, threads, fork, the exit drain and a signal drain. */
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

static void memcheck(const char *app, const char *const *client_args, int sigterm_after_ms)
{
    const char *argv[32] = {"valgrind", "--error-exitcode=99", "--errors-for-leak-kinds=none",
                            "--trace-children=no", "--quiet"};
    int a = 5;
    for (int i = 0; client_args[i] && a < 30; i++)
        argv[a++] = client_args[i];
    argv[a] = NULL;
    struct run_opts o = {.preload = 1, .app = app};
    struct proc p;
    proc_start(&p, &o, argv);
    if (sigterm_after_ms) {
        cr_assert_eq(proc_wait_for(&p, "ready", 60000), 0, "%s", p.err);
        sleep_ms(sigterm_after_ms);
        kill(p.pid, SIGTERM);
    }
    int s = proc_wait(&p, 300000, NULL);
    cr_assert_null(strstr(p.err, "== Invalid"), "%s", p.err);
    cr_assert_null(strstr(p.err, "uninitialised"), "%s", p.err);
    if (sigterm_after_ms)
        cr_assert(WIFSIGNALED(s) && WTERMSIG(s) == SIGTERM, "status %d: %s", s, p.err);
    else
        cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
}

Test(memcheck, exit_drain_with_open_transactions, .timeout = 300)
{
    const char *args[] = {CLIENT, "exit-open-tx", "3", "memcheck_key", NULL};
    memcheck("memcheck_exit", args, 0);
    char *v = redis_get("memcheck_key");
    cr_assert(v && strcmp(v, "buffered-value") == 0);
}

Test(memcheck, threads_churning, .timeout = 300)
{
    const char *args[] = {CLIENT, "threads", "4", "10", NULL};
    memcheck("memcheck_threads", args, 0);
}

Test(memcheck, fork, .timeout = 300)
{
    const char *args[] = {CLIENT, "fork", NULL};
    memcheck("memcheck_fork", args, 0);
}

Test(memcheck, signal_drain, .timeout = 300)
{
    const char *args[] = {CLIENT, "hold", "memcheck_hold", NULL};
    memcheck("memcheck_signal", args, 500);
    char *v = redis_get("memcheck_hold");
    cr_assert(v && strcmp(v, "held") == 0);
}

/* A single-threaded program inside a query: the signal diverts its thread to
 * start the drain thread, then the query goes on (safepoint.c's way back
 * through the signal frame) until it is cancelled. */
Test(memcheck, signal_drain_during_a_query, .timeout = 300)
{
    const char *args[] = {build_path("tests/clients/lazy_client"), "sleep", "1", NULL};
    memcheck("memcheck_query", args, 1500);
    cr_assert_eq(pg_wait_backends_gone("memcheck_query", 10000), 0);
    cr_assert_eq(pg_log_abrupt("memcheck_query"), 0);
}
