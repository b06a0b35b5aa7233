/* Links neither libpq nor hiredis: it only dlopens the module. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "lastcall.h"

int main(int argc, char **argv)
{
    if (argc < 3)
        return 99;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "lc_dlopen_client: %s\n", dlerror());
        return 99;
    }
    int (*run)(const char *) = (int (*)(const char *))dlsym(h, "localmod_run");
    if (run == NULL || run(argv[2]) != 0)
        return 98;
    int (*get)(struct lastcall_stats *, unsigned long) =
        (int (*)(struct lastcall_stats *, unsigned long))dlsym(RTLD_DEFAULT, "lastcall_get_stats");
    struct lastcall_stats s;
    if (get && get(&s, sizeof s) == 0)
        printf("stats pq_opened=%lu pq_live=%lu redis_opened=%lu redis_live=%lu\n", s.pq_opened,
               s.pq_live, s.redis_opened, s.redis_live);
    else
        printf("stats none\n");
    fflush(stdout);
    exit(0);
}
