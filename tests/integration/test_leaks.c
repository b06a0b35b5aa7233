/* Leak tracing (issue: staging leak reports, live thresholds, status, logs). */
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

#define LEAKY build_path("tests/clients/lc_leaky")

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lastcall-leaks.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
}

TestSuite(leaks, .init = make_tmpdir, .fini = remove_tmpdir);

static int run_leaky(const char *const *env, const char *mode, struct proc *p)
{
    const char *argv[] = {LEAKY, mode, NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "leaky"};
    return run(&o, argv, p, 60000);
}

/* Parses the report as JSON and prints what the test checks. */
static const char *check_json =
    "import json, sys\n"
    "d = json.load(open(sys.argv[1]))\n"
    "t = d['totals']\n"
    "print('pq_leaked', t['postgresql']['leaked'], 'redis_leaked', t['redis']['leaked'],\n"
    "      'pq_failed', t['postgresql']['failed'], 'failed_never_freed',\n"
    "      t['postgresql']['failed_never_freed'], 'closed', t['postgresql']['closed'])\n"
    "for l in d['leaks']:\n"
    "    top = l['stack'][0]\n"
    "    assert set(l) >= {'kind', 'count', 'target', 'stack', 'first_opened_at'}\n"
    "    assert set(top) >= {'function', 'file', 'line', 'module', 'offset'}\n"
    "    print('group', l['kind'], l['count'], 'failed' if l['failed'] else 'open',\n"
    "          top['function'], (top['file'] or '').split('/')[-1], top['line'])\n";

