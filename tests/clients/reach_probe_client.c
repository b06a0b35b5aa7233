/* A feature probe, built against the system hiredis (0.14 on Debian 12) and
 * nothing else of lastcall's concern: does the library in use have a
 * function? Prints one line per name: "NAME default yes|no error yes|no" and
 * the same for the program's own handle. Run with and without lastcall, the
 * output must be the same (issue 19: lastcall.map exports every hook). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <hiredis/hiredis.h>
#include <stdio.h>

static void probe(void *handle, const char *how, const char *name)
{
    dlerror();
    void *p = dlsym(handle, name);
    const char *err = dlerror();
    printf("%s %s %s error %s\n", name, how, p ? "yes" : "no", err ? "yes" : "no");
}

int main(void)
{
    /* Used, so that the program really links hiredis. */
    redisReaderFree(redisReaderCreate());
    const char *names[] = {"redisConnect", "redisConnectWithOptions", "redisFree",
                           "PQconnectdb", "mysql_real_connect", "getpid"};
    void *self = dlopen(NULL, RTLD_LAZY);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        probe(RTLD_DEFAULT, "default", names[i]);
        probe(self, "self", names[i]);
    }
    return 0;
}
