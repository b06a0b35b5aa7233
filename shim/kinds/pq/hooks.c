/* Interposition of libpq: connects, PQfinish and the query calls (for the
 * gate and in-flight tracking). */
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

#include "track/watchdog.h"
#include "track/inflight.h"
#include "track/kind.h"
#include "core/compiler.h"
#include "core/clock.h"
#include "core/kind_id.h"
#include "core/log.h"
#include "core/registry.h"
#include "core/process.h"
#include "platform/symbols.h"
#include "kinds/pq/pq.h"


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

/* What a connect or a reset left: whether it failed, its socket. -1 when
 * there is nothing to look at (no PGconn, or libpq's functions not found). */
static int pq_outcome(PGconn *conn, int *failed, int *fd)
{
    if (conn == NULL)
        return -1;
    pq_resolve(conn);
    if (PQ(PQstatus) == NULL)
        return -1;
    *failed = PQ(PQstatus)(conn) == CONNECTION_BAD;
    *fd = PQ(PQsocket) ? PQ(PQsocket)(conn) : -1;
    return 0;
}

static void pq_track(PGconn *conn)
{
    int failed, fd;
    if (pq_outcome(conn, &failed, &fd) != 0)
        return;
    char target[LC_TARGET_MAX];
    pq_describe(conn, target, sizeof target);
    int ssl = PQ(PQsslInUse) ? PQ(PQsslInUse)(conn) : 0;
    lc_track_connect(lc_kind_id(&lc_pq_kind), conn, 0, failed, fd, target, pq_prepare_cancel(conn), ssl);
}

/* PQreset and a finished PQconnectPoll: same PGconn, new backend, new key. */
static void pq_refresh(PGconn *conn)
{
    int failed, fd;
    if (pq_outcome(conn, &failed, &fd) != 0)
        return;
    void *old = NULL;
    registry_update(conn, failed, fd, pq_prepare_cancel(conn), &old);
    pq_free_cancel(old);
    if (!failed && PQ(PQsslInUse))
        lc_up.on_connect(PQ(PQsslInUse)(conn));
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
    lc_up.free_tracked(conn, real_pqfinish, &info, &tracked);
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

