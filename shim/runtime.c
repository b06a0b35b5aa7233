#define _GNU_SOURCE
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <time.h>
#include "glibc_compat.h" /* was <sys/single_threaded.h>: glibc 2.32+ only */
#include <unistd.h>

#include "deadline.h"
#include "helper_thread.h"
#include "../include/lastcall.h"
#include "drain.h"
#include "inflight.h"
#include "lc.h"
#include "log.h"
#include "registry.h"
#include "report.h"
#include "safepoint.h"
#include "signals.h"
#include "status.h"

struct lc_config lc_cfg;
int lc_initialized;
__thread int lc_depth __attribute__((tls_model("initial-exec")));

/* 0: not started, 1: running, 2: done. Not pthread_once: it issues a futex
 * wake even uncontended, a syscall in every process that loads us. */
static int init_state;

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
static pid_t exit_drained_pid;
static int has_forked;             /* a child may hold our sockets too */

enum { REQ_EXIT = 0, REQ_STATUS = -1, REQ_REMOTE_STATUS = -2 }; /* > 0: a signal drain for that signal */

/* No padding: the whole struct goes through a pipe (valgrind would flag
 * uninitialised padding bytes; found by the memcheck test). */
struct drain_request {
    int64_t sig;
    int64_t start_ms;
};

/* The LASTCALL_* entries of the environment, found in one pass: a getenv
 * per setting scanned the whole environment once each, in every process
 * that loads us (a shell, /bin/true). */
#define ENV_MAX 32
static const char *env_entries[ENV_MAX];
static int env_count;

static void collect_environment(void)
{
    /* A setuid/setgid program ignores the environment's settings, as
     * secure_getenv would. */
    if (getauxval(AT_SECURE))
        return;
    /* "LASTCALL_" as immediates, not a string literal: a process without
     * any LASTCALL_ variable then reads none of our read-only data, whose
     * first touch maps all of it (the kernel's 64 KiB fault-around). */
    const uint64_t lastcall = 0x4c4c41435453414cull; /* "LASTCALL", little-endian */
    for (char **e = environ; e && *e && env_count < ENV_MAX; e++) {
        uint64_t head;
        if (strnlen(*e, 9) < 9)
            continue;
        memcpy(&head, *e, sizeof head);
        if (head == lastcall && (*e)[8] == '_')
            env_entries[env_count++] = *e;
    }
}

static const char *env_lookup(const char *name)
{
    if (env_count == 0)
        return NULL;
    size_t len = strlen(name);
    for (int i = 0; i < env_count; i++)
        if (strncmp(env_entries[i], name, len) == 0 && env_entries[i][len] == '=')
            return env_entries[i] + len + 1;
    return NULL;
}

static void config_from_env(void)
{
    collect_environment();
    config_load(&lc_cfg, env_lookup, lc_log_complaint);
    lc_log_setup(&lc_cfg);
}

__thread int lc_forking __attribute__((tls_model("initial-exec")));

static void atfork_prepare(void)
{
    lc_forking = 1;
    pthread_mutex_lock(&runtime_lock);
    registry_atfork_prepare();
    inflight_atfork_prepare();
}

static void atfork_parent(void)
{
    __atomic_store_n(&has_forked, 1, __ATOMIC_RELAXED);
    inflight_atfork_parent();
    registry_atfork_parent();
    pthread_mutex_unlock(&runtime_lock);
    lc_forking = 0;
}

static void atfork_child(void)
{
    registry_atfork_child();
    inflight_atfork_child();
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
    lc_forking = 0;
}

/* Read under the registry lock (registry_set_transaction_probe). */
static int entry_in_transaction(struct lc_entry *e)
{
    const struct lc_kind *k = lc_kind_of(e->kind);
    return k->in_transaction && k->in_transaction(e);
}

