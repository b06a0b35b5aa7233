/* Faults (issue: hardening): servers that die, stall or kill our connections,
 * signal storms, fork and exec. Each is injected against the real servers;
 * tests/README.md keeps the table. */
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

static void terminate_backend(int pid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)::int", pid);
    pg_scalar(sql);
}

static int wait_active(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND state = 'active'", app);
    for (int i = 0; i < 500; i++) {
        if (pg_scalar(sql) > 0)
            return 0;
        sleep_ms(20);
    }
    return -1;
}

Test(faults, backend_killed_during_the_grace_period)
{
    const char *env[] = {"LASTCALL_GRACE=3s", "LASTCALL_DEADLINE=5s", NULL};
    struct run_opts o = {.preload = 1, .app = "fault_kill_backend", .env = env};
    const char *argv[] = {CLIENT, "sleep-query", "60", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "backend ", 10000), 0, "%s", p.err);
    int backend = atoi(strstr(p.out, "backend ") + 8);
    cr_assert_eq(wait_active("fault_kill_backend"), 0);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    sleep_ms(300);
    terminate_backend(backend); /* the server goes away mid-drain */
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    cr_assert(died_by(s, SIGTERM), "status %d: %s", s, p.err);
    /* The in-flight query ended with the backend: no need to wait out the grace. */
    cr_assert_lt(ms, 3000, "took %lld ms", (long long)ms);
}

Test(faults, redis_killed_while_stalled_during_the_drain)
{
    const char *env[] = {"LASTCALL_DEADLINE=2s", NULL};
    struct run_opts o = {.preload = 1, .app = "fault_kill_redis", .env = env, .keep_stdin = 1};
    const char *argv[] = {CLIENT, "stall", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "backend ", 10000), 0, "%s", p.err);
    pid_t rpid = redis_pid();
    kill(rpid, SIGSTOP);
    cr_assert_eq(write(p.in_fd, "go\n", 3), 3);
    cr_assert_eq(proc_wait_for(&p, "exiting", 10000), 0);
    sleep_ms(300);
    kill(rpid, SIGKILL); /* dies while our flush waits on it */
    int64_t t0 = now_us();
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    redis_restart();
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_leq(ms, 2000 + slack_ms(), "took %lld ms", (long long)ms);
    pg_wait_backends_gone("fault_kill_redis", 10000);
}

Test(faults, connections_killed_by_the_servers_while_tracked)
{
    struct run_opts o = {.preload = 1, .app = "fault_killed", .keep_stdin = 1};
    const char *argv[] = {CLIENT, "killed-conns", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    int backend = atoi(strstr(p.out, "backend ") + 8);
    long long client_id = atoll(strstr(p.out, "redis ") + 6);
    terminate_backend(backend);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "redis-cli -s '%s' CLIENT KILL ID %lld >/dev/null",
             getenv("LC_TEST_REDIS_SOCK"), client_id);
    cr_assert_eq(system(cmd), 0);
    sleep_ms(200);
    cr_assert_eq(write(p.in_fd, "go\n", 3), 3);
    int s = proc_wait(&p, 10000, NULL);
    /* Writing to the dead sockets must not raise SIGPIPE in the program. */
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_eq(p.err_len, 0, "%s", p.err);
}

