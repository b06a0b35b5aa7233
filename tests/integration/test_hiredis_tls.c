/* hiredis 1.x: the build really runs against it, and Redis over TLS
 * (hiredis_ssl, redis-server's --tls-port) is drained like plain TCP.
 * Built only where hiredis_ssl exists (build-hiredis1; see tests/run). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

LC_TEST_MAIN

#define TLS_CLIENT build_path("tests/clients/hiredis_tls_client")
#define RPUSHES 2000

/* The server may still be reading what a client wrote just before it died:
 * give it a moment to reach N (a lost write never does). */
static long redis_llen_settled(const char *key, long want)
{
    long n = redis_llen(key);
    for (int i = 0; i < 100 && n != want; i++) {
        sleep_ms(20);
        n = redis_llen(key);
    }
    return n;
}

static void assert_exit0(int status, struct proc *p)
{
    cr_assert(status != -1, "timed out; stderr: %s", p->err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d; stdout: %s; stderr: %s",
              status, p->out, p->err);
}

static int find_hiredis(struct dl_phdr_info *info, size_t size, void *out)
{
    (void)size;
    if (strstr(info->dlpi_name, "/libhiredis.so")) {
        snprintf(out, 4096, "%s", info->dlpi_name);
        return 1;
    }
    return 0;
}

Test(hiredis_tls, hiredis_1_1_0_is_what_every_program_loads)
{
    /* A build that quietly fell back to the system's hiredis 0.14 would pass
     * every other test: the headers, the test driver, the clients and a
     * module loaded with dlopen all have to be 1.x. */
    cr_assert_eq(HIREDIS_MAJOR, 1, "headers are hiredis %d.%d", HIREDIS_MAJOR, HIREDIS_MINOR);
    char self[4096] = "none";
    dl_iterate_phdr(find_hiredis, self);
    cr_assert(strstr(self, "/libhiredis.so.1.1.0"), "test driver loaded %s", self);

    struct proc p;
    struct run_opts o = {.preload = 1};
    const char *version[] = {TLS_CLIENT, "version", NULL};
    assert_exit0(run(&o, version, &p, 10000), &p);
    cr_assert(strstr(p.out, "header=1.") && strstr(p.out, "/libhiredis.so.1.1.0"), "%s", p.out);

    const char *programs[] = {"tests/clients/lc_client", "tests/clients/lc_stress",
                              "tests/clients/lc_leaky", "tests/clients/localmod.so",
                              "tests/clients/hiredis_tls_client"};
    for (size_t i = 0; i < sizeof programs / sizeof *programs; i++) {
        const char *ldd[] = {"ldd", build_path(programs[i]), NULL};
        struct run_opts plain = {.preload = 0};
        assert_exit0(run(&plain, ldd, &p, 10000), &p);
        cr_assert(strstr(p.out, "libhiredis.so.1.1.0 => /"), "%s: %s", programs[i], p.out);
        cr_assert_null(strstr(p.out, "libhiredis.so.0"), "%s: %s", programs[i], p.out);
    }
}

