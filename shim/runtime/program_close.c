/* The program's own close of a tracked handle (PQfinish, redisFree,
 * mysql_close): waits while the drain owns it, and once shutdown has begun
 * closes it the way the drain would. */
#include "runtime/program_close.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/registry.h"
#include "core/process.h"
#include "observe/report.h"
#include "runtime/exit_drain.h"
#include "shutdown/drain.h"
#include "signals/signals.h"
#include "track/inflight.h"
#include "track/kind.h"

void runtime_log_close(const struct lc_entry *info)
{
    if (info->suspect)
        report_no_longer_suspect(info);
    if (lc_log_level < LC_LOG_DEBUG)
        return;
    char fields[200];
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"handle\":\"%p\"",
             lc_kind_of(info->kind)->json, info->handle);
    lc_event(LC_LOG_DEBUG, "close", fields, "close %s %p",
             lc_kind_of(info->kind)->name, info->handle);
}

/* Shutdown has begun in this process: a managed signal arrived, or exit()
 * reached our exit drain. The first free after that fixes the start of the
 * deadline if no drain did. */
static int64_t shutdown_start_ms;

static int shutdown_begun(void)
{
    if (signals_shutdown_started() ||
        exit_drain_started()) {
        int64_t zero = 0, now = lc_now_ms();
        __atomic_compare_exchange_n(&shutdown_start_ms, &zero, now, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE);
        return 1;
    }
    return 0;
}

int runtime_free_tracked(void *handle, int (*do_free)(void *), struct lc_entry *info,
                         int *tracked)
{
    lc_active();
    INFLIGHT_ENTER(handle);
    /* While the drain owns this connection we are not inside the library: say
     * so, or the drain would wait for us while we wait for it. */
    void *self = inflight_suspend();
    int taken = registry_take(handle, lc_now_ms() + lc_cfg.deadline_ms + 100, info);
    inflight_resume(self);
    if (taken < 0) {
        /* A drain still owns it past its deadline (the kernel's timer ends
         * the process at any moment now): freeing it would pull the
         * connection from under the drain. It is left allocated. */
        *tracked = 0;
        INFLIGHT_LEAVE(handle);
        return 0;
    }
    *tracked = taken;
    /* Once shutdown has begun, the program's own close is made the drain's
     * close: a running query is cancelled, buffered output is written (see
     * DESIGN.md for why not outside shutdown). Bounded by the deadline,
     * counted from the signal or exit(). */
    if (*tracked && info->state == LC_ENTRY_OPEN && !info->failed &&
        info->pid == registry_self_pid() && shutdown_begun()) {
        int64_t start = __atomic_load_n(&shutdown_start_ms, __ATOMIC_ACQUIRE);
        if (start == 0)
            start = lc_now_ms();
        if (drain_close_by_program(info, lc_free_keeps_fd, start + lc_cfg.deadline_ms))
            info->cancel = NULL; /* still in use by an abandoned cancel request */
    }
    lc_depth++;
    int r = do_free(handle); /* after a drain the socket is shut down: this returns at once */
    lc_depth--;
    if (*tracked)
        runtime_log_close(info);
    INFLIGHT_LEAVE(handle);
    return r;
}

void runtime_touch(void *handle)
{
    struct lc_entry copy;
    if (handle && registry_touch(handle, &copy)) {
        report_no_longer_suspect(&copy);
        free(copy.stack);
    }
}
