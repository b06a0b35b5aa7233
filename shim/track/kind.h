/* The kind table: everything lastcall knows about one kind of connection
 * (PostgreSQL, Redis, MySQL) is one struct lc_kind, defined in that kind's
 * own file (kinds/pq.c, redis.c, mysql.c) and listed once in runtime/kind_table.c. The drain,
 * the logs, the reports, the status snapshot and the public counters loop
 * over lc_kinds[]; none of them names a kind. Adding a kind: see shim/DESIGN.md. */
#ifndef LC_KINDS_H
#define LC_KINDS_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>

#include "core/compiler.h"
#include "core/kind_id.h"
#include "platform/symbols.h"

struct lc_entry;

/* The real functions a kind's file calls (its drain, close and cancel paths,
 * and its connect path's accessors), one cache per name for the whole file.
 * lc_reals_resolve runs at the kind's first tracked connect, outside any lock
 * of ours: a connection is in the registry, and so in a drain, only after it
 * returned. From then on lc_real only reads the cache: NULL is "the library
 * has no such function". Before that a lookup is made on demand, except once
 * a drain has begun (the gate is closed): no loader call then. */
struct lc_reals {
    struct lc_lib *lib;
    unsigned count;
    const char *const *names;
    void **cache;
    int resolved;
};
void lc_reals_resolve(struct lc_reals *t);
void *lc_real_slow(struct lc_reals *t, unsigned i);
/* SLOT is &t->cache[i], spelled by the caller's macro as its file's own
 * array: one load on the hot path (the variadic hooks' real calls). */
static inline void *lc_real(void **slot, struct lc_reals *t, unsigned i)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    return __builtin_expect(p != 0, 1) ? p : lc_real_slow(t, i);
}
/* In a kind's file: an X-macro list of its functions gives an enum of
 * indexes, the names (LC_REALS_NAME) and a typed accessor, e.g.
 *   #define PQ(fn) ((__typeof__(&fn))lc_real(&pq_real_cache[pqr_##fn], &pq_reals, pqr_##fn)) */
#define LC_REALS_NAME(fn) #fn,

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

/* After the goodbye and our FIN: what tells us the server has what we sent. */
enum lc_goodbye_wait {
    LC_GOODBYE_DONE = 0,   /* nothing: the server reads the goodbye after our FIN too */
    LC_GOODBYE_READ,       /* everything we wrote read: SIOCOUTQ 0 (unix), its EOF (TCP) */
    LC_GOODBYE_EOF,        /* the server closes when it reads the goodbye: its EOF */
};

struct lc_kind {
    const char *name;        /* in text: "PostgreSQL" */
    /* The client library whose functions this kind hooks (platform/symbols.h:
     * how it is recognised, and the prefixes of its hooked functions). */
    struct lc_lib *lib;
    const char *json;        /* JSON key, status and log field value: "postgresql" */
    /* Listed in reports, status snapshots and drain summaries even when
     * unused (the first two kinds, whose output programs already parse);
     * the others appear once the process opened one. */
    int always_listed;
    /* Closed before the other kinds: each goodbye wakes a server process
     * that then spends a while exiting, overlapping our work on the rest. */
    int close_first;
    enum lc_goodbye_wait goodbye_wait;

