/* Benchmarks: `meson test -C build --benchmark`. Every figure is measured with
 * and without lastcall in the same run, alternating, median of 5 or more, and
 * printed with its goal. Nothing here fails on a missed goal: tests assert
 * behaviour, benchmarks report speed. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/bench/lc_bench_client")
#define RUNS 7

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void figure(const char *name, const char *value, const char *goal, int met)
{
    printf("%-58s %-44s goal %-14s %s\n", name, value, goal, met ? "met" : "MISSED");
    fflush(stdout);
}

/* ns per operation for one run of the client. */
static double run_client(int preload, const char *const *env, const char *cmd, long n)
{
    char count[32];
    snprintf(count, sizeof count, "%ld", n);
    const char *argv[] = {CLIENT, cmd, count, NULL};
    struct run_opts o = {.preload = preload, .env = env, .app = "bench"};
    struct proc p;
    int s = run(&o, argv, &p, 300000);
    char *r = strstr(p.out, "result ");
    if (!(WIFEXITED(s) && WEXITSTATUS(s) == 0) || r == NULL) {
        fprintf(stderr, "bench %s failed: %s\n", cmd, p.err);
        return -1;
    }
    return atof(r + 7) / (double)n;
}

/* Alternating with/without, RUNS each; prints medians and the ratio. */
static void ratio(const char *name, const char *cmd, long n, const char *const *env_with,
                  double goal)
{
    double with[RUNS], without[RUNS];
    run_client(0, NULL, cmd, n / 5); /* warm up caches and the server */
    for (int i = 0; i < RUNS; i++) {
        if (i % 2) {
            with[i] = run_client(1, env_with, cmd, n);
            without[i] = run_client(0, NULL, cmd, n);
        } else {
            without[i] = run_client(0, NULL, cmd, n);
            with[i] = run_client(1, env_with, cmd, n);
        }
    }
    double mw = median(with, RUNS), mo = median(without, RUNS);
    char value[160], g[32];
    snprintf(value, sizeof value, "%.2f us/op vs %.2f us/op: ratio %.3f", mw / 1000, mo / 1000,
             mw / mo);
    snprintf(g, sizeof g, "<= %.4g", goal);
    figure(name, value, g, mw / mo <= goal);
}

/* The same measurement with lastcall on neither side: how far apart two
 * identical sides land on this machine. */
static void aa_noise(const char *name, const char *cmd, long n)
{
    double a[RUNS], b[RUNS];
    for (int i = 0; i < RUNS; i++) {
        a[i] = run_client(0, NULL, cmd, n);
        b[i] = run_client(0, NULL, cmd, n);
    }
    double ma = median(a, RUNS), mb = median(b, RUNS);
    char value[160];
    snprintf(value, sizeof value, "%.2f us/op vs %.2f us/op: ratio %.3f", ma / 1000, mb / 1000,
             ma / mb);
    printf("%-58s %s\n", name, value);
    fflush(stdout);
}

/* A cost printed, not held to a goal: with and without lastcall, alternating. */
static void cost(const char *name, const char *cmd, long n)
{
    double with[RUNS], without[RUNS];
    for (int i = 0; i < RUNS; i++) {
        with[i] = run_client(1, NULL, cmd, n);
        without[i] = run_client(0, NULL, cmd, n);
    }
    double mw = median(with, RUNS), mo = median(without, RUNS);
    printf("%-58s %.0f ns vs %.0f ns: ratio %.2f\n", name, mw, mo, mw / mo);
    fflush(stdout);
}

static const char *const disabled[] = {"LASTCALL_DISABLE=1", NULL};

Test(bench, round_trips_and_pipelines)
{
    printf("\nlastcall benchmarks (with lastcall vs without, median of %d alternating runs)\n",
           RUNS);
    ratio("PQexec SELECT 1 round trip", "pq-roundtrip", 4000, NULL, 1.01);
    ratio("redisCommand PING round trip", "redis-roundtrip", 10000, NULL, 1.01);
    aa_noise("noise floor: PING, without vs without (A/A)", "redis-roundtrip", 10000);
    ratio("pipelined Redis, single-threaded client", "redis-pipeline", 100000, NULL, 1.01);
    ratio("pipelined Redis, client with an idle thread", "redis-pipeline-mt", 100000, NULL, 1.01);
    ratio("LASTCALL_DISABLE=1: pipelined Redis", "redis-pipeline", 100000, disabled, 1.005);
    ratio("LASTCALL_DISABLE=1: PQexec round trip", "pq-roundtrip", 4000, disabled, 1.005);
    cost("sigaction(SIGTERM) set + read back, per pair", "sigaction", 200000);
}

