/* Shared between the files of the MySQL kind: the per-connection state
 * (state.c), the hooks of the blocking API (hooks.c) and of the non-blocking
 * one (async.c), and how a MySQL connection is closed (close.c).
 *
 * No MySQL header is used: the client library's types stay opaque here, so
 * the shim builds (and knows MySQL) on a machine without libmariadb-dev. */
#ifndef LC_KIND_MYSQL_H
#define LC_KIND_MYSQL_H

#include <pthread.h>
#include <stddef.h>
#include <uthash.h>

#include "core/registry.h"
#include "platform/symbols.h"
#include "track/kind.h"

/* The kind's entry in the kind table (close.c). */
extern const struct lc_kind lc_mysql_kind;

typedef struct st_mysql MYSQL;
typedef struct st_mysql_res MYSQL_RES;
typedef struct st_mysql_stmt MYSQL_STMT;
typedef char **MYSQL_ROW;
typedef char my_bool;

#define MY_HOOKED(name) HOOKED_REAL_IN(&my_lib, name)

/* The connect path, in two halves around the library's connect (blocking, or
 * spread over _start/_cont calls): BEGIN keeps the arguments the KILL
 * connection needs (in memory only) and the target; END tracks the handle,
 * connected or FAILED (then the credentials are wiped). */
void my_connect_begin(MYSQL *m, const char *host, const char *user, const char *passwd,
                      const char *db, unsigned port, const char *unix_socket);
void my_connect_end(MYSQL *m, int failed);
/* The program closes M: untracked, its state wiped; DO_FREE is the real
 * close (mysql_close, or mysql_close_start). Returns DO_FREE's result. */
int my_close(MYSQL *m, int (*do_free)(void *));

/* mysql_change_user succeeded on M: the KILL connection logs in as USER now. */
void my_change_user_done(MYSQL *m, const char *user, const char *passwd);
/* A new command on M: what was pending or streamed before is over. */
void my_new_command(MYSQL *m);
/* mysql_send_query sent M's query; nobody reads its result yet. */
void my_mark_pending(MYSQL *m);
/* A non-blocking call on M is (IN_PROGRESS) or is no longer under way: the
 * server may be working for a caller that is not inside the library. */
void my_async_set(MYSQL *m, int in_progress);

/* The connection a streamed (mysql_use_result) set reads, or NULL. */
MYSQL *my_stream_conn(MYSQL_RES *res);
void my_stream_end(MYSQL_RES *res);
/* The connection a prepared statement talks on, or NULL. */
MYSQL *my_stmt_conn(MYSQL_STMT *stmt);
void my_stmt_forget(MYSQL_STMT *stmt);


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

/* Every client library function the kind calls outside the hooks' own real
 * calls (the KILL connection's among them), resolved at the first tracked
 * handle (see kinds.h): the drain and its cancel helpers only read the caches. */
#define MY_REALS(X)                                                                            \
    X(mysql_init) X(mysql_real_connect) X(mysql_query) X(mysql_close) X(mysql_thread_id)      \
    X(mysql_error) X(mysql_get_socket) X(mysql_get_ssl_cipher) X(mariadb_get_infov)
#define MY_REAL_INDEX(fn) myr_##fn,
enum { MY_REALS(MY_REAL_INDEX) myr_count };
extern void *my_real_cache[myr_count];
extern struct lc_reals my_reals;
/* libmariadb (MariaDB Connector/C) or libmysqlclient (state.c). */
extern struct lc_lib my_lib;
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

/* ---- state.c ---- */
extern pthread_mutex_t my_lock;
extern struct my_conn *conns;
extern struct my_link *streams, *stmts;
/* Read without the lock on the row path: nothing streamed, nothing to look up. */
extern int n_streams, n_pending, n_stmts;

/* The credentials, in one wiped block. */
void secrets_keep(struct my_conn *c, const char *host, const char *user, const char *passwd,
                  const char *unix_socket, unsigned port);
void secrets_wipe(struct my_conn *c);
void conn_free(void *p);
/* Under my_lock: M's state, or NULL; or made now (NULL when out of memory). */
struct my_conn *conn_find_locked(MYSQL *m);
struct my_conn *conn_get_locked(MYSQL *m);
/* The streamed results' and statements' tables. */
void link_add(struct my_link **table, int *count, void *key, MYSQL *m);
MYSQL *link_find(struct my_link **table, void *key);
void link_del_locked(struct my_link **table, int *count, void *key);
/* M's socket: libmariadb's accessor, or libmysqlclient's NET fd (checked
 * against the socket seen at connect time before it is used). */
int my_socket_of(MYSQL *m);

#endif