Test(hiredis_tls, round_trip_over_tls_with_and_without_lastcall)
{
    struct proc p;
    const char *argv[] = {TLS_CLIENT, "ping", NULL};
    struct run_opts without = {.preload = 0}, with = {.preload = 1};
    assert_exit0(run(&without, argv, &p, 10000), &p);
    cr_assert(strstr(p.out, "pong over TLS"), "%s", p.out);
    assert_exit0(run(&with, argv, &p, 10000), &p);
    cr_assert(strstr(p.out, "pong over TLS"), "%s", p.out);
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

/* RPUSHES commands appended to a TLS context and never sent, then exit():
 * lost without lastcall, all there with it (flushed through hiredis's TLS
 * write function, SSL_write). */
static void buffered_writes_at_exit(const char *mode, const char *key_without,
                                    const char *key_with)
{
    char n[16];
    snprintf(n, sizeof n, "%d", RPUSHES);
    struct proc p;
    const char *argv_without[] = {TLS_CLIENT, mode, key_without, n, NULL};
    struct run_opts without = {.preload = 0};
    assert_exit0(run(&without, argv_without, &p, 30000), &p);
    long lost = redis_llen(key_without);

    const char *argv_with[] = {TLS_CLIENT, mode, key_with, n, NULL};
    struct run_opts with = {.preload = 1};
    assert_exit0(run(&with, argv_with, &p, 30000), &p);
    long kept = redis_llen_settled(key_with, RPUSHES);

    fprintf(stderr, "%s over TLS, %d buffered RPUSHes: %ld arrived without lastcall, %ld with\n",
            mode, RPUSHES, lost, kept);
    cr_assert_eq(lost, 0, "without lastcall the buffered RPUSHes should be lost");
    cr_assert_eq(kept, RPUSHES, "buffered RPUSHes over TLS lost; stderr: %s", p.err);
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

Test(hiredis_tls, buffered_writes_over_tls_arrive_at_exit)
{
    buffered_writes_at_exit("exit", "tls_exit_without", "tls_exit_with");
}

Test(hiredis_tls, buffered_writes_over_tls_arrive_at_exit_when_openssl_starts_late)
{
    /* OpenSSL registers its own exit cleanup when it starts; here that is
     * after the first (plain TCP) connect, so after lastcall's exit drain was
     * registered. The drain must still find OpenSSL alive. */
    buffered_writes_at_exit("exit-late-ssl", "tls_late_without", "tls_late_with");
}

Test(hiredis_tls, buffered_writes_over_tls_arrive_on_sigterm)
{
    char n[16];
    snprintf(n, sizeof n, "%d", RPUSHES);
    struct proc p;
    int status;

    const char *argv_without[] = {TLS_CLIENT, "wait", "tls_term_without", n, NULL};
    struct run_opts without = {.preload = 0};
    proc_start(&p, &without, argv_without);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "stderr: %s", p.err);
    kill(p.pid, SIGTERM);
    status = proc_wait(&p, 10000, NULL);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %d", status);
    long lost = redis_llen("tls_term_without");

    const char *argv_with[] = {TLS_CLIENT, "wait", "tls_term_with", n, NULL};
    struct run_opts with = {.preload = 1};
    proc_start(&p, &with, argv_with);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "stderr: %s", p.err);
    kill(p.pid, SIGTERM);
    status = proc_wait(&p, 10000, NULL);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %d; stderr: %s", status,
              p.err);
    long kept = redis_llen_settled("tls_term_with", RPUSHES);

    fprintf(stderr, "SIGTERM over TLS, %d buffered RPUSHes: %ld arrived without lastcall, %ld with\n",
            RPUSHES, lost, kept);
    cr_assert_eq(lost, 0, "without lastcall the buffered RPUSHes should be lost");
    cr_assert_eq(kept, RPUSHES, "buffered RPUSHes over TLS lost; stderr: %s", p.err);
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

Test(hiredis_tls, megabytes_of_buffered_writes_over_tls_arrive_at_exit)
{
    /* About 9 MB of commands: more than the socket takes at once, so the
     * flush goes round many times through SSL_write's "want write". */
    struct proc p;
    const char *argv[] = {TLS_CLIENT, "exit", "tls_big", "300000", NULL};
    struct run_opts with = {.preload = 1};
    assert_exit0(run(&with, argv, &p, 30000), &p);
    long kept = redis_llen_settled("tls_big", 300000);
    cr_assert_eq(kept, 300000, "buffered RPUSHes over TLS lost: %ld arrived; stderr: %s", kept,
                 p.err);
    cr_assert_eq(p.err_len, 0, "stderr: %s", p.err);
}

Test(hiredis_tls, stalled_redis_over_tls_meets_the_deadline)
{
    /* 30 MB of commands for a stopped server: TLS writes must not block the
     * drain past its deadline. */
    struct proc p;
    const char *env[] = {"LASTCALL_DEADLINE=1s", NULL};
    const char *argv[] = {TLS_CLIENT, "wait", "tls_stalled", "1000000", NULL};
    struct run_opts with = {.preload = 1, .env = env};
    proc_start(&p, &with, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "stderr: %s", p.err);
    pid_t rpid = redis_pid();
    cr_assert(rpid > 0);
    kill(rpid, SIGSTOP);
    int64_t t0 = now_us();
    kill(p.pid, SIGTERM);
    int status = proc_wait(&p, 10000, NULL);
    int64_t elapsed_ms = (now_us() - t0) / 1000;
    kill(rpid, SIGCONT);
    fprintf(stderr, "stalled redis over TLS: SIGTERM to exit %lld ms (deadline 1000 ms)\n",
            (long long)elapsed_ms);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %d; stderr: %s", status,
              p.err);
    cr_assert_leq(elapsed_ms, 1100 + slack_ms(), "exit took %lld ms", (long long)elapsed_ms);
}