/* MySQL/MariaDB, against a server of its own (skipped without mariadbd). */
Test(bench, mysql_round_trips_and_connects)
{
    if (mariadb_start() != 0) {
        figure("mysql_query SELECT 1 round trip", "no MariaDB server here", "<= 1.01", 0);
        return;
    }
    ratio("mysql_query SELECT 1 round trip", "my-roundtrip", 4000, NULL, 1.01);
    ratio("MySQL connect/close, stacks off", "my-connect", 200, NULL, 1.01);
    mariadb_stop();
}

/* Instructions per pipelined command (callgrind: no drift), single-threaded
 * client, with and without lastcall. */
static long callgrind_instructions_of(int preload, const char *const *env, const char *cmd,
                                     long n);

Test(bench, instructions_per_pipelined_command)
{
    const long n1 = 10000, n2 = 60000;
    long w1 = callgrind_instructions_of(1, NULL, "redis-pipeline", n1);
    long w2 = callgrind_instructions_of(1, NULL, "redis-pipeline", n2);
    long o1 = callgrind_instructions_of(0, NULL, "redis-pipeline", n1);
    long o2 = callgrind_instructions_of(0, NULL, "redis-pipeline", n2);
    if (w1 < 0 || w2 < 0 || o1 < 0 || o2 < 0) {
        figure("instructions per pipelined command (callgrind)", "valgrind unavailable", "", 0);
        return;
    }
    double with = (double)(w2 - w1) / (double)(n2 - n1);
    double without = (double)(o2 - o1) / (double)(n2 - n1);
    char value[160];
    snprintf(value, sizeof value, "%.0f vs %.0f instructions: ratio %.3f", with, without,
             with / without);
    figure("instructions per pipelined command (callgrind)", value, "<= 1.01",
           with / without <= 1.01);
}

static long callgrind_instructions_of(int preload, const char *const *env, const char *cmd,
                                     long n);

static long callgrind_instructions(int preload, long n)
{
    return callgrind_instructions_of(preload, NULL, "isbusy", n);
}

static long callgrind_instructions_of(int preload, const char *const *env, const char *cmd,
                                     long n)
{
    char out[128];
    snprintf(out, sizeof out, "/tmp/lastcall-callgrind.%d", (int)getpid());
    char file_arg[160], count[32];
    snprintf(file_arg, sizeof file_arg, "--callgrind-out-file=%s", out);
    snprintf(count, sizeof count, "%ld", n);
    const char *argv[] = {"valgrind", "--tool=callgrind", file_arg, CLIENT, cmd, count, NULL};
    struct run_opts o = {.preload = preload, .env = env, .app = "bench_callgrind"};
    struct proc p;
    int s = run(&o, argv, &p, 300000);
    unlink(out);
    char *c = strstr(p.err, "Collected : ");
    if (s == -1 || c == NULL) {
        fprintf(stderr, "callgrind failed: %s\n", p.err);
        return -1;
    }
    return atol(c + 12);
}

Test(bench, instructions_per_intercepted_call)
{
    const long n1 = 10000, n2 = 110000;
    long w1 = callgrind_instructions(1, n1), w2 = callgrind_instructions(1, n2);
    long o1 = callgrind_instructions(0, n1), o2 = callgrind_instructions(0, n2);
    if (w1 < 0 || w2 < 0 || o1 < 0 || o2 < 0) {
        figure("instructions added per intercepted call (callgrind)", "valgrind unavailable",
               "<= 20", 0);
        return;
    }
    double with = (double)(w2 - w1) / (double)(n2 - n1);
    double without = (double)(o2 - o1) / (double)(n2 - n1);
    char value[160];
    snprintf(value, sizeof value, "%.1f added (PQisBusy: %.1f vs %.1f instr)", with - without,
             with, without);
    figure("instructions added per intercepted call (callgrind)", value, "<= 20",
           with - without <= 20.0);
}

