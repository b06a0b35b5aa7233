/* Interposition of libpq: connects, PQfinish, the query calls (for the gate
 * and in-flight tracking), and how a PostgreSQL connection is closed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "drain.h"
#include "inflight.h"
#include "kinds.h"
#include "lc.h"
#include "log.h"
#include "registry.h"
#include "runtime.h"
#include "symbols.h"

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

/* Every libpq function this file calls outside the hooks' own real calls,
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
static const char *const pq_real_names[] = {PQ_REALS(LC_REALS_NAME)};
static void *pq_real_cache[pqr_count];
static struct lc_reals pq_reals = {LC_LIB_PQ, pqr_count, pq_real_names, pq_real_cache, 0};
#define PQ(fn) ((__typeof__(&fn))lc_real(&pq_real_cache[pqr_##fn], &pq_reals, pqr_##fn))
#define PQ_HOOKED(name) HOOKED_REAL_IN(LC_LIB_PQ, name)

/* libssl as libpq links it: the TLS goodbye's one function. */
typedef int (*ssl_write_fn)(void *ssl, const void *buf, int num);
static const char *const ssl_real_names[] = {"SSL_write"};
static void *ssl_real_cache[1];
static struct lc_reals ssl_reals = {LC_LIB_SSL, 1, ssl_real_names, ssl_real_cache, 0};

/* Before anything of CONN's is registered: no drain can see it yet. */
static void pq_resolve(PGconn *conn)
{
    lc_reals_resolve(&pq_reals);
    if (PQ(PQsslInUse) && PQ(PQsslInUse)(conn))
        lc_reals_resolve(&ssl_reals);
}

/* ---- connect path ---- */

static void pq_describe(PGconn *conn, char *out, size_t size)
{
    /* Only host, port and database: never the conninfo, which may hold a password. */
    const char *host = PQ(PQhost) ? PQ(PQhost)(conn) : NULL;
    const char *port = PQ(PQport) ? PQ(PQport)(conn) : NULL;
    const char *db = PQ(PQdb) ? PQ(PQdb)(conn) : NULL;
    snprintf(out, size, "%s:%s/%s", host && *host ? host : "localhost",
             port && *port ? port : "5432", db && *db ? db : "?");
}

static PGcancel *pq_prepare_cancel(PGconn *conn)
{
    if (PQ(PQstatus) == NULL || PQ(PQstatus)(conn) != CONNECTION_OK || PQ(PQgetCancel) == NULL)
        return NULL;
    return PQ(PQgetCancel)(conn);
}

static void pq_free_cancel(void *cancel)
{
    if (cancel && PQ(PQfreeCancel))
        PQ(PQfreeCancel)((PGcancel *)cancel);
}

static void pq_track(PGconn *conn)
{
    if (conn != NULL)
        pq_resolve(conn);
    if (conn == NULL || PQ(PQstatus) == NULL)
        return;
    int failed = PQ(PQstatus)(conn) == CONNECTION_BAD;
    int fd = PQ(PQsocket) ? PQ(PQsocket)(conn) : -1;
    char target[LC_TARGET_MAX];
    pq_describe(conn, target, sizeof target);
    int ssl = PQ(PQsslInUse) ? PQ(PQsslInUse)(conn) : 0;
    lc_track_connect(LC_KIND_PQ, conn, 0, failed, fd, target, pq_prepare_cancel(conn), ssl);
}

/* PQreset and a finished PQconnectPoll: same PGconn, new backend, new key. */
static void pq_refresh(PGconn *conn)
{
    if (conn != NULL)
        pq_resolve(conn);
    if (conn == NULL || PQ(PQstatus) == NULL)
        return;
    int failed = PQ(PQstatus)(conn) == CONNECTION_BAD;
    int fd = PQ(PQsocket) ? PQ(PQsocket)(conn) : -1;
    void *old = NULL;
    registry_update(conn, failed, fd, pq_prepare_cancel(conn), &old);
    pq_free_cancel(old);
    if (!failed && PQ(PQsslInUse))
        runtime_on_connect(PQ(PQsslInUse)(conn));
}

/* While draining: in an exit drain a new connection fails as a bad conninfo
 * would, without touching the network (the option name says why); in a
 * signal drain the thread is parked, as for a query. */
