/* A musl-built hiredis client for tests/platforms/musl-suite: connects to
 * the unix socket SOCK and appends 1000 RPUSH KEY i commands to hiredis's
 * output buffer without ever flushing them, then
 *   redis_client exit SOCK KEY   -> exit(0)
 *   redis_client term SOCK KEY   -> prints "ready" and waits for a signal
 * Without lastcall all 1000 are lost. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "exit") != 0 && strcmp(argv[1], "term") != 0)) {
        fprintf(stderr, "usage: redis_client exit|term SOCK KEY\n");
        return 2;
    }
    redisContext *c = redisConnectUnix(argv[2]);
    if (c == NULL || c->err) {
        fprintf(stderr, "redis_client: connect: %s\n", c ? c->errstr : "no memory");
        return 1;
    }
    for (int i = 0; i < 1000; i++)
        if (redisAppendCommand(c, "RPUSH %s %d", argv[3], i) != REDIS_OK) {
            fprintf(stderr, "redis_client: append failed\n");
            return 1;
        }
    if (strcmp(argv[1], "exit") == 0)
        exit(0);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
