/* lastcall [OPTIONS] [--] COMMAND [ARGS...]
 * lastcall doctor COMMAND
 *
 * Sets LASTCALL_* from the options, adds liblastcall.so to LD_PRELOAD (found
 * next to this executable, never in the current directory), then execs:
 * same PID, same signals, same exit status. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "launcher/doctor.h"
#include "lastcall.h"
#include "core/status_protocol.h"

#ifndef LASTCALL_REL_LIBDIR
#define LASTCALL_REL_LIBDIR "../lib"
#endif
#define LIBNAME "liblastcall.so"

struct setting {
    const char *option;     /* long option */
    const char *var;        /* LASTCALL_* */
    const char *arg;        /* placeholder in --help */
    const char *def;        /* default, for --help */
    const char *help;
    int (*check)(const char *value);
};

static int check_duration(const char *v)
{
    int64_t ms;
    return config_parse_duration(v, &ms);
}
static int check_deadline(const char *v)
{
    int64_t ms;
    return config_parse_duration(v, &ms) == 0 && ms > 0 ? 0 : -1;
}
static int check_signals(const char *v)
{
    sigset_t s;
    return config_parse_signals(v, &s);
}
static int check_log(const char *v)
{
    return config_parse_log_level(v) < 0 ? -1 : 0;
}
static int check_format(const char *v)
{
    return config_parse_format(v) < 0 ? -1 : 0;
}
static int check_bool(const char *v)
{
    return config_parse_bool(v) < 0 ? -1 : 0;
}
static int check_count(const char *v)
{
    long n;
    return config_parse_count(v, &n);
}
static int check_depth(const char *v)
{
    long n;
    return config_parse_count(v, &n) == 0 && n <= LC_MAX_STACK_DEPTH ? 0 : -1;
}
static int check_signal(const char *v)
{
    return config_signal_number(v) ? 0 : -1;
}
static int check_path(const char *v)
{
    return *v ? 0 : -1;
}