/* __register_atfork, not pthread_atfork: lc.h says why. */
LC_STARTUP static void do_init(void)
{
    config_from_env();
    if (!lc_cfg.disabled) {
        __register_atfork(atfork_prepare, atfork_parent, atfork_child, __dso_handle);
        signals_install(&lc_cfg.signals, lc_cfg.status_signal);
        inflight_set_touch(lc_cfg.leak_age_ms > 0);
        inflight_register_thread(); /* the main thread; pthread_create registers the rest */
        registry_set_transaction_probe(entry_in_transaction);
    }
    __atomic_store_n(&lc_initialized, 1, __ATOMIC_RELEASE);
}

void runtime_init(void)
{
    int expected = 0;
    if (__atomic_compare_exchange_n(&init_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        do_init();
        __atomic_store_n(&init_state, 2, __ATOMIC_RELEASE);
        return;
    }
    /* Another thread is initialising (a hook called from another library's
     * constructor thread): wait for it. Our own init calls no hook, so this
     * thread cannot be the one running it. */
    while (__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) != 2)
        sched_yield();
}

/* The library's DT_FINI (meson.build links with -fini=lc_fini): crti.o's
 * _fini does nothing, but it lies past the end of our code, and calling it at
 * every process exit faulted in one more 64 KiB window of it. */
__attribute__((visibility("hidden"), used)) LC_STARTUP void lc_fini(void)
{
}

__attribute__((constructor)) static void lastcall_constructor(void)
{
    runtime_init();
}

/* "drained 12 PostgreSQL (1 query cancelled) and 3 Redis connections in 4 ms",
 * as it always read while only the always-listed kinds (kinds.h) drained;
 * once another kind did, the kinds that drained any and the cancels last:
 * "drained 2 Redis and 3 MySQL connections (1 query cancelled) in 4 ms". The
 * JSON fields: every always-listed kind, and the others that drained any. */
static void log_result(const char *why, const struct lc_drain_result *r)
{
    unsigned long total = 0;
    int others = 0;
    for (int k = 0; k < LC_KIND_COUNT; k++) {
        total += r->closed[k];
        others |= !lc_kind_of(k)->always_listed && r->closed[k] > 0;
    }
    if (lc_log_level < LC_LOG_INFO || total == 0)
        return;
    char fields[400], text[400], cancelled[64];
    snprintf(cancelled, sizeof cancelled, " (%lu quer%s cancelled)", r->cancelled,
             r->cancelled == 1 ? "y" : "ies");
    int shown[LC_KIND_COUNT], n_shown = 0;
    for (int k = 0; k < LC_KIND_COUNT; k++)
        if (others ? r->closed[k] > 0 : lc_kind_of(k)->always_listed)
            shown[n_shown++] = k;
    size_t fl = (size_t)snprintf(fields, sizeof fields, "\"reason\":\"%s\"", why);
    for (int k = 0; k < LC_KIND_COUNT && fl < sizeof fields; k++)
        if (lc_kind_of(k)->always_listed || r->closed[k] > 0)
            fl += (size_t)snprintf(fields + fl, sizeof fields - fl, ",\"%s\":%lu",
                                   lc_kind_of(k)->json, r->closed[k]);
    if (fl < sizeof fields)
        snprintf(fields + fl, sizeof fields - fl, ",\"cancelled\":%lu,\"cut\":%lu,\"ms\":%lld",
                 r->cancelled, r->cut, (long long)r->elapsed_ms);
    size_t tl = 0;
    text[0] = '\0';
    for (int i = 0; i < n_shown && tl < sizeof text; i++) {
        tl += (size_t)snprintf(text + tl, sizeof text - tl, "%s%lu %s",
                               i == 0 ? "" : i == n_shown - 1 ? " and " : ", ",
                               r->closed[shown[i]], lc_kind_of(shown[i])->name);
        if (i == 0 && !others && tl < sizeof text)
            tl += (size_t)snprintf(text + tl, sizeof text - tl, "%s", cancelled);
    }
    lc_event(LC_LOG_INFO, "drain_summary", fields, "%s: drained %s connections%s%s in %lld ms",
             why, text, others ? cancelled : "", r->cut ? " (some cut)" : "",
             (long long)r->elapsed_ms);
}

