/* The MySQL kind's per-connection state: credentials for the KILL
 * connection, pending and streamed results, prepared statements. */
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

/* Out of memory: the handle goes untracked, the program goes on. */
static int my_oom; /* under my_lock */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (my_oom = 1)
#include <uthash.h>

#include "kinds/mysql/mysql.h"

static const char *const my_real_names[] = {MY_REALS(LC_REALS_NAME)};
void *my_real_cache[myr_count];
struct lc_lib my_lib = {.defines = {"mysql_real_connect", "mysql_close"},
                        .hook_prefixes = {"mysql_"}};
struct lc_reals my_reals = {&my_lib, myr_count, my_real_names, my_real_cache, 0};

pthread_mutex_t my_lock = PTHREAD_MUTEX_INITIALIZER;
struct my_conn *conns;
struct my_link *streams, *stmts;
int n_streams, n_pending, n_stmts;

void secrets_wipe(struct my_conn *c)
{
    if (c->secrets) {
        explicit_bzero(c->secrets, c->secrets_len);
        free(c->secrets);
    }
    c->secrets = NULL;
    c->secrets_len = 0;
    c->host = c->user = c->passwd = c->unix_socket = NULL;
}

void conn_free(void *p)
{
    struct my_conn *c = p;
    if (c == NULL)
        return;
    secrets_wipe(c);
    free(c);
}

/* Copies of the connect arguments, in one block (NULL stays NULL). */
void secrets_keep(struct my_conn *c, const char *host, const char *user, const char *passwd,
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

struct my_conn *conn_find_locked(MYSQL *m)
{
    struct my_conn *c = NULL;
    HASH_FIND_PTR(conns, &m, c);
    return c;
}

/* The state of M, made if missing (locked). */
struct my_conn *conn_get_locked(MYSQL *m)
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

void link_add(struct my_link **table, int *count, void *key, MYSQL *m)
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

MYSQL *link_find(struct my_link **table, void *key)
{
    pthread_mutex_lock(&my_lock);
    struct my_link *l = NULL;
    HASH_FIND_PTR(*table, &key, l);
    MYSQL *m = l ? l->mysql : NULL;
    pthread_mutex_unlock(&my_lock);
    return m;
}

void link_del_locked(struct my_link **table, int *count, void *key)
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
