#define _GNU_SOURCE
#include "signals.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "inflight.h"
#include "lc.h"
#include "registry.h"
#include "runtime.h"

/* glibc's own name for the real sigaction: calling it directly spares every
 * process (a shell, /bin/true) a dlsym at start-up. */
extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
static int managed[NSIG];
static int status_sig;
/* What the program believes each managed signal's disposition is. */
static struct sigaction virtual_act[NSIG];
/* The pid that received a managed signal: a fork child starts afresh. */
static pid_t shutdown_pid;

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

/* Puts the kernel disposition in line with the virtual one: ignored stays
 * ignored in the kernel (it survives exec, as for a background job's SIGINT);
 * anything else goes through our handler with the program's mask and flags. */
static int apply(int sig)
{
    const struct sigaction *v = &virtual_act[sig];
    if (!(v->sa_flags & SA_SIGINFO) && v->sa_handler == SIG_IGN)
        return real_sigaction(sig, v, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = lc_signal_handler;
    sa.sa_mask = v->sa_mask;
    int keep = SA_RESTART | SA_ONSTACK | SA_NODEFER;
    sa.sa_flags = SA_SIGINFO | (v->sa_flags & keep);
    if (!(v->sa_flags & SA_SIGINFO) && v->sa_handler == SIG_DFL)
        sa.sa_flags |= SA_RESTART; /* an in-flight call should go on, not see EINTR */
    return real_sigaction(sig, &sa, NULL);
}

void signals_install(const sigset_t *set, int status_signal)
{
    status_sig = status_signal;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = lc_signal_handler;
    ours.sa_flags = SA_SIGINFO | SA_RESTART;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigismember(set, sig) != 1 && sig != status_signal)
            continue;
        /* One syscall: install ours and learn what was there. At exec only
         * SIG_DFL and SIG_IGN can be inherited; an ignored signal is put back. */
        if (real_sigaction(sig, &ours, &virtual_act[sig]) != 0)
            continue;
        managed[sig] = 1;
        if (virtual_act[sig].sa_handler == SIG_IGN && !(virtual_act[sig].sa_flags & SA_SIGINFO))
            apply(sig);
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
        if (managed[s] && s != status_sig)
            sigdelset(&wait_mask, s);
    for (;;)
        sigsuspend(&wait_mask);
}

static void lc_signal_handler(int sig, siginfo_t *info, void *uctx)
{
    int saved_errno = errno;
    if (sig == status_sig) {
        /* Taken over for LASTCALL_STATUS_SIGNAL: a snapshot, then the
         * program's own handler if it has one; never the default action. */
        runtime_request_status();
        struct sigaction v = virtual_act[sig];
        if ((v.sa_flags & SA_SIGINFO) && v.sa_sigaction)
            v.sa_sigaction(sig, info, uctx);
        else if (!(v.sa_flags & SA_SIGINFO) && v.sa_handler != SIG_DFL && v.sa_handler != SIG_IGN)
            v.sa_handler(sig);
        errno = saved_errno;
        return;
    }
    __atomic_store_n(&shutdown_pid, getpid(), __ATOMIC_RELEASE);
    if (runtime_drain_requested()) {
        /* Second signal during a drain: the user means it. */
        die_on_return(sig);
        errno = saved_errno;
        return;
    }
    struct sigaction v = virtual_act[sig];
    if (v.sa_flags & SA_SIGINFO) {
        if (v.sa_flags & SA_RESETHAND) {
            virtual_act[sig].sa_flags &= ~SA_SIGINFO;
            virtual_act[sig].sa_handler = SIG_DFL;
        }
        v.sa_sigaction(sig, info, uctx);
        errno = saved_errno;
        return;
    }
    if (v.sa_handler == SIG_IGN) {
        errno = saved_errno;
        return;
    }
    if (v.sa_handler != SIG_DFL) {
        if (v.sa_flags & SA_RESETHAND)
            virtual_act[sig].sa_handler = SIG_DFL;
        v.sa_handler(sig);
        errno = saved_errno;
        return;
    }
    /* SIG_DFL: drain, then die by this signal. */
    if (!lc_active() || registry_owned_live() == 0 || runtime_request_signal_drain(sig) != 0) {
        die_on_return(sig);
        errno = saved_errno;
        return;
    }
    if (__atomic_load_n(&lc_inflight, __ATOMIC_ACQUIRE)) {
        /* Interrupted inside libpq/hiredis: let the call go on; its hook
         * parks the thread when it returns. */
        errno = saved_errno;
        return;
    }
    park_until_death();
}

/* ---- the program's view ---- */

LC_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
    if (!is_managed(sig) || !lc_active())
        return real_sigaction(sig, act, oldact);
    /* Block the signal on this thread so our handler never sees a
     * half-written entry. */
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_BLOCK, &one, &old);
    if (oldact)
        *oldact = virtual_act[sig];
    int r = 0;
    if (act) {
        virtual_act[sig] = *act;
        r = apply(sig);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}

static sighandler_t set_handler(int sig, sighandler_t handler, int flags)
{
    if (handler == SIG_ERR || sig < 1 || sig >= NSIG) {
        errno = EINVAL;
        return SIG_ERR;
    }
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (!(flags & SA_NODEFER))
        sigaddset(&sa.sa_mask, sig);
    if (sigaction(sig, &sa, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

/* glibc's signal() calls its internal sigaction, which our sigaction() never
 * sees; so signal() and its aliases are interposed too. */
LC_EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
    /* BSD semantics, as glibc's signal(): restart, the signal masked in its handler. */
    return set_handler(sig, handler, SA_RESTART);
}

LC_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler)
{
    return signal(sig, handler);
}

LC_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
    return set_handler(sig, handler, SA_RESETHAND | SA_NODEFER);
}
