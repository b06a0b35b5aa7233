#define _GNU_SOURCE
#include "symbols.h"

#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "log.h"

static const char *const lib_prefixes[LC_LIB_COUNT] = {
    [LC_LIB_PQ] = "libpq.so",
    [LC_LIB_HIREDIS] = "libhiredis.so",
    [LC_LIB_SSL] = "libssl.so",
};

static void *lib_handles[LC_LIB_COUNT];

struct find_ctx {
    const char *prefix;
    char path[512];
};

static int find_loaded_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct find_ctx *ctx = data;
    const char *name = info->dlpi_name;
    if (name == NULL || *name == '\0')
        return 0;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (strncmp(base, ctx->prefix, strlen(ctx->prefix)) != 0)
        return 0;
    size_t len = strlen(name);
    if (len >= sizeof ctx->path)
        return 0;
    memcpy(ctx->path, name, len + 1);
    return 1;
}

/* A handle to LIB only if the process already loaded it (RTLD_NOLOAD). */
static void *loaded_library(enum lc_lib lib)
{
    void *h = __atomic_load_n(&lib_handles[lib], __ATOMIC_ACQUIRE);
    if (h)
        return h;
    struct find_ctx ctx = {.prefix = lib_prefixes[lib]};
    if (dl_iterate_phdr(find_loaded_cb, &ctx) == 0)
        return NULL;
    h = dlopen(ctx.path, RTLD_LAZY | RTLD_NOLOAD);
    if (h)
        __atomic_store_n(&lib_handles[lib], h, __ATOMIC_RELEASE);
    return h;
}

void *sym_lookup(enum lc_lib lib, const char *name, const void *self)
{
    void *p = dlsym(RTLD_NEXT, name);
    if ((p == NULL || p == self) && lib < LC_LIB_COUNT) {
        void *h = loaded_library(lib);
        p = h ? dlsym(h, name) : NULL;
    }
    if (self != NULL && p == self) {
        LC_DEBUG("lookup of %s found lastcall itself; refusing the loop", name);
        return NULL;
    }
    return p;
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
