/* Random-signal stress (issue: hardening): 4 threads churn connections, some
 * leaked, some inside transactions, some Redis writes buffered; SIGTERM lands
 * at a random moment. LASTCALL_STRESS_TRIALS trials (30 in the suite; the
 * `stress` target runs 200). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "harness.h"

LC_TEST_MAIN

static long llen(redisContext *c, const char *key)
{
    redisReply *r = redisCommand(c, "LLEN %s", key);
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    freeReplyObject(r);
    return n;
}

Test(stress, random_sigterm_during_churn, .timeout = 900)
{
    int trials = getenv("LASTCALL_STRESS_TRIALS") ? atoi(getenv("LASTCALL_STRESS_TRIALS")) : 30;
    unsigned seed = (unsigned)getpid();
    char counts_path[] = "/tmp/lastcall-stress.XXXXXX";
    int fd = mkstemp(counts_path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 4 * sizeof(uint64_t)), 0);
    volatile uint64_t *counts =
        mmap(NULL, 4 * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq((void *)counts, MAP_FAILED);
    redisContext *rc = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    cr_assert(rc && !rc->err);

    int64_t worst_ms = 0;
    int lost = 0, wrong_status = 0, late = 0;
    for (int t = 0; t < trials; t++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "stress:%d:%d", (int)getpid(), t);
        for (int i = 0; i < 4; i++)
            counts[i] = 0;
        const char *env[] = {"LASTCALL_DEADLINE=2s", "LASTCALL_GRACE=500ms", NULL};
        const char *argv[] = {build_path("tests/clients/lc_stress"), prefix, counts_path, NULL};
        struct run_opts o = {.preload = 1, .env = env, .app = "stress"};
        struct proc p;
        proc_start(&p, &o, argv);
        cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
        sleep_ms(20 + (int)(rand_r(&seed) % 400));
        int64_t t0 = now_us();
        kill(p.pid, SIGTERM);
        int s = proc_wait(&p, 10000, NULL);
        int64_t ms = (now_us() - t0) / 1000;
        if (ms > worst_ms)
            worst_ms = ms;
        if (!(s != -1 && WIFSIGNALED(s) && WTERMSIG(s) == SIGTERM)) {
            wrong_status++;
            fprintf(stderr, "trial %d: status %d, stderr: %s\n", t, s, p.err);
        }
        if (ms > 2100 + slack_ms()) {
            late++;
            fprintf(stderr, "trial %d: exit took %lld ms\n", t, (long long)ms);
        }
        /* Every RPUSH that returned to the program arrived; at most one more
         * per thread (the signal can land between the call and the count). */
        for (int i = 0; i < 4; i++) {
            char key[96];
            snprintf(key, sizeof key, "%s:%d", prefix, i);
            long arrived = llen(rc, key);
            long recorded = (long)counts[i];
            if (arrived < recorded || arrived > recorded + 1) {
                lost++;
                fprintf(stderr, "trial %d thread %d: %ld RPUSH returned, %ld arrived\n", t, i,
                        recorded, arrived);
            }
        }
    }
    int left = pg_wait_backends_gone("stress", 20000);
    int abrupt = pg_log_abrupt("stress");
    fprintf(stderr, "stress: %d trials, worst SIGTERM-to-exit %lld ms (deadline 2000 ms), "
                    "wrong status %d, late %d, lost writes %d, abrupt disconnects %d\n",
            trials, (long long)worst_ms, wrong_status, late, lost, abrupt);
    if (abrupt)
        pg_log_dump_app("stress");
    cr_assert_eq(wrong_status, 0);
    cr_assert_eq(late, 0);
    cr_assert_eq(lost, 0);
    cr_assert_eq(left, 0);
    cr_assert_eq(abrupt, 0);
    unlink(counts_path);
}
