/* dlsym/dlvsym interposition and GOT rewriting for objects that bind past the
 * global scope. See reach.h and DESIGN.md ("Reach").
 *
 * glibc's dlsym is caller-sensitive: RTLD_NEXT means "after the object that
 * called me" and RTLD_DEFAULT searches the caller's scope, both found from
 * the return address. A C wrapper that calls the real dlsym would make every
 * caller look like liblastcall.so. So the exported dlsym is a small assembly
 * stub: it asks reach_dlsym_pre whether this lookup is one we answer (a
 * hooked libpq/hiredis function); if not, it jumps to libc's dlsym with the
 * caller's own return address still on the stack, exactly as if we were not
 * there. dlopen and dlmopen are stubs of the same kind: they only note that a
 * load is under way (see load_epoch), so that an ordinary dlsym need not ask
 * the loader whether anything was loaded.
 *
 * This file is built without sanitizer instrumentation: sanitizer runtimes
 * call dlsym (ours, since they are preloaded before us and do not define it)
 * while they start, before instrumented code may run. Until our constructor
 * has run, every lookup goes straight through. */
#define _GNU_SOURCE
#include "reach.h"

#include <dlfcn.h>
#include <errno.h>
#include <gnu/libc-version.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "got.h"
#include "lc.h"
#include "log.h"
#include "runtime.h"
#include "symbols.h"

typedef void *(*dlsym_fn)(void *, const char *);
typedef void *(*dlvsym_fn)(void *, const char *, const char *);
typedef void *(*dlopen_fn)(const char *, int);
typedef void *(*dlmopen_fn)(Lmid_t, const char *, int);

/* Read by the assembly stubs. reach_dlsym_next is stored last: set, all are. */
__attribute__((visibility("hidden"), used)) dlsym_fn reach_dlsym_next;
__attribute__((visibility("hidden"), used)) dlvsym_fn reach_dlvsym_next;
__attribute__((visibility("hidden"), used)) dlopen_fn reach_dlopen_next;
__attribute__((visibility("hidden"), used)) dlmopen_fn reach_dlmopen_next;

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
static int reals_ready(void)
{
    if (__atomic_load_n(&reach_dlsym_next, __ATOMIC_ACQUIRE))
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
    if (sym == NULL || vsym == NULL || open == NULL || mopen == NULL)
        return 0;
    __atomic_store_n(&reach_dlopen_next, (dlopen_fn)open, __ATOMIC_RELEASE);
    __atomic_store_n(&reach_dlmopen_next, (dlmopen_fn)mopen, __ATOMIC_RELEASE);
    __atomic_store_n(&reach_dlvsym_next, (dlvsym_fn)vsym, __ATOMIC_RELEASE);
    __atomic_store_n(&reach_dlsym_next, (dlsym_fn)sym, __ATOMIC_RELEASE);
    return 1;
}

void *reach_real_dlsym(void *handle, const char *name)
{
    if (!reals_ready())
        return NULL;
    return reach_dlsym_next(handle, name);
}

void *reach_real_dlvsym(void *handle, const char *name, const char *version)
{
    if (!reals_ready())
        return NULL;
    return reach_dlvsym_next(handle, name, version);
}

void *reach_real_dlopen(const char *file, int mode)
{
    if (!reals_ready())
        return NULL;
    return reach_dlopen_next(file, mode);
}

/* Our own loop: own_hook also runs inside dl_iterate_phdr's callback, where a
 * sanitizer's string interceptor has no business. */
static int starts_with(const char *s, const char *prefix)
{
    while (*prefix && *s == *prefix)
        s++, prefix++;
    return *prefix == '\0';
}

/* NAME is one of our hooks: *lib says whose, the result is our function. */
static void *own_hook(const char *name, enum lc_lib *lib)
{
    /* lo_*: libpq's large-object calls, where lastcall.map exports them. */
    if (starts_with(name, "PQ") || starts_with(name, "lo_"))
        *lib = LC_LIB_PQ;
    else if (starts_with(name, "redis"))
        *lib = LC_LIB_HIREDIS;
    else if (starts_with(name, "mysql_"))
        *lib = LC_LIB_MYSQL;
    else
        return NULL;
    return __atomic_load_n(&self_ok, __ATOMIC_ACQUIRE) ? dso_lookup(&self, name) : NULL;
}

