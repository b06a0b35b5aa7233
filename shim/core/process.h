/* The process's state that every layer reads: the configuration, whether
 * lastcall is initialised, the hooks' nesting depth, and fork facts. */
#ifndef LC_PROCESS_H
#define LC_PROCESS_H

#include "core/config.h"
#include "core/upcalls.h"

extern struct lc_config lc_cfg;
extern int lc_initialized;
/* Nesting depth of connect/free hooks on this thread: libpq and hiredis call
 * their own exports (PQconnectdb -> PQconnectStart), which must count once.
 * Thread-local: a global counter would miss connections opened by threads. */
extern __thread int lc_depth __attribute__((tls_model("initial-exec")));

/* Set on the forking thread from our fork prepare handler to the parent's or
 * child's: meanwhile it holds our locks, the allocator's and the loader's, and
 * must not be parked. */
extern __thread int lc_forking __attribute__((tls_model("initial-exec")));

static inline int lc_active(void)
{
    if (__builtin_expect(!__atomic_load_n(&lc_initialized, __ATOMIC_ACQUIRE), 0))
        lc_up.init();
    return !lc_cfg.disabled;
}

/* Reads the LASTCALL_* environment into lc_cfg and sets up logging. */
void process_load_config(void);

/* Has this process forked since lastcall loaded? A child may then hold a
 * copy of any socket (hiredis's are not close-on-exec), so the kernel's close
 * at our exit would not end the connection. Async-signal-safe. */
int process_has_forked(void);
void process_set_forked(void);

#endif