/* One table: the options, their variables and --help come from here. */
static const struct setting settings[] = {
    {"deadline", "LASTCALL_DEADLINE", "DURATION", "5s",
     "everything is closed within this time of the signal or exit()", check_deadline},
    {"grace", "LASTCALL_GRACE", "DURATION", "3s",
     "in-flight queries may finish for this long, then they are cancelled", check_duration},
    {"signals", "LASTCALL_SIGNALS", "LIST", "TERM,INT", "signals that start a drain (or none)",
     check_signals},
    {"log", "LASTCALL_LOG", "LEVEL", "warn", "off, warn, info or debug", check_log},
    {"log-format", "LASTCALL_LOG_FORMAT", "FORMAT", "text", "text or json (one object a line)",
     check_format},
    {"log-file", "LASTCALL_LOG_FILE", "PATH", "stderr", "append log lines to PATH", check_path},
    {"report", "LASTCALL_REPORT", "PATH", "none", "write a leak report at exit (%p: the pid)",
     check_path},
    {"report-format", "LASTCALL_REPORT_FORMAT", "FORMAT", "text", "text or json", check_format},
    {"stacks", "LASTCALL_STACKS", "on|off", "auto",
     "record opening stacks (on when a report or leak check is asked for)", check_bool},
    {"stack-depth", "LASTCALL_STACK_DEPTH", "N", "16", "frames per stack, 1 to 64", check_depth},
    {"leak-threshold", "LASTCALL_LEAK_THRESHOLD", "N", "off",
     "warn once when more than N connections of a kind are live", check_count},
    {"leak-age", "LASTCALL_LEAK_AGE", "DURATION", "off",
     "warn about a connection idle this long", check_deadline},
    {"status-signal", "LASTCALL_STATUS_SIGNAL", "SIGNAL", "off",
     "log a status snapshot on this signal (e.g. USR2)", check_signal},
    {"stop-delay", "LASTCALL_STOP_DELAY", "DURATION", "off",
     "hold a signal back this long while COMMAND keeps serving (0: off)", check_duration},
    {NULL, NULL, NULL, NULL, NULL, NULL},
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: lastcall [OPTIONS] [--] COMMAND [ARGS...]\n"
            "       lastcall doctor COMMAND\n"
            "       lastcall status [--stacks] [--json] PID\n"
            "\n"
            "Runs COMMAND with liblastcall.so preloaded: on SIGTERM/SIGINT or exit() its\n"
            "PostgreSQL (libpq), Redis (hiredis) and MySQL/MariaDB (libmariadb,\n"
            "libmysqlclient) connections are drained and closed cleanly within a deadline,\n"
            "then it dies exactly as it would have.\n"
            "\n"
            "Options (each sets the environment variable shown):\n");
    for (const struct setting *s = settings; s->option; s++) {
        char left[64];
        snprintf(left, sizeof left, "--%s %s", s->option, s->arg);
        fprintf(out, "  %-27s %s (default %s)\n  %-27s %s\n", left, s->var, s->def, "", s->help);
    }
    fprintf(out,
            "  %-27s %s\n  %-27s %s\n"
            "  -h, --help                  this text\n"
            "  -V, --version               the version\n"
            "\n"
            "Environment only: LASTCALL_LIBRARY=PATH (absolute) overrides where this\n"
            "launcher finds liblastcall.so. Setuid programs ignore every LASTCALL_* variable.\n"
            "\n"
            "lastcall doctor COMMAND tells whether lastcall will see COMMAND's connections.\n"
            "lastcall status PID shows the connections of PID, running under lastcall, now:\n"
            "per kind and target live, in flight, idle, idle in transaction, failed, the\n"
            "oldest's age; --stacks adds where the open ones were opened, --json the machine\n"
            "form. Same user or root only.\n"
            "\n"
            "Containers: as PID 1, lastcall drains and exits 128+N, but it is not an init:\n"
            "it reaps no orphaned processes. If COMMAND spawns children, put an init first:\n"
            "tini -- lastcall -- COMMAND, dumb-init lastcall -- COMMAND, or docker run --init.\n"
            "\n"
            "Exit status: COMMAND's own; 126 when it cannot be run (setuid/setgid targets\n"
            "are refused), 127 when it is not found, 2 for a bad option.\n",
            "--disable", "LASTCALL_DISABLE=1", "", "preload, but do nothing");
}

/* Absolute path of the directory holding this executable. */
static int self_dir(char *out, size_t size)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, size, "%s", exe) >= size)
        return -1;
    return 0;
}

static int find_library(char *out, size_t size)
{
    const char *over = getenv("LASTCALL_LIBRARY");
    if (over && *over) {
        if (over[0] != '/') {
            fprintf(stderr, "lastcall: LASTCALL_LIBRARY must be an absolute path: %s\n", over);
            return -1;
        }
        snprintf(out, size, "%s", over);
        return access(out, R_OK) == 0 ? 0 : -1;
    }
    char dir[PATH_MAX];
    if (self_dir(dir, sizeof dir) != 0)
        return -1;
    const char *candidates[] = {"%s/" LIBNAME, /* the build tree: shim/lastcall */
                                LASTCALL_REL_LIBDIR[0] == '/' ? LASTCALL_REL_LIBDIR "/" LIBNAME
                                                              : "%s/" LASTCALL_REL_LIBDIR "/" LIBNAME};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        char path[PATH_MAX * 2];
        snprintf(path, sizeof path, candidates[i], dir);
        char real[PATH_MAX];
        if (realpath(path, real) && access(real, R_OK) == 0) {
            snprintf(out, size, "%s", real);
            return 0;
        }
    }
    return -1;
}

