/* The library's side of `lastcall status PID` (the protocol:
 * core/status_protocol.h). */
#ifndef LC_STATUS_TARGET_H
#define LC_STATUS_TARGET_H

#include <signal.h>
#include <stdint.h>

/* Is INFO a status request? Async-signal-safe. */
int status_is_request(int sig, const siginfo_t *info);
/* The short answer (pid, program, no snapshot), from a signal handler when
 * there is no drain thread to make the snapshot. Async-signal-safe. */
void status_answer_inline(uint64_t token);
/* On the drain thread: takes the snapshot and answers. */
void status_answer(uint64_t token);

#endif