static int enabled(void)
{
    return __atomic_load_n(&lc_initialized, __ATOMIC_ACQUIRE) && !lc_cfg.disabled;
}

/* ---- GOT rewriting ----
 *
 * Lock rule: no lock of ours is held across a call into the loader (dlsym,
 * dlopen, dlclose, dladdr, dl_iterate_phdr). ld.so runs a dlopen'd object's
 * constructor with its load lock held, and that constructor may call dlsym,
 * which is ours: if the dlsym path ever waited for a lock of ours whose holder
 * waits for the load lock, both would wait forever. So a scan runs on the
 * thread that sees the change, concurrently with any other scan (two scans of
 * one object write the same values), in three steps:
 *
 * 1. inside dl_iterate_phdr, whose lock keeps every listed object mapped
 *    (dlclose unmaps under it): read each new object's relocations and copy
 *    out the GOT entries that name one of our hooks;
 * 2. with no lock at all: decide each entry, which looks symbols up;
 * 3. inside dl_iterate_phdr again, only if nothing was unloaded since step 1
 *    (so every slot is still mapped): write.
 *
 * No object is held open for the scan (a dlclose of ours could be its last
 * one, and would unload it on this thread), except, as a lookup in its own
 * scope needs a handle, an object with an entry not bound yet (lazy binding).
 * Nothing is allocated inside dl_iterate_phdr: a program's allocator may itself
 * call it (to unwind) under its own lock. state_lock is held only to copy or
 * replace the record of what was walked; got.c's write lock only across an
 * mprotect/store/mprotect sequence. */

struct generation {
    unsigned long long adds, subs;
};

static int generation_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct generation *g = data;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        g->adds = info->dlpi_adds;
        g->subs = info->dlpi_subs;
    }
    return 1;
}

/* One object that has entries to decide. */
struct object {
    uintptr_t start, end;
    ElfW(Addr) base;
    size_t name_at; /* its file name, copied into scan.names */
};

/* A GOT entry naming one of our hooks. */
struct entry {
    void **slot;
    void *current; /* its value in step 1 */
    void *hook;
    void *real;    /* the function the hook calls (step 2) */
    void *want;    /* what step 3 writes, or NULL */
    size_t object; /* index in scan.objects */
    size_t name_at;
    enum lc_lib lib;
};

struct scan {
    struct generation g;
    int listed; /* step 1 saw the first object (and so g) */
    /* What was walked before (sorted), valid only for the same unload count
     * (an address may be reused after a dlclose). */
    const uintptr_t *walked;
    size_t n_walked;
    unsigned long long walked_subs;
    int walked_valid;
    uintptr_t *starts; /* every object listed (recorded as walked) */
    size_t n_starts, cap_starts;
    struct object *objects;
    size_t n_objects, cap_objects;
    struct entry *entries;
    size_t n_entries, cap_entries;
    char *names;
    size_t names_len, names_cap;
    int overflow; /* a buffer was too small: step 1 again, with larger ones */
    int stale;    /* something was unloaded before step 3: write nothing */
    int unready;  /* an object not relocated yet: record nothing, look again */
    const struct lc_dso *listing; /* the object step 1 is reading */
    size_t written;
};

