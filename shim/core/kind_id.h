/* The kinds of connection, as numbers: each is described by its entry in
 * the kind table (track/kind.h: struct lc_kind, lc_kinds[]). The numbers are
 * the registry's. */
#ifndef LC_KIND_ID_H
#define LC_KIND_ID_H

enum lc_kind_id {
    LC_KIND_PQ = 0,
    LC_KIND_REDIS = 1,
    LC_KIND_MYSQL = 2,
    LC_KIND_COUNT
};

#endif
