/* The public API (include/lastcall.h). */
#include <stddef.h>
#include <string.h>

#include "../include/lastcall.h"
#include "core/compiler.h"
#include "core/registry.h"
#include "track/kind.h"

/* One kind's counters; lastcall_stats' field groups are the kind table's first three lines. */
static void kind_counts(const struct lc_registry_counts *c, int k, unsigned long *opened,
                         unsigned long *failed, unsigned long *closed, unsigned long *live)
{
    *opened = c->opened[k];
    *failed = c->failed[k];
    *closed = c->closed[k];
    *live = c->live[k];
}

/* Callers built against an older header pass the older, smaller size: they
 * get the fields they know (fields are only ever added at the end). */
LC_EXPORT int lastcall_get_stats(struct lastcall_stats *out, unsigned long size)
{
    if (out == NULL || size < offsetof(struct lastcall_stats, mysql_opened))
        return -1;
    struct lc_registry_counts c;
    registry_counts(&c);
    struct lastcall_stats s;
    memset(&s, 0, sizeof s);
    kind_counts(&c, 0, &s.pq_opened, &s.pq_failed, &s.pq_closed, &s.pq_live);
    kind_counts(&c, 1, &s.redis_opened, &s.redis_failed, &s.redis_closed, &s.redis_live);
    s.drained = c.drained;
    kind_counts(&c, 2, &s.mysql_opened, &s.mysql_failed, &s.mysql_closed, &s.mysql_live);
    memcpy(out, &s, size < sizeof s ? size : sizeof s);
    return 0;
}

LC_EXPORT int lastcall_get_kind_stats(const char *kind, struct lastcall_kind_stats *out,
                                      unsigned long size)
{
    if (kind == NULL || out == NULL || size == 0)
        return -1;
    for (int k = 0; k < lc_kind_count; k++) {
        if (strcmp(lc_kind_of(k)->json, kind) != 0)
            continue;
        struct lc_registry_counts c;
        registry_counts(&c);
        struct lastcall_kind_stats s;
        kind_counts(&c, k, &s.opened, &s.failed, &s.closed, &s.live);
        memcpy(out, &s, size < sizeof s ? size : sizeof s);
        return 0;
    }
    return -1;
}

LC_EXPORT const char *lastcall_version(void)
{
    return LASTCALL_VERSION;
}