static PGconn *pq_refused(void)
{
    /* A signal drain parks the thread for good: failing would run the
     * program's error path (log, retry, exit(1)) after a fatal signal. */
    gate_wait();
    PGconn *(*real)(const char *) = PQ_HOOKED(PQconnectdb);
    if (real == NULL)
        return NULL;
    lc_depth++;
    PGconn *c = real("lastcall_process_is_shutting_down=1");
    lc_depth--;
    return c;
}

#define PQ_CONNECT_HOOK(name, params, args)                                                   \
    LC_CONNECT_HOOK(PQ_HOOKED, PGconn *, name, params, args, pq_refused(), pq_track(h))

PQ_CONNECT_HOOK(PQconnectdb, (const char *conninfo), (conninfo))
PQ_CONNECT_HOOK(PQconnectdbParams,
                (const char *const *keywords, const char *const *values, int expand_dbname),
                (keywords, values, expand_dbname))
PQ_CONNECT_HOOK(PQsetdbLogin,
                (const char *pghost, const char *pgport, const char *pgoptions,
                 const char *pgtty, const char *dbName, const char *login, const char *pwd),
                (pghost, pgport, pgoptions, pgtty, dbName, login, pwd))
PQ_CONNECT_HOOK(PQconnectStart, (const char *conninfo), (conninfo))
PQ_CONNECT_HOOK(PQconnectStartParams,
                (const char *const *keywords, const char *const *values, int expand_dbname),
                (keywords, values, expand_dbname))

LC_EXPORT PostgresPollingStatusType PQconnectPoll(PGconn *conn)
{
    PostgresPollingStatusType (*real)(PGconn *) = PQ_HOOKED(PQconnectPoll);
    if (LC_UNLIKELY(real == NULL))
        return PGRES_POLLING_FAILED;
    if (lc_depth > 0 || !lc_active())
        return real(conn);
    INFLIGHT_ENTER(conn);
    PostgresPollingStatusType r = real(conn);
    if (r == PGRES_POLLING_OK || r == PGRES_POLLING_FAILED)
        pq_refresh(conn);
    INFLIGHT_LEAVE(conn);
    return r;
}

LC_EXPORT void PQreset(PGconn *conn)
{
    void (*real)(PGconn *) = PQ_HOOKED(PQreset);
    if (LC_UNLIKELY(real == NULL))
        return;
    if (lc_depth > 0 || !lc_active() || conn == NULL) {
        real(conn);
        return;
    }
    INFLIGHT_ENTER(conn);
    lc_depth++;
    real(conn);
    lc_depth--;
    pq_refresh(conn);
    INFLIGHT_LEAVE(conn);
}

#define PQ_RESET_HOOK(ret, name)                                                               \
    LC_EXPORT ret name(PGconn *conn)                                                           \
    {                                                                                          \
        ret (*real)(PGconn *) = PQ_HOOKED(name);                                                      \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return (ret)0;                                                                     \
        if (lc_depth > 0 || !lc_active() || conn == NULL)                                      \
            return real(conn);                                                                 \
        INFLIGHT_ENTER(conn);                                                                  \
        lc_depth++;                                                                            \
        ret r = real(conn);                                                                    \
        lc_depth--;                                                                            \
        pq_refresh(conn);                                                                      \
        INFLIGHT_LEAVE(conn);                                                                  \
        return r;                                                                              \
    }

PQ_RESET_HOOK(int, PQresetStart)
PQ_RESET_HOOK(PostgresPollingStatusType, PQresetPoll)

static int real_pqfinish(void *conn)
{
    void (*real)(PGconn *) = PQ_HOOKED(PQfinish);
    if (real)
        real(conn);
    return 0;
}

LC_EXPORT void PQfinish(PGconn *conn)
{
    if (conn == NULL || lc_depth > 0) {
        real_pqfinish(conn);
        return;
    }
    struct lc_entry info;
    int tracked;
    runtime_free_tracked(conn, real_pqfinish, &info, &tracked);
    if (tracked)
        pq_free_cancel(info.cancel);
}

/* ---- query path: the gate and the per-thread in-flight slot ---- */

#define PQ_QUERY_HOOK(ret, failval, name, params, args)                                        \
    LC_TRACKED_CALL_HOOK(PQ_HOOKED, ret, failval, name, conn, params, args)



