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
 * there.
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

#include "got.h"
#include "lc.h"
#include "log.h"
#include "runtime.h"
#include "symbols.h"

typedef void *(*dlsym_fn)(void *, const char *);
typedef void *(*dlvsym_fn)(void *, const char *, const char *);

/* Read by the assembly stubs. */
__attribute__((visibility("hidden"), used)) dlsym_fn reach_dlsym_next;
__attribute__((visibility("hidden"), used)) dlvsym_fn reach_dlvsym_next;

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
    void *sym = dso_lookup(&d, "dlsym"), *vsym = dso_lookup(&d, "dlvsym");
    if (sym == NULL || vsym == NULL)
        return 0;
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

/* NAME is one of our hooks: *lib says whose, the result is our function. */
static void *own_hook(const char *name, enum lc_lib *lib)
{
    if (name[0] == 'P' && name[1] == 'Q')
        *lib = LC_LIB_PQ;
    else if (strncmp(name, "redis", 5) == 0)
        *lib = LC_LIB_HIREDIS;
    else if (strncmp(name, "mysql_", 6) == 0)
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
 * dlopen, dlclose, dlinfo, dl_iterate_phdr). ld.so runs a dlopen'd object's
 * constructor with its load lock held, and that constructor may call dlsym,
 * which is ours: if the dlsym path ever waited for a lock of ours whose holder
 * waits for the load lock, both would wait forever. So a scan runs on the
 * thread that sees the change, concurrently with any other scan: walking an
 * object twice writes the same values twice. state_lock guards only the
 * record of what was walked, for a binary search or a pointer swap; got.c's
 * write lock only an mprotect/store/mprotect sequence. */

struct walk_ctx {
    const struct lc_dso *d;
    void *handle; /* D, held open while it is walked */
};

/* Where an entry not bound yet (lazy binding: it still points into the
 * object's own PLT) would be bound: a lookup in the object's own scope, which
 * is what an RTLD_DEEPBIND object sees first. */
static void *would_bind(const struct walk_ctx *w, const char *name)
{
    return reach_real_dlsym(w->handle, name);
}

static void *decide(const char *name, void *current, void *ctx)
{
    const struct walk_ctx *w = ctx;
    enum lc_lib lib;
    void *hook = own_hook(name, &lib);
    if (hook == NULL || current == hook)
        return NULL;
    /* Only the very function our hook calls: a second copy of libpq (a
     * vendored one, bound by its own module) keeps its own bindings. */
    void *real = sym_lookup(lib, name, hook);
    if (real == NULL)
        return NULL;
    if (current == real)
        return hook;
    if ((current == NULL || dso_contains(w->d, current)) && would_bind(w, name) == real)
        return hook;
    return NULL;
}

/* What dl_iterate_phdr lists, copied out: the walk calls the loader, which
 * must not happen under dl_iterate_phdr's lock. Names are copied too (the
 * loader's own strings go away with a dlclose). Nothing is allocated inside
 * the callbacks: a program's allocator may itself call dl_iterate_phdr (to
 * unwind) under its own lock. */
struct loaded {
    uintptr_t start;
    ElfW(Addr) base;
    const ElfW(Phdr) *phdr; /* kept for the program itself, never unloaded */
    ElfW(Half) phnum;
    size_t name_at;         /* offset in names */
};

struct loaded_list {
    struct loaded *v;
    char *names;
    size_t n, cap, names_len, names_cap;
    int overflow;
};

static size_t name_len(const char *s)
{
    size_t n = 0;
    while (s && s[n])
        n++;
    return n;
}

static int count_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct loaded_list *l = data;
    l->n++;
    l->names_len += name_len(info->dlpi_name) + 1;
    return 0;
}

static int collect_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct loaded_list *l = data;
    struct lc_dso d;
    size_t len = name_len(info->dlpi_name);
    if (l->n == l->cap || l->names_len + len + 1 > l->names_cap) {
        l->overflow = 1;
        return 1;
    }
    if (dso_parse(info, &d) != 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        l->names[l->names_len + i] = info->dlpi_name[i];
    l->names[l->names_len + len] = '\0';
    l->v[l->n++] = (struct loaded){d.start, d.base, info->dlpi_phdr, info->dlpi_phnum,
                                   l->names_len};
    l->names_len += len + 1;
    return 0;
}

