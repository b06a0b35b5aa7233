#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/registry.h"

/* The registry knows kinds only as numbers. */
enum { LC_KIND_PQ, LC_KIND_REDIS, LC_KIND_MYSQL };

TestSuite(registry, .init = registry_reset_for_tests);

Test(registry, add_and_free)
{
    int a, b;
    cr_assert_not_null(registry_add(&a, LC_KIND_PQ, 0, 0, 5, "/tmp:5432/app", NULL, NULL));
    cr_assert_not_null(registry_add(&b, LC_KIND_REDIS, 0, 1, 6, "127.0.0.1:6379", NULL, NULL));
    cr_assert_eq(registry_owned_live(), 2);
    struct lc_registry_counts c;
    registry_counts(&c);
    cr_assert_eq(c.opened[LC_KIND_PQ], 1);
    cr_assert_eq(c.failed[LC_KIND_REDIS], 1);
    cr_assert_eq(registry_take(&a, 0, NULL), 1);
    cr_assert_eq(registry_owned_live(), 1);
    int unknown;
    cr_assert_eq(registry_take(&unknown, 0, NULL), 0);
    registry_counts(&c);
    cr_assert_eq(c.closed[LC_KIND_PQ], 1);
    cr_assert_eq(c.live[LC_KIND_REDIS], 1);
}

/* mysql_init tracks a handle before its connect: never connected counts as
 * failed until a connect succeeds, and the failure count follows each attempt. */
Test(registry, handle_tracked_before_its_connect)
{
    int m, secret, other;
    cr_assert_not_null(registry_add(&m, LC_KIND_MYSQL, 0, 1, -1, "(never connected)", NULL, NULL));
    struct lc_registry_counts c;
    registry_counts(&c);
    cr_assert_eq(c.opened[LC_KIND_MYSQL], 1);
    cr_assert_eq(c.failed[LC_KIND_MYSQL], 1);
    cr_assert_eq(registry_set_connected(&m, 1, -1, "db:3306/x", &secret), 1); /* failed again */
    registry_counts(&c);
    cr_assert_eq(c.failed[LC_KIND_MYSQL], 1);
    cr_assert_eq(registry_set_connected(&m, 0, 9, "db:3306/x", &secret), 1);
    registry_counts(&c);
    cr_assert_eq(c.opened[LC_KIND_MYSQL], 1);
    cr_assert_eq(c.failed[LC_KIND_MYSQL], 0);
    cr_assert_eq(registry_set_connected(&other, 0, 9, "y", NULL), 0, "not tracked");
    struct lc_entry info;
    cr_assert_eq(registry_take(&m, 0, &info), 1);
    cr_assert_eq(info.fd, 9);
    cr_assert_eq(info.failed, 0);
    cr_assert_eq(info.cancel, &secret);
    cr_assert_str_eq(info.target, "db:3306/x");
}

Test(registry, freed_entries_are_reused_cleanly)
{
    int a, b;
    struct lc_entry *first = registry_add(&a, LC_KIND_PQ, 0, 1, 5, "first-target", NULL, NULL);
    registry_take(&a, 0, NULL);
    struct lc_entry *second = registry_add(&b, LC_KIND_REDIS, 1, 0, 6, "x", NULL, NULL);
    cr_assert_eq(first, second, "the freed entry should be reused");
    cr_assert_eq(second->failed, 0);
    cr_assert_eq(second->is_async, 1);
    cr_assert_str_eq(second->target, "x");
    cr_assert_eq(second->state, LC_ENTRY_OPEN);
}

Test(registry, same_address_replaces_stale_entry)
{
    int a;
    registry_add(&a, LC_KIND_PQ, 0, 0, 5, "x", NULL, NULL);
    registry_add(&a, LC_KIND_PQ, 0, 0, 7, "y", NULL, NULL);
    cr_assert_eq(registry_owned_live(), 1);
}

Test(registry, target_is_truncated_safely)
{
    char long_target[500];
    memset(long_target, 'h', sizeof long_target - 1);
    long_target[sizeof long_target - 1] = '\0';
    int a;
    struct lc_entry *e = registry_add(&a, LC_KIND_REDIS, 0, 0, 5, long_target, NULL, NULL);
    cr_assert_eq(strlen(e->target), LC_TARGET_MAX - 1);
}

Test(registry, claim_marks_draining_and_skips_closing)
{
    int a, b, c;
    registry_add(&a, LC_KIND_PQ, 0, 0, 5, "a", NULL, NULL);
    registry_add(&b, LC_KIND_PQ, 0, 0, 6, "b", NULL, NULL);
    registry_add(&c, LC_KIND_REDIS, 0, 0, 7, "c", NULL, NULL);
    registry_take(&b, 0, NULL); /* the program freed b */
    struct lc_entry *out[8];
    size_t n = registry_claim_for_drain(getpid(), out, 8);
    cr_assert_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(out[i]->state, LC_ENTRY_DRAINING);
    /* Another process's handles are never claimed. */
    cr_assert_eq(registry_claim_for_drain(getpid() + 1, out, 8), 0);
    registry_release_drained(out, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(out[i]->state, LC_ENTRY_DRAINED);
    struct lc_registry_counts counts;
    registry_counts(&counts);
    cr_assert_eq(counts.drained, 2);
}

static void *churn(void *arg)
{
    (void)arg;
    char handles[1000];
    for (int i = 0; i < 1000; i++) {
        registry_add(&handles[i], i % 2, 0, 0, i, "t", NULL, NULL);
        registry_take(&handles[i], 0, NULL);
    }
    return NULL;
}

Test(registry, threads_churn_without_loss)
{
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, churn, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    struct lc_registry_counts c;
    registry_counts(&c);
    cr_assert_eq(c.opened[0] + c.opened[1], 8000);
    cr_assert_eq(c.closed[0] + c.closed[1], 8000);
    cr_assert_eq(registry_owned_live(), 0);
}

Test(registry, fork_child_owns_nothing)
{
    int a;
    registry_add(&a, LC_KIND_PQ, 0, 0, 5, "a", NULL, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        registry_atfork_child();
        struct lc_entry *out[4];
        int ok = registry_owned_live() == 0 && registry_claim_for_drain(getpid(), out, 4) == 0;
        _exit(ok ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert_eq(registry_owned_live(), 1);
}

/* A free that times out while the drain still owns the entry must leave it
 * alone: the drain keeps reading it (and the connection) until it releases
 * it. It used to be removed and recycled under the drain. */
Test(registry, take_timing_out_while_draining_leaves_the_entry)
{
    int a;
    registry_add(&a, LC_KIND_PQ, 0, 0, 5, "a", NULL, NULL);
    struct lc_entry *out[1];
    cr_assert_eq(registry_claim_for_drain(getpid(), out, 1), 1);
    struct lc_entry info;
    cr_assert_eq(registry_take(&a, lc_now_ms() + 20, &info), -1);
    cr_assert_eq(out[0]->state, LC_ENTRY_DRAINING, "the drain's entry was touched");
    cr_assert_eq(out[0]->handle, (void *)&a);
    cr_assert_eq(registry_owned_live(), 1);
    /* The entry is not on the free list: a new one gets other memory. */
    int b;
    struct lc_entry *other = registry_add(&b, LC_KIND_PQ, 0, 0, 6, "b", NULL, NULL);
    cr_assert_neq(other, out[0]);
    registry_release_drained(out, 1);
    cr_assert_eq(registry_take(&a, 0, NULL), 1);
}
