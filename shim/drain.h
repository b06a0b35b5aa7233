/* The drain: gate, grace, cancel, close. Runs only on the drain thread, never
 * in signal context. See shim/DESIGN.md for the phases. */
#ifndef LC_DRAIN_H
#define LC_DRAIN_H

#include <stdint.h>

#include "registry.h"

/* What each kind of connection does at each phase. */
struct lc_kind_ops {
    const char *name;                       /* "PostgreSQL", "Redis" */
    int (*socket_fd)(struct lc_entry *e);   /* the socket now, or -1 */
    /* The server is working for a caller that is not inside the library (a
     * query sent with the async API, a COPY TO STDOUT nobody reads).
     * CANCELLED: a cancel request was sent; a COPY OUT then ends by itself. */
    int (*server_busy)(struct lc_entry *e, int fd, int cancelled);
    /* Ask the server to stop the running query. May block: runs on a helper
     * thread, bounded by the deadline. NULL: cut instead (shutdown). */
    void (*cancel)(struct lc_entry *e);
    /* Write what the program buffered and end what must be ended before the
     * goodbye (a COPY IN): LC_FLUSH_* below. Never blocks past UNTIL_MS. */
    int (*flush)(struct lc_entry *e, int fd, int64_t until_ms);
    /* Brings the session back to idle before the goodbye, so that a pooler
     * in between (PgBouncer) sees a clean end and the server has nothing
     * left to send: reads what a cancelled query, COPY or pipeline still
     * sends, rolls back an open transaction. Never blocks past the deadline.
     * SCRATCH is per-connection state, 0 at first. LC_SETTLE_*. May be NULL. */
    int (*settle)(struct lc_entry *e, int fd, int *scratch, int64_t until_ms);
    /* Say goodbye in the protocol (PostgreSQL Terminate). May be NULL. */
    void (*terminate)(struct lc_entry *e, int fd);
    /* The server may still send (a query's results, a cancelled query's
     * error): closing then would make it log a broken pipe. May be NULL. */
    int (*server_may_send)(struct lc_entry *e);
    /* Idle inside a transaction (for status snapshots). May be NULL. */
    int (*in_transaction)(struct lc_entry *e);
};

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

extern const struct lc_kind_ops lc_pq_ops;
extern const struct lc_kind_ops lc_redis_ops;

struct lc_drain_result {
    unsigned long closed[2];     /* per kind */
    unsigned long cancelled;     /* PostgreSQL queries cancelled */
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

/* A connect that was under way when the gate closed has just returned HANDLE
 * (tracked by now): close it the way the drain would, at once. */
void drain_close_late(void *handle);

#endif
