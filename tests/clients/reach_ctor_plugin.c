/* A plugin linked to libpq whose constructor probes for optional features
 * with dlsym, as plugins do (issue 19, case 1). Loaded by reach_loader_client
 * while another thread calls dlsym in a loop: the constructor runs with ld.so's
 * load lock held, so its dlsym must not wait for anything a thread waiting for
 * that lock holds. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libpq-fe.h>
#include <unistd.h>

int reach_ctor_plugin_probes;

__attribute__((constructor)) static void probe_features(void)
{
    /* Reading a configuration file, say: long enough for the other thread's
     * dlsym to see this object loaded and start looking at it. */
    usleep(1000);
    /* A hooked name and an ordinary one, on RTLD_DEFAULT and on a handle. */
    if (dlsym(RTLD_DEFAULT, "PQsslAttribute"))
        reach_ctor_plugin_probes++;
    if (dlsym(RTLD_DEFAULT, "getpid"))
        reach_ctor_plugin_probes++;
    void *self = dlopen(NULL, RTLD_LAZY);
    if (self && dlsym(self, "PQlibVersion"))
        reach_ctor_plugin_probes++;
}

/* Never called: its references to hooked functions are what a scan of this
 * object's GOT looks up. */
int reach_ctor_plugin_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    int ok = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    return ok;
}
