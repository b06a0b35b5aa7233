/* Interposition of the MySQL/MariaDB client library (MariaDB Connector/C,
 * or Oracle's libmysqlclient: the same exported names): mysql_init, the
 * connects, mysql_close, the calls that wait for the server (for the gate and
 * in-flight tracking), and how a MySQL connection is closed.
 *
 * No MySQL header is used: the client library's types stay opaque here, so the
 * shim builds (and knows MySQL) on a machine without libmariadb-dev. */
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
#include "kinds/mysql_conn.h"

/* Out of memory: the handle goes untracked, the program goes on. */
static int my_oom; /* under my_lock */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (my_oom = 1)
#include <uthash.h>

/* The library's prototypes, as both implementations declare them. */
MYSQL *mysql_init(MYSQL *mysql);
MYSQL *mysql_real_connect(MYSQL *mysql, const char *host, const char *user, const char *passwd,
                          const char *db, unsigned int port, const char *unix_socket,
                          unsigned long clientflag);
void mysql_close(MYSQL *mysql);
int mysql_query(MYSQL *mysql, const char *q);
int mysql_real_query(MYSQL *mysql, const char *q, unsigned long length);
int mysql_send_query(MYSQL *mysql, const char *q, unsigned long length);
my_bool mysql_read_query_result(MYSQL *mysql);
MYSQL_RES *mysql_store_result(MYSQL *mysql);
MYSQL_RES *mysql_use_result(MYSQL *mysql);
MYSQL_ROW mysql_fetch_row(MYSQL_RES *result);
void mysql_free_result(MYSQL_RES *result);
int mysql_next_result(MYSQL *mysql);
int mysql_ping(MYSQL *mysql);
my_bool mysql_change_user(MYSQL *mysql, const char *user, const char *passwd, const char *db);
int mysql_reset_connection(MYSQL *mysql);
int mysql_select_db(MYSQL *mysql, const char *db);
my_bool mysql_commit(MYSQL *mysql);
my_bool mysql_rollback(MYSQL *mysql);
my_bool mysql_autocommit(MYSQL *mysql, my_bool mode);
MYSQL_STMT *mysql_stmt_init(MYSQL *mysql);
int mysql_stmt_prepare(MYSQL_STMT *stmt, const char *query, unsigned long length);
int mysql_stmt_execute(MYSQL_STMT *stmt);
int mysql_stmt_fetch(MYSQL_STMT *stmt);
int mysql_stmt_store_result(MYSQL_STMT *stmt);
int mysql_stmt_next_result(MYSQL_STMT *stmt);
my_bool mysql_stmt_reset(MYSQL_STMT *stmt);
my_bool mysql_stmt_free_result(MYSQL_STMT *stmt);
my_bool mysql_stmt_close(MYSQL_STMT *stmt);
unsigned long mysql_thread_id(MYSQL *mysql);
const char *mysql_error(MYSQL *mysql);
int mysql_get_socket(MYSQL *mysql);
const char *mysql_get_ssl_cipher(MYSQL *mysql);
my_bool mariadb_get_infov(MYSQL *mysql, int value, void *arg, ...);

/* Every client library function this file calls outside the hooks' own real
 * calls (the KILL connection's among them), resolved at the first tracked
 * handle (see kinds.h): the drain and its cancel helpers only read the caches. */
#define MY_REALS(X)                                                                            \
    X(mysql_init) X(mysql_real_connect) X(mysql_query) X(mysql_close) X(mysql_thread_id)      \
    X(mysql_error) X(mysql_get_socket) X(mysql_get_ssl_cipher) X(mariadb_get_infov)
#define MY_REAL_INDEX(fn) myr_##fn,
enum { MY_REALS(MY_REAL_INDEX) myr_count };
static const char *const my_real_names[] = {MY_REALS(LC_REALS_NAME)};
static void *my_real_cache[myr_count];
static struct lc_reals my_reals = {LC_LIB_MYSQL, myr_count, my_real_names, my_real_cache, 0};
#define MY(fn) ((__typeof__(&fn))lc_real(&my_real_cache[myr_##fn], &my_reals, myr_##fn))

