#define _GNU_SOURCE
#include "platform/symbols.h"

#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "platform/got.h"
#include "core/log.h"
#include "platform/loader.h"

/* A library is known by what it defines, not by its file name: Python wheels
 * and vendored builds ship libpq as libpq-1a2b3c4d.so.5.15. */
static const char *const lib_defines[LC_LIB_COUNT][2] = {
    [LC_LIB_PQ] = {"PQconnectdb", "PQfinish"},
    [LC_LIB_HIREDIS] = {"redisConnect", "redisFree"},
    [LC_LIB_SSL] = {"SSL_write", "SSL_CTX_new"},
    [LC_LIB_HIREDIS_SSL] = {"redisInitiateSSL", "redisCreateSSLContext"},
    [LC_LIB_MYSQL] = {"mysql_real_connect", "mysql_close"},
};

static void *lib_handles[LC_LIB_COUNT];

static void self_marker(void) {}

int sym_dso_is(const struct lc_dso *d, enum lc_lib lib)
{
    if (lib >= LC_LIB_COUNT || dso_contains(d, (const void *)self_marker))
        return 0;
    return dso_defines(d, lib_defines[lib][0]) && dso_defines(d, lib_defines[lib][1]);
}

/* A handle to LIB only if the process already loaded it (RTLD_NOLOAD). With
 * two copies loaded (two bundled libpqs), the first one found is used. */
static void *loaded_library(enum lc_lib lib)
{
    void *h = __atomic_load_n(&lib_handles[lib], __ATOMIC_ACQUIRE);
    if (h)
        return h;
    char path[512], other[512];
    int copies = loader_find_copies(lib_defines[lib][0], lib_defines[lib][1], path, other,
                                    sizeof path);
    if (copies == 0)
        return NULL;
    /* Neither is in the global scope (RTLD_NEXT found none): a local-scope
     * caller of the other copy would get connections made by this one. */
    if (copies > 1)
        LC_WARN("%d copies of the same library are loaded, none in the global scope (%s, %s...); "
                "lastcall calls %s", copies, path, other[0] ? other : "?", path);
    h = loader_dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (h)
        __atomic_store_n(&lib_handles[lib], h, __ATOMIC_RELEASE);
    return h;
}

void *sym_lookup(enum lc_lib lib, const char *name, const void *self)
{
    void *p;
    /* libssl as the libpq in use links it: a wheel's bundled libpq brings its
     * own libssl, and SSL objects must go back to the copy that made them. */
    if (lib == LC_LIB_SSL && loader_dlsym(RTLD_NEXT, lib_defines[LC_LIB_PQ][1]) == NULL) {
        void *pq = loaded_library(LC_LIB_PQ);
        if (pq && (p = loader_dlsym(pq, name)) != NULL)
            return p;
    }
    /* libc's dlsym, called from here: RTLD_NEXT means "after lastcall", and
     * our own dlsym would hand our hooks back. */
    p = loader_dlsym(RTLD_NEXT, name);
    if ((p == NULL || p == self) && lib < LC_LIB_COUNT) {
        void *h = loaded_library(lib);
        p = h ? loader_dlsym(h, name) : NULL;
    }
    if (self != NULL && p == self) {
        LC_DEBUG("lookup of %s found lastcall itself; refusing the loop", name);
        return NULL;
    }
    return p;
}

void sym_absent(enum lc_lib lib, const char *name)
{
    void *h = lib < LC_LIB_COUNT ? __atomic_load_n(&lib_handles[lib], __ATOMIC_ACQUIRE) : NULL;
    /* The failing lookup comes last: a successful loader call clears the error. */
    if (h == NULL || loader_dlsym(h, name) != NULL)
        loader_dlsym(RTLD_NEXT, name);
}

int sym_hiredis_layout(void)
{
    static int layout;
    int l = __atomic_load_n(&layout, __ATOMIC_ACQUIRE);
    if (l)
        return l;
    /* redisConnectWithOptions exists only in hiredis 1.x; so does the funcs
     * pointer that moves every later field of redisContext by 8 bytes. */
    if (sym_lookup(LC_LIB_HIREDIS, "redisFree", NULL) == NULL)
        return LC_HIREDIS_UNKNOWN;
    l = sym_lookup(LC_LIB_HIREDIS, "redisConnectWithOptions", NULL) ? LC_HIREDIS_1 : LC_HIREDIS_0;
    __atomic_store_n(&layout, l, __ATOMIC_RELEASE);
    return l;
}
