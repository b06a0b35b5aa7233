/* MariaDB Connector/C's non-blocking API: each X_start/X_cont pair runs the
 * blocking X on a coroutine of the library's own, which returns to the
 * caller whenever the socket would block and is resumed by the next _cont.
 *
 * The blocking X calls its hook (the library calls its own exports through
 * the PLT) on that coroutine, and may be suspended half-way through it: the
 * hook's thread-local bookkeeping would stay behind on the caller's thread
 * (the depth count raised, the slot naming the handle) while the program runs
 * on. So every _start/_cont call raises the depth and fills the slot itself
 * (the inner hooks then see a nested call: no tracking, no gate) and puts both
 * back when the library returns, suspended or done. What the inner hooks would
 * have done is done here, when the call completes (a status of 0). Between
 * the calls of an unfinished operation, no thread is inside the library but
 * the server may be working for it: the connection counts as busy then. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>

#include "track/inflight.h"
#include "core/compiler.h"
#include "kinds/mysql/mysql.h"
#include "core/process.h"
#include "platform/symbols.h"

int mysql_real_connect_start(MYSQL **ret, MYSQL *mysql, const char *host, const char *user,
                             const char *passwd, const char *db, unsigned int port,
                             const char *unix_socket, unsigned long clientflag);
int mysql_real_connect_cont(MYSQL **ret, MYSQL *mysql, int status);
int mysql_close_start(MYSQL *mysql);
int mysql_close_cont(MYSQL *mysql, int status);
int mysql_query_start(int *ret, MYSQL *mysql, const char *q);
int mysql_query_cont(int *ret, MYSQL *mysql, int status);
int mysql_real_query_start(int *ret, MYSQL *mysql, const char *q, unsigned long length);
int mysql_real_query_cont(int *ret, MYSQL *mysql, int status);
int mysql_send_query_start(int *ret, MYSQL *mysql, const char *q, unsigned long length);
int mysql_send_query_cont(int *ret, MYSQL *mysql, int status);
int mysql_read_query_result_start(my_bool *ret, MYSQL *mysql);
int mysql_read_query_result_cont(my_bool *ret, MYSQL *mysql, int status);
int mysql_store_result_start(MYSQL_RES **ret, MYSQL *mysql);
int mysql_store_result_cont(MYSQL_RES **ret, MYSQL *mysql, int status);
int mysql_next_result_start(int *ret, MYSQL *mysql);
int mysql_next_result_cont(int *ret, MYSQL *mysql, int status);
int mysql_ping_start(int *ret, MYSQL *mysql);
int mysql_ping_cont(int *ret, MYSQL *mysql, int status);
int mysql_change_user_start(my_bool *ret, MYSQL *mysql, const char *user, const char *passwd,
                            const char *db);
int mysql_change_user_cont(my_bool *ret, MYSQL *mysql, int status);
int mysql_reset_connection_start(int *ret, MYSQL *mysql);
int mysql_reset_connection_cont(int *ret, MYSQL *mysql, int status);
int mysql_select_db_start(int *ret, MYSQL *mysql, const char *db);
int mysql_select_db_cont(int *ret, MYSQL *mysql, int status);
int mysql_commit_start(my_bool *ret, MYSQL *mysql);
int mysql_commit_cont(my_bool *ret, MYSQL *mysql, int status);
int mysql_rollback_start(my_bool *ret, MYSQL *mysql);
int mysql_rollback_cont(my_bool *ret, MYSQL *mysql, int status);
int mysql_autocommit_start(my_bool *ret, MYSQL *mysql, my_bool mode);
int mysql_autocommit_cont(my_bool *ret, MYSQL *mysql, int status);
int mysql_set_character_set_start(int *ret, MYSQL *mysql, const char *csname);
int mysql_set_character_set_cont(int *ret, MYSQL *mysql, int status);
int mysql_fetch_row_start(MYSQL_ROW *ret, MYSQL_RES *result);
int mysql_fetch_row_cont(MYSQL_ROW *ret, MYSQL_RES *result, int status);
int mysql_free_result_start(MYSQL_RES *result);
int mysql_free_result_cont(MYSQL_RES *result, int status);
int mysql_stmt_prepare_start(int *ret, MYSQL_STMT *stmt, const char *q, unsigned long length);
int mysql_stmt_prepare_cont(int *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_execute_start(int *ret, MYSQL_STMT *stmt);
int mysql_stmt_execute_cont(int *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_fetch_start(int *ret, MYSQL_STMT *stmt);
int mysql_stmt_fetch_cont(int *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_store_result_start(int *ret, MYSQL_STMT *stmt);
int mysql_stmt_store_result_cont(int *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_next_result_start(int *ret, MYSQL_STMT *stmt);
int mysql_stmt_next_result_cont(int *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_reset_start(my_bool *ret, MYSQL_STMT *stmt);
int mysql_stmt_reset_cont(my_bool *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_free_result_start(my_bool *ret, MYSQL_STMT *stmt);
int mysql_stmt_free_result_cont(my_bool *ret, MYSQL_STMT *stmt, int status);
int mysql_stmt_close_start(my_bool *ret, MYSQL_STMT *stmt);
int mysql_stmt_close_cont(my_bool *ret, MYSQL_STMT *stmt, int status);

/* The library's call, with the depth raised and the slot naming HANDLE (which
 * may be NULL: a stored result, an unknown statement). */
