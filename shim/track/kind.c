/* The kind table (see kinds.h) and the connect path every kind shares. */
#include "track/kind.h"

#include "track/inflight.h"
#include "core/registry.h"
#include "observe/report.h"
#include "runtime.h"
#include "core/stacks.h"

extern const struct lc_kind lc_pq_kind, lc_redis_kind, lc_mysql_kind;

const struct lc_kind *const lc_kinds[LC_KIND_COUNT] = {
    [LC_KIND_PQ] = &lc_pq_kind,
    [LC_KIND_REDIS] = &lc_redis_kind,
    [LC_KIND_MYSQL] = &lc_mysql_kind,
};

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
    runtime_on_connect(0); /* the exit drain and report must see it */
    return 0;
}

void lc_track_connected(int kind, void *handle, const char *target, int failed, int ssl)
{
    runtime_log_open(kind, handle, target, failed, ssl);
    runtime_on_connect(ssl);
    report_check_threshold(kind);
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
    runtime_log_open(kind, handle, target, failed, ssl);
    runtime_on_connect(ssl);
    report_check_threshold(kind);
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