Test(leaks, json_report_counts_leaks_and_names_the_opening_function)
{
    char report[128], env_report[160];
    snprintf(report, sizeof report, "%s/report.json", tmpdir);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", report);
    const char *env[] = {env_report, "LASTCALL_REPORT_FORMAT=json", NULL};
    struct proc p;
    int s = run_leaky(env, "leak", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%d %s", s, p.err);
    struct stat st;
    cr_assert_eq(stat(report, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "report mode %o", st.st_mode & 0777);
    const char *args[] = {report, NULL};
    char *out = python(check_json, args);
    cr_assert_not_null(out, "the report is not valid JSON");
    fprintf(stderr, "%s", out);
    cr_assert(strstr(out, "pq_leaked 9 redis_leaked 3 pq_failed 1 failed_never_freed 1 closed 1"),
              "%s", out);
    cr_assert(strstr(out, "group postgresql 5 open open_pg_leak lc_leaky.c "), "%s", out);
    cr_assert(strstr(out, "group redis 3 open open_redis_leak lc_leaky.c "), "%s", out);
    cr_assert(strstr(out, "group postgresql 1 failed failed_connect lc_leaky.c "), "%s", out);
    /* Most first. */
    cr_assert(strstr(out, "group postgresql 5") < strstr(out, "group redis 3"), "%s", out);
    cr_assert_eq(pg_wait_backends_gone("leaky", 10000), 0);
    cr_assert_eq(pg_log_abrupt("leaky"), 0);
}

Test(leaks, text_report_reads_like_leaksanitizer)
{
    char report[128], env_report[160];
    snprintf(report, sizeof report, "%s/report.txt", tmpdir);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", report);
    const char *env[] = {env_report, NULL};
    struct proc p;
    int s = run_leaky(env, "leak", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    char *text = slurp(report);
    cr_assert_not_null(text);
    cr_assert(strstr(text, "5 PostgreSQL connections to "), "%s", text);
    cr_assert(strstr(text, "leaked, opened at:\n  #0 open_pg_leak "), "%s", text);
    cr_assert(strstr(text, "lc_leaky.c:"), "%s", text);
    cr_assert(strstr(text, "3 Redis connections to "), "%s", text);
    cr_assert(strstr(text, "1 PostgreSQL failed connect to "), "%s", text);
}

Test(leaks, passwords_never_reach_a_report_or_a_log)
{
    char report[128], env_report[160], log[128], env_log[160];
    snprintf(report, sizeof report, "%s/report.json", tmpdir);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", report);
    snprintf(log, sizeof log, "%s/lastcall.log", tmpdir);
    snprintf(env_log, sizeof env_log, "LASTCALL_LOG_FILE=%s", log);
    const char *env_json[] = {env_report, "LASTCALL_REPORT_FORMAT=json", "LASTCALL_LOG=debug",
                              env_log, "LASTCALL_LOG_FORMAT=json", NULL};
    struct proc p;
    int s = run_leaky(env_json, "leak", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    char *r = slurp(report), *l = slurp(log);
    cr_assert(r && l && strlen(l) > 0);
    cr_assert_null(strstr(r, "s3cr3t"), "password in the JSON report");
    cr_assert_null(strstr(l, "s3cr3t"), "password in the log");
    cr_assert_null(strstr(p.err, "s3cr3t"));

    const char *env_text[] = {env_report, "LASTCALL_LOG=debug", NULL};
    s = run_leaky(env_text, "leak", &p);
    r = slurp(report);
    cr_assert(r && strstr(r, "PostgreSQL"));
    cr_assert_null(strstr(r, "s3cr3t"), "password in the text report");
    cr_assert(strstr(p.err, "open PostgreSQL"), "%s", p.err);
    cr_assert_null(strstr(p.err, "s3cr3t"), "password on stderr");
}

Test(leaks, json_log_lines_parse_and_carry_the_events)
{
    char log[128], env_log[160];
    snprintf(log, sizeof log, "%s/lastcall.log", tmpdir);
    snprintf(env_log, sizeof env_log, "LASTCALL_LOG_FILE=%s", log);
    const char *env[] = {"LASTCALL_LOG=debug", "LASTCALL_LOG_FORMAT=json", env_log, NULL};
    struct proc p;
    int s = run_leaky(env, "leak", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert_eq(p.err_len, 0, "the log went to a file, stderr should be empty: %s", p.err);
    const char *args[] = {log, NULL};
    char *out = python("import json, sys\n"
                       "events = [json.loads(l)['event'] for l in open(sys.argv[1])]\n"
                       "print(' '.join(sorted(set(events))))\n",
                       args);
    cr_assert_not_null(out, "a log line is not JSON");
    cr_assert(strstr(out, "open") && strstr(out, "close") && strstr(out, "connect_failed") &&
                  strstr(out, "drain_phase") && strstr(out, "drain_summary"),
              "%s", out);
}

Test(leaks, threshold_warns_once_with_the_top_stacks)
{
    const char *env[] = {"LASTCALL_LEAK_THRESHOLD=3", NULL};
    struct proc p;
    int s = run_leaky(env, "threshold", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    char *first = strstr(p.err, "above LASTCALL_LEAK_THRESHOLD=3");
    cr_assert_not_null(first, "%s", p.err);
    cr_assert_null(strstr(first + 1, "above LASTCALL_LEAK_THRESHOLD"), "warned twice: %s", p.err);
    cr_assert(strstr(p.err, "4 live PostgreSQL connections"), "%s", p.err);
    cr_assert(strstr(p.err, "open_pg_leak"), "%s", p.err);
}

Test(leaks, idle_handle_is_suspected_then_cleared)
{
    const char *env[] = {"LASTCALL_LEAK_AGE=200ms", NULL};
    const char *argv[] = {LEAKY, "idle", "800", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "leaky_idle"};
    struct proc p;
    int s = run(&o, argv, &p, 30000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.err);
    char *suspect = strstr(p.err, "suspected leak");
    char *cleared = strstr(p.err, "no longer suspect");
    cr_assert(suspect && cleared && suspect < cleared, "%s", p.err);
    cr_assert(strstr(p.err, "open_pg_leak"), "%s", p.err);
}

Test(leaks, status_snapshot_matches_what_the_program_holds)
{
    const char *env[] = {"LASTCALL_STATUS_SIGNAL=USR2", NULL};
    const char *argv[] = {LEAKY, "status", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "leaky_status"};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    kill(p.pid, SIGUSR2);
    cr_assert_eq(proc_wait_for_err(&p, "per target", 10000), 0, "%s", p.err);
    kill(p.pid, SIGTERM);
    int s = proc_wait(&p, 10000, NULL);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "USR2 must not kill: %d", s);
    cr_assert(strstr(p.err, "status: PostgreSQL live 3 (in flight 0, idle 1, idle in transaction "
                            "1, failed 1)"),
              "%s", p.err);
    cr_assert(strstr(p.err, "status: Redis live 1 (in flight 0, idle 1, idle in transaction 0, "
                            "failed 0)"),
              "%s", p.err);
}

Test(leaks, unwritable_report_path_warns_once_and_changes_nothing)
{
    const char *env[] = {"LASTCALL_REPORT=/nonexistent-lastcall-dir/report.txt", NULL};
    struct proc p;
    int s = run_leaky(env, "threshold", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0);
    cr_assert(strstr(p.err, "cannot write the leak report"), "%s", p.err);
    cr_assert_eq(strchr(p.err, '\n'), p.err + p.err_len - 1, "more than one line: %s", p.err);
}

Test(leaks, report_never_writes_through_a_symlink)
{
    char victim[128], link_path[128], env_report[160];
    snprintf(victim, sizeof victim, "%s/victim", tmpdir);
    snprintf(link_path, sizeof link_path, "%s/report.txt", tmpdir);
    FILE *f = fopen(victim, "w");
    fputs("precious\n", f);
    fclose(f);
    cr_assert_eq(symlink(victim, link_path), 0);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", link_path);
    const char *env[] = {env_report, NULL};
    struct proc p;
    run_leaky(env, "threshold", &p);
    char *v = slurp(victim);
    cr_assert_str_eq(v, "precious\n");
    struct stat st;
    cr_assert_eq(lstat(link_path, &st), 0);
    cr_assert(S_ISREG(st.st_mode), "the report replaced the link with a file");
}

Test(leaks, stripped_binary_reports_module_and_offset)
{
    char stripped[128], cmd[512], report[128], env_report[160];
    snprintf(stripped, sizeof stripped, "%s/lc_leaky_stripped", tmpdir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && strip '%s'", LEAKY, stripped, stripped);
    cr_assert_eq(system(cmd), 0);
    snprintf(report, sizeof report, "%s/report.json", tmpdir);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", report);
    const char *env[] = {env_report, "LASTCALL_REPORT_FORMAT=json", NULL};
    const char *argv[] = {stripped, "threshold", NULL};
    struct run_opts o = {.preload = 1, .env = env, .app = "leaky_stripped"};
    struct proc p;
    int s = run(&o, argv, &p, 60000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.err);
    const char *args[] = {report, NULL};
    char *out = python("import json, sys\n"
                       "d = json.load(open(sys.argv[1]))\n"
                       "top = d['leaks'][0]['stack'][0]\n"
                       "print(d['leaks'][0]['count'], top['module'].split('/')[-1], top['offset'],\n"
                       "      top['file'], top['line'])\n",
                       args);
    cr_assert_not_null(out);
    /* No symbols, no debug information: module and offset, nothing invented. */
    cr_assert(strstr(out, "5 lc_leaky_stripped 0x") && strstr(out, " None None"), "%s", out);
}

Test(leaks, stack_of_a_connection_opened_in_a_thread)
{
    /* lastcall's own pthread_create trampoline sits under every thread's start
     * routine: it must not hide the program's frames. */
    char report[128], env_report[160];
    snprintf(report, sizeof report, "%s/report.txt", tmpdir);
    snprintf(env_report, sizeof env_report, "LASTCALL_REPORT=%s", report);
    const char *env[] = {env_report, NULL};
    struct proc p;
    int s = run_leaky(env, "thread", &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", p.err);
    char *text = slurp(report);
    cr_assert(text && strstr(text, "#0 open_pg_leak ") && strstr(text, "#1 leak_in_thread "),
              "%s", text);
    cr_assert_null(strstr(text, "thread_trampoline"), "lastcall's own frame in a report: %s",
                   text);
}