/* mariadb_get_infov's MARIADB_CONNECTION_SERVER_STATUS (Connector/C 3.x) and
 * the server status bit of an open transaction. */
enum { MY_INFO_SERVER_STATUS = 30, MY_STATUS_IN_TRANS = 1 };

/* ---- per-connection state ----
 * The credentials a KILL QUERY connection needs, captured on the connect
 * path: in memory only, never logged or reported, wiped when the handle is
 * freed. The entry's `cancel` points here. Two flags the drain reads: a query
 * sent with mysql_send_query whose result nobody reads yet, and a result set
 * being streamed (mysql_use_result). */
struct my_conn {
    UT_hash_handle hh;
    MYSQL *mysql;          /* key */
    char *secrets;         /* one block: host, user, password, socket; wiped */
    size_t secrets_len;
    const char *host, *user, *passwd, *unix_socket;
    unsigned port;
    int pending;           /* mysql_send_query answered by no read yet */
    int async;             /* a non-blocking call is under way */
    MYSQL_RES *stream;     /* mysql_use_result's set, rows still to come */
    char target[LC_TARGET_MAX];
};

/* A MYSQL_RES being streamed, or a MYSQL_STMT: which connection it reads. */
struct my_link {
    UT_hash_handle hh;
    void *key;
    MYSQL *mysql;
};

static pthread_mutex_t my_lock = PTHREAD_MUTEX_INITIALIZER;
static struct my_conn *conns;
static struct my_link *streams, *stmts;
/* Read without the lock on the row path: nothing streamed, nothing to look up. */
static int n_streams, n_pending, n_stmts;

static void secrets_wipe(struct my_conn *c)
{
    if (c->secrets) {
        explicit_bzero(c->secrets, c->secrets_len);
        free(c->secrets);
    }
    c->secrets = NULL;
    c->secrets_len = 0;
    c->host = c->user = c->passwd = c->unix_socket = NULL;
}

static void conn_free(void *p)
{
    struct my_conn *c = p;
    if (c == NULL)
        return;
    secrets_wipe(c);
    free(c);
}

/* Copies of the connect arguments, in one block (NULL stays NULL). */
static void secrets_keep(struct my_conn *c, const char *host, const char *user, const char *passwd,
                         const char *unix_socket, unsigned port)
{
    const char *src[4] = {host, user, passwd, unix_socket};
    size_t len = 0;
    for (int i = 0; i < 4; i++)
        len += src[i] ? strlen(src[i]) + 1 : 0;
    char *block = len ? malloc(len) : NULL;
    secrets_wipe(c);
    c->port = port;
    if (block == NULL)
        return;
    const char **dst[4] = {&c->host, &c->user, &c->passwd, &c->unix_socket};
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
        if (src[i] == NULL)
            continue;
        size_t l = strlen(src[i]) + 1;
        memcpy(block + at, src[i], l);
        *dst[i] = block + at;
        at += l;
    }
    c->secrets = block;
    c->secrets_len = len;
}

/* A fork child must not inherit my_lock held by a thread that is not there. */
static void my_atfork_prepare(void)
{
    pthread_mutex_lock(&my_lock);
}

static void my_atfork_parent(void)
{
    pthread_mutex_unlock(&my_lock);
}

static void my_atfork_child(void)
{
    pthread_mutex_unlock(&my_lock); /* taken by this very thread in prepare */
}

static struct my_conn *conn_find_locked(MYSQL *m)
{
    struct my_conn *c = NULL;
    HASH_FIND_PTR(conns, &m, c);
    return c;
}

/* The state of M, made if missing (locked). */
static struct my_conn *conn_get_locked(MYSQL *m)
{
    struct my_conn *c = conn_find_locked(m);
    if (c)
        return c;
    /* Only processes that use MySQL pay for the handlers; the first state is
     * made under the lock, so this runs once (registered under it too: a
     * fork cannot come between). */
    static int atfork_done;
    if (!atfork_done) {
        atfork_done = 1;
        pthread_atfork(my_atfork_prepare, my_atfork_parent, my_atfork_child);
    }
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->mysql = m;
    my_oom = 0;
    HASH_ADD_PTR(conns, mysql, c);
    if (my_oom) {
        free(c);
        return NULL;
    }
    return c;
}