Test(bench, nanoseconds_per_intercepted_call)
{
    /* PQisBusy on an idle connection never touches the network: the difference
     * is the hook's own cost. */
    double with[RUNS], without[RUNS];
    for (int i = 0; i < RUNS; i++) {
        without[i] = run_client(0, NULL, "isbusy", 20000000);
        with[i] = run_client(1, NULL, "isbusy", 20000000);
    }
    double mw = median(with, RUNS), mo = median(without, RUNS);
    char value[160];
    snprintf(value, sizeof value, "%.2f ns added (PQisBusy: %.2f ns vs %.2f ns)", mw - mo, mw, mo);
    figure("time added per intercepted call (20M PQisBusy)", value, "<= 5 ns", mw - mo <= 5.0);
}

/* User-space instructions per connect/close cycle, with and without:
 * deterministic, where the wall-clock ratios move by several percent run to
 * run. Information, not a goal: a cycle's time is mostly system calls, which
 * callgrind does not count. */
static void connect_instructions(const char *name, const char *cmd, const char *const *env)
{
    const long n1 = 100, n2 = 600;
    long w1 = callgrind_instructions_of(1, env, cmd, n1);
    long w2 = callgrind_instructions_of(1, env, cmd, n2);
    long o1 = callgrind_instructions_of(0, NULL, cmd, n1);
    long o2 = callgrind_instructions_of(0, NULL, cmd, n2);
    if (w1 < 0 || w2 < 0 || o1 < 0 || o2 < 0) {
        printf("%-58s valgrind unavailable\n", name);
        return;
    }
    double with = (double)(w2 - w1) / (double)(n2 - n1);
    double without = (double)(o2 - o1) / (double)(n2 - n1);
    printf("%-58s %.0f instructions added (%.0f vs %.0f a cycle)\n", name, with - without, with,
           without);
    fflush(stdout);
}

Test(bench, connect_close_cycles)
{
    const char *stacks_on[] = {"LASTCALL_STACKS=on", NULL};
    ratio("PostgreSQL connect/close, stacks off", "pq-connect", 200, NULL, 1.01);
    aa_noise("noise floor: PostgreSQL connect, without vs without", "pq-connect", 200);
    ratio("Redis connect/close, stacks off", "redis-connect", 4000, NULL, 1.01);
    ratio("PostgreSQL connect/close, stacks on", "pq-connect", 200, stacks_on, 1.01);
    ratio("Redis connect/close, stacks on", "redis-connect", 4000, stacks_on, 1.3);
    connect_instructions("Redis connect/close, stacks off (callgrind)", "redis-connect", NULL);
    connect_instructions("Redis connect/close, stacks on (callgrind)", "redis-connect", stacks_on);
    connect_instructions("PostgreSQL connect/close, stacks off (callgrind)", "pq-connect", NULL);
}

static double pgbench_tps(int preload)
{
    const char *argv[] = {"pgbench", "-n", "-S", "-c", "8", "-j", "2", "-T", "3", NULL};
    struct run_opts o = {.preload = preload, .app = "bench_pgbench"};
    struct proc p;
    int s = run(&o, argv, &p, 60000);
    char *t = strstr(p.out, "tps = ");
    if (!(WIFEXITED(s) && WEXITSTATUS(s) == 0) || t == NULL) {
        fprintf(stderr, "pgbench failed: %s %s\n", p.out, p.err);
        return -1;
    }
    return atof(t + 6);
}

Test(bench, pgbench_select_only)
{
    const char *init[] = {"pgbench", "-i", "-q", "-s", "1", NULL};
    struct run_opts o = {.app = "bench_init"};
    struct proc p;
    run(&o, init, &p, 60000);
    double with[RUNS], without[RUNS];
    for (int i = 0; i < RUNS; i++) {
        without[i] = pgbench_tps(0);
        with[i] = pgbench_tps(1);
    }
    double mw = median(with, RUNS), mo = median(without, RUNS);
    char value[160];
    snprintf(value, sizeof value, "%.0f tps vs %.0f tps: ratio %.3f", mw, mo, mw / mo);
    figure("pgbench -S -c 8 -j 2 (TPS)", value, ">= 0.99", mw / mo >= 0.99);
}

