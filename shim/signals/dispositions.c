/* The virtual dispositions: what the program believes each managed signal's
 * disposition is, and the hooks (sigaction, signal, sigset...) through which
 * it reads and writes them, while the kernel's entry stays our handler. */
#define _GNU_SOURCE
#include "signals/signals.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/libc_compat.h"
#include "core/compiler.h"
#include "core/process.h"
#include "core/registry.h"
#include "core/status_protocol.h"
#include "platform/deadline.h"
#include "platform/safepoint.h"
#include "signals/internal.h"

/* glibc's own name for the real sigaction: calling it directly spares every
 * process (a shell, /bin/true) a dlsym at start-up. */
extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
int managed[NSIG];
int status_sig;
/* LC_STATUS_SIGNAL, for `lastcall status PID`: taken over only for requests
 * that carry our magic; anything else gets the program's disposition. */
int remote_sig;
/* Our handler, and whether it must stay in the kernel whatever the program
 * asks (a drain waiting for a safe point retries through it): given by
 * signals_install. */
static void (*our_handler)(int sig, siginfo_t *info, void *uctx);
static int (*keep_ours)(void);

void dispositions_install(void (*handler)(int, siginfo_t *, void *), int (*keep)(void))
{
    our_handler = handler;
    keep_ours = keep;
}

int is_managed(int sig)
{
    return sig > 0 && sig < NSIG && managed[sig];
}

/* What the program believes each managed signal's disposition is, held as
 * the kernel would hold it (see normalize()), so that a read-back through
 * sigaction() or signal() gives exactly what it gives without lastcall. */
static struct sigaction virtual_table[NSIG] __attribute__((aligned(4096)));
/* Rotated so that the usual managed signals (SIGTERM, SIGINT, the status
 * signal SIGRTMAX-7, also SIGHUP, SIGQUIT, SIGUSR1/2) share one page: every
 * process writes their entries at start-up, and each page first written is
 * one more page fault (the table is 10 KiB). */
struct sigaction *vact(int sig)
{
    return &virtual_table[(sig + 8) % NSIG];
}
/* The handler reads an entry without a lock (it may interrupt a writer on
 * another thread): a sequence count, odd while a writer changes an entry,
 * tells it to copy again. Writers hold table_lock with every signal blocked,
 * so a handler never waits for a writer on its own thread. */
static unsigned int table_seq;

#define ENTRY_WORDS (sizeof(struct sigaction) / sizeof(unsigned long))
_Static_assert(sizeof(struct sigaction) % sizeof(unsigned long) == 0, "whole words");

/* With the table locked. */
void virtual_write(int sig, const struct sigaction *a)
{
    unsigned long *to = (unsigned long *)vact(sig);
    const unsigned long *from = (const unsigned long *)a;
    unsigned int seq = __atomic_load_n(&table_seq, __ATOMIC_RELAXED);
    __atomic_store_n(&table_seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (size_t i = 0; i < ENTRY_WORDS; i++)
        __atomic_store_n(&to[i], from[i], __ATOMIC_RELAXED);
    __atomic_store_n(&table_seq, seq + 2, __ATOMIC_RELEASE);
}

/* Anywhere, a signal handler included: a copy no writer was changing. */
void virtual_read(int sig, struct sigaction *out)
{
    const unsigned long *from = (const unsigned long *)vact(sig);
    unsigned long *to = (unsigned long *)out;
    for (;;) {
        unsigned int seq = __atomic_load_n(&table_seq, __ATOMIC_ACQUIRE);
        if (seq & 1) {
            sched_yield(); /* a writer on another thread, mid-copy */
            continue;
        }
        for (size_t i = 0; i < ENTRY_WORDS; i++)
            to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&table_seq, __ATOMIC_RELAXED) == seq)
            return;
    }
}
/* The program changed the disposition behind our back (a raw rt_sigaction
 * syscall): the kernel holds its choice, and we leave it there. */
int foreign[NSIG];
/* Signals siginterrupt() made interrupting: glibc's signal() reads the same
 * set (its private _sigintr) to decide on SA_RESTART. */
static sigset_t interrupting;
/* Flag bits and restorer glibc's sigaction adds on its way to the kernel
 * (SA_RESTORER on x86-64); learnt from the kernel the first time we need them. */
static unsigned long glibc_added_flags;
static void (*glibc_restorer)(void);
static int glibc_added_known;
/* Serialises the virtual table's writers (the sigaction hook, resync). Taken
 * only with every managed signal blocked on the taking thread, never in a
 * signal handler, so it cannot deadlock against our own handler. */
static int table_lock;
int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    return __sigaction(sig, act, old);
}

/* The flag bits the kernel keeps (it clears unknown ones since Linux 5.11, so
 * a program can probe for support): SA_NOCLDSTOP, SA_NOCLDWAIT, SA_SIGINFO,
 * SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_EXPOSE_TAGBITS, and
 * whatever glibc adds (SA_RESTORER). */
#define KERNEL_KEPT_FLAGS                                                                      \
    ((unsigned long)(SA_NOCLDSTOP | SA_NOCLDWAIT | SA_SIGINFO | SA_ONSTACK | SA_RESTART |      \
                     SA_NODEFER | SA_RESETHAND | 0x800))

