/* One case of the signal differential test (tests/integration/test_signals.c):
 * sets a disposition one way, delivers the signal one way, and prints every
 * observable on stdout. The test runs each case with and without lastcall and
 * compares the output and the wait status.
 *
 *   sigdiff SETTER HANDLER FLAGS SIGNAL DELIVERY CONN
 *     SETTER    sigaction | signal | bsd_signal | sysv_signal | sigset
 *     HANDLER   dfl | ign | count | reraise | exit | _exit | longjmp | hold (sigset only)
 *     FLAGS     sa_flags for sigaction, as hex (SA_SIGINFO, SA_RESETHAND, ...)
 *     SIGNAL    TERM | INT | HUP | USR1 | USR2
 *     DELIVERY  kill | block | sighold | sigwait | signalfd | fork | exec | exec-bare | raw
 *     CONN      0, or 1: an open PostgreSQL transaction and a buffered Redis write
 *   sigdiff report SIGNAL PROCBITS   (what an exec'd image sees)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

/* The old System V and BSD calls are what this test is about. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
/* Not declared by glibc under _GNU_SOURCE (POSIX.1-2008 dropped it); still exported. */
extern sighandler_t bsd_signal(int sig, sighandler_t handler);

static int the_sig;
static const char *handler_kind;
static volatile sig_atomic_t calls;
static int flags_in;
static sigjmp_buf jump_back;
static char *altstack_base;
static size_t altstack_size = 65536;

/* What the handler saw, printed by the main line afterwards (stdio is not
 * async-signal-safe). */
static volatile int seen_errno, seen_signo, seen_code, seen_onstack;
static sigset_t seen_mask;

static const char *sig_names[] = {[SIGTERM] = "TERM", [SIGINT] = "INT", [SIGHUP] = "HUP",
                                  [SIGUSR1] = "USR1", [SIGUSR2] = "USR2"};

static int sig_from_name(const char *n)
{
    for (int s = 1; s < (int)(sizeof sig_names / sizeof sig_names[0]); s++)
        if (sig_names[s] && strcmp(sig_names[s], n) == 0)
            return s;
    return -1;
}

static void record(int sig, siginfo_t *info)
{
    (void)sig;
    calls++;
    seen_errno = errno;
    seen_signo = info ? info->si_signo : 0;
    seen_code = info ? info->si_code : 0;
    stack_t ss;
    seen_onstack = sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_ONSTACK);
    pthread_sigmask(SIG_BLOCK, NULL, &seen_mask);
}

static void act(int sig)
{
    if (strcmp(handler_kind, "reraise") == 0) {
        /* As PHP does: back to the default, keeping SA_SIGINFO, and re-sent. */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_flags = SA_SIGINFO;
        sigaction(sig, &sa, NULL);
        kill(getpid(), sig);
    } else if (strcmp(handler_kind, "exit") == 0) {
        exit(3);
    } else if (strcmp(handler_kind, "_exit") == 0) {
        _exit(4);
    } else if (strcmp(handler_kind, "longjmp") == 0) {
        siglongjmp(jump_back, 1);
    }
    errno = 4242; /* the interrupted code sees this, as the kernel does not restore errno */
}

static void plain_handler(int sig)
{
    record(sig, NULL);
    act(sig);
}

static void info_handler(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    record(sig, info);
    act(sig);
}

static volatile sig_atomic_t raw_calls;
static void raw_handler(int sig)
{
    (void)sig;
    raw_calls++;
}

static void print_mask(const char *label, const sigset_t *m)
{
    printf("%s:", label);
    for (int s = 1; s < 65; s++)
        if (sigismember(m, s) == 1)
            printf(" %d", s);
    printf("\n");
}

static const char *handler_name(void *h)
{
    if (h == (void *)SIG_DFL)
        return "DFL";
    if (h == (void *)SIG_IGN)
        return "IGN";
    if (h == (void *)SIG_ERR)
        return "ERR";
    if (h == (void *)SIG_HOLD)
        return "HOLD";
    if (h == (void *)plain_handler)
        return "plain_handler";
    if (h == (void *)info_handler)
        return "info_handler";
    if (h == (void *)raw_handler)
        return "raw_handler";
    return "other";
}