PQ_QUERY_HOOK(PGresult *, NULL, PQexec, (PGconn *conn, const char *query), (conn, query))
PQ_QUERY_HOOK(PGresult *, NULL, PQexecParams,
              (PGconn *conn, const char *command, int nParams, const Oid *paramTypes,
               const char *const *paramValues, const int *paramLengths, const int *paramFormats,
               int resultFormat),
              (conn, command, nParams, paramTypes, paramValues, paramLengths, paramFormats,
               resultFormat))
PQ_QUERY_HOOK(PGresult *, NULL, PQprepare,
              (PGconn *conn, const char *stmtName, const char *query, int nParams,
               const Oid *paramTypes),
              (conn, stmtName, query, nParams, paramTypes))
PQ_QUERY_HOOK(PGresult *, NULL, PQexecPrepared,
              (PGconn *conn, const char *stmtName, int nParams, const char *const *paramValues,
               const int *paramLengths, const int *paramFormats, int resultFormat),
              (conn, stmtName, nParams, paramValues, paramLengths, paramFormats, resultFormat))
PQ_QUERY_HOOK(PGresult *, NULL, PQdescribePrepared, (PGconn *conn, const char *stmt),
              (conn, stmt))
PQ_QUERY_HOOK(PGresult *, NULL, PQdescribePortal, (PGconn *conn, const char *portal),
              (conn, portal))
PQ_QUERY_HOOK(int, 0, PQsendQuery, (PGconn *conn, const char *query), (conn, query))
PQ_QUERY_HOOK(int, 0, PQsendQueryParams,
              (PGconn *conn, const char *command, int nParams, const Oid *paramTypes,
               const char *const *paramValues, const int *paramLengths, const int *paramFormats,
               int resultFormat),
              (conn, command, nParams, paramTypes, paramValues, paramLengths, paramFormats,
               resultFormat))
PQ_QUERY_HOOK(int, 0, PQsendPrepare,
              (PGconn *conn, const char *stmtName, const char *query, int nParams,
               const Oid *paramTypes),
              (conn, stmtName, query, nParams, paramTypes))
PQ_QUERY_HOOK(int, 0, PQsendQueryPrepared,
              (PGconn *conn, const char *stmtName, int nParams, const char *const *paramValues,
               const int *paramLengths, const int *paramFormats, int resultFormat),
              (conn, stmtName, nParams, paramValues, paramLengths, paramFormats, resultFormat))
PQ_QUERY_HOOK(int, 0, PQsendDescribePrepared, (PGconn *conn, const char *stmt), (conn, stmt))
PQ_QUERY_HOOK(int, 0, PQsendDescribePortal, (PGconn *conn, const char *portal),
              (conn, portal))
PQ_QUERY_HOOK(PGresult *, NULL, PQgetResult, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, 0, PQconsumeInput, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, 0, PQisBusy, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, -1, PQflush, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, -1, PQsetnonblocking, (PGconn *conn, int arg), (conn, arg))
PQ_QUERY_HOOK(PGnotify *, NULL, PQnotifies, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, -1, PQputCopyData, (PGconn *conn, const char *buffer, int nbytes),
              (conn, buffer, nbytes))
PQ_QUERY_HOOK(int, -1, PQputCopyEnd, (PGconn *conn, const char *errormsg), (conn, errormsg))
PQ_QUERY_HOOK(int, -2, PQgetCopyData, (PGconn *conn, char **buffer, int async),
              (conn, buffer, async))
PQ_QUERY_HOOK(int, 0, PQpipelineSync, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, 0, PQsendFlushRequest, (PGconn *conn), (conn))
PQ_QUERY_HOOK(int, 0, PQsendPipelineSync, (PGconn *conn), (conn))
PQ_QUERY_HOOK(PGresult *, NULL, PQclosePrepared, (PGconn *conn, const char *stmt), (conn, stmt))
PQ_QUERY_HOOK(PGresult *, NULL, PQclosePortal, (PGconn *conn, const char *portal),
              (conn, portal))
PQ_QUERY_HOOK(int, 0, PQsendClosePrepared, (PGconn *conn, const char *stmt), (conn, stmt))
PQ_QUERY_HOOK(int, 0, PQsendClosePortal, (PGconn *conn, const char *portal), (conn, portal))

/* The old COPY calls and the fast-path interface (PQfn) with the large-object
 * calls built on it: each does I/O on the connection, and lo_import/lo_export
 * make several PQfn calls, with file I/O between them, under one hook. */
PQ_QUERY_HOOK(int, EOF, PQgetline, (PGconn *conn, char *buffer, int length),
              (conn, buffer, length))
