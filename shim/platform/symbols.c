#define _GNU_SOURCE
#include "platform/symbols.h"

#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "platform/got.h"
#include "core/kind_id.h"
#include "core/log.h"
#include "platform/loader.h"

/* The kinds' libraries (sym_set_hooked_libs). */
static struct lc_lib *hooked[LC_KIND_MAX];
static int n_hooked;

static void self_marker(void) {}

int sym_dso_is(const struct lc_dso *d, const struct lc_lib *lib)
{
    if (lib == NULL || dso_contains(d, (const void *)self_marker))
        return 0;
    return dso_defines(d, lib->defines[0]) && dso_defines(d, lib->defines[1]);
}

void sym_set_hooked_libs(struct lc_lib *const *libs, int n)
{
    n_hooked = 0;
    for (int i = 0; i < n && n_hooked < LC_KIND_MAX; i++)
        if (libs[i])
            hooked[n_hooked++] = libs[i];
}

/* Our own loop: this also runs inside dl_iterate_phdr's callback, where a
 * sanitizer's string interceptor has no business. */
static int starts_with(const char *s, const char *prefix)
{
    while (*prefix && *s == *prefix)
        s++, prefix++;
    return *prefix == '\0';
}

struct lc_lib *sym_hooked_lib_of(const char *name)
{
    for (int i = 0; i < n_hooked; i++)
        for (int p = 0; p < 4 && hooked[i]->hook_prefixes[p]; p++)
            if (starts_with(name, hooked[i]->hook_prefixes[p]))
                return hooked[i];
    return NULL;
}

int sym_dso_is_hooked(const struct lc_dso *d)
{
    for (int i = 0; i < n_hooked; i++)
        if (sym_dso_is(d, hooked[i]))
            return 1;
    return 0;
}

/* A handle to LIB only if the process already loaded it (RTLD_NOLOAD). With
 * two copies loaded (two bundled libpqs), the first one found is used. */
static void *loaded_library(struct lc_lib *lib)
{
    void *h = __atomic_load_n(&lib->handle, __ATOMIC_ACQUIRE);
    if (h)
        return h;
    char path[512], other[512];
    int copies = loader_find_copies(lib->defines[0], lib->defines[1], path, other,
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
        __atomic_store_n(&lib->handle, h, __ATOMIC_RELEASE);
    return h;
}

void *sym_lookup(struct lc_lib *lib, const char *name, const void *self)
{
    void *p;
    /* The library as VIA's copy links it (struct lc_lib). */
    if (lib && lib->via && loader_dlsym(RTLD_NEXT, lib->via->defines[1]) == NULL) {
        void *via = loaded_library(lib->via);
        if (via && (p = loader_dlsym(via, name)) != NULL)
            return p;
    }
    /* libc's dlsym, called from here: RTLD_NEXT means "after lastcall", and
     * our own dlsym would hand our hooks back. */
    p = loader_dlsym(RTLD_NEXT, name);
    if ((p == NULL || p == self) && lib != NULL) {
        void *h = loaded_library(lib);
        p = h ? loader_dlsym(h, name) : NULL;
    }
    if (self != NULL && p == self) {
        LC_DEBUG("lookup of %s found lastcall itself; refusing the loop", name);
        return NULL;
    }
    return p;
}

void sym_absent(struct lc_lib *lib, const char *name)
{
    void *h = lib ? __atomic_load_n(&lib->handle, __ATOMIC_ACQUIRE) : NULL;
    /* The failing lookup comes last: a successful loader call clears the error. */
    if (h == NULL || loader_dlsym(h, name) != NULL)
        loader_dlsym(RTLD_NEXT, name);
}
