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

/* The object A lies in: the one with the highest load base not above it
 * (objects do not overlap). Its ELF header is mapped at that base. */
static struct link_map *map_containing(uintptr_t a)
{
    struct link_map *best = NULL;
    for (struct link_map *lm = _r_debug.r_map; lm; lm = lm->l_next)
        if (lm->l_addr <= a && (best == NULL || lm->l_addr > best->l_addr))
            best = lm;
    return best;
}

/* libc's dlsym and dlvsym, and our own dynamic symbol table, found through
 * the _r_debug list: no dl_iterate_phdr (ThreadSanitizer intercepts it) and
 * no libc string function (sanitizer interceptors may not be ready). libc is
 * the object gnu_get_libc_version lies in, a function no one interposes. */
static int reals_ready(void)
{
    if (__atomic_load_n(&reach_dlsym_next, __ATOMIC_ACQUIRE))
        return 1;
    struct link_map *me = map_containing((uintptr_t)marker);
    struct link_map *libc = map_containing((uintptr_t)gnu_get_libc_version);
    struct lc_dso d;
    if (me && !__atomic_load_n(&self_ok, __ATOMIC_ACQUIRE) && dso_from_link_map(me, &d) == 0 &&
        dso_contains(&d, (const void *)marker)) {
        self = d;
        __atomic_store_n(&self_ok, 1, __ATOMIC_RELEASE);
    }
    if (libc == NULL || libc == me || dso_from_link_map(libc, &d) != 0)
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

/* ---- GOT rewriting ---- */

/* Where an entry not bound yet (lazy binding: it still points into the
 * object's own PLT) would be bound: a lookup in the object's own scope, which
 * is what an RTLD_DEEPBIND object sees first. */
static void *would_bind(const struct lc_dso *d, const char *name)
{
    void *h = dlopen(d->name[0] ? d->name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL)
        return NULL;
    /* The same path may name another object in another namespace (dlmopen):
     * only this very object's scope will do. */
    struct link_map *lm = NULL;
    void *p = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_addr == d->base)
        p = reach_real_dlsym(h, name);
    dlclose(h);
    return p;
}

static void *decide(const char *name, void *current, void *ctx)
{
    const struct lc_dso *d = ctx;
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
    if ((current == NULL || dso_contains(d, current)) && would_bind(d, name) == real)
        return hook;
    return NULL;
}

struct dso_list {
    struct lc_dso *v;
    size_t n, cap;
    int failed;
};

static int collect_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct dso_list *l = data;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct lc_dso *v = realloc(l->v, cap * sizeof *v);
        if (v == NULL) {
            l->failed = 1;
            return 1;
        }
        l->v = v;
        l->cap = cap;
    }
    if (dso_parse(info, &l->v[l->n]) == 0)
        l->n++;
    return 0;
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

static pthread_mutex_t scan_lock = PTHREAD_MUTEX_INITIALIZER;
static struct generation scanned; /* under scan_lock */
/* The fast check, without the lock. */
static unsigned long long scanned_adds, scanned_subs;
/* Objects already walked, by mapping start (sorted): each is walked once,
 * not at every module a Python program imports. Cleared when anything is
 * unloaded, since an address may then be reused. */
static uintptr_t *walked;
static size_t n_walked, cap_walked;

static int cmp_addr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

static void scan_atfork_child(void)
{
    pthread_mutex_init(&scan_lock, NULL);
}

static void walk(const struct lc_dso *d)
{
    if (self_ok && d->start == self.start)
        return;
    /* libpq, hiredis and the MySQL client call their own exports: those stay theirs. */
    if (sym_dso_is(d, LC_LIB_PQ) || sym_dso_is(d, LC_LIB_HIREDIS) || sym_dso_is(d, LC_LIB_MYSQL))
        return;
    int n = got_patch(d, decide, (void *)d);
    if (n > 0)
        LC_DEBUG("%s: %d GOT entries now reach lastcall", d->name[0] ? d->name : "main", n);
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
    pthread_mutex_lock(&scan_lock);
    if (g.adds != scanned.adds || g.subs != scanned.subs) {
        if (g.subs != scanned.subs)
            n_walked = 0;
        /* Collected first, walked after: the walk looks symbols up (dlopen
         * RTLD_NOLOAD), which must not run under dl_iterate_phdr's lock. */
        struct dso_list l = {0};
        dl_iterate_phdr(collect_cb, &l);
        int ok = !l.failed;
        if (ok && n_walked + l.n > cap_walked) {
            size_t cap = n_walked + l.n + 64;
            uintptr_t *w = realloc(walked, cap * sizeof *w);
            if (w) {
                walked = w;
                cap_walked = cap;
            } else {
                ok = 0;
            }
        }
        size_t before = n_walked;
        for (size_t i = 0; ok && i < l.n; i++) {
            if (before && bsearch(&l.v[i].start, walked, before, sizeof *walked, cmp_addr))
                continue;
            walk(&l.v[i]);
            walked[n_walked++] = l.v[i].start;
        }
        if (ok) {
            qsort(walked, n_walked, sizeof *walked, cmp_addr);
            scanned = g;
            __atomic_store_n(&scanned_subs, g.subs, __ATOMIC_RELEASE);
            __atomic_store_n(&scanned_adds, g.adds, __ATOMIC_RELEASE);
        }
        free(l.v);
    }
    pthread_mutex_unlock(&scan_lock);
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
        if (real != NULL && handle == RTLD_DEFAULT && version == NULL) {
            dlerror(); /* our own lookups' failures are not the caller's */
            *result = hook;
            answered = 1;
        } else if (real != NULL && handle != RTLD_DEFAULT) {
            /* A given handle: the answer does not depend on the caller. */
            void *r = version ? reach_dlvsym_next(handle, name, version)
                              : reach_dlsym_next(handle, name);
            *result = r == real ? hook : r;
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
    __register_atfork(NULL, NULL, scan_atfork_child, __dso_handle);
}
