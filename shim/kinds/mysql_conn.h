/* What mysql.c (the blocking API and the drain) shares with mysql_async.c
 * (the non-blocking _start/_cont API). The client library's types stay
 * opaque: no MySQL header is needed to build the shim. */
#ifndef LC_MYSQL_CONN_H
#define LC_MYSQL_CONN_H

typedef struct st_mysql MYSQL;
typedef struct st_mysql_res MYSQL_RES;
typedef struct st_mysql_stmt MYSQL_STMT;
typedef char **MYSQL_ROW;
typedef char my_bool;

#define MY_HOOKED(name) HOOKED_REAL_IN(LC_LIB_MYSQL, name)

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

#endif
