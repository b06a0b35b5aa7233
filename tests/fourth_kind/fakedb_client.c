/* fakedb_client PATH MODE: connects to PATH with libfakedb, prints "ready"
 * and lastcall's counters for the kind ("stats fakedb opened=N live=N", or
 * "stats none" without lastcall), then
 *   exit    exit(0) without closing
 *   close   fakedb_close, then exit(0)
 *   wait    waits for a signal */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fakedb.h"
#include "lastcall.h"

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct fakedb *db = fakedb_connect(argv[1]);
    if (db == NULL) {
        fprintf(stderr, "fakedb_client: cannot connect to %s\n", argv[1]);
        return 1;
    }
    int (*get)(const char *, struct lastcall_kind_stats *, unsigned long) =
        (int (*)(const char *, struct lastcall_kind_stats *, unsigned long))dlsym(
            RTLD_DEFAULT, "lastcall_get_kind_stats");
    struct lastcall_kind_stats s;
    if (get && get("fakedb", &s, sizeof s) == 0)
        printf("stats fakedb opened=%lu live=%lu\n", s.opened, s.live);
    else
        printf("stats none\n");
    printf("ready\n");
    fflush(stdout);
    if (strcmp(argv[2], "close") == 0)
        fakedb_close(db);
    else if (strcmp(argv[2], "wait") == 0)
        for (;;)
            pause();
    return 0;
}