static void link_add(struct my_link **table, int *count, void *key, MYSQL *m)
{
    pthread_mutex_lock(&my_lock);
    struct my_link *l = NULL;
    HASH_FIND_PTR(*table, &key, l);
    if (l == NULL && (l = calloc(1, sizeof *l)) != NULL) {
        l->key = key;
        my_oom = 0;
        HASH_ADD_PTR(*table, key, l);
        if (my_oom) {
            free(l);
            l = NULL;
        } else if (count) {
            __atomic_add_fetch(count, 1, __ATOMIC_RELEASE);
        }
    }
    if (l)
        l->mysql = m;
    pthread_mutex_unlock(&my_lock);
}

static MYSQL *link_find(struct my_link **table, void *key)
{
    pthread_mutex_lock(&my_lock);
    struct my_link *l = NULL;
    HASH_FIND_PTR(*table, &key, l);
    MYSQL *m = l ? l->mysql : NULL;
    pthread_mutex_unlock(&my_lock);
    return m;
}

static void link_del_locked(struct my_link **table, int *count, void *key)
{
    struct my_link *l = NULL;
    HASH_FIND_PTR(*table, &key, l);
    if (l == NULL)
        return;
    HASH_DEL(*table, l);
    free(l);
    if (count)
        __atomic_sub_fetch(count, 1, __ATOMIC_RELEASE);
}

/* A streamed set is over (all rows read, or freed). */
void my_stream_end(MYSQL_RES *res)
{
    pthread_mutex_lock(&my_lock);
    struct my_link *l = NULL;
    HASH_FIND_PTR(streams, &res, l);
    if (l) {
        struct my_conn *c = conn_find_locked(l->mysql);
        if (c && c->stream == res)
            c->stream = NULL;
        link_del_locked(&streams, &n_streams, res);
    }
    pthread_mutex_unlock(&my_lock);
}

/* A new command on M: whatever was pending or streamed before is over. */
void my_new_command(MYSQL *m)
{
    if (__atomic_load_n(&n_pending, __ATOMIC_ACQUIRE) == 0 &&
        __atomic_load_n(&n_streams, __ATOMIC_ACQUIRE) == 0)
        return;
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(m);
    if (c) {
        if (c->pending) {
            c->pending = 0;
            __atomic_sub_fetch(&n_pending, 1, __ATOMIC_RELEASE);
        }
        if (c->stream) {
            link_del_locked(&streams, &n_streams, c->stream);
            c->stream = NULL;
        }
    }
    pthread_mutex_unlock(&my_lock);
}

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

static int my_socket_of(MYSQL *m)
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
        lc_track_unconnected(LC_KIND_MYSQL, m, "(never connected)", c);
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
        lc_track_connected(LC_KIND_MYSQL, m, target, failed, ssl);
    else
        lc_track_connect(LC_KIND_MYSQL, m, 0, failed, fd, target, c, ssl);
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

/* ---- drain operations ---- */

static int my_socket_fd(struct lc_entry *e)
{
    if (e->failed)
        return -1;
    /* libmariadb's accessor is the truth (a reconnect changes the socket); a
     * guess about libmysqlclient's struct is trusted only if it names the
     * socket seen on the connect path. */
    int fd = my_socket_of(e->handle);
    if (MY(mysql_get_socket))
        return fd;
    return fd >= 0 && fd == e->fd ? fd : -1;
}

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* A query sent with mysql_send_query whose answer has not started to arrive,
 * or a streamed result set not read to its end. Once cancelled, what the
 * server still sends is read while waiting for its EOF. */
static int my_server_busy(struct lc_entry *e, int fd, int cancelled)
{
    if (cancelled || fd < 0)
        return 0;
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(e->handle);
    int pending = c && c->pending, stream = c && c->stream, async = c && c->async;
    pthread_mutex_unlock(&my_lock);
    return stream || async || (pending && !readable(fd));
}