PQ_QUERY_HOOK(int, -1, PQgetlineAsync, (PGconn *conn, char *buffer, int bufsize),
              (conn, buffer, bufsize))
PQ_QUERY_HOOK(int, EOF, PQputline, (PGconn *conn, const char *string), (conn, string))
PQ_QUERY_HOOK(int, EOF, PQputnbytes, (PGconn *conn, const char *buffer, int nbytes),
              (conn, buffer, nbytes))
PQ_QUERY_HOOK(int, 1, PQendcopy, (PGconn *conn), (conn))
PQ_QUERY_HOOK(PGresult *, NULL, PQfn,
              (PGconn *conn, int fnid, int *result_buf, int *result_len, int result_is_int,
               const PQArgBlock *args, int nargs),
              (conn, fnid, result_buf, result_len, result_is_int, args, nargs))
PQ_QUERY_HOOK(int, -1, lo_open, (PGconn *conn, Oid lobjId, int mode), (conn, lobjId, mode))
PQ_QUERY_HOOK(int, -1, lo_close, (PGconn *conn, int fd), (conn, fd))
PQ_QUERY_HOOK(int, -1, lo_read, (PGconn *conn, int fd, char *buf, size_t len),
              (conn, fd, buf, len))
PQ_QUERY_HOOK(int, -1, lo_write, (PGconn *conn, int fd, const char *buf, size_t len),
              (conn, fd, buf, len))
PQ_QUERY_HOOK(int, -1, lo_lseek, (PGconn *conn, int fd, int offset, int whence),
              (conn, fd, offset, whence))
PQ_QUERY_HOOK(pg_int64, -1, lo_lseek64, (PGconn *conn, int fd, pg_int64 offset, int whence),
              (conn, fd, offset, whence))
PQ_QUERY_HOOK(Oid, InvalidOid, lo_creat, (PGconn *conn, int mode), (conn, mode))
PQ_QUERY_HOOK(Oid, InvalidOid, lo_create, (PGconn *conn, Oid lobjId), (conn, lobjId))
PQ_QUERY_HOOK(int, -1, lo_tell, (PGconn *conn, int fd), (conn, fd))
PQ_QUERY_HOOK(pg_int64, -1, lo_tell64, (PGconn *conn, int fd), (conn, fd))
PQ_QUERY_HOOK(int, -1, lo_truncate, (PGconn *conn, int fd, size_t len), (conn, fd, len))
PQ_QUERY_HOOK(int, -1, lo_truncate64, (PGconn *conn, int fd, pg_int64 len), (conn, fd, len))
PQ_QUERY_HOOK(int, -1, lo_unlink, (PGconn *conn, Oid lobjId), (conn, lobjId))
PQ_QUERY_HOOK(Oid, InvalidOid, lo_import, (PGconn *conn, const char *filename),
              (conn, filename))
PQ_QUERY_HOOK(Oid, InvalidOid, lo_import_with_oid,
              (PGconn *conn, const char *filename, Oid lobjId), (conn, filename, lobjId))
PQ_QUERY_HOOK(int, -1, lo_export, (PGconn *conn, Oid lobjId, const char *filename),
              (conn, lobjId, filename))

/* ---- drain operations ---- */

static int pq_socket_fd(struct lc_entry *e)
{
    if (e->failed || PQ(PQsocket) == NULL)
        return -1;
    return PQ(PQsocket)((PGconn *)e->handle);
}

/* What a connection is doing, read from libpq at drain time: no thread is
 * inside it then (the caller checked), so asking libpq is safe, and the query
 * path keeps no bookkeeping of its own. */
enum pq_state {
    PQS_BROKEN,
    PQS_IDLE,       /* idle, or idle in a transaction */
    PQS_QUERY,      /* a query runs: its result has not fully arrived */
    PQS_COPY_IN,    /* COPY FROM STDIN: the server waits for our data */
    PQS_COPY_OUT,   /* COPY TO STDOUT: the server streams */
    PQS_RESULTS,    /* results, or a pipeline's, still to come or unread */
};

