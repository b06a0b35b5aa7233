/* The composition root: the run-once init, the fork handlers, and the
 * tables through which the lower layers reach up (core/upcalls.h, the
 * signals' sink). The drain thread, the exit drain, the program's close and
 * the public API are its other files. */
#define _GNU_SOURCE
#include "runtime/runtime.h"

#include <pthread.h>
#include <sched.h>

#include "core/compiler.h"
#include "platform/libc.h"
#include "core/process.h"
#include "core/log.h"
#include "core/registry.h"
#include "observe/report.h"
#include "observe/status_target.h"
#include "platform/deadline.h"
#include "platform/symbols.h"
#include "runtime/drain_thread.h"
#include "runtime/exit_drain.h"
#include "runtime/program_close.h"
#include "shutdown/close.h"
#include "shutdown/drain.h"
#include "signals/signals.h"
#include "track/inflight.h"
#include "track/kind.h"

/* 0: not started, 1: running, 2: done. Not pthread_once: it issues a futex
 * wake even uncontended, a syscall in every process that loads us. */
static int init_state;

static void atfork_prepare(void)
{
    lc_forking = 1;
    drain_thread_atfork_prepare();
    registry_atfork_prepare();
    inflight_atfork_prepare();
}

static void atfork_parent(void)
{
    process_set_forked();
    inflight_atfork_parent();
    registry_atfork_parent();
    drain_thread_atfork_parent();
    lc_forking = 0;
}

static void atfork_child(void)
{
    registry_atfork_child();
    inflight_atfork_child();
    drain_thread_atfork_child();
    lc_forking = 0;
}

static void on_connect(int uses_ssl)
{
    drain_thread_on_connect(uses_ssl, exit_drain_register);
}

static int inside_library_call(void)
{
    return __atomic_load_n(&lc_inflight, __ATOMIC_ACQUIRE) != NULL;
}

static const struct signals_sink signals_sink = {
    .drain_requested = runtime_drain_requested,
    .drain_thread_is_lazy = runtime_drain_thread_is_lazy,
    .start_drain_thread = runtime_start_drain_thread,
    .post_signal_drain = runtime_post_signal_drain,
    .request_signal_drain = runtime_request_signal_drain,
    .request_status = runtime_request_status,
    .request_remote_status = runtime_request_remote_status,
    .is_status_request = status_is_request,
    .answer_status_inline = status_answer_inline,
    .inside_library_call = inside_library_call,
    .deadline_budget_ms = deadline_budget_ms,
};

const struct lc_upcalls lc_up = {
    .init = runtime_init,
    .on_connect = on_connect,
    .free_tracked = runtime_free_tracked,
    .close_late = drain_close_late,
    .touch = runtime_touch,
    .on_program_thread = runtime_on_program_thread,
    .opened = report_check_threshold,
    .deadline_signal = signals_deadline_signal,
};


/* Read under the registry lock (registry_set_transaction_probe). */
static int entry_in_transaction(struct lc_entry *e)
{
    const struct lc_kind *k = lc_kind_of(e->kind);
    return k->in_transaction && k->in_transaction(e);
}

/* lc_register_atfork, not pthread_atfork: platform/libc.h says why. */
LC_STARTUP static void do_init(void)
{
    /* reach answers a hooked name only once lastcall is initialised: the
     * kinds' libraries are known by then. */
    struct lc_lib *libs[LC_KIND_MAX];
    for (int k = 0; k < lc_kind_count; k++)
        libs[k] = lc_kind_of(k)->lib;
    sym_set_hooked_libs(libs, lc_kind_count);
    process_load_config();
    if (!lc_cfg.disabled) {
        lc_register_atfork(atfork_prepare, atfork_parent, atfork_child);
        signals_install(&lc_cfg.signals, lc_cfg.status_signal, &signals_sink);
        inflight_set_touch(lc_cfg.leak_age_ms > 0);
        inflight_register_thread(); /* the main thread; pthread_create registers the rest */
        registry_set_transaction_probe(entry_in_transaction);
    }
    __atomic_store_n(&lc_initialized, 1, __ATOMIC_RELEASE);
}

void runtime_init(void)
{
    int expected = 0;
    if (__atomic_compare_exchange_n(&init_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        do_init();
        __atomic_store_n(&init_state, 2, __ATOMIC_RELEASE);
        return;
    }
    /* Another thread is initialising (a hook called from another library's
     * constructor thread): wait for it. Our own init calls no hook, so this
     * thread cannot be the one running it. */
    while (__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) != 2)
        sched_yield();
}

/* The library's DT_FINI (meson.build links with -fini=lc_fini): crti.o's
 * _fini does nothing, but it lies past the end of our code, and calling it at
 * every process exit faulted in one more 64 KiB window of it. */
__attribute__((visibility("hidden"), used)) LC_STARTUP void lc_fini(void)
{
}

__attribute__((constructor)) static void lastcall_constructor(void)
{
    runtime_init();
}