static int my_server_may_send(struct lc_entry *e)
{
    pthread_mutex_lock(&my_lock);
    struct my_conn *c = conn_find_locked(e->handle);
    int r = c && (c->pending || c->stream || c->async);
    pthread_mutex_unlock(&my_lock);
    return r;
}

/* KILL QUERY <thread id> over a connection of our own, made with the
 * credentials the program connected with. Runs on a drain helper thread. */
static void my_cancel(struct lc_entry *e)
{
    struct my_conn *c = e->cancel;
    MYSQL *(*init)(MYSQL *) = MY(mysql_init);
    MYSQL *(*connect)(MYSQL *, const char *, const char *, const char *, const char *, unsigned,
                      const char *, unsigned long) = MY(mysql_real_connect);
    int (*query)(MYSQL *, const char *) = MY(mysql_query);
    void (*close)(MYSQL *) = MY(mysql_close);
    if (c == NULL || init == NULL || connect == NULL || query == NULL || close == NULL ||
        MY(mysql_thread_id) == NULL)
        return;
    unsigned long id = MY(mysql_thread_id)(e->handle);
    /* The slot says "lastcall's own call": the library's calls to its own
     * exports pass our hooks as nested ones, gate or not. */
    void *prev = lc_inflight;
    __atomic_store_n(&lc_inflight, LC_OWN_CALL, __ATOMIC_RELEASE);
    lc_depth++;
    MYSQL *k = init(NULL);
    if (k && connect(k, c->host, c->user, c->passwd, NULL, c->port, c->unix_socket, 0)) {
        char sql[48];
        snprintf(sql, sizeof sql, "KILL QUERY %lu", id);
        if (query(k, sql) != 0 && MY(mysql_error))
            LC_INFO("KILL QUERY on %s failed: %s", e->target, MY(mysql_error)(k));
    } else if (k && MY(mysql_error)) {
        LC_INFO("cannot connect to %s to cancel a query: %s", e->target, MY(mysql_error)(k));
    }
    if (k)
        close(k);
    lc_depth--;
    __atomic_store_n(&lc_inflight, prev, __ATOMIC_RELEASE);
}

/* The client library writes each command whole before it returns: with no
 * thread inside and no query pending, nothing of the program's is buffered. */
static int my_flush(struct lc_entry *e, int fd, int64_t until_ms)
{
    (void)fd;
    (void)until_ms;
    return e->failed ? LC_FLUSH_GIVE_UP : LC_FLUSH_NOTHING;
}

/* COM_QUIT: a 1-byte packet, sequence 0. The server rolls back an open
 * transaction and closes without an "Aborted connection" warning; its EOF
 * then says it has read everything (goodbye_wait). Over TLS it would have to
 * go through the library's TLS session, which we do not reach: the
 * connection then ends with our FIN alone. */
static void my_terminate(struct lc_entry *e, int fd)
{
    static const unsigned char quit[5] = {1, 0, 0, 0, 1};
    if (MY(mysql_get_ssl_cipher) && MY(mysql_get_ssl_cipher)(e->handle) != NULL)
        return;
    ssize_t w;
    do
        w = send(fd, quit, sizeof quit, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
}

static int my_in_transaction(struct lc_entry *e)
{
    unsigned status = 0;
    if (e->failed || MY(mariadb_get_infov) == NULL)
        return 0;
    if (MY(mariadb_get_infov)(e->handle, MY_INFO_SERVER_STATUS, &status) != 0)
        return 0;
    return (status & MY_STATUS_IN_TRANS) != 0;
}

const struct lc_kind lc_mysql_kind = {
    .name = "MySQL",
    .json = "mysql",
    .goodbye_wait = LC_GOODBYE_EOF,
    .socket_fd = my_socket_fd,
    .server_busy = my_server_busy,
    .cancel = my_cancel,
    .flush = my_flush,
    .terminate = my_terminate,
    .server_may_send = my_server_may_send,
    .in_transaction = my_in_transaction,
    .free_cancel = NULL, /* the state is freed by mysql_close's hook */
};
