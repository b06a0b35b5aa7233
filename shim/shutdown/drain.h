/* The drain: gate, grace, cancel, close. Runs only on the drain thread, never
 * in signal context. See shim/DESIGN.md for the phases. */
#ifndef LC_DRAIN_H
#define LC_DRAIN_H

#include <stdint.h>

#include "track/kind.h"
#include "core/registry.h"

enum {
    LC_FLUSH_GIVE_UP = -1,   /* the connection is broken: cut it */
    LC_FLUSH_NOTHING = 0,    /* nothing was buffered */
    LC_FLUSH_MORE = 1,       /* some is still buffered: wait for the socket */
    LC_FLUSH_WROTE = 2,      /* all written now: the server has yet to read it */
};

enum {
    LC_SETTLE_GIVE_UP = -1,  /* cannot: say goodbye as things are */
    LC_SETTLE_DONE = 0,      /* idle: nothing more will come */
    LC_SETTLE_WAIT = 1,      /* waiting for the server (input) */
};

struct lc_drain_result {
    unsigned long closed[LC_KIND_COUNT];
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
/* Set by redisFreeKeepFd's hook around the free: the program keeps the fd. */
extern __thread int lc_free_keeps_fd __attribute__((tls_model("initial-exec")));

/* A libpq/hiredis call that may block (blocking-mode libpq flushes): while it
 * runs, a watchdog thread shuts FD down at UNTIL_MS, which makes the call
 * return. Returns 0 when armed (then call bounded_end), -1 when it cannot be
 * bounded (do not make the call). bounded_end returns 1 if the watchdog fired. */
int bounded_begin(int fd, int64_t until_ms);
int bounded_end(int slot);

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