/* K is a kernel entry installed through glibc: what it has beyond the
 * kernel's own flags, glibc added. */
static void learn_glibc_additions(const struct sigaction *k)
{
    if (glibc_added_known)
        return;
    glibc_added_flags = (unsigned long)k->sa_flags & ~KERNEL_KEPT_FLAGS;
    glibc_restorer = glibc_added_flags ? k->sa_restorer : NULL;
    glibc_added_known = 1;
}

/* What the kernel would hold after the program's sigaction(ACT), as a later
 * read-back shows it. */
static void normalize(const struct sigaction *act, struct sigaction *out)
{
    *out = *act;
    out->sa_flags = (int)(((unsigned long)act->sa_flags & KERNEL_KEPT_FLAGS) | glibc_added_flags);
    out->sa_restorer = glibc_added_flags ? glibc_restorer : NULL;
    sigdelset(&out->sa_mask, SIGKILL);
    sigdelset(&out->sa_mask, SIGSTOP);
}

/* Puts the kernel disposition in line with the virtual one: ignored stays
 * ignored in the kernel (it survives exec, as for a background job's SIGINT,
 * and a pending signal is discarded as it would be); anything else goes
 * through our handler with the program's mask and flags. SA_RESETHAND is
 * emulated (a kernel reset would let the next signal kill without a drain). */