static void readback(const char *label)
{
    struct sigaction o;
    memset(&o, 0, sizeof o);
    errno = 0;
    int r = sigaction(the_sig, NULL, &o);
    printf("%s: r=%d disp=%s flags=%#x restorer=%s\n", label, r, handler_name((void *)o.sa_handler),
           (unsigned)o.sa_flags, o.sa_restorer ? "set" : "null");
    print_mask("  mask", &o.sa_mask);
}

static void after(const char *label, int main_errno)
{
    printf("%s: calls=%d errno=%d", label, (int)calls, main_errno);
    if (calls) {
        printf(" handler_errno=%d signo=%d code=%d onstack=%d", seen_errno, seen_signo, seen_code,
               seen_onstack);
        printf("\n");
        print_mask("  handler_mask", (sigset_t *)&seen_mask);
    } else {
        printf("\n");
    }
}

static void set_disposition(const char *setter, const char *kind, int flags)
{
    void *h;
    if (strcmp(kind, "dfl") == 0)
        h = (void *)SIG_DFL;
    else if (strcmp(kind, "ign") == 0)
        h = (void *)SIG_IGN;
    else if (strcmp(kind, "hold") == 0)
        h = (void *)SIG_HOLD;
    else
        h = (flags & SA_SIGINFO) ? (void *)info_handler : (void *)plain_handler;

    errno = 0;
    if (strcmp(setter, "sigaction") == 0) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = (sighandler_t)h; /* shares storage with sa_sigaction */
        sa.sa_flags = flags;
        sigemptyset(&sa.sa_mask);
        sigaddset(&sa.sa_mask, SIGUSR1 == the_sig ? SIGUSR2 : SIGUSR1);
        int r = sigaction(the_sig, &sa, &old);
        printf("set: r=%d old=%s\n", r, handler_name((void *)old.sa_handler));
        return;
    }
    sighandler_t (*fn)(int, sighandler_t) = NULL;
    if (strcmp(setter, "signal") == 0)
        fn = signal;
    else if (strcmp(setter, "bsd_signal") == 0)
        fn = bsd_signal;
    else if (strcmp(setter, "sysv_signal") == 0)
        fn = sysv_signal;
    else if (strcmp(setter, "sigset") == 0)
        fn = sigset;
    if (fn == NULL) {
        printf("bad setter\n");
        exit(90);
    }
    sighandler_t old = fn(the_sig, (sighandler_t)h);
    printf("set: old=%s errno=%d\n", handler_name((void *)old), errno);
}

static void open_connections(void)
{
    PGconn *pg = PQconnectdb("");
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "sigdiff: %s", PQerrorMessage(pg));
        exit(91);
    }
    PQclear(PQexec(pg, "BEGIN"));
    PQclear(PQexec(pg, "SELECT 1"));
    const char *sock = getenv("LC_TEST_REDIS_SOCK");
    redisContext *rc = sock ? redisConnectUnix(sock) : NULL;
    if (rc == NULL || rc->err) {
        fprintf(stderr, "sigdiff: no redis\n");
        exit(92);
    }
    redisAppendCommand(rc, "INCR sigdiff:%d", getpid());
}

static int report(const char *sig_name, int procbits)
{
    the_sig = sig_from_name(sig_name);
    readback("exec readback");
    if (procbits) {
        /* What the kernel holds in an image without lastcall: never our handler. */
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f)) {
            if (strncmp(line, "SigIgn:", 7) == 0 || strncmp(line, "SigCgt:", 7) == 0) {
                unsigned long long bits = strtoull(line + 8, NULL, 16);
                printf("%.6s bit=%d\n", line, (int)((bits >> (the_sig - 1)) & 1));
            }
        }
        if (f)
            fclose(f);
    }
    return 0;
}

