/* Reach (issue 11): programs that get to libpq/hiredis past the global scope,
 * where LD_PRELOAD alone puts lastcall's hooks first: dlsym from an FFI
 * (psycopg 3 through ctypes), libraries loaded with RTLD_DEEPBIND (PHP's
 * pgsql and pdo_pgsql), a bundled libpq under another name. Every scenario
 * runs without lastcall too: the difference is what lastcall did. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/reach_client")

static int exited0(int status)
{
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static const char *script(const char *name)
{
    static __thread char buf[4][1024];
    static __thread int i;
    char *out = buf[i++ % 4];
    snprintf(out, 1024, "%s/tests/clients/%s", getenv("LASTCALL_SOURCE_ROOT"), name);
    return out;
}

static int count_lines(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Sanitizer runtimes refuse dlopen(RTLD_DEEPBIND) outright (their dlopen
 * interceptor exits: google/sanitizers#611), with or without lastcall, and
 * PHP loads every extension that way. Those scenarios run in the plain build. */
static void skip_if_sanitized(void)
{
    if (getenv("LASTCALL_TEST_PRELOAD_FIRST"))
        cr_skip_test("RTLD_DEEPBIND cannot load beside a sanitizer runtime");
}

/* Runs ARGV to "ready", then SIGTERM; returns the wait status. */
static int sigterm_after_ready(const struct run_opts *o, const char *const *argv, struct proc *p)
{
    proc_start(p, o, argv);
    cr_assert_eq(proc_wait_for(p, "ready", 30000 + slack_ms()), 0, "never ready: %s %s", p->out,
                 p->err);
    kill(p->pid, SIGTERM);
    return proc_wait(p, 15000 + slack_ms(), NULL);
}

/* ---- dlsym ---- */

Test(reach, dlsym_on_a_libpq_handle_returns_the_hook)
{
    const char *argv[] = {CLIENT, "lookups", "local", NULL};
    struct proc a, b;
    struct run_opts without = {.preload = 0, .app = "lookups_without"};
    struct run_opts with = {.preload = 1, .app = "lookups_with"};
    cr_assert(exited0(run(&without, argv, &a, 30000)), "%s %s", a.out, a.err);
    cr_assert(exited0(run(&with, argv, &b, 30000)), "%s %s", b.out, b.err);
    /* Without lastcall the FFI gets libpq's own function and no one sees the
     * connection; with it, our hook, for hooked functions only. */
    cr_assert(strstr(a.out, "handle PQconnectdb in libpq.so.5"), "%s", a.out);
    cr_assert(strstr(b.out, "handle PQconnectdb in liblastcall.so"), "%s", b.out);
    cr_assert(strstr(b.out, "handle PQlibVersion in libpq.so.5"), "%s", b.out);
    cr_assert(strstr(b.out, "default PQconnectdb in liblastcall.so"), "%s", b.out);
    cr_assert(strstr(b.out, "next getpid in libc.so.6"), "%s", b.out);
    cr_assert(strstr(a.out, "handle nosuch in none") && strstr(b.out, "handle nosuch in none"));
    cr_assert(strstr(a.out, "vhandle PQconnectdb in none") &&
              strstr(b.out, "vhandle PQconnectdb in none"), "%s", b.out);
    cr_assert(strstr(b.out, "connect ok") && strstr(b.out, "stats pq_opened=1 "), "%s", b.out);

    /* LASTCALL_DISABLE: every lookup goes straight to libc's dlsym. */
    const char *env[] = {"LASTCALL_DISABLE=1", NULL};
    struct run_opts off = {.preload = 1, .app = "lookups_off", .env = env};
    cr_assert(exited0(run(&off, argv, &b, 30000)), "%s %s", b.out, b.err);
    cr_assert(strstr(b.out, "handle PQconnectdb in libpq.so.5"), "%s", b.out);
}

