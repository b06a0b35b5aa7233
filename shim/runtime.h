/* Process-wide state: configuration, the run-once init, the per-process drain
 * thread, the atexit drain and the fork handlers. */
#ifndef LC_RUNTIME_H
#define LC_RUNTIME_H

#include <stdint.h>

#include "config.h"

extern struct lc_config lc_cfg;
extern int lc_initialized;
/* Nesting depth of connect/free hooks on this thread: libpq and hiredis call
 * their own exports (PQconnectdb -> PQconnectStart), which must count once.
 * Thread-local: a global counter would miss connections opened by threads. */
extern __thread int lc_depth __attribute__((tls_model("initial-exec")));

void runtime_init(void);

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

/* Is a drain under way in this process? (async-signal-safe) */
int runtime_drain_requested(void);
/* From a signal handler: wake the drain thread. Returns 0, or -1 when this
 * process has no drain thread (then the caller acts as without lastcall). */
int runtime_request_signal_drain(int sig);

#endif
