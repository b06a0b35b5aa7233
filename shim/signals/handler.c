/* The handler of every managed signal: the kernel deadline's expiry, the
 * status requests, the stop delay, then a drain; and what the process does
 * when it must die by the signal. */
#define _GNU_SOURCE
#include "signals/signals.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/compiler.h"
#include "core/process.h"
#include "core/registry.h"
#include "core/status_protocol.h"
#include "platform/deadline.h"
#include "platform/safepoint.h"
#include "signals/internal.h"
#include "signals/stopdelay.h"

/* The layers above, as the composition root gave them (signals_install). */
const struct signals_sink *signals_sink;

int managed[NSIG];
int status_sig;
/* LC_STATUS_SIGNAL, for `lastcall status PID`: taken over only for requests
 * that carry our magic; anything else gets the program's disposition. */
int remote_sig;
/* The pid that received a managed signal: a fork child starts afresh. */
static pid_t shutdown_pid;

int signals_shutdown_started(void)
{
    pid_t p = __atomic_load_n(&shutdown_pid, __ATOMIC_ACQUIRE);
    return p != 0 && p == getpid();
}

int is_managed(int sig)
{
    return sig > 0 && sig < NSIG && managed[sig];
}

LC_STARTUP void signals_install(const sigset_t *set, int status_signal,
                                const struct signals_sink *to)
{
    signals_sink = to;
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
void die_on_return(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    if (getpid() == 1)
        _exit(128 + sig); /* the kernel would drop it for init */
    raise(sig);
}

void park_until_death(void)
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
void call_program(int sig, const struct sigaction *v, siginfo_t *info, void *uctx)
{
    if (v->sa_flags & SA_SIGINFO)
        v->sa_sigaction(sig, info, uctx);
    else
        v->sa_handler(sig);
}

void lc_signal_handler(int sig, siginfo_t *info, void *uctx)
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
        if (signals_sink->drain_requested() && !signals_sink->inside_library_call())
            park_or_retry(sig, uctx, info);
        errno = saved_errno;
        return;
    }
    if (safepoint_is_retry(info)) {
        if ((lazy_drain_pending() || __atomic_load_n(&lazy_token, __ATOMIC_ACQUIRE)) &&
            !signals_sink->drain_requested())
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
        if (signals_sink->is_status_request(sig, info)) {
            uint64_t none = 0, token = (uint64_t)(uintptr_t)info->si_value.sival_ptr;
            if (signals_sink->drain_thread_is_lazy() &&
                __atomic_compare_exchange_n(&lazy_token, &none, token, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                lazy_token_ms = lc_now_ms();
                lazy_try(sig, uctx, delivered); /* the snapshot is made on the drain thread */
            } else if (signals_sink->request_remote_status(token) != 0) {
                signals_sink->answer_status_inline(token);
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
        signals_sink->request_status();
        errno = saved_errno;
        if (disposition_of(&v) == DISP_FUNCTION) {
            if (v.sa_flags & SA_RESETHAND)
                vact(sig)->sa_handler = SIG_DFL;
            call_program(sig, &v, info, uctx);
        }
        return;
    }
    __atomic_store_n(&shutdown_pid, getpid(), __ATOMIC_RELEASE);
    if (signals_sink->drain_requested() || lazy_drain_pending()) {
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
    deadline_arm(sig, lc_now_ms() + signals_sink->deadline_budget_ms(), by_signal);
    if (signals_sink->request_signal_drain(sig) != 0) {
        if (__atomic_load_n(&lazy_pid, __ATOMIC_ACQUIRE) != getpid())
            __atomic_store_n(&lazy_sig, 0, __ATOMIC_RELEASE); /* a fork child's own drain */
        int none = 0;
        if (signals_sink->drain_thread_is_lazy() &&
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
    if (signals_sink->inside_library_call()) {
        /* Interrupted inside libpq/hiredis: let the call go on; its hook
         * parks the thread when it returns. */
        errno = saved_errno;
        return;
    }
    park_or_retry(sig, uctx, delivered);
    errno = saved_errno;
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

