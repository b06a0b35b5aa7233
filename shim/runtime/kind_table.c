/* The kind table (track/kind.h): one line per kind of connection. */
#include "track/kind.h"

extern const struct lc_kind lc_pq_kind, lc_redis_kind, lc_mysql_kind;

const struct lc_kind *const lc_kinds[LC_KIND_COUNT] = {
    [LC_KIND_PQ] = &lc_pq_kind,
    [LC_KIND_REDIS] = &lc_redis_kind,
    [LC_KIND_MYSQL] = &lc_mysql_kind,
};