static int sorted_has(const uintptr_t *v, size_t n, uintptr_t a)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] == a)
            return 1;
        if (v[mid] < a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Copies S into the scan's name buffer; the offset, or (size_t)-1. Our own
 * loop: no libc string function inside the loader's callback. */
static size_t keep_name(struct scan *sc, const char *s)
{
    size_t len = 0;
    while (s && s[len])
        len++;
    if (sc->names_len + len + 1 > sc->names_cap) {
        sc->overflow = 1;
        return (size_t)-1;
    }
    size_t at = sc->names_len;
    for (size_t i = 0; i < len; i++)
        sc->names[at + i] = s[i];
    sc->names[at + len] = '\0';
    sc->names_len += len + 1;
    return at;
}

static int entry_cb(const char *name, void **slot, void *current, void *ctx)
{
    struct scan *sc = ctx;
    enum lc_lib lib;
    void *hook = own_hook(name, &lib);
    if (hook == NULL || current == hook)
        return 0;
    /* dl_iterate_phdr lists an object as soon as it is mapped; another
     * thread's dlopen may still be relocating it. An entry still holding its
     * link-time value (its PLT stub, unrelocated) is decided at a later look. */
    const struct lc_dso *d = sc->listing;
    uintptr_t c = (uintptr_t)current;
    if (d->base != 0 && c != 0 && !dso_contains(d, current) &&
        dso_contains(d, (const void *)(c + d->base))) {
        sc->unready = 1;
        return 0;
    }
    if (sc->n_entries == sc->cap_entries) {
        sc->overflow = 1;
        return 1;
    }
    size_t at = keep_name(sc, name);
    if (at == (size_t)-1)
        return 1;
    sc->entries[sc->n_entries++] = (struct entry){
        .slot = slot, .current = current, .hook = hook, .object = sc->n_objects,
        .name_at = at, .lib = lib};
    return 0;
}

static int list_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct scan *sc = data;
    if (!sc->listed) {
        generation_cb(info, size, &sc->g);
        sc->listed = 1;
        if (sc->walked_subs != sc->g.subs)
            sc->walked_valid = 0;
    }
    struct lc_dso d;
    if (dso_parse(info, &d) != 0)
        return 0;
    if (sc->n_starts == sc->cap_starts || sc->n_objects == sc->cap_objects) {
        sc->overflow = 1;
        return 1;
    }
    sc->starts[sc->n_starts++] = d.start;
    if (sc->walked_valid && sorted_has(sc->walked, sc->n_walked, d.start))
        return 0;
    /* lastcall itself; libpq, hiredis and the MySQL client call their own
     * exports: those stay theirs. */
    if ((self_ok && d.start == self.start) || sym_dso_is(&d, LC_LIB_PQ) ||
        sym_dso_is(&d, LC_LIB_HIREDIS) || sym_dso_is(&d, LC_LIB_MYSQL))
        return 0;
    size_t before = sc->n_entries;
    sc->listing = &d;
    got_each(&d, entry_cb, sc);
    if (sc->overflow)
        return 1;
    if (sc->n_entries == before)
        return 0;
    size_t at = keep_name(sc, info->dlpi_name);
    if (at == (size_t)-1)
        return 1;
    sc->objects[sc->n_objects++] = (struct object){d.start, d.end, d.base, at};
    return 0;
}

/* Where an entry not bound yet (lazy binding: it still points into the
 * object's own PLT, or is 0) would be bound: a lookup in the object's own
 * scope, which is what an RTLD_DEEPBIND object sees first. H is the object,
 * held open (RTLD_NOLOAD: never loaded by us) for the lookup. */
static void decide_lazy(struct scan *sc, size_t first, size_t end)
{
    const struct object *o = &sc->objects[sc->entries[first].object];
    const char *file = sc->names + o->name_at;
    void *h = reach_real_dlopen(file[0] ? file : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL)
        return; /* gone, or in another namespace (dlmopen): not our functions */
    struct link_map *lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_addr == o->base)
        for (size_t i = first; i < end; i++) {
            struct entry *e = &sc->entries[i];
            uintptr_t c = (uintptr_t)e->current;
            if (e->real && !e->want && (c == 0 || (c >= o->start && c < o->end)) &&
                reach_real_dlsym(h, sc->names + e->name_at) == e->real)
                e->want = e->hook;
        }
    dlclose(h);
}

/* Step 2. Only the very function our hook calls: a second copy of libpq (a
 * vendored one, bound by its own module) keeps its own bindings. */
static void decide_all(struct scan *sc)
{
    for (size_t first = 0; first < sc->n_entries;) {
        size_t end = first;
        int lazy = 0;
        for (; end < sc->n_entries && sc->entries[end].object == sc->entries[first].object; end++) {
            struct entry *e = &sc->entries[end];
            e->real = sym_lookup(e->lib, sc->names + e->name_at, e->hook);
            if (e->real && e->current == e->real)
                e->want = e->hook;
            else if (e->real)
                lazy = 1;
        }
        if (lazy)
            decide_lazy(sc, first, end);
        first = end;
    }
}