static void log_signal_result(int sig, const struct lc_drain_result *r)
{
    const char *name = config_signal_name(sig);
    char why[32];
    snprintf(why, sizeof why, "SIG%s", name ? name : "?");
    log_result(why, r);
}

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
                log_result("exit", &result);
            }
            report_write();
            char c = 'd';
            while (write(done_pipe[1], &c, 1) < 0 && errno == EINTR)
                ;
        } else {
            signals_resync();
            drain_run(LC_GATE_SIGNAL, req.start_ms, &result);
            int sig = (int)req.sig;
            log_signal_result(sig, &result);
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

static void exit_drain(int status, void *unused);

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

/* on_exit, not atexit: the kernel's deadline (deadline.h) must end the
 * process with exit()'s own status, which only on_exit hands over. */
static void register_exit_drain(void)
{
#ifdef __GLIBC__
    on_exit(exit_drain, NULL);
#else
    atexit(exit_drain_no_status);
#endif
}

int64_t lc_deadline_budget_ms(void)
{
    return lc_cfg.deadline_ms + LC_DEADLINE_MARGIN_MS +
           (lc_cfg.report_path ? LC_REPORT_ALLOWANCE_MS : 0);
}

void runtime_on_connect(int uses_ssl)
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
        register_exit_drain();
        __atomic_store_n(&runtime_pid, self, __ATOMIC_RELEASE);
    }
    if (uses_ssl && !ssl_atexit_registered) {
        /* OpenSSL registers its cleanup at the first SSL attempt; ours must run
         * first, so it goes on the atexit list again, after OpenSSL's. */
        register_exit_drain();
        __atomic_store_n(&ssl_atexit_registered, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&runtime_lock);
}

int runtime_has_forked(void)
{
    return __atomic_load_n(&has_forked, __ATOMIC_RELAXED);
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

void runtime_log_open(int kind, const void *handle, const char *target, int failed, int ssl)
{
    int level = failed ? LC_LOG_INFO : LC_LOG_DEBUG;
    if (lc_log_level < level)
        return;
    char fields[400], esc[300] = "";
    lc_json_escape(esc, sizeof esc, target);
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"handle\":\"%p\",\"target\":\"%s\"",
             lc_kind_of(kind)->json, handle, esc);
    lc_event(level, failed ? "connect_failed" : "open", fields, "%s %s %p to %s%s",
             failed ? "failed connect:" : "open", lc_kind_of(kind)->name,
             handle, target, ssl ? " (SSL)" : "");
}

void runtime_log_close(const struct lc_entry *info)
{
    if (info->suspect)
        report_no_longer_suspect(info);
    if (lc_log_level < LC_LOG_DEBUG)
        return;
    char fields[200];
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"handle\":\"%p\"",
             lc_kind_of(info->kind)->json, info->handle);
    lc_event(LC_LOG_DEBUG, "close", fields, "close %s %p",
             lc_kind_of(info->kind)->name, info->handle);
}

/* Shutdown has begun in this process: a managed signal arrived, or exit()
 * reached our exit drain. The first free after that fixes the start of the
 * deadline if no drain did. */
static pid_t exit_started_pid;
static int64_t shutdown_start_ms;

static int shutdown_begun(void)
{
    if (signals_shutdown_started() ||
        __atomic_load_n(&exit_started_pid, __ATOMIC_ACQUIRE) == registry_self_pid()) {
        int64_t zero = 0, now = lc_now_ms();
        __atomic_compare_exchange_n(&shutdown_start_ms, &zero, now, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE);
        return 1;
    }
    return 0;
}

