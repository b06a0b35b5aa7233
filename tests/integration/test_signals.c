/* The signal differential test (issue: signals). Every case runs the same
 * program (tests/clients/sigdiff) with and without lastcall and compares all
 * it observes: the wait status, which handlers ran and how often, what
 * sigaction() and signal() read back, errno across the handler, the mask and
 * the stack inside the handler, si_signo/si_code. The cases are generated
 * from the cross product of how the disposition is set, the handler, the
 * flags, the signal, how it is delivered and the process (no connection,
 * live connections, PID 1). A case that differs prints both behaviours.
 *
 * Two differences are lastcall's job, and are asserted as such:
 * - with live connections, a signal whose disposition is SIG_DFL is drained
 *   before the process dies by it (and a handled one is not);
 * - LASTCALL_STATUS_SIGNAL (USR2 here) is taken over: it never kills;
 * - as PID 1, a managed signal under SIG_DFL ends the process (128+N) where
 *   the kernel would drop it. */
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

#define SIGDIFF build_path("tests/clients/sigdiff")

struct sigcase {
    char setter[16], handler[12], sig[8], delivery[12];
    int flags, conn, pid1;
};

struct outcome {
    int status;
    struct proc p;
};

static void describe(const struct sigcase *c, char *out, size_t n)
{
    snprintf(out, n, "%s %s %#x SIG%s %s conn=%d%s", c->setter, c->handler, c->flags, c->sig,
             c->delivery, c->conn, c->pid1 ? " pid1" : "");
}

static void start_case(const struct sigcase *c, int preload, int pid1, struct proc *p)
{
    char flags[16];
    snprintf(flags, sizeof flags, "%x", c->flags);
    const char *conn = c->conn ? "1" : "0";
    const char *direct[] = {SIGDIFF, c->setter, c->handler, flags, c->sig, c->delivery, conn, NULL};
    /* env: util-linux < 2.38 (Debian 11's unshare) --fork leaves SIGINT and
     * SIGTERM ignored in its child. */
    const char *in_ns[] = {"unshare", "--pid", "--fork", "--kill-child", "env",
                           "--default-signal=INT,TERM", SIGDIFF, c->setter,
                           c->handler, flags, c->sig, c->delivery, conn, NULL};
    /* The status signal is configured in both runs: it changes nothing
     * without lastcall. */
    const char *env[] = {"LASTCALL_STATUS_SIGNAL=USR2", "LASTCALL_LOG=info", "LASTCALL_GRACE=0",
                         NULL};
    struct run_opts o = {.preload = preload, .env = env, .app = "sigdiff"};
    proc_start(p, &o, pid1 ? in_ns : direct);
}

static int finish(struct proc *p)
{
    return proc_wait(p, 20000, NULL);
}

static void status_text(int st, char *out, size_t n)
{
    if (st == -1)
        snprintf(out, n, "timeout");
    else if (WIFSIGNALED(st))
        snprintf(out, n, "killed by signal %d%s", WTERMSIG(st), WCOREDUMP(st) ? " (core)" : "");
    else
        snprintf(out, n, "exit %d", WEXITSTATUS(st));
}