/* Resident memory of `sleep 1` once it runs: ru_maxrss of an exec'd child
 * would include the forking parent's memory, so read /proc instead. */
static long sleeping_rss_kib(int preload)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (preload)
            setenv("LD_PRELOAD", shim_path(), 1);
        else
            unsetenv("LD_PRELOAD");
        execl("/bin/sleep", "sleep", "1", (char *)NULL);
        _exit(127);
    }
    sleep_ms(200);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    long rss = -1;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Rss: %ld kB", &rss) == 1)
            break;
    if (f)
        fclose(f);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return rss;
}

/* Median wall time of /bin/true, 200 runs a batch. Both sides exec with an
 * environment built beforehand: a setenv in the forked child would touch the
 * parent's heap (copy-on-write faults) and bill one side only. */
static void true_batch(int preload, double *us)
{
    static char preload_var[1100];
    snprintf(preload_var, sizeof preload_var, "LD_PRELOAD=%s",
             preload == 2 ? build_path("tests/bench/empty_preload.so") : shim_path());
    char *env_with[] = {preload_var, "PATH=/usr/bin:/bin", NULL};
    char *env_without[] = {"PATH=/usr/bin:/bin", NULL};
    char *argv[] = {"true", NULL};
    const int per_batch = 200;
    int64_t t0 = now_us();
    for (int i = 0; i < per_batch; i++) {
        pid_t pid = vfork();
        if (pid == 0) {
            execve("/bin/true", argv, preload ? env_with : env_without);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
    }
    *us = (double)(now_us() - t0) / per_batch;
}

Test(bench, process_using_neither_library)
{
    double with[RUNS * 2], without[RUNS * 2], empty[RUNS * 2], rw[RUNS], ro[RUNS];
    for (int i = 0; i < RUNS * 2; i++) {
        true_batch(0, &without[i]);
        true_batch(1, &with[i]);
        true_batch(2, &empty[i]);
    }
    for (int i = 0; i < RUNS; i++) {
        ro[i] = (double)sleeping_rss_kib(0);
        rw[i] = (double)sleeping_rss_kib(1);
    }
    long rss_with = (long)median(rw, RUNS), rss_without = (long)median(ro, RUNS);
    double mw = median(with, RUNS * 2), mo = median(without, RUNS * 2);
    char value[160];
    snprintf(value, sizeof value, "%.0f us vs %.0f us: %+.0f us", mw, mo, mw - mo);
    figure("/bin/true under lastcall: time added", value, "<= 100 us", mw - mo <= 100);
    double me = median(empty, RUNS * 2);
    snprintf(value, sizeof value, "%.0f us vs %.0f us (empty preloaded .so): %+.0f us", mw, me,
             mw - me);
    figure("/bin/true: lastcall against an empty preloaded library", value, "<= +30 us",
           mw - me <= 30);
    snprintf(value, sizeof value, "%ld KiB vs %ld KiB: %+ld KiB", rss_with, rss_without,
             rss_with - rss_without);
    figure("sleep under lastcall: resident memory added", value, "<= 150 KiB",
           rss_with - rss_without <= 150);
}

/* Starts the client holding connections; returns ms from SIGTERM to exit. */
static double signal_to_exit(int preload, const char *const *env, const char *cmd, const char *a,
                             const char *b, const char *app)
{
    const char *argv[] = {CLIENT, cmd, a, b, NULL};
    struct run_opts o = {.preload = preload, .env = env, .app = app};
    struct proc p;
    proc_start(&p, &o, argv);
    if (proc_wait_for(&p, "ready", 120000) != 0) {
        fprintf(stderr, "%s did not get ready: %s\n", cmd, p.err);
        kill(p.pid, SIGKILL);
        proc_wait(&p, 10000, NULL);
        return -1;
    }
    sleep_ms(300);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    proc_wait(&p, 60000, NULL);
    return (double)(now_us() - t0) / 1000.0;
}

static void kill_app(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = '%s'", app);
    pg_scalar(sql);
    pg_wait_backends_gone(app, 10000);
}

Test(bench, drain_of_many_idle_connections)
{
    double with[RUNS], without[RUNS];
    /* Which side goes first alternates: a run's servers are still busy
     * with the previous run's closes for a while. */
    for (int i = 0; i < RUNS * 2; i++) {
        if ((i % 2) == (i / 2 % 2)) {
            without[i / 2] = signal_to_exit(0, NULL, "hold", "200", "2000", "bench_hold_without");
            kill_app("bench_hold_without");
        } else {
            with[i / 2] = signal_to_exit(1, NULL, "hold", "200", "2000", "bench_hold_with");
            pg_wait_backends_gone("bench_hold_with", 10000);
        }
    }
    double mw = median(with, RUNS), mo = median(without, RUNS);
    char value[160];
    snprintf(value, sizeof value, "%.1f ms (plain kill, no drain: %.1f ms)", mw, mo);
    figure("drain 200 PostgreSQL + 2000 Redis idle, signal to exit", value, "<= 50 ms", mw <= 50);
    snprintf(value, sizeof value, "%.1f ms vs %.1f ms: ratio %.2f", mw, mo, mw / mo);
    figure("the same drain against a plain kill of the same program", value, "<= 1.10",
           mw / mo <= 1.10);
}

Test(bench, inflight_queries_cancelled_after_grace)
{
    double gone_after[RUNS];
    for (int i = 0; i < RUNS; i++) {
        const char *env[] = {"LASTCALL_GRACE=1s", "LASTCALL_DEADLINE=10s", NULL};
        const char *argv[] = {CLIENT, "inflight", "100", NULL};
        struct run_opts o = {.preload = 1, .env = env, .app = "bench_inflight"};
        struct proc p;
        proc_start(&p, &o, argv);
        proc_wait_for(&p, "ready", 60000);
        sleep_ms(500);
        int64_t t0 = now_us();
        kill(p.pid, SIGTERM);
        while (pg_backends("bench_inflight") > 0 && now_us() - t0 < 10000000)
            sleep_ms(2);
        gone_after[i] = (double)(now_us() - t0) / 1000.0 - 1000.0;
        proc_wait(&p, 20000, NULL);
    }
    double m = median(gone_after, RUNS);
    char value[160];
    snprintf(value, sizeof value, "%.1f ms after the grace period", m);
    figure("100 in-flight queries cancelled: all backends gone", value, "<= 100 ms", m <= 100);
}

static void stop_all_servers(const char *sig)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "pm=$(head -1 '%s/postmaster.pid'); pkill -%s -P $pm; kill -%s $pm; "
             "kill -%s $(cat '%s')",
             getenv("LC_TEST_PG_DATA"), sig, sig, sig, getenv("LC_TEST_REDIS_PIDFILE"));
    if (system(cmd) != 0)
        fprintf(stderr, "signalling the servers failed\n");
}

