/* The lazy diversion: a process without its drain thread (safepoint.h)
 * takes a managed signal; the handler diverts the interrupted thread to a
 * safe point where the thread can be created, or tries again shortly. */
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

/* The layers above, as the composition root gave them (signals_install). */
const struct signals_sink *signals_sink;

int lazy_sig;
int64_t lazy_start_ms;
int lazy_inflight;       /* the diverted thread was inside a library call */
pid_t lazy_pid;          /* a fork child starts afresh */

uint64_t lazy_token;     /* a `lastcall status` request waiting for the thread */
int64_t lazy_token_ms;

int lazy_drain_pending(void)
{
    return __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE) != 0 &&
           __atomic_load_n(&lazy_pid, __ATOMIC_ACQUIRE) == getpid();
}
#define LAZY_RETRY_US 50
/* How long a thread interrupted inside libc is given to leave it before it
 * is parked where it is. */
#define PARK_TRY_MS 20

/* A status request that will not get its snapshot: the short answer, from
 * here (async-signal-safe). */
void lazy_status_answer_short(void)
{
    uint64_t token = __atomic_exchange_n(&lazy_token, 0, __ATOMIC_ACQ_REL);
    if (token)
        signals_sink->answer_status_inline(token);
}

/* Runs on the interrupted thread once the handler has returned, outside
 * signal context, every signal blocked: the thread can be created here. Then
 * the work that waited for it: a `lastcall status` answer, a drain. */
void lazy_landing(void)
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
    int ok = signals_sink->start_drain_thread() == 0;
    uint64_t token = __atomic_exchange_n(&lazy_token, 0, __ATOMIC_ACQ_REL);
    if (token && (!ok || signals_sink->request_remote_status(token) != 0))
        signals_sink->answer_status_inline(token);
    if (lazy_drain_pending()) {
        int sig = __atomic_load_n(&lazy_sig, __ATOMIC_ACQUIRE);
        if (!ok || signals_sink->post_signal_drain(sig, lazy_start_ms) != 0)
            signals_die(sig); /* as without lastcall */
        if (!lazy_inflight)
            park_until_death();
    }
    /* Back to the interrupted code: a status request changes nothing for it;
     * a call under way goes on, and its hook parks the thread when it returns. */
}

/* Work waits for a safe point (a drain: LAZY_SIG set; a status request:
 * LAZY_TOKEN): divert this thread there, or try again shortly. A drain that
 * found none by the deadline gives up: the process dies as it would have
 * without lastcall. A status request gets the short answer after 2 s. */
void lazy_try(int sig, void *uctx, const siginfo_t *delivered)
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
    /* Inside fork() the thread holds our locks (runtime_lock: the landing's
     * drain-thread start waits on it for good) and, multi-threaded, the
     * allocator's. Its program counter cannot tell: since glibc 2.41 _Fork
     * blocks every signal around clone and the signal arrives just after
     * the unblocking rt_sigprocmask, a quick call that is safe anywhere
     * else. lc_forking covers our prepare handler to our parent handler. */
    if (!lc_forking && safepoint_is_safe(uctx, delivered)) {
        int inflight = signals_sink->inside_library_call();
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

void park_or_retry(int sig, const void *uctx, const siginfo_t *info)
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