static enum pq_state pq_state(PGconn *conn)
{
    if (PQ(PQstatus) == NULL || PQ(PQstatus)(conn) != CONNECTION_OK ||
        PQ(PQtransactionStatus) == NULL || PQ(PQisBusy) == NULL)
        return PQS_BROKEN;
    int pipeline = PQ(PQpipelineStatus) && PQ(PQpipelineStatus)(conn) != PQ_PIPELINE_OFF;
    if (PQ(PQtransactionStatus)(conn) != PQTRANS_ACTIVE)
        return pipeline ? PQS_RESULTS : PQS_IDLE;
    if (PQ(PQisBusy)(conn)) {
        /* Read what has arrived (never blocks), so a result that is here
         * does not count as running. Not in a COPY OUT, whose stream libpq
         * would buffer without end: PQisBusy is false there. */
        if (PQ(PQconsumeInput))
            PQ(PQconsumeInput)(conn);
        if (PQ(PQisBusy)(conn))
            return PQS_QUERY;
    }
    if (pipeline || PQ(PQgetResult) == NULL || PQ(PQresultStatus) == NULL)
        return PQS_RESULTS;
    /* During a COPY, PQgetResult returns a COPY result and leaves the state
     * as it is; otherwise it hands over a result the program would read
     * next, which no one will (the connection is closing). */
    PGresult *r = PQ(PQgetResult)(conn);
    ExecStatusType st = r ? PQ(PQresultStatus)(r) : PGRES_EMPTY_QUERY;
    if (r && PQ(PQclear))
        PQ(PQclear)(r);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_BOTH)
        return PQS_COPY_IN;
    if (st == PGRES_COPY_OUT)
        return PQS_COPY_OUT;
    return PQ(PQtransactionStatus)(conn) == PQTRANS_ACTIVE ? PQS_RESULTS : PQS_IDLE;
}

static int pq_server_busy_now(struct lc_entry *e, int fd, int cancelled)
{
    if (fd < 0 || e->failed)
        return 0;
    switch (pq_state(e->handle)) {
    case PQS_QUERY:
        return 1;
    case PQS_COPY_OUT:
        /* Streams until cancelled; after the cancel, the rest of the
         * stream and the error are read while closing (pq_settle). */
        return !cancelled;
    default:
        return 0;
    }
}

static void pq_cancel(struct lc_entry *e)
{
    PGcancel *cancel = e->cancel;
    if (cancel == NULL || PQ(PQcancel) == NULL)
        return;
    char err[256] = "";
    if (!PQ(PQcancel)(cancel, err, sizeof err))
        LC_INFO("cancel request to %s failed: %s", e->target, err);
}

static int fd_writable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    return poll(&p, 1, 0) > 0;
}

/* Empties libpq's output buffer: 0 done, 1 more to write later, -1 broken.
 * A non-blocking connection's PQflush never blocks. A blocking connection's
 * does (until the server reads), so it runs only on a writable socket (what
 * libpq keeps is under 8 kB then: it writes whole 8 kB blocks as it goes),
 * with the watchdog as a bound should the server stall mid-way. */
static int pq_flush_output(PGconn *conn, int fd, int nonblocking, int64_t until_ms)
{
    if (PQ(PQflush) == NULL)
        return -1;
    if (nonblocking) {
        int r = PQ(PQflush)(conn);
        return r < 0 ? -1 : r > 0;
    }
    if (!fd_writable(fd))
        return lc_now_ms() < until_ms ? 1 : -1;
    int slot = bounded_begin(fd, until_ms);
    if (slot < 0)
        return -1;
    int r = PQ(PQflush)(conn);
    return bounded_end(slot) || r != 0 ? -1 : 0;
}

/* Before the goodbye: libpq's own output buffer is emptied (it may hold the
 * rest of a message already half on the wire: a Terminate after it would
 * land inside that message), and a COPY IN is ended with CopyFail, so the
 * server aborts the COPY and stays in step with us. */