    int (*socket_fd)(struct lc_entry *e);   /* the socket now, or -1 */
    /* The server is working for a caller that is not inside the library (a
     * query sent with the async API, a COPY TO STDOUT or a streamed result
     * nobody reads). CANCELLED: a cancel request was sent. May be NULL. */
    int (*server_busy)(struct lc_entry *e, int fd, int cancelled);
    /* Ask the server to stop the running query. May block: runs on a helper
     * thread, bounded by the deadline. NULL: cut instead (shutdown). */
    void (*cancel)(struct lc_entry *e);
    /* Write what the program buffered and end what must be ended before the
     * goodbye (a COPY IN): LC_FLUSH_*. Never blocks past UNTIL_MS. */
    int (*flush)(struct lc_entry *e, int fd, int64_t until_ms);
    /* Brings the session back to idle before the goodbye, so that a pooler
     * in between (PgBouncer) sees a clean end and the server has nothing
     * left to send. SCRATCH is per-connection state, 0 at first.
     * LC_SETTLE_*. Never blocks past UNTIL_MS. May be NULL. */
    int (*settle)(struct lc_entry *e, int fd, int *scratch, int64_t until_ms);
    /* Say goodbye in the protocol (Terminate, COM_QUIT). May be NULL. */
    void (*terminate)(struct lc_entry *e, int fd);
    /* The server may still send (a query's results, a cancelled query's
     * error): closing then would make it log a broken pipe. May be NULL. */
    int (*server_may_send)(struct lc_entry *e);
    /* Nothing to say: in a signal drain, the kernel's close when the
     * process dies a moment later ends this connection as cleanly as our
     * goodbye would (the session is idle, nothing is buffered or on its
     * way, and the server logs nothing for a plain close), so the drain
     * skips it: every goodbye wakes a server process whose exit competes
     * with ours. drain.c has already checked that no other process holds
     * the socket, and reads what is unread when the drain ends (one poll
     * for all). No thread is inside the connection. May be NULL: always
     * the goodbye. */
    int (*nothing_to_say)(struct lc_entry *e, int fd);
    /* Idle inside a transaction (status snapshots; called under the
     * registry lock). May be NULL. */
    int (*in_transaction)(struct lc_entry *e);
    /* The per-connection object the connect path stored in the entry's
     * `cancel` (PGcancel, MySQL's credentials) is no longer needed. May be NULL. */
    void (*free_cancel)(void *cancel);
};

/* The drain writes only to non-blocking sockets: a full one means "later". */
static inline void lc_set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* The kind table (runtime/kind_table.c): a kind's number is its line. */
extern const struct lc_kind *const lc_kinds[];
extern const int lc_kind_count;

/* KIND's number in the table, for its own file's connect path; -1 when
 * the table does not list it (then nothing of it is tracked). */
int lc_kind_id(const struct lc_kind *kind);

static inline const struct lc_kind *lc_kind_of(int kind)
{
    return lc_kinds[kind >= 0 && kind < lc_kind_count ? kind : 0];
}

/* Is KIND listed in this output (always, or the process opened one)? */
int lc_kind_listed(int kind);

/* The connect path, shared by every kind: registers HANDLE (a stack when
 * LASTCALL_STACKS), logs it, starts the drain machinery and checks the leak
 * threshold. CANCEL goes to the entry (freed through the kind if the entry
 * cannot be made). Returns 0, or -1 when untracked. */
int lc_track_connect(int kind, void *handle, int is_async, int failed, int fd,
                     const char *target, void *cancel, int ssl);

/* A handle made before its connect (mysql_init): tracked as never connected
 * (the report's "failed connect ... never freed" if it is never connected
 * and never freed), without the log line of a failed connect. */
int lc_track_unconnected(int kind, void *handle, const char *target, void *cancel);
/* Its connect returned: FAILED or connected now (registry_set_connected
 * already updated the entry); logs and checks as lc_track_connect does. */
void lc_track_connected(int kind, void *handle, const char *target, int failed, int ssl);

/* A connect hook: NAME returns RET (a handle) made by REAL_EXPR; REFUSE is
 * the answer while a drain runs; TRACK registers the handle `h`. Connect calls
 * put LC_CONNECTING in the thread's slot (see inflight.h); a connect that
 * returns after the gate closed is closed at once. */
#define LC_CONNECT_HOOK(lookup, ret, name, params, args, refuse, track)                       \
    LC_EXPORT ret name params                                                                  \
    {                                                                                          \
        ret(*real) params = lookup(name);                                                      \
        if (LC_UNLIKELY(real == NULL)) {                                                       \
            errno = ENOSYS;                                                                    \
            return NULL;                                                                       \
        }                                                                                      \
        if (lc_depth > 0 || !lc_active())                                                      \
            return real args;                                                                  \
        if (LC_UNLIKELY(__atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE)))                   \
            return refuse;                                                                     \
        INFLIGHT_ENTER(LC_CONNECTING);                                                         \
        lc_depth++;                                                                            \
        ret h = real args;                                                                     \
        lc_depth--;                                                                            \
        track;                                                                                 \
        if (LC_UNLIKELY(__atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE)))                   \
            lc_up.close_late(h);                                                               \
        INFLIGHT_LEAVE(LC_CONNECTING);                                                         \
        return h;                                                                              \
    }

#endif
