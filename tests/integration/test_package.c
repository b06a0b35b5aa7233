/* The Debian package: built from a copy of the source tree, checked by
 * lintian, unpacked into a scratch root (never the machine's /usr), then its
 * launcher alone runs doctor and a drain against the harness's servers. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "lastcall.h"

LC_TEST_MAIN

#define CLIENT build_path("tests/clients/lc_client")

static char work[64];
static char root[128];
static char multiarch[64];

static void cleanup(void)
{
    if (work[0] == '\0')
        return;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", work);
}

/* Runs a shell command line; returns its stdout, asserting status 0. */
static char *sh_ok(const char *script)
{
    const char *argv[] = {"sh", "-c", script, NULL};
    struct run_opts o = {0};
    struct proc *p = calloc(1, sizeof *p);
    int s = run(&o, argv, p, 110000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s: status %d\n%s\n%s", script, s, p->out,
              p->err);
    char *out = strdup(p->out);
    free(p);
    return out;
}

static const char *in_root(const char *rel)
{
    static __thread char buf[4][PATH_MAX + sizeof root];
    static __thread int i;
    char *out = buf[i++ % 4];
    snprintf(out, sizeof buf[0], "%s%s", root, rel);
    return out;
}

/* Builds the package once, checks it with lintian, unpacks it. */
static void build_and_unpack(void)
{
    if (access("/usr/bin/dpkg-buildpackage", X_OK) != 0 || access("/usr/bin/lintian", X_OK) != 0)
        cr_skip_test("dpkg-buildpackage or lintian missing: tests/install-deps installs them");
    snprintf(work, sizeof work, "/tmp/lastcall-package.XXXXXX");
    cr_assert_not_null(mkdtemp(work));
    snprintf(root, sizeof root, "%s/root", work);

    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/tests/package/build-deb' '%s' '%s'",
             getenv("LASTCALL_SOURCE_ROOT"), getenv("LASTCALL_SOURCE_ROOT"), work);
    free(sh_ok(cmd));

    /* The file name carries the version the code reports. */
    char deb[256];
    snprintf(deb, sizeof deb, "%s/lastcall_%s_amd64.deb", work, LASTCALL_VERSION);
    cr_assert_eq(access(deb, R_OK), 0, "no %s", deb);

    /* lintian exits non-zero on errors; it is also asked to print every tag
     * so that an error line is visible in the message. */
    snprintf(cmd, sizeof cmd, "lintian '%s' 2>&1; echo \"lintian status $?\"", deb);
    char *lint = sh_ok(cmd);
    fprintf(stderr, "lintian:\n%s", lint);
    cr_assert(strstr(lint, "lintian status 0\n"), "%s", lint);
    cr_assert(strncmp(lint, "E: ", 3) != 0 && strstr(lint, "\nE: ") == NULL, "%s", lint);
    free(lint);

    snprintf(cmd, sizeof cmd, "dpkg -x '%s' '%s'", deb, root);
    free(sh_ok(cmd));
    char *ma = sh_ok("dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null");
    ma[strcspn(ma, "\n")] = '\0';
    snprintf(multiarch, sizeof multiarch, "%s", ma);
    free(ma);
}

static const char *lib_in_root(void)
{
    static char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/usr/lib/%s/liblastcall.so", root, multiarch);
    return path;
}

static void assert_files_installed(void)
{
    const char *files[] = {"/usr/bin/lastcall", "/usr/include/lastcall.h",
                           "/usr/share/man/man1/lastcall.1.gz", NULL};
    for (int i = 0; files[i]; i++)
        cr_assert_eq(access(in_root(files[i]), R_OK), 0, "%s missing from the package", files[i]);
    cr_assert_eq(access(lib_in_root(), R_OK), 0, "%s missing", lib_in_root());
    char pc[PATH_MAX];
    snprintf(pc, sizeof pc, "/usr/lib/%s/pkgconfig/lastcall.pc", multiarch);
    char *text = slurp(in_root(pc));
    cr_assert_not_null(text, "%s missing", pc);
    cr_assert(strstr(text, "preload=${libdir}/liblastcall.so") && strstr(text, LASTCALL_VERSION),
              "%s", text);
    free(text);

    /* The packaged library (stripped, hardened flags) still needs only libc. */
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "objdump -p '%s' | awk '/NEEDED/ {print $2}'", lib_in_root());
    char *needed = sh_ok(cmd);
    char *save = NULL;
    for (char *lib = strtok_r(needed, "\n", &save); lib; lib = strtok_r(NULL, "\n", &save))
        cr_assert(strncmp(lib, "libc.so.", 8) == 0 || strncmp(lib, "ld-linux", 8) == 0,
                  "the packaged liblastcall.so needs %s", lib);
    free(needed);
}

