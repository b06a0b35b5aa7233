/* Containers: lastcall is not an init. In a PID namespace (what a container
 * runtime gives), tini or dumb-init is PID 1, reaps orphans and forwards
 * SIGTERM to `lastcall -- app`, which drains; the runtime sees PID 1's status. */
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

#define LAUNCHER build_path("shim/lastcall")
#define CLIENT build_path("tests/clients/lc_client")

static void need_root_and_inits(void)
{
    if (access("/usr/bin/tini", X_OK) != 0 || access("/usr/bin/dumb-init", X_OK) != 0)
        cr_skip_test("tini or dumb-init missing: tests/install-deps installs them");
    skip_unless_pid_namespace();
}

/* unshare --fork has one child: the namespace's PID 1, seen from here. */
/* Zombies among PID's children. */
static int zombie_children(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    char *list = slurp(path);
    cr_assert_not_null(list);
    int zombies = 0;
    char *save = NULL;
    for (char *tok = strtok_r(list, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
        char stat_path[64];
        snprintf(stat_path, sizeof stat_path, "/proc/%s/stat", tok);
        char *stat = slurp(stat_path);
        /* "pid (comm) S ...": the state follows the last ')'. */
        char *paren = stat ? strrchr(stat, ')') : NULL;
        if (paren && paren[1] == ' ' && paren[2] == 'Z')
            zombies++;
        free(stat);
    }
    free(list);
    return zombies;
}

struct outcome {
    int status; /* of unshare: PID 1's exit status, as a runtime sees it */
    int abrupt;
    int set_arrived;
};

/* `INIT... [lastcall --] lc_client hold KEY` as PID 1's tree in a fresh PID
 * namespace: an open transaction and a buffered Redis SET; SIGTERM to PID 1. */
static struct outcome container_stop(const char *const *init, int with, const char *app,
                                     const char *key)
{
    const char *argv[24] = {"unshare", "--pid", "--fork", "--mount-proc"};
    int a = 4;
    for (int i = 0; init[i]; i++)
        argv[a++] = init[i];
    if (with) {
        argv[a++] = LAUNCHER;
        argv[a++] = "--";
    }
    argv[a++] = CLIENT;
    argv[a++] = "hold";
    argv[a++] = key;
    argv[a] = NULL;
    struct run_opts o = {.app = app};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready pid 2", 10000), 0, "%s %s", p.out, p.err);
    pid_t pid1 = pid1_of(p.pid);
    cr_assert_gt(pid1, 0);
    kill(pid1, SIGTERM);
    struct outcome r = {.status = proc_wait(&p, 10000, NULL)};
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    r.abrupt = pg_log_abrupt(app);
    char *v = redis_get(key);
    r.set_arrived = v && strcmp(v, "held") == 0;
    free(v);
    if (with && (r.abrupt || !r.set_arrived))
        fprintf(stderr, "%s: %s\n", app, p.err);
    return r;
}

static void init_forwards_and_the_app_drains(const char *name, const char *const *init)
{
    need_root_and_inits();
    char app_without[64], app_with[64], key_without[64], key_with[64];
    snprintf(app_without, sizeof app_without, "%s_without", name);
    snprintf(app_with, sizeof app_with, "%s_with", name);
    snprintf(key_without, sizeof key_without, "%s_key_without", name);
    snprintf(key_with, sizeof key_with, "%s_key_with", name);
    struct outcome without = container_stop(init, 0, app_without, key_without);
    struct outcome with = container_stop(init, 1, app_with, key_with);
    fprintf(stderr,
            "%s as PID 1, SIGTERM: without lastcall status %d, %d abrupt lines, SET %s; "
            "with lastcall status %d, %d abrupt lines, SET %s\n",
            name, WIFEXITED(without.status) ? WEXITSTATUS(without.status) : -1, without.abrupt,
            without.set_arrived ? "arrived" : "lost",
            WIFEXITED(with.status) ? WEXITSTATUS(with.status) : -1, with.abrupt,
            with.set_arrived ? "arrived" : "lost");
    /* The init alone forwards the signal but drains nothing. */
    cr_assert_gt(without.abrupt, 0);
    cr_assert_eq(without.set_arrived, 0);
    cr_assert(WIFEXITED(with.status) && WEXITSTATUS(with.status) == 143, "status %d",
              with.status);
    cr_assert_eq(with.abrupt, 0);
    cr_assert(with.set_arrived, "the buffered SET was lost");
}

Test(containers, tini_forwards_sigterm_the_app_drains_and_pid1_exits_143)
{
    const char *init[] = {"tini", "--", NULL};
    init_forwards_and_the_app_drains("tini", init);
}

Test(containers, dumb_init_forwards_sigterm_the_app_drains_and_pid1_exits_143)
{
    const char *init[] = {"dumb-init", NULL};
    init_forwards_and_the_app_drains("dumb_init", init);
}

/* The app leaves an orphan (a background child of a subshell that exits).
 * It is reparented to PID 1: with lastcall as PID 1 it stays a zombie, under
 * tini or dumb-init it is reaped. Then SIGTERM still drains as usual. */
static int orphans_left(const char *const *init, const char *app, int *status)
{
    char script[2048];
    snprintf(script, sizeof script, "sh -c 'sleep 0.3 &'; exec '%s' hold %s_key", CLIENT, app);
    const char *argv[24] = {"unshare", "--pid", "--fork", "--mount-proc"};
    int a = 4;
    for (int i = 0; init && init[i]; i++)
        argv[a++] = init[i];
    argv[a++] = LAUNCHER;
    argv[a++] = "--";
    argv[a++] = "sh";
    argv[a++] = "-c";
    argv[a++] = script;
    argv[a] = NULL;
    struct run_opts o = {.app = app};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready pid", 10000), 0, "%s %s", p.out, p.err);
    pid_t pid1 = pid1_of(p.pid);
    cr_assert_gt(pid1, 0);
    sleep_ms(800);
    int zombies = zombie_children(pid1);
    kill(pid1, SIGTERM);
    *status = proc_wait(&p, 10000, NULL);
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    cr_assert_eq(pg_log_abrupt(app), 0, "%s", p.err);
    return zombies;
}

Test(containers, lastcall_as_pid1_reaps_no_orphans_and_an_init_does)
{
    need_root_and_inits();
    int s_alone, s_tini, s_dumb;
    const char *tini[] = {"tini", "--", NULL};
    const char *dumb[] = {"dumb-init", NULL};
    int alone = orphans_left(NULL, "orphans_alone", &s_alone);
    int under_tini = orphans_left(tini, "orphans_tini", &s_tini);
    int under_dumb = orphans_left(dumb, "orphans_dumb_init", &s_dumb);
    fprintf(stderr, "zombies under PID 1: lastcall alone %d, tini %d, dumb-init %d\n", alone,
            under_tini, under_dumb);
    cr_assert_geq(alone, 1, "the orphan should stay a zombie with lastcall as PID 1");
    cr_assert_eq(under_tini, 0);
    cr_assert_eq(under_dumb, 0);
    const int statuses[] = {s_alone, s_tini, s_dumb};
    for (int i = 0; i < 3; i++)
        cr_assert(WIFEXITED(statuses[i]) && WEXITSTATUS(statuses[i]) == 143, "status %d",
                  statuses[i]);
}

Test(containers, doctor_as_pid1_and_help_say_when_to_add_an_init)
{
    need_root_and_inits();
    const char *argv[] = {"unshare", "--pid", "--fork", "--mount-proc", LAUNCHER, "doctor",
                          CLIENT, NULL};
    struct run_opts o = {0};
    struct proc p;
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    cr_assert(strstr(p.out, "reaps no orphans") && strstr(p.out, "tini --"), "%s", p.out);

    /* Not PID 1: no such note. */
    const char *plain[] = {LAUNCHER, "doctor", CLIENT, NULL};
    s = run(&o, plain, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert_null(strstr(p.out, "reaps no orphans"), "%s", p.out);

    const char *help[] = {LAUNCHER, "--help", NULL};
    s = run(&o, help, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert(strstr(p.out, "not an init") && strstr(p.out, "tini -- lastcall --") &&
                  strstr(p.out, "docker run --init"),
              "%s", p.out);
}
