/* Shared between the files of the PostgreSQL kind: its hooks (hooks.c) and
 * how a PostgreSQL connection is closed (close.c). */
#ifndef LC_KIND_PQ_H
#define LC_KIND_PQ_H

#include <libpq-fe.h>

#include "platform/symbols.h"
#include "track/kind.h"

/* The kind's entry in the kind table (close.c). */
extern const struct lc_kind lc_pq_kind;

/* libpq 14's pipeline mode, declared for older headers (Debian 11's libpq 13,
 * the glibc-floor build): looked up at run time like the rest, so a libpq
 * without it reads as "not in a pipeline" and its hooks as failed calls. */
#ifndef LIBPQ_HAS_PIPELINING
typedef enum { PQ_PIPELINE_OFF, PQ_PIPELINE_ON, PQ_PIPELINE_ABORTED } PGpipelineStatus;
PGpipelineStatus PQpipelineStatus(const PGconn *conn);
int PQexitPipelineMode(PGconn *conn);
int PQpipelineSync(PGconn *conn);
int PQsendFlushRequest(PGconn *conn);
#endif

/* libpq 17's calls, declared for older headers: their hooks answer as a
 * failed call when the real library lacks them (only a program built against
 * a newer libpq calls them). */
#ifndef LIBPQ_HAS_SEND_PIPELINE_SYNC
int PQsendPipelineSync(PGconn *conn);
#endif
#ifndef LIBPQ_HAS_CLOSE_PREPARED
PGresult *PQclosePrepared(PGconn *conn, const char *stmt);
PGresult *PQclosePortal(PGconn *conn, const char *portal);
int PQsendClosePrepared(PGconn *conn, const char *stmt);
int PQsendClosePortal(PGconn *conn, const char *portal);
#endif

/* Every libpq function the kind calls outside the hooks' own real calls,
 * resolved at the first tracked connect (see kinds.h): the drain only reads
 * the caches. */
#define PQ_REALS(X)                                                                            \
    X(PQcancel) X(PQclear) X(PQconsumeInput) X(PQdb) X(PQexitPipelineMode)                    \
    X(PQflush) X(PQfreeCancel) X(PQfreemem) X(PQgetCancel) X(PQgetCopyData) X(PQgetResult)    \
    X(PQhost) X(PQisBusy) X(PQisnonblocking) X(PQnotifies) X(PQpipelineStatus)                \
    X(PQpipelineSync) X(PQport) X(PQputCopyEnd) X(PQresultStatus) X(PQsendQuery)              \
    X(PQsetNoticeReceiver) X(PQsocket) X(PQsslInUse) X(PQsslStruct) X(PQstatus)               \
    X(PQtransactionStatus)
#define PQ_REAL_INDEX(fn) pqr_##fn,
enum { PQ_REALS(PQ_REAL_INDEX) pqr_count };
extern void *pq_real_cache[pqr_count];
extern struct lc_reals pq_reals;
/* libpq, and libssl as libpq links it (close.c). */
extern struct lc_lib pq_lib, pq_ssl_lib;
#define PQ(fn) ((__typeof__(&fn))lc_real(&pq_real_cache[pqr_##fn], &pq_reals, pqr_##fn))
#define PQ_HOOKED(name) HOOKED_REAL_IN(&pq_lib, name)

/* libssl as libpq links it: the TLS goodbye's one function. */
typedef int (*ssl_write_fn)(void *ssl, const void *buf, int num);
extern void *ssl_real_cache[1];
extern struct lc_reals ssl_reals;

/* The per-connection cancel object (the entry's `cancel`) is no longer needed. */
void pq_free_cancel(void *cancel);

#endif
