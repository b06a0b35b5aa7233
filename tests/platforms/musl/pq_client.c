/* A musl-built libpq client for tests/platforms/musl-suite: opens N
 * connections (PG* environment), starts a transaction on each, then
 *   pq_client exit N   -> exit(7) with the transactions open
 *   pq_client term N   -> prints "ready" and waits for a signal (SIGTERM)
 *   pq_client handler N -> the same with a SIGTERM handler (signal()) that
 *                          calls exit(5), as webdis does
 * No shutdown code of its own: lastcall's drain is what closes them. */
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_term(int sig)
{
    (void)sig;
    exit(5);
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "exit") != 0 && strcmp(argv[1], "term") != 0 &&
                      strcmp(argv[1], "handler") != 0)) {
        fprintf(stderr, "usage: pq_client exit|term|handler N\n");
        return 2;
    }
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK) {
            fprintf(stderr, "pq_client: connect: %s", PQerrorMessage(c));
            return 1;
        }
        PGresult *r = PQexec(c, "BEGIN");
        PQclear(r);
        r = PQexec(c, "SELECT 1");
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "pq_client: query: %s", PQerrorMessage(c));
            return 1;
        }
        PQclear(r);
    }
    if (strcmp(argv[1], "exit") == 0)
        exit(7);
    if (strcmp(argv[1], "handler") == 0)
        signal(SIGTERM, on_term);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
