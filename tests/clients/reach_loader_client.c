/* Programs that use the loader from several threads at once (issue 19, cases
 * 1 and the _r_debug race). Links neither libpq nor hiredis.
 *   reach_loader_client ctor PLUGIN ROUNDS
 *       one thread calls dlsym in a loop (an FFI layer) while the main thread
 *       dlopen()s and dlclose()s PLUGIN ROUNDS times (its constructor calls
 *       dlsym). Prints "done ROUNDS probes N".
 *   reach_loader_client churn LIB ROUNDS
 *       one thread dlopen()s and dlclose()s LIB in a loop while three others
 *       call dlsym (their first calls among them) ROUNDS times each.
 *       Prints "done".
 *   reach_loader_client handoff MODULE KEY
 *       a worker thread calls dlsym in a loop while the main thread dlopen()s
 *       MODULE with RTLD_DEEPBIND and hands the handle over; the worker looks
 *       MODULE's localmod_run up and calls it (it opens connections and
 *       leaves them open). Prints lastcall's counters ("stats ...", or "stats
 *       none" without it), then exits.
 * Exit status 0 when every call gave what it should. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lastcall.h"

/* Atomics: the client runs under ThreadSanitizer in the sanitized builds. */
static int stop, failed;

static int stopped(void)
{
    return __atomic_load_n(&stop, __ATOMIC_ACQUIRE);
}

static void set_flag(int *flag)
{
    __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
}

static void *ffi_loop(void *arg)
{
    long rounds = (long)arg;
    void *self = dlopen(NULL, RTLD_LAZY);
    for (long i = 0; rounds ? i < rounds : !stopped(); i++) {
        if (dlsym(RTLD_DEFAULT, "getpid") == NULL || dlsym(self, "strlen") == NULL)
            set_flag(&failed);
        /* A hooked name too: that path looks the real function up. */
        dlsym(RTLD_DEFAULT, "PQlibVersion");
    }
    return NULL;
}

static int ctor(const char *plugin, int rounds)
{
    pthread_t t;
    pthread_create(&t, NULL, ffi_loop, NULL);
    int probes = -1;
    for (int i = 0; i < rounds; i++) {
        void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            fprintf(stderr, "reach_loader_client: %s\n", dlerror());
            return 99;
        }
        int *n = dlsym(h, "reach_ctor_plugin_probes");
        probes = n ? *n : -1;
        dlclose(h);
    }
    set_flag(&stop);
    pthread_join(t, NULL);
    printf("done %d probes %d\n", rounds, probes);
    return __atomic_load_n(&failed, __ATOMIC_ACQUIRE);
}

struct churn {
    const char *lib;
};

static void *churn_loop(void *arg)
{
    const struct churn *c = arg;
    while (!stopped()) {
        void *h = dlopen(c->lib, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            set_flag(&failed);
            return NULL;
        }
        dlclose(h);
    }
    return NULL;
}

static int churn(const char *lib, long rounds)
{
    struct churn c = {lib};
    pthread_t loader, users[3];
    pthread_create(&loader, NULL, churn_loop, &c);
    for (int i = 0; i < 3; i++)
        pthread_create(&users[i], NULL, ffi_loop, (void *)rounds);
    for (int i = 0; i < 3; i++)
        pthread_join(users[i], NULL);
    set_flag(&stop);
    pthread_join(loader, NULL);
    printf("done\n");
    return __atomic_load_n(&failed, __ATOMIC_ACQUIRE);
}

struct handoff {
    void *module; /* published by the main thread */
    const char *key;
    int result;
};

static void *handoff_worker(void *arg)
{
    struct handoff *h = arg;
    void *module;
    /* An FFI layer's lookups, going on while the module loads. */
    while ((module = __atomic_load_n(&h->module, __ATOMIC_ACQUIRE)) == NULL)
        if (dlsym(RTLD_DEFAULT, "getpid") == NULL)
            set_flag(&failed);
    int (*run)(const char *) = (int (*)(const char *))dlsym(module, "localmod_run");
    h->result = run ? run(h->key) : 97;
    return NULL;
}

static int handoff(const char *module, const char *key)
{
    struct handoff h = {NULL, key, -1};
    pthread_t t;
    pthread_create(&t, NULL, handoff_worker, &h);
    usleep(20000);
    void *m = dlopen(module, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (m == NULL) {
        fprintf(stderr, "reach_loader_client: %s\n", dlerror());
        return 99;
    }
    __atomic_store_n(&h.module, m, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    int (*get)(struct lastcall_stats *, unsigned long) =
        (int (*)(struct lastcall_stats *, unsigned long))dlsym(RTLD_DEFAULT, "lastcall_get_stats");
    struct lastcall_stats st;
    if (get && get(&st, sizeof st) == 0)
        printf("stats pq_opened=%lu redis_opened=%lu\n", st.pq_opened, st.redis_opened);
    else
        printf("stats none\n");
    return h.result != 0 ? 98 : __atomic_load_n(&failed, __ATOMIC_ACQUIRE);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "ctor") == 0)
        return ctor(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "churn") == 0)
        return churn(argv[2], atol(argv[3]));
    if (argc == 4 && strcmp(argv[1], "handoff") == 0)
        return handoff(argv[2], argv[3]);
    fprintf(stderr, "usage: reach_loader_client ctor PLUGIN ROUNDS | churn LIB ROUNDS | "
                    "handoff MODULE KEY\n");
    return 2;
}
