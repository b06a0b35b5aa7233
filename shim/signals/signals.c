#define _GNU_SOURCE
#include "signals/signals.h"
#include "core/libc_compat.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "platform/deadline.h"
#include "core/compiler.h"
#include "core/clock.h"
#include "core/registry.h"
#include "core/process.h"
#include "platform/safepoint.h"
#include "core/status_protocol.h"
#include "signals/stopdelay.h"

/* The layers above, as the composition root gave them (signals_install). */
static const struct signals_sink *sink;

/* glibc's own name for the real sigaction: calling it directly spares every
 * process (a shell, /bin/true) a dlsym at start-up. */
extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
static int managed[NSIG];
static int status_sig;
/* LC_STATUS_SIGNAL, for `lastcall status PID`: taken over only for requests
 * that carry our magic; anything else gets the program's disposition. */
static int remote_sig;
/* What the program believes each managed signal's disposition is, held as
 * the kernel would hold it (see normalize()), so that a read-back through
 * sigaction() or signal() gives exactly what it gives without lastcall. */
static struct sigaction virtual_table[NSIG] __attribute__((aligned(4096)));
/* Rotated so that the usual managed signals (SIGTERM, SIGINT, the status
 * signal SIGRTMAX-7, also SIGHUP, SIGQUIT, SIGUSR1/2) share one page: every
 * process writes their entries at start-up, and each page first written is
 * one more page fault (the table is 10 KiB). */
static struct sigaction *vact(int sig)
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
static void virtual_write(int sig, const struct sigaction *a)
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
static void virtual_read(int sig, struct sigaction *out)
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
static int foreign[NSIG];
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
/* The pid that received a managed signal: a fork child starts afresh. */
static pid_t shutdown_pid;

/* LASTCALL_STOP_DELAY: the first managed signal is held (HOLDING) while a
 * timer runs; its expiry, or a second managed signal, ends the hold (OVER)
 * and a signal goes on as usual. Only the handler moves the state, by
 * compare-and-swap (several threads may take managed signals at once). */
enum { DELAY_NONE, DELAY_HOLDING, DELAY_OVER };
static int delay_state;
static int delay_sig;
static siginfo_t delay_info;
static int64_t delay_start_ms;

/* A signal drain in a process that has no drain thread yet (safepoint.h):
 * the signal waits for a safe point to start it. */
static int lazy_sig;
static int64_t lazy_start_ms;
static int lazy_inflight;       /* the diverted thread was inside a library call */
static pid_t lazy_pid;          /* a fork child starts afresh */

static uint64_t lazy_token;     /* a `lastcall status` request waiting for the thread */
static int64_t lazy_token_ms;

static int lazy_drain_pending(void)
{
    return __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE) != 0 &&
           __atomic_load_n(&lazy_pid, __ATOMIC_ACQUIRE) == getpid();
}
#define LAZY_RETRY_US 50
/* How long a thread interrupted inside libc is given to leave it before it
 * is parked where it is. */
#define PARK_TRY_MS 20

int signals_shutdown_started(void)
{
    pid_t p = __atomic_load_n(&shutdown_pid, __ATOMIC_ACQUIRE);
    return p != 0 && p == getpid();
}

static int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    return __sigaction(sig, act, old);
}

static void lc_signal_handler(int sig, siginfo_t *info, void *uctx);

static int is_managed(int sig)
{
    return sig > 0 && sig < NSIG && managed[sig];
}

/* A disposition is SIG_DFL, SIG_IGN or a function, whatever SA_SIGINFO says:
 * sa_handler and sa_sigaction share storage, so SIG_DFL with SA_SIGINFO is a
 * NULL sa_sigaction (PHP resets its SIGTERM handler that way, then re-raises),
 * and SIG_IGN is (void *)1 under either flag. Nothing else may decide whether
 * a handler can be called. */
enum disposition { DISP_DEFAULT, DISP_IGNORE, DISP_FUNCTION };