static int pq_flush_now(struct lc_entry *e, int fd, int64_t until_ms)
{
    PGconn *conn = e->handle;
    if (fd < 0 || e->failed || PQ(PQstatus) == NULL || PQ(PQstatus)(conn) != CONNECTION_OK)
        return LC_FLUSH_GIVE_UP;
    int nonblocking = PQ(PQisnonblocking) && PQ(PQisnonblocking)(conn);
    int r = pq_flush_output(conn, fd, nonblocking, until_ms);
    if (r != 0)
        return r < 0 ? LC_FLUSH_GIVE_UP : LC_FLUSH_MORE;
    if (pq_state(conn) != PQS_COPY_IN || PQ(PQputCopyEnd) == NULL)
        return LC_FLUSH_NOTHING;
    /* A blocking connection's PQputCopyEnd flushes, blocking: bounded. */
    int slot = nonblocking ? -1 : bounded_begin(fd, until_ms);
    if (!nonblocking && slot < 0)
        return LC_FLUSH_GIVE_UP;
    int ended = PQ(PQputCopyEnd)(conn, "lastcall: process is shutting down");
    if (slot >= 0 && bounded_end(slot))
        return LC_FLUSH_GIVE_UP;
    if (ended < 0)
        return LC_FLUSH_GIVE_UP;
    if (ended == 0)
        return LC_FLUSH_MORE; /* no room yet (non-blocking): try again */
    r = pq_flush_output(conn, fd, nonblocking, until_ms);
    return r < 0 ? LC_FLUSH_GIVE_UP : r > 0 ? LC_FLUSH_MORE : LC_FLUSH_WROTE;
}

enum { SETTLE_ROLLBACK_SENT = 1, SETTLE_SYNC_SENT = 2 };

/* A query sent by us, on a blocking connection bounded by the watchdog. */
static int pq_send_bounded(PGconn *conn, int fd, int nonblocking, int64_t until_ms,
                           int (*send)(PGconn *), const char *sql)
{
    int slot = nonblocking ? -1 : bounded_begin(fd, until_ms);
    if (!nonblocking && slot < 0)
        return 0;
    int ok = send ? send(conn) : PQ(PQsendQuery)(conn, sql);
    if (slot >= 0 && bounded_end(slot))
        return 0;
    return ok == 1;
}

/* Reads what the server still sends until the session is idle (libpq's
 * state machine does the parsing), then rolls back an open transaction.
 * Without this, a pooler such as PgBouncer 1.18 drops the server connection
 * of a client that leaves while its server is "not ready" (a transaction, a
 * COPY, results on the way), and the backend logs an abrupt end. */
static int pq_settle_now(struct lc_entry *e, int fd, int *scratch, int64_t until_ms)
{
    PGconn *conn = e->handle;
    if (e->failed || PQ(PQstatus) == NULL || PQ(PQstatus)(conn) != CONNECTION_OK ||
        PQ(PQconsumeInput) == NULL || PQ(PQgetResult) == NULL || PQ(PQisBusy) == NULL ||
        PQ(PQtransactionStatus) == NULL || PQ(PQresultStatus) == NULL || PQ(PQclear) == NULL ||
        PQ(PQsendQuery) == NULL)
        return LC_SETTLE_GIVE_UP;
    int nonblocking = PQ(PQisnonblocking) && PQ(PQisnonblocking)(conn);
    if (nonblocking && PQ(PQflush)) {
        int f = PQ(PQflush)(conn);
        if (f != 0)
            return f < 0 ? LC_SETTLE_GIVE_UP : LC_SETTLE_WAIT;
    }
    if (!PQ(PQconsumeInput)(conn))
        return LC_SETTLE_GIVE_UP;
    for (int rounds = 0; rounds < 10000; rounds++) {
        int pipeline = PQ(PQpipelineStatus) && PQ(PQpipelineStatus)(conn) != PQ_PIPELINE_OFF;
        PGTransactionStatusType ts = PQ(PQtransactionStatus)(conn);
        if (ts != PQTRANS_ACTIVE) {
            if (pipeline) {
                if (PQ(PQexitPipelineMode) && PQ(PQexitPipelineMode)(conn) == 1)
                    continue;
                /* Queries queued with no Sync after them: the server waits
                 * for it before it answers the last of them. */
                if (*scratch & SETTLE_SYNC_SENT || PQ(PQpipelineSync) == NULL)
                    return LC_SETTLE_GIVE_UP;
                *scratch |= SETTLE_SYNC_SENT;
                if (!pq_send_bounded(conn, fd, nonblocking, until_ms, PQ(PQpipelineSync), NULL))
                    return LC_SETTLE_GIVE_UP;
                return LC_SETTLE_WAIT;
            }
            if (ts == PQTRANS_IDLE)
                return LC_SETTLE_DONE;
            if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR)
                return LC_SETTLE_GIVE_UP;
            /* Terminate would roll back as well; ROLLBACK first leaves the
             * session idle for a pooler to keep. */
            if (*scratch & SETTLE_ROLLBACK_SENT)
                return LC_SETTLE_GIVE_UP;
            *scratch |= SETTLE_ROLLBACK_SENT;
            if (!pq_send_bounded(conn, fd, nonblocking, until_ms, NULL, "ROLLBACK"))
                return LC_SETTLE_GIVE_UP;
            return LC_SETTLE_WAIT;
        }
        if (PQ(PQisBusy)(conn))
            return LC_SETTLE_WAIT;
        PGresult *r = PQ(PQgetResult)(conn);
        if (r == NULL)
            continue;
        ExecStatusType st = PQ(PQresultStatus)(r);
        PQ(PQclear)(r);
        if (st == PGRES_COPY_OUT) {
            /* A cancelled COPY OUT: what was already streamed, then its end. */
            if (PQ(PQgetCopyData) == NULL || PQ(PQfreemem) == NULL)
                return LC_SETTLE_GIVE_UP;
            char *buf;
            int got;
            while ((got = PQ(PQgetCopyData)(conn, &buf, 1)) > 0)
                PQ(PQfreemem)(buf);
            if (got == 0)
                return LC_SETTLE_WAIT;
            if (got < -1)
                return LC_SETTLE_GIVE_UP;
        } else if (st == PGRES_COPY_IN || st == PGRES_COPY_BOTH) {
            return LC_SETTLE_GIVE_UP; /* the flush ends a COPY IN; not here */
        }
    }
    return LC_SETTLE_GIVE_UP;
}