int runtime_free_tracked(void *handle, int (*do_free)(void *), struct lc_entry *info,
                         int *tracked)
{
    lc_active();
    INFLIGHT_ENTER(handle);
    /* While the drain owns this connection we are not inside the library: say
     * so, or the drain would wait for us while we wait for it. */
    void *self = inflight_suspend();
    int taken = registry_take(handle, lc_now_ms() + lc_cfg.deadline_ms + 100, info);
    inflight_resume(self);
    if (taken < 0) {
        /* A drain still owns it past its deadline (the kernel's timer ends
         * the process at any moment now): freeing it would pull the
         * connection from under the drain. It is left allocated. */
        *tracked = 0;
        INFLIGHT_LEAVE(handle);
        return 0;
    }
    *tracked = taken;
    /* Once shutdown has begun, the program's own close is made the drain's
     * close: a running query is cancelled, buffered output is written (see
     * DESIGN.md for why not outside shutdown). Bounded by the deadline,
     * counted from the signal or exit(). */
    if (*tracked && info->state == LC_ENTRY_OPEN && !info->failed &&
        info->pid == registry_self_pid() && shutdown_begun()) {
        int64_t start = __atomic_load_n(&shutdown_start_ms, __ATOMIC_ACQUIRE);
        if (start == 0)
            start = lc_now_ms();
        if (drain_close_by_program(info, lc_free_keeps_fd, start + lc_cfg.deadline_ms))
            info->cancel = NULL; /* still in use by an abandoned cancel request */
    }
    lc_depth++;
    int r = do_free(handle); /* after a drain the socket is shut down: this returns at once */
    lc_depth--;
    if (*tracked)
        runtime_log_close(info);
    INFLIGHT_LEAVE(handle);
    return r;
}

void runtime_touch(void *handle)
{
    struct lc_entry copy;
    if (handle && registry_touch(handle, &copy)) {
        report_no_longer_suspect(&copy);
        free(copy.stack);
    }
}

/* atexit: may run in signal context (a program handler calling exit(), as
 * webdis does), so it only talks to the drain thread through pipes. A
 * process without a drain thread (single-threaded, safepoint.h) drains on
 * the exiting thread, unless exit() was called from a handler that
 * interrupted libc, the loader or the allocator mid-change. */
/* The kernel ends the process at the deadline with exit()'s STATUS if our
 * drain, or what exit() runs after it, is stuck: a drain thread waiting for a
 * lock, a destructor's free() waiting for the arena lock that the malloc a
 * program's handler interrupted holds (exit() from a signal handler). The
 * timer's signal is delivered to this thread, which then keeps it unblocked
 * until the end. */
static void arm_exit_deadline(int status, int64_t start_ms)
{
    int sig = signals_deadline_signal();
    if (sig <= 0)
        return;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    struct lc_deadline_end by_status = {.sig = 0, .status = status};
    deadline_arm(sig, start_ms + lc_deadline_budget_ms(), by_status);
}

/* Sanitizer runtimes and valgrind do their own work after exit()'s handlers
 * (TSan's race summary and exit code, memcheck's leak check): there the timer
 * covers our drain only, not the rest of exit(). */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
static int under_valgrind(void)
{
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 && strstr(*e, "vgpreload_"))
            return 1;
    return 0;
}
#endif

static void exit_deadline_after_drain(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    deadline_disarm();
#else
    if (under_valgrind())
        deadline_disarm();
#endif
}