Test(faults, signal_storm_changes_nothing_and_the_drain_still_meets_its_deadline)
{
    const char *argv[] = {CLIENT, "storm", "3000", NULL};
    for (int preload = 0; preload < 2; preload++) {
        struct run_opts o = {.preload = preload, .app = preload ? "storm_with" : "storm_without"};
        struct proc p;
        proc_start(&p, &o, argv);
        cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
        while (proc_wait_for(&p, "storm done", 1) != 0 && kill(p.pid, SIGUSR1) == 0)
            ;
        int s = proc_wait(&p, 30000, NULL);
        cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
        cr_assert(strstr(p.out, "pg_errors=0 redis_errors=0"), "%s", p.out);
    }
    /* And SIGTERM in the middle of a storm. */
    const char *env[] = {"LASTCALL_DEADLINE=1s", NULL};
    const char *long_argv[] = {CLIENT, "storm", "1000000", NULL};
    struct run_opts o = {.preload = 1, .app = "storm_term", .env = env};
    struct proc p;
    proc_start(&p, &o, long_argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    for (int i = 0; i < 300; i++) {
        kill(p.pid, SIGUSR1);
        sleep_ms(1);
    }
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    for (int i = 0; i < 100 && kill(p.pid, SIGUSR1) == 0; i++)
        sleep_ms(1);
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    cr_assert(died_by(s, SIGTERM), "status %d: %s", s, p.err);
    cr_assert_leq(ms, 1100 + slack_ms(), "took %lld ms", (long long)ms);
    cr_assert_eq(pg_wait_backends_gone("storm_term", 10000), 0);
    cr_assert_eq(pg_log_abrupt("storm_term"), 0);
}

Test(faults, postmaster_stalled_during_connect)
{
    /* One connection is up; the next connect hangs on a stopped postmaster. */
    const char *env[] = {"LASTCALL_DEADLINE=1s", NULL};
    struct run_opts o = {.preload = 1, .app = "fault_connect_stall", .env = env};
    const char *argv[] = {CLIENT, "threads", "2", "1000000", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    sleep_ms(500);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "kill -STOP $(head -1 '%s/postmaster.pid')",
             getenv("LC_TEST_PG_DATA"));
    cr_assert_eq(system(cmd), 0);
    sleep_ms(300);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    int64_t ms = (now_us() - t0) / 1000;
    snprintf(cmd, sizeof cmd, "kill -CONT $(head -1 '%s/postmaster.pid')",
             getenv("LC_TEST_PG_DATA"));
    cr_assert_eq(system(cmd), 0);
    cr_assert(died_by(s, SIGTERM), "status %d: %s", s, p.err);
    cr_assert_leq(ms, 1100 + slack_ms(), "took %lld ms", (long long)ms);
}

Test(faults, prefork_children_leave_the_parent_connections_intact)
{
    struct run_opts o = {.preload = 1, .app = "prefork"};
    const char *argv[] = {CLIENT, "prefork", "50", NULL};
    struct proc p;
    int s = run(&o, argv, &p, 120000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    cr_assert(strstr(p.out, "parent intact"), "%s", p.out);
    /* Children that exit() or die by SIGTERM drain their own transactions. */
    cr_assert_eq(pg_wait_backends_gone("prefork", 10000), 0);
    if (pg_log_count("prefork", "unexpected EOF"))
        pg_log_dump_app("prefork");
    cr_assert_eq(pg_log_count("prefork", "unexpected EOF"), 0);
}

/* A setuid program ignores every LASTCALL_* variable (secure_getenv). The
 * loader preloads into such a program only a library from a trusted
 * directory with the setuid bit, so this needs root to set up. */
Test(faults, setuid_program_ignores_the_environment)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to install a setuid test library");
    if (getenv("LASTCALL_TEST_PRELOAD_FIRST"))
        cr_skip_test("a sanitizer runtime cannot be preloaded into a setuid program");
    char lib[128], dir[] = "/tmp/lastcall-setuid.XXXXXX", client[192], cmd[1024];
    snprintf(lib, sizeof lib, "/usr/lib/x86_64-linux-gnu/liblastcall-test-%d.so", (int)getpid());
    cr_assert_not_null(mkdtemp(dir));
    snprintf(client, sizeof client, "%s/lc_client", dir);
    snprintf(cmd, sizeof cmd,
             "cp '%s' '%s' && chmod 4755 '%s' && cp '%s' '%s' && chmod 755 '%s' && "
             "chmod 4755 '%s'",
             shim_path(), lib, lib, CLIENT, client, dir, client);
    cr_assert_eq(system(cmd), 0);
    const char *base = strrchr(lib, '/') + 1;
    char run_cmd[2048];
    /* As nobody, a setuid-root program: secure-execution mode. */
    snprintf(run_cmd, sizeof run_cmd,
             "runuser -u nobody -- env LD_PRELOAD=%s LASTCALL_LOG=debug LASTCALL_DEADLINE=bogus "
             "'%s' threads 1 1",
             base, client);
    const char *argv[] = {"sh", "-c", run_cmd, NULL};
    struct run_opts o = {.app = "setuid"};
    struct proc p;
    int s = run(&o, argv, &p, 30000);
    snprintf(cmd, sizeof cmd, "rm -f '%s'; rm -rf '%s'", lib, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    /* Loaded (its counters answer), yet it read none of the variables. */
    cr_assert(strstr(p.out, "pq_opened=1"), "the library was not loaded: %s", p.out);
    cr_assert_null(strstr(p.err, "LASTCALL_DEADLINE"), "%s", p.err);
    cr_assert_null(strstr(p.err, "open PostgreSQL"), "%s", p.err);
}