static void pq_terminate(struct lc_entry *e, int fd)
{
    /* The Terminate message: 'X' and a 4-byte length of 4. The backend then
     * exits quietly, rolling back any open transaction. */
    static const char terminate_msg[5] = {'X', 0, 0, 0, 4};
    PGconn *conn = e->handle;
    if (PQ(PQsslInUse) && PQ(PQsslInUse)(conn)) {
        ssl_write_fn ssl_write = (ssl_write_fn)lc_real(&ssl_real_cache[0], &ssl_reals, 0);
        void *ssl = PQ(PQsslStruct) ? PQ(PQsslStruct)(conn, "OpenSSL") : NULL;
        if (ssl_write && ssl) {
            lc_set_nonblocking(fd); /* a full socket cannot hang us */
            ssl_write(ssl, terminate_msg, (int)sizeof terminate_msg);
        }
        return;
    }
    ssize_t w;
    do
        w = send(fd, terminate_msg, sizeof terminate_msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
}

static int pq_server_may_send_now(struct lc_entry *e)
{
    if (e->failed)
        return 0;
    enum pq_state st = pq_state(e->handle);
    return st != PQS_IDLE && st != PQS_BROKEN;
}

/* Is the peer of FD a PostgreSQL server itself, not a pooler in front of one?
 * PgBouncer logs "client unexpected eof" for a client that leaves without
 * Terminate; PostgreSQL logs nothing for an idle session's EOF. Only a unix
 * socket says who is at the other end (SO_PEERCRED: the process that listens,
 * the postmaster), and only if that process is in our PID namespace. The
 * answer for the last pid seen is kept: every backend has the same peer. */
static int peer_is_postgres(int fd)
{
    static pid_t known_yes, known_no;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
        return 0;
    if (cred.pid == __atomic_load_n(&known_yes, __ATOMIC_RELAXED))
        return 1;
    if (cred.pid == __atomic_load_n(&known_no, __ATOMIC_RELAXED))
        return 0;
    char path[48], comm[32] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)cred.pid);
    int cfd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = cfd >= 0 ? read(cfd, comm, sizeof comm - 1) : -1;
    if (cfd >= 0)
        close(cfd);
    comm[got > 0 ? got : 0] = '\0';
    int yes = strcmp(comm, "postgres\n") == 0 || strcmp(comm, "postmaster\n") == 0;
    __atomic_store_n(yes ? &known_yes : &known_no, cred.pid, __ATOMIC_RELAXED);
    return yes;
}

/* Idle, outside a transaction, nothing queued, no result or COPY pending, not
 * in a pipeline, nothing come in (a LISTENing session: more may come, and
 * unread at our close they would make it a reset), on a unix socket to
 * PostgreSQL itself. Never over TLS, which the peer check rules out already
 * (TLS runs over TCP only): the backend logs a reset ("could not receive data
 * from client") for a close without close_notify, OpenSSL 3's "unexpected
 * eof". PQnotifies parses what libpq has buffered, as the drain's settle
 * does. */
