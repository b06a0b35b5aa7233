/* The connect path every kind shares (kind.h). */
#include "track/kind.h"

#include <stdio.h>

#include "core/log.h"
#include "core/process.h"
#include "core/registry.h"
#include "core/stacks.h"
#include "track/inflight.h"

/* open and failed-connect events (LASTCALL_LOG=debug, or info for failures). */
static void log_open(int kind, const void *handle, const char *target, int failed, int ssl)
{
    int level = failed ? LC_LOG_INFO : LC_LOG_DEBUG;
    if (lc_log_level < level)
        return;
    char fields[400], esc[300] = "";
    lc_json_escape(esc, sizeof esc, target);
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"handle\":\"%p\",\"target\":\"%s\"",
             lc_kind_of(kind)->json, handle, esc);
    lc_event(level, failed ? "connect_failed" : "open", fields, "%s %s %p to %s%s",
             failed ? "failed connect:" : "open", lc_kind_of(kind)->name,
             handle, target, ssl ? " (SSL)" : "");
}

int lc_kind_id(const struct lc_kind *kind)
{
    for (int k = 0; k < lc_kind_count; k++)
        if (lc_kinds[k] == kind)
            return k;
    return -1;
}

int lc_kind_listed(int kind)
{
    if (lc_kind_of(kind)->always_listed)
        return 1;
    struct lc_registry_counts c;
    registry_counts(&c);
    return c.opened[kind] > 0;
}

int lc_track_unconnected(int kind, void *handle, const char *target, void *cancel)
{
    struct lc_stack *stack = lc_cfg.stacks ? stack_capture(lc_cfg.stack_depth) : NULL;
    if (registry_add(handle, kind, 0, 1, -1, target, cancel, stack) == NULL)
        return -1;
    lc_up.on_connect(0); /* the exit drain and report must see it */
    return 0;
}

void lc_track_connected(int kind, void *handle, const char *target, int failed, int ssl)
{
    log_open(kind, handle, target, failed, ssl);
    lc_up.on_connect(ssl);
    lc_up.opened(kind);
}

int lc_track_connect(int kind, void *handle, int is_async, int failed, int fd,
                     const char *target, void *cancel, int ssl)
{
    struct lc_stack *stack = lc_cfg.stacks ? stack_capture(lc_cfg.stack_depth) : NULL;
    if (registry_add(handle, kind, is_async, failed, fd, target, cancel, stack) == NULL) {
        if (cancel && lc_kind_of(kind)->free_cancel)
            lc_kind_of(kind)->free_cancel(cancel);
        return -1;
    }
    log_open(kind, handle, target, failed, ssl);
    lc_up.on_connect(ssl);
    lc_up.opened(kind);
    return 0;
}

void lc_reals_resolve(struct lc_reals *t)
{
    if (__atomic_load_n(&t->resolved, __ATOMIC_ACQUIRE))
        return;
    int found = 0;
    for (unsigned i = 0; i < t->count; i++) {
        void *p = __atomic_load_n(&t->cache[i], __ATOMIC_ACQUIRE);
        if (p == NULL && (p = sym_lookup(t->lib, t->names[i], NULL)) != NULL)
            __atomic_store_n(&t->cache[i], p, __ATOMIC_RELEASE);
        found |= p != NULL;
    }
    /* A library not loaded (yet): look again at the next connect. */
    if (found)
        __atomic_store_n(&t->resolved, 1, __ATOMIC_RELEASE);
}

void *lc_real_slow(struct lc_reals *t, unsigned i)
{
    if (__atomic_load_n(&t->resolved, __ATOMIC_ACQUIRE) ||
        __atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE))
        return NULL;
    void *p = sym_lookup(t->lib, t->names[i], NULL);
    if (p)
        __atomic_store_n(&t->cache[i], p, __ATOMIC_RELEASE);
    return p;
}
