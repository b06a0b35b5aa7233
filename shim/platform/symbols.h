/* Finding the real libpq / hiredis / libssl functions at run time.
 * The shim never links these libraries and never loads them: a process that
 * did not load libpq has no libpq for us to find, and that is fine. */
#ifndef LC_SYMBOLS_H
#define LC_SYMBOLS_H

/* LC_LIB_LIBC: only dlsym(RTLD_NEXT), for the libc calls we interpose. */
enum lc_lib {
    LC_LIB_PQ,
    LC_LIB_HIREDIS,
    LC_LIB_SSL,
    LC_LIB_HIREDIS_SSL, /* hiredis 1.x's TLS library, beside libhiredis */
    LC_LIB_MYSQL,       /* libmariadb (MariaDB Connector/C) or libmysqlclient */
    LC_LIB_COUNT,
    LC_LIB_LIBC = LC_LIB_COUNT
};

/* Returns the address of the real NAME, or NULL. Tries dlsym(RTLD_NEXT), then
 * the library already loaded in a local scope (dlopen RTLD_NOLOAD), as Python
 * extension modules load libpq, recognised by what it defines. SELF is our own
 * hook: finding it again would be a loop, so it is refused. */
void *sym_lookup(enum lc_lib lib, const char *name, const void *self);

/* Leaves dlerror() saying that NAME is undefined: in LIB's own words when
 * the copy of LIB our hooks call has been opened, otherwise in lastcall's
 * (dlsym(RTLD_NEXT) from here). For a lookup answered "absent". */
void sym_absent(enum lc_lib lib, const char *name);

/* Is D (a loaded object, see got.h) a copy of LIB, judged by what it
 * defines? lastcall itself never is. */
struct lc_dso;
int sym_dso_is(const struct lc_dso *d, enum lc_lib lib);

/* Cached lookup: *cache is filled once the symbol is found. */
static inline void *sym_cached(void **cache, enum lc_lib lib, const char *name, const void *self)
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

/* hiredis 1.x added a pointer before `fd` in redisContext. */
enum lc_hiredis_layout { LC_HIREDIS_UNKNOWN = 0, LC_HIREDIS_0 = 1, LC_HIREDIS_1 = 2 };
int sym_hiredis_layout(void);

#endif
