/* A hiredis 1.x program that talks to Redis over TLS (hiredis_ssl), the way
 * an application would; it knows nothing of lastcall. Built only where
 * hiredis_ssl exists.
 *   hiredis_tls_client ping                 one round trip over TLS
 *   hiredis_tls_client exit KEY N           N RPUSHes appended, never sent; exit(0)
 *   hiredis_tls_client exit-late-ssl KEY N  the same, TCP connect before OpenSSL starts
 *   hiredis_tls_client wait KEY N           the same, then "ready" and wait for a signal
 *   hiredis_tls_client version              header version and the hiredis file loaded
 * The server comes from LC_TEST_REDIS_TLS_PORT and LC_TEST_REDIS_TLS_CA. */
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/hiredis_ssl.h>

static void die(const char *what, const redisContext *c)
{
    fprintf(stderr, "hiredis_tls_client: %s%s%s\n", what, c ? ": " : "", c ? c->errstr : "");
    exit(99);
}

static redisSSLContext *ssl_context(void)
{
    const char *ca = getenv("LC_TEST_REDIS_TLS_CA");
    if (ca == NULL)
        die("LC_TEST_REDIS_TLS_CA unset", NULL);
    redisInitOpenSSL();
    redisSSLContextError err = REDIS_SSL_CTX_NONE;
    redisSSLContext *ssl = redisCreateSSLContext(ca, NULL, NULL, NULL, "127.0.0.1", &err);
    if (ssl == NULL)
        die(redisSSLContextGetError(err), NULL);
    return ssl;
}

/* hiredis's own example makes the SSL context first; LATE_SSL connects first,
 * so OpenSSL starts (and registers its exit cleanup) after the first connect. */
static redisContext *tls_open(int late_ssl)
{
    const char *port = getenv("LC_TEST_REDIS_TLS_PORT");
    if (port == NULL)
        die("LC_TEST_REDIS_TLS_PORT unset", NULL);
    redisSSLContext *ssl = late_ssl ? NULL : ssl_context();
    redisContext *c = redisConnect("127.0.0.1", atoi(port));
    if (c == NULL || c->err)
        die("connect", c);
    if (ssl == NULL)
        ssl = ssl_context();
    if (redisInitiateSSLWithContext(c, ssl) != REDIS_OK)
        die("TLS handshake", c);
    /* The SSL context must outlive the connection: never freed here. */
    return c;
}

static int ping(void)
{
    redisContext *c = tls_open(0);
    redisReply *r = redisCommand(c, "PING");
    if (r == NULL || r->type != REDIS_REPLY_STATUS || strcmp(r->str, "PONG") != 0)
        die("PING", c);
    freeReplyObject(r);
    redisFree(c);
    printf("pong over TLS\n");
    return 0;
}

/* Buffered in the context's output buffer only: nothing reaches the socket
 * until someone calls redisBufferWrite (or reads a reply). */
static redisContext *append_rpushes(const char *key, int n, int late_ssl)
{
    redisContext *c = tls_open(late_ssl);
    for (int i = 0; i < n; i++)
        if (redisAppendCommand(c, "RPUSH %s %d", key, i) != REDIS_OK)
            die("append", c);
    return c;
}

static int loaded_hiredis(struct dl_phdr_info *info, size_t size, void *out)
{
    (void)size;
    const char *base = strrchr(info->dlpi_name, '/');
    base = base ? base + 1 : info->dlpi_name;
    if (strncmp(base, "libhiredis.so", 13) == 0) {
        snprintf(out, 4096, "%s", info->dlpi_name);
        return 1;
    }
    return 0;
}

static int version(void)
{
    char path[4096] = "none";
    dl_iterate_phdr(loaded_hiredis, path);
    printf("header=%d.%d.%d loaded=%s\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, path);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "ping") == 0)
        return ping();
    if (argc >= 2 && strcmp(argv[1], "version") == 0)
        return version();
    if (argc >= 4 && (strcmp(argv[1], "exit") == 0 || strcmp(argv[1], "exit-late-ssl") == 0)) {
        append_rpushes(argv[2], atoi(argv[3]), strcmp(argv[1], "exit-late-ssl") == 0);
        printf("appended\n");
        exit(0);
    }
    if (argc >= 4 && strcmp(argv[1], "wait") == 0) {
        append_rpushes(argv[2], atoi(argv[3]), 0);
        printf("ready\n");
        for (;;)
            pause();
    }
    fprintf(stderr, "usage: hiredis_tls_client ping | exit|exit-late-ssl|wait KEY N | version\n");
    return 2;
}