static int preload_has(const char *preload, const char *lib)
{
    char *copy = strdup(preload);
    if (copy == NULL)
        return 0;
    int found = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ": ", &save); tok; tok = strtok_r(NULL, ": ", &save)) {
        const char *base = strrchr(tok, '/');
        base = base ? base + 1 : tok;
        if (strcmp(tok, lib) == 0 || strcmp(base, LIBNAME) == 0)
            found = 1;
    }
    free(copy);
    return found;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "doctor") == 0) {
        if (argc != 3) {
            fprintf(stderr, "usage: lastcall doctor COMMAND\n");
            return 2;
        }
        return doctor_run(argv[2], stdout);
    }
    if (argc >= 2 && strcmp(argv[1], "status") == 0)
        return status_main(argc - 1, argv + 1);

    struct option longopts[32];
    int n = 0;
    for (const struct setting *s = settings; s->option; s++, n++)
        longopts[n] = (struct option){s->option, required_argument, NULL, 1000 + n};
    const int n_settings = n;
    longopts[n++] = (struct option){"disable", no_argument, NULL, 'D'};
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[n++] = (struct option){"version", no_argument, NULL, 'V'};
    longopts[n] = (struct option){NULL, 0, NULL, 0};

    int c;
    /* '+': stop at the first non-option, so COMMAND's own options are its own. */
    while ((c = getopt_long(argc, argv, "+hV", longopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c == 'V') {
            printf("lastcall %s\n", LASTCALL_VERSION);
            return 0;
        }
        if (c == 'D') {
            setenv("LASTCALL_DISABLE", "1", 1);
            continue;
        }
        if (c >= 1000 && c < 1000 + n_settings) {
            const struct setting *s = &settings[c - 1000];
            if (s->check(optarg) != 0) {
                fprintf(stderr, "lastcall: --%s %s: invalid value (%s)\n", s->option, optarg,
                        s->help);
                return 2;
            }
            setenv(s->var, optarg, 1);
            continue;
        }
        fprintf(stderr, "Try 'lastcall --help'.\n");
        return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "lastcall: no command given\nTry 'lastcall --help'.\n");
        return 2;
    }
    char **cmd = argv + optind;

    char resolved[PATH_MAX];
    if (doctor_resolve(cmd[0], resolved, sizeof resolved) != 0) {
        fprintf(stderr, "lastcall: %s: command not found\n", cmd[0]);
        return 127;
    }
    struct stat st;
    if (stat(resolved, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID))) {
        fprintf(stderr,
                "lastcall: refusing to run %s: it is set%s, and the dynamic loader ignores "
                "LD_PRELOAD for such programs, so lastcall could not do its job\n",
                resolved, (st.st_mode & S_ISUID) ? "uid" : "gid");
        return 126;
    }

    char lib[PATH_MAX];
    if (find_library(lib, sizeof lib) != 0) {
        fprintf(stderr, "lastcall: cannot find " LIBNAME " next to this program; "
                        "set LASTCALL_LIBRARY to its absolute path\n");
        return 126;
    }
    const char *old = getenv("LD_PRELOAD");
    if (old == NULL || *old == '\0') {
        setenv("LD_PRELOAD", lib, 1);
    } else if (!preload_has(old, lib)) {
        size_t len = strlen(old) + strlen(lib) + 2;
        char *value = malloc(len);
        if (value == NULL)
            return 126;
        snprintf(value, len, "%s:%s", old, lib);
        setenv("LD_PRELOAD", value, 1);
        free(value);
    }

    execv(resolved, cmd);
    int err = errno;
    if (err == ENOEXEC) {
        /* A script without #!: run it with /bin/sh, as execvp does. */
        int argc2 = 0;
        while (cmd[argc2])
            argc2++;
        char **sh = calloc((size_t)argc2 + 2, sizeof *sh);
        if (sh) {
            sh[0] = "/bin/sh";
            sh[1] = resolved;
            for (int i = 1; i < argc2; i++)
                sh[i + 1] = cmd[i];
            execv("/bin/sh", sh);
        }
        err = errno;
    }
    fprintf(stderr, "lastcall: %s: %s\n", cmd[0], strerror(err));
    return err == ENOENT ? 127 : 126;
}
