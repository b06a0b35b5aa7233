/* Interposition of the MySQL/MariaDB client library (MariaDB Connector/C,
 * or Oracle's libmysqlclient: the same exported names): mysql_init, the
 * connects, mysql_close and the calls that wait for the server (for the gate
 * and in-flight tracking). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "track/inflight.h"
#include "track/kind.h"
#include "core/compiler.h"
#include "core/kind_id.h"
#include "core/log.h"
#include "core/registry.h"
#include "core/process.h"
#include "platform/symbols.h"

#include "kinds/mysql/mysql.h"

/* ---- connect path ---- */

static void my_describe(char *out, size_t size, const char *host, unsigned port,
                        const char *unix_socket, const char *db)
{
    /* Never the user or the password. */
    const char *dbname = db && *db ? db : "?";
    if (host == NULL || *host == '\0' || strcmp(host, "localhost") == 0)
        snprintf(out, size, "%s/%s", unix_socket && *unix_socket ? unix_socket : "localhost",
                 dbname);
    else
        snprintf(out, size, "%s:%u/%s", host, port ? port : 3306u, dbname);
}

int my_socket_of(MYSQL *m)
{
    if (MY(mysql_get_socket))
        return MY(mysql_get_socket)(m);
    /* libmysqlclient has no accessor: NET comes first in MYSQL, its fd after
     * five pointers (both libraries' layout). Checked against the socket seen
     * at connect time before it is used (my_socket_fd). */
    int fd;
    memcpy(&fd, (const char *)m + 40, sizeof fd);
    return fd;
}

/* Is this thread inside a call on a MySQL connection? The library then
 * reconnects by itself (MYSQL_OPT_RECONNECT): it connects a MYSQL of its own
 * on its stack, closes the program's, and copies the new one over it, through
 * its exports. Those calls are its business: the program's handle stays
 * tracked, at its address, with its new socket. */
static int inside_mysql(void)
{
    void *h = __atomic_load_n(&lc_inflight, __ATOMIC_RELAXED);
    if (h == NULL || h == LC_CONNECTING)
        return 0;
    pthread_mutex_lock(&my_lock);
    int inside = conn_find_locked(h) != NULL;
    pthread_mutex_unlock(&my_lock);
    return inside;
}

LC_EXPORT MYSQL *mysql_init(MYSQL *mysql)
{
    MYSQL *(*real)(MYSQL *) = MY_HOOKED(mysql_init);
    if (LC_UNLIKELY(real == NULL))
        return NULL;
    if (lc_depth > 0 || !lc_active() || inside_mysql())
        return real(mysql);
    lc_depth++;
    MYSQL *m = real(mysql);
    lc_depth--;
    if (m == NULL)
        return m;
    lc_reals_resolve(&my_reals);
    /* Tracked from here, as never connected: a handle that is never
     * connected and never closed is a leak too. */
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_get_locked(m);
    pthread_mutex_unlock(&my_lock);
    if (c)
        lc_track_unconnected(lc_kind_id(&lc_mysql_kind), m, "(never connected)", c);
    return m;
}

/* While draining: an exit drain fails the connect the way a missing server
 * would; a signal drain parks the thread (see pq_refused). */
static MYSQL *my_refused(MYSQL *mysql, const char *db,
                         MYSQL *(*real)(MYSQL *, const char *, const char *, const char *,
                                        const char *, unsigned, const char *, unsigned long))
{
    gate_wait();
    lc_depth++;
    MYSQL *r = real(mysql, "localhost", NULL, NULL, db, 0, "/lastcall: process is shutting down",
                    0);
    lc_depth--;
    return r;
}

