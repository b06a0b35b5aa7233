/* A MySQL/MariaDB client for tests/integration/test_mysql.c, linked with
 * libmariadb. Connects through the environment the harness sets
 * (LC_TEST_MY_SOCK or, with "tcp" first, LC_TEST_MY_PORT on 127.0.0.1),
 * prints "ready <thread ids>" once it is in the state the test wants, and
 * then waits for the test's signal.
 *
 *   mysql_client [tcp] tx N       N connections with an open transaction, then exit(0)
 *   mysql_client [tcp] sleep S    SELECT SLEEP(S) in flight (a thread inside the library)
 *   mysql_client [tcp] send S     mysql_send_query("SELECT SLEEP(S)"), result unread
 *   mysql_client [tcp] stmt S     a prepared "SELECT SLEEP(S)" in mysql_stmt_execute
 *   mysql_client [tcp] stream     mysql_use_result of a large set, 10 rows read, then waits
 *   mysql_client [tcp] idle       one idle connection in a transaction, waits
 *   mysql_client [tcp] fork       the child opens its own connection and exits; the parent
 *                                 then uses its own and exits
 *   mysql_client [tcp] leak       two connections and a handle never connected, never closed
 *   mysql_client [tcp] close      a connection opened and closed
 *   mysql_client [tcp] async S    the non-blocking API: connect, BEGIN, then
 *                                 mysql_query_start("SELECT SLEEP(S)") left unfinished
 *   mysql_client [tcp] reconnect  MYSQL_OPT_RECONNECT; the server kills the connection, mysql_ping
 *                                 reconnects it; then an open transaction and exit(0)
 *   mysql_client [tcp] handler    an open transaction; a SIGTERM handler makes the main loop
 *                                 mysql_close it and exit(0)
 */
#include <mysql.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int use_tcp;

static MYSQL *connect_one_with(int reconnect)
{
    MYSQL *m = mysql_init(NULL);
    my_bool on = 1;
    if (reconnect)
        mysql_options(m, MYSQL_OPT_RECONNECT, &on);
    if (m == NULL) {
        fprintf(stderr, "mysql_init failed\n");
        exit(2);
    }
    const char *sock = use_tcp ? NULL : getenv("LC_TEST_MY_SOCK");
    const char *host = use_tcp ? "127.0.0.1" : "localhost";
    unsigned port = use_tcp ? (unsigned)atoi(getenv("LC_TEST_MY_PORT")) : 0;
    if (mysql_real_connect(m, host, getenv("LC_TEST_MY_USER"), getenv("LC_TEST_MY_PASSWORD"),
                           getenv("LC_TEST_MY_DB"), port, sock, 0) == NULL) {
        fprintf(stderr, "connect: %s\n", mysql_error(m));
        exit(2);
    }
    return m;
}

static MYSQL *connect_one(void)
{
    return connect_one_with(0);
}

static void query(MYSQL *m, const char *sql)
{
    if (mysql_query(m, sql) != 0) {
        fprintf(stderr, "%s: %s\n", sql, mysql_error(m));
        exit(3);
    }
    MYSQL_RES *r = mysql_store_result(m);
    if (r)
        mysql_free_result(r);
}

/* Waits for what a non-blocking call asked for; returns the status to resume with. */
static int wait_for(MYSQL *m, int status)
{
    struct pollfd p = {.fd = mysql_get_socket(m), .events = 0};
    if (status & MYSQL_WAIT_READ)
        p.events |= POLLIN;
    if (status & MYSQL_WAIT_WRITE)
        p.events |= POLLOUT;
    if (status & MYSQL_WAIT_EXCEPT)
        p.events |= POLLPRI;
    int r = poll(&p, 1, (status & MYSQL_WAIT_TIMEOUT) ? (int)mysql_get_timeout_value_ms(m) : -1);
    if (r == 0)
        return MYSQL_WAIT_TIMEOUT;
    int out = 0;
    if (p.revents & POLLIN)
        out |= MYSQL_WAIT_READ;
    if (p.revents & POLLOUT)
        out |= MYSQL_WAIT_WRITE;
    if (p.revents & POLLPRI)
        out |= MYSQL_WAIT_EXCEPT;
    return out;
}

