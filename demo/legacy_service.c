/* A "legacy service" as found in the wild: worker threads on libpq and
 * hiredis (and libmariadb, where it was built with it), a long report query,
 * transactions held open, Redis writes batched in the output buffer, a
 * connection leak, and no shutdown code at all. lastcall's demo SIGTERMs it
 * with and without lastcall. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#ifdef LC_DEMO_MYSQL
#include <mysql.h>
#endif

static const char *audit_key;
static int counter_fd = -1;

/* noinline, here and on lookup(): see lookup(). */
__attribute__((noinline)) static PGconn *db(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "legacy_service: %s", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static void *report_worker(void *arg)
{
    (void)arg;
    PGconn *c = db();
    /* The nightly report: ten minutes of work for the server. */
    PQclear(PQexec(c, "SELECT pg_sleep(600)"));
    return NULL;
}

static void *order_worker(void *arg)
{
    (void)arg;
    PGconn *c = db();
    for (int i = 0;; i++) {
        PQclear(PQexec(c, "BEGIN"));
        PQclear(PQexec(c, "INSERT INTO orders (note) VALUES ('order')"));
        usleep(200 * 1000); /* talking to a payment provider, transaction open */
        PQclear(PQexec(c, "COMMIT"));
        usleep(20 * 1000);
    }
    return NULL;
}

static void *audit_worker(void *arg)
{
    (void)arg;
    redisContext *r = redisConnectUnix(getenv("LC_DEMO_REDIS_SOCK"));
    if (r == NULL || r->err) {
        fprintf(stderr, "legacy_service: redis connect failed\n");
        exit(1);
    }
    for (long n = 1;; n++) {
        redisAppendCommand(r, "RPUSH %s event-%ld", audit_key, n);
        char buf[32];
        int len = snprintf(buf, sizeof buf, "%ld\n", n);
        if (pwrite(counter_fd, buf, (size_t)len, 0) < 0)
            exit(1);
        /* Batched: the buffer goes out every 25 events. */
        if (n % 25 == 0) {
            for (int i = 0; i < 25; i++) {
                void *reply = NULL;
                redisGetReply(r, &reply);
                freeReplyObject(reply);
            }
        }
        usleep(37 * 1000);
    }
    return NULL;
}

#ifdef LC_DEMO_MYSQL
/* Stock kept in MariaDB, a transaction open most of the time. */
static void *stock_worker(void *arg)
{
    (void)arg;
    MYSQL *m = mysql_init(NULL);
    if (m == NULL || mysql_real_connect(m, "localhost", getenv("LC_DEMO_MY_USER"),
                                        getenv("LC_DEMO_MY_PASSWORD"), getenv("LC_DEMO_MY_DB"), 0,
                                        getenv("LC_DEMO_MY_SOCK"), 0) == NULL) {
        fprintf(stderr, "legacy_service: mariadb: %s\n", m ? mysql_error(m) : "out of memory");
        exit(1);
    }
    for (;;) {
        mysql_query(m, "START TRANSACTION");
        mysql_query(m, "UPDATE t SET v = v + 1 WHERE id = 1");
        usleep(300 * 1000); /* waiting on a warehouse API, transaction open */
        mysql_query(m, "COMMIT");
        usleep(20 * 1000);
    }
    return NULL;
}
#endif

/* noinline: the leak report names the functions on the stack that opened
 * the leaked connection (#0 db, #1 lookup), and clang (unlike gcc) inlines
 * both small static functions at -O2: db() into lookup(), lookup() into
 * request_worker(). The report reads one name per return address (the
 * innermost inlined function), so it would say "db, request_worker". In a
 * real service these would live in other files; here they are kept calls. */
__attribute__((noinline)) static PGconn *lookup(void)
{
    PGconn *c = db();
    PQclear(PQexec(c, "SELECT count(*) FROM orders"));
    return c;
}

static void *request_worker(void *arg)
{
    (void)arg;
    for (int i = 0;; i++) {
        PGconn *c = lookup();
        if (i % 3 != 0 || i > 12)
            PQfinish(c); /* the bug: one request in three forgets this */
        usleep(150 * 1000);
    }
    return NULL;
}

int main(void)
{
    audit_key = getenv("LC_DEMO_AUDIT_KEY") ? getenv("LC_DEMO_AUDIT_KEY") : "audit";
    const char *counter = getenv("LC_DEMO_COUNTER_FILE");
    counter_fd = counter ? open(counter, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    if (counter_fd < 0) {
        fprintf(stderr, "legacy_service: LC_DEMO_COUNTER_FILE unset or unwritable\n");
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, report_worker, NULL);
    pthread_create(&t, NULL, order_worker, NULL);
    pthread_create(&t, NULL, order_worker, NULL);
    pthread_create(&t, NULL, audit_worker, NULL);
    pthread_create(&t, NULL, request_worker, NULL);
#ifdef LC_DEMO_MYSQL
    if (getenv("LC_DEMO_MY_SOCK"))
        pthread_create(&t, NULL, stock_worker, NULL);
#endif
    printf("legacy_service: running\n");
    fflush(stdout);
    for (;;)
        pause();
}