/* The outer-frame count too: a hook suspended half-way may have pushed one. */
#define MY_ASYNC_CALL(handle, call)                                                            \
    ({                                                                                         \
        int lc_depth_ = lc_depth;                                                              \
        INFLIGHT_ENTER(handle);                                                                \
        unsigned lc_outer_n_ = lc_outer.n;                                                     \
        lc_depth = lc_depth_ + 1;                                                              \
        int lc_status_ = call;                                                                 \
        lc_depth = lc_depth_;                                                                  \
        __atomic_store_n(&lc_outer.n, lc_outer_n_, __ATOMIC_RELEASE);                          \
        INFLIGHT_LEAVE(handle);                                                                \
        lc_status_;                                                                            \
    })

/* After a call on connection M: under way or done. */
static int finished(MYSQL *m, int status)
{
    if (m && lc_depth == 0)
        my_async_set(m, status != 0);
    return status == 0;
}

/* ---- connect and close ---- */

LC_EXPORT int mysql_real_connect_start(MYSQL **ret, MYSQL *mysql, const char *host,
                                       const char *user, const char *passwd, const char *db,
                                       unsigned int port, const char *unix_socket,
                                       unsigned long clientflag)
{
    __typeof__(&mysql_real_connect_start) real = MY_HOOKED(mysql_real_connect_start);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    if (lc_depth > 0 || !lc_active() || mysql == NULL)
        return real(ret, mysql, host, user, passwd, db, port, unix_socket, clientflag);
    my_connect_begin(mysql, host, user, passwd, db, port, unix_socket);
    int status = MY_ASYNC_CALL(LC_CONNECTING, real(ret, mysql, host, user, passwd, db, port,
                                                   unix_socket, clientflag));
    if (status == 0)
        my_connect_end(mysql, *ret == NULL);
    return status;
}

LC_EXPORT int mysql_real_connect_cont(MYSQL **ret, MYSQL *mysql, int status)
{
    __typeof__(&mysql_real_connect_cont) real = MY_HOOKED(mysql_real_connect_cont);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    if (lc_depth > 0 || !lc_active() || mysql == NULL)
        return real(ret, mysql, status);
    int st = MY_ASYNC_CALL(LC_CONNECTING, real(ret, mysql, status));
    if (st == 0)
        my_connect_end(mysql, *ret == NULL);
    return st;
}

/* The handle leaves the registry at the start of its close (its memory goes
 * at the last _cont, which then runs as a plain call). */
static __thread int close_status;

static int real_close_start(void *m)
{
    __typeof__(&mysql_close_start) real = MY_HOOKED(mysql_close_start);
    close_status = real ? real(m) : 0;
    return close_status;
}

LC_EXPORT int mysql_close_start(MYSQL *mysql)
{
    __typeof__(&mysql_close_start) real = MY_HOOKED(mysql_close_start);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    if (mysql == NULL || lc_depth > 0 || !lc_active())
        return real(mysql);
    return my_close(mysql, real_close_start);
}

LC_EXPORT int mysql_close_cont(MYSQL *mysql, int status)
{
    __typeof__(&mysql_close_cont) real = MY_HOOKED(mysql_close_cont);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    lc_depth++; /* the inner mysql_close: already untracked */
    int r = real(mysql, status);
    lc_depth--;
    return r;
}

/* ---- calls on a connection ---- */

/* NAME_start(RET *, MYSQL *, ARGS...) and NAME_cont(RET *, MYSQL *, int);
 * AFTER runs when the call completes, with `ret` and `mysql` in scope. */