LC_EXPORT MYSQL *mysql_real_connect(MYSQL *mysql, const char *host, const char *user,
                                    const char *passwd, const char *db, unsigned int port,
                                    const char *unix_socket, unsigned long clientflag)
{
    MYSQL *(*real)(MYSQL *, const char *, const char *, const char *, const char *, unsigned,
                   const char *, unsigned long) = MY_HOOKED(mysql_real_connect);
    if (LC_UNLIKELY(real == NULL)) {
        errno = ENOSYS;
        return NULL;
    }
    if (lc_depth > 0 || !lc_active() || mysql == NULL || inside_mysql())
        return real(mysql, host, user, passwd, db, port, unix_socket, clientflag);
    if (LC_UNLIKELY(__atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE)))
        return my_refused(mysql, db, real);
    INFLIGHT_ENTER(LC_CONNECTING);
    my_connect_begin(mysql, host, user, passwd, db, port, unix_socket);
    lc_depth++;
    MYSQL *r = real(mysql, host, user, passwd, db, port, unix_socket, clientflag);
    lc_depth--;
    my_connect_end(mysql, r == NULL);
    INFLIGHT_LEAVE(LC_CONNECTING);
    return r;
}

void my_connect_begin(MYSQL *m, const char *host, const char *user, const char *passwd,
                      const char *db, unsigned port, const char *unix_socket)
{
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_get_locked(m);
    if (c) {
        secrets_keep(c, host, user, passwd, unix_socket, port);
        my_describe(c->target, sizeof c->target, host, port, unix_socket, db);
    }
    pthread_mutex_unlock(&my_lock);
}

void my_connect_end(MYSQL *m, int failed)
{
    lc_reals_resolve(&my_reals);
    int fd = failed ? -1 : my_socket_of(m);
    int ssl = !failed && MY(mysql_get_ssl_cipher) && MY(mysql_get_ssl_cipher)(m) != NULL;
    char target[LC_TARGET_MAX] = "?";
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c) {
        memcpy(target, c->target, sizeof target);
        if (failed)
            secrets_wipe(c);
    }
    pthread_mutex_unlock(&my_lock);
    /* Made by our mysql_init: it becomes a connection now. Otherwise (a
     * MYSQL the program initialised before we were there) tracked now. */
    if (registry_set_connected(m, failed, fd, target, c))
        lc_track_connected(lc_kind_id(&lc_mysql_kind), m, target, failed, ssl);
    else
        lc_track_connect(lc_kind_id(&lc_mysql_kind), m, 0, failed, fd, target, c, ssl);
    if (LC_UNLIKELY(__atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE)))
        lc_up.close_late(m);
}

static int real_close(void *m)
{
    void (*real)(MYSQL *) = MY_HOOKED(mysql_close);
    if (real)
        real(m);
    return 0;
}

LC_EXPORT void mysql_close(MYSQL *mysql)
{
    if (mysql == NULL || lc_depth > 0 || (lc_active() && inside_mysql())) {
        real_close(mysql);
        return;
    }
    my_close(mysql, real_close);
}

int my_close(MYSQL *m, int (*do_free)(void *))
{
    struct lc_entry info;
    int tracked;
    int r = lc_up.free_tracked(m, do_free, &info, &tracked);
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c) {
        HASH_DEL(conns, c);
        if (c->pending)
            __atomic_sub_fetch(&n_pending, 1, __ATOMIC_RELEASE);
        if (c->stream)
            link_del_locked(&streams, &n_streams, c->stream);
    }
    pthread_mutex_unlock(&my_lock);
    /* An abandoned KILL request still reads the credentials (cancel NULL
     * then): they stay, unreachable, rather than be freed under it. */
    if (c && (!tracked || info.cancel == c))
        conn_free(c);
    return r;
}

void my_mark_pending(MYSQL *m)
{
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c && !c->pending) {
        c->pending = 1;
        __atomic_add_fetch(&n_pending, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&my_lock);
}

void my_async_set(MYSQL *m, int in_progress)
{
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c)
        c->async = in_progress;
    pthread_mutex_unlock(&my_lock);
}

/* ---- query path: the gate and the per-thread in-flight slot ---- */

#define MY_QUERY_HOOK(ret, failval, name, params, args)                                        \
    LC_TRACKED_CALL_HOOK(MY_HOOKED, ret, failval, name, mysql, params, args)

