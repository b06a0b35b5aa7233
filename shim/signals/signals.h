/* The managed signals (LASTCALL_SIGNALS): lastcall's handler sits in the
 * kernel; the program's own dispositions live in a virtual table that
 * signal()/sigaction() read and write. */
#ifndef LC_SIGNALS_H
#define LC_SIGNALS_H

#include <signal.h>
#include <stdint.h>

/* STATUS_SIGNAL (0: none) logs a status snapshot instead of draining. */
void signals_install(const sigset_t *managed, int status_signal);
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
