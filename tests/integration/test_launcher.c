/* The lastcall launcher and lastcall doctor. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

#define LAUNCHER build_path("shim/lastcall")

Test(launcher, exit_codes_0_to_255_pass_through)
{
    struct run_opts o = {0};
    for (int n = 0; n < 256; n++) {
        char script[32];
        snprintf(script, sizeof script, "exit %d", n);
        const char *argv[] = {LAUNCHER, "--", "sh", "-c", script, NULL};
        struct proc p;
        int s = run(&o, argv, &p, 10000);
        cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == n, "exit %d gave status %d: %s", n, s, p.err);
    }
}

Test(launcher, death_by_signal_gives_128_plus_n_to_a_shell)
{
    const int sigs[] = {SIGHUP, SIGINT, SIGKILL, SIGUSR1, SIGTERM, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        char script[1200];
        snprintf(script, sizeof script, "'%s' -- sh -c 'kill -%d $$; sleep 5'; echo $?", LAUNCHER,
                 sigs[i]);
        const char *argv[] = {"sh", "-c", script, NULL};
        struct run_opts o = {0};
        struct proc p;
        int s = run(&o, argv, &p, 10000);
        cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
        cr_assert_eq(atoi(p.out), 128 + sigs[i], "signal %d gave %s", sigs[i], p.out);
    }
}

Test(launcher, same_pid_and_existing_preload_is_kept)
{
    const char *other = build_path("tests/clients/localmod.so");
    char env_preload[1024];
    snprintf(env_preload, sizeof env_preload, "LD_PRELOAD=%s", other);
    const char *env[] = {env_preload, NULL};
    struct run_opts o = {.env = env};
    const char *argv[] = {LAUNCHER, "sh", "-c", "echo $$; echo $LD_PRELOAD", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.err);
    int pid = atoi(p.out);
    cr_assert_eq(pid, p.pid, "the launcher must exec, not fork");
    char *second = strchr(p.out, '\n') + 1;
    cr_assert(strncmp(second, other, strlen(other)) == 0, "%s", second);
    cr_assert(strstr(second, "liblastcall.so"), "%s", second);

    /* Already preloaded: not added twice. */
    const char *argv2[] = {LAUNCHER, "--", LAUNCHER, "sh", "-c", "echo $LD_PRELOAD", NULL};
    s = run(&o, argv2, &p, 10000);
    char *first = strstr(p.out, "liblastcall.so");
    cr_assert(first && strstr(first + 1, "liblastcall.so") == NULL, "%s", p.out);
}

Test(launcher, options_set_variables_and_bad_ones_are_refused)
{
    struct run_opts o = {0};
    const char *argv[] = {LAUNCHER, "--deadline", "750ms", "--grace", "0", "--signals", "TERM",
                          "--log", "info", "--", "sh", "-c",
                          "echo $LASTCALL_DEADLINE $LASTCALL_GRACE $LASTCALL_SIGNALS $LASTCALL_LOG",
                          NULL};
    struct proc p;
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.err);
    cr_assert_str_eq(p.out, "750ms 0 TERM info\n");

    const char *bad[] = {LAUNCHER, "--deadline", "soon", "true", NULL};
    s = run(&o, bad, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 2);
    cr_assert(strstr(p.err, "--deadline soon"), "%s", p.err);

    const char *none[] = {LAUNCHER, NULL};
    s = run(&o, none, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 2);

    const char *missing[] = {LAUNCHER, "--", "no-such-command-lastcall", NULL};
    s = run(&o, missing, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 127, "%d", s);
    cr_assert(strstr(p.err, "not found"), "%s", p.err);

    const char *help[] = {LAUNCHER, "--help", NULL};
    s = run(&o, help, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert(strstr(p.out, "LASTCALL_DEADLINE") && strstr(p.out, "LASTCALL_GRACE"));
}

Test(launcher, setuid_targets_are_refused)
{
    char dir[] = "/tmp/lastcall-suid.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/suid_true", dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp /bin/true '%s' && chmod 4755 '%s'", path, path);
    cr_assert_eq(system(cmd), 0);
    struct run_opts o = {0};
    const char *argv[] = {LAUNCHER, "--", path, NULL};
    struct proc p;
    int s = run(&o, argv, &p, 10000);
    unlink(path);
    rmdir(dir);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 126, "status %d", s);
    cr_assert(strstr(p.err, "refusing") && strstr(p.err, "setuid"), "%s", p.err);
}

Test(launcher, doctor_says_yes_for_psql_and_no_for_a_static_binary)
{
    struct run_opts o = {0};
    struct proc p;
    const char *psql[] = {LAUNCHER, "doctor", "psql", NULL};
    int s = run(&o, psql, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.out);
    cr_assert(strstr(p.out, "yes:") && strstr(p.out, "libpq"), "%s", p.out);

    const char *stat_bin[] = {LAUNCHER, "doctor", build_path("tests/clients/static_hello"), NULL};
    s = run(&o, stat_bin, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 1, "%s", p.out);
    cr_assert(strstr(p.out, "statically linked"), "%s", p.out);

    const char *py[] = {LAUNCHER, "doctor", "/usr/bin/python3", NULL};
    s = run(&o, py, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 3, "%s", p.out);
    cr_assert(strstr(p.out, "psycopg2"), "%s", p.out);

    const char *client[] = {LAUNCHER, "doctor", build_path("tests/clients/lc_client"), NULL};
    s = run(&o, client, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.out);
    cr_assert(strstr(p.out, "libpq and hiredis"), "%s", p.out);

    const char *missing[] = {LAUNCHER, "doctor", "no-such-command-lastcall", NULL};
    s = run(&o, missing, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 2, "%s", p.out);
}

Test(launcher, works_after_meson_install)
{
    char dir[] = "/tmp/lastcall-install.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "meson install -C '%s' --no-rebuild --destdir '%s' >/dev/null 2>&1 && "
             "launcher=$(find '%s' -path '*/bin/lastcall' -type f) && "
             "test -n \"$launcher\" && \"$launcher\" -- sh -c 'echo \"$LD_PRELOAD\"' && "
             "find '%s' -name lastcall.1 | grep -q . && find '%s' -name lastcall.pc | grep -q . && "
             "find '%s' -name lastcall.h | grep -q .",
             getenv("LASTCALL_BUILD_ROOT"), dir, dir, dir, dir, dir);
    const char *argv[] = {"sh", "-c", cmd, NULL};
    struct run_opts o = {0};
    struct proc p;
    int s = run(&o, argv, &p, 60000);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    cr_assert(strstr(p.out, dir) && strstr(p.out, "/liblastcall.so"), "%s", p.out);
}
