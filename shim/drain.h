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
    /* A query runs on the server with no thread waiting for it (async API). */
    int (*server_busy)(struct lc_entry *e, int fd);
    /* Ask the server to stop the running query. May block: runs on a helper
     * thread, bounded by the deadline. NULL: cut instead (shutdown). */
    void (*cancel)(struct lc_entry *e);
    /* Write what the program buffered: LC_FLUSH_* below. */
    int (*flush)(struct lc_entry *e, int fd);
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

extern const struct lc_kind_ops lc_pq_ops;
extern const struct lc_kind_ops lc_redis_ops;

struct lc_drain_result {
    unsigned long closed[2];     /* per kind */
    unsigned long cancelled;     /* PostgreSQL queries cancelled */
    unsigned long cut;           /* connections shut down while in use */
    int64_t elapsed_ms;
};

/* MODE is LC_GATE_EXIT or LC_GATE_SIGNAL; START_MS (monotonic) is when the
 * signal arrived or exit() was called: the deadline counts from there. */
void drain_run(int mode, int64_t start_ms, struct lc_drain_result *result);

/* A connect that was under way when the gate closed has just returned HANDLE
 * (tracked by now): close it the way the drain would, at once. */
void drain_close_late(void *handle);

#endif
