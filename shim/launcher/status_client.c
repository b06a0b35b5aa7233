/* `lastcall status [--stacks] [--json] PID`: the launcher's side (status.h).
 * Nothing is sent to a process that is not running under lastcall, or whose
 * lastcall does not handle the status signal: a realtime signal's default
 * action would kill it. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/status_protocol.h"
#include "launcher/status_render.h"

#define ANSWER_WAIT_MS 2000
/* Symbolizing opening stacks runs addr2line in the process: more time for
 * the rest of the answer once it has begun. */
#define ANSWER_READ_MS 15000

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("lastcall status: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int usage_error(const char *what)
{
    fprintf(stderr, "lastcall status: %s\nusage: lastcall status [--stacks] [--json] PID\n",
            what);
    return 2;
}

/* ---- checks before anything is sent ---- */

static char *read_proc(pid_t pid, const char *name, int *err)
{
    char path[400];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        *err = errno;
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (len + 1 == cap) {
            char *bigger = grow(buf, &cap, 1, 0);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
        }
    }
    *err = ferror(f) ? errno : 0;
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* Bit SIG of a "SigCgt:\t0000000000004a02"-style line of /proc/PID/status. */
static int mask_has(const char *status, const char *key, int sig)
{
    const char *line = strstr(status, key);
    if (line == NULL)
        return 0;
    unsigned long long mask = strtoull(line + strlen(key), NULL, 16);
    return sig >= 1 && sig <= 64 && (mask >> (sig - 1)) & 1;
}

static int has_lastcall(const char *maps)
{
    for (const char *p = maps; (p = strstr(p, "liblastcall")) != NULL; p++) {
        /* A path component: ".../liblastcall.so" (possibly with a suffix). */
        if (p > maps && p[-1] == '/')
            return 1;
    }
    return 0;
}

/* Does every thread of PID block SIG? Then a request would wait for, or be
 * read by, the program's own sigwait/signalfd: it must not be sent. */
static int blocked_everywhere(pid_t pid, int sig)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int threads = 0, blocking = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char name[300];
        snprintf(name, sizeof name, "task/%s/status", e->d_name);
        int err;
        char *st = read_proc(pid, name, &err);
        if (st == NULL)
            continue;
        threads++;
        blocking += mask_has(st, "\nSigBlk:\t", sig);
        free(st);
    }
    closedir(d);
    return threads > 0 && blocking == threads;
}

/* 0 when PID may be asked; otherwise prints why and returns 1. *TGID gets the
 * process of PID (which may name one of its threads). */
static int check_target(pid_t pid, pid_t *tgid)
{
    if (kill(pid, 0) != 0) {
        if (errno == ESRCH)
            return fail("no process with pid %d", (int)pid);
        if (errno == EPERM)
            return fail("permission denied: pid %d belongs to another user (run this as that "
                        "user or as root)", (int)pid);
        return fail("pid %d: %s", (int)pid, strerror(errno));
    }
    int err = 0;
    char *status = read_proc(pid, "status", &err);
    if (status == NULL)
        return err == ENOENT ? fail("no process with pid %d", (int)pid)
                             : fail("pid %d: cannot read /proc/%d/status: %s", (int)pid,
                                    (int)pid, strerror(err));
    const char *tg = strstr(status, "\nTgid:\t");
    *tgid = tg ? (pid_t)atol(tg + 7) : pid;
    if (*tgid <= 0)
        *tgid = pid;
    const char *state = strstr(status, "\nState:\t");
    if (state && state[8] == 'Z') {
        free(status);
        return fail("pid %d has exited (a zombie its parent has not reaped)", (int)pid);
    }
    char *maps = read_proc(pid, "maps", &err);
    if (maps == NULL || err == EACCES || err == EPERM) {
        free(status);
        free(maps);
        if (err == EACCES || err == EPERM)
            return fail("permission denied: cannot inspect pid %d (run this as its user or as "
                        "root)", (int)pid);
        return fail("pid %d: cannot read /proc/%d/maps: %s", (int)pid, (int)pid, strerror(err));
    }
    int ours = has_lastcall(maps);
    free(maps);
    int sig = LC_STATUS_SIGNAL;
    int rc = 0;
    if (!ours)
        rc = fail("pid %d is not running under lastcall (liblastcall.so is not loaded in it); "
                  "nothing was sent", (int)pid);
    else if (mask_has(status, "\nSigIgn:\t", sig))
        rc = fail("pid %d ignores signal %d (SIGRTMAX-%d), which lastcall status uses; nothing "
                  "was sent", (int)pid, sig, SIGRTMAX - sig);
    else if (!mask_has(status, "\nSigCgt:\t", sig))
        rc = fail("lastcall in pid %d does not answer status requests (LASTCALL_DISABLE, or an "
                  "older liblastcall); nothing was sent", (int)pid);
    else if (blocked_everywhere(pid, sig))
        rc = fail("pid %d blocks signal %d (SIGRTMAX-%d), which lastcall status uses, on every "
                  "thread; nothing was sent", (int)pid, sig, SIGRTMAX - sig);
    free(status);
    return rc;
}

