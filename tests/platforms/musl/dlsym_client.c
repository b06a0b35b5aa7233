/* A musl program that reaches libpq the way an FFI does (ctypes on Alpine):
 * it links no libpq, loads LIBPQ with dlopen(RTLD_LOCAL), looks PQconnectdb
 * and PQexec up with dlsym on that handle, opens N connections (PG*
 * environment) each inside a transaction, then exit(3)s.
 *   dlsym_client LIBPQ N */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef void *(*connectdb_fn)(const char *);
typedef void *(*exec_fn)(void *, const char *);
typedef int (*status_fn)(const void *);

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: dlsym_client LIBPQ N\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlsym_client: %s\n", dlerror());
        return 1;
    }
    connectdb_fn connectdb = (connectdb_fn)dlsym(h, "PQconnectdb");
    exec_fn exec = (exec_fn)dlsym(h, "PQexec");
    status_fn status = (status_fn)dlsym(h, "PQstatus");
    if (connectdb == NULL || exec == NULL || status == NULL) {
        fprintf(stderr, "dlsym_client: %s\n", dlerror());
        return 1;
    }
    for (int i = 0; i < atoi(argv[2]); i++) {
        void *c = connectdb("");
        if (status(c) != 0 /* CONNECTION_OK */) {
            fprintf(stderr, "dlsym_client: connect failed\n");
            return 1;
        }
        exec(c, "BEGIN");
        exec(c, "SELECT 1");
    }
    exit(3);
}