Test(reach, an_interposers_rtld_next_lookups_are_unchanged)
{
    /* Another interposer preloaded after lastcall wraps PQconnectdb and
     * forwards with dlsym(RTLD_NEXT). A dlsym wrapper that called libc's from
     * inside lastcall would answer "after lastcall" (the interposer itself:
     * an endless loop) instead of "after the interposer". */
    const char *next = build_path("tests/clients/reach_next.so");
    const char *first = getenv("LASTCALL_TEST_PRELOAD_FIRST");
    char pre_without[2048], pre_with[2048];
    snprintf(pre_without, sizeof pre_without, "LD_PRELOAD=%s%s%s", first ? first : "",
             first ? ":" : "", next);
    snprintf(pre_with, sizeof pre_with, "LD_PRELOAD=%s%s%s:%s", first ? first : "",
             first ? ":" : "", shim_path(), next);
    const char *env_without[] = {pre_without, NULL}, *env_with[] = {pre_with, NULL};
    struct run_opts without = {.env = env_without, .app = "interposer_without"};
    struct run_opts with = {.env = env_with, .app = "interposer_with"};
    const char *argv[] = {CLIENT, "lookups", "global", NULL};
    struct proc a, b;
    cr_assert(exited0(run(&without, argv, &a, 30000)), "%s %s", a.out, a.err);
    cr_assert(exited0(run(&with, argv, &b, 30000)), "%s %s", b.out, b.err);
    const char *same[] = {"interposer next PQconnectdb in libpq.so.5",
                          "interposer next getpid in libc.so.6", "interposer calls 1",
                          "connect ok"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        cr_assert(strstr(a.out, same[i]), "without: %s", a.out);
        cr_assert(strstr(b.out, same[i]), "with: %s", b.out);
    }
    cr_assert(strstr(b.out, "stats pq_opened=1 "), "%s", b.out);
}

/* ---- psycopg 3 (ctypes) ---- */

/* Debian 11 has no python3-psycopg (psycopg 3): those cases are skipped there. */
static int have_psycopg3(void)
{
    return system("/usr/bin/python3 -c 'import psycopg' >/dev/null 2>&1") == 0;
}

Test(reach, psycopg3_sigterm_with_open_transactions)
{
    if (!have_psycopg3())
        cr_skip_test("python3 has no psycopg (3) module on this system");
    const char *argv[] = {"/usr/bin/python3", script("reach_psycopg3.py"), "hold", NULL};
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "pg3_term_without"};
    int s_without = sigterm_after_ready(&without, argv, &p);
    pg_wait_backends_gone("pg3_term_without", 10000);
    int abrupt_without = pg_log_abrupt("pg3_term_without");

    struct run_opts with = {.preload = 1, .app = "pg3_term_with"};
    int s_with = sigterm_after_ready(&with, argv, &p);
    cr_assert(strstr(p.out, "stats pq_opened=3 "), "%s %s", p.out, p.err);
    int left = pg_wait_backends_gone("pg3_term_with", 10000);
    int abrupt_with = pg_log_abrupt("pg3_term_with");
    fprintf(stderr, "psycopg 3 (ctypes) SIGTERM'd with 3 open transactions: abrupt lines "
                    "without lastcall %d, with %d\n", abrupt_without, abrupt_with);
    cr_assert(died_by(s_without, SIGTERM), "status %d", s_without);
    cr_assert_eq(abrupt_without, 3, "the problem did not show without lastcall");
    cr_assert(died_by(s_with, SIGTERM), "status %d: %s", s_with, p.err);
    cr_assert_eq(left, 0);
    cr_assert_eq(abrupt_with, 0);
}

Test(reach, psycopg3_exit_with_open_transactions)
{
    if (!have_psycopg3())
        cr_skip_test("python3 has no psycopg (3) module on this system");
    const char *argv[] = {"/usr/bin/python3", script("reach_psycopg3.py"), "exit", NULL};
    struct proc a, b;
    struct run_opts without = {.preload = 0, .app = "pg3_exit_without"};
    struct run_opts with = {.preload = 1, .app = "pg3_exit_with"};
    int s_without = run(&without, argv, &a, 30000);
    int s_with = run(&with, argv, &b, 30000);
    pg_wait_backends_gone("pg3_exit_without", 10000);
    cr_assert_eq(pg_wait_backends_gone("pg3_exit_with", 10000), 0);
    fprintf(stderr, "psycopg 3 exit with 3 open transactions: abrupt lines without lastcall %d, "
                    "with %d\n", pg_log_abrupt("pg3_exit_without"), pg_log_abrupt("pg3_exit_with"));
    cr_assert(exited0(s_without), "%s", a.err);
    cr_assert_eq(s_with, s_without, "%s", b.err);
    cr_assert(strstr(b.out, "stats pq_opened=3 "), "%s %s", b.out, b.err);
    cr_assert_eq(pg_log_abrupt("pg3_exit_with"), 0);
}

/* ---- PHP (RTLD_DEEPBIND extensions) ---- */

