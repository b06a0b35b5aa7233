/* Finding the real functions of the client libraries at run time.
 * The shim never links these libraries and never loads them: a process that
 * did not load libpq has no libpq for us to find, and that is fine. */
#ifndef LC_SYMBOLS_H
#define LC_SYMBOLS_H

/* A client library lastcall calls into, defined by the file that uses it (a
 * kind's own file). It is known by two functions it defines, not by its file
 * name: Python wheels and vendored builds ship libpq as
 * libpq-1a2b3c4d.so.5.15. A kind's library also names the prefixes of the
 * functions lastcall hooks in it: a dlsym of one answers our hook, and the
 * GOT scan rewrites them (reach.c). */
struct lc_lib {
    const char *defines[2];
    const char *hook_prefixes[4];   /* NULL-terminated; none for a helper library */
    /* Look in the copy of VIA's library first when VIA is not in the global
     * scope (libssl as the libpq in use links it: a wheel's bundled libpq
     * brings its own libssl, and SSL objects must go back to the copy that
     * made them). */
    struct lc_lib *via;
    void *handle;                   /* the copy found in a local scope (cache) */
};
/* For the libc calls we interpose: only dlsym(RTLD_NEXT). */
#define LC_LIB_LIBC ((struct lc_lib *)0)

/* The kinds' libraries (the composition root gives them at init, before any
 * hook can use reach): which one a hooked NAME belongs to, by its prefix, and
 * whether a loaded object is one of them. */
void sym_set_hooked_libs(struct lc_lib *const *libs, int n);
struct lc_lib *sym_hooked_lib_of(const char *name);
struct lc_dso;
int sym_dso_is_hooked(const struct lc_dso *d);

/* Returns the address of the real NAME, or NULL. Tries dlsym(RTLD_NEXT), then
 * the library already loaded in a local scope (dlopen RTLD_NOLOAD), as Python
 * extension modules load libpq, recognised by what it defines. SELF is our own
 * hook: finding it again would be a loop, so it is refused. */
void *sym_lookup(struct lc_lib *lib, const char *name, const void *self);

/* Leaves dlerror() saying that NAME is undefined: in LIB's own words when
 * the copy of LIB our hooks call has been opened, otherwise in lastcall's
 * (dlsym(RTLD_NEXT) from here). For a lookup answered "absent". */
void sym_absent(struct lc_lib *lib, const char *name);

/* Is D (a loaded object, see got.h) a copy of LIB, judged by what it
 * defines? lastcall itself never is. */
int sym_dso_is(const struct lc_dso *d, const struct lc_lib *lib);

/* Cached lookup: *cache is filled once the symbol is found. */
static inline void *sym_cached(void **cache, struct lc_lib *lib, const char *name, const void *self)
{
    void *p = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (__builtin_expect(p != 0, 1))
        return p;
    p = sym_lookup(lib, name, self);
    if (p)
        __atomic_store_n(cache, p, __ATOMIC_RELEASE);
    return p;
}

/* REAL_IN(lib, PQsocket) -> typed pointer to the real function, or NULL.
 * __typeof__ does not reference the symbol, so the shim keeps no undefined
 * libpq/hiredis symbol: it loads into any process. */
#define REAL_IN(lib, name)                                                                     \
    ({                                                                                         \
        static void *real_cache_##name;                                                        \
        (__typeof__(&name))sym_cached(&real_cache_##name, lib, #name, NULL);                   \
    })
/* The same for a function the shim itself exports: finding it again is a loop. */
#define HOOKED_REAL_IN(lib, name)                                                              \
    ({                                                                                         \
        static void *real_cache_##name;                                                        \
        (__typeof__(&name))sym_cached(&real_cache_##name, lib, #name, (const void *)&name);    \
    })

#endif
