/* Safe points where threads cannot be diverted (every glibc architecture but
 * x86-64: aarch64 first). See safepoint.h and core/arch.h.
 *
 * No diversion here: safepoint_prepare() says no, so the drain thread starts
 * at the first connect. But what the hangs work decided for parking holds on
 * every architecture: a thread that takes a managed signal while it runs a
 * dlopen'd object's constructor (ld.so's load lock held) or a dl_iterate_phdr
 * callback (its write lock), or inside fork(), is not parked there, or every
 * other thread's loader call would wait for good; it is tried again 50 us
 * later on a timer of its own (safepoint_park_retry, retry_timer.c) until it
 * has left them.
 * safepoint.c and retry_timer.c do the same on x86-64 beside the diversion;
 * this file is the part of them that needs no ucontext: which mutexes of
 * ld.so's _rtld_global are the load and write locks (measured, as their
 * offset changes with the glibc version), whether this thread holds one, and
 * (the per-thread timer is retry_timer.c's).
 * The mutexes are read through glibc's own pthread_mutex_t (its size differs
 * between architectures: 40 bytes on x86-64, 48 on aarch64). */
#define _GNU_SOURCE
#include "core/arch.h"
#include "platform/safepoint.h"

#if LC_ARCH_SAFEPOINT_GENERIC

#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "platform/got.h"

struct loader_probe {
    uintptr_t rtld_global, rtld_global_end; /* ld.so's _rtld_global, bounded by its segment */
};

static int find_rtld_global(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct loader_probe *probe = data;
    if (info->dlpi_addr == 0 || info->dlpi_addr != (ElfW(Addr))getauxval(AT_BASE))
        return 0;
    struct lc_dso d;
    void *g = dso_parse(info, &d) == 0 ? dso_lookup(&d, "_rtld_global") : NULL;
    for (int i = 0; g && i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (uintptr_t)g >= lo && (uintptr_t)g < lo + ph->p_memsz) {
            probe->rtld_global = (uintptr_t)g;
            probe->rtld_global_end = lo + ph->p_memsz;
        }
    }
    return 1;
}

/* A held lock has a non-zero lock word or recursion count (ld.so's stand-in
 * before libc is up only counts). */
static int mutex_held(const volatile pthread_mutex_t *m)
{
    return m->__data.__lock != 0 || m->__data.__count != 0;
}

static int looks_recursive(const pthread_mutex_t *m)
{
    return m->__data.__kind == PTHREAD_MUTEX_RECURSIVE_NP;
}

#define RTLD_SCAN 8192
static const pthread_mutex_t *loader_locks; /* [0]: load lock, [1]: write lock */
static uint32_t held_inside[RTLD_SCAN / 8 / 32];
static int prepared;

#define FOR_EACH_SLOT(probe, a, k)                                                             \
    for (uintptr_t a = (probe)->rtld_global, k = 0;                                           \
         a + sizeof(pthread_mutex_t) <= (probe)->rtld_global_end &&                            \
         a < (probe)->rtld_global + RTLD_SCAN;                                                 \
         a += 8, k++)

static int mark_held(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)info;
    (void)size;
    const struct loader_probe *probe = data;
    FOR_EACH_SLOT(probe, a, k) {
        const pthread_mutex_t *m = (const void *)a;
        if (looks_recursive(m) && mutex_held(m))
            held_inside[k / 32] |= 1u << (k % 32);
    }
    return 1; /* one callback is enough */
}

/* The write lock is the one recursive mutex of _rtld_global held inside a
 * dl_iterate_phdr callback and free outside it; the load lock is the
 * recursive mutex just before it (since glibc 2.13). No unique candidate:
 * NULL, and a constructor cannot be told (as before this file). */
static const pthread_mutex_t *find_loader_locks(struct loader_probe *probe)
{
    if (probe->rtld_global == 0)
        return NULL;
    memset(held_inside, 0, sizeof held_inside);
    dl_iterate_phdr(mark_held, probe);
    const pthread_mutex_t *write_lock = NULL;
    FOR_EACH_SLOT(probe, a, k) {
        const pthread_mutex_t *m = (const void *)a;
        if (!(held_inside[k / 32] & (1u << (k % 32))) || mutex_held(m))
            continue;
        if (write_lock != NULL)
            return NULL; /* two candidates: not a layout we know */
        write_lock = m;
    }
    if (write_lock == NULL ||
        (uintptr_t)write_lock < probe->rtld_global + sizeof(pthread_mutex_t))
        return NULL;
    const pthread_mutex_t *load_lock = write_lock - 1;
    return looks_recursive(load_lock) ? load_lock : NULL;
}

/* Called at the first connect, outside every lock of ours (runtime.c).
 * Measures once; never allows a diversion. */
int safepoint_prepare(void)
{
    if (__atomic_load_n(&prepared, __ATOMIC_ACQUIRE))
        return 0;
    struct loader_probe probe = {0, 0};
    dl_iterate_phdr(find_rtld_global, &probe);
    __atomic_store_n(&loader_locks, find_loader_locks(&probe), __ATOMIC_RELEASE);
    __atomic_store_n(&prepared, 1, __ATOMIC_RELEASE);
    return 0;
}

int safepoint_holds_loader_lock(void)
{
    const volatile pthread_mutex_t *l = __atomic_load_n(&loader_locks, __ATOMIC_ACQUIRE);
    if (l == NULL)
        return 0;
    int tid = (int)syscall(SYS_gettid);
    return (mutex_held(&l[0]) && l[0].__data.__owner == tid) ||
           (mutex_held(&l[1]) && l[1].__data.__owner == tid);
}

#else
/* ISO C wants a translation unit to declare something. */
typedef int lc_safepoint_generic_unused;
#endif