#define MY_ASYNC_PAIR(rettype, name, params, args, before, after)                              \
    LC_EXPORT int name##_start params                                                          \
    {                                                                                          \
        __typeof__(&name##_start) real = MY_HOOKED(name##_start);                              \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return 0;                                                                          \
        if (lc_depth > 0)                                                                      \
            return real args;                                                                  \
        before;                                                                                \
        int status = MY_ASYNC_CALL(mysql, real args);                                          \
        if (finished(mysql, status) && lc_active()) {                                          \
            after;                                                                             \
        }                                                                                      \
        return status;                                                                         \
    }                                                                                          \
    LC_EXPORT int name##_cont(rettype *ret, MYSQL *mysql, int status)                          \
    {                                                                                          \
        __typeof__(&name##_cont) real = MY_HOOKED(name##_cont);                                \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return 0;                                                                          \
        if (lc_depth > 0)                                                                      \
            return real(ret, mysql, status);                                                   \
        int st = MY_ASYNC_CALL(mysql, real(ret, mysql, status));                               \
        if (finished(mysql, st) && lc_active()) {                                              \
            after;                                                                             \
        }                                                                                      \
        return st;                                                                             \
    }

#define NEW_COMMAND my_new_command(mysql)
#define NOTHING (void)0

MY_ASYNC_PAIR(int, mysql_query, (int *ret, MYSQL *mysql, const char *q), (ret, mysql, q),
              NEW_COMMAND, NOTHING)
MY_ASYNC_PAIR(int, mysql_real_query, (int *ret, MYSQL *mysql, const char *q, unsigned long len),
              (ret, mysql, q, len), NEW_COMMAND, NOTHING)
MY_ASYNC_PAIR(int, mysql_send_query, (int *ret, MYSQL *mysql, const char *q, unsigned long len),
              (ret, mysql, q, len), NEW_COMMAND, if (*ret == 0) my_mark_pending(mysql))
MY_ASYNC_PAIR(my_bool, mysql_read_query_result, (my_bool * ret, MYSQL *mysql), (ret, mysql),
              NEW_COMMAND, NOTHING)
MY_ASYNC_PAIR(MYSQL_RES *, mysql_store_result, (MYSQL_RES * *ret, MYSQL *mysql), (ret, mysql),
              NOTHING, NOTHING)
MY_ASYNC_PAIR(int, mysql_next_result, (int *ret, MYSQL *mysql), (ret, mysql), NOTHING, NOTHING)
MY_ASYNC_PAIR(int, mysql_ping, (int *ret, MYSQL *mysql), (ret, mysql), NOTHING, NOTHING)
MY_ASYNC_PAIR(my_bool, mysql_change_user,
              (my_bool * ret, MYSQL *mysql, const char *user, const char *passwd, const char *db),
              (ret, mysql, user, passwd, db), NOTHING, NOTHING)
/* The credentials of mysql_change_user_start are not kept (the completion,
 * in _cont, no longer has them): a KILL after it logs in as the old user. */
MY_ASYNC_PAIR(int, mysql_reset_connection, (int *ret, MYSQL *mysql), (ret, mysql), NOTHING,
              NOTHING)
MY_ASYNC_PAIR(int, mysql_select_db, (int *ret, MYSQL *mysql, const char *db), (ret, mysql, db),
              NOTHING, NOTHING)
MY_ASYNC_PAIR(my_bool, mysql_commit, (my_bool * ret, MYSQL *mysql), (ret, mysql), NOTHING,
              NOTHING)
MY_ASYNC_PAIR(my_bool, mysql_rollback, (my_bool * ret, MYSQL *mysql), (ret, mysql), NOTHING,
              NOTHING)
MY_ASYNC_PAIR(my_bool, mysql_autocommit, (my_bool * ret, MYSQL *mysql, my_bool mode),
              (ret, mysql, mode), NOTHING, NOTHING)
MY_ASYNC_PAIR(int, mysql_set_character_set, (int *ret, MYSQL *mysql, const char *csname),
              (ret, mysql, csname), NOTHING, NOTHING)

/* ---- result sets: the connection only while a set is streamed ---- */

LC_EXPORT int mysql_fetch_row_start(MYSQL_ROW *ret, MYSQL_RES *result)
{
    __typeof__(&mysql_fetch_row_start) real = MY_HOOKED(mysql_fetch_row_start);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    MYSQL *m = lc_depth > 0 ? NULL : my_stream_conn(result);
    if (m == NULL)
        return real(ret, result);
    int status = MY_ASYNC_CALL(m, real(ret, result));
    if (finished(m, status) && *ret == NULL)
        my_stream_end(result);
    return status;
}

LC_EXPORT int mysql_fetch_row_cont(MYSQL_ROW *ret, MYSQL_RES *result, int status)
{
    __typeof__(&mysql_fetch_row_cont) real = MY_HOOKED(mysql_fetch_row_cont);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    MYSQL *m = lc_depth > 0 ? NULL : my_stream_conn(result);
    if (m == NULL)
        return real(ret, result, status);
    int st = MY_ASYNC_CALL(m, real(ret, result, status));
    if (finished(m, st) && *ret == NULL)
        my_stream_end(result);
    return st;
}

LC_EXPORT int mysql_free_result_start(MYSQL_RES *result)
{
    __typeof__(&mysql_free_result_start) real = MY_HOOKED(mysql_free_result_start);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    MYSQL *m = lc_depth > 0 ? NULL : my_stream_conn(result);
    if (m == NULL)
        return real(result);
    int status = MY_ASYNC_CALL(m, real(result));
    if (finished(m, status))
        my_stream_end(result);
    return status;
}

LC_EXPORT int mysql_free_result_cont(MYSQL_RES *result, int status)
{
    __typeof__(&mysql_free_result_cont) real = MY_HOOKED(mysql_free_result_cont);
    if (LC_UNLIKELY(real == NULL))
        return 0;
    MYSQL *m = lc_depth > 0 ? NULL : my_stream_conn(result);
    if (m == NULL)
        return real(result, status);
    int st = MY_ASYNC_CALL(m, real(result, status));
    if (finished(m, st))
        my_stream_end(result);
    return st;
}

/* ---- prepared statements: the connection each one talks on ---- */

#define MY_ASYNC_STMT_PAIR(rettype, name, params, args, after)                                 \
    LC_EXPORT int name##_start params                                                          \
    {                                                                                          \
        __typeof__(&name##_start) real = MY_HOOKED(name##_start);                              \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return 0;                                                                          \
        MYSQL *m = lc_depth > 0 ? NULL : my_stmt_conn(stmt);                                   \
        if (m == NULL)                                                                         \
            return real args;                                                                  \
        int status = MY_ASYNC_CALL(m, real args);                                              \
        if (finished(m, status)) {                                                             \
            after;                                                                             \
        }                                                                                      \
        return status;                                                                         \
    }                                                                                          \
    LC_EXPORT int name##_cont(rettype *ret, MYSQL_STMT *stmt, int status)                      \
    {                                                                                          \
        __typeof__(&name##_cont) real = MY_HOOKED(name##_cont);                                \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return 0;                                                                          \
        MYSQL *m = lc_depth > 0 ? NULL : my_stmt_conn(stmt);                                   \
        if (m == NULL)                                                                         \
            return real(ret, stmt, status);                                                    \
        int st = MY_ASYNC_CALL(m, real(ret, stmt, status));                                    \
        if (finished(m, st)) {                                                                 \
            after;                                                                             \
        }                                                                                      \
        return st;                                                                             \
    }

MY_ASYNC_STMT_PAIR(int, mysql_stmt_prepare,
                   (int *ret, MYSQL_STMT *stmt, const char *q, unsigned long len),
                   (ret, stmt, q, len), NOTHING)
MY_ASYNC_STMT_PAIR(int, mysql_stmt_execute, (int *ret, MYSQL_STMT *stmt), (ret, stmt), NOTHING)
MY_ASYNC_STMT_PAIR(int, mysql_stmt_fetch, (int *ret, MYSQL_STMT *stmt), (ret, stmt), NOTHING)
MY_ASYNC_STMT_PAIR(int, mysql_stmt_store_result, (int *ret, MYSQL_STMT *stmt), (ret, stmt),
                   NOTHING)
MY_ASYNC_STMT_PAIR(int, mysql_stmt_next_result, (int *ret, MYSQL_STMT *stmt), (ret, stmt),
                   NOTHING)
MY_ASYNC_STMT_PAIR(my_bool, mysql_stmt_reset, (my_bool * ret, MYSQL_STMT *stmt), (ret, stmt),
                   NOTHING)
MY_ASYNC_STMT_PAIR(my_bool, mysql_stmt_free_result, (my_bool * ret, MYSQL_STMT *stmt),
                   (ret, stmt), NOTHING)
MY_ASYNC_STMT_PAIR(my_bool, mysql_stmt_close, (my_bool * ret, MYSQL_STMT *stmt), (ret, stmt),
                   my_stmt_forget(stmt))