Test(reach, php_pgsql_sigterm_with_open_transactions)
{
    skip_if_sanitized();
    const char *argv[] = {"php", script("reach_pgsql.php"), "hold", NULL};
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "php_term_without"};
    int s_without = sigterm_after_ready(&without, argv, &p);
    pg_wait_backends_gone("php_term_without", 10000);
    int abrupt_without = pg_log_abrupt("php_term_without");

    const char *env[] = {"LASTCALL_LOG=debug", NULL};
    struct run_opts with = {.preload = 1, .app = "php_term_with", .env = env};
    int s_with = sigterm_after_ready(&with, argv, &p);
    int left = pg_wait_backends_gone("php_term_with", 10000);
    int abrupt_with = pg_log_abrupt("php_term_with");
    fprintf(stderr, "php pgsql SIGTERM'd with 3 open transactions: abrupt lines without "
                    "lastcall %d, with %d\n", abrupt_without, abrupt_with);
    cr_assert(died_by(s_without, SIGTERM), "status %d", s_without);
    cr_assert_eq(abrupt_without, 3, "the problem did not show without lastcall");
    cr_assert_eq(count_lines(p.err, "open PostgreSQL"), 3, "%s", p.err);
    cr_assert(died_by(s_with, SIGTERM), "status %d: %s", s_with, p.err);
    cr_assert_eq(left, 0);
    cr_assert_eq(abrupt_with, 0);
}

Test(reach, php_pgsql_and_pdo_exit_with_open_transactions)
{
    skip_if_sanitized();
    const char *modes[] = {"exit", "pdo"};
    for (int m = 0; m < 2; m++) {
        const char *argv[] = {"php", script("reach_pgsql.php"), modes[m], NULL};
        char app_without[64], app_with[64];
        snprintf(app_without, sizeof app_without, "php_%s_without", modes[m]);
        snprintf(app_with, sizeof app_with, "php_%s_with", modes[m]);
        const char *env[] = {"LASTCALL_LOG=debug", NULL};
        struct run_opts without = {.preload = 0, .app = app_without};
        struct run_opts with = {.preload = 1, .app = app_with, .env = env};
        struct proc a, b;
        int s_without = run(&without, argv, &a, 30000);
        int s_with = run(&with, argv, &b, 30000);
        pg_wait_backends_gone(app_without, 10000);
        cr_assert_eq(pg_wait_backends_gone(app_with, 10000), 0);
        fprintf(stderr, "php %s exit with 3 open transactions: abrupt lines without lastcall "
                        "%d, with %d\n", modes[m], pg_log_abrupt(app_without),
                pg_log_abrupt(app_with));
        cr_assert(exited0(s_without), "%s", a.err);
        cr_assert_eq(s_with, s_without, "%s", b.err);
        /* Tracked: PHP itself closes them at exit, lastcall saw them open. */
        cr_assert_eq(count_lines(b.err, "open PostgreSQL"), 3, "%s", b.err);
        cr_assert_eq(pg_log_abrupt(app_with), 0);
    }
}

/* ---- a C module loaded with RTLD_DEEPBIND ---- */

Test(reach, deepbind_module_exit_is_drained)
{
    skip_if_sanitized();
    /* localmod.so links libpq and hiredis; loaded with RTLD_DEEPBIND its
     * calls bind to them directly. Bind-now and lazy binding both. */
    const char *flags[] = {"deepbind", "deepbind-lazy"};
    for (int f = 0; f < 2; f++) {
        char app_without[64], app_with[64], key_without[64], key_with[64];
        snprintf(app_without, sizeof app_without, "deep_%d_without", f);
        snprintf(app_with, sizeof app_with, "deep_%d_with", f);
        snprintf(key_without, sizeof key_without, "deep_key_%d_without", f);
        snprintf(key_with, sizeof key_with, "deep_key_%d_with", f);
        const char *mod = build_path("tests/clients/localmod.so");
        const char *argv_without[] = {CLIENT, "run", mod, flags[f], "localmod_run", key_without,
                                      "exit", NULL};
        const char *argv_with[] = {CLIENT, "run", mod, flags[f], "localmod_run", key_with,
                                   "exit", NULL};
        struct run_opts without = {.preload = 0, .app = app_without};
        struct run_opts with = {.preload = 1, .app = app_with};
        struct proc a, b;
        cr_assert(exited0(run(&without, argv_without, &a, 30000)), "%s", a.err);
        cr_assert(exited0(run(&with, argv_with, &b, 30000)), "%s", b.err);
        cr_assert(strstr(b.out, "pq_opened=2 pq_live=2 redis_opened=1 redis_live=1"), "%s",
                  b.out);
        pg_wait_backends_gone(app_without, 10000);
        cr_assert_eq(pg_wait_backends_gone(app_with, 10000), 0);
        int abrupt_without = pg_log_abrupt(app_without), abrupt_with = pg_log_abrupt(app_with);
        fprintf(stderr, "%s module, exit with 2 open transactions: abrupt lines without "
                        "lastcall %d, with %d\n", flags[f], abrupt_without, abrupt_with);
        cr_assert_eq(abrupt_without, 2, "the problem did not show without lastcall");
        cr_assert_eq(abrupt_with, 0);
        cr_assert_null(redis_get(key_without), "the buffered SET arrived without lastcall?");
        char *v = redis_get(key_with);
        cr_assert(v && strcmp(v, "local-module") == 0, "buffered SET from the module lost");
    }
}

