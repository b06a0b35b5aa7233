/* Stress client: 4 threads churn PostgreSQL and Redis connections (some
 * leaked, some left inside a transaction, some Redis writes left buffered)
 * until a signal arrives. Each thread records in a shared file how many of its
 * RPUSHes have returned, so the test can check none was lost. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#define THREADS 4

static const char *prefix;
static volatile uint64_t *counts; /* shared with the test, one per thread */

static void *churn(void *arg)
{
    long id = (long)arg;
    unsigned seed = (unsigned)(getpid() * 31 + id);
    char key[128];
    snprintf(key, sizeof key, "%s:%ld", prefix, id);
    redisContext *r = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (r == NULL || r->err)
        return NULL;
    PGconn *held[8] = {0};
    int pending = 0;
    uint64_t pushed = 0;
    for (uint64_t n = 1;; n++) {
        int op = rand_r(&seed) % 10;
        if (op < 4) {
            PGconn *c = PQconnectdb("");
            if (PQstatus(c) == CONNECTION_OK) {
                PQclear(PQexec(c, "BEGIN"));
                PQclear(PQexec(c, "SELECT count(*) FROM pg_class"));
                if (rand_r(&seed) % 3 == 0) {
                    /* left open inside its transaction, maybe forever */
                    int slot = rand_r(&seed) % 8;
                    if (held[slot] && rand_r(&seed) % 2)
                        PQfinish(held[slot]);
                    held[slot] = c;
                    continue;
                }
                PQclear(PQexec(c, "COMMIT"));
            }
            PQfinish(c);
        } else if (op < 9) {
            redisAppendCommand(r, "RPUSH %s %llu", key, (unsigned long long)n);
            counts[id] = ++pushed;
            pending++;
            if (rand_r(&seed) % 4 == 0) {
                for (; pending > 0; pending--) {
                    void *reply = NULL;
                    if (redisGetReply(r, &reply) != REDIS_OK)
                        return NULL;
                    freeReplyObject(reply);
                }
            }
        } else {
            /* a leaked Redis connection */
            redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    prefix = argv[1];
    int fd = open(argv[2], O_RDWR);
    if (fd < 0 || ftruncate(fd, THREADS * sizeof(uint64_t)) != 0)
        return 2;
    counts = mmap(NULL, THREADS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (counts == MAP_FAILED)
        return 2;
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, churn, (void *)i);
    printf("ready\n");
    fflush(stdout);
    for (long i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    return 0;
}