/* One delivery of the signal, by the chosen route. */
static void deliver(const char *how, const char *label)
{
    sigset_t one, pending;
    sigemptyset(&one);
    sigaddset(&one, the_sig);
    errno = 1111;
    if (strcmp(how, "block") == 0 || strcmp(how, "sighold") == 0) {
        if (how[0] == 'b')
            sigprocmask(SIG_BLOCK, &one, NULL);
        else
            sighold(the_sig);
        kill(getpid(), the_sig);
        sigpending(&pending);
        printf("%s: pending=%d\n", label, sigismember(&pending, the_sig));
        errno = 1111;
        if (how[0] == 'b')
            sigprocmask(SIG_UNBLOCK, &one, NULL);
        else
            sigrelse(the_sig);
    } else if (strcmp(how, "sigwait") == 0) {
        sigprocmask(SIG_BLOCK, &one, NULL);
        kill(getpid(), the_sig);
        int got = 0;
        int r = sigwait(&one, &got);
        printf("%s: sigwait r=%d got=%d\n", label, r, got);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        errno = 1111;
    } else if (strcmp(how, "signalfd") == 0) {
        sigprocmask(SIG_BLOCK, &one, NULL);
        int fd = signalfd(-1, &one, SFD_CLOEXEC);
        kill(getpid(), the_sig);
        struct signalfd_siginfo si;
        ssize_t n = read(fd, &si, sizeof si);
        printf("%s: signalfd n=%zd signo=%u\n", label, n, n > 0 ? si.ssi_signo : 0);
        close(fd);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        errno = 1111;
    } else {
        kill(getpid(), the_sig);
    }
    int e = errno;
    after(label, e);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 4 && strcmp(argv[1], "report") == 0)
        return report(argv[2], atoi(argv[3]));
    if (argc != 7) {
        fprintf(stderr, "usage: sigdiff SETTER HANDLER FLAGS SIGNAL DELIVERY CONN\n");
        return 2;
    }
    const char *setter = argv[1];
    handler_kind = argv[2];
    flags_in = (int)strtoul(argv[3], NULL, 16);
    the_sig = sig_from_name(argv[4]);
    const char *how = argv[5];
    if (the_sig < 0)
        return 2;

    if (flags_in & SA_ONSTACK) {
        altstack_base = malloc(altstack_size);
        stack_t ss = {.ss_sp = altstack_base, .ss_size = altstack_size, .ss_flags = 0};
        sigaltstack(&ss, NULL);
    }
    if (atoi(argv[6]))
        open_connections();

    readback("initial");
    set_disposition(setter, handler_kind, flags_in);
    readback("after set");

    if (strcmp(how, "raw") == 0) {
        /* Behind lastcall's back: the kernel's rt_sigaction, bypassing libc.
         * The kernel wants a restorer with SA_SIGINFO-less x86-64 handlers
         * too, so take glibc's from what it installed. */
        struct {
            void *handler;
            unsigned long flags;
            void *restorer;
            uint64_t mask;
        } k = {(void *)raw_handler, 0x04000000UL, NULL, 0};
        struct sigaction cur;
        sigaction(SIGPIPE, NULL, &cur);
        struct sigaction tmp;
        memset(&tmp, 0, sizeof tmp);
        tmp.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &tmp, NULL); /* any glibc install gives us its restorer */
        sigaction(SIGPIPE, NULL, &tmp);
        k.restorer = (void *)tmp.sa_restorer;
        sigaction(SIGPIPE, &cur, NULL);
        long r = syscall(SYS_rt_sigaction, the_sig, &k, NULL, 8);
        printf("raw: r=%ld\n", r);
        readback("after raw");
        kill(getpid(), the_sig);
        printf("raw: raw_calls=%d calls=%d\n", (int)raw_calls, (int)calls);
        readback("after raw delivery");
        printf("end\n");
        return 0;
    }
    if (strcmp(how, "exec") == 0 || strcmp(how, "exec-bare") == 0) {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0)
            return 93;
        self[n] = '\0';
        int bare = strcmp(how, "exec-bare") == 0;
        if (bare)
            unsetenv("LD_PRELOAD");
        char *args[] = {self, "report", argv[4], bare ? "1" : "0", NULL};
        execv(self, args);
        return 94;
    }
    if (strcmp(how, "fork") == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            readback("child readback");
            deliver("kill", "child after");
            printf("child end\n");
            exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        printf("child status: %s %d\n", WIFSIGNALED(st) ? "signal" : "exit",
               WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        printf("end\n");
        return 0;
    }

    if (strcmp(handler_kind, "longjmp") == 0 && sigsetjmp(jump_back, 1)) {
        printf("jumped back: calls=%d\n", (int)calls);
        readback("after jump");
        printf("end\n");
        return 0;
    }
    deliver(how, "after1");
    readback("after delivery");
    if (strcmp(how, "sigwait") != 0 && strcmp(how, "signalfd") != 0)
        deliver("kill", "after2");
    printf("end\n");
    return 0;
}
