/* The kind table (track/kind.h): one line per kind of connection. A kind's
 * number is its line's place; the first three keep theirs, since the public
 * struct lastcall_stats has their field groups in this order. */
#include "track/kind.h"

#define LC_KIND_TABLE(X) \
    X(lc_pq_kind)        \
    X(lc_redis_kind)     \
    X(lc_mysql_kind)     \
    /* the end of the table */

#define LC_KIND_DECLARE(k) extern const struct lc_kind k;
#define LC_KIND_ENTRY(k) &k,
LC_KIND_TABLE(LC_KIND_DECLARE)

const struct lc_kind *const lc_kinds[] = {LC_KIND_TABLE(LC_KIND_ENTRY)};
const int lc_kind_count = (int)(sizeof lc_kinds / sizeof lc_kinds[0]);
_Static_assert(sizeof lc_kinds / sizeof lc_kinds[0] <= LC_KIND_MAX, "LC_KIND_MAX kinds at most");