static int pq_nothing_to_say_now(struct lc_entry *e, int fd)
{
    PGconn *conn = e->handle;
    if (e->failed || PQ(PQstatus) == NULL || PQ(PQtransactionStatus) == NULL ||
        PQ(PQstatus)(conn) != CONNECTION_OK ||
        PQ(PQtransactionStatus)(conn) != PQTRANS_IDLE)
        return 0;
    if (PQ(PQsslInUse) && PQ(PQsslInUse)(conn))
        return 0;
    if (PQ(PQpipelineStatus) && PQ(PQpipelineStatus)(conn) != PQ_PIPELINE_OFF)
        return 0;
    /* A blocking connection never keeps output once its call returned idle
     * (libpq flushes every message before it waits for the answer); a
     * non-blocking one may, and its PQflush never blocks. */
    if (PQ(PQisnonblocking) && PQ(PQisnonblocking)(conn) &&
        (PQ(PQflush) == NULL || PQ(PQflush)(conn) != 0))
        return 0;
    /* A message come in (a notification, a notice): LISTENing, or the
     * server has something to say; more may come before the kernel's close,
     * which would make it a reset. */
    int unread = 0;
    if (ioctl(fd, FIONREAD, &unread) != 0 || unread != 0)
        return 0;
    if (PQ(PQnotifies) == NULL || PQ(PQfreemem) == NULL)
        return 0;
    PGnotify *n = PQ(PQnotifies)(conn);
    if (n != NULL) {
        PQ(PQfreemem)(n); /* the process is dying: no one will read it */
        return 0;
    }
    return peer_is_postgres(fd);
}

static int pq_in_transaction(struct lc_entry *e)
{
    if (e->failed || PQ(PQtransactionStatus) == NULL)
        return 0;
    PGTransactionStatusType st = PQ(PQtransactionStatus)((PGconn *)e->handle);
    return st == PQTRANS_INTRANS || st == PQTRANS_INERROR;
}

/* The drain's (or a closing program's) own use of a connection no thread is
 * inside. Its notices go nowhere from now on: libpq would hand them to the
 * program's notice receiver or processor (program code, which may take the
 * program's locks or call into another connection) on lastcall's thread. The
 * program never gets it back: the gate stops its next call, and the socket is
 * shut. libpq's calls to its own exports pass our hooks as nested calls. */
static void pq_drop_notice(void *arg, const PGresult *res)
{
    (void)arg;
    (void)res;
}

static void *pq_own_begin(struct lc_entry *e)
{
    if (!e->failed && PQ(PQsetNoticeReceiver))
        PQ(PQsetNoticeReceiver)((PGconn *)e->handle, pq_drop_notice, NULL);
    return inflight_own_begin();
}

static int pq_server_busy(struct lc_entry *e, int fd, int cancelled)
{
    void *own = pq_own_begin(e);
    int r = pq_server_busy_now(e, fd, cancelled);
    inflight_own_end(own);
    return r;
}

static int pq_flush(struct lc_entry *e, int fd, int64_t until_ms)
{
    void *own = pq_own_begin(e);
    int r = pq_flush_now(e, fd, until_ms);
    inflight_own_end(own);
    return r;
}

static int pq_settle(struct lc_entry *e, int fd, int *scratch, int64_t until_ms)
{
    void *own = pq_own_begin(e);
    int r = pq_settle_now(e, fd, scratch, until_ms);
    inflight_own_end(own);
    return r;
}

static int pq_server_may_send(struct lc_entry *e)
{
    void *own = pq_own_begin(e);
    int r = pq_server_may_send_now(e);
    inflight_own_end(own);
    return r;
}

static int pq_nothing_to_say(struct lc_entry *e, int fd)
{
    void *own = pq_own_begin(e);
    int r = pq_nothing_to_say_now(e, fd);
    inflight_own_end(own);
    return r;
}

const struct lc_kind lc_pq_kind = {
    .name = "PostgreSQL",
    .json = "postgresql",
    .always_listed = 1,
    .close_first = 1,
    .goodbye_wait = LC_GOODBYE_DONE,
    .socket_fd = pq_socket_fd,
    .server_busy = pq_server_busy,
    .cancel = pq_cancel,
    .flush = pq_flush,
    .settle = pq_settle,
    .terminate = pq_terminate,
    .server_may_send = pq_server_may_send,
    .nothing_to_say = pq_nothing_to_say,
    .in_transaction = pq_in_transaction,
    .free_cancel = pq_free_cancel,
};
