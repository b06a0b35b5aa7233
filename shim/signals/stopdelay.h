/* LASTCALL_STOP_DELAY: a managed signal is held back for a while (load
 * balancers still send traffic right after SIGTERM), then goes on as usual.
 * The timing: one POSIX timer per managed signal, created only when the delay
 * is configured, that delivers the same signal marked as ours. The state
 * machine lives in signals.c's handler. */
#ifndef LC_STOPDELAY_H
#define LC_STOPDELAY_H

#include <signal.h>
#include <stdint.h>

/* Creates the timers (no thread: SIGEV_SIGNAL). Not from a signal handler.
 * Returns 0 when every signal of SET has its timer. */
int stopdelay_init(int64_t delay_ms, const sigset_t *set);
/* Timers do not survive fork: the child makes its own. */
void stopdelay_atfork_child(void);

/* Is INFO our timer's expiry? Async-signal-safe. */
int stopdelay_is_timer(const siginfo_t *info);
/* Starts SIG's timer; -1 when it cannot (no timer in this process).
 * Async-signal-safe. */
int stopdelay_arm(int sig);
/* Stops SIG's timer; an expiry already queued is still delivered (and
 * recognised by stopdelay_is_timer). Async-signal-safe. */
void stopdelay_disarm(int sig);

/* BEGIN: held; OVER: the delay ran out, the signal goes on; CUT: a second
 * signal goes on at once; DROPPED: the delay ran out while the process was
 * already exiting on its own. */
enum stopdelay_event { STOPDELAY_BEGIN, STOPDELAY_OVER, STOPDELAY_CUT, STOPDELAY_DROPPED };
/* One log line (LASTCALL_LOG=info), formatted without stdio: called from the
 * signal handler. ELAPSED_MS: since the delay began (OVER, CUT). */
void stopdelay_log(enum stopdelay_event ev, int sig, int64_t elapsed_ms);

#endif