static int collect(struct loaded_list *l)
{
    for (int attempt = 0; attempt < 4; attempt++) {
        struct loaded_list c = {0};
        dl_iterate_phdr(count_cb, &c);
        *l = (struct loaded_list){0};
        l->cap = c.n + 16;
        l->names_cap = c.names_len + 16 * 256;
        l->v = malloc(l->cap * sizeof *l->v);
        l->names = malloc(l->names_cap);
        if (l->v && l->names) {
            dl_iterate_phdr(collect_cb, l);
            if (!l->overflow)
                return 0;
        }
        free(l->v);
        free(l->names);
        if (l->v == NULL || l->names == NULL)
            break;
    }
    return -1;
}

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

/* The generation whose every object has been walked: the fast check. */
static unsigned long long scanned_adds, scanned_subs;

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

/* One object, held open (RTLD_NOLOAD: never loaded by us) so that another
 * thread's dlclose cannot unmap it while its tables are read. Not found: the
 * vDSO, an object already gone, or one in another namespace (dlmopen), whose
 * calls cannot bind to the functions our hooks call. */
static void walk(const struct loaded *o, const char *name)
{
    void *h = dlopen(name[0] ? name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL)
        return;
    struct link_map *lm = NULL;
    struct lc_dso d;
    int ok = dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_addr == o->base;
    /* Parsed again from the object now held: the one listed may have been
     * replaced by another at the same address in between. The program itself
     * (no name) is never unloaded. */
    if (ok && name[0])
        ok = dso_from_link_map(lm, &d) == 0;
    else if (ok) {
        struct dl_phdr_info info = {
            .dlpi_addr = o->base, .dlpi_name = "", .dlpi_phdr = o->phdr, .dlpi_phnum = o->phnum};
        ok = dso_parse(&info, &d) == 0;
    }
    if (ok && !(self_ok && d.start == self.start) &&
        /* libpq, hiredis and the MySQL client call their own exports: those stay theirs. */
        !sym_dso_is(&d, LC_LIB_PQ) && !sym_dso_is(&d, LC_LIB_HIREDIS) &&
        !sym_dso_is(&d, LC_LIB_MYSQL)) {
        struct walk_ctx w = {&d, h};
        int n = got_patch(&d, decide, &w);
        if (n > 0)
            LC_DEBUG("%s: %d GOT entries now reach lastcall", name[0] ? name : "main", n);
    }
    dlclose(h);
}

void reach_scan(void)
{
    if (!enabled() || !reals_ready())
        return;
    struct generation g = {0, 0};
    dl_iterate_phdr(generation_cb, &g);
    if (g.adds == __atomic_load_n(&scanned_adds, __ATOMIC_ACQUIRE) &&
        g.subs == __atomic_load_n(&scanned_subs, __ATOMIC_ACQUIRE))
        return;
    struct loaded_list l;
    if (collect(&l) != 0)
        return;
    uintptr_t *starts = malloc((l.n + 1) * sizeof *starts);
    unsigned char *done = calloc(l.n + 1, 1);
    if (starts && done) {
        /* Walked already: only under the same unload count (an address may
         * be reused after a dlclose). */
        pthread_mutex_lock(&state_lock);
        if (recorded.subs == g.subs)
            for (size_t i = 0; i < l.n; i++)
                done[i] = (unsigned char)sorted_has(walked, n_walked, l.v[i].start);
        pthread_mutex_unlock(&state_lock);
        for (size_t i = 0; i < l.n; i++) {
            if (!done[i])
                walk(&l.v[i], l.names + l.v[i].name_at);
            starts[i] = l.v[i].start;
        }
        qsort(starts, l.n, sizeof *starts, cmp_addr);
        pthread_mutex_lock(&state_lock);
        /* A scan of an older generation, finishing late, records nothing. */
        if (g.adds >= recorded.adds && g.subs >= recorded.subs) {
            uintptr_t *old = walked;
            walked = starts;
            n_walked = l.n;
            starts = old;
            recorded = g;
            __atomic_store_n(&scanned_subs, g.subs, __ATOMIC_RELEASE);
            __atomic_store_n(&scanned_adds, g.adds, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&state_lock);
    }
    free(starts);
    free(done);
    free(l.v);
    free(l.names);
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
    reach_scan();
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
        ".size dlvsym, .-dlvsym\n");
#endif

/* libc's dlsym is looked up at the first dlsym call, not here: every
 * process runs this, and most never call dlsym. __register_atfork rather
 * than pthread_atfork: lc.h says why. */
__attribute__((constructor)) static void reach_constructor(void)
{
    __register_atfork(state_prepare, state_release, state_release, __dso_handle);
}
