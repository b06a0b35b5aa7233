/* The per-process drain thread: started at the first connect (or when a
 * drain first needs it, see safepoint.h), woken through a pipe by a signal
 * handler, exit() or a status request. */
#define _GNU_SOURCE
#include "runtime/drain_thread.h"
#include "core/libc_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include "platform/glibc_compat.h" /* __libc_single_threaded from 2.32, a fallback below */
#else
static inline int lc_libc_single_threaded(void)
{
    return __libc_single_threaded; /* core/libc_compat.h */
}
#endif
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/process.h"
#include "core/registry.h"
#include "observe/report.h"
#include "observe/status_target.h"
#include "platform/safepoint.h"
#include "shutdown/drain.h"
#include "runtime/drain_summary.h"
#include "signals/signals.h"
#include "track/threads.h"
#include "track/inflight.h"

/* Per-process drain machinery; rebuilt lazily in a fork child. */
static pthread_mutex_t runtime_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t runtime_pid;          /* process that owns the thread below */
static int wake_pipe[2] = {-1, -1};
static int done_pipe[2] = {-1, -1};
static int drain_thread_ok;
/* No drain thread until a drain needs it (safepoint.h): the process had no
 * thread of its own at its first connect. */
static int drain_thread_lazy;
static int ssl_atexit_registered;  /* pid-independent: atexit lists survive fork */
static int drain_requested;        /* set by whoever asks for a drain */

enum { REQ_EXIT = 0, REQ_STATUS = -1, REQ_REMOTE_STATUS = -2 }; /* > 0: a signal drain for that signal */

/* No padding: the whole struct goes through a pipe (valgrind would flag
 * uninitialised padding bytes; found by the memcheck test). */
struct drain_request {
    int64_t sig;
    int64_t start_ms;
};

static void *drain_thread_main(void *arg)
{
    (void)arg;
    int fd = wake_pipe[0];
    /* With LASTCALL_LEAK_AGE the thread also wakes to look for idle handles. */
    int tick_ms = -1;
    if (lc_cfg.leak_age_ms > 0) {
        int64_t t = lc_cfg.leak_age_ms / 4;
        tick_ms = (int)(t < 20 ? 20 : t > 1000 ? 1000 : t);
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, tick_ms);
        if (r == 0) {
            report_check_idle();
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        struct drain_request req;
        ssize_t got = read(fd, &req, sizeof req);
        if (got < 0 && errno == EINTR)
            continue;
        if (got != (ssize_t)sizeof req)
            return NULL;
        struct lc_drain_result result;
        if (req.sig == REQ_STATUS) {
            report_status();
        } else if (req.sig == REQ_REMOTE_STATUS) {
            status_answer((uint64_t)req.start_ms); /* lastcall status PID: the asker's token */
        } else if (req.sig == REQ_EXIT) {
            signals_resync();
            if (registry_owned_live() > 0) {
                drain_run(LC_GATE_EXIT, req.start_ms, &result);
                summary_log("exit", &result);
            }
            report_write();
            char c = 'd';
            while (write(done_pipe[1], &c, 1) < 0 && errno == EINTR)
                ;
        } else {
            signals_resync();
            drain_run(LC_GATE_SIGNAL, req.start_ms, &result);
            int sig = (int)req.sig;
            summary_log_signal(sig, &result);
            report_write();
            signals_die(sig);
        }
    }
}

/* Called with runtime_lock held. */
static void start_drain_thread(void)
{
    if (pipe2(wake_pipe, O_CLOEXEC) != 0)
        return;
    if (pipe2(done_pipe, O_CLOEXEC) != 0) {
        close(wake_pipe[0]);
        close(wake_pipe[1]);
        wake_pipe[0] = wake_pipe[1] = -1;
        return;
    }
    int r = lc_helper_thread(drain_thread_main, NULL, 256 * 1024);
    __atomic_store_n(&drain_thread_ok, r == 0, __ATOMIC_RELEASE);
    if (r != 0)
        errno = r;
    if (!drain_thread_ok)
        LC_WARN("cannot start the drain thread: %s; draining inline at exit only",
                strerror(errno));
}

/* Whether the drain thread can wait until a drain needs it. A thread makes
 * glibc's malloc take locks and atomics on every call from then on (+132
 * instructions per pipelined Redis command, issue 13), so a process with no
 * thread of its own gets none before shutdown. The periodic leak-age check
 * and LASTCALL_STATUS_SIGNAL's snapshots need it at once. Under TSan signal
 * handlers run deferred, on a copy of the context, which cannot be diverted. */
static int thread_can_wait(void)
{
#ifdef __SANITIZE_THREAD__
    return 0;
#else
    return lc_libc_single_threaded() && lc_cfg.leak_age_ms <= 0 &&
           lc_cfg.status_signal <= 0;
#endif
}

int runtime_drain_thread_is_lazy(void)
{
    return __atomic_load_n(&drain_thread_lazy, __ATOMIC_ACQUIRE) &&
           !__atomic_load_n(&drain_thread_ok, __ATOMIC_ACQUIRE) &&
           __atomic_load_n(&runtime_pid, __ATOMIC_ACQUIRE) == getpid();
}

