/* Preloaded after lastcall by tests/integration/test_hangs.c: once the program
 * calls stall_alloc_begin(), every allocation blocks forever, on any thread.
 * It stands in for any library or lock a drain might wait on for good: the
 * kernel's deadline must end the process anyway. */
#define _GNU_SOURCE
#include <stddef.h>
#include <time.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static int stalled;

void stall_alloc_begin(void)
{
    __atomic_store_n(&stalled, 1, __ATOMIC_RELEASE);
}

static void wait_forever_if_stalled(void)
{
    while (__atomic_load_n(&stalled, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
}

void *malloc(size_t n)
{
    wait_forever_if_stalled();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
    wait_forever_if_stalled();
    return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
    wait_forever_if_stalled();
    return __libc_realloc(p, n);
}