static int write_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct scan *sc = data;
    struct generation now = {0, 0};
    generation_cb(info, size, &now);
    if (now.subs != sc->g.subs) {
        sc->stale = 1;
        return 1;
    }
    for (size_t i = 0; i < sc->n_entries; i++) {
        struct entry *e = &sc->entries[i];
        if (e->want == NULL)
            continue;
        /* Bound meanwhile (lazily, or by a relocation under way): still ours
         * to take over only if it went to the very function. */
        void *cur = __atomic_load_n(e->slot, __ATOMIC_ACQUIRE);
        if ((cur == e->current || cur == e->real) && cur != e->want &&
            got_write(e->slot, e->want) == 0)
            sc->written++;
    }
    return 1;
}

/* The generation whose every object has been walked. */
static unsigned long long scanned_adds, scanned_subs;

/* When to look at the generation at all, in a few loads rather than a
 * dl_iterate_phdr per dlsym. Our dlopen/dlmopen stubs bump load_epoch before
 * the loader runs; they cannot run after it (they jump to libc's, keeping the
 * caller's return address), so a load "under way" ends only when its thread
 * next calls our dlsym: by then the loader has mapped everything that dlopen
 * loads (a constructor's dlsym included: constructors run after mapping).
 * Until then loads_unconfirmed counts that thread, and no look consumes an
 * epoch: every dlsym looks, as every one did before the epoch existed. A look
 * reads the epoch, then the count: a load whose bump it saw either counts
 * still, or is mapped, and so in the generation it reads next. Every 256th
 * dlsym of a thread looks anyway, for loads that never reach our stubs (libc's
 * own dlopen for NSS or iconv, an RTLD_DEEPBIND object's own dlopen). Starts
 * unconsumed: the first dlsym after our constructor looks. */
static unsigned long load_epoch = 1, seen_epoch, loads_unconfirmed;
static __thread unsigned char dlopen_unconfirmed __attribute__((tls_model("initial-exec")));
static __thread unsigned char calls_here __attribute__((tls_model("initial-exec")));