static void exit_drain(int status, void *unused)
{
    (void)unused;
    /* Before anything else: the program may have closed every connection
     * since the signal, and must still die by it. */
    int64_t pending_start;
    int pending_sig = signals_claim_pending_drain(&pending_start);
    if (pending_sig > 0) {
        /* The program should have died at that signal; exit() is a safe
         * point: drain here for it (the kernel's timer, armed when the
         * signal came, still holds), then die by it. */
        __atomic_store_n(&drain_requested, 1, __ATOMIC_RELEASE);
        sigset_t pipe_only; /* a write to a closed socket must not kill by SIGPIPE */
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
        if (registry_owned_live() > 0) {
            struct lc_drain_result result;
            drain_run(LC_GATE_SIGNAL, pending_start, &result);
            log_signal_result(pending_sig, &result);
        }
        report_write();
        signals_die(pending_sig);
    }
    if (!lc_active() || (registry_owned_live() == 0 && lc_cfg.report_path == NULL))
        return;
    pid_t self = getpid();
    if (exit_drained_pid == self)
        return;
    exit_drained_pid = self;
    if (runtime_drain_requested()) {
        /* A signal drain is under way and ends in the process's death. */
        for (;;)
            pause();
    }
    int64_t start_ms = lc_now_ms();
    arm_exit_deadline(status, start_ms);
    gate_set_exiting_thread();
    /* This thread is running exit(): a call it was inside (exit() from a
     * handler or a callback that interrupted PQexec) never returns. */
    drain_abandon(__atomic_load_n(&lc_inflight, __ATOMIC_ACQUIRE));
    for (unsigned i = 0; i < lc_outer.n && i < LC_OUTER_MAX; i++)
        drain_abandon(lc_outer.h[i]); /* the outer frames of nested calls, too */
    __atomic_store_n(&exit_started_pid, self, __ATOMIC_RELEASE);
    if (post_request_at(REQ_EXIT, start_ms) != 0) {
        if (!safepoint_exit_is_safe()) {
            LC_INFO("exit() from a signal handler that interrupted libc: %lu connection%s "
                    "left to the kernel's close", registry_owned_live(),
                    registry_owned_live() == 1 ? "" : "s");
            return;
        }
        /* A managed signal now ends the process at once, as during a drain
         * on the drain thread. */
        __atomic_store_n(&drain_requested, 1, __ATOMIC_RELEASE);
        /* The drain thread blocks every signal: here a write to a socket the
         * server closed must not raise SIGPIPE in the program either. */
        sigset_t pipe_only, saved, pending;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_only, &saved);
        int was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
        struct lc_drain_result result;
        drain_run(LC_GATE_EXIT, start_ms, &result);
        log_result("exit", &result);
        report_write();
        struct timespec none = {0, 0};
        while (!was_pending && sigtimedwait(&pipe_only, NULL, &none) == SIGPIPE)
            ;
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        exit_deadline_after_drain();
        return;
    }
    /* Symbolizing a report may take a few seconds more (addr2line). Past
     * this the kernel's timer ends the process with STATUS. */
    int64_t until = start_ms + lc_deadline_budget_ms();
    for (;;) {
        int64_t left = until - lc_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = done_pipe[0], .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r > 0) {
            /* Reading the byte orders everything the drain thread did (SSL
             * writes included) before the exit cleanups that follow us, such
             * as OpenSSL's frees; a poll alone is no such order (TSan saw it). */
            char c;
            while (read(done_pipe[0], &c, 1) < 0 && errno == EINTR)
                ;
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
    }
    exit_deadline_after_drain();
}

#ifndef __GLIBC__
/* Without on_exit the status is not known: 0, as most exits are. */
static void exit_drain_no_status(void)
{
    exit_drain(0, NULL);
}
#endif

/* ---- public API ---- */

/* Callers built against an older header pass the older, smaller size: they
 * get the fields they know (fields are only ever added at the end). */
LC_EXPORT int lastcall_get_stats(struct lastcall_stats *out, unsigned long size)
{
    if (out == NULL || size < offsetof(struct lastcall_stats, mysql_opened))
        return -1;
    struct lc_registry_counts c;
    registry_counts(&c);
    struct lastcall_stats s;
    memset(&s, 0, sizeof s);
    s.pq_opened = c.opened[LC_KIND_PQ];
    s.pq_failed = c.failed[LC_KIND_PQ];
    s.pq_closed = c.closed[LC_KIND_PQ];
    s.pq_live = c.live[LC_KIND_PQ];
    s.redis_opened = c.opened[LC_KIND_REDIS];
    s.redis_failed = c.failed[LC_KIND_REDIS];
    s.redis_closed = c.closed[LC_KIND_REDIS];
    s.redis_live = c.live[LC_KIND_REDIS];
    s.drained = c.drained;
    s.mysql_opened = c.opened[LC_KIND_MYSQL];
    s.mysql_failed = c.failed[LC_KIND_MYSQL];
    s.mysql_closed = c.closed[LC_KIND_MYSQL];
    s.mysql_live = c.live[LC_KIND_MYSQL];
    memcpy(out, &s, size < sizeof s ? size : sizeof s);
    return 0;
}

LC_EXPORT const char *lastcall_version(void)
{
    return LASTCALL_VERSION;
}
