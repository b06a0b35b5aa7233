/* Process-wide state: configuration, the run-once init, the per-process drain
 * thread, the atexit drain and the fork handlers. */
#ifndef LC_RUNTIME_H
#define LC_RUNTIME_H

#include <stdint.h>

#include "core/config.h"

extern struct lc_config lc_cfg;
extern int lc_initialized;
/* Nesting depth of connect/free hooks on this thread: libpq and hiredis call
 * their own exports (PQconnectdb -> PQconnectStart), which must count once.
 * Thread-local: a global counter would miss connections opened by threads. */
extern __thread int lc_depth __attribute__((tls_model("initial-exec")));

void runtime_init(void);

/* Set on the forking thread from our fork prepare handler to the parent's or
 * child's: meanwhile it holds our locks, the allocator's and the loader's, and
 * must not be parked. */
extern __thread int lc_forking __attribute__((tls_model("initial-exec")));

/* Writing the leak report (symbolizing stacks with addr2line, bounded per
 * module) may take this much on top of the deadline. */
#define LC_REPORT_ALLOWANCE_MS 5000
/* From a drain's start to the kernel's end of the process (deadline.h). */
int64_t lc_deadline_budget_ms(void);

static inline int lc_active(void)
{
    if (__builtin_expect(!__atomic_load_n(&lc_initialized, __ATOMIC_ACQUIRE), 0))
        runtime_init();
    return !lc_cfg.disabled;
}

/* Called after every tracked connect: makes this process's drain thread and
 * registers the atexit drain (after OpenSSL's, so it runs before it). */
void runtime_on_connect(int uses_ssl);

/* open/close/failed-connect events (LASTCALL_LOG=debug, or info for failures). */
struct lc_entry;
void runtime_log_open(int kind, const void *handle, const char *target, int failed, int ssl);
void runtime_log_close(const struct lc_entry *info);

/* From a signal handler: ask the drain thread for a status snapshot.
 * Async-signal-safe. */
void runtime_request_status(void);
/* From a signal handler: ask the drain thread to answer `lastcall status`
 * (status.h). Async-signal-safe. Returns -1 when this process has no drain
 * thread. */
int runtime_request_remote_status(uint64_t token);

/* The program frees HANDLE (PQfinish, redisFree...): waits while the drain
 * owns it, takes it out of the registry, runs DO_FREE (the real free, nested
 * calls not counted) and logs the close. Returns DO_FREE's result; *tracked
 * says whether HANDLE was tracked, *info then describes it (its cancel object
 * is the caller's to free). */
int runtime_free_tracked(void *handle, int (*do_free)(void *), struct lc_entry *info,
                         int *tracked);

/* Has this process forked since lastcall loaded? A child may then hold a
 * copy of any socket (hiredis's are not close-on-exec), so the kernel's close
 * at our exit would not end the connection. Async-signal-safe. */
int runtime_has_forked(void);

/* Does this process start its drain thread only when a drain needs it
 * (single-threaded so far, see safepoint.h)? Async-signal-safe. */
int runtime_drain_thread_is_lazy(void);
/* Starts this process's drain thread if it has none. Not from a signal
 * handler. Returns 0 when the thread runs. */
int runtime_start_drain_thread(void);
/* Asks the drain thread for a signal drain of SIG whose deadline counts from
 * START_MS. Async-signal-safe. Returns 0, or -1 without a drain thread. */
int runtime_post_signal_drain(int sig, int64_t start_ms);
/* The program is about to create a thread of its own. */
void runtime_on_program_thread(void);

/* Is a drain under way in this process? (async-signal-safe) */
int runtime_drain_requested(void);
/* From a signal handler: wake the drain thread. Returns 0, or -1 when this
 * process has no drain thread (then the caller acts as without lastcall). */
int runtime_request_signal_drain(int sig);

#endif