static void consume_epoch(unsigned long e)
{
    unsigned long seen = __atomic_load_n(&seen_epoch, __ATOMIC_RELAXED);
    while (e > seen &&
           !__atomic_compare_exchange_n(&seen_epoch, &seen, e, 1, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
    }
}

static int should_look(void)
{
    if (dlopen_unconfirmed)
        return 1;
    if (__atomic_load_n(&load_epoch, __ATOMIC_ACQUIRE) !=
        __atomic_load_n(&seen_epoch, __ATOMIC_RELAXED))
        return 1;
    return ++calls_here == 0;
}

/* This thread's dlsym after its dlopen: its load is mapped. */
static void confirm_own_load(void)
{
    if (dlopen_unconfirmed) {
        dlopen_unconfirmed = 0;
        __atomic_fetch_sub(&loads_unconfirmed, 1, __ATOMIC_SEQ_CST);
    }
}

/* A fork child has only the forking thread: its own load, if any, counts. */
static void loads_atfork_child(void)
{
    __atomic_store_n(&loads_unconfirmed, dlopen_unconfirmed ? 1 : 0, __ATOMIC_RELAXED);
}

/* Called by the dlopen/dlmopen stubs; 0 only if libc's functions cannot be
 * found (never with glibc): the stub then returns NULL. */
__attribute__((visibility("hidden"), used)) int reach_dlopen_pre(void)
{
    int saved = errno;
    int ready = reals_ready();
    errno = saved;
    if (!ready)
        return 0;
    if (!dlopen_unconfirmed) {
        dlopen_unconfirmed = 1;
        __atomic_fetch_add(&loads_unconfirmed, 1, __ATOMIC_SEQ_CST);
    }
    __atomic_fetch_add(&load_epoch, 1, __ATOMIC_SEQ_CST);
    return 1;
}

/* Objects walked, by mapping start (sorted), as of generation `recorded`:
 * each is walked once, not at every module a Python program imports. A scan
 * replaces the whole record with its own list (everything loaded at its
 * generation, walked by it or before it). Under state_lock. */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t *walked;
static size_t n_walked;
static struct generation recorded;

static int cmp_addr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* Fork: held across it (never for long), so the child's copy is whole. */
static void state_prepare(void)
{
    pthread_mutex_lock(&state_lock);
    got_fork_prepare();
}

static void state_release(void)
{
    got_fork_release();
    pthread_mutex_unlock(&state_lock);
}

static void scan_free(struct scan *sc)
{
    free((void *)sc->walked);
    free(sc->starts);
    free(sc->objects);
    free(sc->entries);
    free(sc->names);
}

/* Step 1, with buffers grown until everything fits. */
static int list_new_entries(struct scan *sc)
{
    size_t objects = 64, entries = 64, names = 8192;
    for (int attempt = 0; attempt < 6; attempt++) {
        struct scan fresh = {0};
        fresh.cap_starts = fresh.cap_objects = objects;
        fresh.cap_entries = entries;
        fresh.names_cap = names;
        fresh.starts = malloc(objects * sizeof *fresh.starts);
        fresh.objects = malloc(objects * sizeof *fresh.objects);
        fresh.entries = malloc(entries * sizeof *fresh.entries);
        fresh.names = malloc(names);
        /* A copy of the record: the callback reads it without state_lock. */
        pthread_mutex_lock(&state_lock);
        size_t n = n_walked;
        struct generation r = recorded;
        pthread_mutex_unlock(&state_lock);
        uintptr_t *copy = malloc((n + 1) * sizeof *copy);
        if (!fresh.starts || !fresh.objects || !fresh.entries || !fresh.names || !copy) {
            free(copy);
            scan_free(&fresh);
            return -1;
        }
        pthread_mutex_lock(&state_lock);
        if (n_walked <= n && recorded.adds == r.adds && recorded.subs == r.subs) {
            for (size_t i = 0; i < n_walked; i++)
                copy[i] = walked[i];
            fresh.n_walked = n_walked;
            fresh.walked_subs = recorded.subs;
            fresh.walked_valid = 1;
        }
        pthread_mutex_unlock(&state_lock);
        fresh.walked = copy;
        dl_iterate_phdr(list_cb, &fresh);
        if (!fresh.overflow) {
            *sc = fresh;
            return 0;
        }
        scan_free(&fresh);
        objects *= 2, entries *= 2, names *= 2;
    }
    return -1;
}

/* An entry that keeps its link-time value for good (a layout the test in
 * entry_cb misreads) must not make every dlsym scan again forever: after a
 * second at the same generation the objects are recorded as walked anyway. */
static unsigned long long unready_adds;
static long long unready_since_ms;

static int still_relocating(const struct generation *g)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (__atomic_exchange_n(&unready_adds, g->adds, __ATOMIC_RELAXED) != g->adds) {
        __atomic_store_n(&unready_since_ms, now, __ATOMIC_RELAXED);
        return 1;
    }
    return now - __atomic_load_n(&unready_since_ms, __ATOMIC_RELAXED) < 1000;
}

