/* How a MySQL connection is closed: the kind's drain operations and its
 * entry for the kind table. */
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
    .lib = &my_lib,
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
