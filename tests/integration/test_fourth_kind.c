/* A fourth kind of connection touches its own file and one line of the kind
 * table (issue 20): FakeDB (tests/fourth_kind/), a client library of two
 * functions, drained, reported, counted and shown by `lastcall status` by a
 * library built from the shim's sources, FakeDB's kind file and the table one
 * line longer. Differential: the FakeDB server (this test) hears BYE with the
 * fourth-kind library, and only EOF without it. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

LC_TEST_MAIN

static char sock_path[108];

static int listen_fakedb(void)
{
    snprintf(sock_path, sizeof sock_path, "/tmp/lastcall-fakedb-%d.sock", (int)getpid());
    unlink(sock_path);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(fd, 4), 0);
    return fd;
}

/* Everything the client sent until its EOF (or 5 s). */
static void heard(int lfd, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1)
        return;
    int c = accept(lfd, NULL, NULL);
    if (c < 0)
        return;
    for (;;) {
        struct pollfd q = {.fd = c, .events = POLLIN};
        if (poll(&q, 1, 5000) != 1)
            break;
        ssize_t r = read(c, out + n, size - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == size - 1)
            break;
    }
    out[n] = '\0';
    close(c);
}

static const char *fourth_preload(void)
{
    static char buf[4096];
    const char *first = getenv("LASTCALL_TEST_PRELOAD_FIRST");
    snprintf(buf, sizeof buf, "LD_PRELOAD=%s%s%s", first ? first : "", first ? ":" : "",
             build_path("tests/fourth_kind/liblastcall_fourth.so"));
    return buf;
}

/* Runs the client in MODE, with the fourth-kind library or without any;
 * SIG: sent once it is ready. Returns its wait status; OUT gets what the
 * server heard, P the client's output. */
static int run_client(int with, const char *mode, int sig, const char *const *extra, char *out,
                      size_t size, struct proc *p)
{
    int lfd = listen_fakedb();
    const char *env[8] = {0};
    int n = 0;
    if (with)
        env[n++] = fourth_preload();
    for (; extra && *extra && n < 7; extra++)
        env[n++] = *extra;
    struct run_opts o = {.env = env};
    char client[1024];
    snprintf(client, sizeof client, "%s", build_path("tests/fourth_kind/fakedb_client"));
    const char *argv[] = {client, sock_path, mode, NULL};
    proc_start(p, &o, argv);
    cr_assert_eq(proc_wait_for(p, "ready", 10000), 0, "%s", p->err);
    if (sig)
        kill(p->pid, sig);
    heard(lfd, out, size);
    int status = proc_wait(p, 10000, NULL);
    close(lfd);
    unlink(sock_path);
    return status;
}

Test(fourth_kind, the_table_line_and_the_kind_file_are_all_it_takes)
{
    char out[256];
    struct proc p;
    /* Without lastcall: the process ends, the server sees EOF, no goodbye. */
    int s = run_client(0, "exit", 0, NULL, out, sizeof out, &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_str_eq(out, "HELLO\n");
    cr_assert(strstr(p.out, "stats none"), "%s", p.out);

    /* With it: exit() drains the FakeDB connection the FakeDB way. */
    const char *info[] = {"LASTCALL_LOG=info", NULL};
    s = run_client(1, "exit", 0, info, out, sizeof out, &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_str_eq(out, "HELLO\nBYE\n", "%s", p.err);
    cr_assert(strstr(p.out, "stats fakedb opened=1 live=1"), "%s", p.out);
    cr_assert(strstr(p.err, "exit: drained 0 PostgreSQL and 0 Redis and 1 FakeDB") ||
                  strstr(p.err, "1 FakeDB"),
              "%s", p.err);

    /* SIGTERM: drained, and the process dies by it. */
    s = run_client(1, "wait", SIGTERM, info, out, sizeof out, &p);
    cr_assert(WIFSIGNALED(s) && WTERMSIG(s) == SIGTERM, "status %d: %s", s, p.err);
    cr_assert_str_eq(out, "HELLO\nBYE\n", "%s", p.err);

    /* The program's own close is its own: one BYE, and it is not a leak. */
    char report[256];
    snprintf(report, sizeof report, "/tmp/lastcall-fakedb-report-%d.txt", (int)getpid());
    char report_env[300];
    snprintf(report_env, sizeof report_env, "LASTCALL_REPORT=%s", report);
    const char *rep[] = {report_env, "LASTCALL_STACKS=1", NULL};
    s = run_client(1, "close", 0, rep, out, sizeof out, &p);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "status %d: %s", s, p.err);
    cr_assert_str_eq(out, "HELLO\nBYE\n");
    char *text = slurp(report);
    cr_assert(text && !strstr(text, "FakeDB connection"), "%s", text ? text : "(none)");
    free(text);

    /* Left open at exit: the leak report names the kind and where it opened. */
    s = run_client(1, "exit", 0, rep, out, sizeof out, &p);
    text = slurp(report);
    cr_assert(text && strstr(text, "FakeDB") && strstr(text, "main"), "%s",
              text ? text : "(none)");
    free(text);
    unlink(report);
}

Test(fourth_kind, lastcall_status_shows_it_by_the_library_s_own_table)
{
    int lfd = listen_fakedb();
    const char *env[] = {fourth_preload(), NULL};
    struct run_opts o = {.env = env};
    char client[1024];
    snprintf(client, sizeof client, "%s", build_path("tests/fourth_kind/fakedb_client"));
    const char *argv[] = {client, sock_path, "wait", NULL};
    struct proc p;
    proc_start(&p, &o, argv);
    cr_assert_eq(proc_wait_for(&p, "ready", 10000), 0, "%s", p.err);
    char pid[16], launcher[1024];
    snprintf(pid, sizeof pid, "%d", (int)p.pid);
    snprintf(launcher, sizeof launcher, "%s", build_path("shim/lastcall"));
    const char *st_argv[] = {launcher, "status", pid, NULL};
    struct run_opts none = {0};
    struct proc st;
    int s = run(&none, st_argv, &st, 10000);
    cr_assert(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s", st.err);
    cr_assert(strstr(st.out, "FakeDB: 1 live"), "%s", st.out);
    kill(p.pid, SIGTERM);
    char out[256];
    heard(lfd, out, sizeof out);
    proc_wait(&p, 10000, NULL);
    close(lfd);
    unlink(sock_path);
}