static void async_query(MYSQL *m, const char *sql)
{
    int err;
    int status = mysql_query_start(&err, m, sql);
    while (status)
        status = mysql_query_cont(&err, m, wait_for(m, status));
    if (err) {
        fprintf(stderr, "%s: %s\n", sql, mysql_error(m));
        exit(3);
    }
    MYSQL_RES *r;
    status = mysql_store_result_start(&r, m);
    while (status)
        status = mysql_store_result_cont(&r, m, wait_for(m, status));
    if (r)
        mysql_free_result(r);
}

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static void wait_forever(void)
{
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int a = 1;
    if (a < argc && strcmp(argv[a], "tcp") == 0) {
        use_tcp = 1;
        a++;
    }
    const char *mode = a < argc ? argv[a] : "";
    const char *arg = a + 1 < argc ? argv[a + 1] : "1";

    if (strcmp(mode, "tx") == 0) {
        int n = atoi(arg);
        printf("ready");
        for (int i = 0; i < n; i++) {
            MYSQL *m = connect_one();
            query(m, "BEGIN");
            query(m, "SELECT COUNT(*) FROM t"); /* no lock: the next one must not wait */
            printf(" %lu", mysql_thread_id(m));
        }
        printf("\n");
        exit(0); /* the transactions are still open */
    }
    if (strcmp(mode, "sleep") == 0 || strcmp(mode, "send") == 0) {
        MYSQL *m = connect_one();
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT SLEEP(%d)", atoi(arg));
        printf("ready %lu\n", mysql_thread_id(m));
        if (strcmp(mode, "send") == 0) {
            if (mysql_send_query(m, sql, strlen(sql)) != 0) {
                fprintf(stderr, "send: %s\n", mysql_error(m));
                return 3;
            }
            wait_forever();
        }
        int r = mysql_query(m, sql);
        printf("query returned %d: %s\n", r, r ? mysql_error(m) : "ok");
        wait_forever();
    }
    if (strcmp(mode, "stmt") == 0) {
        MYSQL *m = connect_one();
        MYSQL_STMT *st = mysql_stmt_init(m);
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT SLEEP(%d)", atoi(arg));
        if (st == NULL || mysql_stmt_prepare(st, sql, strlen(sql)) != 0) {
            fprintf(stderr, "prepare: %s\n", mysql_error(m));
            return 3;
        }
        printf("ready %lu\n", mysql_thread_id(m));
        int r = mysql_stmt_execute(st);
        printf("execute returned %d: %s\n", r, r ? mysql_stmt_error(st) : "ok");
        wait_forever();
    }
    if (strcmp(mode, "stream") == 0) {
        MYSQL *m = connect_one();
        if (mysql_query(m, "SELECT seq, REPEAT('x', 200) FROM seq_1_to_2000000") != 0) {
            fprintf(stderr, "stream: %s\n", mysql_error(m));
            return 3;
        }
        MYSQL_RES *res = mysql_use_result(m);
        for (int i = 0; i < 10; i++)
            if (mysql_fetch_row(res) == NULL)
                return 4;
        printf("ready %lu\n", mysql_thread_id(m));
        wait_forever();
    }
    if (strcmp(mode, "idle") == 0) {
        MYSQL *m = connect_one();
        query(m, "BEGIN");
        query(m, "UPDATE t SET v = v + 1 WHERE id = 1");
        printf("ready %lu\n", mysql_thread_id(m));
        wait_forever();
    }
    if (strcmp(mode, "fork") == 0) {
        MYSQL *m = connect_one();
        query(m, "BEGIN");
        pid_t pid = fork();
        if (pid == 0) {
            MYSQL *c = connect_one();
            query(c, "BEGIN");
            printf("child %lu\n", mysql_thread_id(c));
            exit(0); /* its exit drain closes its own connection, not the parent's */
        }
        int st;
        waitpid(pid, &st, 0);
        /* The parent's connection still works after the child's exit. */
        query(m, "SELECT 1");
        query(m, "COMMIT");
        printf("ready %lu child-status %d\n", mysql_thread_id(m), st);
        exit(0);
    }
    if (strcmp(mode, "leak") == 0) {
        printf("ready");
        for (int i = 0; i < atoi(arg); i++) /* one opening stack: one group in the report */
            printf(" %lu", mysql_thread_id(connect_one()));
        MYSQL *never = mysql_init(NULL);
        printf(" %p\n", (void *)never);
        exit(0);
    }
    if (strcmp(mode, "close") == 0) {
        MYSQL *m = connect_one();
        query(m, "SELECT 1");
        mysql_close(m);
        printf("ready closed\n");
        return 0;
    }
    if (strcmp(mode, "async") == 0) {
        MYSQL *m = mysql_init(NULL), *ret;
        mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
        const char *sock = use_tcp ? NULL : getenv("LC_TEST_MY_SOCK");
        int status = mysql_real_connect_start(
            &ret, m, use_tcp ? "127.0.0.1" : "localhost", getenv("LC_TEST_MY_USER"),
            getenv("LC_TEST_MY_PASSWORD"), getenv("LC_TEST_MY_DB"),
            use_tcp ? (unsigned)atoi(getenv("LC_TEST_MY_PORT")) : 0, sock, 0);
        while (status)
            status = mysql_real_connect_cont(&ret, m, wait_for(m, status));
        if (ret == NULL) {
            fprintf(stderr, "connect: %s\n", mysql_error(m));
            return 2;
        }
        async_query(m, "BEGIN");
        async_query(m, "UPDATE t SET v = v + 1 WHERE id = 1");
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT SLEEP(%d)", atoi(arg));
        int err;
        status = mysql_query_start(&err, m, sql);
        printf("ready %lu status %d\n", mysql_thread_id(m), status);
        wait_forever(); /* the query is never continued: the event loop is gone */
    }
    if (strcmp(mode, "reconnect") == 0) {
        MYSQL *m = connect_one_with(1);
        unsigned long old = mysql_thread_id(m);
        char sql[64];
        snprintf(sql, sizeof sql, "KILL %lu", old);
        mysql_query(m, sql); /* fails: the connection is gone */
        if (mysql_ping(m) != 0) {
            fprintf(stderr, "ping: %s\n", mysql_error(m));
            return 3;
        }
        query(m, "BEGIN");
        query(m, "SELECT COUNT(*) FROM t");
        printf("ready %lu %lu\n", mysql_thread_id(m), old);
        exit(0);
    }
    if (strcmp(mode, "handler") == 0) {
        signal(SIGTERM, on_term);
        MYSQL *m = connect_one();
        query(m, "BEGIN");
        query(m, "UPDATE t SET v = v + 1 WHERE id = 1");
        printf("ready %lu\n", mysql_thread_id(m));
        while (!stop)
            pause();
        /* Shutdown has begun: lastcall makes this close its own (COM_QUIT, EOF);
         * the library's own COM_QUIT then meets a shut socket. */
        mysql_close(m);
        printf("closed\n");
        return 0;
    }
    fprintf(stderr, "usage: mysql_client [tcp] tx|sleep|send|stream|idle|fork|leak|close|handler "
                    "[arg]\n");
    return 2;
}