/* ---- the exchange ---- */

static int listen_socket(uint32_t *nonce)
{
    for (int attempt = 0; attempt < 16; attempt++) {
        if (getrandom(nonce, sizeof *nonce, 0) != sizeof *nonce)
            *nonce = (uint32_t)(getpid() * 2654435761u) ^ (uint32_t)mono_ms() ^ (uint32_t)attempt;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        int n = snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, LC_STATUS_NAME_PREFIX "%08x",
                         *nonce);
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
        if (bind(fd, (struct sockaddr *)&sa, len) == 0 && listen(fd, 4) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (e != EADDRINUSE)
            return -1;
    }
    return -1;
}

/* Accepts the connection that comes from PID itself. */
static int accept_from(int lfd, pid_t pid, int64_t until)
{
    for (;;) {
        int64_t left = until - mono_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == pid)
            return fd;
        close(fd);
    }
}

static char *read_answer(int fd, int64_t until)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        int64_t left = until - mono_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (len + 1 >= cap) {
            char *bigger = grow(buf, &cap, 1, 0);
            if (bigger == NULL)
                break;
            buf = bigger;
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    if (buf)
        buf[len] = '\0';
    return buf;
}

int status_main(int argc, char **argv)
{
    static const struct option opts[] = {{"stacks", no_argument, NULL, 's'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int stacks = 0, json = 0, c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        if (c == 's')
            stacks = 1;
        else if (c == 'j')
            json = 1;
        else if (c == 'h') {
            printf("usage: lastcall status [--stacks] [--json] PID\n"
                   "A live view of the connections of PID, a process running under lastcall.\n");
            return 0;
        } else {
            char what[128];
            snprintf(what, sizeof what, "unknown option '%s'", argv[optind - 1]);
            return usage_error(what);
        }
    }
    if (optind != argc - 1)
        return usage_error(optind >= argc ? "no PID given" : "one PID only");
    const char *arg = argv[optind];
    char *end = NULL;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (*arg < '0' || *arg > '9' || errno != 0 || *end != '\0' || v < 1 || v > 0x3fffffff) {
        char what[128];
        snprintf(what, sizeof what, "'%.60s' is not a process id", arg);
        return usage_error(what);
    }
    pid_t pid = (pid_t)v, tgid = pid;
    if (check_target(pid, &tgid) != 0)
        return 1;

    uint32_t nonce;
    int lfd = listen_socket(&nonce);
    if (lfd < 0)
        return fail("cannot make the answer socket: %s", strerror(errno));
    unsigned flags = (json ? LC_STATUS_JSON : 0) | (stacks ? LC_STATUS_STACKS : 0);
    union sigval val;
    val.sival_ptr = (void *)(uintptr_t)status_token(flags, nonce);
    if (sigqueue(pid, LC_STATUS_SIGNAL, val) != 0) {
        int e = errno;
        close(lfd);
        if (e == ESRCH)
            return fail("no process with pid %d", (int)pid);
        if (e == EPERM)
            return fail("permission denied: pid %d belongs to another user", (int)pid);
        return fail("cannot signal pid %d: %s", (int)pid, strerror(e));
    }
    int fd = accept_from(lfd, tgid, mono_ms() + ANSWER_WAIT_MS);
    close(lfd);
    if (fd < 0)
        return fail("no answer from pid %d within %d s (is it stopped, or in the middle of a "
                    "drain?)", (int)pid, ANSWER_WAIT_MS / 1000);
    char *text = read_answer(fd, mono_ms() + ANSWER_READ_MS);
    close(fd);
    struct answer a;
    memset(&a, 0, sizeof a);
    int rc = 0;
    if (text == NULL || parse(text, &a) != 0)
        rc = fail("pid %d sent an answer that is not a status", (int)pid);
    else if (a.error)
        rc = fail("pid %d: %s", (int)pid, a.error);
    else if (!a.complete)
        rc = fail("the answer from pid %d was cut short", (int)pid);
    else if (json)
        render_json(&a, tgid, stacks);
    else
        render_text(&a, tgid, stacks);
    for (size_t i = 0; i < a.n_groups; i++)
        free(a.groups[i].frames);
    free(a.groups);
    free(a.conns);
    free(text);
    if (fflush(stdout) != 0)
        return 1;
    return rc;
}