int apply(int sig, struct sigaction *kernel_was)
{
    const struct sigaction *v = vact(sig);
    /* A drain waiting for a safe point keeps our handler: its retry comes as
     * this signal, and a signal that found SIG_DFL has already doomed the
     * process whatever the program now asks. */
    if (disposition_of(v) == DISP_IGNORE && !(keep_ours && keep_ours())) {
        struct sigaction ign = *v;
        ign.sa_flags &= ~(int)glibc_added_flags;
        return real_sigaction(sig, &ign, kernel_was);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = our_handler;
    sa.sa_mask = v->sa_mask;
    int keep = SA_RESTART | SA_ONSTACK | SA_NODEFER;
    sa.sa_flags = SA_SIGINFO | (v->sa_flags & keep);
    if (disposition_of(v) == DISP_DEFAULT)
        sa.sa_flags |= SA_RESTART; /* an in-flight call should go on, not see EINTR */
    return real_sigaction(sig, &sa, kernel_was);
}

void lock_table(sigset_t *saved)
{
    /* Every signal, not only the managed ones: a program's handler for any
     * signal may call sigaction() while this thread holds the lock. */
    sigset_t block;
    sigfillset(&block);
    pthread_sigmask(SIG_BLOCK, &block, saved);
    while (__atomic_exchange_n(&table_lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

void unlock_table(const sigset_t *saved)
{
    __atomic_store_n(&table_lock, 0, __ATOMIC_RELEASE);
    pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* Is K, the kernel's disposition of SIG, one we put there (our handler, or
 * the SIG_IGN that stands for an ignored virtual entry)? Anything else was
 * set behind our back (a raw rt_sigaction). */
int kernel_is_ours(int sig, const struct sigaction *k, const struct sigaction *virt)
{
    if ((k->sa_flags & SA_SIGINFO) && k->sa_sigaction == our_handler)
        return 1;
    return !__atomic_load_n(&foreign[sig], __ATOMIC_RELAXED) &&
           disposition_of(k) == DISP_IGNORE && disposition_of(virt) == DISP_IGNORE;
}

/* Called with the table locked, K the kernel's disposition of SIG. One set
 * behind our back wins, and becomes the virtual one. */
void resync_with(int sig, const struct sigaction *k)
{
    if (kernel_is_ours(sig, k, vact(sig))) {
        learn_glibc_additions(k); /* ours, installed through glibc */
        if ((k->sa_flags & SA_SIGINFO) && k->sa_sigaction == our_handler)
            __atomic_store_n(&foreign[sig], 0, __ATOMIC_RELAXED);
        return;
    }
    virtual_write(sig, k);
    __atomic_store_n(&foreign[sig], 1, __ATOMIC_RELAXED);
}

void resync_locked(int sig)
{
    struct sigaction k;
    if (real_sigaction(sig, NULL, &k) == 0)
        resync_with(sig, &k);
}

void signals_resync(void)
{
    sigset_t saved;
    lock_table(&saved);
    for (int sig = 1; sig < NSIG; sig++)
        if (managed[sig])
            resync_locked(sig);
    unlock_table(&saved);
}

/* ---- the program's view ---- */

/* A read-back: the kernel's entry tells whether the virtual one still holds
 * (one system call, as without lastcall); the table is locked only to take
 * over a disposition set behind our back. */
static int query(int sig, struct sigaction *oldact)
{
    struct sigaction k, v;
    if (real_sigaction(sig, NULL, &k) != 0)
        return -1;
    virtual_read(sig, &v);
    if (!kernel_is_ours(sig, &k, &v)) {
        sigset_t saved;
        lock_table(&saved);
        resync_locked(sig);
        v = *vact(sig);
        unlock_table(&saved);
    }
    if (oldact)
        *oldact = v;
    return 0;
}

/* SIG is pending for this thread (its own or the process's) and the program
 * had not blocked it: it was sent while the virtual disposition held, and
 * only our lock kept it from our handler. */
static int arrived_meanwhile(int sig, const sigset_t *program_mask)
{
    sigset_t pending;
    return sigpending(&pending) == 0 && sigismember(&pending, sig) == 1 &&
           sigismember(program_mask, sig) != 1;
}

LC_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
    if (!is_managed(sig) || !lc_active())
        return real_sigaction(sig, act, oldact);
    if (act == NULL)
        return query(sig, oldact);
    /* ACT and OLDACT may be the same struct. */
    struct sigaction want = *act;
    for (int round = 0;; round++) {
        sigset_t saved;
        lock_table(&saved);
        if (!glibc_added_known)
            resync_locked(sig); /* once: what glibc adds, for normalize() */
        struct sigaction was = *vact(sig), next, kernel_was;
        normalize(&want, &next);
        /* Without lastcall a signal sent under SIG_DFL acts when it is sent;
         * here it waits for our handler, and leaving SIG_DFL now (SIG_IGN
         * discards it, a function would catch it) would lose it. So one that
         * came while this thread held the lock is let in first: the mask
         * comes back, it reaches our handler, and the change is made after. */
        if (round < 3 && disposition_of(&was) == DISP_DEFAULT &&
            disposition_of(&next) != DISP_DEFAULT && arrived_meanwhile(sig, &saved)) {
            unlock_table(&saved);
            continue;
        }
        virtual_write(sig, &next);
        int r = apply(sig, &kernel_was);
        if (r != 0) {
            virtual_write(sig, &was);
        } else if (!kernel_is_ours(sig, &kernel_was, &was)) {
            was = kernel_was; /* set behind our back: that was the disposition */
        }
        if (r == 0)
            __atomic_store_n(&foreign[sig], 0, __ATOMIC_RELAXED);
        unlock_table(&saved);
        if (oldact && r == 0)
            *oldact = was;
        return r;
    }
}

/* glibc's signal(), sysv_signal(), sigset(), sigignore() and siginterrupt()
 * call its internal sigaction, which our sigaction() never sees; so each is
 * interposed, with glibc's semantics. */
static sighandler_t set_handler(int sig, sighandler_t handler, const sigset_t *mask, int flags)
{
    if (handler == SIG_ERR || sig < 1 || sig >= NSIG) {
        errno = EINVAL;
        return SIG_ERR;
    }
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sa.sa_mask = *mask;
    if (sigaction(sig, &sa, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

LC_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler)
{
    /* BSD semantics: the signal masked in its handler, restarted calls unless
     * siginterrupt() said otherwise. */
    sigset_t mask;
    sigemptyset(&mask);
    if (sig > 0 && sig < NSIG)
        sigaddset(&mask, sig);
    int restart = !(sig > 0 && sig < NSIG && sigismember(&interrupting, sig) == 1);
    return set_handler(sig, handler, &mask, restart ? SA_RESTART : 0);
}

LC_EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
    return bsd_signal(sig, handler);
}

LC_EXPORT sighandler_t ssignal(int sig, sighandler_t handler)
{
    return bsd_signal(sig, handler);
}

LC_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
    sigset_t none;
    sigemptyset(&none);
    /* SA_INTERRUPT is a historical no-op the kernel drops; glibc passes it. */
    return set_handler(sig, handler, &none, SA_RESETHAND | SA_NODEFER | SA_INTERRUPT);
}

LC_EXPORT sighandler_t __sysv_signal(int sig, sighandler_t handler)
{
    return sysv_signal(sig, handler);
}

LC_EXPORT sighandler_t sigset(int sig, sighandler_t disp)
{
    sigset_t one, old;
    sigemptyset(&one);
    if (sigaddset(&one, sig) < 0)
        return SIG_ERR;
    if (disp == SIG_HOLD) {
        if (sigprocmask(SIG_BLOCK, &one, &old) < 0)
            return SIG_ERR;
        if (sigismember(&old, sig) == 1)
            return SIG_HOLD;
        struct sigaction cur;
        if (sigaction(sig, NULL, &cur) < 0)
            return SIG_ERR;
        return cur.sa_handler;
    }
    struct sigaction sa, prev;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = disp;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, &prev) < 0)
        return SIG_ERR;
    if (sigprocmask(SIG_UNBLOCK, &one, &old) < 0)
        return SIG_ERR;
    return sigismember(&old, sig) == 1 ? SIG_HOLD : prev.sa_handler;
}

LC_EXPORT int sigignore(int sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

LC_EXPORT int siginterrupt(int sig, int interrupt)
{
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) < 0)
        return -1;
    if (interrupt) {
        sigaddset(&interrupting, sig);
        sa.sa_flags &= ~SA_RESTART;
    } else {
        sigdelset(&interrupting, sig);
        sa.sa_flags |= SA_RESTART;
    }
    return sigaction(sig, &sa, NULL) < 0 ? -1 : 0;
}