int runtime_start_drain_thread(void)
{
    pthread_mutex_lock(&runtime_lock);
    if (!drain_thread_ok && runtime_pid == registry_self_pid())
        start_drain_thread();
    int ok = drain_thread_ok;
    pthread_mutex_unlock(&runtime_lock);
    return ok ? 0 : -1;
}

void runtime_on_program_thread(void)
{
    /* From here on the process is multi-threaded anyway: the drain thread
     * costs nothing more, and a drain then starts as it always did. */
    if (runtime_drain_thread_is_lazy())
        runtime_start_drain_thread();
}

void drain_thread_on_connect(int uses_ssl, void (*register_exit)(void))
{
    pid_t self = registry_self_pid();
    if (__atomic_load_n(&runtime_pid, __ATOMIC_ACQUIRE) == self &&
        (!uses_ssl || __atomic_load_n(&ssl_atexit_registered, __ATOMIC_ACQUIRE)))
        return;
    /* safepoint_prepare walks the loaded objects (dl_iterate_phdr, ld.so's
     * lock): never under a lock of ours. It is idempotent. */
    int lazy_ok = __atomic_load_n(&runtime_pid, __ATOMIC_ACQUIRE) != self &&
                  safepoint_prepare() && thread_can_wait();
    pthread_mutex_lock(&runtime_lock);
    if (runtime_pid != self) {
        inflight_prepare_barrier();
        if (lazy_ok && thread_can_wait()) {
            __atomic_store_n(&drain_thread_lazy, 1, __ATOMIC_RELEASE);
        } else {
            start_drain_thread();
        }
        /* Registered after the first connect, so it runs before _dl_fini and
         * before any exit cleanup registered by the libraries we watch. */
        register_exit();
        __atomic_store_n(&runtime_pid, self, __ATOMIC_RELEASE);
    }
    if (uses_ssl && !ssl_atexit_registered) {
        /* OpenSSL registers its cleanup at the first SSL attempt; ours must run
         * first, so it goes on the atexit list again, after OpenSSL's. */
        register_exit();
        __atomic_store_n(&ssl_atexit_registered, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&runtime_lock);
}

int runtime_drain_requested(void)
{
    return __atomic_load_n(&drain_requested, __ATOMIC_ACQUIRE) &&
           __atomic_load_n(&runtime_pid, __ATOMIC_ACQUIRE) == getpid();
}

/* Wakes this process's drain thread. Async-signal-safe: atomics,
 * clock_gettime, getpid, write. Returns 0, or -1 without a drain thread. */
static int post_request_at(int sig, int64_t start_ms)
{
    if (!__atomic_load_n(&drain_thread_ok, __ATOMIC_ACQUIRE) || runtime_pid != getpid() ||
        wake_pipe[1] < 0)
        return -1;
    struct drain_request req = {.sig = sig, .start_ms = start_ms};
    if (sig >= REQ_EXIT) /* a drain, not a status request */
        __atomic_store_n(&drain_requested, 1, __ATOMIC_RELEASE);
    ssize_t w;
    do
        w = write(wake_pipe[1], &req, sizeof req);
    while (w < 0 && errno == EINTR);
    return w == (ssize_t)sizeof req ? 0 : -1;
}

static int post_request(int sig)
{
    return post_request_at(sig, lc_now_ms());
}

int runtime_request_signal_drain(int sig)
{
    return post_request(sig);
}

int runtime_post_signal_drain(int sig, int64_t start_ms)
{
    return post_request_at(sig, start_ms);
}

void runtime_request_status(void)
{
    post_request(REQ_STATUS);
}

int runtime_request_remote_status(uint64_t token)
{
    return post_request_at(REQ_REMOTE_STATUS, (int64_t)token); /* the asker's token */
}

/* The fork handlers' part (runtime.c orders the locks). */
void drain_thread_atfork_prepare(void)
{
    pthread_mutex_lock(&runtime_lock);
}

void drain_thread_atfork_parent(void)
{
    pthread_mutex_unlock(&runtime_lock);
}

void drain_thread_atfork_child(void)
{
    /* The parent's drain thread did not come along, and its pipes are the
     * parent's: writing to them would drain the parent. */
    for (int i = 0; i < 2; i++) {
        if (wake_pipe[i] >= 0)
            close(wake_pipe[i]);
        if (done_pipe[i] >= 0)
            close(done_pipe[i]);
        wake_pipe[i] = done_pipe[i] = -1;
    }
    drain_thread_ok = 0;
    drain_thread_lazy = 0;
    runtime_pid = 0;
    __atomic_store_n(&drain_requested, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&runtime_lock); /* taken by this thread in atfork_prepare */
}

void drain_thread_mark_requested(void)
{
    __atomic_store_n(&drain_requested, 1, __ATOMIC_RELEASE);
}

int drain_thread_post_exit(int64_t start_ms)
{
    return post_request_at(REQ_EXIT, start_ms);
}

int drain_thread_done_fd(void)
{
    return done_pipe[0];
}