void reach_scan(void)
{
    if (!enabled() || !reals_ready())
        return;
    /* The epoch, then the loads still under way (other than this thread's,
     * which is mapped: we are in its dlsym), then the generation. */
    unsigned long epoch = __atomic_load_n(&load_epoch, __ATOMIC_SEQ_CST);
    int settled = __atomic_load_n(&loads_unconfirmed, __ATOMIC_SEQ_CST) ==
                  (dlopen_unconfirmed ? 1u : 0u);
    struct generation g = {0, 0};
    dl_iterate_phdr(generation_cb, &g);
    if (g.adds == __atomic_load_n(&scanned_adds, __ATOMIC_ACQUIRE) &&
        g.subs == __atomic_load_n(&scanned_subs, __ATOMIC_ACQUIRE)) {
        if (settled)
            consume_epoch(epoch);
        return;
    }
    struct scan sc;
    if (list_new_entries(&sc) != 0)
        return;
    decide_all(&sc);
    if (sc.n_entries)
        dl_iterate_phdr(write_cb, &sc);
    if (sc.written)
        LC_DEBUG("%zu GOT entries now reach lastcall", sc.written);
    if (!sc.stale && !(sc.unready && still_relocating(&sc.g))) {
        qsort(sc.starts, sc.n_starts, sizeof *sc.starts, cmp_addr);
        pthread_mutex_lock(&state_lock);
        /* A scan of an older generation, finishing late, records nothing. */
        if (sc.g.adds >= recorded.adds && sc.g.subs >= recorded.subs) {
            uintptr_t *old = walked;
            walked = sc.starts;
            n_walked = sc.n_starts;
            sc.starts = old;
            recorded = sc.g;
            __atomic_store_n(&scanned_subs, sc.g.subs, __ATOMIC_RELEASE);
            __atomic_store_n(&scanned_adds, sc.g.adds, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&state_lock);
        if (settled)
            consume_epoch(epoch);
    }
    scan_free(&sc);
}

/* ---- loaded copies of a library ---- */

struct copies {
    enum lc_lib lib;
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
    if (dso_parse(info, &d) != 0 || !sym_dso_is(&d, c->lib))
        return 0;
    if (c->n == 0 && !copy_name(c->first, c->cap, name))
        return 0;
    if (c->n == 1)
        copy_name(c->second, c->cap, name);
    c->n++;
    return 0;
}

int reach_find_copies(enum lc_lib lib, char *first, char *second, size_t cap)
{
    struct copies c = {lib, 0, first, second, cap};
    if (cap == 0)
        return 0;
    first[0] = second[0] = '\0';
    dl_iterate_phdr(copies_cb, &c);
    return c.n;
}

/* ---- dlsym / dlvsym ---- */

/* Returns 1 with *result set when the lookup is ours to answer, 0 when the
 * stub should go on to libc's function with the caller's return address. */
__attribute__((visibility("hidden"), used)) int reach_dlsym_pre(void *handle, const char *name,
                                                                const char *version,
                                                                void **result)
{
    if (!reals_ready()) {
        *result = NULL; /* cannot happen with glibc: there is always a dlsym */
        return 1;
    }
    if (!enabled() || name == NULL)
        return 0;
    int saved = errno;
    if (should_look()) {
        reach_scan();
        confirm_own_load();
    }
    int answered = 0;
    enum lc_lib lib;
    void *hook;
    /* RTLD_NEXT keeps its meaning: for anything loaded before lastcall the
     * next definition is already our hook; an interposer loaded after us
     * wants the real function (our hook already ran before it). */
    if (handle != RTLD_NEXT && (hook = own_hook(name, &lib)) != NULL) {
        void *real = sym_lookup(lib, name, hook);
        if (handle == RTLD_DEFAULT && version == NULL) {
            if (real != NULL) {
                dlerror(); /* our own lookups' failures are not the caller's */
                *result = hook;
                answered = 1;
            } else if (reach_dlsym_next(RTLD_DEFAULT, name) == hook) {
                /* Only our export defines it: the library in use lacks it (an
                 * older version) or is not loaded. A feature probe must read
                 * "absent", as without us. (Defined by an object before us,
                 * the program say: libc answers, from the caller.) */
                sym_absent(lib, name);
                *result = NULL;
                answered = 1;
            }
        } else if (handle != RTLD_DEFAULT) {
            /* A given handle: the answer does not depend on the caller. Our
             * hook stands for the function it calls, and only for that. */
            dlerror();
            void *r = version ? reach_dlvsym_next(handle, name, version)
                              : reach_dlsym_next(handle, name);
            if (real != NULL && r == real) {
                r = hook;
            } else if (real == NULL && r == hook) {
                sym_absent(lib, name);
                r = NULL;
            }
            *result = r;
            answered = 1;
        }
    }
    errno = saved;
    return answered;
}

#if defined(__x86_64__)
/* dlsym(handle, name): reach_dlsym_pre(handle, name, NULL, &result), then
 * either return result or tail-jump to libc with the arguments restored. At
 * entry %rsp is 8 mod 16; 24 bytes of frame make the call aligned. */
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        "dlsym:\n"
        ".cfi_startproc\n"
        "  endbr64\n"
        "  subq $24, %rsp\n"
        ".cfi_adjust_cfa_offset 24\n"
        "  movq %rdi, 0(%rsp)\n"
        "  movq %rsi, 8(%rsp)\n"
        "  xorl %edx, %edx\n"
        "  leaq 16(%rsp), %rcx\n"
        "  call reach_dlsym_pre\n"
        "  testl %eax, %eax\n"
        "  jnz 1f\n"
        "  movq 0(%rsp), %rdi\n"
        "  movq 8(%rsp), %rsi\n"
        "  addq $24, %rsp\n"
        ".cfi_adjust_cfa_offset -24\n"
        "  jmp *reach_dlsym_next(%rip)\n"
        "1:\n"
        ".cfi_adjust_cfa_offset 24\n"
        "  movq 16(%rsp), %rax\n"
        "  addq $24, %rsp\n"
        ".cfi_adjust_cfa_offset -24\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlsym, .-dlsym\n"
        /* dlvsym(handle, name, version): the same with a third argument and
         * a 40-byte frame. */
        ".globl dlvsym\n"
        ".type dlvsym, @function\n"
        "dlvsym:\n"
        ".cfi_startproc\n"
        "  endbr64\n"
        "  subq $40, %rsp\n"
        ".cfi_adjust_cfa_offset 40\n"
        "  movq %rdi, 0(%rsp)\n"
        "  movq %rsi, 8(%rsp)\n"
        "  movq %rdx, 16(%rsp)\n"
        "  leaq 24(%rsp), %rcx\n"
        "  call reach_dlsym_pre\n"
        "  testl %eax, %eax\n"
        "  jnz 1f\n"
        "  movq 0(%rsp), %rdi\n"
        "  movq 8(%rsp), %rsi\n"
        "  movq 16(%rsp), %rdx\n"
        "  addq $40, %rsp\n"
        ".cfi_adjust_cfa_offset -40\n"
        "  jmp *reach_dlvsym_next(%rip)\n"
        "1:\n"
        ".cfi_adjust_cfa_offset 40\n"
        "  movq 24(%rsp), %rax\n"
        "  addq $40, %rsp\n"
        ".cfi_adjust_cfa_offset -40\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlvsym, .-dlvsym\n"
        /* dlopen(file, mode): reach_dlopen_pre() marks a load under way, then
         * a tail jump to libc's, whose caller-sensitive parts (namespace,
         * RUNPATH, the new object's loader) see the program's return address.
         * Nothing can run after it. */
        ".globl dlopen\n"
        ".type dlopen, @function\n"
        "dlopen:\n"
        ".cfi_startproc\n"
        "  endbr64\n"
        "  subq $24, %rsp\n"
        ".cfi_adjust_cfa_offset 24\n"
        "  movq %rdi, 0(%rsp)\n"
        "  movq %rsi, 8(%rsp)\n"
        "  call reach_dlopen_pre\n"
        "  testl %eax, %eax\n"
        "  jz 1f\n"
        "  movq 0(%rsp), %rdi\n"
        "  movq 8(%rsp), %rsi\n"
        "  addq $24, %rsp\n"
        ".cfi_adjust_cfa_offset -24\n"
        "  jmp *reach_dlopen_next(%rip)\n"
        "1:\n"
        ".cfi_adjust_cfa_offset 24\n"
        "  xorl %eax, %eax\n"
        "  addq $24, %rsp\n"
        ".cfi_adjust_cfa_offset -24\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlopen, .-dlopen\n"
        /* dlmopen(lmid, file, mode): the same with three arguments. */
        ".globl dlmopen\n"
        ".type dlmopen, @function\n"
        "dlmopen:\n"
        ".cfi_startproc\n"
        "  endbr64\n"
        "  subq $40, %rsp\n"
        ".cfi_adjust_cfa_offset 40\n"
        "  movq %rdi, 0(%rsp)\n"
        "  movq %rsi, 8(%rsp)\n"
        "  movq %rdx, 16(%rsp)\n"
        "  call reach_dlopen_pre\n"
        "  testl %eax, %eax\n"
        "  jz 1f\n"
        "  movq 0(%rsp), %rdi\n"
        "  movq 8(%rsp), %rsi\n"
        "  movq 16(%rsp), %rdx\n"
        "  addq $40, %rsp\n"
        ".cfi_adjust_cfa_offset -40\n"
        "  jmp *reach_dlmopen_next(%rip)\n"
        "1:\n"
        ".cfi_adjust_cfa_offset 40\n"
        "  xorl %eax, %eax\n"
        "  addq $40, %rsp\n"
        ".cfi_adjust_cfa_offset -40\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlmopen, .-dlmopen\n");
#endif

/* libc's dlsym is looked up at the first dlsym call, not here: every
 * process runs this, and most never call dlsym. __register_atfork rather
 * than pthread_atfork: lc.h says why. */
__attribute__((constructor)) static void reach_constructor(void)
{
    __register_atfork(state_prepare, state_release, state_release, __dso_handle);
    __register_atfork(NULL, NULL, loads_atfork_child, __dso_handle);
}
