/* The drain: gate, grace, cancel, close. Runs only on the drain thread, never
 * in signal context. See shim/DESIGN.md for the phases. */
#ifndef LC_DRAIN_H
#define LC_DRAIN_H

#include <stdint.h>

#include "track/kind.h"
#include "core/registry.h"

struct lc_drain_result {
    unsigned long closed[LC_KIND_MAX];
    unsigned long cancelled;     /* queries cancelled (cancel requests sent) */
    unsigned long cut;           /* shut down while in use, or unfinished at the deadline */
    int64_t elapsed_ms;
};

/* The program frees a connection it owns after shutdown began (a managed
 * signal arrived, or the exit drain runs): close it as the drain would
 * (cancel a running query, end a COPY IN, flush buffered output, wait until
 * the server has read it), bounded by UNTIL_MS. KEEP_FD: the program keeps
 * the socket (redisFreeKeepFd): flush only. Runs on the program's thread
 * before the real free. */
/* Returns 1 when a cancel request for it was abandoned at UNTIL_MS: its
 * PGcancel is still in use and must not be freed. */
int drain_close_by_program(struct lc_entry *info, int keep_fd, int64_t until_ms);

/* MODE is LC_GATE_EXIT or LC_GATE_SIGNAL; START_MS (monotonic) is when the
 * signal arrived or exit() was called: the deadline counts from there. */
void drain_run(int mode, int64_t start_ms, struct lc_drain_result *result);

/* HANDLE (NULL: none) is a call the thread running exit() was inside: it
 * never returns to it (exit() from a signal handler or a callback that
 * interrupted PQexec). The next drain in this process does not wait for it:
 * a running query is cancelled at once. Async-signal-safe. */
void drain_abandon(void *handle);

/* A connect that was under way when the gate closed has just returned HANDLE
 * (tracked by now): close it the way the drain would, at once. */
void drain_close_late(void *handle);

#endif
