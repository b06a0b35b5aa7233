/* How a PostgreSQL connection is closed: the kind's drain operations and
 * its entry for the kind table. */
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


/* The caches of the real functions (pq.h). */
static const char *const pq_real_names[] = {PQ_REALS(LC_REALS_NAME)};
void *pq_real_cache[pqr_count];
/* lo_*: libpq's large-object calls. */
struct lc_lib pq_lib = {.defines = {"PQconnectdb", "PQfinish"}, .hook_prefixes = {"PQ", "lo_"}};
struct lc_lib pq_ssl_lib = {.defines = {"SSL_write", "SSL_CTX_new"}, .via = &pq_lib};
struct lc_reals pq_reals = {&pq_lib, pqr_count, pq_real_names, pq_real_cache, 0};
static const char *const ssl_real_names[] = {"SSL_write"};
void *ssl_real_cache[1];
struct lc_reals ssl_reals = {&pq_ssl_lib, 1, ssl_real_names, ssl_real_cache, 0};

void pq_free_cancel(void *cancel)
{
    if (cancel && PQ(PQfreeCancel))
        PQ(PQfreeCancel)((PGcancel *)cancel);
}

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
    .lib = &pq_lib,
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