static enum disposition disposition_of(const struct sigaction *a)
{
    if (a->sa_handler == SIG_DFL)
        return DISP_DEFAULT;
    if (a->sa_handler == SIG_IGN)
        return DISP_IGNORE;
    return DISP_FUNCTION;
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
static int apply(int sig, struct sigaction *kernel_was)
{
    const struct sigaction *v = vact(sig);
    /* A drain waiting for a safe point keeps our handler: its retry comes as
     * this signal, and a signal that found SIG_DFL has already doomed the
     * process whatever the program now asks. */
    if (disposition_of(v) == DISP_IGNORE && !lazy_drain_pending()) {
        struct sigaction ign = *v;
        ign.sa_flags &= ~(int)glibc_added_flags;
        return real_sigaction(sig, &ign, kernel_was);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = lc_signal_handler;
    sa.sa_mask = v->sa_mask;
    int keep = SA_RESTART | SA_ONSTACK | SA_NODEFER;
    sa.sa_flags = SA_SIGINFO | (v->sa_flags & keep);
    if (disposition_of(v) == DISP_DEFAULT)
        sa.sa_flags |= SA_RESTART; /* an in-flight call should go on, not see EINTR */
    return real_sigaction(sig, &sa, kernel_was);
}

static void lock_table(sigset_t *saved)
{
    /* Every signal, not only the managed ones: a program's handler for any
     * signal may call sigaction() while this thread holds the lock. */
    sigset_t block;
    sigfillset(&block);
    pthread_sigmask(SIG_BLOCK, &block, saved);
    while (__atomic_exchange_n(&table_lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static void unlock_table(const sigset_t *saved)
{
    __atomic_store_n(&table_lock, 0, __ATOMIC_RELEASE);
    pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* Is K, the kernel's disposition of SIG, one we put there (our handler, or
 * the SIG_IGN that stands for an ignored virtual entry)? Anything else was
 * set behind our back (a raw rt_sigaction). */
static int kernel_is_ours(int sig, const struct sigaction *k, const struct sigaction *virt)
{
    if ((k->sa_flags & SA_SIGINFO) && k->sa_sigaction == lc_signal_handler)
        return 1;
    return !__atomic_load_n(&foreign[sig], __ATOMIC_RELAXED) &&
           disposition_of(k) == DISP_IGNORE && disposition_of(virt) == DISP_IGNORE;
}

/* Called with the table locked, K the kernel's disposition of SIG. One set
 * behind our back wins, and becomes the virtual one. */
static void resync_with(int sig, const struct sigaction *k)
{
    if (kernel_is_ours(sig, k, vact(sig))) {
        learn_glibc_additions(k); /* ours, installed through glibc */
        if ((k->sa_flags & SA_SIGINFO) && k->sa_sigaction == lc_signal_handler)
            __atomic_store_n(&foreign[sig], 0, __ATOMIC_RELAXED);
        return;
    }
    virtual_write(sig, k);
    __atomic_store_n(&foreign[sig], 1, __ATOMIC_RELAXED);
}

static void resync_locked(int sig)
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

static void signals_atfork_child(void)
{
    /* The child has no pending signal and no timer of the parent's: a hold
     * under way in the parent is the parent's. */
    __atomic_store_n(&delay_state, DELAY_NONE, __ATOMIC_RELEASE);
    stopdelay_atfork_child();
}

LC_STARTUP void signals_install(const sigset_t *set, int status_signal,
                                const struct signals_sink *to)
{
    sink = to;
    status_sig = status_signal;
    remote_sig = LC_STATUS_SIGNAL;
    if (lc_cfg.stop_delay_ms > 0) {
        sigset_t delayed = *set;
        if (status_signal > 0)
            sigdelset(&delayed, status_signal);
        /* Before our handler is in place: it may take a signal at once. */
        stopdelay_init(lc_cfg.stop_delay_ms, &delayed);
        pthread_atfork(NULL, NULL, signals_atfork_child);
    }
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = lc_signal_handler;
    ours.sa_flags = SA_SIGINFO | SA_RESTART;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigismember(set, sig) != 1 && sig != status_signal && sig != remote_sig)
            continue;
        /* One syscall: install ours and learn what was there. At exec only
         * SIG_DFL and SIG_IGN can be inherited; an ignored signal is put back. */
        if (real_sigaction(sig, &ours, vact(sig)) != 0)
            continue;
        managed[sig] = 1;
        if (disposition_of(vact(sig)) == DISP_IGNORE)
            real_sigaction(sig, vact(sig), NULL);
    }
}

void signals_die(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    if (getpid() != 1) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
    }
    _exit(128 + sig);
}

/* Leaves the signal pending with the default disposition: it kills the
 * process as soon as the handler returns and unblocks it. */
static void die_on_return(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    if (getpid() == 1)
        _exit(128 + sig); /* the kernel would drop it for init */
    raise(sig);
}

static void park_until_death(void)
{
    /* The program's own code must not run on after a signal that would have
     * killed it. Further managed signals stay deliverable: a second one ends
     * the process at once. */
    sigset_t wait_mask;
    sigfillset(&wait_mask);
    for (int s = 1; s < NSIG; s++)
        if (managed[s] && s != status_sig && s != remote_sig)
            sigdelset(&wait_mask, s);
    for (;;)
        sigsuspend(&wait_mask);
}

/* Calls the program's handler. errno is not saved around it: without us the
 * interrupted code sees whatever errno the handler left, and so it must here.
 * A handler that longjmps out leaves our frame behind: nothing of ours is
 * pending at this point. */
static void call_program(int sig, const struct sigaction *v, siginfo_t *info, void *uctx)
{
    if (v->sa_flags & SA_SIGINFO)
        v->sa_sigaction(sig, info, uctx);
    else
        v->sa_handler(sig);
}

enum delay_verdict { DELAY_GO_ON, DELAY_HELD };

/* Decides what the stop delay does with SIG. On DELAY_GO_ON *INFO may have
 * been replaced by the held signal's own siginfo. */
static enum delay_verdict stop_delay(int sig, siginfo_t **info)
{
    if (stopdelay_is_timer(*info)) {
        int holding = DELAY_HOLDING;
        if (sig != __atomic_load_n(&delay_sig, __ATOMIC_ACQUIRE) ||
            !__atomic_compare_exchange_n(&delay_state, &holding, DELAY_OVER, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            return DELAY_HELD; /* an expiry queued before a second signal cut the hold */
        if (sink->drain_requested()) {
            /* The program called exit() during the delay and its exit drain
             * is under way: the held signal would only cut that short. */
            stopdelay_log(STOPDELAY_DROPPED, sig, lc_now_ms() - delay_start_ms);
            return DELAY_HELD;
        }
        stopdelay_log(STOPDELAY_OVER, sig, lc_now_ms() - delay_start_ms);
        *info = &delay_info;
        return DELAY_GO_ON;
    }
    int state = __atomic_load_n(&delay_state, __ATOMIC_ACQUIRE);
    if (state == DELAY_NONE && lc_cfg.stop_delay_ms > 0 &&
        __atomic_compare_exchange_n(&delay_state, &state, DELAY_HOLDING, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        delay_info = **info;
        delay_start_ms = lc_now_ms();
        __atomic_store_n(&delay_sig, sig, __ATOMIC_RELEASE);
        if (stopdelay_arm(sig) == 0) {
            stopdelay_log(STOPDELAY_BEGIN, sig, 0);
            return DELAY_HELD;
        }
        /* No timer in this process: no delay. */
        __atomic_store_n(&delay_state, DELAY_OVER, __ATOMIC_RELEASE);
        return DELAY_GO_ON;
    }
    int holding = DELAY_HOLDING;
    if (state == DELAY_HOLDING &&
        __atomic_compare_exchange_n(&delay_state, &holding, DELAY_OVER, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        /* A second signal: the user means it now. */
        stopdelay_disarm(__atomic_load_n(&delay_sig, __ATOMIC_ACQUIRE));
        stopdelay_log(STOPDELAY_CUT, sig, lc_now_ms() - delay_start_ms);
    }
    return DELAY_GO_ON;
}

static void park_until_death(void);

/* A status request that will not get its snapshot: the short answer, from
 * here (async-signal-safe). */
static void lazy_status_answer_short(void)
{
    uint64_t token = __atomic_exchange_n(&lazy_token, 0, __ATOMIC_ACQ_REL);
    if (token)
        sink->answer_status_inline(token);
}

/* Runs on the interrupted thread once the handler has returned, outside
 * signal context, every signal blocked: the thread can be created here. Then
 * the work that waited for it: a `lastcall status` answer, a drain. */
static void lazy_landing(void)
{
    if (lazy_drain_pending()) {
        /* The kernel's deadline timer delivers the drain's signal to this
         * thread: starting the drain thread could block (an allocator, a
         * lock), and nothing may keep the timer from ending the process. */
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE));
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    }
    int ok = sink->start_drain_thread() == 0;
    uint64_t token = __atomic_exchange_n(&lazy_token, 0, __ATOMIC_ACQ_REL);
    if (token && (!ok || sink->request_remote_status(token) != 0))
        sink->answer_status_inline(token);
    if (lazy_drain_pending()) {
        int sig = __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE);
        if (!ok || sink->post_signal_drain(sig, lazy_start_ms) != 0)
            signals_die(sig); /* as without lastcall */
        if (!lazy_inflight)
            park_until_death();
    }
    /* Back to the interrupted code: a status request changes nothing for it;
     * a call under way goes on, and its hook parks the thread when it returns. */
}

static void die_on_return(int sig);

/* Work waits for a safe point (a drain: LAZY_SIG set; a status request:
 * LAZY_TOKEN): divert this thread there, or try again shortly. A drain that
 * found none by the deadline gives up: the process dies as it would have
 * without lastcall. A status request gets the short answer after 2 s. */
static void lazy_try(int sig, void *uctx, const siginfo_t *delivered)
{
    int drain = lazy_drain_pending();
    if (drain) {
        sig = __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE);
        if (lc_now_ms() - lazy_start_ms >= lc_cfg.deadline_ms) {
            die_on_return(sig);
            return;
        }
    } else if (lc_now_ms() - lazy_token_ms >= 2000) {
        lazy_status_answer_short();
        return;
    }
    if (safepoint_is_safe(uctx, delivered)) {
        int inflight = sink->inside_library_call();
        if (safepoint_divert(uctx, lazy_landing) == 0) {
            lazy_inflight = inflight;
            return;
        }
    }
    if (safepoint_retry(sig, LAZY_RETRY_US) == 0)
        return;
    if (drain)
        die_on_return(sig);
    else
        lazy_status_answer_short();
}

/* Parked while it runs a dlopen'd object's constructor, a thread would hold
 * ld.so's load lock for good: every other thread's loader call (dlsym from an
 * FFI, libpq's own lookups inside PQgetResult) would wait forever, and their
 * connections look busy until they are cut. Parked inside fork(), it would
 * hold every lock the fork handlers took (the registry's: the drain could
 * not even start). Such a thread goes on until it has left the loader or
 * fork(), a moment later, and is parked then. */
static __thread int64_t park_tried_since_ms __attribute__((tls_model("initial-exec")));

static void park_or_retry(int sig, const void *uctx, const siginfo_t *info)
{
    if ((lc_forking || safepoint_holds_loader_lock()) &&
        safepoint_park_retry(sig, LAZY_RETRY_US) == 0)
        return;
    /* Inside libc or the allocator a thread may hold the arena lock that
     * other threads' libpq calls need: tried again for a while (a thread
     * waiting in a futex for good would never leave libc: then parked). */
    if (!safepoint_pc_is_safe(uctx, info)) {
        int64_t now = lc_now_ms();
        if (park_tried_since_ms == 0)
            park_tried_since_ms = now;
        if (now - park_tried_since_ms < PARK_TRY_MS &&
            safepoint_park_retry(sig, LAZY_RETRY_US) == 0)
            return;
    }
    park_until_death();
}

static void lc_signal_handler(int sig, siginfo_t *info, void *uctx)
{
    int saved_errno = errno;
    const siginfo_t *delivered = info; /* the stop delay may swap INFO */
    struct lc_deadline_end end;
    if (deadline_is_expiry(info, &end)) {
        /* The drain overran its deadline (stuck on a lock, a library, a
         * server): the process ends now, as it would have ended. */
        if (end.sig > 0)
            signals_die(end.sig);
        _exit(end.status);
    }
    if (safepoint_is_park_retry(info)) {
        /* Inside a library call by now: its hook parks the thread. */
        if (sink->drain_requested() && !sink->inside_library_call())
            park_or_retry(sig, uctx, info);
        errno = saved_errno;
        return;
    }
    if (safepoint_is_retry(info)) {
        if ((lazy_drain_pending() || __atomic_load_n(&lazy_token, __ATOMIC_ACQUIRE)) &&
            !sink->drain_requested())
            lazy_try(sig, uctx, delivered);
        errno = saved_errno;
        return;
    }
    if (lc_cfg.stop_delay_ms > 0 && sig != status_sig && sig != remote_sig &&
        stop_delay(sig, &info) == DELAY_HELD) {
        errno = saved_errno;
        return;
    }
    struct sigaction v;
    virtual_read(sig, &v);
    if (sig == remote_sig) {
        if (sink->is_status_request(sig, info)) {
            uint64_t none = 0, token = (uint64_t)(uintptr_t)info->si_value.sival_ptr;
            if (sink->drain_thread_is_lazy() &&
                __atomic_compare_exchange_n(&lazy_token, &none, token, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                lazy_token_ms = lc_now_ms();
                lazy_try(sig, uctx, delivered); /* the snapshot is made on the drain thread */
            } else if (sink->request_remote_status(token) != 0) {
                sink->answer_status_inline(token);
            }
            errno = saved_errno;
            return;
        }
        /* Not ours: what the kernel would do with the program's disposition.
         * No drain: this signal is not one lastcall manages. */
        if (disposition_of(&v) == DISP_FUNCTION) {
            if (v.sa_flags & SA_RESETHAND)
                vact(sig)->sa_handler = SIG_DFL;
            call_program(sig, &v, info, uctx);
        } else if (disposition_of(&v) == DISP_DEFAULT && getpid() != 1) {
            die_on_return(sig); /* as PID 1 the kernel would drop it */
            errno = saved_errno;
        }
        return;
    }
    if (sig == status_sig) {
        /* Taken over for LASTCALL_STATUS_SIGNAL: a snapshot, then the
         * program's own handler if it has one; never the default action. */
        sink->request_status();
        errno = saved_errno;
        if (disposition_of(&v) == DISP_FUNCTION) {
            if (v.sa_flags & SA_RESETHAND)
                vact(sig)->sa_handler = SIG_DFL;
            call_program(sig, &v, info, uctx);
        }
        return;
    }
    __atomic_store_n(&shutdown_pid, getpid(), __ATOMIC_RELEASE);
    if (sink->drain_requested() || lazy_drain_pending()) {
        /* Second signal during a drain: the user means it. */
        die_on_return(sig);
        errno = saved_errno;
        return;
    }
    switch (disposition_of(&v)) {
    case DISP_IGNORE:
        /* Only in the instant between the virtual entry and the kernel's. */
        return;
    case DISP_FUNCTION:
        if (v.sa_flags & SA_RESETHAND)
            vact(sig)->sa_handler = SIG_DFL; /* the kernel keeps the flags */
        call_program(sig, &v, info, uctx);
        return;
    case DISP_DEFAULT:
        break;
    }
    /* SIG_DFL: drain, then die by this signal. */
    if (!lc_active() || registry_owned_live() == 0) {
        die_on_return(sig);
        errno = saved_errno;
        return;
    }
    /* Armed on this thread, which from here on is parked with SIG
     * deliverable, or goes on inside a library call whose hook parks it. */
    struct lc_deadline_end by_signal = {.sig = sig};
    deadline_arm(sig, lc_now_ms() + sink->deadline_budget_ms(), by_signal);
    if (sink->request_signal_drain(sig) != 0) {
        if (__atomic_load_n(&lazy_pid, __ATOMIC_ACQUIRE) != getpid())
            __atomic_store_n(&lazy_sig, 0, __ATOMIC_RELEASE); /* a fork child's own drain */
        int none = 0;
        if (sink->drain_thread_is_lazy() &&
            __atomic_compare_exchange_n(&lazy_sig, &none, sig, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            lazy_start_ms = lc_now_ms();
            __atomic_store_n(&lazy_pid, getpid(), __ATOMIC_RELEASE);
            lazy_try(sig, uctx, delivered);
        } else {
            die_on_return(sig);
        }
        errno = saved_errno;
        return;
    }
    if (sink->inside_library_call()) {
        /* Interrupted inside libpq/hiredis: let the call go on; its hook
         * parks the thread when it returns. */
        errno = saved_errno;
        return;
    }
    park_or_retry(sig, uctx, delivered);
    errno = saved_errno;
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

int signals_deadline_signal(void)
{
    /* The status signal is ours from start-up; its handler already does
     * nothing for a program's SIG_IGN, so the kernel entry can be ours even
     * then (no exec follows: the process is exiting). */
    int sig = is_managed(remote_sig) ? remote_sig : 0;
    for (int s = 1; sig == 0 && s < NSIG; s++)
        if (managed[s] && s != status_sig)
            sig = s;
    if (sig == 0)
        return 0;
    struct sigaction k;
    if (real_sigaction(sig, NULL, &k) != 0)
        return 0;
    if (!((k.sa_flags & SA_SIGINFO) && k.sa_sigaction == lc_signal_handler)) {
        if (foreign[sig])
            return 0; /* the program's own, set behind our back */
        struct sigaction ours;
        memset(&ours, 0, sizeof ours);
        ours.sa_sigaction = lc_signal_handler;
        ours.sa_flags = SA_SIGINFO | SA_RESTART;
        if (real_sigaction(sig, &ours, NULL) != 0)
            return 0;
    }
    return sig;
}

int signals_claim_pending_drain(int64_t *start_ms)
{
    if (!lazy_drain_pending())
        return 0;
    int sig = __atomic_exchange_n(&lazy_sig, 0, __ATOMIC_ACQ_REL);
    if (sig > 0) {
        *start_ms = lazy_start_ms;
        /* From here the retries find nothing pending; a further managed
         * signal still ends the process at once (runtime_drain_requested). */
    }
    return sig;
}
