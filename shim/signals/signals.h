/* The managed signals (LASTCALL_SIGNALS): lastcall's handler sits in the
 * kernel; the program's own dispositions live in a virtual table that
 * signal()/sigaction() read and write. */
#ifndef LC_SIGNALS_H
#define LC_SIGNALS_H

#include <signal.h>
#include <stdint.h>

/* What signal handling asks of the layers above it (the drain thread, the
 * status answer), filled in by the composition root. All async-signal-safe
 * but start_drain_thread, which runs outside signal context. */
struct signals_sink {
    /* Is a drain under way in this process? */
    int (*drain_requested)(void);
    /* Does this process start its drain thread only when a drain needs it
     * (single-threaded so far, see safepoint.h)? */
    int (*drain_thread_is_lazy)(void);
    /* Starts the drain thread if there is none; 0 when it runs. */
    int (*start_drain_thread)(void);
    /* Asks the drain thread for a drain of SIG whose deadline counts from
     * START_MS; -1 without a drain thread. */
    int (*post_signal_drain)(int sig, int64_t start_ms);
    /* The same, counted from now. */
    int (*request_signal_drain)(int sig);
    /* LASTCALL_STATUS_SIGNAL: a status snapshot in the log. */
    void (*request_status)(void);
    /* `lastcall status`: the drain thread answers TOKEN; -1 without one. */
    int (*request_remote_status)(uint64_t token);
    /* Is this delivery of SIG a `lastcall status` request? */
    int (*is_status_request)(int sig, const siginfo_t *info);
    /* The short answer to TOKEN, from signal context. */
    void (*answer_status_inline)(uint64_t token);
    /* Is this thread inside a call of a library lastcall watches? */
    int (*inside_library_call)(void);
    /* From a drain's start to the kernel's end of the process (deadline.h). */
    int64_t (*deadline_budget_ms)(void);
};

/* STATUS_SIGNAL (0: none) logs a status snapshot instead of draining. */
void signals_install(const sigset_t *managed, int status_signal,
                     const struct signals_sink *sink);
/* Restore the default disposition and re-raise; as PID 1 (where the kernel
 * drops a default-action signal) exit with 128+N. Async-signal-safe. */
void signals_die(int sig) __attribute__((noreturn));

/* Adopts dispositions changed behind lastcall's back (a raw rt_sigaction
 * syscall): the program's choice wins. Called when a drain starts; not from
 * a signal handler. */
void signals_resync(void);

/* Nonzero once a managed signal (not the status signal) has been delivered
 * to this process, whether the program handles it or the default action
 * drains: from then on the process is shutting down. Async-signal-safe. */
int signals_shutdown_started(void);

/* A signal for the kernel's deadline timer (deadline.h) during an exit drain:
 * its kernel entry is (made) our handler. 0 when there is none.
 * Async-signal-safe (exit() may run in a program's handler). */
int signals_deadline_signal(void);

/* A signal drain waiting for a safe point (a process without its drain
 * thread) that the program's exit() overtook: takes it over and returns its
 * signal, with when it arrived in *START_MS; 0 when there is none. The exit
 * drain then drains for that signal, and the process dies by it, as it
 * would have at the signal without lastcall. */
int signals_claim_pending_drain(int64_t *start_ms);

#endif