/* The launcher finds the library through the path compiled in relative to
 * itself (../lib/<multiarch>), wherever the root was unpacked. */
static void assert_launcher_finds_its_library(void)
{
    const char *argv[] = {in_root("/usr/bin/lastcall"), "--", "sh", "-c", "echo \"$LD_PRELOAD\"",
                          NULL};
    struct run_opts o = {0};
    struct proc p;
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    char expect[PATH_MAX + 2];
    snprintf(expect, sizeof expect, "%s\n", lib_in_root());
    cr_assert_str_eq(p.out, expect);
}

static void assert_doctor_sees_the_client(void)
{
    const char *argv[] = {in_root("/usr/bin/lastcall"), "doctor", CLIENT, NULL};
    struct run_opts o = {0};
    struct proc p;
    int s = run(&o, argv, &p, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s %s", s, p.out, p.err);
    cr_assert(strstr(p.out, "libpq and hiredis"), "%s", p.out);
}

/* lc_client hold: an open transaction and a buffered Redis SET, then
 * SIGTERM. Without lastcall this leaves an abrupt-disconnect line and loses
 * the SET; through the unpacked launcher it must do neither. */
static int hold_and_terminate(int with, const char *app, const char *key, int *status)
{
    const char *argv_with[] = {in_root("/usr/bin/lastcall"), "--", CLIENT, "hold", key, NULL};
    const char *argv_without[] = {CLIENT, "hold", key, NULL};
    struct run_opts o = {.app = app};
    struct proc p;
    proc_start(&p, &o, with ? argv_with : argv_without);
    cr_assert_eq(proc_wait_for(&p, "ready pid", 10000), 0, "%s", p.err);
    if (with) {
        /* The library mapped is the unpacked one, not the build tree's. */
        char maps_path[64];
        snprintf(maps_path, sizeof maps_path, "/proc/%d/maps", (int)p.pid);
        char *maps = slurp(maps_path);
        cr_assert(maps && strstr(maps, lib_in_root()), "%s not mapped", lib_in_root());
        cr_assert_null(strstr(maps, shim_path()), "the build tree's library is mapped");
        free(maps);
    }
    kill(p.pid, SIGTERM);
    *status = proc_wait(&p, 10000, NULL);
    cr_assert_eq(pg_wait_backends_gone(app, 10000), 0);
    if (with)
        fprintf(stderr, "%s", p.err);
    return pg_log_abrupt(app);
}

Test(package, builds_is_lintian_clean_and_drains_from_an_unpacked_root, .fini = cleanup)
{
    build_and_unpack();
    assert_files_installed();
    assert_launcher_finds_its_library();
    assert_doctor_sees_the_client();

    int s_without, s_with;
    int abrupt_without = hold_and_terminate(0, "pkg_without", "pkg_key_without", &s_without);
    int abrupt_with = hold_and_terminate(1, "pkg_with", "pkg_key_with", &s_with);
    char *v_without = redis_get("pkg_key_without");
    char *v_with = redis_get("pkg_key_with");
    fprintf(stderr, "package drain: abrupt lines without lastcall %d, with %d; SET %s / %s\n",
            abrupt_without, abrupt_with, v_without ? "arrived" : "lost",
            v_with ? "arrived" : "lost");
    cr_assert(WIFSIGNALED(s_without) && WTERMSIG(s_without) == SIGTERM, "status %d", s_without);
    cr_assert(WIFSIGNALED(s_with) && WTERMSIG(s_with) == SIGTERM, "status %d", s_with);
    cr_assert_gt(abrupt_without, 0, "the scenario should leave abrupt lines without lastcall");
    cr_assert_eq(abrupt_with, 0);
    cr_assert_null(v_without);
    cr_assert(v_with && strcmp(v_with, "held") == 0);
    free(v_with);
}
