/* The hang search (issue 19): programs that dlopen (a plugin whose
 * constructor sleeps), dlsym, fork, run notice callbacks that allocate and
 * look symbols up, and allocate, single- and multi-threaded, get SIGTERM at a
 * random moment or call exit(9) from a SIGALRM handler at a random moment.
 * Every run, with and without lastcall, must end with the status it has
 * without lastcall (death by SIGTERM, or 9) within the deadline + 100 ms, and
 * a SIGTERM's drain must close every connection, none cut.
 * LASTCALL_STRESS_TRIALS sets the trials per case (default 6). */
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

#define DEADLINE_MS 1000

static int trials(void)
{
    const char *t = getenv("LASTCALL_STRESS_TRIALS");
    return t && atoi(t) > 0 ? atoi(t) : 6;
}

static void search(int threads, int by_exit)
{
    /* As in test_loader_hang.c: TSan does not see ld.so's own locks, and
     * reads two threads' dlopen and dlclose as a race, with or without us. */
    if (threads > 0 && getenv("LASTCALL_TEST_TSAN"))
        cr_skip_test("ThreadSanitizer cannot see ld.so's locks");
    char client[1024], plugin[1024];
    snprintf(client, sizeof client, "%s", build_path("tests/clients/hang_client"));
    snprintf(plugin, sizeof plugin, "%s", build_path("tests/clients/slow_ctor_plugin.so"));
    unsigned base = (unsigned)getpid();
    int n = trials(), slowest = 0, hung_without = 0;
    for (int i = 0; i < n; i++) {
        unsigned seed = base + (unsigned)i * 7919u;
        int moment_ms = 20 + (int)(seed % 280);
        char seed_s[16], threads_s[8], exit_s[16];
        snprintf(seed_s, sizeof seed_s, "%u", seed);
        snprintf(threads_s, sizeof threads_s, "%d", threads);
        snprintf(exit_s, sizeof exit_s, "%d", by_exit ? moment_ms : 0);
        const char *argv[] = {client, "search", seed_s, threads_s, exit_s, plugin, NULL};
        const char *env[] = {"LASTCALL_DEADLINE=1s", "LASTCALL_GRACE=300ms", "HANG_CTOR_US=2000",
                             "LASTCALL_LOG=info", NULL};
        for (int with = 0; with < 2; with++) {
            struct proc p;
            struct run_opts o = {.preload = with, .app = "hang_search", .env = env};
            proc_start(&p, &o, argv);
            cr_assert_eq(proc_wait_for(&p, "ready", 30000), 0, "seed %u: not ready: %s", seed,
                         p.err);
            int64_t t0 = now_us();
            if (!by_exit) {
                sleep_ms(moment_ms);
                t0 = now_us();
                kill(p.pid, SIGTERM);
            }
            /* exit() from a handler is unsafe: without lastcall a threaded
             * program can hang for good in it (the handler interrupted a
             * thread holding the loader's or the allocator's lock). With
             * lastcall the kernel's deadline ends it, with exit()'s status. */
            int status = proc_wait(&p, with ? 20000 : 5000, NULL);
            int ms = (int)((now_us() - t0) / 1000) - (by_exit ? moment_ms : 0);
            const char *who = with ? "with" : "without";
            if (!with && by_exit && status == -1) {
                hung_without++;
                continue;
            }
            cr_assert_neq(status, -1, "seed %u threads %d %s lastcall: hung (killed at 20 s)",
                          seed, threads, who);
            if (by_exit)
                cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 9,
                          "seed %u threads %d %s lastcall: status %d: %s", seed, threads, who,
                          status, p.err);
            else
                cr_assert(died_by(status, SIGTERM),
                          "seed %u threads %d %s lastcall: status %d: %s", seed, threads, who,
                          status, p.err);
            cr_assert_leq(ms, DEADLINE_MS + 100 + slack_ms(),
                          "seed %u threads %d %s lastcall: ended %d ms after its %s", seed,
                          threads, who, ms, by_exit ? "exit()" : "signal");
            /* A signal drain finds nothing stuck: no thread is parked where
             * it holds a lock another needs (a constructor, fork, malloc). */
            if (with && !by_exit)
                cr_assert(strstr(p.err, "SIGTERM: drained") && !strstr(p.err, "some cut"),
                          "seed %u threads %d: not drained whole: %s", seed, threads, p.err);
            if (with && ms > slowest)
                slowest = ms;
        }
    }
    fprintf(stderr, "hang search, %d thread(s), %s: %d trials, slowest end with lastcall %d ms; "
            "hung for good without lastcall: %d\n",
            threads + 1, by_exit ? "exit() from a handler" : "SIGTERM", n, slowest, hung_without);
}

Test(hang_search, single_threaded_sigterm) { search(0, 0); }
Test(hang_search, single_threaded_exit) { search(0, 1); }
Test(hang_search, threaded_sigterm) { search(2, 0); }
Test(hang_search, threaded_exit) { search(2, 1); }
