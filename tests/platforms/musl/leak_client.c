/* A musl-built client that leaks: open_leak() opens a PostgreSQL and a
 * Redis connection (PG* environment, the unix socket SOCK) and never closes
 * them; main returns 0. tests/platforms/musl-suite checks that lastcall's
 * leak report names open_leak. Built with frame pointers: musl has no
 * backtrace(), lastcall walks the frame-pointer chain there. */
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <stdio.h>

__attribute__((noinline)) static int open_leak(const char *sock)
{
    PGconn *pq = PQconnectdb("");
    redisContext *rd = redisConnectUnix(sock);
    if (PQstatus(pq) != CONNECTION_OK || rd == NULL || rd->err) {
        fprintf(stderr, "leak_client: connect failed\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: leak_client SOCK\n");
        return 2;
    }
    return open_leak(argv[1]);
}
