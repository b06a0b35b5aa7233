/* Reaches libpq the ways that bypass a preloaded library's global-scope
 * hooks. Links neither libpq nor hiredis.
 *   reach_client run MODULE local|deepbind|deepbind-lazy|global SYMBOL KEY exit|hold
 *       dlopen MODULE with those flags, call SYMBOL(KEY) (it opens
 *       connections and leaves them open), then exit(0) or wait for a signal.
 *   reach_client lookups local|global
 *       dlopen libpq.so.5 and print where each dlsym answer lives (the file
 *       name), as an FFI (ctypes) would look functions up; then connect
 *       through the pointer it got.
 * Prints "stats ..." (lastcall's counters, or "stats none" without it). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lastcall.h"

static int flags_of(const char *s)
{
    if (strcmp(s, "deepbind-lazy") == 0)
        return RTLD_LAZY | RTLD_LOCAL | RTLD_DEEPBIND;
    if (strcmp(s, "deepbind") == 0)
        return RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
    if (strcmp(s, "global") == 0)
        return RTLD_NOW | RTLD_GLOBAL;
    return RTLD_NOW | RTLD_LOCAL;
}

static void print_stats(void)
{
    int (*get)(struct lastcall_stats *, unsigned long) =
        (int (*)(struct lastcall_stats *, unsigned long))dlsym(RTLD_DEFAULT, "lastcall_get_stats");
    struct lastcall_stats s;
    if (get && get(&s, sizeof s) == 0)
        printf("stats pq_opened=%lu pq_live=%lu redis_opened=%lu redis_live=%lu\n", s.pq_opened,
               s.pq_live, s.redis_opened, s.redis_live);
    else
        printf("stats none\n");
}

/* "libpq.so.5", "liblastcall.so", "none". */
static const char *where(const void *p)
{
    Dl_info info;
    if (p == NULL)
        return "none";
    if (dladdr(p, &info) == 0 || info.dli_fname == NULL)
        return "unknown";
    const char *base = strrchr(info.dli_fname, '/');
    return base ? base + 1 : info.dli_fname;
}

static int run(char **argv)
{
    void *h = dlopen(argv[2], flags_of(argv[3]));
    if (h == NULL) {
        fprintf(stderr, "reach_client: %s\n", dlerror());
        return 99;
    }
    int (*fn)(const char *) = (int (*)(const char *))dlsym(h, argv[4]);
    if (fn == NULL || fn(argv[5]) != 0) {
        fprintf(stderr, "reach_client: %s failed\n", argv[4]);
        return 98;
    }
    print_stats();
    printf("ready\n");
    fflush(stdout);
    if (strcmp(argv[6], "hold") == 0)
        for (;;)
            pause();
    exit(0);
}

typedef void *(*conn_fn)(const char *);
typedef int (*status_fn)(const void *);

static int lookups(char **argv)
{
    void *h = dlopen("libpq.so.5", flags_of(argv[2]));
    if (h == NULL) {
        fprintf(stderr, "reach_client: %s\n", dlerror());
        return 99;
    }
    conn_fn connect = (conn_fn)dlsym(h, "PQconnectdb");
    printf("handle PQconnectdb in %s\n", where((void *)connect));
    printf("handle PQlibVersion in %s\n", where(dlsym(h, "PQlibVersion")));
    /* libpq's symbols have no version: dlvsym finds none, with or without lastcall. */
    printf("vhandle PQconnectdb in %s\n", where(dlvsym(h, "PQconnectdb", "LIBPQ_NONE")));
    printf("default PQconnectdb in %s\n", where(dlsym(RTLD_DEFAULT, "PQconnectdb")));
    printf("next PQconnectdb in %s\n", where(dlsym(RTLD_NEXT, "PQconnectdb")));
    printf("next getpid in %s\n", where(dlsym(RTLD_NEXT, "getpid")));
    printf("handle nosuch in %s\n", where(dlsym(h, "PQno_such_function")));
    /* An interposer preloaded after lastcall (reach_next.so), if any. */
    void *(*probe)(const char *) = (void *(*)(const char *))dlsym(RTLD_DEFAULT, "reach_next_probe");
    if (probe) {
        printf("interposer next PQconnectdb in %s\n", where(probe("PQconnectdb")));
        printf("interposer next getpid in %s\n", where(probe("getpid")));
    }
    /* As a program calls it: through the global scope when it is there
     * (an interposer's wrapper, then lastcall's hook), else from the handle. */
    conn_fn by_name = (conn_fn)dlsym(RTLD_DEFAULT, "PQconnectdb");
    void *conn = (by_name ? by_name : connect)("");
    status_fn status = (status_fn)dlsym(h, "PQstatus");
    printf("connect %s\n", conn && status(conn) == 0 ? "ok" : "failed");
    int (*calls)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "reach_next_calls");
    if (calls)
        printf("interposer calls %d\n", calls());
    print_stats();
    void (*finish)(void *) = (void (*)(void *))dlsym(h, "PQfinish");
    finish(conn);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 7 && strcmp(argv[1], "run") == 0)
        return run(argv);
    if (argc >= 3 && strcmp(argv[1], "lookups") == 0)
        return lookups(argv);
    fprintf(stderr, "usage: reach_client run MODULE FLAGS SYMBOL KEY exit|hold | lookups FLAGS\n");
    return 2;
}
