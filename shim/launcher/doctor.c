#define _GNU_SOURCE
#include "launcher/doctor.h"
#include "launcher/doctor_drivers.h"
#include "launcher/elf_facts.h"
#include "core/arch.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int doctor_resolve(const char *cmd, char *out, size_t size)
{
    if (cmd == NULL || *cmd == '\0')
        return -1;
    if (strchr(cmd, '/')) {
        if (access(cmd, F_OK) != 0)
            return -1;
        snprintf(out, size, "%s", cmd);
        return 0;
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    int found = -1;
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        char candidate[PATH_MAX];
        if (*dir == '\0')
            continue; /* an empty PATH entry means "." : never search the current directory */
        snprintf(candidate, sizeof candidate, "%s/%s", dir, cmd);
        struct stat st;
        if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode) && access(candidate, X_OK) == 0) {
            snprintf(out, size, "%s", candidate);
            found = 0;
            break;
        }
    }
    free(copy);
    return found;
}

/* Debian's pg_wrapper (/usr/bin/psql, pgbench...) is a Perl script that execs
 * the real program from /usr/lib/postgresql/VERSION/bin. */
static int debian_pg_wrapper_target(const char *script, const char *base, char *out, size_t size)
{
    FILE *f = fopen(script, "r");
    if (f == NULL)
        return -1;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (strstr(buf, "PgCommon") == NULL)
        return -1;
    DIR *d = opendir("/usr/lib/postgresql");
    if (d == NULL)
        return -1;
    int best = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int v = atoi(e->d_name);
        char candidate[PATH_MAX];
        snprintf(candidate, sizeof candidate, "/usr/lib/postgresql/%s/bin/%s", e->d_name, base);
        if (v > best && access(candidate, X_OK) == 0) {
            best = v;
            snprintf(out, size, "%s", candidate);
        }
    }
    closedir(d);
    return best >= 0 ? 0 : -1;
}

static void report_signals(FILE *out)
{
    const int sigs[] = {SIGTERM, SIGINT};
    const char *names[] = {"SIGTERM", "SIGINT"};
    sigset_t blocked;
    sigprocmask(SIG_BLOCK, NULL, &blocked);
    for (int i = 0; i < 2; i++) {
        struct sigaction sa;
        if (sigaction(sigs[i], NULL, &sa) != 0)
            continue;
        if (sa.sa_handler == SIG_IGN)
            fprintf(out, "  note: %s is ignored in this environment (inherited); it stays "
                         "ignored under lastcall, so it will not start a drain\n", names[i]);
        if (sigismember(&blocked, sigs[i]) == 1)
            fprintf(out, "  note: %s is blocked in this environment; the program inherits "
                         "the mask\n", names[i]);
    }
    if (getpid() == 1)
        fprintf(out, "  note: running as PID 1: after a drain lastcall exits 128+N, since the "
                     "kernel drops a default-action signal for init\n");
    if (getpid() == 1)
        fprintf(out, "  note: lastcall reaps no orphans: if the program spawns children, put "
                     "an init first (tini -- lastcall -- ..., dumb-init lastcall -- ..., "
                     "docker run --init)\n");
}

/* This launcher's liblastcall.so is built for the launcher's own C library:
 * a program whose loader is the other libc's cannot take it. Either way the
 * loader refuses the preload and the program does not start (status 127).
 * Returns 1 (after saying so) on such a mismatch. */
static int libc_mismatch(const char *path, const char *interp, FILE *out)
{
    int musl_program = strstr(interp, "ld-musl") != NULL;
    int glibc_program = strstr(interp, "ld-linux") != NULL;
#ifdef __GLIBC__
    if (musl_program) {
        fprintf(out, "  no: %s is a musl program (its loader is %s) and this lastcall is built "
                     "for glibc: musl's loader cannot load a glibc library (it needs glibc's "
                     "loader and glibc-only symbols: \"Error relocating liblastcall.so: ... "
                     "symbol not found\") and refuses to start the program at all (status 127). "
                     "Use a lastcall built with musl (musl-gcc, or on Alpine)\n", path, interp);
        return 1;
    }
#else
    if (glibc_program) {
        fprintf(out, "  no: %s is a glibc program (its loader is %s) and this lastcall is built "
                     "for musl: glibc's loader cannot load a musl library (it needs musl's "
                     "libc.so, which on a glibc system is a linker script: \"libc.so: invalid "
                     "ELF header\") and the program does not start (status 127). Use a lastcall "
                     "built for glibc\n", path, interp);
        return 1;
    }
#endif
    (void)musl_program;
    (void)glibc_program;
    return 0;
}

