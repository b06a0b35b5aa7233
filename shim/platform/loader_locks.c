/* See loader_locks.h. Both locks are recursive mutexes inside ld.so's private
 * _rtld_global, _dl_load_lock immediately followed by _dl_load_write_lock
 * (since glibc 2.13), at an offset that changes with the version and the
 * architecture. So they are measured: the write lock is the one recursive
 * mutex in the first 8 KiB of _rtld_global that is held inside a
 * dl_iterate_phdr callback and free outside it; the load lock is the
 * recursive mutex just before it. No unique candidate (another layout): not
 * found. The mutexes are read through glibc's own pthread_mutex_t, whose
 * size differs between architectures (40 bytes on x86-64, 48 on aarch64). */
#define _GNU_SOURCE
#include "platform/loader_locks.h"

#include <features.h> /* __GLIBC__ */

#if defined(__linux__) && defined(__GLIBC__)

#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
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
static int measured;

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

int loader_locks_measure(void)
{
    if (!__atomic_load_n(&measured, __ATOMIC_ACQUIRE)) {
        struct loader_probe probe = {0, 0};
        dl_iterate_phdr(find_rtld_global, &probe);
        __atomic_store_n(&loader_locks, find_loader_locks(&probe), __ATOMIC_RELEASE);
        __atomic_store_n(&measured, 1, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&loader_locks, __ATOMIC_ACQUIRE) != NULL;
}

int loader_locks_busy(void)
{
    const volatile pthread_mutex_t *l = __atomic_load_n(&loader_locks, __ATOMIC_ACQUIRE);
    return l == NULL || mutex_held(&l[0]) || mutex_held(&l[1]);
}

int loader_locks_held_by_self(void)
{
    const volatile pthread_mutex_t *l = __atomic_load_n(&loader_locks, __ATOMIC_ACQUIRE);
    if (l == NULL)
        return 0;
    int tid = (int)syscall(SYS_gettid);
    return (mutex_held(&l[0]) && l[0].__data.__owner == tid) ||
           (mutex_held(&l[1]) && l[1].__data.__owner == tid);
}

#else /* another C library: its loader's locks are not known */

int loader_locks_measure(void) { return 0; }
int loader_locks_busy(void) { return 1; }
int loader_locks_held_by_self(void) { return 0; }

#endif
