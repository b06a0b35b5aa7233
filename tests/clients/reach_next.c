/* An interposer of its own, preloaded after lastcall: wraps PQconnectdb and
 * forwards with dlsym(RTLD_NEXT), as interposers do. lastcall must leave its
 * RTLD_NEXT lookups exactly as they would be without lastcall. Links nothing
 * but libc (libpq's header for the types only). */
#define _GNU_SOURCE
#include <dlfcn.h>

#include <libpq-fe.h>

static int calls;

__attribute__((visibility("default"))) PGconn *PQconnectdb(const char *conninfo)
{
    static __typeof__(&PQconnectdb) next;
    if (next == NULL)
        next = (__typeof__(&PQconnectdb))dlsym(RTLD_NEXT, "PQconnectdb");
    calls++;
    return next ? next(conninfo) : NULL;
}

/* Not a tail call: dlsym must see this library as its caller. */
__attribute__((visibility("default"), noinline)) void *reach_next_probe(const char *name)
{
    void *volatile p = dlsym(RTLD_NEXT, name);
    return p;
}

__attribute__((visibility("default"))) int reach_next_calls(void)
{
    return calls;
}
