/* An "extension module": linked against libpq and hiredis, loaded by
 * lc_client with dlopen(RTLD_LOCAL), so neither library is in the global
 * scope (as python3-psycopg2 loads libpq). */
#include <stdlib.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

__attribute__((visibility("default"))) int localmod_run(const char *key)
{
    for (int i = 0; i < 2; i++) {
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK)
            return 1;
        PQclear(PQexec(c, "BEGIN"));
        PQclear(PQexec(c, "SELECT 1"));
    }
    redisContext *r = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    if (r == NULL || r->err)
        return 1;
    redisAppendCommand(r, "SET %s local-module", key);
    return 0;
}
