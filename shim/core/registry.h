/* The registry of live handles: one entry per PGconn / redisContext /
 * redisAsyncContext the program holds. Hook-free, so unit tests link it alone.
 * Locking: one mutex around the hash; see shim/DESIGN.md. */
#ifndef LC_REGISTRY_H
#define LC_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/kind_id.h"

struct lc_stack;

enum lc_entry_state {
    LC_ENTRY_OPEN = 0,    /* the program's */
    LC_ENTRY_DRAINING,    /* the drain owns the connection until the drain ends */
    LC_ENTRY_DRAINED,     /* closed by lastcall; the program may still free it */
};

#define LC_TARGET_MAX 160

struct lc_entry {
    void *handle;             /* key */
    int kind;                 /* enum lc_kind_id */
    int is_async;             /* redisAsyncContext */
    int failed;               /* the connect failed; the program must still free it */
    int state;                /* enum lc_entry_state */
    pid_t pid;                /* owner: the process that opened it */
    int fd;                   /* socket, as last seen on the connect/reset path */
    int64_t opened_at_ms;     /* CLOCK_REALTIME */
    unsigned long thread;     /* opener's thread id */
    void *cancel;             /* PGcancel*, prepared on the connect path */
    struct lc_stack *stack;   /* opening call stack, or NULL (stacks off) */
    int64_t last_used_ms;     /* monotonic; kept only when LASTCALL_LEAK_AGE is set */
    int suspect;              /* reported as idle too long */
    int in_transaction;       /* in snapshots only: read under the registry lock */
    char target[LC_TARGET_MAX];
};

struct lc_registry_counts {
    unsigned long opened[LC_KIND_MAX];
    unsigned long failed[LC_KIND_MAX];
    unsigned long closed[LC_KIND_MAX];
    unsigned long live[LC_KIND_MAX];     /* owned by this process */
    unsigned long drained;
};

/* Tracks HANDLE. A stale entry for the same address (freed behind our back) is
 * replaced. Returns the entry, or NULL when out of memory (then untracked). */
struct lc_entry *registry_add(void *handle, int kind, int is_async, int failed, int fd,
                              const char *target, void *cancel, struct lc_stack *stack);

/* Connect-path updates (PQreset, redisReconnect, PQconnectPoll finishing).
 * Returns the old cancel object for the caller to free, through *old_cancel. */
void registry_update(void *handle, int failed, int fd, void *cancel, void **old_cancel);

/* A handle tracked before its connect (registry_add with FAILED set:
 * mysql_init) has been connected, or not (FAILED): the failed count follows,
 * FD, TARGET and CANCEL are replaced. Returns 0 when HANDLE is not tracked
 * (or is being drained). */
int registry_set_connected(void *handle, int failed, int fd, const char *target, void *cancel);

/* The program is about to free HANDLE: its entry leaves the registry (the
 * drain will not see it again). Waits first, bounded by wait_until_ms
 * (monotonic), while a drain owns it. Returns 1 if it was tracked; *info (if
 * given) then gets a copy of the entry without its stack, whose cancel object
 * the caller frees. Returns 0 if it was not tracked, and -1 if a drain still
 * owns it at WAIT_UNTIL_MS: the entry stays, and the caller must not free the
 * handle (the drain may still be using it). */
int registry_take(void *handle, int64_t wait_until_ms, struct lc_entry *info);

/* This process's pid, cached (refreshed in a fork child). */
pid_t registry_self_pid(void);

/* Live entries owned by this process, without locking: for signal handlers. */
unsigned long registry_owned_live(void);

/* For the drain: marks every OPEN entry owned by PID as DRAINING and fills
 * out[] (up to max). Entries stay valid until registry_release_drained(). */
size_t registry_claim_for_drain(pid_t pid, struct lc_entry **out, size_t max);
/* Claims one OPEN entry owned by this process (see drain_close_late). */
struct lc_entry *registry_claim_one(void *handle);
/* Marks claimed entries DRAINED and wakes free calls waiting on them. */
void registry_release_drained(struct lc_entry **entries, size_t n);
/* Number of entries owned by PID (any state). */
size_t registry_count_owned(pid_t pid);

void registry_counts(struct lc_registry_counts *out);

/* Copies of the entries owned by PID (stacks copied too: free each copy's
 * stack, then the array, with registry_free_snapshot). Returns the count. */
size_t registry_snapshot(pid_t pid, int kind, struct lc_entry **out);
/* Fills each snapshot copy's in_transaction while the registry lock is held:
 * a program's PQfinish takes the entry out (under the same lock) before it
 * frees the connection, so the handle cannot be freed while PROBE reads it. */
void registry_set_transaction_probe(int (*probe)(struct lc_entry *e));
void registry_free_snapshot(struct lc_entry *copies, size_t n);

/* The program used HANDLE (LASTCALL_LEAK_AGE). Returns 1 when it had been
 * reported as suspect and no longer is; *copy then describes it. */
int registry_touch(void *handle, struct lc_entry *copy);
/* Marks entries idle for age_ms or more as suspect; returns copies of the
 * newly suspect ones (free with registry_free_snapshot). */
size_t registry_find_idle(pid_t pid, int64_t now_ms, int64_t age_ms, struct lc_entry **out);

/* fork handlers: the child keeps the entries (they belong to the parent) but
 * owns none of them, and inherits an unlocked mutex. */
void registry_atfork_prepare(void);
void registry_atfork_parent(void);
void registry_atfork_child(void);

/* Frees everything; for unit tests only. */
void registry_reset_for_tests(void);

#endif