Test(reach, deepbind_module_sigterm_is_drained)
{
    skip_if_sanitized();
    const char *mod = build_path("tests/clients/localmod.so");
    const char *argv[] = {CLIENT, "run", mod, "deepbind", "localmod_run", "deep_term_key", "hold",
                          NULL};
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "deep_term_without"};
    int s_without = sigterm_after_ready(&without, argv, &p);
    struct run_opts with = {.preload = 1, .app = "deep_term_with"};
    int s_with = sigterm_after_ready(&with, argv, &p);
    pg_wait_backends_gone("deep_term_without", 10000);
    cr_assert_eq(pg_wait_backends_gone("deep_term_with", 10000), 0);
    cr_assert(died_by(s_without, SIGTERM) && died_by(s_with, SIGTERM), "%d %d: %s", s_without,
              s_with, p.err);
    cr_assert_eq(pg_log_abrupt("deep_term_without"), 2);
    cr_assert_eq(pg_log_abrupt("deep_term_with"), 0);
}

/* ---- a bundled libpq under another name ---- */

Test(reach, bundled_libpq_copy_in_a_local_scope_is_tracked_and_drained)
{
    const char *mod = build_path("tests/clients/reach_bundled.so");
    const char *argv[] = {CLIENT, "run", mod, "local", "reach_mod_run", "unused", "hold", NULL};
    struct proc p;
    struct run_opts without = {.preload = 0, .app = "bundled_without"};
    int s_without = sigterm_after_ready(&without, argv, &p);

    struct run_opts with = {.preload = 1, .app = "bundled_with"};
    proc_start(&p, &with, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 30000 + slack_ms()), 0, "%s %s", p.out, p.err);
    /* The copy is what the process runs: the system libpq is not even loaded. */
    char maps_path[64];
    snprintf(maps_path, sizeof maps_path, "/proc/%d/maps", (int)p.pid);
    char *maps = slurp(maps_path);
    cr_assert(maps && strstr(maps, "libpq-1a2b3c4d.so.5.15"), "bundled copy not mapped");
    cr_assert_null(strstr(maps, "libpq.so.5"), "the system libpq is loaded too");
    free(maps);
    cr_assert(strstr(p.out, "stats pq_opened=2 pq_live=2"), "%s %s", p.out, p.err);
    kill(p.pid, SIGTERM);
    int s_with = proc_wait(&p, 15000 + slack_ms(), NULL);
    pg_wait_backends_gone("bundled_without", 10000);
    cr_assert_eq(pg_wait_backends_gone("bundled_with", 10000), 0);
    fprintf(stderr, "bundled libpq copy, SIGTERM with 2 open transactions: abrupt lines without "
                    "lastcall %d, with %d\n", pg_log_abrupt("bundled_without"),
            pg_log_abrupt("bundled_with"));
    cr_assert(died_by(s_without, SIGTERM) && died_by(s_with, SIGTERM), "%d %d: %s", s_without,
              s_with, p.err);
    cr_assert_eq(pg_log_abrupt("bundled_without"), 2);
    cr_assert_eq(pg_log_abrupt("bundled_with"), 0);
}

