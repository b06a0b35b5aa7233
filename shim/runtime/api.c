/* The public API (include/lastcall.h). */
#include <stddef.h>
#include <string.h>

#include "../include/lastcall.h"
#include "core/compiler.h"
#include "core/kind_id.h"
#include "core/registry.h"

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
    s.pq_opened = c.opened[LC_KIND_PQ];
    s.pq_failed = c.failed[LC_KIND_PQ];
    s.pq_closed = c.closed[LC_KIND_PQ];
    s.pq_live = c.live[LC_KIND_PQ];
    s.redis_opened = c.opened[LC_KIND_REDIS];
    s.redis_failed = c.failed[LC_KIND_REDIS];
    s.redis_closed = c.closed[LC_KIND_REDIS];
    s.redis_live = c.live[LC_KIND_REDIS];
    s.drained = c.drained;
    s.mysql_opened = c.opened[LC_KIND_MYSQL];
    s.mysql_failed = c.failed[LC_KIND_MYSQL];
    s.mysql_closed = c.closed[LC_KIND_MYSQL];
    s.mysql_live = c.live[LC_KIND_MYSQL];
    memcpy(out, &s, size < sizeof s ? size : sizeof s);
    return 0;
}

LC_EXPORT const char *lastcall_version(void)
{
    return LASTCALL_VERSION;
}
