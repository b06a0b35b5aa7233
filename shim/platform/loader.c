/* libc's loader functions and the loaded objects. See loader.h.
 * (Moved out of reach.c so that symbols.c, which needs them, no longer calls
 * reach.c, which calls symbols.c: the dependency goes one way, reach.c ->
 * symbols.c -> loader.c -> got.c.) */
#define _GNU_SOURCE
#include "platform/loader.h"

#ifdef __GLIBC__
#include <gnu/libc-version.h>
#endif
#include <link.h>

#include "core/libc_compat.h"

/* Read by the assembly stubs. loader_dlsym_next is stored last: set, all are. */
__attribute__((visibility("hidden"), used)) loader_dlsym_fn loader_dlsym_next;
__attribute__((visibility("hidden"), used)) loader_dlvsym_fn loader_dlvsym_next;
__attribute__((visibility("hidden"), used)) loader_dlopen_fn loader_dlopen_next;
__attribute__((visibility("hidden"), used)) loader_dlmopen_fn loader_dlmopen_next;

static struct lc_dso self;
static int self_ok;

static void marker(void) {}

/* The link map of the object ADDR lies in, from the loader itself: dladdr1
 * takes ld.so's lock while it searches, and we hold none of ours. The two
 * objects asked about (libc, lastcall) are never unloaded while our code runs,
 * so the map stays valid after the lock is released. An earlier version walked
 * the _r_debug list itself, without the loader's lock: a dlclose on another
 * thread could free an entry under it. dladdr1 is not intercepted by sanitizer
 * runtimes, which call our dlsym while they start. */
static int map_of(const void *addr, struct lc_dso *d)
{
    Dl_info info;
    struct link_map *lm = NULL;
    if (dladdr1(addr, &info, (void **)&lm, RTLD_DL_LINKMAP) == 0 || lm == NULL)
        return -1;
    if (dso_from_link_map(lm, d) != 0 || !dso_contains(d, addr))
        return -1;
    return 0;
}

/* libc's dlsym and dlvsym, and our own dynamic symbol table. libc is the
 * object gnu_get_libc_version lies in, a function no one interposes; its
 * symbols are read from its own table (no libc string function: sanitizer
 * interceptors may not be ready). */
int loader_ready(void)
{
    if (__atomic_load_n(&loader_dlsym_next, __ATOMIC_ACQUIRE))
        return 1;
    struct lc_dso d;
    if (!__atomic_load_n(&self_ok, __ATOMIC_ACQUIRE) && map_of((const void *)marker, &d) == 0) {
        self = d;
        __atomic_store_n(&self_ok, 1, __ATOMIC_RELEASE);
    }
    if (map_of((const void *)gnu_get_libc_version, &d) != 0 ||
        dso_contains(&d, (const void *)marker))
        return 0;
    /* glibc < 2.34 (Debian 11): the dl* functions are libdl's, where dladdr1 lies. */
    if (dso_lookup(&d, "dlsym") == NULL &&
        (map_of((const void *)dladdr1, &d) != 0 || dso_contains(&d, (const void *)marker)))
        return 0;
    void *sym = dso_lookup(&d, "dlsym"), *vsym = dso_lookup(&d, "dlvsym");
    void *open = dso_lookup(&d, "dlopen"), *mopen = dso_lookup(&d, "dlmopen");
#ifndef __GLIBC__
    /* musl has neither: our stubs of those names call stand-ins (libc_compat.h). */
    vsym = vsym ? vsym : (void *)lc_compat_dlvsym;
    mopen = mopen ? mopen : (void *)lc_compat_dlmopen;
#endif
    if (sym == NULL || vsym == NULL || open == NULL || mopen == NULL)
        return 0;
    __atomic_store_n(&loader_dlopen_next, (loader_dlopen_fn)open, __ATOMIC_RELEASE);
    __atomic_store_n(&loader_dlmopen_next, (loader_dlmopen_fn)mopen, __ATOMIC_RELEASE);
    __atomic_store_n(&loader_dlvsym_next, (loader_dlvsym_fn)vsym, __ATOMIC_RELEASE);
    __atomic_store_n(&loader_dlsym_next, (loader_dlsym_fn)sym, __ATOMIC_RELEASE);
    return 1;
}

void *loader_dlsym(void *handle, const char *name)
{
    if (!loader_ready())
        return NULL;
    return loader_dlsym_next(handle, name);
}

void *loader_dlvsym(void *handle, const char *name, const char *version)
{
    if (!loader_ready())
        return NULL;
    return loader_dlvsym_next(handle, name, version);
}

void *loader_dlopen(const char *file, int mode)
{
    if (!loader_ready())
        return NULL;
    return loader_dlopen_next(file, mode);
}

const struct lc_dso *loader_self(void)
{
    return __atomic_load_n(&self_ok, __ATOMIC_ACQUIRE) ? &self : NULL;
}

/* ---- loaded copies of a library ---- */

struct copies {
    const char *defines1, *defines2;
    int n;
    char *first, *second;
    size_t cap;
};

/* Copies S into DST (CAP bytes); 0 when it does not fit (DST then holds a
 * truncated copy). Our own loop: this file is not instrumented, and the name
 * is the loader's, written by whichever thread loaded the object. */
static int copy_name(char *dst, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        dst[i] = s[i];
    dst[i] = '\0';
    return s[i] == '\0';
}

static int copies_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct copies *c = data;
    const char *name = info->dlpi_name;
    /* The program itself: its own definitions already come before ours. */
    if (name == NULL || *name == '\0')
        return 0;
    struct lc_dso d;
    if (dso_parse(info, &d) != 0 || dso_contains(&d, (const void *)marker) ||
        !dso_defines(&d, c->defines1) || !dso_defines(&d, c->defines2))
        return 0;
    if (c->n == 0 && !copy_name(c->first, c->cap, name))
        return 0;
    if (c->n == 1)
        copy_name(c->second, c->cap, name);
    c->n++;
    return 0;
}

int loader_find_copies(const char *defines1, const char *defines2, char *first, char *second,
                       size_t cap)
{
    struct copies c = {defines1, defines2, 0, first, second, cap};
    if (cap == 0)
        return 0;
    first[0] = second[0] = '\0';
    dl_iterate_phdr(copies_cb, &c);
    return c.n;
}