Test(reach, bundled_libpq_copy_over_tls_exit_is_clean)
{
    /* The Terminate goes through SSL_write of the libssl the copy in use links. */
    const char *mod = build_path("tests/clients/reach_bundled.so");
    const char *argv[] = {CLIENT, "run", mod, "local", "reach_mod_run", "unused", "exit", NULL};
    const char *env[] = {"PGHOST=127.0.0.1", "PGSSLMODE=require", NULL};
    struct run_opts without = {.app = "bundled_tls_without", .env = env};
    struct run_opts with = {.preload = 1, .app = "bundled_tls_with", .env = env};
    struct proc a, b;
    cr_assert(exited0(run(&without, argv, &a, 30000)), "%s", a.err);
    cr_assert(exited0(run(&with, argv, &b, 30000)), "%s", b.err);
    cr_assert(strstr(b.out, "stats pq_opened=2 pq_live=2"), "%s %s", b.out, b.err);
    pg_wait_backends_gone("bundled_tls_without", 10000);
    cr_assert_eq(pg_wait_backends_gone("bundled_tls_with", 10000), 0);
    if (pg_log_abrupt("bundled_tls_with") || pg_log_count("bundled_tls_with", "SSL"))
        pg_log_dump_app("bundled_tls_with");
    fprintf(stderr, "bundled libpq copy over TLS, exit with 2 open transactions: abrupt lines "
                    "without lastcall %d, with %d\n", pg_log_abrupt("bundled_tls_without"),
            pg_log_abrupt("bundled_tls_with"));
    /* Over TCP each connection logs a reset and an unexpected EOF. */
    cr_assert_eq(pg_log_abrupt("bundled_tls_without"), 4, "the problem did not show");
    cr_assert_eq(pg_log_abrupt("bundled_tls_with"), 0);
    cr_assert_eq(pg_log_count("bundled_tls_with", "SSL"), 0);
    cr_assert_eq(b.err_len, 0, "stderr: %s", b.err);
}

/* ---- lastcall doctor against what the runs show ---- */

struct doctor_case {
    const char *doctor_cmd;   /* what `lastcall doctor` is asked about */
    const char *says;         /* the line doctor must print for this program's driver */
    int says_seen;            /* does that line promise lastcall sees the connections? */
    const char *argv[8];      /* the program, run under lastcall */
    int needs_deepbind;
};

Test(reach, doctor_verdicts_match_what_the_runs_show)
{
    const char *reach_client = CLIENT;
    const char *lc_client = build_path("tests/clients/lc_client");
    const char *static_hello = build_path("tests/clients/static_hello");
    struct doctor_case cases[] = {
        {lc_client, "yes: ", 1, {lc_client, "exit-open-tx", "1", "doctor_key", NULL}, 0},
        {reach_client, "loads libraries at run time (dlopen)", 1,
         {reach_client, "lookups", "local", NULL}, 0},
        {"/usr/bin/python3", "driver psycopg (3), Python implementation: yes", 1,
         {"/usr/bin/python3", script("reach_psycopg3.py"), "exit", NULL}, 0},
        {"php", "driver pgsql: yes", 1, {"php", script("reach_pgsql.php"), "exit", NULL}, 1},
        {"php", "driver pdo_pgsql: yes", 1, {"php", script("reach_pgsql.php"), "pdo", NULL}, 1},
        {static_hello, "no: ", 0, {static_hello, NULL}, 0},
        {"true", "no: ", 0, {"true", NULL}, 0},
    };
    int sanitized = getenv("LASTCALL_TEST_PRELOAD_FIRST") != NULL;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct doctor_case *c = &cases[i];
        struct proc d, r;
        if (strstr(c->says, "psycopg (3)") && !have_psycopg3())
            continue;
        const char *dargv[] = {build_path("shim/lastcall"), "doctor", c->doctor_cmd, NULL};
        struct run_opts plain = {0};
        int ds = run(&plain, dargv, &d, 30000);
        cr_assert(ds != -1 && WIFEXITED(ds), "doctor %s: %d", c->doctor_cmd, ds);
        cr_assert(strstr(d.out, c->says), "doctor %s did not say \"%s\":\n%s", c->doctor_cmd,
                  c->says, d.out);
        if (c->needs_deepbind && sanitized)
            continue;
        const char *env[] = {"LASTCALL_LOG=debug", NULL};
        struct run_opts with = {.preload = 1, .app = "doctor_check", .env = env};
        int rs = run(&with, c->argv, &r, 30000);
        cr_assert(exited0(rs), "%s: status %d: %s", c->argv[0], rs, r.err);
        int seen = strstr(r.err, "open PostgreSQL") != NULL;
        fprintf(stderr, "doctor %s: \"%s\"; run under lastcall: %s\n", c->doctor_cmd, c->says,
                seen ? "connections seen" : "nothing seen");
        cr_assert_eq(seen, c->says_seen, "doctor on %s says \"%s\" but the run %s:\n%s",
                     c->doctor_cmd, c->says, seen ? "was seen" : "was not seen", r.err);
    }
    cr_assert_eq(pg_wait_backends_gone("doctor_check", 10000), 0);
    cr_assert_eq(pg_log_abrupt("doctor_check"), 0);
}
