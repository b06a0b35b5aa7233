/* The exit drain: exit() (on_exit) drains what the program left open,
 * through the drain thread or on the exiting thread, within the deadline. */
#define _GNU_SOURCE
#include "runtime/exit_drain.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/process.h"
#include "core/registry.h"
#include "observe/report.h"
#include "platform/deadline.h"
#include "platform/safepoint.h"
#include "runtime/drain_summary.h"
#include "runtime/drain_thread.h"
#include "shutdown/drain.h"
#include "signals/signals.h"
#include "track/inflight.h"

static pid_t exit_drained_pid;
static pid_t exit_started_pid;

int exit_drain_started(void)
{
    return __atomic_load_n(&exit_started_pid, __ATOMIC_ACQUIRE) == registry_self_pid();
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
    deadline_arm(sig, start_ms + deadline_budget_ms(), by_status);
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
        drain_thread_mark_requested();
        sigset_t pipe_only; /* a write to a closed socket must not kill by SIGPIPE */
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
        if (registry_owned_live() > 0) {
            struct lc_drain_result result;
            drain_run(LC_GATE_SIGNAL, pending_start, &result);
            summary_log_signal(pending_sig, &result);
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
    if (drain_thread_post_exit(start_ms) != 0) {
        if (!safepoint_exit_is_safe()) {
            LC_INFO("exit() from a signal handler that interrupted libc: %lu connection%s "
                    "left to the kernel's close", registry_owned_live(),
                    registry_owned_live() == 1 ? "" : "s");
            return;
        }
        /* A managed signal now ends the process at once, as during a drain
         * on the drain thread. */
        drain_thread_mark_requested();
        /* The drain thread blocks every signal: here a write to a socket the
         * server closed must not raise SIGPIPE in the program either. */
        sigset_t pipe_only, saved, pending;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_only, &saved);
        int was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
        struct lc_drain_result result;
        drain_run(LC_GATE_EXIT, start_ms, &result);
        summary_log("exit", &result);
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
    int64_t until = start_ms + deadline_budget_ms();
    for (;;) {
        int64_t left = until - lc_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = drain_thread_done_fd(), .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r > 0) {
            /* Reading the byte orders everything the drain thread did (SSL
             * writes included) before the exit cleanups that follow us, such
             * as OpenSSL's frees; a poll alone is no such order (TSan saw it). */
            char c;
            while (read(drain_thread_done_fd(), &c, 1) < 0 && errno == EINTR)
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

/* on_exit, not atexit: the kernel's deadline (deadline.h) must end the
 * process with exit()'s own status, which only on_exit hands over. */
void exit_drain_register(void)
{
#ifdef __GLIBC__
    on_exit(exit_drain, NULL);
#else
    atexit(exit_drain_no_status);
#endif
}