static int analyse(const char *path, FILE *out, int depth)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(out, "  no: %s: %s\n", path, strerror(errno));
        return DOCTOR_NOT_FOUND;
    }
    if (st.st_mode & (S_ISUID | S_ISGID)) {
        fprintf(out, "  no: %s is set%s: the dynamic loader ignores LD_PRELOAD for it\n", path,
                (st.st_mode & S_ISUID) ? "uid" : "gid");
        return DOCTOR_NO;
    }
    /* Scripts: follow the interpreter. */
    FILE *f = fopen(path, "r");
    char first[512] = "";
    if (f) {
        if (fgets(first, sizeof first, f) == NULL)
            first[0] = '\0';
        fclose(f);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (first[0] == '#' && first[1] == '!' && depth < 4) {
        char *interp = first + 2 + strspn(first + 2, " \t");
        interp[strcspn(interp, " \t\n")] = '\0';
        char *args = interp + strlen(interp) + 1;
        const char *ibase = strrchr(interp, '/');
        ibase = ibase ? ibase + 1 : interp;
        char target[PATH_MAX];
        if (debian_pg_wrapper_target(path, base, target, sizeof target) == 0) {
            fprintf(out, "  %s is Debian's pg_wrapper script; it execs %s, which inherits "
                         "LD_PRELOAD\n", path, target);
            return analyse(target, out, depth + 1);
        }
        if (strcmp(ibase, "env") == 0) {
            /* "#!/usr/bin/env python3": the interpreter is the next word. */
            char *word = args + strspn(args, " \t");
            word[strcspn(word, " \t\n")] = '\0';
            char resolved[PATH_MAX];
            if (*word && doctor_resolve(word, resolved, sizeof resolved) == 0) {
                fprintf(out, "  %s is a script run by %s\n", path, resolved);
                return analyse(resolved, out, depth + 1);
            }
        }
        fprintf(out, "  %s is a script run by %s\n", path, interp);
        return analyse(interp, out, depth + 1);
    }
    struct elf_facts e;
    read_elf(path, &e);
    if (!e.is_elf) {
        fprintf(out, "  no: %s is neither an ELF program nor a #! script\n", path);
        return DOCTOR_NO;
    }
    if (!e.is_64) {
        fprintf(out, "  no: %s is a 32-bit program; this liblastcall.so is 64-bit\n", path);
        return DOCTOR_NO;
    }
    if (e.go) {
        fprintf(out, "  no: %s is a Go program: Go talks to PostgreSQL and Redis in Go "
                     "(and is usually static), not through libpq or hiredis\n", path);
        return DOCTOR_NO;
    }
    if (!e.dynamic) {
        fprintf(out, "  no: %s is statically linked: LD_PRELOAD has no effect on it\n", path);
        return DOCTOR_NO;
    }
    if (libc_mismatch(path, e.interp, out))
        return DOCTOR_NO;
    if (e.defines_mysql) {
        fprintf(out, "  no: %s defines mysql_real_connect itself: the MySQL client library is "
                     "linked into it statically (as in Debian's mariadb and mysql clients), so "
                     "its calls never reach a preloaded library\n", path);
        return DOCTOR_NO;
    }
    int found[N_LIBS] = {0};
    const char *mysql_name = NULL;
    for (int i = 0; i < e.n_needed; i++) {
        int l = which_lib(e.needed[i]);
        if (l >= 0)
            found[l] = 1;
        if (l == LIB_MYSQL && has_prefix_lib(e.needed[i], "libmysqlclient.so"))
            mysql_name = "libmysqlclient";
    }
    if (found[LIB_PQ] || found[LIB_HIREDIS] || found[LIB_MYSQL]) {
        char libs[128];
        join_libs(found, mysql_name, libs, sizeof libs);
        fprintf(out, "  yes: %s imports %s directly\n", path, libs);
        return DOCTOR_YES;
    }
    char via[512] = "";
    transitive_libs(e.interp, path, found, via, sizeof via);
    if (found[LIB_PQ] || found[LIB_HIREDIS] || found[LIB_MYSQL]) {
        fprintf(out, "  yes: %s loads %s through its libraries\n", path, via);
        return DOCTOR_YES;
    }
    if (interpreter_drivers(path, base, out))
        return DOCTOR_DEPENDS;
    if (e.dlopens) {
#if LC_ARCH_DL_STUBS && LC_ARCH_GOT
        fprintf(out, "  depends: %s links neither libpq nor hiredis nor a MySQL client library "
                     "but loads libraries at run time (dlopen). lastcall sees libpq and hiredis "
                     "loaded that way: in a local scope, with RTLD_DEEPBIND, as a bundled copy "
                     "under another file name, and functions looked up with dlsym (tested: "
                     "reach/*); libmariadb the same way, untested\n", path);
#else
        fprintf(out, "  depends: %s links neither libpq nor hiredis nor a MySQL client library "
                     "but loads libraries at run time (dlopen). lastcall sees libpq and hiredis "
                     "loaded in a local scope or as a bundled copy under another file name; on "
                     LC_ARCH_NAME " it does not see those loaded with RTLD_DEEPBIND nor "
                     "functions looked up with dlsym (x86-64 and aarch64 only)\n", path);
#endif
        return DOCTOR_DEPENDS;
    }
    fprintf(out, "  no: %s links neither libpq nor hiredis nor a MySQL client library and "
                 "cannot load them at run time (it does not call dlopen)\n", path);
    return DOCTOR_NO;
}

int doctor_run(const char *cmd, FILE *out)
{
    char path[PATH_MAX];
    if (doctor_resolve(cmd, path, sizeof path) != 0) {
        fprintf(out, "lastcall doctor: %s: command not found\n", cmd);
        return DOCTOR_NOT_FOUND;
    }
    fprintf(out, "lastcall doctor: %s\n", path);
#if !(LC_ARCH_DL_STUBS && LC_ARCH_GOT)
    fprintf(out, "  platform: %s: lastcall answers no dlsym lookup and rewrites no GOT here "
                 "(x86-64 and aarch64 only): FFI callers (ctypes) and RTLD_DEEPBIND libraries "
                 "(PHP) are not seen\n", LC_ARCH_NAME);
#endif
    int verdict = analyse(path, out, 0);
    report_signals(out);
    static const char *words[] = {"lastcall will see its connections",
                                  "lastcall will not see its connections", "not found",
                                  "it depends on the drivers the program loads"};
    fprintf(out, "verdict: %s\n", words[verdict]);
    return verdict;
}