Test(bench, deadline_with_every_server_stalled)
{
    double with[RUNS];
    for (int i = 0; i < RUNS; i++) {
        /* Queries in flight, then every server process stopped: the grace
         * period runs out, cancel requests hang on a stopped postmaster, and
         * only the deadline ends the drain. */
        const char *env[] = {"LASTCALL_DEADLINE=1s", "LASTCALL_GRACE=500ms", NULL};
        const char *argv[] = {CLIENT, "inflight", "20", NULL};
        struct run_opts o = {.preload = 1, .env = env, .app = "bench_stalled"};
        struct proc p;
        proc_start(&p, &o, argv);
        proc_wait_for(&p, "ready", 60000);
        sleep_ms(300);
        stop_all_servers("STOP");
        int64_t t0 = now_us();
        kill(p.pid, SIGTERM);
        proc_wait(&p, 20000, NULL);
        with[i] = (double)(now_us() - t0) / 1000.0;
        stop_all_servers("CONT");
        pg_wait_backends_gone("bench_stalled", 10000);
    }
    double m = median(with, RUNS);
    char value[160];
    snprintf(value, sizeof value, "exit after %.1f ms with a 1000 ms deadline", m);
    figure("every server stalled (SIGSTOP)", value, "<= +50 ms", m <= 1050);
}
