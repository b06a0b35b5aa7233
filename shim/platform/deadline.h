/* The kernel keeps the deadline.
 *
 * A drain is bounded by its own clock checks, but a drain can be stuck where
 * no check runs: waiting for ld.so's load lock that a parked thread holds, for
 * a lock a program callback took, for the malloc arena lock an interrupted
 * malloc holds while exit() runs from a signal handler. So when a drain starts,
 * a POSIX timer of the kernel's is armed (raw system calls: no lock, no
 * allocation, usable from a signal handler) that delivers a signal to one
 * chosen thread at the deadline plus a margin; the signal handler recognises
 * the expiry and ends the process with the status it would have had: death by
 * the drain's signal, or exit()'s status. Nothing has to be unlocked for that
 * to happen. */
#ifndef LC_DEADLINE_H
#define LC_DEADLINE_H

#include <signal.h>
#include <stdint.h>

/* What the expiry does. */
struct lc_deadline_end {
    int sig;     /* > 0: die by this signal */
    int status;  /* otherwise: _exit(status) */
};

/* Arms the timer: at AT_MS (lc_now_ms's clock) the calling thread receives
 * DELIVER (a signal whose handler is ours and that this thread does not block
 * while the drain runs). A second arm in the same process moves the expiry
 * and keeps the first END. Async-signal-safe. Returns 0, or -1 when no timer
 * can be had (the drain then relies on its own clock checks). */
int deadline_arm(int deliver, int64_t at_ms, struct lc_deadline_end end);
/* Stops the timer (an expiry already queued is still recognised and still
 * ends the process). Async-signal-safe. */
void deadline_disarm(void);
/* Moves the expiry to AT_MS (the leak report's symbolizing, which has its own
 * bounds, comes on top of the deadline). No-op when unarmed. */
void deadline_move(int64_t at_ms);
/* Is INFO our expiry? Then *END says how the process ends. Async-signal-safe. */
int deadline_is_expiry(const siginfo_t *info, struct lc_deadline_end *end);

/* The margin past the deadline: the drain's own end (summary line, report,
 * death) fits well inside it. */
#define LC_DEADLINE_MARGIN_MS 40
/* Writing the leak report (symbolizing stacks with addr2line, bounded per
 * module) may take this much on top of the deadline. */
#define LC_REPORT_ALLOWANCE_MS 5000
/* From a drain's start to the kernel's end of the process: LASTCALL_DEADLINE,
 * the margin, and the report's allowance when there is a report. */
int64_t deadline_budget_ms(void);

#endif