static int sig_number(const char *name)
{
    static const struct { const char *n; int s; } t[] = {
        {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(t[i].n, name) == 0)
            return t[i].s;
    return -1;
}

static int is_managed(int sig)
{
    return sig == SIGTERM || sig == SIGINT;
}

/* Compares one case; returns 1 when it differs (and prints both sides). */
static int compare(const struct sigcase *c, struct outcome *without, struct outcome *with,
                   struct outcome *reference)
{
    char name[160], sw[64], sl[64];
    describe(c, name, sizeof name);
    status_text(without->status, sw, sizeof sw);
    status_text(with->status, sl, sizeof sl);
    int sig = sig_number(c->sig);
    const char *why = NULL;

    if (with->status == -1 || (WIFSIGNALED(with->status) &&
                               (WTERMSIG(with->status) == SIGSEGV || WTERMSIG(with->status) == SIGBUS ||
                                WTERMSIG(with->status) == SIGABRT)))
        why = "lastcall crashed or hung the program";
    else if (sig == SIGUSR2 && WIFSIGNALED(without->status) && WTERMSIG(without->status) == SIGUSR2) {
        /* The status signal never kills under lastcall. */
        if (!WIFEXITED(with->status))
            why = "the status signal killed the program";
    } else if (c->pid1 && is_managed(sig) && reference && WIFSIGNALED(reference->status) &&
               WTERMSIG(reference->status) == sig) {
        /* As PID 1 the kernel drops the default action; lastcall exits 128+N,
         * as the same program would die outside a PID namespace. */
        if (!(WIFEXITED(with->status) && WEXITSTATUS(with->status) == 128 + sig))
            why = "as PID 1, a default-action managed signal did not end the process with 128+N";
        else if (strncmp(with->p.out, reference->p.out, strlen(reference->p.out)) != 0)
            why = "as PID 1, the output differs from the same program outside a namespace";
    } else if (with->status != without->status) {
        why = "wait status differs";
    } else if (strcmp(with->p.out, without->p.out) != 0) {
        why = "output differs";
    }

    if (why == NULL && c->conn && !c->pid1) {
        /* Drained exactly when the program would have died by a managed
         * signal's default action. */
        char line[64];
        snprintf(line, sizeof line, "SIG%s: drained", c->sig);
        int died = WIFSIGNALED(without->status) && WTERMSIG(without->status) == sig &&
                   is_managed(sig);
        int drained = strstr(with->p.err, line) != NULL;
        if (died != drained)
            why = died ? "died by a default-action signal without a drain"
                       : "drained although the program handled the signal";
    }
    if (why == NULL)
        return 0;
    fprintf(stderr,
            "DIFFERENCE in case [%s]: %s\n--- without lastcall: %s\n%s--- with lastcall: %s\n%s"
            "--- lastcall's stderr:\n%s\n",
            name, why, sw, without->p.out, sl, with->p.out, with->p.err);
    return 1;
}

/* Runs every case, a few at a time (each is a short-lived process). */
static void run_cases(const struct sigcase *cases, size_t n, const char *label)
{
    if (getenv("LASTCALL_TEST_TSAN")) {
        /* ThreadSanitizer virtualises signals itself: it keeps its own table
         * of handlers (read-backs differ even without lastcall), defers
         * delivery, and cannot siglongjmp out of a handler in a fork child.
         * The normal and ASan builds run these cases. */
        fprintf(stderr, "signals/%s: skipped under ThreadSanitizer\n", label);
        return;
    }
    enum { BATCH = 4 };
    struct outcome *o = calloc(BATCH * 3, sizeof *o);
    cr_assert_not_null(o);
    size_t differences = 0;
    for (size_t i = 0; i < n; i += BATCH) {
        size_t m = n - i < BATCH ? n - i : BATCH;
        for (size_t k = 0; k < m; k++) {
            const struct sigcase *c = &cases[i + k];
            start_case(c, 0, c->pid1, &o[3 * k].p);
            start_case(c, 1, c->pid1, &o[3 * k + 1].p);
            if (c->pid1)
                start_case(c, 0, 0, &o[3 * k + 2].p);
        }
        for (size_t k = 0; k < m; k++) {
            const struct sigcase *c = &cases[i + k];
            o[3 * k].status = finish(&o[3 * k].p);
            o[3 * k + 1].status = finish(&o[3 * k + 1].p);
            if (c->pid1)
                o[3 * k + 2].status = finish(&o[3 * k + 2].p);
            differences += compare(c, &o[3 * k], &o[3 * k + 1], c->pid1 ? &o[3 * k + 2] : NULL);
        }
    }
    free(o);
    fprintf(stderr, "signals/%s: %zu cases, %zu differences\n", label, n, differences);
    cr_assert_eq(differences, 0, "%zu of %zu cases differ (printed above)", differences, n);
}

static const char *handlers[] = {"dfl", "ign", "count", "reraise", "exit", "_exit", "longjmp"};
#define N_HANDLERS (sizeof handlers / sizeof handlers[0])
static const int flag_bits[] = {SA_SIGINFO, SA_RESETHAND, SA_NODEFER, SA_RESTART, SA_ONSTACK};

static struct sigcase make(const char *setter, const char *handler, int flags, const char *sig,
                           const char *delivery, int conn, int pid1)
{
    struct sigcase c;
    memset(&c, 0, sizeof c);
    snprintf(c.setter, sizeof c.setter, "%s", setter);
    snprintf(c.handler, sizeof c.handler, "%s", handler);
    snprintf(c.sig, sizeof c.sig, "%s", sig);
    snprintf(c.delivery, sizeof c.delivery, "%s", delivery);
    c.flags = flags;
    c.conn = conn;
    c.pid1 = pid1;
    return c;
}

/* Every handler x every combination of the five flags x four signals (two
 * managed, one not, the status signal), set with sigaction; and every handler
 * set with each of the other four setters. Delivered by kill(). */
Test(signals, every_disposition_behaves_as_without_lastcall, .timeout = 900)
{
    static const char *sigs[] = {"TERM", "INT", "USR1", "USR2"};
    static const char *setters[] = {"signal", "bsd_signal", "sysv_signal", "sigset"};
    size_t cap = N_HANDLERS * 32 * 4 + 5 * (N_HANDLERS + 1) * 4, n = 0;
    struct sigcase *cases = calloc(cap, sizeof *cases);
    for (size_t h = 0; h < N_HANDLERS; h++)
        for (int mask = 0; mask < 32; mask++) {
            int flags = 0;
            for (int b = 0; b < 5; b++)
                if (mask & (1 << b))
                    flags |= flag_bits[b];
            for (size_t s = 0; s < 4; s++)
                cases[n++] = make("sigaction", handlers[h], flags, sigs[s], "kill", 0, 0);
        }
    for (size_t st = 0; st < 4; st++)
        for (size_t h = 0; h <= N_HANDLERS; h++) {
            const char *handler = h < N_HANDLERS ? handlers[h] : "hold";
            if (h == N_HANDLERS && strcmp(setters[st], "sigset") != 0)
                continue;
            for (size_t s = 0; s < 4; s++)
                cases[n++] = make(setters[st], handler, 0, sigs[s], "kill", 0, 0);
        }
    cr_assert_leq(n, cap);
    run_cases(cases, n, "dispositions");
    free(cases);
}

/* Blocked then unblocked (sigprocmask, sighold/sigrelse), taken with
 * sigwait or signalfd, in a fork child, across exec (with and without
 * lastcall in the new image), and a disposition changed behind lastcall's
 * back by a raw rt_sigaction syscall. */
Test(signals, every_delivery_behaves_as_without_lastcall, .timeout = 900)
{
    static const char *deliveries[] = {"block", "sighold", "sigwait", "signalfd",
                                       "fork",  "exec",    "exec-bare", "raw"};
    static const int flag_sets[] = {0, SA_SIGINFO, SA_SIGINFO | SA_RESETHAND};
    static const char *sigs[] = {"TERM", "USR1"};
    struct sigcase cases[8 * N_HANDLERS * 3 * 2];
    size_t n = 0;
    for (size_t d = 0; d < 8; d++)
        for (size_t h = 0; h < N_HANDLERS; h++)
            for (size_t f = 0; f < 3; f++)
                for (size_t s = 0; s < 2; s++) {
#ifndef __x86_64__
                    if (strcmp(deliveries[d], "raw") == 0)
                        continue; /* the raw kernel sigaction layout is x86-64's */
#endif
                    cases[n++] = make("sigaction", handlers[h], flag_sets[f], sigs[s],
                                      deliveries[d], 0, 0);
                }
    run_cases(cases, n, "deliveries");
}

/* With an open PostgreSQL transaction and a buffered Redis write: everything
 * the program observes is the same, and the drain happens exactly where the
 * signal's default action would have killed it. */
Test(signals, live_connections_drain_only_under_the_default_action, .timeout = 900)
{
    static const int flag_sets[] = {0, SA_SIGINFO, SA_SIGINFO | SA_RESETHAND, SA_NODEFER};
    static const char *deliveries[] = {"kill", "block", "fork"};
    static const char *sigs[] = {"TERM", "INT"};
    struct sigcase cases[N_HANDLERS * 4 * 3 * 2 + N_HANDLERS * 3 * 2];
    size_t n = 0;
    for (size_t h = 0; h < N_HANDLERS; h++)
        for (size_t d = 0; d < 3; d++)
            for (size_t s = 0; s < 2; s++) {
                for (size_t f = 0; f < 4; f++)
                    cases[n++] = make("sigaction", handlers[h], flag_sets[f], sigs[s],
                                      deliveries[d], 1, 0);
                cases[n++] = make("signal", handlers[h], 0, sigs[s], deliveries[d], 1, 0);
            }
    run_cases(cases, n, "live connections");
}

/* As PID 1 of a PID namespace (a container's entrypoint). Needs root. */
Test(signals, as_pid1_behaves_as_without_lastcall, .timeout = 900)
{
    if (geteuid() != 0 || getenv("LASTCALL_TEST_TSAN")) {
        fprintf(stderr, "signals/as_pid1: skipped (needs root for unshare --pid; not under TSan)\n");
        return;
    }
    static const int flag_sets[] = {0, SA_SIGINFO};
    static const char *sigs[] = {"TERM", "USR1"};
    struct sigcase cases[N_HANDLERS * 2 * 2 * 2];
    size_t n = 0;
    for (size_t h = 0; h < N_HANDLERS; h++)
        for (size_t f = 0; f < 2; f++)
            for (size_t s = 0; s < 2; s++)
                for (int conn = 0; conn < 2; conn++)
                    cases[n++] = make("sigaction", handlers[h], flag_sets[f], sigs[s], "kill",
                                      conn, 1);
    run_cases(cases, n, "pid1");
}

/* The six-line reproduction from the issue: SIG_DFL spelled with SA_SIGINFO
 * (a NULL sa_sigaction), then kill(). 143 without lastcall; it was 139. */
Test(signals, sig_dfl_with_sa_siginfo_dies_by_sigterm_not_sigsegv)
{
    static const char *const handlers[] = {"dfl", "ign"};
    for (int i = 0; i < 2; i++) {
        const char *argv[] = {SIGDIFF, "sigaction", handlers[i], "4", "TERM", "kill", "0", NULL};
        struct proc p;
        struct run_opts without = {.preload = 0}, with = {.preload = 1};
        int st_without = run(&without, argv, &p, 10000);
        int st_with = run(&with, argv, &p, 10000);
        cr_assert(!(WIFSIGNALED(st_with) && WTERMSIG(st_with) == SIGSEGV),
                  "SIG_%s|SA_SIGINFO crashed under lastcall", handlers[i]);
        cr_assert_eq(st_with, st_without, "SIG_%s|SA_SIGINFO: status %d with lastcall, %d without: %s",
                     handlers[i], st_with, st_without, p.err);
        if (getenv("LASTCALL_TEST_TSAN") == NULL) {
            /* ThreadSanitizer's own signal handling keeps a default-action
             * SIGTERM from killing even without lastcall. */
            if (i == 0)
                cr_assert(WIFSIGNALED(st_with) && WTERMSIG(st_with) == SIGTERM);
            else
                cr_assert(WIFEXITED(st_with) && WEXITSTATUS(st_with) == 0);
        }
    }
}

static int php_run(int preload, const char *script, int sig_after_ms, struct proc *p)
{
    const char *argv[] = {"php", "-n", "-d", "extension=pgsql", "-r", script, NULL};
    struct run_opts o = {.preload = preload, .app = preload ? "php_with" : "php_without"};
    proc_start(p, &o, argv);
    if (sig_after_ms >= 0) {
        proc_wait_for(p, "ready", 15000);
        sleep_ms(sig_after_ms);
        kill(p->pid, SIGTERM);
    }
    return proc_wait(p, 20000, NULL);
}

/* PHP resets its SIGTERM handler to SIG_DFL with SA_SIGINFO and re-raises:
 * under lastcall every PHP process died by SIGSEGV (139) instead. */
Test(signals, php_dies_by_sigterm_idle_and_with_open_transactions)
{
    if (access("/usr/bin/php", X_OK) != 0) {
        cr_skip_test("php-cli is not installed (tests/install-deps installs it)");
    }
    if (getenv("LASTCALL_TEST_PRELOAD_FIRST")) {
        /* The sanitizer runtimes refuse PHP's dlopen(RTLD_DEEPBIND) of its
         * extensions, with or without lastcall (google/sanitizers#611). */
        fprintf(stderr, "signals/php: skipped under a sanitizer runtime\n");
        return;
    }
    struct proc p;
    const char *idle = "echo \"ready\\n\"; sleep(30);";
    int without = php_run(0, idle, 200, &p);
    int with = php_run(1, idle, 200, &p);
    cr_assert(WIFSIGNALED(without) && WTERMSIG(without) == SIGTERM, "without: %d", without);
    cr_assert(WIFSIGNALED(with) && WTERMSIG(with) == SIGTERM, "idle php under lastcall: status %d, %s",
              with, p.err);

    const char *tx = "$c = []; for ($i = 0; $i < 3; $i++) { $c[$i] = pg_connect('');"
                     " pg_query($c[$i], 'BEGIN'); pg_query($c[$i], 'SELECT 1'); }"
                     " echo \"ready\\n\"; sleep(30);";
    without = php_run(0, tx, 200, &p);
    with = php_run(1, tx, 200, &p);
    cr_assert(WIFSIGNALED(without) && WTERMSIG(without) == SIGTERM, "without: %d %s", without, p.err);
    cr_assert(WIFSIGNALED(with) && WTERMSIG(with) == SIGTERM,
              "php with transactions under lastcall: status %d, %s", with, p.err);
}
