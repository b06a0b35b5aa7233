/* An "extension module" linked against a renamed copy of libpq with its own
 * soname, found through RUNPATH (reach_bundled.so), as Python wheels ship
 * libpq. Opens two connections inside transactions and leaves them open. */
#include <libpq-fe.h>

__attribute__((visibility("default"))) int reach_mod_run(const char *key)
{
    (void)key;
    for (int i = 0; i < 2; i++) {
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK)
            return 1;
        PQclear(PQexec(c, "BEGIN"));
        PQclear(PQexec(c, "SELECT 1"));
    }
    return 0;
}