MY_QUERY_HOOK(MYSQL_RES *, NULL, mysql_store_result, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(int, 1, mysql_next_result, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(int, 1, mysql_ping, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(int, 1, mysql_reset_connection, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(int, 1, mysql_select_db, (MYSQL * mysql, const char *db), (mysql, db))
MY_QUERY_HOOK(my_bool, 1, mysql_commit, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(my_bool, 1, mysql_rollback, (MYSQL * mysql), (mysql))
MY_QUERY_HOOK(my_bool, 1, mysql_autocommit, (MYSQL * mysql, my_bool mode), (mysql, mode))

/* The KILL connection must log in as the session's user: a successful
 * mysql_change_user replaces the user and password kept for it. */
void my_change_user_done(MYSQL *m, const char *user, const char *passwd)
{
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c) {
        struct my_conn old = *c; /* host and socket live in the block being replaced */
        char *keep = old.secrets;
        c->secrets = NULL;
        secrets_keep(c, old.host, user, passwd, old.unix_socket, old.port);
        if (keep) {
            explicit_bzero(keep, old.secrets_len);
            free(keep);
        }
    }
    pthread_mutex_unlock(&my_lock);
}

/* A call that starts a new command: what was pending or streamed is over. */
#define MY_COMMAND_HOOK(ret, failval, name, params, args, after)                               \
    LC_EXPORT ret name params                                                                  \
    {                                                                                          \
        ret(*real) params = MY_HOOKED(name);                                                   \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return failval;                                                                    \
        my_new_command(mysql);                                                                 \
        INFLIGHT_ENTER(mysql);                                                                 \
        ret r = real args;                                                                     \
        INFLIGHT_LEAVE(mysql);                                                                 \
        after;                                                                                 \
        return r;                                                                              \
    }

MY_COMMAND_HOOK(int, 1, mysql_query, (MYSQL * mysql, const char *q), (mysql, q), (void)0)
MY_COMMAND_HOOK(int, 1, mysql_real_query, (MYSQL * mysql, const char *q, unsigned long length),
                (mysql, q, length), (void)0)
/* The query is on its way and nobody waits for its result: the server works
 * for a caller that is not inside the library. */
MY_COMMAND_HOOK(int, 1, mysql_send_query, (MYSQL * mysql, const char *q, unsigned long length),
                (mysql, q, length), if (r == 0 && lc_active()) my_mark_pending(mysql))
MY_COMMAND_HOOK(my_bool, 1, mysql_read_query_result, (MYSQL * mysql), (mysql), (void)0)
MY_COMMAND_HOOK(my_bool, 1, mysql_change_user,
                (MYSQL * mysql, const char *user, const char *passwd, const char *db),
                (mysql, user, passwd, db),
                if (r == 0 && lc_depth == 0 && lc_active())
                    my_change_user_done(mysql, user, passwd))

/* Rows come as the program reads them: until the last one (or the free), the
 * server is sending for a caller that may be anywhere. */
LC_EXPORT MYSQL_RES *mysql_use_result(MYSQL *mysql)
{
    MYSQL_RES *(*real)(MYSQL *) = MY_HOOKED(mysql_use_result);
    if (LC_UNLIKELY(real == NULL))
        return NULL;
    INFLIGHT_ENTER(mysql);
    MYSQL_RES *res = real(mysql);
    INFLIGHT_LEAVE(mysql);
    if (res && lc_depth == 0 && lc_active()) {
        link_add(&streams, &n_streams, res, mysql);
        pthread_mutex_lock(&my_lock);
        struct my_conn *c = conn_find_locked(mysql);
        if (c)
            c->stream = res;
        pthread_mutex_unlock(&my_lock);
    }
    return res;
}

MYSQL *my_stream_conn(MYSQL_RES *res)
{
    if (LC_LIKELY(__atomic_load_n(&n_streams, __ATOMIC_ACQUIRE) == 0) || res == NULL)
        return NULL;
    return link_find(&streams, res);
}

LC_EXPORT MYSQL_ROW mysql_fetch_row(MYSQL_RES *result)
{
    MYSQL_ROW (*real)(MYSQL_RES *) = MY_HOOKED(mysql_fetch_row);
    if (LC_UNLIKELY(real == NULL))
        return NULL;
    MYSQL *m = my_stream_conn(result);
    if (m == NULL)
        return real(result); /* a stored set: rows are in memory */
    INFLIGHT_ENTER(m);
    MYSQL_ROW row = real(result);
    INFLIGHT_LEAVE(m);
    if (row == NULL)
        my_stream_end(result);
    return row;
}

LC_EXPORT void mysql_free_result(MYSQL_RES *result)
{
    void (*real)(MYSQL_RES *) = MY_HOOKED(mysql_free_result);
    if (LC_UNLIKELY(real == NULL))
        return;
    MYSQL *m = my_stream_conn(result);
    if (m == NULL) {
        real(result);
        return;
    }
    /* Freeing an unfinished streamed set reads the rest of its rows. */
    INFLIGHT_ENTER(m);
    real(result);
    INFLIGHT_LEAVE(m);
    my_stream_end(result);
}

/* Prepared statements: which connection each one talks on. */
LC_EXPORT MYSQL_STMT *mysql_stmt_init(MYSQL *mysql)
{
    MYSQL_STMT *(*real)(MYSQL *) = MY_HOOKED(mysql_stmt_init);
    if (LC_UNLIKELY(real == NULL))
        return NULL;
    MYSQL_STMT *s = real(mysql);
    if (s && lc_depth == 0 && lc_active())
        link_add(&stmts, &n_stmts, s, mysql);
    return s;
}

#define MY_STMT_HOOK(ret, failval, name, params, args)                                         \
    LC_EXPORT ret name params                                                                  \
    {                                                                                          \
        ret(*real) params = MY_HOOKED(name);                                                   \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return failval;                                                                    \
        MYSQL *m = my_stmt_conn(stmt);                                                         \
        if (m == NULL)                                                                         \
            return real args;                                                                  \
        INFLIGHT_ENTER(m);                                                                     \
        ret r = real args;                                                                     \
        INFLIGHT_LEAVE(m);                                                                     \
        return r;                                                                              \
    }

MY_STMT_HOOK(int, 1, mysql_stmt_prepare, (MYSQL_STMT * stmt, const char *q, unsigned long len),
             (stmt, q, len))
MY_STMT_HOOK(int, 1, mysql_stmt_execute, (MYSQL_STMT * stmt), (stmt))
MY_STMT_HOOK(int, 1, mysql_stmt_fetch, (MYSQL_STMT * stmt), (stmt))
MY_STMT_HOOK(int, 1, mysql_stmt_store_result, (MYSQL_STMT * stmt), (stmt))
MY_STMT_HOOK(int, 1, mysql_stmt_next_result, (MYSQL_STMT * stmt), (stmt))
MY_STMT_HOOK(my_bool, 1, mysql_stmt_reset, (MYSQL_STMT * stmt), (stmt))
MY_STMT_HOOK(my_bool, 1, mysql_stmt_free_result, (MYSQL_STMT * stmt), (stmt))

LC_EXPORT my_bool mysql_stmt_close(MYSQL_STMT *stmt)
{
    my_bool (*real)(MYSQL_STMT *) = MY_HOOKED(mysql_stmt_close);
    if (LC_UNLIKELY(real == NULL))
        return 1;
    MYSQL *m = my_stmt_conn(stmt);
    if (m == NULL)
        return real(stmt);
    INFLIGHT_ENTER(m);
    my_bool r = real(stmt);
    INFLIGHT_LEAVE(m);
    my_stmt_forget(stmt);
    return r;
}

MYSQL *my_stmt_conn(MYSQL_STMT *stmt)
{
    if (__atomic_load_n(&n_stmts, __ATOMIC_ACQUIRE) == 0 || stmt == NULL)
        return NULL;
    return link_find(&stmts, stmt);
}

void my_stmt_forget(MYSQL_STMT *stmt)
{
    pthread_mutex_lock(&my_lock);
    link_del_locked(&stmts, &n_stmts, stmt);
    pthread_mutex_unlock(&my_lock);
}

